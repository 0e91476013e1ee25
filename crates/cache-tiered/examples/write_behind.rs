//! Write-behind (feature `write-behind`): the cache takes each write at once (L1, L2, the
//! other instances' L1 invalidated), and the writes reach the source of truth later, in
//! batches, with writes to the same key coalesced.
//!
//! `REDIS_URL=redis://127.0.0.1:6379/ cargo run -p cache-tiered --features write-behind
//! --example write_behind`; without `REDIS_URL` it runs on the in-process L2.
//!
//! Use it when the source is slower than your write rate and can take a multi-row upsert;
//! keep write-through (`Cache::write`) when a write must be in the database before you answer.
//! The queue lives in memory here: what it holds is lost if the process dies before
//! `shutdown()` (the durable mode keeps it in a Redis Stream; see the crate's docs).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_tiered::cache_writebehind::{Batch, WriteBehind};
use cache_tiered::{Cache, MsgPack};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Counter {
    page: String,
    views: u64,
}

/// Stands in for the database table.
type Table = Arc<Mutex<HashMap<String, Counter>>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let builder = cache_tiered::builder("example-writebehind");
    let builder = match std::env::var("REDIS_URL") {
        Ok(url) => builder.with_redis_url(url),
        Err(_) => builder.with_memory_l2(),
    };
    let engine = builder.build().await?;
    let counters: Cache<Counter, MsgPack> = engine
        .cache("page-views")
        .with_l1_ttl(Duration::from_secs(30))
        .with_l2_ttl(Duration::from_secs(300))
        .build()?;
    counters.clear_namespace().await?;

    // The batch writer: one call per batch, like a multi-row upsert. It must be idempotent
    // (a failed batch is retried whole).
    let table: Table = Arc::default();
    let batches = Arc::new(AtomicU64::new(0));
    let (sink, calls) = (table.clone(), batches.clone());
    let writer = move |batch: Batch<Counter>| {
        let (sink, calls) = (sink.clone(), calls.clone());
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await; // the round trip
            let mut rows = sink.lock().map_err(|_| "poisoned")?;
            for (key, value) in batch {
                rows.insert(key, (*value).clone());
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        }
    };
    let wb = WriteBehind::builder(counters.clone(), writer)
        .with_max_batch(100) // a batch is written when it holds 100 keys ...
        .with_max_age(Duration::from_millis(20)) // ... or its oldest write is 20 ms old
        .build()
        .await?;

    // 1,000 page views over 10 pages: each view is a write of the page's new count.
    let mut views: HashMap<String, u64> = HashMap::new();
    for i in 0..1000u64 {
        let page = format!("/page/{}", i % 10);
        let n = views.entry(page.clone()).or_default();
        *n += 1;
        let value = Counter {
            page: page.clone(),
            views: *n,
        };
        wb.write_behind(&page, value).await?;
    }

    // Readers see the newest value at once, from the cache.
    let now = counters.get("/page/3").await?;
    assert_eq!(now.map(|c| c.views), Some(100));

    // shutdown() stops accepting writes and waits until everything queued is written.
    wb.shutdown().await?;
    let rows = table.lock().map_err(|_| "poisoned")?;
    assert_eq!(rows.len(), 10);
    assert!(rows.values().all(|c| c.views == 100));
    let stats = wb.stats();
    eprintln!(
        "write_behind: 1000 writes -> {} batch writer calls, {} rows written ({} writes coalesced)",
        batches.load(Ordering::SeqCst),
        stats.written,
        stats.coalesced
    );
    Ok(())
}
