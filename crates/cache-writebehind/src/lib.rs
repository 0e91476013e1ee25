//! # cache-writebehind
//!
//! Write-behind for a tiercache [`Cache`]: [`WriteBehind::write_behind`] updates the cache
//! (L1 and L2) at once and queues the write to the source of truth; a background flusher
//! hands the queued writes, in batches, to your [`BatchWriter`] (a multi-row upsert, say).
//!
//! - **Batching**: a batch is written when it holds `max_batch` entries, when its oldest
//!   entry is `max_age` old, or at once on [`WriteBehind::flush`] / [`WriteBehind::shutdown`].
//! - **Coalescing, per-key order**: a write to a key that is still waiting replaces the
//!   waiting value in place (the newest value wins, the key keeps its place in the queue);
//!   a write to a key whose previous value is being written right now waits behind it.
//!   Batches are written one after the other, so the source sees each key's values in the
//!   order they were accepted.
//! - **Bounded, nothing dropped**: the queue holds at most `capacity` keys; when it is full a
//!   write waits for room ([`QueuePolicy::Backpressure`], the default) or is refused with
//!   [`ErrorKind::QueueFull`] ([`QueuePolicy::Reject`]). A failing writer is retried with
//!   capped exponential back-off, forever: a queued write is never given up.
//! - **Durable mode** (feature `redis`, `WriteBehindBuilder::with_redis`): the queue is a
//!   Redis Stream; a write is acknowledged only once it is in the stream, so a crash of the
//!   process loses nothing acknowledged: another instance (or the restarted one) takes the
//!   entries over.
//! - **No old value left cached**: when the cache update after a queued write fails or is
//!   abandoned, or (durable mode) when it is unknown whether the write reached the stream,
//!   the key is invalidated once the write is in the source.
//!
//! `docs/write-patterns.md` in the repository states what each mode guarantees and what it
//! does not.
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::{Arc, Mutex};
//! use cache_core::{Engine, MemoryStore};
//! use cache_codec::MsgPack;
//! use cache_l1::QuickL1;
//! use cache_writebehind::{Batch, WriteBehind};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let engine = Engine::builder("app")
//!     .with_l1(Arc::new(QuickL1::with_capacity_bytes(16 << 20)))
//!     .with_l2(Arc::new(MemoryStore::new()))
//!     .build()?;
//! let users = engine.cache::<String, MsgPack>("user").build()?;
//!
//! // The source of truth: here a map; in real life a database.
//! let db: Arc<Mutex<HashMap<String, String>>> = Arc::default();
//! let sink = db.clone();
//! let writer = move |batch: Batch<String>| {
//!     let sink = sink.clone();
//!     async move {
//!         let mut db = sink.lock().map_err(|_| "poisoned")?;
//!         for (key, value) in batch {
//!             db.insert(key, (*value).clone());
//!         }
//!         Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
//!     }
//! };
//! let wb = WriteBehind::builder(users.clone(), writer).build().await?;
//!
//! wb.write_behind("42", "Ada".to_owned()).await?;
//! // The cache has it at once; the source soon.
//! assert_eq!(users.get("42").await?.as_deref().map(String::as_str), Some("Ada"));
//! wb.shutdown().await?; // drains the queue
//! assert_eq!(db.lock().map_err(|_| "poisoned")?.get("42").map(String::as_str), Some("Ada"));
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod builder;
mod config;
#[cfg(feature = "redis")]
mod durable;
mod handle;
mod memory;
mod repair;
mod writer;

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cache_core::{Cache, Codec, Error, ErrorKind};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::task::JoinHandle;

pub use builder::WriteBehindBuilder;
pub use config::{QueuePolicy, WriteBehindConfig};
pub use handle::WriteBehind;
pub use writer::{Batch, BatchWriter, BoxError};

/// The name of the queue-depth gauge this crate reports to the cache's observer
/// ([`cache_core::CacheEvent::Gauge`]); `cache-metrics` publishes it as
/// `cache_write_behind_queue_depth`.
pub const DEPTH_GAUGE: &str = "write_behind_queue_depth";

/// Stripes of the per-key lock that keeps the cache update and the enqueue of one key in
/// the same order.
const STRIPES: usize = 128;

/// Counters of a write-behind queue (this instance only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteBehindStats {
    /// Writes accepted (queued, or in durable mode added to the stream).
    pub accepted: u64,
    /// Accepted writes that replaced a value still waiting for the same key (memory mode).
    pub coalesced: u64,
    /// Writes refused because the queue was full ([`QueuePolicy::Reject`]).
    pub rejected: u64,
    /// Batch writer calls that succeeded.
    pub batches: u64,
    /// Entries in the batches that succeeded.
    pub written: u64,
    /// Batch writer calls that failed (each is retried).
    pub failures: u64,
    /// Cache updates that failed after the write was queued (the key is invalidated once the
    /// source has the value).
    pub cache_errors: u64,
    /// Keys invalidated after their write reached the source, to repair a cache update that
    /// failed or was abandoned, or (durable mode) one that never ran because the `XADD`'s
    /// outcome was unknown.
    pub repairs: u64,
    /// Durable mode: stream entries that could not be decoded, moved to the dead-letter
    /// stream `{stream}:dead` instead of being written.
    pub dead_lettered: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    coalesced: AtomicU64,
    rejected: AtomicU64,
    batches: AtomicU64,
    written: AtomicU64,
    failures: AtomicU64,
    cache_errors: AtomicU64,
    repairs: AtomicU64,
    dead_lettered: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Where the queue lives.
// One per write-behind, built once and never moved on a hot path: the variants' sizes do
// not matter.
#[allow(clippy::large_enum_variant)]
enum Queue<V> {
    Memory(memory::MemoryQueue<V>),
    #[cfg(feature = "redis")]
    Durable(durable::DurableQueue),
}

/// Everything the handles and the flusher share.
struct Shared<V, C> {
    cache: Cache<V, C>,
    /// The cache's namespace, for logs.
    name: String,
    writer: Arc<dyn BatchWriter<V>>,
    config: WriteBehindConfig,
    stripes: Box<[tokio::sync::Mutex<()>]>,
    hasher: RandomState,
    queue: Queue<V>,
    stats: Counters,
    /// `shutdown` finished.
    shut_down: AtomicBool,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl<V, C> Shared<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    fn new(
        cache: Cache<V, C>,
        writer: Arc<dyn BatchWriter<V>>,
        config: WriteBehindConfig,
        queue: Queue<V>,
    ) -> Arc<Self> {
        Arc::new(Shared {
            name: cache.name().to_owned(),
            cache,
            writer,
            config,
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: RandomState::new(),
            queue,
            stats: Counters::default(),
            shut_down: AtomicBool::new(false),
            task: Mutex::new(None),
        })
    }

    /// The in-memory queue, unless the queue is durable.
    fn memory(&self) -> Option<&memory::MemoryQueue<V>> {
        match &self.queue {
            Queue::Memory(q) => Some(q),
            #[cfg(feature = "redis")]
            Queue::Durable(_) => None,
        }
    }

    fn stripe(&self, key: &str) -> &tokio::sync::Mutex<()> {
        let i = (self.hasher.hash_one(key) as usize) % self.stripes.len();
        &self.stripes[i]
    }

    /// Drop a key from the cache after its value reached the source, because the cache
    /// update that went with the write failed, was abandoned or never ran (the cache may hold
    /// an older value).
    async fn repair(&self, key: &str) {
        add(&self.stats.repairs, 1);
        if let Err(e) = self.cache.invalidate(key).await {
            tracing::warn!(
                cache = %self.cache.name(),
                key,
                error = %e,
                "write-behind: invalidating a key after a failed cache update failed too"
            );
        }
    }

    fn stats(&self) -> WriteBehindStats {
        let c = &self.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WriteBehindStats {
            accepted: l(&c.accepted),
            coalesced: l(&c.coalesced),
            rejected: l(&c.rejected),
            batches: l(&c.batches),
            written: l(&c.written),
            failures: l(&c.failures),
            cache_errors: l(&c.cache_errors),
            repairs: l(&c.repairs),
            dead_lettered: l(&c.dead_lettered),
        }
    }

    fn lock_task(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        self.task.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn closed() -> Error {
    Error::new(
        ErrorKind::Closed,
        "write-behind queue is shut down: the write was not accepted",
    )
}

fn queue_full(capacity: usize) -> Error {
    Error::new(
        ErrorKind::QueueFull,
        format!("write-behind queue is full ({capacity} entries): the write was not accepted"),
    )
}
