//! OpenSSL and PCRE as static libraries, each its own step so that nginx changes never
//! rebuild them.

use repro::{Artifact, Result};

use crate::project::{Project, RunIn, Sources};
use crate::toolchain;

/// Where the libraries and headers land inside the step's output.
pub const PREFIX: &str = "usr/local/ssl";

pub fn build(project: &Project, sources: &Sources, toolchain: &Artifact) -> Result<Artifact> {
    let openssl = sources.get("openssl")?;
    toolchain::step_with_toolchain("openssl", project, toolchain)
        .source("openssl", openssl.path(), openssl.pin.tree)
        .command(
            "openssl",
            [
                "perl",
                "./Configure",
                "linux-x86_64",
                "no-shared",
                "no-tests",
                "no-afalgeng",
                "no-module",
                "no-dso",
                "--prefix=/usr/local/ssl",
                "--openssldir=/etc/ssl",
                "--libdir=lib",
                &format!("CC={}", toolchain::CC),
                "CFLAGS=-O2 -fPIE -fstack-protector-strong",
            ],
        )
        .command("openssl", ["make", "-j2", "build_libs"])
        .command("openssl", ["make", "install_dev", "DESTDIR={out}"])
        .run_in(project)
}

/// PCRE 8 (lua-nginx-module 0.10.23 uses the PCRE1 API) with JIT and UTF-8: nginx's in-tree
/// build of it would be unoptimised and without UTF-8, failing `ngx.re.match(s, re, "u")`.
pub fn build_pcre(project: &Project, sources: &Sources, toolchain: &Artifact) -> Result<Artifact> {
    let pcre = sources.get("pcre")?;
    toolchain::step_with_toolchain("pcre", project, toolchain)
        .source("pcre", pcre.path(), pcre.pin.tree)
        .command(
            "pcre",
            [
                "./configure",
                "--prefix=/usr/local",
                "--disable-shared",
                "--disable-cpp",
                "--enable-jit",
                "--enable-utf",
                "--enable-unicode-properties",
                &format!("CC={}", toolchain::CC),
                "CFLAGS=-O2 -fPIE -fstack-protector-strong",
            ],
        )
        .command("pcre", ["make", "-j2", "libpcre.la"])
        .command("pcre", ["make", "install-libLTLIBRARIES", "install-includeHEADERS", "install-nodist_includeHEADERS", "DESTDIR={out}"])
        .run_in(project)
}
