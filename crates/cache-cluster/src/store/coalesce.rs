//! Coalesced single-key reads, one queue per primary: the hooks `cache_redis`'s
//! `coalesced_read` drives (see `RemoteStore::get`). A read goes through the queue of its
//! slot's primary, so each primary has its own read (or batch) in flight and a slow shard
//! does not hold back the reads of the others.

use std::time::Duration;

use cache_core::{RemoteStore, Result};
use cache_redis::support::{coalesced_read, Answer, Coalesced, Reads};

use super::ClusterStore;
use crate::slot::slot;
use crate::topology::READ_QUEUES;

/// The read queues of a store, one per primary (see [`READ_QUEUES`]).
pub(crate) struct ReadQueues([Reads; READ_QUEUES]);

impl Default for ReadQueues {
    fn default() -> Self {
        ReadQueues(std::array::from_fn(|_| Reads::default()))
    }
}

/// A store seen through one of its read queues.
#[derive(Clone)]
struct Queued {
    store: ClusterStore,
    queue: usize,
}

impl ClusterStore {
    /// Read `key` through the queue of its slot's primary.
    pub(super) async fn coalesced_get(&self, key: &str) -> Answer {
        let queue = self.inner.topology.read_queue(slot(key.as_bytes()));
        let queued = Queued {
            store: self.clone(),
            queue,
        };
        coalesced_read(&queued, key).await
    }
}

impl Coalesced for Queued {
    fn reads(&self) -> &Reads {
        let queues = &self.store.inner.reads.0;
        &queues[self.queue % queues.len()]
    }

    async fn read_one(&self, key: &str) -> Answer {
        let cmd = redis::cmd("GET").arg(key).to_owned();
        self.store.run("GET", self.store.send(&cmd, None)).await
    }

    async fn read_batch(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        self.store.get_many(keys).await
    }

    fn response_timeout(&self) -> Duration {
        self.store.inner.config.response_timeout
    }

    fn endpoint(&self) -> &str {
        &self.store.inner.ctx.endpoint
    }
}
