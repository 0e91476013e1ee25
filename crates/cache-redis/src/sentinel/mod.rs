//! Redis Sentinel (feature `sentinel`): [`SentinelStore`] and [`SentinelBus`] over the current
//! master of a sentinel-monitored group, following failovers.
//!
//! The store is a [`RedisStore`](crate::RedisStore) connected to the master the sentinels
//! name; all data commands, scripts (leases, tags) and the read coalescing are the standalone
//! store's. When a call fails in a way a failover explains (connection refused or reset, no
//! answer within `response_timeout`, `READONLY` from a demoted master), a background task asks
//! the sentinels again, every `rediscover_interval`, until they name a master that answers
//! `ROLE` as one; then the store switches to it. The failing call itself is not retried: it
//! returns its error at once (bounded by `response_timeout` as on standalone), and the engine
//! falls through to the loader meanwhile.
//!
//! The bus is a [`RedisBus`](crate::RedisBus) on the current master; when the master
//! changes, or the subscription breaks, it reports the loss (the engine flushes L1), starts
//! over on the new master and resubscribes every channel.
//!
//! Replica reads (`replica_reads`, off by default): `get` and `get_many` go to a replica the
//! sentinels list (`SENTINEL REPLICAS`, one with its link to the master up), falling back to
//! the master when none is usable or a replica read fails; everything else stays on the
//! master. Replication is asynchronous, so such a read may return a value older than the
//! latest write (see `docs/sentinel.md`).
//!
//! | module | concern |
//! |---|---|
//! | `config` | [`SentinelConfig`] and its builder: what to ask, how to reach the master |
//! | `discovery` | asking the sentinels (`SENTINEL MASTER` / `REPLICAS`) and the `ROLE` checks |
//! | `store` | [`SentinelStore`]: the master in use, following failovers, replica reads |
//! | `bus` | [`SentinelBus`]: the pub/sub of the master in use, moved at each switch |
//!
//! Each uses only the ones above it (and this module).

use std::sync::Mutex;

mod bus;
mod config;
mod discovery;
mod store;

pub use bus::SentinelBus;
pub use config::{
    SentinelConfig, SentinelConfigBuilder, DEFAULT_MASTER_NAME, DEFAULT_REDISCOVER_INTERVAL,
    DEFAULT_SENTINEL_PORT,
};
pub use store::SentinelStore;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
