//! The behaviour suite: every case runs unchanged against every L2 backend.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cache_tiered::core::Header;
use cache_tiered::{Cache, Engine, ErrorKind, Json, MsgPack, RemoteStore};
use serde::{Deserialize, Serialize};

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub score: f64,
    pub tags: Vec<String>,
}

pub fn user(id: u64) -> User {
    User {
        id,
        name: format!("user-{id}"),
        score: id as f64 / 3.0,
        tags: vec!["a".into(), "b".into()],
    }
}

/// A backend under test: makes remote stores that all see the same data.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// A new handle (connection) to the shared data.
    async fn store(&self) -> Arc<dyn RemoteStore>;
    /// Make the backend unreachable (`true`) or bring it back (`false`).
    async fn set_down(&self, down: bool);
}

static PREFIX: AtomicUsize = AtomicUsize::new(0);

/// A prefix no other test uses (tests share one server).
pub fn unique_prefix(test: &str) -> String {
    format!(
        "t{}-{}-{}",
        std::process::id(),
        PREFIX.fetch_add(1, Ordering::SeqCst),
        test.replace('_', "-")
    )
}

pub async fn engine(b: &dyn Backend, prefix: &str) -> Result<Engine, cache_tiered::Error> {
    cache_tiered::builder(prefix)
        .with_l1_capacity_bytes(8 * 1024 * 1024)
        .with_remote(b.store().await)
        .build()
        .await
}

pub fn users(e: &Engine) -> Result<Cache<User, MsgPack>, cache_tiered::Error> {
    e.cache::<User, MsgPack>("users").with_jitter(0.0).build()
}

fn counting_loader(
    calls: Arc<AtomicU64>,
) -> impl FnOnce(String) -> futures::future::BoxFuture<'static, Result<User, std::io::Error>> {
    move |k: String| {
        Box::pin(async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(user(k.parse().unwrap_or(0)))
        })
    }
}

pub async fn full_miss_loads_once_and_fills_both(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("full-miss");
    let a = users(&engine(b, &p).await?)?;
    let other = users(&engine(b, &p).await?)?;
    let calls = Arc::new(AtomicU64::new(0));
    let v = a.get_or_load("7", counting_loader(calls.clone())).await?;
    assert_eq!(*v, user(7));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The load returns once both tiers are filled: a second engine (own L1) reads it from L2
    // at once.
    assert_eq!(other.get("7").await?.as_deref(), Some(&user(7)));
    assert_eq!(other.stats().l2_hits, 1);
    // L1 now answers without L2 or loader.
    assert_eq!(a.get_local("7"), Some(Some(Arc::new(user(7)))));
    let v = a.get_or_load("7", counting_loader(calls.clone())).await?;
    assert_eq!(*v, user(7));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(a.stats().l2_hits, 0);
    Ok(())
}

pub async fn l2_hit_fills_l1(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("l2-hit");
    let a = users(&engine(b, &p).await?)?;
    a.set("1", user(1)).await?;
    let other = users(&engine(b, &p).await?)?;
    assert_eq!(other.get_local("1"), None);
    let calls = Arc::new(AtomicU64::new(0));
    let v = other
        .get_or_load("1", counting_loader(calls.clone()))
        .await?;
    assert_eq!(*v, user(1));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "an L2 hit must not call the loader"
    );
    assert_eq!(other.stats().l2_hits, 1);
    assert!(other.get_local("1").is_some(), "the L2 hit filled L1");
    other.get("1").await?;
    assert_eq!(other.stats().l2_hits, 1, "the second read came from L1");
    Ok(())
}

pub async fn invalidate_clears_both(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("invalidate");
    let a = users(&engine(b, &p).await?)?;
    a.set("1", user(1)).await?;
    assert!(a.get_local("1").is_some());
    a.invalidate("1").await?;
    assert_eq!(a.get_local("1"), None);
    assert_eq!(a.get("1").await?, None);
    let store = b.store().await;
    assert_eq!(store.get(&a.full_key("1")?).await?, None);
    Ok(())
}

pub async fn ttl_expiry_in_both_tiers(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("ttl");
    let e = engine(b, &p).await?;
    let c = e
        .cache::<User, MsgPack>("users")
        .with_jitter(0.0)
        .with_l1_ttl(Duration::from_millis(300))
        .with_l2_ttl(Duration::from_millis(900))
        .build()?;
    let calls = Arc::new(AtomicU64::new(0));
    c.get_or_load("5", counting_loader(calls.clone())).await?;
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(c.get_local("5"), None, "L1 entry expired");
    c.get_or_load("5", counting_loader(calls.clone())).await?;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "still served by L2");
    assert_eq!(c.stats().l2_hits, 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.invalidate_local("5");
    c.get_or_load("5", counting_loader(calls.clone())).await?;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "L2 entry expired too");
    Ok(())
}

pub async fn engines_share_l2_writes(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("share");
    let a = users(&engine(b, &p).await?)?;
    let bb = users(&engine(b, &p).await?)?;
    a.set("9", user(9)).await?;
    assert_eq!(bb.get("9").await?.as_deref(), Some(&user(9)));
    bb.set("10", user(10)).await?;
    assert_eq!(a.get("10").await?.as_deref(), Some(&user(10)));
    Ok(())
}

pub async fn reads_values_written_with_another_codec(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("codec");
    let writer = engine(b, &p).await?.cache::<User, Json>("users").build()?;
    writer.set("3", user(3)).await?;
    let reader = engine(b, &p)
        .await?
        .cache::<User, MsgPack>("users")
        .build()?;
    assert_eq!(reader.get("3").await?.as_deref(), Some(&user(3)));
    assert_eq!(reader.stats().l2_corrupt, 0);
    // And the other way round.
    reader.set("4", user(4)).await?;
    let json_reader = engine(b, &p).await?.cache::<User, Json>("users").build()?;
    assert_eq!(json_reader.get("4").await?.as_deref(), Some(&user(4)));
    Ok(())
}

pub async fn corrupt_bytes_are_a_miss_and_get_overwritten(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("corrupt");
    let c = users(&engine(b, &p).await?)?;
    let store = b.store().await;
    let garbage: [&[u8]; 4] = [
        b"not a cache value",
        &[0xCA, 0x01, 0x02, 0x00, 1, 2, 3],
        &[0xCA, 0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        &[
            0xCA, 0x01, 0x02, 0x00, 255, 255, 255, 255, 255, 255, 255, 127, 0, 0, 0, 0, 0xc1,
        ],
    ];
    for (i, g) in garbage.iter().enumerate() {
        let key = format!("{i}");
        store
            .set(&c.full_key(&key)?, g.to_vec(), Duration::from_secs(60))
            .await?;
        let calls = Arc::new(AtomicU64::new(0));
        let v = c.get_or_load(&key, counting_loader(calls.clone())).await?;
        assert_eq!(*v, user(i as u64));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Overwritten: a fresh engine reads a good value from L2.
        let fresh = users(&engine(b, &p).await?)?;
        assert_eq!(fresh.get(&key).await?.as_deref(), Some(&user(i as u64)));
        assert_eq!(fresh.stats().l2_corrupt, 0);
    }
    assert_eq!(c.stats().l2_corrupt, garbage.len() as u64);
    Ok(())
}

pub async fn oversized_value_is_refused_before_sending(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("oversize");
    let store = b.store().await;
    let max = store.max_value_size();
    let e = engine(b, &p).await?;
    let c = e.cache::<String, MsgPack>("blobs").build()?;
    let big = "x".repeat(max + 1);
    let err = c.set("big", big).await.err().map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::ValueTooLarge));
    assert_eq!(c.get_local("big"), None, "nothing changed in L1");
    assert_eq!(
        store.get(&c.full_key("big")?).await?,
        None,
        "nothing sent to L2"
    );
    Ok(())
}

pub async fn negative_results_are_cached(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("negative");
    let e = engine(b, &p).await?;
    let c = e
        .cache::<User, MsgPack>("users")
        .with_negative_ttl(Duration::from_millis(400))
        .with_jitter(0.0)
        .build()?;
    let calls = Arc::new(AtomicU64::new(0));
    for _ in 0..3 {
        let k = calls.clone();
        let v = c
            .get_or_load_optional("404", move |_| async move {
                k.fetch_add(1, Ordering::SeqCst);
                Ok::<Option<User>, std::io::Error>(None)
            })
            .await?;
        assert_eq!(v, None);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Another instance sees the negative entry in L2.
    let other = e.clone();
    let _ = other;
    let fresh = engine(b, &p)
        .await?
        .cache::<User, MsgPack>("users")
        .build()?;
    let k = calls.clone();
    let v = fresh
        .get_or_load_optional("404", move |_| async move {
            k.fetch_add(1, Ordering::SeqCst);
            Ok::<Option<User>, std::io::Error>(Some(user(404)))
        })
        .await?;
    assert_eq!(v, None, "negative entry read from L2");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // A non-optional get_or_load on a negative entry says NotFound.
    let err = c
        .get_or_load("404", |_| async { Ok::<_, std::io::Error>(user(1)) })
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::NotFound));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let k = calls.clone();
    let v = c
        .get_or_load_optional("404", move |_| async move {
            k.fetch_add(1, Ordering::SeqCst);
            Ok::<Option<User>, std::io::Error>(Some(user(404)))
        })
        .await?;
    assert_eq!(v.as_deref(), Some(&user(404)), "negative entry expired");
    Ok(())
}

pub async fn get_many_mixes_tiers(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("get-many");
    let a = users(&engine(b, &p).await?)?;
    let c = users(&engine(b, &p).await?)?;
    a.set("1", user(1)).await?; // L2 only for c
    c.set("2", user(2)).await?; // L1 (and L2) for c
    let got = c.get_many(&["1", "2", "3"]).await?;
    assert_eq!(got[0].as_deref(), Some(&user(1)));
    assert_eq!(got[1].as_deref(), Some(&user(2)));
    assert_eq!(got[2], None);
    assert_eq!(c.stats().l2_hits, 1);
    assert!(c.get_local("1").is_some(), "L2 hit of get_many filled L1");
    Ok(())
}

pub async fn get_many_or_load_batches_the_misses(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("many-load");
    let a = users(&engine(b, &p).await?)?;
    let c = users(&engine(b, &p).await?)?;
    a.set("1", user(1)).await?;
    c.set("2", user(2)).await?;
    let seen: Arc<std::sync::Mutex<Vec<Vec<String>>>> = Arc::default();
    let s = seen.clone();
    let keys = ["1", "2", "3", "4", "404", "3"];
    let got = c
        .get_many_or_load(&keys, move |missing| async move {
            let mut out = HashMap::new();
            for k in &missing {
                if k != "404" {
                    out.insert(k.clone(), user(k.parse().unwrap_or(0)));
                }
            }
            s.lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .push(missing);
            Ok::<_, std::io::Error>(out)
        })
        .await?;
    let calls = seen.lock().map(|v| v.clone()).unwrap_or_default();
    assert_eq!(calls.len(), 1, "one batch loader call");
    let mut batch = calls[0].clone();
    batch.sort();
    assert_eq!(batch, vec!["3", "4", "404"]);
    assert_eq!(got[0].as_deref(), Some(&user(1)));
    assert_eq!(got[1].as_deref(), Some(&user(2)));
    assert_eq!(got[2].as_deref(), Some(&user(3)));
    assert_eq!(got[3].as_deref(), Some(&user(4)));
    assert_eq!(got[4], None);
    assert_eq!(got[5].as_deref(), Some(&user(3)));
    // Loaded values reached L2.
    let fresh = users(&engine(b, &p).await?)?;
    let again = fresh.get_many(&["3", "4", "404"]).await?;
    assert_eq!(again[0].as_deref(), Some(&user(3)));
    assert_eq!(again[1].as_deref(), Some(&user(4)));
    assert_eq!(again[2], None);
    Ok(())
}

pub async fn l1_hit_survives_l2_outage(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("outage");
    let c = users(&engine(b, &p).await?)?;
    c.set("1", user(1)).await?;
    b.set_down(true).await;
    let calls = Arc::new(AtomicU64::new(0));
    let v = c.get_or_load("1", counting_loader(calls.clone())).await?;
    assert_eq!(*v, user(1));
    assert_eq!(c.get("1").await?.as_deref(), Some(&user(1)));
    // A full miss with L2 down still gets the loader's value; the failed read is counted,
    // and the load then takes no lease (it would wait for L2 again, guarantees §6).
    let v = c.get_or_load("2", counting_loader(calls.clone())).await?;
    assert_eq!(*v, user(2));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(c.stats().l2_errors, 1, "stats {:?}", c.stats());
    b.set_down(false).await;
    Ok(())
}

pub async fn concurrent_callers_share_one_load(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("single-flight");
    let c = users(&engine(b, &p).await?)?;
    let calls = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let c = c.clone();
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            c.get_or_load("1", move |_| async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, std::io::Error>(user(1))
            })
            .await
        }));
    }
    for t in tasks {
        assert_eq!(*t.await??, user(1));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    Ok(())
}

pub async fn four_engines_one_load_with_leases(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("leases");
    let calls = Arc::new(AtomicU64::new(0));
    let mut caches = Vec::new();
    for _ in 0..4 {
        caches.push(users(&engine(b, &p).await?)?);
    }
    let mut tasks = Vec::new();
    for c in &caches {
        for _ in 0..250 {
            let c = c.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                c.get_or_load("cold", move |_| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, std::io::Error>(user(1))
                })
                .await
            }));
        }
    }
    for t in tasks {
        assert_eq!(*t.await??, user(1));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one loader call across 4 engines"
    );
    let waits: u64 = caches.iter().map(|c| c.stats().lease_waits).sum();
    assert!(waits >= 1, "the other engines waited on the lease");
    Ok(())
}

pub async fn write_through_keeps_source_and_cache_in_step(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("write-through");
    let e = engine(b, &p).await?;
    let c = e.cache::<String, MsgPack>("docs").build()?;
    let db: Arc<std::sync::Mutex<HashMap<String, String>>> = Arc::default();
    c.set("a", "old".into()).await?;
    // The writer fails: the cache keeps the old value, the error says so.
    let err = c
        .write("a", "new".into(), |_, _| async {
            Err::<(), _>(std::io::Error::other("db refused"))
        })
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Writer));
    assert_eq!(
        c.get("a").await?.as_deref().map(String::as_str),
        Some("old")
    );
    // The writer succeeds: source, L2 and L1 all hold the new value.
    let d = db.clone();
    c.write("a", "new".into(), move |k, v| async move {
        d.lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .insert(k, (*v).clone());
        Ok::<_, std::io::Error>(())
    })
    .await?;
    assert_eq!(
        db.lock()
            .map(|m| m.get("a").cloned())
            .ok()
            .flatten()
            .as_deref(),
        Some("new")
    );
    assert_eq!(
        c.get_local("a").flatten().as_deref().map(String::as_str),
        Some("new")
    );
    let fresh = engine(b, &p)
        .await?
        .cache::<String, MsgPack>("docs")
        .build()?;
    assert_eq!(
        fresh.get("a").await?.as_deref().map(String::as_str),
        Some("new")
    );
    // The source accepts a value the cache cannot hold: the key is invalidated, not stale.
    let max = b.store().await.max_value_size();
    let huge = "x".repeat(max + 10);
    let err = c
        .write("a", huge, |_, _| async { Ok::<_, std::io::Error>(()) })
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::ValueTooLarge));
    assert_eq!(
        c.get("a").await?,
        None,
        "the old value is gone from both tiers"
    );
    Ok(())
}

pub async fn tags_invalidate_across_keys(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("tags");
    let c = users(&engine(b, &p).await?)?;
    c.set_with_tags("1", user(1), &["team:red", "all"]).await?;
    c.set_with_tags("2", user(2), &["team:blue", "all"]).await?;
    c.set_with_tags("3", user(3), &["team:red"]).await?;
    c.set("4", user(4)).await?;
    assert_eq!(c.invalidate_tag("team:red").await?, 2);
    assert_eq!(c.get_local("1"), None);
    assert_eq!(c.get("1").await?, None);
    assert_eq!(c.get("3").await?, None);
    assert_eq!(c.get("2").await?.as_deref(), Some(&user(2)));
    assert_eq!(
        c.invalidate_tag("all").await?,
        2,
        "members already gone still count"
    );
    assert_eq!(c.get("2").await?, None);
    assert_eq!(c.get("4").await?.as_deref(), Some(&user(4)));
    assert_eq!(c.invalidate_tag("team:red").await?, 0);
    Ok(())
}

pub async fn loader_errors_reach_every_waiter(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("loader-error");
    let c = users(&engine(b, &p).await?)?;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.get_or_load("1", |_| async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                Err::<User, _>(std::io::Error::other("db down"))
            })
            .await
        }));
    }
    for t in tasks {
        let e = t.await?.err().map(|e| e.kind());
        assert_eq!(e, Some(ErrorKind::Loader));
    }
    // Nothing cached: the next call tries again and succeeds.
    let v = c
        .get_or_load("1", |_| async { Ok::<_, std::io::Error>(user(1)) })
        .await?;
    assert_eq!(*v, user(1));
    // A panicking loader is an error for its waiters, never a hang.
    let r = c
        .get_or_load("2", |_| async {
            if true {
                panic!("loader bug");
            }
            Ok::<_, std::io::Error>(user(2))
        })
        .await;
    assert_eq!(r.err().map(|e| e.kind()), Some(ErrorKind::LoaderPanicked));
    Ok(())
}

pub async fn dropped_leader_still_completes_the_load(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("cancel");
    let c = users(&engine(b, &p).await?)?;
    let calls = Arc::new(AtomicU64::new(0));
    let slow = |calls: Arc<AtomicU64>| {
        move |_: String| async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, std::io::Error>(user(1))
        }
    };
    let leader = {
        let c = c.clone();
        let f = slow(calls.clone());
        tokio::spawn(async move { c.get_or_load("1", f).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let waiter = {
        let c = c.clone();
        let f = slow(calls.clone());
        tokio::spawn(async move { c.get_or_load("1", f).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    leader.abort();
    assert_eq!(*waiter.await??, user(1));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    Ok(())
}

pub async fn raw_mode_writes_plain_payloads(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("raw");
    let e = engine(b, &p).await?;
    let c = e.cache::<User, Json>("users").with_raw(true).build()?;
    c.set("1", user(1)).await?;
    let store = b.store().await;
    let bytes = store.get(&c.full_key("1")?).await?.unwrap_or_default();
    let parsed: serde_json::Value = serde_json::from_slice(&bytes)?;
    assert_eq!(parsed["name"], "user-1");
    // Another client in another language writes plain JSON; the cache reads it.
    store
        .set(
            &c.full_key("2")?,
            serde_json::to_vec(&user(2))?,
            Duration::from_secs(60),
        )
        .await?;
    let fresh = engine(b, &p)
        .await?
        .cache::<User, Json>("users")
        .with_raw(true)
        .build()?;
    assert_eq!(fresh.get("2").await?.as_deref(), Some(&user(2)));
    Ok(())
}

pub async fn ttl_jitter_spreads_expiry(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("jitter");
    let e = engine(b, &p).await?;
    let c = e
        .cache::<u64, MsgPack>("n")
        .with_l2_ttl(Duration::from_secs(1000))
        .with_jitter(0.2)
        .build()?;
    let store = b.store().await;
    let mut expiries = std::collections::BTreeSet::new();
    for i in 0..50u64 {
        c.set(&i.to_string(), i).await?;
        let bytes = store
            .get(&c.full_key(&i.to_string())?)
            .await?
            .unwrap_or_default();
        let (h, _) = Header::decode(&bytes).map_err(|e| e.to_string())?;
        expiries.insert(h.expires_at_ms / 1000);
    }
    assert!(expiries.len() > 10, "expiries not spread: {expiries:?}");
    let now_s = cache_tiered::core::support::precise_now_ms() / 1000;
    for s in &expiries {
        assert!(
            *s >= now_s + 790 && *s <= now_s + 1001,
            "expiry {s} outside the jitter band"
        );
    }
    Ok(())
}

pub async fn invalid_keys_are_typed_errors(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("keys");
    let e = engine(b, &p).await?;
    let c = e.cache::<u64, MsgPack>("n").with_max_key_len(16).build()?;
    assert_eq!(
        c.get("").await.err().map(|e| e.kind()),
        Some(ErrorKind::InvalidKey)
    );
    let long = "k".repeat(17);
    assert_eq!(
        c.set(&long, 1).await.err().map(|e| e.kind()),
        Some(ErrorKind::InvalidKey)
    );
    // Keys with separators and hash tags stay inside the namespace.
    c.set("a:b*{c}\n", 5).await?;
    assert_eq!(c.full_key("a:b*{c}\n")?, format!("{p}:n:a:b*{{c}}\n"));
    assert_eq!(c.get("a:b*{c}\n").await?.as_deref(), Some(&5));
    let bad = e
        .cache::<u64, MsgPack>("bad:ns")
        .build()
        .err()
        .map(|e| e.kind());
    assert_eq!(bad, Some(ErrorKind::InvalidKey));
    let clash = e
        .cache::<String, MsgPack>("n")
        .build()
        .err()
        .map(|e| e.kind());
    assert_eq!(clash, Some(ErrorKind::InvalidConfig));
    let ttl = e
        .cache::<u64, MsgPack>("m")
        .with_l1_ttl(Duration::from_secs(10))
        .with_l2_ttl(Duration::from_secs(5))
        .build()
        .err()
        .map(|e| e.kind());
    assert_eq!(ttl, Some(ErrorKind::InvalidConfig));
    Ok(())
}

/// Generates one `#[tokio::test]` per case for a backend made by `$make().await?`.
/// A batch load that began before an invalidation writes nothing back to L2, and a load
/// that began before `clear_namespace` does not land after it (leases, on every backend).
pub async fn loads_racing_invalidation_and_clear_write_nothing_back(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("race");
    let a = users(&engine(b, &p).await?)?;
    let other = users(&engine(b, &p).await?)?;
    for (key, clear) in [("1", false), ("2", true)] {
        let gate = Arc::new(tokio::sync::Notify::new());
        let g = gate.clone();
        let a2 = a.clone();
        let load = tokio::spawn(async move {
            a2.get_many_or_load(&[key], move |keys: Vec<String>| async move {
                g.notified().await;
                Ok::<_, std::io::Error>(keys.into_iter().map(|k| (k, user(0))).collect())
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        if clear {
            other.clear_namespace().await?;
        } else {
            other.invalidate(key).await?;
        }
        gate.notify_waiters();
        load.await??;
        let store = b.store().await;
        assert_eq!(
            store.get(&a.full_key(key)?).await?,
            None,
            "the load's value landed after the {}",
            if clear { "clear" } else { "invalidation" }
        );
    }
    Ok(())
}

/// `refresh` reloads a cached key from the source in the background (L2 and every
/// instance's later reads see the new value), runs one load however often it is called while
/// that load is in flight, loads a key no tier holds, and refuses an invalid key.
pub async fn refresh_reloads_in_the_background(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("refresh");
    let a = users(&engine(b, &p).await?)?;
    let other = users(&engine(b, &p).await?)?;
    a.set("1", user(1)).await?;
    assert_eq!(other.get("1").await?.as_deref(), Some(&user(1)));
    // The source now says `user(101)`; the loader waits for the gate.
    let calls = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(tokio::sync::Notify::new());
    let (c, g) = (calls.clone(), gate.clone());
    let started = a.refresh("1", move |_| async move {
        g.notified().await;
        c.fetch_add(1, Ordering::SeqCst);
        Ok::<_, std::io::Error>(user(101))
    })?;
    assert!(started, "nothing was in flight");
    // In flight: a second refresh starts nothing; reads meanwhile still get the old value.
    let again = a.refresh("1", |_| async {
        Err::<User, _>(std::io::Error::other("a second load"))
    })?;
    assert!(!again);
    assert_eq!(a.get("1").await?.as_deref(), Some(&user(1)));
    gate.notify_waiters();
    let mut reloaded = false;
    for _ in 0..400 {
        if a.in_flight() == 0 && a.get("1").await?.as_deref() == Some(&user(101)) {
            reloaded = true;
            break;
        }
        gate.notify_waiters();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(reloaded, "the refresh did not land in L1");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one load");
    // L2 holds it: a fresh engine reads it there, and `other` once its L1 copy is dropped
    // (by the bus, or here by hand on a backend without one).
    let fresh = users(&engine(b, &p).await?)?;
    assert_eq!(fresh.get("1").await?.as_deref(), Some(&user(101)));
    other.invalidate_local("1");
    assert_eq!(other.get("1").await?.as_deref(), Some(&user(101)));
    // A key no tier holds is loaded and filled.
    assert!(a.refresh("2", |_| async { Ok::<_, std::io::Error>(user(2)) })?);
    let mut filled = false;
    for _ in 0..400 {
        if fresh.get("2").await?.as_deref() == Some(&user(2)) {
            filled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(filled, "the refresh of an uncached key did not reach L2");
    let bad = a.refresh("", |_| async { Ok::<_, std::io::Error>(user(0)) });
    assert_eq!(bad.err().map(|e| e.kind()), Some(ErrorKind::InvalidKey));
    assert_eq!(a.in_flight(), 0, "an invalid key leaves nothing in flight");
    Ok(())
}

/// `Engine::shutdown` after ordinary writes and invalidations: nothing left to settle or
/// publish, and what the engine wrote is in L2 for the next one.
pub async fn shutdown_after_normal_work_leaves_nothing_behind(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("shutdown");
    let engine = engine(b, &p).await?;
    let c = users(&engine)?;
    for id in 0..20u64 {
        c.set(&id.to_string(), user(id)).await?;
    }
    for id in 0..5u64 {
        c.invalidate(&id.to_string()).await?;
    }
    let report = engine.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report, cache_tiered::ShutdownReport::default());
    drop(c);
    drop(engine);
    let next = users(&self::engine(b, &p).await?)?;
    assert_eq!(next.get("7").await?.as_deref(), Some(&user(7)));
    assert_eq!(next.get("3").await?, None);
    Ok(())
}

/// The L2 header of `key` in `c`'s namespace, and its payload.
async fn l2_header(
    b: &dyn Backend,
    c: &Cache<User, MsgPack>,
    key: &str,
) -> Option<(Header, Vec<u8>)> {
    let bytes = b.store().await.get(&c.full_key(key).ok()?).await.ok()??;
    let (h, payload) = Header::decode(&bytes).ok()?;
    Some((h, payload.to_vec()))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Wait until `c` has no load in flight (a background refresh ended).
async fn settle(c: &Cache<User, MsgPack>) {
    for _ in 0..400 {
        if c.in_flight() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A conditional refresh: the loader sees the value held, answers "unchanged", and the value
/// stays as it was (the same payload in L2) with its expiry renewed in both tiers. Answering
/// "unchanged" with nothing at hand is a loader error that leaves nothing behind.
pub async fn loader_context_unchanged_renews_the_ttl(b: &dyn Backend) -> TestResult {
    use cache_tiered::{LoadContext, Loaded};
    let p = unique_prefix("unchanged");
    let e = engine(b, &p).await?;
    let a = e
        .cache::<User, MsgPack>("users")
        .with_jitter(0.0)
        .with_l1_ttl(Duration::from_secs(5))
        .with_l2_ttl(Duration::from_secs(5))
        .build()?;
    a.set("1", user(1)).await?;
    let (before, payload) = l2_header(b, &a, "1").await.ok_or("no L2 value")?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let seen = Arc::new(std::sync::Mutex::new(None));
    let s = seen.clone();
    assert!(
        a.refresh_with("1", move |ctx: LoadContext<User>| async move {
            *s.lock().unwrap() = Some((ctx.key().to_owned(), ctx.previous().cloned(), ctx.age()));
            Ok::<_, std::io::Error>(Loaded::unchanged())
        })?
    );
    settle(&a).await;
    let (key, previous, age) = seen
        .lock()
        .unwrap()
        .clone()
        .ok_or("the loader did not run")?;
    assert_eq!(key, "1");
    assert_eq!(
        previous.as_deref(),
        Some(&user(1)),
        "the loader saw the held value"
    );
    assert!(
        age.is_some_and(|a| a >= Duration::from_millis(40)),
        "age {age:?}"
    );
    let (after, same) = l2_header(b, &a, "1").await.ok_or("the value left L2")?;
    assert_eq!(same, payload, "no new value was written");
    assert!(
        after.expires_at_ms >= before.expires_at_ms + 40,
        "the L2 expiry was renewed: {} -> {}",
        before.expires_at_ms,
        after.expires_at_ms
    );
    assert_eq!(a.get_local("1"), Some(Some(Arc::new(user(1)))));
    assert_eq!(a.stats().loads, 1);
    // Nothing at hand: "unchanged" fails the load, writes nothing.
    let r = a
        .get_or_load_with(
            "2",
            &cache_tiered::CallOptions::new(),
            |_ctx: LoadContext<User>| async { Ok::<_, std::io::Error>(Loaded::unchanged()) },
        )
        .await;
    assert_eq!(r.err().map(|e| e.kind()), Some(ErrorKind::Loader));
    assert_eq!(a.in_flight(), 0);
    assert!(l2_header(b, &a, "2").await.is_none());
    Ok(())
}

/// The loader chooses how its answer is cached: its own TTLs, "do not cache", tags; a
/// contradictory TTL is a typed error that leaves nothing behind.
pub async fn loader_context_sets_ttls_no_cache_and_tags(b: &dyn Backend) -> TestResult {
    use cache_tiered::{CallOptions, LoadContext, Loaded};
    let p = unique_prefix("loaded");
    let a = users(&engine(b, &p).await?)?;
    let fresh = users(&engine(b, &p).await?)?;
    let opts = CallOptions::new();
    // Own TTLs: the L2 header expires within the loader's 2 s, not the cache's 10 min.
    let v = a
        .get_or_load_with("1", &opts, |_ctx: LoadContext<User>| async {
            Ok::<_, std::io::Error>(
                Loaded::value(user(1))
                    .with_ttls(Some(Duration::from_secs(1)), Some(Duration::from_secs(2))),
            )
        })
        .await?;
    assert_eq!(v.as_deref(), Some(&user(1)));
    let (h, _) = l2_header(b, &a, "1").await.ok_or("not in L2")?;
    assert!(
        h.expires_at_ms <= now_ms() + 2_000,
        "L2 TTL is the loader's"
    );
    assert!(h.expires_at_ms + 60_000 > now_ms() + 60_000 - 100);
    // Not cached: the callers get it, the next read loads again, no tier holds it.
    let calls = Arc::new(AtomicU64::new(0));
    for _ in 0..2 {
        let c = calls.clone();
        let v = a
            .get_or_load_with("2", &opts, move |_ctx: LoadContext<User>| async move {
                c.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(Loaded::value(user(2)).no_cache())
            })
            .await?;
        assert_eq!(v.as_deref(), Some(&user(2)));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(a.get_local("2"), None);
    assert_eq!(fresh.get("2").await?, None);
    // Tags: the filled key is dropped by its tag.
    a.get_or_load_with("3", &opts, |_ctx: LoadContext<User>| async {
        Ok::<_, std::io::Error>(Loaded::value(user(3)).with_tags(["team"]))
    })
    .await?;
    assert_eq!(fresh.get("3").await?.as_deref(), Some(&user(3)));
    assert_eq!(a.invalidate_tag("team").await?, 1);
    assert_eq!(a.get("3").await?, None);
    // An absence is cached as one.
    let v = a
        .get_or_load_with("4", &opts, |_ctx: LoadContext<User>| async {
            Ok::<_, std::io::Error>(Loaded::absent())
        })
        .await?;
    assert_eq!(v, None);
    assert_eq!(a.get_local("4"), Some(None));
    // Contradictory TTLs from the loader: a typed error, nothing cached or left in flight.
    let r = a
        .get_or_load_with("5", &opts, |_ctx: LoadContext<User>| async {
            Ok::<_, std::io::Error>(
                Loaded::value(user(5))
                    .with_ttls(Some(Duration::from_secs(9)), Some(Duration::from_secs(1))),
            )
        })
        .await;
    assert_eq!(r.err().map(|e| e.kind()), Some(ErrorKind::InvalidConfig));
    assert_eq!(a.in_flight(), 0);
    assert_eq!(fresh.get("5").await?, None);
    assert_eq!(a.get_local("5"), None);
    Ok(())
}

/// Per-call options: each skip does what it says, and contradictions are typed errors at the
/// call that change nothing.
pub async fn call_options_skip_tiers_and_refuse_contradictions(b: &dyn Backend) -> TestResult {
    use cache_tiered::{CallOptions, LoadContext, Loaded};
    let p = unique_prefix("options");
    let a = users(&engine(b, &p).await?)?;
    let fresh = users(&engine(b, &p).await?)?;
    // skip_l2_write: L2 drops the key, this L1 holds the new value.
    a.set("1", user(1)).await?;
    a.set_with("1", user(11), &CallOptions::new().skip_l2_write())
        .await?;
    assert_eq!(
        fresh.get("1").await?,
        None,
        "L2 must not keep the older value"
    );
    assert_eq!(a.get_local("1"), Some(Some(Arc::new(user(11)))));
    // skip_l1_read reads L2 (which has nothing); skip_l2_read answers from L1.
    assert_eq!(
        a.get_with("1", &CallOptions::new().skip_l1_read()).await?,
        None
    );
    assert_eq!(
        a.get_with("1", &CallOptions::new().skip_l2_read())
            .await?
            .as_deref(),
        Some(&user(11))
    );
    // skip_l1_write: L2 holds it, this L1 does not (and drops its older copy).
    a.set_with("1", user(12), &CallOptions::new().skip_l1_write())
        .await?;
    assert_eq!(a.get_local("1"), None);
    assert_eq!(fresh.get("1").await?.as_deref(), Some(&user(12)));
    // A read that skips the L1 write leaves L1 empty after an L2 hit.
    assert_eq!(
        a.get_with("1", &CallOptions::new().skip_l1_write())
            .await?
            .as_deref(),
        Some(&user(12))
    );
    assert_eq!(a.get_local("1"), None);
    // A load that skips L2: the loader runs although L2 holds the key, and L2 keeps its value.
    let v = a
        .get_or_load_with(
            "1",
            &CallOptions::new().skip_l2(),
            |_ctx: LoadContext<User>| async { Ok::<_, std::io::Error>(Loaded::value(user(13))) },
        )
        .await?;
    assert_eq!(v.as_deref(), Some(&user(13)));
    assert_eq!(a.get_local("1"), Some(Some(Arc::new(user(13)))));
    fresh.invalidate_local("1");
    assert_eq!(fresh.get("1").await?.as_deref(), Some(&user(12)));
    // Per-call TTLs on a write.
    a.set_with(
        "2",
        user(2),
        &CallOptions::new().with_l2_ttl(Duration::from_secs(3)),
    )
    .await?;
    let (h, _) = l2_header(b, &a, "2").await.ok_or("not in L2")?;
    assert!(h.expires_at_ms <= now_ms() + 3_000);
    // Contradictions.
    let invalid = |r: Result<_, cache_tiered::Error>| {
        r.err().map(|e| e.kind()) == Some(ErrorKind::InvalidConfig)
    };
    assert!(invalid(
        a.get_with("3", &CallOptions::new().skip_l1_read().skip_l2_read())
            .await
            .map(|_| ())
    ));
    assert!(invalid(
        a.set_with("3", user(3), &CallOptions::new().skip_l1().skip_l2())
            .await
    ));
    assert!(invalid(
        a.set_with(
            "3",
            user(3),
            &CallOptions::new().background_l2_write().skip_l2_write()
        )
        .await
    ));
    assert!(invalid(
        a.set_with(
            "3",
            user(3),
            &CallOptions::new().with_l2_ttl(Duration::ZERO)
        )
        .await
    ));
    assert!(invalid(
        a.set_with(
            "3",
            user(3),
            &CallOptions::new()
                .with_l1_ttl(Duration::from_secs(9))
                .with_l2_ttl(Duration::from_secs(1))
        )
        .await
    ));
    let loader =
        |_ctx: LoadContext<User>| async { Ok::<_, std::io::Error>(Loaded::value(user(3))) };
    assert!(invalid(
        a.get_or_load_with("3", &CallOptions::new().skip_l1().skip_l2(), loader)
            .await
            .map(|_| ())
    ));
    assert!(invalid(
        a.get_or_load_with(
            "3",
            &CallOptions::new()
                .with_loader_timeouts(Some(Duration::from_secs(2)), Some(Duration::from_secs(1))),
            loader
        )
        .await
        .map(|_| ())
    ));
    assert!(invalid(
        a.get_or_load_with("3", &CallOptions::new().background_l2_write(), loader)
            .await
            .map(|_| ())
    ));
    assert_eq!(a.in_flight(), 0);
    assert_eq!(a.get_local("3"), None);
    assert_eq!(fresh.get("3").await?, None);
    Ok(())
}

/// Background L2 writes: the call returns with L1 holding the value; the writes land in call
/// order per key, also against later foreground writes and invalidations; shutdown finishes
/// them.
pub async fn background_l2_writes_land_in_call_order(b: &dyn Backend) -> TestResult {
    use cache_tiered::CallOptions;
    let p = unique_prefix("background");
    let e = engine(b, &p).await?;
    let a = users(&e)?;
    let bg = CallOptions::new().background_l2_write();
    for i in 0..60u64 {
        let key = format!("k{}", i % 6);
        a.set_with(&key, user(i), &bg).await?;
        assert_eq!(a.get_local(&key), Some(Some(Arc::new(user(i)))));
    }
    // Foreground writes after background ones of the same key win.
    a.set("k0", user(1000)).await?;
    a.invalidate("k1").await?;
    a.set_with("k2", user(2000), &bg).await?;
    a.invalidate("k2").await?;
    let report = e.shutdown(Duration::from_secs(10)).await;
    assert_eq!(report.unwritten_background, 0, "{report:?}");
    let fresh = users(&engine(b, &p).await?)?;
    assert_eq!(fresh.get("k0").await?.as_deref(), Some(&user(1000)));
    assert_eq!(fresh.get("k1").await?, None);
    assert_eq!(fresh.get("k2").await?, None);
    for k in 3..6u64 {
        assert_eq!(
            fresh.get(&format!("k{k}")).await?.as_deref(),
            Some(&user(54 + k)),
            "k{k}"
        );
    }
    Ok(())
}

/// `expire` with fail-safe: no tier serves the value as fresh any more, but it stays as the
/// fallback of a failing loader; a working loader replaces it. Without fail-safe it is an
/// invalidation.
pub async fn expire_keeps_a_stale_fallback(b: &dyn Backend) -> TestResult {
    let p = unique_prefix("expire");
    let safe = |e: &Engine| {
        e.cache::<User, MsgPack>("users")
            .with_jitter(0.0)
            .with_fail_safe(Duration::from_secs(60), Duration::from_millis(200))
            .build()
    };
    let a = safe(&engine(b, &p).await?)?;
    let fresh = safe(&engine(b, &p).await?)?;
    a.set("1", user(1)).await?;
    a.expire("1").await?;
    assert_eq!(a.get("1").await?, None, "not fresh in L1");
    assert_eq!(fresh.get("1").await?, None, "not fresh in L2");
    let failing = |_k: String| async { Err::<User, _>(std::io::Error::other("source down")) };
    let v = a.get_or_load("1", failing).await?;
    assert_eq!(*v, user(1), "L1's stale value served");
    let v = fresh.get_or_load("1", failing).await?;
    assert_eq!(*v, user(1), "L2's stale value served");
    assert!(fresh.stats().stale_served >= 1);
    let other = safe(&engine(b, &p).await?)?;
    let v = other
        .get_or_load("1", |_k| async { Ok::<_, std::io::Error>(user(11)) })
        .await?;
    assert_eq!(*v, user(11));
    // Expiring a key no tier holds is no error; a bad key is.
    a.expire("nothing").await?;
    assert_eq!(
        a.expire("").await.err().map(|e| e.kind()),
        Some(ErrorKind::InvalidKey)
    );
    // Without fail-safe: an invalidation.
    let plain = users(&engine(b, &p).await?)?;
    plain.set("2", user(2)).await?;
    plain.expire("2").await?;
    assert_eq!(plain.get_local("2"), None);
    assert!(l2_header(b, &plain, "2").await.is_none());
    Ok(())
}

macro_rules! behaviour_suite {
    ($make:path) => {
        behaviour_suite!(@cases $make;
            full_miss_loads_once_and_fills_both,
            l2_hit_fills_l1,
            invalidate_clears_both,
            ttl_expiry_in_both_tiers,
            engines_share_l2_writes,
            reads_values_written_with_another_codec,
            corrupt_bytes_are_a_miss_and_get_overwritten,
            oversized_value_is_refused_before_sending,
            negative_results_are_cached,
            get_many_mixes_tiers,
            get_many_or_load_batches_the_misses,
            concurrent_callers_share_one_load,
            four_engines_one_load_with_leases,
            write_through_keeps_source_and_cache_in_step,
            tags_invalidate_across_keys,
            loader_errors_reach_every_waiter,
            dropped_leader_still_completes_the_load,
            raw_mode_writes_plain_payloads,
            ttl_jitter_spreads_expiry,
            invalid_keys_are_typed_errors,
            loads_racing_invalidation_and_clear_write_nothing_back,
            refresh_reloads_in_the_background,
            shutdown_after_normal_work_leaves_nothing_behind,
            loader_context_unchanged_renews_the_ttl,
            loader_context_sets_ttls_no_cache_and_tags,
            call_options_skip_tiers_and_refuse_contradictions,
            background_l2_writes_land_in_call_order,
            expire_keeps_a_stale_fallback,
            keep_serves_through_a_short_bus_loss,
        );
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() -> crate::common::TestResult {
                let backend = $make().await?;
                crate::common::$case(&backend).await
            }
        )*
    };
}

/// Issue 16, `ReconnectPolicy`: a zero staleness bound is a typed config error; under
/// `Keep` an engine serves its L1 through a short loss of its bus subscription (a write it
/// missed included, within the bound) and flushes when the subscription is back.
pub async fn keep_serves_through_a_short_bus_loss(b: &dyn Backend) -> TestResult {
    use cache_tiered::core::ReconnectPolicy;
    let p = unique_prefix("on-loss");
    let bus = cache_tiered::MemoryBus::new();
    let config = |policy| cache_tiered::BusConfig::default().with_on_loss(policy);
    let bad = cache_tiered::builder(&p)
        .with_remote(b.store().await)
        .with_bus_transport(bus.attach())
        .with_bus_config(config(ReconnectPolicy::keep(Duration::ZERO)))
        .build()
        .await;
    assert_eq!(bad.err().map(|e| e.kind()), Some(ErrorKind::InvalidConfig));
    let writer = cache_tiered::builder(&p)
        .with_l1_capacity_bytes(8 * 1024 * 1024)
        .with_remote(b.store().await)
        .with_bus_transport(bus.attach())
        .build()
        .await?;
    let keeper_bus = bus.attach();
    let keeper = cache_tiered::builder(&p)
        .with_l1_capacity_bytes(8 * 1024 * 1024)
        .with_remote(b.store().await)
        .with_bus_transport(keeper_bus.clone())
        .with_bus_config(config(ReconnectPolicy::keep(Duration::from_secs(60))))
        .build()
        .await?;
    let (w, k) = (users(&writer)?, users(&keeper)?);
    for id in 0..10u64 {
        w.set(&id.to_string(), user(id)).await?;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = k
        .get_many(&(0..10u64).map(|i| i.to_string()).collect::<Vec<_>>())
        .await?;
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, v)| v.as_deref() == Some(&user(i as u64))));
    tokio::time::sleep(Duration::from_millis(5)).await;

    keeper_bus.disconnect();
    w.set("3", user(33)).await?; // the keeper does not hear of it
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(keeper.bus_stats().map(|s| s.losses), Some(1));
    for id in 0..10u64 {
        assert_eq!(
            k.get_local(&id.to_string()).flatten().as_deref(),
            Some(&user(id)),
            "the keeper did not keep {id} through the loss"
        );
    }

    keeper_bus.reconnect();
    let mut flushed = false;
    for _ in 0..500 {
        if k.get_local("3").is_none() {
            flushed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(flushed, "the keeper kept its L1 past the reconnect");
    assert_eq!(k.get("3").await?.as_deref(), Some(&user(33)));
    assert_eq!(keeper.bus_stats().map(|s| s.reconnects), Some(1));
    Ok(())
}
