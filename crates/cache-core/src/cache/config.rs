//! Settings of one typed cache.

use super::*;

/// Settings of one typed cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct CacheConfig {
    /// How long a value is served from L1 (default 30 s). Must not exceed `l2_ttl`.
    #[serde(with = "crate::durations::duration_text")]
    pub l1_ttl: Duration,
    /// How long a value lives in L2 (default 10 min).
    #[serde(with = "crate::durations::duration_text")]
    pub l2_ttl: Duration,
    /// How long "the source has no such key" is remembered (default 30 s; L1 uses the
    /// smaller of this and `l1_ttl`).
    #[serde(with = "crate::durations::duration_text")]
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
    #[serde(with = "crate::durations::duration_text")]
    pub lease_ttl: Duration,
    /// How long an instance waits for another instance's load before loading itself
    /// (default 2 s).
    #[serde(with = "crate::durations::duration_text")]
    pub lease_wait: Duration,
    /// Fail-safe (default off): when the loader fails (or passes its hard timeout) and a
    /// value that expired less than `max_stale` ago is at hand, serve it (counted as stale)
    /// and retry the load only after `fail_safe_backoff`. Off by default because serving an
    /// expired value is a decision about your data that the cache should not make for you.
    pub fail_safe: bool,
    /// How long past its expiry a value may still be served by fail-safe (default 1 h).
    /// Values are kept that much longer in both tiers.
    #[serde(with = "crate::durations::duration_text")]
    pub max_stale: Duration,
    /// After serving a stale value, how long before the loader is tried again (default 10 s).
    #[serde(with = "crate::durations::duration_text")]
    pub fail_safe_backoff: Duration,
    /// Soft loader timeout: with a stale value at hand, a load slower than this returns the
    /// stale value to its callers now and keeps running to refresh the cache (default none).
    #[serde(with = "crate::durations::duration_text_opt")]
    pub loader_soft_timeout: Option<Duration>,
    /// Hard loader timeout: a load slower than this fails with [`ErrorKind::Timeout`] (or,
    /// with fail-safe, serves the stale value) (default none).
    #[serde(with = "crate::durations::duration_text_opt")]
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

/// The checks of [`CallOptions`] against the cache's settings.
impl CallOptions {
    /// The soft loader timeout in force for a load with these options.
    pub(crate) fn soft_timeout(&self, config: &CacheConfig) -> Option<Duration> {
        self.loader_soft_timeout.or(config.loader_soft_timeout)
    }

    /// The hard loader timeout in force for a load with these options.
    pub(crate) fn hard_timeout(&self, config: &CacheConfig) -> Option<Duration> {
        self.loader_hard_timeout.or(config.loader_hard_timeout)
    }

    /// Check these options for a read without a loader ([`crate::Cache::get_with`]): skipping
    /// both tiers reads nothing.
    pub fn check_read(&self, config: &CacheConfig) -> Result<()> {
        if self.skip_l1_read && self.skip_l2_read {
            return bad("a read that skips both L1 and L2 reads nothing".into());
        }
        self.check_common(config)
    }

    /// Check these options for a load ([`crate::Cache::get_or_load_with`]): skipping both
    /// tiers, reading and writing, leaves only the loader (call it directly).
    pub fn check_load(&self, config: &CacheConfig) -> Result<()> {
        if self.skip_l1_read && self.skip_l2_read && self.skip_l1_write && self.skip_l2_write {
            return bad(
                "a load that skips both tiers, reading and writing, is a plain loader call".into(),
            );
        }
        if self.background_l2_write {
            return bad("background_l2_write applies to writes (set_with), not to loads".into());
        }
        self.check_common(config)
    }

    /// Check these options for a write ([`crate::Cache::set_with`]): skipping both tiers
    /// writes nothing; a background L2 write needs an L2 write.
    pub fn check_write(&self, config: &CacheConfig) -> Result<()> {
        if self.skip_l1_write && self.skip_l2_write {
            return bad("a write that skips both L1 and L2 writes nothing".into());
        }
        if self.background_l2_write && self.skip_l2_write {
            return bad("background_l2_write contradicts skip_l2_write".into());
        }
        self.check_common(config)
    }

    fn check_common(&self, config: &CacheConfig) -> Result<()> {
        check_ttls(self.l1_ttl, self.l2_ttl, config)?;
        let soft = self.soft_timeout(config);
        let hard = self.hard_timeout(config);
        if soft.is_some_and(|d| d.is_zero()) || hard.is_some_and(|d| d.is_zero()) {
            return bad("loader timeouts must be positive".into());
        }
        if let (Some(soft), Some(hard)) = (soft, hard) {
            if soft >= hard {
                return bad(format!(
                    "loader_soft_timeout ({soft:?}) must be shorter than loader_hard_timeout ({hard:?})"
                ));
            }
        }
        Ok(())
    }
}

/// Refuse zero TTLs and an L1 TTL above the L2 TTL in force.
pub(crate) fn check_ttls(
    l1: Option<Duration>,
    l2: Option<Duration>,
    config: &CacheConfig,
) -> Result<()> {
    if l1.is_some_and(|d| d.is_zero()) || l2.is_some_and(|d| d.is_zero()) {
        return bad("a TTL must be positive".into());
    }
    if let Some(l1) = l1 {
        let l2 = l2.unwrap_or(config.l2_ttl);
        if l1 > l2 {
            return bad(format!(
                "the L1 TTL ({l1:?}) must not exceed the L2 TTL ({l2:?})"
            ));
        }
    }
    Ok(())
}

fn bad(message: String) -> Result<()> {
    Err(Error::new(ErrorKind::InvalidConfig, message))
}
