//! [`ClusterBus`]: the invalidation bus over Redis Cluster pub/sub.
//!
//! Classic `PUBLISH` / `SUBSCRIBE`, not sharded pub/sub (`SPUBLISH` / `SSUBSCRIBE`): in a
//! cluster a classic `PUBLISH` reaches the subscribers of every node, so one subscriber
//! connection to **any** node hears everything, and it survives the failover or resharding of
//! every shard but the one it happens to be connected to. Sharded pub/sub would need one
//! subscription per shard owning a channel's slot, to be moved after every failover and slot
//! migration, for a traffic (a few batched messages and one heartbeat per second per
//! instance and namespace) that the cluster bus carries easily. See `docs/cluster.md`.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cache_core::{BusEvent, BusTransport};
use cache_core::{Error, ErrorKind, Result};
use cache_redis::support::{pump, ErrorContext, ProviderAuth, Pumped};
use redis::cluster_async::ClusterConnection;
use redis::{ConnectionAddr, ConnectionInfo};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::store::{map_error, ClusterStore, TlsFiles};
use crate::topology::TopologyCache;

/// First wait after a failed subscription attempt; doubles per failure.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Largest wait between subscription attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The invalidation bus over a Redis Cluster: publishes with the store's cluster connection,
/// listens on one dedicated subscriber connection to any node (classic pub/sub is
/// cluster-wide), moving to another node when that one fails.
///
/// Every break of the subscription is reported as [`BusEvent::Disconnected`] and every
/// (re-)subscription as [`BusEvent::Connected`]; the engine flushes the L1 of the namespaces
/// concerned for both, and its sequence numbers and heartbeats catch silent losses (a
/// message published on a node cut off from the subscriber's node).
///
/// ```no_run
/// use std::sync::Arc;
/// use cache_cluster::{ClusterBus, ClusterConfig, ClusterStore};
///
/// # async fn demo() -> cache_core::Result<()> {
/// let store = ClusterStore::connect(ClusterConfig::from_urls(["redis://127.0.0.1:7000"])).await?;
/// let bus = ClusterBus::new(&store);
/// let engine = cache_core::Engine::builder("app")
///     .with_l2(Arc::new(store))
///     .with_bus(Arc::new(bus));
/// # let _ = engine;
/// # Ok(())
/// # }
/// ```
pub struct ClusterBus {
    publisher: ClusterConnection,
    nodes: Arc<NodeSource>,
    tls: TlsFiles,
    auth: Option<ProviderAuth>,
    response_timeout: Duration,
    connect_timeout: Duration,
    ctx: Arc<ErrorContext>,
    channels: Arc<Mutex<Vec<String>>>,
    new_channels: Mutex<Option<mpsc::UnboundedSender<String>>>,
}

impl fmt::Debug for ClusterBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterBus")
            .field("endpoint", &self.ctx.endpoint)
            .field("channels", &lock(&self.channels).len())
            .finish()
    }
}

impl ClusterBus {
    /// A bus on the same cluster, credentials and timeouts as `store`.
    pub fn new(store: &ClusterStore) -> ClusterBus {
        let inner = store.inner();
        ClusterBus {
            publisher: store.connection(),
            nodes: Arc::new(NodeSource {
                topology: inner.topology.clone(),
                seeds: inner.seeds.targets.iter().map(|t| t.info.clone()).collect(),
                tls: inner.seeds.tls,
            }),
            tls: inner.tls.clone(),
            auth: inner.auth.clone(),
            response_timeout: inner.config.response_timeout,
            connect_timeout: inner.config.connect_timeout,
            ctx: inner.ctx.clone(),
            channels: Arc::default(),
            new_channels: Mutex::new(None),
        }
    }
}

/// Where the subscriber may connect: every node of the current topology, then the seeds.
struct NodeSource {
    topology: Arc<TopologyCache>,
    seeds: Vec<ConnectionInfo>,
    tls: bool,
}

impl NodeSource {
    fn candidates(&self) -> Vec<ConnectionInfo> {
        let Some(template) = self.seeds.first() else {
            return Vec::new();
        };
        let mut out: Vec<ConnectionInfo> = self
            .topology
            .nodes()
            .into_iter()
            .map(|node| {
                let addr = if self.tls {
                    ConnectionAddr::TcpTls {
                        host: node.host().to_owned(),
                        port: node.port(),
                        insecure: false,
                        tls_params: None,
                    }
                } else {
                    ConnectionAddr::Tcp(node.host().to_owned(), node.port())
                };
                template.clone().set_addr(addr)
            })
            .collect();
        out.extend(self.seeds.iter().cloned());
        out
    }
}

/// Everything the subscriber task needs, detached from the bus.
struct Subscriber {
    nodes: Arc<NodeSource>,
    tls: TlsFiles,
    auth: Option<ProviderAuth>,
    connect_timeout: Duration,
    response_timeout: Duration,
    ctx: Arc<ErrorContext>,
    channels: Arc<Mutex<Vec<String>>>,
}

/// A client for one subscriber connection: the TLS files applied, and the credentials
/// provider's answer of now (when there is one).
async fn open_client(
    info: ConnectionInfo,
    tls: &TlsFiles,
    auth: Option<&ProviderAuth>,
) -> redis::RedisResult<redis::Client> {
    let info = match auth {
        Some(auth) => auth.apply(info).await?,
        None => info,
    };
    #[cfg(feature = "tls")]
    if let Some(certs) = tls.certificates() {
        return redis::Client::build_with_tls(info, certs);
    }
    #[cfg(not(feature = "tls"))]
    let _ = tls;
    redis::Client::open(info)
}

fn endpoint_of(info: &ConnectionInfo) -> String {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        _ => "a cluster node".to_owned(),
    }
}

impl Subscriber {
    async fn run(
        self,
        mut new_channels: mpsc::UnboundedReceiver<String>,
        events: mpsc::UnboundedSender<BusEvent>,
    ) {
        let mut backoff = MIN_BACKOFF;
        // Instances start on different nodes, so subscribers spread over the cluster.
        let mut attempt: usize = fastrand::usize(..1024);
        loop {
            let candidates = self.nodes.candidates();
            let Some(info) = candidates.get(attempt % candidates.len().max(1)).cloned() else {
                return;
            };
            attempt = attempt.wrapping_add(1);
            let node = endpoint_of(&info);
            let connected = async {
                let client = open_client(info, &self.tls, self.auth.as_ref()).await?;
                let pubsub = client.get_async_pubsub().await?;
                let (mut sink, stream) = pubsub.split();
                let current: Vec<String> = lock(&self.channels).clone();
                if !current.is_empty() {
                    sink.subscribe(&current).await?;
                }
                Ok::<_, redis::RedisError>((sink, stream, current.len()))
            };
            let (mut sink, mut stream, subscribed) = match tokio::time::timeout(
                self.connect_timeout,
                connected,
            )
            .await
            {
                Ok(Ok(parts)) => parts,
                Ok(Err(e)) => {
                    tracing::warn!(node = %node, error = %map_error(&self.ctx, "SUBSCRIBE", &e), "invalidation subscriber cannot subscribe on this cluster node; trying another");
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                Err(_) => {
                    tracing::warn!(node = %node, "invalidation subscriber timed out on this cluster node; trying another");
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            // Channels added since the snapshot also arrive through `new_channels`
            // (subscribing twice is harmless).
            backoff = MIN_BACKOFF;
            if events.send(BusEvent::Connected).is_err() {
                return;
            }
            tracing::debug!(node = %node, channels = subscribed, "invalidation subscriber connected");
            let check = self.response_timeout.max(Duration::from_millis(100));
            if pump(&mut stream, &mut sink, &mut new_channels, &events, check).await
                == Pumped::Stopped
            {
                return;
            }
            tracing::warn!(node = %node, "invalidation subscription lost; resubscribing on another cluster node");
            if events.send(BusEvent::Disconnected).is_err() {
                return;
            }
            tokio::time::sleep(jitter(backoff)).await;
        }
    }
}

/// `d` plus up to 100 % random jitter.
fn jitter(d: Duration) -> Duration {
    d + d.mul_f64(fastrand::f64())
}

#[async_trait]
impl BusTransport for ClusterBus {
    fn kind(&self) -> &'static str {
        "cluster-pubsub"
    }

    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<()> {
        let mut conn = self.publisher.clone();
        // Routed by the channel name like a key; any node would do (classic PUBLISH is
        // forwarded to every node).
        let cmd = redis::cmd("PUBLISH").arg(channel).arg(payload).to_owned();
        match tokio::time::timeout(self.response_timeout, cmd.query_async::<i64>(&mut conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(map_error(&self.ctx, "PUBLISH", &e)),
            Err(_) => Err(self
                .ctx
                .elapsed("PUBLISH", self.response_timeout, "response_timeout")),
        }
    }

    fn start(&self, events: mpsc::UnboundedSender<BusEvent>) -> Result<JoinHandle<()>> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::new(
                ErrorKind::InvalidConfig,
                "the cluster bus runs on tokio: start it inside a runtime",
            )
        })?;
        let (tx, rx) = mpsc::unbounded_channel();
        *lock(&self.new_channels) = Some(tx);
        let subscriber = Subscriber {
            nodes: self.nodes.clone(),
            tls: self.tls.clone(),
            auth: self.auth.clone(),
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
            ctx: self.ctx.clone(),
            channels: self.channels.clone(),
        };
        Ok(handle.spawn(subscriber.run(rx, events)))
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
