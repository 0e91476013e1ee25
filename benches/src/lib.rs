//! Shared pieces of the tiercache benchmarks: the value type, run settings, sample
//! statistics, and the JSON-lines records that `cargo xtask bench` turns into one report.
//!
//! The bench targets live in `benches/` and need `--features peers` (criterion and the peer
//! crates); run them all with `cargo xtask bench [--quick]`.
//!
//! Each target writes `target/bench/raw/<target>.jsonl` (or `$BENCH_OUT_DIR/<target>.jsonl`)
//! with two kinds of lines, all flat JSON objects (written by serde_json):
//!
//! - `{"type":"result","workload":..,"subject":..,"role":"tiercache"|"peer","label":..,
//!   "metric":<primary metric>,"ns_per_op":..,"p50_us":..,"p99_us":..,"mean_us":..,
//!   "ops_per_s":..,"samples":..,"how":..}` (metrics that do not apply are left out);
//! - `{"type":"target","workload":..,"metric":..,"reference":<peer subject>,
//!   "kind":"max_ratio"|"max_diff","value":..,"text":..}`.
//!
//! Two kinds of sample sets: [`Samples`] keeps every figure and sorts them (exact nearest
//! rank) for the few per-round ns/op figures of interleaved rounds (tens of rounds, fractions
//! of a nanosecond matter); [`Latencies`] records per-operation latencies into an HDR
//! histogram (thousands to millions of timings, 3 significant digits).
#![warn(missing_docs)]

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// The benchmark value: a small user record, about 200 bytes as MessagePack with field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Primary key.
    pub id: u64,
    /// Display name.
    pub name: String,
    /// E-mail address.
    pub email: String,
    /// Free-form tags.
    pub tags: Vec<String>,
}

/// A ~4 KB value (MessagePack-encoded; the same type as [`sample_user`], with 100 more tags),
/// for the rows that compare a larger struct.
pub fn large_user(id: u64) -> User {
    let mut u = sample_user(id);
    u.tags
        .extend((0..100).map(|i| format!("interest-{i:03}-analytical-engine-notes")));
    u
}

/// The value every bench stores (`id` distinguishes keys where several are needed).
pub fn sample_user(id: u64) -> User {
    User {
        id,
        name: "Ada Lovelace-Byron, Countess of Lovelace".to_owned(),
        email: format!("ada.lovelace.{id:08}@analytical-engine.example.org"),
        tags: [
            "mathematician",
            "writer",
            "analytical-engine",
            "first-programmer",
            "london",
            "admin",
            "beta-tester",
            "newsletter",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect(),
    }
}

/// True when `BENCH_QUICK` is set to anything but `0` or empty (`cargo xtask bench --quick`).
pub fn quick() -> bool {
    std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Criterion timings for this run: (warm-up, measurement, sample size, bootstrap resamples).
pub fn criterion_timings() -> (Duration, Duration, usize, usize) {
    if quick() {
        (
            Duration::from_millis(400),
            Duration::from_secs(1),
            20,
            5_000,
        )
    } else {
        (Duration::from_secs(2), Duration::from_secs(4), 60, 20_000)
    }
}

/// Where the JSON lines go: `$BENCH_OUT_DIR`, else `$CARGO_TARGET_DIR/bench/raw`, else
/// `<workspace>/target/bench/raw`.
pub fn out_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BENCH_OUT_DIR") {
        return PathBuf::from(d);
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(|p| p.join("target"))
            .unwrap_or_else(|| PathBuf::from("target")),
    };
    target.join("bench").join("raw")
}

/// The positional arguments `cargo bench -- <filter>` passed (flags are left out).
pub fn filters() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect()
}

/// Whether a workload runs under the filters (no filter: everything runs).
pub fn selected(filters: &[String], workload: &str) -> bool {
    filters.is_empty() || filters.iter().any(|f| workload.contains(f.as_str()))
}

/// A few figures kept exactly, in nanoseconds (e.g. the ns/op of each interleaved round):
/// percentiles by nearest rank over the sorted figures. Per-operation latencies go to
/// [`Latencies`].
#[derive(Debug, Clone, Default)]
pub struct Samples {
    sorted: Vec<f64>,
}

impl Samples {
    /// Sort `ns` into a sample set.
    pub fn new(mut ns: Vec<f64>) -> Self {
        ns.retain(|x| x.is_finite());
        ns.sort_by(f64::total_cmp);
        Samples { sorted: ns }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// True without samples.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The `p`-th percentile (0..=100), nearest rank; NaN without samples.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.sorted.is_empty() {
            return f64::NAN;
        }
        let n = self.sorted.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.sorted[rank.clamp(1, n) - 1]
    }

    /// The arithmetic mean; NaN without samples.
    pub fn mean(&self) -> f64 {
        if self.sorted.is_empty() {
            return f64::NAN;
        }
        self.sorted.iter().sum::<f64>() / self.sorted.len() as f64
    }
}

/// Per-operation latencies in nanoseconds, recorded into an HDR histogram with 3
/// significant digits: a percentile is the nearest-rank one to within 0.1% (the highest value
/// of its bucket), whatever the number of operations, without keeping or sorting them.
#[derive(Debug, Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl Latencies {
    /// An empty set (the histogram grows to the largest value recorded).
    pub fn new() -> Self {
        // `new` refuses only more than 5 significant digits.
        let histogram = Histogram::new(3).unwrap_or_else(|e| unreachable!("{e}"));
        Latencies { histogram }
    }

    /// The latencies of `ns` (negative and non-finite values are left out, fractions of a
    /// nanosecond rounded).
    pub fn from_ns(ns: impl IntoIterator<Item = f64>) -> Self {
        let mut l = Latencies::new();
        for x in ns {
            if x.is_finite() && x >= 0.0 {
                l.record_ns(x.round() as u64);
            }
        }
        l
    }

    /// Record one latency.
    pub fn record(&mut self, d: Duration) {
        self.record_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Record one latency in nanoseconds.
    pub fn record_ns(&mut self, ns: u64) {
        // `record` grows the histogram (it fails only if it cannot); `saturating_record`
        // would clamp to the current range instead.
        if self.histogram.record(ns).is_err() {
            self.histogram.saturating_record(ns);
        }
    }

    /// Number of latencies recorded.
    pub fn len(&self) -> usize {
        self.histogram.len() as usize
    }

    /// True without latencies.
    pub fn is_empty(&self) -> bool {
        self.histogram.is_empty()
    }

    /// The `p`-th percentile (0..=100), nearest rank; NaN without latencies.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.is_empty() {
            return f64::NAN;
        }
        self.histogram.value_at_quantile(p / 100.0) as f64
    }

    /// The largest latency; NaN without latencies.
    pub fn max(&self) -> f64 {
        if self.is_empty() {
            return f64::NAN;
        }
        self.histogram.max() as f64
    }

    /// The arithmetic mean; NaN without latencies.
    pub fn mean(&self) -> f64 {
        if self.is_empty() {
            return f64::NAN;
        }
        self.histogram.mean()
    }
}

/// One JSON-lines record under construction: a flat JSON object whose fields keep the order
/// they were added in (serialized by serde_json).
#[derive(Debug, Clone, Default)]
pub struct Record {
    fields: Vec<(String, Value)>,
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.fields.iter().map(|(k, v)| (k, v)))
    }
}

impl Record {
    /// A result line: `subject` measured on `workload`; `metric` names its primary figure.
    pub fn result(workload: &str, subject: &str, role: Role, label: &str, metric: &str) -> Self {
        Record::default()
            .str("type", "result")
            .str("workload", workload)
            .str("subject", subject)
            .str(
                "role",
                match role {
                    Role::Tiercache => "tiercache",
                    Role::Peer => "peer",
                },
            )
            .str("label", label)
            .str("metric", metric)
    }

    /// A target line: on `workload`, tiercache's `metric` must be at most `value` times the
    /// reference's ([`TargetKind::MaxRatio`]) or at most the reference's plus `value`
    /// ([`TargetKind::MaxDiff`]).
    pub fn target(
        workload: &str,
        metric: &str,
        reference: &str,
        kind: TargetKind,
        value: f64,
        text: &str,
    ) -> Self {
        Record::default()
            .str("type", "target")
            .str("workload", workload)
            .str("metric", metric)
            .str("reference", reference)
            .str(
                "kind",
                match kind {
                    TargetKind::MaxRatio => "max_ratio",
                    TargetKind::MinRatio => "min_ratio",
                    TargetKind::MaxDiff => "max_diff",
                    TargetKind::MaxAbs => "max_abs",
                    TargetKind::MinDiff => "min_diff",
                },
            )
            .num("value", value)
            .str("text", text)
    }

    /// Set a field (a key set twice keeps its place and takes the later value).
    fn set(mut self, key: &str, value: Value) -> Self {
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.fields.push((key.to_owned(), value)),
        }
        self
    }

    /// Add a string field.
    pub fn str(self, key: &str, value: &str) -> Self {
        self.set(key, Value::from(value))
    }

    /// Add a number field (non-finite numbers become `null`).
    pub fn num(self, key: &str, value: f64) -> Self {
        // serde_json turns a non-finite f64 into `null`.
        self.set(key, Value::from(value))
    }

    /// The record as one line of JSON (no trailing newline).
    pub fn to_json(&self) -> String {
        // Only string keys and JSON values: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Who a result line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// tiercache itself.
    Tiercache,
    /// Something a user could pick instead.
    Peer,
}

/// How a target compares tiercache with its reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// tiercache <= value × reference.
    MaxRatio,
    /// tiercache >= value × reference (throughput).
    MinRatio,
    /// tiercache <= reference + value.
    MaxDiff,
    /// tiercache <= value (no reference).
    MaxAbs,
    /// tiercache >= reference + value (e.g. a hit ratio at most 0.3 points below: -0.3).
    MinDiff,
}

/// Nanoseconds since the Unix epoch on `CLOCK_REALTIME` (comparable between processes on
/// one machine).
pub fn realtime_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Time `op` on `subjects` in interleaved rounds: each round runs one batch of `batch[i]`
/// calls per subject, in rotating order; returns ns/op samples (one per round) per subject.
pub fn interleaved(rounds: usize, batch: &[u64], ops: &mut [&mut dyn FnMut()]) -> Vec<Samples> {
    let n = ops.len();
    let mut per: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); n];
    for r in 0..rounds {
        for k in 0..n {
            let i = (r + k) % n;
            let op = &mut ops[i];
            let start = std::time::Instant::now();
            for _ in 0..batch[i] {
                op();
            }
            per[i].push(start.elapsed().as_nanos() as f64 / batch[i].max(1) as f64);
        }
    }
    per.into_iter().map(Samples::new).collect()
}

/// A batch size for `op` that takes about `target` (probing with `probe` calls).
pub fn batch_for(target: Duration, probe: u64, op: &mut dyn FnMut()) -> u64 {
    let start = std::time::Instant::now();
    for _ in 0..probe {
        op();
    }
    let d = start.elapsed().max(Duration::from_nanos(1));
    ((probe as f64 * target.as_nanos() as f64 / d.as_nanos() as f64) as u64).clamp(1, 10_000_000)
}

/// Write `records` to `<out_dir>/<name>.jsonl`, replacing the file; returns its path.
pub fn write_records(name: &str, records: &[Record]) -> std::io::Result<PathBuf> {
    let dir = out_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.jsonl"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for r in records {
        serde_json::to_writer(&mut f, r)?;
        f.write_all(b"\n")?;
    }
    f.flush()?;
    Ok(path)
}

/// The median of a few figures (e.g. one per timed run), upper middle for an even count; NaN
/// without any.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// An error from a bench task.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Set when a throughput slice is over; the tasks of [`run_tasks`] loop until it is.
pub type Stop = std::sync::Arc<std::sync::atomic::AtomicBool>;

/// A throughput slice: spawns `tasks` tasks made by `task(t, stop)` (each loops until `stop`
/// is set and returns how many operations it did), lets them run for `run`, sets `stop`, and
/// returns each task's count (in task order) and the time from the first spawn to the last
/// join. The first task error is returned.
pub async fn run_tasks<F, Fut>(
    tasks: usize,
    run: Duration,
    task: F,
) -> Result<(Vec<u64>, Duration), BoxError>
where
    F: Fn(usize, Stop) -> Fut,
    Fut: std::future::Future<Output = Result<u64, BoxError>> + Send + 'static,
{
    let stop = Stop::default();
    let start = std::time::Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| tokio::spawn(task(t, std::sync::Arc::clone(&stop))))
        .collect();
    tokio::time::sleep(run).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut counts = Vec::with_capacity(tasks);
    for h in handles {
        counts.push(h.await??);
    }
    Ok((counts, start.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let s = Samples::new((1..=100).map(f64::from).collect());
        assert_eq!(s.percentile(50.0), 50.0);
        assert_eq!(s.percentile(99.0), 99.0);
        assert_eq!(s.percentile(100.0), 100.0);
        assert_eq!(s.percentile(0.0), 1.0);
        assert!(Samples::new(vec![]).percentile(50.0).is_nan());
    }

    #[test]
    fn latencies_are_within_a_tenth_of_a_percent() {
        let l = Latencies::from_ns((1..=100_000).map(|x| f64::from(x) * 10.0));
        assert_eq!(l.len(), 100_000);
        let near = |got: f64, want: f64| (got - want).abs() <= want * 1e-3;
        assert!(
            near(l.percentile(50.0), 500_000.0),
            "{}",
            l.percentile(50.0)
        );
        assert!(
            near(l.percentile(99.0), 990_000.0),
            "{}",
            l.percentile(99.0)
        );
        assert!(near(l.max(), 1_000_000.0), "{}", l.max());
        assert!(near(l.mean(), 500_005.0), "{}", l.mean());
        // Below 2048 ns every value has its own bucket: exact.
        let small = Latencies::from_ns((1..=100).map(f64::from));
        assert_eq!(small.percentile(50.0), 50.0);
        assert_eq!(small.percentile(99.0), 99.0);
        assert_eq!(small.percentile(0.0), 1.0);
        let mut d = Latencies::new();
        d.record(Duration::from_micros(3));
        // 2048..4096 ns: buckets of 2 ns, reported by their highest value.
        assert_eq!(d.percentile(50.0), 3_001.0);
        assert!(Latencies::new().percentile(50.0).is_nan());
        assert!(Latencies::from_ns([f64::NAN, -1.0]).is_empty());
    }

    #[test]
    fn records_are_json() {
        let r = Record::result("w", "s\"x", Role::Peer, "l\n", "ns_per_op")
            .num("ns_per_op", 1.5)
            .num("bad", f64::NAN)
            .num("n", 3.0)
            .str("label", "l2");
        assert_eq!(
            r.to_json(),
            "{\"type\":\"result\",\"workload\":\"w\",\"subject\":\"s\\\"x\",\"role\":\"peer\",\
             \"label\":\"l2\",\"metric\":\"ns_per_op\",\"ns_per_op\":1.5,\"bad\":null,\"n\":3.0}"
        );
    }

    #[test]
    fn sample_user_keys_differ() {
        assert_eq!(sample_user(7).id, 7);
        assert_ne!(sample_user(7).email, sample_user(8).email);
    }
}
