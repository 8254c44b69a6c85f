//! PCRE 8 as a static library, its own step so that nginx changes never rebuild it.

use repro::store::out_path;
use repro::{Artifact, Result};

use crate::project::{Project, RunIn, Sources};
use crate::target::Target;
use crate::toolchain::{self, Toolchain};

/// Where the library and headers land inside the step's output.
pub const PREFIX: &str = "usr/local";

/// The headers, as a step that mounts PCRE at `mount` reaches them from a directory beside the
/// mount.
pub fn include_dir(mount: &str) -> String {
    format!("../{mount}/{PREFIX}/include")
}

/// The static library, as [`include_dir`] reaches the headers.
pub fn lib_dir(mount: &str) -> String {
    format!("../{mount}/{PREFIX}/lib")
}

/// PCRE 8 (lua-nginx-module 0.10.23 uses the PCRE1 API) with JIT and UTF-8: nginx's in-tree
/// build of it would be unoptimised and without UTF-8, failing `ngx.re.match(s, re, "u")`.
pub fn build(project: &Project, sources: &Sources, toolchain: &Toolchain) -> Result<Artifact> {
    let pcre = sources.get("pcre")?;
    let mut configure = vec!["./configure".to_owned(), format!("--prefix=/{PREFIX}")];
    if toolchain.target != Target::X86_64 {
        configure.push(format!("--host={}", toolchain.target.triple()));
    }
    configure.extend(
        [
            "--disable-shared",
            "--disable-cpp",
            "--enable-jit",
            "--enable-utf",
            "--enable-unicode-properties",
            &format!("CC={}", toolchain.target.cc()),
            "CFLAGS=-O2 -fPIE -fstack-protector-strong",
        ]
        .map(String::from),
    );
    toolchain::step_with_toolchain("pcre", project, toolchain)
        .source("pcre", pcre.path(), pcre.pin.tree)
        .command("pcre", configure)
        .command("pcre", ["make", "-j2", "libpcre.la"])
        .command("pcre", ["make", "install-libLTLIBRARIES", "install-includeHEADERS", "install-nodist_includeHEADERS", &format!("DESTDIR={}", out_path(""))])
        .run_in(project)
}
