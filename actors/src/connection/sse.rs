//! Incremental Server-Sent Events parser (WHATWG HTML §9.2.6), the SSE
//! transport of every source that streams `text/event-stream`. Chunks may
//! split anywhere (inside a CRLF, inside UTF-8); memory stays bounded by the
//! line and event limits given at construction.

use std::mem;

/// The UTF-8 byte order mark, stripped once at the start of the stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One unit out of the parser, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A dispatched event.
    Event {
        /// The `event` field, or `message` when it was absent or empty.
        event: String,
        /// The `data` lines joined with LF (no trailing LF).
        data: String,
        /// The last event ID seen on the stream so far; it persists across events.
        last_event_id: String,
    },
    /// A comment line (Mastodon's `:)` preamble, `:thump` heartbeats): proof
    /// the connection is alive, so it feeds stall detection; carries nothing.
    Comment,
    /// A valid `retry` field: the server's reconnection delay in milliseconds.
    Retry(u64),
    /// A line or an event over its limit was dropped; parsing goes on.
    TooLong {
        /// `"line"` or `"event"`.
        what: &'static str,
        /// The line's length in bytes, or the dropped event's data length in bytes.
        len: usize,
    },
}

/// Why the event being built is being thrown away (until its blank line).
#[derive(Debug, Clone, Copy)]
enum Dropped {
    /// A non-comment line in it was too long; already reported.
    Line,
    /// Its data outgrew the limit; reported at the blank line.
    Event {
        /// Bytes the data buffer would hold (each line's value plus LF).
        len: usize,
    },
}

/// The event being assembled from field lines: the spec's three buffers.
#[derive(Debug, Default)]
struct Pending {
    /// The data buffer: each `data` value followed by LF.
    data: String,
    /// The event type buffer.
    event_type: String,
    /// The last event ID buffer; never cleared on dispatch.
    last_event_id: String,
    /// Set when this event can no longer be delivered whole.
    dropped: Option<Dropped>,
}

impl Pending {
    /// Handles one complete line (without its terminator, BOM already gone).
    fn line(&mut self, line: &[u8], max_event: usize) -> Option<SseItem> {
        let Some(&first) = line.first() else {
            return self.dispatch();
        };
        if first == b':' {
            return Some(SseItem::Comment);
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        // Names are compared as bytes: decoding cannot turn anything else into
        // an ASCII name, and invalid UTF-8 never matches one.
        match name {
            b"event" if self.dropped.is_none() => {
                self.event_type.clear();
                self.event_type.push_str(&String::from_utf8_lossy(value));
            }
            b"data" => self.append_data(value, max_event),
            // U+0000 decodes from the byte 0 and from nothing else.
            b"id" if !value.contains(&0) => {
                self.last_event_id.clear();
                self.last_event_id.push_str(&String::from_utf8_lossy(value));
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // All digits, so only overflow can fail: such a delay is not meant.
                return std::str::from_utf8(value).ok()?.parse().ok().map(SseItem::Retry);
            }
            _ => {}
        }
        None
    }

    fn append_data(&mut self, value: &[u8], max_event: usize) {
        let value = String::from_utf8_lossy(value);
        match &mut self.dropped {
            Some(Dropped::Event { len }) => *len += value.len() + 1,
            Some(Dropped::Line) => {}
            // The dispatched data is the buffer less its trailing LF, so this
            // is "would the event's data exceed the limit".
            None if self.data.len() + value.len() > max_event => {
                self.dropped = Some(Dropped::Event { len: self.data.len() + value.len() + 1 });
                self.data.clear();
            }
            None => {
                self.data.push_str(&value);
                self.data.push('\n');
            }
        }
    }

    /// A non-comment line was too long: the event it belongs to cannot be
    /// trusted (a `data` or `event` line may be missing), so drop all of it.
    fn drop_line(&mut self) {
        if self.dropped.is_none() {
            self.dropped = Some(Dropped::Line);
        }
        self.data.clear();
        self.event_type.clear();
    }

    /// The blank line: emit the event if there is one, and clear the data and
    /// type buffers either way.
    fn dispatch(&mut self) -> Option<SseItem> {
        let item = match self.dropped.take() {
            Some(Dropped::Event { len }) => Some(SseItem::TooLong { what: "event", len: len - 1 }),
            Some(Dropped::Line) => None,
            None if self.data.is_empty() => None,
            None => {
                let mut data = mem::take(&mut self.data);
                data.pop();
                let event = if self.event_type.is_empty() { "message".to_owned() } else { self.event_type.clone() };
                Some(SseItem::Event { event, data, last_event_id: self.last_event_id.clone() })
            }
        };
        self.data.clear();
        self.event_type.clear();
        item
    }
}

/// A line over the limit, being thrown away up to its terminator.
#[derive(Debug, Clone, Copy)]
struct Skip {
    /// Bytes dropped so far.
    len: usize,
    /// Whether it is a comment line, which does not spoil the pending event.
    comment: bool,
}

/// Incremental SSE parser. Feed chunks with [`SseParser::push`], take items
/// with [`SseParser::next_item`] until it returns `None`. There is no finish:
/// at end of stream a partial event is discarded, as the spec says.
#[derive(Debug)]
pub struct SseParser {
    max_line: usize,
    max_event: usize,
    /// Pushed bytes; `input[pos..]` is not parsed yet. Lines are cut from here
    /// lazily, so memory beyond the limits is only what the caller pushed.
    input: Vec<u8>,
    pos: usize,
    /// The start of a line whose terminator has not arrived; never over `max_line`.
    line: Vec<u8>,
    /// Set while dropping an over-long line.
    skip: Option<Skip>,
    /// The last line ended at a CR: an LF next (maybe in the next chunk)
    /// completes that CRLF and is not a blank line.
    after_cr: bool,
    /// Nothing parsed yet: a leading BOM is still to be stripped.
    at_start: bool,
    pending: Pending,
}

impl SseParser {
    /// A parser that drops lines over `max_line` bytes and events whose data
    /// exceeds `max_event` bytes.
    pub fn new(max_line: usize, max_event: usize) -> Self {
        SseParser {
            max_line,
            max_event,
            input: Vec::new(),
            pos: 0,
            line: Vec::new(),
            skip: None,
            after_cr: false,
            at_start: true,
            pending: Pending::default(),
        }
    }

    /// Appends a chunk read from the response body.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.pos > 0 {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        self.input.extend_from_slice(chunk);
    }

    /// Bytes held for a line or event not yet complete (and the last event ID),
    /// plus pushed bytes not yet parsed. Once `next_item` has returned `None`
    /// this is at most `3 * max_line + max_event + 3`, whatever the stream sends.
    pub fn buffered(&self) -> usize {
        self.input.len() - self.pos
            + self.line.len()
            + self.pending.data.len()
            + self.pending.event_type.len()
            + self.pending.last_event_id.len()
    }

    /// The next item, if the pushed bytes complete one.
    pub fn next_item(&mut self) -> Option<SseItem> {
        loop {
            let rest = &self.input[self.pos..];
            if rest.is_empty() {
                self.input.clear();
                self.pos = 0;
                return None;
            }
            if self.at_start {
                if rest.len() < BOM.len() && BOM.starts_with(rest) {
                    return None; // maybe a BOM: wait for its other bytes
                }
                self.at_start = false;
                if rest.starts_with(BOM) {
                    self.pos += BOM.len();
                    continue;
                }
            }
            if mem::take(&mut self.after_cr) && rest[0] == b'\n' {
                self.pos += 1;
                continue;
            }
            let Some(i) = memchr::memchr2(b'\r', b'\n', rest) else {
                self.hold_partial_line();
                continue;
            };
            self.after_cr = rest[i] == b'\r';
            let (start, end) = (self.pos, self.pos + i);
            self.pos = end + 1;
            if let Some(item) = self.end_line(start, end) {
                return Some(item);
            }
        }
    }

    /// Keeps the unterminated tail of the input as the start of a line, or
    /// starts dropping it once the line is over the limit.
    fn hold_partial_line(&mut self) {
        let rest = &self.input[self.pos..];
        if let Some(skip) = &mut self.skip {
            skip.len += rest.len();
        } else if self.line.len() + rest.len() > self.max_line {
            let comment = self.line.first().or(rest.first()) == Some(&b':');
            self.skip = Some(Skip { len: self.line.len() + rest.len(), comment });
            self.line.clear();
        } else {
            self.line.extend_from_slice(rest);
        }
        self.pos = self.input.len();
    }

    /// Handles the line made of the held start plus `input[start..end]`.
    fn end_line(&mut self, start: usize, end: usize) -> Option<SseItem> {
        let tail = &self.input[start..end];
        let (len, comment) = match self.skip.take() {
            Some(skip) => (skip.len + tail.len(), skip.comment),
            None => {
                let len = self.line.len() + tail.len();
                if len <= self.max_line {
                    let item = if self.line.is_empty() {
                        self.pending.line(tail, self.max_event)
                    } else {
                        self.line.extend_from_slice(tail);
                        let item = self.pending.line(&self.line, self.max_event);
                        self.line.clear();
                        item
                    };
                    return item;
                }
                let comment = self.line.first().or(tail.first()) == Some(&b':');
                self.line.clear();
                (len, comment)
            }
        };
        if !comment {
            self.pending.drop_line();
        }
        Some(SseItem::TooLong { what: "line", len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: usize = 1 << 20;

    fn drain(p: &mut SseParser) -> Vec<SseItem> {
        std::iter::from_fn(|| p.next_item()).collect()
    }

    fn run(max_line: usize, max_event: usize, chunks: &[&[u8]]) -> Vec<SseItem> {
        let mut p = SseParser::new(max_line, max_event);
        let mut out = Vec::new();
        for c in chunks {
            p.push(c);
            out.extend(drain(&mut p));
        }
        out
    }

    /// Parses `body` whole, split in two at every offset, and byte by byte;
    /// all must agree. Returns the items.
    fn parse_every_way(max_line: usize, max_event: usize, body: &[u8]) -> Vec<SseItem> {
        let want = run(max_line, max_event, &[body]);
        for cut in 0..=body.len() {
            let got = run(max_line, max_event, &[&body[..cut], &body[cut..]]);
            assert_eq!(got, want, "cut at {cut} of {:?}", String::from_utf8_lossy(body));
        }
        let singles: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(run(max_line, max_event, &singles), want, "byte by byte");
        want
    }

    fn items(body: &[u8]) -> Vec<SseItem> {
        parse_every_way(BIG, BIG, body)
    }

    fn ev(event: &str, data: &str, id: &str) -> SseItem {
        SseItem::Event { event: event.into(), data: data.into(), last_event_id: id.into() }
    }

    fn msg(data: &str) -> SseItem {
        ev("message", data, "")
    }

    // ---- the edge-case table of protocols.md C, row by row ----

    #[test]
    fn one_optional_space_after_the_colon() {
        assert_eq!(items(b"data:test\n\n"), vec![msg("test")]);
        assert_eq!(items(b"data: test\n\n"), vec![msg("test")]);
    }

    #[test]
    fn only_one_leading_space_is_stripped() {
        assert_eq!(items(b"data:  x\n\n"), vec![msg(" x")]);
    }

    #[test]
    fn data_lines_join_with_lf() {
        assert_eq!(items(b"data: YHOO\ndata: +2\ndata: 10\n\n"), vec![msg("YHOO\n+2\n10")]);
    }

    #[test]
    fn field_without_colon_has_empty_value() {
        assert_eq!(items(b"data\n\n"), vec![msg("")]);
    }

    #[test]
    fn two_empty_data_lines_give_one_lf() {
        assert_eq!(items(b"data\ndata\n\n"), vec![msg("\n")]);
    }

    #[test]
    fn unterminated_event_at_eof_is_discarded() {
        assert_eq!(items(b"data:"), vec![]);
        assert_eq!(items(b"data: x\n"), vec![]);
        assert_eq!(items(b"data: a\n\ndata: b\r"), vec![msg("a")]);
    }

    #[test]
    fn comment_alone_dispatches_nothing() {
        assert_eq!(items(b": comment\n\n"), vec![SseItem::Comment]);
    }

    #[test]
    fn value_splits_at_the_first_colon_only() {
        assert_eq!(items(b"data: a:b\n\n"), vec![msg("a:b")]);
    }

    #[test]
    fn field_names_are_case_and_space_sensitive() {
        assert_eq!(items(b"Data: x\n\n"), vec![]);
        assert_eq!(items(b"data : x\n\n"), vec![]);
    }

    #[test]
    fn last_event_id_persists_across_events() {
        assert_eq!(items(b"id: 1\ndata: a\n\ndata: b\n\n"), vec![ev("message", "a", "1"), ev("message", "b", "1")]);
    }

    #[test]
    fn id_without_value_resets_last_event_id() {
        assert_eq!(items(b"id: 1\ndata: z\n\ndata: a\nid\n\n"), vec![ev("message", "z", "1"), msg("a")]);
    }

    #[test]
    fn id_with_nul_is_ignored() {
        assert_eq!(items(b"id: 1\n\nid: a\0b\ndata: x\n\n"), vec![ev("message", "x", "1")]);
    }

    #[test]
    fn retry_only_all_ascii_digits() {
        assert_eq!(items(b"retry: 10000\n"), vec![SseItem::Retry(10000)]);
        for bad in
            ["retry: one thousand\n", "retry: 1e3\n", "retry: -5\n", "retry:\n", "retry: 99999999999999999999999\n"]
        {
            assert_eq!(items(bad.as_bytes()), vec![], "{bad:?}");
        }
        // A retry field is reported where it occurs, not at dispatch.
        assert_eq!(items(b"data: a\nretry:5\n\n"), vec![SseItem::Retry(5), msg("a")]);
    }

    #[test]
    fn event_field_sets_the_type() {
        assert_eq!(items(b"event: open\ndata: x\n\n"), vec![ev("open", "x", "")]);
    }

    #[test]
    fn empty_event_field_means_message() {
        assert_eq!(items(b"event:\ndata: x\n\n"), vec![msg("x")]);
        // The type buffer is cleared on dispatch, even when nothing is emitted.
        assert_eq!(items(b"event: open\n\ndata: x\n\n"), vec![msg("x")]);
    }

    #[test]
    fn crlf_cr_and_lf_end_lines_alike() {
        for body in [&b"data: a\r\n\r\n"[..], b"data: a\r\r", b"data: a\n\n", b"data: a\r\n\n", b"data: a\n\r"] {
            assert_eq!(items(body), vec![msg("a")], "{body:?}");
        }
        assert_eq!(items(b"data: a\r\rdata: b\r\n\r\ndata: c\n\n"), vec![msg("a"), msg("b"), msg("c")]);
        // CR LF LF: the CRLF ends the line, the LF is the blank line.
        assert_eq!(items(b"data: a\r\n\ndata: b\r\n\n"), vec![msg("a"), msg("b")]);
    }

    #[test]
    fn multibyte_utf8_split_across_chunks() {
        let body = "data: 😀漢字é\n\n".as_bytes();
        assert_eq!(items(body), vec![msg("😀漢字é")]);
        // Bytes of one emoji in three chunks.
        assert_eq!(run(BIG, BIG, &[b"data: \xF0\x9F", b"\x98", b"\x80\n\n"]), vec![msg("😀")]);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        assert_eq!(items(b"data: a\xFFb\n\n"), vec![msg("a\u{FFFD}b")]);
        // A truncated sequence at the end of a line is one U+FFFD, as in a
        // decoder run over the whole stream: CR and LF are never continuation bytes.
        assert_eq!(items(b"data: \xF0\x9F\ndata: x\n\n"), vec![msg("\u{FFFD}\nx")]);
        assert_eq!(items(b"event: \xE6\x97\n:\xFF\ndata: x\n\n"), vec![SseItem::Comment, ev("\u{FFFD}", "x", "")]);
    }

    #[test]
    fn one_leading_bom_is_stripped() {
        assert_eq!(items(b"\xEF\xBB\xBFdata: x\n\n"), vec![msg("x")]);
        assert_eq!(items(b"\xEF\xBB\xBF:)\n"), vec![SseItem::Comment]);
        // A second BOM is part of the field name, and that field is ignored.
        assert_eq!(items(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\n"), vec![]);
        // So is a BOM later in the stream.
        assert_eq!(items(b"data: a\n\n\xEF\xBB\xBFdata: x\n\n"), vec![msg("a")]);
        // A BOM prefix is not a BOM; a short stream is not held back for ever.
        assert_eq!(items(b"\xEF\xBBdata: x\n\n"), vec![]);
        assert_eq!(items(b"\n"), vec![]);
        assert_eq!(items(b"\xEF\xBB\xBF\n:\n"), vec![SseItem::Comment]);
    }

    #[test]
    fn heartbeat_without_blank_line_does_not_end_the_event() {
        assert_eq!(items(b"data: a\n:thump\ndata: b\n\n"), vec![SseItem::Comment, msg("a\nb")]);
        assert_eq!(items(b"data: a\n\n:thump\ndata: b\n\n"), vec![msg("a"), SseItem::Comment, msg("b")]);
        assert_eq!(items(b"event: delete\n:thump\ndata: 1\n\n"), vec![SseItem::Comment, ev("delete", "1", "")]);
    }

    // ---- Mastodon ----

    const STATUS: &str =
        r#"{"id":"108914327388663283","content":"<p>héllo 😀 漢字 テスト</p>","account":{"acct":"a"}}"#;

    #[test]
    fn mastodon_b9_stream_split_at_every_offset() {
        let body = format!(":)\nevent: update\ndata: {STATUS}\n\n:thump\n\nevent: delete\ndata: 1089\n\n");
        let want = vec![SseItem::Comment, ev("update", STATUS, ""), SseItem::Comment, ev("delete", "1089", "")];
        assert_eq!(parse_every_way(BIG, BIG, body.as_bytes()), want);
    }

    #[test]
    fn mastodon_old_heartbeat_without_blank_line() {
        let body =
            format!(":)\n:thump\nevent: update\ndata: {STATUS}\n\n:thump\nevent: delete\n:thump\ndata: 1089\n\n");
        let want = vec![
            SseItem::Comment,
            SseItem::Comment,
            ev("update", STATUS, ""),
            SseItem::Comment,
            SseItem::Comment,
            ev("delete", "1089", ""),
        ];
        assert_eq!(parse_every_way(BIG, BIG, body.as_bytes()), want);
    }

    // ---- limits ----

    #[test]
    fn too_long_line_is_dropped_and_the_next_event_parses() {
        let long = format!("data: {}", "x".repeat(200));
        let body = format!("{long}\n\ndata: ok\n\n");
        let got = parse_every_way(64, 1024, body.as_bytes());
        assert_eq!(got, vec![SseItem::TooLong { what: "line", len: 206 }, msg("ok")]);

        // The event holding the long line is dropped whole, not delivered without it.
        let body = format!("event: update\n{long}\ndata: tail\n\nevent: delete\ndata: 1\n\n");
        let got = parse_every_way(64, 1024, body.as_bytes());
        assert_eq!(got, vec![SseItem::TooLong { what: "line", len: 206 }, ev("delete", "1", "")]);

        // A long comment does not spoil the event around it.
        let body = format!("data: a\n:{}\r\ndata: b\n\n", "t".repeat(100));
        let got = parse_every_way(64, 1024, body.as_bytes());
        assert_eq!(got, vec![SseItem::TooLong { what: "line", len: 101 }, msg("a\nb")]);

        // Exactly at the limit is fine.
        let body = format!("data: {}\n\n", "y".repeat(58));
        assert_eq!(parse_every_way(64, 1024, body.as_bytes()), vec![msg(&"y".repeat(58))]);
    }

    #[test]
    fn too_long_event_is_dropped_and_the_next_event_parses() {
        let line = format!("data: {}\n", "z".repeat(30));
        let body = format!("event: update\n{}\ndata: ok\n\n", line.repeat(10));
        let got = parse_every_way(64, 100, body.as_bytes());
        assert_eq!(got, vec![SseItem::TooLong { what: "event", len: 10 * 31 - 1 }, msg("ok")]);

        // Exactly at the limit is fine: 100 bytes of data.
        let body = format!("data: {}\ndata: {}\n\n", "a".repeat(49), "b".repeat(50));
        let want = format!("{}\n{}", "a".repeat(49), "b".repeat(50));
        assert_eq!(parse_every_way(64, 100, body.as_bytes()), vec![msg(&want)]);
    }

    #[test]
    fn buffered_bytes_stay_bounded() {
        let (max_line, max_event) = (100, 1000);
        let huge_line = format!("data: {}\n\n", "x".repeat(100_000));
        let huge_event = format!("data: {}\n", "y".repeat(90)).repeat(2_000) + "\n";
        let id = "i".repeat(90);
        let body = format!(":)\nid: {id}\n{huge_line}{huge_event}:{}\nevent: delete\ndata: 7\n\n", "c".repeat(50_000));
        let mut p = SseParser::new(max_line, max_event);
        let mut out = Vec::new();
        for chunk in body.as_bytes().chunks(333) {
            p.push(chunk);
            out.extend(drain(&mut p));
            assert!(p.buffered() <= 3 * max_line + max_event + 3, "buffered {}", p.buffered());
            assert!(p.line.capacity() <= 2 * max_line, "line capacity {}", p.line.capacity());
            assert!(p.pending.data.capacity() <= 2 * (max_event + 1), "data capacity {}", p.pending.data.capacity());
        }
        let want = vec![
            SseItem::Comment,
            SseItem::TooLong { what: "line", len: 100_006 },
            SseItem::TooLong { what: "event", len: 2_000 * 91 - 1 },
            SseItem::TooLong { what: "line", len: 50_001 },
            ev("delete", "7", &id),
        ];
        assert_eq!(out, want);
        assert_eq!(p.buffered(), id.len(), "only the last event ID is held between events");
    }

    // ---- CR at the end of one chunk, LF at the start of the next ----

    #[test]
    fn cr_then_lf_in_the_next_chunk_is_one_crlf() {
        assert_eq!(run(BIG, BIG, &[b"data: a\r", b"\n\r\n"]), vec![msg("a")]);
        // Were the LF a blank line, this would be two events "a" and "b".
        assert_eq!(run(BIG, BIG, &[b"data: a\r", b"\ndata: b\r\n\r\n"]), vec![msg("a\nb")]);
        assert_eq!(run(BIG, BIG, &[b"data: a\r\n\r", b"\n", b"data: b\r", b"\n\r", b"\n"]), vec![msg("a"), msg("b")]);
        // A comment ending at CR, LF next chunk: no empty dispatch, no second comment.
        assert_eq!(run(BIG, BIG, &[b":thump\r", b"\ndata: c\r", b"\n\r", b"\n"]), vec![SseItem::Comment, msg("c")]);
        // The flag also holds across an over-long line being dropped.
        assert_eq!(
            run(8, BIG, &[b"data: 0123456789\r", b"\ndata: b\r", b"\n\r", b"\n"]),
            vec![SseItem::TooLong { what: "line", len: 16 }]
        );
        assert_eq!(
            run(8, BIG, &[b":0123456789\r", b"\ndata: b\r", b"\n\r", b"\n"]),
            vec![SseItem::TooLong { what: "line", len: 11 }, msg("b")]
        );
    }

    // ---- property-style: random streams, random chunkings ----

    /// A literal, whole-input reading of the spec, to check the incremental
    /// parser against (no limits).
    fn reference(body: &[u8]) -> Vec<SseItem> {
        let text = String::from_utf8_lossy(body.strip_prefix(BOM).unwrap_or(body)).into_owned();
        let mut lines = Vec::new();
        let mut cur = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\r' => {
                    if chars.peek() == Some(&'\n') {
                        chars.next();
                    }
                    lines.push(mem::take(&mut cur));
                }
                '\n' => lines.push(mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        let (mut data, mut kind, mut id, mut out) = (String::new(), String::new(), String::new(), Vec::new());
        for line in lines {
            if line.is_empty() {
                if !data.is_empty() {
                    data.pop();
                    let event = if kind.is_empty() { "message".to_owned() } else { kind.clone() };
                    out.push(SseItem::Event { event, data: data.clone(), last_event_id: id.clone() });
                }
                data.clear();
                kind.clear();
                continue;
            }
            if line.starts_with(':') {
                out.push(SseItem::Comment);
                continue;
            }
            let (name, value) = match line.split_once(':') {
                Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_str(), ""),
            };
            match name {
                "event" => kind = value.to_owned(),
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                }
                "id" if !value.contains('\0') => id = value.to_owned(),
                "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                    if let Ok(n) = value.parse() {
                        out.push(SseItem::Retry(n));
                    }
                }
                _ => {}
            }
        }
        out
    }

    fn random_stream(rng: &mut fastrand::Rng) -> Vec<u8> {
        const NAMES: &[&[u8]] = &[b"data", b"data", b"data", b"event", b"id", b"retry", b"Data", b"data ", b"x", b""];
        const SEPS: &[&[u8]] = &[b":", b": ", b": ", b":  ", b""];
        const VALUES: &[&[u8]] = &[
            b"x",
            b"12",
            b" ",
            b":",
            b"a:b",
            b"\0",
            b"\xEF\xBB\xBF",
            b"\xF0\x9F\x98\x80",
            "漢字".as_bytes(),
            b"\xFF",
            b"\xE6\x97",
            b"update",
            b"delete",
            b"{\"id\":\"1\"}",
            b")",
            b"thump",
        ];
        const EOLS: &[&[u8]] = &[b"\n", b"\n", b"\r\n", b"\r"];
        let mut body = Vec::new();
        if rng.u8(..4) == 0 {
            body.extend_from_slice(BOM);
        }
        for _ in 0..rng.usize(1..60) {
            match rng.u8(..10) {
                0..=2 => {
                    body.extend_from_slice(EOLS[rng.usize(..EOLS.len())]); // a blank line
                    continue;
                }
                3 => body.push(b':'),
                _ => {
                    body.extend_from_slice(NAMES[rng.usize(..NAMES.len())]);
                    body.extend_from_slice(SEPS[rng.usize(..SEPS.len())]);
                }
            }
            for _ in 0..rng.usize(0..4) {
                body.extend_from_slice(VALUES[rng.usize(..VALUES.len())]);
            }
            if rng.u8(..6) == 0 {
                body.resize(body.len() + rng.usize(0..60), b'w');
            }
            body.extend_from_slice(EOLS[rng.usize(..EOLS.len())]);
        }
        // Sometimes end mid-line or mid-event.
        if rng.bool() {
            body.truncate(rng.usize(..=body.len()));
        }
        body
    }

    fn random_chunks<'a>(rng: &mut fastrand::Rng, body: &'a [u8]) -> Vec<&'a [u8]> {
        let mut chunks = Vec::new();
        let mut at = 0;
        while at < body.len() {
            let n = rng.usize(1..=16).min(body.len() - at);
            chunks.push(&body[at..at + n]);
            at += n;
        }
        chunks
    }

    #[test]
    fn random_streams_give_the_same_items_in_any_chunking() {
        let mut rng = fastrand::Rng::with_seed(0x5EE_5EE);
        let (mut events, mut too_long) = (0, 0);
        for case in 0..200 {
            let body = random_stream(&mut rng);
            // Half the cases run with small limits, to cut lines and events.
            let (max_line, max_event) = if case % 2 == 0 { (BIG, BIG) } else { (40, 80) };
            let want = run(max_line, max_event, &[&body]);
            if case % 2 == 0 {
                assert_eq!(want, reference(&body), "case {case}: {:?}", String::from_utf8_lossy(&body));
            }
            events += want.iter().filter(|i| matches!(i, SseItem::Event { .. })).count();
            too_long += want.iter().filter(|i| matches!(i, SseItem::TooLong { .. })).count();
            for _ in 0..5 {
                let chunks = random_chunks(&mut rng, &body);
                assert_eq!(run(max_line, max_event, &chunks), want, "case {case}, chunks {chunks:?}");
            }
        }
        // The generator must exercise what it is meant to.
        assert!(events > 300, "events: {events}");
        assert!(too_long > 50, "too long: {too_long}");
    }
}
