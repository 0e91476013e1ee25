//! Building a typed cache from an engine.

use super::*;

/// Builds a [`Cache`]; get one from [`Engine::cache`].
pub struct CacheBuilder<V, C> {
    engine: Engine,
    namespace: String,
    config: CacheConfig,
    policy: Arc<dyn RefreshPolicy>,
    required: Capabilities,
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
            required: Capabilities::NONE,
            _types: PhantomData,
        }
    }

    /// Declare the optional L2 abilities this cache's calls will use (e.g.
    /// [`Capabilities::TAGS`] for `set_with_tags` / `invalidate_tag`,
    /// [`Capabilities::PREFIX_DELETE`] for `clear_namespace`): [`CacheBuilder::build`] then
    /// fails with [`ErrorKind::InvalidConfig`] when the engine's L2 store lacks one, instead of
    /// the first such call. Fill leases need no declaration: with leases on (the default) the
    /// build always checks that the store has them.
    pub fn require(mut self, capabilities: Capabilities) -> Self {
        self.required = self.required | capabilities;
        self
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
        self.check_capabilities()?;
        let keys = KeySpace::new(
            self.engine.prefix(),
            &self.namespace,
            self.config.schema_version,
        )?
        .with_max_key_len(self.config.max_key_len);
        let observer = self.engine.observer().for_cache(&self.namespace);
        let state = self
            .engine
            .namespace_state::<V>(&self.namespace, observer.clone())?;
        state.joined(keys.base(), self.config.fail_safe);
        let channel = format!("{}__inv", keys.base());
        if let Some(bus) = self.engine.bus() {
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
                misses: lease::MissShare::new(),
                policy: self.policy,
                _codec: PhantomData,
            }),
        }
        .with_reload())
    }
}

impl<V, C> CacheBuilder<V, C> {
    /// The store must have what this cache will use: fill leases when they are on, and what
    /// [`CacheBuilder::require`] declared.
    fn check_capabilities(&self) -> Result<()> {
        let ns = &self.namespace;
        let Some(l2) = self.engine.remote() else {
            if self.required.is_empty() {
                return Ok(());
            }
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "cache '{ns}' requires {} from L2, but the engine has no L2",
                    self.required
                ),
            ));
        };
        let has = l2.capabilities();
        let missing = has.missing(self.required);
        if !missing.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("cache '{ns}' requires {missing}, which the {} store does not support (it has: {has})", l2.kind()),
            ));
        }
        if self.config.leases && !has.contains(Capabilities::LEASES) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("the {} store does not support fill leases, which cache '{ns}' uses: build it with `with_leases(false)` (no cross-instance stampede protection) or use a store that has them", l2.kind()),
            ));
        }
        Ok(())
    }
}

impl Engine {
    /// Start building a typed cache for `namespace`, with values `V` encoded by `C`.
    pub fn cache<V, C>(&self, namespace: impl Into<String>) -> CacheBuilder<V, C>
    where
        V: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
        C: Codec,
    {
        CacheBuilder::new(self.clone(), namespace.into(), CacheConfig::default())
    }
}
