//! Bus settings: batching, heartbeats, bounds, and what L1 does after a loss.

use super::*;

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
