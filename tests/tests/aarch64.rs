//! The aarch64 bundles, cross-built from the same pins, run under `qemu-aarch64-static` (invoked
//! explicitly: no binfmt handler is registered) on 127.0.0.1. A small subset of what the x86_64
//! suite checks, so that emulation keeps the full test command inside CI's time: the binary's
//! form, the Lua stack, the health checker turning a peer down and up, traffic status counting.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

use e2e::backend::{Backend, Mode};
use e2e::json::Json;
use e2e::{free_port, http, temp_dir, Nginx, Strategy};
use pipeline::dist::{Dist, Options};
use pipeline::Target;

const RUNNER: &str = "qemu-aarch64-static";

/// The dist of every target (`--target all`), built (or found in the store) once per process,
/// in a directory of its own so the x86_64-only dist of the other tests stays as it is.
fn dist() -> &'static Dist {
    static DIST: OnceLock<Dist> = OnceLock::new();
    DIST.get_or_init(|| {
        let project = pipeline::Project::from_checkout().expect("open the project");
        let out_dir = project.root.join("target/e2e-dist-all");
        let options = Options { out_dir: Some(out_dir), targets: Target::ALL.to_vec(), ..Options::default() };
        pipeline::dist::build(&project, &options).unwrap_or_else(|e| panic!("cargo xtask dist --target all failed:\n{e}"))
    })
}

fn bundle(strategy: Strategy) -> &'static pipeline::dist::Bundle {
    dist().bundle_for(Target::Aarch64, strategy).expect("the aarch64 dist has both strategies")
}

/// Unpacks the aarch64 bundle of `strategy` into `dir`, returning its root.
fn unpack(strategy: Strategy, dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    // Workers run as nobody when the tests run as root: the bundle must be readable.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    let tarball = &bundle(strategy).tarball;
    let status = Command::new("tar").arg("-xzf").arg(tarball).arg("-C").arg(dir).status().expect("run tar");
    assert!(status.success(), "tar -xzf {} failed", tarball.display());
    dir.join(pipeline::bundle::name(strategy, Target::Aarch64))
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn both_aarch64_binaries_are_static_pie_without_interpreter_or_libraries() {
    for strategy in Strategy::ALL {
        let binary = &bundle(strategy).binary;
        let out = Command::new("readelf").arg("-hldW").arg(binary).output().expect("run readelf");
        assert!(out.status.success(), "readelf {}: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.lines().any(|l| l.trim() == "Machine:                           AArch64"), "{strategy}: not aarch64:\n{text}");
        assert!(text.contains("DYN (Position-Independent Executable file)"), "{strategy}: not a PIE:\n{text}");
        assert!(!text.contains("INTERP"), "{strategy}: has a program interpreter:\n{text}");
        assert!(!text.contains("(NEEDED)"), "{strategy}: needs shared libraries:\n{text}");
        assert!(text.contains("Flags: NOW PIE"), "{strategy}: not linked static-PIE with BIND_NOW:\n{text}");
        assert!(text.contains("GNU_RELRO"), "{strategy}: no RELRO segment:\n{text}");
    }
}

#[test]
fn the_aarch64_bundles_are_named_summed_and_only_lualib_ships_lua_files() {
    let sums = fs::read_to_string(&dist().sha256sums).unwrap();
    for strategy in Strategy::ALL {
        let b = bundle(strategy);
        let name = b.tarball.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name, format!("static-nginx-{}-{strategy}-aarch64-linux-musl.tar.gz", env!("CARGO_PKG_VERSION")));
        let line = format!("{}  {name}", pipeline::dist::sha256_file(&b.tarball).unwrap());
        assert!(sums.lines().any(|l| l == line), "SHA256SUMS lacks {line:?}:\n{sums}");

        let dir = temp_dir(&format!("aarch64-files-{strategy}"));
        let root = unpack(strategy, dir.path());
        let provenance = fs::read_to_string(root.join("PROVENANCE.toml")).unwrap();
        assert!(provenance.contains("target = \"aarch64-linux-musl\""), "{provenance}");
        assert!(provenance.contains("qemu-aarch64-static"), "the cross tools are recorded:\n{provenance}");
        let mut files = Vec::new();
        files_under(&root, &mut files);
        let lua: Vec<_> = files.iter().filter(|f| f.extension().is_some_and(|e| e == "lua")).collect();
        match strategy {
            Strategy::Embed => assert!(lua.is_empty(), "the embed bundle ships .lua files: {lua:?}"),
            Strategy::Lualib => {
                assert!(root.join("lualib/resty/upstream/healthcheck.lua").is_file() && root.join("lualib/resty/core.lua").is_file(), "{lua:?}")
            }
        }
    }
}

#[test]
fn the_aarch64_sboms_validate_and_relate_the_binary_to_the_arm64_kernel_headers() {
    for sbom in dist().sboms.iter().filter(|s| s.target == Target::Aarch64) {
        let out = Command::new("pyspdxtools").arg("-i").arg(&sbom.path).output().expect("run pyspdxtools (pip install spdx-tools)");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && !text.contains("invalid"), "pyspdxtools -i {}:\n{text}", sbom.path.display());
        let doc = Json::parse(&fs::read_to_string(&sbom.path).unwrap());
        let names: Vec<&str> = doc.get("packages").arr().iter().map(|p| p.get("name").str()).collect();
        assert!(names.contains(&"linux-headers-arm64") && !names.contains(&"linux-headers"), "{names:?}");
        let generated_from = |id: &str| {
            doc.get("relationships").arr().iter().any(|r| {
                r.get("spdxElementId").str() == "SPDXRef-Binary"
                    && r.get("relationshipType").str() == "GENERATED_FROM"
                    && r.get("relatedSpdxElement").str() == id
            })
        };
        assert!(generated_from("SPDXRef-Source-linux-headers-arm64"), "{} {}", sbom.target, sbom.strategy);
    }
}

fn skopeo(args: &[&str]) -> Json {
    let out = Command::new("skopeo").args(args).output().expect("run skopeo (apt-get install skopeo)");
    assert!(out.status.success(), "skopeo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Json::parse(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn the_multi_architecture_image_gives_each_machine_the_manifest_of_its_own_image() {
    let sums = fs::read_to_string(&dist().sha256sums).unwrap();
    for strategy in Strategy::ALL {
        let index = dist().image_indexes.iter().find(|i| i.strategy == strategy).expect("an image index per strategy");
        let name = index.archive.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name, format!("static-nginx-{}-{strategy}.oci.tar", env!("CARGO_PKG_VERSION")));
        assert!(sums.contains(&format!("{}  {name}\n", pipeline::dist::sha256_file(&index.archive).unwrap())), "{sums}");
        let archive = format!("oci-archive:{}", index.archive.display());
        let list = skopeo(&["inspect", "--raw", &archive]);
        assert_eq!(list.get("mediaType").str(), "application/vnd.oci.image.index.v1+json");
        let manifests = list.get("manifests").arr();
        assert_eq!(manifests.len(), Target::ALL.len(), "{list:?}");
        for target in Target::ALL {
            let image = dist().images.iter().find(|i| i.strategy == strategy && i.target == target).unwrap();
            let arch = target.oci_architecture();
            let entry =
                manifests.iter().find(|m| m.get("platform").get("architecture").str() == arch).unwrap_or_else(|| panic!("no {arch} manifest: {list:?}"));
            assert_eq!(entry.get("digest").str(), image.digest, "{strategy} {target}: the same manifest as the single-architecture image");
            let config = skopeo(&["inspect", "--config", "--override-arch", arch, "--override-os", "linux", &archive]);
            assert_eq!(config.get("architecture").str(), arch);

            // What a machine of that architecture pulls: its own nginx.
            let tmp = temp_dir(&format!("aarch64-index-{strategy}-{arch}"));
            let layout = format!("oci:{}:{arch}", tmp.path().join("layout").display());
            let copied = Command::new("skopeo")
                .args(["copy", "--quiet", "--override-arch", arch, "--override-os", "linux", &archive, &layout])
                .status()
                .expect("run skopeo");
            assert!(copied.success(), "skopeo copy --override-arch {arch} {archive}");
            let bundle = tmp.path().join("bundle");
            let unpacked = Command::new("umoci").args(["unpack", "--image", layout.trim_start_matches("oci:")]).arg(&bundle).status().expect("run umoci");
            assert!(unpacked.success(), "umoci unpack {layout}");
            let nginx = fs::read(bundle.join("rootfs/opt/static-nginx/sbin/nginx")).unwrap();
            let machine = u16::from_le_bytes([nginx[18], nginx[19]]);
            assert_eq!(machine, if target == Target::Aarch64 { 183 } else { 62 }, "{strategy} {arch}: the image's sbin/nginx is for EM_AARCH64 or EM_X86_64");
        }
    }
}

#[test]
fn luabc_refuses_x86_64_bytecode_objects_for_the_aarch64_runtime() {
    let luajit = dist().steps.iter().find(|s| s.name == "luajit-aarch64").expect("the aarch64 LuaJIT step");
    let layout = pipeline::luajit::Layout::new(luajit);
    let tmp = temp_dir("aarch64-luabc");
    let source = tmp.path().join("m.lua");
    fs::write(&source, "return { answer = 42 }\n").unwrap();
    let build = |out: &Path| {
        let mut b = luabc::Build::new();
        b.luajit(layout.bytecode_compiler())
            .runner(RUNNER)
            .lua_path(layout.lua_path())
            .runtime_library(layout.lib_dir().join("libluajit-5.1.a"))
            .out_dir(out)
            .module("m", &source);
        b
    };

    let refused = tmp.path().join("refused");
    let err = build(&refused).arch(luabc::Arch::X86_64).try_compile("m").expect_err("x86_64 objects for the aarch64 runtime");
    assert!(matches!(err, luabc::Error::ArchMismatch { objects: luabc::Arch::X86_64, runtime: luabc::Arch::Aarch64, .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("X86_64") && message.contains("Aarch64") && message.contains("libluajit-5.1.a"), "{message}");
    assert!(!refused.join("libm.a").exists(), "nothing is written for a refused build");

    let followed = tmp.path().join("followed");
    let artifacts = build(&followed).try_compile("m").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(artifacts.compiler.arch, "arm64", "the bytecode comes from the aarch64 compiler, run under {RUNNER}");
    let object = fs::read(&artifacts.modules[0].object).unwrap();
    assert_eq!(u16::from_le_bytes([object[18], object[19]]), 183, "the object is for EM_AARCH64");
}

#[test]
fn lua_health_checker_and_traffic_status_work_under_qemu_on_both_bundles() {
    for strategy in Strategy::ALL {
        serves_under_qemu(strategy);
    }
}

fn serves_under_qemu(strategy: Strategy) {
    let (a, b) = (Backend::http("a"), Backend::http("b"));
    let (pa, pb) = (a.port(), b.port());
    let port = free_port();
    let path = match strategy {
        Strategy::Lualib => pipeline::dist::LUA_PACKAGE_PATH,
        Strategy::Embed => "",
    };
    let conf = format!(
        r#"worker_processes 1;
error_log logs/error.log info;
pid logs/nginx.pid;
events {{ worker_connections 128; }}
http {{
    access_log off;
    {path}
    lua_shared_dict healthcheck 1m;
    lua_shared_dict cache 1m;
    vhost_traffic_status_zone;
    upstream foo {{
        server 127.0.0.1:{pa};
        server 127.0.0.1:{pb};
    }}
    init_worker_by_lua_block {{
        local ok, err = require("resty.upstream.healthcheck").spawn_checker({{
            shm = "healthcheck", upstream = "foo", type = "http",
            http_req = "GET /health HTTP/1.0\r\nHost: foo\r\n\r\n",
            interval = 300, timeout = 1000, fall = 2, rise = 2, valid_statuses = {{ 200 }},
        }})
        if not ok then ngx.log(ngx.ERR, "failed to spawn health checker: ", err) end
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name aarch64.test;
        location = /lua {{
            content_by_lua_block {{
                require "resty.core"
                local ffi = require "ffi"
                ffi.cdef[[int getpid(void);]]
                local m = assert(ngx.re.match("ärm 64", [[^(.)rm (\d+)$]], "jou"))
                ngx.shared.cache:set("digits", m[2])
                ngx.say(m[1], " ", ngx.shared.cache:get("digits"), " ", ffi.C.getpid() > 0, " ", jit.arch)
            }}
        }}
        # Lua errors unwind through libgcc, which finds the frames with libstaticpie's
        # _dl_find_object; the mappings show whether relro.o protected the RELRO range.
        location = /runtime {{
            content_by_lua_block {{
                local ok, err = pcall(error, "boom")
                local perms = {{}}
                for line in io.lines("/proc/self/maps") do
                    if line:find("/sbin/nginx", 1, true) then perms[#perms + 1] = line:match("^%S+ (%S+)") end
                end
                ngx.say(tostring(ok), " ", err, " ", table.concat(perms, " "))
            }}
        }}
        location = /foo {{ proxy_pass http://foo; }}
        location = /health {{
            default_type text/plain;
            content_by_lua_block {{ ngx.print(require("resty.upstream.healthcheck").status_page()) }}
        }}
        location = /vts {{
            vhost_traffic_status_bypass_stats on;
            vhost_traffic_status_display;
            vhost_traffic_status_display_format json;
        }}
    }}
}}
"#
    );
    let dir = temp_dir(&format!("aarch64-serve-{strategy}"));
    let prefix = unpack(strategy, dir.path());
    let nginx = Nginx::start_under(RUNNER, &prefix, &conf, &[port]);

    // Every request to the server but /vts (which bypasses the statistics) is counted.
    let sent = std::cell::Cell::new(0u64);
    let get = |path: &str| {
        sent.set(sent.get() + 1);
        http::get(port, path)
    };
    let lua = get("/lua");
    assert_eq!((lua.status, lua.body.as_str()), (200, "ä 64 true arm64\n"), "{strategy}:\n{}", nginx.error_log());

    let runtime = get("/runtime");
    assert_eq!(runtime.body, "false boom r-xp r--p rw-p\n", "{strategy}: an error is caught, and text, RELRO and data are mapped apart");

    let peer_b = format!("127.0.0.1:{pb}");
    let status_has = |line: &str, limit: Duration| {
        let deadline = Instant::now() + limit;
        loop {
            let page = get("/health").body;
            if page.contains(line) {
                return page;
            }
            assert!(
                Instant::now() < deadline,
                "{strategy}: the status page did not show {line:?} within {limit:?} ({} probes of b):\n{page}\n{}",
                b.probes(),
                nginx.error_log()
            );
            sleep(Duration::from_millis(100));
        }
    };
    status_has(&format!("        {peer_b} UP\n"), Duration::from_secs(10));
    b.set_mode(Mode::ERROR);
    status_has(&format!("        {peer_b} DOWN\n"), Duration::from_secs(10));
    assert!(nginx.error_log().contains(&format!("healthcheck: peer {peer_b} is turned down after 2 failure(s)")), "{}", nginx.error_log());
    for _ in 0..4 {
        let r = get("/foo");
        assert_eq!(r.status, 200, "a down peer gets no traffic");
    }
    assert_eq!(b.proxied(), 0, "every proxied request went to a");
    b.set_mode(Mode::OK);
    status_has(&format!("        {peer_b} UP\n"), Duration::from_secs(10));
    assert!(nginx.error_log().contains(&format!("healthcheck: peer {peer_b} is turned up after 2 success(es)")), "{}", nginx.error_log());

    let vts = Json::parse(&http::get(port, "/vts").body);
    let zone = vts.get("serverZones").get("aarch64.test");
    assert_eq!(zone.get("requestCounter").u64(), sent.get(), "{strategy}: every request the test sent is counted");
    assert_eq!(vts.get("upstreamZones").get("foo").arr().len(), 2, "{strategy}: both peers are listed");
    // qemu-user implements no Linux AIO system calls, so the worker's io_setup() fails once at
    // start (nginx then reads files without AIO); nothing else may be that severe.
    let log = nginx.error_log();
    for line in log.lines().filter(|l| !l.contains("io_setup() failed (38: Function not implemented)")) {
        for bad in ["[emerg]", "[alert]", "[crit]", "failed to spawn health checker", "runtime error"] {
            assert!(!line.contains(bad), "{strategy}: {bad} in the error log:\n{log}");
        }
    }
    assert!(nginx.quit().success(), "{strategy}: nginx exits cleanly under {RUNNER}");
}
