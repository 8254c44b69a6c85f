//! Issue: a fully static nginx in both strategies. Every test starts the real binary from an
//! unpacked bundle in a temporary directory and talks to it on 127.0.0.1.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use e2e::{free_port, http, temp_dir, unpack_bundle, Nginx, Strategy};

/// A one-shot TCP backend for cosocket tests: answers each line with "echo:<line>".
fn echo_backend() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 256];
            let n = stream.read(&mut buf).unwrap_or(0);
            let line = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
            let _ = stream.write_all(format!("echo:{line}\n").as_bytes());
        }
    });
    port
}

fn lua_conf(port: u16, backend: u16, strategy: Strategy) -> String {
    let path = if strategy == Strategy::Lualib { pipeline::dist::LUA_PACKAGE_PATH } else { "" };
    format!(
        r#"
worker_processes 2;
error_log logs/error.log info;
pid logs/nginx.pid;
events {{ worker_connections 256; }}
http {{
    {path}
    lua_shared_dict cache 1m;
    server {{
        listen 127.0.0.1:{port};
        location /lua {{
            default_type text/plain;
            content_by_lua_block {{
                local m = ngx.re.match("static-nginx-42", [[(\w+)-(\w+)-(\d+)]], "jo")
                ngx.shared.cache:set("answer", tonumber(m[3]))
                local sock = ngx.socket.tcp()
                sock:settimeout(2000)
                assert(sock:connect("127.0.0.1", {backend}))
                sock:send("ping\n")
                local line = sock:receive("*l")
                sock:close()
                local ffi = require "ffi"
                ffi.cdef[[int getpid(void);]]
                local core = require "resty.core"
                ngx.say(m[2], " ", ngx.shared.cache:get("answer"), " ", line, " pid=", tonumber(ffi.C.getpid()) == ngx.worker.pid(),
                        " core=", type(core), " ", package.loaded["resty.core.base"] ~= nil)
            }}
        }}
    }}
}}
"#
    )
}

fn lua_files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(lua_files_under(&p));
        } else if p.extension().is_some_and(|e| e == "lua") {
            out.push(p.display().to_string());
        }
    }
    out
}

#[test]
fn both_bundles_serve_lua_with_regex_shared_dict_cosocket_and_ffi() {
    for strategy in Strategy::ALL {
        let tmp = temp_dir(strategy.name());
        let root = unpack_bundle(strategy, tmp.path());
        let lua_files = lua_files_under(&root);
        match strategy {
            Strategy::Embed => assert!(lua_files.is_empty(), "the embed bundle ships no .lua file: {lua_files:?}"),
            Strategy::Lualib => {
                for f in ["lualib/resty/core.lua", "lualib/resty/core/base.lua", "lualib/resty/lrucache.lua", "lualib/resty/upstream/healthcheck.lua"] {
                    assert!(root.join(f).is_file(), "{f} in the lualib bundle");
                }
            }
        }
        let (port, backend) = (free_port(), echo_backend());
        let nginx = Nginx::start(&root, &lua_conf(port, backend, strategy), &[port]);
        let response = http::get(port, "/lua");
        assert_eq!(response.status, 200, "{strategy:?}: {}\n{}", response.body, nginx.error_log());
        assert_eq!(response.body, "nginx 42 echo:ping pid=true core=table true\n", "{strategy:?}");
        assert!(!nginx.error_log().contains("[error]"), "{}", nginx.error_log());
        assert!(nginx.quit().success());
    }
}

#[test]
fn embed_bundle_requires_every_module_with_no_lua_directory_anywhere() {
    let tmp = temp_dir("embed-modules");
    let root = unpack_bundle(Strategy::Embed, tmp.path());
    let port = free_port();
    let modules: Vec<String> = e2e::dist().lua_modules.iter().map(|m| format!("{:?}", m.name)).collect();
    assert!(modules.iter().any(|m| m == "\"resty.upstream.healthcheck\"") && modules.iter().any(|m| m == "\"resty.lrucache\""));
    let conf = format!(
        r#"
error_log logs/error.log;
events {{ }}
http {{
    lua_package_path "/nonexistent/?.lua";
    server {{
        listen 127.0.0.1:{port};
        location / {{
            content_by_lua_block {{
                local loaded = 0
                for _, name in ipairs({{ {list} }}) do
                    assert(require(name), name)
                    loaded = loaded + 1
                end
                ngx.say(loaded, " ", package.path)
            }}
        }}
    }}
}}
"#,
        list = modules.join(", ")
    );
    let nginx = Nginx::start(&root, &conf, &[port]);
    let response = http::get(port, "/");
    assert_eq!(response.status, 200, "{}", nginx.error_log());
    assert_eq!(response.body, format!("{} /nonexistent/?.lua\n", modules.len()));
}

#[test]
fn lualib_bundle_runs_after_being_moved_and_its_default_conf_starts_as_is() {
    let tmp = temp_dir("moved");
    let root = unpack_bundle(Strategy::Lualib, tmp.path());
    let moved = tmp.path().join("somewhere/else/bundle");
    fs::create_dir_all(moved.parent().unwrap()).unwrap();
    fs::rename(&root, &moved).unwrap();
    let (port, backend) = (free_port(), echo_backend());
    let nginx = Nginx::start(&moved, &lua_conf(port, backend, Strategy::Lualib), &[port]);
    assert_eq!(http::get(port, "/lua").status, 200, "{}", nginx.error_log());
    drop(nginx);

    // conf/nginx.conf exactly as shipped (it listens on 8080).
    let status = Command::new(moved.join("sbin/nginx")).arg("-p").arg(&moved).arg("-t").output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let conf = fs::read_to_string(moved.join("conf/nginx.conf")).unwrap();
    if TcpListener::bind("0.0.0.0:8080").is_ok() {
        let nginx = Nginx::start(&moved, &conf, &[8080]);
        let response = http::get(8080, "/");
        assert!(response.body.contains("(lualib) nginx/1.22.1"), "{}", response.body);
        drop(nginx);
    }
}

#[test]
fn https_server_with_a_test_certificate_answers() {
    let ca = e2e::backend::TestCa::new();
    for strategy in Strategy::ALL {
        let tmp = temp_dir("https");
        let root = unpack_bundle(strategy, tmp.path());
        e2e::tls::write_server_files(&ca, &root.join("conf"), &["localhost"]);
        let port = free_port();
        let path = if strategy == Strategy::Lualib { pipeline::dist::LUA_PACKAGE_PATH } else { "" };
        let conf = format!(
            r#"
error_log logs/error.log;
events {{ }}
http {{
    {path}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate server.crt;
        ssl_certificate_key server.key;
        location / {{ return 200 "tls $ssl_protocol\n"; }}
    }}
}}
"#
        );
        let nginx = Nginx::start(&root, &conf, &[port]);
        let body = e2e::tls::https_get(port, "localhost", &ca, "/");
        assert!(body.contains("tls TLSv1.3"), "{strategy:?}: {body}\n{}", nginx.error_log());
    }
}

#[test]
fn reload_and_quit_work() {
    let tmp = temp_dir("reload");
    let root = unpack_bundle(Strategy::Embed, tmp.path());
    let port = free_port();
    let conf = |body: &str| {
        format!("error_log logs/error.log;\nworker_processes 2;\nevents {{ }}\nhttp {{ server {{ listen 127.0.0.1:{port}; location / {{ content_by_lua_block {{ ngx.say(\"{body}\") }} }} }} }}\n")
    };
    let mut nginx = Nginx::start(&root, &conf("one"), &[port]);
    assert_eq!(http::get(port, "/").body, "one\n");
    nginx.reload(&conf("two"));
    assert_eq!(http::get(port, "/").body, "two\n");
    assert!(nginx.quit().success());
    assert!(http::try_request(port, "GET", "/", &[]).is_err(), "nothing listens after quit");
}

fn readelf(binary: &Path, flag: &str) -> String {
    let out = Command::new("readelf").arg(flag).arg("-W").arg(binary).output().expect("readelf (binutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn binaries_are_static_pie_and_hardened() {
    for strategy in Strategy::ALL {
        let tmp = temp_dir("elf");
        let binary = unpack_bundle(strategy, tmp.path()).join("sbin/nginx");
        let header = readelf(&binary, "-h");
        assert!(header.contains("DYN (Position-Independent Executable file)"), "{strategy:?}: PIE\n{header}");
        let segments = readelf(&binary, "-l");
        assert!(!segments.contains("INTERP"), "{strategy:?}: no program interpreter");
        assert!(segments.contains("GNU_RELRO"), "{strategy:?}: RELRO");
        let stack = segments.lines().find(|l| l.contains("GNU_STACK")).expect("GNU_STACK");
        assert!(!stack.contains("RWE"), "{strategy:?}: non-executable stack: {stack}");
        let dynamic = readelf(&binary, "-d");
        assert!(!dynamic.contains("(NEEDED)"), "{strategy:?}: no DT_NEEDED\n{dynamic}");
        assert!(dynamic.contains("BIND_NOW") || dynamic.contains("FLAGS_1") && dynamic.contains("NOW"), "{strategy:?}: full RELRO (BIND_NOW)\n{dynamic}");
        let symbols = readelf(&binary, "--dyn-syms");
        assert!(symbols.contains("__stack_chk_fail"), "{strategy:?}: stack protector");
        assert!(symbols.contains("ngx_http_lua_ffi_var_get"), "{strategy:?}: exported for ffi.C");
        assert_eq!(symbols.contains("luaJIT_BC_resty_core"), strategy == Strategy::Embed, "{strategy:?}: embedded bytecode");
    }
}

#[test]
fn nginx_v_names_no_build_path_and_lists_the_modules() {
    let tmp = temp_dir("v");
    let root = unpack_bundle(Strategy::Embed, tmp.path());
    let out = Command::new(root.join("sbin/nginx")).arg("-V").output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let project = pipeline::Project::from_checkout().unwrap();
    for leak in [project.root.display().to_string(), project.store.root().display().to_string(), "/build".into(), "/tmp/".into()] {
        assert!(!text.contains(&leak), "nginx -V shows {leak:?}:\n{text}");
    }
    for module in
        ["--with-http_ssl_module", "--with-http_v2_module", "--with-http_realip_module", "--with-http_stub_status_module", "lua-nginx-module", "ngx_devel_kit"]
    {
        assert!(text.contains(module), "{module} in\n{text}");
    }
}

#[test]
fn bundles_are_named_summed_and_carry_provenance_and_examples() {
    let dist = e2e::dist();
    let sums = fs::read_to_string(&dist.sha256sums).unwrap();
    for strategy in Strategy::ALL {
        let bundle = dist.bundle(strategy);
        let name = bundle.tarball.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name, format!("static-nginx-{}-{}-x86_64-linux-musl.tar.gz", env!("CARGO_PKG_VERSION"), strategy.name()));
        assert!(sums.contains(&format!("{}  {name}", pipeline::dist::sha256_file(&bundle.tarball).unwrap())), "{sums}");
        let tmp = temp_dir("contents");
        let root = unpack_bundle(strategy, tmp.path());
        let provenance = fs::read_to_string(root.join("PROVENANCE.toml")).unwrap();
        for needle in ["name = \"nginx\"", "tree = \"blake3:", "--with-http_ssl_module", "gcc = "] {
            assert!(provenance.contains(needle), "{needle} in\n{provenance}");
        }
        // Where a source came from differs between machines: it is recorded beside the
        // tarballs, never inside them.
        assert!(!provenance.contains("mirror") && !provenance.contains("source package"), "{provenance}");
        let origins = fs::read_to_string(dist.sha256sums.with_file_name(pipeline::dist::ORIGINS_FILE)).unwrap();
        assert!(origins.contains("[nginx]") && origins.contains("origin = "), "{origins}");
        assert!(!sums.contains(pipeline::dist::ORIGINS_FILE), "{sums}");
        for f in ["conf/examples/embed-healthcheck.conf", "conf/examples/lualib-comprehensive.conf", "conf/mime.types", "logs"] {
            assert!(root.join(f).exists(), "{f}");
        }
        // Deterministic archive metadata: owner 0 and the fixed mtime on every entry.
        let listing = Command::new("tar").args(["--numeric-owner", "-tvzf"]).arg(&bundle.tarball).output().unwrap();
        for line in String::from_utf8_lossy(&listing.stdout).lines() {
            assert!(line.contains(" 0/0 ") && line.contains("2023-11-14"), "{line}");
        }
    }
}

#[test]
fn a_second_dist_builds_nothing() {
    let project = pipeline::Project::from_checkout().unwrap();
    e2e::dist();
    let again =
        pipeline::dist::build(&project, &pipeline::dist::Options { offline: true, out_dir: Some(temp_dir("again").keep()), ..Default::default() }).unwrap();
    let built: Vec<_> = again.steps.iter().filter(|s| s.built).map(|s| s.name.clone()).collect();
    assert!(built.is_empty(), "rebuilt {built:?}");
}

#[test]
fn two_dists_at_once_both_succeed_and_build_each_step_once() {
    let first = e2e::dist();
    let here = pipeline::Project::from_checkout().unwrap();
    let tmp = temp_dir("twice");
    // A private store holding (hard links to) the compiled steps, and a checkout whose Lua
    // differs, so both runs below must build the bytecode, the embed link and the bundles.
    let store = tmp.path().join("store");
    fs::create_dir_all(&store).unwrap();
    for step in first.steps.iter().filter(|s| ["toolchain", "luajit", "openssl", "pcre", "nginx"].contains(&s.name.as_str())) {
        let status = Command::new("cp").arg("-al").arg(&step.path).arg(store.join(step.path.file_name().unwrap())).status().unwrap();
        assert!(status.success());
    }
    let checkout = tmp.path().join("checkout");
    here.copy_checkout(&checkout).unwrap();
    let lua = checkout.join("lualib/resty/upstream/healthcheck.lua");
    // Code, not a comment: stripped bytecode does not change with comments.
    let text = format!("local _changed_for_the_concurrent_dist_test = true\n{}", fs::read_to_string(&lua).unwrap());
    fs::write(&lua, text).unwrap();

    let out = tmp.path().join("dist");
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (checkout, store, out) = (checkout.clone(), store.clone(), out.clone());
            std::thread::spawn(move || {
                let project = pipeline::Project::with_store(checkout, store).unwrap();
                pipeline::dist::build(&project, &pipeline::dist::Options { offline: true, out_dir: Some(out), ..Default::default() })
            })
        })
        .collect();
    let results: Vec<_> = runs.into_iter().map(|r| r.join().unwrap().unwrap_or_else(|e| panic!("{e}"))).collect();
    for name in ["lua-bytecode", "nginx-embed", "bundle-embed", "bundle-lualib"] {
        let built = results.iter().filter(|d| d.steps.iter().any(|s| s.name == name && s.built)).count();
        assert_eq!(built, 1, "{name} is built by exactly one of the two runs");
    }
    for name in ["toolchain", "nginx"] {
        assert!(results.iter().all(|d| d.steps.iter().any(|s| s.name == name && !s.built)), "{name} comes from the store");
    }
    let sums = fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    for bundle in &results[0].bundles {
        let name = bundle.tarball.file_name().unwrap().to_string_lossy().into_owned();
        assert!(sums.contains(&format!("{}  {name}", pipeline::dist::sha256_file(&bundle.tarball).unwrap())), "{sums}");
    }
    let changed = fs::read(&results[0].bundle(Strategy::Embed).binary).unwrap() != fs::read(&first.bundle(Strategy::Embed).binary).unwrap();
    assert!(changed, "the changed Lua is embedded");
}
