//! The source cache: verified trees by hash, refused when corrupt, exported and imported as
//! one archive, and a `dir` mirror of archives by file name.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use repro::{vendor, Fetcher, Mirror, MirrorKind, Pin, SourceCache, TreeHash};

struct Fixture {
    tmp: tempfile::TempDir,
    tree: TreeHash,
    archive: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    common::sample_tree(&tmp.path().join("pkg-1.0"));
    let tree = TreeHash::of_dir(&tmp.path().join("pkg-1.0")).unwrap();
    fs::create_dir(tmp.path().join("distfiles")).unwrap();
    common::run(Command::new("tar").current_dir(tmp.path()).args(["-czf", "distfiles/pkg-1.0.tar.gz", "pkg-1.0"]));
    let archive = tmp.path().join("distfiles/pkg-1.0.tar.gz");
    Fixture { tmp, tree, archive }
}

fn pin(tree: TreeHash, mirrors: Vec<Mirror>) -> Pin {
    Pin { name: "pkg".into(), version: "1.0".into(), tree, mirrors, base: PathBuf::from("/") }
}

fn fetcher(dir: &Path, cache: &str) -> Fetcher {
    Fetcher::new(dir.join("state")).with_source_cache(SourceCache::at(dir.join(cache)))
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_corrupt_cache_entry_is_refused_and_the_tree_refetched() {
    let f = fixture();
    let fetcher = fetcher(f.tmp.path(), "cache");
    let p = pin(f.tree, vec![Mirror { kind: MirrorKind::File(f.archive.clone()), root: "pkg-1.0".into() }]);
    let vendor_dir = f.tmp.path().join("vendor");
    vendor::vendor(&p, &vendor_dir, &fetcher, false).unwrap();
    let cache = fetcher.source_cache().unwrap();
    assert!(cache.contains(&f.tree));

    // Another tree under this tree's name, as disk corruption or tampering would leave it.
    let other = f.tmp.path().join("other");
    common::sample_tree(&other);
    fs::write(other.join("README"), "not the pinned tree\n").unwrap();
    repro::archive::write_tar_gz(&other, "tree", &cache.entry(&f.tree), 0).unwrap();
    fs::remove_dir_all(&vendor_dir).unwrap();

    let err = vendor::vendor(&p, &vendor_dir, &fetcher, true).unwrap_err().to_string();
    assert!(err.contains("hashes to") && err.contains(&f.tree.to_string()) && err.contains("removed"), "{err}");
    assert!(!cache.contains(&f.tree), "the corrupt entry is gone");
    let got = vendor::vendor(&p, &vendor_dir, &fetcher, false).unwrap();
    assert!(got.origin.unwrap().contains("local file"), "refetched from the mirror");
    assert!(cache.contains(&f.tree));
    assert_eq!(TreeHash::of_dir(&got.path).unwrap(), f.tree);
}

#[test]
fn export_then_import_into_an_empty_cache_gives_the_same_trees_without_any_mirror() {
    let f = fixture();
    let a = fetcher(f.tmp.path(), "cache-a");
    let p = pin(f.tree, vec![Mirror { kind: MirrorKind::File(f.archive.clone()), root: "pkg-1.0".into() }]);
    vendor::vendor(&p, &f.tmp.path().join("vendor-a"), &a, false).unwrap();
    let export = f.tmp.path().join("sources.tar");
    a.source_cache().unwrap().export(&[f.tree], &export).unwrap();
    let again = f.tmp.path().join("again.tar");
    a.source_cache().unwrap().export(&[f.tree], &again).unwrap();
    assert_eq!(fs::read(&export).unwrap(), fs::read(&again).unwrap(), "exports are deterministic");

    let b = fetcher(f.tmp.path(), "cache-b");
    assert_eq!(b.source_cache().unwrap().import(&export).unwrap(), vec![f.tree]);
    let gone = pin(f.tree, vec![Mirror { kind: MirrorKind::File(f.tmp.path().join("nowhere.tar.gz")), root: "pkg-1.0".into() }]);
    let got = vendor::vendor(&gone, &f.tmp.path().join("vendor-b"), &b, false).unwrap();
    assert_eq!(got.origin.as_deref(), Some(vendor::FROM_CACHE));
    assert_eq!(TreeHash::of_dir(&got.path).unwrap(), f.tree);
    assert_eq!(b.commands(), Vec::<String>::new());
}

#[test]
fn a_corrupt_or_foreign_import_is_refused_naming_the_entry_and_nothing_is_loaded() {
    let f = fixture();
    let a = fetcher(f.tmp.path(), "cache-a");
    let p = pin(f.tree, vec![Mirror { kind: MirrorKind::File(f.archive.clone()), root: "pkg-1.0".into() }]);
    vendor::vendor(&p, &f.tmp.path().join("vendor-a"), &a, false).unwrap();
    let cache_a = a.source_cache().unwrap();
    let entry_name = cache_a.entry(&f.tree).file_name().unwrap().to_string_lossy().into_owned();

    // Foreign: an export with one more file that is no cache entry.
    let staging = f.tmp.path().join("staging/sources");
    fs::create_dir_all(&staging).unwrap();
    fs::copy(cache_a.entry(&f.tree), staging.join(&entry_name)).unwrap();
    fs::write(staging.join("notes.txt"), "hello").unwrap();
    let foreign = f.tmp.path().join("foreign.tar");
    common::run(Command::new("tar").current_dir(f.tmp.path().join("staging")).args(["-cf"]).arg(&foreign).arg("sources"));
    // Corrupt: a valid name whose contents are another tree.
    let other = f.tmp.path().join("other");
    common::sample_tree(&other);
    fs::write(other.join("README"), "other\n").unwrap();
    fs::remove_file(staging.join("notes.txt")).unwrap();
    repro::archive::write_tar_gz(&other, "tree", &staging.join(format!("blake3-{}.tar.gz", "ab".repeat(32))), 0).unwrap();
    let corrupt = f.tmp.path().join("corrupt.tar");
    common::run(Command::new("tar").current_dir(f.tmp.path().join("staging")).args(["-cf"]).arg(&corrupt).arg("sources"));
    // Truncated: a good export cut inside its entry's data (after the 512-byte header).
    let good = f.tmp.path().join("good.tar");
    cache_a.export(&[f.tree], &good).unwrap();
    let bytes = fs::read(&good).unwrap();
    let truncated = f.tmp.path().join("truncated.tar");
    fs::write(&truncated, &bytes[..512 + 64]).unwrap();

    let b = fetcher(f.tmp.path(), "cache-b");
    let cache_b = b.source_cache().unwrap();
    for (archive, needle) in
        [(&foreign, "sources/notes.txt"), (&corrupt, &format!("blake3-{}", "ab".repeat(32))), (&truncated, &format!("{entry_name}\" is truncated"))]
    {
        let err = cache_b.import(archive).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
        assert_eq!(listing(cache_b.dir()), Vec::<String>::new(), "nothing half loaded from {}", archive.display());
    }
}

#[test]
fn a_dir_mirror_finds_archives_by_the_names_other_mirrors_give() {
    let f = fixture();
    let mirrors = vec![
        Mirror { kind: MirrorKind::Dir { path: "distfiles".into(), file: None }, root: String::new() },
        Mirror { kind: MirrorKind::Url("https://example.invalid/releases/pkg-1.0.tar.gz".into()), root: "pkg-1.0".into() },
    ];
    let p = Pin { base: f.tmp.path().to_path_buf(), ..pin(f.tree, mirrors) };
    let got = vendor::vendor(&p, &f.tmp.path().join("vendor"), &fetcher(f.tmp.path(), "cache"), false).unwrap_or_else(|e| panic!("{e}"));
    assert!(got.origin.unwrap().contains("local directory distfiles, file pkg-1.0.tar.gz"));
    assert_eq!(TreeHash::of_dir(&got.path).unwrap(), f.tree);
}
