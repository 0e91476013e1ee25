//! A scripted workload through a real engine, then the exact count of every series in the
//! rendered Prometheus text.
//!
//! One global recorder per process: this binary installs it once (`install_recorder_only`)
//! and runs one workload; the other tests here use their own recorders.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_metrics::MetricsObserver;
use cache_tiered::core::KeySpace;
use cache_tiered::{Cache, MemoryStore, MsgPack};
use common::{all_ops, ops, parse, value};

const HOUR: Duration = Duration::from_secs(3600);

async fn load_ok(key: &str, cache: &Cache<String, MsgPack>) -> Arc<String> {
    cache
        .get_or_load(key, |k| async move {
            Ok::<_, io::Error>(format!("value of {k}"))
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_workload_gives_exact_counts() {
    let handle = cache_metrics::install_recorder_only().unwrap();
    // Only one global recorder per process.
    assert!(cache_metrics::install_recorder_only().is_err());

    let store = Arc::new(MemoryStore::new());
    let a = cache_tiered::builder("m")
        .with_remote(store.clone())
        .with_l1_capacity_bytes(1 << 20)
        .with_observer(Arc::new(MetricsObserver::new()))
        .build()
        .await
        .unwrap();
    // A second instance sharing the L2, not observed: it fills L2 for `a`'s L2 hits.
    let b = cache_tiered::builder("m")
        .with_remote(store.clone())
        .build()
        .await
        .unwrap();
    let users: Cache<String, MsgPack> = a
        .cache::<String, MsgPack>("users")
        .with_l1_ttl(HOUR)
        .with_l2_ttl(HOUR)
        .build()
        .unwrap();
    let users_b: Cache<String, MsgPack> = b
        .cache::<String, MsgPack>("users")
        .with_l1_ttl(HOUR)
        .with_l2_ttl(HOUR)
        .build()
        .unwrap();

    // Every series exists, at zero, as soon as the cache is built.
    let before = parse(&handle.render());
    let zero = all_ops(&before, "users");
    assert_eq!(zero.len(), 16, "{zero:#?}");
    assert!(zero.values().all(|v| *v == 0.0), "{zero:#?}");

    // 1. Three loads: L1 miss, L2 miss, lease taken, loader, each.
    for k in ["k1", "k2", "k3"] {
        assert_eq!(*load_ok(k, &users).await, format!("value of {k}"));
    }
    // 2. Ten L1 hits.
    for _ in 0..10 {
        assert!(users.get("k1").await.unwrap().is_some());
    }
    // 3. Two L2 hits: the other instance loads, this one reads.
    for k in ["k4", "k5"] {
        load_ok(k, &users_b).await;
        assert_eq!(
            *users.get(k).await.unwrap().unwrap(),
            format!("value of {k}")
        );
    }
    // 4. One unreadable L2 value: read as a miss.
    let full = KeySpace::new("m", "users", None)
        .unwrap()
        .full("k6")
        .unwrap();
    store.put_raw(&full, b"not a tiercache value".to_vec(), HOUR);
    assert!(users.get("k6").await.unwrap().is_none());
    // 5. One loader error.
    let err = users
        .get_or_load("k7", |_| async {
            Err::<String, _>(io::Error::other("db down"))
        })
        .await;
    assert!(err.is_err());
    // 6. A write and an invalidation.
    users.set("k8", "written".to_owned()).await.unwrap();
    users.invalidate("k8").await.unwrap();
    // 7. L2 down for one read: an L2 error, answered as a miss.
    store.set_down(true);
    assert!(users.get("k9").await.unwrap().is_none());
    store.set_down(false);
    // 8. Two callers of one key at once: one load, one coalesced waiter. Both futures are
    //    polled (the first registers the load) before the loader is released.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let first = users.get_or_load("k10", move |_| async move {
        let _ = rx.await;
        Ok::<_, io::Error>("shared".to_owned())
    });
    let second = users.get_or_load("k10", |_| async {
        Ok::<_, io::Error>("never loaded".to_owned())
    });
    let release = async move {
        tokio::task::yield_now().await;
        let _ = tx.send(());
    };
    let (r1, r2, ()) = tokio::join!(first, second, release);
    assert_eq!(*r1.unwrap(), "shared");
    assert_eq!(*r2.unwrap(), "shared");

    let s = parse(&handle.render());
    let expected: BTreeMap<(String, String, String), f64> = [
        // (operation, tier, result), count
        (("get", "l1", "hit"), 10.0),
        // 3 loads + 2 L2 hits + corrupt + loader error + L2 down + 2 callers of k10
        (("get", "l1", "miss"), 10.0),
        (("get", "l1", "stale"), 0.0),
        (("get", "l2", "hit"), 2.0),
        // 3 loads + loader error + k10
        (("get", "l2", "miss"), 5.0),
        // corrupt + L2 down
        (("get", "l2", "error"), 2.0),
        // the second caller of k10, served by the first one's load
        (("get", "coalesced", "hit"), 1.0),
        (("get", "coalesced", "error"), 0.0),
        (("set", "l1", "hit"), 1.0),
        // the fills of k1, k2, k3 and k10, and the `set` of k8
        (("set", "l2", "hit"), 5.0),
        (("set", "l2", "error"), 0.0),
        (("delete", "l1", "hit"), 1.0),
        (("delete", "l2", "error"), 0.0),
        // k1, k2, k3, k10
        (("load", "loader", "hit"), 4.0),
        (("load", "loader", "error"), 1.0),
        (("refresh", "loader", "hit"), 0.0),
    ]
    .into_iter()
    .map(|((o, t, r), v)| ((o.to_owned(), t.to_owned(), r.to_owned()), v))
    .collect();
    assert_eq!(all_ops(&s, "users"), expected);
    assert_eq!(ops(&s, "users", "get", "l1", "hit"), 10.0);

    let c = |name: &str| value(&s, name, &[("cache", "users")]);
    assert_eq!(c("cache_l2_corrupt_total"), 1.0);
    assert_eq!(c("cache_coalesced_waiters_total"), 1.0);
    assert_eq!(c("cache_early_refreshes_total"), 0.0);
    assert_eq!(c("cache_invalidations_lost_total"), 0.0);
    assert_eq!(c("cache_bus_reconnects_total"), 0.0);
    assert_eq!(value(&s, "cache_breaker_open", &[]), 0.0);
    assert_eq!(c("cache_write_behind_queue_depth"), 0.0);
    // every load but none of the other callers' (k1, k2, k3, k7, k10)
    assert_eq!(c("cache_loader_seconds_count"), 5.0);
    let leases = |outcome| {
        value(
            &s,
            "cache_leases_total",
            &[("cache", "users"), ("outcome", outcome)],
        )
    };
    assert_eq!(leases("acquired"), 5.0);
    assert_eq!(leases("waited"), 0.0);
    for direction in ["sent", "received"] {
        let v = value(
            &s,
            "cache_invalidations_total",
            &[("cache", "users"), ("direction", direction)],
        );
        assert_eq!(v, 0.0, "{direction}");
    }
    for kind in cache_metrics::names::ERROR_KINDS {
        let v = value(
            &s,
            "cache_l2_errors_total",
            &[("cache", "users"), ("kind", kind)],
        );
        assert_eq!(v, if kind == "connection" { 1.0 } else { 0.0 }, "{kind}");
    }

    // Histograms, with the configured buckets: every L2 read with a latency is counted.
    let secs = |suffix: &str, op: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![("cache", "users"), ("operation", op), ("tier", "l2")];
        labels.extend_from_slice(extra);
        value(&s, &format!("cache_operation_seconds{suffix}"), &labels)
    };
    assert_eq!(secs("_count", "get", &[]), 7.0);
    assert_eq!(secs("_count", "set", &[]), 5.0);
    for le in ["0.0005", "0.001", "0.005", "0.01", "0.05", "0.1"] {
        assert!(secs("_bucket", "get", &[("le", le)]) <= 7.0, "{le}");
    }
    assert_eq!(secs("_bucket", "get", &[("le", "+Inf")]), 7.0);
    let le_bounds: Vec<&str> = s
        .keys()
        .filter(|(n, l)| {
            n == "cache_operation_seconds_bucket"
                && l.get("operation").map(String::as_str) == Some("get")
        })
        .filter_map(|(_, l)| l.get("le").map(String::as_str))
        .collect();
    assert_eq!(le_bounds.len(), 7, "{le_bounds:?}");
    assert!(s.contains_key(&common::series(
        "cache_loader_seconds_bucket",
        &[("cache", "users"), ("le", "10")]
    )));

    // The unobserved instance recorded nothing: its loads are not in the counts above.
    let caches: Vec<&String> = s.keys().filter_map(|(_, l)| l.get("cache")).collect();
    assert!(caches.iter().all(|c| *c == "users"));

    // L1 gauges, polled from the engine.
    let task = cache_metrics::spawn_l1_gauges(&a, Duration::from_millis(10)).unwrap();
    let stats = a.l1_stats();
    let deadline = Instant::now() + Duration::from_secs(10);
    let g = loop {
        let g = parse(&handle.render());
        // The series exist (at 0) from the spawn on; the first reading follows at once.
        let cap = g.get(&common::series("cache_capacity_bytes", &[("engine", "m")]));
        if cap == Some(&(stats.capacity_bytes as f64)) {
            break g;
        }
        assert!(Instant::now() < deadline, "the L1 gauges never appeared");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let e = |name: &str| value(&g, name, &[("engine", "m")]);
    // k1..k5 and k10 live in L1; k6, k7, k9 were never filled, k8 was invalidated.
    assert_eq!(stats.entries, 6);
    assert_eq!(e("cache_entries"), 6.0);
    assert_eq!(e("cache_bytes"), stats.bytes as f64);
    assert!(stats.bytes > 0 && stats.capacity_bytes > 0);
    assert_eq!(e("cache_capacity_bytes"), stats.capacity_bytes as f64);
    assert_eq!(e("cache_evictions_total"), 0.0);
    task.stop();
}
