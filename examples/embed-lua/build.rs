//! Compiles lua/**/*.lua with luabc into a static library (with a preload
//! registration function) and links LuaJIT's static library.

use std::path::PathBuf;

const VARS: &str = "LUABC_LUAJIT (the luajit executable that compiles), LUABC_LUA_PATH (the \
directory holding its jit/bcsave.lua, or a LUA_PATH pattern), LUAJIT_LIB_DIR (holding \
libluajit-5.1.a) and LUAJIT_INC_DIR (holding lua.h); with Debian's luajit and \
libluajit-5.1-dev: LUABC_LUAJIT=/usr/bin/luajit LUABC_LUA_PATH=/usr/share/luajit-2.1.0-beta3 \
LUAJIT_LIB_DIR=/usr/lib/x86_64-linux-gnu LUAJIT_INC_DIR=/usr/include/luajit-2.1";

fn env_path(name: &str) -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed={name}");
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(embedded_lua)");
    let vars = ["LUABC_LUAJIT", "LUABC_LUA_PATH", "LUAJIT_LIB_DIR", "LUAJIT_INC_DIR"].map(env_path);
    // Without a LuaJIT the example still builds (`cargo check --workspace`, rust-analyzer),
    // into a program that says what it needs; asked for explicitly, a bad setting fails.
    let [Some(luajit), Some(lua_path), Some(lib_dir), Some(inc_dir)] = vars else {
        println!("cargo:warning=embed-lua is built without its Lua modules: set {VARS}");
        return;
    };
    if !lib_dir.join("libluajit-5.1.a").is_file() {
        panic!("LUAJIT_LIB_DIR={} has no libluajit-5.1.a. Set {VARS}.", lib_dir.display());
    }
    println!("cargo:rustc-cfg=embedded_lua");

    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    luabc::Build::new()
        .luajit(luajit)
        .lua_path(lua_path)
        .library_root(manifest_dir.join("lua"))
        .strip(false)
        .preload_function("luabc_preload_all")
        .lua_include_dir(inc_dir)
        // A stock LuaJIT (like Debian's) seeds its string hash randomly, so bytecode
        // with table constants may differ between runs. Fine for an example; a
        // reproducible build uses a compiler luajit built with
        // XCFLAGS=-DLUAJIT_SECURITY_PRNG=0 and keeps the default (true).
        .require_deterministic(false)
        .cargo_metadata(true)
        .compile("embedded_lua");

    // LuaJIT after the library that uses it.
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=static=luajit-5.1");
    println!("cargo:rustc-link-lib=dylib=m");
    println!("cargo:rustc-link-lib=dylib=dl");
}
