-- resty.upstream.healthcheck: active HTTP(S) and TCP health checks for
-- nginx upstream peers, driving ngx.upstream.set_peer_down().
--
-- Written for this project from its specification; a drop-in for the module
-- of the same name shipped by OpenResty (0.08): the same API
-- (spawn_checker(), status_page(), prometheus_status_page()), the same log
-- lines, written by functions of the same names (errlog(), warn(), debug()),
-- and the same debug lines when ngx.config.debug is set.  Beyond it: the
-- "tcp" check type, per-peer probe metrics, and state keyed by peer name.
--
-- How it works, in short:
--   * every worker runs one timer per checker; on each tick it first
--     applies the shared state to its own copy of the peers when the shared
--     version moved, then tries to take a short lock in the shm; only the
--     worker holding the lock probes;
--   * the shared state lives in the shm, keyed by upstream, role
--     (primary/backup) and peer *name*, so a reload that reorders, adds or
--     removes servers never hands one peer's state to another;
--   * a per-upstream version number in the shm, bumped once per round that
--     changed a peer, tells the other workers to re-apply the down flags.
--
-- Log lines name the file, line and function that wrote them, so this file
-- is loaded with its debug information in both strategies (the embed
-- bundle's bytecode keeps it, with the chunk name
-- "@resty/upstream/healthcheck.lua"); the code itself depends on neither.

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
local now = ngx.now
local update_time = ngx.update_time
local debug_mode = ngx.config.debug

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
local str_format = string.format
local floor = math.floor
local ceil = math.ceil


local _M = {
    _VERSION = "0.08",
}


-- number of checkers this worker runs, per upstream name (status pages),
-- and the shm of the upstream's latest checker (probe metrics)
local checkers_by_upstream = {}
local shm_by_upstream = {}


-- The three log functions.  Their names and the ngx.log() calls inside them
-- are part of the output: nginx prefixes each line with
-- "healthcheck.lua:LINE: NAME(): ", NAME being how the caller refers to the
-- function, so they are only ever called as errlog/warn/debug, and never in
-- tail position (a tail call loses the name).

local function warn(...)
    log(WARN, "healthcheck: ", ...)
end


local function errlog(...)
    log(ERR, "healthcheck: ", ...)
end


local function debug(...)
    if debug_mode then
        log(DEBUG, "healthcheck: ", ...)
    end
end


-- Shm keys.  Per-peer keys put the kind first and end the upstream name with
-- a newline, which no upstream name can hold, so keys of different kinds or
-- upstreams never collide (implicit upstream names contain ':').  The
-- version and lock keys are the original module's.

local function key_version(u)
    return "v:" .. u
end


local function key_lock(u)
    return "l:" .. u
end


local function key_peer(kind, u, role, name)
    return "hc:" .. kind .. ":" .. u .. "\n" .. role .. "\n" .. name
end


-- The original module's down flag: present (true) while the peer at this
-- index is down.  Honoured when no flag of ours exists for the peer.

local function key_index_down(u, role, id)
    return "d:" .. u .. ":" .. role .. id
end


-- Group a peer list by name: one probe per distinct address per round,
-- applied to every entry of that name (the same address may be listed
-- twice, e.g. once by IP and once by a host name resolving to it).

local function build_targets(ctx, peers, is_backup)
    local targets = {}
    local by_name = {}
    local role = is_backup and "b" or "p"
    local u = ctx.upstream

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
                role = is_backup and "backup" or "primary",
                host = host,
                port = port,
                ids = {},
                down = peer.down and true or false,
                k_down = key_peer("d", u, role, name),
                k_index_down = key_index_down(u, role, peer.id),
                k_ok = key_peer("ok", u, role, name),
                k_nok = key_peer("nok", u, role, name),
                k_duration = key_peer("dur", u, role, name),
                k_failures = key_peer("fails", u, role, name),
                k_changed = key_peer("chg", u, role, name),
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
            errlog("failed to set peer down: ", err, ctx.log_suffix)
        end
    end

    t.down = down
end


-- The shared down flag of a peer: ours, else the original module's, else
-- nil (never judged).

local function shared_down(ctx, t)
    local dict = ctx.dict
    local down = dict:get(t.k_down)
    if down == nil and dict:get(t.k_index_down) then
        down = true
    end

    return down
end


-- Is the peer down as far as the checkers are concerned?  The shm flag is
-- authoritative; a peer never judged keeps this worker's state.

local function target_is_down(ctx, t)
    local down = shared_down(ctx, t)
    if down == nil then
        return t.down
    end

    return down
end


local function change_state(ctx, t, down)
    local dict = ctx.dict

    local ok, err = dict:set(t.k_down, down)
    if not ok then
        errlog("failed to set peer down state: ", err, ctx.log_suffix)
    end

    dict:set(t.k_changed, now())
    set_target_down(ctx, t, down)

    -- published at the end of the round, for the other workers
    ctx.new_version = true
end


local function peer_fail(ctx, t, down)
    debug("peer ", t.name, " was checked to be not ok")

    local dict = ctx.dict

    dict:incr(t.k_failures, 1, 0)

    local nok, err = dict:incr(t.k_nok, 1, 0)
    if not nok then
        errlog("failed to incr peer nok key: ", err, ctx.log_suffix)
        return
    end

    if (dict:get(t.k_ok) or 0) ~= 0 then
        dict:set(t.k_ok, 0)
    end

    if not down and nok >= ctx.fall then
        warn("peer ", t.name, " is turned down after ", nok, " failure(s)",
             ctx.log_suffix)
        change_state(ctx, t, true)
    end
end


local function peer_ok(ctx, t, down)
    debug("peer ", t.name, " was checked to be ok")

    local dict = ctx.dict

    local ok, err = dict:incr(t.k_ok, 1, 0)
    if not ok then
        errlog("failed to incr peer ok key: ", err, ctx.log_suffix)
        return
    end

    if (dict:get(t.k_nok) or 0) ~= 0 then
        dict:set(t.k_nok, 0)
    end

    if down and ok >= ctx.rise then
        warn("peer ", t.name, " is turned up after ", ok, " success(es)",
             ctx.log_suffix)
        change_state(ctx, t, false)
    end
end


-- A failed probe: the error is logged only while the peer is up (a dead
-- peer would otherwise flood the log), then counted.

local function peer_error(ctx, t, down, ...)
    if not down then
        errlog(...)
    end

    peer_fail(ctx, t, down)
end


-- One probe.  http/https: connect, TLS for https, send the raw request,
-- read only the status line.  tcp: connect, TLS with ssl = true, nothing
-- sent.  The socket is closed either way, so each probe opens a connection.

local function probe(ctx, t)
    local name = t.name
    local suffix = ctx.log_suffix
    local down = target_is_down(ctx, t)

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
        if not down then
            errlog("failed to connect to ", name, ": ", err, suffix)
        end

        peer_fail(ctx, t, down)
        return
    end

    if ctx.ssl then
        ok, err = sock:sslhandshake(nil, ctx.host, ctx.ssl_verify)
        if not ok then
            sock:close()
            peer_error(ctx, t, down, "failed to ssl handshake to ", name,
                       ": ", err, suffix)
            return
        end
    end

    if not ctx.http_req then
        if ctx.ssl then
            -- lua-nginx-module reports a handshake that completed at once
            -- but failed verification as a success, on a closed socket
            local reused
            reused, err = sock:getreusedtimes()
            if not reused then
                sock:close()
                peer_error(ctx, t, down, "failed to ssl handshake to ", name,
                           ": ", err, suffix)
                return
            end
        end

        sock:close()
        peer_ok(ctx, t, down)
        return
    end

    local bytes
    bytes, err = sock:send(ctx.http_req)
    if not bytes then
        sock:close()
        peer_error(ctx, t, down, "failed to send request to ", name, ": ",
                   err, suffix)
        return
    end

    local line
    line, err = sock:receive()
    sock:close()
    if not line then
        peer_error(ctx, t, down, "failed to receive status line from ",
                   name, ": ", err, suffix)
        return
    end

    local statuses = ctx.statuses
    if statuses then
        local code = str_match(line, "^HTTP/%d+%.%d+%s+(%d+)")
        if not code then
            peer_error(ctx, t, down, "bad status line from ", name, ": ",
                       line, suffix)
            return
        end

        code = tonumber(code)
        if not statuses[code] then
            peer_error(ctx, t, down, "bad status code from ", name, ": ",
                       code, suffix)
            return
        end
    end

    peer_ok(ctx, t, down)
end


-- A probe and its duration, kept in the shm for the metrics page (the
-- probing worker is rarely the one asked for the page).

local function check_peer(ctx, t)
    update_time()
    local started = now()

    probe(ctx, t)

    update_time()
    ctx.dict:set(t.k_duration, now() - started)
end


local function check_peer_range(ctx, targets, from, to)
    for i = from, to do
        check_peer(ctx, targets[i])
    end
end


-- Probe a list of targets over up to ctx.concurrency light threads, split
-- as the original module splits them (and logged the same way): with no
-- more targets than threads, one target each; otherwise consecutive groups
-- of ceil(n / concurrency), the last group run by the calling thread.

local function check_targets(ctx, targets, is_backup)
    local n = #targets
    if n == 0 then
        return
    end

    local concurrency = ctx.concurrency
    if concurrency <= 1 then
        check_peer_range(ctx, targets, 1, n)
        return
    end

    local role = is_backup and "backup" or "primary"
    local threads = {}

    if n <= concurrency then
        for i = 1, n - 1 do
            debug("spawn a thread checking ", role, " peer ", i - 1)
            threads[#threads + 1] = spawn(check_peer, ctx, targets[i])
        end

        debug("check ", role, " peer ", n - 1)
        check_peer(ctx, targets[n])

    else
        local group = ceil(n / concurrency)
        local from = 1

        while from + group <= n do
            local to = from + group - 1
            debug("spawn a thread checking ", role, " peers ", from - 1,
                  " to ", to - 1)
            threads[#threads + 1] = spawn(check_peer_range, ctx, targets,
                                          from, to)
            from = to + 1
        end

        debug("check ", role, " peers ", from - 1, " to ", n - 1)
        check_peer_range(ctx, targets, from, n)
    end

    for _, th in ipairs(threads) do
        local ok, err = wait(th)
        if not ok then
            errlog("light thread failed: ", err, ctx.log_suffix)
        end
    end
end


-- Apply the shared down flags to this worker's copy of the peers (needed
-- without an upstream zone, harmless with one).  As in the original, once
-- a version is published a peer without a down flag is up.

local function sync_targets(ctx, targets)
    for _, t in ipairs(targets) do
        local down = shared_down(ctx, t) or false
        if down ~= t.down then
            set_target_down(ctx, t, down)
        end
    end
end


local function do_check(ctx)
    debug("healthcheck: run a check cycle")

    local u = ctx.upstream
    local dict = ctx.dict

    -- Fetched on every tick: cheap, and always the current down flags
    -- (which other workers change when the peers live in a zone).

    local peers, err = get_primary_peers(u)
    if not peers then
        errlog("failed to get primary peers: ", err, ctx.log_suffix)
        return
    end

    local primary = build_targets(ctx, peers, false)

    peers, err = get_backup_peers(u)
    if not peers then
        errlog("failed to get backup peers: ", err, ctx.log_suffix)
        return
    end

    local backup = build_targets(ctx, peers, true)

    local version = dict:get(key_version(u))
    if not version then
        -- the shm was flushed: publish our state again
        if ctx.version > 0 then
            ctx.new_version = true
        end

    elseif ctx.version < version then
        debug("upgrading peers version to ", version)
        sync_targets(ctx, primary)
        sync_targets(ctx, backup)
        ctx.version = version
    end

    -- The lock expires just before the next interval, so one worker probes
    -- per interval whatever the phase of the other workers' timers.

    local ok
    ok, err = dict:add(key_lock(u), true, ctx.lock_ttl)
    if ok then
        check_targets(ctx, primary, false)
        check_targets(ctx, backup, true)

    elseif err ~= "exists" then
        errlog("failed to add key \"", key_lock(u), "\": ", err)
    end

    if ctx.new_version then
        debug("publishing peers version ", ctx.version + 1)

        dict:add(key_version(u), 0)
        local v
        v, err = dict:incr(key_version(u), 1)
        if not v then
            errlog("failed to publish new peers version: ", err)

        else
            ctx.version = v
            ctx.new_version = nil
        end
    end
end


local check

check = function(premature, ctx)
    if premature then
        return
    end

    local ok, err = pcall(do_check, ctx)
    if not ok then
        errlog("failed to run healthcheck cycle: ", err)
    end

    ok, err = timer_at(ctx.interval, check, ctx)
    if not ok and err ~= "process exiting" then
        errlog("failed to create timer: ", err)
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

    if typ ~= "http" and typ ~= "https" and typ ~= "tcp" then
        return nil, "only \"http\", \"https\" and \"tcp\" type are supported"
                    .. " right now"
    end

    local http_req = opts.http_req
    if typ == "tcp" then
        if http_req ~= nil then
            return nil, "\"http_req\" option not allowed with type \"tcp\""
                        .. " (a tcp check sends nothing)"
        end

    elseif not http_req then
        return nil, "\"http_req\" option required"
    end

    local timeout = tonumber(opts.timeout) or 1000

    local interval = (tonumber(opts.interval) or 1000) / 1000
    if interval < 0.002 then
        interval = 0.002
    end

    local statuses
    if opts.valid_statuses then
        if typ == "tcp" then
            return nil, "\"valid_statuses\" option not allowed with type"
                        .. " \"tcp\""
        end

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
        ssl = typ == "https" or (typ == "tcp" and opts.ssl and true or false),
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
        -- appended to probe and state-change lines; the original's lines
        -- carry no upstream name, so only on request
        log_suffix = opts.log_upstream and (" (upstream " .. u .. ")") or "",
    }

    if opts.no_timer then
        -- one round now, in the calling request; no timer
        ok, err = pcall(do_check, ctx)
        if not ok then
            errlog("failed to run healthcheck cycle: ", err)
        end

    else
        ok, err = timer_at(0, check, ctx)
        if not ok then
            return nil, "failed to create timer: " .. err
        end
    end

    checkers_by_upstream[u] = (checkers_by_upstream[u] or 0) + 1
    shm_by_upstream[u] = dict

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


-- The probe metrics, beyond the original's page: one family at a time (the
-- text format wants a family's series together), one series per distinct
-- peer of each checked upstream, read from the shm.

local probe_families = {
    {
        name = "nginx_upstream_probe_duration_seconds",
        help = "Duration of the last health check probe of the peer",
        type = "gauge",
        kind = "dur",
        -- ngx.now() counts milliseconds
        format = "%.3f",
    },
    {
        name = "nginx_upstream_probe_failures_total",
        help = "Failed health check probes of the peer",
        type = "counter",
        kind = "fails",
        default = 0,
        format = "%d",
    },
    {
        name = "nginx_upstream_state_change_timestamp_seconds",
        help = "Unix time of the peer's last state change by the health"
               .. " checker",
        type = "gauge",
        kind = "chg",
        format = "%.3f",
    },
}


local function add_probe_family(bits, family, checked)
    bits[#bits + 1] = "# HELP " .. family.name .. " " .. family.help .. "\n"
    bits[#bits + 1] = "# TYPE " .. family.name .. " " .. family.type .. "\n"

    for _, c in ipairs(checked) do
        local seen = {}

        for _, p in ipairs(c.peers) do
            local role = p.role
            local key = key_peer(family.kind, c.upstream, role == "BACKUP"
                                 and "b" or "p", p.name)
            if not seen[key] then
                seen[key] = true

                local v = c.dict:get(key) or family.default
                if v then
                    bits[#bits + 1] = family.name .. "{name=\"" .. c.name
                                      .. "\",endpoint=\""
                                      .. prom_escape(p.name) .. "\",role=\""
                                      .. role .. "\"} "
                                      .. str_format(family.format, v) .. "\n"
                end
            end
        end
    end
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

    local checked = {}

    for _, u in ipairs(us) do
        local name = prom_escape(u)
        local up, down, unknown = 0, 0, 0

        if has_checker(u) then
            local primary
            primary, err = get_primary_peers(u)
            if not primary then
                return nil, "failed to get primary peers in upstream " .. u
                            .. ": " .. tostring(err)
            end

            local nup = add_prom_peer_lines(bits, name, primary, "PRIMARY")

            local backup
            backup, err = get_backup_peers(u)
            if not backup then
                return nil, "failed to get backup peers in upstream " .. u
                            .. ": " .. tostring(err)
            end

            nup = nup + add_prom_peer_lines(bits, name, backup, "BACKUP")

            if nup > 0 then
                up = 1
            else
                down = 1
            end

            local dict = shm_by_upstream[u]
            if dict then
                local peers = {}
                for _, p in ipairs(primary) do
                    peers[#peers + 1] = { name = p.name, role = "PRIMARY" }
                end
                for _, p in ipairs(backup) do
                    peers[#peers + 1] = { name = p.name, role = "BACKUP" }
                end

                checked[#checked + 1] = {
                    upstream = u, name = name, dict = dict, peers = peers,
                }
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

    for _, family in ipairs(probe_families) do
        add_probe_family(bits, family, checked)
    end

    return concat(bits)
end


return _M
