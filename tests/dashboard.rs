//! The Grafana dashboard (`contrib/grafana/hoard.json`) queries only what the server exports: every
//! metric name in its panel and variable queries, and every label its selectors match on, must be
//! in the `/metrics` of a real `hoard serve` after some traffic. (A real process: not under
//! madsim.)
#![cfg(not(madsim))]

mod real_server;

use std::collections::{BTreeMap, BTreeSet};

use real_server::{cas_path, RealServer};

/// Labels Prometheus adds when it scrapes (the server cannot export them).
const SCRAPE_LABELS: [&str; 2] = ["instance", "job"];

/// Every query string in the dashboard: panel targets and template variables.
fn queries(dashboard: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            out.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            out.push(query.to_owned());
        }
    }
    out
}

/// `(metric, label names its selector matches on)` for each `hoard_*` name in `query`.
fn selectors(query: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut out = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("hoard_") {
        let name_len = rest[at..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len() - at);
        let name = rest[at..at + name_len].to_owned();
        rest = &rest[at + name_len..];
        let mut labels = BTreeSet::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let selector = &inner[..inner.find('}').expect("a closed selector")];
            for matcher in selector.split(',') {
                let label = matcher.split(['=', '!', '~']).next().unwrap().trim();
                labels.insert(label.to_owned());
            }
        }
        out.push((name, labels));
    }
    out
}

#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/grafana/hoard.json"
    ))
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let wanted: Vec<(String, BTreeSet<String>)> = queries(&dashboard)
        .iter()
        .flat_map(|q| selectors(q))
        .collect();
    assert!(
        wanted.len() >= 10,
        "the dashboard queries too little: {wanted:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let server = RealServer::start(dir.path(), &[]);
    let blob = b"dashboard blob".to_vec();
    assert_eq!(server.request("PUT", &cas_path(&blob), &blob).0, 200);
    // A body that does not hash to its key: an upload failure.
    assert_eq!(server.request("PUT", &cas_path(b"other"), b"wrong").0, 400);
    assert_eq!(server.request("GET", &cas_path(&blob), b"").0, 200);
    let action = format!("/ci/ac/{}", "ab".repeat(32));
    assert_eq!(server.request("GET", &action, b"").0, 404);
    assert_eq!(server.request("PUT", &action, b"value").0, 200);
    assert_eq!(server.request("GET", &action, b"").0, 200);
    let metrics = server.get_text("/metrics");

    // Metric name -> every label name seen on it.
    let mut exported: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap();
        let labels = exported.entry(line[..name_end].to_owned()).or_default();
        if let Some(inner) = line[name_end..].strip_prefix('{') {
            for pair in inner[..inner.rfind('}').unwrap()].split("\",") {
                labels.insert(pair.split('=').next().unwrap().to_owned());
            }
        }
    }
    for (name, labels) in &wanted {
        let Some(has) = exported.get(name) else {
            panic!("the dashboard queries {name}, which /metrics does not export:\n{metrics}");
        };
        for label in labels
            .iter()
            .filter(|l| !SCRAPE_LABELS.contains(&l.as_str()))
        {
            assert!(
                has.contains(label),
                "{name} has no label {label:?} (it has {has:?})"
            );
        }
    }
}

#[test]
fn selectors_are_read_with_their_labels() {
    let found = selectors(
        "sum by (protocol) (rate(hoard_ac_lookups_total{instance=~\"$i\",result=\"hit\"}[5m])) / hoard_disk_bytes",
    );
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].0, "hoard_ac_lookups_total");
    assert_eq!(
        found[0].1,
        BTreeSet::from(["instance".to_owned(), "result".to_owned()])
    );
    assert_eq!(found[1], ("hoard_disk_bytes".to_owned(), BTreeSet::new()));
}
