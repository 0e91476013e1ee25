//! The typed cache: one namespace, one value type, one codec.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::bus::BusTarget;
use crate::capabilities::Capabilities;
use crate::codec::Codec;
use crate::engine::Engine;
use crate::error::{Error, ErrorKind, Result};
use crate::header::Header;
use crate::key::lease_key;
use crate::key::KeySpace;
use crate::l1::{L1Entry, NamespaceId};
use crate::namespace::{Flight, NsState, Shared};
use crate::observer::{CacheEvent, CacheObserver, L2Op};
use crate::options::{CallOptions, LoadContext, Loaded, Outcome, DEFAULT_OPTIONS};
use crate::policy::{NoRefresh, RefreshPolicy};
use crate::recovery::Replay;
use crate::remote::{check_value_size, LeaseFill, LeaseRead, RemoteEntry};
use crate::waiters::Wakers;

mod batch;
mod builder;
mod config;
mod entry;
mod failsafe;
mod flight;
mod lease;
mod load;
mod read;
mod reload;
mod span;
mod tags;
mod write;

pub use builder::CacheBuilder;
use config::check_ttls;
pub use config::CacheConfig;
use entry::Prepared;
use flight::{spawn, FlightGuard};
use span::SpanKind;

/// Bytes charged per L1 entry on top of its encoded size (key, bookkeeping, allocator).
pub const L1_ENTRY_OVERHEAD: u32 = 96;

/// Counters of one typed cache (everything but L1 hits, which the L1 store and the observer
/// count, to keep the hit path free of shared writes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// L2 reads that returned a usable value.
    pub l2_hits: u64,
    /// L2 reads that found nothing (or a logically expired value).
    pub l2_misses: u64,
    /// L2 reads that found unreadable bytes (treated as misses, then overwritten).
    pub l2_corrupt: u64,
    /// Failed L2 operations (the cache carried on without L2).
    pub l2_errors: u64,
    /// Loader calls (a batch loader call counts once).
    pub loads: u64,
    /// Loader calls that failed.
    pub load_errors: u64,
    /// Callers that joined a load already in flight.
    pub coalesced: u64,
    /// Values not written to L2 because they exceeded its maximum size.
    pub oversize: u64,
    /// Loads that callers had to wait for (full misses). Early refreshes, which callers do
    /// not wait for, are not counted: under steady traffic with early refresh this stays 0.
    pub sync_loads: u64,
    /// Refreshes started before expiry by the refresh policy.
    pub early_refreshes: u64,
    /// Loads that waited for another instance's lease.
    pub lease_waits: u64,
    /// Fills refused because the key was set or invalidated during the load (stale sets
    /// prevented).
    pub stale_fills_refused: u64,
    /// Stale values served by fail-safe or a soft timeout.
    pub stale_served: u64,
    /// L2 writes and deletes queued for replay after an L2 failure.
    pub queued_for_recovery: u64,
}

#[derive(Default)]
struct Counters {
    l2_hits: AtomicU64,
    l2_misses: AtomicU64,
    l2_corrupt: AtomicU64,
    l2_errors: AtomicU64,
    loads: AtomicU64,
    load_errors: AtomicU64,
    coalesced: AtomicU64,
    oversize: AtomicU64,
    sync_loads: AtomicU64,
    early_refreshes: AtomicU64,
    lease_waits: AtomicU64,
    stale_fills_refused: AtomicU64,
    stale_served: AtomicU64,
    queued_for_recovery: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A typed cache over one namespace. Cheap to clone; clones share everything.
pub struct Cache<V, C> {
    inner: Arc<CacheInner<V, C>>,
}

impl<V, C> Clone for Cache<V, C> {
    fn clone(&self) -> Self {
        Cache {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<V, C> fmt::Debug for Cache<V, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &self.inner.name)
            .field("base", &self.inner.keys.base())
            .finish()
    }
}

struct CacheInner<V, C> {
    engine: Engine,
    /// The invalidation channel of this namespace (`{prefix}:{ns}:__inv`).
    channel: String,
    name: String,
    ns: NamespaceId,
    keys: KeySpace,
    config: CacheConfig,
    observer: Arc<dyn CacheObserver>,
    /// False when the observer is a no-op.
    observe: bool,
    stats: Counters,
    /// How often loads found nothing in L2 lately (how their first step reads).
    misses: lease::MissShare,
    /// Shared with every other handle of this namespace: epochs, flush mark, loads in flight.
    state: Arc<NsState<V>>,
    policy: Arc<dyn RefreshPolicy>,
    _codec: PhantomData<fn() -> C>,
}

/// A future that is either answered already (an L1 hit, no allocation) or a boxed slow path.
enum Fast<'a, T> {
    Ready(Option<T>),
    Boxed(std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>),
}

impl<T: Unpin> Future for Fast<'_, T> {
    type Output = T;

    #[inline]
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<T> {
        match self.get_mut() {
            // Polled again after it answered: stays pending (never panics).
            Fast::Ready(value) => value
                .take()
                .map_or(std::task::Poll::Pending, std::task::Poll::Ready),
            Fast::Boxed(fut) => fut.as_mut().poll(cx),
        }
    }
}

/// What L1 said about a load.
enum Local<V, F> {
    /// Answered from L1 (or refused: an invalid key).
    Hit(Result<Option<Arc<V>>>),
    /// Not live in L1: the loader, and a stale value kept for fail-safe.
    Miss {
        loader: F,
        stale: Option<(Option<Arc<V>>, u64)>,
    },
}

/// What an L2 read found.
struct Found<V> {
    value: Option<Arc<V>>,
    /// Logically expired, kept for fail-safe: not a hit, only a fallback.
    stale: bool,
    /// Until when a stale value may be served.
    stale_until_ms: u64,
    /// Logical expiry recorded in the header (`None` in raw mode).
    l2_expires_at_ms: Option<u64>,
    delta_us: u32,
}

/// The refresh floor of [`Cache::refresh`]: no L2 value counts as newer, the loader runs.
const RELOAD: u64 = u64::MAX;

/// Whether two values at hand are the same one (the same allocation, or both absences).
fn same_value<V>(a: &Option<Option<Arc<V>>>, b: &Option<Option<Arc<V>>>) -> bool {
    match (a, b) {
        (Some(Some(a)), Some(Some(b))) => Arc::ptr_eq(a, b),
        (Some(None), Some(None)) => true,
        _ => false,
    }
}

/// Whether an L2 error means the server is not answering now (a timeout, a lost connection,
/// an open breaker): the next L2 call of the same load would most likely fail the same way.
fn unreachable(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Timeout | ErrorKind::Connection | ErrorKind::CircuitOpen
    )
}

/// How the loaded value may be written.
enum Fill {
    /// No lease in use: write plainly.
    Plain,
    /// We hold the lease: compare-and-set against it.
    Lease(String, Vec<u8>),
    /// Another instance holds the lease: write nothing.
    Skip,
    /// The lease could not be taken (L2 failing): fill L1 (if no write intervened), never
    /// L2 (an unconditional write could land after an invalidation).
    LocalOnly,
}

/// A value read from L2 and decoded.
struct Decoded<V> {
    value: Option<V>,
    expires_at_ms: u64,
    stale_until_ms: u64,
    stale: bool,
    l2_expires_at_ms: Option<u64>,
    delta_us: u32,
    weight: u32,
}

/// Why L2 bytes gave no value.
enum Unusable {
    Expired,
    Corrupt(Error),
}

impl<V, C> Cache<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// The namespace.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The engine this cache belongs to (its prefix, its remote store).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The settings.
    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// The full L2 key of a user key (validated).
    pub fn full_key(&self, key: &str) -> Result<String> {
        self.inner.keys.full(key)
    }

    /// Counters of this cache.
    pub fn stats(&self) -> CacheStats {
        let c = &self.inner.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            l2_hits: l(&c.l2_hits),
            l2_misses: l(&c.l2_misses),
            l2_corrupt: l(&c.l2_corrupt),
            l2_errors: l(&c.l2_errors),
            loads: l(&c.loads),
            load_errors: l(&c.load_errors),
            coalesced: l(&c.coalesced),
            oversize: l(&c.oversize),
            sync_loads: l(&c.sync_loads),
            early_refreshes: l(&c.early_refreshes),
            lease_waits: l(&c.lease_waits),
            stale_fills_refused: l(&c.stale_fills_refused),
            stale_served: l(&c.stale_served),
            queued_for_recovery: l(&c.queued_for_recovery),
        }
    }

    /// Report `event` to this cache's observer, as the engine does (companions such as
    /// write-behind report their own events, e.g. a [`CacheEvent::Gauge`] of its queue depth). Does
    /// nothing when the observer is a no-op.
    pub fn report(&self, event: CacheEvent) {
        self.inner.event(event);
    }

    /// Whether an observer listens to this cache (false for the no-op observer): a companion
    /// can skip the work of measuring what it would report.
    pub fn is_observed(&self) -> bool {
        self.inner.observe
    }

    /// How many keys of this namespace have a load in flight (every handle of the namespace
    /// in this engine counts). Zero once every load has finished.
    pub fn in_flight(&self) -> usize {
        self.inner.state.inflight_len()
    }
}

impl<V, C> CacheInner<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    fn lock_inflight(&self) -> std::sync::MutexGuard<'_, HashMap<String, Flight<V>>> {
        self.state.lock_inflight()
    }

    /// Drop the namespace from L1 (a clear, or a possible loss of invalidations). A fail-safe
    /// cache keeps the entries as stale fallbacks: they stop being fresh, not available.
    fn flush_local(&self) {
        self.state.flush();
    }

    /// False for entries stored before the last flush.
    #[inline]
    fn is_fresh(&self, entry: &L1Entry) -> bool {
        self.state.is_fresh(entry)
    }

    fn epoch(&self, key: &str) -> u64 {
        self.state.epoch(key)
    }

    fn bump_epoch(&self, key: &str) {
        self.state.bump_epoch(key);
    }

    /// Refuse, before doing anything, a call the engine's L2 store cannot serve (no L2 at
    /// all is left to the caller: each call says what it does without one).
    fn need(&self, capability: Capabilities) -> Result<()> {
        match self.engine.remote() {
            Some(l2) if !l2.capabilities().contains(capability) => {
                Err(crate::remote::unsupported(l2.kind(), capability))
            }
            _ => Ok(()),
        }
    }

    /// Report an event unless the observer is a no-op (skips a virtual call on hits).
    #[inline]
    fn event(&self, event: CacheEvent) {
        if self.observe {
            self.observer.on_event(event);
        }
    }

    fn l2_failed(&self, op: L2Op, e: &Error) {
        bump(&self.stats.l2_errors);
        self.observer
            .on_event(CacheEvent::L2Error { op, kind: e.kind() });
        tracing::warn!(cache = %self.name, error = %e, "L2 operation failed; continuing without it");
    }

    /// Report `n` L2 value writes that Redis answered, in one round trip begun at `start`
    /// (`None`: no observer, not timed).
    fn l2_written(&self, start: Option<Instant>, n: usize) {
        if let Some(start) = start {
            let latency = start.elapsed();
            for _ in 0..n {
                self.observer.on_event(CacheEvent::L2Set { latency });
            }
        }
    }
}
