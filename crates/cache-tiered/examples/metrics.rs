//! Metrics (feature `prometheus`): the `MetricsObserver` reports every cache operation through
//! the `metrics` facade; the Prometheus recorder renders them as text for a `/metrics` route.
//!
//! `cargo run -p cache-tiered --features prometheus --example metrics` (with `REDIS_URL` set it
//! uses Redis, otherwise the in-process L2). Series and alerts: `docs/observability.md`.

use std::sync::Arc;
use std::time::Duration;

use cache_tiered::cache_metrics::{self, MetricsObserver};
use cache_tiered::{Cache, MsgPack};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. The recorder first: the observer binds its series when each cache is built.
    //    `install_recorder_only` leaves serving to you (`handle.render()` in your /metrics
    //    route); `install_prometheus(addr)` also serves it on its own port.
    let prometheus = cache_metrics::install_recorder_only()?;

    // 2. The observer goes to the engine; the label tells this service's series apart.
    let builder = cache_tiered::builder("example-metrics").with_observer(Arc::new(
        MetricsObserver::new().with_label("service", "catalog"),
    ));
    let builder = match std::env::var("REDIS_URL") {
        Ok(url) => builder.with_redis_url(url),
        Err(_) => builder.with_memory_l2(),
    };
    let engine = builder.build().await?;
    let prices: Cache<u64, MsgPack> = engine
        .cache("prices")
        .with_l1_ttl(Duration::from_secs(30))
        .build()?;
    prices.clear_namespace().await?;

    // 3. Optionally, the shared L1's size as gauges, polled every second.
    let _l1_gauges = cache_metrics::spawn_l1_gauges(&engine, Duration::from_secs(1))?;

    // Some traffic: 10 keys loaded once, then read 10 times each.
    for round in 0..10 {
        for id in 0..10u64 {
            let price = prices
                .get_or_load(&id.to_string(), move |_| async move {
                    Ok::<_, std::io::Error>(id * 100)
                })
                .await?;
            assert_eq!(*price, id * 100, "round {round}");
        }
    }

    // 4. What a Prometheus scrape of your /metrics route returns.
    let text = prometheus.render();
    let interesting: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("cache_operations_total") && !l.ends_with(" 0"))
        .collect();
    for line in &interesting {
        eprintln!("  {line}");
    }
    // 100 reads, 10 loads: the other 90 are hits, from L1 (or, for a key whose L1 copy was
    // flushed when the bus subscribed to the new namespace, from L2).
    let hits: u64 = interesting
        .iter()
        .filter(|l| l.contains(r#"operation="get""#) && l.contains(r#"result="hit""#))
        .filter(|l| l.contains(r#"tier="l1""#) || l.contains(r#"tier="l2""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(hits, 90, "90 hits are recorded:\n{text}");
    eprintln!(
        "metrics: {} lines of Prometheus text, {} non-zero operation series (90 hits, 10 loads)",
        text.lines().count(),
        interesting.len()
    );
    Ok(())
}
