use std::path::PathBuf;
use std::time::Instant;

use pipeline::Project;
use repro::vendor::{self, Verdict};
use repro::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Use only vendor/ and the local source cache; fail instead of fetching.
    #[arg(long)]
    offline: bool,
    /// Try every mirror of every pin (not the cache), print which still serve the pinned tree,
    /// and fail when some pin has no working mirror.
    #[arg(long, conflicts_with_all = ["export", "import"])]
    check: bool,
    /// After vendoring, write every pinned source as one deterministic archive to FILE.
    #[arg(long, value_name = "FILE")]
    export: Option<PathBuf>,
    /// Verify the sources in FILE (made by --export) and add them to the source cache first.
    #[arg(long, value_name = "FILE")]
    import: Option<PathBuf>,
    #[command(flatten)]
    cache: crate::cache::CacheArgs,
}

pub fn run(args: Args) -> Result<()> {
    args.cache.run_with_project(|project| run_in(project, &args))
}

fn run_in(project: &Project, args: &Args) -> Result<()> {
    let pins = project.lockfile()?.pins()?;
    if args.check {
        return check(project, &pins);
    }
    let cache = project.fetcher().source_cache().ok_or_else(|| Error::new("the project has no source cache"))?;
    if let Some(file) = &args.import {
        let trees = cache.import(file)?;
        println!("imported {} sources from {} into {}", trees.len(), file.display(), cache.dir().display());
    }
    for pin in &pins {
        let started = Instant::now();
        let verified = vendor::vendor(pin, &project.vendor_dir(), project.fetcher(), args.offline)?;
        let origin = verified.origin.as_deref().unwrap_or("unknown origin");
        let how = if verified.fetched { format!("from {origin}") } else { "already verified".to_owned() };
        println!("{:<22} {:<12} {} ({how}, {:.1}s)", pin.name, pin.version, pin.tree, started.elapsed().as_secs_f64());
    }
    if let Some(file) = &args.export {
        let trees: Vec<_> = pins.iter().map(|p| p.tree).collect();
        cache.export(&trees, file)?;
        println!("exported {} sources to {}", trees.len(), file.display());
    }
    Ok(())
}

fn check(project: &Project, pins: &[repro::Pin]) -> Result<()> {
    let scratch = project.vendor_dir().join(format!(".check-{}", std::process::id()));
    let mut rows = Vec::new();
    let mut without_mirror = Vec::new();
    for pin in pins {
        eprintln!("checking {} {} ({} mirrors) …", pin.name, pin.version, pin.mirrors.len());
        let statuses = vendor::check(pin, project.fetcher(), &scratch);
        let statuses = match statuses {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&scratch);
                return Err(e);
            }
        };
        if !statuses.iter().any(|s| matches!(s.verdict, Verdict::Serves(_))) {
            without_mirror.push(pin.name.clone());
        }
        for s in statuses {
            let detail = match &s.verdict {
                Verdict::Serves(via) => via.clone(),
                Verdict::Gone(why) | Verdict::Corrupt(why) | Verdict::Unreachable(why) => why.lines().next().unwrap_or("").to_owned(),
                Verdict::Different(_) => String::new(),
            };
            let mirror = s.mirror.to_string();
            let detail = detail.strip_prefix(&format!("{mirror}: ")).map(str::to_owned).unwrap_or(detail);
            rows.push((pin.name.clone(), mirror, s.verdict.to_string(), detail));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let width = |f: fn(&(String, String, String, String)) -> &String| rows.iter().map(|r| f(r).len()).max().unwrap_or(0);
    let (w0, w1, w2) = (width(|r| &r.0), width(|r| &r.1), width(|r| &r.2));
    println!("{:<w0$}  {:<w1$}  {:<w2$}  detail", "pin", "mirror", "status");
    for (pin, mirror, verdict, detail) in &rows {
        println!("{pin:<w0$}  {mirror:<w1$}  {verdict:<w2$}  {detail}");
    }
    if without_mirror.is_empty() {
        println!("every pin has a working mirror");
        Ok(())
    } else {
        Err(Error::new(format!(
            "no mirror serves the pinned tree of: {}; add a mirror that does (`cargo xtask pin`), or keep an export (`cargo xtask vendor --export FILE`)",
            without_mirror.join(", ")
        )))
    }
}
