use std::fmt;
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in this crate. Messages say what failed, where,
/// and, where there is one, what to do about it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A module name that cannot be a LuaJIT bytecode symbol.
    InvalidModuleName { name: String, reason: String },
    /// A file under a library root (or given as a relative path) that has no valid module name.
    InvalidModulePath { path: PathBuf, reason: String },
    /// The same module name was added twice.
    DuplicateModule { name: String, first: PathBuf, second: PathBuf },
    /// Two different module names map to the same symbol (e.g. `a.b` and `a_b`).
    SymbolCollision { symbol: String, first: String, second: String },
    /// The builder was not configured completely or consistently.
    Config(String),
    /// A file system operation failed.
    Io { action: String, path: PathBuf, source: io::Error },
    /// The luajit child process could not be started or failed in an unexpected way.
    Luajit { command: String, detail: String },
    /// The Lua source did not compile.
    Syntax { module: String, file: PathBuf, line: u32, message: String },
    /// Bytes that are not a LuaJIT bytecode dump this crate understands.
    BadHeader(String),
    /// Bytecode that the target runtime would refuse to load.
    AbiMismatch { what: String, bytecode: String, runtime: String },
    /// Objects requested for one machine, linked with a runtime library of another.
    ArchMismatch { objects: crate::Arch, runtime: crate::Arch, library: PathBuf },
    /// The luajit used for compiling does not produce reproducible bytecode.
    NonDeterministic { luajit: PathBuf },
    /// The generated preload registration C file failed to compile.
    Cc(String),
}

impl Error {
    pub(crate) fn io(action: impl Into<String>, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io { action: action.into(), path: path.into(), source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidModuleName { name, reason } => {
                write!(f, "invalid Lua module name {name:?}: {reason}")
            }
            Error::InvalidModulePath { path, reason } => write!(
                f,
                "cannot derive a Lua module name from {}: {reason} (rename the file, or add it with an explicit name via Build::module)",
                path.display()
            ),
            Error::DuplicateModule { name, first, second } => write!(
                f,
                "module {name:?} is defined twice: by {} and by {} (remove one, e.g. `{name}.lua` vs `{name}/init.lua`)",
                first.display(),
                second.display()
            ),
            Error::SymbolCollision { symbol, first, second } => write!(
                f,
                "modules {first:?} and {second:?} both map to the LuaJIT symbol {symbol} (LuaJIT turns `.` into `_` and drops everything up to the first `-`); rename one of them"
            ),
            Error::Config(msg) => write!(f, "luabc: {msg}"),
            Error::Io { action, path, source } => {
                write!(f, "failed to {action} {}: {source}", path.display())
            }
            Error::Luajit { command, detail } => write!(f, "luajit failed: {detail}\n  command: {command}"),
            Error::Syntax { module, file, line, message } => write!(
                f,
                "{}:{line}: Lua syntax error in module {module:?}: {message}",
                file.display()
            ),
            Error::BadHeader(msg) => write!(f, "not usable LuaJIT bytecode: {msg}"),
            Error::AbiMismatch { what, bytecode, runtime } => write!(
                f,
                "bytecode would not load on the target LuaJIT: {what} is {bytecode} in the bytecode but the runtime expects {runtime}; compile with a luajit built like the runtime (same version and GC64 setting)"
            ),
            Error::ArchMismatch { objects, runtime, library } => write!(
                f,
                "bytecode objects for {objects:?} cannot be linked with the {runtime:?} LuaJIT runtime {}: leave Build::arch unset to follow the runtime library, or give the runtime of the machine the program is for",
                library.display()
            ),
            Error::NonDeterministic { luajit } => write!(
                f,
                "{} produces different bytecode for the same source in different runs (its string hash seed is random, so table constants are dumped in varying order). \
                 Use a luajit whose `-b` supports `-d` (deterministic), or build the compiling luajit with XCFLAGS=-DLUAJIT_SECURITY_PRNG=0 \
                 (the bytecode still loads in a normally built runtime), or accept non-reproducible output with Build::require_deterministic(false)",
                luajit.display()
            ),
            Error::Cc(msg) => write!(f, "failed to compile the generated preload C file: {msg}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
