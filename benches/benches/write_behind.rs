//! Write-behind vs write-through: accepted writes per second and time until the source has
//! everything.
//!
//! The source of truth is an in-memory map behind a mutex whose every call (one row for
//! write-through, one batch for write-behind) first sleeps a fixed 1 ms, standing in for a
//! database round trip (no SQLite, to keep the build light). The cache's L2 is the Redis at
//! `REDIS_URL` when set, else the in-process `MemoryStore`.
//!
//! Subjects, each writing the same workload (`writes` writes of `sample_user` over `keys`
//! keys, spread over `tasks` concurrent tasks):
//!
//! - `write-through`: `Cache::write(key, user, writer)`; the caller waits for the source;
//! - `write-behind`: `WriteBehind::write_behind(key, user)` (memory mode, defaults:
//!   `max_batch` 256, `max_age` 50 ms); the caller waits for the cache update only;
//! - `write-behind durable` (only with `REDIS_URL`): the same with the queue in a Redis Stream.
//!
//! Figures: `ops_per_s` = accepted writes / time until the last `write`/`write_behind` call
//! returned; `flush_ms` = time from there until `flush()` returned (everything in the source;
//! 0 for write-through); `total_ms` = both; `source_calls` = writer calls made.
//!
//! Not criterion: one timed run per subject and task count (after a warm-up run), repeated
//! `reps` times in rotating order, median reported. Run:
//! `cargo bench -p benches --features peers,write-behind --bench write_behind`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use benches::{sample_user, Record, Role, User};
use cache_tiered::cache_writebehind::{Batch, WriteBehind};
use cache_tiered::{Cache, MsgPack};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Latency of one source call (a row or a batch).
const SOURCE_LATENCY: Duration = Duration::from_millis(1);

/// The source of truth: a map, 1 ms per call.
#[derive(Clone, Default)]
struct Source {
    rows: Arc<Mutex<HashMap<String, Arc<User>>>>,
    calls: Arc<AtomicU64>,
}

impl Source {
    async fn write_rows(&self, rows: Vec<(String, Arc<User>)>) -> Result<(), BoxError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(SOURCE_LATENCY).await;
        let mut map = self.rows.lock().map_err(|_| "source poisoned")?;
        for (k, v) in rows {
            map.insert(k, v);
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.rows.lock().map_or(0, |m| m.len())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Subject {
    Through,
    Behind,
    Durable,
}

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Subject::Through => "write-through",
            Subject::Behind => "write-behind",
            Subject::Durable => "write-behind durable",
        }
    }
}

struct Run {
    accept: Duration,
    flush: Duration,
    calls: u64,
}

struct Setup {
    engine: cache_tiered::Engine,
    redis: Option<cache_tiered::RedisStore>,
    next_ns: AtomicU64,
}

impl Setup {
    /// A fresh namespace per run (a durable stream of its own too).
    fn cache(&self) -> Result<Cache<User, MsgPack>, BoxError> {
        let n = self.next_ns.fetch_add(1, Ordering::Relaxed);
        Ok(self
            .engine
            .cache::<User, MsgPack>(format!("wb{}-{n}", std::process::id()))
            .with_l1_ttl(Duration::from_secs(3600))
            .with_l2_ttl(Duration::from_secs(3600))
            .build()?)
    }
}

async fn run(
    setup: &Setup,
    subject: Subject,
    tasks: usize,
    writes: usize,
    keys: usize,
) -> Result<Run, BoxError> {
    let cache = setup.cache()?;
    let source = Source::default();
    let per_task = writes / tasks;
    let users: Arc<Vec<Arc<User>>> =
        Arc::new((0..keys as u64).map(|i| Arc::new(sample_user(i))).collect());
    let wb = match subject {
        Subject::Through => None,
        Subject::Behind | Subject::Durable => {
            let s = source.clone();
            let writer = move |batch: Batch<User>| {
                let s = s.clone();
                async move { s.write_rows(batch).await }
            };
            let mut b = WriteBehind::builder(cache.clone(), writer);
            if subject == Subject::Durable {
                let redis = setup.redis.clone().ok_or("durable needs REDIS_URL")?;
                b = b.with_redis(redis);
            }
            Some(b.build().await?)
        }
    };
    let start = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let (cache, wb, source, users) = (cache.clone(), wb.clone(), source.clone(), users.clone());
        handles.push(tokio::spawn(async move {
            for i in 0..per_task {
                // Task t writes keys t, t + tasks, ...: every key has one writer, in order.
                let k = (t + i * tasks) % keys;
                let key = format!("u{k}");
                let user = (*users[k]).clone();
                match &wb {
                    Some(wb) => wb.write_behind(&key, user).await?,
                    None => {
                        let s = source.clone();
                        cache
                            .write(&key, user, move |k, v| async move {
                                s.write_rows(vec![(k, v)]).await
                            })
                            .await?
                    }
                }
            }
            Ok::<(), BoxError>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let accept = start.elapsed();
    let flushed = Instant::now();
    if let Some(wb) = &wb {
        wb.flush().await?;
    }
    let flush = flushed.elapsed();
    if let Some(wb) = &wb {
        wb.shutdown().await?;
    }
    let expected = keys.min(per_task * tasks);
    if source.len() != expected {
        return Err(format!(
            "{}: source has {} of {expected} keys",
            subject.name(),
            source.len()
        )
        .into());
    }
    Ok(Run {
        accept,
        flush,
        calls: source.calls.load(Ordering::Relaxed),
    })
}

fn main() -> Result<(), BoxError> {
    let filters = benches::filters();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") || !benches::selected(&filters, "write_behind") {
        return Ok(());
    }
    let smoke = args.iter().any(|a| a == "--test");
    let (writes, keys, reps) = if smoke {
        (200, 50, 1)
    } else if benches::quick() {
        (5_000, 1_000, 3)
    } else {
        (20_000, 2_000, 5)
    };
    let url = std::env::var("REDIS_URL").ok();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let records = rt.block_on(async move {
        let mut b = cache_tiered::builder("bench-wb");
        let redis = match &url {
            Some(url) => {
                let store = cache_tiered::RedisStore::connect(cache_tiered::RedisConfig::builder().with_url(url).build()?).await?;
                b = b.with_redis_url(url);
                Some(store)
            }
            None => {
                b = b.with_remote(Arc::new(cache_tiered::MemoryStore::new()));
                None
            }
        };
        let setup = Setup {
            engine: b.build().await?,
            redis,
            next_ns: AtomicU64::new(0),
        };
        let mut subjects = vec![Subject::Through, Subject::Behind];
        if setup.redis.is_some() {
            subjects.push(Subject::Durable);
        }
        let mut records = Vec::new();
        eprintln!(
            "write_behind: {writes} writes over {keys} keys, source {SOURCE_LATENCY:?} per call, L2 {}",
            if setup.redis.is_some() { "Redis" } else { "in-process" }
        );
        eprintln!(
            "{:<22} {:>5} {:>14} {:>10} {:>10} {:>8}",
            "subject", "tasks", "accepted/s", "flush ms", "total ms", "calls"
        );
        for tasks in [1usize, 16] {
            // Write-through at 1 task is 1 ms per write: cap its share so a run stays short.
            let mut results: HashMap<&'static str, Vec<Run>> = HashMap::new();
            for rep in 0..=reps {
                for i in 0..subjects.len() {
                    let subject = subjects[(i + rep) % subjects.len()];
                    let n = if subject == Subject::Through && tasks == 1 {
                        writes.min(2_000)
                    } else {
                        writes
                    };
                    let r = run(&setup, subject, tasks, n, keys.min(n)).await?;
                    if rep > 0 {
                        // rep 0 warms up
                        results.entry(subject.name()).or_default().push(Run {
                            accept: r.accept.mul_f64(writes as f64 / n as f64),
                            ..r
                        });
                    }
                }
            }
            for subject in &subjects {
                let runs = results.remove(subject.name()).unwrap_or_default();
                let ops: Vec<f64> = runs.iter().map(|r| writes as f64 / r.accept.as_secs_f64()).collect();
                let flush: Vec<f64> = runs.iter().map(|r| r.flush.as_secs_f64() * 1e3).collect();
                let total: Vec<f64> = runs.iter().map(|r| (r.accept + r.flush).as_secs_f64() * 1e3).collect();
                let calls: Vec<f64> = runs.iter().map(|r| r.calls as f64).collect();
                let (ops, flush, total, calls) = (benches::median(ops), benches::median(flush), benches::median(total), benches::median(calls));
                eprintln!(
                    "{:<22} {:>5} {:>14.0} {:>10.1} {:>10.1} {:>8.0}",
                    subject.name(), tasks, ops, flush, total, calls
                );
                let workload = format!("write_behind/{tasks} task{}", if tasks == 1 { "" } else { "s" });
                records.push(
                    Record::result(&workload, subject.name(), Role::Tiercache, subject.name(), "ops_per_s")
                        .num("ops_per_s", ops)
                        .num("flush_ms", flush)
                        .num("total_ms", total)
                        .num("source_calls", calls)
                        .num("samples", runs.len() as f64)
                        .str(
                            "how",
                            "accepted writes/s until the last call returned; flush_ms: then until \
                             flush() returned; source: in-memory map, 1 ms per call",
                        ),
                );
            }
        }
        Ok::<_, BoxError>(records)
    })?;
    if !smoke {
        let path = benches::write_records("write_behind", &records)?;
        eprintln!("write_behind: wrote {}", path.display());
    }
    Ok(())
}
