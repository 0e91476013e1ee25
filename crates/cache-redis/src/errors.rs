//! redis-rs errors to [`cache_core::Error`], with passwords scrubbed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_core::{Error, ErrorKind};
use redis::{RedisError, ServerErrorKind};

use crate::target::REDACTED;

/// What the redis-rs error of a failed credentials-provider call starts with (recognised by
/// [`ErrorContext::map`]).
pub const PROVIDER_FAILED: &str = "the credentials provider failed";

/// What an error message may say about the connection (never a password): maps redis-rs
/// errors to [`cache_core::Error`] with a clear message and scrubs every configured password
/// from it. Shared with `cache-cluster`.
#[derive(Clone)]
pub struct ErrorContext {
    /// `host:port`, a socket path, or a description of several nodes (never credentials).
    pub endpoint: String,
    /// The ACL user (`default` when none is configured).
    pub user: String,
    /// Whether a password is configured (to tell "NOAUTH: none configured" from "refused").
    pub has_password: bool,
    secrets: Vec<String>,
    /// Passwords handed out by a credentials provider (the latest few), shared by clones.
    learned: Arc<Mutex<Vec<String>>>,
    /// The user a credentials provider named last, shared by clones.
    provider_user: Arc<Mutex<Option<String>>>,
}

/// How many provider passwords a context remembers to scrub.
const LEARNED_SECRETS: usize = 8;

impl ErrorContext {
    /// A context for `endpoint` and `user`; `secrets` are scrubbed from every message.
    pub fn new(endpoint: String, user: String, has_password: bool, secrets: Vec<String>) -> Self {
        ErrorContext {
            endpoint,
            user,
            has_password,
            secrets,
            learned: Arc::default(),
            provider_user: Arc::default(),
        }
    }

    /// The user connections authenticate as: the one a credentials provider named last, else
    /// the configured one.
    pub fn user(&self) -> String {
        self.provider_user
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| self.user.clone())
    }

    /// Remember the user a credentials provider named (for messages).
    pub fn learn_user(&self, user: &str) {
        *self.provider_user.lock().unwrap_or_else(|p| p.into_inner()) = Some(user.to_owned());
    }

    /// Scrub `secret` from messages from now on (a password a credentials provider handed
    /// out; the latest few are kept).
    pub fn learn_secret(&self, secret: &str) {
        if secret.is_empty() || self.secrets.iter().any(|s| s == secret) {
            return;
        }
        let mut learned = self.learned.lock().unwrap_or_else(|p| p.into_inner());
        if learned.iter().any(|s| s == secret) {
            return;
        }
        if learned.len() >= LEARNED_SECRETS {
            learned.remove(0);
        }
        learned.push(secret.to_owned());
    }

    /// `text` with every configured password replaced by `***` (belt and braces: redis-rs
    /// messages are not known to contain them).
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        let learned = self
            .learned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for secret in self.secrets.iter().chain(learned.iter()) {
            if !secret.is_empty() && out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        out
    }

    /// Run one call under `limit`, mapping its error with `map` (a timeout of the connection
    /// itself and one of `limit` read the same: "no answer within `limit`"), and log failures
    /// at DEBUG with `what` ("Redis", "Redis Cluster"). Shared by both stores.
    pub async fn bounded<T>(
        &self,
        op: &'static str,
        limit: Duration,
        what: &'static str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
        map: impl Fn(&Self, &str, &RedisError) -> Error,
    ) -> Result<T, Error> {
        let result = match tokio::time::timeout(limit, call).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => match map(self, op, &e) {
                // The connection's own response timeout (same limit) fired first.
                t if t.kind() == ErrorKind::Timeout => self.elapsed(op, limit, "response_timeout"),
                other => other,
            },
            Err(_) => self.elapsed(op, limit, "response_timeout"),
        };
        tracing::debug!(
            op,
            endpoint = %self.endpoint,
            kind = %result.kind(),
            error = %result.message(),
            "{what} call failed"
        );
        Err(result)
    }

    /// Our own timeout (the `tokio::time::timeout` around every call) ran out.
    pub fn elapsed(&self, op: &str, limit: Duration, setting: &str) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "Redis at {} did not answer {op} within {limit:?} ({setting})",
                self.endpoint
            ),
        )
    }

    /// Map a redis-rs error from `op` ("GET", "connect", ...).
    pub fn map(&self, op: &str, e: &RedisError) -> Error {
        let detail = self.scrub(&e.to_string());
        let ep = &self.endpoint;
        let user = self.user();
        let code = e.code().unwrap_or("");
        let (kind, message) = if e.kind() == redis::ErrorKind::AuthenticationFailed
            && detail.starts_with(PROVIDER_FAILED)
        {
            (
                ErrorKind::Auth,
                format!(
                    "no credentials for Redis at {ep}: {PROVIDER_FAILED}: {}",
                    self.scrub(e.detail().unwrap_or(""))
                ),
            )
        } else if code == "NOAUTH" && !self.has_password {
            (
                ErrorKind::Auth,
                format!(
                    "Redis at {ep} requires authentication (NOAUTH) but no password is configured"
                ),
            )
        } else if e.kind() == redis::ErrorKind::AuthenticationFailed
            || code == "WRONGPASS"
            || code == "NOAUTH"
        {
            // redis-rs' own text ("Password authentication failed - AuthenticationFailed")
            // adds nothing; the server's (WRONGPASS ...) does.
            let why = if code.is_empty() {
                String::new()
            } else {
                format!(" ({detail})")
            };
            (
                ErrorKind::Auth,
                format!(
                    "Redis at {ep} refused the credentials for user `{}`{why}",
                    user
                ),
            )
        } else if e.kind() == redis::ErrorKind::Server(ServerErrorKind::NoPerm) || code == "NOPERM"
        {
            (
                ErrorKind::Auth,
                format!(
                    "Redis user `{}` is not allowed to run {op} at {ep}: {detail}",
                    user
                ),
            )
        } else if let Some(alert) = client_certificate_alert(&detail) {
            // "received fatal alert: X": the server refused our side of the TLS handshake.
            let message = if alert == "CertificateRequired" {
                format!(
                    "Redis at {ep} requires a TLS client certificate (mutual TLS, \
                     tls-auth-clients) and none was presented: set tls_client_cert_file and \
                     tls_client_key_file"
                )
            } else {
                format!(
                    "Redis at {ep} refused the TLS client certificate (TLS alert {alert}): it \
                     must be valid and signed by a CA the server trusts (its tls-ca-cert-file)"
                )
            };
            (ErrorKind::Auth, message)
        } else if e.is_timeout() {
            (
                ErrorKind::Timeout,
                format!("Redis at {ep} did not answer {op} in time: {detail}"),
            )
        } else if e.is_connection_refusal() {
            (
                ErrorKind::Connection,
                format!("cannot reach Redis at {ep}: connection refused"),
            )
        } else if e.is_io_error() || e.is_connection_dropped() {
            (
                ErrorKind::Connection,
                if op == "connect" {
                    format!("cannot reach Redis at {ep}: {detail}")
                } else {
                    format!("connection to Redis at {ep} failed during {op}: {detail}")
                },
            )
        } else if e.kind() == redis::ErrorKind::InvalidClientConfig {
            (
                ErrorKind::InvalidConfig,
                format!("the Redis client refused the configuration for {ep}: {detail}"),
            )
        } else {
            (
                ErrorKind::Remote,
                format!("Redis at {ep} answered {op} with an error: {detail}"),
            )
        };
        Error::new(kind, message)
    }
}

/// The TLS alert in `detail` when the server refused the client's certificate (or the lack of
/// one) during the handshake.
fn client_certificate_alert(detail: &str) -> Option<&'static str> {
    const ALERTS: [&str; 7] = [
        "CertificateRequired",
        "UnknownCA",
        "BadCertificate",
        "UnsupportedCertificate",
        "CertificateExpired",
        "CertificateRevoked",
        "CertificateUnknown",
    ];
    let (_, alert) = detail.split_once("received fatal alert: ")?;
    ALERTS.into_iter().find(|a| alert.starts_with(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ErrorContext {
        ErrorContext::new(
            "h:1".to_owned(),
            "alice".to_owned(),
            true,
            vec!["hunter2".to_owned()],
        )
    }

    #[test]
    fn kinds() {
        let c = ctx();
        let auth = RedisError::from((redis::ErrorKind::AuthenticationFailed, "bad"));
        assert_eq!(c.map("connect", &auth).kind(), ErrorKind::Auth);
        assert_eq!(
            c.map("connect", &auth).message(),
            "Redis at h:1 refused the credentials for user `alice`"
        );
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let e = c.map("connect", &refused);
        assert_eq!(e.kind(), ErrorKind::Connection);
        assert_eq!(e.message(), "cannot reach Redis at h:1: connection refused");
        let timed_out = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert_eq!(c.map("GET", &timed_out).kind(), ErrorKind::Timeout);
        let reset = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(c.map("GET", &reset).kind(), ErrorKind::Connection);
        let server = RedisError::from((
            redis::ErrorKind::Server(ServerErrorKind::ResponseError),
            "boom",
        ));
        assert_eq!(c.map("GET", &server).kind(), ErrorKind::Remote);
        let noperm = RedisError::from((redis::ErrorKind::Server(ServerErrorKind::NoPerm), "no"));
        assert_eq!(c.map("GET", &noperm).kind(), ErrorKind::Auth);
        let wrongpass = redis::make_extension_error("WRONGPASS".to_owned(), Some("x".to_owned()));
        assert_eq!(c.map("GET", &wrongpass).kind(), ErrorKind::Auth);
        let no_cert = RedisError::from(std::io::Error::other(
            "received fatal alert: CertificateRequired",
        ));
        let e = c.map("connect", &no_cert);
        assert_eq!(e.kind(), ErrorKind::Auth);
        assert!(
            e.message().contains("requires a TLS client certificate"),
            "{e}"
        );
        let unknown_ca = RedisError::from(std::io::Error::other("received fatal alert: UnknownCA"));
        let e = c.map("connect", &unknown_ca);
        assert_eq!(e.kind(), ErrorKind::Auth);
        assert!(
            e.message().contains("refused the TLS client certificate"),
            "{e}"
        );
    }

    #[test]
    fn scrubbing() {
        let c = ctx();
        let e = RedisError::from((
            redis::ErrorKind::Server(ServerErrorKind::ResponseError),
            "echo",
            "password hunter2 leaked".to_owned(),
        ));
        let mapped = c.map("GET", &e);
        assert!(!mapped.to_string().contains("hunter2"), "{mapped}");
        assert!(!format!("{mapped:?}").contains("hunter2"));
        assert_eq!(c.scrub("a hunter2 b hunter2"), "a *** b ***");
    }
}
