local M = {}

function M.join(parts, sep)
  return table.concat(parts, sep)
end

function M.capitalize(s)
  return (s:gsub("^%l", string.upper))
end

return M
