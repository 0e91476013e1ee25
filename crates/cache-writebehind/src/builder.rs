//! [`WriteBehindBuilder`]: settings, then [`WriteBehindBuilder::build`] starts the flusher.

use std::fmt;
use std::sync::Arc;

use cache_core::{Cache, Codec, Error, ErrorKind, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[cfg(feature = "redis")]
use crate::durable;
use crate::{memory, BatchWriter, Queue, QueuePolicy, Shared, WriteBehind, WriteBehindConfig};

impl<V, C> WriteBehind<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Start building a write-behind queue for `cache` whose batches go to `writer`.
    pub fn builder<W: BatchWriter<V>>(cache: Cache<V, C>, writer: W) -> WriteBehindBuilder<V, C> {
        WriteBehindBuilder {
            cache,
            writer: Arc::new(writer),
            config: WriteBehindConfig::default(),
            #[cfg(feature = "redis")]
            redis: None,
            #[cfg(feature = "redis")]
            instance_id: None,
        }
    }
}

/// Builds a [`WriteBehind`]; get one from [`WriteBehind::builder`].
pub struct WriteBehindBuilder<V, C> {
    cache: Cache<V, C>,
    writer: Arc<dyn BatchWriter<V>>,
    config: WriteBehindConfig,
    #[cfg(feature = "redis")]
    redis: Option<cache_redis::RedisStore>,
    #[cfg(feature = "redis")]
    instance_id: Option<String>,
}

impl<V, C> fmt::Debug for WriteBehindBuilder<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBehindBuilder")
            .field("cache", &self.cache.name())
            .field("config", &self.config)
            .finish()
    }
}

impl<V, C> WriteBehindBuilder<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Replace all settings at once (e.g. deserialized from a config file).
    pub fn with_config(mut self, config: WriteBehindConfig) -> Self {
        self.config = config;
        self
    }

    /// Entries per batch writer call (default 256).
    pub fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.config.max_batch = max_batch;
        self
    }

    /// Longest wait for a batch to fill (default 50 ms).
    pub fn with_max_age(mut self, max_age: std::time::Duration) -> Self {
        self.config.max_age = max_age;
        self
    }

    /// Bound of the queue (default 10 000).
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.config.capacity = capacity;
        self
    }

    /// What a write does when the queue is full (default [`QueuePolicy::Backpressure`]).
    pub fn with_policy(mut self, policy: QueuePolicy) -> Self {
        self.config.policy = policy;
        self
    }

    /// Retry back-off of a failing writer: first delay and cap (default 10 ms, 5 s).
    pub fn with_retry(mut self, min: std::time::Duration, max: std::time::Duration) -> Self {
        self.config.retry_min = min;
        self.config.retry_max = max;
        self
    }

    /// Durable mode: lease lifetime and idle time before takeover (default 30 s).
    pub fn with_claim_idle(mut self, idle: std::time::Duration) -> Self {
        self.config.claim_idle = idle;
        self
    }

    /// Durable mode: keep the queue in a Redis Stream on `store`'s server, at
    /// `{prefix}:__wb:{namespace}` (plus `:v{n}` with a schema version). The cache's own L2
    /// may be another store.
    #[cfg(feature = "redis")]
    pub fn with_redis(mut self, store: cache_redis::RedisStore) -> Self {
        self.redis = Some(store);
        self
    }

    /// Durable mode: this instance's consumer name in the stream's consumer group (default:
    /// `wb-{pid}-{random}`, new on each start). Unique per running instance.
    #[cfg(feature = "redis")]
    pub fn with_instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }

    /// Validate the settings and start the flusher on the current tokio runtime. In durable
    /// mode this also creates the stream's consumer group (errors from Redis are returned).
    pub async fn build(self) -> Result<WriteBehind<V, C>> {
        self.config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "the write-behind flusher runs on the tokio runtime: build it within one",
            ));
        }
        #[cfg(feature = "redis")]
        if let Some(store) = self.redis {
            let q =
                durable::DurableQueue::open(&self.cache, &store, self.instance_id, &self.config)
                    .await?;
            let shared = Shared::new(self.cache, self.writer, self.config, Queue::Durable(q));
            let task = tokio::spawn(durable::run(shared.clone()));
            return Ok(WriteBehind::start(shared, task));
        }
        let (q, done) = memory::MemoryQueue::new();
        let shared = Shared::new(self.cache, self.writer, self.config, Queue::Memory(q));
        let task = tokio::spawn(memory::run(shared.clone(), done));
        Ok(WriteBehind::start(shared, task))
    }
}
