//! `cargo xtask <task>`: the project's build tasks. Parsing and dispatch only; the work lives
//! in the `pipeline`, `repro` and `luabc` crates.

mod bench;
mod bytecode;
mod cache;
mod dist;
mod explain;
mod pin;
mod toolchain;
mod vendor;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build a fully static nginx from pinned sources")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Fetch every pinned source, verify it, and unpack it under vendor/.
    Vendor(vendor::Args),
    /// Build both release bundles (embed, lualib) into target/dist.
    Dist(dist::Args),
    /// Add or update one pin from a mirror: fetch, hash the unpacked tree, rewrite the lockfile.
    Pin(pin::Args),
    /// Build the musl toolchain and LuaJIT into the store.
    Toolchain(toolchain::Args),
    /// Compile Lua modules to LuaJIT bytecode objects with the pinned LuaJIT.
    Bytecode(bytecode::Args),
    /// Print a step's derivation (every input of its key), or say which inputs make two keys differ.
    Explain(explain::Args),
    /// The shared cache: write a signing key pair, verify its entries by rebuilding, show stats.
    #[command(subcommand_value_name = "keygen|verify|stats")]
    Cache(cache::Args),
    /// Time cold, no-op and one-.lua-changed dist runs; print binary sizes.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Vendor(args) => vendor::run(args),
        Task::Dist(args) => dist::run(args),
        Task::Pin(args) => pin::run(args),
        Task::Toolchain(args) => toolchain::run(args),
        Task::Bytecode(args) => bytecode::run(args),
        Task::Explain(args) => explain::run(args),
        Task::Cache(args) => cache::run(args),
        Task::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
