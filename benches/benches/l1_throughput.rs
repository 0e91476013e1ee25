//! L1 throughput on zipf keys (`rand_distr::Zipf`, s = 1.0 over 100,000 keys, all resident):
//! reads per second at 1 and 2 threads, tiercache's `Cache::get_local` against raw
//! `quick_cache::sync::Cache<String, Arc<User>>::get`.
//!
//! Each thread walks its own precomputed key trace (different seeds) until the slice time is
//! up; slices run in A B B A order (tiercache, raw, raw, tiercache, repeated) so a drift in
//! machine load hits both alike; ops/s = total reads / total elapsed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::{sample_user, Record, Role, TargetKind, User};
use cache_tiered::{Cache, MsgPack};
use rand::SeedableRng;
use rand_distr::{Distribution, Zipf};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const KEYS: usize = 100_000;

fn run_slice(
    threads: usize,
    slice: Duration,
    traces: &[Vec<usize>],
    read: &(dyn Fn(usize) -> bool + Sync),
) -> Result<(u64, Duration), BoxError> {
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let total = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let (stop, trace) = (&stop, &traces[t]);
                sc.spawn(move || {
                    let mut n = 0u64;
                    let mut misses = 0u64;
                    'outer: loop {
                        for chunk in trace.chunks(1024) {
                            for &i in chunk {
                                misses += u64::from(!read(i));
                            }
                            n += chunk.len() as u64;
                            if stop.load(Ordering::Relaxed) {
                                break 'outer;
                            }
                        }
                    }
                    (n, misses)
                })
            })
            .collect();
        std::thread::sleep(slice);
        stop.store(true, Ordering::Relaxed);
        hs.into_iter()
            .map(|h| h.join().unwrap_or((0, 1)))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    if total.1 > 0 {
        return Err(format!("{} reads missed", total.1).into());
    }
    Ok((total.0, start.elapsed()))
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    let smoke = args.iter().any(|a| a == "--test");
    if !benches::selected(&benches::filters(), "l1_throughput") {
        return Ok(());
    }
    let (slice, reps) = if smoke {
        (Duration::from_millis(50), 1)
    } else if benches::quick() {
        (Duration::from_millis(400), 2)
    } else {
        (Duration::from_millis(1500), 3)
    };
    let keys: Vec<String> = (0..KEYS).map(|i| format!("user:{i}")).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cache: Cache<User, MsgPack> = rt.block_on(async {
        let engine = cache_tiered::builder("benchtp").build().await?;
        let cache = engine
            .cache::<User, MsgPack>("tp")
            .with_l1_ttl(Duration::from_secs(86_400))
            .with_l2_ttl(Duration::from_secs(86_400))
            .build()?;
        let v = Arc::new(sample_user(1));
        for k in &keys {
            cache.set_shared(k, Arc::clone(&v)).await?;
        }
        Ok::<_, BoxError>(cache)
    })?;
    let qc: quick_cache::sync::Cache<String, Arc<User>> = quick_cache::sync::Cache::new(KEYS * 2);
    let v = Arc::new(sample_user(1));
    for k in &keys {
        qc.insert(k.clone(), Arc::clone(&v));
    }
    let zipf = Zipf::new(KEYS as f64, 1.0)?;
    let traces: Vec<Vec<usize>> = (0..2u64)
        .map(|t| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7 + t);
            (0..1 << 20)
                .map(|_| (zipf.sample(&mut rng) as usize).clamp(1, KEYS) - 1)
                .collect()
        })
        .collect();
    let tier_read = |i: usize| matches!(cache.get_local(&keys[i]), Some(Some(_)));
    let raw_read = |i: usize| qc.get(keys[i].as_str()).is_some();
    let mut records = Vec::new();
    for threads in [1usize, 2] {
        let mut tot = [(0u64, Duration::ZERO); 2];
        for _ in 0..reps {
            for who in [0usize, 1, 1, 0] {
                let read: &(dyn Fn(usize) -> bool + Sync) =
                    if who == 0 { &tier_read } else { &raw_read };
                let (n, d) = run_slice(threads, slice, &traces, read)?;
                tot[who].0 += n;
                tot[who].1 += d;
            }
        }
        let w = format!(
            "l1_throughput zipf s=1.0, {threads} thread{}",
            if threads == 1 { "" } else { "s" }
        );
        for (i, (subject, role, label, how)) in [
            (
                "tiercache",
                Role::Tiercache,
                "tiercache",
                "Cache::get_local(key) on zipf keys, all resident",
            ),
            (
                "quick_cache",
                Role::Peer,
                "raw quick_cache",
                "quick_cache::sync::Cache<String, Arc<User>>::get(&str), same trace",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let ops = tot[i].0 as f64 / tot[i].1.as_secs_f64();
            eprintln!(
                "l1_throughput: {threads} thread(s) {label:<16} {:>8.2} M reads/s",
                ops / 1e6
            );
            records.push(
                Record::result(&w, subject, role, label, "ops_per_s")
                    .num("ops_per_s", ops)
                    .num("threads", threads as f64)
                    .str("how", &format!("{how}; {threads} thread(s), slices in A B B A order, total reads / total time")),
            );
        }
        records.push(Record::target(
            &w,
            "ops_per_s",
            "quick_cache",
            TargetKind::MinRatio,
            1.0 / 1.5,
            ">= 1/1.5 of raw quick_cache",
        ));
    }
    if !smoke {
        let path = benches::write_records("l1_throughput", &records)?;
        eprintln!("l1_throughput: wrote {}", path.display());
    }
    Ok(())
}
