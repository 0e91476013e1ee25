//! [`MetricsObserver`]: the [`Observer`] that records through the `metrics` facade, and the
//! per-cache [`CacheMetrics`] it hands to the engine.

use std::fmt;
use std::sync::{Arc, OnceLock};

use cache_core::{CacheEvent, CacheObserver, Engine, ErrorKind, L2Op, Observer, Result};
use metrics::{Counter, Gauge, Histogram, Label, Recorder, SharedString, Unit};

use crate::l1::{L1GaugeTask, L1Gauges};
use crate::names::*;
use crate::registrar::Registrar;

/// Records the events of every typed cache through the `metrics` facade.
///
/// [`Observer::for_cache`] runs once per typed cache, when it is built: it registers every
/// series of that cache and returns a [`CacheMetrics`] that only touches those handles.
///
/// Handles bind to the recorder current at that moment: **install the recorder (exporter)
/// before building the caches**, or give one with [`MetricsObserver::with_recorder`]. Handles
/// made while no recorder is installed record nothing, forever.
#[derive(Clone, Default)]
pub struct MetricsObserver {
    reg: Registrar,
    /// The engine-wide series, registered with the first cache (shared by clones).
    engine: Arc<OnceLock<EngineMetrics>>,
}

/// Series of the engine as a whole (no `cache` label).
#[derive(Clone)]
struct EngineMetrics {
    /// Open circuit breakers (L2 store, bus publisher): +1 on open, -1 on close.
    breakers_open: Gauge,
}

impl fmt::Debug for MetricsObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<(&str, &str)> = self
            .reg
            .labels
            .iter()
            .map(|l| (l.key(), l.value()))
            .collect();
        f.debug_struct("MetricsObserver")
            .field(
                "recorder",
                &if self.reg.recorder.is_some() {
                    "own"
                } else {
                    "global"
                },
            )
            .field("labels", &labels)
            .finish()
    }
}

impl MetricsObserver {
    /// Register through the global recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register through `recorder` instead of the global one (tests, or an application that
    /// keeps several recorders).
    pub fn with_recorder(recorder: Arc<dyn Recorder + Send + Sync>) -> Self {
        MetricsObserver {
            reg: Registrar {
                recorder: Some(recorder),
                labels: Vec::new(),
            },
            engine: Arc::default(),
        }
    }

    /// Add a constant label to every series this observer registers, e.g. `("engine",
    /// "orders")` when two engines of one process have caches with the same namespace.
    pub fn with_label(
        mut self,
        key: impl Into<SharedString>,
        value: impl Into<SharedString>,
    ) -> Self {
        self.reg.labels.push(Label::new(key, value));
        // Engine series registered before this label was added would miss it.
        self.engine = Arc::default();
        self
    }

    fn engine_metrics(&self) -> &EngineMetrics {
        self.engine.get_or_init(|| {
            self.reg.scope(|| EngineMetrics {
                breakers_open: metrics::gauge!(BREAKER_OPEN, self.reg.labels.clone()),
            })
        })
    }

    /// Register the series of the cache named `cache` and return its handles.
    pub fn cache_metrics(&self, cache: &str) -> CacheMetrics {
        let engine = self.engine_metrics().clone();
        self.reg.scope(|| {
            describe();
            CacheMetrics::register(&self.reg, cache, engine)
        })
    }

    /// The L1 gauges of the engine named `engine` (label `engine`), registered now.
    pub fn l1_gauges(&self, engine: &str) -> L1Gauges {
        L1Gauges::register(&self.reg, engine)
    }

    /// Update the L1 gauges of `engine` (labelled with its prefix) every `every`, from a
    /// task on the current tokio runtime; it stops when the returned handle is dropped or the
    /// engine's L1 is gone. Errors if `every` is zero or no runtime is running.
    pub fn spawn_l1_gauges(
        &self,
        engine: &Engine,
        every: std::time::Duration,
    ) -> Result<L1GaugeTask> {
        self.l1_gauges(engine.prefix())
            .spawn(engine.l1_store(), every)
    }
}

impl Observer for MetricsObserver {
    fn for_cache(&self, cache: &str) -> Arc<dyn CacheObserver> {
        Arc::new(self.cache_metrics(cache))
    }

    fn on_engine_event(&self, event: CacheEvent) {
        if let CacheEvent::Breaker { open } = event {
            self.engine_metrics().breaker(open);
        }
    }
}

impl EngineMetrics {
    #[inline]
    fn breaker(&self, open: bool) {
        if open {
            self.breakers_open.increment(1.0);
        } else {
            self.breakers_open.decrement(1.0);
        }
    }
}

/// Set the HELP text and units (once per cache build; the recorder keeps the last).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        OPERATIONS_TOTAL,
        Unit::Count,
        "Cache operations by operation (get, set, delete, load, refresh), tier (l1, l2, coalesced, loader) and result (hit, miss, error, stale)"
    );
    describe_histogram!(OPERATION_SECONDS, Unit::Seconds, "L2 round-trip time");
    describe_histogram!(LOADER_SECONDS, Unit::Seconds, "Loader run time");
    describe_counter!(
        L2_CORRUPT_TOTAL,
        Unit::Count,
        "Unreadable L2 values, read as misses"
    );
    describe_counter!(
        L2_ERRORS_TOTAL,
        Unit::Count,
        "Failed L2 operations by error kind"
    );
    describe_counter!(
        COALESCED_WAITERS_TOTAL,
        Unit::Count,
        "Callers that joined a load already in flight"
    );
    describe_counter!(
        EARLY_REFRESHES_TOTAL,
        Unit::Count,
        "Background refreshes started before expiry"
    );
    describe_counter!(
        LEASES_TOTAL,
        Unit::Count,
        "Fill leases acquired or waited for"
    );
    describe_counter!(
        INVALIDATIONS_TOTAL,
        Unit::Count,
        "Invalidated keys sent or received"
    );
    describe_counter!(
        INVALIDATIONS_LOST_TOTAL,
        Unit::Count,
        "Detected invalidation losses (each flushed the namespace's L1)"
    );
    describe_counter!(
        BUS_RECONNECTS_TOTAL,
        Unit::Count,
        "Invalidation bus reconnects"
    );
    describe_gauge!(
        BREAKER_OPEN,
        Unit::Count,
        "Open circuit breakers of the engine (L2 store, bus publisher)"
    );
    describe_gauge!(
        WRITE_BEHIND_QUEUE_DEPTH,
        Unit::Count,
        "Entries waiting in the write-behind queue"
    );
}

/// The pre-registered handles of one typed cache; [`CacheObserver::on_event`] only touches
/// them (an atomic add, or a histogram push): no formatting, no map lookup.
pub struct CacheMetrics {
    cache: Arc<str>,
    get_l1_hit: Counter,
    get_l1_miss: Counter,
    get_l1_stale: Counter,
    get_l2_hit: Counter,
    get_l2_miss: Counter,
    get_l2_error: Counter,
    get_coalesced_hit: Counter,
    get_coalesced_error: Counter,
    set_l1_hit: Counter,
    set_l2_hit: Counter,
    set_l2_error: Counter,
    delete_l1_hit: Counter,
    delete_l2_error: Counter,
    load_hit: Counter,
    load_error: Counter,
    refresh_hit: Counter,
    get_l2_seconds: Histogram,
    set_l2_seconds: Histogram,
    loader_seconds: Histogram,
    l2_corrupt: Counter,
    /// Indexed like [`ERROR_KINDS`].
    l2_errors: [Counter; ERROR_KINDS.len()],
    coalesced: Counter,
    early_refreshes: Counter,
    leases_acquired: Counter,
    leases_waited: Counter,
    invalidations_sent: Counter,
    invalidations_received: Counter,
    invalidations_lost: Counter,
    bus_reconnects: Counter,
    /// Per-cache `Breaker` events count with the engine's breakers.
    engine: EngineMetrics,
    write_behind_depth: Gauge,
    /// The labels of this cache's gauges reported by name ([`CacheEvent::Gauge`]).
    gauge_labels: Vec<Label>,
    /// Where they are registered (on first report).
    gauge_reg: Registrar,
}

impl fmt::Debug for CacheMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheMetrics")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl CacheMetrics {
    /// Register every series of `cache` with the current recorder.
    fn register(reg: &Registrar, cache: &str, engine: EngineMetrics) -> Self {
        let id = Label::new(CACHE, cache.to_owned());
        let counter = |name: &'static str, rest: &[(&'static str, &'static str)]| {
            metrics::counter!(name, reg.labels(&id, rest))
        };
        let op = |operation: &'static str, tier: &'static str, result: &'static str| {
            counter(
                OPERATIONS_TOTAL,
                &[(OPERATION, operation), (TIER, tier), (RESULT, result)],
            )
        };
        let seconds = |operation: &'static str, tier: &'static str| {
            metrics::histogram!(
                OPERATION_SECONDS,
                reg.labels(&id, &[(OPERATION, operation), (TIER, tier)])
            )
        };
        CacheMetrics {
            cache: Arc::from(cache),
            get_l1_hit: op("get", "l1", "hit"),
            get_l1_miss: op("get", "l1", "miss"),
            get_l1_stale: op("get", "l1", "stale"),
            get_l2_hit: op("get", "l2", "hit"),
            get_l2_miss: op("get", "l2", "miss"),
            get_l2_error: op("get", "l2", "error"),
            get_coalesced_hit: op("get", "coalesced", "hit"),
            get_coalesced_error: op("get", "coalesced", "error"),
            set_l1_hit: op("set", "l1", "hit"),
            set_l2_hit: op("set", "l2", "hit"),
            set_l2_error: op("set", "l2", "error"),
            delete_l1_hit: op("delete", "l1", "hit"),
            delete_l2_error: op("delete", "l2", "error"),
            load_hit: op("load", "loader", "hit"),
            load_error: op("load", "loader", "error"),
            refresh_hit: op("refresh", "loader", "hit"),
            get_l2_seconds: seconds("get", "l2"),
            set_l2_seconds: seconds("set", "l2"),
            loader_seconds: metrics::histogram!(LOADER_SECONDS, reg.labels(&id, &[])),
            l2_corrupt: counter(L2_CORRUPT_TOTAL, &[]),
            l2_errors: ERROR_KINDS.map(|kind| counter(L2_ERRORS_TOTAL, &[(KIND, kind)])),
            coalesced: counter(COALESCED_WAITERS_TOTAL, &[]),
            early_refreshes: counter(EARLY_REFRESHES_TOTAL, &[]),
            leases_acquired: counter(LEASES_TOTAL, &[(OUTCOME, "acquired")]),
            leases_waited: counter(LEASES_TOTAL, &[(OUTCOME, "waited")]),
            invalidations_sent: counter(INVALIDATIONS_TOTAL, &[(DIRECTION, "sent")]),
            invalidations_received: counter(INVALIDATIONS_TOTAL, &[(DIRECTION, "received")]),
            invalidations_lost: counter(INVALIDATIONS_LOST_TOTAL, &[]),
            bus_reconnects: counter(BUS_RECONNECTS_TOTAL, &[]),
            engine,
            write_behind_depth: metrics::gauge!(WRITE_BEHIND_QUEUE_DEPTH, reg.labels(&id, &[])),
            gauge_labels: reg.labels(&id, &[]),
            gauge_reg: reg.clone(),
        }
    }

    /// The cache these handles belong to.
    pub fn cache(&self) -> &str {
        &self.cache
    }

    /// The `kind` counter of an L2 error (index into [`ERROR_KINDS`]).
    #[inline]
    fn l2_error_kind(&self, kind: ErrorKind) -> &Counter {
        let i = match kind {
            ErrorKind::Connection => 0,
            ErrorKind::Timeout => 1,
            ErrorKind::Auth => 2,
            ErrorKind::Remote => 3,
            ErrorKind::CircuitOpen => 4,
            _ => 5,
        };
        &self.l2_errors[i]
    }
}

impl CacheObserver for CacheMetrics {
    #[inline]
    fn on_event(&self, event: CacheEvent) {
        match event {
            CacheEvent::L1Hit => self.get_l1_hit.increment(1),
            CacheEvent::L1Miss => self.get_l1_miss.increment(1),
            CacheEvent::StaleServed => self.get_l1_stale.increment(1),
            CacheEvent::L2Hit { latency } => {
                self.get_l2_hit.increment(1);
                self.get_l2_seconds.record(latency);
            }
            CacheEvent::L2Miss { latency } => {
                self.get_l2_miss.increment(1);
                self.get_l2_seconds.record(latency);
            }
            CacheEvent::L2Corrupt => {
                self.get_l2_error.increment(1);
                self.l2_corrupt.increment(1);
            }
            CacheEvent::L2Error { op, kind } => {
                match op {
                    L2Op::Get => &self.get_l2_error,
                    L2Op::Delete => &self.delete_l2_error,
                    // Set, the lease compare-and-set, and taking a lease (SET NX) are writes.
                    _ => &self.set_l2_error,
                }
                .increment(1);
                self.l2_error_kind(kind).increment(1);
            }
            CacheEvent::L2Set { latency } => {
                self.set_l2_hit.increment(1);
                self.set_l2_seconds.record(latency);
            }
            CacheEvent::Load { duration, ok } => {
                if ok {
                    self.load_hit.increment(1);
                } else {
                    self.load_error.increment(1);
                }
                self.loader_seconds.record(duration);
            }
            CacheEvent::Coalesced => self.coalesced.increment(1),
            CacheEvent::CoalescedResult { ok } => {
                if ok {
                    self.get_coalesced_hit.increment(1);
                } else {
                    self.get_coalesced_error.increment(1);
                }
            }
            CacheEvent::EarlyRefresh => {
                self.refresh_hit.increment(1);
                self.early_refreshes.increment(1);
            }
            CacheEvent::LeaseAcquired => self.leases_acquired.increment(1),
            CacheEvent::LeaseWait => self.leases_waited.increment(1),
            CacheEvent::Set => self.set_l1_hit.increment(1),
            CacheEvent::Invalidate => self.delete_l1_hit.increment(1),
            CacheEvent::InvalidationsSent { keys } => {
                self.invalidations_sent.increment(u64::from(keys));
            }
            CacheEvent::InvalidationsReceived { keys } => {
                self.invalidations_received.increment(u64::from(keys));
            }
            CacheEvent::InvalidationsLost => self.invalidations_lost.increment(1),
            CacheEvent::BusReconnect => self.bus_reconnects.increment(1),
            CacheEvent::Breaker { open } => self.engine.breaker(open),
            CacheEvent::Gauge { name, value } => {
                if name == "write_behind_queue_depth" {
                    self.write_behind_depth.set(value as f64);
                } else {
                    self.gauge_reg.scope(|| {
                        metrics::gauge!(format!("cache_{name}"), self.gauge_labels.clone())
                            .set(value as f64);
                    });
                }
            }
            _ => {}
        }
    }
}
