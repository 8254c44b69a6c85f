//! Derivations: every step's inputs on record beside its output, the key their hash, and a
//! diff that names the input that made two keys differ.

use std::fs;

use repro::derivation::{diff, explain_diff};
use repro::{CodeId, Derivation, Step, Store};

fn base(epoch: &str) -> Step {
    Step::new("base").input("SOURCE_DATE_EPOCH", epoch).env("SOURCE_DATE_EPOCH", epoch).command(".", ["sh", "-c", "echo $SOURCE_DATE_EPOCH > {out}/stamp"])
}

#[test]
fn a_derivation_round_trips_and_its_hash_is_the_key() {
    let step = base("1").code(CodeId::of("demo/src/writer.rs", b"fn write() {}")).template("cc/wrapper", "exec gcc -B{build}/cc \"$@\"\n", true);
    let drv = step.derivation();
    let text = drv.to_toml();
    assert_eq!(Derivation::from_toml(&text).unwrap(), drv);
    assert_eq!(drv.key(), step.key());
    assert!(text.contains("SOURCE_DATE_EPOCH") && text.contains("demo/src/writer.rs") && text.contains("repro/src/store/executor.rs"), "{text}");
    assert!(Derivation::from_toml("name = 3").is_err());
}

#[test]
fn one_changed_byte_of_declared_code_changes_the_key() {
    let with = |source: &[u8]| Step::new("bundle").code(CodeId::of("repro/src/archive.rs", source)).key();
    assert_ne!(with(b"fn write_tar() { 1 }"), with(b"fn write_tar() { 2 }"));
    assert_eq!(with(b"same"), with(b"same"));
}

#[test]
fn built_steps_keep_their_derivation_and_the_diff_names_the_input_behind_two_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (Store::open(tmp.path().join("a")).unwrap(), Store::open(tmp.path().join("b")).unwrap());
    let build = |store: &Store, epoch: &str| {
        let base = base(epoch).run(store).unwrap();
        let top = Step::new("top").dep("base", &base).file("note.txt", "hello", false).command(".", ["cp", "base/stamp", "{out}/stamp"]);
        top.run(store).unwrap()
    };
    let (top_a, top_b) = (build(&a, "1700000000"), build(&b, "1800000000"));
    assert_ne!(top_a.key, top_b.key);
    let (drv_a, drv_b) = (a.derivation(Some("top"), &top_a.key).unwrap(), b.derivation(None, &top_b.key).unwrap());
    assert_eq!(drv_a.key(), top_a.key, "the stored derivation hashes to the key");
    assert_eq!(fs::read_to_string(a.derivation_path("top", &top_a.key)).unwrap(), drv_a.to_toml());

    // Directly, only the dependency differs; explained, the diff descends to the cause.
    let direct = diff(&drv_a, &drv_b);
    assert_eq!(direct.len(), 1, "{direct:?}");
    assert_eq!(direct[0].field, "deps.\"base\"");
    let lookup = |name: &str, key: &str| a.derivation(Some(name), key).or_else(|_| b.derivation(Some(name), key)).ok();
    let text = explain_diff(&drv_a, &drv_b, &lookup);
    assert!(text.contains("inputs.\"SOURCE_DATE_EPOCH\": 1700000000 → 1800000000"), "{text}");
    assert!(text.contains("env.\"SOURCE_DATE_EPOCH\""), "{text}");
    assert!(!text.contains("note.txt"), "{text}");
    assert_eq!(a.latest_derivations().unwrap().len(), 2);
}

#[test]
fn a_changed_file_is_named_by_path_with_both_content_hashes() {
    let one = Step::new("lua").file("lua/app.lua", "return 1\n", false).derivation();
    let two = Step::new("lua").file("lua/app.lua", "return 2\n", false).derivation();
    let d = diff(&one, &two);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].field, "files.\"lua/app.lua\"");
    assert!(d[0].to_string().contains(&format!("blake3:{}", blake3::hash(b"return 2\n").to_hex())), "{}", d[0]);
}
