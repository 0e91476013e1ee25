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
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            batch_window: Duration::ZERO,
            batch_max_keys: 256,
            heartbeat: Duration::from_secs(1),
            silence_limit: Duration::from_secs(3),
            max_queued_keys: 100_000,
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

    /// Check the settings: a zero heartbeat, a silence limit shorter than a heartbeat, or a
    /// zero batch size or queue bound is an [`ErrorKind::InvalidConfig`] error.
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
        })
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

fn flush_for_loss(target: &dyn BusTarget, stats: &BusCounters) {
    stats.losses.fetch_add(1, Ordering::Relaxed);
    target.flush();
    target.report(crate::observer::CacheEvent::InvalidationsLost);
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
    loop {
        let event = tokio::select! {
            e = rx.recv() => match e {
                Some(e) => e,
                None => return,
            },
            e = next_tracking(&mut tracking) => match e {
                // Tracking is (back) on: Redis reports writes from now on, not before. What
                // L1 took meanwhile (before the first connection too) may be overwritten.
                Some(BusEvent::Connected) => {
                    for t in live_targets(&targets) {
                        t.flush();
                    }
                    let _ = tracking_ready.send(true);
                    continue;
                }
                Some(BusEvent::Disconnected) => {
                    tracing::warn!("tracking connection lost; flushing L1");
                    for t in live_targets(&targets) {
                        flush_for_loss(t.as_ref(), &stats);
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
                        flush_for_loss(t.as_ref(), &stats);
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
                    flush_for_loss(target.as_ref(), &stats);
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
                tracing::warn!("invalidation bus disconnected; flushing L1");
                forget_numbers(&mut heard);
                for t in live_targets(&targets) {
                    flush_for_loss(t.as_ref(), &stats);
                }
            }
            BusEvent::Connected => {
                forget_numbers(&mut heard);
                if connected_once {
                    stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    // Values filled while we were deaf may be stale: flush once more.
                    for t in live_targets(&targets) {
                        t.flush();
                        t.report(crate::observer::CacheEvent::BusReconnect);
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

/// One attached engine: where to deliver, and which channels it listens to.
type Subscriber = (mpsc::UnboundedSender<BusEvent>, Arc<Mutex<Vec<String>>>);

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
}

impl MemoryBusHandle {
    /// Drop the next `n` messages this handle publishes (loss injection for tests).
    pub fn drop_next(&self, n: u64) {
        self.drop_next.store(n, Ordering::SeqCst);
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
        for (tx, chans) in subs.iter() {
            if lock(chans).iter().any(|c| c == channel) {
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
        lock(&self.bus.subscribers).push((events, self.channels.clone()));
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
}
