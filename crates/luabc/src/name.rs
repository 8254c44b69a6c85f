//! Module names, file paths and LuaJIT symbol names.
//!
//! The symbol rule follows LuaJIT's `lib_package.c` (`mksymname`), which is what
//! `require` uses to find `luaJIT_BC_*` data through `dlsym`:
//!
//! 1. if the module name contains a `-`, everything up to and including the first
//!    `-` is dropped (Lua 5.1's `LUA_IGMARK`, used for versioned module names such
//!    as `v2-foo`);
//! 2. every `.` becomes `_`;
//! 3. the result is prefixed with `luaJIT_BC_`.
//!
//! Note that `luajit -b -n name` (jit/bcsave.lua) maps *both* `.` and `-` to `_` and
//! never drops the prefix, so for a name containing `-` it produces a symbol that
//! `require` would not look for. This crate follows `require`.

use std::fmt;
use std::path::{Component, Path};

use crate::Error;

/// Prefix of the data symbols LuaJIT's `require` looks for.
pub const SYMBOL_PREFIX: &str = "luaJIT_BC_";

/// A validated Lua module name, such as `resty.upstream.healthcheck`.
///
/// Valid names consist of non-empty `.`-separated components made of ASCII
/// letters, digits, `_` and `-`. Because the name ends up in a C symbol, the part
/// after the first `-` (the part LuaJIT turns into the symbol) must not contain
/// another `-`. Leading digits are allowed: the symbol always starts with
/// `luaJIT_BC_`, so `3rdparty.x` still gives a valid C identifier.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModuleName(String);

impl ModuleName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<ModuleName, Error> {
        let bad = |reason: String| Error::InvalidModuleName { name: name.to_string(), reason };
        if name.is_empty() {
            return Err(bad("the name is empty".into()));
        }
        if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
            return Err(bad(format!("character {c:?} cannot be part of a C symbol; use only ASCII letters, digits, `_`, `.` and `-`")));
        }
        for comp in name.split('.') {
            if comp.is_empty() {
                return Err(bad("it has an empty component (a leading, trailing or doubled `.`)".into()));
            }
        }
        if let Some((_, tail)) = name.split_once('-') {
            if tail.is_empty() || tail.starts_with('.') {
                return Err(bad(format!("LuaJIT derives the symbol from the part after the first `-`, which is {tail:?} here; it must be a module name")));
            }
            if tail.contains('-') {
                return Err(bad(format!(
                    "LuaJIT derives the symbol from the part after the first `-` ({tail:?}), and a second `-` cannot be part of a C symbol"
                )));
            }
        }
        Ok(ModuleName(name.to_string()))
    }

    /// Derives the module name from a path relative to a library root:
    /// `resty/upstream/healthcheck.lua` gives `resty.upstream.healthcheck` and
    /// `foo/init.lua` gives `foo` (LuaJIT's default `package.path` has `?/init.lua`).
    ///
    /// Directory names and the file stem may not contain `.`, since `require` would
    /// never find such a file.
    pub fn from_relative_path(rel: &Path) -> Result<ModuleName, Error> {
        let bad = |reason: &str| Error::InvalidModulePath { path: rel.to_path_buf(), reason: reason.to_string() };
        let mut parts = Vec::new();
        for comp in rel.components() {
            match comp {
                Component::Normal(s) => match s.to_str() {
                    Some(s) => parts.push(s),
                    None => return Err(bad("the path is not valid UTF-8")),
                },
                Component::CurDir => {}
                _ => return Err(bad("the path must be relative to the library root, without `..` or a root")),
            }
        }
        let file = parts.pop().ok_or_else(|| bad("the path is empty"))?;
        let stem = file.strip_suffix(".lua").ok_or_else(|| bad("the file name does not end in `.lua`"))?;
        if stem != "init" || parts.is_empty() {
            parts.push(stem);
        }
        if parts.iter().any(|p| p.contains('.')) {
            return Err(bad("a directory name or file stem contains `.`; `require` maps `.` to `/`, so it could never load this file"));
        }
        let name = parts.join(".");
        ModuleName::new(&name).map_err(|e| match e {
            Error::InvalidModuleName { reason, .. } => {
                Error::InvalidModulePath { path: rel.to_path_buf(), reason: format!("it maps to module name {name:?}, which is invalid: {reason}") }
            }
            other => other,
        })
    }

    /// The module name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part LuaJIT uses for the symbol: after the first `-`, if any.
    fn symbol_part(&self) -> &str {
        match self.0.split_once('-') {
            Some((_, tail)) => tail,
            None => &self.0,
        }
    }

    /// The data symbol `require` looks for, e.g. `luaJIT_BC_resty_upstream_healthcheck`.
    pub fn symbol(&self) -> String {
        format!("{SYMBOL_PREFIX}{}", self.symbol_part().replace('.', "_"))
    }

    /// The relative file path this module would have under a library root
    /// (`a.b` -> `a/b.lua`); used for the chunk name of explicitly added modules.
    pub fn default_relative_path(&self) -> String {
        format!("{}.lua", self.0.replace('.', "/"))
    }
}

impl fmt::Display for ModuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Module name for a path relative to a library root; see
/// [`ModuleName::from_relative_path`].
pub fn module_name_from_path(rel: impl AsRef<Path>) -> Result<ModuleName, Error> {
    ModuleName::from_relative_path(rel.as_ref())
}

/// The `luaJIT_BC_*` symbol LuaJIT's `require` looks up for module `name`.
pub fn symbol_for_module(name: &str) -> Result<String, Error> {
    Ok(ModuleName::new(name)?.symbol())
}

/// Is `s` a valid C identifier (ASCII only)?
pub(crate) fn is_c_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(p: &str) -> String {
        module_name_from_path(p).unwrap().to_string()
    }

    #[test]
    fn path_to_name() {
        assert_eq!(name("resty/upstream/healthcheck.lua"), "resty.upstream.healthcheck");
        assert_eq!(name("foo/init.lua"), "foo");
        assert_eq!(name("a/b/init.lua"), "a.b");
        assert_eq!(name("init.lua"), "init");
        assert_eq!(name("./x.lua"), "x");
        assert_eq!(name("ngx/re.lua"), "ngx.re");
    }

    #[test]
    fn bad_paths() {
        for p in ["", "foo.txt", "foo/bar.baz.lua", "a.b/c.lua", "../x.lua", "/abs/x.lua", "a b/c.lua", "x$.lua", "a/.lua"] {
            let e = module_name_from_path(p).unwrap_err();
            assert!(matches!(e, Error::InvalidModulePath { .. }), "{p}: {e}");
            assert!(e.to_string().contains(p), "{e}");
        }
    }

    #[test]
    fn name_to_symbol() {
        let s = |n: &str| symbol_for_module(n).unwrap();
        assert_eq!(s("resty.upstream.healthcheck"), "luaJIT_BC_resty_upstream_healthcheck");
        assert_eq!(s("foo"), "luaJIT_BC_foo");
        assert_eq!(s("a_b.c"), "luaJIT_BC_a_b_c");
        // lib_package.c: only the part after the first hyphen is used.
        assert_eq!(s("v2-foo.bar"), "luaJIT_BC_foo_bar");
        assert_eq!(s("a.b-c.d"), "luaJIT_BC_c_d");
        // Leading digits are harmless behind the prefix.
        assert_eq!(s("3rd.party"), "luaJIT_BC_3rd_party");
        for n in ["foo", "v2-foo.bar", "3rd.party"] {
            assert!(is_c_identifier(&s(n)));
        }
    }

    #[test]
    fn bad_names() {
        for n in ["", ".", "a.", ".a", "a..b", "a/b", "a b", "a\u{e9}", "a$b", "a-", "a-.b", "a-b-c", "a:b"] {
            let e = ModuleName::new(n).unwrap_err();
            assert!(matches!(e, Error::InvalidModuleName { .. }), "{n:?}: {e}");
        }
        let e = ModuleName::new("a..b").unwrap_err().to_string();
        assert!(e.contains("\"a..b\"") && e.contains("empty component"), "{e}");
    }

    #[test]
    fn default_path() {
        assert_eq!(ModuleName::new("a.b.c").unwrap().default_relative_path(), "a/b/c.lua");
    }

    #[test]
    fn c_identifier() {
        assert!(is_c_identifier("_a1"));
        assert!(!is_c_identifier("1a"));
        assert!(!is_c_identifier(""));
        assert!(!is_c_identifier("a-b"));
    }
}
