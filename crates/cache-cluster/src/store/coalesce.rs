//! Coalesced single-key reads, one queue per primary: the hooks `cache_redis`'s
//! `coalesced_read` drives (see `RemoteStore::get`). A read goes through the queue of its
//! slot's primary, so each primary has its own read (or batch) in flight and a slow shard
//! does not hold back the reads of the others.

use std::time::Duration;

use cache_core::{LeaseRead, RemoteStore, Result};
use cache_redis::support::{
    coalesced_read, coalesced_read_or_lease, lease_read, ttl_ms, Answer, Coalesced, Reads,
};
use redis::Value;

use super::script::same_slot;
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
    /// This store seen through the read queue of `key`'s primary.
    fn queued(&self, key: &str) -> Queued {
        Queued {
            store: self.clone(),
            queue: self.inner.topology.read_queue(slot(key.as_bytes())),
        }
    }

    /// Read `key` through the queue of its slot's primary.
    pub(super) async fn coalesced_get(&self, key: &str) -> Answer {
        coalesced_read(&self.queued(key), key).await
    }

    /// [`RemoteStore::get_or_lease`] through the queue of the key's primary: the script when
    /// the read goes out alone, else the batched read and `SET NX` on a miss.
    pub(super) async fn coalesced_get_or_lease(
        &self,
        key: &str,
        lease_key: &str,
        token: &[u8],
        ttl: Duration,
    ) -> Result<LeaseRead> {
        same_slot(key, lease_key)?;
        let queued = self.queued(key);
        let script = || async {
            let op = "EVALSHA (get_or_lease)";
            let ttl = ttl_ms(ttl).to_string();
            let args: [&[u8]; 2] = [token, ttl.as_bytes()];
            let answer: Value = self
                .eval(
                    op,
                    &self.inner.get_or_lease_script,
                    &[key, lease_key],
                    &args,
                )
                .await?;
            lease_read(answer, op, &self.inner.ctx.endpoint)
        };
        coalesced_read_or_lease(&queued, key, script, || {
            self.set_nx(lease_key, token.to_vec(), ttl)
        })
        .await
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
