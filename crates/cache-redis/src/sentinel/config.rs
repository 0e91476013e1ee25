//! [`SentinelConfig`] and [`SentinelConfigBuilder`]: the sentinels to ask, the master name,
//! and the settings of the data connections to whichever node is master.

use std::fmt;
use std::time::Duration;

use cache_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

use crate::config::{duration_text, RedisConfig};
use crate::target::{self, Target, REDACTED};

/// Default master name: `mymaster` (the name in Redis' sample `sentinel.conf`).
pub const DEFAULT_MASTER_NAME: &str = "mymaster";
/// The port of a sentinel URL without one: 26379.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;
/// Default pause between two questions to the sentinels while a failover is under way: 100 ms.
pub const DEFAULT_REDISCOVER_INTERVAL: Duration = Duration::from_millis(100);

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
///     .with_sentinels(["redis://10.0.0.1:26379", "redis://10.0.0.2:26379", "redis://10.0.0.3"])
///     .with_master_name("cache")
///     .with_redis(
///         RedisConfig::builder()
///             .with_url("redis://any-host/2") // database 2 on whichever node is master
///             .with_password("s3cret")
///             .with_response_timeout(Duration::from_millis(200))
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

    pub(super) fn sentinel_targets(&self) -> Result<Vec<Target>> {
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
    pub(super) fn master_config(&self, host: &str, port: u16) -> Result<RedisConfig> {
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
    pub fn with_sentinels<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.sentinels = urls.into_iter().map(Into::into).collect();
        self
    }

    /// One more sentinel URL.
    pub fn with_sentinel(mut self, url: impl Into<String>) -> Self {
        self.config.sentinels.push(url.into());
        self
    }

    /// The name the sentinels monitor the master by (default `mymaster`).
    pub fn with_master_name(mut self, name: impl Into<String>) -> Self {
        self.config.master_name = name.into();
        self
    }

    /// Credentials for the sentinels (override the URLs').
    pub fn with_sentinel_credentials(
        mut self,
        username: Option<&str>,
        password: impl Into<String>,
    ) -> Self {
        self.config.sentinel_username = username.map(str::to_owned);
        self.config.sentinel_password = Some(password.into());
        self
    }

    /// The data connection settings (credentials, database, TLS, timeouts, limits).
    pub fn with_redis(mut self, config: RedisConfig) -> Self {
        self.config.redis = config;
        self
    }

    /// Pause between questions to the sentinels during a failover (default 100 ms).
    pub fn with_rediscover_interval(mut self, interval: Duration) -> Self {
        self.config.rediscover_interval = interval;
        self
    }

    /// Serve `get` / `get_many` from a replica (default off); reads may then be stale (see
    /// [`SentinelConfig::replica_reads`]).
    pub fn with_replica_reads(mut self, on: bool) -> Self {
        self.config.replica_reads = on;
        self
    }

    /// Validate and return the config.
    pub fn build(self) -> Result<SentinelConfig> {
        self.config.validate()?;
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            .with_url("redis://app:pw@placeholder:1/3")
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
            .with_sentinels(["redis://:url-secret@s1:26379"])
            .with_sentinel_credentials(None, "field-secret")
            .with_redis(
                RedisConfig::builder()
                    .with_password("data-secret")
                    .build()?,
            )
            .build()?;
        let shown = format!(
            "{c:?} {:?}",
            SentinelConfig::builder().with_sentinel_credentials(None, "x-secret")
        );
        for secret in ["url-secret", "field-secret", "data-secret", "x-secret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        Ok(())
    }
}
