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
use crate::target::Target;

/// Where a step mounts the toolchain, relative to its build directory.
pub const MOUNT: &str = "toolchain";
/// In the toolchain's output: the kernel headers, and the support libraries (and allocator).
pub const KERNEL_HEADERS: &str = "kernel-headers";
pub const LIB: &str = "lib";

/// A built toolchain and the target it compiles for.
#[derive(Clone, Debug)]
pub struct Toolchain {
    pub artifact: Artifact,
    pub target: Target,
}

const X86_64_SPECS_IN: &str = include_str!("../../../toolchain/x86_64-linux-musl.specs.in");
const AARCH64_SPECS_IN: &str = include_str!("../../../toolchain/aarch64-linux-musl.specs.in");
/// The binutils a cross build finds under the target's prefix, as autoconf's `--host` and
/// LuaJIT's `CROSS` expect them (`aarch64-linux-musl-ar`, …).
const CROSS_BINUTILS: [&str; 6] = ["ar", "ranlib", "strip", "nm", "objcopy", "ld"];
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

/// Builds musl, gathers the kernel headers and compiles the static-PIE support library for
/// `target`.
pub fn build(project: &Project, sources: &Sources, target: Target) -> Result<Toolchain> {
    project.require_tools()?;
    let musl = sources.get("musl")?;
    let kernel = target.kernel_headers();
    let headers = sources.get(kernel.pin)?;
    project.require_cross_tools(target)?;
    let step = Step::new(target.step_name("toolchain")).input("tools", project.tool_versions());
    let mut step = project
        .with_cross_tools(step, target)
        .input("SOURCE_DATE_EPOCH", crate::project::SOURCE_DATE_EPOCH)
        .env("SOURCE_DATE_EPOCH", crate::project::SOURCE_DATE_EPOCH)
        .source("musl", musl.path(), musl.pin.tree)
        .source("linux-headers", headers.path(), headers.pin.tree);
    step = with_compiler(step, OUT_DIR, target);
    for (name, text) in SUPPORT_SOURCES {
        step = step.file(format!("static-pie/{name}"), text, false);
    }
    let prefix_map = format!("-ffile-prefix-map={BUILD_DIR}=/build/toolchain");
    let mut configure = vec!["./configure".to_owned(), "--prefix=/".into(), "--disable-shared".into()];
    match target {
        Target::X86_64 => configure.push("CC=gcc".into()),
        // musl's own cross-compiling switch: its build tools then get the target's prefix.
        Target::Aarch64 => configure.extend(["--target=aarch64-linux-gnu".into(), format!("CC={}", target.host_cc())]),
    }
    configure.push(format!("CFLAGS=-O2 {prefix_map}"));
    let cc = target.cc();
    let step = step
        .command("musl", configure)
        .command("musl", ["make", "-j2"])
        .command("musl", ["make", "install", &format!("DESTDIR={OUT_DIR}")])
        .command(".", ["mkdir", "-p", &out_path(KERNEL_HEADERS), &out_path(LIB)])
        .command("linux-headers", ["cp", "-R", "linux", "asm-generic", &format!("{}/", out_path(KERNEL_HEADERS))])
        .command("linux-headers", ["cp", "-R", kernel.asm, &out_path(&format!("{KERNEL_HEADERS}/asm"))])
        .command("static-pie", [cc, "-O2", "-fPIE", "-fno-stack-protector", "-c", "dl_find_object.c", "dlsym.c", "relro.c"])
        .command("static-pie", [&target.binutil("ar"), "rcsD", &out_path(&format!("{LIB}/libstaticpie.a")), "dl_find_object.o", "dlsym.o"])
        .command("static-pie", ["cp", "relro.o", &out_path(&format!("{LIB}/relro.o"))]);
    // The memory functions are SSE2 code; aarch64 keeps musl's, which are assembly already.
    let step = match target {
        Target::X86_64 => step.file("string/memory.c", MEMORY_FUNCTIONS, false).command(
            "string",
            [cc].into_iter().chain(MEMORY_FUNCTIONS_CFLAGS).chain(["-c", "memory.c", "-o"]).map(String::from).chain([out_path(&format!("{LIB}/memory.o"))]),
        ),
        Target::Aarch64 => step,
    };
    let artifact = crate::allocator::add_to_toolchain(step, sources, target)?.run_in(project)?;
    Ok(Toolchain { artifact, target })
}

/// Puts the musl compiler on a step's PATH, its specs pointing at the toolchain under `root`
/// (`{build}/toolchain` in steps that mount it, `{out}` while the toolchain itself builds).
/// A cross target's binutils are on the PATH under its prefix too, and in `AR`, `RANLIB` and
/// `STRIP`, which zlib's and OpenSSL's configure read.
pub fn with_compiler(step: Step, root: &str, target: Target) -> Step {
    let specs_in = match target {
        Target::X86_64 => X86_64_SPECS_IN,
        Target::Aarch64 => AARCH64_SPECS_IN,
    };
    let specs = specs_in
        .replace("@MUSL_PREFIX@", root)
        .replace("@KERNEL_HEADERS@", &format!("{root}/{KERNEL_HEADERS}"))
        .replace("@STATICPIE_LIB@", &format!("{root}/{LIB}"));
    // The build directory is mapped here, in the compiler command, rather than in CFLAGS:
    // OpenSSL records its CFLAGS in the binary (`OpenSSL_version(OPENSSL_CFLAGS)`). Without
    // -fno-canonical-system-headers gcc would record a system header by its real path (through
    // the toolchain mount's symlink) whenever that path is shorter, and the map would miss it.
    let wrapper = WRAPPER_IN
        .replace("@HOST_CC@", target.host_cc())
        .replace("@SPECS@", &format!("{} -ffile-prefix-map={BUILD_DIR}=/build -fno-canonical-system-headers", build_path(&specs_file(target))));
    let mut step = step
        .template(specs_file(target), specs, false)
        .template(format!("cc/bin/{}", target.cc()), wrapper, true)
        .env("PATH", format!("{}:/usr/local/bin:/usr/bin:/bin", build_path("cc/bin")))
        .env("CC", target.cc());
    if target != Target::X86_64 {
        let prefix = target.tool_prefix();
        for tool in CROSS_BINUTILS {
            let script = format!("#!/bin/sh\nexec /usr/bin/{} \"$@\"\n", target.binutil(tool));
            step = step.template(format!("cc/bin/{prefix}{tool}"), script, true);
        }
        step = step.env("AR", format!("{prefix}ar")).env("RANLIB", format!("{prefix}ranlib")).env("STRIP", format!("{prefix}strip"));
    }
    step
}

/// Where a step that compiles finds the specs, in its build directory.
fn specs_file(target: Target) -> String {
    format!("cc/{}.specs", target.triple())
}

/// A step that compiles with the toolchain built by [`build`], named `name` with the
/// toolchain's target (see [`Target::step_name`]).
pub fn step_with_toolchain(name: &str, project: &Project, toolchain: &Toolchain) -> Step {
    let target = toolchain.target;
    let step = Step::new(target.step_name(name)).input("tools", project.tool_versions());
    let step = project
        .with_cross_tools(step, target)
        .input("SOURCE_DATE_EPOCH", crate::project::SOURCE_DATE_EPOCH)
        .env("SOURCE_DATE_EPOCH", crate::project::SOURCE_DATE_EPOCH)
        .dep(MOUNT, &toolchain.artifact);
    with_compiler(step, &build_path(MOUNT), target)
}
