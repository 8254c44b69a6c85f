//! The OCI images `dist` writes, read by real tools: `skopeo` inspects them, `skopeo copy` and
//! `umoci unpack` unpack them, and the unpacked root filesystem runs the image's own
//! entrypoint in a chroot inside new mount and PID namespaces (`unshare -m -p -f`), the way a
//! container runtime would, without one.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use e2e::{free_port, http, temp_dir, Strategy};
use serde_json::Value;

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

fn image(strategy: Strategy) -> &'static pipeline::oci::Image {
    e2e::dist().image(strategy)
}

fn oci_archive(strategy: Strategy) -> String {
    format!("oci-archive:{}", image(strategy).archive.display())
}

#[test]
fn skopeo_inspect_shows_the_digest_labels_entrypoint_and_stop_signal() {
    let sums = fs::read_to_string(&e2e::dist().sha256sums).unwrap();
    let mut base_layers = Vec::new();
    for strategy in Strategy::ALL {
        let image = image(strategy);
        let name = image.archive.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name, format!("static-nginx-{}-{}-x86_64-linux-musl.oci.tar", env!("CARGO_PKG_VERSION"), strategy.name()));
        assert!(sums.contains(&format!("{}  {name}", pipeline::dist::sha256_file(&image.archive).unwrap())), "{sums}");

        let text = run("skopeo", &["inspect", &oci_archive(strategy)]);
        println!("skopeo inspect {name}:\n{text}");
        let inspect = json(&text);
        assert_eq!(inspect["Digest"], image.digest.as_str(), "{strategy:?}");
        assert_eq!(inspect["Created"], "2023-11-14T22:13:20Z");
        assert_eq!((inspect["Architecture"].as_str(), inspect["Os"].as_str()), (Some("amd64"), Some("linux")));
        let labels = &inspect["Labels"];
        assert_eq!(labels["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(labels["org.opencontainers.image.created"], "2023-11-14T22:13:20Z");
        let licenses = labels["org.opencontainers.image.licenses"].as_str().unwrap();
        for license in ["BSD-2-Clause", "Apache-2.0", "MIT"] {
            assert!(licenses.split(" AND ").any(|l| l == license), "{license} in {licenses}");
        }
        assert!(labels["org.opencontainers.image.source"].is_string(), "{labels}");
        let layers = inspect["Layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2, "a base layer and the bundle");
        base_layers.push(layers[0].clone());

        let config = json(&run("skopeo", &["inspect", "--config", &oci_archive(strategy)]));
        let config = &config["config"];
        let strings = |v: &Value| v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect::<Vec<_>>();
        assert_eq!(strings(&config["Entrypoint"]), ["/opt/static-nginx/sbin/nginx", "-p", "/opt/static-nginx/", "-e", "stderr", "-g", "daemon off;"]);
        assert_eq!(strings(&config["Cmd"]), ["-c", "conf/nginx.conf"]);
        assert_eq!(config["StopSignal"], "SIGQUIT");
        assert!(config["ExposedPorts"].get("8080/tcp").is_some(), "{config}");
    }
    assert_eq!(base_layers[0], base_layers[1], "both images share the base layer");
}

/// The image's root filesystem, unpacked by `skopeo copy` and `umoci unpack`, and the process
/// of umoci's runtime configuration (the image's entrypoint and cmd).
struct Unpacked {
    _tmp: tempfile::TempDir,
    rootfs: PathBuf,
    args: Vec<String>,
}

fn unpack(strategy: Strategy) -> Unpacked {
    let tmp = temp_dir(&format!("oci-{}", strategy.name()));
    let layout = tmp.path().join("layout");
    run("skopeo", &["copy", "--quiet", &oci_archive(strategy), &format!("oci:{}:test", layout.display())]);
    let bundle = tmp.path().join("bundle");
    run("umoci", &["unpack", "--image", &format!("{}:test", layout.display()), &bundle.display().to_string()]);
    let config = json(&fs::read_to_string(bundle.join("config.json")).unwrap());
    assert_eq!(config["process"]["cwd"], "/opt/static-nginx");
    let args = config["process"]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect();
    Unpacked { rootfs: bundle.join("rootfs"), args, _tmp: tmp }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// The image's entrypoint in a chroot inside new mount and PID namespaces; killed (and with
/// it, through `--kill-child`, nginx with SIGQUIT) when dropped.
struct Container {
    unshare: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Container {
    fn start(rootfs: &Path, args: &[String], logs: &Path) -> Container {
        // What a runtime provides: /proc and the standard streams under /dev.
        fs::create_dir_all(rootfs.join("proc")).unwrap();
        fs::create_dir_all(rootfs.join("dev")).unwrap();
        symlink("/proc/self/fd/1", rootfs.join("dev/stdout")).unwrap();
        symlink("/proc/self/fd/2", rootfs.join("dev/stderr")).unwrap();
        let (stdout, stderr) = (logs.join("stdout"), logs.join("stderr"));
        let unshare = Command::new("unshare")
            .args(["-m", "-p", "-f", "--kill-child=SIGQUIT"])
            .arg(format!("--mount-proc={}", rootfs.join("proc").display()))
            .arg("chroot")
            .arg(rootfs)
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("run unshare (util-linux)");
        Container { unshare, stdout, stderr }
    }

    fn output(&self) -> (String, String) {
        (fs::read_to_string(&self.stdout).unwrap_or_default(), fs::read_to_string(&self.stderr).unwrap_or_default())
    }

    fn wait_for_port(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = self.unshare.try_wait().unwrap() {
                panic!("the container exited with {status}: {:?}", self.output());
            }
            assert!(Instant::now() < deadline, "nothing listens on 127.0.0.1:{port} after 15 s: {:?}", self.output());
            sleep(Duration::from_millis(20));
        }
    }

    /// Stops it as a runtime would, with the image's stop signal, and waits until the port is
    /// closed.
    fn stop(mut self, port: u16) {
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(Instant::now() < deadline, "nginx still listens 15 s after SIGQUIT");
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

#[test]
fn unpacked_images_run_their_entrypoint_in_a_chroot_and_serve_lua() {
    for strategy in Strategy::ALL {
        let image = unpack(strategy);
        let root = &image.rootfs;
        let prefix = root.join("opt/static-nginx");

        let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
        let group = fs::read_to_string(root.join("etc/group")).unwrap();
        assert!(passwd.lines().any(|l| l.starts_with("nobody:x:65534:65534:")), "{passwd}");
        assert!(group.lines().any(|l| l.starts_with("nogroup:x:65534:")), "{group}");
        let ca = fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
        assert!(ca.matches("-----BEGIN CERTIFICATE-----").count() > 100, "the Mozilla CA set");
        assert_eq!(ca.matches("-----BEGIN CERTIFICATE-----").count(), ca.matches("-----END CERTIFICATE-----").count());
        assert_eq!(fs::metadata(root.join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);
        assert_eq!(fs::read_link(prefix.join("logs/access.log")).unwrap(), Path::new("/dev/stdout"));
        assert_eq!(fs::read_link(prefix.join("logs/error.log")).unwrap(), Path::new("/dev/stderr"));

        let mut files = Vec::new();
        files_under(root, &mut files);
        let lua: Vec<_> = files.iter().filter(|p| p.extension().is_some_and(|e| e == "lua")).collect();
        match strategy {
            Strategy::Embed => assert!(lua.is_empty(), "the embed image holds no .lua file: {lua:?}"),
            Strategy::Lualib => assert!(prefix.join("lualib/resty/core.lua").is_file() && prefix.join("lualib/resty/upstream/healthcheck.lua").is_file()),
        }
        assert!(prefix.join("SBOM.spdx.json").is_file() && prefix.join("PROVENANCE.toml").is_file());

        // The image's own conf/nginx.conf, on a free loopback port, with a location that
        // requires resty.core, shows the workers' user and loads the CA bundle for `lua_ssl`.
        let port = free_port();
        let conf_path = prefix.join("conf/nginx.conf");
        let conf = fs::read_to_string(&conf_path).unwrap();
        assert_eq!(conf.matches("listen 8080;").count(), 1);
        let location = r#"
        location /core {
            content_by_lua_block {
                local core = require "resty.core"
                local status = io.open("/proc/self/status"):read("*a")
                ngx.say(type(core), " ", package.loaded["resty.core.base"] ~= nil, " uid=", status:match("Uid:%s+(%d+)"), " gid=", status:match("Gid:%s+(%d+)"))
            }
        }
        location / {"#;
        let conf = conf
            .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"))
            .replacen("    server {", "    lua_ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt;\n    lua_ssl_verify_depth 3;\n\n    server {", 1)
            .replacen("location / {", location, 1);
        fs::write(&conf_path, conf).unwrap();

        let logs = temp_dir("container-logs");
        let mut container = Container::start(root, &image.args, logs.path());
        container.wait_for_port(port);
        let home = http::get(port, "/");
        assert_eq!(home.status, 200, "{strategy:?}: {:?}", container.output());
        assert!(home.body.starts_with(&format!("static-nginx ({}) nginx/1.22.1 LuaJIT", strategy.name())), "{}", home.body);
        let core = http::get(port, "/core");
        assert_eq!(core.status, 200, "{:?}", container.output());
        assert_eq!(core.body, "table true uid=65534 gid=65534\n", "{strategy:?}: workers run as nobody:nogroup");
        container.stop(port);
        let (stdout, stderr) = (fs::read_to_string(logs.path().join("stdout")).unwrap(), fs::read_to_string(logs.path().join("stderr")).unwrap());
        assert!(stdout.contains("\"GET /core HTTP/1.1\" 200"), "the access log goes to stdout: {stdout:?}");
        assert!(!stderr.contains("[emerg]") && !stderr.contains("[error]"), "{stderr}");
    }
}
