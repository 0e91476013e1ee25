//! Auto-recovery: L2 writes and deletes that failed while Redis was away are settled when it
//! is back, so instances converge. Every failed operation is settled the same way: the key
//! (and its fill lease) is deleted in L2 and the change announced. A delete is right whatever
//! else happened meanwhile: another instance may have written the key during the same outage,
//! and replaying our value after theirs would leave L2 with the older one; after a delete the
//! next read loads the source's value. A failed tagged write still adds the key to its tags,
//! so a later `invalidate_tag` finds the copies that instances keep in L1.
//!
//! Bounded: past `capacity` keys the oldest entry is dropped (counted and logged; that key
//! then converges by TTL).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use crate::bus::BusRuntime;
use crate::remote::RemoteStore;

/// What to settle for one key.
#[derive(Debug, Clone)]
pub(crate) struct Replay {
    /// Delete the key and `also` (its fill lease).
    pub(crate) also: Vec<String>,
    /// Add the key to these tag index sets (kept `tag_ttl`).
    pub(crate) tags: Vec<String>,
    pub(crate) tag_ttl: Duration,
}

impl Replay {
    /// Delete the key and `also`, then tag it.
    pub(crate) fn delete(also: Vec<String>, tags: Vec<String>, tag_ttl: Duration) -> Self {
        Replay {
            also,
            tags,
            tag_ttl,
        }
    }
}

#[derive(Debug, Clone)]
struct Pending {
    op: Replay,
    seq: u64,
    /// Where to announce the replayed change: (bus channel, user key).
    announce: Option<(String, String)>,
}

/// The queue of failed L2 operations, keyed by full key.
#[derive(Debug)]
pub(crate) struct RecoveryQueue {
    state: Mutex<QueueState>,
    capacity: usize,
    pub(crate) dropped: AtomicU64,
    pub(crate) replayed: AtomicU64,
    next: AtomicU64,
}

#[derive(Debug, Default)]
struct QueueState {
    by_key: HashMap<String, Pending>,
    order: BTreeMap<u64, String>,
}

/// Counters of the recovery queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryStats {
    /// Keys waiting to be replayed.
    pub pending: u64,
    /// Operations replayed successfully.
    pub replayed: u64,
    /// Keys dropped because the queue was full.
    pub dropped: u64,
}

impl RecoveryQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        RecoveryQueue {
            state: Mutex::new(QueueState::default()),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            next: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `op` for `full_key`, replacing anything older for that key.
    pub(crate) fn push(&self, full_key: String, op: Replay, announce: Option<(String, String)>) {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let mut op = op;
        let mut s = self.lock();
        if let Some(old) = s.by_key.remove(&full_key) {
            s.order.remove(&old.seq);
            // The newer operation replaces the older, but the key keeps every tag it was
            // written with: a later `invalidate_tag` must still find it.
            for t in old.op.tags {
                if !op.tags.contains(&t) {
                    op.tags.push(t);
                }
            }
            op.tag_ttl = op.tag_ttl.max(old.op.tag_ttl);
        }
        s.order.insert(seq, full_key.clone());
        s.by_key.insert(full_key, Pending { op, seq, announce });
        while s.by_key.len() > self.capacity {
            let Some((&oldest, _)) = s.order.iter().next() else {
                break;
            };
            if let Some(k) = s.order.remove(&oldest) {
                s.by_key.remove(&k);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("recovery queue full: dropped the oldest pending L2 write");
            }
        }
    }

    /// Forget a key (a later successful write made its pending entry obsolete).
    /// A key with tags still to add stays queued as it is: until it joins its tags'
    /// index sets, an `invalidate_tag` made on another instance misses it, so the settle
    /// must still delete it everywhere (and announce it) after tagging it.
    pub(crate) fn forget(&self, full_key: &str) {
        let mut s = self.lock();
        if s.by_key.get(full_key).is_some_and(|p| p.op.tags.is_empty()) {
            if let Some(old) = s.by_key.remove(full_key) {
                s.order.remove(&old.seq);
            }
        }
    }

    /// The full keys waiting to be added to the tag index set `tag_key`.
    pub(crate) fn tagged(&self, tag_key: &str) -> Vec<String> {
        let s = self.lock();
        s.by_key
            .iter()
            .filter(|(_, p)| p.op.tags.iter().any(|t| t == tag_key))
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    pub(crate) fn stats(&self) -> RecoveryStats {
        RecoveryStats {
            pending: self.len() as u64,
            replayed: self.replayed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    /// Replay in order until the first failure. Returns how many were replayed.
    pub(crate) async fn replay(&self, l2: &dyn RemoteStore, bus: Option<&BusRuntime>) -> usize {
        let batch: Vec<(String, Pending)> = {
            let s = self.lock();
            s.order
                .values()
                .take(256)
                .filter_map(|k| s.by_key.get(k).map(|p| (k.clone(), p.clone())))
                .collect()
        };
        let mut done = 0;
        for (key, pending) in batch {
            if replay_one(l2, &key, &pending.op).await.is_err() {
                break;
            }
            {
                let mut s = self.lock();
                if s.by_key.get(&key).is_some_and(|p| p.seq == pending.seq) {
                    s.by_key.remove(&key);
                    s.order.remove(&pending.seq);
                }
            }
            if let (Some(bus), Some((channel, user_key))) = (bus, &pending.announce) {
                // This instance's own copy goes too: an invalidation made elsewhere meanwhile
                // (a tag's, whose index did not list the key yet) may have missed it.
                bus.invalidate_here(channel, std::slice::from_ref(user_key));
                bus.publish_keys(channel, vec![user_key.clone()]);
            }
            self.replayed.fetch_add(1, Ordering::Relaxed);
            done += 1;
        }
        done
    }
}

/// Settle one queued operation in L2.
async fn replay_one(l2: &dyn RemoteStore, key: &str, op: &Replay) -> crate::error::Result<()> {
    let mut keys = vec![key.to_owned()];
    keys.extend(op.also.iter().cloned());
    l2.delete(&keys).await?;
    for tag in &op.tags {
        l2.tag_add(tag, key, op.tag_ttl).await?;
    }
    Ok(())
}

/// The replay loop: every `every`, while there is something to replay. Stops when the engine
/// is gone.
pub(crate) async fn replay_loop(
    queue: Weak<RecoveryQueue>,
    l2: Weak<dyn RemoteStore>,
    bus: Weak<BusRuntime>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (Some(queue), Some(l2)) = (queue.upgrade(), l2.upgrade()) else {
            return;
        };
        if queue.len() == 0 {
            continue;
        }
        let bus = bus.upgrade();
        let n = queue.replay(l2.as_ref(), bus.as_deref()).await;
        if n > 0 {
            tracing::info!(
                replayed = n,
                pending = queue.len(),
                "replayed L2 writes after an outage"
            );
        }
    }
}
