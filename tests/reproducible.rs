//! Two checkouts in different directories, each with its own empty store, produce the same
//! tarball, image and SBOM bytes. This is a second cold build: it takes minutes.

use e2e::temp_dir;

#[test]
fn a_second_checkout_with_its_own_store_produces_identical_tarballs_images_and_sboms() {
    let first = e2e::dist();
    let here = pipeline::Project::from_checkout().unwrap();
    let tmp = temp_dir("reproducible");
    let checkout = tmp.path().join("a/much/longer/path/to/another-checkout");
    here.copy_checkout(&checkout).unwrap();
    let project = pipeline::Project::with_store(checkout.clone(), tmp.path().join("other-store")).unwrap();
    let second = pipeline::dist::build(&project, &pipeline::dist::Options { offline: true, out_dir: Some(tmp.path().join("dist")) })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(second.steps.iter().all(|s| s.built), "the second build shares nothing with the first");
    for strategy in pipeline::dist::STRATEGIES {
        let (a, b) = (first.bundle(strategy), second.bundle(strategy));
        let sha = |p: &std::path::Path| pipeline::dist::sha256_file(p).unwrap();
        assert_eq!(sha(&a.binary), sha(&b.binary), "{strategy} binary: {} vs {}", a.binary.display(), b.binary.display());
        assert_eq!(sha(&a.tarball), sha(&b.tarball), "{strategy} tarball");
        let binary = std::fs::read(&b.binary).unwrap();
        for path in [tmp.path().to_string_lossy(), here.store.root().to_string_lossy()] {
            assert!(!binary.windows(path.len()).any(|w| w == path.as_bytes()), "{strategy} binary names {path}");
        }
    }
    for strategy in pipeline::dist::STRATEGIES {
        let (a, b) = (first.image(strategy), second.image(strategy));
        assert_eq!(a.digest, b.digest, "{strategy} image digest");
        assert_eq!(std::fs::read(&a.archive).unwrap(), std::fs::read(&b.archive).unwrap(), "{strategy} image archive");
        assert_eq!(std::fs::read(&first.sbom(strategy).path).unwrap(), std::fs::read(&second.sbom(strategy).path).unwrap(), "{strategy} SBOM");
    }
    assert_eq!(std::fs::read_to_string(&first.sha256sums).unwrap(), std::fs::read_to_string(&second.sha256sums).unwrap());
}
