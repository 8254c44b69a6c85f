-- require("greeting").hello(who) -> "Hello, who!"
local util = require("greeting.util")

local M = {}

function M.hello(who)
  return util.capitalize(util.join({ "hello", who }, ", ")) .. "!"
end

-- Where this code came from: the chunk name recorded at compile time.
function M.source()
  return debug.getinfo(1, "S").source
end

return M
