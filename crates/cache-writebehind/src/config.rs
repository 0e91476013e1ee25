//! Settings of a [`crate::WriteBehind`] queue.

use std::time::Duration;

use cache_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

/// What [`crate::WriteBehind::write_behind`] does when the queue is full.
///
/// Neither policy ever drops a write silently: a write is either queued (and then written,
/// retried until it is) or refused with an error the caller sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum QueuePolicy {
    /// Wait until the flusher makes room (the default). The caller slows down to the
    /// speed of the source, which is what a full queue means: the source cannot keep up.
    /// Every accepted write still reaches the source, and no caller has to handle an error
    /// it cannot do much about. Wrap the call in `tokio::time::timeout` to bound the wait.
    #[default]
    Backpressure,
    /// Refuse at once with [`ErrorKind::QueueFull`]; nothing changes (neither the cache nor
    /// the queue). For callers that prefer shedding load to waiting.
    Reject,
}

/// Settings of a write-behind queue: a serde struct (durations in milliseconds) with
/// `with_*` setters. Every field has a default, so a config file may name only some.
///
/// ```
/// use std::time::Duration;
/// use cache_writebehind::{QueuePolicy, WriteBehindConfig};
///
/// let config = WriteBehindConfig::default()
///     .with_max_batch(100)
///     .with_max_age(Duration::from_millis(20))
///     .with_policy(QueuePolicy::Reject);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct WriteBehindConfig {
    /// At most this many entries per batch writer call (default 256).
    pub max_batch: usize,
    /// A queued write waits at most this long for its batch to fill before it is written
    /// anyway (default 50 ms).
    #[serde(with = "cache_core::support::duration_text")]
    pub max_age: Duration,
    /// Bound of the queue (default 10 000). In memory mode: distinct keys waiting (a write to
    /// a key already waiting replaces its value and needs no room), plus the one batch being
    /// written. In durable mode: entries in the Redis Stream, written or not yet acknowledged,
    /// counted over all instances.
    pub capacity: usize,
    /// What a write does when the queue is full (default [`QueuePolicy::Backpressure`]).
    pub policy: QueuePolicy,
    /// First retry delay after the batch writer fails (default 10 ms); each further failure
    /// doubles it, up to `retry_max`, with jitter. Failed batches are retried forever.
    #[serde(with = "cache_core::support::duration_text")]
    pub retry_min: Duration,
    /// Longest retry delay (default 5 s).
    #[serde(with = "cache_core::support::duration_text")]
    pub retry_max: Duration,
    /// Durable mode: how long the flusher lease lives without renewal, and how long an entry
    /// delivered to another instance must have been idle before this instance takes it over
    /// with `XAUTOCLAIM` (default 30 s). Takeover after a crash takes about this long.
    #[serde(with = "cache_core::support::duration_text")]
    pub claim_idle: Duration,
    /// Durable mode: how often the flusher looks for entries added by other instances, and
    /// how often a standby instance tries to take the flusher lease (default 100 ms; the lease
    /// is tried at most every second).
    #[serde(with = "cache_core::support::duration_text")]
    pub poll_interval: Duration,
}

impl Default for WriteBehindConfig {
    fn default() -> Self {
        WriteBehindConfig {
            max_batch: 256,
            max_age: Duration::from_millis(50),
            capacity: 10_000,
            policy: QueuePolicy::Backpressure,
            retry_min: Duration::from_millis(10),
            retry_max: Duration::from_secs(5),
            claim_idle: Duration::from_secs(30),
            poll_interval: Duration::from_millis(100),
        }
    }
}

impl WriteBehindConfig {
    /// Entries per batch writer call.
    pub fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch;
        self
    }

    /// Longest wait for a batch to fill.
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// Bound of the queue.
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// What a write does when the queue is full.
    pub fn with_policy(mut self, policy: QueuePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Retry back-off of a failing batch writer: first delay and cap.
    pub fn with_retry(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min = min;
        self.retry_max = max;
        self
    }

    /// Durable mode: lease lifetime and idle time before takeover.
    pub fn with_claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }

    /// Durable mode: polling interval for other instances' entries.
    pub fn with_poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// Check the settings for contradictions.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::new(ErrorKind::InvalidConfig, m));
        if self.max_batch == 0 {
            return bad("max_batch must be positive".into());
        }
        if self.capacity == 0 {
            return bad("capacity must be positive".into());
        }
        if self.retry_min.is_zero() || self.retry_min > self.retry_max {
            return bad(format!(
                "retry_min ({:?}) must be positive and not exceed retry_max ({:?})",
                self.retry_min, self.retry_max
            ));
        }
        if self.claim_idle < Duration::from_millis(30) {
            return bad(format!(
                "claim_idle ({:?}) must be at least 30 ms",
                self.claim_idle
            ));
        }
        if self.poll_interval.is_zero() {
            return bad("poll_interval must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(WriteBehindConfig::default().validate().is_ok());
        assert_eq!(QueuePolicy::default(), QueuePolicy::Backpressure);
    }

    #[test]
    fn contradictions_are_refused() {
        let c = WriteBehindConfig::default().with_max_batch(0);
        assert_eq!(
            c.validate().map_err(|e| e.kind()),
            Err(ErrorKind::InvalidConfig)
        );
        let c =
            WriteBehindConfig::default().with_retry(Duration::from_secs(2), Duration::from_secs(1));
        assert!(c.validate().is_err());
        let c = WriteBehindConfig::default().with_capacity(0);
        assert!(c.validate().is_err());
    }

    #[test]
    fn serde_round_trip_with_partial_input() -> std::result::Result<(), serde_json::Error> {
        let c: WriteBehindConfig =
            serde_json::from_str(r#"{"max_batch": 10, "max_age": 5, "policy": "reject"}"#)?;
        assert_eq!(c.max_batch, 10);
        assert_eq!(c.max_age, Duration::from_millis(5));
        assert_eq!(c.policy, QueuePolicy::Reject);
        assert_eq!(c.capacity, 10_000);
        let back: WriteBehindConfig = serde_json::from_str(&serde_json::to_string(&c)?)?;
        assert_eq!(back, c);
        Ok(())
    }
}
