//! Warming L1 after a reconnect ([`crate::bus::ReconnectPolicy::Reload`]).
//!
//! The bus flushes the namespace when its subscription comes back (anything published while
//! it was deaf was missed), then asks the namespace state to reload its most recently used
//! keys. The state knows the keys but not the codec: a typed handle does the reading, one
//! batched L2 read (`get_many`) through the same path as [`Cache::get_many`] (epochs
//! checked, so an invalidation that arrives meanwhile wins). No loader runs: a key missing
//! from L2 stays a miss.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Cache, CacheInner};
use crate::codec::Codec;
use crate::namespace::Reloader;

impl<V, C> Cache<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Offer this handle to its namespace for reloads after a reconnect. Does nothing unless
    /// the engine's bus policy is `Reload`. Called once by `CacheBuilder::build`.
    pub(super) fn with_reload(self) -> Self {
        if self.inner.state.reloads() {
            let me: Arc<dyn Reloader> = self.inner.clone();
            self.inner.state.add_reloader(Arc::downgrade(&me));
        }
        self
    }
}

impl<V, C> Reloader for CacheInner<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    fn reload(self: Arc<Self>, keys: Vec<String>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let now = self.engine.now_ms();
            // A key read again since the flush is in L1 already.
            let keys: Vec<String> = keys
                .into_iter()
                .filter(|k| {
                    !matches!(
                        self.engine.l1().get(self.ns, k, now),
                        Some(e) if e.expires_at_ms > now && self.is_fresh(&e)
                    )
                })
                .collect();
            if keys.is_empty() {
                return;
            }
            let asked = keys.len();
            match self.l2_read_many(keys).await {
                Ok(found) => {
                    let filled = found
                        .iter()
                        .filter(|f| f.as_ref().is_some_and(|f| !f.stale))
                        .count();
                    tracing::debug!(cache = %self.name, asked, filled, "L1 reloaded after a reconnect");
                }
                // Counted and reported by the read; the next requests load as after a flush.
                Err(e) => {
                    tracing::debug!(cache = %self.name, asked, error = %e, "L1 reload after a reconnect failed");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::bus::{MemoryBus, MemoryBusHandle, ReconnectPolicy};
    use crate::cache::Cache;
    use crate::clock::ManualClock;
    use crate::error::Result;
    use crate::remote::MemoryStore;
    use crate::testing::{engine, Json};
    use crate::Engine;

    const MS: Duration = Duration::from_millis(1);

    struct Pair {
        clock: Arc<ManualClock>,
        store: Arc<MemoryStore>,
        writer: Cache<u64, Json>,
        reader: Cache<u64, Json>,
        reader_bus: Arc<MemoryBusHandle>,
        _engines: (Engine, Engine),
    }

    fn pair(policy: ReconnectPolicy) -> Result<Pair> {
        let (store, bus) = (Arc::new(MemoryStore::new()), MemoryBus::new());
        let clock = Arc::new(ManualClock::new(1_000_000));
        let (we, _) = engine(&store, &bus, &clock, ReconnectPolicy::Flush)?;
        let (re, reader_bus) = engine(&store, &bus, &clock, policy)?;
        let build = |e: &Engine| {
            e.cache::<u64, Json>("n")
                .with_l1_ttl(Duration::from_secs(300))
                .with_l2_ttl(Duration::from_secs(600))
                .build()
        };
        Ok(Pair {
            writer: build(&we)?,
            reader: build(&re)?,
            clock,
            store,
            reader_bus,
            _engines: (we, re),
        })
    }

    fn key(i: u64) -> String {
        format!("k{i}")
    }

    impl Pair {
        /// The writer sets `k0..n` to `i`; the reader reads them in order (`k{n-1}` last).
        async fn read(&self, n: u64) -> Result<()> {
            for i in 0..n {
                self.writer.set(&key(i), i).await?;
            }
            tokio::time::sleep(5 * MS).await;
            for i in 0..n {
                assert_eq!(self.reader.get(&key(i)).await?.as_deref(), Some(&i));
            }
            self.clock.advance(MS);
            Ok(())
        }

        fn local(&self, i: u64) -> Option<u64> {
            self.reader.get_local(&key(i)).flatten().map(|v| *v)
        }

        /// Break the reader's subscription; the clock moves on after the loss's flush (while
        /// its reload waits for it), as a real one does.
        async fn blip(&self) {
            self.reader_bus.disconnect();
            tokio::time::sleep(MS).await;
            self.clock.advance(MS);
            tokio::time::sleep(20 * MS).await;
        }

        /// Restore it; the clock moves on after the reconnect's flush (while the reload
        /// waits for it), as a real one does.
        async fn back(&self) {
            self.reader_bus.reconnect();
            tokio::time::sleep(MS).await;
            self.clock.advance(MS);
            tokio::time::sleep(20 * MS).await;
        }
    }

    /// `Reload`: the loss and the reconnect flush, then the most recently read keys are read
    /// again from L2 (their current values, a write missed while deaf included) without a
    /// request.
    #[tokio::test(start_paused = true)]
    async fn reload_refills_recent_keys_after_the_reconnect() -> Result<()> {
        let p = pair(ReconnectPolicy::reload(100))?;
        p.read(10).await?;
        let calls = p.store.calls();
        p.blip().await;
        assert_eq!(p.store.calls(), calls + 1, "one batched L2 read");
        assert_eq!(p.local(3), Some(3), "not reloaded after the loss's flush");
        p.writer.set(&key(3), 33).await?; // missed by the reader
        tokio::time::sleep(5 * MS).await;
        assert_eq!(p.local(3), Some(3));
        let calls = p.store.calls();
        p.back().await;
        assert_eq!(p.store.calls(), calls + 1, "one batched L2 read");
        for i in 0..10 {
            let want = if i == 3 { 33 } else { i };
            assert_eq!(p.local(i), Some(want), "k{i} not reloaded");
        }
        Ok(())
    }

    /// `Reload { max_keys }` reads at most `max_keys` keys, the most recently read ones.
    #[tokio::test(start_paused = true)]
    async fn reload_reads_at_most_max_keys_the_newest() -> Result<()> {
        let p = pair(ReconnectPolicy::reload(4))?;
        p.read(10).await?;
        p.blip().await;
        p.back().await;
        let reloaded: Vec<u64> = (0..10).filter(|i| p.local(*i).is_some()).collect();
        assert_eq!(reloaded, vec![6, 7, 8, 9]);
        Ok(())
    }

    /// `Flush` reloads nothing: L1 stays empty after the reconnect until requests come.
    #[tokio::test(start_paused = true)]
    async fn flush_reloads_nothing() -> Result<()> {
        let p = pair(ReconnectPolicy::Flush)?;
        p.read(3).await?;
        p.blip().await;
        let calls = p.store.calls();
        p.back().await;
        assert_eq!(p.store.calls(), calls);
        assert!((0..3).all(|i| p.local(i).is_none()));
        Ok(())
    }

    /// A reload with L2 down fails quietly: nothing is filled, the next request loads.
    #[tokio::test(start_paused = true)]
    async fn a_reload_with_l2_down_fills_nothing() -> Result<()> {
        let p = pair(ReconnectPolicy::reload(10))?;
        p.read(3).await?;
        p.blip().await;
        p.store.set_down(true);
        p.back().await;
        assert!((0..3).all(|i| p.local(i).is_none()));
        p.store.set_down(false);
        assert_eq!(p.reader.get(&key(1)).await?.as_deref(), Some(&1));
        Ok(())
    }
}
