//! End-to-end demo (what `cargo xtask demo` runs): two service instances share one Redis,
//! each with its own L1, in front of a slow "database" of 100,000 rows. A load generator sends
//! skewed (zipf-like) reads and some writes, then a table shows where answers came from.
//!
//! `REDIS_URL` names the Redis; without it the demo runs on the in-process L2 (labelled).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tiercache::{Cache, MsgPack};

const ROWS: u64 = 100_000;
const REQUESTS: usize = 40_000;
const CONCURRENCY: usize = 32;
const WRITE_EVERY: usize = 50;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Account {
    id: u64,
    owner: String,
    balance_cents: i64,
    version: u64,
}

/// A pretend database: 1 ms per query, counts queries.
struct Database {
    rows: Mutex<HashMap<u64, Account>>,
    queries: AtomicU64,
}

impl Database {
    fn new() -> Self {
        let rows = (0..ROWS)
            .map(|id| {
                (
                    id,
                    Account {
                        id,
                        owner: format!("owner-{id}"),
                        balance_cents: id as i64 * 10,
                        version: 0,
                    },
                )
            })
            .collect();
        Database {
            rows: Mutex::new(rows),
            queries: AtomicU64::new(0),
        }
    }

    async fn get(&self, id: u64) -> Result<Option<Account>, std::io::Error> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let rows = self
            .rows
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?;
        Ok(rows.get(&id).cloned())
    }

    fn update(&self, id: u64) -> Option<Account> {
        let mut rows = self.rows.lock().ok()?;
        let row = rows.get_mut(&id)?;
        row.balance_cents += 1;
        row.version += 1;
        Some(row.clone())
    }
}

/// A zipf-like key (s ≈ 1) by inverse transform on a harmonic approximation.
fn zipf_key() -> u64 {
    let u = fastrand::f64();
    let x = ((ROWS as f64).ln() * u).exp();
    (x as u64).min(ROWS - 1)
}

struct Instance {
    name: &'static str,
    accounts: Cache<Account, MsgPack>,
    latencies: Mutex<Vec<Duration>>,
}

async fn instance(
    name: &'static str,
    url: Option<&str>,
    shared_l2: &Arc<tiercache::MemoryStore>,
) -> Result<Instance, tiercache::Error> {
    let b = tiercache::builder("demo").l1_capacity_bytes(4 * 1024 * 1024);
    let b = match url {
        Some(u) => b.redis_url(u),
        None => b.remote(shared_l2.clone()),
    };
    let engine = b.build().await?;
    let accounts = engine
        .cache::<Account, MsgPack>("accounts")
        .with_l1_ttl(Duration::from_secs(5))
        .with_l2_ttl(Duration::from_secs(60))
        .build()?;
    Ok(Instance {
        name,
        accounts,
        latencies: Mutex::new(Vec::new()),
    })
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").ok();
    let l2_label = match &url {
        Some(_) => "Redis (throwaway redis-server)".to_string(),
        None => {
            "EMBEDDED in-process L2 (no redis-server found; instances share memory)".to_string()
        }
    };
    eprintln!("demo: L2 = {l2_label}");
    let shared = Arc::new(tiercache::MemoryStore::new());
    let db = Arc::new(Database::new());
    let a = Arc::new(instance("instance-a", url.as_deref(), &shared).await?);
    let b = Arc::new(instance("instance-b", url.as_deref(), &shared).await?);
    // Start from a clean namespace in a reused Redis.
    for i in 0..1000u64 {
        a.accounts.invalidate(&i.to_string()).await?;
    }

    eprintln!("demo: {REQUESTS} requests, {CONCURRENCY} concurrent, 1 write per {WRITE_EVERY}, zipf keys over {ROWS} rows");
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..CONCURRENCY {
        let inst = if w % 2 == 0 { a.clone() } else { b.clone() };
        let db = db.clone();
        let done = done.clone();
        let writes = writes.clone();
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(REQUESTS / CONCURRENCY);
            for i in 0..REQUESTS / CONCURRENCY {
                let id = zipf_key();
                let key = id.to_string();
                let t = Instant::now();
                if i % WRITE_EVERY == WRITE_EVERY - 1 {
                    if let Some(row) = db.update(id) {
                        inst.accounts.set(&key, row).await?;
                        writes.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    let db = db.clone();
                    inst.accounts
                        .get_or_load_optional(&key, move |k| async move {
                            let id: u64 = k.parse().map_err(|_| std::io::Error::other("bad id"))?;
                            db.get(id).await
                        })
                        .await?;
                }
                lat.push(t.elapsed());
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n % (REQUESTS as u64 / 10) == 0 {
                    eprintln!("demo: {:>3}% ({n} requests)", n * 100 / REQUESTS as u64);
                }
            }
            if let Ok(mut l) = inst.latencies.lock() {
                l.extend(lat);
            }
            Ok::<_, tiercache::Error>(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let elapsed = started.elapsed();

    eprintln!();
    eprintln!(
        "{:<12} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10} {:>10}",
        "instance", "requests", "L1 hits", "L2 hits", "loads", "L1 hit%", "p50", "p99"
    );
    let mut total_loads = 0;
    for inst in [&a, &b] {
        let s = inst.accounts.stats();
        let mut lat = inst.latencies.lock().map(|l| l.clone()).unwrap_or_default();
        let n = lat.len() as u64;
        let l2_lookups = s.l2_hits + s.l2_misses + s.l2_corrupt + s.l2_errors;
        let l1_hits = n.saturating_sub(l2_lookups + s.coalesced);
        total_loads += s.loads;
        eprintln!(
            "{:<12} {:>9} {:>9} {:>9} {:>9} {:>7.1}% {:>10.1?} {:>10.1?}",
            inst.name,
            n,
            l1_hits,
            s.l2_hits,
            s.loads,
            100.0 * l1_hits as f64 / n.max(1) as f64,
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99)
        );
    }
    eprintln!();
    eprintln!(
        "demo: {REQUESTS} requests in {elapsed:.2?} ({:.0} req/s); database queries: {} (loader calls {total_loads}); writes: {}",
        REQUESTS as f64 / elapsed.as_secs_f64(),
        db.queries.load(Ordering::Relaxed),
        writes.load(Ordering::Relaxed)
    );
    Ok(())
}
