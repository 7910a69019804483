//! Every metric the shipped dashboard and alert rules query is one nodedns exports.

use std::collections::BTreeSet;
use std::path::Path;

use nodedns::metrics::ALL_NAMES;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Every `nodedns_*` / `coredns_*` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        let starts = (rest.starts_with("nodedns_") || rest.starts_with("coredns_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            // `nodedns_*` in prose is a pattern, not a metric.
            if !rest[..end].ends_with('_') {
                out.insert(rest[..end].to_string());
            }
            i += end;
        } else {
            i += 1;
        }
    }
    out
}

/// Identifiers with a metric prefix that are not metrics (config keys quoted in descriptions).
const NOT_METRICS: &[&str] = &["coredns_compatible_metrics"];

fn exported(name: &str) -> bool {
    NOT_METRICS.contains(&name)
        || ALL_NAMES.contains(&name)
        || ["_bucket", "_sum", "_count"].iter().any(|s| name.strip_suffix(s).is_some_and(|b| ALL_NAMES.contains(&b)))
}

#[test]
fn dashboard_and_alerts_reference_only_exported_metrics() {
    let mut checked = 0;
    for file in ["deploy/monitoring/grafana-dashboard.json", "deploy/monitoring/prometheusrule.yaml"] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        if file.ends_with(".json") {
            serde_json_check(&text, file);
        } else {
            let _: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
        let names = metric_names(&text);
        assert!(!names.is_empty(), "{file} references no metric");
        for n in &names {
            assert!(exported(n), "{file} queries {n}, which nodedns does not export");
            checked += 1;
        }
    }
    assert!(checked > 10);
}

fn serde_json_check(text: &str, file: &str) {
    // The dashboard is JSON; YAML 1.2 is a superset, so the YAML parser validates it too.
    let v: serde_yaml::Value = serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert!(v.get("panels").is_some(), "{file}: no panels");
}

#[test]
fn the_deploy_checks_list_matches_the_exported_names() {
    let text = std::fs::read_to_string(repo().join("tests/deploy/exported-metrics.txt")).unwrap();
    let listed: BTreeSet<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let exported: BTreeSet<&str> = ALL_NAMES.iter().copied().collect();
    assert_eq!(listed, exported);
}
