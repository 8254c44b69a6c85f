//! Compile Lua modules to LuaJIT bytecode and package them for linking.
//!
//! Each module becomes an ELF relocatable object defining the global data symbol
//! LuaJIT's `require` looks for (`luaJIT_BC_<name>`, see [`ModuleName::symbol`]),
//! like `luajit -b -t o` does. [`Build`] turns a set of modules into such objects
//! plus a manifest ([`Build::try_objects`]), or into one static library
//! ([`Build::try_compile`]), optionally with a generated C function that registers
//! every module in `package.preload` (for programs where `require` cannot find
//! symbols through `dlsym`, e.g. fully static ones).
//!
//! Bytecode comes from a `luajit` executable you supply (`luajit -b -t raw`, run
//! with a cleared environment). The chunk name recorded in it is
//! `@<path relative to the library root>` (e.g. `@resty/core.lua`), never a build
//! path, so output is reproducible; the build fails if the luajit cannot dump
//! deterministically (see [`Build::require_deterministic`]).
//!
//! # build.rs example
//!
//! ```no_run
//! // build.rs
//! let arts = luabc::Build::new()
//!     .luajit("/opt/luajit/bin/luajit")
//!     .lua_path("/opt/luajit/src") // directory holding jit/bcsave.lua
//!     .library_root("lua") // lua/greeting.lua -> require "greeting"
//!     .strip(false) // keep line numbers
//!     .preload_function("luabc_preload_all")
//!     .lua_include_dir("/opt/luajit/include/luajit-2.1")
//!     .cargo_metadata(true) // rerun-if-changed, rustc-link-lib=static=luamods
//!     .compile("luamods");
//! for m in &arts.modules {
//!     println!("cargo:warning={} -> {} ({})", m.name, m.symbol, m.object.display());
//! }
//! ```
//!
//! Link LuaJIT itself after this library. Without the preload function, `require`
//! finds modules through `dlsym`: link with [`Build::whole_archive`] and export the
//! symbols (`-Wl,-E`). [`RuntimeAbi`] checks catch dump-format and GC64 mismatches,
//! not different LuaJIT commits: compile with the LuaJIT tree you run.
//!
//! Cross builds: [`Build::runtime_library`] names the LuaJIT static library the objects
//! are linked with; they are written for its machine, and an explicit [`Build::arch`] of
//! another machine is refused ([`Error::ArchMismatch`]). A luajit built for the target runs
//! through [`Build::runner`] (e.g. `qemu-aarch64-static`).
//!
//! For tools (no cargo output), [`Build::try_objects`] writes `<symbol>.o` files and
//! a manifest ([`MANIFEST_FILE`]) to a directory. The pieces are usable on their own:
//! [`module_name_from_path`], [`symbol_for_module`], [`BytecodeHeader`],
//! [`RuntimeAbi`], [`Luajit::probe`], [`elf_object`], [`c_source`],
//! [`preload_c_source`] and [`write_archive`].

mod archive;
mod builder;
mod error;
mod header;
mod luajit;
mod name;
mod output;

pub use archive::{write_archive, ArchiveMember};
pub use builder::{Artifacts, Build, ModuleArtifact, MANIFEST_FILE};
pub use error::Error;
pub use header::{BytecodeHeader, RuntimeAbi, FLAG_BE, FLAG_FFI, FLAG_FR2, FLAG_STRIP};
pub use luajit::{CompileInput, Luajit, LuajitInfo};
pub use name::{module_name_from_path, symbol_for_module, ModuleName, SYMBOL_PREFIX};
pub use output::{c_source, elf_object, preload_c_source, Arch, PreloadEntry};

/// This crate's own sources, by path: what a build system keys on when bytecode objects are
/// among its cached outputs (a change to the object or archive writer changes its outputs).
pub const SOURCES: &[(&str, &[u8])] = &[
    ("luabc/src/archive.rs", include_bytes!("archive.rs")),
    ("luabc/src/builder.rs", include_bytes!("builder.rs")),
    ("luabc/src/header.rs", include_bytes!("header.rs")),
    ("luabc/src/luajit.rs", include_bytes!("luajit.rs")),
    ("luabc/src/name.rs", include_bytes!("name.rs")),
    ("luabc/src/output.rs", include_bytes!("output.rs")),
];

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
