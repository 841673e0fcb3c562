//! `--plot FILE.svg`: the delivered MiB/s of each setting as bars, then one
//! panel per setting with every call's latency in call order, spool hits
//! and misses apart (two colours and two marker shapes, so that a grey
//! print still tells them apart). The latency axis is logarithmic and
//! shared by all panels: a hit takes milliseconds, a miss up to seconds,
//! and panels are compared at a glance.

use std::error::Error;
use std::path::Path;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::{BenchReport, Summary};

const WIDTH: u32 = 1000;
const BARS_HEIGHT_BASE: u32 = 90;
const BAR_HEIGHT: u32 = 30;
const PANEL_HEIGHT: u32 = 280;
const LEGEND_WIDTH: u32 = 160;

const HIT: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const MISS: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const OURS: RGBColor = RGBColor(0x4c, 0x72, 0xb0);
const OTHER: RGBColor = RGBColor(0x8c, 0x8c, 0x8c);

/// What a row is called in the bars and the panel titles.
fn label(s: &Summary) -> String {
    format!("{} {}", s.program, s.setting())
}

fn milliseconds(seconds: f64) -> f64 {
    // A log axis has no zero: the clock's resolution is the floor.
    (seconds * 1000.0).max(0.01)
}

/// Writes the plot of `report` to `path`.
pub fn write_plot(report: &BenchReport, path: &Path) -> Result<(), String> {
    let svg = render_svg(report).map_err(|e| format!("drawing the plot: {e}"))?;
    std::fs::write(path, svg).map_err(|e| format!("writing {}: {e}", path.display()))
}

pub fn render_svg(report: &BenchReport) -> Result<String, Box<dyn Error>> {
    let rows = report.summaries.len() as u32;
    let bars_height = BARS_HEIGHT_BASE + BAR_HEIGHT * rows.max(1);
    let height = bars_height + PANEL_HEIGHT * rows;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let (bars, mut rest) = root.split_vertically(bars_height);
        draw_bars(report, &bars)?;
        let latency_range = latency_range(report);
        for s in &report.summaries {
            let (panel, below) = rest.split_vertically(PANEL_HEIGHT);
            draw_latencies(s, latency_range.clone(), &panel)?;
            rest = below;
        }
        root.present()?;
    }
    Ok(svg)
}

/// The decades the calls fall in, in ms, across all settings: labels on
/// the axis are then powers of ten (1, 10, 100, 1000).
fn latency_range(report: &BenchReport) -> std::ops::Range<f64> {
    let all = report
        .summaries
        .iter()
        .flat_map(|s| &s.records)
        .map(|r| milliseconds(r.seconds));
    let (lo, hi) = all.fold((f64::INFINITY, 0f64), |(lo, hi), ms| {
        (lo.min(ms), hi.max(ms))
    });
    if lo > hi {
        return 1.0..1000.0;
    }
    let decade_below = |ms: f64| 10f64.powf((ms / 1.2).log10().floor());
    let decade_above = |ms: f64| 10f64.powf((ms * 1.2).log10().ceil());
    decade_below(lo)..decade_above(hi)
}

fn draw_bars(
    report: &BenchReport,
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
) -> Result<(), Box<dyn Error>> {
    let n = report.summaries.len().max(1);
    let max = report
        .summaries
        .iter()
        .map(|s| s.mib_per_second)
        .fold(0f64, f64::max)
        .max(1e-3);
    let clients = report.summaries.first().map_or(1, |s| s.setting.clients);
    let title = if clients > 1 {
        format!(
            "WAL delivered, MiB/s of all clients: {} calls per setting by each of {clients} \
             clients from {}",
            report.count, report.target
        )
    } else {
        format!(
            "WAL delivered, MiB/s: {} calls per setting from {}",
            report.count, report.target
        )
    };
    // The first row on top, as in the table.
    let top_down = |i: usize| n - 1 - i;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        // Wide enough for the longest setting's name at 13 px.
        .y_label_area_size(
            (report
                .summaries
                .iter()
                .map(|s| label(s).len())
                .max()
                .unwrap_or(0) as u32
                * 7
                + 20)
                .clamp(120, 480),
        )
        .build_cartesian_2d(0.0..max * 1.15, (0..n).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(TRANSPARENT)
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .x_desc("MiB/s")
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) if *i < n => report
                .summaries
                .get(top_down(*i))
                .map(label)
                .unwrap_or_default(),
            _ => String::new(),
        })
        .y_labels(n)
        .draw()?;
    chart.draw_series(report.summaries.iter().enumerate().map(|(i, s)| {
        let row = top_down(i);
        let colour = if s.program == "ours" { OURS } else { OTHER };
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(row)),
                (s.mib_per_second, SegmentValue::Exact(row + 1)),
            ],
            colour.filled(),
        );
        bar.set_margin(4, 4, 0, 0);
        bar
    }))?;
    chart.draw_series(report.summaries.iter().enumerate().map(|(i, s)| {
        Text::new(
            format!(" {:.1}", s.mib_per_second),
            (s.mib_per_second, SegmentValue::CenterOf(top_down(i))),
            TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
        )
    }))?;
    Ok(())
}

fn draw_latencies(
    s: &Summary,
    latency_range: std::ops::Range<f64>,
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
) -> Result<(), Box<dyn Error>> {
    let calls = s.records.len() as i64;
    let mut title = format!(
        "{}: {:.1} MiB/s, {:.2} s",
        label(s),
        s.mib_per_second,
        s.wall_seconds
    );
    if s.setting.clients > 1 {
        title.push_str(&format!(
            " ({} clients, one after another)",
            s.setting.clients
        ));
    }
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        // The legend's place: inside the plot it would hide calls.
        .margin_right(LEGEND_WIDTH)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0..calls + 1, latency_range.log_scale())?;
    chart
        .configure_mesh()
        .x_desc("call, in the order PostgreSQL made them")
        .y_desc("latency, ms (log scale)")
        .x_labels((calls as usize + 2).min(12))
        .y_labels(4)
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .y_label_formatter(&|ms| {
            if *ms >= 1.0 {
                format!("{ms:.0}")
            } else {
                format!("{ms:.2}")
            }
        })
        .light_line_style(TRANSPARENT)
        .draw()?;
    let points = || {
        s.records
            .iter()
            .enumerate()
            .map(|(i, r)| (i as i64 + 1, milliseconds(r.seconds), r))
    };
    chart.draw_series(LineSeries::new(
        points().map(|(x, y, _)| (x, y)),
        BLACK.mix(0.15),
    ))?;
    chart.draw_series(
        points()
            .filter(|(_, _, r)| r.spool_hit)
            .map(|(x, y, _)| Circle::new((x, y), 4, HIT.filled())),
    )?;
    chart.draw_series(
        points()
            .filter(|(_, _, r)| !r.spool_hit)
            .map(|(x, y, _)| TriangleMarker::new((x, y), 5, MISS.filled())),
    )?;
    chart.draw_series(
        points()
            .filter(|(_, _, r)| r.status != 0)
            .map(|(x, y, _)| Cross::new((x, y), 6, BLACK.stroke_width(2))),
    )?;

    // The legend in the panel's right margin, in pixels: plotters draws
    // its own inside the plot, over the latest calls.
    let (width, _) = area.dim_in_pixel();
    let left = width as i32 - LEGEND_WIDTH as i32 + 15;
    let mut entries = vec![
        (format!("spool hit ({})", s.hits.count), 0),
        (format!("spool miss ({})", s.misses.count), 1),
    ];
    if s.failed > 0 {
        entries.push((format!("failed ({})", s.failed), 2));
    }
    let top = 45;
    area.draw(&Rectangle::new(
        [
            (left - 8, top - 14),
            (width as i32 - 8, top + 22 * entries.len() as i32 - 8),
        ],
        BLACK.mix(0.4),
    ))?;
    for (row, (text, marker)) in entries.into_iter().enumerate() {
        let y = top + 22 * row as i32;
        let at = (left + 6, y);
        match marker {
            0 => area.draw(&Circle::new(at, 4, HIT.filled()))?,
            1 => area.draw(&TriangleMarker::new(at, 5, MISS.filled()))?,
            _ => area.draw(&Cross::new(at, 6, BLACK.stroke_width(2)))?,
        }
        area.draw(&Text::new(
            text,
            (left + 20, y),
            TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::{report, summary};
    use crate::runner::CallRecord;

    fn call(seconds: f64, spool_hit: bool, status: i32) -> CallRecord {
        CallRecord {
            wal: "000000010000000000000001".to_string(),
            status,
            seconds,
            spool_hit,
            cpu_seconds: 0.0,
            max_rss_kib: 0,
            bytes: 0,
            connections: None,
            channels: None,
            mismatch: false,
            error: None,
        }
    }

    /// Elements of `svg` named `tag` filled with `colour`.
    fn count(svg: &roxmltree::Document, tag: &str, colour: RGBColor) -> usize {
        let fill = format!("#{:02X}{:02X}{:02X}", colour.0, colour.1, colour.2);
        svg.descendants()
            .filter(|n| n.has_tag_name(tag) && n.attribute("fill") == Some(fill.as_str()))
            .count()
    }

    fn texts(svg: &roxmltree::Document) -> Vec<String> {
        svg.descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .map(|t| t.trim().to_string())
            .collect()
    }

    #[test]
    fn each_call_is_a_point_hits_and_misses_apart_each_setting_a_bar() {
        let mut p0 = summary("ours", 0, 4.0, 0);
        p0.records = vec![call(1.0, false, 0), call(1.1, false, 0)];
        p0.misses.count = 2;
        p0.mib_per_second = 16.0;
        let mut p8 = summary("ours", 8, 1.0, 1);
        p8.records = vec![
            call(0.9, false, 0),
            call(0.003, true, 0),
            call(0.004, true, 0),
            call(0.002, false, 4),
        ];
        (p8.hits.count, p8.misses.count) = (2, 2);
        p8.mib_per_second = 64.0;
        let svg = render_svg(&report(vec![p0, p8])).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        // One marker per call, plus one in each panel's legend.
        assert_eq!(count(&doc, "circle", HIT), 2 + 2);
        assert_eq!(count(&doc, "polygon", MISS), 2 + 2 + 2);
        let bars = doc
            .descendants()
            .filter(|n| n.has_tag_name("rect") && n.attribute("fill") == Some("#4C72B0"))
            .count();
        assert_eq!(bars, 2);
        let texts = texts(&doc);
        for expected in [
            "spool hit (0)",
            "spool miss (2)",
            "spool hit (2)",
            "failed (1)",
            "16.0",
            "64.0",
            "ours -p 8 keep on direct off async off: 64.0 MiB/s, 1.00 s",
            "latency, ms (log scale)",
            "MiB/s",
        ] {
            assert!(
                texts.iter().any(|t| t == expected),
                "{expected:?} in {texts:?}"
            );
        }
    }
}
