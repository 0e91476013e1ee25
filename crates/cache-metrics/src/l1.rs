//! L1 gauges: entries, bytes and budget of the in-process tier shared by an engine's caches.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use cache_core::{Engine, Error, ErrorKind, L1Stats, L1Store, Result};
use metrics::{Counter, Gauge, Label, Unit};

use crate::names::{BYTES, CAPACITY_BYTES, ENGINE, ENTRIES, EVICTIONS_TOTAL};
use crate::registrar::Registrar;

/// The L1 series of one engine (label `engine`): `cache_entries`, `cache_bytes`,
/// `cache_capacity_bytes` gauges and the `cache_evictions_total` counter, registered once.
pub struct L1Gauges {
    engine: Arc<str>,
    entries: Gauge,
    bytes: Gauge,
    capacity_bytes: Gauge,
    evictions: Counter,
}

impl fmt::Debug for L1Gauges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("L1Gauges")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl L1Gauges {
    /// Register the L1 series of the engine named `engine` with the global recorder.
    pub fn new(engine: &str) -> Self {
        Self::register(&Registrar::default(), engine)
    }

    pub(crate) fn register(reg: &Registrar, engine: &str) -> Self {
        reg.scope(|| {
            metrics::describe_gauge!(ENTRIES, Unit::Count, "Live L1 entries");
            metrics::describe_gauge!(BYTES, Unit::Bytes, "Bytes charged against the L1 budget");
            metrics::describe_gauge!(CAPACITY_BYTES, Unit::Bytes, "The L1 budget");
            metrics::describe_counter!(
                EVICTIONS_TOTAL,
                Unit::Count,
                "L1 entries evicted to stay within the budget"
            );
            let id = Label::new(ENGINE, engine.to_owned());
            L1Gauges {
                engine: Arc::from(engine),
                entries: metrics::gauge!(ENTRIES, reg.labels(&id, &[])),
                bytes: metrics::gauge!(BYTES, reg.labels(&id, &[])),
                capacity_bytes: metrics::gauge!(CAPACITY_BYTES, reg.labels(&id, &[])),
                evictions: metrics::counter!(EVICTIONS_TOTAL, reg.labels(&id, &[])),
            }
        })
    }

    /// The engine these series belong to.
    pub fn engine(&self) -> &str {
        &self.engine
    }

    /// Push one reading.
    pub fn record(&self, stats: &L1Stats) {
        self.entries.set(stats.entries as f64);
        self.bytes.set(stats.bytes as f64);
        self.capacity_bytes.set(stats.capacity_bytes as f64);
        self.evictions.absolute(stats.evictions);
    }

    /// Read `store` now and every `every` after, from a task on the current tokio runtime.
    /// The task holds the store weakly: it ends when the returned handle is dropped or when
    /// the store is gone. Errors if `every` is zero or no runtime is running.
    pub fn spawn(self, store: Arc<dyn L1Store>, every: Duration) -> Result<L1GaugeTask> {
        if every.is_zero() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "the L1 gauge interval must be positive",
            ));
        }
        let rt = tokio::runtime::Handle::try_current().map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                "L1 gauges need a running tokio runtime",
            )
            .with_source(e)
        })?;
        let store: Weak<dyn L1Store> = Arc::downgrade(&store);
        let task = rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Some(store) = store.upgrade() else {
                    break;
                };
                self.record(&store.stats());
            }
        });
        Ok(L1GaugeTask { task })
    }
}

/// Push one reading of an engine's L1 (label `engine` = `engine`) through the global recorder.
///
/// Registers the series on every call (a map lookup each): for an occasional push. Keep an
/// [`L1Gauges`] to push often, or let [`spawn_l1_gauges`] poll.
pub fn record_l1(engine: &str, stats: &L1Stats) {
    L1Gauges::new(engine).record(stats);
}

/// Update the L1 gauges of `engine` (label `engine` = its prefix) every `every` through the
/// global recorder. See [`L1Gauges::spawn`].
pub fn spawn_l1_gauges(engine: &Engine, every: Duration) -> Result<L1GaugeTask> {
    L1Gauges::new(engine.prefix()).spawn(engine.l1_store(), every)
}

/// The task updating L1 gauges; dropping it stops the task.
#[must_use = "the L1 gauge task stops when this handle is dropped"]
#[derive(Debug)]
pub struct L1GaugeTask {
    task: tokio::task::JoinHandle<()>,
}

impl L1GaugeTask {
    /// Stop updating (the same as dropping the handle).
    pub fn stop(self) {}

    /// Whether the task has ended (stopped, or the engine's L1 is gone).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for L1GaugeTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}
