//! A backend written outside the workspace plugs in through the public API alone: it
//! implements `L2Backend`, brings its store with its bus, and engines built from it keep their
//! L1 copies coherent like engines on Redis do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cache_tiered::{
    BusConfig, Capabilities, ErrorKind, L2Backend, L2Parts, L2Request, MemoryBus, MemoryStore,
    MsgPack, RemoteEntry, RemoteStore,
};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// "Our team's store": a shared in-process store and bus, counting its connections.
#[derive(Debug, Clone)]
struct TeamBackend {
    store: Arc<MemoryStore>,
    bus: Arc<MemoryBus>,
    connects: Arc<AtomicUsize>,
}

impl TeamBackend {
    fn new() -> Self {
        TeamBackend {
            store: Arc::new(MemoryStore::new()),
            bus: MemoryBus::new(),
            connects: Arc::default(),
        }
    }
}

#[async_trait]
impl L2Backend for TeamBackend {
    fn name(&self) -> &'static str {
        "team"
    }

    async fn connect(&self, request: &L2Request) -> cache_tiered::Result<L2Parts> {
        if request.tracking {
            return Err(request.tracking_unsupported(self.name()));
        }
        self.connects.fetch_add(1, Ordering::SeqCst);
        let store: Arc<dyn RemoteStore> = self.store.clone();
        Ok(L2Parts::new(store).with_bus(self.bus.attach()))
    }
}

async fn engine(backend: &TeamBackend) -> cache_tiered::Result<cache_tiered::Engine> {
    cache_tiered::builder("team-app")
        .with_l2(backend.clone())
        .with_bus_config(BusConfig::default().with_heartbeat(Duration::from_millis(50)))
        .build()
        .await
}

async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_backend_brings_its_bus_through_the_public_api() -> TestResult {
    let backend = TeamBackend::new();
    let a = engine(&backend).await?;
    let b = engine(&backend).await?;
    assert_eq!(backend.connects.load(Ordering::SeqCst), 2);
    assert!(a.bus_stats().is_some(), "the backend's bus is in use");
    let ca = a.cache::<u64, MsgPack>("n").build()?;
    let cb = b.cache::<u64, MsgPack>("n").build()?;
    ca.set("k", 1).await?;
    // Let that write's own invalidation reach B first (it would drop the copy read below).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        cb.get("k").await?.as_deref(),
        Some(&1),
        "B reads A's write from the store"
    );
    assert!(cb.get_local("k").is_some());
    ca.set("k", 2).await?;
    assert!(
        eventually(|| cb.get_local("k").is_none()).await,
        "A's write reached B's L1 through the backend's bus"
    );
    assert_eq!(cb.get("k").await?.as_deref(), Some(&2));
    Ok(())
}

#[tokio::test]
async fn a_backend_without_tracking_refuses_a_request_for_it() -> TestResult {
    let backend = TeamBackend::new();
    let e = cache_tiered::builder("team-app")
        .with_l2(backend)
        .with_tracking(true)
        .build()
        .await
        .err()
        .map(|e| (e.kind(), e.to_string()));
    let (kind, message) = e.expect("tracking on a backend without it must fail");
    assert_eq!(kind, ErrorKind::InvalidConfig);
    assert!(message.contains("team"), "{message}");
    Ok(())
}

#[tokio::test]
async fn a_bare_store_brings_no_bus_and_bus_false_says_so() -> TestResult {
    let store: Arc<dyn RemoteStore> = Arc::new(MemoryStore::new());
    let e = cache_tiered::builder("bare")
        .with_remote(store.clone())
        .build()
        .await?;
    assert!(e.bus_stats().is_none(), "remote() alone has no bus");
    let e = cache_tiered::builder("bare")
        .with_remote(store)
        .with_bus(false)
        .build()
        .await?;
    assert!(e.bus_stats().is_none());
    Ok(())
}

/// "A key-value store with nothing more": only the required methods, no capabilities.
#[derive(Debug, Default)]
struct PlainStore {
    inner: MemoryStore,
}

#[async_trait]
impl RemoteStore for PlainStore {
    fn kind(&self) -> &'static str {
        "plain"
    }
    fn max_value_size(&self) -> usize {
        self.inner.max_value_size()
    }
    async fn get(&self, key: &str) -> cache_tiered::Result<Option<Vec<u8>>> {
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[String]) -> cache_tiered::Result<Vec<Option<Vec<u8>>>> {
        self.inner.get_many(keys).await
    }
    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> cache_tiered::Result<()> {
        self.inner.set(key, value, ttl).await
    }
    async fn set_many(&self, entries: Vec<RemoteEntry>) -> cache_tiered::Result<()> {
        self.inner.set_many(entries).await
    }
    async fn delete(&self, keys: &[String]) -> cache_tiered::Result<()> {
        self.inner.delete(keys).await
    }
}

fn refused<T>(r: cache_tiered::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an InvalidConfig error"),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
            e.to_string()
        }
    }
}

#[tokio::test]
async fn a_store_without_capabilities_is_refused_at_build_and_its_calls_leave_nothing() -> TestResult
{
    let plain = Arc::new(PlainStore::default());
    let store: Arc<dyn RemoteStore> = plain.clone();
    let engine = cache_tiered::builder("plain")
        .with_remote(store)
        .build()
        .await?;
    assert_eq!(
        engine.remote().map(|s| s.capabilities()),
        Some(Capabilities::NONE)
    );

    // Leases are on by default: the build says what is missing and how to go on.
    let m = refused(engine.cache::<u64, MsgPack>("n").build());
    assert!(
        m.contains("fill leases") && m.contains("with_leases(false)"),
        "{m}"
    );
    // A declared need is checked at build too.
    let m = refused(
        engine
            .cache::<u64, MsgPack>("n")
            .with_leases(false)
            .require(Capabilities::TAGS | Capabilities::PREFIX_DELETE)
            .build(),
    );
    assert!(
        m.contains("tags, prefix delete") && m.contains("plain"),
        "{m}"
    );

    // Without leases the store serves plain reads, writes and loads.
    let c = engine
        .cache::<u64, MsgPack>("n")
        .with_leases(false)
        .build()?;
    c.set("a", 1).await?;
    assert_eq!(
        *c.get_or_load("b", |_| async { Ok::<_, std::io::Error>(2) })
            .await?,
        2
    );
    c.invalidate_local("a");
    assert_eq!(
        c.get("a").await?.as_deref(),
        Some(&1),
        "read back from the store"
    );

    // Calls that need a missing ability are refused before they touch anything.
    let keys_before = plain.inner.calls();
    let m = refused(c.set_with_tags("t", 3, &["tag"]).await);
    assert!(m.contains("tags"), "{m}");
    refused(c.invalidate_tag("tag").await);
    assert!(c.get_local("b").is_some());
    let m = refused(c.clear_namespace().await);
    assert!(m.contains("prefix delete"), "{m}");
    assert!(
        c.get_local("b").is_some(),
        "a refused clear leaves L1 as it was"
    );
    assert_eq!(
        plain.inner.calls(),
        keys_before,
        "no refused call reached the store"
    );
    assert_eq!(
        c.get("t").await?,
        None,
        "a refused tagged set wrote nothing"
    );

    // The in-memory store has every ability.
    let full = cache_tiered::builder("full")
        .with_memory_l2()
        .build()
        .await?;
    full.cache::<u64, MsgPack>("n")
        .require(Capabilities::ALL)
        .build()?;
    Ok(())
}
