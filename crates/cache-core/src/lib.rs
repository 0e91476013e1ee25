//! # cache-core
//!
//! The contracts and the tiered engine of tiercache, a two-tier cache (in-process L1,
//! Redis L2) in front of a slow source of truth.
//!
//! - [`L1Store`]: the synchronous in-process tier (implemented by `cache-l1`).
//! - [`RemoteStore`]: the async remote tier, bytes in / bytes out (`cache-redis`, and the
//!   in-memory [`MemoryStore`] for tests and running without Redis).
//! - [`Codec`]: typed values to bytes (`cache-codec`).
//! - [`Observer`]: hooks for metrics.
//! - [`Engine`] and [`Cache`]: the engine shared by many typed caches, one per namespace.
//!
//! Most users depend on the facade crate, `cache-tiered`, which wires these together.
#![warn(missing_docs)]

pub mod backend;
mod background;
pub mod breaker;
pub mod bus;
pub mod cache;
pub mod capabilities;
pub mod clock;
pub mod codec;
pub mod compress;
pub mod durations;
pub mod engine;
pub mod error;
pub mod header;
pub mod key;
pub mod l1;
pub mod layer;
mod namespace;
pub mod observer;
pub mod options;
pub mod policy;
pub mod recovery;
pub mod remote;
#[cfg(test)]
mod testing;
mod waiters;

pub use backend::{L2Backend, L2Parts, L2Request, MemoryBackend};
pub use breaker::{BreakerConfig, CircuitBreaker};
pub use bus::{
    BusConfig, BusEvent, BusStats, BusTransport, MemoryBus, MemoryBusHandle, ReconnectPolicy,
};
pub use cache::{Cache, CacheBuilder, CacheConfig, CacheStats};
pub use capabilities::Capabilities;
pub use clock::{Clock, ManualClock, SystemClock};
pub use codec::{Codec, CodecId};
pub use engine::{Engine, EngineBuilder, ShutdownReport};
pub use error::{Error, ErrorKind, Result};
pub use header::{Header, HeaderError};
pub use key::KeySpace;
pub use l1::{L1Entry, L1Stats, L1Store, NamespaceId};
pub use layer::{BreakerLayer, L2Layer, LayerContext, TimeoutLayer};
pub use observer::{CacheEvent, CacheObserver, L2Op, NoopObserver, Observer, Tier};
pub use options::{CallOptions, LoadContext, Loaded};
pub use policy::{NoRefresh, RandomSource, RefreshPolicy, SeededRandom, ThreadRandom};
pub use recovery::RecoveryStats;
pub use remote::{LeaseFill, MemoryStore, RemoteEntry, RemoteStore};
