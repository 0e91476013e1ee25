//! [`ClusterConfig`]: a serde struct plus a fluent builder.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use cache_core::{Error, ErrorKind, Result};
use cache_redis::support::{self, duration_text, Target, REDACTED};
use cache_redis::{CredentialsProvider, SharedCredentialsProvider};
use serde::{Deserialize, Serialize};

/// The same connect-timeout and value-size defaults as standalone Redis (1 s, 16 MiB).
pub use cache_redis::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_VALUE_SIZE};
/// Default bound on every operation, from the call to the answer, retries and redirects
/// included: 500 ms.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// Default number of retries of one request after a redirect (`MOVED`, `ASK`), a demoted
/// primary (`READONLY`), a cluster in transition (`TRYAGAIN`, `CLUSTERDOWN`) or a broken
/// connection: 5.
pub const DEFAULT_RETRIES: u32 = 5;
/// Default smallest wait before a retry that waits (`TRYAGAIN`, `CLUSTERDOWN`, no connection
/// to the slot's node): 10 ms.
pub const DEFAULT_RETRY_MIN_DELAY: Duration = Duration::from_millis(10);
/// Default largest wait before such a retry: 100 ms.
pub const DEFAULT_RETRY_MAX_DELAY: Duration = Duration::from_millis(100);

/// How to reach a Redis Cluster, and the time and size bounds of every call.
///
/// Build it with [`ClusterConfig::builder`], or deserialize it (every field is optional;
/// missing fields take their defaults). Durations deserialize from a number of milliseconds or
/// a string with a unit: `"500ms"`, `"1s"`.
///
/// | field | default | meaning |
/// |---|---|---|
/// | `urls` | none (required) | seed nodes, `redis://[[user]:password@]host[:port]` or `rediss://` (TLS, feature `tls`); any reachable node is enough, the others are discovered |
/// | `username` | none | ACL user; overrides the URLs' |
/// | `password` | none | overrides the URLs'; never printed |
/// | `connect_timeout` | 1 s | bound on connecting to one node (TCP, TLS, AUTH) |
/// | `response_timeout` | 500 ms | bound on every operation, from call to answer, retries and redirects included |
/// | `max_value_size` | 16 MiB | larger values are refused before anything is sent |
/// | `retries` | 5 | retries of one request after `MOVED`/`ASK`/`READONLY`/`TRYAGAIN`/`CLUSTERDOWN` or a broken connection |
/// | `retry_min_delay` | 10 ms | smallest wait before a retry that waits (`TRYAGAIN`, `CLUSTERDOWN`) |
/// | `retry_max_delay` | 100 ms | largest such wait |
/// | `tls_ca_file` | none | `rediss://` only: PEM file of the CA(s) to trust instead of the built-in roots |
/// | `tls_client_cert_file` / `tls_client_key_file` | none | `rediss://` only: PEM client certificate (chain) and key for nodes that require one (mutual TLS); both or neither |
/// | `credentials_provider` | none | not serialized: a [`CredentialsProvider`] asked for the user and password at every (re)connect of every node connection, instead of a fixed `password` |
/// | `replica_reads` | false | send reads (`GET`, `MGET`) to a random replica of the slot's shard; see below |
///
/// Replica reads (`replica_reads`, off by default) spread reads over the replicas, at the
/// cost of staleness: replication is asynchronous, so a read right after a write (by this
/// instance or another) may return the value before it, for as long as the replica lags
/// (usually under a millisecond, seconds under load or after a partition). Writes, deletes,
/// leases (`SET NX`, the compare-and-set script), tags and the invalidation bus still go to
/// the primaries, so the cache's own coherence (single flight, leases, L1 invalidation) holds;
/// what a replica read may add is an L1 fill with a value older than the latest write, kept
/// until its TTL or the next invalidation of the key.
///
/// The redis-rs cluster client has no response timeout by default (a hung node would hang
/// its callers forever); this config always sets one, and every call is additionally bounded
/// by a tokio timeout of `response_timeout`.
///
/// `Debug` never shows a password, neither the field nor the ones inside the URLs.
///
/// ```
/// use std::time::Duration;
/// use cache_cluster::ClusterConfig;
///
/// let config = ClusterConfig::builder()
///     .with_url("redis://10.0.0.1:7000")
///     .with_url("redis://10.0.0.2:7000")
///     .with_username("app")
///     .with_password("s3cret")
///     .with_response_timeout(Duration::from_millis(200))
///     .build()?;
/// assert!(!format!("{config:?}").contains("s3cret"));
///
/// let from_file: ClusterConfig = serde_json::from_str(
///     r#"{ "urls": ["redis://10.0.0.1:7000"], "response_timeout": "250ms" }"#,
/// )
/// .unwrap();
/// assert_eq!(from_file.response_timeout, Duration::from_millis(250));
/// # Ok::<(), cache_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// Seed nodes (see the table above). All must agree on TLS and credentials.
    pub urls: Vec<String>,
    /// ACL user name; overrides the one in the URLs. Needs a password.
    pub username: Option<String>,
    /// Password; overrides the one in the URLs. Never printed.
    pub password: Option<String>,
    /// Bound on establishing a connection to one node, including `AUTH`.
    #[serde(with = "duration_text")]
    pub connect_timeout: Duration,
    /// Bound on every operation, retries and redirects included; a hung node turns into
    /// [`ErrorKind::Timeout`] after it.
    #[serde(with = "duration_text")]
    pub response_timeout: Duration,
    /// Largest value accepted by writes, in bytes; larger ones fail with
    /// [`ErrorKind::ValueTooLarge`] before anything is sent.
    pub max_value_size: usize,
    /// Retries of one request after a redirect, a demoted primary, a cluster in transition or
    /// a broken connection (all within `response_timeout`).
    pub retries: u32,
    /// Smallest wait before a retry that waits (`TRYAGAIN`, `CLUSTERDOWN`, no connection).
    #[serde(with = "duration_text")]
    pub retry_min_delay: Duration,
    /// Largest wait before such a retry (the wait doubles per retry, with jitter).
    #[serde(with = "duration_text")]
    pub retry_max_delay: Duration,
    /// For `rediss://`: a PEM file with the CA certificate(s) to trust, replacing the built-in
    /// Mozilla root certificates. Certificates are always verified. Setting it with non-TLS
    /// URLs is an error.
    pub tls_ca_file: Option<PathBuf>,
    /// For `rediss://`: a PEM file with the client certificate (and its chain) presented to
    /// nodes that ask for one (mutual TLS). Needs `tls_client_key_file`.
    pub tls_client_cert_file: Option<PathBuf>,
    /// For `rediss://`: a PEM file with the private key of `tls_client_cert_file`. Its content
    /// is never printed.
    pub tls_client_key_file: Option<PathBuf>,
    /// Rotating credentials: asked for the user and password at every (re)connect of every
    /// node connection and of the bus's subscriber, instead of a fixed `password` (setting
    /// both is an error). Not serialized; set it in code.
    #[serde(skip)]
    pub credentials_provider: Option<SharedCredentialsProvider>,
    /// Read from replicas (off by default): see the staleness note above.
    pub replica_reads: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            urls: Vec::new(),
            username: None,
            password: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            retries: DEFAULT_RETRIES,
            retry_min_delay: DEFAULT_RETRY_MIN_DELAY,
            retry_max_delay: DEFAULT_RETRY_MAX_DELAY,
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
            credentials_provider: None,
            replica_reads: false,
        }
    }
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("urls", &self.redacted_urls())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("max_value_size", &self.max_value_size)
            .field("retries", &self.retries)
            .field("retry_min_delay", &self.retry_min_delay)
            .field("retry_max_delay", &self.retry_max_delay)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_client_cert_file", &self.tls_client_cert_file)
            .field("tls_client_key_file", &self.tls_client_key_file)
            .field("credentials_provider", &self.credentials_provider)
            .field("replica_reads", &self.replica_reads)
            .finish()
    }
}

/// The seeds of a validated config, with credentials applied.
#[derive(Clone)]
pub(crate) struct Seeds {
    pub(crate) targets: Vec<Target>,
    /// `cluster 127.0.0.1:7000,127.0.0.1:7001` (no credentials), for messages.
    pub(crate) endpoint: String,
    pub(crate) user: String,
    pub(crate) has_password: bool,
    pub(crate) tls: bool,
    pub(crate) secrets: Vec<String>,
}

impl ClusterConfig {
    /// A builder starting from the defaults (with no seed URL yet).
    pub fn builder() -> ClusterConfigBuilder {
        ClusterConfigBuilder::default()
    }

    /// The defaults with these seed URLs.
    pub fn from_urls<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClusterConfig {
            urls: urls.into_iter().map(Into::into).collect(),
            ..ClusterConfig::default()
        }
    }

    /// The seed URLs with their passwords replaced by `***` (what logs and `Debug` show).
    pub fn redacted_urls(&self) -> Vec<String> {
        self.urls.iter().map(|u| support::redact_url(u)).collect()
    }

    /// Check everything that can be checked without a server: the URLs (typed
    /// [`ErrorKind::InvalidUrl`] errors saying what is wrong), credentials, non-zero timeouts
    /// and size. [`ClusterConfigBuilder::build`] and [`crate::ClusterStore::connect`] call it.
    pub fn validate(&self) -> Result<()> {
        self.resolve().map(|_| ())
    }

    pub(crate) fn resolve(&self) -> Result<Seeds> {
        let bad = |m: String| Err(Error::new(ErrorKind::InvalidConfig, m));
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout must be greater than zero".into());
        }
        if self.response_timeout.is_zero() {
            return bad("response_timeout must be greater than zero".into());
        }
        if self.max_value_size == 0 {
            return bad("max_value_size must be greater than zero".into());
        }
        if self.retry_min_delay > self.retry_max_delay {
            return bad("retry_min_delay must not exceed retry_max_delay".into());
        }
        if self.urls.is_empty() {
            return bad(
                "no seed node: give at least one cluster node URL, e.g. redis://10.0.0.1:7000"
                    .into(),
            );
        }
        let mut targets = Vec::with_capacity(self.urls.len());
        for (i, url) in self.urls.iter().enumerate() {
            let target = support::resolve_with(
                url,
                self.username.as_deref(),
                self.password.as_deref(),
                self.credentials_provider.is_some(),
            )
            .map_err(|e| Error::new(e.kind(), format!("seed URL #{}: {}", i + 1, e.message())))?;
            if matches!(target.info.addr(), redis::ConnectionAddr::Unix(_)) {
                return bad(format!(
                    "seed URL #{} is a unix socket; Redis Cluster nodes announce TCP \
                     addresses, so seeds must be redis:// or rediss:// URLs",
                    i + 1
                ));
            }
            if target.info.redis_settings().db() != 0 {
                return bad(format!(
                    "seed URL #{} selects database {}; Redis Cluster only has database 0",
                    i + 1,
                    target.info.redis_settings().db()
                ));
            }
            targets.push(target);
        }
        let first = &targets[0];
        if let Some(t) = targets.iter().find(|t| t.tls != first.tls) {
            return bad(format!(
                "the seed URLs mix TLS and plain connections ({} and {}); use rediss:// for \
                 all or for none",
                first.endpoint, t.endpoint
            ));
        }
        if let Some(t) = targets
            .iter()
            .find(|t| t.user != first.user || t.has_password != first.has_password)
        {
            return bad(format!(
                "the seed URLs carry different credentials ({} and {}); give the user and \
                 password once, in the config's username / password",
                first.endpoint, t.endpoint
            ));
        }
        if targets
            .iter()
            .any(|t| t.info.redis_settings().password() != first.info.redis_settings().password())
        {
            return bad(
                "the seed URLs carry different passwords; give the password once, in the \
                 config's password"
                    .into(),
            );
        }
        support::check_tls_files(
            first.tls,
            self.tls_ca_file.is_some(),
            self.tls_client_cert_file.is_some(),
            self.tls_client_key_file.is_some(),
        )?;
        let endpoints: Vec<&str> = targets.iter().map(|t| t.endpoint.as_str()).collect();
        let mut secrets: Vec<String> = targets.iter().flat_map(|t| t.secrets.clone()).collect();
        secrets.sort();
        secrets.dedup();
        Ok(Seeds {
            endpoint: format!("cluster {}", endpoints.join(",")),
            user: first.user.clone(),
            has_password: first.has_password,
            tls: first.tls,
            secrets,
            targets,
        })
    }
}

/// Fluent builder of [`ClusterConfig`]; [`ClusterConfigBuilder::build`] validates.
#[derive(Clone, Default)]
pub struct ClusterConfigBuilder {
    config: ClusterConfig,
}

impl fmt::Debug for ClusterConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ClusterConfigBuilder")
            .field(&self.config)
            .finish()
    }
}

impl ClusterConfigBuilder {
    /// Add one seed node URL.
    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.config.urls.push(url.into());
        self
    }

    /// Add seed node URLs.
    pub fn with_urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.urls.extend(urls.into_iter().map(Into::into));
        self
    }

    /// The ACL user (overrides the URLs').
    pub fn with_username(mut self, username: impl Into<String>) -> Self {
        self.config.username = Some(username.into());
        self
    }

    /// The password (overrides the URLs').
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.config.password = Some(password.into());
        self
    }

    /// Bound on connecting to one node (default 1 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Bound on every operation, retries included (default 500 ms).
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.config.response_timeout = timeout;
        self
    }

    /// Largest value accepted, in bytes (default 16 MiB).
    pub fn with_max_value_size(mut self, bytes: usize) -> Self {
        self.config.max_value_size = bytes;
        self
    }

    /// Retries of one request after a redirect or a transient cluster error (default 5).
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.config.retries = retries;
        self
    }

    /// Smallest and largest wait before a waiting retry (default 10 ms and 100 ms).
    pub fn with_retry_delay(mut self, min_delay: Duration, max_delay: Duration) -> Self {
        self.config.retry_min_delay = min_delay;
        self.config.retry_max_delay = max_delay;
        self
    }

    /// For `rediss://`: trust the CA certificate(s) in this PEM file instead of the built-in
    /// roots.
    pub fn with_tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.tls_ca_file = Some(path.into());
        self
    }

    /// For `rediss://` nodes that require a client certificate (mutual TLS): the PEM files
    /// of the certificate (chain) and of its private key.
    pub fn with_tls_client_cert(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        self.config.tls_client_cert_file = Some(cert_file.into());
        self.config.tls_client_key_file = Some(key_file.into());
        self
    }

    /// Rotating credentials: `provider` is asked for the user and password at every
    /// (re)connect of every node connection. Replaces a fixed password (setting both is an
    /// error).
    pub fn with_credentials_provider(
        mut self,
        provider: impl CredentialsProvider + 'static,
    ) -> Self {
        self.config.credentials_provider = Some(SharedCredentialsProvider::new(provider));
        self
    }

    /// Read from replicas (default off); reads may then be stale (see [`ClusterConfig`]).
    pub fn with_replica_reads(mut self, on: bool) -> Self {
        self.config.replica_reads = on;
        self
    }

    /// Validate and return the config.
    pub fn build(self) -> Result<ClusterConfig> {
        self.config.validate()?;
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(r: Result<ClusterConfig>) -> Option<ErrorKind> {
        r.err().map(|e| e.kind())
    }

    #[test]
    fn defaults_and_validation() -> Result<()> {
        let c = ClusterConfig::default();
        assert_eq!(c.response_timeout, Duration::from_millis(500));
        assert_eq!(c.connect_timeout, Duration::from_secs(1));
        assert_eq!(
            c.validate().err().map(|e| e.kind()),
            Some(ErrorKind::InvalidConfig),
            "no seed URL"
        );
        let ok = ClusterConfig::builder()
            .with_url("redis://127.0.0.1:7000")
            .with_url("redis://127.0.0.1:7001/0")
            .build()?;
        assert_eq!(ok.urls.len(), 2);
        let seeds = ok.resolve()?;
        assert_eq!(seeds.endpoint, "cluster 127.0.0.1:7000,127.0.0.1:7001");
        assert_eq!(seeds.user, "default");
        assert_eq!(
            kind(ClusterConfig::builder().with_url("http://x").build()),
            Some(ErrorKind::InvalidUrl)
        );
        assert_eq!(
            kind(
                ClusterConfig::builder()
                    .with_url("redis+unix:///tmp/r.sock")
                    .build()
            ),
            Some(ErrorKind::InvalidConfig)
        );
        assert_eq!(
            kind(ClusterConfig::builder().with_url("redis://h:1/3").build()),
            Some(ErrorKind::InvalidConfig)
        );
        assert_eq!(
            kind(
                ClusterConfig::builder()
                    .with_url("redis://h:1")
                    .with_response_timeout(Duration::ZERO)
                    .build()
            ),
            Some(ErrorKind::InvalidConfig)
        );
        assert_eq!(
            kind(
                ClusterConfig::builder()
                    .with_url("redis://a:pw1@h:1")
                    .with_url("redis://a:pw2@h:2")
                    .build()
            ),
            Some(ErrorKind::InvalidConfig)
        );
        assert_eq!(
            kind(
                ClusterConfig::builder()
                    .with_url("redis://h:1")
                    .with_tls_ca_file("/ca.pem")
                    .build()
            ),
            Some(ErrorKind::InvalidConfig)
        );
        assert_eq!(
            kind(
                ClusterConfig::builder()
                    .with_url("redis://h:1")
                    .with_username("bob")
                    .build()
            ),
            Some(ErrorKind::InvalidConfig)
        );
        Ok(())
    }

    #[test]
    fn credentials_and_redaction() -> Result<()> {
        let c = ClusterConfig::builder()
            .with_url("redis://u:url-secret@h:1")
            .with_url("redis://u:url-secret@h:2")
            .with_password("field-secret")
            .build()?;
        let shown = format!(
            "{c:?} {:?}",
            ClusterConfig::builder().with_password("field-secret")
        );
        assert!(!shown.contains("url-secret"), "{shown}");
        assert!(!shown.contains("field-secret"), "{shown}");
        assert_eq!(c.redacted_urls()[0], "redis://u:***@h:1");
        let seeds = c.resolve()?;
        assert!(seeds.has_password);
        assert!(seeds.secrets.contains(&"url-secret".to_owned()));
        assert!(seeds.secrets.contains(&"field-secret".to_owned()));
        // A bad URL's message never echoes its password.
        let err = ClusterConfig::builder()
            .with_url("redis://u:hunter2@h:99999")
            .build()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("seed URL #1") && !err.contains("hunter2"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn serde_round_trip() -> std::result::Result<(), serde_json::Error> {
        let c: ClusterConfig = serde_json::from_str(
            r#"{"urls":["redis://h:7000"],"connect_timeout":"2s","response_timeout":250,
                "retries":2,"retry_min_delay":"5ms","retry_max_delay":"50ms"}"#,
        )?;
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.response_timeout, Duration::from_millis(250));
        assert_eq!(c.retries, 2);
        let text = serde_json::to_string(&c)?;
        assert!(text.contains(r#""response_timeout":"250ms""#), "{text}");
        let back: ClusterConfig = serde_json::from_str(&text)?;
        assert_eq!(back, c);
        let empty: ClusterConfig = serde_json::from_str("{}")?;
        assert_eq!(empty, ClusterConfig::default());
        Ok(())
    }
}
