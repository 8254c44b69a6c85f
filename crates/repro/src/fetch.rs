//! Turning a mirror into archives on disk: the candidate files a mirror offers for a pin, and
//! downloading one of them. Which candidate is right is decided by the tree hash (see
//! [`crate::vendor`]), never by a version string.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::apt::{Apt, DownloadFailure, RemoteFile};
use crate::error::{Context, Error, Result};
use crate::lockfile::{Mirror, MirrorKind, Pin};
use crate::source_cache::SourceCache;

/// Downloads archives. Debian packages come through apt with a private configuration (built
/// from the machine's own sources list), so the system's apt setup is never touched.
pub struct Fetcher {
    apt: Apt,
    cache: Option<SourceCache>,
    remote: Option<std::sync::Arc<crate::remote::Remote>>,
    commands: Mutex<Vec<String>>,
}

/// Why a mirror gave nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The mirror answered, but does not have the file (any more).
    Gone,
    /// The mirror could not be reached, or failed in a way that says nothing about the file.
    Unreachable,
    /// The mirror served bytes that are not what its index promised, or not an archive.
    Corrupt,
}

/// A mirror's failure: its kind, and the whole story for a human.
#[derive(Debug)]
pub struct MirrorError {
    pub failure: Failure,
    pub error: Error,
}

impl MirrorError {
    fn new(failure: Failure, message: impl Into<String>) -> MirrorError {
        MirrorError { failure, error: Error::new(message) }
    }
}

impl From<Error> for MirrorError {
    fn from(error: Error) -> MirrorError {
        MirrorError { failure: Failure::Unreachable, error }
    }
}

/// One archive a mirror offers for a pin.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// For messages: the mirror, and which version or file of it.
    pub what: String,
    /// The directory inside the archive that is the tree.
    pub root: String,
    location: Location,
}

#[derive(Clone, Debug)]
enum Location {
    Url(String),
    Apt(RemoteFile),
    Path(PathBuf),
}

impl Fetcher {
    /// `state_dir` holds apt's private state (package lists), nothing that verifies sources.
    pub fn new(state_dir: impl Into<PathBuf>) -> Fetcher {
        let sources = vec!["/etc/apt/sources.list".into(), "/etc/apt/sources.list.d".into()];
        Fetcher { apt: Apt::new(state_dir.into().join("apt"), sources), cache: None, remote: None, commands: Mutex::new(Vec::new()) }
    }

    /// Reads Debian archives from these apt source files or directories instead of the
    /// machine's (`/etc/apt/sources.list` and `/etc/apt/sources.list.d`).
    pub fn with_apt_sources(self, state_dir: impl Into<PathBuf>, sources: Vec<PathBuf>) -> Fetcher {
        Fetcher { apt: Apt::new(state_dir.into().join("apt"), sources), ..self }
    }

    /// Keeps every verified tree in `cache`, and looks there before any mirror.
    pub fn with_source_cache(self, cache: SourceCache) -> Fetcher {
        Fetcher { cache: Some(cache), ..self }
    }

    pub fn source_cache(&self) -> Option<&SourceCache> {
        self.cache.as_ref()
    }

    /// A shared cache that source trees are pulled from (by tree hash) before any mirror, and
    /// pushed to after a mirror gave them. Only used together with a source cache.
    pub fn with_remote(self, remote: std::sync::Arc<crate::remote::Remote>) -> Fetcher {
        Fetcher { remote: Some(remote), ..self }
    }

    pub fn remote(&self) -> Option<&std::sync::Arc<crate::remote::Remote>> {
        self.remote.as_ref()
    }

    /// Every external command run so far (apt, curl), in order.
    pub fn commands(&self) -> Vec<String> {
        let mut all = self.apt.commands();
        all.extend(self.commands.lock().unwrap().iter().cloned());
        all
    }

    /// The archives `mirror` offers for `pin`, best first.
    pub fn candidates(&self, pin: &Pin, mirror: &Mirror) -> Result<Vec<Candidate>, MirrorError> {
        let one = |location, what: String| Ok(vec![Candidate { what, root: mirror.root.clone(), location }]);
        match &mirror.kind {
            MirrorKind::Url(url) => one(Location::Url(url.clone()), mirror.to_string()),
            MirrorKind::File(path) => {
                let path = pin.resolve(path);
                if !path.is_file() {
                    return Err(MirrorError::new(Failure::Gone, format!("{} does not exist", path.display())));
                }
                one(Location::Path(path), mirror.to_string())
            }
            MirrorKind::Dir { path, file } => self.dir_candidates(pin, mirror, &pin.resolve(path), file.as_deref()),
            MirrorKind::DebianSource { package, file } => self.debian_source_candidates(mirror, package, file),
            MirrorKind::DebianBinary { package } => self.debian_binary_candidates(mirror, package),
        }
    }

    fn dir_candidates(&self, pin: &Pin, mirror: &Mirror, dir: &Path, file: Option<&str>) -> Result<Vec<Candidate>, MirrorError> {
        let names: Vec<(String, String)> = match file {
            Some(file) => vec![(file.to_owned(), mirror.root.clone())],
            None => pin.mirrors.iter().filter_map(|m| Some((file_name_of(&m.kind)?, m.root.clone()))).collect(),
        };
        if names.is_empty() {
            return Err(MirrorError::new(Failure::Gone, "no file name to look for: give the mirror a `file`".to_owned()));
        }
        let found: Vec<Candidate> = names
            .iter()
            .filter(|(name, _)| dir.join(name).is_file())
            .map(|(name, root)| Candidate { what: format!("{mirror}, file {name}"), root: root.clone(), location: Location::Path(dir.join(name)) })
            .collect();
        if found.is_empty() {
            let names: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
            return Err(MirrorError::new(Failure::Gone, format!("{} holds none of {}", dir.display(), names.join(", "))));
        }
        Ok(found)
    }

    /// Every listed version of the source package whose file list holds `file`, the hinted
    /// version (`package=version`) first. Only that file is ever downloaded.
    fn debian_source_candidates(&self, mirror: &Mirror, spec: &str, file: &str) -> Result<Vec<Candidate>, MirrorError> {
        let (package, hint) = split_spec(spec);
        let listed = self.apt.source_versions(package)?;
        if listed.is_empty() {
            return Err(MirrorError::new(Failure::Gone, format!("no configured suite lists the source package {package}")));
        }
        let mut versions: Vec<&str> = Vec::new();
        for l in hint.iter().copied().chain(listed.iter().map(|l| l.version.as_str())) {
            if !versions.contains(&l) {
                versions.push(l);
            }
        }
        let mut found = Vec::new();
        let mut tried = Vec::new();
        for version in versions {
            let suites: Vec<&str> = listed.iter().filter(|l| l.version == version).map(|l| l.suite.as_str()).collect();
            if suites.is_empty() {
                tried.push(format!("{version} (the pinned hint): no configured suite lists it"));
                continue;
            }
            let files = self.apt.source_files(package, version)?;
            match files.iter().find(|f| f.name == file) {
                Some(remote) if !found.iter().any(|c: &Candidate| matches!(&c.location, Location::Apt(r) if r.uri == remote.uri)) => found.push(Candidate {
                    what: format!("Debian source package {package} {version} ({}), file {file}", suites.join(", ")),
                    root: mirror.root.clone(),
                    location: Location::Apt(remote.clone()),
                }),
                Some(_) => {}
                None => {
                    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
                    tried.push(format!("{version} ({}): lists only {}", suites.join(", "), names.join(", ")));
                }
            }
        }
        if found.is_empty() {
            return Err(MirrorError::new(
                Failure::Gone,
                format!("no listed version of source package {package} has the file {file}:\n      {}", tried.join("\n      ")),
            ));
        }
        Ok(found)
    }

    /// Every listed version of the binary package, the hinted one first: which one is right
    /// is for the tree hash to say.
    fn debian_binary_candidates(&self, mirror: &Mirror, spec: &str) -> Result<Vec<Candidate>, MirrorError> {
        let (package, hint) = split_spec(spec);
        let listed = self.apt.binary_versions(package)?;
        if listed.is_empty() {
            return Err(MirrorError::new(Failure::Gone, format!("no configured suite lists the binary package {package}")));
        }
        let mut versions: Vec<&str> = hint.into_iter().filter(|h| listed.iter().any(|l| l.version == *h)).collect();
        for l in &listed {
            if !versions.contains(&l.version.as_str()) {
                versions.push(&l.version);
            }
        }
        let mut found = Vec::new();
        for version in versions {
            let suites: Vec<&str> = listed.iter().filter(|l| l.version == version).map(|l| l.suite.as_str()).collect();
            let remote = self.apt.binary_file(package, version)?;
            found.push(Candidate {
                what: format!("Debian binary package {package} {version} ({}), file {}", suites.join(", "), remote.name),
                root: mirror.root.clone(),
                location: Location::Apt(remote),
            });
        }
        Ok(found)
    }

    /// Downloads `candidate` into `dir` and returns the archive's path.
    pub fn download(&self, candidate: &Candidate, dir: &Path) -> Result<PathBuf, MirrorError> {
        fs::create_dir_all(dir).context(|| format!("cannot create {}", dir.display()))?;
        match &candidate.location {
            Location::Url(url) => self.curl(url, dir),
            Location::Apt(remote) => {
                let out = dir.join(&remote.name);
                self.apt.download(remote, &out).map_err(|(failure, error)| {
                    let failure = match failure {
                        DownloadFailure::Gone => Failure::Gone,
                        DownloadFailure::Unreachable => Failure::Unreachable,
                        DownloadFailure::WrongHash => Failure::Corrupt,
                    };
                    MirrorError { failure, error }
                })?;
                Ok(out)
            }
            Location::Path(path) => {
                let out = dir.join(path.file_name().unwrap_or("archive".as_ref()));
                fs::copy(path, &out).context(|| format!("cannot copy {}", path.display()))?;
                Ok(out)
            }
        }
    }

    fn curl(&self, url: &str, dir: &Path) -> Result<PathBuf, MirrorError> {
        let name = url.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("download");
        let out = dir.join(name);
        let curl = which::which("curl").context(|| "downloading from a URL needs curl on PATH".to_owned())?;
        let mut args: Vec<String> =
            ["--fail", "--silent", "--show-error", "--location", "--retry", "2", "--connect-timeout", "20", "--max-time", "600", "--output"]
                .map(str::to_owned)
                .to_vec();
        args.extend([out.display().to_string(), url.to_owned()]);
        self.commands.lock().unwrap().push(format!("curl {url}"));
        let output = duct::cmd(curl, &args).stdout_null().stderr_capture().unchecked().run().context(|| format!("cannot run curl for {url}"))?;
        if output.status.success() {
            return Ok(out);
        }
        let _ = fs::remove_file(&out);
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        // curl's exit code 22 is an HTTP error status: the server answered.
        let failure = if output.status.code() == Some(22) && (stderr.contains("404") || stderr.contains("410")) { Failure::Gone } else { Failure::Unreachable };
        let code = output.status.code().map_or_else(|| "a signal".to_owned(), |c| c.to_string());
        Err(MirrorError::new(failure, format!("download failed (curl exit code {code}): {stderr}")))
    }
}

/// `package=version` → (`package`, `Some(version)`).
fn split_spec(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once('=') {
        Some((package, version)) => (package, Some(version)),
        None => (spec, None),
    }
}

/// The archive's file name a mirror names, when it names one.
fn file_name_of(kind: &MirrorKind) -> Option<String> {
    match kind {
        MirrorKind::Url(url) => url.rsplit('/').next().filter(|n| !n.is_empty()).map(str::to_owned),
        MirrorKind::DebianSource { file, .. } => Some(file.clone()),
        MirrorKind::File(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()),
        MirrorKind::Dir { file, .. } => file.clone(),
        MirrorKind::DebianBinary { .. } => None,
    }
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
