//! OpenSSL as static libraries, its own step so that nginx changes never rebuild it.

use repro::{Artifact, Result};

use crate::project::{Project, Sources};
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
                "CFLAGS=-O2 -fPIE -fstack-protector-strong -ffile-prefix-map={build}=/build/openssl",
            ],
        )
        .command("openssl", ["make", "-j2", "build_libs"])
        .command("openssl", ["make", "install_dev", "DESTDIR={out}"])
        .run(&project.store)
}
