//! One contract for every L2: a backend connects and brings its store together with the
//! transports that keep other instances' L1 coherent ([`L2Parts`]). The facade takes any
//! backend the same way (`cache_tiered::Builder::with_l2`), whether it ships in this workspace
//! (Redis, Redis Cluster, Sentinel, the in-memory one) or is written by a user.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::bus::{BusTransport, MemoryBus};
use crate::error::{Error, ErrorKind, Result};
use crate::remote::{MemoryStore, RemoteStore};

/// What an engine asks of a backend when it connects.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct L2Request {
    /// The engine's key prefix (every key and channel starts with it).
    pub prefix: String,
    /// Whether the engine wants server-side tracking of writes by any client (Redis client
    /// tracking). A backend that cannot provide it answers with an
    /// [`ErrorKind::InvalidConfig`] error naming itself.
    pub tracking: bool,
}

impl L2Request {
    /// A request for an engine with this prefix, without tracking.
    pub fn new(prefix: impl Into<String>) -> Self {
        L2Request {
            prefix: prefix.into(),
            tracking: false,
        }
    }

    /// Ask for tracking too.
    pub fn with_tracking(mut self, on: bool) -> Self {
        self.tracking = on;
        self
    }

    /// The error a backend without tracking answers a request for it with.
    pub fn tracking_unsupported(&self, backend: &str) -> Error {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("the {backend} backend has no client tracking (use standalone Redis)"),
        )
    }
}

/// What a backend brings: its store, and how invalidations travel between instances.
#[non_exhaustive]
pub struct L2Parts {
    /// The shared store.
    pub store: Arc<dyn RemoteStore>,
    /// The invalidation bus over this backend; `None` when it has none (then only this
    /// instance's L1 sees its writes, which is right for an L2 no other process shares).
    pub bus: Option<Arc<dyn BusTransport>>,
    /// Tracking of writes by any client, when it was asked for and the backend has it.
    pub tracking: Option<Arc<dyn BusTransport>>,
    /// How long the engine may wait at start-up for tracking to be on.
    pub tracking_wait: Duration,
}

impl fmt::Debug for L2Parts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("L2Parts")
            .field("store", &self.store.kind())
            .field("bus", &self.bus.as_ref().map(|b| b.kind()))
            .field("tracking", &self.tracking.as_ref().map(|t| t.kind()))
            .finish()
    }
}

impl L2Parts {
    /// A store with no bus and no tracking.
    pub fn new(store: Arc<dyn RemoteStore>) -> Self {
        L2Parts {
            store,
            bus: None,
            tracking: None,
            tracking_wait: Duration::ZERO,
        }
    }

    /// With this invalidation bus.
    pub fn with_bus(mut self, bus: Arc<dyn BusTransport>) -> Self {
        self.bus = Some(bus);
        self
    }

    /// With this tracking transport, and how long to wait for it at start-up.
    pub fn with_tracking(mut self, tracking: Arc<dyn BusTransport>, wait: Duration) -> Self {
        self.tracking = Some(tracking);
        self.tracking_wait = wait;
        self
    }
}

/// A way to reach an L2: connect, and bring the store with its bus.
///
/// Implemented by the configs of the workspace's backends (`RedisConfig`, `ClusterConfig`,
/// `SentinelConfig`) and by [`MemoryBackend`]; a user's own backend implements it the same
/// way and plugs into the facade's builder with its bus.
#[async_trait]
pub trait L2Backend: Send + Sync + fmt::Debug + 'static {
    /// A short name for errors and logs ("redis", "cluster", "sentinel", "memory").
    fn name(&self) -> &'static str;

    /// Connect (eagerly: a wrong address or password is reported here, not at the first
    /// read) and hand over the parts.
    async fn connect(&self, request: &L2Request) -> Result<L2Parts>;
}

/// The in-process L2: a [`MemoryStore`], and, when given one, a [`MemoryBus`] shared by the
/// engines of this process. For tests and for running without Redis; nothing is shared with
/// other processes.
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    store: Arc<MemoryStore>,
    bus: Option<Arc<MemoryBus>>,
}

impl MemoryBackend {
    /// A new, empty store without a bus.
    pub fn new() -> Self {
        MemoryBackend::default()
    }

    /// Engines built from clones of this backend share its store and, with a bus, keep
    /// their L1 copies coherent through it.
    pub fn with_bus(mut self) -> Self {
        self.bus = Some(MemoryBus::new());
        self
    }

    /// The store (to inspect it in tests).
    pub fn store(&self) -> &Arc<MemoryStore> {
        &self.store
    }
}

#[async_trait]
impl L2Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn connect(&self, request: &L2Request) -> Result<L2Parts> {
        if request.tracking {
            return Err(request.tracking_unsupported(self.name()));
        }
        let store: Arc<dyn RemoteStore> = self.store.clone();
        let parts = L2Parts::new(store);
        Ok(match &self.bus {
            Some(bus) => parts.with_bus(bus.attach()),
            None => parts,
        })
    }
}
