//! What a step does, as a list of [`Action`]s with every placeholder already expanded; and the
//! two ways to carry it out: running it here, or rendering it as a plain bash script. Both read
//! the same list, so the script does exactly what the store runs.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::copy::{copy_tree, COPY_MTIME_SECS};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A source tree copied into the build directory, every file at [`COPY_MTIME_SECS`].
    CopySource {
        from: PathBuf,
        to: PathBuf,
    },
    /// Another step's output, reachable through a symlink.
    MountDep {
        target: PathBuf,
        at: PathBuf,
    },
    WriteFile {
        at: PathBuf,
        contents: Vec<u8>,
        executable: bool,
    },
    /// `argv` in `cwd` with exactly `env`; a program given as a relative path is relative to
    /// `cwd`, a bare name is looked up on `env`'s PATH.
    Run {
        cwd: PathBuf,
        shown_cwd: String,
        argv: Vec<String>,
        env: BTreeMap<String, String>,
    },
}

/// Carries out `actions`, appending each command and its output to `log`. The error says
/// what failed.
pub fn execute(actions: &[Action], log: &mut fs::File) -> Result<(), String> {
    for action in actions {
        match action {
            Action::CopySource { from, to } => copy_tree(from, to).map_err(|e| e.to_string())?,
            Action::MountDep { target, at } => {
                create_parent(at)?;
                symlink(target, at).map_err(|e| format!("cannot mount {} at {}: {e}", target.display(), at.display()))?;
            }
            Action::WriteFile { at, contents, executable } => {
                create_parent(at)?;
                fs::write(at, contents).map_err(|e| format!("cannot write {}: {e}", at.display()))?;
                if *executable {
                    use std::os::unix::fs::PermissionsExt;
                    fs::set_permissions(at, fs::Permissions::from_mode(0o755)).map_err(|e| format!("cannot chmod {}: {e}", at.display()))?;
                }
            }
            Action::Run { cwd, shown_cwd, argv, env } => {
                let shown = argv.join(" ");
                let _ = writeln!(log, "$ (cd {shown_cwd}; {shown})");
                let log_out = log.try_clone().map_err(|e| format!("cannot share the log: {e}"))?;
                let program = if argv[0].contains('/') {
                    cwd.join(&argv[0])
                } else {
                    which::which_in(&argv[0], env.get("PATH"), cwd)
                        .map_err(|_| format!("`{}` is not on the step's PATH ({})", argv[0], env.get("PATH").map_or("", |p| p.as_str())))?
                };
                let status = duct::cmd(program, &argv[1..]).dir(cwd).full_env(env).stdin_null().stderr_to_stdout().stdout_file(log_out).unchecked().run();
                match status {
                    Ok(output) if output.status.success() => {}
                    Ok(output) => return Err(format!("`{shown}` (in {shown_cwd}) failed with {}", output.status)),
                    Err(e) => return Err(format!("cannot run `{shown}` (in {shown_cwd}): {e}")),
                }
            }
        }
    }
    Ok(())
}

fn create_parent(at: &Path) -> Result<(), String> {
    match at.parent() {
        Some(parent) => fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display())),
        None => Ok(()),
    }
}

/// `actions` as a bash script, after clearing `build` and `out`.
pub fn script(name: &str, build: &Path, out: &Path, actions: &[Action]) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let p = |p: &Path| q(&p.to_string_lossy());
    let mut sh = format!("# step {name}\nrm -rf {b} {o}\nmkdir -p {b} {o}\n", b = p(build), o = p(out));
    for action in actions {
        match action {
            Action::CopySource { from, to } => {
                sh += &format!("mkdir -p {dest}\ncp -R {}/. {dest}\n", p(from), dest = p(to));
                sh += &format!("find {} -type f -exec touch -d @{COPY_MTIME_SECS} {{}} +\n", p(to));
            }
            Action::MountDep { target, at } => {
                sh += &format!("mkdir -p {}\nln -s {} {}\n", p(at.parent().unwrap_or(Path::new("/"))), p(target), p(at));
            }
            Action::WriteFile { at, contents, executable } => {
                let at = p(at);
                sh += &format!("mkdir -p \"$(dirname {at})\"\n");
                match std::str::from_utf8(contents) {
                    Ok(text) => sh += &format!("printf '%s' {} > {at}\n", q(text)),
                    Err(_) => write_hex_file(&mut sh, contents, &at),
                }
                if *executable {
                    sh += &format!("chmod 755 {at}\n");
                }
            }
            Action::Run { cwd, argv, env, .. } => {
                let env_words: Vec<String> = env.iter().map(|(k, v)| q(&format!("{k}={v}"))).collect();
                let argv: Vec<String> = argv.iter().map(|a| q(a)).collect();
                sh += &format!("(cd {} && env -i {} {})\n", p(cwd), env_words.join(" "), argv.join(" "));
            }
        }
    }
    sh
}

/// Binary recipe files are written from hex, which needs nothing beyond printf.
fn write_hex_file(sh: &mut String, contents: &[u8], at: &str) {
    sh.push_str(&format!(": > {at}\n"));
    for chunk in contents.chunks(4096) {
        let escaped: String = chunk.iter().map(|b| format!("\\x{b:02x}")).collect();
        sh.push_str(&format!("printf '{escaped}' >> {at}\n"));
    }
}
