//! The L1 contract: the entry a store keeps, its counters, and the trait a store other
//! than [`crate::QuickL1`] implements (tests and instrumentation; the engine calls
//! [`crate::QuickL1`] directly, without a dynamic call).

use std::any::Any;
use std::sync::Arc;

/// Identifies a typed cache (its namespace) inside the shared L1.
pub type NamespaceId = u32;

/// One L1 entry: the decoded value (type-erased), its expiry, and bookkeeping.
#[derive(Clone)]
pub struct L1Entry {
    /// The decoded value; `None` for a negative entry ("the source has no such key").
    pub value: Option<Arc<dyn Any + Send + Sync>>,
    /// Until when the entry is fresh, unix milliseconds.
    pub expires_at_ms: u64,
    /// When the entry was stored, unix milliseconds: entries older than a namespace flush
    /// of a fail-safe cache are no longer fresh but still usable as stale fallbacks.
    pub born_ms: u64,
    /// Until when the store keeps the entry at all (`>= expires_at_ms`): past its expiry a
    /// fail-safe cache may still serve it when the loader fails. Equal to `expires_at_ms`
    /// without fail-safe.
    pub stale_until_ms: u64,
    /// From when a hit consults the refresh policy (`expires_at_ms` minus the policy's
    /// horizon); a hit before it pays one compare.
    pub refresh_at_ms: u64,
    /// How long the load that produced the value took, microseconds (for early refresh).
    pub delta_us: u32,
    /// Weight in bytes charged against the L1 budget (encoded size + overhead).
    pub weight: u32,
}

impl std::fmt::Debug for L1Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1Entry")
            .field("negative", &self.value.is_none())
            .field("expires_at_ms", &self.expires_at_ms)
            .field("stale_until_ms", &self.stale_until_ms)
            .field("delta_us", &self.delta_us)
            .field("weight", &self.weight)
            .finish()
    }
}

/// Counters of an L1 store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct L1Stats {
    /// Lookups that found a live entry.
    pub hits: u64,
    /// Lookups that found nothing or an expired entry.
    pub misses: u64,
    /// Entries pushed out to stay within the byte budget.
    pub evictions: u64,
    /// Live entries (expired ones may linger until touched or evicted).
    pub entries: u64,
    /// Bytes charged against the budget.
    pub bytes: u64,
    /// The budget in bytes.
    pub capacity_bytes: u64,
}

/// The in-process tier. Synchronous: a hit must never yield.
pub trait L1Store: Send + Sync + 'static {
    /// The entry for `(ns, key)` if it is kept at `now_ms` (`now_ms < stale_until_ms`); the
    /// caller checks freshness against `expires_at_ms`.
    fn get(&self, ns: NamespaceId, key: &str, now_ms: u64) -> Option<L1Entry>;
    /// Insert or replace.
    fn insert(&self, ns: NamespaceId, key: &str, entry: L1Entry);
    /// Drop one entry.
    fn remove(&self, ns: NamespaceId, key: &str);
    /// Drop every entry of a namespace.
    fn clear_namespace(&self, ns: NamespaceId);
    /// Drop everything.
    fn clear(&self);
    /// Counters.
    fn stats(&self) -> L1Stats;
}
