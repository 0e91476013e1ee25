//! # cache-cluster
//!
//! Redis Cluster as the L2 tier of tiercache, over the redis-rs cluster-async client.
//!
//! - [`ClusterStore`] implements [`cache_core::RemoteStore`]: every call bounded by
//!   `response_timeout` (redirects and retries included; the redis-rs cluster client has no
//!   response timeout by default, this crate always sets one), `MOVED` / `ASK` / `READONLY`
//!   after a failover followed by redis-rs, batches grouped by hash slot and sent as **one
//!   pipeline per primary**, leases and the compare-and-set fill as single-slot scripts.
//! - [`ClusterBus`] implements [`cache_core::BusTransport`] with classic pub/sub (cluster-wide,
//!   one subscription on any node, moved to another node when that one fails).
//! - [`ClusterConfig`]: seed URLs, ACL user / password or a [`CredentialsProvider`] asked at
//!   every (re)connect (rotating tokens), TLS with an optional client certificate (feature
//!   `tls`), timeouts, optional replica reads; a serde struct and a fluent builder. Passwords
//!   appear in no `Debug` output, error message or log.
//! - [`slot`]: the hash slot of a key (CRC16 / XMODEM modulo 16384, honouring hash tags), equal
//!   to the server's `CLUSTER KEYSLOT`.
//!
//! See `docs/cluster.md` for round trips, the pub/sub choice and failover behaviour.
//!
//! ```no_run
//! use std::time::Duration;
//! use cache_core::RemoteStore;
//! use cache_cluster::{ClusterConfig, ClusterStore};
//!
//! # async fn demo() -> cache_core::Result<()> {
//! let config = ClusterConfig::builder()
//!     .with_urls(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
//!     .with_password("s3cret")
//!     .with_response_timeout(Duration::from_millis(200))
//!     .build()?;
//! let store = ClusterStore::connect(config).await?;
//! store.set("app:{user:42}:profile", b"v".to_vec(), Duration::from_secs(30)).await?;
//! let keys = ["app:{user:42}:profile".to_owned(), "app:missing".to_owned()];
//! assert_eq!(store.get_many(&keys).await?, vec![Some(b"v".to_vec()), None]);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod backend;
mod bus;
mod config;
mod slot;
mod store;
mod topology;

pub use bus::ClusterBus;
pub use config::{
    ClusterConfig, ClusterConfigBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_VALUE_SIZE,
    DEFAULT_RESPONSE_TIMEOUT, DEFAULT_RETRIES, DEFAULT_RETRY_MAX_DELAY, DEFAULT_RETRY_MIN_DELAY,
};
pub use slot::{crc16, slot, SLOT_COUNT};
pub use store::ClusterStore;

/// Rotating credentials ([`ClusterConfig::credentials_provider`]), the same as
/// `cache-redis`'s.
pub use cache_redis::{
    credentials_fn, Credentials, CredentialsFn, CredentialsProvider, SharedCredentialsProvider,
};

/// The redis-rs crate this store is built on (for [`ClusterStore::connection`] users).
pub use redis;
