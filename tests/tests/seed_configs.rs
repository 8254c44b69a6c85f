//! The two seed configurations shipped in every bundle (conf/examples/embed-healthcheck.conf
//! and conf/examples/lualib-comprehensive.conf), run unchanged except for addresses, ports and
//! file paths, in both bundle strategies.

use std::thread::sleep;
use std::time::{Duration, Instant};

use e2e::backend::{Backend, Mode, TestCa};
use e2e::{free_port, http, port_example, temp_dir, unpack_bundle, Nginx, Strategy};

/// Polls `cond` every 50 ms until it holds or `limit` passes; returns the time it took.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Some(start.elapsed());
        }
        sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn embed_seed_turns_a_failing_peer_down_and_up() {
    for strategy in Strategy::ALL {
        let dir = temp_dir(&format!("seed-embed-{}", strategy.name()));
        let root = unpack_bundle(strategy, dir.path());
        let a = Backend::http("a");
        let b = Backend::http("b");
        let port = free_port();
        let conf = port_example(
            &root,
            "embed-healthcheck.conf",
            &[("10.0.0.11:8080", a.addr()), ("10.0.0.12:8080", b.addr()), ("listen 80;", format!("listen 127.0.0.1:{port};"))],
        );
        let nginx = Nginx::start(&root, &conf, &[port]);
        // both peers are probed (GET /healthz) before the test changes anything
        assert!(
            a.wait_probes(1, Duration::from_secs(10)) && b.wait_probes(1, Duration::from_secs(10)),
            "[{}] no probes:\n{}",
            strategy.name(),
            nginx.error_log()
        );
        assert!(!nginx.error_log().contains("failed to spawn health checker"), "[{}] {}", strategy.name(), nginx.error_log());

        b.set_mode(Mode::ERROR);
        let down = wait_for(Duration::from_secs(15), || nginx.error_log().contains("is turned down"))
            .unwrap_or_else(|| panic!("[{}] b not turned down within 15 s:\n{}", strategy.name(), nginx.error_log()));
        eprintln!("[{}] seed interval 2000 ms / fall 3: turned down {:.2} s after the peer started failing", strategy.name(), down.as_secs_f64());
        let log = nginx.error_log();
        let line = log.lines().find(|l| l.contains("is turned down")).unwrap();
        assert!(line.contains(&b.addr()), "[{}] the failing peer is the one turned down: {line}", strategy.name());
        // every worker applies the shared status within one more interval
        sleep(Duration::from_millis(2500));

        let before = b.proxied();
        let a_before = a.proxied();
        for _ in 0..20 {
            let r = http::get(port, "/");
            assert_eq!(r.status, 200, "[{}] proxied through location /", strategy.name());
        }
        assert_eq!(b.proxied(), before, "[{}] no request reaches the down peer", strategy.name());
        assert_eq!(a.proxied(), a_before + 20, "[{}] all requests go to the healthy peer", strategy.name());

        b.set_mode(Mode::OK);
        let up = wait_for(Duration::from_secs(10), || nginx.error_log().contains("is turned up"))
            .unwrap_or_else(|| panic!("[{}] b not turned up within 10 s:\n{}", strategy.name(), nginx.error_log()));
        eprintln!("[{}] turned up {:.2} s after the peer recovered (rise 2)", strategy.name(), up.as_secs_f64());
        nginx.quit();
    }
}

#[test]
fn comprehensive_seed_serves_status_and_merged_metrics() {
    for strategy in Strategy::ALL {
        let s = strategy.name();
        let dir = temp_dir(&format!("seed-comprehensive-{s}"));
        let root = unpack_bundle(strategy, dir.path());
        let ca = TestCa::new();
        let ca_path = dir.path().join("ca.pem");
        ca.write_pem(&ca_path);
        let foo1 = Backend::http("foo1");
        let foo2 = Backend::http("foo2");
        for b in [&foo1, &foo2] {
            b.set_probe_prefix("/readyz");
        }
        let bar1 = Backend::https("bar1", &ca, &["bar.internal"]);
        let bar2 = Backend::https("bar2", &ca, &["bar.internal"]);
        let port = free_port();
        let status_port = free_port();
        let conf = port_example(
            &root,
            "lualib-comprehensive.conf",
            &[
                ("10.0.1.11:8080", foo1.addr()),
                ("10.0.1.12:8080", foo2.addr()),
                ("10.0.2.11:8080", bar1.addr()),
                ("10.0.2.12:8080", bar2.addr()),
                ("listen 80;", format!("listen 127.0.0.1:{port};")),
                ("listen 18080;", format!("listen 127.0.0.1:{status_port};")),
                ("http {\n", format!("http {{\n    lua_ssl_trusted_certificate {};\n", ca_path.display())),
            ],
        );
        let nginx = Nginx::start(&root, &conf, &[port, status_port]);
        for b in [&foo1, &foo2, &bar1, &bar2] {
            assert!(b.wait_probes(1, Duration::from_secs(10)), "[{s}] {} not probed:\n{}", b.name(), nginx.error_log());
        }
        let log = nginx.error_log();
        assert!(!log.contains("failed to spawn health checker"), "[{s}] {log}");
        assert!(!log.contains("handshake"), "[{s}] the https checker verifies bar's certificate:\n{log}");
        assert!(bar1.requests().iter().any(|r| r.sni.as_deref() == Some("bar.internal")), "[{s}] bar probes send SNI bar.internal");

        // traffic through foo
        assert_eq!(http::get(port, "/api/x").status, 200, "[{s}] /api/ -> foo");
        // (location / proxies plain http to bar, whose peers here speak TLS as its checker
        // requires, so no request is sent through it)

        let status = http::get(status_port, "/status");
        assert_eq!(status.status, 200, "[{s}] /status");
        assert!(status.body.contains("Upstream foo"), "[{s}] /status:\n{}", status.body);
        assert!(status.body.contains("Upstream bar"), "[{s}] /status:\n{}", status.body);
        for b in [&foo1, &foo2, &bar1, &bar2] {
            assert!(status.body.contains(&b.addr()), "[{s}] /status lists {}:\n{}", b.addr(), status.body);
        }
        assert!(!status.body.contains("DOWN"), "[{s}] no peer is down:\n{}", status.body);

        let metrics = http::get(status_port, "/metrics");
        assert_eq!(metrics.status, 200, "[{s}] /metrics");
        let body = &metrics.body;
        let series = e2e::prometheus::parse(body);
        assert!(series.samples.iter().any(|x| x.name == "nginx_upstream_status_info"), "[{s}] healthcheck series:\n{body}");
        assert!(series.samples.iter().any(|x| x.name.starts_with("nginx_vts_")), "[{s}] vts series:\n{body}");
        for src in ["healthcheck_module", "vts"] {
            let want = format!("nginx_metrics_source_up{{source=\"{src}\"}} 1");
            assert_eq!(body.lines().filter(|l| *l == want).count(), 1, "[{s}] exactly one {want:?}:\n{body}");
        }
        assert_eq!(body.lines().filter(|l| l.starts_with("nginx_metrics_source_up")).count(), 2, "[{s}] two source lines:\n{body}");
        assert!(body.contains("# TYPE nginx_upstream_probe_failures_total counter\n"), "[{s}] probe metrics:\n{body}");
        e2e::promtool::check_metrics(body).unwrap_or_else(|e| panic!("[{s}] promtool check metrics: {e}\n{body}"));
        nginx.quit();
    }
}
