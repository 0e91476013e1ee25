//! The engine's L2 circuit breaker, end to end: L2 goes down, the breaker opens
//! (`cache_breaker_open` 1, `circuit_open` errors), L2 comes back, the breaker closes.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_metrics::MetricsObserver;
use cache_tiered::{BreakerConfig, MemoryStore, MsgPack};
use common::{parse, value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_gauge_follows_the_l2_breaker() {
    let handle = cache_metrics::install_recorder_only().unwrap();
    let store = Arc::new(MemoryStore::new());
    let engine = cache_tiered::builder("br")
        .with_remote(store.clone())
        .with_breaker(Some(BreakerConfig::new(3, Duration::from_millis(100))))
        .with_observer(Arc::new(MetricsObserver::new().with_label("engine", "br")))
        .build()
        .await
        .unwrap();
    let cache = engine.cache::<String, MsgPack>("items").build().unwrap();
    let s = parse(&handle.render());
    assert_eq!(value(&s, "cache_breaker_open", &[("engine", "br")]), 0.0);

    // Three failed reads open the breaker; the next two are skipped without a call.
    store.set_down(true);
    for k in ["a", "b", "c", "d", "e"] {
        assert!(cache.get(k).await.unwrap().is_none());
    }
    let s = parse(&handle.render());
    assert_eq!(value(&s, "cache_breaker_open", &[("engine", "br")]), 1.0);
    let kind = |s: &_, k| {
        value(
            s,
            "cache_l2_errors_total",
            &[("cache", "items"), ("kind", k), ("engine", "br")],
        )
    };
    assert_eq!(kind(&s, "connection"), 3.0);
    assert_eq!(kind(&s, "circuit_open"), 2.0);
    let get_l2_error = |s: &_| {
        value(
            s,
            "cache_operations_total",
            &[
                ("cache", "items"),
                ("operation", "get"),
                ("tier", "l2"),
                ("result", "error"),
                ("engine", "br"),
            ],
        )
    };
    assert_eq!(get_l2_error(&s), 5.0);

    // L2 is back: after the cool-down, the half-open probe succeeds and closes the breaker.
    store.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(120)).await;
        let _ = cache.get("probe").await.unwrap();
        if value(
            &parse(&handle.render()),
            "cache_breaker_open",
            &[("engine", "br")],
        ) == 0.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "the breaker never closed");
    }
    // The probe reached L2 (a miss), and no new error was counted.
    let s = parse(&handle.render());
    let miss = value(
        &s,
        "cache_operations_total",
        &[
            ("cache", "items"),
            ("operation", "get"),
            ("tier", "l2"),
            ("result", "miss"),
            ("engine", "br"),
        ],
    );
    assert!(miss >= 1.0, "{miss}");
    assert_eq!(get_l2_error(&s), 5.0);
}
