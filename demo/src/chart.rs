//! The chart of the cache-off and cache-on runs: an SVG written as text (four bar pairs:
//! reads/s, read latency p50 and p99, database queries), each pair on its own scale.

use std::fmt::Write as _;
use std::path::Path;

use crate::compare::{times, Comparison};
use crate::report::thousands;

const WIDTH: f64 = 900.0;
const OFF_COLOUR: &str = "#9e9e9e";
const ON_COLOUR: &str = "#1f77b4";
/// The tallest bar.
const BAR_MAX: f64 = 190.0;

/// `&`, `<`, `>`, `"` and `'` as XML entities.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// One bar pair.
struct Metric {
    title: &'static str,
    hint: &'static str,
    off: Option<f64>,
    on: Option<f64>,
    ratio: Option<f64>,
    label: fn(f64) -> String,
}

fn per_sec(v: f64) -> String {
    format!("{}/s", thousands(v.round() as u64))
}

fn millis(v: f64) -> String {
    format!("{v:.2} ms")
}

fn count(v: f64) -> String {
    thousands(v.round() as u64)
}

/// Heights of two bars on a scale where the taller one is `BAR_MAX` (a non-zero value is at
/// least one pixel tall; nothing to draw for a missing or non-positive one).
fn heights(off: Option<f64>, on: Option<f64>) -> (f64, f64) {
    let top = off
        .into_iter()
        .chain(on)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let h = |v: Option<f64>| match v {
        Some(v) if top > 0.0 && v.is_finite() && v > 0.0 => (v / top * BAR_MAX).max(1.0),
        _ => 0.0,
    };
    (h(off), h(on))
}

/// The chart as SVG text. `notes` are lines under the title (load, database, machine).
pub fn svg(c: &Comparison, notes: &[String]) -> String {
    let metrics = [
        Metric {
            title: "reads per second",
            hint: "higher is better",
            off: Some(c.off.reads_per_sec),
            on: Some(c.on.reads_per_sec),
            ratio: c.throughput(),
            label: per_sec,
        },
        Metric {
            title: "read latency p50 (ms)",
            hint: "lower is better",
            off: c.off.p50_ms,
            on: c.on.p50_ms,
            ratio: c.p50(),
            label: millis,
        },
        Metric {
            title: "read latency p99 (ms)",
            hint: "lower is better",
            off: c.off.p99_ms,
            on: c.on.p99_ms,
            ratio: c.p99(),
            label: millis,
        },
        Metric {
            title: "database queries",
            hint: "lower is better",
            off: Some(c.off.db_queries as f64),
            on: Some(c.on.db_queries as f64),
            ratio: c.queries(),
            label: count,
        },
    ];
    // Top to bottom: title, notes, legend, then per metric its title, hint, the value
    // labels, the bars down to `base_y`, their names and the ratio.
    let legend_y = 60.0 + 16.0 * notes.len() as f64;
    let base_y = legend_y + 75.0 + BAR_MAX;
    let total_height = base_y + 55.0;
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{total_height}" viewBox="0 0 {WIDTH} {total_height}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        s,
        "<title>tiercache demo: the same load with the cache off and on</title>"
    );
    let _ = writeln!(
        s,
        r##"<rect x="0" y="0" width="{WIDTH}" height="{total_height}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        s,
        r##"<text x="20" y="30" font-size="18" font-weight="bold" fill="#222222">tiercache demo: the same load with the cache off and on</text>"##
    );
    for (i, note) in notes.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<text x="20" y="{}" font-size="12" fill="#555555">{}</text>"##,
            50 + 16 * i,
            escape(note)
        );
    }
    for (i, (colour, label)) in [
        (OFF_COLOUR, "cache off: every read is a database query"),
        (
            ON_COLOUR,
            "cache on: L1, then the shared L2, then the database",
        ),
    ]
    .iter()
    .enumerate()
    {
        let x = 20.0 + 330.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="14" height="14" fill="{colour}"/>"#,
            legend_y - 11.0
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{legend_y}" font-size="13" fill="#222222">{}</text>"##,
            x + 20.0,
            escape(label)
        );
    }
    let panel_width = (WIDTH - 40.0) / metrics.len() as f64;
    for (i, m) in metrics.iter().enumerate() {
        let x0 = 20.0 + panel_width * i as f64;
        let centre = x0 + panel_width / 2.0;
        let _ = writeln!(s, r#"<g class="metric">"#);
        let _ = writeln!(
            s,
            r##"<text x="{centre:.1}" y="{}" font-size="14" font-weight="bold" text-anchor="middle" fill="#222222">{}</text>"##,
            legend_y + 32.0,
            escape(m.title)
        );
        let _ = writeln!(
            s,
            r##"<text x="{centre:.1}" y="{}" font-size="11" text-anchor="middle" fill="#777777">{}</text>"##,
            legend_y + 47.0,
            m.hint
        );
        let (h_off, h_on) = heights(m.off, m.on);
        let bar_width = 56.0;
        for (value, height, colour, name, bx) in [
            (m.off, h_off, OFF_COLOUR, "off", centre - bar_width - 8.0),
            (m.on, h_on, ON_COLOUR, "on", centre + 8.0),
        ] {
            let top = base_y - height;
            let _ = writeln!(
                s,
                r#"<rect x="{bx:.1}" y="{top:.1}" width="{bar_width}" height="{height:.1}" fill="{colour}"><title>cache {name}: {}</title></rect>"#,
                value.map_or("-".into(), |v| escape(&(m.label)(v)))
            );
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle" fill="#222222">{}</text>"##,
                bx + bar_width / 2.0,
                top - 6.0,
                value.map_or("-".into(), |v| escape(&(m.label)(v)))
            );
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{}" font-size="12" text-anchor="middle" fill="#444444">cache {name}</text>"##,
                bx + bar_width / 2.0,
                base_y + 16.0
            );
        }
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" y1="{base_y}" x2="{:.1}" y2="{base_y}" stroke="#444444" stroke-width="1"/>"##,
            centre - bar_width - 20.0,
            centre + bar_width + 20.0
        );
        let _ = writeln!(
            s,
            r##"<text x="{centre:.1}" y="{}" font-size="12" text-anchor="middle" fill="#222222">on ÷ off: {}</text>"##,
            base_y + 38.0,
            escape(&times(m.ratio))
        );
        let _ = writeln!(s, "</g>");
    }
    let _ = writeln!(s, "</svg>");
    s
}

/// Write `svg` to `path`, creating its directory.
pub fn write(path: &Path, svg: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, svg)
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::compare::RunFigures;

    /// A small well-formedness check: one root `svg` element, every tag closed in order,
    /// attribute values quoted, `&` only in the five entities, no stray `<` or `>` in text.
    fn check_well_formed(xml: &str) -> Result<(), String> {
        let mut stack: Vec<String> = Vec::new();
        let mut roots = 0;
        let mut rest = xml;
        while !rest.is_empty() {
            let text_end = rest.find('<').unwrap_or(rest.len());
            check_text(&rest[..text_end])?;
            if text_end > 0 && stack.is_empty() && !rest[..text_end].trim().is_empty() {
                return Err(format!("text outside the root: {:?}", &rest[..text_end]));
            }
            rest = &rest[text_end..];
            if rest.is_empty() {
                break;
            }
            let close = rest.find('>').ok_or("a tag is not closed")?;
            let tag = &rest[1..close];
            rest = &rest[close + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().ok_or(format!("</{name}> closes nothing"))?;
                if open != name.trim() {
                    return Err(format!("<{open}> closed by </{name}>"));
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name = body.split_whitespace().next().ok_or("an empty tag")?;
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(format!("bad tag name {name:?}"));
            }
            check_attributes(&body[name.len()..])?;
            if stack.is_empty() {
                roots += 1;
                if name != "svg" {
                    return Err(format!("the root is <{name}>, not <svg>"));
                }
            }
            if !self_closing {
                stack.push(name.to_owned());
            }
        }
        match (roots, stack.last()) {
            (1, None) => Ok(()),
            (_, Some(open)) => Err(format!("<{open}> is never closed")),
            (n, None) => Err(format!("{n} root elements")),
        }
    }

    fn check_text(text: &str) -> Result<(), String> {
        if text.contains('>') {
            return Err(format!("a `>` in text: {text:?}"));
        }
        let mut rest = text;
        while let Some(at) = rest.find('&') {
            rest = &rest[at..];
            let entity = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                .iter()
                .find(|e| rest.starts_with(**e))
                .ok_or(format!("a bare `&` in {text:?}"))?;
            rest = &rest[entity.len()..];
        }
        Ok(())
    }

    /// ` a="1" b="x"`: names, `=`, double-quoted values with no `<` and escaped `&`.
    fn check_attributes(mut attrs: &str) -> Result<(), String> {
        loop {
            attrs = attrs.trim_start();
            if attrs.is_empty() {
                return Ok(());
            }
            let eq = attrs
                .find('=')
                .ok_or(format!("an attribute without a value: {attrs:?}"))?;
            let name = &attrs[..eq];
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-:".contains(c))
            {
                return Err(format!("bad attribute name {name:?}"));
            }
            let value = attrs[eq + 1..]
                .strip_prefix('"')
                .ok_or(format!("attribute {name} is not quoted"))?;
            let end = value
                .find('"')
                .ok_or(format!("attribute {name} is not closed"))?;
            if value[..end].contains('<') {
                return Err(format!("a `<` in attribute {name}"));
            }
            check_text(&value[..end])?;
            attrs = &value[end + 1..];
        }
    }

    fn comparison() -> Comparison {
        Comparison {
            off: RunFigures {
                requests: 20_000,
                reads: 19_000,
                db_queries: 21_003,
                db_read_selects: 19_000,
                reads_per_sec: 2_345.4,
                p50_ms: Some(12.34),
                p99_ms: Some(45.67),
                reads_from_database: 19_000,
                database_p99_ms: Some(45.67),
                cache_p99_ms: None,
                elapsed: Duration::from_secs(8),
            },
            on: RunFigures {
                requests: 20_000,
                reads: 19_000,
                db_queries: 4_321,
                db_read_selects: 2_318,
                reads_per_sec: 9_876.6,
                p50_ms: Some(2.5),
                p99_ms: Some(9.87),
                reads_from_database: 2_318,
                database_p99_ms: Some(20.5),
                cache_p99_ms: Some(3.5),
                elapsed: Duration::from_secs(2),
            },
        }
    }

    #[test]
    fn the_chart_is_well_formed_and_shows_both_runs() {
        let svg = svg(
            &comparison(),
            &["20,000 requests, 32 concurrent <zipf> & 5% writes".to_owned()],
        );
        check_well_formed(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        for value in [
            "2,345/s", "9,877/s", "12.34 ms", "2.50 ms", "45.67 ms", "9.87 ms", "21,003", "4,321",
        ] {
            assert!(svg.contains(value), "{value} missing from\n{svg}");
        }
        // The ratios, on ÷ off.
        for ratio in ["4.21×", "0.20×", "0.22×", "0.21×"] {
            assert!(svg.contains(ratio), "{ratio} missing from\n{svg}");
        }
        assert!(svg.contains("&lt;zipf&gt; &amp; 5%"));
        assert_eq!(svg.matches("<rect").count(), 1 + 2 + 8);
    }

    #[test]
    fn the_checker_refuses_broken_svg() {
        assert!(check_well_formed(r#"<svg><g></svg>"#).is_err());
        assert!(check_well_formed(r#"<svg><text>a & b</text></svg>"#).is_err());
        assert!(check_well_formed(r#"<svg width=1></svg>"#).is_err());
        assert!(check_well_formed(r#"<svg></svg><svg></svg>"#).is_err());
        assert!(check_well_formed(r#"<svg><rect x="1"/></svg>"#).is_ok());
    }

    #[test]
    fn the_taller_bar_sets_the_scale() {
        assert_eq!(heights(Some(50.0), Some(100.0)), (BAR_MAX / 2.0, BAR_MAX));
        assert_eq!(heights(Some(0.0), Some(0.0)), (0.0, 0.0));
        assert_eq!(heights(None, Some(3.0)), (0.0, BAR_MAX));
        // A tiny non-zero value stays visible.
        assert_eq!(heights(Some(1e6), Some(1.0)).1, 1.0);
    }

    #[test]
    fn a_run_without_reads_still_makes_a_valid_chart() {
        let mut c = comparison();
        c.on.p50_ms = None;
        c.on.p99_ms = None;
        c.on.reads_per_sec = 0.0;
        let svg = svg(&c, &[]);
        check_well_formed(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
    }

    #[test]
    fn the_chart_is_written_with_its_directory() {
        let dir = std::env::temp_dir().join(format!("demo-chart-test-{}", std::process::id()));
        let path = dir.join("nested").join("chart.svg");
        write(&path, "<svg/>").expect("written");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "<svg/>");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
