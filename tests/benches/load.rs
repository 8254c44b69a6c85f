//! Load benchmark: proxied requests per second through the two seed configurations, each
//! measured with and without one feature, to show what the feature costs.
//!
//! - conf/examples/embed-healthcheck.conf with its health checkers running, versus
//!   the same file without its `init_worker_by_lua_block` (both strategies).
//! - conf/examples/lualib-comprehensive.conf with the traffic status zone, versus
//!   the same file without the `vhost_traffic_status_zone` line (lualib strategy); and the zone
//!   with two `vhost_traffic_status_filter_by_set_key` filters ($uri, $remote_addr) versus the
//!   file without the zone.
//!
//! The examples come from the unpacked bundle and are ported to 127.0.0.1 by string
//! replacement only, as tests/seed_configs.rs does (`worker_processes auto;` is kept).
//! Upstream peers are a second nginx (the same binary) answering `ok` from memory, and the load
//! comes from a small closed-loop HTTP/1.1 keep-alive client in this file.
//!
//! Each run reports requests per second and the front workers' CPU time per request over the
//! measured window; on a machine where the client, the backends and the server share two
//! cores, the CPU figure is the one that separates a feature's cost from scheduling noise.
//!
//! Run: `STATIC_NGINX_STORE=/tmp/sn-store cargo bench -p e2e --bench load`

use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use e2e::backend::TestCa;
use e2e::{free_port, port_example, temp_dir, unpack_bundle, Nginx, Strategy};

/// Discarded at the start of every run: connections open, LuaJIT and caches warm up, and the
/// health checkers' first round (timer delay 0) happens here.
const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(5);
/// Each pair runs A, B, A, B, A, B; three runs per variant give a median that ignores one outlier.
const ROUNDS: usize = 3;
/// Keep-alive connections, one blocking client thread each. On 2 cores with 4, the CPUs still
/// idled ~20 % (each connection waits out its round trip); 8 saturates them, gave ~10 % more
/// requests/s and a smaller spread between runs, at the cost of queueing latency.
const CONNECTIONS: usize = 8;
/// Per-connection bound on requests, so a loop ends even if the clock misbehaves.
const MAX_REQUESTS: u64 = 10_000_000;
/// No single read or write may block a client longer than this.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

fn main() {
    println!("# Load benchmark: proxied requests per second (127.0.0.1)\n");
    println!("load average at start: {}", load_average());
    println!(
        "cpus: {}; per run: {} s warm-up + {} s measured, {CONNECTIONS} keep-alive connections, runs interleaved A,B x{ROUNDS}\n",
        thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        WARMUP.as_secs(),
        MEASURE.as_secs()
    );
    e2e::dist(); // finds the bundles in the store (or builds them) before any timing starts

    let mut rows = Vec::new();
    for strategy in Strategy::ALL {
        rows.extend(health_checker_cost(strategy));
    }
    rows.extend(traffic_status_cost(Strategy::Lualib));

    print_table(&rows);
    println!("\nload average at end: {}", load_average());
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

/// One row of the table: a variant's runs.
struct Row {
    feature: &'static str,
    strategy: Strategy,
    variant: &'static str,
    runs: Vec<Stats>,
    /// Health probes the backends answered during this variant's runs (0 means no checker ran).
    probes: u64,
}

/// The embed seed with and without its health checkers.
fn health_checker_cost(strategy: Strategy) -> Vec<Row> {
    let dir = temp_dir(&format!("bench-hc-{}", strategy.name()));
    let root = unpack_bundle(strategy, dir.path());
    let backends = Backends::start(&root, &dir.path().join("backends"), 2, &[]);
    let port = free_port();
    let with = port_example(
        &root,
        "embed-healthcheck.conf",
        &[("10.0.0.11:8080", backends.addr(0)), ("10.0.0.12:8080", backends.addr(1)), ("listen 80;", format!("listen 127.0.0.1:{port};"))],
    );
    let without = remove_block(&with, "init_worker_by_lua_block {");
    let pair = Pair { root: &root, backends: &backends, ports: vec![port], load_port: port, path: "/" };
    pair.compare(("health checks", strategy), ("with health checkers", &with), ("without", &without))
}

/// The lualib seed's comprehensive example with and without the traffic status zone.
/// Load goes to /api/ (upstream foo, plain http); bar's peers speak TLS so that its https
/// checker runs as in production, as the seed test does.
fn traffic_status_cost(strategy: Strategy) -> Vec<Row> {
    let dir = temp_dir(&format!("bench-vts-{}", strategy.name()));
    let root = unpack_bundle(strategy, dir.path());
    let ca = TestCa::new();
    let ca_path = dir.path().join("ca.pem");
    ca.write_pem(&ca_path);
    let backends = Backends::start(&root, &dir.path().join("backends"), 4, &[(&ca, 2), (&ca, 3)]);
    let (port, status_port) = (free_port(), free_port());
    let with = port_example(
        &root,
        "lualib-comprehensive.conf",
        &[
            ("10.0.1.11:8080", backends.addr(0)),
            ("10.0.1.12:8080", backends.addr(1)),
            ("10.0.2.11:8080", backends.addr(2)),
            ("10.0.2.12:8080", backends.addr(3)),
            ("listen 80;", format!("listen 127.0.0.1:{port};")),
            ("listen 18080;", format!("listen 127.0.0.1:{status_port};")),
            ("http {\n", format!("http {{\n    lua_ssl_trusted_certificate {};\n", ca_path.display())),
        ],
    );
    // nginx accepts `vhost_traffic_status_filter_by_host on;` without a zone, so only the
    // zone line goes; without a zone the module does no per-request accounting.
    let without = remove_line(&with, "vhost_traffic_status_zone ");
    let pair = Pair { root: &root, backends: &backends, ports: vec![port, status_port], load_port: port, path: "/api/x" };
    let with_filters = insert_after_line(
        &with,
        "vhost_traffic_status_zone ",
        "    vhost_traffic_status_filter_by_set_key $uri uris::*;\n    \
         vhost_traffic_status_filter_by_set_key $remote_addr clients::*;\n",
    );
    let mut rows = pair.compare(("traffic status", strategy), ("with traffic status zone", &with), ("without", &without));
    rows.extend(pair.compare(("traffic status", strategy), ("zone + 2 filter keys", &with_filters), ("without", &without)));
    rows
}

/// Two configurations of one front nginx, measured alternately under the same load.
struct Pair<'a> {
    root: &'a Path,
    backends: &'a Backends,
    /// Every port the configuration listens on (the start waits for all of them).
    ports: Vec<u16>,
    load_port: u16,
    path: &'static str,
}

impl Pair<'_> {
    fn compare(&self, (feature, strategy): (&'static str, Strategy), a: (&'static str, &str), b: (&'static str, &str)) -> Vec<Row> {
        let mut rows: Vec<Row> = [a.0, b.0].iter().map(|&variant| Row { feature, strategy, variant, runs: Vec::new(), probes: 0 }).collect();
        for round in 0..ROUNDS {
            for (row, conf) in rows.iter_mut().zip([a.1, b.1]) {
                let probes_before = self.backends.probes();
                let stats = self.run_once(conf);
                row.probes += self.backends.probes() - probes_before;
                eprintln!(
                    "[{feature} {} round {}] {:<26} {:>8.0} req/s {:>7.1} µs CPU/req  p50 {:.3} ms  p99 {:.3} ms  failed {}",
                    strategy.name(),
                    round + 1,
                    row.variant,
                    stats.rps,
                    stats.cpu_us_per_request,
                    stats.p50_ms,
                    stats.p99_ms,
                    stats.failed
                );
                row.runs.push(stats);
            }
        }
        rows
    }

    /// Starts a fresh front nginx with `conf`, loads it, and stops it (every run starts equal:
    /// new workers, empty shared memory, an empty access log).
    fn run_once(&self, conf: &str) -> Stats {
        let _ = fs::remove_file(self.root.join("logs/access.log"));
        let nginx = Nginx::start(self.root, conf, &self.ports);
        let stats = run_load(self.load_port, self.path, &nginx.worker_pids());
        let log = nginx.error_log();
        if stats.ok == 0 || log.contains("[emerg]") || log.contains("failed to spawn") {
            eprintln!("front nginx error log:\n{log}");
        }
        drop(nginx); // SIGQUIT, then SIGKILL after 5 s
        stats
    }
}

// ---------------------------------------------------------------------------------------------
// Configurations
// ---------------------------------------------------------------------------------------------

/// Removes the block that starts at the line containing `opening` (which ends in `{`) up to
/// its matching `}`; the block's Lua contains no braces in strings, so counting them suffices.
fn remove_block(conf: &str, opening: &str) -> String {
    assert_eq!(conf.matches(opening).count(), 1, "{opening:?} occurs once");
    let start = conf[..conf.find(opening).unwrap()].rfind('\n').map_or(0, |i| i + 1);
    let mut depth = 0;
    for (i, c) in conf[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    let end = start + i + 1;
                    let end = conf[end..].find('\n').map_or(conf.len(), |j| end + j + 1);
                    return format!("{}{}", &conf[..start], &conf[end..]);
                }
            }
            _ => {}
        }
    }
    panic!("no end of the block {opening:?}");
}

/// Inserts `text` after the one line containing `needle`.
fn insert_after_line(conf: &str, needle: &str, text: &str) -> String {
    let lines: Vec<&str> = conf.lines().collect();
    assert_eq!(lines.iter().filter(|l| l.contains(needle)).count(), 1, "{needle:?} occurs on one line");
    let mut out = String::new();
    for l in lines {
        out.push_str(l);
        out.push('\n');
        if l.contains(needle) {
            out.push_str(text);
        }
    }
    out
}

/// Removes the one line containing `needle`.
fn remove_line(conf: &str, needle: &str) -> String {
    let lines: Vec<&str> = conf.lines().collect();
    assert_eq!(lines.iter().filter(|l| l.contains(needle)).count(), 1, "{needle:?} occurs on one line");
    lines.iter().filter(|l| !l.contains(needle)).map(|l| format!("{l}\n")).collect()
}

// ---------------------------------------------------------------------------------------------
// Backends: a separate nginx, the same binary, in its own prefix
// ---------------------------------------------------------------------------------------------

/// The upstream peers: one nginx with a server per port, answering from memory so that they
/// are not what limits the front. Health probes go to their own log so runs can count them.
struct Backends {
    ports: Vec<u16>,
    prefix: PathBuf,
    _nginx: Nginx,
}

impl Backends {
    /// `count` plain-http servers; the indices in `tls` speak https with a certificate for
    /// `bar.internal` issued by the given CA.
    fn start(bundle_root: &Path, prefix: &Path, count: usize, tls: &[(&TestCa, usize)]) -> Backends {
        // Its own prefix (pid, logs, conf/test.conf) so it cannot collide with the front nginx,
        // with sbin/ (and lualib/) pointing at the bundle's.
        fs::create_dir_all(prefix.join("conf")).unwrap();
        for shared in ["sbin", "lualib"] {
            if bundle_root.join(shared).exists() {
                std::os::unix::fs::symlink(bundle_root.join(shared), prefix.join(shared)).unwrap();
            }
        }
        if let Some((ca, _)) = tls.first() {
            e2e::tls::write_server_files(ca, &prefix.join("conf"), &["bar.internal"]);
        }
        let ports: Vec<u16> = (0..count).map(|_| free_port()).collect();
        let servers: String = ports.iter().enumerate().map(|(i, port)| backend_server(*port, tls.iter().any(|(_, j)| *j == i))).collect();
        // The lualib binary loads resty.core at start, so it needs the bundle's package path.
        let lua_path = if prefix.join("lualib").exists() { pipeline::dist::LUA_PACKAGE_PATH } else { "" };
        // One worker: on 2 cores another one would only take CPU from the front nginx.
        let conf = format!(
            "worker_processes 1;\nerror_log logs/error.log warn;\npid logs/nginx.pid;\n\
             events {{ worker_connections 4096; }}\nhttp {{\n    access_log off;\n    {lua_path}\n{servers}}}\n"
        );
        let nginx = Nginx::start(prefix, &conf, &ports);
        Backends { ports, prefix: prefix.to_path_buf(), _nginx: nginx }
    }

    fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    /// Health probes answered so far (lines of logs/probes.log).
    fn probes(&self) -> u64 {
        fs::read_to_string(self.prefix.join("logs/probes.log")).map_or(0, |s| s.lines().count() as u64)
    }
}

fn backend_server(port: u16, tls: bool) -> String {
    let listen = if tls {
        format!("listen 127.0.0.1:{port} ssl;\n        ssl_certificate server.crt;\n        ssl_certificate_key server.key;")
    } else {
        format!("listen 127.0.0.1:{port};")
    };
    format!(
        r#"    server {{
        {listen}
        location / {{ return 200 "ok\n"; }}
        location /healthz {{ access_log logs/probes.log; return 200; }}
        location /readyz {{ access_log logs/probes.log; return 200; }}
    }}
"#
    )
}

// ---------------------------------------------------------------------------------------------
// Load generator: closed loop, HTTP/1.1 keep-alive, one request in flight per connection
// ---------------------------------------------------------------------------------------------

/// The result of one measured run.
struct Stats {
    /// Complete 200 responses per second of the measured window.
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Complete 200 responses in the measured window.
    ok: u64,
    /// Other statuses, I/O errors and unparsable responses in the measured window.
    failed: u64,
    /// The front nginx's workers' user plus system CPU per complete response, in the measured
    /// window: steadier than requests per second when the load generator and the backends
    /// share the machine's cores with the server.
    cpu_us_per_request: f64,
}

/// What one client thread saw inside the measured window.
#[derive(Default)]
struct ClientResult {
    latencies_us: Vec<u32>,
    failed: u64,
}

/// Drives `CONNECTIONS` connections for `WARMUP + MEASURE` and counts what completed inside
/// the measured window (requests sent during warm-up are not counted even if they end after),
/// and the CPU time `workers` spent in it.
fn run_load(port: u16, path: &str, workers: &[u32]) -> Stats {
    let measure_from = Instant::now() + WARMUP;
    let until = measure_from + MEASURE;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let request = request.clone();
            thread::spawn(move || client(port, &request, measure_from, until))
        })
        .collect();
    thread::sleep(measure_from.saturating_duration_since(Instant::now()));
    let cpu_from = e2e::process::total_usage(workers).cpu_seconds;
    thread::sleep(until.saturating_duration_since(Instant::now()));
    let cpu = e2e::process::total_usage(workers).cpu_seconds - cpu_from;
    let mut latencies = Vec::new();
    let mut failed = 0;
    for t in threads {
        let r = t.join().expect("client thread");
        latencies.extend(r.latencies_us);
        failed += r.failed;
    }
    latencies.sort_unstable();
    Stats {
        rps: latencies.len() as f64 / MEASURE.as_secs_f64(),
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        ok: latencies.len() as u64,
        failed,
        cpu_us_per_request: cpu * 1e6 / latencies.len().max(1) as f64,
    }
}

fn percentile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() - 1) as f64 * q).round() as usize;
    sorted_us[i] as f64 / 1000.0
}

/// One connection's loop: send, read the whole response, repeat; reconnect when the server
/// closes (nginx does after `keepalive_requests`) or on an error.
fn client(port: u16, request: &str, measure_from: Instant, until: Instant) -> ClientResult {
    let mut result = ClientResult::default();
    let mut conn: Option<Conn> = None;
    for _ in 0..MAX_REQUESTS {
        if Instant::now() >= until {
            break;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(port) {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    result.failed += u64::from(Instant::now() >= measure_from);
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        let sent = Instant::now();
        let outcome = c.exchange(request.as_bytes());
        let done = Instant::now();
        let counted = sent >= measure_from && done <= until;
        match outcome {
            Ok(r) => {
                if counted && r.status == 200 {
                    result.latencies_us.push(done.duration_since(sent).as_micros().min(u32::MAX as u128) as u32);
                } else if counted {
                    result.failed += 1;
                }
                if r.close {
                    conn = None;
                }
            }
            Err(_) => {
                result.failed += u64::from(counted);
                conn = None;
            }
        }
    }
    result
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

struct Reply {
    status: u16,
    /// The server said `Connection: close`.
    close: bool,
}

impl Conn {
    fn open(port: u16) -> io::Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn { stream, buf: Vec::with_capacity(4096) })
    }

    /// Sends `request` and reads one response with a Content-Length body (what nginx sends for
    /// a proxied `return 200 "ok\n"`); anything else is an error.
    fn exchange(&mut self, request: &[u8]) -> io::Result<Reply> {
        self.stream.write_all(request)?;
        self.buf.clear();
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill()?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| bad("non-UTF-8 head"))?;
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("no status"))?;
        let header =
            |name: &str| head.lines().filter_map(|l| l.split_once(':')).find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_ascii_lowercase());
        let length: usize = header("content-length").and_then(|v| v.parse().ok()).ok_or_else(|| bad("no Content-Length"))?;
        let close = header("connection").is_some_and(|v| v == "close");
        while self.buf.len() < head_end + length {
            self.fill()?;
        }
        Ok(Reply { status, close })
    }

    /// Appends what the socket has to `buf`; EOF is an error (the response is incomplete).
    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("connection closed mid-response"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg").map_or_else(|_| "unknown".into(), |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Rows come in pairs (with, without); the change column compares each "with" to its "without".
fn print_table(rows: &[Row]) {
    println!(
        "\n| feature | strategy | variant | req/s (median) | req/s per run | change vs without | worker CPU µs/req (median) | CPU change vs without | p50 ms | p99 ms | failed | probes |"
    );
    println!("|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for pair in rows.chunks(2) {
        let rps = |row: &Row| median(row.runs.iter().map(|s| s.rps).collect());
        let cpu = |row: &Row| median(row.runs.iter().map(|s| s.cpu_us_per_request).collect());
        for row in pair {
            let per_run: Vec<String> = row.runs.iter().map(|s| format!("{:.0}", s.rps)).collect();
            let change = |figure: &dyn Fn(&Row) -> f64| {
                if std::ptr::eq(row, &pair[1]) {
                    String::new()
                } else {
                    format!("{:+.1} %", (figure(row) / figure(&pair[1]) - 1.0) * 100.0)
                }
            };
            println!(
                "| {} | {} | {} | {:.0} | {} | {} | {:.1} | {} | {:.3} | {:.3} | {} | {} |",
                row.feature,
                row.strategy.name(),
                row.variant,
                rps(row),
                per_run.join(", "),
                change(&rps),
                cpu(row),
                change(&cpu),
                median(row.runs.iter().map(|s| s.p50_ms).collect()),
                median(row.runs.iter().map(|s| s.p99_ms).collect()),
                row.runs.iter().map(|s| s.failed).sum::<u64>(),
                row.probes,
            );
        }
    }
}
