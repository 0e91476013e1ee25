//! Repairs in durable mode: a key whose cache may hold an older value than its queued write
//! (the cache update failed or was abandoned, or the `XADD`'s outcome is unknown) is
//! invalidated once no entry up to a bound is left in the stream.

use std::collections::HashMap;

use cache_core::{Codec, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{DurableQueue, StreamId};
use crate::Shared;

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
pub(super) struct Repairs {
    keys: HashMap<String, Repair>,
    /// Marks so far; each mark takes the next number.
    pub(super) marks: u64,
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
    pub(super) fn unresolved(&self, upto: u64) -> bool {
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
    pub(super) fn max_bound(&self) -> Option<StreamId> {
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

impl DurableQueue {
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
    pub(super) async fn resolve_repairs(&self) -> Result<Option<StreamId>> {
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
    pub(super) async fn run_repairs<V, C>(
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

    /// The flusher's round: give unknown `XADD`s their bound, and invalidate the keys whose
    /// writes up to their bound are all written. Redis errors leave the repairs for the next
    /// round.
    pub(super) async fn repair_written<V, C>(&self, shared: &Shared<V, C>)
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        C: Codec,
    {
        let unresolved = {
            let repairs = self.lock_repairs();
            if repairs.is_empty() {
                return;
            }
            repairs.unresolved(repairs.marks)
        };
        if unresolved {
            if let Err(e) = self.resolve_repairs().await {
                tracing::debug!(stream = %self.stream, error = %e, "write-behind repairs: cannot read the stream yet");
                return;
            }
        }
        let oldest = match self.oldest().await {
            Ok(oldest) => oldest,
            Err(e) => {
                tracing::debug!(stream = %self.stream, error = %e, "write-behind repairs: cannot read the stream yet");
                return;
            }
        };
        // Entries only leave the stream and new ones get higher ids: below the oldest entry
        // read now, nothing will ever be left.
        self.run_repairs(shared, |bound| oldest.is_none_or(|o| bound < o), false)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
