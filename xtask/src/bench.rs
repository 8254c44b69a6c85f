use std::fs;
use std::time::Instant;

use pipeline::{dist, Project, StepRecord};
use repro::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Instead of build times: proxied requests per second through the seed configurations,
    /// then the static binary beside Debian's nginx on the same workloads (runs
    /// `cargo bench -p e2e --bench load` and `--bench versus_debian`).
    #[arg(long)]
    load: bool,
    /// Instead of build times: `dist` in a fresh copy of the checkout (no vendor/) with an
    /// empty store and this warm cache, beside a cold local build's time if one is given.
    #[command(flatten)]
    cache: crate::cache::CacheArgs,
    /// The cold local build's wall time to print beside the warm-cache one.
    #[arg(long, value_name = "SECONDS", requires = "cache")]
    cold: Option<f64>,
    /// The build times of these targets' dist (as `dist --target`).
    #[arg(long, default_value = "x86_64-linux-musl")]
    target: Vec<String>,
}

/// Times a cold `dist` (empty store), a no-op `dist`, and `dist` after one `.lua` file changed,
/// in a copy of the checkout so nothing here is touched. The floor is a plain bash script of the
/// same copies and configure/make commands (written by [`repro::Step::script`]), run without the
/// store, keys or locks.
pub fn run(args: Args) -> Result<()> {
    if args.load {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        for bench in ["load", "versus_debian"] {
            duct::cmd(&cargo, ["bench", "--package", "e2e", "--bench", bench])
                .run()
                .map_err(|e| Error::with_source(format!("the {bench} benchmark failed"), e))?;
        }
        return Ok(());
    }
    if args.cache.is_set() {
        return crate::cache::bench(&args.cache, args.cold);
    }
    let here = Project::from_checkout()?;
    let scratch = here.root.join("target/bench");
    let _ = fs::remove_dir_all(&scratch);
    let checkout = scratch.join("checkout");
    here.copy_checkout(&checkout)?;
    let record = StepRecord::new();
    let project = Project::with_store(checkout.clone(), scratch.join("store"))?.recording(record.clone());
    let options = dist::Options { offline: true, out_dir: Some(scratch.join("dist")), targets: crate::dist::parse_targets(&args.target)? };

    let timed = |label: &str| -> Result<(f64, dist::Dist)> {
        let started = Instant::now();
        let d = dist::build(&project, &options)?;
        let secs = started.elapsed().as_secs_f64();
        let built: Vec<String> = d.steps.iter().filter(|s| s.built).map(|s| format!("{} {:.1}s", s.name, s.seconds)).collect();
        eprintln!("{label}: {secs:.1}s, built: {}", if built.is_empty() { "nothing".into() } else { built.join(", ") });
        Ok((secs, d))
    };
    let (cold, cold_dist) = timed("cold")?;
    let floor = floor(&record.steps(), &scratch.join("floor"), &cold_dist.bundles)?;
    eprintln!("floor (plain script, same binaries): {floor:.1}s");
    let (noop, _) = timed("no-op")?;
    let lua = checkout.join("lualib/resty/upstream/healthcheck.lua");
    let mut text = fs::read_to_string(&lua).map_err(|e| Error::with_source(format!("cannot read {}", lua.display()), e))?;
    text.push_str("-- bench: one changed line\n");
    fs::write(&lua, text).map_err(|e| Error::with_source(format!("cannot write {}", lua.display()), e))?;
    let (changed, _) = timed("one .lua changed")?;

    println!("| run | wall time |");
    println!("|---|---|");
    println!("| cold `dist` (empty store, sources vendored) | {cold:.1} s |");
    println!("| floor: the same commands as a plain bash script | {floor:.1} s |");
    println!("| no-op `dist` | {noop:.2} s |");
    println!("| `dist` after one `.lua` changed | {changed:.1} s |");
    println!();
    println!("| binary | size |");
    println!("|---|---|");
    for b in &cold_dist.bundles {
        let size = fs::metadata(&b.binary).map(|m| m.len()).unwrap_or(0);
        println!("| {} {} sbin/nginx | {:.2} MiB ({size} bytes) |", b.target, b.strategy, size as f64 / 1048576.0);
    }
    let _ = fs::remove_dir_all(scratch.join("store"));
    Ok(())
}

/// Writes every command-driven step of the cold run as one bash script and times it. Steps
/// that run Rust code (bytecode) are reused from the store: they take a fraction of a second.
/// The script's binaries must equal the store's `bundles`' binaries.
fn floor(steps: &[(repro::Step, repro::Artifact)], dir: &std::path::Path, bundles: &[dist::Bundle]) -> Result<f64> {
    let scripted: Vec<String> = steps.iter().filter(|(s, _)| !s.commands().is_empty()).map(|(s, _)| s.name().to_owned()).collect();
    let mut script = String::from("set -euo pipefail\n");
    for (step, _) in steps.iter().filter(|(s, _)| scripted.iter().any(|n| n == s.name())) {
        script += &step.script(&dir.join("build").join(step.name()), &dir.join("out").join(step.name()), |dep| {
            if scripted.contains(&dep.name) {
                dir.join("out").join(&dep.name)
            } else {
                dep.path.clone()
            }
        });
    }
    fs::create_dir_all(dir).map_err(|e| Error::with_source(format!("cannot create {}", dir.display()), e))?;
    let path = dir.join("floor.sh");
    fs::write(&path, script).map_err(|e| Error::with_source(format!("cannot write {}", path.display()), e))?;
    let started = Instant::now();
    duct::cmd("bash", [&path]).stdout_null().stderr_null().run().map_err(|e| Error::with_source(format!("{} failed", path.display()), e))?;
    let secs = started.elapsed().as_secs_f64();
    let _ = fs::remove_dir_all(dir.join("build"));
    // The script must build what the store built, or it is no floor.
    for bundle in bundles {
        let step = match bundle.strategy {
            pipeline::Strategy::Embed => "nginx-embed",
            pipeline::Strategy::Lualib => "nginx",
        };
        let scripted = fs::read(dir.join("out").join(bundle.target.step_name(step)).join("sbin/nginx")).unwrap_or_default();
        if scripted != fs::read(&bundle.binary).unwrap_or_default() {
            return Err(Error::new(format!("the plain script built a different {} {} binary", bundle.target, bundle.strategy)));
        }
    }
    Ok(secs)
}
