//! The report of `cargo xtask bench`: reads the JSON lines the benches wrote to
//! `target/bench/raw/*.jsonl`, prints one table, writes `target/bench/report.json` and
//! `target/bench/report.md`.
//!
//! Lines are flat JSON objects (see `benches/src/lib.rs`): `"type":"result"` (one subject
//! measured on one workload), `"type":"target"` (what tiercache must reach on a workload) and
//! `"type":"conditions"` (written by xtask: cores, load, quick or not). serde_json reads and
//! writes them.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::Result;

/// One line of a raw file.
type Object = Map<String, Value>;

fn get_str<'a>(o: &'a Object, key: &str) -> &'a str {
    o.get(key).and_then(Value::as_str).unwrap_or("")
}

fn get_num(o: &Object, key: &str) -> Option<f64> {
    o.get(key).and_then(Value::as_f64).filter(|n| n.is_finite())
}

/// Parse one line of a raw file: a JSON object.
fn parse_object(line: &str) -> std::result::Result<Object, String> {
    serde_json::from_str(line).map_err(|e| e.to_string())
}

/// A JSON value as one line (for the lines xtask adds to the raw files).
pub(crate) fn line(v: &Value) -> String {
    format!("{v}\n")
}

/// One row of the table: a workload with tiercache and its peers.
struct Row {
    workload: String,
    metric: String,
    tiercache: Option<Object>,
    /// Further tiercache subjects of the row (e.g. write-through and write-behind variants).
    variants: Vec<Object>,
    /// By peer subject, in the order first seen.
    peers: Vec<(String, Object)>,
    targets: Vec<Object>,
}

impl Row {
    fn peer(&self, subject: &str) -> Option<&Object> {
        self.peers
            .iter()
            .find(|(s, _)| s == subject)
            .map(|(_, o)| o)
    }
}

/// One target judged.
struct Verdict {
    text: String,
    met: Option<bool>,
    note: String,
}

struct Judged {
    reference: Option<String>,
    ratio: Option<f64>,
    verdicts: Vec<Verdict>,
}

/// Higher is better for these metrics.
fn higher_is_better(metric: &str) -> bool {
    matches!(metric, "ops_per_s" | "hit_pct")
}

fn judge(row: &Row) -> Judged {
    // The ratio column: against the first target's reference, else the first peer with a figure.
    let reference = row
        .targets
        .iter()
        .map(|t| get_str(t, "reference"))
        .find(|r| !r.is_empty() && row.peer(r).is_some())
        .map(str::to_owned)
        .or_else(|| {
            row.peers
                .iter()
                .find(|(_, o)| get_num(o, &row.metric).is_some())
                .map(|(s, _)| s.clone())
        });
    let ours = row.tiercache.as_ref().and_then(|o| get_num(o, &row.metric));
    let theirs = reference
        .as_deref()
        .and_then(|r| row.peer(r))
        .and_then(|o| get_num(o, &row.metric));
    let ratio = match (ours, theirs) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let verdicts = row
        .targets
        .iter()
        .map(|t| {
            let metric = get_str(t, "metric");
            let a = row.tiercache.as_ref().and_then(|o| get_num(o, metric));
            let b = row
                .peer(get_str(t, "reference"))
                .and_then(|o| get_num(o, metric));
            let limit = get_num(t, "value");
            let unit = unit_of(metric);
            let (met, note) = match (get_str(t, "kind"), a, b, limit) {
                ("max_ratio", Some(a), Some(b), Some(l)) if b > 0.0 => {
                    (Some(a / b <= l), format!("{:.2}x", a / b))
                }
                ("min_ratio", Some(a), Some(b), Some(l)) if b > 0.0 => {
                    (Some(a / b >= l), format!("{:.2}x", a / b))
                }
                ("max_diff", Some(a), Some(b), Some(l)) => {
                    (Some(a - b <= l), format!("{:+.1} {unit}", a - b))
                }
                ("min_diff", Some(a), Some(b), Some(l)) => {
                    (Some(a - b >= l), format!("{:+.2} {unit}", a - b))
                }
                ("max_abs", Some(a), _, Some(l)) => (Some(a <= l), format!("{} {unit}", num(a))),
                _ => (None, "no figure".to_owned()),
            };
            Verdict {
                text: get_str(t, "text").to_owned(),
                met,
                note: note.trim_end().to_owned(),
            }
        })
        .collect();
    Judged {
        reference,
        ratio,
        verdicts,
    }
}

fn num(n: f64) -> String {
    if n.abs() >= 100.0 || n == n.trunc() {
        format!("{n:.0}")
    } else {
        format!("{n:.2}")
    }
}

fn unit_of(metric: &str) -> &'static str {
    match metric {
        "ns_per_op" => "ns",
        "p50_us" | "p99_us" | "mean_us" | "p99_over_loader_us" | "loader_us" => "µs",
        "ops_per_s" => "op/s",
        "hit_pct" => "points",
        _ => "",
    }
}

fn ops(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.2}M op/s", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}k op/s", n / 1e3)
    } else {
        format!("{n:.0} op/s")
    }
}

/// A result's figure for the table, by its primary metric.
fn cell(o: Option<&Object>, metric: &str) -> String {
    let Some(o) = o else {
        return String::new();
    };
    let err = get_str(o, "error");
    if !err.is_empty() {
        return err.to_owned();
    }
    let us = |n: f64| {
        if n >= 10_000.0 {
            format!("{:.1} ms", n / 1e3)
        } else {
            format!("{n:.1} µs")
        }
    };
    let main = match metric {
        "ns_per_op" => get_num(o, "ns_per_op").map_or("?".into(), |n| {
            if n >= 10_000.0 {
                format!("{:.1} µs", n / 1e3)
            } else {
                format!("{n:.1} ns")
            }
        }),
        "p50_us" => match (get_num(o, "p50_us"), get_num(o, "p99_us")) {
            (Some(a), Some(b)) => format!("p50 {} / p99 {}", us(a), us(b)),
            (Some(a), None) => format!("p50 {}", us(a)),
            _ => "?".into(),
        },
        "p99_us" => match (get_num(o, "p99_us"), get_num(o, "p50_us")) {
            (Some(b), Some(a)) => format!("p99 {} (p50 {})", us(b), us(a)),
            (Some(b), None) => format!("p99 {}", us(b)),
            _ => "?".into(),
        },
        "ops_per_s" => get_num(o, "ops_per_s").map_or("?".into(), ops),
        "hit_pct" => get_num(o, "hit_pct").map_or("?".into(), |n| format!("{n:.2} %")),
        "undetected" => {
            get_num(o, "undetected").map_or("?".into(), |n| format!("{n:.0} undetected losses"))
        }
        m => get_num(o, m).map_or("?".into(), |n| format!("{n:.3} {m}")),
    };
    match get_str(o, "note") {
        "" => main,
        n => format!("{main}, {n}"),
    }
}

/// Read the raw lines, print the table, write report.json, report.md and chart.svg.
pub(crate) fn write(raw_dir: &Path, out_dir: &Path) -> Result<()> {
    let mut files: Vec<_> = std::fs::read_dir(raw_dir)
        .map_err(|e| format!("no bench results in {}: {e}", raw_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("jsonl"))
        .collect();
    files.sort();
    let mut rows: Vec<Row> = Vec::new();
    let mut conditions: Option<Object> = None;
    for path in &files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let o = parse_object(line).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
            let kind = get_str(&o, "type").to_owned();
            if kind == "conditions" {
                conditions = Some(o);
                continue;
            }
            let workload = get_str(&o, "workload").to_owned();
            let idx = match rows.iter().position(|r| r.workload == workload) {
                Some(i) => i,
                None => {
                    rows.push(Row {
                        workload: workload.clone(),
                        metric: String::new(),
                        tiercache: None,
                        variants: Vec::new(),
                        peers: Vec::new(),
                        targets: Vec::new(),
                    });
                    rows.len() - 1
                }
            };
            let row = &mut rows[idx];
            match kind.as_str() {
                "target" => row.targets.push(o),
                "result" => {
                    if row.metric.is_empty() {
                        row.metric = get_str(&o, "metric").to_owned();
                    }
                    if get_str(&o, "role") == "tiercache" {
                        match &row.tiercache {
                            Some(t) if get_str(t, "subject") != get_str(&o, "subject") => {
                                row.variants.push(o)
                            }
                            _ => row.tiercache = Some(o),
                        }
                    } else {
                        let subject = get_str(&o, "subject").to_owned();
                        row.peers.retain(|(s, _)| *s != subject);
                        row.peers.push((subject, o));
                    }
                }
                other => {
                    return Err(format!(
                        "{}:{}: unknown type {other:?}",
                        path.display(),
                        n + 1
                    ))
                }
            }
        }
    }
    if rows.is_empty() {
        return Err(format!("no bench results in {}", raw_dir.display()));
    }
    let label_of = |o: &Object| match get_str(o, "label") {
        "" => get_str(o, "subject").to_owned(),
        l => l.to_owned(),
    };

    // The table: workload | tiercache | peers | ratio | targets
    let header: Vec<String> = ["workload", "tiercache", "peers", "ratio", "targets"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let mut table: Vec<Vec<String>> = Vec::new();
    let mut judged = Vec::new();
    for row in &rows {
        let j = judge(row);
        let peers: Vec<String> = row
            .peers
            .iter()
            .map(|(_, o)| format!("{}: {}", label_of(o), cell(Some(o), &row.metric)))
            .collect();
        let ratio = match (j.ratio, &j.reference) {
            (Some(r), Some(p)) => format!("{r:.2}x {}", row.peer(p).map_or(p.clone(), label_of)),
            _ => "—".into(),
        };
        let targets: Vec<String> = j
            .verdicts
            .iter()
            .map(|v| {
                let word = match v.met {
                    Some(true) => "met",
                    Some(false) => "MISSED",
                    None => "?",
                };
                format!("{}: {word} ({})", v.text, v.note)
            })
            .collect();
        let ours = if row.variants.is_empty() {
            cell(row.tiercache.as_ref(), &row.metric)
        } else {
            row.tiercache
                .iter()
                .chain(&row.variants)
                .map(|o| format!("{}: {}", label_of(o), cell(Some(o), &row.metric)))
                .collect::<Vec<_>>()
                .join("; ")
        };
        table.push(vec![
            row.workload.clone(),
            ours,
            peers.join("; "),
            ratio,
            if targets.is_empty() {
                "—".into()
            } else {
                targets.join("; ")
            },
        ]);
        judged.push(j);
    }

    let cond_text = conditions.as_ref().map_or_else(
        || "run conditions unknown".to_owned(),
        |c| {
            let machine = get_str(c, "machine");
            format!(
                "{}{} cores; {} run; load average {} before, {} after; rustc processes running: {} before, {} after; {} s for the benches (build excluded)",
                if machine.is_empty() { String::new() } else { format!("{machine}; ") },
                get_num(c, "cores").unwrap_or(0.0),
                if c.get("quick") == Some(&Value::Bool(true)) { "--quick" } else { "full" },
                get_str(c, "loadavg_before"),
                get_str(c, "loadavg_after"),
                get_num(c, "rustc_running_before").unwrap_or(0.0),
                get_num(c, "rustc_running_after").unwrap_or(0.0),
                get_num(c, "seconds").unwrap_or(0.0),
            )
        },
    );

    print_table(&header, &table, &cond_text);
    let missed: Vec<String> = rows
        .iter()
        .zip(&judged)
        .flat_map(|(r, j)| {
            j.verdicts
                .iter()
                .filter(|v| v.met == Some(false))
                .map(move |v| format!("{}: {} ({})", r.workload, v.text, v.note))
        })
        .collect();
    if !missed.is_empty() {
        eprintln!("xtask: targets missed:");
        for m in &missed {
            eprintln!("  - {m}");
        }
    }

    std::fs::create_dir_all(out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;

    // report.md
    let mut md = String::from("# tiercache benchmarks\n\n");
    let _ = writeln!(md, "Measured by `cargo xtask bench`: {cond_text}.\n");
    let _ = writeln!(
        md,
        "Ratios compare figures measured in the same run; absolute numbers drift between machines, \
         and a loaded machine (see the load average and the rustc count above) skews them.\n"
    );
    let _ = writeln!(md, "| {} |", header.join(" | "));
    let _ = writeln!(md, "|{}", header.iter().map(|_| "---|").collect::<String>());
    for line in &table {
        let escaped: Vec<String> = line.iter().map(|c| c.replace('|', "\\|")).collect();
        let _ = writeln!(md, "| {} |", escaped.join(" | "));
    }
    if !missed.is_empty() {
        md.push_str("\nTargets missed:\n\n");
        for m in &missed {
            let _ = writeln!(md, "- {m}");
        }
    }
    md.push_str("\nHow each subject is measured:\n\n");
    let mut seen = Vec::new();
    for row in &rows {
        for o in row
            .tiercache
            .iter()
            .chain(&row.variants)
            .chain(row.peers.iter().map(|(_, o)| o))
        {
            // A peer shared by several rows is described once.
            let how = get_str(o, "how");
            if how.is_empty() || seen.contains(&how) {
                continue;
            }
            seen.push(how);
            let _ = writeln!(md, "- {} — {}: {how}", row.workload, label_of(o));
        }
    }
    let md_path = out_dir.join("report.md");
    std::fs::write(&md_path, md).map_err(|e| format!("cannot write {}: {e}", md_path.display()))?;

    // report.json
    let json_rows: Vec<Value> = rows
        .iter()
        .zip(&judged)
        .map(|(row, j)| {
            let targets: Vec<Object> = row
                .targets
                .iter()
                .zip(&j.verdicts)
                .map(|(t, v)| {
                    let mut t = t.clone();
                    t.insert("met".into(), json!(v.met));
                    t.insert("judged".into(), json!(v.note));
                    t
                })
                .collect();
            let met = if j.verdicts.iter().any(|v| v.met == Some(false)) {
                Some(false)
            } else if j.verdicts.iter().any(|v| v.met == Some(true)) {
                Some(true)
            } else {
                None
            };
            let peers: Vec<&Object> = row.peers.iter().map(|(_, o)| o).collect();
            json!({
                "workload": row.workload,
                "metric": row.metric,
                "tiercache": row.tiercache,
                "peers": peers,
                "reference": j.reference,
                "ratio": j.ratio,
                "targets": targets,
                "met": met,
            })
        })
        .collect();
    let js = serde_json::to_string_pretty(&json!({ "conditions": conditions, "rows": json_rows }))
        .map_err(|e| format!("cannot write report.json: {e}"))?;
    let js_path = out_dir.join("report.json");
    std::fs::write(&js_path, js + "\n")
        .map_err(|e| format!("cannot write {}: {e}", js_path.display()))?;

    // chart.svg
    let bars: Vec<(String, f64, bool)> = rows
        .iter()
        .zip(&judged)
        .filter_map(|(r, j)| {
            let ratio = j.ratio?;
            let reference = j
                .reference
                .as_deref()
                .and_then(|p| r.peer(p))
                .map(label_of)?;
            // "speed-up" > 1 means tiercache is better than the reference.
            let speedup = if higher_is_better(&r.metric) {
                ratio
            } else {
                1.0 / ratio
            };
            Some((
                format!("{} (vs {reference})", r.workload),
                speedup,
                !j.verdicts.iter().any(|v| v.met == Some(false)),
            ))
        })
        .collect();
    let svg_path = out_dir.join("chart.svg");
    std::fs::write(&svg_path, chart_svg(&bars, &cond_text))
        .map_err(|e| format!("cannot write {}: {e}", svg_path.display()))?;
    eprintln!(
        "xtask: wrote {}, {} and {}",
        js_path.display(),
        md_path.display(),
        svg_path.display()
    );
    Ok(())
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A horizontal bar chart, log2 scale: how many times better tiercache is than each row's
/// reference (right of the 1x line: better; left: worse). Red: a target of the row missed.
fn chart_svg(bars: &[(String, f64, bool)], conditions: &str) -> String {
    let (label_w, plot_w, bar_h, top) = (560.0, 420.0, 18.0, 50.0);
    // A ratio of 0 or infinity (a count of 0 against a peer's 750) has no place on a log
    // scale: such rows are left out of the chart (the table has them).
    let bars: Vec<&(String, f64, bool)> = bars
        .iter()
        .filter(|(_, r, _)| r.is_finite() && *r > 0.0)
        .collect();
    let max = bars
        .iter()
        .map(|(_, r, _)| r.log2().abs())
        .fold(1.0f64, f64::max)
        .ceil()
        .min(20.0);
    let x0 = label_w + plot_w / 2.0;
    let scale = (plot_w / 2.0) / max;
    let height = top + bars.len() as f64 * (bar_h + 4.0) + 40.0;
    let width = label_w + plot_w + 90.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"18\" font-size=\"14\">tiercache vs reference (times better, log scale; red: a target missed)</text>\n\
         <text x=\"10\" y=\"34\" fill=\"#555\">{}</text>\n",
        xml(conditions)
    );
    for k in -(max as i64)..=(max as i64) {
        let x = x0 + k as f64 * scale;
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{}\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{}</text>",
            height - 30.0,
            if k == 0 { "#000" } else { "#ddd" },
            height - 18.0,
            if k >= 0 {
                format!("{}x", 1u64 << k)
            } else {
                format!("1/{}x", 1u64 << -k)
            }
        );
    }
    for (i, (label, r, ok)) in bars.iter().enumerate() {
        let y = top + i as f64 * (bar_h + 4.0);
        let v = r.log2() * scale;
        let (x, w) = if v >= 0.0 { (x0, v) } else { (x0 + v, -v) };
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bar_h}\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{r:.2}x</text>",
            label_w - 6.0,
            y + 13.0,
            xml(label),
            w.max(1.0),
            if *ok { "#4a7ebb" } else { "#c0392b" },
            x0 + v.max(0.0) + 4.0,
            y + 13.0,
        );
    }
    s.push_str("</svg>\n");
    s
}

/// (workload, metric, tiercache's figure, ratio) of every row of a report.json.
fn report_rows(j: &Value) -> Vec<(String, String, Option<f64>, Option<f64>)> {
    let Some(rows) = j.get("rows").and_then(Value::as_array) else {
        return Vec::new();
    };
    rows.iter()
        .filter_map(|r| {
            let w = r.get("workload")?.as_str()?.to_owned();
            let m = r.get("metric")?.as_str()?.to_owned();
            let ours = r
                .get("tiercache")
                .and_then(|t| t.get(&m))
                .and_then(Value::as_f64);
            let ratio = r.get("ratio").and_then(Value::as_f64);
            Some((w, m, ours, ratio))
        })
        .collect()
}

/// Print the change per workload between an earlier report.json and the one just written.
/// A change for the worse of more than `threshold` percent is flagged as a regression.
#[allow(clippy::print_stdout)]
pub(crate) fn compare(old_path: &Path, new_path: &Path, threshold: f64) -> Result<usize> {
    let read = |p: &Path| -> Result<Value> {
        let text =
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
    };
    let (old, new) = (read(old_path)?, read(new_path)?);
    let old_rows = report_rows(&old);
    let header: Vec<String> = ["workload", "old", "new", "change", "ratio old → new", ""]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let mut table = Vec::new();
    let mut regressions = 0;
    for (w, m, ours, ratio) in report_rows(&new) {
        let Some((_, om, oours, oratio)) = old_rows.iter().find(|(ow, ..)| *ow == w) else {
            table.push(vec![
                w,
                "—".into(),
                fmt_metric(&m, ours),
                "new".into(),
                String::new(),
                String::new(),
            ]);
            continue;
        };
        let change = match (oours, ours) {
            (Some(a), Some(b)) if *a != 0.0 && *om == m => Some((b - a) / a * 100.0),
            _ => None,
        };
        let worse = change.map(|c| if higher_is_better(&m) { -c } else { c });
        let flag = match worse {
            Some(x) if x > threshold => {
                regressions += 1;
                "REGRESSION"
            }
            Some(x) if x < -threshold => "better",
            _ => "",
        };
        let r = |x: &Option<f64>| x.map_or("—".into(), |v| format!("{v:.2}x"));
        table.push(vec![
            w,
            fmt_metric(om, *oours),
            fmt_metric(&m, ours),
            change.map_or("—".into(), |c| format!("{c:+.1}%")),
            format!("{} → {}", r(oratio), r(&ratio)),
            flag.into(),
        ]);
    }
    print_table(
        &header,
        &table,
        &format!(
            "{} vs {}; worse by more than {threshold}% is flagged",
            old_path.display(),
            new_path.display()
        ),
    );
    Ok(regressions)
}

fn fmt_metric(metric: &str, v: Option<f64>) -> String {
    match v {
        None => "—".into(),
        Some(n) => match metric {
            "ns_per_op" => format!("{n:.1} ns"),
            "p50_us" | "p99_us" => format!("{n:.1} µs"),
            "ops_per_s" => ops(n),
            "hit_pct" => format!("{n:.2} %"),
            _ => format!("{n:.3}"),
        },
    }
}

/// The table goes to stdout: it is what the command is for.
#[allow(clippy::print_stdout)]
fn print_table(header: &[String], table: &[Vec<String>], conditions: &str) {
    let width = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = header.iter().map(|h| width(h)).collect();
    for line in table {
        for (w, c) in widths.iter_mut().zip(line) {
            *w = (*w).max(width(c));
        }
    }
    let fmt_line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - width(c))))
            .collect();
        format!("| {} |", parts.join(" | "))
    };
    println!();
    println!("{}", fmt_line(header));
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    println!("|-{}-|", rule.join("-|-"));
    for line in table {
        println!("{}", fmt_line(line));
    }
    println!("({conditions})");
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JSON object literal as an `Object`.
    fn obj(v: Value) -> Object {
        match v {
            Value::Object(o) => o,
            _ => Object::new(),
        }
    }

    #[test]
    fn reads_lines_of_the_earlier_hand_written_writer() {
        // As the benches wrote them before serde_json: `1.5`, `7` (an integral f64), `null`.
        let o = parse_object(r#"{"a":"x\"y\u00b5","b":-1.5e3,"c":true,"d":null,"e":7}"#);
        assert_eq!(
            o,
            Ok(obj(
                json!({"a": "x\"yµ", "b": -1500.0, "c": true, "d": null, "e": 7})
            ))
        );
        let o = o.unwrap_or_default();
        assert_eq!((get_str(&o, "a"), get_num(&o, "e")), ("x\"yµ", Some(7.0)));
        assert_eq!((get_num(&o, "d"), get_str(&o, "b")), (None, ""));
        assert!(parse_object(r#"{"a":1} x"#).is_err());
        assert!(parse_object("[1]").is_err());
        assert_eq!(parse_object("{}"), Ok(Object::new()));
    }

    #[test]
    fn reads_the_rows_of_a_report() {
        let j = json!({"rows": [
            {"workload": "w", "metric": "ns_per_op", "tiercache": {"ns_per_op": 3}, "ratio": null}
        ]});
        assert_eq!(
            report_rows(&j),
            vec![("w".into(), "ns_per_op".into(), Some(3.0), None)]
        );
    }

    #[test]
    fn a_report_is_written_and_read_back() {
        let dir = std::env::temp_dir().join(format!("xtask-report-test-{}", std::process::id()));
        let raw = dir.join("raw");
        let _ = std::fs::create_dir_all(&raw);
        // A line as the hand-written writer wrote it, then lines as serde_json writes them.
        let old = r#"{"type":"result","workload":"w","subject":"p","role":"peer","label":"l\"x","metric":"ns_per_op","ns_per_op":30}"#;
        let new = [
            json!({"type": "result", "workload": "w", "subject": "tiercache", "role": "tiercache",
                   "label": "tiercache", "metric": "ns_per_op", "ns_per_op": 45.0, "bad": null}),
            json!({"type": "target", "workload": "w", "metric": "ns_per_op", "reference": "p",
                   "kind": "max_ratio", "value": 2.0, "text": "<= 2x"}),
            json!({"type": "conditions", "quick": true, "cores": 2, "seconds": 3.0}),
        ];
        let text = format!("{old}\n{}", new.iter().map(line).collect::<String>());
        let _ = std::fs::write(raw.join("a.jsonl"), text);
        assert_eq!(write(&raw, &dir), Ok(()));
        let report = std::fs::read_to_string(dir.join("report.json")).unwrap_or_default();
        let j: Value = serde_json::from_str(&report).unwrap_or_default();
        assert_eq!(
            report_rows(&j),
            vec![("w".into(), "ns_per_op".into(), Some(45.0), Some(1.5))]
        );
        assert_eq!(j["rows"][0]["met"], json!(true));
        assert_eq!(j["rows"][0]["targets"][0]["judged"], json!("1.50x"));
        assert_eq!(j["rows"][0]["peers"][0]["label"], json!("l\"x"));
        assert_eq!(j["conditions"]["cores"], json!(2));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn fig(m: &str, v: f64) -> Object {
        obj(json!({"metric": m, m: v}))
    }

    fn target(m: &str, kind: &str, v: f64) -> Object {
        obj(json!({"metric": m, "reference": "p", "kind": kind, "value": v, "text": "t"}))
    }

    fn row(metric: &str, ours: f64, theirs: f64, t: Object) -> Row {
        Row {
            workload: "w".into(),
            metric: metric.into(),
            tiercache: Some(fig(metric, ours)),
            variants: Vec::new(),
            peers: vec![("p".to_owned(), fig(metric, theirs))],
            targets: vec![t],
        }
    }

    #[test]
    fn judges_every_kind_of_target() {
        let j = judge(&row(
            "ns_per_op",
            45.0,
            30.0,
            target("ns_per_op", "max_ratio", 1.5),
        ));
        assert_eq!(j.verdicts[0].met, Some(true));
        assert_eq!(j.ratio, Some(1.5));
        let j = judge(&row(
            "ns_per_op",
            46.0,
            30.0,
            target("ns_per_op", "max_ratio", 1.5),
        ));
        assert_eq!(j.verdicts[0].met, Some(false));

        let j = judge(&row(
            "p50_us",
            36.0,
            30.0,
            target("p50_us", "max_diff", 5.0),
        ));
        assert_eq!(j.verdicts[0].met, Some(false));
        assert_eq!(j.verdicts[0].note, "+6.0 µs");

        let j = judge(&row(
            "ops_per_s",
            95.0,
            100.0,
            target("ops_per_s", "min_ratio", 0.9),
        ));
        assert_eq!(j.verdicts[0].met, Some(true));
        let j = judge(&row(
            "hit_pct",
            60.0,
            60.5,
            target("hit_pct", "min_diff", -0.3),
        ));
        assert_eq!(j.verdicts[0].met, Some(false));
        let j = judge(&row(
            "p99_us",
            50_500.0,
            1.0,
            target("p99_us", "max_abs", 51_000.0),
        ));
        assert_eq!(j.verdicts[0].met, Some(true));
    }

    #[test]
    fn chart_is_svg() {
        let s = chart_svg(
            &[("a <b>".into(), 4.0, true), ("c".into(), 0.5, false)],
            "x",
        );
        assert!(s.starts_with("<svg") && s.contains("a &lt;b&gt;") && s.contains("#c0392b"));
    }

    #[test]
    fn chart_leaves_out_zero_and_infinite_ratios() {
        let s = chart_svg(
            &[
                ("zero".into(), 0.0, true),
                ("inf".into(), f64::INFINITY, true),
                ("ok".into(), 2.0, true),
            ],
            "x",
        );
        assert!(s.contains(">ok<") && !s.contains(">zero<") && !s.contains(">inf<"));
    }
}
