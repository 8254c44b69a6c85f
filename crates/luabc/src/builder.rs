//! The `cc`-style builder.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use crate::archive::{write_archive, ArchiveMember};
use crate::header::{BytecodeHeader, RuntimeAbi};
use crate::luajit::{CompileInput, Luajit, LuajitInfo};
use crate::output::{c_source, elf_object, preload_c_source, Arch, PreloadEntry};
use crate::{Error, ModuleName};

/// File name of the manifest [`Build::try_objects`] writes next to the objects.
pub const MANIFEST_FILE: &str = "luabc-manifest.tsv";

/// Compiles Lua modules to LuaJIT bytecode objects. See the crate documentation.
#[derive(Clone, Debug)]
pub struct Build {
    luajit: Option<PathBuf>,
    lua_path: Option<OsString>,
    modules: Vec<(String, PathBuf)>,
    roots: Vec<PathBuf>,
    strip: bool,
    out_dir: Option<PathBuf>,
    cargo_metadata: bool,
    whole_archive: bool,
    arch: Option<Arch>,
    runtime_library: Option<PathBuf>,
    runner: Option<PathBuf>,
    runtime_abi: Option<RuntimeAbi>,
    require_deterministic: bool,
    preload_function: Option<String>,
    lua_include_dir: Option<PathBuf>,
    write_raw: bool,
    write_c: bool,
}

/// One compiled module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleArtifact {
    /// Module name, as passed to `require`.
    pub name: String,
    /// Data symbol holding the bytecode (`luaJIT_BC_...`).
    pub symbol: String,
    /// The Lua source it was compiled from.
    pub source: PathBuf,
    /// Relative path recorded in the bytecode as chunk name `@<chunk_path>`
    /// (only present in the bytecode when not stripped).
    pub chunk_path: String,
    /// The ELF object defining `symbol`.
    pub object: PathBuf,
    /// The raw bytecode (what `luajit -b -t raw` writes).
    pub bytecode: Vec<u8>,
    /// `<symbol>.luac`, if [`Build::write_raw`] was on.
    pub raw_file: Option<PathBuf>,
    /// `<symbol>.c`, if [`Build::write_c`] was on.
    pub c_file: Option<PathBuf>,
}

/// What a build produced.
#[derive(Clone, Debug)]
pub struct Artifacts {
    /// Modules sorted by name.
    pub modules: Vec<ModuleArtifact>,
    /// Directory holding the objects and the manifest.
    pub object_dir: PathBuf,
    /// The manifest ([`MANIFEST_FILE`]).
    pub manifest: PathBuf,
    /// The static library, from [`Build::try_compile`].
    pub library: Option<PathBuf>,
    /// The generated preload registration C file, if requested.
    pub preload_source: Option<PathBuf>,
    /// The compiled preload registration object, when [`Build::lua_include_dir`] was set
    /// and the library was built with [`Build::try_compile`].
    pub preload_object: Option<PathBuf>,
    /// The compiler that was used.
    pub compiler: LuajitInfo,
}

#[derive(Debug)]
struct Planned {
    name: ModuleName,
    source: PathBuf,
    chunk_path: String,
}

impl Default for Build {
    fn default() -> Self {
        Build::new()
    }
}

impl Build {
    /// A builder with defaults: strip debug info, no cargo metadata, require
    /// deterministic output, target architecture from `CARGO_CFG_TARGET_ARCH` or the host.
    pub fn new() -> Build {
        Build {
            luajit: None,
            lua_path: None,
            modules: Vec::new(),
            roots: Vec::new(),
            strip: true,
            out_dir: None,
            cargo_metadata: false,
            whole_archive: false,
            arch: None,
            runtime_library: None,
            runner: None,
            runtime_abi: None,
            require_deterministic: true,
            preload_function: None,
            lua_include_dir: None,
            write_raw: false,
            write_c: false,
        }
    }

    /// The `luajit` executable that compiles (required).
    pub fn luajit(&mut self, exe: impl Into<PathBuf>) -> &mut Build {
        self.luajit = Some(exe.into());
        self
    }

    /// Where that luajit finds its `jit/` library: a `LUA_PATH` value (with `?`),
    /// LuaJIT's `src` directory, or its `jit` directory. Not needed for an installed luajit.
    pub fn lua_path(&mut self, value: impl Into<OsString>) -> &mut Build {
        self.lua_path = Some(value.into());
        self
    }

    /// Adds one module under an explicit name.
    pub fn module(&mut self, name: &str, source: impl Into<PathBuf>) -> &mut Build {
        self.modules.push((name.to_string(), source.into()));
        self
    }

    /// Adds several `(module name, source)` pairs.
    pub fn modules<N: AsRef<str>, P: Into<PathBuf>>(&mut self, modules: impl IntoIterator<Item = (N, P)>) -> &mut Build {
        for (n, p) in modules {
            self.module(n.as_ref(), p);
        }
        self
    }

    /// Also write each module's bytecode as `<symbol>.luac` (raw, as `luajit -b -t raw`)
    /// next to its object.
    pub fn write_raw(&mut self, on: bool) -> &mut Build {
        self.write_raw = on;
        self
    }

    /// Also write each module as C source `<symbol>.c` (see [`c_source`]) next to its object.
    pub fn write_c(&mut self, on: bool) -> &mut Build {
        self.write_c = on;
        self
    }

    /// Adds every `*.lua` file under `dir` (recursively, skipping names starting
    /// with `.`), named by its path relative to `dir`.
    pub fn library_root(&mut self, dir: impl Into<PathBuf>) -> &mut Build {
        self.roots.push(dir.into());
        self
    }

    /// Strip debug info (`-s`, the default) or keep it (`-g`: line numbers in errors).
    pub fn strip(&mut self, strip: bool) -> &mut Build {
        self.strip = strip;
        self
    }

    /// Output directory; defaults to `OUT_DIR` (set for build scripts).
    pub fn out_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Build {
        self.out_dir = Some(dir.into());
        self
    }

    /// Print `cargo:` lines (rerun-if-changed, link search path, link lib). Off by
    /// default; turn it on in build scripts.
    pub fn cargo_metadata(&mut self, on: bool) -> &mut Build {
        self.cargo_metadata = on;
        self
    }

    /// Link the library with `+whole-archive`, so modules nobody references (found
    /// at run time through `dlsym` by `require`) are kept. The program must also
    /// export them, e.g. `cargo:rustc-link-arg=-Wl,-E`.
    pub fn whole_archive(&mut self, on: bool) -> &mut Build {
        self.whole_archive = on;
        self
    }

    /// The LuaJIT runtime library (`libluajit-5.1.a`) the objects will be linked with. The
    /// objects get its architecture, and a different [`Build::arch`] is refused: bytecode
    /// objects for one machine can never end up beside another machine's runtime.
    pub fn runtime_library(&mut self, library: impl Into<PathBuf>) -> &mut Build {
        self.runtime_library = Some(library.into());
        self
    }

    /// Runs the compiling luajit through `program` (e.g. `qemu-aarch64-static`), for a
    /// luajit built for another architecture than the build machine's.
    pub fn runner(&mut self, program: impl Into<PathBuf>) -> &mut Build {
        self.runner = Some(program.into());
        self
    }

    /// Object architecture; defaults to the [`Build::runtime_library`]'s, else
    /// `CARGO_CFG_TARGET_ARCH`, else the host.
    pub fn arch(&mut self, arch: Arch) -> &mut Build {
        self.arch = Some(arch);
        self
    }

    /// The LuaJIT the bytecode will run on. When set, the build fails before
    /// compiling anything if the compiler's bytecode would not load there.
    pub fn runtime_abi(&mut self, abi: RuntimeAbi) -> &mut Build {
        self.runtime_abi = Some(abi);
        self
    }

    /// Fail (the default) if the luajit cannot produce reproducible bytecode.
    pub fn require_deterministic(&mut self, on: bool) -> &mut Build {
        self.require_deterministic = on;
        self
    }

    /// Also generate `int <function>(lua_State *L)` that registers every module in
    /// `package.preload` (see [`preload_c_source`]).
    pub fn preload_function(&mut self, function: &str) -> &mut Build {
        self.preload_function = Some(function.to_string());
        self
    }

    /// Directory with `lua.h` and `lauxlib.h`. With it, [`Build::try_compile`]
    /// compiles the preload function (through the `cc` crate, so only inside a
    /// build script) and puts it into the library.
    pub fn lua_include_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Build {
        self.lua_include_dir = Some(dir.into());
        self
    }

    /// Like [`Build::try_compile`], but panics with the error message.
    pub fn compile(&self, lib_name: &str) -> Artifacts {
        self.try_compile(lib_name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Build::try_objects`], but panics with the error message.
    pub fn objects(&self) -> Artifacts {
        self.try_objects().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Compiles every module to `<out_dir>/<symbol>.o` and writes the manifest there.
    /// Stale `luaJIT_BC_*.{o,c,luac}` files in `out_dir` are removed.
    pub fn try_objects(&self) -> Result<Artifacts, Error> {
        let out_dir = self.resolve_out_dir()?;
        let planned = self.plan()?;
        let arts = self.build_objects(&out_dir, planned)?;
        self.emit_rerun_lines(&arts);
        Ok(arts)
    }

    /// Compiles every module and archives the objects (and the preload function, if
    /// configured with [`Build::lua_include_dir`]) into `<out_dir>/lib<lib_name>.a`.
    /// The objects go to `<out_dir>/lib<lib_name>.luabc/`.
    pub fn try_compile(&self, lib_name: &str) -> Result<Artifacts, Error> {
        let lib = lib_name.strip_prefix("lib").and_then(|l| l.strip_suffix(".a")).unwrap_or(lib_name);
        if lib.is_empty() || !lib.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(Error::Config(format!("library name {lib_name:?} must be non-empty and use only ASCII letters, digits, `_` and `-`")));
        }
        let out_dir = self.resolve_out_dir()?;
        let planned = self.plan()?;
        if self.preload_function.is_some() {
            if let Some(inc) = &self.lua_include_dir {
                if !inc.join("lua.h").is_file() || !inc.join("lauxlib.h").is_file() {
                    return Err(Error::Config(format!(
                        "lua_include_dir {} has no lua.h/lauxlib.h; give LuaJIT's include directory (e.g. /usr/include/luajit-2.1)",
                        inc.display()
                    )));
                }
            }
        }
        let mut arts = self.build_objects(&out_dir.join(format!("lib{lib}.luabc")), planned)?;

        let mut members: Vec<ArchiveMember> = arts
            .modules
            .iter()
            .map(|m| -> Result<ArchiveMember, Error> {
                Ok(ArchiveMember {
                    name: format!("{}.o", m.symbol),
                    data: fs::read(&m.object).map_err(|e| Error::io("read object", &m.object, e))?,
                    symbols: vec![m.symbol.clone()],
                })
            })
            .collect::<Result<_, _>>()?;
        if let (Some(function), Some(inc), Some(src)) = (&self.preload_function, &self.lua_include_dir, &arts.preload_source) {
            let obj = self.compile_preload(src, inc, &arts.object_dir)?;
            members.push(ArchiveMember {
                name: format!("{function}.o"),
                data: fs::read(&obj).map_err(|e| Error::io("read object", &obj, e))?,
                symbols: vec![function.clone()],
            });
            arts.preload_object = Some(obj);
        }
        let lib_path = out_dir.join(format!("lib{lib}.a"));
        write_file(&lib_path, &write_archive(&members))?;
        arts.library = Some(lib_path);

        self.emit_rerun_lines(&arts);
        if self.cargo_metadata {
            println!("cargo:rustc-link-search=native={}", out_dir.display());
            let modifier = if self.whole_archive { ":+whole-archive" } else { "" };
            println!("cargo:rustc-link-lib=static{modifier}={lib}");
        }
        Ok(arts)
    }

    fn resolve_out_dir(&self) -> Result<PathBuf, Error> {
        match (&self.out_dir, std::env::var_os("OUT_DIR")) {
            (Some(d), _) => Ok(d.clone()),
            (None, Some(d)) => Ok(PathBuf::from(d)),
            (None, None) => Err(Error::Config("no output directory: call Build::out_dir (OUT_DIR is only set for build scripts)".into())),
        }
    }

    fn resolve_arch(&self) -> Result<Arch, Error> {
        if let Some(library) = &self.runtime_library {
            let runtime = library_arch(library)?;
            return match self.arch {
                Some(objects) if objects != runtime => Err(Error::ArchMismatch { objects, runtime, library: library.clone() }),
                _ => Ok(runtime),
            };
        }
        if let Some(a) = self.arch {
            return Ok(a);
        }
        let (name, arch) = match std::env::var("CARGO_CFG_TARGET_ARCH") {
            Ok(a) => (a.clone(), Arch::from_cargo_arch(&a)),
            Err(_) => (std::env::consts::ARCH.to_string(), Arch::host()),
        };
        arch.ok_or_else(|| Error::Config(format!("no ELF object support for architecture {name:?}; supported: x86_64, aarch64 (set Build::arch)")))
    }

    /// Validates everything that needs no luajit: names, paths, duplicates, symbols.
    fn plan(&self) -> Result<Vec<Planned>, Error> {
        let mut planned = Vec::new();
        for (name, source) in &self.modules {
            let name = ModuleName::new(name)?;
            if !source.is_file() {
                return Err(Error::Config(format!("source {} of module {name:?} does not exist or is not a file", source.display())));
            }
            let chunk_path = if source.file_name().is_some_and(|f| f == "init.lua") {
                format!("{}/init.lua", name.as_str().replace('.', "/"))
            } else {
                name.default_relative_path()
            };
            planned.push(Planned { name, source: source.clone(), chunk_path });
        }
        for root in &self.roots {
            let mut files = Vec::new();
            walk(root, Path::new(""), &mut files)?;
            for rel in files {
                let name = ModuleName::from_relative_path(&rel).map_err(|e| match e {
                    Error::InvalidModulePath { reason, .. } => Error::InvalidModulePath { path: root.join(&rel), reason },
                    other => other,
                })?;
                let chunk_path = rel.iter().map(|c| c.to_string_lossy()).collect::<Vec<_>>().join("/");
                planned.push(Planned { name, source: root.join(&rel), chunk_path });
            }
        }
        if planned.is_empty() {
            return Err(Error::Config("no Lua modules to compile: add some with Build::module or Build::library_root".into()));
        }
        planned.sort_by(|a, b| a.name.cmp(&b.name));
        for w in planned.windows(2) {
            if w[0].name == w[1].name {
                return Err(Error::DuplicateModule { name: w[0].name.to_string(), first: w[0].source.clone(), second: w[1].source.clone() });
            }
        }
        let mut symbols: BTreeMap<String, &ModuleName> = BTreeMap::new();
        for p in &planned {
            if let Some(prev) = symbols.insert(p.name.symbol(), &p.name) {
                return Err(Error::SymbolCollision { symbol: p.name.symbol(), first: prev.to_string(), second: p.name.to_string() });
            }
        }
        if let Some(f) = &self.preload_function {
            if !crate::name::is_c_identifier(f) {
                return Err(Error::Config(format!("preload function name {f:?} is not a C identifier")));
            }
        }
        Ok(planned)
    }

    fn luajit_handle(&self) -> Result<Luajit, Error> {
        let exe = self.luajit.clone().ok_or_else(|| Error::Config("no luajit executable: call Build::luajit with the path of the compiling luajit".into()))?;
        let mut lj = Luajit::new(exe);
        if let Some(p) = &self.lua_path {
            lj = lj.lua_path(p.clone());
        }
        if let Some(r) = &self.runner {
            lj = lj.runner(r.clone());
        }
        Ok(lj)
    }

    fn build_objects(&self, dir: &Path, planned: Vec<Planned>) -> Result<Artifacts, Error> {
        let arch = self.resolve_arch()?;
        let lj = self.luajit_handle()?;
        let info = lj.probe()?;
        if self.require_deterministic && !info.deterministic {
            return Err(Error::NonDeterministic { luajit: lj.exe().to_path_buf() });
        }
        if let Some(rt) = &self.runtime_abi {
            let probe =
                BytecodeHeader { version: info.abi.version, flags: (info.abi.big_endian as u32) | ((info.abi.fr2 as u32) << 3), chunk_name: None, len: 0 };
            rt.check(&probe)?;
        }
        fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        let stage = dir.join(".luabc-stage");

        let mut modules = Vec::with_capacity(planned.len());
        for p in planned {
            let input = CompileInput { module: &p.name, source: &p.source, chunk_path: &p.chunk_path, strip: self.strip };
            let bytecode = lj.compile(&info, &input, &stage)?;
            let header = BytecodeHeader::parse(&bytecode)?;
            self.runtime_abi.unwrap_or(info.abi).check(&header)?;
            let symbol = p.name.symbol();
            let object = dir.join(format!("{symbol}.o"));
            write_file(&object, &elf_object(&symbol, &bytecode, arch)?)?;
            let raw_file = if self.write_raw {
                let f = dir.join(format!("{symbol}.luac"));
                write_file(&f, &bytecode)?;
                Some(f)
            } else {
                None
            };
            let c_file = if self.write_c {
                let f = dir.join(format!("{symbol}.c"));
                let what = format!("Lua module \"{}\", chunk \"@{}\"", p.name, p.chunk_path);
                write_file(&f, c_source(&symbol, &bytecode, &what)?.as_bytes())?;
                Some(f)
            } else {
                None
            };
            modules.push(ModuleArtifact { name: p.name.to_string(), symbol, source: p.source, chunk_path: p.chunk_path, object, bytecode, raw_file, c_file });
        }
        if stage.exists() {
            fs::remove_dir_all(&stage).map_err(|e| Error::io("remove staging directory", &stage, e))?;
        }
        remove_stale_objects(dir, &modules)?;

        let manifest = dir.join(MANIFEST_FILE);
        write_file(&manifest, manifest_text(&info, self.strip, &modules).as_bytes())?;

        let preload_source = match &self.preload_function {
            Some(f) => {
                let entries: Vec<PreloadEntry> =
                    modules.iter().map(|m| PreloadEntry { module: m.name.clone(), symbol: m.symbol.clone(), size: m.bytecode.len() }).collect();
                let path = dir.join(format!("{f}.c"));
                write_file(&path, preload_c_source(f, &entries)?.as_bytes())?;
                Some(path)
            }
            None => None,
        };
        Ok(Artifacts { modules, object_dir: dir.to_path_buf(), manifest, library: None, preload_source, preload_object: None, compiler: info })
    }

    fn compile_preload(&self, src: &Path, inc: &Path, dir: &Path) -> Result<PathBuf, Error> {
        let cc_dir = dir.join(".cc");
        let mut b = cc::Build::new();
        b.file(src)
            .include(inc)
            .out_dir(&cc_dir)
            .cargo_metadata(false)
            .cargo_warnings(self.cargo_metadata)
            .emit_rerun_if_env_changed(self.cargo_metadata)
            .warnings(true)
            // Keep the build directory out of the object (reproducible builds).
            .flag_if_supported(format!("-ffile-prefix-map={}=.", dir.display()))
            .flag_if_supported(format!("-ffile-prefix-map={}=.", cc_dir.display()));
        let objs = b.try_compile_intermediates().map_err(|e| {
            Error::Cc(format!(
                "{}: {e} (the preload function is compiled with the `cc` crate, which needs a build-script environment: TARGET, HOST, OPT_LEVEL; outside one, compile {} yourself)",
                src.display(),
                src.display()
            ))
        })?;
        objs.into_iter().next().ok_or_else(|| Error::Cc(format!("cc produced no object for {}", src.display())))
    }

    fn emit_rerun_lines(&self, arts: &Artifacts) {
        if !self.cargo_metadata {
            return;
        }
        if let Some(exe) = &self.luajit {
            println!("cargo:rerun-if-changed={}", exe.display());
        }
        for root in &self.roots {
            // Cargo scans a directory recursively, so new files trigger a rebuild too.
            println!("cargo:rerun-if-changed={}", root.display());
        }
        for m in &arts.modules {
            println!("cargo:rerun-if-changed={}", m.source.display());
        }
    }
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    let dir = root.join(rel);
    let mut entries = Vec::new();
    for e in fs::read_dir(&dir).map_err(|e| Error::io("read library directory", &dir, e))? {
        let e = e.map_err(|e| Error::io("read library directory", &dir, e))?;
        entries.push(e.file_name());
    }
    entries.sort();
    for name in entries {
        if name.as_encoded_bytes().first() == Some(&b'.') {
            continue;
        }
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let meta = fs::metadata(&path).map_err(|e| Error::io("inspect", &path, e))?;
        if meta.is_dir() {
            walk(root, &rel, out)?;
        } else if meta.is_file() && name.as_encoded_bytes().ends_with(b".lua") {
            out.push(rel);
        }
    }
    Ok(())
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), Error> {
    fs::write(path, data).map_err(|e| Error::io("write", path, e))
}

fn remove_stale_objects(dir: &Path, modules: &[ModuleArtifact]) -> Result<(), Error> {
    for e in fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))? {
        let e = e.map_err(|e| Error::io("read directory", dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let ours = [".o", ".c", ".luac"].iter().any(|ext| name.ends_with(ext));
        let current = modules.iter().any(|m| m.object == path || m.raw_file.as_ref() == Some(&path) || m.c_file.as_ref() == Some(&path));
        if name.starts_with(crate::SYMBOL_PREFIX) && ours && !current {
            fs::remove_file(e.path()).map_err(|err| Error::io("remove stale object", e.path(), err))?;
        }
    }
    Ok(())
}

/// The machine of the first object in a static library. Read from the ELF header's bytes:
/// archive members are only 2-byte aligned, which a zero-copy ELF parser refuses.
fn library_arch(library: &Path) -> Result<Arch, Error> {
    use object::read::archive::ArchiveFile;
    let bytes = fs::read(library).map_err(|e| Error::io("read the runtime library", library, e))?;
    let bad = |why: String| {
        Error::Config(format!("runtime library {}: {why}; give the LuaJIT static library (libluajit-5.1.a) the objects are linked with", library.display()))
    };
    let archive = ArchiveFile::parse(&*bytes).map_err(|e| bad(format!("not a static library ({e})")))?;
    for member in archive.members() {
        let member = member.map_err(|e| bad(format!("unreadable member ({e})")))?;
        let Ok(data) = member.data(&*bytes) else { continue };
        if data.len() < 20 || &data[..4] != b"\x7fELF" {
            continue;
        }
        let machine = match data[5] {
            object::elf::ELFDATA2MSB => u16::from_be_bytes([data[18], data[19]]),
            _ => u16::from_le_bytes([data[18], data[19]]),
        };
        return match machine {
            object::elf::EM_X86_64 => Ok(Arch::X86_64),
            object::elf::EM_AARCH64 => Ok(Arch::Aarch64),
            other => Err(bad(format!("its objects are for ELF machine {other}, which luabc writes no objects for"))),
        };
    }
    Err(bad("it holds no ELF object".into()))
}

/// The manifest: a header comment, then one tab-separated line per module:
/// module, symbol, object file name, bytecode size, chunk path.
fn manifest_text(info: &LuajitInfo, strip: bool, modules: &[ModuleArtifact]) -> String {
    let mut s =
        format!("# luabc manifest v1\n# compiler: {} ({}, {})\n# strip: {strip}\n# module\tsymbol\tobject\tbytes\tchunk\n", info.version, info.arch, info.abi);
    for m in modules {
        let obj = m.object.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        s.push_str(&format!("{}\t{}\t{obj}\t{}\t{}\n", m.name, m.symbol, m.bytecode.len(), m.chunk_path));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("luabc-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, "return {}\n").unwrap();
    }

    #[test]
    fn plan_library_root() {
        let root = tmp("root");
        for f in ["resty/core.lua", "resty/core/base.lua", "foo/init.lua", "ngx/re.lua", "README.md", ".hidden/x.lua"] {
            touch(&root, f);
        }
        let mut b = Build::new();
        b.library_root(&root).module("extra-mod.x", root.join("foo/init.lua"));
        let plan = b.plan().unwrap();
        let got: Vec<_> = plan.iter().map(|p| (p.name.to_string(), p.chunk_path.clone())).collect();
        assert_eq!(
            got,
            [
                ("extra-mod.x".to_string(), "extra-mod/x/init.lua".to_string()),
                ("foo".into(), "foo/init.lua".into()),
                ("ngx.re".into(), "ngx/re.lua".into()),
                ("resty.core".into(), "resty/core.lua".into()),
                ("resty.core.base".into(), "resty/core/base.lua".into()),
            ]
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn plan_errors_come_before_any_work() {
        let root = tmp("errors");
        touch(&root, "a/b.lua");
        touch(&root, "a_b.lua");
        // Symbol collision: a.b and a_b both give luaJIT_BC_a_b.
        let e = Build::new().library_root(&root).luajit("/nonexistent").plan().unwrap_err();
        assert!(matches!(e, Error::SymbolCollision { .. }), "{e}");
        assert!(e.to_string().contains("luaJIT_BC_a_b"));

        let root2 = tmp("dup");
        touch(&root2, "x.lua");
        touch(&root2, "x/init.lua");
        let e = Build::new().library_root(&root2).plan().unwrap_err();
        assert!(matches!(e, Error::DuplicateModule { .. }), "{e}");

        let e = Build::new().module("a..b", root.join("a_b.lua")).plan().unwrap_err();
        assert!(matches!(e, Error::InvalidModuleName { .. }), "{e}");
        let e = Build::new().module("ok", root.join("missing.lua")).plan().unwrap_err();
        assert!(e.to_string().contains("missing.lua"), "{e}");
        let e = Build::new().plan().unwrap_err();
        assert!(e.to_string().contains("no Lua modules"), "{e}");

        let root3 = tmp("badname");
        touch(&root3, "a.b/c.lua");
        let e = Build::new().library_root(&root3).plan().unwrap_err();
        assert!(e.to_string().contains("a.b/c.lua"), "{e}");

        // A missing luajit is reported by name, and nothing is written.
        let out = root.join("out");
        let e = Build::new().module("ok", root.join("a_b.lua")).out_dir(&out).luajit("/nonexistent/luajit").try_objects().unwrap_err();
        assert!(e.to_string().contains("/nonexistent/luajit"), "{e}");
        assert!(!out.exists());
        let e = Build::new().module("ok", root.join("a_b.lua")).out_dir(&out).try_compile("bad name").unwrap_err();
        assert!(e.to_string().contains("library name"), "{e}");
        for d in [root, root2, root3] {
            fs::remove_dir_all(d).unwrap();
        }
    }

    /// A stand-in for luajit (POSIX sh) that answers the probe and `-b` like LuaJIT
    /// 2.1 with `-F`, emits a header-only "dump", and fails if the environment was
    /// not cleared. `nondeterministic` makes the probe dump vary per process.
    #[cfg(unix)]
    fn fake_luajit(dir: &Path, nondeterministic: bool) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let probe_dump = if nondeterministic { "1b4c4a020a%04x' $(($$ % 65536))" } else { "1b4c4a020a'" };
        let script = format!(
            r#"#!/bin/sh
if [ -n "$HOME" ] || [ -n "$CARGO_MANIFEST_DIR" ]; then echo "environment not cleared" >&2; exit 3; fi
[ "$LUA_PATH" = "/fake/src/?.lua" ] || {{ echo "bad LUA_PATH $LUA_PATH" >&2; exit 4; }}
PATH=/usr/bin:/bin
case "$1" in
-e) printf 'LuaJIT 2.1.0-fake\nx64\nLinux\nffi\n'; printf '{probe_dump}; echo; exit 0 ;;
-b) shift
    if [ $# -eq 0 ]; then
      printf 'Save LuaJIT bytecode: luajit -b[options] input output\n  -s        Strip debug info\n  -F name   Override filename\n' >&2
      exit 1
    fi
    [ "$1 $2" = "-t raw" ] || exit 5
    mode=$3; name=$5; src=$6
    if grep -q SYNTAX "$src"; then echo "luajit: $name:7: unexpected symbol near 'x'" >&2; exit 1; fi
    if [ "$mode" = -s ]; then printf '\033LJ\002\012'; else
      n=$(printf '@%s' "$name" | wc -c)
      printf '\033LJ\002\010'; printf "\\$(printf %o $n)"; printf '@%s' "$name"
    fi
    printf '\000' ;;
*) exit 6 ;;
esac
"#
        );
        let path = dir.join(if nondeterministic { "luajit-nondet" } else { "luajit" });
        fs::write(&path, script).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A static library holding one object for `arch`, after a member of odd length (so the
    /// object is not 8-byte aligned in the archive, as in real libraries).
    fn runtime_library_for(dir: &Path, arch: Arch) -> PathBuf {
        let object = elf_object("luaJIT_BC_runtime", b"\x1bLJ\x02\x0a\x00", arch).unwrap();
        let members = [
            ArchiveMember { name: "odd.txt".into(), data: b"odd".to_vec(), symbols: vec![] },
            ArchiveMember { name: "lj_vm.o".into(), data: object, symbols: vec!["luaJIT_BC_runtime".into()] },
        ];
        let path = dir.join(format!("libluajit-{arch:?}.a"));
        fs::write(&path, write_archive(&members)).unwrap();
        path
    }

    #[cfg(unix)]
    #[test]
    fn objects_follow_the_runtime_library_and_a_different_arch_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let root = tmp("runtime-arch");
        let lj = fake_luajit(&root, false);
        touch(&root, "m.lua");
        let aarch64 = runtime_library_for(&root, Arch::Aarch64);
        let build = |out: &Path| {
            let mut b = Build::new();
            b.luajit(&lj).lua_path("/fake/src/?.lua").module("m", root.join("m.lua")).runtime_library(&aarch64).out_dir(out);
            b
        };

        let refused = root.join("refused");
        let e = build(&refused).arch(Arch::X86_64).try_compile("m").unwrap_err();
        assert!(matches!(e, Error::ArchMismatch { objects: Arch::X86_64, runtime: Arch::Aarch64, .. }), "{e}");
        assert!(e.to_string().contains("libluajit-Aarch64.a"), "{e}");
        assert!(!refused.exists(), "nothing is written for a refused build");

        let arts = build(&root.join("followed")).try_objects().unwrap();
        let object = fs::read(&arts.modules[0].object).unwrap();
        assert_eq!(u16::from_le_bytes([object[18], object[19]]), object::elf::EM_AARCH64);

        let not_a_library = root.join("m.lua");
        let e = Build::new().luajit(&lj).module("m", root.join("m.lua")).runtime_library(&not_a_library).out_dir(root.join("x")).try_objects().unwrap_err();
        assert!(e.to_string().contains("m.lua") && e.to_string().contains("not a static library"), "{e}");

        // A runner is given the luajit and its arguments, in the same cleared environment.
        let seen = root.join("runner-saw");
        let runner = root.join("runner");
        fs::write(&runner, format!("#!/bin/sh\necho \"$1\" >> {}\nexec \"$@\"\n", seen.display())).unwrap();
        fs::set_permissions(&runner, fs::Permissions::from_mode(0o755)).unwrap();
        build(&root.join("run")).runner(&runner).try_objects().unwrap();
        let calls = fs::read_to_string(&seen).unwrap();
        assert!(!calls.is_empty() && calls.lines().all(|l| l == lj.display().to_string()), "{calls}");
        fs::remove_dir_all(root).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn build_with_fake_luajit() {
        use object::read::archive::ArchiveFile;
        let root = tmp("fake");
        let lj = fake_luajit(&root, false);
        touch(&root, "lib/resty/core.lua");
        touch(&root, "lib/foo/init.lua");
        touch(&root, "other.lua");
        let out = root.join("out");
        fs::create_dir_all(&out).unwrap();
        fs::write(out.join("luaJIT_BC_stale.o"), b"old").unwrap();
        fs::write(out.join("keep.o"), b"not ours").unwrap();
        let mut b = Build::new();
        b.luajit(&lj)
            .lua_path("/fake/src/?.lua")
            .library_root(root.join("lib"))
            .modules([("v2-extra", root.join("other.lua"))])
            .strip(false)
            .write_c(true)
            .write_raw(true)
            .arch(Arch::X86_64)
            .runtime_abi(RuntimeAbi::LUAJIT_2_1_GC64)
            .out_dir(&out);
        let arts = b.try_objects().unwrap();
        assert_eq!(arts.compiler.version, "LuaJIT 2.1.0-fake");
        assert!(arts.compiler.has_chunk_name_flag && arts.compiler.deterministic);
        let names: Vec<_> = arts.modules.iter().map(|m| (m.name.as_str(), m.symbol.as_str())).collect();
        assert_eq!(names, [("foo", "luaJIT_BC_foo"), ("resty.core", "luaJIT_BC_resty_core"), ("v2-extra", "luaJIT_BC_extra")]);
        let core = &arts.modules[1];
        let h = BytecodeHeader::parse(&core.bytecode).unwrap();
        assert_eq!(h.chunk_name.as_deref(), Some(&b"@resty/core.lua"[..]));
        assert_eq!(fs::read(core.raw_file.as_ref().unwrap()).unwrap(), core.bytecode);
        assert!(fs::read_to_string(core.c_file.as_ref().unwrap()).unwrap().contains("luaJIT_BC_resty_core[]"));
        assert_eq!(arts.modules[2].chunk_path, "v2-extra.lua");
        assert!(!out.join("luaJIT_BC_stale.o").exists(), "stale object removed");
        assert!(out.join("keep.o").exists(), "foreign file kept");
        assert!(!out.join(".luabc-stage").exists());
        let manifest = fs::read_to_string(&arts.manifest).unwrap();
        assert!(manifest.contains("resty.core\tluaJIT_BC_resty_core\tluaJIT_BC_resty_core.o\t"), "{manifest}");

        // Same inputs, same bytes.
        let first: Vec<_> = arts.modules.iter().map(|m| fs::read(&m.object).unwrap()).collect();
        let again = b.try_objects().unwrap();
        let second: Vec<_> = again.modules.iter().map(|m| fs::read(&m.object).unwrap()).collect();
        assert_eq!(first, second);

        // Static library.
        let arts = b.out_dir(root.join("libout")).strip(true).try_compile("luamods").unwrap();
        let lib = arts.library.unwrap();
        assert_eq!(lib, root.join("libout/libluamods.a"));
        let data = fs::read(&lib).unwrap();
        let ar = ArchiveFile::parse(&*data).unwrap();
        let syms: Vec<_> = ar.symbols().unwrap().unwrap().map(|s| s.unwrap().name().to_vec()).collect();
        assert_eq!(syms, [&b"luaJIT_BC_foo"[..], b"luaJIT_BC_resty_core", b"luaJIT_BC_extra"]);
        assert!(BytecodeHeader::parse(&arts.modules[0].bytecode).unwrap().stripped());
        fs::remove_dir_all(&root).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn fake_luajit_errors() {
        let root = tmp("fake-errors");
        let lj = fake_luajit(&root, false);
        touch(&root, "lib/ok.lua");
        fs::write(root.join("lib/broken.lua"), "SYNTAX\n").unwrap();
        let mut b = Build::new();
        b.luajit(&lj).lua_path("/fake/src/?.lua").library_root(root.join("lib")).out_dir(root.join("out"));
        match b.try_objects().unwrap_err() {
            Error::Syntax { module, file, line, message } => {
                assert_eq!(module, "broken");
                assert_eq!(file, root.join("lib/broken.lua"));
                assert_eq!(line, 7);
                assert_eq!(message, "unexpected symbol near 'x'");
            }
            e => panic!("expected a syntax error, got {e}"),
        }

        fs::remove_file(root.join("lib/broken.lua")).unwrap();
        let e = b.clone().runtime_abi(RuntimeAbi::new(2, false)).try_objects().unwrap_err();
        assert!(matches!(e, Error::AbiMismatch { .. }), "{e}");

        let nondet = fake_luajit(&root, true);
        let e = b.clone().luajit(&nondet).try_objects().unwrap_err();
        assert!(matches!(e, Error::NonDeterministic { .. }), "{e}");
        assert!(e.to_string().contains("LUAJIT_SECURITY_PRNG=0"));
        b.clone().luajit(&nondet).require_deterministic(false).try_objects().unwrap();
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn manifest_format() {
        let info = LuajitInfo {
            version: "LuaJIT 2.1".into(),
            arch: "x64".into(),
            os: "Linux".into(),
            abi: RuntimeAbi::LUAJIT_2_1_GC64,
            has_chunk_name_flag: true,
            has_deterministic_flag: false,
            deterministic: true,
        };
        let m = ModuleArtifact {
            name: "a.b".into(),
            symbol: "luaJIT_BC_a_b".into(),
            source: "/src/a/b.lua".into(),
            chunk_path: "a/b.lua".into(),
            object: "/out/luaJIT_BC_a_b.o".into(),
            bytecode: vec![1, 2, 3],
            raw_file: None,
            c_file: None,
        };
        let t = manifest_text(&info, true, &[m]);
        assert!(t.ends_with("\na.b\tluaJIT_BC_a_b\tluaJIT_BC_a_b.o\t3\ta/b.lua\n"), "{t}");
        assert!(!t.contains("/src"), "no absolute paths: {t}");
    }
}
