//! [`RedisConfig`]: a serde struct plus a fluent builder.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use cache_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

use crate::credentials::{CredentialsProvider, SharedCredentialsProvider};
use crate::target::{self, Target, REDACTED};

/// Default URL: a local server, database 0.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379/";
/// Default bound on establishing a connection (TCP + TLS + AUTH + the first `PING`): 1 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default bound on every operation, from the call to the answer: 500 ms.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// Default largest value `set` accepts: 16 MiB.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 16 * 1024 * 1024;
/// Default number of retries per reconnect round: 2 (so 3 connection attempts).
pub const DEFAULT_RECONNECT_RETRIES: usize = 2;
/// Default smallest delay between reconnect attempts: 50 ms.
pub const DEFAULT_RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
/// Default largest delay between reconnect attempts: 1 s.
pub const DEFAULT_RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);

/// How to reach a standalone Redis server, and the time and size bounds of every call.
///
/// Build it with [`RedisConfig::builder`], or deserialize it (every field is optional; missing
/// fields take their defaults). Durations deserialize from a number of milliseconds or a
/// string with a unit: `"500ms"`, `"1s"`, `"2m"`, `"250us"`.
///
/// | field | default | meaning |
/// |---|---|---|
/// | `url` | `redis://127.0.0.1:6379/` | `redis://[[user]:password@]host[:port][/db]`, `rediss://` (TLS, feature `tls`), `redis+unix:///path.sock?db=N` or `unix:///path.sock` |
/// | `username` | none | ACL user; overrides the URL's |
/// | `password` | none | overrides the URL's; never printed |
/// | `connect_timeout` | 1 s | bound on connecting (TCP, TLS, AUTH, first `PING`) |
/// | `response_timeout` | 500 ms | bound on every operation, from call to answer |
/// | `max_value_size` | 16 MiB | larger values are refused before anything is sent |
/// | `reconnect_retries` | 2 | retries per reconnect round (1 + retries attempts) |
/// | `reconnect_min_delay` | 50 ms | first delay between attempts; doubles per retry |
/// | `reconnect_max_delay` | 1 s | cap of the (un-jittered) delay between attempts |
/// | `tls_ca_file` | none | `rediss://` only: PEM file of the CA(s) to trust instead of the built-in Mozilla (webpki) roots |
/// | `tls_client_cert_file` / `tls_client_key_file` | none | `rediss://` only: PEM client certificate (chain) and its private key, for servers that require one (mutual TLS, `tls-auth-clients yes`); both or neither |
/// | `credentials_provider` | none | not serialized: a [`CredentialsProvider`] asked for the user and password at every (re)connect, instead of a fixed `password` |
///
/// Reconnecting: when the connection breaks, the next call starts a reconnect round of
/// `1 + reconnect_retries` attempts, the n-th retry after a delay of
/// `min(reconnect_min_delay * 2^n, reconnect_max_delay)` plus up to 100 % jitter (with the
/// defaults a round of refused connections gives up after 150..300 ms). Calls made during
/// the round wait for it (bounded by `response_timeout`); when it fails they get
/// [`ErrorKind::Connection`] and the next call starts a new round.
///
/// Credentials: a fixed `password` (field or URL), or a
/// [`credentials_provider`](RedisConfig::credentials_provider) for rotating ones (tokens). The
/// provider is asked at every (re)connect of every connection (store, bus, tracking); a
/// user name it does not give comes from `username` or the URL.
///
/// `Debug` never shows the password, neither the field nor the one inside the URL, nor
/// anything of a credentials provider.
///
/// ```
/// use std::time::Duration;
/// use cache_redis::RedisConfig;
///
/// let config = RedisConfig::builder()
///     .with_url("redis://cache.internal:6379/2")
///     .with_username("app")
///     .with_password("s3cret")
///     .with_response_timeout(Duration::from_millis(200))
///     .build()?;
/// assert!(!format!("{config:?}").contains("s3cret"));
///
/// let from_file: RedisConfig =
///     serde_json::from_str(r#"{ "url": "redis://localhost/", "response_timeout": "250ms" }"#)
///         .unwrap();
/// assert_eq!(from_file.response_timeout, Duration::from_millis(250));
/// # Ok::<(), cache_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Where the server is (see the table above).
    pub url: String,
    /// ACL user name; overrides the one in the URL. Needs a password.
    pub username: Option<String>,
    /// Password; overrides the one in the URL. Never printed.
    pub password: Option<String>,
    /// Bound on establishing a connection, including `AUTH` and the first `PING`.
    #[serde(with = "duration_text")]
    pub connect_timeout: Duration,
    /// Bound on every operation; a hung server turns into [`ErrorKind::Timeout`] after it.
    #[serde(with = "duration_text")]
    pub response_timeout: Duration,
    /// Largest value accepted by writes, in bytes; larger ones fail with
    /// [`ErrorKind::ValueTooLarge`] before anything is sent.
    pub max_value_size: usize,
    /// Retries per reconnect round after the connection broke (a round makes
    /// `1 + reconnect_retries` attempts). When a round fails, the next call starts a new one.
    pub reconnect_retries: usize,
    /// Delay before the first retry of a round; it doubles per retry (plus up to 100 % jitter).
    #[serde(with = "duration_text")]
    pub reconnect_min_delay: Duration,
    /// Cap of the doubling delay between reconnect attempts (before jitter).
    #[serde(with = "duration_text")]
    pub reconnect_max_delay: Duration,
    /// For `rediss://`: a PEM file with the CA certificate(s) to trust, replacing the built-in
    /// Mozilla root certificates (webpki-roots), e.g. for a private CA. Certificates are always
    /// verified; there is no "insecure" switch. Setting it with a non-TLS URL is an error.
    pub tls_ca_file: Option<PathBuf>,
    /// For `rediss://`: a PEM file with the client certificate (and its chain) presented to
    /// servers that ask for one (mutual TLS). Needs `tls_client_key_file`.
    pub tls_client_cert_file: Option<PathBuf>,
    /// For `rediss://`: a PEM file with the private key of `tls_client_cert_file` (PKCS#8,
    /// PKCS#1 or SEC1). Read when connecting; its content is never printed.
    pub tls_client_key_file: Option<PathBuf>,
    /// Rotating credentials: asked for the user and password at every (re)connect of every
    /// connection, instead of a fixed `password` (setting both is an error). Not serialized;
    /// set it in code ([`RedisConfigBuilder::with_credentials_provider`]).
    #[serde(skip)]
    pub credentials_provider: Option<SharedCredentialsProvider>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: DEFAULT_URL.to_owned(),
            username: None,
            password: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            reconnect_retries: DEFAULT_RECONNECT_RETRIES,
            reconnect_min_delay: DEFAULT_RECONNECT_MIN_DELAY,
            reconnect_max_delay: DEFAULT_RECONNECT_MAX_DELAY,
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
            credentials_provider: None,
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &target::redact_url(&self.url))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("max_value_size", &self.max_value_size)
            .field("reconnect_retries", &self.reconnect_retries)
            .field("reconnect_min_delay", &self.reconnect_min_delay)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_client_cert_file", &self.tls_client_cert_file)
            .field("tls_client_key_file", &self.tls_client_key_file)
            .field("credentials_provider", &self.credentials_provider)
            .finish()
    }
}

impl RedisConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> RedisConfigBuilder {
        RedisConfigBuilder::default()
    }

    /// The defaults with `url`.
    pub fn from_url(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            ..RedisConfig::default()
        }
    }

    /// The URL with its password replaced by `***` (what logs and `Debug` show).
    pub fn redacted_url(&self) -> String {
        target::redact_url(&self.url)
    }

    /// Check everything that can be checked without a server: the URL (typed
    /// [`ErrorKind::InvalidUrl`] errors saying what is wrong), credentials, non-zero timeouts
    /// and size. [`RedisConfigBuilder::build`] and [`crate::RedisStore::connect`] call it.
    pub fn validate(&self) -> Result<()> {
        self.resolve().map(|_| ())
    }

    pub(crate) fn resolve(&self) -> Result<Target> {
        let bad = |m: &str| Err(Error::new(ErrorKind::InvalidConfig, m.to_owned()));
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout must be greater than zero");
        }
        if self.response_timeout.is_zero() {
            return bad("response_timeout must be greater than zero");
        }
        if self.max_value_size == 0 {
            return bad("max_value_size must be greater than zero");
        }
        if self.reconnect_min_delay > self.reconnect_max_delay {
            return bad("reconnect_min_delay must not exceed reconnect_max_delay");
        }
        let target = target::resolve_with(
            &self.url,
            self.username.as_deref(),
            self.password.as_deref(),
            self.credentials_provider.is_some(),
        )?;
        check_tls_files(
            target.tls,
            self.tls_ca_file.is_some(),
            self.tls_client_cert_file.is_some(),
            self.tls_client_key_file.is_some(),
        )?;
        Ok(target)
    }
}

/// The TLS file settings make sense together: only with TLS, a client certificate with its key.
/// Shared with `cache-cluster`.
pub fn check_tls_files(tls: bool, ca: bool, client_cert: bool, client_key: bool) -> Result<()> {
    let bad = |m: &str| Err(Error::new(ErrorKind::InvalidConfig, m.to_owned()));
    if !tls && ca {
        return bad("tls_ca_file is set but the URL is not rediss:// (TLS); refusing to connect without TLS");
    }
    if !tls && (client_cert || client_key) {
        return bad("a TLS client certificate is set but the URL is not rediss:// (TLS); refusing to connect without TLS");
    }
    if client_cert != client_key {
        return bad("tls_client_cert_file and tls_client_key_file go together: set both (mutual TLS) or neither");
    }
    Ok(())
}

/// Fluent builder of [`RedisConfig`]; [`RedisConfigBuilder::build`] validates.
#[derive(Clone, Default)]
pub struct RedisConfigBuilder {
    config: RedisConfig,
}

impl fmt::Debug for RedisConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RedisConfigBuilder")
            .field(&self.config)
            .finish()
    }
}

impl RedisConfigBuilder {
    /// The server URL (default `redis://127.0.0.1:6379/`).
    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.config.url = url.into();
        self
    }

    /// The ACL user (overrides the URL's).
    pub fn with_username(mut self, username: impl Into<String>) -> Self {
        self.config.username = Some(username.into());
        self
    }

    /// The password (overrides the URL's).
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.config.password = Some(password.into());
        self
    }

    /// Bound on establishing a connection (default 1 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Bound on every operation (default 500 ms).
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.config.response_timeout = timeout;
        self
    }

    /// Largest value accepted, in bytes (default 16 MiB).
    pub fn with_max_value_size(mut self, bytes: usize) -> Self {
        self.config.max_value_size = bytes;
        self
    }

    /// Retries per reconnect round (default 2).
    pub fn with_reconnect_retries(mut self, retries: usize) -> Self {
        self.config.reconnect_retries = retries;
        self
    }

    /// First and largest delay between reconnect attempts (default 50 ms and 1 s).
    pub fn with_reconnect_backoff(mut self, min_delay: Duration, max_delay: Duration) -> Self {
        self.config.reconnect_min_delay = min_delay;
        self.config.reconnect_max_delay = max_delay;
        self
    }

    /// For `rediss://`: trust the CA certificate(s) in this PEM file instead of the built-in
    /// roots.
    pub fn with_tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.tls_ca_file = Some(path.into());
        self
    }

    /// For `rediss://` servers that require a client certificate (mutual TLS): the PEM files
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
    /// (re)connect of every connection (see [`CredentialsProvider`]). Replaces a fixed
    /// password (setting both is an error).
    pub fn with_credentials_provider(
        mut self,
        provider: impl CredentialsProvider + 'static,
    ) -> Self {
        self.config.credentials_provider = Some(SharedCredentialsProvider::new(provider));
        self
    }

    /// Validate and return the config.
    pub fn build(self) -> Result<RedisConfig> {
        self.config.validate()?;
        Ok(self.config)
    }
}

/// Serde helpers for durations as text with a unit (`"500ms"`), read from text or a number
/// of milliseconds: `#[serde(with = "cache_redis::support::duration_text")]`.
pub use cache_core::support::duration_text;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = RedisConfig::default();
        assert_eq!(c.url, "redis://127.0.0.1:6379/");
        assert_eq!(c.connect_timeout, Duration::from_secs(1));
        assert_eq!(c.response_timeout, Duration::from_millis(500));
        assert_eq!(c.max_value_size, 16 * 1024 * 1024);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn builder_validates() {
        let err = RedisConfig::builder().with_url("http://x").build().err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidUrl));
        let err = RedisConfig::builder()
            .with_response_timeout(Duration::ZERO)
            .build()
            .err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidConfig));
        let err = RedisConfig::builder().with_max_value_size(0).build().err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidConfig));
        let err = RedisConfig::builder()
            .with_url("redis://h/")
            .with_tls_ca_file("/ca.pem")
            .build()
            .err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidConfig));
        let err = RedisConfig::builder()
            .with_reconnect_backoff(Duration::from_secs(2), Duration::from_secs(1))
            .build()
            .err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidConfig));
        let err = RedisConfig::builder()
            .with_url("redis://h/")
            .with_tls_client_cert("/c.pem", "/k.pem")
            .build()
            .err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidConfig));
        let mut half = RedisConfig::from_url("rediss://h/");
        half.tls_client_cert_file = Some("/c.pem".into());
        let err = half.validate().err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidConfig));
    }

    #[test]
    fn a_provider_replaces_the_password() -> Result<()> {
        use crate::credentials::{credentials_fn, Credentials};
        let provider = || credentials_fn(|| async { Ok(Credentials::new("tok")) });
        // A user without a password is fine with a provider (it gives the password).
        let c = RedisConfig::builder()
            .with_url("redis://app@h:1/")
            .with_credentials_provider(provider())
            .build()?;
        assert_eq!(c.resolve()?.user, "app");
        assert!(format!("{c:?}").contains("<credentials provider>"));
        assert_eq!(c.clone(), c);
        // A fixed password as well is ambiguous.
        for c in [
            RedisConfig::builder()
                .with_password("pw")
                .with_credentials_provider(provider()),
            RedisConfig::builder()
                .with_url("redis://:pw@h/")
                .with_credentials_provider(provider()),
        ] {
            let err = c.build().err();
            assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidConfig));
        }
        Ok(())
    }

    #[test]
    fn debug_redacts_both_passwords() -> Result<()> {
        let c = RedisConfig::builder()
            .with_url("redis://u:url-secret@h:1/")
            .with_password("field-secret")
            .build()?;
        let shown = format!(
            "{c:?} {:?}",
            RedisConfig::builder().with_password("field-secret")
        );
        assert!(!shown.contains("url-secret"), "{shown}");
        assert!(!shown.contains("field-secret"), "{shown}");
        assert!(shown.contains("redis://u:***@h:1/"), "{shown}");
        assert_eq!(c.redacted_url(), "redis://u:***@h:1/");
        Ok(())
    }

    #[test]
    fn serde_round_trip_and_units() -> std::result::Result<(), serde_json::Error> {
        let c: RedisConfig = serde_json::from_str(
            r#"{"url":"redis://h/1","connect_timeout":"2s","response_timeout":250,
                "reconnect_min_delay":"10ms","reconnect_max_delay":"1m"}"#,
        )?;
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.response_timeout, Duration::from_millis(250));
        assert_eq!(c.reconnect_max_delay, Duration::from_secs(60));
        assert_eq!(c.max_value_size, DEFAULT_MAX_VALUE_SIZE);
        let text = serde_json::to_string(&c)?;
        assert!(text.contains(r#""response_timeout":"250ms""#), "{text}");
        let back: RedisConfig = serde_json::from_str(&text)?;
        assert_eq!(back, c);
        assert!(serde_json::from_str::<RedisConfig>(r#"{"connect_timeout":"soon"}"#).is_err());
        assert!(serde_json::from_str::<RedisConfig>(r#"{"connect_timeout":-1}"#).is_err());
        let empty: RedisConfig = serde_json::from_str("{}")?;
        assert_eq!(empty, RedisConfig::default());
        Ok(())
    }

    #[test]
    fn duration_text_formats() {
        use duration_text::{format, parse};
        for d in [
            Duration::from_secs(3),
            Duration::from_millis(1500),
            Duration::from_micros(7),
            Duration::from_nanos(9),
        ] {
            assert_eq!(parse(&format(d)), Some(d));
        }
        assert_eq!(parse("250"), Some(Duration::from_millis(250)));
        assert_eq!(parse("1h"), None);
        assert_eq!(parse(""), None);
    }
}
