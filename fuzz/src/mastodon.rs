//! `mastodon_sse` and `mastodon_ws`: the Mastodon event decoder, against the
//! SPEC 4 payload rules and serde_json's reading of the frames.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use streamherd_actors::event::EventKind;
use streamherd_actors::mastodon::decode::{
    from_sse, from_websocket, kind_of, message_id, MastodonDecodeError, MastodonFrame, MastodonMessage,
};
use streamherd_actors::mastodon::kinds;

use crate::input::{show, Input};
use crate::json_ref;

/// Event names the inputs choose from with their first byte (the rest of the
/// byte range reads the name from the input).
pub(crate) const EVENT_NAMES: &[&str] = &[
    "update",
    "delete",
    "notification",
    "conversation",
    "status.update",
    "filters_changed",
    "announcement",
    "announcement.reaction",
    "announcement.delete",
    "notifications_merged",
    "encrypted_message",
    "Update",
];

/// Input layout: `[name][data]`, where a name byte of 128 or more means the
/// event name is the data up to its first LF. A decoded event's payload is
/// UTF-8 JSON following its kind's SPEC 4 rule, its kind is the name's, its
/// id is what `message_id` reads from the payload; only the kinds that need
/// an object, an id or JSON refuse anything, and only for lacking it.
pub fn mastodon_sse(data: &[u8]) {
    let (event, payload) = event_and_data(data);
    check_sse(&event, &payload);
    // `message_id` on bytes that never went through the decoder.
    for kind in kinds::KINDS {
        let _ = message_id(*kind, data);
    }
}

/// Input layout: `[mode][frame]`: the frame as the server's raw text, which
/// decodes to the fields serde_json sees in it (payload rules as over SSE),
/// and a frame built from the same bytes (event chosen by `mode`, payload
/// string the rest), which decodes as the SSE event it was made from.
pub fn mastodon_ws(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let frame = input.rest();
    check_ws_raw(frame);

    let (event, payload) = event_and_data(data);
    let stream: Vec<String> = match mode % 4 {
        0 => vec!["user".into()],
        1 => vec!["public:local".into()],
        2 => vec!["hashtag".into(), event.clone()],
        _ => vec!["list".into(), payload.chars().take(8).collect()],
    };
    let built = serde_json::json!({ "stream": stream, "event": event, "payload": payload }).to_string();
    let over_ws = from_websocket(built.as_bytes());
    let over_sse = from_sse(&event, &payload);
    match (over_ws, over_sse) {
        (Ok(MastodonFrame::Event(ws)), Ok(sse)) => {
            assert_eq!(ws.stream.as_deref(), Some(&stream[..]), "the stream echo of {built}");
            assert_eq!(MastodonMessage { stream: None, ..ws }, sse, "WebSocket and SSE decode {built} apart");
        }
        (Err(ws), Err(sse)) => assert_eq!(ws, sse, "WebSocket and SSE refuse {built} for different reasons"),
        (ws, sse) => panic!("WebSocket gives {ws:?}, SSE gives {sse:?}, for {built}"),
    }
}

fn event_and_data(data: &[u8]) -> (String, String) {
    let mut input = Input::new(data);
    let name = input.byte();
    let rest = input.rest();
    if usize::from(name) < 128 {
        let event = EVENT_NAMES[usize::from(name) % EVENT_NAMES.len()];
        return (event.to_owned(), String::from_utf8_lossy(rest).into_owned());
    }
    let (event, data) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    (String::from_utf8_lossy(event).into_owned(), String::from_utf8_lossy(data).into_owned())
}

fn check_sse(event: &str, data: &str) {
    let kind = kind_of(event);
    match from_sse(event, data) {
        Ok(m) => {
            assert_eq!(m.event_name, event);
            assert_eq!(m.stream, None, "SSE events carry no stream");
            check_message(&m, data);
        }
        Err(e) => {
            assert_one_line(&e);
            // Only these kinds refuse anything, and only for these reasons.
            let refusable = match kind {
                kinds::DELETE | kinds::ANNOUNCEMENT_DELETE => matches!(e, MastodonDecodeError::EmptyId { .. }),
                kinds::FILTERS_CHANGED => {
                    matches!(e, MastodonDecodeError::NotJson { .. } | MastodonDecodeError::NotObject { .. })
                        && !is_json(data)
                }
                kinds::UPDATE
                | kinds::STATUS_UPDATE
                | kinds::NOTIFICATION
                | kinds::CONVERSATION
                | kinds::ANNOUNCEMENT
                | kinds::ANNOUNCEMENT_REACTION => object_members(data).is_none(),
                _ => false,
            };
            assert!(refusable, "{event:?} refused ({e}) for data {}", show(data.as_bytes(), 300));
        }
    }
}

/// What holds for every decoded message; `text` is the payload text the
/// event carried (SSE data, or the WebSocket payload string).
fn check_message(m: &MastodonMessage, text: &str) {
    assert_eq!(m.kind, kind_of(&m.event_name));
    let Ok(payload) = std::str::from_utf8(&m.payload) else {
        panic!("payload of {:?} is not UTF-8: {}", m.event_name, show(&m.payload, 300));
    };
    assert!(is_json(payload), "payload of {:?} is not JSON: {}", m.event_name, show(&m.payload, 300));
    assert_eq!(m.id, message_id(m.kind, &m.payload), "id of {:?} is not the payload's", m.event_name);
    let quoted = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    match m.kind {
        kinds::DELETE | kinds::ANNOUNCEMENT_DELETE => {
            let id = json_ref::string_value(text).unwrap_or_else(|| text.to_owned());
            assert_eq!(m.id.as_deref(), Some(id.as_str()), "the deleted id of {}", show(text.as_bytes(), 200));
            assert_eq!(payload, quoted(&id), "a deleted id's payload is the id as a JSON string");
        }
        kinds::NOTIFICATIONS_MERGED => {
            let value = json_ref::string_value(text).unwrap_or_else(|| text.to_owned());
            assert_eq!(payload, quoted(&value));
        }
        kinds::FILTERS_CHANGED if text.trim().is_empty() || text == "undefined" => assert_eq!(payload, "null"),
        kinds::FILTERS_CHANGED => assert_eq!(payload, text),
        EventKind::UNKNOWN => {
            assert_eq!(m.id, None);
            assert_eq!(payload, if is_json(text) { text.to_owned() } else { quoted(text) });
        }
        _ => {
            assert_eq!(payload, text, "{:?} hands on its payload as sent", m.event_name);
            let Some(members) = object_members(text) else {
                panic!("{:?} accepted a payload that is not an object: {}", m.event_name, show(text.as_bytes(), 300));
            };
            let want = match m.kind {
                kinds::ANNOUNCEMENT_REACTION => None,
                _ => members.get("id").and_then(|v| object_id(v.get())),
            };
            assert_eq!(m.id, want, "the top-level id of {}", show(text.as_bytes(), 300));
        }
    }
}

fn check_ws_raw(frame: &[u8]) {
    let got = match from_websocket(frame) {
        Ok(got) => got,
        Err(e) => {
            assert_one_line(&e);
            return;
        }
    };
    let Ok(text) = std::str::from_utf8(frame) else { panic!("a frame that is not UTF-8 decoded: {got:?}") };
    let Some(top) = object_members(text) else { panic!("a frame that is not an object decoded: {got:?}") };
    match got {
        MastodonFrame::Error { message, .. } => {
            assert!(!top.contains_key("event"), "an error frame with an event: {}", show(frame, 300));
            assert!(top.contains_key("error"), "an error frame without an error: {}", show(frame, 300));
            assert!(!message.is_empty() || top.get("error").is_some_and(|e| e.get() == "\"\""));
        }
        MastodonFrame::Event(m) => {
            let event = top.get("event").and_then(|v| json_ref::string_value(v.get()));
            assert_eq!(Some(&m.event_name), event.as_ref(), "event name of {}", show(frame, 300));
            let stream = match top.get("stream").map(|v| v.get()) {
                None | Some("null") => None,
                Some(raw) => serde_json::from_str::<Vec<String>>(raw).ok(),
            };
            assert_eq!(m.stream, stream, "stream of {}", show(frame, 300));
            match top.get("payload").map(|v| v.get()).filter(|p| *p != "null") {
                Some(raw) => match json_ref::string_value(raw) {
                    Some(text) => check_message(&m, &text),
                    None => {
                        // Not a string: passed through where no string is needed.
                        assert!(matches!(m.kind, EventKind::UNKNOWN | kinds::FILTERS_CHANGED), "{m:?}");
                        assert_eq!(&m.payload[..], raw.as_bytes());
                    }
                },
                None => assert_eq!(&m.payload[..], b"null", "an event without payload hands on null"),
            }
        }
    }
}

/// The payload is JSON (grammar only: lone surrogate escapes pass, as for
/// any JSON reader that does not build strings).
fn is_json(text: &str) -> bool {
    serde_json::from_str::<IgnoredAny>(text).is_ok()
}

/// The top-level members of a JSON object, last duplicate winning.
fn object_members(text: &str) -> Option<BTreeMap<String, Box<RawValue>>> {
    serde_json::from_str(text).ok()
}

/// A status (notification, ...) id: a non-empty JSON string, or digits.
fn object_id(raw: &str) -> Option<Box<str>> {
    if raw.starts_with('"') {
        json_ref::string_value(raw).filter(|s| !s.is_empty()).map(String::into_boxed_str)
    } else if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        Some(raw.into())
    } else {
        None
    }
}

pub(crate) fn assert_one_line(e: &impl std::fmt::Display) {
    let text = e.to_string();
    assert!(!text.contains('\n'), "an error message of more than one line: {text:?}");
}
