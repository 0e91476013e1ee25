//! # cache-redis
//!
//! The Redis L2 tier of tiercache: [`RedisStore`] implements [`cache_core::RemoteStore`]
//! over one multiplexed, self-reconnecting redis-rs connection
//! ([`redis::aio::ConnectionManager`]) on tokio.
//!
//! - [`RedisConfig`]: a serde struct and a fluent builder. Defaults: `connect_timeout` 1 s,
//!   `response_timeout` 500 ms (every call is bounded by it), `max_value_size` 16 MiB
//!   (larger values are refused before sending), reconnect rounds of 3 attempts with
//!   jittered exponential backoff from 50 ms (capped at 1 s).
//! - URLs: `redis://[[user]:password@]host[:port][/db]`, `rediss://` (TLS, feature `tls`),
//!   `redis+unix:///path.sock?db=N`, `unix:///path.sock`. Invalid ones fail with
//!   [`ErrorKind::InvalidUrl`](cache_core::ErrorKind::InvalidUrl) saying what is wrong.
//! - Passwords appear in no `Debug` output, error message or log line.
//! - Rotating credentials: a [`CredentialsProvider`] on the config is asked for the user and
//!   password at every (re)connect of every connection (tokens of managed Redis: AWS
//!   ElastiCache IAM, Azure Entra ID). Mutual TLS: a client certificate and key on the config
//!   (`tls_client_cert_file` / `tls_client_key_file`, feature `tls`).
//!
//! Features: `sentinel` adds `SentinelStore` and `SentinelBus`: the same store and bus
//! over the master of a Redis Sentinel group, following failovers (`docs/sentinel.md`).
//! `tls` enables `rediss://` (rustls with the `ring` provider and the webpki root
//! certificates). Without it a `rediss://` URL is an
//! [`ErrorKind::InvalidConfig`](cache_core::ErrorKind::InvalidConfig) error, never a plaintext
//! connection.
//!
//! ```no_run
//! use std::time::Duration;
//! use cache_core::RemoteStore;
//! use cache_redis::{RedisConfig, RedisStore};
//!
//! # async fn demo() -> cache_core::Result<()> {
//! let config = RedisConfig::builder()
//!     .with_url("redis://127.0.0.1:6379/0")
//!     .with_password("s3cret")
//!     .with_response_timeout(Duration::from_millis(200))
//!     .build()?;
//! let store = RedisStore::connect(config).await?;
//! store.set("app:k", b"v".to_vec(), Duration::from_secs(30)).await?;
//! let values = store.get_many(&["app:k".to_owned(), "app:missing".to_owned()]).await?;
//! assert_eq!(values, vec![Some(b"v".to_vec()), None]);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod backend;
mod bus;
mod coalesce;
mod config;
mod credentials;
mod errors;
#[cfg(feature = "sentinel")]
mod sentinel;
mod store;
mod target;
#[cfg(feature = "tls")]
mod tls;

pub use bus::{RedisBus, RedisTracking};
pub use config::{
    RedisConfig, RedisConfigBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_VALUE_SIZE,
    DEFAULT_RECONNECT_MAX_DELAY, DEFAULT_RECONNECT_MIN_DELAY, DEFAULT_RECONNECT_RETRIES,
    DEFAULT_RESPONSE_TIMEOUT, DEFAULT_URL,
};
pub use credentials::{
    credentials_fn, Credentials, CredentialsFn, CredentialsProvider, SharedCredentialsProvider,
};
pub use store::RedisStore;

#[cfg(feature = "sentinel")]
pub use sentinel::{
    SentinelBus, SentinelConfig, SentinelConfigBuilder, SentinelStore, DEFAULT_MASTER_NAME,
    DEFAULT_REDISCOVER_INTERVAL, DEFAULT_SENTINEL_PORT,
};

/// The redis-rs crate this store is built on (for [`RedisStore::connection`] users).
pub use redis;

/// Building blocks shared with `cache-cluster` (URL validation and credentials, error mapping
/// with password scrubbing, redaction, duration serde, the Lua scripts and TTL clamping). Not meant for applications.
pub mod support {
    pub use crate::bus::{pump, Pumped};
    pub use crate::coalesce::{
        read as coalesced_read, read_or_lease as coalesced_read_or_lease, Answer, Coalesced, Reads,
    };
    pub use crate::config::{check_tls_files, duration_text};
    pub use crate::credentials::ProviderAuth;
    pub use crate::errors::ErrorContext;
    pub use crate::errors::PROVIDER_FAILED;
    pub use crate::store::{
        glob_escape, lease_read, ttl_ms, GET_OR_LEASE_LUA, MAX_TTL_MS, SET_IF_LEASE_LUA,
        TAG_ADD_LUA, TAG_TAKE_LUA,
    };
    pub use crate::target::{redact_url, resolve, resolve_with, Target, REDACTED};
    /// TLS files (feature `tls`).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub mod tls {
        pub use crate::tls::{certificates, map_files_error};
    }
}
