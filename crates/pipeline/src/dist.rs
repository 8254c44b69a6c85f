//! `cargo xtask dist`: every step from the pins to the release bundles of both strategies.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use repro::{archive, Artifact, Error, FileLock, Result, Step};

use crate::lua_modules::{self, LibraryRoot, Module};
use crate::project::{Project, Sources, SOURCE_DATE_EPOCH};
use crate::{luajit, nginx, oci, openssl, sbom, toolchain};

pub const PROJECT: &str = "static-nginx";
pub const TARGET: &str = "x86_64-linux-musl";
pub const STRATEGIES: [&str; 2] = ["embed", "lualib"];

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Use only sources already in vendor/.
    pub offline: bool,
    /// Where bundles go (default `target/dist` in the checkout).
    pub out_dir: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct Bundle {
    pub strategy: &'static str,
    pub tarball: PathBuf,
    pub binary: PathBuf,
}

/// What a dist run produced, and which steps it had to build.
#[derive(Clone, Debug)]
pub struct Dist {
    pub bundles: Vec<Bundle>,
    pub sha256sums: PathBuf,
    pub steps: Vec<Artifact>,
    pub lua_modules: Vec<Module>,
    pub images: Vec<oci::Image>,
    pub sboms: Vec<sbom::Sbom>,
}

impl Dist {
    pub fn bundle(&self, strategy: &str) -> &Bundle {
        self.bundles.iter().find(|b| b.strategy == strategy).unwrap_or_else(|| panic!("no {strategy} bundle"))
    }

    pub fn image(&self, strategy: &str) -> &oci::Image {
        self.images.iter().find(|i| i.strategy == strategy).unwrap_or_else(|| panic!("no {strategy} image"))
    }

    pub fn sbom(&self, strategy: &str) -> &sbom::Sbom {
        self.sboms.iter().find(|s| s.strategy == strategy).unwrap_or_else(|| panic!("no {strategy} SBOM"))
    }
}

pub fn build(project: &Project, options: &Options) -> Result<Dist> {
    let sources = project.sources(options.offline)?;
    let toolchain = toolchain::build(project, &sources)?;
    let luajit = luajit::build(project, &sources, &toolchain)?;
    let openssl = openssl::build(project, &sources, &toolchain)?;
    let pcre = openssl::build_pcre(project, &sources, &toolchain)?;
    let compiled = nginx::compile(project, &sources, &toolchain, &luajit, &openssl, &pcre)?;
    let modules = lua_closure(project, &sources)?;
    let bytecode = lua_modules::bytecode(project, &luajit, &modules, true)?;
    let embedded = nginx::link_embedded(project, &compiled, &toolchain, &luajit, &openssl, &pcre, &bytecode)?;

    let out_dir = options.out_dir.clone().unwrap_or_else(|| project.root.join("target/dist"));
    fs::create_dir_all(&out_dir).map_err(|e| Error::with_source(format!("cannot create {}", out_dir.display()), e))?;
    // Two runs at once each build (the store builds every step once) and take turns here.
    let _lock = FileLock::acquire(&out_dir.join(".dist.lock"))?;
    let mut steps = vec![toolchain, luajit, openssl, pcre, compiled.clone(), bytecode, embedded.clone()];
    let mut bundles = Vec::new();
    let mut bundle_steps = Vec::new();
    let (mut images, mut sboms) = (Vec::new(), Vec::new());
    let licenses = sbom::licenses(project, &sources, &modules)?;
    for strategy in STRATEGIES {
        let binary = if strategy == "embed" { &embedded } else { &compiled };
        let (sbom, sbom_step) = sbom::write(project, &sources, &out_dir, strategy, binary, &modules)?;
        let (bundle, artifact) = write_bundle(project, &sources, &out_dir, strategy, binary, &modules, &steps)?;
        let (image, image_step) = oci::write_image(project, &sources, &out_dir, strategy, &artifact, &licenses)?;
        bundles.push(bundle);
        bundle_steps.extend([sbom_step, artifact, image_step]);
        images.push(image);
        sboms.push(sbom);
    }
    steps.extend(bundle_steps);
    let mut sums = String::new();
    let files = bundles.iter().map(|b| &b.tarball).chain(images.iter().map(|i| &i.archive)).chain(sboms.iter().map(|s| &s.path));
    for file in files {
        let _ = writeln!(sums, "{}  {}", sha256_file(file)?, file.file_name().unwrap().to_string_lossy());
    }
    let sha256sums = out_dir.join("SHA256SUMS");
    write_atomic(&sha256sums, sums.as_bytes())?;
    Ok(Dist { bundles, sha256sums, steps, lua_modules: modules, images, sboms })
}

/// The library roots, in search order: the project's own `lualib/` first, then the pins.
pub fn lua_libraries(project: &Project, sources: &Sources) -> Result<Vec<LibraryRoot>> {
    Ok(vec![
        LibraryRoot { provider: "the project's lualib/".into(), dir: project.root.join("lualib") },
        LibraryRoot { provider: "pin lua-resty-core".into(), dir: sources.get("lua-resty-core")?.path().to_path_buf() },
        LibraryRoot { provider: "pin lua-resty-lrucache".into(), dir: sources.get("lua-resty-lrucache")?.path().to_path_buf() },
    ])
}

/// resty.core (without which nginx will not start), every module of `lualib/`, and whatever
/// they require.
pub fn lua_closure(project: &Project, sources: &Sources) -> Result<Vec<Module>> {
    let libraries = lua_libraries(project, sources)?;
    let mut roots: BTreeSet<String> = ["resty.core".to_string()].into();
    for file in lua_files(&project.root.join("lualib")) {
        let rel = file.strip_prefix(project.root.join("lualib")).unwrap();
        roots.insert(luabc::module_name_from_path(rel).map_err(|e| Error::new(e.to_string()))?.as_str().to_owned());
    }
    let roots: Vec<&str> = roots.iter().map(String::as_str).collect();
    let c_modules = lua_modules::c_provided_modules(&project.root.join("modules"))?;
    lua_modules::closure(&roots, &libraries, &c_modules)
}

fn lua_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(lua_files(&p));
            } else if p.extension().is_some_and(|x| x == "lua") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

const DEFAULT_CONF: &str = include_str!("../../../bundle/conf/nginx.conf.in");
const EXAMPLES: [(&str, &str); 2] = [
    ("embed-healthcheck.conf", include_str!("../../../bundle/conf/examples/embed-healthcheck.conf")),
    ("lualib-comprehensive.conf", include_str!("../../../bundle/conf/examples/lualib-comprehensive.conf")),
];
pub const LUA_PACKAGE_PATH: &str = "lua_package_path \"$prefix/lualib/?.lua;$prefix/lualib/?/init.lua;;\";";

/// Assembles one bundle as a store step (so a no-op `dist` rewrites nothing) and copies its
/// tarball into `out_dir`.
fn write_bundle(
    project: &Project,
    sources: &Sources,
    out_dir: &Path,
    strategy: &'static str,
    binary: &Artifact,
    modules: &[Module],
    steps: &[Artifact],
) -> Result<(Bundle, Artifact)> {
    let name = format!("{PROJECT}-{}-{strategy}-{TARGET}", env!("CARGO_PKG_VERSION"));
    let lualib = strategy == "lualib";
    let path_line = if lualib { format!("    {LUA_PACKAGE_PATH}\n") } else { String::new() };
    let read = |path: &Path| fs::read(path).map_err(|e| Error::with_source(format!("cannot read {}", path.display()), e));
    let conf = DEFAULT_CONF.replace("@PROJECT@", PROJECT).replace("@STRATEGY@", strategy).replace("@LUA_PACKAGE_PATH@\n", &path_line);
    let mut step = Step::new(format!("bundle-{strategy}"))
        .input("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH)
        .input("archive", "tar.gz, sorted, owner 0, modes 0755/0644")
        .dep("nginx", binary)
        .file("bundle/conf/nginx.conf", conf, false)
        .file("bundle/conf/mime.types", read(&sources.get("nginx")?.path().join("conf/mime.types"))?, false)
        .file("bundle/PROVENANCE.toml", provenance(project, sources, strategy, modules, steps)?, false)
        .file(format!("bundle/{}", sbom::FILE_IN_BUNDLE), sbom::document(project, sources, strategy, &binary.path.join("sbin/nginx"), modules)?, false);
    for (file, text) in EXAMPLES {
        let text = if lualib { text.replacen("http {\n", &format!("http {{\n{path_line}"), 1) } else { text.to_owned() };
        step = step.file(format!("bundle/conf/examples/{file}"), text, false);
    }
    if lualib {
        for m in modules {
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
        archive::write_tar_gz(&root, &name, &out.join(&tarball_name), SOURCE_DATE_EPOCH.parse().unwrap())
    })?;
    let tarball = out_dir.join(&tarball_name);
    write_atomic(&tarball, &read(&artifact.path.join(&tarball_name))?)?;
    Ok((Bundle { strategy, tarball, binary: binary.path.join("sbin/nginx") }, artifact))
}

fn provenance(project: &Project, sources: &Sources, strategy: &str, modules: &[Module], steps: &[Artifact]) -> Result<String> {
    let mut t = String::new();
    let q = |s: &str| format!("{s:?}");
    let _ = writeln!(t, "# How this bundle was built: every input, by hash.\n");
    let _ = writeln!(t, "[bundle]\nproject = {}\nversion = {}\nstrategy = {}\ntarget = {}\nsource_date_epoch = {SOURCE_DATE_EPOCH}\n", q(PROJECT), q(env!("CARGO_PKG_VERSION")), q(strategy), q(TARGET));
    for s in &sources.0 {
        let _ = writeln!(
            t,
            "[[source]]\nname = {}\nversion = {}\ntree = {}\nmirror = {}\n",
            q(&s.pin.name),
            q(&s.pin.version),
            q(&s.pin.tree.to_string()),
            q(s.verified.origin.as_deref().unwrap_or("unknown"))
        );
    }
    let _ = writeln!(t, "[tools]");
    for line in project.tool_versions().lines() {
        if let Some((tool, version)) = line.split_once(": ") {
            let _ = writeln!(t, "{tool} = {}", q(version));
        }
    }
    let modules_dirs: Vec<String> = nginx::project_modules(project)?.into_iter().map(|(n, _)| n).collect();
    let args: Vec<String> = nginx::configure_args(&modules_dirs).iter().map(|a| q(a)).collect();
    let _ = writeln!(t, "\n[nginx]\nconfigure = [\n  {},\n]\n", args.join(",\n  "));
    let _ = writeln!(t, "[lua]\nstrategy = {}\nmodules = [\n  {},\n]\n", q(if strategy == "embed" { "bytecode linked into sbin/nginx" } else { "files under lualib/" }), modules.iter().map(|m| q(&m.name)).collect::<Vec<_>>().join(",\n  "));
    let _ = writeln!(t, "[steps]");
    for s in steps {
        let _ = writeln!(t, "{} = {}", q(&s.name), q(&s.key));
    }
    Ok(t)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, bytes).map_err(|e| Error::with_source(format!("cannot write {}", tmp.display()), e))?;
    fs::rename(&tmp, path).map_err(|e| Error::with_source(format!("cannot write {}", path.display()), e))
}

pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut file = fs::File::open(path).map_err(|e| Error::with_source(format!("cannot open {}", path.display()), e))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::with_source(format!("cannot read {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
