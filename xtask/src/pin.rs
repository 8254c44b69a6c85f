use std::path::PathBuf;

use pipeline::Project;
use repro::{fetch, Error, Mirror, MirrorKind, Result};

#[derive(clap::Args)]
pub struct Args {
    /// The pin's name in lockfiles/sources.toml.
    name: String,
    /// The source's version.
    version: String,
    /// Fetch from this URL.
    #[arg(long, group = "mirror")]
    url: Option<String>,
    /// Fetch a file (--file) of this Debian source package (`package` or `package=version`).
    #[arg(long, group = "mirror", requires = "file")]
    debian_source: Option<String>,
    /// Fetch this Debian binary package (`package` or `package=version`).
    #[arg(long, group = "mirror")]
    debian_binary: Option<String>,
    /// With --debian-source: the file to take; alone: a local archive.
    #[arg(long)]
    file: Option<String>,
    /// The directory inside the archive that is the tree.
    #[arg(long, default_value = "")]
    root: String,
}

pub fn run(args: Args) -> Result<()> {
    let kind = match (args.url, args.debian_source, args.debian_binary, args.file) {
        (Some(url), None, None, None) => MirrorKind::Url(url),
        (None, Some(package), None, Some(file)) => MirrorKind::DebianSource { package, file },
        (None, None, Some(package), None) => MirrorKind::DebianBinary { package },
        (None, None, None, Some(path)) => MirrorKind::File(PathBuf::from(path).canonicalize().map_err(|e| Error::with_source("cannot find the local archive", e))?),
        _ => return Err(Error::new("give one mirror: --url, --debian-source with --file, --debian-binary, or --file")),
    };
    let mirror = Mirror { kind, root: args.root };
    let project = Project::from_checkout()?;
    let mut lockfile = project.lockfile()?;
    let scratch = project.vendor_dir().join(format!(".pin-{}-{}", args.name, std::process::id()));
    let tree = fetch::hash_mirror(&mirror, project.fetcher(), &scratch)?;
    lockfile.set_pin(&args.name, &args.version, tree, &mirror)?;
    lockfile.save()?;
    println!("{} {} {tree} from {mirror}", args.name, args.version);
    Ok(())
}
