//! A step's derivation: every input that can change its output, written down. The step's key
//! is the hash of this record, which is stored beside the output, so a key can always be
//! explained, and two keys compared input by input (the way nix-diff compares derivations).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};

/// Bumped whenever the meaning of a field changes, so old store entries never match.
pub const FORMAT: u32 = 2;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Derivation {
    pub format: u32,
    pub name: String,
    /// Values the output depends on: flags, tool versions, SOURCE_DATE_EPOCH.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// Source trees by mount point, as tree hashes.
    #[serde(default)]
    pub sources: BTreeMap<String, String>,
    /// Other steps by mount point.
    #[serde(default)]
    pub deps: BTreeMap<String, DepRef>,
    /// Files written before the commands run, by path.
    #[serde(default)]
    pub files: BTreeMap<String, FileRef>,
    /// The environment of every command (it starts cleared).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub commands: Vec<CommandRecord>,
    /// The Rust code that runs inside the step (the executor, writers called after the
    /// commands), by source file and content hash.
    #[serde(default)]
    pub code: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepRef {
    pub name: String,
    pub key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// `blake3:<hex>` of the contents.
    pub contents: String,
    pub executable: bool,
    /// Whether `{build}` and `{out}` in it are expanded when it is written.
    pub template: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub cwd: String,
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl Derivation {
    /// The record as TOML: the bytes the key hashes.
    pub fn to_toml(&self) -> String {
        toml_edit::ser::to_string_pretty(self).expect("a derivation is plain data")
    }

    pub fn from_toml(text: &str) -> Result<Derivation> {
        toml_edit::de::from_str(text).map_err(|e| Error::with_source("not a derivation", e))
    }

    pub fn read(path: &Path) -> Result<Derivation> {
        let text = fs::read_to_string(path).context(|| format!("cannot read {}", path.display()))?;
        Derivation::from_toml(&text).map_err(|e| Error::new(format!("{}: {e}", path.display())))
    }

    /// The step's key: the first 128 bits of the blake3 hash of [`Derivation::to_toml`].
    pub fn key(&self) -> String {
        blake3::hash(self.to_toml().as_bytes()).to_hex()[..32].to_owned()
    }
}

/// One way two derivations differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// Where: `inputs.SOURCE_DATE_EPOCH`, `files."lua/x.lua"`, `deps.nginx` …
    pub field: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.before, &self.after) {
            (Some(a), Some(b)) => write!(f, "{}: {a} → {b}", self.field),
            (Some(a), None) => write!(f, "{}: {a} → (absent)", self.field),
            (None, Some(b)) => write!(f, "{}: (absent) → {b}", self.field),
            (None, None) => write!(f, "{}", self.field),
        }
    }
}

/// The fields in which `a` and `b` differ, each map compared key by key. Dependencies that
/// differ are listed here by key; [`explain_diff`] descends into them.
pub fn diff(a: &Derivation, b: &Derivation) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut scalar = |field: &str, x: String, y: String| {
        if x != y {
            out.push(Difference { field: field.to_owned(), before: Some(x), after: Some(y) });
        }
    };
    scalar("format", a.format.to_string(), b.format.to_string());
    scalar("name", a.name.clone(), b.name.clone());
    map_diff(&mut out, "inputs", &a.inputs, &b.inputs, |v| v.clone());
    map_diff(&mut out, "sources", &a.sources, &b.sources, |v| v.clone());
    map_diff(&mut out, "deps", &a.deps, &b.deps, |d| format!("{}-{}", d.name, d.key));
    map_diff(&mut out, "files", &a.files, &b.files, |f| {
        format!("{}{}{}", f.contents, if f.executable { " (executable)" } else { "" }, if f.template { " (template)" } else { "" })
    });
    map_diff(&mut out, "env", &a.env, &b.env, |v| v.clone());
    map_diff(&mut out, "code", &a.code, &b.code, |v| v.clone());
    let n = a.commands.len().max(b.commands.len());
    for i in 0..n {
        let show = |c: Option<&CommandRecord>| c.map(|c| format!("(cd {}; {})", c.cwd, c.argv.join(" ")));
        let (x, y) = (a.commands.get(i), b.commands.get(i));
        if x != y {
            out.push(Difference { field: format!("commands[{i}]"), before: show(x), after: show(y) });
        }
    }
    out
}

fn map_diff<V: PartialEq>(out: &mut Vec<Difference>, section: &str, a: &BTreeMap<String, V>, b: &BTreeMap<String, V>, show: impl Fn(&V) -> String) {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let (x, y) = (a.get(k), b.get(k));
        if x != y {
            out.push(Difference { field: format!("{section}.{k:?}"), before: x.map(&show), after: y.map(&show) });
        }
    }
}

/// Explains why `a` and `b` have different keys, descending into dependencies that differ
/// (looked up with `lookup(name, key)`), as indented text. Empty when they are the same.
pub fn explain_diff(a: &Derivation, b: &Derivation, lookup: &dyn Fn(&str, &str) -> Option<Derivation>) -> String {
    let mut text = String::new();
    explain_into(&mut text, a, b, lookup, 0);
    text
}

fn explain_into(text: &mut String, a: &Derivation, b: &Derivation, lookup: &dyn Fn(&str, &str) -> Option<Derivation>, depth: usize) {
    let pad = "  ".repeat(depth);
    let differences = diff(a, b);
    if differences.is_empty() {
        return;
    }
    let _ = writeln!(text, "{pad}step {}: {} → {}", a.name, a.key(), b.key());
    for d in differences {
        let _ = writeln!(text, "{pad}  {d}");
        if let Some(mount) = d.field.strip_prefix("deps.") {
            let mount = mount.trim_matches('"');
            if let (Some(x), Some(y)) = (a.deps.get(mount), b.deps.get(mount)) {
                match (lookup(&x.name, &x.key), lookup(&y.name, &y.key)) {
                    (Some(dx), Some(dy)) => explain_into(text, &dx, &dy, lookup, depth + 2),
                    _ => {
                        let _ = writeln!(text, "{pad}    (the derivations of {} are not both at hand)", x.name);
                    }
                }
            }
        }
    }
}
