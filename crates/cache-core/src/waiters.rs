//! The result cell of a load in flight, shared by its leader and every waiter.
//!
//! A `tokio::sync::watch` channel served here before, but it spreads its waiters over several
//! notify lists and wakes them list by list, so the first callers of a stampede could be woken
//! last. This cell keeps one list and wakes it in arrival order: the callers that have waited
//! longest get the value first. A load's task wakes its waiters a chunk at a time
//! ([`Wakers`]), so that tokio also polls them in that order.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use crate::error::Result;

/// What one load produces, shared by every waiter.
pub(crate) type Shared<V> = Result<Option<Arc<V>>>;

struct State<V> {
    /// The latest result published (an early value first, then the final one).
    result: Option<Shared<V>>,
    /// Wakers of the waiters still pending, in arrival order.
    wakers: Vec<Waker>,
}

/// One load's result cell. Clones share it: the leader publishes, waiters wait.
pub(crate) struct Flight<V> {
    cell: Arc<Mutex<State<V>>>,
}

impl<V> Clone for Flight<V> {
    fn clone(&self) -> Self {
        Flight {
            cell: Arc::clone(&self.cell),
        }
    }
}

impl<V> Flight<V> {
    /// An empty cell: waiters wait until the first [`Flight::publish`].
    pub(crate) fn new() -> Self {
        Flight {
            cell: Arc::new(Mutex::new(State {
                result: None,
                wakers: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<V>> {
        self.cell.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `other` is a clone of this cell.
    pub(crate) fn same(&self, other: &Flight<V>) -> bool {
        Arc::ptr_eq(&self.cell, &other.cell)
    }

    /// Set the result (replacing an earlier one) and wake every pending waiter, the longest
    /// waiting first. Waiters arriving later read the result at once.
    pub(crate) fn publish(&self, result: Shared<V>) {
        for waker in self.publish_quietly(result) {
            waker.wake();
        }
    }

    /// Set the result and hand back the pending waiters' wakers, in arrival order, for the
    /// caller to wake (see [`Wakers`]). Waiters polled meanwhile see the result already.
    pub(crate) fn publish_quietly(&self, result: Shared<V>) -> Vec<Waker> {
        let mut state = self.lock();
        state.result = Some(result);
        std::mem::take(&mut state.wakers)
    }
}

/// Waiters to wake, in arrival order. Woken in chunks by [`Wakers::wake_in_chunks`], the
/// task yielding between chunks so each chunk is polled before the next is woken: tokio
/// polls the task woken last first and, when a worker's run queue is full, moves its oldest
/// tasks to the shared queue, so waking a thousand at once would poll the longest-waiting
/// last. Dropped unfinished (its task cancelled), it wakes the rest at once.
pub(crate) struct Wakers(Vec<Waker>);

/// Wakers per chunk: well under a tokio worker's local run queue (256).
const CHUNK: usize = 64;

impl Wakers {
    /// Wake these waiters.
    pub(crate) fn new(wakers: Vec<Waker>) -> Self {
        Wakers(wakers)
    }

    /// Add more waiters (of another key of the same load) after these.
    pub(crate) fn extend(&mut self, more: Vec<Waker>) {
        self.0.extend(more);
    }

    /// Wake every waiter, `CHUNK` at a time, yielding between chunks.
    pub(crate) async fn wake_in_chunks(mut self) {
        while !self.0.is_empty() {
            let rest = self.0.split_off(CHUNK.min(self.0.len()));
            for waker in std::mem::replace(&mut self.0, rest) {
                waker.wake();
            }
            if !self.0.is_empty() {
                tokio::task::yield_now().await;
            }
        }
    }
}

impl Drop for Wakers {
    fn drop(&mut self) {
        for waker in self.0.drain(..) {
            waker.wake();
        }
    }
}

impl<V> Flight<V> {
    /// The first result published (or the latest, for a waiter arriving after several).
    pub(crate) fn wait(self) -> impl Future<Output = Shared<V>> + Send
    where
        V: Send + Sync,
    {
        let mut slot: Option<usize> = None;
        std::future::poll_fn(move |cx| {
            let mut state = self.lock();
            if let Some(result) = &state.result {
                return Poll::Ready(result.clone());
            }
            match slot.and_then(|i| state.wakers.get_mut(i)) {
                Some(w) if w.will_wake(cx.waker()) => {}
                Some(w) => *w = cx.waker().clone(),
                None => {
                    slot = Some(state.wakers.len());
                    state.wakers.push(cx.waker().clone());
                }
            }
            Poll::Pending
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_get_the_published_result_and_late_ones_get_it_at_once() {
        let f: Flight<u32> = Flight::new();
        let waiters: Vec<_> = (0..8).map(|_| tokio::spawn(f.clone().wait())).collect();
        tokio::task::yield_now().await;
        f.publish(Ok(Some(Arc::new(7))));
        for w in waiters {
            assert_eq!(
                w.await.ok().and_then(|r| r.ok()).flatten().map(|v| *v),
                Some(7)
            );
        }
        let late = f.clone().wait().await;
        assert_eq!(late.ok().flatten().map(|v| *v), Some(7));
        assert!(f.same(&f.clone()));
        assert!(!f.same(&Flight::new()));
    }

    /// A waker that records its number when woken.
    struct Rec(usize, Arc<Mutex<Vec<usize>>>);

    impl std::task::Wake for Rec {
        fn wake(self: Arc<Self>) {
            self.1
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(self.0);
        }
    }

    fn recorders(n: usize, order: &Arc<Mutex<Vec<usize>>>) -> Vec<Waker> {
        (0..n)
            .map(|i| Waker::from(Arc::new(Rec(i, Arc::clone(order)))))
            .collect()
    }

    #[tokio::test]
    async fn chunks_wake_everyone_in_order() {
        let order = Arc::new(Mutex::new(Vec::new()));
        Wakers::new(recorders(3 * CHUNK + 5, &order))
            .wake_in_chunks()
            .await;
        let woken = order.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(woken, (0..3 * CHUNK + 5).collect::<Vec<_>>());
    }

    #[test]
    fn chunks_dropped_midway_wake_the_rest() -> std::io::Result<()> {
        // The waking task is cancelled after its first chunk: the others are still woken.
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waking = Box::pin(Wakers::new(recorders(CHUNK + 10, &order)).wake_in_chunks());
        let mut cx = std::task::Context::from_waker(Waker::noop());
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        let _entered = rt.enter();
        assert!(waking.as_mut().poll(&mut cx).is_pending());
        assert_eq!(order.lock().unwrap_or_else(|p| p.into_inner()).len(), CHUNK);
        drop(waking);
        let woken = order.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(woken, (0..CHUNK + 10).collect::<Vec<_>>());
        Ok(())
    }

    #[test]
    fn waiters_are_woken_in_arrival_order() {
        // Three waiters polled in order 0, 1, 2 (one re-polled with the same waker) are woken
        // 0, 1, 2.
        let order = Arc::new(Mutex::new(Vec::new()));
        let f: Flight<u32> = Flight::new();
        let mut futs: Vec<_> = (0..3).map(|_| Box::pin(f.clone().wait())).collect();
        let wakers = recorders(3, &order);
        for (fut, w) in futs.iter_mut().zip(&wakers) {
            let mut cx = std::task::Context::from_waker(w);
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        let mut cx = std::task::Context::from_waker(&wakers[1]);
        assert!(futs[1].as_mut().poll(&mut cx).is_pending());
        f.publish(Err(crate::error::Error::new(
            crate::error::ErrorKind::Closed,
            "test",
        )));
        assert_eq!(
            *order.lock().unwrap_or_else(|p| p.into_inner()),
            vec![0, 1, 2]
        );
        let mut cx = std::task::Context::from_waker(Waker::noop());
        let ready = futs
            .iter_mut()
            .map(|fut| fut.as_mut().poll(&mut cx).is_ready())
            .filter(|&r| r)
            .count();
        assert_eq!(ready, 3);
    }
}
