//! L1 hit ratio on zipf keys (`rand_distr::Zipf`, s ∈ {0.9, 1.0} over 100,000 keys), with an
//! L1 budget of 1% and 10% of the key space, against raw quick_cache and moka given the same
//! budget.
//!
//! tiercache's L1 budget is in bytes: an entry weighs its L2 encoding (16-byte header +
//! MessagePack) + 96 bytes of overhead + the key's length. The budget for "c entries" is c ×
//! the mean weight of all 100,000 entries. Raw quick_cache (`sync::Cache::with_weighter`) and
//! moka (`weigher`, `max_capacity`) get the same byte budget and the same per-entry weights,
//! so all three evict by the same measure.
//!
//! Each cache runs the same trace (read; on a miss insert, as a read-through cache does):
//! `warm` requests to warm up, then `n` counted. tiercache: `get_local` then `set` on a miss
//! (engine without L2: `set` fills L1 only). Hit ratio in percent. Target: within 0.3 points
//! of raw quick_cache.

use std::sync::Arc;
use std::time::Duration;

use benches::{sample_user, Record, Role, TargetKind, User};
use cache_tiered::{Cache, MsgPack};
use rand::SeedableRng;
use rand_distr::{Distribution, Zipf};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const KEYS: usize = 100_000;
const HEADER: usize = 16;
const OVERHEAD: usize = 96;

#[derive(Clone)]
struct W;

impl quick_cache::Weighter<String, Arc<User>> for W {
    fn weight(&self, key: &String, val: &Arc<User>) -> u64 {
        weight(key, val) as u64
    }
}

fn weight(key: &str, val: &User) -> usize {
    HEADER + rmp_serde::to_vec_named(val).map_or(0, |b| b.len()) + OVERHEAD + key.len()
}

fn key(i: usize) -> String {
    format!("user:{i}")
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    let smoke = args.iter().any(|a| a == "--test");
    if !benches::selected(&benches::filters(), "hit_ratio") {
        return Ok(());
    }
    let (warm, n) = if smoke {
        (1_000, 2_000)
    } else if benches::quick() {
        (100_000, 300_000)
    } else {
        (500_000, 2_000_000)
    };
    let users: Vec<Arc<User>> = (0..KEYS).map(|i| Arc::new(sample_user(i as u64))).collect();
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    let mean_weight = keys
        .iter()
        .zip(&users)
        .map(|(k, u)| weight(k, u))
        .sum::<usize>() as f64
        / KEYS as f64;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut records = Vec::new();
    for s in [0.9f64, 1.0] {
        let zipf = Zipf::new(KEYS as f64, s)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let trace: Vec<usize> = (0..warm + n)
            .map(|_| (zipf.sample(&mut rng) as usize).clamp(1, KEYS) - 1)
            .collect();
        for pct in [1usize, 10] {
            let entries = KEYS * pct / 100;
            let budget = (entries as f64 * mean_weight) as u64;
            // tiercache
            let tier = rt.block_on(async {
                let engine = cache_tiered::builder("benchhr")
                    .with_l1_capacity_bytes(budget)
                    .build()
                    .await?;
                let cache: Cache<User, MsgPack> = engine
                    .cache::<User, MsgPack>("hr")
                    .with_l1_ttl(Duration::from_secs(86_400))
                    .with_l2_ttl(Duration::from_secs(86_400))
                    .build()?;
                let mut hits = 0u64;
                for (j, &i) in trace.iter().enumerate() {
                    match cache.get_local(&keys[i]) {
                        Some(_) => hits += u64::from(j >= warm),
                        None => cache.set_shared(&keys[i], Arc::clone(&users[i])).await?,
                    }
                }
                Ok::<_, BoxError>(hits)
            })?;
            // raw quick_cache, same weights and budget
            let qc: quick_cache::sync::Cache<String, Arc<User>, W> =
                quick_cache::sync::Cache::with_weighter(entries, budget, W);
            let mut qhits = 0u64;
            for (j, &i) in trace.iter().enumerate() {
                if qc.get(keys[i].as_str()).is_some() {
                    qhits += u64::from(j >= warm);
                } else {
                    qc.insert(keys[i].clone(), Arc::clone(&users[i]));
                }
            }
            // moka, same weights and budget
            let moka: moka::sync::Cache<String, Arc<User>> = moka::sync::Cache::builder()
                .max_capacity(budget)
                .weigher(|k: &String, v: &Arc<User>| weight(k, v) as u32)
                .build();
            let mut mhits = 0u64;
            for (j, &i) in trace.iter().enumerate() {
                if moka.get(keys[i].as_str()).is_some() {
                    mhits += u64::from(j >= warm);
                } else {
                    moka.insert(keys[i].clone(), Arc::clone(&users[i]));
                }
            }
            let w = format!("hit_ratio zipf s={s} L1 {pct}% of 100k keys");
            for (subject, role, label, hits, how) in [
                (
                    "tiercache",
                    Role::Tiercache,
                    "tiercache",
                    tier,
                    "get_local, set on a miss; L1 budget in bytes",
                ),
                (
                    "quick_cache",
                    Role::Peer,
                    "raw quick_cache",
                    qhits,
                    "quick_cache::sync::Cache::with_weighter, same weights and byte budget",
                ),
                (
                    "moka",
                    Role::Peer,
                    "moka (sync)",
                    mhits,
                    "moka::sync::Cache with weigher, same weights, max_capacity = byte budget",
                ),
            ] {
                let ratio = hits as f64 * 100.0 / n as f64;
                eprintln!("hit_ratio: s={s} {pct:>2}% {label:<16} {ratio:>6.2} %");
                records.push(
                    Record::result(&w, subject, role, label, "hit_pct")
                        .num("hit_pct", ratio)
                        .num("budget_bytes", budget as f64)
                        .num("requests", n as f64)
                        .str("how", &format!("{how}; {budget} B (= {entries} entries x {mean_weight:.0} B mean weight); {warm} warm-up + {n} counted zipf requests, seed 42")),
                );
            }
            // hit_pct: higher is better; "within 0.3 points" as quick_cache - tiercache <= 0.3.
            records.push(Record::target(
                &w,
                "hit_pct",
                "quick_cache",
                TargetKind::MinDiff,
                -0.3,
                "within 0.3 points of raw quick_cache",
            ));
        }
    }
    if !smoke {
        let path = benches::write_records("hit_ratio", &records)?;
        eprintln!("hit_ratio: wrote {}", path.display());
    }
    Ok(())
}
