//! The SPDX 2.3 JSON software bill of materials of a bundle: every pinned source (by the BLAKE3
//! hash of its tree), every module this project writes, the Lua modules, the binary, the bundle
//! and its OCI image, and how they relate. Nothing in it comes from the clock or a random
//! number: the creation time is SOURCE_DATE_EPOCH and the document namespace ends in a hash of
//! the rest of the document, so it changes exactly when a pin (or anything else) does.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use repro::{Artifact, Error, MirrorKind, Result, Step, TreeHash};
use serde_json::{json, Value};

use crate::lua_modules::Module;
use crate::nginx;
use crate::oci;
use crate::outputs::{sha256_file, write_atomic};
use crate::project::{Project, Source, Sources, SOURCE_DATE_EPOCH};
use crate::provenance::PROJECT;
use crate::strategy::Strategy;
use crate::target::Target;

/// The SBOM's name inside a bundle (beside `PROVENANCE.toml`).
pub const FILE_IN_BUNDLE: &str = "SBOM.spdx.json";

/// The pins whose code `target`'s `sbin/nginx` is compiled from (the libc and kernel headers
/// included).
pub fn compiled_pins(target: Target) -> [&'static str; 9] {
    ["musl", target.kernel_headers().pin, "luajit", "openssl", "pcre", "zlib", "nginx", "ngx_devel_kit", "lua-nginx-module"]
}

/// The project's own license, which its modules carry.
const PROJECT_LICENSE: &str = env!("CARGO_PKG_LICENSE");

/// One SBOM in `target/dist/`.
#[derive(Clone, Debug)]
pub struct Sbom {
    pub strategy: Strategy,
    pub target: Target,
    pub path: PathBuf,
}

/// `static-nginx-<version>-<strategy>-<target>.spdx.json`
pub fn file_name(strategy: &str, target: Target) -> String {
    format!("{}.spdx.json", bundle_name(strategy, target))
}

fn bundle_name(strategy: &str, target: Target) -> String {
    format!("{PROJECT}-{}-{strategy}-{target}", env!("CARGO_PKG_VERSION"))
}

/// Writes the SBOM of one bundle as a store step and copies it into `out_dir` (unless the
/// project only plans); the bundle carries the same document. The step's key covers the whole
/// document but the binary's SHA256, which it reads from the binary it depends on.
pub fn write(
    project: &Project,
    sources: &Sources,
    out_dir: &Path,
    (strategy, target): (Strategy, Target),
    binary: &Artifact,
    modules: &[Module],
) -> Result<(Sbom, Artifact)> {
    let name = file_name(strategy.name(), target);
    let template = document_with_binary_sha(project, sources, (strategy.name(), target), "(read from the built binary)", modules)?;
    let step = Step::new(target.step_name(&format!("sbom-{strategy}"))).code(repro::code_id!("src/sbom.rs")).dep("nginx", binary).file(
        "template.spdx.json",
        template,
        false,
    );
    let artifact = project.run_with(step, |build, out| {
        let json = document(project, sources, (strategy.name(), target), &build.join("nginx").join(nginx::BINARY), modules)?;
        fs::write(out.join(&name), json).map_err(|e| Error::with_source(format!("cannot write {name}"), e))
    })?;
    let path = out_dir.join(&name);
    if !project.is_planning() {
        let bytes = fs::read(artifact.path.join(&name)).map_err(|e| Error::with_source(format!("cannot read {name}"), e))?;
        write_atomic(&path, &bytes)?;
    }
    Ok((Sbom { strategy, target, path }, artifact))
}

/// The SPDX 2.3 JSON document of the bundle of `strategy` whose binary is `binary`.
pub fn document(project: &Project, sources: &Sources, release: (&str, Target), binary: &Path, modules: &[Module]) -> Result<Vec<u8>> {
    document_with_binary_sha(project, sources, release, &sha256_file(binary)?, modules)
}

fn document_with_binary_sha(project: &Project, sources: &Sources, (strategy, target): (&str, Target), binary_sha: &str, modules: &[Module]) -> Result<Vec<u8>> {
    let name = bundle_name(strategy, target);
    let version = env!("CARGO_PKG_VERSION");
    let mut graph = Graph::default();
    release_packages(&mut graph, &licenses(project, sources, target, modules)?, (strategy, target), binary_sha);
    for source in &sources.0 {
        graph.packages.push(source_package(source)?);
    }
    for pin in compiled_pins(target) {
        graph.relate("SPDXRef-Binary", "GENERATED_FROM", &source_id(&sources.get(pin)?.pin.name));
    }
    if let Ok(ca) = sources.get("ca-certificates") {
        graph.relate("SPDXRef-Image", "CONTAINS", &source_id(&ca.pin.name));
    }
    c_module_packages(&mut graph, project)?;
    lua_module_packages(&mut graph, project, sources, strategy, modules)?;

    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": "",
        "creationInfo": {
            "created": oci::rfc3339(SOURCE_DATE_EPOCH.parse().unwrap()),
            "creators": [format!("Tool: {PROJECT}-{version}")],
            "comment": "Written by cargo xtask dist from lockfiles/sources.toml; created is SOURCE_DATE_EPOCH.",
        },
        "packages": graph.packages,
        "relationships": graph.relationships,
    });
    // The namespace must be unique per document: a hash of everything else in it.
    let digest = oci::sha256(&to_json(&doc)?);
    doc["documentNamespace"] = json!(format!("https://spdx.org/spdxdocs/{name}-{}", &digest["sha256:".len().."sha256:".len() + 32]));
    let mut out = serde_json::to_vec_pretty(&doc).map_err(|e| Error::new(format!("cannot serialise the SBOM: {e}")))?;
    out.push(b'\n');
    Ok(out)
}

/// The document's packages and relationships, in the order they are written.
#[derive(Default)]
struct Graph {
    packages: Vec<Value>,
    relationships: Vec<Value>,
}

impl Graph {
    fn relate(&mut self, a: &str, kind: &str, b: &str) {
        self.relationships.push(json!({ "spdxElementId": a, "relationshipType": kind, "relatedSpdxElement": b }));
    }
}

/// The bundle, its OCI image and the binary inside it.
fn release_packages(graph: &mut Graph, licenses: &str, (strategy, target): (&str, Target), binary_sha: &str) {
    let name = bundle_name(strategy, target);
    let version = env!("CARGO_PKG_VERSION");
    graph.packages.push(json!({
        "SPDXID": "SPDXRef-Bundle",
        "name": name,
        "versionInfo": version,
        "packageFileName": format!("{name}.tar.gz"),
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "ARCHIVE",
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": licenses,
        "copyrightText": "NOASSERTION",
        "comment": format!("The {strategy} release bundle: sbin/nginx, conf/, {}this document and PROVENANCE.toml.", if strategy == "lualib" { "lualib/, " } else { "" }),
    }));
    graph.packages.push(json!({
        "SPDXID": "SPDXRef-Image",
        "name": oci::file_name(strategy, target),
        "versionInfo": version,
        "packageFileName": oci::file_name(strategy, target),
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "CONTAINER",
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "comment": format!("The OCI image of the bundle: the bundle at {}, /etc/passwd and /etc/group, and the CA certificates as /{}.", oci::PREFIX, oci::CA_BUNDLE),
    }));
    graph.relate("SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-Bundle");
    graph.relate("SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-Image");
    graph.relate("SPDXRef-Image", "CONTAINS", "SPDXRef-Bundle");

    graph.packages.push(json!({
        "SPDXID": "SPDXRef-Binary",
        "name": format!("{PROJECT} sbin/nginx ({strategy})"),
        "versionInfo": version,
        "packageFileName": "sbin/nginx",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "APPLICATION",
        "checksums": [{ "algorithm": "SHA256", "checksumValue": binary_sha }],
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "comment": format!("nginx linked fully static (musl, static-PIE){}.", if strategy == "embed" { ", with every Lua module linked in as LuaJIT bytecode" } else { "" }),
    }));
    graph.relate("SPDXRef-Bundle", "CONTAINS", "SPDXRef-Binary");
}

/// This project's nginx C modules, each generated into the binary.
fn c_module_packages(graph: &mut Graph, project: &Project) -> Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    for (module, tree) in nginx::project_modules(project)? {
        let id = format!("SPDXRef-Module-{}", spdx_id_part(&module));
        graph.packages.push(json!({
            "SPDXID": id,
            "name": module,
            "versionInfo": version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "primaryPackagePurpose": "SOURCE",
            "checksums": [blake3(&project.root.join("modules").join(&module), &tree)?],
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": PROJECT_LICENSE,
            "copyrightText": "NOASSERTION",
            "comment": format!("An nginx C module of this project (modules/{module}); the checksum is the BLAKE3 hash of its tree."),
        }));
        graph.relate("SPDXRef-Binary", "GENERATED_FROM", &id);
    }
    Ok(())
}

/// Every Lua module the bundle carries, with the pin it comes from.
fn lua_module_packages(graph: &mut Graph, project: &Project, sources: &Sources, strategy: &str, modules: &[Module]) -> Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let libraries = crate::lua_modules::project_libraries(project, sources)?;
    let lualib = project.root.join("lualib");
    for module in modules {
        let id = format!("SPDXRef-Lua-{}", spdx_id_part(&module.name));
        let provider = libraries.iter().find(|l| module.file.starts_with(&l.dir)).map(|l| l.dir.clone());
        let pin = provider.as_ref().filter(|dir| **dir != lualib).and_then(|dir| sources.0.iter().find(|s| s.path() == dir.as_path()));
        let (module_version, license, origin) = match pin {
            Some(s) => (s.pin.version.clone(), declared_license(s.path()).map_or("NOASSERTION".into(), |(l, _)| l), format!("pin {}", s.pin.name)),
            None => (version.to_owned(), PROJECT_LICENSE.to_owned(), "this project's lualib/".to_owned()),
        };
        let bytes = fs::read(&module.file).map_err(|e| Error::with_source(format!("cannot read {}", module.file.display()), e))?;
        let sha = oci::sha256(&bytes);
        let shipped = if strategy == "embed" { "LuaJIT bytecode linked into sbin/nginx".to_owned() } else { format!("lualib/{}", module.relative.display()) };
        graph.packages.push(json!({
            "SPDXID": id,
            "name": module.name,
            "versionInfo": module_version,
            "packageFileName": module.relative.display().to_string(),
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "primaryPackagePurpose": "LIBRARY",
            "checksums": [{ "algorithm": "SHA256", "checksumValue": sha.trim_start_matches("sha256:") }],
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": license,
            "copyrightText": "NOASSERTION",
            "comment": format!("Lua module from {origin}, shipped as {shipped}; the checksum is of its source file."),
        }));
        graph.relate(if strategy == "embed" { "SPDXRef-Binary" } else { "SPDXRef-Bundle" }, "CONTAINS", &id);
        if let Some(s) = pin {
            graph.relate(&id, "GENERATED_FROM", &source_id(&s.pin.name));
        }
    }
    Ok(())
}

/// The SPDX expression of every license the bundle's contents declare (the sources compiled
/// into the binary, the Lua modules' sources, this project's own code), for the bundle and the
/// image's `org.opencontainers.image.licenses`.
pub fn licenses(project: &Project, sources: &Sources, target: Target, modules: &[Module]) -> Result<String> {
    let mut found = BTreeSet::from([PROJECT_LICENSE.to_owned()]);
    for pin in compiled_pins(target) {
        found.extend(declared_license(sources.get(pin)?.path()).map(|(l, _)| l));
    }
    for library in crate::lua_modules::project_libraries(project, sources)? {
        if modules.iter().any(|m| m.file.starts_with(&library.dir)) {
            if let Some(s) = sources.0.iter().find(|s| s.path() == library.dir.as_path()) {
                found.extend(declared_license(s.path()).map(|(l, _)| l));
            }
        }
    }
    let mut parts: BTreeSet<String> = BTreeSet::new();
    for expr in found {
        parts.extend(expr.split(" AND ").map(str::to_owned));
    }
    Ok(parts.into_iter().collect::<Vec<_>>().join(" AND "))
}

fn source_package(source: &Source) -> Result<Value> {
    let pin = &source.pin;
    let download = pin.mirrors.iter().find_map(|m| match &m.kind {
        MirrorKind::Url(url) => Some(url.clone()),
        _ => None,
    });
    let purls: Vec<Value> = pin
        .mirrors
        .iter()
        .filter_map(|m| match &m.kind {
            MirrorKind::DebianSource { package, .. } => Some(purl(package, Some("source"))),
            MirrorKind::DebianBinary { package } => Some(purl(package, None)),
            _ => None,
        })
        .map(|locator| json!({ "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": locator }))
        .collect();
    let mirrors: Vec<String> = pin.mirrors.iter().map(|m| if m.root.is_empty() { m.to_string() } else { format!("{m} (root {})", m.root) }).collect();
    let (license, license_comment) = match declared_license(source.path()) {
        Some((license, file)) => (license, format!("Stated in {file} of the source tree.")),
        None => ("NOASSERTION".to_owned(), "The pinned tree holds no license statement.".to_owned()),
    };
    let mut package = json!({
        "SPDXID": source_id(&pin.name),
        "name": pin.name,
        "versionInfo": pin.version,
        "downloadLocation": download.unwrap_or_else(|| "NOASSERTION".to_owned()),
        "filesAnalyzed": false,
        "primaryPackagePurpose": "SOURCE",
        "checksums": [blake3(source.path(), &pin.tree)?],
        "sourceInfo": format!("Pinned in lockfiles/sources.toml; mirrors, in order: {}.", mirrors.join("; ")),
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": license,
        "licenseComments": license_comment,
        "copyrightText": "NOASSERTION",
        "comment": "The checksum is the pin's tree hash (its first 64 hex digits; BLAKE3 extends to any length): BLAKE3 over the unpacked tree's sorted names, file bytes, executable bits and link targets.",
    });
    if !purls.is_empty() {
        package["externalRefs"] = Value::Array(purls);
    }
    Ok(package)
}

fn source_id(pin: &str) -> String {
    format!("SPDXRef-Source-{}", spdx_id_part(pin))
}

/// SPDX identifiers allow letters, digits, `.` and `-` only.
fn spdx_id_part(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect()
}

/// The BLAKE3 checksum of the tree at `dir`, which must hash to `tree`. spdx-tools reads the
/// SPDX rule "BLAKE3: at least 256 bits" as 256 hex digits, so the digest is BLAKE3's output
/// extended to 1024 bits; its first 64 hex digits are the tree hash as pinned.
fn blake3(dir: &Path, tree: &TreeHash) -> Result<Value> {
    static CACHE: Mutex<BTreeMap<(PathBuf, TreeHash), String>> = Mutex::new(BTreeMap::new());
    let key = (dir.to_path_buf(), *tree);
    let cached = CACHE.lock().unwrap().get(&key).cloned();
    let hex = match cached {
        Some(hex) => hex,
        None => {
            let bytes = TreeHash::extended_of_dir(dir, 128)?;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            if !hex.starts_with(&tree.to_hex()) {
                return Err(Error::new(format!("{} no longer hashes to {tree}: run `cargo xtask vendor` to fetch it again", dir.display())));
            }
            CACHE.lock().unwrap().insert(key, hex.clone());
            hex
        }
    };
    Ok(json!({ "algorithm": "BLAKE3", "checksumValue": hex }))
}

/// `pkg:deb/debian/NAME[@VERSION][?arch=…]` for a Debian package spec `name` or `name=version`.
fn purl(spec: &str, arch: Option<&str>) -> String {
    let (name, version) = match spec.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (spec, None),
    };
    let encode = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || ".-_~".contains(c) { c.to_string() } else { format!("%{:02X}", c as u32) }).collect()
    };
    let mut out = format!("pkg:deb/debian/{}", encode(name));
    if let Some(v) = version {
        out += &format!("@{}", encode(v));
    }
    if let Some(a) = arch {
        out += &format!("?arch={a}");
    }
    out
}

/// The license a source tree states in a license file at its top (or, lacking one, in its
/// README), as an SPDX expression, and the file that states it. Only the standard texts are
/// recognised; anything else is no statement.
pub fn declared_license(tree: &Path) -> Option<(String, String)> {
    let mut names: Vec<String> =
        fs::read_dir(tree).ok()?.flatten().filter(|e| e.path().is_file()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let is = |n: &str, prefixes: &[&str]| prefixes.iter().any(|p| n.to_ascii_uppercase().starts_with(p));
    let license_files: Vec<&String> = names.iter().filter(|n| is(n, &["LICENSE", "LICENCE", "COPYING", "COPYRIGHT"])).collect();
    let candidates = if license_files.is_empty() { names.iter().filter(|n| is(n, &["README"])).collect() } else { license_files };
    let mut found = BTreeSet::new();
    let mut files = Vec::new();
    for name in candidates {
        let Ok(text) = fs::read_to_string(tree.join(name)) else {
            continue;
        };
        if let Some(license) = classify(&text) {
            found.insert(license);
            files.push(name.clone());
        }
    }
    (!found.is_empty()).then(|| (found.into_iter().collect::<Vec<_>>().join(" AND "), files.join(", ")))
}

/// Recognises the license texts of the pinned sources; the first match wins, so a file that
/// states one license and quotes parts of others is read as the one it states first.
fn classify(text: &str) -> Option<&'static str> {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.contains("Apache License") && text.contains("Version 2.0") {
        Some("Apache-2.0")
    } else if text.contains("Permission is hereby granted, free of charge") {
        Some("MIT")
    } else if text.contains("This software is provided 'as-is'") && text.contains("Permission is granted to anyone to use this software for any purpose") {
        Some("Zlib")
    } else if text.contains("Redistribution and use in source and binary forms") {
        Some(if text.contains("Neither the name") { "BSD-3-Clause" } else { "BSD-2-Clause" })
    } else {
        None
    }
}

fn to_json(value: &Value) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::new(format!("cannot serialise the SBOM: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purls_encode_debian_versions() {
        assert_eq!(purl("pcre3=2:8.39-15", Some("source")), "pkg:deb/debian/pcre3@2%3A8.39-15?arch=source");
        assert_eq!(purl("ca-certificates", None), "pkg:deb/debian/ca-certificates");
        assert_eq!(purl("openssl=3.0.20-1~deb12u2", None), "pkg:deb/debian/openssl@3.0.20-1~deb12u2");
    }

    #[test]
    fn license_texts_are_classified() {
        assert_eq!(classify("Redistribution and use in source and binary forms\n 1. ... 2. ..."), Some("BSD-2-Clause"));
        assert_eq!(classify("Redistribution and use in source and binary   forms, 3. Neither the name"), Some("BSD-3-Clause"));
        assert_eq!(classify("Permission is hereby granted, free\n of charge, to any person"), Some("MIT"));
        assert_eq!(classify("Apache License\n Version 2.0, January 2004"), Some("Apache-2.0"));
        assert_eq!(classify("-- Copyright (C) Yichun Zhang"), None);
    }

    #[test]
    fn a_readme_counts_only_without_a_license_file() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("README.md"), "Permission is hereby granted, free of charge").unwrap();
        assert_eq!(declared_license(tmp.path()), Some(("MIT".into(), "README.md".into())));
        fs::write(tmp.path().join("LICENSE"), "Apache License Version 2.0").unwrap();
        assert_eq!(declared_license(tmp.path()), Some(("Apache-2.0".into(), "LICENSE".into())));
        fs::write(tmp.path().join("LICENSE"), "all rights reserved").unwrap();
        assert_eq!(declared_license(tmp.path()), None);
    }

    #[test]
    fn spdx_ids_keep_only_allowed_characters() {
        assert_eq!(spdx_id_part("ngx_devel_kit"), "ngx-devel-kit");
        assert_eq!(spdx_id_part("resty.core.base"), "resty.core.base");
    }
}
