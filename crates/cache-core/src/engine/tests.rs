//! The engine on its own, inside core: the in-memory store and bus, a map as L1.

use std::sync::Arc;
use std::time::Duration;

use crate::bus::MemoryBus;
use crate::cache::Cache;
use crate::error::{ErrorKind, Result};
use crate::layer::{L2Layer, TimeoutLayer};
use crate::options::CallOptions;
use crate::remote::MemoryStore;
use crate::testing::{Json, MapL1};
use crate::Engine;

fn engine(store: &Arc<MemoryStore>, bus: Option<&Arc<MemoryBus>>) -> Result<Engine> {
    let mut b = Engine::builder("et")
        .with_custom_l1(Arc::new(MapL1::default()))
        .with_l2(store.clone());
    if let Some(bus) = bus {
        b = b.with_bus(bus.attach());
    }
    b.build()
}

fn cache(e: &Engine) -> Result<Cache<u64, Json>> {
    e.cache::<u64, Json>("n").with_jitter(0.0).build()
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
async fn two_engines_on_one_store_and_bus_stay_coherent() -> Result<()> {
    let (store, bus) = (Arc::new(MemoryStore::new()), MemoryBus::new());
    let a = cache(&engine(&store, Some(&bus))?)?;
    let b = cache(&engine(&store, Some(&bus))?)?;
    a.set("k", 1).await?;
    assert_eq!(b.get("k").await?.as_deref(), Some(&1));
    a.set("k", 2).await?;
    assert!(
        eventually(|| b.get_local("k").is_none()).await,
        "B dropped its copy"
    );
    assert_eq!(b.get("k").await?.as_deref(), Some(&2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_background_writes() -> Result<()> {
    let store = Arc::new(MemoryStore::new());
    store.set_latency(Duration::from_millis(2));
    let e = engine(&store, None)?;
    let c = cache(&e)?;
    let bg = CallOptions::new().background_l2_write();
    for i in 0..50u64 {
        c.set_with(&format!("k{}", i % 5), i, &bg).await?;
    }
    let report = e.shutdown(Duration::from_secs(10)).await;
    assert_eq!(report.unwritten_background, 0, "{report:?}");
    assert_eq!(e.background_writes(), 0);
    let fresh = cache(&engine(&store, None)?)?;
    for k in 0..5u64 {
        assert_eq!(
            fresh.get(&format!("k{k}")).await?.as_deref(),
            Some(&(45 + k))
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_background_queue_writes_in_the_foreground() -> Result<()> {
    let store = Arc::new(MemoryStore::new());
    store.set_latency(Duration::from_millis(5));
    let e = Engine::builder("et-full")
        .with_custom_l1(Arc::new(MapL1::default()))
        .with_l2(store.clone())
        .with_background_writes(1)
        .build()?;
    let c = cache(&e)?;
    let bg = CallOptions::new().background_l2_write();
    for i in 0..10u64 {
        c.set_with(&format!("k{i}"), i, &bg).await?;
        // One write waits in the queue at most, plus the one the task is writing.
        assert!(
            e.background_writes() <= 2,
            "{} pending",
            e.background_writes()
        );
    }
    e.shutdown(Duration::from_secs(5)).await;
    let fresh = cache(
        &Engine::builder("et-full")
            .with_custom_l1(Arc::new(MapL1::default()))
            .with_l2(store.clone())
            .build()?,
    )?;
    for i in 0..10u64 {
        assert_eq!(
            fresh.get(&format!("k{i}")).await?.as_deref(),
            Some(&i),
            "k{i} landed"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_namespace_holds_one_value_type() -> Result<()> {
    let e = engine(&Arc::new(MemoryStore::new()), None)?;
    let _numbers = e.cache::<u64, Json>("n").build()?;
    let words = e.cache::<String, Json>("n").build().err().map(|e| e.kind());
    assert_eq!(words, Some(ErrorKind::InvalidConfig));
    Ok(())
}

#[tokio::test]
async fn the_default_stack_has_a_breaker_an_empty_one_has_none() -> Result<()> {
    for (layers, breaker) in [(None, true), (Some(Vec::new()), false)] {
        let store = Arc::new(MemoryStore::new());
        let mut b = Engine::builder("et-layers")
            .with_custom_l1(Arc::new(MapL1::default()))
            .with_l2(store.clone());
        if let Some(layers) = layers {
            b = b.with_l2_layers(layers);
        }
        let e = b.build()?;
        let c = cache(&e)?;
        store.set_down(true);
        for i in 0..10 {
            let _ = c.get(&format!("k{i}")).await;
        }
        assert_eq!(e.l2_breaker_open(), breaker);
    }
    Ok(())
}

#[tokio::test]
async fn a_timeout_layer_on_top_bounds_every_call() -> Result<()> {
    let store = Arc::new(MemoryStore::new());
    store.set_latency(Duration::from_millis(200));
    let layer: Arc<dyn L2Layer> = Arc::new(TimeoutLayer::new(Duration::from_millis(10))?);
    let e = Engine::builder("et-timeout")
        .with_custom_l1(Arc::new(MapL1::default()))
        .with_l2(store.clone())
        .with_l2_layer(layer)
        .build()?;
    let l2 = e.remote().map(Arc::clone);
    let answer = match l2 {
        Some(l2) => l2.get("et-timeout:n:k").await.err().map(|e| e.kind()),
        None => None,
    };
    assert_eq!(answer, Some(ErrorKind::Timeout));
    Ok(())
}
