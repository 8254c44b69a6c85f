//! Build steps keyed by the hash of everything they depend on.
//!
//! A [`Step`] is declarative: its sources (by tree hash), the steps it depends on (by key), its
//! input values (flags, tool versions) and its commands. The key hashes all of that, so a step
//! whose key is in the store is skipped, and any change rebuilds it and whatever depends on it.
//! Where a tree came from (mirror, checkout path) is never part of a key.
//!
//! Commands run in a cleared environment, in a build directory whose path does not depend on
//! the checkout, and write into a private output directory that is renamed into the store only
//! when every command succeeded.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result};
use crate::fetch::tail;
use crate::lock::FileLock;
use crate::tree::TreeHash;

/// Placeholders in commands, replaced when a step runs. They keep absolute paths out of keys.
pub const BUILD_DIR: &str = "{build}";
pub const OUT_DIR: &str = "{out}";

/// The content-addressed store: `<root>/<name>-<key>` per built step.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// A finished step in the store.
#[derive(Clone, Debug)]
pub struct Artifact {
    pub name: String,
    pub key: String,
    pub path: PathBuf,
    /// The step's log, kept beside its output.
    pub log: PathBuf,
    /// `false` when the output was already in the store.
    pub built: bool,
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
pub struct Step {
    name: String,
    inputs: BTreeMap<String, String>,
    sources: Vec<(String, PathBuf, TreeHash)>,
    deps: Vec<(String, Artifact)>,
    files: Vec<(String, Vec<u8>, bool)>,
    env: BTreeMap<String, String>,
    commands: Vec<Command>,
}

impl Store {
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        fs::create_dir_all(&root).context(|| format!("cannot create the store at {}", root.display()))?;
        Ok(Store { root })
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
}

impl Step {
    pub fn new(name: impl Into<String>) -> Step {
        let mut env = BTreeMap::new();
        for (k, v) in [("PATH", "/usr/local/bin:/usr/bin:/bin"), ("LC_ALL", "C"), ("TZ", "UTC"), ("HOME", BUILD_DIR)] {
            env.insert(k.to_owned(), v.to_owned());
        }
        Step {
            name: name.into(),
            inputs: BTreeMap::new(),
            sources: Vec::new(),
            deps: Vec::new(),
            files: Vec::new(),
            env,
            commands: Vec::new(),
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
        self.sources.push((mount.into(), path.into(), tree));
        self
    }

    /// Another step's output, reachable at `<build>/<mount>`.
    pub fn dep(mut self, mount: impl Into<String>, artifact: &Artifact) -> Step {
        self.deps.push((mount.into(), artifact.clone()));
        self
    }

    /// A file written to `<build>/<path>` before the commands run.
    pub fn file(mut self, path: impl Into<String>, contents: impl Into<Vec<u8>>, executable: bool) -> Step {
        self.files.push((path.into(), contents.into(), executable));
        self
    }

    /// An environment variable for every command (the environment starts cleared).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Step {
        self.env.insert(key.into(), value.into());
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

    /// The hash of every input: sources by tree hash, deps by key, never by path.
    pub fn key(&self) -> String {
        let mut h = blake3::Hasher::new();
        let mut field = |tag: &str, bytes: &[u8]| {
            h.update(tag.as_bytes());
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field("step-v1", self.name.as_bytes());
        for (k, v) in &self.inputs {
            field("input", k.as_bytes());
            field("value", v.as_bytes());
        }
        for (mount, _, tree) in &self.sources {
            field("source", mount.as_bytes());
            field("tree", tree.to_string().as_bytes());
        }
        for (mount, dep) in &self.deps {
            field("dep", mount.as_bytes());
            field("key", dep.key.as_bytes());
        }
        for (path, contents, exec) in &self.files {
            field(if *exec { "xfile" } else { "file" }, path.as_bytes());
            field("contents", contents);
        }
        for (k, v) in &self.env {
            field("env", k.as_bytes());
            field("value", v.as_bytes());
        }
        for c in &self.commands {
            field("cwd", c.cwd.as_bytes());
            for a in &c.argv {
                field("arg", a.as_bytes());
            }
            for (k, v) in &c.env {
                field("cenv", k.as_bytes());
                field("value", v.as_bytes());
            }
        }
        h.finalize().to_hex()[..32].to_owned()
    }

    /// Returns the stored output, building it first when its key is absent.
    pub fn run(self, store: &Store) -> Result<Artifact> {
        self.run_with(store, |_, _| Ok(()))
    }

    /// Like [`Step::run`], with `finish(build, out)` called after the commands. Whatever the
    /// closure depends on must be among the step's inputs, files or sources.
    pub fn run_with(self, store: &Store, finish: impl FnOnce(&Path, &Path) -> Result<()>) -> Result<Artifact> {
        let key = self.key();
        let entry = format!("{}-{key}", self.name);
        let path = store.root.join(&entry);
        let log = store.root.join(format!("{entry}.log"));
        let artifact = |built, seconds| Artifact { name: self.name.clone(), key: key.clone(), path: path.clone(), log: log.clone(), built, seconds };
        if path.is_dir() {
            return Ok(artifact(false, 0.0));
        }
        // One lock per key makes concurrent runs build a step once; one per name guards the
        // build directory, whose path must not depend on the key (it ends up in debug info).
        let _key_lock = FileLock::acquire(&store.root.join("locks").join(format!("{entry}.lock")))?;
        if path.is_dir() {
            return Ok(artifact(false, 0.0));
        }
        let started = std::time::Instant::now();
        let _dir_lock = FileLock::acquire(&store.root.join("locks").join(format!("{}.build.lock", self.name)))?;
        let build = store.root.join("build").join(&self.name);
        let staging = store.root.join("tmp").join(&entry);
        for dir in [&build, &staging] {
            if dir.exists() {
                fs::remove_dir_all(dir).context(|| format!("cannot clear {}", dir.display()))?;
            }
        }
        let out = staging.join("out");
        fs::create_dir_all(&out).context(|| format!("cannot create {}", out.display()))?;
        fs::create_dir_all(&build).context(|| format!("cannot create {}", build.display()))?;
        let staged_log = staging.join("log");
        let result = self.execute(&build, &out, &staged_log).and_then(|()| {
            finish(&build, &out).map_err(|e| StepFailure::new(&self.name, e.to_string()))
        });
        let _ = fs::rename(&staged_log, &log);
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&staging);
            return Err(e.with_log(&log));
        }
        fs::rename(&out, &path).context(|| format!("cannot publish {}", path.display()))?;
        let _ = fs::remove_dir_all(&staging);
        let _ = fs::remove_dir_all(&build);
        Ok(artifact(true, started.elapsed().as_secs_f64()))
    }

    fn execute(&self, build: &Path, out: &Path, log_path: &Path) -> Result<(), StepFailure> {
        let mut log = fs::File::create(log_path).map_err(|e| StepFailure::io(&self.name, "cannot create the log", e))?;
        let expand = |s: &str| s.replace(BUILD_DIR, &build.to_string_lossy()).replace(OUT_DIR, &out.to_string_lossy());
        for (mount, src, _) in &self.sources {
            copy_tree(src, &build.join(mount)).map_err(|e| StepFailure::new(&self.name, e.to_string()))?;
        }
        for (mount, dep) in &self.deps {
            let at = build.join(mount);
            if let Some(parent) = at.parent() {
                fs::create_dir_all(parent).map_err(|e| StepFailure::io(&self.name, "cannot create a dependency mount", e))?;
            }
            symlink(&dep.path, &at).map_err(|e| StepFailure::io(&self.name, "cannot mount a dependency", e))?;
        }
        for (rel, contents, exec) in &self.files {
            let at = build.join(rel);
            if let Some(parent) = at.parent() {
                fs::create_dir_all(parent).map_err(|e| StepFailure::io(&self.name, "cannot create a directory", e))?;
            }
            let contents = match std::str::from_utf8(contents) {
                Ok(text) => expand(text).into_bytes(),
                Err(_) => contents.clone(),
            };
            fs::write(&at, contents).map_err(|e| StepFailure::io(&self.name, "cannot write a recipe file", e))?;
            if *exec {
                use std::os::unix::fs::PermissionsExt;
                let _ = fs::set_permissions(&at, fs::Permissions::from_mode(0o755));
            }
        }
        for command in &self.commands {
            let argv: Vec<String> = command.argv.iter().map(|a| expand(a)).collect();
            let shown = argv.join(" ");
            let _ = writeln!(log, "$ (cd {}; {shown})", command.cwd);
            let mut env: BTreeMap<String, String> = self.env.iter().map(|(k, v)| (k.clone(), expand(v))).collect();
            env.extend(command.env.iter().map(|(k, v)| (k.clone(), expand(v))));
            let cwd = build.join(&command.cwd);
            let log_out = log.try_clone().map_err(|e| StepFailure::io(&self.name, "cannot share the log", e))?;
            // A program given as a relative path (`./configure`) is relative to its directory.
            // Bare names are looked up on the step's own PATH, not this process's.
            let program = if argv[0].contains('/') {
                cwd.join(&argv[0])
            } else {
                which::which_in(&argv[0], env.get("PATH"), &cwd)
                    .map_err(|_| StepFailure::new(&self.name, format!("`{}` is not on the step's PATH ({})", argv[0], env.get("PATH").map_or("", |p| p.as_str()))))?
            };
            let status = duct::cmd(program, &argv[1..])
                .dir(&cwd)
                .full_env(&env)
                .stdin_null()
                .stderr_to_stdout()
                .stdout_file(log_out)
                .unchecked()
                .run();
            match status {
                Ok(output) if output.status.success() => {}
                Ok(output) => {
                    return Err(StepFailure::new(&self.name, format!("`{shown}` (in {}) failed with {}", command.cwd, output.status)))
                }
                Err(e) => return Err(StepFailure::new(&self.name, format!("cannot run `{shown}` (in {}): {e}", command.cwd))),
            }
        }
        Ok(())
    }
}

impl Step {
    /// The step as a plain bash script: the same copies, files and commands in the same
    /// cleared environment, with no store, key or lock. `dep_dir` says where each dependency's
    /// output is. Used to time the commands alone, and to show what a step does.
    pub fn script(&self, build: &Path, out: &Path, dep_dir: impl Fn(&Artifact) -> PathBuf) -> String {
        let expand = |s: &str| s.replace(BUILD_DIR, &build.to_string_lossy()).replace(OUT_DIR, &out.to_string_lossy());
        let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
        let mut sh = format!("# step {}\nrm -rf {b} {o}\nmkdir -p {b} {o}\n", self.name, b = q(&build.to_string_lossy()), o = q(&out.to_string_lossy()));
        for (mount, src, _) in &self.sources {
            let dest = q(&build.join(mount).to_string_lossy());
            sh += &format!("mkdir -p {dest}\ncp -R {}/. {dest}\n", q(&src.to_string_lossy()));
            sh += &format!("find {dest} -type f -exec touch -d @{COPY_MTIME_SECS} {{}} +\n");
        }
        for (mount, dep) in &self.deps {
            let at = build.join(mount);
            sh += &format!("mkdir -p {}\nln -s {} {}\n", q(&at.parent().unwrap().to_string_lossy()), q(&dep_dir(dep).to_string_lossy()), q(&at.to_string_lossy()));
        }
        for (rel, contents, exec) in &self.files {
            let at = q(&build.join(rel).to_string_lossy());
            sh += &format!("mkdir -p \"$(dirname {at})\"\n");
            match std::str::from_utf8(contents) {
                Ok(text) => sh += &format!("printf '%s' {} > {at}\n", q(&expand(text))),
                Err(_) => write_hex_file(&mut sh, contents, &at),
            }
            if *exec {
                sh += &format!("chmod 755 {at}\n");
            }
        }
        for c in &self.commands {
            let mut env: BTreeMap<String, String> = self.env.iter().map(|(k, v)| (k.clone(), expand(v))).collect();
            env.extend(c.env.iter().map(|(k, v)| (k.clone(), expand(v))));
            let env_words: Vec<String> = env.iter().map(|(k, v)| q(&format!("{k}={v}"))).collect();
            let argv: Vec<String> = c.argv.iter().map(|a| q(&expand(a))).collect();
            sh += &format!("(cd {} && env -i {} {})\n", q(&build.join(&c.cwd).to_string_lossy()), env_words.join(" "), argv.join(" "));
        }
        sh
    }
}

/// Binary recipe files are written from hex, which needs nothing beyond printf.
fn write_hex_file(sh: &mut String, contents: &[u8], at: &str) {
    sh.push_str(&format!(": > {at}\n"));
    for chunk in contents.chunks(4096) {
        let escaped: String = chunk.iter().map(|b| format!("\\x{b:02x}")).collect();
        sh.push_str(&format!("printf '{escaped}' >> {at}\n"));
    }
}

struct StepFailure {
    step: String,
    what: String,
}

impl StepFailure {
    fn new(step: &str, what: String) -> StepFailure {
        StepFailure { step: step.to_owned(), what }
    }

    fn io(step: &str, what: &str, e: std::io::Error) -> StepFailure {
        StepFailure::new(step, format!("{what}: {e}"))
    }

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

/// When every copied file was last modified. One time for all files means `make` finds
/// every generated file (configure, aclocal.m4, ...) up to date, whatever order an archive
/// unpacked them in, and nothing varies from one build to the next.
const COPY_MTIME_SECS: u64 = 1_000_000_000;

/// Copies a tree preserving the executable bit and symlinks; every file gets the same time.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    fs::create_dir_all(dst).context(|| format!("cannot create {}", dst.display()))?;
    for entry in fs::read_dir(src).context(|| format!("cannot list {}", src.display()))? {
        let entry = entry.context(|| format!("cannot list {}", src.display()))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let kind = entry.file_type().context(|| format!("cannot stat {}", from.display()))?;
        if kind.is_symlink() {
            let target = fs::read_link(&from).context(|| format!("cannot read {}", from.display()))?;
            symlink(&target, &to).context(|| format!("cannot create {}", to.display()))?;
        } else if kind.is_dir() {
            copy_tree(&from, &to)?;
        } else {
            fs::copy(&from, &to).context(|| format!("cannot copy {}", from.display()))?;
            let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(COPY_MTIME_SECS);
            fs::File::options()
                .write(true)
                .open(&to)
                .and_then(|f| f.set_modified(time))
                .context(|| format!("cannot set the time of {}", to.display()))?;
        }
    }
    Ok(())
}


