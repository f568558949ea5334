//! One pass over envelope files. Most lines are events whose payload does
//! not matter here, so the fixed key order of the envelope (`source`,
//! `kind`, `id`, `received_at`, ...) is scanned without parsing JSON; only
//! `gap` and `limit` lines, and lines of any other shape, go to serde_json.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Bytes asked of the OS per read: large enough that a read costs nothing
/// next to the scan.
const READ_BYTES: usize = 8 << 20;

/// Malformed lines whose place is kept for the report.
const MALFORMED_EXAMPLES: usize = 5;

pub const MINUTE_US: i64 = 60_000_000;

/// A gap event, as read.
#[derive(Debug, Clone)]
pub struct Gap {
    pub reason: String,
    /// Missing (some `spill_corrupt`): the gap has no duration.
    pub from_us: Option<i64>,
    pub to_us: i64,
    pub recovered: u64,
}

/// A Twitter limit notice: `track` undelivered tweets since `connection` opened.
#[derive(Debug, Clone)]
pub struct Limit {
    pub connection: String,
    pub at_us: i64,
    pub track: u64,
    /// Read order, for notices with the same `received_at`.
    pub seq: u64,
}

/// What one source's lines said.
#[derive(Debug)]
pub struct SourceData {
    pub name: String,
    /// The first and last `received_at` of any of its lines, the whole archive.
    pub first_us: i64,
    pub last_us: i64,
    /// Events other than gaps, per UTC minute, within the time filter.
    pub minutes: HashMap<i64, u64>,
    pub gaps: Vec<Gap>,
    /// Every limit notice, the whole archive: increases of `track` need the
    /// notices before the time filter too.
    pub limits: Vec<Limit>,
    /// The sink whose files are read for this source.
    sink: usize,
    /// The minute being counted, flushed into `minutes` when it changes.
    minute: i64,
    minute_count: u64,
}

impl SourceData {
    fn see(&mut self, at_us: i64) {
        self.first_us = self.first_us.min(at_us);
        self.last_us = self.last_us.max(at_us);
    }

    fn count_event(&mut self, at_us: i64) {
        let minute = at_us.div_euclid(MINUTE_US) * MINUTE_US;
        if minute != self.minute {
            self.flush_minute();
            self.minute = minute;
        }
        self.minute_count += 1;
    }

    fn flush_minute(&mut self) {
        if self.minute_count > 0 {
            *self.minutes.entry(self.minute).or_default() += self.minute_count;
            self.minute_count = 0;
        }
    }
}

/// Which sources' lines are counted, and from which sink's files.
#[derive(Debug, Clone)]
pub struct Selection {
    /// `--source`.
    pub source: Option<String>,
    /// `[since, until)` in microseconds.
    pub since_us: i64,
    pub until_us: i64,
    /// Per envelope file sink: its `sources` filter and whether it takes
    /// every kind. A source is read from one sink only, so two sinks that
    /// archive the same source do not count its events twice.
    pub sinks: Vec<(Option<Vec<String>>, bool)>,
}

impl Selection {
    /// The first sink in config order that takes `source` and every kind,
    /// else the first that takes `source`, else `fallback` (a source no
    /// longer in the config, found in `fallback`'s files).
    fn sink_for(&self, source: &str, fallback: usize) -> usize {
        let takes = |(sources, _): &(Option<Vec<String>>, bool)| {
            sources.as_ref().map_or(true, |list| list.iter().any(|s| s == source))
        };
        let all_kinds = self.sinks.iter().position(|s| takes(s) && s.1);
        all_kinds.or_else(|| self.sinks.iter().position(takes)).unwrap_or(fallback)
    }
}

/// Lines that could not be read as envelopes.
#[derive(Debug, Default)]
pub struct Malformed {
    pub count: u64,
    /// Of which the last line of a file, without its newline.
    pub torn: u64,
    /// `path:line: what`, the first few.
    pub examples: Vec<String>,
}

/// The whole pass.
#[derive(Debug)]
pub struct Scan {
    selection: Selection,
    pub sources: Vec<SourceData>,
    index: HashMap<String, usize>,
    /// The last line's source, to skip the hash lookup on runs of one source.
    last: Option<(Vec<u8>, usize)>,
    pub malformed: Malformed,
    pub lines: u64,
    pub bytes: u64,
    pub files: u64,
    seq: u64,
    /// The last date seen in a fast-path timestamp and its day number.
    day_cache: Option<([u8; 10], i64)>,
}

/// Where a line comes from, for the malformed report and sink choice.
struct Place<'a> {
    path: &'a Path,
    line: u64,
    /// Which sinks' templates matched this file.
    sinks: &'a [bool],
    first_sink: usize,
}

impl Scan {
    pub fn new(selection: Selection) -> Scan {
        Scan {
            selection,
            sources: Vec::new(),
            index: HashMap::new(),
            last: None,
            malformed: Malformed::default(),
            lines: 0,
            bytes: 0,
            files: 0,
            seq: 0,
            day_cache: None,
        }
    }

    /// Reads one file to its end. `sinks[i]`: the file is one of sink i's;
    /// `shown`: its name in the malformed report.
    pub fn read_file(&mut self, path: &Path, shown: &Path, sinks: &[bool]) -> io::Result<()> {
        let mut file = File::open(path)?;
        let first_sink = sinks.iter().position(|s| *s).unwrap_or(0);
        let mut buf = vec![0u8; READ_BYTES];
        let (mut start, mut end, mut scanned) = (0usize, 0usize, 0usize);
        let mut line_no = 0u64;
        self.files += 1;
        // The cached source was looked up for another file's sinks.
        self.last = None;
        loop {
            if end == buf.len() {
                if start > 0 {
                    buf.copy_within(start..end, 0);
                    end -= start;
                    scanned -= start;
                    start = 0;
                } else {
                    // One line longer than the buffer: it grows to hold it.
                    buf.resize(buf.len() * 2, 0);
                }
            }
            let n = match file.read(&mut buf[end..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            end += n;
            self.bytes += n as u64;
            while let Some(at) = memchr::memchr(b'\n', &buf[scanned..end]) {
                let stop = scanned + at;
                line_no += 1;
                let place = Place { path: shown, line: line_no, sinks, first_sink };
                self.line(&buf[start..stop], &place, false);
                start = stop + 1;
                scanned = start;
            }
            scanned = end;
        }
        if start < end {
            line_no += 1;
            let place = Place { path: shown, line: line_no, sinks, first_sink };
            self.line(&buf[start..end], &place, true);
        }
        Ok(())
    }

    /// Flushes the per-minute counters still open.
    pub fn finish(&mut self) {
        for source in &mut self.sources {
            source.flush_minute();
        }
    }

    fn line(&mut self, line: &[u8], place: &Place<'_>, last_without_newline: bool) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            if last_without_newline || !line.is_empty() {
                // Blank lines are no events; a writer never produces them.
                self.bad(place, last_without_newline, "blank line");
            }
            return;
        }
        self.lines += 1;
        match self.fast(line) {
            Some((source, kind, stamp)) => {
                let Some(at_us) = self.timestamp(stamp) else {
                    return self.bad(place, last_without_newline, "bad received_at");
                };
                if kind == b"gap" || kind == b"limit" {
                    return self.slow(line, place, last_without_newline);
                }
                let Ok(source) = std::str::from_utf8(source) else {
                    return self.bad(place, last_without_newline, "source is not UTF-8");
                };
                self.event(source, at_us, place);
            }
            None => self.slow(line, place, last_without_newline),
        }
    }

    /// `source`, `kind` and `received_at` of a line in the envelope's own
    /// key order without escapes in them; `None` for anything else, which
    /// then gets a full parse.
    fn fast<'l>(&self, line: &'l [u8]) -> Option<(&'l [u8], &'l [u8], &'l [u8])> {
        if line.last() != Some(&b'}') {
            return None;
        }
        let rest = line.strip_prefix(b"{\"source\":\"")?;
        let (source, rest) = plain_string(rest)?;
        let rest = rest.strip_prefix(b",\"kind\":\"")?;
        let (kind, rest) = plain_string(rest)?;
        let rest = rest.strip_prefix(b",\"id\":")?;
        let rest = match rest.strip_prefix(b"null") {
            Some(r) => r,
            None => plain_string(rest.strip_prefix(b"\"")?)?.1,
        };
        let rest = rest.strip_prefix(b",\"received_at\":\"")?;
        let (stamp, rest) = plain_string(rest)?;
        rest.starts_with(b",\"connection\":").then_some((source, kind, stamp))
    }

    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (what the sinks write) without chrono;
    /// any other RFC 3339 spelling through chrono.
    fn timestamp(&mut self, stamp: &[u8]) -> Option<i64> {
        if let Some(us) = self.fixed_timestamp(stamp) {
            return Some(us);
        }
        parse_rfc3339_us(std::str::from_utf8(stamp).ok()?)
    }

    fn fixed_timestamp(&mut self, b: &[u8]) -> Option<i64> {
        if b.len() != 27 || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'.' || b[26] != b'Z' {
            return None;
        }
        let date: [u8; 10] = b[..10].try_into().ok()?;
        let day = match self.day_cache {
            Some((cached, day)) if cached == date => day,
            _ => {
                let text = std::str::from_utf8(&date).ok()?;
                let parsed = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
                let day = parsed.signed_duration_since(chrono::NaiveDate::default()).num_days();
                self.day_cache = Some((date, day));
                day
            }
        };
        let hour = digits(&b[11..13])?;
        let minute = digits(&b[14..16])?;
        let second = digits(&b[17..19])?;
        let micros = digits(&b[20..26])?;
        // A leap second (`:60`) goes through chrono.
        if hour > 23 || minute > 59 || second > 59 {
            return None;
        }
        Some(((day * 24 + hour) * 60 + minute) * MINUTE_US + second * 1_000_000 + micros)
    }

    fn slow(&mut self, line: &[u8], place: &Place<'_>, last_without_newline: bool) {
        let envelope: SlowEnvelope<'_> = match serde_json::from_slice(line) {
            Ok(e) => e,
            Err(e) => {
                let what = if e.is_eof() { "incomplete JSON".to_owned() } else { format!("not an envelope ({e})") };
                return self.bad(place, last_without_newline, &what);
            }
        };
        let Some(at_us) = parse_rfc3339_us(&envelope.received_at) else {
            return self.bad(place, last_without_newline, "bad received_at");
        };
        let payload = envelope.payload.map(RawValue::get).unwrap_or("null");
        match &*envelope.kind {
            "gap" => {
                let Some(idx) = self.source_index(&envelope.source, place) else { return };
                let gap = match serde_json::from_str::<GapPayload<'_>>(payload) {
                    Ok(g) => g,
                    Err(_) => return self.bad(place, last_without_newline, "gap payload is not a gap"),
                };
                let to_us = gap.to.as_deref().and_then(parse_rfc3339_us).unwrap_or(at_us);
                let from_us = gap.from.as_deref().and_then(parse_rfc3339_us).map(|f| f.min(to_us));
                let source = &mut self.sources[idx];
                source.see(at_us);
                source.gaps.push(Gap {
                    reason: gap.reason.map_or_else(|| "unknown".to_owned(), Cow::into_owned),
                    from_us,
                    to_us,
                    recovered: gap.recovered.unwrap_or(0),
                });
            }
            kind => {
                let Some(idx) = self.source_index(&envelope.source, place) else { return };
                if kind == "limit" {
                    let track = serde_json::from_str::<LimitPayload>(payload).ok().and_then(|p| p.limit.track);
                    if let Some(track) = track {
                        self.seq += 1;
                        let connection = envelope.connection.as_deref().unwrap_or("").to_owned();
                        self.sources[idx].limits.push(Limit { connection, at_us, track, seq: self.seq });
                    }
                }
                self.count(idx, at_us);
            }
        }
    }

    fn event(&mut self, source: &str, at_us: i64, place: &Place<'_>) {
        let idx = match &self.last {
            Some((name, idx)) if name.as_slice() == source.as_bytes() => Some(*idx),
            _ => self.source_index(source, place),
        };
        if let Some(idx) = idx {
            self.count(idx, at_us);
        }
    }

    fn count(&mut self, idx: usize, at_us: i64) {
        let (since, until) = (self.selection.since_us, self.selection.until_us);
        let source = &mut self.sources[idx];
        source.see(at_us);
        if (since..until).contains(&at_us) {
            source.count_event(at_us);
        }
    }

    /// The source's slot when its lines count here: the `--source` asked
    /// for, and this file one of the sink it is read from.
    fn source_index(&mut self, name: &str, place: &Place<'_>) -> Option<usize> {
        if self.selection.source.as_deref().is_some_and(|s| s != name) {
            return None;
        }
        let idx = match self.index.get(name) {
            Some(idx) => *idx,
            None => {
                let sink = self.selection.sink_for(name, place.first_sink);
                self.sources.push(SourceData {
                    name: name.to_owned(),
                    first_us: i64::MAX,
                    last_us: i64::MIN,
                    minutes: HashMap::new(),
                    gaps: Vec::new(),
                    limits: Vec::new(),
                    sink,
                    minute: i64::MIN,
                    minute_count: 0,
                });
                self.index.insert(name.to_owned(), self.sources.len() - 1);
                self.sources.len() - 1
            }
        };
        if !place.sinks.get(self.sources[idx].sink).copied().unwrap_or(false) {
            return None;
        }
        self.last = Some((name.as_bytes().to_vec(), idx));
        Some(idx)
    }

    fn bad(&mut self, place: &Place<'_>, torn: bool, what: &str) {
        self.malformed.count += 1;
        let what = if torn {
            self.malformed.torn += 1;
            "torn last line (no newline)"
        } else {
            what
        };
        if self.malformed.examples.len() < MALFORMED_EXAMPLES {
            self.malformed.examples.push(format!("{}:{}: {what}", place.path.display(), place.line));
        }
    }
}

/// The bytes up to the next `"` and what follows it; `None` when a `\`
/// comes first (an escape: the full parse decodes it).
fn plain_string(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = memchr::memchr2(b'"', b'\\', s)?;
    (s[at] == b'"').then(|| (&s[..at], &s[at + 1..]))
}

fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |n, &d| d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0')))
}

/// An RFC 3339 timestamp as microseconds since the epoch.
pub fn parse_rfc3339_us(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_micros())
}

#[derive(Deserialize)]
struct SlowEnvelope<'a> {
    #[serde(borrow)]
    source: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    received_at: Cow<'a, str>,
    #[serde(borrow, default)]
    connection: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct GapPayload<'a> {
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    from: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    to: Option<Cow<'a, str>>,
    #[serde(default)]
    recovered: Option<u64>,
}

#[derive(Deserialize)]
struct LimitPayload {
    limit: LimitFields,
}

#[derive(Deserialize)]
struct LimitFields {
    #[serde(default)]
    track: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan() -> Scan {
        Scan::new(Selection { source: None, since_us: i64::MIN, until_us: i64::MAX, sinks: vec![(None, true)] })
    }

    #[test]
    fn fixed_timestamps_agree_with_chrono() {
        let mut s = scan();
        for text in ["2026-11-22T10:00:00.123456Z", "1970-01-01T00:00:00.000000Z", "1969-12-31T23:59:59.999999Z"] {
            assert_eq!(s.fixed_timestamp(text.as_bytes()), parse_rfc3339_us(text), "{text}");
        }
        assert_eq!(s.fixed_timestamp(b"2026-02-30T10:00:00.000000Z"), None);
        assert_eq!(s.fixed_timestamp(b"2026-11-22T24:00:00.000000Z"), None);
        assert_eq!(s.timestamp(b"2026-11-22T10:00:00Z"), parse_rfc3339_us("2026-11-22T10:00:00Z"));
    }

    #[test]
    fn the_fast_path_reads_the_envelope_prefix() {
        let s = scan();
        let line = br#"{"source":"election","kind":"tweet","id":"12","received_at":"2026-11-22T10:00:00.123456Z","connection":"election/3","for_user":null,"stream":null,"payload":{"a":1}}"#;
        let (source, kind, stamp) = s.fast(line).expect("the sinks' own shape");
        assert_eq!((source, kind, stamp), (&b"election"[..], &b"tweet"[..], &b"2026-11-22T10:00:00.123456Z"[..]));
        let null_id = br#"{"source":"a","kind":"x","id":null,"received_at":"t","connection":"a/0","payload":1}"#;
        assert!(s.fast(null_id).is_some());
        let escaped = br#"{"source":"we\"ird","kind":"tweet","id":null,"received_at":"t","connection":"a/0"}"#;
        assert!(s.fast(escaped).is_none(), "escapes go to serde_json");
        assert!(s.fast(br#"{"kind":"tweet","source":"a"}"#).is_none());
        assert!(s
            .fast(br#"{"source":"a","kind":"tweet","id":null,"received_at":"t","connection":"a/0","payl"#)
            .is_none());
    }
}
