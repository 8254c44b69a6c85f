//! Writing release files: atomically, so a reader never sees half of one, and their SHA256.

use std::fs;
use std::io::Read;
use std::path::Path;

use repro::{Error, Result};

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, bytes).map_err(|e| Error::with_source(format!("cannot write {}", tmp.display()), e))?;
    fs::rename(&tmp, path).map_err(|e| Error::with_source(format!("cannot write {}", path.display()), e))
}

/// Lowercase hex SHA256 of a file, as `sha256sum` prints it.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut file = fs::File::open(path).map_err(|e| Error::with_source(format!("cannot open {}", path.display()), e))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::with_source(format!("cannot read {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
