//! `PROVENANCE.toml` inside each bundle: every input that the pins and the recipes determine,
//! by hash (never where a source was fetched from, which differs between machines), and
//! `SOURCE-ORIGINS.toml` beside the tarballs: where this machine got each source.

use repro::{Artifact, Result};
use toml_edit::{value, Array, ArrayOfTables, DocumentMut, Item, Table};

use crate::lua_modules::Module;
use crate::nginx;
use crate::project::{Project, Sources, SOURCE_DATE_EPOCH};
use crate::strategy::Strategy;
use crate::target::Target;

pub const PROJECT: &str = "static-nginx";

/// The file name of the origins record written beside the tarballs.
pub const ORIGINS_FILE: &str = "SOURCE-ORIGINS.toml";

pub fn provenance(project: &Project, sources: &Sources, (strategy, target): (Strategy, Target), modules: &[Module], steps: &[Artifact]) -> Result<String> {
    let mut doc = DocumentMut::new();
    doc.decor_mut().set_prefix("# How this bundle was built: every input, by hash.\n\n");
    let mut bundle = Table::new();
    bundle.insert("project", value(PROJECT));
    bundle.insert("version", value(env!("CARGO_PKG_VERSION")));
    bundle.insert("strategy", value(strategy.name()));
    bundle.insert("target", value(target.triple()));
    bundle.insert("source_date_epoch", value(SOURCE_DATE_EPOCH.parse::<i64>().expect("SOURCE_DATE_EPOCH is a number")));
    doc.insert("bundle", Item::Table(bundle));

    let mut all = ArrayOfTables::new();
    for s in &sources.0 {
        let mut t = Table::new();
        t.insert("name", value(s.pin.name.as_str()));
        t.insert("version", value(s.pin.version.as_str()));
        t.insert("tree", value(s.pin.tree.to_string()));
        all.push(t);
    }
    doc.insert("source", Item::ArrayOfTables(all));

    let mut tools = Table::new();
    for line in project.tool_versions().lines() {
        if let Some((tool, version)) = line.split_once(": ") {
            tools.insert(tool, value(version));
        }
    }
    if target != Target::X86_64 {
        let mut cross = Table::new();
        for line in project.cross_tool_versions(target).lines() {
            if let Some((tool, version)) = line.split_once(": ") {
                cross.insert(tool, value(version));
            }
        }
        doc.insert("cross_tools", Item::Table(cross));
    }
    doc.insert("tools", Item::Table(tools));

    let module_dirs: Vec<String> = nginx::project_modules(project)?.into_iter().map(|(n, _)| n).collect();
    let mut nginx_table = Table::new();
    nginx_table.insert("configure", value(multiline(nginx::configure_args(&module_dirs, target))));
    doc.insert("nginx", Item::Table(nginx_table));

    let mut lua = Table::new();
    lua.insert("strategy", value(strategy.description()));
    lua.insert("modules", value(multiline(modules.iter().map(|m| m.name.clone()))));
    doc.insert("lua", Item::Table(lua));

    let mut keys = Table::new();
    for s in steps {
        keys.insert(&s.name, value(s.key.as_str()));
    }
    doc.insert("steps", Item::Table(keys));
    Ok(doc.to_string())
}

/// One string per line, as a reader of a long list expects.
fn multiline(items: impl IntoIterator<Item = String>) -> Array {
    let mut array: Array = items.into_iter().collect();
    for item in array.iter_mut() {
        item.decor_mut().set_prefix("\n  ");
    }
    array.set_trailing_comma(true);
    array.set_trailing("\n");
    array
}

pub fn source_origins(sources: &Sources) -> String {
    let mut doc = DocumentMut::new();
    doc.decor_mut().set_prefix("# Where this build's sources came from on this machine (not part of any bundle).\n");
    for s in &sources.0 {
        let mut table = Table::new();
        table.insert("version", value(s.pin.version.as_str()));
        table.insert("tree", value(s.pin.tree.to_string()));
        table.insert("origin", value(s.verified.origin.as_deref().unwrap_or("unknown (vendored before origins were recorded)")));
        doc.insert(&s.pin.name, Item::Table(table));
    }
    doc.to_string()
}
