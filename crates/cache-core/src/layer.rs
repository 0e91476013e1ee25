//! Composable L2 layers, tower-style: each wraps the store in one behaviour (a circuit
//! breaker, a timeout, your own metrics or logging), and the engine stacks them in order.
//!
//! The default stack is one [`BreakerLayer`] (when breakers are on, as by default).
//! [`crate::EngineBuilder::with_l2_layer`] adds a layer on top of the stack;
//! [`crate::EngineBuilder::with_l2_layers`] replaces the whole stack. The first layer of a
//! stack is the innermost (it sees the calls last, next to the store).

use crate::capabilities::Capabilities;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;

use crate::breaker::{BreakerConfig, BreakerStore, CircuitBreaker};
use crate::error::{Error, ErrorKind, Result};
use crate::observer::Observer;
use crate::remote::{LeaseFill, LeaseRead, RemoteEntry, RemoteStore};

/// What a layer may use when it wraps a store.
#[derive(Clone)]
#[non_exhaustive]
pub struct LayerContext {
    /// The engine's observer (a breaker reports its state changes to it).
    pub observer: Arc<dyn Observer>,
}

impl fmt::Debug for LayerContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerContext").finish_non_exhaustive()
    }
}

/// Wraps a store in one behaviour.
pub trait L2Layer: Send + Sync + fmt::Debug + 'static {
    /// A short name ("breaker", "timeout", ...).
    fn name(&self) -> &'static str;

    /// The store `inner` with this layer's behaviour around it.
    fn layer(&self, inner: Arc<dyn RemoteStore>, context: &LayerContext) -> Arc<dyn RemoteStore>;

    /// The breaker this layer put in place, if it is one (the engine reports its state:
    /// [`crate::Engine::l2_breaker_open`]).
    fn breaker(&self) -> Option<Arc<CircuitBreaker>> {
        None
    }
}

/// A circuit breaker around the store ([`BreakerStore`]): after `failure_threshold`
/// consecutive failures L2 is skipped for `cool_down` (the calls fail at once with
/// [`ErrorKind::CircuitOpen`]).
#[derive(Debug)]
pub struct BreakerLayer {
    config: BreakerConfig,
    breaker: OnceLock<Arc<CircuitBreaker>>,
}

impl BreakerLayer {
    /// A breaker with these settings.
    pub fn new(config: BreakerConfig) -> Self {
        BreakerLayer {
            config,
            breaker: OnceLock::new(),
        }
    }
}

impl L2Layer for BreakerLayer {
    fn name(&self) -> &'static str {
        "breaker"
    }

    fn layer(&self, inner: Arc<dyn RemoteStore>, context: &LayerContext) -> Arc<dyn RemoteStore> {
        let breaker = self
            .breaker
            .get_or_init(|| {
                Arc::new(CircuitBreaker::new(
                    "L2",
                    self.config,
                    Some(context.observer.clone()),
                ))
            })
            .clone();
        Arc::new(BreakerStore::new(inner, breaker))
    }

    fn breaker(&self) -> Option<Arc<CircuitBreaker>> {
        self.breaker.get().cloned()
    }
}

/// A deadline on every store call: a call slower than `timeout` fails with
/// [`ErrorKind::Timeout`] (the stores of this workspace have their own response timeouts;
/// this one bounds any store, e.g. one of your own).
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// Calls slower than `timeout` fail; a zero timeout is an [`ErrorKind::InvalidConfig`]
    /// error.
    pub fn new(timeout: Duration) -> Result<Self> {
        if timeout.is_zero() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "a TimeoutLayer needs a positive timeout",
            ));
        }
        Ok(TimeoutLayer { timeout })
    }
}

impl L2Layer for TimeoutLayer {
    fn name(&self) -> &'static str {
        "timeout"
    }

    fn layer(&self, inner: Arc<dyn RemoteStore>, _context: &LayerContext) -> Arc<dyn RemoteStore> {
        Arc::new(TimeoutStore {
            inner,
            timeout: self.timeout,
        })
    }
}

/// The store of a [`TimeoutLayer`].
#[derive(Debug)]
struct TimeoutStore {
    inner: Arc<dyn RemoteStore>,
    timeout: Duration,
}

impl TimeoutStore {
    async fn bounded<T>(&self, call: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "the {} store did not answer within {:?}",
                    self.inner.kind(),
                    self.timeout
                ),
            )),
        }
    }
}

#[async_trait]
impl RemoteStore for TimeoutStore {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn max_value_size(&self) -> usize {
        self.inner.max_value_size()
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.bounded(self.inner.get(key)).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        self.bounded(self.inner.get_many(keys)).await
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        self.bounded(self.inner.set(key, value, ttl)).await
    }

    async fn set_many(&self, entries: Vec<RemoteEntry>) -> Result<()> {
        self.bounded(self.inner.set_many(entries)).await
    }

    async fn delete(&self, keys: &[String]) -> Result<()> {
        self.bounded(self.inner.delete(keys)).await
    }

    async fn set_after_delete(
        &self,
        first: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<()> {
        self.bounded(self.inner.set_after_delete(first, key, value, ttl))
            .await
    }

    async fn set_nx(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<bool> {
        self.bounded(self.inner.set_nx(key, value, ttl)).await
    }

    async fn get_or_lease(
        &self,
        key: &str,
        lease_key: &str,
        token: &[u8],
        ttl: Duration,
    ) -> Result<LeaseRead> {
        self.bounded(self.inner.get_or_lease(key, lease_key, token, ttl))
            .await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        self.bounded(self.inner.delete_prefix(prefix)).await
    }

    async fn tag_add(&self, tag_key: &str, member: &str, ttl: Duration) -> Result<()> {
        self.bounded(self.inner.tag_add(tag_key, member, ttl)).await
    }

    async fn tag_take(&self, tag_key: &str, pending_key: &str) -> Result<Vec<String>> {
        self.bounded(self.inner.tag_take(tag_key, pending_key))
            .await
    }

    async fn tag_done(&self, pending_key: &str, members: &[String]) -> Result<()> {
        self.bounded(self.inner.tag_done(pending_key, members))
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
        self.bounded(self.inner.set_if_lease(lease_key, token, key, value, ttl))
            .await
    }

    async fn set_nx_many(&self, keys: &[String], value: &[u8], ttl: Duration) -> Result<Vec<bool>> {
        self.bounded(self.inner.set_nx_many(keys, value, ttl)).await
    }

    async fn set_if_lease_many(&self, fills: Vec<LeaseFill>) -> Result<Vec<bool>> {
        self.bounded(self.inner.set_if_lease_many(fills)).await
    }
}

/// Apply `layers` to `store`, first innermost; the breaker of the outermost breaker layer.
pub(crate) fn stack(
    store: Arc<dyn RemoteStore>,
    layers: &[Arc<dyn L2Layer>],
    context: &LayerContext,
) -> (Arc<dyn RemoteStore>, Option<Arc<CircuitBreaker>>) {
    let mut store = store;
    let mut breaker = None;
    for layer in layers {
        store = layer.layer(store, context);
        if let Some(b) = layer.breaker() {
            breaker = Some(b);
        }
    }
    (store, breaker)
}
