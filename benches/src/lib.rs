//! Shared pieces of the tiercache benchmarks: the value type, run settings, sample
//! statistics, and the JSON-lines records that `cargo xtask bench` turns into one report.
//!
//! The bench targets live in `benches/` and need `--features peers` (criterion and the peer
//! crates); run them all with `cargo xtask bench [--quick]`.
//!
//! Each target writes `target/bench/raw/<target>.jsonl` (or `$BENCH_OUT_DIR/<target>.jsonl`)
//! with two kinds of lines, all flat JSON objects:
//!
//! - `{"type":"result","workload":..,"subject":..,"role":"tiercache"|"peer","label":..,
//!   "metric":<primary metric>,"ns_per_op":..,"p50_us":..,"p99_us":..,"mean_us":..,
//!   "ops_per_s":..,"samples":..,"how":..}` (metrics that do not apply are left out);
//! - `{"type":"target","workload":..,"metric":..,"reference":<peer subject>,
//!   "kind":"max_ratio"|"max_diff","value":..,"text":..}`.
#![warn(missing_docs)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

/// Sorted per-operation samples, in nanoseconds.
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

/// One JSON-lines record under construction (a flat JSON object).
#[derive(Debug, Clone, Default)]
pub struct Record {
    fields: Vec<(String, String)>,
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

    /// Add a string field.
    pub fn str(mut self, key: &str, value: &str) -> Self {
        self.fields.push((key.to_owned(), json_string(value)));
        self
    }

    /// Add a number field (non-finite numbers become `null`).
    pub fn num(mut self, key: &str, value: f64) -> Self {
        let v = if value.is_finite() {
            format!("{value}")
        } else {
            "null".to_owned()
        };
        self.fields.push((key.to_owned(), v));
        self
    }

    /// The record as one line of JSON (no trailing newline).
    pub fn to_json(&self) -> String {
        let mut s = String::from("{");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&json_string(k));
            s.push(':');
            s.push_str(v);
        }
        s.push('}');
        s
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

/// Quote and escape a JSON string.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Write `records` to `<out_dir>/<name>.jsonl`, replacing the file; returns its path.
pub fn write_records(name: &str, records: &[Record]) -> std::io::Result<PathBuf> {
    let dir = out_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.jsonl"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for r in records {
        writeln!(f, "{}", r.to_json())?;
    }
    f.flush()?;
    Ok(path)
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
    fn records_are_json() {
        let r = Record::result("w", "s\"x", Role::Peer, "l\n", "ns_per_op")
            .num("ns_per_op", 1.5)
            .num("bad", f64::NAN);
        assert_eq!(
            r.to_json(),
            "{\"type\":\"result\",\"workload\":\"w\",\"subject\":\"s\\\"x\",\"role\":\"peer\",\
             \"label\":\"l\\n\",\"metric\":\"ns_per_op\",\"ns_per_op\":1.5,\"bad\":null}"
        );
    }

    #[test]
    fn sample_user_keys_differ() {
        assert_eq!(sample_user(7).id, 7);
        assert_ne!(sample_user(7).email, sample_user(8).email);
    }
}
