//! The step store: skip what is built, rebuild exactly what changed, build once under
//! concurrency, never publish an interrupted step.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use repro::{Step, Store};

/// A step that appends a line to `counter` (outside the store) each time it really runs.
fn counted(name: &str, counter: &Path, input: &str) -> Step {
    Step::new(name)
        .input("value", input)
        .file("in.txt", input.as_bytes().to_vec(), false)
        .command(".", ["sh", "-c", &format!("echo {name} >> {}", counter.display())])
        .command(".", ["cp", "in.txt", "{out}/out.txt"])
}

fn runs(counter: &Path) -> Vec<String> {
    fs::read_to_string(counter).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[test]
fn second_run_skips_and_one_changed_input_rebuilds_exactly_its_dependents() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let counter = tmp.path().join("runs");
    let build = |a: &str, c: &str| {
        let a = counted("a", &counter, a).run(&store).unwrap();
        let b = counted("b", &counter, "b").dep("a", &a).command(".", ["cp", "a/out.txt", "{out}/from-a.txt"]).run(&store).unwrap();
        let c = counted("c", &counter, c).run(&store).unwrap();
        (a, b, c)
    };
    let (a, b, _) = build("1", "1");
    assert_eq!(runs(&counter), ["a", "b", "c"]);
    assert_eq!(fs::read_to_string(b.path.join("from-a.txt")).unwrap(), "1");

    let (a2, b2, c2) = build("1", "1");
    assert!(!a2.built && !b2.built && !c2.built, "nothing rebuilt");
    assert_eq!(runs(&counter).len(), 3);

    build("1", "2");
    assert_eq!(runs(&counter), ["a", "b", "c", "c"], "only c");

    let (a3, b3, _) = build("2", "2");
    assert_eq!(runs(&counter), ["a", "b", "c", "c", "a", "b"], "a and its dependent b");
    assert_ne!(a3.key, a.key);
    assert_ne!(b3.key, b.key);
    assert_eq!(fs::read_to_string(b3.path.join("from-a.txt")).unwrap(), "2");
}

#[test]
fn keys_ignore_where_sources_live() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in ["one", "two"] {
        fs::create_dir_all(tmp.path().join(dir)).unwrap();
        fs::write(tmp.path().join(dir).join("f"), "same").unwrap();
    }
    let tree = repro::TreeHash::of_dir(&tmp.path().join("one")).unwrap();
    let key = |dir: &str| Step::new("s").source("src", tmp.path().join(dir), tree).command(".", ["true"]).key();
    assert_eq!(key("one"), key("two"));
}

#[test]
fn a_source_edited_after_planning_fails_the_step_and_publishes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let src = tmp.path().join("module");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("module.c"), "int version = 1;\n").unwrap();
    let planned = repro::TreeHash::of_dir(&src).unwrap();
    let step = Step::new("module").source("module", &src, planned).command(".", ["cp", "module/module.c", "{out}/"]);
    // Edited between computing the key (the tree hash above) and running the step.
    fs::write(src.join("module.c"), "int version = 2;\n").unwrap();
    let key = step.key();
    let err = step.run(&store).unwrap_err().to_string();
    for needle in ["source `module`", "changed after the build was planned", &planned.to_string(), "run the build again"] {
        assert!(err.contains(needle), "{needle:?} in {err}");
    }
    assert!(!store.root().join(format!("module-{key}")).exists(), "nothing published under the planned key");
    // Planned again from the tree as it is now, it builds.
    let now = repro::TreeHash::of_dir(&src).unwrap();
    let built = Step::new("module").source("module", &src, now).command(".", ["cp", "module/module.c", "{out}/"]).run(&store).unwrap();
    assert_eq!(fs::read_to_string(built.path.join("module.c")).unwrap(), "int version = 2;\n");
}

#[test]
fn a_failing_step_publishes_nothing_and_reports_command_log_tail_and_path() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let err = Step::new("broken")
        .command(".", ["sh", "-c", "echo compiling widget.c; echo 'widget.c:3: error: boom' >&2; exit 3"])
        .run(&store)
        .unwrap_err()
        .to_string();
    for needle in ["build step `broken` failed", "exit 3", "widget.c:3: error: boom", ".log"] {
        assert!(err.contains(needle), "{needle:?} in {err}");
    }
    let entries: Vec<_> = fs::read_dir(store.root()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(entries.iter().all(|e| !e.starts_with("broken-") || e.ends_with(".log")), "no output published: {entries:?}");
}

#[test]
fn the_environment_is_cleared_and_fixed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    std::env::set_var("REPRO_LEAK_CHECK", "leaked");
    let out = Step::new("env").env("SOURCE_DATE_EPOCH", "1").command(".", ["sh", "-c", "env | sort > {out}/env"]).run(&store).unwrap();
    let env = fs::read_to_string(out.path.join("env")).unwrap();
    assert!(!env.contains("REPRO_LEAK_CHECK"), "{env}");
    assert!(env.contains("LC_ALL=C") && env.contains("TZ=UTC") && env.contains("SOURCE_DATE_EPOCH=1"), "{env}");
}

#[test]
fn two_concurrent_runs_build_once_and_both_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(tmp.path().join("store")).unwrap());
    let counter = Arc::new(tmp.path().join("runs"));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (store, counter) = (store.clone(), counter.clone());
            std::thread::spawn(move || counted("slow", &counter, "x").command(".", ["sleep", "0.5"]).run(&store).unwrap())
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(runs(&counter), ["slow"], "built once");
    assert_eq!(results.iter().filter(|a| a.built).count(), 1);
    assert_eq!(results[0].path, results[1].path);
}

/// The step the interruption test kills half way: it waits for `go` before finishing.
fn resumable(go: &Path) -> Step {
    let script = format!("echo partial > {{out}}/half; while [ ! -e {} ]; do sleep 0.05; done; echo whole > {{out}}/whole", go.display());
    Step::new("interrupted").command(".", ["sh", "-c", &script])
}

/// Not a test on its own: the process that `an_interrupted_step_...` kills mid-step.
#[test]
#[ignore]
fn interrupted_child() {
    let (Some(root), Some(go)) = (std::env::var_os("REPRO_INTERRUPT_STORE"), std::env::var_os("REPRO_INTERRUPT_GO")) else { return };
    let store = Store::open(root).unwrap();
    resumable(Path::new(&go)).run(&store).unwrap();
}

#[test]
fn an_interrupted_step_leaves_no_entry_and_the_next_run_redoes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let go = tmp.path().join("go");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "interrupted_child", "--nocapture"])
        .env("REPRO_INTERRUPT_STORE", &root)
        .env("REPRO_INTERRUPT_GO", &go)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !walk(&root).iter().any(|p| p.ends_with("half")) {
        assert!(std::time::Instant::now() < deadline, "the child never started its step");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The step's shell outlives the killed process; end it too, as a reboot would.
    let _ = std::process::Command::new("pkill").arg("-f").arg(go.display().to_string()).status();

    let key = resumable(&go).key();
    let entry = root.join(format!("interrupted-{key}"));
    assert!(!entry.exists(), "no store entry after the interruption");

    fs::write(&go, "").unwrap();
    let redo = resumable(&go).run(&Store::open(&root).unwrap()).unwrap();
    assert!(redo.built, "the next run builds it again");
    assert_eq!(redo.path, entry);
    assert_eq!(fs::read_to_string(entry.join("whole")).unwrap(), "whole\n");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}
