use std::fs;
use std::path::Path;

use crate::error::{Context, Result};

/// An exclusive advisory lock held until drop; the kernel releases it if the process dies,
/// so an interrupted build never leaves a stale lock behind.
pub struct FileLock {
    _file: fs::File,
}

impl FileLock {
    pub fn acquire(path: &Path) -> Result<FileLock> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).context(|| format!("cannot create {}", parent.display()))?;
        }
        let file =
            fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).context(|| format!("cannot open lock file {}", path.display()))?;
        file.lock().context(|| format!("cannot lock {}", path.display()))?;
        Ok(FileLock { _file: file })
    }
}
