use std::time::Instant;

use pipeline::Project;
use repro::{fetch, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Use only what is already in vendor/; fail instead of fetching.
    #[arg(long)]
    offline: bool,
}

pub fn run(args: Args) -> Result<()> {
    let project = Project::from_checkout()?;
    let pins = project.lockfile()?.pins()?;
    for pin in &pins {
        let started = Instant::now();
        let verified = fetch::vendor(pin, &project.vendor_dir(), project.fetcher(), args.offline)?;
        let origin = verified.origin.as_deref().unwrap_or("unknown mirror");
        let how = if verified.fetched { format!("fetched from {origin}") } else { "already verified".to_owned() };
        println!("{:<22} {:<12} {} ({how}, {:.1}s)", pin.name, pin.version, pin.tree, started.elapsed().as_secs_f64());
    }
    Ok(())
}
