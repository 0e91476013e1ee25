//! The alert rules and the dashboard in `docs/` only name metrics this crate exports.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

use cache_metrics::names::*;

fn exported() -> BTreeSet<&'static str> {
    [
        OPERATIONS_TOTAL,
        OPERATION_SECONDS,
        L1_OPERATION_SECONDS,
        LOADER_SECONDS,
        L2_CORRUPT_TOTAL,
        L2_ERRORS_TOTAL,
        COALESCED_WAITERS_TOTAL,
        EARLY_REFRESHES_TOTAL,
        LEASES_TOTAL,
        INVALIDATIONS_TOTAL,
        INVALIDATIONS_LOST_TOTAL,
        BUS_RECONNECTS_TOTAL,
        BREAKER_OPEN,
        WRITE_BEHIND_QUEUE_DEPTH,
        ENTRIES,
        BYTES,
        CAPACITY_BYTES,
        EVICTIONS_TOTAL,
    ]
    .into_iter()
    .collect()
}

/// Every `cache_*` identifier in `text`, histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    let mut i = 0;
    while let Some(pos) = text[i..].find("cache_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && ident(bytes[end]) {
            end += 1;
        }
        let before_ok = start == 0 || !ident(bytes[start - 1]);
        if before_ok {
            let name = &text[start..end];
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(base.to_owned());
        }
        i = end.max(start + 1);
    }
    out
}

fn check(file: &str, at_least: usize) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let names = metric_names(&text);
    let known = exported();
    let unknown: Vec<_> = names
        .iter()
        .filter(|n| !known.contains(n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "{file} names metrics nobody exports: {unknown:?}"
    );
    assert!(names.len() >= at_least, "{file}: only {names:?}");
}

#[test]
fn alert_rules_use_exported_metrics() {
    check("alerts.yml", 6);
    check("alerts.test.yml", 6);
}

#[test]
fn dashboard_uses_exported_metrics() {
    check("grafana-dashboard.json", 15);
}
