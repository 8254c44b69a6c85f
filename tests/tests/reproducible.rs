//! Two checkouts in different directories, each with its own empty store, produce the same
//! tarball, image and SBOM bytes for every target, although the second gets its sources from an
//! imported export rather than a mirror. This is a second cold build of both targets: it takes
//! minutes.

use e2e::temp_dir;

#[test]
fn a_second_checkout_with_its_own_store_and_only_imported_sources_produces_identical_tarballs_images_and_sboms() {
    let here = pipeline::Project::from_checkout().unwrap();
    let tmp = temp_dir("reproducible");
    let every_target = |out: std::path::PathBuf| pipeline::dist::Options { out_dir: Some(out), targets: pipeline::Target::ALL.to_vec(), ..Default::default() };
    let first = pipeline::dist::build(&here, &every_target(tmp.path().join("first"))).unwrap_or_else(|e| panic!("{e}"));
    let export = tmp.path().join("sources.tar");
    let trees: Vec<_> = here.lockfile().unwrap().pins().unwrap().iter().map(|p| p.tree).collect();
    here.fetcher().source_cache().unwrap().export(&trees, &export).unwrap_or_else(|e| panic!("{e}"));

    let checkout = tmp.path().join("a/much/longer/path/to/another-checkout");
    here.copy_checkout(&checkout).unwrap();
    std::fs::remove_dir_all(checkout.join("vendor")).unwrap();
    // The only Debian archive this checkout may use is an empty one; the upstream URLs are
    // unreachable here anyway. Every source must come from the import.
    let apt_sources = e2e::empty_apt_repository(&tmp.path().join("empty-repo"));
    let project = pipeline::Project::with_store(checkout.clone(), tmp.path().join("other-store"))
        .unwrap()
        .with_apt_sources(tmp.path().join("apt-state"), vec![apt_sources]);
    let imported = project.fetcher().source_cache().unwrap().import(&export).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(imported.len(), trees.len());

    let out = tmp.path().join("dist");
    let second = pipeline::dist::build(&project, &every_target(out.clone())).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(project.fetcher().commands(), Vec::<String>::new(), "no mirror was asked for anything");
    let origins = std::fs::read_to_string(out.join(pipeline::dist::ORIGINS_FILE)).unwrap();
    assert_eq!(origins.matches(repro::vendor::FROM_CACHE).count(), trees.len(), "{origins}");

    assert!(second.steps.iter().all(|s| s.built), "the second build shares nothing with the first");
    assert_eq!(first.bundles.len(), 2 * pipeline::Target::ALL.len());
    for (a, b) in first.bundles.iter().zip(&second.bundles) {
        let strategy = format!("{} {}", a.target, a.strategy);
        assert_eq!((a.target, a.strategy), (b.target, b.strategy));
        let sha = |p: &std::path::Path| pipeline::dist::sha256_file(p).unwrap();
        assert_eq!(sha(&a.binary), sha(&b.binary), "{strategy} binary: {} vs {}", a.binary.display(), b.binary.display());
        assert_eq!(sha(&a.tarball), sha(&b.tarball), "{strategy} tarball");
        let binary = std::fs::read(&b.binary).unwrap();
        for path in [tmp.path().to_string_lossy(), here.store.root().to_string_lossy()] {
            assert!(!binary.windows(path.len()).any(|w| w == path.as_bytes()), "{strategy} binary names {path}");
        }
    }
    for (a, b) in first.images.iter().zip(&second.images) {
        let image = format!("{} {}", a.target, a.strategy);
        assert_eq!(a.digest, b.digest, "{image} image digest");
        assert_eq!(std::fs::read(&a.archive).unwrap(), std::fs::read(&b.archive).unwrap(), "{image} image archive");
    }
    for (a, b) in first.sboms.iter().zip(&second.sboms) {
        assert_eq!(std::fs::read(&a.path).unwrap(), std::fs::read(&b.path).unwrap(), "{} {} SBOM", a.target, a.strategy);
    }
    assert_eq!(std::fs::read_to_string(&first.sha256sums).unwrap(), std::fs::read_to_string(&second.sha256sums).unwrap());
}
