use pipeline::{luajit, toolchain, Project};
use repro::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Use only sources already in vendor/.
    #[arg(long)]
    offline: bool,
}

/// Builds (or finds in the store) the musl toolchain and LuaJIT, and prints where they are.
pub fn run(args: Args) -> Result<()> {
    let project = Project::from_checkout()?;
    let sources = project.sources(args.offline)?;
    let tc = toolchain::build(&project, &sources)?;
    println!("toolchain {} ({})", tc.path.display(), if tc.built { "built" } else { "cached" });
    let lj = luajit::build(&project, &sources, &tc)?;
    println!("luajit    {} ({})", lj.path.display(), if lj.built { "built" } else { "cached" });
    Ok(())
}
