//! The recipes that turn the pinned sources into a fully static nginx.
//!
//! Each recipe is a [`repro::Step`]: toolchain → LuaJIT, OpenSSL → nginx (compiled once) →
//! the embed relink with the Lua bytecode → the bundles written by [`dist`].

pub mod allocator;
pub mod bundle;
pub mod bytecode;
pub mod dist;
pub mod lua_modules;
pub mod luajit;
pub mod nginx;
pub mod oci;
pub mod oci_index;
pub mod openssl;
pub mod outputs;
pub mod pcre;
pub mod project;
pub mod provenance;
pub mod sbom;
pub mod step_record;
pub mod strategy;
pub mod target;
pub mod toolchain;

pub use project::{Project, Source, Sources, CACHE_ENV};
pub use step_record::StepRecord;
pub use strategy::Strategy;
pub use target::Target;
