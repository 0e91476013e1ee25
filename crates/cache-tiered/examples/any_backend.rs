//! The same application code on any backend: the URL in `TIERCACHE_L2_URL` picks it, the
//! compiled-in features allow it.
//!
//! ```text
//! TIERCACHE_L2_URL=memory://                                   cargo run -p cache-tiered --example any_backend
//! TIERCACHE_L2_URL=redis://127.0.0.1:6379/                     cargo run -p cache-tiered --example any_backend
//! TIERCACHE_L2_URL=redis+cluster://127.0.0.1:7000,127.0.0.1:7001 \
//!     cargo run -p cache-tiered --features cluster --example any_backend
//! TIERCACHE_L2_URL=redis+sentinel://127.0.0.1:26379/mymaster  \
//!     cargo run -p cache-tiered --features sentinel --example any_backend
//! ```
//!
//! A scheme whose feature is not compiled in stops at `build` with an error that names the
//! feature. Unset, the example uses `memory://`.

use std::time::Duration;

use cache_tiered::prelude::*;
use cache_tiered::L2_URL_ENV;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Order {
    id: u64,
    total_cents: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var(L2_URL_ENV).is_err() {
        // Only for this example: a service would rather fail than run without its L2.
        std::env::set_var(L2_URL_ENV, "memory://");
    }
    // Everything below is independent of the backend.
    let engine = cache_tiered::builder("any-backend")
        .with_l2_from_env()
        .build()
        .await?;
    let orders: Cache<Order, MsgPack> = engine
        .cache("orders")
        .with_l2_ttl(Duration::from_secs(60))
        .build()?;
    orders.invalidate("7").await?;
    let order = orders
        .get_or_load("7", |id| async move {
            Ok::<_, std::io::Error>(Order {
                id: id.parse().unwrap_or(0),
                total_cents: 1999,
            })
        })
        .await?;
    assert_eq!(order.total_cents, 1999);
    orders
        .set(
            "7",
            Order {
                id: 7,
                total_cents: 2499,
            },
        )
        .await?;
    orders.invalidate_local("7");
    let reread = orders.get("7").await?.ok_or("the L2 lost the order")?;
    assert_eq!(reread.total_cents, 2499);
    let backend = engine.remote().map_or("none", |s| s.kind());
    eprintln!("any_backend: L2 {backend}: load, set, and a read from L2 agree");
    engine.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
