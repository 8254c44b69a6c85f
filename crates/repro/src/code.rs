//! The identity of Rust code that runs inside a step: a source file's path and the hash of its
//! bytes, taken at compile time. A step lists the code that shapes its output (the executor
//! that copies sources and runs commands, writers called after the commands), so changing one
//! byte of that code changes the step's key, and nothing else's.

/// One source file of some crate, by content hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeId {
    /// `crate/src/file.rs`
    pub path: String,
    /// `blake3:<hex>` of the file's bytes.
    pub hash: String,
}

impl CodeId {
    pub fn of(path: impl Into<String>, source: &[u8]) -> CodeId {
        CodeId { path: path.into(), hash: format!("blake3:{}", blake3::hash(source).to_hex()) }
    }
}

/// `code_id!("src/file.rs")`: the [`CodeId`] of a source file of the calling crate.
#[macro_export]
macro_rules! code_id {
    ($path:literal) => {
        $crate::CodeId::of(concat!(env!("CARGO_PKG_NAME"), "/", $path), include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $path)))
    };
}

/// The code every step runs: the executor that lays out the build directory and runs the
/// commands, and the tree copier it uses.
pub fn executor() -> Vec<CodeId> {
    vec![code_id!("src/store/executor.rs"), code_id!("src/copy.rs")]
}

/// The deterministic tar writer ([`crate::archive::write_tar_gz`]).
pub fn tar_writer() -> CodeId {
    code_id!("src/archive.rs")
}
