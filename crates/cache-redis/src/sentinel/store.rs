//! Redis Sentinel (feature `sentinel`): [`SentinelStore`] and [`SentinelBus`] over the current
//! master of a sentinel-monitored group, following failovers.
//!
//! The store is a [`RedisStore`] connected to the master the sentinels name; all data
//! commands, scripts (leases, tags) and the read coalescing are the standalone store's. When a
//! call fails in a way a failover explains (connection refused or reset, no answer within
//! `response_timeout`, `READONLY` from a demoted master), a background task asks the sentinels
//! again, every `rediscover_interval`, until they name a master that answers `ROLE` as one;
//! then the store switches to it. The failing call itself is not retried: it returns its error
//! at once (bounded by `response_timeout` as on standalone), and the engine falls through to
//! the loader meanwhile.
//!
//! The bus is a [`RedisBus`] on the current master; when the master changes, or the
//! subscription breaks, it reports the loss (the engine flushes L1), starts over on the new
//! master and resubscribes every channel.
//!
//! Replica reads (`replica_reads`, off by default): `get` and `get_many` go to a replica the
//! sentinels list (`SENTINEL REPLICAS`, one with its link to the master up), falling back to
//! the master when none is usable or a replica read fails; everything else stays on the
//! master. Replication is asynchronous, so such a read may return a value older than the
//! latest write (see `docs/sentinel.md`).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cache_core::bus::{BusEvent, BusTransport};
use cache_core::{Error, ErrorKind, LeaseFill, RemoteEntry, RemoteStore, Result};
use redis::{AsyncConnectionConfig, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{duration_text, RedisConfig};
use crate::errors::ErrorContext;
use crate::target::{self, Target, REDACTED};
use crate::{RedisBus, RedisStore};

/// Default master name: `mymaster` (the name in Redis' sample `sentinel.conf`).
pub const DEFAULT_MASTER_NAME: &str = "mymaster";
/// The port of a sentinel URL without one: 26379.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;
/// Default pause between two questions to the sentinels while a failover is under way: 100 ms.
pub const DEFAULT_REDISCOVER_INTERVAL: Duration = Duration::from_millis(100);
/// After this long without finding a usable master, the sentinels are asked at most once a
/// second.
const SLOW_REDISCOVERY_AFTER: Duration = Duration::from_secs(30);

/// How to reach a Redis master through its sentinels, and the settings of the data
/// connections to it.
///
/// | field | default | meaning |
/// |---|---|---|
/// | `sentinels` | none (required) | sentinel URLs, `redis://[[user]:password@]host[:port]` (port 26379 when left out), `rediss://` with feature `tls` |
/// | `master_name` | `mymaster` | the name the sentinels monitor the master by |
/// | `sentinel_username` / `sentinel_password` | none | credentials for the sentinels (override the URLs'); never printed |
/// | `redis` | [`RedisConfig::default`] | the data connections: its URL's host and port are replaced by the master the sentinels name; its scheme (`redis`/`rediss`), credentials, database and protocol apply, and so do all its timeouts and limits |
/// | `rediscover_interval` | 100 ms | pause between questions to the sentinels while a failover is under way (at most once a second after 30 s) |
/// | `replica_reads` | false | serve `get` / `get_many` from a replica (may be stale: replication is asynchronous); writes, leases, tags and the bus stay on the master |
///
/// Sentinels are asked with the data connections' `connect_timeout` and `response_timeout`.
/// `Debug` never shows a password.
///
/// ```
/// use std::time::Duration;
/// use cache_redis::{RedisConfig, SentinelConfig};
///
/// let config = SentinelConfig::builder()
///     .sentinels(["redis://10.0.0.1:26379", "redis://10.0.0.2:26379", "redis://10.0.0.3"])
///     .master_name("cache")
///     .redis(
///         RedisConfig::builder()
///             .url("redis://any-host/2") // database 2 on whichever node is master
///             .password("s3cret")
///             .response_timeout(Duration::from_millis(200))
///             .build()?,
///     )
///     .build()?;
/// assert!(!format!("{config:?}").contains("s3cret"));
///
/// let from_file: SentinelConfig = serde_json::from_str(
///     r#"{ "sentinels": ["redis://s1:26379"], "master_name": "cache",
///          "redis": { "response_timeout": "250ms" } }"#,
/// )
/// .unwrap();
/// assert_eq!(from_file.redis.response_timeout, Duration::from_millis(250));
/// # Ok::<(), cache_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct SentinelConfig {
    /// Sentinel URLs; any one that answers is enough.
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the master by.
    pub master_name: String,
    /// ACL user for the sentinels; overrides the URLs'. Needs a password.
    pub sentinel_username: Option<String>,
    /// Password for the sentinels; overrides the URLs'. Never printed.
    pub sentinel_password: Option<String>,
    /// The data connections to the master (see the table above).
    pub redis: RedisConfig,
    /// Pause between questions to the sentinels while a failover is under way.
    #[serde(with = "duration_text")]
    pub rediscover_interval: Duration,
    /// Serve `get` / `get_many` from a replica (off by default). Reads may then return a
    /// value older than the latest write, for as long as the replica lags.
    pub replica_reads: bool,
}

impl Default for SentinelConfig {
    fn default() -> Self {
        SentinelConfig {
            sentinels: Vec::new(),
            master_name: DEFAULT_MASTER_NAME.to_owned(),
            sentinel_username: None,
            sentinel_password: None,
            redis: RedisConfig::default(),
            rediscover_interval: DEFAULT_REDISCOVER_INTERVAL,
            replica_reads: false,
        }
    }
}

impl fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|u| target::redact_url(u))
            .collect();
        f.debug_struct("SentinelConfig")
            .field("sentinels", &sentinels)
            .field("master_name", &self.master_name)
            .field("sentinel_username", &self.sentinel_username)
            .field(
                "sentinel_password",
                &self.sentinel_password.as_ref().map(|_| REDACTED),
            )
            .field("redis", &self.redis)
            .field("rediscover_interval", &self.rediscover_interval)
            .field("replica_reads", &self.replica_reads)
            .finish()
    }
}

impl SentinelConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> SentinelConfigBuilder {
        SentinelConfigBuilder::default()
    }

    /// The defaults with these sentinels and master name.
    pub fn new<I, S>(sentinels: I, master_name: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        SentinelConfig {
            sentinels: sentinels.into_iter().map(Into::into).collect(),
            master_name: master_name.into(),
            ..SentinelConfig::default()
        }
    }

    /// Check everything that can be checked without a server: at least one sentinel, every
    /// sentinel URL, the master name, the data connection settings
    /// ([`RedisConfig::validate`]; its URL must be `redis://` or `rediss://`).
    pub fn validate(&self) -> Result<()> {
        self.sentinel_targets().map(|_| ())
    }

    fn sentinel_targets(&self) -> Result<Vec<Target>> {
        let bad = |m: String| Err(Error::new(ErrorKind::InvalidConfig, m));
        if self.sentinels.is_empty() {
            return bad("no sentinel is configured; give at least one sentinel URL".to_owned());
        }
        if self.master_name.trim().is_empty() || self.master_name.contains(char::is_whitespace) {
            return bad(format!(
                "the master name `{}` is empty or has white space",
                self.master_name
            ));
        }
        if self.rediscover_interval.is_zero() {
            return bad("rediscover_interval must be greater than zero".to_owned());
        }
        let data = self.redis.resolve()?;
        if !matches!(data.info.addr(), redis::ConnectionAddr::Tcp(..)) && !data.tls {
            return bad(
                "with sentinels the redis URL must be redis:// or rediss:// (its host and port \
                 are replaced by the master's); a unix socket cannot be followed"
                    .to_owned(),
            );
        }
        let mut targets = Vec::with_capacity(self.sentinels.len());
        for url in &self.sentinels {
            let target = target::resolve(
                &with_default_port(url),
                self.sentinel_username.as_deref(),
                self.sentinel_password.as_deref(),
            )?;
            if target.info.redis_settings().db() != 0 {
                return bad(format!(
                    "the sentinel URL for {} names a database; sentinels have none (set the \
                     database in the redis URL)",
                    target.endpoint
                ));
            }
            if !matches!(target.info.addr(), redis::ConnectionAddr::Tcp(..)) && !target.tls {
                return bad(format!(
                    "the sentinel URL for {} is not redis:// or rediss://",
                    target.endpoint
                ));
            }
            targets.push(target);
        }
        Ok(targets)
    }

    /// The data connection settings for the master at `host:port`.
    fn master_config(&self, host: &str, port: u16) -> Result<RedisConfig> {
        let mut url = url::Url::parse(self.redis.url.trim()).map_err(|_| {
            Error::new(
                ErrorKind::InvalidUrl,
                "the redis URL of the sentinel config is invalid",
            )
        })?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let moved = url.set_host(Some(&host)).is_ok() && url.set_port(Some(port)).is_ok();
        if !moved {
            return Err(Error::new(
                ErrorKind::Remote,
                format!("the sentinels named an unusable master address {host}:{port}"),
            ));
        }
        let mut config = self.redis.clone();
        config.url = url.to_string();
        Ok(config)
    }
}

/// `url` with the sentinel port when it has none (and parses).
fn with_default_port(url: &str) -> String {
    match url::Url::parse(url.trim()) {
        Ok(mut parsed)
            if matches!(parsed.scheme(), "redis" | "rediss")
                && parsed.port().is_none()
                && parsed.host().is_some() =>
        {
            if parsed.set_port(Some(DEFAULT_SENTINEL_PORT)).is_ok() {
                parsed.to_string()
            } else {
                url.to_owned()
            }
        }
        _ => url.to_owned(),
    }
}

/// Fluent builder of [`SentinelConfig`]; [`SentinelConfigBuilder::build`] validates.
#[derive(Clone, Default)]
pub struct SentinelConfigBuilder {
    config: SentinelConfig,
}

impl fmt::Debug for SentinelConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SentinelConfigBuilder")
            .field(&self.config)
            .finish()
    }
}

impl SentinelConfigBuilder {
    /// The sentinel URLs (replacing any given before).
    pub fn sentinels<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.sentinels = urls.into_iter().map(Into::into).collect();
        self
    }

    /// One more sentinel URL.
    pub fn sentinel(mut self, url: impl Into<String>) -> Self {
        self.config.sentinels.push(url.into());
        self
    }

    /// The name the sentinels monitor the master by (default `mymaster`).
    pub fn master_name(mut self, name: impl Into<String>) -> Self {
        self.config.master_name = name.into();
        self
    }

    /// Credentials for the sentinels (override the URLs').
    pub fn sentinel_credentials(
        mut self,
        username: Option<&str>,
        password: impl Into<String>,
    ) -> Self {
        self.config.sentinel_username = username.map(str::to_owned);
        self.config.sentinel_password = Some(password.into());
        self
    }

    /// The data connection settings (credentials, database, TLS, timeouts, limits).
    pub fn redis(mut self, config: RedisConfig) -> Self {
        self.config.redis = config;
        self
    }

    /// Pause between questions to the sentinels during a failover (default 100 ms).
    pub fn rediscover_interval(mut self, interval: Duration) -> Self {
        self.config.rediscover_interval = interval;
        self
    }

    /// Serve `get` / `get_many` from a replica (default off); reads may then be stale (see
    /// [`SentinelConfig::replica_reads`]).
    pub fn replica_reads(mut self, on: bool) -> Self {
        self.config.replica_reads = on;
        self
    }

    /// Validate and return the config.
    pub fn build(self) -> Result<SentinelConfig> {
        self.config.validate()?;
        Ok(self.config)
    }
}

/// One sentinel to ask.
struct Node {
    client: redis::Client,
    endpoint: String,
}

/// The master in use.
struct Current {
    store: RedisStore,
    generation: u64,
}

/// The sentinels and how to ask them.
struct Sentinels {
    config: SentinelConfig,
    nodes: Vec<Node>,
    /// For errors about the sentinels (their passwords scrubbed).
    ctx: ErrorContext,
    lookups: AtomicU64,
}

struct Shared {
    sentinels: Sentinels,
    current: RwLock<Arc<Current>>,
    /// The generation of the master in use; bumped at every switch.
    switches: watch::Sender<u64>,
    following: AtomicBool,
    /// The replica reads go to (replica reads on, and one found).
    replica: RwLock<Option<RedisStore>>,
    /// A replica search is under way.
    searching: AtomicBool,
    /// When the last replica search started.
    last_search: Mutex<Option<Instant>>,
}

/// Replica searches start at most this often while none is usable.
const REPLICA_SEARCH_EVERY: Duration = Duration::from_secs(1);

/// The L2 over a sentinel-monitored master: a [`RedisStore`] on the current master that
/// follows failovers (see the module docs). Cloning is cheap and shares the connection.
///
/// Errors are the standalone store's, plus [`ErrorKind::Connection`] from
/// [`SentinelStore::connect`] when no sentinel names a usable master.
///
/// ```no_run
/// use std::time::Duration;
/// use cache_core::RemoteStore;
/// use cache_redis::{SentinelConfig, SentinelStore};
///
/// # async fn demo() -> cache_core::Result<()> {
/// let config = SentinelConfig::builder()
///     .sentinels(["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"])
///     .master_name("cache")
///     .build()?;
/// let store = SentinelStore::connect(config).await?;
/// store.set("app:k", b"v".to_vec(), Duration::from_secs(30)).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SentinelStore {
    shared: Arc<Shared>,
}

impl fmt::Debug for SentinelStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.shared.current();
        f.debug_struct("SentinelStore")
            .field("sentinels", &self.shared.sentinels.ctx.endpoint)
            .field("master_name", &self.shared.sentinels.config.master_name)
            .field("master", &current.store.endpoint())
            .field("switches", &current.generation)
            .finish()
    }
}

impl SentinelStore {
    /// Validate the config, ask the sentinels for the master, connect to it (eagerly, as
    /// [`RedisStore::connect`]) and check that it is a master (`ROLE`).
    ///
    /// Errors: [`ErrorKind::InvalidUrl`] / [`ErrorKind::InvalidConfig`] (see
    /// [`SentinelConfig::validate`]); [`ErrorKind::Connection`] when no sentinel answers or
    /// none names a usable master (the message says what each answered); the errors of
    /// [`RedisStore::connect`] for the master itself.
    pub async fn connect(config: SentinelConfig) -> Result<SentinelStore> {
        let targets = config.sentinel_targets()?;
        #[cfg(feature = "tls")]
        if targets.iter().any(|t| t.tls) {
            // As in RedisStore::connect: our rustls provider is `ring`.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut secrets: Vec<String> = targets.iter().flat_map(|t| t.secrets.clone()).collect();
        secrets.extend(config.redis.resolve()?.secrets);
        let endpoints: Vec<&str> = targets.iter().map(|t| t.endpoint.as_str()).collect();
        let first = &targets[0];
        let ctx = ErrorContext::new(
            format!(
                "sentinels {} (master `{}`)",
                endpoints.join(","),
                config.master_name
            ),
            first.user.clone(),
            first.has_password,
            secrets,
        );
        let mut nodes = Vec::with_capacity(targets.len());
        for target in targets {
            nodes.push(Node {
                client: redis::Client::open(target.info.clone())
                    .map_err(|e| ctx.map("connect", &e))?,
                endpoint: target.endpoint,
            });
        }
        let sentinels = Sentinels {
            config,
            nodes,
            ctx,
            lookups: AtomicU64::new(0),
        };
        let (host, port) = sentinels.find_master().await?;
        let store = sentinels.connect_master(&host, port).await?;
        tracing::info!(
            master = %store.endpoint(),
            master_name = %sentinels.config.master_name,
            "connected to the Redis master named by the sentinels"
        );
        let (switches, _) = watch::channel(0);
        let replica_reads = sentinels.config.replica_reads;
        let store = SentinelStore {
            shared: Arc::new(Shared {
                sentinels,
                current: RwLock::new(Arc::new(Current {
                    store,
                    generation: 0,
                })),
                switches,
                following: AtomicBool::new(false),
                replica: RwLock::new(None),
                searching: AtomicBool::new(true),
                last_search: Mutex::new(Some(Instant::now())),
            }),
        };
        if replica_reads {
            // Not finding one is no error: reads go to the master until one is found.
            search_replica(Arc::downgrade(&store.shared)).await;
        } else {
            store.shared.searching.store(false, Ordering::Release);
        }
        Ok(store)
    }

    /// `host:port` of the replica reads go to (replica reads on and a usable replica found).
    pub fn replica(&self) -> Option<String> {
        self.shared.replica().map(|r| r.endpoint().to_owned())
    }

    /// Run the read `f` on the replica in use (replica reads on), falling back to the master
    /// when there is none or it fails in a way a lost or syncing replica explains (and looking
    /// for another one in the background).
    async fn read<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(RedisStore) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        if !self.shared.sentinels.config.replica_reads {
            return self.call(f).await;
        }
        let Some(replica) = self.shared.replica() else {
            start_replica_search(&self.shared);
            return self.call(f).await;
        };
        match f(replica.clone()).await {
            Err(e) if replica_unusable(&e) => {
                tracing::warn!(replica = %replica.endpoint(), error = %e, "replica read failed; reading from the master and looking for a usable replica");
                self.shared.drop_replica(&replica);
                start_replica_search(&self.shared);
                self.call(f).await
            }
            other => other,
        }
    }

    /// The config this store was connected with.
    pub fn config(&self) -> &SentinelConfig {
        &self.shared.sentinels.config
    }

    /// `host:port` of the master in use.
    pub fn master(&self) -> String {
        self.shared.current().store.endpoint().to_owned()
    }

    /// The standalone store on the master in use (it is replaced at a failover).
    pub fn current(&self) -> RedisStore {
        self.shared.current().store.clone()
    }

    /// How many times this store switched to a new master.
    pub fn switches(&self) -> u64 {
        self.shared.current().generation
    }

    /// How many times the sentinels were asked for the master (connecting included).
    pub fn sentinel_lookups(&self) -> u64 {
        self.shared.sentinels.lookups.load(Ordering::Relaxed)
    }

    /// Run `f` on the current master's store; an error a failover explains starts following
    /// the sentinels (in the background).
    async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce(RedisStore) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let current = self.shared.current();
        let result = f(current.store.clone()).await;
        if let Err(e) = &result {
            if failover_explains(e) {
                follow(&self.shared, current.generation);
            }
        }
        result
    }
}

/// Whether a replica read failed in a way another replica (or the master) may not: the
/// replica gone or silent, refusing (credentials), syncing (`LOADING`), or without its
/// master and told not to serve stale data (`MASTERDOWN`).
fn replica_unusable(e: &Error) -> bool {
    failover_explains(e)
        || e.kind() == ErrorKind::Auth
        || (e.kind() == ErrorKind::Remote
            && (e.message().contains("LOADING") || e.message().contains("MASTERDOWN")))
}

/// Look for a usable replica in the background, unless a search is under way or the last
/// one started less than [`REPLICA_SEARCH_EVERY`] ago.
fn start_replica_search(shared: &Arc<Shared>) {
    {
        let mut last = lock(&shared.last_search);
        if last.is_some_and(|t| t.elapsed() < REPLICA_SEARCH_EVERY)
            || shared.searching.swap(true, Ordering::AcqRel)
        {
            return;
        }
        *last = Some(Instant::now());
    }
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        shared.searching.store(false, Ordering::Release);
        return;
    };
    handle.spawn(search_replica(Arc::downgrade(shared)));
}

/// Ask the sentinels for the replicas of the master in use and connect to the first usable
/// one (its link to the master up, answering `ROLE` as a replica); `searching` is cleared at
/// the end.
async fn search_replica(shared: Weak<Shared>) {
    let Some(s) = shared.upgrade() else {
        return;
    };
    let generation = s.current().generation;
    let master = s.current().store.endpoint().to_owned();
    let found = match s.sentinels.find_replicas().await {
        Ok(candidates) => {
            let mut found = None;
            for (host, port) in candidates {
                if endpoint(&host, port) == master {
                    continue;
                }
                match s.sentinels.connect_replica(&host, port).await {
                    Ok(store) => {
                        found = Some(store);
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(replica = %endpoint(&host, port), error = %e, "replica not usable")
                    }
                }
            }
            found
        }
        Err(e) => {
            tracing::debug!(error = %e, "the sentinels named no usable replica");
            None
        }
    };
    match found {
        // A switch of master meanwhile makes the answer stale: the next read searches again.
        Some(store) if s.current().generation == generation => {
            tracing::info!(replica = %store.endpoint(), master = %master, "replica reads go to this replica");
            *s.replica.write().unwrap_or_else(|p| p.into_inner()) = Some(store);
        }
        Some(_) => {}
        None => {
            tracing::warn!(master = %master, "replica reads: no usable replica; reading from the master")
        }
    }
    s.searching.store(false, Ordering::Release);
}

/// Whether `e` is what a failover looks like from a client: the master gone (connection
/// refused or reset), silent (timeout), or demoted (`READONLY`).
fn failover_explains(e: &Error) -> bool {
    match e.kind() {
        ErrorKind::Connection | ErrorKind::Timeout => true,
        ErrorKind::Remote => e.message().contains("READONLY"),
        _ => false,
    }
}

/// Start following the sentinels unless that is under way or the master changed since
/// `generation` was in use.
fn follow(shared: &Arc<Shared>, generation: u64) {
    if shared.current().generation != generation || shared.following.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        shared.following.store(false, Ordering::Release);
        return;
    };
    handle.spawn(follow_loop(Arc::downgrade(shared), generation));
}

/// Ask the sentinels until they name a new master that answers as one (switch to it), or the
/// master in use answers again (nothing to do). Ends when the store is dropped.
async fn follow_loop(shared: Weak<Shared>, generation: u64) {
    let started = Instant::now();
    loop {
        let Some(s) = shared.upgrade() else {
            return;
        };
        let current = s.current();
        if current.generation != generation {
            break;
        }
        match s.sentinels.find_master().await {
            Ok((host, port)) if endpoint(&host, port) != current.store.endpoint() => {
                match s.sentinels.connect_master(&host, port).await {
                    Ok(store) => {
                        s.switch(store, started.elapsed());
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(master = %endpoint(&host, port), error = %e, "cannot connect to the new master yet; retrying")
                    }
                }
            }
            Ok(_) => {
                if current.store.ping().await.is_ok() {
                    tracing::debug!(master = %current.store.endpoint(), "the sentinels still name the master in use, and it answers");
                    break;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "no usable master named by the sentinels yet")
            }
        }
        let interval = if started.elapsed() < SLOW_REDISCOVERY_AFTER {
            s.sentinels.config.rediscover_interval
        } else {
            s.sentinels
                .config
                .rediscover_interval
                .max(Duration::from_secs(1))
        };
        drop(s);
        tokio::time::sleep(interval).await;
    }
    if let Some(s) = shared.upgrade() {
        s.following.store(false, Ordering::Release);
    }
}

/// `host:port` as [`RedisStore::endpoint`] writes it.
fn endpoint(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl Shared {
    fn replica(&self) -> Option<RedisStore> {
        self.replica
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stop reading from `replica` (unless another one replaced it already).
    fn drop_replica(&self, replica: &RedisStore) {
        let mut current = self.replica.write().unwrap_or_else(|p| p.into_inner());
        if current
            .as_ref()
            .is_some_and(|r| r.endpoint() == replica.endpoint())
        {
            *current = None;
        }
    }

    fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn switch(&self, store: RedisStore, searched: Duration) {
        let generation = {
            let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
            let generation = current.generation + 1;
            tracing::warn!(
                from = %current.store.endpoint(),
                to = %store.endpoint(),
                master_name = %self.sentinels.config.master_name,
                searched_ms = searched.as_millis() as u64,
                "Redis Sentinel failover: following the new master"
            );
            *current = Arc::new(Current { store, generation });
            generation
        };
        // The replicas belong to the old master's group as the sentinels saw it: look again.
        *self.replica.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.switches.send_replace(generation);
    }
}

impl Sentinels {
    /// Ask every sentinel at once (`SENTINEL MASTER name`, each bounded by the connect and
    /// response timeouts) and take, among the answers that name a master not judged down,
    /// the one with the highest configuration epoch (a sentinel that missed the latest
    /// failover names the old master with an older epoch).
    async fn find_master(&self) -> Result<(String, u16)> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let connect_timeout = self.config.redis.connect_timeout;
        let response_timeout = self.config.redis.response_timeout;
        let name = self.config.master_name.as_str();
        let asks = self.nodes.iter().map(|node| async move {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(response_timeout));
            let ask = async {
                let mut conn = node
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                redis::cmd("SENTINEL")
                    .arg("MASTER")
                    .arg(name)
                    .query_async::<std::collections::HashMap<String, String>>(&mut conn)
                    .await
            };
            let limit = connect_timeout + response_timeout;
            let answer = match tokio::time::timeout(limit, ask).await {
                Ok(Ok(fields)) => judge(&fields),
                Ok(Err(e)) => Err(self.ctx.scrub(&e.to_string())),
                Err(_) => Err(format!("no answer within {limit:?}")),
            };
            (node.endpoint.as_str(), answer)
        });
        let answers = futures::future::join_all(asks).await;
        let best = answers
            .iter()
            .filter_map(|(_, a)| a.as_ref().ok())
            .max_by_key(|(epoch, _, _)| *epoch);
        if let Some((_, host, port)) = best {
            return Ok((host.clone(), *port));
        }
        let why: Vec<String> = answers
            .iter()
            .map(|(ep, a)| match a {
                Ok(_) => format!("{ep}: ok"),
                Err(e) => format!("{ep}: {e}"),
            })
            .collect();
        Err(Error::new(
            ErrorKind::Connection,
            format!(
                "no sentinel names a usable master `{name}` ({})",
                why.join("; ")
            ),
        ))
    }

    /// Ask every sentinel at once `SENTINEL REPLICAS name` and return the replicas that at
    /// least one of them judges usable (not down, link to the master up), each once.
    async fn find_replicas(&self) -> Result<Vec<(String, u16)>> {
        let connect_timeout = self.config.redis.connect_timeout;
        let response_timeout = self.config.redis.response_timeout;
        let name = self.config.master_name.as_str();
        let asks = self.nodes.iter().map(|node| async move {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(response_timeout));
            let ask = async {
                let mut conn = node
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                redis::cmd("SENTINEL")
                    .arg("REPLICAS")
                    .arg(name)
                    .query_async::<Vec<std::collections::HashMap<String, String>>>(&mut conn)
                    .await
            };
            tokio::time::timeout(connect_timeout + response_timeout, ask).await
        });
        let mut out: Vec<(String, u16)> = Vec::new();
        let mut answered = false;
        for answer in futures::future::join_all(asks).await {
            let Ok(Ok(replicas)) = answer else {
                continue;
            };
            answered = true;
            for fields in &replicas {
                if let Ok(addr) = judge_replica(fields) {
                    if !out.contains(&addr) {
                        out.push(addr);
                    }
                }
            }
        }
        if !answered {
            return Err(Error::new(
                ErrorKind::Connection,
                format!("no sentinel answered SENTINEL REPLICAS {name}"),
            ));
        }
        Ok(out)
    }

    /// Connect to the replica at `host:port` (the data connection settings) and check that it
    /// says it is a replica.
    async fn connect_replica(&self, host: &str, port: u16) -> Result<RedisStore> {
        let store = RedisStore::connect(self.config.master_config(host, port)?).await?;
        let mut conn = store.connection();
        let limit = self.config.redis.response_timeout;
        let role = tokio::time::timeout(limit, redis::cmd("ROLE").query_async::<Value>(&mut conn))
            .await
            .map_err(|_| {
                store
                    .error_context()
                    .elapsed("ROLE", limit, "response_timeout")
            })?
            .map_err(|e| store.error_context().map("ROLE", &e))?;
        if role_is(&role, "slave") {
            return Ok(store);
        }
        Err(Error::new(
            ErrorKind::Connection,
            format!(
                "the sentinels list {} as a replica of `{}`, but it is not one",
                store.endpoint(),
                self.config.master_name
            ),
        ))
    }

    /// Connect to the master at `host:port` and check that it says it is one.
    async fn connect_master(&self, host: &str, port: u16) -> Result<RedisStore> {
        let store = RedisStore::connect(self.config.master_config(host, port)?).await?;
        let mut conn = store.connection();
        let limit = self.config.redis.response_timeout;
        let role = tokio::time::timeout(limit, redis::cmd("ROLE").query_async::<Value>(&mut conn))
            .await
            .map_err(|_| {
                store
                    .error_context()
                    .elapsed("ROLE", limit, "response_timeout")
            })?
            .map_err(|e| store.error_context().map("ROLE", &e))?;
        if !role_is(&role, "master") {
            return Err(Error::new(
                ErrorKind::Connection,
                format!(
                    "the sentinels name {} as master `{}`, but it is not a master (yet)",
                    store.endpoint(),
                    self.config.master_name
                ),
            ));
        }
        Ok(store)
    }
}

/// Whether a `ROLE` answer names `role` (`master`, `slave`).
fn role_is(answer: &Value, role: &str) -> bool {
    match answer {
        Value::Array(items) => {
            matches!(items.first(), Some(Value::BulkString(b)) if b.as_slice() == role.as_bytes())
                || matches!(items.first(), Some(Value::SimpleString(s)) if s == role)
        }
        _ => false,
    }
}

/// A replica's `(ip, port)` from one entry of a `SENTINEL REPLICAS` answer, or why it is not
/// usable: it must be flagged a replica, not judged down or disconnected, with its link to
/// the master up.
fn judge_replica(
    fields: &std::collections::HashMap<String, String>,
) -> std::result::Result<(String, u16), String> {
    let flags = fields.get("flags").map(String::as_str).unwrap_or("");
    let flags: Vec<&str> = flags.split(',').collect();
    if !flags.contains(&"slave") {
        return Err(format!("flags {}", flags.join(",")));
    }
    if let Some(bad) = flags
        .iter()
        .find(|f| matches!(**f, "s_down" | "o_down" | "disconnected"))
    {
        return Err(format!("replica judged {bad}"));
    }
    if fields.get("master-link-status").map(String::as_str) != Some("ok") {
        return Err("its link to the master is down".to_owned());
    }
    let ip = fields.get("ip").cloned().ok_or("no ip in the answer")?;
    let port = fields
        .get("port")
        .and_then(|p| p.parse().ok())
        .ok_or("no port in the answer")?;
    Ok((ip, port))
}

/// The master's `(config-epoch, ip, port)` from one sentinel's `SENTINEL MASTER` answer, or
/// why it is not usable.
fn judge(
    fields: &std::collections::HashMap<String, String>,
) -> std::result::Result<(u64, String, u16), String> {
    let flags = fields.get("flags").map(String::as_str).unwrap_or("");
    let flags: Vec<&str> = flags.split(',').collect();
    if !flags.contains(&"master") {
        return Err(format!("flags {}", flags.join(",")));
    }
    // `disconnected` only says the sentinel's own link is not up (yet: it stays for about a
    // second after a switch); whether the node answers as a master is checked by ROLE.
    if let Some(down) = flags.iter().find(|f| matches!(**f, "s_down" | "o_down")) {
        return Err(format!("master judged {down}"));
    }
    let ip = fields.get("ip").cloned().ok_or("no ip in the answer")?;
    let port = fields
        .get("port")
        .and_then(|p| p.parse().ok())
        .ok_or("no port in the answer")?;
    let epoch = fields
        .get("config-epoch")
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    Ok((epoch, ip, port))
}

#[async_trait]
impl RemoteStore for SentinelStore {
    fn kind(&self) -> &'static str {
        "redis-sentinel"
    }

    fn max_value_size(&self) -> usize {
        self.shared.sentinels.config.redis.max_value_size
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.read(|s| async move { s.get(key).await }).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        self.read(|s| async move { s.get_many(keys).await }).await
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        self.call(|s| async move { s.set(key, value, ttl).await })
            .await
    }

    async fn set_many(&self, entries: Vec<RemoteEntry>) -> Result<()> {
        self.call(|s| async move { s.set_many(entries).await })
            .await
    }

    async fn delete(&self, keys: &[String]) -> Result<()> {
        self.call(|s| async move { s.delete(keys).await }).await
    }

    async fn set_after_delete(
        &self,
        first: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<()> {
        self.call(|s| async move { s.set_after_delete(first, key, value, ttl).await })
            .await
    }

    async fn set_nx(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<bool> {
        self.call(|s| async move { s.set_nx(key, value, ttl).await })
            .await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        self.call(|s| async move { s.delete_prefix(prefix).await })
            .await
    }

    async fn tag_add(&self, tag_key: &str, member: &str, ttl: Duration) -> Result<()> {
        self.call(|s| async move { s.tag_add(tag_key, member, ttl).await })
            .await
    }

    async fn tag_take(&self, tag_key: &str, pending_key: &str) -> Result<Vec<String>> {
        self.call(|s| async move { s.tag_take(tag_key, pending_key).await })
            .await
    }

    async fn tag_done(&self, pending_key: &str, members: &[String]) -> Result<()> {
        self.call(|s| async move { s.tag_done(pending_key, members).await })
            .await
    }

    async fn set_if_lease(
        &self,
        lease_key: &str,
        token: &[u8],
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool> {
        self.call(|s| async move { s.set_if_lease(lease_key, token, key, value, ttl).await })
            .await
    }

    async fn set_nx_many(&self, keys: &[String], value: &[u8], ttl: Duration) -> Result<Vec<bool>> {
        self.call(|s| async move { s.set_nx_many(keys, value, ttl).await })
            .await
    }

    async fn set_if_lease_many(&self, fills: Vec<LeaseFill>) -> Result<Vec<bool>> {
        self.call(|s| async move { s.set_if_lease_many(fills).await })
            .await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The channels and the bus on the master in use.
#[derive(Default)]
struct BusState {
    channels: Vec<String>,
    inner: Option<Arc<RedisBus>>,
}

/// Invalidation bus over the pub/sub of the current master (a [`RedisBus`] on it). When the
/// master changes, or its subscription breaks, the loss is reported (the engine flushes L1),
/// the sentinels are asked for the master, and a new subscription with every channel starts
/// on it (reported as `Connected`: the engine flushes once more).
pub struct SentinelBus {
    store: SentinelStore,
    state: Arc<Mutex<BusState>>,
}

impl fmt::Debug for SentinelBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelBus")
            .field("store", &self.store)
            .field("channels", &lock(&self.state).channels.len())
            .finish()
    }
}

impl SentinelBus {
    /// A bus on the master `store` uses, following its switches.
    pub fn new(store: &SentinelStore) -> SentinelBus {
        SentinelBus {
            store: store.clone(),
            state: Arc::default(),
        }
    }
}

#[async_trait]
impl BusTransport for SentinelBus {
    fn kind(&self) -> &'static str {
        "redis-sentinel-pubsub"
    }

    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<()> {
        self.store
            .call(|s| async move { RedisBus::new(&s).publish(channel, payload).await })
            .await
    }

    fn start(&self, events: mpsc::UnboundedSender<BusEvent>) -> Result<JoinHandle<()>> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::new(
                ErrorKind::InvalidConfig,
                "the Redis bus runs on tokio: start it inside a runtime",
            )
        })?;
        Ok(handle.spawn(bus_loop(self.store.clone(), self.state.clone(), events)))
    }

    fn subscribe(&self, channel: &str) {
        let mut state = lock(&self.state);
        if state.channels.iter().any(|c| c == channel) {
            return;
        }
        state.channels.push(channel.to_owned());
        if let Some(inner) = &state.inner {
            inner.subscribe(channel);
        }
    }
}

/// Why one subscription on one master ended.
enum Ended {
    /// The master changed, or the inner bus ended: start again on the master in use.
    Again,
    /// The engine is gone.
    Stopped,
}

/// A [`RedisBus`] on the master in use, forwarding its events; started again on each switch.
async fn bus_loop(
    store: SentinelStore,
    state: Arc<Mutex<BusState>>,
    events: mpsc::UnboundedSender<BusEvent>,
) {
    let mut switches = store.shared.switches.subscribe();
    loop {
        switches.borrow_and_update();
        let current = store.shared.current();
        let bus = Arc::new(RedisBus::new(&current.store));
        {
            let mut state = lock(&state);
            for channel in &state.channels {
                bus.subscribe(channel);
            }
            state.inner = Some(bus.clone());
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let Ok(task) = bus.start(tx) else {
            return;
        };
        let interval = store.shared.sentinels.config.rediscover_interval;
        let mut suspect =
            tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        suspect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut connected = false;
        let ended = loop {
            tokio::select! {
                event = rx.recv() => match event {
                    Some(event) => {
                        match &event {
                            BusEvent::Connected => connected = true,
                            BusEvent::Disconnected => {
                                connected = false;
                                follow(&store.shared, current.generation);
                            }
                            _ => {}
                        }
                        if events.send(event).is_err() {
                            break Ended::Stopped;
                        }
                    }
                    None => break Ended::Again,
                },
                changed = switches.changed() => match changed {
                    Ok(()) => break Ended::Again,
                    Err(_) => break Ended::Stopped,
                },
                // While the subscription is down, keep asking whether the master moved.
                _ = suspect.tick(), if !connected => follow(&store.shared, current.generation),
                () = events.closed() => break Ended::Stopped,
            }
        };
        task.abort();
        lock(&state).inner = None;
        match ended {
            Ended::Stopped => return,
            Ended::Again => {
                // Messages sent to the old master after we last heard from it are lost.
                if connected && events.send(BusEvent::Disconnected).is_err() {
                    return;
                }
                tracing::info!(master = %store.master(), "invalidation bus moving to the master in use");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn only_a_master_not_judged_down_is_usable() {
        let ok = fields(&[
            ("flags", "master"),
            ("ip", "127.0.0.1"),
            ("port", "6380"),
            ("config-epoch", "3"),
        ]);
        assert_eq!(judge(&ok), Ok((3, "127.0.0.1".to_owned(), 6380)));
        for flags in [
            "master,s_down",
            "master,s_down,o_down",
            "slave",
            "s_down,master",
        ] {
            let mut f = ok.clone();
            f.insert("flags".to_owned(), flags.to_owned());
            assert!(judge(&f).is_err(), "{flags}");
        }
        let mut f = ok.clone();
        f.remove("port");
        assert!(judge(&f).is_err());
    }

    #[test]
    fn only_a_synced_replica_that_is_up_is_usable() {
        let ok = fields(&[
            ("flags", "slave"),
            ("ip", "127.0.0.1"),
            ("port", "6381"),
            ("master-link-status", "ok"),
        ]);
        assert_eq!(judge_replica(&ok), Ok(("127.0.0.1".to_owned(), 6381)));
        for (field, value) in [
            ("flags", "slave,s_down"),
            ("flags", "slave,disconnected"),
            ("flags", "master"),
            ("master-link-status", "err"),
        ] {
            let mut f = ok.clone();
            f.insert(field.to_owned(), value.to_owned());
            assert!(judge_replica(&f).is_err(), "{field}={value}");
        }
        assert!(replica_unusable(&Error::new(
            ErrorKind::Remote,
            "Redis at h:1 answered GET with an error: LOADING Redis is loading"
        )));
        assert!(!replica_unusable(&Error::new(
            ErrorKind::Remote,
            "WRONGTYPE"
        )));
    }

    #[test]
    fn validation_says_what_is_wrong() {
        let kind = |c: SentinelConfig| c.validate().err().map(|e| e.kind());
        assert_eq!(
            kind(SentinelConfig::default()),
            Some(ErrorKind::InvalidConfig)
        );
        assert_eq!(
            kind(SentinelConfig::new(["redis://s1"], " ")),
            Some(ErrorKind::InvalidConfig)
        );
        assert_eq!(
            kind(SentinelConfig::new(["http://s1"], "m")),
            Some(ErrorKind::InvalidUrl)
        );
        assert_eq!(
            kind(SentinelConfig::new(["redis://s1/2"], "m")),
            Some(ErrorKind::InvalidConfig)
        );
        let mut unix = SentinelConfig::new(["redis://s1"], "m");
        unix.redis = RedisConfig::from_url("unix:///tmp/r.sock");
        assert_eq!(kind(unix), Some(ErrorKind::InvalidConfig));
        assert_eq!(
            kind(SentinelConfig::new(["redis://s1", "redis://s2:1"], "m")),
            None
        );
    }

    #[test]
    fn sentinel_urls_default_to_port_26379() {
        assert_eq!(with_default_port("redis://s1"), "redis://s1:26379");
        assert_eq!(with_default_port("redis://s1:7000/"), "redis://s1:7000/");
        assert_eq!(with_default_port("nonsense"), "nonsense");
    }

    #[test]
    fn the_master_replaces_host_and_port_only() -> Result<()> {
        let mut c = SentinelConfig::new(["redis://s1"], "m");
        c.redis = RedisConfig::builder()
            .url("redis://app:pw@placeholder:1/3")
            .build()?;
        assert_eq!(
            c.master_config("10.0.0.7", 6380)?.url,
            "redis://app:pw@10.0.0.7:6380/3"
        );
        assert_eq!(
            c.master_config("::1", 6380)?.url,
            "redis://app:pw@[::1]:6380/3"
        );
        Ok(())
    }

    #[test]
    fn debug_hides_every_password() -> Result<()> {
        let c = SentinelConfig::builder()
            .sentinels(["redis://:url-secret@s1:26379"])
            .sentinel_credentials(None, "field-secret")
            .redis(RedisConfig::builder().password("data-secret").build()?)
            .build()?;
        let shown = format!(
            "{c:?} {:?}",
            SentinelConfig::builder().sentinel_credentials(None, "x-secret")
        );
        for secret in ["url-secret", "field-secret", "data-secret", "x-secret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        Ok(())
    }

    #[test]
    fn failovers_explain_connection_losses_timeouts_and_readonly() {
        assert!(failover_explains(&Error::new(ErrorKind::Connection, "x")));
        assert!(failover_explains(&Error::new(ErrorKind::Timeout, "x")));
        assert!(failover_explains(&Error::new(
            ErrorKind::Remote,
            "Redis at h:1 answered SET with an error: READONLY: You can't write against a read only replica."
        )));
        assert!(!failover_explains(&Error::new(
            ErrorKind::Remote,
            "WRONGTYPE"
        )));
        assert!(!failover_explains(&Error::new(ErrorKind::Auth, "x")));
    }
}
