use std::path::PathBuf;
use std::time::Instant;

use pipeline::dist;
use repro::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Use only sources already in vendor/.
    #[arg(long)]
    offline: bool,
    /// Where to write the bundles (default: target/dist).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    cache: crate::cache::CacheArgs,
}

/// Builds both bundles and prints what was built and what came from the store.
pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let options = dist::Options { offline: args.offline, out_dir: args.out.clone() };
    let dist = args.cache.run_with_project(|project| dist::build(project, &options))?;
    for step in &dist.steps {
        println!("{:<20} {:<7} {}", step.name, crate::cache::outcome(step), step.path.display());
    }
    for bundle in &dist.bundles {
        println!("{}", bundle.tarball.display());
    }
    println!("{}", dist.sha256sums.display());
    if let Some(sig) = crate::cache::sign_file(&args.cache, &dist.sha256sums)? {
        println!("{}", sig.display());
    }
    println!("dist done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
