//! # cache-l1
//!
//! The in-process tier of tiercache, on [`quick_cache`]: one store shared by every typed
//! cache of an engine, keyed by `(namespace id, key)`, with a byte budget (weight = encoded
//! size + per-entry overhead), per-entry expiry kept beside the value (quick_cache has none),
//! and counters.
//!
//! The engine of `cache-core` holds a [`QuickL1`] by its concrete type, so an L1 hit makes
//! no dynamic call; the [`L1Store`] trait remains for stores that wrap or replace it (tests,
//! instrumentation), whose hits do.
//!
//! ```
//! use cache_l1::{L1Store, QuickL1};
//!
//! let l1 = QuickL1::with_capacity_bytes(64 * 1024 * 1024);
//! assert_eq!(l1.stats().entries, 0);
//! ```
#![warn(missing_docs)]

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

mod contract;

pub use contract::{L1Entry, L1Stats, L1Store, NamespaceId};
use quick_cache::sync::Cache;
use quick_cache::{Equivalent, Lifecycle, Weighter};

/// Default budget: 128 MiB.
pub const DEFAULT_CAPACITY_BYTES: u64 = 128 * 1024 * 1024;

#[derive(Clone, PartialEq, Eq)]
struct Key {
    ns: NamespaceId,
    key: Box<str>,
}

// Only the key string is hashed (the namespace is compared in `Equivalent`): one hash write
// fewer on the hit path; equal keys of different namespaces merely share a bucket chain.
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

/// A borrowed key: lookups allocate nothing.
struct Lookup<'a> {
    ns: NamespaceId,
    key: &'a str,
}

impl Hash for Lookup<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl Equivalent<Key> for Lookup<'_> {
    fn equivalent(&self, k: &Key) -> bool {
        self.ns == k.ns && self.key == &*k.key
    }
}

#[derive(Clone)]
struct EntryWeighter;

impl Weighter<Key, L1Entry> for EntryWeighter {
    fn weight(&self, key: &Key, val: &L1Entry) -> u64 {
        (val.weight as u64 + key.key.len() as u64).max(1)
    }
}

/// Counts evictions; evicted items are dropped after the shard lock is released.
#[derive(Clone)]
struct Evictions {
    count: std::sync::Arc<AtomicU64>,
}

impl Lifecycle<Key, L1Entry> for Evictions {
    type RequestState = [Option<(Key, L1Entry)>; 2];

    fn begin_request(&self) -> Self::RequestState {
        [None, None]
    }

    fn on_evict(&self, state: &mut Self::RequestState, key: Key, val: L1Entry) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if state[0].is_none() {
            state[0] = Some((key, val));
        } else if state[1].is_none() {
            state[1] = Some((key, val));
        }
    }
}

type Inner = Cache<Key, L1Entry, EntryWeighter, quick_cache::DefaultHashBuilder, Evictions>;

/// The L1 store on quick_cache.
pub struct QuickL1 {
    cache: Inner,
    evictions: std::sync::Arc<AtomicU64>,
    expired: AtomicU64,
    capacity: u64,
}

impl std::fmt::Debug for QuickL1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuickL1")
            .field("capacity_bytes", &self.capacity)
            .field("bytes", &self.cache.weight())
            .field("entries", &self.cache.len())
            .finish()
    }
}

impl Default for QuickL1 {
    fn default() -> Self {
        Self::with_capacity_bytes(DEFAULT_CAPACITY_BYTES)
    }
}

impl QuickL1 {
    /// A store holding at most `bytes` of weight.
    pub fn with_capacity_bytes(bytes: u64) -> Self {
        // quick_cache sizes its tables and its ghost (recently evicted) queue from the expected
        // number of entries; assume ~256 bytes per entry (96 bytes overhead + key + a small
        // payload). Too low an estimate costs hit ratio.
        Self::with_capacity(bytes, (bytes / 256) as usize)
    }

    /// A store holding at most `bytes` of weight, expecting about `estimated_items` entries
    /// (use this when your values are much larger or smaller than ~150 bytes encoded).
    pub fn with_capacity(bytes: u64, estimated_items: usize) -> Self {
        let bytes = bytes.max(1024);
        let estimated_items = estimated_items.clamp(16, 1 << 24);
        let evictions = std::sync::Arc::new(AtomicU64::new(0));
        let cache = Cache::with(
            estimated_items,
            bytes,
            EntryWeighter,
            quick_cache::DefaultHashBuilder::default(),
            Evictions {
                count: evictions.clone(),
            },
        );
        QuickL1 {
            cache,
            evictions,
            expired: AtomicU64::new(0),
            capacity: bytes,
        }
    }
}

impl L1Store for QuickL1 {
    #[inline]
    fn get(&self, ns: NamespaceId, key: &str, now_ms: u64) -> Option<L1Entry> {
        let lookup = Lookup { ns, key };
        let entry = self.cache.get(&lookup)?;
        if entry.stale_until_ms > now_ms {
            return Some(entry);
        }
        self.expired.fetch_add(1, Ordering::Relaxed);
        self.cache
            .remove_if(&lookup, |e| e.stale_until_ms <= now_ms);
        None
    }

    fn insert(&self, ns: NamespaceId, key: &str, entry: L1Entry) {
        self.cache.insert(
            Key {
                ns,
                key: key.into(),
            },
            entry,
        );
    }

    fn remove(&self, ns: NamespaceId, key: &str) {
        self.cache.remove(&Lookup { ns, key });
    }

    fn clear_namespace(&self, ns: NamespaceId) {
        self.cache.retain(|k, _| k.ns != ns);
    }

    fn clear(&self) {
        self.cache.clear();
    }

    fn stats(&self) -> L1Stats {
        let expired = self.expired.load(Ordering::Relaxed);
        L1Stats {
            hits: self.cache.hits().saturating_sub(expired),
            misses: self.cache.misses() + expired,
            evictions: self.evictions.load(Ordering::Relaxed),
            entries: self.cache.len() as u64,
            bytes: self.cache.weight(),
            capacity_bytes: self.capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn entry(v: u64, exp: u64, weight: u32) -> L1Entry {
        L1Entry {
            value: Some(Arc::new(v)),
            expires_at_ms: exp,
            born_ms: 0,
            stale_until_ms: exp,
            refresh_at_ms: exp,
            delta_us: 0,
            weight,
        }
    }

    fn value_of(e: &L1Entry) -> Option<u64> {
        e.value.as_ref()?.downcast_ref::<u64>().copied()
    }

    #[test]
    fn get_insert_expire() {
        let l1 = QuickL1::with_capacity_bytes(1 << 20);
        l1.insert(1, "a", entry(7, 100, 10));
        assert_eq!(l1.get(1, "a", 50).as_ref().and_then(value_of), Some(7));
        assert!(l1.get(2, "a", 50).is_none(), "namespaces are separate");
        assert!(l1.get(1, "a", 100).is_none(), "expired at its deadline");
        assert!(l1.get(1, "a", 0).is_none(), "expired entries are removed");
        let s = l1.stats();
        assert_eq!(s.hits, 1);
        assert_eq!(s.misses, 3);
    }

    #[test]
    fn namespaces_clear_independently() {
        let l1 = QuickL1::with_capacity_bytes(1 << 20);
        for i in 0..10 {
            l1.insert(1, &i.to_string(), entry(i, u64::MAX, 10));
            l1.insert(2, &i.to_string(), entry(i, u64::MAX, 10));
        }
        l1.clear_namespace(1);
        assert!(l1.get(1, "3", 0).is_none());
        assert_eq!(l1.get(2, "3", 0).as_ref().and_then(value_of), Some(3));
        l1.remove(2, "3");
        assert!(l1.get(2, "3", 0).is_none());
        l1.clear();
        assert_eq!(l1.stats().entries, 0);
    }

    #[test]
    fn byte_budget_evicts() {
        let l1 = QuickL1::with_capacity_bytes(100_000);
        for i in 0..1_000u64 {
            l1.insert(1, &format!("key-{i}"), entry(i, u64::MAX, 1_000));
        }
        let s = l1.stats();
        assert!(s.bytes <= 100_000, "bytes {} over budget", s.bytes);
        assert!(s.evictions > 800, "evictions {}", s.evictions);
        assert!(s.entries < 101);
    }
}
