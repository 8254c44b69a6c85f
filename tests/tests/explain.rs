//! Keys explained on the real recipes: a changed `.lua` file changes exactly the bytecode, the
//! embed relink and the bundles, and the diff names the file; the code that runs inside a step
//! (the tar writer, luabc's object writer) is part of that step's key and of no other.

use pipeline::{dist, Project, Target};
use repro::derivation::explain_diff;
use repro::Derivation;

fn plan(project: Project) -> Vec<Derivation> {
    plan_for(project, &[Target::X86_64])
}

fn plan_for(project: Project, targets: &[Target]) -> Vec<Derivation> {
    dist::plan(project, targets).unwrap_or_else(|e| panic!("{e}")).into_iter().map(|(step, _)| step.derivation()).collect()
}

fn step<'a>(plan: &'a [Derivation], name: &str) -> &'a Derivation {
    plan.iter().find(|d| d.name == name).unwrap_or_else(|| panic!("no step {name}"))
}

#[test]
fn a_changed_lua_file_rekeys_only_what_uses_it_and_the_diff_names_the_file() {
    let here = Project::from_checkout().unwrap();
    here.sources(false).unwrap_or_else(|e| panic!("{e}"));
    let before = plan(Project::from_checkout().unwrap());
    let tmp = e2e::temp_dir("explain");
    here.copy_checkout(tmp.path()).unwrap();
    let lua = tmp.path().join("lualib/resty/upstream/healthcheck.lua");
    let mut text = std::fs::read_to_string(&lua).unwrap();
    text.push_str("-- one more line\n");
    std::fs::write(&lua, text).unwrap();
    let after = plan(Project::at(tmp.path().to_path_buf()).unwrap());

    let changed: Vec<&str> = before.iter().zip(&after).filter(|(a, b)| a.key() != b.key()).map(|(a, _)| a.name.as_str()).collect();
    assert_eq!(changed, ["lua-bytecode", "nginx-embed", "sbom-embed", "bundle-embed", "image-embed", "sbom-lualib", "bundle-lualib", "image-lualib"]);

    let all: Vec<Derivation> = before.iter().chain(&after).cloned().collect();
    let lookup = |name: &str, key: &str| all.iter().find(|d| d.name == name && d.key() == key).cloned();
    let text = explain_diff(step(&before, "bundle-embed"), step(&after, "bundle-embed"), &lookup);
    assert!(text.contains("step nginx-embed") && text.contains("step lua-bytecode"), "{text}");
    assert!(text.contains("files.\"lua/resty/upstream/healthcheck.lua\": blake3:"), "{text}");
    let lualib = explain_diff(step(&before, "bundle-lualib"), step(&after, "bundle-lualib"), &lookup);
    assert!(lualib.contains("files.\"bundle/lualib/resty/upstream/healthcheck.lua\""), "{lualib}");
}

#[test]
fn the_code_inside_a_step_is_in_its_key_and_in_no_step_upstream() {
    let plan = plan(Project::from_checkout().unwrap());
    let root = env!("CARGO_MANIFEST_DIR");
    let hash = |path: &str| format!("blake3:{}", blake3::hash(&std::fs::read(format!("{root}/../crates/{path}")).unwrap()).to_hex());
    for d in &plan {
        let bundle = d.name.starts_with("bundle-");
        assert_eq!(d.code.get("repro/src/archive.rs"), bundle.then(|| hash("repro/src/archive.rs")).as_ref(), "{}: the tar writer", d.name);
        assert_eq!(
            d.code.get("luabc/src/output.rs"),
            (d.name == "lua-bytecode").then(|| hash("luabc/src/output.rs")).as_ref(),
            "{}: the object writer",
            d.name
        );
        assert_eq!(d.code.get("repro/src/store/executor.rs"), Some(&hash("repro/src/store/executor.rs")), "{}: the executor", d.name);
    }
}

#[test]
fn planning_aarch64_too_keeps_every_x86_64_key_and_keys_the_cross_tools_into_each_aarch64_step() {
    let x86_64 = plan(Project::from_checkout().unwrap());
    let all = plan_for(Project::from_checkout().unwrap(), &Target::ALL);
    for d in &x86_64 {
        assert_eq!(step(&all, &d.name).key(), d.key(), "{}: the x86_64 step is keyed alike whatever else is built", d.name);
        assert!(!d.inputs.contains_key("cross tools"), "{}", d.name);
    }
    let aarch64: Vec<&Derivation> = all.iter().filter(|d| d.name.ends_with("-aarch64")).collect();
    assert_eq!(aarch64.len(), x86_64.len(), "one aarch64 step per x86_64 step");
    for name in ["toolchain", "luajit", "openssl", "pcre", "nginx", "lua-bytecode", "nginx-embed"] {
        let d = step(&all, &format!("{name}-aarch64"));
        let tools = d.inputs.get("cross tools").unwrap_or_else(|| panic!("{name}-aarch64 has no cross tools input"));
        assert!(tools.contains("aarch64-linux-gnu-gcc: ") && tools.contains("qemu-aarch64-static: "), "{name}-aarch64: {tools}");
    }
    assert!(all.iter().any(|d| d.name == "image-index-embed") && all.iter().any(|d| d.name == "image-index-lualib"));
}
