//! The OCI image of a bundle, written by the project itself (no container engine): an OCI
//! image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) packed as one plain tar, the
//! form `skopeo` and `umoci` read as `oci-archive:`.
//!
//! Two layers, both deterministic `tar+gzip` (sorted names, fixed owners, modes and times,
//! gzip header without name or time):
//! - the base: `/etc/passwd` and `/etc/group` with the user nginx drops its workers to
//!   (nobody:nogroup), the pinned CA certificates as one PEM bundle, and a world-writable
//!   `/tmp`. It does not depend on the strategy, so both images share it.
//! - the bundle under [`PREFIX`], with its logs linked to the container's stdout and stderr and
//!   its writable directories owned by the worker user.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use repro::{Artifact, Error, Result, Step};
use serde_json::{json, Value};
use sha2::Digest;

use crate::outputs::write_atomic;
use crate::project::{Project, Sources, SOURCE_DATE_EPOCH};
use crate::provenance::PROJECT;
use crate::strategy::Strategy;
use crate::target::Target;

/// Where the bundle lives in the image. Not versioned, so configurations mounted or copied
/// into derived images keep their paths across upgrades.
pub const PREFIX: &str = "/opt/static-nginx";
/// The port of the bundle's default `conf/nginx.conf`.
pub const PORT: u16 = 8080;
/// The worker user and group compiled into the binary (`--user=nobody --group=nogroup`).
const NOBODY: u64 = 65534;
const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";
/// The PEM bundle `lua_ssl_trusted_certificate` and `proxy_ssl_trusted_certificate` point to.
pub const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";
/// nginx creates these under its prefix at start; owned by the worker user they also work when
/// the container runs as that user.
const WRITABLE_DIRS: [&str; 6] = ["logs", "client_body_temp", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp"];

pub(crate) const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One image in `target/dist/`.
#[derive(Clone, Debug)]
pub struct Image {
    pub strategy: Strategy,
    pub target: Target,
    pub archive: PathBuf,
    /// `sha256:…` of the manifest: the image's digest as registries and `skopeo` show it.
    pub digest: String,
}

/// The image's file name: `static-nginx-<version>-<strategy>-<target>.oci.tar`.
pub fn file_name(strategy: &str, target: Target) -> String {
    format!("{PROJECT}-{}-{strategy}-{target}.oci.tar", env!("CARGO_PKG_VERSION"))
}

/// The entrypoint: nginx in the foreground with the bundle's prefix, reporting errors that
/// happen before the configuration is read on stderr.
pub fn entrypoint() -> Vec<String> {
    [&format!("{PREFIX}/sbin/nginx"), "-p", &format!("{PREFIX}/"), "-e", "stderr", "-g", "daemon off;"].iter().map(|s| s.to_string()).collect()
}

/// The default arguments after the entrypoint; a derived image or `docker run IMAGE -c …`
/// replaces them.
pub fn cmd() -> Vec<String> {
    vec!["-c".into(), "conf/nginx.conf".into()]
}

/// Builds the image of one bundle as a store step (so a no-op `dist` rewrites nothing) and
/// copies it into `out_dir`. `bundle` is the bundle step, holding `<bundle_name>.tar.gz`.
pub fn write_image(
    project: &Project,
    sources: &Sources,
    out_dir: &Path,
    (strategy, target): (Strategy, Target),
    bundle: &Artifact,
    licenses: &str,
) -> Result<(Image, Artifact)> {
    let ca = sources.get("ca-certificates")?;
    let name = file_name(strategy.name(), target);
    let bundle_name = crate::bundle::name(strategy, target);
    let step = Step::new(target.step_name(&format!("image-{strategy}")))
        .input("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH)
        // The code below is the recipe: any change to it makes a new image.
        .code(repro::code_id!("src/oci.rs"))
        .input("version", env!("CARGO_PKG_VERSION"))
        .input("licenses", licenses)
        .source("ca-certificates", ca.path(), ca.pin.tree)
        .dep("bundle", bundle);
    let mtime: u64 = SOURCE_DATE_EPOCH.parse().unwrap();
    let licenses = licenses.to_owned();
    let artifact = project.run_with(step, |build, out| {
        let unpacked = build.join("unpacked");
        repro::archive::unpack(&build.join("bundle").join(format!("{bundle_name}.tar.gz")), &unpacked)?;
        let base = base_layer(&build.join("ca-certificates"))?;
        let app = bundle_layer(&unpacked.join(&bundle_name))?;
        let layout = layout((strategy.name(), target), &licenses, &[base, app], mtime)?;
        write_file(&out.join(&name), &layout_archive(&layout.blobs, layout.index, mtime)?)?;
        write_file(&out.join("digest"), layout.digest.as_bytes())
    })?;
    let archive = out_dir.join(&name);
    if project.is_planning() {
        return Ok((Image { strategy, target, archive, digest: String::new() }, artifact));
    }
    let bytes = fs::read(artifact.path.join(&name)).map_err(|e| Error::with_source(format!("cannot read {}", artifact.path.join(&name).display()), e))?;
    write_atomic(&archive, &bytes)?;
    let digest = fs::read_to_string(artifact.path.join("digest")).map_err(|e| Error::with_source("cannot read the image digest", e))?;
    Ok((Image { strategy, target, archive, digest }, artifact))
}

/// An OCI image layout as one tar: `oci-layout`, `index.json` and every blob by digest.
pub(crate) fn layout_archive(blobs: &BTreeMap<String, Vec<u8>>, index: Vec<u8>, mtime: u64) -> Result<Vec<u8>> {
    let mut archive = Layer::default();
    archive.dir("blobs", 0o755, 0);
    archive.dir("blobs/sha256", 0o755, 0);
    for (digest, bytes) in blobs {
        archive.file(&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")), bytes.clone(), 0o644, 0);
    }
    archive.file("index.json", index, 0o644, 0);
    archive.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(), 0o644, 0);
    archive.tar(mtime)
}

/// A compressed layer: its bytes and the digest of the uncompressed tar (the config's diff_id).
struct Blob {
    gzip: Vec<u8>,
    diff_id: String,
    what: String,
}

fn base_layer(ca_dir: &Path) -> Result<Blob> {
    let mut layer = Layer::default();
    for dir in ["etc", "etc/ssl", "etc/ssl/certs"] {
        layer.dir(dir, 0o755, 0);
    }
    layer.file("etc/passwd", PASSWD.into(), 0o644, 0);
    layer.file("etc/group", GROUP.into(), 0o644, 0);
    layer.file(CA_BUNDLE, ca_bundle(ca_dir)?, 0o644, 0);
    layer.dir("tmp", 0o1777, 0);
    layer.blob("passwd, group, CA certificates, /tmp")
}

/// Every `*.crt` of the ca-certificates tree (`mozilla/…`), sorted by path, concatenated.
pub fn ca_bundle(ca_dir: &Path) -> Result<Vec<u8>> {
    let mut certs = Vec::new();
    collect_files(ca_dir, &mut certs)?;
    certs.retain(|p| p.extension().is_some_and(|e| e == "crt"));
    certs.sort();
    if certs.is_empty() {
        return Err(Error::new(format!("the ca-certificates pin at {} holds no .crt file: is its root usr/share/ca-certificates?", ca_dir.display())));
    }
    let mut out = Vec::new();
    for cert in certs {
        let mut pem = fs::read(&cert).map_err(|e| Error::with_source(format!("cannot read {}", cert.display()), e))?;
        if !pem.starts_with(b"-----BEGIN CERTIFICATE-----") {
            return Err(Error::new(format!("{} is not a PEM certificate", cert.display())));
        }
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        out.extend(pem);
    }
    Ok(out)
}

fn bundle_layer(bundle: &Path) -> Result<Blob> {
    let mut layer = Layer::default();
    let prefix = PREFIX.trim_start_matches('/');
    let mut parent = String::new();
    for part in prefix.split('/') {
        parent = if parent.is_empty() { part.to_owned() } else { format!("{parent}/{part}") };
        layer.dir(&parent, 0o755, 0);
    }
    let mut files = Vec::new();
    collect_files(bundle, &mut files)?;
    for file in files {
        let rel = file.strip_prefix(bundle).unwrap().to_string_lossy().into_owned();
        let mut at = prefix.to_owned();
        for part in rel.split('/').collect::<Vec<_>>().split_last().unwrap().1 {
            at = format!("{at}/{part}");
            layer.dir(&at, 0o755, 0);
        }
        let meta = fs::symlink_metadata(&file).map_err(|e| Error::with_source(format!("cannot stat {}", file.display()), e))?;
        let mode = if meta.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 };
        let bytes = fs::read(&file).map_err(|e| Error::with_source(format!("cannot read {}", file.display()), e))?;
        layer.file(&format!("{prefix}/{rel}"), bytes, mode, 0);
    }
    for dir in WRITABLE_DIRS {
        layer.dir(&format!("{prefix}/{dir}"), if dir == "logs" { 0o755 } else { 0o700 }, NOBODY);
    }
    // As in the usual nginx images: whatever configuration logs to the default files logs to
    // the container's streams.
    layer.symlink(&format!("{prefix}/logs/access.log"), "/dev/stdout");
    layer.symlink(&format!("{prefix}/logs/error.log"), "/dev/stderr");
    layer.blob(&format!("the bundle at {PREFIX}"))
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| Error::with_source(format!("cannot list {}", dir.display()), e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::with_source(format!("cannot list {}", dir.display()), e))?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

struct Layout {
    index: Vec<u8>,
    /// Every blob by digest: config, manifest, layers.
    blobs: BTreeMap<String, Vec<u8>>,
    digest: String,
}

fn layout((strategy, target): (&str, Target), licenses: &str, layers: &[Blob], mtime: u64) -> Result<Layout> {
    let created = rfc3339(mtime);
    let version = env!("CARGO_PKG_VERSION");
    let source = match env!("CARGO_PKG_REPOSITORY") {
        "" => "NOASSERTION",
        url => url,
    };
    let config = json!({
        "architecture": target.oci_architecture(),
        "os": "linux",
        "created": created,
        "config": {
            "Entrypoint": entrypoint(),
            "Cmd": cmd(),
            "Env": [format!("PATH={PREFIX}/sbin")],
            "WorkingDir": PREFIX,
            "ExposedPorts": { format!("{PORT}/tcp"): {} },
            "StopSignal": "SIGQUIT",
            "Labels": {
                "org.opencontainers.image.title": format!("{PROJECT} ({strategy})"),
                "org.opencontainers.image.description": format!("A fully static nginx with the OpenResty Lua stack, {strategy} strategy"),
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.created": created,
                "org.opencontainers.image.licenses": licenses,
                "org.opencontainers.image.source": source,
            },
        },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>() },
        "history": layers.iter().map(|l| json!({ "created": created, "created_by": format!("{PROJECT} dist: {}", l.what) })).collect::<Vec<_>>(),
    });
    let mut blobs = BTreeMap::new();
    let mut add = |bytes: Vec<u8>, media: &str| -> Value {
        let digest = sha256(&bytes);
        let descriptor = json!({ "mediaType": media, "digest": digest, "size": bytes.len() });
        blobs.insert(digest, bytes);
        descriptor
    };
    let config = add(to_json(&config)?, MEDIA_CONFIG);
    let layer_descriptors: Vec<Value> = layers.iter().map(|l| add(l.gzip.clone(), MEDIA_LAYER)).collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config,
        "layers": layer_descriptors,
        "annotations": { "org.opencontainers.image.created": created, "org.opencontainers.image.version": version },
    });
    let manifest = add(to_json(&manifest)?, MEDIA_MANIFEST);
    let digest = manifest["digest"].as_str().unwrap().to_owned();
    let mut entry = manifest;
    entry["platform"] = json!({ "architecture": target.oci_architecture(), "os": "linux" });
    entry["annotations"] = json!({ "org.opencontainers.image.ref.name": format!("{version}-{strategy}") });
    let index = json!({ "schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [entry] });
    Ok(Layout { index: to_json(&index)?, blobs, digest })
}

pub(crate) fn to_json(value: &Value) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::new(format!("cannot serialise the image JSON: {e}")))
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch (UTC), as OCI and SPDX want it.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

/// The entries of a tar, by path; written sorted, so parents come before their children.
#[derive(Default)]
struct Layer {
    entries: BTreeMap<String, (Kind, u32, u64)>,
}

impl Layer {
    fn dir(&mut self, path: &str, mode: u32, owner: u64) {
        self.entries.insert(path.to_owned(), (Kind::Dir, mode, owner));
    }

    fn file(&mut self, path: &str, bytes: Vec<u8>, mode: u32, owner: u64) {
        self.entries.insert(path.to_owned(), (Kind::File(bytes), mode, owner));
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.entries.insert(path.to_owned(), (Kind::Symlink(target.to_owned()), 0o777, 0));
    }

    fn tar(&self, mtime: u64) -> Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        let fail = |path: &str, e: std::io::Error| Error::with_source(format!("cannot add {path} to a tar"), e);
        for (path, (kind, mode, owner)) in &self.entries {
            let mut header = tar::Header::new_ustar();
            header.set_mode(*mode);
            header.set_uid(*owner);
            header.set_gid(*owner);
            header.set_mtime(mtime);
            match kind {
                Kind::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    tar.append_data(&mut header, format!("{path}/"), std::io::empty()).map_err(|e| fail(path, e))?;
                }
                Kind::File(bytes) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(bytes.len() as u64);
                    tar.append_data(&mut header, path, bytes.as_slice()).map_err(|e| fail(path, e))?;
                }
                Kind::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    tar.append_link(&mut header, path, target).map_err(|e| fail(path, e))?;
                }
            }
        }
        tar.into_inner().map_err(|e| Error::with_source("cannot finish a tar", e))
    }

    fn blob(&self, what: &str) -> Result<Blob> {
        let tar = self.tar(SOURCE_DATE_EPOCH.parse().unwrap())?;
        let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
        gz.write_all(&tar).and_then(|()| gz.try_finish()).map_err(|e| Error::with_source("cannot compress a layer", e))?;
        let gzip = gz.finish().map_err(|e| Error::with_source("cannot compress a layer", e))?;
        Ok(Blob { gzip, diff_id: sha256(&tar), what: what.to_owned() })
    }
}

pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(|e| Error::with_source(format!("cannot write {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn layers_are_the_same_bytes_whatever_the_insertion_order() {
        let mut a = Layer::default();
        a.dir("etc", 0o755, 0);
        a.file("etc/passwd", PASSWD.into(), 0o644, 0);
        a.symlink("etc/x", "/dev/stdout");
        let mut b = Layer::default();
        b.symlink("etc/x", "/dev/stdout");
        b.file("etc/passwd", PASSWD.into(), 0o644, 0);
        b.dir("etc", 0o755, 0);
        let (a, b) = (a.blob("a").unwrap(), b.blob("b").unwrap());
        assert_eq!(a.gzip, b.gzip);
        assert_eq!(a.diff_id, b.diff_id);
    }

    #[test]
    fn ca_bundle_is_sorted_and_refuses_an_empty_tree() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(ca_bundle(tmp.path()).unwrap_err().to_string().contains("no .crt file"));
        fs::create_dir_all(tmp.path().join("mozilla")).unwrap();
        fs::write(tmp.path().join("mozilla/b.crt"), "-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----").unwrap();
        fs::write(tmp.path().join("mozilla/a.crt"), "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n").unwrap();
        let pem = String::from_utf8(ca_bundle(tmp.path()).unwrap()).unwrap();
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(pem.find("\nA\n").unwrap() < pem.find("\nB\n").unwrap());
        assert!(pem.ends_with("-----END CERTIFICATE-----\n"));
    }
}
