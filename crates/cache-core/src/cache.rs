//! The typed cache: one namespace, one value type, one codec.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::bus::BusTarget;
use crate::codec::Codec;
use crate::engine::Engine;
use crate::error::{Error, ErrorKind, Result};
use crate::header::Header;
use crate::key::lease_key;
use crate::key::KeySpace;
use crate::l1::{L1Entry, NamespaceId};
use crate::namespace::{Flight, NsState, Shared};
use crate::observer::{CacheEvent, CacheObserver, L2Op};
use crate::options::{check_ttls, CallOptions, LoadContext, Loaded, Outcome, DEFAULT_OPTIONS};
use crate::policy::{NoRefresh, RefreshPolicy};
use crate::recovery::Replay;
use crate::remote::{check_value_size, LeaseFill, RemoteEntry};

mod reload;

/// Bytes charged per L1 entry on top of its encoded size (key, bookkeeping, allocator).
pub const L1_ENTRY_OVERHEAD: u32 = 96;

/// Settings of one typed cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct CacheConfig {
    /// How long a value is served from L1 (default 30 s). Must not exceed `l2_ttl`.
    #[serde(with = "duration_ms")]
    pub l1_ttl: Duration,
    /// How long a value lives in L2 (default 10 min).
    #[serde(with = "duration_ms")]
    pub l2_ttl: Duration,
    /// How long "the source has no such key" is remembered (default 30 s; L1 uses the
    /// smaller of this and `l1_ttl`).
    #[serde(with = "duration_ms")]
    pub negative_ttl: Duration,
    /// TTL jitter as a fraction: each TTL is shortened by a random amount up to this share,
    /// so keys written together do not expire together (default 0.1; 0 disables).
    pub jitter: f64,
    /// Schema version put into every key (`{prefix}:{ns}:v{n}:{key}`); bump it when the value
    /// type changes incompatibly.
    pub schema_version: Option<u32>,
    /// Compress payloads of at least this many bytes with lz4 (needs the `lz4` feature).
    pub compress_above: Option<usize>,
    /// Raw mode: L2 holds the bare codec payload, no header, for clients in other languages.
    /// Negative entries are then kept in L1 only.
    pub raw: bool,
    /// Longest accepted user key in bytes (default 1024).
    pub max_key_len: usize,
    /// Fill leases across processes (default on): on a full miss the first instance takes a
    /// short lease in L2 and loads; the others wait up to `lease_wait` for its value. The
    /// fill is a compare-and-set refused when the lease was removed by `set`/`invalidate`
    /// meanwhile, so a slow load never writes an old value back.
    pub leases: bool,
    /// How long a lease lives if its holder dies (default 5 s).
    #[serde(with = "duration_ms")]
    pub lease_ttl: Duration,
    /// How long an instance waits for another instance's load before loading itself
    /// (default 2 s).
    #[serde(with = "duration_ms")]
    pub lease_wait: Duration,
    /// Fail-safe (default off): when the loader fails (or passes its hard timeout) and a
    /// value that expired less than `max_stale` ago is at hand, serve it (counted as stale)
    /// and retry the load only after `fail_safe_backoff`. Off by default because serving an
    /// expired value is a decision about your data that the cache should not make for you.
    pub fail_safe: bool,
    /// How long past its expiry a value may still be served by fail-safe (default 1 h).
    /// Values are kept that much longer in both tiers.
    #[serde(with = "duration_ms")]
    pub max_stale: Duration,
    /// After serving a stale value, how long before the loader is tried again (default 10 s).
    #[serde(with = "duration_ms")]
    pub fail_safe_backoff: Duration,
    /// Soft loader timeout: with a stale value at hand, a load slower than this returns the
    /// stale value to its callers now and keeps running to refresh the cache (default none).
    #[serde(with = "duration_ms_opt")]
    pub loader_soft_timeout: Option<Duration>,
    /// Hard loader timeout: a load slower than this fails with [`ErrorKind::Timeout`] (or,
    /// with fail-safe, serves the stale value) (default none).
    #[serde(with = "duration_ms_opt")]
    pub loader_hard_timeout: Option<Duration>,
    /// Put raw keys into tracing spans (default off: keys can hold personal data; spans carry
    /// a hash of the key instead).
    pub trace_raw_keys: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            l1_ttl: Duration::from_secs(30),
            l2_ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(30),
            jitter: 0.1,
            schema_version: None,
            compress_above: None,
            raw: false,
            max_key_len: crate::key::DEFAULT_MAX_KEY_LEN,
            leases: true,
            lease_ttl: Duration::from_secs(5),
            lease_wait: Duration::from_secs(2),
            fail_safe: false,
            max_stale: Duration::from_secs(3600),
            fail_safe_backoff: Duration::from_secs(10),
            loader_soft_timeout: None,
            loader_hard_timeout: None,
            trace_raw_keys: false,
        }
    }
}

impl CacheConfig {
    /// Check the settings for contradictions.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::new(ErrorKind::InvalidConfig, m));
        if self.l1_ttl.is_zero() || self.l2_ttl.is_zero() {
            return bad("l1_ttl and l2_ttl must be positive".into());
        }
        if self.l1_ttl > self.l2_ttl {
            return bad(format!(
                "l1_ttl ({:?}) must not exceed l2_ttl ({:?})",
                self.l1_ttl, self.l2_ttl
            ));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return bad(format!("jitter must be in [0, 1), got {}", self.jitter));
        }
        if self.leases && (self.lease_ttl.is_zero() || self.lease_wait.is_zero()) {
            return bad("lease_ttl and lease_wait must be positive".into());
        }
        if let (Some(soft), Some(hard)) = (self.loader_soft_timeout, self.loader_hard_timeout) {
            if soft >= hard {
                return bad(format!(
                    "loader_soft_timeout ({soft:?}) must be shorter than loader_hard_timeout ({hard:?})"
                ));
            }
        }
        if self.fail_safe && self.fail_safe_backoff.is_zero() {
            return bad("fail_safe_backoff must be positive".into());
        }
        if self.max_key_len == 0 {
            return bad("max_key_len must be positive".into());
        }
        #[cfg(not(feature = "lz4"))]
        if self.compress_above.is_some() {
            return bad("compress_above needs the `lz4` feature".into());
        }
        Ok(())
    }
}

pub(crate) mod duration_ms_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

pub(crate) mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// Builds a [`Cache`]; get one from [`Engine::cache`].
pub struct CacheBuilder<V, C> {
    engine: Engine,
    namespace: String,
    config: CacheConfig,
    policy: Arc<dyn RefreshPolicy>,
    _types: PhantomData<fn() -> (V, C)>,
}

impl<V, C> fmt::Debug for CacheBuilder<V, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("namespace", &self.namespace)
            .field("config", &self.config)
            .finish()
    }
}

impl<V, C> CacheBuilder<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    pub(crate) fn new(engine: Engine, namespace: String, config: CacheConfig) -> Self {
        CacheBuilder {
            engine,
            namespace,
            config,
            policy: Arc::new(NoRefresh),
            _types: PhantomData,
        }
    }

    /// Replace all settings at once (e.g. deserialized from a config file).
    pub fn with_config(mut self, config: CacheConfig) -> Self {
        self.config = config;
        self
    }

    /// How long values are served from L1.
    pub fn with_l1_ttl(mut self, ttl: Duration) -> Self {
        self.config.l1_ttl = ttl;
        self
    }

    /// How long values live in L2.
    pub fn with_l2_ttl(mut self, ttl: Duration) -> Self {
        self.config.l2_ttl = ttl;
        self
    }

    /// How long negative answers are remembered.
    pub fn with_negative_ttl(mut self, ttl: Duration) -> Self {
        self.config.negative_ttl = ttl;
        self
    }

    /// TTL jitter fraction in `[0, 1)`; `0` disables it.
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.config.jitter = jitter;
        self
    }

    /// Schema version inside every key.
    pub fn with_schema_version(mut self, version: u32) -> Self {
        self.config.schema_version = Some(version);
        self
    }

    /// lz4-compress payloads of at least `bytes` bytes (feature `lz4`).
    pub fn with_compression_above(mut self, bytes: usize) -> Self {
        self.config.compress_above = Some(bytes);
        self
    }

    /// Raw mode (no header in L2).
    pub fn with_raw(mut self, raw: bool) -> Self {
        self.config.raw = raw;
        self
    }

    /// Longest accepted user key.
    pub fn with_max_key_len(mut self, max: usize) -> Self {
        self.config.max_key_len = max;
        self
    }

    /// Fill leases across processes on or off (see [`CacheConfig::leases`]).
    pub fn with_leases(mut self, on: bool) -> Self {
        self.config.leases = on;
        self
    }

    /// Lease lifetime and how long other instances wait for the lease holder's value.
    pub fn with_lease_timing(mut self, ttl: Duration, wait: Duration) -> Self {
        self.config.lease_ttl = ttl;
        self.config.lease_wait = wait;
        self
    }

    /// Fail-safe on: serve values up to `max_stale` past expiry when the loader fails, and
    /// retry the load after `backoff` (see [`CacheConfig::fail_safe`]).
    pub fn with_fail_safe(mut self, max_stale: Duration, backoff: Duration) -> Self {
        self.config.fail_safe = true;
        self.config.max_stale = max_stale;
        self.config.fail_safe_backoff = backoff;
        self
    }

    /// Soft and hard loader timeouts (see [`CacheConfig::loader_soft_timeout`]).
    pub fn with_loader_timeouts(mut self, soft: Option<Duration>, hard: Option<Duration>) -> Self {
        self.config.loader_soft_timeout = soft;
        self.config.loader_hard_timeout = hard;
        self
    }

    /// Record raw keys in tracing spans (default off: a hash of the key is recorded).
    pub fn with_raw_keys_in_traces(mut self, on: bool) -> Self {
        self.config.trace_raw_keys = on;
        self
    }

    /// Early refresh policy (default: none). `cache-xfetch` provides XFetch.
    pub fn with_refresh_policy(mut self, policy: Arc<dyn RefreshPolicy>) -> Self {
        self.policy = policy;
        self
    }

    /// Build the cache.
    pub fn build(self) -> Result<Cache<V, C>> {
        self.config.validate()?;
        let keys = KeySpace::new(
            &self.engine.inner.prefix,
            &self.namespace,
            self.config.schema_version,
        )?
        .with_max_key_len(self.config.max_key_len);
        let observer = self.engine.inner.observer.for_cache(&self.namespace);
        let state = self
            .engine
            .namespace_state::<V>(&self.namespace, observer.clone())?;
        state.joined(keys.base(), self.config.fail_safe);
        let channel = format!("{}__inv", keys.base());
        if let Some(bus) = &self.engine.inner.bus {
            let target: Arc<dyn BusTarget> = state.clone();
            bus.register(channel.clone(), Arc::downgrade(&target));
        }
        Ok(Cache {
            inner: Arc::new(CacheInner {
                channel,
                engine: self.engine,
                name: self.namespace,
                ns: state.ns,
                state,
                keys,
                config: self.config,
                observe: !observer.is_noop(),
                observer,
                stats: Counters::default(),
                policy: self.policy,
                _codec: PhantomData,
            }),
        }
        .with_reload())
    }
}

/// Counters of one typed cache (everything but L1 hits, which the L1 store and the observer
/// count, to keep the hit path free of shared writes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// L2 reads that returned a usable value.
    pub l2_hits: u64,
    /// L2 reads that found nothing (or a logically expired value).
    pub l2_misses: u64,
    /// L2 reads that found unreadable bytes (treated as misses, then overwritten).
    pub l2_corrupt: u64,
    /// Failed L2 operations (the cache carried on without L2).
    pub l2_errors: u64,
    /// Loader calls (a batch loader call counts once).
    pub loads: u64,
    /// Loader calls that failed.
    pub load_errors: u64,
    /// Callers that joined a load already in flight.
    pub coalesced: u64,
    /// Values not written to L2 because they exceeded its maximum size.
    pub oversize: u64,
    /// Loads that callers had to wait for (full misses). Early refreshes, which callers do
    /// not wait for, are not counted: under steady traffic with early refresh this stays 0.
    pub sync_loads: u64,
    /// Refreshes started before expiry by the refresh policy.
    pub early_refreshes: u64,
    /// Loads that waited for another instance's lease.
    pub lease_waits: u64,
    /// Fills refused because the key was set or invalidated during the load (stale sets
    /// prevented).
    pub stale_fills_refused: u64,
    /// Stale values served by fail-safe or a soft timeout.
    pub stale_served: u64,
    /// L2 writes and deletes queued for replay after an L2 failure.
    pub queued_for_recovery: u64,
}

#[derive(Default)]
struct Counters {
    l2_hits: AtomicU64,
    l2_misses: AtomicU64,
    l2_corrupt: AtomicU64,
    l2_errors: AtomicU64,
    loads: AtomicU64,
    load_errors: AtomicU64,
    coalesced: AtomicU64,
    oversize: AtomicU64,
    sync_loads: AtomicU64,
    early_refreshes: AtomicU64,
    lease_waits: AtomicU64,
    stale_fills_refused: AtomicU64,
    stale_served: AtomicU64,
    queued_for_recovery: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A typed cache over one namespace. Cheap to clone; clones share everything.
pub struct Cache<V, C> {
    inner: Arc<CacheInner<V, C>>,
}

impl<V, C> Clone for Cache<V, C> {
    fn clone(&self) -> Self {
        Cache {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<V, C> fmt::Debug for Cache<V, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &self.inner.name)
            .field("base", &self.inner.keys.base())
            .finish()
    }
}

struct CacheInner<V, C> {
    engine: Engine,
    /// The invalidation channel of this namespace (`{prefix}:{ns}:__inv`).
    channel: String,
    name: String,
    ns: NamespaceId,
    keys: KeySpace,
    config: CacheConfig,
    observer: Arc<dyn CacheObserver>,
    /// False when the observer is a no-op.
    observe: bool,
    stats: Counters,
    /// Shared with every other handle of this namespace: epochs, flush mark, loads in flight.
    state: Arc<NsState<V>>,
    policy: Arc<dyn RefreshPolicy>,
    _codec: PhantomData<fn() -> C>,
}

/// A future that is either answered already (an L1 hit, no allocation) or a boxed slow path.
enum Fast<'a, T> {
    Ready(Option<T>),
    Boxed(std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>),
}

impl<T: Unpin> Future for Fast<'_, T> {
    type Output = T;

    #[inline]
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<T> {
        match self.get_mut() {
            // Polled again after it answered: stays pending (never panics).
            Fast::Ready(value) => value
                .take()
                .map_or(std::task::Poll::Pending, std::task::Poll::Ready),
            Fast::Boxed(fut) => fut.as_mut().poll(cx),
        }
    }
}

/// What L1 said about a load.
enum Local<V, F> {
    /// Answered from L1 (or refused: an invalid key).
    Hit(Result<Option<Arc<V>>>),
    /// Not live in L1: the loader, and a stale value kept for fail-safe.
    Miss {
        loader: F,
        stale: Option<(Option<Arc<V>>, u64)>,
    },
}

/// What an L2 read found.
struct Found<V> {
    value: Option<Arc<V>>,
    /// Logically expired, kept for fail-safe: not a hit, only a fallback.
    stale: bool,
    /// Until when a stale value may be served.
    stale_until_ms: u64,
    /// Logical expiry recorded in the header (`None` in raw mode).
    l2_expires_at_ms: Option<u64>,
    delta_us: u32,
}

/// The refresh floor of [`Cache::refresh`]: no L2 value counts as newer, the loader runs.
const RELOAD: u64 = u64::MAX;

/// Whether two values at hand are the same one (the same allocation, or both absences).
fn same_value<V>(a: &Option<Option<Arc<V>>>, b: &Option<Option<Arc<V>>>) -> bool {
    match (a, b) {
        (Some(Some(a)), Some(Some(b))) => Arc::ptr_eq(a, b),
        (Some(None), Some(None)) => true,
        _ => false,
    }
}

/// Whether an L2 error means the server is not answering now (a timeout, a lost connection,
/// an open breaker): the next L2 call of the same load would most likely fail the same way.
fn unreachable(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Timeout | ErrorKind::Connection | ErrorKind::CircuitOpen
    )
}

/// How the loaded value may be written.
enum Fill {
    /// No lease in use: write plainly.
    Plain,
    /// We hold the lease: compare-and-set against it.
    Lease(String, Vec<u8>),
    /// Another instance holds the lease: write nothing.
    Skip,
    /// The lease could not be taken (L2 failing): fill L1 (if no write intervened), never
    /// L2 (an unconditional write could land after an invalidation).
    LocalOnly,
}

/// A value read from L2 and decoded.
struct Decoded<V> {
    value: Option<V>,
    expires_at_ms: u64,
    stale_until_ms: u64,
    stale: bool,
    l2_expires_at_ms: Option<u64>,
    delta_us: u32,
    weight: u32,
}

/// Why L2 bytes gave no value.
enum Unusable {
    Expired,
    Corrupt(Error),
}

impl<V, C> Cache<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// The namespace.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The engine this cache belongs to (its prefix, its remote store).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The settings.
    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// The full L2 key of a user key (validated).
    pub fn full_key(&self, key: &str) -> Result<String> {
        self.inner.keys.full(key)
    }

    /// Counters of this cache.
    pub fn stats(&self) -> CacheStats {
        let c = &self.inner.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            l2_hits: l(&c.l2_hits),
            l2_misses: l(&c.l2_misses),
            l2_corrupt: l(&c.l2_corrupt),
            l2_errors: l(&c.l2_errors),
            loads: l(&c.loads),
            load_errors: l(&c.load_errors),
            coalesced: l(&c.coalesced),
            oversize: l(&c.oversize),
            sync_loads: l(&c.sync_loads),
            early_refreshes: l(&c.early_refreshes),
            lease_waits: l(&c.lease_waits),
            stale_fills_refused: l(&c.stale_fills_refused),
            stale_served: l(&c.stale_served),
            queued_for_recovery: l(&c.queued_for_recovery),
        }
    }

    /// Report `event` to this cache's observer, as the engine does (companions such as
    /// write-behind report their own events, e.g. [`CacheEvent::WriteBehindDepth`]). Does
    /// nothing when the observer is a no-op.
    pub fn report(&self, event: CacheEvent) {
        self.inner.event(event);
    }

    /// Whether an observer listens to this cache (false for the no-op observer): a companion
    /// can skip the work of measuring what it would report.
    pub fn is_observed(&self) -> bool {
        self.inner.observe
    }

    /// How many keys of this namespace have a load in flight (every handle of the namespace
    /// in this engine counts). Zero once every load has finished.
    pub fn in_flight(&self) -> usize {
        self.inner.state.inflight_len()
    }

    /// The L1 answer alone: `Some(Some(v))` a live value, `Some(None)` a live negative entry,
    /// `None` nothing live. No network, no decoding, no allocation, never yields.
    #[inline]
    pub fn get_local(&self, key: &str) -> Option<Option<Arc<V>>> {
        let inner = &*self.inner;
        let now = inner.engine.inner.now_ms();
        match inner.engine.inner.l1.get(inner.ns, key, now) {
            Some(entry) if entry.expires_at_ms > now && inner.is_fresh(&entry) => {
                inner.downcast(entry)
            }
            _ => {
                inner.event(CacheEvent::L1Miss);
                None
            }
        }
    }

    /// Read through L1 then L2 (filling L1 on an L2 hit). `Ok(None)` when neither tier has
    /// the key (or holds a negative entry). L2 failures are counted and read as a miss.
    ///
    /// An L1 hit is answered when the future is made (it is ready at its first poll, and
    /// allocates nothing); only a miss builds the (boxed) L2 read.
    #[inline]
    pub fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> impl Future<Output = Result<Option<Arc<V>>>> + Send + 'a {
        // An invalid key is never in L1: it misses here and is refused by `get_remote`.
        match self.get_local(key) {
            Some(hit) => Fast::Ready(Some(Ok(hit))),
            None => Fast::Boxed(Box::pin(self.get_remote(key, true))),
        }
    }

    /// [`Cache::get`] with per-call options: `skip_l1_read` reads L2 even when L1 holds the
    /// key, `skip_l2_read` answers from L1 alone, `skip_l1_write` leaves L1 as it is after an
    /// L2 hit. Skipping both reads is an [`ErrorKind::InvalidConfig`] error.
    pub async fn get_with(&self, key: &str, options: &CallOptions) -> Result<Option<Arc<V>>> {
        options.check_read(&self.inner.config)?;
        crate::key::validate_key(key, self.inner.keys.max_key_len())?;
        if !options.skip_l1_read {
            if let Some(hit) = self.get_local(key) {
                return Ok(hit);
            }
        }
        if options.skip_l2_read {
            return Ok(None);
        }
        self.get_remote(key, !options.skip_l1_write).await
    }

    /// The L2 part of [`Cache::get`].
    async fn get_remote(&self, key: &str, fill_l1: bool) -> Result<Option<Arc<V>>> {
        crate::key::validate_key(key, self.inner.keys.max_key_len())?;
        let full = self.inner.keys.full(key)?;
        let epoch = self.inner.epoch(key);
        let span = self.inner.span(SpanKind::Get, key);
        use tracing::Instrument;
        Ok(self
            .inner
            .l2_read(key, &full, epoch, fill_l1)
            .instrument(span)
            .await
            .ok()
            .flatten()
            .and_then(|f| if f.stale { None } else { f.value }))
    }

    /// Read many keys: L1 first, then one L2 round trip for all L1 misses. The result is
    /// aligned with `keys`.
    pub async fn get_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Option<Arc<V>>>> {
        let mut out = Vec::with_capacity(keys.len());
        let mut missing: Vec<(usize, String)> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let k = k.as_ref();
            crate::key::validate_key(k, self.inner.keys.max_key_len())?;
            match self.get_local(k) {
                Some(hit) => out.push(hit),
                None => {
                    out.push(None);
                    missing.push((i, k.to_owned()));
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let found = self
            .inner
            .l2_read_many(missing.iter().map(|(_, k)| k.clone()).collect())
            .await
            // An L2 failure (already counted) leaves the misses as misses.
            .unwrap_or_default();
        for ((i, _), v) in missing.into_iter().zip(found) {
            out[i] = v.and_then(|f| if f.stale { None } else { f.value });
        }
        Ok(out)
    }

    /// Read through both tiers; on a full miss run `loader` once for all concurrent callers
    /// of this key in this process, store its value in L2 and L1, and return it.
    ///
    /// The load runs in its own task: dropping this future does not cancel it, and other
    /// callers waiting for it still get the value. A loader error reaches every waiter; a
    /// panicking loader becomes an [`ErrorKind::LoaderPanicked`] error. If the key is held as
    /// a negative entry, the result is an [`ErrorKind::NotFound`] error.
    ///
    /// An L1 hit is answered when the future is made (ready at its first poll, no
    /// allocation); only a miss builds the (boxed) rest of the read.
    pub fn get_or_load<'a, F, Fut, E>(
        &'a self,
        key: &'a str,
        loader: F,
    ) -> impl Future<Output = Result<Arc<V>>> + Send + 'a
    where
        F: FnOnce(String) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let present = |found: Option<Arc<V>>| {
            found.ok_or_else(|| {
                Error::new(ErrorKind::NotFound, "the source has no value for this key")
            })
        };
        let loader = move |ctx: LoadContext<V>| async move {
            loader(ctx.into_key()).await.map(Loaded::value)
        };
        match self.load_local(key, &DEFAULT_OPTIONS, loader) {
            Local::Hit(found) => Fast::Ready(Some(found.and_then(present))),
            Local::Miss { loader, stale } => Fast::Boxed(Box::pin(async move {
                self.load_remote(key, &DEFAULT_OPTIONS, loader, stale)
                    .await
                    .and_then(present)
            })),
        }
    }

    /// Like [`Cache::get_or_load`], for loaders that can answer "absent" (`Ok(None)`): the
    /// absence is cached for `negative_ttl` (negative caching).
    pub async fn get_or_load_optional<F, Fut, E>(
        &self,
        key: &str,
        loader: F,
    ) -> Result<Option<Arc<V>>>
    where
        F: FnOnce(String) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let loader = move |ctx: LoadContext<V>| async move {
            loader(ctx.into_key()).await.map(Loaded::from)
        };
        self.load_inner(key, &DEFAULT_OPTIONS, loader).await
    }

    /// Like [`Cache::get_or_load`] with a per-call L2 TTL (L1 uses the smaller of it and
    /// `l1_ttl`).
    pub async fn get_or_load_with_ttl<F, Fut, E>(
        &self,
        key: &str,
        ttl: Duration,
        loader: F,
    ) -> Result<Arc<V>>
    where
        F: FnOnce(String) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let options = CallOptions::new().with_l2_ttl(ttl);
        let loader = move |ctx: LoadContext<V>| async move {
            loader(ctx.into_key()).await.map(Loaded::value)
        };
        let found = self.get_or_load_with(key, &options, loader).await?;
        found.ok_or_else(|| Error::new(ErrorKind::NotFound, "the source has no value for this key"))
    }

    /// The most general load: read through both tiers (as `options` allow); on a miss run
    /// `loader` once for all concurrent callers of this key in this engine, and cache what it
    /// answers as it says. `Ok(None)`: the source has no value ([`Loaded::absent`]).
    ///
    /// The loader receives a [`LoadContext`]: the key, and the value the cache holds when one
    /// is at hand (on a refresh; with fail-safe, an expired value still kept), so it can
    /// revalidate it. It answers a [`Loaded`]: a value, an absence, or
    /// [`Loaded::unchanged`] (keep the previous value, renew its TTLs), optionally with this
    /// entry's own TTLs, tags, or [`Loaded::no_cache`].
    ///
    /// `options` apply to this call ([`CallOptions::check_load`] refuses contradictions with
    /// an [`ErrorKind::InvalidConfig`] error, before anything else happens). A caller that
    /// joins a load already in flight gets that load's result, made with its starter's
    /// options.
    pub async fn get_or_load_with<F, Fut, E>(
        &self,
        key: &str,
        options: &CallOptions,
        loader: F,
    ) -> Result<Option<Arc<V>>>
    where
        F: FnOnce(LoadContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Loaded<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        options.check_load(&self.inner.config)?;
        self.load_inner(key, options, loader).await
    }

    async fn load_inner<F, Fut, E>(
        &self,
        key: &str,
        options: &CallOptions,
        loader: F,
    ) -> Result<Option<Arc<V>>>
    where
        F: FnOnce(LoadContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Loaded<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        match self.load_local(key, options, loader) {
            Local::Hit(found) => found,
            Local::Miss { loader, stale } => self.load_remote(key, options, loader, stale).await,
        }
    }

    /// The L1 part of a load: a live hit (with an early refresh when the policy fires), or
    /// the loader back with any stale value kept for fail-safe.
    fn load_local<F, Fut, E>(&self, key: &str, options: &CallOptions, loader: F) -> Local<V, F>
    where
        F: FnOnce(LoadContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Loaded<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        if let Err(e) = crate::key::validate_key(key, self.inner.keys.max_key_len()) {
            return Local::Hit(Err(e));
        }
        let inner = &*self.inner;
        if options.skip_l1_read {
            return Local::Miss {
                loader,
                stale: None,
            };
        }
        let now = inner.engine.inner.now_ms();
        let mut stale: Option<(Option<Arc<V>>, u64)> = None;
        match inner.engine.inner.l1.get(inner.ns, key, now) {
            Some(entry) if entry.expires_at_ms > now && inner.is_fresh(&entry) => {
                let (refresh_at, expires_at, delta_us) =
                    (entry.refresh_at_ms, entry.expires_at_ms, entry.delta_us);
                if let Some(hit) = inner.downcast(entry) {
                    if now >= refresh_at {
                        if let Err(e) = self
                            .maybe_refresh(key, now, expires_at, delta_us, options, &hit, loader)
                        {
                            return Local::Hit(Err(e));
                        }
                    }
                    return Local::Hit(Ok(hit));
                }
            }
            Some(entry) => {
                // Expired (or flushed) but kept for fail-safe; only a fail-safe cache may
                // fall back on it.
                inner.event(CacheEvent::L1Miss);
                if inner.config.fail_safe {
                    let until = entry.stale_until_ms;
                    stale = CacheInner::<V, C>::value_of(entry).map(|v| (v, until));
                }
            }
            None => inner.event(CacheEvent::L1Miss),
        }
        Local::Miss { loader, stale }
    }

    /// The rest of a load after an L1 miss: join the flight of this key or start one, and
    /// wait for it (bounded by the loader timeouts).
    async fn load_remote<F, Fut, E>(
        &self,
        key: &str,
        options: &CallOptions,
        loader: F,
        stale: Option<(Option<Arc<V>>, u64)>,
    ) -> Result<Option<Arc<V>>>
    where
        F: FnOnce(LoadContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Loaded<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let full = self.inner.keys.full(key)?;
        let rx = {
            let mut map = self.inner.lock_inflight();
            match map.get(key) {
                Some(rx) => {
                    bump(&self.inner.stats.coalesced);
                    self.inner.observer.on_event(CacheEvent::Coalesced);
                    (rx.clone(), true)
                }
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(key.to_owned(), rx.clone());
                    drop(map);
                    self.start_flight(
                        key,
                        tx,
                        full,
                        *options,
                        loader,
                        None,
                        stale.clone(),
                        SpanKind::Load,
                    )?;
                    (rx, false)
                }
            }
        };
        let (rx, joined) = rx;
        self.wait_bounded(rx, stale.map(|(v, _)| v), joined, options)
            .await
    }

    /// Wait for a load, bounded from the caller's side: past the soft timeout a caller holding
    /// a stale value gets it; past the hard timeout the caller gets the stale value
    /// (fail-safe) or a [`ErrorKind::Timeout`]. The load itself goes on and fills the cache.
    ///
    /// `joined`: the caller did not lead this load (its L1 miss was not followed by its own L2
    /// read); the load's result, when it reaches the caller, is reported as
    /// [`CacheEvent::CoalescedResult`].
    async fn wait_bounded(
        &self,
        rx: Flight<V>,
        stale: Option<Option<Arc<V>>>,
        joined: bool,
        options: &CallOptions,
    ) -> Shared<V> {
        let served = |r: Shared<V>| {
            if joined {
                self.inner
                    .event(CacheEvent::CoalescedResult { ok: r.is_ok() });
            }
            r
        };
        let config = &self.inner.config;
        let started = Instant::now();
        let mut pending = std::pin::pin!(wait(rx));
        if let (Some(soft), Some(value)) = (options.soft_timeout(config), &stale) {
            match tokio::time::timeout(soft, pending.as_mut()).await {
                Ok(r) => return served(r),
                Err(_) => {
                    bump(&self.inner.stats.stale_served);
                    self.inner.observer.on_event(CacheEvent::StaleServed);
                    return Ok(value.clone());
                }
            }
        }
        match options.hard_timeout(config) {
            Some(hard) => {
                match tokio::time::timeout(hard.saturating_sub(started.elapsed()), pending).await {
                    Ok(r) => served(r),
                    Err(_) => match stale {
                        Some(value) => {
                            bump(&self.inner.stats.stale_served);
                            self.inner.observer.on_event(CacheEvent::StaleServed);
                            Ok(value)
                        }
                        None => served(Err(Error::new(
                            ErrorKind::Timeout,
                            format!("no value within the hard timeout of {hard:?}"),
                        ))),
                    },
                }
            }
            None => served(pending.await),
        }
    }

    /// On an L1 hit inside the policy's horizon: draw, and if the policy fires, refresh in the
    /// background (coalesced with any load of the key in flight) while the caller gets the
    /// current value.
    #[allow(clippy::too_many_arguments)]
    fn maybe_refresh<F, Fut, E>(
        &self,
        key: &str,
        now: u64,
        expires_at: u64,
        delta_us: u32,
        options: &CallOptions,
        current: &Option<Arc<V>>,
        loader: F,
    ) -> Result<()>
    where
        F: FnOnce(LoadContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Loaded<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let inner = &self.inner;
        let remaining = Duration::from_millis(expires_at.saturating_sub(now));
        let delta = Duration::from_micros(u64::from(delta_us));
        let draw = inner.engine.inner.random.draw();
        if !inner.policy.should_refresh(remaining, delta, draw) {
            return Ok(());
        }
        let mut map = inner.lock_inflight();
        if map.contains_key(key) {
            return Ok(());
        }
        let full = inner.keys.full(key)?;
        let (tx, rx) = watch::channel(None);
        map.insert(key.to_owned(), rx);
        drop(map);
        bump(&inner.stats.early_refreshes);
        inner.observer.on_event(CacheEvent::EarlyRefresh);
        self.start_flight(
            key,
            tx,
            full,
            *options,
            loader,
            Some((expires_at, Some(current.clone()))),
            None,
            SpanKind::Refresh,
        )
    }

    /// Reload `key` from the source in the background, whatever the tiers hold: unless a load
    /// of the key is already in flight in this engine (then `Ok(false)`: that load brings a
    /// fresh value), a task takes the fill lease (with leases on), runs `loader`, and writes
    /// the value to L2 (compare-and-set against the lease) and L1; `Ok(true)`. Callers that
    /// read the key meanwhile join that load. While another instance holds the key's lease,
    /// the refresh waits for its value instead (as a load would). A loader error leaves the
    /// cached value as it is (it is logged and counted in [`CacheStats::load_errors`]).
    ///
    /// Errors: [`ErrorKind::InvalidKey`]; [`ErrorKind::Closed`] when no tokio runtime runs.
    pub fn refresh<F, Fut, E>(&self, key: &str, loader: F) -> Result<bool>
    where
        F: FnOnce(String) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        self.refresh_with(key, move |ctx: LoadContext<V>| async move {
            loader(ctx.into_key()).await.map(Loaded::value)
        })
    }

    /// [`Cache::refresh`] with a loader that receives a [`LoadContext`] (holding the value L1
    /// has now, if any) and answers a [`Loaded`], as in [`Cache::get_or_load_with`]: a
    /// conditional refresh answers [`Loaded::unchanged`] when the source says the value did
    /// not change, and the value is kept with its TTLs renewed in both tiers.
    pub fn refresh_with<F, Fut, E>(&self, key: &str, loader: F) -> Result<bool>
    where
        F: FnOnce(LoadContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Loaded<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        crate::key::validate_key(key, self.inner.keys.max_key_len())?;
        let full = self.inner.keys.full(key)?;
        // The value L1 holds now: served to a refresh whose lease another instance holds.
        let current = self.get_local(key);
        let mut map = self.inner.lock_inflight();
        if map.contains_key(key) {
            return Ok(false);
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.to_owned(), rx);
        drop(map);
        self.start_flight(
            key,
            tx,
            full,
            DEFAULT_OPTIONS,
            loader,
            Some((RELOAD, current)),
            None,
            SpanKind::Refresh,
        )?;
        Ok(true)
    }

    /// Run the flight of one key (already registered in the in-flight map with `tx`) in its
    /// own task: `fill_one`, then every waiter gets the result.
    #[allow(clippy::too_many_arguments)]
    fn start_flight<F, Fut, E>(
        &self,
        key: &str,
        tx: watch::Sender<Option<Shared<V>>>,
        full: String,
        options: CallOptions,
        loader: F,
        refresh: Option<(u64, Option<Option<Arc<V>>>)>,
        stale: Option<(Option<Arc<V>>, u64)>,
        kind: SpanKind,
    ) -> Result<()>
    where
        F: FnOnce(LoadContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Loaded<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let guard = FlightGuard {
            inner: Arc::clone(&self.inner),
            flights: vec![(key.to_owned(), tx)],
        };
        let key = key.to_owned();
        let span = self.inner.span(kind, &key);
        spawn(span, async move {
            let result = inner
                .fill_one(key, full, options, loader, refresh, stale, &guard)
                .await;
            guard.finish(|_| result.clone());
        })
    }

    /// Read many keys through both tiers; keys missing from both are loaded with one call of
    /// `loader`, which receives them all and returns the values it found (keys it leaves out
    /// are cached as absent). Keys already being loaded by another caller are joined, not
    /// loaded again. The result is aligned with `keys`.
    pub async fn get_many_or_load<K, F, Fut, E>(
        &self,
        keys: &[K],
        loader: F,
    ) -> Result<Vec<Option<Arc<V>>>>
    where
        K: AsRef<str>,
        F: FnOnce(Vec<String>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<HashMap<String, V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        // Every key is checked before any is registered in flight: a bad key leaves nothing
        // behind.
        for k in keys {
            crate::key::validate_key(k.as_ref(), self.inner.keys.max_key_len())?;
        }
        let mut out: Vec<Option<Arc<V>>> = Vec::with_capacity(keys.len());
        // (index, flight, joined: not led by this call's first occurrence of the key)
        let mut waits: Vec<(usize, Flight<V>, bool)> = Vec::new();
        let mut led: Vec<(String, watch::Sender<Option<Shared<V>>>)> = Vec::new();
        let mut stale: HashMap<String, (Option<Arc<V>>, u64)> = HashMap::new();
        {
            let mut map = self.inner.lock_inflight();
            for (i, k) in keys.iter().enumerate() {
                let k = k.as_ref();
                if let Some(hit) = self.get_local(k) {
                    out.push(hit);
                    continue;
                }
                out.push(None);
                if let Some(kept) = self.inner.local_stale(k) {
                    stale.insert(k.to_owned(), kept);
                }
                match map.get(k) {
                    Some(rx) => {
                        if !led.iter().any(|(l, _)| l == k) {
                            bump(&self.inner.stats.coalesced);
                            self.inner.observer.on_event(CacheEvent::Coalesced);
                        }
                        waits.push((i, rx.clone(), true));
                    }
                    None => {
                        let (tx, rx) = watch::channel(None);
                        map.insert(k.to_owned(), rx.clone());
                        led.push((k.to_owned(), tx));
                        waits.push((i, rx, false));
                    }
                }
            }
        }
        if !led.is_empty() {
            let inner = Arc::clone(&self.inner);
            let keys: Vec<String> = led.iter().map(|(k, _)| k.clone()).collect();
            let guard = FlightGuard {
                inner: Arc::clone(&self.inner),
                flights: led,
            };
            let span = tracing::debug_span!("cache.load_many", cache = %self.inner.name, keys = keys.len());
            let kept = stale.clone();
            spawn(span, async move {
                let results = inner.fill_many(keys, loader, kept).await;
                guard.finish(|k| {
                    results.get(k).cloned().unwrap_or_else(|| {
                        Err(Error::new(ErrorKind::Closed, "batch load lost a key"))
                    })
                });
            })?;
        }
        let results = futures::future::join_all(waits.into_iter().map(|(i, rx, joined)| {
            let kept = keys
                .get(i)
                .and_then(|k| stale.get(k.as_ref()))
                .map(|(v, _)| v.clone());
            async move {
                (
                    i,
                    self.wait_bounded(rx, kept, joined, &DEFAULT_OPTIONS).await,
                )
            }
        }))
        .await;
        for (i, r) in results {
            out[i] = r?;
        }
        Ok(out)
    }

    /// Write a value through both tiers with the default TTLs.
    ///
    /// The value is encoded and size-checked first: an encode error or an oversized value is
    /// returned before anything changes. Then L2 is written, L1 updated and the other
    /// instances told (bus). If L2 fails (down, breaker open), L1 still holds the new value
    /// and the write is queued for replay when L2 is back (auto-recovery): `Ok` is returned.
    /// With auto-recovery off, the L2 error is returned.
    pub async fn set(&self, key: &str, value: V) -> Result<()> {
        self.set_inner(key, Arc::new(value), &DEFAULT_OPTIONS, &[])
            .await
    }

    /// Like [`Cache::set`] for a value already behind an `Arc` (no copy: the same `Arc` is
    /// kept in L1). Used by write-behind, which also hands the value to the source writer.
    pub async fn set_shared(&self, key: &str, value: Arc<V>) -> Result<()> {
        self.set_inner(key, value, &DEFAULT_OPTIONS, &[]).await
    }

    /// Like [`Cache::set`], recording the key under each tag so that
    /// [`Cache::invalidate_tag`] drops it (in L2 and in every instance's L1).
    pub async fn set_with_tags(&self, key: &str, value: V, tags: &[&str]) -> Result<()> {
        for t in tags {
            crate::key::validate_key(t, 256)?;
            self.inner.tag_keys(t)?;
        }
        let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
        self.set_inner(key, Arc::new(value), &DEFAULT_OPTIONS, &tags)
            .await
    }

    /// Write-through: run `writer` (your database write) first; when it succeeds, write the
    /// value through L2 and L1 and tell the other instances. If the writer fails, the cache is
    /// unchanged and the error (kind [`ErrorKind::Writer`]) is returned. If the cache update
    /// fails after the source was written, the key is invalidated (never left stale) and the
    /// cache's error is returned.
    pub async fn write<F, Fut, E>(&self, key: &str, value: V, writer: F) -> Result<()>
    where
        F: FnOnce(String, Arc<V>) -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.inner.keys.full(key)?;
        let value = Arc::new(value);
        if let Err(e) = writer(key.to_owned(), value.clone()).await {
            let source: Box<dyn std::error::Error + Send + Sync> = e.into();
            return Err(
                Error::new(ErrorKind::Writer, format!("writer failed: {source}"))
                    .with_boxed_source(source),
            );
        }
        match self.set_inner(key, value, &DEFAULT_OPTIONS, &[]).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(cache = %self.inner.name, error = %e, "cache update after a write-through failed; invalidating the key");
                let _ = self.invalidate(key).await;
                Err(e)
            }
        }
    }

    /// Drop every key written with `tag` (see [`Cache::set_with_tags`]) from L2, from this
    /// instance's L1 and, through the bus, from every other instance's L1. Returns how many
    /// keys the tag held.
    ///
    /// Design: each tagged write adds the key to an index set in L2
    /// (`{prefix}:__tags:{namespace}:{tag}`); this call moves the set's members atomically to
    /// a pending set (`{prefix}:__tagging:{...}`), deletes their keys, publishes them as
    /// invalidations, and only then removes them from the pending set: a lost reply or a
    /// failed delete loses no member (a retry gets them again). Reads pay nothing.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<u64> {
        crate::key::validate_key(tag, 256)?;
        let inner = &self.inner;
        let Some(l2) = &inner.engine.inner.l2 else {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "tags are kept in L2: this engine has none",
            ));
        };
        let (tag_key, pending_key) = inner.tag_keys(tag)?;
        // The members move to a pending set, which keeps them until their deletes are done: a
        // lost reply or a failed delete loses none (the next call gets them again).
        let mut members = l2.tag_take(&tag_key, &pending_key).await.inspect_err(|e| {
            inner.l2_failed(L2Op::Delete, e);
        })?;
        // Tagged writes of this instance that failed are not in the index set yet.
        if let Some(queue) = &inner.engine.inner.recovery {
            for m in queue.tagged(&tag_key) {
                if !members.contains(&m) {
                    members.push(m);
                }
            }
        }
        let base = inner.keys.base();
        let user_keys: Vec<String> = members
            .iter()
            .filter_map(|m| m.strip_prefix(base).map(str::to_owned))
            .collect();
        for k in &user_keys {
            inner.state.drop_key(k);
        }
        let mut result = Ok(members.len() as u64);
        if !members.is_empty() {
            let mut doomed = members.clone();
            doomed.extend(members.iter().filter_map(|m| inner.fill_lease_key(m)));
            match l2.delete(&doomed).await {
                Ok(()) => {
                    // If this fails, the members stay pending: deleted again next time.
                    let _ = l2.tag_done(&pending_key, &members).await;
                }
                Err(e) => {
                    inner.l2_failed(L2Op::Delete, &e);
                    // The members stay pending for the next call; with auto-recovery their
                    // deletes are also settled by themselves when L2 is back.
                    let mut queued = e.is_transient();
                    for m in &members {
                        if !queued {
                            break;
                        }
                        let also: Vec<String> = inner.fill_lease_key(m).into_iter().collect();
                        let announce = m
                            .strip_prefix(base)
                            .map(|k| (inner.channel.clone(), k.to_owned()));
                        queued = inner.engine.inner.queue_recovery(
                            m.clone(),
                            Replay::delete(also, Vec::new(), Duration::ZERO),
                            announce,
                        );
                    }
                    if queued {
                        bump(&inner.stats.queued_for_recovery);
                    } else {
                        result = Err(e);
                    }
                }
            }
        }
        // Reads that ran while the delete was in flight may have cached old values.
        for k in &user_keys {
            inner.state.drop_key(k);
        }
        if let Some(bus) = &inner.engine.inner.bus {
            if !user_keys.is_empty() {
                inner.observer.on_event(CacheEvent::InvalidationsSent {
                    keys: user_keys.len() as u32,
                });
                bus.publish_keys(&inner.channel, user_keys);
            }
        }
        result
    }

    /// Like [`Cache::set`] with a per-call L2 TTL (L1 uses the smaller of it and `l1_ttl`).
    pub async fn set_with_ttl(&self, key: &str, value: V, ttl: Duration) -> Result<()> {
        if ttl.is_zero() {
            return Err(Error::new(ErrorKind::InvalidConfig, "ttl must be positive"));
        }
        let options = CallOptions::new().with_l2_ttl(ttl);
        self.set_inner(key, Arc::new(value), &options, &[]).await
    }

    /// [`Cache::set`] with per-call options ([`CallOptions::check_write`] refuses
    /// contradictions with an [`ErrorKind::InvalidConfig`] error before anything changes):
    ///
    /// - TTLs: this entry's L1 and L2 TTLs.
    /// - `skip_l1_write`: this instance's L1 drops its copy instead of holding the value.
    /// - `skip_l2_write`: L2 drops the key instead of holding the value (no instance reads
    ///   an older value there); this instance's L1 holds the value.
    /// - `background_l2_write`: the call returns once L1 holds the value; the L2 write, then
    ///   the invalidation of the other instances, follow in a background task, in call order
    ///   per key (a later `set` or `invalidate` of the key on this engine waits for them).
    ///   A failed background write goes to auto-recovery like a failed `set` (it is not
    ///   returned: the call has returned); a full queue makes the call wait for its write
    ///   ([`crate::EngineBuilder::with_background_writes`]). Until the write lands, other
    ///   instances read the older value, and so does this one if its L1 copy is evicted.
    ///   [`crate::Engine::shutdown`] finishes the queued writes.
    pub async fn set_with(&self, key: &str, value: V, options: &CallOptions) -> Result<()> {
        options.check_write(&self.inner.config)?;
        self.set_inner(key, Arc::new(value), options, &[]).await
    }

    async fn set_inner(
        &self,
        key: &str,
        value: Arc<V>,
        options: &CallOptions,
        tags: &[String],
    ) -> Result<()> {
        let full = self.inner.keys.full(key)?;
        let inner = &self.inner;
        let prepared =
            inner.prepare(Some(value), Duration::ZERO, options.l1_ttl, options.l2_ttl)?;
        let write_l2 = !options.skip_l2_write;
        if let (Some(l2), Some(bytes), true) = (&inner.engine.inner.l2, &prepared.bytes, write_l2) {
            check_value_size(&full, bytes.len(), l2.max_value_size())?;
        }
        // Writes of a key on this engine land in call order: after its background ones.
        inner.engine.inner.background.settled(&full).await;
        inner.observer.on_event(CacheEvent::Set);
        inner.bump_epoch(key);
        if options.background_l2_write && inner.engine.inner.l2.is_some() {
            let epoch = inner.epoch(key);
            inner.keep_in_l1(key, options, &prepared);
            let cache = self.clone();
            let owned_key = key.to_owned();
            let owned_full = full.clone();
            let tags = tags.to_vec();
            let keep = !options.skip_l1_write;
            let job = crate::background::Background::job(full.clone(), async move {
                cache
                    .finish_background(&owned_key, &owned_full, prepared, &tags, epoch, keep)
                    .await;
            });
            match inner.engine.inner.background.push(job) {
                Ok(()) => return Ok(()),
                // The queue is full (or stopped): write in the foreground, as `set` does.
                Err(job) => {
                    job.run().await;
                    return Ok(());
                }
            }
        }
        let result = if write_l2 {
            self.l2_store(key, &full, &prepared, tags).await
        } else {
            self.l2_remove(key, full).await
        };
        // A load or read that began while L2 was being written must not fill L1 after us.
        inner.bump_epoch(key);
        inner.keep_in_l1(key, options, &prepared);
        inner.announce(key);
        result
    }

    /// The L2 part of a background write, then what `set` does after it: L1 again (a read
    /// that found the older L2 value meanwhile must not keep it), and the announcement.
    async fn finish_background(
        &self,
        key: &str,
        full: &str,
        prepared: Prepared<V>,
        tags: &[String],
        epoch: u64,
        keep: bool,
    ) {
        let inner = &self.inner;
        if let Err(e) = self.l2_store(key, full, &prepared, tags).await {
            tracing::warn!(cache = %inner.name, error = %e, "background L2 write failed");
        }
        if inner.epoch(key) == epoch {
            inner.bump_epoch(key);
            if keep {
                let entry = inner.entry_of(prepared.value.clone(), &prepared);
                if !inner.insert_if(key, epoch + 1, entry) {
                    inner.state.drop_key(key);
                }
            }
        } else {
            // Dropped or flushed meanwhile (an invalidation from another instance): what L1
            // holds now may be older than L2; drop it.
            inner.state.drop_key(key);
        }
        inner.announce(key);
    }

    /// Write a prepared value to L2 (after removing the key's fill lease, so a load in flight
    /// elsewhere cannot overwrite it) and record its tags. A transient failure is queued for
    /// auto-recovery (as a delete) and counts as done.
    async fn l2_store(
        &self,
        key: &str,
        full: &str,
        prepared: &Prepared<V>,
        tags: &[String],
    ) -> Result<()> {
        let inner = &self.inner;
        let (Some(l2), Some(bytes)) = (&inner.engine.inner.l2, prepared.bytes.clone()) else {
            return Ok(());
        };
        let lease = inner.fill_lease_key(full);
        let tag_keys: Vec<String> = tags
            .iter()
            .map(|t| crate::key::tag_key(&inner.engine.inner.prefix, &inner.name, t))
            .collect();
        // Remove the fill lease first: a load in flight elsewhere must not overwrite us.
        let removed = match &lease {
            Some(lk) => l2.delete(std::slice::from_ref(lk)).await,
            None => Ok(()),
        };
        let mut written = match removed {
            Ok(()) => {
                let start = inner.observe.then(Instant::now);
                let set = l2.set(full, bytes, prepared.l2_ttl).await;
                if set.is_ok() {
                    inner.l2_written(start, 1);
                }
                set
            }
            Err(e) => Err(e),
        };
        for tag_key in &tag_keys {
            if written.is_err() {
                break;
            }
            written = l2.tag_add(tag_key, full, prepared.l2_ttl).await;
        }
        match written {
            Ok(()) => {
                inner.engine.inner.recovered(full);
                Ok(())
            }
            Err(e) => {
                inner.l2_failed(L2Op::Set, &e);
                // Only outages are worth replaying; a refusal (NOPERM, oversize) would
                // be refused again and must reach the caller.
                // The failed write is settled by a delete when L2 is back: another instance
                // may write the key meanwhile, and only a delete is right in any order.
                let queued = e.is_transient()
                    && inner.engine.inner.queue_recovery(
                        full.to_owned(),
                        Replay::delete(lease.into_iter().collect(), tag_keys, prepared.l2_ttl),
                        Some((inner.channel.clone(), key.to_owned())),
                    );
                if queued {
                    // Accepted: L1 holds the value; L2 drops the key when it is back.
                    bump(&inner.stats.queued_for_recovery);
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Delete a key (and its fill lease) from L2; a transient failure is queued for
    /// auto-recovery and counts as done.
    async fn l2_remove(&self, key: &str, full: String) -> Result<()> {
        let inner = &self.inner;
        let Some(l2) = &inner.engine.inner.l2 else {
            return Ok(());
        };
        let mut keys = vec![full];
        keys.extend(inner.fill_lease_key(&keys[0]));
        match l2.delete(&keys).await {
            Ok(()) => {
                inner.engine.inner.recovered(&keys[0]);
                Ok(())
            }
            Err(e) => {
                inner.l2_failed(L2Op::Delete, &e);
                let full = keys.remove(0);
                let queued = e.is_transient()
                    && inner.engine.inner.queue_recovery(
                        full,
                        Replay::delete(keys, Vec::new(), Duration::ZERO),
                        Some((inner.channel.clone(), key.to_owned())),
                    );
                if queued {
                    bump(&inner.stats.queued_for_recovery);
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Drop a key from both tiers and from every other instance's L1 (bus). L1 is dropped
    /// first, then L2, then the invalidation is published. If L2 fails, the delete is queued
    /// for replay (auto-recovery), or returned as an error when auto-recovery is off.
    pub async fn invalidate(&self, key: &str) -> Result<()> {
        use tracing::Instrument;
        let span = self.inner.span(SpanKind::Invalidate, key);
        self.invalidate_inner(key).instrument(span).await
    }

    async fn invalidate_inner(&self, key: &str) -> Result<()> {
        let full = self.inner.keys.full(key)?;
        self.inner.engine.inner.background.settled(&full).await;
        self.inner.bump_epoch(key);
        self.inner.engine.inner.l1.remove(self.inner.ns, key);
        self.inner.observer.on_event(CacheEvent::Invalidate);
        let result = self.l2_remove(key, full).await;
        // A read on this instance while the delete was in flight may have found the old value
        // in L2 and cached it under the already bumped epoch: drop it again.
        self.inner.state.drop_key(key);
        // Announced only once L2 no longer holds the key: another instance that drops its
        // copy on this message and reads L2 at once must not find the old value there (and
        // cache it again). When the delete failed, the message still goes out: the others'
        // copies are no newer than L2's, and the replay announces again.
        self.inner.announce(key);
        result
    }

    /// Mark a key expired everywhere without dropping it: with fail-safe on, the value stays
    /// in both tiers as a stale fallback (the next read loads, and a failing loader serves the
    /// kept value, as for a value that expired by itself); the other instances drop their L1
    /// copies (bus). Without fail-safe there is nothing to keep: it is
    /// [`Cache::invalidate`].
    ///
    /// L2's copy is re-stamped as expired under the key's fill lease, so it never overwrites
    /// a newer write. When that cannot be done (raw mode, leases off, a load of the key in
    /// flight elsewhere, L2 failing) the key is deleted from L2 instead, like `invalidate`
    /// (queued for auto-recovery when L2 is down): never stale, though the fallback is lost.
    pub async fn expire(&self, key: &str) -> Result<()> {
        let inner = &self.inner;
        if !inner.config.fail_safe {
            return self.invalidate(key).await;
        }
        let full = inner.keys.full(key)?;
        inner.engine.inner.background.settled(&full).await;
        inner.observer.on_event(CacheEvent::Invalidate);
        inner.bump_epoch(key);
        inner.mark_expired(key);
        let kept = match &inner.engine.inner.l2 {
            None => true,
            Some(l2) => self.expire_l2(l2.as_ref(), &full).await,
        };
        let result = if kept {
            Ok(())
        } else {
            self.l2_remove(key, full).await
        };
        // A read that found the live L2 value meanwhile may have filled L1 again.
        inner.bump_epoch(key);
        inner.mark_expired(key);
        inner.announce(key);
        result
    }

    /// Re-stamp L2's copy of `full` as expired now, keeping it until its fail-safe window
    /// ends, under the fill lease. False when that could not be done (the caller deletes).
    async fn expire_l2(&self, l2: &dyn crate::remote::RemoteStore, full: &str) -> bool {
        let inner = &self.inner;
        if inner.config.raw {
            return false;
        }
        let Some(lease) = inner.fill_lease_key(full) else {
            return false;
        };
        let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)).into_bytes();
        if !matches!(
            l2.set_nx(&lease, token.clone(), inner.config.lease_ttl)
                .await,
            Ok(true)
        ) {
            return false;
        }
        let now = inner.engine.inner.now_ms().max(1);
        let restamped = match l2.get(full).await {
            Ok(Some(bytes)) => match Header::decode(&bytes) {
                Ok((h, payload)) if h.expires_at_ms == 0 || h.expires_at_ms > now => {
                    let until = inner.stale_until(h.expires_at_ms.max(now));
                    let header = Header {
                        expires_at_ms: now,
                        ..h
                    };
                    Some((header.encode(payload), until.saturating_sub(now)))
                }
                // Expired already: nothing to do.
                Ok(_) => None,
                Err(_) => {
                    inner.release_lease(&lease, &token).await;
                    return false;
                }
            },
            Ok(None) => None,
            Err(e) => {
                inner.l2_failed(L2Op::Get, &e);
                inner.release_lease(&lease, &token).await;
                return false;
            }
        };
        let Some((bytes, keep_ms)) = restamped else {
            inner.release_lease(&lease, &token).await;
            return true;
        };
        // A write since our lease was taken removed it: the compare-and-set stores nothing,
        // and the newer value stands.
        match l2
            .set_if_lease(
                &lease,
                &token,
                full,
                bytes,
                Duration::from_millis(keep_ms.max(1)),
            )
            .await
        {
            Ok(_) => true,
            Err(e) => {
                inner.l2_failed(L2Op::Set, &e);
                false
            }
        }
    }

    /// Drop a key from this process' L1 only.
    pub fn invalidate_local(&self, key: &str) {
        self.inner.bump_epoch(key);
        self.inner.engine.inner.l1.remove(self.inner.ns, key);
    }

    /// Drop every entry of this namespace from this process' L1.
    pub fn clear_local(&self) {
        self.inner.flush_local();
    }

    /// Clear the namespace everywhere: this process' L1, every other instance's L1 (through
    /// the bus) and L2 (every key under the namespace's base, deleted in batches with SCAN;
    /// values written while the clear runs may survive). Returns the number of L2 keys deleted.
    ///
    /// The engine's fill leases are deleted first (those of every namespace: a lease key does
    /// not always show its namespace), so a load that began before the clear cannot store its
    /// value after it; a load in another namespace then merely skips its L2 write once.
    pub async fn clear_namespace(&self) -> Result<u64> {
        let inner = &self.inner;
        inner
            .engine
            .inner
            .background
            .settled_prefix(inner.keys.base())
            .await;
        inner.flush_local();
        inner.announce_clear();
        let deleted = match &inner.engine.inner.l2 {
            Some(l2) => {
                let leases = format!("{}:__lease:", inner.engine.inner.prefix);
                let result = match l2.delete_prefix(&leases).await {
                    Ok(_) => l2.delete_prefix(inner.keys.base()).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(n) => n,
                    Err(e) => {
                        inner.l2_failed(L2Op::Delete, &e);
                        return Err(e);
                    }
                }
            }
            None => 0,
        };
        // Entries filled from L2 while the delete ran may be old: flush once more, here and
        // (a second message) on every other instance.
        inner.flush_local();
        inner.announce_clear();
        Ok(deleted)
    }
}

/// Values ready for both tiers.
struct Prepared<V> {
    value: Option<Arc<V>>,
    bytes: Option<Vec<u8>>,
    l1_expires_at_ms: u64,
    l1_stale_until_ms: u64,
    l1_refresh_at_ms: u64,
    l2_ttl: Duration,
    delta_us: u32,
    weight: u32,
}

impl<V, C> CacheInner<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    fn lock_inflight(&self) -> std::sync::MutexGuard<'_, HashMap<String, Flight<V>>> {
        self.state.lock_inflight()
    }

    /// Tell other instances to drop this whole namespace from their L1.
    fn announce_clear(&self) {
        if let Some(bus) = &self.engine.inner.bus {
            bus.publish_clear(&self.channel);
            self.observer
                .on_event(CacheEvent::InvalidationsSent { keys: 1 });
        }
    }

    /// Store a written value in L1, or (`skip_l1_write`) drop this instance's older copy.
    /// An invalidation from another instance that lands meanwhile wins (see
    /// [`Self::insert_if`]): the key is then dropped.
    fn keep_in_l1(&self, key: &str, options: &CallOptions, prepared: &Prepared<V>) {
        if options.skip_l1_write {
            self.engine.inner.l1.remove(self.ns, key);
            return;
        }
        let epoch = self.epoch(key);
        let entry = self.entry_of(prepared.value.clone(), prepared);
        if !self.insert_if(key, epoch, entry) {
            self.state.drop_key(key);
        }
    }

    /// Turn a live L1 entry of `key` into an expired one, kept as a fail-safe fallback.
    fn mark_expired(&self, key: &str) {
        let now = self.engine.inner.now_ms();
        if let Some(entry) = self.engine.inner.l1.get(self.ns, key, now) {
            if entry.expires_at_ms > now {
                self.engine.inner.l1.insert(
                    self.ns,
                    key,
                    L1Entry {
                        expires_at_ms: now,
                        refresh_at_ms: now,
                        ..entry
                    },
                );
            }
        }
    }

    /// Tell other instances that `key` changed (batched by the bus).
    fn announce(&self, key: &str) {
        if let Some(bus) = &self.engine.inner.bus {
            bus.publish_keys(&self.channel, vec![key.to_owned()]);
            self.observer
                .on_event(CacheEvent::InvalidationsSent { keys: 1 });
        }
    }

    /// Drop the namespace from L1 (a clear, or a possible loss of invalidations). A fail-safe
    /// cache keeps the entries as stale fallbacks: they stop being fresh, not available.
    fn flush_local(&self) {
        self.state.flush();
    }

    /// False for entries stored before the last flush.
    #[inline]
    fn is_fresh(&self, entry: &L1Entry) -> bool {
        self.state.is_fresh(entry)
    }

    /// A span for one operation on `key`, carrying the cache name and a hash of the key (the
    /// raw key only when `trace_raw_keys` is on).
    fn span(&self, kind: SpanKind, key: &str) -> tracing::Span {
        // Field values are evaluated only when the span is enabled: a disabled span costs no
        // hashing and no formatting.
        let span = match kind {
            SpanKind::Get => {
                tracing::debug_span!("cache.get", cache = %self.name, key_hash = %KeyHash(key), key = tracing::field::Empty)
            }
            SpanKind::Load => {
                tracing::debug_span!("cache.load", cache = %self.name, key_hash = %KeyHash(key), key = tracing::field::Empty)
            }
            SpanKind::Refresh => {
                tracing::debug_span!("cache.refresh", cache = %self.name, key_hash = %KeyHash(key), key = tracing::field::Empty)
            }
            SpanKind::Invalidate => {
                tracing::debug_span!("cache.invalidate", cache = %self.name, key_hash = %KeyHash(key), key = tracing::field::Empty)
            }
        };
        if self.config.trace_raw_keys {
            span.record("key", key);
        }
        span
    }

    /// The index set of `tag` and the set where `invalidate_tag` keeps the members it took.
    fn tag_keys(&self, tag: &str) -> Result<(String, String)> {
        let tag_key = crate::key::tag_key(&self.engine.inner.prefix, &self.name, tag);
        let pending =
            crate::key::tag_pending_key(&self.engine.inner.prefix, &tag_key).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidKey,
                    "a tag may not hold a '}' outside a hash tag",
                )
            })?;
        Ok((tag_key, pending))
    }

    fn lease_key(&self, full: &str) -> Option<String> {
        lease_key(&self.engine.inner.prefix, full)
    }

    /// The fill lease key of `full` when this cache uses leases (what every write deletes).
    fn fill_lease_key(&self, full: &str) -> Option<String> {
        self.config.leases.then(|| self.lease_key(full)).flatten()
    }

    fn epoch(&self, key: &str) -> u64 {
        self.state.epoch(key)
    }

    fn bump_epoch(&self, key: &str) {
        self.state.bump_epoch(key);
    }

    /// When an entry expiring at `expires_at` becomes eligible for early refresh.
    fn refresh_at(&self, expires_at: u64, delta_us: u32) -> u64 {
        let horizon = self
            .policy
            .horizon(Duration::from_micros(u64::from(delta_us)));
        expires_at.saturating_sub(horizon.as_millis() as u64)
    }

    /// How long a value expiring at `expires_at` is kept for fail-safe.
    fn stale_until(&self, expires_at: u64) -> u64 {
        if self.config.fail_safe {
            expires_at.saturating_add(self.config.max_stale.as_millis() as u64)
        } else {
            expires_at
        }
    }

    /// A fail-safe cache's fallback for `key`: an L1 entry no longer fresh but kept, with how
    /// long it may be served. `None` when the cache is not fail-safe.
    fn local_stale(&self, key: &str) -> Option<(Option<Arc<V>>, u64)> {
        if !self.config.fail_safe {
            return None;
        }
        let now = self.engine.inner.now_ms();
        let entry = self.engine.inner.l1.get(self.ns, key, now)?;
        let until = entry.stale_until_ms;
        Self::value_of(entry).map(|v| (v, until))
    }

    /// The value of an entry without counting anything; `None` on a type mismatch.
    fn value_of(entry: L1Entry) -> Option<Option<Arc<V>>> {
        match entry.value {
            None => Some(None),
            Some(any) => any.downcast::<V>().ok().map(Some),
        }
    }

    /// Serve a stale value (fail-safe): count it, and keep it fresh in L1 for the back-off so
    /// the loader is retried only then, not on every call.
    fn serve_stale(&self, key: &str, value: &Option<Arc<V>>, stale_until: u64, epoch: u64) {
        bump(&self.stats.stale_served);
        self.observer.on_event(CacheEvent::StaleServed);
        tracing::warn!(cache = %self.name, "serving a stale value (fail-safe)");
        let now = self.engine.inner.now_ms();
        let until = now
            .saturating_add(self.config.fail_safe_backoff.as_millis() as u64)
            .min(stale_until);
        if until > now {
            self.insert_if(
                key,
                epoch,
                L1Entry {
                    value: value
                        .clone()
                        .map(|v| v as Arc<dyn std::any::Any + Send + Sync>),
                    expires_at_ms: until,
                    born_ms: self.engine.inner.now_ms(),
                    stale_until_ms: stale_until,
                    refresh_at_ms: until,
                    delta_us: 0,
                    weight: L1_ENTRY_OVERHEAD,
                },
            );
        }
    }

    /// Run the loader under the soft and hard timeouts. With a fallback at hand, passing the
    /// soft timeout hands the fallback to the waiters now while the load goes on.
    async fn run_loader<Fut, E>(
        &self,
        fut: Fut,
        key: &str,
        fallback: Option<&Option<Arc<V>>>,
        guard: &FlightGuard<V, C>,
        options: &CallOptions,
    ) -> Result<Loaded<V>>
    where
        Fut: Future<Output = std::result::Result<Loaded<V>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let mut fut = std::pin::pin!(fut);
        if let (Some(soft), Some(fb)) = (options.soft_timeout(&self.config), fallback) {
            match tokio::time::timeout(soft, fut.as_mut()).await {
                Ok(r) => return r.map_err(|e| Error::loader(e.into())),
                Err(_) => {
                    bump(&self.stats.stale_served);
                    self.observer.on_event(CacheEvent::StaleServed);
                    tracing::info!(cache = %self.name, soft_ms = soft.as_millis() as u64, "loader past its soft timeout: serving the previous value while it finishes");
                    guard.publish_early(key, Ok(fb.clone()));
                }
            }
        }
        match options.hard_timeout(&self.config) {
            Some(hard) => {
                match tokio::time::timeout(hard.saturating_sub(started.elapsed()), fut).await {
                    Ok(r) => r.map_err(|e| Error::loader(e.into())),
                    Err(_) => Err(Error::new(
                        ErrorKind::Timeout,
                        format!("loader exceeded its hard timeout of {hard:?}"),
                    )),
                }
            }
            None => fut.await.map_err(|e| Error::loader(e.into())),
        }
    }

    /// Report an event unless the observer is a no-op (skips a virtual call on hits).
    #[inline]
    fn event(&self, event: CacheEvent) {
        if self.observe {
            self.observer.on_event(event);
        }
    }

    /// The value of a live L1 entry, counting the hit; `None` on a type mismatch.
    #[inline(always)]
    fn downcast(&self, entry: L1Entry) -> Option<Option<Arc<V>>> {
        match entry.value {
            None => {
                self.event(CacheEvent::L1Hit);
                Some(None)
            }
            Some(any) => match any.downcast::<V>() {
                Ok(v) => {
                    self.event(CacheEvent::L1Hit);
                    Some(Some(v))
                }
                Err(_) => {
                    self.event(CacheEvent::L1Miss);
                    None
                }
            },
        }
    }

    /// Does the refresh policy say an L2 value should be reloaded now?
    fn l2_refresh_due(&self, found: &Found<V>) -> bool {
        let Some(exp) = found.l2_expires_at_ms else {
            return false;
        };
        let now = self.engine.inner.now_ms();
        let remaining = Duration::from_millis(exp.saturating_sub(now));
        let delta = Duration::from_micros(u64::from(found.delta_us));
        if remaining > self.policy.horizon(delta) {
            return false;
        }
        self.policy
            .should_refresh(remaining, delta, self.engine.inner.random.draw())
    }

    /// Take the fill lease for `full`. With no value at hand and the lease busy, wait up to
    /// `lease_wait` for the holder's value (`Err(found)` when it arrives).
    async fn take_lease(
        &self,
        key: &str,
        full: &str,
        have_value: bool,
        epoch: u64,
    ) -> std::result::Result<Fill, Option<Arc<V>>> {
        let epochs = HashMap::from([(key.to_owned(), epoch)]);
        let (mut fills, mut delivered) = self
            .take_leases(vec![(key.to_owned(), full.to_owned())], &epochs, have_value)
            .await;
        if let Some((_, value)) = delivered.pop() {
            return Err(value);
        }
        // One key in, one fill out; never an unconditional write if that ever failed.
        Ok(fills.pop().map_or(Fill::LocalOnly, |(_, _, fill)| fill))
    }

    fn l2_failed(&self, op: L2Op, e: &Error) {
        bump(&self.stats.l2_errors);
        self.observer
            .on_event(CacheEvent::L2Error { op, kind: e.kind() });
        tracing::warn!(cache = %self.name, error = %e, "L2 operation failed; continuing without it");
    }

    /// Report `n` L2 value writes that Redis answered, in one round trip begun at `start`
    /// (`None`: no observer, not timed).
    fn l2_written(&self, start: Option<Instant>, n: usize) {
        if let Some(start) = start {
            let latency = start.elapsed();
            for _ in 0..n {
                self.observer.on_event(CacheEvent::L2Set { latency });
            }
        }
    }

    fn jittered(&self, ttl: Duration) -> Duration {
        let j = self.config.jitter;
        if j <= 0.0 {
            return ttl;
        }
        let cut = ttl.mul_f64(j * fastrand::f64());
        ttl.saturating_sub(cut).max(Duration::from_millis(1))
    }

    /// Encode a value (or absence) and work out its TTLs.
    fn prepare(
        &self,
        value: Option<Arc<V>>,
        delta: Duration,
        l1: Option<Duration>,
        l2: Option<Duration>,
    ) -> Result<Prepared<V>> {
        let now = self.engine.inner.now_ms();
        let base_l2 = match (&value, l2) {
            (_, Some(t)) => t,
            (None, None) => self.config.negative_ttl,
            (Some(_), None) => self.config.l2_ttl,
        };
        let l2_ttl = self.jittered(base_l2);
        let l1_ttl = self
            .jittered(l1.unwrap_or(self.config.l1_ttl).min(base_l2))
            .min(l2_ttl);
        let delta_us = u32::try_from(delta.as_micros()).unwrap_or(u32::MAX);
        let l2_expires_at_ms = now.saturating_add(l2_ttl.as_millis() as u64);
        let payload = match &value {
            Some(v) => Some(C::encode(&**v)?),
            None => None,
        };
        let bytes = if self.config.raw {
            payload
        } else {
            let mut flags = 0u8;
            #[allow(unused_mut)]
            let mut body = payload.unwrap_or_default();
            if value.is_none() {
                flags |= Header::FLAG_NEGATIVE;
            }
            #[cfg(feature = "lz4")]
            if let Some(min) = self.config.compress_above {
                if body.len() >= min {
                    body = crate::compress::compress(&body);
                    flags |= Header::FLAG_COMPRESSED;
                }
            }
            let h = Header {
                codec: C::ID.as_u8(),
                flags,
                expires_at_ms: l2_expires_at_ms,
                delta_us,
            };
            Some(h.encode(&body))
        };
        let weight = bytes
            .as_ref()
            .map_or(0, |b| u32::try_from(b.len()).unwrap_or(u32::MAX))
            .saturating_add(L1_ENTRY_OVERHEAD);
        let l1_expires_at_ms = now.saturating_add(l1_ttl.as_millis() as u64);
        // Redis keeps the value `max_stale` past its logical expiry for fail-safe.
        let l2_ttl = if self.config.fail_safe {
            l2_ttl.saturating_add(self.config.max_stale)
        } else {
            l2_ttl
        };
        Ok(Prepared {
            value,
            bytes,
            l1_expires_at_ms,
            l1_stale_until_ms: self.stale_until(l2_expires_at_ms.max(l1_expires_at_ms)),
            l1_refresh_at_ms: self.refresh_at(l1_expires_at_ms, delta_us),
            l2_ttl,
            delta_us,
            weight,
        })
    }

    /// Decode L2 bytes.
    fn decode(&self, bytes: &[u8], now: u64) -> std::result::Result<Decoded<V>, Unusable> {
        let weight = u32::try_from(bytes.len())
            .unwrap_or(u32::MAX)
            .saturating_add(L1_ENTRY_OVERHEAD);
        if self.config.raw {
            let v = C::decode(bytes).map_err(Unusable::Corrupt)?;
            let exp = now.saturating_add(self.jittered(self.config.l1_ttl).as_millis() as u64);
            return Ok(Decoded {
                value: Some(v),
                expires_at_ms: exp,
                stale_until_ms: self.stale_until(exp),
                stale: false,
                delta_us: 0,
                l2_expires_at_ms: None,
                weight,
            });
        }
        let (h, payload) = Header::decode(bytes)
            .map_err(|e| Unusable::Corrupt(Error::new(ErrorKind::Decode, e.to_string())))?;
        let stale = h.expires_at_ms != 0 && h.expires_at_ms <= now;
        if stale && !(self.config.fail_safe && now < self.stale_until(h.expires_at_ms)) {
            return Err(Unusable::Expired);
        }
        let l1_ttl = if h.is_negative() {
            self.config.l1_ttl.min(self.config.negative_ttl)
        } else {
            self.config.l1_ttl
        };
        let mut l1_exp = now.saturating_add(self.jittered(l1_ttl).as_millis() as u64);
        if h.expires_at_ms != 0 {
            l1_exp = l1_exp.min(h.expires_at_ms);
        }
        let value = if h.is_negative() {
            None
        } else if h.is_compressed() {
            let max = self
                .engine
                .inner
                .l2
                .as_ref()
                .map_or(512 * 1024 * 1024, |s| s.max_value_size());
            let plain = crate::compress::decompress(payload, max).map_err(Unusable::Corrupt)?;
            Some(C::decode_id(h.codec, &plain).map_err(Unusable::Corrupt)?)
        } else {
            Some(C::decode_id(h.codec, payload).map_err(Unusable::Corrupt)?)
        };
        Ok(Decoded {
            value,
            expires_at_ms: l1_exp,
            stale_until_ms: self.stale_until(if h.expires_at_ms != 0 {
                h.expires_at_ms
            } else {
                l1_exp
            }),
            stale,
            l2_expires_at_ms: (h.expires_at_ms != 0).then_some(h.expires_at_ms),
            delta_us: h.delta_us,
            weight,
        })
    }

    fn entry_of(&self, value: Option<Arc<V>>, p: &Prepared<V>) -> L1Entry {
        L1Entry {
            value: value.map(|v| v as Arc<dyn std::any::Any + Send + Sync>),
            expires_at_ms: p.l1_expires_at_ms,
            born_ms: self.engine.inner.now_ms(),
            stale_until_ms: p.l1_stale_until_ms,
            refresh_at_ms: p.l1_refresh_at_ms,
            delta_us: p.delta_us,
            weight: p.weight,
        }
    }

    /// Insert `entry` into L1 unless the key's epoch moved from `epoch`; false when it did.
    /// The epoch is checked again after the insert: an invalidation processed between the
    /// check and the insert (it bumps the epoch, then removes the entry) would otherwise leave
    /// the older value behind; the entry is then removed again (a miss, never a stale hit).
    fn insert_if(&self, key: &str, epoch: u64, entry: L1Entry) -> bool {
        if self.epoch(key) != epoch {
            return false;
        }
        self.engine.inner.l1.insert(self.ns, key, entry);
        if self.epoch(key) != epoch {
            self.engine.inner.l1.remove(self.ns, key);
            return false;
        }
        true
    }

    /// Turn one L2 answer into a value: `Some(found)` on a usable hit (L1 filled), `None` on
    /// a miss, an expired or unreadable value, or an error (all counted).
    fn accept_l2(
        &self,
        key: &str,
        answer: Option<Vec<u8>>,
        latency: Duration,
        epoch: u64,
    ) -> Option<Found<V>> {
        let Some(bytes) = answer else {
            bump(&self.stats.l2_misses);
            self.observer.on_event(CacheEvent::L2Miss { latency });
            return None;
        };
        let now = self.engine.inner.now_ms();
        match self.decode(&bytes, now) {
            Ok(d) if d.stale => {
                bump(&self.stats.l2_misses);
                self.observer.on_event(CacheEvent::L2Miss { latency });
                Some(Found {
                    value: d.value.map(Arc::new),
                    stale: true,
                    stale_until_ms: d.stale_until_ms,
                    l2_expires_at_ms: d.l2_expires_at_ms,
                    delta_us: d.delta_us,
                })
            }
            Ok(d) => {
                bump(&self.stats.l2_hits);
                self.observer.on_event(CacheEvent::L2Hit { latency });
                let value = d.value.map(Arc::new);
                self.insert_if(
                    key,
                    epoch,
                    L1Entry {
                        value: value
                            .clone()
                            .map(|v| v as Arc<dyn std::any::Any + Send + Sync>),
                        expires_at_ms: d.expires_at_ms,
                        born_ms: self.engine.inner.now_ms(),
                        stale_until_ms: d.stale_until_ms,
                        refresh_at_ms: self.refresh_at(d.expires_at_ms, d.delta_us),
                        delta_us: d.delta_us,
                        weight: d.weight,
                    },
                );
                Some(Found {
                    value,
                    stale: false,
                    stale_until_ms: d.stale_until_ms,
                    l2_expires_at_ms: d.l2_expires_at_ms,
                    delta_us: d.delta_us,
                })
            }
            Err(Unusable::Expired) => {
                bump(&self.stats.l2_misses);
                self.observer.on_event(CacheEvent::L2Miss { latency });
                None
            }
            Err(Unusable::Corrupt(e)) => {
                bump(&self.stats.l2_corrupt);
                self.observer.on_event(CacheEvent::L2Corrupt);
                tracing::warn!(cache = %self.name, error = %e, "unreadable value in L2, treated as a miss");
                None
            }
        }
    }

    /// Read one key from L2 (`Ok(None)`: no L2, a miss, or unreadable bytes). An error is
    /// counted and reported here; the caller only decides what it means for the rest of the
    /// load (see [`unreachable`]).
    async fn l2_read(
        &self,
        key: &str,
        full: &str,
        epoch: u64,
        fill_l1: bool,
    ) -> Result<Option<Found<V>>> {
        let Some(l2) = self.engine.inner.l2.as_ref() else {
            return Ok(None);
        };
        // Timed only for an observer that will hear of it (two clock reads per miss saved).
        let start = self.observe.then(Instant::now);
        match l2.get(full).await {
            Ok(answer) => {
                let latency = start.map_or(Duration::ZERO, |s| s.elapsed());
                // A read that must not fill L1 passes an epoch that never matches.
                let epoch = if fill_l1 { epoch } else { u64::MAX };
                Ok(self.accept_l2(key, answer, latency, epoch))
            }
            Err(e) => {
                self.l2_failed(L2Op::Get, &e);
                Err(e)
            }
        }
    }

    /// One L2 round trip for many keys; aligned with `keys`. Errors as in [`Self::l2_read`].
    async fn l2_read_many(&self, keys: Vec<String>) -> Result<Vec<Option<Found<V>>>> {
        let epochs: Vec<u64> = keys.iter().map(|k| self.epoch(k)).collect();
        let Some(l2) = self.engine.inner.l2.as_ref() else {
            return Ok(keys.iter().map(|_| None).collect());
        };
        let mut fulls = Vec::with_capacity(keys.len());
        for k in &keys {
            match self.keys.full(k) {
                Ok(f) => fulls.push(f),
                Err(_) => return Ok(keys.iter().map(|_| None).collect()),
            }
        }
        let start = self.observe.then(Instant::now);
        match l2.get_many(&fulls).await {
            Ok(answers) => {
                let latency = start.map_or(Duration::ZERO, |s| s.elapsed());
                Ok(keys
                    .iter()
                    .zip(epochs)
                    .zip(answers.into_iter().chain(std::iter::repeat(None)))
                    .map(|((k, epoch), a)| self.accept_l2(k, a, latency, epoch))
                    .collect())
            }
            Err(e) => {
                self.l2_failed(L2Op::Get, &e);
                Err(e)
            }
        }
    }

    /// Store what a loader produced in both tiers and return it.
    fn store_prepare(
        &self,
        value: Option<Arc<V>>,
        delta: Duration,
        l1: Option<Duration>,
        l2: Option<Duration>,
    ) -> Result<(Prepared<V>, Option<Vec<u8>>)> {
        let prepared = self.prepare(value, delta, l1, l2)?;
        let mut bytes = prepared.bytes.clone();
        if let (Some(l2), Some(b)) = (&self.engine.inner.l2, &bytes) {
            if b.len() > l2.max_value_size() {
                bump(&self.stats.oversize);
                tracing::warn!(
                    cache = %self.name,
                    size = b.len(),
                    max = l2.max_value_size(),
                    "loaded value exceeds the L2 maximum size; kept in L1 only"
                );
                bytes = None;
            }
        }
        Ok((prepared, bytes))
    }

    /// Lead the load of one key: L2, then (with a lease) the loader, then both tiers.
    ///
    /// `refresh` is set for an early refresh of a live L1 entry: `(its expiry, its value)`.
    /// An L2 value is then taken only if it is newer than that entry. When the policy says an
    /// L2 value is due for refresh, waiters get it at once and the load continues here.
    #[allow(clippy::too_many_arguments)]
    async fn fill_one<F, Fut, E>(
        self: Arc<Self>,
        key: String,
        full: String,
        options: CallOptions,
        loader: F,
        refresh: Option<(u64, Option<Option<Arc<V>>>)>,
        mut stale: Option<(Option<Arc<V>>, u64)>,
        guard: &FlightGuard<V, C>,
    ) -> Shared<V>
    where
        F: FnOnce(LoadContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Loaded<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let epoch = self.epoch(&key);
        let mut current: Option<Option<Arc<V>>> = refresh.as_ref().and_then(|(_, v)| v.clone());
        // The value at hand before L2 is read (an L2 hit may replace L1's entry), and its age.
        let held = current
            .clone()
            .or_else(|| stale.as_ref().map(|(v, _)| v.clone()));
        let held_age = self.age(&key, &held);
        let read = if options.skip_l2_read {
            Ok(None)
        } else {
            self.l2_read(&key, &full, epoch, !options.skip_l1_write)
                .await
        };
        let (l2_found, l2_down) = match read {
            Ok(found) => (found, false),
            Err(e) => (None, unreachable(&e)),
        };
        let l2_found = match l2_found {
            Some(f) if f.stale => {
                if stale.is_none() {
                    stale = Some((f.value, f.stale_until_ms));
                }
                None
            }
            other => other,
        };
        if let Some(found) = l2_found {
            let newer = match (&refresh, found.l2_expires_at_ms) {
                // `Cache::refresh`: reload whatever L2 holds.
                (Some((RELOAD, _)), _) => false,
                (Some((floor, _)), Some(exp)) => exp > *floor,
                (Some(_), None) => true,
                (None, _) => true,
            };
            if newer {
                if !self.l2_refresh_due(&found) {
                    return Ok(found.value);
                }
                if refresh.is_none() {
                    bump(&self.stats.early_refreshes);
                    self.observer.on_event(CacheEvent::EarlyRefresh);
                }
                guard.publish_early(&key, Ok(found.value.clone()));
                current = Some(found.value);
            }
        }
        // L2 just failed to answer a read: a lease would wait for it again (a frozen server
        // costs a full response timeout per call). Load without one, filling L1 only. A load
        // that will not write L2 takes no lease either: other instances would wait for a
        // value that never comes.
        let fill = if l2_down || options.skip_l2_write {
            Fill::LocalOnly
        } else {
            match self.take_lease(&key, &full, current.is_some(), epoch).await {
                Ok(fill) => fill,
                Err(found) => return Ok(found),
            }
        };
        if let (Fill::Skip, Some(value)) = (&fill, &current) {
            // Another instance is refreshing this key; keep serving what we have.
            return Ok(value.clone());
        }
        if current.is_none() {
            bump(&self.stats.sync_loads);
        }
        let start = Instant::now();
        let fallback: Option<Option<Arc<V>>> = current
            .clone()
            .or_else(|| stale.as_ref().map(|(v, _)| v.clone()));
        let age = if same_value(&fallback, &held) {
            held_age
        } else {
            None
        };
        let context = LoadContext::new(key.clone(), fallback.clone(), age);
        let loaded = self
            .run_loader(loader(context), &key, fallback.as_ref(), guard, &options)
            .await;
        let delta = start.elapsed();
        bump(&self.stats.loads);
        self.observer.on_event(CacheEvent::Load {
            duration: delta,
            ok: loaded.is_ok(),
        });
        let loaded = match loaded {
            Ok(l) => l,
            Err(e) => {
                bump(&self.stats.load_errors);
                if let Fill::Lease(lk, token) = &fill {
                    self.release_lease(lk, token).await;
                }
                if let Some(value) = current {
                    // A failed refresh: the value in L1 is still fresh.
                    tracing::warn!(cache = %self.name, error = %e, "early refresh failed; keeping the current value");
                    return Ok(value);
                }
                if let Some((value, until)) = stale {
                    // Fail-safe (stale values are only kept when it is on).
                    tracing::warn!(cache = %self.name, error = %e, "loader failed; fail-safe serves the stale value");
                    self.serve_stale(&key, &value, until, epoch);
                    return Ok(value);
                }
                return Err(e);
            }
        };
        let (value, l1_ttl, l2_ttl, cache, tags) = match self.answer(loaded, fallback, &options) {
            Ok(a) => a,
            Err(e) => {
                bump(&self.stats.load_errors);
                if let Fill::Lease(lk, token) = &fill {
                    self.release_lease(lk, token).await;
                }
                return Err(e);
            }
        };
        if !cache {
            if let Fill::Lease(lk, token) = &fill {
                self.release_lease(lk, token).await;
            }
            return Ok(value);
        }
        let (prepared, bytes) = match self.store_prepare(value, delta, l1_ttl, l2_ttl) {
            Ok(p) => p,
            Err(e) => {
                if let Fill::Lease(lk, token) = &fill {
                    self.release_lease(lk, token).await;
                }
                return Err(e);
            }
        };
        // Checked again right before filling L1 (no await in between): a `set` or
        // `invalidate` that ran during the load or the write wins.
        let mut fresh = true;
        let mut stored = false;
        match (&self.engine.inner.l2, bytes, fill) {
            (Some(l2), Some(bytes), Fill::Lease(lk, token)) => {
                let start = self.observe.then(Instant::now);
                match l2
                    .set_if_lease(&lk, &token, &full, bytes, prepared.l2_ttl)
                    .await
                {
                    Ok(true) => {
                        self.l2_written(start, 1);
                        stored = true;
                    }
                    Ok(false) => {
                        self.l2_written(start, 1);
                        fresh = false;
                    }
                    Err(e) => self.l2_failed(L2Op::Set, &e),
                }
            }
            (Some(l2), Some(bytes), Fill::Plain) => {
                let start = self.observe.then(Instant::now);
                match l2.set(&full, bytes, prepared.l2_ttl).await {
                    Ok(()) => {
                        self.l2_written(start, 1);
                        stored = true;
                    }
                    Err(e) => self.l2_failed(L2Op::Set, &e),
                }
            }
            (Some(l2), None, Fill::Lease(lk, token)) => {
                // Nothing to write (oversized or raw-mode absence): free the lease.
                let _ = l2;
                self.release_lease(&lk, &token).await;
            }
            (_, _, Fill::Skip) => fresh = false,
            _ => {}
        }
        if stored && !tags.is_empty() && !self.tag_fill(&key, &full, &tags, prepared.l2_ttl).await {
            fresh = false;
        }
        fresh = fresh && self.epoch(&key) == epoch;
        if fresh && !options.skip_l1_write {
            let entry = self.entry_of(prepared.value.clone(), &prepared);
            fresh = self.insert_if(&key, epoch, entry);
        }
        if !fresh {
            bump(&self.stats.stale_fills_refused);
            tracing::debug!(cache = %self.name, "key changed during the load; the loaded value is returned but not cached");
        }
        Ok(prepared.value)
    }

    /// What a loader's answer means: the value (the previous one for "unchanged"), its TTLs
    /// (the answer's, else the call's), whether to cache it, and its tags.
    #[allow(clippy::type_complexity)]
    fn answer(
        &self,
        loaded: Loaded<V>,
        previous: Option<Option<Arc<V>>>,
        options: &CallOptions,
    ) -> Result<(
        Option<Arc<V>>,
        Option<Duration>,
        Option<Duration>,
        bool,
        Vec<String>,
    )> {
        let l1 = loaded.l1_ttl.or(options.l1_ttl);
        let l2 = loaded.l2_ttl.or(options.l2_ttl);
        check_ttls(l1, l2, &self.config)?;
        for t in &loaded.tags {
            crate::key::validate_key(t, 256)?;
            self.tag_keys(t)?;
        }
        let value = match loaded.outcome {
            Outcome::Value(v) => Some(Arc::new(v)),
            Outcome::Absent => None,
            Outcome::Unchanged => previous.ok_or_else(|| {
                Error::new(
                    ErrorKind::Loader,
                    "the loader answered \"unchanged\" but no previous value was at hand",
                )
            })?,
        };
        Ok((value, l1, l2, loaded.cache, loaded.tags))
    }

    /// How long ago this instance stored `previous` in L1, when that is where it came from.
    fn age(&self, key: &str, previous: &Option<Option<Arc<V>>>) -> Option<Duration> {
        let previous = previous.as_ref()?;
        let now = self.engine.inner.now_ms();
        let entry = self.engine.inner.l1.get(self.ns, key, now)?;
        let same = match (&entry.value, previous) {
            (None, None) => true,
            (Some(any), Some(v)) => any
                .clone()
                .downcast::<V>()
                .is_ok_and(|held| Arc::ptr_eq(&held, v)),
            _ => false,
        };
        same.then(|| Duration::from_millis(now.saturating_sub(entry.born_ms)))
    }

    /// Record a filled key under its tags. When that fails the value must not stay in L2
    /// outside its tags (an `invalidate_tag` would miss it): it is deleted (or the delete is
    /// queued for recovery, with the tags). Returns whether the tags were recorded.
    async fn tag_fill(&self, key: &str, full: &str, tags: &[String], ttl: Duration) -> bool {
        let Some(l2) = &self.engine.inner.l2 else {
            return true;
        };
        let tag_keys: Vec<String> = tags
            .iter()
            .map(|t| crate::key::tag_key(&self.engine.inner.prefix, &self.name, t))
            .collect();
        let mut failed = None;
        for tag_key in &tag_keys {
            if let Err(e) = l2.tag_add(tag_key, full, ttl).await {
                failed = Some(e);
                break;
            }
        }
        let Some(e) = failed else {
            return true;
        };
        self.l2_failed(L2Op::Set, &e);
        if let Err(e) = l2.delete(&[full.to_owned()]).await {
            self.l2_failed(L2Op::Delete, &e);
            if e.is_transient() {
                self.engine.inner.queue_recovery(
                    full.to_owned(),
                    Replay::delete(Vec::new(), tag_keys, ttl),
                    Some((self.channel.clone(), key.to_owned())),
                );
            }
        }
        false
    }

    /// Give a lease back early (after a failed load), only if it is still ours.
    async fn release_lease(&self, lease_key: &str, token: &[u8]) {
        if let Some(l2) = &self.engine.inner.l2 {
            // A compare-and-set of an empty marker that expires at once frees the lease
            // without touching another holder's.
            let _ = l2
                .set_if_lease(
                    lease_key,
                    token,
                    lease_key,
                    Vec::new(),
                    Duration::from_millis(1),
                )
                .await;
        }
    }

    /// Lead the load of many keys: one L2 round trip, a lease per missing key (waiting for
    /// another instance's fill like a single-key load), one loader call for the keys left,
    /// under the hard loader timeout, with fail-safe fallbacks; then both tiers, each fill
    /// compare-and-set against its lease.
    async fn fill_many<F, Fut, E>(
        self: Arc<Self>,
        keys: Vec<String>,
        loader: F,
        mut stale: HashMap<String, (Option<Arc<V>>, u64)>,
    ) -> HashMap<String, Shared<V>>
    where
        F: FnOnce(Vec<String>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<HashMap<String, V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let mut results: HashMap<String, Shared<V>> = HashMap::with_capacity(keys.len());
        let epochs: HashMap<String, u64> =
            keys.iter().map(|k| (k.clone(), self.epoch(k))).collect();
        let epoch_of = |k: &str| epochs.get(k).copied().unwrap_or(0);
        let (found, l2_down) = match self.l2_read_many(keys.clone()).await {
            Ok(found) => (found, false),
            Err(e) => (keys.iter().map(|_| None).collect(), unreachable(&e)),
        };
        let mut missing = Vec::new();
        for (k, f) in keys.into_iter().zip(found) {
            match f {
                Some(f) if !f.stale => {
                    results.insert(k, Ok(f.value));
                }
                Some(f) => {
                    if self.config.fail_safe {
                        stale
                            .entry(k.clone())
                            .or_insert((f.value, f.stale_until_ms));
                    }
                    missing.push(k);
                }
                None => missing.push(k),
            }
        }
        if missing.is_empty() {
            return results;
        }
        // A lease per key, in one batch; keys another instance is filling are waited for.
        let mut to_load: Vec<(String, String, Fill)> = Vec::new();
        let mut named = Vec::with_capacity(missing.len());
        for k in missing {
            match self.keys.full(&k) {
                Ok(full) => named.push((k, full)),
                Err(e) => {
                    results.insert(k, Err(e));
                }
            }
        }
        // As in `fill_one`: no leases right after L2 failed to answer the read.
        let (fills, delivered) = if l2_down {
            let fills = named
                .into_iter()
                .map(|(k, full)| (k, full, Fill::LocalOnly))
                .collect();
            (fills, Vec::new())
        } else {
            self.take_leases(named, &epochs, false).await
        };
        for (k, value) in delivered {
            results.insert(k, Ok(value));
        }
        to_load.extend(fills);
        if to_load.is_empty() {
            return results;
        }
        bump(&self.stats.sync_loads);
        let start = Instant::now();
        let names: Vec<String> = to_load.iter().map(|(k, _, _)| k.clone()).collect();
        let loaded = self.run_batch_loader(loader(names)).await;
        let delta = start.elapsed();
        bump(&self.stats.loads);
        self.observer.on_event(CacheEvent::Load {
            duration: delta,
            ok: loaded.is_ok(),
        });
        let mut values = match loaded {
            Ok(m) => m,
            Err(e) => {
                bump(&self.stats.load_errors);
                for (k, _, fill) in to_load {
                    if let Fill::Lease(lk, token) = &fill {
                        self.release_lease(lk, token).await;
                    }
                    match stale.remove(&k) {
                        Some((value, until)) => {
                            tracing::warn!(cache = %self.name, error = %e, "batch loader failed; fail-safe serves the stale value");
                            self.serve_stale(&k, &value, until, epoch_of(&k));
                            results.insert(k, Ok(value));
                        }
                        None => {
                            results.insert(k, Err(e.clone()));
                        }
                    }
                }
                return results;
            }
        };
        let mut fills = Vec::new();
        for (k, full, fill) in to_load {
            let v = values.remove(&k);
            match self.store_prepare(v.map(Arc::new), delta, None, None) {
                Ok((prepared, bytes)) => fills.push((k, full, fill, prepared, bytes)),
                Err(e) => {
                    if let Fill::Lease(lk, token) = &fill {
                        self.release_lease(lk, token).await;
                    }
                    results.insert(k, Err(e));
                }
            }
        }
        // Compare-and-set fills in one batch; plain ones (no leases) in one batch.
        let mut cas = Vec::new();
        let mut plain = Vec::new();
        let mut stored = vec![true; fills.len()];
        for (i, (_, full, fill, prepared, bytes)) in fills.iter_mut().enumerate() {
            match (bytes.take(), &*fill) {
                (Some(value), Fill::Lease(lk, token)) => cas.push((
                    i,
                    LeaseFill {
                        lease_key: lk.clone(),
                        token: token.clone(),
                        key: full.clone(),
                        value,
                        ttl: prepared.l2_ttl,
                    },
                )),
                (None, Fill::Lease(lk, token)) => self.release_lease(lk, token).await,
                (Some(value), Fill::Plain) => plain.push(RemoteEntry {
                    key: full.clone(),
                    value,
                    ttl: prepared.l2_ttl,
                }),
                (_, Fill::Skip) => stored[i] = false,
                _ => {}
            }
        }
        if let Some(l2) = &self.engine.inner.l2 {
            if !cas.is_empty() {
                let (at, batch): (Vec<usize>, Vec<LeaseFill>) = cas.into_iter().unzip();
                let start = self.observe.then(Instant::now);
                match l2.set_if_lease_many(batch).await {
                    Ok(answers) => {
                        self.l2_written(start, at.len());
                        for (i, ok) in at.into_iter().zip(answers) {
                            stored[i] = ok;
                        }
                    }
                    Err(e) => self.l2_failed(L2Op::Set, &e),
                }
            }
            if !plain.is_empty() {
                let n = plain.len();
                let start = self.observe.then(Instant::now);
                match l2.set_many(plain).await {
                    Ok(()) => self.l2_written(start, n),
                    Err(e) => self.l2_failed(L2Op::Set, &e),
                }
            }
        }
        let written = stored;
        for ((k, _, _, prepared, _), stored) in fills.into_iter().zip(written) {
            let entry = self.entry_of(prepared.value.clone(), &prepared);
            if !(stored && self.insert_if(&k, epoch_of(&k), entry)) {
                bump(&self.stats.stale_fills_refused);
            }
            results.insert(k, Ok(prepared.value));
        }
        results
    }

    /// Take the fill leases of one or many keys: one batched `SET NX`; keys whose lease
    /// another instance holds are skipped when the caller has a value at hand
    /// (`have_value`, an early refresh), else polled (one batched read per round) for up to
    /// `lease_wait`, then taken over, or loaded without writing. Returns the fills, and the
    /// values other instances delivered meanwhile.
    #[allow(clippy::type_complexity)]
    async fn take_leases(
        &self,
        keys: Vec<(String, String)>,
        epochs: &HashMap<String, u64>,
        have_value: bool,
    ) -> (Vec<(String, String, Fill)>, Vec<(String, Option<Arc<V>>)>) {
        let mut fills = Vec::with_capacity(keys.len());
        let mut delivered = Vec::new();
        let Some(l2) = self.engine.inner.l2.as_ref().filter(|_| self.config.leases) else {
            fills.extend(keys.into_iter().map(|(k, f)| (k, f, Fill::Plain)));
            return (fills, delivered);
        };
        let mut leased = Vec::with_capacity(keys.len());
        for (k, full) in keys {
            match self.lease_key(&full) {
                Some(lk) => leased.push((k, full, lk)),
                None => fills.push((k, full, Fill::Plain)),
            }
        }
        if leased.is_empty() {
            return (fills, delivered);
        }
        let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)).into_bytes();
        let ttl = self.config.lease_ttl;
        let lease_keys: Vec<String> = leased.iter().map(|(_, _, lk)| lk.clone()).collect();
        let mut busy = Vec::new();
        match l2.set_nx_many(&lease_keys, &token, ttl).await {
            Ok(taken) => {
                for ((k, full, lk), ok) in leased.into_iter().zip(taken) {
                    if ok {
                        self.observer.on_event(CacheEvent::LeaseAcquired);
                        fills.push((k, full, Fill::Lease(lk, token.clone())));
                    } else {
                        busy.push((k, full, lk));
                    }
                }
            }
            Err(e) => {
                self.l2_failed(L2Op::Lease, &e);
                fills.extend(leased.into_iter().map(|(k, f, _)| (k, f, Fill::LocalOnly)));
                return (fills, delivered);
            }
        }
        if have_value {
            fills.extend(busy.into_iter().map(|(k, f, _)| (k, f, Fill::Skip)));
            return (fills, delivered);
        }
        if busy.is_empty() {
            return (fills, delivered);
        }
        bump(&self.stats.lease_waits);
        self.observer.on_event(CacheEvent::LeaseWait);
        let deadline = Instant::now() + self.config.lease_wait;
        let mut pause = Duration::from_millis(1);
        while !busy.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
            pause = (pause * 2).min(Duration::from_millis(10));
            let fulls: Vec<String> = busy.iter().map(|(_, f, _)| f.clone()).collect();
            let start = Instant::now();
            match l2.get_many(&fulls).await {
                Ok(answers) => {
                    let mut still = Vec::with_capacity(busy.len());
                    for ((k, full, lk), a) in busy.into_iter().zip(answers) {
                        // Only a value counts: a poll that finds nothing yet is no L2 miss.
                        let found = a.and_then(|bytes| {
                            let epoch = epochs.get(&k).copied().unwrap_or(0);
                            self.accept_l2(&k, Some(bytes), start.elapsed(), epoch)
                        });
                        match found {
                            Some(found) if !found.stale => delivered.push((k, found.value)),
                            _ => still.push((k, full, lk)),
                        }
                    }
                    busy = still;
                }
                // Keep waiting: the holders may still deliver.
                Err(e) => self.l2_failed(L2Op::Get, &e),
            }
        }
        if busy.is_empty() {
            return (fills, delivered);
        }
        // The holders did not deliver in time: take their leases over, else load without
        // writing (we cannot prove our values are not stale).
        let lease_keys: Vec<String> = busy.iter().map(|(_, _, lk)| lk.clone()).collect();
        match l2.set_nx_many(&lease_keys, &token, ttl).await {
            Ok(taken) => {
                for ((k, full, lk), ok) in busy.into_iter().zip(taken) {
                    let fill = if ok {
                        Fill::Lease(lk, token.clone())
                    } else {
                        Fill::Skip
                    };
                    fills.push((k, full, fill));
                }
            }
            Err(e) => {
                self.l2_failed(L2Op::Lease, &e);
                fills.extend(busy.into_iter().map(|(k, f, _)| (k, f, Fill::LocalOnly)));
            }
        }
        (fills, delivered)
    }

    /// Run a batch loader under the hard loader timeout.
    async fn run_batch_loader<Fut, E>(&self, fut: Fut) -> Result<HashMap<String, V>>
    where
        Fut: Future<Output = std::result::Result<HashMap<String, V>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match self.config.loader_hard_timeout {
            Some(hard) => match tokio::time::timeout(hard, fut).await {
                Ok(r) => r.map_err(|e| Error::loader(e.into())),
                Err(_) => Err(Error::new(
                    ErrorKind::Timeout,
                    format!("batch loader exceeded its hard timeout of {hard:?}"),
                )),
            },
            None => fut.await.map_err(|e| Error::loader(e.into())),
        }
    }
}

/// Owns the senders of a load in flight. Finishing removes the keys from the in-flight map and
/// sends each result; dropping without finishing (a panic, a runtime shutting down) sends an
/// error instead, so no waiter ever hangs.
struct FlightGuard<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    inner: Arc<CacheInner<V, C>>,
    flights: Vec<(String, watch::Sender<Option<Shared<V>>>)>,
}

impl<V, C> FlightGuard<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Give waiters a result now while the leader keeps working (early refresh): the key
    /// stays in flight so no second load starts.
    fn publish_early(&self, key: &str, result: Shared<V>) {
        for (k, tx) in &self.flights {
            if k == key {
                tx.send_replace(Some(result.clone()));
            }
        }
    }

    fn finish(mut self, result: impl Fn(&str) -> Shared<V>) {
        let flights = std::mem::take(&mut self.flights);
        self.release(flights, result);
    }

    fn release(
        &self,
        flights: Vec<(String, watch::Sender<Option<Shared<V>>>)>,
        result: impl Fn(&str) -> Shared<V>,
    ) {
        {
            let mut map = self.inner.lock_inflight();
            for (k, tx) in &flights {
                if map
                    .get(k)
                    .is_some_and(|rx| rx.same_channel(&tx.subscribe()))
                {
                    map.remove(k);
                }
            }
        }
        for (k, tx) in flights {
            let r = result(&k);
            tx.send_replace(Some(r));
        }
    }
}

impl<V, C> Drop for FlightGuard<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    fn drop(&mut self) {
        if self.flights.is_empty() {
            return;
        }
        let flights = std::mem::take(&mut self.flights);
        let err = if std::thread::panicking() {
            Error::new(ErrorKind::LoaderPanicked, "the loader panicked")
        } else {
            Error::new(
                ErrorKind::Closed,
                "the load was abandoned (runtime shutting down)",
            )
        };
        self.release(flights, |_| Err(err.clone()));
    }
}

async fn wait<V>(mut rx: Flight<V>) -> Shared<V> {
    match rx.wait_for(|r| r.is_some()).await {
        Ok(r) => match &*r {
            Some(result) => result.clone(),
            None => Err(Error::new(ErrorKind::Closed, "load ended without a result")),
        },
        Err(_) => Err(Error::new(ErrorKind::Closed, "load ended without a result")),
    }
}

fn spawn<F>(span: tracing::Span, fut: F) -> Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    use tracing::Instrument;
    let handle = tokio::runtime::Handle::try_current().map_err(|_| {
        Error::new(
            ErrorKind::InvalidConfig,
            "loads run on the tokio runtime: call the cache from within one",
        )
    })?;
    handle.spawn(fut.instrument(span));
    Ok(())
}

/// Which operation a span describes.
#[derive(Debug, Clone, Copy)]
enum SpanKind {
    Get,
    Load,
    Refresh,
    Invalidate,
}

/// Displays a key as its 64-bit FNV-1a hash in hex (what spans carry instead of the key).
struct KeyHash<'a>(&'a str);

impl std::fmt::Display for KeyHash<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", crate::key::fnv1a(self.0))
    }
}
