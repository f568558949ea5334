//! Classifies a Twitter v1.1 stream message by its top-level keys in one pass
//! of [`crate::scan`], without building a JSON tree or decoding what it skips;
//! the few values it needs are borrowed as raw slices. A message that is not
//! valid UTF-8, truncated, unbalanced or not an object is refused.

use serde::Deserialize;

use super::kinds;
use crate::event::EventKind;
use crate::scan::{self, ScanError};

/// What classification learnt about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// The kind (for a site-stream envelope: the kind of the inner message).
    pub kind: EventKind,
    /// SPEC 4 `id`: tweet id, deleted status/DM id, withheld status/user id, DM id.
    pub id: Option<Box<str>>,
    /// Site streams: the user the message was for.
    pub for_user: Option<u64>,
    /// Disconnect messages: the code.
    pub disconnect_code: Option<u32>,
    /// Limit notices: the cumulative `track` count.
    pub limit_track: Option<u64>,
    /// Control messages: the site stream's `control_uri`.
    pub control_uri: Option<String>,
}

/// A message that could not be classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// Not valid JSON (the serde message says where).
    #[error("not valid JSON: {0}")]
    NotJson(String),
    /// Valid JSON, but not an object.
    #[error("not a JSON object")]
    NotObject,
}

/// The top-level keys that matter, borrowed from the input.
#[derive(Default)]
struct TopLevel<'a> {
    text: bool,
    sender: bool,
    friends: bool,
    id_str: Option<&'a str>,
    id: Option<&'a str>,
    direct_message: Option<&'a str>,
    delete: Option<&'a str>,
    limit: Option<&'a str>,
    warning: bool,
    scrub_geo: bool,
    event: bool,
    disconnect: Option<&'a str>,
    status_withheld: Option<&'a str>,
    user_withheld: Option<&'a str>,
    control: Option<&'a str>,
    for_user: Option<&'a str>,
    message: Option<&'a str>,
}

impl<'a> TopLevel<'a> {
    /// One pass over the top level; the values that matter are borrowed.
    fn scan(text: &'a str) -> Result<Self, ClassifyError> {
        let mut t = TopLevel::default();
        scan::members(text, |key, value| match &*decoded_key(key) {
            "text" | "full_text" => t.text = true,
            "sender" => t.sender = true,
            "friends" | "friends_str" => t.friends = true,
            "warning" => t.warning = true,
            "scrub_geo" => t.scrub_geo = true,
            "event" => t.event = true,
            "id_str" => t.id_str = Some(value),
            "id" => t.id = Some(value),
            "direct_message" => t.direct_message = Some(value),
            "delete" => t.delete = Some(value),
            "limit" => t.limit = Some(value),
            "disconnect" => t.disconnect = Some(value),
            "status_withheld" => t.status_withheld = Some(value),
            "user_withheld" => t.user_withheld = Some(value),
            "control" => t.control = Some(value),
            "for_user" => t.for_user = Some(value),
            "message" => t.message = Some(value),
            _ => {}
        })
        .map_err(|e| match e {
            ScanError::NotObject => ClassifyError::NotObject,
            ScanError::NotJson(why) => ClassifyError::NotJson(why.to_owned()),
        })?;
        Ok(t)
    }
}

/// A key as text: borrowed unless it has escapes (rare), which are decoded so
/// that `"\u0074ext"` is `text`, as any JSON reader sees it.
fn decoded_key(raw: &str) -> std::borrow::Cow<'_, str> {
    if !raw.contains('\\') {
        return std::borrow::Cow::Borrowed(raw);
    }
    let quoted = format!("\"{raw}\"");
    serde_json::from_str::<String>(&quoted).map_or(std::borrow::Cow::Borrowed(raw), std::borrow::Cow::Owned)
}

/// Classifies one Twitter message (a site-stream envelope is unwrapped).
pub fn classify_twitter(payload: &[u8]) -> Result<Classified, ClassifyError> {
    let text = scan::utf8(payload).ok_or_else(|| ClassifyError::NotJson("invalid UTF-8".to_owned()))?;
    classify_text(text)
}

fn classify_text(text: &str) -> Result<Classified, ClassifyError> {
    let top = TopLevel::scan(text)?;
    if let (Some(for_user), Some(message)) = (top.for_user, top.message) {
        let mut inner = classify_text(message)?;
        inner.for_user = parse_u64(for_user);
        return Ok(inner);
    }
    Ok(classify_top(&top))
}

fn classify_top(t: &TopLevel<'_>) -> Classified {
    let mut c = Classified {
        kind: EventKind::UNKNOWN,
        id: None,
        for_user: None,
        disconnect_code: None,
        limit_track: None,
        control_uri: None,
    };
    // Twitter4J's order: sender, text, direct_message, delete, limit, warning,
    // scrub_geo, friends, event; then the rarer ones.
    if t.sender {
        c.kind = kinds::DIRECT_MESSAGE;
        c.id = own_id(t.id_str, t.id);
    } else if t.text {
        c.kind = kinds::TWEET;
        c.id = own_id(t.id_str, t.id);
    } else if let Some(dm) = t.direct_message {
        c.kind = kinds::DIRECT_MESSAGE;
        c.id = nested_id(dm);
    } else if let Some(del) = t.delete {
        c.kind = kinds::DELETE;
        c.id = deleted_id(del);
    } else if let Some(limit) = t.limit {
        c.kind = kinds::LIMIT;
        c.limit_track = serde_json::from_str::<LimitBody>(limit).ok().and_then(|l| l.track);
    } else if t.warning {
        c.kind = kinds::WARNING;
    } else if t.scrub_geo {
        c.kind = kinds::SCRUB_GEO;
    } else if t.friends {
        c.kind = kinds::FRIENDS;
    } else if t.event {
        c.kind = kinds::EVENT;
    } else if let Some(d) = t.disconnect {
        c.kind = kinds::DISCONNECT;
        c.disconnect_code = serde_json::from_str::<DisconnectBody>(d).ok().and_then(|d| d.code);
    } else if let Some(w) = t.status_withheld {
        c.kind = kinds::STATUS_WITHHELD;
        c.id = nested_id(w);
    } else if let Some(w) = t.user_withheld {
        c.kind = kinds::USER_WITHHELD;
        c.id = nested_id(w);
    } else if let Some(ctl) = t.control {
        c.kind = kinds::CONTROL;
        c.control_uri = serde_json::from_str::<ControlBody>(ctl).ok().and_then(|c| c.control_uri);
    }
    c
}

#[derive(Deserialize)]
struct LimitBody {
    track: Option<u64>,
}

#[derive(Deserialize)]
struct DisconnectBody {
    code: Option<u32>,
}

#[derive(Deserialize)]
struct ControlBody {
    control_uri: Option<String>,
}

/// `id_str` when present, else `id`, as a string.
fn own_id(id_str: Option<&str>, id: Option<&str>) -> Option<Box<str>> {
    id_str.and_then(raw_id).or_else(|| id.and_then(raw_id))
}

/// The `id_str` (else `id`) of the object `obj`.
fn nested_id(obj: &str) -> Option<Box<str>> {
    let (mut id_str, mut id) = (None, None);
    scan::members(obj, |k, v| match &*decoded_key(k) {
        "id_str" => id_str = Some(v),
        "id" => id = Some(v),
        _ => {}
    })
    .ok()?;
    own_id(id_str, id)
}

/// The id of the status (else DM) a `delete` notice names.
fn deleted_id(obj: &str) -> Option<Box<str>> {
    let (mut status, mut dm) = (None, None);
    scan::members(obj, |k, v| match &*decoded_key(k) {
        "status" => status = Some(v),
        "direct_message" => dm = Some(v),
        _ => {}
    })
    .ok()?;
    status.or(dm).and_then(nested_id)
}

/// A JSON string or number holding an id, as a string; null and others give None.
fn raw_id(s: &str) -> Option<Box<str>> {
    if let Some(plain) = scan::plain_string(s) {
        Some(plain.into())
    } else if s.starts_with('"') {
        serde_json::from_str::<String>(s).ok().map(String::into_boxed_str)
    } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        Some(s.into())
    } else {
        None
    }
}

fn parse_u64(v: &str) -> Option<u64> {
    raw_id(v).and_then(|s| s.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(s: &str) -> (EventKind, Option<String>) {
        let c = classify_twitter(s.as_bytes()).unwrap();
        (c.kind, c.id.map(|b| b.to_string()))
    }

    #[test]
    fn every_twitter_kind() {
        use crate::twitter::kinds::*;
        const UNKNOWN: EventKind = EventKind::UNKNOWN;
        let cases: &[(&str, EventKind, Option<&str>)] = &[
            (r#"{"created_at":"x","id":1,"id_str":"1","text":"hi","user":{"id":2}}"#, TWEET, Some("1")),
            (r#"{"id":7,"full_text":"long"}"#, TWEET, Some("7")),
            (
                r#"{"delete":{"status":{"id":1234,"id_str":"1234","user_id":3,"user_id_str":"3"}}}"#,
                DELETE,
                Some("1234"),
            ),
            (r#"{"delete":{"direct_message":{"id":5,"user_id":3}}}"#, DELETE, Some("5")),
            (r#"{"scrub_geo":{"user_id":14090452,"up_to_status_id":23260136625}}"#, SCRUB_GEO, None),
            (r#"{"limit":{"track":1234,"timestamp_ms":"1477757470194"}}"#, LIMIT, None),
            (
                r#"{"status_withheld":{"id":1234567890,"user_id":123456,"withheld_in_countries":["DE"]}}"#,
                STATUS_WITHHELD,
                Some("1234567890"),
            ),
            (r#"{"user_withheld":{"id":123456,"withheld_in_countries":["DE","AR"]}}"#, USER_WITHHELD, Some("123456")),
            (r#"{"disconnect":{"code":4,"stream_name":"s","reason":"r"}}"#, DISCONNECT, None),
            (r#"{"warning":{"code":"FALLING_BEHIND","message":"m","percent_full":60}}"#, WARNING, None),
            (r#"{"warning":{"code":"FOLLOWS_OVER_LIMIT","message":"m","user_id":123}}"#, WARNING, None),
            (r#"{"friends":[1,2,3]}"#, FRIENDS, None),
            (r#"{"friends_str":["1","2"]}"#, FRIENDS, None),
            (
                r#"{"event":"favorite","created_at":"x","source":{},"target":{},"target_object":{"id":1,"text":"t"}}"#,
                EVENT,
                None,
            ),
            (
                r#"{"direct_message":{"id":9,"id_str":"9","text":"hey","sender":{},"recipient":{}}}"#,
                DIRECT_MESSAGE,
                Some("9"),
            ),
            (r#"{"control":{"control_uri":"/1.1/site/c/1_1_54e3"}}"#, CONTROL, None),
            (r#"{"some_future_notice":{"x":1}}"#, UNKNOWN, None),
            (r#"{}"#, UNKNOWN, None),
        ];
        for (json, want_kind, want_id) in cases {
            let (k, id) = kind(json);
            assert_eq!(k, *want_kind, "{json}");
            assert_eq!(id.as_deref(), *want_id, "{json}");
        }
    }

    #[test]
    fn details_are_extracted() {
        let c = classify_twitter(br#"{"limit":{"track":1234}}"#).unwrap();
        assert_eq!(c.limit_track, Some(1234));
        let c = classify_twitter(br#"{"disconnect":{"code":12,"reason":"shed"}}"#).unwrap();
        assert_eq!(c.disconnect_code, Some(12));
        let c = classify_twitter(br#"{"control":{"control_uri":"/1.1/site/c/1_1_ab"}}"#).unwrap();
        assert_eq!(c.control_uri.as_deref(), Some("/1.1/site/c/1_1_ab"));
    }

    #[test]
    fn site_envelope_is_unwrapped() {
        let c = classify_twitter(br#"{"for_user":1888,"message":{"id":5,"id_str":"5","text":"x"}}"#).unwrap();
        assert_eq!((c.kind, c.id.as_deref(), c.for_user), (kinds::TWEET, Some("5"), Some(1888)));
        let c = classify_twitter(br#"{"message":{"friends":[1]},"for_user":"77"}"#).unwrap();
        assert_eq!((c.kind, c.for_user), (kinds::FRIENDS, Some(77)));
    }

    #[test]
    fn escaped_keys_and_nested_text_do_not_confuse() {
        // "text" only nested, not top-level: an event, not a tweet.
        let (k, _) = kind(r#"{"event":"favorite","target_object":{"text":"t","id_str":"3"}}"#);
        assert_eq!(k, kinds::EVENT);
        let (k, id) = kind(r#"{"\u0074ext":"escaped key","id_str":"42"}"#);
        assert_eq!((k, id.as_deref()), (kinds::TWEET, Some("42")));
    }

    #[test]
    fn malformed_and_non_objects_are_errors() {
        assert!(matches!(classify_twitter(br#"{"text":"unterminated"#), Err(ClassifyError::NotJson(_))));
        assert!(matches!(classify_twitter(b"[1,2]"), Err(ClassifyError::NotObject)));
        assert!(matches!(classify_twitter(b"42"), Err(ClassifyError::NotObject)));
        assert!(classify_twitter(b"\xff\xfe").is_err());
    }
}
