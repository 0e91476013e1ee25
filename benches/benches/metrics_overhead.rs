//! The cost of metrics on the L1 hit path: the same L1 hit with the `cache-metrics` observer
//! recording into an installed Prometheus recorder, and with no observer (the engine's no-op
//! default). Target: metrics on ≤ 1.3× metrics off.
//!
//! Two calls are measured:
//!
//! - `get_local`: `Cache::get_local(key)`, the synchronous L1 answer;
//! - `get (.await, ready)`: `Cache::get(key)` polled once with a no-op waker.
//!
//! Criterion measures each subject (printed for humans). The figures written to the report
//! come from a second, interleaved phase: rounds of `BATCH` calls, metrics off then on (the
//! order flips every round), so machine drift hits both alike; each subject's figure is the
//! median over rounds of ns/op, and `paired_ratio_p50` is the median of the per-round ratios.
//! A difference of a few ns on a ~50 ns call is otherwise lost in the drift between two
//! criterion runs made one after the other.
//!
//! Both engines are built with the facade and the in-process L2 in this one process; the
//! metrics-on engine gets `MetricsObserver::new()` after `cache_metrics::install_recorder_only()`
//! installed the global Prometheus recorder (so each hit is one atomic add on a pre-registered
//! counter, as in production). After the run, the rendered counters must have grown by at
//! least the number of metrics-on hits: the observer really recorded.

use std::future::Future;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use benches::{sample_user, Record, Role, Samples, TargetKind, User};
use cache_metrics::MetricsObserver;
use cache_tiered::{Cache, MsgPack};
use criterion::Criterion;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const KEY: &str = "user:42";
const NAMESPACE: &str = "mo";
const MAX_RATIO: f64 = 1.3;

/// Poll a future once with a no-op waker: `Some` when it was ready.
fn poll_once<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// (iterations, elapsed) of every call criterion made to one routine, warm-up included.
type Calls = Arc<Mutex<Vec<(u64, Duration)>>>;

fn record(calls: &Calls, iters: u64, elapsed: Duration) {
    if let Ok(mut c) = calls.lock() {
        c.push((iters, elapsed));
    }
}

/// Time `iters` runs of `op`.
fn timed(iters: u64, mut op: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        op();
    }
    start.elapsed()
}

/// One criterion routine: its workload and call, and what criterion asked of it.
struct Subject {
    workload: &'static str,
    call: &'static str,
    calls: Calls,
}

async fn build_cache(
    prefix: &str,
    observer: Option<MetricsObserver>,
) -> Result<Cache<User, MsgPack>, BoxError> {
    let day = Duration::from_secs(24 * 3600);
    let mut b = cache_tiered::builder(prefix).with_memory_l2();
    if let Some(o) = observer {
        b = b.with_observer(Arc::new(o));
    }
    let engine = b.build().await?;
    let cache = engine
        .cache::<User, MsgPack>(NAMESPACE)
        .with_l1_ttl(day)
        .with_l2_ttl(day)
        .build()?;
    cache.set(KEY, sample_user(42)).await?;
    if !matches!(cache.get_local(KEY), Some(Some(_))) {
        return Err("the value is not in L1 after set".into());
    }
    Ok(cache)
}

/// `cache_operations_total{cache="mo",operation="get",tier="l1",result="hit"}` in a scrape.
fn l1_hits(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("cache_operations_total{"))
        .filter(|l| {
            [
                "cache=\"mo\"",
                "operation=\"get\"",
                "tier=\"l1\"",
                "result=\"hit\"",
            ]
            .iter()
            .all(|p| l.contains(p))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn main() -> Result<(), BoxError> {
    let filters = benches::filters();
    let (warm_up, measurement, sample_size, resamples) = benches::criterion_timings();
    let mut c = Criterion::default()
        .warm_up_time(warm_up)
        .measurement_time(measurement)
        .sample_size(sample_size)
        .nresamples(resamples)
        .without_plots()
        .configure_from_args();

    // Before any cache is built: handles bind to the recorder current at build time.
    let prometheus = cache_metrics::install_recorder_only()?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (off, on) = rt.block_on(async {
        let off = build_cache("bench-off", None).await?;
        let on = build_cache("bench-on", Some(MetricsObserver::new())).await?;
        Ok::<_, BoxError>((off, on))
    })?;

    let mut subjects = Vec::new();
    let mut group = c.benchmark_group("metrics_overhead");
    let hits_before = l1_hits(&prometheus.render());
    let on_iters: Arc<Mutex<u64>> = Arc::new(Mutex::new(0));

    for (workload, call) in [
        ("metrics_overhead/get_local", "get_local"),
        ("metrics_overhead/get (.await, ready)", "get_await"),
    ] {
        if !benches::selected(&filters, workload) {
            continue;
        }
        for (cache, subject, observed) in [(&off, "metrics off", false), (&on, "metrics on", true)]
        {
            let s = Subject {
                workload,
                call,
                calls: Arc::new(Mutex::new(Vec::new())),
            };
            let log = Arc::clone(&s.calls);
            let counted = Arc::clone(&on_iters);
            let name = format!("{}/{call}", subject.replace(' ', "_"));
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let d = if call == "get_local" {
                        timed(iters, || {
                            black_box(cache.get_local(black_box(KEY)));
                        })
                    } else {
                        timed(iters, || {
                            black_box(poll_once(cache.get(black_box(KEY))));
                        })
                    };
                    record(&log, iters, d);
                    if observed {
                        if let Ok(mut n) = counted.lock() {
                            *n += iters;
                        }
                    }
                    d
                })
            });
            subjects.push(s);
        }
    }
    group.finish();
    c.final_summary();

    // The interleaved phase: the figures of the report.
    let (rounds, batch) = if benches::quick() {
        (150, 10_000)
    } else {
        (600, 20_000)
    };
    let mut records = Vec::new();
    let mut lines = Vec::new();
    let mut workloads: Vec<(&str, &str)> = Vec::new();
    for s in &subjects {
        if !workloads.iter().any(|(w, _)| *w == s.workload) {
            workloads.push((s.workload, s.call));
        }
    }
    for (workload, call) in workloads {
        let measured = subjects.iter().filter(|s| s.workload == workload).all(|s| {
            s.calls
                .lock()
                .map(|c| c.len() >= sample_size)
                .unwrap_or(false)
        });
        if !measured {
            continue; // --test, --list, or a filter: no real measurement
        }
        let run = |cache: &Cache<User, MsgPack>| {
            let d = if call == "get_local" {
                timed(batch, || {
                    black_box(cache.get_local(black_box(KEY)));
                })
            } else {
                timed(batch, || {
                    black_box(poll_once(cache.get(black_box(KEY))));
                })
            };
            d.as_nanos() as f64 / batch as f64
        };
        let (mut ns_off, mut ns_on, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let (a, b) = if round % 2 == 0 {
                let a = run(&off);
                (a, run(&on))
            } else {
                let b = run(&on);
                (run(&off), b)
            };
            ns_off.push(a);
            ns_on.push(b);
            ratios.push(b / a);
        }
        if let Ok(mut n) = on_iters.lock() {
            *n += rounds as u64 * batch;
        }
        let ratio = Samples::new(ratios).percentile(50.0);
        for (subject, role, label, ns) in [
            ("metrics off", Role::Peer, "tiercache, metrics off", ns_off),
            (
                "metrics on",
                Role::Tiercache,
                "tiercache, metrics on",
                ns_on,
            ),
        ] {
            let samples = Samples::new(ns);
            let p50 = samples.percentile(50.0);
            let mut r = Record::result(workload, subject, role, label, "ns_per_op")
                .num("ns_per_op", p50)
                .num("mean_ns", samples.mean())
                .num("ops_per_s", 1e9 / p50)
                .num("samples", rounds as f64)
                .num("iterations", (rounds as u64 * batch) as f64)
                .str(
                    "how",
                    "interleaved rounds of calls on one key (Arc<User> clone), off/on order \
                     flipped each round; median of per-round ns/op",
                );
            if role == Role::Tiercache {
                r = r.num("paired_ratio_p50", ratio);
            }
            records.push(r);
            lines.push(format!(
                "metrics_overhead: {subject:<12} {workload:<40} {p50:>8.1} ns/op"
            ));
        }
        lines.push(format!(
            "metrics_overhead: {:<12} {workload:<40} {ratio:>8.3}x (median of per-round on/off)",
            "ratio"
        ));
        records.push(Record::target(
            workload,
            "ns_per_op",
            "metrics off",
            TargetKind::MaxRatio,
            MAX_RATIO,
            "<= 1.3x metrics off",
        ));
    }

    // Both must still hit, and the metrics-on engine must have counted every hit it served.
    let still =
        matches!(off.get_local(KEY), Some(Some(_))) && matches!(on.get_local(KEY), Some(Some(_)));
    if !still {
        return Err("a subject stopped hitting during the bench".into());
    }
    let counted = l1_hits(&prometheus.render()) - hits_before;
    let served = on_iters.lock().map(|n| *n).unwrap_or(0) as f64;
    if counted < served {
        return Err(format!("metrics on: {served} hits served but only {counted} counted").into());
    }
    if records.is_empty() {
        return Ok(());
    }
    for l in &lines {
        eprintln!("{l}");
    }
    let path = benches::write_records("metrics_overhead", &records)?;
    eprintln!("metrics_overhead: wrote {}", path.display());
    Ok(())
}
