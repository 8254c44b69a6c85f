#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// A small source tree with a subdirectory, an executable and a symlink.
pub fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("src/sub")).unwrap();
    fs::write(root.join("README"), "hello\n").unwrap();
    fs::write(root.join("src/main.c"), "int main(void) { return 0; }\n").unwrap();
    fs::write(root.join("src/sub/data.txt"), vec![7u8; 100_000]).unwrap();
    fs::write(root.join("configure"), "#!/bin/sh\necho ok\n").unwrap();
    fs::set_permissions(root.join("configure"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("src/main.c", root.join("main-link.c")).unwrap();
}

pub fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed");
}
