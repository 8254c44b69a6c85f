//! Debian's archives through apt's own machinery, with a private configuration built from the
//! machine's sources list: mirrors and proxies come from the machine, the system's apt state is
//! never touched, and no host name is ever written down by this crate.
//!
//! Packages are located by name and file, not by exact version: every version that the
//! configured suites list is a candidate, because Debian drops superseded versions (and their
//! `.dsc`) while the orig tarball they shared usually lives on under a newer version.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::error::{bail, Context, Error, Result};
use crate::lock::FileLock;
use crate::{apt_sources, fetch::tail};

/// One version of a package as some suite lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub version: String,
    /// `bookworm/main`, `bookworm-security/main`, `./` …
    pub suite: String,
}

/// A file of the archive: where apt would fetch it, and the strongest hash the index gives
/// for it (Debian's indexes give SHA256; local repositories made by apt-ftparchive, SHA512).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    pub uri: String,
    pub name: String,
    pub hash: IndexHash,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlgorithm {
    Sha256,
    Sha512,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexHash {
    pub algorithm: HashAlgorithm,
    /// Lowercase hex.
    pub hex: String,
}

impl std::fmt::Display for IndexHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.algorithm {
            HashAlgorithm::Sha256 => "SHA256",
            HashAlgorithm::Sha512 => "SHA512",
        };
        write!(f, "{name} {}", self.hex)
    }
}

/// Why a download did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownloadFailure {
    /// The mirror answered that the file is not there.
    Gone,
    /// The mirror could not be reached, or answered with something other than the file.
    Unreachable,
    /// The bytes arrived but do not have the SHA256 the index gives.
    WrongHash,
}

pub struct Apt {
    state_dir: PathBuf,
    sources: Vec<PathBuf>,
    commands: Mutex<Vec<String>>,
}

impl Apt {
    /// `state_dir` holds the private configuration and package lists.
    pub fn new(state_dir: PathBuf, sources: Vec<PathBuf>) -> Apt {
        Apt { state_dir, sources, commands: Mutex::new(Vec::new()) }
    }

    /// Every apt command this value has run, in order (for reports and tests).
    pub fn commands(&self) -> Vec<String> {
        self.commands.lock().unwrap().clone()
    }

    /// The versions of source package `package` that the configured suites list.
    pub fn source_versions(&self, package: &str) -> Result<Vec<Listed>> {
        self.listed(package, "Sources")
    }

    /// The versions of binary package `package` (for this machine's architecture or `all`).
    pub fn binary_versions(&self, package: &str) -> Result<Vec<Listed>> {
        self.listed(package, "Packages")
    }

    fn listed(&self, package: &str, index: &str) -> Result<Vec<Listed>> {
        let text = self.run("apt-cache", &["madison", package])?;
        let mut out: Vec<Listed> = Vec::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split('|').map(str::trim).collect();
            let [name, version, origin] = fields[..] else {
                continue;
            };
            let words: Vec<&str> = origin.split_whitespace().collect();
            if name != package || words.last() != Some(&index) {
                continue;
            }
            // `URI SUITE[/COMPONENT] [ARCH] Sources|Packages`: the suite is the second word.
            let listed = Listed { version: version.to_owned(), suite: words.get(1).unwrap_or(&"?").to_string() };
            if !out.contains(&listed) {
                out.push(listed);
            }
        }
        Ok(out)
    }

    /// The files of one version of a source package, as `apt-get source --print-uris` gives them.
    pub fn source_files(&self, package: &str, version: &str) -> Result<Vec<RemoteFile>> {
        let text = self.run("apt-get", &["source", "--print-uris", &format!("{package}={version}")])?;
        Ok(parse_print_uris(&text))
    }

    /// The `.deb` of one version of a binary package.
    pub fn binary_file(&self, package: &str, version: &str) -> Result<RemoteFile> {
        let text = self.run("apt-get", &["download", "--print-uris", &format!("{package}={version}")])?;
        match parse_print_uris(&text).as_slice() {
            [one] => Ok(one.clone()),
            other => bail!("apt-get download --print-uris {package}={version} listed {} files, expected one .deb", other.len()),
        }
    }

    /// Downloads `file` to `dest` through apt (so the machine's proxies apply) and checks its
    /// hash; `dest` exists afterwards only when the bytes are right.
    pub fn download(&self, file: &RemoteFile, dest: &Path) -> Result<(), (DownloadFailure, Error)> {
        let partial = dest.with_extension("partial");
        let helper = "/usr/lib/apt/apt-helper";
        let dest_arg = partial.display().to_string();
        let output = self.output(helper, &["download-file", &file.uri, &dest_arg]).map_err(|e| (DownloadFailure::Unreachable, e))?;
        if !output.0 {
            let _ = fs::remove_file(&partial);
            let text = output.1;
            let kind = if text.contains("404") || text.contains("not found") || text.contains("No such file") {
                DownloadFailure::Gone
            } else {
                DownloadFailure::Unreachable
            };
            return Err((kind, Error::new(format!("download of {} failed:\n{}", file.name, tail(&text, 6)))));
        }
        let actual = hash_file(&partial, file.hash.algorithm).map_err(|e| (DownloadFailure::Unreachable, e))?;
        if actual != file.hash {
            let _ = fs::remove_file(&partial);
            let message = format!(
                "{}: the download has {actual}, but the archive's index gives {}: the download is truncated or corrupt, or the mirror serves other bytes",
                file.name, file.hash
            );
            return Err((DownloadFailure::WrongHash, Error::new(message)));
        }
        fs::rename(&partial, dest).map_err(|e| (DownloadFailure::Unreachable, Error::with_source(format!("cannot write {}", dest.display()), e)))
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let (ok, text) = self.output(program, args)?;
        if !ok {
            bail!("{program} {} failed:\n{}", args.join(" "), tail(&text, 15));
        }
        Ok(text)
    }

    /// Runs an apt program with the private configuration: (success, stdout and stderr).
    fn output(&self, program: &str, args: &[&str]) -> Result<(bool, String)> {
        let config = self.config()?;
        let argv = sandbox_args().into_iter().chain(args.iter().map(|s| s.to_string())).collect::<Vec<_>>();
        self.commands.lock().unwrap().push(format!("{program} {}", args.join(" ")));
        let output = duct::cmd(program, &argv)
            .env("APT_CONFIG", &config)
            .stderr_to_stdout()
            .stdout_capture()
            .unchecked()
            .run()
            .context(|| format!("cannot run {program}"))?;
        Ok((output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned()))
    }

    /// The private apt configuration; its package lists are refreshed when older than a few
    /// hours or when the machine's sources changed.
    fn config(&self) -> Result<PathBuf> {
        let dir = &self.state_dir;
        let config = dir.join("apt.conf");
        let _lock = FileLock::acquire(&dir.join("apt.lock"))?;
        let sources = apt_sources::read(&self.sources)?;
        for sub in ["etc/sources.list.d", "etc/apt.conf.d", "etc/preferences.d", "state/lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub)).context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        write_if_changed(&dir.join("etc/sources.list"), "")?;
        write_if_changed(&dir.join("etc/preferences"), "")?;
        let sources_file = dir.join("etc/sources.list.d/machine.sources");
        write_if_changed(&sources_file, &sources)?;
        let d = dir.display();
        let text = format!(
            "Dir::Etc::SourceList \"{d}/etc/sources.list\";\n\
             Dir::Etc::SourceParts \"{d}/etc/sources.list.d\";\n\
             Dir::Etc::Parts \"{d}/etc/apt.conf.d\";\n\
             Dir::Etc::Preferences \"{d}/etc/preferences\";\n\
             Dir::Etc::PreferencesParts \"{d}/etc/preferences.d\";\n\
             Dir::State \"{d}/state\";\n\
             Dir::Cache \"{d}/cache\";\n\
             Acquire::Languages \"none\";\n\
             Acquire::http::Timeout \"30\";\n\
             Acquire::Retries \"1\";\n"
        );
        write_if_changed(&config, &text)?;
        let stamp = dir.join("updated");
        let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
        let fresh = modified(&stamp).and_then(|t| SystemTime::now().duration_since(t).ok()).is_some_and(|age| age < Duration::from_secs(6 * 3600));
        if !fresh || modified(&sources_file) > modified(&stamp) || modified(&config) > modified(&stamp) {
            let argv = sandbox_args().into_iter().chain(["update".to_owned()]).collect::<Vec<_>>();
            self.commands.lock().unwrap().push("apt-get update".to_owned());
            let output = duct::cmd("apt-get", &argv)
                .env("APT_CONFIG", &config)
                .stderr_to_stdout()
                .stdout_capture()
                .unchecked()
                .run()
                .context(|| "cannot run apt-get update".to_owned())?;
            let text = String::from_utf8_lossy(&output.stdout);
            // apt-get update exits 0 even when a suite could not be read; a failed fetch
            // leaves old lists in place, which the per-version fallback then copes with.
            if !output.status.success() {
                bail!("apt-get update with {} failed:\n{}", config.display(), tail(&text, 15));
            }
            fs::write(&stamp, "").context(|| format!("cannot write {}", stamp.display()))?;
        }
        Ok(config)
    }
}

/// `'URI' NAME SIZE ALGO:HEX` lines, as `--print-uris` prints them (apt names the strongest
/// hash the index has). Files with only weaker hashes (MD5, SHA1) are not trusted.
fn parse_print_uris(text: &str) -> Vec<RemoteFile> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix('\'')?;
            let (uri, rest) = rest.split_once("' ")?;
            let words: Vec<&str> = rest.split_whitespace().collect();
            let hash = words.iter().find_map(|w| {
                let (algorithm, hex) = w.split_once(':')?;
                let algorithm = match algorithm {
                    "SHA256" => HashAlgorithm::Sha256,
                    "SHA512" => HashAlgorithm::Sha512,
                    _ => return None,
                };
                Some(IndexHash { algorithm, hex: hex.to_ascii_lowercase() })
            })?;
            Some(RemoteFile { uri: uri.to_owned(), name: words.first()?.to_string(), hash })
        })
        .collect()
}

fn sandbox_args() -> Vec<String> {
    let mut argv = vec!["-q".to_owned()];
    if is_root() {
        argv.extend(["-o".to_owned(), "APT::Sandbox::User=root".to_owned()]);
    }
    argv
}

fn hash_file(path: &Path, algorithm: HashAlgorithm) -> Result<IndexHash> {
    let hex = match algorithm {
        HashAlgorithm::Sha256 => digest_file::<sha2::Sha256>(path)?,
        HashAlgorithm::Sha512 => digest_file::<sha2::Sha512>(path)?,
    };
    Ok(IndexHash { algorithm, hex })
}

fn digest_file<D: sha2::Digest>(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = D::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        let n = file.read(&mut buf).context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_uris_lines_give_uri_name_and_hash() {
        let text = "Need to get 1 kB\n'http://m.invalid/pool/n/nginx_1.0%2b1.dsc' nginx_1.0+1.dsc 3581 SHA256:AB12\n'file:/r/./x_1.orig.tar.gz' x_1.orig.tar.gz 9 SHA512:cd34\n'file:/r/old.tar.gz' old.tar.gz 9 MD5Sum:ef56\n";
        let hash = |algorithm, hex: &str| IndexHash { algorithm, hex: hex.into() };
        assert_eq!(
            parse_print_uris(text),
            [
                RemoteFile {
                    uri: "http://m.invalid/pool/n/nginx_1.0%2b1.dsc".into(),
                    name: "nginx_1.0+1.dsc".into(),
                    hash: hash(HashAlgorithm::Sha256, "ab12")
                },
                RemoteFile { uri: "file:/r/./x_1.orig.tar.gz".into(), name: "x_1.orig.tar.gz".into(), hash: hash(HashAlgorithm::Sha512, "cd34") },
            ]
        );
    }
}
