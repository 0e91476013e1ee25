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

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cache_core::{Cache, CacheEvent, Codec, Error, ErrorKind, Result};
use cache_redis::redis::{self, aio::ConnectionManager, FromRedisValue, RedisError, Value};
use cache_redis::RedisStore;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify;

use crate::writer::{self, Backoff, Batch};
use crate::{add, closed, queue_full, QueuePolicy, Shared, WriteBehindConfig};

/// The consumer group of every write-behind stream.
const GROUP: &str = "wb";

/// Add an entry unless the stream is full. `KEYS = [stream]`,
/// `ARGV = [capacity, key, codec id, value]`; returns the entry id or nil when full.
const ADD_LUA: &str = r"
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  return false
end
return redis.call('XADD', KEYS[1], '*', 'k', ARGV[2], 'c', ARGV[3], 'v', ARGV[4])
";

/// Extend the lease if we still hold it. `KEYS = [lease]`, `ARGV = [me, ttl_ms]`.
const RENEW_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Give the lease up if we hold it. `KEYS = [lease]`, `ARGV = [me]`.
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// A stream entry id, `ms-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct StreamId {
    ms: u64,
    seq: u64,
}

impl StreamId {
    /// Below every real entry id: the bound of "nothing was in the stream".
    const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    fn parse(s: &str) -> Option<StreamId> {
        let (ms, seq) = s.split_once('-')?;
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One entry read from the stream; `fields` is `None` when the entry was deleted while
/// pending (it was written: nothing left to do but acknowledge).
struct Entry {
    id: String,
    fields: Option<HashMap<String, Vec<u8>>>,
}

/// Why [`DurableQueue::add`] failed.
pub(crate) struct AddError {
    pub(crate) error: Error,
    /// The entry may be in the stream all the same: the `XADD` may have been sent, and no
    /// answer says it was refused (a timeout, a dropped connection, an unreadable reply).
    pub(crate) maybe_added: bool,
}

impl AddError {
    fn refused(error: Error) -> Self {
        AddError {
            error,
            maybe_added: false,
        }
    }
}

/// One key waiting for its repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Repair {
    /// Invalidate the key once no entry up to this id is left in the stream. `None`: not
    /// known yet (an `XADD` whose outcome is unknown): the stream's newest id, read after
    /// mark number `mark`, becomes the bound.
    bound: Option<StreamId>,
    /// The number of the key's latest mark.
    mark: u64,
}

/// Keys to invalidate once the writes their cache may be missing are in the source. One
/// entry per key (a new mark raises the bound), so the map never holds more keys than were
/// written with a failed or unknown outcome, and each key leaves it once repaired or once a
/// later write updated the cache.
#[derive(Debug, Default)]
struct Repairs {
    keys: HashMap<String, Repair>,
    /// Marks so far; each mark takes the next number.
    marks: u64,
}

impl Repairs {
    /// Ask for a repair of `key` once no entry up to `bound` is left (`None`: once no entry
    /// up to the stream's newest id, read after this mark, is left).
    fn mark(&mut self, key: &str, bound: Option<StreamId>) {
        self.marks += 1;
        let mark = self.marks;
        match self.keys.get_mut(key) {
            Some(r) => {
                r.bound = match (r.bound, bound) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
                r.mark = mark;
            }
            None => {
                self.keys.insert(key.to_owned(), Repair { bound, mark });
            }
        }
    }

    /// A write to `key` updated the cache after every write with a pending repair (it holds
    /// the stripe lock, so they came before it): the cache holds the newest value, no repair
    /// is needed any more. Invalidating later would even be harmful: the write's own entry may
    /// still be waiting, and a read would then load the source's older value.
    fn clear(&mut self, key: &str) {
        self.keys.remove(key);
    }

    /// Whether a mark up to number `upto` still waits for its bound.
    fn unresolved(&self, upto: u64) -> bool {
        self.keys
            .values()
            .any(|r| r.bound.is_none() && r.mark <= upto)
    }

    /// `newest` was read from the stream after mark number `upto`: it bounds every entry an
    /// unknown `XADD` marked up to then may have added (an empty stream: nothing is left).
    fn resolve(&mut self, upto: u64, newest: Option<StreamId>) {
        for r in self.keys.values_mut() {
            if r.bound.is_none() && r.mark <= upto {
                r.bound = Some(newest.unwrap_or(StreamId::ZERO));
            }
        }
    }

    /// The highest known bound.
    fn max_bound(&self) -> Option<StreamId> {
        self.keys.values().filter_map(|r| r.bound).max()
    }

    /// Keys whose bound is known and `clear` (no entry up to it is left).
    fn due(&self, clear: impl Fn(StreamId) -> bool) -> Vec<String> {
        self.keys
            .iter()
            .filter(|(_, r)| r.bound.is_some_and(&clear))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Remove `key` if its repair is (still) due by `clear`. Returns whether it was.
    fn take(&mut self, key: &str, clear: impl Fn(StreamId) -> bool) -> bool {
        let due = self
            .keys
            .get(key)
            .is_some_and(|r| r.bound.is_some_and(clear));
        if due {
            self.keys.remove(key);
        }
        due
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A Redis call that failed.
enum Failed {
    /// Redis (or the connection) answered with this error.
    Redis(RedisError),
    /// No answer within the response timeout.
    NoAnswer,
}

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

fn redis_error(op: &str, e: RedisError) -> Error {
    let refused = matches!(e.code(), Some("NOPERM" | "NOAUTH" | "WRONGPASS"))
        || e.kind() == redis::ErrorKind::AuthenticationFailed;
    let kind = if refused {
        // A configuration error (ACL rules, credentials): retrying does not help.
        ErrorKind::Auth
    } else if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        ErrorKind::Connection
    } else {
        ErrorKind::Remote
    };
    Error::new(kind, format!("write-behind {op}: {e}")).with_source(e)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
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
            add_script: redis::Script::new(ADD_LUA),
            renew_script: redis::Script::new(RENEW_LUA),
            release_script: redis::Script::new(RELEASE_LUA),
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

    /// Run one command under the response timeout.
    async fn query<T: FromRedisValue>(&self, op: &'static str, cmd: &redis::Cmd) -> Result<T> {
        let mut conn = self.conn.clone();
        self.bounded(op, cmd.query_async::<T>(&mut conn)).await
    }

    /// Await one Redis call under the response timeout, mapping its error.
    async fn bounded<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        self.call(call).await.map_err(|f| self.failed(op, f))
    }

    /// Await one Redis call under the response timeout.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> std::result::Result<T, Failed> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Failed::Redis(e)),
            Err(_) => Err(Failed::NoAnswer),
        }
    }

    fn failed(&self, op: &'static str, failed: Failed) -> Error {
        match failed {
            Failed::Redis(e) => redis_error(op, e),
            Failed::NoAnswer => Error::new(
                ErrorKind::Timeout,
                format!(
                    "write-behind {op}: no answer from Redis within {:?}",
                    self.timeout
                ),
            ),
        }
    }

    /// Run one script under the response timeout.
    async fn script<T: FromRedisValue>(
        &self,
        op: &'static str,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        let mut conn = self.conn.clone();
        self.bounded(op, inv.invoke_async::<T>(&mut conn)).await
    }

    async fn ensure_group(&self) -> Result<()> {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM");
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, cmd.query_async::<Value>(&mut conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.code() == Some("BUSYGROUP") => Ok(()),
            Ok(Err(e)) => Err(redis_error("XGROUP CREATE", e)),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                "write-behind XGROUP CREATE: no answer from Redis",
            )),
        }
    }

    /// Add one write to the stream (the acknowledgement), by policy when it is full.
    ///
    /// An error says whether the entry may be in the stream all the same
    /// ([`AddError::maybe_added`]); refusals (closed, full under [`QueuePolicy::Reject`], an
    /// encode error, an error reply from Redis) added nothing. `in_flight` is true while an
    /// `XADD` is sent and not answered, so that whoever drops this future knows whether the
    /// entry may have been added (not while it waits for room under backpressure).
    pub(crate) async fn add<V, C>(
        &self,
        shared: &Shared<V, C>,
        key: &str,
        value: &V,
        in_flight: &AtomicBool,
    ) -> std::result::Result<StreamId, AddError>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        C: Codec,
    {
        let bytes = C::encode(value).map_err(AddError::refused)?;
        let config = &shared.config;
        let mut delay = Duration::from_millis(1);
        let mut urgent_guard = None;
        loop {
            if self.closing.load(Ordering::SeqCst) {
                return Err(AddError::refused(closed()));
            }
            let mut inv = self.add_script.key(&self.stream);
            inv.arg(config.capacity)
                .arg(key)
                .arg(C::ID.as_u8())
                .arg(bytes.as_slice());
            let mut conn = self.conn.clone();
            in_flight.store(true, Ordering::SeqCst);
            let id = match self
                .call(inv.invoke_async::<Option<String>>(&mut conn))
                .await
            {
                Ok(None) => {
                    // Full: nothing added.
                    in_flight.store(false, Ordering::SeqCst);
                    None
                }
                Ok(id) => id,
                Err(failed) => {
                    // An error reply means the script raised before its `XADD` or the `XADD`
                    // itself failed, a refused connection that nothing was sent: nothing was
                    // added. Anything else (no answer, the connection lost, an unreadable
                    // reply) may come after the `XADD` ran.
                    let refused = matches!(&failed, Failed::Redis(e)
                        if e.code().is_some() || e.is_connection_refusal());
                    return Err(AddError {
                        error: self.failed("XADD", failed),
                        maybe_added: !refused,
                    });
                }
            };
            match id {
                Some(id) => {
                    let id = StreamId::parse(&id).ok_or_else(|| AddError {
                        error: Error::new(
                            ErrorKind::Remote,
                            format!("write-behind XADD: unexpected entry id {id:?}"),
                        ),
                        // Added, under an id we cannot read.
                        maybe_added: true,
                    })?;
                    {
                        let mut last = self.lock_last();
                        if last.is_none_or(|l| l < id) {
                            *last = Some(id);
                        }
                    }
                    self.added.fetch_add(1, Ordering::Relaxed);
                    add(&shared.stats.accepted, 1);
                    self.wake.notify_one();
                    return Ok(id);
                }
                None if config.policy == QueuePolicy::Reject => {
                    add(&shared.stats.rejected, 1);
                    return Err(AddError::refused(queue_full(config.capacity)));
                }
                None => {
                    if urgent_guard.is_none() {
                        urgent_guard = Some(Urgent::new(&self.urgent));
                    }
                    self.wake.notify_one();
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(config.poll_interval);
                }
            }
        }
    }

    /// The cache may hold an older value of `key` than its queued write: invalidate the key
    /// once no entry up to `id` is left in the stream (`None`: the write's `XADD` has an
    /// unknown outcome; the bound is read from the stream later).
    pub(crate) fn mark_repair(&self, key: &str, id: Option<StreamId>) {
        self.lock_repairs().mark(key, id);
        self.wake.notify_one();
    }

    /// A write to `key` updated the cache: earlier writes need no repair any more.
    pub(crate) fn clear_repair(&self, key: &str) {
        let mut repairs = self.lock_repairs();
        if !repairs.is_empty() {
            repairs.clear(key);
        }
    }

    /// Give every unknown bound marked so far the stream's newest id (read now, after those
    /// `XADD`s on the same connection). Returns that id.
    async fn resolve_repairs(&self) -> Result<Option<StreamId>> {
        let upto = self.lock_repairs().marks;
        let newest = self.newest().await?;
        self.lock_repairs().resolve(upto, newest);
        Ok(newest)
    }

    /// Invalidate the keys whose repair is due by `clear` (no entry up to the bound is left).
    /// Each runs under its key's stripe lock, so that a concurrent write to the key either
    /// comes first (and clears the repair) or after the invalidation; `wait` says whether to
    /// wait for a busy stripe (`flush`) or to leave the key for the next round (the flusher,
    /// which must never wait for a writer that waits for room in the stream).
    async fn run_repairs<V, C>(
        &self,
        shared: &Shared<V, C>,
        clear: impl Fn(StreamId) -> bool + Copy,
        wait: bool,
    ) where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        C: Codec,
    {
        let due = self.lock_repairs().due(clear);
        for key in due {
            let stripe = shared.stripe(&key);
            let _order = if wait {
                stripe.lock().await
            } else {
                match stripe.try_lock() {
                    Ok(guard) => guard,
                    Err(_) => continue,
                }
            };
            let take = self.lock_repairs().take(&key, clear);
            if take {
                shared.repair(&key).await;
            }
        }
    }

    /// Entries in the stream: everything not yet written (all instances).
    pub(crate) async fn depth(&self) -> Result<u64> {
        let mut cmd = redis::cmd("XLEN");
        cmd.arg(&self.stream);
        self.query("XLEN", &cmd).await
    }

    /// The newest entry still in the stream.
    async fn newest(&self) -> Result<Option<StreamId>> {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(&self.stream).arg("+").arg("-").arg("COUNT").arg(1);
        let v: Value = self.query("XREVRANGE", &cmd).await?;
        Ok(parse_entries(&v)
            .first()
            .and_then(|e| StreamId::parse(&e.id)))
    }

    /// Whether any entry up to `id` is still in the stream (not yet written).
    async fn any_up_to(&self, id: StreamId) -> Result<bool> {
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(&self.stream)
            .arg("-")
            .arg(id.to_string())
            .arg("COUNT")
            .arg(1);
        let v: Value = self.query("XRANGE", &cmd).await?;
        Ok(!parse_entries(&v).is_empty())
    }

    /// The oldest entry still in the stream (not yet written).
    async fn oldest(&self) -> Result<Option<StreamId>> {
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(&self.stream).arg("-").arg("+").arg("COUNT").arg(1);
        let v: Value = self.query("XRANGE", &cmd).await?;
        Ok(parse_entries(&v)
            .first()
            .and_then(|e| StreamId::parse(&e.id)))
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

    async fn try_acquire(&self, ttl: Duration) -> Result<bool> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(&self.lease)
            .arg(&self.consumer)
            .arg("NX")
            .arg("PX")
            .arg(ms(ttl));
        let v: Value = self.query("SET NX (lease)", &cmd).await?;
        Ok(matches!(v, Value::Okay) || matches!(&v, Value::SimpleString(s) if s == "OK"))
    }

    async fn renew(&self, ttl: Duration) -> Result<bool> {
        let mut inv = self.renew_script.key(&self.lease);
        inv.arg(&self.consumer).arg(ms(ttl));
        let n: i64 = self.script("renew lease", inv).await?;
        Ok(n == 1)
    }

    async fn release(&self) {
        let mut inv = self.release_script.key(&self.lease);
        inv.arg(&self.consumer);
        match self.script::<i64>("release lease", inv).await {
            Ok(_) => tracing::debug!(stream = %self.stream, "write-behind flusher lease released"),
            Err(e) => tracing::warn!(
                stream = %self.stream,
                error = %e,
                "write-behind: releasing the flusher lease failed; another instance takes over \
                 once it expires"
            ),
        }
    }

    /// `XREADGROUP` from `from` (`0`: our own pending entries; `>`: new ones).
    async fn read(&self, from: &str, count: usize) -> Result<Vec<Entry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(from);
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, cmd.query_async::<Value>(&mut conn)).await {
            Ok(Ok(v)) => Ok(parse_read(&v)),
            Ok(Err(e)) if e.code() == Some("NOGROUP") => {
                tracing::warn!(stream = %self.stream, "write-behind consumer group missing (stream deleted?); creating it again");
                self.ensure_group().await?;
                Ok(Vec::new())
            }
            Ok(Err(e)) => Err(redis_error("XREADGROUP", e)),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                "write-behind XREADGROUP: no answer from Redis",
            )),
        }
    }

    /// Entries pending at other consumers.
    async fn pending_elsewhere(&self) -> Result<u64> {
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&self.stream).arg(GROUP);
        let v: Value = self.query("XPENDING", &cmd).await?;
        let reply = items(&v);
        let Some(consumers) = reply.get(3) else {
            return Ok(0);
        };
        let mut n = 0;
        for c in items_of(consumers) {
            let pair = items(c);
            let name = pair.first().and_then(|v| text(v));
            let count = pair.get(1).and_then(|v| int(v)).unwrap_or(0);
            if name.as_deref() != Some(self.consumer.as_str()) {
                n += count.max(0) as u64;
            }
        }
        Ok(n)
    }

    /// Take over entries idle for at least `idle` from other consumers. Returns how many.
    async fn autoclaim(&self, idle: Duration, count: usize) -> Result<usize> {
        let mut cursor = "0-0".to_owned();
        let mut claimed = 0;
        for _ in 0..1000 {
            let mut cmd = redis::cmd("XAUTOCLAIM");
            cmd.arg(&self.stream)
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(ms(idle))
                .arg(&cursor)
                .arg("COUNT")
                .arg(count)
                .arg("JUSTID");
            let v: Value = self.query("XAUTOCLAIM", &cmd).await?;
            let parts = items(&v);
            claimed += parts.get(1).map_or(0, |ids| items(ids).len());
            cursor = parts
                .first()
                .and_then(|c| text(c))
                .unwrap_or_else(|| "0-0".to_owned());
            if claimed > 0 || cursor == "0-0" {
                break;
            }
        }
        Ok(claimed)
    }

    /// Forget consumers (former flushers) with nothing pending that were idle for `idle`.
    async fn forget_idle_consumers(&self, idle: Duration) -> Result<()> {
        let mut cmd = redis::cmd("XINFO");
        cmd.arg("CONSUMERS").arg(&self.stream).arg(GROUP);
        let v: Value = self.query("XINFO CONSUMERS", &cmd).await?;
        for c in items_of(&v) {
            let fields = pairs(c);
            let name = fields.get("name").and_then(|v| text(v));
            let pending = fields.get("pending").and_then(|v| int(v)).unwrap_or(1);
            let idle_ms = fields.get("idle").and_then(|v| int(v)).unwrap_or(0);
            let Some(name) = name else { continue };
            if name != self.consumer && pending == 0 && idle_ms >= ms(idle) as i64 {
                let mut del = redis::cmd("XGROUP");
                del.arg("DELCONSUMER")
                    .arg(&self.stream)
                    .arg(GROUP)
                    .arg(&name);
                let _: Value = self.query("XGROUP DELCONSUMER", &del).await?;
                tracing::debug!(stream = %self.stream, consumer = %name, "forgot an idle write-behind consumer");
            }
        }
        Ok(())
    }

    /// Acknowledge and delete written entries, in one transaction.
    async fn ack(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(ids)
            .ignore()
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(ids)
            .ignore();
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, pipe.query_async::<Value>(&mut conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(redis_error("XACK/XDEL", e)),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                "write-behind XACK/XDEL: no answer from Redis",
            )),
        }
    }

    /// Keep undecodable entries in the dead-letter stream (with the reason).
    async fn dead_letter(&self, dead: &[(&Entry, String)]) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (e, reason) in dead {
            let cmd = pipe.cmd("XADD").arg(&self.dead).arg("*");
            cmd.arg("id").arg(&e.id).arg("error").arg(reason);
            if let Some(fields) = &e.fields {
                for (k, v) in fields {
                    cmd.arg(k).arg(v.as_slice());
                }
            }
            cmd.ignore();
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, pipe.query_async::<Value>(&mut conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(redis_error("XADD (dead letter)", e)),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                "write-behind XADD (dead letter): no answer from Redis",
            )),
        }
    }

    /// Sleep until woken or `d` passed.
    async fn wait(&self, d: Duration) {
        tokio::select! {
            () = self.wake.notified() => {}
            () = tokio::time::sleep(d) => {}
        }
    }
}

/// The flusher's own state.
struct Flusher {
    leader: bool,
    renewed_at: Instant,
    /// Look at pending entries (ours, then other consumers') before reading new ones.
    recover: bool,
    recovered_at: Instant,
    repairs_at: Instant,
    backoff: Backoff,
}

enum Outcome {
    /// Nothing to do for now: wait this long (or until woken).
    Idle(Duration),
    /// Not the flusher: try the lease again after this long (local writes do not wake a
    /// standby instance; stopping does).
    Standby(Duration),
    /// Did something: go on at once.
    Busy,
}

/// The durable flusher: runs until stopped (shutdown or the last handle dropped).
pub(crate) async fn run<V, C>(shared: Arc<Shared<V, C>>)
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    let crate::Queue::Durable(q) = &shared.queue else {
        return;
    };
    let config = &shared.config;
    let mut f = Flusher {
        leader: false,
        renewed_at: Instant::now(),
        recover: true,
        recovered_at: Instant::now(),
        repairs_at: Instant::now(),
        backoff: Backoff::new(config.retry_min, config.retry_max),
    };
    let mut redis_backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(2));
    loop {
        if q.stop.load(Ordering::SeqCst) {
            if f.leader {
                q.release().await;
            }
            tracing::debug!(stream = %q.stream, "durable write-behind flusher stopped");
            return;
        }
        let step = f.step(&shared, q).await;
        q.set_refused(match &step {
            Err(e) if e.kind() == ErrorKind::Auth => Some(Box::new(e.clone())),
            _ => None,
        });
        match step {
            Ok(Outcome::Busy) => redis_backoff.reset(),
            Ok(Outcome::Idle(d)) => {
                redis_backoff.reset();
                q.wait(d).await;
            }
            Ok(Outcome::Standby(d)) => {
                redis_backoff.reset();
                let deadline = Instant::now() + d;
                while Instant::now() < deadline && !q.stop.load(Ordering::SeqCst) {
                    q.wait(deadline.saturating_duration_since(Instant::now()))
                        .await;
                }
            }
            Err(e) => {
                // Whatever was read stays in our pending list: look there first next time.
                f.recover = true;
                let delay = redis_backoff.next_delay();
                tracing::warn!(
                    stream = %q.stream,
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "durable write-behind flusher: Redis call failed; retrying"
                );
                q.wait(delay).await;
            }
        }
    }
}

impl Flusher {
    async fn step<V, C>(&mut self, shared: &Shared<V, C>, q: &DurableQueue) -> Result<Outcome>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        C: Codec,
    {
        let config = &shared.config;
        self.check_repairs(shared, q).await;
        if !self.leader {
            if q.try_acquire(config.claim_idle).await? {
                self.leader = true;
                self.renewed_at = Instant::now();
                self.recover = true;
                tracing::info!(stream = %q.stream, consumer = %q.consumer, "took the write-behind flusher lease");
            } else {
                let standby = (config.claim_idle / 3)
                    .max(config.poll_interval)
                    .min(Duration::from_secs(1));
                return Ok(Outcome::Standby(standby));
            }
        }
        if !self.renew_if_due(q, config).await {
            return Ok(Outcome::Busy);
        }
        if self.recovered_at.elapsed() >= config.claim_idle {
            self.recover = true;
        }
        if self.recover {
            let own = q.read("0", config.max_batch).await?;
            if !own.is_empty() {
                self.process(shared, q, own).await?;
                return Ok(Outcome::Busy);
            }
            if q.pending_elsewhere().await? == 0 {
                self.recover = false;
                self.recovered_at = Instant::now();
                if let Err(e) = q.forget_idle_consumers(config.claim_idle * 2).await {
                    tracing::debug!(error = %e, "write-behind: listing consumers failed");
                }
            } else {
                let claimed = q.autoclaim(config.claim_idle, config.max_batch).await?;
                if claimed == 0 {
                    // Entries of another consumer, not idle long enough yet: new entries
                    // must wait behind them (per-key order).
                    return Ok(Outcome::Idle(
                        config.poll_interval.min(config.claim_idle / 4),
                    ));
                }
                tracing::info!(stream = %q.stream, claimed, "took over pending write-behind entries");
                return Ok(Outcome::Busy);
            }
        }
        let mut batch = q.read(">", config.max_batch).await?;
        if batch.is_empty() {
            return Ok(Outcome::Idle(config.poll_interval));
        }
        if batch.len() < config.max_batch && !q.urgent() {
            // Let the batch fill until its oldest entry is `max_age` old (the entry id holds
            // the time it was added, by the Redis clock).
            let oldest = batch
                .first()
                .and_then(|e| StreamId::parse(&e.id))
                .map_or(0, |id| id.ms);
            let age = Duration::from_millis(now_ms().saturating_sub(oldest));
            if let Some(left) = config.max_age.checked_sub(age) {
                let deadline = Instant::now() + left.min(config.max_age);
                while Instant::now() < deadline && !q.urgent() {
                    tokio::select! {
                        () = q.wake.notified() => {}
                        () = tokio::time::sleep_until(deadline.into()) => {}
                    }
                }
            }
            let more = q.read(">", config.max_batch - batch.len()).await?;
            batch.extend(more);
        }
        self.process(shared, q, batch).await?;
        Ok(Outcome::Busy)
    }

    /// Renew the lease when due. Returns whether we still lead.
    async fn renew_if_due(&mut self, q: &DurableQueue, config: &WriteBehindConfig) -> bool {
        if !self.leader || self.renewed_at.elapsed() < config.claim_idle / 3 {
            return self.leader;
        }
        match q.renew(config.claim_idle).await {
            Ok(true) => self.renewed_at = Instant::now(),
            Ok(false) => {
                self.leader = false;
                tracing::warn!(stream = %q.stream, "lost the write-behind flusher lease; standing by");
            }
            Err(e) => {
                if self.renewed_at.elapsed() >= config.claim_idle {
                    self.leader = false;
                    tracing::warn!(stream = %q.stream, error = %e, "cannot renew the write-behind flusher lease; standing by");
                }
            }
        }
        self.leader
    }

    /// Coalesce, write (retrying), then acknowledge and delete.
    async fn process<V, C>(
        &mut self,
        shared: &Shared<V, C>,
        q: &DurableQueue,
        entries: Vec<Entry>,
    ) -> Result<()>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        C: Codec,
    {
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        // The batch is taken: report the stream's length (once per batch, not per poll).
        report_depth(shared, q).await;
        let mut batch: Batch<V> = Vec::with_capacity(entries.len());
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut dead = Vec::new();
        for e in &entries {
            let Some(fields) = &e.fields else {
                continue;
            };
            match decode::<V, C>(fields) {
                Ok((key, value)) => match index.get(&key) {
                    Some(&i) => batch[i].1 = value,
                    None => {
                        index.insert(key.clone(), batch.len());
                        batch.push((key, value));
                    }
                },
                Err(reason) => dead.push((e, reason)),
            }
        }
        if !dead.is_empty() {
            q.dead_letter(&dead).await?;
            add(&shared.stats.dead_lettered, dead.len() as u64);
            for (e, reason) in &dead {
                tracing::error!(
                    stream = %q.stream,
                    id = %e.id,
                    error = %reason,
                    "write-behind entry cannot be decoded; moved to {}",
                    q.dead
                );
            }
        }
        if !batch.is_empty() && !self.write(shared, q, batch).await {
            // Lost the lease while the writer was failing: the entries stay pending for
            // the next flusher.
            return Ok(());
        }
        q.ack(&ids).await?;
        report_depth(shared, q).await;
        Ok(())
    }

    /// Call the writer until it succeeds (renewing the lease meanwhile). Returns false when
    /// the lease was lost before a success.
    async fn write<V, C>(
        &mut self,
        shared: &Shared<V, C>,
        q: &DurableQueue,
        batch: Batch<V>,
    ) -> bool
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        C: Codec,
    {
        let config = &shared.config;
        let renew_every = (config.claim_idle / 3).max(Duration::from_millis(10));
        let n = batch.len() as u64;
        let mut attempt: u64 = 0;
        loop {
            attempt += 1;
            let call = writer::call(&*shared.writer, batch.clone());
            tokio::pin!(call);
            let result = loop {
                tokio::select! {
                    r = &mut call => break r,
                    () = tokio::time::sleep(renew_every) => {
                        self.renew_if_due(q, config).await;
                    }
                }
            };
            match result {
                Ok(()) => {
                    add(&shared.stats.batches, 1);
                    add(&shared.stats.written, n);
                    self.backoff.reset();
                    return true;
                }
                Err(e) => {
                    add(&shared.stats.failures, 1);
                    let delay = self.backoff.next_delay();
                    tracing::warn!(
                        stream = %q.stream,
                        entries = n,
                        attempt,
                        retry_in_ms = delay.as_millis() as u64,
                        error = %e,
                        "write-behind batch writer failed; retrying (writes are never dropped)"
                    );
                    let until = Instant::now() + delay;
                    while Instant::now() < until {
                        let left = until.saturating_duration_since(Instant::now());
                        tokio::time::sleep(left.min(renew_every)).await;
                        if !self.renew_if_due(q, config).await {
                            return false;
                        }
                    }
                    if !self.leader {
                        return false;
                    }
                }
            }
        }
    }

    /// Give unknown `XADD`s their bound, and invalidate the keys whose writes up to their
    /// bound are all written. Redis errors leave the repairs for the next round.
    async fn check_repairs<V, C>(&mut self, shared: &Shared<V, C>, q: &DurableQueue)
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        C: Codec,
    {
        if self.repairs_at.elapsed() < shared.config.poll_interval {
            return;
        }
        self.repairs_at = Instant::now();
        let unresolved = {
            let repairs = q.lock_repairs();
            if repairs.is_empty() {
                return;
            }
            repairs.unresolved(repairs.marks)
        };
        if unresolved {
            if let Err(e) = q.resolve_repairs().await {
                tracing::debug!(stream = %q.stream, error = %e, "write-behind repairs: cannot read the stream yet");
                return;
            }
        }
        let oldest = match q.oldest().await {
            Ok(oldest) => oldest,
            Err(e) => {
                tracing::debug!(stream = %q.stream, error = %e, "write-behind repairs: cannot read the stream yet");
                return;
            }
        };
        // Entries only leave the stream and new ones get higher ids: below the oldest entry
        // read now, nothing will ever be left.
        q.run_repairs(shared, |bound| oldest.is_none_or(|o| bound < o), false)
            .await;
    }
}

/// Key and value of an entry, or why they cannot be read.
/// Report the stream's length (every instance's entries not yet written) as
/// [`CacheEvent::WriteBehindDepth`], when an observer listens. A failed `XLEN` reports nothing.
async fn report_depth<V, C>(shared: &Shared<V, C>, q: &DurableQueue)
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    if !shared.cache.is_observed() {
        return;
    }
    match q.depth().await {
        Ok(depth) => shared.cache.report(CacheEvent::WriteBehindDepth { depth }),
        Err(e) => {
            tracing::debug!(stream = %q.stream, error = %e, "write-behind: XLEN failed; depth not reported");
        }
    }
}

fn decode<V, C>(fields: &HashMap<String, Vec<u8>>) -> std::result::Result<(String, Arc<V>), String>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    let key = fields
        .get("k")
        .ok_or("no key field")
        .and_then(|k| std::str::from_utf8(k).map_err(|_| "key is not UTF-8"))?
        .to_owned();
    let codec = fields
        .get("c")
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse::<u8>().ok())
        .ok_or("no codec field")?;
    let bytes = fields.get("v").ok_or("no value field")?;
    let value: V = C::decode_id(codec, bytes).map_err(|e| e.to_string())?;
    Ok((key, Arc::new(value)))
}

// --- reply parsing (RESP2 arrays and RESP3 maps alike) ---

fn items(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a.iter().collect(),
        Value::Map(m) => m.iter().flat_map(|(k, v)| [k, v]).collect(),
        Value::Attribute { data, .. } => items(data),
        _ => Vec::new(),
    }
}

/// The elements of a list (a map's values, for RESP3 replies keyed by name).
fn items_of(v: &Value) -> Vec<&Value> {
    match v {
        Value::Map(m) => m.iter().map(|(_, v)| v).collect(),
        other => items(other),
    }
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.as_bytes().to_vec()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes().to_vec()),
        Value::Okay => Some(b"OK".to_vec()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b).ok())
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other).and_then(|t| t.parse().ok()),
    }
}

/// A flat `[name, value, ...]` list or a map, as name → value.
fn pairs(v: &Value) -> HashMap<String, &Value> {
    let flat = items(v);
    flat.chunks(2)
        .filter_map(|c| match c {
            [k, v] => text(k).map(|k| (k, *v)),
            _ => None,
        })
        .collect()
}

/// `[id, [field, value, ...] | nil]`.
fn parse_entry(v: &Value) -> Option<Entry> {
    let parts = items(v);
    let id = text(parts.first()?)?;
    let fields = match parts.get(1) {
        None | Some(Value::Nil) => None,
        Some(f) => Some(
            items(f)
                .chunks(2)
                .filter_map(|c| match c {
                    [k, v] => Some((text(k)?, bytes(v)?)),
                    _ => None,
                })
                .collect(),
        ),
    };
    Some(Entry { id, fields })
}

/// A list of entries (`XRANGE`, `XREVRANGE`).
fn parse_entries(v: &Value) -> Vec<Entry> {
    items(v).into_iter().filter_map(parse_entry).collect()
}

/// An `XREADGROUP` reply: nil, `[[stream, entries]]`, or `{stream: entries}`.
fn parse_read(v: &Value) -> Vec<Entry> {
    match v {
        Value::Map(m) => m.iter().flat_map(|(_, e)| parse_entries(e)).collect(),
        Value::Array(streams) => streams
            .iter()
            .flat_map(|s| match items(s).get(1) {
                Some(e) => parse_entries(e),
                None => Vec::new(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn stream_ids_order_numerically() {
        let a = StreamId::parse("9-5");
        let b = StreamId::parse("10-0");
        assert!(a.is_some() && b.is_some());
        assert!(a < b);
        assert_eq!(
            StreamId::parse("10-0").map(|i| i.to_string()),
            Some("10-0".into())
        );
        assert_eq!(StreamId::parse("x"), None);
    }

    fn id(ms: u64, seq: u64) -> StreamId {
        StreamId { ms, seq }
    }

    #[test]
    fn repairs_keep_one_entry_per_key_with_the_highest_bound() {
        let mut r = Repairs::default();
        for i in 0..10_000u64 {
            r.mark("hot", Some(id(100 + i, 0)));
            r.mark(&format!("k{}", i % 3), Some(id(5, i)));
        }
        assert_eq!(r.keys.len(), 4, "one entry per key");
        assert_eq!(r.keys.get("hot").and_then(|e| e.bound), Some(id(10_099, 0)));
        // A lower bound marked later does not lower it.
        r.mark("hot", Some(id(1, 0)));
        assert_eq!(r.keys.get("hot").and_then(|e| e.bound), Some(id(10_099, 0)));
        assert_eq!(r.max_bound(), Some(id(10_099, 0)));
        // Due only once nothing up to the bound is left.
        let mut due = r.due(|b| b < id(50, 0));
        due.sort();
        assert_eq!(due, ["k0", "k1", "k2"]);
        assert!(r.take("k0", |b| b < id(50, 0)));
        assert!(!r.take("hot", |b| b < id(50, 0)), "not due yet");
        assert!(!r.take("k0", |_| true), "taken once");
        r.clear("k1");
        assert_eq!(r.keys.len(), 2);
    }

    #[test]
    fn an_unknown_outcome_takes_the_newest_id_read_after_its_mark() {
        let mut r = Repairs::default();
        r.mark("a", Some(id(3, 0)));
        r.mark("a", None);
        let upto = r.marks;
        assert!(r.unresolved(upto));
        assert!(r.due(|_| true).is_empty(), "no bound, not due");
        // A mark after the read began is not covered by what that read returns.
        r.mark("b", None);
        r.resolve(upto, Some(id(9, 1)));
        assert_eq!(r.keys.get("a").and_then(|e| e.bound), Some(id(9, 1)));
        assert_eq!(r.keys.get("b").and_then(|e| e.bound), None);
        assert!(r.unresolved(r.marks));
        // An empty stream: nothing the unknown XADD may have added is left.
        r.resolve(r.marks, None);
        assert_eq!(r.keys.get("b").and_then(|e| e.bound), Some(StreamId::ZERO));
        assert_eq!(r.due(|b| b < id(1, 0)), ["b"]);
        // An unknown outcome after a known bound waits for a new read.
        r.mark("a", None);
        assert!(r.unresolved(r.marks));
        assert_eq!(r.keys.get("a").and_then(|e| e.bound), None);
        r.clear("a");
        r.clear("b");
        assert!(r.is_empty());
    }

    #[test]
    fn read_replies_parse_in_both_protocols() {
        let entry = Value::Array(vec![
            bulk("1-1"),
            Value::Array(vec![
                bulk("k"),
                bulk("a"),
                bulk("c"),
                bulk("2"),
                bulk("v"),
                bulk("x"),
            ]),
        ]);
        let deleted = Value::Array(vec![bulk("1-2"), Value::Nil]);
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![entry.clone(), deleted.clone()]),
        ])]);
        let resp3 = Value::Map(vec![(bulk("s"), Value::Array(vec![entry, deleted]))]);
        for v in [resp2, resp3] {
            let e = parse_read(&v);
            assert_eq!(e.len(), 2);
            assert_eq!(e[0].id, "1-1");
            let f = e[0].fields.as_ref();
            assert_eq!(
                f.and_then(|f| f.get("k")).map(Vec::as_slice),
                Some(&b"a"[..])
            );
            assert!(e[1].fields.is_none());
        }
        assert!(parse_read(&Value::Nil).is_empty());
    }
}
