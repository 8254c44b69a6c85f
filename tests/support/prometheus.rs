//! The Prometheus text exposition format, read strictly: the tests look series up by name and
//! label set, and fail on anything a scraper would reject or silently mis-merge. `promtool`
//! (see `promtool.rs`) is the second, independent judge of the same pages.
//!
//! Hand-written rather than taken from a crate: the published parsers are lenient by design
//! (they accept samples outside their family's block, duplicate series and repeated families,
//! and fold histogram series into one value), which are exactly the faults these tests exist
//! to catch.

use std::collections::BTreeSet;
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

#[derive(Debug)]
pub struct Exposition {
    /// Family names in the order of their `# TYPE` lines, with the type.
    pub families: Vec<(String, String)>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the series `name{labels}` (labels compared as a set).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeSet<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples.iter().find(|s| s.name == name && s.labels.iter().cloned().collect::<BTreeSet<_>>() == want).map(|s| s.value)
    }

    pub fn int(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let v = self.value(name, labels).unwrap_or_else(|| panic!("no series {name}{labels:?}"));
        assert!(v >= 0.0 && v.fract() == 0.0, "{name}{labels:?} = {v} is not a count");
        v as u64
    }

    /// The value of a series written as on the page, `name` or `name{k="v",...}`.
    pub fn series(&self, series: &str) -> Option<f64> {
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').expect("labels end with }"), series)),
        };
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.value(name, &labels)
    }

    /// Distinct values of `label` among the samples of `name`.
    pub fn label_values(&self, name: &str, label: &str) -> BTreeSet<String> {
        self.samples.iter().filter(|s| s.name == name).filter_map(|s| s.labels.iter().find(|(k, _)| k == label).map(|(_, v)| v.clone())).collect()
    }
}

/// Parses the text exposition format, failing on anything a scraper would reject: a sample
/// outside its family's `# HELP`/`# TYPE` block, a family declared twice, a duplicate series,
/// a bad label escape or value.
pub fn parse(text: &str) -> Exposition {
    let mut families: Vec<(String, String)> = Vec::new();
    let mut helps: BTreeSet<String> = BTreeSet::new();
    let mut samples = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap().to_string();
            assert!(helps.insert(name.clone()), "HELP for {name} twice");
            current = Some(name);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let name = it.next().unwrap().to_string();
            let kind = it.next().expect("TYPE has a type").to_string();
            assert!(["counter", "gauge", "histogram"].contains(&kind.as_str()), "type {kind}");
            assert!(helps.contains(&name), "TYPE {name} without HELP before it");
            assert_eq!(current.as_deref(), Some(name.as_str()), "HELP and TYPE of {name} are adjacent");
            assert!(!families.iter().any(|(n, _)| *n == name), "family {name} declared twice");
            families.push((name, kind));
            continue;
        }
        if line.is_empty() {
            // The format ignores empty lines; a merged page has them between its sources.
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Vec::new()),
            Some((name, rest)) => (name.to_string(), parse_labels(rest.strip_suffix('}').expect("labels end with }"), line)),
        };
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') && !name.is_empty(), "bad metric name in {line:?}");
        let in_family = match families.last() {
            Some((family, kind)) if kind == "histogram" => {
                ["_bucket", "_sum", "_count"].iter().any(|suffix| name.strip_suffix(suffix) == Some(family.as_str()))
            }
            Some((family, _)) => *family == name,
            None => false,
        };
        assert!(in_family, "sample {line:?} is not inside its family's block");
        assert!(seen.insert(series.to_string()), "duplicate series {series}");
        samples.push(Sample { name, labels, value });
    }
    Exposition { families, samples }
}

fn parse_labels(text: &str, line: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        assert_eq!(chars.next(), Some('"'), "label value is quoted in {line:?}");
        let mut value = String::new();
        loop {
            match chars.next().unwrap_or_else(|| panic!("unterminated label value in {line:?}")) {
                '"' => break,
                '\\' => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                '\n' => panic!("raw newline in {line:?}"),
                c => value.push(c),
            }
        }
        assert!(labels.iter().all(|(k, _)| *k != key), "label {key} twice in {line:?}");
        labels.push((key, value));
        match chars.next() {
            None => break,
            Some(',') => {}
            other => panic!("unexpected {other:?} after a label in {line:?}"),
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::parse;

    const PAGE: &str = "# HELP a_total Requests.\n# TYPE a_total counter\na_total{host=\"x\",code=\"2xx\"} 3\na_total{host=\"q\\\"\"} 1\n\n# HELP d Durations.\n# TYPE d histogram\nd_bucket{le=\"+Inf\"} 2\nd_sum 0.5\nd_count 2\n";

    #[test]
    fn looks_series_up_by_name_and_label_set() {
        let e = parse(PAGE);
        assert_eq!(e.int("a_total", &[("code", "2xx"), ("host", "x")]), 3);
        assert_eq!(e.series("a_total{host=\"q\\\"\"}"), Some(1.0));
        assert_eq!(e.series("d_count"), Some(2.0));
        assert_eq!(e.series("a_total{host=\"y\"}"), None);
        assert_eq!(e.families, [("a_total".to_owned(), "counter".to_owned()), ("d".to_owned(), "histogram".to_owned())]);
    }

    #[test]
    #[should_panic(expected = "duplicate series")]
    fn refuses_a_series_twice() {
        parse("# HELP a A.\n# TYPE a gauge\na 1\na 2\n");
    }

    #[test]
    #[should_panic(expected = "not inside its family's block")]
    fn refuses_a_sample_outside_its_block() {
        parse("# HELP a A.\n# TYPE a gauge\n# HELP b B.\n# TYPE b gauge\na 1\n");
    }
}
