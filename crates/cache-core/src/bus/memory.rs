//! In-process transports: `MemoryBus` (several engines in one process) and the null transport.

use super::*;

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
    pub(super) deaf: Arc<std::sync::atomic::AtomicBool>,
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
