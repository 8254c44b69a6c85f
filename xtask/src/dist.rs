use std::path::PathBuf;
use std::time::Instant;

use pipeline::{dist, Target};
use repro::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Use only sources already in vendor/.
    #[arg(long)]
    offline: bool,
    /// Where to write the bundles (default: target/dist).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The machine to build for: x86_64-linux-musl (the default), aarch64-linux-musl
    /// (cross-built; needs gcc-aarch64-linux-gnu and qemu-user-static), or `all`.
    /// Repeat it for several.
    #[arg(long, default_value = "x86_64-linux-musl")]
    target: Vec<String>,
    #[command(flatten)]
    cache: crate::cache::CacheArgs,
}

/// The targets `--target` names (`all`, or triples), each once, in the order given.
pub(crate) fn parse_targets(values: &[String]) -> Result<Vec<Target>> {
    let mut targets = Vec::new();
    for value in values {
        let named = match value.as_str() {
            "all" => Target::ALL.to_vec(),
            one => vec![one.parse().map_err(|e: String| Error::new(format!("--target: {e}")))?],
        };
        for t in named {
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
    }
    Ok(targets)
}

/// Builds both bundles of every target and prints what was built and what came from the store.
pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let targets = parse_targets(&args.target)?;
    let options = dist::Options { offline: args.offline, out_dir: args.out.clone(), targets };
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
