//! The behaviour suite against a real Redis Sentinel group (a master, a replica and three
//! sentinels, started by cache-testkit, one per test binary), plus what only a sentinel group
//! can show: SIGKILL of the master under load on a private group (reads and writes back within
//! the sentinels' failover time + 1 s, no value read that was never written, the bus
//! resubscribed on the new master and L1 flushed for the loss), and clear errors when no
//! sentinel names a master.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_testkit::{shared_sentinel, RedisSentinel};
use cache_tiered::{ErrorKind, RedisConfig, RemoteStore, SentinelConfig, SentinelStore};
use common::{Backend, TestResult};

const MAX_VALUE: usize = 1024 * 1024;

type Users = cache_tiered::Cache<common::User, cache_tiered::MsgPack>;
/// What a failover may take beyond the sentinels' down-after period on a loaded 2-core
/// machine (ODOWN agreement, leader election, promotion; measured 1.2-1.5 s here).
const FAILOVER_MARGIN: Duration = Duration::from_secs(5);

fn config(group: &RedisSentinel, response_timeout: Duration) -> SentinelConfig {
    SentinelConfig::builder()
        .with_sentinels(group.sentinel_urls())
        .with_master_name(group.master_name())
        .with_redis(
            RedisConfig::builder()
                .with_max_value_size(MAX_VALUE)
                .with_response_timeout(response_timeout)
                .build()
                .expect("valid redis config"),
        )
        .build()
        .expect("valid sentinel config")
}

async fn connect(group: &RedisSentinel, response_timeout: Duration) -> SentinelStore {
    SentinelStore::connect(config(group, response_timeout))
        .await
        .expect("the sentinels name a reachable master")
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> cache_testkit::Result<T> + Send + 'static,
) -> Result<T, Box<dyn std::error::Error + Send + Sync>> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

/// The group shared by every test of this binary; each test uses its own key prefix.
struct Shared;

#[async_trait::async_trait]
impl Backend for Shared {
    async fn store(&self) -> Arc<dyn RemoteStore> {
        let group = shared_sentinel().expect("shared sentinel group");
        Arc::new(connect(group, Duration::from_millis(500)).await)
    }

    async fn set_down(&self, _down: bool) {
        unreachable!("the shared sentinel group is never taken down; use a private one");
    }
}

async fn shared() -> Result<Shared, cache_testkit::Error> {
    // Started off the runtime's worker threads (it blocks for a few seconds).
    tokio::task::spawn_blocking(|| shared_sentinel().map(|_| ()))
        .await
        .map_err(|e| cache_testkit::Error::new(e.to_string()))??;
    Ok(Shared)
}

behaviour_suite!(shared);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_uses_the_master_the_sentinels_name() -> TestResult {
    shared().await?;
    let group = shared_sentinel()?;
    let store = connect(group, Duration::from_millis(500)).await;
    let master = blocking(|| shared_sentinel()?.master()).await?;
    assert_eq!(store.master(), master.to_string());
    assert_eq!(store.switches(), 0);
    assert_eq!(store.kind(), "redis-sentinel");
    let key = format!("{}:k", common::unique_prefix("which-master"));
    store
        .set(&key, b"v".to_vec(), Duration::from_secs(30))
        .await?;
    let on_master = group.node(master)?.cli(&["GET", key.as_str()])?;
    assert_eq!(on_master.trim(), "v");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_usable_master_is_a_clear_connection_error() -> TestResult {
    shared().await?;
    let group = shared_sentinel()?;
    let mut unknown = config(group, Duration::from_millis(300));
    unknown.master_name = "no-such-master".to_owned();
    let err = SentinelStore::connect(unknown)
        .await
        .expect_err("no master");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.message().contains("no-such-master"), "{err}");
    let port = cache_testkit::free_port()?;
    let nobody = SentinelConfig::builder()
        .with_sentinel(format!("redis://127.0.0.1:{port}"))
        .with_sentinel_credentials(None, "hunter2")
        .with_master_name(group.master_name())
        .build()?;
    let err = SentinelStore::connect(nobody)
        .await
        .expect_err("no sentinel");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.message().contains(&port.to_string()), "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_reach_other_engines_over_the_masters_pubsub() -> TestResult {
    shared().await?;
    let group = shared_sentinel()?;
    let p = common::unique_prefix("sentinel-bus");
    let mut caches = Vec::new();
    for _ in 0..2 {
        let engine = cache_tiered::builder(p.as_str())
            .with_sentinel(config(group, Duration::from_millis(500)))
            .build()
            .await?;
        caches.push((common::users(&engine)?, engine));
    }
    let (a, b) = (&caches[0].0, &caches[1].0);
    a.set("1", common::user(1)).await?;
    invalidation_reaches(a, b, "1").await
}

/// B caches `key` (already written by A), A invalidates it, and B's copy is dropped soon.
async fn invalidation_reaches(a: &Users, b: &Users, key: &str) -> TestResult {
    // Let A's own announcement of its write pass (it would drop B's copy) and both
    // subscriptions settle, then cache the value in B.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // (After a failover A's announcements may still be late: cache again until it sticks.)
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        assert!(b.get(key).await?.is_some());
        tokio::time::sleep(Duration::from_millis(50)).await;
        if b.get_local(key).is_some() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("B never kept {key} in L1").into());
        }
    }
    a.invalidate(key).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.get_local(key).is_some() {
        if Instant::now() > deadline {
            return Err(format!("A's invalidation of {key} never reached B").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// `{key}={seq}`: every value names its key and a sequence number that only grows.
fn value(key: &str, seq: u64) -> Vec<u8> {
    format!("{key}={seq}").into_bytes()
}

/// Issue 15: SIGKILL of the master under concurrent reads and writes. The sentinels promote
/// the replica; the store follows (reads and writes work again within the failover time the
/// sentinels took + 1 s), no read returns a value that was never written for its key, and
/// the bus of two engines resubscribes on the new master, with L1 flushed for the loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_master_under_load() -> TestResult {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_max_level(tracing::Level::INFO)
        .try_init();
    let started = Instant::now();
    let group = Arc::new(blocking(RedisSentinel::start).await?);
    let response_timeout = Duration::from_millis(300);
    let store = connect(&group, response_timeout).await;
    let old_master = store.master();

    // Two engines with the sentinel bus; B holds a value in L1.
    let p = common::unique_prefix("sentinel-failover");
    let mut engines = Vec::new();
    for _ in 0..2 {
        let engine = cache_tiered::builder(p.as_str())
            .with_sentinel(config(&group, response_timeout))
            .build()
            .await?;
        engines.push(engine);
    }
    let (a, b) = (common::users(&engines[0])?, common::users(&engines[1])?);
    a.set("1", common::user(1)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.get("1").await?.as_deref(), Some(&common::user(1)));
    assert!(b.get_local("1").is_some());

    // Load: 4 writers, each owning 8 keys (values `{key}={seq}`, seq growing; `written` is
    // raised before each write is sent, so it bounds what any read may see), and 2 readers
    // reading every key, singly and in batches.
    let keys: Vec<String> = (0..32).map(|i| format!("{p}:load:{i}")).collect();
    let written: Arc<Vec<AtomicU64>> = Arc::new(keys.iter().map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(Mutex::new(Vec::<String>::new()));
    let (ok, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let last_error = Arc::new(Mutex::new(None::<(Instant, String)>));
    let record = {
        let (ok, errors, last_error) = (ok.clone(), errors.clone(), last_error.clone());
        move |r: Result<(), cache_tiered::Error>| match r {
            Ok(()) => {
                ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                errors.fetch_add(1, Ordering::Relaxed);
                *last_error.lock().unwrap() =
                    Some((Instant::now(), format!("{}: {}", e.kind(), e.message())));
            }
        }
    };
    let check = {
        let (keys, written, wrong) = (keys.clone(), written.clone(), wrong.clone());
        move |i: usize, got: Option<Vec<u8>>| {
            let Some(got) = got else { return };
            let text = String::from_utf8_lossy(&got).into_owned();
            let seq = text
                .strip_prefix(&format!("{}=", keys[i]))
                .and_then(|s| s.parse::<u64>().ok());
            // Read after the read returned: anything written so far is allowed.
            let max = written[i].load(Ordering::SeqCst);
            if !seq.is_some_and(|s| s >= 1 && s <= max) {
                wrong
                    .lock()
                    .unwrap()
                    .push(format!("{}: {text} (written up to {max})", keys[i]));
            }
        }
    };
    let mut tasks = Vec::new();
    for w in 0..4usize {
        let (store, keys, written, stop, record) = (
            store.clone(),
            keys.clone(),
            written.clone(),
            stop.clone(),
            record.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let i = w * 8 + n % 8;
                n += 1;
                let seq = written[i].fetch_add(1, Ordering::SeqCst) + 1;
                record(
                    store
                        .set(&keys[i], value(&keys[i], seq), Duration::from_secs(60))
                        .await,
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for r in 0..2usize {
        let (store, keys, stop, record, check) = (
            store.clone(),
            keys.clone(),
            stop.clone(),
            record.clone(),
            check.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = r * 5;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let i = n % keys.len();
                if n % 2 == 0 {
                    let got = store.get(&keys[i]).await;
                    if let Ok(v) = &got {
                        check(i, v.clone());
                    }
                    record(got.map(|_| ()));
                } else {
                    let window: Vec<usize> = (0..8).map(|j| (i + j * 4) % keys.len()).collect();
                    let names: Vec<String> = window.iter().map(|j| keys[*j].clone()).collect();
                    let got = store.get_many(&names).await;
                    if let Ok(values) = &got {
                        for (j, v) in window.iter().zip(values) {
                            check(*j, v.clone());
                        }
                    }
                    record(got.map(|_| ()));
                }
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kill = ok.load(Ordering::Relaxed);

    // SIGKILL the master; the test kit watches the sentinels, a probe watches the store.
    let killed_at = Instant::now();
    let killed = blocking({
        let group = group.clone();
        move || group.kill_master()
    })
    .await?;
    assert_eq!(killed.to_string(), old_master);
    let failover = tokio::task::spawn_blocking({
        let group = group.clone();
        move || group.wait_failover(killed, Duration::from_secs(30))
    });
    let probe = format!("{p}:probe");
    let recovered = loop {
        let ok = store
            .set(&probe, b"p".to_vec(), Duration::from_secs(60))
            .await
            .is_ok()
            && store.get(&probe).await.ok().flatten().is_some();
        if ok {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "the store never reached a new master"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (new_master, failover_took) = failover.await??;
    // Keep the load on a while after recovery: everything must succeed now.
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let last_error = last_error.lock().unwrap().clone();
    let last_error_after = last_error
        .as_ref()
        .map(|(at, _)| at.duration_since(killed_at));

    // The bus: B's L1 was flushed for the loss, B resubscribed on the new master, and an
    // invalidation from A reaches B again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while engines[1].bus_stats().map_or(0, |s| s.reconnects) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b_stats = engines[1].bus_stats().expect("B has a bus");
    let flushed = b.get_local("1").is_none();
    // A write may need the engine's breaker (opened by failures during the failover) to
    // close: retry for a short while.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut a_writes = a.set("2", common::user(2)).await;
    while a_writes.is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        a_writes = a.set("2", common::user(2)).await;
    }
    let reaches = match &a_writes {
        Ok(()) => invalidation_reaches(&a, &b, "2").await,
        Err(e) => Err(format!("A cannot write after the failover: {e}").into()),
    };

    let wrong = wrong.lock().unwrap().clone();
    let report = format!(
        "sentinel failover: master {killed} SIGKILLed, sentinels agreed on {new_master} after \
         {failover_took:?} (down-after {:?}); store reads and writes back {recovered:?} after \
         the kill; last load error {last_error_after:?} after the kill ({:?})\n\
         load: {} ok ({before_kill} before the kill), {} errors, {} wrong values; store \
         switches {}, sentinel lookups {}\n\
         bus of B: {b_stats:?}, L1 flushed: {flushed}; whole test {:?}",
        group.down_after(),
        last_error.as_ref().map(|(_, m)| m.as_str()),
        ok.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        wrong.len(),
        store.switches(),
        store.sentinel_lookups(),
        started.elapsed(),
    );
    eprintln!("{report}");
    assert!(wrong.is_empty(), "{report}\n{wrong:?}");
    assert!(b_stats.reconnects >= 1, "B's bus never came back\n{report}");
    if let Err(e) = reaches {
        panic!("after the failover: {e}\n{report}");
    }
    assert_eq!(store.master(), new_master.to_string(), "{report}");
    assert_eq!(store.switches(), 1, "{report}");
    assert!(flushed, "B's L1 kept a value across the loss\n{report}");
    assert!(b_stats.losses >= 1, "{report}");
    let bound = group.down_after() + FAILOVER_MARGIN + Duration::from_secs(1);
    assert!(
        recovered <= bound,
        "back after {recovered:?}, bound {bound:?}\n{report}"
    );
    assert!(
        recovered <= failover_took + Duration::from_secs(1),
        "back {recovered:?} after the kill, the sentinels took {failover_took:?}\n{report}"
    );
    if let Some(after) = last_error_after {
        assert!(
            after <= failover_took + Duration::from_secs(1),
            "a load call failed {after:?} after the kill\n{report}"
        );
    }
    assert!(ok.load(Ordering::Relaxed) > before_kill + 100, "{report}");
    Ok(())
}

/// The sentinel URL scheme (`Builder::with_l2_url`) reaches the master the sentinels name, with
/// its bus: the same application code as on standalone Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sentinel_url_scheme_reaches_the_master() -> TestResult {
    shared().await?;
    let group = shared_sentinel()?;
    let hosts: Vec<String> = group
        .sentinel_urls()
        .iter()
        .map(|u| u.trim_start_matches("redis://").to_owned())
        .collect();
    let url = format!(
        "redis+sentinel://{}/{}",
        hosts.join(","),
        group.master_name()
    );
    let p = common::unique_prefix("sentinel-url");
    let a = cache_tiered::builder(p.clone())
        .with_l2_url(url.clone())
        .build()
        .await?;
    let b = cache_tiered::builder(p).with_l2_url(url).build().await?;
    assert_eq!(a.remote().map(|s| s.kind()), Some("redis-sentinel"));
    let ca = a.cache::<u64, cache_tiered::MsgPack>("n").build()?;
    let cb = b.cache::<u64, cache_tiered::MsgPack>("n").build()?;
    ca.set("k", 1).await?;
    assert_eq!(cb.get("k").await?.as_deref(), Some(&1));
    assert!(a.bus_stats().is_some(), "the URL brings the sentinel bus");
    Ok(())
}
