//! The C toolchain every other step builds with: musl from its pinned source, kernel headers,
//! and a gcc wrapper whose specs make every executable a real static-PIE.
//!
//! Debian's musl-gcc turns `-static-pie` into a dynamic PIE, drops crypt(), and gcc 12's
//! libgcc_eh wants glibc's `_dl_find_object`; `toolchain/` holds the specs and the small C
//! support library (`libstaticpie.a`: `_dl_find_object`, a `dlsym` that reads the binary's own
//! `.dynsym`, and a RELRO constructor) that fix all three. It also compiles the allocator and
//! the memory functions (memcpy, memmove, memset, memcmp) every link gets in place of musl's (see
//! [`crate::allocator`] and `toolchain/string/memory.c`).

use repro::store::{build_path, out_path, BUILD_DIR, OUT_DIR};
use repro::{Artifact, Result, Step};

use crate::project::{Project, RunIn, Sources};

/// Where a step mounts the toolchain, relative to its build directory.
pub const MOUNT: &str = "toolchain";
/// The compiler command configure scripts get (found on the step's PATH).
pub const CC: &str = "x86_64-linux-musl-gcc";
/// In the toolchain's output: the kernel headers, and the support libraries (and allocator).
pub const KERNEL_HEADERS: &str = "kernel-headers";
pub const LIB: &str = "lib";
/// Where a step that compiles finds the specs, in its build directory.
const SPECS: &str = "cc/x86_64-linux-musl.specs";

const SPECS_IN: &str = include_str!("../../../toolchain/x86_64-linux-musl.specs.in");
const WRAPPER_IN: &str = include_str!("../../../toolchain/x86_64-linux-musl-gcc.in");
const SUPPORT_SOURCES: [(&str, &str); 3] = [
    ("dl_find_object.c", include_str!("../../../toolchain/static-pie/dl_find_object.c")),
    ("dlsym.c", include_str!("../../../toolchain/static-pie/dlsym.c")),
    ("relro.c", include_str!("../../../toolchain/static-pie/relro.c")),
];

const MEMORY_FUNCTIONS: &str = include_str!("../../../toolchain/string/memory.c");
/// The memory functions must not be compiled back into calls to themselves, and musl's startup
/// calls memcpy (copying the TLS image) before the thread pointer, which holds the stack
/// protector's canary, exists.
const MEMORY_FUNCTIONS_CFLAGS: [&str; 5] = ["-O2", "-fPIE", "-ffreestanding", "-fno-tree-loop-distribute-patterns", "-fno-stack-protector"];

/// Builds musl, gathers the kernel headers and compiles the static-PIE support library.
pub fn build(project: &Project, sources: &Sources) -> Result<Artifact> {
    project.require_tools()?;
    let musl = sources.get("musl")?;
    let headers = sources.get("linux-headers")?;
    let mut step = Step::new("toolchain")
        .input("tools", project.tool_versions())
        .input("SOURCE_DATE_EPOCH", crate::project::SOURCE_DATE_EPOCH)
        .env("SOURCE_DATE_EPOCH", crate::project::SOURCE_DATE_EPOCH)
        .source("musl", musl.path(), musl.pin.tree)
        .source("linux-headers", headers.path(), headers.pin.tree);
    step = with_compiler(step, OUT_DIR);
    for (name, text) in SUPPORT_SOURCES {
        step = step.file(format!("static-pie/{name}"), text, false);
    }
    let prefix_map = format!("-ffile-prefix-map={BUILD_DIR}=/build/toolchain");
    let step = step
        .command("musl", ["./configure", "--prefix=/", "--disable-shared", "CC=gcc", &format!("CFLAGS=-O2 {prefix_map}")])
        .command("musl", ["make", "-j2"])
        .command("musl", ["make", "install", &format!("DESTDIR={OUT_DIR}")])
        .command(".", ["mkdir", "-p", &out_path(KERNEL_HEADERS), &out_path(LIB)])
        .command("linux-headers", ["cp", "-R", "linux", "asm-generic", &format!("{}/", out_path(KERNEL_HEADERS))])
        .command("linux-headers", ["cp", "-R", "x86_64-linux-gnu/asm", &out_path(&format!("{KERNEL_HEADERS}/asm"))])
        .command("static-pie", [CC, "-O2", "-fPIE", "-fno-stack-protector", "-c", "dl_find_object.c", "dlsym.c", "relro.c"])
        .command("static-pie", ["ar", "rcsD", &out_path(&format!("{LIB}/libstaticpie.a")), "dl_find_object.o", "dlsym.o"])
        .command("static-pie", ["cp", "relro.o", &out_path(&format!("{LIB}/relro.o"))])
        .file("string/memory.c", MEMORY_FUNCTIONS, false)
        .command(
            "string",
            [CC].into_iter().chain(MEMORY_FUNCTIONS_CFLAGS).chain(["-c", "memory.c", "-o"]).map(String::from).chain([out_path(&format!("{LIB}/memory.o"))]),
        );
    crate::allocator::add_to_toolchain(step, sources)?.run_in(project)
}

/// Puts the musl compiler on a step's PATH, its specs pointing at the toolchain under `root`
/// (`{build}/toolchain` in steps that mount it, `{out}` while the toolchain itself builds).
pub fn with_compiler(step: Step, root: &str) -> Step {
    let specs = SPECS_IN
        .replace("@MUSL_PREFIX@", root)
        .replace("@KERNEL_HEADERS@", &format!("{root}/{KERNEL_HEADERS}"))
        .replace("@STATICPIE_LIB@", &format!("{root}/{LIB}"));
    // The build directory is mapped here, in the compiler command, rather than in CFLAGS:
    // OpenSSL records its CFLAGS in the binary (`OpenSSL_version(OPENSSL_CFLAGS)`). Without
    // -fno-canonical-system-headers gcc would record a system header by its real path (through
    // the toolchain mount's symlink) whenever that path is shorter, and the map would miss it.
    let wrapper = WRAPPER_IN
        .replace("@HOST_CC@", "/usr/bin/gcc")
        .replace("@SPECS@", &format!("{} -ffile-prefix-map={BUILD_DIR}=/build -fno-canonical-system-headers", build_path(SPECS)));
    step.template(SPECS, specs, false)
        .template(format!("cc/bin/{CC}"), wrapper, true)
        .env("PATH", format!("{}:/usr/local/bin:/usr/bin:/bin", build_path("cc/bin")))
        .env("CC", CC)
}

/// A step that compiles with the toolchain built by [`build`].
pub fn step_with_toolchain(name: &str, project: &Project, toolchain: &Artifact) -> Step {
    let step = Step::new(name)
        .input("tools", project.tool_versions())
        .input("SOURCE_DATE_EPOCH", crate::project::SOURCE_DATE_EPOCH)
        .env("SOURCE_DATE_EPOCH", crate::project::SOURCE_DATE_EPOCH)
        .dep(MOUNT, toolchain);
    with_compiler(step, &build_path(MOUNT))
}
