//! Write-behind in memory mode: nothing lost on a graceful stop, per-key order, retries,
//! and both queue-full policies.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use cache_core::ErrorKind;
use cache_core::MemoryStore;
use cache_writebehind::{Batch, BatchWriter, BoxError, QueuePolicy, WriteBehind};
use common::{cache, engine, engine_on, unique_prefix, Source, TestResult};
use tokio::sync::{mpsc, watch};

/// 8 tasks × 125 keys × 10 versions = 10,000 writes (each task owns its keys, so each key's
/// versions are written in order), then a graceful shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_writes_then_shutdown_lose_nothing_and_keep_order() -> TestResult {
    let (engine, _l2) = engine(&unique_prefix("ten_thousand"))?;
    let c = cache(&engine)?;
    let source = Source::default();
    // 1 ms per batch call: a database round trip, so writes pile up in the queue.
    let wb = WriteBehind::builder(c.clone(), source.writer(Duration::from_millis(1)))
        .with_max_batch(256)
        .with_max_age(Duration::from_millis(20))
        .build()
        .await?;

    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let wb = wb.clone();
        tasks.push(tokio::spawn(async move {
            for version in 0..10u64 {
                for j in 0..125u64 {
                    wb.write_behind(&format!("k{t}-{j}"), version * 1000 + j)
                        .await?;
                }
            }
            Ok::<(), cache_core::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    assert_eq!(wb.stats().accepted, 10_000);
    wb.shutdown().await?;

    assert_eq!(wb.depth().await?, 0);
    assert_eq!(source.keys(), 1000, "every key reached the source");
    for t in 0..8u64 {
        for j in 0..125u64 {
            let key = format!("k{t}-{j}");
            assert_eq!(
                source.latest(&key),
                Some(9000 + j),
                "{key} has its newest value"
            );
            assert_eq!(c.get_local(&key), Some(Some(Arc::new(9000 + j))));
        }
    }
    source.assert_ordered();
    let stats = wb.stats();
    assert_eq!(stats.written + stats.coalesced, 10_000, "{stats:?}");
    assert_eq!(stats.failures, 0);

    // Closed after shutdown: refused, not silently dropped.
    let err = wb.write_behind("late", 1).await.err().map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Closed));
    // A second shutdown is fine.
    wb.shutdown().await?;
    Ok(())
}

/// Every other writer call fails; retries with back-off still leave every key with its
/// newest value, written in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_failing_half_its_calls_still_ends_with_the_newest_values() -> TestResult {
    let (engine, _l2) = engine(&unique_prefix("half_failing"))?;
    let c = cache(&engine)?;
    let source = Source::default();
    let s = source.clone();
    let writer = move |batch: Batch<u64>| {
        let s = s.clone();
        async move {
            if s.call() % 2 == 1 {
                return Err::<(), BoxError>("injected failure".into());
            }
            s.record(&batch);
            Ok(())
        }
    };
    let wb = WriteBehind::builder(c, writer)
        .with_max_batch(32)
        .with_max_age(Duration::from_millis(2))
        .with_retry(Duration::from_millis(1), Duration::from_millis(8))
        .build()
        .await?;

    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let wb = wb.clone();
        tasks.push(tokio::spawn(async move {
            for version in 0..20u64 {
                for j in 0..50u64 {
                    wb.write_behind(&format!("k{t}-{j}"), version * 100 + j)
                        .await?;
                }
                tokio::task::yield_now().await;
            }
            Ok::<(), cache_core::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    wb.flush().await?;
    for t in 0..4u64 {
        for j in 0..50u64 {
            assert_eq!(source.latest(&format!("k{t}-{j}")), Some(1900 + j));
        }
    }
    source.assert_ordered();
    let stats = wb.stats();
    assert!(stats.failures > 0, "{stats:?}");
    assert_eq!(
        stats.failures, stats.batches,
        "every other call failed: {stats:?}"
    );
    wb.shutdown().await?;
    Ok(())
}

/// A writer that blocks until the gate opens, reporting each call.
#[allow(clippy::type_complexity)]
fn gated(
    source: &Source,
) -> (
    impl Fn(Batch<u64>) -> futures::future::BoxFuture<'static, Result<(), BoxError>>
        + Send
        + Sync
        + 'static,
    watch::Sender<bool>,
    mpsc::UnboundedReceiver<usize>,
) {
    let (open_tx, open_rx) = watch::channel(false);
    let (started_tx, started_rx) = mpsc::unbounded_channel();
    let source = source.clone();
    let writer = move |batch: Batch<u64>| {
        let source = source.clone();
        let mut open = open_rx.clone();
        let started = started_tx.clone();
        Box::pin(async move {
            let _ = started.send(batch.len());
            open.wait_for(|o| *o).await?;
            source.record(&batch);
            Ok(())
        }) as futures::future::BoxFuture<'static, Result<(), BoxError>>
    };
    (writer, open_tx, started_rx)
}

/// Fill a queue of capacity 4 while the writer is stuck on a batch of 2.
async fn fill(
    policy: QueuePolicy,
) -> Result<
    (
        WriteBehind<u64, cache_codec::MsgPack>,
        Source,
        watch::Sender<bool>,
    ),
    Box<dyn std::error::Error + Send + Sync>,
> {
    let (engine, _l2) = engine(&unique_prefix("full"))?;
    let source = Source::default();
    let (writer, open, mut started) = gated(&source);
    let wb = WriteBehind::builder(cache(&engine)?, writer)
        .with_capacity(4)
        .with_max_batch(2)
        .with_max_age(Duration::from_secs(3600))
        .with_policy(policy)
        .build()
        .await?;
    // Two keys make a full batch: the flusher takes them and blocks in the writer.
    wb.write_behind("a", 1).await?;
    wb.write_behind("b", 1).await?;
    assert_eq!(started.recv().await, Some(2));
    // Four more fill the queue.
    for k in ["c", "d", "e", "f"] {
        wb.write_behind(k, 1).await?;
    }
    assert_eq!(wb.depth().await?, 6);
    Ok((wb, source, open))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_policy_refuses_when_full_and_changes_nothing() -> TestResult {
    let (wb, source, open) = fill(QueuePolicy::Reject).await?;
    let err = wb.write_behind("g", 7).await.err().map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::QueueFull));
    // Refused means refused: the cache did not change either.
    assert_eq!(wb.cache().get_local("g"), None);
    // A key already waiting takes the new value without needing room.
    wb.write_behind("c", 2).await?;
    let stats = wb.stats();
    assert_eq!((stats.rejected, stats.coalesced), (1, 1));

    open.send_replace(true);
    wb.flush().await?;
    assert_eq!(source.latest("c"), Some(2));
    assert_eq!(source.latest("g"), None);
    assert_eq!(source.keys(), 6);
    // Room again.
    wb.write_behind("g", 7).await?;
    wb.shutdown().await?;
    assert_eq!(source.latest("g"), Some(7));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_policy_waits_for_room_then_proceeds() -> TestResult {
    let (wb, source, open) = fill(QueuePolicy::Backpressure).await?;
    let waiting = {
        let wb = wb.clone();
        tokio::spawn(async move { wb.write_behind("g", 7).await })
    };
    // The writer is stuck, so no room can appear: the write is still waiting.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished());
    assert_eq!(wb.cache().get_local("g"), None);
    // A key already waiting does not wait.
    wb.write_behind("c", 2).await?;

    open.send_replace(true);
    waiting.await??;
    wb.shutdown().await?;
    assert_eq!(source.latest("g"), Some(7));
    assert_eq!(source.latest("c"), Some(2));
    assert_eq!(source.keys(), 7);
    assert_eq!(wb.stats().rejected, 0);
    Ok(())
}

#[tokio::test]
async fn the_cache_has_the_value_at_once_and_flush_writes_without_waiting_for_age() -> TestResult {
    let (engine, _l2) = engine(&unique_prefix("flush"))?;
    let c = cache(&engine)?;
    let source = Source::default();
    let wb = WriteBehind::builder(c.clone(), source.writer(Duration::ZERO))
        .with_max_age(Duration::from_secs(3600))
        .build()
        .await?;
    wb.write_behind("a", 1).await?;
    assert_eq!(c.get("a").await?, Some(Arc::new(1)));
    assert_eq!(
        source.latest("a"),
        None,
        "not written before its age or a flush"
    );
    assert_eq!(wb.depth().await?, 1);
    wb.flush().await?;
    assert_eq!(source.latest("a"), Some(1));
    // Nothing pending: flush returns at once.
    wb.flush().await?;
    assert_eq!(source.calls(), 1);
    wb.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn invalid_keys_are_refused_before_anything_is_queued() -> TestResult {
    let (engine, _l2) = engine(&unique_prefix("bad_key"))?;
    let source = Source::default();
    let wb = WriteBehind::builder(cache(&engine)?, source.writer(Duration::ZERO))
        .build()
        .await?;
    let err = wb.write_behind("", 1).await.err().map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::InvalidKey));
    assert_eq!(wb.depth().await?, 0);
    wb.shutdown().await?;
    Ok(())
}

/// The cache refuses the value (too large for L2, so L1 keeps the old one): the write is
/// still queued (the source is the truth), and once it is written the key is invalidated so
/// no tier keeps the older value.
#[tokio::test]
async fn a_failed_cache_update_still_reaches_the_source_and_is_repaired() -> TestResult {
    let (engine, _l2) = engine_on(
        &unique_prefix("repair"),
        MemoryStore::with_max_value_size(4),
    )?;
    let c = cache(&engine)?;
    // An old value in L1 (the L2 fill is skipped as oversize, L1 is filled).
    let old = c
        .get_or_load("a", |_| async { Ok::<u64, std::io::Error>(1) })
        .await?;
    assert_eq!(*old, 1);
    let source = Source::default();
    let wb = WriteBehind::builder(c.clone(), source.writer(Duration::ZERO))
        .with_max_age(Duration::from_secs(3600))
        .build()
        .await?;
    wb.write_behind("a", 2).await?;
    assert_eq!(wb.stats().cache_errors, 1);
    assert_eq!(
        c.get_local("a"),
        Some(Some(Arc::new(1))),
        "stale until written"
    );
    wb.flush().await?;
    assert_eq!(source.latest("a"), Some(2));
    // The repair runs right after the batch.
    for _ in 0..200 {
        if wb.stats().repairs == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(wb.stats().repairs, 1);
    assert_eq!(
        c.get_local("a"),
        None,
        "the old value is dropped once the source has the new one"
    );
    wb.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn dropping_without_shutdown_still_drains_in_the_background() -> TestResult {
    let (engine, _l2) = engine(&unique_prefix("drop"))?;
    let source = Source::default();
    let wb = WriteBehind::builder(cache(&engine)?, source.writer(Duration::ZERO))
        .with_max_age(Duration::from_secs(3600))
        .build()
        .await?;
    for i in 0..10 {
        wb.write_behind(&format!("k{i}"), i).await?;
    }
    drop(wb);
    for _ in 0..400 {
        if source.keys() == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(source.keys(), 10);
    Ok(())
}

/// A writer type of the user's own (not a closure).
struct Recorder(Source);

#[async_trait::async_trait]
impl BatchWriter<u64> for Recorder {
    async fn write_batch(&self, batch: Batch<u64>) -> Result<(), BoxError> {
        self.0.record(&batch);
        Ok(())
    }
}

#[tokio::test]
async fn a_writer_type_of_your_own_and_a_panicking_writer() -> TestResult {
    let (e, _l2) = engine(&unique_prefix("own_writer"))?;
    let source = Source::default();
    let wb = WriteBehind::builder(cache(&e)?, Recorder(source.clone()))
        .build()
        .await?;
    wb.write_behind("a", 1).await?;
    wb.shutdown().await?;
    assert_eq!(source.latest("a"), Some(1));

    // A writer that panics on its first call is retried like one that fails.
    let s = source.clone();
    let writer = move |batch: Batch<u64>| {
        let s = s.clone();
        async move {
            if s.call() == 1 {
                panic!("writer bug");
            }
            s.record(&batch);
            Ok::<(), BoxError>(())
        }
    };
    let (e, _l2) = engine(&unique_prefix("panicking"))?;
    let wb = WriteBehind::builder(cache(&e)?, writer)
        .with_retry(Duration::from_millis(1), Duration::from_millis(2))
        .build()
        .await?;
    wb.write_behind("b", 2).await?;
    wb.shutdown().await?;
    assert_eq!(source.latest("b"), Some(2));
    assert_eq!(wb.stats().failures, 1);
    Ok(())
}
