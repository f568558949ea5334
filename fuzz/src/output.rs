//! `output_line`: the line every built-in sink writes, for events built from
//! payloads the family decoders accepted.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use streamherd_actors::event::{Event, EventKind};
use streamherd_actors::jetstream::decode::decode;
use streamherd_actors::mastodon::decode::from_sse;
use streamherd_actors::sinks::encode::{encode_event, OutputFormat};
use streamherd_actors::twitter::classify::classify_twitter;

use crate::input::{show, Input};
use crate::mastodon::EVENT_NAMES;

/// The envelope as SPEC 4 defines it; the payload kept as its text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    source: String,
    kind: String,
    id: Option<String>,
    received_at: String,
    connection: String,
    for_user: Option<u64>,
    stream: Option<Vec<String>>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// An object's keys in the order written (values skipped at any depth).
struct Keys(Vec<String>);

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    keys.push(key);
                }
                Ok(Keys(keys))
            }
        }
        d.deserialize_map(V)
    }
}

/// The envelope's keys, in the documented order.
const KEYS: [&str; 8] = ["source", "kind", "id", "received_at", "connection", "for_user", "stream", "payload"];

/// Input layout: `[family][secs: 8][nanos: 4][source len][source][connection
/// len][connection][stream][payload]`; family 0 Twitter, 1 Mastodon (SSE,
/// event name from the stream byte), 2 Jetstream, 3 the payload as text.
/// Every format gives one UTF-8 line; the payload is copied byte for byte
/// (raw CR and LF as spaces); the envelope's fields are JSON, in order, and
/// equal to the event's whatever the payload; the line is JSON when it is.
pub fn output_line(data: &[u8]) {
    let mut input = Input::new(data);
    let family = input.byte();
    let received_at = timestamp(family & 0x80 != 0, input.u64(), input.u32());
    let len = usize::from(input.byte() % 32);
    let source = String::from_utf8_lossy(input.take(len)).into_owned();
    let len = usize::from(input.byte() % 32);
    let connection = String::from_utf8_lossy(input.take(len)).into_owned();
    let stream_byte = input.byte();
    let payload = input.rest();

    let (kind, id, for_user, payload) = match family % 4 {
        0 => match classify_twitter(payload) {
            Ok(c) => (c.kind, c.id, c.for_user, Bytes::copy_from_slice(payload)),
            Err(_) => return,
        },
        1 => {
            let event = EVENT_NAMES[usize::from(stream_byte) % EVENT_NAMES.len()];
            match from_sse(event, &String::from_utf8_lossy(payload)) {
                Ok(m) => (m.kind, m.id, None, m.payload),
                Err(_) => return,
            }
        }
        2 => match decode(payload) {
            Ok(d) => (d.kind, d.id, None, Bytes::copy_from_slice(payload)),
            Err(_) => return,
        },
        _ => (EventKind::UNKNOWN, None, None, Bytes::from(String::from_utf8_lossy(payload).into_owned())),
    };
    let stream = match stream_byte % 3 {
        0 => None,
        1 => Some(vec![source.clone()]),
        _ => Some(vec!["hashtag".to_owned(), connection.clone(), String::new()]),
    };
    let event = Event {
        source: Arc::from(source),
        kind,
        id,
        received_at,
        connection: Arc::from(connection),
        for_user,
        stream: stream.map(Arc::from),
        payload,
    };
    for format in [OutputFormat::Envelope, OutputFormat::Payload] {
        let mut out = b"earlier line\n".to_vec();
        encode_event(&event, format, &mut out);
        let Some(line) = out.strip_prefix(b"earlier line\n") else { panic!("encode_event changed what was before") };
        check_line(&event, format, line);
    }
}

/// Years 1 to 9999 (leap seconds included) most of the time; with `wide`,
/// chrono's whole range, negative years too.
fn timestamp(wide: bool, secs: u64, nanos: u32) -> DateTime<Utc> {
    const YEAR_1: i64 = -62_135_596_800;
    const YEAR_10000: i64 = 253_402_300_800;
    let secs =
        if wide { (secs as i64) % 8_000_000_000_000 } else { YEAR_1 + (secs % (YEAR_10000 - YEAR_1) as u64) as i64 };
    let nanos = nanos % 2_000_000_000;
    DateTime::from_timestamp(secs, nanos)
        .or_else(|| DateTime::from_timestamp(secs, nanos % 1_000_000_000))
        .unwrap_or(DateTime::UNIX_EPOCH)
}

fn check_line(event: &Event, format: OutputFormat, line: &[u8]) {
    let shown = || show(line, 400);
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "{format:?}: not one line: {}", shown());
    assert!(line.ends_with(b"\n"), "{format:?}: no LF at the end: {}", shown());
    assert!(!line.contains(&b'\r'), "{format:?}: a raw CR: {}", shown());
    let Ok(text) = std::str::from_utf8(line) else { panic!("{format:?}: not UTF-8: {}", shown()) };
    let text = &text[..text.len() - 1];

    // The payload as written: byte for byte, raw CR and LF as spaces.
    let written: String = if event.payload.is_empty() {
        "null".to_owned()
    } else {
        let Ok(p) = std::str::from_utf8(&event.payload) else { panic!("a decoder handed on a non-UTF-8 payload") };
        p.replace(['\r', '\n'], " ")
    };
    let payload_is_json = serde_json::from_str::<IgnoredAny>(&written).is_ok();
    if format == OutputFormat::Payload {
        assert_eq!(text, written, "the payload line is the payload");
        return;
    }

    assert!(text.ends_with(&format!("{written}}}")), "the envelope does not end with the payload: {}", shown());
    let head = &text[..text.len() - written.len() - 1];
    assert!(head.ends_with(",\"payload\":"), "the payload is not the last field: {}", shown());
    // The envelope's own fields, checked with a stand-in payload when the
    // payload is not JSON (the classifier's leniency lets such through).
    let whole = if payload_is_json { text.to_owned() } else { format!("{head}null}}") };
    match serde_json::from_str::<Keys>(&whole) {
        Ok(Keys(keys)) => assert_eq!(keys, KEYS, "envelope keys out of order: {}", shown()),
        Err(e) => panic!("the envelope is not a JSON object ({e}): {}", shown()),
    }
    let env: Envelope<'_> = match serde_json::from_str(&whole) {
        Ok(env) => env,
        Err(e) => panic!("the envelope is not JSON ({e}): {}", shown()),
    };
    assert_eq!(env.source, &*event.source);
    assert_eq!(env.kind, event.kind.as_str());
    assert_eq!(env.id.as_deref(), event.id.as_deref());
    assert_eq!(env.connection, &*event.connection);
    assert_eq!(env.for_user, event.for_user);
    assert_eq!(env.stream.as_deref(), event.stream.as_deref());
    assert_eq!(env.received_at, stamp(&event.received_at), "received_at of {}", event.received_at);
    if (1..=9999).contains(&event.received_at.year()) {
        let Ok(back) = DateTime::parse_from_rfc3339(&env.received_at) else {
            panic!("received_at {} is not RFC 3339", env.received_at)
        };
        let micros = |t: &DateTime<Utc>| (t.timestamp(), t.nanosecond() / 1_000);
        assert_eq!(micros(&back.to_utc()), micros(&event.received_at), "received_at reads back as another time");
    }
    if payload_is_json {
        assert_eq!(env.payload.get(), written.trim_matches([' ', '\t']), "the payload as written");
    }
}

/// SPEC 4's timestamp: `YYYY-MM-DDTHH:MM:SS.ffffffZ`, a leap second as 60.
fn stamp(t: &DateTime<Utc>) -> String {
    let sign = if t.year() < 0 { "-" } else { "" };
    let leap = t.nanosecond() / 1_000_000_000;
    format!(
        "{sign}{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year().unsigned_abs(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second() + leap,
        (t.nanosecond() % 1_000_000_000) / 1_000
    )
}
