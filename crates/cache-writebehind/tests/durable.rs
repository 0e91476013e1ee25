//! Durable write-behind (a Redis Stream): a SIGKILLed writer process loses no acknowledged
//! write, a full stream refuses, a failing writer still gets everything in order, two
//! instances share one stream, and an `XADD` whose outcome is unknown (timed out, or its
//! caller dropped) leaves no old value cached once it reached the source.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_codec::MsgPack;
use cache_core::{Cache, Engine, ErrorKind};
use cache_l1::QuickL1;
use cache_redis::{RedisBus, RedisConfig, RedisStore};
use cache_testkit::{shared_redis, FaultProxy, Mode};
use cache_writebehind::{Batch, BatchWriter, BoxError, QueuePolicy, WriteBehind};
use common::{cache, engine, unique_prefix, Source, TestResult};

/// Short enough for tests: a dead flusher's entries are taken over after half a second.
const CLAIM_IDLE: Duration = Duration::from_millis(500);

async fn store(url: &str) -> Result<RedisStore, cache_core::Error> {
    RedisStore::connect(RedisConfig::builder().with_url(url).build()?).await
}

/// A durable write-behind for `prefix` on the Redis at `url`.
async fn durable<W: BatchWriter<u64>>(
    url: &str,
    prefix: &str,
    writer: W,
) -> Result<WriteBehind<u64, MsgPack>, cache_core::Error> {
    let (engine, _l2) = engine(prefix)?;
    WriteBehind::builder(cache(&engine)?, writer)
        .with_redis(store(url).await?)
        .with_claim_idle(CLAIM_IDLE)
        .with_max_batch(64)
        .with_max_age(Duration::from_millis(5))
        .with_retry(Duration::from_millis(1), Duration::from_millis(20))
        .build()
        .await
}

fn stream_key(prefix: &str) -> String {
    format!("{prefix}:__wb:items")
}

/// The child process: writes with a writer that never finishes (entries stay pending),
/// printing one `ack KEY VALUE` line per acknowledged write, until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_sigkilled_writer_loses_no_acknowledged_write as a child process"]
async fn durable_child() -> TestResult {
    let Ok(url) = std::env::var("WB_CHILD_URL") else {
        return Ok(());
    };
    let prefix = std::env::var("WB_CHILD_PREFIX")?;
    let stuck = |_batch: Batch<u64>| std::future::pending::<Result<(), BoxError>>();
    let wb = durable(&url, &prefix, stuck).await?;
    let mut out = std::io::stdout();
    for i in 0..100_000u64 {
        let key = format!("k{}", i % 50);
        wb.write_behind(&key, i).await?;
        writeln!(out, "ack {key} {i}")?;
        out.flush()?;
    }
    std::future::pending::<()>().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_writer_loses_no_acknowledged_write() -> TestResult {
    let url = shared_redis()?.url();
    let prefix = unique_prefix("sigkill");
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--ignored",
            "--exact",
            "durable_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WB_CHILD_URL", &url)
        .env("WB_CHILD_PREFIX", &prefix)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let (enough_tx, enough_rx) = std::sync::mpsc::channel::<()>();
    // Read to EOF: every line the child printed before it died is an acknowledged write.
    let reader = std::thread::spawn(move || {
        let mut acks: Vec<(String, u64)> = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut parts = line.split_whitespace();
            if parts.next() != Some("ack") {
                continue;
            }
            if let (Some(k), Some(v)) = (parts.next(), parts.next().and_then(|v| v.parse().ok())) {
                acks.push((k.to_owned(), v));
                if acks.len() == 500 {
                    let _ = enough_tx.send(());
                }
            }
        }
        acks
    });
    let got_enough = tokio::task::spawn_blocking(move || {
        enough_rx.recv_timeout(Duration::from_secs(60)).is_ok()
    })
    .await?;
    // SIGKILL in the middle of its writes: no shutdown, no flush.
    child.kill()?;
    child.wait()?;
    let acks = tokio::task::spawn_blocking(move || reader.join())
        .await?
        .map_err(|_| "reader thread panicked")?;
    assert!(
        got_enough,
        "the child acknowledged only {} writes",
        acks.len()
    );

    // The dead instance held a batch it never finished (pending in the consumer group),
    // and more entries were never read.
    let xpending = shared_redis()?.cli(&["XPENDING", &stream_key(&prefix), "wb"])?;
    let pending_at_dead: u64 = xpending.lines().next().unwrap_or("0").trim().parse()?;
    let xlen: u64 = shared_redis()?
        .cli(&["XLEN", &stream_key(&prefix)])?
        .trim()
        .parse()?;
    assert!(pending_at_dead > 0, "XPENDING: {xpending}");
    assert!(
        xlen > pending_at_dead,
        "XLEN {xlen}, pending {pending_at_dead}"
    );
    eprintln!(
        "child acknowledged {} writes; {xlen} entries in the stream, {pending_at_dead} pending \
         at the dead consumer",
        acks.len()
    );

    // Another instance takes over: the dead one's pending entries, then the rest.
    let source = Source::default();
    let wb = durable(&url, &prefix, source.writer(Duration::ZERO)).await?;
    tokio::time::timeout(Duration::from_secs(60), wb.flush()).await??;

    let mut newest: HashMap<String, u64> = HashMap::new();
    for (k, v) in &acks {
        let e = newest.entry(k.clone()).or_default();
        *e = (*e).max(*v);
    }
    for (k, v) in &newest {
        let got = source.latest(k);
        assert!(
            got.is_some_and(|g| g >= *v),
            "{k}: acknowledged {v}, source has {got:?}"
        );
    }
    source.assert_ordered();
    assert_eq!(wb.depth().await?, 0, "the stream is drained");
    let stats = wb.stats();
    assert!(stats.written > 0 && stats.dead_lettered == 0, "{stats:?}");
    wb.shutdown().await?;
    Ok(())
}

/// Records every queue-depth `Gauge` event of the caches it observes.
#[derive(Clone, Default)]
struct Depths(Arc<std::sync::Mutex<Vec<u64>>>);

impl cache_core::CacheObserver for Depths {
    fn on_event(&self, event: cache_core::CacheEvent) {
        if let cache_core::CacheEvent::Gauge {
            name: "write_behind_queue_depth",
            value: depth,
        } = event
        {
            self.0.lock().unwrap().push(depth);
        }
    }
}

impl cache_core::Observer for Depths {
    fn for_cache(&self, _cache: &str) -> Arc<dyn cache_core::CacheObserver> {
        Arc::new(self.clone())
    }
}

/// The durable queue reports the stream's length when the flusher takes a batch and after
/// it is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_durable_queue_reports_its_depth() -> TestResult {
    let url = shared_redis()?.url();
    let prefix = unique_prefix("durable_depth");
    let (open_tx, open_rx) = tokio::sync::watch::channel(false);
    let gated = move |_batch: Batch<u64>| {
        let mut open = open_rx.clone();
        async move {
            open.wait_for(|o| *o).await?;
            Ok::<(), BoxError>(())
        }
    };
    let depths = Depths::default();
    let engine = Engine::builder(&prefix)
        .with_l1(Arc::new(QuickL1::with_capacity_bytes(1 << 20)))
        .with_l2(Arc::new(cache_core::MemoryStore::new()))
        .with_observer(Arc::new(depths.clone()))
        .build()?;
    let wb = WriteBehind::builder(cache(&engine)?, gated)
        .with_redis(store(&url).await?)
        .with_claim_idle(CLAIM_IDLE)
        .with_max_batch(64)
        .with_max_age(Duration::from_millis(200))
        .build()
        .await?;
    for i in 0..3 {
        wb.write_behind(&format!("k{i}"), i).await?;
    }
    let seen = |d: &Depths| d.0.lock().unwrap().clone();
    assert!(
        eventually(Duration::from_secs(5), || async {
            Ok(seen(&depths).contains(&3))
        })
        .await?,
        "the taken batch reports 3: {:?}",
        seen(&depths)
    );
    open_tx.send_replace(true);
    wb.flush().await?;
    assert!(
        eventually(Duration::from_secs(5), || async {
            Ok(seen(&depths).last() == Some(&0))
        })
        .await?,
        "the acknowledged batch reports 0: {:?}",
        seen(&depths)
    );
    wb.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_refuses_with_the_reject_policy() -> TestResult {
    let url = shared_redis()?.url();
    let prefix = unique_prefix("durable_full");
    let source = Source::default();
    let (open_tx, open_rx) = tokio::sync::watch::channel(false);
    let s = source.clone();
    let gated = move |batch: Batch<u64>| {
        let mut open = open_rx.clone();
        let s = s.clone();
        async move {
            open.wait_for(|o| *o).await?;
            s.record(&batch);
            Ok::<(), BoxError>(())
        }
    };
    let (engine, _l2) = engine(&prefix)?;
    let wb = WriteBehind::builder(cache(&engine)?, gated)
        .with_redis(store(&url).await?)
        .with_claim_idle(CLAIM_IDLE)
        .with_capacity(5)
        .with_policy(QueuePolicy::Reject)
        .build()
        .await?;
    for i in 0..5 {
        wb.write_behind(&format!("k{i}"), i).await?;
    }
    let err = wb.write_behind("k5", 5).await.err().map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::QueueFull));
    assert_eq!(
        wb.cache().get_local("k5"),
        None,
        "a refused write changes nothing"
    );
    assert_eq!(wb.stats().rejected, 1);
    assert_eq!(wb.depth().await?, 5);

    open_tx.send_replace(true);
    wb.flush().await?;
    assert_eq!(source.keys(), 5);
    wb.write_behind("k5", 5).await?;
    wb.shutdown().await?;
    assert_eq!(source.latest("k5"), Some(5));
    assert_eq!(wb.stats().repairs, 0, "a refusal needs no repair");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_dropped_while_waiting_for_room_needs_no_repair() -> TestResult {
    let url = shared_redis()?.url();
    let prefix = unique_prefix("durable_room");
    let source = Source::default();
    let (open_tx, open_rx) = tokio::sync::watch::channel(false);
    let s = source.clone();
    let gated = move |batch: Batch<u64>| {
        let mut open = open_rx.clone();
        let s = s.clone();
        async move {
            open.wait_for(|o| *o).await?;
            s.record(&batch);
            Ok::<(), BoxError>(())
        }
    };
    let (engine, _l2) = engine(&prefix)?;
    let wb = WriteBehind::builder(cache(&engine)?, gated)
        .with_redis(store(&url).await?)
        .with_claim_idle(CLAIM_IDLE)
        .with_capacity(1)
        .build()
        .await?;
    wb.write_behind("k0", 0).await?;
    // The stream is full: the write waits for room, nothing is sent, and it is given up.
    let waited = tokio::time::timeout(Duration::from_millis(200), wb.write_behind("k1", 1)).await;
    assert!(waited.is_err(), "the write must wait for room");
    open_tx.send_replace(true);
    wb.shutdown().await?;
    assert_eq!(source.latest("k1"), None);
    assert_eq!(wb.stats().repairs, 0, "nothing was sent: no repair");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_writer_and_two_instances_still_write_everything_in_order() -> TestResult {
    let url = shared_redis()?.url();
    let prefix = unique_prefix("durable_two");
    let source = Source::default();
    let flaky = |source: Source| {
        move |batch: Batch<u64>| {
            let s = source.clone();
            async move {
                if s.call() % 2 == 1 {
                    return Err::<(), BoxError>("injected failure".into());
                }
                s.record(&batch);
                Ok(())
            }
        }
    };
    let a = durable(&url, &prefix, flaky(source.clone())).await?;
    let b = durable(&url, &prefix, flaky(source.clone())).await?;
    // Each key is written by one instance only, in order; keys of both share the stream.
    let wa = {
        let a = a.clone();
        tokio::spawn(async move {
            for i in 0..400u64 {
                a.write_behind(&format!("a{}", i % 40), i).await?;
            }
            Ok::<(), cache_core::Error>(())
        })
    };
    for i in 0..400u64 {
        b.write_behind(&format!("b{}", i % 40), i).await?;
    }
    wa.await??;
    a.flush().await?;
    b.flush().await?;
    for j in 0..40u64 {
        assert_eq!(source.latest(&format!("a{j}")), Some(360 + j));
        assert_eq!(source.latest(&format!("b{j}")), Some(360 + j));
    }
    source.assert_ordered();
    let (sa, sb) = (a.stats(), b.stats());
    assert!(sa.failures + sb.failures > 0);
    a.shutdown().await?;
    b.shutdown().await?;
    // Drained, and the lease is given back on shutdown.
    let out = shared_redis()?.cli(&["XLEN", &stream_key(&prefix)])?;
    assert_eq!(out.trim(), "0");
    let out = shared_redis()?.cli(&["EXISTS", &format!("{}:leader", stream_key(&prefix))])?;
    assert_eq!(out.trim(), "0");
    Ok(())
}

/// The write-behind's Redis response timeout in the unknown-outcome tests.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(250);

/// The proxy's delay, each way: the `XADD` reaches Redis after the caller gave up on it.
const SLOW_REDIS: Duration = Duration::from_millis(800);

/// How long another instance may keep an invalidated value in L1 (bus delivery, generous
/// for a loaded 2-core machine).
const BUS_BOUND: Duration = Duration::from_secs(2);

/// An engine whose L2 is the Redis at `url` (direct, no proxy), with the Redis
/// invalidation bus: what several instances of a service share.
async fn redis_engine(prefix: &str, url: &str) -> Result<Engine, cache_core::Error> {
    let l2 = store(url).await?;
    let bus = RedisBus::new(&l2);
    Engine::builder(prefix)
        .with_l1(Arc::new(QuickL1::with_capacity_bytes(16 << 20)))
        .with_l2(Arc::new(l2))
        .with_bus(Arc::new(bus))
        .build()
}

/// Poll `f` every 5 ms for at most `limit`; whether it ever held.
async fn eventually<F, Fut>(limit: Duration, mut f: F) -> Result<bool, BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, BoxError>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Wait until `b` receives `a`'s invalidations (its bus subscription is live).
async fn wait_for_bus(a: &Cache<u64, MsgPack>, b: &Cache<u64, MsgPack>) -> TestResult {
    for i in 0..50u64 {
        a.set("bus-probe", i).await?;
        b.get("bus-probe").await?;
        a.invalidate("bus-probe").await?;
        let live = eventually(Duration::from_millis(200), || async {
            Ok(b.get_local("bus-probe").is_none())
        })
        .await?;
        if live {
            return Ok(());
        }
    }
    Err("the second engine never received an invalidation".into())
}

/// How the `XADD` of the write under test ends, as its caller sees it.
#[derive(Clone, Copy, Debug)]
enum Unknown {
    /// `write_behind` returns a `Timeout` error.
    TimedOut,
    /// The caller's future is dropped while the `XADD` is in flight.
    Dropped,
}

/// Two instances sharing a Redis (L2 and bus); the first writes behind through a proxy
/// that can make its Redis slow. `k = 1` is in the source, in L2 and in both L1s.
struct SlowRedis {
    proxy: FaultProxy,
    url: String,
    prefix: String,
    a: Cache<u64, MsgPack>,
    b: Cache<u64, MsgPack>,
    source: Source,
    /// How many batches the writer may write (it waits when it has written that many).
    allowed: tokio::sync::watch::Sender<u64>,
    /// Batches written.
    batches: Arc<AtomicU64>,
    wb: WriteBehind<u64, MsgPack>,
}

impl SlowRedis {
    async fn start(test: &str) -> Result<SlowRedis, Box<dyn std::error::Error + Send + Sync>> {
        let server = shared_redis()?;
        let url = server.url();
        let proxy = FaultProxy::start(server.addr())?;
        let prefix = unique_prefix(test);
        let a = cache(&redis_engine(&prefix, &url).await?)?;
        let b = cache(&redis_engine(&prefix, &url).await?)?;
        wait_for_bus(&a, &b).await?;

        let source = Source::default();
        source.record(&vec![("k".to_owned(), Arc::new(1))]);
        a.set("k", 1).await?;
        // B caches it once the invalidation that A's `set` announced has passed.
        let cached = eventually(BUS_BOUND, || async {
            assert_eq!(b.get("k").await?.as_deref(), Some(&1));
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(b.get_local("k") == Some(Some(Arc::new(1))))
        })
        .await?;
        assert!(cached, "the second instance never kept k = 1 in L1");

        let (allowed, allowed_rx) = tokio::sync::watch::channel(u64::MAX);
        let batches = Arc::new(AtomicU64::new(0));
        let (s, done) = (source.clone(), batches.clone());
        let gated = move |batch: Batch<u64>| {
            let mut allowed = allowed_rx.clone();
            let (s, done) = (s.clone(), done.clone());
            async move {
                let n = done.load(Ordering::SeqCst);
                allowed.wait_for(|a| n < *a).await?;
                s.record(&batch);
                done.fetch_add(1, Ordering::SeqCst);
                Ok::<(), BoxError>(())
            }
        };
        // The write-behind's own Redis connection goes through the proxy.
        let wb_store = RedisStore::connect(
            RedisConfig::builder()
                .with_url(proxy.url())
                .with_response_timeout(RESPONSE_TIMEOUT)
                .build()?,
        )
        .await?;
        let wb = WriteBehind::builder(a.clone(), gated)
            .with_redis(wb_store)
            .with_claim_idle(CLAIM_IDLE)
            .with_max_age(Duration::from_millis(5))
            .with_retry(Duration::from_millis(1), Duration::from_millis(20))
            .build()
            .await?;
        // One write first: the XADD script is loaded, so a slow call later is the XADD itself.
        wb.write_behind("warm", 0).await?;
        wb.flush().await?;
        Ok(SlowRedis {
            proxy,
            url,
            prefix,
            a,
            b,
            source,
            allowed,
            batches,
            wb,
        })
    }

    /// The writer writes `n` more batches, then waits (`u64::MAX`: no limit).
    fn allow(&self, n: u64) {
        let done = self.batches.load(Ordering::SeqCst);
        self.allowed.send_replace(done.saturating_add(n));
    }

    /// Wait (bounded) until the source has `k = value`.
    async fn source_gets(&self, value: u64) -> TestResult {
        let written = eventually(Duration::from_secs(15), || async {
            Ok(self.source.latest("k") == Some(value))
        })
        .await?;
        assert!(
            written,
            "the source never got k = {value}: {:?}",
            self.source.latest("k")
        );
        Ok(())
    }

    /// `write_behind(k, value)` while Redis is slow: the caller gives up (`case`) before the
    /// `XADD` reaches Redis, which it does all the same.
    async fn write_with_unknown_outcome(&self, case: Unknown, value: u64) -> TestResult {
        self.proxy.set_mode(Mode::Delay(SLOW_REDIS));
        let started = Instant::now();
        match case {
            Unknown::TimedOut => {
                let err = self
                    .wb
                    .write_behind("k", value)
                    .await
                    .err()
                    .map(|e| e.kind());
                assert_eq!(err, Some(ErrorKind::Timeout), "the XADD must time out");
            }
            Unknown::Dropped => {
                let call =
                    tokio::time::timeout(RESPONSE_TIMEOUT / 5, self.wb.write_behind("k", value))
                        .await;
                assert!(call.is_err(), "the call must be dropped during its XADD");
            }
        }
        assert!(
            started.elapsed() < SLOW_REDIS,
            "the caller must give up before the XADD reaches Redis"
        );
        self.proxy.set_mode(Mode::Pass);
        Ok(())
    }
}

/// The write-behind's Redis is slow: the `XADD` of `k = 2` reaches Redis (and so the
/// source) after its caller gave up on it, while the cache held `k = 1` (L2, the writer's
/// L1, another instance's L1). Once `flush()` returned, no instance may serve 1 any more:
/// 2 or a miss.
async fn unknown_outcome_leaves_no_old_value(case: Unknown) -> TestResult {
    let t = SlowRedis::start(&format!("unknown_{case:?}").to_lowercase()).await?;
    t.write_with_unknown_outcome(case, 2).await?;
    // The XADD reached Redis all the same: the flusher writes it to the source.
    t.source_gets(2).await?;
    tokio::time::timeout(Duration::from_secs(15), t.wb.flush()).await??;

    // The source has 2: no instance serves 1 any more.
    let here = t.a.get("k").await?;
    assert!(
        here.as_deref() != Some(&1),
        "the writing instance serves {here:?}"
    );
    let fresh = cache(&redis_engine(&t.prefix, &t.url).await?)?;
    let l2 = fresh.get("k").await?;
    assert!(l2.as_deref() != Some(&1), "L2 serves {l2:?}");
    let other = eventually(BUS_BOUND, || async {
        Ok(t.b.get("k").await?.as_deref() != Some(&1))
    })
    .await?;
    assert!(
        other,
        "another instance kept k = 1 in L1 for more than {BUS_BOUND:?}"
    );
    assert!(t.wb.stats().repairs >= 1, "{:?}", t.wb.stats());
    t.source.assert_ordered();
    t.wb.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_xadd_that_reached_redis_leaves_no_old_value_cached() -> TestResult {
    unknown_outcome_leaves_no_old_value(Unknown::TimedOut).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_dropped_during_its_xadd_leaves_no_old_value_cached() -> TestResult {
    unknown_outcome_leaves_no_old_value(Unknown::Dropped).await
}

/// After an unknown outcome, the caller retries and this time the cache is updated. The
/// repair is then no longer needed, and running it once the first entry is written, while
/// the retry's entry still waits, would drop the new value from the cache: a read would
/// then load the source's older value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_updates_the_cache_cancels_the_repair() -> TestResult {
    let t = SlowRedis::start("unknown_retry").await?;
    t.allow(0);
    t.write_with_unknown_outcome(Unknown::TimedOut, 2).await?;
    // The entry is in the stream (held by the writer); let the flusher read its bound.
    let stream = stream_key(&t.prefix);
    let added = eventually(Duration::from_secs(15), || async {
        Ok(shared_redis()?.cli(&["XLEN", &stream])?.trim() != "0")
    })
    .await?;
    assert!(added, "the XADD never reached Redis");
    tokio::time::sleep(Duration::from_millis(300)).await;

    t.wb.write_behind("k", 3).await?;
    // The first entry is written; the retry's waits.
    t.allow(1);
    t.source_gets(2).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        t.a.get_local("k"),
        Some(Some(Arc::new(3))),
        "the retry's value was dropped from the cache while its write was still waiting"
    );
    t.allow(u64::MAX);
    tokio::time::timeout(Duration::from_secs(15), t.wb.flush()).await??;
    assert_eq!(t.source.latest("k"), Some(3));
    assert_eq!(t.a.get("k").await?.as_deref(), Some(&3));
    assert_eq!(t.wb.stats().repairs, 0, "{:?}", t.wb.stats());
    t.source.assert_ordered();
    t.wb.shutdown().await?;
    Ok(())
}

/// The commands the durable queue adds to the minimal ACL rule set of docs/security.md (the
/// commands its Lua scripts call, `XLEN`, `XADD`, `GET`, `PEXPIRE`, `DEL`, and the leader lease
/// `SET`, are in that set or here). Each was removed in turn and the test below failed.
const WB_RULES: &str = "+xadd +xlen +xrange +xrevrange +xreadgroup +xpending +xautoclaim \
    +xack +xdel +xgroup|create +xgroup|delconsumer +xinfo|consumers +multi +exec";

/// The cache's minimal rule set (docs/security.md), without the bus and tracking commands
/// the write-behind does not use.
const CACHE_RULES: &str = "resetkeys ~tenantA:* resetchannels &tenantA:* -@all \
    +ping +get +mget +set +del +unlink +scan \
    +evalsha +script|load +sadd +smembers +srem +pttl +pexpire";

/// Issue 18: the durable queue runs under exactly the documented rules (docs/security.md,
/// "write-behind"): writes from two instances, a writer that fails and retries, a
/// dead-lettered entry, a dead instance's batch taken over, idle consumers forgotten; every
/// write reaches the source and the server's `ACL LOG` stays empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_rules_run_the_durable_queue() -> TestResult {
    const PASSWORD: &str = "wb-acl-pa55";
    let server = cache_testkit::ServerOptions::new()
        .with_acl_user(&format!("tenantA on >{PASSWORD} {CACHE_RULES} {WB_RULES}"))
        .start()?;
    // Redis 7.2+ only (redis-rs announces itself); an error on older servers is expected.
    let _ = server.cli(&["ACL", "SETUSER", "tenantA", "+client|setinfo"]);
    let tenant = || {
        RedisConfig::builder()
            .with_url(server.url())
            .with_username("tenantA")
            .with_password(PASSWORD)
            .build()
    };
    let source = Source::default();
    let queue = |writer_source: Source, fail_first: u64| async move {
        let (engine, _l2) = engine("tenantA")?;
        WriteBehind::builder(cache(&engine)?, move |batch: Batch<u64>| {
            let s = writer_source.clone();
            async move {
                if s.call() <= fail_first {
                    return Err::<(), BoxError>("the source is down".into());
                }
                s.record(&batch);
                Ok(())
            }
        })
        .with_redis(RedisStore::connect(tenant()?).await?)
        .with_claim_idle(CLAIM_IDLE)
        .with_max_batch(16)
        .with_max_age(Duration::from_millis(5))
        .with_retry(Duration::from_millis(1), Duration::from_millis(20))
        .build()
        .await
    };
    // First, the flusher: an instance whose writer never finishes, on its own runtime, which
    // is then dropped (as if the process died) with its batch pending. Its entries are
    // claimed (`XAUTOCLAIM`) by the next flusher, and it is forgotten
    // (`XGROUP DELCONSUMER`) once idle.
    let config = tenant()?;
    std::thread::spawn(move || -> Result<(), BoxError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let (engine, _l2) = engine("tenantA")?;
            let stuck = WriteBehind::builder(cache(&engine)?, |_batch: Batch<u64>| {
                std::future::pending::<Result<(), BoxError>>()
            })
            .with_redis(RedisStore::connect(config).await?)
            .with_claim_idle(CLAIM_IDLE)
            .with_max_age(Duration::from_millis(5))
            .build()
            .await?;
            for i in 0..10u64 {
                stuck.write_behind(&format!("s{i}"), i).await?;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, BoxError>(())
        })?;
        rt.shutdown_background();
        Ok(())
    })
    .join()
    .map_err(|_| "the crashed instance's thread panicked")?
    .map_err(|e| e.to_string())?;
    let a = queue(source.clone(), 2).await?;
    let b = queue(source.clone(), 0).await?;
    // An entry no instance can decode: dead-lettered.
    let stream = stream_key("tenantA");
    server.cli(&["XADD", &stream, "*", "k", "poison", "c", "99", "v", "x"])?;
    for i in 0..100u64 {
        let wb = if i % 2 == 0 { &a } else { &b };
        wb.write_behind(&format!("k{}", i % 20), i).await?;
    }
    // `flush` waits as long as the queue cannot make progress (a refused command too):
    // bounded here, so a missing rule fails the test instead of hanging it.
    let bound = Duration::from_secs(10);
    tokio::time::timeout(bound, a.flush()).await??;
    tokio::time::timeout(bound, b.flush()).await??;
    // The dead instance's entries are claimed once idle, and it is forgotten later.
    let done = eventually(Duration::from_secs(10), || async {
        Ok(a.depth().await? == 0 && source.latest("s9") == Some(9))
    })
    .await?;
    tokio::time::sleep(CLAIM_IDLE * 3).await;
    tokio::time::timeout(bound, a.shutdown()).await??;
    tokio::time::timeout(bound, b.shutdown()).await??;
    let dead = server.cli(&["XLEN", &format!("{stream}:dead")])?;
    let consumers = server.cli(&["XINFO", "CONSUMERS", &stream, "wb"])?;
    let denied = server.cli(&["ACL", "LOG"])?;
    assert!(done, "every entry written, the stuck instance's too");
    for k in 0..20u64 {
        let last = (80..100).find(|i| i % 20 == k).unwrap_or(0);
        assert_eq!(source.latest(&format!("k{k}")), Some(last), "k{k}");
    }
    assert_eq!(dead.trim(), "1", "the undecodable entry is dead-lettered");
    assert_eq!(
        consumers.lines().filter(|l| l.trim() == "name").count(),
        1,
        "the dead flusher is forgotten:\n{consumers}"
    );
    assert!(denied.trim().is_empty(), "commands were denied:\n{denied}");
    Ok(())
}

/// A command the ACL rules refuse (here `XREADGROUP`, so the flusher cannot take a batch) is
/// a configuration error: `flush` ends with `ErrorKind::Auth` naming it, instead of waiting
/// for a flusher that can never make progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_command_ends_flush_with_an_auth_error() -> TestResult {
    const PASSWORD: &str = "wb-refused-pa55";
    let rules = WB_RULES.replace("+xreadgroup ", "");
    let server = cache_testkit::ServerOptions::new()
        .with_acl_user(&format!("tenantA on >{PASSWORD} {CACHE_RULES} {rules}"))
        .start()?;
    let config = RedisConfig::builder()
        .with_url(server.url())
        .with_username("tenantA")
        .with_password(PASSWORD)
        .build()?;
    let (engine, _l2) = engine("tenantA")?;
    let wb = WriteBehind::builder(cache(&engine)?, |_batch: Batch<u64>| async {
        Ok::<(), BoxError>(())
    })
    .with_redis(RedisStore::connect(config).await?)
    .with_max_age(Duration::from_millis(5))
    .build()
    .await?;
    for i in 0..3u64 {
        wb.write_behind(&format!("k{i}"), i).await?;
    }
    let flushed = tokio::time::timeout(Duration::from_secs(10), wb.flush())
        .await
        .map_err(|_| "flush kept waiting on a refused command")?;
    let e = flushed.expect_err("nothing can be flushed");
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert!(e.message().to_lowercase().contains("xreadgroup"), "{e}");
    assert!(!e.message().contains(PASSWORD));
    Ok(())
}
