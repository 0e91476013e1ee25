//! [`FaultStore`], the fault layer every instance's L2 calls go through on their way to the
//! shared `MemoryStore` (whose expiry follows tokio's clock, hence virtual time): latency,
//! transient errors, calls that happen but report a timeout, outages of every instance or
//! of one.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cache_tiered::{Error, ErrorKind, LeaseRead, RemoteEntry, RemoteStore, Result};

use super::faults::Faults;

/// One instance's way to the shared L2, through the seed's faults.
pub struct FaultStore {
    inner: Arc<dyn RemoteStore>,
    faults: Arc<Faults>,
    node: usize,
}

impl fmt::Debug for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore(n{})", self.node)
    }
}

impl FaultStore {
    /// `node`'s view of `inner`.
    pub fn new(inner: Arc<dyn RemoteStore>, faults: Arc<Faults>, node: usize) -> Self {
        FaultStore {
            inner,
            faults,
            node,
        }
    }

    /// Run `call` behind the fault gate.
    async fn gated<T>(
        &self,
        op: &str,
        key: &str,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let ambiguous = self.faults.before_l2(self.node, op, key).await?;
        let result = call.await;
        if ambiguous {
            return Err(Error::new(
                ErrorKind::Timeout,
                "injected: the call happened but its reply was lost",
            ));
        }
        result
    }
}

fn first_key(entries: &[RemoteEntry]) -> String {
    entries.first().map_or(String::new(), |e| e.key.clone())
}

#[async_trait]
impl RemoteStore for FaultStore {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn max_value_size(&self) -> usize {
        self.inner.max_value_size()
    }
    fn capabilities(&self) -> cache_tiered::Capabilities {
        self.inner.capabilities()
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.gated("get", key, self.inner.get(key)).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        self.gated("get_many", &keys.join(" "), self.inner.get_many(keys))
            .await
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        self.gated("set", key, self.inner.set(key, value, ttl))
            .await
    }

    async fn set_many(&self, entries: Vec<RemoteEntry>) -> Result<()> {
        self.gated(
            "set_many",
            &first_key(&entries),
            self.inner.set_many(entries),
        )
        .await
    }

    async fn delete(&self, keys: &[String]) -> Result<()> {
        self.gated("delete", &keys.join(" "), self.inner.delete(keys))
            .await
    }

    async fn set_nx(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<bool> {
        self.gated("set_nx", key, self.inner.set_nx(key, value, ttl))
            .await
    }

    async fn get_or_lease(
        &self,
        key: &str,
        lease_key: &str,
        token: &[u8],
        ttl: Duration,
    ) -> Result<LeaseRead> {
        self.gated(
            "get_or_lease",
            key,
            self.inner.get_or_lease(key, lease_key, token, ttl),
        )
        .await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        self.gated("delete_prefix", prefix, self.inner.delete_prefix(prefix))
            .await
    }

    async fn tag_add(&self, tag_key: &str, member: &str, ttl: Duration) -> Result<()> {
        self.gated("tag_add", member, self.inner.tag_add(tag_key, member, ttl))
            .await
    }

    async fn tag_take(&self, tag_key: &str, pending_key: &str) -> Result<Vec<String>> {
        self.gated(
            "tag_take",
            tag_key,
            self.inner.tag_take(tag_key, pending_key),
        )
        .await
    }

    async fn tag_done(&self, pending_key: &str, members: &[String]) -> Result<()> {
        self.gated(
            "tag_done",
            pending_key,
            self.inner.tag_done(pending_key, members),
        )
        .await
    }

    async fn set_if_lease(
        &self,
        lease_key: &str,
        token: &[u8],
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool> {
        self.gated(
            "set_if_lease",
            key,
            self.inner.set_if_lease(lease_key, token, key, value, ttl),
        )
        .await
    }
}
