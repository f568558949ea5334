//! `sse`: the Server-Sent Events parser, chunked against whole, and against
//! a whole-input reading of the WHATWG rules.

use streamherd_actors::connection::sse::{SseItem, SseParser};

use crate::input::{chunkings, chunks, show, Input};

/// Limits the input cannot reach.
const BIG: usize = 1 << 20;

/// Input layout: `[max_line][max_event][seed: 4][body]`. Any chunking gives
/// the items of one push; `buffered()` stays within its documented bound;
/// nothing reported too long is within its limit; with limits the input
/// cannot reach, the items are the WHATWG reading of the whole input.
pub fn sse(data: &[u8]) {
    let mut input = Input::new(data);
    let max_line = limit(input.byte());
    let max_event = limit(input.byte());
    let seed = input.u32();
    let body = input.rest();

    let whole = run(max_line, max_event, body, &[]);
    for cuts in chunkings(body.len(), seed) {
        let got = run(max_line, max_event, body, &cuts);
        assert_eq!(got, whole, "limits {max_line}/{max_event}, cuts {cuts:?}, body {}", show(body, 300));
    }
    // Invalid UTF-8 decodes to U+FFFD, three bytes for one: the data can
    // grow to three times the input.
    if max_line >= body.len() && max_event >= 3 * body.len() {
        assert_eq!(whole, reference(body), "the WHATWG reading differs for {}", show(body, 300));
    }
}

fn limit(b: u8) -> usize {
    match b {
        0..=159 => usize::from(b % 80),
        160..=239 => 80 + usize::from(b - 160) * 50,
        _ => BIG,
    }
}

fn run(max_line: usize, max_event: usize, body: &[u8], cuts: &[usize]) -> Vec<SseItem> {
    let mut parser = SseParser::new(max_line, max_event);
    let mut out = Vec::new();
    for chunk in chunks(body, cuts) {
        parser.push(chunk);
        while let Some(item) = parser.next_item() {
            match &item {
                SseItem::TooLong { what: "line", len } => assert!(*len > max_line, "line of {len} reported too long"),
                SseItem::TooLong { what: "event", len } => {
                    assert!(*len > max_event, "event of {len} reported too long")
                }
                SseItem::TooLong { what, .. } => panic!("TooLong names neither a line nor an event: {what}"),
                SseItem::Event { data, .. } => assert!(data.len() <= max_event, "event data over the limit"),
                SseItem::Comment | SseItem::Retry(_) => {}
            }
            out.push(item);
        }
        let bound = 3 * max_line + max_event + 3;
        assert!(parser.buffered() <= bound, "{} bytes buffered, bound {bound}", parser.buffered());
    }
    out
}

/// The WHATWG event-stream interpretation over the whole input: one leading
/// BOM stripped, lossy UTF-8, lines ending at CRLF, CR or LF; a blank line
/// dispatches, `:` starts a comment, `field: value` with one optional space.
pub(crate) fn reference(body: &[u8]) -> Vec<SseItem> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let text = String::from_utf8_lossy(body);
    let mut lines = Vec::new();
    let mut rest = &*text;
    while let Some(i) = rest.find(['\r', '\n']) {
        lines.push(&rest[..i]);
        let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[i + skip..];
    }
    let (mut data, mut event, mut id, mut out) = (String::new(), String::new(), String::new(), Vec::new());
    for line in lines {
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                let name = if event.is_empty() { "message".to_owned() } else { event.clone() };
                out.push(SseItem::Event { event: name, data: data.clone(), last_event_id: id.clone() });
            }
            data.clear();
            event.clear();
            continue;
        }
        if line.starts_with(':') {
            out.push(SseItem::Comment);
            continue;
        }
        let (name, value) = match line.split_once(':') {
            Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match name {
            "event" => event = value.to_owned(),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => id = value.to_owned(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    out.push(SseItem::Retry(ms));
                }
            }
            _ => {}
        }
    }
    out
}
