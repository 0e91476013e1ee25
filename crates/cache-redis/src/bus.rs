//! Invalidation transports over Redis: pub/sub ([`RedisBus`]) and RESP3 client tracking
//! ([`RedisTracking`]).
//!
//! Both run their own connection in a background task, reconnect with back-off, PING it
//! periodically (a silently dead connection counts as a disconnect), and report every break
//! and every re-establishment to the engine, which flushes L1 for each: a lost subscription
//! is treated as "my L1 may be stale", never ignored.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cache_core::{BusEvent, BusTransport};
use cache_core::{Error, ErrorKind, Result};
use futures::StreamExt;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushKind, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::credentials::{client_with, ProviderAuth};
use crate::errors::ErrorContext;
use crate::RedisStore;

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often an idle subscription connection is checked with PING.
const PING_EVERY: Duration = Duration::from_millis(500);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn runtime() -> Result<tokio::runtime::Handle> {
    tokio::runtime::Handle::try_current().map_err(|_| {
        Error::new(
            ErrorKind::InvalidConfig,
            "the Redis bus runs on tokio: start it inside a runtime",
        )
    })
}

/// Invalidation bus over Redis pub/sub: publishes with the store's connection, listens on a
/// dedicated subscriber connection (one channel per namespace, `{prefix}:{ns}:__inv`).
///
/// With a credentials provider, every (re)connect of the subscriber asks it.
pub struct RedisBus {
    client: redis::Client,
    auth: Option<ProviderAuth>,
    publisher: RedisStore,
    connect_timeout: Duration,
    ctx: Arc<ErrorContext>,
    channels: Arc<Mutex<Vec<String>>>,
    new_channels: Mutex<Option<mpsc::UnboundedSender<String>>>,
}

impl fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBus")
            .field("endpoint", &self.ctx.endpoint)
            .field("channels", &lock(&self.channels).len())
            .finish()
    }
}

impl RedisBus {
    /// A bus on the same server and credentials as `store`.
    pub fn new(store: &RedisStore) -> RedisBus {
        RedisBus {
            client: store.client(),
            auth: store.auth(),
            publisher: store.clone(),
            connect_timeout: store.config().connect_timeout,
            ctx: store.error_context(),
            channels: Arc::default(),
            new_channels: Mutex::new(None),
        }
    }
}

#[async_trait]
impl BusTransport for RedisBus {
    fn kind(&self) -> &'static str {
        "redis-pubsub"
    }

    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<()> {
        self.publisher.publish(channel, payload).await
    }

    fn start(&self, events: mpsc::UnboundedSender<BusEvent>) -> Result<JoinHandle<()>> {
        let handle = runtime()?;
        let (tx, rx) = mpsc::unbounded_channel();
        *lock(&self.new_channels) = Some(tx);
        Ok(handle.spawn(subscriber_loop(
            self.client.clone(),
            self.auth.clone(),
            self.channels.clone(),
            rx,
            events,
            self.connect_timeout,
            self.ctx.clone(),
        )))
    }

    fn subscribe(&self, channel: &str) {
        {
            let mut chans = lock(&self.channels);
            if chans.iter().any(|c| c == channel) {
                return;
            }
            chans.push(channel.to_owned());
        }
        if let Some(tx) = lock(&self.new_channels).as_ref() {
            let _ = tx.send(channel.to_owned());
        }
    }
}

/// Why [`pump`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pumped {
    /// The subscription broke: the stream ended, or a subscribe or ping failed or timed out.
    Lost,
    /// The engine is gone (its event or channel end was dropped).
    Stopped,
}

/// Drive one live pub/sub connection: forward its messages to `events`, subscribe to each
/// channel arriving on `new_channels`, and ping every 500 ms so a dead connection is noticed.
/// Every subscribe and ping is bounded by `limit`. Shared by the standalone and the cluster
/// bus.
pub async fn pump(
    stream: &mut redis::aio::PubSubStream,
    sink: &mut redis::aio::PubSubSink,
    new_channels: &mut mpsc::UnboundedReceiver<String>,
    events: &mpsc::UnboundedSender<BusEvent>,
    limit: Duration,
) -> Pumped {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(m) => {
                    let event = BusEvent::Message {
                        channel: m.get_channel_name().to_owned(),
                        payload: m.get_payload_bytes().to_vec(),
                    };
                    if events.send(event).is_err() {
                        return Pumped::Stopped;
                    }
                }
                None => return Pumped::Lost,
            },
            ch = new_channels.recv() => match ch {
                Some(ch) => {
                    if !matches!(tokio::time::timeout(limit, sink.subscribe(&ch)).await, Ok(Ok(()))) {
                        return Pumped::Lost;
                    }
                }
                None => return Pumped::Stopped,
            },
            _ = ping.tick() => {
                if !matches!(tokio::time::timeout(limit, sink.ping::<Value>()).await, Ok(Ok(_))) {
                    return Pumped::Lost;
                }
            }
        }
    }
}

async fn subscriber_loop(
    client: redis::Client,
    auth: Option<ProviderAuth>,
    channels: Arc<Mutex<Vec<String>>>,
    mut new_channels: mpsc::UnboundedReceiver<String>,
    events: mpsc::UnboundedSender<BusEvent>,
    connect_timeout: Duration,
    ctx: Arc<ErrorContext>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let connect = async {
            client_with(&client, auth.as_ref())
                .await?
                .get_async_pubsub()
                .await
        };
        let connected = tokio::time::timeout(connect_timeout, connect).await;
        let pubsub = match connected {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::warn!(endpoint = %ctx.endpoint, error = %ctx.map("SUBSCRIBE", &e), "invalidation subscriber cannot connect; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(_) => {
                tracing::warn!(endpoint = %ctx.endpoint, "invalidation subscriber connect timed out; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let current: Vec<String> = lock(&channels).clone();
        let mut ok = true;
        if !current.is_empty() {
            ok = matches!(
                tokio::time::timeout(connect_timeout, sink.subscribe(&current)).await,
                Ok(Ok(()))
            );
        }
        if !ok {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        backoff = MIN_BACKOFF;
        if events.send(BusEvent::Connected).is_err() {
            return;
        }
        tracing::debug!(endpoint = %ctx.endpoint, channels = current.len(), "invalidation subscriber connected");
        if pump(
            &mut stream,
            &mut sink,
            &mut new_channels,
            &events,
            connect_timeout,
        )
        .await
            == Pumped::Stopped
        {
            return;
        }
        tracing::warn!(endpoint = %ctx.endpoint, "invalidation subscription lost; reconnecting");
        if events.send(BusEvent::Disconnected).is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
    }
}

/// Server-assisted client-side caching: a RESP3 connection with
/// `CLIENT TRACKING ON BCAST PREFIX {prefix}:`, so a write to any key under the prefix, by any
/// client in any language (or `redis-cli`), drops the L1 copies of every instance.
///
/// Needs Redis 6+. Every write, including this instance's own, produces an invalidation to
/// every tracking instance (BCAST cannot tell a fresh value from an old one), so an instance
/// drops its own freshly written L1 entry and reads it back from L2 once.
pub struct RedisTracking {
    client: redis::Client,
    auth: Option<ProviderAuth>,
    prefix: String,
    connect_timeout: Duration,
    ctx: Arc<ErrorContext>,
}

impl fmt::Debug for RedisTracking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTracking")
            .field("endpoint", &self.ctx.endpoint)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisTracking {
    /// Tracking of every key starting with `{prefix}:` on the server of `store`.
    pub fn new(store: &RedisStore, prefix: &str) -> Result<RedisTracking> {
        let info = store.client().get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings))
            .map_err(|e| store.error_context().map("CLIENT TRACKING", &e))?;
        Ok(RedisTracking {
            client,
            auth: store.auth(),
            prefix: format!("{prefix}:"),
            connect_timeout: store.config().connect_timeout,
            ctx: store.error_context(),
        })
    }
}

#[async_trait]
impl BusTransport for RedisTracking {
    fn kind(&self) -> &'static str {
        "redis-tracking"
    }

    async fn publish(&self, _channel: &str, _payload: Vec<u8>) -> Result<()> {
        Ok(())
    }

    fn start(&self, events: mpsc::UnboundedSender<BusEvent>) -> Result<JoinHandle<()>> {
        let handle = runtime()?;
        Ok(handle.spawn(tracking_loop(
            self.client.clone(),
            self.auth.clone(),
            self.prefix.clone(),
            events,
            self.connect_timeout,
            self.ctx.clone(),
        )))
    }

    fn subscribe(&self, _channel: &str) {}
}

fn keys_of(push: &[Value]) -> Option<Vec<String>> {
    // `invalidate` push: [array of keys] or [nil] (FLUSHALL / FLUSHDB).
    match push.first() {
        Some(Value::Array(keys)) => Some(
            keys.iter()
                .filter_map(|k| match k {
                    Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
                    Value::SimpleString(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
        ),
        Some(Value::Nil) | None => Some(Vec::new()),
        _ => None,
    }
}

async fn tracking_loop(
    client: redis::Client,
    auth: Option<ProviderAuth>,
    prefix: String,
    events: mpsc::UnboundedSender<BusEvent>,
    connect_timeout: Duration,
    ctx: Arc<ErrorContext>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let (push_tx, mut push_rx) = mpsc::unbounded_channel();
        let mut config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(connect_timeout))
            .set_push_sender(push_tx);
        if let Some(auth) = &auth {
            config = config.set_credentials_provider(auth.clone());
        }
        let setup = async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("CLIENT")
                .arg("TRACKING")
                .arg("ON")
                .arg("BCAST")
                .arg("PREFIX")
                .arg(&prefix)
                .query_async::<Value>(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>(conn)
        };
        let mut conn = match tokio::time::timeout(connect_timeout, setup).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!(endpoint = %ctx.endpoint, error = %ctx.map("CLIENT TRACKING", &e), "tracking connection failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = MIN_BACKOFF;
        if events.send(BusEvent::Connected).is_err() {
            return;
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                push = push_rx.recv() => match push {
                    Some(p) if p.kind == PushKind::Invalidate => {
                        if let Some(keys) = keys_of(&p.data) {
                            if events.send(BusEvent::KeysChanged(keys)).is_err() {
                                return;
                            }
                        }
                    }
                    Some(p) if p.kind == PushKind::Disconnection => break,
                    Some(_) => {}
                    None => break,
                },
                _ = ping.tick() => {
                    let pinged = tokio::time::timeout(
                        connect_timeout,
                        redis::cmd("PING").query_async::<Value>(&mut conn),
                    )
                    .await;
                    if !matches!(pinged, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        tracing::warn!(endpoint = %ctx.endpoint, "tracking connection lost; reconnecting");
        if events.send(BusEvent::Disconnected).is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
    }
}
