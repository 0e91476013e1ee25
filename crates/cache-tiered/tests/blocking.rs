//! The blocking API (feature `blocking`), from plain threads: on the in-memory L2 and on a
//! real Redis, the same operations as the async cache, one load for concurrent threads, and a
//! clear error instead of a deadlock when called from inside an async runtime.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use cache_tiered::blocking::{BlockingCache, BlockingEngine};
use cache_tiered::{ErrorKind, MemoryStore, MsgPack};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn strings(engine: &BlockingEngine) -> cache_tiered::Result<BlockingCache<String, MsgPack>> {
    engine.cache::<String, MsgPack>("s", |b| b.with_jitter(0.0).build())
}

/// Every operation from plain threads, then 8 threads on one cold key: one load.
fn exercise(engine: &BlockingEngine) -> TestResult {
    let c = strings(engine)?;
    assert_eq!(c.get("a")?, None);
    let v = c.get_or_load("a", |k| Ok::<_, std::io::Error>(format!("loaded {k}")))?;
    assert_eq!(*v, "loaded a");
    assert_eq!(c.get("a")?.as_deref().map(String::as_str), Some("loaded a"));
    c.set("b", "set b".to_owned())?;
    c.set_with_tags("c", "tagged".to_owned(), &["t"])?;
    let many = c.get_many(&["a", "b", "c", "d"])?;
    assert_eq!(many.iter().filter(|v| v.is_some()).count(), 3);
    let loaded = c.get_many_or_load(&["d", "e"], |missing| {
        Ok::<_, std::io::Error>(
            missing
                .into_iter()
                .map(|k| (k.clone(), format!("batch {k}")))
                .collect::<HashMap<_, _>>(),
        )
    })?;
    assert_eq!(loaded[0].as_deref().map(String::as_str), Some("batch d"));
    assert_eq!(
        c.get_or_load_optional("absent", |_| Ok::<_, std::io::Error>(None))?,
        None
    );
    assert_eq!(c.invalidate_tag("t")?, 1);
    assert_eq!(c.get("c")?, None);
    c.invalidate("a")?;
    assert_eq!(c.get("a")?, None);
    assert!(c.refresh("b", |_| Ok::<_, std::io::Error>("refreshed".to_owned()))?);
    let mut refreshed = false;
    for _ in 0..400 {
        if c.get("b")?.as_deref().map(String::as_str) == Some("refreshed") {
            refreshed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(refreshed, "the refresh landed");
    // Per-call options, a context loader, expire.
    let bg = cache_tiered::CallOptions::new().background_l2_write();
    c.set_with("g", "background".to_owned(), &bg)?;
    assert_eq!(
        c.get_with("g", &cache_tiered::CallOptions::new().skip_l2_read())?
            .as_deref()
            .map(String::as_str),
        Some("background")
    );
    let v = c.get_or_load_with("h", &cache_tiered::CallOptions::new(), |ctx| {
        Ok::<_, std::io::Error>(
            cache_tiered::Loaded::value(format!("ctx {}", ctx.key())).no_cache(),
        )
    })?;
    assert_eq!(v.as_deref().map(String::as_str), Some("ctx h"));
    assert_eq!(c.get("h")?, None, "not cached");
    c.expire("g")?;
    assert_eq!(c.get("g")?, None);
    let err = c
        .get_or_load("f", |_| Err::<String, _>(std::io::Error::other("db down")))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Loader);
    // 8 threads, one cold key, a slow loader: one load.
    let loads = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (c, loads, barrier) = (c.clone(), loads.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                c.get_or_load("hot", move |_| {
                    loads.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                    Ok::<_, std::io::Error>("hot".to_owned())
                })
                .map(|v| (*v).clone())
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap()?, "hot");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one load for 8 threads");
    assert!(c.clear_namespace()? > 0, "the namespace held keys");
    assert_eq!(c.get("hot")?, None);
    assert_eq!(
        engine.shutdown(Duration::from_secs(5))?,
        cache_tiered::ShutdownReport::default()
    );
    Ok(())
}

#[test]
fn every_operation_from_plain_threads_in_memory() -> TestResult {
    let engine = BlockingEngine::build(
        cache_tiered::builder("bm").with_remote(Arc::new(MemoryStore::new())),
    )?;
    exercise(&engine)
}

#[test]
fn every_operation_from_plain_threads_on_redis() -> TestResult {
    let server = cache_testkit::shared_redis()?;
    let engine = BlockingEngine::build(cache_tiered::builder("br").with_redis_url(server.url()))?;
    exercise(&engine)
}

/// Called from inside an async runtime (even a current-thread one, where blocking would
/// deadlock), every call is a clear `InvalidConfig` error, nothing hangs or panics; dropping
/// the engine there does not panic either.
#[test]
fn called_inside_an_async_runtime_is_a_clear_error() -> TestResult {
    let engine = BlockingEngine::build(
        cache_tiered::builder("ba").with_remote(Arc::new(MemoryStore::new())),
    )?;
    let c = strings(&engine)?;
    c.set("k", "v".to_owned())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let e = c.get("k").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert!(e.message().contains("get"), "{e}");
        let e = c
            .get_or_load("x", |_| Ok::<_, std::io::Error>("x".to_owned()))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        // The async cache behind it works here.
        assert_eq!(
            c.cache().get("k").await?.as_deref().map(String::as_str),
            Some("v")
        );
        let e = BlockingEngine::build(cache_tiered::builder("bb")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        drop(c);
        drop(engine);
        Ok::<_, cache_tiered::Error>(())
    })?;
    Ok(())
}
