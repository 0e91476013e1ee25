//! [`SentinelStore`]: a [`RedisStore`] on the master the sentinels name, following failovers
//! (asking the sentinels again in the background after an error a failover explains) and,
//! with replica reads on, reading from a replica.

use cache_core::Capabilities;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cache_core::{Error, ErrorKind, LeaseFill, LeaseRead, RemoteEntry, RemoteStore, Result};
use tokio::sync::watch;

use super::discovery::Sentinels;
use super::{lock, SentinelConfig};
use crate::RedisStore;

/// After this long without finding a usable master, the sentinels are asked at most once a
/// second.
const SLOW_REDISCOVERY_AFTER: Duration = Duration::from_secs(30);

/// The master in use.
pub(super) struct Current {
    pub(super) store: RedisStore,
    pub(super) generation: u64,
}

pub(super) struct Shared {
    pub(super) sentinels: Sentinels,
    current: RwLock<Arc<Current>>,
    /// The generation of the master in use; bumped at every switch.
    pub(super) switches: watch::Sender<u64>,
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
///     .with_sentinels(["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"])
///     .with_master_name("cache")
///     .build()?;
/// let store = SentinelStore::connect(config).await?;
/// store.set("app:k", b"v".to_vec(), Duration::from_secs(30)).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SentinelStore {
    pub(super) shared: Arc<Shared>,
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
        let sentinels = Sentinels::new(config)?;
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
    pub(super) async fn call<T, F, Fut>(&self, f: F) -> Result<T>
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
pub(super) fn follow(shared: &Arc<Shared>, generation: u64) {
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

    pub(super) fn current(&self) -> Arc<Current> {
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

#[async_trait]
impl RemoteStore for SentinelStore {
    fn kind(&self) -> &'static str {
        "redis-sentinel"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
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

    /// On the master (it may take the lease), whatever the replica reads setting.
    async fn get_or_lease(
        &self,
        key: &str,
        lease_key: &str,
        token: &[u8],
        ttl: Duration,
    ) -> Result<LeaseRead> {
        self.call(|s| async move { s.get_or_lease(key, lease_key, token, ttl).await })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loading_or_refusing_replica_is_unusable_a_wrong_type_is_not() {
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
