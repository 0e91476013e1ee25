//! Coalesced single-key reads: the hooks `cache_redis`'s `coalesced_read` drives (see
//! `RemoteStore::get`).

use std::time::Duration;

use cache_core::{RemoteStore, Result};
use cache_redis::support::{Answer, Coalesced, Reads};

use super::ClusterStore;

impl Coalesced for ClusterStore {
    fn reads(&self) -> &Reads {
        &self.inner.reads
    }

    async fn read_one(&self, key: &str) -> Answer {
        let cmd = redis::cmd("GET").arg(key).to_owned();
        self.run("GET", self.send(&cmd, None)).await
    }

    async fn read_batch(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        self.get_many(keys).await
    }

    fn response_timeout(&self) -> Duration {
        self.inner.config.response_timeout
    }

    fn endpoint(&self) -> &str {
        &self.inner.ctx.endpoint
    }
}
