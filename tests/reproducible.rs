//! Two checkouts in different directories, each with its own empty store, produce the same
//! tarball bytes. This is a second cold build: it takes minutes.

use e2e::temp_dir;

#[test]
fn a_second_checkout_with_its_own_store_produces_identical_tarballs() {
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
        assert_eq!(std::fs::read(&a.binary).unwrap(), std::fs::read(&b.binary).unwrap(), "{strategy} binary");
        assert_eq!(std::fs::read(&a.tarball).unwrap(), std::fs::read(&b.tarball).unwrap(), "{strategy} tarball");
    }
    assert_eq!(std::fs::read(&first.sha256sums).unwrap(), std::fs::read(&second.sha256sums).unwrap());
}
