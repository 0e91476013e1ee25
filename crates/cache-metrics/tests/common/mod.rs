//! Reading the Prometheus text exposition format back in tests.

#![allow(dead_code)]

use std::collections::BTreeMap;

/// One series: metric name and its labels (sorted by key, so label order does not matter).
pub type Series = (String, BTreeMap<String, String>);

/// Every sample of a scrape.
pub fn parse(text: &str) -> BTreeMap<Series, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            panic!("unreadable sample line: {line:?}");
        };
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels: {line:?}"));
                let mut labels = BTreeMap::new();
                for pair in body.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("bad label: {pair:?}"));
                    labels.insert(k.to_owned(), v.trim_matches('"').to_owned());
                }
                (name.to_owned(), labels)
            }
        };
        assert!(
            out.insert((name, labels), value).is_none(),
            "duplicate series in {line:?}"
        );
    }
    out
}

/// The key of a series.
pub fn series(name: &str, labels: &[(&str, &str)]) -> Series {
    (
        name.to_owned(),
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

/// The value of one series, failing loudly (with the scrape) if it is missing.
pub fn value(samples: &BTreeMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    match samples.get(&series(name, labels)) {
        Some(v) => *v,
        None => {
            let have: Vec<_> = samples.keys().filter(|(n, _)| n == name).collect();
            panic!("no series {name}{labels:?}; series of that name: {have:#?}")
        }
    }
}

/// `cache_operations_total{cache, operation, tier, result}`.
pub fn ops(
    samples: &BTreeMap<Series, f64>,
    cache: &str,
    op: &str,
    tier: &str,
    result: &str,
) -> f64 {
    value(
        samples,
        "cache_operations_total",
        &[
            ("cache", cache),
            ("operation", op),
            ("tier", tier),
            ("result", result),
        ],
    )
}

/// Every `cache_operations_total` series of `cache`, as `(operation, tier, result) -> value`.
pub fn all_ops(
    samples: &BTreeMap<Series, f64>,
    cache: &str,
) -> BTreeMap<(String, String, String), f64> {
    samples
        .iter()
        .filter(|((n, l), _)| {
            n == "cache_operations_total" && l.get("cache").map(String::as_str) == Some(cache)
        })
        .map(|((_, l), v)| {
            let g = |k: &str| l.get(k).cloned().unwrap_or_default();
            ((g("operation"), g("tier"), g("result")), *v)
        })
        .collect()
}
