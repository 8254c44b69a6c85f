//! The project's vhost traffic status module (`modules/ngx_http_vhost_traffic_status`).
//!
//! Every test starts the real static nginx from a release bundle with two workers and talks to
//! it on 127.0.0.1 only. Upstream peers are extra `server` blocks of the same nginx (with
//! accounting off), so no other process is needed. Expected numbers come from the request plan
//! and, for bytes and the peer each request went to, from nginx's own access log.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use e2e::http::{self, Response};
use e2e::json::Json;
use e2e::prometheus::{self, Exposition};
use e2e::{free_port, temp_dir, unpack_bundle, Nginx, Strategy};

// ---------------------------------------------------------------------------------------------
// Helpers: bundles and configurations
// ---------------------------------------------------------------------------------------------

fn bundle(strategy: Strategy) -> (tempfile::TempDir, PathBuf) {
    let dir = temp_dir(&format!("vts-{}", strategy.name()));
    let root = unpack_bundle(strategy, dir.path());
    (dir, root)
}

/// A complete nginx.conf with two workers around the given `http {}` body. The Lua path
/// matters only to the lualib bundle (lua-nginx-module loads resty.core at start).
fn conf(http_body: &str) -> String {
    let path = pipeline::dist::LUA_PACKAGE_PATH;
    format!(
        r#"worker_processes 2;
error_log logs/error.log info;
pid logs/nginx.pid;
events {{ worker_connections 256; }}
http {{
    {path}
{http_body}
}}
"#
    )
}

/// A server on `port` that answers like an application: `/code/NNN` with status NNN.
/// Not counted itself (`vhost_traffic_status off`).
fn backend(port: u16) -> String {
    format!(
        r#"
    server {{
        listen 127.0.0.1:{port};
        server_name backend{port};
        vhost_traffic_status off;
        access_log off;
        location / {{ return 200 "backend {port}\n"; }}
        location = /code/302 {{ return 302 /elsewhere; }}
        location = /code/404 {{ return 404; }}
        location = /code/503 {{ return 503; }}
    }}"#
    )
}

fn get_host(port: u16, host: &str, path: &str) -> Response {
    http::request(port, "GET", path, &[("Host", host)])
}

/// Runs every `(host, path)` of `plan` against `port` from `threads` client threads; returns
/// the status codes in plan order.
fn run_plan(port: u16, plan: &[(&str, &str)], threads: usize) -> Vec<u16> {
    let next = AtomicUsize::new(0);
    let statuses: Vec<AtomicUsize> = plan.iter().map(|_| AtomicUsize::new(0)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&(host, path)) = plan.get(i) else {
                    break;
                };
                let r = get_host(port, host, path);
                statuses[i].store(r.status as usize, Ordering::SeqCst);
            });
        }
    });
    statuses.iter().map(|s| s.load(Ordering::SeqCst) as u16).collect()
}

// ---------------------------------------------------------------------------------------------
// Helpers: expectations from the access log
// ---------------------------------------------------------------------------------------------

const LOG_FORMAT: &str = r#"log_format vts_test '$server_name|$host|$status|$request_length|$bytes_sent|$upstream_addr|$upstream_status|$uri';"#;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Counts {
    total: u64,
    classes: [u64; 5],
    bytes_in: u64,
    bytes_out: u64,
}

impl Counts {
    fn add(&mut self, status: u64, bytes_in: u64, bytes_out: u64) {
        self.total += 1;
        if (100..600).contains(&status) {
            self.classes[(status / 100 - 1) as usize] += 1;
        }
        self.bytes_in += bytes_in;
        self.bytes_out += bytes_out;
    }
}

struct Expected {
    servers: BTreeMap<String, Counts>,
    upstreams: BTreeMap<(String, String), Counts>,
}

/// Reads `logs/vts_access.log` (format [`LOG_FORMAT`]); `key` maps `($server_name, $host)` to
/// the server zone, `group` maps `$uri` to the upstream group.
fn expected_from_log(prefix: &Path, key: impl Fn(&str, &str) -> String, group: impl Fn(&str) -> String) -> Expected {
    let log = std::fs::read_to_string(prefix.join("logs/vts_access.log")).expect("read the access log");
    let mut servers: BTreeMap<String, Counts> = BTreeMap::new();
    let mut upstreams: BTreeMap<(String, String), Counts> = BTreeMap::new();
    for line in log.lines() {
        let f: Vec<&str> = line.split('|').collect();
        assert_eq!(f.len(), 8, "log line {line:?}");
        let (status, rlen, sent): (u64, u64, u64) = (f[2].parse().unwrap(), f[3].parse().unwrap(), f[4].parse().unwrap());
        let zone = key(f[0], f[1]);
        servers.entry(zone).or_default().add(status, rlen, sent);
        servers.entry("*".into()).or_default().add(status, rlen, sent);
        if f[5] != "-" {
            assert!(!f[5].contains(','), "one upstream attempt per request in this plan: {line:?}");
            let ustatus: u64 = f[6].parse().unwrap();
            upstreams.entry((group(f[7]), f[5].to_string())).or_default().add(ustatus, rlen, sent);
        }
    }
    Expected { servers, upstreams }
}

fn prom_server_counts(e: &Exposition, host: &str) -> Counts {
    let code = |c: &str| e.int("nginx_vts_server_requests_total", &[("host", host), ("code", c)]);
    Counts {
        total: code("total"),
        classes: [code("1xx"), code("2xx"), code("3xx"), code("4xx"), code("5xx")],
        bytes_in: e.int("nginx_vts_server_bytes_total", &[("host", host), ("direction", "in")]),
        bytes_out: e.int("nginx_vts_server_bytes_total", &[("host", host), ("direction", "out")]),
    }
}

fn prom_upstream_counts(e: &Exposition, upstream: &str, backend: &str) -> Counts {
    let l = |extra: (&'static str, &'static str)| [("upstream", upstream), ("backend", backend), extra];
    let code = |c: &'static str| e.int("nginx_vts_upstream_requests_total", &l(("code", c)));
    Counts {
        total: code("total"),
        classes: [code("1xx"), code("2xx"), code("3xx"), code("4xx"), code("5xx")],
        bytes_in: e.int("nginx_vts_upstream_bytes_total", &l(("direction", "in"))),
        bytes_out: e.int("nginx_vts_upstream_bytes_total", &l(("direction", "out"))),
    }
}

fn json_counts(zone: &Json) -> Counts {
    let r = zone.get("responses");
    Counts {
        total: zone.get("requestCounter").u64(),
        classes: [r.get("1xx").u64(), r.get("2xx").u64(), r.get("3xx").u64(), r.get("4xx").u64(), r.get("5xx").u64()],
        bytes_in: zone.get("inBytes").u64(),
        bytes_out: zone.get("outBytes").u64(),
    }
}

const PROM_FAMILIES: [(&str, &str); 15] = [
    ("nginx_vts_info", "gauge"),
    ("nginx_vts_start_time_seconds", "gauge"),
    ("nginx_vts_main_connections", "gauge"),
    ("nginx_vts_main_shm_usage_bytes", "gauge"),
    ("nginx_vts_server_bytes_total", "counter"),
    ("nginx_vts_server_requests_total", "counter"),
    ("nginx_vts_server_request_seconds_total", "counter"),
    ("nginx_vts_server_request_seconds", "gauge"),
    ("nginx_vts_server_cache_total", "counter"),
    ("nginx_vts_upstream_bytes_total", "counter"),
    ("nginx_vts_upstream_requests_total", "counter"),
    ("nginx_vts_upstream_request_seconds_total", "counter"),
    ("nginx_vts_upstream_request_seconds", "gauge"),
    ("nginx_vts_upstream_response_seconds_total", "counter"),
    ("nginx_vts_upstream_response_seconds", "gauge"),
];

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// Server zones (first server_name, Host with filter_by_host, the `*` sum), upstream zones per
/// group and peer, `::nogroups`, 1xx..5xx, bytes: exact in both Prometheus and JSON after
/// concurrent load on two workers.
#[test]
fn counts_servers_upstreams_and_status_classes_exactly() {
    for strategy in Strategy::ALL {
        let (_dir, root) = bundle(strategy);
        let (port, status_port) = (free_port(), free_port());
        let (b1, b2, b3, b4) = (free_port(), free_port(), free_port(), free_port());
        let body = format!(
            r#"
    {LOG_FORMAT}
    access_log logs/vts_access.log vts_test;
    vhost_traffic_status_zone shared:vts_e2e:1m;

    upstream foo {{
        server 127.0.0.1:{b1};
        server 127.0.0.1:{b2} weight=3 max_fails=2 fail_timeout=7s;
    }}
    upstream bar {{
        server 127.0.0.1:{b3};
        server 127.0.0.1:{b4} backup;
    }}
    {backends}

    server {{
        listen 127.0.0.1:{port};
        server_name a.test b.test;
        location /foo/ {{ proxy_pass http://foo/; }}
        location /bar/ {{ proxy_pass http://bar/; }}
        location /direct/ {{ proxy_pass http://127.0.0.1:{b3}/; }}
        location = /local {{ return 204; }}
        location = /off {{ vhost_traffic_status off; return 200 "not counted\n"; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name c.test;
        location / {{ return 404; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name d.test *.d.test;
        vhost_traffic_status_filter_by_host on;
        location / {{ return 200 "d\n"; }}
    }}
    server {{
        listen 127.0.0.1:{status_port};
        vhost_traffic_status off;
        access_log off;
        location /status {{ vhost_traffic_status_display; }}
    }}"#,
            backends = [b1, b2, b3].map(backend).join("")
        );
        let nginx = Nginx::start(&root, &conf(&body), &[port, status_port, b1, b2, b3]);

        let mut plan: Vec<(&str, &str)> = Vec::new();
        for _ in 0..5 {
            plan.extend([("a.test", "/foo/x"); 8]);
            plan.extend([("a.test", "/foo/code/404"); 2]);
            plan.extend([("a.test", "/bar/code/503"); 3]);
            plan.extend([("a.test", "/direct/code/302"); 2]);
            plan.extend([("a.test", "/local"); 3]);
            plan.extend([("b.test", "/local"); 2]);
            plan.extend([("unknown.test", "/local"); 1]); // default server: a.test
            plan.extend([("a.test", "/off"); 2]);
            plan.extend([("c.test", "/x"); 4]);
            plan.extend([("x1.d.test", "/"); 3]);
            plan.extend([("x2.d.test", "/"); 2]);
            plan.extend([("d.test", "/"); 1]);
        }
        let statuses = run_plan(port, &plan, 6);
        for (&(host, path), &status) in plan.iter().zip(&statuses) {
            let want = match path {
                "/foo/code/404" | "/x" => 404,
                "/bar/code/503" => 503,
                "/direct/code/302" => 302,
                "/local" => 204,
                _ => 200,
            };
            assert_eq!(status, want, "{host} {path}");
        }

        let prom = http::get(status_port, "/status/format/prometheus");
        assert_eq!(prom.status, 200);
        assert_eq!(prom.header("Content-Type"), Some("text/plain"));
        let e = prometheus::parse(&prom.body);
        let families: Vec<(&str, &str)> = e.families.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
        assert_eq!(families, PROM_FAMILIES, "metric families and their order");

        let json_resp = http::get(status_port, "/status/format/json");
        assert_eq!(json_resp.status, 200);
        assert_eq!(json_resp.header("Content-Type"), Some("application/json"));
        let j = Json::parse(&json_resp.body);

        // the plan, from the access log: zone keys as the module should build them
        let mut exp = expected_from_log(
            &root,
            |server_name, host| {
                if server_name == "d.test" {
                    host.to_string()
                } else {
                    server_name.to_string()
                }
            },
            |uri| {
                if uri.starts_with("/foo/") {
                    "foo".into()
                } else if uri.starts_with("/bar/") {
                    "bar".into()
                } else {
                    "::nogroups".into()
                }
            },
        );
        let planned = |host: &str| exp.servers.get(host).map(|c| c.total).unwrap_or(0);
        assert_eq!(planned("a.test"), 5 * (8 + 2 + 3 + 2 + 3 + 2 + 1 + 2), "access log holds the plan");
        assert_eq!(planned("c.test"), 20);
        assert_eq!((planned("x1.d.test"), planned("x2.d.test"), planned("d.test")), (15, 10, 5));

        // /off requests are in the access log but must not be counted
        let mut exp_servers = exp.servers.clone();
        let off = 5 * 2;
        for zone in ["a.test", "*"] {
            let c = exp_servers.get_mut(zone).unwrap();
            c.total -= off;
            c.classes[1] -= off;
        }
        // bytes of the /off requests: recompute from the log without them
        let log = std::fs::read_to_string(root.join("logs/vts_access.log")).unwrap();
        let (mut off_in, mut off_out) = (0u64, 0u64);
        for line in log.lines().filter(|l| l.ends_with("|/off")) {
            let f: Vec<&str> = line.split('|').collect();
            off_in += f[3].parse::<u64>().unwrap();
            off_out += f[4].parse::<u64>().unwrap();
        }
        for zone in ["a.test", "*"] {
            let c = exp_servers.get_mut(zone).unwrap();
            c.bytes_in -= off_in;
            c.bytes_out -= off_out;
        }

        // server zones, Prometheus and JSON
        let prom_hosts = e.label_values("nginx_vts_server_requests_total", "host");
        let exp_hosts: BTreeSet<String> = exp_servers.keys().cloned().collect();
        assert_eq!(prom_hosts, exp_hosts, "server zones in Prometheus");
        let json_hosts: BTreeSet<String> = j.get("serverZones").keys().into_iter().map(String::from).collect();
        assert_eq!(json_hosts, exp_hosts, "server zones in JSON");
        for (host, want) in &exp_servers {
            assert_eq!(&prom_server_counts(&e, host), want, "Prometheus server zone {host}");
            assert_eq!(&json_counts(j.get("serverZones").get(host)), want, "JSON server zone {host}");
        }
        // the sum zone comes after the server zones
        let order: Vec<String> = e.samples.iter().filter(|s| s.name == "nginx_vts_server_requests_total").map(|s| s.labels[0].1.clone()).collect();
        assert_eq!(order.last().map(String::as_str), Some("*"));
        assert_eq!(j.get("serverZones").keys().last().copied(), Some("*"));

        // upstream zones
        let foo_total: u64 = exp.upstreams.iter().filter(|((g, _), _)| g == "foo").map(|(_, c)| c.total).sum();
        assert_eq!(foo_total, 5 * 10);
        assert_eq!(exp.upstreams.iter().filter(|((g, _), _)| g == "foo").count(), 2, "both foo peers were used");
        assert_eq!(exp.upstreams[&("bar".to_string(), format!("127.0.0.1:{b3}"))].total, 15);
        assert_eq!(exp.upstreams[&("::nogroups".to_string(), format!("127.0.0.1:{b3}"))].total, 10);
        // every configured peer is listed: the backup of bar was never used and shows zeros
        let unused = ("bar".to_string(), format!("127.0.0.1:{b4}"));
        assert!(!exp.upstreams.contains_key(&unused), "the backup peer was not used");
        exp.upstreams.insert(unused.clone(), Counts::default());
        let prom_peers: BTreeSet<(String, String)> =
            e.samples.iter().filter(|s| s.name == "nginx_vts_upstream_requests_total").map(|s| (s.labels[0].1.clone(), s.labels[1].1.clone())).collect();
        assert_eq!(prom_peers, exp.upstreams.keys().cloned().collect(), "upstream zones in Prometheus");
        let uz = j.get("upstreamZones");
        let mut json_peers = BTreeSet::new();
        for group in uz.keys() {
            for peer in uz.get(group).arr() {
                let server = peer.get("server").str().to_string();
                let want = &exp.upstreams[&(group.to_string(), server.clone())];
                assert_eq!(&json_counts(peer), want, "JSON upstream {group} {server}");
                for key in ["requestMsec", "responseMsec", "weight", "maxFails", "failTimeout"] {
                    peer.get(key).u64();
                }
                for key in ["backup", "down"] {
                    assert!(matches!(peer.get(key), Json::Bool(_)), "{key} is a boolean");
                }
                json_peers.insert((group.to_string(), server));
            }
        }
        assert_eq!(json_peers, exp.upstreams.keys().cloned().collect(), "upstream zones in JSON");
        for ((group, backend), want) in &exp.upstreams {
            assert_eq!(&prom_upstream_counts(&e, group, backend), want, "Prometheus upstream {group} {backend}");
        }
        let peer = |group: &str, port: u16| uz.get(group).arr().iter().find(|p| p.get("server").str() == format!("127.0.0.1:{port}")).unwrap().clone();
        let p2 = peer("foo", b2);
        assert_eq!((p2.get("weight").u64(), p2.get("maxFails").u64(), p2.get("failTimeout").u64()), (3, 2, 7));
        let p1 = peer("foo", b1);
        assert_eq!((p1.get("weight").u64(), p1.get("maxFails").u64(), p1.get("failTimeout").u64()), (1, 1, 10));
        assert_eq!(p1.get("backup"), &Json::Bool(false));
        let p4 = peer("bar", b4);
        assert_eq!((p4.get("backup"), p4.get("requestCounter").u64()), (&Json::Bool(true), 0));

        // times: sums and averages are consistent and non-negative
        for host in exp_servers.keys() {
            let sum = e.value("nginx_vts_server_request_seconds_total", &[("host", host)]).unwrap();
            let avg = e.value("nginx_vts_server_request_seconds", &[("host", host)]).unwrap();
            let n = exp_servers[host].total as f64;
            assert!(sum >= 0.0 && avg >= 0.0 && (avg - sum / n).abs() < 0.002, "{host}: sum {sum} avg {avg} n {n}");
            let z = j.get("serverZones").get(host);
            assert_eq!(z.get("requestMsec").u64(), z.get("requestMsecCounter").u64() / exp_servers[host].total);
        }
        for (group, backend) in exp.upstreams.keys() {
            let l = [("upstream", group.as_str()), ("backend", backend.as_str())];
            let req = e.value("nginx_vts_upstream_request_seconds_total", &l).unwrap();
            let resp = e.value("nginx_vts_upstream_response_seconds_total", &l).unwrap();
            assert!(req >= 0.0 && resp >= 0.0, "{group} {backend}");
            e.value("nginx_vts_upstream_request_seconds", &l).unwrap();
            e.value("nginx_vts_upstream_response_seconds", &l).unwrap();
        }

        // main section
        let info = e.samples.iter().find(|s| s.name == "nginx_vts_info").unwrap();
        assert_eq!(info.value, 1.0);
        assert!(info.labels.iter().any(|(k, v)| k == "version" && v == "1.22.1"), "{info:?}");
        assert!(e.value("nginx_vts_start_time_seconds", &[]).unwrap() > 1.6e9);
        for s in ["accepted", "active", "handled", "reading", "requests", "waiting", "writing"] {
            e.value("nginx_vts_main_connections", &[("status", s)]).unwrap_or_else(|| panic!("connections {s}"));
        }
        assert!(e.int("nginx_vts_main_connections", &[("status", "accepted")]) >= plan.len() as u64);
        assert!(e.int("nginx_vts_main_connections", &[("status", "active")]) >= 1, "stub_status counters are compiled in");
        assert_eq!(e.int("nginx_vts_main_shm_usage_bytes", &[("shared", "max_size")]), 1024 * 1024);
        assert_eq!(
            e.int("nginx_vts_main_shm_usage_bytes", &[("shared", "used_node")]),
            (exp_servers.len() + exp.upstreams.len() - 1) as u64,
            "a node per counted key; the unused peer has none"
        );
        for key in ["hostName", "moduleVersion", "nginxVersion", "loadMsec", "nowMsec", "connections", "sharedZones", "serverZones", "upstreamZones"] {
            j.get(key);
        }
        assert_eq!(j.get("nginxVersion").str(), "1.22.1");
        assert_eq!(j.get("sharedZones").get("name").str(), "vts_e2e");
        assert!(j.get("connections").get("accepted").u64() >= plan.len() as u64);

        assert!(!nginx.error_log().contains("[alert]") && !nginx.error_log().contains("[crit]"), "{}", nginx.error_log());
        nginx.quit();
    }
}

/// GET and HEAD only; format from the `/format/...` suffix over the directive; content types;
/// 501 without a zone; configuration errors.
#[test]
fn serving_rules_formats_and_directive_errors() {
    for strategy in Strategy::ALL {
        let (_dir, root) = bundle(strategy);
        let port = free_port();
        let body = format!(
            r#"
        vhost_traffic_status_zone;
        server {{
            listen 127.0.0.1:{port};
            location /status {{ vhost_traffic_status_display; }}
            location /prom {{ vhost_traffic_status_display; vhost_traffic_status_display_format prometheus; }}
            location /page {{ vhost_traffic_status_display; vhost_traffic_status_display_format html; }}
        }}"#
        );
        let nginx = Nginx::start(&root, &conf(&body), &[port]);

        let ct = |path: &str| {
            let r = http::get(port, path);
            assert_eq!(r.status, 200, "{path}");
            assert!(!r.body.is_empty(), "{path}");
            r.header("Content-Type").unwrap_or_default().to_string()
        };
        assert_eq!(ct("/status"), "application/json");
        assert_eq!(ct("/prom"), "text/plain");
        assert_eq!(ct("/page"), "text/html");
        assert_eq!(ct("/status/format/prometheus"), "text/plain");
        assert_eq!(ct("/status/format/html"), "text/html");
        assert_eq!(ct("/prom/format/json"), "application/json");
        assert_eq!(ct("/page/format/prometheus"), "text/plain");
        assert_eq!(ct("/status/format/prometheus/more"), "text/plain", "the suffix may be anywhere in the URI");
        let page = http::get(port, "/page").body;
        assert!(page.contains("<html"));
        assert!(page.contains("vhost traffic status monitor"), "the title nginx-module-vts's own suite looks for");

        let j = Json::parse(&http::get(port, "/status").body);
        assert_eq!(j.get("sharedZones").get("name").str(), "vhost_traffic_status", "default zone name");
        assert_eq!(j.get("sharedZones").get("maxSize").u64(), 1024 * 1024, "default zone size");

        let head = http::request(port, "HEAD", "/status/format/prometheus", &[]);
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty(), "HEAD has no body");
        assert_eq!(head.header("Content-Type"), Some("text/plain"));
        let len: usize = head.header("Content-Length").expect("HEAD has Content-Length").parse().unwrap();
        assert!(len > 500, "Content-Length {len}");
        let get = http::get(port, "/status/format/prometheus");
        assert_eq!(get.header("Content-Length").unwrap().parse::<usize>().unwrap(), get.body.len());

        for method in ["POST", "PUT", "DELETE"] {
            assert_eq!(http::request(port, method, "/status", &[("Content-Length", "0")]).status, 405, "{method}");
        }
        nginx.quit();

        // the display without any zone: 501
        let body = format!(
            r#"
        server {{
            listen 127.0.0.1:{port};
            location /status {{ vhost_traffic_status_display; }}
        }}"#
        );
        let nginx = Nginx::start(&root, &conf(&body), &[port]);
        assert_eq!(http::get(port, "/status").status, 501);
        assert_eq!(http::request(port, "POST", "/status", &[("Content-Length", "0")]).status, 405);
        nginx.quit();

        // configuration errors
        for (zone, message) in [
            ("shared:x:abc", r#"invalid shared size "shared:x:abc""#),
            ("shared:x:16k", r#"shared "shared:x:16k" is too small"#),
            ("shared:x", r#"invalid shared size "shared:x""#),
        ] {
            let body = format!(
                r#"
        vhost_traffic_status_zone {zone};
        server {{ listen 127.0.0.1:{port}; }}"#
            );
            let err = match Nginx::try_start(&root, &conf(&body), &[port]) {
                Ok(_) => panic!("nginx started with vhost_traffic_status_zone {zone}"),
                Err(e) => e,
            };
            assert!(err.contains(message), "{zone}: expected {message:?} in:\n{err}");
        }
    }
}

/// The seed's setup: an internal `/status/format/prometheus` location captured from Lua and
/// merged into `/metrics`. Subrequests are counted only with `log_subrequest on`.
#[test]
fn prometheus_output_merges_into_metrics_via_capture() {
    for strategy in Strategy::ALL {
        let (_dir, root) = bundle(strategy);
        let (port, metrics_port) = (free_port(), free_port());
        let body = format!(
            r##"
    vhost_traffic_status_filter_by_host on;
    vhost_traffic_status_zone shared:vhost_traffic_status:4m;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "app\n"; }}
    }}
    server {{
        listen 127.0.0.1:{metrics_port};
        server_name metrics;
        vhost_traffic_status_filter_by_host off;
        location = /status/format/prometheus {{
            internal;
            vhost_traffic_status_display;
            vhost_traffic_status_display_format prometheus;
        }}
        location = /metrics {{
            access_log off;
            default_type text/plain;
            content_by_lua_block {{
                local chunks = {{}}
                local vts_up = 0
                local vts = ngx.location.capture("/status/format/prometheus")
                if vts.status == ngx.HTTP_OK then
                    vts_up = 1
                    table.insert(chunks, vts.body)
                else
                    table.insert(chunks, "# vts metrics unavailable: status=" .. tostring(vts.status))
                end
                table.insert(chunks, "# HELP nginx_metrics_source_up Source availability for merged /metrics endpoint")
                table.insert(chunks, "# TYPE nginx_metrics_source_up gauge")
                table.insert(chunks, string.format("nginx_metrics_source_up{{source=\"vts\"}} %d", vts_up))
                ngx.print(table.concat(chunks, "\n"), "\n")
            }}
        }}
        location = /json {{
            content_by_lua_block {{
                local res = ngx.location.capture("/status/json")
                ngx.header["X-Sub-Content-Type"] = res.header["Content-Type"]
                ngx.print(res.body)
            }}
        }}
        location = /status/json {{
            internal;
            vhost_traffic_status_display;
        }}
        location = /counted {{
            content_by_lua_block {{
                local res = ngx.location.capture("/sub")
                ngx.print(res.body)
            }}
        }}
        location = /sub {{ log_subrequest on; return 200 "sub\n"; }}
    }}"##
        );
        let nginx = Nginx::start(&root, &conf(&body), &[port, metrics_port]);

        for host in ["one.example", "two.example", "two.example"] {
            assert_eq!(get_host(port, host, "/").status, 200);
        }
        assert_eq!(http::get(metrics_port, "/status/format/prometheus").status, 404, "the display location is internal");

        let m = http::get(metrics_port, "/metrics");
        assert_eq!(m.status, 200);
        let e = prometheus::parse(&m.body);
        assert_eq!(e.value("nginx_metrics_source_up", &[("source", "vts")]), Some(1.0), "{}", m.body);
        assert_eq!(e.int("nginx_vts_server_requests_total", &[("host", "one.example"), ("code", "total")]), 1);
        assert_eq!(e.int("nginx_vts_server_requests_total", &[("host", "two.example"), ("code", "2xx")]), 2);

        let j = http::get(metrics_port, "/json");
        assert_eq!(j.status, 200);
        assert_eq!(j.header("X-Sub-Content-Type"), Some("application/json"));
        let j = Json::parse(&j.body);
        // /metrics and the 404 above were counted for "metrics"; the capture subrequests not
        assert_eq!(j.get("serverZones").get("metrics").get("requestCounter").u64(), 2);

        for _ in 0..3 {
            assert_eq!(http::get(metrics_port, "/counted").body, "sub\n");
        }
        let j = Json::parse(&http::get(metrics_port, "/json").body);
        // + /json once, + 3 × (/counted and its logged /sub)
        assert_eq!(j.get("serverZones").get("metrics").get("requestCounter").u64(), 2 + 1 + 3 * 2);
        nginx.quit();
    }
}

/// Label values and JSON keys built from Host headers are escaped; invalid UTF-8 does not
/// break either format.
#[test]
fn hosts_are_escaped_in_both_formats() {
    for strategy in Strategy::ALL {
        let (_dir, root) = bundle(strategy);
        let (port, status_port) = (free_port(), free_port());
        let body = format!(
            r#"
        vhost_traffic_status_zone;
        vhost_traffic_status_filter_by_host on;
        server {{
            listen 127.0.0.1:{port};
            location / {{ return 200 "ok\n"; }}
        }}
        server {{
            listen 127.0.0.1:{status_port};
            vhost_traffic_status off;
            location /status {{ vhost_traffic_status_display; }}
        }}"#
        );
        let nginx = Nginx::start(&root, &conf(&body), &[port, status_port]);
        let hosts = [r#"quo"te.example"#, r#"back\slash.example"#, "caf\u{e9}.example", "MiXeD.Example"];
        for host in hosts {
            assert_eq!(get_host(port, host, "/").status, 200, "{host}");
        }
        let e = prometheus::parse(&http::get(status_port, "/status/format/prometheus").body);
        let j = Json::parse(&http::get(status_port, "/status/format/json").body);
        for host in [r#"quo"te.example"#, r#"back\slash.example"#, "caf\u{e9}.example", "mixed.example"] {
            assert_eq!(e.int("nginx_vts_server_requests_total", &[("host", host), ("code", "2xx")]), 1, "{host}");
            assert_eq!(j.get("serverZones").get(host).get("requestCounter").u64(), 1, "{host}");
        }
        nginx.quit();
    }
}

/// A zone too small for all keys: every request is still served, the sum zone keeps counting,
/// the error is logged at most once per worker, and the status page keeps working. The
/// counters also survive a reload.
#[test]
fn full_zone_keeps_serving_and_counters_survive_reload() {
    for strategy in Strategy::ALL {
        let (_dir, root) = bundle(strategy);
        let (port, status_port) = (free_port(), free_port());
        let body = format!(
            r#"
        vhost_traffic_status_zone shared:small:64k;
        vhost_traffic_status_filter_by_host on;
        server {{
            listen 127.0.0.1:{port};
            location / {{ return 200 "ok\n"; }}
        }}
        server {{
            listen 127.0.0.1:{status_port};
            vhost_traffic_status off;
            location /status {{ vhost_traffic_status_display; }}
        }}"#
        );
        let mut nginx = Nginx::start(&root, &conf(&body), &[port, status_port]);
        let hosts: Vec<String> = (0..400).map(|i| format!("host{i:04}.example")).collect();
        let plan: Vec<(&str, &str)> = hosts.iter().map(|h| (h.as_str(), "/")).collect();
        let statuses = run_plan(port, &plan, 6);
        assert!(statuses.iter().all(|&s| s == 200), "every request is served: {statuses:?}");

        let j = Json::parse(&http::get(status_port, "/status/format/json").body);
        let zones = j.get("serverZones");
        assert_eq!(zones.get("*").get("requestCounter").u64(), 400, "the sum zone counts everything");
        let kept = zones.keys().len() - 1;
        assert!(kept > 10 && kept < 400, "the zone filled up after {kept} hosts");
        assert_eq!(j.get("sharedZones").get("usedNode").u64(), kept as u64 + 1);
        let e = prometheus::parse(&http::get(status_port, "/status/format/prometheus").body);
        assert_eq!(e.int("nginx_vts_server_requests_total", &[("host", "*"), ("code", "total")]), 400);

        let log = nginx.error_log();
        let full = log.lines().filter(|l| l.contains("[error]") && l.contains("is full")).count();
        assert!((1..=2).contains(&full), "logged once per worker, got {full}:\n{log}");
        assert!(!log.contains("[crit]") && !log.contains("[alert]") && !log.contains("exited on signal"), "{log}");

        // a reload with the same zone keeps the counters
        nginx.reload(&conf(&body));
        let j = Json::parse(&http::get(status_port, "/status/format/json").body);
        assert_eq!(j.get("serverZones").get("*").get("requestCounter").u64(), 400);
        assert_eq!(get_host(port, "host0000.example", "/").status, 200);
        let j = Json::parse(&http::get(status_port, "/status/format/json").body);
        assert_eq!(j.get("serverZones").get("*").get("requestCounter").u64(), 401);
        nginx.quit();
    }
}

/// `promtool check metrics` accepts the exposition (exit status 0, nothing reported).
fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool (Debian package prometheus)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "promtool check metrics:\n{report}\n{text}");
}

fn status_json(port: u16, path: &str) -> Json {
    let r = http::get(port, path);
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    assert_eq!(r.header("Content-Type"), Some("application/json"), "{path}");
    Json::parse(&r.body)
}

/// Starting nginx with `directive` beside a zone and one server fails, and nginx's error
/// contains `message`.
fn assert_directive_error(root: &Path, port: u16, directive: &str, message: &str) {
    let body = format!("\n    vhost_traffic_status_zone;\n    {directive}\n    server {{ listen 127.0.0.1:{port}; }}");
    let err = match Nginx::try_start(root, &conf(&body), &[port]) {
        Ok(_) => panic!("nginx started with {directive}"),
        Err(e) => e,
    };
    assert!(err.contains(message), "{directive}: expected {message:?} in:\n{err}");
}

/// `vhost_traffic_status_filter_by_set_key` at http, server and location level: counts per
/// filter group and key, keys without a group as server zones, `filter_check_duplicate`,
/// `vhost_traffic_status_filter off`, `filter_max_node` dropping the least recently used key;
/// JSON `filterZones` and the `nginx_vts_filter_*` series, which `promtool` accepts.
#[test]
fn filter_by_set_key_counts_per_group_and_key() {
    for strategy in Strategy::ALL {
        let (_dir, root) = bundle(strategy);
        let (port, status_port) = (free_port(), free_port());
        let body = format!(
            r#"
    vhost_traffic_status_zone shared:vts_filter:1m;
    vhost_traffic_status_filter_by_set_key $request_method method::*;
    vhost_traffic_status_filter_max_node 4 paths;
    server {{
        listen 127.0.0.1:{port};
        server_name f.test;
        vhost_traffic_status_filter_by_set_key $arg_v agent::$server_name;
        location / {{ return 200 "root\n"; }}
        location = /missing {{ return 404; }}
        location ~ ^/storage/(.+)/ {{
            set $volume $1;
            vhost_traffic_status_filter_by_set_key $volume storage::$server_name;
            vhost_traffic_status_filter_by_set_key $volume storage::$server_name;
            return 200 "storage\n";
        }}
        location ~ ^/dup/(.+)/ {{
            set $volume $1;
            vhost_traffic_status_filter_check_duplicate off;
            vhost_traffic_status_filter_by_set_key $volume dup::$server_name;
            vhost_traffic_status_filter_by_set_key $volume dup::$server_name;
            return 200 "dup\n";
        }}
        location /paths/ {{
            vhost_traffic_status_filter_by_set_key $uri paths::$server_name;
            return 200 "path\n";
        }}
        location /nofilter/ {{ vhost_traffic_status_filter off; return 200 "nofilter\n"; }}
        location /srvkey/ {{ vhost_traffic_status_filter_by_set_key $arg_k; return 200 "srvkey\n"; }}
        location /combo/ {{
            vhost_traffic_status_filter_by_set_key "${{request_method}}-$arg_c" combo::*;
            vhost_traffic_status_filter_by_set_key ${{arg_c}} braced::*;
            return 200 "combo\n";
        }}
    }}
    server {{
        listen 127.0.0.1:{status_port};
        vhost_traffic_status off;
        location /status {{ vhost_traffic_status_display; }}
    }}"#
        );
        let nginx = Nginx::start(&root, &conf(&body), &[port, status_port]);
        let mut plan: Vec<(&str, &str)> = Vec::new();
        plan.extend([("f.test", "/storage/vol0/a"); 3]);
        plan.extend([("f.test", "/storage/vol1/a"); 2]);
        plan.extend([("f.test", "/dup/d0/a"); 2]);
        plan.extend([("f.test", "/?v=alpha"); 2]);
        plan.extend([("f.test", "/missing?v=alpha"); 1]);
        plan.extend([("f.test", "/?v=beta"); 1]);
        plan.extend([("f.test", "/nofilter/?v=gamma"); 2]);
        plan.extend([("f.test", "/srvkey/?k=tenant-a"); 2]);
        plan.extend([("f.test", "/combo/?c=x"); 2]);
        plan.extend([("f.test", "/combo/"); 1]);
        let statuses = run_plan(port, &plan, 4);
        assert_eq!(statuses.iter().filter(|&&s| s == 404).count(), 1, "{statuses:?}");
        // one after another, so that "least recently used" is well defined
        for i in 0..10 {
            assert_eq!(get_host(port, "f.test", &format!("/paths/p{i}")).status, 200);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let requests = plan.len() as u64 + 10;

        let j = status_json(status_port, "/status/format/json");
        let fz = j.get("filterZones");
        let count = |group: &str, key: &str| fz.get(group).get(key).get("requestCounter").u64();
        assert_eq!(count("storage::f.test", "vol0"), 3, "duplicates are dropped by default");
        assert_eq!(count("storage::f.test", "vol1"), 2);
        assert_eq!(count("dup::f.test", "d0"), 4, "filter_check_duplicate off counts each directive");
        assert_eq!(count("agent::f.test", "alpha"), 3, "server-level key, inherited by locations without keys");
        assert_eq!(fz.get("agent::f.test").get("alpha").get("responses").get("4xx").u64(), 1);
        assert_eq!(count("agent::f.test", "beta"), 1);
        // A key of several parts, and a lone variable written with braces: a missing argument
        // leaves the one empty (not counted) and the other with its fixed part.
        assert_eq!((count("combo::*", "GET-x"), count("combo::*", "GET-")), (2, 1));
        assert_eq!((count("braced::*", "x"), fz.get("braced::*").keys().len()), (2, 1));
        assert_eq!(fz.get("agent::f.test").keys(), ["alpha", "beta"], "nothing for /nofilter/ or empty keys");
        assert_eq!(count("method::*", "GET"), requests - 2, "the http-level key applies everywhere except under vhost_traffic_status_filter off");
        let paths = fz.get("paths::f.test").keys();
        assert_eq!(paths, ["/paths/p6", "/paths/p7", "/paths/p8", "/paths/p9"], "filter_max_node 4 keeps the newest");
        let groups = fz.keys();
        assert_eq!(groups, ["agent::f.test", "braced::*", "combo::*", "dup::f.test", "method::*", "paths::f.test", "storage::f.test"]);
        // a key without a group is a server zone
        let sz = j.get("serverZones");
        assert_eq!(sz.get("tenant-a").get("requestCounter").u64(), 2);
        assert_eq!(sz.get("f.test").get("requestCounter").u64(), requests);
        let vol0 = fz.get("storage::f.test").get("vol0");
        for key in ["inBytes", "outBytes", "requestMsecCounter", "requestMsec"] {
            vol0.get(key).u64();
        }
        assert!(vol0.get("outBytes").u64() > 3 * "storage\n".len() as u64);
        assert_eq!(vol0.get("overCounts").get("maxIntegerSize").u64(), u64::MAX);
        let shared = j.get("sharedZones");
        assert_eq!(shared.get("usedSize").u64() + shared.get("freeSize").u64(), shared.get("maxSize").u64());

        let prom = http::get(status_port, "/status/format/prometheus").body;
        promtool_check(&prom);
        let e = prometheus::parse(&prom);
        let fl = |g: &'static str, k: &'static str, extra: (&'static str, &'static str)| [("filter", g), ("filter_name", k), extra];
        assert_eq!(e.int("nginx_vts_filter_requests_total", &fl("storage::f.test", "vol0", ("code", "2xx"))), 3);
        assert_eq!(e.int("nginx_vts_filter_requests_total", &fl("agent::f.test", "alpha", ("code", "4xx"))), 1);
        assert_eq!(e.int("nginx_vts_filter_bytes_total", &fl("storage::f.test", "vol0", ("direction", "out"))), vol0.get("outBytes").u64());
        e.value("nginx_vts_filter_request_seconds_total", &[("filter", "dup::f.test"), ("filter_name", "d0")]).unwrap();
        e.value("nginx_vts_filter_request_seconds", &[("filter", "dup::f.test"), ("filter_name", "d0")]).unwrap();
        let names: Vec<&str> = e.families.iter().map(|(n, _)| n.as_str()).collect();
        let at = |n: &str| names.iter().position(|x| *x == n).unwrap_or_else(|| panic!("no family {n}"));
        assert!(at("nginx_vts_server_request_seconds") < at("nginx_vts_filter_bytes_total"));
        assert_eq!(
            names[at("nginx_vts_filter_bytes_total")..at("nginx_vts_filter_bytes_total") + 4],
            ["nginx_vts_filter_bytes_total", "nginx_vts_filter_requests_total", "nginx_vts_filter_request_seconds_total", "nginx_vts_filter_request_seconds"]
        );
        assert_eq!(e.int("nginx_vts_main_shm_usage_bytes", &[("shared", "free_size")]), shared.get("freeSize").u64());
        assert!(!nginx.error_log().contains("[alert]"), "{}", nginx.error_log());
        nginx.quit();
    }
}

/// `$vts_*` variables show the current server zone's counters (those of the requests before
/// this one); the control API answers `status` with the selected part only and `reset` /
/// `delete` act and report `processingCounts`.
#[test]
fn variables_and_control_api() {
    for strategy in Strategy::ALL {
        let (_dir, root) = bundle(strategy);
        let (port, status_port, b1, b2) = (free_port(), free_port(), free_port(), free_port());
        let body = format!(
            r#"
    vhost_traffic_status_zone;
    upstream back {{
        server 127.0.0.1:{b1};
        server 127.0.0.1:{b2} down;
    }}
    {backend}
    server {{
        listen 127.0.0.1:{port};
        server_name v.test;
        location / {{ return 200 "ok\n"; }}
        location = /missing {{ return 404; }}
        location ~ ^/storage/(.+)/ {{
            set $volume $1;
            vhost_traffic_status_filter_by_set_key $volume storage::$server_name;
            return 200 "storage\n";
        }}
        location /up/ {{ proxy_pass http://back/; }}
        location = /vars {{
            return 200 "$vts_request_counter $vts_in_bytes $vts_out_bytes $vts_1xx_counter $vts_2xx_counter $vts_3xx_counter $vts_4xx_counter $vts_5xx_counter $vts_request_time_counter $vts_request_time $vts_cache_hit_counter\n";
        }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name w.test;
        location / {{ return 200 "w\n"; }}
    }}
    server {{
        listen 127.0.0.1:{status_port};
        vhost_traffic_status off;
        location /status {{ vhost_traffic_status_display; vhost_traffic_status_display_format prometheus; }}
    }}"#,
            backend = backend(b1)
        );
        let nginx = Nginx::start(&root, &conf(&body), &[port, status_port, b1]);
        let plan: Vec<(&str, &str)> = [
            [("v.test", "/")].repeat(4),
            [("v.test", "/missing")].repeat(2),
            [("v.test", "/storage/vol0/x")].repeat(3),
            [("v.test", "/storage/vol1/x")].to_vec(),
            [("v.test", "/up/x")].repeat(2),
            [("w.test", "/")].repeat(3),
        ]
        .concat();
        run_plan(port, &plan, 4);

        // variables: the counters before the /vars request itself
        let before = status_json(status_port, "/status/control?cmd=status&group=server&zone=v.test");
        assert_eq!(before.keys(), ["v.test"], "one server zone");
        let z = before.get("v.test");
        let vars = get_host(port, "v.test", "/vars");
        assert_eq!(vars.status, 200);
        let v: Vec<u64> = vars.body.split_whitespace().map(|x| x.parse().unwrap()).collect();
        let r = z.get("responses");
        assert_eq!(
            v,
            [
                z.get("requestCounter").u64(),
                z.get("inBytes").u64(),
                z.get("outBytes").u64(),
                r.get("1xx").u64(),
                r.get("2xx").u64(),
                r.get("3xx").u64(),
                r.get("4xx").u64(),
                r.get("5xx").u64(),
                z.get("requestMsecCounter").u64(),
                z.get("requestMsec").u64(),
                0
            ],
            "{}",
            vars.body
        );
        assert_eq!((v[0], v[4], v[6]), (12, 10, 2));

        // status: one part only (the location's default format is prometheus; control is JSON)
        let main = status_json(status_port, "/status/control?cmd=status&group=server&zone=::main");
        assert_eq!(main.keys(), ["hostName", "moduleVersion", "nginxVersion", "loadMsec", "nowMsec", "connections", "sharedZones"]);
        let all_servers = status_json(status_port, "/status/control?cmd=status&group=server&zone=*");
        assert_eq!(all_servers.keys(), ["serverZones"]);
        assert_eq!(all_servers.get("serverZones").keys(), ["v.test", "w.test", "*"]);
        let filters = status_json(status_port, "/status/control?cmd=status&group=filter&zone=*");
        assert_eq!(filters.get("filterZones").get("storage::v.test").keys(), ["vol0", "vol1"]);
        let vol0 = status_json(status_port, "/status/control?cmd=status&group=filter&zone=storage::v.test@vol0");
        assert_eq!(vol0.get("vol0").get("requestCounter").u64(), 3);
        let peer = status_json(status_port, &format!("/status/control?cmd=status&group=upstream@group&zone=back@127.0.0.1:{b1}"));
        assert_eq!((peer.get("server").str(), peer.get("requestCounter").u64()), (format!("127.0.0.1:{b1}").as_str(), 2));
        let down = status_json(status_port, &format!("/status/control?cmd=status&group=upstream@group&zone=back@127.0.0.1:{b2}"));
        assert_eq!((down.get("down"), down.get("requestCounter").u64()), (&Json::Bool(true), 0), "a down peer is listed");
        let ups = status_json(status_port, "/status/control?cmd=status&group=upstream@group&zone=*");
        assert_eq!(ups.get("upstreamZones").get("back").arr().len(), 2);
        let full = status_json(status_port, "/status/control?cmd=status&group=*");
        for key in ["hostName", "serverZones", "filterZones", "upstreamZones"] {
            full.get(key);
        }
        assert_eq!(status_json(status_port, "/status/control?cmd=status&group=server&zone=nope").keys(), Vec::<&str>::new());

        let control = |query: &str| status_json(status_port, &format!("/status/control?{query}"));
        let result = |j: &Json, ok: bool, n: u64| {
            assert_eq!(j.get("processingReturn"), &Json::Bool(ok), "{j:?}");
            assert_eq!(j.get("processingCounts").u64(), n, "{j:?}");
        };

        // reset one filter zone: it stays, with zeros
        let j = control("cmd=reset&group=filter&zone=storage::v.test@vol0");
        result(&j, true, 1);
        assert_eq!(j.get("processingCommandString").str(), "reset");
        assert_eq!(j.get("processingGroupString").str(), "filter");
        assert_eq!(j.get("processingZoneString").str(), "storage::v.test@vol0");
        let f = control("cmd=status&group=filter&zone=*");
        assert_eq!(f.get("filterZones").get("storage::v.test").get("vol0").get("requestCounter").u64(), 0);
        assert_eq!(f.get("filterZones").get("storage::v.test").get("vol1").get("requestCounter").u64(), 1);

        // delete one server zone: gone, and the sum no longer includes it
        let s = control("cmd=status&group=server&zone=*");
        let w = s.get("serverZones").get("w.test").get("requestCounter").u64();
        let sum = s.get("serverZones").get("*").get("requestCounter").u64();
        result(&control("cmd=delete&group=server&zone=w.test"), true, 1);
        let s = control("cmd=status&group=server&zone=*");
        assert_eq!(s.get("serverZones").keys(), ["v.test", "*"]);
        assert_eq!(s.get("serverZones").get("*").get("requestCounter").u64(), sum - w);
        assert_eq!(w, 3);
        // it comes back with the next request
        assert_eq!(get_host(port, "w.test", "/").status, 200);
        assert_eq!(control("cmd=status&group=server&zone=w.test").get("w.test").get("requestCounter").u64(), 1);

        // upstream peer reset, by group@peer
        result(&control(&format!("cmd=reset&group=upstream@group&zone=back@127.0.0.1:{b1}")), true, 1);
        let peer = control(&format!("cmd=status&group=upstream@group&zone=back@127.0.0.1:{b1}"));
        assert_eq!(peer.get("requestCounter").u64(), 0);

        // delete a whole group, then everything; unknown commands and groups fail
        result(&control("cmd=delete&group=filter&zone=*"), true, 2);
        assert!(control("cmd=status&group=*").try_get("filterZones").is_none());
        result(&control("cmd=frobnicate&group=server&zone=*"), false, 0);
        result(&control("cmd=reset&group=nonsense&zone=*"), false, 0);
        let j = control("cmd=reset&group=*");
        assert!(j.get("processingCounts").u64() >= 3, "{j:?}");
        let s = control("cmd=status&group=server&zone=*");
        for zone in s.get("serverZones").keys() {
            assert_eq!(s.get("serverZones").get(zone).get("requestCounter").u64(), 0, "{zone} after reset");
        }
        let vars = get_host(port, "v.test", "/vars");
        assert!(vars.body.starts_with("0 0 0 "), "variables after reset: {}", vars.body);
        nginx.quit();
    }
}

/// Bad filter directives stop nginx with a message that says what is wrong.
#[test]
fn filter_directive_errors() {
    let (_dir, root) = bundle(Strategy::Embed);
    let port = free_port();
    for (directive, message) in [
        ("vhost_traffic_status_filter_max_node many;", r#"invalid number "many" in "vhost_traffic_status_filter_max_node""#),
        ("vhost_traffic_status_filter_max_node 4; vhost_traffic_status_filter_max_node 5;", "is duplicate"),
        (r#"vhost_traffic_status_filter_by_set_key "";"#, "empty key"),
        ("vhost_traffic_status_filter_by_set_key a b c;", "invalid number of arguments"),
    ] {
        assert_directive_error(&root, port, directive, message);
    }
}

/// `vhost_traffic_status_histogram_buckets`: bucket counts after requests of known durations
/// in JSON (`requestBuckets`, `responseBuckets`) and as Prometheus histograms (`promtool`
/// accepts them). Limits: `limit_traffic` answers its status code once the member is above
/// the size, `limit_traffic_by_set_key` per filter key, `limit_check_duplicate`,
/// `vhost_traffic_status_limit off`, `bypass_limit`, and `bypass_stats` leaves requests uncounted.
#[test]
fn histogram_buckets_limits_and_bypass() {
    for strategy in Strategy::ALL {
        let (_dir, root) = bundle(strategy);
        let (port, status_port, b1) = (free_port(), free_port(), free_port());
        let body = format!(
            r#"
    vhost_traffic_status_zone;
    vhost_traffic_status_histogram_buckets 0.1 0.25 5;
    upstream slow {{ server 127.0.0.1:{b1}; }}
    server {{
        listen 127.0.0.1:{b1};
        vhost_traffic_status off;
        location / {{ content_by_lua_block {{ ngx.sleep(0.3) ngx.print("slow backend\n") }} }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name h.test;
        location /fast {{ return 200 "fast\n"; }}
        location /slow {{ content_by_lua_block {{ ngx.sleep(0.3) ngx.print("slow\n") }} }}
        location /up/ {{ proxy_pass http://slow/; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name l.test;
        vhost_traffic_status_limit_traffic request:4 429;
        location / {{ empty_gif; }}
        location /free {{ vhost_traffic_status_bypass_limit on; empty_gif; }}
        location /uncounted {{ vhost_traffic_status_bypass_stats on; empty_gif; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name off.test;
        vhost_traffic_status_limit off;
        vhost_traffic_status_limit_traffic request:1;
        location / {{ empty_gif; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name k.test;
        vhost_traffic_status_filter_by_set_key $arg_user users::$server_name;
        vhost_traffic_status_limit_traffic_by_set_key FG@users::$server_name@$arg_user request:2;
        location / {{ empty_gif; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name d1.test;
        vhost_traffic_status_limit_traffic request:3;
        vhost_traffic_status_limit_traffic request:1;
        location / {{ empty_gif; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name d2.test;
        vhost_traffic_status_limit_check_duplicate off;
        vhost_traffic_status_limit_traffic request:3;
        vhost_traffic_status_limit_traffic request:1;
        location / {{ empty_gif; }}
    }}
    server {{
        listen 127.0.0.1:{status_port};
        vhost_traffic_status off;
        location /status {{ vhost_traffic_status_display; }}
    }}"#
        );
        let nginx = Nginx::start(&root, &conf(&body), &[port, status_port, b1]);

        // histograms: 3 fast, 2 slow local, 2 slow through the upstream (the backend sleeps 0.3 s)
        let plan: Vec<(&str, &str)> = [[("h.test", "/fast")].repeat(3), [("h.test", "/slow")].repeat(2), [("h.test", "/up/x")].repeat(2)].concat();
        let statuses = run_plan(port, &plan, 4);
        assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
        let j = status_json(status_port, "/status/format/json");
        let buckets = |z: &Json, key: &str| -> (Vec<u64>, Vec<u64>) {
            let b = z.get(key);
            (b.get("msecs").arr().iter().map(Json::u64).collect(), b.get("counters").arr().iter().map(Json::u64).collect())
        };
        let h = j.get("serverZones").get("h.test");
        assert_eq!(buckets(h, "requestBuckets"), (vec![100, 250, 5000], vec![3, 3, 7]), "cumulative per bucket");
        let peer = &j.get("upstreamZones").get("slow").arr()[0];
        assert_eq!(buckets(peer, "requestBuckets"), (vec![100, 250, 5000], vec![0, 0, 2]));
        assert_eq!(buckets(peer, "responseBuckets"), (vec![100, 250, 5000], vec![0, 0, 2]));

        let prom = http::get(status_port, "/status/format/prometheus").body;
        promtool_check(&prom);
        let e = prometheus::parse(&prom);
        let hb = |le: &'static str| e.int("nginx_vts_server_request_duration_seconds_bucket", &[("host", "h.test"), ("le", le)]);
        assert_eq!((hb("0.100"), hb("0.250"), hb("5.000"), hb("+Inf")), (3, 3, 7, 7));
        assert_eq!(e.int("nginx_vts_server_request_duration_seconds_count", &[("host", "h.test")]), 7);
        let sum = e.value("nginx_vts_server_request_duration_seconds_sum", &[("host", "h.test")]).unwrap();
        assert!(sum >= 4.0 * 0.29, "four requests of 0.3 s: {sum}");
        let backend = format!("127.0.0.1:{b1}");
        let ub = |family: &str, le: &'static str| e.int(family, &[("upstream", "slow"), ("backend", backend.as_str()), ("le", le)]);
        assert_eq!(ub("nginx_vts_upstream_response_duration_seconds_bucket", "0.250"), 0);
        assert_eq!(ub("nginx_vts_upstream_response_duration_seconds_bucket", "5.000"), 2);
        assert_eq!(ub("nginx_vts_upstream_request_duration_seconds_bucket", "+Inf"), 2);
        let kinds: BTreeMap<&str, &str> = e.families.iter().map(|(n, k)| (n.as_str(), k.as_str())).collect();
        assert_eq!(kinds["nginx_vts_server_request_duration_seconds"], "histogram");

        // limits (checked in the preaccess phase, so the locations have a content handler,
        // not `return`), one request at a time so the counters are exact
        let seq = |host: &str, path: &str, n: usize| -> Vec<u16> { (0..n).map(|_| get_host(port, host, path).status).collect() };
        assert_eq!(seq("l.test", "/", 6), [200, 200, 200, 200, 200, 429], "limited once requests > 4");
        assert_eq!(seq("l.test", "/free", 2), [200, 200], "bypass_limit");
        let before = status_json(status_port, "/status/format/json").get("serverZones").get("l.test").get("requestCounter").u64();
        assert_eq!(before, 8);
        assert_eq!(seq("l.test", "/uncounted", 3), [429, 429, 429], "bypass_stats is still limited");
        let after = status_json(status_port, "/status/format/json").get("serverZones").get("l.test").get("requestCounter").u64();
        assert_eq!(after, before, "bypass_stats requests are not counted");
        assert_eq!(seq("off.test", "/", 4), [200; 4], "vhost_traffic_status_limit off");
        assert_eq!(seq("k.test", "/?user=alice", 4), [200, 200, 200, 503], "per filter key, default 503");
        assert_eq!(seq("k.test", "/?user=bob", 2), [200, 200], "another key has its own count");
        assert_eq!(seq("d1.test", "/", 5), [200, 200, 200, 200, 503], "a duplicate member is ignored");
        assert_eq!(seq("d2.test", "/", 3), [200, 200, 503], "limit_check_duplicate off: both apply");
        nginx.quit();
    }
}

/// Bad histogram and limit directives stop nginx with a message that says what is wrong.
#[test]
fn histogram_and_limit_directive_errors() {
    let (_dir, root) = bundle(Strategy::Embed);
    let port = free_port();
    for (directive, message) in [
        ("vhost_traffic_status_histogram_buckets 0.1 0.05;", "is not greater than the one before it"),
        ("vhost_traffic_status_histogram_buckets fast;", r#"invalid bucket "fast""#),
        ("vhost_traffic_status_limit_traffic bytes:10;", r#"invalid limit "bytes:10""#),
        ("vhost_traffic_status_limit_traffic in:lots;", r#"invalid limit "in:lots""#),
        ("vhost_traffic_status_limit_traffic in:10 700;", r#"invalid status code "700""#),
    ] {
        assert_directive_error(&root, port, directive, message);
    }
}

/// `vhost_traffic_status_set_by_filter` reads one value of a zone into a variable;
/// `display_sum_key` renames the sum zone; `display_format jsonp` and `.../format/jsonp` wrap
/// the JSON in the `display_jsonp` callback.
#[test]
fn set_by_filter_sum_key_and_jsonp() {
    for strategy in Strategy::ALL {
        let (_dir, root) = bundle(strategy);
        let (port, status_port, b1) = (free_port(), free_port(), free_port());
        let body = format!(
            r#"
    vhost_traffic_status_zone;
    upstream back {{ server 127.0.0.1:{b1} weight=7; }}
    {backend}
    server {{
        listen 127.0.0.1:{port};
        server_name s.test;
        vhost_traffic_status_filter_by_set_key $arg_c country::$server_name;
        vhost_traffic_status_set_by_filter $server_requests server/s.test/requestCounter;
        location / {{ return 200 "ok\n"; }}
        location /up/ {{ proxy_pass http://back/; }}
        location = /get {{
            vhost_traffic_status_set_by_filter $kr filter/country::$server_name@KR/requestCounter;
            vhost_traffic_status_set_by_filter $peer_2xx upstream@group/back@127.0.0.1:{b1}/2xx;
            vhost_traffic_status_set_by_filter $peer_weight upstream@group/back@127.0.0.1:{b1}/weight;
            vhost_traffic_status_set_by_filter $missing server/nowhere.test/requestCounter;
            return 200 "$kr $peer_2xx $peer_weight $missing\n";
        }}
        location = /server {{ return 200 "$server_requests\n"; }}
    }}
    server {{
        listen 127.0.0.1:{status_port};
        vhost_traffic_status off;
        location /status {{ vhost_traffic_status_display; vhost_traffic_status_display_sum_key total; }}
        location /jsonp {{
            vhost_traffic_status_display;
            vhost_traffic_status_display_format jsonp;
            vhost_traffic_status_display_jsonp update_vts;
        }}
    }}"#,
            backend = backend(b1)
        );
        let nginx = Nginx::start(&root, &conf(&body), &[port, status_port, b1]);
        for path in ["/?c=KR", "/?c=KR", "/?c=US", "/up/a", "/up/b", "/up/c"] {
            assert_eq!(get_host(port, "s.test", path).status, 200, "{path}");
        }
        assert_eq!(get_host(port, "s.test", "/get").body, "2 3 7 0\n");
        assert_eq!(get_host(port, "s.test", "/server").body, "7\n", "6 requests and /get before it");

        let j = status_json(status_port, "/status/format/json");
        assert_eq!(j.get("serverZones").keys(), ["s.test", "total"], "the sum key is renamed");
        let e = prometheus::parse(&http::get(status_port, "/status/format/prometheus").body);
        assert_eq!(e.int("nginx_vts_server_requests_total", &[("host", "total"), ("code", "total")]), 8);

        for path in ["/jsonp", "/status/format/jsonp"] {
            let r = http::get(status_port, path);
            assert_eq!(r.status, 200);
            assert_eq!(r.header("Content-Type"), Some("application/javascript"), "{path}");
            let callback = if path == "/jsonp" { "update_vts" } else { "ngx_http_vhost_traffic_status_jsonp_callback" };
            let inner = r.body.strip_prefix(&format!("{callback}(")).and_then(|b| b.strip_suffix(")\n")).unwrap_or_else(|| panic!("{path}: {}", r.body));
            Json::parse(inner).get("serverZones");
        }
        nginx.quit();
    }
}

/// `vhost_traffic_status_dump`: the counters are written on exit and periodically, and a
/// restarted nginx starts from them.
#[test]
fn dump_survives_a_restart() {
    for strategy in Strategy::ALL {
        let (dir, root) = bundle(strategy);
        let (port, status_port) = (free_port(), free_port());
        // worker 0 writes the dump: its directory must be writable by the workers' user
        // (nobody, when the tests run as root)
        use std::os::unix::fs::PermissionsExt;
        let dump_dir = root.join("dump");
        std::fs::create_dir_all(&dump_dir).unwrap();
        std::fs::set_permissions(&dump_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        for d in [dir.path(), root.as_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let body = format!(
            r#"
    vhost_traffic_status_zone;
    vhost_traffic_status_dump dump/vts.db 1s;
    vhost_traffic_status_filter_by_set_key $uri uris::*;
    server {{
        listen 127.0.0.1:{port};
        server_name dump.test;
        location / {{ return 200 "ok\n"; }}
    }}
    server {{
        listen 127.0.0.1:{status_port};
        vhost_traffic_status off;
        location /status {{ vhost_traffic_status_display; }}
    }}"#
        );
        let db = dump_dir.join("vts.db");
        let nginx = Nginx::start(&root, &conf(&body), &[port, status_port]);
        for path in ["/a", "/a", "/b"] {
            assert_eq!(get_host(port, "dump.test", path).status, 200);
        }
        // the periodic dump, while nginx runs
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !db.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(db.exists(), "the dump is written every period");
        assert_eq!(get_host(port, "dump.test", "/c").status, 200);
        assert!(nginx.quit().success());

        let nginx = Nginx::start(&root, &conf(&body), &[port, status_port]);
        assert!(nginx.error_log().contains("restored"), "{}", nginx.error_log());
        let j = status_json(status_port, "/status/format/json");
        assert_eq!(j.get("serverZones").get("dump.test").get("requestCounter").u64(), 4, "the request after the periodic dump too");
        assert_eq!(j.get("serverZones").get("*").get("requestCounter").u64(), 4);
        assert_eq!(j.get("filterZones").get("uris::*").get("/a").get("requestCounter").u64(), 2);
        assert_eq!(get_host(port, "dump.test", "/a").status, 200);
        let j = status_json(status_port, "/status/format/json");
        assert_eq!(j.get("serverZones").get("dump.test").get("requestCounter").u64(), 5, "counting goes on");
        nginx.quit();

        // a file that is not a dump is ignored with a warning
        std::fs::write(&db, "garbage").unwrap();
        let nginx = Nginx::start(&root, &conf(&body), &[port, status_port]);
        assert!(nginx.error_log().contains("is not a dump of this version"), "{}", nginx.error_log());
        let j = status_json(status_port, "/status/format/json");
        assert!(j.get("serverZones").try_get("dump.test").is_none());
        nginx.quit();
    }
}

/// Runs headless Debian `chromium` with `extra` arguments on `url` (at most 120 s), returning
/// its standard output.
fn chromium(url: &str, extra: &[&str]) -> String {
    let profile = temp_dir("vts-chromium");
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=5000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--user-data-dir={}", profile.path().display()));
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(url.to_string());
    let out_path = profile.path().join("stdout");
    let mut child = std::process::Command::new("chromium")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run chromium (Debian package chromium)");
    let started = std::time::Instant::now();
    let deadline = started + std::time::Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium {args:?}: {status}");
            eprintln!("chromium took {:.1} s", started.elapsed().as_secs_f64());
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 120 s: {args:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::fs::read_to_string(&out_path).unwrap()
}

/// The page C string in the module is `share/dashboard.html`, byte for byte.
#[test]
fn dashboard_header_matches_its_source() {
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("../modules/ngx_http_vhost_traffic_status");
    let html = std::fs::read_to_string(module.join("share/dashboard.html")).unwrap();
    let header = std::fs::read_to_string(module.join("src/ngx_http_vhost_traffic_status_dashboard.h")).unwrap();
    let mut text = String::new();
    let body = header.split_once("ngx_http_vts_dashboard[] =\n").expect("the array").1;
    for line in body.lines().take_while(|l| !l.starts_with(';')) {
        let lit = line.trim().strip_prefix('"').and_then(|l| l.strip_suffix('"')).unwrap_or_else(|| panic!("{line:?}"));
        let mut chars = lit.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => text.push('\n'),
                    Some('\\') => text.push('\\'),
                    Some('"') => text.push('"'),
                    other => panic!("escape {other:?} in {line:?}"),
                }
            } else {
                text.push(c);
            }
        }
    }
    assert!(text == html, "regenerate src/ngx_http_vhost_traffic_status_dashboard.h from share/dashboard.html");
}

/// The HTML format is a live dashboard: in a real browser (headless chromium) its script
/// loads the JSON of the same location and the rendered page shows the numbers of the
/// requests sent, upstream peers with their state (a health checker's verdict included),
/// cache zones, and the chart. One screenshot is kept.
#[test]
fn dashboard_renders_live_numbers_in_chromium() {
    for strategy in Strategy::ALL {
        let (_dir, root) = bundle(strategy);
        let (port, status_port, b1, b2) = (free_port(), free_port(), free_port(), free_port());
        // nothing listens on `dead`: the health checker marks it down at run time
        let dead = free_port();
        let cache_dir = temp_dir("vts-dashboard-cache");
        std::fs::set_permissions(cache_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let body = format!(
            r#"
    vhost_traffic_status_zone;
    vhost_traffic_status_filter_by_set_key $arg_team teams::*;
    lua_shared_dict healthcheck 1m;
    proxy_cache_path {cache} keys_zone=pages:1m use_temp_path=off;
    upstream app {{ server 127.0.0.1:{b1}; server 127.0.0.1:{b2} down; }}
    upstream checked {{ server 127.0.0.1:{b1}; server 127.0.0.1:{dead}; }}
    init_worker_by_lua_block {{
        local ok, err = require("resty.upstream.healthcheck").spawn_checker({{
            shm = "healthcheck", upstream = "checked", type = "http",
            http_req = "GET / HTTP/1.0\r\nHost: checked\r\n\r\n", interval = 100, timeout = 300, fall = 1, rise = 1,
        }})
        if not ok then ngx.log(ngx.ERR, "failed to spawn health checker: ", err) end
    }}
    {backend}
    server {{
        listen 127.0.0.1:{port};
        server_name shop.test;
        location / {{ return 200 "shop\n"; }}
        location /app/ {{ proxy_pass http://app/; }}
        location /checked/ {{ proxy_pass http://checked/; }}
        location /cached/ {{ proxy_cache pages; proxy_cache_valid 200 1m; proxy_pass http://127.0.0.1:{b1}/; }}
        location = /missing {{ return 404; }}
    }}
    server {{
        listen 127.0.0.1:{status_port};
        vhost_traffic_status off;
        location /status {{ vhost_traffic_status_display; vhost_traffic_status_display_format html; }}
    }}"#,
            backend = backend(b1),
            cache = cache_dir.path().display()
        );
        let nginx = Nginx::start(&root, &conf(&body), &[port, status_port, b1]);
        let plan: Vec<(&str, &str)> =
            [[("shop.test", "/?team=red")].repeat(4), [("shop.test", "/app/x")].repeat(3), [("shop.test", "/missing")].repeat(2)].concat();
        run_plan(port, &plan, 3);
        for _ in 0..2 {
            assert_eq!(get_host(port, "shop.test", "/cached/page").status, 200);
        }
        // the checker's verdict reaches the JSON of every worker (bounded wait)
        let dead_peer = format!("127.0.0.1:{dead}");
        let marked_down =
            |j: &Json| j.get("upstreamZones").get("checked").arr().iter().any(|p| p.get("server").str() == dead_peer && p.get("down") == &Json::Bool(true));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while !(0..4).all(|_| marked_down(&status_json(status_port, "/status/format/json"))) {
            assert!(std::time::Instant::now() < deadline, "the health checker did not mark {dead_peer} down:\n{}", nginx.error_log());
            std::thread::sleep(std::time::Duration::from_millis(100));
        }

        let page = http::get(status_port, "/status");
        assert_eq!(page.header("Content-Type"), Some("text/html"));
        assert!(!page.body.contains("src=\"http") && !page.body.contains("href=\"http"), "no external assets");

        let dom = chromium(&format!("http://127.0.0.1:{status_port}/status"), &["--dump-dom"]);
        let cell = |zone: &str, field: &str| -> String {
            let marker = format!("data-zone=\"{zone}\" data-field=\"{field}\"");
            let at = dom.find(&marker).unwrap_or_else(|| panic!("no cell {zone}/{field} in the rendered DOM:\n{dom}"));
            let rest = &dom[at..];
            let start = rest.find('>').unwrap() + 1;
            let end = rest.find("</td>").unwrap();
            rest[start..end].to_string()
        };
        assert!(dom.contains("data-loaded=\"1\""), "the script ran and loaded the JSON:\n{dom}");
        assert_eq!(cell("shop.test", "requestCounter"), "11");
        assert_eq!(cell("shop.test", "2xx"), "9");
        assert_eq!(cell("shop.test", "4xx"), "2");
        assert_eq!(cell("*", "requestCounter"), "11");
        assert_eq!(cell("teams::* / red", "requestCounter"), "4");
        assert_eq!(cell(&format!("app@127.0.0.1:{b1}"), "requestCounter"), "3");
        assert_eq!(cell(&format!("app@127.0.0.1:{b1}"), "state"), "up");
        assert_eq!(cell(&format!("app@127.0.0.1:{b2}"), "state"), "down", "a down peer is shown");
        assert_eq!(cell(&format!("app@127.0.0.1:{b2}"), "requestCounter"), "0");
        assert_eq!(cell(&format!("checked@{dead_peer}"), "state"), "down", "the health checker's verdict is shown");
        assert_eq!(cell(&format!("checked@127.0.0.1:{b1}"), "state"), "up");
        assert_eq!(cell("pages", "hit"), "1");
        assert_eq!(cell("pages", "miss"), "1");
        assert_eq!(cell("pages", "ratio"), "50.0 %");
        // after the second poll the rate is a number (no requests meanwhile: 0.0)
        assert_eq!(cell("shop.test", "rate"), "0.0");
        assert!(dom.contains("<canvas id=\"chart\""));

        if strategy == Strategy::Embed {
            let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vts-dashboard.png");
            let _ = std::fs::remove_file(&shot);
            chromium(
                &format!("http://127.0.0.1:{status_port}/status"),
                &[&format!("--screenshot={}", shot.display()), "--window-size=1280,900", "--hide-scrollbars"],
            );
            let png = std::fs::read(&shot).expect("the screenshot is written");
            assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot: {} bytes", png.len());
            println!("dashboard screenshot: {}", shot.display());
        }
        nginx.quit();
    }
}

/// `vhost_traffic_status_stats_by_upstream off` leaves a location's upstream attempts
/// uncounted (its server zone still counts); `average_method` / `average_period` are checked.
#[test]
fn stats_by_upstream_and_average_directives() {
    for strategy in Strategy::ALL {
        let (_dir, root) = bundle(strategy);
        let (port, status_port, b1) = (free_port(), free_port(), free_port());
        let body = format!(
            r#"
    vhost_traffic_status_zone;
    vhost_traffic_status_average_method WMA 30s;
    vhost_traffic_status_average_period 60s;
    upstream back {{ server 127.0.0.1:{b1}; }}
    {backend}
    server {{
        listen 127.0.0.1:{port};
        server_name u.test;
        location /a/ {{ proxy_pass http://back/; }}
        location /b/ {{ vhost_traffic_status_stats_by_upstream off; proxy_pass http://back/; }}
    }}
    server {{
        listen 127.0.0.1:{status_port};
        vhost_traffic_status off;
        location /status {{ vhost_traffic_status_display; }}
    }}"#,
            backend = backend(b1)
        );
        let nginx = Nginx::start(&root, &conf(&body), &[port, status_port, b1]);
        for path in ["/a/1", "/a/2", "/b/1", "/b/2", "/b/3"] {
            assert_eq!(get_host(port, "u.test", path).status, 200, "{path}");
        }
        let j = status_json(status_port, "/status/format/json");
        assert_eq!(j.get("serverZones").get("u.test").get("requestCounter").u64(), 5);
        assert_eq!(j.get("upstreamZones").get("back").arr()[0].get("requestCounter").u64(), 2);
        nginx.quit();
    }
    let (_dir, root) = bundle(Strategy::Embed);
    let port = free_port();
    for (directive, message) in
        [("vhost_traffic_status_average_method XYZ;", r#"invalid method "XYZ""#), ("vhost_traffic_status_average_period soon;", r#"invalid period "soon""#)]
    {
        assert_directive_error(&root, port, directive, message);
    }
}

/// `vhost_traffic_status_ignore_status`: requests whose status is in an ignored class are left
/// out of the server, sum and filter zones and of the upstream peer that served them; each
/// upstream attempt is judged by its own status (an ignored 503 attempt is left out, a 503
/// attempt before an ignored 404 still counts); a location's own list replaces its server's;
/// bad classes and a second directive stop nginx with a message.
#[test]
fn ignore_status_leaves_those_classes_uncounted() {
    for strategy in Strategy::ALL {
        let (_dir, root) = bundle(strategy);
        let (port, status_port, b1, b2) = (free_port(), free_port(), free_port(), free_port());
        let body = format!(
            r#"
    vhost_traffic_status_zone;
    upstream back {{ server 127.0.0.1:{b1}; }}
    upstream flaky {{ server 127.0.0.1:{b2}; server 127.0.0.1:{b1}; }}
    upstream flaky4 {{ server 127.0.0.1:{b2}; server 127.0.0.1:{b1}; }}
    {backend}
    server {{
        listen 127.0.0.1:{b2};
        vhost_traffic_status off;
        access_log off;
        location / {{ return 503; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name i.test;
        vhost_traffic_status_ignore_status 3xx 4xx;
        vhost_traffic_status_filter_by_set_key $uri uris::$server_name;
        location / {{ return 200 "ok\n"; }}
        location = /redirect {{ return 302 /; }}
        location = /missing {{ return 404; }}
        location = /err {{ return 500; }}
        location = /loc/missing {{ vhost_traffic_status_ignore_status 5xx; return 404; }}
        location = /loc/err {{ vhost_traffic_status_ignore_status 5xx; return 500; }}
        location /up/ {{ proxy_pass http://back/; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name r.test;
        vhost_traffic_status_ignore_status 5xx;
        location / {{ proxy_next_upstream error http_503; proxy_pass http://flaky/; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name f.test;
        vhost_traffic_status_ignore_status 4xx;
        location / {{ proxy_next_upstream error http_503; proxy_pass http://flaky4/; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name c.test;
        location = /redirect {{ return 302 /; }}
        location = /missing {{ return 404; }}
    }}
    server {{
        listen 127.0.0.1:{status_port};
        vhost_traffic_status off;
        location /status {{ vhost_traffic_status_display; }}
    }}"#,
            backend = backend(b1)
        );
        let nginx = Nginx::start(&root, &conf(&body), &[port, status_port, b1, b2]);
        let plan = [
            ("i.test", "/", 200),
            ("i.test", "/", 200),
            ("i.test", "/redirect", 302),
            ("i.test", "/missing", 404),
            ("i.test", "/missing", 404),
            ("i.test", "/err", 500),
            ("i.test", "/loc/missing", 404),
            ("i.test", "/loc/err", 500),
            ("i.test", "/up/x", 200),
            ("i.test", "/up/code/404", 404),
            ("c.test", "/redirect", 302),
            ("c.test", "/missing", 404),
        ];
        for (host, path, status) in plan {
            assert_eq!(get_host(port, host, path).status, status, "{host}{path}");
        }
        // each worker's round robin starts at the peer that answers 503, then retries the other
        for i in 0..4 {
            assert_eq!(get_host(port, "r.test", &format!("/{i}")).status, 200);
            // the same start through another group: 503 there, then the other peer's 404
            assert_eq!(get_host(port, "f.test", "/code/404").status, 404);
        }

        let j = status_json(status_port, "/status/format/json");
        let zones = j.get("serverZones");
        let classes = |zone: &Json| -> Vec<u64> { ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().map(|c| zone.get("responses").get(c).u64()).collect() };
        let i = zones.get("i.test");
        assert_eq!(i.get("requestCounter").u64(), 5, "/ x2, /err, /loc/missing, /up/x");
        assert_eq!(classes(i), [0, 3, 0, 1, 1]);
        assert_eq!(classes(zones.get("c.test")), [0, 0, 1, 1, 0], "a server without the directive counts every class");
        assert_eq!(zones.get("r.test").get("requestCounter").u64(), 4);
        assert_eq!(zones.get("*").get("requestCounter").u64(), 5 + 2 + 4, "the sum zone leaves out the same requests");

        let uris = j.get("filterZones").get("uris::i.test");
        let mut keys = uris.keys();
        keys.sort_unstable();
        assert_eq!(keys, ["/", "/err", "/loc/missing", "/up/x"], "filter keys of ignored requests are not created");
        assert_eq!(uris.get("/").get("requestCounter").u64(), 2);

        let peers = |group: &str| -> BTreeMap<String, u64> {
            j.get("upstreamZones").get(group).arr().iter().map(|p| (p.get("server").str().to_string(), p.get("requestCounter").u64())).collect()
        };
        assert_eq!(peers("back"), BTreeMap::from([(format!("127.0.0.1:{b1}"), 1)]), "the 404 through the upstream is not counted");
        let flaky = peers("flaky");
        assert_eq!(flaky[&format!("127.0.0.1:{b2}")], 0, "attempts answered 503 are not counted: {flaky:?}");
        assert_eq!(flaky[&format!("127.0.0.1:{b1}")], 4, "{flaky:?}");
        let flaky4 = peers("flaky4");
        assert_eq!(flaky4[&format!("127.0.0.1:{b1}")], 0, "the 404 attempts are ignored: {flaky4:?}");
        assert!((1..=2).contains(&flaky4[&format!("127.0.0.1:{b2}")]), "a 503 attempt before an ignored 404 counts: {flaky4:?}");
        assert!(zones.try_get("f.test").is_none(), "no f.test request was counted");
        let log = nginx.error_log();
        let tried = |server: &str| log.lines().any(|l| l.contains("upstream server temporarily disabled") && l.contains(&format!("server: {server},")));
        assert!(tried("r.test") && tried("f.test"), "the 503 peer was tried through both groups:\n{log}");
        nginx.quit();
    }

    let (_dir, root) = bundle(Strategy::Embed);
    let port = free_port();
    for (directive, message) in [
        ("vhost_traffic_status_ignore_status 200;", r#"invalid status class "200""#),
        ("vhost_traffic_status_ignore_status 6xx;", r#"invalid status class "6xx""#),
        ("vhost_traffic_status_ignore_status 1xx; vhost_traffic_status_ignore_status 3xx;", "is duplicate"),
    ] {
        assert_directive_error(&root, port, directive, message);
    }
}

/// The window of one zone as JSON shows it: `(times, msecs)` of `"<what>Msecs"`, oldest first.
fn window(zone: &Json, what: &str) -> (Vec<u64>, Vec<u64>) {
    let w = zone.get(&format!("{what}Msecs"));
    let list = |key: &str| w.get(key).arr().iter().map(Json::u64).collect::<Vec<_>>();
    let (times, msecs) = (list("times"), list("msecs"));
    assert_eq!(times.len(), msecs.len(), "one time per sample");
    (times, msecs)
}

fn amm(msecs: &[u64]) -> u64 {
    msecs.iter().sum::<u64>() / msecs.len() as u64
}

/// The weighted moving average: the i-th sample (oldest first) weighs i + 1.
fn wma(msecs: &[u64]) -> u64 {
    let weights: u64 = (1..=msecs.len() as u64).sum();
    msecs.iter().zip(1..).map(|(m, w)| m * w).sum::<u64>() / weights
}

/// `requestMsec` / `responseMsec` are moving averages the way vts computes them: over the last
/// 64 samples shown in `requestMsecs` / `responseMsecs` (epoch-ms times, durations), as AMM or
/// WMA by the displaying location's `vhost_traffic_status_average_method`, over the samples
/// younger than its period (0: all of them). The Prometheus gauges and `$vts_request_time`
/// report the same averages.
#[test]
fn moving_averages_follow_the_window_the_method_and_the_period() {
    let epoch_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    for strategy in Strategy::ALL {
        let (_dir, root) = bundle(strategy);
        let (port, status_port, b1) = (free_port(), free_port(), free_port());
        let sleep = r#"content_by_lua_block { ngx.sleep(tonumber(ngx.var.arg_ms) / 1000) ngx.say("slept") }"#;
        let body = format!(
            r#"
    vhost_traffic_status_zone;
    upstream slow {{ server 127.0.0.1:{b1}; }}
    server {{
        listen 127.0.0.1:{b1};
        server_name b.test;
        location / {{ {sleep} }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name m.test;
        location /direct {{ {sleep} }}
        location /proxy/ {{ proxy_pass http://slow/; }}
        location /var {{ vhost_traffic_status_average_method WMA 0; return 200 "$vts_request_time\n"; }}
    }}
    server {{
        listen 127.0.0.1:{status_port};
        vhost_traffic_status off;
        location /amm {{ vhost_traffic_status_average_method AMM 0; vhost_traffic_status_display; }}
        location /wma {{ vhost_traffic_status_average_method WMA 0; vhost_traffic_status_display; }}
        location /recent {{ vhost_traffic_status_average_period 1s; vhost_traffic_status_display; }}
    }}"#
        );
        let started = epoch_ms();
        let nginx = Nginx::start(&root, &conf(&body), &[port, status_port, b1]);
        let zone = |location: &str| status_json(status_port, &format!("/{location}/format/json")).get("serverZones").get("m.test").clone();

        // three short requests, then a long one: WMA weighs the long, newest one most
        let slept = [20, 20, 20, 150];
        for ms in slept {
            assert_eq!(get_host(port, "m.test", &format!("/direct?ms={ms}")).status, 200);
        }
        let (times, msecs) = window(&zone("amm"), "request");
        assert_eq!(msecs.len(), 4);
        for (m, s) in msecs.iter().zip(slept) {
            assert!(*m >= s && *m < s + 500, "a sample of a {s} ms sleep measured {m} ms: {msecs:?}");
        }
        assert!(times.windows(2).all(|t| t[0] <= t[1]) && times[0] + 1000 >= started && times[3] <= epoch_ms() + 1000, "{times:?}");
        assert_eq!(zone("amm").get("requestMsec").u64(), amm(&msecs));
        let weighted = zone("wma").get("requestMsec").u64();
        assert_eq!(weighted, wma(&msecs));
        assert!(weighted > amm(&msecs), "the newest sample is the longest");
        let e = prometheus::parse(&http::get(status_port, "/wma/format/prometheus").body);
        let gauge = e.value("nginx_vts_server_request_seconds", &[("host", "m.test")]).unwrap();
        assert!((gauge - weighted as f64 / 1000.0).abs() < 0.0005, "gauge {gauge} vs {weighted} ms");
        let var = get_host(port, "m.test", "/var");
        assert_eq!(var.body.trim(), weighted.to_string(), "$vts_request_time is the same WMA");

        // an upstream peer keeps a window of request and of upstream response times
        for _ in 0..2 {
            assert_eq!(get_host(port, "m.test", "/proxy/?ms=30").status, 200);
        }
        let j = status_json(status_port, "/amm/format/json");
        let peer = &j.get("upstreamZones").get("slow").arr()[0];
        let (_, requests) = window(peer, "request");
        let (_, responses) = window(peer, "response");
        assert_eq!((requests.len(), responses.len()), (2, 2));
        assert!(responses.iter().all(|&m| m >= 30), "{responses:?}");
        assert_eq!(peer.get("responseMsec").u64(), amm(&responses));
        assert_eq!(peer.get("requestMsec").u64(), amm(&requests));

        // a period counts only the samples younger than it
        std::thread::sleep(std::time::Duration::from_millis(1300));
        assert_eq!(zone("recent").get("requestMsec").u64(), 0, "no sample in the last second");
        assert!(zone("amm").get("requestMsec").u64() > 0, "period 0: every sample held");
        assert_eq!(get_host(port, "m.test", "/direct?ms=60").status, 200);
        let recent = zone("recent").get("requestMsec").u64();
        assert!(recent >= 60, "only the newest sample is in the period: {recent}");

        // the window keeps the last 64 samples
        for _ in 0..70 {
            assert_eq!(get_host(port, "m.test", "/direct?ms=0").status, 200);
        }
        let z = zone("amm");
        let (times, msecs) = window(&z, "request");
        assert_eq!((times.len(), z.get("requestCounter").u64()), (64, 4 + 1 + 2 + 1 + 70));
        assert_eq!(z.get("requestMsec").u64(), amm(&msecs));
        nginx.quit();
    }
}

/// A `proxy_cache` zone as vts shows it: the cache statuses of each request counted in its
/// server zone (`responses.miss` .. `scarce`, `nginx_vts_server_cache_total`) and in
/// `cacheZones` (sizes, bytes, statuses; `nginx_vts_cache_*`), read by `$vts_cache_*_counter`
/// and `set_by_filter cache/...`, limited by `CC@zone cache_hit:N`, and selected, reset by the
/// control API's `cache` group.
#[test]
fn cache_zones_count_cache_statuses() {
    for strategy in Strategy::ALL {
        let (_dir, root) = bundle(strategy);
        // The workers run as nobody: the cache directory must be theirs to write.
        let cache_dir = temp_dir("vts-cache");
        std::fs::set_permissions(cache_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let (port, status_port, b1) = (free_port(), free_port(), free_port());
        let body = format!(
            r#"
    vhost_traffic_status_zone;
    proxy_cache_path {cache} keys_zone=pages:1m max_size=10m use_temp_path=off;
    server {{
        listen 127.0.0.1:{b1};
        vhost_traffic_status off;
        location / {{ return 200 "cached body\n"; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name c.test;
        vhost_traffic_status_set_by_filter $hits cache/pages/cacheHit;
        vhost_traffic_status_set_by_filter $max cache/pages/cacheMaxSize;
        location /page {{ proxy_cache pages; proxy_cache_valid 200 1m; proxy_pass http://127.0.0.1:{b1}; }}
        location /fresh {{ proxy_cache pages; proxy_cache_bypass 1; proxy_pass http://127.0.0.1:{b1}; }}
        location /vars {{ return 200 "$vts_cache_miss_counter $vts_cache_hit_counter $vts_cache_bypass_counter $hits $max\n"; }}
        location /limited {{ vhost_traffic_status_limit_traffic_by_set_key CC@pages cache_hit:3 429; proxy_pass http://127.0.0.1:{b1}; }}
    }}
    server {{
        listen 127.0.0.1:{status_port};
        vhost_traffic_status off;
        location /status {{ vhost_traffic_status_display; }}
    }}"#,
            cache = cache_dir.path().display()
        );
        let nginx = Nginx::start(&root, &conf(&body), &[port, status_port, b1]);
        for path in ["/page", "/page", "/page", "/fresh"] {
            let r = get_host(port, "c.test", path);
            assert_eq!((r.status, r.body.as_str()), (200, "cached body\n"), "{path}");
        }
        let expected = [("miss", 1), ("bypass", 1), ("expired", 0), ("stale", 0), ("updating", 0), ("revalidated", 0), ("hit", 2), ("scarce", 0)];

        let j = status_json(status_port, "/status/format/json");
        let server = j.get("serverZones").get("c.test").get("responses");
        let cache = j.get("cacheZones").get("pages");
        assert_eq!(j.keys().last(), Some(&"cacheZones"), "cacheZones comes last");
        for (status, n) in expected {
            assert_eq!(server.get(status).u64(), n, "serverZones c.test {status}");
            assert_eq!(cache.get("responses").get(status).u64(), n, "cacheZones pages {status}");
        }
        assert_eq!(cache.get("maxSize").u64(), 10 * 1024 * 1024);
        assert!(cache.get("usedSize").u64() > 0, "the cached page takes space");
        assert!(cache.get("inBytes").u64() > 0 && cache.get("outBytes").u64() > 0);
        assert_eq!(cache.get("overCounts").get("hit").u64(), 0);

        let text = http::get(status_port, "/status/format/prometheus").body;
        promtool_check(&text);
        let e = prometheus::parse(&text);
        for (status, n) in expected {
            assert_eq!(e.int("nginx_vts_server_cache_total", &[("host", "c.test"), ("status", status)]), n);
            assert_eq!(e.int("nginx_vts_cache_requests_total", &[("cache_zone", "pages"), ("status", status)]), n);
        }
        assert_eq!(e.int("nginx_vts_cache_usage_bytes", &[("cache_zone", "pages"), ("cache_size", "max")]), 10 * 1024 * 1024);
        assert!(e.int("nginx_vts_cache_bytes_total", &[("cache_zone", "pages"), ("direction", "out")]) > 0);

        let vars = get_host(port, "c.test", "/vars");
        assert_eq!(vars.body, format!("1 2 1 2 {}\n", 10 * 1024 * 1024));

        // the limit counts the cache zone's hits: open at 3, refused above
        assert_eq!(get_host(port, "c.test", "/page").status, 200);
        assert_eq!(get_host(port, "c.test", "/limited").status, 200, "3 hits: not above the limit");
        assert_eq!(get_host(port, "c.test", "/page").status, 200);
        assert_eq!(get_host(port, "c.test", "/limited").status, 429, "4 hits: above the limit");

        // control API: the cache group
        let one = status_json(status_port, "/status/control?cmd=status&group=cache&zone=pages");
        assert_eq!(one.get("pages").get("responses").get("hit").u64(), 4);
        let all = status_json(status_port, "/status/control?cmd=status&group=cache&zone=*");
        assert_eq!(all.get("cacheZones").keys(), vec!["pages"]);
        let reset = status_json(status_port, "/status/control?cmd=reset&group=cache&zone=*");
        assert_eq!(reset.get("processingCounts").u64(), 1);
        let after = status_json(status_port, "/status/format/json");
        assert_eq!(after.get("cacheZones").get("pages").get("responses").get("hit").u64(), 0);
        assert_eq!(after.get("serverZones").get("c.test").get("responses").get("hit").u64(), 4, "only the cache zone was reset");
        assert_eq!(get_host(port, "c.test", "/limited").status, 200, "the reset reopens the limit");
        nginx.quit();
    }
}
