//! # cache-tiered (the tiercache facade)
//!
//! A two-tier cache for services that sit in front of a database: an in-process L1 holding
//! decoded values (a hit is a hash lookup and an `Arc` clone), Redis as the shared L2, and
//! your loader behind both, called once per key however many callers ask.
//!
//! ```no_run
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use cache_tiered::{Cache, MsgPack};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! struct User { id: u64, name: String }
//!
//! # async fn run() -> cache_tiered::Result<()> {
//! let engine = cache_tiered::builder("myapp")
//!     .with_redis_url("redis://127.0.0.1:6379/")
//!     .with_l1_capacity_bytes(64 * 1024 * 1024)
//!     .build()
//!     .await?;
//! let users: Cache<User> = engine
//!     .cache::<User, MsgPack>("users")
//!     .with_l1_ttl(Duration::from_secs(30))
//!     .with_l2_ttl(Duration::from_secs(600))
//!     .build()?;
//! let user = users
//!     .get_or_load("42", |id| async move {
//!         // the database query goes here
//!         Ok::<_, std::io::Error>(User { id: id.parse().unwrap_or(0), name: "Ada".into() })
//!     })
//!     .await?;
//! assert_eq!(user.name, "Ada");
//! # Ok(()) }
//! ```
//!
//! Features: `redis` (default) for standalone Redis, `cluster` for Redis Cluster
//! (`Builder::with_cluster`), `sentinel` for Redis Sentinel (`Builder::with_sentinel`),
//! `json`/`msgpack`/`cbor` codecs (default all), `lz4` compression, `tls` for `rediss://`,
//! `metrics` / `prometheus` (`cache_tiered::cache_metrics`), `write-behind`
//! (`cache_tiered::cache_writebehind`).
#![warn(missing_docs)]

use std::sync::Arc;

pub use cache_core::{
    BreakerConfig, BreakerLayer, BusConfig, BusStats, BusTransport, CacheBuilder, CacheConfig,
    CacheEvent, CacheObserver, CacheStats, CallOptions, Capabilities, Clock, Codec, CodecId,
    Engine, EngineBuilder, Error, ErrorKind, L1Stats, L1Store, L2Backend, L2Layer, L2Parts,
    L2Request, LayerContext, LeaseFill, LeaseRead, LoadContext, Loaded, ManualClock, MemoryBackend,
    MemoryBus, MemoryBusHandle, MemoryStore, NoopObserver, Observer, ReconnectPolicy,
    RecoveryStats, RemoteEntry, RemoteStore, Result, ShutdownReport, SystemClock, TimeoutLayer,
};
pub use cache_core::{NoRefresh, RandomSource, RefreshPolicy, SeededRandom};
pub use cache_l1::QuickL1;

#[cfg(feature = "blocking")]
pub mod blocking;
mod url;
pub use cache_xfetch::{RefreshAhead, XFetch};
pub use url::L2_URL_ENV;

#[cfg(feature = "cbor")]
pub use cache_codec::Cbor;
#[cfg(feature = "json")]
pub use cache_codec::Json;
#[cfg(feature = "msgpack")]
pub use cache_codec::MsgPack;

#[cfg(feature = "redis")]
pub use cache_redis::{
    credentials_fn, Credentials, CredentialsFn, CredentialsProvider, SharedCredentialsProvider,
};
#[cfg(feature = "redis")]
pub use cache_redis::{RedisBus, RedisConfig, RedisStore, RedisTracking};

#[cfg(feature = "cluster")]
pub use cache_cluster::{ClusterBus, ClusterConfig, ClusterStore};

#[cfg(feature = "sentinel")]
pub use cache_redis::{SentinelBus, SentinelConfig, SentinelStore};

/// What most applications use, in one import: `use cache_tiered::prelude::*;`.
pub mod prelude {
    #[cfg(any(feature = "msgpack", feature = "json", feature = "cbor"))]
    pub use crate::DefaultCodec;
    pub use crate::{builder, Builder, Cache};
    #[cfg(feature = "cbor")]
    pub use cache_codec::Cbor;
    #[cfg(feature = "json")]
    pub use cache_codec::Json;
    #[cfg(feature = "msgpack")]
    pub use cache_codec::MsgPack;
    pub use cache_core::{
        CallOptions, Engine, Error, ErrorKind, L2Backend, LoadContext, Loaded, Result,
    };
}

/// The lower layers, for users who compose their own engine.
pub mod core {
    pub use cache_core::*;
}

/// The codec used when none is named: MessagePack when compiled in, else JSON, else CBOR.
#[cfg(feature = "msgpack")]
pub type DefaultCodec = cache_codec::MsgPack;
/// The codec used when none is named: MessagePack when compiled in, else JSON, else CBOR.
#[cfg(all(not(feature = "msgpack"), feature = "json"))]
pub type DefaultCodec = cache_codec::Json;
/// The codec used when none is named: MessagePack when compiled in, else JSON, else CBOR.
#[cfg(all(not(feature = "msgpack"), not(feature = "json"), feature = "cbor"))]
pub type DefaultCodec = cache_codec::Cbor;

/// A typed cache over one namespace; `C` defaults to [`DefaultCodec`].
#[cfg(any(feature = "msgpack", feature = "json", feature = "cbor"))]
pub type Cache<V, C = DefaultCodec> = cache_core::Cache<V, C>;
/// A typed cache over one namespace, with the codec you bring (no built-in codec is compiled
/// in: turn on `msgpack`, `json` or `cbor` for one, or implement [`Codec`]).
#[cfg(not(any(feature = "msgpack", feature = "json", feature = "cbor")))]
pub type Cache<V, C> = cache_core::Cache<V, C>;

/// Start building an engine whose keys all start with `prefix`.
pub fn builder(prefix: impl Into<String>) -> Builder {
    Builder {
        prefix: prefix.into(),
        l1_capacity_bytes: cache_l1::DEFAULT_CAPACITY_BYTES,
        l2: L2::None,
        observer: None,
        clock: None,
        bus: BusChoice::Auto,
        tracking: false,
        bus_config: BusConfig::default(),
        breaker: Some(BreakerConfig::default()),
        recovery: (10_000, std::time::Duration::from_millis(250)),
        layers: None,
        extra_layers: Vec::new(),
    }
}

enum L2 {
    None,
    Memory,
    /// Resolved by `build` (so a bad URL is reported there, like a failed connection).
    Url(String),
    /// The URL in [`L2_URL_ENV`], read by `build`.
    Env,
    Store(Arc<dyn RemoteStore>),
    #[cfg(feature = "redis")]
    RedisUrl(String),
    /// Any backend: it connects and brings its bus.
    Backend(Box<dyn L2Backend>),
}

/// Builds an [`Engine`] with the L1 of `cache-l1` and the chosen L2.
pub struct Builder {
    prefix: String,
    l1_capacity_bytes: u64,
    l2: L2,
    observer: Option<Arc<dyn Observer>>,
    clock: Option<Arc<dyn Clock>>,
    bus: BusChoice,
    tracking: bool,
    bus_config: BusConfig,
    breaker: Option<BreakerConfig>,
    recovery: (usize, std::time::Duration),
    layers: Option<Vec<Arc<dyn L2Layer>>>,
    extra_layers: Vec<Arc<dyn L2Layer>>,
}

enum BusChoice {
    /// Redis pub/sub when the L2 is Redis; none otherwise.
    Auto,
    Off,
    Transport(Arc<dyn BusTransport>),
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l2 = match &self.l2 {
            L2::None => "none",
            L2::Memory => "memory",
            L2::Url(_) | L2::Env => "by url",
            L2::Store(s) => s.kind(),
            #[cfg(feature = "redis")]
            L2::RedisUrl(_) => "redis",
            L2::Backend(b) => b.name(),
        };
        f.debug_struct("Builder")
            .field("prefix", &self.prefix)
            .field("l1_capacity_bytes", &self.l1_capacity_bytes)
            .field("l2", &l2)
            .finish()
    }
}

impl Builder {
    /// The L1 memory budget in bytes, shared by every typed cache (default 128 MiB).
    pub fn with_l1_capacity_bytes(mut self, bytes: u64) -> Self {
        self.l1_capacity_bytes = bytes;
        self
    }

    /// The L2 named by `url`, with default settings: `memory://`, `redis://` / `rediss://`
    /// (standalone), `redis+cluster://host:port,host:port` (feature `cluster`),
    /// `redis+sentinel://host:26379,host:26379/master` (feature `sentinel`); `rediss+...` for
    /// TLS (feature `tls`). The same application code then runs on each backend: the URL
    /// and the compiled-in features choose. [`Builder::build`] reports a malformed URL
    /// ([`ErrorKind::InvalidUrl`]) or a scheme whose feature is not compiled in
    /// ([`ErrorKind::InvalidConfig`], naming the feature). The bus follows the backend (as
    /// with the typed methods). For explicit settings use [`Builder::with_redis`],
    /// `Builder::with_cluster` or `Builder::with_sentinel`.
    pub fn with_l2_url(mut self, url: impl Into<String>) -> Self {
        self.l2 = L2::Url(url.into());
        self
    }

    /// [`Builder::with_l2_url`] with the URL in the environment variable [`L2_URL_ENV`]
    /// (`TIERCACHE_L2_URL`), read by [`Builder::build`]: unset is an
    /// [`ErrorKind::InvalidConfig`] error (never a silent in-process L2).
    pub fn with_l2_from_env(mut self) -> Self {
        self.l2 = L2::Env;
        self
    }

    /// Standalone Redis at `url` (`redis://[user:password@]host:port/db`, `rediss://` with
    /// the `tls` feature) with default timeouts.
    #[cfg(feature = "redis")]
    pub fn with_redis_url(mut self, url: impl Into<String>) -> Self {
        self.l2 = L2::RedisUrl(url.into());
        self
    }

    /// Standalone Redis with explicit settings.
    #[cfg(feature = "redis")]
    pub fn with_redis(self, config: RedisConfig) -> Self {
        self.with_l2(config)
    }

    /// Redis Cluster with explicit settings (feature `cluster`); the invalidation bus, when
    /// on, is [`ClusterBus`] (cluster-wide pub/sub).
    #[cfg(feature = "cluster")]
    pub fn with_cluster(self, config: ClusterConfig) -> Self {
        self.with_l2(config)
    }

    /// Redis Cluster reached through these seed nodes (`redis://host:port`, any one reachable
    /// node is enough) with default timeouts (feature `cluster`).
    #[cfg(feature = "cluster")]
    pub fn with_cluster_urls<I, S>(self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.with_l2(ClusterConfig::from_urls(urls))
    }

    /// The master of a Redis Sentinel group, followed through failovers (feature `sentinel`);
    /// the invalidation bus, when on, is [`SentinelBus`] (pub/sub on the master in use,
    /// resubscribed after a failover, with L1 flushed for the loss).
    #[cfg(feature = "sentinel")]
    pub fn with_sentinel(self, config: SentinelConfig) -> Self {
        self.with_l2(config)
    }

    /// The in-process L2 ([`MemoryStore`]): for tests and for running without Redis. It is
    /// not shared between processes.
    pub fn with_memory_l2(mut self) -> Self {
        self.l2 = L2::Memory;
        self
    }

    /// Any backend: its config connects at [`Builder::build`] and brings its store with its
    /// invalidation bus (and tracking, when [`Builder::with_tracking`] asks for it). The
    /// workspace's configs are backends (`RedisConfig`, `ClusterConfig`, `SentinelConfig`,
    /// [`MemoryBackend`]); a backend of your own implements [`L2Backend`] the same way.
    pub fn with_l2(mut self, backend: impl L2Backend) -> Self {
        self.l2 = L2::Backend(Box::new(backend));
        self
    }

    /// Any remote store, without a bus of its own: unless [`Builder::with_bus_transport`] gives
    /// one, writes on this engine do not reach other instances' L1 (`build` logs a warning;
    /// [`Builder::with_bus`]`(false)` says it is meant). To bring a store with its bus, implement
    /// [`L2Backend`] and use [`Builder::with_l2`].
    pub fn with_remote(mut self, store: Arc<dyn RemoteStore>) -> Self {
        self.l2 = L2::Store(store);
        self
    }

    /// Report through this observer (e.g. `cache-metrics`).
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Turn the invalidation bus off (`false`) or back on (`true`, the default): with Redis as
    /// L2, `set`/`invalidate` are published on Redis pub/sub and other instances drop their L1
    /// copies; losses are detected and answered with an L1 flush.
    pub fn with_bus(mut self, on: bool) -> Self {
        self.bus = if on { BusChoice::Auto } else { BusChoice::Off };
        self
    }

    /// Use this bus transport (e.g. a [`MemoryBus`] handle for several engines in one process).
    pub fn with_bus_transport(mut self, transport: Arc<dyn BusTransport>) -> Self {
        self.bus = BusChoice::Transport(transport);
        self
    }

    /// Bus timing: batching window, heartbeat interval.
    pub fn with_bus_config(mut self, config: BusConfig) -> Self {
        self.bus_config = config;
        self
    }

    /// Redis client tracking (RESP3 `CLIENT TRACKING ON BCAST PREFIX {prefix}:`): writes by
    /// any client, e.g. a service in another language or `redis-cli`, drop L1 copies. Off by
    /// default; see `docs/coherence.md` for the trade-offs.
    pub fn with_tracking(mut self, on: bool) -> Self {
        self.tracking = on;
        self
    }

    /// Circuit breakers on L2 and the bus publisher (default on: 5 consecutive failures open
    /// it for 500 ms); `None` turns them off.
    pub fn with_breaker(mut self, config: Option<BreakerConfig>) -> Self {
        self.breaker = config;
        self
    }

    /// Auto-recovery of failed L2 writes/deletes: queue capacity in keys (default 10,000; 0
    /// turns it off) and replay interval (default 250 ms).
    pub fn with_recovery(mut self, capacity: usize, interval: std::time::Duration) -> Self {
        self.recovery = (capacity, interval);
        self
    }

    /// Add an L2 layer on top of the stack (see `cache_tiered::core::layer`): e.g. a
    /// [`TimeoutLayer`], or a layer of your own that records or logs every store call.
    pub fn with_l2_layer(mut self, layer: Arc<dyn L2Layer>) -> Self {
        self.extra_layers.push(layer);
        self
    }

    /// Replace the default L2 layer stack (a [`BreakerLayer`] when breakers are on), first
    /// innermost.
    pub fn with_l2_layers(mut self, layers: Vec<Arc<dyn L2Layer>>) -> Self {
        self.layers = Some(layers);
        self
    }

    /// Read time from this clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Connect (for Redis: eagerly, so a wrong URL, password or address is reported now) and
    /// build the engine.
    pub async fn build(mut self) -> Result<Engine> {
        self.l2 = match std::mem::replace(&mut self.l2, L2::None) {
            L2::Url(u) => url::l2_of(&u)?,
            L2::Env => match std::env::var(L2_URL_ENV) {
                Ok(u) => url::l2_of(&u)?,
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::InvalidConfig,
                        format!("{L2_URL_ENV} is not set (an L2 URL such as redis://host:6379/)"),
                    ))
                }
            },
            other => other,
        };
        let mut b =
            Engine::builder(self.prefix.clone()).with_l1_capacity_bytes(self.l1_capacity_bytes);
        let request = L2Request::new(self.prefix.clone()).with_tracking(self.tracking);
        let parts: Option<L2Parts> = match self.l2 {
            L2::None | L2::Url(_) | L2::Env => None,
            L2::Memory => Some(MemoryBackend::new().connect(&request).await?),
            L2::Store(s) => {
                if matches!(self.bus, BusChoice::Auto) {
                    tracing::warn!(
                        store = s.kind(),
                        "a store given with remote() brings no invalidation bus: other instances' L1 copies are not dropped by this engine's writes (give a backend with l2(), a bus_transport(), or bus(false) if that is meant)"
                    );
                }
                Some(L2Parts::new(s))
            }
            #[cfg(feature = "redis")]
            L2::RedisUrl(url) => {
                let config = RedisConfig::builder().with_url(url).build()?;
                Some(config.connect(&request).await?)
            }
            L2::Backend(backend) => Some(backend.connect(&request).await?),
        };
        let (mut bus, tracking, tracking_wait) = match parts {
            Some(p) => {
                b = b.with_l2(p.store);
                (p.bus, p.tracking, p.tracking_wait)
            }
            None => (None, None, std::time::Duration::ZERO),
        };
        match self.bus {
            BusChoice::Auto => {}
            BusChoice::Off => bus = None,
            BusChoice::Transport(t) => bus = Some(t),
        }
        if self.tracking && tracking.is_none() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "tracking needs Redis as the L2 (redis_url or redis)",
            ));
        }
        let tracked = tracking.is_some();
        if let Some(t) = bus {
            b = b.with_bus(t);
        }
        if let Some(t) = tracking {
            b = b.with_tracking(t);
        }
        b = b
            .with_bus_config(self.bus_config)
            .with_breaker(self.breaker)
            .with_recovery(self.recovery.0, self.recovery.1);
        if let Some(layers) = self.layers {
            b = b.with_l2_layers(layers);
        }
        for layer in self.extra_layers {
            b = b.with_l2_layer(layer);
        }
        if let Some(o) = self.observer {
            b = b.with_observer(o);
        }
        if let Some(c) = self.clock {
            b = b.with_clock(c);
        }
        let engine = b.build()?;
        // With tracking, serve only once the server reports writes (bounded by the backend's
        // wait; if it is not on by then, L1 is flushed when it comes on).
        if tracked && !engine.wait_for_tracking(tracking_wait).await {
            tracing::warn!("client tracking is not on yet; L1 is flushed when it comes on");
        }
        Ok(engine)
    }
}

/// Metrics through the `metrics` facade (feature `metrics`): `MetricsObserver`, L1 gauges,
/// and with feature `prometheus` the Prometheus exporter.
#[cfg(feature = "metrics")]
pub use cache_metrics;

/// Write-behind (feature `write-behind`): `WriteBehind` queues writes to the source of truth
/// and writes them in batches, while the cache is updated at once.
#[cfg(feature = "write-behind")]
pub use cache_writebehind;
