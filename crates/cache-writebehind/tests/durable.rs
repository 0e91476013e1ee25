//! Durable write-behind (a Redis Stream): a SIGKILLed writer process loses no acknowledged
//! write, a full stream refuses, a failing writer still gets everything in order, and two
//! instances share one stream.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use cache_codec::MsgPack;
use cache_core::ErrorKind;
use cache_redis::{RedisConfig, RedisStore};
use cache_testkit::shared_redis;
use cache_writebehind::{Batch, BatchWriter, BoxError, QueuePolicy, WriteBehind};
use common::{cache, engine, unique_prefix, Source, TestResult};

/// Short enough for tests: a dead flusher's entries are taken over after half a second.
const CLAIM_IDLE: Duration = Duration::from_millis(500);

async fn store(url: &str) -> Result<RedisStore, cache_core::Error> {
    RedisStore::connect(RedisConfig::builder().url(url).build()?).await
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
