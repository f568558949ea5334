//! Subscriber options as the original Jetstream server parses them
//! (protocols.md D+.2, `parseSubscriberOptions`, `WantsCollection`,
//! `ParseMaxMessageSizeBytes`, the `options_update` read loop): the
//! collection and DID filter (`Filter`), NSID and DID syntax, Go's integer
//! parsing, and the `options_update` message with Go's unmarshalling rules.
//!
//! Pure functions; the error texts are the server's.

use std::collections::{BTreeSet, HashSet};

use serde_json::{Map, Value};

/// Most collections (prefixes, counted with repeats, plus unique NSIDs).
pub(crate) const MAX_COLLECTIONS: usize = 100;
/// Most unique DIDs.
pub(crate) const MAX_DIDS: usize = 10_000;
/// The error every invalid option starts with.
const INVALID: &str = "invalid subscriber options";

/// What a subscriber wants. Empty lists mean "all".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    /// The collections as given (the log shows these).
    pub(crate) collections: Vec<String>,
    /// Full NSIDs.
    full: HashSet<String>,
    /// `x.y.*` with the `*` cut and the `.` kept.
    prefixes: Vec<String>,
    /// The DIDs, duplicates removed.
    pub(crate) dids: BTreeSet<String>,
}

impl Filter {
    /// Validates the options like `parseSubscriberOptions`: every collection
    /// first, then every DID, then the DID count, then the collection count.
    pub(crate) fn parse(collections: &[String], dids: &[String]) -> Result<Filter, String> {
        let mut filter = Filter { collections: collections.to_vec(), ..Filter::default() };
        for c in collections {
            if let Some(head) = c.strip_suffix('*').filter(|_| c.ends_with(".*")) {
                // The head is not validated (D+.2).
                filter.prefixes.push(head.to_string());
            } else if is_nsid(c) {
                filter.full.insert(c.clone());
            } else {
                return Err(format!("{INVALID}: invalid collection: {c}"));
            }
        }
        for d in dids {
            if !is_did(d) {
                // The server wraps no detail here.
                return Err(INVALID.to_string());
            }
            filter.dids.insert(d.clone());
        }
        if filter.dids.len() > MAX_DIDS {
            return Err(format!("{INVALID}: too many wanted DIDs"));
        }
        if filter.prefixes.len() + filter.full.len() > MAX_COLLECTIONS {
            return Err(format!("{INVALID}: too many wanted collections"));
        }
        Ok(filter)
    }

    /// `WantsCollection` and the DID check of `emitToSubscriber`: an event
    /// without a collection (identity, account, any non-commit) passes every
    /// collection filter; the DID filter applies to every kind.
    pub(crate) fn wants(&self, did: &str, collection: Option<&str>) -> bool {
        let collection_ok = match collection {
            None => true,
            Some(_) if self.collections.is_empty() => true,
            Some(c) => self.full.contains(c) || self.prefixes.iter().any(|p| c.starts_with(p.as_str())),
        };
        collection_ok && (self.dids.is_empty() || self.dids.contains(did))
    }
}

/// indigo's `syntax.ParseNSID`: at most 317 characters; at least three
/// dot-separated segments of 1-63 characters; the first starts with a
/// letter, the middle ones with a letter or digit, both may contain `-`
/// but not end with it; the last (the name) is a letter then letters or
/// digits.
pub(crate) fn is_nsid(s: &str) -> bool {
    if s.is_empty() || s.len() > 317 {
        return false;
    }
    let segments: Vec<&str> = s.split('.').collect();
    if segments.len() < 3 {
        return false;
    }
    let domain_part = |seg: &str, first_letter: bool| {
        let b = seg.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && if first_letter { b[0].is_ascii_alphabetic() } else { b[0].is_ascii_alphanumeric() }
            && b[b.len() - 1] != b'-'
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
    };
    let (name, authority) = segments.split_last().unwrap_or((&"", &[]));
    let nb = name.as_bytes();
    authority.iter().enumerate().all(|(i, seg)| domain_part(seg, i == 0))
        && !nb.is_empty()
        && nb.len() <= 63
        && nb[0].is_ascii_alphabetic()
        && nb.iter().all(u8::is_ascii_alphanumeric)
}

/// indigo's `syntax.ParseDID`: `^did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]$`,
/// at most 2048 characters.
pub(crate) fn is_did(s: &str) -> bool {
    if s.len() > 2048 {
        return false;
    }
    let Some(rest) = s.strip_prefix("did:") else { return false };
    let Some((method, id)) = rest.split_once(':') else { return false };
    let id_char = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-');
    !method.is_empty()
        && method.bytes().all(|c| c.is_ascii_lowercase())
        && id.bytes().last().is_some_and(id_char)
        && id.bytes().all(|c| id_char(c) || matches!(c, b':' | b'%'))
}

/// Go's `strconv.ParseInt(s, 10, 64)` (and `Atoi` on 64-bit): an optional
/// sign and at least one decimal digit, nothing else; out of range fails.
pub(crate) fn parse_go_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Rust's parser takes the same sign and digits.
    s.parse().ok()
}

/// `ParseMaxMessageSizeBytes` of a query value: empty, invalid or negative
/// is 0 (no limit); Go's `uint32(int)` keeps the low 32 bits.
pub(crate) fn max_message_size(s: &str) -> u32 {
    match parse_go_int(s) {
        Some(v) if v >= 0 => v as u32,
        _ => 0,
    }
}

/// What a client text frame asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ClientMessage {
    /// Any other `type` (or none): logged and ignored.
    Ignored,
    /// A well-formed `options_update`; the lists still need `Filter::parse`.
    /// `maxMessageSizeBytes` is parsed but, as on the server, not applied.
    Update { collections: Vec<String>, dids: Vec<String> },
    /// The connection ends with this close reason.
    Invalid(String),
}

/// Reads a client text frame like `HandleSubscribe`'s read loop, with Go's
/// `json.Unmarshal` rules: the envelope must be an object (or `null`) with
/// a string `type`; the payload of an `options_update` must be present and
/// an object (or `null`) whose lists are string arrays (or `null`) and whose
/// `maxMessageSizeBytes` is an integer (or `null`). Keys match
/// case-insensitively (exact first), unknown keys are ignored.
pub(crate) fn parse_client_message(text: &str) -> ClientMessage {
    let sourced = |e: String| ClientMessage::Invalid(format!("failed to unmarshal subscriber sourced message: {e}"));
    let update = |e: String| ClientMessage::Invalid(format!("failed to unmarshal subscriber options update: {e}"));
    let envelope: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return sourced(e.to_string()),
    };
    let envelope = match envelope {
        Value::Object(m) => m,
        Value::Null => return ClientMessage::Ignored,
        other => return sourced(type_error(&other, "", "models.SubscriberSourcedMessage")),
    };
    match field(&envelope, "type") {
        None | Some(Value::Null) => return ClientMessage::Ignored,
        Some(Value::String(t)) if t == "options_update" => {}
        Some(Value::String(_)) => return ClientMessage::Ignored,
        Some(other) => return sourced(type_error(other, "SubscriberSourcedMessage.type", "string")),
    }
    let payload = match field(&envelope, "payload") {
        // A missing RawMessage unmarshals from no bytes at all.
        None => return update("unexpected end of JSON input".to_string()),
        Some(Value::Null) => return ClientMessage::Update { collections: Vec::new(), dids: Vec::new() },
        Some(Value::Object(m)) => m,
        Some(other) => return update(type_error(other, "", "models.SubscriberOptionsUpdatePayload")),
    };
    let list = |key: &str| -> Result<Vec<String>, String> {
        let go_field = format!("SubscriberOptionsUpdatePayload.{key}");
        match field(payload, key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(type_error(other, &go_field, "string")),
                })
                .collect(),
            Some(other) => Err(type_error(other, &go_field, "[]string")),
        }
    };
    let collections = match list("wantedCollections") {
        Ok(c) => c,
        Err(e) => return update(e),
    };
    let dids = match list("wantedDids") {
        Ok(d) => d,
        Err(e) => return update(e),
    };
    match field(payload, "maxMessageSizeBytes") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_i64().is_some() => {}
        Some(other) => {
            return update(type_error(other, "SubscriberOptionsUpdatePayload.maxMessageSizeBytes", "int"));
        }
    }
    ClientMessage::Update { collections, dids }
}

/// Go's lookup of a struct field: the exact key, else a case-insensitive one.
fn field<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).or_else(|| map.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

/// Go's `UnmarshalTypeError` text.
fn type_error(v: &Value, go_field: &str, go_type: &str) -> String {
    let what = match v {
        Value::Null => "null".to_string(),
        Value::Bool(_) => "bool".to_string(),
        Value::Number(n) => format!("number {n}"),
        Value::String(_) => "string".to_string(),
        Value::Array(_) => "array".to_string(),
        Value::Object(_) => "object".to_string(),
    };
    if go_field.is_empty() {
        format!("json: cannot unmarshal {what} into Go value of type {go_type}")
    } else {
        format!("json: cannot unmarshal {what} into Go struct field {go_field} of type {go_type}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(items: &[&str]) -> Vec<String> {
        items.iter().map(|i| i.to_string()).collect()
    }

    #[test]
    fn nsids_and_prefixes() {
        for ok in ["app.bsky.feed.post", "com.example.fooBar", "a.b.c", "com.example-x.v2name", "A1.b-2.Cde9"] {
            assert!(is_nsid(ok), "{ok}");
        }
        for bad in ["", "app.bsky", "app.bsky.graph.fo*", "*", "1app.bsky.post", "app.bsky-.post", "app.bsky.1post"] {
            assert!(!is_nsid(bad), "{bad}");
        }
        assert!(!is_nsid(&format!("a.b.{}", "c".repeat(64))));
        assert!(!is_nsid("app..post"));
        let f = Filter::parse(&s(&["app.bsky.graph.*", "app.bsky.feed.post"]), &[]).expect("valid");
        assert!(f.wants("did:plc:x", Some("app.bsky.graph.follow")));
        assert!(f.wants("did:plc:x", Some("app.bsky.feed.post")));
        assert!(!f.wants("did:plc:x", Some("app.bsky.graphx.follow")));
        assert!(!f.wants("did:plc:x", Some("app.bsky.feed.like")));
        // Identity and account events have no collection.
        assert!(f.wants("did:plc:x", None));
        // The head of a prefix is not validated; a bare or partial star is.
        assert!(Filter::parse(&s(&["!!.*"]), &[]).is_ok());
        assert_eq!(Filter::parse(&s(&["*"]), &[]).unwrap_err(), "invalid subscriber options: invalid collection: *");
        assert_eq!(
            Filter::parse(&s(&["app.bsky.graph.fo*"]), &[]).unwrap_err(),
            "invalid subscriber options: invalid collection: app.bsky.graph.fo*"
        );
        assert_eq!(Filter::parse(&s(&[""]), &[]).unwrap_err(), "invalid subscriber options: invalid collection: ");
    }

    #[test]
    fn collection_limit_counts_prefix_repeats_but_not_nsid_repeats() {
        let nsids: Vec<String> = (0..100).map(|i| format!("com.example.n{i}")).collect();
        assert!(Filter::parse(&nsids, &[]).is_ok());
        let mut repeated = nsids.clone();
        repeated.push("com.example.n0".into());
        assert!(Filter::parse(&repeated, &[]).is_ok());
        let mut over = nsids.clone();
        over.push("com.example.*".into());
        assert_eq!(Filter::parse(&over, &[]).unwrap_err(), "invalid subscriber options: too many wanted collections");
        let prefixes = vec!["com.example.*".to_string(); 101];
        assert!(Filter::parse(&prefixes, &[]).is_err());
    }

    #[test]
    fn dids_are_validated_and_counted_unique() {
        for ok in ["did:plc:ewvi7nxzyoun6zhxrhs64oiz", "did:web:example.com", "did:key:z6Mk%3A:x", "did:a:b"] {
            assert!(is_did(ok), "{ok}");
        }
        for bad in ["", "did:", "did:plc:", "did:PLC:abc", "did:plc:abc:", "did:plc:ab%", "plc:abc", "did:plc:a b"] {
            assert!(!is_did(bad), "{bad}");
        }
        assert_eq!(Filter::parse(&[], &s(&["nope"])).unwrap_err(), "invalid subscriber options");
        let unique: Vec<String> = (0..10_000).map(|i| format!("did:plc:{i}")).collect();
        let mut with_repeats = unique.clone();
        with_repeats.extend(unique.iter().take(50).cloned());
        let f = Filter::parse(&[], &with_repeats).expect("10,000 unique");
        assert_eq!(f.dids.len(), 10_000);
        let mut over = unique;
        over.push("did:plc:extra".into());
        assert_eq!(Filter::parse(&[], &over).unwrap_err(), "invalid subscriber options: too many wanted DIDs");
        let f = Filter::parse(&s(&["app.bsky.feed.post"]), &s(&["did:plc:a"])).expect("valid");
        assert!(f.wants("did:plc:a", None));
        assert!(!f.wants("did:plc:b", None));
        assert!(!f.wants("did:plc:b", Some("app.bsky.feed.post")));
        assert!(Filter::default().wants("anything", Some("x")));
    }

    #[test]
    fn go_integers() {
        assert_eq!(parse_go_int("1728000000000000"), Some(1_728_000_000_000_000));
        assert_eq!(parse_go_int("+5"), Some(5));
        assert_eq!(parse_go_int("-5"), Some(-5));
        for bad in ["", "+", "-", " 5", "5 ", "1_000", "0x10", "1.5", "9223372036854775808", "abc"] {
            assert_eq!(parse_go_int(bad), None, "{bad}");
        }
        assert_eq!(max_message_size(""), 0);
        assert_eq!(max_message_size("-1"), 0);
        assert_eq!(max_message_size("x"), 0);
        assert_eq!(max_message_size("1024"), 1024);
        assert_eq!(max_message_size("4294967297"), 1);
    }

    #[test]
    fn client_messages() {
        let update = |c: &[&str], d: &[&str]| ClientMessage::Update { collections: s(c), dids: s(d) };
        assert_eq!(
            parse_client_message(
                r#"{"type":"options_update","payload":{"wantedCollections":["a.b.c"],"wantedDids":["did:a:b"],"maxMessageSizeBytes":5}}"#
            ),
            update(&["a.b.c"], &["did:a:b"])
        );
        assert_eq!(parse_client_message(r#"{"type":"options_update","payload":{}}"#), update(&[], &[]));
        assert_eq!(parse_client_message(r#"{"type":"options_update","payload":null}"#), update(&[], &[]));
        assert_eq!(
            parse_client_message(r#"{"TYPE":"options_update","Payload":{"WANTEDDIDS":["x"]}}"#),
            update(&[], &["x"])
        );
        assert_eq!(parse_client_message(r#"{"type":"heartbeat","payload":"x"}"#), ClientMessage::Ignored);
        assert_eq!(parse_client_message(r#"{"payload":1}"#), ClientMessage::Ignored);
        assert_eq!(parse_client_message("null"), ClientMessage::Ignored);
        let invalid = |text: &str, start: &str| match parse_client_message(text) {
            ClientMessage::Invalid(reason) => assert!(reason.starts_with(start), "{text}: {reason}"),
            other => panic!("{text}: {other:?}"),
        };
        invalid("not json", "failed to unmarshal subscriber sourced message: ");
        invalid("[1]", "failed to unmarshal subscriber sourced message: json: cannot unmarshal array");
        invalid(r#"{"type":5}"#, "failed to unmarshal subscriber sourced message: json: cannot unmarshal number 5");
        invalid(r#"{"type":"options_update"}"#, "failed to unmarshal subscriber options update: unexpected end");
        invalid(r#"{"type":"options_update","payload":[]}"#, "failed to unmarshal subscriber options update: json");
        invalid(
            r#"{"type":"options_update","payload":{"wantedDids":"x"}}"#,
            "failed to unmarshal subscriber options update",
        );
        invalid(
            r#"{"type":"options_update","payload":{"wantedDids":[1]}}"#,
            "failed to unmarshal subscriber options update",
        );
        invalid(
            r#"{"type":"options_update","payload":{"maxMessageSizeBytes":1.5}}"#,
            "failed to unmarshal subscriber options update: json: cannot unmarshal number 1.5",
        );
        invalid(r#"{"type":"options_update","payload":{"maxMessageSizeBytes":"1"}}"#, "failed to unmarshal");
    }
}
