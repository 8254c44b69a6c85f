//! The machines a dist builds for: x86_64, natively, and aarch64, cross-built on x86_64 with
//! Debian's `gcc-aarch64-linux-gnu` and run under `qemu-aarch64-static` where a build has to
//! execute what it compiled.
//!
//! Every x86_64 step keeps the name, inputs and commands it had before targets existed, so its
//! keys and bytes do not depend on aarch64 being built too.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    X86_64,
    Aarch64,
}

impl Target {
    pub const ALL: [Target; 2] = [Target::X86_64, Target::Aarch64];

    /// As in bundle names and `--target`: `x86_64-linux-musl`, `aarch64-linux-musl`.
    pub fn triple(self) -> &'static str {
        match self {
            Target::X86_64 => "x86_64-linux-musl",
            Target::Aarch64 => "aarch64-linux-musl",
        }
    }

    /// The compiler command configure scripts get: the toolchain's gcc wrapper.
    pub fn cc(self) -> &'static str {
        match self {
            Target::X86_64 => "x86_64-linux-musl-gcc",
            Target::Aarch64 => "aarch64-linux-musl-gcc",
        }
    }

    /// The gcc the wrapper runs with the musl specs.
    pub fn host_cc(self) -> &'static str {
        match self {
            Target::X86_64 => "/usr/bin/gcc",
            Target::Aarch64 => "/usr/bin/aarch64-linux-gnu-gcc",
        }
    }

    /// The prefix of the toolchain's commands for a cross target, as autoconf's `--host` and
    /// LuaJIT's `CROSS` expect it (`aarch64-linux-musl-`).
    pub fn tool_prefix(self) -> String {
        format!("{}-", self.triple())
    }

    /// A binutils program for this target's objects (`ar`, `strip`, …).
    pub fn binutil(self, tool: &str) -> String {
        match self {
            Target::X86_64 => tool.to_owned(),
            Target::Aarch64 => format!("aarch64-linux-gnu-{tool}"),
        }
    }

    /// A step's name: the x86_64 one unchanged, others suffixed with their architecture.
    pub fn step_name(self, base: &str) -> String {
        match self {
            Target::X86_64 => base.to_owned(),
            Target::Aarch64 => format!("{base}-aarch64"),
        }
    }

    /// The program that runs this target's executables on the build machine, if it cannot
    /// run them itself. It is always invoked explicitly: registering a binfmt handler would
    /// change how every process on the machine runs foreign binaries.
    pub fn runner(self) -> Option<&'static str> {
        match self {
            Target::X86_64 => None,
            Target::Aarch64 => Some("qemu-aarch64-static"),
        }
    }

    /// The host programs a cross build runs, beyond [`crate::project::HOST_TOOLS`]; their
    /// versions are part of every key of this target's steps.
    pub fn cross_tools(self) -> &'static [&'static str] {
        match self {
            Target::X86_64 => &[],
            Target::Aarch64 => &["aarch64-linux-gnu-gcc", "aarch64-linux-gnu-ld", "aarch64-linux-gnu-ar", "aarch64-linux-gnu-strip", "qemu-aarch64-static"],
        }
    }

    /// The pin holding the kernel headers for this architecture (`linux/` and `asm-generic/` at
    /// its root), and where its `asm/` is inside it.
    pub fn kernel_headers(self) -> KernelHeaders {
        match self {
            Target::X86_64 => KernelHeaders { pin: "linux-headers", asm: "x86_64-linux-gnu/asm" },
            Target::Aarch64 => KernelHeaders { pin: "linux-headers-arm64", asm: "asm" },
        }
    }

    /// Pins only other targets build with: left out of this target's provenance and SBOM.
    pub fn foreign_pins(self) -> Vec<&'static str> {
        Target::ALL.iter().filter(|t| **t != self).map(|t| t.kernel_headers().pin).filter(|p| *p != self.kernel_headers().pin).collect()
    }

    /// OpenSSL's `Configure` target.
    pub fn openssl(self) -> &'static str {
        match self {
            Target::X86_64 => "linux-x86_64",
            Target::Aarch64 => "linux-aarch64",
        }
    }

    /// `uname -m` on this target (the triple's first part), as nginx's configure names the
    /// machine.
    pub fn machine(self) -> &'static str {
        self.triple().split('-').next().expect("a triple has a machine")
    }

    /// The OCI platform architecture.
    pub fn oci_architecture(self) -> &'static str {
        match self {
            Target::X86_64 => "amd64",
            Target::Aarch64 => "arm64",
        }
    }
}

/// Where a kernel headers pin keeps what musl builds need.
#[derive(Clone, Copy, Debug)]
pub struct KernelHeaders {
    pub pin: &'static str,
    /// This architecture's `asm/`, relative to the pin's root.
    pub asm: &'static str,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.triple())
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Target, String> {
        Target::ALL.into_iter().find(|t| t.triple() == s).ok_or_else(|| {
            let known: Vec<&str> = Target::ALL.iter().map(|t| t.triple()).collect();
            format!("unknown target {s:?}: the targets are {} (or `all`)", known.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triples_round_trip_and_unknown_names_say_what_exists() {
        for t in Target::ALL {
            assert_eq!(t.triple().parse::<Target>().unwrap(), t);
        }
        let err = "riscv64-linux-musl".parse::<Target>().unwrap_err();
        assert!(err.contains("x86_64-linux-musl, aarch64-linux-musl"), "{err}");
    }

    #[test]
    fn x86_64_steps_keep_their_names_and_tools() {
        assert_eq!(Target::X86_64.step_name("nginx"), "nginx");
        assert_eq!(Target::Aarch64.step_name("nginx"), "nginx-aarch64");
        assert_eq!(Target::X86_64.binutil("strip"), "strip");
        assert_eq!(Target::X86_64.foreign_pins(), ["linux-headers-arm64"]);
        assert_eq!(Target::Aarch64.foreign_pins(), ["linux-headers"]);
        assert_eq!((Target::X86_64.machine(), Target::Aarch64.machine()), ("x86_64", "aarch64"));
    }
}
