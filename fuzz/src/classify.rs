//! `twitter_classify`: the Twitter classifier and the top-level scanner it
//! runs on, against the scanner's byte-loop reference and serde_json.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use streamherd_actors::event::EventKind;
use streamherd_actors::scan::{self, ScanError};
use streamherd_actors::twitter::classify::{classify_twitter, Classified, ClassifyError};
use streamherd_actors::twitter::kinds;

use crate::input::show;
use crate::json_ref::{self, Refused};
use crate::known::{self, Known};

/// The whole input is one message. `classify_twitter` accepts exactly what
/// the scanner's documented rules accept (so any object serde_json reads,
/// and a site-stream envelope whose message is one), `scan::members` visits
/// what the reference visits, and where serde_json reads the message the
/// kind, id and details are those of its reading (escaped keys decoded, the
/// last duplicate winning). Invalid UTF-8 is refused.
pub fn twitter_classify(data: &[u8]) {
    let got = classify_twitter(data);
    let Ok(text) = std::str::from_utf8(data) else {
        assert!(matches!(got, Err(ClassifyError::NotJson(_))), "invalid UTF-8 accepted: {got:?}");
        return;
    };
    check_scanner(text);

    // Acceptance is the scanner's rules, applied to the envelope and, for a
    // site-stream envelope, to the message inside it.
    let want = reference_verdict(text);
    match (&got, want) {
        (Ok(_), Ok(())) => {}
        (Err(ClassifyError::NotObject), Err(Refused::NotObject)) => {}
        (Err(ClassifyError::NotJson(_)), Err(Refused::NotJson)) => {}
        _ => panic!("classify_twitter gave {got:?}, the scanner's rules {want:?}, for {}", show(data, 400)),
    }

    // Everything serde_json reads as an object (with, in an envelope, an
    // object as its message) is accepted, and classified as a JSON reader
    // sees it: escaped keys decoded, the last of duplicate keys winning.
    if serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(data).is_ok() {
        if let Some(want) = serde_classify(text, Nested::Decoded) {
            match &got {
                Ok(c) if *c == want => {}
                Ok(c)
                    if known::tolerated(Known::NestedKeysUndecoded)
                        && serde_classify(text, Nested::Raw).as_ref() == Some(c) => {}
                Ok(c) => panic!(
                    "classification differs from serde_json's reading of {}:\n got {c:?}\nwant {want:?}",
                    show(data, 400)
                ),
                Err(e) => panic!("serde_json reads an object, classify_twitter refuses it ({e}): {}", show(data, 400)),
            }
        }
    }
}

/// How the keys of nested objects (`delete.status`, ...) are read.
#[derive(Clone, Copy)]
enum Nested {
    /// As a JSON reader sees them.
    Decoded,
    /// As written (`Known::NestedKeysUndecoded`).
    Raw,
}

/// `scan::members` visits what the reference visits, in order, with the same verdict.
fn check_scanner(text: &str) {
    let mut visited = Vec::new();
    let got = scan::members(text, |k, v| visited.push((k, v)));
    let (members, want) = json_ref::members(text.as_bytes());
    let want_visits: Vec<(&str, &str)> =
        members.iter().map(|m| (&text[m.key.clone()], &text[m.value.clone()])).collect();
    let same_verdict = matches!(
        (got, want),
        (Ok(()), Ok(()))
            | (Err(ScanError::NotObject), Err(Refused::NotObject))
            | (Err(ScanError::NotJson(_)), Err(Refused::NotJson))
    );
    assert!(same_verdict, "scan::members gave {got:?}, the reference {want:?}, for {}", show(text.as_bytes(), 400));
    assert_eq!(visited, want_visits, "scan::members visited other members of {}", show(text.as_bytes(), 400));
}

/// The scanner's verdict on the message, unwrapping site-stream envelopes
/// as the classifier does (top-level keys decoded).
fn reference_verdict(text: &str) -> Result<(), Refused> {
    let (members, verdict) = json_ref::members(text.as_bytes());
    verdict?;
    let (mut for_user, mut message) = (false, None);
    for m in &members {
        match decoded_key(&text[m.key.clone()]).as_str() {
            "for_user" => for_user = true,
            "message" => message = Some(&text[m.value.clone()]),
            _ => {}
        }
    }
    match (for_user, message) {
        (true, Some(inner)) => reference_verdict(inner),
        _ => Ok(()),
    }
}

/// A raw key as a JSON reader sees it (the raw text when it does not decode).
fn decoded_key(raw: &str) -> String {
    if raw.contains('\\') {
        json_ref::string_value(&format!("\"{raw}\"")).unwrap_or_else(|| raw.to_owned())
    } else {
        raw.to_owned()
    }
}

/// An object's members: key, and the value's JSON text (the last of duplicates).
type Members = BTreeMap<String, String>;

/// The top level of a message, as serde_json reads it.
fn top_level(text: &str) -> Option<Members> {
    let members: BTreeMap<String, Box<RawValue>> = serde_json::from_str(text).ok()?;
    Some(members.into_iter().map(|(k, v)| (k, v.get().to_owned())).collect())
}

/// A nested object, its keys read as `nested` says.
fn nested_object(text: &str, nested: Nested) -> Option<Members> {
    match nested {
        Nested::Decoded => top_level(text),
        Nested::Raw => {
            top_level(text)?;
            let (members, verdict) = json_ref::members(text.as_bytes());
            verdict.ok()?;
            Some(members.iter().map(|m| (text[m.key.clone()].to_owned(), text[m.value.clone()].to_owned())).collect())
        }
    }
}

/// The classification rules over serde_json's reading of the message; None
/// when an envelope's message is not an object.
fn serde_classify(text: &str, nested: Nested) -> Option<Classified> {
    let top = top_level(text)?;
    let object = |t: &str| nested_object(t, nested);
    let get = |k: &str| top.get(k).map(String::as_str);
    if let (Some(for_user), Some(message)) = (get("for_user"), get("message")) {
        let mut inner = serde_classify(message, nested)?;
        inner.for_user = raw_id(for_user).and_then(|s| s.parse().ok());
        return Some(inner);
    }
    let has = |k: &str| top.contains_key(k);
    let mut c = Classified {
        kind: EventKind::UNKNOWN,
        id: None,
        for_user: None,
        disconnect_code: None,
        limit_track: None,
        control_uri: None,
    };
    if has("sender") {
        c.kind = kinds::DIRECT_MESSAGE;
        c.id = own_id(&top);
    } else if has("text") || has("full_text") {
        c.kind = kinds::TWEET;
        c.id = own_id(&top);
    } else if let Some(dm) = get("direct_message") {
        c.kind = kinds::DIRECT_MESSAGE;
        c.id = object(dm).and_then(|o| own_id(&o));
    } else if let Some(del) = get("delete") {
        c.kind = kinds::DELETE;
        let del = object(del);
        let target = del.as_ref().and_then(|d| d.get("status").or_else(|| d.get("direct_message")));
        c.id = target.and_then(|t| object(t)).and_then(|o| own_id(&o));
    } else if let Some(limit) = get("limit") {
        c.kind = kinds::LIMIT;
        c.limit_track = serde_json::from_str::<LimitBody>(limit).ok().and_then(|l| l.track);
    } else if has("warning") {
        c.kind = kinds::WARNING;
    } else if has("scrub_geo") {
        c.kind = kinds::SCRUB_GEO;
    } else if has("friends") || has("friends_str") {
        c.kind = kinds::FRIENDS;
    } else if has("event") {
        c.kind = kinds::EVENT;
    } else if let Some(d) = get("disconnect") {
        c.kind = kinds::DISCONNECT;
        c.disconnect_code = serde_json::from_str::<DisconnectBody>(d).ok().and_then(|d| d.code);
    } else if let Some(w) = get("status_withheld") {
        c.kind = kinds::STATUS_WITHHELD;
        c.id = object(w).and_then(|o| own_id(&o));
    } else if let Some(w) = get("user_withheld") {
        c.kind = kinds::USER_WITHHELD;
        c.id = object(w).and_then(|o| own_id(&o));
    } else if let Some(ctl) = get("control") {
        c.kind = kinds::CONTROL;
        c.control_uri = serde_json::from_str::<ControlBody>(ctl).ok().and_then(|c| c.control_uri);
    }
    Some(c)
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

/// `id_str` when it holds an id, else `id`.
fn own_id(obj: &Members) -> Option<Box<str>> {
    obj.get("id_str").and_then(|v| raw_id(v)).or_else(|| obj.get("id").and_then(|v| raw_id(v)))
}

/// A JSON string (decoded) or a plain unsigned integer, as text.
fn raw_id(raw: &str) -> Option<Box<str>> {
    if raw.starts_with('"') {
        json_ref::string_value(raw).map(String::into_boxed_str)
    } else if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        Some(raw.into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_reads_the_classifiers_examples() {
        let c =
            serde_classify(r#"{"for_user":"77","message":{"delete":{"status":{"id":5,"id_str":"5"}}}}"#, Nested::Raw);
        let c = c.map(|c| (c.kind, c.id, c.for_user));
        assert_eq!(c, Some((kinds::DELETE, Some("5".into()), Some(77))));
        assert_eq!(serde_classify(r#"{"for_user":1,"message":[1]}"#, Nested::Decoded), None);
        assert_eq!(reference_verdict(r#"{"for_user":1,"message":[1]}"#), Err(Refused::NotObject));
    }
}
