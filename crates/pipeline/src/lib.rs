//! The recipes that turn the pinned sources into a fully static nginx.

pub mod project;

pub use project::{Project, Source};
