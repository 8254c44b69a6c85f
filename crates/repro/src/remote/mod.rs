//! A shared cache of step outputs and source trees on S3-compatible object storage, in the
//! manner of a Nix binary cache: `s3://BUCKET/PREFIX`.
//!
//! - `PREFIX/steps/<name>-<key>.tar.gz`: a step's output, written by the deterministic tar
//!   writer, so two honest builders of one key upload the same bytes.
//! - `PREFIX/sources/blake3-<hex>.tar.gz`: a verified source tree, as in the local source cache.
//! - `<object>.sig` beside each: a signature [`sign::Record`].
//!
//! A pull checks the record's key against the trusted keys, then the bytes against the record,
//! before anything enters the local store. A writer uploads the object, then its record; a
//! reader that finds an object without a record looks again for a moment before it calls the
//! entry unsigned. A cache that cannot be reached, or answers errors,
//! is reported once and then left alone for the rest of the run (unless it is required).
//! Nothing here prints: every outcome is an [`Event`], for the caller to show.

pub mod s3;
pub mod sign;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::archive;
use crate::error::{bail, Context, Error, Result};
use s3::{Client, Endpoint, S3Error};
use sign::{PublicKey, Record, SecretKey};

/// The directory a step's output sits under inside its cache entry.
const OUT_TOP: &str = "out";
/// gzip level of step entries: uploaded once, downloaded by every runner.
const LEVEL: u32 = 6;
/// A writer puts an object, then its record: an object seen without a record may be an upload
/// between its two requests, so the record is looked for again after each of these pauses
/// before the entry is called unsigned.
const RECORD_PAUSES: [Duration; 3] = [Duration::from_millis(50), Duration::from_millis(200), Duration::from_millis(750)];

/// How to reach and trust a cache.
#[derive(Clone)]
pub struct Config {
    /// `s3://BUCKET/PREFIX`.
    pub url: String,
    pub endpoint: Endpoint,
    /// Public keys whose signatures a pull accepts.
    pub trusted: Vec<PublicKey>,
    /// With a secret key, steps built here are pushed, signed with it.
    pub secret: Option<SecretKey>,
    /// A cache fault is an error instead of a warning and a local build.
    pub required: bool,
}

/// Something the cache did, for the caller to report.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Pulled {
        object: String,
        bytes: u64,
        seconds: f64,
    },
    Pushed {
        object: String,
        bytes: u64,
        seconds: f64,
    },
    /// The object is not in the cache.
    Miss {
        object: String,
    },
    /// The entry exists but was not accepted: it never entered the store.
    Refused {
        object: String,
        key: String,
        reason: String,
    },
    /// The cache could not be used; the run goes on without it.
    Unavailable {
        reason: String,
    },
    /// Another runner pushed other bytes for the same key: a reproducibility failure.
    Mismatch {
        object: String,
        cached: String,
        ours: String,
    },
    /// A push failed (the build itself is unaffected).
    PushFailed {
        object: String,
        reason: String,
    },
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Pulled { object, bytes, seconds } => write!(f, "pulled {object} ({bytes} bytes in {seconds:.1}s)"),
            Event::Pushed { object, bytes, seconds } => write!(f, "pushed {object} ({bytes} bytes in {seconds:.1}s)"),
            Event::Miss { object } => write!(f, "not in the cache: {object}"),
            Event::Refused { object, key, reason } => write!(f, "refused cache entry {object} (key {key}): {reason}; building it locally"),
            Event::Unavailable { reason } => write!(f, "the cache is unavailable ({reason}); building locally without it"),
            Event::Mismatch { object, cached, ours } => {
                write!(f, "REPRODUCIBILITY FAILURE: {object} in the cache has blake3:{cached}, this build produced blake3:{ours}; the cached entry is kept")
            }
            Event::PushFailed { object, reason } => write!(f, "could not push {object}: {reason}"),
        }
    }
}

/// Counts of one run, for `cache stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub hits: usize,
    pub misses: usize,
    pub pushed: usize,
    pub refused: usize,
}

/// Told of every event as it happens.
type Listener = Box<dyn Fn(&Event) + Send>;

pub struct Remote {
    client: Client,
    prefix: String,
    url: String,
    trusted: Vec<PublicKey>,
    secret: Option<SecretKey>,
    required: bool,
    /// Set after the first fault: the rest of the run does not wait on a dead cache again.
    down: AtomicBool,
    events: Mutex<Vec<Event>>,
    pushes: Mutex<Vec<std::thread::JoinHandle<()>>>,
    listener: Mutex<Option<Listener>>,
}

/// `s3://BUCKET/PREFIX` as (bucket, prefix without slashes at either end).
pub fn parse_url(url: &str) -> Result<(String, String)> {
    let Some(rest) = url.strip_prefix("s3://") else { bail!("the cache URL {url:?} is not s3://BUCKET/PREFIX") };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        bail!("the cache URL {url:?} names no bucket (expected s3://BUCKET/PREFIX)");
    }
    Ok((bucket.to_owned(), prefix.trim_matches('/').to_owned()))
}

impl Remote {
    pub fn open(config: Config) -> Result<Arc<Remote>> {
        let (bucket, prefix) = parse_url(&config.url)?;
        let client = Client::new(&config.endpoint, &bucket).map_err(Error::new)?;
        Ok(Arc::new(Remote {
            client,
            prefix,
            url: config.url,
            trusted: config.trusted,
            secret: config.secret,
            required: config.required,
            down: AtomicBool::new(false),
            events: Mutex::new(Vec::new()),
            pushes: Mutex::new(Vec::new()),
            listener: Mutex::new(None),
        }))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn can_push(&self) -> bool {
        self.secret.is_some()
    }

    /// Called with every event as it happens (progress lines), besides [`Remote::events`].
    pub fn on_event(&self, listener: impl Fn(&Event) + Send + 'static) {
        *self.listener.lock().unwrap() = Some(Box::new(listener));
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for event in self.events() {
            match event {
                Event::Pulled { .. } => counts.hits += 1,
                Event::Miss { .. } => counts.misses += 1,
                Event::Pushed { .. } => counts.pushed += 1,
                Event::Refused { .. } => counts.refused += 1,
                _ => {}
            }
        }
        counts
    }

    fn emit(&self, event: Event) {
        if let Some(listener) = self.listener.lock().unwrap().as_ref() {
            listener(&event);
        }
        self.events.lock().unwrap().push(event);
    }

    fn object(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_owned()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    /// A fault: an error when the cache is required, else one event and no more tries.
    fn fault(&self, reason: String) -> Result<()> {
        if self.required {
            bail!("the cache {} is required (--cache-required) but {reason}", self.url);
        }
        if !self.down.swap(true, Ordering::SeqCst) {
            self.emit(Event::Unavailable { reason });
        }
        Ok(())
    }

    /// The record of `object` if it appears within [`RECORD_PAUSES`] (a concurrent upload
    /// finishing), `None` if it does not.
    fn late_record(&self, object: &str) -> std::result::Result<Option<Vec<u8>>, S3Error> {
        for pause in RECORD_PAUSES {
            std::thread::sleep(pause);
            match self.client.get(&format!("{object}.sig")) {
                Ok(bytes) => return Ok(Some(bytes)),
                Err(S3Error::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Fetches `rel` and its record and verifies both; `None` when absent, refused or the cache
    /// is down (each reported).
    fn fetch_verified(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        if self.down.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let object = self.object(rel);
        let record_text = match self.client.get(&format!("{object}.sig")) {
            Ok(bytes) => bytes,
            Err(S3Error::NotFound) => match self.client.get(&object) {
                Ok(_) => match self.late_record(&object) {
                    Ok(Some(bytes)) => bytes,
                    // An entry with no record is refused, not missed: someone wrote it unsigned.
                    Ok(None) => {
                        self.emit(Event::Refused { object, key: "none".into(), reason: "it is unsigned (no .sig record beside it)".into() });
                        return Ok(None);
                    }
                    Err(e) => return self.fault(format!("GET {object}.sig: {e}")).map(|()| None),
                },
                Err(S3Error::NotFound) => {
                    self.emit(Event::Miss { object });
                    return Ok(None);
                }
                Err(e) => return self.fault(format!("GET {object}: {e}")).map(|()| None),
            },
            Err(e) => return self.fault(format!("GET {object}.sig: {e}")).map(|()| None),
        };
        let record = match Record::parse(&String::from_utf8_lossy(&record_text)) {
            Ok(r) => r,
            Err(reason) => {
                self.emit(Event::Refused { object, key: "unknown".into(), reason });
                return Ok(None);
            }
        };
        let started = Instant::now();
        let bytes = match self.client.get(&object) {
            Ok(b) => b,
            Err(S3Error::NotFound) => {
                self.emit(Event::Refused { object, key: record.key, reason: "its signature record has no object beside it".into() });
                return Ok(None);
            }
            Err(e) => return self.fault(format!("GET {object}: {e}")).map(|()| None),
        };
        if let Err(reason) = record.verify(rel, &bytes, &self.trusted) {
            self.emit(Event::Refused { object, key: record.key, reason });
            return Ok(None);
        }
        self.emit(Event::Pulled { object, bytes: bytes.len() as u64, seconds: started.elapsed().as_secs_f64() });
        Ok(Some(bytes))
    }

    fn step_rel(name: &str, key: &str) -> String {
        format!("steps/{name}-{key}.tar.gz")
    }

    fn source_rel(tree_hex: &str) -> String {
        format!("sources/blake3-{tree_hex}.tar.gz")
    }

    /// Pulls the output of step `name` with `key` into `out` (which must not exist), verified.
    /// `false` when the cache cannot give it (the caller builds).
    pub fn pull_step(&self, name: &str, key: &str, out: &Path) -> Result<bool> {
        let rel = Self::step_rel(name, key);
        let Some(bytes) = self.fetch_verified(&rel)? else { return Ok(false) };
        self.unpack_into(&rel, &bytes, out, OUT_TOP)
    }

    /// Writes the verified source entry for the tree `tree_hex` to `entry` (a local source
    /// cache file), `false` when the cache cannot give it.
    pub fn pull_source(&self, tree_hex: &str, entry: &Path) -> Result<bool> {
        let rel = Self::source_rel(tree_hex);
        let Some(bytes) = self.fetch_verified(&rel)? else { return Ok(false) };
        let tmp = entry.with_extension(format!("pull{}", std::process::id()));
        fs::write(&tmp, &bytes).context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, entry).context(|| format!("cannot write {}", entry.display()))?;
        Ok(true)
    }

    fn unpack_into(&self, rel: &str, bytes: &[u8], out: &Path, top: &str) -> Result<bool> {
        let scratch = out.with_file_name(format!(".pull-{}", std::process::id()));
        let _ = fs::remove_dir_all(&scratch);
        fs::create_dir_all(&scratch).context(|| format!("cannot create {}", scratch.display()))?;
        let file = scratch.join("entry.tar.gz");
        fs::write(&file, bytes).context(|| format!("cannot write {}", file.display()))?;
        let unpacked = scratch.join("unpacked");
        let result = archive::unpack(&file, &unpacked).and_then(|_| {
            let root = unpacked.join(top);
            if !root.is_dir() {
                bail!("it holds no {top}/ directory");
            }
            fs::rename(&root, out).context(|| format!("cannot move the pulled output to {}", out.display()))
        });
        let _ = fs::remove_dir_all(&scratch);
        match result {
            Ok(()) => Ok(true),
            Err(e) => {
                let object = self.object(rel);
                self.emit(Event::Refused { object, key: "-".into(), reason: format!("it does not unpack: {e}") });
                Ok(false)
            }
        }
    }

    /// Uploads the output `out` of step `name`/`key` on a background thread ([`Remote::finish`]
    /// waits for it); the archive is written there too, off the build's path. `fresh` says the
    /// output was just built here: its bytes are then compared with any entry already cached;
    /// an output that was already in the store is only uploaded when the cache lacks it. Does
    /// nothing without a secret key.
    pub fn push_step(self: &Arc<Self>, name: &str, key: &str, out: &Path, scratch: &Path, fresh: bool) {
        if self.secret.is_none() || self.down.load(Ordering::SeqCst) {
            return;
        }
        let rel = Self::step_rel(name, key);
        let file = scratch.join(format!("{name}-{key}.push-{}.tar.gz", std::process::id()));
        let (me, out, scratch) = (Arc::clone(self), out.to_path_buf(), scratch.to_path_buf());
        let handle = std::thread::spawn(move || {
            if !fresh && me.cached_already(&rel) {
                return;
            }
            let archived = fs::create_dir_all(&scratch)
                .map_err(|e| e.to_string())
                .and_then(|()| archive::write_tar_gz_level(&out, OUT_TOP, &file, 0, LEVEL).map_err(|e| e.to_string()));
            let result = archived.and_then(|()| fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display())));
            let _ = fs::remove_file(&file);
            match result {
                Ok(bytes) => me.upload(&rel, &bytes),
                Err(reason) => me.emit(Event::PushFailed { object: me.object(&rel), reason }),
            }
        });
        self.pushes.lock().unwrap().push(handle);
    }

    /// Uploads a local source cache entry in the background.
    pub fn push_source(self: &Arc<Self>, tree_hex: &str, entry: &Path) {
        if self.secret.is_none() || self.down.load(Ordering::SeqCst) {
            return;
        }
        self.push_file(Self::source_rel(tree_hex), entry.to_path_buf());
    }

    fn push_file(self: &Arc<Self>, rel: String, file: PathBuf) {
        let me = Arc::clone(self);
        let handle = std::thread::spawn(move || {
            if me.cached_already(&rel) {
                return;
            }
            match fs::read(&file) {
                Ok(bytes) => me.upload(&rel, &bytes),
                Err(e) => me.emit(Event::PushFailed { object: me.object(&rel), reason: format!("cannot read {}: {e}", file.display()) }),
            }
        });
        self.pushes.lock().unwrap().push(handle);
    }

    /// Whether `rel` needs no upload: it is cached, or the cache cannot be used (reported).
    fn cached_already(&self, rel: &str) -> bool {
        let record = format!("{}.sig", self.object(rel));
        match self.client.get(&record) {
            Ok(_) => true,
            Err(S3Error::NotFound) => false,
            Err(e) => {
                let _ = self.fault(format!("GET {record}: {e}"));
                true
            }
        }
    }

    /// First writer wins: an existing record with the same hash means done; another hash is a
    /// reproducibility failure, reported, and the cached entry stays.
    fn upload(&self, rel: &str, bytes: &[u8]) {
        let Some(secret) = &self.secret else { return };
        let object = self.object(rel);
        let record = Record::sign(rel, bytes, secret);
        match self.client.get(&format!("{object}.sig")) {
            Ok(existing) => {
                if let Ok(existing) = Record::parse(&String::from_utf8_lossy(&existing)) {
                    if existing.blake3 != record.blake3 {
                        self.emit(Event::Mismatch { object, cached: existing.blake3, ours: record.blake3 });
                    }
                    return;
                }
            }
            Err(S3Error::NotFound) => {}
            Err(e) => {
                let _ = self.fault(format!("GET {object}.sig: {e}"));
                return;
            }
        }
        let started = Instant::now();
        // The object first: a record never points at a missing object for long.
        let result = self.client.put(&object, bytes).and_then(|()| self.client.put(&format!("{object}.sig"), record.to_text().as_bytes()));
        match result {
            Ok(()) => self.emit(Event::Pushed { object, bytes: bytes.len() as u64, seconds: started.elapsed().as_secs_f64() }),
            Err(e) => self.emit(Event::PushFailed { object, reason: e.to_string() }),
        }
    }

    /// Waits for every background push.
    pub fn finish(&self) {
        let handles: Vec<_> = std::mem::take(&mut *self.pushes.lock().unwrap());
        for handle in handles {
            let _ = handle.join();
        }
    }

    /// Every entry (object, bytes) the cache holds under its prefix, records left out.
    pub fn list(&self) -> Result<Vec<(String, u64)>> {
        let prefix = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let all = self.client.list(&prefix).map_err(|e| Error::new(format!("cannot list {}: {e}", self.url)))?;
        Ok(all.into_iter().filter(|(k, _)| !k.ends_with(".sig")).collect())
    }

    /// The raw bytes of a step entry (verified), for comparisons.
    pub fn step_entry(&self, name: &str, key: &str) -> Result<Option<Vec<u8>>> {
        self.fetch_verified(&Self::step_rel(name, key))
    }

    /// The deterministic archive a push of `out` would upload.
    pub fn entry_bytes(out: &Path, scratch: &Path) -> Result<Vec<u8>> {
        fs::create_dir_all(scratch).context(|| format!("cannot create {}", scratch.display()))?;
        let file = scratch.join(format!("entry-{}.tar.gz", std::process::id()));
        archive::write_tar_gz_level(out, OUT_TOP, &file, 0, LEVEL)?;
        let bytes = fs::read(&file).context(|| format!("cannot read {}", file.display()));
        let _ = fs::remove_file(&file);
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_urls_name_a_bucket_and_a_prefix() {
        assert_eq!(parse_url("s3://b/some/prefix/").unwrap(), ("b".into(), "some/prefix".into()));
        assert_eq!(parse_url("s3://b").unwrap(), ("b".into(), String::new()));
        assert!(parse_url("http://b/x").unwrap_err().to_string().contains("s3://BUCKET/PREFIX"));
        assert!(parse_url("s3:///x").is_err());
    }
}
