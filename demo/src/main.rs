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
//! Routes: `GET /accounts/{id}` (read through L1, L2, SQLite), `PUT /accounts/{id}` with
//! `{"deposit_cents": N}` (write-through: SQLite, then L2 and L1, then the other instance's
//! L1 is invalidated), `GET /metrics`, `GET /stats`.

// This is a program, not library code: its results table goes to stdout.
#![allow(clippy::print_stdout)]

mod args;
mod db;
mod load;
mod report;
mod service;

use std::process::ExitCode;
use std::sync::Arc;

use hyper::Method;
use tiercache::{MemoryBus, MemoryStore};

use crate::args::{L2Choice, Parsed};
use crate::db::{BoxError, Db, DbFile, PgSource};
use crate::report::thousands;
use crate::service::{Instance, L2Setup, Stats};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match args::parse(&argv, std::env::var("REDIS_URL").ok()) {
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
    let metrics = tiercache::cache_metrics::install_recorder_only()?;

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
    let open_db = |latency| {
        let file = &file;
        let pg = &pg;
        async move {
            match (file, pg) {
                (Some(f), _) => Ok::<_, BoxError>(Db::new(f, latency)),
                (None, Some(p)) => p.db(latency).await,
                (None, None) => Err("no database".into()),
            }
        }
    };

    if let L2Setup::Redis(url) = &l2 {
        // A Redis given with --redis-url may hold accounts from an earlier run.
        let cleared = service::clear_redis(url).await?;
        if cleared > 0 {
            eprintln!(
                "demo: cleared {} cached accounts left by an earlier run",
                thousands(cleared)
            );
        }
    }
    let a = Instance::start(
        "a",
        &l2,
        l2_label.clone(),
        open_db(args.db_latency).await?,
        metrics.clone(),
    )
    .await?;
    let b = Instance::start(
        "b",
        &l2,
        l2_label.clone(),
        open_db(args.db_latency).await?,
        metrics.clone(),
    )
    .await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let (addr_a, server_a) = a.serve(stop(stop_rx.clone())).await?;
    let (addr_b, server_b) = b.serve(stop(stop_rx)).await?;
    let urls = [format!("http://{addr_a}"), format!("http://{addr_b}")];
    eprintln!(
        "demo: instance a on {}, instance b on {} (routes: /accounts/{{id}}, /metrics, /stats)",
        urls[0], urls[1]
    );
    eprintln!(
        "demo: {} requests, {} concurrent, zipf s={:?} over {} ids, {}% writes…",
        thousands(args.requests),
        args.concurrency,
        args.zipf_s,
        thousands(args.rows),
        args.write_ratio * 100.0
    );

    let outcome = load::run(load::Plan {
        requests: args.requests,
        concurrency: args.concurrency,
        rows: args.rows,
        write_ratio: args.write_ratio,
        zipf_s: args.zipf_s,
        seed: args.seed,
        instances: urls.clone(),
    })
    .await;

    // The table is built from what the instances report over HTTP, like a dashboard would.
    let client = load::client(2);
    let mut stats: [Stats; 2] = Default::default();
    for (i, url) in urls.iter().enumerate() {
        let (_, body) = load::call(&client, Method::GET, &format!("{url}/stats"), None).await?;
        stats[i] = serde_json::from_slice(&body)?;
    }
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

    if args.serve {
        eprintln!(
            "demo: serving until Ctrl-C:\n  curl {0}/accounts/1\n  curl -X PUT -H 'content-type: application/json' -d '{{\"deposit_cents\":100}}' {0}/accounts/1\n  curl {1}/accounts/1\n  curl {0}/stats\n  curl {0}/metrics",
            urls[0], urls[1]
        );
        // Until Ctrl-C, which `main` waits for.
        std::future::pending::<()>().await;
    }
    drop(client);
    let _ = stop_tx.send(true);
    for server in [server_a, server_b] {
        if let Ok(Err(e)) = server.await {
            eprintln!("demo: server error: {e}");
        }
    }
    drop((a, b));
    drop(file);
    if let Some(pg) = pg {
        if let Err(e) = pg.drop_table().await {
            eprintln!("demo: could not drop table {}: {e}", pg.table);
        }
    }
    let failed = outcome.errors + stats.iter().map(|s| s.errors).sum::<u64>();
    Ok(failed == 0)
}
