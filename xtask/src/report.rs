//! The report of `cargo xtask bench`: reads the JSON lines the benches wrote to
//! `target/bench/raw/*.jsonl`, prints one table, writes `target/bench/report.json` and
//! `target/bench/report.md`.
//!
//! Lines are flat JSON objects (see `benches/src/lib.rs`): `"type":"result"` (one subject
//! measured on one workload), `"type":"target"` (what tiercache must reach on a workload) and
//! `"type":"conditions"` (written by xtask: cores, load, quick or not).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::Result;

/// A JSON scalar of a flat object.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

impl Value {
    fn to_json(&self) -> String {
        match self {
            Value::Str(s) => json_str(s),
            Value::Num(n) => json_num(*n),
            Value::Bool(b) => b.to_string(),
            Value::Null => "null".into(),
        }
    }
}

type Object = Vec<(String, Value)>;

fn get<'a>(o: &'a Object, key: &str) -> Option<&'a Value> {
    o.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn get_str<'a>(o: &'a Object, key: &str) -> &'a str {
    match get(o, key) {
        Some(Value::Str(s)) => s,
        _ => "",
    }
}

fn get_num(o: &Object, key: &str) -> Option<f64> {
    match get(o, key) {
        Some(Value::Num(n)) if n.is_finite() => Some(*n),
        _ => None,
    }
}

/// Quote and escape a JSON string.
pub(crate) fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
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

fn json_num(n: f64) -> String {
    if n.is_finite() {
        format!("{n}")
    } else {
        "null".into()
    }
}

/// Parse one flat JSON object (string, number, bool and null values only).
fn parse_object(line: &str) -> std::result::Result<Object, String> {
    let mut p = Parser {
        s: line.as_bytes(),
        i: 0,
    };
    p.ws();
    p.expect(b'{')?;
    let mut obj = Vec::new();
    p.ws();
    if p.peek() == Some(b'}') {
        p.i += 1;
    } else {
        loop {
            p.ws();
            let k = p.string()?;
            p.ws();
            p.expect(b':')?;
            p.ws();
            let v = p.value()?;
            obj.push((k, v));
            p.ws();
            match p.next() {
                Some(b',') => continue,
                Some(b'}') => break,
                _ => return Err(format!("expected , or }} at byte {}", p.i)),
            }
        }
    }
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("trailing characters at byte {}", p.i));
    }
    Ok(obj)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek();
        self.i += 1;
        c
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.next() == Some(c) {
            Ok(())
        } else {
            Err(format!("expected {:?} at byte {}", c as char, self.i - 1))
        }
    }

    fn literal(&mut self, word: &str, v: Value) -> std::result::Result<Value, String> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(format!("bad literal at byte {}", self.i))
        }
    }

    fn value(&mut self) -> std::result::Result<Value, String> {
        match self.peek() {
            Some(b'"') => self.string().map(Value::Str),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                while matches!(
                    self.peek(),
                    Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                ) {
                    self.i += 1;
                }
                let text =
                    std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
                text.parse::<f64>()
                    .map(Value::Num)
                    .map_err(|e| format!("bad number {text:?}: {e}"))
            }
            _ => Err(format!(
                "unsupported value at byte {} (flat objects only)",
                self.i
            )),
        }
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        self.expect(b'"')?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            match self.next() {
                None => return Err("unterminated string".into()),
                Some(b'"') => break,
                Some(b'\\') => match self.next() {
                    Some(b'"') => out.push(b'"'),
                    Some(b'\\') => out.push(b'\\'),
                    Some(b'/') => out.push(b'/'),
                    Some(b'n') => out.push(b'\n'),
                    Some(b'r') => out.push(b'\r'),
                    Some(b't') => out.push(b'\t'),
                    Some(b'b') => out.push(8),
                    Some(b'f') => out.push(12),
                    Some(b'u') => {
                        let hex = self
                            .s
                            .get(self.i..self.i + 4)
                            .and_then(|h| std::str::from_utf8(h).ok())
                            .and_then(|h| u32::from_str_radix(h, 16).ok())
                            .ok_or("bad \\u escape")?;
                        self.i += 4;
                        let c = char::from_u32(hex).unwrap_or('\u{fffd}');
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                    _ => return Err(format!("bad escape at byte {}", self.i)),
                },
                Some(c) => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|e| e.to_string())
    }
}

/// One row of the table: a workload with tiercache and its peers.
struct Row {
    workload: String,
    metric: String,
    tiercache: Option<Object>,
    /// By peer subject.
    peers: BTreeMap<String, Object>,
    target: Option<Object>,
}

struct Judged {
    reference: Option<String>,
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
    note: String,
}

fn judge(row: &Row, peer_order: &[(String, String)]) -> Judged {
    let reference = row
        .target
        .as_ref()
        .map(|t| get_str(t, "reference").to_owned())
        .or_else(|| {
            peer_order
                .iter()
                .map(|(s, _)| s)
                .find(|s| row.peers.contains_key(*s))
                .cloned()
        });
    let metric = row
        .target
        .as_ref()
        .map(|t| get_str(t, "metric").to_owned())
        .unwrap_or_else(|| row.metric.clone());
    let ours = row.tiercache.as_ref().and_then(|o| get_num(o, &metric));
    let theirs = reference
        .as_ref()
        .and_then(|r| row.peers.get(r))
        .and_then(|o| get_num(o, &metric));
    let ratio = match (ours, theirs) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let mut met = None;
    let mut note = String::new();
    let mut target = "—".to_owned();
    if let Some(t) = &row.target {
        target = get_str(t, "text").to_owned();
        let limit = get_num(t, "value");
        match (get_str(t, "kind"), ours, theirs, limit) {
            ("max_ratio", _, _, Some(l)) => met = ratio.map(|r| r <= l),
            ("max_diff", Some(a), Some(b), Some(l)) => {
                met = Some(a - b <= l);
                note = format!("{:+.1} {}", a - b, unit_of(&metric));
            }
            _ => {}
        }
    }
    Judged {
        reference,
        ratio,
        target,
        met,
        note,
    }
}

fn unit_of(metric: &str) -> &'static str {
    match metric {
        "ns_per_op" => "ns",
        "p50_us" | "p99_us" | "mean_us" => "µs",
        "ops_per_s" => "op/s",
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
    match metric {
        "ns_per_op" => get_num(o, "ns_per_op").map_or("?".into(), |n| format!("{n:.1} ns")),
        "p50_us" => match (get_num(o, "p50_us"), get_num(o, "p99_us")) {
            (Some(a), Some(b)) => format!("p50 {a:.1} / p99 {b:.1} µs"),
            (Some(a), None) => format!("p50 {a:.1} µs"),
            _ => "?".into(),
        },
        "ops_per_s" => get_num(o, "ops_per_s").map_or("?".into(), ops),
        m => get_num(o, m).map_or("?".into(), |n| format!("{n:.3} {m}")),
    }
}

/// Read the raw lines, print the table, write report.json and report.md.
pub(crate) fn write(raw_dir: &Path, out_dir: &Path) -> Result<()> {
    let mut files: Vec<_> = std::fs::read_dir(raw_dir)
        .map_err(|e| format!("no bench results in {}: {e}", raw_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("jsonl"))
        .collect();
    files.sort();
    let mut rows: Vec<Row> = Vec::new();
    let mut peer_order: Vec<(String, String)> = Vec::new(); // (subject, label)
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
                        peers: BTreeMap::new(),
                        target: None,
                    });
                    rows.len() - 1
                }
            };
            let row = &mut rows[idx];
            match kind.as_str() {
                "target" => row.target = Some(o),
                "result" => {
                    if row.metric.is_empty() {
                        row.metric = get_str(&o, "metric").to_owned();
                    }
                    if get_str(&o, "role") == "tiercache" {
                        row.tiercache = Some(o);
                    } else {
                        let subject = get_str(&o, "subject").to_owned();
                        if !peer_order.iter().any(|(s, _)| *s == subject) {
                            let label = match get_str(&o, "label") {
                                "" => subject.clone(),
                                l => l.to_owned(),
                            };
                            peer_order.push((subject.clone(), label));
                        }
                        row.peers.insert(subject, o);
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

    // The table: workload | tiercache | each peer | ratio | target | met?
    let mut header = vec!["workload".to_owned(), "tiercache".to_owned()];
    header.extend(peer_order.iter().map(|(_, l)| l.clone()));
    header.extend(["ratio".to_owned(), "target".to_owned(), "met?".to_owned()]);
    let mut table: Vec<Vec<String>> = Vec::new();
    let mut judged = Vec::new();
    for row in &rows {
        let j = judge(row, &peer_order);
        let mut line = vec![
            row.workload.clone(),
            cell(row.tiercache.as_ref(), &row.metric),
        ];
        for (s, _) in &peer_order {
            line.push(cell(row.peers.get(s), &row.metric));
        }
        let label = |s: &str| {
            peer_order
                .iter()
                .find(|(p, _)| p == s)
                .map_or(s.to_owned(), |(_, l)| l.clone())
        };
        line.push(match (j.ratio, &j.reference) {
            (Some(r), Some(p)) => format!("{r:.2}x {}", label(p)),
            _ => "—".into(),
        });
        line.push(j.target.clone());
        line.push(match j.met {
            Some(m) => {
                let word = if m { "yes" } else { "NO" };
                if j.note.is_empty() {
                    word.to_owned()
                } else {
                    format!("{word} ({})", j.note)
                }
            }
            None => "—".into(),
        });
        table.push(line);
        judged.push(j);
    }

    let cond_text = conditions.as_ref().map_or_else(
        || "run conditions unknown".to_owned(),
        |c| {
            format!(
                "{} cores; {} run; load average {} before, {} after; rustc processes running: {} before, {} after; {} s for cargo bench, build included",
                get_num(c, "cores").unwrap_or(0.0),
                if get(c, "quick") == Some(&Value::Bool(true)) { "--quick" } else { "full" },
                get_str(c, "loadavg_before"),
                get_str(c, "loadavg_after"),
                get_num(c, "rustc_running_before").unwrap_or(0.0),
                get_num(c, "rustc_running_after").unwrap_or(0.0),
                get_num(c, "seconds").unwrap_or(0.0),
            )
        },
    );

    print_table(&header, &table, &cond_text);

    std::fs::create_dir_all(out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;

    // report.md
    let mut md = String::from("# tiercache benchmarks\n\n");
    let _ = writeln!(md, "Measured by `cargo xtask bench`: {cond_text}.\n");
    let _ = writeln!(
        md,
        "Ratios compare figures measured in the same run; absolute numbers drift between machines.\n"
    );
    let _ = writeln!(md, "| {} |", header.join(" | "));
    let _ = writeln!(md, "|{}", header.iter().map(|_| "---|").collect::<String>());
    for line in &table {
        let escaped: Vec<String> = line.iter().map(|c| c.replace('|', "\\|")).collect();
        let _ = writeln!(md, "| {} |", escaped.join(" | "));
    }
    md.push_str("\nHow each subject is measured:\n\n");
    let mut seen = Vec::new();
    for row in &rows {
        for o in row.tiercache.iter().chain(row.peers.values()) {
            // A peer shared by several rows is described once.
            let how = get_str(o, "how");
            if how.is_empty() || seen.contains(&how) {
                continue;
            }
            seen.push(how);
            let _ = writeln!(
                md,
                "- {} — {}: {how}",
                row.workload,
                match get_str(o, "label") {
                    "" => get_str(o, "subject"),
                    l => l,
                }
            );
        }
    }
    let md_path = out_dir.join("report.md");
    std::fs::write(&md_path, md).map_err(|e| format!("cannot write {}: {e}", md_path.display()))?;

    // report.json
    let obj = |o: &Object| {
        let fields: Vec<String> = o
            .iter()
            .map(|(k, v)| format!("{}:{}", json_str(k), v.to_json()))
            .collect();
        format!("{{{}}}", fields.join(","))
    };
    let mut js = String::from("{\n");
    let _ = writeln!(
        js,
        "  \"conditions\": {},",
        conditions.as_ref().map_or("null".into(), obj)
    );
    js.push_str("  \"rows\": [\n");
    for (i, (row, j)) in rows.iter().zip(&judged).enumerate() {
        let peers: Vec<String> = row.peers.values().map(obj).collect();
        let _ = write!(
            js,
            "    {{\"workload\":{},\"metric\":{},\"tiercache\":{},\"peers\":[{}],\"reference\":{},\
             \"ratio\":{},\"target\":{},\"met\":{}}}",
            json_str(&row.workload),
            json_str(&row.metric),
            row.tiercache.as_ref().map_or("null".into(), obj),
            peers.join(","),
            j.reference.as_deref().map_or("null".into(), json_str),
            j.ratio.map_or("null".into(), json_num),
            row.target.as_ref().map_or("null".into(), obj),
            j.met.map_or("null".into(), |m| m.to_string()),
        );
        js.push_str(if i + 1 < rows.len() { ",\n" } else { "\n" });
    }
    js.push_str("  ]\n}\n");
    let js_path = out_dir.join("report.json");
    std::fs::write(&js_path, js).map_err(|e| format!("cannot write {}: {e}", js_path.display()))?;
    eprintln!(
        "xtask: wrote {} and {}",
        js_path.display(),
        md_path.display()
    );
    Ok(())
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

    #[test]
    fn parses_flat_objects() {
        let o = parse_object(r#"{"a":"x\"y\u00b5","b":-1.5e3,"c":true,"d":null,"e":7}"#);
        assert_eq!(
            o,
            Ok(vec![
                ("a".into(), Value::Str("x\"yµ".into())),
                ("b".into(), Value::Num(-1500.0)),
                ("c".into(), Value::Bool(true)),
                ("d".into(), Value::Null),
                ("e".into(), Value::Num(7.0)),
            ])
        );
        assert!(parse_object(r#"{"a":[1]}"#).is_err());
        assert!(parse_object(r#"{"a":1} x"#).is_err());
        assert_eq!(parse_object("{}"), Ok(vec![]));
    }

    #[test]
    fn judges_ratio_and_diff_targets() {
        let peer = |m: &str, v: f64| -> Object {
            vec![
                ("metric".into(), Value::Str(m.into())),
                (m.into(), Value::Num(v)),
            ]
        };
        let target = |m: &str, kind: &str, v: f64| -> Object {
            vec![
                ("metric".into(), Value::Str(m.into())),
                ("reference".into(), Value::Str("p".into())),
                ("kind".into(), Value::Str(kind.into())),
                ("value".into(), Value::Num(v)),
                ("text".into(), Value::Str("t".into())),
            ]
        };
        let order = vec![("p".to_owned(), "P".to_owned())];
        let mut row = Row {
            workload: "w".into(),
            metric: "ns_per_op".into(),
            tiercache: Some(peer("ns_per_op", 45.0)),
            peers: BTreeMap::from([("p".to_owned(), peer("ns_per_op", 30.0))]),
            target: Some(target("ns_per_op", "max_ratio", 1.5)),
        };
        let j = judge(&row, &order);
        assert_eq!(j.met, Some(true));
        assert_eq!(j.ratio, Some(1.5));
        row.tiercache = Some(peer("ns_per_op", 46.0));
        assert_eq!(judge(&row, &order).met, Some(false));

        let row = Row {
            workload: "w".into(),
            metric: "p50_us".into(),
            tiercache: Some(peer("p50_us", 36.0)),
            peers: BTreeMap::from([("p".to_owned(), peer("p50_us", 30.0))]),
            target: Some(target("p50_us", "max_diff", 5.0)),
        };
        let j = judge(&row, &order);
        assert_eq!(j.met, Some(false));
        assert_eq!(j.note, "+6.0 µs");
    }
}
