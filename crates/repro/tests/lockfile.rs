//! `cargo xtask pin` rewrites the lockfile in place: comments and order survive.

use std::fs;

use repro::{Lockfile, Mirror, MirrorKind, TreeHash};

const LOCK: &str = r#"# Pinned sources: a comment that must survive.

[zeta]
version = "1.0"
# why zeta comes from here
tree = "blake3:0000000000000000000000000000000000000000000000000000000000000000"
mirrors = [
  { url = "https://example.invalid/zeta-1.0.tar.gz", root = "zeta-1.0" },
]

[alpha]
version = "2.0"
tree = "blake3:1111111111111111111111111111111111111111111111111111111111111111"
mirrors = [
  { debian-source = "alpha=2.0-1", file = "alpha_2.0.orig.tar.gz", root = "alpha-2.0" },
]
"#;

fn hash(digit: char) -> TreeHash {
    format!("blake3:{}", digit.to_string().repeat(64)).parse().unwrap()
}

#[test]
fn set_pin_updates_in_place_keeping_comments_order_and_other_mirrors() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sources.toml");
    fs::write(&path, LOCK).unwrap();

    let mut lock = Lockfile::open(&path).unwrap();
    let deb = Mirror { kind: MirrorKind::DebianBinary { package: "zeta=1.1-1".into() }, root: "usr/share/zeta".into() };
    lock.set_pin("zeta", "1.1", hash('2'), &deb).unwrap();
    let url = Mirror { kind: MirrorKind::Url("https://example.invalid/new.tar.xz".into()), root: String::new() };
    lock.set_pin("newcomer", "0.1", hash('3'), &url).unwrap();
    lock.save().unwrap();

    let text = fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("# Pinned sources: a comment that must survive."), "{text}");
    assert!(text.contains("# why zeta comes from here"), "{text}");
    let (z, a, n) = (text.find("[zeta]").unwrap(), text.find("[alpha]").unwrap(), text.find("[newcomer]").unwrap());
    assert!(z < a && a < n, "order kept, new pins appended:\n{text}");

    let pins = Lockfile::open(&path).unwrap().pins().unwrap();
    let zeta = pins.iter().find(|p| p.name == "zeta").unwrap();
    assert_eq!((zeta.version.as_str(), zeta.tree), ("1.1", hash('2')));
    assert_eq!(zeta.mirrors.len(), 2, "the new mirror goes first, the old one stays");
    assert_eq!(zeta.mirrors[0], deb);
    assert!(matches!(&zeta.mirrors[1].kind, MirrorKind::Url(u) if u.ends_with("zeta-1.0.tar.gz")));
    let alpha = pins.iter().find(|p| p.name == "alpha").unwrap();
    assert_eq!(alpha.tree, hash('1'), "other pins untouched");
    assert_eq!(pins.iter().find(|p| p.name == "newcomer").unwrap().mirrors, vec![url]);
}

#[test]
fn a_malformed_pin_is_an_error_naming_the_file_and_the_pin() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sources.toml");
    fs::write(&path, "[broken]\nversion = \"1\"\ntree = \"md5:abc\"\nmirrors = [{ url = \"x\" }]\n").unwrap();
    let err = Lockfile::open(&path).unwrap().pins().unwrap_err().to_string();
    assert!(err.contains("sources.toml") && err.contains("[broken]") && err.contains("blake3:"), "{err}");
    fs::write(&path, "[nomirror]\nversion = \"1\"\ntree = \"blake3:{}\"\nmirrors = []\n".replace("{}", &"0".repeat(64))).unwrap();
    let err = Lockfile::open(&path).unwrap().pins().unwrap_err().to_string();
    assert!(err.contains("[nomirror]") && err.contains("at least one mirror"), "{err}");
}

#[test]
fn relative_local_mirrors_stay_relative_and_are_never_doubled() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sources.toml");
    let text = "[local]\nversion = \"1\"\ntree = \"blake3:1111111111111111111111111111111111111111111111111111111111111111\"\nmirrors = [\n  { file = \"archives/local-1.tar.gz\", root = \"local-1\" },\n  { dir = \"../distfiles\" },\n]\n";
    fs::write(&path, text).unwrap();
    let mut lock = Lockfile::open(&path).unwrap();
    let pin = lock.pin("local").unwrap();
    assert_eq!(pin.mirrors[0].kind, MirrorKind::File("archives/local-1.tar.gz".into()));
    assert_eq!(pin.resolve(std::path::Path::new("archives/local-1.tar.gz")), tmp.path().join("archives/local-1.tar.gz"));
    assert_eq!(pin.mirrors[1].kind, MirrorKind::Dir { path: "../distfiles".into(), file: None });

    // Re-pinning from the same relative mirror moves it first, once, still relative.
    lock.set_pin("local", "1", hash('2'), &pin.mirrors[1]).unwrap();
    lock.save().unwrap();
    let saved = fs::read_to_string(&path).unwrap();
    assert_eq!(saved.matches("archives/local-1.tar.gz").count(), 1, "{saved}");
    assert_eq!(saved.matches("../distfiles").count(), 1, "{saved}");
    assert!(!saved.contains(&tmp.path().display().to_string()), "no absolute path: {saved}");
    let again = Lockfile::open(&path).unwrap().pin("local").unwrap();
    assert_eq!(again.mirrors.len(), 2);
    assert_eq!(again.mirrors[0], pin.mirrors[1]);
}
