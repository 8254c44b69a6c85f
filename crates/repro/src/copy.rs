//! Copying a source tree into a build directory.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use crate::error::{Context, Result};

/// When every copied file was last modified. One time for all files means `make` finds
/// every generated file (configure, aclocal.m4, ...) up to date, whatever order an archive
/// unpacked them in, and nothing varies from one build to the next.
pub const COPY_MTIME_SECS: u64 = 1_000_000_000;

/// Copies a tree preserving the executable bit and symlinks; every file gets the same time.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    fs::create_dir_all(dst).context(|| format!("cannot create {}", dst.display()))?;
    for entry in fs::read_dir(src).context(|| format!("cannot list {}", src.display()))? {
        let entry = entry.context(|| format!("cannot list {}", src.display()))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let kind = entry.file_type().context(|| format!("cannot stat {}", from.display()))?;
        if kind.is_symlink() {
            let target = fs::read_link(&from).context(|| format!("cannot read {}", from.display()))?;
            symlink(&target, &to).context(|| format!("cannot create {}", to.display()))?;
        } else if kind.is_dir() {
            copy_tree(&from, &to)?;
        } else {
            fs::copy(&from, &to).context(|| format!("cannot copy {}", from.display()))?;
            let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(COPY_MTIME_SECS);
            fs::File::options().write(true).open(&to).and_then(|f| f.set_modified(time)).context(|| format!("cannot set the time of {}", to.display()))?;
        }
    }
    Ok(())
}
