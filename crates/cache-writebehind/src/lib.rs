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

mod config;
#[cfg(feature = "redis")]
mod durable;
mod memory;
mod writer;

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cache_core::{Cache, Codec, Error, ErrorKind, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::task::JoinHandle;

pub use config::{QueuePolicy, WriteBehindConfig};
pub use writer::{Batch, BatchWriter, BoxError};

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

/// Write-behind in front of a source of truth, for one typed [`Cache`].
///
/// Build one with [`WriteBehind::builder`]. Cheap to clone; clones share the queue. Call
/// [`WriteBehind::shutdown`] before the process exits: it stops accepting writes and waits
/// until everything queued is written. Dropping the last handle without it logs a warning
/// with the number of pending writes; in memory mode the flusher then keeps draining in the
/// background (those writes are lost if the runtime or process stops first), in durable mode
/// the entries stay in the Redis Stream for another instance or the next start.
pub struct WriteBehind<V, C> {
    handle: Arc<Handle<V, C>>,
}

impl<V, C> Clone for WriteBehind<V, C> {
    fn clone(&self) -> Self {
        WriteBehind {
            handle: Arc::clone(&self.handle),
        }
    }
}

impl<V, C> fmt::Debug for WriteBehind<V, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.handle.shared;
        let mode = match &s.queue {
            Queue::Memory(_) => "memory",
            #[cfg(feature = "redis")]
            Queue::Durable(_) => "durable",
        };
        f.debug_struct("WriteBehind")
            .field("cache", &s.name)
            .field("mode", &mode)
            .field("config", &s.config)
            .finish()
    }
}

/// The user-facing owner: dropping the last one detaches the flusher.
struct Handle<V, C> {
    shared: Arc<Shared<V, C>>,
}

impl<V, C> Drop for Handle<V, C> {
    fn drop(&mut self) {
        let s = &self.shared;
        let finished = s.shut_down.load(Ordering::SeqCst);
        match &s.queue {
            Queue::Memory(q) => {
                let pending = q.detach();
                if !finished && pending > 0 {
                    tracing::warn!(
                        cache = %s.name,
                        pending,
                        "WriteBehind dropped without shutdown(): the pending writes are flushed \
                         in the background and lost if the process exits first"
                    );
                }
            }
            #[cfg(feature = "redis")]
            Queue::Durable(q) => {
                let unconfirmed = q.detach();
                if !finished {
                    tracing::warn!(
                        cache = %s.name,
                        stream = %q.stream(),
                        added_by_this_instance = unconfirmed,
                        "WriteBehind (durable) dropped without shutdown(): pending entries stay \
                         in the Redis Stream; another instance or the next start writes them"
                    );
                }
            }
        }
    }
}

impl<V, C> WriteBehind<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Start building a write-behind queue for `cache` whose batches go to `writer`.
    pub fn builder<W: BatchWriter<V>>(cache: Cache<V, C>, writer: W) -> WriteBehindBuilder<V, C> {
        WriteBehindBuilder {
            cache,
            writer: Arc::new(writer),
            config: WriteBehindConfig::default(),
            #[cfg(feature = "redis")]
            redis: None,
            #[cfg(feature = "redis")]
            instance_id: None,
        }
    }

    /// The cache this queue writes behind.
    pub fn cache(&self) -> &Cache<V, C> {
        &self.handle.shared.cache
    }

    /// The settings.
    pub fn config(&self) -> &WriteBehindConfig {
        &self.handle.shared.config
    }

    /// Whether the queue is durable (a Redis Stream).
    pub fn is_durable(&self) -> bool {
        !matches!(self.handle.shared.queue, Queue::Memory(_))
    }

    /// Counters of this instance.
    pub fn stats(&self) -> WriteBehindStats {
        self.handle.shared.stats()
    }

    /// Write `value` behind the cache: queue it for the source, then update the cache (L2,
    /// L1, invalidation of the other instances' L1) like [`Cache::set`].
    ///
    /// `Ok` is the acknowledgement: the write is queued (memory mode) or in the Redis Stream
    /// (durable mode) and will reach the source. Errors, with nothing queued and the cache
    /// unchanged:
    ///
    /// - [`ErrorKind::InvalidKey`]: the key is not a valid cache key;
    /// - [`ErrorKind::QueueFull`]: the queue is full and the policy is
    ///   [`QueuePolicy::Reject`];
    /// - [`ErrorKind::Closed`]: [`WriteBehind::shutdown`] was called;
    /// - durable mode: [`ErrorKind::Encode`], or an error reply from Redis
    ///   ([`ErrorKind::Remote`]).
    ///
    /// Durable mode, outcome unknown: after [`ErrorKind::Timeout`] or
    /// [`ErrorKind::Connection`] (Redis slow or the connection lost after the `XADD` was
    /// sent), or when this future is dropped while the `XADD` is in flight, the entry may be
    /// in the stream and reach the source although the cache was not updated. The key is then
    /// invalidated (L2, this L1, the other instances' L1 through the bus) once Redis answers
    /// again and no entry up to the stream's newest id at that moment is left unwritten; the
    /// cache does not keep the older value. Calling again is safe: the write is idempotent,
    /// and a later write of the key on this instance that updates the cache makes the
    /// invalidation unneeded (it is dropped). Limits: the repair lives in this process (lost
    /// if it crashes or the last handle is dropped without [`WriteBehind::shutdown`] first),
    /// the old value is served until it runs, and another instance's newer write of the
    /// same key may be invalidated with it (`docs/write-patterns.md`, "Unknown outcome").
    /// Checked by `a_timed_out_xadd_that_reached_redis_leaves_no_old_value_cached`,
    /// `a_write_dropped_during_its_xadd_leaves_no_old_value_cached` and
    /// `a_retry_that_updates_the_cache_cancels_the_repair` in `tests/durable.rs`.
    ///
    /// The source is the truth: if the cache update fails (value too large for L2, an L2
    /// error the engine could not queue for replay), the write stays queued and `Ok` is
    /// returned; the failure is logged and counted, and the key is invalidated once the source
    /// has the value, so the cache never keeps an older value for good. The same repair runs
    /// when the future is dropped after the write was queued but before the cache update
    /// finished (the write then reaches the source although the caller saw no `Ok`). Every
    /// repair due for writes made before a [`WriteBehind::flush`] has run when that flush
    /// returns `Ok` (durable mode: for this instance's writes; the other instances' L1 drop
    /// the key when the bus delivers the invalidation).
    ///
    /// Concurrent writes to the same key are serialized (the cache and the queue see them in
    /// the same order); with [`QueuePolicy::Backpressure`] this call waits while the queue is
    /// full.
    pub async fn write_behind(&self, key: &str, value: V) -> Result<()> {
        let s = &self.handle.shared;
        s.cache.full_key(key)?;
        let _order = s.stripe(key).lock().await;
        let cache_update = match &s.queue {
            Queue::Memory(q) => {
                let value = Arc::new(value);
                q.enqueue(s, key, value.clone()).await?;
                let guard = RepairGuard::new(s, key, Pending::Memory);
                let result = s.cache.set_shared(key, value).await;
                guard.finish(result.is_ok());
                result
            }
            #[cfg(feature = "redis")]
            Queue::Durable(q) => {
                // While an `XADD` is in flight the entry may or may not be in the stream: a
                // repair is asked for if this future is dropped meanwhile.
                let mut guard = RepairGuard::new(s, key, Pending::Unknown);
                let id = match q.add::<V, C>(s, key, &value, &guard.in_flight).await {
                    Ok(id) => id,
                    Err(e) => {
                        if e.maybe_added {
                            tracing::warn!(
                                cache = %s.name,
                                key,
                                error = %e.error,
                                "write-behind: unknown whether the write reached the stream; \
                                 the key is invalidated once the stream is written up to now"
                            );
                        } else {
                            guard.cancel();
                        }
                        return Err(e.error);
                    }
                };
                guard.set(Pending::Durable(id));
                let result = s.cache.set(key, value).await;
                guard.finish(result.is_ok());
                result
            }
        };
        if let Err(e) = cache_update {
            add(&s.stats.cache_errors, 1);
            tracing::warn!(
                cache = %s.name,
                key,
                error = %e,
                "write-behind: the cache update failed; the write stays queued and the key is \
                 invalidated once the source has it"
            );
        }
        Ok(())
    }

    /// Wait until every write accepted before this call is written to the source (in
    /// durable mode: every entry in the stream when the call started, from any instance,
    /// including any a timed-out or abandoned `XADD` of this instance added), and the keys
    /// those writes must repair are invalidated (see [`WriteBehind::write_behind`]). Batches
    /// that are not full are written at once rather than after `max_age`.
    ///
    /// Durable mode: fails with the Redis error when the stream cannot be read at the start
    /// and this instance has added nothing yet, or one of its `XADD`s has an unknown outcome
    /// (its bound must be read from the stream).
    ///
    /// While the writer keeps failing this keeps waiting (writes are never given up); wrap
    /// it in `tokio::time::timeout` to bound the wait. In durable mode a command Redis
    /// refuses (ACL rules, credentials: [`ErrorKind::Auth`]) ends the wait with that error,
    /// since no retry can succeed.
    pub async fn flush(&self) -> Result<()> {
        let s = &self.handle.shared;
        match &s.queue {
            Queue::Memory(q) => q.flush().await,
            #[cfg(feature = "redis")]
            Queue::Durable(q) => q.flush(s).await,
        }
    }

    /// Stop accepting writes ([`ErrorKind::Closed`] from then on), write everything queued,
    /// and stop the flusher (in durable mode: give up the flusher lease, so another instance
    /// takes over without waiting for `claim_idle`). Idempotent; every clone is shut down.
    ///
    /// Like [`WriteBehind::flush`] it waits as long as the writer keeps failing.
    pub async fn shutdown(&self) -> Result<()> {
        let s = &self.handle.shared;
        match &s.queue {
            Queue::Memory(q) => {
                q.close();
                q.flush().await?;
            }
            #[cfg(feature = "redis")]
            Queue::Durable(q) => {
                q.close();
                q.flush(s).await?;
                q.stop();
            }
        }
        let task = s.lock_task().take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                tracing::error!(cache = %s.cache.name(), error = %e, "write-behind flusher failed");
                return Err(Error::new(
                    ErrorKind::Closed,
                    format!("the write-behind flusher failed: {e}"),
                ));
            }
        }
        s.shut_down.store(true, Ordering::SeqCst);
        tracing::debug!(cache = %s.cache.name(), "write-behind shut down");
        Ok(())
    }

    /// Writes not yet confirmed written. Memory mode: keys waiting plus the batch being
    /// written (never fails). Durable mode: entries in the Redis Stream (all instances).
    pub async fn depth(&self) -> Result<u64> {
        let s = &self.handle.shared;
        match &s.queue {
            Queue::Memory(q) => Ok(q.depth()),
            #[cfg(feature = "redis")]
            Queue::Durable(q) => q.depth().await,
        }
    }
}

/// Which queued write a repair waits for.
enum Pending {
    /// The key's slot (or the batch in flight) in the memory queue.
    Memory,
    /// This stream entry.
    #[cfg(feature = "redis")]
    Durable(durable::StreamId),
    /// A stream entry whose `XADD` has an unknown outcome (in flight, timed out, or the
    /// connection lost), if [`RepairGuard::in_flight`] is set (it is not while `add` waits
    /// for room under backpressure): bounded by the stream's newest id read after it.
    #[cfg(feature = "redis")]
    Unknown,
}

/// Asks for a repair (invalidate the key once its queued write is in the source) unless the
/// cache update after the enqueue succeeded: when it failed, when the caller's future was
/// dropped in the middle of it (the cache may then hold the old value, or half of the
/// update), and (durable mode) when the `XADD` has an unknown outcome or its future was
/// dropped. Created and dropped under the key's stripe lock, so the marks of one key come in
/// the order of its writes.
struct RepairGuard<'a, V, C> {
    shared: &'a Shared<V, C>,
    key: &'a str,
    pending: Option<Pending>,
    /// Durable mode: an `XADD` of this write is sent and not answered.
    #[cfg(feature = "redis")]
    in_flight: AtomicBool,
}

impl<'a, V, C> RepairGuard<'a, V, C> {
    fn new(shared: &'a Shared<V, C>, key: &'a str, pending: Pending) -> Self {
        RepairGuard {
            shared,
            key,
            pending: Some(pending),
            #[cfg(feature = "redis")]
            in_flight: AtomicBool::new(false),
        }
    }

    /// The write is now known as `pending`.
    #[cfg(feature = "redis")]
    fn set(&mut self, pending: Pending) {
        self.pending = Some(pending);
    }

    /// The write was refused: nothing was queued, nothing to repair.
    #[cfg(feature = "redis")]
    fn cancel(mut self) {
        self.pending = None;
    }

    fn finish(mut self, cache_updated: bool) {
        if cache_updated {
            self.pending = None;
            // The cache holds this write's value, newer than every earlier write of the key:
            // their repairs are not needed any more.
            #[cfg(feature = "redis")]
            if let Queue::Durable(q) = &self.shared.queue {
                q.clear_repair(self.key);
            }
        }
    }
}

impl<V, C> Drop for RepairGuard<'_, V, C> {
    fn drop(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        match (&self.shared.queue, pending) {
            (Queue::Memory(q), Pending::Memory) => q.mark_repair(self.key),
            #[cfg(feature = "redis")]
            (Queue::Durable(q), Pending::Durable(id)) => q.mark_repair(self.key, Some(id)),
            // Sent and not answered: the entry may be in the stream.
            #[cfg(feature = "redis")]
            (Queue::Durable(q), Pending::Unknown) if self.in_flight.load(Ordering::SeqCst) => {
                q.mark_repair(self.key, None);
            }
            #[cfg(feature = "redis")]
            _ => {}
        }
    }
}

/// Builds a [`WriteBehind`]; get one from [`WriteBehind::builder`].
pub struct WriteBehindBuilder<V, C> {
    cache: Cache<V, C>,
    writer: Arc<dyn BatchWriter<V>>,
    config: WriteBehindConfig,
    #[cfg(feature = "redis")]
    redis: Option<cache_redis::RedisStore>,
    #[cfg(feature = "redis")]
    instance_id: Option<String>,
}

impl<V, C> fmt::Debug for WriteBehindBuilder<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBehindBuilder")
            .field("cache", &self.cache.name())
            .field("config", &self.config)
            .finish()
    }
}

impl<V, C> WriteBehindBuilder<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Replace all settings at once (e.g. deserialized from a config file).
    pub fn with_config(mut self, config: WriteBehindConfig) -> Self {
        self.config = config;
        self
    }

    /// Entries per batch writer call (default 256).
    pub fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.config.max_batch = max_batch;
        self
    }

    /// Longest wait for a batch to fill (default 50 ms).
    pub fn with_max_age(mut self, max_age: std::time::Duration) -> Self {
        self.config.max_age = max_age;
        self
    }

    /// Bound of the queue (default 10 000).
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.config.capacity = capacity;
        self
    }

    /// What a write does when the queue is full (default [`QueuePolicy::Backpressure`]).
    pub fn with_policy(mut self, policy: QueuePolicy) -> Self {
        self.config.policy = policy;
        self
    }

    /// Retry back-off of a failing writer: first delay and cap (default 10 ms, 5 s).
    pub fn with_retry(mut self, min: std::time::Duration, max: std::time::Duration) -> Self {
        self.config.retry_min = min;
        self.config.retry_max = max;
        self
    }

    /// Durable mode: lease lifetime and idle time before takeover (default 30 s).
    pub fn with_claim_idle(mut self, idle: std::time::Duration) -> Self {
        self.config.claim_idle = idle;
        self
    }

    /// Durable mode: keep the queue in a Redis Stream on `store`'s server, at
    /// `{prefix}:__wb:{namespace}` (plus `:v{n}` with a schema version). The cache's own L2
    /// may be another store.
    #[cfg(feature = "redis")]
    pub fn with_redis(mut self, store: cache_redis::RedisStore) -> Self {
        self.redis = Some(store);
        self
    }

    /// Durable mode: this instance's consumer name in the stream's consumer group (default:
    /// `wb-{pid}-{random}`, new on each start). Unique per running instance.
    #[cfg(feature = "redis")]
    pub fn with_instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }

    /// Validate the settings and start the flusher on the current tokio runtime. In durable
    /// mode this also creates the stream's consumer group (errors from Redis are returned).
    pub async fn build(self) -> Result<WriteBehind<V, C>> {
        self.config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "the write-behind flusher runs on the tokio runtime: build it within one",
            ));
        }
        let stripes: Box<[tokio::sync::Mutex<()>]> =
            (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        #[cfg(feature = "redis")]
        if let Some(store) = self.redis {
            let q =
                durable::DurableQueue::open(&self.cache, &store, self.instance_id, &self.config)
                    .await?;
            let shared = Arc::new(Shared {
                name: self.cache.name().to_owned(),
                cache: self.cache,
                writer: self.writer,
                config: self.config,
                stripes,
                hasher: RandomState::new(),
                queue: Queue::Durable(q),
                stats: Counters::default(),
                shut_down: AtomicBool::new(false),
                task: Mutex::new(None),
            });
            let task = tokio::spawn(durable::run(shared.clone()));
            *shared.lock_task() = Some(task);
            return Ok(WriteBehind {
                handle: Arc::new(Handle { shared }),
            });
        }
        let (q, done) = memory::MemoryQueue::new();
        let shared = Arc::new(Shared {
            name: self.cache.name().to_owned(),
            cache: self.cache,
            writer: self.writer,
            config: self.config,
            stripes,
            hasher: RandomState::new(),
            queue: Queue::Memory(q),
            stats: Counters::default(),
            shut_down: AtomicBool::new(false),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(memory::run(shared.clone(), done));
        *shared.lock_task() = Some(task);
        Ok(WriteBehind {
            handle: Arc::new(Handle { shared }),
        })
    }
}
