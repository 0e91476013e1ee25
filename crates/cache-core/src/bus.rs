//! L1 coherence across instances: an invalidation bus that notices its own losses.
//!
//! Redis pub/sub delivers at most once. A lost message would leave another instance serving
//! its L1 copy until the TTL ends, silently. So every publisher numbers its messages per
//! channel and sends a heartbeat carrying its latest number; a receiver that sees a gap, a
//! disconnect, or a publisher falling silent flushes the namespaces concerned from its L1 and
//! counts the loss. Staleness after a loss is bounded by the detection time, never by the TTL.
//!
//! The transport ([`BusTransport`]) only moves bytes: `cache-redis` implements it over
//! Redis pub/sub, and over RESP3 client tracking (writes by any client, in any language,
//! drop L1 copies).
//!
//! Wire format of a message (little endian):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | version (`1`) |
//! | 1 | kind: 1 keys, 2 clear namespace, 3 heartbeat |
//! | 8 | publisher instance id |
//! | 8 | sequence number on this channel (heartbeats repeat the latest) |
//! | 4 | key count, then per key: 4-byte length + UTF-8 bytes |

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{Error, ErrorKind, Result};
pub(crate) mod reconnect;
use reconnect::{Link, LossPlan};

/// What a transport delivers to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusEvent {
    /// A message published on a subscribed channel.
    Message {
        /// The channel.
        channel: String,
        /// The bytes published.
        payload: Vec<u8>,
    },
    /// Full keys changed by some client (tracking mode); empty means "everything" (FLUSHALL).
    KeysChanged(Vec<String>),
    /// The subscription is (re)established: anything sent before may have been missed.
    Connected,
    /// The subscription broke; messages sent from now on are lost until `Connected`.
    Disconnected,
}

/// Moves invalidation messages between instances.
#[async_trait]
pub trait BusTransport: Send + Sync + fmt::Debug + 'static {
    /// A short name ("redis-pubsub", "redis-tracking", "memory").
    fn kind(&self) -> &'static str;

    /// Publish `payload` on `channel`.
    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<()>;

    /// Start delivering events into `events`, reconnecting with back-off by itself and
    /// reporting every `Disconnected` / `Connected`. The returned task is aborted when the
    /// engine is dropped.
    fn start(&self, events: mpsc::UnboundedSender<BusEvent>) -> Result<JoinHandle<()>>;

    /// Listen on one more channel from now on (kept across reconnects). Idempotent.
    fn subscribe(&self, channel: &str);
}

/// Bus timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusConfig {
    /// How long invalidations are gathered before one message is published. Default 0:
    /// a message goes out at once, and whatever is queued while it is in flight forms the next
    /// batch (so a burst becomes one message per round trip, at no added latency). A window
    /// (e.g. 1 ms) trades that latency for fewer, larger messages.
    pub batch_window: Duration,
    /// At most this many keys per message (default 256).
    pub batch_max_keys: usize,
    /// How often each instance announces its latest sequence number (default 1 s).
    pub heartbeat: Duration,
    /// A publisher not heard for this long is presumed lost: its namespaces are flushed
    /// (default 3 heartbeats).
    pub silence_limit: Duration,
    /// At most this many keys wait to be published (default 100,000). Past it, the keys
    /// waiting for a channel are replaced by one "clear namespace" message: the receivers
    /// flush instead of dropping single keys, and memory stays bounded while the transport
    /// is slow.
    pub max_queued_keys: usize,
    /// What L1 does when invalidations may have been lost (a broken subscription, a sequence
    /// gap, a silent publisher) and when the subscription comes back (default
    /// [`ReconnectPolicy::Flush`]).
    pub on_loss: ReconnectPolicy,
}

/// What L1 does when the bus may have lost invalidations, and when its subscription comes
/// back. Every policy flushes L1 when a broken subscription is re-established (anything
/// published meanwhile was missed); they differ in what happens between the loss and then.
/// See `docs/coherence.md` for the trade-offs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReconnectPolicy {
    /// Flush the namespaces concerned at once when a loss is detected, and again when the
    /// subscription is back (the default). Nothing is served stale past the detection time;
    /// the price is a burst of misses (L2 reads, loads) after every blip.
    #[default]
    Flush,
    /// Keep serving L1 through a loss, for at most `max_staleness`: the namespaces concerned
    /// are flushed when the subscription is back, or `max_staleness` after the loss if that
    /// comes first (and every `max_staleness` while the subscription stays broken). A gap or a
    /// silent publisher (no reconnect to wait for) is flushed `max_staleness` after its
    /// detection. A short blip costs no misses; an entry may be served up to `max_staleness`
    /// (plus the detection time) after an invalidation it missed.
    Keep {
        /// The longest an entry is served after a loss is detected (must be positive).
        max_staleness: Duration,
    },
    /// Flush as [`ReconnectPolicy::Flush`] does, and after each such flush (a loss, the
    /// reconnect) read up to `max_keys` of the namespace's most recently read or loaded keys
    /// from L2 into L1 in the background (no loader runs), so the first requests after a
    /// reconnect hit L1 again. The price is one batched L2 read per namespace per flush, and
    /// a record of recently used keys (kept on L1 misses only).
    Reload {
        /// How many recently used keys per namespace are kept in mind and reloaded (must be
        /// positive).
        max_keys: usize,
    },
}

impl ReconnectPolicy {
    /// [`ReconnectPolicy::Keep`] with this bound.
    pub fn keep(max_staleness: Duration) -> Self {
        ReconnectPolicy::Keep { max_staleness }
    }

    /// [`ReconnectPolicy::Reload`] of at most this many keys per namespace.
    pub fn reload(max_keys: usize) -> Self {
        ReconnectPolicy::Reload { max_keys }
    }

    /// How many keys per namespace a reload reads (0 unless [`ReconnectPolicy::Reload`]).
    pub(crate) fn reload_keys(&self) -> usize {
        match self {
            ReconnectPolicy::Reload { max_keys } => *max_keys,
            _ => 0,
        }
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            batch_window: Duration::ZERO,
            batch_max_keys: 256,
            heartbeat: Duration::from_secs(1),
            silence_limit: Duration::from_secs(3),
            max_queued_keys: 100_000,
            on_loss: ReconnectPolicy::Flush,
        }
    }
}

impl BusConfig {
    /// Set the heartbeat interval; the silence limit becomes three intervals.
    pub fn with_heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self.silence_limit = every * 3;
        self
    }

    /// Set the batching window.
    pub fn with_batch_window(mut self, window: Duration) -> Self {
        self.batch_window = window;
        self
    }

    /// Set how many keys may wait to be published (see [`BusConfig::max_queued_keys`]).
    pub fn with_max_queued_keys(mut self, keys: usize) -> Self {
        self.max_queued_keys = keys;
        self
    }

    /// What L1 does when invalidations may have been lost (see [`ReconnectPolicy`]).
    pub fn with_on_loss(mut self, policy: ReconnectPolicy) -> Self {
        self.on_loss = policy;
        self
    }

    /// Check the settings: a zero heartbeat, a silence limit shorter than a heartbeat, a
    /// zero batch size or queue bound, a zero `max_staleness` or a zero `max_keys` in
    /// [`ReconnectPolicy`] is an [`ErrorKind::InvalidConfig`] error.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| {
            Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("bus config: {m}"),
            ))
        };
        if self.heartbeat.is_zero() {
            return bad("heartbeat must be positive");
        }
        if self.silence_limit < self.heartbeat {
            return bad("silence_limit must be at least one heartbeat");
        }
        if self.batch_max_keys == 0 {
            return bad("batch_max_keys must be positive");
        }
        if self.max_queued_keys == 0 {
            return bad("max_queued_keys must be positive");
        }
        match self.on_loss {
            ReconnectPolicy::Keep { max_staleness } if max_staleness.is_zero() => {
                return bad("on_loss: Keep needs a positive max_staleness (Flush keeps nothing)");
            }
            ReconnectPolicy::Reload { max_keys: 0 } => {
                return bad("on_loss: Reload needs a positive max_keys (Flush reloads nothing)");
            }
            _ => {}
        }
        Ok(())
    }
}

/// A typed cache as the bus sees it.
pub(crate) trait BusTarget: Send + Sync {
    /// Drop these user keys from L1 (they changed elsewhere).
    fn invalidate_keys(&self, keys: &[String]);
    /// Drop the whole namespace from L1 (cleared elsewhere, or a possible loss).
    fn flush(&self);
    /// Report an event to the cache's observer.
    fn report(&self, event: crate::observer::CacheEvent);
    /// The user keys of those `full_keys` that belong to this namespace (tracking mode).
    fn user_keys(&self, full_keys: &[String]) -> Vec<String>;
    /// Read up to `max_keys` recently used keys from L2 into L1, in the background
    /// ([`ReconnectPolicy::Reload`], after the flush of a reconnect).
    fn reload(&self, max_keys: usize);
}

/// How far below the last number heard a message may be and still count as merely late.
const REORDER_WINDOW: u64 = 1024;

const VERSION: u8 = 1;
const KIND_KEYS: u8 = 1;
const KIND_CLEAR: u8 = 2;
const KIND_HEARTBEAT: u8 = 3;

/// A decoded bus message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// 1 keys, 2 clear, 3 heartbeat.
    pub kind: u8,
    /// Publisher instance.
    pub instance: u64,
    /// Sequence number on the channel.
    pub seq: u64,
    /// User keys (kind 1).
    pub keys: Vec<String>,
}

impl Message {
    /// Encode.
    pub fn encode(&self) -> Vec<u8> {
        let len: usize = self.keys.iter().map(|k| 4 + k.len()).sum();
        let mut out = Vec::with_capacity(22 + len);
        out.push(VERSION);
        out.push(self.kind);
        out.extend_from_slice(&self.instance.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&(self.keys.len() as u32).to_le_bytes());
        for k in &self.keys {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k.as_bytes());
        }
        out
    }

    /// Decode; foreign or corrupt bytes are an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Message> {
        let bad = |m: &str| Error::new(ErrorKind::Decode, format!("bus message: {m}"));
        let take = |b: &[u8], at: usize, n: usize| -> Result<Vec<u8>> {
            b.get(at..at + n)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| bad("truncated"))
        };
        if bytes.len() < 22 {
            return Err(bad("shorter than its header"));
        }
        if bytes[0] != VERSION {
            return Err(bad("unknown version"));
        }
        let kind = bytes[1];
        if !(KIND_KEYS..=KIND_HEARTBEAT).contains(&kind) {
            return Err(bad("unknown kind"));
        }
        let u64_at = |at: usize| -> Result<u64> {
            let v = take(bytes, at, 8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(&v);
            Ok(u64::from_le_bytes(a))
        };
        let u32_at = |at: usize| -> Result<usize> {
            let v = take(bytes, at, 4)?;
            let mut a = [0u8; 4];
            a.copy_from_slice(&v);
            Ok(u32::from_le_bytes(a) as usize)
        };
        let instance = u64_at(2)?;
        let seq = u64_at(10)?;
        let count = u32_at(18)?;
        if count > bytes.len() / 4 {
            return Err(bad("key count larger than the message"));
        }
        let mut keys = Vec::with_capacity(count);
        let mut at = 22;
        for _ in 0..count {
            let n = u32_at(at)?;
            let k = take(bytes, at + 4, n)?;
            keys.push(String::from_utf8(k).map_err(|_| bad("key is not UTF-8"))?);
            at += 4 + n;
        }
        if at != bytes.len() {
            return Err(bad("trailing bytes"));
        }
        Ok(Message {
            kind,
            instance,
            seq,
            keys,
        })
    }
}

/// What waits to be published: keys per channel, and channels to clear. Bounded by
/// `max_queued_keys`: past it a channel's keys become one clear.
#[derive(Default)]
struct OutState {
    keys: HashMap<String, Vec<String>>,
    clears: Vec<String>,
    queued: usize,
}

struct OutQueue {
    state: Mutex<OutState>,
    wake: tokio::sync::Notify,
    max_keys: usize,
    overflows: AtomicU64,
    /// The engine is gone: send what is queued, then stop.
    closing: std::sync::atomic::AtomicBool,
    /// The publisher holds a batch it took from the queue and has not finished sending.
    sending: std::sync::atomic::AtomicBool,
}

impl OutQueue {
    fn push_keys(&self, channel: &str, keys: Vec<String>) {
        {
            let mut s = lock(&self.state);
            if s.clears.iter().any(|c| c == channel) {
                // A clear of this channel is on its way: it covers these keys.
                return;
            }
            if s.queued + keys.len() > self.max_keys {
                let dropped = s.keys.remove(channel).map_or(0, |k| k.len());
                s.queued -= dropped;
                s.clears.push(channel.to_owned());
                self.overflows.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    channel,
                    "invalidation queue full: the namespace is cleared instead"
                );
            } else {
                s.queued += keys.len();
                s.keys.entry(channel.to_owned()).or_default().extend(keys);
            }
        }
        self.wake.notify_one();
    }

    fn push_clear(&self, channel: &str) {
        {
            let mut s = lock(&self.state);
            let dropped = s.keys.remove(channel).map_or(0, |k| k.len());
            s.queued -= dropped;
            if !s.clears.iter().any(|c| c == channel) {
                s.clears.push(channel.to_owned());
            }
        }
        self.wake.notify_one();
    }

    fn take(&self) -> OutState {
        std::mem::take(&mut *lock(&self.state))
    }

    fn is_empty(&self) -> bool {
        let s = lock(&self.state);
        s.keys.is_empty() && s.clears.is_empty()
    }

    fn queued(&self) -> usize {
        lock(&self.state).queued
    }
}

#[derive(Default)]
struct PublisherState {
    /// Latest sequence number taken per channel.
    seqs: HashMap<String, u64>,
    /// Latest sequence number whose publish has finished (delivered or failed) per channel:
    /// what heartbeats announce, so a heartbeat never overtakes the message it counts.
    done: HashMap<String, u64>,
}

/// What a receiver knows of one publisher on one channel.
struct Heard {
    seq: u64,
    at: Instant,
}

/// The engine's side of the bus: batching publisher, heartbeats, receiver with loss detection.
pub(crate) struct BusRuntime {
    pub(crate) instance: u64,
    transport: Arc<dyn BusTransport>,
    outgoing: Arc<OutQueue>,
    targets: Arc<Mutex<HashMap<String, Weak<dyn BusTarget>>>>,
    pub(crate) stats: Arc<BusCounters>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// True once client tracking is on (always true without tracking).
    tracking_ready: tokio::sync::watch::Receiver<bool>,
    /// What L1 does on a loss.
    on_loss: ReconnectPolicy,
}

/// Counters of the bus, engine-wide.
#[derive(Debug, Default)]
pub(crate) struct BusCounters {
    pub(crate) sent_messages: AtomicU64,
    pub(crate) sent_keys: AtomicU64,
    pub(crate) received_keys: AtomicU64,
    pub(crate) losses: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) publish_errors: AtomicU64,
}

/// Engine-wide bus counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusStats {
    /// Messages published (data, not heartbeats).
    pub sent_messages: u64,
    /// Keys carried by those messages.
    pub sent_keys: u64,
    /// Keys received from other instances (or tracking) and dropped from L1.
    pub received_keys: u64,
    /// Possible losses detected (each flushed one or more namespaces).
    pub losses: u64,
    /// Times the subscription came back after a break.
    pub reconnects: u64,
    /// Publishes that failed.
    pub publish_errors: u64,
    /// Keys waiting to be published now.
    pub queued_keys: u64,
    /// Times the publish queue was full and a namespace clear replaced its keys.
    pub queue_overflows: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BusRuntime {
    /// Start the publisher, heartbeat and receiver tasks on the current tokio runtime.
    pub(crate) fn start(
        transport: Arc<dyn BusTransport>,
        tracking: Option<Arc<dyn BusTransport>>,
        config: BusConfig,
    ) -> Result<BusRuntime> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::new(
                ErrorKind::InvalidConfig,
                "the invalidation bus runs on tokio: build the engine inside a runtime",
            )
        })?;
        config.validate()?;
        let instance = fastrand::u64(1..);
        let outgoing = Arc::new(OutQueue {
            state: Mutex::new(OutState::default()),
            wake: tokio::sync::Notify::new(),
            max_keys: config.max_queued_keys,
            overflows: AtomicU64::new(0),
            closing: std::sync::atomic::AtomicBool::new(false),
            sending: std::sync::atomic::AtomicBool::new(false),
        });
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let targets: Arc<Mutex<HashMap<String, Weak<dyn BusTarget>>>> = Arc::default();
        let stats = Arc::new(BusCounters::default());
        let publisher = Arc::new(Mutex::new(PublisherState::default()));
        let mut tasks = vec![transport.start(ev_tx)?];
        // Tracking has a channel of its own: its connections mean something else (below).
        let (tr_tx, tr_rx) = mpsc::unbounded_channel();
        let (ready_tx, tracking_ready) = tokio::sync::watch::channel(tracking.is_none());
        let tr_rx = match &tracking {
            Some(t) => {
                tasks.push(t.start(tr_tx)?);
                Some(tr_rx)
            }
            None => None,
        };
        // Not in `tasks`: when the engine is dropped, the publisher sends what is queued and
        // then ends (an invalidation accepted before the drop still goes out).
        handle.spawn(publish_loop(
            transport.clone(),
            outgoing.clone(),
            publisher.clone(),
            instance,
            config,
            stats.clone(),
        ));
        tasks.push(handle.spawn(heartbeat_loop(
            transport.clone(),
            publisher,
            targets.clone(),
            instance,
            config,
            stats.clone(),
        )));
        tasks.push(handle.spawn(receive_loop(
            ev_rx,
            tr_rx,
            ready_tx,
            targets.clone(),
            instance,
            config,
            stats.clone(),
        )));
        Ok(BusRuntime {
            instance,
            transport,
            outgoing,
            targets,
            stats,
            tasks: Mutex::new(tasks),
            tracking_ready,
            on_loss: config.on_loss,
        })
    }

    /// How many recently used keys per namespace are reloaded after a reconnect (0: none,
    /// and none need to be recorded).
    pub(crate) fn reload_keys(&self) -> usize {
        self.on_loss.reload_keys()
    }

    pub(crate) fn register(&self, channel: String, target: Weak<dyn BusTarget>) {
        self.transport.subscribe(&channel);
        lock(&self.targets).insert(channel, target);
    }

    /// Wait until client tracking is on, at most `limit`; whether it is.
    pub(crate) async fn wait_tracking(&self, limit: Duration) -> bool {
        let mut ready = self.tracking_ready.clone();
        let on =
            tokio::time::timeout(limit, async { ready.wait_for(|on| *on).await.is_ok() }).await;
        matches!(on, Ok(true))
    }

    /// Drop `keys` from this instance's L1 copy of `channel`'s namespace.
    pub(crate) fn invalidate_here(&self, channel: &str, keys: &[String]) {
        let target = lock(&self.targets).get(channel).and_then(Weak::upgrade);
        if let Some(t) = target {
            t.invalidate_keys(keys);
        }
    }

    pub(crate) fn publish_keys(&self, channel: &str, keys: Vec<String>) {
        self.outgoing.push_keys(channel, keys);
    }

    pub(crate) fn publish_clear(&self, channel: &str) {
        self.outgoing.push_clear(channel);
    }

    pub(crate) fn stats(&self) -> BusStats {
        let s = &self.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BusStats {
            sent_messages: l(&s.sent_messages),
            sent_keys: l(&s.sent_keys),
            received_keys: l(&s.received_keys),
            losses: l(&s.losses),
            reconnects: l(&s.reconnects),
            publish_errors: l(&s.publish_errors),
            queued_keys: self.outgoing.queued() as u64,
            queue_overflows: self.outgoing.overflows.load(Ordering::Relaxed),
        }
    }
}

impl BusRuntime {
    /// Wait until every invalidation queued so far is published (or its publish failed), at
    /// most until `until`; returns how many keys are still queued (0: all sent).
    pub(crate) async fn drain(&self, until: tokio::time::Instant) -> u64 {
        loop {
            let left = self.outgoing.queued() as u64;
            let busy = self.outgoing.sending.load(Ordering::SeqCst);
            if (left == 0 && !busy) || tokio::time::Instant::now() >= until {
                return left;
            }
            self.outgoing.wake.notify_one();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Stop receiving and heartbeating; the publisher sends what is queued, says farewell and
    /// ends. Idempotent.
    pub(crate) fn close(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        self.outgoing.closing.store(true, Ordering::SeqCst);
        self.outgoing.wake.notify_one();
    }
}

impl Drop for BusRuntime {
    fn drop(&mut self) {
        self.close();
    }
}

async fn send(
    transport: &Arc<dyn BusTransport>,
    publisher: &Mutex<PublisherState>,
    channel: &str,
    kind: u8,
    instance: u64,
    keys: Vec<String>,
    stats: &BusCounters,
) {
    let seq = {
        let mut p = lock(publisher);
        let seq = p.seqs.entry(channel.to_owned()).or_insert(0);
        *seq = seq.wrapping_add(1);
        *seq
    };
    let n = keys.len() as u64;
    let payload = Message {
        kind,
        instance,
        seq,
        keys,
    }
    .encode();
    let result = transport.publish(channel, payload).await;
    {
        let mut p = lock(publisher);
        let done = p.done.entry(channel.to_owned()).or_insert(0);
        *done = (*done).max(seq);
    }
    match result {
        Ok(()) => {
            stats.sent_messages.fetch_add(1, Ordering::Relaxed);
            stats.sent_keys.fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => {
            // The receivers will see the gap in our sequence (at the latest with the next
            // heartbeat) and flush: a failed publish degrades to a flush, never to staleness.
            stats.publish_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(channel, error = %e, "invalidation publish failed");
        }
    }
}

async fn publish_loop(
    transport: Arc<dyn BusTransport>,
    queue: Arc<OutQueue>,
    publisher: Arc<Mutex<PublisherState>>,
    instance: u64,
    config: BusConfig,
    stats: Arc<BusCounters>,
) {
    loop {
        // Whatever queued while the previous publish was in flight forms this batch: under a
        // burst, batches form by themselves, one per round trip, with no added latency.
        let woken = queue.wake.notified();
        if queue.is_empty() {
            if !queue.closing.load(Ordering::SeqCst) {
                woken.await;
            }
            if queue.is_empty() && queue.closing.load(Ordering::SeqCst) {
                farewell(&transport, &publisher, instance).await;
                return;
            }
        }
        // An explicit window trades latency for fewer messages.
        if !config.batch_window.is_zero() {
            tokio::time::sleep(config.batch_window).await;
        }
        queue.sending.store(true, Ordering::SeqCst);
        let batch = queue.take();
        for ch in batch.clears {
            send(
                &transport,
                &publisher,
                &ch,
                KIND_CLEAR,
                instance,
                Vec::new(),
                &stats,
            )
            .await;
        }
        for (ch, mut ks) in batch.keys {
            ks.sort_unstable();
            ks.dedup();
            for chunk in ks.chunks(config.batch_max_keys.max(1)) {
                send(
                    &transport,
                    &publisher,
                    &ch,
                    KIND_KEYS,
                    instance,
                    chunk.to_vec(),
                    &stats,
                )
                .await;
            }
        }
        queue.sending.store(false, Ordering::SeqCst);
    }
}

/// The last word of a dropped engine: one heartbeat per channel it published on, carrying
/// its last number, so a receiver that missed its final messages (and may never hear from it
/// again) sees the gap.
async fn farewell(
    transport: &Arc<dyn BusTransport>,
    publisher: &Mutex<PublisherState>,
    instance: u64,
) {
    let last: Vec<(String, u64)> = lock(publisher)
        .done
        .iter()
        .map(|(c, s)| (c.clone(), *s))
        .collect();
    for (channel, seq) in last {
        let payload = Message {
            kind: KIND_HEARTBEAT,
            instance,
            seq,
            keys: Vec::new(),
        }
        .encode();
        let _ = transport.publish(&channel, payload).await;
    }
}

async fn heartbeat_loop(
    transport: Arc<dyn BusTransport>,
    publisher: Arc<Mutex<PublisherState>>,
    targets: Arc<Mutex<HashMap<String, Weak<dyn BusTarget>>>>,
    instance: u64,
    config: BusConfig,
    stats: Arc<BusCounters>,
) {
    let mut tick = tokio::time::interval(config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let channels: Vec<String> = lock(&targets).keys().cloned().collect();
        for ch in channels {
            let seq = lock(&publisher).done.get(&ch).copied().unwrap_or(0);
            let payload = Message {
                kind: KIND_HEARTBEAT,
                instance,
                seq,
                keys: Vec::new(),
            }
            .encode();
            if let Err(e) = transport.publish(&ch, payload).await {
                stats.publish_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(channel = %ch, error = %e, "heartbeat publish failed");
            }
        }
    }
}

fn live_targets(targets: &Mutex<HashMap<String, Weak<dyn BusTarget>>>) -> Vec<Arc<dyn BusTarget>> {
    lock(targets).values().filter_map(Weak::upgrade).collect()
}

/// Count and report a possible loss of invalidations in `target`'s namespace; flush it when
/// `now` (else the [`LossPlan`] flushes it later), then reload `reload` recently used keys.
fn loss(target: &dyn BusTarget, stats: &BusCounters, now: bool, reload: usize) {
    stats.losses.fetch_add(1, Ordering::Relaxed);
    if now {
        target.flush();
        if reload > 0 {
            target.reload(reload);
        }
    }
    target.report(crate::observer::CacheEvent::InvalidationsLost);
}

/// The flush of a (re)established subscription: every namespace, then (with
/// [`ReconnectPolicy::Reload`]) its recently used keys read again from L2.
fn flush_on_connect(targets: &[Arc<dyn BusTarget>], reload: usize) {
    for t in targets {
        t.flush();
        if reload > 0 {
            t.reload(reload);
        }
    }
}

/// Sleep until `deadline`, or forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next tracking event, or never once tracking is gone (or was never there).
async fn next_tracking(rx: &mut Option<mpsc::UnboundedReceiver<BusEvent>>) -> Option<BusEvent> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

#[allow(clippy::too_many_arguments)]
async fn receive_loop(
    mut rx: mpsc::UnboundedReceiver<BusEvent>,
    mut tracking: Option<mpsc::UnboundedReceiver<BusEvent>>,
    tracking_ready: tokio::sync::watch::Sender<bool>,
    targets: Arc<Mutex<HashMap<String, Weak<dyn BusTarget>>>>,
    instance: u64,
    config: BusConfig,
    stats: Arc<BusCounters>,
) {
    // (publisher, channel) -> last heard
    let mut heard: HashMap<(u64, String), Heard> = HashMap::new();
    let mut check = tokio::time::interval(config.heartbeat.max(Duration::from_millis(10)));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connected_once = false;
    let mut plan = LossPlan::new(config.on_loss);
    let reload = config.on_loss.reload_keys();
    loop {
        let deadline = plan.next_deadline();
        let event = tokio::select! {
            e = rx.recv() => match e {
                Some(e) => e,
                None => return,
            },
            e = next_tracking(&mut tracking) => match e {
                // Tracking is (back) on: Redis reports writes from now on, not before. What
                // L1 took meanwhile (before the first connection too) may be overwritten.
                Some(BusEvent::Connected) => {
                    plan.connected(Link::Tracking, Instant::now());
                    flush_on_connect(&live_targets(&targets), reload);
                    let _ = tracking_ready.send(true);
                    continue;
                }
                Some(BusEvent::Disconnected) => {
                    let now = plan.disconnected(Link::Tracking, Instant::now());
                    if now {
                        tracing::warn!("tracking connection lost; flushing L1");
                    } else {
                        tracing::warn!("tracking connection lost; L1 kept until it is back or for max_staleness");
                    }
                    for t in live_targets(&targets) {
                        loss(t.as_ref(), &stats, now, reload);
                    }
                    continue;
                }
                Some(e) => e,
                None => {
                    tracking = None;
                    continue;
                }
            },
            _ = check.tick() => {
                // Publishers gone silent: their messages may be getting lost.
                let now = Instant::now();
                let silent: Vec<(u64, String)> = heard
                    .iter()
                    .filter(|(_, h)| now.duration_since(h.at) > config.silence_limit)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in silent {
                    heard.remove(&key);
                    let target = lock(&targets).get(&key.1).and_then(Weak::upgrade);
                    if let Some(t) = target {
                        tracing::warn!(channel = %key.1, "an instance fell silent on the invalidation bus; flushing L1 of the namespace");
                        loss(t.as_ref(), &stats, plan.channel_loss(&key.1, now), reload);
                    }
                }
                continue;
            }
            _ = until(deadline) => {
                // ReconnectPolicy::Keep: the staleness bound of a loss is reached.
                let due = plan.due(Instant::now());
                if due.all {
                    tracing::warn!("invalidations possibly lost max_staleness ago; flushing L1");
                    for t in live_targets(&targets) {
                        t.flush();
                    }
                }
                for channel in due.channels {
                    let target = lock(&targets).get(&channel).and_then(Weak::upgrade);
                    if let Some(t) = target {
                        tracing::warn!(channel = %channel, "invalidations possibly lost max_staleness ago; flushing L1 of the namespace");
                        t.flush();
                    }
                }
                continue;
            }
        };
        match event {
            BusEvent::Message { channel, payload } => {
                let Some(target) = lock(&targets).get(&channel).and_then(Weak::upgrade) else {
                    continue;
                };
                let msg = match Message::decode(&payload) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(channel = %channel, error = %e, "ignoring a foreign message on the invalidation channel");
                        continue;
                    }
                };
                if msg.instance == instance {
                    continue;
                }
                let now = Instant::now();
                let key = (msg.instance, channel);
                // First contact: anything this publisher sent before is unknown to us.
                let expected = heard.get(&key).map_or(0, |h| h.seq);
                // A publisher's numbers never go back: a number far below the last one means
                // that one was forged or corrupt, and tracking resumes from this one (a
                // slightly lower number is a late message, nothing to act on).
                let backwards = expected.saturating_sub(msg.seq) > REORDER_WINDOW;
                let gap = backwards
                    || if msg.kind == KIND_HEARTBEAT {
                        msg.seq > expected
                    } else {
                        msg.seq > expected.saturating_add(1)
                    };
                if gap {
                    tracing::warn!(channel = %key.1, expected, got = msg.seq, "invalidation sequence gap; flushing L1 of the namespace");
                    loss(
                        target.as_ref(),
                        &stats,
                        plan.channel_loss(&key.1, now),
                        reload,
                    );
                }
                let entry = heard.entry(key).or_insert(Heard { seq: 0, at: now });
                entry.seq = if backwards {
                    msg.seq
                } else {
                    entry.seq.max(msg.seq)
                };
                entry.at = now;
                match msg.kind {
                    KIND_KEYS => {
                        stats
                            .received_keys
                            .fetch_add(msg.keys.len() as u64, Ordering::Relaxed);
                        target.invalidate_keys(&msg.keys);
                        target.report(crate::observer::CacheEvent::InvalidationsReceived {
                            keys: msg.keys.len() as u32,
                        });
                    }
                    KIND_CLEAR => {
                        target.flush();
                        target
                            .report(crate::observer::CacheEvent::InvalidationsReceived { keys: 1 });
                    }
                    _ => {}
                }
            }
            BusEvent::KeysChanged(full_keys) => {
                let live = live_targets(&targets);
                if full_keys.is_empty() {
                    for t in &live {
                        t.flush();
                    }
                    continue;
                }
                for t in &live {
                    let mine = t.user_keys(&full_keys);
                    if !mine.is_empty() {
                        stats
                            .received_keys
                            .fetch_add(mine.len() as u64, Ordering::Relaxed);
                        t.invalidate_keys(&mine);
                        t.report(crate::observer::CacheEvent::InvalidationsReceived {
                            keys: mine.len() as u32,
                        });
                    }
                }
            }
            BusEvent::Disconnected => {
                let now = plan.disconnected(Link::Bus, Instant::now());
                if now {
                    tracing::warn!("invalidation bus disconnected; flushing L1");
                } else {
                    tracing::warn!("invalidation bus disconnected; L1 kept until it is back or for max_staleness");
                }
                forget_numbers(&mut heard);
                for t in live_targets(&targets) {
                    loss(t.as_ref(), &stats, now, reload);
                }
            }
            BusEvent::Connected => {
                forget_numbers(&mut heard);
                let deferred = plan.connected(Link::Bus, Instant::now());
                if connected_once || deferred {
                    // Values filled while we were deaf may be stale: flush once more (under
                    // Keep, the first flush since the loss).
                    let live = live_targets(&targets);
                    flush_on_connect(&live, reload);
                    if connected_once {
                        stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        for t in &live {
                            t.report(crate::observer::CacheEvent::BusReconnect);
                        }
                    }
                }
                connected_once = true;
            }
        }
    }
}

/// After a break in the subscription: every publisher counts as first met again (its next
/// number is checked like a first contact's), but stays known, so one that never speaks again
/// is still noticed by its silence (a message lost just before it stopped is not missed).
fn forget_numbers(heard: &mut HashMap<(u64, String), Heard>) {
    let now = Instant::now();
    for h in heard.values_mut() {
        h.seq = 0;
        h.at = now;
    }
}

/// A transport that carries nothing (tracking without a pub/sub bus).
#[derive(Debug)]
pub(crate) struct NullTransport;

#[async_trait]
impl BusTransport for NullTransport {
    fn kind(&self) -> &'static str {
        "none"
    }

    async fn publish(&self, _channel: &str, _payload: Vec<u8>) -> Result<()> {
        Ok(())
    }

    fn start(&self, events: mpsc::UnboundedSender<BusEvent>) -> Result<JoinHandle<()>> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::new(ErrorKind::InvalidConfig, "no tokio runtime"))?;
        // Keep the sender alive for the engine's lifetime.
        Ok(handle.spawn(async move {
            events.closed().await;
        }))
    }

    fn subscribe(&self, _channel: &str) {}
}

/// One attached engine: where to deliver, which channels it listens to, and whether its
/// subscription is broken (see [`MemoryBusHandle::disconnect`]).
type Subscriber = (
    mpsc::UnboundedSender<BusEvent>,
    Arc<Mutex<Vec<String>>>,
    Arc<std::sync::atomic::AtomicBool>,
);

/// An in-process transport: every engine attached to the same `MemoryBus` hears every other.
/// For tests and for several engines in one process without Redis.
#[derive(Debug, Default)]
pub struct MemoryBus {
    subscribers: Mutex<Vec<Subscriber>>,
    dropped: AtomicU64,
}

impl MemoryBus {
    /// A new, empty bus. Give each engine its own `MemoryBus::attach` handle.
    pub fn new() -> Arc<MemoryBus> {
        Arc::new(MemoryBus::default())
    }

    /// A transport handle for one engine.
    pub fn attach(self: &Arc<Self>) -> Arc<MemoryBusHandle> {
        Arc::new(MemoryBusHandle {
            bus: self.clone(),
            channels: Arc::default(),
            drop_next: AtomicU64::new(0),
            deaf: Arc::default(),
            events: Mutex::new(None),
        })
    }

    /// Messages deliberately dropped (see [`MemoryBusHandle`]).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// One engine's handle on a [`MemoryBus`].
#[derive(Debug)]
pub struct MemoryBusHandle {
    bus: Arc<MemoryBus>,
    channels: Arc<Mutex<Vec<String>>>,
    drop_next: AtomicU64,
    /// The subscription is broken: nothing is delivered to this handle's engine.
    deaf: Arc<std::sync::atomic::AtomicBool>,
    /// The engine's event channel, once started.
    events: Mutex<Option<mpsc::UnboundedSender<BusEvent>>>,
}

impl MemoryBusHandle {
    /// Drop the next `n` messages this handle publishes (loss injection for tests).
    pub fn drop_next(&self, n: u64) {
        self.drop_next.store(n, Ordering::SeqCst);
    }

    /// Break this handle's subscription (fault injection for tests): its engine hears
    /// [`BusEvent::Disconnected`], and messages published meanwhile never reach it. It can
    /// still publish. Does nothing when already broken.
    pub fn disconnect(&self) {
        if !self.deaf.swap(true, Ordering::SeqCst) {
            self.tell(BusEvent::Disconnected);
        }
    }

    /// Restore a subscription broken by [`MemoryBusHandle::disconnect`]: its engine hears
    /// [`BusEvent::Connected`] and receives messages again. Does nothing when not broken.
    pub fn reconnect(&self) {
        if self.deaf.swap(false, Ordering::SeqCst) {
            self.tell(BusEvent::Connected);
        }
    }

    fn tell(&self, event: BusEvent) {
        if let Some(tx) = lock(&self.events).as_ref() {
            let _ = tx.send(event);
        }
    }
}

#[async_trait]
impl BusTransport for MemoryBusHandle {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<()> {
        if self
            .drop_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            self.bus.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let subs = lock(&self.bus.subscribers);
        for (tx, chans, deaf) in subs.iter() {
            if !deaf.load(Ordering::SeqCst) && lock(chans).iter().any(|c| c == channel) {
                let _ = tx.send(BusEvent::Message {
                    channel: channel.to_owned(),
                    payload: payload.clone(),
                });
            }
        }
        Ok(())
    }

    fn start(&self, events: mpsc::UnboundedSender<BusEvent>) -> Result<JoinHandle<()>> {
        let _ = events.send(BusEvent::Connected);
        *lock(&self.events) = Some(events.clone());
        lock(&self.bus.subscribers).push((events, self.channels.clone(), self.deaf.clone()));
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::new(ErrorKind::InvalidConfig, "no tokio runtime"))?;
        Ok(handle.spawn(async {}))
    }

    fn subscribe(&self, channel: &str) {
        let mut c = lock(&self.channels);
        if !c.iter().any(|x| x == channel) {
            c.push(channel.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trip_and_garbage() -> Result<()> {
        let m = Message {
            kind: KIND_KEYS,
            instance: 7,
            seq: 42,
            keys: vec!["a".into(), "{user:1}:x\n".into(), String::new()],
        };
        assert_eq!(Message::decode(&m.encode())?, m);
        assert!(Message::decode(b"hello").is_err());
        let mut bytes = m.encode();
        bytes.truncate(bytes.len() - 1);
        assert!(Message::decode(&bytes).is_err());
        let mut bomb = m.encode();
        bomb[18..22].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Message::decode(&bomb).is_err());
        Ok(())
    }

    use super::reconnect::support::{engine, Json};
    use crate::cache::Cache;
    use crate::clock::ManualClock;
    use crate::remote::MemoryStore;

    const MS: Duration = Duration::from_millis(1);

    /// Two engines on one bus and one L2; the second one's policy is `policy`. The clock
    /// starts at 1,000,000 ms.
    struct Pair {
        clock: Arc<ManualClock>,
        writer: Cache<u64, Json>,
        reader: Cache<u64, Json>,
        reader_engine: crate::Engine,
        reader_bus: Arc<MemoryBusHandle>,
        _engines: crate::Engine,
    }

    fn pair(policy: ReconnectPolicy) -> Result<Pair> {
        let (store, bus) = (Arc::new(MemoryStore::new()), MemoryBus::new());
        let clock = Arc::new(ManualClock::new(1_000_000));
        let (we, _) = engine(&store, &bus, &clock, ReconnectPolicy::Flush)?;
        let (re, reader_bus) = engine(&store, &bus, &clock, policy)?;
        let build = |e: &crate::Engine| {
            e.cache::<u64, Json>("n")
                .with_l1_ttl(Duration::from_secs(300))
                .with_l2_ttl(Duration::from_secs(600))
                .build()
        };
        Ok(Pair {
            writer: build(&we)?,
            reader: build(&re)?,
            clock,
            reader_engine: re,
            reader_bus,
            _engines: we,
        })
    }

    impl Pair {
        /// The writer sets `k`, the reader reads it into its L1; the clock moves on 1 ms (an
        /// entry born in a flush's own millisecond is not fresh).
        async fn cached(&self, v: u64) -> Result<()> {
            self.writer.set("k", v).await?;
            self.settle().await;
            assert_eq!(self.reader.get("k").await?.as_deref(), Some(&v));
            assert_eq!(self.local(), Some(v));
            self.clock.advance(MS);
            Ok(())
        }

        /// What the reader's L1 serves for `k`.
        fn local(&self) -> Option<u64> {
            self.reader.get_local("k").flatten().map(|v| *v)
        }

        /// Let the bus tasks run (paused time: a few ms pass).
        async fn settle(&self) {
            tokio::time::sleep(5 * MS).await;
        }

        fn losses(&self) -> u64 {
            self.reader_engine.bus_stats().map_or(0, |s| s.losses)
        }
    }

    #[test]
    fn on_loss_is_validated() {
        let bad = |p| BusConfig::default().with_on_loss(p).validate();
        for p in [
            ReconnectPolicy::keep(Duration::ZERO),
            ReconnectPolicy::reload(0),
        ] {
            assert_eq!(
                bad(p).map_err(|e| e.kind()),
                Err(ErrorKind::InvalidConfig),
                "{p:?}"
            );
        }
        assert!(bad(ReconnectPolicy::keep(MS)).is_ok());
        assert!(bad(ReconnectPolicy::reload(1)).is_ok());
        assert_eq!(BusConfig::default().on_loss, ReconnectPolicy::Flush);
    }

    #[tokio::test(start_paused = true)]
    async fn an_engine_with_a_zero_staleness_bound_is_not_built() {
        let store = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::new(1));
        let built = engine(
            &store,
            &MemoryBus::new(),
            &clock,
            ReconnectPolicy::keep(Duration::ZERO),
        );
        assert_eq!(
            built.err().map(|e| e.kind()),
            Some(ErrorKind::InvalidConfig)
        );
    }

    /// `Flush` (the default) is what it always was: flushed at the disconnect, and what L1
    /// took while deaf is flushed again at the reconnect.
    #[tokio::test(start_paused = true)]
    async fn flush_drops_l1_at_the_loss_and_again_at_the_reconnect() -> Result<()> {
        let p = pair(ReconnectPolicy::Flush)?;
        p.cached(1).await?;
        p.reader_bus.disconnect();
        p.settle().await;
        assert_eq!(p.local(), None, "kept through a loss");
        assert_eq!(p.losses(), 1);
        // Filled while deaf, then missed: dropped when the subscription is back.
        p.clock.advance(MS);
        assert_eq!(p.reader.get("k").await?.as_deref(), Some(&1));
        p.writer.set("k", 2).await?;
        p.settle().await;
        assert_eq!(p.local(), Some(1));
        p.clock.advance(MS);
        p.reader_bus.reconnect();
        p.settle().await;
        assert_eq!(p.local(), None);
        assert_eq!(p.reader.get("k").await?.as_deref(), Some(&2));
        Ok(())
    }

    /// `Keep`: L1 serves through the loss (the missed write included), and is flushed
    /// `max_staleness` after it while still deaf, then again every `max_staleness`.
    #[tokio::test(start_paused = true)]
    async fn keep_serves_during_a_loss_and_flushes_at_max_staleness() -> Result<()> {
        let p = pair(ReconnectPolicy::keep(Duration::from_millis(500)))?;
        p.cached(1).await?;
        p.reader_bus.disconnect();
        p.settle().await;
        assert_eq!(p.losses(), 1, "the loss is counted at once");
        p.writer.set("k", 2).await?; // missed by the reader
        tokio::time::sleep(400 * MS).await;
        assert_eq!(p.local(), Some(1), "not kept through the loss");
        p.clock.advance(MS);
        tokio::time::sleep(100 * MS).await;
        assert_eq!(p.local(), None, "kept past max_staleness");
        // Still deaf: what L1 takes now is flushed again a bound later.
        p.clock.advance(MS);
        assert_eq!(p.reader.get("k").await?.as_deref(), Some(&2));
        p.writer.set("k", 3).await?; // missed too
        tokio::time::sleep(400 * MS).await;
        assert_eq!(p.local(), Some(2));
        p.clock.advance(MS);
        tokio::time::sleep(100 * MS).await;
        assert_eq!(
            p.local(),
            None,
            "a fill made while deaf outlived max_staleness"
        );
        assert_eq!(p.reader.get("k").await?.as_deref(), Some(&3));
        assert_eq!(p.losses(), 1);
        Ok(())
    }

    /// `Keep`: a reconnect before the bound flushes at once, and ends the deadline.
    #[tokio::test(start_paused = true)]
    async fn keep_flushes_at_the_reconnect() -> Result<()> {
        let p = pair(ReconnectPolicy::keep(Duration::from_millis(500)))?;
        p.cached(1).await?;
        p.reader_bus.disconnect();
        p.writer.set("k", 2).await?; // missed
        tokio::time::sleep(100 * MS).await;
        assert_eq!(p.local(), Some(1));
        p.clock.advance(MS);
        p.reader_bus.reconnect();
        p.settle().await;
        assert_eq!(p.local(), None, "kept past the reconnect");
        p.clock.advance(MS);
        assert_eq!(p.reader.get("k").await?.as_deref(), Some(&2));
        // No flush left over from the loss: the new value stays past the old deadline.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(p.local(), Some(2));
        assert_eq!(p.reader_engine.bus_stats().map(|s| s.reconnects), Some(1));
        Ok(())
    }

    /// `Keep`: a lost message (a gap seen at the publisher's next message) is flushed
    /// `max_staleness` after it is noticed, not at once.
    #[tokio::test(start_paused = true)]
    async fn keep_flushes_a_gap_after_max_staleness() -> Result<()> {
        let p = pair(ReconnectPolicy::keep(Duration::from_millis(500)))?;
        p.writer.set("other", 7).await?; // first contact: numbering starts
        p.cached(1).await?;
        // Lose one message from the writer by breaking the reader's subscription for it
        // alone, without telling the reader (a lost delivery).
        p.reader_bus.deaf.store(true, Ordering::SeqCst);
        p.writer.set("k", 2).await?;
        p.settle().await;
        p.reader_bus.deaf.store(false, Ordering::SeqCst);
        p.writer.set("j", 1).await?; // its number shows the gap
        p.settle().await;
        assert_eq!(p.losses(), 1, "the gap went unnoticed");
        assert_eq!(p.local(), Some(1), "not kept after a gap");
        p.clock.advance(MS);
        tokio::time::sleep(500 * MS).await;
        assert_eq!(p.local(), None, "kept past max_staleness after a gap");
        assert_eq!(p.reader.get("k").await?.as_deref(), Some(&2));
        Ok(())
    }
}
