//! `cargo xtask dist`: every step from the pins to the release bundles of both strategies.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

use repro::{Artifact, Error, FileLock, Result};

use crate::bundle::{self, Contents};
pub use crate::bundle::{Bundle, LUA_PACKAGE_PATH};
use crate::lua_modules::{self, Module};
pub use crate::outputs::sha256_file;
use crate::outputs::write_atomic;
use crate::project::{Project, Sources};
pub use crate::provenance::{ORIGINS_FILE, PROJECT};
use crate::step_record::StepRecord;
pub use crate::strategy::Strategy;
pub use crate::target::Target;
use crate::{bytecode, luajit, nginx, oci, oci_index, openssl, pcre, provenance, sbom, toolchain};

#[derive(Clone, Debug)]
pub struct Options {
    /// Use only sources already in vendor/ or the source cache.
    pub offline: bool,
    /// Where bundles go (default `target/dist` in the checkout).
    pub out_dir: Option<PathBuf>,
    /// The machines to build for, in this order (default: x86_64 only).
    pub targets: Vec<Target>,
}

impl Default for Options {
    fn default() -> Options {
        Options { offline: false, out_dir: None, targets: vec![Target::X86_64] }
    }
}

/// What a dist run produced, and which steps it had to build.
#[derive(Clone, Debug)]
pub struct Dist {
    /// One per target and strategy: the targets in the order of [`Options::targets`], for
    /// each the strategies in the order of [`Strategy::ALL`]. Images and SBOMs likewise.
    pub bundles: Vec<Bundle>,
    pub sha256sums: PathBuf,
    pub steps: Vec<Artifact>,
    pub lua_modules: Vec<Module>,
    pub images: Vec<oci::Image>,
    /// With more than one target: per strategy, the image of every target in one layout.
    pub image_indexes: Vec<oci_index::ImageIndex>,
    pub sboms: Vec<sbom::Sbom>,
}

impl Dist {
    /// The bundle of `strategy` for the first target built (x86_64 by default).
    pub fn bundle(&self, strategy: Strategy) -> &Bundle {
        self.bundles.iter().find(|b| b.strategy == strategy).expect("a dist builds every strategy")
    }

    pub fn bundle_for(&self, target: Target, strategy: Strategy) -> Option<&Bundle> {
        self.bundles.iter().find(|b| b.strategy == strategy && b.target == target)
    }

    pub fn image(&self, strategy: Strategy) -> &oci::Image {
        self.images.iter().find(|i| i.strategy == strategy).expect("a dist builds every strategy")
    }

    pub fn sbom(&self, strategy: Strategy) -> &sbom::Sbom {
        self.sboms.iter().find(|s| s.strategy == strategy).expect("a dist builds every strategy")
    }
}

/// The two binaries of one target and the steps that made them.
struct Binaries {
    target: Target,
    sources: Sources,
    compiled: Artifact,
    embedded: Artifact,
    steps: Vec<Artifact>,
}

fn binaries(project: &Project, sources: Sources, target: Target, modules: &[Module]) -> Result<Binaries> {
    let toolchain = toolchain::build(project, &sources, target)?;
    let luajit = luajit::build(project, &sources, &toolchain)?;
    let openssl = openssl::build(project, &sources, &toolchain)?;
    let pcre = pcre::build(project, &sources, &toolchain)?;
    let libraries = nginx::Libraries { toolchain: &toolchain, luajit: &luajit, openssl: &openssl, pcre: &pcre };
    let compiled = nginx::compile(project, &sources, &libraries)?;
    // Debug info kept: log lines and tracebacks then name the same file, line and function
    // (`healthcheck.lua:123: warn(): ...`) as the lualib bundle's `.lua` files do.
    let bytecode = bytecode::bytecode(project, (&luajit, target), modules, false)?;
    let embedded = nginx::link_embedded(project, &compiled, &libraries, &bytecode)?;
    let steps = vec![toolchain.artifact.clone(), luajit, openssl, pcre, compiled.clone(), bytecode, embedded.clone()];
    Ok(Binaries { target, sources, compiled, embedded, steps })
}

pub fn build(project: &Project, options: &Options) -> Result<Dist> {
    if options.targets.is_empty() {
        return Err(Error::new("a dist needs at least one target"));
    }
    let all_sources = project.sources(options.offline)?;
    let modules = lua_modules::project_closure(project, &all_sources)?;
    let mut built = Vec::new();
    for target in &options.targets {
        built.push(binaries(project, all_sources.for_target(*target), *target, &modules)?);
    }

    let out_dir = options.out_dir.clone().unwrap_or_else(|| project.root.join("target/dist"));
    fs::create_dir_all(&out_dir).map_err(|e| Error::with_source(format!("cannot create {}", out_dir.display()), e))?;
    // Two runs at once each build (the store builds every step once) and take turns here.
    let _lock = FileLock::acquire(&out_dir.join(".dist.lock"))?;
    let mut steps = Vec::new();
    let mut bundles = Vec::new();
    let (mut images, mut sboms) = (Vec::new(), Vec::new());
    let mut image_steps = Vec::new();
    for target in &built {
        let sources = &target.sources;
        let licenses = sbom::licenses(project, sources, target.target, &modules)?;
        let mut bundle_steps = Vec::new();
        for strategy in Strategy::ALL {
            let binary = match strategy {
                Strategy::Embed => &target.embedded,
                Strategy::Lualib => &target.compiled,
            };
            let release = (strategy, target.target);
            let (sbom, sbom_step) = sbom::write(project, sources, &out_dir, release, binary, &modules)?;
            let contents = Contents { sources, modules: &modules, steps: &target.steps, sbom: &sbom_step };
            let bundle = bundle::write(project, release, binary, &contents, &out_dir)?;
            let (image, image_step) = oci::write_image(project, sources, &out_dir, release, &bundle.step, &licenses)?;
            bundle_steps.extend([sbom_step, bundle.step.clone(), image_step.clone()]);
            image_steps.push(image_step);
            bundles.push(bundle);
            images.push(image);
            sboms.push(sbom);
        }
        steps.extend(target.steps.iter().cloned());
        steps.extend(bundle_steps);
    }
    let mut image_indexes = Vec::new();
    if built.len() > 1 {
        for strategy in Strategy::ALL {
            let parts: Vec<_> = images.iter().zip(&image_steps).filter(|(i, _)| i.strategy == strategy).collect();
            let (index, step) = oci_index::write(project, &out_dir, strategy, &parts)?;
            image_indexes.push(index);
            steps.push(step);
        }
    }
    if project.is_planning() {
        return Ok(Dist { bundles, sha256sums: out_dir.join("SHA256SUMS"), steps, lua_modules: modules, images, image_indexes, sboms });
    }
    let mut sums = String::new();
    let files = bundles
        .iter()
        .map(|b| &b.tarball)
        .chain(images.iter().map(|i| &i.archive))
        .chain(image_indexes.iter().map(|i| &i.archive))
        .chain(sboms.iter().map(|s| &s.path));
    for file in files {
        let _ = writeln!(sums, "{}  {}", sha256_file(file)?, file.file_name().unwrap().to_string_lossy());
    }
    let sha256sums = out_dir.join("SHA256SUMS");
    write_atomic(&sha256sums, sums.as_bytes())?;
    write_atomic(&out_dir.join(ORIGINS_FILE), provenance::source_origins(&all_sources).as_bytes())?;
    Ok(Dist { bundles, sha256sums, steps, lua_modules: modules, images, image_indexes, sboms })
}

/// Every step of a dist of `project`'s checkout for `targets` with its derivation, in the order
/// a build runs them, without building anything; sources are vendored as for a build.
pub fn plan(project: Project, targets: &[Target]) -> Result<Vec<(repro::Step, Artifact)>> {
    let record = StepRecord::new();
    let project = project.planning().recording(record.clone());
    build(&project, &Options { out_dir: Some(std::env::temp_dir()), targets: targets.to_vec(), ..Options::default() })?;
    Ok(record.steps())
}
