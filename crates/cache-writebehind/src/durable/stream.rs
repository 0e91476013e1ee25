//! The stream commands: `XADD` (by a script that refuses when the stream is full), the
//! consumer group (`XGROUP`, `XREADGROUP`, `XPENDING`, `XAUTOCLAIM`, `XINFO`, `XACK` + `XDEL`),
//! the dead-letter stream, and the stream's length and bounds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cache_core::{Codec, Error, ErrorKind, Result};
use cache_redis::redis::{self, Value};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::call::{ms, redis_error, Failed};
use super::reply::{int, items, items_of, pairs, parse_entries, parse_read, text, Entry};
use super::{DurableQueue, StreamId, Urgent};
use crate::{add, closed, queue_full, QueuePolicy, Shared};

/// The consumer group of every write-behind stream.
const GROUP: &str = "wb";

/// Add an entry unless the stream is full. `KEYS = [stream]`,
/// `ARGV = [capacity, key, codec id, value]`; returns the entry id or nil when full.
pub(super) const ADD_LUA: &str = r"
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  return false
end
return redis.call('XADD', KEYS[1], '*', 'k', ARGV[2], 'c', ARGV[3], 'v', ARGV[4])
";

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

impl DurableQueue {
    pub(super) async fn ensure_group(&self) -> Result<()> {
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

    /// Entries in the stream: everything not yet written (all instances).
    pub(crate) async fn depth(&self) -> Result<u64> {
        let mut cmd = redis::cmd("XLEN");
        cmd.arg(&self.stream);
        self.query("XLEN", &cmd).await
    }

    /// The newest entry still in the stream.
    pub(super) async fn newest(&self) -> Result<Option<StreamId>> {
        self.first_id("XREVRANGE", "+", "-").await
    }

    /// Whether any entry up to `id` is still in the stream (not yet written).
    pub(super) async fn any_up_to(&self, id: StreamId) -> Result<bool> {
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
    pub(super) async fn oldest(&self) -> Result<Option<StreamId>> {
        self.first_id("XRANGE", "-", "+").await
    }

    /// The id of the first entry `op` (`XRANGE` or `XREVRANGE`) returns from `start` to `end`.
    async fn first_id(&self, op: &'static str, start: &str, end: &str) -> Result<Option<StreamId>> {
        let mut cmd = redis::cmd(op);
        cmd.arg(&self.stream)
            .arg(start)
            .arg(end)
            .arg("COUNT")
            .arg(1);
        let v: Value = self.query(op, &cmd).await?;
        Ok(parse_entries(&v)
            .first()
            .and_then(|e| StreamId::parse(&e.id)))
    }

    /// `XREADGROUP` from `from` (`0`: our own pending entries; `>`: new ones).
    pub(super) async fn read(&self, from: &str, count: usize) -> Result<Vec<Entry>> {
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
    pub(super) async fn pending_elsewhere(&self) -> Result<u64> {
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
    pub(super) async fn autoclaim(&self, idle: Duration, count: usize) -> Result<usize> {
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
    pub(super) async fn forget_idle_consumers(&self, idle: Duration) -> Result<()> {
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
    pub(super) async fn ack(&self, ids: &[String]) -> Result<()> {
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
        self.transaction("XACK/XDEL", &pipe).await
    }

    /// Keep undecodable entries in the dead-letter stream (with the reason).
    pub(super) async fn dead_letter(&self, dead: &[(&Entry, String)]) -> Result<()> {
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
        self.transaction("XADD (dead letter)", &pipe).await
    }
}
