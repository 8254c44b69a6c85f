//! The canonical hash of an unpacked source tree.
//!
//! Only what a build can observe is hashed: relative names (sorted bytewise), file bytes, the
//! executable bit, and symlink targets. Times, owners, other permission bits and the name of the
//! top directory are left out, so a `.tar.gz`, a `.tar.xz` repack and a `.deb` holding the same
//! files verify against one pin.

use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::str::FromStr;

use crate::error::{bail, Context, Error, Result};

const PREFIX: &str = "blake3:";

/// `blake3:<64 hex digits>`: the hash of a tree in its canonical form.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TreeHash([u8; 32]);

impl TreeHash {
    pub fn of_dir(root: &Path) -> Result<TreeHash> {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"repro-tree-v1\0");
        hash_dir(root, Path::new(""), &mut hasher)?;
        Ok(TreeHash(*hasher.finalize().as_bytes()))
    }

    /// The hash of [`TreeHash::of_dir`] extended to `len` bytes (BLAKE3 is an extendable-output
    /// function: the first 32 bytes are the tree hash itself), for formats that want longer
    /// BLAKE3 digests.
    pub fn extended_of_dir(root: &Path, len: usize) -> Result<Vec<u8>> {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"repro-tree-v1\0");
        hash_dir(root, Path::new(""), &mut hasher)?;
        let mut out = vec![0; len];
        hasher.finalize_xof().fill(&mut out);
        Ok(out)
    }

    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

fn hash_dir(root: &Path, rel: &Path, hasher: &mut blake3::Hasher) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .context(|| format!("cannot list {}", dir.display()))?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .context(|| format!("cannot list {}", dir.display()))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path).context(|| format!("cannot stat {}", path.display()))?;
        let kind = meta.file_type();
        // Length-prefixed fields keep the encoding unambiguous whatever bytes names hold.
        let field = |hasher: &mut blake3::Hasher, bytes: &[u8]| {
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        if kind.is_symlink() {
            let target = fs::read_link(&path).context(|| format!("cannot read link {}", path.display()))?;
            hasher.update(b"L");
            field(hasher, rel.as_os_str().as_bytes());
            field(hasher, target.as_os_str().as_bytes());
        } else if kind.is_dir() {
            hasher.update(b"D");
            field(hasher, rel.as_os_str().as_bytes());
            hash_dir(root, &rel, hasher)?;
        } else if kind.is_file() {
            let executable = meta.permissions().mode() & 0o111 != 0;
            hasher.update(if executable { b"X" } else { b"F" });
            field(hasher, rel.as_os_str().as_bytes());
            hasher.update(&meta.len().to_le_bytes());
            let mut file = fs::File::open(&path).context(|| format!("cannot open {}", path.display()))?;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = file.read(&mut buf).context(|| format!("cannot read {}", path.display()))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
        } else {
            bail!("{}: only files, directories and symlinks can be part of a source tree", path.display());
        }
    }
    Ok(())
}

impl fmt::Display for TreeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.to_hex())
    }
}

impl fmt::Debug for TreeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for TreeHash {
    type Err = Error;
    fn from_str(s: &str) -> Result<TreeHash> {
        let hex = s.strip_prefix(PREFIX).ok_or_else(|| Error::new(format!("tree hash {s:?} must start with {PREFIX:?}")))?;
        let hash = blake3::Hash::from_hex(hex).map_err(|_| Error::new(format!("tree hash {s:?} must be {PREFIX} and 64 hex digits")))?;
        Ok(TreeHash(*hash.as_bytes()))
    }
}
