//! What every cache handle of one namespace in one engine shares: the invalidation epochs,
//! the flush mark, the loads in flight, and the one bus target.
//!
//! A namespace's cache may be built more than once (in a request handler, a health check).
//! All those handles share one L1 namespace, so they must also share what keeps it coherent:
//! a `set` through one handle refuses a stale fill started by another, a load is joined by
//! every handle, and the bus keeps delivering invalidations while any handle is alive.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::bus::BusTarget;
use crate::engine::Engine;
use crate::error::Result;
use crate::l1::{L1Entry, NamespaceId};
use crate::observer::{CacheEvent, CacheObserver};

/// What one load produces, shared by every waiter.
pub(crate) type Shared<V> = Result<Option<Arc<V>>>;
/// A waiter's end of a load in flight.
pub(crate) type Flight<V> = watch::Receiver<Option<Shared<V>>>;

/// Invalidation epochs are striped by key hash.
const EPOCH_STRIPES: usize = 64;

/// The shared state of one namespace in one engine.
pub(crate) struct NsState<V> {
    pub(crate) ns: NamespaceId,
    engine: Engine,
    inflight: Mutex<HashMap<String, Flight<V>>>,
    /// A read or load fills L1 only if no `set` or `invalidate` touched its stripe meanwhile
    /// (no stale fill after an invalidation).
    epochs: [AtomicU64; EPOCH_STRIPES],
    /// When the namespace was last flushed: entries born before are not fresh.
    flushed_at: AtomicU64,
    /// Some handle is fail-safe: a flush keeps entries as stale fallbacks.
    keep_stale: AtomicBool,
    /// Key bases (`{prefix}:{ns}:` per schema version) of the handles built so far.
    bases: Mutex<Vec<String>>,
    observer: Arc<dyn CacheObserver>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<V: Send + Sync + 'static> NsState<V> {
    pub(crate) fn new(ns: NamespaceId, engine: Engine, observer: Arc<dyn CacheObserver>) -> Self {
        NsState {
            ns,
            engine,
            inflight: Mutex::new(HashMap::new()),
            epochs: std::array::from_fn(|_| AtomicU64::new(0)),
            flushed_at: AtomicU64::new(0),
            keep_stale: AtomicBool::new(false),
            bases: Mutex::new(Vec::new()),
            observer,
        }
    }

    /// Record what a newly built handle brings: its key base, and whether it is fail-safe.
    pub(crate) fn joined(&self, base: &str, fail_safe: bool) {
        let mut bases = lock(&self.bases);
        if !bases.iter().any(|b| b == base) {
            bases.push(base.to_owned());
        }
        if fail_safe {
            self.keep_stale.store(true, Ordering::SeqCst);
        }
    }

    pub(crate) fn lock_inflight(&self) -> std::sync::MutexGuard<'_, HashMap<String, Flight<V>>> {
        lock(&self.inflight)
    }

    /// How many keys have a load in flight.
    pub(crate) fn inflight_len(&self) -> usize {
        lock(&self.inflight).len()
    }

    fn stripe(key: &str) -> usize {
        (crate::key::fnv1a(key) % EPOCH_STRIPES as u64) as usize
    }

    pub(crate) fn epoch(&self, key: &str) -> u64 {
        self.epochs[Self::stripe(key)].load(Ordering::SeqCst)
    }

    pub(crate) fn bump_epoch(&self, key: &str) {
        self.epochs[Self::stripe(key)].fetch_add(1, Ordering::SeqCst);
    }

    /// Drop a key from L1, refusing any fill that began before.
    pub(crate) fn drop_key(&self, key: &str) {
        self.bump_epoch(key);
        self.engine.inner.l1.remove(self.ns, key);
    }

    /// Drop the namespace from L1 (a clear, or a possible loss of invalidations). When a
    /// handle is fail-safe the entries stay as stale fallbacks: they stop being fresh, not
    /// available.
    pub(crate) fn flush(&self) {
        for e in &self.epochs {
            e.fetch_add(1, Ordering::SeqCst);
        }
        self.flushed_at
            .store(self.engine.inner.now_ms(), Ordering::SeqCst);
        if !self.keep_stale.load(Ordering::SeqCst) {
            self.engine.inner.l1.clear_namespace(self.ns);
        }
    }

    /// False for entries stored before the last flush.
    #[inline]
    pub(crate) fn is_fresh(&self, entry: &L1Entry) -> bool {
        entry.born_ms > self.flushed_at.load(Ordering::Relaxed)
    }
}

impl<V: Send + Sync + 'static> BusTarget for NsState<V> {
    fn invalidate_keys(&self, keys: &[String]) {
        for k in keys {
            self.drop_key(k);
        }
    }

    fn flush(&self) {
        NsState::flush(self);
    }

    fn report(&self, event: CacheEvent) {
        self.observer.on_event(event);
    }

    fn user_keys(&self, full_keys: &[String]) -> Vec<String> {
        let bases = lock(&self.bases);
        full_keys
            .iter()
            .filter_map(|k| {
                bases
                    .iter()
                    .find_map(|b| k.strip_prefix(b.as_str()).map(str::to_owned))
            })
            .collect()
    }
}
