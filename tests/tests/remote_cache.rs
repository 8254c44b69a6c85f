//! The shared, signed remote cache against a real 3-node Garage cluster on 127.0.0.1
//! (replication factor 3): a warm cache serves an empty store without compiler or mirror, and
//! every fault (nodes down, tampered or untrusted entries, wrong credentials, racing or
//! disagreeing writers) ends in a correct build and a clear report.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use e2e::garage::{Garage, BUCKET};
use e2e::temp_dir;
use pipeline::{dist, Project};
use repro::remote::s3::{Client, Endpoint};
use repro::remote::sign::{PublicKey, SecretKey};
use repro::remote::{Config, Event};
use repro::{Artifact, Remote, Step, Store};

fn cache(endpoint: Endpoint, prefix: &str, trusted: &[PublicKey], secret: Option<&SecretKey>, required: bool) -> Arc<Remote> {
    Remote::open(Config { url: format!("s3://{BUCKET}/{prefix}"), endpoint, trusted: trusted.to_vec(), secret: secret.cloned(), required }).unwrap()
}

/// A small step whose output depends on `tag` only.
fn probe(tag: &str) -> Step {
    Step::new("cache-probe").input("tag", tag).file("in.txt", format!("probe {tag}\n"), false).command(".", ["cp", "in.txt", "{out}/in.txt"])
}

/// A step whose output differs on every build: what a non-reproducible recipe looks like.
fn unreproducible(tag: &str) -> Step {
    Step::new("cache-random").input("tag", tag).command(".", ["dd", "if=/dev/urandom", "of={out}/random", "bs=32", "count=1", "status=none"])
}

/// Runs `step` in a fresh store under `dir` with `remote`, waiting for its pushes.
fn run_in(step: Step, dir: &Path, remote: &Arc<Remote>) -> repro::Result<Artifact> {
    let store = Store::open(dir).unwrap().with_remote(remote.clone());
    let result = step.run(&store);
    remote.finish();
    result
}

fn object_of(prefix: &str, step: &Step) -> String {
    format!("{prefix}/steps/{}-{}.tar.gz", step.name(), step.key())
}

fn refusals(remote: &Remote) -> Vec<Event> {
    remote.events().into_iter().filter(|e| matches!(e, Event::Refused { .. })).collect()
}

fn unavailable(remote: &Remote) -> Vec<Event> {
    remote.events().into_iter().filter(|e| matches!(e, Event::Unavailable { .. })).collect()
}

fn clean(remote: &Remote) {
    let bad: Vec<String> =
        remote.events().iter().filter(|e| !matches!(e, Event::Pulled { .. } | Event::Pushed { .. } | Event::Miss { .. })).map(ToString::to_string).collect();
    assert!(bad.is_empty(), "unexpected cache events: {bad:#?}");
}

#[test]
fn an_empty_store_with_a_warm_cache_builds_no_step_and_needs_no_mirror() {
    let garage = Garage::start();
    let key = SecretKey::generate().unwrap();
    let trusted = [key.public()];
    let scratch = temp_dir("remote-dist");

    // Store A: the machine's shared store (warm, or built once here); its steps and sources
    // are pushed.
    let writer = cache(garage.endpoint(0), "dist", &trusted, Some(&key), false);
    let a = Project::from_checkout().unwrap().with_cache(writer.clone());
    let dist_a = dist::build(&a, &dist::Options { offline: false, out_dir: Some(scratch.path().join("dist-a")), ..Default::default() })
        .unwrap_or_else(|e| panic!("{e}"));
    writer.finish();
    clean(&writer);
    assert!(writer.list().unwrap().iter().any(|(k, _)| k.contains("/steps/")), "store A pushed no step");

    // Two empty stores B and C at once, on fresh checkouts without vendor/, whose only Debian
    // mirror is empty: everything must come from the cache.
    let runs: Vec<_> = ["b", "c"]
        .into_iter()
        .map(|name| {
            let root = scratch.path().join(format!("checkout-{name}"));
            a.copy_checkout(&root).unwrap();
            fs::remove_dir_all(root.join("vendor")).unwrap();
            let apt = e2e::empty_apt_repository(&scratch.path().join(format!("apt-{name}")));
            let reader = cache(garage.endpoint(if name == "b" { 1 } else { 2 }), "dist", &trusted, None, true);
            let project = Project::with_store(root, scratch.path().join(format!("store-{name}")))
                .unwrap()
                .with_apt_sources(scratch.path().join(format!("apt-state-{name}")), vec![apt])
                .with_cache(reader.clone());
            let out = scratch.path().join(format!("dist-{name}"));
            std::thread::spawn(move || {
                let built = dist::build(&project, &dist::Options { offline: false, out_dir: Some(out), ..Default::default() });
                reader.finish();
                (built.map_err(|e| e.to_string()), project.fetcher().commands(), reader)
            })
        })
        .collect();
    for run in runs {
        let (built, commands, reader) = run.join().unwrap();
        let dist_b = built.unwrap_or_else(|e| panic!("dist on an empty store with a warm cache failed:\n{e}"));
        clean(&reader);
        assert_eq!(commands, Vec::<String>::new(), "no mirror may be asked");
        for step in &dist_b.steps {
            assert!(step.pulled && !step.built, "step {} was {} instead of pulled", step.name, if step.built { "built" } else { "skipped" });
        }
        for (ours, theirs) in dist_b.bundles.iter().zip(&dist_a.bundles) {
            assert_eq!(fs::read(&ours.tarball).unwrap(), fs::read(&theirs.tarball).unwrap(), "{} differs from store A's", ours.tarball.display());
        }
        assert_eq!(fs::read(&dist_b.sha256sums).unwrap(), fs::read(&dist_a.sha256sums).unwrap());
    }

    // The whole cluster down: the warm local store still gives a dist, with one warning.
    drop(garage);
    let dead = cache(Endpoint { url: Some(format!("http://127.0.0.1:{}", e2e::free_port())), ..Endpoint::from_env() }, "dist", &trusted, Some(&key), false);
    let offline = Project::from_checkout().unwrap().with_cache(dead.clone());
    dist::build(&offline, &dist::Options { offline: true, out_dir: Some(scratch.path().join("dist-down")), ..Default::default() })
        .unwrap_or_else(|e| panic!("{e}"));
    dead.finish();
    assert_eq!(unavailable(&dead).len(), 1, "one warning: {:#?}", dead.events());
}

#[test]
fn faults_never_break_a_build_and_are_reported() {
    let mut garage = Garage::start();
    let key = SecretKey::generate().unwrap();
    let stranger = SecretKey::generate().unwrap();
    let trusted = [key.public()];
    let dir = temp_dir("remote-faults");
    let store = |name: &str| dir.path().join(name);
    let s3 = Client::new(&garage.endpoint(0), BUCKET).unwrap();

    // Round trip: pushed from one store, pulled into another, verified.
    let writer = cache(garage.endpoint(0), "faults", &trusted, Some(&key), false);
    assert!(run_in(probe("round"), &store("w1"), &writer).unwrap().built);
    clean(&writer);
    let reader = cache(garage.endpoint(1), "faults", &trusted, None, true);
    let pulled = run_in(probe("round"), &store("r1"), &reader).unwrap();
    assert!(pulled.pulled && !pulled.built);
    assert_eq!(fs::read_to_string(pulled.path.join("in.txt")).unwrap(), "probe round\n");
    assert!(store("r1").join(format!("cache-probe-{}.drv", pulled.key)).is_file(), "a pulled output has its derivation beside it");

    // Overwritten through the S3 API with other bytes, then truncated.
    run_in(probe("tamper"), &store("w2"), &writer).unwrap();
    let object = object_of("faults", &probe("tamper"));
    let original = s3.get(&object).unwrap();
    for (bytes, reason) in [
        (b"other bytes of the same length?".repeat(original.len() / 31 + 1)[..original.len()].to_vec(), "altered"),
        (original[..original.len() / 2].to_vec(), "truncated"),
    ] {
        s3.put(&object, &bytes).unwrap();
        let reader = cache(garage.endpoint(0), "faults", &trusted, None, false);
        let local = run_in(probe("tamper"), &store(&format!("r-{reason}")), &reader).unwrap();
        assert!(local.built && !local.pulled, "a {reason} entry must not be used");
        let refused = refusals(&reader);
        assert_eq!(refused.len(), 1, "{refused:#?}");
        let text = refused[0].to_string();
        for part in [object.as_str(), reason, &key.public().to_string()] {
            assert!(text.contains(part), "the refusal {text:?} names {part:?}");
        }
    }

    // Signed by a key nobody trusts; and not signed at all.
    let untrusted_writer = cache(garage.endpoint(0), "faults", &[stranger.public()], Some(&stranger), false);
    run_in(probe("stranger"), &store("w3"), &untrusted_writer).unwrap();
    let reader = cache(garage.endpoint(0), "faults", &trusted, None, false);
    assert!(run_in(probe("stranger"), &store("r3"), &reader).unwrap().built);
    let text = refusals(&reader).first().map(ToString::to_string).unwrap_or_default();
    assert!(text.contains("not a trusted key") && text.contains(&stranger.public().to_string()) && text.contains("cache-probe-"), "{text}");
    s3.put(&object_of("faults", &probe("unsigned")), b"no signature").unwrap();
    let reader = cache(garage.endpoint(0), "faults", &trusted, None, false);
    assert!(run_in(probe("unsigned"), &store("r4"), &reader).unwrap().built);
    assert!(refusals(&reader).first().map(ToString::to_string).unwrap_or_default().contains("unsigned"));

    // An object whose record lands a moment later (a writer between its two uploads) is
    // pulled once the record is there, not refused as unsigned.
    run_in(probe("late"), &store("w-late"), &writer).unwrap();
    let (late_object, late_copy) = (object_of("faults", &probe("late")), object_of("faults-late", &probe("late")));
    s3.put(&late_copy, &s3.get(&late_object).unwrap()).unwrap();
    let record = s3.get(&format!("{late_object}.sig")).unwrap();
    let endpoint = garage.endpoint(1);
    let late_writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        Client::new(&endpoint, BUCKET).unwrap().put(&format!("{late_copy}.sig"), &record).unwrap();
    });
    let reader = cache(garage.endpoint(0), "faults-late", &trusted, None, false);
    let late = run_in(probe("late"), &store("r-late"), &reader).unwrap();
    late_writer.join().unwrap();
    assert!(late.pulled && !late.built, "{:#?}", reader.events());
    clean(&reader);

    // Wrong credentials: one warning and a local build; an error when the cache is required.
    let wrong = Endpoint { secret_key: "0".repeat(64), ..garage.endpoint(0) };
    let reader = cache(wrong.clone(), "faults", &trusted, None, false);
    assert!(run_in(probe("round"), &store("r5"), &reader).unwrap().built);
    let warned = unavailable(&reader);
    assert_eq!(warned.len(), 1, "{:#?}", reader.events());
    assert!(warned[0].to_string().contains("HTTP 403"), "{}", warned[0]);
    let required = cache(wrong, "faults", &trusted, None, true);
    let err = run_in(probe("round"), &store("r6"), &required).unwrap_err().to_string();
    assert!(err.contains("--cache-required") && err.contains("HTTP 403"), "{err}");

    // Two writers of one key at once both succeed (each builds, or pulls what the other has
    // finished pushing); the entry then serves a reader.
    let racers: Vec<_> = ["x", "y"]
        .into_iter()
        .map(|name| {
            let remote = cache(garage.endpoint(if name == "x" { 0 } else { 1 }), "faults", &trusted, Some(&key), false);
            let dir = store(&format!("race-{name}"));
            std::thread::spawn(move || (run_in(probe("race"), &dir, &remote).map(|a| a.built), remote))
        })
        .collect();
    for racer in racers {
        let (result, remote) = racer.join().unwrap();
        result.unwrap();
        clean(&remote);
    }
    let reader = cache(garage.endpoint(2), "faults", &trusted, None, true);
    assert!(run_in(probe("race"), &store("race-reader"), &reader).unwrap().pulled);

    // A second writer whose bytes differ for the same key: reported with both hashes, the
    // first entry kept. (It trusts no key, so it cannot pull the first entry and builds, as a
    // runner racing the first one would.)
    let first = run_in(unreproducible("r"), &store("u1"), &writer).unwrap();
    let second_writer = cache(garage.endpoint(1), "faults", &[], Some(&key), false);
    let second = run_in(unreproducible("r"), &store("u2"), &second_writer).unwrap();
    assert!(second.built);
    let mismatch = second_writer.events().into_iter().find(|e| matches!(e, Event::Mismatch { .. })).expect("the mismatch is reported");
    let Event::Mismatch { cached, ours, .. } = &mismatch else { unreachable!() };
    assert_ne!(cached, ours);
    assert!(mismatch.to_string().contains(cached.as_str()) && mismatch.to_string().contains(ours.as_str()));
    let reader = cache(garage.endpoint(2), "faults", &trusted, None, true);
    let kept = run_in(unreproducible("r"), &store("u3"), &reader).unwrap();
    assert_eq!(fs::read(kept.path.join("random")).unwrap(), fs::read(first.path.join("random")).unwrap(), "the first entry is kept");

    // One node killed: pushes and pulls still work (2 of 3 replicas answer).
    garage.kill(2);
    let writer = cache(garage.endpoint(0), "faults", &trusted, Some(&key), true);
    assert!(run_in(probe("degraded"), &store("d1"), &writer).unwrap().built);
    clean(&writer);
    let reader = cache(garage.endpoint(1), "faults", &trusted, None, true);
    assert!(run_in(probe("degraded"), &store("d2"), &reader).unwrap().pulled);

    // Every node down: local builds with one warning for the whole run, or a clear error.
    garage.kill_all();
    let down = cache(garage.endpoint(0), "faults", &trusted, Some(&key), false);
    assert!(run_in(probe("down-1"), &store("x1"), &down).unwrap().built);
    assert!(run_in(probe("down-2"), &store("x1"), &down).unwrap().built);
    assert_eq!(unavailable(&down).len(), 1, "{:#?}", down.events());
    let required = cache(garage.endpoint(0), "faults", &trusted, None, true);
    let err = run_in(probe("down-3"), &store("x2"), &required).unwrap_err().to_string();
    assert!(err.contains("--cache-required") && err.contains("unreachable"), "{err}");
}
