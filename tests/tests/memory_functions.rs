//! memcpy, memmove, memset and memcmp in every static link are the toolchain's vector versions
//! (toolchain/string/memory.c), not musl's string-instruction assembly or byte loop, and they
//! are correct at every size, alignment and overlap a caller can give them.

use std::path::Path;
use std::process::Command;

use e2e::{dist, temp_dir, toolchain};

/// The disassembly of one function of an unstripped binary.
fn disassemble(binary: &Path, function: &str) -> String {
    let out = Command::new("objdump").arg("-d").arg(format!("--disassemble={function}")).arg(binary).output().expect("run objdump");
    assert!(out.status.success(), "objdump {} failed: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains(&format!("<{function}>:")), "{function} is not defined in {}", binary.display());
    text
}

#[test]
fn nginx_copies_fills_and_compares_with_vector_instructions_not_musls() {
    let compiled = dist().steps.iter().find(|s| s.name == "nginx").expect("the nginx compile step");
    let binary = compiled.path.join("tree/nginx/objs/nginx");
    for (function, vector_instructions) in
        [("memcpy", &["movdqu", "movups"][..]), ("memmove", &["movdqu", "movups"]), ("memset", &["movdqu", "movups"]), ("memcmp", &["pcmpeqb"])]
    {
        let code = disassemble(&binary, function);
        assert!(
            vector_instructions.iter().any(|m| code.contains(m)),
            "{function} in nginx has no {vector_instructions:?}, so it is not toolchain/string/memory.c's:\n{code}"
        );
        assert!(!code.contains("rep movs"), "{function} in nginx copies with a string instruction:\n{code}");
    }
    // musl's memcpy.s defines this beside memcpy, and its memmove.s calls it: had either
    // member of libc.a been linked, it would be here.
    let symbols = Command::new("nm").arg("--defined-only").arg(&binary).output().expect("run nm");
    assert!(!String::from_utf8_lossy(&symbols.stdout).lines().any(|l| l.ends_with(" __memcpy_fwd")), "musl's memcpy is linked into nginx");
}

#[test]
fn memory_functions_match_a_byte_by_byte_reference_at_every_size_alignment_and_overlap() {
    // Compiled and linked by the toolchain like any program: the functions under test are the
    // ones its startfile brings, exactly as nginx gets them.
    let tc = toolchain();
    let program = pipeline::toolchain::step_with_toolchain("e2e-memory-functions", &tc.project, &tc.toolchain)
        .file("check.c", include_str!("../support/memory_check.c"), false)
        .command(".", ["x86_64-linux-musl-gcc", "-O2", "-fno-builtin", "-fno-tree-loop-distribute-patterns", "check.c", "-o", "{out}/check"])
        .run(&tc.project.store)
        .unwrap_or_else(|e| panic!("{e}"));
    let run_dir = temp_dir("memory-functions");
    let out = Command::new(program.path.join("check")).current_dir(run_dir.path()).output().expect("run the memory function check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let cases: u64 = stdout.trim().strip_prefix("ok ").and_then(|r| r.strip_suffix(" cases")).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(cases > 1_000_000, "the check ran too few cases: {stdout}");
}
