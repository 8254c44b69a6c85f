use std::path::{Path, PathBuf};

use pipeline::Project;
use repro::{vendor, Error, Mirror, MirrorKind, Pin, Result, TreeHash};

#[derive(clap::Args)]
pub struct Args {
    /// The pin's name in lockfiles/sources.toml.
    name: String,
    /// The source's version.
    version: String,
    /// Fetch from this URL.
    #[arg(long, group = "mirror")]
    url: Option<String>,
    /// Fetch a file (--file) of this Debian source package (`package`, or `package=version`
    /// as a hint: any listed version holding the file serves).
    #[arg(long, group = "mirror", requires = "file")]
    debian_source: Option<String>,
    /// Fetch this Debian binary package (`package`, or `package=version` as a hint).
    #[arg(long, group = "mirror")]
    debian_binary: Option<String>,
    /// A folder of archives by file name (with --file, that file).
    #[arg(long, group = "mirror")]
    dir: Option<PathBuf>,
    /// With --debian-source or --dir: the file to take; alone: a local archive.
    #[arg(long)]
    file: Option<String>,
    /// The directory inside the archive that is the tree.
    #[arg(long, default_value = "")]
    root: String,
}

pub fn run(args: Args) -> Result<()> {
    let project = Project::from_checkout()?;
    let mut lockfile = project.lockfile()?;
    let base = lockfile.path().parent().unwrap_or(Path::new(".")).to_path_buf();
    let kind = match (args.url, args.debian_source, args.debian_binary, args.dir, args.file) {
        (Some(url), None, None, None, None) => MirrorKind::Url(url),
        (None, Some(package), None, None, Some(file)) => MirrorKind::DebianSource { package, file },
        (None, None, Some(package), None, None) => MirrorKind::DebianBinary { package },
        (None, None, None, Some(dir), file) => MirrorKind::Dir { path: as_written(&dir, &base)?, file },
        (None, None, None, None, Some(path)) => MirrorKind::File(as_written(Path::new(&path), &base)?),
        _ => return Err(Error::new("give one mirror: --url, --debian-source with --file, --debian-binary, --dir, or --file")),
    };
    let mirror = Mirror { kind, root: args.root };
    let mut probe = Pin { name: args.name.clone(), version: args.version.clone(), tree: TreeHash::default(), mirrors: vec![mirror.clone()], base };
    if let Ok(existing) = lockfile.pin(&args.name) {
        probe.mirrors.extend(existing.mirrors);
    }
    let scratch = project.vendor_dir().join(format!(".pin-{}-{}", args.name, std::process::id()));
    let tree = vendor::hash_mirror(&probe, &mirror, project.fetcher(), &scratch)?;
    lockfile.set_pin(&args.name, &args.version, tree, &mirror)?;
    lockfile.save()?;
    println!("{} {} {tree} from {mirror}", args.name, args.version);
    Ok(())
}

/// A local path as the lockfile should record it: relative to the lockfile's directory when
/// it lies inside the checkout (so the pin works in every clone), absolute otherwise.
fn as_written(path: &Path, lockfile_dir: &Path) -> Result<PathBuf> {
    let absolute = path.canonicalize().map_err(|e| Error::with_source(format!("cannot find {}", path.display()), e))?;
    let checkout = lockfile_dir.parent().unwrap_or(lockfile_dir);
    match absolute.strip_prefix(checkout) {
        Ok(inside) => Ok(Path::new("..").join(inside)),
        Err(_) => Ok(absolute),
    }
}
