//! [`RedisStore`]: the [`RemoteStore`] over a redis-rs [`ConnectionManager`].
//!
//! This module holds the store itself: its connection (opened eagerly, replaced after refused
//! credentials), the bounded call every command goes through, and the Lua scripts;
//! `remote` holds its [`RemoteStore`] implementation, command by command.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use cache_core::{Error, ErrorKind, LeaseRead, RemoteStore, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, RedisResult, Value};

use crate::coalesce::{Answer, Coalesced, Reads};
use crate::config::RedisConfig;
use crate::credentials::ProviderAuth;
use crate::errors::ErrorContext;

mod remote;

/// The compare-and-set fill of [`RemoteStore::set_if_lease`]:
/// `KEYS = [lease_key, key]`, `ARGV = [token, value, ttl_ms]`.
pub const SET_IF_LEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// The first step of a load, [`RemoteStore::get_or_lease`]: the value, else the fill lease.
/// `KEYS = [key, lease_key]`, `ARGV = [token, ttl_ms]`; answers the value's bytes, or `1`
/// (lease taken) or `0` (lease held by someone else).
pub const GET_OR_LEASE_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if v then
  return v
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
";

/// Read an answer of [`GET_OR_LEASE_LUA`], sent as `op` to `endpoint` (for the error).
pub fn lease_read(answer: redis::Value, op: &str, endpoint: &str) -> Result<LeaseRead> {
    match answer {
        redis::Value::BulkString(bytes) => Ok(LeaseRead::Value(bytes)),
        redis::Value::Int(1) => Ok(LeaseRead::Leased),
        redis::Value::Int(0) => Ok(LeaseRead::Busy),
        _ => Err(Error::new(
            ErrorKind::Remote,
            format!("Redis at {endpoint} answered {op} with an unexpected value"),
        )),
    }
}

/// Longest TTL sent to Redis, in milliseconds (about 2 230 years): longer ones are capped so
/// `now + ttl` cannot overflow on the server ("invalid expire time").
pub const MAX_TTL_MS: u64 = 1 << 46;

/// `ttl` in whole milliseconds for `PX`: at least 1 (Redis refuses `PX 0`), at most
/// [`MAX_TTL_MS`].
pub fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_TTL_MS)
}

/// `text` with the glob characters of `SCAN MATCH` (`*`, `?`, `[`, `]`, `\`) escaped, so a
/// key prefix matches only itself.
pub fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A standalone Redis server as the shared L2 tier.
///
/// One multiplexed connection (redis-rs [`ConnectionManager`]) carries every call
/// concurrently and reconnects by itself after the connection breaks (a new round of
/// attempts starts with the next call after a failed round). A reconnect the server refuses
/// for its credentials (`WRONGPASS`, `NOAUTH`, a failing credentials provider), which the
/// connection manager would keep answering with forever, makes the store replace the
/// connection: the next call connects again, asking the credentials provider anew (rotated
/// passwords and tokens are picked up). Every operation is bounded by
/// the config's `response_timeout`, so a hung server yields [`ErrorKind::Timeout`], never a
/// hung caller. Cloning is cheap and shares the connection.
///
/// Errors: [`ErrorKind::Connection`] (unreachable, broken connection), [`ErrorKind::Timeout`],
/// [`ErrorKind::Auth`] (refused credentials or missing ACL permission),
/// [`ErrorKind::Remote`] (the server answered with an error), [`ErrorKind::ValueTooLarge`]
/// (refused before sending). Messages name the endpoint and the user, never a password.
///
/// ```no_run
/// use std::time::Duration;
/// use cache_core::RemoteStore;
/// use cache_redis::{RedisConfig, RedisStore};
///
/// # async fn demo() -> cache_core::Result<()> {
/// let config = RedisConfig::builder().with_url("redis://127.0.0.1:6379/").build()?;
/// let store = RedisStore::connect(config).await?;
/// store.set("app:user:42", b"bytes".to_vec(), Duration::from_secs(60)).await?;
/// assert_eq!(store.get("app:user:42").await?, Some(b"bytes".to_vec()));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

/// The connection in use, replaced after refused credentials.
struct Slot {
    manager: ConnectionManager,
    /// Bumped at each replacement.
    generation: u64,
    since: Instant,
}

struct Inner {
    conn: RwLock<Slot>,
    /// How to make a replacement connection.
    manager_config: ConnectionManagerConfig,
    /// Single-key reads in flight and queued (see [`crate::coalesce`]).
    reads: Reads,
    config: RedisConfig,
    client: redis::Client,
    ctx: Arc<ErrorContext>,
    /// The config's credentials provider, bound to this store (`None`: fixed credentials).
    auth: Option<ProviderAuth>,
    lease_script: redis::Script,
    get_or_lease_script: redis::Script,
    tag_add_script: redis::Script,
    tag_take_script: redis::Script,
}

/// Add a member to a tag index set and make the set live at least as long as the member.
pub const TAG_ADD_LUA: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl >= 0 and ttl < tonumber(ARGV[2]) or ttl == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
";

/// Move a tag index set's members into its pending set (same slot) atomically, keeping the
/// pending set alive at least as long as the index set was, and return every pending member.
///
/// Only `SMEMBERS`, `SADD`, `DEL`, `PTTL` and `PEXPIRE` are called (the documented minimal ACL
/// rules allow exactly those inside scripts).
pub const TAG_TAKE_LUA: &str = r"
local members = redis.call('SMEMBERS', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
local kept = redis.call('PTTL', KEYS[2])
for i = 1, #members, 1000 do
  redis.call('SADD', KEYS[2], unpack(members, i, math.min(i + 999, #members)))
end
redis.call('DEL', KEYS[1])
if ttl > 0 and kept ~= -1 and kept < ttl then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return redis.call('SMEMBERS', KEYS[2])
";

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.inner.config;
        f.debug_struct("RedisStore")
            .field("endpoint", &self.inner.ctx.endpoint)
            .field("url", &c.redacted_url())
            .field("user", &self.inner.ctx.user())
            .field("response_timeout", &c.response_timeout)
            .field("max_value_size", &c.max_value_size)
            .finish()
    }
}

impl Coalesced for RedisStore {
    fn reads(&self) -> &Reads {
        &self.inner.reads
    }

    async fn read_one(&self, key: &str) -> Answer {
        let mut conn = self.conn();
        let cmd = redis::cmd("GET").arg(key).to_owned();
        self.run("GET", async move {
            cmd.query_async::<Option<Vec<u8>>>(&mut conn).await
        })
        .await
    }

    async fn read_batch(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        self.get_many(keys).await
    }

    fn response_timeout(&self) -> Duration {
        self.inner.config.response_timeout
    }

    fn endpoint(&self) -> &str {
        &self.inner.ctx.endpoint
    }
}

impl RedisStore {
    /// Connect eagerly: validate the config, open a connection, authenticate and `PING`, all
    /// within `connect_timeout`, so that a bad URL, an unreachable server or refused
    /// credentials are reported here, with a clear message:
    ///
    /// - [`ErrorKind::InvalidUrl`] / [`ErrorKind::InvalidConfig`]: see
    ///   [`RedisConfig::validate`];
    /// - [`ErrorKind::Connection`]: "cannot reach Redis at 127.0.0.1:6379: connection refused";
    /// - [`ErrorKind::Timeout`]: no answer within `connect_timeout`;
    /// - [`ErrorKind::Auth`]: "Redis at ... refused the credentials for user `app`".
    ///
    /// Must be called within a tokio runtime (the connection's driver task runs on it).
    pub async fn connect(config: RedisConfig) -> Result<RedisStore> {
        let target = config.resolve()?;
        let ctx = Arc::new(ErrorContext::new(
            target.endpoint.clone(),
            target.user.clone(),
            target.has_password,
            target.secrets.clone(),
        ));
        let auth = config.credentials_provider.clone().map(|provider| {
            ProviderAuth::new(
                provider,
                Some(target.user.clone()),
                config.connect_timeout,
                ctx.clone(),
            )
        });
        #[cfg(feature = "tls")]
        if target.tls {
            // rustls needs a process-wide crypto provider; ours is `ring` (aws-lc-rs, the
            // rustls default, would need cmake). No-op when one is installed already.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        #[cfg(not(feature = "tls"))]
        let _ = target.tls;

        let client = open_client(&config, &target, &ctx)?;
        let client_copy = client.clone();
        let started = Instant::now();
        let connect_timeout = config.connect_timeout;

        // 1. One direct attempt (the manager would retry refused credentials until the
        //    timeout, hiding the real cause), then PING.
        let mut probe_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(connect_timeout));
        if let Some(auth) = &auth {
            probe_config = probe_config.set_credentials_provider(auth.clone());
        }
        let probe = async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&probe_config)
                .await?;
            redis::cmd("PING").query_async::<Value>(&mut conn).await
        };
        match tokio::time::timeout(connect_timeout, probe).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(connect_error(&ctx, Some(&e), connect_timeout)),
            Err(_) => return Err(connect_error(&ctx, None, connect_timeout)),
        }

        // 2. The long-lived, self-reconnecting connection.
        let mut manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            .set_number_of_retries(config.reconnect_retries)
            .set_min_delay(config.reconnect_min_delay)
            .set_max_delay(config.reconnect_max_delay)
            .set_exponent_base(2.0);
        if let Some(auth) = &auth {
            // Asked again at each reconnect attempt: a rotated password or a new token is
            // picked up by the next attempt.
            manager_config = manager_config.set_credentials_provider(auth.clone());
        }
        let remaining = connect_timeout.saturating_sub(started.elapsed());
        let conn = match tokio::time::timeout(
            remaining,
            ConnectionManager::new_with_config(client, manager_config.clone()),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(connect_error(&ctx, Some(&e), connect_timeout)),
            Err(_) => return Err(connect_error(&ctx, None, connect_timeout)),
        };
        tracing::info!(
            endpoint = %ctx.endpoint,
            user = %ctx.user(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "connected to Redis"
        );
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn: RwLock::new(Slot {
                    manager: conn,
                    generation: 0,
                    since: Instant::now(),
                }),
                manager_config,
                reads: Reads::default(),
                config,
                client: client_copy,
                ctx,
                auth,
                lease_script: redis::Script::new(SET_IF_LEASE_LUA),
                get_or_lease_script: redis::Script::new(GET_OR_LEASE_LUA),
                tag_add_script: redis::Script::new(TAG_ADD_LUA),
                tag_take_script: redis::Script::new(TAG_TAKE_LUA),
            }),
        })
    }

    /// The redis-rs client (same server, credentials and TLS settings), for components that
    /// need connections of their own (pub/sub, tracking). With a credentials provider it
    /// carries no password: [`RedisStore::fresh_client`] gives one that does.
    pub fn client(&self) -> redis::Client {
        self.inner.client.clone()
    }

    /// A redis-rs client with current credentials: [`RedisStore::client`] itself with fixed
    /// credentials, or with the credentials provider's answer of now. Open one per connection
    /// (the answer may expire).
    pub async fn fresh_client(&self) -> Result<redis::Client> {
        crate::credentials::client_with(&self.inner.client, self.inner.auth.as_ref())
            .await
            .map_err(|e| self.inner.ctx.map("connect", &e))
    }

    pub(crate) fn error_context(&self) -> Arc<ErrorContext> {
        self.inner.ctx.clone()
    }

    /// The credentials provider bound to this store, if any.
    pub(crate) fn auth(&self) -> Option<ProviderAuth> {
        self.inner.auth.clone()
    }

    /// A clone of the underlying multiplexed, self-reconnecting connection, for other
    /// components (pub/sub, custom commands). Calls made through it are not bounded by
    /// `response_timeout` beyond the connection's own response timeout. The store replaces
    /// its connection after refused credentials: take a new clone for each use rather than
    /// keeping one.
    pub fn connection(&self) -> ConnectionManager {
        self.conn()
    }

    /// The connection in use.
    fn conn(&self) -> ConnectionManager {
        self.slot_read().manager.clone()
    }

    fn slot_read(&self) -> std::sync::RwLockReadGuard<'_, Slot> {
        self.inner.conn.read().unwrap_or_else(|p| p.into_inner())
    }

    /// How many times the store replaced its connection after refused credentials.
    pub fn renewals(&self) -> u64 {
        self.slot_read().generation
    }

    /// Replace the connection of `generation` (unless replaced already, or less than
    /// `reconnect_min_delay` ago) with a new one that connects on its next use, asking the
    /// credentials provider again. The manager never retries a reconnect the server refused
    /// for credentials; a new one does.
    fn renew(&self, generation: u64) {
        let mut slot = self.inner.conn.write().unwrap_or_else(|p| p.into_inner());
        if slot.generation != generation
            || slot.since.elapsed() < self.inner.config.reconnect_min_delay
        {
            return;
        }
        match ConnectionManager::new_lazy_with_config(
            self.inner.client.clone(),
            self.inner.manager_config.clone(),
        ) {
            Ok(manager) => {
                slot.manager = manager;
                slot.generation += 1;
                slot.since = Instant::now();
                tracing::info!(
                    endpoint = %self.inner.ctx.endpoint,
                    user = %self.inner.ctx.user(),
                    renewals = slot.generation,
                    "Redis refused the credentials of a reconnect; the next call connects anew"
                );
            }
            Err(e) => tracing::warn!(
                endpoint = %self.inner.ctx.endpoint,
                error = %self.inner.ctx.map("connect", &e),
                "cannot make a new Redis connection"
            ),
        }
    }

    /// `PUBLISH channel payload` (bounded by `response_timeout`), for the bus.
    pub(crate) async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<()> {
        let mut conn = self.conn();
        let cmd = redis::cmd("PUBLISH").arg(channel).arg(payload).to_owned();
        self.run(
            "PUBLISH",
            async move { cmd.query_async::<i64>(&mut conn).await },
        )
        .await
        .map(|_| ())
    }

    /// The config this store was connected with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// `host:port` or the unix socket path (no credentials).
    pub fn endpoint(&self) -> &str {
        &self.inner.ctx.endpoint
    }

    /// `PING` the server (bounded by `response_timeout`).
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn();
        self.run("PING", async move {
            redis::cmd("PING").query_async::<Value>(&mut conn).await
        })
        .await
        .map(|_| ())
    }

    /// Run one call under `response_timeout`, mapping its error.
    async fn run<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = RedisResult<T>> + Send,
    ) -> Result<T> {
        let limit = self.inner.config.response_timeout;
        let generation = self.slot_read().generation;
        self.inner
            .ctx
            .bounded(op, limit, "Redis", call, |ctx, op, e| {
                if refused_credentials(e) {
                    self.renew(generation);
                }
                ctx.map(op, e)
            })
            .await
    }
}

/// Whether `e` says the server refused the credentials of a connection (not a missing
/// permission for one command).
fn refused_credentials(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
}

/// The redis-rs client: plain, or TLS with the configured CA and client certificate files.
fn open_client(
    config: &RedisConfig,
    target: &crate::target::Target,
    ctx: &ErrorContext,
) -> Result<redis::Client> {
    #[cfg(feature = "tls")]
    if target.tls {
        if let Some(certs) = crate::tls::certificates(
            config.tls_ca_file.as_deref(),
            config.tls_client_cert_file.as_deref(),
            config.tls_client_key_file.as_deref(),
        )? {
            return redis::Client::build_with_tls(target.info.clone(), certs)
                .map_err(|e| crate::tls::map_files_error(ctx, &e));
        }
    }
    #[cfg(not(feature = "tls"))]
    let _ = config;
    redis::Client::open(target.info.clone()).map_err(|e| ctx.map("connect", &e))
}

/// A connect-time error (`None`: our own timeout ran out); timeouts from either layer read
/// the same.
fn connect_error(
    ctx: &ErrorContext,
    e: Option<&redis::RedisError>,
    connect_timeout: Duration,
) -> Error {
    let mapped = match e.map(|e| ctx.map("connect", e)) {
        Some(mapped) if mapped.kind() != ErrorKind::Timeout => mapped,
        _ => Error::new(
            ErrorKind::Timeout,
            format!(
                "cannot reach Redis at {}: no answer within {connect_timeout:?} \
                 (connect_timeout)",
                ctx.endpoint
            ),
        ),
    };
    tracing::warn!(
        endpoint = %ctx.endpoint,
        kind = %mapped.kind(),
        error = %mapped.message(),
        "cannot connect to Redis"
    );
    mapped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_clamped_to_what_redis_accepts() {
        assert_eq!(ttl_ms(Duration::ZERO), 1);
        assert_eq!(ttl_ms(Duration::from_micros(10)), 1);
        assert_eq!(ttl_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(ttl_ms(Duration::MAX), MAX_TTL_MS);
    }

    #[test]
    fn glob_is_escaped() {
        assert_eq!(glob_escape("app:users:"), "app:users:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
