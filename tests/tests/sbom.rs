//! The SPDX 2.3 SBOMs `dist` writes beside and inside each bundle: valid for `pyspdxtools`
//! (PyPI spdx-tools), naming every pin with its tree hash, deterministic, and changed by a pin.

use std::fs;
use std::path::Path;
use std::process::Command;

use e2e::{temp_dir, unpack_bundle, Strategy};
use serde_json::Value;

fn pyspdxtools_accepts(path: &Path) {
    let out = Command::new("pyspdxtools").arg("-i").arg(path).output().expect("run pyspdxtools (pip install spdx-tools)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !text.contains("invalid"), "pyspdxtools -i {}:\n{text}", path.display());
}

fn package<'a>(doc: &'a Value, id: &str) -> &'a Value {
    doc["packages"].as_array().unwrap().iter().find(|p| p["SPDXID"] == id).unwrap_or_else(|| panic!("no package {id}"))
}

fn related(doc: &Value, a: &str, kind: &str, b: &str) -> bool {
    doc["relationships"].as_array().unwrap().iter().any(|r| r["spdxElementId"] == a && r["relationshipType"] == kind && r["relatedSpdxElement"] == b)
}

#[test]
fn sboms_validate_name_every_pin_and_relate_the_binary_to_its_sources() {
    let dist = e2e::dist();
    let project = pipeline::Project::from_checkout().unwrap();
    // Every pin but those only other targets build with (the arm64 kernel headers).
    let foreign = pipeline::Target::X86_64.foreign_pins();
    let pins: Vec<_> = project.lockfile().unwrap().pins().unwrap().into_iter().filter(|p| !foreign.contains(&p.name.as_str())).collect();
    assert!(!foreign.is_empty() && pins.iter().all(|p| p.name != "linux-headers-arm64"));
    let sums = fs::read_to_string(&dist.sha256sums).unwrap();
    for strategy in Strategy::ALL {
        let sbom = dist.sbom(strategy);
        let name = sbom.path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name, format!("static-nginx-{}-{}-x86_64-linux-musl.spdx.json", env!("CARGO_PKG_VERSION"), strategy.name()));
        assert!(sums.contains(&format!("{}  {name}", pipeline::dist::sha256_file(&sbom.path).unwrap())), "{sums}");
        pyspdxtools_accepts(&sbom.path);
        let bytes = fs::read(&sbom.path).unwrap();
        let tmp = temp_dir("sbom");
        let root = unpack_bundle(strategy, tmp.path());
        assert_eq!(fs::read(root.join("SBOM.spdx.json")).unwrap(), bytes, "the bundle carries the same SBOM");

        let doc: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(doc["spdxVersion"], "SPDX-2.3");
        assert_eq!(doc["creationInfo"]["created"], "2023-11-14T22:13:20Z", "SOURCE_DATE_EPOCH, not the clock");
        let namespace = doc["documentNamespace"].as_str().unwrap();
        assert!(namespace.starts_with(&format!("https://spdx.org/spdxdocs/static-nginx-{}-{}-", env!("CARGO_PKG_VERSION"), strategy.name())), "{namespace}");

        assert!(doc["packages"].as_array().unwrap().iter().all(|p| p["name"] != "linux-headers-arm64"), "the x86_64 SBOM names no arm64-only pin");
        for pin in &pins {
            let id = format!("SPDXRef-Source-{}", pin.name.replace('_', "-"));
            let p = package(&doc, &id);
            assert_eq!((p["name"].as_str(), p["versionInfo"].as_str()), (Some(pin.name.as_str()), Some(pin.version.as_str())));
            let checksum = &p["checksums"][0];
            assert_eq!(checksum["algorithm"], "BLAKE3");
            assert!(checksum["checksumValue"].as_str().unwrap().starts_with(&pin.tree.to_hex()), "{}: {checksum}", pin.name);
            assert!(p["licenseDeclared"].is_string() && p["downloadLocation"].is_string());
        }
        let license = |pin: &str| package(&doc, &format!("SPDXRef-Source-{pin}"))["licenseDeclared"].as_str().unwrap().to_owned();
        assert_eq!(license("nginx"), "BSD-2-Clause");
        assert_eq!(license("openssl"), "Apache-2.0");
        assert_eq!(license("lua-resty-core"), "NOASSERTION", "the Debian tree states no license");
        assert_eq!(package(&doc, "SPDXRef-Source-nginx")["downloadLocation"], "https://nginx.org/download/nginx-1.22.1.tar.gz");

        let binary = package(&doc, "SPDXRef-Binary");
        assert_eq!(binary["checksums"][0]["checksumValue"], pipeline::dist::sha256_file(&root.join("sbin/nginx")).unwrap());
        for pin in pipeline::sbom::compiled_pins(pipeline::Target::X86_64) {
            assert!(related(&doc, "SPDXRef-Binary", "GENERATED_FROM", &format!("SPDXRef-Source-{}", pin.replace('_', "-"))), "{pin}");
        }
        for module in ["ngx_http_lua_upstream", "ngx_http_vhost_traffic_status"] {
            let id = format!("SPDXRef-Module-{}", module.replace('_', "-"));
            assert_eq!(package(&doc, &id)["licenseDeclared"], env!("CARGO_PKG_LICENSE"));
            assert!(related(&doc, "SPDXRef-Binary", "GENERATED_FROM", &id), "{module}");
        }
        let container = if strategy == Strategy::Embed { "SPDXRef-Binary" } else { "SPDXRef-Bundle" };
        for module in &dist.lua_modules {
            assert!(related(&doc, container, "CONTAINS", &format!("SPDXRef-Lua-{}", module.name.replace('_', "-"))), "{strategy:?}: {}", module.name);
        }
        assert!(related(&doc, "SPDXRef-Lua-resty.core", "GENERATED_FROM", "SPDXRef-Source-lua-resty-core"));
        assert_eq!(package(&doc, "SPDXRef-Lua-resty.upstream.healthcheck")["licenseDeclared"], env!("CARGO_PKG_LICENSE"));
        assert!(related(&doc, "SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-Bundle"));
        assert!(related(&doc, "SPDXRef-Image", "CONTAINS", "SPDXRef-Source-ca-certificates"));
    }
}

#[test]
fn the_sbom_is_deterministic_and_changes_with_a_pin() {
    let dist = e2e::dist();
    let project = pipeline::Project::from_checkout().unwrap();
    let sources = project.sources(true).unwrap().for_target(pipeline::Target::X86_64);
    let binary = &dist.bundle(Strategy::Embed).binary;
    let document = |sources: &pipeline::Sources| pipeline::sbom::document(&project, sources, ("embed", pipeline::Target::X86_64), binary, &dist.lua_modules);
    let original = document(&sources).unwrap();
    assert_eq!(original, fs::read(&dist.sbom(Strategy::Embed).path).unwrap(), "the same document from the same inputs");

    // lua-resty-lrucache at another tree: one changed file, pinned by its new hash.
    let tmp = temp_dir("sbom-pin");
    let mut changed = sources.clone();
    let source = changed.0.iter_mut().find(|s| s.pin.name == "lua-resty-lrucache").unwrap();
    let old = source.pin.tree;
    repro::copy::copy_tree(source.path(), tmp.path()).unwrap();
    let file = tmp.path().join("resty/lrucache.lua");
    fs::write(&file, format!("{}\n-- another release\n", fs::read_to_string(&file).unwrap())).unwrap();
    source.pin.tree = repro::TreeHash::of_dir(tmp.path()).unwrap();
    source.verified.path = tmp.path().to_path_buf();
    let new = source.pin.tree;
    let text = String::from_utf8(document(&changed).unwrap()).unwrap();
    let before = String::from_utf8(original).unwrap();
    assert!(text.contains(&new.to_hex()) && !text.contains(&old.to_hex()), "the SBOM names the new hash only");
    let namespace = |t: &str| serde_json::from_str::<Value>(t).unwrap()["documentNamespace"].as_str().unwrap().to_owned();
    assert_ne!(namespace(&text), namespace(&before), "a new document gets a new namespace");
    let written = tmp.path().join("changed.spdx.json");
    fs::write(&written, &text).unwrap();
    pyspdxtools_accepts(&written);

    // A pin whose tree on disk is not what it names is refused, not described.
    let mut stale = sources.clone();
    stale.0.iter_mut().find(|s| s.pin.name == "lua-resty-lrucache").unwrap().pin.tree = new;
    let err = document(&stale).unwrap_err().to_string();
    assert!(err.contains("no longer hashes to") && err.contains("cargo xtask vendor"), "{err}");
}
