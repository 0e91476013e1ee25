//! The seeded random source shared by the tasks of one seed, the trace of what happened, and
//! the failures found.
//!
//! Everything of one seed runs on one current-thread runtime, so the order in which tasks draw
//! from the shared source is itself deterministic: the same seed replays the same run.

use std::sync::{Arc, Mutex, MutexGuard};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A seeded random source that tasks can share.
#[derive(Clone)]
pub struct SimRng(Arc<Mutex<fastrand::Rng>>);

impl SimRng {
    /// A source seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SimRng(Arc::new(Mutex::new(fastrand::Rng::with_seed(seed))))
    }

    /// True with probability `p`.
    pub fn chance(&self, p: f64) -> bool {
        p > 0.0 && lock(&self.0).f64() < p
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            lock(&self.0).usize(..n)
        }
    }

    /// A number in `lo..=hi`.
    pub fn between(&self, lo: u64, hi: u64) -> u64 {
        lock(&self.0).u64(lo..=hi.max(lo))
    }

    /// One of `items` (which must not be empty).
    pub fn pick<T: Copy>(&self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// An index drawn with the given weights.
    pub fn weighted(&self, weights: &[u32]) -> usize {
        let total: u32 = weights.iter().sum();
        let mut draw = lock(&self.0).u32(..total.max(1));
        for (i, w) in weights.iter().enumerate() {
            if draw < *w {
                return i;
            }
            draw -= w;
        }
        weights.len().saturating_sub(1)
    }
}

/// What happened in one seed, one line per operation, fault or check, stamped with the
/// (virtual) time since the seed started. Printed only when the seed fails.
#[derive(Clone)]
pub struct Trace {
    lines: Arc<Mutex<Vec<String>>>,
    start: tokio::time::Instant,
}

impl Trace {
    /// An empty trace starting now (call inside the seed's runtime).
    pub fn new() -> Self {
        Trace {
            lines: Arc::default(),
            start: tokio::time::Instant::now(),
        }
    }

    /// Record one line.
    pub fn log(&self, line: impl AsRef<str>) {
        let ms = self.start.elapsed().as_millis();
        lock(&self.lines).push(format!("[{ms:>6} ms] {}", line.as_ref()));
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        lock(&self.lines).clone()
    }
}

/// One broken invariant.
#[derive(Debug, Clone)]
pub struct Failure {
    /// A short, stable name of the kind of failure (to group seeds).
    pub category: &'static str,
    /// What exactly was seen.
    pub detail: String,
}

/// The failures found in one seed.
#[derive(Clone, Default)]
pub struct Failures(Arc<Mutex<Vec<Failure>>>);

impl Failures {
    /// Record a failure (also into the trace).
    pub fn add(&self, trace: &Trace, category: &'static str, detail: impl Into<String>) {
        let detail = detail.into();
        trace.log(format!("FAILURE {category}: {detail}"));
        lock(&self.0).push(Failure { category, detail });
    }

    /// Every failure so far.
    pub fn all(&self) -> Vec<Failure> {
        lock(&self.0).clone()
    }
}

/// An engine observer that writes what the trace needs to explain a failure: breaker
/// transitions, calls the breaker skipped, detected invalidation losses, stale values served.
pub struct TraceObserver {
    /// The instance.
    pub node: usize,
    /// Where to write.
    pub trace: Trace,
}

impl cache_tiered::Observer for TraceObserver {
    fn for_cache(&self, cache: &str) -> Arc<dyn cache_tiered::CacheObserver> {
        Arc::new(TraceCacheObserver {
            who: format!("n{} {cache}", self.node),
            trace: self.trace.clone(),
        })
    }

    fn on_engine_event(&self, event: cache_tiered::CacheEvent) {
        if let cache_tiered::CacheEvent::Breaker { open } = event {
            let state = if open { "opens" } else { "closes" };
            self.trace
                .log(format!("  n{}: a circuit breaker {state}", self.node));
        }
    }
}

struct TraceCacheObserver {
    who: String,
    trace: Trace,
}

impl cache_tiered::CacheObserver for TraceCacheObserver {
    fn on_event(&self, event: cache_tiered::CacheEvent) {
        use cache_tiered::CacheEvent as E;
        let what = match event {
            E::L2Error {
                op,
                kind: cache_tiered::ErrorKind::CircuitOpen,
            } => format!("L2 {op:?} skipped: breaker open"),
            E::InvalidationsLost => "possible invalidation loss: L1 flushed".into(),
            E::BusReconnect => "bus reconnected: L1 flushed".into(),
            E::StaleServed => "served a stale value".into(),
            _ => return,
        };
        self.trace.log(format!("  {}: {what}", self.who));
    }
}
