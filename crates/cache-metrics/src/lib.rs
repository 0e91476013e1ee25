//! # cache-metrics
//!
//! Metrics for [cache-tiered](https://docs.rs/cache-tiered) (tiercache) through the [`metrics`] facade: a
//! [`MetricsObserver`] for the engine, L1 gauges, and (feature `prometheus`) a Prometheus
//! exporter with the right histogram buckets.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use cache_metrics::MetricsObserver;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! # rt.block_on(async {
//! // 1. Install a recorder first: handles are bound when the caches are built.
//! //    With the `prometheus` feature: `cache_metrics::install_prometheus(addr)?`.
//! let handle = cache_metrics::install_recorder_only()?;
//!
//! // 2. Hand the observer to the engine; every typed cache registers its series once.
//! let engine = cache_tiered::builder("app")
//!     .with_memory_l2()
//!     .with_observer(Arc::new(MetricsObserver::new()))
//!     .build()
//!     .await?;
//! let users = engine.cache::<String, cache_tiered::MsgPack>("users").build()?;
//!
//! // 3. Optionally, poll the shared L1's size into gauges (stops when `_l1` is dropped).
//! let _l1 = cache_metrics::spawn_l1_gauges(&engine, Duration::from_secs(5))?;
//!
//! users.get_or_load("42", |_| async { Ok::<_, std::io::Error>("Ada".to_string()) }).await?;
//! users.get("42").await?;
//! let text = handle.render();
//! assert!(text.contains(r#"cache_operations_total{cache="users",operation="get",tier="l1",result="hit"} 1"#));
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # })
//! # }
//! ```
//!
//! ## Metrics
//!
//! Per typed cache (label `cache` = its namespace), every series registered when the cache is
//! built, so each one is exported (at 0) from the start:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `cache_operations_total` | counter | `cache`, `operation`, `tier`, `result` |
//! | `cache_operation_seconds` | histogram | `cache`, `operation` (`get`, `set`), `tier` (`l2`) |
//! | `cache_loader_seconds` | histogram | `cache` |
//! | `cache_l2_corrupt_total` | counter | `cache` |
//! | `cache_l2_errors_total` | counter | `cache`, `kind` ([`names::ERROR_KINDS`]) |
//! | `cache_coalesced_waiters_total` | counter | `cache` |
//! | `cache_early_refreshes_total` | counter | `cache` |
//! | `cache_leases_total` | counter | `cache`, `outcome` (`acquired`, `waited`) |
//! | `cache_invalidations_total` | counter (keys) | `cache`, `direction` (`sent`, `received`) |
//! | `cache_invalidations_lost_total` | counter | `cache` |
//! | `cache_bus_reconnects_total` | counter | `cache` |
//! | `cache_write_behind_queue_depth` | gauge | `cache` |
//!
//! Per engine:
//!
//! - `cache_breaker_open` (gauge): the engine's open circuit breakers (L2 store, bus
//!   publisher), from [`Observer::on_engine_event`](cache_core::Observer::on_engine_event);
//!   no `cache` label. One observer per engine, with
//!   [`MetricsObserver::with_label`]`("engine", ..)`, when a process has several.
//! - label `engine` = its key prefix, from [`spawn_l1_gauges`] or [`L1Gauges`]:
//!   `cache_entries`, `cache_bytes`, `cache_capacity_bytes` (gauges) and
//!   `cache_evictions_total`.
//!
//! Labels added with [`MetricsObserver::with_label`] go on every series of the observer.
//!
//! ## Events
//!
//! How each [`CacheEvent`](cache_core::CacheEvent) is recorded. `ops{o,t,r}` stands for
//! `cache_operations_total{operation=o,tier=t,result=r}`, `secs{o,t}` for
//! `cache_operation_seconds{operation=o,tier=t}`. For writes and loads, `result="hit"` means
//! "done".
//!
//! | event | recorded as |
//! |---|---|
//! | `L1Hit` | `ops{get,l1,hit}` |
//! | `L1Miss` | `ops{get,l1,miss}` |
//! | `StaleServed` | `ops{get,l1,stale}` |
//! | `L2Hit { latency }` | `ops{get,l2,hit}`, `secs{get,l2}` |
//! | `L2Miss { latency }` | `ops{get,l2,miss}`, `secs{get,l2}` |
//! | `L2Corrupt` | `ops{get,l2,error}`, `cache_l2_corrupt_total` |
//! | `L2Error { op, kind }` | `ops{get\|set\|delete,l2,error}` (op `Get` → get, `Delete` → delete, `Set` and `Lease` → set), `cache_l2_errors_total{kind}` |
//! | `L2Set { latency }` | `ops{set,l2,hit}`, `secs{set,l2}` |
//! | `Set` | `ops{set,l1,hit}` (a `set` call: L1 always takes the value) |
//! | `Invalidate` | `ops{delete,l1,hit}` (an `invalidate` call: L1 dropped first) |
//! | `Load { duration, ok }` | `ops{load,loader,hit\|error}`, `cache_loader_seconds` |
//! | `EarlyRefresh` | `ops{refresh,loader,hit}`, `cache_early_refreshes_total` |
//! | `Coalesced` | `cache_coalesced_waiters_total` |
//! | `LeaseAcquired` / `LeaseWait` | `cache_leases_total{outcome=acquired\|waited}` |
//! | `InvalidationsSent { keys }` / `InvalidationsReceived { keys }` | `cache_invalidations_total{direction=sent\|received}` += keys |
//! | `InvalidationsLost` | `cache_invalidations_lost_total` |
//! | `BusReconnect` | `cache_bus_reconnects_total` |
//! | `Breaker { open }` (engine event, or cache event) | `cache_breaker_open` +1 / −1 |
//! | `Gauge { name: "write_behind_queue_depth", value }` (write-behind) | `cache_write_behind_queue_depth` = value |
//! | `Gauge { name, value }` (any other) | `cache_{name}` = value |
//! | anything newer | ignored |
//!
//! L1 hits carry no latency (timing a ~50 ns hit would cost more than the hit), so
//! `cache_operation_seconds` covers L2 only; the name `cache_l1_operation_seconds` and its
//! finer buckets ([`names::L1_BUCKETS`]) are reserved for it.
//!
//! Hit ratio of a cache: `ops{get,*,hit}` (L1 + L2 hits) over `ops{get,l1,hit|miss}` (lookups).
//!
//! ## Features
//!
//! - `prometheus`: `install_prometheus` (HTTP scrape endpoint; pulls hyper's server, no
//!   TLS), `install_recorder_only` and `prometheus_builder`.
#![warn(missing_docs)]

mod l1;
pub mod names;
mod observer;
#[cfg(feature = "prometheus")]
mod prometheus;
mod registrar;

pub use l1::{record_l1, spawn_l1_gauges, L1GaugeTask, L1Gauges};
pub use observer::{CacheMetrics, MetricsObserver};
#[cfg(feature = "prometheus")]
pub use prometheus::{install_prometheus, install_recorder_only, prometheus_builder};

/// The `metrics` facade this crate records through.
pub use metrics;
/// The Prometheus exporter (feature `prometheus`), for its `PrometheusHandle` and builder.
#[cfg(feature = "prometheus")]
pub use metrics_exporter_prometheus;
