//! Every event, fed straight to the observer of one cache, with a recorder of the test's own
//! (no global state: these tests run in parallel).
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use cache_core::{CacheEvent, CacheObserver, ErrorKind, L1Stats, L2Op, Observer};
use cache_metrics::metrics_exporter_prometheus::PrometheusHandle;
use cache_metrics::MetricsObserver;
use common::{all_ops, ops, parse, value};

fn observer() -> (MetricsObserver, PrometheusHandle) {
    let recorder = cache_metrics::prometheus_builder()
        .unwrap()
        .build_recorder();
    let handle = recorder.handle();
    (MetricsObserver::with_recorder(Arc::new(recorder)), handle)
}

#[test]
fn every_event_maps_to_its_series() {
    let (obs, handle) = observer();
    let o: Arc<dyn CacheObserver> = obs.for_cache("orders");
    let ms = Duration::from_millis(2);
    let events = [
        CacheEvent::L1Hit,
        CacheEvent::L1Hit,
        CacheEvent::L1Miss,
        CacheEvent::StaleServed,
        CacheEvent::L2Hit { latency: ms },
        CacheEvent::L2Miss { latency: ms },
        CacheEvent::L2Miss { latency: ms },
        CacheEvent::L2Corrupt,
        CacheEvent::L2Error {
            op: L2Op::Get,
            kind: ErrorKind::Timeout,
        },
        CacheEvent::L2Error {
            op: L2Op::Set,
            kind: ErrorKind::Connection,
        },
        CacheEvent::L2Error {
            op: L2Op::Lease,
            kind: ErrorKind::CircuitOpen,
        },
        CacheEvent::L2Error {
            op: L2Op::Delete,
            kind: ErrorKind::Closed,
        },
        CacheEvent::L2Set { latency: ms },
        CacheEvent::Set,
        CacheEvent::Invalidate,
        CacheEvent::Load {
            duration: Duration::from_millis(30),
            ok: true,
        },
        CacheEvent::Load {
            duration: Duration::from_millis(3),
            ok: false,
        },
        CacheEvent::Coalesced,
        CacheEvent::Coalesced,
        CacheEvent::CoalescedResult { ok: true },
        CacheEvent::CoalescedResult { ok: false },
        CacheEvent::EarlyRefresh,
        CacheEvent::LeaseAcquired,
        CacheEvent::LeaseWait,
        CacheEvent::LeaseWait,
        CacheEvent::InvalidationsSent { keys: 3 },
        CacheEvent::InvalidationsReceived { keys: 7 },
        CacheEvent::InvalidationsReceived { keys: 1 },
        CacheEvent::InvalidationsLost,
        CacheEvent::BusReconnect,
        CacheEvent::Breaker { open: true },
        CacheEvent::Gauge {
            name: "write_behind_queue_depth",
            value: 12,
        },
        // A companion outside the workspace reports its own level.
        CacheEvent::Gauge {
            name: "audit_backlog",
            value: 5,
        },
    ];
    for e in events {
        o.on_event(e);
    }
    let s = parse(&handle.render());
    let op = |o: &str, t: &str, r: &str| ops(&s, "orders", o, t, r);
    assert_eq!(op("get", "l1", "hit"), 2.0);
    assert_eq!(op("get", "l1", "miss"), 1.0);
    assert_eq!(op("get", "l1", "stale"), 1.0);
    assert_eq!(op("get", "l2", "hit"), 1.0);
    assert_eq!(op("get", "l2", "miss"), 2.0);
    assert_eq!(op("get", "l2", "error"), 2.0); // corrupt + timeout
    assert_eq!(op("set", "l2", "hit"), 1.0);
    assert_eq!(op("set", "l2", "error"), 2.0); // set + lease
    assert_eq!(op("delete", "l2", "error"), 1.0);
    assert_eq!(op("set", "l1", "hit"), 1.0);
    assert_eq!(op("delete", "l1", "hit"), 1.0);
    assert_eq!(op("load", "loader", "hit"), 1.0);
    assert_eq!(op("load", "loader", "error"), 1.0);
    assert_eq!(op("refresh", "loader", "hit"), 1.0);
    assert_eq!(op("get", "coalesced", "hit"), 1.0);
    assert_eq!(op("get", "coalesced", "error"), 1.0);
    let total: f64 = all_ops(&s, "orders").values().sum();
    assert_eq!(total, 20.0);

    let c = |name: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![("cache", "orders")];
        labels.extend_from_slice(extra);
        value(&s, name, &labels)
    };
    assert_eq!(c("cache_l2_corrupt_total", &[]), 1.0);
    for (kind, n) in [
        ("connection", 1.0),
        ("timeout", 1.0),
        ("auth", 0.0),
        ("remote", 0.0),
        ("circuit_open", 1.0),
        ("other", 1.0),
    ] {
        assert_eq!(c("cache_l2_errors_total", &[("kind", kind)]), n, "{kind}");
    }
    assert_eq!(c("cache_coalesced_waiters_total", &[]), 2.0);
    assert_eq!(c("cache_early_refreshes_total", &[]), 1.0);
    assert_eq!(c("cache_leases_total", &[("outcome", "acquired")]), 1.0);
    assert_eq!(c("cache_leases_total", &[("outcome", "waited")]), 2.0);
    assert_eq!(
        c("cache_invalidations_total", &[("direction", "sent")]),
        3.0
    );
    assert_eq!(
        c("cache_invalidations_total", &[("direction", "received")]),
        8.0
    );
    assert_eq!(c("cache_invalidations_lost_total", &[]), 1.0);
    assert_eq!(c("cache_bus_reconnects_total", &[]), 1.0);
    // Engine-wide (no `cache` label): the number of open breakers.
    assert_eq!(value(&s, "cache_breaker_open", &[]), 1.0);
    assert_eq!(c("cache_write_behind_queue_depth", &[]), 12.0);
    assert_eq!(c("cache_audit_backlog", &[]), 5.0);

    // Histograms: 2 ms reads land in the 5 ms bucket, not the 1 ms one.
    let get = [("operation", "get"), ("tier", "l2")];
    assert_eq!(c("cache_operation_seconds_count", &get), 3.0);
    let mut le = get.to_vec();
    le.push(("le", "0.001"));
    assert_eq!(c("cache_operation_seconds_bucket", &le), 0.0);
    le[2] = ("le", "0.005");
    assert_eq!(c("cache_operation_seconds_bucket", &le), 3.0);
    assert_eq!(
        c(
            "cache_operation_seconds_count",
            &[("operation", "set"), ("tier", "l2")]
        ),
        1.0
    );
    assert_eq!(c("cache_loader_seconds_count", &[]), 2.0);
    assert_eq!(c("cache_loader_seconds_bucket", &[("le", "0.025")]), 1.0);
    assert_eq!(c("cache_loader_seconds_bucket", &[("le", "0.05")]), 2.0);

    // Gauges follow the latest event.
    o.on_event(CacheEvent::Breaker { open: false });
    o.on_event(CacheEvent::Gauge {
        name: "write_behind_queue_depth",
        value: 0,
    });
    let s = parse(&handle.render());
    assert_eq!(value(&s, "cache_breaker_open", &[]), 0.0);
    assert_eq!(
        value(&s, "cache_write_behind_queue_depth", &[("cache", "orders")]),
        0.0
    );
}

#[test]
fn caches_and_extra_labels_are_separate_series() {
    let (obs, handle) = observer();
    let obs = obs.with_label("engine", "eu");
    let a = obs.for_cache("a");
    let b = obs.for_cache("b");
    a.on_event(CacheEvent::L1Hit);
    b.on_event(CacheEvent::L1Miss);
    b.on_event(CacheEvent::L1Miss);
    let s = parse(&handle.render());
    let get = |cache, result| {
        value(
            &s,
            "cache_operations_total",
            &[
                ("cache", cache),
                ("operation", "get"),
                ("tier", "l1"),
                ("result", result),
                ("engine", "eu"),
            ],
        )
    };
    assert_eq!(get("a", "hit"), 1.0);
    assert_eq!(get("a", "miss"), 0.0);
    assert_eq!(get("b", "hit"), 0.0);
    assert_eq!(get("b", "miss"), 2.0);
    // A second observer for an existing cache name shares its series (same recorder).
    obs.for_cache("a").on_event(CacheEvent::L1Hit);
    let s = parse(&handle.render());
    assert_eq!(
        value(
            &s,
            "cache_operations_total",
            &[
                ("cache", "a"),
                ("operation", "get"),
                ("tier", "l1"),
                ("result", "hit"),
                ("engine", "eu")
            ],
        ),
        2.0
    );
}

#[test]
fn help_lines_describe_the_metrics() {
    let (obs, handle) = observer();
    let _ = obs.for_cache("c");
    let text = handle.render();
    assert!(
        text.contains("# TYPE cache_operations_total counter"),
        "{text}"
    );
    assert!(text.contains("# HELP cache_operations_total "), "{text}");
    assert!(
        text.contains("# TYPE cache_operation_seconds histogram"),
        "{text}"
    );
    assert!(text.contains("# TYPE cache_breaker_open gauge"), "{text}");
}

#[test]
fn l1_gauges_push() {
    let (obs, handle) = observer();
    let g = obs.l1_gauges("shop");
    assert_eq!(g.engine(), "shop");
    g.record(&{
        let mut st = L1Stats::default();
        st.hits = 5;
        st.misses = 1;
        st.evictions = 4;
        st.entries = 10;
        st.bytes = 800;
        st.capacity_bytes = 1000;
        st
    });
    g.record(&{
        let mut st = L1Stats::default();
        st.hits = 9;
        st.misses = 2;
        st.evictions = 6;
        st.entries = 9;
        st.bytes = 700;
        st.capacity_bytes = 1000;
        st
    });
    let s = parse(&handle.render());
    let e = |name: &str| value(&s, name, &[("engine", "shop")]);
    assert_eq!(e("cache_entries"), 9.0);
    assert_eq!(e("cache_bytes"), 700.0);
    assert_eq!(e("cache_capacity_bytes"), 1000.0);
    assert_eq!(e("cache_evictions_total"), 6.0);
}

#[test]
fn l1_gauges_need_a_runtime_and_a_positive_interval() {
    let store: Arc<dyn cache_core::L1Store> =
        Arc::new(cache_tiered::QuickL1::with_capacity_bytes(1 << 20));
    let (obs, _handle) = observer();
    let err = obs
        .l1_gauges("x")
        .spawn(store.clone(), Duration::from_secs(1))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let err = obs
            .l1_gauges("x")
            .spawn(store.clone(), Duration::ZERO)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    });
}

#[test]
fn l1_gauge_task_ends_with_its_store() {
    let (obs, handle) = observer();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store: Arc<dyn cache_core::L1Store> =
            Arc::new(cache_tiered::QuickL1::with_capacity_bytes(4096));
        let task = obs
            .l1_gauges("gone")
            .spawn(store.clone(), Duration::from_millis(5))
            .unwrap();
        // The first reading is taken at once.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let s = parse(&handle.render());
        assert_eq!(
            value(&s, "cache_capacity_bytes", &[("engine", "gone")]),
            store.stats().capacity_bytes as f64
        );
        drop(store);
        for _ in 0..200 {
            if task.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(task.is_finished());
    });
}

#[test]
fn engine_breakers_are_counted_across_the_engine() {
    let (obs, handle) = observer();
    let obs = obs.with_label("engine", "eu");
    let _cache = obs.for_cache("a");
    let open = |h: &PrometheusHandle| {
        value(
            &parse(&h.render()),
            "cache_breaker_open",
            &[("engine", "eu")],
        )
    };
    // Registered with the first cache, at 0.
    assert_eq!(open(&handle), 0.0);
    obs.on_engine_event(CacheEvent::Breaker { open: true }); // L2
    obs.on_engine_event(CacheEvent::Breaker { open: true }); // bus publisher
    assert_eq!(open(&handle), 2.0);
    obs.on_engine_event(CacheEvent::Breaker { open: false });
    assert_eq!(open(&handle), 1.0);
    // A clone shares the series; other engine events are ignored.
    obs.clone()
        .on_engine_event(CacheEvent::Breaker { open: false });
    obs.on_engine_event(CacheEvent::L1Hit);
    assert_eq!(open(&handle), 0.0);
}
