//! The user-facing handle: [`WriteBehind`] and its operations (write, flush, shutdown, depth).

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cache_core::{Cache, Codec, Error, ErrorKind, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::repair::{Pending, RepairGuard};
use crate::{add, Queue, Shared, WriteBehindConfig, WriteBehindStats};

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
    /// The first user-facing handle of a started queue whose flusher is `task`.
    pub(crate) fn start(shared: Arc<Shared<V, C>>, task: JoinHandle<()>) -> Self {
        *shared.lock_task() = Some(task);
        WriteBehind {
            handle: Arc::new(Handle { shared }),
        }
    }
}

impl<V, C> WriteBehind<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
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
    ///   [`QueuePolicy::Reject`](crate::QueuePolicy::Reject);
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
    /// the same order); with [`QueuePolicy::Backpressure`](crate::QueuePolicy::Backpressure) this call waits while the queue is
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
