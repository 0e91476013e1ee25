//! The repair guard: a write whose cache update failed, was abandoned or (durable mode) may
//! have reached the stream unseen asks for its key to be invalidated once the source has it.

#[cfg(feature = "redis")]
use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(feature = "redis")]
use crate::durable;
use crate::{Queue, Shared};

/// Which queued write a repair waits for.
pub(crate) enum Pending {
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
pub(crate) struct RepairGuard<'a, V, C> {
    shared: &'a Shared<V, C>,
    key: &'a str,
    pending: Option<Pending>,
    /// Durable mode: an `XADD` of this write is sent and not answered.
    #[cfg(feature = "redis")]
    pub(crate) in_flight: AtomicBool,
}

impl<'a, V, C> RepairGuard<'a, V, C> {
    pub(crate) fn new(shared: &'a Shared<V, C>, key: &'a str, pending: Pending) -> Self {
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
    pub(crate) fn set(&mut self, pending: Pending) {
        self.pending = Some(pending);
    }

    /// The write was refused: nothing was queued, nothing to repair.
    #[cfg(feature = "redis")]
    pub(crate) fn cancel(mut self) {
        self.pending = None;
    }

    pub(crate) fn finish(mut self, cache_updated: bool) {
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
