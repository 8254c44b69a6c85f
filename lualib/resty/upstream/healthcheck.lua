-- resty.upstream.healthcheck: active HTTP(S) health checks for nginx
-- upstream peers, driving ngx.upstream.set_peer_down().
--
-- Written for this project from its specification (specs/healthcheck.md);
-- API-compatible with the module of the same name shipped by OpenResty
-- (0.08): spawn_checker(), status_page(), prometheus_status_page().
--
-- How it works, in short:
--   * every worker runs one timer per checker; on each tick it first
--     applies the shared state to its own copy of the peers, then tries to
--     take a short lock in the shm; only the worker holding the lock probes;
--   * the shared state lives in the shm, keyed by upstream, role
--     (primary/backup) and peer *name*, so a reload that reorders, adds or
--     removes servers never hands one peer's state to another;
--   * a per-upstream version number in the shm tells the other workers that
--     down flags changed, so all workers agree within one interval.
--
-- Only ngx.* APIs are used and nothing depends on debug information or the
-- file the code was loaded from: the module works as plain Lua and as
-- LuaJIT bytecode linked into the nginx binary.

local upstream = require "ngx.upstream"

local ngx = ngx
local log = ngx.log
local ERR = ngx.ERR
local WARN = ngx.WARN
local DEBUG = ngx.DEBUG
local timer_at = ngx.timer.at
local spawn = ngx.thread.spawn
local wait = ngx.thread.wait
local tcp = ngx.socket.tcp
local shared = ngx.shared

local get_upstreams = upstream.get_upstreams
local get_primary_peers = upstream.get_primary_peers
local get_backup_peers = upstream.get_backup_peers
local set_peer_down = upstream.set_peer_down

local type = type
local tostring = tostring
local tonumber = tonumber
local ipairs = ipairs
local pcall = pcall
local concat = table.concat
local str_match = string.match
local str_sub = string.sub
local str_gsub = string.gsub
local floor = math.floor
local min = math.min


local _M = {
    _VERSION = "0.08",
}


-- number of checkers this worker runs, per upstream name (status pages)
local checkers_by_upstream = {}


-- Shm keys.  The kind comes first and the upstream name is followed by a
-- newline, which no upstream name can hold, so keys of different kinds or
-- upstreams never collide (implicit upstream names contain ':').

local function key_version(u)
    return "hc:v:" .. u
end


local function key_lock(u)
    return "hc:l:" .. u
end


local function key_peer(kind, u, role, name)
    return "hc:" .. kind .. ":" .. u .. "\n" .. role .. "\n" .. name
end


local function errlog(...)
    log(ERR, "healthcheck: ", ...)
end


-- Group a peer list by name: one probe per distinct address per round,
-- applied to every entry of that name (the same address may be listed
-- twice, e.g. once by IP and once by a host name resolving to it).

local function build_targets(ctx, peers, is_backup)
    local targets = {}
    local by_name = {}
    local role = is_backup and "b" or "p"

    for _, peer in ipairs(peers) do
        local name = peer.name
        local t = by_name[name]

        if not t then
            local host, port

            if str_sub(name, 1, 5) == "unix:" then
                host = name

            else
                -- "ip:port" or "[ipv6]:port": keep the brackets, the
                -- cosocket API needs them to tell the port apart
                host, port = str_match(name, "^(.+):(%d+)$")
                if not host then
                    host = name
                end

                port = ctx.port or tonumber(port)
            end

            t = {
                name = name,
                is_backup = is_backup,
                host = host,
                port = port,
                ids = {},
                down = peer.down and true or false,
                k_down = key_peer("d", ctx.upstream, role, name),
                k_ok = key_peer("ok", ctx.upstream, role, name),
                k_nok = key_peer("nok", ctx.upstream, role, name),
            }

            by_name[name] = t
            targets[#targets + 1] = t
        end

        t.ids[#t.ids + 1] = peer.id
    end

    return targets
end


local function set_target_down(ctx, t, down)
    for _, id in ipairs(t.ids) do
        local ok, err = set_peer_down(ctx.upstream, t.is_backup, id, down)
        if not ok then
            errlog("failed to set peer ", t.name, " ", down and "down"
                   or "up", ": ", err, " (upstream ", ctx.upstream, ")")
        end
    end

    t.down = down
end


-- Is the peer down as far as the checkers are concerned?  The shm flag is
-- authoritative; a peer never judged yet keeps its configured state.

local function target_is_down(ctx, t)
    local down = ctx.dict:get(t.k_down)
    if down == nil then
        return t.down
    end

    return down
end


local function change_state(ctx, t, down)
    local dict = ctx.dict

    local ok, err = dict:set(t.k_down, down)
    if not ok then
        errlog("failed to set peer state in shm \"", ctx.shm_name, "\": ",
               err, " (upstream ", ctx.upstream, ")")
    end

    set_target_down(ctx, t, down)

    -- tell the other workers to re-apply the shared down flags
    local v
    v, err = dict:incr(key_version(ctx.upstream), 1, 0)
    if not v then
        errlog("failed to bump version in shm \"", ctx.shm_name, "\": ",
               err, " (upstream ", ctx.upstream, ")")
    end
end


local function peer_fail(ctx, t, ...)
    local dict = ctx.dict
    local down = target_is_down(ctx, t)

    if not down then
        -- only while up: a dead peer would otherwise flood the log
        log(ERR, "healthcheck: ", ...)
    end

    local nok, err = dict:incr(t.k_nok, 1, 0)
    if not nok then
        errlog("failed to count failure of peer ", t.name, ": ", err,
               " (upstream ", ctx.upstream, ")")
        return
    end

    if (dict:get(t.k_ok) or 0) ~= 0 then
        dict:set(t.k_ok, 0)
    end

    if not down and nok >= ctx.fall then
        log(WARN, "healthcheck: peer ", t.name, " is turned down after ",
            nok, " failure(s) (upstream ", ctx.upstream, ")")
        change_state(ctx, t, true)
    end
end


local function peer_ok(ctx, t)
    local dict = ctx.dict
    local down = target_is_down(ctx, t)

    local ok, err = dict:incr(t.k_ok, 1, 0)
    if not ok then
        errlog("failed to count success of peer ", t.name, ": ", err,
               " (upstream ", ctx.upstream, ")")
        return
    end

    if (dict:get(t.k_nok) or 0) ~= 0 then
        dict:set(t.k_nok, 0)
    end

    if down and ok >= ctx.rise then
        log(WARN, "healthcheck: peer ", t.name, " is turned up after ", ok,
            " success(es) (upstream ", ctx.upstream, ")")
        change_state(ctx, t, false)
    end
end


-- One probe: connect, TLS for https, send the raw request, read only the
-- status line, close.

local function check_peer(ctx, t)
    local u = ctx.upstream
    local name = t.name

    local sock, err = tcp()
    if not sock then
        errlog("failed to create stream socket: ", err)
        return
    end

    sock:settimeout(ctx.timeout)

    local ok
    if t.port then
        ok, err = sock:connect(t.host, t.port)
    else
        ok, err = sock:connect(t.host)
    end

    if not ok then
        if ctx.port and t.port then
            return peer_fail(ctx, t, "failed to connect to peer ", name,
                             " on port ", t.port, ": ", err,
                             " (upstream ", u, ")")
        end

        return peer_fail(ctx, t, "failed to connect to peer ", name, ": ",
                         err, " (upstream ", u, ")")
    end

    if ctx.https then
        ok, err = sock:sslhandshake(false, ctx.host, ctx.ssl_verify)
        if not ok then
            sock:close()
            return peer_fail(ctx, t, "failed to do SSL handshake with peer ",
                             name, ": ", err, " (upstream ", u, ")")
        end
    end

    local bytes
    bytes, err = sock:send(ctx.http_req)
    if not bytes then
        sock:close()
        return peer_fail(ctx, t, "failed to send request to peer ", name,
                         ": ", err, " (upstream ", u, ")")
    end

    local line
    line, err = sock:receive()
    if not line then
        sock:close()
        return peer_fail(ctx, t, "failed to receive status line from peer ",
                         name, ": ", err, " (upstream ", u, ")")
    end

    sock:close()

    local statuses = ctx.statuses
    if statuses then
        local code = str_match(line, "^HTTP/%d+%.%d+%s+(%d%d%d)")
        if not code then
            return peer_fail(ctx, t, "bad status line from peer ", name,
                             ": \"", line, "\" (upstream ", u, ")")
        end

        code = tonumber(code)
        if not statuses[code] then
            return peer_fail(ctx, t, "bad status code from peer ", name, ": ",
                             code, " (upstream ", u, ")")
        end
    end

    return peer_ok(ctx, t)
end


-- Probe a list of targets over up to ctx.concurrency light threads, each
-- taking the next unchecked target until none is left.

local function check_targets(ctx, targets)
    local n = #targets
    if n == 0 then
        return
    end

    local next_idx = 0

    local function run()
        while true do
            next_idx = next_idx + 1
            local i = next_idx
            if i > n then
                return
            end

            check_peer(ctx, targets[i])
        end
    end

    local nthreads = min(ctx.concurrency, n)
    local threads = {}

    for _ = 2, nthreads do
        local th, err = spawn(run)
        if th then
            threads[#threads + 1] = th
        else
            errlog("failed to spawn light thread: ", err,
                   " (upstream ", ctx.upstream, ")")
        end
    end

    run()

    for _, th in ipairs(threads) do
        local ok, err = wait(th)
        if not ok then
            errlog("light thread failed: ", err,
                   " (upstream ", ctx.upstream, ")")
        end
    end
end


-- Apply the shared down flags to this worker's copy of the peers (needed
-- without an upstream zone, harmless with one).

local function sync_targets(ctx, targets)
    local dict = ctx.dict

    for _, t in ipairs(targets) do
        local down = dict:get(t.k_down)
        if down ~= nil and down ~= t.down then
            log(DEBUG, "healthcheck: worker ", ngx.worker.pid(), " sets peer ",
                t.name, down and " down" or " up", " (upstream ",
                ctx.upstream, ")")
            set_target_down(ctx, t, down)
        end
    end
end


local function do_check(ctx)
    local u = ctx.upstream
    local dict = ctx.dict

    -- Fetched on every tick: cheap, and always the current down flags
    -- (which other workers change when the peers live in a zone).

    local peers, err = get_primary_peers(u)
    if not peers then
        errlog("failed to get primary peers: ", err,
               " (upstream ", u, ")")
        return
    end

    local primary = build_targets(ctx, peers, false)

    peers, err = get_backup_peers(u)
    if not peers then
        errlog("failed to get backup peers: ", err, " (upstream ", u, ")")
        return
    end

    local backup = build_targets(ctx, peers, true)

    local version = dict:get(key_version(u))
    if version and version ~= ctx.version then
        sync_targets(ctx, primary)
        sync_targets(ctx, backup)
        ctx.version = version
    end

    -- The lock expires just before the next interval, so one worker probes
    -- per interval whatever the phase of the other workers' timers.

    local ok
    ok, err = dict:add(key_lock(u), true, ctx.lock_ttl)
    if not ok then
        if err ~= "exists" then
            errlog("failed to add lock to shm \"", ctx.shm_name, "\": ",
                   err, " (upstream ", u, ")")
        end

        return
    end

    check_targets(ctx, primary)
    check_targets(ctx, backup)
end


local check

check = function(premature, ctx)
    if premature then
        return
    end

    local ok, err = pcall(do_check, ctx)
    if not ok then
        errlog("failed to run health check cycle: ", err,
               " (upstream ", ctx.upstream, ")")
    end

    ok, err = timer_at(ctx.interval, check, ctx)
    if not ok and err ~= "process exiting" then
        errlog("failed to create timer: ", err,
               " (upstream ", ctx.upstream, ")")
    end
end


function _M.spawn_checker(opts)
    if type(opts) ~= "table" then
        return nil, "options table required"
    end

    local typ = opts.type
    if not typ then
        return nil, "\"type\" option required"
    end

    if typ ~= "http" and typ ~= "https" then
        return nil, "only \"http\" and \"https\" type are supported right now"
    end

    local http_req = opts.http_req
    if not http_req then
        return nil, "\"http_req\" option required"
    end

    local timeout = tonumber(opts.timeout) or 1000

    local interval = (tonumber(opts.interval) or 1000) / 1000
    if interval < 0.002 then
        interval = 0.002
    end

    local statuses
    if opts.valid_statuses then
        statuses = {}
        for _, code in ipairs(opts.valid_statuses) do
            local c = tonumber(code)
            if c then
                statuses[c] = true
            end
        end
    end

    local concurrency = floor(tonumber(opts.concurrency) or 1)
    if concurrency < 1 then
        concurrency = 1
    end

    local fall = tonumber(opts.fall) or 5
    local rise = tonumber(opts.rise) or 2

    local shm_name = opts.shm
    if not shm_name then
        return nil, "\"shm\" option required"
    end

    local dict = shared[shm_name]
    if not dict then
        return nil, "shm \"" .. tostring(shm_name) .. "\" not found"
    end

    local u = opts.upstream
    if not u then
        return nil, "no upstream specified"
    end

    local ok, err = get_primary_peers(u)
    if not ok then
        return nil, "failed to get primary peers: " .. err
    end

    ok, err = get_backup_peers(u)
    if not ok then
        return nil, "failed to get backup peers: " .. err
    end

    local ssl_verify = opts.ssl_verify
    if ssl_verify == nil then
        ssl_verify = true
    end

    local ctx = {
        upstream = u,
        shm_name = shm_name,
        dict = dict,
        https = typ == "https",
        http_req = http_req,
        timeout = timeout,
        interval = interval,
        lock_ttl = interval - 0.001,
        fall = fall,
        rise = rise,
        statuses = statuses,
        concurrency = concurrency,
        port = tonumber(opts.port),
        host = opts.host,
        ssl_verify = ssl_verify and true or false,
        version = 0,
    }

    ok, err = timer_at(0, check, ctx)
    if not ok then
        return nil, "failed to create timer: " .. err
    end

    checkers_by_upstream[u] = (checkers_by_upstream[u] or 0) + 1

    return true
end


local function has_checker(u)
    local n = checkers_by_upstream[u]
    return n and n > 0
end


local function add_peer_lines(bits, peers)
    for _, peer in ipairs(peers) do
        bits[#bits + 1] = "        " .. peer.name
                          .. (peer.down and " DOWN\n" or " UP\n")
    end
end


function _M.status_page()
    local us, err = get_upstreams()
    if not us then
        return "failed to get upstream names: " .. tostring(err)
    end

    local bits = {}

    for i, u in ipairs(us) do
        if i > 1 then
            bits[#bits + 1] = "\n"
        end

        bits[#bits + 1] = "Upstream " .. u
                          .. (has_checker(u) and "" or " (NO checkers)")
                          .. "\n    Primary Peers\n"

        local peers
        peers, err = get_primary_peers(u)
        if not peers then
            return "failed to get primary peers in upstream " .. u .. ": "
                   .. tostring(err)
        end

        add_peer_lines(bits, peers)

        bits[#bits + 1] = "    Backup Peers\n"

        peers, err = get_backup_peers(u)
        if not peers then
            return "failed to get backup peers in upstream " .. u .. ": "
                   .. tostring(err)
        end

        add_peer_lines(bits, peers)
    end

    return concat(bits)
end


-- Label values in the Prometheus text format escape backslash, double
-- quote and line feed.

local prom_escapes = { ["\\"] = "\\\\", ["\""] = "\\\"", ["\n"] = "\\n" }

local function prom_escape(s)
    return (str_gsub(s, "[\\\"\n]", prom_escapes))
end


local function add_prom_peer_lines(bits, u, peers, role)
    local up_count = 0

    for _, peer in ipairs(peers) do
        local prefix = "nginx_upstream_status_info{name=\"" .. u
                       .. "\",endpoint=\"" .. prom_escape(peer.name)
        local up = not peer.down

        bits[#bits + 1] = prefix .. "\",status=\"UP\",role=\"" .. role
                          .. "\"} " .. (up and "1\n" or "0\n")
        bits[#bits + 1] = prefix .. "\",status=\"DOWN\",role=\"" .. role
                          .. "\"} " .. (up and "0\n" or "1\n")

        if up then
            up_count = up_count + 1
        end
    end

    return up_count
end


function _M.prometheus_status_page()
    local us, err = get_upstreams()
    if not us then
        return nil, "failed to get upstream names: " .. tostring(err)
    end

    local bits = {
        "# HELP nginx_upstream_status_info The running status of nginx "
        .. "upstream\n",
        "# TYPE nginx_upstream_status_info gauge\n",
    }

    for _, u in ipairs(us) do
        local name = prom_escape(u)
        local up, down, unknown = 0, 0, 0

        if has_checker(u) then
            local peers
            peers, err = get_primary_peers(u)
            if not peers then
                return nil, "failed to get primary peers in upstream " .. u
                            .. ": " .. tostring(err)
            end

            local nup = add_prom_peer_lines(bits, name, peers, "PRIMARY")

            peers, err = get_backup_peers(u)
            if not peers then
                return nil, "failed to get backup peers in upstream " .. u
                            .. ": " .. tostring(err)
            end

            nup = nup + add_prom_peer_lines(bits, name, peers, "BACKUP")

            if nup > 0 then
                up = 1
            else
                down = 1
            end

        else
            unknown = 1
        end

        local prefix = "nginx_upstream_status_info{name=\"" .. name
                       .. "\",status=\""

        bits[#bits + 1] = prefix .. "UP\"} " .. up .. "\n"
        bits[#bits + 1] = prefix .. "DOWN\"} " .. down .. "\n"
        bits[#bits + 1] = prefix .. "UNKNOWN\"} " .. unknown .. "\n"
    end

    return concat(bits)
end


return _M
