//! L2 hit (L1 miss) against the Redis at `REDIS_URL`, side by side with raw redis-rs.
//!
//! - `tiercache`: before each read, `Cache::invalidate_local(key)` drops the key from this
//!   process' L1 (not timed), then `Cache::get(key).await` is timed: key check, L1 miss, one
//!   Redis `GET` through tiercache's Redis store, header check, MessagePack decode, `Arc`, L1
//!   fill. Every read is checked to return the value, and the cache's `l2_hits` counter must
//!   grow by exactly the number of timed reads (so no L1 hit is counted as an L2 read).
//! - `redis-rs`: `redis::cmd("GET").arg(key).query_async::<Option<Vec<u8>>>(&mut con)` on one
//!   `MultiplexedConnection`, then `rmp_serde::from_slice::<User>` of the same value
//!   (MessagePack with field names, as tiercache stores it, without tiercache's 16-byte
//!   header).
//!
//! Latency: one task on a multi-thread tokio runtime runs both subjects interleaved (cache,
//! raw, raw, cache, ...) so drift in machine load hits both alike, timing every operation
//! with `Instant`; p50/p99/mean come from those per-operation samples. Criterion is not used
//! here: it reports means only, and would run the subjects one after the other.
//!
//! Throughput: 1, 16, 64 and 256 tasks, each on its own key, loop for a fixed time, cut in slices
//! run in the order cache, raw, raw, cache (repeated); ops/s is the total count over the
//! total elapsed time. The raw subject shares one `MultiplexedConnection` (tiercache's
//! Redis store also multiplexes one connection, a redis-rs `ConnectionManager`), so
//! concurrent requests are pipelined on it.
//!
//! `redis-benchmark -t get -d <raw value size> -c <tasks> -n <N> -q` runs as a subprocess
//! after each task count (same server, same value size; no decoding: the server's ceiling).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use benches::{sample_user, BoxError, Latencies, Record, Role, TargetKind, User};
use cache_tiered::{Cache, MsgPack};
use redis::aio::MultiplexedConnection;

const MAX_TASKS: usize = 256;

fn cache_key(i: usize) -> String {
    format!("user:{i}")
}

fn raw_key(i: usize) -> String {
    format!("bench:raw:user:{i}")
}

/// One L2 read through the cache; errors unless it returns the value.
async fn cache_op(cache: &Cache<User, MsgPack>, key: &str) -> Result<Duration, BoxError> {
    cache.invalidate_local(key);
    let start = Instant::now();
    let v = cache.get(key).await?;
    let d = start.elapsed();
    match v {
        Some(v) if !v.name.is_empty() => Ok(d),
        _ => Err(format!("tiercache: no value for {key}").into()),
    }
}

/// One L2 read through `get_or_load` (a load's first step; the loader must not run).
async fn load_op(cache: &Cache<User, MsgPack>, key: &str) -> Result<Duration, BoxError> {
    cache.invalidate_local(key);
    let start = Instant::now();
    let v = cache
        .get_or_load(key, |_| async {
            Err::<User, BoxError>("the loader ran on an L2 hit".into())
        })
        .await?;
    let d = start.elapsed();
    if v.name.is_empty() {
        return Err(format!("tiercache get_or_load: no value for {key}").into());
    }
    Ok(d)
}

/// One raw GET + decode; errors unless it returns the value.
async fn raw_op(con: &mut MultiplexedConnection, key: &str) -> Result<Duration, BoxError> {
    let start = Instant::now();
    let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(con).await?;
    let user: Option<User> = match bytes {
        Some(b) => Some(rmp_serde::from_slice(&b)?),
        None => None,
    };
    let d = start.elapsed();
    match user {
        Some(u) if !u.name.is_empty() => Ok(d),
        _ => Err(format!("redis-rs: no value for {key}").into()),
    }
}

/// Cold loads, interleaved: `get_or_load` of a fresh key (loader answers at once) against
/// raw cache-aside (`GET`, a miss, encode, `SET PX`); `n` of each. Returns (tiercache, raw).
async fn cold_latency(
    cache: &Cache<User, MsgPack>,
    con: &mut MultiplexedConnection,
    n: usize,
) -> Result<(Latencies, Latencies), BoxError> {
    let nonce = benches::realtime_ns();
    let (mut c, mut r) = (Latencies::new(), Latencies::new());
    for i in 0..n {
        let key = format!("cold:{nonce}:{i}");
        let raw_key = format!("bench:raw:cold:{nonce}:{i}");
        for k in 0..2 {
            if (i + k) % 2 == 0 {
                let start = Instant::now();
                let v = cache
                    .get_or_load(&key, move |_| async move {
                        Ok::<_, BoxError>(sample_user(i as u64))
                    })
                    .await?;
                c.record(start.elapsed());
                if v.id != i as u64 {
                    return Err("tiercache: wrong value on a cold load".into());
                }
            } else {
                let start = Instant::now();
                let got: Option<Vec<u8>> = redis::cmd("GET").arg(&raw_key).query_async(con).await?;
                if got.is_some() {
                    return Err("raw: a cold key held a value".into());
                }
                let bytes = rmp_serde::to_vec_named(&sample_user(i as u64))?;
                let () = redis::cmd("SET")
                    .arg(&raw_key)
                    .arg(bytes)
                    .arg("PX")
                    .arg(60_000)
                    .query_async(con)
                    .await?;
                r.record(start.elapsed());
            }
        }
    }
    Ok((c, r))
}

/// Print and record the latency rows of workload `w`: `(subject, role, label, figures, how)`.
fn latency_rows(
    records: &mut Vec<Record>,
    w: &str,
    rows: [(&str, Role, &str, &Latencies, String); 2],
) {
    for (subject, role, label, s, how) in rows {
        let (p50, p99, mean) = (
            s.percentile(50.0) / 1e3,
            s.percentile(99.0) / 1e3,
            s.mean() / 1e3,
        );
        eprintln!(
            "l2_hit: {w}: {label:<26} p50 {p50:>7.1} µs  p99 {p99:>7.1} µs  mean {mean:>7.1} µs  \
             ({} ops)",
            s.len()
        );
        records.push(
            Record::result(w, subject, role, label, "p50_us")
                .num("p50_us", p50)
                .num("p99_us", p99)
                .num("mean_us", mean)
                .num("ops_per_s", 1e6 / mean)
                .num("samples", s.len() as f64)
                .str("how", &how),
        );
    }
}

struct Latency {
    cache: Latencies,
    raw: Latencies,
    load: Latencies,
}

async fn latency(
    cache: &Cache<User, MsgPack>,
    con: &mut MultiplexedConnection,
    warm: usize,
    n: usize,
) -> Result<Latency, BoxError> {
    let ck = cache_key(0);
    let rk = raw_key(0);
    for _ in 0..warm {
        cache_op(cache, &ck).await?;
        raw_op(con, &rk).await?;
        load_op(cache, &ck).await?;
    }
    let hits_before = cache.stats().l2_hits;
    let mut c = Latencies::new();
    let mut r = Latencies::new();
    let mut l = Latencies::new();
    for i in 0..n {
        // The three subjects in rotating order.
        for k in 0..3 {
            match (i + k) % 3 {
                0 => c.record(cache_op(cache, &ck).await?),
                1 => r.record(raw_op(con, &rk).await?),
                _ => l.record(load_op(cache, &ck).await?),
            }
        }
    }
    let hits = cache.stats().l2_hits - hits_before;
    if hits != 2 * n as u64 {
        return Err(format!("expected {} L2 hits, the cache counted {hits}", 2 * n).into());
    }
    Ok(Latency {
        cache: c,
        raw: r,
        load: l,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Cache,
    Raw,
}

/// (operations, elapsed) of `tasks` tasks, each reading its own key until `run` has passed.
async fn throughput(
    who: Who,
    cache: &Cache<User, MsgPack>,
    con: &MultiplexedConnection,
    tasks: usize,
    run: Duration,
) -> Result<(u64, Duration), BoxError> {
    let hits_before = cache.stats().l2_hits;
    let (counts, elapsed) = benches::run_tasks(tasks, run, |t, stop| {
        let (cache, mut con) = (cache.clone(), con.clone());
        async move {
            let (ck, rk) = (cache_key(t), raw_key(t));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match who {
                    Who::Cache => cache_op(&cache, &ck).await?,
                    Who::Raw => raw_op(&mut con, &rk).await?,
                };
                n += 1;
            }
            Ok(n)
        }
    })
    .await?;
    let ops = counts.iter().sum::<u64>();
    if who == Who::Cache {
        let hits = cache.stats().l2_hits - hits_before;
        if hits != ops {
            return Err(format!("expected {ops} L2 hits, the cache counted {hits}").into());
        }
    }
    Ok((ops, elapsed))
}

/// requests/s of `redis-benchmark -t get` against the server at `url`.
fn redis_benchmark(url: &str, size: usize, clients: usize, quick: bool) -> Result<f64, BoxError> {
    let hostport = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .rsplit('@')
        .next()
        .unwrap_or("127.0.0.1:6379")
        .to_owned();
    let (host, port) = hostport.rsplit_once(':').ok_or("no port in REDIS_URL")?;
    let n = if quick { 50_000 } else { 200_000 };
    let out = std::process::Command::new("redis-benchmark")
        .args(["-h", host, "-p", port, "-t", "get", "-q"])
        .args([
            "-d",
            &size.to_string(),
            "-c",
            &clients.to_string(),
            "-n",
            &n.to_string(),
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "GET: 123456.79 requests per second, p50=0.199 msec" (the last \r-separated part)
    let line = text
        .split(['\r', '\n'])
        .rfind(|l| l.starts_with("GET:"))
        .ok_or_else(|| format!("unexpected redis-benchmark output: {text:?}"))?;
    let rps = line
        .trim_start_matches("GET:")
        .split_whitespace()
        .next()
        .ok_or("no figure")?
        .parse::<f64>()?;
    Ok(rps)
}

fn main() -> Result<(), BoxError> {
    let filters = benches::filters();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    // `cargo bench -- --test` (or `cargo test --benches`): a smoke run, nothing written.
    let smoke = args.iter().any(|a| a == "--test");
    let run_latency = benches::selected(&filters, "l2_hit/latency");
    let run_throughput = benches::selected(&filters, "l2_hit/throughput");
    if !run_latency && !run_throughput {
        return Ok(());
    }
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!("l2_hit: REDIS_URL is not set; skipped (`cargo xtask bench` starts a Redis)");
        return Ok(());
    };
    let quick = benches::quick();
    // `run`: time per subject and task count for throughput, in slices: `abba_reps` × A B B A.
    let (warm, n, run, abba_reps) = if smoke {
        (10, 50, Duration::from_millis(100), 1u32)
    } else if quick {
        (500, 5_000, Duration::from_secs(2), 2)
    } else {
        (2_000, 30_000, Duration::from_secs(6), 3)
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let records = rt.block_on(async move {
        let day = Duration::from_secs(24 * 3600);
        let engine = cache_tiered::builder("bench").with_redis_url(&url).build().await?;
        let cache: Cache<User, MsgPack> = engine
            .cache::<User, MsgPack>("l2")
            .with_l1_ttl(day)
            .with_l2_ttl(day)
            .build()?;
        let client = redis::Client::open(url.as_str())?;
        let mut con = client.get_multiplexed_async_connection().await?;
        for i in 0..MAX_TASKS {
            let user = sample_user(i as u64);
            let bytes = rmp_serde::to_vec_named(&user)?;
            let () = redis::cmd("SET")
                .arg(raw_key(i))
                .arg(bytes)
                .query_async(&mut con)
                .await?;
            cache.set(&cache_key(i), user).await?;
        }
        let stored: Option<Vec<u8>> = redis::cmd("GET")
            .arg(cache.full_key(&cache_key(0))?)
            .query_async(&mut con)
            .await?;
        let cache_len = stored.map_or(0, |b| b.len());
        let raw_len = rmp_serde::to_vec_named(&sample_user(0))?.len();

        let mut records = Vec::new();
        if run_latency {
            // Run the loop as a task, as request handlers do.
            let (c2, mut con2) = (cache.clone(), con.clone());
            let lat = tokio::spawn(async move { latency(&c2, &mut con2, warm, n).await }).await??;
            let w = "l2_hit/latency (L1 dropped)";
            let how_cache = format!(
                "invalidate_local(key) untimed, then get(key).await timed; {} interleaved ops, \
                 {cache_len} B in Redis (16 B header + msgpack)",
                lat.cache.len()
            );
            let how_raw = format!(
                "redis::cmd(GET).query_async on a MultiplexedConnection + rmp_serde::from_slice; \
                 {} interleaved ops, {raw_len} B in Redis",
                lat.raw.len()
            );
            latency_rows(
                &mut records,
                w,
                [
                    ("tiercache", Role::Tiercache, "tiercache", &lat.cache, how_cache),
                    ("redis-rs", Role::Peer, "raw redis-rs GET + decode", &lat.raw, how_raw),
                ],
            );
            records.push(Record::target(
                w,
                "p50_us",
                "redis-rs",
                TargetKind::MaxDiff,
                5.0,
                "p50 <= raw p50 + 5 µs",
            ));
            let (c2, mut con2) = (cache.clone(), con.clone());
            let cold_n = n / 5;
            let (cold, raw_cold) =
                tokio::spawn(async move { cold_latency(&c2, &mut con2, cold_n).await }).await??;
            let w_cold = "l2_hit/cold load (L1 and L2 miss, loader answers at once)";
            latency_rows(
                &mut records,
                w_cold,
                [
                    (
                        "tiercache",
                        Role::Tiercache,
                        "tiercache get_or_load",
                        &cold,
                        format!(
                            "get_or_load(fresh key, loader).await: the first step (the value, \
                             else the lease), the loader, the compare-and-set fill; {} \
                             interleaved ops",
                            cold.len()
                        ),
                    ),
                    (
                        "redis-rs",
                        Role::Peer,
                        "raw cache-aside: GET, miss, encode, SET PX",
                        &raw_cold,
                        format!(
                            "redis-rs GET (a miss) + rmp_serde encode + SET PX on a \
                             MultiplexedConnection (no protection against concurrent loads); {} \
                             interleaved ops",
                            raw_cold.len()
                        ),
                    ),
                ],
            );
            // The same L2 hit through `get_or_load` (a load's first step: the flight, then the
            // read), beside the same raw figures; no target.
            let w = "l2_hit/latency via get_or_load (L1 dropped)";
            let how_load = format!(
                "invalidate_local(key) untimed, then get_or_load(key, loader).await timed (an L2 \
                 hit: the loader never runs); {} ops interleaved with the rows above",
                lat.load.len()
            );
            latency_rows(
                &mut records,
                w,
                [
                    ("tiercache", Role::Tiercache, "tiercache get_or_load", &lat.load, how_load),
                    (
                        "redis-rs",
                        Role::Peer,
                        "raw redis-rs GET + decode",
                        &lat.raw,
                        "the raw subject of l2_hit/latency (L1 dropped)".to_owned(),
                    ),
                ],
            );
        }
        if run_throughput {
            for tasks in [1usize, 16, 64, 256] {
                let w = format!(
                    "l2_hit/throughput, {tasks} task{}",
                    if tasks == 1 { "" } else { "s" }
                );
                // Slices in A B B A order, so a drift in machine load hits both alike.
                let mut totals = [(0u64, Duration::ZERO); 2];
                let slice = run / (2 * abba_reps);
                for who in [Who::Cache, Who::Raw, Who::Raw, Who::Cache]
                    .iter()
                    .cycle()
                    .take(4 * abba_reps as usize)
                {
                    let who = *who;
                    let (ops, elapsed) = throughput(who, &cache, &con, tasks, slice).await?;
                    let t = &mut totals[usize::from(who == Who::Raw)];
                    t.0 += ops;
                    t.1 += elapsed;
                }
                for (i, (subject, role, label)) in [
                    ("tiercache", Role::Tiercache, "tiercache"),
                    ("redis-rs", Role::Peer, "raw redis-rs GET + decode"),
                ]
                .into_iter()
                .enumerate()
                {
                    let (n, elapsed) = totals[i];
                    let ops = n as f64 / elapsed.as_secs_f64();
                    eprintln!("l2_hit: {subject:<10} {tasks:>2} tasks {ops:>10.0} ops/s");
                    records.push(
                        Record::result(&w, subject, role, label, "ops_per_s")
                            .num("ops_per_s", ops)
                            .num("tasks", tasks as f64)
                            .num("seconds", elapsed.as_secs_f64())
                            .str(
                                "how",
                                "each task loops on its own key; the time is cut in slices run \
                                 in A B B A order; total ops / total elapsed",
                            ),
                    );
                }
                let bench = redis_benchmark(&url, raw_len, tasks, quick || smoke);
                match &bench {
                    Ok(rps) => {
                        eprintln!("l2_hit: redis-benchmark {tasks:>3} clients {rps:>10.0} requests/s");
                        records.push(
                            Record::result(&w, "redis-benchmark", Role::Peer, "redis-benchmark", "ops_per_s")
                                .num("ops_per_s", *rps)
                                .str("how", &format!("redis-benchmark -t get -d {raw_len} -c {tasks} -n <N> -q (C client, no decoding)")),
                        );
                    }
                    Err(e) => records.push(
                        Record::result(&w, "redis-benchmark", Role::Peer, "redis-benchmark", "ops_per_s")
                            .str("error", &format!("not run: {e}")),
                    ),
                }
                if tasks == 64 {
                    records.push(
                        Record::result(&w, "two_tier_peers", Role::Peer, "peer crates' L2 hit", "ops_per_s")
                            .str("error", "see the rows l2_hit/peers (latency and 64-reader throughput)"),
                    );
                    // Issue 17: the cache coalesces concurrent reads (one `MGET`), the raw client cannot.
                    records.push(Record::target(&w, "ops_per_s", "redis-rs", TargetKind::MinRatio, 1.2, ">= 1.2x raw redis-rs (coalesced reads)"));
                }
            }
        }
        Ok::<_, BoxError>(records)
    })?;
    if !smoke && !records.is_empty() {
        let path = benches::write_records("l2_hit", &records)?;
        eprintln!("l2_hit: wrote {}", path.display());
    }
    Ok(())
}
