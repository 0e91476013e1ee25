//! The engine: one L1 budget, one remote store, one clock and observer, shared by many
//! typed caches (one per namespace).

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::bus::{BusConfig, BusRuntime, BusStats, BusTransport};
use crate::cache::{CacheBuilder, CacheConfig};
use crate::clock::{Clock, SystemClock};
use crate::codec::Codec;
use crate::error::{Error, ErrorKind, Result};
use crate::key::validate_name;
use crate::l1::{L1Stats, L1Store, NamespaceId};
use crate::observer::{NoopObserver, Observer};
use crate::policy::{RandomSource, ThreadRandom};
use crate::remote::RemoteStore;

/// What every typed cache of an engine shares.
pub(crate) struct EngineInner {
    pub(crate) prefix: String,
    pub(crate) l1: Arc<dyn L1Store>,
    pub(crate) l2: Option<Arc<dyn RemoteStore>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) observer: Arc<dyn Observer>,
    pub(crate) random: Arc<dyn RandomSource>,
    pub(crate) bus: Option<BusRuntime>,
    namespaces: Mutex<HashMap<String, (NamespaceId, TypeId)>>,
}

/// The shared engine behind typed caches. Cheap to clone.
///
/// ```
/// # use std::sync::Arc;
/// # use cache_core::{Engine, MemoryStore};
/// # fn l1() -> Arc<dyn cache_core::L1Store> { unimplemented!() }
/// # fn demo() -> cache_core::Result<()> {
/// let engine = Engine::builder("app")
///     .with_l1(l1())
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
    /// Start building an engine whose keys all start with `prefix`.
    pub fn builder(prefix: impl Into<String>) -> EngineBuilder {
        EngineBuilder {
            prefix: prefix.into(),
            l1: None,
            l2: None,
            clock: Arc::new(SystemClock),
            observer: Arc::new(NoopObserver),
            random: Arc::new(ThreadRandom),
            bus: None,
            tracking: None,
            bus_config: BusConfig::default(),
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

    /// The shared L1 store.
    pub fn l1(&self) -> &Arc<dyn L1Store> {
        &self.inner.l1
    }

    /// This instance's id on the invalidation bus, when there is one.
    pub fn instance_id(&self) -> Option<u64> {
        self.inner.bus.as_ref().map(|b| b.instance)
    }

    /// Counters of the invalidation bus, when there is one.
    pub fn bus_stats(&self) -> Option<BusStats> {
        self.inner.bus.as_ref().map(BusRuntime::stats)
    }

    /// Counters of the shared L1.
    pub fn l1_stats(&self) -> L1Stats {
        self.inner.l1.stats()
    }

    /// Start building a typed cache for `namespace`, with values `V` encoded by `C`.
    pub fn cache<V, C>(&self, namespace: impl Into<String>) -> CacheBuilder<V, C>
    where
        V: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
        C: Codec,
    {
        CacheBuilder::new(self.clone(), namespace.into(), CacheConfig::default())
    }

    /// Register a namespace for values of type `V`; the same namespace cannot hold two types.
    pub(crate) fn register_namespace<V: 'static>(&self, namespace: &str) -> Result<NamespaceId> {
        validate_name("namespace", namespace)?;
        let mut map = self
            .inner
            .namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let next = map.len() as NamespaceId;
        let (id, ty) = *map
            .entry(namespace.to_owned())
            .or_insert((next, TypeId::of::<V>()));
        if ty != TypeId::of::<V>() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("namespace {namespace:?} is already used by a cache of another value type"),
            ));
        }
        Ok(id)
    }
}

/// Builds an [`Engine`].
pub struct EngineBuilder {
    prefix: String,
    l1: Option<Arc<dyn L1Store>>,
    l2: Option<Arc<dyn RemoteStore>>,
    clock: Arc<dyn Clock>,
    observer: Arc<dyn Observer>,
    random: Arc<dyn RandomSource>,
    bus: Option<Arc<dyn BusTransport>>,
    tracking: Option<Arc<dyn BusTransport>>,
    bus_config: BusConfig,
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
    /// The in-process tier (required).
    pub fn with_l1(mut self, l1: Arc<dyn L1Store>) -> Self {
        self.l1 = Some(l1);
        self
    }

    /// The remote tier. Without one the engine runs on L1 + loader alone.
    pub fn with_l2(mut self, l2: Arc<dyn RemoteStore>) -> Self {
        self.l2 = Some(l2);
        self
    }

    /// The clock (tests inject a [`crate::ManualClock`]).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
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

    /// Build the engine.
    pub fn build(self) -> Result<Engine> {
        validate_name("prefix", &self.prefix)?;
        let l1 = self.l1.ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidConfig,
                "an L1 store is required (with_l1)",
            )
        })?;
        let bus = match (self.bus, self.tracking) {
            (Some(bus), tracking) => Some(BusRuntime::start(bus, tracking, self.bus_config)?),
            (None, Some(tracking)) => Some(BusRuntime::start(
                Arc::new(crate::bus::NullTransport),
                Some(tracking),
                self.bus_config,
            )?),
            (None, None) => None,
        };
        Ok(Engine {
            inner: Arc::new(EngineInner {
                prefix: self.prefix,
                l1,
                l2: self.l2,
                clock: self.clock,
                observer: self.observer,
                random: self.random,
                bus,
                namespaces: Mutex::new(HashMap::new()),
            }),
        })
    }
}
