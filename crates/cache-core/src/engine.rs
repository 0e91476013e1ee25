//! The engine: one L1 budget, one remote store, one clock and observer, shared by many
//! typed caches (one per namespace).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use crate::background::Background;
use crate::breaker::{BreakerBus, BreakerConfig, CircuitBreaker};
use crate::bus::{BusConfig, BusRuntime, BusStats, BusTransport};
use crate::clock::{Clock, ClockSource};
use crate::error::Result;
use crate::key::validate_name;
use crate::l1::{L1Stats, L1Store, L1Tier, NamespaceId, QuickL1};
use crate::layer::{BreakerLayer, L2Layer, LayerContext};
use crate::observer::{NoopObserver, Observer};
use crate::policy::{RandomSource, ThreadRandom};
use crate::recovery::{RecoveryQueue, RecoveryStats};
use crate::remote::RemoteStore;
use std::time::Duration;

/// What [`Engine::shutdown`] could not finish before its deadline (all 0: everything done).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// L2 writes and deletes still queued for recovery (L2 did not answer in time); their
    /// keys may hold older values in L2 until they expire.
    pub unsettled_recovery: u64,
    /// Keys whose invalidation was not published; other instances' copies of them live
    /// until their L1 TTL (or until they notice the gap in this instance's messages).
    pub unsent_invalidations: u64,
    /// Background L2 writes ([`crate::CallOptions::background_l2_write`]) not done: their
    /// keys keep older values in L2 (this instance's L1 had the new ones).
    pub unwritten_background: u64,
}

/// What every typed cache of an engine shares.
pub(crate) struct EngineInner {
    pub(crate) prefix: String,
    pub(crate) l1: L1Tier,
    pub(crate) l2: Option<Arc<dyn RemoteStore>>,
    pub(crate) clock: ClockSource,
    pub(crate) observer: Arc<dyn Observer>,
    pub(crate) random: Arc<dyn RandomSource>,
    pub(crate) bus: Option<Arc<BusRuntime>>,
    pub(crate) l2_breaker: Option<Arc<CircuitBreaker>>,
    pub(crate) recovery: Option<Arc<RecoveryQueue>>,
    /// Background L2 writes, in call order per key.
    pub(crate) background: Background,
    recovery_interval: Duration,
    replayer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub(crate) namespaces: Mutex<HashMap<String, NsEntry>>,
}

/// A namespace registered with the engine: its id, its value type, and the state its live
/// handles share.
pub(crate) struct NsEntry {
    pub(crate) id: NamespaceId,
    pub(crate) ty: TypeId,
    pub(crate) state: Weak<dyn Any + Send + Sync>,
}

/// The shared engine behind typed caches. Cheap to clone.
///
/// ```
/// # use std::sync::Arc;
/// # use cache_core::{Engine, MemoryStore};
/// # fn demo() -> cache_core::Result<()> {
/// let engine = Engine::builder("app")
///     .with_l1_capacity_bytes(64 << 20)
///     .with_l2(Arc::new(MemoryStore::new()))
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<EngineInner>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("prefix", &self.inner.prefix)
            .field("l2", &self.inner.l2.as_ref().map(|s| s.kind()))
            .finish()
    }
}

impl Engine {
    /// Finish the engine's background work, within `deadline`, and stop its tasks:
    /// background L2 writes are done, L2 writes and deletes queued for recovery are settled (while L2 answers), queued
    /// invalidations are published, then the replay task and the bus (receiver, heartbeats,
    /// publisher, after a farewell) stop. Returns what could not be finished in time.
    ///
    /// Call it before dropping the engine at process exit. The caches keep reading and writing
    /// both tiers afterwards, but no invalidation is sent or received any more and nothing
    /// is replayed: drop the engine. Dropping an engine without it also stops every task, but
    /// does not wait for them: its recovery queue is lost.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let until = tokio::time::Instant::now() + deadline;
        let inner = &self.inner;
        let bus = inner.bus.as_deref();
        // Background writes first: the ones that fail go to the recovery queue, drained next.
        let unwritten_background = inner.background.drain(until).await as u64;
        inner.background.stop();
        if let (Some(queue), Some(l2)) = (&inner.recovery, &inner.l2) {
            while queue.len() > 0 {
                let now = tokio::time::Instant::now();
                if now >= until {
                    break;
                }
                let replayed = tokio::time::timeout(until - now, queue.replay(l2.as_ref(), bus))
                    .await
                    .unwrap_or(0);
                if replayed == 0 {
                    // L2 refused the oldest entry: try again shortly, until the deadline.
                    let pause = Duration::from_millis(20)
                        .min(until.saturating_duration_since(tokio::time::Instant::now()));
                    tokio::time::sleep(pause).await;
                }
            }
        }
        inner.stop_replayer();
        let unsent_invalidations = match bus {
            Some(bus) => {
                let left = bus.drain(until).await;
                bus.close();
                left
            }
            None => 0,
        };
        let report = ShutdownReport {
            unsettled_recovery: inner.recovery.as_ref().map_or(0, |q| q.len() as u64),
            unsent_invalidations,
            unwritten_background,
        };
        tracing::info!(
            prefix = %inner.prefix,
            unsettled_recovery = report.unsettled_recovery,
            unsent_invalidations = report.unsent_invalidations,
            unwritten_background = report.unwritten_background,
            "engine shut down"
        );
        report
    }

    /// Background L2 writes queued or running ([`crate::CallOptions::background_l2_write`]).
    /// Until a background write has landed it is concurrent with any write of its key made
    /// by another instance: the later to reach L2 wins there. An application that writes a
    /// key from several instances can wait for this to reach 0 where order matters.
    pub fn background_writes(&self) -> usize {
        self.inner.background.len()
    }

    /// Start building an engine whose keys all start with `prefix`.
    pub fn builder(prefix: impl Into<String>) -> EngineBuilder {
        EngineBuilder {
            prefix: prefix.into(),
            l1: None,
            l1_capacity_bytes: cache_l1::DEFAULT_CAPACITY_BYTES,
            l2: None,
            clock: ClockSource::System,
            observer: Arc::new(NoopObserver),
            random: Arc::new(ThreadRandom),
            bus: None,
            tracking: None,
            bus_config: BusConfig::default(),
            breaker: Some(BreakerConfig::default()),
            recovery_capacity: 10_000,
            recovery_interval: Duration::from_millis(250),
            background_capacity: crate::background::DEFAULT_CAPACITY,
            layers: None,
            extra_layers: Vec::new(),
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The remote store, if any.
    pub fn remote(&self) -> Option<&Arc<dyn RemoteStore>> {
        self.inner.l2.as_ref()
    }

    /// The shared L1 store, as a trait object (for gauges and inspection; the engine itself
    /// calls the default store directly).
    pub fn l1_store(&self) -> Arc<dyn L1Store> {
        self.inner.l1.store()
    }

    /// The shared L1 tier.
    #[inline]
    pub(crate) fn l1(&self) -> &L1Tier {
        &self.inner.l1
    }

    /// True while the L2 circuit breaker is open (L2 skipped).
    pub fn l2_breaker_open(&self) -> bool {
        self.inner.l2_breaker.as_ref().is_some_and(|b| b.is_open())
    }

    /// Counters of the auto-recovery queue, when it is on.
    pub fn recovery_stats(&self) -> Option<RecoveryStats> {
        self.inner.recovery.as_ref().map(|r| r.stats())
    }

    /// This instance's id on the invalidation bus, when there is one.
    pub fn instance_id(&self) -> Option<u64> {
        self.inner.bus.as_ref().map(|b| b.instance)
    }

    /// Wait until Redis client tracking is on, at most `limit`: `true` when it is (or when the
    /// engine has no tracking). Until then, writes by other clients are not reported; when it
    /// comes on, L1 is flushed, so nothing cached before is trusted.
    pub async fn wait_for_tracking(&self, limit: Duration) -> bool {
        match &self.inner.bus {
            Some(bus) => bus.wait_tracking(limit).await,
            None => true,
        }
    }

    /// Counters of the invalidation bus, when there is one.
    pub fn bus_stats(&self) -> Option<BusStats> {
        self.inner.bus.as_ref().map(|b| b.stats())
    }

    /// Counters of the shared L1.
    pub fn l1_stats(&self) -> L1Stats {
        self.inner.l1.stats()
    }

    /// Milliseconds since the Unix epoch, from the engine's clock.
    #[inline]
    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.now_ms()
    }

    /// The invalidation bus, when the engine has one.
    pub(crate) fn bus(&self) -> Option<&Arc<BusRuntime>> {
        self.inner.bus.as_ref()
    }

    /// The queue of background L2 writes.
    pub(crate) fn background(&self) -> &Background {
        &self.inner.background
    }

    /// The queue of failed L2 writes and deletes waiting for replay, when auto-recovery is on.
    pub(crate) fn recovery_queue(&self) -> Option<&Arc<RecoveryQueue>> {
        self.inner.recovery.as_ref()
    }

    /// The source of random draws (early refresh).
    pub(crate) fn random(&self) -> &dyn RandomSource {
        self.inner.random.as_ref()
    }

    /// The engine's observer.
    pub(crate) fn observer(&self) -> &Arc<dyn Observer> {
        &self.inner.observer
    }

    /// Queue a failed L2 operation for replay; false when auto-recovery is off.
    pub(crate) fn queue_recovery(
        &self,
        full_key: String,
        op: crate::recovery::Replay,
        announce: Option<(String, String)>,
    ) -> bool {
        self.inner.queue_recovery(full_key, op, announce)
    }

    /// A write or delete of `full_key` succeeded: nothing pending for it needs replaying.
    pub(crate) fn recovered(&self, full_key: &str) {
        self.inner.recovered(full_key);
    }
}

/// Builds an [`Engine`].
pub struct EngineBuilder {
    prefix: String,
    l1: Option<L1Tier>,
    l1_capacity_bytes: u64,
    l2: Option<Arc<dyn RemoteStore>>,
    clock: ClockSource,
    observer: Arc<dyn Observer>,
    random: Arc<dyn RandomSource>,
    bus: Option<Arc<dyn BusTransport>>,
    tracking: Option<Arc<dyn BusTransport>>,
    bus_config: BusConfig,
    breaker: Option<BreakerConfig>,
    recovery_capacity: usize,
    recovery_interval: Duration,
    background_capacity: usize,
    /// `None`: the default stack (a breaker when `breaker` is set).
    layers: Option<Vec<Arc<dyn L2Layer>>>,
    extra_layers: Vec<Arc<dyn L2Layer>>,
}

impl fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("prefix", &self.prefix)
            .field("l2", &self.l2.as_ref().map(|s| s.kind()))
            .finish()
    }
}

impl EngineBuilder {
    /// The in-process tier: a [`QuickL1`] (shared with other engines when the same `Arc` is
    /// passed to each). Without one the engine makes its own of
    /// [`EngineBuilder::with_l1_capacity_bytes`] (default 128 MiB).
    pub fn with_l1(mut self, l1: Arc<QuickL1>) -> Self {
        self.l1 = Some(L1Tier::Quick(l1));
        self
    }

    /// The byte budget of the L1 store the engine makes when none was given with
    /// [`EngineBuilder::with_l1`] (default 128 MiB).
    pub fn with_l1_capacity_bytes(mut self, bytes: u64) -> Self {
        self.l1_capacity_bytes = bytes;
        self
    }

    /// Any other in-process store (a wrapper for tests or instrumentation): every L1 hit then
    /// pays a dynamic call, which the default [`QuickL1`] does not.
    pub fn with_custom_l1(mut self, l1: Arc<dyn L1Store>) -> Self {
        self.l1 = Some(L1Tier::Custom(l1));
        self
    }

    /// The remote tier. Without one the engine runs on L1 + loader alone.
    pub fn with_l2(mut self, l2: Arc<dyn RemoteStore>) -> Self {
        self.l2 = Some(l2);
        self
    }

    /// The clock (tests inject a [`crate::ManualClock`]).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = ClockSource::Injected(clock);
        self
    }

    /// The observer that makes one per-cache observer for each typed cache.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// The source of random draws for early refresh (tests inject a seeded one).
    pub fn with_random(mut self, random: Arc<dyn RandomSource>) -> Self {
        self.random = random;
        self
    }

    /// Keep L1 coherent with other instances through this invalidation bus (e.g. Redis
    /// pub/sub from `cache-redis`): `set`, `invalidate` and `clear_namespace` are published,
    /// and losses are detected and answered with a flush.
    pub fn with_bus(mut self, bus: Arc<dyn BusTransport>) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Also drop L1 copies of keys written by any client (Redis client tracking). Needs a bus
    /// (`with_bus`) for this instance's own writes to reach the others' L1 in all cases.
    pub fn with_tracking(mut self, tracking: Arc<dyn BusTransport>) -> Self {
        self.tracking = Some(tracking);
        self
    }

    /// Bus timing (batching window, heartbeat).
    pub fn with_bus_config(mut self, config: BusConfig) -> Self {
        self.bus_config = config;
        self
    }

    /// Circuit breakers on L2 and on the bus publisher (default: on, 5 failures, 500 ms
    /// cool-down); `None` turns them off.
    pub fn with_breaker(mut self, config: Option<BreakerConfig>) -> Self {
        self.breaker = config;
        self
    }

    /// Auto-recovery: how many failed L2 writes/deletes (one per key, newest wins) are kept
    /// for replay when L2 is back (default 10,000; 0 turns it off), and how often replay is
    /// attempted (default 250 ms).
    pub fn with_recovery(mut self, capacity: usize, interval: Duration) -> Self {
        self.recovery_capacity = capacity;
        self.recovery_interval = interval;
        self
    }

    /// How many background L2 writes may wait ([`crate::CallOptions::background_l2_write`];
    /// default 10,000). A write that finds the queue full is done in the foreground: the call
    /// waits for it.
    pub fn with_background_writes(mut self, capacity: usize) -> Self {
        self.background_capacity = capacity;
        self
    }

    /// Add `layer` on top of the L2 layer stack (outermost; see [`L2Layer`](crate::L2Layer)). The
    /// default stack is a [`crate::layer::BreakerLayer`] when breakers are on.
    pub fn with_l2_layer(mut self, layer: Arc<dyn L2Layer>) -> Self {
        self.extra_layers.push(layer);
        self
    }

    /// Replace the default L2 layer stack with `layers`, first innermost (an empty stack:
    /// the bare store, no L2 breaker; the bus publisher's breaker follows
    /// [`EngineBuilder::with_breaker`] still). Layers added with
    /// [`EngineBuilder::with_l2_layer`] go on top.
    pub fn with_l2_layers(mut self, layers: Vec<Arc<dyn L2Layer>>) -> Self {
        self.layers = Some(layers);
        self
    }

    /// Build the engine.
    pub fn build(self) -> Result<Engine> {
        validate_name("prefix", &self.prefix)?;
        let l1 = self.l1.unwrap_or_else(|| {
            L1Tier::Quick(Arc::new(QuickL1::with_capacity_bytes(
                self.l1_capacity_bytes,
            )))
        });
        let mut layers: Vec<Arc<dyn L2Layer>> = match self.layers {
            Some(layers) => layers,
            None => self
                .breaker
                .map(|cfg| Arc::new(BreakerLayer::new(cfg)) as Arc<dyn L2Layer>)
                .into_iter()
                .collect(),
        };
        layers.extend(self.extra_layers);
        let context = LayerContext {
            observer: self.observer.clone(),
        };
        let (l2, l2_breaker) = match self.l2 {
            Some(store) => {
                let (store, breaker) = crate::layer::stack(store, &layers, &context);
                (Some(store), breaker)
            }
            None => (None, None),
        };
        let bus_transport: Option<Arc<dyn BusTransport>> = match (self.bus, self.breaker) {
            (Some(t), Some(cfg)) => Some(Arc::new(BreakerBus::new(
                t,
                Arc::new(CircuitBreaker::new(
                    "bus publisher",
                    cfg,
                    Some(self.observer.clone()),
                )),
            ))),
            (t, _) => t,
        };
        let bus = match (bus_transport, self.tracking) {
            (Some(bus), tracking) => {
                Some(Arc::new(BusRuntime::start(bus, tracking, self.bus_config)?))
            }
            (None, Some(tracking)) => Some(Arc::new(BusRuntime::start(
                Arc::new(crate::bus::NullTransport),
                Some(tracking),
                self.bus_config,
            )?)),
            (None, None) => None,
        };
        Ok(Engine {
            inner: Arc::new(EngineInner {
                prefix: self.prefix,
                l1,
                l2,
                clock: self.clock,
                observer: self.observer,
                random: self.random,
                bus,
                l2_breaker,
                recovery: (self.recovery_capacity > 0)
                    .then(|| Arc::new(RecoveryQueue::new(self.recovery_capacity))),
                recovery_interval: self.recovery_interval,
                background: Background::new(self.background_capacity),
                replayer: Mutex::new(None),
                namespaces: Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl EngineInner {
    /// Queue a failed L2 operation for replay (starting the replay task on first use).
    /// Returns false when auto-recovery is off.
    pub(crate) fn queue_recovery(
        self: &Arc<Self>,
        full_key: String,
        op: crate::recovery::Replay,
        announce: Option<(String, String)>,
    ) -> bool {
        let (Some(queue), Some(l2)) = (&self.recovery, &self.l2) else {
            return false;
        };
        queue.push(full_key, op, announce);
        let mut replayer = self.replayer.lock().unwrap_or_else(|p| p.into_inner());
        if replayer.is_none() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let bus = self.bus.as_ref().map(Arc::downgrade).unwrap_or_default();
                *replayer = Some(handle.spawn(crate::recovery::replay_loop(
                    Arc::downgrade(queue),
                    Arc::downgrade(l2),
                    bus,
                    self.recovery_interval,
                )));
            }
        }
        true
    }

    /// A newer successful write supersedes anything pending for the key.
    pub(crate) fn recovered(&self, full_key: &str) {
        if let Some(q) = &self.recovery {
            q.forget(full_key);
        }
    }
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        self.stop_replayer();
    }
}

impl EngineInner {
    /// Stop the recovery replay task, if it runs.
    fn stop_replayer(&self) {
        if let Some(r) = self
            .replayer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            r.abort();
        }
    }

    /// Now, in unix ms: the clock thread's reading inline, or the injected clock.
    #[inline]
    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}

#[cfg(test)]
mod tests;
