//! Archive entries that would land outside the destination are refused.

use std::fs;
use std::io::Write;
use std::path::Path;

use repro::archive;

/// A tar with one entry whose name (and link target) are written raw, bypassing the
/// checks that tar builders apply.
fn raw_tar(path: &Path, entries: &[(&str, u8, &str, &[u8])]) {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        let size = format!("{:011o}", data.len());
        h[124..135].copy_from_slice(size.as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = *kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    fs::File::create(path).unwrap().write_all(&out).unwrap();
}

fn refused(entries: &[(&str, u8, &str, &[u8])], expect: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let tar = tmp.path().join("evil.tar");
    raw_tar(&tar, entries);
    let dest = tmp.path().join("inner/dest");
    let err = archive::unpack(&tar, &dest).expect_err("must be refused").to_string();
    assert!(err.contains(expect), "error {err:?} should say {expect:?}");
    assert!(err.contains("evil.tar"), "error names the archive: {err}");
    assert!(!tmp.path().join("inner/escaped").exists() && !tmp.path().join("escaped").exists(), "nothing written outside");
}

#[test]
fn dot_dot_is_refused() {
    refused(&[("pkg/../../escaped", b'0', "", b"x")], "climbs out");
}

#[test]
fn absolute_path_is_refused() {
    refused(&[("/tmp/escaped-absolute", b'0', "", b"x")], "absolute");
}

#[test]
fn symlink_pointing_outside_is_refused() {
    refused(&[("pkg/link", b'2', "../../escaped", b"")], "points outside");
    refused(&[("pkg/abs", b'2', "/etc", b"")], "points outside");
}

#[test]
fn writing_through_a_symlink_is_refused() {
    refused(&[("pkg/dir", b'2', ".", b""), ("pkg/dir/escaped", b'0', "", b"x")], "beneath the symlink");
}

#[test]
fn chained_symlinks_that_escape_together_are_refused() {
    // Each link is inside on its own; through `s -> .` the second resolves above the root.
    refused(&[("s", b'2', ".", b""), ("d/x", b'2', "../s/s/s", b""), ("d/y", b'2', "x/..", b"")], "resolves outside");
}

#[test]
fn a_truncated_archive_is_an_error_not_a_partial_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("t");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("big"), vec![1u8; 300_000]).unwrap();
    let status = std::process::Command::new("tar").current_dir(tmp.path()).args(["-czf", "t.tar.gz", "t"]).status().unwrap();
    assert!(status.success());
    let bytes = fs::read(tmp.path().join("t.tar.gz")).unwrap();
    fs::write(tmp.path().join("cut.tar.gz"), &bytes[..bytes.len() / 2]).unwrap();
    let err = archive::unpack(&tmp.path().join("cut.tar.gz"), &tmp.path().join("out")).unwrap_err().to_string();
    assert!(err.contains("cut.tar.gz"), "{err}");
}
