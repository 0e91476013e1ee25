//! Metric names, label keys and values, and the histogram buckets this crate uses.
//!
//! They are stable: dashboards and alert rules (`docs/alerts.yml`,
//! `docs/grafana-dashboard.json`) refer to them.

/// Counter of cache operations, labelled `cache`, `operation`, `tier`, `result`.
pub const OPERATIONS_TOTAL: &str = "cache_operations_total";
/// Histogram of L2 round trips in seconds, labelled `cache`, `operation`, `tier`.
pub const OPERATION_SECONDS: &str = "cache_operation_seconds";
/// Histogram name reserved for L1 timings (finer buckets, [`L1_BUCKETS`]). The engine reports
/// no L1 latency today, so nothing records it: timing a ~50 ns hit would cost more than the hit.
pub const L1_OPERATION_SECONDS: &str = "cache_l1_operation_seconds";
/// Histogram of loader run times in seconds, labelled `cache`.
pub const LOADER_SECONDS: &str = "cache_loader_seconds";
/// Counter of unreadable L2 values (corrupt, foreign, unknown version), labelled `cache`.
pub const L2_CORRUPT_TOTAL: &str = "cache_l2_corrupt_total";
/// Counter of failed L2 operations by error kind, labelled `cache`, `kind`.
pub const L2_ERRORS_TOTAL: &str = "cache_l2_errors_total";
/// Counter of callers that joined a load already in flight, labelled `cache`.
pub const COALESCED_WAITERS_TOTAL: &str = "cache_coalesced_waiters_total";
/// Counter of background refreshes started before expiry, labelled `cache`.
pub const EARLY_REFRESHES_TOTAL: &str = "cache_early_refreshes_total";
/// Counter of fill leases, labelled `cache`, `outcome` (`acquired` or `waited`).
pub const LEASES_TOTAL: &str = "cache_leases_total";
/// Counter of invalidated keys, labelled `cache`, `direction` (`sent` or `received`).
pub const INVALIDATIONS_TOTAL: &str = "cache_invalidations_total";
/// Counter of detected invalidation losses (each one flushed the namespace's L1), labelled `cache`.
pub const INVALIDATIONS_LOST_TOTAL: &str = "cache_invalidations_lost_total";
/// Counter of invalidation-bus reconnects, labelled `cache`.
pub const BUS_RECONNECTS_TOTAL: &str = "cache_bus_reconnects_total";
/// Gauge: the engine's open circuit breakers (L2 store, bus publisher), 0 when all are
/// closed. Engine-wide: no `cache` label, only the observer's own ([`MetricsObserver::with_label`]).
///
/// [`MetricsObserver::with_label`]: crate::MetricsObserver::with_label
pub const BREAKER_OPEN: &str = "cache_breaker_open";
/// Gauge: entries waiting in the write-behind queue, labelled `cache`.
pub const WRITE_BEHIND_QUEUE_DEPTH: &str = "cache_write_behind_queue_depth";
/// Gauge: live L1 entries, labelled `engine`.
pub const ENTRIES: &str = "cache_entries";
/// Gauge: bytes charged against the L1 budget, labelled `engine`.
pub const BYTES: &str = "cache_bytes";
/// Gauge: the L1 budget in bytes, labelled `engine`.
pub const CAPACITY_BYTES: &str = "cache_capacity_bytes";
/// Counter: L1 entries evicted to stay within the budget, labelled `engine`.
pub const EVICTIONS_TOTAL: &str = "cache_evictions_total";

/// Label key: the typed cache (its namespace).
pub const CACHE: &str = "cache";
/// Label key: the engine (its key prefix), on the L1 metrics shared by all typed caches.
pub const ENGINE: &str = "engine";
/// Label key: `get`, `set`, `delete`, `load`, `refresh`.
pub const OPERATION: &str = "operation";
/// Label key: `l1`, `l2`, `coalesced` (callers served by a load they joined), `loader`.
pub const TIER: &str = "tier";
/// Label key: `hit`, `miss`, `error`, `stale` (`hit` means "done" for writes and loads).
pub const RESULT: &str = "result";
/// Label key of [`L2_ERRORS_TOTAL`]: see [`ERROR_KINDS`].
pub const KIND: &str = "kind";
/// Label key of [`LEASES_TOTAL`].
pub const OUTCOME: &str = "outcome";
/// Label key of [`INVALIDATIONS_TOTAL`].
pub const DIRECTION: &str = "direction";

/// The values of the `kind` label of [`L2_ERRORS_TOTAL`]: the `cache_core::ErrorKind` names
/// that L2 failures carry, and `other` for the rest.
pub const ERROR_KINDS: [&str; 6] = [
    "connection",
    "timeout",
    "auth",
    "remote",
    "circuit_open",
    "other",
];

/// Buckets (seconds) of [`OPERATION_SECONDS`]: 0.5 ms to 100 ms, from the reference write-up.
/// With them, "p99 above 10 ms" is answerable from the histogram.
pub const OPERATION_BUCKETS: [f64; 6] = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1];
/// Buckets (seconds) of [`L1_OPERATION_SECONDS`]: 100 ns to 1 ms.
pub const L1_BUCKETS: [f64; 8] = [
    0.000_000_1,
    0.000_000_25,
    0.000_000_5,
    0.000_001,
    0.000_005,
    0.000_01,
    0.000_1,
    0.001,
];
/// Buckets (seconds) of [`LOADER_SECONDS`]: 1 ms to 10 s (loaders hit databases and APIs).
pub const LOADER_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
