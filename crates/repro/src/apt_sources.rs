//! The machine's Debian archives (from its apt sources), restated as deb822 stanzas with
//! both binary and source indexes enabled, for a private apt configuration.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use crate::error::{bail, Context, Result};

/// Reads every `.sources` (deb822) and `.list` (one-line) file among `paths` (files or
/// directories) and returns their archives as one deb822 text, sorted and deduplicated.
pub fn read(paths: &[PathBuf]) -> Result<String> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut entries: Vec<_> = fs::read_dir(path)
                .context(|| format!("cannot list {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "sources" || e == "list"))
                .collect();
            entries.sort();
            files.extend(entries);
        } else if path.is_file() {
            files.push(path.clone());
        }
    }
    let mut stanzas = BTreeSet::new();
    for file in &files {
        let text = fs::read_to_string(file).context(|| format!("cannot read {}", file.display()))?;
        if file.extension().is_some_and(|e| e == "sources") {
            stanzas.extend(deb822_stanzas(&text));
        } else {
            stanzas.extend(one_line_stanzas(&text));
        }
    }
    if stanzas.is_empty() {
        let where_ = paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        bail!("no Debian archive is configured in {where_}: Debian mirrors need one")
    }
    Ok(stanzas.into_iter().collect::<Vec<_>>().join("\n"))
}

pub(crate) fn deb822_stanzas(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let field = |name: &str| {
            block.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_owned())
            })
        };
        let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) else {
            continue;
        };
        if field("Enabled").is_some_and(|e| e.eq_ignore_ascii_case("no")) {
            continue;
        }
        let mut stanza = format!("Types: deb deb-src\nURIs: {uris}\nSuites: {suites}\n");
        if let Some(c) = field("Components") {
            stanza.push_str(&format!("Components: {c}\n"));
        }
        for optional in ["Signed-By", "Trusted"] {
            if let Some(s) = field(optional) {
                stanza.push_str(&format!("{optional}: {s}\n"));
            }
        }
        out.push(stanza);
    }
    out
}

pub(crate) fn one_line_stanzas(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        let mut words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"deb") {
            continue;
        }
        words.remove(0);
        let mut options = Vec::new();
        if words.first().is_some_and(|w| w.starts_with('[')) {
            while let Some(w) = (!words.is_empty()).then(|| words.remove(0)) {
                options.push(w);
                if w.ends_with(']') {
                    break;
                }
            }
        }
        let options = options.join(" ");
        let options: Vec<&str> = options.trim_matches(['[', ']']).split_whitespace().collect();
        if words.len() < 2 {
            continue;
        }
        let mut stanza = format!("Types: deb deb-src\nURIs: {}\nSuites: {}\n", words[0], words[1]);
        if words.len() > 2 {
            stanza.push_str(&format!("Components: {}\n", words[2..].join(" ")));
        }
        for (option, field) in [("signed-by=", "Signed-By"), ("trusted=", "Trusted")] {
            if let Some(value) = options.iter().find_map(|o| o.strip_prefix(option)) {
                stanza.push_str(&format!("{field}: {value}\n"));
            }
        }
        out.push(stanza);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_sources_become_deb822_with_source_packages() {
        let deb822 = "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/k.gpg\n\nTypes: deb\nURIs: http://off.invalid\nSuites: x\nEnabled: no\n";
        assert_eq!(
            deb822_stanzas(deb822),
            ["Types: deb deb-src\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/k.gpg\n"]
        );
        let list = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/debian bookworm main contrib\ndeb-src http://ignored.invalid x main\n";
        assert_eq!(
            one_line_stanzas(list),
            ["Types: deb deb-src\nURIs: http://mirror.invalid/debian\nSuites: bookworm\nComponents: main contrib\nSigned-By: /k.gpg\n"]
        );
    }

    #[test]
    fn a_trusted_local_repository_stays_trusted() {
        let list = "deb [trusted=yes] file:/srv/repo ./\n";
        assert_eq!(one_line_stanzas(list), ["Types: deb deb-src\nURIs: file:/srv/repo\nSuites: ./\nTrusted: yes\n"]);
    }
}
