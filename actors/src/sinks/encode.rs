//! The line format every built-in sink writes (SPEC section 4): one JSON
//! envelope, or the bare payload, per event and per line. The payload is copied
//! byte for byte; nothing here builds a JSON tree.

use bytes::Bytes;
use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Deserialize;

use crate::event::Event;

/// What a sink writes for each event (`format = "..."` in a sink table).
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One JSON object per line: source, kind, id, received_at, connection,
    /// for_user, stream and the raw payload.
    #[default]
    Envelope,
    /// Only the payload, one per line (what twarc users expect).
    Payload,
}

/// Appends exactly one line for `event`, ending in `\n`, to `out`.
///
/// The payload is written as received. A raw CR or LF byte in it (JSON allows
/// them as whitespace between tokens) becomes a space, because it would
/// otherwise split the line. An empty payload is written as `null` so the line
/// stays valid JSON.
pub fn encode_event(event: &Event, format: OutputFormat, out: &mut Vec<u8>) {
    match format {
        OutputFormat::Envelope => encode_envelope(event, out),
        OutputFormat::Payload => push_payload(&event.payload, out),
    }
    out.push(b'\n');
}

fn encode_envelope(event: &Event, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"source\":");
    push_json_str(out, &event.source);
    out.extend_from_slice(b",\"kind\":");
    push_json_str(out, event.kind.as_str());
    out.extend_from_slice(b",\"id\":");
    match &event.id {
        Some(id) => push_json_str(out, id),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"received_at\":\"");
    push_timestamp(out, &event.received_at);
    out.extend_from_slice(b"\",\"connection\":");
    push_json_str(out, &event.connection);
    out.extend_from_slice(b",\"for_user\":");
    match event.for_user {
        Some(user) => push_u64(out, user),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"stream\":");
    match &event.stream {
        Some(parts) => {
            out.push(b'[');
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_json_str(out, part);
            }
            out.push(b']');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"payload\":");
    push_payload(&event.payload, out);
    out.push(b'}');
}

fn push_payload(payload: &Bytes, out: &mut Vec<u8>) {
    if payload.is_empty() {
        out.extend_from_slice(b"null");
        return;
    }
    match memchr::memchr2(b'\r', b'\n', payload) {
        None => out.extend_from_slice(payload),
        Some(first) => {
            out.extend_from_slice(&payload[..first]);
            out.extend(payload[first..].iter().map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
        }
    }
}

/// Appends `s` as a JSON string, quoted and escaped by serde_json.
pub(crate) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a `&str` into a `Vec<u8>` cannot fail: the Vec's `Write` never
    // errors and every Rust string has a JSON representation.
    let result = serde_json::to_writer(&mut *out, s);
    debug_assert!(result.is_ok());
}

/// Appends `t` as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (always six fractional digits),
/// the timestamp form of the envelope and of gap payloads.
pub(crate) fn push_timestamp(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    let year = t.year();
    if year < 0 {
        out.push(b'-');
    }
    push_padded(out, u64::from(year.unsigned_abs()), 4);
    out.push(b'-');
    push_padded(out, u64::from(t.month()), 2);
    out.push(b'-');
    push_padded(out, u64::from(t.day()), 2);
    out.push(b'T');
    push_padded(out, u64::from(t.hour()), 2);
    out.push(b':');
    push_padded(out, u64::from(t.minute()), 2);
    out.push(b':');
    // chrono keeps a leap second as second 59 with nanoseconds past one
    // billion; RFC 3339 writes it as second 60.
    let nanos = t.nanosecond();
    let second = t.second() + nanos / 1_000_000_000;
    push_padded(out, u64::from(second), 2);
    out.push(b'.');
    push_padded(out, u64::from((nanos % 1_000_000_000) / 1_000), 6);
    out.push(b'Z');
}

pub(crate) fn push_u64(out: &mut Vec<u8>, value: u64) {
    push_padded(out, value, 1);
}

/// Decimal digits of `value`, left-padded with zeros to at least `width`.
fn push_padded(out: &mut Vec<u8>, mut value: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    for _ in (digits.len() - start)..width {
        out.push(b'0');
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeZone;

    use super::*;
    use crate::event::EventKind;

    const TWEET: EventKind = EventKind::new("tweet");
    const EVENT: EventKind = EventKind::new("event");
    const STATUS_UPDATE: EventKind = EventKind::new("status.update");

    fn at(secs: i64, micros: u32) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, micros * 1_000).single().expect("valid test timestamp")
    }

    /// 2026-11-22T10:00:00Z.
    const T0: i64 = 1_795_341_600;

    fn tweet() -> Event {
        Event {
            source: Arc::from("election"),
            kind: TWEET,
            id: Some("1234567890".into()),
            received_at: at(T0, 123_456),
            connection: Arc::from("election/3"),
            for_user: None,
            stream: None,
            payload: Bytes::from_static(br#"{"id_str":"1234567890","text":"hi"}"#),
        }
    }

    fn line(event: &Event, format: OutputFormat) -> String {
        let mut out = Vec::new();
        encode_event(event, format, &mut out);
        String::from_utf8(out).expect("utf-8 line")
    }

    #[test]
    fn envelope_of_a_tweet() {
        assert_eq!(
            line(&tweet(), OutputFormat::Envelope),
            concat!(
                r#"{"source":"election","kind":"tweet","id":"1234567890","#,
                r#""received_at":"2026-11-22T10:00:00.123456Z","connection":"election/3","#,
                r#""for_user":null,"stream":null,"payload":{"id_str":"1234567890","text":"hi"}}"#,
                "\n"
            )
        );
    }

    #[test]
    fn envelope_of_a_site_stream_event_has_for_user() {
        let event = Event {
            source: Arc::from("app-users"),
            kind: EVENT,
            id: None,
            received_at: at(T0, 7),
            connection: Arc::from("app-users/0"),
            for_user: Some(18_446_744_073_709_551_615),
            stream: None,
            payload: Bytes::from_static(br#"{"event":"favorite"}"#),
        };
        assert_eq!(
            line(&event, OutputFormat::Envelope),
            concat!(
                r#"{"source":"app-users","kind":"event","id":null,"#,
                r#""received_at":"2026-11-22T10:00:00.000007Z","connection":"app-users/0","#,
                r#""for_user":18446744073709551615,"stream":null,"payload":{"event":"favorite"}}"#,
                "\n"
            )
        );
    }

    #[test]
    fn envelope_of_a_mastodon_event_has_the_stream() {
        let event = Event {
            source: Arc::from("fedi"),
            kind: STATUS_UPDATE,
            id: Some("109".into()),
            received_at: at(T0 + 59, 999_999),
            connection: Arc::from("fedi/1"),
            for_user: None,
            stream: Some(Arc::from(vec!["hashtag".to_owned(), "rust \"lang\"".to_owned()])),
            payload: Bytes::from_static(br#"{"id":"109"}"#),
        };
        assert_eq!(
            line(&event, OutputFormat::Envelope),
            concat!(
                r#"{"source":"fedi","kind":"status.update","id":"109","#,
                r#""received_at":"2026-11-22T10:00:59.999999Z","connection":"fedi/1","#,
                r#""for_user":null,"stream":["hashtag","rust \"lang\""],"payload":{"id":"109"}}"#,
                "\n"
            )
        );
    }

    #[test]
    fn envelope_with_null_id_and_escaped_strings() {
        let mut event = tweet();
        event.id = None;
        event.source = Arc::from("we\"ird\\src");
        let text = line(&event, OutputFormat::Envelope);
        assert!(text.starts_with(r#"{"source":"we\"ird\\src","kind":"tweet","id":null,"received_at""#), "{text}");
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(parsed["id"], serde_json::Value::Null);
        assert_eq!(parsed["source"], "we\"ird\\src");
    }

    #[test]
    fn raw_newlines_in_a_payload_keep_one_line() {
        let mut event = tweet();
        event.payload = Bytes::from_static(b"{\"a\":1,\r\n \"b\":\n2}");
        for format in [OutputFormat::Envelope, OutputFormat::Payload] {
            let text = line(&event, format);
            assert_eq!(text.matches('\n').count(), 1, "{text:?}");
            assert!(text.ends_with('\n'));
            assert!(!text.contains('\r'));
            serde_json::from_str::<serde_json::Value>(&text).expect("still valid JSON");
        }
        assert_eq!(line(&event, OutputFormat::Payload), "{\"a\":1,   \"b\": 2}\n");
    }

    #[test]
    fn emoji_and_cjk_pass_through_unchanged() {
        let mut event = tweet();
        let payload = "{\"text\":\"選挙 🗳️ \\u00e9 é\"}";
        event.payload = Bytes::from(payload);
        assert_eq!(line(&event, OutputFormat::Payload), format!("{payload}\n"));
        assert!(line(&event, OutputFormat::Envelope).ends_with(&format!("\"payload\":{payload}}}\n")));
    }

    #[test]
    fn payload_format_is_the_payload_alone() {
        assert_eq!(line(&tweet(), OutputFormat::Payload), "{\"id_str\":\"1234567890\",\"text\":\"hi\"}\n");
    }

    #[test]
    fn an_empty_payload_is_null() {
        let mut event = tweet();
        event.payload = Bytes::new();
        assert_eq!(line(&event, OutputFormat::Payload), "null\n");
        assert!(line(&event, OutputFormat::Envelope).ends_with("\"payload\":null}\n"));
    }

    #[test]
    fn timestamps_are_padded() {
        let mut out = Vec::new();
        push_timestamp(&mut out, &at(-62_135_596_800 + 1, 5)); // 0001-01-01T00:00:01
        assert_eq!(out, b"0001-01-01T00:00:01.000005Z");
    }

    #[test]
    fn output_format_names() {
        #[derive(Deserialize)]
        struct S {
            format: OutputFormat,
        }
        let s: S = serde_json::from_str(r#"{"format":"payload"}"#).expect("payload parses");
        assert_eq!(s.format, OutputFormat::Payload);
        assert!(serde_json::from_str::<S>(r#"{"format":"Envelope"}"#).is_err());
    }
}
