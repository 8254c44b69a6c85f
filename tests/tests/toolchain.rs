//! Issue: pinned sources, the store, a static LuaJIT and bytecode. These use the real pinned
//! LuaJIT built by the pipeline.

use std::fs;
use std::path::Path;
use std::process::Command;

use e2e::{temp_dir, toolchain};
use pipeline::luajit::Layout;

fn compile_library(root: &Path, out: &Path, strip: bool) -> luabc::Artifacts {
    let layout = Layout::new(&toolchain().luajit);
    luabc::Build::new()
        .luajit(layout.bytecode_compiler())
        .lua_path(layout.lua_path())
        .library_root(root)
        .strip(strip)
        .out_dir(out)
        .try_objects()
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn resty_core_bytecode_is_identical_when_compiled_in_two_directories() {
    let tc = toolchain();
    let core = tc.sources.get("lua-resty-core").unwrap().path();
    let tmp = temp_dir("bc");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("deeper/checkout/b"));
    for dir in [&a, &b] {
        repro::copy::copy_tree(core, &dir.join("lib")).unwrap();
    }
    for strip in [true, false] {
        let first = compile_library(&a.join("lib"), &a.join(format!("out-{strip}")), strip);
        let second = compile_library(&b.join("lib"), &b.join(format!("out-{strip}")), strip);
        assert!(first.modules.len() > 20, "resty.core has its many modules");
        assert_eq!(first.modules.len(), second.modules.len());
        for (x, y) in first.modules.iter().zip(&second.modules) {
            assert_eq!(x.name, y.name);
            assert_eq!(fs::read(&x.object).unwrap(), fs::read(&y.object).unwrap(), "{} (strip={strip})", x.name);
        }
    }
}

#[test]
fn bytecode_headers_match_the_linked_runtime() {
    let layout = Layout::new(&toolchain().luajit);
    let info = luabc::Luajit::new(layout.luajit()).lua_path(layout.lua_path()).probe().unwrap();
    let compiler = luabc::Luajit::new(layout.bytecode_compiler()).lua_path(layout.lua_path()).probe().unwrap();
    assert_eq!(info.abi, compiler.abi, "the compiler and the runtime agree on the dump format");
    assert!(info.abi.fr2, "x86_64 LuaJIT 2.1 is GC64");
    let tmp = temp_dir("hdr");
    fs::write(tmp.path().join("m.lua"), "return { answer = 42 }\n").unwrap();
    let arts = compile_library(tmp.path(), &tmp.path().join("out"), true);
    let bytes = arts.modules[0].bytecode.clone();
    let header = luabc::BytecodeHeader::parse(&bytes).unwrap();
    info.abi.check(&header).unwrap();
    assert!(header.stripped());
    let other = luabc::RuntimeAbi::new(header.version, !header.fr2());
    let err = other.check(&header).unwrap_err().to_string();
    assert!(err.to_lowercase().contains("gc64") || err.contains("FR2"), "{err}");
}

#[test]
fn a_lua_syntax_error_names_the_file_and_line() {
    let tmp = temp_dir("syntax");
    fs::create_dir_all(tmp.path().join("lib/app")).unwrap();
    fs::write(tmp.path().join("lib/app/broken.lua"), "local x = 1\nlocal y = = 2\n").unwrap();
    let layout = Layout::new(&toolchain().luajit);
    let err = luabc::Build::new()
        .luajit(layout.bytecode_compiler())
        .lua_path(layout.lua_path())
        .library_root(tmp.path().join("lib"))
        .out_dir(tmp.path().join("out"))
        .try_objects()
        .unwrap_err()
        .to_string();
    assert!(err.contains("app/broken.lua") && err.contains(":2"), "{err}");
    assert!(!tmp.path().join("out").read_dir().map(|mut d| d.any(|e| e.unwrap().path().extension().is_some_and(|x| x == "o"))).unwrap_or(false));
}

#[test]
fn a_static_musl_program_requires_an_embedded_module_with_no_lua_file() {
    let tc = toolchain();
    let tmp = temp_dir("static-c");
    fs::create_dir_all(tmp.path().join("lua/greet")).unwrap();
    fs::write(tmp.path().join("lua/greet/hello.lua"), "local M = {}\nfunction M.hi(who) return 'hi ' .. who .. ' from bytecode' end\nreturn M\n").unwrap();
    let arts = compile_library(&tmp.path().join("lua"), &tmp.path().join("objs"), true);
    let object = fs::read(&arts.modules[0].object).unwrap();
    let main = r#"
#include <stdio.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
int main(void) {
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    if (luaL_dostring(L, "package.path = '' return require('greet.hello').hi('static')")) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        return 1;
    }
    puts(lua_tostring(L, -1));
    return 0;
}
"#;
    let lj = "luajit/usr/local";
    let program = pipeline::toolchain::step_with_toolchain("e2e-static-lua", &tc.project, &tc.toolchain)
        .dep("luajit", &tc.luajit)
        .file("main.c", main, false)
        .file("greet.o", object, false)
        .command(
            ".",
            [
                "x86_64-linux-musl-gcc",
                "-O2",
                &format!("-I{lj}/include/luajit-2.1"),
                "main.c",
                "greet.o",
                &format!("{lj}/lib/libluajit-5.1.a"),
                "-Wl,-E",
                "-lm",
                "-o",
                "{out}/prog",
            ],
        )
        .run(&tc.project.store)
        .unwrap_or_else(|e| panic!("{e}"));
    let binary = program.path.join("prog");
    let dynamic = Command::new("readelf").args(["-lW"]).arg(&binary).output().unwrap();
    assert!(!String::from_utf8_lossy(&dynamic.stdout).contains("INTERP"), "static: no interpreter");
    let run_dir = temp_dir("run");
    let out = Command::new(&binary).current_dir(run_dir.path()).env_clear().output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi static from bytecode\n");
}

#[test]
fn the_example_crate_embeds_a_module_and_runs() {
    let tc = toolchain();
    let host = pipeline::luajit::build_host(&tc.project, &tc.sources).unwrap_or_else(|e| panic!("{e}"));
    let layout = Layout::new(&tc.luajit);
    let host_root = host.path.join("usr/local");
    let out = Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--package", "embed-lua"])
        .current_dir(&tc.project.root)
        .env("CARGO_TARGET_DIR", tc.project.root.join("target/e2e-example"))
        .env("LUABC_LUAJIT", layout.bytecode_compiler())
        .env("LUABC_LUA_PATH", layout.lua_path())
        .env("LUAJIT_LIB_DIR", host_root.join("lib"))
        .env("LUAJIT_INC_DIR", host_root.join("include/luajit-2.1"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Hello, world!"), "{stdout}");
}
