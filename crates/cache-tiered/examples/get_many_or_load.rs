//! Batch reads: `get_many_or_load` answers a list of keys with one L2 round trip for the L1
//! misses and one call of your batch loader (think `SELECT … WHERE id IN (…)`) for the keys
//! missing from both tiers.
//!
//! `REDIS_URL=redis://127.0.0.1:6379/ cargo run -p cache-tiered --example get_many_or_load`
//! (`cargo xtask redis` starts a throwaway Redis); without `REDIS_URL` it runs on the
//! in-process L2.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cache_tiered::{Cache, MsgPack};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Product {
    id: u64,
    name: String,
}

/// Stands in for one database query that fetches many rows at once. Ids above 1000 do not
/// exist: the loader leaves them out of its answer, and the cache remembers their absence.
async fn load_products(
    ids: Vec<String>,
    calls: Arc<AtomicU64>,
) -> Result<HashMap<String, Product>, std::io::Error> {
    calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut rows = HashMap::new();
    for key in ids {
        let id: u64 = key
            .parse()
            .map_err(|_| std::io::Error::other("product ids are numbers"))?;
        if id <= 1000 {
            let name = format!("product {id}");
            rows.insert(key, Product { id, name });
        }
    }
    Ok(rows)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let builder = cache_tiered::builder("example-batch");
    let builder = match std::env::var("REDIS_URL") {
        Ok(url) => builder.with_redis_url(url),
        Err(_) => builder.with_memory_l2(),
    };
    let engine = builder.build().await?;
    let products: Cache<Product, MsgPack> = engine
        .cache("products")
        .with_l1_ttl(Duration::from_secs(30))
        .with_l2_ttl(Duration::from_secs(300))
        .build()?;
    // Start clean when a shared Redis still holds values from an earlier run.
    products.clear_namespace().await?;

    let calls = Arc::new(AtomicU64::new(0));

    // 1. Cold: ten keys, one of which does not exist. One loader call for all of them.
    let page: Vec<String> = (1..=9).chain([5000]).map(|id| id.to_string()).collect();
    let c = calls.clone();
    let found = products
        .get_many_or_load(&page, move |ids| load_products(ids, c))
        .await?;
    // The answer is aligned with the keys asked for; absent rows are `None`.
    assert_eq!(found.len(), 10);
    assert_eq!(found[0].as_deref().map(|p| p.id), Some(1));
    assert!(found[9].is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // 2. Warm plus new: keys 5..=14. 5..=9 come from L1; only 10..=14 reach the loader, in one call.
    let next: Vec<String> = (5..=14).map(|id| id.to_string()).collect();
    let c = calls.clone();
    let found = products
        .get_many_or_load(&next, move |ids| {
            assert_eq!(
                ids.len(),
                5,
                "only the keys missing from both tiers are loaded"
            );
            load_products(ids, c)
        })
        .await?;
    assert!(found.iter().all(Option::is_some));
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // 3. Everything cached, including the absence of 5000: no loader call at all.
    let c = calls.clone();
    products
        .get_many_or_load(&page, move |ids| load_products(ids, c))
        .await?;
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // `get_many` reads both tiers without loading: one L2 round trip for all L1 misses.
    let cached = products.get_many(&["1", "14", "999"]).await?;
    assert_eq!(
        cached.iter().map(Option::is_some).collect::<Vec<_>>(),
        [true, true, false]
    );

    eprintln!(
        "get_many_or_load: 3 batch reads of 10 keys -> {} loader calls; stats {:?}",
        calls.load(Ordering::SeqCst),
        products.stats()
    );
    Ok(())
}
