//! `streamherd coverage`: reads back what the `file` sinks archived and tells,
//! per source and UTC hour (or minute), how much of the time the archive
//! covers: events, gaps and their reasons, recovered events, limit-notice
//! omissions; optionally as a self-contained HTML page with a timeline each.

pub mod archive;
mod html;
mod scan;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use streamherd_actors::event::EventKind;
use streamherd_actors::sinks::file::FileSettings;
use streamherd_actors::sinks::OutputFormat;

use crate::config::Config;
use archive::Pattern;
use scan::{Scan, Selection, SourceData, MINUTE_US};

/// The definition printed in the header and written in README.md.
pub const COVERED_DEFINITION: &str = "covered = seconds of the bucket between the source's first and last event in \
the archive, minus the union of its gap intervals; covered% = covered / those seconds";

const HOUR_US: i64 = 60 * MINUTE_US;

/// Bucket size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    /// UTC hours.
    Hour,
    /// UTC minutes.
    Minute,
}

impl By {
    fn micros(self) -> i64 {
        match self {
            By::Hour => HOUR_US,
            By::Minute => MINUTE_US,
        }
    }
}

/// A UTC instant in microseconds since the epoch (`--since`, `--until`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

/// Reads `--since`/`--until`: RFC 3339, or `YYYY-MM-DD`, `YYYY-MM-DDTHH`,
/// `YYYY-MM-DDTHH:MM`, `YYYY-MM-DDTHH:MM:SS` taken as UTC.
pub fn parse_time(text: &str) -> Result<Timestamp, String> {
    let bad =
        || format!("`{text}` is not a time: use RFC 3339 (2026-11-22T10:00:00Z), YYYY-MM-DD or YYYY-MM-DDTHH (UTC)");
    if let Some(us) = scan::parse_rfc3339_us(text) {
        return Ok(Timestamp(us));
    }
    let (date, time) = match text.split_once(['T', 't', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| bad())?;
    let mut fields = [0u32; 3];
    if let Some(time) = time {
        let parts: Vec<&str> = time.split(':').collect();
        if parts.is_empty() || parts.len() > 3 {
            return Err(bad());
        }
        for (slot, part) in fields.iter_mut().zip(&parts) {
            if part.len() != 2 {
                return Err(bad());
            }
            *slot = part.parse().map_err(|_| bad())?;
        }
    }
    let at = date.and_hms_opt(fields[0], fields[1], fields[2]).ok_or_else(bad)?;
    Ok(Timestamp(at.and_utc().timestamp_micros()))
}

/// What `streamherd coverage` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    /// Events received at or after this.
    pub since: Option<Timestamp>,
    /// Events received before this.
    pub until: Option<Timestamp>,
    /// One source only.
    pub source: Option<String>,
    /// Bucket size.
    pub by: By,
    /// Where to write the HTML page.
    pub html: Option<PathBuf>,
    /// What relative path templates are resolved against (the service's
    /// working directory; the command's own by default).
    pub cwd: PathBuf,
}

/// Why there is no report.
#[derive(Debug, thiserror::Error)]
pub enum CoverageError {
    /// No file the templates can produce exists.
    #[error("no archive file found; searched: {0}")]
    NoArchive(String),
    /// `--since` is not before `--until`.
    #[error("--since {since} is not before --until {until}")]
    EmptyRange {
        /// As given.
        since: String,
        /// As given.
        until: String,
    },
    /// A file sink's settings that the config check let through but that
    /// cannot be read here.
    #[error("sink `{sink}`: {message}")]
    Sink {
        /// The sink's name.
        sink: String,
        /// What is wrong.
        message: String,
    },
    /// The HTML page could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The `--html` file.
        path: PathBuf,
        /// The OS's reason.
        source: std::io::Error,
    },
}

impl CoverageError {
    /// The exit code: 2 for what the arguments or config got wrong, 1 else.
    pub fn exit_code(&self) -> i32 {
        match self {
            CoverageError::EmptyRange { .. } | CoverageError::Sink { .. } => 2,
            CoverageError::NoArchive(_) | CoverageError::Write { .. } => 1,
        }
    }
}

/// A finished report.
#[derive(Debug)]
pub struct Outcome {
    /// The text table, for stdout.
    pub text: String,
    /// Lines for stderr: skipped sinks, unreadable files.
    pub warnings: Vec<String>,
}

/// An envelope file sink and what it archives.
#[derive(Debug)]
struct ArchiveSink {
    name: String,
    template: String,
    pattern: Pattern,
    sources: Option<Vec<String>>,
    /// `kinds` filter: `None` takes every kind.
    kinds: Option<Vec<EventKind>>,
    files: usize,
}

impl ArchiveSink {
    fn takes_gaps(&self) -> bool {
        self.kinds.as_ref().map_or(true, |k| k.contains(&EventKind::GAP))
    }
}

/// Reads the archive of `config`'s file sinks and builds the report (and
/// writes the HTML page when asked).
pub fn run(config: &Config, options: &Options) -> Result<Outcome, CoverageError> {
    let since_us = options.since.map_or(i64::MIN, |t| t.0);
    let until_us = options.until.map_or(i64::MAX, |t| t.0);
    if since_us >= until_us {
        return Err(CoverageError::EmptyRange {
            since: format_time(since_us, SecondsFormat::AutoSi),
            until: format_time(until_us, SecondsFormat::AutoSi),
        });
    }
    let mut warnings = Vec::new();
    let mut sinks = Vec::new();
    for spec in config.sinks.iter().filter(|s| s.kind == "file") {
        let name = spec.options.name.clone();
        let settings: FileSettings = serde_json::from_value(spec.settings.clone())
            .map_err(|e| CoverageError::Sink { sink: name.clone(), message: e.to_string() })?;
        if settings.format == OutputFormat::Payload {
            warnings.push(format!(
                "sink `{name}` is skipped: it writes format = \"payload\", whose lines carry no source, kind or received_at"
            ));
            continue;
        }
        let pattern = Pattern::parse(&settings.path, options.source.as_deref(), &options.cwd)
            .map_err(|message| CoverageError::Sink { sink: name.clone(), message })?;
        sinks.push(ArchiveSink {
            name,
            template: settings.path,
            pattern,
            sources: spec.options.sources.clone(),
            kinds: spec.options.kinds.clone(),
            files: 0,
        });
    }
    if sinks.is_empty() {
        return Err(CoverageError::NoArchive(format!(
            "{} has no file sink with format = \"envelope\"",
            config.file.display()
        )));
    }

    // A file two templates match is read once, as a file of both sinks.
    let mut files: Vec<(archive::Found, Vec<bool>)> = Vec::new();
    let mut by_path: HashMap<PathBuf, usize> = HashMap::new();
    for (i, sink) in sinks.iter_mut().enumerate() {
        let found = sink.pattern.find(&mut warnings);
        sink.files = found.len();
        for f in found {
            let key = std::fs::canonicalize(&f.path).unwrap_or_else(|_| f.path.clone());
            let slot = *by_path.entry(key).or_insert_with(|| {
                files.push((f, vec![false; 0]));
                files.len() - 1
            });
            files[slot].1.resize(i + 1, false);
            files[slot].1[i] = true;
        }
    }
    if files.is_empty() {
        let searched: Vec<String> = sinks
            .iter()
            .map(|s| format!("{} (sink `{}`, from {})", s.template, s.name, options.cwd.display()))
            .collect();
        let what = match &options.source {
            Some(source) => format!("{} for source `{source}`", searched.join(", ")),
            None => searched.join(", "),
        };
        return Err(CoverageError::NoArchive(what));
    }
    files.sort();

    let selection = Selection {
        source: options.source.clone(),
        since_us,
        until_us,
        sinks: sinks.iter().map(|s| (s.sources.clone(), s.kinds.is_none())).collect(),
    };
    let mut scan = Scan::new(selection);
    for (found, mask) in &mut files {
        mask.resize(sinks.len(), false);
        // Relative templates read best as relative paths.
        let shown = found.path.strip_prefix(&options.cwd).unwrap_or(&found.path);
        if let Err(e) = scan.read_file(&found.path, shown, mask) {
            warnings.push(format!("cannot read {}: {e}", found.path.display()));
        }
    }
    scan.finish();

    let report = Report::build(&scan, options.by, since_us, until_us);
    let text = render_text(&report, &scan, &sinks, options);
    if let Some(path) = &options.html {
        let page = html::page(&report, &header_lines(&report, &scan, &sinks, options));
        std::fs::write(path, page).map_err(|source| CoverageError::Write { path: path.clone(), source })?;
    }
    Ok(Outcome { text, warnings })
}

/// One bucket's figures (or a source's total).
#[derive(Debug, Clone, Default)]
pub(crate) struct Row {
    pub start_us: i64,
    pub events: u64,
    /// Seconds of the bucket between the source's first and last event.
    pub span_us: i64,
    pub covered_us: i64,
    pub gaps: u64,
    pub gap_us: i64,
    pub reasons: BTreeMap<String, u64>,
    pub recovered: u64,
    pub omitted: u64,
}

impl Row {
    fn is_empty(&self) -> bool {
        self.events == 0 && self.span_us == 0 && self.gaps == 0 && self.omitted == 0
    }

    fn reasons_text(&self) -> String {
        let parts: Vec<String> = self.reasons.iter().map(|(r, n)| format!("{r}×{n}")).collect();
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(" ")
        }
    }
}

/// A gap as shown: clipped to the report's range.
#[derive(Debug, Clone)]
pub(crate) struct ShownGap {
    pub from_us: i64,
    pub to_us: i64,
    pub reason: String,
}

/// One source's part of the report.
#[derive(Debug)]
pub(crate) struct SourceReport {
    pub name: String,
    pub rows: Vec<Row>,
    pub total: Row,
    pub gaps: Vec<ShownGap>,
    /// (when, tweets) for each limit notice that raised its connection's count.
    pub omissions: Vec<(i64, u64)>,
    /// Events per minute, within the range.
    pub minutes: BTreeMap<i64, u64>,
}

/// The whole report.
#[derive(Debug)]
pub(crate) struct Report {
    pub by: By,
    /// What the sources' figures span: events, gaps and notices in range.
    pub start_us: i64,
    pub end_us: i64,
    pub sources: Vec<SourceReport>,
}

impl Report {
    fn build(scan: &Scan, by: By, since_us: i64, until_us: i64) -> Report {
        let archive_span =
            scan.sources.iter().fold((i64::MAX, i64::MIN), |(lo, hi), s| (lo.min(s.first_us), hi.max(s.last_us)));
        let mut sources: Vec<SourceReport> =
            scan.sources.iter().filter_map(|s| source_report(s, by, since_us, until_us, archive_span)).collect();
        sources.sort_by(|a, b| a.name.cmp(&b.name));
        let mut start_us = i64::MAX;
        let mut end_us = i64::MIN;
        for s in &sources {
            let bounds = scan.sources.iter().find(|d| d.name == s.name).map(|d| {
                let lo = d.first_us.max(since_us);
                let hi = d.last_us.min(until_us);
                (lo, hi)
            });
            let points = bounds
                .into_iter()
                .flat_map(|(lo, hi)| [lo, hi])
                .chain(s.gaps.iter().flat_map(|g| [g.from_us, g.to_us]))
                .chain(s.omissions.iter().map(|o| o.0))
                .chain(s.minutes.keys().copied());
            for p in points {
                start_us = start_us.min(p);
                end_us = end_us.max(p);
            }
        }
        if start_us > end_us {
            start_us = 0;
            end_us = 0;
        }
        Report { by, start_us, end_us, sources }
    }
}

fn source_report(
    data: &SourceData,
    by: By,
    since_us: i64,
    until_us: i64,
    archive_span: (i64, i64),
) -> Option<SourceReport> {
    let size = by.micros();
    let bucket = |t: i64| t.div_euclid(size) * size;
    let mut rows: BTreeMap<i64, Row> = BTreeMap::new();
    fn row(rows: &mut BTreeMap<i64, Row>, start: i64) -> &mut Row {
        rows.entry(start).or_insert_with(|| Row { start_us: start, ..Row::default() })
    }
    let mut total = Row::default();

    for (&minute, &n) in &data.minutes {
        row(&mut rows, bucket(minute)).events += n;
        total.events += n;
    }

    // Gaps end where the archive ends: a `from` years back (a restart after
    // a long stop, or a bad clock) must not turn into years of buckets.
    let gaps_since = since_us.max(archive_span.0);
    let gaps_until = until_us.min(archive_span.1.saturating_add(1));
    let mut shown = Vec::new();
    for gap in &data.gaps {
        let from = gap.from_us.unwrap_or(gap.to_us);
        let (lo, hi) = (from.max(gaps_since), gap.to_us.min(gaps_until));
        let in_range = if from == gap.to_us { (gaps_since..gaps_until).contains(&from) } else { lo < hi };
        if !in_range {
            continue;
        }
        let mut b = bucket(lo);
        let mut first = true;
        loop {
            let seconds = (hi.min(b + size) - lo.max(b)).max(0);
            let r = row(&mut rows, b);
            r.gaps += 1;
            r.gap_us += seconds;
            *r.reasons.entry(gap.reason.clone()).or_default() += 1;
            if first {
                r.recovered += gap.recovered;
                first = false;
            }
            b += size;
            if b >= hi {
                break;
            }
        }
        total.gaps += 1;
        total.gap_us += hi - lo;
        *total.reasons.entry(gap.reason.clone()).or_default() += 1;
        total.recovered += gap.recovered;
        shown.push(ShownGap { from_us: lo, to_us: hi, reason: gap.reason.clone() });
    }

    // Time covered: the source's own span minus the union of its gaps.
    let (span_lo, span_hi) = (data.first_us.max(since_us), data.last_us.min(until_us));
    let union = union_of(shown.iter().map(|g| (g.from_us, g.to_us)));
    if span_lo < span_hi {
        let mut b = bucket(span_lo);
        while b < span_hi {
            let (lo, hi) = (span_lo.max(b), span_hi.min(b + size));
            let span = hi - lo;
            let covered = span - measure_within(&union, lo, hi);
            let r = row(&mut rows, b);
            r.span_us += span;
            r.covered_us += covered;
            total.span_us += span;
            total.covered_us += covered;
            b += size;
        }
    }

    let mut omissions = Vec::new();
    for (at, n) in omissions_of(&data.limits) {
        if n > 0 && (since_us..until_us).contains(&at) {
            row(&mut rows, bucket(at)).omitted += n;
            total.omitted += n;
            omissions.push((at, n));
        }
    }

    let rows: Vec<Row> = rows.into_values().filter(|r| !r.is_empty()).collect();
    if rows.is_empty() {
        return None;
    }
    Some(SourceReport {
        name: data.name.clone(),
        rows,
        total,
        gaps: shown,
        omissions,
        minutes: data.minutes.iter().map(|(k, v)| (*k, *v)).collect(),
    })
}

/// Sorted, merged intervals of positive length.
fn union_of(intervals: impl Iterator<Item = (i64, i64)>) -> Vec<(i64, i64)> {
    let mut all: Vec<(i64, i64)> = intervals.filter(|(a, b)| a < b).collect();
    all.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(all.len());
    for (a, b) in all {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// How much of `[lo, hi)` the sorted, disjoint `union` covers.
fn measure_within(union: &[(i64, i64)], lo: i64, hi: i64) -> i64 {
    let first = union.partition_point(|&(_, end)| end <= lo);
    union[first..].iter().take_while(|&&(start, _)| start < hi).map(|&(a, b)| b.min(hi) - a.max(lo)).sum()
}

/// Per limit notice, the tweets it adds: `track` counts since the
/// connection opened, so the increase over the connection's previous
/// notice; a smaller `track` is a new connection under the same id,
/// counting from 0 again.
fn omissions_of(limits: &[scan::Limit]) -> Vec<(i64, u64)> {
    let mut sorted: Vec<&scan::Limit> = limits.iter().collect();
    sorted.sort_by(|a, b| (&a.connection, a.at_us, a.seq).cmp(&(&b.connection, b.at_us, b.seq)));
    let mut out = Vec::with_capacity(sorted.len());
    let mut previous: Option<(&str, u64)> = None;
    for l in sorted {
        let added = match previous {
            Some((conn, track)) if conn == l.connection && l.track >= track => l.track - track,
            _ => l.track,
        };
        previous = Some((&l.connection, l.track));
        out.push((l.at_us, added));
    }
    out.sort_unstable();
    out
}

pub(crate) fn format_time(us: i64, precision: SecondsFormat) -> String {
    match DateTime::<Utc>::from_timestamp_micros(us) {
        Some(t) if us != i64::MIN && us != i64::MAX => t.to_rfc3339_opts(precision, true),
        _ if us == i64::MIN => "the beginning".into(),
        _ => "the end".into(),
    }
}

/// `2026-11-22T10:00Z`: a bucket's start.
pub(crate) fn bucket_label(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .map_or_else(|| us.to_string(), |t| t.format("%Y-%m-%dT%H:%MZ").to_string())
}

pub(crate) fn seconds(us: i64) -> String {
    format!("{:.3}", us as f64 / 1e6)
}

pub(crate) fn percent(part: i64, whole: i64) -> String {
    if whole <= 0 {
        "-".into()
    } else {
        format!("{:.1}", part as f64 * 100.0 / whole as f64)
    }
}

fn size_text(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The header: what was read and how to read the figures.
fn header_lines(report: &Report, scan: &Scan, sinks: &[ArchiveSink], options: &Options) -> Vec<String> {
    let by = match report.by {
        By::Hour => "hour",
        By::Minute => "minute",
    };
    let range = if report.sources.is_empty() {
        "nothing in range".to_owned()
    } else {
        format!(
            "{} .. {}",
            format_time(report.start_us, SecondsFormat::Secs),
            format_time(report.end_us, SecondsFormat::Secs)
        )
    };
    let mut lines = vec![format!(
        "coverage of {} source(s) by {by} (UTC, by received_at): {range}; {} file(s), {}, {} line(s)",
        report.sources.len(),
        scan.files,
        size_text(scan.bytes),
        scan.lines
    )];
    if options.since.is_some() || options.until.is_some() {
        lines.push(format!(
            "range asked: since {} until {}",
            format_time(options.since.map_or(i64::MIN, |t| t.0), SecondsFormat::AutoSi),
            format_time(options.until.map_or(i64::MAX, |t| t.0), SecondsFormat::AutoSi)
        ));
    }
    for sink in sinks {
        let mut line = format!("archive: sink `{}`: {} ({} file(s))", sink.name, sink.template, sink.files);
        if let Some(sources) = &sink.sources {
            let _ = write!(line, ", sources {}", sources.join(","));
        }
        if let Some(kinds) = &sink.kinds {
            let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
            let _ = write!(line, ", kinds {}", kinds.join(","));
        }
        lines.push(line);
    }
    lines.push(COVERED_DEFINITION.to_owned());
    for sink in sinks.iter().filter(|s| !s.takes_gaps()) {
        lines.push(format!(
            "note: sink `{}` does not take gap events: gaps are unknowable from its files, and time covered counts them as covered",
            sink.name
        ));
    }
    lines
}

pub(crate) const COLUMNS: [&str; 10] =
    ["source", "bucket", "events", "covered_s", "covered%", "gaps", "gap_s", "reasons", "recovered", "omitted"];

/// The table's cells, row by row: per source its buckets, then its total.
pub(crate) fn table_cells(report: &Report) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for source in &report.sources {
        let cells = |label: String, r: &Row| {
            vec![
                source.name.clone(),
                label,
                r.events.to_string(),
                seconds(r.covered_us),
                percent(r.covered_us, r.span_us),
                r.gaps.to_string(),
                seconds(r.gap_us),
                r.reasons_text(),
                r.recovered.to_string(),
                r.omitted.to_string(),
            ]
        };
        for r in &source.rows {
            out.push(cells(bucket_label(r.start_us), r));
        }
        out.push(cells("total".into(), &source.total));
    }
    out
}

fn render_text(report: &Report, scan: &Scan, sinks: &[ArchiveSink], options: &Options) -> String {
    let mut out = String::new();
    for line in header_lines(report, scan, sinks, options) {
        out.push_str(&line);
        out.push('\n');
    }
    out.push('\n');
    let rows = table_cells(report);
    if rows.is_empty() {
        out.push_str("(no events or gaps in range)\n");
    } else {
        let mut widths: Vec<usize> = COLUMNS.iter().map(|c| c.chars().count()).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        // Names and labels read left to right; numbers line up on the right.
        let left = |i: usize| matches!(i, 0 | 1 | 7);
        let mut line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut text = String::new();
            for (i, cell) in cells.enumerate() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                if i > 0 {
                    text.push_str("  ");
                }
                if left(i) {
                    text.push_str(cell);
                    text.push_str(&" ".repeat(pad));
                } else {
                    text.push_str(&" ".repeat(pad));
                    text.push_str(cell);
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&mut COLUMNS.iter().copied());
        let mut previous: Option<&str> = None;
        for row in &rows {
            if previous.is_some_and(|p| p != row[0]) {
                line(&mut std::iter::empty());
            }
            previous = Some(&row[0]);
            line(&mut row.iter().map(String::as_str));
        }
    }
    out.push('\n');
    let m = &scan.malformed;
    let _ = write!(out, "malformed lines: {}", m.count);
    if m.torn > 0 {
        let _ = write!(out, " ({} torn last line(s))", m.torn);
    }
    out.push('\n');
    for example in &m.examples {
        let _ = writeln!(out, "  {example}");
    }
    out
}

/// The working directory, for relative templates.
pub fn current_dir() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| Path::new(".").to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_341_600_000_000; // 2026-11-22T10:00:00Z

    #[test]
    fn times_in_every_spelling() {
        assert_eq!(parse_time("2026-11-22T10:00:00Z"), Ok(Timestamp(T0)));
        assert_eq!(parse_time("2026-11-22T11:00:00+01:00"), Ok(Timestamp(T0)));
        assert_eq!(parse_time("2026-11-22T10"), Ok(Timestamp(T0)));
        assert_eq!(parse_time("2026-11-22T10:30"), Ok(Timestamp(T0 + 30 * MINUTE_US)));
        assert_eq!(parse_time("2026-11-22"), Ok(Timestamp(T0 - 10 * HOUR_US)));
        for bad in ["2026-11-22T1", "2026-13-01", "yesterday", "2026-11-22T10:00:00:00", "2026-11-22T25"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unions_and_measures() {
        let u = union_of([(5, 10), (0, 3), (2, 4), (10, 12), (20, 20)].into_iter());
        assert_eq!(u, [(0, 4), (5, 12)]);
        assert_eq!(measure_within(&u, 0, 100), 11);
        assert_eq!(measure_within(&u, 3, 6), 2);
        assert_eq!(measure_within(&u, 12, 20), 0);
    }

    #[test]
    fn omissions_count_increases_and_resets() {
        let l = |connection: &str, at_us, track, seq| scan::Limit { connection: connection.into(), at_us, track, seq };
        let limits = [l("a/0", 1, 10, 1), l("a/0", 2, 25, 2), l("a/0", 3, 4, 3), l("a/0", 4, 9, 4), l("a/1", 2, 7, 5)];
        let total: u64 = omissions_of(&limits).iter().map(|o| o.1).sum();
        assert_eq!(total, 25 + 9 + 7);
    }
}
