//! A real 3-node Garage cluster on 127.0.0.1 (replication factor 3), started in a temporary
//! directory and killed on drop, with one bucket and one read-write key.
//!
//! The `garage` binary is found on PATH, in `$GARAGE_BIN`, or in `~/.cargo/bin`
//! (`cargo install garage --locked`); without it the tests fail and say how to get it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BUCKET: &str = "cache";
pub const REGION: &str = "garage";

pub struct Node {
    pub config: PathBuf,
    pub s3_port: u16,
    child: Option<Child>,
}

pub struct Garage {
    pub nodes: Vec<Node>,
    pub access_key: String,
    pub secret_key: String,
    bin: PathBuf,
    _dir: tempfile::TempDir,
}

/// The garage binary, or a panic that says how to install it.
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("GARAGE_BIN").filter(|v| !v.is_empty()) {
        return PathBuf::from(bin);
    }
    if let Ok(bin) = which_garage() {
        return bin;
    }
    panic!(
        "the `garage` binary (an S3-compatible object store) is needed by the remote cache tests and was not found on PATH, in $GARAGE_BIN or in ~/.cargo/bin: install it with `cargo install garage --locked`"
    )
}

fn which_garage() -> Result<PathBuf, ()> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).map(|d| d.join("garage")).collect()).unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/garage"));
    }
    candidates.into_iter().find(|c| c.is_file()).ok_or(())
}

impl Garage {
    pub fn start() -> Garage {
        let bin = binary();
        let dir = crate::temp_dir("garage");
        let secret: String = (0..32).map(|_| format!("{:02x}", rand_byte())).collect();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let root = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&root).unwrap();
            let (rpc, s3, admin) = (crate::free_port(), crate::free_port(), crate::free_port());
            let config = root.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\nreplication_factor = 3\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\n[s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{s3}\"\nroot_domain = \".s3.garage.localhost\"\n\n[admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
                    meta = root.join("meta").display(),
                    data = root.join("data").display(),
                ),
            )
            .unwrap();
            let log = std::fs::File::create(root.join("server.log")).unwrap();
            let child = Command::new(&bin)
                .arg("-c")
                .arg(&config)
                .arg("server")
                .env("RUST_LOG", "garage=warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            nodes.push(Node { config, s3_port: s3, child: Some(child) });
        }
        let mut garage = Garage { nodes, access_key: String::new(), secret_key: String::new(), bin, _dir: dir };
        let ids: Vec<String> = (0..3).map(|i| garage.retry(i, &["node", "id", "-q"]).trim().to_owned()).collect();
        for id in &ids[1..] {
            garage.retry(0, &["node", "connect", id]);
        }
        for id in &ids {
            let short = id.split('@').next().unwrap();
            garage.retry(0, &["layout", "assign", "-z", "dc1", "-c", "1G", short]);
        }
        garage.retry(0, &["layout", "apply", "--version", "1"]);
        garage.retry(0, &["bucket", "create", BUCKET]);
        let created = garage.retry(0, &["key", "create", "cache-key"]);
        let field = |label: &str| {
            created
                .lines()
                .find(|l| l.trim_start().to_lowercase().starts_with(label))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("`garage key create` printed no {label:?} line:\n{created}"))
        };
        garage.access_key = field("key id");
        garage.secret_key = field("secret key");
        garage.retry(0, &["bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "cache-key"]);
        garage.wait_writable();
        garage
    }

    /// Runs `garage` against node `node` until it succeeds (the cluster settles for a few
    /// seconds after start and after a layout change), at most 60 s.
    fn retry(&self, node: usize, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new(&self.bin).arg("-c").arg(&self.nodes[node].config).args(args).output().expect("run garage");
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            if Instant::now() > deadline {
                panic!("`garage {}` kept failing for 60 s:\n{}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Writes and reads back a probe object until the new key and layout are in force.
    fn wait_writable(&self) {
        let client = repro::remote::s3::Client::new(&self.endpoint(0), BUCKET).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match client.put("probe", b"ok").and_then(|()| client.get("probe")) {
                Ok(bytes) if bytes == b"ok" => return,
                other if Instant::now() > deadline => panic!("the Garage cluster never accepted a write: {other:?}"),
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// The S3 endpoint of node `node`, with the read-write key.
    pub fn endpoint(&self, node: usize) -> repro::remote::s3::Endpoint {
        repro::remote::s3::Endpoint {
            url: Some(format!("http://127.0.0.1:{}", self.nodes[node].s3_port)),
            region: REGION.to_owned(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(30),
        }
    }

    /// Kills node `node` (SIGKILL), as a crash would.
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn kill_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn rand_byte() -> u8 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    h.finish() as u8
}
