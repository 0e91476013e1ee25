//! `set` with the L2 write awaited vs in the background (`CallOptions::background_l2_write`):
//! what the caller waits for, and how long until every write has landed in L2.
//!
//! One task writes `writes` values of `sample_user` over `keys` keys, one subject after the
//! other in rotating order, each in a fresh namespace of one engine. L2 is the Redis at
//! `REDIS_URL` when set (as `cargo xtask bench` does), else the in-process `MemoryStore`.
//!
//! Figures per subject: the caller's latency per `set` (p50, p99, in µs, from one timing per
//! call), and `drain_ms`: from the last call's return until `Engine::background_writes()` is 0
//! (0 for the awaited subject). The target: a background `set` returns in at most 0.5× the
//! time of an awaited one at p50 (it waits for no round trip).
//!
//! Not criterion: `reps` timed runs per subject after a warm-up run, medians reported. Run:
//! `cargo bench -p benches --features peers --bench set_background`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::{sample_user, Latencies, Record, Role, TargetKind, User};
use cache_tiered::{Cache, CallOptions, MsgPack};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Subject {
    Awaited,
    Background,
}

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Subject::Awaited => "set (L2 awaited)",
            Subject::Background => "set_with background_l2_write",
        }
    }
}

struct Run {
    latencies: Latencies,
    drain: Duration,
}

async fn run(
    engine: &cache_tiered::Engine,
    ns: &AtomicU64,
    subject: Subject,
    writes: usize,
    keys: usize,
) -> Result<Run, BoxError> {
    let n = ns.fetch_add(1, Ordering::Relaxed);
    let cache: Cache<User, MsgPack> = engine
        .cache::<User, MsgPack>(format!("setbg{}-{n}", std::process::id()))
        .with_l1_ttl(Duration::from_secs(3600))
        .with_l2_ttl(Duration::from_secs(3600))
        .build()?;
    let users: Vec<User> = (0..keys as u64).map(sample_user).collect();
    let background = CallOptions::new().background_l2_write();
    let mut latencies = Latencies::new();
    for i in 0..writes {
        let k = i % keys;
        let key = format!("u{k}");
        let user = users[k].clone();
        let start = Instant::now();
        match subject {
            Subject::Awaited => cache.set(&key, user).await?,
            Subject::Background => cache.set_with(&key, user, &background).await?,
        }
        latencies.record(start.elapsed());
    }
    let last = Instant::now();
    while engine.background_writes() > 0 {
        tokio::time::sleep(Duration::from_micros(100)).await;
    }
    let drain = last.elapsed();
    // Every write landed: a fresh read of the last key from L2 gives the last value.
    cache.invalidate_local("u0");
    if cache.get("u0").await?.is_none() {
        return Err(format!("{}: L2 lost the writes", subject.name()).into());
    }
    Ok(Run {
        latencies,
        drain: if subject == Subject::Awaited {
            Duration::ZERO
        } else {
            drain
        },
    })
}

fn main() -> Result<(), BoxError> {
    let filters = benches::filters();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") || !benches::selected(&filters, "set_background") {
        return Ok(());
    }
    let smoke = args.iter().any(|a| a == "--test");
    let (writes, keys, reps) = if smoke {
        (200, 50, 1)
    } else if benches::quick() {
        (5_000, 500, 3)
    } else {
        (20_000, 1_000, 5)
    };
    let url = std::env::var("REDIS_URL").ok();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let records = rt.block_on(async move {
        let mut b = cache_tiered::builder("bench-setbg");
        b = match &url {
            Some(url) => b.with_redis_url(url),
            None => b.with_remote(Arc::new(cache_tiered::MemoryStore::new())),
        };
        let engine = b.build().await?;
        let ns = AtomicU64::new(0);
        let subjects = [Subject::Awaited, Subject::Background];
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(), Vec::new()];
        for rep in 0..=reps {
            for i in 0..subjects.len() {
                let at = (i + rep) % subjects.len();
                let r = run(&engine, &ns, subjects[at], writes, keys).await?;
                if rep > 0 {
                    runs[at].push(r);
                }
            }
        }
        eprintln!(
            "set_background: {writes} sets over {keys} keys, 1 task, L2 {}",
            if url.is_some() { "Redis" } else { "in-process" }
        );
        eprintln!(
            "{:<30} {:>10} {:>10} {:>10}",
            "subject", "p50 µs", "p99 µs", "drain ms"
        );
        let mut records = Vec::new();
        for (subject, runs) in subjects.iter().zip(runs) {
            let p50 = benches::median(
                runs.iter()
                    .map(|r| r.latencies.percentile(50.0) / 1e3)
                    .collect(),
            );
            let p99 = benches::median(
                runs.iter()
                    .map(|r| r.latencies.percentile(99.0) / 1e3)
                    .collect(),
            );
            let drain = benches::median(runs.iter().map(|r| r.drain.as_secs_f64() * 1e3).collect());
            eprintln!(
                "{:<30} {:>10.1} {:>10.1} {:>10.1}",
                subject.name(),
                p50,
                p99,
                drain
            );
            records.push(
                Record::result(
                    "set_background",
                    subject.name(),
                    // The awaited set is the row's reference; the background one is judged.
                    if matches!(subject, Subject::Awaited) {
                        Role::Peer
                    } else {
                        Role::Tiercache
                    },
                    subject.name(),
                    "p50_us",
                )
                .num("p50_us", p50)
                .num("p99_us", p99)
                .num("drain_ms", drain)
                .num("samples", runs.len() as f64)
                .str(
                    "how",
                    "caller's latency per set, one task; drain_ms: from the last call until \
                         every background write landed",
                ),
            );
        }
        records.push(Record::target(
            "set_background",
            "p50_us",
            Subject::Awaited.name(),
            TargetKind::MaxRatio,
            0.5,
            "a background set returns in at most half the time of an awaited one (p50)",
        ));
        Ok::<_, BoxError>(records)
    })?;
    if !smoke {
        let path = benches::write_records("set_background", &records)?;
        eprintln!("set_background: wrote {}", path.display());
    }
    Ok(())
}
