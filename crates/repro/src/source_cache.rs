//! Verified source trees kept by tree hash, so a source fetched once on a machine never needs a
//! mirror again there, whichever checkout asks; and the same set as one deterministic archive
//! (`export` / `import`) for machines without any network.
//!
//! An entry is `blake3-<hex>.tar.gz`: the tree written by the deterministic tar writer, so an
//! entry's bytes depend on the tree alone, never on the mirror or archive format it came in.
//! Every use re-hashes the unpacked tree; an entry that no longer matches its name is removed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::archive;
use crate::error::{bail, Context, Error, Result};
use crate::tree::TreeHash;

/// The directory every entry's tree sits under inside its archive.
const TOP: &str = "tree";
/// The directory the entries sit under inside an export archive.
const EXPORT_TOP: &str = "sources";
/// gzip level of entries: fast, since entries are written on every first fetch.
const LEVEL: u32 = 6;

#[derive(Clone, Debug)]
pub struct SourceCache {
    dir: PathBuf,
}

/// What [`SourceCache::restore`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Restored {
    /// `dest` now holds the verified tree.
    Yes,
    /// No entry for that tree.
    Missing,
    /// The entry did not unpack to its tree (disk corruption, tampering); it was removed.
    Corrupt(String),
}

impl SourceCache {
    pub fn at(dir: impl Into<PathBuf>) -> SourceCache {
        SourceCache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_name(tree: &TreeHash) -> String {
        format!("blake3-{}.tar.gz", tree.to_hex())
    }

    pub fn entry(&self, tree: &TreeHash) -> PathBuf {
        self.dir.join(Self::entry_name(tree))
    }

    pub fn contains(&self, tree: &TreeHash) -> bool {
        self.entry(tree).is_file()
    }

    /// Unpacks the entry of `tree` into `dest` (which must not exist), verifying it.
    pub fn restore(&self, tree: &TreeHash, dest: &Path) -> Result<Restored> {
        let entry = self.entry(tree);
        if !entry.is_file() {
            return Ok(Restored::Missing);
        }
        let scratch = scratch_dir(dest, "cache");
        let result = verify_entry(&entry, &scratch, tree);
        let outcome = match result {
            Ok(root) => {
                fs::rename(&root, dest).context(|| format!("cannot move the verified tree to {}", dest.display()))?;
                Restored::Yes
            }
            Err(e) => {
                fs::remove_file(&entry).context(|| format!("cannot remove the corrupt cache entry {}", entry.display()))?;
                Restored::Corrupt(format!("{}: {e}; the entry was removed", entry.display()))
            }
        };
        let _ = fs::remove_dir_all(&scratch);
        Ok(outcome)
    }

    /// Keeps the verified tree at `tree_dir` (whose hash is `tree`).
    pub fn insert(&self, tree_dir: &Path, tree: &TreeHash) -> Result<()> {
        fs::create_dir_all(&self.dir).context(|| format!("cannot create the source cache {}", self.dir.display()))?;
        if self.contains(tree) {
            return Ok(());
        }
        archive::write_tar_gz_level(tree_dir, TOP, &self.entry(tree), 0, LEVEL)
    }

    /// Writes the entries of `trees` (all of which must be cached) as one deterministic tar.
    pub fn export(&self, trees: &[TreeHash], out: &Path) -> Result<()> {
        if let Some(tree) = trees.iter().find(|t| !self.contains(t)) {
            bail!("the source cache {} has no entry for {tree}: run `cargo xtask vendor` first", self.dir.display());
        }
        let mut names: Vec<String> = trees.iter().map(Self::entry_name).collect();
        names.sort();
        names.dedup();
        let tmp = out.with_extension(format!("tmp{}", std::process::id()));
        let result = (|| {
            let file = fs::File::create(&tmp).context(|| format!("cannot create {}", tmp.display()))?;
            let mut tar = tar::Builder::new(io::BufWriter::new(file));
            tar.mode(tar::HeaderMode::Deterministic);
            for name in &names {
                let path = self.dir.join(name);
                let meta = fs::metadata(&path).context(|| format!("cannot stat {}", path.display()))?;
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(meta.len());
                header.set_mtime(0);
                header.set_uid(0);
                header.set_gid(0);
                let file = fs::File::open(&path).context(|| format!("cannot open {}", path.display()))?;
                tar.append_data(&mut header, format!("{EXPORT_TOP}/{name}"), file).context(|| format!("cannot archive {}", path.display()))?;
            }
            let writer = tar.into_inner().context(|| format!("cannot finish {}", tmp.display()))?;
            writer.into_inner().map_err(|e| Error::with_source(format!("cannot finish {}", tmp.display()), e.into_error()))?;
            fs::rename(&tmp, out).context(|| format!("cannot write {}", out.display()))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Verifies every entry of an export archive, then adds them all; on any error nothing is
    /// added. Returns the trees the archive held.
    pub fn import(&self, archive_path: &Path) -> Result<Vec<TreeHash>> {
        fs::create_dir_all(&self.dir).context(|| format!("cannot create the source cache {}", self.dir.display()))?;
        let staging = self.dir.join(format!(".import-{}", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        let result = self.import_into(archive_path, &staging);
        let _ = fs::remove_dir_all(&staging);
        result
    }

    fn import_into(&self, archive_path: &Path, staging: &Path) -> Result<Vec<TreeHash>> {
        let what = archive_path.display();
        fs::create_dir_all(staging).context(|| format!("cannot create {}", staging.display()))?;
        let file = fs::File::open(archive_path).context(|| format!("cannot open {what}"))?;
        let mut tar = tar::Archive::new(io::BufReader::new(file));
        let mut staged = Vec::new();
        let entries = tar.entries().context(|| format!("{what} is not a source export archive (tar)"))?;
        for entry in entries {
            let mut entry = entry.context(|| format!("{what}: corrupt archive"))?;
            let path = entry.path().context(|| format!("{what}: an entry has an unreadable name"))?.into_owned();
            let name = path.display().to_string();
            let tree = path
                .strip_prefix(EXPORT_TOP)
                .ok()
                .and_then(|p| p.to_str())
                .and_then(|p| p.strip_prefix("blake3-"))
                .and_then(|p| p.strip_suffix(".tar.gz"))
                .and_then(|hex| format!("blake3:{hex}").parse::<TreeHash>().ok());
            let Some(tree) = tree.filter(|_| entry.header().entry_type().is_file()) else {
                if entry.header().entry_type().is_dir() && path == Path::new(EXPORT_TOP) {
                    continue;
                }
                bail!("{what}: entry {name:?} is not a source cache entry (expected {EXPORT_TOP}/blake3-<hex>.tar.gz): refusing the whole archive, nothing was imported");
            };
            let dest = staging.join(Self::entry_name(&tree));
            let mut out = fs::File::create(&dest).context(|| format!("cannot create {}", dest.display()))?;
            let expected = entry.header().size().context(|| format!("{what}: entry {name:?} has a corrupt header"))?;
            let copied = io::copy(&mut entry, &mut out).context(|| format!("{what}: entry {name:?} is truncated or corrupt"))?;
            if copied != expected {
                bail!("{what}: entry {name:?} is truncated ({copied} of {expected} bytes): refusing the whole archive, nothing was imported");
            }
            staged.push((name, tree, dest));
        }
        for (name, tree, dest) in &staged {
            let scratch = staging.join("verify");
            let verified = verify_entry(dest, &scratch, tree);
            let _ = fs::remove_dir_all(&scratch);
            verified.map_err(|e| Error::new(format!("{what}: entry {name:?}: {e}: refusing the whole archive, nothing was imported")))?;
        }
        for (_, tree, dest) in &staged {
            let entry = self.entry(tree);
            if !entry.is_file() {
                fs::rename(dest, &entry).context(|| format!("cannot add {}", entry.display()))?;
            }
        }
        Ok(staged.into_iter().map(|(_, tree, _)| tree).collect())
    }
}

/// Unpacks `entry` under `scratch` and checks that its tree hashes to `tree`; returns the
/// unpacked tree's directory.
fn verify_entry(entry: &Path, scratch: &Path, tree: &TreeHash) -> Result<PathBuf> {
    let _ = fs::remove_dir_all(scratch);
    archive::unpack(entry, scratch)?;
    let root = scratch.join(TOP);
    if !root.is_dir() {
        bail!("it holds no {TOP}/ directory");
    }
    let actual = TreeHash::of_dir(&root)?;
    if actual != *tree {
        bail!("its tree hashes to {actual}, not {tree}");
    }
    Ok(root)
}

fn scratch_dir(dest: &Path, label: &str) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{label}-{name}-{}", std::process::id()))
}
