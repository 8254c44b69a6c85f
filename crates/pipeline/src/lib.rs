//! The recipes that turn the pinned sources into a fully static nginx.

pub mod luajit;
pub mod project;
pub mod toolchain;

pub use project::{Project, Source, Sources};
