//! The Prometheus exporter (feature `prometheus`): a recorder with this crate's histogram
//! buckets, and its HTTP scrape endpoint.
//!
//! Histogram buckets are chosen by metric name (the exporter matches names, not labels):
//!
//! | metric | buckets (seconds) |
//! |---|---|
//! | `cache_operation_seconds` | [`OPERATION_BUCKETS`]: 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1 |
//! | `cache_l1_operation_seconds` | [`L1_BUCKETS`]: 100 ns .. 1 ms (reserved: nothing records L1 timings today) |
//! | `cache_loader_seconds` | [`LOADER_BUCKETS`]: 1 ms .. 10 s |
//!
//! Other histograms are rendered as summaries (the exporter's default).

use std::net::SocketAddr;

use cache_core::{Error, ErrorKind, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::names::{
    L1_BUCKETS, L1_OPERATION_SECONDS, LOADER_BUCKETS, LOADER_SECONDS, OPERATION_BUCKETS,
    OPERATION_SECONDS,
};

fn build_error(e: metrics_exporter_prometheus::BuildError) -> Error {
    Error::new(
        ErrorKind::InvalidConfig,
        format!("prometheus exporter: {e}"),
    )
    .with_source(e)
}

fn already_installed() -> Error {
    Error::new(
        ErrorKind::InvalidConfig,
        "a global metrics recorder is already installed (only one per process)",
    )
}

/// A [`PrometheusBuilder`] with this crate's histogram buckets, to customise (global labels,
/// idle timeouts) before installing it yourself.
pub fn prometheus_builder() -> Result<PrometheusBuilder> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(OPERATION_SECONDS.into()), &OPERATION_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(L1_OPERATION_SECONDS.into()), &L1_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(LOADER_SECONDS.into()), &LOADER_BUCKETS)
        })
        .map_err(build_error)
}

/// Install the Prometheus recorder globally and serve `GET` (any path) on `addr` with the
/// text exposition format. Returns a handle whose `render()` gives the same text.
///
/// The listener is bound before this returns (a busy address is an error here) and is served
/// from a background thread with its own single-threaded runtime, so it neither needs nor
/// disturbs the caller's runtime. Call it before building the caches (see
/// [`MetricsObserver`](crate::MetricsObserver)). Errors if a global recorder is already
/// installed.
pub fn install_prometheus(addr: SocketAddr) -> Result<PrometheusHandle> {
    let builder = prometheus_builder()?.with_http_listener(addr);
    // Everything runtime-related is built, used and dropped on the exporter's own thread
    // (a runtime must not be dropped inside the caller's async context on an error path).
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<PrometheusHandle>>(1);
    std::thread::Builder::new()
        .name("cache-metrics-exporter".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(Error::new(
                        ErrorKind::InvalidConfig,
                        "cannot start the exporter's runtime",
                    )
                    .with_source(e)));
                    return;
                }
            };
            // `build` binds the listener and spawns the recorder's upkeep task on `rt`.
            let built = {
                let _guard = rt.enter();
                builder.build()
            };
            let (recorder, exporter) = match built {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(build_error(e)));
                    return;
                }
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                let _ = tx.send(Err(already_installed()));
                return;
            }
            let _ = tx.send(Ok(handle));
            if let Err(e) = rt.block_on(exporter) {
                tracing::warn!(error = ?e, "the Prometheus scrape endpoint stopped");
            }
        })
        .map_err(|e| {
            Error::new(ErrorKind::InvalidConfig, "cannot start the exporter thread").with_source(e)
        })?;
    let handle = rx.recv().map_err(|_| {
        Error::new(
            ErrorKind::InvalidConfig,
            "the exporter thread ended before starting",
        )
    })??;
    tracing::info!(%addr, "Prometheus scrape endpoint listening");
    Ok(handle)
}

/// Install the Prometheus recorder globally without an HTTP listener: serve
/// `handle.render()` from your own `/metrics` route (or read it in tests).
///
/// No upkeep task runs: `render()` drains histogram samples itself, so scrape regularly, or
/// call `handle.run_upkeep()` from a timer if scrapes are rare. Errors if a global recorder is
/// already installed.
pub fn install_recorder_only() -> Result<PrometheusHandle> {
    prometheus_builder()?
        .install_recorder()
        .map_err(|e| match e {
            metrics_exporter_prometheus::BuildError::FailedToSetGlobalRecorder(_) => {
                already_installed()
            }
            e => build_error(e),
        })
}
