//! nginx with ngx_devel_kit, lua-nginx-module and every module under `modules/`, linked
//! static-PIE against musl.
//!
//! Both strategies share one compile ([`compile`]); the embed strategy only relinks the same
//! objects with the Lua bytecode library ([`link_embedded`]), so a changed `.lua` file costs a
//! link, not a build. Configure arguments use paths relative to nginx's source directory, so
//! `nginx -V` names no build directory.

use std::fs;

use repro::store::out_path;
use repro::{Artifact, Result, TreeHash};

use crate::project::{Project, RunIn, Sources};
use crate::target::Target;
use crate::toolchain::Toolchain;
use crate::{luajit, openssl, pcre, toolchain};

/// The built libraries nginx compiles and links against.
pub struct Libraries<'a> {
    pub toolchain: &'a Toolchain,
    pub luajit: &'a Artifact,
    pub openssl: &'a Artifact,
    pub pcre: &'a Artifact,
}

/// Where the nginx steps mount their dependencies and the response file, relative to the build
/// directory (nginx's configure runs in `nginx/`, a sibling of each).
const LUAJIT: &str = "luajit";
const OPENSSL: &str = "openssl";
const PCRE: &str = "pcre";

/// Extra linker arguments read through a response file: empty for the plain binary, the
/// bytecode archive for the embed strategy. Being a file, it keeps both binaries' configure
/// arguments identical.
const LINK_EXTRA: &str = "link/extra.args";
/// The bytecode step's output, in the embed relink.
const BYTECODE: &str = "bytecode";

/// The configure arguments, shared by both strategies. A cross build names the machine
/// (`--crossbuild`), which nginx otherwise takes from `uname -m` for its CPU-specific choices.
pub fn configure_args(project_modules: &[String], target: Target) -> Vec<String> {
    let mut args: Vec<String> = [
        "--with-threads",
        "--with-file-aio",
        "--with-http_ssl_module",
        "--with-http_v2_module",
        "--with-http_realip_module",
        "--with-http_stub_status_module",
        "--with-http_gzip_static_module",
        // Workers run as nobody:nogroup when started as root (the group `nobody` is not
        // universal; `nogroup` is Debian's and Alpine's).
        "--user=nobody",
        "--group=nogroup",
        "--with-pcre",
        "--with-pcre-jit",
        "--without-pcre2",
        "--with-zlib=../zlib",
        "--with-zlib-opt=-O2",
        "--add-module=../ngx_devel_kit",
        "--add-module=../lua-nginx-module",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let at = args.iter().position(|a| a == "--add-module=../ngx_devel_kit").expect("the module list");
    args.splice(
        at..at,
        [
            format!("--with-cc-opt=-O2 -fstack-protector-strong -I{} -I{}", openssl::include_dir(OPENSSL), pcre::include_dir(PCRE)),
            format!("--with-ld-opt=-L{} -L{} @../{LINK_EXTRA}", openssl::lib_dir(OPENSSL), pcre::lib_dir(PCRE)),
        ],
    );
    // After lua-nginx-module: they include its API header.
    args.extend(project_modules.iter().map(|m| format!("--add-module=../modules/{m}")));
    if target != Target::X86_64 {
        args.insert(0, format!("--crossbuild=Linux::{}", target.machine()));
    }
    args
}

/// nginx's configure runs the programs it compiles (type sizes, endianness, feature tests such
/// as lua-nginx-module's). For a cross target these edits to its scripts run them through the
/// target's runner explicitly, the only places `auto/` executes `$NGX_AUTOTEST`.
fn run_autotests_with(runner: &str) -> Vec<String> {
    let mut sed = vec!["sed".to_owned(), "-i".to_owned()];
    for (from, to) in [
        ("/bin/sh -c \\$NGX_AUTOTEST", format!("/bin/sh -c \"{runner} $NGX_AUTOTEST\"")),
        ("`\\$NGX_AUTOTEST`", format!("`{runner} $NGX_AUTOTEST`")),
        ("if \\$NGX_AUTOTEST >", format!("if {runner} $NGX_AUTOTEST >")),
    ] {
        sed.extend(["-e".to_owned(), format!("s|{from}|{to}|g")]);
    }
    sed.extend(["auto/feature", "auto/types/sizeof", "auto/endianness"].map(String::from));
    sed
}

/// The project's C modules (directories under `modules/` holding a `config`), sorted.
pub fn project_modules(project: &Project) -> Result<Vec<(String, TreeHash)>> {
    let dir = project.root.join("modules");
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(&dir) {
        for entry in entries.flatten() {
            if entry.path().join("config").is_file() {
                out.push((entry.file_name().to_string_lossy().into_owned(), TreeHash::of_dir(&entry.path())?));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Configures and compiles nginx; the output holds the whole build tree (for relinking) and
/// `sbin/nginx`, the binary without embedded Lua.
pub fn compile(project: &Project, sources: &Sources, libraries: &Libraries) -> Result<Artifact> {
    let modules = project_modules(project)?;
    let names: Vec<String> = modules.iter().map(|(n, _)| n.clone()).collect();
    let mut step = base_step("nginx", project, libraries).file(LINK_EXTRA, "", false);
    for pin in ["nginx", "lua-nginx-module", "ngx_devel_kit", "zlib"] {
        let s = sources.get(pin)?;
        step = step.source(pin, s.path(), s.pin.tree);
    }
    for (name, tree) in &modules {
        step = step.source(format!("modules/{name}"), project.root.join("modules").join(name), *tree);
    }
    let target = libraries.toolchain.target;
    if let Some(runner) = target.runner() {
        step = step.command("nginx", run_autotests_with(runner));
    }
    let mut configure = vec!["./configure".to_string()];
    configure.extend(configure_args(&names, target));
    step.command("nginx", configure)
        .command("nginx", ["make", "-j2"])
        .command(".", ["mkdir".to_owned(), "-p".to_owned(), out_path(TREE), out_path("sbin")])
        .command(".", ["cp", "-a", "nginx", "lua-nginx-module", "ngx_devel_kit", "zlib", "modules", &out_path(TREE)])
        .command(".", ["cp".to_owned(), "nginx/objs/nginx".to_owned(), out_path(BINARY)])
        .command(".", [target.binutil("strip"), "--strip-all".to_owned(), out_path(BINARY)])
        .run_in(project)
}

/// In a compile or relink step's output: the binary.
pub const BINARY: &str = "sbin/nginx";
/// In the compile step's output: the whole build tree, for relinking.
const TREE: &str = "tree";

/// Relinks the compiled objects with the Lua bytecode archive.
pub fn link_embedded(project: &Project, compiled: &Artifact, libraries: &Libraries, bytecode: &Artifact) -> Result<Artifact> {
    let library = format!("lib{}.a", crate::bytecode::ARCHIVE);
    let args = format!("-Wl,--whole-archive ../{BYTECODE}/{library} -Wl,--no-whole-archive\n");
    base_step("nginx-embed", project, libraries)
        .dep("compiled", compiled)
        .dep(BYTECODE, bytecode)
        .file(LINK_EXTRA, args, false)
        // `cp -a` keeps the objects' times, so make relinks without recompiling anything.
        .command(".", ["cp", "-a", &format!("compiled/{TREE}/."), "."])
        .command(".", ["rm", "-f", "nginx/objs/nginx"])
        .command("nginx", ["make", "-f", "objs/Makefile", "objs/nginx"])
        .command(".", ["mkdir".to_owned(), "-p".to_owned(), out_path("sbin")])
        .command(".", ["cp".to_owned(), "nginx/objs/nginx".to_owned(), out_path(BINARY)])
        .command(".", [libraries.toolchain.target.binutil("strip"), "--strip-all".to_owned(), out_path(BINARY)])
        .run_in(project)
}

fn base_step(name: &str, project: &Project, libraries: &Libraries) -> repro::Step {
    let luajit = luajit::Layout::mounted(LUAJIT);
    toolchain::step_with_toolchain(name, project, libraries.toolchain)
        .dep(LUAJIT, libraries.luajit)
        .dep(OPENSSL, libraries.openssl)
        .dep(PCRE, libraries.pcre)
        .env("LUAJIT_LIB", luajit.lib_dir().display().to_string())
        .env("LUAJIT_INC", luajit.include_dir().display().to_string())
}
