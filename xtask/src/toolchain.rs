use pipeline::{luajit, toolchain, Target};
use repro::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Use only sources already in vendor/.
    #[arg(long)]
    offline: bool,
    #[command(flatten)]
    cache: crate::cache::CacheArgs,
}

/// Builds (or finds in the store) the musl toolchain and LuaJIT, and prints where they are.
pub fn run(args: Args) -> Result<()> {
    args.cache.run_with_project(|project| {
        let sources = project.sources(args.offline)?;
        let tc = toolchain::build(project, &sources, Target::X86_64)?;
        println!("toolchain {} ({})", tc.artifact.path.display(), crate::cache::outcome(&tc.artifact));
        let lj = luajit::build(project, &sources, &tc)?;
        println!("luajit    {} ({})", lj.path.display(), crate::cache::outcome(&lj));
        Ok(())
    })
}
