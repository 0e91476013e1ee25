//! L1 hit of tiercache against the two-tier peer crates and redis-rs's client-side cache, all
//! connected to the Redis at `REDIS_URL`, on the same key and `User` value.
//!
//! Every subject is read the way an async handler reads it, `.await` inside a task: a batch
//! of `n` reads runs inside one `block_on` of a current-thread tokio runtime, so the runtime's
//! entry is paid once per batch. Batches are interleaved (~1 ms each, one per subject per
//! round, rotating order); ns/op = median over rounds.
//!
//! - `tiercache`: `Cache::get(key).await` → `Arc<User>`;
//! - `sisa-caching` 0.3: `HybridCacheStore::get::<User>(key).await` → a clone of `User`
//!   (default settings: local layer unbounded, 60 s local TTL; reads wait for
//!   `local_reads_enabled()`);
//! - `amalgam-cache` 0.4: `Cache::<User>::try_get(key).await` → a clone of `User` (Redis
//!   distributed cache, backplane and locker; `max_capacity` 10,000);
//! - `multi-tier-cache` 0.6: `CacheManager::get_or_compute_typed::<User>(key, ..)` → its moka
//!   L1 holds the JSON bytes, decoded on every hit (its typed read path);
//! - `redis-rs cache-aio`: RESP3 client-side cache (`CacheConfig::new()`), `GET` answered from
//!   the local cache, then `rmp_serde::from_slice::<User>`.
//!
//! A peer that fails to set up is recorded as "not run: <reason>".

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::{sample_user, Record, Role, Samples, TargetKind, User};
use tiercache::{Cache, MsgPack};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Fut<'a> = Pin<Box<dyn Future<Output = bool> + 'a>>;

const KEY: &str = "user:42";

/// One read: true on a hit with the right value.
type Read = Arc<dyn Fn() -> Fut<'static>>;

struct Subject {
    subject: &'static str,
    label: &'static str,
    role: Role,
    how: &'static str,
    read: Read,
}

async fn tiercache_subject(url: &str) -> Result<Subject, BoxError> {
    let day = Duration::from_secs(86_400);
    let engine = tiercache::builder("benchl1p")
        .redis_url(url)
        .build()
        .await?;
    let cache: Cache<User, MsgPack> = engine
        .cache::<User, MsgPack>("l1")
        .with_l1_ttl(day)
        .with_l2_ttl(day)
        .build()?;
    cache.set(KEY, sample_user(42)).await?;
    Ok(Subject {
        subject: "tiercache",
        label: "tiercache",
        role: Role::Tiercache,
        how: "Cache::get(key).await -> Arc<User> (L1 hit)",
        read: Arc::new(move || {
            let c = cache.clone();
            Box::pin(async move { matches!(c.get(KEY).await, Ok(Some(u)) if u.id == 42) })
        }),
    })
}

async fn sisa_subject(url: &str) -> Result<Subject, BoxError> {
    use sisa_caching::{CacheStore, HybridCacheSettings, HybridCacheStore};
    let settings = HybridCacheSettings::default();
    let store = HybridCacheStore::connect("benchsisa", url, &settings).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.local_reads_enabled() {
        if Instant::now() > deadline {
            return Err("local reads never enabled (backplane not subscribed)".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store.set(KEY, sample_user(42), None).await?;
    let _ = store.get::<User>(KEY).await?;
    Ok(Subject {
        subject: "sisa",
        label: "sisa-caching",
        role: Role::Peer,
        how: "sisa-caching 0.3 HybridCacheStore::get::<User>(key).await -> User clone (default settings)",
        read: Arc::new(move || {
            let s = store.clone();
            Box::pin(async move { matches!(s.get::<User>(KEY).await, Ok(Some(u)) if u.id == 42) })
        }),
    })
}

async fn amalgam_subject(url: &str) -> Result<Subject, BoxError> {
    use amalgam::backplane::Backplane;
    use amalgam::distributed::{DistributedCache, DistributedSerializer, JsonSerializer};
    use amalgam::distributed_lock::DistributedLocker;
    use amalgam::redis_backend::{RedisBackplane, RedisDistributedCache, RedisDistributedLocker};
    let cache = amalgam::Cache::<User>::builder()
        .max_capacity(10_000)
        .distributed(
            Arc::new(RedisDistributedCache::connect(url).await?) as Arc<dyn DistributedCache>
        )
        .serializer(Arc::new(JsonSerializer) as Arc<dyn DistributedSerializer<User>>)
        .backplane(Arc::new(RedisBackplane::connect(url).await?) as Arc<dyn Backplane>)
        .distributed_locker(
            Arc::new(RedisDistributedLocker::connect(url).await?) as Arc<dyn DistributedLocker>
        )
        .try_build()?;
    let cache = Arc::new(cache);
    cache.set(KEY, sample_user(42)).await?;
    Ok(Subject {
        subject: "amalgam",
        label: "amalgam-cache",
        role: Role::Peer,
        how: "amalgam-cache 0.4 Cache::<User>::try_get(key).await -> User clone (max_capacity 10,000)",
        read: Arc::new(move || {
            let c = Arc::clone(&cache);
            Box::pin(async move { matches!(c.try_get(KEY).await, Ok(Some(u)) if u.id == 42) })
        }),
    })
}

async fn multi_tier_subject(url: &str) -> Result<Subject, BoxError> {
    use multi_tier_cache::{CacheStrategy, CacheSystem};
    let sys = CacheSystem::with_redis_url(url).await?;
    let mgr = Arc::clone(sys.cache_manager());
    let first: User = mgr
        .get_or_compute_typed(KEY, CacheStrategy::LongTerm, || async {
            Ok(sample_user(42))
        })
        .await?;
    if first.id != 42 {
        return Err("wrong value".into());
    }
    let sys = Arc::new(sys);
    Ok(Subject {
        subject: "multi_tier",
        label: "multi-tier-cache",
        role: Role::Peer,
        how: "multi-tier-cache 0.6 CacheManager::get_or_compute_typed::<User>(key, ..).await (moka L1 holds JSON bytes, decoded per hit)",
        read: Arc::new(move || {
            let (m, _keep) = (Arc::clone(&mgr), Arc::clone(&sys));
            Box::pin(async move {
                let r: Result<User, _> = m
                    .get_or_compute_typed(KEY, CacheStrategy::LongTerm, || async {
                        Ok(sample_user(42))
                    })
                    .await;
                matches!(r, Ok(u) if u.id == 42)
            })
        }),
    })
}

async fn redis_cache_subject(url: &str) -> Result<Subject, BoxError> {
    use redis::caching::CacheConfig;
    use redis::{AsyncCommands, AsyncConnectionConfig};
    let sep = if url.contains('?') { '&' } else { '?' };
    let client = redis::Client::open(format!("{url}{sep}protocol=resp3"))?;
    let mut con = client
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new().set_cache_config(CacheConfig::new()),
        )
        .await?;
    let key = "bench:cacheaio:user:42";
    let () = con
        .set(key, rmp_serde::to_vec_named(&sample_user(42))?)
        .await?;
    let _: Option<Vec<u8>> = con.get(key).await?;
    let _: Option<Vec<u8>> = con.get(key).await?;
    Ok(Subject {
        subject: "redis_cache_aio",
        label: "redis-rs cache-aio",
        role: Role::Peer,
        how: "redis-rs 1.8 RESP3 client-side cache (cache-aio, CacheConfig::new()): GET from the local cache + rmp_serde::from_slice::<User>",
        read: Arc::new(move || {
            let mut c = con.clone();
            Box::pin(async move {
                let v: Result<Option<Vec<u8>>, _> = c.get(key).await;
                match v {
                    Ok(Some(b)) => {
                        matches!(rmp_serde::from_slice::<User>(&b), Ok(u) if u.id == 42)
                    }
                    _ => false,
                }
            })
        }),
    })
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    let smoke = args.iter().any(|a| a == "--test");
    if !benches::selected(&benches::filters(), "l1_hit/peers") {
        return Ok(());
    }
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!("l1_peers: REDIS_URL is not set; skipped (`cargo xtask bench` starts a Redis)");
        return Ok(());
    };
    // The peers keep background tasks (backplanes): a multi-thread runtime runs those; the
    // reads themselves are timed inside `block_on` on this thread.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut subjects = Vec::new();
    let mut failed: Vec<(&str, &str, String)> = Vec::new();
    let u = url.as_str();
    subjects.push(rt.block_on(tiercache_subject(u))?);
    for (subject, label, r) in [
        ("sisa", "sisa-caching", rt.block_on(sisa_subject(u))),
        ("amalgam", "amalgam-cache", rt.block_on(amalgam_subject(u))),
        (
            "multi_tier",
            "multi-tier-cache",
            rt.block_on(multi_tier_subject(u)),
        ),
        (
            "redis_cache_aio",
            "redis-rs cache-aio",
            rt.block_on(redis_cache_subject(u)),
        ),
    ] {
        match r {
            Ok(s) => subjects.push(s),
            Err(e) => {
                eprintln!("l1_peers: {label}: not run: {e}");
                failed.push((subject, label, e.to_string()));
            }
        }
    }
    let batch_of = |s: &Subject, n: u64| -> Result<Duration, BoxError> {
        let read = Arc::clone(&s.read);
        rt.block_on(async move {
            let start = Instant::now();
            for _ in 0..n {
                if !read().await {
                    return Err::<Duration, BoxError>("a read missed".into());
                }
            }
            Ok(start.elapsed())
        })
    };
    let rounds = if smoke {
        2
    } else if benches::quick() {
        60
    } else {
        300
    };
    let mut sizes = Vec::new();
    for s in &subjects {
        let d = batch_of(s, 2_000)?.max(Duration::from_nanos(1));
        sizes.push(((2_000.0 * 1e6 / d.as_nanos() as f64) as u64).clamp(200, 1_000_000));
    }
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); subjects.len()];
    for r in 0..rounds {
        for k in 0..subjects.len() {
            let i = (r + k) % subjects.len();
            let d = batch_of(&subjects[i], sizes[i])?;
            per[i].push(d.as_nanos() as f64 / sizes[i] as f64);
        }
    }
    let samples: Vec<Samples> = per.into_iter().map(Samples::new).collect();
    let w = "l1_hit/peers (get.await)";
    let mut records = Vec::new();
    let mut fastest: Option<(&str, f64)> = None;
    for (s, x) in subjects.iter().zip(&samples) {
        let ns = x.percentile(50.0);
        eprintln!(
            "l1_peers: {:<20} {ns:>8.1} ns/op (p10 {:.1}, p90 {:.1})",
            s.label,
            x.percentile(10.0),
            x.percentile(90.0)
        );
        if s.role == Role::Peer && fastest.is_none_or(|(_, f)| ns < f) {
            fastest = Some((s.subject, ns));
        }
        records.push(
            Record::result(w, s.subject, s.role, s.label, "ns_per_op")
                .num("ns_per_op", ns)
                .num("p10_ns", x.percentile(10.0))
                .num("p90_ns", x.percentile(90.0))
                .num("ops_per_s", 1e9 / ns)
                .str("how", &format!("{}; .await in a batch inside block_on, median ns/op over {rounds} interleaved ~1 ms batches", s.how)),
        );
    }
    for (subject, label, e) in failed {
        records.push(
            Record::result(w, subject, Role::Peer, label, "ns_per_op")
                .str("error", &format!("not run: {e}")),
        );
    }
    if let Some((peer, _)) = fastest {
        records.push(Record::target(
            w,
            "ns_per_op",
            peer,
            TargetKind::MaxRatio,
            0.25,
            ">= 4x faster than the fastest peer",
        ));
    }
    if !smoke {
        let path = benches::write_records("l1_peers", &records)?;
        eprintln!("l1_peers: wrote {}", path.display());
    }
    Ok(())
}
