//! # cache-core
//!
//! The contracts and the tiered engine of tiercache, a two-tier cache (in-process L1,
//! Redis L2) in front of a slow source of truth.
//!
//! - [`QuickL1`]: the synchronous in-process tier (from `cache-l1`), held by its concrete
//!   type; [`L1Store`] for any other store (tests, instrumentation).
//! - [`RemoteStore`]: the async remote tier, bytes in / bytes out (`cache-redis`, and the
//!   in-memory [`MemoryStore`] for tests and running without Redis).
//! - [`Codec`]: typed values to bytes (`cache-codec`).
//! - [`Observer`]: hooks for metrics.
//! - [`Engine`] and [`Cache`]: the engine shared by many typed caches, one per namespace.
//!
//! Every public item is at the crate root (the modules are private, so moving a file breaks
//! no one); helpers for backend and plug-in authors are in [`support`].
//!
//! Most users depend on the facade crate, `cache-tiered`, which wires these together.
#![warn(missing_docs)]

mod backend;
mod background;
mod breaker;
mod bus;
mod cache;
mod capabilities;
mod clock;
mod codec;
mod compress;
mod durations;
mod engine;
mod error;
mod header;
mod key;
mod l1;
mod layer;
mod namespace;
mod observer;
mod options;
mod policy;
mod recovery;
mod remote;
pub mod support;
#[cfg(test)]
mod testing;
mod waiters;

pub use backend::{L2Backend, L2Parts, L2Request, MemoryBackend};
pub use breaker::{BreakerBus, BreakerConfig, BreakerStore, CircuitBreaker};
pub use bus::{
    BusConfig, BusEvent, BusStats, BusTransport, MemoryBus, MemoryBusHandle, Message,
    ReconnectPolicy,
};
pub use cache::{Cache, CacheBuilder, CacheConfig, CacheStats, L1_ENTRY_OVERHEAD};
pub use capabilities::Capabilities;
pub use clock::{Clock, ManualClock, SystemClock};
pub use codec::{Codec, CodecId};
pub use engine::{Engine, EngineBuilder, ShutdownReport};
pub use error::{Error, ErrorKind, Result};
pub use header::{Header, HeaderError};
pub use key::{KeySpace, DEFAULT_MAX_KEY_LEN, MAX_NAME_LEN};
pub use l1::{L1Entry, L1Stats, L1Store, NamespaceId, QuickL1};
pub use layer::{BreakerLayer, L2Layer, LayerContext, TimeoutLayer};
pub use observer::{CacheEvent, CacheObserver, L2Op, NoopObserver, Observer, Tier};
pub use options::{CallOptions, LoadContext, Loaded};
pub use policy::{NoRefresh, RandomSource, RefreshPolicy, SeededRandom, ThreadRandom};
pub use recovery::RecoveryStats;
pub use remote::{LeaseFill, LeaseRead, MemoryStore, RemoteEntry, RemoteStore};
