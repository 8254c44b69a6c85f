//! The allocator every static link gets: mimalloc from its pinned source, compiled with the
//! toolchain's musl headers into one object, `lib/malloc.o`, that the specs link ahead of
//! `libc.a` (see `toolchain/allocator/malloc.c` for why and how it replaces mallocng).
//!
//! It is part of the toolchain step rather than a step of its own so that every program the
//! toolchain links (nginx of both strategies, LuaJIT, configure probes) has one and the same
//! allocator without any recipe naming it.

use repro::{Result, Step};

use crate::project::Sources;
use crate::target::Target;

/// Where the step mounts mimalloc's source.
const SOURCE: &str = "mimalloc";
const GLUE: &str = include_str!("../../../toolchain/allocator/malloc.c");

/// The flags of mimalloc's own release build (CMake, `MI_OVERRIDE=ON`): overriding the
/// standard entry points, hidden internals, initial-exec TLS (the binary is static, so no
/// dynamic TLS is ever needed), and no assertions. The baseline stays portable (x86-64, ARMv8-A).
pub const CFLAGS: [&str; 9] = [
    "-O3",
    "-fPIE",
    "-fvisibility=hidden",
    "-ftls-model=initial-exec",
    "-fno-builtin-malloc",
    "-DMI_MALLOC_OVERRIDE",
    "-DNDEBUG",
    "-DMI_DEBUG=0",
    "-DMI_SECURE=0",
];

/// Adds mimalloc's source and the commands compiling `{out}/lib/malloc.o` to the toolchain
/// step; they must run after musl is installed into `{out}` (they use its headers).
pub fn add_to_toolchain(step: Step, sources: &Sources, target: Target) -> Result<Step> {
    let mimalloc = sources.get("mimalloc")?;
    let mut compile: Vec<String> = vec![target.cc().into()];
    compile.extend(CFLAGS.iter().map(|f| f.to_string()));
    compile.extend([
        format!("-I../{SOURCE}/include"),
        format!("-I../{SOURCE}/src"),
        "-c".into(),
        "malloc.c".into(),
        "-o".into(),
        repro::store::out_path(&format!("{}/malloc.o", crate::toolchain::LIB)),
    ]);
    Ok(step.source(SOURCE, mimalloc.path(), mimalloc.pin.tree).file("allocator/malloc.c", GLUE, false).command("allocator", compile))
}
