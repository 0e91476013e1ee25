//! The fault layer over one instance's `MemoryBusHandle`: publishes may fail, be lost or
//! arrive late; deliveries to this instance may be lost or arrive late (so messages are
//! reordered); and the seed can break the subscription, which the engine hears as
//! `Disconnected`, then `Connected` when it comes back (deliveries in between are lost).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use cache_tiered::core::BusEvent;
use cache_tiered::core::Message;
use cache_tiered::{BusTransport, Error, ErrorKind, MemoryBusHandle, Result};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::faults::{Deliver, Faults, Publish};

/// One instance's bus transport, through the seed's faults.
pub struct FaultBus {
    inner: Arc<MemoryBusHandle>,
    faults: Arc<Faults>,
    node: usize,
}

impl fmt::Debug for FaultBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultBus(n{})", self.node)
    }
}

impl FaultBus {
    /// `node`'s view of the bus behind `inner`.
    pub fn new(inner: Arc<MemoryBusHandle>, faults: Arc<Faults>, node: usize) -> Self {
        FaultBus {
            inner,
            faults,
            node,
        }
    }
}

/// A bus message as the trace shows it; `None` for a heartbeat.
fn describe(payload: &[u8]) -> Option<String> {
    match Message::decode(payload) {
        Ok(m) if m.kind == 3 => None,
        Ok(m) if m.kind == 2 => Some(format!("clear #{} of {:x}", m.seq, m.instance >> 48)),
        Ok(m) => Some(format!("{:?} #{} of {:x}", m.keys, m.seq, m.instance >> 48)),
        Err(_) => Some("an unreadable message".into()),
    }
}

#[async_trait]
impl BusTransport for FaultBus {
    fn kind(&self) -> &'static str {
        "memory-faulty"
    }

    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<()> {
        let what = describe(&payload);
        match self.faults.publish(self.node, channel, what.as_deref()) {
            Publish::Now => self.inner.publish(channel, payload).await,
            Publish::Fail => Err(Error::new(
                ErrorKind::Connection,
                "bus publish failed (injected)",
            )),
            Publish::Lose => Ok(()),
            Publish::Later(after) => {
                let inner = self.inner.clone();
                let channel = channel.to_owned();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = inner.publish(&channel, payload).await;
                });
                Ok(())
            }
        }
    }

    fn start(&self, events: mpsc::UnboundedSender<BusEvent>) -> Result<JoinHandle<()>> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        // The memory handle's own task does nothing; deliveries arrive on `rx`.
        drop(self.inner.start(tx)?);
        // The handle announces `Connected` at once; pass that first event on untouched.
        let first = rx.try_recv().ok();
        if let Some(e) = first {
            let _ = events.send(e);
        }
        self.faults.register_events(self.node, events.clone());
        let faults = self.faults.clone();
        let node = self.node;
        Ok(tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let (channel, what) = match &event {
                    BusEvent::Message { channel, payload } => (channel.as_str(), describe(payload)),
                    other => ("", Some(format!("{other:?}"))),
                };
                match faults.deliver(node, channel, what.as_deref()) {
                    Deliver::Now => {
                        let _ = events.send(event);
                    }
                    Deliver::Lose => {}
                    Deliver::Later(after) => {
                        let events = events.clone();
                        let faults = faults.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(after).await;
                            // A message arriving over a broken subscription is lost too.
                            if !faults.bus_down(node) {
                                let _ = events.send(event);
                            }
                        });
                    }
                }
            }
        }))
    }

    fn subscribe(&self, channel: &str) {
        self.inner.subscribe(channel);
    }
}
