//! `get_many` of 100 keys (all L1 misses, all L2 hits) against 100 sequential `GET`s, on the
//! standalone Redis at `REDIS_URL` and on a throwaway 3-master Redis Cluster started here
//! with `cache_testkit::RedisCluster` (or the one in `CLUSTER_URLS`, comma-separated); and
//! the L2 hit throughput (16 and 64 tasks, L1 dropped before each read) on the cluster vs
//! standalone; target at 64 tasks: ≥ 1.0× raw redis-rs cluster `GET` + decode.
//!
//! - `tiercache get_many`: `Cache::clear_local()` (untimed), then `get_many(&keys).await`
//!   timed: one L2 round trip (`MGET` standalone; per-slot requests on the cluster);
//! - `100 sequential GETs`: raw redis-rs `GET` + `rmp_serde::from_slice`, one after the other;
//! - `redis-rs MGET` (standalone only): one raw `MGET` + decode of the same 100 values.
//!
//! Latency: the subjects run interleaved, one call each per round in rotating order, every
//! call timed; p50/p99 over the rounds.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use benches::{sample_user, BoxError, Latencies, Record, Role, TargetKind, User};
use cache_tiered::{Cache, MsgPack};
use redis::AsyncCommands;

const KEYS: usize = 100;

fn decode_all(vals: Vec<Option<Vec<u8>>>) -> Result<usize, BoxError> {
    let mut n = 0;
    for v in vals.into_iter().flatten() {
        let u: User = rmp_serde::from_slice(&v)?;
        n += usize::from(!u.name.is_empty());
    }
    Ok(n)
}

async fn seq_gets<C: redis::aio::ConnectionLike + Send>(
    con: &mut C,
    keys: &[String],
) -> Result<usize, BoxError> {
    let mut n = 0;
    for k in keys {
        let v: Option<Vec<u8>> = redis::cmd("GET").arg(k).query_async(con).await?;
        n += decode_all(vec![v])?;
    }
    Ok(n)
}

struct Subjects<C> {
    cache: Cache<User, MsgPack>,
    con: C,
    cache_keys: Vec<String>,
    raw_keys: Vec<String>,
    mget: bool,
}

async fn latency<C: redis::aio::ConnectionLike + Clone + Send>(
    s: &mut Subjects<C>,
    rounds: usize,
) -> Result<Vec<Latencies>, BoxError> {
    let kinds = if s.mget { 3 } else { 2 };
    let mut per: Vec<Latencies> = vec![Latencies::new(); kinds];
    for r in 0..rounds + 10 {
        for k in 0..kinds {
            let i = (r + k) % kinds;
            let (d, n) = match i {
                0 => {
                    s.cache.clear_local();
                    let start = Instant::now();
                    let got = s.cache.get_many(&s.cache_keys).await?;
                    (start.elapsed(), got.iter().filter(|v| v.is_some()).count())
                }
                1 => {
                    let start = Instant::now();
                    let n = seq_gets(&mut s.con, &s.raw_keys).await?;
                    (start.elapsed(), n)
                }
                _ => {
                    let start = Instant::now();
                    let vals: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                        .arg(&s.raw_keys)
                        .query_async(&mut s.con)
                        .await?;
                    (start.elapsed(), decode_all(vals)?)
                }
            };
            if n != KEYS {
                return Err(format!("subject {i}: {n} of {KEYS} values").into());
            }
            if r >= 10 {
                per[i].record(d);
            }
        }
    }
    Ok(per)
}

/// Reader counts of the throughput rows; the cluster's target (≥ 1.0× raw) is judged at 64,
/// as the standalone one is (`l2_hit`).
const TASKS: [usize; 2] = [16, 64];

/// ops/s of `tasks` tasks doing L2 hits through `cache` (L1 dropped before each read), each
/// on its own key.
async fn l2_throughput(
    cache: &Cache<User, MsgPack>,
    run: Duration,
    tasks: usize,
) -> Result<f64, BoxError> {
    let (counts, elapsed) = benches::run_tasks(tasks, run, |t, stop| {
        let cache = cache.clone();
        async move {
            let k = format!("tp:{t}");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                cache.invalidate_local(&k);
                if cache.get(&k).await?.is_none() {
                    return Err("miss".into());
                }
                n += 1;
            }
            Ok(n)
        }
    })
    .await?;
    Ok(counts.iter().sum::<u64>() as f64 / elapsed.as_secs_f64())
}

async fn raw_cluster_throughput(
    con: &redis::cluster_async::ClusterConnection,
    run: Duration,
    tasks: usize,
) -> Result<f64, BoxError> {
    let (counts, elapsed) = benches::run_tasks(tasks, run, |t, stop| {
        let mut con = con.clone();
        async move {
            let k = format!("bench:raw:tp:{t}");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let v: Option<Vec<u8>> = con.get(&k).await?;
                if decode_all(vec![v])? != 1 {
                    return Err("miss".into());
                }
                n += 1;
            }
            Ok(n)
        }
    })
    .await?;
    Ok(counts.iter().sum::<u64>() as f64 / elapsed.as_secs_f64())
}

async fn fill<C: redis::aio::ConnectionLike + Send>(
    cache: &Cache<User, MsgPack>,
    con: &mut C,
) -> Result<(Vec<String>, Vec<String>), BoxError> {
    let cache_keys: Vec<String> = (0..KEYS).map(|i| format!("gm:{i}")).collect();
    let raw_keys: Vec<String> = (0..KEYS).map(|i| format!("bench:raw:gm:{i}")).collect();
    for i in 0..KEYS {
        let u = sample_user(i as u64);
        let () = redis::cmd("SET")
            .arg(&raw_keys[i])
            .arg(rmp_serde::to_vec_named(&u)?)
            .query_async(con)
            .await?;
        cache.set(&cache_keys[i], u).await?;
    }
    for t in 0..TASKS[1] as u64 {
        let u = sample_user(t);
        cache.set(&format!("tp:{t}"), u.clone()).await?;
        let () = redis::cmd("SET")
            .arg(format!("bench:raw:tp:{t}"))
            .arg(rmp_serde::to_vec_named(&u)?)
            .query_async(con)
            .await?;
    }
    Ok((cache_keys, raw_keys))
}

fn push_latency(
    records: &mut Vec<Record>,
    w: &str,
    lat: &[Latencies],
    rounds: usize,
    where_: &str,
) {
    let subjects = [
        ("tiercache", Role::Tiercache, "tiercache", "clear_local() untimed, then get_many(100 keys).await: one L2 round trip for the misses"),
        ("seq_get", Role::Peer, "100 sequential GETs", "raw redis-rs: 100 x (GET + rmp_serde::from_slice), one after the other"),
        ("mget", Role::Peer, "redis-rs MGET", "raw redis-rs: one MGET of 100 keys + 100 x rmp_serde::from_slice"),
    ];
    for (i, s) in lat.iter().enumerate() {
        let (subject, role, label, how) = subjects[i];
        let (p50, p99) = (s.percentile(50.0) / 1e3, s.percentile(99.0) / 1e3);
        eprintln!("get_many {where_}: {label:<22} p50 {p50:>8.1} µs  p99 {p99:>8.1} µs");
        records.push(
            Record::result(w, subject, role, label, "p50_us")
                .num("p50_us", p50)
                .num("p99_us", p99)
                .num("mean_us", s.mean() / 1e3)
                .num("samples", s.len() as f64)
                .str(
                    "how",
                    &format!("{how} ({where_}); {rounds} interleaved rounds, each call timed"),
                ),
        );
    }
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    let smoke = args.iter().any(|a| a == "--test");
    if !benches::selected(&benches::filters(), "get_many") {
        return Ok(());
    }
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!("get_many: REDIS_URL is not set; skipped (`cargo xtask bench` starts a Redis)");
        return Ok(());
    };
    let (rounds, run) = if smoke {
        (5, Duration::from_millis(100))
    } else if benches::quick() {
        (300, Duration::from_secs(2))
    } else {
        (2_000, Duration::from_secs(6))
    };
    // The cluster: CLUSTER_URLS, else a throwaway one (3 masters, no replicas).
    let mut _cluster = None;
    let cluster_urls: Option<Vec<String>> = match std::env::var("CLUSTER_URLS") {
        Ok(u) if !u.is_empty() => Some(u.split(',').map(str::to_owned).collect()),
        _ => match cache_testkit::RedisCluster::start_with(
            cache_testkit::ClusterOptions::new()
                .with_masters(3)
                .with_replicas_per_master(0),
        ) {
            Ok(c) => {
                let urls = c.urls();
                _cluster = Some(c);
                Some(urls)
            }
            Err(e) => {
                eprintln!("get_many: no Redis Cluster ({e}); the cluster rows are skipped");
                None
            }
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let records = rt.block_on(async move {
        let mut records = Vec::new();
        let day = Duration::from_secs(86_400);
        let engine = cache_tiered::builder("benchgm").with_redis_url(&url).build().await?;
        let cache = engine
            .cache::<User, MsgPack>("gm")
            .with_l1_ttl(day)
            .with_l2_ttl(day)
            .build()?;
        let client = redis::Client::open(url.as_str())?;
        let mut con = client.get_multiplexed_async_connection().await?;
        let (cache_keys, raw_keys) = fill(&cache, &mut con).await?;
        let mut s = Subjects {
            cache: cache.clone(),
            con,
            cache_keys,
            raw_keys,
            mget: true,
        };
        let lat = latency(&mut s, rounds).await?;
        push_latency(&mut records, "get_many 100 keys (standalone)", &lat, rounds, "standalone");

        if let Some(urls) = cluster_urls {
            let engine = cache_tiered::builder("benchgm")
                .with_cluster_urls(urls.clone())
                .build()
                .await?;
            let ccache = engine
                .cache::<User, MsgPack>("gm")
                .with_l1_ttl(day)
                .with_l2_ttl(day)
                .build()?;
            let cclient = redis::cluster::ClusterClient::new(urls)?;
            let mut ccon = cclient.get_async_connection().await?;
            let (cache_keys, raw_keys) = fill(&ccache, &mut ccon).await?;
            let mut s = Subjects {
                cache: ccache.clone(),
                con: ccon.clone(),
                cache_keys,
                raw_keys,
                mget: false,
            };
            let lat = latency(&mut s, rounds).await?;
            push_latency(&mut records, "get_many 100 keys (cluster)", &lat, rounds, "3-master cluster");
            for tasks in TASKS {
                // Throughput: A B B A slices of the three subjects.
                let mut tot = [0.0f64; 3];
                for order in [[0usize, 1, 2], [2, 1, 0]] {
                    for i in order {
                        tot[i] += match i {
                            0 => l2_throughput(&ccache, run / 2, tasks).await?,
                            1 => l2_throughput(&cache, run / 2, tasks).await?,
                            _ => raw_cluster_throughput(&ccon, run / 2, tasks).await?,
                        } / 2.0;
                    }
                }
                let w = format!("l2_hit/throughput, {tasks} tasks, cluster vs standalone");
                for (subject, role, label, ops, how) in [
                    ("tiercache", Role::Tiercache, "tiercache", tot[0], "tiercache on the 3-master cluster (ClusterStore): invalidate_local + get per read"),
                    ("tiercache_standalone", Role::Peer, "tiercache standalone", tot[1], "tiercache on the standalone Redis: invalidate_local + get per read"),
                    ("redis_cluster", Role::Peer, "raw redis-rs cluster GET + decode", tot[2], "raw redis-rs ClusterConnection GET + rmp_serde decode"),
                ] {
                    eprintln!("get_many: {tasks:>3} tasks {label:<34} {ops:>10.0} ops/s");
                    records.push(
                        Record::result(&w, subject, role, label, "ops_per_s")
                            .num("ops_per_s", ops)
                            .str("how", &format!("{how}, {tasks} tasks, each on its own key")),
                    );
                }
                if tasks == TASKS[1] {
                    records.push(Record::target(
                        &w,
                        "ops_per_s",
                        "redis_cluster",
                        TargetKind::MinRatio,
                        1.0,
                        ">= 1.0x raw redis-rs cluster GET + decode (coalesced reads per primary)",
                    ));
                }
            }
        }
        Ok::<_, BoxError>(records)
    })?;
    if !smoke {
        let path = benches::write_records("get_many", &records)?;
        eprintln!("get_many: wrote {}", path.display());
    }
    Ok(())
}
