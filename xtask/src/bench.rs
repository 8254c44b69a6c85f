use std::fs;
use std::time::Instant;

use pipeline::{dist, Project};
use repro::{Error, Result};

#[derive(clap::Args)]
pub struct Args {}

/// Times a cold `dist` (empty store), a no-op `dist`, and `dist` after one `.lua` file changed,
/// in a copy of the checkout so nothing here is touched. The floor is the time spent inside the
/// recipes' own configure/make commands during the cold run: what a plain script of the same
/// commands would take, without the store.
pub fn run(_: Args) -> Result<()> {
    let here = Project::from_checkout()?;
    let scratch = here.root.join("target/bench");
    let _ = fs::remove_dir_all(&scratch);
    let checkout = scratch.join("checkout");
    here.copy_checkout(&checkout)?;
    let project = Project::with_store(checkout.clone(), scratch.join("store"))?;
    let options = dist::Options { offline: true, out_dir: Some(scratch.join("dist")) };

    let timed = |label: &str| -> Result<(f64, dist::Dist)> {
        let started = Instant::now();
        let d = dist::build(&project, &options)?;
        let secs = started.elapsed().as_secs_f64();
        let built: Vec<String> = d.steps.iter().filter(|s| s.built).map(|s| format!("{} {:.1}s", s.name, s.seconds)).collect();
        eprintln!("{label}: {secs:.1}s, built: {}", if built.is_empty() { "nothing".into() } else { built.join(", ") });
        Ok((secs, d))
    };
    let (cold, cold_dist) = timed("cold")?;
    let floor: f64 = cold_dist.steps.iter().map(|s| s.seconds).sum();
    let (noop, _) = timed("no-op")?;
    let lua = checkout.join("lualib/resty/upstream/healthcheck.lua");
    let mut text = fs::read_to_string(&lua).map_err(|e| Error::with_source(format!("cannot read {}", lua.display()), e))?;
    text.push_str("-- bench: one changed line\n");
    fs::write(&lua, text).map_err(|e| Error::with_source(format!("cannot write {}", lua.display()), e))?;
    let (changed, _) = timed("one .lua changed")?;

    println!("| run | wall time |");
    println!("|---|---|");
    println!("| cold `dist` (empty store, sources vendored) | {cold:.1} s |");
    println!("| floor: the same configure/make commands alone | {floor:.1} s |");
    println!("| no-op `dist` | {noop:.2} s |");
    println!("| `dist` after one `.lua` changed | {changed:.1} s |");
    println!();
    println!("| binary | size |");
    println!("|---|---|");
    for b in &cold_dist.bundles {
        let size = fs::metadata(&b.binary).map(|m| m.len()).unwrap_or(0);
        println!("| {} sbin/nginx | {:.2} MiB ({size} bytes) |", b.strategy, size as f64 / 1048576.0);
    }
    let _ = fs::remove_dir_all(scratch.join("store"));
    Ok(())
}
