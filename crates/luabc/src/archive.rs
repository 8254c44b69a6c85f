//! A minimal, deterministic GNU `ar` writer (the `ar crsD` layout): symbol index
//! `/`, long-name table `//`, then the members, with zero dates, uids and gids.

/// One archive member.
#[derive(Clone, Debug)]
pub struct ArchiveMember {
    /// File name inside the archive (no `/`).
    pub name: String,
    pub data: Vec<u8>,
    /// Global symbols the member defines, for the index the linker uses.
    pub symbols: Vec<String>,
}

fn header(out: &mut Vec<u8>, name: &str, mode: &str, size: usize) {
    let start = out.len();
    let field = |out: &mut Vec<u8>, s: &str, w: usize| {
        debug_assert!(s.len() <= w);
        out.extend_from_slice(s.as_bytes());
        out.extend(std::iter::repeat_n(b' ', w - s.len()));
    };
    field(out, name, 16);
    field(out, "0", 12); // date
    field(out, "0", 6); // uid
    field(out, "0", 6); // gid
    field(out, mode, 8);
    field(out, &size.to_string(), 10);
    out.extend_from_slice(b"`\n");
    debug_assert_eq!(out.len() - start, 60);
}

fn pad(out: &mut Vec<u8>) {
    if out.len() % 2 == 1 {
        out.push(b'\n');
    }
}

fn padded(n: usize) -> usize {
    n + n % 2
}

/// Writes a GNU archive holding `members` in the given order.
pub fn write_archive(members: &[ArchiveMember]) -> Vec<u8> {
    // Member names: short ones inline as `name/`, long ones in the `//` table.
    let mut longnames = Vec::new();
    let names: Vec<String> = members
        .iter()
        .map(|m| {
            if m.name.len() <= 15 {
                format!("{}/", m.name)
            } else {
                let n = format!("/{}", longnames.len());
                longnames.extend_from_slice(m.name.as_bytes());
                longnames.extend_from_slice(b"/\n");
                n
            }
        })
        .collect();

    let nsyms: usize = members.iter().map(|m| m.symbols.len()).sum();
    let symtab_len = if nsyms == 0 {
        0
    } else {
        let strings: usize = members.iter().flat_map(|m| &m.symbols).map(|s| s.len() + 1).sum();
        60 + padded(4 + 4 * nsyms + strings)
    };
    let longnames_len = if longnames.is_empty() { 0 } else { 60 + padded(longnames.len()) };

    let mut offsets = Vec::with_capacity(members.len());
    let mut pos = 8 + symtab_len + longnames_len;
    for m in members {
        offsets.push(pos);
        pos += 60 + padded(m.data.len());
    }

    let mut out = Vec::with_capacity(pos);
    out.extend_from_slice(b"!<arch>\n");
    if nsyms > 0 {
        let mut body = Vec::new();
        body.extend_from_slice(&(nsyms as u32).to_be_bytes());
        for (m, off) in members.iter().zip(&offsets) {
            for _ in &m.symbols {
                body.extend_from_slice(&(*off as u32).to_be_bytes());
            }
        }
        for s in members.iter().flat_map(|m| &m.symbols) {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
        header(&mut out, "/", "0", body.len());
        out.extend_from_slice(&body);
        pad(&mut out);
    }
    if !longnames.is_empty() {
        header(&mut out, "//", "0", longnames.len());
        out.extend_from_slice(&longnames);
        pad(&mut out);
    }
    for ((m, name), off) in members.iter().zip(&names).zip(&offsets) {
        debug_assert_eq!(out.len(), *off);
        header(&mut out, name, "644", m.data.len());
        out.extend_from_slice(&m.data);
        pad(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::read::archive::ArchiveFile;

    #[test]
    fn read_back() {
        let members = vec![
            ArchiveMember { name: "a.o".into(), data: b"abc".to_vec(), symbols: vec!["sym_a".into()] },
            ArchiveMember { name: "resty_upstream_healthcheck.o".into(), data: b"0123".to_vec(), symbols: vec!["luaJIT_BC_resty_upstream_healthcheck".into()] },
            ArchiveMember { name: "no_symbols_but_a_long_name.o".into(), data: vec![], symbols: vec![] },
        ];
        let bytes = write_archive(&members);
        assert_eq!(bytes, write_archive(&members));
        let ar = ArchiveFile::parse(&*bytes).unwrap();
        assert_eq!(ar.kind(), object::read::archive::ArchiveKind::Gnu);
        let read: Vec<_> = ar.members().map(|m| m.unwrap()).collect();
        assert_eq!(read.len(), 3);
        for (r, m) in read.iter().zip(&members) {
            assert_eq!(r.name(), m.name.as_bytes());
            assert_eq!(r.data(&*bytes).unwrap(), &m.data[..]);
            assert_eq!(r.date(), Some(0));
        }
        let syms: Vec<_> = ar.symbols().unwrap().unwrap().map(|s| s.unwrap()).collect();
        assert_eq!(syms.len(), 2);
        assert_eq!(syms[0].name(), b"sym_a");
        assert_eq!(syms[1].name(), b"luaJIT_BC_resty_upstream_healthcheck");
        // The index points at the member headers.
        let second = ar.member(syms[1].offset()).unwrap();
        assert_eq!(second.name(), b"resty_upstream_healthcheck.o");
        assert_eq!(ar.member(syms[0].offset()).unwrap().name(), b"a.o");
    }

    #[test]
    fn empty() {
        assert_eq!(write_archive(&[]), b"!<arch>\n");
    }
}
