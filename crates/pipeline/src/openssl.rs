//! OpenSSL as static libraries, its own step so that nginx changes never rebuild it.

use repro::store::out_path;
use repro::{Artifact, Result};

use crate::project::{Project, RunIn, Sources};
use crate::toolchain::{self, Toolchain};

/// Where the libraries and headers land inside the step's output.
pub const PREFIX: &str = "usr/local/ssl";

/// The headers, as a step that mounts OpenSSL at `mount` reaches them from a directory beside
/// the mount.
pub fn include_dir(mount: &str) -> String {
    format!("../{mount}/{PREFIX}/include")
}

/// The static libraries, as [`include_dir`] reaches the headers.
pub fn lib_dir(mount: &str) -> String {
    format!("../{mount}/{PREFIX}/lib")
}

pub fn build(project: &Project, sources: &Sources, toolchain: &Toolchain) -> Result<Artifact> {
    let openssl = sources.get("openssl")?;
    toolchain::step_with_toolchain("openssl", project, toolchain)
        .source("openssl", openssl.path(), openssl.pin.tree)
        .command(
            "openssl",
            [
                "perl",
                "./Configure",
                toolchain.target.openssl(),
                "no-shared",
                "no-tests",
                "no-afalgeng",
                "no-module",
                "no-dso",
                &format!("--prefix=/{PREFIX}"),
                "--openssldir=/etc/ssl",
                "--libdir=lib",
                &format!("CC={}", toolchain.target.cc()),
                "CFLAGS=-O2 -fPIE -fstack-protector-strong",
            ],
        )
        .command("openssl", ["make", "-j2", "build_libs"])
        .command("openssl", ["make".to_owned(), "install_dev".to_owned(), format!("DESTDIR={}", out_path(""))])
        .run_in(project)
}
