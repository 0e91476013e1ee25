//! The user's batch writer: the code that writes to the source of truth.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;

/// The error a batch writer returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One batch: the newest value of each key, each key at most once.
pub type Batch<V> = Vec<(String, Arc<V>)>;

/// Writes a batch of values to the source of truth (a multi-row upsert, a pipeline of
/// requests, ...).
///
/// A batch holds the newest queued value of each key, each key once. The call must be
/// all-or-nothing from the queue's point of view: `Ok` means every entry is written; an error
/// means the whole batch is retried (after a back-off), so the writer must be idempotent
/// (an upsert of the same value twice is harmless). A panic counts as an error.
///
/// Any `Fn(Vec<(String, Arc<V>)>) -> impl Future<Output = Result<(), E>>` closure is a batch
/// writer; implement the trait (with `#[async_trait]`) for a type of your own otherwise.
#[async_trait]
pub trait BatchWriter<V>: Send + Sync + 'static {
    /// Write every entry of `batch`.
    async fn write_batch(&self, batch: Batch<V>) -> Result<(), BoxError>;
}

#[async_trait]
impl<V, F, Fut, E> BatchWriter<V> for F
where
    V: Send + Sync + 'static,
    F: Fn(Batch<V>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    async fn write_batch(&self, batch: Batch<V>) -> Result<(), BoxError> {
        (self)(batch).await.map_err(Into::into)
    }
}

/// Call the writer once; a panic becomes an error.
pub(crate) async fn call<V: 'static>(
    writer: &dyn BatchWriter<V>,
    batch: Batch<V>,
) -> Result<(), BoxError> {
    match AssertUnwindSafe(writer.write_batch(batch))
        .catch_unwind()
        .await
    {
        Ok(result) => result,
        Err(_) => Err("the batch writer panicked".into()),
    }
}

/// Capped exponential back-off with jitter: each delay is drawn from `[d/2, d]`, where `d`
/// doubles from `min` up to `max`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = d / 2;
        let span = u64::try_from((d - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(fastrand::u64(0..=span))
    }

    /// Start again from `min` (after a success).
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(35));
        let d: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(5) && d[0] <= Duration::from_millis(10));
        assert!(d[1] >= Duration::from_millis(10) && d[1] <= Duration::from_millis(20));
        for x in &d[2..] {
            assert!(*x >= Duration::from_micros(17_500) && *x <= Duration::from_millis(35));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(10));
    }

    #[tokio::test]
    async fn closures_are_writers_and_panics_are_errors() {
        let ok = |_b: Batch<u32>| async { Ok::<(), std::io::Error>(()) };
        assert!(call(&ok, vec![("a".into(), Arc::new(1))]).await.is_ok());
        let boom = |b: Batch<u32>| async move {
            if !b.is_empty() {
                #[allow(clippy::panic)]
                {
                    panic!("boom")
                }
            }
            Ok::<(), std::io::Error>(())
        };
        assert!(call(&boom, vec![("a".into(), Arc::new(1))]).await.is_err());
    }
}
