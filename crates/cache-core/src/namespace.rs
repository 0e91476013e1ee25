//! What every cache handle of one namespace in one engine shares: the invalidation epochs,
//! the flush mark, the loads in flight, and the one bus target.
//!
//! A namespace's cache may be built more than once (in a request handler, a health check).
//! All those handles share one L1 namespace, so they must also share what keeps it coherent:
//! a `set` through one handle refuses a stale fill started by another, a load is joined by
//! every handle, and the bus keeps delivering invalidations while any handle is alive.

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::bus::BusTarget;
use crate::engine::{Engine, NsEntry};
use crate::error::{Error, ErrorKind, Result};
use crate::key::validate_name;
use crate::l1::{L1Entry, NamespaceId};
use crate::observer::{CacheEvent, CacheObserver};

pub(crate) use crate::waiters::{Flight, Shared};

/// Invalidation epochs are striped by key hash.
const EPOCH_STRIPES: usize = 64;

/// A typed handle of the namespace as a reload after a reconnect sees it
/// ([`crate::bus::ReconnectPolicy::Reload`]): it knows the codec, the namespace state does not.
pub(crate) trait Reloader: Send + Sync {
    /// Read `keys` from L2 into L1 (no loader runs; keys fresh in L1 are skipped).
    fn reload(self: Arc<Self>, keys: Vec<String>) -> BoxFuture<'static, ()>;
}

/// The keys most recently read past L1 (an L2 read or a load), newest last: what a reload
/// after a reconnect reads again. Recorded only under `ReconnectPolicy::Reload`, and only on
/// the miss path (every read or load that may fill L1 takes its key's epoch first), never on
/// an L1 hit. Holds at most twice the keys a reload reads (a key read twice in a row is kept
/// once; other repeats are dropped when reloading).
struct Recent {
    keys: Mutex<VecDeque<String>>,
    /// How many keys a reload reads.
    reload: usize,
}

impl Recent {
    fn note(&self, key: &str) {
        let mut keys = lock(&self.keys);
        if keys.back().is_some_and(|k| k == key) {
            return;
        }
        if keys.len() >= self.reload.saturating_mul(2) {
            keys.pop_front();
        }
        keys.push_back(key.to_owned());
    }

    /// Up to `max` distinct keys, newest first.
    fn latest(&self, max: usize) -> Vec<String> {
        let keys = lock(&self.keys);
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for k in keys.iter().rev() {
            if out.len() >= max {
                break;
            }
            if seen.insert(k.as_str()) {
                out.push(k.clone());
            }
        }
        out
    }
}

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
    /// Keys to reload after a reconnect (`None` unless the bus reloads).
    recent: Option<Recent>,
    /// The typed handles that can reload (weak: a handle's life is its own).
    reloaders: Mutex<Vec<Weak<dyn Reloader>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<V: Send + Sync + 'static> NsState<V> {
    pub(crate) fn new(ns: NamespaceId, engine: Engine, observer: Arc<dyn CacheObserver>) -> Self {
        let reload = engine.bus().map_or(0, |b| b.reload_keys());
        NsState {
            recent: (reload > 0).then(|| Recent {
                keys: Mutex::new(VecDeque::new()),
                reload,
            }),
            reloaders: Mutex::new(Vec::new()),
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

    /// The key's invalidation epoch, taken by every read or load that may fill L1 (before it
    /// starts and again before it fills). Under `ReconnectPolicy::Reload` it also records the
    /// key as recently used.
    pub(crate) fn epoch(&self, key: &str) -> u64 {
        if let Some(recent) = &self.recent {
            recent.note(key);
        }
        self.epochs[Self::stripe(key)].load(Ordering::SeqCst)
    }

    /// Whether this namespace reloads keys after a reconnect (then its handles offer
    /// themselves with [`NsState::add_reloader`]).
    pub(crate) fn reloads(&self) -> bool {
        self.recent.is_some()
    }

    /// Offer a typed handle for reloads after a reconnect (the first live one does them).
    pub(crate) fn add_reloader(&self, reloader: Weak<dyn Reloader>) {
        let mut all = lock(&self.reloaders);
        all.retain(|r| r.strong_count() > 0);
        all.push(reloader);
    }

    /// Read up to `max_keys` recently used keys from L2 into L1, in a task of its own (after
    /// the flush of a reconnect). Does nothing without a live handle or a tokio runtime.
    pub(crate) fn reload(&self, max_keys: usize) {
        let Some(recent) = &self.recent else {
            return;
        };
        let keys = recent.latest(max_keys);
        if keys.is_empty() {
            return;
        }
        let Some(reloader) = lock(&self.reloaders).iter().find_map(Weak::upgrade) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let engine = self.engine.clone();
        let flushed_at = self.flushed_at.load(Ordering::SeqCst);
        runtime.spawn(async move {
            // An entry stamped in the flush's own millisecond would not count as fresh: read
            // once the clock has moved past it (a clock that stands still, as a test's may,
            // is not waited for longer than 100 ms).
            for _ in 0..100 {
                if engine.now_ms() > flushed_at {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            drop(engine);
            reloader.reload(keys).await;
        });
    }

    pub(crate) fn bump_epoch(&self, key: &str) {
        self.epochs[Self::stripe(key)].fetch_add(1, Ordering::SeqCst);
    }

    /// Drop a key from L1, refusing any fill that began before.
    pub(crate) fn drop_key(&self, key: &str) {
        self.bump_epoch(key);
        self.engine.l1().remove(self.ns, key);
    }

    /// Drop the namespace from L1 (a clear, or a possible loss of invalidations). When a
    /// handle is fail-safe the entries stay as stale fallbacks: they stop being fresh, not
    /// available.
    pub(crate) fn flush(&self) {
        for e in &self.epochs {
            e.fetch_add(1, Ordering::SeqCst);
        }
        self.flushed_at
            .store(self.engine.now_ms(), Ordering::SeqCst);
        if !self.keep_stale.load(Ordering::SeqCst) {
            self.engine.l1().clear_namespace(self.ns);
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

    fn reload(&self, max_keys: usize) {
        NsState::reload(self, max_keys);
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

impl Engine {
    /// The state shared by every handle of `namespace` (values of type `V`): the live one,
    /// or a new one. The same namespace cannot hold two types.
    pub(crate) fn namespace_state<V: Send + Sync + 'static>(
        &self,
        namespace: &str,
        observer: Arc<dyn CacheObserver>,
    ) -> Result<Arc<NsState<V>>> {
        validate_name("namespace", namespace)?;
        let mut map = self
            .inner
            .namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let next = map.len() as NamespaceId;
        let entry = map.entry(namespace.to_owned()).or_insert_with(|| NsEntry {
            id: next,
            ty: TypeId::of::<V>(),
            state: Weak::<NsState<V>>::new(),
        });
        if entry.ty != TypeId::of::<V>() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("namespace {namespace:?} is already used by a cache of another value type"),
            ));
        }
        if let Some(state) = entry
            .state
            .upgrade()
            .and_then(|a| a.downcast::<NsState<V>>().ok())
        {
            return Ok(state);
        }
        let state = Arc::new(NsState::new(entry.id, self.clone(), observer));
        let any: Arc<dyn Any + Send + Sync> = state.clone();
        entry.state = Arc::downgrade(&any);
        Ok(state)
    }
}
