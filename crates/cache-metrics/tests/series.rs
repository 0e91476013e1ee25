//! One test per series of docs/observability.md: drive the operation through a real engine
//! (in-process L2 and bus) and assert the exact value of the series. Each test has a
//! recorder of its own (no global state: they run in parallel).
//!
//! Covered elsewhere: `cache_breaker_open` (tests/breaker.rs, and events.rs), the L1 gauges
//! `cache_entries`, `cache_bytes`, `cache_capacity_bytes`, `cache_evictions_total`
//! (tests/workload.rs and events.rs).
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use cache_metrics::metrics_exporter_prometheus::PrometheusHandle;
use cache_metrics::MetricsObserver;
use cache_tiered::cache_writebehind::WriteBehind;
use cache_tiered::core::{BusConfig, KeySpace, MemoryBus};
use cache_tiered::{Cache, Engine, MemoryStore, MsgPack, RefreshPolicy};
use common::{ops, parse, value, Series};

const HOUR: Duration = Duration::from_secs(3600);

type C = Cache<String, MsgPack>;

struct Setup {
    handle: PrometheusHandle,
    obs: MetricsObserver,
}

fn setup() -> Setup {
    let recorder = cache_metrics::prometheus_builder()
        .unwrap()
        .build_recorder();
    let handle = recorder.handle();
    Setup {
        handle,
        obs: MetricsObserver::with_recorder(Arc::new(recorder)),
    }
}

impl Setup {
    async fn engine(&self, store: &Arc<MemoryStore>) -> Engine {
        cache_tiered::builder("s")
            .with_remote(store.clone())
            .with_observer(Arc::new(self.obs.clone()))
            .build()
            .await
            .unwrap()
    }

    fn scrape(&self) -> BTreeMap<Series, f64> {
        parse(&self.handle.render())
    }
}

fn cache(engine: &Engine, name: &str) -> C {
    engine
        .cache::<String, MsgPack>(name)
        .with_l1_ttl(HOUR)
        .with_l2_ttl(HOUR)
        .build()
        .unwrap()
}

async fn unobserved(store: &Arc<MemoryStore>) -> Engine {
    cache_tiered::builder("s")
        .with_remote(store.clone())
        .build()
        .await
        .unwrap()
}

fn c(s: &BTreeMap<Series, f64>, name: &str, cache: &str, extra: &[(&str, &str)]) -> f64 {
    let mut labels = vec![("cache", cache)];
    labels.extend_from_slice(extra);
    value(s, name, &labels)
}

fn set_seconds(s: &BTreeMap<Series, f64>, cache: &str, le: &str) -> f64 {
    c(
        s,
        "cache_operation_seconds_bucket",
        cache,
        &[("operation", "set"), ("tier", "l2"), ("le", le)],
    )
}

async fn load(cache: &C, key: &str) -> Arc<String> {
    cache
        .get_or_load(key, |k| async move { Ok::<_, io::Error>(format!("v{k}")) })
        .await
        .unwrap()
}

/// `ops{set,l1,hit}`, `ops{set,l2,hit}` and `cache_operation_seconds{set,l2}`: every `set`,
/// `write` and `set_with_tags` writes L2 once, timed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_count_and_time_their_l2_set() {
    let t = setup();
    let store = Arc::new(MemoryStore::new());
    let e = t.engine(&store).await;
    let w = cache(&e, "w");
    // 20 ms per L2 call: each write lands between the 10 ms and 50 ms buckets.
    store.set_latency(Duration::from_millis(20));
    w.set("a", "1".into()).await.unwrap();
    w.set_with_tags("b", "2".into(), &["t"]).await.unwrap();
    w.write("c", "3".into(), |_, _| async { Ok::<_, io::Error>(()) })
        .await
        .unwrap();
    let s = t.scrape();
    assert_eq!(ops(&s, "w", "set", "l1", "hit"), 3.0);
    assert_eq!(ops(&s, "w", "set", "l2", "hit"), 3.0);
    assert_eq!(ops(&s, "w", "set", "l2", "error"), 0.0);
    let count = c(
        &s,
        "cache_operation_seconds_count",
        "w",
        &[("operation", "set"), ("tier", "l2")],
    );
    assert_eq!(count, 3.0);
    // At least 20 ms each: none in the buckets up to 10 ms.
    assert_eq!(set_seconds(&s, "w", "0.01"), 0.0);
    assert_eq!(set_seconds(&s, "w", "+Inf"), 3.0);
    // No read went to L2.
    let get_count = c(
        &s,
        "cache_operation_seconds_count",
        "w",
        &[("operation", "get"), ("tier", "l2")],
    );
    assert_eq!(get_count, 0.0);

    // L2 down: the write is an L2 set error (queued for recovery), not a set.
    store.set_down(true);
    w.set("d", "4".into()).await.unwrap();
    let s = t.scrape();
    assert_eq!(ops(&s, "w", "set", "l1", "hit"), 4.0);
    assert_eq!(ops(&s, "w", "set", "l2", "hit"), 3.0);
    assert_eq!(ops(&s, "w", "set", "l2", "error"), 1.0);
    assert_eq!(
        c(&s, "cache_l2_errors_total", "w", &[("kind", "connection")]),
        1.0
    );
}

/// Fills after a load write L2: single (lease compare-and-set, or plain without leases)
/// and batched (one `L2Set` per key written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_after_loads_are_l2_sets() {
    let t = setup();
    let store = Arc::new(MemoryStore::new());
    let e = t.engine(&store).await;
    let leased = cache(&e, "leased");
    let plain = e
        .cache::<String, MsgPack>("plain")
        .with_l1_ttl(HOUR)
        .with_l2_ttl(HOUR)
        .with_leases(false)
        .build()
        .unwrap();
    for cache in [&leased, &plain] {
        load(cache, "one").await;
        let got = cache
            .get_many_or_load(&["x", "y", "z"], |keys| async move {
                Ok::<_, io::Error>(
                    keys.into_iter()
                        .map(|k| (k.clone(), k))
                        .collect::<HashMap<_, _>>(),
                )
            })
            .await
            .unwrap();
        assert_eq!(got.len(), 3);
    }
    let s = t.scrape();
    for name in ["leased", "plain"] {
        assert_eq!(ops(&s, name, "set", "l2", "hit"), 4.0, "{name}");
        assert_eq!(ops(&s, name, "set", "l1", "hit"), 0.0, "{name}");
        assert_eq!(ops(&s, name, "load", "loader", "hit"), 2.0, "{name}");
        assert_eq!(ops(&s, name, "get", "l2", "miss"), 4.0, "{name}");
        let count = c(
            &s,
            "cache_operation_seconds_count",
            name,
            &[("operation", "set"), ("tier", "l2")],
        );
        assert_eq!(count, 4.0, "{name}");
    }
    let leases = |name, outcome| c(&s, "cache_leases_total", name, &[("outcome", outcome)]);
    assert_eq!(leases("leased", "acquired"), 4.0);
    assert_eq!(leases("plain", "acquired"), 0.0);
}

/// Callers coalesced on one L2 read count as hits (`ops{get,coalesced,hit}`): a burst served
/// from L2 has a hit rate of 100%, not 1/N.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_waiters_count_what_they_received() {
    let t = setup();
    let store = Arc::new(MemoryStore::new());
    let e = t.engine(&store).await;
    let other = unobserved(&store).await;
    let burst = cache(&e, "burst");
    load(&cache(&other, "burst"), "hot").await;
    // Slow L2: all ten callers miss L1 and join the first one's L2 read.
    store.set_latency(Duration::from_millis(50));
    let results = futures_join(10, || load(&burst, "hot")).await;
    assert!(results.iter().all(|v| **v == "vhot"));
    // A burst on a key in neither tier: one load, nine waiters served by it.
    let results = futures_join(10, || load(&burst, "cold")).await;
    assert!(results.iter().all(|v| **v == "vcold"));
    // A burst whose load fails: nine waiters get the error.
    let failed = futures_join(10, || {
        burst.get_or_load("bad", |_| async {
            Err::<String, _>(io::Error::other("db down"))
        })
    })
    .await;
    assert!(failed.iter().all(|r| r.is_err()));

    let s = t.scrape();
    let op = |o, tier, r| ops(&s, "burst", o, tier, r);
    assert_eq!(op("get", "l1", "miss"), 30.0);
    assert_eq!(op("get", "l1", "hit"), 0.0);
    assert_eq!(op("get", "l2", "hit"), 1.0);
    assert_eq!(op("get", "l2", "miss"), 2.0);
    assert_eq!(op("get", "coalesced", "hit"), 18.0);
    assert_eq!(op("get", "coalesced", "error"), 9.0);
    assert_eq!(op("load", "loader", "hit"), 1.0);
    assert_eq!(op("load", "loader", "error"), 1.0);
    assert_eq!(c(&s, "cache_coalesced_waiters_total", "burst", &[]), 27.0);
    // The hit rate of the documented query: (L1 + L2 + coalesced hits) / L1 lookups.
    let hits = op("get", "l1", "hit") + op("get", "l2", "hit") + op("get", "coalesced", "hit");
    assert_eq!(
        hits / (op("get", "l1", "hit") + op("get", "l1", "miss")),
        19.0 / 30.0
    );
}

/// The same in a batch: keys joined by `get_many_or_load` count as what they received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_batch_waiters_count_what_they_received() {
    let t = setup();
    let store = Arc::new(MemoryStore::new());
    let e = t.engine(&store).await;
    let b = cache(&e, "batch");
    // Slow L2: the single load of `k` is still in flight when the batch asks for it.
    store.set_latency(Duration::from_millis(200));
    let single = load(&b, "k");
    let batch = async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        b.get_many_or_load(&["k", "j"], |keys| async move {
            Ok::<_, io::Error>(
                keys.into_iter()
                    .map(|k| (k.clone(), format!("v{k}")))
                    .collect::<HashMap<_, _>>(),
            )
        })
        .await
        .unwrap()
    };
    let (one, many) = bounded(async { tokio::join!(single, batch) }).await;
    assert_eq!(*one, "vk");
    assert_eq!(many[0].as_deref().map(String::as_str), Some("vk"));
    let s = t.scrape();
    assert_eq!(ops(&s, "batch", "get", "l1", "miss"), 3.0);
    assert_eq!(ops(&s, "batch", "get", "l2", "miss"), 2.0);
    assert_eq!(ops(&s, "batch", "get", "coalesced", "hit"), 1.0);
    assert_eq!(c(&s, "cache_coalesced_waiters_total", "batch", &[]), 1.0);
}

/// `ops{get,l1,hit|miss}`, `ops{get,l2,hit|miss|error}`, `cache_l2_corrupt_total`,
/// `cache_l2_errors_total{kind}` and `cache_operation_seconds{get,l2}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_count_per_tier() {
    let t = setup();
    let store = Arc::new(MemoryStore::new());
    let e = t.engine(&store).await;
    let r = cache(&e, "r");
    cache(&unobserved(&store).await, "r")
        .set("in_l2", "x".into())
        .await
        .unwrap();
    assert!(r.get("nowhere").await.unwrap().is_none()); // L1 miss, L2 miss
    assert!(r.get("in_l2").await.unwrap().is_some()); // L1 miss, L2 hit
    assert!(r.get("in_l2").await.unwrap().is_some()); // L1 hit
    let full = KeySpace::new("s", "r", None).unwrap().full("bad").unwrap();
    store.put_raw(&full, b"garbage".to_vec(), HOUR);
    assert!(r.get("bad").await.unwrap().is_none()); // L1 miss, L2 corrupt
    store.set_down(true);
    assert!(r.get("down").await.unwrap().is_none()); // L1 miss, L2 error
    store.set_down(false);
    let s = t.scrape();
    assert_eq!(ops(&s, "r", "get", "l1", "hit"), 1.0);
    assert_eq!(ops(&s, "r", "get", "l1", "miss"), 4.0);
    assert_eq!(ops(&s, "r", "get", "l2", "hit"), 1.0);
    assert_eq!(ops(&s, "r", "get", "l2", "miss"), 1.0);
    assert_eq!(ops(&s, "r", "get", "l2", "error"), 2.0);
    assert_eq!(c(&s, "cache_l2_corrupt_total", "r", &[]), 1.0);
    for kind in cache_metrics::names::ERROR_KINDS {
        let want = if kind == "connection" { 1.0 } else { 0.0 };
        assert_eq!(
            c(&s, "cache_l2_errors_total", "r", &[("kind", kind)]),
            want,
            "{kind}"
        );
    }
    // Timed: the hit and the miss; not the corrupt read (`L2Corrupt` carries no latency)
    // nor the error.
    let get = [("operation", "get"), ("tier", "l2")];
    assert_eq!(c(&s, "cache_operation_seconds_count", "r", &get), 2.0);
}

/// `ops{delete,l1,hit}` and `ops{delete,l2,error}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_count_deletes() {
    let t = setup();
    let store = Arc::new(MemoryStore::new());
    let e = t.engine(&store).await;
    let d = cache(&e, "d");
    d.invalidate("a").await.unwrap();
    store.set_down(true);
    d.invalidate("b").await.unwrap(); // queued for recovery
    store.set_down(false);
    let s = t.scrape();
    assert_eq!(ops(&s, "d", "delete", "l1", "hit"), 2.0);
    assert_eq!(ops(&s, "d", "delete", "l2", "error"), 1.0);
}

/// `ops{load,loader,hit|error}` and `cache_loader_seconds`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_are_counted_and_timed() {
    let t = setup();
    let store = Arc::new(MemoryStore::new());
    let e = t.engine(&store).await;
    let l = cache(&e, "l");
    l.get_or_load("a", |_| async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        Ok::<_, io::Error>("a".to_owned())
    })
    .await
    .unwrap();
    let err = l
        .get_or_load("b", |_| async { Err::<String, _>(io::Error::other("no")) })
        .await;
    assert!(err.is_err());
    let s = t.scrape();
    assert_eq!(ops(&s, "l", "load", "loader", "hit"), 1.0);
    assert_eq!(ops(&s, "l", "load", "loader", "error"), 1.0);
    assert_eq!(c(&s, "cache_loader_seconds_count", "l", &[]), 2.0);
    // The 600 ms load is above the 0.5 s bucket; the failed one (at once) below it.
    assert_eq!(
        c(&s, "cache_loader_seconds_bucket", "l", &[("le", "0.5")]),
        1.0
    );
    assert_eq!(
        c(&s, "cache_loader_seconds_bucket", "l", &[("le", "+Inf")]),
        2.0
    );
}

/// `ops{get,l1,stale}`: fail-safe serves an expired value when the loader fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_values_served_are_counted() {
    let t = setup();
    let store = Arc::new(MemoryStore::new());
    let e = t.engine(&store).await;
    let f = e
        .cache::<String, MsgPack>("f")
        .with_l1_ttl(Duration::from_millis(50))
        .with_l2_ttl(Duration::from_millis(50))
        .with_jitter(0.0)
        .with_fail_safe(HOUR, Duration::from_millis(1))
        .build()
        .unwrap();
    load(&f, "a").await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    let v = f
        .get_or_load("a", |_| async {
            Err::<String, _>(io::Error::other("db down"))
        })
        .await
        .unwrap();
    assert_eq!(*v, "va");
    let s = t.scrape();
    assert_eq!(ops(&s, "f", "get", "l1", "stale"), 1.0);
    assert_eq!(ops(&s, "f", "load", "loader", "error"), 1.0);
}

/// Refreshes every time it is asked.
#[derive(Debug)]
struct Always;

impl RefreshPolicy for Always {
    fn horizon(&self, _delta: Duration) -> Duration {
        HOUR
    }

    fn should_refresh(&self, _remaining: Duration, _delta: Duration, _draw: f64) -> bool {
        true
    }
}

/// `ops{refresh,loader,hit}` and `cache_early_refreshes_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refreshes_are_counted() {
    let t = setup();
    let store = Arc::new(MemoryStore::new());
    let e = t.engine(&store).await;
    let r = e
        .cache::<String, MsgPack>("refresh")
        .with_l1_ttl(HOUR)
        .with_l2_ttl(HOUR)
        .with_refresh_policy(Arc::new(Always))
        .build()
        .unwrap();
    load(&r, "a").await; // a full miss: no early refresh
    load(&r, "a").await; // an L1 hit inside the horizon: one early refresh
    for _ in 0..200 {
        if r.in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = t.scrape();
    assert_eq!(ops(&s, "refresh", "refresh", "loader", "hit"), 1.0);
    assert_eq!(c(&s, "cache_early_refreshes_total", "refresh", &[]), 1.0);
    assert_eq!(ops(&s, "refresh", "get", "l1", "hit"), 1.0);
}

/// `cache_leases_total{outcome=waited}`: this instance waits for another one's fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_waits_are_counted() {
    let t = setup();
    let store = Arc::new(MemoryStore::new());
    let e = t.engine(&store).await;
    let other = unobserved(&store).await;
    let mine = cache(&e, "lw");
    let theirs = cache(&other, "lw");
    let slow = theirs.get_or_load("k", |_| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok::<_, io::Error>("theirs".to_owned())
    });
    let wait = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        load(&mine, "k").await
    };
    let (a, b) = bounded(async { tokio::join!(slow, wait) }).await;
    assert_eq!(*a.unwrap(), "theirs");
    assert_eq!(*b, "theirs");
    let s = t.scrape();
    let leases = |outcome| c(&s, "cache_leases_total", "lw", &[("outcome", outcome)]);
    assert_eq!(leases("acquired"), 0.0);
    assert_eq!(leases("waited"), 1.0);
    assert_eq!(ops(&s, "lw", "load", "loader", "hit"), 0.0);
    assert_eq!(ops(&s, "lw", "get", "l2", "hit"), 1.0);
}

/// `cache_invalidations_total{direction}` and `cache_invalidations_lost_total` over an
/// in-process bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_sent_received_and_lost() {
    let (a_t, b_t) = (setup(), setup());
    let store = Arc::new(MemoryStore::new());
    let bus = MemoryBus::new();
    let a_bus = bus.attach();
    let build = |t: &Setup, h: Arc<cache_tiered::core::MemoryBusHandle>| {
        cache_tiered::builder("s")
            .with_remote(store.clone())
            .with_bus_transport(h)
            // Short heartbeats: a lost batch is noticed within 100 ms even when nothing
            // follows it.
            .with_bus_config(BusConfig::default().with_heartbeat(Duration::from_millis(100)))
            .with_observer(Arc::new(t.obs.clone()))
            .build()
    };
    let a = build(&a_t, a_bus.clone()).await.unwrap();
    let b = build(&b_t, bus.attach()).await.unwrap();
    let (ca, cb) = (cache(&a, "inv"), cache(&b, "inv"));
    let received = |t: &Setup| {
        c(
            &t.scrape(),
            "cache_invalidations_total",
            "inv",
            &[("direction", "received")],
        )
    };
    let lost = |t: &Setup| c(&t.scrape(), "cache_invalidations_lost_total", "inv", &[]);
    // Until `b`'s subscription is live, `a`'s messages reach nobody: send until one arrives.
    let mut warm_up = 0.0;
    for _ in 0..500 {
        ca.invalidate("warm").await.unwrap();
        warm_up += 1.0;
        if received(&b_t) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Warm-up messages still in flight land before the counts are taken.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (base_received, base_lost) = (received(&b_t), lost(&b_t));
    assert!(base_received >= 1.0, "b never heard a");
    ca.set("x", "1".into()).await.unwrap();
    ca.invalidate("y").await.unwrap();
    wait_until(|| received(&b_t) == base_received + 2.0).await;
    // One message lost: the next message or heartbeat shows the gap.
    a_bus.drop_next(1);
    ca.invalidate("z").await.unwrap();
    wait_until(|| lost(&b_t) > base_lost).await;
    let s = a_t.scrape();
    let sent = c(
        &s,
        "cache_invalidations_total",
        "inv",
        &[("direction", "sent")],
    );
    // Counted when published, whether or not anyone heard it.
    assert_eq!(sent, warm_up + 3.0);
    assert_eq!(lost(&b_t), base_lost + 1.0);
    assert_eq!(lost(&a_t), 0.0);
    assert_eq!(c(&s, "cache_bus_reconnects_total", "inv", &[]), 0.0);
    drop(cb);
}

/// `cache_write_behind_queue_depth` (memory mode): up on enqueue, down once a batch is
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_depth_follows_the_queue() {
    let t = setup();
    let store = Arc::new(MemoryStore::new());
    let e = t.engine(&store).await;
    let wb_cache = cache(&e, "wb");
    let (open_tx, open_rx) = tokio::sync::watch::channel(false);
    let wb = WriteBehind::builder(wb_cache, move |batch: Vec<(String, Arc<String>)>| {
        let mut open = open_rx.clone();
        async move {
            let _ = open.wait_for(|o| *o).await;
            let _ = batch;
            Ok::<_, io::Error>(())
        }
    })
    .with_max_batch(10)
    .with_max_age(HOUR)
    .build()
    .await
    .unwrap();
    let depth = || c(&t.scrape(), "cache_write_behind_queue_depth", "wb", &[]);
    assert_eq!(depth(), 0.0);
    for k in ["a", "b", "c"] {
        wb.write_behind(k, k.to_owned()).await.unwrap();
    }
    // A second write of a waiting key replaces its value: no new entry.
    wb.write_behind("a", "again".into()).await.unwrap();
    assert_eq!(depth(), 3.0);
    assert_eq!(wb.depth().await.unwrap(), 3);
    open_tx.send_replace(true);
    bounded(wb.flush()).await.unwrap();
    wait_until(|| depth() == 0.0).await;
    bounded(wb.shutdown()).await.unwrap();
}

async fn wait_until(mut f: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(f(), "condition not met within 10 s");
}

/// Run `n` calls of `f` concurrently on this task (all polled before any finishes).
async fn futures_join<F, Fut>(n: usize, f: F) -> Vec<Fut::Output>
where
    F: Fn() -> Fut,
    Fut: std::future::Future,
{
    bounded(futures::future::join_all((0..n).map(|_| f()))).await
}

/// `fut`, failing the test if it takes over 30 s (a hang shows as a failure, named).
async fn bounded<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .expect("no answer within 30 s")
}
