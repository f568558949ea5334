//! Jetstream events as the original server writes them (protocols.md D+.2
//! "Events"): the public `JetstreamEvent`, the compact form the history keeps
//! (`Stored`), the deterministic mix `jetstream_publish` and the generator
//! draw from (`Mixer`), and the identifiers that go into them (population
//! DIDs, TIDs, CIDs).
//!
//! Pure: no locks, no sockets. The JSON is built byte for byte in Go's
//! order: the envelope in struct order (`did`, `time_us`, `kind`, then the
//! body), `commit` as `rev`, `operation`, `collection`, `rkey`, `record`,
//! `cid` (no `record`/`cid` on a delete), and `record` as Go's
//! `json.Marshal` of a decoded CBOR map writes it: sorted keys, compact, with
//! `<`, `>`, `&`, U+2028 and U+2029 escaped.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::{json, Value};

/// One event as the simulator stored and sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JetstreamEvent {
    /// The instance's microsecond clock when the event was stored: unique
    /// and increasing across the history.
    pub time_us: u64,
    /// The repository's DID.
    pub did: String,
    /// "commit", "identity", "account", or "sync" for the kind v1 clients
    /// do not know (`SimHandle::jetstream_publish_unknown`).
    pub kind: String,
    /// Commits: the record's collection (NSID).
    pub collection: Option<String>,
    /// Commits: the record key.
    pub rkey: Option<String>,
    /// Commits (and "sync"): the repository revision; the ops of one
    /// multi-op commit share it.
    pub rev: Option<String>,
    /// Commits: "create", "update" or "delete".
    pub operation: Option<String>,
    /// Identity, account (and "sync"): the firehose sequence number.
    pub seq: Option<u64>,
    /// Exactly the text frame sent (without compression).
    pub json: Bytes,
}

impl JetstreamEvent {
    /// The id a client reports (SPEC 12): `at://{did}/{collection}/{rkey}`
    /// for commits, the DID for identity and account, None for kinds v1
    /// does not define.
    pub fn id(&self) -> Option<String> {
        match self.kind.as_str() {
            "commit" => Some(format!(
                "at://{}/{}/{}",
                self.did,
                self.collection.as_deref().unwrap_or_default(),
                self.rkey.as_deref().unwrap_or_default()
            )),
            "identity" | "account" => Some(self.did.clone()),
            _ => None,
        }
    }
}

/// The collections the mix writes to.
pub(crate) const POST: &str = "app.bsky.feed.post";
pub(crate) const LIKE: &str = "app.bsky.feed.like";
pub(crate) const REPOST: &str = "app.bsky.feed.repost";
pub(crate) const FOLLOW: &str = "app.bsky.graph.follow";
pub(crate) const BLOCK: &str = "app.bsky.graph.block";
pub(crate) const PROFILE: &str = "app.bsky.actor.profile";

/// A commit's operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Create,
    Update,
    Delete,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// A record key: a TID, or the literal `self` of singleton records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rkey {
    Tid(u64),
    SelfKey,
}

impl Rkey {
    fn render(self) -> String {
        match self {
            Rkey::Tid(t) => tid(t),
            Rkey::SelfKey => "self".to_string(),
        }
    }
}

/// What kind of event, with the fields the public view and the filters
/// need (the rest is only in the JSON).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Body {
    Commit {
        collection: &'static str,
        op: Op,
        rkey: Rkey,
        rev: u64,
    },
    Identity {
        seq: u64,
    },
    Account {
        seq: u64,
    },
    /// A kind v1 never emits, for testing a client's "unknown" path.
    Sync {
        rev: u64,
        seq: u64,
    },
}

/// An event in the history: the compact form (a 200,000-event history must
/// not hold every field twice), shared by every connection that sends it.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) time_us: u64,
    pub(crate) did: Arc<str>,
    pub(crate) body: Body,
    /// The event JSON, exactly as sent in a text frame.
    pub(crate) json: Bytes,
    /// The zstd frame of `json` (with Jetstream's dictionary), made once by
    /// the first compressing connection that sends the event.
    pub(crate) zstd: OnceLock<Bytes>,
}

impl Stored {
    /// The collection a filter looks at: None for everything but commits
    /// (the original server's "collection empty, so wanted").
    pub(crate) fn collection(&self) -> Option<&'static str> {
        match self.body {
            Body::Commit { collection, .. } => Some(collection),
            _ => None,
        }
    }

    /// The SPEC section 4 kind a client must classify it as.
    pub(crate) fn spec_kind(&self) -> &'static str {
        match self.body {
            Body::Commit { .. } => "commit",
            Body::Identity { .. } => "identity",
            Body::Account { .. } => "account",
            Body::Sync { .. } => "unknown",
        }
    }

    /// The public view.
    pub(crate) fn public(&self) -> JetstreamEvent {
        let mut ev = JetstreamEvent {
            time_us: self.time_us,
            did: self.did.to_string(),
            kind: String::new(),
            collection: None,
            rkey: None,
            rev: None,
            operation: None,
            seq: None,
            json: self.json.clone(),
        };
        match self.body {
            Body::Commit { collection, op, rkey, rev } => {
                ev.kind = "commit".into();
                ev.collection = Some(collection.to_string());
                ev.rkey = Some(rkey.render());
                ev.rev = Some(tid(rev));
                ev.operation = Some(op.as_str().to_string());
            }
            Body::Identity { seq } => {
                ev.kind = "identity".into();
                ev.seq = Some(seq);
            }
            Body::Account { seq } => {
                ev.kind = "account".into();
                ev.seq = Some(seq);
            }
            Body::Sync { rev, seq } => {
                ev.kind = "sync".into();
                ev.rev = Some(tid(rev));
                ev.seq = Some(seq);
            }
        }
        ev
    }
}

/// The first firehose sequence number identity and account events carry.
const FIRST_SEQ: u64 = 4_000_000_000;

/// Post texts and their language: non-ASCII, HTML characters Go escapes,
/// quotes, a newline and a U+2028 among them.
const TEXTS: [(&str, &str); 12] = [
    ("Just setting up my bsky 🦋", "en"),
    ("Rust & WebSockets <3 — streaming all day", "en"),
    ("Bom dia! ☕ Alguém mais acordado?", "pt"),
    ("今日はいい天気ですね", "ja"),
    ("Reading the Jetstream docs: the cursor is time_us, not seq", "en"),
    ("\"Quotes\" and \\backslashes\\ survive JSON", "en"),
    ("Guten Morgen aus Berlin 🥨", "de"),
    ("line one\nline two", "en"),
    ("a < b && b > c", "en"),
    ("¿Qué tal? Nos vemos mañana", "es"),
    ("check https://example.com/path?a=1&b=2", "en"),
    ("paragraph\u{2028}separator", "en"),
];

/// Account statuses of inactive accounts, in turn.
const STATUSES: [&str; 3] = ["deactivated", "takendown", "deleted"];

/// Makes the events of the deterministic mix. Its counters make every rkey,
/// CID and seq unique; the mix itself depends only on the index given.
#[derive(Debug)]
pub(crate) struct Mixer {
    serial: u64,
    seq: u64,
    /// The rev of the multi-op commit under way (mix slot 6 starts one,
    /// slot 7 reuses it).
    open_rev: Option<u64>,
}

impl Mixer {
    /// An event with `seq` came from another instance (a copy): later
    /// events of this one number past it, as the firehose's seqs are global.
    pub(crate) fn saw(&mut self, body: &Body) {
        if let Body::Identity { seq } | Body::Account { seq } | Body::Sync { seq, .. } = body {
            // `self.seq` is the last used: the next event takes the one after it.
            self.seq = self.seq.max(*seq);
        }
    }
}

impl Default for Mixer {
    fn default() -> Self {
        Mixer { serial: 0, seq: FIRST_SEQ, open_rev: None }
    }
}

/// Which slot of the mix index `i` is. Per ten: post, like, follow, repost,
/// account, (block | post delete | follow delete), a two-op commit (post,
/// then like with the same rev and DID), (profile update | like delete),
/// identity.
pub(crate) fn is_second_op(i: u64) -> bool {
    i % 10 == 7
}

impl Mixer {
    /// Event number `i` of a mix for `did` at `time_us`. The second op of a
    /// multi-op commit (`is_second_op(i)`) must get the DID of event `i - 1`;
    /// the caller picks DIDs.
    pub(crate) fn event(&mut self, i: u64, did: Arc<str>, time_us: u64) -> Stored {
        self.serial += 1;
        let round = i / 10;
        let slot = i % 10;
        if slot != 7 {
            self.open_rev = None;
        }
        let body = match slot {
            0 => self.commit(POST, Op::Create, time_us),
            1 => self.commit(LIKE, Op::Create, time_us),
            2 => self.commit(FOLLOW, Op::Create, time_us),
            3 => self.commit(REPOST, Op::Create, time_us),
            4 => {
                self.seq += 1;
                Body::Account { seq: self.seq }
            }
            5 => match round % 3 {
                0 => self.commit(BLOCK, Op::Create, time_us),
                1 => self.commit(POST, Op::Delete, time_us),
                _ => self.commit(FOLLOW, Op::Delete, time_us),
            },
            6 => {
                let body = self.commit(POST, Op::Create, time_us);
                if let Body::Commit { rev, .. } = body {
                    self.open_rev = Some(rev);
                }
                body
            }
            7 => {
                let mut body = self.commit(LIKE, Op::Create, time_us);
                if let (Body::Commit { rev, .. }, Some(open)) = (&mut body, self.open_rev.take()) {
                    *rev = open;
                }
                body
            }
            8 => match round % 2 {
                0 => self.commit(PROFILE, Op::Update, time_us),
                _ => self.commit(LIKE, Op::Delete, time_us),
            },
            _ => {
                self.seq += 1;
                Body::Identity { seq: self.seq }
            }
        };
        let json = self.render(&did, time_us, &body, round);
        Stored { time_us, did, body, json: Bytes::from(json), zstd: OnceLock::new() }
    }

    /// A `sync` event, a kind v1 clients must treat as unknown.
    pub(crate) fn sync(&mut self, did: Arc<str>, time_us: u64) -> Stored {
        self.serial += 1;
        self.seq += 1;
        let body = Body::Sync { rev: tid_value(time_us.saturating_sub(300_000), self.serial), seq: self.seq };
        let json = self.render(&did, time_us, &body, 0);
        Stored { time_us, did, body, json: Bytes::from(json), zstd: OnceLock::new() }
    }

    fn commit(&self, collection: &'static str, op: Op, time_us: u64) -> Body {
        let rkey = match (collection, op) {
            (PROFILE, _) => Rkey::SelfKey,
            // A delete removes an older record.
            (_, Op::Delete) => Rkey::Tid(tid_value(time_us.saturating_sub(86_400_000_000 + self.serial), self.serial)),
            _ => Rkey::Tid(tid_value(time_us.saturating_sub(900_000), self.serial)),
        };
        Body::Commit { collection, op, rkey, rev: tid_value(time_us.saturating_sub(400_000), self.serial) }
    }

    fn render(&self, did: &str, time_us: u64, body: &Body, round: u64) -> String {
        let mut out = String::with_capacity(384);
        out.push_str("{\"did\":");
        go_str(&mut out, did);
        out.push_str(",\"time_us\":");
        out.push_str(&time_us.to_string());
        // The firehose saw it a little before this instance stored it.
        let time = iso_ms(time_us.saturating_sub(350_000));
        let kind = match body {
            Body::Commit { .. } => "commit",
            Body::Identity { .. } => "identity",
            Body::Account { .. } => "account",
            Body::Sync { .. } => "sync",
        };
        out.push_str(",\"kind\":\"");
        out.push_str(kind);
        out.push_str("\",\"");
        out.push_str(kind);
        out.push_str("\":");
        match *body {
            Body::Commit { collection, op, rkey, rev } => {
                out.push_str("{\"rev\":\"");
                out.push_str(&tid(rev));
                out.push_str("\",\"operation\":\"");
                out.push_str(op.as_str());
                out.push_str("\",\"collection\":\"");
                out.push_str(collection);
                out.push_str("\",\"rkey\":\"");
                out.push_str(&rkey.render());
                out.push('"');
                if op != Op::Delete {
                    out.push_str(",\"record\":");
                    go_marshal(&mut out, &self.record(collection, time_us, round));
                    out.push_str(",\"cid\":\"");
                    out.push_str(&cid(self.serial));
                    out.push('"');
                }
                out.push('}');
            }
            Body::Identity { seq } => {
                out.push_str("{\"did\":");
                go_str(&mut out, did);
                out.push_str(",\"handle\":");
                go_str(&mut out, &handle_of(did));
                out.push_str(",\"seq\":");
                out.push_str(&seq.to_string());
                out.push_str(",\"time\":\"");
                out.push_str(&time);
                out.push_str("\"}");
            }
            Body::Account { seq } => {
                // Every fourth round the account goes inactive.
                let status = (round % 4 == 3).then(|| STATUSES[(round / 4 % 3) as usize]);
                out.push_str(if status.is_some() { "{\"active\":false" } else { "{\"active\":true" });
                out.push_str(",\"did\":");
                go_str(&mut out, did);
                out.push_str(",\"seq\":");
                out.push_str(&seq.to_string());
                if let Some(s) = status {
                    out.push_str(",\"status\":\"");
                    out.push_str(s);
                    out.push('"');
                }
                out.push_str(",\"time\":\"");
                out.push_str(&time);
                out.push_str("\"}");
            }
            Body::Sync { rev, seq } => {
                out.push_str("{\"did\":");
                go_str(&mut out, did);
                out.push_str(",\"rev\":\"");
                out.push_str(&tid(rev));
                out.push_str("\",\"seq\":");
                out.push_str(&seq.to_string());
                out.push_str(",\"time\":\"");
                out.push_str(&time);
                out.push_str("\"}");
            }
        }
        out.push('}');
        out
    }

    /// The record of a create or update, as the client app wrote it.
    fn record(&self, collection: &str, time_us: u64, round: u64) -> Value {
        let n = self.serial;
        let created_at = iso_ms(time_us.saturating_sub(900_000));
        let other = population_did(n.wrapping_mul(7) as usize % 1000);
        let subject_post = || {
            let uri = format!("at://{other}/{POST}/{}", tid(tid_value(time_us.saturating_sub(3_600_000_000), n)));
            json!({ "cid": cid(n ^ 0x5EED), "uri": uri })
        };
        match collection {
            POST => {
                let (text, lang) = TEXTS[(n % TEXTS.len() as u64) as usize];
                let mut post = json!({
                    "$type": POST,
                    "createdAt": created_at,
                    "langs": [lang],
                    "text": text,
                });
                if round % 3 == 2 {
                    let parent = subject_post();
                    post["reply"] = json!({ "parent": parent.clone(), "root": parent });
                }
                post
            }
            LIKE | REPOST => json!({ "$type": collection, "createdAt": created_at, "subject": subject_post() }),
            FOLLOW | BLOCK => json!({ "$type": collection, "createdAt": created_at, "subject": other }),
            _ => json!({
                "$type": PROFILE,
                "createdAt": created_at,
                "description": "Simulated account on streamherd-sim 🤖 <not a tag> & more",
                "displayName": format!("Sim User {n}"),
            }),
        }
    }
}

/// A handle for `did`: `sim-<last 8 alphanumerics>.bsky.social`.
fn handle_of(did: &str) -> String {
    let tail: Vec<char> = did.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect();
    let label: String = tail[tail.len().saturating_sub(8)..].iter().collect();
    format!("sim-{label}.bsky.social")
}

/// Microseconds since the Unix epoch as `2024-10-04T12:34:56.789Z`.
pub(crate) fn iso_ms(time_us: u64) -> String {
    let us = i64::try_from(time_us).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp_micros(us).unwrap_or_default().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// splitmix64: a bijection on u64 that scatters nearby inputs.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// RFC 4648 base32, lower case: the alphabet of did:plc identifiers and CIDs.
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// The base32-sortable alphabet of TIDs.
const SORTABLE: &[u8; 32] = b"234567abcdefghijklmnopqrstuvwxyz";

/// Population DID number `i`: `did:plc:` and 24 base32 characters. The
/// first 64 of their 120 bits are `mix(i)`, a bijection, so distinct
/// indices give distinct DIDs.
pub(crate) fn population_did(i: usize) -> String {
    let a = mix(i as u64 ^ 0x6A65_7473_7472_6561);
    let b = mix(a);
    let bits = (u128::from(a) << 56) | u128::from(b >> 8);
    let mut did = String::with_capacity(32);
    did.push_str("did:plc:");
    for k in (0..24).rev() {
        did.push(char::from(BASE32[((bits >> (5 * k)) & 31) as usize]));
    }
    did
}

/// A TID's value: the microsecond timestamp and a 10-bit clock id.
pub(crate) fn tid_value(time_us: u64, clock: u64) -> u64 {
    ((time_us & ((1 << 53) - 1)) << 10) | (clock & 1023)
}

/// A TID: 13 base32-sortable characters, so TIDs sort as their values.
pub(crate) fn tid(value: u64) -> String {
    (0..13).rev().map(|k| char::from(SORTABLE[((value >> (5 * k)) & 31) as usize])).collect()
}

/// A CIDv1 (dag-cbor, sha2-256) in base32: `bafyrei` and 52 characters.
pub(crate) fn cid(n: u64) -> String {
    let mut out = String::with_capacity(59);
    out.push_str("bafyrei");
    let mut state = mix(n ^ 0xC1D);
    let mut left = 0;
    let mut word = 0;
    for _ in 0..52 {
        if left < 5 {
            state = mix(state);
            word = state;
            left = 64;
        }
        out.push(char::from(BASE32[(word & 31) as usize]));
        word >>= 5;
        left -= 5;
    }
    out
}

/// `s` as Go's encoding/json writes a string (HTML escaping on).
pub(crate) fn go_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `v` as Go's `json.Marshal` of a decoded map writes it: compact, keys
/// sorted bytewise (serde_json's map is a BTreeMap here), Go's escaping.
pub(crate) fn go_marshal(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => go_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (k, item) in items.iter().enumerate() {
                if k > 0 {
                    out.push(',');
                }
                go_marshal(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (k, (key, item)) in map.iter().enumerate() {
                if k > 0 {
                    out.push(',');
                }
                go_str(out, key);
                out.push(':');
                go_marshal(out, item);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys of a JSON object in the order the text has them.
    fn keys_in_order(json: &str) -> Vec<String> {
        struct Keys(Vec<String>);
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = Vec<String>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
                while let Some(k) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    self.0.push(k);
                }
                Ok(self.0)
            }
        }
        let mut de = serde_json::Deserializer::from_str(json);
        serde::Deserializer::deserialize_map(&mut de, Keys(Vec::new())).expect("an object")
    }

    fn mixed(n: u64, did: &str) -> Vec<Stored> {
        let mut m = Mixer::default();
        let did: Arc<str> = Arc::from(did);
        (0..n).map(|i| m.event(i, Arc::clone(&did), 1_728_000_000_000_000 + i)).collect()
    }

    #[test]
    fn population_dids_are_did_plc_base32_and_distinct() {
        let dids: std::collections::BTreeSet<String> = (0..5000).map(population_did).collect();
        assert_eq!(dids.len(), 5000);
        for d in dids.iter().take(50) {
            assert_eq!(d.len(), 32, "{d}");
            let id = d.strip_prefix("did:plc:").expect("did:plc:");
            assert!(id.bytes().all(|b| BASE32.contains(&b)), "{d}");
        }
        assert_eq!(population_did(3), population_did(3));
    }

    #[test]
    fn tids_sort_as_their_values() {
        let a = tid(tid_value(1_728_000_000_000_000, 5));
        let b = tid(tid_value(1_728_000_000_000_001, 0));
        assert_eq!(a.len(), 13);
        assert!(a < b, "{a} {b}");
        assert!(a.starts_with('3'), "a 2024 TID starts with 3: {a}");
        assert_eq!(cid(1).len(), 59);
        assert_ne!(cid(1), cid(2));
    }

    #[test]
    fn go_escaping() {
        let mut out = String::new();
        go_str(&mut out, "a<b>&\"\\\n\t\u{1}\u{2028}é🦋");
        assert_eq!(out, r#""a\u003cb\u003e\u0026\"\\\n\t\u0001\u2028é🦋""#);
        let mut out = String::new();
        go_marshal(&mut out, &json!({"text": "x", "$type": "t", "createdAt": "c", "a": [1, true, null]}));
        assert_eq!(out, r#"{"$type":"t","a":[1,true,null],"createdAt":"c","text":"x"}"#);
    }

    #[test]
    fn envelopes_have_the_servers_field_order() {
        let events = mixed(40, "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa");
        for ev in &events {
            let text = std::str::from_utf8(&ev.json).expect("utf-8");
            let v: Value = serde_json::from_str(text).expect("JSON");
            let kind = v["kind"].as_str().expect("kind").to_string();
            assert_eq!(keys_in_order(text), ["did", "time_us", "kind", kind.as_str()], "{text}");
            let body = serde_json::to_string(&v[&kind]).expect("body");
            let body_keys = {
                // Re-read the body text from the original to see its order.
                let start = text.find(&format!("\"{kind}\":")).expect("body key") + kind.len() + 3;
                keys_in_order(&text[start..text.len() - 1])
            };
            match ev.body {
                Body::Commit { op: Op::Delete, .. } => {
                    assert_eq!(body_keys, ["rev", "operation", "collection", "rkey"], "{text}")
                }
                Body::Commit { .. } => {
                    assert_eq!(body_keys, ["rev", "operation", "collection", "rkey", "record", "cid"], "{text}");
                    let record = &v["commit"]["record"];
                    let mut again = String::new();
                    go_marshal(&mut again, record);
                    assert!(text.contains(&format!("\"record\":{again},")), "record not sorted/compact: {text}");
                    assert_eq!(record["$type"], v["commit"]["collection"]);
                }
                Body::Identity { .. } => assert_eq!(body_keys, ["did", "handle", "seq", "time"], "{body}"),
                Body::Account { .. } if v["account"]["active"] == true => {
                    assert_eq!(body_keys, ["active", "did", "seq", "time"], "{body}")
                }
                Body::Account { .. } => {
                    assert_eq!(body_keys, ["active", "did", "seq", "status", "time"], "{body}");
                    assert!(v["account"]["status"].is_string());
                }
                Body::Sync { .. } => unreachable!(),
            }
            assert_eq!(v["did"], "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa");
            assert_eq!(v["time_us"].as_u64(), Some(ev.time_us));
        }
    }

    #[test]
    fn the_mix_has_every_kind_multi_op_commits_and_rising_seqs() {
        let events = mixed(40, "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb");
        let public: Vec<JetstreamEvent> = events.iter().map(Stored::public).collect();
        let kinds = |k: &str| public.iter().filter(|e| e.kind == k).count();
        assert_eq!((kinds("commit"), kinds("identity"), kinds("account")), (32, 4, 4));
        for op in ["create", "update", "delete"] {
            assert!(public.iter().any(|e| e.operation.as_deref() == Some(op)), "{op}");
        }
        for c in [POST, LIKE, REPOST, FOLLOW, BLOCK, PROFILE] {
            assert!(public.iter().any(|e| e.collection.as_deref() == Some(c)), "{c}");
        }
        // Slots 6 and 7: one commit, two ops, the same rev.
        for round in 0..4 {
            let (a, b) = (&public[round * 10 + 6], &public[round * 10 + 7]);
            assert_eq!(a.rev, b.rev);
            assert_ne!(a.collection, b.collection);
            assert_ne!(public[round * 10 + 5].rev, a.rev);
        }
        let seqs: Vec<u64> = public.iter().filter_map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert!(public.iter().any(|e| e.json.windows(13).any(|w| w == b"\"active\":fals")));
        let post = &public[0];
        assert_eq!(post.id(), Some(format!("at://{}/{POST}/{}", post.did, post.rkey.as_deref().unwrap_or_default())));
        assert_eq!(public[9].id().as_deref(), Some("did:plc:bbbbbbbbbbbbbbbbbbbbbbbb"));
        let mut m = Mixer::default();
        let sync = m.sync(Arc::from("did:plc:cccccccccccccccccccccccc"), 1_728_000_000_000_000).public();
        assert_eq!((sync.kind.as_str(), sync.id()), ("sync", None));
        assert!(std::str::from_utf8(&sync.json).expect("utf-8").contains("\"kind\":\"sync\",\"sync\":{"));
    }
}
