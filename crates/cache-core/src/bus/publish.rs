//! The publishing side: the queue of keys per channel, batching, heartbeats, the runtime that owns the tasks.

use super::*;

/// What waits to be published: keys per channel, and channels to clear. Bounded by
/// `max_queued_keys`: past it a channel's keys become one clear.
#[derive(Default)]
pub(super) struct OutState {
    keys: HashMap<String, Vec<String>>,
    clears: Vec<String>,
    queued: usize,
}

pub(super) struct OutQueue {
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
pub(super) struct PublisherState {
    /// Latest sequence number taken per channel.
    seqs: HashMap<String, u64>,
    /// Latest sequence number whose publish has finished (delivered or failed) per channel:
    /// what heartbeats announce, so a heartbeat never overtakes the message it counts.
    done: HashMap<String, u64>,
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

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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

pub(super) async fn send(
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

pub(super) async fn publish_loop(
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
pub(super) async fn farewell(
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

pub(super) async fn heartbeat_loop(
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
