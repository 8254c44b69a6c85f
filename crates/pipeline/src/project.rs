//! Where things live: the checkout, its pins, the vendored trees, the store.

use std::path::{Path, PathBuf};

use repro::{vendor, Artifact, Fetcher, Lockfile, Pin, Result, SourceCache, Step, Store, Verified};

use crate::step_record::StepRecord;
use crate::target::Target;

/// Overrides the store's location (default: the per-user cache directory).
pub const STORE_ENV: &str = "STATIC_NGINX_STORE";
/// The shared cache, `s3://BUCKET/PREFIX`, when `--cache` is not given.
pub const CACHE_ENV: &str = "STATIC_NGINX_CACHE";
/// Every timestamp a build records.
pub const SOURCE_DATE_EPOCH: &str = "1700000000";
/// The host programs recipes run; their versions are part of every key.
pub const HOST_TOOLS: &[&str] = &["gcc", "ld", "ar", "make", "perl", "strip"];

pub struct Project {
    pub root: PathBuf,
    pub store: Store,
    fetcher: Fetcher,
    tool_versions: std::sync::OnceLock<Result<String, String>>,
    record: Option<std::sync::Arc<StepRecord>>,
    planning: bool,
}

impl Project {
    /// The checkout this crate was built from.
    pub fn from_checkout() -> Result<Project> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let root = root.canonicalize().map_err(|e| repro::Error::with_source(format!("cannot resolve {}", root.display()), e))?;
        Project::at(root)
    }

    pub fn at(root: PathBuf) -> Result<Project> {
        Project::with_store(root, Store::default_root(STORE_ENV, "static-nginx"))
    }

    /// A checkout at `root` building into the store at `store_root`.
    pub fn with_store(root: PathBuf, store_root: PathBuf) -> Result<Project> {
        let fetcher = Fetcher::new(store_root.join("../fetch")).with_source_cache(SourceCache::at(store_root.join("sources")));
        Ok(Project { root, store: Store::open(store_root)?, fetcher, tool_versions: Default::default(), record: None, planning: false })
    }

    /// Reads Debian archives from these apt source files instead of the machine's, keeping
    /// apt's state for them in `state_dir`.
    pub fn with_apt_sources(mut self, state_dir: PathBuf, sources: Vec<PathBuf>) -> Project {
        self.fetcher = self.fetcher.with_apt_sources(state_dir, sources);
        self
    }

    /// Pulls steps and source trees from `remote` before building or fetching them, and
    /// pushes what this machine builds or fetches.
    pub fn with_cache(mut self, remote: std::sync::Arc<repro::Remote>) -> Project {
        self.store = self.store.with_remote(remote.clone());
        self.fetcher = self.fetcher.with_remote(remote);
        self
    }

    /// The committed list of public keys whose cache entries are trusted.
    pub fn trusted_keys_path(&self) -> PathBuf {
        self.root.join("lockfiles/cache-keys.toml")
    }

    pub fn lockfile_path(&self) -> PathBuf {
        self.root.join("lockfiles/sources.toml")
    }

    pub fn lockfile(&self) -> Result<Lockfile> {
        Lockfile::open(&self.lockfile_path())
    }

    pub fn vendor_dir(&self) -> PathBuf {
        self.root.join("vendor")
    }

    /// The first line of `--version` of every host tool the recipes run: part of every key.
    /// A missing tool is an error that names it (never a placeholder in a key).
    pub fn require_tools(&self) -> Result<&str> {
        self.tool_versions
            .get_or_init(|| {
                tool_version_lines(HOST_TOOLS).map_err(|tool| {
                    format!("the host tool `{tool}` is missing or does not answer `{tool} --version`: the build needs {}; install it (on Debian: apt-get install gcc binutils make perl)", HOST_TOOLS.join(", "))
                })
            })
            .as_deref()
            .map_err(|e| repro::Error::new(e.clone()))
    }

    /// The versions of the tools a cross build for `target` runs besides the host tools (see
    /// [`Target::cross_tools`]): part of the keys of that target's steps.
    pub fn require_cross_tools(&self, target: Target) -> Result<String> {
        tool_version_lines(target.cross_tools()).map_err(|tool| {
            repro::Error::new(format!(
                "`{tool}` is missing or does not answer `{tool} --version`: building for {target} needs {}; install them (on Debian: apt-get install gcc-aarch64-linux-gnu qemu-user-static)",
                target.cross_tools().join(", ")
            ))
        })
    }

    /// [`Project::require_cross_tools`] for recipes, which run after the target's toolchain
    /// step has checked them.
    pub fn cross_tool_versions(&self, target: Target) -> String {
        self.require_cross_tools(target).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `step` with the versions of `target`'s cross tools among its inputs (a native target
    /// has none, so its keys stay as they are).
    pub fn with_cross_tools(&self, step: Step, target: Target) -> Step {
        if target.cross_tools().is_empty() {
            return step;
        }
        step.input("cross tools", self.cross_tool_versions(target))
    }

    /// [`Project::require_tools`] for recipes, which run after a build's first step has
    /// checked the tools (so this cannot fail there).
    pub fn tool_versions(&self) -> &str {
        self.require_tools().unwrap_or_else(|e| panic!("{e}"))
    }

    /// A project that only plans: every step is keyed and recorded, none is built, and a dist
    /// writes nothing (see [`crate::dist::plan`]).
    pub fn planning(mut self) -> Project {
        self.planning = true;
        self
    }

    pub fn is_planning(&self) -> bool {
        self.planning
    }

    /// Adds every step this project runs from now on to `record`.
    pub fn recording(mut self, record: std::sync::Arc<StepRecord>) -> Project {
        self.record = Some(record);
        self
    }

    /// Runs a step in the store (or only keys it, when planning).
    pub fn run(&self, step: Step) -> Result<Artifact> {
        self.run_with(step, |_, _| Ok(()))
    }

    /// [`Project::run`] with Rust code after the commands (see [`Step::run_with`]).
    pub fn run_with(&self, step: Step, finish: impl FnOnce(&Path, &Path) -> Result<()>) -> Result<Artifact> {
        let recipe = self.record.as_ref().map(|_| step.clone());
        let artifact = if self.planning { step.planned(&self.store) } else { step.run_with(&self.store, finish)? };
        if let (Some(record), Some(recipe)) = (&self.record, recipe) {
            record.push(recipe, artifact.clone());
        }
        Ok(artifact)
    }

    /// Copies the tracked files and the verified vendor/ trees to `to`: a second checkout, for
    /// benchmarks and reproducibility checks that must not touch this one.
    pub fn copy_checkout(&self, to: &Path) -> Result<()> {
        let files = duct::cmd("git", ["ls-files", "-z"]).dir(&self.root).read().map_err(|e| repro::Error::with_source("git ls-files failed", e))?;
        for rel in files.split('\0').filter(|f| !f.is_empty()) {
            let dest = to.join(rel);
            std::fs::create_dir_all(dest.parent().unwrap()).map_err(|e| repro::Error::with_source(format!("cannot create {}", dest.display()), e))?;
            std::fs::copy(self.root.join(rel), &dest).map_err(|e| repro::Error::with_source(format!("cannot copy {rel}"), e))?;
        }
        repro::copy::copy_tree(&self.vendor_dir(), &to.join("vendor"))
    }

    /// Verifies (and unless `offline`, fetches) every pin.
    pub fn sources(&self, offline: bool) -> Result<Sources> {
        let pins = self.lockfile()?.pins()?;
        let mut all = Vec::new();
        for pin in pins {
            let verified = vendor::vendor(&pin, &self.vendor_dir(), &self.fetcher, offline)?;
            all.push(Source { pin, verified });
        }
        Ok(Sources(all))
    }

    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }

    /// The verified tree of one pin, fetched unless `offline`.
    pub fn source(&self, name: &str, offline: bool) -> Result<Source> {
        let pin = self.lockfile()?.pin(name)?;
        let verified = vendor::vendor(&pin, &self.vendor_dir(), &self.fetcher, offline)?;
        Ok(Source { pin, verified })
    }
}

/// `tool: <first line of tool --version>` for each tool, one per line, or the first tool that
/// is missing or does not answer.
fn tool_version_lines(tools: &[&str]) -> std::result::Result<String, String> {
    let mut lines = Vec::new();
    for tool in tools {
        let output = duct::cmd(*tool, ["--version"]).stderr_null().stdout_capture().unchecked().run();
        let version = match output {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").to_owned(),
            _ => String::new(),
        };
        if version.is_empty() {
            return Err(tool.to_string());
        }
        lines.push(format!("{tool}: {version}"));
    }
    Ok(lines.join("\n"))
}

/// A pinned source, verified on disk.
#[derive(Clone, Debug)]
pub struct Source {
    pub pin: Pin,
    pub verified: Verified,
}

impl Source {
    pub fn path(&self) -> &Path {
        &self.verified.path
    }
}

/// Every pinned source, verified.
#[derive(Clone, Debug)]
pub struct Sources(pub Vec<Source>);

impl Sources {
    /// The sources `target`'s build uses: without the pins only other targets build with.
    pub fn for_target(&self, target: Target) -> Sources {
        let foreign = target.foreign_pins();
        Sources(self.0.iter().filter(|s| !foreign.contains(&s.pin.name.as_str())).cloned().collect())
    }

    pub fn get(&self, name: &str) -> Result<&Source> {
        self.0.iter().find(|s| s.pin.name == name).ok_or_else(|| repro::Error::new(format!("lockfiles/sources.toml has no pin named {name:?}")))
    }
}

/// `step.run_in(project)`: the end of a recipe's builder chain (see [`Project::run`]).
pub trait RunIn {
    fn run_in(self, project: &Project) -> Result<Artifact>;
}

impl RunIn for Step {
    fn run_in(self, project: &Project) -> Result<Artifact> {
        project.run(self)
    }
}
