//! Redis Cluster as the L2 (feature `cluster`): two instances share a cluster, batches are
//! split by hash slot into one pipeline per primary, and invalidations travel over the
//! cluster's pub/sub.
//!
//! Needs a cluster: `cargo xtask cluster up` starts a throwaway one on ports 7000-7005, then
//! `CLUSTER_URLS=redis://127.0.0.1:7000,redis://127.0.0.1:7001 cargo run -p cache-tiered
//! --features cluster --example cluster`. Any one reachable seed is enough; the others are
//! discovered. Without `CLUSTER_URLS` the example says so and exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_tiered::{Cache, ClusterConfig, ClusterStore, MsgPack};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Session {
    user: String,
    visits: u32,
}

async fn instance(seeds: &[String]) -> cache_tiered::Result<Cache<Session, MsgPack>> {
    let engine = cache_tiered::builder("example-cluster")
        .with_cluster_urls(seeds.iter().cloned())
        .build()
        .await?;
    engine
        .cache("sessions")
        .with_l1_ttl(Duration::from_secs(30))
        .with_l2_ttl(Duration::from_secs(300))
        .build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Ok(urls) = std::env::var("CLUSTER_URLS") else {
        eprintln!(
            "cluster: needs a Redis Cluster: set CLUSTER_URLS to comma-separated seed URLs \
             (`cargo xtask cluster up` starts one on 127.0.0.1:7000-7005); nothing to do"
        );
        return Ok(());
    };
    let seeds: Vec<String> = urls.split(',').map(|s| s.trim().to_owned()).collect();

    // Who serves what: a plain store handle shows the primaries found from the seeds.
    let store = ClusterStore::connect(ClusterConfig::from_urls(seeds.iter().cloned())).await?;
    let primaries = store.primaries();

    // Two service instances, each with its own L1, sharing the cluster.
    let a = instance(&seeds).await?;
    let b = instance(&seeds).await?;
    // On every primary: SCAN + UNLINK of this namespace, left over from an earlier run.
    a.clear_namespace().await?;

    // Instance a loads 100 sessions (the keys land on every primary).
    let loads = Arc::new(AtomicU64::new(0));
    let keys: Vec<String> = (0..100).map(|i| format!("user-{i}")).collect();
    for key in &keys {
        let loads = loads.clone();
        a.get_or_load(key, move |k| async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Session { user: k, visits: 1 })
        })
        .await?;
    }
    assert_eq!(loads.load(Ordering::SeqCst), 100);

    // Instance b reads all 100 at once: L1 misses, then one pipeline per primary.
    let found = b.get_many(&keys).await?;
    assert!(
        found.iter().all(Option::is_some),
        "b finds a's values in L2"
    );

    // a writes; b's L1 copy (filled just now) is dropped by the invalidation.
    let updated = Session {
        user: "user-7".into(),
        visits: 2,
    };
    let written = Instant::now();
    a.set("user-7", updated.clone()).await?;
    loop {
        if b.get("user-7").await?.as_deref() == Some(&updated) {
            break;
        }
        if written.elapsed() > Duration::from_secs(5) {
            return Err("b still serves the old value 5 s after a's write".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let seen_after = written.elapsed();

    eprintln!(
        "cluster: {} primaries; 100 sessions loaded once by a, read by b in one batch; \
         a's write seen by b after {seen_after:.1?}",
        primaries.len()
    );
    Ok(())
}
