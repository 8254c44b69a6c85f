//! Running a `luajit` executable: probing it and compiling sources with `-b`.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::header::{BytecodeHeader, RuntimeAbi};
use crate::{Error, ModuleName};

/// A `luajit` executable used as the bytecode compiler.
///
/// Children run with a cleared environment: only `LUA_PATH` is set, and only if
/// [`Luajit::lua_path`] was given (a LuaJIT that is not installed needs it to find
/// `jit/bcsave.lua`, which implements `-b`).
#[derive(Clone, Debug)]
pub struct Luajit {
    exe: PathBuf,
    lua_path: Option<OsString>,
    runner: Option<PathBuf>,
}

/// Facts about a `luajit` executable, see [`Luajit::probe`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LuajitInfo {
    /// `jit.version`, e.g. `LuaJIT 2.1.0-beta3`.
    pub version: String,
    /// `jit.arch`, e.g. `x64`.
    pub arch: String,
    /// `jit.os`, e.g. `Linux`.
    pub os: String,
    /// What bytecode made by (and loadable into) this LuaJIT looks like.
    pub abi: RuntimeAbi,
    /// `luajit -b` accepts `-F name` (override the chunk name); LuaJIT 2.1 since 2022.
    pub has_chunk_name_flag: bool,
    /// `luajit -b` accepts `-d` (deterministic dumps); LuaJIT 2.1 since 2023.
    pub has_deterministic_flag: bool,
    /// Dumps of the same source are byte-identical across processes (with `-d` if
    /// available). False for LuaJIT 2.1 builds with a random string hash seed
    /// (the default) and no `-d`: table constants then come out in varying order.
    pub deterministic: bool,
}

/// One source file to compile.
#[derive(Clone, Debug)]
pub struct CompileInput<'a> {
    pub module: &'a ModuleName,
    /// The Lua source file.
    pub source: &'a Path,
    /// Relative path recorded as chunk name, as `@<chunk_path>`.
    pub chunk_path: &'a str,
    /// Strip debug info (`-s`) or keep it (`-g`).
    pub strip: bool,
}

const PROBE_SCRIPT: &str = r#"local k = {}
for i = 1, 32 do k[i] = ("k%02d=%d"):format(i, i) end
local d = string.dump(assert(loadstring("return {" .. table.concat(k, ",") .. "}")), true)
io.write(jit.version, "\n", jit.arch, "\n", jit.os, "\n", pcall(require, "ffi") and "ffi" or "noffi", "\n",
  (d:gsub(".", function(c) return ("%02x"):format(c:byte()) end)), "\n")"#;

impl Luajit {
    /// `exe` is a path to the executable, or a bare name looked up on `PATH`.
    pub fn new(exe: impl Into<PathBuf>) -> Luajit {
        Luajit { exe: exe.into(), lua_path: None, runner: None }
    }

    /// Runs the executable through `program` (an emulator such as `qemu-aarch64-static`),
    /// for a luajit built for another machine.
    pub fn runner(mut self, program: impl Into<PathBuf>) -> Luajit {
        self.runner = Some(program.into());
        self
    }

    /// Where LuaJIT's `jit/*.lua` library is: either a `LUA_PATH` value (anything
    /// containing `?`, passed verbatim), or a directory holding `jit/bcsave.lua`
    /// (LuaJIT's `src/`), or that `jit/` directory itself.
    pub fn lua_path(mut self, value: impl Into<OsString>) -> Luajit {
        self.lua_path = Some(value.into());
        self
    }

    /// The executable as given.
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    fn resolve_exe(&self) -> Result<PathBuf, Error> {
        let hint = "set Build::luajit (or LUABC_LUAJIT for the example) to the luajit executable";
        if self.exe.components().count() == 1 && !self.exe.is_file() {
            if let Some(path) = std::env::var_os("PATH") {
                for dir in std::env::split_paths(&path) {
                    let cand = dir.join(&self.exe);
                    if cand.is_file() {
                        return Ok(cand);
                    }
                }
            }
            return Err(Error::Config(format!("luajit executable {:?} not found on PATH; {hint}", self.exe)));
        }
        if !self.exe.is_file() {
            return Err(Error::Config(format!("luajit executable {} does not exist; {hint}", self.exe.display())));
        }
        Ok(self.exe.clone())
    }

    fn resolve_lua_path(&self) -> Result<Option<OsString>, Error> {
        let Some(v) = &self.lua_path else { return Ok(None) };
        if v.as_encoded_bytes().contains(&b'?') {
            return Ok(Some(v.clone()));
        }
        let dir = Path::new(v);
        let parent = if dir.join("jit/bcsave.lua").is_file() {
            dir.to_path_buf()
        } else if dir.join("bcsave.lua").is_file() && dir.file_name() == Some(OsStr::new("jit")) {
            dir.parent().unwrap_or(Path::new(".")).to_path_buf()
        } else {
            return Err(Error::Config(format!(
                "LuaJIT library path {} holds neither jit/bcsave.lua nor bcsave.lua; give LuaJIT's `src` directory, its `jit` directory or a LUA_PATH pattern with `?`",
                dir.display()
            )));
        };
        let parent = parent.canonicalize().map_err(|e| Error::io("resolve the LuaJIT library directory", &parent, e))?;
        let mut p = parent.into_os_string();
        p.push("/?.lua");
        Ok(Some(p))
    }

    fn command(&self) -> Result<Command, Error> {
        let exe = self.resolve_exe()?;
        let mut cmd = match &self.runner {
            Some(runner) => {
                let mut cmd = Command::new(runner);
                cmd.arg(exe);
                cmd
            }
            None => Command::new(exe),
        };
        cmd.env_clear();
        if let Some(p) = self.resolve_lua_path()? {
            cmd.env("LUA_PATH", p);
        }
        Ok(cmd)
    }

    fn run(&self, mut cmd: Command) -> Result<Output, Error> {
        cmd.output().map_err(|e| Error::Luajit { command: describe(&cmd), detail: format!("cannot run {}: {e}", self.exe.display()) })
    }

    /// Runs the executable a few times to find its version, bytecode ABI and which
    /// `-b` options it supports, and whether its dumps are reproducible.
    pub fn probe(&self) -> Result<LuajitInfo, Error> {
        let mut dumps = Vec::new();
        let mut fields = Vec::new();
        for _ in 0..2 {
            let mut cmd = self.command()?;
            cmd.arg("-e").arg(PROBE_SCRIPT);
            let out = self.run_ok(cmd)?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let f: Vec<String> = text.lines().map(str::to_string).collect();
            if f.len() != 5 {
                return Err(Error::Luajit {
                    command: format!("{} -e <probe>", self.exe.display()),
                    detail: format!("unexpected probe output {text:?}; is this LuaJIT?"),
                });
            }
            dumps.push(
                decode_hex(&f[4])
                    .ok_or_else(|| Error::Luajit { command: format!("{} -e <probe>", self.exe.display()), detail: "the probe printed invalid hex".into() })?,
            );
            fields = f;
        }
        let header = BytecodeHeader::parse(&dumps[0])?;
        let abi = RuntimeAbi { ffi: fields[3] == "ffi", ..header.abi() };

        // `luajit -b` without arguments prints bcsave's usage text and exits 1.
        let mut cmd = self.command()?;
        cmd.arg("-b");
        let command = describe(&cmd);
        let out = self.run(cmd)?;
        let usage = String::from_utf8_lossy(&out.stderr).into_owned();
        if !usage.contains("-b[options] input output") {
            return Err(Error::Luajit {
                command,
                detail: format!(
                    "`luajit -b` does not work, probably because jit/bcsave.lua is not found; pass LuaJIT's `src` directory (which holds jit/) as lua_path (LUABC_LUA_PATH for the example). stderr: {}",
                    usage.trim()
                ),
            });
        }
        let has_deterministic_flag = usage.lines().any(|l| l.trim_start().starts_with("-d "));
        Ok(LuajitInfo {
            version: fields[0].clone(),
            arch: fields[1].clone(),
            os: fields[2].clone(),
            abi,
            has_chunk_name_flag: usage.lines().any(|l| l.trim_start().starts_with("-F ")),
            has_deterministic_flag,
            deterministic: has_deterministic_flag || dumps[0] == dumps[1],
        })
    }

    fn run_ok(&self, cmd: Command) -> Result<Output, Error> {
        let command = describe(&cmd);
        let out = self.run(cmd)?;
        if !out.status.success() {
            return Err(Error::Luajit { command, detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()) });
        }
        Ok(out)
    }

    /// Compiles one source with `luajit -b -t raw` and returns the bytecode.
    ///
    /// The chunk name is `@<chunk_path>`: with `-F` if `info` says it is supported,
    /// otherwise by copying the source to `<work_dir>/<chunk_path>` and compiling it
    /// from `work_dir` under that relative name (the bytes are the same).
    pub fn compile(&self, info: &LuajitInfo, input: &CompileInput<'_>, work_dir: &Path) -> Result<Vec<u8>, Error> {
        let src = std::fs::read(input.source).map_err(|e| Error::io("read Lua source", input.source, e))?;
        if src.first() == Some(&0x1b) {
            return Err(Error::Config(format!("{} is already bytecode; give the Lua source instead", input.source.display())));
        }
        let mut cmd = self.command()?;
        cmd.args(["-b", "-t", "raw", if input.strip { "-s" } else { "-g" }]);
        if info.has_deterministic_flag {
            cmd.arg("-d");
        }
        if info.has_chunk_name_flag {
            let source = std::path::absolute(input.source).map_err(|e| Error::io("resolve", input.source, e))?;
            cmd.arg("-F").arg(input.chunk_path).arg(source).arg("-");
        } else {
            let staged = work_dir.join(input.chunk_path);
            if let Some(dir) = staged.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
            }
            std::fs::write(&staged, &src).map_err(|e| Error::io("write staged source", &staged, e))?;
            cmd.current_dir(work_dir).arg(input.chunk_path).arg("-");
        }
        let command = describe(&cmd);
        let out = self.run(cmd)?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            if let Some((line, message)) = parse_syntax_error(&stderr, input.chunk_path) {
                return Err(Error::Syntax { module: input.module.to_string(), file: input.source.to_path_buf(), line, message });
            }
            return Err(Error::Luajit { command, detail: format!("compiling {}: {}: {}", input.source.display(), out.status, stderr.trim()) });
        }
        let bc = out.stdout;
        let header = BytecodeHeader::parse(&bc)
            .map_err(|e| Error::Luajit { command: command.clone(), detail: format!("output for {} is not bytecode: {e}", input.source.display()) })?;
        let expected = format!("@{}", input.chunk_path);
        if header.stripped() != input.strip || (!input.strip && header.chunk_name.as_deref() != Some(expected.as_bytes())) {
            return Err(Error::Luajit {
                command,
                detail: format!(
                    "unexpected bytecode header for {}: stripped={}, chunk name {:?} (expected stripped={}, {expected:?})",
                    input.source.display(),
                    header.stripped(),
                    header.chunk_name.as_deref().map(String::from_utf8_lossy),
                    input.strip
                ),
            });
        }
        Ok(bc)
    }
}

/// Parses `luajit: <chunk_path>:<line>: <message>` from luajit's stderr.
pub(crate) fn parse_syntax_error(stderr: &str, chunk_path: &str) -> Option<(u32, String)> {
    let needle = format!("{chunk_path}:");
    for line in stderr.lines() {
        if let Some(i) = line.find(&needle) {
            let rest = &line[i + needle.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if let (Ok(n), Some(msg)) = (digits.parse(), rest[digits.len()..].strip_prefix(':')) {
                return Some((n, msg.trim().to_string()));
            }
        }
    }
    None
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn describe(cmd: &Command) -> String {
    let mut s = String::new();
    if let Some(dir) = cmd.get_current_dir() {
        s.push_str(&format!("(cd {} && ", dir.display()));
    }
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.contains(char::is_whitespace) || a.is_empty() {
            s.push_str(&format!(" '{}'", a.replace('\'', "'\\''")));
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    if cmd.get_current_dir().is_some() {
        s.push(')');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_error_parsing() {
        let e = "luajit: resty/bad.lua:3: unexpected symbol near 'local'\n";
        assert_eq!(parse_syntax_error(e, "resty/bad.lua"), Some((3, "unexpected symbol near 'local'".to_string())));
        let e = "luajit: a.lua:40: 'end' expected (to close 'function' at line 1) near '<eof>'";
        assert_eq!(parse_syntax_error(e, "a.lua").unwrap().0, 40);
        assert_eq!(parse_syntax_error("luajit: cannot open x.lua", "x.lua"), None);
        assert_eq!(parse_syntax_error("module 'jit.bcsave' not found", "x.lua"), None);
    }

    #[test]
    fn hex() {
        assert_eq!(decode_hex("1b4c4a02"), Some(vec![0x1b, 0x4c, 0x4a, 2]));
        assert_eq!(decode_hex("1b4"), None);
        assert_eq!(decode_hex("zz"), None);
    }

    #[test]
    fn missing_executable_is_a_clear_error() {
        let e = Luajit::new("/nonexistent/luajit").probe().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/luajit") && e.contains("does not exist"), "{e}");
        let e = Luajit::new("luabc-no-such-luajit").probe().unwrap_err().to_string();
        assert!(e.contains("not found on PATH"), "{e}");
    }

    #[test]
    fn bad_lua_path_is_a_clear_error() {
        let dir = std::env::temp_dir();
        let e = Luajit::new("/bin/sh").lua_path(&dir).probe().unwrap_err().to_string();
        assert!(e.contains("jit/bcsave.lua"), "{e}");
    }
}
