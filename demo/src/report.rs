//! The results table (stdout).

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::load::{merge, Outcome};
use crate::service::Stats;

/// `12345` -> `12,345`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * part as f64 / whole as f64)
    }
}

/// The `p`-quantile (nearest rank, to 3 significant digits) of latencies in microseconds,
/// in milliseconds.
pub fn quantile(h: &Histogram<u64>, p: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(p) as f64 / 1000.0)
}

/// Both histograms in one.
pub fn both(h: &[Histogram<u64>; 2]) -> Histogram<u64> {
    let mut all = h[0].clone();
    merge(&mut all, &h[1]);
    all
}

fn p50_p99(h: &Histogram<u64>) -> String {
    match (quantile(h, 0.50), quantile(h, 0.99)) {
        (Some(a), Some(b)) => format!("{a:.2} / {b:.2} ms"),
        _ => "-".into(),
    }
}

/// The run as a whole, for the table's header.
pub struct Header<'a> {
    pub l2: &'a str,
    pub database: &'a str,
    pub load: &'a str,
}

pub fn print(header: &Header<'_>, stats: &[Stats; 2], out: &Outcome) {
    println!();
    println!("tiercache demo: two service instances, each with its own L1, sharing one L2");
    println!("  L2        {}", header.l2);
    println!("  database  {}", header.database);
    println!("  load      {}", header.load);
    println!();

    let [a, b] = stats;
    let row = |name: &str, va: String, vb: String, total: String| {
        println!("  {name:<34}{va:>18}{vb:>18}{total:>18}");
    };
    let sum = |f: fn(&Stats) -> u64| f(a) + f(b);
    let num = |f: fn(&Stats) -> u64| (thousands(f(a)), thousands(f(b)), thousands(f(a) + f(b)));
    row(
        "",
        format!("instance {}", a.instance),
        format!("instance {}", b.instance),
        "total".into(),
    );
    let (x, y, t) = num(|s| s.reads + s.writes);
    row("requests", x, y, t);
    let (x, y, t) = num(|s| s.reads);
    row("  reads   GET /accounts/{id}", x, y, t);
    let (x, y, t) = num(|s| s.writes);
    row("  writes  PUT (write-through)", x, y, t);
    row(
        "L1 hit ratio (of reads)",
        pct(a.l1_hits, a.l1_hits + a.l1_misses),
        pct(b.l1_hits, b.l1_hits + b.l1_misses),
        pct(sum(|s| s.l1_hits), sum(|s| s.l1_hits + s.l1_misses)),
    );
    row(
        "L2 hit ratio (of L2 lookups)",
        pct(a.l2_hits, a.l2_hits + a.l2_misses),
        pct(b.l2_hits, b.l2_hits + b.l2_misses),
        pct(sum(|s| s.l2_hits), sum(|s| s.l2_hits + s.l2_misses)),
    );
    let (x, y, t) = num(|s| s.loader_calls);
    row("loader calls (= database SELECTs)", x, y, t);
    row(
        "reads answered without the database",
        pct(a.reads.saturating_sub(a.loader_calls), a.reads),
        pct(b.reads.saturating_sub(b.loader_calls), b.reads),
        pct(
            sum(|s| s.reads).saturating_sub(sum(|s| s.loader_calls)),
            sum(|s| s.reads),
        ),
    );
    let (x, y, t) = num(|s| s.coalesced + s.lease_waits);
    row("loads joined (coalesced, leases)", x, y, t);
    let all_reads = both(&out.latencies.reads);
    let all_writes = both(&out.latencies.writes);
    row(
        "read latency  p50 / p99",
        p50_p99(&out.latencies.reads[0]),
        p50_p99(&out.latencies.reads[1]),
        p50_p99(&all_reads),
    );
    row(
        "write latency p50 / p99",
        p50_p99(&out.latencies.writes[0]),
        p50_p99(&out.latencies.writes[1]),
        p50_p99(&all_writes),
    );
    let (x, y, t) = num(|s| s.invalidations_sent);
    row("invalidations sent (keys)", x, y, t);
    let (x, y, t) = num(|s| s.invalidations_received);
    row("invalidations received (keys)", x, y, t);
    let (x, y, t) = num(|s| s.invalidations_lost);
    row("invalidation losses detected", x, y, t);
    let stale = |v: &[u64; 2]| (thousands(v[0]), thousands(v[1]), thousands(v[0] + v[1]));
    let (x, y, t) = stale(&out.stale_same_instance);
    row("stale reads, on the writer", x, y, t);
    let (x, y, t) = stale(&out.stale_other_instance);
    row("stale reads, on the other instance", x, y, t);
    let [ma, mb] = out.max_stale_age;
    row(
        "  longest stale window after a write",
        ms(ma),
        ms(mb),
        ms(ma.max(mb)),
    );
    let (x, y, t) = num(|s| s.errors);
    row("errors (HTTP 5xx)", x, y, t);
    println!();

    let same: u64 = out.stale_same_instance.iter().sum();
    let other: u64 = out.stale_other_instance.iter().sum();
    let writes = sum(|s| s.writes);
    if same + other == 0 {
        println!(
            "  coherence: every read returned the newest value acknowledged before it was sent \
             ({} writes, reads on both instances)",
            thousands(writes)
        );
    } else {
        let [ma, mb] = out.max_stale_age;
        println!(
            "  coherence: {} read(s) of {} ({}) returned the previous value, none later than {} \
             after the write was acknowledged.",
            thousands(same + other),
            thousands(sum(|s| s.reads)),
            pct(same + other, sum(|s| s.reads)),
            ms(ma.max(mb))
        );
        if other > 0 {
            println!(
                "             Why: a PUT returns once the database, L2 and the writer's own L1 hold the \
                 new value; the other\n             instance's L1 copy is dropped when the \
                 invalidation arrives: published right after the\n             write (batched with \
                 any writes queued meanwhile) and delivered asynchronously over {}. A read that reaches\n             \
                 the other instance inside that window still gets the old copy. The window is \
                 the bus delay\n             (milliseconds here, on 2 cores shared by Redis, both \
                 servers and 32 clients), not the TTL.",
                if header.l2.starts_with("Redis") {
                    "Redis pub/sub"
                } else {
                    "the in-process bus"
                }
            );
        }
        if same > 0 {
            println!(
                "             !! {} stale read(s) on the writing instance itself: that should \
                 not happen.",
                thousands(same)
            );
        }
    }
    let sql = sum(|s| s.db_read_selects + s.db_write_selects + s.db_updates);
    println!(
        "  database:  {} queries in all: {} SELECTs by loaders, {} SELECTs + {} UPDATEs by writes",
        thousands(sql),
        thousands(sum(|s| s.db_read_selects)),
        thousands(sum(|s| s.db_write_selects)),
        thousands(sum(|s| s.db_updates)),
    );
    println!(
        "  L1:        {} + {} entries ({} + {} KiB)",
        thousands(a.l1_entries),
        thousands(b.l1_entries),
        thousands(a.l1_bytes / 1024),
        thousands(b.l1_bytes / 1024)
    );
    if out.errors > 0 {
        println!(
            "  client errors: {} (first: {})",
            thousands(out.errors),
            out.first_error.as_deref().unwrap_or("?")
        );
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
