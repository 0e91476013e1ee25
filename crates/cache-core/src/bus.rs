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
mod config;
mod memory;
mod message;
mod publish;
mod receive;
pub(crate) mod reconnect;
#[cfg(test)]
mod tests;

pub use config::{BusConfig, ReconnectPolicy};
pub(crate) use memory::NullTransport;
pub use memory::{MemoryBus, MemoryBusHandle};
pub use message::Message;
use message::*;
pub(crate) use publish::BusRuntime;
pub use publish::BusStats;
use publish::*;
use receive::*;
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
