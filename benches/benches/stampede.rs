//! Stampede: 1,000 concurrent readers of one cold key whose loader takes 50 ms.
//!
//! Subjects, each run in the same process against the Redis at `REDIS_URL`, in rotating order,
//! `rounds` times with a fresh key every round:
//!
//! - `tiercache`: `Cache::get_or_load(key, loader)` from 1,000 tasks spawned at once;
//! - `naive cache-aside` (the reference write-up's pattern, no protection): raw redis-rs
//!   `GET` → miss → loader → `SET`, from 1,000 tasks;
//! - `moka get_with`: `moka::future::Cache::get_with(key, loader)` (in-process coalescing,
//!   no L2), from 1,000 tasks.
//!
//! Figures: loader calls per round (mean) and each waiter's time from its own start to its
//! answer (p50, p99 over all waiters of all rounds), and how long each loader call really
//! took (tokio's 50 ms sleep lasts about 51 ms: its timer rounds up to a 1 ms tick). Target:
//! waiter p99 <= the loader's measured time + 1 ms.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::{sample_user, Latencies, Record, Role, TargetKind, User};
use cache_tiered::{Cache, MsgPack};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const WAITERS: usize = 1_000;
const LOADER: Duration = Duration::from_millis(50);

/// Loader calls and the time they took in total (the 50 ms sleep takes a little longer:
/// tokio's timer rounds up to its 1 ms tick).
#[derive(Default)]
struct LoaderStats {
    calls: AtomicU64,
    ns: AtomicU64,
}

async fn load(stats: Arc<LoaderStats>, id: u64) -> User {
    stats.calls.fetch_add(1, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(LOADER).await;
    stats
        .ns
        .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    sample_user(id)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    Tiercache,
    Naive,
    Moka,
}

/// One round: (loader calls, their total time in ns, per-waiter latencies in ns).
async fn round(
    who: Who,
    key: String,
    cache: &Cache<User, MsgPack>,
    con: &redis::aio::MultiplexedConnection,
    moka: &moka::future::Cache<String, Arc<User>>,
) -> Result<(u64, u64, Vec<f64>), BoxError> {
    let calls = Arc::new(LoaderStats::default());
    let mut handles = Vec::with_capacity(WAITERS);
    for _ in 0..WAITERS {
        let (key, calls) = (key.clone(), Arc::clone(&calls));
        let (cache, mut con, moka) = (cache.clone(), con.clone(), moka.clone());
        handles.push(tokio::spawn(async move {
            let start = Instant::now();
            let user: Arc<User> = match who {
                Who::Tiercache => {
                    cache
                        .get_or_load(&key, move |_| async move {
                            Ok::<_, BoxError>(load(calls, 7).await)
                        })
                        .await?
                }
                Who::Naive => {
                    let got: Option<Vec<u8>> =
                        redis::cmd("GET").arg(&key).query_async(&mut con).await?;
                    match got {
                        Some(b) => Arc::new(rmp_serde::from_slice(&b)?),
                        None => {
                            let u = load(calls, 7).await;
                            let bytes = rmp_serde::to_vec_named(&u)?;
                            let () = redis::cmd("SET")
                                .arg(&key)
                                .arg(bytes)
                                .arg("EX")
                                .arg(300)
                                .query_async(&mut con)
                                .await?;
                            Arc::new(u)
                        }
                    }
                }
                Who::Moka => {
                    moka.get_with(key, async move { Arc::new(load(calls, 7).await) })
                        .await
                }
            };
            let d = start.elapsed();
            if user.id != 7 {
                return Err::<f64, BoxError>("wrong value".into());
            }
            Ok(d.as_nanos() as f64)
        }));
    }
    let mut lat = Vec::with_capacity(WAITERS);
    for h in handles {
        lat.push(h.await??);
    }
    Ok((
        calls.calls.load(Ordering::Relaxed),
        calls.ns.load(Ordering::Relaxed),
        lat,
    ))
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    let smoke = args.iter().any(|a| a == "--test");
    if !benches::selected(&benches::filters(), "stampede") {
        return Ok(());
    }
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!("stampede: REDIS_URL is not set; skipped (`cargo xtask bench` starts a Redis)");
        return Ok(());
    };
    let rounds = if smoke {
        1
    } else if benches::quick() {
        4
    } else {
        12
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let records = rt.block_on(async move {
        let engine = cache_tiered::builder("benchstampede")
            .with_redis_url(&url)
            .build()
            .await?;
        let cache: Cache<User, MsgPack> = engine
            .cache::<User, MsgPack>("s")
            .with_l1_ttl(Duration::from_secs(300))
            .with_l2_ttl(Duration::from_secs(300))
            .build()?;
        let client = redis::Client::open(url.as_str())?;
        let con = client.get_multiplexed_async_connection().await?;
        let moka: moka::future::Cache<String, Arc<User>> = moka::future::Cache::new(10_000);
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let whos = [Who::Tiercache, Who::Naive, Who::Moka];
        let mut calls = [0u64; 3];
        let mut loader_ns = [0u64; 3];
        let mut lats: [Vec<f64>; 3] = Default::default();
        for r in 0..rounds {
            for k in 0..3 {
                let i = (r + k) % 3;
                let key = format!("stampede:{nonce}:{r}:{i}");
                let (c, t, l) = round(whos[i], key, &cache, &con, &moka).await?;
                calls[i] += c;
                loader_ns[i] += t;
                lats[i].extend(l);
            }
        }
        let mut records = Vec::new();
        let w = "stampede: 1,000 get_or_load, cold key, 50 ms loader";
        let hows = [
            "Cache::get_or_load(key, loader) from 1,000 tasks spawned at once (Redis L2)",
            "naive cache-aside over raw redis-rs: GET -> miss -> loader -> SET EX, no protection, 1,000 tasks",
            "moka::future::Cache::get_with(key, loader) from 1,000 tasks (in-process only)",
        ];
        let labels = ["tiercache", "naive cache-aside", "moka get_with"];
        let subjects = ["tiercache", "naive", "moka_get_with"];
        for i in 0..3 {
            let s = Latencies::from_ns(std::mem::take(&mut lats[i]));
            let per_round = calls[i] as f64 / rounds as f64;
            let (p50, p99) = (s.percentile(50.0) / 1e3, s.percentile(99.0) / 1e3);
            // How long one loader call really took (mean), and the waiters' p99 beyond it.
            let loader_us = loader_ns[i] as f64 / calls[i].max(1) as f64 / 1e3;
            let over = p99 - loader_us;
            eprintln!(
                "stampede: {:<18} loader calls/round {per_round:>7.1}  loader took {loader_us:>8.0} µs  waiter p50 {p50:>8.0} µs  p99 {p99:>8.0} µs (loader + {over:.0} µs)",
                labels[i]
            );
            let role = if i == 0 { Role::Tiercache } else { Role::Peer };
            records.push(
                Record::result(w, subjects[i], role, labels[i], "p99_us")
                    .num("p99_us", p99)
                    .num("p50_us", p50)
                    .num("max_us", s.max() / 1e3)
                    .num("loader_calls", per_round)
                    .num("loader_us", loader_us)
                    .num("p99_over_loader_us", over)
                    .num("rounds", rounds as f64)
                    .str(
                        "note",
                        &format!(
                            "{per_round:.0} loader calls, each took {:.1} ms, p99 = loader + {:.2} ms",
                            loader_us / 1e3,
                            over / 1e3
                        ),
                    )
                    .str(
                        "how",
                        &format!(
                            "{}; {rounds} rounds (fresh key each), waiter time from its own start; loader calls per round",
                            hows[i]
                        ),
                    ),
            );
        }
        // "Loader time" is what the loader took: tokio's 50 ms sleep lasts ~51 ms.
        records.push(Record::target(
            w,
            "p99_over_loader_us",
            "",
            TargetKind::MaxAbs,
            1_000.0,
            "waiter p99 <= loader time (measured) + 1 ms",
        ));
        records.push(Record::target(
            w,
            "loader_calls",
            "",
            TargetKind::MaxAbs,
            1.0,
            "1 loader call per stampede",
        ));
        Ok::<_, BoxError>(records)
    })?;
    if !smoke {
        let path = benches::write_records("stampede", &records)?;
        eprintln!("stampede: wrote {}", path.display());
    }
    Ok(())
}
