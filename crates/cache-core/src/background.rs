//! Background L2 writes ([`crate::CallOptions::background_l2_write`]): a bounded queue served
//! by one task, in call order per key.
//!
//! The task takes whatever is queued (up to [`WAVE`] jobs) and runs it in waves: each wave
//! holds at most one job per key and runs its jobs concurrently; a key's next job waits for
//! the next wave. So writes of different keys overlap, and writes of one key land in the
//! order they were queued. A foreground write of a key first waits for that key's queued
//! jobs ([`Background::settled`]), which keeps the order across both kinds of write.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// How many queued jobs the task takes at once.
const WAVE: usize = 256;

/// The default bound of the queue.
pub(crate) const DEFAULT_CAPACITY: usize = 10_000;

type Work = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// One queued write: its full key and the work (the L2 write, then the announcement).
pub(crate) struct Job {
    key: String,
    work: Work,
}

impl Job {
    /// Do the work here and now (the queue was full).
    pub(crate) async fn run(self) {
        self.work.await;
    }
}

/// What the queue and its task share.
#[derive(Default)]
struct Pending {
    /// Queued or running jobs per full key.
    keys: Mutex<HashMap<String, usize>>,
    /// Queued or running jobs in all.
    total: AtomicUsize,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, key: &str) {
        self.total.fetch_add(1, Ordering::SeqCst);
        *self.lock().entry(key.to_owned()).or_insert(0) += 1;
    }

    fn remove(&self, key: &str) {
        let mut keys = self.lock();
        if let Some(n) = keys.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                keys.remove(key);
            }
        }
        drop(keys);
        self.total.fetch_sub(1, Ordering::SeqCst);
    }

    fn has(&self, key: &str) -> bool {
        self.total.load(Ordering::SeqCst) > 0 && self.lock().contains_key(key)
    }

    fn any(&self, matching: impl Fn(&str) -> bool) -> bool {
        self.total.load(Ordering::SeqCst) > 0 && self.lock().keys().any(|k| matching(k))
    }
}

/// The background writer of one engine.
pub(crate) struct Background {
    capacity: usize,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    pending: Arc<Pending>,
    /// Bumped whenever a job ends: waiters for a key look again.
    done: Arc<watch::Sender<u64>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Background {
    pub(crate) fn new(capacity: usize) -> Self {
        Background {
            capacity: capacity.max(1),
            tx: Mutex::new(None),
            pending: Arc::new(Pending::default()),
            done: Arc::new(watch::channel(0).0),
            task: Mutex::new(None),
        }
    }

    /// A job for `key` doing `work`.
    pub(crate) fn job(key: String, work: impl Future<Output = ()> + Send + 'static) -> Job {
        Job {
            key,
            work: Box::pin(work),
        }
    }

    /// Queue `job`; when the queue is full, closed, or no runtime runs, the job comes back
    /// (the caller then does the write itself, waiting).
    pub(crate) fn push(&self, job: Job) -> std::result::Result<(), Job> {
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if tx.is_none() {
            let Ok(handle) = tokio::runtime::Handle::try_current() else {
                return Err(job);
            };
            let (sender, receiver) = mpsc::channel(self.capacity);
            *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle.spawn(run(
                receiver,
                Arc::clone(&self.pending),
                Arc::clone(&self.done),
            )));
            *tx = Some(sender);
        }
        let Some(sender) = tx.as_ref() else {
            return Err(job);
        };
        self.pending.add(&job.key);
        match sender.try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job)) => {
                self.pending.remove(&job.key);
                Err(job)
            }
        }
    }

    /// Wait until no job of `key` is queued or running.
    pub(crate) async fn settled(&self, key: &str) {
        self.wait_until(|| !self.pending.has(key)).await;
    }

    /// Wait until no job of a key starting with `prefix` is queued or running.
    pub(crate) async fn settled_prefix(&self, prefix: &str) {
        self.wait_until(|| !self.pending.any(|k| k.starts_with(prefix)))
            .await;
    }

    /// Queued or running jobs.
    pub(crate) fn len(&self) -> usize {
        self.pending.total.load(Ordering::SeqCst)
    }

    /// Wait until every job is done or `until` passes; how many are left.
    pub(crate) async fn drain(&self, until: tokio::time::Instant) -> usize {
        let _ = tokio::time::timeout_at(until, self.wait_until(|| self.len() == 0)).await;
        self.len()
    }

    async fn wait_until(&self, done: impl Fn() -> bool) {
        let mut rx = self.done.subscribe();
        while !done() {
            // A job that ends after the check above changes the value: no wake-up is lost.
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Stop the task; jobs not run are dropped (their L1 values stay; L2 keeps older ones).
    pub(crate) fn stop(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The task: take what is queued, run it in waves of one job per key.
async fn run(mut rx: mpsc::Receiver<Job>, pending: Arc<Pending>, done: Arc<watch::Sender<u64>>) {
    let mut batch: Vec<Job> = Vec::with_capacity(WAVE);
    while rx.recv_many(&mut batch, WAVE).await > 0 {
        while !batch.is_empty() {
            let mut wave: Vec<Job> = Vec::new();
            let mut later: Vec<Job> = Vec::new();
            for job in batch.drain(..) {
                if wave.iter().any(|j| j.key == job.key) || later.iter().any(|j| j.key == job.key) {
                    later.push(job);
                } else {
                    wave.push(job);
                }
            }
            let keys: Vec<String> = wave.iter().map(|j| j.key.clone()).collect();
            futures::future::join_all(wave.into_iter().map(|j| j.work)).await;
            for key in &keys {
                pending.remove(key);
            }
            done.send_modify(|n| *n = n.wrapping_add(1));
            batch = later;
        }
    }
}
