//! The `--html` page: one file with inline CSS and inline SVG, nothing
//! fetched and no script, so it opens offline in any browser. Per source a
//! timeline over the report's range: events per minute as bars, gaps as
//! shaded spans, limit-notice omissions as ticks above the plot.

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};

use super::scan::MINUTE_US;
use super::{format_time, table_cells, Report, SourceReport, COLUMNS};

/// Geometry of every timeline, in SVG user units (= CSS pixels: the SVG is
/// not scaled).
const WIDTH: f64 = 1100.0;
const HEIGHT: f64 = 180.0;
const PLOT_X: f64 = 70.0;
const PLOT_WIDTH: f64 = 1000.0;
const PLOT_Y: f64 = 22.0;
const PLOT_HEIGHT: f64 = 110.0;

/// Colours the screenshot test looks for; keep tests/coverage.rs in step.
const BAR_COLOUR: &str = "#2f6db5";
const GAP_COLOUR: &str = "#f2a541";
const OMISSION_COLOUR: &str = "#c62828";

/// Tick spacings to choose from, in minutes.
const TICK_MINUTES: [i64; 14] = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080];

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The time axis shared by every timeline: whole minutes around the range.
struct Axis {
    start_us: i64,
    end_us: i64,
}

impl Axis {
    fn new(report: &Report) -> Axis {
        let start_us = report.start_us.div_euclid(MINUTE_US) * MINUTE_US;
        let end_us = (report.end_us.div_euclid(MINUTE_US) + 1) * MINUTE_US;
        Axis { start_us, end_us }
    }

    fn x(&self, us: i64) -> f64 {
        let span = (self.end_us - self.start_us).max(1) as f64;
        PLOT_X + (us.clamp(self.start_us, self.end_us) - self.start_us) as f64 / span * PLOT_WIDTH
    }

    fn minutes(&self) -> i64 {
        (self.end_us - self.start_us) / MINUTE_US
    }
}

/// The whole page.
pub(super) fn page(report: &Report, header: &[String]) -> String {
    let axis = Axis::new(report);
    let mut out = String::new();
    let range = format!(
        "{} .. {}",
        format_time(report.start_us, SecondsFormat::Secs),
        format_time(report.end_us, SecondsFormat::Secs)
    );
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>streamherd coverage: {}</title>\n<style>\n{}</style>\n</head>\n<body>\n",
        escape(&range),
        style()
    );
    let _ = writeln!(out, "<h1>streamherd coverage</h1>\n<ul class=\"meta\">");
    for line in header {
        let _ = writeln!(out, "<li>{}</li>", escape(line));
    }
    out.push_str("</ul>\n<table>\n<thead><tr>");
    for c in COLUMNS {
        let _ = write!(out, "<th>{}</th>", escape(c));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in table_cells(report) {
        let total = row.get(1).is_some_and(|b| b == "total");
        out.push_str(if total { "<tr class=\"total\">" } else { "<tr>" });
        for (i, cell) in row.iter().enumerate() {
            let class = if matches!(i, 0 | 1 | 7) { "" } else { " class=\"num\"" };
            let _ = write!(out, "<td{class}>{}</td>", escape(cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n<h2>Timelines</h2>\n");
    let _ = writeln!(
        out,
        "<p class=\"legend\"><span class=\"key bar\"></span> events per minute \
         <span class=\"key gap\"></span> gap <span class=\"key omission\"></span> limit notice with omitted tweets; times in UTC</p>"
    );
    for source in &report.sources {
        let _ = writeln!(out, "<h3>{}</h3>", escape(&source.name));
        timeline(&mut out, &axis, source);
    }
    out.push_str("</body>\n</html>\n");
    out
}

fn style() -> String {
    format!(
        "body {{ margin: 0; padding: 20px 24px; font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; \
         color: #222; background: #fff; }}\n\
         h1 {{ font-size: 22px; margin: 0 0 8px; }}\n\
         h2 {{ font-size: 18px; margin: 20px 0 4px; }}\n\
         h3 {{ font-size: 15px; margin: 12px 0 2px; }}\n\
         ul.meta {{ margin: 0 0 12px; padding-left: 18px; font-size: 13px; color: #444; }}\n\
         table {{ border-collapse: collapse; font-size: 13px; }}\n\
         th, td {{ padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: left; white-space: nowrap; }}\n\
         th {{ background: #eef1f5; }}\n\
         td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}\n\
         tr.total td {{ font-weight: 600; border-bottom: 2px solid #999; }}\n\
         p.legend {{ font-size: 13px; margin: 4px 0; }}\n\
         .key {{ display: inline-block; width: 12px; height: 12px; vertical-align: middle; margin: 0 2px 0 10px; }}\n\
         .key.bar {{ background: {BAR_COLOUR}; }}\n\
         .key.gap {{ background: {GAP_COLOUR}; }}\n\
         .key.omission {{ background: {OMISSION_COLOUR}; width: 3px; }}\n\
         svg.timeline {{ display: block; }}\n\
         svg.timeline .plot {{ fill: #f4f6f8; }}\n\
         svg.timeline .bar {{ fill: {BAR_COLOUR}; }}\n\
         svg.timeline .gap {{ fill: {GAP_COLOUR}; }}\n\
         svg.timeline .omission {{ fill: {OMISSION_COLOUR}; }}\n\
         svg.timeline .axis {{ stroke: #555; stroke-width: 1; }}\n\
         svg.timeline text {{ font-size: 11px; fill: #333; }}\n"
    )
}

fn timeline(out: &mut String, axis: &Axis, source: &SourceReport) {
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"timeline\" data-source=\"{}\" \
         data-start=\"{}\" data-end=\"{}\" data-plot-x=\"{PLOT_X}\" data-plot-width=\"{PLOT_WIDTH}\" \
         width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" shape-rendering=\"crispEdges\" role=\"img\">",
        escape(&source.name),
        format_time(axis.start_us, SecondsFormat::Secs),
        format_time(axis.end_us, SecondsFormat::Secs),
    );
    let _ = writeln!(out, "<title>{}: events per minute, gaps and limit omissions</title>", escape(&source.name));
    let _ = writeln!(
        out,
        "<rect class=\"plot\" x=\"{PLOT_X}\" y=\"{PLOT_Y}\" width=\"{PLOT_WIDTH}\" height=\"{PLOT_HEIGHT}\"/>"
    );

    // Gaps first, so that bars (events around a gap's edges) stay visible.
    for gap in &source.gaps {
        let x = axis.x(gap.from_us);
        // A gap without duration still gets a visible sliver.
        let width = (axis.x(gap.to_us) - x).max(1.0);
        let from = format_time(gap.from_us, SecondsFormat::AutoSi);
        let to = format_time(gap.to_us, SecondsFormat::AutoSi);
        let _ = writeln!(
            out,
            "<rect class=\"gap\" data-reason=\"{}\" data-from=\"{from}\" data-to=\"{to}\" x=\"{x:.2}\" y=\"{PLOT_Y}\" \
             width=\"{width:.2}\" height=\"{PLOT_HEIGHT}\"><title>gap ({}): {from} .. {to}</title></rect>",
            escape(&gap.reason),
            escape(&gap.reason),
        );
    }

    // Several minutes share a bar when there are more minutes than pixels;
    // the bar then shows their mean per minute.
    let minutes = axis.minutes().max(1);
    let per_bar = ((minutes as f64 / PLOT_WIDTH).ceil() as i64).max(1);
    let mut bars: Vec<(i64, f64)> = Vec::new();
    for (&minute, &n) in &source.minutes {
        let bin = (minute - axis.start_us).div_euclid(MINUTE_US * per_bar);
        match bars.last_mut() {
            Some((b, total)) if *b == bin => *total += n as f64,
            _ => bars.push((bin, n as f64)),
        }
    }
    let peak = bars.iter().map(|(_, n)| n / per_bar as f64).fold(0.0, f64::max);
    for (bin, total) in &bars {
        let start = axis.start_us + bin * MINUTE_US * per_bar;
        let end = start + MINUTE_US * per_bar;
        let rate = total / per_bar as f64;
        let x = axis.x(start);
        let full = axis.x(end) - x;
        // Leave a hairline between bars once they are wide enough to afford it.
        let width = if full >= 4.0 { full - 1.0 } else { full };
        let height = if peak > 0.0 { (rate / peak * PLOT_HEIGHT).max(1.0) } else { 0.0 };
        let _ = writeln!(
            out,
            "<rect class=\"bar\" x=\"{x:.2}\" y=\"{:.2}\" width=\"{width:.2}\" height=\"{height:.2}\"><title>{}: {rate:.0}/min</title></rect>",
            PLOT_Y + PLOT_HEIGHT - height,
            format_time(start, SecondsFormat::Secs),
        );
    }

    // Notices within one pixel share a tick: a rate-limited stream sends
    // one every few seconds, and a month of them must not become a million rects.
    let mut ticks: Vec<(i64, i64, u64)> = Vec::new();
    for &(at, n) in &source.omissions {
        let column = axis.x(at).floor() as i64;
        match ticks.last_mut() {
            Some((c, _, total)) if *c == column => *total += n,
            _ => ticks.push((column, at, n)),
        }
    }
    for (_, at, n) in ticks {
        let x = axis.x(at);
        let _ = writeln!(
            out,
            "<rect class=\"omission\" data-at=\"{}\" data-omitted=\"{n}\" x=\"{:.2}\" y=\"{:.2}\" width=\"2\" height=\"9\"><title>limit: {n} tweets omitted</title></rect>",
            format_time(at, SecondsFormat::AutoSi),
            x - 1.0,
            PLOT_Y - 11.0,
        );
    }

    axis_marks(out, axis, peak);
    out.push_str("</svg>\n");
}

fn axis_marks(out: &mut String, axis: &Axis, peak: f64) {
    let base = PLOT_Y + PLOT_HEIGHT;
    let _ = writeln!(
        out,
        "<line class=\"axis\" x1=\"{PLOT_X}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\"/>",
        PLOT_X + PLOT_WIDTH
    );
    let _ = writeln!(out, "<line class=\"axis\" x1=\"{PLOT_X}\" y1=\"{PLOT_Y}\" x2=\"{PLOT_X}\" y2=\"{base}\"/>");
    let _ =
        writeln!(out, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{peak:.0}/min</text>", PLOT_X - 6.0, PLOT_Y + 10.0);
    let _ = writeln!(out, "<text x=\"{}\" y=\"{base}\" text-anchor=\"end\">0</text>", PLOT_X - 6.0);

    let minutes = axis.minutes().max(1);
    let step = TICK_MINUTES.iter().copied().find(|m| minutes / m <= 10).unwrap_or(10080) * MINUTE_US;
    let multi_day = axis.end_us - axis.start_us > 86_400_000_000;
    let mut t = (axis.start_us + step - 1).div_euclid(step) * step;
    while t <= axis.end_us {
        let x = axis.x(t);
        let label = DateTime::<Utc>::from_timestamp_micros(t)
            .map(|d| d.format(if multi_day { "%m-%d %H:%M" } else { "%H:%M" }).to_string())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "<line class=\"axis\" x1=\"{x:.2}\" y1=\"{base}\" x2=\"{x:.2}\" y2=\"{}\"/><text x=\"{x:.2}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
            base + 5.0,
            base + 18.0,
        );
        t += step;
    }
    let _ = writeln!(
        out,
        "<text x=\"{PLOT_X}\" y=\"{}\">UTC, from {}</text>",
        base + 36.0,
        format_time(axis.start_us, SecondsFormat::Secs)
    );
}
