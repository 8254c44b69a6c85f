//! Support for the end-to-end tests: the built bundles, a running nginx, an HTTP client.
//!
//! Every test starts the real static nginx from an unpacked release bundle in a fresh
//! temporary directory and talks to it over 127.0.0.1 only.

pub mod backend;
pub mod garage;
pub mod http;
pub mod json;
pub mod nginx;
pub mod process;
pub mod prometheus;
pub mod promtool;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use nginx::Nginx;

pub use pipeline::Strategy;

/// The release tarballs of both strategies, built (or found in the store) once per process.
pub fn dist() -> &'static pipeline::dist::Dist {
    static DIST: OnceLock<pipeline::dist::Dist> = OnceLock::new();
    DIST.get_or_init(|| {
        let project = pipeline::Project::from_checkout().expect("open the project");
        pipeline::dist::build(&project, &pipeline::dist::Options::default()).unwrap_or_else(|e| panic!("cargo xtask dist failed:\n{e}"))
    })
}

/// The pinned toolchain and LuaJIT, built (or found in the store) once per process.
pub struct Toolchain {
    pub project: pipeline::Project,
    pub sources: pipeline::Sources,
    pub toolchain: pipeline::toolchain::Toolchain,
    pub luajit: repro::Artifact,
}

pub fn toolchain() -> &'static Toolchain {
    static TOOLCHAIN: OnceLock<Toolchain> = OnceLock::new();
    TOOLCHAIN.get_or_init(|| {
        let project = pipeline::Project::from_checkout().expect("open the project");
        let sources = project.sources(false).unwrap_or_else(|e| panic!("{e}"));
        let toolchain = pipeline::toolchain::build(&project, &sources, pipeline::Target::X86_64).unwrap_or_else(|e| panic!("{e}"));
        let luajit = pipeline::luajit::build(&project, &sources, &toolchain).unwrap_or_else(|e| panic!("{e}"));
        Toolchain { project, sources, toolchain, luajit }
    })
}

/// The release tarball of one strategy.
pub fn tarball(strategy: Strategy) -> &'static Path {
    &dist().bundle(strategy).tarball
}

/// A fresh temporary directory, removed on drop.
pub fn temp_dir(label: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("e2e-{label}-")).tempdir().expect("create a temporary directory")
}

/// Unpacks the bundle of `strategy` into `dir` (as a user would: `tar -xzf`), returning the
/// bundle's root (`conf/ sbin/ ...`).
pub fn unpack_bundle(strategy: Strategy, dir: &Path) -> PathBuf {
    let status = std::process::Command::new("tar").arg("-xzf").arg(tarball(strategy)).arg("-C").arg(dir).status().expect("run tar");
    assert!(status.success(), "tar -xzf {} failed", tarball(strategy).display());
    let mut roots: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    assert_eq!(roots.len(), 1, "a bundle unpacks to one directory");
    roots.pop().unwrap()
}

/// A port on 127.0.0.1 that was free a moment ago and that no other caller in this process
/// has been given.
///
/// Ports come from below the kernel's ephemeral range, so an outgoing connection's local port
/// (which the kernel takes from that range) can never be the one a server is about to bind,
/// and a port is never handed out twice: two tests sharing a port would have one nginx answer
/// for the other. Each process starts at its own offset, so concurrent test binaries rarely
/// probe the same ports.
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: Mutex<Option<u32>> = Mutex::new(None);
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let start = *next.get_or_insert_with(|| std::process::id().wrapping_mul(997) % COUNT);
    for step in 0..COUNT {
        let candidate = (start + step) % COUNT;
        let port = (FIRST + candidate) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            *next = Some(candidate + 1);
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {FIRST}..{}", FIRST + COUNT)
}

/// Reads a shipped example configuration (`conf/examples/NAME` in an unpacked bundle) and
/// ports it by string replacement only, each replaced string occurring exactly once: the
/// seeds must run unchanged apart from addresses, ports and file paths.
pub fn port_example(root: &Path, name: &str, replacements: &[(&str, String)]) -> String {
    let mut text = std::fs::read_to_string(root.join("conf/examples").join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"));
    for (from, to) in replacements {
        assert_eq!(text.matches(from).count(), 1, "{from:?} occurs once in {name}");
        text = text.replace(from, to);
    }
    text
}

/// An apt repository with empty indexes at `dir` (built with apt-ftparchive), and a sources
/// list naming only it: a Debian mirror that has nothing.
pub fn empty_apt_repository(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("Sources"), "").unwrap();
    std::fs::write(dir.join("Packages"), "").unwrap();
    let release =
        std::process::Command::new("apt-ftparchive").args(["release", "."]).current_dir(dir).output().expect("run apt-ftparchive (Debian's apt-utils)");
    assert!(release.status.success(), "apt-ftparchive release failed");
    std::fs::write(dir.join("Release"), release.stdout).unwrap();
    let list = dir.join("sources.list");
    std::fs::write(&list, format!("deb [trusted=yes] file:{} ./\n", dir.display())).unwrap();
    list
}
