//! Resilience: fail-safe, loader timeouts, the circuit breaker and auto-recovery, against the
//! in-memory L2 (deterministic clock) and real redis-server processes killed or frozen.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_testkit::RedisServer;
use cache_tiered::{
    BusConfig, Cache, Engine, ErrorKind, ManualClock, MemoryStore, MsgPack, RedisConfig,
};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn value_for(key: &str) -> String {
    format!("value-of-{key}")
}

async fn memory_engine(clock: Arc<ManualClock>) -> Result<Engine, cache_tiered::Error> {
    cache_tiered::builder("rs")
        .with_remote(Arc::new(MemoryStore::new()))
        .with_clock(clock)
        .build()
        .await
}

#[tokio::test]
async fn fail_safe_serves_stale_and_backs_off() -> TestResult {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let e = memory_engine(clock.clone()).await?;
    let c: Cache<String, MsgPack> = e
        .cache("fs")
        .with_l1_ttl(Duration::from_secs(10))
        .with_l2_ttl(Duration::from_secs(20))
        .with_jitter(0.0)
        .with_fail_safe(Duration::from_secs(60), Duration::from_secs(5))
        .build()?;
    let calls = Arc::new(AtomicU64::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let load = |calls: Arc<AtomicU64>, failing: Arc<AtomicBool>| {
        move |k: String| async move {
            calls.fetch_add(1, Ordering::SeqCst);
            if failing.load(Ordering::SeqCst) {
                Err(std::io::Error::other("database down"))
            } else {
                Ok(value_for(&k))
            }
        }
    };
    c.get_or_load("k", load(calls.clone(), failing.clone()))
        .await?;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    clock.advance(Duration::from_secs(25)); // expired in both tiers
    failing.store(true, Ordering::SeqCst);
    let v = c
        .get_or_load("k", load(calls.clone(), failing.clone()))
        .await?;
    assert_eq!(*v, value_for("k"), "the stale value is served");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(c.stats().stale_served, 1);
    // Within the back-off the loader is not called again.
    for _ in 0..10 {
        c.get_or_load("k", load(calls.clone(), failing.clone()))
            .await?;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "no retry within the back-off"
    );
    clock.advance(Duration::from_secs(6));
    c.get_or_load("k", load(calls.clone(), failing.clone()))
        .await?;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "retried after the back-off"
    );
    // Past max_stale the error comes through.
    clock.advance(Duration::from_secs(120));
    let err = c
        .get_or_load("k", load(calls.clone(), failing.clone()))
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Loader));
    // The stale value also comes from L2 for an instance that never had it in L1.
    failing.store(false, Ordering::SeqCst);
    c.get_or_load("k2", load(calls.clone(), failing.clone()))
        .await?;
    clock.advance(Duration::from_secs(25));
    failing.store(true, Ordering::SeqCst);
    c.invalidate_local("k2");
    let v = c
        .get_or_load("k2", load(calls.clone(), failing.clone()))
        .await?;
    assert_eq!(*v, value_for("k2"));
    Ok(())
}

#[tokio::test]
async fn without_fail_safe_the_error_comes_through() -> TestResult {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let e = memory_engine(clock.clone()).await?;
    let c: Cache<String, MsgPack> = e
        .cache("nofs")
        .with_l1_ttl(Duration::from_secs(10))
        .with_l2_ttl(Duration::from_secs(20))
        .build()?;
    c.get_or_load(
        "k",
        |k| async move { Ok::<_, std::io::Error>(value_for(&k)) },
    )
    .await?;
    clock.advance(Duration::from_secs(25));
    let err = c
        .get_or_load("k", |_| async {
            Err::<String, _>(std::io::Error::other("down"))
        })
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Loader));
    Ok(())
}

#[tokio::test]
async fn soft_timeout_serves_stale_now_and_refreshes_later() -> TestResult {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let e = memory_engine(clock.clone()).await?;
    let c: Cache<String, MsgPack> = e
        .cache("soft")
        .with_l1_ttl(Duration::from_secs(10))
        .with_l2_ttl(Duration::from_secs(20))
        .with_jitter(0.0)
        .with_fail_safe(Duration::from_secs(60), Duration::from_secs(5))
        .with_loader_timeouts(
            Some(Duration::from_millis(50)),
            Some(Duration::from_secs(5)),
        )
        .build()?;
    c.get_or_load("k", |_| async {
        Ok::<_, std::io::Error>("old".to_string())
    })
    .await?;
    clock.advance(Duration::from_secs(25));
    let started = Instant::now();
    let v = c
        .get_or_load("k", |_| async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok::<_, std::io::Error>("new".to_string())
        })
        .await?;
    let took = started.elapsed();
    assert_eq!(*v, "old");
    assert!(took < Duration::from_millis(300), "answered after {took:?}");
    // The load went on in the background and refreshed the cache.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        c.get("k").await?.as_deref().map(String::as_str),
        Some("new")
    );
    // Hard timeout without a stale value: a Timeout error.
    let err = c
        .get_or_load("never", |_| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, std::io::Error>(String::new())
        })
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Timeout));
    Ok(())
}

async fn redis_engine(
    server: &RedisServer,
    prefix: &str,
) -> Result<Engine, Box<dyn std::error::Error + Send + Sync>> {
    let config = RedisConfig::builder()
        .with_url(server.url())
        .with_response_timeout(Duration::from_millis(200))
        .with_connect_timeout(Duration::from_millis(500))
        .with_reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .build()?;
    Ok(cache_tiered::builder(prefix)
        .with_redis(config)
        .with_bus_config(BusConfig::default().with_heartbeat(Duration::from_millis(200)))
        .build()
        .await?)
}

/// Redis SIGKILLed for 5 s under ~500 req/s with 80% of keys in L1: no caller sees an error;
/// while the breaker is open calls do not wait for Redis; L2 works again soon after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_for_five_seconds_under_load() -> TestResult {
    let server = RedisServer::start()?;
    let engine = redis_engine(&server, "kill5").await?;
    let c: Cache<String, MsgPack> = engine
        .cache("k")
        .with_l1_ttl(Duration::from_secs(300))
        .with_l2_ttl(Duration::from_secs(600))
        .build()?;
    let keys: Vec<String> = (0..100).map(|i| format!("key{i}")).collect();
    for k in &keys[..80] {
        c.set(k, value_for(k)).await?;
    }
    let errors = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let open_latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..5u64 {
        let (c, keys, errors, wrong, stop, open_latencies, engine) = (
            c.clone(),
            keys.clone(),
            errors.clone(),
            wrong.clone(),
            stop.clone(),
            open_latencies.clone(),
            engine.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(w);
            while !stop.load(Ordering::Relaxed) {
                // 80% of requests on the keys held in L1.
                let k = if rng.u32(0..100) < 80 {
                    &keys[rng.usize(0..80)]
                } else {
                    &keys[rng.usize(80..100)]
                };
                let open_before = engine.l2_breaker_open();
                let t = Instant::now();
                match c
                    .get_or_load(k, |k| async move { Ok::<_, std::io::Error>(value_for(&k)) })
                    .await
                {
                    Ok(v) if *v == value_for(k) => {}
                    Ok(_) => {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if open_before && engine.l2_breaker_open() {
                    open_latencies.lock().unwrap().push(t.elapsed());
                }
                // 5 workers × ~100 req/s ≈ 500 req/s.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.kill()?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    server.restart()?;
    let back = Instant::now();
    // First L2 success after Redis is back: a write that reaches the server.
    let mut first_success = None;
    while back.elapsed() < Duration::from_secs(5) {
        let probe = format!("probe{}", back.elapsed().as_millis());
        c.set(&probe, "p".into()).await?;
        if server.cli(&["EXISTS", &c.full_key(&probe)?])?.trim() == "1" {
            first_success = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await?;
    }
    assert_eq!(errors.load(Ordering::Relaxed), 0, "errors reached callers");
    assert_eq!(wrong.load(Ordering::Relaxed), 0, "wrong values");
    let lat = open_latencies.lock().unwrap().clone();
    assert!(!lat.is_empty(), "the breaker never opened");
    let worst = lat.iter().max().copied().unwrap_or_default();
    assert!(
        worst < Duration::from_millis(200),
        "a call waited {worst:?} for Redis while the breaker was open"
    );
    let first = first_success.ok_or("L2 never worked again")?;
    assert!(
        first <= Duration::from_secs(1),
        "first L2 success {first:?} after restart"
    );
    Ok(())
}

/// Redis SIGSTOPped for 5 s: no call exceeds the loader's hard timeout + 50 ms; with stale
/// values at hand (fail-safe + soft timeout) p99 stays within the soft timeout + 10 ms; after
/// SIGCONT every reply matches its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_for_five_seconds() -> TestResult {
    let server = RedisServer::start()?;
    let engine = redis_engine(&server, "stop5").await?;
    let hard = Duration::from_secs(1);
    let soft = Duration::from_millis(50);
    let c: Cache<String, MsgPack> = engine
        .cache("s")
        .with_l1_ttl(Duration::from_millis(500))
        .with_l2_ttl(Duration::from_millis(500))
        .with_fail_safe(Duration::from_secs(600), Duration::from_secs(2))
        .with_loader_timeouts(Some(soft), Some(hard))
        .build()?;
    let keys: Vec<String> = (0..40).map(|i| format!("key{i}")).collect();
    for k in &keys {
        c.get_or_load(k, |k| async move { Ok::<_, std::io::Error>(value_for(&k)) })
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(600)).await; // all values now stale
    server.stop()?;
    let frozen_at = Instant::now();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let wrong = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let (c, keys, latencies, wrong) =
            (c.clone(), keys.clone(), latencies.clone(), wrong.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(w);
            while frozen_at.elapsed() < Duration::from_secs(5) {
                let k = &keys[rng.usize(0..keys.len())];
                let t = Instant::now();
                // A slow database: the soft timeout hands out the stale value meanwhile.
                let r = c
                    .get_or_load(k, |k| async move {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, std::io::Error>(value_for(&k))
                    })
                    .await;
                latencies.lock().unwrap().push(t.elapsed());
                match r {
                    Ok(v) if *v == value_for(k) => {}
                    _ => {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    server.cont()?;
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort();
    let worst = lat.last().copied().unwrap_or_default();
    let p99 = lat[(lat.len() - 1) * 99 / 100];
    assert_eq!(wrong.load(Ordering::Relaxed), 0);
    assert!(
        worst <= hard + Duration::from_millis(50),
        "worst call {worst:?}"
    );
    assert!(
        p99 <= soft + Duration::from_millis(10),
        "p99 {p99:?} over {} calls: {lat:?}",
        lat.len()
    );
    // After SIGCONT: every reply matches its key (no reply delivered to the wrong caller):
    // reads that go to Redis (L1 dropped first) return the key's own value or nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut checks = Vec::new();
    for k in keys.iter().cycle().take(400) {
        let (c, k) = (c.clone(), k.clone());
        checks.push(tokio::spawn(async move {
            c.invalidate_local(&k);
            let v = c.get(&k).await?;
            Ok::<_, cache_tiered::Error>(v.is_none_or(|v| *v == value_for(&k)))
        }));
    }
    let mut mismatched = 0;
    for ch in checks {
        if !ch.await?? {
            mismatched += 1;
        }
    }
    assert_eq!(mismatched, 0);
    Ok(())
}

/// Issue 17: with Redis frozen (SIGSTOP), a read costs at most one L2 response timeout plus
/// the loader, from the first read after the freeze: a load whose L2 read timed out takes no
/// lease (which would wait a second timeout) and fills L1 only. Single and batch loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_costs_one_response_timeout_from_the_first_read() -> TestResult {
    let server = RedisServer::start()?;
    let engine = redis_engine(&server, "frozen1").await?;
    let c: Cache<String, MsgPack> = engine.cache("f").build()?;
    c.get_or_load(
        "warm",
        |k| async move { Ok::<_, std::io::Error>(value_for(&k)) },
    )
    .await?;
    let loader_time = Duration::from_millis(50);
    server.stop()?;
    let mut calls = Vec::new();
    for i in 0..6u64 {
        let c = c.clone();
        calls.push(tokio::spawn(async move {
            let t = Instant::now();
            let ok = if i % 2 == 0 {
                let key = format!("cold{i}");
                let v = c
                    .get_or_load(&key, move |k| async move {
                        tokio::time::sleep(loader_time).await;
                        Ok::<_, std::io::Error>(value_for(&k))
                    })
                    .await?;
                *v == value_for(&key)
            } else {
                let keys = vec![format!("cold{i}a"), format!("cold{i}b")];
                let got = c
                    .get_many_or_load(&keys, move |missing| async move {
                        tokio::time::sleep(loader_time).await;
                        Ok::<_, std::io::Error>(
                            missing
                                .into_iter()
                                .map(|k| (k.clone(), value_for(&k)))
                                .collect(),
                        )
                    })
                    .await?;
                keys.iter()
                    .zip(got)
                    .all(|(k, v)| v.is_some_and(|v| *v == value_for(k)))
            };
            Ok::<_, cache_tiered::Error>((t.elapsed(), ok))
        }));
    }
    let mut took = Vec::new();
    for call in calls {
        let (elapsed, ok) = call.await??;
        assert!(ok, "a wrong value");
        took.push(elapsed);
    }
    server.cont()?;
    took.sort();
    // The engine's response timeout is 200 ms (`redis_engine`); 60 ms of scheduling slack.
    let bound = Duration::from_millis(200) + loader_time + Duration::from_millis(60);
    assert!(
        took.iter().all(|d| *d <= bound),
        "reads right after the freeze took {took:?} (bound {bound:?})"
    );
    Ok(())
}

/// L2 and bus down, instance B writes, Redis comes back (empty: it was killed): every
/// instance reads B's value within the recovery interval + 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_converge_after_an_outage() -> TestResult {
    let server = RedisServer::start()?;
    let mut caches = Vec::new();
    let mut engines = Vec::new();
    for _ in 0..3 {
        let e = redis_engine(&server, "conv").await?;
        caches.push(
            e.cache::<String, MsgPack>("c")
                .with_l1_ttl(Duration::from_secs(300))
                .build()?,
        );
        engines.push(e);
    }
    caches[0].set("k", "old".into()).await?;
    for c in &caches {
        assert_eq!(
            c.get("k").await?.as_deref().map(String::as_str),
            Some("old")
        );
    }
    server.kill()?;
    // The source changes, and B writes the new value while Redis is down: accepted, queued.
    let source = Arc::new(std::sync::Mutex::new("from-b".to_owned()));
    caches[1].set("k", "from-b".into()).await?;
    assert_eq!(caches[1].stats().queued_for_recovery, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart()?;
    let back = Instant::now();
    let bound = Duration::from_millis(250) + Duration::from_secs(1);
    let mut converged = [None; 3];
    while back.elapsed() < Duration::from_secs(5) && converged.iter().any(Option::is_none) {
        for (i, c) in caches.iter().enumerate() {
            let src = source.clone();
            let seen = c
                .get_or_load("k", move |_| async move {
                    Ok::<_, std::io::Error>(src.lock().map(|v| v.clone()).unwrap_or_default())
                })
                .await;
            if converged[i].is_none() && seen.as_deref().ok().map(String::as_str) == Some("from-b")
            {
                converged[i] = Some(back.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, t) in converged.iter().enumerate() {
        let t = t.ok_or(format!("instance {i} never read B's value"))?;
        assert!(t <= bound, "instance {i} converged after {t:?}");
    }
    // The readers may converge through the loader before B's queued write is settled; it is
    // settled soon after (a delete and an announcement).
    let settled = Instant::now();
    while engines[1].recovery_stats().map(|s| s.pending) != Some(0)
        && settled.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(engines[1].recovery_stats().map(|s| s.pending), Some(0));
    for c in &caches {
        assert_ne!(
            c.get("k").await?.as_deref().map(String::as_str),
            Some("old"),
            "an instance reads the pre-outage value again"
        );
    }
    Ok(())
}
