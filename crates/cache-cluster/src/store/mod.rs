//! [`ClusterStore`]: the [`RemoteStore`] over a redis-rs cluster-async connection.
//!
//! The type, its connection and the calls every operation goes through live here; the
//! children add one concern each: `batch` (slot-grouped pipelines and the migration
//! fallback), `script` (Lua scripts, `NOSCRIPT` and loading on primaries), `prefix`
//! (`SCAN` + `UNLINK`), `remote` (the [`RemoteStore`] impl), `coalesce` (coalesced
//! single-key reads), `error` (redis-rs errors mapped) and `tls` (the TLS files).

mod batch;
mod coalesce;
mod error;
mod prefix;
mod remote;
mod script;
mod tls;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::support::check_value_size;
use cache_core::Result;
#[cfg(doc)]
use cache_core::{ErrorKind, RemoteStore};
use cache_redis::support::{
    ErrorContext, ProviderAuth, GET_OR_LEASE_LUA, SET_IF_LEASE_LUA, TAG_ADD_LUA, TAG_TAKE_LUA,
};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, RedisResult};

use crate::config::{ClusterConfig, Seeds};
use crate::topology::{TopologyCache, TopologyWatcher};

pub(crate) use error::map_error;
use error::{connect_error, is_topology_error};
use script::LuaScript;
use tls::read_tls_files;
pub(crate) use tls::TlsFiles;

/// A Redis Cluster as the shared L2 tier.
///
/// One redis-rs cluster connection (a multiplexed connection per node, a slot map refreshed
/// on `MOVED`, `READONLY` and lost nodes) carries every call. Every operation is bounded by
/// the config's `response_timeout`, retries and redirects included, so a hung node yields
/// [`ErrorKind::Timeout`], never a hung caller; a failover shows at most as a few slower calls
/// (redirects are followed by redis-rs) or transient errors while no node serves a slot.
///
/// Batches are slot-aware: [`RemoteStore::get_many`], [`RemoteStore::set_many`],
/// [`RemoteStore::delete`], [`RemoteStore::set_nx_many`] and
/// [`RemoteStore::set_if_lease_many`] group their keys by hash slot (one `MGET` / `DEL` per
/// slot, one `SET`, `SET NX` or lease-script `EVALSHA` per key) and send **one pipeline per
/// primary**, all primaries in parallel: a batch costs one round trip of latency and at most
/// one request per primary, whatever its size (plus, for the lease script, one
/// `SCRIPT LOAD` per primary once a node answers `NOSCRIPT`).
/// Hash tags (`{user:42}:profile`) put related keys in one slot.
///
/// Errors: [`ErrorKind::Connection`] (unreachable, broken connection, cluster reconfiguring),
/// [`ErrorKind::Timeout`], [`ErrorKind::Auth`], [`ErrorKind::Remote`],
/// [`ErrorKind::ValueTooLarge`] (refused before sending). Messages name the seed nodes and the
/// user, never a password. Cloning is cheap and shares the connection.
///
/// ```no_run
/// use std::time::Duration;
/// use cache_core::RemoteStore;
/// use cache_cluster::{ClusterConfig, ClusterStore};
///
/// # async fn demo() -> cache_core::Result<()> {
/// let config = ClusterConfig::builder()
///     .with_url("redis://127.0.0.1:7000")
///     .with_url("redis://127.0.0.1:7001")
///     .build()?;
/// let store = ClusterStore::connect(config).await?;
/// store.set("app:{user:42}:profile", b"bytes".to_vec(), Duration::from_secs(60)).await?;
/// let keys = ["app:{user:42}:profile".to_owned(), "app:{user:42}:orders".to_owned()];
/// assert_eq!(store.get_many(&keys).await?, vec![Some(b"bytes".to_vec()), None]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ClusterStore {
    conn: ClusterConnection,
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// Single-key reads in flight and queued, per primary (coalesced, see `get`).
    reads: coalesce::ReadQueues,
    pub(crate) config: ClusterConfig,
    pub(crate) seeds: Seeds,
    pub(crate) ctx: Arc<ErrorContext>,
    pub(crate) topology: Arc<TopologyCache>,
    requests: AtomicU64,
    lease_script: LuaScript,
    get_or_lease_script: LuaScript,
    tag_add_script: LuaScript,
    tag_take_script: LuaScript,
    /// The TLS files (`tls_ca_file`, client certificate and key), read once.
    pub(crate) tls: TlsFiles,
    /// The config's credentials provider, bound to this store (`None`: fixed credentials).
    pub(crate) auth: Option<ProviderAuth>,
}

impl fmt::Debug for ClusterStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.inner.config;
        f.debug_struct("ClusterStore")
            .field("seeds", &c.redacted_urls())
            .field("user", &self.inner.ctx.user)
            .field("response_timeout", &c.response_timeout)
            .field("max_value_size", &c.max_value_size)
            .finish()
    }
}

impl ClusterStore {
    /// Connect eagerly: validate the config, reach a seed node, authenticate and load the slot
    /// map, all within `connect_timeout`, so that bad URLs, unreachable seeds or refused
    /// credentials are reported here with a clear message ([`ErrorKind::InvalidUrl`],
    /// [`ErrorKind::InvalidConfig`], [`ErrorKind::Connection`], [`ErrorKind::Timeout`],
    /// [`ErrorKind::Auth`]).
    ///
    /// Must be called within a tokio runtime (the connection's driver task runs on it).
    pub async fn connect(config: ClusterConfig) -> Result<ClusterStore> {
        let seeds = config.resolve()?;
        let ctx = Arc::new(ErrorContext::new(
            seeds.endpoint.clone(),
            seeds.user.clone(),
            seeds.has_password,
            seeds.secrets.clone(),
        ));
        let tls = read_tls_files(&config, &seeds)?;
        let auth = config.credentials_provider.clone().map(|provider| {
            ProviderAuth::new(
                provider,
                Some(seeds.user.clone()),
                config.connect_timeout,
                ctx.clone(),
            )
        });
        let topology = Arc::new(TopologyCache::default());
        let builder = ClusterClientBuilder::new(seeds.targets.iter().map(|t| t.info.clone()))
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.response_timeout)
            .overall_response_timeout(Some(config.response_timeout))
            .retries(config.retries)
            .min_retry_wait(millis(config.retry_min_delay))
            .max_retry_wait(millis(config.retry_max_delay).max(1))
            .read_routing_strategy(TopologyWatcher {
                cache: topology.clone(),
                replica_reads: config.replica_reads,
            });
        // Every node connection (and each reconnect of one) asks the provider.
        let builder = match &auth {
            Some(auth) => builder.set_credentials_provider(auth.clone()),
            None => builder,
        };
        #[cfg(feature = "tls")]
        let builder = match tls.certificates() {
            Some(certs) => builder.certs(certs),
            None => builder,
        };
        let client = builder.build().map_err(|e| ctx.map("connect", &e))?;
        let started = Instant::now();
        let limit = config.connect_timeout;
        let conn = match tokio::time::timeout(limit, client.get_async_connection()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(connect_error(&ctx, Some(&e), limit)),
            Err(_) => return Err(connect_error(&ctx, None, limit)),
        };
        tracing::info!(
            endpoint = %ctx.endpoint,
            user = %ctx.user,
            primaries = topology.primaries().map(|p| p.len()).unwrap_or(0),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "connected to Redis Cluster"
        );
        Ok(ClusterStore {
            conn,
            inner: Arc::new(Inner {
                reads: coalesce::ReadQueues::default(),
                lease_script: LuaScript::new(SET_IF_LEASE_LUA),
                get_or_lease_script: LuaScript::new(GET_OR_LEASE_LUA),
                tag_add_script: LuaScript::new(TAG_ADD_LUA),
                tag_take_script: LuaScript::new(TAG_TAKE_LUA),
                config,
                seeds,
                ctx,
                topology,
                requests: AtomicU64::new(0),
                tls,
                auth,
            }),
        })
    }

    /// The config this store was connected with.
    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// A clone of the underlying redis-rs cluster connection, for other components and custom
    /// commands. Calls made through it are bounded by the connection's own response timeout
    /// only.
    pub fn connection(&self) -> ClusterConnection {
        self.conn.clone()
    }

    /// How many requests (single commands or pipelines) this store and its clones sent to the
    /// cluster so far, redirects followed by redis-rs not included. A batch costs at most one
    /// per primary.
    pub fn requests_sent(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// `host:port` of every primary in the current slot map (empty before it is known).
    pub fn primaries(&self) -> Vec<String> {
        self.inner
            .topology
            .primaries()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// `host:port` of the primary serving `slot`, per the current slot map.
    pub fn primary_for_slot(&self, slot: u16) -> Option<String> {
        self.inner
            .topology
            .primary_for_slot(slot)
            .map(|a| a.to_string())
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// `PING` one primary (bounded by `response_timeout`).
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        self.count(1);
        self.run("PING", async move {
            conn.route_command(
                redis::cmd("PING"),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
            )
            .await
        })
        .await
        .map(|_| ())
    }

    fn count(&self, n: u64) {
        self.inner.requests.fetch_add(n, Ordering::Relaxed);
    }

    /// Send one command (routed by its keys, or by `route`), following a slot migration:
    /// redis-rs follows `MOVED` and `ASK` and waits on `TRYAGAIN` for its `retries`, but the
    /// keys of one command (a value key and its lease key) can stay split between a
    /// migrating slot's source and target for longer than that. A topology error is tried
    /// again every `retry_max_delay` while at least two such delays remain of
    /// `response_timeout` (the caller's bound); then it is returned.
    async fn send<T: redis::FromRedisValue>(
        &self,
        cmd: &Cmd,
        route: Option<&RoutingInfo>,
    ) -> RedisResult<T> {
        let deadline = Instant::now() + self.inner.config.response_timeout;
        let pause = self.inner.config.retry_max_delay;
        loop {
            let mut conn = self.conn.clone();
            self.count(1);
            let answer = match route {
                Some(route) => conn
                    .route_command(cmd.clone(), route.clone())
                    .await
                    .and_then(|v| T::from_redis_value(v.extract_error()?).map_err(Into::into)),
                None => cmd.query_async::<T>(&mut conn).await,
            };
            match answer {
                Err(e) if is_topology_error(&e) && Instant::now() + pause * 2 < deadline => {
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }

    /// Run one call under `response_timeout`, mapping its error.
    async fn run<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = RedisResult<T>> + Send,
    ) -> Result<T> {
        let limit = self.inner.config.response_timeout;
        self.inner
            .ctx
            .bounded(op, limit, "Redis Cluster", call, map_error)
            .await
    }

    fn check_size(&self, key: &str, len: usize) -> Result<()> {
        check_value_size(key, len, self.inner.config.max_value_size)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
