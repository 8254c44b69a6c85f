//! The static binary (embed bundle) beside Debian 12's own nginx with its lua module, on the
//! same configurations: requests per second and worker CPU per request with wrk, interleaved,
//! medians and the ratio per workload; then callgrind instructions per request for each, the
//! figure that stays stable on a shared, noisy machine. A third front, the static binary with
//! the traffic status zone and two filter keys, runs in the same rounds: what traffic status
//! costs, in req/s, CPU per request and instructions per request.
//!
//! Debian's nginx is never installed: its packages are fetched with `apt-get download` into
//! `target/bench/debian-nginx/` and unpacked with `dpkg-deb -x`, and it runs from there with
//! its own configuration on loopback ports (no system service is started or touched).
//! Upstream peers are a third nginx (the static binary) answering from memory.
//!
//! Writes the table to stdout and as JSON to `target/bench/versus-debian.json`.
//! Run: `cargo xtask bench --load`. `BENCH_SECONDS` (default 10) and `BENCH_ROUNDS` (default 4,
//! even so that ours and Debian each run before the other in half the rounds) shorten a run;
//! `BENCH_CALLGRIND_REQUESTS` (default 400) sets the callgrind batch;
//! `BENCH_BINARY` measures another static nginx (an older build, say) in place of the bundle's.

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use e2e::backend::TestCa;
use e2e::{free_port, temp_dir, tls, unpack_bundle, Strategy};

/// Debian's nginx, its lua module and what they load that a base system lacks.
const DEBIAN_PACKAGES: [&str; 8] = [
    "nginx",
    "libnginx-mod-http-ndk",
    "libnginx-mod-http-lua",
    "lua-resty-core",
    "lua-resty-lrucache",
    "libluajit2-5.1-2",
    "libluajit2-5.1-common",
    "libpcre3",
];
const CONNECTIONS: &str = "32";

/// Where each process runs, so the scheduler cannot move the front nginx between CPUs or put
/// wrk on its CPU in one run and not the next: the measured nginx has a CPU of its own, and
/// the load generator and the upstream peers share the other.
const FRONT_CPU: usize = 0;
const LOAD_CPU: usize = 1;
const TASKSET: &str = "/usr/bin/taskset";
/// A front worker busier than this (percent of its CPU) was the bottleneck of its run.
const SATURATED_PERCENT: f64 = 90.0;

/// One measured workload: the same request against either stack.
struct Workload {
    label: &'static str,
    key: &'static str,
    https: bool,
    path: &'static str,
    /// `Connection: close` on every request: a new client connection (TLS handshake) each time.
    close: bool,
}

const WORKLOADS: [Workload; 5] = [
    Workload { label: "proxy to 2 peers, new upstream connection per request", key: "proxy", https: false, path: "/proxy", close: false },
    Workload { label: "proxy to 2 peers, upstream keepalive", key: "proxy_keepalive", https: false, path: "/proxy-keepalive", close: false },
    Workload { label: "HTTPS keep-alive requests (ECDSA P-256)", key: "https_keepalive", https: true, path: "/", close: false },
    Workload { label: "new TLS connection per request", key: "tls_new_connection", https: true, path: "/", close: true },
    Workload { label: "content_by_lua_block { ngx.say(\"hi\") }", key: "lua_say", https: false, path: "/lua", close: false },
];

/// How to run one nginx build.
#[derive(Clone)]
struct Stack {
    name: &'static str,
    binary: PathBuf,
    env: Vec<(String, String)>,
    /// Main-context lines before `events` (module loading).
    main: String,
    /// http-context lines (where the Lua modules are).
    http: String,
}

fn main() {
    let seconds: u64 = env_number("BENCH_SECONDS", 10);
    let rounds: usize = env_number("BENCH_ROUNDS", 4) as usize;
    let batch: u64 = env_number("BENCH_CALLGRIND_REQUESTS", 400);
    for tool in ["wrk", "curl", "valgrind", "apt-get", "dpkg-deb"] {
        if Command::new("sh").args(["-c", "command -v \"$0\" >/dev/null", tool]).status().map(|s| !s.success()).unwrap_or(true) {
            panic!("the benchmark needs {tool} on PATH (Debian: apt-get install wrk curl valgrind)");
        }
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let debian = debian_nginx(&target.join("debian-nginx"));

    let dir = temp_dir("versus-debian");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let root = unpack_bundle(Strategy::Embed, dir.path());
    if let Ok(other) = std::env::var("BENCH_BINARY") {
        fs::copy(&other, root.join("sbin/nginx")).unwrap_or_else(|e| panic!("BENCH_BINARY={other}: {e}"));
    }
    let ours = Stack { name: "ours (embed)", binary: root.join("sbin/nginx"), env: vec![], main: String::new(), http: String::new() };
    // The traffic status module as a dashboard setup uses it: the zone and two filter keys
    // (one node per URI and one per client address).
    let counted = Stack {
        name: "ours + vts",
        http: "  vhost_traffic_status_zone;\n  vhost_traffic_status_filter_by_set_key $uri uris::*;\n  \
               vhost_traffic_status_filter_by_set_key $remote_addr clients::*;\n"
            .into(),
        ..ours.clone()
    };
    let ca = TestCa::new();
    let tls_dir = dir.path().join("tls");
    fs::create_dir_all(&tls_dir).unwrap();
    tls::write_server_files(&ca, &tls_dir, &["localhost"]);

    // Each stack proxies to its own pair of peers. A new upstream connection per request
    // leaves a TIME_WAIT socket per request on the peer's side of the loopback 4-tuple, and a
    // later connect() to the same peer has to search past them: shared peers would make
    // whichever stack runs second pay for the first one's connections.
    let stacks = [ours, debian, counted];
    let peers: Vec<[u16; 2]> = stacks.iter().map(|_| [free_port(), free_port()]).collect();
    let backend_conf = format!(
        "worker_processes 1;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n{}}}\n",
        peers.iter().flatten().map(|p| format!("  server {{ listen 127.0.0.1:{p} reuseport; location / {{ return 200 \"ok\\n\"; }} }}\n")).collect::<String>()
    );
    let all_peers: Vec<u16> = peers.iter().flatten().copied().collect();
    let _backends = Server::start(&stacks[0], &dir.path().join("backends"), &backend_conf, &all_peers, Duration::from_secs(15), Some(LOAD_CPU));

    println!("# Versus Debian 12's nginx (nginx-extras' lua module), 127.0.0.1\n");
    println!("load average at start: {}", load_average());
    println!("wrk -t1 -c{CONNECTIONS} -d{seconds}s, nginx worker_processes 1, stacks interleaved x{rounds}, medians");
    println!("front nginx on CPU {FRONT_CPU}; wrk and the upstream peers (a pair per stack) on CPU {LOAD_CPU}\n");
    let mut runs: Vec<Vec<Vec<(f64, f64, f64)>>> = vec![vec![Vec::new(); WORKLOADS.len()]; stacks.len()];
    {
        let servers: Vec<(Server, u16, u16)> = stacks
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (http, https) = (free_port(), free_port());
                let conf = front_conf(s, http, https, &peers[i], &tls_dir, false);
                (Server::start(s, &dir.path().join(format!("front-{i}")), &conf, &[http, https], Duration::from_secs(15), Some(FRONT_CPU)), http, https)
            })
            .collect();
        for round in 0..rounds {
            for (w, workload) in WORKLOADS.iter().enumerate() {
                // Alternate the order of ours and Debian, so neither always runs on a warmer
                // machine; ours with traffic status runs first or last, next to ours.
                let order: [usize; 3] = if round % 2 == 0 { [2, 0, 1] } else { [1, 0, 2] };
                for s in order {
                    let (server, http, https) = &servers[s];
                    let port = if workload.https { *https } else { *http };
                    let result = wrk(server, port, workload, seconds);
                    eprintln!(
                        "round {round} {:<14} {:<60} {:>9.0} req/s {:>6.1} µs CPU/req {:>8.1} faults/1k",
                        stacks[s].name, workload.label, result.0, result.1, result.2
                    );
                    runs[s][w].push(result);
                }
            }
        }
    }

    // One nginx under callgrind per stack and workload (`ngx_process_events_and_timers` is
    // exported by both binaries): the total at exit divided by the requests sent is the figure.
    let mut instructions = vec![vec![0f64; WORKLOADS.len()]; stacks.len()];
    for (s, stack) in stacks.iter().enumerate() {
        for (w, workload) in WORKLOADS.iter().enumerate() {
            let prefix = dir.path().join(format!("callgrind-{s}-{w}"));
            instructions[s][w] = instructions_per_request(stack, &prefix, workload, &peers[s], &tls_dir, batch);
            eprintln!("callgrind {:<14} {:<60} {:>9.0} instructions/request", stack.name, workload.label, instructions[s][w]);
        }
    }

    // What the traffic status module costs the static binary, from the same rounds: the zone
    // and two filter keys against no traffic status at all.
    let mut vts_table = String::from(
        "| workload (ours, embed) | req/s without / with traffic status | req/s change | CPU µs/req without / with | CPU change | instructions/req without / with (callgrind) | instructions change |\n|---|---|---|---|---|---|---|\n",
    );
    let mut vts_json = Vec::new();
    for (w, workload) in WORKLOADS.iter().enumerate() {
        let rps = [0, 2].map(|s| median(runs[s][w].iter().map(|r| r.0).collect()));
        let cpu = [0, 2].map(|s| median(runs[s][w].iter().map(|r| r.1).collect()));
        let ins = [instructions[0][w], instructions[2][w]];
        let change = |v: [f64; 2]| (v[1] / v[0] - 1.0) * 100.0;
        let _ = writeln!(
            vts_table,
            "| {} | {:.1}k / {:.1}k | {:+.1} % | {:.1} / {:.1} | {:+.1} % | {:.0} / {:.0} | {:+.1} % |",
            workload.label,
            rps[0] / 1000.0,
            rps[1] / 1000.0,
            change(rps),
            cpu[0],
            cpu[1],
            change(cpu),
            ins[0],
            ins[1],
            change(ins)
        );
        vts_json.push(format!(
            "    {{ \"key\": {:?}, \"without_rps\": {:.0}, \"with_rps\": {:.0}, \"rps_change_percent\": {}, \"without_cpu_us_per_request\": {:.2}, \"with_cpu_us_per_request\": {:.2}, \"cpu_change_percent\": {}, \"without_instructions_per_request\": {}, \"with_instructions_per_request\": {}, \"cost_percent\": {} }}",
            workload.key,
            rps[0],
            rps[1],
            json_number(change(rps), 2),
            cpu[0],
            cpu[1],
            json_number(change(cpu), 2),
            json_number(ins[0], 0),
            json_number(ins[1], 0),
            json_number(change(ins), 2)
        ));
    }

    let mut table = String::new();
    let mut json = String::from("{\n  \"workloads\": [\n");
    let _ = writeln!(table, "| workload | ours req/s | Debian req/s | ratio | CPU µs/req ours / Debian | requests per CPU-second ratio | front CPU busy ours / Debian | minor faults/1k req ours / Debian | instructions/req ours / Debian (callgrind) |");
    let _ = writeln!(table, "|---|---|---|---|---|---|---|---|---|");
    let mut load_bound = Vec::new();
    for (w, workload) in WORKLOADS.iter().enumerate() {
        let rps: Vec<f64> = (0..2).map(|s| median(runs[s][w].iter().map(|r| r.0).collect())).collect();
        let cpu: Vec<f64> = (0..2).map(|s| median(runs[s][w].iter().map(|r| r.1).collect())).collect();
        let faults: Vec<f64> = (0..2).map(|s| median(runs[s][w].iter().map(|r| r.2).collect())).collect();
        let ratio = rps[0] / rps[1];
        // What each nginx serves per second of its own CPU: with wrk on the other CPU, a
        // workload whose client side is the heavier one (a TLS handshake verifies a signature
        // the server only makes) caps both stacks' req/s at the client's speed, and this is
        // the figure that still tells them apart.
        let capacity_ratio = cpu[1] / cpu[0];
        // How much of its CPU the front worker used: below saturation, wrk on the other CPU
        // is the bottleneck and req/s measures the client, for both stacks alike.
        let busy: Vec<f64> = (0..2).map(|s| rps[s] * cpu[s] / 1e4).collect();
        if busy.iter().any(|&b| b < SATURATED_PERCENT) {
            load_bound.push(workload.label);
        }
        let _ = writeln!(
            table,
            "| {} | {:.1}k | {:.1}k | {ratio:.2} | {:.1} / {:.1} | {capacity_ratio:.2} | {:.0} % / {:.0} % | {:.1} / {:.1} | {:.0} / {:.0} |",
            workload.label,
            rps[0] / 1000.0,
            rps[1] / 1000.0,
            cpu[0],
            cpu[1],
            busy[0],
            busy[1],
            faults[0],
            faults[1],
            instructions[0][w],
            instructions[1][w]
        );
        let _ = writeln!(
            json,
            "    {{ \"key\": {:?}, \"label\": {:?}, \"ours_rps\": {:.0}, \"debian_rps\": {:.0}, \"ratio\": {ratio:.3}, \"cpu_capacity_ratio\": {capacity_ratio:.3}, \"ours_front_cpu_busy_percent\": {:.1}, \"debian_front_cpu_busy_percent\": {:.1}, \"ours_cpu_us_per_request\": {:.2}, \"debian_cpu_us_per_request\": {:.2}, \"ours_minor_faults_per_1k\": {:.1}, \"debian_minor_faults_per_1k\": {:.1}, \"ours_instructions_per_request\": {}, \"debian_instructions_per_request\": {}, \"ours_runs_rps\": {:?}, \"debian_runs_rps\": {:?} }}{}",
            workload.key,
            workload.label,
            rps[0],
            rps[1],
            busy[0],
            busy[1],
            cpu[0],
            cpu[1],
            faults[0],
            faults[1],
            json_number(instructions[0][w], 0),
            json_number(instructions[1][w], 0),
            runs[0][w].iter().map(|r| r.0.round()).collect::<Vec<_>>(),
            runs[1][w].iter().map(|r| r.0.round()).collect::<Vec<_>>(),
            if w + 1 < WORKLOADS.len() { "," } else { "" }
        );
    }
    let _ = write!(json, "  ],\n  \"traffic_status_cost\": [\n{}\n", vts_json.join(",\n"));
    let _ = write!(
        json,
        "  ],\n  \"seconds_per_run\": {seconds},\n  \"rounds\": {rounds},\n  \"connections\": {CONNECTIONS},\n  \"callgrind_requests\": {batch}\n}}\n"
    );
    println!("{table}");
    if !load_bound.is_empty() {
        println!(
            "Below {SATURATED_PERCENT:.0} % front CPU, wrk was the bottleneck and the req/s ratio compares the client; requests per CPU-second compares the servers: {}\n",
            load_bound.join("; ")
        );
    }
    println!("{vts_table}");
    println!("load average at end: {}", load_average());
    let json_path = target.join("versus-debian.json");
    fs::write(&json_path, json).unwrap();
    println!("written: {}", json_path.display());
}

/// A JSON number with `decimals` places, or `null` for a figure that was not measured (NaN).
fn json_number(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else {
        "null".into()
    }
}

/// Instructions per request of `stack` under callgrind for `batch` requests of `workload`. It
/// counts only inside the event loop (`ngx_process_events_and_timers`), so start-up and
/// configuration are left out.
fn instructions_per_request(stack: &Stack, prefix: &Path, workload: &Workload, peers: &[u16; 2], tls_dir: &Path, batch: u64) -> f64 {
    let (http, https) = (free_port(), free_port());
    let conf = front_conf(stack, http, https, peers, tls_dir, true);
    // A run that leaves no summary (valgrind killed on a busy machine) is run once more.
    for attempt in 1..=2 {
        let dir = prefix.join(format!("attempt-{attempt}"));
        let server = Server::start_callgrind(stack, &dir, &conf, &[http, https]);
        curl(if workload.https { https } else { http }, workload, batch);
        match server.callgrind_total() {
            Ok(total) => return total / batch as f64,
            Err(e) => eprintln!("callgrind {} {} (attempt {attempt}): {e}", stack.name, workload.label),
        }
    }
    // Reported as not measured (NaN prints as "NaN", JSON gets null) rather than losing the table.
    f64::NAN
}

/// The front configuration: the same for both stacks but for the lines that load Debian's
/// dynamic modules and point its Lua search path at the unpacked packages.
fn front_conf(stack: &Stack, http: u16, https: u16, peers: &[u16; 2], tls_dir: &Path, callgrind: bool) -> String {
    let servers: String = peers.iter().map(|p| format!("    server 127.0.0.1:{p};\n")).collect();
    format!(
        "{main}{single}worker_processes 1;\npid logs/nginx.pid;\nerror_log logs/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n{http_lines}  access_log off;\n  keepalive_requests 1000000;\n\
         client_body_temp_path temp/body;\n  proxy_temp_path temp/proxy;\n  fastcgi_temp_path temp/fastcgi;\n  uwsgi_temp_path temp/uwsgi;\n  scgi_temp_path temp/scgi;\n\
         upstream plain {{\n{servers}  }}\n  upstream pooled {{\n{servers}    keepalive 32;\n  }}\n\
         server {{\n    listen 127.0.0.1:{http};\n\
         location /proxy {{ proxy_pass http://plain/; }}\n\
         location /proxy-keepalive {{ proxy_pass http://pooled/; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n\
         location /lua {{ content_by_lua_block {{ ngx.say(\"hi\") }} }}\n  }}\n\
         server {{\n    listen 127.0.0.1:{https} ssl;\n    ssl_certificate {tls}/server.crt;\n    ssl_certificate_key {tls}/server.key;\n\
         ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_cache off;\n    ssl_session_tickets off;\n\
         location / {{ return 200 \"hi\\n\"; }}\n  }}\n}}\n",
        main = stack.main,
        single = if callgrind { "master_process off;\n" } else { "" },
        http_lines = stack.http,
        tls = tls_dir.display(),
    )
}

/// Debian's nginx unpacked under `cache` (downloaded on first use).
fn debian_nginx(cache: &Path) -> Stack {
    let root = cache.join("root");
    let binary = root.join("usr/sbin/nginx");
    if !binary.exists() {
        let debs = cache.join("debs");
        fs::create_dir_all(&debs).unwrap();
        let status = Command::new("apt-get").arg("download").args(DEBIAN_PACKAGES).current_dir(&debs).status().expect("run apt-get download");
        assert!(status.success(), "apt-get download {} failed in {}", DEBIAN_PACKAGES.join(" "), debs.display());
        for deb in fs::read_dir(&debs).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "deb")) {
            let status = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root).status().expect("run dpkg-deb");
            assert!(status.success(), "dpkg-deb -x {} failed", deb.display());
        }
    }
    let libs = ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"].map(|d| root.join(d).display().to_string()).join(":");
    let modules = root.join("usr/lib/nginx/modules");
    let lua = root.join("usr/share/lua/5.1");
    Stack {
        name: "Debian",
        binary,
        env: vec![("LD_LIBRARY_PATH".into(), libs)],
        main: format!("load_module {}/ndk_http_module.so;\nload_module {}/ngx_http_lua_module.so;\n", modules.display(), modules.display()),
        http: format!("  lua_package_path \"{}/?.lua;;\";\n", lua.display()),
    }
}

/// A running nginx (or nginx under callgrind) with its own prefix, quit when dropped.
struct Server {
    child: Child,
    callgrind_out: Option<PathBuf>,
    ports: Vec<u16>,
}

impl Server {
    /// Starts `stack`, bound to `cpu` when the machine has CPUs to spare (see [`pinned`]).
    fn start(stack: &Stack, prefix: &Path, conf: &str, ports: &[u16], limit: Duration, cpu: Option<usize>) -> Server {
        let mut cmd = pinned(&stack.binary, cpu);
        Server::launch(stack, prefix, conf, ports, limit, &mut cmd, None)
    }

    fn start_callgrind(stack: &Stack, prefix: &Path, conf: &str, ports: &[u16]) -> Server {
        let out = prefix.join("callgrind.out");
        let mut cmd = Command::new("valgrind");
        cmd.args(["--tool=callgrind", "--vgdb=no", "--dump-line=no", "--toggle-collect=ngx_process_events_and_timers"])
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(format!("--log-file={}", prefix.join("valgrind.log").display()))
            .arg(&stack.binary);
        Server::launch(stack, prefix, conf, ports, Duration::from_secs(180), &mut cmd, Some(out))
    }

    fn launch(stack: &Stack, prefix: &Path, conf: &str, ports: &[u16], limit: Duration, cmd: &mut Command, callgrind_out: Option<PathBuf>) -> Server {
        for d in ["conf", "logs", "temp"] {
            fs::create_dir_all(prefix.join(d)).unwrap();
        }
        fs::write(prefix.join("conf/nginx.conf"), conf).unwrap();
        let child = cmd
            .arg("-p")
            .arg(prefix)
            .args(["-c", "conf/nginx.conf", "-e", "logs/error.log", "-g", "daemon off;"])
            .envs(stack.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", stack.binary.display()));
        let mut server = Server { child, callgrind_out, ports: ports.to_vec() };
        let deadline = Instant::now() + limit;
        for &port in ports {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if server.child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                    panic!("{} did not listen on 127.0.0.1:{port}:\n{}", stack.name, fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default());
                }
                sleep(Duration::from_millis(50));
            }
        }
        server
    }

    /// User plus system CPU seconds and minor page faults of the worker (the master's one
    /// child).
    fn worker_usage(&self) -> (f64, f64) {
        let pid = self.child.id();
        let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let worker = children.split_whitespace().next().and_then(|w| w.parse().ok()).unwrap_or(pid);
        let usage = e2e::process::usage(worker);
        (usage.cpu_seconds, usage.minor_faults)
    }

    /// Quits the server under callgrind and returns the instructions it counted, or why there
    /// is no count (with the end of valgrind's own log).
    fn callgrind_total(mut self) -> Result<f64, String> {
        let out = self.callgrind_out.take().expect("a server under callgrind");
        // Under valgrind the quit signal can land while the event loop sleeps in epoll_wait
        // with nothing to wake it (no connection, no timer): a connection to a listening port
        // makes it run once more and act on the signal.
        let _ = Command::new("kill").args(["-QUIT", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            for &port in &self.ports {
                let _ = TcpStream::connect_timeout(&std::net::SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200));
            }
            sleep(Duration::from_millis(500));
        }
        quit(&mut self.child, Duration::from_secs(5));
        let log = fs::read_to_string(out.with_file_name("valgrind.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(8).collect();
        let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        let text = fs::read_to_string(&out).map_err(|e| format!("callgrind wrote no {}: {e}\n{tail}", out.display()))?;
        text.lines()
            .find_map(|l| l.strip_prefix("summary: ").or_else(|| l.strip_prefix("totals: ")))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("no callgrind summary in {}\n{tail}", out.display()))
    }
}

/// SIGQUIT (graceful shutdown), then SIGKILL after `limit`.
fn quit(child: &mut Child, limit: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill").args(["-QUIT", &child.id().to_string()]).status();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Server {
    fn drop(&mut self) {
        quit(&mut self.child, Duration::from_secs(10));
    }
}

/// Exactly `n` requests of `workload` with curl: one connection for all of them, or one each
/// with `Connection: close`.
fn curl(port: u16, workload: &Workload, n: u64) {
    let scheme = if workload.https { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{port}{}", workload.path);
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-k", "--fail", "--max-time", "600"]);
    if workload.close {
        cmd.args(["-H", "Connection: close"]);
    }
    for _ in 0..n {
        cmd.arg("-o").arg("/dev/null").arg(&url);
    }
    let status = cmd.status().expect("run curl");
    assert!(status.success(), "curl {url} x{n} failed");
}

/// Requests per second, the worker's CPU µs per request and its minor page faults per 1,000
/// requests, of one wrk run.
fn wrk(server: &Server, port: u16, workload: &Workload, seconds: u64) -> (f64, f64, f64) {
    let scheme = if workload.https { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{port}{}", workload.path);
    let mut cmd = pinned(Path::new("wrk"), Some(LOAD_CPU));
    cmd.args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{seconds}s")]);
    if workload.close {
        cmd.args(["-H", "Connection: close"]);
    }
    let before = server.worker_usage();
    let out = cmd.arg(&url).output().expect("run wrk");
    let after = server.worker_usage();
    let (cpu, faults) = (after.0 - before.0, after.1 - before.1);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk {url} failed:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    let requests: f64 = text.lines().find_map(|l| l.trim().split_once(" requests in ")).and_then(|(n, _)| n.trim().parse().ok()).unwrap_or(0.0);
    let rps: f64 = text.lines().find_map(|l| l.trim().strip_prefix("Requests/sec:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0);
    if text.contains("Non-2xx") || (text.contains("Socket errors") && !workload.close) {
        eprintln!("wrk {url}:\n{text}");
    }
    if requests > 0.0 {
        (rps, cpu * 1e6 / requests, faults * 1000.0 / requests)
    } else {
        (rps, 0.0, 0.0)
    }
}

/// `program` to run on CPU `cpu` alone (through util-linux's `taskset`), or unpinned when
/// there is no such CPU or no taskset.
fn pinned(program: &Path, cpu: Option<usize>) -> Command {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    match cpu {
        Some(cpu) if cpu < cpus && cpus > 1 && Path::new(TASKSET).exists() => {
            let mut cmd = Command::new(TASKSET);
            cmd.args(["--cpu-list", &cpu.to_string()]).arg(program);
            cmd
        }
        _ => Command::new(program),
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn load_average() -> String {
    let mut s = String::new();
    let _ = fs::File::open("/proc/loadavg").and_then(|mut f| f.read_to_string(&mut s));
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}
