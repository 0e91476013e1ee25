//! L2 write throughput against the Redis at `REDIS_URL`, side by side with raw redis-rs: what
//! a `set` costs beyond the raw `SET` (no target: the cache sends more per write).
//!
//! - `tiercache`: `Cache::set(key, user).await`: key check, MessagePack encode, 16-byte
//!   header, a `DEL` of the key's fill lease and the `SET .. PX` in one pipeline (leases are
//!   on by default), L1 insert, and an invalidation published on the bus (publishes are
//!   batched): three commands for Redis where the raw client sends one.
//! - `redis-rs`: `rmp_serde::to_vec_named(&user)` then `SET key bytes PX ttl` with
//!   `query_async` on one `MultiplexedConnection` shared by every task (so concurrent `SET`s
//!   are pipelined on it, as tiercache's own connection is; it cannot batch across callers).
//!
//! 1, 16 and 64 tasks, each writing its own key in a loop for a fixed time, cut in slices run
//! in the order cache, raw, raw, cache (repeated); ops/s is the total count over the total
//! elapsed time. At the end every task's key is read back through each subject's own path
//! and must hold the last value written (a lost or reordered write fails the bench).

use std::sync::atomic::Ordering;
use std::time::Duration;

use benches::{sample_user, BoxError, Record, Role, User};
use cache_tiered::{Cache, MsgPack};
use redis::aio::MultiplexedConnection;

const TTL: Duration = Duration::from_secs(3600);

fn cache_key(i: usize) -> String {
    format!("w:{i}")
}

fn raw_key(i: usize) -> String {
    format!("bench:raw:w:{i}")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Cache,
    Raw,
}

/// The value a task writes on its `n`-th write (its id field counts the writes).
fn value(task: usize, n: u64) -> User {
    let mut u = sample_user(task as u64);
    u.id = n;
    u
}

/// Every task writes its own key until told to stop; returns each task's number of writes
/// (the last value it wrote) and the elapsed time.
async fn throughput(
    who: Who,
    cache: &Cache<User, MsgPack>,
    con: &MultiplexedConnection,
    tasks: usize,
    run: Duration,
) -> Result<(Vec<u64>, Duration), BoxError> {
    benches::run_tasks(tasks, run, |t, stop| {
        let (cache, mut con) = (cache.clone(), con.clone());
        async move {
            let (ck, rk) = (cache_key(t), raw_key(t));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let user = value(t, n);
                match who {
                    Who::Cache => cache.set(&ck, user).await?,
                    Who::Raw => {
                        let bytes = rmp_serde::to_vec_named(&user)?;
                        let () = redis::cmd("SET")
                            .arg(&rk)
                            .arg(bytes)
                            .arg("PX")
                            .arg(TTL.as_millis() as u64)
                            .query_async(&mut con)
                            .await?;
                    }
                }
            }
            Ok(n)
        }
    })
    .await
}

/// Each task's key holds the last value it wrote (read from L2 for the cache).
async fn check(
    who: Who,
    cache: &Cache<User, MsgPack>,
    con: &mut MultiplexedConnection,
    last: &[u64],
) -> Result<(), BoxError> {
    for (t, n) in last.iter().enumerate() {
        let got = match who {
            Who::Cache => {
                cache.invalidate_local(&cache_key(t));
                cache.get(&cache_key(t)).await?.map(|u| u.id)
            }
            Who::Raw => {
                let bytes: Option<Vec<u8>> =
                    redis::cmd("GET").arg(raw_key(t)).query_async(con).await?;
                match bytes {
                    Some(b) => Some(rmp_serde::from_slice::<User>(&b)?.id),
                    None => None,
                }
            }
        };
        if got != Some(*n) {
            return Err(format!("task {t}: key holds write {got:?}, the last was {n}").into());
        }
    }
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let filters = benches::filters();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") || !benches::selected(&filters, "l2_set") {
        return Ok(());
    }
    // `cargo bench -- --test` (or `cargo test --benches`): a smoke run, nothing written.
    let smoke = args.iter().any(|a| a == "--test");
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!("l2_set: REDIS_URL is not set; skipped (`cargo xtask bench` starts a Redis)");
        return Ok(());
    };
    let (run, abba_reps) = if smoke {
        (Duration::from_millis(100), 1u32)
    } else if benches::quick() {
        (Duration::from_secs(2), 2)
    } else {
        (Duration::from_secs(6), 3)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let records = rt.block_on(async move {
        let engine = cache_tiered::builder("bench")
            .with_redis_url(&url)
            .build()
            .await?;
        let cache: Cache<User, MsgPack> = engine
            .cache::<User, MsgPack>("l2set")
            .with_l1_ttl(TTL)
            .with_l2_ttl(TTL)
            .build()?;
        let client = redis::Client::open(url.as_str())?;
        let mut con = client.get_multiplexed_async_connection().await?;
        let mut records = Vec::new();
        for tasks in [1usize, 16, 64] {
            let w = format!(
                "l2_set/throughput, {tasks} task{}",
                if tasks == 1 { "" } else { "s" }
            );
            let mut totals = [(0u64, Duration::ZERO); 2];
            let slice = run / (2 * abba_reps);
            for who in [Who::Cache, Who::Raw, Who::Raw, Who::Cache]
                .iter()
                .cycle()
                .take(4 * abba_reps as usize)
            {
                let (last, elapsed) = throughput(*who, &cache, &con, tasks, slice).await?;
                check(*who, &cache, &mut con, &last).await?;
                let t = &mut totals[usize::from(*who == Who::Raw)];
                t.0 += last.iter().sum::<u64>();
                t.1 += elapsed;
            }
            for (i, (subject, role, label, how)) in [
                (
                    "tiercache",
                    Role::Tiercache,
                    "tiercache set",
                    "Cache::set(key, user).await: encode + header + DEL lease + SET PX \
                     (one pipeline) + L1 insert + invalidation published",
                ),
                (
                    "redis-rs",
                    Role::Peer,
                    "raw redis-rs encode + SET",
                    "rmp_serde::to_vec_named + SET key bytes PX ttl on one shared \
                     MultiplexedConnection",
                ),
            ]
            .into_iter()
            .enumerate()
            {
                let (n, elapsed) = totals[i];
                let ops = n as f64 / elapsed.as_secs_f64();
                eprintln!("l2_set: {subject:<10} {tasks:>2} tasks {ops:>10.0} ops/s");
                records.push(
                    Record::result(&w, subject, role, label, "ops_per_s")
                        .num("ops_per_s", ops)
                        .num("tasks", tasks as f64)
                        .num("seconds", elapsed.as_secs_f64())
                        .str(
                            "how",
                            &format!(
                                "{how}; each task loops on its own key, slices in A B B A \
                                 order, total ops / total elapsed; last writes checked"
                            ),
                        ),
                );
            }
        }
        Ok::<_, BoxError>(records)
    })?;
    if !smoke && !records.is_empty() {
        let path = benches::write_records("l2_set", &records)?;
        eprintln!("l2_set: wrote {}", path.display());
    }
    Ok(())
}
