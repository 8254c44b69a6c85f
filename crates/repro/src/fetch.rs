//! Getting an archive from a mirror, and turning a pin into a verified tree on disk.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{bail, Context, Error, Result};
use crate::lockfile::{Mirror, MirrorKind, Pin};
use crate::tree::TreeHash;
use crate::{archive, lock::FileLock};

/// Downloads archives. Debian packages come through apt with a private configuration (built
/// from the machine's own sources list), so the system's apt setup is never touched.
pub struct Fetcher {
    cache_dir: PathBuf,
    apt_sources: Vec<PathBuf>,
}

/// A tree that matches its pin, and the mirror it came from.
#[derive(Debug, Clone)]
pub struct Verified {
    pub path: PathBuf,
    pub tree: TreeHash,
    /// The mirror the tree was fetched from, as recorded beside it when it was fetched.
    pub origin: Option<String>,
    /// `true` when this call fetched it, `false` when it was already there.
    pub fetched: bool,
}

impl Fetcher {
    /// `cache_dir` holds apt's private state (package lists), nothing that verifies sources.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Fetcher {
        Fetcher {
            cache_dir: cache_dir.into(),
            apt_sources: vec!["/etc/apt/sources.list".into(), "/etc/apt/sources.list.d".into()],
        }
    }

    /// Downloads the archive `mirror` names into `dir` and returns its path.
    pub fn download(&self, mirror: &Mirror, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir).context(|| format!("cannot create {}", dir.display()))?;
        match &mirror.kind {
            MirrorKind::Url(url) => {
                let name = url.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("download");
                let out = dir.join(name);
                let curl = which::which("curl").context(|| "downloading from a URL needs curl on PATH".to_owned())?;
                let args = ["--fail", "--silent", "--show-error", "--location", "--retry", "2", "--connect-timeout", "20", "--output"];
                duct::cmd(curl, args.iter().map(|s| s.to_string()).chain([out.display().to_string(), url.clone()]))
                    .stdout_null()
                    .stderr_capture()
                    .run()
                    .context(|| format!("download of {url} failed"))?;
                Ok(out)
            }
            MirrorKind::DebianSource { package, file } => {
                self.apt(&["source", "--download-only", package], dir)?;
                let out = dir.join(file);
                if !out.is_file() {
                    bail!("apt-get source {package} did not produce {file}");
                }
                Ok(out)
            }
            MirrorKind::DebianBinary { package } => {
                self.apt(&["download", package], dir)?;
                let debs: Vec<_> = fs::read_dir(dir)
                    .context(|| format!("cannot list {}", dir.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "deb"))
                    .collect();
                match debs.as_slice() {
                    [one] => Ok(one.clone()),
                    _ => bail!("apt-get download {package} produced {} .deb files, expected one", debs.len()),
                }
            }
            MirrorKind::File(path) => {
                let out = dir.join(path.file_name().unwrap_or("archive".as_ref()));
                fs::copy(path, &out).context(|| format!("cannot copy {}", path.display()))?;
                Ok(out)
            }
        }
    }

    fn apt(&self, args: &[&str], cwd: &Path) -> Result<()> {
        let config = self.apt_config()?;
        let mut argv: Vec<String> = vec!["-q".into()];
        if is_root() {
            argv.extend(["-o".into(), "APT::Sandbox::User=root".into()]);
        }
        argv.extend(args.iter().map(|s| s.to_string()));
        let output = duct::cmd("apt-get", &argv)
            .dir(cwd)
            .env("APT_CONFIG", &config)
            .stderr_to_stdout()
            .stdout_capture()
            .unchecked()
            .run()
            .context(|| "cannot run apt-get".to_owned())?;
        if !output.status.success() {
            bail!("apt-get {} failed:\n{}", args.join(" "), tail(&String::from_utf8_lossy(&output.stdout), 15));
        }
        Ok(())
    }

    /// A private apt configuration whose package lists are refreshed at most every few hours.
    fn apt_config(&self) -> Result<PathBuf> {
        let dir = self.cache_dir.join("apt");
        let config = dir.join("apt.conf");
        let _lock = FileLock::acquire(&self.cache_dir.join("apt.lock"))?;
        let sources = self.machine_sources()?;
        for sub in ["etc/sources.list.d", "etc/apt.conf.d", "etc/preferences.d", "state/lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub)).context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        write_if_changed(&dir.join("etc/sources.list"), "")?;
        write_if_changed(&dir.join("etc/preferences"), "")?;
        write_if_changed(&dir.join("etc/sources.list.d/machine.sources"), &sources)?;
        let d = dir.display();
        let text = format!(
            "Dir::Etc::SourceList \"{d}/etc/sources.list\";\n\
             Dir::Etc::SourceParts \"{d}/etc/sources.list.d\";\n\
             Dir::Etc::Parts \"{d}/etc/apt.conf.d\";\n\
             Dir::Etc::Preferences \"{d}/etc/preferences\";\n\
             Dir::Etc::PreferencesParts \"{d}/etc/preferences.d\";\n\
             Dir::State \"{d}/state\";\n\
             Dir::Cache \"{d}/cache\";\n\
             Acquire::Languages \"none\";\n"
        );
        write_if_changed(&config, &text)?;
        let stamp = dir.join("updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < Duration::from_secs(6 * 3600));
        let sources_newer = fs::metadata(dir.join("etc/sources.list.d/machine.sources")).and_then(|m| m.modified()).ok()
            > fs::metadata(&stamp).and_then(|m| m.modified()).ok();
        if !fresh || sources_newer {
            let mut argv: Vec<&str> = vec!["-q"];
            if is_root() {
                argv.extend(["-o", "APT::Sandbox::User=root"]);
            }
            argv.push("update");
            let output = duct::cmd("apt-get", &argv)
                .env("APT_CONFIG", &config)
                .stderr_to_stdout()
                .stdout_capture()
                .unchecked()
                .run()
                .context(|| "cannot run apt-get update".to_owned())?;
            if !output.status.success() {
                bail!("apt-get update with {} failed:\n{}", config.display(), tail(&String::from_utf8_lossy(&output.stdout), 15));
            }
            fs::write(&stamp, "").context(|| format!("cannot write {}", stamp.display()))?;
        }
        Ok(config)
    }

    /// The machine's Debian archives, restated as deb822 with source packages enabled.
    fn machine_sources(&self) -> Result<String> {
        let mut files = Vec::new();
        for path in &self.apt_sources {
            if path.is_dir() {
                let mut entries: Vec<_> = fs::read_dir(path)
                    .context(|| format!("cannot list {}", path.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "sources" || e == "list"))
                    .collect();
                entries.sort();
                files.extend(entries);
            } else if path.is_file() {
                files.push(path.clone());
            }
        }
        let mut stanzas = BTreeSet::new();
        for file in files {
            let text = fs::read_to_string(&file).context(|| format!("cannot read {}", file.display()))?;
            if file.extension().is_some_and(|e| e == "sources") {
                stanzas.extend(deb822_stanzas(&text));
            } else {
                stanzas.extend(one_line_stanzas(&text));
            }
        }
        if stanzas.is_empty() {
            bail!("no Debian archive is configured in /etc/apt/sources.list or /etc/apt/sources.list.d: Debian mirrors need one");
        }
        Ok(stanzas.into_iter().collect::<Vec<_>>().join("\n"))
    }
}

fn deb822_stanzas(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let field = |name: &str| {
            block.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_owned())
            })
        };
        let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) else { continue };
        if field("Enabled").is_some_and(|e| e.eq_ignore_ascii_case("no")) {
            continue;
        }
        let mut stanza = format!("Types: deb deb-src\nURIs: {uris}\nSuites: {suites}\n");
        if let Some(c) = field("Components") {
            stanza.push_str(&format!("Components: {c}\n"));
        }
        if let Some(s) = field("Signed-By") {
            stanza.push_str(&format!("Signed-By: {s}\n"));
        }
        out.push(stanza);
    }
    out
}

fn one_line_stanzas(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        let mut words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"deb") {
            continue;
        }
        words.remove(0);
        let mut signed_by = None;
        if words.first().is_some_and(|w| w.starts_with('[')) {
            let mut options = Vec::new();
            while let Some(w) = (!words.is_empty()).then(|| words.remove(0)) {
                options.push(w);
                if w.ends_with(']') {
                    break;
                }
            }
            signed_by = options.join(" ").trim_matches(['[', ']']).split_whitespace().find_map(|o| o.strip_prefix("signed-by=").map(str::to_owned));
        }
        if words.len() < 2 {
            continue;
        }
        let mut stanza = format!("Types: deb deb-src\nURIs: {}\nSuites: {}\n", words[0], words[1]);
        if words.len() > 2 {
            stanza.push_str(&format!("Components: {}\n", words[2..].join(" ")));
        }
        if let Some(s) = signed_by {
            stanza.push_str(&format!("Signed-By: {s}\n"));
        }
        out.push(stanza);
    }
    out
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if fs::read_to_string(path).ok().as_deref() != Some(text) {
        fs::write(path, text).context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { geteuid() == 0 }
}

extern "C" {
    fn geteuid() -> u32;
}

/// The last `lines` lines of `text`, each cut to a readable width.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| match l.char_indices().nth(400) {
            Some((cut, _)) => format!("{} […]", &l[..cut]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Makes `<dir>/<name>-<version>` hold exactly the pinned tree: kept when it already matches,
/// otherwise fetched from the first mirror that yields a matching tree. Nothing is left
/// behind when every mirror fails.
pub fn vendor(pin: &Pin, dir: &Path, fetcher: &Fetcher, offline: bool) -> Result<Verified> {
    fs::create_dir_all(dir).context(|| format!("cannot create {}", dir.display()))?;
    let dest = dir.join(format!("{}-{}", pin.name, pin.version));
    let origin_file = dir.join(format!("{}-{}.origin", pin.name, pin.version));
    let _lock = FileLock::acquire(&dir.join(format!(".{}.lock", pin.name)))?;
    if dest.exists() {
        let tree = TreeHash::of_dir(&dest)?;
        if tree == pin.tree {
            let origin = fs::read_to_string(&origin_file).ok().map(|s| s.trim().to_owned());
            return Ok(Verified { path: dest, tree, origin, fetched: false });
        }
        if offline {
            bail!(
                "{} {}: {} holds a different tree (expected {}, found {tree}); run `cargo xtask vendor` without --offline to fetch it again",
                pin.name, pin.version, dest.display(), pin.tree
            );
        }
        fs::remove_dir_all(&dest).context(|| format!("cannot remove stale {}", dest.display()))?;
    } else if offline {
        bail!("{} {}: not in {} and --offline forbids fetching it; run `cargo xtask vendor` with network access to a mirror", pin.name, pin.version, dir.display());
    }
    let mut failures = Vec::new();
    for mirror in &pin.mirrors {
        let scratch = dir.join(format!(".tmp-{}-{}", pin.name, std::process::id()));
        let _ = fs::remove_dir_all(&scratch);
        let attempt = fetch_verified(pin, mirror, fetcher, &scratch, &dest);
        let _ = fs::remove_dir_all(&scratch);
        match attempt {
            Ok(tree) => {
                let origin = mirror.to_string();
                fs::write(&origin_file, format!("{origin}\n")).context(|| format!("cannot write {}", origin_file.display()))?;
                return Ok(Verified { path: dest, tree, origin: Some(origin), fetched: true });
            }
            Err(e) => failures.push(format!("  - {mirror}: {e}")),
        }
    }
    Err(Error::new(format!(
        "{} {}: no mirror gave the pinned tree {}:\n{}",
        pin.name,
        pin.version,
        pin.tree,
        failures.join("\n")
    )))
}

fn fetch_verified(pin: &Pin, mirror: &Mirror, fetcher: &Fetcher, scratch: &Path, dest: &Path) -> Result<TreeHash> {
    let (root, tree) = fetch_tree(mirror, fetcher, scratch)?;
    if tree != pin.tree {
        bail!(
            "tree hash mismatch for {} {}: expected {}, got {tree}; the download is corrupt or the pin is wrong (if the new contents are trusted, re-pin with `cargo xtask pin`)",
            pin.name, pin.version, pin.tree
        );
    }
    fs::rename(&root, dest).context(|| format!("cannot move the verified tree to {}", dest.display()))?;
    Ok(tree)
}

/// Downloads and unpacks into `scratch`; returns the tree's directory and hash.
fn fetch_tree(mirror: &Mirror, fetcher: &Fetcher, scratch: &Path) -> Result<(PathBuf, TreeHash)> {
    let archive_path = fetcher.download(mirror, &scratch.join("download"))?;
    let unpacked = scratch.join("unpacked");
    archive::unpack(&archive_path, &unpacked)?;
    let root = unpacked.join(&mirror.root);
    if !root.is_dir() {
        bail!("the archive has no directory {:?}", mirror.root);
    }
    let tree = TreeHash::of_dir(&root)?;
    Ok((root, tree))
}

/// Fetches from one mirror and returns the hash of the tree it yields, for pinning.
pub fn hash_mirror(mirror: &Mirror, fetcher: &Fetcher, scratch: &Path) -> Result<TreeHash> {
    let _ = fs::remove_dir_all(scratch);
    let result = fetch_tree(mirror, fetcher, scratch).map(|(_, tree)| tree);
    let _ = fs::remove_dir_all(scratch);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_sources_become_deb822_with_source_packages() {
        let deb822 = "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/k.gpg\n\nTypes: deb\nURIs: http://off.invalid\nSuites: x\nEnabled: no\n";
        assert_eq!(
            deb822_stanzas(deb822),
            ["Types: deb deb-src\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/k.gpg\n"]
        );
        let list = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/debian bookworm main contrib\ndeb-src http://ignored.invalid x main\n";
        assert_eq!(
            one_line_stanzas(list),
            ["Types: deb deb-src\nURIs: http://mirror.invalid/debian\nSuites: bookworm\nComponents: main contrib\nSigned-By: /k.gpg\n"]
        );
    }
}
