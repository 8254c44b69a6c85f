//! The shared cache: the `--cache` flags every building task takes, and `cargo xtask cache
//! keygen|verify|stats`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pipeline::{dist, Project, CACHE_ENV};
use repro::remote::s3::Endpoint;
use repro::remote::sign::{self, Record, SecretKey};
use repro::remote::{Config, Event};
use repro::{Error, Remote, Result};

/// The writer's secret key file, when `--cache-key` is not given.
pub const SECRET_KEY_ENV: &str = "STATIC_NGINX_CACHE_KEY";
/// Where the counts of the last run with a cache are kept, in the store.
const STATS_FILE: &str = "cache-stats.toml";

#[derive(clap::Args, Clone, Debug, Default)]
pub struct CacheArgs {
    /// A shared cache, s3://BUCKET/PREFIX (default: $STATIC_NGINX_CACHE). Credentials, region
    /// and endpoint come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and
    /// AWS_ENDPOINT_URL (path-style addressing when an endpoint is given).
    #[arg(long, value_name = "URL")]
    cache: Option<String>,
    /// Fail when the cache cannot be used, instead of warning once and building locally.
    #[arg(long)]
    cache_required: bool,
    /// The secret key that signs pushed entries (default: $STATIC_NGINX_CACHE_KEY); without
    /// one, the cache is only read.
    #[arg(long, value_name = "FILE")]
    cache_key: Option<PathBuf>,
    /// The public keys to trust (default: lockfiles/cache-keys.toml).
    #[arg(long, value_name = "FILE")]
    cache_trusted: Option<PathBuf>,
}

impl CacheArgs {
    pub fn is_set(&self) -> bool {
        self.url().is_some()
    }

    fn url(&self) -> Option<String> {
        self.cache.clone().or_else(|| std::env::var(CACHE_ENV).ok()).filter(|u| !u.is_empty())
    }

    pub fn secret_key(&self) -> Result<Option<SecretKey>> {
        let path = self.cache_key.clone().or_else(|| std::env::var_os(SECRET_KEY_ENV).filter(|v| !v.is_empty()).map(PathBuf::from));
        path.map(|p| SecretKey::read(&p)).transpose()
    }

    /// The project with the cache attached (when one is configured), and the cache.
    pub fn attach(&self, project: Project) -> Result<(Project, Option<Arc<Remote>>)> {
        let Some(url) = self.url() else {
            if self.cache_required {
                return Err(Error::new(format!("--cache-required needs a cache: give --cache s3://BUCKET/PREFIX or set {CACHE_ENV}")));
            }
            return Ok((project, None));
        };
        let trusted_path = self.cache_trusted.clone().unwrap_or_else(|| project.trusted_keys_path());
        let config = Config {
            url,
            endpoint: Endpoint::from_env(),
            trusted: sign::read_trusted(&trusted_path)?,
            secret: self.secret_key()?,
            required: self.cache_required,
        };
        let remote = Remote::open(config)?;
        remote.on_event(|event| match event {
            Event::Pulled { .. } | Event::Pushed { .. } => eprintln!("cache: {event}"),
            Event::Miss { .. } => {}
            _ => eprintln!("warning: cache: {event}"),
        });
        Ok((project.with_cache(remote.clone()), Some(remote)))
    }

    /// Runs `task` on this checkout's project with the cache attached, then waits for the
    /// cache's background pushes, whether `task` succeeded or not.
    pub fn run_with_project<T>(&self, task: impl FnOnce(&Project) -> Result<T>) -> Result<T> {
        let (project, remote) = self.attach(Project::from_checkout()?)?;
        let result = task(&project);
        finish(&project, remote.as_ref())?;
        result
    }
}

/// Waits for the background pushes and records the run's counts in the store.
pub fn finish(project: &Project, remote: Option<&Arc<Remote>>) -> Result<()> {
    let Some(remote) = remote else { return Ok(()) };
    remote.finish();
    let c = remote.counts();
    let path = project.store.root().join(STATS_FILE);
    let mut stats = toml_edit::DocumentMut::new();
    stats["cache"] = toml_edit::value(remote.url());
    for (name, count) in [("hits", c.hits), ("misses", c.misses), ("pushed", c.pushed), ("refused", c.refused)] {
        stats[name] = toml_edit::value(i64::try_from(count).unwrap_or(i64::MAX));
    }
    let text = stats.to_string();
    fs::write(&path, text).map_err(|e| Error::with_source(format!("cannot write {}", path.display()), e))?;
    let mismatches: Vec<String> = remote.events().iter().filter(|e| matches!(e, Event::Mismatch { .. })).map(ToString::to_string).collect();
    if !mismatches.is_empty() {
        eprintln!("warning: {} reproducibility failure(s) against the cache:\n  {}", mismatches.len(), mismatches.join("\n  "));
    }
    Ok(())
}

/// How a step's output got into the store, in one word.
pub fn outcome(step: &repro::Artifact) -> &'static str {
    if step.pulled {
        "pulled"
    } else if step.built {
        "built"
    } else {
        "skipped"
    }
}

/// Signs `file` (SHA256SUMS) with the writer's key into `<file>.sig`, when a key is given.
pub fn sign_file(args: &CacheArgs, file: &Path) -> Result<Option<PathBuf>> {
    let Some(key) = args.secret_key()? else { return Ok(None) };
    let bytes = fs::read(file).map_err(|e| Error::with_source(format!("cannot read {}", file.display()), e))?;
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let sig = file.with_file_name(format!("{name}.sig"));
    fs::write(&sig, Record::sign(&name, &bytes, &key).to_text()).map_err(|e| Error::with_source(format!("cannot write {}", sig.display()), e))?;
    Ok(Some(sig))
}

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Write a new signing key pair: the secret to FILE (mode 0600), the public key printed.
    Keygen {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Rebuild in a scratch store every step of the current pins and compare its bytes with
    /// the cache's entry.
    Verify {
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Entries and bytes in the cache, and the hits and misses of the last run.
    Stats {
        #[command(flatten)]
        cache: CacheArgs,
    },
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Keygen { out } => keygen(&out),
        Command::Verify { cache } => verify(&cache),
        Command::Stats { cache } => stats(&cache),
    }
}

fn keygen(out: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = SecretKey::generate()?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| Error::with_source(format!("cannot create {} (an existing key is never overwritten)", out.display()), e))?;
    file.write_all(key.to_file_text().as_bytes()).map_err(|e| Error::with_source(format!("cannot write {}", out.display()), e))?;
    println!("secret key: {}", out.display());
    println!("public key: {}", key.public());
    println!("readers trust it by adding the public key to `trusted` in lockfiles/cache-keys.toml");
    Ok(())
}

fn open(cache: &CacheArgs) -> Result<(Project, Arc<Remote>)> {
    let (project, remote) = cache.attach(Project::from_checkout()?)?;
    let remote = remote.ok_or_else(|| Error::new(format!("no cache given: pass --cache s3://BUCKET/PREFIX or set {CACHE_ENV}")))?;
    Ok((project, remote))
}

fn stats(cache: &CacheArgs) -> Result<()> {
    let (project, remote) = open(cache)?;
    let entries = remote.list()?;
    let (steps, sources): (Vec<_>, Vec<_>) = entries.iter().partition(|(k, _)| k.contains("steps/"));
    let bytes = |v: &[&(String, u64)]| v.iter().map(|(_, b)| b).sum::<u64>();
    println!("{}", remote.url());
    println!("  step entries:   {:>5}  {:>12} bytes", steps.len(), bytes(&steps));
    println!("  source entries: {:>5}  {:>12} bytes", sources.len(), bytes(&sources));
    match fs::read_to_string(project.store.root().join(STATS_FILE)) {
        Ok(text) => {
            println!("last run with a cache on this store:");
            for line in text.lines() {
                println!("  {line}");
            }
        }
        Err(_) => println!("no run with a cache on this store yet"),
    }
    Ok(())
}

fn verify(cache: &CacheArgs) -> Result<()> {
    let (project, remote) = open(cache)?;
    let scratch = tempfile_dir(&project)?;
    // A scratch store without the cache: every step is built here, from the pins.
    let local = Project::with_store(project.root.clone(), scratch.join("store"))?;
    let built = dist::build(&local, &dist::Options { offline: false, out_dir: Some(scratch.join("dist")), ..Default::default() })?;
    println!("{:<20} {:<16} {:<16} {:<16} verdict", "step", "key", "cache", "local");
    let mut different = 0;
    for step in &built.steps {
        let ours = blake3::hash(&Remote::entry_bytes(&step.path, &scratch.join("entries"))?).to_hex().to_string();
        let cached = remote.step_entry(&step.name, &step.key)?.map(|b| blake3::hash(&b).to_hex().to_string());
        let verdict = match &cached {
            None => "not in the cache",
            Some(c) if *c == ours => "identical",
            Some(_) => {
                different += 1;
                "DIFFERENT"
            }
        };
        println!(
            "{:<20} {:<16} {:<16} {:<16} {verdict}",
            step.name,
            &step.key[..16.min(step.key.len())],
            cached.as_deref().map_or("-", |c| &c[..16]),
            &ours[..16]
        );
    }
    let _ = fs::remove_dir_all(&scratch);
    if different > 0 {
        return Err(Error::new(format!("{different} step(s) rebuilt to other bytes than the cache holds: the build is not reproducible there")));
    }
    Ok(())
}

/// `dist` on a fresh runner: a copy of the checkout without vendor/, an empty store, the warm
/// cache; the xtask is already built, so this is the wall time a CI job waits.
pub fn bench(cache: &CacheArgs, cold: Option<f64>) -> Result<()> {
    let here = Project::from_checkout()?;
    let scratch = here.root.join("target/bench-cache");
    let _ = fs::remove_dir_all(&scratch);
    let checkout = scratch.join("checkout");
    here.copy_checkout(&checkout)?;
    fs::remove_dir_all(checkout.join("vendor")).map_err(|e| Error::with_source("cannot empty vendor/ of the copy", e))?;
    let (project, remote) = cache.attach(Project::with_store(checkout, scratch.join("store"))?)?;
    let started = std::time::Instant::now();
    let built = dist::build(&project, &dist::Options { offline: false, out_dir: Some(scratch.join("dist")), ..Default::default() });
    finish(&project, remote.as_ref())?;
    let built = built?;
    let secs = started.elapsed().as_secs_f64();
    let local: Vec<&str> = built.steps.iter().filter(|s| !s.pulled).map(|s| s.name.as_str()).collect();
    println!("{:<44} {:>8}", "dist", "wall");
    println!("{:<44} {:>7.1}s", "fresh checkout, empty store, warm cache", secs);
    if let Some(cold) = cold {
        println!("{:<44} {:>7.1}s", "cold local build (given)", cold);
    }
    println!("steps not pulled: {}", if local.is_empty() { "none".to_owned() } else { local.join(", ") });
    println!("mirror commands: {}", project.fetcher().commands().len());
    let _ = fs::remove_dir_all(&scratch);
    Ok(())
}

fn tempfile_dir(project: &Project) -> Result<PathBuf> {
    let dir = project.root.join("target").join(format!("cache-verify-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| Error::with_source(format!("cannot create {}", dir.display()), e))?;
    Ok(dir)
}
