//! Shared test pieces: an engine on in-process tiers, and a source of truth that records
//! the history of every key.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_codec::MsgPack;
use cache_core::{Cache, Engine, MemoryStore};
use cache_l1::QuickL1;
use cache_writebehind::{Batch, BoxError};

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

static PREFIX: AtomicUsize = AtomicUsize::new(0);

/// A prefix no other test (or test process) uses.
pub fn unique_prefix(test: &str) -> String {
    format!(
        "wb{}-{}-{}",
        std::process::id(),
        PREFIX.fetch_add(1, Ordering::SeqCst),
        test.replace('_', "-")
    )
}

/// An engine with an in-process L1 and an in-process L2 (returned, to fail it on demand).
pub fn engine(prefix: &str) -> Result<(Engine, Arc<MemoryStore>), cache_core::Error> {
    engine_on(prefix, MemoryStore::new())
}

/// Like [`engine`] on the given in-process L2.
pub fn engine_on(
    prefix: &str,
    l2: MemoryStore,
) -> Result<(Engine, Arc<MemoryStore>), cache_core::Error> {
    let l2 = Arc::new(l2);
    let engine = Engine::builder(prefix)
        .with_l1(Arc::new(QuickL1::with_capacity_bytes(64 << 20)))
        .with_l2(l2.clone())
        .build()?;
    Ok((engine, l2))
}

pub fn cache(engine: &Engine) -> Result<Cache<u64, MsgPack>, cache_core::Error> {
    engine
        .cache::<u64, MsgPack>("items")
        .with_l1_ttl(Duration::from_secs(600))
        .with_l2_ttl(Duration::from_secs(600))
        .build()
}

/// The source of truth: every value each key was given, in order.
#[derive(Clone, Default)]
pub struct Source {
    history: Arc<Mutex<HashMap<String, Vec<u64>>>>,
    calls: Arc<AtomicU64>,
}

impl Source {
    /// Record a batch; checks that the batch holds each key once.
    pub fn record(&self, batch: &Batch<u64>) {
        let mut h = self.history.lock().unwrap();
        let mut seen = std::collections::HashSet::new();
        for (k, v) in batch {
            assert!(seen.insert(k.clone()), "key {k} twice in one batch");
            h.entry(k.clone()).or_default().push(**v);
        }
    }

    /// Count a writer call; returns its number (1-based).
    pub fn call(&self) -> u64 {
        self.calls.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn latest(&self, key: &str) -> Option<u64> {
        self.history
            .lock()
            .unwrap()
            .get(key)
            .and_then(|h| h.last().copied())
    }

    pub fn keys(&self) -> usize {
        self.history.lock().unwrap().len()
    }

    /// Every key's values were written in increasing order (per-key order kept).
    pub fn assert_ordered(&self) {
        for (k, h) in self.history.lock().unwrap().iter() {
            assert!(
                h.windows(2).all(|w| w[0] < w[1]),
                "key {k} was written out of order: {h:?}"
            );
        }
    }

    /// A writer that records every batch after `latency`.
    pub fn writer(
        &self,
        latency: Duration,
    ) -> impl Fn(Batch<u64>) -> futures::future::BoxFuture<'static, Result<(), BoxError>>
           + Send
           + Sync
           + 'static {
        let source = self.clone();
        move |batch: Batch<u64>| {
            let source = source.clone();
            Box::pin(async move {
                source.call();
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                source.record(&batch);
                Ok(())
            })
        }
    }
}
