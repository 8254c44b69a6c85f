//! Reproducible builds from pinned sources, in the manner of Nix.
//!
//! - [`TreeHash`]: a source is pinned by the hash of its unpacked tree, so any archive format
//!   carrying the same files verifies.
//! - [`Lockfile`] / [`Pin`] / [`Mirror`]: the pins, edited in place with `toml_edit`.
//! - [`vendor::vendor`]: a pin's tree from vendor/, the [`SourceCache`], or the first mirror
//!   candidate that unpacks to it; [`vendor::check`] tries every mirror.
//! - [`Fetcher`]: what a mirror offers (Debian packages by file, through apt), and downloads.
//! - [`Store`] / [`Step`]: build steps keyed by all their inputs, run in a cleared environment
//!   and published atomically.

pub mod apt;
mod apt_sources;
pub mod archive;
pub mod code;
pub mod copy;
pub mod derivation;
mod error;
pub mod fetch;
mod lock;
pub mod lockfile;
pub mod remote;
pub mod source_cache;
pub mod store;
mod tree;
pub mod vendor;

pub use code::CodeId;
pub use derivation::Derivation;
pub use error::{Context, Error, Result};
pub use fetch::Fetcher;
pub use lock::FileLock;
pub use lockfile::{Lockfile, Mirror, MirrorKind, Pin};
pub use remote::Remote;
pub use source_cache::SourceCache;
pub use store::{Artifact, Step, Store};
pub use tree::TreeHash;
pub use vendor::Verified;
