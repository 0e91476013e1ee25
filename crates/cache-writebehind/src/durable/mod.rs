//! Durable mode: the queue kept in a Redis Stream.
//!
//! - A write is `XADD`ed (by a script that refuses when the stream holds `capacity`
//!   entries) to `{prefix}:__wb:{namespace}` before the caller gets `Ok`: fields `k` (key),
//!   `c` (codec id) and `v` (the value encoded with the cache's codec).
//! - One instance at a time flushes: it holds a lease (`{stream}:leader`, `SET NX PX
//!   claim_idle`, renewed every `claim_idle / 3`). The others stand by and try to take the
//!   lease every `claim_idle / 3` (between `poll_interval` and 1 s). A single flusher keeps
//!   per-key order across instances.
//! - The flusher reads with `XREADGROUP` (group `wb`, consumer = instance id), coalesces the
//!   batch (newest value per key by stream order), calls the batch writer (retrying), then
//!   `XACK` + `XDEL` in one transaction.
//! - A new lease holder first writes what it finds in its own pending list, then takes over
//!   the entries other consumers left pending (`XAUTOCLAIM`, idle at least `claim_idle`), and
//!   reads new entries only when no other consumer holds pending ones (older entries first:
//!   per-key order survives a takeover). It looks again every `claim_idle`.
//! - Repairs: a key whose cache may hold an older value than its queued write (the cache
//!   update failed or was abandoned, or the `XADD`'s outcome is unknown) is invalidated once
//!   no entry up to a bound is left in the stream. The bound is the write's own entry id, or,
//!   when the `XADD`'s outcome is unknown, the stream's newest id read after it on the same
//!   multiplexed connection (if the `XADD` ran at all, it ran before that read).

mod call;
mod flusher;
mod lease;
mod repair;
mod reply;
mod stream;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use cache_core::{Cache, Codec, Error, ErrorKind, Result};
use cache_redis::redis::{self, aio::ConnectionManager};
use cache_redis::RedisStore;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify;

use crate::{Shared, WriteBehindConfig};
use repair::Repairs;

pub(crate) use flusher::run;
pub(crate) use reply::StreamId;

/// The queue kept in a Redis Stream: the connection, the stream's keys and this instance's
/// state. Its methods live by concern in the child modules (`call`, `stream`, `lease`,
/// `repair`); this one holds opening, `flush` and the lifecycle.
pub(crate) struct DurableQueue {
    conn: ConnectionManager,
    timeout: Duration,
    stream: String,
    dead: String,
    lease: String,
    consumer: String,
    wake: Notify,
    last_added: Mutex<Option<StreamId>>,
    added: AtomicU64,
    /// Flushes and writers waiting for room: batch at once, do not wait for `max_age`.
    urgent: AtomicUsize,
    closing: AtomicBool,
    stop: AtomicBool,
    /// Keys whose cache may hold an older value than their queued write.
    repairs: Mutex<Repairs>,
    /// The flusher's last step was refused by Redis (`ErrorKind::Auth`: ACL rules or
    /// credentials): `flush` reports it instead of waiting. Cleared by a step that succeeds.
    refused: Mutex<Option<Box<Error>>>,
    add_script: redis::Script,
    renew_script: redis::Script,
    release_script: redis::Script,
}

/// Counts a waiter as urgent while alive.
struct Urgent<'a>(&'a AtomicUsize);

impl<'a> Urgent<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Urgent(n)
    }
}

impl Drop for Urgent<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl DurableQueue {
    pub(crate) async fn open<V, C>(
        cache: &Cache<V, C>,
        store: &RedisStore,
        instance_id: Option<String>,
        config: &WriteBehindConfig,
    ) -> Result<DurableQueue>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        C: Codec,
    {
        let mut stream = format!("{}:__wb:{}", cache.engine().prefix(), cache.name());
        if let Some(v) = cache.config().schema_version {
            stream.push_str(&format!(":v{v}"));
        }
        let consumer = instance_id
            .unwrap_or_else(|| format!("wb-{}-{:016x}", std::process::id(), fastrand::u64(..)));
        if consumer.is_empty() || consumer.len() > 200 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "instance_id must be 1 to 200 bytes",
            ));
        }
        let q = DurableQueue {
            conn: store.connection(),
            timeout: store.config().response_timeout,
            dead: format!("{stream}:dead"),
            lease: format!("{stream}:leader"),
            stream,
            consumer,
            wake: Notify::new(),
            last_added: Mutex::new(None),
            added: AtomicU64::new(0),
            urgent: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            repairs: Mutex::new(Repairs::default()),
            refused: Mutex::new(None),
            add_script: redis::Script::new(stream::ADD_LUA),
            renew_script: redis::Script::new(lease::RENEW_LUA),
            release_script: redis::Script::new(lease::RELEASE_LUA),
        };
        q.ensure_group().await?;
        tracing::info!(
            cache = %cache.name(),
            stream = %q.stream,
            consumer = %q.consumer,
            capacity = config.capacity,
            "durable write-behind started"
        );
        Ok(q)
    }

    pub(crate) fn stream(&self) -> &str {
        &self.stream
    }

    fn lock_last(&self) -> MutexGuard<'_, Option<StreamId>> {
        self.last_added.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_repairs(&self) -> MutexGuard<'_, Repairs> {
        self.repairs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until every entry in the stream now is written, then run the repairs they
    /// settle (also those of `XADD`s with an unknown outcome issued before this call).
    pub(crate) async fn flush<V, C>(&self, shared: &Shared<V, C>) -> Result<()>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        C: Codec,
    {
        let unresolved = {
            let repairs = self.lock_repairs();
            repairs.unresolved(repairs.marks)
        };
        let mine = *self.lock_last();
        let target = match self.resolve_repairs().await {
            Ok(newest) => newest.max(mine),
            // Without the stream's newest id an unknown `XADD` has no bound yet.
            Err(e) if mine.is_some() && !unresolved => {
                tracing::debug!(error = %e, "write-behind flush: cannot read the stream yet");
                mine
            }
            Err(e) => return Err(e),
        };
        let target = target
            .max(self.lock_repairs().max_bound())
            .unwrap_or(StreamId::ZERO);
        if target > StreamId::ZERO {
            let _urgent = Urgent::new(&self.urgent);
            self.wake.notify_one();
            let mut delay = Duration::from_millis(2);
            loop {
                match self.any_up_to(target).await {
                    Ok(false) => break,
                    Ok(true) => {}
                    // Refused (ACL rules, credentials): waiting does not help.
                    Err(e) if e.kind() == ErrorKind::Auth => return Err(e),
                    Err(e) => {
                        tracing::debug!(error = %e, "write-behind flush: cannot read the stream; waiting");
                    }
                }
                if let Some(e) = self.refused() {
                    return Err(e);
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(shared.config.poll_interval);
            }
        }
        // Nothing up to `target` is left (entries only leave the stream, and new ones get
        // higher ids): every repair bounded by it is due.
        self.run_repairs(shared, |bound| bound <= target, true)
            .await;
        Ok(())
    }

    fn set_refused(&self, refused: Option<Box<Error>>) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = refused;
    }

    /// The error that refused the flusher's last step, if it was refused.
    fn refused(&self) -> Option<Error> {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
            .cloned()
    }

    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// The last handle is gone: stop after the current batch. Returns how many entries this
    /// instance added.
    pub(crate) fn detach(&self) -> u64 {
        self.stop();
        self.added.load(Ordering::Relaxed)
    }

    fn urgent(&self) -> bool {
        self.urgent.load(Ordering::SeqCst) > 0
            || self.closing.load(Ordering::SeqCst)
            || self.stop.load(Ordering::SeqCst)
    }

    /// Sleep until woken or `d` passed.
    async fn wait(&self, d: Duration) {
        tokio::select! {
            () = self.wake.notified() => {}
            () = tokio::time::sleep(d) => {}
        }
    }
}
