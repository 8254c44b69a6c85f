//! The C library's allocator in the static binary is mimalloc (toolchain/allocator/malloc.c),
//! not musl's mallocng: linked in place of every malloc entry point, and the one the serving
//! workers actually allocate through.

use std::process::Command;

use e2e::{dist, free_port, http, temp_dir, unpack_bundle, Nginx, Strategy};

/// The defined (text) symbols of an unstripped binary, by name.
fn text_symbols(binary: &std::path::Path) -> Vec<String> {
    let out = Command::new("nm").arg("--defined-only").arg(binary).output().expect("run nm");
    assert!(out.status.success(), "nm {} failed: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_addr, kind, name) = (f.next()?, f.next()?, f.next()?);
            matches!(kind, "T" | "t" | "W").then(|| name.to_owned())
        })
        .collect()
}

#[test]
fn mimalloc_provides_every_malloc_entry_point_and_mallocng_is_absent() {
    // The compile step keeps the unstripped link of the binary both strategies ship.
    let compiled = dist().steps.iter().find(|s| s.name == "nginx").expect("the nginx compile step");
    let symbols = text_symbols(&compiled.path.join("tree/nginx/objs/nginx"));
    let has = |name: &str| symbols.iter().any(|s| s == name);
    for name in ["mi_malloc", "mi_free", "_mi_process_init"] {
        assert!(has(name), "mimalloc's {name} is not linked into nginx");
    }
    // Every entry point C code (nginx, OpenSSL, PCRE, zlib, musl itself) can allocate through.
    for name in [
        "malloc",
        "free",
        "calloc",
        "realloc",
        "aligned_alloc",
        "posix_memalign",
        "memalign",
        "malloc_usable_size",
        "__libc_malloc",
        "__libc_calloc",
        "__libc_realloc",
        "__libc_free",
    ] {
        assert!(has(name), "{name} is not defined in nginx");
    }
    // mallocng's and musl's bootstrap allocator's own functions: if any member of libc.a's
    // malloc were pulled in, some of these would be there.
    for name in ["__libc_malloc_impl", "__malloc_alloc_meta", "alloc_slot", "__malloc_donate", "__simple_malloc", "default_malloc"] {
        assert!(!has(name), "musl's allocator function {name} is linked into nginx beside mimalloc");
    }
}

#[test]
fn serving_workers_allocate_through_mimalloc() {
    // mimalloc prints its statistics at process exit when this is set; nginx passes it to the
    // workers through `env`, and their stderr is the error log.
    std::env::set_var("MIMALLOC_SHOW_STATS", "1");
    for strategy in Strategy::ALL {
        let dir = temp_dir(&format!("allocator-{}", strategy.name()));
        let root = unpack_bundle(strategy, dir.path());
        let port = free_port();
        let lua_path = pipeline::dist::LUA_PACKAGE_PATH;
        let conf = format!(
            "worker_processes 1;\nenv MIMALLOC_SHOW_STATS;\nerror_log logs/error.log info;\npid logs/nginx.pid;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  {lua_path}\n  access_log off;\n  server {{\n    listen 127.0.0.1:{port};\n\
             location / {{ content_by_lua_block {{ ngx.say(string.rep(\"x\", 100000):len()) }} }}\n  }}\n}}\n"
        );
        let nginx = Nginx::start(&root, &conf, &[port]);
        for _ in 0..50 {
            let r = http::get(port, "/");
            assert_eq!(r.status, 200, "[{}] {}", strategy.name(), nginx.error_log());
            assert_eq!(r.body.trim(), "100000", "[{}]", strategy.name());
        }
        let worker_pids = nginx.worker_pids();
        assert_eq!(worker_pids.len(), 1, "[{}] one worker", strategy.name());
        let status = nginx.quit();
        assert!(status.success(), "[{}] nginx exited with {status}", strategy.name());
        let log = std::fs::read_to_string(root.join("logs/error.log")).unwrap();
        // One report per process: the worker's (the one that served) and the master's.
        let stats = log.matches("heap stats:").count();
        assert!(stats >= 2, "[{}] expected mimalloc's exit statistics from the worker and the master, found {stats}:\n{log}", strategy.name());
        assert!(log.contains("committed:"), "[{}] mimalloc committed no memory:\n{log}", strategy.name());
    }
}

#[test]
fn a_program_without_threads_of_its_own_still_unwinds_and_compiles_traces() {
    // mimalloc links pthread_key_create, which switches libgcc's unwinder to locking; the
    // luajit binary has no threads of its own, and a hot loop (a trace, whose machine code
    // the unwinder registers) plus a caught error both go through that code.
    let layout = pipeline::luajit::Layout::new(&e2e::toolchain().luajit);
    let script = "local s = 0 for i = 1, 100000 do s = s + i % 7 end \
                  local ok, err = pcall(error, 'boom') \
                  io.write(s, ' ', tostring(ok), ' ', err, ' ', tostring(jit.status()), '\\n')";
    let out = Command::new(layout.luajit()).args(["-e", script]).output().expect("run luajit");
    assert!(out.status.success(), "luajit failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "300000 false boom true\n");
}
