//! Circuit breakers, as layers: [`BreakerStore`] wraps a remote store, [`BreakerBus`] wraps a
//! bus transport. After `failure_threshold` consecutive failures (errors or timeouts) the
//! breaker opens: calls fail at once with [`ErrorKind::CircuitOpen`], with no network and no
//! waiting, for `cool_down`. Then one call is let through (half-open): success closes the
//! breaker, failure opens it for another cool-down.

use crate::capabilities::Capabilities;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::bus::{BusEvent, BusTransport};
use crate::error::{Error, ErrorKind, Result};
use crate::observer::{CacheEvent, Observer};
use crate::remote::{LeaseFill, LeaseRead, RemoteEntry, RemoteStore};

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (default 5).
    pub failure_threshold: u32,
    /// How long an open breaker skips the remote side before probing (default 500 ms).
    #[serde(with = "crate::durations::duration_text")]
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            cool_down: Duration::from_millis(500),
        }
    }
}

impl BreakerConfig {
    /// Settings with this threshold and cool-down.
    pub fn new(failure_threshold: u32, cool_down: Duration) -> Self {
        BreakerConfig {
            failure_threshold: failure_threshold.max(1),
            cool_down,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { since: Instant },
}

/// The breaker itself: a small state machine behind a mutex (never held across an await).
/// While it is closed, calls touch only two atomics (`open`, `failures`); the mutex is taken
/// on the way to open and while open or half-open.
pub struct CircuitBreaker {
    name: &'static str,
    config: BreakerConfig,
    state: Mutex<State>,
    /// Consecutive failures while closed.
    failures: AtomicU32,
    /// `state != Closed` (open or half-open), written under the mutex.
    open: AtomicBool,
    observer: Option<Arc<dyn Observer>>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("open", &self.is_open())
            .finish()
    }
}

impl CircuitBreaker {
    /// A closed breaker named `name` (for logs), reporting state changes to `observer`.
    pub fn new(
        name: &'static str,
        config: BreakerConfig,
        observer: Option<Arc<dyn Observer>>,
    ) -> Self {
        CircuitBreaker {
            name,
            config,
            state: Mutex::new(State::Closed),
            failures: AtomicU32::new(0),
            open: AtomicBool::new(false),
            observer,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True while calls are being skipped.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// May a call go through now?
    pub fn allow(&self) -> bool {
        if !self.open.load(Ordering::Acquire) {
            return true;
        }
        let mut s = self.lock();
        match *s {
            State::Closed => true,
            State::Open { until } => {
                if Instant::now() >= until {
                    *s = State::HalfOpen {
                        since: Instant::now(),
                    };
                    true
                } else {
                    false
                }
            }
            State::HalfOpen { since } => {
                // A probe whose caller vanished must not wedge the breaker half-open.
                if since.elapsed() >= self.config.cool_down {
                    *s = State::HalfOpen {
                        since: Instant::now(),
                    };
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Report a success.
    pub fn success(&self) {
        if !self.open.load(Ordering::Acquire) {
            // Only a write when there is a streak to reset: successes in a row share the line.
            if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let mut s = self.lock();
        let was_open = !matches!(*s, State::Closed);
        *s = State::Closed;
        self.failures.store(0, Ordering::Relaxed);
        self.open.store(false, Ordering::Release);
        drop(s);
        if was_open {
            self.report(false);
        }
    }

    /// Report a failure.
    pub fn failure(&self) {
        if !self.open.load(Ordering::Acquire) {
            let streak = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if streak < self.config.failure_threshold {
                return;
            }
        }
        let mut s = self.lock();
        let opened = match *s {
            State::Closed => {
                // The streak reached the threshold (re-checked under the lock: a success may
                // have reset it meanwhile).
                if self.failures.load(Ordering::Relaxed) >= self.config.failure_threshold {
                    *s = State::Open {
                        until: Instant::now() + self.config.cool_down,
                    };
                    self.open.store(true, Ordering::Release);
                    true
                } else {
                    false
                }
            }
            State::Open { .. } | State::HalfOpen { .. } => {
                *s = State::Open {
                    until: Instant::now() + self.config.cool_down,
                };
                // Already open: no new transition to report.
                false
            }
        };
        drop(s);
        if opened {
            self.report(true);
        }
    }

    /// Log and observe a transition (the state is already changed).
    fn report(&self, open: bool) {
        if open {
            tracing::warn!(
                breaker = self.name,
                cool_down_ms = self.config.cool_down.as_millis() as u64,
                "circuit breaker opened: skipping the remote side"
            );
        } else {
            tracing::info!(breaker = self.name, "circuit breaker closed");
        }
        if let Some(o) = &self.observer {
            o.on_engine_event(CacheEvent::Breaker { open });
        }
    }

    fn rejected(&self) -> Error {
        Error::new(
            ErrorKind::CircuitOpen,
            format!("{} skipped: circuit breaker open", self.name),
        )
    }

    /// Run `call` through the breaker.
    pub async fn call<T>(&self, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        if !self.allow() {
            return Err(self.rejected());
        }
        let result = call.await;
        match &result {
            Ok(_) => self.success(),
            Err(e) if counts_as_failure(e) => self.failure(),
            // A refused value, a bad key, a refused command or credentials (`NOPERM`,
            // `NOAUTH`, `WRONGPASS`: a configuration error, which skipping the remote side
            // would only hide): the remote side answered, it is up.
            Err(_) => self.success(),
        }
        result
    }
}

/// Only transient trouble of the remote side counts toward opening the breaker: an
/// unreachable or broken connection, a timeout, a server error. An authorisation error
/// ([`ErrorKind::Auth`]) is a configuration error that repeats until the ACL or the
/// credentials are fixed; it is reported to the caller every time, never hidden behind
/// [`ErrorKind::CircuitOpen`].
fn counts_as_failure(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::Remote
    )
}

/// A remote store behind a circuit breaker.
pub struct BreakerStore {
    inner: Arc<dyn RemoteStore>,
    breaker: Arc<CircuitBreaker>,
}

impl fmt::Debug for BreakerStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerStore")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .finish()
    }
}

impl BreakerStore {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn RemoteStore>, breaker: Arc<CircuitBreaker>) -> Self {
        BreakerStore { inner, breaker }
    }

    /// The breaker.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }
}

#[async_trait]
impl RemoteStore for BreakerStore {
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
        self.breaker.call(self.inner.get(key)).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        self.breaker.call(self.inner.get_many(keys)).await
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        self.breaker.call(self.inner.set(key, value, ttl)).await
    }

    async fn set_many(&self, entries: Vec<RemoteEntry>) -> Result<()> {
        self.breaker.call(self.inner.set_many(entries)).await
    }

    async fn delete(&self, keys: &[String]) -> Result<()> {
        self.breaker.call(self.inner.delete(keys)).await
    }

    async fn set_after_delete(
        &self,
        first: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<()> {
        self.breaker
            .call(self.inner.set_after_delete(first, key, value, ttl))
            .await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        self.breaker.call(self.inner.delete_prefix(prefix)).await
    }

    async fn tag_add(&self, tag_key: &str, member: &str, ttl: Duration) -> Result<()> {
        self.breaker
            .call(self.inner.tag_add(tag_key, member, ttl))
            .await
    }

    async fn tag_done(&self, pending_key: &str, members: &[String]) -> Result<()> {
        self.breaker
            .call(self.inner.tag_done(pending_key, members))
            .await
    }

    async fn tag_take(&self, tag_key: &str, pending_key: &str) -> Result<Vec<String>> {
        self.breaker
            .call(self.inner.tag_take(tag_key, pending_key))
            .await
    }

    async fn set_nx(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<bool> {
        self.breaker.call(self.inner.set_nx(key, value, ttl)).await
    }

    async fn get_or_lease(
        &self,
        key: &str,
        lease_key: &str,
        token: &[u8],
        ttl: Duration,
    ) -> Result<LeaseRead> {
        self.breaker
            .call(self.inner.get_or_lease(key, lease_key, token, ttl))
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
        self.breaker
            .call(self.inner.set_if_lease(lease_key, token, key, value, ttl))
            .await
    }

    async fn set_nx_many(&self, keys: &[String], value: &[u8], ttl: Duration) -> Result<Vec<bool>> {
        self.breaker
            .call(self.inner.set_nx_many(keys, value, ttl))
            .await
    }

    async fn set_if_lease_many(&self, fills: Vec<LeaseFill>) -> Result<Vec<bool>> {
        self.breaker.call(self.inner.set_if_lease_many(fills)).await
    }
}

/// A bus transport whose publishing goes through a circuit breaker (subscribing is the
/// transport's own business: it reconnects with back-off).
pub struct BreakerBus {
    inner: Arc<dyn BusTransport>,
    breaker: Arc<CircuitBreaker>,
}

impl fmt::Debug for BreakerBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerBus")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .finish()
    }
}

impl BreakerBus {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn BusTransport>, breaker: Arc<CircuitBreaker>) -> Self {
        BreakerBus { inner, breaker }
    }
}

#[async_trait]
impl BusTransport for BreakerBus {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<()> {
        self.breaker
            .call(self.inner.publish(channel, payload))
            .await
    }

    fn start(&self, events: mpsc::UnboundedSender<BusEvent>) -> Result<JoinHandle<()>> {
        self.inner.start(events)
    }

    fn subscribe(&self, channel: &str) {
        self.inner.subscribe(channel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::MemoryStore;

    #[tokio::test]
    async fn opens_skips_probes_and_closes() -> Result<()> {
        let mem = Arc::new(MemoryStore::new());
        let breaker = Arc::new(CircuitBreaker::new(
            "test",
            BreakerConfig::new(3, Duration::from_millis(50)),
            None,
        ));
        let store = BreakerStore::new(mem.clone(), breaker.clone());
        mem.set_down(true);
        for _ in 0..3 {
            assert_eq!(
                store.get("k").await.map_err(|e| e.kind()),
                Err(ErrorKind::Connection)
            );
        }
        assert!(breaker.is_open());
        let calls = mem.calls();
        // Open: no call reaches the store.
        for _ in 0..10 {
            assert_eq!(
                store.get("k").await.map_err(|e| e.kind()),
                Err(ErrorKind::CircuitOpen)
            );
        }
        assert_eq!(mem.calls(), calls);
        tokio::time::sleep(Duration::from_millis(60)).await;
        // Half-open probe fails: open again.
        assert_eq!(
            store.get("k").await.map_err(|e| e.kind()),
            Err(ErrorKind::Connection)
        );
        assert_eq!(
            store.get("k").await.map_err(|e| e.kind()),
            Err(ErrorKind::CircuitOpen)
        );
        mem.set_down(false);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(store.get("k").await?, None);
        assert!(!breaker.is_open());
        Ok(())
    }

    /// A store whose every call is refused by the server's ACL (`NOPERM`).
    #[derive(Debug)]
    struct Refusing;

    fn refused(command: &str) -> Error {
        Error::new(
            ErrorKind::Auth,
            format!("Redis user `alice` is not allowed to run {command}"),
        )
    }

    #[async_trait]
    impl RemoteStore for Refusing {
        fn kind(&self) -> &'static str {
            "refusing"
        }

        fn max_value_size(&self) -> usize {
            1024
        }

        async fn get(&self, _: &str) -> Result<Option<Vec<u8>>> {
            Err(refused("GET"))
        }

        async fn get_many(&self, _: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
            Err(refused("MGET"))
        }

        async fn set(&self, _: &str, _: Vec<u8>, _: Duration) -> Result<()> {
            Err(refused("SET"))
        }

        async fn set_many(&self, _: Vec<RemoteEntry>) -> Result<()> {
            Err(refused("SET"))
        }

        async fn delete(&self, _: &[String]) -> Result<()> {
            Err(refused("DEL"))
        }

        async fn delete_prefix(&self, _: &str) -> Result<u64> {
            Err(refused("SCAN"))
        }

        async fn tag_add(&self, _: &str, _: &str, _: Duration) -> Result<()> {
            Err(refused("EVALSHA"))
        }

        async fn tag_take(&self, _: &str, _: &str) -> Result<Vec<String>> {
            Err(refused("EVALSHA"))
        }

        async fn set_nx(&self, _: &str, _: Vec<u8>, _: Duration) -> Result<bool> {
            Err(refused("SET"))
        }

        async fn set_if_lease(
            &self,
            _: &str,
            _: &[u8],
            _: &str,
            _: Vec<u8>,
            _: Duration,
        ) -> Result<bool> {
            Err(refused("EVALSHA"))
        }
    }

    #[tokio::test]
    async fn authorisation_errors_do_not_open_the_breaker() -> Result<()> {
        let breaker = Arc::new(CircuitBreaker::new(
            "test",
            BreakerConfig::new(2, Duration::from_secs(60)),
            None,
        ));
        let store = BreakerStore::new(Arc::new(Refusing), breaker.clone());
        for _ in 0..20 {
            let e = store.get("k").await.err();
            assert_eq!(e.as_ref().map(Error::kind), Some(ErrorKind::Auth));
            assert!(e.is_some_and(|e| e.message().contains("GET")));
            assert!(!breaker.is_open());
        }
        // An auth error between transient ones breaks their streak: the server answered.
        breaker.failure();
        assert!(store
            .set("k", vec![1], Duration::from_secs(1))
            .await
            .is_err());
        breaker.failure();
        assert!(!breaker.is_open());
        breaker.failure();
        assert!(breaker.is_open());
        Ok(())
    }
}
