//! Decodes Mastodon streaming events, from SSE (`event:` / `data:`) and from
//! WebSocket frames (`{"stream":[...],"event":"...","payload":"<json string>"}`),
//! into a kind, the SPEC 4 `id`, the `stream` and the payload bytes the
//! envelope writes (protocols.md B.3-B.5, B.9). Pure: no IO, no actors.
//!
//! Like the Twitter classifier, nothing here builds a JSON tree: objects
//! are walked once by their top-level keys, values we do not need are skipped
//! (and validated) by `IgnoredAny`, the few we need are borrowed as `RawValue`s.
//!
//! Payload rules (SPEC 4): the payload is the message as sent minus framing;
//! for a WebSocket message, whose `payload` is a JSON string, the decoded
//! string; for `delete` / `announcement.delete` the bare id as a JSON string;
//! for `filters_changed` without a payload, `null`; for `notifications_merged`
//! the bare `"1"` as a JSON string. Every payload that leaves this module is
//! valid JSON, so the envelope stays valid JSON.

use std::fmt;

use bytes::Bytes;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::kinds;
use crate::event::EventKind;

/// One decoded Mastodon event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MastodonMessage {
    /// The kind, from the event name ([`kind_of`]).
    pub kind: EventKind,
    /// The event name as sent, kept so an `unknown` event can still be told apart.
    pub event_name: String,
    /// SPEC 4 `id` ([`message_id`]): status, notification, conversation or
    /// announcement id, or the deleted id; `None` for the other kinds.
    pub id: Option<Box<str>>,
    /// The stream the event came on, as the server echoed it (a hashtag keeps
    /// the case it was subscribed with); `None` over SSE, where the caller
    /// knows its stream.
    pub stream: Option<Vec<String>>,
    /// The envelope's `payload`: always valid JSON (see the module docs).
    pub payload: Bytes,
}

/// One WebSocket frame from the streaming server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MastodonFrame {
    /// An event.
    Event(MastodonMessage),
    /// An error frame (`{"error":"...","status":400}`), e.g. for a failed subscribe.
    Error {
        /// The `error` text.
        message: String,
        /// The `status`, which older servers and failed unsubscribes leave out.
        status: Option<u16>,
    },
}

/// Why an SSE event or a WebSocket frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MastodonDecodeError {
    /// A WebSocket frame that is not UTF-8 (text frames must be).
    #[error("frame is not valid UTF-8")]
    NotUtf8,
    /// Not valid JSON where JSON is required (the serde message says where).
    #[error("{what} is not valid JSON: {detail}")]
    NotJson {
        /// `"frame"` or `"payload"`.
        what: &'static str,
        /// serde_json's message.
        detail: String,
    },
    /// Valid JSON, but not an object where one is required.
    #[error("{what} is not a JSON object")]
    NotObject {
        /// `"frame"` or `"payload"`.
        what: &'static str,
    },
    /// A WebSocket frame with neither `event` nor `error`.
    #[error("frame has no \"event\" (and no \"error\")")]
    MissingEvent,
    /// A frame field of the wrong type (`event` not a string, `stream` not an
    /// array of strings).
    #[error("frame field {0:?} has the wrong type")]
    BadField(&'static str),
    /// A WebSocket payload that must be a JSON string is something else.
    #[error("payload of {event:?} is not a JSON string")]
    PayloadNotString {
        /// The event name.
        event: String,
    },
    /// An event that needs a payload came without one.
    #[error("{event:?} has no payload")]
    MissingPayload {
        /// The event name.
        event: String,
    },
    /// A `delete` / `announcement.delete` whose id is empty.
    #[error("{event:?} carries an empty id")]
    EmptyId {
        /// The event name.
        event: String,
    },
}

/// The kind for a Mastodon event name (case-sensitive, as the server sends
/// them); anything else, `encrypted_message` included, is [`EventKind::UNKNOWN`].
pub fn kind_of(event_name: &str) -> EventKind {
    match event_name {
        "update" => kinds::UPDATE,
        "delete" => kinds::DELETE,
        "notification" => kinds::NOTIFICATION,
        "conversation" => kinds::CONVERSATION,
        "status.update" => kinds::STATUS_UPDATE,
        "filters_changed" => kinds::FILTERS_CHANGED,
        "announcement" => kinds::ANNOUNCEMENT,
        "announcement.reaction" => kinds::ANNOUNCEMENT_REACTION,
        "announcement.delete" => kinds::ANNOUNCEMENT_DELETE,
        "notifications_merged" => kinds::NOTIFICATIONS_MERGED,
        _ => EventKind::UNKNOWN,
    }
}

/// Decodes one SSE event: `data` is the payload as sent (JSON text, a bare id
/// for `delete` / `announcement.delete`, `1` for `notifications_merged`,
/// nothing or `undefined` for `filters_changed`). `stream` is `None`.
pub fn from_sse(event: &str, data: &str) -> Result<MastodonMessage, MastodonDecodeError> {
    let kind = kind_of(event);
    let (id, payload) = decode_payload(kind, event, Text::Borrowed(data))?;
    Ok(MastodonMessage { kind, event_name: event.to_owned(), id, stream: None, payload })
}

/// Decodes one WebSocket text frame: an event, or an error frame (`error`
/// present and `event` absent, protocols.md B.4).
pub fn from_websocket(frame: &[u8]) -> Result<MastodonFrame, MastodonDecodeError> {
    let text = crate::scan::utf8(frame).ok_or(MastodonDecodeError::NotUtf8)?;
    let top: WsTop<'_> = serde_json::from_str(text).map_err(|e| json_error("frame", &e))?;
    let Some(event) = top.event else {
        return match top.error {
            Some(error) => Ok(MastodonFrame::Error {
                message: json_string(error).unwrap_or_else(|| error.get().to_owned()),
                status: top.status.and_then(raw_id).and_then(|s| s.parse().ok()),
            }),
            None => Err(MastodonDecodeError::MissingEvent),
        };
    };
    let event = json_string(event).ok_or(MastodonDecodeError::BadField("event"))?;
    let stream = match top.stream {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(raw) => {
            Some(serde_json::from_str::<Vec<String>>(raw.get()).map_err(|_| MastodonDecodeError::BadField("stream"))?)
        }
    };
    let kind = kind_of(&event);
    let payload = top.payload.filter(|p| p.get() != "null");
    let (id, payload) = match payload {
        None => match kind {
            // The server leaves `payload` out for filters_changed (B.4).
            kinds::FILTERS_CHANGED | kinds::NOTIFICATIONS_MERGED | EventKind::UNKNOWN => {
                (None, Bytes::from_static(b"null"))
            }
            _ => return Err(MastodonDecodeError::MissingPayload { event }),
        },
        Some(raw) => match json_string(raw) {
            Some(s) => decode_payload(kind, &event, Text::Owned(s))?,
            // Not a string: only where no string is required, passed through.
            None if matches!(kind, EventKind::UNKNOWN | kinds::FILTERS_CHANGED) => {
                (None, Bytes::copy_from_slice(raw.get().as_bytes()))
            }
            None => return Err(MastodonDecodeError::PayloadNotString { event }),
        },
    };
    Ok(MastodonFrame::Event(MastodonMessage { kind, event_name: event, id, stream, payload }))
}

/// The SPEC 4 `id` of an event's payload (the bytes [`MastodonMessage::payload`]
/// holds): the top-level `"id"` of a status (`update`, `status.update`),
/// notification, conversation or announcement; for `delete` /
/// `announcement.delete` the id itself (a JSON string, or the bare id as SSE
/// sends it); `None` for every other kind or when there is no usable id.
/// Only the top-level `"id"` is read; the rest is skipped, never built.
pub fn message_id(kind: EventKind, payload: &[u8]) -> Option<Box<str>> {
    let text = crate::scan::utf8(payload)?;
    if is_bare_id_kind(kind) {
        return bare_id(text).filter(|s| !s.is_empty()).map(Into::into);
    }
    if has_object_id(kind) {
        return scan_object(text).ok().flatten();
    }
    None
}

/// Normalises a hashtag the way the streaming server keys subscriptions
/// (protocols.md B.4): compatibility-folded, lower-cased, ASCII-folded, and
/// stripped of everything but letters, digits, `_`, `·` (U+00B7) and ZWNJ
/// (U+200C). Key shard maps on this; echo the tag as the user wrote it.
///
/// Limits: `unicode-normalization` is not in the dependency tree, so instead of
/// full NFKC only a small table of compatibility forms is applied (full-width
/// ASCII, `ĳ`, `ŀ`, `ſ`, `ŉ`, `ª`, `º`, `¹²³`). ASCII folding covers the Latin-1 and
/// Latin Extended-A letters with diacritics, one letter for one (as Mastodon's
/// table does: `æ`, `œ`, `ß`, `þ` stay). A decomposed accent (`e` + U+0301)
/// loses its combining mark, which matches NFKC-then-fold for those letters
/// but not for letters outside the table. "Letter or digit" is Rust's
/// `char::is_alphanumeric` (Alphabetic or Numeric), a little wider than `\p{L}\p{N}`.
pub fn normalize_hashtag(tag: &str) -> String {
    let mut out = String::with_capacity(tag.len());
    for c in tag.chars() {
        compat(c, &mut |c| {
            for lower in c.to_lowercase() {
                let folded = ascii_fold(lower);
                if folded.is_alphanumeric() || matches!(folded, '_' | '\u{00B7}' | '\u{200C}') {
                    out.push(folded);
                }
            }
        });
    }
    out
}

/// Payload text as it arrived: borrowed from SSE data, owned after decoding a
/// WebSocket JSON string (so it becomes `Bytes` without a copy).
enum Text<'a> {
    Borrowed(&'a str),
    Owned(String),
}

impl Text<'_> {
    fn as_str(&self) -> &str {
        match self {
            Text::Borrowed(s) => s,
            Text::Owned(s) => s,
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Text::Borrowed(s) => Bytes::copy_from_slice(s.as_bytes()),
            Text::Owned(s) => Bytes::from(s),
        }
    }
}

/// Kinds whose payload is a bare id.
fn is_bare_id_kind(kind: EventKind) -> bool {
    matches!(kind, kinds::DELETE | kinds::ANNOUNCEMENT_DELETE)
}

/// Kinds whose payload is an object with its own top-level `"id"`.
fn has_object_id(kind: EventKind) -> bool {
    matches!(
        kind,
        kinds::UPDATE | kinds::STATUS_UPDATE | kinds::NOTIFICATION | kinds::CONVERSATION | kinds::ANNOUNCEMENT
    )
}

/// Turns the payload text (SSE data, or a decoded WebSocket payload string)
/// into the envelope's payload bytes and the id.
fn decode_payload(
    kind: EventKind,
    event: &str,
    text: Text<'_>,
) -> Result<(Option<Box<str>>, Bytes), MastodonDecodeError> {
    let s = text.as_str();
    match kind {
        kinds::DELETE | kinds::ANNOUNCEMENT_DELETE => {
            let id = bare_id(s).unwrap_or_else(|| s.to_owned());
            if id.is_empty() {
                return Err(MastodonDecodeError::EmptyId { event: event.to_owned() });
            }
            let payload = json_quote(&id);
            Ok((Some(id.into_boxed_str()), payload))
        }
        kinds::NOTIFICATIONS_MERGED => {
            // The bare "1": always a JSON string, even though `1` parses as a number.
            let value = json_string_text(s).unwrap_or_else(|| s.to_owned());
            Ok((None, json_quote(&value)))
        }
        kinds::FILTERS_CHANGED => {
            if s.trim().is_empty() || s == "undefined" {
                return Ok((None, Bytes::from_static(b"null")));
            }
            serde_json::from_str::<IgnoredAny>(s).map_err(|e| json_error("payload", &e))?;
            Ok((None, text.into_bytes()))
        }
        kinds::UPDATE
        | kinds::STATUS_UPDATE
        | kinds::NOTIFICATION
        | kinds::CONVERSATION
        | kinds::ANNOUNCEMENT
        | kinds::ANNOUNCEMENT_REACTION => {
            let id = scan_object(s)?;
            let id = if has_object_id(kind) { id } else { None };
            Ok((id, text.into_bytes()))
        }
        _ => {
            if serde_json::from_str::<IgnoredAny>(s).is_ok() {
                Ok((None, text.into_bytes()))
            } else {
                Ok((None, json_quote(s)))
            }
        }
    }
}

/// The id out of a delete's payload text: the content of a JSON string, else
/// the text itself (Mastodon sends the bare id).
fn bare_id(s: &str) -> Option<String> {
    json_string_text(s).or_else(|| (!s.starts_with('"')).then(|| s.to_owned()))
}

/// The content of `s` if `s` is exactly one JSON string.
fn json_string_text(s: &str) -> Option<String> {
    if s.starts_with('"') {
        serde_json::from_str::<String>(s).ok()
    } else {
        None
    }
}

/// `s` as a JSON string literal.
fn json_quote(s: &str) -> Bytes {
    // Serialising a &str cannot fail; the fallback keeps the payload valid JSON.
    Bytes::from(serde_json::to_vec(s).unwrap_or_else(|_| b"null".to_vec()))
}

/// A raw JSON value's string content, if it is a string.
fn json_string(v: &RawValue) -> Option<String> {
    json_string_text(v.get())
}

/// A JSON string or number holding an id, as a string; null and others give None.
fn raw_id(v: &RawValue) -> Option<Box<str>> {
    let s = v.get();
    if s.starts_with('"') {
        serde_json::from_str::<String>(s).ok().filter(|s| !s.is_empty()).map(String::into_boxed_str)
    } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        Some(s.into())
    } else {
        None
    }
}

fn json_error(what: &'static str, e: &serde_json::Error) -> MastodonDecodeError {
    if e.classify() == serde_json::error::Category::Data {
        MastodonDecodeError::NotObject { what }
    } else {
        MastodonDecodeError::NotJson { what, detail: e.to_string() }
    }
}

/// Validates `s` as one JSON object and returns its top-level `"id"`.
fn scan_object(s: &str) -> Result<Option<Box<str>>, MastodonDecodeError> {
    let top: IdOnly<'_> = serde_json::from_str(s).map_err(|e| json_error("payload", &e))?;
    Ok(top.id.and_then(raw_id))
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum IdKey {
    Id,
    #[serde(other)]
    Other,
}

/// An object's top-level `"id"`, borrowed; everything else skipped.
struct IdOnly<'a> {
    id: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for IdOnly<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IdOnly<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut t = IdOnly { id: None };
                while let Some(key) = map.next_key::<IdKey>()? {
                    match key {
                        IdKey::Id => t.id = Some(map.next_value::<&'de RawValue>()?),
                        IdKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(t)
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum WsKey {
    Stream,
    Event,
    Payload,
    Error,
    Status,
    #[serde(other)]
    Other,
}

/// A WebSocket frame's top-level keys, borrowed.
#[derive(Default)]
struct WsTop<'a> {
    stream: Option<&'a RawValue>,
    event: Option<&'a RawValue>,
    payload: Option<&'a RawValue>,
    error: Option<&'a RawValue>,
    status: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for WsTop<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WsTop<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut t = WsTop::default();
                while let Some(key) = map.next_key::<WsKey>()? {
                    let slot = match key {
                        WsKey::Stream => &mut t.stream,
                        WsKey::Event => &mut t.event,
                        WsKey::Payload => &mut t.payload,
                        WsKey::Error => &mut t.error,
                        WsKey::Status => &mut t.status,
                        WsKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value::<&'de RawValue>()?);
                }
                Ok(t)
            }
        }
        d.deserialize_map(V)
    }
}

/// The compatibility forms NFKC would rewrite that matter for hashtags and can
/// be listed without a Unicode crate; everything else passes unchanged.
fn compat(c: char, emit: &mut impl FnMut(char)) {
    let mapped: &str = match c {
        // Full-width ASCII: U+FF01..=U+FF5E are U+0021..=U+007E shifted by 0xFEE0.
        '\u{FF01}'..='\u{FF5E}' => {
            if let Some(ascii) = char::from_u32(c as u32 - 0xFEE0) {
                emit(ascii);
            }
            return;
        }
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'Ŀ' => "L\u{00B7}",
        'ŀ' => "l\u{00B7}",
        'ſ' => "s",
        'ŉ' => "\u{02BC}n",
        'ª' => "a",
        'º' => "o",
        '¹' => "1",
        '²' => "2",
        '³' => "3",
        _ => {
            emit(c);
            return;
        }
    };
    mapped.chars().for_each(emit);
}

/// Mastodon's one-for-one ASCII folding of Latin-1 and Latin Extended-A
/// letters, lower-case side (the input is already lower-cased).
fn ascii_fold(c: char) -> char {
    match c {
        'à'..='å' | 'ā' | 'ă' | 'ą' => 'a',
        'ç' | 'ć' | 'ĉ' | 'ċ' | 'č' => 'c',
        'ð' | 'ď' | 'đ' => 'd',
        'è'..='ë' | 'ē' | 'ĕ' | 'ė' | 'ę' | 'ě' => 'e',
        'ĝ' | 'ğ' | 'ġ' | 'ģ' => 'g',
        'ĥ' | 'ħ' => 'h',
        'ì'..='ï' | 'ĩ' | 'ī' | 'ĭ' | 'į' | 'ı' => 'i',
        'ĵ' => 'j',
        'ķ' | 'ĸ' => 'k',
        'ĺ' | 'ļ' | 'ľ' | 'ł' => 'l',
        'ñ' | 'ń' | 'ņ' | 'ň' | 'ŋ' => 'n',
        'ò'..='ö' | 'ø' | 'ō' | 'ŏ' | 'ő' => 'o',
        'ŕ' | 'ŗ' | 'ř' => 'r',
        'ś' | 'ŝ' | 'ş' | 'š' => 's',
        'ţ' | 'ť' | 'ŧ' => 't',
        'ù'..='ü' | 'ũ' | 'ū' | 'ŭ' | 'ů' | 'ű' | 'ų' => 'u',
        'ŵ' => 'w',
        'ý' | 'ÿ' | 'ŷ' => 'y',
        'ź' | 'ż' | 'ž' => 'z',
        _ => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = r#"{"id":"108914327388663283","created_at":"2022-08-30T23:05:46.839Z","in_reply_to_id":null,"sensitive":false,"spoiler_text":"","visibility":"public","language":"en","uri":"https://example.social/users/alice/statuses/108914327388663283","content":"<p>Rust \"streams\" \ud83e\udd80 &amp; caf\u00e9 \u2014 #RustLang</p>","account":{"id":"1","username":"alice","acct":"alice","display_name":"Alice \ud83c\udf3b","emojis":[]},"media_attachments":[],"mentions":[],"tags":[{"name":"rustlang","url":"https://example.social/tags/rustlang"}],"emojis":[{"shortcode":"ferris","url":"https://example.social/e/ferris.png","static_url":"https://example.social/e/ferris.png","visible_in_picker":true}],"edited_at":null,"filtered":[{"filter":{"id":"3","title":"spoilers","context":["public"],"filter_action":"warn"},"keyword_matches":["spoiler"],"status_matches":null}]}"#;
    const EDITED: &str = r#"{"id":"108914327388663283","content":"<p>edited \u2705 \"quoted\"</p>","edited_at":"2022-08-30T23:10:00.000Z","account":{"id":"1"},"filtered":[]}"#;
    const NOTIFICATION: &str = r#"{"id":"34975861","type":"favourite","created_at":"2019-11-23T07:49:02.064Z","account":{"id":"971724","username":"zsc","display_name":"\u00c9mile \ud83d\ude00"},"status":{"id":"103186126728896492","content":"<p>hi \\ there</p>","filtered":[]}}"#;
    const CONVERSATION: &str = r#"{"id":"418450","unread":true,"accounts":[{"id":"482403","acct":"amic@nulled.red"}],"last_status":{"id":"103196583826321184","content":"<p>\u3053\u3093\u306b\u3061\u306f \ud83d\udc4b</p>","visibility":"direct"}}"#;
    const ANNOUNCEMENT: &str = r#"{"id":"8","content":"<p>Maintenance \u26a0\ufe0f tonight</p>","starts_at":null,"ends_at":null,"all_day":false,"published_at":"2020-07-03T01:27:38.726Z","read":false,"mentions":[],"tags":[],"emojis":[],"reactions":[{"name":"\ud83d\udc4d","count":3,"me":false}]}"#;
    const REACTION: &str = r#"{"name":"\ud83d\udc4d","count":2,"announcement_id":"8"}"#;

    fn ws(stream: &str, event: &str, payload: &str) -> Vec<u8> {
        let p = serde_json::to_string(payload).unwrap();
        format!(r#"{{"stream":{stream},"event":"{event}","payload":{p}}}"#).into_bytes()
    }

    fn ws_event(frame: &[u8]) -> MastodonMessage {
        match from_websocket(frame).unwrap() {
            MastodonFrame::Event(m) => m,
            other => panic!("not an event: {other:?}"),
        }
    }

    /// (event, payload text as the server sends it, kind, payload bytes out, id).
    fn cases() -> Vec<(&'static str, &'static str, EventKind, &'static str, Option<&'static str>)> {
        vec![
            ("update", STATUS, kinds::UPDATE, STATUS, Some("108914327388663283")),
            ("status.update", EDITED, kinds::STATUS_UPDATE, EDITED, Some("108914327388663283")),
            ("notification", NOTIFICATION, kinds::NOTIFICATION, NOTIFICATION, Some("34975861")),
            ("conversation", CONVERSATION, kinds::CONVERSATION, CONVERSATION, Some("418450")),
            ("announcement", ANNOUNCEMENT, kinds::ANNOUNCEMENT, ANNOUNCEMENT, Some("8")),
            ("announcement.reaction", REACTION, kinds::ANNOUNCEMENT_REACTION, REACTION, None),
            ("delete", "106692867363994015", kinds::DELETE, r#""106692867363994015""#, Some("106692867363994015")),
            ("announcement.delete", "8", kinds::ANNOUNCEMENT_DELETE, r#""8""#, Some("8")),
            ("notifications_merged", "1", kinds::NOTIFICATIONS_MERGED, r#""1""#, None),
            ("encrypted_message", r#"{"id":"5","x":1}"#, EventKind::UNKNOWN, r#"{"id":"5","x":1}"#, None),
            ("some.future_event", "not json at all", EventKind::UNKNOWN, r#""not json at all""#, None),
        ]
    }

    #[test]
    fn every_kind_over_sse() {
        for (event, data, kind, payload, id) in cases() {
            let m = from_sse(event, data).unwrap();
            assert_eq!(m.kind, kind, "{event}");
            assert_eq!(m.event_name, event);
            assert_eq!(std::str::from_utf8(&m.payload).unwrap(), payload, "{event}");
            assert_eq!(m.id.as_deref(), id, "{event}");
            assert_eq!(m.stream, None);
            serde_json::from_slice::<IgnoredAny>(&m.payload).unwrap();
            assert_eq!(message_id(kind, &m.payload).as_deref(), id, "{event}");
        }
        // filters_changed: SSE sends nothing (or `undefined`).
        for data in ["", "undefined"] {
            let m = from_sse("filters_changed", data).unwrap();
            assert_eq!((m.kind, m.id, &m.payload[..]), (kinds::FILTERS_CHANGED, None, &b"null"[..]));
        }
    }

    #[test]
    fn every_kind_over_websocket() {
        for (event, data, kind, payload, id) in cases() {
            let frame = ws(r#"["public"]"#, event, data);
            let m = ws_event(&frame);
            assert_eq!(m.kind, kind, "{event}");
            assert_eq!(m.event_name, event);
            assert_eq!(std::str::from_utf8(&m.payload).unwrap(), payload, "{event}");
            assert_eq!(m.id.as_deref(), id, "{event}");
            assert_eq!(m.stream, Some(vec!["public".to_owned()]));
            assert_eq!(message_id(kind, &m.payload).as_deref(), id, "{event}");
        }
        let m = ws_event(br#"{"stream":["user"],"event":"filters_changed"}"#);
        assert_eq!((m.kind, m.id, &m.payload[..]), (kinds::FILTERS_CHANGED, None, &b"null"[..]));
        assert_eq!(m.stream, Some(vec!["user".to_owned()]));
    }

    #[test]
    fn websocket_delete_is_a_bare_id_in_a_string() {
        let m = ws_event(br#"{"stream":["public:local"],"event":"delete","payload":"106692867363994015"}"#);
        assert_eq!(m.kind, kinds::DELETE);
        assert_eq!(m.id.as_deref(), Some("106692867363994015"));
        assert_eq!(&m.payload[..], br#""106692867363994015""#);
    }

    #[test]
    fn websocket_payload_string_decodes_exactly() {
        // Escaped quotes, backslashes, \u escapes incl. a surrogate pair, raw UTF-8.
        let frame = r#"{"stream":["user"],"event":"update","payload":"{\"id\":\"42\",\"content\":\"say \\\"hi\\\" \\\\ \\ud83e\\udd80 \u00e9 caf\u00e9 \u2603 ☃\",\"filtered\":[]}"}"#.as_bytes();
        let m = ws_event(frame);
        let want = r#"{"id":"42","content":"say \"hi\" \\ \ud83e\udd80 é café ☃ ☃","filtered":[]}"#;
        assert_eq!(std::str::from_utf8(&m.payload).unwrap(), want);
        assert_eq!(m.id.as_deref(), Some("42"));
        // An id with escapes in a delete is decoded, and re-quoted validly.
        let m = ws_event(br#"{"stream":["user"],"event":"delete","payload":"12\"3\u00e9"}"#);
        assert_eq!(m.id.as_deref(), Some("12\"3é"));
        assert_eq!(&m.payload[..], r#""12\"3é""#.as_bytes());
    }

    #[test]
    fn error_frames_with_and_without_status() {
        let f = from_websocket(br#"{"error":"Missing tag name parameter","status":400}"#).unwrap();
        assert_eq!(f, MastodonFrame::Error { message: "Missing tag name parameter".into(), status: Some(400) });
        let f = from_websocket(br#"{"error":"Not authorized to stream this list","status":401}"#).unwrap();
        assert_eq!(f, MastodonFrame::Error { message: "Not authorized to stream this list".into(), status: Some(401) });
        let f = from_websocket(br#"{"error":"Error unsubscribing from channel"}"#).unwrap();
        assert_eq!(f, MastodonFrame::Error { message: "Error unsubscribing from channel".into(), status: None });
        // Out-of-range status is dropped, not wrapped.
        let f = from_websocket(br#"{"error":"x","status":70000}"#).unwrap();
        assert_eq!(f, MastodonFrame::Error { message: "x".into(), status: None });
        // `event` present wins: an event that happens to carry an `error` key.
        let m = ws_event(br#"{"stream":["user"],"event":"notifications_merged","payload":"1","error":"x"}"#);
        assert_eq!(m.kind, kinds::NOTIFICATIONS_MERGED);
    }

    #[test]
    fn hashtag_echo_kept_but_normalised_for_keys() {
        let frame = ws(r#"["hashtag","RustLang"]"#, "update", STATUS);
        let m = ws_event(&frame);
        assert_eq!(m.stream, Some(vec!["hashtag".to_owned(), "RustLang".to_owned()]));
        assert_eq!(normalize_hashtag("RustLang"), "rustlang");
        let m = ws_event(&ws(r#"["list","42"]"#, "delete", "7"));
        assert_eq!(m.stream, Some(vec!["list".to_owned(), "42".to_owned()]));
    }

    #[test]
    fn hashtag_normalisation() {
        let cases = [
            ("RustLang", "rustlang"),
            ("Café", "cafe"),
            ("Cafe\u{301}", "cafe"),
            ("foo-bar", "foobar"),
            ("foo_bar", "foo_bar"),
            ("Ĳssel", "ijssel"),
            ("ŁÓDŹ", "lodz"),
            ("Straße", "straße"),
            ("ｒｕｓｔ２０２６", "rust2026"),
            ("l·l", "l·l"),
            ("#Hello World!", "helloworld"),
            ("می\u{200C}خواهم", "می\u{200C}خواهم"),
            ("東京", "東京"),
            ("🦀rust", "rust"),
            ("", ""),
        ];
        for (tag, want) in cases {
            assert_eq!(normalize_hashtag(tag), want, "{tag}");
        }
        // Idempotent.
        for (tag, _) in cases {
            let once = normalize_hashtag(tag);
            assert_eq!(normalize_hashtag(&once), once);
        }
    }

    #[test]
    fn kind_names() {
        for k in kinds::KINDS {
            assert_eq!(kind_of(k.as_str()), *k, "{k}");
        }
        for foreign in ["tweet", "scrub_geo", "gap", "commit"] {
            assert_eq!(kind_of(foreign), EventKind::UNKNOWN, "{foreign}");
        }
        assert_eq!(kind_of("Update"), EventKind::UNKNOWN);
        assert_eq!(kind_of("message"), EventKind::UNKNOWN);
    }

    #[test]
    fn malformed_inputs_are_errors() {
        use MastodonDecodeError as E;
        assert!(matches!(from_sse("update", r#"{"id":"1","content":"#), Err(E::NotJson { .. })));
        assert!(matches!(from_sse("update", "106692867363994015"), Err(E::NotObject { .. })));
        assert!(matches!(from_sse("update", "[1]"), Err(E::NotObject { .. })));
        assert!(matches!(from_sse("notification", ""), Err(E::NotJson { .. })));
        assert!(matches!(from_sse("delete", ""), Err(E::EmptyId { .. })));
        assert!(matches!(from_sse("filters_changed", "{"), Err(E::NotJson { .. })));
        assert!(matches!(from_websocket(b"\xff\xfe"), Err(E::NotUtf8)));
        assert!(matches!(from_websocket(b"{\"event\":"), Err(E::NotJson { .. })));
        assert!(matches!(from_websocket(b"[1,2]"), Err(E::NotObject { .. })));
        assert!(matches!(from_websocket(br#"{"stream":["user"]}"#), Err(E::MissingEvent)));
        assert!(matches!(from_websocket(br#"{"event":5,"payload":"1"}"#), Err(E::BadField("event"))));
        assert!(matches!(
            from_websocket(br#"{"event":"delete","stream":"user","payload":"1"}"#),
            Err(E::BadField("stream"))
        ));
        assert!(matches!(
            from_websocket(br#"{"event":"update","payload":{"id":"1"}}"#),
            Err(E::PayloadNotString { .. })
        ));
        assert!(matches!(from_websocket(br#"{"event":"update"}"#), Err(E::MissingPayload { .. })));
        assert!(matches!(from_websocket(br#"{"event":"update","payload":"not json"}"#), Err(E::NotJson { .. })));
        assert!(matches!(from_websocket(br#"{"event":"delete","payload":""}"#), Err(E::EmptyId { .. })));
        // Unknown events keep whatever JSON they carry.
        let m = ws_event(br#"{"stream":["user"],"event":"x.new","payload":{"a":1}}"#);
        assert_eq!((m.kind, &m.payload[..]), (EventKind::UNKNOWN, &br#"{"a":1}"#[..]));
        // message_id never fails, it just finds nothing.
        assert_eq!(message_id(kinds::UPDATE, b"{"), None);
        assert_eq!(message_id(kinds::UPDATE, br#"{"id":null}"#), None);
        assert_eq!(message_id(kinds::UPDATE, br#"{"account":{"id":"9"}}"#), None);
        assert_eq!(message_id(kinds::UPDATE, br#"{"\u0069d":"9"}"#).as_deref(), Some("9"));
        assert_eq!(message_id(kinds::DELETE, b"123").as_deref(), Some("123"));
        assert_eq!(message_id(kinds::DELETE, br#""12\"3""#).as_deref(), Some("12\"3"));
        assert_eq!(message_id(kinds::FILTERS_CHANGED, STATUS.as_bytes()), None);
    }

    #[test]
    fn fuzzish_inputs_never_panic_and_ok_payloads_are_json() {
        let mut rng = fastrand::Rng::with_seed(0x6d61_7374_6f64_6f6e);
        let alphabet = br#"{}[]":,\ 01 abc"event""payload""stream""error""update""delete"\u00e9\"nulltrue"#;
        let names: Vec<&str> = cases().iter().map(|c| c.0).chain(["filters_changed", "", "message"]).collect();
        let valid: Vec<Vec<u8>> = cases().iter().map(|(e, d, ..)| ws(r#"["hashtag","Rust"]"#, e, d)).collect();
        let check = |r: Result<MastodonMessage, MastodonDecodeError>| {
            if let Ok(m) = r {
                serde_json::from_slice::<IgnoredAny>(&m.payload).unwrap();
            }
        };
        let (mut ws_ok, mut ws_err) = (0, 0);
        for i in 0..600 {
            let bytes: Vec<u8> = match i % 3 {
                // Random bytes.
                0 => (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect(),
                // Random JSON-ish tokens.
                1 => (0..rng.usize(0..80)).map(|_| alphabet[rng.usize(..alphabet.len())]).collect(),
                // A valid frame, sometimes cut, sometimes with a byte changed.
                _ => {
                    let mut f = valid[rng.usize(..valid.len())].clone();
                    if rng.bool() {
                        f.truncate(rng.usize(0..=f.len()));
                    }
                    if rng.bool() && !f.is_empty() {
                        let at = rng.usize(..f.len());
                        f[at] = rng.u8(..);
                    }
                    f
                }
            };
            match from_websocket(&bytes) {
                Ok(MastodonFrame::Event(m)) => {
                    ws_ok += 1;
                    check(Ok(m));
                }
                Ok(MastodonFrame::Error { .. }) => ws_ok += 1,
                Err(_) => ws_err += 1,
            }
            let text = String::from_utf8_lossy(&bytes);
            check(from_sse(names[rng.usize(..names.len())], &text));
            for &k in kinds::KINDS {
                let _ = message_id(k, &bytes);
            }
            let _ = normalize_hashtag(&text);
        }
        // Both paths were exercised: some mutated frames still decode.
        assert!(ws_ok > 0 && ws_err > 0, "ok {ws_ok}, err {ws_err}");
    }
}
