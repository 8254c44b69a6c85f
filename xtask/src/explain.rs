use std::path::{Path, PathBuf};

use pipeline::{dist, Project};
use repro::derivation::{explain_diff, Derivation};
use repro::{Error, Result, Store};

#[derive(clap::Args)]
pub struct Args {
    /// The step to explain (`nginx`, `bundle-embed` …); without one, list every step.
    step: Option<String>,
    /// Say which inputs make two keys differ. Each side is a store directory (its newest entry
    /// of each step is compared), a `.drv` file, or a key in the current store.
    #[arg(long, num_args = 2, value_names = ["A", "B"], conflicts_with = "step")]
    diff: Option<Vec<String>>,
    /// The targets whose steps to plan, as `dist --target`.
    #[arg(long, default_value = "x86_64-linux-musl")]
    target: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let project = Project::from_checkout()?;
    if let Some(sides) = args.diff {
        return diff(&project.store, &sides[0], &sides[1]);
    }
    let planned = dist::plan(project, &crate::dist::parse_targets(&args.target)?)?;
    match args.step {
        None => {
            for (step, artifact) in &planned {
                let state = if artifact.path.is_dir() { "in the store" } else { "not built" };
                println!("{:<20} {}  {state}", step.name(), artifact.key);
            }
        }
        Some(name) => {
            let (step, artifact) = planned.iter().find(|(s, _)| s.name() == name).ok_or_else(|| {
                Error::new(format!("no step named {name:?}; steps: {}", planned.iter().map(|(s, _)| s.name()).collect::<Vec<_>>().join(", ")))
            })?;
            println!("# step {name}, key {} ({})", artifact.key, if artifact.path.is_dir() { "in the store" } else { "not built" });
            print!("{}", step.derivation().to_toml());
        }
    }
    Ok(())
}

fn diff(store: &Store, a: &str, b: &str) -> Result<()> {
    let (left, right) = (Side::open(store, a)?, Side::open(store, b)?);
    let lookup = |name: &str, key: &str| left.find(name, key).or_else(|| right.find(name, key)).or_else(|| store.derivation(Some(name), key).ok());
    let mut text = String::new();
    match (&left, &right) {
        (Side::Store(x, _), Side::Store(y, _)) => {
            let (xs, ys) = (x.latest_derivations()?, y.latest_derivations()?);
            for (name, dx) in &xs {
                match ys.get(name) {
                    Some(dy) => text += &explain_diff(dx, dy, &lookup),
                    None => text += &format!("step {name}: only in {}\n", x.root().display()),
                }
            }
            for name in ys.keys().filter(|n| !xs.contains_key(*n)) {
                text += &format!("step {name}: only in {}\n", y.root().display());
            }
        }
        (Side::One(dx), Side::One(dy)) => text += &explain_diff(dx, dy, &lookup),
        _ => return Err(Error::new("compare two stores, or two derivations (files or keys), not one of each")),
    }
    if text.is_empty() {
        println!("no difference: the keys are the same");
    } else {
        print!("{text}");
    }
    Ok(())
}

enum Side {
    Store(Store, Vec<Derivation>),
    One(Derivation),
}

impl Side {
    fn open(current: &Store, arg: &str) -> Result<Side> {
        let path = PathBuf::from(arg);
        if path.is_dir() {
            let store = Store::open(&path)?;
            let all = store.latest_derivations()?.into_values().collect();
            return Ok(Side::Store(store, all));
        }
        if path.is_file() {
            return Ok(Side::One(Derivation::read(&path)?));
        }
        if arg.len() == 32 && arg.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(Side::One(current.derivation(None, arg)?));
        }
        Err(Error::new(format!("{arg}: neither a store directory, a .drv file nor a key in {}", display(current.root()))))
    }

    fn find(&self, name: &str, key: &str) -> Option<Derivation> {
        match self {
            Side::Store(store, all) => all.iter().find(|d| d.name == name && d.key() == key).cloned().or_else(|| store.derivation(Some(name), key).ok()),
            Side::One(d) => (d.name == name && d.key() == key).then(|| d.clone()),
        }
    }
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
