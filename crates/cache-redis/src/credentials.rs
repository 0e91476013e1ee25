//! Rotating credentials: a [`CredentialsProvider`] asked for a user name and password at every
//! (re)connect, for token-based managed Redis (AWS ElastiCache / MemoryDB IAM authentication,
//! Azure Cache for Redis with Microsoft Entra ID tokens) or a secret store that rotates
//! passwords.
//!
//! Every connection a store, its bus and its tracking make asks the provider when it opens:
//! the store's multiplexed connection (and each of its reconnect attempts), the pub/sub
//! subscriber, the tracking connection, and, on Redis Cluster, every node connection. A
//! provider may also ask for a periodic re-authentication of live connections
//! ([`CredentialsProvider::refresh_interval`]), for tokens the server checks again.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cache_core::Result;
use futures::{Stream, StreamExt};
use redis::{BasicAuth, ConnectionInfo, RedisError, RedisResult};

use crate::errors::{ErrorContext, PROVIDER_FAILED};
use crate::target::REDACTED;

/// One user name and password, as a [`CredentialsProvider`] hands them out.
///
/// `Debug` never shows the password.
///
/// ```
/// use cache_redis::Credentials;
///
/// let c = Credentials::with_user("app", "token-123");
/// assert_eq!(c.username(), Some("app"));
/// assert!(!format!("{c:?}").contains("token-123"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: Option<String>,
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &REDACTED)
            .finish()
    }
}

impl Credentials {
    /// A password for the configured user (the config's `username`, or its URL's, else
    /// `default`).
    pub fn new(password: impl Into<String>) -> Self {
        Credentials {
            username: None,
            password: password.into(),
        }
    }

    /// An ACL user and its password (or token).
    pub fn with_user(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: Some(username.into()),
            password: password.into(),
        }
    }

    /// The user name, when the provider gave one.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// The password or token. Never log it.
    pub fn password(&self) -> &str {
        &self.password
    }
}

/// A source of fresh credentials, asked at every (re)connect of every connection (see the
/// module docs).
///
/// Implementations fetch or compute a token (an ElastiCache IAM token is a presigned request;
/// an Entra ID token comes from the identity endpoint) and may cache it; the call is bounded
/// by the config's `connect_timeout`. An error fails that connection attempt with
/// [`ErrorKind::Auth`](cache_core::ErrorKind::Auth) (its message, which must not hold a secret, is kept) and the attempt
/// is retried like any failed connect.
///
/// ```
/// use async_trait::async_trait;
/// use cache_redis::{Credentials, CredentialsProvider, RedisConfig};
///
/// #[derive(Debug)]
/// struct FromEnv;
///
/// #[async_trait]
/// impl CredentialsProvider for FromEnv {
///     async fn credentials(&self) -> cache_core::Result<Credentials> {
///         let token = std::env::var("REDIS_TOKEN").unwrap_or_default();
///         Ok(Credentials::with_user("app", token))
///     }
/// }
///
/// let config = RedisConfig::builder()
///     .with_url("redis://cache.example.com:6379/")
///     .with_credentials_provider(FromEnv)
///     .build()?;
/// assert!(config.credentials_provider.is_some());
/// # Ok::<(), cache_core::Error>(())
/// ```
#[async_trait]
pub trait CredentialsProvider: Send + Sync {
    /// The credentials to authenticate the connection being opened with.
    async fn credentials(&self) -> Result<Credentials>;

    /// How often live connections ask again and re-authenticate (`AUTH`) with the answer,
    /// for servers that check tokens again before they expire (Entra ID). `None` (the
    /// default): credentials are asked only when a connection opens. Pub/sub subscriber
    /// connections are not re-authenticated; they reconnect (with fresh credentials) when the
    /// server closes them.
    fn refresh_interval(&self) -> Option<Duration> {
        None
    }
}

#[async_trait]
impl<P: CredentialsProvider + ?Sized> CredentialsProvider for Arc<P> {
    async fn credentials(&self) -> Result<Credentials> {
        (**self).credentials().await
    }

    fn refresh_interval(&self) -> Option<Duration> {
        (**self).refresh_interval()
    }
}

#[async_trait]
impl<P: CredentialsProvider + ?Sized> CredentialsProvider for Box<P> {
    async fn credentials(&self) -> Result<Credentials> {
        (**self).credentials().await
    }

    fn refresh_interval(&self) -> Option<Duration> {
        (**self).refresh_interval()
    }
}

/// A [`CredentialsProvider`] from an async closure; see [`credentials_fn`].
#[derive(Clone)]
pub struct CredentialsFn<F> {
    f: F,
}

impl<F> fmt::Debug for CredentialsFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CredentialsFn")
    }
}

/// A [`CredentialsProvider`] calling `f` at every (re)connect.
///
/// ```
/// use cache_redis::{credentials_fn, Credentials, RedisConfig};
///
/// let config = RedisConfig::builder()
///     .with_url("redis://127.0.0.1:6379/")
///     .with_credentials_provider(credentials_fn(|| async {
///         Ok(Credentials::with_user("app", "fetched-token"))
///     }))
///     .build()?;
/// assert!(!format!("{config:?}").contains("fetched-token"));
/// # Ok::<(), cache_core::Error>(())
/// ```
pub fn credentials_fn<F, Fut>(f: F) -> CredentialsFn<F>
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<Credentials>> + Send,
{
    CredentialsFn { f }
}

#[async_trait]
impl<F, Fut> CredentialsProvider for CredentialsFn<F>
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<Credentials>> + Send,
{
    async fn credentials(&self) -> Result<Credentials> {
        (self.f)().await
    }
}

/// A shared [`CredentialsProvider`], as the configs hold it: cloning shares the provider, two
/// are equal when they are the same provider, and `Debug` shows nothing of it.
#[derive(Clone)]
pub struct SharedCredentialsProvider(Arc<dyn CredentialsProvider>);

impl SharedCredentialsProvider {
    /// Share `provider`.
    pub fn new(provider: impl CredentialsProvider + 'static) -> Self {
        SharedCredentialsProvider(Arc::new(provider))
    }

    /// Share a provider that is shared already.
    pub fn from_arc(provider: Arc<dyn CredentialsProvider>) -> Self {
        SharedCredentialsProvider(provider)
    }
}

impl fmt::Debug for SharedCredentialsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<credentials provider>")
    }
}

impl PartialEq for SharedCredentialsProvider {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.0), Arc::as_ptr(&other.0))
    }
}

impl Eq for SharedCredentialsProvider {}

#[async_trait]
impl CredentialsProvider for SharedCredentialsProvider {
    async fn credentials(&self) -> Result<Credentials> {
        self.0.credentials().await
    }

    fn refresh_interval(&self) -> Option<Duration> {
        self.0.refresh_interval()
    }
}

/// A [`SharedCredentialsProvider`] bound to one store: the user to fall back on, the bound on
/// each call, and the error context that learns every password handed out (so it is
/// scrubbed from messages). Implements redis-rs' `StreamingCredentialsProvider`, so the
/// store's connection manager, its reconnect attempts and the cluster's node connections ask
/// it at each connect. Shared with `cache-cluster`.
#[derive(Clone)]
pub struct ProviderAuth {
    provider: SharedCredentialsProvider,
    default_user: Option<String>,
    limit: Duration,
    ctx: Arc<ErrorContext>,
}

impl fmt::Debug for ProviderAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderAuth")
            .field("default_user", &self.default_user)
            .field("limit", &self.limit)
            .finish()
    }
}

impl ProviderAuth {
    /// `provider`, using `default_user` when it names none, each call bounded by `limit`.
    pub fn new(
        provider: SharedCredentialsProvider,
        default_user: Option<String>,
        limit: Duration,
        ctx: Arc<ErrorContext>,
    ) -> Self {
        ProviderAuth {
            provider,
            default_user,
            limit,
            ctx,
        }
    }

    /// Ask the provider once (bounded), as redis-rs wants the answer.
    pub async fn fetch(&self) -> RedisResult<BasicAuth> {
        let failed = |why: String| {
            RedisError::from((
                redis::ErrorKind::AuthenticationFailed,
                PROVIDER_FAILED,
                self.ctx.scrub(&why),
            ))
        };
        match tokio::time::timeout(self.limit, self.provider.credentials()).await {
            Ok(Ok(c)) => {
                self.ctx.learn_secret(c.password());
                let user = c
                    .username
                    .or_else(|| self.default_user.clone())
                    .unwrap_or_else(|| "default".to_owned());
                self.ctx.learn_user(&user);
                Ok(BasicAuth::new(user, c.password))
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    endpoint = %self.ctx.endpoint,
                    kind = %e.kind(),
                    error = %self.ctx.scrub(e.message()),
                    "the credentials provider failed"
                );
                Err(failed(e.message().to_owned()))
            }
            Err(_) => {
                tracing::warn!(
                    endpoint = %self.ctx.endpoint,
                    limit_ms = self.limit.as_millis() as u64,
                    "the credentials provider did not answer in time"
                );
                Err(failed(format!("no answer within {:?}", self.limit)))
            }
        }
    }

    /// `info` with fresh credentials from the provider (for connections redis-rs cannot give
    /// a provider: pub/sub).
    pub async fn apply(&self, info: ConnectionInfo) -> RedisResult<ConnectionInfo> {
        let auth = self.fetch().await?;
        let settings = info
            .redis_settings()
            .clone()
            .set_username(auth.username())
            .set_password(auth.password());
        Ok(info.set_redis_settings(settings))
    }
}

/// `client` itself without a provider, else a client like it with the provider's answer of
/// now (for one pub/sub connection).
pub(crate) async fn client_with(
    client: &redis::Client,
    auth: Option<&ProviderAuth>,
) -> RedisResult<redis::Client> {
    match auth {
        None => Ok(client.clone()),
        Some(auth) => redis::Client::open(auth.apply(client.get_connection_info().clone()).await?),
    }
}

impl redis::StreamingCredentialsProvider for ProviderAuth {
    fn subscribe(&self) -> Pin<Box<dyn Stream<Item = RedisResult<BasicAuth>> + Send + 'static>> {
        let first = {
            let me = self.clone();
            futures::stream::once(async move { me.fetch().await })
        };
        match self.provider.refresh_interval() {
            Some(every) if !every.is_zero() => first
                .chain(futures::stream::unfold(
                    self.clone(),
                    move |me| async move {
                        tokio::time::sleep(every).await;
                        let next = me.fetch().await;
                        Some((next, me))
                    },
                ))
                .boxed(),
            // Nothing more: the connection keeps the credentials it opened with.
            _ => first.chain(futures::stream::pending()).boxed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache_core::{Error, ErrorKind};

    #[test]
    fn debug_hides_the_password() {
        let c = Credentials::new("hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        let shared = SharedCredentialsProvider::new(credentials_fn(|| async {
            Ok(Credentials::new("hunter2"))
        }));
        assert_eq!(format!("{shared:?}"), "<credentials provider>");
        assert_eq!(shared.clone(), shared);
        let other = SharedCredentialsProvider::new(credentials_fn(|| async {
            Ok(Credentials::new("hunter2"))
        }));
        assert_ne!(shared, other);
    }

    #[tokio::test]
    async fn fetch_falls_back_on_the_configured_user_and_learns_the_secret() {
        let ctx = Arc::new(ErrorContext::new(
            "h:1".to_owned(),
            "app".to_owned(),
            true,
            Vec::new(),
        ));
        let auth = ProviderAuth::new(
            SharedCredentialsProvider::new(credentials_fn(|| async {
                Ok(Credentials::new("tok-1"))
            })),
            Some("app".to_owned()),
            Duration::from_secs(1),
            ctx.clone(),
        );
        let basic = auth.fetch().await;
        assert_eq!(basic.as_ref().map(|b| b.username()).ok(), Some("app"));
        assert_eq!(ctx.scrub("x tok-1 y"), "x *** y");
        let none = ProviderAuth::new(
            SharedCredentialsProvider::new(credentials_fn(|| async {
                Ok(Credentials::new("tok-2"))
            })),
            None,
            Duration::from_secs(1),
            ctx.clone(),
        );
        let basic = none.fetch().await;
        assert_eq!(basic.as_ref().map(|b| b.username()).ok(), Some("default"));
    }

    #[tokio::test]
    async fn a_failing_provider_is_an_auth_error_with_its_message() {
        let ctx = Arc::new(ErrorContext::new(
            "h:1".to_owned(),
            "app".to_owned(),
            true,
            Vec::new(),
        ));
        let auth = ProviderAuth::new(
            SharedCredentialsProvider::new(credentials_fn(|| async {
                Err(Error::new(ErrorKind::Connection, "token endpoint down"))
            })),
            None,
            Duration::from_secs(1),
            ctx.clone(),
        );
        let mapped = auth.fetch().await.err().map(|e| ctx.map("connect", &e));
        assert_eq!(mapped.as_ref().map(|e| e.kind()), Some(ErrorKind::Auth));
        let message = mapped.map(|e| e.message().to_owned()).unwrap_or_default();
        assert!(
            message.contains("credentials provider") && message.contains("token endpoint down"),
            "{message}"
        );
    }
}
