//! One release bundle: its configuration, its Lua files (lualib), the binary and
//! `PROVENANCE.toml`, as a deterministic tarball made by a store step.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use repro::{archive, Artifact, Error, Result, Step};

use crate::lua_modules::Module;
use crate::outputs::write_atomic;
use crate::project::{Project, Sources, SOURCE_DATE_EPOCH};
use crate::provenance::{self, PROJECT};
use crate::sbom;
use crate::strategy::Strategy;
use crate::target::Target;

const DEFAULT_CONF: &str = include_str!("../../../bundle/conf/nginx.conf.in");
const EXAMPLES: [(&str, &str); 2] = [
    ("embed-healthcheck.conf", include_str!("../../../bundle/conf/examples/embed-healthcheck.conf")),
    ("lualib-comprehensive.conf", include_str!("../../../bundle/conf/examples/lualib-comprehensive.conf")),
];
/// How the lualib bundle's configurations find its Lua files, wherever it is unpacked.
pub const LUA_PACKAGE_PATH: &str = "lua_package_path \"$prefix/lualib/?.lua;$prefix/lualib/?/init.lua;;\";";

#[derive(Clone, Debug)]
pub struct Bundle {
    pub strategy: Strategy,
    pub target: Target,
    /// The tarball in the output directory.
    pub tarball: PathBuf,
    /// The binary inside it, in the store.
    pub binary: PathBuf,
    pub step: Artifact,
}

/// What goes into a bundle besides the binary.
pub struct Contents<'a> {
    pub sources: &'a Sources,
    pub modules: &'a [Module],
    /// The steps the bundle comes from, for PROVENANCE.toml.
    pub steps: &'a [Artifact],
    /// The SBOM step of the bundle, whose document the bundle carries.
    pub sbom: &'a Artifact,
}

/// The bundle's directory and tarball name: `static-nginx-<version>-<strategy>-<target>`.
pub fn name(strategy: Strategy, target: Target) -> String {
    format!("{PROJECT}-{}-{strategy}-{target}", env!("CARGO_PKG_VERSION"))
}

/// Assembles one bundle as a store step (so a no-op `dist` rewrites nothing) and copies its
/// tarball into `out_dir` (unless the project only plans).
pub fn write(project: &Project, (strategy, target): (Strategy, Target), binary: &Artifact, contents: &Contents, out_dir: &Path) -> Result<Bundle> {
    let name = name(strategy, target);
    let lualib = strategy == Strategy::Lualib;
    let path_line = if lualib { format!("    {LUA_PACKAGE_PATH}\n") } else { String::new() };
    let read = |path: &Path| fs::read(path).map_err(|e| Error::with_source(format!("cannot read {}", path.display()), e));
    let conf = DEFAULT_CONF.replace("@PROJECT@", PROJECT).replace("@STRATEGY@", strategy.name()).replace("@LUA_PACKAGE_PATH@\n", &path_line);
    let provenance = provenance::provenance(project, contents.sources, (strategy, target), contents.modules, contents.steps)?;
    let mut step = Step::new(target.step_name(&format!("bundle-{strategy}")))
        .input("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH)
        .code(repro::code::tar_writer())
        .code(repro::code_id!("src/bundle.rs"))
        .dep("nginx", binary)
        .dep("sbom", contents.sbom)
        .file("bundle/conf/nginx.conf", conf, false)
        .file("bundle/conf/mime.types", read(&contents.sources.get("nginx")?.path().join("conf/mime.types"))?, false)
        .file("bundle/PROVENANCE.toml", provenance, false);
    for (file, text) in EXAMPLES {
        let text = if lualib { text.replacen("http {\n", &format!("http {{\n{path_line}"), 1) } else { text.to_owned() };
        step = step.file(format!("bundle/conf/examples/{file}"), text, false);
    }
    if lualib {
        for m in contents.modules {
            step = step.file(format!("bundle/lualib/{}", m.relative.display()), read(&m.file)?, false);
        }
    }
    let tarball_name = format!("{name}.tar.gz");
    let artifact = project.run_with(step, |build, out| {
        let root = build.join("bundle");
        fs::create_dir_all(root.join("logs")).map_err(|e| Error::with_source("cannot create logs/", e))?;
        fs::create_dir_all(root.join("sbin")).map_err(|e| Error::with_source("cannot create sbin/", e))?;
        fs::copy(build.join("nginx/sbin/nginx"), root.join("sbin/nginx")).map_err(|e| Error::with_source("cannot copy sbin/nginx", e))?;
        fs::set_permissions(root.join("sbin/nginx"), fs::Permissions::from_mode(0o755)).map_err(|e| Error::with_source("cannot chmod sbin/nginx", e))?;
        let sbom = build.join("sbom").join(sbom::file_name(strategy.name(), target));
        fs::copy(&sbom, root.join(sbom::FILE_IN_BUNDLE)).map_err(|e| Error::with_source(format!("cannot copy {}", sbom.display()), e))?;
        archive::write_tar_gz(&root, &name, &out.join(&tarball_name), SOURCE_DATE_EPOCH.parse().expect("SOURCE_DATE_EPOCH is a number"))
    })?;
    let tarball = out_dir.join(&tarball_name);
    if !project.is_planning() {
        write_atomic(&tarball, &read(&artifact.path.join(&tarball_name))?)?;
    }
    Ok(Bundle { strategy, target, tarball, binary: binary.path.join("sbin/nginx"), step: artifact })
}
