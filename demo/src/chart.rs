//! The chart of the cache-off and cache-on runs (four bar pairs: reads/s, read latency p50
//! and p99, database queries), each pair on its own scale, drawn with plotters' SVG backend
//! (see docs/adr/0004-charts-with-plotters-in-the-demo.md).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::compare::{times, Comparison};
use crate::report::thousands;

const WIDTH: u32 = 900;
const OFF_COLOUR: RGBColor = RGBColor(0x9e, 0x9e, 0x9e);
const ON_COLOUR: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const TEXT: RGBColor = RGBColor(0x22, 0x22, 0x22);
const GREY: RGBColor = RGBColor(0x55, 0x55, 0x55);
/// The tallest bar.
const BAR_MAX: u32 = 190;

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

/// A sans-serif font of `px` pixels in the SVG (plotters' SVG backend writes a font size of
/// `size / 1.24`).
fn font(px: f64) -> FontDesc<'static> {
    ("sans-serif", px * 1.24).into_font()
}

/// Text of `px` pixels in `colour`, anchored at `h`, `v`.
fn text(px: f64, colour: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    font(px).color(&colour).pos(Pos::new(h, v))
}

/// The chart as SVG text. `notes` are lines under the title (load, database, machine).
pub fn svg(c: &Comparison, notes: &[String]) -> Result<String, String> {
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
    // labels, the bars, their names and the ratio.
    let legend_y = 60 + 16 * notes.len() as i32;
    let height = legend_y as u32 + 75 + BAR_MAX + 55;
    let mut out = String::new();
    draw(&mut out, (WIDTH, height), legend_y, &metrics, notes).map_err(|e| e.to_string())?;
    Ok(out)
}

fn draw(
    out: &mut String,
    size: (u32, u32),
    legend_y: i32,
    metrics: &[Metric],
    notes: &[String],
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    let root = SVGBackend::with_string(out, size).into_drawing_area();
    root.fill(&WHITE)?;
    let title = font(18.0).style(FontStyle::Bold).color(&TEXT);
    let title = title.pos(Pos::new(HPos::Left, VPos::Bottom));
    root.draw_text(
        "tiercache demo: the same load with the cache off and on",
        &title,
        (20, 30),
    )?;
    let note = text(12.0, GREY, HPos::Left, VPos::Bottom);
    for (i, n) in notes.iter().enumerate() {
        root.draw_text(n, &note, (20, 50 + 16 * i as i32))?;
    }
    let legend = [
        (OFF_COLOUR, "cache off: every read is a database query"),
        (
            ON_COLOUR,
            "cache on: L1, then the shared L2, then the database",
        ),
    ];
    for (i, (colour, label)) in legend.iter().enumerate() {
        let x = 20 + 330 * i as i32;
        let square = [(x, legend_y - 11), (x + 14, legend_y + 3)];
        root.draw(&Rectangle::new(square, colour.filled()))?;
        let style = text(13.0, TEXT, HPos::Left, VPos::Bottom);
        root.draw_text(label, &style, (x + 20, legend_y + 2))?;
    }
    let (_, panels) = root.split_vertically(legend_y + 15);
    let panels = panels
        .margin(0, 15, 20, 20)
        .split_evenly((1, metrics.len()));
    for (m, area) in metrics.iter().zip(&panels) {
        let centre = area.dim_in_pixel().0 as i32 / 2;
        let bold = font(14.0).style(FontStyle::Bold).color(&TEXT);
        area.draw_text(
            m.title,
            &bold.pos(Pos::new(HPos::Center, VPos::Top)),
            (centre, 5),
        )?;
        let hint = text(11.0, RGBColor(0x77, 0x77, 0x77), HPos::Center, VPos::Top);
        area.draw_text(m.hint, &hint, (centre, 23))?;
        // The taller bar is BAR_MAX pixels high; a missing or non-finite value has no bar.
        let finite = |v: Option<f64>| v.filter(|v| v.is_finite() && *v >= 0.0);
        let top = finite(m.off)
            .into_iter()
            .chain(finite(m.on))
            .fold(0.0, f64::max);
        let top = if top > 0.0 { top } else { 1.0 };
        let mut chart = ChartBuilder::on(area)
            .margin_top(56)
            .x_label_area_size(40)
            .build_cartesian_2d((0u32..1).into_segmented(), 0.0..top)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .disable_y_axis()
            .axis_style(GREY)
            .x_label_style(font(12.0).color(&GREY))
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(0) => "cache off".to_owned(),
                SegmentValue::CenterOf(_) => "cache on".to_owned(),
                _ => String::new(),
            })
            .x_desc(format!("on ÷ off: {}", times(m.ratio)))
            .axis_desc_style(font(12.0).color(&TEXT))
            .draw()?;
        let bars = [
            (0u32, finite(m.off), OFF_COLOUR),
            (1, finite(m.on), ON_COLOUR),
        ];
        chart.draw_series(bars.iter().filter_map(|&(x, v, colour)| {
            let corners = [
                (SegmentValue::Exact(x), 0.0),
                (SegmentValue::Exact(x + 1), v?),
            ];
            let mut bar = Rectangle::new(corners, colour.filled());
            bar.set_margin(0, 0, 22, 22);
            Some(bar)
        }))?;
        let value = text(12.0, TEXT, HPos::Center, VPos::Bottom);
        chart.draw_series(bars.iter().map(|&(x, v, _)| {
            let label = v.map_or("-".into(), m.label);
            let at = (SegmentValue::CenterOf(x), v.unwrap_or(0.0));
            Text::new(label, at, value.clone())
        }))?;
    }
    root.present()
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
        )
        .unwrap_or_else(|e| panic!("{e}"));
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
    fn a_run_without_reads_still_makes_a_valid_chart() {
        let mut c = comparison();
        c.on.p50_ms = None;
        c.on.p99_ms = None;
        c.on.reads_per_sec = 0.0;
        let svg = svg(&c, &[]).unwrap_or_else(|e| panic!("{e}"));
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
