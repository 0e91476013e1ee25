//! The cache-off run beside the cache-on run: the figures of each, their ratios, and the
//! table that shows them (stdout).

use std::time::Duration;

use crate::load::Outcome;
use crate::report::{both, quantile, thousands};
use crate::service::Stats;

/// What one run of the load cost and how fast it went.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFigures {
    /// Requests answered (reads and writes).
    pub requests: u64,
    /// Reads answered.
    pub reads: u64,
    /// Every database query: SELECTs by reads and by writes, UPDATEs.
    pub db_queries: u64,
    /// The SELECTs run for reads (by the cache's loader, or by every read with the cache off).
    pub db_read_selects: u64,
    /// Reads answered per second of the run.
    pub reads_per_sec: f64,
    /// Read latency quantiles in milliseconds (`None` without reads).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The reads whose own request queried the database, and their p99.
    pub reads_from_database: u64,
    pub database_p99_ms: Option<f64>,
    /// The p99 of the other reads: answered by L1 or L2 (or by joining another's load).
    pub cache_p99_ms: Option<f64>,
    /// How long the load ran.
    pub elapsed: Duration,
}

impl RunFigures {
    /// The figures of a run, from what the instances report (`/stats`) and what the load
    /// generator measured.
    pub fn new(stats: &[Stats; 2], out: &Outcome) -> RunFigures {
        let reads = both(&out.latencies.reads);
        let from_database = &out.latencies.reads_from_database;
        // Every read from the database is among the reads, with the same value: the rest were
        // answered by the cache.
        let mut from_cache = reads.clone();
        let from_cache = from_cache.subtract(from_database).ok().map(|()| from_cache);
        let writes: u64 = out.latencies.writes.iter().map(|h| h.len()).sum();
        let secs = out.elapsed.as_secs_f64();
        RunFigures {
            requests: reads.len() + writes,
            reads: reads.len(),
            db_queries: stats
                .iter()
                .map(|s| s.db_read_selects + s.db_write_selects + s.db_updates)
                .sum(),
            db_read_selects: stats.iter().map(|s| s.db_read_selects).sum(),
            reads_per_sec: if secs > 0.0 {
                reads.len() as f64 / secs
            } else {
                0.0
            },
            p50_ms: quantile(&reads, 0.50),
            p99_ms: quantile(&reads, 0.99),
            reads_from_database: from_database.len(),
            database_p99_ms: quantile(from_database, 0.99),
            cache_p99_ms: from_cache.and_then(|h| quantile(&h, 0.99)),
            elapsed: out.elapsed,
        }
    }
}

/// `on / off`: below 1 the cache-on run has less of it. `None` when the cache-off figure is
/// zero or either is missing.
pub fn ratio(on: Option<f64>, off: Option<f64>) -> Option<f64> {
    match (on, off) {
        (Some(on), Some(off)) if off > 0.0 && on.is_finite() && off.is_finite() => Some(on / off),
        _ => None,
    }
}

/// A ratio as `0.12×` (three decimals below 0.1, so that a big saving does not read `0.00×`).
pub fn times(r: Option<f64>) -> String {
    match r {
        Some(r) if r < 0.1 => format!("{r:.3}×"),
        Some(r) => format!("{r:.2}×"),
        None => "-".into(),
    }
}

/// The two runs of the same load.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub off: RunFigures,
    pub on: RunFigures,
}

impl Comparison {
    /// Cache-on database queries ÷ cache-off ones.
    pub fn queries(&self) -> Option<f64> {
        ratio(
            Some(self.on.db_queries as f64),
            Some(self.off.db_queries as f64),
        )
    }

    /// The share of the cache-off run's database queries that the cache saved (negative if
    /// it made more).
    pub fn queries_saved(&self) -> Option<f64> {
        self.queries().map(|r| 1.0 - r)
    }

    /// Cache-on reads/s ÷ cache-off reads/s.
    pub fn throughput(&self) -> Option<f64> {
        ratio(Some(self.on.reads_per_sec), Some(self.off.reads_per_sec))
    }

    /// Cache-on p50 ÷ cache-off p50.
    pub fn p50(&self) -> Option<f64> {
        ratio(self.on.p50_ms, self.off.p50_ms)
    }

    /// Cache-on p99 ÷ cache-off p99.
    pub fn p99(&self) -> Option<f64> {
        ratio(self.on.p99_ms, self.off.p99_ms)
    }

    /// One sentence with what the cache saved.
    pub fn summary(&self) -> String {
        format!(
            "with the cache on, {} of the database queries were not made; reads/s {}; read \
             latency p50 {}, p99 {}",
            self.queries_saved()
                .map_or("-".into(), |s| format!("{:.1}%", s * 100.0)),
            change(self.throughput()),
            change(self.p50()),
            change(self.p99()),
        )
    }

    /// Why the cache-on p99 is the higher one, when it is: the reads that missed both tiers.
    pub fn p99_note(&self) -> Option<String> {
        if self.p99()? <= 1.0 || self.on.reads == 0 {
            return None;
        }
        Some(format!(
            "p99 is higher with the cache on: that run starts with empty caches, and {} of its \
             reads ({}) queried the database themselves, each after an L2 lookup and a lease \
             and before an L2 write: their p99 is {} against {} for the reads the cache \
             answered (a longer run, e.g. --requests 100000, has fewer first reads of a key)",
            pct(self.on.reads_from_database, self.on.reads),
            thousands(self.on.reads_from_database),
            latency(self.on.database_p99_ms),
            latency(self.on.cache_p99_ms),
        ))
    }
}

fn pct(part: u64, whole: u64) -> String {
    format!("{:.1}%", 100.0 * part as f64 / whole.max(1) as f64)
}

/// A ratio in words: `4.0× higher`, `8.0× lower`, `unchanged` (within 1%).
pub fn change(r: Option<f64>) -> String {
    match r {
        Some(r) if (r - 1.0).abs() < 0.01 => "unchanged".into(),
        Some(r) if r > 1.0 => format!("{r:.1}× higher"),
        Some(r) if r > 0.0 => format!("{:.1}× lower", 1.0 / r),
        _ => "-".into(),
    }
}

fn latency(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2} ms"))
}

/// The side-by-side table.
pub fn print(c: &Comparison, load: &str) {
    println!("cache off vs cache on: the same load through the same HTTP service");
    println!("  load      {load}");
    println!("  cache off every read is a database query (the instances have no cache)");
    println!("  cache on  the run above: L1, then the shared L2, then the database");
    println!();
    let row = |name: &str, off: String, on: String, r: String| {
        println!("  {name:<34}{off:>18}{on:>18}{r:>18}");
    };
    row("", "cache off".into(), "cache on".into(), "on ÷ off".into());
    let (off, on) = (&c.off, &c.on);
    row(
        "requests",
        thousands(off.requests),
        thousands(on.requests),
        String::new(),
    );
    row(
        "database queries (all)",
        thousands(off.db_queries),
        thousands(on.db_queries),
        times(c.queries()),
    );
    row(
        "  SELECTs by reads",
        thousands(off.db_read_selects),
        thousands(on.db_read_selects),
        times(ratio(
            Some(on.db_read_selects as f64),
            Some(off.db_read_selects as f64),
        )),
    );
    row(
        "reads/s",
        thousands(off.reads_per_sec.round() as u64),
        thousands(on.reads_per_sec.round() as u64),
        times(c.throughput()),
    );
    row(
        "read latency p50",
        latency(off.p50_ms),
        latency(on.p50_ms),
        times(c.p50()),
    );
    row(
        "read latency p99",
        latency(off.p99_ms),
        latency(on.p99_ms),
        times(c.p99()),
    );
    row(
        "  reads that queried the database",
        thousands(off.reads_from_database),
        thousands(on.reads_from_database),
        String::new(),
    );
    row(
        "    their read latency p99",
        latency(off.database_p99_ms),
        latency(on.database_p99_ms),
        String::new(),
    );
    row(
        "  reads the cache answered: p99",
        latency(off.cache_p99_ms),
        latency(on.cache_p99_ms),
        String::new(),
    );
    row(
        "run time",
        format!("{:.2} s", off.elapsed.as_secs_f64()),
        format!("{:.2} s", on.elapsed.as_secs_f64()),
        String::new(),
    );
    println!();
    println!("  saved:     {}", c.summary());
    if let Some(note) = c.p99_note() {
        println!("  note:      {note}");
    }
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn stats(read_selects: u64, write_selects: u64, updates: u64) -> Stats {
        Stats {
            db_read_selects: read_selects,
            db_write_selects: write_selects,
            db_updates: updates,
            ..Stats::default()
        }
    }

    fn figures(queries: u64, reads_per_sec: f64, p50: f64, p99: f64) -> RunFigures {
        RunFigures {
            requests: 1_000,
            reads: 950,
            db_queries: queries,
            db_read_selects: queries,
            reads_per_sec,
            p50_ms: Some(p50),
            p99_ms: Some(p99),
            reads_from_database: queries,
            database_p99_ms: Some(p99),
            cache_p99_ms: None,
            elapsed: Duration::from_secs(1),
        }
    }

    fn recorded(ms: impl IntoIterator<Item = u64>) -> hdrhistogram::Histogram<u64> {
        let mut h = crate::load::histogram();
        for ms in ms {
            crate::load::record(&mut h, Duration::from_millis(ms));
        }
        h
    }

    /// Within 0.1% (3 significant digits).
    fn near(got: Option<f64>, want: f64) -> bool {
        got.is_some_and(|g| (g - want).abs() <= want * 1e-3)
    }

    #[test]
    fn figures_of_a_run() {
        let mut out = Outcome::default();
        // 100 reads of 1..=100 ms on instance a, none on b; 2 writes.
        out.latencies.reads[0] = recorded((1..=100).rev());
        out.latencies.writes[1] = recorded([5, 6]);
        // The 10 slowest went to the database.
        out.latencies.reads_from_database = recorded(91..=100);
        out.elapsed = Duration::from_millis(500);
        let f = RunFigures::new(&[stats(60, 1, 1), stats(40, 1, 1)], &out);
        assert_eq!(f.requests, 102);
        assert_eq!(f.reads, 100);
        assert_eq!(f.db_queries, 104);
        assert_eq!(f.db_read_selects, 100);
        assert!((f.reads_per_sec - 200.0).abs() < 1e-9);
        assert!(near(f.p50_ms, 50.0), "{:?}", f.p50_ms);
        assert!(near(f.p99_ms, 99.0), "{:?}", f.p99_ms);
        assert_eq!(f.reads_from_database, 10);
        assert!(near(f.database_p99_ms, 100.0), "{:?}", f.database_p99_ms);
        // The reads the cache answered: 1..=90 ms.
        assert!(near(f.cache_p99_ms, 90.0), "{:?}", f.cache_p99_ms);
    }

    #[test]
    fn figures_without_reads_have_no_quantiles() {
        let f = RunFigures::new(&[Stats::default(), Stats::default()], &Outcome::default());
        assert_eq!((f.reads, f.p50_ms, f.p99_ms), (0, None, None));
        assert_eq!(f.reads_per_sec, 0.0);
    }

    #[test]
    fn ratios_are_on_over_off() {
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(f64::NAN), Some(1.0)), None);
        let c = Comparison {
            off: figures(20_000, 2_000.0, 8.0, 20.0),
            on: figures(1_000, 10_000.0, 1.0, 5.0),
        };
        assert_eq!(c.queries(), Some(0.05));
        assert!((c.queries_saved().unwrap() - 0.95).abs() < 1e-12);
        assert_eq!(c.throughput(), Some(5.0));
        assert_eq!(c.p50(), Some(0.125));
        assert_eq!(c.p99(), Some(0.25));
        assert_eq!(
            c.summary(),
            "with the cache on, 95.0% of the database queries were not made; reads/s 5.0× \
             higher; read latency p50 8.0× lower, p99 4.0× lower"
        );
    }

    #[test]
    fn a_higher_p99_with_the_cache_is_explained() {
        let mut c = Comparison {
            off: figures(20_000, 2_000.0, 3.0, 6.0),
            on: figures(7_000, 3_000.0, 1.5, 8.0),
        };
        c.on.reads_from_database = 380;
        c.on.database_p99_ms = Some(12.5);
        c.on.cache_p99_ms = Some(2.25);
        let note = c.p99_note().unwrap_or_default();
        assert!(note.contains("40.0% of its reads (380)"), "{note}");
        assert!(note.contains("12.50 ms against 2.25 ms"), "{note}");
        c.on.p99_ms = Some(5.0);
        assert_eq!(c.p99_note(), None);
    }

    #[test]
    fn ratios_print_readably() {
        assert_eq!(times(Some(0.05)), "0.050×");
        assert_eq!(times(Some(0.126)), "0.13×");
        assert_eq!(times(Some(5.0)), "5.00×");
        assert_eq!(times(None), "-");
        assert_eq!(change(Some(5.0)), "5.0× higher");
        assert_eq!(change(Some(0.25)), "4.0× lower");
        assert_eq!(change(Some(1.004)), "unchanged");
        assert_eq!(change(Some(0.0)), "-");
        assert_eq!(change(None), "-");
    }
}
