//! Making `<vendor>/<name>-<version>` hold exactly a pin's tree: from what is already there,
//! from the source cache, or from the first mirror candidate that unpacks to the pinned tree.
//! Also: trying every mirror of a pin to see which still serve it.

use std::fs;
use std::path::{Path, PathBuf};

use crate::archive;
use crate::error::{bail, Context, Error, Result};
use crate::fetch::{Candidate, Failure, Fetcher, MirrorError};
use crate::lock::FileLock;
use crate::lockfile::{Mirror, Pin};
use crate::source_cache::Restored;
use crate::tree::TreeHash;

/// A tree that matches its pin, and where it came from.
#[derive(Clone, Debug)]
pub struct Verified {
    pub path: PathBuf,
    pub tree: TreeHash,
    /// Where the tree came from, as recorded beside it when it was fetched.
    pub origin: Option<String>,
    /// `true` when this call put it there, `false` when it was already there.
    pub fetched: bool,
}

/// Where a restored tree came from, in the words of [`Verified::origin`].
pub const FROM_CACHE: &str = "the local source cache";

/// Makes `<dir>/<name>-<version>` hold exactly the pinned tree: kept when it already matches,
/// else restored from the source cache, else fetched from the first mirror candidate that
/// yields a matching tree (which then enters the cache). Nothing is left behind when every
/// mirror fails. `offline` forbids mirrors, not the cache.
pub fn vendor(pin: &Pin, dir: &Path, fetcher: &Fetcher, offline: bool) -> Result<Verified> {
    fs::create_dir_all(dir).context(|| format!("cannot create {}", dir.display()))?;
    let dest = dir.join(format!("{}-{}", pin.name, pin.version));
    let origin_file = dir.join(format!("{}-{}.origin", pin.name, pin.version));
    let _lock = FileLock::acquire(&dir.join(format!(".{}.lock", pin.name)))?;
    let mut notes = Vec::new();
    if dest.exists() {
        let tree = TreeHash::of_dir(&dest)?;
        if tree == pin.tree {
            let origin = fs::read_to_string(&origin_file).ok().map(|s| s.trim().to_owned());
            keep_in_caches(fetcher, &dest, &tree)?;
            return Ok(Verified { path: dest, tree, origin, fetched: false });
        }
        notes.push(format!("  - {} held a different tree ({tree}); it was removed", dest.display()));
        fs::remove_dir_all(&dest).context(|| format!("cannot remove stale {}", dest.display()))?;
    }
    if let Some(verified) = from_source_cache(pin, &dest, &origin_file, fetcher, &mut notes)? {
        return Ok(verified);
    }
    if offline {
        bail!(
            "{} {}: not in {} nor in the source cache, and --offline forbids fetching it; run `cargo xtask vendor` with access to a mirror, or `cargo xtask vendor --import FILE`{}",
            pin.name,
            pin.version,
            dir.display(),
            notes.iter().map(|n| format!("\n{n}")).collect::<String>()
        );
    }
    for mirror in &pin.mirrors {
        match fetch_from_mirror(pin, mirror, fetcher, dir, Some(&dest)) {
            Ok(Probe::Serves(candidate)) => {
                let origin = candidate.what;
                fs::write(&origin_file, format!("{origin}\n")).context(|| format!("cannot write {}", origin_file.display()))?;
                keep_in_caches(fetcher, &dest, &pin.tree)?;
                return Ok(Verified { path: dest, tree: pin.tree, origin: Some(origin), fetched: true });
            }
            Ok(Probe::Different(candidate, actual)) => notes.push(format!(
                "  - {}: tree hash mismatch: expected {}, got {actual}; the download is corrupt or the pin is wrong (if the new contents are trusted, re-pin with `cargo xtask pin`)",
                candidate.what, pin.tree
            )),
            Err(e) => notes.push(format!("  - {mirror}: {}", e.error)),
        }
    }
    Err(Error::new(format!("{} {}: no mirror gave the pinned tree {}:\n{}", pin.name, pin.version, pin.tree, notes.join("\n"))))
}

/// Restores the pinned tree to `dest` from the source cache, pulling it into the cache from the
/// remote first when the remote has it. Why a cached entry was unusable goes to `notes`.
fn from_source_cache(pin: &Pin, dest: &Path, origin_file: &Path, fetcher: &Fetcher, notes: &mut Vec<String>) -> Result<Option<Verified>> {
    let Some(cache) = fetcher.source_cache() else { return Ok(None) };
    if let Some(remote) = fetcher.remote() {
        if !cache.contains(&pin.tree) {
            fs::create_dir_all(cache.dir()).context(|| format!("cannot create {}", cache.dir().display()))?;
            remote.pull_source(&pin.tree.to_hex(), &cache.entry(&pin.tree))?;
        }
    }
    match cache.restore(&pin.tree, dest)? {
        Restored::Yes => {
            if let Some(remote) = fetcher.remote() {
                remote.push_source(&pin.tree.to_hex(), &cache.entry(&pin.tree));
            }
            fs::write(origin_file, format!("{FROM_CACHE}\n")).context(|| format!("cannot write {}", origin_file.display()))?;
            Ok(Some(Verified { path: dest.to_path_buf(), tree: pin.tree, origin: Some(FROM_CACHE.to_owned()), fetched: true }))
        }
        Restored::Missing => Ok(None),
        Restored::Corrupt(why) => {
            notes.push(format!("  - source cache: {why}"));
            Ok(None)
        }
    }
}

/// Puts a verified tree into the source cache and shares it through the remote, when either
/// is configured.
fn keep_in_caches(fetcher: &Fetcher, tree_dir: &Path, tree: &TreeHash) -> Result<()> {
    if let Some(cache) = fetcher.source_cache() {
        cache.insert(tree_dir, tree)?;
        if let Some(remote) = fetcher.remote() {
            remote.push_source(&tree.to_hex(), &cache.entry(tree));
        }
    }
    Ok(())
}

/// What one mirror does for a pin.
#[derive(Debug)]
pub enum Probe {
    /// A candidate unpacked to the pinned tree.
    Serves(Candidate),
    /// Every candidate that unpacked gave another tree (the first such is reported).
    Different(Candidate, TreeHash),
}

/// Tries the candidates of one mirror in order. With `keep`, the first matching tree is moved
/// there; without, the mirror is only probed. Scratch files never outlive the call.
fn fetch_from_mirror(pin: &Pin, mirror: &Mirror, fetcher: &Fetcher, dir: &Path, keep: Option<&Path>) -> Result<Probe, MirrorError> {
    let candidates = fetcher.candidates(pin, mirror)?;
    let mut different = None;
    let mut last_error = None;
    for candidate in candidates {
        let scratch = dir.join(format!(".tmp-{}-{}", pin.name, std::process::id()));
        let _ = fs::remove_dir_all(&scratch);
        let attempt = fetch_tree(fetcher, &candidate, &scratch);
        let outcome = match attempt {
            Ok((root, tree)) if tree == pin.tree => match keep {
                Some(dest) => fs::rename(&root, dest)
                    .context(|| format!("cannot move the verified tree to {}", dest.display()))
                    .map(|()| Some(Probe::Serves(candidate)))
                    .map_err(MirrorError::from),
                None => Ok(Some(Probe::Serves(candidate))),
            },
            Ok((_, tree)) => {
                different.get_or_insert((candidate, tree));
                Ok(None)
            }
            Err(e) => {
                last_error = Some(MirrorError { failure: e.failure, error: Error::new(format!("{}: {}", candidate.what, e.error)) });
                Ok(None)
            }
        };
        let _ = fs::remove_dir_all(&scratch);
        if let Some(probe) = outcome? {
            return Ok(probe);
        }
    }
    match (different, last_error) {
        (Some((candidate, tree)), _) => Ok(Probe::Different(candidate, tree)),
        (None, Some(e)) => Err(e),
        (None, None) => Err(MirrorError { failure: Failure::Gone, error: Error::new("the mirror offers no archive") }),
    }
}

/// Downloads and unpacks into `scratch`; returns the tree's directory and hash.
fn fetch_tree(fetcher: &Fetcher, candidate: &Candidate, scratch: &Path) -> Result<(PathBuf, TreeHash), MirrorError> {
    let archive_path = fetcher.download(candidate, &scratch.join("download"))?;
    let unpacked = scratch.join("unpacked");
    let corrupt = |e: Error| MirrorError { failure: Failure::Corrupt, error: e };
    archive::unpack(&archive_path, &unpacked).map_err(corrupt)?;
    let root = unpacked.join(&candidate.root);
    if !root.is_dir() {
        return Err(corrupt(Error::new(format!("the archive has no directory {:?}", candidate.root))));
    }
    let tree = TreeHash::of_dir(&root).map_err(corrupt)?;
    Ok((root, tree))
}

/// Fetches from one mirror and returns the hash of the tree its first candidate yields, for
/// pinning.
pub fn hash_mirror(pin: &Pin, mirror: &Mirror, fetcher: &Fetcher, scratch: &Path) -> Result<TreeHash> {
    let candidates = fetcher.candidates(pin, mirror).map_err(|e| e.error)?;
    let Some(candidate) = candidates.first() else { bail!("{mirror} offers no archive") };
    let _ = fs::remove_dir_all(scratch);
    let result = fetch_tree(fetcher, candidate, scratch).map(|(_, tree)| tree).map_err(|e| e.error);
    let _ = fs::remove_dir_all(scratch);
    result
}

/// One row of [`check`]: what one mirror does for one pin.
#[derive(Debug)]
pub struct MirrorStatus {
    pub mirror: Mirror,
    pub verdict: Verdict,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serves the pinned tree, through this candidate.
    Serves(String),
    Gone(String),
    Different(TreeHash),
    /// Answered with bytes that are not what its index promised, or not an archive.
    Corrupt(String),
    Unreachable(String),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Serves(_) => f.write_str("serves the pinned tree"),
            Verdict::Gone(_) => f.write_str("gone"),
            Verdict::Different(actual) => write!(f, "different tree ({actual})"),
            Verdict::Corrupt(_) => f.write_str("corrupt download"),
            Verdict::Unreachable(_) => f.write_str("unreachable"),
        }
    }
}

/// Tries every mirror of `pin`, without the source cache or vendor/, in `scratch_dir`.
pub fn check(pin: &Pin, fetcher: &Fetcher, scratch_dir: &Path) -> Result<Vec<MirrorStatus>> {
    fs::create_dir_all(scratch_dir).context(|| format!("cannot create {}", scratch_dir.display()))?;
    let mut rows = Vec::new();
    for mirror in &pin.mirrors {
        let verdict = match fetch_from_mirror(pin, mirror, fetcher, scratch_dir, None) {
            Ok(Probe::Serves(candidate)) => Verdict::Serves(candidate.what),
            Ok(Probe::Different(_, actual)) => Verdict::Different(actual),
            Err(MirrorError { failure: Failure::Gone, error }) => Verdict::Gone(error.to_string()),
            Err(MirrorError { failure: Failure::Corrupt, error }) => Verdict::Corrupt(error.to_string()),
            Err(MirrorError { failure: Failure::Unreachable, error }) => Verdict::Unreachable(error.to_string()),
        };
        rows.push(MirrorStatus { mirror: mirror.clone(), verdict });
    }
    Ok(rows)
}
