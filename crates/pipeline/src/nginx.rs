//! nginx with ngx_devel_kit, lua-nginx-module and every module under `modules/`, linked
//! static-PIE against musl.
//!
//! Both strategies share one compile ([`compile`]); the embed strategy only relinks the same
//! objects with the Lua bytecode library ([`link_embedded`]), so a changed `.lua` file costs a
//! link, not a build. Configure arguments use paths relative to nginx's source directory, so
//! `nginx -V` names no build directory.

use std::fs;

use repro::{Artifact, Result, TreeHash};

use crate::project::{Project, RunIn, Sources};
use crate::{luajit, openssl, toolchain};

/// Extra linker arguments read through a response file: empty for the plain binary, the
/// bytecode archive for the embed strategy. Being a file, it keeps both binaries' configure
/// arguments identical.
const LINK_EXTRA: &str = "link/extra.args";

/// The configure arguments, shared by both strategies.
pub fn configure_args(project_modules: &[String]) -> Vec<String> {
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
        "--with-cc-opt=-O2 -fstack-protector-strong -I../openssl/usr/local/ssl/include -I../pcre/usr/local/include",
        "--with-ld-opt=-L../openssl/usr/local/ssl/lib -L../pcre/usr/local/lib @../link/extra.args",
        "--add-module=../ngx_devel_kit",
        "--add-module=../lua-nginx-module",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // After lua-nginx-module: they include its API header.
    args.extend(project_modules.iter().map(|m| format!("--add-module=../modules/{m}")));
    args
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
pub fn compile(project: &Project, sources: &Sources, toolchain: &Artifact, luajit: &Artifact, openssl: &Artifact, pcre: &Artifact) -> Result<Artifact> {
    let modules = project_modules(project)?;
    let names: Vec<String> = modules.iter().map(|(n, _)| n.clone()).collect();
    let mut step = base_step("nginx", project, toolchain, luajit, openssl, pcre).file(LINK_EXTRA, "", false);
    for pin in ["nginx", "lua-nginx-module", "ngx_devel_kit", "zlib"] {
        let s = sources.get(pin)?;
        step = step.source(pin, s.path(), s.pin.tree);
    }
    for (name, tree) in &modules {
        step = step.source(format!("modules/{name}"), project.root.join("modules").join(name), *tree);
    }
    let mut configure = vec!["./configure".to_string()];
    configure.extend(configure_args(&names));
    step.command("nginx", configure)
        .command("nginx", ["make", "-j2"])
        .command(".", ["mkdir", "-p", "{out}/tree", "{out}/sbin"])
        .command(".", ["cp", "-a", "nginx", "lua-nginx-module", "ngx_devel_kit", "zlib", "modules", "{out}/tree/"])
        .command(".", ["cp", "nginx/objs/nginx", "{out}/sbin/nginx"])
        .command(".", ["strip", "--strip-all", "{out}/sbin/nginx"])
        .run_in(project)
}

/// Relinks the compiled objects with the Lua bytecode archive.
pub fn link_embedded(project: &Project, compiled: &Artifact, toolchain: &Artifact, luajit: &Artifact, openssl: &Artifact, pcre: &Artifact, bytecode: &Artifact) -> Result<Artifact> {
    let library = format!("lib{}.a", crate::bytecode::ARCHIVE);
    let args = format!("-Wl,--whole-archive ../bytecode/{} -Wl,--no-whole-archive\n", library);
    base_step("nginx-embed", project, toolchain, luajit, openssl, pcre)
        .dep("compiled", compiled)
        .dep("bytecode", bytecode)
        .file(LINK_EXTRA, args, false)
        // `cp -a` keeps the objects' times, so make relinks without recompiling anything.
        .command(".", ["cp", "-a", "compiled/tree/.", "."])
        .command(".", ["rm", "-f", "nginx/objs/nginx"])
        .command("nginx", ["make", "-f", "objs/Makefile", "objs/nginx"])
        .command(".", ["mkdir", "-p", "{out}/sbin"])
        .command(".", ["cp", "nginx/objs/nginx", "{out}/sbin/nginx"])
        .command(".", ["strip", "--strip-all", "{out}/sbin/nginx"])
        .run_in(project)
}

fn base_step(name: &str, project: &Project, toolchain: &Artifact, luajit: &Artifact, openssl: &Artifact, pcre: &Artifact) -> repro::Step {
    let lj = format!("../luajit/{}", luajit::PREFIX.trim_start_matches('/'));
    toolchain::step_with_toolchain(name, project, toolchain)
        .dep("luajit", luajit)
        .dep("openssl", openssl)
        .dep("pcre", pcre)
        .input("openssl-layout", openssl::PREFIX)
        .env("LUAJIT_LIB", format!("{lj}/lib"))
        .env("LUAJIT_INC", format!("{lj}/include/luajit-2.1"))
}
