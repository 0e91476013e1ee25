//! L1 coherence across instances: the invalidation bus on a real Redis (and the in-process
//! bus for loss injection), a third instance in a child process, tracking mode, namespace clear.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_testkit::shared_redis;
use cache_tiered::core::ReconnectPolicy;
use cache_tiered::{BusConfig, Cache, Engine, MemoryBus, MemoryStore, MsgPack};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// How long another instance may keep serving an invalidated value (a generous bound for a
/// loaded 2-core CI machine; the benchmark measures the real figure).
const BOUND: Duration = Duration::from_secs(2);

async fn redis_engine(prefix: &str) -> Result<Engine, Box<dyn std::error::Error + Send + Sync>> {
    Ok(cache_tiered::builder(prefix)
        .with_redis_url(shared_redis()?.url())
        .with_bus_config(BusConfig::default().with_heartbeat(Duration::from_millis(200)))
        .build()
        .await?)
}

fn cache(e: &Engine) -> Result<Cache<u64, MsgPack>, cache_tiered::Error> {
    e.cache::<u64, MsgPack>("n")
        .with_l1_ttl(Duration::from_secs(300))
        .with_l2_ttl(Duration::from_secs(600))
        .build()
}

async fn wait_until(mut f: impl FnMut() -> bool, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// The child process' side: an engine C that caches `k`, says "ready", and reports how long
/// after the parent's "go" its L1 copy was dropped.
#[tokio::test]
#[ignore = "run by invalidate_reaches_other_engines_and_another_process as a child process"]
async fn coherence_child() -> TestResult {
    let Ok(url) = std::env::var("COHERENCE_CHILD_URL") else {
        return Ok(());
    };
    let prefix = std::env::var("COHERENCE_CHILD_PREFIX")?;
    let engine = cache_tiered::builder(prefix)
        .with_redis_url(url)
        .build()
        .await?;
    let c = cache(&engine)?;
    c.get("k").await?;
    assert_eq!(c.get_local("k"), Some(Some(Arc::new(1))));
    // Wait for our subscription to be live before saying ready.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    let dropped = wait_until(|| c.get_local("k").is_none(), Duration::from_secs(10)).await;
    writeln!(
        out,
        "dropped {}",
        dropped.map_or(-1, |d| d.as_millis() as i64)
    )?;
    out.flush()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_reaches_other_engines_and_another_process() -> TestResult {
    let prefix = format!("coh{}", std::process::id());
    let a = cache(&redis_engine(&prefix).await?)?;
    let b = cache(&redis_engine(&prefix).await?)?;
    a.set("k", 1).await?;
    // Let A's own write invalidation pass before B caches the value.
    tokio::time::sleep(Duration::from_millis(100)).await;
    // B holds the value in L1.
    b.get("k").await?;
    assert_eq!(b.get_local("k"), Some(Some(Arc::new(1))));

    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--ignored",
            "--exact",
            "coherence_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("COHERENCE_CHILD_URL", shared_redis()?.url())
        .env("COHERENCE_CHILD_PREFIX", &prefix)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::task::spawn_blocking(move || {
        for line in lines.by_ref() {
            let line = line.ok()?;
            if line.trim_end().ends_with("ready") {
                return Some(lines);
            }
        }
        None
    })
    .await?
    .ok_or("child never became ready")?;

    a.invalidate("k").await?;
    let b_dropped = wait_until(|| b.get_local("k").is_none(), BOUND).await;
    let child_report = tokio::task::spawn_blocking(move || {
        // Read to the end (closing the pipe early would fail the child's own output).
        let mut report = None;
        for line in ready.map_while(|l| l.ok()) {
            if let Some(ms) = line.split("dropped ").nth(1) {
                report = ms.trim().parse::<i64>().ok();
            }
        }
        report
    })
    .await?;
    let status = child.wait()?;
    assert!(
        b_dropped.is_some(),
        "B kept its L1 copy for more than {BOUND:?}"
    );
    let child_ms = child_report.ok_or("child reported nothing")?;
    assert!(status.success(), "child failed");
    assert!(
        child_ms >= 0 && (child_ms as u128) < BOUND.as_millis(),
        "child dropped after {child_ms} ms"
    );
    // B reads the new truth (here: absent) rather than its old copy.
    assert_eq!(b.get("k").await?, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_broadcasts_but_fill_after_load_does_not() -> TestResult {
    let prefix = format!("fill{}", std::process::id());
    let ea = redis_engine(&prefix).await?;
    let a = cache(&ea)?;
    let b = cache(&redis_engine(&prefix).await?)?;
    a.get_or_load("x", |_| async { Ok::<_, std::io::Error>(5) })
        .await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        ea.bus_stats().map(|s| s.sent_messages),
        Some(0),
        "a fill is not broadcast"
    );
    b.get("x").await?;
    a.set("x", 6).await?;
    let dropped = wait_until(|| b.get_local("x").is_none(), BOUND).await;
    assert!(dropped.is_some());
    assert_eq!(b.get("x").await?.as_deref(), Some(&6));
    // A burst of writes is batched into few messages.
    let before = ea.bus_stats().map(|s| s.sent_messages).unwrap_or(0);
    let mut writes = Vec::new();
    for i in 0..500u64 {
        let a = a.clone();
        writes.push(tokio::spawn(
            async move { a.set(&format!("burst{i}"), i).await },
        ));
    }
    for w in writes {
        w.await??;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let messages = ea.bus_stats().map(|s| s.sent_messages).unwrap_or(0) - before;
    assert!(messages < 250, "500 writes became {messages} messages");
    eprintln!("burst: 500 writes became {messages} messages");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscription_is_noticed_and_nothing_stale_is_served() -> TestResult {
    let server = cache_testkit::RedisServer::start()?;
    let prefix = "kill";
    let build = || async {
        cache_tiered::builder(prefix)
            .with_redis_url(server.url())
            .with_bus_config(BusConfig::default().with_heartbeat(Duration::from_millis(200)))
            .build()
            .await
    };
    let ea = build().await?;
    let eb = build().await?;
    let a = cache(&ea)?;
    let b = cache(&eb)?;
    let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
    for k in &keys {
        a.set(k, 0).await?;
    }
    let got = b.get_many(&keys).await?;
    assert!(got.iter().all(|v| v.as_deref() == Some(&0)));
    let losses_before = eb.bus_stats().map(|s| s.losses).unwrap_or(0);

    // Kill every pub/sub connection while A writes the new values.
    let writer = {
        let (a, keys) = (a.clone(), keys.clone());
        tokio::spawn(async move {
            for k in &keys {
                a.set(k, 1).await?;
            }
            Ok::<_, cache_tiered::Error>(())
        })
    };
    server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"])?;
    writer.await??;
    let noticed = wait_until(
        || eb.bus_stats().map(|s| s.losses).unwrap_or(0) > losses_before,
        Duration::from_secs(5),
    )
    .await;
    assert!(noticed.is_some(), "B did not notice the lost subscription");
    let mut stale = 0;
    for k in &keys {
        if b.get(k).await?.as_deref() != Some(&1) {
            stale += 1;
        }
    }
    assert_eq!(stale, 0, "stale values served after the loss was noticed");
    // And the bus works again afterwards.
    let reconnected = wait_until(
        || eb.bus_stats().map(|s| s.reconnects).unwrap_or(0) > 0,
        Duration::from_secs(5),
    )
    .await;
    assert!(reconnected.is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.get("k1").await?;
    a.set("k1", 2).await?;
    assert!(wait_until(|| b.get_local("k1").is_none(), BOUND)
        .await
        .is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_message_is_detected_by_sequence_or_heartbeat() -> TestResult {
    let store = Arc::new(MemoryStore::new());
    let bus = MemoryBus::new();
    let a_transport = bus.attach();
    let config = BusConfig::default().with_heartbeat(Duration::from_millis(50));
    let ea = cache_tiered::builder("lost")
        .with_remote(store.clone())
        .with_bus_transport(a_transport.clone())
        .with_bus_config(config)
        .build()
        .await?;
    let eb = cache_tiered::builder("lost")
        .with_remote(store.clone())
        .with_bus_transport(bus.attach())
        .with_bus_config(config)
        .build()
        .await?;
    let a = cache(&ea)?;
    let b = cache(&eb)?;
    a.set("k", 1).await?;
    tokio::time::sleep(Duration::from_millis(120)).await; // B hears A's heartbeats
    b.get("k").await?;
    assert!(b.get_local("k").is_some());
    // The next message from A is lost: B must find out from A's next heartbeat.
    let before = eb.bus_stats().map(|s| s.losses).unwrap_or(0);
    a_transport.drop_next(1);
    a.set("k", 2).await?;
    let noticed = wait_until(
        || eb.bus_stats().map(|s| s.losses).unwrap_or(0) > before,
        Duration::from_secs(2),
    )
    .await;
    assert!(noticed.is_some(), "the lost message went unnoticed");
    assert_eq!(b.get("k").await?.as_deref(), Some(&2));
    assert!(bus.dropped() >= 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_drops_l1_on_a_write_from_redis_cli() -> TestResult {
    let server = shared_redis()?;
    let prefix = format!("trk{}", std::process::id());
    let engine = cache_tiered::builder(&prefix)
        .with_redis_url(server.url())
        .with_tracking(true)
        .build()
        .await?;
    let c: Cache<String, cache_tiered::Json> = engine
        .cache("docs")
        .with_raw(true)
        .with_l1_ttl(Duration::from_secs(300))
        .build()?;
    c.set("readme", "v1".to_string()).await?;
    tokio::time::sleep(Duration::from_millis(300)).await; // our own write's invalidation
    c.get("readme").await?;
    assert!(c.get_local("readme").is_some());
    // Another client (another language, an operator) writes the key directly.
    server.cli(&["SET", &c.full_key("readme")?, "\"v2\""])?;
    let dropped = wait_until(|| c.get_local("readme").is_none(), BOUND).await;
    assert!(dropped.is_some(), "tracking did not drop the L1 copy");
    assert_eq!(
        c.get("readme").await?.as_deref().map(String::as_str),
        Some("v2")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_namespace_reaches_every_instance_and_l2() -> TestResult {
    let prefix = format!("clr{}", std::process::id());
    let ea = redis_engine(&prefix).await?;
    let a = cache(&ea)?;
    let b = cache(&redis_engine(&prefix).await?)?;
    let other_ns = ea.cache::<u64, MsgPack>("other").build()?;
    for i in 0..50u64 {
        a.set(&i.to_string(), i).await?;
    }
    other_ns.set("keep", 7).await?;
    tokio::time::sleep(Duration::from_millis(100)).await; // A's own invalidations pass first
    let keys: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    b.get_many(&keys).await?;
    assert!(b.get_local("3").is_some());
    let deleted = a.clear_namespace().await?;
    assert_eq!(deleted, 50);
    assert!(wait_until(|| b.get_local("3").is_none(), BOUND)
        .await
        .is_some());
    assert_eq!(b.get("3").await?, None);
    assert_eq!(
        other_ns.get("keep").await?.as_deref(),
        Some(&7),
        "other namespaces untouched"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_invalidation_reaches_every_instance() -> TestResult {
    let prefix = format!("tag{}", std::process::id());
    let a = cache(&redis_engine(&prefix).await?)?;
    let b = cache(&redis_engine(&prefix).await?)?;
    a.set_with_tags("1", 1, &["red"]).await?;
    a.set_with_tags("2", 2, &["red"]).await?;
    a.set_with_tags("3", 3, &["blue"]).await?;
    // Let A's own write invalidations reach B before B caches the values.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let keys = ["1", "2", "3"];
    b.get_many(&keys).await?;
    assert!(b.get_local("1").is_some() && b.get_local("3").is_some());
    assert_eq!(a.invalidate_tag("red").await?, 2);
    assert!(wait_until(
        || b.get_local("1").is_none() && b.get_local("2").is_none(),
        BOUND
    )
    .await
    .is_some());
    assert!(b.get_local("3").is_some(), "other tags untouched");
    assert_eq!(b.get("1").await?, None);
    Ok(())
}

/// An instance that drops its copy on an invalidation and reads L2 at once must not find the
/// old value there: the message goes out only after L2 deleted the key. A slow L2 (every call
/// takes 150 ms) widens the window in which the old order (announce, then delete) failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_goes_out_after_l2_dropped_the_key() -> TestResult {
    let store = Arc::new(MemoryStore::new());
    let bus = MemoryBus::new();
    let ea = cache_tiered::builder("order")
        .with_remote(store.clone())
        .with_bus_transport(bus.attach())
        .build()
        .await?;
    let eb = cache_tiered::builder("order")
        .with_remote(store.clone())
        .with_bus_transport(bus.attach())
        .build()
        .await?;
    let a = cache(&ea)?;
    let b = cache(&eb)?;
    a.set("k", 1).await?;
    tokio::time::sleep(Duration::from_millis(120)).await; // A's own message has reached B
    assert_eq!(b.get("k").await?.as_deref(), Some(&1));
    assert!(b.get_local("k").is_some());

    store.set_latency(Duration::from_millis(150));
    let a2 = a.clone();
    let started = Instant::now();
    let invalidation = tokio::spawn(async move { a2.invalidate("k").await });
    let dropped = wait_until(|| b.get_local("k").is_none(), Duration::from_secs(5)).await;
    assert!(dropped.is_some(), "B never dropped its copy");
    let heard_after = started.elapsed();
    store.set_latency(Duration::ZERO);
    // B reads through at once: L2 must no longer hold the old value.
    assert_eq!(
        b.get("k").await?,
        None,
        "B found the old value in L2 after hearing the invalidation ({heard_after:?} after it began)"
    );
    assert!(b.get_local("k").is_none());
    invalidation.await??;
    assert!(
        heard_after >= Duration::from_millis(140),
        "B heard of it {heard_after:?} after the call began, before L2's delete could finish"
    );
    Ok(())
}

/// An engine on `server` with a 200 ms heartbeat and this reconnect policy.
async fn policy_engine(
    server: &cache_testkit::RedisServer,
    prefix: &str,
    policy: ReconnectPolicy,
) -> Result<Engine, cache_tiered::Error> {
    cache_tiered::builder(prefix)
        .with_redis_url(server.url())
        .with_bus_config(
            BusConfig::default()
                .with_heartbeat(Duration::from_millis(200))
                .with_on_loss(policy),
        )
        .build()
        .await
}

/// Break every pub/sub connection of `server` and keep them from coming back (no channel is
/// allowed: SUBSCRIBE and PUBLISH are refused) until [`allow_pubsub`].
fn break_pubsub(server: &cache_testkit::RedisServer) -> TestResult {
    server.cli(&["ACL", "SETUSER", "default", "resetchannels"])?;
    server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"])?;
    Ok(())
}

fn allow_pubsub(server: &cache_testkit::RedisServer) -> TestResult {
    server.cli(&["ACL", "SETUSER", "default", "allchannels"])?;
    Ok(())
}

fn losses(e: &Engine) -> u64 {
    e.bus_stats().map_or(0, |s| s.losses)
}

fn reconnects(e: &Engine) -> u64 {
    e.bus_stats().map_or(0, |s| s.reconnects)
}

/// Issue 16, `ReconnectPolicy::Keep` on a real Redis: while the subscription is broken, an
/// engine keeps serving its L1 (a write it missed included); one whose bound passes while
/// still deaf flushes then, one with a longer bound flushes when the subscription is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_serves_through_a_broken_subscription_within_its_bound() -> TestResult {
    let server = cache_testkit::RedisServer::start()?;
    let prefix = "keep";
    let ea = policy_engine(&server, prefix, ReconnectPolicy::Flush).await?;
    let eb = policy_engine(
        &server,
        prefix,
        ReconnectPolicy::keep(Duration::from_secs(60)),
    )
    .await?;
    let ec = policy_engine(
        &server,
        prefix,
        ReconnectPolicy::keep(Duration::from_millis(300)),
    )
    .await?;
    let (a, b, c) = (cache(&ea)?, cache(&eb)?, cache(&ec)?);
    a.set("k", 1).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for x in [&b, &c] {
        assert_eq!(x.get("k").await?.as_deref(), Some(&1));
        assert_eq!(x.get_local("k"), Some(Some(Arc::new(1))));
    }

    break_pubsub(&server)?;
    let noticed = wait_until(
        || losses(&eb) > 0 && losses(&ec) > 0,
        Duration::from_secs(5),
    )
    .await;
    assert!(noticed.is_some(), "the broken subscription went unnoticed");
    assert_eq!(
        b.get_local("k"),
        Some(Some(Arc::new(1))),
        "B did not keep its L1"
    );
    a.set("k", 2).await?; // nobody hears of it: PUBLISH is refused too
                          // C's bound passes while it is still deaf: flushed then, not at the reconnect.
    let c_flushed = wait_until(|| c.get_local("k").is_none(), Duration::from_secs(5)).await;
    assert!(c_flushed.is_some(), "C served its copy past max_staleness");
    assert_eq!(
        reconnects(&ec),
        0,
        "C reconnected: the test did not keep it deaf"
    );
    assert_eq!(c.get("k").await?.as_deref(), Some(&2));
    // B's bound (60 s) has not passed: it still serves its copy, stale within the bound.
    assert_eq!(b.get_local("k"), Some(Some(Arc::new(1))));

    allow_pubsub(&server)?;
    let back = wait_until(|| reconnects(&eb) > 0, Duration::from_secs(10)).await;
    assert!(back.is_some(), "B never resubscribed");
    assert_eq!(b.get_local("k"), None, "B kept its L1 past the reconnect");
    assert_eq!(b.get("k").await?.as_deref(), Some(&2));
    // The bus works again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.get("k").await?.as_deref(), Some(&2));
    a.set("k", 3).await?;
    assert!(wait_until(|| b.get_local("k").is_none(), BOUND)
        .await
        .is_some());
    Ok(())
}

/// Issue 16, `ReconnectPolicy::Reload` on a real Redis: after the subscription is back, the
/// namespace's recently read keys are in L1 again, with their current values (a write missed
/// while deaf included), without a request. Needs the reload hook registered by
/// `CacheBuilder::build` (`cache/reload.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_warms_l1_again_after_a_broken_subscription() -> TestResult {
    let server = cache_testkit::RedisServer::start()?;
    let prefix = "reload";
    let ea = policy_engine(&server, prefix, ReconnectPolicy::Flush).await?;
    let eb = policy_engine(&server, prefix, ReconnectPolicy::reload(100)).await?;
    let (a, b) = (cache(&ea)?, cache(&eb)?);
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        a.set(k, i as u64).await?;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got = b.get_many(&keys).await?;
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, v)| v.as_deref() == Some(&(i as u64))));

    break_pubsub(&server)?;
    let noticed = wait_until(|| losses(&eb) > 0, Duration::from_secs(5)).await;
    assert!(noticed.is_some(), "the broken subscription went unnoticed");
    a.set("k3", 33).await?; // B does not hear of it
    allow_pubsub(&server)?;
    let back = wait_until(|| reconnects(&eb) > 0, Duration::from_secs(10)).await;
    assert!(back.is_some(), "B never resubscribed");
    let want = |i: usize| if i == 3 { 33 } else { i as u64 };
    let warm = wait_until(
        || {
            keys.iter()
                .enumerate()
                .all(|(i, k)| b.get_local(k) == Some(Some(Arc::new(want(i)))))
        },
        Duration::from_secs(5),
    )
    .await;
    assert!(
        warm.is_some(),
        "B's L1 was not reloaded after the reconnect"
    );
    assert_eq!(b.stats().loads, 0, "a reload ran a loader");
    Ok(())
}
