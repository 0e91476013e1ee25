//! The engine's L1: the quick_cache store of `cache-l1` held by its concrete type (a hit
//! makes no dynamic call), or any other [`L1Store`] (tests, instrumentation) behind a trait
//! object.

use std::sync::Arc;

pub use cache_l1::{L1Entry, L1Stats, L1Store, NamespaceId, QuickL1};

/// The L1 tier of an engine.
#[derive(Clone)]
pub(crate) enum L1Tier {
    /// The default store, called directly.
    Quick(Arc<QuickL1>),
    /// A store supplied through [`crate::EngineBuilder::with_custom_l1`].
    Custom(Arc<dyn L1Store>),
}

impl L1Tier {
    /// The entry for `(ns, key)` if it is kept at `now_ms`.
    #[inline]
    pub(crate) fn get(&self, ns: NamespaceId, key: &str, now_ms: u64) -> Option<L1Entry> {
        match self {
            L1Tier::Quick(s) => s.get(ns, key, now_ms),
            L1Tier::Custom(s) => s.get(ns, key, now_ms),
        }
    }

    /// Insert or replace.
    pub(crate) fn insert(&self, ns: NamespaceId, key: &str, entry: L1Entry) {
        match self {
            L1Tier::Quick(s) => s.insert(ns, key, entry),
            L1Tier::Custom(s) => s.insert(ns, key, entry),
        }
    }

    /// Drop one entry.
    pub(crate) fn remove(&self, ns: NamespaceId, key: &str) {
        match self {
            L1Tier::Quick(s) => s.remove(ns, key),
            L1Tier::Custom(s) => s.remove(ns, key),
        }
    }

    /// Drop every entry of a namespace.
    pub(crate) fn clear_namespace(&self, ns: NamespaceId) {
        match self {
            L1Tier::Quick(s) => s.clear_namespace(ns),
            L1Tier::Custom(s) => s.clear_namespace(ns),
        }
    }

    /// Counters.
    pub(crate) fn stats(&self) -> L1Stats {
        match self {
            L1Tier::Quick(s) => s.stats(),
            L1Tier::Custom(s) => s.stats(),
        }
    }

    /// The store as a trait object (for gauges and other readers outside the hot path).
    pub(crate) fn store(&self) -> Arc<dyn L1Store> {
        match self {
            L1Tier::Quick(s) => s.clone(),
            L1Tier::Custom(s) => s.clone(),
        }
    }
}
