//! Unpacking of source archives: tar (plain, gzip, xz, bzip2) and Debian packages (an `ar`
//! archive holding `data.tar.*`), refusing any entry that would land outside the destination.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{bail, Context, Error, Result};

/// Unpacks `archive` into `dest` (which must not exist yet) and returns the number of entries.
pub fn unpack(archive: &Path, dest: &Path) -> Result<usize> {
    let file = fs::File::open(archive).context(|| format!("cannot open {}", archive.display()))?;
    let what = archive.display().to_string();
    fs::create_dir_all(dest).context(|| format!("cannot create {}", dest.display()))?;
    unpack_stream(Box::new(io::BufReader::new(file)), dest, &what)
}

fn unpack_stream(mut reader: Box<dyn io::BufRead + '_>, dest: &Path, what: &str) -> Result<usize> {
    let magic = reader.fill_buf().context(|| format!("cannot read {what}"))?.to_vec();
    match Format::sniff(&magic) {
        Format::Gzip => unpack_tar(flate2::bufread::MultiGzDecoder::new(reader), dest, what),
        Format::Xz => unpack_tar(xz2::bufread::XzDecoder::new_multi_decoder(reader), dest, what),
        Format::Bzip2 => unpack_tar(bzip2::bufread::MultiBzDecoder::new(reader), dest, what),
        Format::Deb => unpack_deb(reader, dest, what),
        Format::Tar => unpack_tar(reader, dest, what),
    }
}

enum Format {
    Gzip,
    Xz,
    Bzip2,
    Deb,
    Tar,
}

impl Format {
    fn sniff(magic: &[u8]) -> Format {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Format::Gzip
        } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Format::Xz
        } else if magic.starts_with(b"BZh") {
            Format::Bzip2
        } else if magic.starts_with(b"!<arch>\n") {
            Format::Deb
        } else {
            Format::Tar
        }
    }
}

fn unpack_deb(reader: impl Read, dest: &Path, what: &str) -> Result<usize> {
    let mut deb = ar::Archive::new(reader);
    while let Some(member) = deb.next_entry() {
        let member = member.context(|| format!("{what}: corrupt Debian package (ar archive)"))?;
        let name = String::from_utf8_lossy(member.header().identifier()).into_owned();
        if name.starts_with("data.tar") {
            let inner = format!("{what}:{name}");
            return unpack_stream(Box::new(io::BufReader::new(member)), dest, &inner);
        }
    }
    bail!("{what}: Debian package without a data.tar member")
}

fn unpack_tar(reader: impl Read, dest: &Path, what: &str) -> Result<usize> {
    let mut archive = tar::Archive::new(reader);
    let mut count = 0;
    let entries = archive.entries().context(|| format!("{what}: not a readable tar archive"))?;
    for entry in entries {
        let mut entry = entry.context(|| format!("{what}: corrupt or truncated archive"))?;
        let raw_path = entry.path().context(|| format!("{what}: entry with an unreadable name"))?.into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader | tar::EntryType::XHeader) {
            continue;
        }
        let rel = safe_relative(&raw_path).map_err(|why| Error::new(format!("{what}: refusing entry {}: {why}", raw_path.display())))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = dest.join(&rel);
        refuse_symlinked_parents(dest, &rel).map_err(|why| Error::new(format!("{what}: refusing entry {}: {why}", raw_path.display())))?;
        let io_context = || format!("{what}: cannot unpack {}", raw_path.display());
        match kind {
            tar::EntryType::Directory => fs::create_dir_all(&target).context(io_context)?,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                create_parent(&target)?;
                let mode = entry.header().mode().context(io_context)?;
                let mut out = fs::File::create(&target).context(io_context)?;
                io::copy(&mut entry, &mut out).context(|| format!("{what}: corrupt or truncated archive at {}", raw_path.display()))?;
                let perm = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
                fs::set_permissions(&target, fs::Permissions::from_mode(perm)).context(io_context)?;
            }
            tar::EntryType::Symlink => {
                let link = entry.link_name().context(io_context)?.ok_or_else(|| Error::new(io_context()))?;
                let parent = rel.parent().unwrap_or(Path::new(""));
                if link.is_absolute() || safe_relative(&parent.join(&link)).is_err() {
                    bail!("{what}: refusing symlink {} -> {}: it points outside the archive", raw_path.display(), link.display());
                }
                create_parent(&target)?;
                std::os::unix::fs::symlink(&link, &target).context(io_context)?;
            }
            tar::EntryType::Link => {
                let link = entry.link_name().context(io_context)?.ok_or_else(|| Error::new(io_context()))?;
                let source = safe_relative(&link)
                    .map_err(|why| Error::new(format!("{what}: refusing hard link {} -> {}: {why}", raw_path.display(), link.display())))?;
                create_parent(&target)?;
                fs::copy(dest.join(source), &target).context(io_context)?;
            }
            other => bail!("{what}: refusing entry {} of type {other:?}: only files, directories and links belong in a source tree", raw_path.display()),
        }
        count += 1;
    }
    let canonical_dest = fs::canonicalize(dest).context(|| format!("cannot resolve {}", dest.display()))?;
    refuse_escaping_symlinks(&canonical_dest, dest, what)?;
    Ok(count)
}

fn create_parent(path: &Path) -> Result<()> {
    let parent = path.parent().expect("an entry path has a parent");
    fs::create_dir_all(parent).context(|| format!("cannot create {}", parent.display()))
}

/// Normalises an archive path lexically, refusing absolute paths and `..` that climbs out.
fn safe_relative(path: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Err("it climbs out of the archive with `..`");
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err("it is an absolute path"),
        }
    }
    Ok(out)
}

/// An entry beneath a symlink unpacked earlier would be written wherever that link points.
fn refuse_symlinked_parents(dest: &Path, rel: &Path) -> Result<(), String> {
    let mut path = dest.to_path_buf();
    let mut components = rel.components().peekable();
    while let Some(component) = components.next() {
        if components.peek().is_none() {
            break;
        }
        path.push(component);
        if fs::symlink_metadata(&path).map(|m| m.file_type().is_symlink()).unwrap_or(false) {
            return Err(format!("it lies beneath the symlink {}", path.strip_prefix(dest).unwrap().display()));
        }
    }
    Ok(())
}

/// Chains of links can escape even when each one looks harmless on its own: resolve them all.
fn refuse_escaping_symlinks(canonical_root: &Path, dir: &Path, what: &str) -> Result<()> {
    for entry in fs::read_dir(dir).context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.context(|| format!("cannot list {}", dir.display()))?;
        let kind = entry.file_type().context(|| format!("cannot stat {}", entry.path().display()))?;
        if kind.is_symlink() {
            if let Ok(resolved) = fs::canonicalize(entry.path()) {
                if !resolved.starts_with(canonical_root) {
                    bail!("{what}: refusing symlink {}: it resolves outside the archive", entry.path().display());
                }
            }
        } else if kind.is_dir() {
            refuse_escaping_symlinks(canonical_root, &entry.path(), what)?;
        }
    }
    Ok(())
}

/// Writes `dir` as a deterministic `.tar.gz` whose entries sit under `top/`: sorted names,
/// owner 0, modes 0755/0644 by the executable bit, every time `mtime`, gzip header without
/// name or time. Written to a temporary file and renamed, so readers never see half of it.
pub fn write_tar_gz(dir: &Path, top: &str, out: &Path, mtime: u64) -> Result<()> {
    write_tar_gz_level(dir, top, out, mtime, 9)
}

/// [`write_tar_gz`] with gzip compression `level` (0-9).
pub fn write_tar_gz_level(dir: &Path, top: &str, out: &Path, mtime: u64, level: u32) -> Result<()> {
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        let file = fs::File::create(&tmp).context(|| format!("cannot create {}", tmp.display()))?;
        let gz = flate2::GzBuilder::new().mtime(0).write(file, flate2::Compression::new(level));
        let mut tar = tar::Builder::new(gz);
        tar.mode(tar::HeaderMode::Deterministic);
        append_sorted(&mut tar, dir, Path::new(top), mtime)?;
        let gz = tar.into_inner().context(|| format!("cannot finish {}", tmp.display()))?;
        gz.finish().context(|| format!("cannot finish {}", tmp.display()))?;
        fs::rename(&tmp, out).context(|| format!("cannot write {}", out.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn append_sorted<W: io::Write>(tar: &mut tar::Builder<W>, dir: &Path, name: &Path, mtime: u64) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_size(0);
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    tar.append_data(&mut header, format!("{}/", name.display()), io::empty()).context(|| format!("cannot archive {}", dir.display()))?;
    let mut entries: Vec<_> = fs::read_dir(dir)
        .context(|| format!("cannot list {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .context(|| format!("cannot list {}", dir.display()))?;
    entries.sort();
    for path in entries {
        let child = name.join(path.file_name().unwrap());
        let meta = fs::symlink_metadata(&path).context(|| format!("cannot stat {}", path.display()))?;
        if meta.is_dir() {
            append_sorted(tar, &path, &child, mtime)?;
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).context(|| format!("cannot read {}", path.display()))?;
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            header.set_mtime(mtime);
            tar.append_link(&mut header, &child, &target).context(|| format!("cannot archive {}", path.display()))?;
        } else {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if meta.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 });
            header.set_size(meta.len());
            header.set_mtime(mtime);
            header.set_uid(0);
            header.set_gid(0);
            let file = fs::File::open(&path).context(|| format!("cannot open {}", path.display()))?;
            tar.append_data(&mut header, &child, file).context(|| format!("cannot archive {}", path.display()))?;
        }
    }
    Ok(())
}
