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
use crate::project::Project;
pub use crate::provenance::{ORIGINS_FILE, PROJECT, TARGET};
use crate::step_record::StepRecord;
pub use crate::strategy::Strategy;
use crate::{bytecode, luajit, nginx, oci, openssl, pcre, provenance, sbom, toolchain};

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Use only sources already in vendor/ or the source cache.
    pub offline: bool,
    /// Where bundles go (default `target/dist` in the checkout).
    pub out_dir: Option<PathBuf>,
}

/// What a dist run produced, and which steps it had to build.
#[derive(Clone, Debug)]
pub struct Dist {
    /// One per strategy, in the order of [`Strategy::ALL`].
    pub bundles: Vec<Bundle>,
    pub sha256sums: PathBuf,
    pub steps: Vec<Artifact>,
    pub lua_modules: Vec<Module>,
    pub images: Vec<oci::Image>,
    pub sboms: Vec<sbom::Sbom>,
}

impl Dist {
    pub fn bundle(&self, strategy: Strategy) -> &Bundle {
        &self.bundles[index(strategy)]
    }

    pub fn image(&self, strategy: Strategy) -> &oci::Image {
        &self.images[index(strategy)]
    }

    pub fn sbom(&self, strategy: Strategy) -> &sbom::Sbom {
        &self.sboms[index(strategy)]
    }
}

/// Where `strategy`'s bundle, image and SBOM are in a [`Dist`]: each list holds one per
/// strategy, in the order of [`Strategy::ALL`].
fn index(strategy: Strategy) -> usize {
    Strategy::ALL.iter().position(|s| *s == strategy).expect("every strategy is in ALL")
}

pub fn build(project: &Project, options: &Options) -> Result<Dist> {
    let sources = project.sources(options.offline)?;
    let toolchain = toolchain::build(project, &sources)?;
    let luajit = luajit::build(project, &sources, &toolchain)?;
    let openssl = openssl::build(project, &sources, &toolchain)?;
    let pcre = pcre::build(project, &sources, &toolchain)?;
    let libraries = nginx::Libraries { toolchain: &toolchain, luajit: &luajit, openssl: &openssl, pcre: &pcre };
    let compiled = nginx::compile(project, &sources, &libraries)?;
    let modules = lua_modules::project_closure(project, &sources)?;
    // Debug info kept: log lines and tracebacks then name the same file, line and function
    // (`healthcheck.lua:123: warn(): ...`) as the lualib bundle's `.lua` files do.
    let bytecode = bytecode::bytecode(project, &luajit, &modules, false)?;
    let embedded = nginx::link_embedded(project, &compiled, &libraries, &bytecode)?;

    let out_dir = options.out_dir.clone().unwrap_or_else(|| project.root.join("target/dist"));
    fs::create_dir_all(&out_dir).map_err(|e| Error::with_source(format!("cannot create {}", out_dir.display()), e))?;
    // Two runs at once each build (the store builds every step once) and take turns here.
    let _lock = FileLock::acquire(&out_dir.join(".dist.lock"))?;
    let mut steps = vec![toolchain, luajit, openssl, pcre, compiled.clone(), bytecode, embedded.clone()];
    let mut bundles = Vec::new();
    let mut bundle_steps = Vec::new();
    let (mut images, mut sboms) = (Vec::new(), Vec::new());
    let licenses = sbom::licenses(project, &sources, &modules)?;
    for strategy in Strategy::ALL {
        let binary = match strategy {
            Strategy::Embed => &embedded,
            Strategy::Lualib => &compiled,
        };
        let (sbom, sbom_step) = sbom::write(project, &sources, &out_dir, strategy, binary, &modules)?;
        let contents = Contents { sources: &sources, modules: &modules, steps: &steps, sbom: &sbom_step };
        let bundle = bundle::write(project, strategy, binary, &contents, &out_dir)?;
        let (image, image_step) = oci::write_image(project, &sources, &out_dir, strategy, &bundle.step, &licenses)?;
        bundle_steps.extend([sbom_step, bundle.step.clone(), image_step]);
        bundles.push(bundle);
        images.push(image);
        sboms.push(sbom);
    }
    steps.extend(bundle_steps);
    if project.is_planning() {
        return Ok(Dist { bundles, sha256sums: out_dir.join("SHA256SUMS"), steps, lua_modules: modules, images, sboms });
    }
    let mut sums = String::new();
    let files = bundles.iter().map(|b| &b.tarball).chain(images.iter().map(|i| &i.archive)).chain(sboms.iter().map(|s| &s.path));
    for file in files {
        let _ = writeln!(sums, "{}  {}", sha256_file(file)?, file.file_name().unwrap().to_string_lossy());
    }
    let sha256sums = out_dir.join("SHA256SUMS");
    write_atomic(&sha256sums, sums.as_bytes())?;
    write_atomic(&out_dir.join(ORIGINS_FILE), provenance::source_origins(&sources).as_bytes())?;
    Ok(Dist { bundles, sha256sums, steps, lua_modules: modules, images, sboms })
}

/// Every step of a dist of `project`'s checkout with its derivation, in the order a build runs
/// them, without building anything; sources are vendored as for a build.
pub fn plan(project: Project) -> Result<Vec<(repro::Step, Artifact)>> {
    let record = StepRecord::new();
    let project = project.planning().recording(record.clone());
    build(&project, &Options { offline: false, out_dir: Some(std::env::temp_dir()) })?;
    Ok(record.steps())
}
