use std::fs;
use std::path::PathBuf;

use pipeline::lua_modules::{self, Module};
use pipeline::{bytecode, luajit, toolchain, Project, Target};
use repro::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Also compile this module: `NAME=PATH` (e.g. `my.mod=src/my/mod.lua`).
    #[arg(long = "module", value_name = "NAME=PATH")]
    modules: Vec<String>,
    /// Strip debug info (the default).
    #[arg(long, conflicts_with = "debug")]
    strip: bool,
    /// Keep debug info (line numbers; chunk names are relative paths).
    #[arg(long)]
    debug: bool,
    /// Where to put the objects (default: target/bytecode).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Use only sources already in vendor/.
    #[arg(long)]
    offline: bool,
    #[command(flatten)]
    cache: crate::cache::CacheArgs,
}

/// Compiles every module of the Lua libraries (pins and lualib/) plus `--module`s with the
/// pinned LuaJIT, and prints module -> symbol -> object.
pub fn run(args: Args) -> Result<()> {
    args.cache.run_with_project(|project| run_in(project, &args))
}

fn run_in(project: &Project, args: &Args) -> Result<()> {
    // Bad names are refused before any work.
    let mut modules = Vec::new();
    for spec in &args.modules {
        let (name, path) = spec.split_once('=').ok_or_else(|| Error::new(format!("--module {spec:?}: expected NAME=PATH")))?;
        let name = luabc::ModuleName::new(name).map_err(|e| Error::new(format!("--module {spec:?}: {e}")))?;
        let file = PathBuf::from(path).canonicalize().map_err(|e| Error::with_source(format!("--module {spec:?}: cannot read {path}"), e))?;
        modules.push(Module { relative: PathBuf::from(name.default_relative_path()), name: name.as_str().to_owned(), file });
    }
    let sources = project.sources(args.offline)?;
    for library in lua_modules::project_libraries(project, &sources)? {
        modules.extend(lua_modules::library_modules(&library.dir)?);
    }
    let toolchain = toolchain::build(project, &sources, Target::X86_64)?;
    let luajit = luajit::build(project, &sources, &toolchain)?;
    let bytecode = bytecode::bytecode(project, (&luajit, toolchain.target), &modules, !args.debug)?;

    let out = args.out.clone().unwrap_or_else(|| project.root.join("target/bytecode"));
    fs::create_dir_all(&out).map_err(|e| Error::with_source(format!("cannot create {}", out.display()), e))?;
    println!("{:<40} {:<52} object", "module", "symbol");
    for m in &modules {
        let symbol = luabc::symbol_for_module(&m.name).map_err(|e| Error::new(e.to_string()))?;
        let object = bytecode::object_path(&bytecode, &symbol);
        let dest = out.join(format!("{symbol}.o"));
        fs::copy(&object, &dest).map_err(|e| Error::with_source(format!("cannot copy {}", object.display()), e))?;
        println!("{:<40} {:<52} {}", m.name, symbol, dest.display());
    }
    println!("({} modules, {})", modules.len(), if bytecode.built { "compiled" } else { "cached" });
    Ok(())
}
