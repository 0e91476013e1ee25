//! [`ClusterStore`]: the [`RemoteStore`] over a redis-rs cluster-async connection.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cache_core::remote::check_value_size;
use cache_core::{Error, ErrorKind, LeaseFill, RemoteEntry, RemoteStore, Result};
#[cfg(test)]
use cache_redis::support::MAX_TTL_MS;
use cache_redis::support::{
    coalesced_read, glob_escape, ttl_ms, Answer, Coalesced, ErrorContext, ProviderAuth, Reads,
    PROVIDER_FAILED, SET_IF_LEASE_LUA, TAG_ADD_LUA, TAG_TAKE_LUA,
};
use futures::future::join_all;
use redis::cluster::{ClusterClientBuilder, NodeAddress};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, RedisError, RedisResult, Value};

use crate::config::{ClusterConfig, Seeds};
use crate::slot::slot;
use crate::topology::{TopologyCache, TopologyWatcher};

/// A Lua script: its source and SHA1.
struct LuaScript {
    source: &'static str,
    sha: String,
}

impl LuaScript {
    fn new(source: &'static str) -> Self {
        LuaScript {
            source,
            sha: redis::Script::new(source).get_hash().to_owned(),
        }
    }

    /// `EVALSHA sha` of `keys` and `args`.
    fn command(&self, keys: &[&str], args: &[&[u8]]) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.sha.as_str()).arg(keys.len()).arg(keys);
        for a in args {
            cmd.arg(*a);
        }
        cmd
    }

    /// `SCRIPT LOAD source`: caches the script on the node that runs it. Never `EVAL`, which
    /// the minimal ACL rules (docs/security.md) refuse.
    fn load(&self) -> Cmd {
        redis::cmd("SCRIPT").arg("LOAD").arg(self.source).to_owned()
    }

    /// Check a `SCRIPT LOAD` answer: the node must name the script by our SHA1.
    fn check_loaded(&self, answer: Value) -> RedisResult<()> {
        let sha: String = redis::from_redis_value(answer.extract_error()?)?;
        if sha.eq_ignore_ascii_case(&self.sha) {
            Ok(())
        } else {
            Err(RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "SCRIPT LOAD answered another SHA1 than the script's",
                sha,
            )))
        }
    }
}

/// How many times a script call that meets `NOSCRIPT` loads the script and tries again (a
/// node can lose its script cache between the load and the call: failover, restart,
/// `SCRIPT FLUSH`).
const SCRIPT_LOAD_ATTEMPTS: usize = 2;

/// Keys per `SCAN` page of [`RemoteStore::delete_prefix`].
const SCAN_COUNT: u64 = 1000;

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
///     .url("redis://127.0.0.1:7000")
///     .url("redis://127.0.0.1:7001")
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
    /// Single-key reads in flight and queued (coalesced, see `get`).
    reads: Reads,
    pub(crate) config: ClusterConfig,
    pub(crate) seeds: Seeds,
    pub(crate) ctx: Arc<ErrorContext>,
    pub(crate) topology: Arc<TopologyCache>,
    requests: AtomicU64,
    lease_script: LuaScript,
    tag_add_script: LuaScript,
    tag_take_script: LuaScript,
    /// The TLS files (`tls_ca_file`, client certificate and key), read once.
    pub(crate) tls: TlsFiles,
    /// The config's credentials provider, bound to this store (`None`: fixed credentials).
    pub(crate) auth: Option<ProviderAuth>,
}

/// The TLS files' contents (read once, TLS only).
#[derive(Clone, Default)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) struct TlsFiles {
    /// PEM of the CA to trust.
    pub(crate) root: Option<Vec<u8>>,
    /// PEM of the client certificate and of its key (mutual TLS).
    pub(crate) client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    /// The certificates for redis-rs, when any file is set.
    #[cfg(feature = "tls")]
    pub(crate) fn certificates(&self) -> Option<redis::TlsCertificates> {
        if self.root.is_none() && self.client.is_none() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.root.clone(),
        })
    }
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

/// Keys of one batch that go to one primary: `(slot, indices of its keys)` per slot.
struct Group {
    node: Option<NodeAddress>,
    slots: Vec<(u16, Vec<usize>)>,
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
                reads: Reads::default(),
                lease_script: LuaScript::new(SET_IF_LEASE_LUA),
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

    /// Group `keys` by slot, and the slots by the primary serving them.
    fn groups<'k>(&self, keys: impl Iterator<Item = &'k str>) -> Vec<Group> {
        let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.enumerate() {
            by_slot.entry(slot(key.as_bytes())).or_default().push(i);
        }
        let slots: Vec<u16> = by_slot.keys().copied().collect();
        let primaries = self.inner.topology.primaries_for(&slots);
        let mut by_node: HashMap<NodeAddress, Vec<(u16, Vec<usize>)>> = HashMap::new();
        let mut groups = Vec::new();
        for ((slot, indices), primary) in by_slot.into_iter().zip(primaries) {
            match primary {
                Some(node) => by_node.entry(node).or_default().push((slot, indices)),
                // Unknown slot: alone, routed by redis-rs.
                None => groups.push(Group {
                    node: None,
                    slots: vec![(slot, indices)],
                }),
            }
        }
        groups.extend(by_node.into_iter().map(|(node, slots)| Group {
            node: Some(node),
            slots,
        }));
        groups
    }

    /// Run a slot-grouped batch: `build` makes the commands of one slot from its key indices
    /// (one `MGET` for all of them, or one command per key), `decode` reads their answers, in
    /// order; server errors other than redirects reach `decode` as [`Value::ServerError`], for
    /// it to judge per command. One pipeline per primary, all in parallel; a primary whose
    /// pipeline meets a redirect (topology changing under us) is retried slot by slot, where
    /// redis-rs follows `MOVED`/`ASK` per slot. Not bounded in time: callers wrap it in
    /// [`Self::run`].
    ///
    /// A retry sends commands again, some of which may have run already (redis-rs resends a
    /// redirected pipeline as a whole; the slot-by-slot retry resends the group). Reads,
    /// `SET` and `DEL` do not mind; `SET NX` and the lease script then answer "not stored" for
    /// a write that did happen: a batch can under-report its writes during a slot migration,
    /// never over-report them.
    async fn batch<T, B, D>(
        &self,
        groups: Vec<Group>,
        read: bool,
        build: B,
        decode: D,
    ) -> RedisResult<Vec<(Vec<usize>, T)>>
    where
        B: Fn(&[usize]) -> Vec<Cmd> + Sync,
        D: Fn(Vec<Value>, &[usize]) -> RedisResult<T> + Sync,
        T: Send,
    {
        join_parts(
            groups
                .into_iter()
                .map(|group| self.batch_group(group, read, &build, &decode)),
        )
        .await
    }

    async fn batch_group<T, B, D>(
        &self,
        group: Group,
        read: bool,
        build: &B,
        decode: &D,
    ) -> RedisResult<Vec<(Vec<usize>, T)>>
    where
        B: Fn(&[usize]) -> Vec<Cmd> + Sync,
        D: Fn(Vec<Value>, &[usize]) -> RedisResult<T> + Sync,
    {
        let Some(node) = group.node.as_ref().filter(|_| group.slots.len() > 1) else {
            return self.batch_by_slot(group.slots, read, build, decode).await;
        };
        let mut pipe = redis::pipe();
        let mut sizes = Vec::with_capacity(group.slots.len());
        for (_, indices) in &group.slots {
            let cmds = build(indices);
            sizes.push(cmds.len());
            for cmd in cmds {
                pipe.add_command(cmd);
            }
        }
        let count = pipe.len();
        // Route by the group's first slot: redis-rs maps it to the same primary as `node`,
        // since both come from the same slot map.
        let route = slot_route(group.slots[0].0, read);
        let mut conn = self.conn.clone();
        self.count(1);
        let answer = conn.route_pipeline(pipe, 0, count, route).await;
        let redirected = match pipeline_outcome(answer, count)? {
            Ok(values) => {
                let mut values = values.into_iter();
                let mut out = Vec::with_capacity(group.slots.len());
                for ((_, indices), n) in group.slots.iter().zip(sizes) {
                    let answers: Vec<Value> = values.by_ref().take(n).collect();
                    out.push((indices.clone(), decode(answers, indices)?));
                }
                return Ok(out);
            }
            Err(redirect) => redirect,
        };
        tracing::debug!(
            node = %node,
            slots = group.slots.len(),
            error = %self.inner.ctx.scrub(&redirected.to_string()),
            "batch pipeline met a topology change; retrying slot by slot"
        );
        self.batch_by_slot(group.slots, read, build, decode).await
    }

    /// One pipeline per slot (its commands), in parallel. A slot whose pipeline meets a
    /// redirect or `TRYAGAIN` (its slot is migrating: a pipeline does not follow `ASK`, and a
    /// multi-key command over keys not all on the source answers `TRYAGAIN` until the
    /// migration ends) is sent again key by key.
    async fn batch_by_slot<T, B, D>(
        &self,
        slots: Vec<(u16, Vec<usize>)>,
        read: bool,
        build: &B,
        decode: &D,
    ) -> RedisResult<Vec<(Vec<usize>, T)>>
    where
        B: Fn(&[usize]) -> Vec<Cmd> + Sync,
        D: Fn(Vec<Value>, &[usize]) -> RedisResult<T> + Sync,
    {
        self.count(slots.len() as u64);
        let runs = slots.into_iter().map(|(slot, indices)| {
            let mut pipe = redis::pipe();
            for cmd in build(&indices) {
                pipe.add_command(cmd);
            }
            let count = pipe.len();
            let mut conn = self.conn.clone();
            async move {
                let answer = conn
                    .route_pipeline(pipe, 0, count, slot_route(slot, read))
                    .await;
                let redirected = match pipeline_outcome(answer, count)? {
                    Ok(values) => return Ok(vec![(indices.clone(), decode(values, &indices)?)]),
                    Err(redirect) => redirect,
                };
                tracing::debug!(
                    slot,
                    keys = indices.len(),
                    error = %self.inner.ctx.scrub(&redirected.to_string()),
                    "slot pipeline met a migration or redirect; sending key by key"
                );
                self.batch_key_by_key(indices, build, decode).await
            }
        });
        join_parts(runs).await
    }

    /// The keys at `indices` one at a time, in parallel: each key's commands (built for that
    /// key alone) are sent as single commands routed by their key, which redis-rs follows
    /// through `ASK`, `MOVED` and `TRYAGAIN` (see [`Self::send`]). Server errors reach
    /// `decode` as answers, as in a pipeline.
    async fn batch_key_by_key<T, B, D>(
        &self,
        indices: Vec<usize>,
        build: &B,
        decode: &D,
    ) -> RedisResult<Vec<(Vec<usize>, T)>>
    where
        B: Fn(&[usize]) -> Vec<Cmd> + Sync,
        D: Fn(Vec<Value>, &[usize]) -> RedisResult<T> + Sync,
    {
        let runs = indices.into_iter().map(|i| async move {
            let mut answers = Vec::new();
            for cmd in build(&[i]) {
                answers.push(match self.send::<Value>(&cmd, None).await {
                    Ok(value) => value,
                    Err(e) => Value::ServerError(redis::ServerError::try_from(e)?),
                });
            }
            Ok::<_, RedisError>((vec![i], decode(answers, &[i])?))
        });
        join_all(runs).await.into_iter().collect()
    }

    /// `SCAN` one primary for `pattern` and `UNLINK` what it finds; returns how many.
    async fn scan_delete(&self, node: NodeAddress, pattern: &str) -> Result<u64> {
        let by_address = SingleNodeRoutingInfo::ByAddress {
            host: node.host().to_owned(),
            port: node.port(),
        };
        let mut cursor: u64 = 0;
        let mut deleted: u64 = 0;
        loop {
            let scan = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .to_owned();
            let mut conn = self.conn.clone();
            let routing = RoutingInfo::SingleNode(by_address.clone());
            self.count(1);
            let page = self
                .run("SCAN", async move {
                    let value = conn.route_command(scan, routing).await?;
                    Ok(redis::from_redis_value::<(u64, Vec<Vec<u8>>)>(value)?)
                })
                .await?;
            let (next, keys) = page;
            if !keys.is_empty() {
                deleted += self.unlink_on(&by_address, keys).await?;
            }
            cursor = next;
            if cursor == 0 {
                return Ok(deleted);
            }
        }
    }

    /// `UNLINK` keys found on one node (one pipeline); keys that moved meanwhile are deleted
    /// one by one through the normal routing.
    async fn unlink_on(&self, node: &SingleNodeRoutingInfo, keys: Vec<Vec<u8>>) -> Result<u64> {
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("UNLINK").arg(k);
        }
        let count = keys.len();
        let mut conn = self.conn.clone();
        let route = node.clone();
        self.count(1);
        let values = self
            .run("UNLINK (pipeline)", async move {
                conn.route_pipeline(pipe, 0, count, route).await
            })
            .await?;
        let mut deleted = 0u64;
        let mut moved = Vec::new();
        for (key, value) in keys.into_iter().zip(values) {
            match value {
                Value::Int(n) => deleted += u64::try_from(n).unwrap_or(0),
                _ => moved.push(key),
            }
        }
        for key in moved {
            let mut conn = self.conn.clone();
            self.count(1);
            let n = self
                .run("UNLINK", async move {
                    redis::cmd("UNLINK")
                        .arg(key)
                        .query_async::<i64>(&mut conn)
                        .await
                })
                .await?;
            deleted += u64::try_from(n).unwrap_or(0);
        }
        Ok(deleted)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The TLS files' contents, read once (TLS only).
fn read_tls_files(config: &ClusterConfig, seeds: &Seeds) -> Result<TlsFiles> {
    if !seeds.tls {
        return Ok(TlsFiles::default());
    }
    #[cfg(feature = "tls")]
    {
        // rustls needs a process-wide crypto provider; ours is `ring`. No-op when one is
        // installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let read = |path: &std::path::Path, setting: &str| {
        std::fs::read(path).map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("cannot read {setting} {}: {e}", path.display()),
            )
        })
    };
    let root = match &config.tls_ca_file {
        Some(path) => Some(read(path, "tls_ca_file")?),
        None => None,
    };
    let client = match (&config.tls_client_cert_file, &config.tls_client_key_file) {
        (Some(cert), Some(key)) => Some((
            read(cert, "tls_client_cert_file")?,
            read(key, "tls_client_key_file")?,
        )),
        _ => None,
    };
    Ok(TlsFiles { root, client })
}

/// Errors that mean "the slot map changed under this request": worth a retry slot by slot.
fn is_topology_error(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::ClusterConnectionNotFound
        || matches!(
            e.code(),
            Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN" | "READONLY" | "CROSSSLOT")
        )
}

/// Run `parts` in parallel and concatenate their outputs, in order (the first error wins).
async fn join_parts<T, F>(parts: impl IntoIterator<Item = F>) -> RedisResult<Vec<T>>
where
    F: Future<Output = RedisResult<Vec<T>>>,
{
    let mut out = Vec::new();
    for part in join_all(parts).await {
        out.extend(part?);
    }
    Ok(out)
}

/// A pipeline's `count` answers (`Ok(Ok)`), or the redirect or reconfiguration error it met,
/// as a whole or in one of its answers (`Ok(Err)`: worth sending again another way), or
/// another failure (`Err`).
fn pipeline_outcome(
    answer: RedisResult<Vec<Value>>,
    count: usize,
) -> RedisResult<std::result::Result<Vec<Value>, RedisError>> {
    match answer {
        Ok(values) if values.len() == count => match values.iter().find_map(topology_error) {
            None => Ok(Ok(values)),
            Some(e) => Ok(Err(e)),
        },
        Ok(values) => Err(wrong_length(values.len(), count)),
        Err(e) if is_topology_error(&e) => Ok(Err(e)),
        Err(e) => Err(e),
    }
}

/// The redirect or reconfiguration error a pipeline answer carries, if any.
fn topology_error(answer: &Value) -> Option<RedisError> {
    match answer {
        Value::ServerError(_) => answer
            .clone()
            .extract_error()
            .err()
            .filter(is_topology_error),
        _ => None,
    }
}

/// Whether a call failed with `NOSCRIPT` (the node has not cached the script).
fn is_noscript_error(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// Whether a pipeline answer is `NOSCRIPT` (the node has not cached the script).
fn is_noscript(answer: &Value) -> bool {
    matches!(answer, Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::NoScript))
}

/// Route of a batch's pipeline: the primary of `slot` (a replica may serve reads when the
/// read-routing strategy says so).
fn slot_route(slot: u16, read: bool) -> SingleNodeRoutingInfo {
    let addr = if read {
        SlotAddr::ReplicaOptional
    } else {
        SlotAddr::Master
    };
    SingleNodeRoutingInfo::SpecificNode(Route::new(slot, addr))
}

fn wrong_length(got: usize, count: usize) -> RedisError {
    RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "pipeline answer of the wrong length",
        format!("{got} answers to {count} commands"),
    ))
}

/// Map a redis-rs error, with the cluster's own transient states as connection errors.
pub(crate) fn map_error(ctx: &ErrorContext, op: &str, e: &RedisError) -> Error {
    let ep = &ctx.endpoint;
    // The cluster client wraps the per-node error of its initial connection in an I/O error
    // ("Failed to create initial connections - ..."); recognise refused credentials in it.
    let text = e.to_string();
    if text.contains(PROVIDER_FAILED) {
        return Error::new(
            ErrorKind::Auth,
            format!(
                "no credentials for Redis Cluster at {ep}: {}",
                ctx.scrub(&text)
            ),
        );
    }
    if [
        "AuthenticationFailed",
        "WRONGPASS",
        "NOAUTH",
        "invalid username-password",
    ]
    .iter()
    .any(|needle| text.contains(needle))
    {
        let message = if ctx.has_password {
            format!(
                "Redis Cluster at {ep} refused the credentials for user `{}`",
                ctx.user()
            )
        } else {
            format!("Redis Cluster at {ep} requires authentication but no password is configured")
        };
        return Error::new(ErrorKind::Auth, message);
    }
    if e.kind() == redis::ErrorKind::ClusterConnectionNotFound {
        return Error::new(
            ErrorKind::Connection,
            format!(
                "no connection to the Redis Cluster node serving {op} ({ep}): {}",
                ctx.scrub(&e.to_string())
            ),
        );
    }
    if let Some(
        code @ ("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "READONLY"
        | "LOADING"),
    ) = e.code()
    {
        return Error::new(
            ErrorKind::Connection,
            format!(
                "the Redis Cluster ({ep}) is reconfiguring and could not serve {op} within the \
                 retries ({code}): {}",
                ctx.scrub(&e.to_string())
            ),
        );
    }
    ctx.map(op, e)
}

/// A connect-time error (`None`: our own timeout ran out).
fn connect_error(ctx: &ErrorContext, e: Option<&RedisError>, limit: Duration) -> Error {
    let mapped = match e.map(|e| map_error(ctx, "connect", e)) {
        Some(mapped) if mapped.kind() != ErrorKind::Timeout => mapped,
        _ => Error::new(
            ErrorKind::Timeout,
            format!(
                "cannot reach the Redis Cluster at {}: no answer within {limit:?} \
                 (connect_timeout)",
                ctx.endpoint
            ),
        ),
    };
    tracing::warn!(
        endpoint = %ctx.endpoint,
        kind = %mapped.kind(),
        error = %mapped.message(),
        "cannot connect to Redis Cluster"
    );
    mapped
}

/// The answer of a slot's single command (`MGET`, `DEL`), its server error extracted.
fn only(answers: Vec<Value>) -> RedisResult<Value> {
    let n = answers.len();
    match <[Value; 1]>::try_from(answers) {
        Ok([answer]) => answer.extract_error(),
        Err(_) => Err(wrong_length(n, 1)),
    }
}

/// `MGET` answer of the keys at `indices` (a `GET` answer for a single key).
fn decode_mget(answers: Vec<Value>, indices: &[usize]) -> RedisResult<Vec<Option<Vec<u8>>>> {
    let n = indices.len();
    if n == 1 {
        return Ok(vec![redis::from_redis_value(only(answers)?)?]);
    }
    let values: Vec<Option<Vec<u8>>> = redis::from_redis_value(only(answers)?)?;
    if values.len() != n {
        return Err(RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "MGET answer of the wrong length",
            format!("{} values for {n} keys", values.len()),
        )));
    }
    Ok(values)
}

#[async_trait]
impl RemoteStore for ClusterStore {
    fn kind(&self) -> &'static str {
        "cluster"
    }

    fn max_value_size(&self) -> usize {
        self.inner.config.max_value_size
    }

    /// A `GET`, coalesced with this store's other single-key reads: sent at once when no read
    /// is in flight, else queued and sent with the others as one slot-grouped batch (one
    /// pipeline per primary, see [`RemoteStore::get_many`]) when the read in flight is
    /// answered. Bounded by `response_timeout` from the call, queue time included.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        coalesced_read(self, key).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        match keys.len() {
            0 => return Ok(Vec::new()),
            1 => return Ok(vec![self.get(&keys[0]).await?]),
            _ => {}
        }
        let groups = self.groups(keys.iter().map(String::as_str));
        // One `MGET` per slot; a `GET` for a slot's only key (and so for the key-by-key
        // retry of a migrating slot: redis-rs fans an `MGET` out as a multi-slot command,
        // whose `ASK` redirects it does not follow).
        let build = |indices: &[usize]| match indices {
            [i] => vec![redis::cmd("GET").arg(&keys[*i]).to_owned()],
            _ => {
                let mut cmd = redis::cmd("MGET");
                for i in indices {
                    cmd.arg(&keys[*i]);
                }
                vec![cmd]
            }
        };
        let parts = self
            .run("MGET (batch)", self.batch(groups, true, build, decode_mget))
            .await?;
        Ok(scatter(keys.len(), None, parts))
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        self.check_size(key, value.len())?;
        let cmd = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl_ms(ttl))
            .to_owned();
        self.run("SET", self.send::<()>(&cmd, None)).await
    }

    async fn set_many(&self, entries: Vec<RemoteEntry>) -> Result<()> {
        for e in &entries {
            self.check_size(&e.key, e.value.len())?;
        }
        match entries.len() {
            0 => return Ok(()),
            1 => {
                let mut entries = entries;
                if let Some(e) = entries.pop() {
                    return self.set(&e.key, e.value, e.ttl).await;
                }
                return Ok(());
            }
            _ => {}
        }
        // One pipeline per primary; within it, one `SET` per key (there is no `MSET` with a
        // TTL).
        let groups = self.groups(entries.iter().map(|e| e.key.as_str()));
        let build = |indices: &[usize]| {
            indices
                .iter()
                .map(|i| {
                    let e = &entries[*i];
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(&e.key)
                        .arg(&e.value[..])
                        .arg("PX")
                        .arg(ttl_ms(e.ttl));
                    cmd
                })
                .collect()
        };
        let decode = |answers: Vec<Value>, _: &[usize]| {
            answers
                .into_iter()
                .try_for_each(|a| a.extract_error().map(|_| ()))
        };
        self.run("SET (batch)", self.batch(groups, false, build, decode))
            .await
            .map(|_| ())
    }

    async fn delete(&self, keys: &[String]) -> Result<()> {
        match keys.len() {
            0 => return Ok(()),
            1 => {
                let cmd = redis::cmd("DEL").arg(&keys[0]).to_owned();
                return self.run("DEL", self.send::<()>(&cmd, None)).await;
            }
            _ => {}
        }
        // One single-key `DEL` per key, in one pipeline per primary: while a slot migrates, a
        // multi-key `DEL` whose keys are not all on the source (a value key with its absent
        // lease key) answers `TRYAGAIN` for the whole migration; single keys follow `ASK`.
        let groups = self.groups(keys.iter().map(String::as_str));
        let build = |indices: &[usize]| {
            indices
                .iter()
                .map(|i| redis::cmd("DEL").arg(&keys[*i]).to_owned())
                .collect()
        };
        let decode = |answers: Vec<Value>, _: &[usize]| {
            answers
                .into_iter()
                .try_for_each(|a| a.extract_error().map(|_| ()))
        };
        // A slot that migrates meanwhile is retried key by key (see `batch_by_slot`).
        self.run("DEL (batch)", self.batch(groups, false, build, decode))
            .await
            .map(|_| ())
    }

    async fn set_after_delete(
        &self,
        first: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<()> {
        self.check_size(key, value.len())?;
        // Both keys hash to one slot: one pipeline to its primary, the `DEL` first. A slot
        // that migrates meanwhile is retried key by key, in the same order (see
        // `batch_by_slot`).
        let keys = [first, key];
        let groups = self.groups(keys.iter().copied());
        let build = |indices: &[usize]| {
            indices
                .iter()
                .map(|i| {
                    if *i == 0 {
                        redis::cmd("DEL").arg(first).to_owned()
                    } else {
                        let mut cmd = redis::cmd("SET");
                        cmd.arg(key).arg(&value[..]).arg("PX").arg(ttl_ms(ttl));
                        cmd
                    }
                })
                .collect()
        };
        let decode = |answers: Vec<Value>, _: &[usize]| {
            answers
                .into_iter()
                .try_for_each(|a| a.extract_error().map(|_| ()))
        };
        self.run(
            "DEL + SET (pipeline)",
            self.batch(groups, false, build, decode),
        )
        .await
        .map(|_| ())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let Some(primaries) = self.inner.topology.primaries() else {
            return Err(Error::new(
                ErrorKind::Connection,
                format!(
                    "the slot map of the Redis Cluster at {} is not known yet; cannot scan \
                     its primaries",
                    self.inner.ctx.endpoint
                ),
            ));
        };
        let pattern = format!("{}*", glob_escape(prefix));
        let scans = primaries
            .into_iter()
            .map(|node| self.scan_delete(node, &pattern));
        let mut total = 0;
        for result in join_all(scans).await {
            total += result?;
        }
        Ok(total)
    }

    async fn set_nx(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<bool> {
        self.check_size(key, value.len())?;
        let cmd = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms(ttl))
            .to_owned();
        let answer = self.run("SET NX", self.send::<Value>(&cmd, None)).await?;
        match answer {
            Value::Okay => Ok(true),
            Value::Nil => Ok(false),
            _ => Err(Error::new(
                ErrorKind::Remote,
                format!(
                    "Redis Cluster at {} answered SET NX with an unexpected reply",
                    self.inner.ctx.endpoint
                ),
            )),
        }
    }

    async fn tag_add(&self, tag_key: &str, member: &str, ttl: Duration) -> Result<()> {
        let ttl = ttl_ms(ttl).to_string();
        let args: [&[u8]; 2] = [member.as_bytes(), ttl.as_bytes()];
        self.eval::<i64>(
            "EVALSHA (tag_add)",
            &self.inner.tag_add_script,
            &[tag_key],
            &args,
        )
        .await
        .map(|_| ())
    }

    async fn tag_take(&self, tag_key: &str, pending_key: &str) -> Result<Vec<String>> {
        self.eval(
            "EVALSHA (tag_take)",
            &self.inner.tag_take_script,
            &[tag_key, pending_key],
            &[],
        )
        .await
    }

    async fn tag_done(&self, pending_key: &str, members: &[String]) -> Result<()> {
        if members.is_empty() {
            return Ok(());
        }
        let cmd = redis::cmd("SREM").arg(pending_key).arg(members).to_owned();
        self.run("SREM", self.send::<()>(&cmd, None)).await
    }

    async fn set_if_lease(
        &self,
        lease_key: &str,
        token: &[u8],
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool> {
        self.check_size(key, value.len())?;
        same_slot(lease_key, key)?;
        let ttl = ttl_ms(ttl).to_string();
        let args: [&[u8]; 3] = [token, &value, ttl.as_bytes()];
        let stored: i64 = self
            .eval(
                "EVALSHA (set_if_lease)",
                &self.inner.lease_script,
                &[lease_key, key],
                &args,
            )
            .await?;
        Ok(stored == 1)
    }

    /// Grouped like [`RemoteStore::set_many`]: one `SET key value NX PX ttl` per key, one
    /// pipeline per primary, primaries in parallel.
    async fn set_nx_many(&self, keys: &[String], value: &[u8], ttl: Duration) -> Result<Vec<bool>> {
        match keys.len() {
            0 => return Ok(Vec::new()),
            1 => return Ok(vec![self.set_nx(&keys[0], value.to_vec(), ttl).await?]),
            _ => {}
        }
        self.check_size(&keys[0], value.len())?;
        let ttl = ttl_ms(ttl);
        let groups = self.groups(keys.iter().map(String::as_str));
        let build = |indices: &[usize]| {
            indices
                .iter()
                .map(|i| {
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(&keys[*i]).arg(value).arg("NX").arg("PX").arg(ttl);
                    cmd
                })
                .collect()
        };
        let decode = |answers: Vec<Value>, _: &[usize]| {
            answers
                .into_iter()
                .map(set_nx_answer)
                .collect::<RedisResult<Vec<bool>>>()
        };
        let parts = self
            .run("SET NX (batch)", self.batch(groups, false, build, decode))
            .await?;
        Ok(scatter(keys.len(), false, parts))
    }

    /// Grouped like [`RemoteStore::set_many`] (a fill's lease key and key share a slot): one
    /// `EVALSHA` of the lease script per fill, one pipeline per primary, primaries in
    /// parallel. Fills answered `NOSCRIPT` did nothing; as in [`RemoteStore::set_if_lease`],
    /// they are sent again after a `SCRIPT LOAD` on every primary, all within one
    /// `response_timeout`. No `EVAL`: the minimal ACL rules refuse it.
    async fn set_if_lease_many(&self, fills: Vec<LeaseFill>) -> Result<Vec<bool>> {
        for f in &fills {
            self.check_size(&f.key, f.value.len())?;
            same_slot(&f.lease_key, &f.key)?;
        }
        if fills.len() < 2 {
            let mut out = Vec::with_capacity(1);
            for f in fills {
                out.push(
                    self.set_if_lease(&f.lease_key, &f.token, &f.key, f.value, f.ttl)
                        .await?,
                );
            }
            return Ok(out);
        }
        let script = &self.inner.lease_script;
        let ttls: Vec<String> = fills.iter().map(|f| ttl_ms(f.ttl).to_string()).collect();
        let command = |i: usize| {
            let f = &fills[i];
            let args: [&[u8]; 3] = [&f.token, &f.value, ttls[i].as_bytes()];
            script.command(&[&f.lease_key, &f.key], &args)
        };
        let decode = |answers: Vec<Value>, _: &[usize]| {
            answers
                .into_iter()
                .map(lease_answer)
                .collect::<RedisResult<Vec<Option<bool>>>>()
        };
        let run = async {
            let groups = self.groups(fills.iter().map(|f| f.key.as_str()));
            let build = |indices: &[usize]| indices.iter().map(|i| command(*i)).collect();
            let parts = self.batch(groups, false, build, decode).await?;
            let mut stored = scatter(fills.len(), None, parts);
            for _ in 0..SCRIPT_LOAD_ATTEMPTS {
                let missing: Vec<usize> =
                    (0..stored.len()).filter(|i| stored[*i].is_none()).collect();
                if missing.is_empty() {
                    break;
                }
                self.load_on_primaries(script).await?;
                let groups = self.groups(missing.iter().map(|i| fills[*i].key.as_str()));
                let build =
                    |indices: &[usize]| indices.iter().map(|j| command(missing[*j])).collect();
                for (indices, answers) in self.batch(groups, false, build, decode).await? {
                    for (j, answer) in indices.into_iter().zip(answers) {
                        stored[missing[j]] = answer;
                    }
                }
            }
            stored
                .into_iter()
                .map(|s| s.ok_or_else(noscript_after_load))
                .collect::<RedisResult<Vec<bool>>>()
        };
        self.run("EVALSHA (set_if_lease batch)", run).await
    }
}

/// A script may only touch one slot: refuse a lease key and a key in different slots before
/// sending.
fn same_slot(lease_key: &str, key: &str) -> Result<()> {
    if slot(lease_key.as_bytes()) != slot(key.as_bytes()) {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            "the lease key and the key are in different hash slots; a script can only \
             touch one slot in Redis Cluster",
        ));
    }
    Ok(())
}

/// Whether one `SET NX` stored (`OK`) or found the key taken (nil).
fn set_nx_answer(answer: Value) -> RedisResult<bool> {
    match answer.extract_error()? {
        Value::Okay => Ok(true),
        Value::Nil => Ok(false),
        _ => Err(RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unexpected answer to SET NX",
        ))),
    }
}

/// Whether one run of the lease script stored (`1`) or not (`0`); `None`: `NOSCRIPT`, it did
/// not run.
fn lease_answer(answer: Value) -> RedisResult<Option<bool>> {
    if is_noscript(&answer) {
        return Ok(None);
    }
    match answer.extract_error()? {
        Value::Int(stored) => Ok(Some(stored == 1)),
        _ => Err(RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unexpected answer to the lease script",
        ))),
    }
}

/// The error of a script call still answered `NOSCRIPT` after its `SCRIPT LOAD`s.
fn noscript_after_load() -> RedisError {
    RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "the node answered NOSCRIPT again after SCRIPT LOAD (its script cache keeps being \
         flushed)",
    ))
}

/// The per-slot answers of a batch, back in the order of its `n` keys (`fill` where a key
/// got no answer).
fn scatter<T: Clone>(n: usize, fill: T, parts: Vec<(Vec<usize>, Vec<T>)>) -> Vec<T> {
    let mut out = vec![fill; n];
    for (indices, values) in parts {
        for (i, v) in indices.into_iter().zip(values) {
            out[i] = v;
        }
    }
    out
}

impl ClusterStore {
    /// Run a script on the node of its keys (all in one slot): `EVALSHA`; when that node has
    /// not cached the script yet (`NOSCRIPT`: a new primary after a failover, a restart,
    /// `SCRIPT FLUSH`, the importing node of a migrating slot), `SCRIPT LOAD` on every
    /// primary, then the `EVALSHA` again. No `EVAL`: the minimal ACL rules refuse it.
    async fn eval<T: redis::FromRedisValue + Send>(
        &self,
        op: &'static str,
        script: &LuaScript,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<T> {
        let evalsha = script.command(keys, args);
        self.run(op, async move {
            match self.send::<T>(&evalsha, None).await {
                Err(e) if is_noscript_error(&e) => {}
                other => return other,
            }
            for _ in 0..SCRIPT_LOAD_ATTEMPTS {
                self.load_on_primaries(script).await?;
                // A single command: redis-rs follows `ASK` to a slot's importing node.
                match self.send::<T>(&evalsha, None).await {
                    Err(e) if is_noscript_error(&e) => {}
                    other => return other,
                }
            }
            Err(noscript_after_load())
        })
        .await
    }

    /// `SCRIPT LOAD` on every primary of the slot map, in parallel (a `NOSCRIPT` answer does
    /// not say which node gave it; during a migration it can be the importing node). Nodes
    /// that fail are skipped; `Ok` when at least one loaded it. Without a slot map, redis-rs
    /// sends it to every node.
    async fn load_on_primaries(&self, script: &LuaScript) -> RedisResult<()> {
        let Some(primaries) = self.inner.topology.primaries() else {
            let mut conn = self.conn.clone();
            self.count(1);
            return script.check_loaded(script.load().query_async::<Value>(&mut conn).await?);
        };
        self.count(primaries.len() as u64);
        let loads = primaries.into_iter().map(|node| {
            let mut conn = self.conn.clone();
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: node.host().to_owned(),
                port: node.port(),
            });
            async move { script.check_loaded(conn.route_command(script.load(), route).await?) }
        });
        let results = join_all(loads).await;
        if results.iter().any(Result::is_ok) {
            return Ok(());
        }
        results
            .into_iter()
            .filter_map(Result::err)
            .last()
            .map_or(Ok(()), Err)
    }
}

impl Coalesced for ClusterStore {
    fn reads(&self) -> &Reads {
        &self.inner.reads
    }

    async fn read_one(&self, key: &str) -> Answer {
        let cmd = redis::cmd("GET").arg(key).to_owned();
        self.run("GET", self.send(&cmd, None)).await
    }

    async fn read_batch(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        self.get_many(keys).await
    }

    fn response_timeout(&self) -> Duration {
        self.inner.config.response_timeout
    }

    fn endpoint(&self) -> &str {
        &self.inner.ctx.endpoint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_clamped() {
        assert_eq!(ttl_ms(Duration::ZERO), 1);
        assert_eq!(ttl_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(ttl_ms(Duration::MAX), MAX_TTL_MS);
    }

    #[test]
    fn cluster_errors_are_transient_connection_errors() {
        let ctx = ErrorContext::new("cluster h:1".into(), "default".into(), false, vec![]);
        let moved = RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::Moved),
            "moved",
            "3999 127.0.0.1:6381".to_owned(),
        ));
        let e = map_error(&ctx, "GET", &moved);
        assert_eq!(e.kind(), ErrorKind::Connection);
        assert!(e.is_transient());
        let none = RedisError::from((redis::ErrorKind::ClusterConnectionNotFound, "none"));
        assert_eq!(map_error(&ctx, "GET", &none).kind(), ErrorKind::Connection);
        let other = RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "boom",
        ));
        assert_eq!(map_error(&ctx, "GET", &other).kind(), ErrorKind::Remote);
    }
}
