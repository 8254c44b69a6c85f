//! The header of a LuaJIT bytecode dump (`lj_bcdump.h`):
//!
//! ```text
//! ESC 'L' 'J'  version:u8  flags:uleb128  [chunkname_len:uleb128 chunkname]  protos...
//! ```
//!
//! The chunk name is present only when the `STRIP` flag is clear. LuaJIT's loader
//! (`lj_bcread.c`) rejects a dump whose version, `BE` or `FR2` flag differs from the
//! running VM, or that has `FFI` set on a VM without FFI.

use std::fmt;

use crate::Error;

/// Dump flag: big-endian.
pub const FLAG_BE: u32 = 0x01;
/// Dump flag: debug info stripped (no chunk name, no line info).
pub const FLAG_STRIP: u32 = 0x02;
/// Dump flag: contains FFI (cdata) constants.
pub const FLAG_FFI: u32 = 0x04;
/// Dump flag: two-slot frames (LuaJIT 2.1 GC64 builds).
pub const FLAG_FR2: u32 = 0x08;

const MAGIC: [u8; 3] = [0x1b, b'L', b'J'];

/// A parsed bytecode dump header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BytecodeHeader {
    /// Dump format version: 1 for LuaJIT 2.0, 2 for LuaJIT 2.1.
    pub version: u8,
    /// Raw flags.
    pub flags: u32,
    /// The chunk name (e.g. `@resty/core.lua`) if debug info was kept.
    pub chunk_name: Option<Vec<u8>>,
    /// Length of the header in bytes.
    pub len: usize,
}

impl BytecodeHeader {
    /// Parses the header at the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<BytecodeHeader, Error> {
        if bytes.len() < 5 {
            return Err(Error::BadHeader(format!("only {} bytes, a LuaJIT dump header needs at least 5", bytes.len())));
        }
        if bytes[..3] != MAGIC {
            return Err(Error::BadHeader(format!(
                "it starts with {:02x?} instead of ESC 'L' 'J' (1b 4c 4a); is this Lua source or PUC Lua bytecode?",
                &bytes[..3]
            )));
        }
        let version = bytes[3];
        let mut pos = 4;
        let flags = read_uleb128(bytes, &mut pos).ok_or_else(|| Error::BadHeader("the flags field is truncated or longer than 32 bits".into()))?;
        let known = if version >= 2 { FLAG_FR2 * 2 - 1 } else { FLAG_FFI * 2 - 1 };
        if flags & !known != 0 {
            return Err(Error::BadHeader(format!("unknown flag bits {:#x} for dump version {version} (made by a newer LuaJIT?)", flags & !known)));
        }
        let chunk_name = if flags & FLAG_STRIP == 0 {
            let len = read_uleb128(bytes, &mut pos).ok_or_else(|| Error::BadHeader("the chunk name length is truncated".into()))? as usize;
            let name = bytes
                .get(pos..pos + len)
                .ok_or_else(|| Error::BadHeader(format!("the chunk name claims {len} bytes but only {} follow", bytes.len() - pos)))?;
            pos += len;
            Some(name.to_vec())
        } else {
            None
        };
        Ok(BytecodeHeader { version, flags, chunk_name, len: pos })
    }

    /// Debug info was stripped (`luajit -b -s`).
    pub fn stripped(&self) -> bool {
        self.flags & FLAG_STRIP != 0
    }
    /// The dump is big-endian.
    pub fn big_endian(&self) -> bool {
        self.flags & FLAG_BE != 0
    }
    /// The dump contains FFI constants and needs an FFI-enabled VM.
    pub fn ffi(&self) -> bool {
        self.flags & FLAG_FFI != 0
    }
    /// The dump is for a two-slot-frame (GC64) VM.
    pub fn fr2(&self) -> bool {
        self.flags & FLAG_FR2 != 0
    }

    /// The ABI this dump was made for (`ffi` is true only if the dump needs it).
    pub fn abi(&self) -> RuntimeAbi {
        RuntimeAbi { version: self.version, fr2: self.fr2(), big_endian: self.big_endian(), ffi: self.ffi() }
    }
}

fn read_uleb128(bytes: &[u8], pos: &mut usize) -> Option<u32> {
    let mut v: u32 = 0;
    let mut shift = 0;
    loop {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        if shift >= 32 || (shift == 28 && b & 0x70 != 0) {
            return None;
        }
        v |= u32::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
    }
}

/// What a LuaJIT runtime accepts when loading bytecode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuntimeAbi {
    /// Dump format version (`BCDUMP_VERSION`): 2 for LuaJIT 2.1, 1 for 2.0.
    pub version: u8,
    /// Two-slot frames: true for LuaJIT 2.1 with GC64 (the default on x86_64 and arm64).
    pub fr2: bool,
    /// Big-endian target.
    pub big_endian: bool,
    /// The runtime has the FFI library.
    pub ffi: bool,
}

impl RuntimeAbi {
    /// LuaJIT 2.1, GC64, little-endian, with FFI (OpenResty's and Debian's x86_64 builds).
    pub const LUAJIT_2_1_GC64: RuntimeAbi = RuntimeAbi { version: 2, fr2: true, big_endian: false, ffi: true };

    /// A little-endian runtime with FFI.
    pub fn new(version: u8, fr2: bool) -> RuntimeAbi {
        RuntimeAbi { version, fr2, big_endian: false, ffi: true }
    }

    /// Fails, naming the difference, if this runtime would reject `header`.
    pub fn check(&self, header: &BytecodeHeader) -> Result<(), Error> {
        let mismatch = |what: &str, b: String, r: String| Err(Error::AbiMismatch { what: what.into(), bytecode: b, runtime: r });
        if header.version != self.version {
            return mismatch(
                "the dump format version",
                format!("{} ({})", header.version, version_name(header.version)),
                format!("{} ({})", self.version, version_name(self.version)),
            );
        }
        if header.big_endian() != self.big_endian {
            let e = |be: bool| if be { "big-endian" } else { "little-endian" }.to_string();
            return mismatch("the byte order", e(header.big_endian()), e(self.big_endian));
        }
        if header.fr2() != self.fr2 {
            let e = |fr2: bool| if fr2 { "FR2 (GC64 build)" } else { "no FR2 (non-GC64 build)" }.to_string();
            return mismatch("the frame layout", e(header.fr2()), e(self.fr2));
        }
        if header.ffi() && !self.ffi {
            return mismatch("FFI", "required (cdata constants)".into(), "a VM without FFI".into());
        }
        Ok(())
    }
}

fn version_name(v: u8) -> &'static str {
    match v {
        1 => "LuaJIT 2.0",
        2 => "LuaJIT 2.1",
        _ => "unknown LuaJIT",
    }
}

impl fmt::Display for RuntimeAbi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dump version {} ({}), {}, {}, {}",
            self.version,
            version_name(self.version),
            if self.fr2 { "GC64/FR2" } else { "non-GC64" },
            if self.big_endian { "big-endian" } else { "little-endian" },
            if self.ffi { "FFI" } else { "no FFI" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripped_gc64() {
        // What LuaJIT 2.1 GC64 writes for `luajit -b -s`: flags = STRIP|FR2.
        let h = BytecodeHeader::parse(&[0x1b, b'L', b'J', 2, 0x0a, 0x3e, 0]).unwrap();
        assert_eq!(h.version, 2);
        assert!(h.stripped() && h.fr2() && !h.ffi() && !h.big_endian());
        assert_eq!(h.chunk_name, None);
        assert_eq!(h.len, 5);
        RuntimeAbi::LUAJIT_2_1_GC64.check(&h).unwrap();
        RuntimeAbi::new(2, true).check(&h).unwrap();
    }

    #[test]
    fn with_chunk_name() {
        let mut b = vec![0x1b, b'L', b'J', 2, 0x08, 12];
        b.extend_from_slice(b"@resty/t.lua");
        b.extend_from_slice(&[0x44, 0]);
        let h = BytecodeHeader::parse(&b).unwrap();
        assert!(!h.stripped());
        assert_eq!(h.chunk_name.as_deref(), Some(&b"@resty/t.lua"[..]));
        assert_eq!(h.len, 18);
    }

    #[test]
    fn multi_byte_uleb() {
        let mut b = vec![0x1b, b'L', b'J', 2, 0x08, 0x80 | 0x2c, 0x01];
        b.extend(std::iter::repeat_n(b'x', 172));
        let h = BytecodeHeader::parse(&b).unwrap();
        assert_eq!(h.chunk_name.unwrap().len(), 172);
    }

    #[test]
    fn errors() {
        let e = |b: &[u8]| BytecodeHeader::parse(b).unwrap_err().to_string();
        assert!(e(b"local x").contains("1b 4c 4a") || e(b"local x").contains("ESC"));
        assert!(e(&[0x1b, b'L', b'u', b'a', 0x51]).contains("instead of ESC"));
        assert!(e(&[0x1b, b'L']).contains("only 2 bytes"));
        assert!(e(&[0x1b, b'L', b'J', 2]).contains("only 4 bytes"));
        assert!(e(&[0x1b, b'L', b'J', 2, 0x80]).contains("flags"));
        assert!(e(&[0x1b, b'L', b'J', 2, 0x10]).contains("unknown flag bits 0x10"));
        assert!(e(&[0x1b, b'L', b'J', 1, 0x08]).contains("unknown flag bits 0x8"));
        assert!(e(&[0x1b, b'L', b'J', 2, 0x08, 10, b'@']).contains("claims 10 bytes"));
        assert!(e(&[0x1b, b'L', b'J', 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).contains("longer than 32"));
    }

    #[test]
    fn abi_mismatch() {
        let gc64 = BytecodeHeader::parse(&[0x1b, b'L', b'J', 2, 0x0a]).unwrap();
        let non_gc64 = RuntimeAbi::new(2, false);
        let e = non_gc64.check(&gc64).unwrap_err().to_string();
        assert!(e.contains("FR2 (GC64 build)") && e.contains("non-GC64"), "{e}");

        let lj20 = BytecodeHeader::parse(&[0x1b, b'L', b'J', 1, 0x02]).unwrap();
        let e = RuntimeAbi::LUAJIT_2_1_GC64.check(&lj20).unwrap_err().to_string();
        assert!(e.contains("LuaJIT 2.0") && e.contains("LuaJIT 2.1"), "{e}");

        let be = BytecodeHeader::parse(&[0x1b, b'L', b'J', 2, 0x0b]).unwrap();
        assert!(RuntimeAbi::LUAJIT_2_1_GC64.check(&be).unwrap_err().to_string().contains("big-endian"));

        let ffi = BytecodeHeader::parse(&[0x1b, b'L', b'J', 2, 0x0e]).unwrap();
        RuntimeAbi::LUAJIT_2_1_GC64.check(&ffi).unwrap();
        let no_ffi = RuntimeAbi { ffi: false, ..RuntimeAbi::LUAJIT_2_1_GC64 };
        assert!(no_ffi.check(&ffi).unwrap_err().to_string().contains("FFI"));
        assert_eq!(ffi.abi(), RuntimeAbi::LUAJIT_2_1_GC64);
    }
}
