//! The in-memory queue and its flusher.
//!
//! The queue is a map of waiting slots (one per key, holding the newest value) plus the keys
//! in the order their slots were created. The flusher takes batches from the front and
//! writes them one at a time, so a key taken for writing and written again meanwhile gets a
//! new slot at the back, written after the batch in flight: per-key order holds. Progress is
//! published as `done`: every slot created before position `done` is written.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use cache_core::{CacheEvent, Codec, Error, ErrorKind, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::writer::{self, Backoff, Batch};
use crate::{add, closed, queue_full, QueuePolicy, Shared};

struct Slot<V> {
    value: Arc<V>,
    since: Instant,
    /// The cache update of a write coalesced into this slot failed: invalidate the key once
    /// the slot is written.
    repair: bool,
}

struct State<V> {
    slots: HashMap<String, Slot<V>>,
    /// Keys of `slots` by position, oldest first.
    order: VecDeque<(u64, String)>,
    next_pos: u64,
    /// Entries of the batch being written.
    in_flight: usize,
    /// A flush waits for every position below this.
    flush_target: u64,
    /// `shutdown` started: refuse writes, drain, stop.
    closing: bool,
    /// The last handle was dropped: drain, stop.
    detached: bool,
    /// Keys to invalidate once everything taken so far is written.
    repairs: Vec<String>,
}

pub(crate) struct MemoryQueue<V> {
    state: Mutex<State<V>>,
    /// Wakes the flusher.
    wake: Notify,
    /// Wakes writers waiting for room.
    room: Notify,
    done: watch::Receiver<u64>,
}

impl<V> MemoryQueue<V> {
    pub(crate) fn new() -> (Self, watch::Sender<u64>) {
        let (tx, rx) = watch::channel(0);
        let q = MemoryQueue {
            state: Mutex::new(State {
                slots: HashMap::new(),
                order: VecDeque::new(),
                next_pos: 0,
                in_flight: 0,
                flush_target: 0,
                closing: false,
                detached: false,
                repairs: Vec::new(),
            }),
            wake: Notify::new(),
            room: Notify::new(),
            done: rx,
        };
        (q, tx)
    }

    fn lock(&self) -> MutexGuard<'_, State<V>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `value` for `key`: replace a waiting value, or take a new slot (waiting for room
    /// or refusing when full, by policy).
    pub(crate) async fn enqueue<C>(
        &self,
        shared: &Shared<V, C>,
        key: &str,
        value: Arc<V>,
    ) -> Result<()>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        C: Codec,
    {
        let capacity = shared.config.capacity;
        let trigger = shared.config.max_batch.min(capacity);
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                if st.closing {
                    return Err(closed());
                }
                if let Some(slot) = st.slots.get_mut(key) {
                    slot.value = value;
                    add(&shared.stats.accepted, 1);
                    add(&shared.stats.coalesced, 1);
                    return Ok(());
                }
                if st.slots.len() < capacity {
                    let pos = st.next_pos;
                    st.next_pos += 1;
                    st.slots.insert(
                        key.to_owned(),
                        Slot {
                            value,
                            since: Instant::now(),
                            repair: false,
                        },
                    );
                    st.order.push_back((pos, key.to_owned()));
                    let len = st.order.len();
                    let depth = (st.slots.len() + st.in_flight) as u64;
                    drop(st);
                    add(&shared.stats.accepted, 1);
                    shared.cache.report(CacheEvent::Gauge {
                        name: crate::DEPTH_GAUGE,
                        value: depth,
                    });
                    // The flusher needs to know when a deadline starts or a batch is full.
                    if len == 1 || len >= trigger {
                        self.wake.notify_one();
                    }
                    return Ok(());
                }
                if shared.config.policy == QueuePolicy::Reject {
                    drop(st);
                    add(&shared.stats.rejected, 1);
                    return Err(queue_full(capacity));
                }
            }
            self.wake.notify_one();
            notified.await;
        }
    }

    /// The cache update of the write just queued for `key` failed.
    pub(crate) fn mark_repair(&self, key: &str) {
        let mut st = self.lock();
        if let Some(slot) = st.slots.get_mut(key) {
            slot.repair = true;
        } else {
            // Already taken by the flusher: repair after the batch in flight.
            st.repairs.push(key.to_owned());
            drop(st);
            self.wake.notify_one();
        }
    }

    pub(crate) async fn flush(&self) -> Result<()> {
        let target = {
            let mut st = self.lock();
            st.flush_target = st.flush_target.max(st.next_pos);
            st.next_pos
        };
        if *self.done.borrow() >= target {
            return Ok(());
        }
        self.wake.notify_one();
        let mut done = self.done.clone();
        let result = done.wait_for(|d| *d >= target).await.is_ok();
        if result || *self.done.borrow() >= target {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Closed,
                "the write-behind flusher stopped before the flush completed",
            ))
        }
    }

    pub(crate) fn close(&self) {
        self.lock().closing = true;
        self.room.notify_waiters();
        self.wake.notify_one();
    }

    /// The last handle is gone: drain and stop. Returns the number of pending writes.
    pub(crate) fn detach(&self) -> u64 {
        let mut st = self.lock();
        st.detached = true;
        let pending = (st.slots.len() + st.in_flight) as u64;
        drop(st);
        self.room.notify_waiters();
        self.wake.notify_one();
        pending
    }

    pub(crate) fn depth(&self) -> u64 {
        let st = self.lock();
        (st.slots.len() + st.in_flight) as u64
    }
}

enum Step<V> {
    /// Write this batch (and invalidate these keys after it).
    Write(Batch<V>, Vec<String>),
    /// Sleep until woken or until the deadline.
    Wait(Option<Instant>),
    Exit,
}

/// The flusher: runs until the queue is closed (or detached) and empty.
pub(crate) async fn run<V, C>(shared: Arc<Shared<V, C>>, done: watch::Sender<u64>)
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    let Some(q) = shared.memory() else {
        return;
    };
    let config = &shared.config;
    let trigger = config.max_batch.min(config.capacity);
    let mut backoff = Backoff::new(config.retry_min, config.retry_max);
    loop {
        // Here nothing is in flight: everything taken so far is written.
        let (step, repairs) = {
            let mut st = q.lock();
            let repairs = std::mem::take(&mut st.repairs);
            let written_below = st.order.front().map_or(st.next_pos, |(pos, _)| *pos);
            done.send_if_modified(|d| {
                let changed = *d != written_below;
                *d = written_below;
                changed
            });
            let step = match st.order.front() {
                None if st.closing || st.detached => Step::Exit,
                None => Step::Wait(None),
                Some((pos, key)) => {
                    let urgent = st.closing
                        || st.detached
                        || st.flush_target > *pos
                        || st.order.len() >= trigger;
                    let deadline = st.slots.get(key).map(|s| s.since + config.max_age);
                    match deadline {
                        Some(d) if !urgent && d > Instant::now() => Step::Wait(Some(d)),
                        _ => {
                            let n = st.order.len().min(config.max_batch);
                            let mut batch = Vec::with_capacity(n);
                            let mut after = Vec::new();
                            for _ in 0..n {
                                let Some((_, key)) = st.order.pop_front() else {
                                    break;
                                };
                                if let Some(slot) = st.slots.remove(&key) {
                                    if slot.repair {
                                        after.push(key.clone());
                                    }
                                    batch.push((key, slot.value));
                                }
                            }
                            st.in_flight = batch.len();
                            Step::Write(batch, after)
                        }
                    }
                }
            };
            (step, repairs)
        };
        for key in repairs {
            shared.repair(&key).await;
        }
        match step {
            Step::Exit => {
                tracing::debug!(cache = %shared.cache.name(), "write-behind flusher drained and stopped");
                return;
            }
            Step::Wait(None) => q.wake.notified().await,
            Step::Wait(Some(deadline)) => {
                tokio::select! {
                    () = q.wake.notified() => {}
                    () = tokio::time::sleep_until(deadline.into()) => {}
                }
            }
            Step::Write(batch, after) => {
                q.room.notify_waiters();
                write_until_ok(&shared, batch, &mut backoff).await;
                let depth = {
                    let mut st = q.lock();
                    st.in_flight = 0;
                    st.slots.len() as u64
                };
                shared.cache.report(CacheEvent::Gauge {
                    name: crate::DEPTH_GAUGE,
                    value: depth,
                });
                for key in after {
                    shared.repair(&key).await;
                }
            }
        }
    }
}

/// Call the writer until it succeeds, backing off between attempts. Never gives up.
async fn write_until_ok<V, C>(shared: &Shared<V, C>, batch: Batch<V>, backoff: &mut Backoff)
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    let n = batch.len() as u64;
    let mut attempt: u64 = 0;
    loop {
        attempt += 1;
        match writer::call(&*shared.writer, batch.clone()).await {
            Ok(()) => {
                add(&shared.stats.batches, 1);
                add(&shared.stats.written, n);
                if attempt > 1 {
                    tracing::info!(
                        cache = %shared.cache.name(),
                        entries = n,
                        attempts = attempt,
                        "write-behind batch written after retries"
                    );
                }
                backoff.reset();
                return;
            }
            Err(e) => {
                add(&shared.stats.failures, 1);
                let delay = backoff.next_delay();
                tracing::warn!(
                    cache = %shared.cache.name(),
                    entries = n,
                    attempt,
                    retry_in_ms = delay.as_millis() as u64,
                    error = %e,
                    "write-behind batch writer failed; retrying (writes are never dropped)"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}
