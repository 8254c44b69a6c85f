//! OpenResty's LuaJIT, static for musl: `libluajit-5.1.a`, its headers, and a `luajit` that
//! compiles bytecode for exactly that runtime.

use std::path::PathBuf;

use repro::store::{build_path, out_path};
use repro::{Artifact, Result};

use crate::project::{Project, RunIn, Sources};
use crate::target::Target;
use crate::toolchain::{self, Toolchain};

/// As OpenResty builds it; the fixed PREFIX keeps the build directory out of the compiled-in
/// default search path.
const XCFLAGS: &str = "-DLUAJIT_ENABLE_LUA52COMPAT";
pub const PREFIX: &str = "/usr/local";
const DETERMINISTIC_XCFLAGS: &str = " -DLUAJIT_TEST_FIXED_ORDER=1 -DLUAJIT_SECURITY_STRID=0 -DLUAJIT_SECURITY_STRHASH=0 -DLUAJIT_SECURITY_PRNG=0";

/// Builds LuaJIT for the toolchain's target. A cross build is the one LuaJIT documents: the
/// host gcc compiles the build tools (minilua, buildvm) and `CROSS` names the target's compiler
/// and binutils (the toolchain's `aarch64-linux-musl-gcc`, `-ar`, …); GC64 is the default on
/// both x86_64 and arm64, so bytecode has the same format on both.
pub fn build(project: &Project, sources: &Sources, toolchain: &Toolchain) -> Result<Artifact> {
    let luajit = sources.get("luajit")?;
    let compiler = match toolchain.target {
        Target::X86_64 => format!("CC={}", Target::X86_64.cc()),
        cross => format!("CROSS={}", cross.tool_prefix()),
    };
    let make_vars = |make_target: &str, extra_xcflags: &str| -> Vec<String> {
        vec![
            "make".into(),
            make_target.into(),
            "-j2".into(),
            format!("PREFIX={PREFIX}"),
            compiler.clone(),
            "HOST_CC=gcc".into(),
            "BUILDMODE=static".into(),
            "Q=".into(),
            format!("XCFLAGS={XCFLAGS}{extra_xcflags}"),
            "CCDEBUG=".into(),
            "TARGET_STRIP=@:".into(),
            format!("CFLAGS=-O2 -fPIE -ffile-prefix-map={}=/build/luajit", build_path("")),
        ]
    };
    toolchain::step_with_toolchain("luajit", project, toolchain)
        .source("luajit", luajit.path(), luajit.pin.tree)
        .command("luajit", make_vars("amalg", ""))
        .command("luajit", [make_vars("install", ""), vec![format!("DESTDIR={}", out_path(""))]].concat())
        // The compiler for bytecode: the same tree and flags, but with string hashing and
        // interning fixed, or table constants are dumped in a different order every run. The
        // runtime linked into nginx keeps its randomisation.
        .command("luajit", ["make", "clean"])
        .command("luajit", make_vars("amalg", DETERMINISTIC_XCFLAGS))
        .command("luajit", ["cp".to_owned(), "src/luajit".to_owned(), out_path(&format!("{PREFIX}/bin/luajit-bytecode"))])
        .run_in(project)
}

/// Paths inside a built LuaJIT.
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(artifact: &Artifact) -> Layout {
        Layout { root: artifact.path.join(PREFIX.trim_start_matches('/')) }
    }

    /// The layout as a step that mounts LuaJIT at `mount` sees it (relative to a directory
    /// beside the mount, as nginx's configure runs it).
    pub fn mounted(mount: &str) -> Layout {
        Layout { root: PathBuf::from(format!("../{mount}{PREFIX}")) }
    }

    pub fn luajit(&self) -> PathBuf {
        self.root.join("bin/luajit")
    }

    /// The deterministic compiler build (see [`build`]).
    pub fn bytecode_compiler(&self) -> PathBuf {
        self.root.join("bin/luajit-bytecode")
    }

    pub fn lib_dir(&self) -> PathBuf {
        self.root.join("lib")
    }

    pub fn include_dir(&self) -> PathBuf {
        self.root.join("include/luajit-2.1")
    }

    /// `luajit -b` needs its `jit/*.lua` library.
    pub fn lua_path(&self) -> String {
        format!("{}/?.lua", self.share_dir().display())
    }

    fn share_dir(&self) -> PathBuf {
        let share = self.root.join("share");
        std::fs::read_dir(&share)
            .ok()
            .and_then(|d| d.flatten().map(|e| e.path()).find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("luajit-"))))
            .unwrap_or_else(|| share.join("luajit-2.1.0-beta3"))
    }
}

/// The same LuaJIT tree built for the host (glibc) as a static library, for Rust programs on
/// the build machine such as `examples/embed-lua`; its bytecode format is the musl build's.
pub fn build_host(project: &Project, sources: &Sources) -> Result<Artifact> {
    let luajit = sources.get("luajit")?;
    repro::Step::new("luajit-host")
        .input("tools", project.tool_versions())
        .source("luajit", luajit.path(), luajit.pin.tree)
        .command(
            "luajit",
            [
                "make".to_string(),
                "amalg".into(),
                "-j2".into(),
                format!("PREFIX={PREFIX}"),
                "BUILDMODE=static".into(),
                format!("XCFLAGS={XCFLAGS}"),
                format!("CFLAGS=-O2 -fPIC -ffile-prefix-map={}=/build/luajit", build_path("")),
            ],
        )
        .command("luajit", ["make".to_string(), "install".into(), format!("PREFIX={PREFIX}"), format!("DESTDIR={}", out_path(""))])
        .run_in(project)
}
