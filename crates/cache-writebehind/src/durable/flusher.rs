//! The durable flusher: holds the lease, reads the stream (its own pending entries, then other
//! consumers' idle ones, then new ones), writes coalesced batches, acknowledges them, and
//! runs the repairs that are due.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cache_core::{CacheEvent, Codec, ErrorKind, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::reply::Entry;
use super::{DurableQueue, StreamId};
use crate::writer::{self, Backoff, Batch};
use crate::{add, Shared, WriteBehindConfig};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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

    /// Run the repair round ([`DurableQueue::repair_written`]), at most once per
    /// `poll_interval`.
    async fn check_repairs<V, C>(&mut self, shared: &Shared<V, C>, q: &DurableQueue)
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        C: Codec,
    {
        if self.repairs_at.elapsed() < shared.config.poll_interval {
            return;
        }
        self.repairs_at = Instant::now();
        q.repair_written(shared).await;
    }
}

/// Report the stream's length (every instance's entries not yet written) as
/// a [`CacheEvent::Gauge`] named [`crate::DEPTH_GAUGE`], when an observer listens. A failed `XLEN` reports nothing.
async fn report_depth<V, C>(shared: &Shared<V, C>, q: &DurableQueue)
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    if !shared.cache.is_observed() {
        return;
    }
    match q.depth().await {
        Ok(depth) => shared.cache.report(CacheEvent::Gauge {
            name: crate::DEPTH_GAUGE,
            value: depth,
        }),
        Err(e) => {
            tracing::debug!(stream = %q.stream, error = %e, "write-behind: XLEN failed; depth not reported");
        }
    }
}

/// Key and value of an entry, or why they cannot be read.
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
