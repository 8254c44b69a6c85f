//! A tree is pinned by its unpacked contents: the archive format must not matter, and any
//! observable change must.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use repro::{archive, TreeHash};

#[test]
fn tar_gz_tar_xz_and_deb_of_one_tree_hash_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("pkg-1.0");
    common::sample_tree(&tree);
    let expected = TreeHash::of_dir(&tree).unwrap();

    common::run(Command::new("tar").current_dir(tmp.path()).args(["-czf", "a.tar.gz", "pkg-1.0"]));
    common::run(Command::new("tar").current_dir(tmp.path()).args(["--owner=1234", "--mtime=@0", "-cJf", "a.tar.xz", "pkg-1.0"]));
    // A .deb: an ar archive whose data.tar.xz holds the tree under usr/share/pkg.
    let deb_root = tmp.path().join("debroot/usr/share");
    fs::create_dir_all(&deb_root).unwrap();
    common::run(Command::new("cp").args(["-a"]).arg(&tree).arg(deb_root.join("pkg")));
    common::run(Command::new("tar").current_dir(tmp.path().join("debroot")).args(["-cJf", "../data.tar.xz", "."]));
    fs::write(tmp.path().join("debian-binary"), "2.0\n").unwrap();
    common::run(Command::new("tar").current_dir(tmp.path()).args(["-czf", "control.tar.gz", "debian-binary"]));
    common::run(Command::new("ar").current_dir(tmp.path()).args(["rc", "a.deb", "debian-binary", "control.tar.gz", "data.tar.xz"]));

    for (file, root) in [("a.tar.gz", "pkg-1.0"), ("a.tar.xz", "pkg-1.0"), ("a.deb", "./usr/share/pkg")] {
        let dest = tmp.path().join(format!("unpacked-{file}"));
        archive::unpack(&tmp.path().join(file), &dest).unwrap();
        assert_eq!(TreeHash::of_dir(&dest.join(root)).unwrap(), expected, "{file}");
    }
}

#[test]
fn one_changed_byte_or_executable_bit_or_link_target_changes_the_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("t");
    common::sample_tree(&tree);
    let original = TreeHash::of_dir(&tree).unwrap();

    let mut data = fs::read(tree.join("src/sub/data.txt")).unwrap();
    data[50_000] ^= 1;
    fs::write(tree.join("src/sub/data.txt"), &data).unwrap();
    let byte_changed = TreeHash::of_dir(&tree).unwrap();
    assert_ne!(byte_changed, original);
    data[50_000] ^= 1;
    fs::write(tree.join("src/sub/data.txt"), &data).unwrap();
    assert_eq!(TreeHash::of_dir(&tree).unwrap(), original, "restoring the byte restores the hash");

    fs::set_permissions(tree.join("src/main.c"), fs::Permissions::from_mode(0o755)).unwrap();
    assert_ne!(TreeHash::of_dir(&tree).unwrap(), original, "executable bit");
    fs::set_permissions(tree.join("src/main.c"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(TreeHash::of_dir(&tree).unwrap(), original, "other permission bits do not count");

    fs::remove_file(tree.join("main-link.c")).unwrap();
    std::os::unix::fs::symlink("README", tree.join("main-link.c")).unwrap();
    assert_ne!(TreeHash::of_dir(&tree).unwrap(), original, "symlink target");
}

#[test]
fn hash_text_round_trips_and_rejects_garbage() {
    let tmp = tempfile::tempdir().unwrap();
    common::sample_tree(tmp.path());
    let hash = TreeHash::of_dir(tmp.path()).unwrap();
    assert_eq!(hash.to_string().parse::<TreeHash>().unwrap(), hash);
    let err = "sha256:abcd".parse::<TreeHash>().unwrap_err().to_string();
    assert!(err.contains("must start with \"blake3:\""), "{err}");
}
