//! One Jetstream event as streamherd needs it, in one pass over its top
//! level: the kind, the id (`at://{did}/{collection}/{rkey}` for a commit,
//! the DID for identity and account events), its `time_us` (the cursor), and
//! the key that names the event on any instance (whose `time_us` differ).
//! Also the zstd frames of `compress = true`, with Jetstream's dictionary.

use std::hash::{Hash, Hasher};

use super::kinds::{ACCOUNT, COMMIT, IDENTITY};
use crate::event::EventKind;
use crate::scan::{self, ScanError};

/// Jetstream's zstd dictionary (see ZSTD_DICTIONARY.md next to this file).
pub static ZSTD_DICTIONARY: &[u8] = include_bytes!("zstd_dictionary");

/// What streamherd takes from one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// `commit`, `identity`, `account`, or `unknown`.
    pub kind: EventKind,
    /// The event's id (none for unknown kinds).
    pub id: Option<Box<str>>,
    /// The DID, when the event has one.
    pub did: Option<Box<str>>,
    /// `time_us`, when the event has one.
    pub time_us: Option<u64>,
    /// Names the event whichever instance sent it: (did, rev, collection,
    /// rkey, operation) for a commit, (did, kind, seq) for identity and
    /// account, the payload bytes otherwise.
    pub key: u64,
}

/// Why an event cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not UTF-8 JSON, or not an object.
    #[error("{0}")]
    Json(String),
    /// A compressed frame that does not decompress.
    #[error("zstd: {0}")]
    Zstd(String),
    /// A compressed frame that decompresses past the size limit.
    #[error("a compressed event decompresses to more than {0} bytes")]
    TooLarge(usize),
}

#[derive(Default)]
struct Top<'a> {
    did: Option<&'a str>,
    time_us: Option<&'a str>,
    kind: Option<&'a str>,
    commit: Option<&'a str>,
    identity: Option<&'a str>,
    account: Option<&'a str>,
}

/// Decodes one event's JSON.
pub fn decode(payload: &[u8]) -> Result<Decoded, DecodeError> {
    let text = crate::scan::utf8(payload).ok_or_else(|| DecodeError::Json("invalid UTF-8".into()))?;
    let mut t = Top::default();
    scan::members(text, |k, v| match k {
        "did" => t.did = Some(v),
        "time_us" => t.time_us = Some(v),
        "kind" => t.kind = Some(v),
        "commit" => t.commit = Some(v),
        "identity" => t.identity = Some(v),
        "account" => t.account = Some(v),
        _ => {}
    })
    .map_err(|e| match e {
        ScanError::NotObject => DecodeError::Json("not a JSON object".into()),
        ScanError::NotJson(why) => DecodeError::Json(format!("not valid JSON: {why}")),
    })?;
    let did = t.did.and_then(string);
    let time_us = t.time_us.and_then(|v| v.parse::<u64>().ok());
    let kind_name = t.kind.and_then(string);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let (kind, id) = match (kind_name.as_deref(), &did) {
        (Some("commit"), Some(did)) => {
            let c = t.commit.map(commit_fields).unwrap_or_default();
            (did.as_ref(), "commit", &c.rev, &c.collection, &c.rkey, &c.operation).hash(&mut h);
            let id = match (&c.collection, &c.rkey) {
                (Some(col), Some(rkey)) => Some(format!("at://{did}/{col}/{rkey}").into_boxed_str()),
                _ => None,
            };
            (COMMIT, id)
        }
        (Some(k @ ("identity" | "account")), Some(did)) => {
            let body = if k == "identity" { t.identity } else { t.account };
            let seq = body.and_then(seq_of);
            (did.as_ref(), k, seq).hash(&mut h);
            (if k == "identity" { IDENTITY } else { ACCOUNT }, Some(did.clone()))
        }
        _ => {
            payload.hash(&mut h);
            (EventKind::UNKNOWN, None)
        }
    };
    Ok(Decoded { kind, id, did, time_us, key: h.finish() })
}

#[derive(Default)]
struct CommitFields {
    rev: Option<Box<str>>,
    operation: Option<Box<str>>,
    collection: Option<Box<str>>,
    rkey: Option<Box<str>>,
}

fn commit_fields(obj: &str) -> CommitFields {
    let mut c = CommitFields::default();
    let _ = scan::members(obj, |k, v| match k {
        "rev" => c.rev = string(v),
        "operation" => c.operation = string(v),
        "collection" => c.collection = string(v),
        "rkey" => c.rkey = string(v),
        _ => {}
    });
    c
}

fn seq_of(obj: &str) -> Option<u64> {
    let mut seq = None;
    let _ = scan::members(obj, |k, v| {
        if k == "seq" {
            seq = v.parse::<u64>().ok();
        }
    });
    seq
}

/// A JSON string value's text (escapes decoded when there are any).
fn string(v: &str) -> Option<Box<str>> {
    match scan::plain_string(v) {
        Some(s) => Some(s.into()),
        None if v.starts_with('"') => serde_json::from_str::<String>(v).ok().map(String::into_boxed_str),
        None => None,
    }
}

/// Decompresses `compress = true` frames with Jetstream's dictionary, each
/// bounded by the message size limit.
pub struct Unzstd {
    inner: zstd::bulk::Decompressor<'static>,
    max: usize,
}

impl std::fmt::Debug for Unzstd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unzstd").field("max", &self.max).finish_non_exhaustive()
    }
}

impl Unzstd {
    /// A decompressor for frames of at most `max` bytes once decompressed.
    pub fn new(max: usize) -> Result<Unzstd, DecodeError> {
        let inner =
            zstd::bulk::Decompressor::with_dictionary(ZSTD_DICTIONARY).map_err(|e| DecodeError::Zstd(e.to_string()))?;
        Ok(Unzstd { inner, max })
    }

    /// One frame's event JSON.
    pub fn frame(&mut self, frame: &[u8]) -> Result<Vec<u8>, DecodeError> {
        // The frame header says how large the event is (Jetstream's encoder
        // writes it), so the buffer is sized once and the limit checked first.
        let size =
            zstd::zstd_safe::get_frame_content_size(frame).map_err(|_| DecodeError::Zstd("not a zstd frame".into()))?;
        let capacity = match size {
            Some(n) if n > self.max as u64 => return Err(DecodeError::TooLarge(self.max)),
            Some(n) => n as usize,
            None => self.max,
        };
        self.inner.decompress(frame, capacity).map_err(|e| {
            if size.is_none() {
                DecodeError::TooLarge(self.max)
            } else {
                DecodeError::Zstd(e.to_string())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT_JSON: &str = r#"{"did":"did:plc:eygmaihciaxprqvxpfvl6flk","time_us":1725911162329308,"kind":"commit","commit":{"rev":"3l3qo2vutsw2b","operation":"create","collection":"app.bsky.feed.like","rkey":"3l3qo2vuowo2b","record":{"$type":"app.bsky.feed.like","createdAt":"2024-09-09T19:46:02.102Z","subject":{"cid":"bafyreidc6sydkkbchcyg62v77wbhzvb2mvytlmsychqgwf2xojjtirmzj4","uri":"at://did:plc:wa7b35aakoll7hugkrjtf3xf/app.bsky.feed.post/3l3pte3p2e325"}},"cid":"bafyreidwaivazkwu67xztlmuobx35hs2lnfh3kolmgfmucldvhd3sgzcqi"}}"#;

    #[test]
    fn every_kind_gets_its_id_and_cursor() {
        let c = decode(COMMIT_JSON.as_bytes()).unwrap();
        assert_eq!(c.kind, COMMIT);
        assert_eq!(c.id.as_deref(), Some("at://did:plc:eygmaihciaxprqvxpfvl6flk/app.bsky.feed.like/3l3qo2vuowo2b"));
        assert_eq!(c.time_us, Some(1725911162329308));
        let i = decode(br#"{"did":"did:plc:abc","time_us":5,"kind":"identity","identity":{"did":"did:plc:abc","handle":"a.bsky.social","seq":1409752997,"time":"2024-09-05T06:11:04.870Z"}}"#).unwrap();
        assert_eq!((i.kind, i.id.as_deref(), i.time_us), (IDENTITY, Some("did:plc:abc"), Some(5)));
        let a = decode(br#"{"did":"did:plc:abc","time_us":6,"kind":"account","account":{"active":false,"did":"did:plc:abc","seq":7,"status":"deactivated","time":"2024-09-05T06:11:04.870Z"}}"#).unwrap();
        assert_eq!((a.kind, a.id.as_deref()), (ACCOUNT, Some("did:plc:abc")));
        let u = decode(br#"{"did":"did:plc:abc","time_us":7,"kind":"sync","sync":{"rev":"x"}}"#).unwrap();
        assert_eq!((u.kind, u.id, u.time_us), (EventKind::UNKNOWN, None, Some(7)));
    }

    #[test]
    fn keys_ignore_time_us_and_tell_distinct_events_apart() {
        let other_host = COMMIT_JSON.replace("1725911162329308", "1725911162330001");
        assert_eq!(decode(COMMIT_JSON.as_bytes()).unwrap().key, decode(other_host.as_bytes()).unwrap().key);
        let deleted = COMMIT_JSON.replace("\"create\"", "\"delete\"");
        assert_ne!(decode(COMMIT_JSON.as_bytes()).unwrap().key, decode(deleted.as_bytes()).unwrap().key);
        let i1 = decode(br#"{"did":"did:plc:a","time_us":1,"kind":"identity","identity":{"seq":1}}"#).unwrap();
        let i2 = decode(br#"{"did":"did:plc:a","time_us":2,"kind":"identity","identity":{"seq":2}}"#).unwrap();
        let a1 = decode(br#"{"did":"did:plc:a","time_us":1,"kind":"account","account":{"seq":1}}"#).unwrap();
        assert!(i1.key != i2.key && i1.key != a1.key);
    }

    #[test]
    fn broken_messages_are_errors() {
        for bad in [&b"{\"did\":"[..], b"[1,2]", b"\xff\xfe", b""] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn zstd_frames_decompress_with_the_dictionary_within_the_limit() {
        let mut c = zstd::bulk::Compressor::with_dictionary(3, ZSTD_DICTIONARY).unwrap();
        let frame = c.compress(COMMIT_JSON.as_bytes()).unwrap();
        let mut u = Unzstd::new(1 << 20).unwrap();
        assert_eq!(u.frame(&frame).unwrap(), COMMIT_JSON.as_bytes());
        let mut small = Unzstd::new(100).unwrap();
        assert_eq!(small.frame(&frame), Err(DecodeError::TooLarge(100)));
        assert!(matches!(u.frame(b"not zstd"), Err(DecodeError::Zstd(_))));
    }
}
