//! Quick start: a typed cache in front of a (pretend) database.
//!
//! Run with a Redis URL (`cargo xtask redis` starts a throwaway one):
//! `REDIS_URL=redis://127.0.0.1:6379/ cargo run -p cache-tiered --example quickstart`.
//! Without `REDIS_URL` it runs on the in-process L2.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cache_tiered::{Cache, MsgPack};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Product {
    id: u64,
    name: String,
    price_cents: u64,
}

/// Stands in for a database query.
async fn load_product(id: String, queries: Arc<AtomicU64>) -> Result<Product, std::io::Error> {
    queries.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let id: u64 = id
        .parse()
        .map_err(|_| std::io::Error::other("product ids are numbers"))?;
    Ok(Product {
        id,
        name: format!("product {id}"),
        price_cents: 100 * id,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let builder = cache_tiered::builder("quickstart").with_l1_capacity_bytes(16 * 1024 * 1024);
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
    products.invalidate("42").await?;

    let queries = Arc::new(AtomicU64::new(0));
    // 100 concurrent requests for the same cold key: one database query.
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let products = products.clone();
        let q = queries.clone();
        tasks.push(tokio::spawn(async move {
            products
                .get_or_load("42", move |id| load_product(id, q))
                .await
        }));
    }
    for t in tasks {
        let p = t.await??;
        assert_eq!(p.id, 42);
    }
    assert_eq!(queries.load(Ordering::SeqCst), 1);

    // Now an L1 hit: no network, no decoding.
    let p = products.get("42").await?;
    assert_eq!(p.as_deref().map(|p| p.price_cents), Some(4200));

    // Writes go through both tiers.
    products
        .set(
            "42",
            Product {
                id: 42,
                name: "renamed".into(),
                price_cents: 999,
            },
        )
        .await?;
    let p = products.get("42").await?;
    assert_eq!(p.as_deref().map(|p| p.name.as_str()), Some("renamed"));

    eprintln!(
        "quickstart: 100 concurrent reads -> {} database query; stats {:?}",
        queries.load(Ordering::SeqCst),
        products.stats()
    );
    Ok(())
}
