//! The multi-architecture image of a strategy: one OCI image layout holding every target's
//! image, so `skopeo copy --all` (or a registry) serves each machine its own. Its `index.json`
//! names one image index, which lists each target's manifest with its platform: the same
//! manifests, with the same digests, as the single-architecture images beside it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use repro::{Artifact, Error, Result, Step};
use serde_json::{json, Value};

use crate::oci::{self, Image, MEDIA_INDEX};
use crate::outputs::write_atomic;
use crate::project::{Project, SOURCE_DATE_EPOCH};
use crate::provenance::PROJECT;
use crate::strategy::Strategy;

/// A multi-architecture image in `target/dist/`.
#[derive(Clone, Debug)]
pub struct ImageIndex {
    pub strategy: Strategy,
    pub archive: PathBuf,
    /// `sha256:…` of the image index: what a registry shows as the multi-architecture digest.
    pub digest: String,
}

/// `static-nginx-<version>-<strategy>.oci.tar`: no target in the name, it holds them all.
pub fn file_name(strategy: Strategy) -> String {
    format!("{PROJECT}-{}-{strategy}.oci.tar", env!("CARGO_PKG_VERSION"))
}

/// Merges the images of one strategy (one per target, each with its image step) into one
/// layout, as a store step, and copies it into `out_dir` unless the project only plans.
pub fn write(project: &Project, out_dir: &Path, strategy: Strategy, images: &[(&Image, &Artifact)]) -> Result<(ImageIndex, Artifact)> {
    let name = file_name(strategy);
    let mut step = Step::new(format!("image-index-{strategy}")).input("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH).code(repro::code_id!("src/oci_index.rs"));
    let mut parts = Vec::new();
    for (image, artifact) in images {
        let mount = format!("image-{}", image.target);
        step = step.dep(&mount, artifact);
        parts.push((mount, oci::file_name(strategy.name(), image.target)));
    }
    let mtime: u64 = SOURCE_DATE_EPOCH.parse().expect("SOURCE_DATE_EPOCH is a number");
    let version = env!("CARGO_PKG_VERSION");
    let artifact = project.run_with(step, |build, out| {
        let mut blobs = BTreeMap::new();
        let mut manifests = Vec::new();
        for (mount, file) in &parts {
            let unpacked = build.join(format!("{mount}-layout"));
            repro::archive::unpack(&build.join(mount).join(file), &unpacked)?;
            let index: Value = read_json(&unpacked.join("index.json"))?;
            let entries = index["manifests"]
                .as_array()
                .filter(|m| m.len() == 1)
                .ok_or_else(|| Error::new(format!("{file}: its index.json does not hold exactly one manifest")))?;
            let mut entry = entries[0].clone();
            if let Some(annotations) = entry.as_object_mut().and_then(|e| e.get_mut("annotations")).and_then(Value::as_object_mut) {
                annotations.remove("org.opencontainers.image.ref.name");
                if annotations.is_empty() {
                    entry.as_object_mut().unwrap().remove("annotations");
                }
            }
            manifests.push(entry);
            let dir = unpacked.join("blobs/sha256");
            for blob in fs::read_dir(&dir).map_err(|e| Error::with_source(format!("cannot list {}", dir.display()), e))? {
                let path = blob.map_err(|e| Error::with_source(format!("cannot list {}", dir.display()), e))?.path();
                let bytes = fs::read(&path).map_err(|e| Error::with_source(format!("cannot read {}", path.display()), e))?;
                blobs.insert(format!("sha256:{}", path.file_name().unwrap().to_string_lossy()), bytes);
            }
        }
        let list = oci::to_json(&json!({ "schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": manifests }))?;
        let digest = oci::sha256(&list);
        let size = list.len();
        blobs.insert(digest.clone(), list);
        let top = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [{
                "mediaType": MEDIA_INDEX,
                "digest": digest,
                "size": size,
                "annotations": { "org.opencontainers.image.ref.name": format!("{version}-{strategy}") },
            }],
        });
        oci::write_file(&out.join(&name), &oci::layout_archive(&blobs, oci::to_json(&top)?, mtime)?)?;
        oci::write_file(&out.join("digest"), digest.as_bytes())
    })?;
    let archive = out_dir.join(&name);
    if project.is_planning() {
        return Ok((ImageIndex { strategy, archive, digest: String::new() }, artifact));
    }
    let bytes = fs::read(artifact.path.join(&name)).map_err(|e| Error::with_source(format!("cannot read {}", artifact.path.join(&name).display()), e))?;
    write_atomic(&archive, &bytes)?;
    let digest = fs::read_to_string(artifact.path.join("digest")).map_err(|e| Error::with_source("cannot read the image index digest", e))?;
    Ok((ImageIndex { strategy, archive, digest }, artifact))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read(path).map_err(|e| Error::with_source(format!("cannot read {}", path.display()), e))?;
    serde_json::from_slice(&text).map_err(|e| Error::new(format!("{} is not JSON: {e}", path.display())))
}
