//! [`RedisStore`]: the [`RemoteStore`] over a redis-rs [`ConnectionManager`].

use std::fmt;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cache_core::remote::check_value_size;
use cache_core::{Error, ErrorKind, LeaseFill, RemoteEntry, RemoteStore, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, RedisResult, Value};

use crate::coalesce::{self, Answer, Coalesced, Reads};
use crate::config::RedisConfig;
use crate::credentials::ProviderAuth;
use crate::errors::ErrorContext;

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
/// let config = RedisConfig::builder().url("redis://127.0.0.1:6379/").build()?;
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

    fn check_size(&self, key: &str, len: usize) -> Result<()> {
        check_value_size(key, len, self.inner.config.max_value_size)
    }

    /// The `EVALSHA` of the lease script for one compare-and-set fill
    /// (`KEYS = [lease_key, key]`, `ARGV = [token, value, ttl_ms]`).
    fn lease_invocation(
        &self,
        lease_key: &str,
        token: &[u8],
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.inner.lease_script.prepare_invoke();
        invocation
            .key(lease_key)
            .key(key)
            .arg(token)
            .arg(value)
            .arg(ttl_ms(ttl));
        invocation
    }

    /// Send `pipe` (one round trip) under `response_timeout` and return one answer per command,
    /// server errors included as [`Value::ServerError`], so each command's error can be judged
    /// on its own.
    async fn run_pipeline(
        &self,
        op: &'static str,
        mut pipe: redis::Pipeline,
    ) -> Result<Vec<Value>> {
        pipe.ignore_errors();
        let expected = pipe.len();
        let mut conn = self.conn();
        let answers = self
            .run(op, async move {
                pipe.query_async::<Vec<Value>>(&mut conn).await
            })
            .await?;
        self.check_answers(op, expected, answers.len())?;
        Ok(answers)
    }

    /// A pipeline of `expected` commands must have as many answers.
    fn check_answers(&self, op: &str, expected: usize, got: usize) -> Result<()> {
        if got == expected {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Remote,
            format!(
                "Redis at {} answered {op} of {expected} commands with {got} answers",
                self.inner.ctx.endpoint
            ),
        ))
    }

    /// Whether one `SET NX` stored (`OK`) or found the key taken (nil).
    fn set_nx_answer(&self, op: &str, answer: Value) -> Result<bool> {
        match answer
            .extract_error()
            .map_err(|e| self.inner.ctx.map(op, &e))?
        {
            Value::Okay => Ok(true),
            Value::Nil => Ok(false),
            other => Err(Error::new(
                ErrorKind::Remote,
                format!(
                    "Redis at {} answered {op} with an unexpected {}",
                    self.inner.ctx.endpoint,
                    value_type(&other)
                ),
            )),
        }
    }

    /// Whether one run of the lease script stored (`1`) or not (`0`).
    fn lease_answer(&self, op: &str, answer: Value) -> Result<bool> {
        match answer
            .extract_error()
            .map_err(|e| self.inner.ctx.map(op, &e))?
        {
            Value::Int(stored) => Ok(stored == 1),
            other => Err(Error::new(
                ErrorKind::Remote,
                format!(
                    "Redis at {} answered {op} with an unexpected {}",
                    self.inner.ctx.endpoint,
                    value_type(&other)
                ),
            )),
        }
    }
}

/// Whether `e` says the server refused the credentials of a connection (not a missing
/// permission for one command).
fn refused_credentials(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
}

/// Whether a pipeline answer is `NOSCRIPT` (the server has not cached the script).
fn is_noscript(answer: &Value) -> bool {
    matches!(answer, Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::NoScript))
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

#[async_trait]
impl RemoteStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn max_value_size(&self) -> usize {
        self.inner.config.max_value_size
    }

    /// A `GET`, coalesced with the other single-key reads of this store: sent at once when no
    /// read is in flight, else queued and sent with the others as one `MGET` when the read in
    /// flight is answered (see the module `coalesce`). Bounded by `response_timeout` from the
    /// call, queue time included.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        coalesce::read(self, key).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn();
        let cmd = redis::cmd("MGET").arg(keys).to_owned();
        let values = self
            .run("MGET", async move {
                cmd.query_async::<Vec<Option<Vec<u8>>>>(&mut conn).await
            })
            .await?;
        if values.len() != keys.len() {
            return Err(Error::new(
                ErrorKind::Remote,
                format!(
                    "Redis at {} answered MGET of {} keys with {} values",
                    self.inner.ctx.endpoint,
                    keys.len(),
                    values.len()
                ),
            ));
        }
        Ok(values)
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        self.check_size(key, value.len())?;
        let mut conn = self.conn();
        let cmd = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl_ms(ttl))
            .to_owned();
        self.run("SET", async move { cmd.exec_async(&mut conn).await })
            .await
    }

    async fn set_many(&self, entries: Vec<RemoteEntry>) -> Result<()> {
        for e in &entries {
            self.check_size(&e.key, e.value.len())?;
        }
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for e in entries {
            pipe.cmd("SET")
                .arg(e.key)
                .arg(e.value)
                .arg("PX")
                .arg(ttl_ms(e.ttl))
                .ignore();
        }
        let mut conn = self.conn();
        self.run(
            "SET (pipeline)",
            async move { pipe.exec_async(&mut conn).await },
        )
        .await
    }

    async fn set_after_delete(
        &self,
        first: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<()> {
        self.check_size(key, value.len())?;
        // One round trip: the commands of a pipeline run in order on one connection.
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(first).ignore();
        pipe.cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl_ms(ttl))
            .ignore();
        let mut conn = self.conn();
        self.run("DEL + SET (pipeline)", async move {
            pipe.exec_async(&mut conn).await
        })
        .await
    }

    async fn delete(&self, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let cmd = redis::cmd("DEL").arg(keys).to_owned();
        self.run("DEL", async move { cmd.exec_async(&mut conn).await })
            .await
    }

    async fn tag_add(&self, tag_key: &str, member: &str, ttl: Duration) -> Result<()> {
        let mut conn = self.conn();
        let mut inv = self.inner.tag_add_script.prepare_invoke();
        inv.key(tag_key).arg(member).arg(ttl_ms(ttl));
        self.run("EVALSHA (tag_add)", async move {
            inv.invoke_async::<i64>(&mut conn).await.map(|_| ())
        })
        .await
    }

    async fn tag_take(&self, tag_key: &str, pending_key: &str) -> Result<Vec<String>> {
        let mut conn = self.conn();
        let mut inv = self.inner.tag_take_script.prepare_invoke();
        inv.key(tag_key).key(pending_key);
        self.run("EVALSHA (tag_take)", async move {
            inv.invoke_async::<Vec<String>>(&mut conn).await
        })
        .await
    }

    async fn tag_done(&self, pending_key: &str, members: &[String]) -> Result<()> {
        if members.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let cmd = redis::cmd("SREM").arg(pending_key).arg(members).to_owned();
        self.run("SREM", async move { cmd.exec_async(&mut conn).await })
            .await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        // SCAN with a MATCH pattern (glob characters in the prefix escaped), deleting each
        // batch as it comes. Each SCAN/DEL call is bounded by response_timeout.
        let pattern = format!("{}*", glob_escape(prefix));
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let mut conn = self.conn();
            let cmd = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .to_owned();
            let (next, keys): (u64, Vec<String>) = self
                .run("SCAN", async move { cmd.query_async(&mut conn).await })
                .await?;
            if !keys.is_empty() {
                let mut conn = self.conn();
                let cmd = redis::cmd("UNLINK").arg(&keys).to_owned();
                let n: u64 = self
                    .run("UNLINK", async move { cmd.query_async(&mut conn).await })
                    .await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    async fn set_nx(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<bool> {
        self.check_size(key, value.len())?;
        let mut conn = self.conn();
        let cmd = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms(ttl))
            .to_owned();
        let answer = self
            .run("SET NX", async move {
                cmd.query_async::<Value>(&mut conn).await
            })
            .await?;
        self.set_nx_answer("SET NX", answer)
    }

    async fn set_if_lease(
        &self,
        lease_key: &str,
        token: &[u8],
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool> {
        self.check_size(key, value.len())?;
        let mut conn = self.conn();
        let invocation = self.lease_invocation(lease_key, token, key, &value, ttl);
        let stored = self
            .run("EVALSHA (set_if_lease)", async move {
                invocation.invoke_async::<i64>(&mut conn).await
            })
            .await?;
        Ok(stored == 1)
    }

    /// One pipeline (one round trip) of `SET key value NX PX ttl`, one per key.
    async fn set_nx_many(&self, keys: &[String], value: &[u8], ttl: Duration) -> Result<Vec<bool>> {
        let Some(first) = keys.first() else {
            return Ok(Vec::new());
        };
        self.check_size(first, value.len())?;
        let ttl = ttl_ms(ttl);
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("SET")
                .arg(key)
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg(ttl);
        }
        let op = "SET NX (pipeline)";
        self.run_pipeline(op, pipe)
            .await?
            .into_iter()
            .map(|answer| self.set_nx_answer(op, answer))
            .collect()
    }

    /// One pipeline (one round trip) of `EVALSHA`s of the lease script, one per fill. Fills
    /// answered `NOSCRIPT` (a restarted server, `SCRIPT FLUSH`) did nothing; as in
    /// [`RemoteStore::set_if_lease`], the script is then loaded and those fills are sent again
    /// (one more pipeline: `SCRIPT LOAD`, then their `EVALSHA`s), all within one
    /// `response_timeout`.
    async fn set_if_lease_many(&self, fills: Vec<LeaseFill>) -> Result<Vec<bool>> {
        for f in &fills {
            self.check_size(&f.key, f.value.len())?;
        }
        if fills.is_empty() {
            return Ok(Vec::new());
        }
        let op = "EVALSHA (set_if_lease pipeline)";
        let invocations: Vec<_> = fills
            .iter()
            .map(|f| self.lease_invocation(&f.lease_key, &f.token, &f.key, &f.value, f.ttl))
            .collect();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for invocation in &invocations {
            pipe.invoke_script(invocation);
        }
        let script = &self.inner.lease_script;
        let mut conn = self.conn();
        let answers = self
            .run(op, async move {
                let mut answers: Vec<Value> = pipe.query_async(&mut conn).await?;
                let missing: Vec<usize> = (0..answers.len())
                    .filter(|i| is_noscript(&answers[*i]))
                    .collect();
                if missing.is_empty() {
                    return Ok(answers);
                }
                let mut again = redis::pipe();
                again.ignore_errors().load_script(script);
                for i in &missing {
                    again.invoke_script(&invocations[*i]);
                }
                let mut retried = again
                    .query_async::<Vec<Value>>(&mut conn)
                    .await?
                    .into_iter();
                // `SCRIPT LOAD` failing (an ACL refusing it, say) is the error to report.
                if let Some(loaded) = retried.next() {
                    loaded.extract_error()?;
                }
                for (i, answer) in missing.into_iter().zip(retried) {
                    answers[i] = answer;
                }
                Ok(answers)
            })
            .await?;
        self.check_answers(op, fills.len(), answers.len())?;
        answers
            .into_iter()
            .map(|answer| self.lease_answer(op, answer))
            .collect()
    }
}

/// A short name of a reply's type, for messages (never its content).
fn value_type(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Int(_) => "integer",
        Value::BulkString(_) => "bulk string",
        Value::Array(_) => "array",
        Value::SimpleString(_) => "simple string",
        Value::Okay => "OK",
        _ => "reply",
    }
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
