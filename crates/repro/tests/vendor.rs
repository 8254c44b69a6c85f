//! Fetching a pin: the first mirror that yields the pinned tree wins; a corrupt or wrong
//! download is refused with the source, mirror and both hashes, leaving nothing behind.

mod common;

use std::fs;
use std::process::Command;

use repro::{vendor as fetch, Fetcher, Mirror, MirrorKind, Pin, TreeHash};

struct Fixture {
    tmp: tempfile::TempDir,
    good: std::path::PathBuf,
    tree: TreeHash,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let tree_dir = tmp.path().join("pkg-1.0");
    common::sample_tree(&tree_dir);
    let tree = TreeHash::of_dir(&tree_dir).unwrap();
    common::run(Command::new("tar").current_dir(tmp.path()).args(["-czf", "good.tar.gz", "pkg-1.0"]));
    let good = tmp.path().join("good.tar.gz");
    Fixture { tmp, good, tree }
}

fn pin(tree: TreeHash, files: &[&std::path::Path]) -> Pin {
    Pin {
        name: "pkg".into(),
        version: "1.0".into(),
        tree,
        mirrors: files.iter().map(|f| Mirror { kind: MirrorKind::File(f.to_path_buf()), root: "pkg-1.0".into() }).collect(),
        base: std::path::PathBuf::from("/"),
    }
}

fn leftovers(dir: &std::path::Path) -> Vec<String> {
    fs::read_dir(dir).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| !n.ends_with(".lock")).collect()).unwrap_or_default()
}

#[test]
fn a_hash_mismatch_names_source_mirror_and_both_hashes_and_leaves_nothing() {
    let f = fixture();
    let vendor = f.tmp.path().join("vendor");
    let wrong: TreeHash = format!("blake3:{}", "0".repeat(64)).parse().unwrap();
    let err = fetch::vendor(&pin(wrong, &[&f.good]), &vendor, &Fetcher::new(f.tmp.path().join("cache")), false).unwrap_err().to_string();
    for needle in ["pkg 1.0", "good.tar.gz", &wrong.to_string(), &f.tree.to_string(), "expected", "got"] {
        assert!(err.contains(needle), "error should mention {needle:?}: {err}");
    }
    assert_eq!(leftovers(&vendor), Vec::<String>::new());
}

#[test]
fn a_truncated_download_is_refused_and_the_next_mirror_is_used() {
    let f = fixture();
    let bytes = fs::read(&f.good).unwrap();
    let cut = f.tmp.path().join("cut.tar.gz");
    fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let vendor = f.tmp.path().join("vendor");
    let fetcher = Fetcher::new(f.tmp.path().join("cache"));

    let err = fetch::vendor(&pin(f.tree, &[&cut]), &vendor, &fetcher, false).unwrap_err().to_string();
    assert!(err.contains("cut.tar.gz") && err.contains("pkg 1.0"), "{err}");
    assert_eq!(leftovers(&vendor), Vec::<String>::new());

    let got = fetch::vendor(&pin(f.tree, &[&cut, &f.good]), &vendor, &fetcher, false).unwrap();
    assert!(got.fetched);
    assert!(got.origin.unwrap().contains("good.tar.gz"), "the mirror that worked is recorded");
    assert_eq!(TreeHash::of_dir(&got.path).unwrap(), f.tree);
}

#[test]
fn offline_uses_what_is_there_and_refuses_to_fetch() {
    let f = fixture();
    let vendor = f.tmp.path().join("vendor");
    let fetcher = Fetcher::new(f.tmp.path().join("cache"));
    let p = pin(f.tree, &[&f.good]);
    let err = fetch::vendor(&p, &vendor, &fetcher, true).unwrap_err().to_string();
    assert!(err.contains("--offline"), "{err}");
    fetch::vendor(&p, &vendor, &fetcher, false).unwrap();
    let again = fetch::vendor(&p, &vendor, &fetcher, true).unwrap();
    assert!(!again.fetched);

    // A tampered vendored tree is not trusted.
    fs::write(again.path.join("README"), "tampered\n").unwrap();
    let err = fetch::vendor(&p, &vendor, &fetcher, true).unwrap_err().to_string();
    assert!(err.contains("different tree"), "{err}");
    let refetched = fetch::vendor(&p, &vendor, &fetcher, false).unwrap();
    assert!(refetched.fetched);
    assert_eq!(fs::read_to_string(refetched.path.join("README")).unwrap(), "hello\n");
}
