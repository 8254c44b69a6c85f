//! Build steps keyed by the hash of everything they depend on.
//!
//! A [`Step`] is declarative: its sources (by tree hash), the steps it depends on (by key), its
//! input values (flags, tool versions), its files, its commands and the Rust code that runs
//! inside it. All of that is its [`Derivation`], stored beside its output; the key is the hash
//! of the derivation, so a step whose key is in the store is skipped, any change rebuilds it
//! and whatever depends on it, and every key can be explained. Where a tree came from (mirror,
//! checkout path) is never part of a key.
//!
//! Commands run in a cleared environment, in a build directory whose path does not depend on
//! the checkout, and write into a private output directory that is renamed into the store only
//! when every command succeeded.

mod executor;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::code::{self, CodeId};
use crate::derivation::{self, CommandRecord, DepRef, Derivation, FileRef};
use crate::error::{Context, Error, Result};
use crate::fetch::tail;
use crate::lock::FileLock;
use crate::remote::Remote;
use crate::tree::TreeHash;
pub use executor::Action;

/// Placeholders in commands, the environment and template files, replaced when a step runs.
/// They keep absolute paths out of keys.
pub const BUILD_DIR: &str = "{build}";
pub const OUT_DIR: &str = "{out}";

/// `{out}/<rel>`: a path in the step's output directory, for commands.
pub fn out_path(rel: &str) -> String {
    if rel.is_empty() {
        OUT_DIR.to_owned()
    } else {
        format!("{OUT_DIR}/{}", rel.trim_start_matches('/'))
    }
}

/// `{build}/<rel>`: a path in the step's build directory, for commands.
pub fn build_path(rel: &str) -> String {
    if rel.is_empty() {
        BUILD_DIR.to_owned()
    } else {
        format!("{BUILD_DIR}/{}", rel.trim_start_matches('/'))
    }
}

/// The content-addressed store: `<root>/<name>-<key>` per built step, with its derivation
/// (`.drv`) and log (`.log`) beside it.
#[derive(Clone)]
pub struct Store {
    root: PathBuf,
    /// A shared cache: pulled from before a step builds, pushed to after.
    remote: Option<std::sync::Arc<Remote>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).field("remote", &self.remote.as_ref().map(|r| r.url())).finish()
    }
}

/// A finished step in the store.
#[derive(Clone, Debug)]
pub struct Artifact {
    pub name: String,
    pub key: String,
    pub path: PathBuf,
    /// The step's log, kept beside its output.
    pub log: PathBuf,
    /// `false` when the output was already in the store or came from the cache.
    pub built: bool,
    /// `true` when the output was pulled from the shared cache by this call.
    pub pulled: bool,
    /// Wall time of the build (zero when it came from the store).
    pub seconds: f64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Working directory, relative to the build directory.
    pub cwd: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

#[derive(Clone, Debug)]
struct StepFile {
    contents: Vec<u8>,
    executable: bool,
    template: bool,
}

#[derive(Clone, Debug)]
pub struct Step {
    name: String,
    inputs: BTreeMap<String, String>,
    sources: BTreeMap<String, (PathBuf, TreeHash)>,
    deps: BTreeMap<String, Artifact>,
    files: BTreeMap<String, StepFile>,
    env: BTreeMap<String, String>,
    commands: Vec<Command>,
    code: BTreeMap<String, String>,
}

impl Store {
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        fs::create_dir_all(&root).context(|| format!("cannot create the store at {}", root.display()))?;
        Ok(Store { root, remote: None })
    }

    /// Pulls steps from `remote` before building them, and pushes what it builds.
    pub fn with_remote(mut self, remote: std::sync::Arc<Remote>) -> Store {
        self.remote = Some(remote);
        self
    }

    pub fn remote(&self) -> Option<&std::sync::Arc<Remote>> {
        self.remote.as_ref()
    }

    /// `$<var>` when set, else the per-user cache directory, so every clone on a machine
    /// shares one store.
    pub fn default_root(var: &str, app: &str) -> PathBuf {
        if let Some(dir) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return PathBuf::from(dir);
        }
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        cache.join(app).join("store")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the derivation of step `name` with `key` is kept.
    pub fn derivation_path(&self, name: &str, key: &str) -> PathBuf {
        self.root.join(format!("{name}-{key}.drv"))
    }

    /// The derivation of the built step with `key` (and `name`, when known).
    pub fn derivation(&self, name: Option<&str>, key: &str) -> Result<Derivation> {
        if let Some(name) = name {
            return Derivation::read(&self.derivation_path(name, key));
        }
        let suffix = format!("-{key}.drv");
        match self.derivation_files()?.into_iter().find(|p| p.to_string_lossy().ends_with(&suffix)) {
            Some(path) => Derivation::read(&path),
            None => Err(Error::new(format!("the store {} holds no derivation with key {key}", self.root.display()))),
        }
    }

    /// For each step name, the derivation of the entry built last.
    pub fn latest_derivations(&self) -> Result<BTreeMap<String, Derivation>> {
        let mut latest: BTreeMap<String, (std::time::SystemTime, Derivation)> = BTreeMap::new();
        for path in self.derivation_files()? {
            let modified = fs::metadata(&path).and_then(|m| m.modified()).context(|| format!("cannot stat {}", path.display()))?;
            let drv = Derivation::read(&path)?;
            if latest.get(&drv.name).is_none_or(|(t, _)| *t < modified) {
                latest.insert(drv.name.clone(), (modified, drv));
            }
        }
        Ok(latest.into_iter().map(|(name, (_, drv))| (name, drv)).collect())
    }

    fn derivation_files(&self) -> Result<Vec<PathBuf>> {
        let entries = fs::read_dir(&self.root).context(|| format!("cannot list the store {}", self.root.display()))?;
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "drv")).collect();
        files.sort();
        Ok(files)
    }
}

impl Step {
    pub fn new(name: impl Into<String>) -> Step {
        let mut env = BTreeMap::new();
        for (k, v) in [("PATH", "/usr/local/bin:/usr/bin:/bin"), ("LC_ALL", "C"), ("TZ", "UTC"), ("HOME", BUILD_DIR)] {
            env.insert(k.to_owned(), v.to_owned());
        }
        let code = code::executor().into_iter().map(|c| (c.path, c.hash)).collect();
        Step {
            name: name.into(),
            inputs: BTreeMap::new(),
            sources: BTreeMap::new(),
            deps: BTreeMap::new(),
            files: BTreeMap::new(),
            env,
            commands: Vec::new(),
            code,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A value the output depends on: a flag, a tool version, SOURCE_DATE_EPOCH.
    pub fn input(mut self, key: impl Into<String>, value: impl Into<String>) -> Step {
        self.inputs.insert(key.into(), value.into());
        self
    }

    /// A verified source tree, copied to `<build>/<mount>` before the commands run.
    pub fn source(mut self, mount: impl Into<String>, path: impl Into<PathBuf>, tree: TreeHash) -> Step {
        self.sources.insert(mount.into(), (path.into(), tree));
        self
    }

    /// Another step's output, reachable at `<build>/<mount>`.
    pub fn dep(mut self, mount: impl Into<String>, artifact: &Artifact) -> Step {
        self.deps.insert(mount.into(), artifact.clone());
        self
    }

    /// A file written to `<build>/<path>` as is, before the commands run.
    pub fn file(mut self, path: impl Into<String>, contents: impl Into<Vec<u8>>, executable: bool) -> Step {
        self.files.insert(path.into(), StepFile { contents: contents.into(), executable, template: false });
        self
    }

    /// A file like [`Step::file`] in which `{build}` and `{out}` are replaced by the step's
    /// directories when it is written (compiler wrappers, specs).
    pub fn template(mut self, path: impl Into<String>, text: impl Into<String>, executable: bool) -> Step {
        self.files.insert(path.into(), StepFile { contents: text.into().into_bytes(), executable, template: true });
        self
    }

    /// An environment variable for every command (the environment starts cleared).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Step {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Rust code that shapes the output (a writer called after the commands): part of the key.
    pub fn code(mut self, code: CodeId) -> Step {
        self.code.insert(code.path, code.hash);
        self
    }

    /// Runs `argv` in `<build>/<cwd>`.
    pub fn command<I, S>(self, cwd: &str, argv: I) -> Step
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.command_env(cwd, argv, Vec::<(String, String)>::new())
    }

    pub fn command_env<I, S, E, K, V>(mut self, cwd: &str, argv: I, env: E) -> Step
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
        E: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.commands.push(Command {
            cwd: cwd.to_owned(),
            argv: argv.into_iter().map(Into::into).collect(),
            env: env.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        });
        self
    }

    pub fn commands(&self) -> &[Command] {
        &self.commands
    }

    /// Every input, written down: sources by tree hash, deps by key, files by content hash,
    /// never a path of this machine.
    pub fn derivation(&self) -> Derivation {
        Derivation {
            format: derivation::FORMAT,
            name: self.name.clone(),
            inputs: self.inputs.clone(),
            sources: self.sources.iter().map(|(m, (_, tree))| (m.clone(), tree.to_string())).collect(),
            deps: self.deps.iter().map(|(m, a)| (m.clone(), DepRef { name: a.name.clone(), key: a.key.clone() })).collect(),
            files: self
                .files
                .iter()
                .map(|(p, f)| {
                    let contents = format!("blake3:{}", blake3::hash(&f.contents).to_hex());
                    (p.clone(), FileRef { contents, executable: f.executable, template: f.template })
                })
                .collect(),
            env: self.env.clone(),
            commands: self.commands.iter().map(|c| CommandRecord { cwd: c.cwd.clone(), argv: c.argv.clone(), env: c.env.iter().cloned().collect() }).collect(),
            code: self.code.clone(),
        }
    }

    /// The hash of the derivation.
    pub fn key(&self) -> String {
        self.derivation().key()
    }

    /// What the step does with `build` and `out` as its directories and each dependency's
    /// output at `dep_dir(dep)`, every placeholder expanded.
    pub fn actions(&self, build: &Path, out: &Path, dep_dir: impl Fn(&Artifact) -> PathBuf) -> Vec<Action> {
        let expand = |s: &str| s.replace(BUILD_DIR, &build.to_string_lossy()).replace(OUT_DIR, &out.to_string_lossy());
        let mut actions = Vec::new();
        for (mount, (src, _)) in &self.sources {
            actions.push(Action::CopySource { from: src.clone(), to: build.join(mount) });
        }
        for (mount, dep) in &self.deps {
            actions.push(Action::MountDep { target: dep_dir(dep), at: build.join(mount) });
        }
        for (rel, f) in &self.files {
            let contents = match (f.template, std::str::from_utf8(&f.contents)) {
                (true, Ok(text)) => expand(text).into_bytes(),
                _ => f.contents.clone(),
            };
            actions.push(Action::WriteFile { at: build.join(rel), contents, executable: f.executable });
        }
        for c in &self.commands {
            let mut env: BTreeMap<String, String> = self.env.iter().map(|(k, v)| (k.clone(), expand(v))).collect();
            env.extend(c.env.iter().map(|(k, v)| (k.clone(), expand(v))));
            let argv = c.argv.iter().map(|a| expand(a)).collect();
            actions.push(Action::Run { cwd: build.join(&c.cwd), shown_cwd: c.cwd.clone(), argv, env });
        }
        actions
    }

    /// The artifact this step has or would have in `store`, without building anything (for
    /// plans and explanations): `built` is false, and `path` may not exist yet.
    pub fn planned(&self, store: &Store) -> Artifact {
        let key = self.key();
        let entry = format!("{}-{key}", self.name);
        Artifact {
            name: self.name.clone(),
            key,
            path: store.root.join(&entry),
            log: store.root.join(format!("{entry}.log")),
            built: false,
            pulled: false,
            seconds: 0.0,
        }
    }

    /// Returns the stored output, building it first when its key is absent.
    pub fn run(self, store: &Store) -> Result<Artifact> {
        self.run_with(store, |_, _| Ok(()))
    }

    /// Like [`Step::run`], with `finish(build, out)` called after the commands. The code of
    /// the closure must be declared with [`Step::code`], and whatever it reads must be among
    /// the step's inputs, files, sources or deps.
    pub fn run_with(self, store: &Store, finish: impl FnOnce(&Path, &Path) -> Result<()>) -> Result<Artifact> {
        let derivation = self.derivation();
        let key = derivation.key();
        let entry = format!("{}-{key}", self.name);
        let path = store.root.join(&entry);
        let artifact = |built, pulled, seconds| Artifact {
            name: self.name.clone(),
            key: key.clone(),
            path: path.clone(),
            log: store.root.join(format!("{entry}.log")),
            built,
            pulled,
            seconds,
        };
        if path.is_dir() {
            if let Some(remote) = &store.remote {
                // A store filled before the cache existed fills it.
                remote.push_step(&self.name, &key, &path, &store.root.join("tmp").join("push"), false);
            }
            return Ok(artifact(false, false, 0.0));
        }
        // One lock per key makes concurrent runs build a step once; one per name guards the
        // build directory, whose path must not depend on the key (it ends up in debug info).
        let _key_lock = FileLock::acquire(&store.root.join("locks").join(format!("{entry}.lock")))?;
        if path.is_dir() {
            return Ok(artifact(false, false, 0.0));
        }
        let started = std::time::Instant::now();
        if self.pull(store, &derivation, &entry)? {
            return Ok(artifact(false, true, started.elapsed().as_secs_f64()));
        }
        self.build(store, &derivation, &entry, finish)?;
        let seconds = started.elapsed().as_secs_f64();
        if let Some(remote) = &store.remote {
            // Uploaded on a background thread while the next step runs.
            remote.push_step(&self.name, &key, &path, &store.root.join("tmp").join("push"), true);
        }
        Ok(artifact(true, false, seconds))
    }

    /// Takes the output from the store's remote cache, when it has a trusted entry for the key,
    /// as store entry `entry`. False when there is no remote or no such entry.
    fn pull(&self, store: &Store, derivation: &Derivation, entry: &str) -> Result<bool> {
        let Some(remote) = &store.remote else { return Ok(false) };
        let key = derivation.key();
        let staging = store.root.join("tmp").join(format!("{entry}.pull"));
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(&staging).context(|| format!("cannot create {}", staging.display()))?;
        let out = staging.join("out");
        let pulled = remote.pull_step(&self.name, &key, &out);
        if let Ok(true) = pulled {
            let drv = store.derivation_path(&self.name, &key);
            let log = store.root.join(format!("{entry}.log"));
            let path = store.root.join(entry);
            fs::write(&drv, derivation.to_toml()).context(|| format!("cannot write {}", drv.display()))?;
            fs::write(&log, format!("pulled from {}\n", remote.url())).context(|| format!("cannot write {}", log.display()))?;
            fs::rename(&out, &path).context(|| format!("cannot publish {}", path.display()))?;
        }
        let _ = fs::remove_dir_all(&staging);
        pulled
    }

    /// Runs the step's actions and `finish` in a clean build directory and publishes the output
    /// as store entry `entry`, its derivation beside it; on failure nothing is published and the
    /// error points at the log.
    fn build(&self, store: &Store, derivation: &Derivation, entry: &str, finish: impl FnOnce(&Path, &Path) -> Result<()>) -> Result<()> {
        let _dir_lock = FileLock::acquire(&store.root.join("locks").join(format!("{}.build.lock", self.name)))?;
        let build = store.root.join("build").join(&self.name);
        let staging = store.root.join("tmp").join(entry);
        for dir in [&build, &staging] {
            if dir.exists() {
                fs::remove_dir_all(dir).context(|| format!("cannot clear {}", dir.display()))?;
            }
        }
        let out = staging.join("out");
        fs::create_dir_all(&out).context(|| format!("cannot create {}", out.display()))?;
        fs::create_dir_all(&build).context(|| format!("cannot create {}", build.display()))?;
        let log = store.root.join(format!("{entry}.log"));
        let staged_log = staging.join("log");
        let actions = self.actions(&build, &out, |dep| dep.path.clone());
        // The source copies come first: they are checked against the trees the key was computed
        // from before any command runs.
        let (copies, rest) = actions.split_at(self.sources.len());
        let result = fs::File::create(&staged_log).map_err(|e| format!("cannot create the log: {e}")).and_then(|mut log| {
            executor::execute(copies, &mut log)?;
            self.check_copied_sources(&build)?;
            executor::execute(rest, &mut log)?;
            finish(&build, &out).map_err(|e| e.to_string())
        });
        let _ = fs::rename(&staged_log, &log);
        if let Err(what) = result {
            let _ = fs::remove_dir_all(&staging);
            return Err(StepFailure { step: self.name.clone(), what }.with_log(&log));
        }
        // The derivation first: an output in the store always has its derivation beside it.
        let drv = store.derivation_path(&self.name, &derivation.key());
        let drv_tmp = staging.join("drv");
        fs::write(&drv_tmp, derivation.to_toml()).context(|| format!("cannot write {}", drv_tmp.display()))?;
        fs::rename(&drv_tmp, &drv).context(|| format!("cannot write {}", drv.display()))?;
        let path = store.root.join(entry);
        fs::rename(&out, &path).context(|| format!("cannot publish {}", path.display()))?;
        let _ = fs::remove_dir_all(&staging);
        let _ = fs::remove_dir_all(&build);
        Ok(())
    }

    /// A source that lives in a working tree (the project's own modules, say) can be edited
    /// between planning and building. Building from the edited copy would store one tree's
    /// output under the other tree's key, so the copy must still hash to the recorded tree.
    fn check_copied_sources(&self, build: &Path) -> Result<(), String> {
        for (mount, (from, tree)) in &self.sources {
            let copied = TreeHash::of_dir(&build.join(mount)).map_err(|e| e.to_string())?;
            if copied != *tree {
                return Err(format!(
                    "source `{mount}` ({}) changed after the build was planned: it hashes to {copied}, the step's key was computed for {tree}; nothing was published, run the build again",
                    from.display()
                ));
            }
        }
        Ok(())
    }

    /// The step as a plain bash script: the same actions as [`Step::run`] carries out, with no
    /// store, key or lock. `dep_dir` says where each dependency's output is. Used to time the
    /// commands alone, and to show what a step does.
    pub fn script(&self, build: &Path, out: &Path, dep_dir: impl Fn(&Artifact) -> PathBuf) -> String {
        executor::script(&self.name, build, out, &self.actions(build, out, dep_dir))
    }
}

struct StepFailure {
    step: String,
    what: String,
}

impl StepFailure {
    fn with_log(self, log: &Path) -> Error {
        let text = fs::read_to_string(log).unwrap_or_default();
        Error::new(format!(
            "build step `{}` failed: {}\n--- last lines of {} ---\n{}\n--- end of log ---",
            self.step,
            self.what,
            log.display(),
            tail(&text, 25)
        ))
    }
}
