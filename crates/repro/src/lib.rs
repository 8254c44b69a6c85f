//! Reproducible builds from pinned sources, in the manner of Nix.
//!
//! - [`TreeHash`]: a source is pinned by the hash of its unpacked tree, so any archive format
//!   carrying the same files verifies.
//! - [`Lockfile`] / [`Pin`] / [`Mirror`]: the pins, edited in place with `toml_edit`.
//! - [`fetch::vendor`]: fetch a pin from its mirrors in order, verify, unpack safely.
//! - [`Store`] / [`Step`]: build steps keyed by all their inputs, run in a cleared environment
//!   and published atomically.

pub mod archive;
mod error;
pub mod fetch;
mod lock;
pub mod lockfile;
pub mod store;
mod tree;

pub use error::{Context, Error, Result};
pub use fetch::{Fetcher, Verified};
pub use lock::FileLock;
pub use lockfile::{Lockfile, Mirror, MirrorKind, Pin};
pub use store::{Artifact, Step, Store};
pub use tree::TreeHash;
