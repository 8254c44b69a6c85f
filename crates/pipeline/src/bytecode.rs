//! The embed strategy's Lua bytecode: every module compiled by the pinned LuaJIT into one
//! static library of objects, in a store step.

use std::fs;
use std::path::PathBuf;

use repro::{Artifact, Error, Result, Step};

use crate::lua_modules::Module;
use crate::luajit;
use crate::project::Project;
use crate::target::Target;

/// The archive a [`bytecode`] step writes: `lib<ARCHIVE>.a`.
pub const ARCHIVE: &str = "lua-modules";

/// The object of one module inside a [`bytecode`] step's output.
pub fn object_path(bytecode: &Artifact, symbol: &str) -> PathBuf {
    bytecode.path.join(format!("lib{ARCHIVE}.luabc")).join(format!("{symbol}.o"))
}

/// Compiles `modules` to bytecode objects with the pinned LuaJIT built for `target` (run under
/// the target's emulator when it is not the build machine's), in a store step keyed by the
/// sources' contents, and archives them into `liblua-modules.a`. The objects are for the
/// machine of the LuaJIT runtime they will be linked with, which luabc checks. Unless `strip`, the
/// bytecode keeps line numbers and names, with the chunk name `@<relative path>` (e.g.
/// `@resty/upstream/healthcheck.lua`), never a build path.
pub fn bytecode(project: &Project, (luajit, target): (&Artifact, Target), modules: &[Module], strip: bool) -> Result<Artifact> {
    let layout = luajit::Layout::new(luajit);
    let step = Step::new(target.step_name("lua-bytecode")).code(repro::code_id!("src/bytecode.rs")).input("strip", strip.to_string()).dep("luajit", luajit);
    let mut step = project.with_cross_tools(step, target);
    for (path, source) in luabc::SOURCES {
        step = step.code(repro::CodeId::of(*path, source));
    }
    for m in modules {
        let text = fs::read(&m.file).map_err(|e| Error::with_source(format!("cannot read {}", m.file.display()), e))?;
        step = step.file(format!("lua/{}", m.relative.display()), text, false).input(format!("module {}", m.name), m.relative.display().to_string());
    }
    let names: Vec<(String, PathBuf)> = modules.iter().map(|m| (m.name.clone(), m.relative.clone())).collect();
    project.run_with(step, |build, out| {
        let mut b = luabc::Build::new();
        b.luajit(layout.bytecode_compiler()).lua_path(layout.lua_path()).strip(strip).out_dir(out).whole_archive(true);
        b.runtime_library(layout.lib_dir().join("libluajit-5.1.a"));
        if let Some(runner) = target.runner() {
            b.runner(runner);
        }
        for (name, rel) in &names {
            b.module(name, build.join("lua").join(rel));
        }
        b.try_compile(ARCHIVE).map_err(|e| Error::new(e.to_string()))?;
        Ok(())
    })
}
