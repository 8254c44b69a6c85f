//! Pins: which sources a build uses, the hash of each unpacked tree, and where to fetch it.
//!
//! ```toml
//! [nginx]
//! version = "1.22.1"
//! tree = "blake3:…"
//! mirrors = [
//!   { debian-source = "nginx", file = "nginx_1.22.1.orig.tar.gz", root = "nginx-1.22.1" },
//!   { url = "https://nginx.org/download/nginx-1.22.1.tar.gz", root = "nginx-1.22.1" },
//! ]
//! ```
//! The file is edited with `toml_edit`, so comments and order survive `cargo xtask pin`.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use toml_edit::{Array, DocumentMut, InlineTable, Item, Table, TableLike};

use crate::error::{bail, Context, Error, Result};
use crate::tree::TreeHash;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub name: String,
    pub version: String,
    pub tree: TreeHash,
    /// Tried in order; never part of any cache key.
    pub mirrors: Vec<Mirror>,
    /// The directory relative `file` and `dir` mirrors are relative to (the lockfile's).
    pub base: PathBuf,
}

impl Pin {
    /// A local mirror's path as the filesystem sees it.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.base.join(path)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    pub kind: MirrorKind,
    /// The directory inside the archive that is the tree (`""`: the archive's root).
    pub root: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MirrorKind {
    Url(String),
    /// A file of a Debian source package, `package` or `package=version`.
    DebianSource {
        package: String,
        file: String,
    },
    /// A Debian binary package, `package` or `package=version`.
    DebianBinary {
        package: String,
    },
    /// An archive on the local disk, as written (relative to the lockfile's directory).
    File(PathBuf),
    /// A folder of archives by file name, like a distdir: `file`, or else the file names the
    /// pin's other mirrors give (each with that mirror's `root`).
    Dir {
        path: PathBuf,
        file: Option<String>,
    },
}

impl fmt::Display for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            MirrorKind::Url(url) => write!(f, "url {url}"),
            MirrorKind::DebianSource { package, file } => {
                write!(f, "Debian source package {package}, file {file}")
            }
            MirrorKind::DebianBinary { package } => write!(f, "Debian binary package {package}"),
            MirrorKind::File(path) => write!(f, "local file {}", path.display()),
            MirrorKind::Dir { path, file: Some(file) } => write!(f, "local directory {}, file {file}", path.display()),
            MirrorKind::Dir { path, file: None } => write!(f, "local directory {}", path.display()),
        }
    }
}

pub struct Lockfile {
    path: PathBuf,
    doc: DocumentMut,
}

impl Lockfile {
    pub fn open(path: &Path) -> Result<Lockfile> {
        let text = fs::read_to_string(path).context(|| format!("cannot read lockfile {}", path.display()))?;
        let doc: DocumentMut = text.parse().context(|| format!("{} is not valid TOML", path.display()))?;
        Ok(Lockfile { path: path.to_path_buf(), doc })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn pins(&self) -> Result<Vec<Pin>> {
        self.doc.iter().map(|(name, item)| self.parse_pin(name, item)).collect()
    }

    pub fn pin(&self, name: &str) -> Result<Pin> {
        match self.doc.get(name) {
            Some(item) => self.parse_pin(name, item),
            None => bail!("{}: no pin named {name:?}", self.path.display()),
        }
    }

    fn parse_pin(&self, name: &str, item: &Item) -> Result<Pin> {
        let at = || format!("{} [{name}]", self.path.display());
        let table = item.as_table_like().ok_or_else(|| Error::new(format!("{}: must be a table", at())))?;
        let string = |key: &str| -> Result<String> {
            match table.get(key).and_then(Item::as_str) {
                Some(s) => Ok(s.to_owned()),
                None => bail!("{}: missing string field `{key}`", at()),
            }
        };
        let tree = string("tree")?.parse().context(at)?;
        let mirrors = match table.get("mirrors").and_then(Item::as_array) {
            Some(array) => array
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let m = m.as_inline_table().ok_or_else(|| Error::new(format!("{}: mirror {} must be an inline table", at(), i + 1)))?;
                    parse_mirror(m).map_err(|e| Error::new(format!("{}: mirror {}: {e}", at(), i + 1)))
                })
                .collect::<Result<Vec<_>>>()?,
            None => bail!("{}: missing array `mirrors`", at()),
        };
        if mirrors.is_empty() {
            bail!("{}: needs at least one mirror", at());
        }
        let base = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Ok(Pin { name: name.to_owned(), version: string("version")?, tree, mirrors, base })
    }

    /// Sets a pin's version and tree hash and puts `mirror` first in its list (once).
    pub fn set_pin(&mut self, name: &str, version: &str, tree: TreeHash, mirror: &Mirror) -> Result<()> {
        if self.doc.get(name).is_none() {
            self.doc.insert(name, Item::Table(Table::new()));
        }
        let table = self.doc[name].as_table_like_mut().ok_or_else(|| Error::new(format!("{} [{name}]: must be a table", self.path.display())))?;
        set_value(table, "version", version.into());
        set_value(table, "tree", tree.to_string().into());
        let mut mirrors = table.get("mirrors").and_then(Item::as_array).cloned().unwrap_or_else(Array::new);
        mirrors.retain(|m| m.as_inline_table().and_then(|t| parse_mirror(t).ok()).as_ref() != Some(mirror));
        mirrors.insert_formatted(0, toml_edit::Value::InlineTable(mirror_table(mirror)));
        for m in mirrors.iter_mut() {
            m.decor_mut().set_prefix("\n  ");
        }
        mirrors.set_trailing_comma(true);
        mirrors.set_trailing("\n");
        set_value(table, "mirrors", toml_edit::Value::Array(mirrors));
        Ok(())
    }

    pub fn save(&self) -> Result<()> {
        let tmp = self.path.with_extension("toml.tmp");
        fs::write(&tmp, self.doc.to_string()).context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, &self.path).context(|| format!("cannot replace {}", self.path.display()))
    }
}

/// Replaces a value keeping the comments and spacing around it (`insert` would drop them).
fn set_value(table: &mut dyn TableLike, key: &str, new: toml_edit::Value) {
    match table.get_mut(key) {
        Some(item) => {
            let decor = item.as_value().map(|v| v.decor().clone());
            *item = Item::Value(new);
            if let (Some(decor), Some(v)) = (decor, item.as_value_mut()) {
                *v.decor_mut() = decor;
            }
        }
        None => {
            table.insert(key, Item::Value(new));
        }
    }
}

fn parse_mirror(table: &InlineTable) -> Result<Mirror> {
    let get = |key: &str| table.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let root = get("root").unwrap_or_default();
    let kind = if let Some(url) = get("url") {
        MirrorKind::Url(url)
    } else if let Some(package) = get("debian-source") {
        let file = get("file").ok_or_else(|| Error::new("a debian-source mirror needs `file`"))?;
        MirrorKind::DebianSource { package, file }
    } else if let Some(package) = get("debian-binary") {
        MirrorKind::DebianBinary { package }
    } else if let Some(dir) = get("dir") {
        MirrorKind::Dir { path: PathBuf::from(dir), file: get("file") }
    } else if let Some(file) = get("file") {
        MirrorKind::File(PathBuf::from(file))
    } else {
        bail!("needs one of `url`, `debian-source`, `debian-binary`, `file` or `dir`")
    };
    Ok(Mirror { kind, root })
}

fn mirror_table(mirror: &Mirror) -> InlineTable {
    let mut t = InlineTable::new();
    match &mirror.kind {
        MirrorKind::Url(url) => {
            t.insert("url", url.as_str().into());
        }
        MirrorKind::DebianSource { package, file } => {
            t.insert("debian-source", package.as_str().into());
            t.insert("file", file.as_str().into());
        }
        MirrorKind::DebianBinary { package } => {
            t.insert("debian-binary", package.as_str().into());
        }
        MirrorKind::File(path) => {
            t.insert("file", path.display().to_string().into());
        }
        MirrorKind::Dir { path, file } => {
            t.insert("dir", path.display().to_string().into());
            if let Some(file) = file {
                t.insert("file", file.as_str().into());
            }
        }
    }
    if !mirror.root.is_empty() {
        t.insert("root", mirror.root.as_str().into());
    }
    t
}
