//! # tiercache
//!
//! A two-tier cache for services that sit in front of a database: an in-process L1 holding
//! decoded values (a hit is a hash lookup and an `Arc` clone), Redis as the shared L2, and
//! your loader behind both, called once per key however many callers ask.
//!
//! ```no_run
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use tiercache::{Cache, MsgPack};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! struct User { id: u64, name: String }
//!
//! # async fn run() -> tiercache::Result<()> {
//! let engine = tiercache::builder("myapp")
//!     .redis_url("redis://127.0.0.1:6379/")
//!     .l1_capacity_bytes(64 * 1024 * 1024)
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
//! Features: `redis` (default) for standalone Redis, `json`/`msgpack`/`cbor` codecs
//! (default all), `lz4` compression, `tls` for `rediss://`.
#![warn(missing_docs)]

use std::sync::Arc;

pub use cache_core::policy::{NoRefresh, RandomSource, RefreshPolicy, SeededRandom};
pub use cache_core::{
    CacheBuilder, CacheConfig, CacheEvent, CacheObserver, CacheStats, Clock, Codec, CodecId,
    Engine, EngineBuilder, Error, ErrorKind, L1Stats, L1Store, ManualClock, MemoryStore,
    NoopObserver, Observer, RemoteEntry, RemoteStore, Result, SystemClock,
};
pub use cache_l1::QuickL1;
pub use cache_xfetch::XFetch;

#[cfg(feature = "cbor")]
pub use cache_codec::Cbor;
#[cfg(feature = "json")]
pub use cache_codec::Json;
#[cfg(feature = "msgpack")]
pub use cache_codec::MsgPack;

#[cfg(feature = "redis")]
pub use cache_redis::{RedisConfig, RedisStore};

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
pub type Cache<V, C = DefaultCodec> = cache_core::Cache<V, C>;

/// Start building an engine whose keys all start with `prefix`.
pub fn builder(prefix: impl Into<String>) -> Builder {
    Builder {
        prefix: prefix.into(),
        l1_capacity_bytes: cache_l1::DEFAULT_CAPACITY_BYTES,
        l2: L2::None,
        observer: None,
        clock: None,
    }
}

enum L2 {
    None,
    Memory,
    Store(Arc<dyn RemoteStore>),
    #[cfg(feature = "redis")]
    RedisUrl(String),
    #[cfg(feature = "redis")]
    Redis(Box<RedisConfig>),
}

/// Builds an [`Engine`] with the L1 of `cache-l1` and the chosen L2.
pub struct Builder {
    prefix: String,
    l1_capacity_bytes: u64,
    l2: L2,
    observer: Option<Arc<dyn Observer>>,
    clock: Option<Arc<dyn Clock>>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l2 = match &self.l2 {
            L2::None => "none",
            L2::Memory => "memory",
            L2::Store(s) => s.kind(),
            #[cfg(feature = "redis")]
            L2::RedisUrl(_) | L2::Redis(_) => "redis",
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
    pub fn l1_capacity_bytes(mut self, bytes: u64) -> Self {
        self.l1_capacity_bytes = bytes;
        self
    }

    /// Standalone Redis at `url` (`redis://[user:password@]host:port/db`, `rediss://` with
    /// the `tls` feature) with default timeouts.
    #[cfg(feature = "redis")]
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.l2 = L2::RedisUrl(url.into());
        self
    }

    /// Standalone Redis with explicit settings.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, config: RedisConfig) -> Self {
        self.l2 = L2::Redis(Box::new(config));
        self
    }

    /// The in-process L2 ([`MemoryStore`]): for tests and for running without Redis. It is
    /// not shared between processes.
    pub fn memory_l2(mut self) -> Self {
        self.l2 = L2::Memory;
        self
    }

    /// Any remote store.
    pub fn remote(mut self, store: Arc<dyn RemoteStore>) -> Self {
        self.l2 = L2::Store(store);
        self
    }

    /// Report through this observer (e.g. `cache-metrics`).
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Read time from this clock (tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Connect (for Redis: eagerly, so a wrong URL, password or address is reported now) and
    /// build the engine.
    pub async fn build(self) -> Result<Engine> {
        let l1: Arc<dyn L1Store> = Arc::new(QuickL1::with_capacity_bytes(self.l1_capacity_bytes));
        let mut b = Engine::builder(self.prefix).with_l1(l1);
        let l2: Option<Arc<dyn RemoteStore>> = match self.l2 {
            L2::None => None,
            L2::Memory => Some(Arc::new(MemoryStore::new())),
            L2::Store(s) => Some(s),
            #[cfg(feature = "redis")]
            L2::RedisUrl(url) => {
                let config = RedisConfig::builder().url(url).build()?;
                Some(Arc::new(RedisStore::connect(config).await?))
            }
            #[cfg(feature = "redis")]
            L2::Redis(config) => Some(Arc::new(RedisStore::connect(*config).await?)),
        };
        if let Some(l2) = l2 {
            b = b.with_l2(l2);
        }
        if let Some(o) = self.observer {
            b = b.with_observer(o);
        }
        if let Some(c) = self.clock {
            b = b.with_clock(c);
        }
        b.build()
    }
}
