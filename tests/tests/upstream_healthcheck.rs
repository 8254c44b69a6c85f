//! `ngx.upstream` (modules/ngx_http_lua_upstream) and
//! `resty.upstream.healthcheck` (lualib/resty/upstream/healthcheck.lua), tested on the real
//! bundles of both strategies with 2 workers and backends on 127.0.0.1.
//!
//! Checkers here run every 500 ms with a 300 ms timeout, so a failing peer is turned down
//! after `fall` failures within about `fall` × 0.5 s, and every worker applies it within one
//! more interval.

use std::fs;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use e2e::backend::{Backend, Mode, TestCa};
use e2e::{free_port, http, temp_dir, unpack_bundle, Nginx, Strategy};

const INTERVAL_MS: u64 = 500;

/// A Lua serializer with sorted keys, so tables compare as strings.
const DUMP_LUA: &str = r#"
    function dump(v)
        local t = type(v)
        if t == "table" then
            local keys = {}
            for k in pairs(v) do keys[#keys + 1] = k end
            table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
            local out, n = {}, #v
            for _, k in ipairs(keys) do
                if type(k) == "number" and k >= 1 and k <= n then
                    out[#out + 1] = dump(v[k])
                else
                    out[#out + 1] = tostring(k) .. "=" .. dump(v[k])
                end
            end
            return "{" .. table.concat(out, ",") .. "}"
        elseif t == "string" then
            return string.format("%q", v)
        end
        return tostring(v)
    end
"#;

struct Running {
    _dir: tempfile::TempDir,
    nginx: Nginx,
    port: u16,
}

fn conf(strategy: Strategy, port: u16, http_body: &str) -> String {
    let path = match strategy {
        Strategy::Lualib => pipeline::dist::LUA_PACKAGE_PATH,
        Strategy::Embed => "",
    };
    // a location proxying to upstream foo, when the test defines one
    let foo_location = if http_body.contains("upstream foo ") { "location /foo { proxy_pass http://foo; }" } else { "" };
    format!(
        r#"worker_processes 2;
error_log logs/error.log info;
pid logs/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    {path}
    init_by_lua_block {{ {DUMP_LUA} }}
    {http_body}
    server {{
        # reuseport: the kernel spreads the test's connections over both workers
        listen 127.0.0.1:{port} reuseport;
        location = /t {{
            content_by_lua_block {{
                local f = assert(loadstring(ngx.unescape_uri(ngx.var.arg_c)))
                local res = {{ pcall(f, require "ngx.upstream") }}
                ngx.say(ngx.worker.id(), "|", dump(res[1]), "|", dump(res[2]), "|", dump(res[3]))
            }}
        }}
        location = /status {{
            default_type text/plain;
            content_by_lua_block {{
                ngx.print(require("resty.upstream.healthcheck").status_page())
            }}
        }}
        location = /status-w {{
            default_type text/plain;
            content_by_lua_block {{
                ngx.say("worker ", ngx.worker.id())
                ngx.print(require("resty.upstream.healthcheck").status_page())
            }}
        }}
        location = /metrics {{
            default_type text/plain;
            content_by_lua_block {{
                local out, err = require("resty.upstream.healthcheck").prometheus_status_page()
                ngx.print(out or ("ERROR " .. tostring(err)))
            }}
        }}
        {foo_location}
    }}
}}
"#
    )
}

fn start(strategy: Strategy, label: &str, http_body: &str) -> Running {
    let dir = temp_dir(&format!("issue4-{label}-{}", strategy.name()));
    // Workers run as nobody when the tests run as root: the bundle must be readable.
    set_mode(dir.path(), 0o755);
    let prefix = unpack_bundle(strategy, dir.path());
    let port = free_port();
    let nginx = Nginx::start(&prefix, &conf(strategy, port, http_body), &[port]);
    Running { _dir: dir, nginx, port }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs `code` (a Lua chunk receiving the ngx.upstream table as `...`) in a request of some
/// worker: "WORKER_ID|pcall ok|first result|second result".
fn lua(port: u16, code: &str) -> String {
    let r = http::get(port, &format!("/t?c={}", percent_encode(code)));
    assert_eq!(r.status, 200, "{}", r.body);
    r.body.trim_end().to_owned()
}

/// Like [`lua`], without the worker id.
fn lua_result(port: u16, code: &str) -> String {
    let out = lua(port, code);
    out.split_once('|').unwrap().1.to_owned()
}

/// Calls `f(worker_id, body)` on GETs of `path` until it has held for every one of the 2
/// workers on their latest answer; returns the time taken, None after `limit`.
fn until_all_workers(port: u16, path: &str, limit: Duration, f: impl Fn(&str) -> bool) -> Option<Duration> {
    let started = Instant::now();
    let mut ok = [false, false];
    while started.elapsed() < limit {
        let r = http::get(port, path);
        let (first, rest) = r.body.split_once('\n').unwrap_or((&r.body, ""));
        let id: usize = first.trim_start_matches("worker ").trim().parse().expect("worker id line");
        ok[id] = f(rest);
        if ok.iter().all(|&x| x) {
            return Some(started.elapsed());
        }
        sleep(Duration::from_millis(20));
    }
    None
}

/// Waits for `needle` to appear in the error log after byte `from`; the time it took.
fn wait_log(nginx: &Nginx, from: usize, needle: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let log = nginx.error_log();
        if log.get(from..).is_some_and(|l| l.contains(needle)) {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "no {needle:?} in the error log within {limit:?}:\n{}", &log[from.min(log.len())..]);
        sleep(Duration::from_millis(20));
    }
}

fn log_len(nginx: &Nginx) -> usize {
    nginx.error_log().len()
}

fn checker(upstream: &str, extra: &str) -> String {
    format!(
        r#"do
            local hc = require "resty.upstream.healthcheck"
            local ok, err = hc.spawn_checker({{
                shm = "healthcheck", upstream = "{upstream}", type = "http",
                http_req = "GET /health HTTP/1.0\r\nHost: {upstream}\r\n\r\n",
                interval = {INTERVAL_MS}, timeout = 300, fall = 2, rise = 2,
                {extra}
            }})
            if not ok then ngx.log(ngx.ERR, "failed to spawn health checker: ", err) end
        end
        "#
    )
}

fn assert_no_unexpected_errors(nginx: &Nginx) {
    let log = nginx.error_log();
    for bad in ["[emerg]", "[alert]", "[crit]", "failed to spawn health checker", "lua entry thread aborted", "runtime error"] {
        assert!(!log.contains(bad), "{bad} in the error log:\n{log}");
    }
}

// ---------------------------------------------------------------------------------------
// ngx.upstream
// ---------------------------------------------------------------------------------------

#[test]
fn ngx_upstream_api() {
    for strategy in Strategy::ALL {
        ngx_upstream_api_on(strategy);
    }
}

fn ngx_upstream_api_on(strategy: Strategy) {
    let a = Backend::http("a");
    let b = Backend::http("b");
    let c = Backend::http("c");
    let d = Backend::http("d");
    let (pa, pb, pc, pd) = (a.port(), b.port(), c.port(), d.port());
    let http_body = format!(
        r#"
    lua_shared_dict probe 1m;
    upstream foo {{
        server 127.0.0.1:{pa} weight=3 max_fails=2 fail_timeout=5s;
        server localhost:{pb};
        server 127.0.0.1:{pc} backup;
        server 127.0.0.1:{pd} down;
    }}
    upstream bar {{
        zone bar 64k;
        server 127.0.0.1:{pa};
        server 127.0.0.1:{pb};
    }}
    init_worker_by_lua_block {{
        local up = require "ngx.upstream"
        local d = ngx.shared.probe
        d:set("init_worker", dump(up.get_upstreams()) .. " " .. dump({{ pcall(up.current_upstream_name) }}))
        ngx.timer.at(0, function()
            d:set("timer", #up.get_primary_peers("bar") .. " " .. dump({{ pcall(up.current_upstream_name) }}))
        end)
    }}
"#
    );
    let port = free_port();
    let extra_locations = format!(
        r#"
        location /implicit {{ proxy_pass http://127.0.0.1:{pa}; }}
        location /bar {{
            proxy_pass http://bar;
            header_filter_by_lua_block {{
                ngx.header["X-Upstream"] = require("ngx.upstream").current_upstream_name()
            }}
        }}
"#
    );
    let dir = temp_dir(&format!("issue4-api-{}", strategy.name()));
    set_mode(dir.path(), 0o755);
    let prefix = unpack_bundle(strategy, dir.path());
    let full = conf(strategy, port, &http_body).replace("        location /foo {", &format!("{extra_locations}        location /foo {{"));
    assert!(full.contains("location /bar"));
    let nginx = Nginx::start(&prefix, &full, &[port]);

    // get_upstreams: configuration order, implicit upstreams as host:port
    assert_eq!(lua_result(port, "local up = ... return up.get_upstreams()"), format!(r#"true|{{"foo","bar","127.0.0.1:{pa}"}}|nil"#));
    assert_eq!(lua_result(port, "local up = ... return up.get_upstreams(1)"), "false|\"no argument expected\"|nil");

    // get_servers
    assert_eq!(
        lua_result(port, r#"local up = ... return up.get_servers("foo")"#),
        format!(
            concat!(
                r#"true|{{{{addr="127.0.0.1:{a}",fail_timeout=5,max_fails=2,name="127.0.0.1:{a}",weight=3}},"#,
                r#"{{addr="127.0.0.1:{b}",fail_timeout=10,max_fails=1,name="localhost:{b}",weight=1}},"#,
                r#"{{addr="127.0.0.1:{c}",backup=true,fail_timeout=10,max_fails=1,name="127.0.0.1:{c}",weight=1}},"#,
                r#"{{addr="127.0.0.1:{d}",down=true,fail_timeout=10,max_fails=1,name="127.0.0.1:{d}",weight=1}}}}|nil"#
            ),
            a = pa,
            b = pb,
            c = pc,
            d = pd
        )
    );
    assert_eq!(lua_result(port, "local up = ... return up.get_servers()"), "false|\"exactly one argument expected\"|nil");
    assert_eq!(lua_result(port, r#"local up = ... return up.get_servers("nope")"#), "true|nil|\"upstream not found\"");
    assert!(lua_result(port, &format!(r#"local up = ... return up.get_servers("127.0.0.1:{pa}")"#)).starts_with(&format!(r#"true|{{{{addr="127.0.0.1:{pa}""#)));

    // get_primary_peers / get_backup_peers
    let primary = lua_result(port, r#"local up = ... return up.get_primary_peers("foo")"#);
    assert_eq!(
        primary,
        format!(
            concat!(
                r#"true|{{{{conns=0,current_weight=0,effective_weight=3,fail_timeout=5,fails=0,id=0,max_fails=2,name="127.0.0.1:{a}",weight=3}},"#,
                r#"{{conns=0,current_weight=0,effective_weight=1,fail_timeout=10,fails=0,id=1,max_fails=1,name="127.0.0.1:{b}",weight=1}},"#,
                r#"{{conns=0,current_weight=0,down=true,effective_weight=1,fail_timeout=10,fails=0,id=2,max_fails=1,name="127.0.0.1:{d}",weight=1}}}}|nil"#
            ),
            a = pa,
            b = pb,
            d = pd
        )
    );
    assert_eq!(
        lua_result(port, r#"local up = ... return up.get_backup_peers("foo")"#),
        format!(r#"true|{{{{conns=0,current_weight=0,effective_weight=1,fail_timeout=10,fails=0,id=0,max_fails=1,name="127.0.0.1:{pc}",weight=1}}}}|nil"#)
    );
    assert_eq!(lua_result(port, r#"local up = ... return up.get_backup_peers("bar")"#), "true|{}|nil");
    assert_eq!(lua_result(port, r#"local up = ... return up.get_primary_peers("nope")"#), "true|nil|\"upstream not found\"");
    assert_eq!(lua_result(port, r#"local up = ... return up.get_backup_peers("nope")"#), "true|nil|\"upstream not found\"");

    // set_peer_down errors
    assert_eq!(lua_result(port, r#"local up = ... return up.set_peer_down("foo", false, 0)"#), "false|\"exactly 4 arguments expected\"|nil");
    assert_eq!(lua_result(port, r#"local up = ... return up.set_peer_down("nope", false, 0, true)"#), "true|nil|\"upstream not found\"");
    assert_eq!(lua_result(port, r#"local up = ... return up.set_peer_down("foo", false, 3, true)"#), "true|nil|\"bad peer id\"");
    assert_eq!(lua_result(port, r#"local up = ... return up.set_peer_down("foo", true, 1, true)"#), "true|nil|\"bad peer id\"");
    assert_eq!(lua_result(port, r#"local up = ... return up.set_peer_down("foo", false, -1, true)"#), "true|nil|\"bad peer id\"");
    assert_eq!(lua_result(port, r#"local up = ... return up.set_peer_down("bar", true, 0, true)"#), "true|nil|\"no backup peers\"");

    // current_upstream_name: nil before an upstream is chosen, the name once proxied
    assert_eq!(lua_result(port, "local up = ... return up.current_upstream_name()"), "true|nil|nil");
    let r = http::get(port, "/bar");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Upstream"), Some("bar"));
    assert_eq!(http::get(port, "/implicit").status, 200);

    // outside requests: init_worker and a timer
    assert_eq!(lua_result(port, r#"return ngx.shared.probe:get("init_worker")"#), format!(r#"true|"{{\"foo\",\"bar\",\"127.0.0.1:{pa}\"}} {{true}}"|nil"#));
    assert_eq!(lua_result(port, r#"return ngx.shared.probe:get("timer")"#), r#"true|"2 {true}"|nil"#);

    // With a zone, set_peer_down in one worker is seen by both and steers traffic.
    assert_eq!(lua_result(port, r#"local up = ... return up.set_peer_down("bar", false, 0, true)"#), "true|true|nil");
    let seen = workers_agree(port, r#"local up = ... return up.get_primary_peers("bar")[1].down"#, "true");
    assert!(seen, "a zone peer set down in one worker is down in both");
    let before = a.proxied();
    for _ in 0..20 {
        assert_eq!(http::get(port, "/bar").status, 200);
    }
    assert_eq!(a.proxied(), before, "no request reaches a peer that is down");
    assert_eq!(lua_result(port, r#"local up = ... return up.set_peer_down("bar", false, 0, false)"#), "true|true|nil");
    assert!(workers_agree(port, r#"local up = ... return up.get_primary_peers("bar")[1].down"#, "nil"));

    // Without a zone, only the calling worker changes.
    let out = lua(port, r#"local up = ... return up.set_peer_down("foo", false, 1, true)"#);
    let changed = out.split('|').next().unwrap().to_owned();
    let mut other_seen = false;
    for _ in 0..200 {
        let out = lua(port, r#"local up = ... return up.get_primary_peers("foo")[2].down"#);
        let (id, rest) = out.split_once('|').unwrap();
        if id == changed {
            assert_eq!(rest, "true|true|nil");
        } else {
            assert_eq!(rest, "true|nil|nil", "without a zone the other worker keeps its own peers");
            other_seen = true;
            break;
        }
    }
    assert!(other_seen, "both workers answered");
    // bringing a peer up resets its fails
    assert_eq!(lua_result(port, r#"local up = ... up.set_peer_down("bar", false, 1, false) return up.get_primary_peers("bar")[2].fails"#), "true|0|nil");

    assert_no_unexpected_errors(&nginx);
    drop((a, b, c, d));
}

/// True once both workers answered `code` with `expected` as its first result.
fn workers_agree(port: u16, code: &str, expected: &str) -> bool {
    let mut ok = [false, false];
    for _ in 0..200 {
        let out = lua(port, code);
        let mut parts = out.split('|');
        let id: usize = parts.next().unwrap().parse().unwrap();
        let _pcall = parts.next();
        ok[id] = parts.next() == Some(expected);
        if ok.iter().all(|&x| x) {
            return true;
        }
    }
    false
}

// ---------------------------------------------------------------------------------------
// resty.upstream.healthcheck
// ---------------------------------------------------------------------------------------

#[test]
fn healthcheck_spawn_checker_validation() {
    for strategy in Strategy::ALL {
        let running = start(strategy, "validate", "lua_shared_dict healthcheck 1m;\n    upstream foo { server 127.0.0.1:1; }\n");
        let code = r#"
            local hc = require "resty.upstream.healthcheck"
            local R = "GET / HTTP/1.0\r\n\r\n"
            local cases = {
                { upstream = "foo", type = "http", http_req = R },
                { shm = "nope", upstream = "foo", type = "http", http_req = R },
                { shm = "healthcheck", type = "http", http_req = R },
                { shm = "healthcheck", upstream = "nope", type = "http", http_req = R },
                { shm = "healthcheck", upstream = "foo", http_req = R },
                { shm = "healthcheck", upstream = "foo", type = "udp", http_req = R },
                { shm = "healthcheck", upstream = "foo", type = "tcp", http_req = R },
                { shm = "healthcheck", upstream = "foo", type = "tcp", valid_statuses = { 200 } },
                { shm = "healthcheck", upstream = "foo", type = "http" },
            }
            local out = {}
            for i, o in ipairs(cases) do
                local ok, err = hc.spawn_checker(o)
                out[i] = tostring(ok) .. ":" .. tostring(err)
            end
            return table.concat(out, "\n")
        "#;
        let out = lua_result(running.port, code);
        let expected = [
            r#"nil:"shm" option required"#,
            r#"nil:shm "nope" not found"#,
            "nil:no upstream specified",
            "nil:failed to get primary peers: upstream not found",
            r#"nil:"type" option required"#,
            r#"nil:only "http", "https" and "tcp" type are supported right now"#,
            r#"nil:"http_req" option not allowed with type "tcp" (a tcp check sends nothing)"#,
            r#"nil:"valid_statuses" option not allowed with type "tcp""#,
            r#"nil:"http_req" option required"#,
        ]
        .join("\n");
        let got: String = out.strip_prefix("true|").unwrap().strip_suffix("|nil").unwrap().to_owned();
        // %q escapes newlines as "\<newline>" and quotes as \"
        let got = got.trim_matches('"').replace("\\\n", "\n").replace("\\\"", "\"");
        assert_eq!(got, expected, "{}", strategy.name());
        running.nginx.quit();
    }
}

#[test]
fn healthcheck_fall_rise_failure_modes_and_backup() {
    for strategy in Strategy::ALL {
        fall_rise_on(strategy);
    }
}

fn fall_rise_on(strategy: Strategy) {
    let a = Backend::http("a");
    let b = Backend::http("b");
    let c = Backend::http("c");
    let (pa, pb, pc) = (a.port(), b.port(), c.port());
    let http_body = format!(
        r#"
    lua_shared_dict healthcheck 1m;
    upstream foo {{
        server 127.0.0.1:{pa};
        server 127.0.0.1:{pb};
        server 127.0.0.1:{pc} backup;
    }}
    init_worker_by_lua_block {{
        {}
    }}
"#,
        checker("foo", "valid_statuses = {200, 204}, concurrency = 2,")
    );
    let running = start(strategy, "fallrise", &http_body);
    let (nginx, port) = (&running.nginx, running.port);
    let all_up = |s: &str| !s.contains("DOWN");
    until_all_workers(port, "/status-w", Duration::from_secs(5), all_up).expect("all peers up at start");

    let peer_a = format!("127.0.0.1:{pa}");
    let cases: [(Mode, &[&str]); 5] = [
        (Mode::ERROR, &["errlog(): healthcheck: bad status code from PEER: 500, context: "]),
        (Mode::Hang, &["errlog(): healthcheck: failed to receive status line from PEER: timeout, context: "]),
        (
            Mode::Close,
            &[
                "errlog(): healthcheck: failed to receive status line from PEER: closed, context: ",
                "errlog(): healthcheck: failed to receive status line from PEER: connection reset by peer, context: ",
                "errlog(): healthcheck: failed to send request to PEER: ",
            ],
        ),
        (Mode::Garbage, &["errlog(): healthcheck: bad status line from PEER: GARBAGE NOT HTTP, context: "]),
        (Mode::Refuse, &["errlog(): healthcheck: failed to connect to PEER: connection refused, context: "]),
    ];
    for (mode, errors) in cases {
        let from = log_len(nginx);
        a.set_mode(mode);
        let down_after =
            wait_log(nginx, from, &format!("warn(): healthcheck: peer {peer_a} is turned down after 2 failure(s), context: "), Duration::from_secs(10));
        let log = nginx.error_log()[from..].to_owned();
        assert!(errors.iter().any(|e| log.contains(&e.replace("PEER", &peer_a))), "{mode:?}: expected one of {errors:?} in:\n{log}");
        let line = format!("        {peer_a} DOWN\n");
        let agree = until_all_workers(port, "/status-w", Duration::from_millis(3 * INTERVAL_MS), |s| s.contains(&line))
            .unwrap_or_else(|| panic!("{mode:?}: not every worker shows {peer_a} DOWN within 3 intervals"));
        eprintln!("[{}] {mode:?}: turned down {down_after:?} after the failure began; every worker agreed {agree:?} later", strategy.name());
        // fall = 2 failures at 500 ms intervals (+ the 300 ms timeout for Hang)
        assert!(down_after < Duration::from_millis(4 * INTERVAL_MS), "{mode:?}: took {down_after:?}");

        sleep(Duration::from_millis(INTERVAL_MS + 100));
        let before = a.proxied();
        for _ in 0..20 {
            let r = http::get(port, "/foo/x");
            assert_eq!(r.status, 200, "{}", r.body);
            assert!(r.body.starts_with("backend=b "), "{}", r.body);
        }
        assert_eq!(a.proxied(), before, "{mode:?}: no proxied request reaches the down peer");

        let from = log_len(nginx);
        a.set_mode(Mode::OK);
        let up_after =
            wait_log(nginx, from, &format!("warn(): healthcheck: peer {peer_a} is turned up after 2 success(es), context: "), Duration::from_secs(10));
        until_all_workers(port, "/status-w", Duration::from_millis(3 * INTERVAL_MS), all_up).expect("every worker shows it up again");
        eprintln!("[{}] {mode:?}: turned up {up_after:?} after recovery", strategy.name());
    }

    // Probe errors are logged while the peer is up, not on every round while it is down.
    let from = log_len(nginx);
    a.set_mode(Mode::ERROR);
    wait_log(nginx, from, &format!("peer {peer_a} is turned down"), Duration::from_secs(10));
    let mark = log_len(nginx);
    sleep(Duration::from_millis(4 * INTERVAL_MS));
    assert!(!nginx.error_log()[mark..].contains(&format!("bad status code from {peer_a}")), "no error lines while down");
    a.set_mode(Mode::OK);
    wait_log(nginx, mark, &format!("peer {peer_a} is turned up"), Duration::from_secs(10));

    // Backup peers are checked too.
    let from = log_len(nginx);
    c.set_mode(Mode::ERROR);
    wait_log(nginx, from, &format!("warn(): healthcheck: peer 127.0.0.1:{pc} is turned down after 2 failure(s), context: "), Duration::from_secs(10));
    let backup_line = format!("    Backup Peers\n        127.0.0.1:{pc} DOWN\n");
    until_all_workers(port, "/status-w", Duration::from_millis(3 * INTERVAL_MS), |s| s.contains(&backup_line)).expect("backup down everywhere");
    assert!(c.probes() > 0 && b.probes() > 0);

    assert_no_unexpected_errors(nginx);
    running.nginx.quit();
}

#[test]
fn healthcheck_status_pages_exact() {
    for strategy in Strategy::ALL {
        let a = Backend::http("a");
        let b = Backend::http("b");
        let c = Backend::http("c");
        let (pa, pb, pc) = (a.port(), b.port(), c.port());
        b.set_mode(Mode::ERROR);
        let http_body = format!(
            r#"
    lua_shared_dict healthcheck 1m;
    upstream foo {{
        server 127.0.0.1:{pa};
        server 127.0.0.1:{pb};
        server 127.0.0.1:{pc} backup;
    }}
    upstream bar {{
        server 127.0.0.1:{pa};
    }}
    init_worker_by_lua_block {{
        {}
    }}
"#,
            checker("foo", "valid_statuses = {200},")
        );
        let running = start(strategy, "pages", &http_body);
        let port = running.port;
        let down = format!("127.0.0.1:{pb} DOWN");
        until_all_workers(port, "/status-w", Duration::from_secs(5), |s| s.contains(&down)).expect("b turned down");

        let status = http::get(port, "/status").body;
        assert_eq!(
            status,
            format!(
                "Upstream foo\n    Primary Peers\n        127.0.0.1:{pa} UP\n        127.0.0.1:{pb} DOWN\n    Backup Peers\n        127.0.0.1:{pc} UP\n\
                 \n\
                 Upstream bar (NO checkers)\n    Primary Peers\n        127.0.0.1:{pa} UP\n    Backup Peers\n"
            )
        );
        let metrics = http::get(port, "/metrics").body;
        let m = |ep: u16, status: &str, role: &str, v: u8| {
            format!("nginx_upstream_status_info{{name=\"foo\",endpoint=\"127.0.0.1:{ep}\",status=\"{status}\",role=\"{role}\"}} {v}\n")
        };
        let expected = [
            "# HELP nginx_upstream_status_info The running status of nginx upstream\n".to_owned(),
            "# TYPE nginx_upstream_status_info gauge\n".to_owned(),
            m(pa, "UP", "PRIMARY", 1),
            m(pa, "DOWN", "PRIMARY", 0),
            m(pb, "UP", "PRIMARY", 0),
            m(pb, "DOWN", "PRIMARY", 1),
            m(pc, "UP", "BACKUP", 1),
            m(pc, "DOWN", "BACKUP", 0),
            "nginx_upstream_status_info{name=\"foo\",status=\"UP\"} 1\n".to_owned(),
            "nginx_upstream_status_info{name=\"foo\",status=\"DOWN\"} 0\n".to_owned(),
            "nginx_upstream_status_info{name=\"foo\",status=\"UNKNOWN\"} 0\n".to_owned(),
            "nginx_upstream_status_info{name=\"bar\",status=\"UP\"} 0\n".to_owned(),
            "nginx_upstream_status_info{name=\"bar\",status=\"DOWN\"} 0\n".to_owned(),
            "nginx_upstream_status_info{name=\"bar\",status=\"UNKNOWN\"} 1\n".to_owned(),
        ]
        .concat();
        // The original's families come first and unchanged; the probe metrics follow.
        let (original, probes) = metrics.split_at(metrics.find("# HELP nginx_upstream_probe_").unwrap_or(metrics.len()));
        assert_eq!(original, expected);
        for ep in [pa, pb, pc] {
            let series = format!("nginx_upstream_probe_failures_total{{name=\"foo\",endpoint=\"127.0.0.1:{ep}\",role=");
            assert!(probes.contains(&series), "{series} in:\n{probes}");
        }
        assert!(!probes.contains("name=\"bar\""), "no probe metrics for an upstream without a checker:\n{probes}");

        // every peer down: the upstream is DOWN
        a.set_mode(Mode::ERROR);
        c.set_mode(Mode::ERROR);
        let foo_down = format!("        127.0.0.1:{pa} DOWN\n        127.0.0.1:{pb} DOWN\n    Backup Peers\n        127.0.0.1:{pc} DOWN\n");
        let all_down = |s: &str| s.contains(&foo_down);
        until_all_workers(port, "/status-w", Duration::from_secs(6), all_down).expect("all of foo down");
        let metrics = http::get(port, "/metrics").body;
        assert!(metrics.contains("nginx_upstream_status_info{name=\"foo\",status=\"UP\"} 0\n"), "{metrics}");
        assert!(metrics.contains("nginx_upstream_status_info{name=\"foo\",status=\"DOWN\"} 1\n"), "{metrics}");
        assert_no_unexpected_errors(&running.nginx);
        running.nginx.quit();
    }
}

#[test]
fn healthcheck_reload_keeps_state_by_peer_name() {
    for strategy in Strategy::ALL {
        let a = Backend::http("a");
        let b = Backend::http("b");
        let e = Backend::http("e");
        let (pa, pb, pe) = (a.port(), b.port(), e.port());
        let body = |servers: &str| {
            format!(
                "\n    lua_shared_dict healthcheck 1m;\n    upstream foo {{\n{servers}    }}\n    init_worker_by_lua_block {{\n        {}\n    }}\n",
                checker("foo", "valid_statuses = {200},")
            )
        };
        let first = body(&format!("        server 127.0.0.1:{pa};\n        server 127.0.0.1:{pb};\n"));
        let mut running = start(strategy, "reload", &first);
        let port = running.port;
        a.set_mode(Mode::ERROR);
        let down_a = format!("127.0.0.1:{pa} DOWN");
        until_all_workers(port, "/status-w", Duration::from_secs(5), |s| s.contains(&down_a)).expect("a down");

        // Reload with the servers reordered and one added: a is now peer 1, b peer 0.
        let second = body(&format!("        server 127.0.0.1:{pb};\n        server 127.0.0.1:{pa};\n        server 127.0.0.1:{pe};\n"));
        let full = conf(strategy, port, &second);
        let from = log_len(&running.nginx);
        running.nginx.reload(&full);
        let expected = format!("    Primary Peers\n        127.0.0.1:{pb} UP\n        127.0.0.1:{pa} DOWN\n        127.0.0.1:{pe} UP\n");
        let took = until_all_workers(port, "/status-w", Duration::from_millis(2 * INTERVAL_MS), |s| s.contains(&expected))
            .expect("after the reload each peer keeps its own state");
        eprintln!("[{}] state applied by the new workers {took:?} after the reload", strategy.name());
        let log = running.nginx.error_log()[from..].to_owned();
        assert!(!log.contains("is turned down"), "no peer had to fail again after the reload:\n{log}");

        sleep(Duration::from_millis(INTERVAL_MS));
        let before = a.proxied();
        for _ in 0..20 {
            assert_eq!(http::get(port, "/foo/x").status, 200);
        }
        assert_eq!(a.proxied(), before, "the down peer gets no traffic after the reload");

        let from = log_len(&running.nginx);
        a.set_mode(Mode::OK);
        wait_log(
            &running.nginx,
            from,
            &format!("warn(): healthcheck: peer 127.0.0.1:{pa} is turned up after 2 success(es), context: "),
            Duration::from_secs(10),
        );
        assert_no_unexpected_errors(&running.nginx);
        running.nginx.quit();
    }
}

#[test]
fn healthcheck_one_worker_probes_per_interval_and_shared_shm() {
    for strategy in Strategy::ALL {
        let a = Backend::http("a");
        let b = Backend::http("b");
        let target = Backend::http("target");
        let (pa, pb) = (a.port(), b.port());
        // "p" names a port nobody listens on; `port` sends its probes to `target` instead.
        let unused = free_port();
        let http_body = format!(
            r#"
    lua_shared_dict healthcheck 1m;
    upstream foo {{ server 127.0.0.1:{pa}; }}
    upstream bar {{ server 127.0.0.1:{pb}; }}
    upstream p {{ server 127.0.0.1:{unused}; }}
    init_worker_by_lua_block {{
        {}
        {}
        {}
    }}
"#,
            checker("foo", "valid_statuses = {200},"),
            checker("bar", "valid_statuses = {200},"),
            checker("p", &format!("port = {},", target.port())),
        );
        let running = start(strategy, "shared", &http_body);
        let port = running.port;
        b.set_mode(Mode::ERROR);

        let started = Instant::now();
        a.reset_counts();
        sleep(Duration::from_millis(6 * INTERVAL_MS));
        let probes = a.probes();
        let rounds = started.elapsed().as_millis() as usize / INTERVAL_MS as usize;
        eprintln!("[{}] {probes} probes in {rounds} intervals with 2 workers", strategy.name());
        assert!(probes >= rounds - 2 && probes <= rounds + 1, "one probe per interval, not one per worker: {probes} in {rounds}");

        // Several upstreams in one shm keep separate state.
        let status = http::get(port, "/status").body;
        assert!(status.contains(&format!("Upstream foo\n    Primary Peers\n        127.0.0.1:{pa} UP\n")), "{status}");
        assert!(status.contains(&format!("Upstream bar\n    Primary Peers\n        127.0.0.1:{pb} DOWN\n")), "{status}");
        // The port override: the peer is up because `target` answers its probes.
        assert!(status.contains(&format!("Upstream p\n    Primary Peers\n        127.0.0.1:{unused} UP\n")), "{status}");
        assert!(target.probes() > 0);
        assert!(target.requests().iter().all(|r| r.line == "GET /health HTTP/1.0"));
        assert_no_unexpected_errors(&running.nginx);
        running.nginx.quit();
    }
}

#[test]
fn healthcheck_https_sni_and_verify() {
    for strategy in Strategy::ALL {
        let ca = TestCa::new();
        let tls = Backend::https("tls", &ca, &["secure.test"]);
        let pt = tls.port();
        let dir = temp_dir(&format!("issue4-https-{}", strategy.name()));
        set_mode(dir.path(), 0o755);
        let prefix = unpack_bundle(strategy, dir.path());
        let ca_path = prefix.join("conf/test-ca.pem");
        ca.write_pem(&ca_path);
        let https = |u: &str, extra: &str| {
            format!(
                r#"do
                local ok, err = require("resty.upstream.healthcheck").spawn_checker({{
                    shm = "healthcheck", upstream = "{u}", type = "https",
                    http_req = "GET /health HTTP/1.0\r\nHost: secure.test\r\n\r\n",
                    interval = {INTERVAL_MS}, timeout = 300, fall = 2, rise = 2,
                    valid_statuses = {{200}}, {extra}
                }})
                if not ok then ngx.log(ngx.ERR, "failed to spawn health checker: ", err) end
            end
            "#
            )
        };
        let http_body = format!(
            r#"
    lua_shared_dict healthcheck 1m;
    lua_ssl_trusted_certificate {};
    upstream good {{ server 127.0.0.1:{pt}; }}
    upstream wrongname {{ server 127.0.0.1:{pt}; }}
    upstream noverify {{ server 127.0.0.1:{pt}; }}
    init_worker_by_lua_block {{
        {}
        {}
        {}
    }}
"#,
            ca_path.display(),
            https("good", r#"host = "secure.test","#),
            https("wrongname", r#"host = "other.test", log_upstream = true,"#),
            https("noverify", r#"host = "other.test", ssl_verify = false,"#),
        );
        let port = free_port();
        let nginx = Nginx::start(&prefix, &conf(strategy, port, &http_body), &[port]);
        let peer = format!("127.0.0.1:{pt}");
        let want = format!(
            "Upstream good\n    Primary Peers\n        {peer} UP\n    Backup Peers\n\n\
             Upstream wrongname\n    Primary Peers\n        {peer} DOWN\n    Backup Peers\n\n\
             Upstream noverify\n    Primary Peers\n        {peer} UP\n    Backup Peers\n"
        );
        until_all_workers(port, "/status-w", Duration::from_secs(5), |s| s == want)
            .unwrap_or_else(|| panic!("https states:\n{}", http::get(port, "/status").body));
        let log = nginx.error_log();
        // lua-nginx-module 0.10.23 reports a host mismatch from sslhandshake() when the
        // handshake needed a round trip, but returns success on a closed socket when it
        // completed at once: then the send fails. Either way the peer counts as failed.
        assert!(
            log.contains(&format!("errlog(): healthcheck: failed to ssl handshake to {peer}: certificate host mismatch (upstream wrongname), context: "))
                || log.contains(&format!("errlog(): healthcheck: failed to send request to {peer}: closed (upstream wrongname), context: ")),
            "{log}"
        );
        let snis: Vec<Option<String>> = tls.requests().iter().map(|r| r.sni.clone()).collect();
        assert!(snis.contains(&Some("secure.test".to_owned())), "SNI of the good checker: {snis:?}");
        assert!(snis.contains(&Some("other.test".to_owned())), "SNI of the no-verify checker: {snis:?}");
        nginx.quit();
    }
}

/// A minimal always-200 server on a listener of any kind, stopped on drop.
struct TinyServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TinyServer {
    fn serve<L, S>(listener: L, accept: fn(&L) -> std::io::Result<S>) -> TinyServer
    where
        L: Send + 'static,
        S: std::io::Read + std::io::Write + 'static,
    {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let hits = std::sync::Arc::new(AtomicUsize::new(0));
        let (stop2, hits2) = (stop.clone(), hits.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match accept(&listener) {
                    Ok(mut s) => {
                        // requests are tiny: one read gets the head
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf);
                        let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
                        hits2.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => sleep(Duration::from_millis(10)),
                }
            }
        });
        TinyServer { stop, hits, thread: Some(thread) }
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for TinyServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_unix(l: &std::os::unix::net::UnixListener) -> std::io::Result<std::os::unix::net::UnixStream> {
    let (s, _) = l.accept()?;
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

fn accept_tcp(l: &std::net::TcpListener) -> std::io::Result<std::net::TcpStream> {
    let (s, _) = l.accept()?;
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

#[test]
fn healthcheck_ipv6_unix_peers_and_label_escaping() {
    for strategy in Strategy::ALL {
        let dir = temp_dir(&format!("issue4-unix-{}", strategy.name()));
        set_mode(dir.path(), 0o755);
        let sock_path = dir.path().join("hc.sock");
        let unix = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
        unix.set_nonblocking(true).unwrap();
        set_mode(&sock_path, 0o777); // workers run as nobody
        let unix_server = TinyServer::serve(unix, accept_unix);
        let v6 = std::net::TcpListener::bind("[::1]:0").expect("::1 is available");
        v6.set_nonblocking(true).unwrap();
        let p6 = v6.local_addr().unwrap().port();
        let v6_server = TinyServer::serve(v6, accept_tcp);

        let prefix = unpack_bundle(strategy, dir.path());
        let sock = sock_path.display().to_string();
        // An upstream name holding a quote and a backslash: we"ird\x
        let http_body = format!(
            r#"
    lua_shared_dict healthcheck 1m;
    upstream "we\"ird\\x" {{
        server unix:{sock};
        server [::1]:{p6};
    }}
    init_worker_by_lua_block {{
        local ok, err = require("resty.upstream.healthcheck").spawn_checker({{
            shm = "healthcheck", upstream = 'we"ird\\x', type = "http",
            http_req = "GET /health HTTP/1.0\r\n\r\n",
            interval = {INTERVAL_MS}, timeout = 300, fall = 2, rise = 2, valid_statuses = {{200}},
            log_upstream = true,
        }})
        if not ok then ngx.log(ngx.ERR, "failed to spawn health checker: ", err) end
    }}
"#
        );
        let port = free_port();
        let nginx = Nginx::start(&prefix, &conf(strategy, port, &http_body), &[port]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while (unix_server.hits() < 2 || v6_server.hits() < 2) && Instant::now() < deadline {
            sleep(Duration::from_millis(50));
        }
        assert!(unix_server.hits() >= 2 && v6_server.hits() >= 2, "both peers probed: unix {} ipv6 {}", unix_server.hits(), v6_server.hits());
        assert_eq!(
            http::get(port, "/status").body,
            format!("Upstream we\"ird\\x\n    Primary Peers\n        unix:{sock} UP\n        [::1]:{p6} UP\n    Backup Peers\n")
        );
        let metrics = http::get(port, "/metrics").body;
        let name = r#"name="we\"ird\\x""#;
        assert!(metrics.contains(&format!("nginx_upstream_status_info{{{name},endpoint=\"unix:{sock}\",status=\"UP\",role=\"PRIMARY\"}} 1\n")), "{metrics}");
        assert!(metrics.contains(&format!("nginx_upstream_status_info{{{name},endpoint=\"[::1]:{p6}\",status=\"UP\",role=\"PRIMARY\"}} 1\n")), "{metrics}");
        assert!(metrics.contains(&format!("nginx_upstream_status_info{{{name},status=\"UP\"}} 1\n")), "{metrics}");

        assert_no_unexpected_errors(&nginx);

        // The unix peer goes away: it is turned down, naming it (and, with log_upstream, the
        // upstream). (nginx itself logs a failed connect() to a missing unix socket at [crit].)
        let from = log_len(&nginx);
        drop(unix_server);
        let _ = fs::remove_file(&sock_path);
        wait_log(&nginx, from, &format!("healthcheck: peer unix:{sock} is turned down after 2 failure(s) (upstream we\"ird\\x)"), Duration::from_secs(10));
        assert!(nginx.error_log()[from..].contains(&format!("errlog(): healthcheck: failed to connect to unix:{sock}: ")));
        nginx.quit();
        drop(v6_server);
    }
}

#[test]
fn healthcheck_concurrency_checks_many_peers_in_parallel() {
    const PEERS: usize = 60;
    const HANGING: usize = 30;
    for strategy in Strategy::ALL {
        let backends: Vec<Backend> = (0..PEERS).map(|i| Backend::http(&format!("peer{i}"))).collect();
        let servers: String = backends.iter().map(|b| format!("server 127.0.0.1:{};\n", b.port())).collect();
        let http_body = format!(
            "    lua_shared_dict healthcheck 4m;\n    upstream big {{\n{servers}    }}\n    init_worker_by_lua_block {{\n{}\n    }}\n",
            checker("big", "concurrency = 10,")
        );
        let running = start(strategy, "concurrency", &http_body);
        // Half the peers hang past the 300 ms timeout. One at a time, a round would take
        // 30 x 0.3 s = 9 s and turning them down (fall = 2) at least 18 s; ten light threads,
        // each given 6 consecutive peers as the original splits them, need 6 x 0.3 s.
        for b in &backends[..HANGING] {
            b.set_mode(Mode::Hang);
        }
        let from = log_len(&running.nginx);
        let started = Instant::now();
        let all_down = loop {
            let status = http::get(running.port, "/status").body;
            let down = status.matches(" DOWN\n").count();
            if down == HANGING {
                break status;
            }
            assert!(started.elapsed() < Duration::from_secs(8), "{down} of {HANGING} peers down after {:?}:\n{status}", started.elapsed());
            sleep(Duration::from_millis(50));
        };
        eprintln!("[{}] {HANGING} hanging peers of {PEERS} down after {:?}", strategy.name(), started.elapsed());
        for b in &backends[..HANGING] {
            assert!(all_down.contains(&format!("127.0.0.1:{} DOWN\n", b.port())), "{all_down}");
        }
        for b in &backends[HANGING..] {
            assert!(all_down.contains(&format!("127.0.0.1:{} UP\n", b.port())), "{all_down}");
        }
        let log = running.nginx.error_log();
        assert_eq!(log[from..].matches("is turned down after 2 failure(s)").count(), HANGING, "one warning per hanging peer");
        assert_no_unexpected_errors(&running.nginx);
        running.nginx.quit();
    }
}

// ---------------------------------------------------------------------------------------
// The original's log lines, debug lines and no_timer
// ---------------------------------------------------------------------------------------

/// The lines the module wrote, as "healthcheck.lua:LINE: FUNC(): MESSAGE": from nginx's
/// `[lua] ` tag to where nginx's own ", context: " (timers) or ", client: " (requests)
/// begins, if it does (the first round, run by a timer made in init_worker, has neither).
fn module_lines(log: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in log.lines() {
        let Some(at) = line.find("[lua] healthcheck.lua:") else {
            continue;
        };
        let rest = &line[at + "[lua] ".len()..];
        let end = rest.find(", context: ").or_else(|| rest.find(", client: ")).unwrap_or(rest.len());
        out.push(rest[..end].to_owned());
    }
    out
}

/// "healthcheck.lua:123: warn(): m" -> ("healthcheck.lua:123: warn()", "warn(): m"); panics
/// unless the prefix is a line number and a function name.
fn split_location(line: &str) -> (String, String) {
    let rest = line.strip_prefix("healthcheck.lua:").unwrap();
    let (number, rest) = rest.split_once(": ").unwrap();
    assert!(!number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()), "line number in {line}");
    let (func, _) = rest.split_once("(): ").unwrap_or_else(|| panic!("no function name in {line}"));
    assert!(!func.is_empty() && func.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "function name in {line}");
    (format!("healthcheck.lua:{number}: {func}()"), rest.to_owned())
}

/// Waits until the error log holds `line` as a whole module message (see [`module_lines`]).
fn wait_module_line(nginx: &Nginx, line: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if module_lines(&nginx.error_log()).iter().any(|l| split_location(l).1 == line) {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "no line {line:?} within {limit:?}:\n{}", module_lines(&nginx.error_log()).join("\n"));
        sleep(Duration::from_millis(20));
    }
}

/// `n` distinct ports that were free a moment ago: bound all at once, then released (one
/// `free_port()` after another may hand out the same port twice).
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

#[test]
fn healthcheck_log_lines_are_the_originals_on_both_bundles() {
    // message (ports replaced by the peers' roles) -> "healthcheck.lua:LINE: FUNC()", per bundle
    let mut locations: Vec<std::collections::BTreeMap<String, String>> = Vec::new();
    for strategy in Strategy::ALL {
        let ok = Backend::http("ok");
        let notfound = Backend::http("notfound");
        notfound.set_mode(Mode::Status(404));
        let hang = Backend::http("hang");
        hang.set_mode(Mode::Hang);
        let [refused, nt, nt_port, port, b0, b1, b2, b3, b4, b5, b6] = free_ports();
        let bar = [b0, b1, b2, b3, b4, b5, b6];
        let (po, pn, ph) = (ok.port(), notfound.port(), hang.port());
        let bar_servers: String = bar.iter().enumerate().map(|(i, p)| format!("server 127.0.0.1:{p}{};\n", if i >= 5 { " backup" } else { "" })).collect();
        let http_body = format!(
            r#"
    lua_shared_dict healthcheck 1m;
    upstream foo.com {{
        server 127.0.0.1:{po};
        server 127.0.0.1:{pn};
        server 127.0.0.1:{ph};
        server 127.0.0.1:{refused} backup;
    }}
    upstream bar {{
{bar_servers}    }}
    upstream nt {{ server 127.0.0.1:{nt}; }}
    init_worker_by_lua_block {{
        -- read by the module when it is loaded, as in the original
        ngx.config.debug = true
        {}
        {}
    }}
    server {{
        listen 127.0.0.1:{{NT_PORT}};
        location = /nt {{
            content_by_lua_block {{
                local hc = require "resty.upstream.healthcheck"
                local ok, err = hc.spawn_checker({{
                    shm = "healthcheck", upstream = "nt", type = "http",
                    http_req = "GET /health HTTP/1.0\r\n\r\n",
                    interval = {INTERVAL_MS}, timeout = 300, fall = 1, no_timer = true,
                }})
                ngx.print(tostring(ok), " ", tostring(err), "\n", hc.status_page())
            }}
        }}
    }}
"#,
            checker("foo.com", "valid_statuses = {200}, concurrency = 3,"),
            checker("bar", "concurrency = 2, log_upstream = true,"),
        );
        let http_body = http_body.replace("{NT_PORT}", &nt_port.to_string());
        let dir = temp_dir(&format!("hc-lines-{}", strategy.name()));
        set_mode(dir.path(), 0o755);
        let prefix = unpack_bundle(strategy, dir.path());

        let full = conf(strategy, port, &http_body).replace("error.log info", "error.log debug");
        let nginx = Nginx::start(&prefix, &full, &[port, nt_port]);

        let peer = |p: u16| format!("127.0.0.1:{p}");
        for p in [pn, ph, refused] {
            wait_module_line(&nginx, &format!("warn(): healthcheck: peer {} is turned down after 2 failure(s)", peer(p)), Duration::from_secs(10));
        }
        wait_module_line(
            &nginx,
            &format!("warn(): healthcheck: peer {} is turned down after 2 failure(s) (upstream bar)", peer(bar[6])),
            Duration::from_secs(10),
        );
        hang.set_mode(Mode::OK);
        wait_module_line(&nginx, &format!("warn(): healthcheck: peer {} is turned up after 2 success(es)", peer(ph)), Duration::from_secs(10));

        // no_timer: one round in the calling request, no timer afterwards.
        let r = http::get(nt_port, "/nt");
        assert!(r.body.starts_with("true nil\n"), "{}", r.body);
        assert!(r.body.contains(&format!("Upstream nt\n    Primary Peers\n        {} DOWN\n    Backup Peers\n", peer(nt))), "{}", r.body);
        sleep(Duration::from_millis(3 * INTERVAL_MS));
        let log = nginx.error_log();
        let nt_checks = module_lines(&log).iter().filter(|l| l.ends_with(&format!("peer {} was checked to be not ok", peer(nt)))).count();
        assert_eq!(nt_checks, 1, "a no_timer checker probes once");
        nginx.quit();

        assert!(!log.contains("[string \"") && !log.contains(": (): "), "lines name the file and the function:\n{log}");
        // The state changes are followed directly by nginx's context.
        for p in [pn, ph] {
            let line = format!(": warn(): healthcheck: peer {} is turned down after 2 failure(s), context: ngx.timer", peer(p));
            assert!(log.contains(&line), "{line:?} in:\n{log}");
        }
        let lines = module_lines(&log);
        let messages: std::collections::BTreeSet<String> = lines.iter().map(|l| split_location(l).1).collect();
        let mut expected = vec![
            format!("errlog(): healthcheck: failed to connect to {}: connection refused", peer(refused)),
            format!("errlog(): healthcheck: bad status code from {}: 404", peer(pn)),
            format!("errlog(): healthcheck: failed to receive status line from {}: timeout", peer(ph)),
            format!("errlog(): healthcheck: failed to connect to {}: connection refused (upstream bar)", peer(bar[0])),
            format!("errlog(): healthcheck: failed to connect to {}: connection refused", peer(nt)),
            format!("warn(): healthcheck: peer {} is turned down after 1 failure(s)", peer(nt)),
            format!("debug(): healthcheck: peer {} was checked to be ok", peer(po)),
            format!("debug(): healthcheck: peer {} was checked to be not ok", peer(pn)),
            "debug(): healthcheck: publishing peers version 1".to_owned(),
            "debug(): healthcheck: healthcheck: run a check cycle".to_owned(),
            "debug(): healthcheck: spawn a thread checking primary peer 0".to_owned(),
            "debug(): healthcheck: spawn a thread checking primary peer 1".to_owned(),
            "debug(): healthcheck: check primary peer 2".to_owned(),
            "debug(): healthcheck: check backup peer 0".to_owned(),
            "debug(): healthcheck: spawn a thread checking primary peers 0 to 2".to_owned(),
            "debug(): healthcheck: check primary peers 3 to 4".to_owned(),
            "debug(): healthcheck: spawn a thread checking backup peer 0".to_owned(),
            "debug(): healthcheck: check backup peer 1".to_owned(),
        ];
        for p in [pn, ph, refused] {
            expected.push(format!("warn(): healthcheck: peer {} is turned down after 2 failure(s)", peer(p)));
        }
        expected.push(format!("warn(): healthcheck: peer {} is turned up after 2 success(es)", peer(ph)));
        for e in &expected {
            assert!(messages.contains(e), "[{}] no line {e:?} in:\n{}", strategy.name(), lines.join("\n"));
        }
        // Only the opted-in checker names its upstream.
        assert!(!messages.iter().any(|m| m.contains("(upstream foo.com)")), "{messages:?}");
        // The other worker applies what the probing one published.
        assert!(messages.iter().any(|m| m.starts_with("debug(): healthcheck: upgrading peers version to ")), "{messages:?}");

        let roles = [(peer(po), "OK"), (peer(pn), "NOTFOUND"), (peer(ph), "HANG"), (peer(refused), "REFUSED"), (peer(nt), "NT"), (peer(bar[0]), "BAR0")];
        let mut by_message = std::collections::BTreeMap::new();
        for l in &lines {
            let (location, mut message) = split_location(l);
            if expected.contains(&message) {
                for (addr, role) in &roles {
                    message = message.replace(addr.as_str(), role);
                }
                by_message.insert(message, location);
            }
        }
        assert_eq!(by_message.len(), expected.len());
        locations.push(by_message);
    }
    assert_eq!(locations[0], locations[1], "embed and lualib log the same file, line and function for the same events");
}

// ---------------------------------------------------------------------------------------
// Beyond the original: tcp checks and probe metrics
// ---------------------------------------------------------------------------------------

/// The value of the series `name{labels}` in a metrics page.
fn metric(page: &str, series: &str) -> Option<f64> {
    e2e::prometheus::parse(page).series(series)
}

#[test]
fn healthcheck_tcp_checks_and_probe_metrics() {
    const FAILED_PROBES: usize = 5;
    for strategy in Strategy::ALL {
        let ca = TestCa::new();
        let tls = Backend::https("tls", &ca, &["secure.test"]);
        // Accepts connections and never answers: healthy for a tcp check, which sends nothing.
        let accepts = Backend::http("accepts");
        accepts.set_mode(Mode::Hang);
        let [refused, metrics_peer, m_port, port] = free_ports();
        // Never accepted: the kernel completes the TCP handshake, the TLS one never ends.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (pt, pa, ps) = (tls.port(), accepts.port(), silent.local_addr().unwrap().port());

        let dir = temp_dir(&format!("hc-tcp-{}", strategy.name()));
        set_mode(dir.path(), 0o755);
        let prefix = unpack_bundle(strategy, dir.path());
        let ca_path = prefix.join("conf/test-ca.pem");
        ca.write_pem(&ca_path);
        let tcp = |u: &str, extra: &str| {
            format!(
                r#"do
                local ok, err = require("resty.upstream.healthcheck").spawn_checker({{
                    shm = "healthcheck", upstream = "{u}", type = "tcp",
                    interval = {INTERVAL_MS}, timeout = 300, fall = 2, rise = 2, {extra}
                }})
                if not ok then ngx.log(ngx.ERR, "failed to spawn health checker: ", err) end
            end
            "#
            )
        };
        let http_body = format!(
            r#"
    lua_shared_dict healthcheck 1m;
    lua_ssl_trusted_certificate {ca};
    upstream refused {{ server 127.0.0.1:{refused}; }}
    upstream accepts {{ server 127.0.0.1:{pa}; }}
    upstream tls_hang {{ server 127.0.0.1:{ps}; }}
    upstream tls_ok {{ server 127.0.0.1:{pt}; }}
    upstream tls_wrong {{ server 127.0.0.1:{pt}; }}
    upstream m {{ server 127.0.0.1:{metrics_peer}; }}
    init_worker_by_lua_block {{
        {}
        {}
        {}
        {}
        {}
    }}
    server {{
        listen 127.0.0.1:{{M_PORT}};
        # FAILED_PROBES rounds of a no_timer checker, then the metrics of this worker
        location = /m {{
            content_by_lua_block {{
                local hc = require "resty.upstream.healthcheck"
                for _ = 1, tonumber(ngx.var.arg_n) do
                    assert(hc.spawn_checker({{
                        shm = "healthcheck", upstream = "m", type = "tcp",
                        interval = 2, timeout = 300, fall = 1000, no_timer = true,
                    }}))
                    ngx.sleep(0.01)
                end
                ngx.print(assert(hc.prometheus_status_page()))
            }}
        }}
    }}
"#,
            tcp("refused", ""),
            tcp("accepts", ""),
            tcp("tls_hang", r#"ssl = true, host = "secure.test","#),
            tcp("tls_ok", r#"ssl = true, host = "secure.test","#),
            tcp("tls_wrong", r#"ssl = true, host = "other.test","#),
            ca = ca_path.display(),
        );
        let http_body = http_body.replace("{M_PORT}", &m_port.to_string());
        let started = Instant::now();
        let nginx = Nginx::start(&prefix, &conf(strategy, port, &http_body), &[port, m_port]);
        let peer = |p: u16| format!("127.0.0.1:{p}");

        wait_module_line(&nginx, &format!("warn(): healthcheck: peer {} is turned down after 2 failure(s)", peer(refused)), Duration::from_secs(10));
        let refused_down = started.elapsed();
        wait_module_line(&nginx, &format!("warn(): healthcheck: peer {} is turned down after 2 failure(s)", peer(ps)), Duration::from_secs(10));
        let hang_down = started.elapsed();
        let want = |a: &str| {
            format!(
                "Upstream refused\n    Primary Peers\n        {} DOWN\n    Backup Peers\n\n\
                 Upstream accepts\n    Primary Peers\n        {} {a}\n    Backup Peers\n\n\
                 Upstream tls_hang\n    Primary Peers\n        {} DOWN\n    Backup Peers\n\n\
                 Upstream tls_ok\n    Primary Peers\n        {} UP\n    Backup Peers\n\n\
                 Upstream tls_wrong\n    Primary Peers\n        {} DOWN\n    Backup Peers\n\n\
                 Upstream m (NO checkers)\n    Primary Peers\n        {} UP\n    Backup Peers\n",
                peer(refused),
                peer(pa),
                peer(ps),
                peer(pt),
                peer(pt),
                peer(metrics_peer)
            )
        };
        until_all_workers(port, "/status-w", Duration::from_secs(5), |s| s == want("UP"))
            .unwrap_or_else(|| panic!("tcp states:\n{}", http::get(port, "/status").body));
        eprintln!(
            "[{}] tcp, interval {INTERVAL_MS} ms, fall 2: refused peer seen down {refused_down:?} and hanging TLS peer {hang_down:?} after nginx was started",
            strategy.name()
        );

        let log = nginx.error_log();
        let messages: Vec<String> = module_lines(&log).iter().map(|l| split_location(l).1).collect();
        for e in [
            format!("errlog(): healthcheck: failed to connect to {}: connection refused", peer(refused)),
            format!("errlog(): healthcheck: failed to ssl handshake to {}: timeout", peer(ps)),
        ] {
            assert!(messages.contains(&e), "no line {e:?} in:\n{}", messages.join("\n"));
        }
        let wrong = format!("errlog(): healthcheck: failed to ssl handshake to {}: ", peer(pt));
        assert!(messages.iter().any(|m| m.starts_with(&wrong)), "a failed verification is a failed tcp check:\n{}", messages.join("\n"));
        // No request reached the accepting backend: nothing to write an access-log line for.
        assert!(accepts.requests().is_empty() && accepts.probes() == 0, "{:?}", accepts.requests());
        assert!(tls.requests().is_empty(), "tcp checks send no request over TLS either: {:?}", tls.requests());

        // A peer that stops accepting is turned down: the detection latency.
        let from = log_len(&nginx);
        let stopped = Instant::now();
        accepts.set_mode(Mode::Refuse);
        wait_log(&nginx, from, &format!("warn(): healthcheck: peer {} is turned down after 2 failure(s), context: ", peer(pa)), Duration::from_secs(10));
        eprintln!("[{}] tcp: a peer that stops accepting is turned down {:?} later", strategy.name(), stopped.elapsed());
        until_all_workers(port, "/status-w", Duration::from_secs(3), |s| s == want("DOWN")).expect("accepts down everywhere");

        // The metrics: the original's series unchanged, then the probe families.
        let page = http::get(m_port, &format!("/m?n={FAILED_PROBES}")).body;
        e2e::promtool::check_metrics(&page).unwrap_or_else(|e| panic!("[{}] promtool: {e}\n{page}", strategy.name()));
        let labels = |u: &str, p: u16| format!("{{name=\"{u}\",endpoint=\"127.0.0.1:{p}\",role=\"PRIMARY\"}}");
        assert_eq!(metric(&page, &format!("nginx_upstream_probe_failures_total{}", labels("m", metrics_peer))), Some(FAILED_PROBES as f64), "{page}");
        assert_eq!(metric(&page, &format!("nginx_upstream_probe_failures_total{}", labels("tls_ok", pt))), Some(0.0), "{page}");
        assert!(metric(&page, &format!("nginx_upstream_probe_failures_total{}", labels("refused", refused))).unwrap() >= 2.0, "{page}");
        let hang_duration = metric(&page, &format!("nginx_upstream_probe_duration_seconds{}", labels("tls_hang", ps))).unwrap();
        assert!((0.25..5.0).contains(&hang_duration), "the last probe of the hanging peer lasted its 300 ms timeout: {hang_duration}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let changed = metric(&page, &format!("nginx_upstream_state_change_timestamp_seconds{}", labels("accepts", pa))).unwrap();
        assert!(changed > now - 10.0 && changed <= now + 1.0, "state change at {changed}, now {now}");
        assert_eq!(metric(&page, &format!("nginx_upstream_state_change_timestamp_seconds{}", labels("tls_ok", pt))), None, "never changed: no series");
        for family in [
            "nginx_upstream_probe_duration_seconds gauge",
            "nginx_upstream_probe_failures_total counter",
            "nginx_upstream_state_change_timestamp_seconds gauge",
        ] {
            assert_eq!(page.matches(&format!("# TYPE {family}\n")).count(), 1, "{page}");
        }
        assert!(
            page.contains(&format!("nginx_upstream_status_info{{name=\"m\",endpoint=\"127.0.0.1:{metrics_peer}\",status=\"UP\",role=\"PRIMARY\"}} 1\n")),
            "{page}"
        );

        assert_no_unexpected_errors(&nginx);
        nginx.quit();
        drop(silent);
    }
}

#[test]
fn healthcheck_honours_state_written_in_the_originals_layout() {
    for strategy in Strategy::ALL {
        let backends: Vec<Backend> = (0..4).map(|i| Backend::http(&format!("ok{i}"))).collect();
        let p: Vec<u16> = backends.iter().map(|b| b.port()).collect();
        let [refused, port] = free_ports();
        // The original keys its state by index: "v:UPSTREAM" (version), "d:UPSTREAM:p1" (the
        // second primary is down), "d:UPSTREAM:b0" (the first backup). The first worker to
        // start seeds them, as a running original would have left them.
        let http_body = format!(
            r#"
    lua_shared_dict healthcheck 1m;
    upstream foo.com {{
        server 127.0.0.1:{};
        server 127.0.0.1:{};
        server 127.0.0.1:{} backup;
    }}
    upstream baz {{
        server 127.0.0.1:{refused} down;
        server 127.0.0.1:{};
    }}
    init_worker_by_lua_block {{
        ngx.config.debug = true
        local dict = ngx.shared.healthcheck
        if dict:add("seeded", true) then
            assert(dict:set("v:foo.com", 1))
            assert(dict:set("d:foo.com:p1", true))
            assert(dict:set("d:foo.com:b0", true))
            assert(dict:set("v:baz", 1))
        end
        {}
        {}
    }}
"#,
            p[0],
            p[1],
            p[2],
            p[3],
            checker("foo.com", "valid_statuses = {200},"),
            checker("baz", "valid_statuses = {200},"),
        );
        let dir = temp_dir(&format!("hc-layout-{}", strategy.name()));
        set_mode(dir.path(), 0o755);
        let prefix = unpack_bundle(strategy, dir.path());
        let full = conf(strategy, port, &http_body).replace("error.log info", "error.log debug");
        let nginx = Nginx::start(&prefix, &full, &[port]);
        let peer = |port: u16| format!("127.0.0.1:{port}");

        // The flagged peers start down, then rise; the peer marked down in the configuration
        // follows the published state (up, as no flag says otherwise), then its checks.
        for line in [
            format!("warn(): healthcheck: peer {} is turned up after 2 success(es)", peer(p[1])),
            format!("warn(): healthcheck: peer {} is turned up after 2 success(es)", peer(p[2])),
            format!("warn(): healthcheck: peer {} is turned down after 2 failure(s)", peer(refused)),
        ] {
            wait_module_line(&nginx, &line, Duration::from_secs(10));
        }
        let log = nginx.error_log();
        let messages: Vec<String> = module_lines(&log).iter().map(|l| split_location(l).1).collect();
        for e in [
            "debug(): healthcheck: upgrading peers version to 1".to_owned(),
            "debug(): healthcheck: publishing peers version 2".to_owned(),
            format!("errlog(): healthcheck: failed to connect to {}: connection refused", peer(refused)),
        ] {
            assert!(messages.contains(&e), "[{}] no line {e:?} in:\n{}", strategy.name(), messages.join("\n"));
        }
        assert!(!messages.iter().any(|m| m.contains(&format!("peer {} is turned", peer(p[0])))), "the unflagged peer stays up");
        let want = format!(
            "Upstream foo.com\n    Primary Peers\n        {} UP\n        {} UP\n    Backup Peers\n        {} UP\n\n\
             Upstream baz\n    Primary Peers\n        {} DOWN\n        {} UP\n    Backup Peers\n",
            peer(p[0]),
            peer(p[1]),
            peer(p[2]),
            peer(refused),
            peer(p[3])
        );
        until_all_workers(port, "/status-w", Duration::from_secs(3), |s| s == want).unwrap_or_else(|| panic!("{}", http::get(port, "/status").body));
        assert_no_unexpected_errors(&nginx);
        nginx.quit();
    }
}
