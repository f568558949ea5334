//! Seed corpora, one per target, laid out as the target reads inputs: what the
//! simulator sends, the shipped and test configs, and hand-written edge cases.

use std::collections::BTreeMap;

use streamherd_actors::connection::sse::{SseItem, SseParser};
use streamherd_actors::twitter::classify::classify_twitter;
use streamherd_actors::twitter::framing::{Delimiting, Frame, Framer};

use crate::capture::{capture, CaptureError, Captured};
use crate::config::SECRET_MARKER;
use crate::framer::MESSAGE_SEPARATOR;
use crate::mastodon::EVENT_NAMES;

/// Every target's seeds, by target name.
pub struct Seeds(BTreeMap<&'static str, Vec<Vec<u8>>>);

impl Seeds {
    /// Captures from a simulator and builds every corpus.
    pub fn build() -> Result<Seeds, CaptureError> {
        let c = capture()?;
        let tweets = twitter_messages(&c);
        let sse_events = sse_events(&c);
        let mut all = BTreeMap::new();
        all.insert("framer_lines", framer_lines(&c, &tweets));
        all.insert("framer_length", framer_length(&c, &tweets));
        all.insert("twitter_classify", classify(&tweets));
        all.insert("sse", sse(&c));
        all.insert("mastodon_sse", mastodon_sse(&sse_events));
        all.insert("mastodon_ws", mastodon_ws(&c));
        all.insert("jetstream", jetstream(&c));
        all.insert("output_line", output_line(&tweets, &sse_events, &c));
        all.insert("config", config());
        all.insert("control_body", control_body());
        Ok(Seeds(all))
    }

    /// The seeds of `target` (none for an unknown name).
    pub fn of(&self, target: &str) -> &[Vec<u8>] {
        self.0.get(target).map_or(&[], Vec::as_slice)
    }
}

/// Header bytes then body.
fn with_header(header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = header.to_vec();
    v.extend_from_slice(body);
    v
}

/// At most `n` bytes of `body`.
fn cut(body: &[u8], n: usize) -> &[u8] {
    &body[..body.len().min(n)]
}

/// Every message of the captured Twitter bodies, up to three of each kind.
fn twitter_messages(c: &Captured) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    let mut per_kind: BTreeMap<String, usize> = BTreeMap::new();
    let bodies =
        c.twitter_lines.iter().map(|b| (Delimiting::Lines, b)).chain([(Delimiting::Length, &c.twitter_length)]);
    for (mode, body) in bodies {
        let mut framer = Framer::new(mode, 1 << 24);
        framer.push(body);
        while let Some(frame) = framer.next_frame() {
            let Frame::Message(m) = frame else { continue };
            let kind = classify_twitter(&m).map(|k| format!("{}/{}", k.kind, k.for_user.is_some()));
            let n = per_kind.entry(kind.unwrap_or_else(|e| e.to_string())).or_default();
            if *n < 3 {
                *n += 1;
                all.push(m.to_vec());
            }
        }
    }
    all
}

/// (event, data) of every captured SSE event.
fn sse_events(c: &Captured) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for body in &c.mastodon_sse {
        let mut p = SseParser::new(1 << 24, 1 << 24);
        p.push(body);
        while let Some(item) = p.next_item() {
            if let SseItem::Event { event, data, .. } = item {
                out.push((event, data));
            }
        }
    }
    out
}

const FRAMER_EDGES: &[&[u8]] = &[
    b"",
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\r\n",
    b"abc\r",
    b"abc\r\n\r\n",
    b"\r\n\r\n\r\n",
    b"{\"a\":\"lone\nlf\"}\r\n",
    b"{\"a\":1}\r\n{\"b\":",
    b"99999999999999\r\n{}\r\n",
    b"4294967296\r\n",
    b"999999999999\r\n",
    b"12\r\n{\"a\":1}\r\n",
    b"9\r\n{\"a\":1}\r\n",
    b"8\r\n{\"a\":1}\n",
    b"7\r\n{\"a\":1}",
    b"0\r\n",
    b" 12 \r\n{\"a\":1}\r\n",
    b"-1\r\n",
    b"1e3\r\n",
    b"abc\r\n9\r\n{\"a\":1}\r\n",
    b"\xEF\xBB\xBF12\r\n",
    b"\r\n\r\n5\r\n   \r\n",
];

fn framer_lines(c: &Captured, tweets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (i, body) in c.twitter_lines.iter().enumerate() {
        for max in [255u8, 200, 10] {
            seeds.push(with_header(&[max, (i + usize::from(max)) as u8, 7, 1, 0], cut(body, 4096)));
        }
    }
    seeds.extend(messages_and_edges(tweets));
    seeds
}

fn framer_length(c: &Captured, tweets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (i, max) in [255u8, 200, 40].into_iter().enumerate() {
        seeds.push(with_header(&[max, i as u8, 9, 2, 0], cut(&c.twitter_length, 4096)));
    }
    seeds.extend(messages_and_edges(tweets));
    seeds
}

/// Message lists for the structured half, and the raw edge cases.
fn messages_and_edges(tweets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for group in tweets.chunks(2) {
        let mut body = Vec::new();
        for (i, m) in group.iter().enumerate() {
            if i > 0 {
                body.push(MESSAGE_SEPARATOR);
            }
            body.extend_from_slice(m);
        }
        seeds.push(with_header(&[255, 5, 0, 0, 0], cut(&body, 6144)));
        seeds.push(with_header(&[230, 10, 3, 0, 0], cut(&body, 6144)));
    }
    let list: &[u8] = b"{\"a\":1}\xFE\xFE   \xFE\r\xFEx\r\xFE\ny\r\n\xFE{\"b\":\"\xE6\xBC\xA2\"}";
    seeds.push(with_header(&[8, 1, 2, 3, 4], list));
    for (i, edge) in FRAMER_EDGES.iter().enumerate() {
        seeds.push(with_header(&[(i * 7) as u8 % 64, i as u8, 0, 0, 0], edge));
        seeds.push(with_header(&[255, i as u8, 0, 0, 0], edge));
    }
    seeds
}

fn classify(tweets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut seeds = tweets.to_vec();
    let deep = |n: usize| format!("{{\"a\":{}{}}}", "[".repeat(n), "]".repeat(n)).into_bytes();
    let edges: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{}".to_vec(),
        b" {} ".to_vec(),
        b"[1,2]".to_vec(),
        b"42".to_vec(),
        b"\"s\"".to_vec(),
        b"{\"text\":\"unterminated".to_vec(),
        b"{\"text\":\"\xff\"}".to_vec(),
        b"{\"text\":\"\xe6\xbc\"}".to_vec(),
        b"\xEF\xBB\xBF{}".to_vec(),
        b"{\"a\":1}}".to_vec(),
        b"{\"a\":1,}".to_vec(),
        b"{\"a\":[1 2],\"b\":\"\\x\",\"c\":-}".to_vec(),
        b"{\"a\":\"\\ud800\"}".to_vec(),
        b"{\"a\":\"\x01\"}".to_vec(),
        b"{\"a\":\\}".to_vec(),
        b"{\"a\":[\"\\\\\\\"]\"]}".to_vec(),
        b"{\"\\u0074ext\":\"escaped key\",\"id_str\":\"42\"}".to_vec(),
        b"{\"delete\":{\"status\":{\"\\u0069d_str\":\"5\"}}}".to_vec(),
        b"{\"id_str\":\"1\",\"id_str\":2,\"text\":\"dup\"}".to_vec(),
        b"{\"text\":\"t\",\"id\":123456789012345678901234567890}".to_vec(),
        b"{\"text\":\"t\",\"id\":1.5,\"id_str\":null}".to_vec(),
        b"{\"limit\":{\"track\":18446744073709551616}}".to_vec(),
        b"{\"disconnect\":{\"code\":\"4\"}}".to_vec(),
        b"{\"control\":{\"control_uri\":\"/1.1/site/c/1_1_54e3\"}}".to_vec(),
        b"{\"for_user\":1888,\"message\":{\"id\":5,\"id_str\":\"5\",\"text\":\"x\"}}".to_vec(),
        b"{\"message\":{\"friends\":[1]},\"for_user\":\"77\"}".to_vec(),
        b"{\"for_user\":1,\"message\":[1]}".to_vec(),
        b"{\"for_user\":1,\"message\":{\"for_user\":2,\"message\":{\"text\":\"nested\"}}}".to_vec(),
        b"{\"event\":\"favorite\",\"target_object\":{\"text\":\"t\",\"id_str\":\"3\"}}".to_vec(),
        deep(127),
        deep(128),
        deep(129),
        deep(300),
    ];
    seeds.extend(edges);
    seeds
}

const SSE_EDGES: &[&[u8]] = &[
    b"",
    b"\r",
    b"data:test\n\n",
    b"data: a\r\rdata: b\r\n\r\ndata: c\n\n",
    b"data: a\r\n\ndata: b\r\n\n",
    b"data\ndata\n\n",
    b"\xEF\xBB\xBFdata: x\n\n",
    b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\n",
    b"\xEF\xBBdata: x\n\n",
    b"id: 1\ndata: a\n\nid: a\0b\ndata: x\n\nid\ndata: y\n\n",
    b"retry: 10000\nretry: 1e3\nretry: 99999999999999999999999\n",
    b"event: \xE6\x97\n:\xFF\ndata: \xF0\x9F\ndata: x\n\n",
    b":)\n:thump\nevent: update\ndata: {\"id\":\"1\"}\n\n",
    b"event: open\n\ndata: x\n\n",
    b"Data: x\ndata : y\n\n",
];

fn sse(c: &Captured) -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (i, body) in c.mastodon_sse.iter().enumerate() {
        seeds.push(with_header(&[255, 255, i as u8, 5, 0, 0], cut(body, 4096)));
        seeds.push(with_header(&[200, 230, i as u8 + 1, 9, 1, 0], cut(body, 4096)));
    }
    for (i, edge) in SSE_EDGES.iter().enumerate() {
        seeds.push(with_header(&[255, 255, i as u8, 0, 0, 0], edge));
        seeds.push(with_header(&[5, 40, i as u8, 0, 0, 0], edge));
    }
    seeds
}

/// `[name][data]` as `mastodon_sse` reads it.
fn named(event: &str, data: &str) -> Vec<u8> {
    match EVENT_NAMES.iter().position(|n| *n == event) {
        Some(i) => with_header(&[i as u8], data.as_bytes()),
        None => with_header(&[200], format!("{event}\n{data}").as_bytes()),
    }
}

fn mastodon_sse(events: &[(String, String)]) -> Vec<Vec<u8>> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut seeds = Vec::new();
    for (event, data) in events {
        let n = seen.entry(event).or_default();
        if *n < 3 {
            *n += 1;
            seeds.push(named(event, data));
        }
    }
    for (event, data) in [
        ("delete", ""),
        ("delete", "\"\""),
        ("delete", "\"123\""),
        ("delete", "\"12\\\"3\\u00e9\""),
        ("delete", "\"unterminated"),
        ("announcement.delete", "8"),
        ("filters_changed", ""),
        ("filters_changed", "undefined"),
        ("filters_changed", "{"),
        ("filters_changed", "[1]"),
        ("update", "[1]"),
        ("update", "106692867363994015"),
        ("update", "{\"id\":5}"),
        ("update", "{\"id\":\"\"}"),
        ("update", "{\"\\u0069d\":\"9\",\"id\":\"10\"}"),
        ("update", "{\"id\":\"\\ud800\"}"),
        ("notification", ""),
        ("notifications_merged", "1"),
        ("notifications_merged", "\"1\""),
        ("encrypted_message", "{\"id\":\"5\",\"x\":1}"),
        ("some.future_event", "not json at all"),
        ("", "{}"),
    ] {
        seeds.push(named(event, data));
    }
    seeds
}

fn mastodon_ws(c: &Captured) -> Vec<Vec<u8>> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut seeds = Vec::new();
    for frame in &c.mastodon_ws {
        let event = serde_json::from_slice::<serde_json::Value>(frame)
            .ok()
            .and_then(|v| v.get("event").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_default();
        let n = seen.entry(event).or_default();
        if *n < 3 {
            *n += 1;
            seeds.push(with_header(&[seeds.len() as u8 % 12], frame));
        }
    }
    let edges: &[&[u8]] = &[
        b"",
        b"\xff\xfe",
        b"[1,2]",
        b"{\"event\":",
        br#"{"error":"Missing tag name parameter","status":400}"#,
        br#"{"error":"Error unsubscribing from channel"}"#,
        br#"{"error":5,"status":"401"}"#,
        br#"{"stream":["user"]}"#,
        br#"{"event":5,"payload":"1"}"#,
        br#"{"event":"update"}"#,
        br#"{"event":"update","payload":null}"#,
        br#"{"event":"update","payload":"not json"}"#,
        br#"{"event":"update","payload":{"id":"1"}}"#,
        br#"{"event":"delete","payload":""}"#,
        br#"{"event":"delete","payload":106692867363994015}"#,
        br#"{"event":"filters_changed"}"#,
        br#"{"event":"filters_changed","payload":{"a":1}}"#,
        br#"{"event":"x","payload":[1],"stream":null}"#,
        br#"{"stream":["hashtag","RustLang"],"event":"update","payload":"{\"id\":\"1\"}"}"#,
        br#"{"stream":"user","event":"update","payload":"{}"}"#,
        br#"{"stream":["user",1],"event":"update","payload":"{}"}"#,
        br#"{"event":"update","event":"delete","payload":"7"}"#,
    ];
    for (i, edge) in edges.iter().enumerate() {
        seeds.push(with_header(&[i as u8], edge));
    }
    seeds
}

fn jetstream(c: &Captured) -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (i, json) in c.jetstream.iter().enumerate() {
        seeds.push(with_header(&[i as u8], json));
        if i % 8 == 0 {
            for frame in crate::jetstream::compressed(json) {
                seeds.push(with_header(&[i as u8 + 3], &frame));
            }
        }
    }
    let edges: &[&[u8]] = &[
        b"",
        b"[1,2]",
        b"\xff\xfe",
        b"{\"did\":",
        br#"{"did":"did:plc:abc","time_us":5,"kind":"identity","identity":{"seq":1}}"#,
        br#"{"did":"did:plc:a","time_us":2,"kind":"account","account":{"seq":2,"active":false}}"#,
        br#"{"did":"did:plc:a","time_us":7,"kind":"sync","sync":{"rev":"x"}}"#,
        br#"{"did":"did:plc:a","time_us":-7,"kind":"commit","commit":{"collection":"c","rkey":"r" "x"}}"#,
        br#"{"did":"did:plc:\u0061","time_us":1e3,"kind":"commit","commit":5}"#,
        br#"{"did":"d","kind":"commit","commit":{"rev":"1","operation":"create","collection":"a.b","rkey":"k"},"time_us":"12"}"#,
        br#"{"time_us":1,"time_us":2,"did":"d","kind":"identity"}"#,
        b"(\xb5/\xfd\x00\x58\x11\x00\x00{}",
        b"(\xb5/\xfd",
    ];
    for (i, edge) in edges.iter().enumerate() {
        seeds.push(with_header(&[i as u8], edge));
    }
    seeds
}

/// `output_line`'s header: family, time, source, connection, stream byte.
fn event_header(family: u8, secs: u64, nanos: u32, source: &str, connection: &str, stream: u8) -> Vec<u8> {
    let mut h = vec![family];
    h.extend_from_slice(&secs.to_le_bytes());
    h.extend_from_slice(&nanos.to_le_bytes());
    h.push(source.len() as u8);
    h.extend_from_slice(source.as_bytes());
    h.push(connection.len() as u8);
    h.extend_from_slice(connection.as_bytes());
    h.push(stream);
    h
}

fn output_line(tweets: &[Vec<u8>], sse_events: &[(String, String)], c: &Captured) -> Vec<Vec<u8>> {
    // 2026-11-22T10:00:00Z from year 1, as `timestamp` maps it.
    let t0 = 1_795_341_600u64 + 62_135_596_800;
    let mut seeds = Vec::new();
    for (i, t) in tweets.iter().enumerate().step_by(3) {
        seeds.push(with_header(&event_header(0, t0 + i as u64, 123_456_000, "election", "election/3", 0), t));
    }
    for (i, (event, data)) in sse_events.iter().enumerate().step_by(4) {
        let Some(name) = EVENT_NAMES.iter().position(|n| n == event) else { continue };
        let stream = (name + 3 * (i % 4)) as u8;
        seeds.push(with_header(&event_header(1, t0, 999_999_000, "fedi", "fedi/1", stream), data.as_bytes()));
    }
    for json in c.jetstream.iter().step_by(5) {
        seeds.push(with_header(&event_header(2, t0, 7_000, "bsky", "bsky/0", 0), json));
    }
    // A leap second (second 59, nanos past 1e9), a year over 9999, a negative year.
    seeds.push(with_header(&event_header(3, t0 + 59, 1_500_000_000, "we\"ird\\src\n", "c/\u{1}", 2), b""));
    seeds.push(with_header(&event_header(0x83, 300_000_000_000, 0, "wide", "w/0", 1), b"{\"a\":1,\r\n \"b\":\n2}"));
    seeds.push(with_header(&event_header(0x83, u64::MAX - 1_000, 5, "neg", "n/0", 0), b"  [1, 2]  "));
    seeds.push(with_header(&event_header(0, t0, 0, "lenient", "l/0", 0), b"{\"text\":\"a\",\"x\":[1 2]}"));
    seeds
}

/// Secrets in the seeds carry the marker, so leaks are visible.
fn secret(name: &str) -> String {
    format!("{SECRET_MARKER}{name}")
}

fn config() -> Vec<Vec<u8>> {
    let auth = format!(
        "auth = {{ kind = \"oauth1\", consumer_key = \"ck\", consumer_secret = \"{}\", token = \"{}\", token_secret = \"{}\" }}",
        secret("cs"),
        secret("tk"),
        secret("ts")
    );
    let bearer = format!("auth = {{ kind = \"bearer\", token = \"{}\" }}", secret("bearer"));
    let shipped = include_str!("../../config.toml")
        .replace("demo-consumer-secret", &secret("demo-cs"))
        .replace("token = \"demo-token\"", &format!("token = \"{}\"", secret("demo-tk")))
        .replace("demo-token-secret", &secret("demo-ts"))
        .replace("demo-mastodon-token", &secret("demo-bearer"))
        .replace("examples/users.txt", "/nonexistent/users.txt");
    let filter = format!(
        "[[sources]]\nname = \"a\"\nkind = \"twitter.filter\"\ntrack = [\"x\", \"#cdu\"]\nfollow = [1, 2]\nlocations = [\"-122.75,36.8,-121.75,37.8\"]\ndelimited = \"length\"\n{auth}\n"
    );
    let mut seeds: Vec<String> = vec![
        shipped,
        filter.clone(),
        format!("[[sources]]\nname = \"a\"\nkind = \"twitter.sample\"\n{auth}\n"),
        format!("[[sources]]\nname = \"s\"\nkind = \"twitter.site\"\nfollow = [1]\nfollow_limit = 1001\nwith = \"user\"\n{auth}\n"),
        format!("[[sources]]\nname = \"u\"\nkind = \"twitter.user\"\nbase_url = \"http://127.0.0.1:8900\"\nstall_timeout_s = 0.3\n{auth}\n"),
        format!("[[sources]]\nname = \"a\"\nkind = \"twitter.filter\"\nfollow = [1]\nauth = [{}, {}]\n", &auth[7..], &auth[7..]),
        format!("[[sources]]\nname = \"fedi\"\nkind = \"mastodon\"\nbase_url = \"https://example.social\"\ntransport = \"sse\"\nstreams = [\"user\", \"public:local\", \"hashtag:rust\", \"list:1\"]\ncatch_up = false\n{bearer}\n"),
        format!("[[sources]]\nname = \"fedi\"\nkind = \"mastodon\"\nbase_url = \"http://127.0.0.1:8900\"\nstreaming_url = \"wss://streaming.example.social\"\nstreams = [\"user:notification\", \"direct\"]\nstreams_per_connection = 100\n{bearer}\n"),
        "[[sources]]\nname = \"bsky\"\nkind = \"bluesky.jetstream\"\nbase_url = [\"ws://127.0.0.1:8900\", \"wss://jetstream1.us-east.bsky.network\"]\nwanted_collections = [\"app.bsky.feed.post\", \"app.bsky.graph.*\"]\nwanted_dids = [\"did:plc:eygmaihciaxprqvxpfvl6flk\"]\ncompress = true\ncursor_rewind_s = 5\nfailover_after = 3\n".into(),
        format!("[service]\nlog_level = \"info\"\n[control]\nlisten = \"127.0.0.1:0\"\ntoken = \"{}\"\n{filter}", secret("control")),
        format!("[service]\ncoordination = \"redis://fuzz:{}@127.0.0.1:6379/0\"\nlease_ms = 300\nlease_buckets = 16\n{filter}", secret("coord")),
        format!("[service]\ninstance = \"0/2\"\ncoordination = \"redis://:{}@127.0.0.1:1/\"\n{filter}", secret("both")),
        format!("{filter}[[sinks]]\nname = \"q\"\nkind = \"redis\"\nurl = \"redis://:{}@127.0.0.1:6379/0\"\nstream = \"streamherd:{{source}}\"\nmaxlen = 1000\nformat = \"payload\"\n", secret("redis")),
        format!("{filter}[[sinks]]\nname = \"q\"\nkind = \"redis\"\nurl = \"redis//:{}@127.0.0.1:6379/0\"\n", secret("typo")),
        format!("{filter}[[sinks]]\nname = \"archive\"\nkind = \"file\"\npath = \"data/{{source}}/%Y-%m-%d.jsonl\"\nrotate_bytes = 1073741824\nfsync = \"batch\"\nbuffer = 10000\nwhen_full = \"spill\"\n[[sinks]]\nname = \"console\"\nkind = \"stdout\"\nformat = \"envelope\"\nkinds = [\"tweet\"]\nsources = [\"a\"]\n"),
        format!("{filter}[[sinks]]\nname = \"x\"\nkind = \"stdout\"\nkinds = [\"tweets\"]\n"),
        format!("{filter}[[sinks]]\nname = \"x\"\nkind = \"kafka\"\n"),
        format!("[backoff]\njitter = 2.0\nnetwork_initial_ms = 20\nnetwork_max_ms = 200\n{filter}"),
        format!("[service]\nmax_message_bytes = 100\nstats_interval_s = -1\n{filter}"),
        format!("[[sources]]\nname = \"a\"\nkind = \"twitter.filter\"\ntrack = [\"x\"]\nauth = {{ kind = \"oauth1\", consumer_key = \"k\", consumer_secret = \"${{STREAMHERD_FUZZ_UNSET_VAR}}\", token = \"t\", token_secret = \"{}\" }}\n", secret("literal")),
        format!("[[sources]]\nname = \"a\"\nkind = \"twitter.filter\"\ntrack = [\"x\"]\nauth = {{ kind = \"oauth1\", consumer_key = \"k\", consumer_secret = 5, token = \"t\", token_secret = \"{}\" }}\n", secret("typed")),
        format!("[[sources]]\nname = \"a\"\nkind = \"twitter.filter\"\nauth = \"{}\"\n", secret("whole")),
        format!("[[sources]]\nname = \"a\"\nkind = \"twitter.filter\"\nauth = {{ kind = \"oauth1\", consumer_secret = \"{}\n", secret("broken")),
        format!("[[sources]]\nname = \"a\"\nkind = \"twitter.filter\"\nstreams = [\"x\"]\n{auth}\n"),
        "[[sources]]\nname = \"a/b\"\nkind = \"nope\"\n".into(),
        "".into(),
        "[service\n".into(),
        "\u{feff}[service]\n".into(),
    ];
    seeds.push(format!("{}\n{}", seeds[1], seeds[2]));
    seeds.into_iter().map(String::into_bytes).collect()
}

fn control_body() -> Vec<Vec<u8>> {
    [
        r#"{"add":[1,"18446744073709551615","did:plc:abc"],"remove":[3]}"#,
        r#"{"remove":[7]}"#,
        r#"{"add":null,"remove":[7]}"#,
        r#"{"add":[1.5]}"#,
        r#"{"add":[true]}"#,
        r#"{"add":1}"#,
        r#"{"add":[1],"extra":true}"#,
        r#"{}"#,
        r#"{"add":[],"remove":[]}"#,
        r#"{"add":[5],"remove":[5]}"#,
        r#"{"add":[-1,0,-0],"remove":["-1"]}"#,
        r#"{"add":[1],"add":[2]}"#,
        r#"{"add":["a\u0000b","\ud83d\ude00"]}"#,
        r#"{"add":[18446744073709551616]}"#,
        r#"[1]"#,
        r#""#,
        r#"{"add":[1]"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}
