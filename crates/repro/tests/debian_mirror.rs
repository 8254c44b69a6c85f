//! Debian mirrors by file, against a real local apt repository (built with apt-ftparchive
//! and dpkg-deb, read through apt with a private configuration): versions come and go, a
//! `.dsc` or orig tarball vanishes, an index lies about a file's hash.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use repro::vendor::{self, Verdict};
use repro::{Fetcher, Mirror, MirrorKind, Pin, SourceCache, TreeHash};

/// A flat apt repository (`deb [trusted=yes] file:DIR ./`) with Sources and Packages indexes.
struct Repo {
    tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Repo {
    fn new() -> Repo {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("repo");
        fs::create_dir_all(&dir).unwrap();
        Repo { tmp, dir }
    }

    /// Adds source package `demo` at `version` in `pool`, with `files` (name, bytes) beside
    /// its `.dsc`.
    fn add_source(&self, pool: &str, version: &str, files: &[(&str, &[u8])]) {
        let dir = self.dir.join(pool);
        fs::create_dir_all(&dir).unwrap();
        let mut md5 = String::new();
        let mut sha = String::new();
        for (name, bytes) in files {
            fs::write(dir.join(name), bytes).unwrap();
            let digest = |tool: &str| {
                let out = Command::new(tool).arg(dir.join(name)).output().unwrap();
                String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
            };
            md5.push_str(&format!(" {} {} {name}\n", digest("md5sum"), bytes.len()));
            sha.push_str(&format!(" {} {} {name}\n", digest("sha256sum"), bytes.len()));
        }
        let dsc = format!(
            "Format: 3.0 (quilt)\nSource: demo\nBinary: demo\nArchitecture: all\nVersion: {version}\nMaintainer: Test <t@example.invalid>\nStandards-Version: 4.6.0\nPackage-List:\n demo deb misc optional arch=all\nChecksums-Sha256:\n{sha}Files:\n{md5}"
        );
        fs::write(dir.join(format!("demo_{version}.dsc")), dsc).unwrap();
    }

    /// Adds binary package `demo-data` at `version`, holding `usr/share/demo/` = `tree`.
    fn add_binary(&self, version: &str, tree: &Path) {
        let root = self.tmp.path().join(format!("deb-{version}"));
        fs::create_dir_all(root.join("DEBIAN")).unwrap();
        fs::create_dir_all(root.join("usr/share")).unwrap();
        common::run(Command::new("cp").arg("-a").arg(tree).arg(root.join("usr/share/demo")));
        fs::write(
            root.join("DEBIAN/control"),
            format!("Package: demo-data\nVersion: {version}\nArchitecture: all\nMaintainer: Test <t@example.invalid>\nDescription: test data\n"),
        )
        .unwrap();
        fs::create_dir_all(self.dir.join("pool")).unwrap();
        let deb = self.dir.join(format!("pool/demo-data_{version}_all.deb"));
        common::run(Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&root).arg(&deb).stdout(std::process::Stdio::null()));
    }

    /// Writes the indexes (run after every add; delete files afterwards to make them vanish).
    fn index(&self) {
        let out = |args: &[&str]| Command::new("apt-ftparchive").args(args).current_dir(&self.dir).output().unwrap().stdout;
        fs::write(self.dir.join("Sources"), out(&["sources", "."])).unwrap();
        fs::write(self.dir.join("Packages"), out(&["packages", "."])).unwrap();
        fs::write(self.dir.join("Release"), out(&["release", "."])).unwrap();
    }

    /// A fetcher reading only this repository, with its own apt state and source cache.
    fn fetcher(&self, label: &str) -> Fetcher {
        let list = self.tmp.path().join("sources.list");
        fs::write(&list, format!("deb [trusted=yes] file:{} ./\n", self.dir.display())).unwrap();
        let state = self.tmp.path().join(format!("state-{label}"));
        Fetcher::new(&state).with_apt_sources(&state, vec![list]).with_source_cache(SourceCache::at(self.tmp.path().join("cache")))
    }

    fn vendor_dir(&self) -> PathBuf {
        self.tmp.path().join("vendor")
    }
}

fn orig_tarball(tmp: &Path) -> (Vec<u8>, TreeHash) {
    let tree = tmp.join("demo-1.0");
    common::sample_tree(&tree);
    let hash = TreeHash::of_dir(&tree).unwrap();
    common::run(Command::new("tar").current_dir(tmp).args(["-czf", "orig.tar.gz", "demo-1.0"]));
    (fs::read(tmp.join("orig.tar.gz")).unwrap(), hash)
}

fn source_pin(tree: TreeHash, spec: &str, extra: Vec<Mirror>) -> Pin {
    let debian = Mirror { kind: MirrorKind::DebianSource { package: spec.into(), file: "demo_1.0.orig.tar.gz".into() }, root: "demo-1.0".into() };
    Pin { name: "demo".into(), version: "1.0".into(), tree, mirrors: [vec![debian], extra].concat(), base: PathBuf::from("/") }
}

fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| !n.ends_with(".lock")).collect()).unwrap_or_default()
}

#[test]
fn the_older_version_serves_the_orig_file_when_the_newer_lost_its_dsc_and_orig() {
    let repo = Repo::new();
    let (orig, tree) = orig_tarball(repo.tmp.path());
    repo.add_source("pool/main", "1.0-1", &[("demo_1.0.orig.tar.gz", &orig), ("demo_1.0-1.debian.tar.xz", b"one")]);
    repo.add_source("pool/updates", "1.0-2", &[("demo_1.0.orig.tar.gz", &orig), ("demo_1.0-2.debian.tar.xz", b"two")]);
    repo.index();
    // The newer version is still listed, but its .dsc and its copy of the orig file are gone.
    fs::remove_file(repo.dir.join("pool/updates/demo_1.0-2.dsc")).unwrap();
    fs::remove_file(repo.dir.join("pool/updates/demo_1.0.orig.tar.gz")).unwrap();

    // Even a hint naming the vanished version is only a hint.
    let fetcher = repo.fetcher("a");
    let got = vendor::vendor(&source_pin(tree, "demo=1.0-2", vec![]), &repo.vendor_dir(), &fetcher, false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(TreeHash::of_dir(&got.path).unwrap(), tree);
    let origin = got.origin.unwrap();
    assert!(origin.contains("demo 1.0-1") && origin.contains("demo_1.0.orig.tar.gz"), "{origin}");
    let downloads: Vec<String> = fetcher.commands().into_iter().filter(|c| c.contains("download-file")).collect();
    assert!(downloads.iter().all(|c| c.contains("demo_1.0.orig.tar.gz")), "only the orig file is ever downloaded: {downloads:?}");

    // Now in the source cache: a second vendor into an empty vendor/ runs no apt (nor curl).
    fs::remove_dir_all(repo.vendor_dir()).unwrap();
    let fresh = repo.fetcher("b");
    let again = vendor::vendor(&source_pin(tree, "demo", vec![]), &repo.vendor_dir(), &fresh, false).unwrap();
    assert_eq!(again.origin.as_deref(), Some(vendor::FROM_CACHE));
    assert_eq!(fresh.commands(), Vec::<String>::new());
}

#[test]
fn no_version_with_the_file_names_package_file_versions_suites_and_what_each_lacked() {
    let repo = Repo::new();
    let (orig, tree) = orig_tarball(repo.tmp.path());
    repo.add_source("pool/main", "0.9-1", &[("demo_0.9.orig.tar.gz", &orig)]);
    repo.add_source("pool/main", "0.9-2", &[("demo_0.9.orig.tar.gz", &orig), ("demo_0.9-2.debian.tar.xz", b"x")]);
    repo.index();
    let err = vendor::vendor(&source_pin(tree, "demo", vec![]), &repo.vendor_dir(), &repo.fetcher("a"), false).unwrap_err().to_string();
    for needle in [
        "demo 1.0",
        "source package demo",
        "demo_1.0.orig.tar.gz",
        "0.9-1 (./)",
        "0.9-2 (./)",
        "lists only demo_0.9-2.dsc, demo_0.9.orig.tar.gz, demo_0.9-2.debian.tar.xz",
    ] {
        assert!(err.contains(needle), "error should mention {needle:?}:\n{err}");
    }
    assert_eq!(entries(&repo.vendor_dir()), Vec::<String>::new());
}

#[test]
fn a_download_with_another_sha256_is_refused_with_both_hashes_and_the_next_mirror_is_tried() {
    let repo = Repo::new();
    let (orig, tree) = orig_tarball(repo.tmp.path());
    repo.add_source("pool/main", "1.0-1", &[("demo_1.0.orig.tar.gz", &orig)]);
    repo.index();
    let good_sha = String::from_utf8(Command::new("sha512sum").arg(repo.dir.join("pool/main/demo_1.0.orig.tar.gz")).output().unwrap().stdout).unwrap();
    let good_sha = good_sha.split_whitespace().next().unwrap().to_owned();
    // The mirror now serves a truncated file under the indexed name.
    fs::write(repo.dir.join("pool/main/demo_1.0.orig.tar.gz"), &orig[..orig.len() / 2]).unwrap();
    let fetcher = repo.fetcher("a");

    let err = vendor::vendor(&source_pin(tree, "demo", vec![]), &repo.vendor_dir(), &fetcher, false).unwrap_err().to_string();
    assert!(err.contains(&good_sha) && err.contains("the download has SHA512") && err.contains("truncated or corrupt"), "{err}");
    assert_eq!(entries(&repo.vendor_dir()), Vec::<String>::new(), "nothing left in vendor/");
    assert_eq!(entries(fetcher.source_cache().unwrap().dir()), Vec::<String>::new(), "nothing in the cache");

    let copy = repo.tmp.path().join("orig.tar.gz");
    let local = Mirror { kind: MirrorKind::File(copy), root: "demo-1.0".into() };
    let got = vendor::vendor(&source_pin(tree, "demo", vec![local]), &repo.vendor_dir(), &fetcher, false).unwrap();
    assert!(got.origin.unwrap().contains("local file"));
    assert!(fetcher.source_cache().unwrap().contains(&tree));
}

#[test]
fn any_listed_binary_version_whose_deb_unpacks_to_the_pinned_tree_serves() {
    let repo = Repo::new();
    let old = repo.tmp.path().join("old");
    common::sample_tree(&old);
    let tree = TreeHash::of_dir(&old).unwrap();
    let new = repo.tmp.path().join("new");
    common::sample_tree(&new);
    fs::write(new.join("README"), "changed in 2.0\n").unwrap();
    repo.add_binary("1.0-1", &old);
    repo.add_binary("2.0-1", &new);
    repo.index();
    let pin = Pin {
        name: "demo-data".into(),
        version: "1.0".into(),
        tree,
        mirrors: vec![Mirror { kind: MirrorKind::DebianBinary { package: "demo-data".into() }, root: "usr/share/demo".into() }],
        base: PathBuf::from("/"),
    };
    let got = vendor::vendor(&pin, &repo.vendor_dir(), &repo.fetcher("a"), false).unwrap_or_else(|e| panic!("{e}"));
    assert!(got.origin.unwrap().contains("demo-data 1.0-1"));
    assert_eq!(TreeHash::of_dir(&got.path).unwrap(), tree);

    let rows = vendor::check(&pin, &repo.fetcher("b"), &repo.tmp.path().join("check")).unwrap();
    assert!(matches!(&rows[0].verdict, Verdict::Serves(via) if via.contains("1.0-1")), "{rows:?}");
}

#[test]
fn check_tells_serving_gone_and_different_mirrors_apart() {
    let repo = Repo::new();
    let (orig, tree) = orig_tarball(repo.tmp.path());
    repo.add_source("pool/main", "1.0-1", &[("demo_1.0.orig.tar.gz", &orig)]);
    repo.index();
    let other = repo.tmp.path().join("other");
    common::sample_tree(&other.join("demo-1.0"));
    fs::write(other.join("demo-1.0/README"), "other\n").unwrap();
    common::run(Command::new("tar").current_dir(&other).args(["-czf", "other.tar.gz", "demo-1.0"]));
    let mirrors = vec![
        Mirror { kind: MirrorKind::File(other.join("other.tar.gz")), root: "demo-1.0".into() },
        Mirror { kind: MirrorKind::File(repo.tmp.path().join("missing.tar.gz")), root: "demo-1.0".into() },
        Mirror { kind: MirrorKind::Dir { path: repo.tmp.path().to_path_buf(), file: Some("orig.tar.gz".into()) }, root: "demo-1.0".into() },
    ];
    let rows = vendor::check(&source_pin(tree, "demo", mirrors), &repo.fetcher("a"), &repo.tmp.path().join("check")).unwrap();
    let verdicts: Vec<String> = rows.iter().map(|r| r.verdict.to_string()).collect();
    let other_tree = TreeHash::of_dir(&other.join("demo-1.0")).unwrap();
    assert_eq!(verdicts, ["serves the pinned tree", &format!("different tree ({other_tree})"), "gone", "serves the pinned tree"]);
    assert_eq!(entries(&repo.tmp.path().join("check")), Vec::<String>::new(), "check leaves nothing behind");
}
