//! Composable L2 layers: a layer of the user's own sees every store call on top of the
//! default breaker; a timeout layer bounds a slow store; replacing the stack removes the
//! default breaker; a zero timeout is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cache_tiered::core::{LeaseFill, RemoteEntry};
use cache_tiered::{
    ErrorKind, L2Layer, LayerContext, MemoryStore, MsgPack, RemoteStore, Result, TimeoutLayer,
};

type TestResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A user's layer: counts the store calls that pass through it.
#[derive(Debug, Default)]
struct Counting {
    calls: Arc<AtomicU64>,
}

#[derive(Debug)]
struct CountingStore {
    inner: Arc<dyn RemoteStore>,
    calls: Arc<AtomicU64>,
}

impl L2Layer for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }

    fn layer(&self, inner: Arc<dyn RemoteStore>, _context: &LayerContext) -> Arc<dyn RemoteStore> {
        Arc::new(CountingStore {
            inner,
            calls: self.calls.clone(),
        })
    }
}

impl CountingStore {
    fn count(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl RemoteStore for CountingStore {
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
        self.count();
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        self.count();
        self.inner.get_many(keys).await
    }
    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        self.count();
        self.inner.set(key, value, ttl).await
    }
    async fn set_many(&self, entries: Vec<RemoteEntry>) -> Result<()> {
        self.count();
        self.inner.set_many(entries).await
    }
    async fn delete(&self, keys: &[String]) -> Result<()> {
        self.count();
        self.inner.delete(keys).await
    }
    async fn set_nx(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<bool> {
        self.count();
        self.inner.set_nx(key, value, ttl).await
    }
    async fn set_if_lease(
        &self,
        lease_key: &str,
        token: &[u8],
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool> {
        self.count();
        self.inner
            .set_if_lease(lease_key, token, key, value, ttl)
            .await
    }
    async fn set_if_lease_many(&self, fills: Vec<LeaseFill>) -> Result<Vec<bool>> {
        self.count();
        self.inner.set_if_lease_many(fills).await
    }
}

#[tokio::test]
async fn a_users_layer_sees_every_call_and_the_default_breaker_stays() -> TestResult {
    let store = Arc::new(MemoryStore::new());
    let calls = Arc::new(AtomicU64::new(0));
    let engine = cache_tiered::builder("layers")
        .with_remote(store.clone())
        .with_bus(false)
        .with_l2_layer(Arc::new(Counting {
            calls: calls.clone(),
        }))
        .build()
        .await?;
    let c = engine.cache::<u64, MsgPack>("n").build()?;
    c.set("k", 1).await?;
    c.invalidate_local("k");
    assert_eq!(c.get("k").await?.as_deref(), Some(&1));
    assert!(
        calls.load(Ordering::SeqCst) >= 2,
        "set and get went through the layer"
    );
    // The default stack's breaker is still under the user's layer: it opens on failures.
    store.set_down(true);
    for i in 0..10 {
        c.invalidate_local("k");
        let _ = c.get(&format!("k{i}")).await;
    }
    assert!(engine.l2_breaker_open(), "the default breaker opened");
    Ok(())
}

#[tokio::test]
async fn a_timeout_layer_bounds_a_slow_store() -> TestResult {
    let store = Arc::new(MemoryStore::new());
    store.set_latency(Duration::from_millis(300));
    let engine = cache_tiered::builder("layers-timeout")
        .with_remote(store.clone())
        .with_bus(false)
        .with_l2_layer(Arc::new(TimeoutLayer::new(Duration::from_millis(20))?))
        .build()
        .await?;
    let c = engine.cache::<u64, MsgPack>("n").build()?;
    assert_eq!(c.get("k").await?, None, "a timed-out read is a miss");
    assert_eq!(
        c.stats().l2_errors,
        1,
        "the read failed with the layer's timeout"
    );
    let zero = TimeoutLayer::new(Duration::ZERO).err().map(|e| e.kind());
    assert_eq!(zero, Some(ErrorKind::InvalidConfig));
    Ok(())
}

#[tokio::test]
async fn replacing_the_stack_removes_the_default_breaker() -> TestResult {
    let store = Arc::new(MemoryStore::new());
    let engine = cache_tiered::builder("layers-none")
        .with_remote(store.clone())
        .with_bus(false)
        .with_l2_layers(Vec::new())
        .build()
        .await?;
    let c = engine.cache::<u64, MsgPack>("n").build()?;
    store.set_down(true);
    for i in 0..10 {
        let _ = c.get(&format!("k{i}")).await;
    }
    assert!(!engine.l2_breaker_open(), "no breaker in an empty stack");
    assert_eq!(c.stats().l2_errors, 10, "every read reached the store");
    Ok(())
}
