//! Coalesced single-key reads: concurrent `GET`s through one store go out together
//! ([`RedisStore`](crate::RedisStore) here, `ClusterStore` in `cache-cluster`, through
//! [`Coalesced`]).
//!
//! The rule the invalidation bus uses for its publishes: a read that finds a free slot (at
//! most [`MAX_IN_FLIGHT`] reads in flight per store) is sent at once, as a plain `GET` from its
//! own task (a lone reader pays nothing); reads that arrive while the slots are taken queue
//! up, and when a read in flight is answered everything queued goes out as one `MGET`, sent by
//! a task of its own, again and again until the queue is empty. No timer, so no added
//! latency.
//!
//! Every reader keeps its own bound: it waits at most `response_timeout` from its own call,
//! queue time included, and then gets [`ErrorKind::Timeout`] (a frozen server costs each
//! reader one timeout, not two).

use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use cache_core::{Error, ErrorKind, LeaseRead, Result};
use tokio::sync::oneshot;

/// A store whose single-key reads are coalesced: its queue, and the two ways it reads.
pub trait Coalesced: Clone + Send + Sync + 'static {
    /// The queue of this store's reads (one per store, shared by its clones).
    fn reads(&self) -> &Reads;
    /// One key, sent now.
    fn read_one(&self, key: &str) -> impl Future<Output = Answer> + Send;
    /// Many keys in one request (or one per group the store needs), aligned with `keys`.
    fn read_batch(
        &self,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<Option<Vec<u8>>>>> + Send;
    /// How long a reader waits at most, queue time included.
    fn response_timeout(&self) -> Duration;
    /// The endpoint, for error messages.
    fn endpoint(&self) -> &str;
}

/// At most this many keys per `MGET`; the rest wait for the next one.
const MAX_BATCH: usize = 512;

/// Reads (single `GET`s or batches) in flight at once per store; reads beyond queue up. Two
/// measured no better than one (`cargo xtask bench`, l2_hit at 16, 64 and 256 tasks).
const MAX_IN_FLIGHT: usize = 1;

/// One read's answer.
pub type Answer = Result<Option<Vec<u8>>>;

/// The queue of one store's reads.
#[derive(Default)]
pub struct Reads {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Reads in flight (each sender hands the queue over when it is answered).
    sending: usize,
    queued: Vec<(String, oneshot::Sender<Answer>)>,
}

impl Reads {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// A sender gives its slot back. When none is left, no one would send what is still
    /// queued (a sender that could not go on): those readers get a `Connection` error (their
    /// answer is dropped) and the next read leads again.
    fn give_back(&mut self) {
        self.sending = self.sending.saturating_sub(1);
        if self.sending == 0 {
            self.queued.clear();
        }
    }
}

/// Held while a leader's `GET` (or a batch) is in flight: dropped, it starts the next batch if
/// reads queued meanwhile, or marks the store idle. Runs on drop so that a cancelled reader
/// never leaves the queue stuck.
struct Handover<S: Coalesced> {
    store: Option<S>,
}

impl<S: Coalesced> Drop for Handover<S> {
    fn drop(&mut self) {
        let Some(store) = self.store.take() else {
            return;
        };
        let mut state = store.reads().lock();
        if !state.queued.is_empty() {
            // Its slot stays taken: the task sends the queue until it finds it empty. With no
            // runtime to send from (dropped outside one), the slot is given back below.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                drop(state);
                runtime.spawn(drain(store));
                return;
            }
        }
        state.give_back();
    }
}

/// Read `key` through `store`'s queue: at once when a slot is free, else with the reads
/// queued meanwhile, as one batch.
pub async fn read<S: Coalesced>(store: &S, key: &str) -> Answer {
    match read_or_alone(store, key, || store.read_one(key)).await {
        Read::Alone(answer) | Read::Batched(answer) => answer,
    }
}

/// How a read of [`read_or_alone`] went out.
pub enum Read<T> {
    /// A slot was free: the read went out alone, as the caller's own command.
    Alone(Result<T>),
    /// Queued: the `GET` answer from a batch.
    Batched(Answer),
}

/// Read `key` through `store`'s queue, but when a slot is free (the read would go out alone
/// as a plain `GET`) send `alone` instead: a command that does more for this one key in the
/// same round trip (read, or take the fill lease on a miss). Queued, the read gets its `GET`
/// answer from the batch and the caller does the rest.
pub async fn read_or_alone<S, T, Fut>(store: &S, key: &str, alone: impl FnOnce() -> Fut) -> Read<T>
where
    S: Coalesced,
    Fut: Future<Output = Result<T>>,
{
    let rx = match join(store, key) {
        Turn::Wait(rx) => rx,
        Turn::Lead(_handover) => {
            // `_handover` hands the queue over when dropped: answered, failed or cancelled.
            return Read::Alone(alone().await);
        }
    };
    Read::Batched(wait(store, rx).await)
}

/// [`RemoteStore::get_or_lease`](cache_core::RemoteStore::get_or_lease) through the queue:
/// `script` (the read, or the lease on a miss, in one round trip) when the read goes out
/// alone; queued, the batched `GET`, then `set_nx` on a miss.
pub async fn read_or_lease<S, A, L>(
    store: &S,
    key: &str,
    script: impl FnOnce() -> A,
    set_nx: impl FnOnce() -> L,
) -> Result<LeaseRead>
where
    S: Coalesced,
    A: Future<Output = Result<LeaseRead>>,
    L: Future<Output = Result<bool>>,
{
    match read_or_alone(store, key, script).await {
        Read::Alone(read) => read,
        Read::Batched(answer) => match answer? {
            Some(bytes) => Ok(LeaseRead::Value(bytes)),
            None if set_nx().await? => Ok(LeaseRead::Leased),
            None => Ok(LeaseRead::Busy),
        },
    }
}

/// A queued reader's wait for its batch, bounded by the store's response timeout.
async fn wait<S: Coalesced>(store: &S, rx: oneshot::Receiver<Answer>) -> Answer {
    let limit = store.response_timeout();
    match tokio::time::timeout(limit, rx).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err(Error::new(
            ErrorKind::Connection,
            format!(
                "the batched read to {} was dropped before its answer",
                store.endpoint()
            ),
        )),
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "{} did not answer GET within {}ms (response_timeout, batched with other \
                 reads)",
                store.endpoint(),
                limit.as_millis()
            ),
        )),
    }
}

/// What a read does: send now, or wait for the batch it joined.
enum Turn<S: Coalesced> {
    /// A slot was free: send now; the guard hands the queue over when dropped.
    Lead(Handover<S>),
    /// Queued behind the reads in flight.
    Wait(oneshot::Receiver<Answer>),
}

fn join<S: Coalesced>(store: &S, key: &str) -> Turn<S> {
    let mut state = store.reads().lock();
    if state.sending >= MAX_IN_FLIGHT {
        let (tx, rx) = oneshot::channel();
        state.queued.push((key.to_owned(), tx));
        Turn::Wait(rx)
    } else {
        state.sending += 1;
        Turn::Lead(Handover {
            store: Some(store.clone()),
        })
    }
}

/// Send the queued reads as `MGET`s, one at a time, until the queue is empty.
async fn drain<S: Coalesced>(store: S) {
    // If this task is dropped mid-batch (runtime shut down), the guard still gives the slot
    // back.
    let mut guard = DrainGuard {
        store: &store,
        armed: true,
    };
    loop {
        let batch: Vec<(String, oneshot::Sender<Answer>)> = {
            let mut state = store.reads().lock();
            // Readers that gave up (timed out, dropped) need no answer.
            state.queued.retain(|(_, tx)| !tx.is_closed());
            if state.queued.is_empty() {
                state.give_back();
                guard.armed = false;
                return;
            }
            let n = state.queued.len().min(MAX_BATCH);
            state.queued.drain(..n).collect()
        };
        let keys: Vec<String> = batch.iter().map(|(k, _)| k.clone()).collect();
        let answer = match keys.as_slice() {
            [key] => store.read_one(key).await.map(|v| vec![v]),
            _ => store.read_batch(&keys).await,
        };
        match answer {
            Ok(values) => {
                for ((_, tx), value) in batch.into_iter().zip(values) {
                    let _ = tx.send(Ok(value));
                }
            }
            Err(e) => {
                for (_, tx) in batch {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Gives the slot back if a draining task ends without doing so (its runtime shut down).
struct DrainGuard<'a, S: Coalesced> {
    store: &'a S,
    /// Still holds the slot (cleared when the task gives it back itself).
    armed: bool,
}

impl<S: Coalesced> Drop for DrainGuard<'_, S> {
    fn drop(&mut self) {
        if self.armed {
            self.store.reads().lock().give_back();
        }
    }
}
