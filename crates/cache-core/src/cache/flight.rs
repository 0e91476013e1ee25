//! The task of a load and the guard that always settles its waiters.

use super::*;

/// Owns the senders of a load in flight. Finishing removes the keys from the in-flight map and
/// sends each result; dropping without finishing (a panic, a runtime shutting down) sends an
/// error instead, so no waiter ever hangs.
pub(super) struct FlightGuard<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    pub(super) inner: Arc<CacheInner<V, C>>,
    pub(super) flights: Vec<(String, Flight<V>)>,
}

impl<V, C> FlightGuard<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Give waiters a result now while the leader keeps working (early refresh): the key
    /// stays in flight so no second load starts.
    pub(super) fn publish_early(&self, key: &str, result: Shared<V>) {
        for (k, tx) in &self.flights {
            if k == key {
                tx.publish(result.clone());
            }
        }
    }

    /// Settle every waiter with `result`, waking them in arrival order, a chunk at a time
    /// (see [`Wakers`]).
    pub(super) async fn finish(mut self, result: impl Fn(&str) -> Shared<V>) {
        let flights = std::mem::take(&mut self.flights);
        self.release(flights, result).wake_in_chunks().await;
    }

    /// Take the keys out of the in-flight map (a key that a newer load took over stays), set
    /// each one's result, and hand back its waiters to wake (dropped, [`Wakers`] wakes them
    /// all at once).
    fn release(
        &self,
        flights: Vec<(String, Flight<V>)>,
        result: impl Fn(&str) -> Shared<V>,
    ) -> Wakers {
        {
            let mut map = self.inner.lock_inflight();
            for (k, tx) in &flights {
                if map.get(k).is_some_and(|rx| rx.same(tx)) {
                    map.remove(k);
                }
            }
        }
        let mut wakers = Wakers::new(Vec::new());
        for (k, tx) in flights {
            wakers.extend(tx.publish_quietly(result(&k)));
        }
        wakers
    }
}

impl<V, C> Drop for FlightGuard<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    fn drop(&mut self) {
        if self.flights.is_empty() {
            return;
        }
        let flights = std::mem::take(&mut self.flights);
        let err = if std::thread::panicking() {
            Error::new(ErrorKind::LoaderPanicked, "the loader panicked")
        } else {
            Error::new(
                ErrorKind::Closed,
                "the load was abandoned (runtime shutting down)",
            )
        };
        // Dropped here: every waiter is woken at once (no task to yield from).
        drop(self.release(flights, |_| Err(err.clone())));
    }
}

pub(super) fn spawn<F>(span: tracing::Span, fut: F) -> Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    use tracing::Instrument;
    let handle = tokio::runtime::Handle::try_current().map_err(|_| {
        Error::new(
            ErrorKind::InvalidConfig,
            "loads run on the tokio runtime: call the cache from within one",
        )
    })?;
    handle.spawn(fut.instrument(span));
    Ok(())
}
