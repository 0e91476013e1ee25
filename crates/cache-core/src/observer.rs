//! Observation hooks. The engine reports what happens through [`CacheObserver`]; the default
//! does nothing, `cache-metrics` records through the `metrics` facade.

use std::sync::Arc;
use std::time::Duration;

use crate::error::ErrorKind;

/// Which tier an event concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Tier {
    /// The in-process tier.
    L1,
    /// The remote tier.
    L2,
    /// The user's loader (the source of truth).
    Loader,
}

/// Which operation an L2 error interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum L2Op {
    /// A read (`GET`, `MGET`).
    Get,
    /// A write (`SET`, pipelined `SET`s, the lease compare-and-set).
    Set,
    /// A delete (`DEL`).
    Delete,
    /// Taking a fill lease.
    Lease,
}

/// Something that happened in one typed cache.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum CacheEvent {
    /// L1 served a live value.
    L1Hit,
    /// L1 had nothing live.
    L1Miss,
    /// L2 answered with a usable value.
    L2Hit {
        /// Round-trip time.
        latency: Duration,
    },
    /// L2 had no value.
    L2Miss {
        /// Round-trip time.
        latency: Duration,
    },
    /// L2 held bytes that could not be read (foreign, corrupt, unknown version); treated as a miss.
    L2Corrupt,
    /// An L2 operation failed; the cache carried on without it.
    L2Error {
        /// What was being done.
        op: L2Op,
        /// What failed.
        kind: ErrorKind,
    },
    /// An L2 value write completed (the `SET` of `set`/`write`/`set_with_tags`, a fill
    /// after a load, plain or compare-and-set, one event per key of a batched fill). A
    /// compare-and-set fill that Redis answered but refused (the lease was gone) counts too:
    /// the round trip was made.
    L2Set {
        /// Round-trip time (of the whole batch for a batched fill); zero when no observer
        /// listens (the engine then does not time it).
        latency: Duration,
    },
    /// The loader ran.
    Load {
        /// How long it took.
        duration: Duration,
        /// Whether it succeeded.
        ok: bool,
    },
    /// A caller joined a load already in flight instead of starting one.
    Coalesced,
    /// A caller that did not lead its own read (it joined a load in flight, or repeated a key
    /// of its own `get_many_or_load` call) received that load's result. Sent once per such
    /// caller, when the result reaches it (a hard loader timeout without a stale value is
    /// its error); not sent when its own timeout served it a stale value instead (that is
    /// [`CacheEvent::StaleServed`]).
    CoalescedResult {
        /// `true` for a value or a cached absence (from L2 or from another caller's load),
        /// `false` for an error.
        ok: bool,
    },
    /// A value is being refreshed before expiry in the background.
    EarlyRefresh,
    /// This instance took a fill lease (it will load for every instance).
    LeaseAcquired,
    /// This instance waited for another instance's lease.
    LeaseWait,
    /// A stale value was served because the loader failed or was too slow (fail-safe).
    StaleServed,
    /// A value was written (`set`).
    Set,
    /// A key was invalidated by this instance.
    Invalidate,
    /// Invalidation messages published to other instances.
    InvalidationsSent {
        /// Keys (or namespace/tag markers) in the batch.
        keys: u32,
    },
    /// Invalidations received from other instances and applied to L1.
    InvalidationsReceived {
        /// Keys in the message.
        keys: u32,
    },
    /// A possible loss of invalidations was detected (sequence gap, disconnect, missing
    /// heartbeat); the namespace's L1 is flushed as `BusConfig::on_loss` says (at once by
    /// default).
    InvalidationsLost,
    /// The invalidation subscription reconnected.
    BusReconnect,
    /// The L2 circuit breaker changed state.
    Breaker {
        /// `true` when it opened (L2 skipped), `false` when it closed.
        open: bool,
    },
    /// A level reported by a companion of the cache (e.g. `cache-writebehind`'s queue depth,
    /// `name` "write_behind_queue_depth"): observers that record metrics publish it as the
    /// gauge `cache_{name}`.
    Gauge {
        /// The gauge's name, without the `cache_` prefix (snake case).
        name: &'static str,
        /// Its value now.
        value: u64,
    },
}

/// Receives the events of one typed cache. Called on the hot path: keep it cheap.
pub trait CacheObserver: Send + Sync + 'static {
    /// One event.
    fn on_event(&self, event: CacheEvent);

    /// True for an observer that ignores everything: the engine then skips the call on the
    /// L1 hit path.
    fn is_noop(&self) -> bool {
        false
    }
}

/// Makes one [`CacheObserver`] per typed cache, once, when the cache is created (so metric
/// handles are built once, never looked up per call).
pub trait Observer: Send + Sync + 'static {
    /// The observer for the cache named `cache` (its namespace).
    fn for_cache(&self, cache: &str) -> Arc<dyn CacheObserver>;

    /// An event that concerns the whole engine rather than one cache (the L2 and bus
    /// breakers' [`CacheEvent::Breaker`]). Does nothing by default.
    fn on_engine_event(&self, event: CacheEvent) {
        let _ = event;
    }
}

/// Does nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopObserver;

impl CacheObserver for NoopObserver {
    #[inline]
    fn on_event(&self, _event: CacheEvent) {}

    fn is_noop(&self) -> bool {
        true
    }
}

impl Observer for NoopObserver {
    fn for_cache(&self, _cache: &str) -> Arc<dyn CacheObserver> {
        Arc::new(NoopObserver)
    }
}
