//! The Lua modules a server needs, found by following `require` calls from the roots.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use repro::{Error, Result};

use crate::project::{Project, Sources};

/// The modules every server loads: lua-nginx-module refuses to start without resty.core.
pub const ROOTS: [&str; 2] = ["resty.core", "resty.upstream.healthcheck"];

/// Modules compiled into LuaJIT or lua-nginx-module, never files.
const BUILTIN: [&str; 18] = [
    "_G",
    "bit",
    "coroutine",
    "debug",
    "ffi",
    "io",
    "jit",
    "math",
    "os",
    "package",
    "string",
    "table",
    "table.new",
    "table.clear",
    "table.nkeys",
    "table.isarray",
    "table.isempty",
    "table.clone",
];

/// A Lua library directory (`resty/core.lua` is `require "resty.core"`) and who provides it.
#[derive(Clone, Debug)]
pub struct LibraryRoot {
    pub provider: String,
    pub dir: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    pub file: PathBuf,
    /// The path below its library root, as shipped under `lualib/`.
    pub relative: PathBuf,
}

/// Resolves the closure of `roots` over `require` calls. A required module that no root
/// provides fails, naming who requires it; `pcall(require, ...)` marks optional modules.
pub fn closure(roots: &[&str], libraries: &[LibraryRoot], c_modules: &BTreeSet<String>) -> Result<Vec<Module>> {
    let mut found: BTreeMap<String, Module> = BTreeMap::new();
    let mut queue: Vec<(String, String, bool)> = roots.iter().map(|r| (r.to_string(), "the server".to_string(), false)).collect();
    while let Some((name, required_by, optional)) = queue.pop() {
        if found.contains_key(&name) || is_builtin(&name) || c_modules.contains(&name) {
            continue;
        }
        let Some(module) = locate(&name, libraries) else {
            if optional {
                continue;
            }
            let searched: Vec<String> = libraries.iter().map(|l| format!("{} ({})", l.dir.display(), l.provider)).collect();
            return Err(Error::new(format!(
                "Lua module `{name}`, required by {required_by}, is provided by no pin and not by lualib/ (searched {})",
                searched.join(", ")
            )));
        };
        let text = fs::read_to_string(&module.file).map_err(|e| Error::with_source(format!("cannot read {}", module.file.display()), e))?;
        for (dep, optional) in requires(&text) {
            queue.push((dep, format!("{name} ({})", module.file.display()), optional));
        }
        found.insert(name, module);
    }
    Ok(found.into_values().collect())
}

fn is_builtin(name: &str) -> bool {
    BUILTIN.contains(&name) || name.starts_with("jit.")
}

fn locate(name: &str, libraries: &[LibraryRoot]) -> Option<Module> {
    let base = name.replace('.', "/");
    for library in libraries {
        for relative in [format!("{base}.lua"), format!("{base}/init.lua")] {
            let file = library.dir.join(&relative);
            if file.is_file() {
                return Some(Module { name: name.to_owned(), file, relative: PathBuf::from(relative) });
            }
        }
    }
    None
}

/// `require "x"`, `require("x")`, `require 'x'`, and `pcall(require, "x")` (optional).
fn requires(source: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for line in source.lines() {
        let code = line.split("--").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("require") {
            let before = &rest[..at];
            let after = rest[at + "require".len()..].trim_start();
            rest = &rest[at + "require".len()..];
            let word_start = before.chars().last().is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '.'));
            if !word_start {
                continue;
            }
            let optional = before.trim_end().ends_with("pcall(");
            let after = if optional { after.trim_start_matches(',').trim_start() } else { after.trim_start_matches('(').trim_start() };
            let Some(quote) = after.chars().next().filter(|c| *c == '"' || *c == '\'') else { continue };
            if let Some(end) = after[1..].find(quote) {
                let name = &after[1..1 + end];
                if !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '.' || c == '-') {
                    out.push((name.to_owned(), optional));
                }
            }
        }
    }
    out
}

/// Every module of a library directory.
pub fn library_modules(dir: &Path) -> Result<Vec<Module>> {
    let mut out = Vec::new();
    for file in walk(dir)? {
        if file.extension().is_some_and(|e| e == "lua") {
            let relative = file.strip_prefix(dir).unwrap().to_path_buf();
            let name = luabc::module_name_from_path(&relative).map_err(|e| Error::new(e.to_string()))?;
            out.push(Module { name: name.as_str().to_owned(), file, relative });
        }
    }
    Ok(out)
}

/// Names registered by the project's C modules with `ngx_http_lua_add_package_preload`.
pub fn c_provided_modules(modules_dir: &Path) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for file in walk(modules_dir)? {
        if file.extension().is_some_and(|e| e == "c") {
            let text = fs::read_to_string(&file).map_err(|e| Error::with_source(format!("cannot read {}", file.display()), e))?;
            let mut rest = text.as_str();
            while let Some(at) = rest.find("ngx_http_lua_add_package_preload(") {
                rest = &rest[at + 33..];
                if let Some(q) = rest.find('"') {
                    if let Some(end) = rest[q + 1..].find('"') {
                        names.insert(rest[q + 1..q + 1 + end].to_owned());
                    }
                }
            }
        }
    }
    Ok(names)
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return Ok(out) };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The library roots, in search order: the project's own `lualib/` first, then the pins.
pub fn project_libraries(project: &Project, sources: &Sources) -> Result<Vec<LibraryRoot>> {
    Ok(vec![
        LibraryRoot { provider: "the project's lualib/".into(), dir: project.root.join("lualib") },
        LibraryRoot { provider: "pin lua-resty-core".into(), dir: sources.get("lua-resty-core")?.path().to_path_buf() },
        LibraryRoot { provider: "pin lua-resty-lrucache".into(), dir: sources.get("lua-resty-lrucache")?.path().to_path_buf() },
    ])
}

/// resty.core (without which nginx will not start), every module of `lualib/`, and whatever
/// they require.
pub fn project_closure(project: &Project, sources: &Sources) -> Result<Vec<Module>> {
    let libraries = project_libraries(project, sources)?;
    let mut roots: BTreeSet<String> = ["resty.core".to_string()].into();
    for module in library_modules(&project.root.join("lualib"))? {
        roots.insert(module.name);
    }
    let roots: Vec<&str> = roots.iter().map(String::as_str).collect();
    let c_modules = c_provided_modules(&project.root.join("modules"))?;
    closure(&roots, &libraries, &c_modules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn library(files: &[(&str, &str)]) -> (tempfile::TempDir, LibraryRoot) {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let file = dir.path().join(path);
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(file, text).unwrap();
        }
        let root = LibraryRoot { provider: "test library".into(), dir: dir.path().to_path_buf() };
        (dir, root)
    }

    #[test]
    fn follows_requires_in_every_spelling_and_skips_builtins_and_c_modules() {
        let (_dir, lib) = library(&[
            ("app.lua", "local a = require \"app.a\"\nlocal b = require('app.b')\nlocal ffi = require 'ffi'\nlocal up = require \"ngx.upstream\"\n-- require \"commented.out\"\n"),
            ("app/a.lua", "local ok, x = pcall(require, \"optional.missing\")\nreturn require(\"app.c\")\n"),
            ("app/b/init.lua", "return { myrequire = 1 }\n"),
            ("app/c.lua", "return require \"table.new\"\n"),
        ]);
        let c_modules = ["ngx.upstream".to_string()].into();
        let found = closure(&["app"], &[lib], &c_modules).unwrap();
        let names: Vec<&str> = found.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["app", "app.a", "app.b", "app.c"]);
        assert_eq!(found[2].relative, PathBuf::from("app/b/init.lua"));
    }

    #[test]
    fn a_missing_module_fails_naming_it_and_who_requires_it() {
        let (_dir, lib) = library(&[("app.lua", "local x = require \"resty.nowhere\"\n")]);
        let err = closure(&["app"], &[lib], &BTreeSet::new()).unwrap_err().to_string();
        assert!(err.contains("`resty.nowhere`") && err.contains("required by app (") && err.contains("app.lua"), "{err}");
    }

    #[test]
    fn c_modules_are_found_in_the_sources_of_the_project_modules() {
        let (dir, _) = library(&[("m/x.c", "rc = ngx_http_lua_add_package_preload(cf, \"ngx.thing\",\n    loader);\n")]);
        assert_eq!(c_provided_modules(dir.path()).unwrap(), ["ngx.thing".to_string()].into());
    }
}
