//! The end-to-end demo behind `cargo xtask demo`.
//!
//! Two instances of an accounts service (axum, on free ports of 127.0.0.1) each have their
//! own tiercache engine (own L1) and share one L2 (Redis, or with `--embedded-l2` an
//! in-process store) and the invalidation bus. Behind both sits an embedded SQLite database
//! of 100,000 accounts. A built-in load generator sends zipf-distributed reads and writes over
//! HTTP, alternating between the instances, checks that no read goes back in time after a
//! write was acknowledged, and prints a table: requests, hit ratios per tier, loader calls,
//! latencies, invalidations, stale reads. Each instance serves `/metrics` (Prometheus) and
//! `/stats` (JSON); `--serve` keeps them up after the run.
//!
//! Before that run, the same load (same requests, mix, key distribution, concurrency and
//! seed) goes to a pair of instances of the same service with the cache off, where every read
//! is a database query; a second table puts both runs side by side (database queries,
//! reads/s, read p50 and p99, ratios) and an SVG chart of them is written
//! (`target/demo/cache-off-vs-on.svg` by default, `--chart PATH`). `--no-baseline` skips it.
//!
//! Routes: `GET /accounts/{id}` (read through L1, L2, SQLite), `PUT /accounts/{id}` with
//! `{"deposit_cents": N}` (write-through: SQLite, then L2 and L1, then the other instance's
//! L1 is invalidated), `GET /metrics`, `GET /stats`.

// This is a program, not library code: its results table goes to stdout.
#![allow(clippy::print_stdout)]

mod args;
mod chart;
mod compare;
mod db;
mod load;
mod report;
mod service;

use std::process::ExitCode;
use std::sync::Arc;

use cache_tiered::cache_metrics::metrics_exporter_prometheus::PrometheusHandle;
use cache_tiered::{MemoryBus, MemoryStore};
use hyper::Method;

use crate::args::{L2Choice, Parsed};
use crate::compare::{Comparison, RunFigures};
use crate::db::{BoxError, Db, DbFile, PgSource};
use crate::report::thousands;
use crate::service::{Instance, L2Setup, Mode, Stats};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match args::parse(
        &argv,
        std::env::var("REDIS_URL").ok(),
        std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from),
    ) {
        Ok(Parsed::Run(a)) => a,
        Ok(Parsed::Help) => {
            eprintln!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(url) = &args.database_url {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            let scheme = url.split(':').next().unwrap_or(url);
            eprintln!(
                "demo: --database-url {scheme}://…: only postgres:// (or postgresql://) URLs are \
                 supported; without --database-url the demo uses its embedded SQLite database."
            );
            return ExitCode::from(2);
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C drops the run (and so the temporary database) instead of killing the process.
    let serve = args.serve;
    let result = rt.block_on(async {
        tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => {
                if serve {
                    eprintln!("demo: stopped");
                    Ok(true)
                } else {
                    Err("interrupted".into())
                }
            }
        }
    });
    // Background tasks (bus, gauges, idle connections) need no goodbye.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The URL without its user and password (`redis://***@host:port/`).
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &url[at..]),
        _ => url.to_owned(),
    }
}

/// Runs the demo; `Ok(false)` when requests failed.
async fn run(args: args::Args) -> Result<bool, BoxError> {
    // The process-wide Prometheus recorder, installed before any cache is built.
    let metrics = cache_tiered::cache_metrics::install_recorder_only()?;

    let (l2, l2_label) = match &args.l2 {
        L2Choice::Redis(url) => (
            L2Setup::Redis(url.clone()),
            format!(
                "Redis at {}, shared by both instances; invalidations over Redis pub/sub",
                redact(url)
            ),
        ),
        L2Choice::Embedded { asked } => (
            L2Setup::Embedded {
                store: Arc::new(MemoryStore::new()),
                bus: MemoryBus::new(),
            },
            format!(
                "EMBEDDED in-process L2 (not Redis{}): both instances share one in-memory store \
                 and bus",
                if *asked {
                    ""
                } else {
                    "; no --redis-url or REDIS_URL given"
                }
            ),
        ),
    };
    eprintln!("demo: L2 = {l2_label}");

    let (file, pg) = match &args.database_url {
        Some(url) => {
            eprintln!(
                "demo: creating a PostgreSQL table ({} rows) at {}…",
                thousands(args.rows),
                redact(url)
            );
            let (pg, took) = PgSource::create(url, args.rows).await?;
            eprintln!("demo: table {} ready in {}", pg.table, report::ms(took));
            (None, Some(pg))
        }
        None => {
            eprintln!(
                "demo: creating the SQLite database ({} rows)…",
                thousands(args.rows)
            );
            let (file, took) = DbFile::create(args.rows)?;
            eprintln!(
                "demo: {} ready in {}",
                file.path.display(),
                report::ms(took)
            );
            (Some(file), None)
        }
    };
    let setup = Setup {
        l2,
        l2_label: l2_label.clone(),
        file,
        pg,
        db_latency: args.db_latency,
        metrics,
    };

    if let L2Setup::Redis(url) = &setup.l2 {
        // A Redis given with --redis-url may hold accounts from an earlier run.
        let cleared = service::clear_redis(url).await?;
        if cleared > 0 {
            eprintln!(
                "demo: cleared {} cached accounts left by an earlier run",
                thousands(cleared)
            );
        }
    }
    let plan = |instances: [String; 2]| load::Plan {
        requests: args.requests,
        concurrency: args.concurrency,
        rows: args.rows,
        write_ratio: args.write_ratio,
        zipf_s: args.zipf_s,
        seed: args.seed,
        instances,
    };
    let load_line = format!(
        "{} requests, {} concurrent, zipf s={:?} over {} ids, {}% writes, seed {}",
        thousands(args.requests),
        args.concurrency,
        args.zipf_s,
        thousands(args.rows),
        args.write_ratio * 100.0,
        args.seed
    );

    // The baseline: the same load, the same service, no cache.
    let baseline = if args.baseline {
        let pair = Pair::start(Mode::CacheOff, &setup).await?;
        eprintln!(
            "demo: run 1 of 2, cache OFF (every read is a database query): instance a on {}, \
             instance b on {}",
            pair.urls[0], pair.urls[1]
        );
        eprintln!("demo: {load_line}…");
        let outcome = load::run(plan(pair.urls.clone())).await;
        let stats = pair.stats().await?;
        pair.stop().await;
        Some((stats, outcome))
    } else {
        None
    };

    let pair = Pair::start(Mode::CacheOn, &setup).await?;
    let urls = pair.urls.clone();
    eprintln!(
        "demo: {}cache ON: instance a on {}, instance b on {} (routes: /accounts/{{id}}, \
         /metrics, /stats)",
        if baseline.is_some() {
            "run 2 of 2, "
        } else {
            ""
        },
        urls[0],
        urls[1]
    );
    eprintln!("demo: {load_line}…");
    let outcome = load::run(plan(urls.clone())).await;

    // The table is built from what the instances report over HTTP, like a dashboard would.
    let stats = pair.stats().await?;
    let client = load::client(2);
    let (_, scrape) =
        load::call(&client, Method::GET, &format!("{}/metrics", urls[0]), None).await?;
    let scrape = String::from_utf8_lossy(&scrape);

    let engine_label = match &args.database_url {
        Some(url) => format!("PostgreSQL at {} (a table made for this run)", redact(url)),
        None => "SQLite (embedded, compiled in)".to_string(),
    };
    let database = format!(
        "{engine_label}, {} accounts, {} simulated network latency per query",
        thousands(args.rows),
        report::ms(args.db_latency)
    );
    let secs = outcome.elapsed.as_secs_f64();
    let load = format!(
        "{} requests, {} concurrent, zipf s={:?}, {}% writes, reads alternating a/b, writes to \
         the key's owner (id % 2): {:.1} s, {} req/s",
        thousands(args.requests),
        args.concurrency,
        args.zipf_s,
        args.write_ratio * 100.0,
        secs,
        thousands((args.requests as f64 / secs.max(1e-9)) as u64)
    );
    report::print(
        &report::Header {
            l2: &l2_label,
            database: &database,
            load: &load,
        },
        &stats,
        &outcome,
    );
    let series = scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    let sample = scrape.lines().find(|l| {
        l.starts_with("cache_operations_total")
            && l.contains(r#"operation="get""#)
            && l.contains(r#"tier="l1""#)
            && l.contains(r#"result="hit""#)
            && l.contains(r#"instance="a""#)
    });
    println!(
        "  /metrics:  {}/metrics serves {} series (Prometheus text), e.g.\n             {}",
        urls[0],
        series,
        sample.unwrap_or("(no cache_operations_total series found)")
    );
    println!();

    let mut failed = outcome.errors + stats.iter().map(|s| s.errors).sum::<u64>();
    match &baseline {
        Some((off_stats, off_outcome)) => {
            failed += off_outcome.errors + off_stats.iter().map(|s| s.errors).sum::<u64>();
            let comparison = Comparison {
                off: RunFigures::new(off_stats, off_outcome),
                on: RunFigures::new(&stats, &outcome),
            };
            compare::print(&comparison, &load_line);
            let notes = [
                format!("{load_line}; both runs through the same two HTTP instances' routes"),
                format!("L2: {l2_label}"),
                format!("database: {database}"),
                format!(
                    "machine: {} CPU(s) shared by the load generator, both instances{}",
                    std::thread::available_parallelism().map_or(0, |n| n.get()),
                    if matches!(setup.l2, L2Setup::Redis(_)) {
                        " and Redis"
                    } else {
                        ""
                    }
                ),
            ];
            let shown = std::env::current_dir()
                .map(|d| d.join(&args.chart))
                .unwrap_or_else(|_| args.chart.clone());
            let written = chart::svg(&comparison, &notes)
                .and_then(|svg| chart::write(&args.chart, &svg).map_err(|e| e.to_string()));
            match written {
                Ok(()) => println!(
                    "  chart:     {} (cache off vs on: reads/s, read p50 and p99, database \
                     queries)",
                    shown.display()
                ),
                Err(e) => {
                    println!("  chart:     NOT written to {}: {e}", shown.display());
                    failed += 1;
                }
            }
        }
        None => println!(
            "  (no cache-off run: --no-baseline; without it the same load first runs with the \
             cache off, for a side-by-side table and a chart)"
        ),
    }
    println!();

    if args.serve {
        eprintln!(
            "demo: serving until Ctrl-C:\n  curl {0}/accounts/1\n  curl -X PUT -H 'content-type: application/json' -d '{{\"deposit_cents\":100}}' {0}/accounts/1\n  curl {1}/accounts/1\n  curl {0}/stats\n  curl {0}/metrics",
            urls[0], urls[1]
        );
        // Until Ctrl-C, which `main` waits for.
        std::future::pending::<()>().await;
    }
    drop(client);
    pair.stop().await;
    let Setup { file, pg, .. } = setup;
    drop(file);
    if let Some(pg) = pg {
        if let Err(e) = pg.drop_table().await {
            eprintln!("demo: could not drop table {}: {e}", pg.table);
        }
    }
    Ok(failed == 0)
}

/// What both runs share: the L2, the database and the metrics recorder.
struct Setup {
    l2: L2Setup,
    l2_label: String,
    file: Option<DbFile>,
    pg: Option<PgSource>,
    db_latency: std::time::Duration,
    metrics: PrometheusHandle,
}

impl Setup {
    /// A new handle on the database (its own connections and query counters).
    async fn db(&self) -> Result<Arc<Db>, BoxError> {
        match (&self.file, &self.pg) {
            (Some(f), _) => Ok(Db::new(f, self.db_latency)),
            (None, Some(p)) => p.db(self.db_latency).await,
            (None, None) => Err("no database".into()),
        }
    }
}

/// Instances a and b, serving on free ports of 127.0.0.1.
struct Pair {
    instances: [Arc<Instance>; 2],
    urls: [String; 2],
    stop: tokio::sync::watch::Sender<bool>,
    servers: [tokio::task::JoinHandle<std::io::Result<()>>; 2],
}

impl Pair {
    async fn start(mode: Mode, setup: &Setup) -> Result<Pair, BoxError> {
        let start = |name| async move {
            Instance::start(
                name,
                mode,
                &setup.l2,
                setup.l2_label.clone(),
                setup.db().await?,
                setup.metrics.clone(),
            )
            .await
            .map_err(BoxError::from)
        };
        let a = start("a").await?;
        let b = start("b").await?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let (addr_a, server_a) = a.serve(stopped(stop_rx.clone())).await?;
        let (addr_b, server_b) = b.serve(stopped(stop_rx)).await?;
        Ok(Pair {
            instances: [a, b],
            urls: [format!("http://{addr_a}"), format!("http://{addr_b}")],
            stop,
            servers: [server_a, server_b],
        })
    }

    /// What each instance reports at `/stats`.
    async fn stats(&self) -> Result<[Stats; 2], BoxError> {
        let client = load::client(2);
        let mut stats: [Stats; 2] = Default::default();
        for (i, url) in self.urls.iter().enumerate() {
            let (_, body) = load::call(&client, Method::GET, &format!("{url}/stats"), None).await?;
            stats[i] = serde_json::from_slice(&body)?;
        }
        Ok(stats)
    }

    /// Stop serving and drop both instances (and their engines).
    async fn stop(self) {
        let _ = self.stop.send(true);
        for server in self.servers {
            if let Ok(Err(e)) = server.await {
                eprintln!("demo: server error: {e}");
            }
        }
        drop(self.instances);
    }
}
