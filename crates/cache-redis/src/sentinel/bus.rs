//! [`SentinelBus`]: the invalidation bus on the pub/sub of the master a [`SentinelStore`]
//! uses, started again on the new master at each switch.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cache_core::{BusEvent, BusTransport};
use cache_core::{Error, ErrorKind, Result};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::lock;
use super::store::{follow, SentinelStore};
use crate::RedisBus;

/// The channels and the bus on the master in use.
#[derive(Default)]
struct BusState {
    channels: Vec<String>,
    inner: Option<Arc<RedisBus>>,
}

/// Invalidation bus over the pub/sub of the current master (a [`RedisBus`] on it). When the
/// master changes, or its subscription breaks, the loss is reported (the engine flushes L1),
/// the sentinels are asked for the master, and a new subscription with every channel starts
/// on it (reported as `Connected`: the engine flushes once more).
pub struct SentinelBus {
    store: SentinelStore,
    state: Arc<Mutex<BusState>>,
}

impl fmt::Debug for SentinelBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelBus")
            .field("store", &self.store)
            .field("channels", &lock(&self.state).channels.len())
            .finish()
    }
}

impl SentinelBus {
    /// A bus on the master `store` uses, following its switches.
    pub fn new(store: &SentinelStore) -> SentinelBus {
        SentinelBus {
            store: store.clone(),
            state: Arc::default(),
        }
    }
}

#[async_trait]
impl BusTransport for SentinelBus {
    fn kind(&self) -> &'static str {
        "redis-sentinel-pubsub"
    }

    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<()> {
        self.store
            .call(|s| async move { RedisBus::new(&s).publish(channel, payload).await })
            .await
    }

    fn start(&self, events: mpsc::UnboundedSender<BusEvent>) -> Result<JoinHandle<()>> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::new(
                ErrorKind::InvalidConfig,
                "the Redis bus runs on tokio: start it inside a runtime",
            )
        })?;
        Ok(handle.spawn(bus_loop(self.store.clone(), self.state.clone(), events)))
    }

    fn subscribe(&self, channel: &str) {
        let mut state = lock(&self.state);
        if state.channels.iter().any(|c| c == channel) {
            return;
        }
        state.channels.push(channel.to_owned());
        if let Some(inner) = &state.inner {
            inner.subscribe(channel);
        }
    }
}

/// Why one subscription on one master ended.
enum Ended {
    /// The master changed, or the inner bus ended: start again on the master in use.
    Again,
    /// The engine is gone.
    Stopped,
}

/// A [`RedisBus`] on the master in use, forwarding its events; started again on each switch.
async fn bus_loop(
    store: SentinelStore,
    state: Arc<Mutex<BusState>>,
    events: mpsc::UnboundedSender<BusEvent>,
) {
    let mut switches = store.shared.switches.subscribe();
    loop {
        switches.borrow_and_update();
        let current = store.shared.current();
        let bus = Arc::new(RedisBus::new(&current.store));
        {
            let mut state = lock(&state);
            for channel in &state.channels {
                bus.subscribe(channel);
            }
            state.inner = Some(bus.clone());
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let Ok(task) = bus.start(tx) else {
            return;
        };
        let interval = store.shared.sentinels.config.rediscover_interval;
        let mut suspect =
            tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        suspect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut connected = false;
        let ended = loop {
            tokio::select! {
                event = rx.recv() => match event {
                    Some(event) => {
                        match &event {
                            BusEvent::Connected => connected = true,
                            BusEvent::Disconnected => {
                                connected = false;
                                follow(&store.shared, current.generation);
                            }
                            _ => {}
                        }
                        if events.send(event).is_err() {
                            break Ended::Stopped;
                        }
                    }
                    None => break Ended::Again,
                },
                changed = switches.changed() => match changed {
                    Ok(()) => break Ended::Again,
                    Err(_) => break Ended::Stopped,
                },
                // While the subscription is down, keep asking whether the master moved.
                _ = suspect.tick(), if !connected => follow(&store.shared, current.generation),
                () = events.closed() => break Ended::Stopped,
            }
        };
        task.abort();
        lock(&state).inner = None;
        match ended {
            Ended::Stopped => return,
            Ended::Again => {
                // Messages sent to the old master after we last heard from it are lost.
                if connected && events.send(BusEvent::Disconnected).is_err() {
                    return;
                }
                tracing::info!(master = %store.master(), "invalidation bus moving to the master in use");
            }
        }
    }
}
