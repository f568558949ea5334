//! Socket tests of the simulator's Mastodon WebSocket endpoint and instance
//! discovery: awc's WebSocket client for frames, a raw socket for refused
//! upgrades and for the SSE bytes the WebSocket payloads must match.
#![cfg(test)]

use std::time::{Duration, Instant};

use awc::error::{WsClientError, WsProtocolError};
use awc::ws::{CloseCode, Frame, Message};
use bytes::{Buf, Bytes, BytesMut};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::super::ws_test_support::{self, header, raw_upgrade, script, sim_with, wait_for, Ws, WAIT};
use super::super::{AttemptScript, MastodonWsInfo, Scenario, SimHandle, SimulatorConfig, DEMO_MASTODON_TOKEN};
use super::event_frame;

fn config() -> SimulatorConfig {
    SimulatorConfig { keepalive_ms: 30_000, ..ws_test_support::config() }
}

/// Upgrades `target` with `token` as a bearer token, or with `protocol`
/// as `Sec-WebSocket-Protocol`.
async fn try_connect(
    sim: &SimHandle,
    target: &str,
    token: Option<&str>,
    protocol: Option<&str>,
) -> Result<Ws, WsClientError> {
    Ws::upgrade(sim, target, |mut req| {
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(p) = protocol {
            req = req.protocols([p]);
        }
        req
    })
    .await
}

async fn open(sim: &SimHandle, target: &str) -> Ws {
    try_connect(sim, target, Some(DEMO_MASTODON_TOKEN), None).await.expect("upgrade accepted")
}

impl Ws {
    async fn subscribe(&mut self, msg: Value) {
        self.text(&msg.to_string()).await;
    }

    /// The next frame, which must be text.
    async fn raw(&mut self) -> String {
        match self.frame().await {
            Frame::Text(b) => String::from_utf8(b.to_vec()).expect("utf-8 text frame"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    async fn json(&mut self) -> Value {
        let raw = self.raw().await;
        serde_json::from_str(&raw).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {raw}"))
    }
}

/// An update/delete frame: its stream array, event and payload string.
fn event(frame: &Value) -> (Vec<String>, String, String) {
    let stream = frame["stream"].as_array().expect("stream array");
    let stream = stream.iter().map(|s| s.as_str().expect("stream entry string").to_string()).collect();
    let kind = frame["event"].as_str().expect("event").to_string();
    let payload = frame["payload"].as_str().expect("payload is a JSON string").to_string();
    (stream, kind, payload)
}

fn s(items: &[&str]) -> Vec<String> {
    items.iter().map(|i| i.to_string()).collect()
}

/// Waits until WebSocket `index` has exactly these subscriptions.
async fn wait_subscribed(sim: &SimHandle, index: usize, want: &[&str]) -> MastodonWsInfo {
    wait_for(&format!("subscriptions {want:?}"), || {
        sim.mastodon_ws_connections().get(index).filter(|i| i.subscriptions == s(want)).cloned()
    })
    .await
}

/// The connection log's `end` of attempt `attempt`, once it ended.
async fn end_of(sim: &SimHandle, attempt: u64) -> String {
    wait_for("the end to be logged", || {
        sim.connections().into_iter().find(|c| c.attempt == attempt && !c.end.is_empty()).map(|c| c.end)
    })
    .await
}

/// A refused upgrade as B.4/B.9 describe it.
fn assert_refusal(got: (u16, String, String), status: u16, message: &str) {
    let (code, head, rest) = got;
    assert_eq!(code, status, "{head}");
    assert_eq!(header(&head, "x-error-message"), Some(message), "{head}");
    assert_eq!(header(&head, "content-length"), Some("0"), "{head}");
    assert_eq!(header(&head, "connection").map(str::to_ascii_lowercase).as_deref(), Some("close"), "{head}");
    assert!(header(&head, "upgrade").is_none(), "{head}");
    assert!(rest.is_empty(), "body after a refusal: {rest:?}");
}

/// An SSE stream read through a raw socket, dechunked.
struct Sse {
    stream: TcpStream,
    raw: BytesMut,
    body: Vec<u8>,
    /// The final chunk arrived.
    ended: bool,
}

impl Sse {
    async fn open(sim: &SimHandle, target: &str, token: &str) -> Sse {
        let mut stream =
            timeout(WAIT, TcpStream::connect(sim.addr())).await.expect("connect in time").expect("connect");
        let req = format!("GET {target} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n", sim.addr());
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut raw = BytesMut::new();
        let end = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = timeout(WAIT, stream.read_buf(&mut raw)).await.expect("head in time").expect("read");
            assert!(n > 0, "EOF before head");
        };
        let head = raw.split_to(end + 4);
        assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
        let mut sse = Sse { stream, raw, body: Vec::new(), ended: false };
        sse.until(|b| b.starts_with(b":)\n")).await;
        sse
    }

    /// Reads until the body satisfies `done` or, with `to_end`, until the
    /// final chunk.
    async fn read(&mut self, done: impl Fn(&[u8]) -> bool, to_end: bool) {
        loop {
            while let Some(line) = self.raw.windows(2).position(|w| w == b"\r\n") {
                let size = std::str::from_utf8(&self.raw[..line])
                    .ok()
                    .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                    .expect("chunk size line");
                if self.raw.len() < line + 2 + size + 2 {
                    break;
                }
                self.raw.advance(line + 2);
                self.body.extend_from_slice(&self.raw[..size]);
                self.raw.advance(size + 2);
                if size == 0 {
                    self.ended = true;
                }
            }
            if if to_end { self.ended } else { done(&self.body) } {
                return;
            }
            let n = timeout(WAIT, self.stream.read_buf(&mut self.raw)).await.expect("bytes in time").expect("read");
            assert!(n > 0, "EOF; body so far: {}", String::from_utf8_lossy(&self.body));
        }
    }

    async fn until(&mut self, done: impl Fn(&[u8]) -> bool) {
        self.read(done, false).await;
    }

    /// The data line of the event `kind` about `id`.
    fn data(&self, kind: &str, id: &str) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let needle = format!("\"id\":\"{id}\"");
        text.split("\n\n")
            // The first block also holds the `:)` preamble (B.9).
            .filter_map(|block| block.split_once(&format!("event: {kind}\ndata: ")).map(|(_, data)| data))
            .find(|data| data.contains(&needle) || *data == id)
            .unwrap_or_else(|| panic!("no {kind} about {id} in {text}"))
            .to_string()
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[actix_rt::test]
async fn upgrade_without_or_with_a_bad_token_is_a_plain_401() {
    let sim = sim_with(config()).await;
    let target = "/api/v1/streaming?stream=public";
    assert_refusal(raw_upgrade(&sim, target, "").await, 401, "Missing access token");
    assert_refusal(raw_upgrade(&sim, target, "Authorization: Bearer nope\r\n").await, 401, "Invalid access token");
    // The scheme is case-sensitive (B.9).
    let lower = format!("Authorization: bearer {DEMO_MASTODON_TOKEN}\r\n");
    assert_refusal(raw_upgrade(&sim, target, &lower).await, 401, "Invalid access token");
    let query = "/api/v1/streaming/user?access_token=nope";
    assert_refusal(raw_upgrade(&sim, query, "").await, 401, "Invalid access token");
    match try_connect(&sim, target, Some("nope"), None).await {
        Err(WsClientError::InvalidResponseStatus(status)) => assert_eq!(status.as_u16(), 401),
        Err(e) => panic!("unexpected error {e:?}"),
        Ok(_) => panic!("upgrade accepted with a bad token"),
    }
    let log = sim.connections();
    assert_eq!(log.len(), 5);
    assert!(log.iter().all(|c| !c.auth_ok && c.status == 401 && c.end == "status"), "{log:?}");
    assert!(!log[3].params.contains_key("access_token"));
    assert!(sim.mastodon_ws_connections().is_empty());
    // Without the upgrade the bare path stays a 400 (B.9).
    let mut resp = timeout(WAIT, awc::Client::new().get(format!("{}/api/v1/streaming", sim.base_url())).send())
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(&resp.body().await.expect("body")[..], br#"{"error":"Unknown channel requested"}"#);
    sim.stop().await;
}

#[actix_rt::test]
async fn token_in_the_query_or_the_websocket_protocol_is_accepted() {
    let sim = sim_with(config()).await;
    let target = format!("/api/v1/streaming/public?stream=public&access_token={DEMO_MASTODON_TOKEN}");
    let mut by_query = try_connect(&sim, &target, None, None).await.expect("query token accepted");
    assert_eq!(by_query.protocol, None);
    let mut by_protocol = try_connect(&sim, "/api/v1/streaming?stream=public", None, Some(DEMO_MASTODON_TOKEN))
        .await
        .expect("protocol token accepted");
    assert_eq!(by_protocol.protocol.as_deref(), Some(DEMO_MASTODON_TOKEN));
    let post = sim.mastodon_post(&["rust"], true, false);
    for ws in [&mut by_query, &mut by_protocol] {
        let (stream, kind, payload) = event(&ws.json().await);
        assert_eq!((stream, kind.as_str()), (s(&["public"]), "update"));
        let status: Value = serde_json::from_str(&payload).expect("status JSON");
        assert_eq!(status["id"], post.id.as_str());
    }
    let log = sim.connections();
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|c| c.auth_ok && c.status == 101 && c.end.is_empty()), "{log:?}");
    assert_eq!(log[0].path, "/api/v1/streaming/public");
    assert_eq!(log[0].params.get("stream").map(String::as_str), Some("public"));
    assert!(!log[0].params.contains_key("access_token"));
    let infos = sim.mastodon_ws_connections();
    assert_eq!(infos.iter().map(|i| (i.attempt, i.open)).collect::<Vec<_>>(), [(0, true), (1, true)]);
    assert_eq!(infos[0].subscriptions, s(&["public"]));
    assert_eq!(infos[0].subscribes, 0, "?stream= is not a message");
    drop((by_query, by_protocol));
    assert_eq!(end_of(&sim, 0).await, "client closed");
    wait_for("both closed", || sim.mastodon_ws_connections().iter().all(|i| !i.open).then_some(())).await;
    sim.stop().await;
}

#[actix_rt::test]
async fn subscriptions_are_keyed_by_channel_and_events_carry_their_stream() {
    let sim = sim_with(config()).await;
    let mut ws = open(&sim, "/api/v1/streaming").await;
    ws.subscribe(json!({"type": "subscribe", "stream": "hashtag", "tag": "RustLang"})).await;
    // The same channel spelled differently: a no-op, the echo keeps "RustLang".
    ws.subscribe(json!({"type": "subscribe", "stream": "hashtag", "tag": "#rustlang"})).await;
    ws.subscribe(json!({"type": "subscribe", "stream": "hashtag:local", "tag": "news"})).await;
    ws.subscribe(json!({"type": "subscribe", "stream": "public:local"})).await;
    ws.subscribe(json!({"type": "subscribe", "stream": "public", "only_media": true})).await;
    ws.subscribe(json!({"type": "subscribe", "stream": "public:local"})).await;
    let keys = s(&["hashtag:rustlang", "hashtag:local:news", "public:local", "public:media"]);
    let info = wait_for("six subscribes", || sim.mastodon_ws_connections().pop().filter(|i| i.subscribes == 6)).await;
    assert_eq!(info.subscriptions, keys);
    assert_eq!((info.unsubscribes, info.pongs, info.open), (0, 0, true));
    let mut sse_tag = Sse::open(&sim, "/api/v1/streaming/hashtag?tag=rustlang", DEMO_MASTODON_TOKEN).await;
    let mut sse_local = Sse::open(&sim, "/api/v1/streaming/public/local", DEMO_MASTODON_TOKEN).await;
    let a = sim.mastodon_post(&["RustLang"], true, false);
    let b = sim.mastodon_post(&["news"], true, true);
    // A remote #rustlang status: only the hashtag subscription; it also
    // proves nothing else came in between.
    let c = sim.mastodon_post(&["rustlang"], false, false);
    let want = [
        (s(&["hashtag", "RustLang"]), &a.id),
        (s(&["public:local"]), &a.id),
        (s(&["hashtag:local", "news"]), &b.id),
        (s(&["public:local"]), &b.id),
        (s(&["public:media"]), &b.id),
        (s(&["hashtag", "RustLang"]), &c.id),
    ];
    let mut got = Vec::new();
    for _ in 0..want.len() {
        got.push(event(&ws.json().await));
    }
    for ((stream, kind, payload), (want_stream, want_id)) in got.iter().zip(&want) {
        assert_eq!((stream, kind.as_str()), (want_stream, "update"));
        let status: Value = serde_json::from_str(payload).expect("payload decodes to a Status");
        assert_eq!(status["id"], want_id.as_str());
        // Public and hashtag channels get the `filtered` variant (B.9).
        assert!(payload.ends_with(r#","filtered":[]}"#), "{payload}");
    }
    // The payload strings are exactly the SSE data lines.
    sse_tag.until(|body| contains(body, &c.id)).await;
    sse_local.until(|body| contains(body, &b.id)).await;
    assert_eq!(got[0].2, sse_tag.data("update", &a.id));
    assert_eq!(got[5].2, sse_tag.data("update", &c.id));
    assert_eq!(got[1].2, sse_local.data("update", &a.id));
    assert_eq!(got[3].2, sse_local.data("update", &b.id));
    assert_eq!(got[4].2, got[3].2);
    sim.stop().await;
}

#[actix_rt::test]
async fn delete_payload_is_a_bare_id_and_unsubscribe_stops_events() {
    let sim = sim_with(config()).await;
    // Single-purpose, then one more subscription by message.
    let mut ws = open(&sim, "/api/v1/streaming?stream=hashtag&tag=Foo").await;
    ws.subscribe(json!({"type": "subscribe", "stream": "public:remote"})).await;
    wait_subscribed(&sim, 0, &["hashtag:foo", "public:remote"]).await;
    let p = sim.mastodon_post(&["foo"], false, false);
    assert!(sim.mastodon_delete(&p.id));
    assert_eq!(event(&ws.json().await).0, s(&["hashtag", "Foo"]));
    assert_eq!(event(&ws.json().await).0, s(&["public:remote"]));
    let id = &p.id;
    assert_eq!(ws.raw().await, format!(r#"{{"stream":["hashtag","Foo"],"event":"delete","payload":"{id}"}}"#));
    assert_eq!(ws.raw().await, format!(r#"{{"stream":["public:remote"],"event":"delete","payload":"{id}"}}"#));
    ws.subscribe(json!({"type": "unsubscribe", "stream": "hashtag", "tag": "FOO"})).await;
    let info = wait_subscribed(&sim, 0, &["public:remote"]).await;
    assert_eq!((info.subscribes, info.unsubscribes), (1, 1));
    let q = sim.mastodon_post(&["foo"], false, false);
    let (stream, kind, payload) = event(&ws.json().await);
    assert_eq!((stream, kind.as_str()), (s(&["public:remote"]), "update"));
    assert!(payload.contains(&format!("\"id\":\"{}\"", q.id)));
    // Not subscribed any more: the error frame has no status.
    ws.subscribe(json!({"type": "unsubscribe", "stream": "hashtag", "tag": "foo"})).await;
    assert_eq!(ws.raw().await, r#"{"error":"Error unsubscribing from channel"}"#);
    sim.stop().await;
}

#[actix_rt::test]
async fn bad_requests_get_error_frames_and_junk_is_ignored() {
    let sim = sim_with(config()).await;
    let mut ws = open(&sim, "/api/v1/streaming/").await;
    // Ignored: invalid JSON, not an object, unknown type.
    ws.text("not json").await;
    ws.text("[1,2]").await;
    ws.subscribe(json!({"type": "ping", "stream": "user"})).await;
    let cases = [
        (json!({"type": "subscribe", "stream": "firehose"}), json!({"error": "Unknown stream type", "status": 400})),
        (json!({"type": "subscribe"}), json!({"error": "Unknown stream type", "status": 400})),
        (
            json!({"type": "subscribe", "stream": "hashtag"}),
            json!({"error": "Missing tag name parameter", "status": 400}),
        ),
        (
            json!({"type": "subscribe", "stream": "hashtag:local", "tag": "#"}),
            json!({"error": "Missing tag name parameter", "status": 400}),
        ),
        (
            json!({"type": "subscribe", "stream": "list"}),
            json!({"error": "Missing list name parameter", "status": 400}),
        ),
        (
            json!({"type": "subscribe", "stream": "list", "list": "999"}),
            json!({"error": "Not authorized to stream this list", "status": 401}),
        ),
        (json!({"type": "unsubscribe", "stream": "user"}), json!({"error": "Error unsubscribing from channel"})),
        (json!({"type": "unsubscribe", "stream": "nope"}), json!({"error": "Error unsubscribing from channel"})),
    ];
    for (request, want) in cases {
        ws.subscribe(request.clone()).await;
        assert_eq!(ws.json().await, want, "for {request}");
    }
    // A numeric list id works; no acknowledgement.
    ws.subscribe(json!({"type": "subscribe", "stream": "list", "list": 1})).await;
    let info = wait_subscribed(&sim, 0, &["list:1"]).await;
    assert_eq!((info.subscribes, info.unsubscribes), (7, 2));
    sim.stop().await;
}

#[actix_rt::test]
async fn a_notification_goes_out_once_per_matching_subscription() {
    let sim = sim_with(config()).await;
    let mut ws = open(&sim, "/api/v1/streaming?stream=user:notification").await;
    ws.subscribe(json!({"type": "subscribe", "stream": "list", "list": "2"})).await;
    ws.subscribe(json!({"type": "subscribe", "stream": "user"})).await;
    ws.subscribe(json!({"type": "subscribe", "stream": "direct"})).await;
    wait_subscribed(&sim, 0, &["user:notification", "list:2", "user", "direct"]).await;
    let id = sim.mastodon_notify();
    let first = event(&ws.json().await);
    let second = event(&ws.json().await);
    assert_eq!((&first.0, first.1.as_str()), (&s(&["user:notification"]), "notification"));
    assert_eq!((&second.0, second.1.as_str()), (&s(&["user"]), "notification"));
    assert_eq!(first.2, second.2);
    let n: Value = serde_json::from_str(&first.2).expect("notification JSON");
    assert_eq!(n["id"], id.as_str());
    // Recorded once per frame, with the SSE payload bytes.
    let sent = sim.sent();
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|m| m.kind == "notification" && m.id.as_deref() == Some(id.as_str())));
    assert_eq!(&sent[0].payload[..], first.2.as_bytes());
    assert_eq!(sim.connections()[0].messages_sent, 2);
    sim.stop().await;
}

#[actix_rt::test]
async fn a_binary_frame_closes_with_1003() {
    let sim = sim_with(config()).await;
    let mut ws = open(&sim, "/api/v1/streaming").await;
    ws.send(Message::Binary(Bytes::from_static(b"\x00\x01"))).await;
    match ws.frame().await {
        Frame::Close(Some(reason)) => assert_eq!(reason.code, CloseCode::Unsupported),
        other => panic!("expected Close 1003, got {other:?}"),
    }
    assert_eq!(end_of(&sim, 0).await, "binary");
    sim.stop().await;
}

#[actix_rt::test]
async fn pings_go_out_and_a_client_without_pong_is_dropped() {
    let sim = sim_with(SimulatorConfig { ws_ping_ms: 40, ..config() }).await;
    let opened = Instant::now();
    let mut ws = open(&sim, "/api/v1/streaming?stream=user").await;
    // The client's own ping is answered.
    ws.send(Message::Ping(Bytes::from_static(b"hi"))).await;
    assert_eq!(ws.frame().await, Frame::Pong(Bytes::from_static(b"hi")));
    assert!(matches!(ws.frame().await, Frame::Ping(_)));
    // The first ping comes one interval after the upgrade.
    assert!(opened.elapsed() >= Duration::from_millis(35), "{:?}", opened.elapsed());
    ws.send(Message::Pong(Bytes::new())).await;
    assert!(matches!(ws.frame().await, Frame::Ping(_)));
    // Unanswered: dropped at the next tick, no Close frame.
    ws.expect_dropped().await;
    assert_eq!(end_of(&sim, 0).await, "ping timeout");
    let info = &sim.mastodon_ws_connections()[0];
    assert_eq!((info.pongs, info.open), (1, false));
    sim.stop().await;
}

#[actix_rt::test]
async fn revoking_a_token_ends_sse_and_closes_websockets_without_code() {
    let tokens = vec!["tok-a".to_string(), "tok-b".to_string()];
    let sim = sim_with(SimulatorConfig { mastodon_tokens: tokens, ..config() }).await;
    let mut a = try_connect(&sim, "/api/v1/streaming?stream=public", Some("tok-a"), None).await.expect("a");
    let mut b = try_connect(&sim, "/api/v1/streaming?stream=public", Some("tok-b"), None).await.expect("b");
    let mut sse = Sse::open(&sim, "/api/v1/streaming/public", "tok-a").await;
    assert!(sim.mastodon_revoke("tok-a"));
    // B.9: the WebSocket is closed with no status code (1005) ...
    assert_eq!(a.frame().await, Frame::Close(None));
    // ... and the SSE body simply ends.
    sse.read(|_| false, true).await;
    // The other token's stream carries on.
    let post = sim.mastodon_post(&[], true, false);
    assert!(event(&b.json().await).2.contains(&post.id));
    let ends: Vec<String> = {
        let (x, y) = (end_of(&sim, 0).await, end_of(&sim, 2).await);
        vec![x, y]
    };
    assert_eq!(ends, ["revoked", "revoked"]);
    // The next connect gets 401 (B.9: treat as final). (A raw socket: awc
    // keeps a refused connection open a while, and actix waits for it.)
    let got = raw_upgrade(&sim, "/api/v1/streaming", "Authorization: Bearer tok-a\r\n").await;
    assert_refusal(got, 401, "Invalid access token");
    assert!(!sim.mastodon_revoke("tok-a"), "already revoked");
    sim.stop().await;
}

#[actix_rt::test]
async fn attempt_scripts_apply_to_websockets() {
    let scenario = Scenario {
        attempts: vec![
            script(|s| s.close_after = Some(1)),
            script(|s| {
                s.close_after = Some(1);
                s.reset = true;
            }),
            script(|s| s.disconnect_after = Some(1)),
            script(|s| s.limit = Some(2)),
            script(|s| {
                s.status = Some(503);
                s.retry_after_s = Some(7);
            }),
            script(|s| s.status = Some(401)),
        ],
        then: AttemptScript::default(),
    };
    let sim = sim_with(SimulatorConfig { scenario, ..config() }).await;
    let target = "/api/v1/streaming?stream=public";
    // Dropped without a Close frame: a FIN (EOF), or with `reset` an RST.
    for (attempt, end) in [(0, "close_after"), (1, "reset")] {
        let mut ws = open(&sim, target).await;
        let post = sim.mastodon_post(&[], true, false);
        assert!(event(&ws.json().await).2.contains(&post.id));
        match (ws.next().await, end) {
            (None, "close_after") => {}
            (Some(Err(WsProtocolError::Io(e))), "reset") => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}")
            }
            (other, _) => panic!("{end}: unexpected {other:?}"),
        }
        assert_eq!(end_of(&sim, attempt).await, end);
    }
    // B.9: like a revoked token's kill, a Close frame without a code.
    let mut ws = open(&sim, target).await;
    sim.mastodon_publish(2);
    assert_eq!(event(&ws.json().await).1, "update");
    assert_eq!(ws.frame().await, Frame::Close(None));
    assert_eq!(end_of(&sim, 2).await, "disconnect");
    drop(ws);
    let mut ws = open(&sim, target).await;
    sim.mastodon_publish(3);
    assert_eq!(event(&ws.json().await).1, "update");
    assert_eq!(event(&ws.json().await).1, "update");
    assert_eq!(ws.frame().await, Frame::Close(Some(CloseCode::Normal.into())));
    assert_eq!(end_of(&sim, 3).await, "limit");
    drop(ws);
    let (status, head, rest) =
        raw_upgrade(&sim, target, &format!("Authorization: Bearer {DEMO_MASTODON_TOKEN}\r\n")).await;
    assert_eq!(header(&head, "retry-after"), Some("7"), "{head}");
    assert_refusal((status, head, rest), 503, "An unexpected error occurred");
    match try_connect(&sim, target, Some(DEMO_MASTODON_TOKEN), None).await {
        Err(WsClientError::InvalidResponseStatus(status)) => assert_eq!(status.as_u16(), 401),
        Err(e) => panic!("unexpected error {e:?}"),
        Ok(_) => panic!("scripted 401 upgraded"),
    }
    let log = sim.connections();
    assert_eq!(log.iter().map(|c| c.status).collect::<Vec<_>>(), [101, 101, 101, 101, 503, 401]);
    assert_eq!(log.iter().map(|c| c.messages_sent).collect::<Vec<_>>(), [1, 1, 1, 2, 0, 0]);
    assert!(log[5].auth_ok, "the token was fine, the script refused");
    // Then the default script: an ordinary connection.
    let _ok = open(&sim, target).await;
    assert_eq!(sim.mastodon_ws_connections().len(), 5);
    sim.stop().await;
}

#[actix_rt::test]
async fn silence_sends_neither_events_nor_pings() {
    let scenario = Scenario::always(AttemptScript { silence_after: Some(0), silence_ms: 150, ..Default::default() });
    let sim = sim_with(SimulatorConfig { scenario, ws_ping_ms: 30, ..config() }).await;
    let opened = Instant::now();
    let mut ws = open(&sim, "/api/v1/streaming?stream=public").await;
    let post = sim.mastodon_post(&[], false, false);
    // Nothing for 150 ms, though a ping was due at 30: then the event, ...
    assert!(event(&ws.json().await).2.contains(&post.id));
    assert!(opened.elapsed() >= Duration::from_millis(140), "{:?}", opened.elapsed());
    // ... then pings again.
    assert!(matches!(ws.frame().await, Frame::Ping(_)));
    sim.stop().await;
}

#[actix_rt::test]
async fn updates_on_public_channels_may_arrive_after_later_deletes() {
    let sim = sim_with(SimulatorConfig { mastodon_update_delay_ms: 40, ..config() }).await;
    let mut ws = open(&sim, "/api/v1/streaming?stream=public").await;
    let mut sse = Sse::open(&sim, "/api/v1/streaming/public", DEMO_MASTODON_TOKEN).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        let p = sim.mastodon_post(&["rust"], true, false);
        assert!(sim.mastodon_delete(&p.id));
        ids.push(p.id);
    }
    // WebSocket: every update and delete exactly once, some deletes first.
    let mut order: Vec<(String, String)> = Vec::new();
    for _ in 0..20 {
        let (_, kind, payload) = event(&ws.json().await);
        let id = match kind.as_str() {
            "delete" => payload,
            _ => serde_json::from_str::<Value>(&payload).expect("status")["id"].as_str().expect("id").to_string(),
        };
        order.push((kind, id));
    }
    let at = |kind: &str, id: &str| order.iter().position(|(k, i)| k == kind && i == id).expect("arrived");
    assert!(ids.iter().all(|id| order.iter().filter(|(_, i)| i == id).count() == 2), "{order:?}");
    assert!(ids.iter().any(|id| at("delete", id) < at("update", id)), "no reordering: {order:?}");
    // Deletes are never held: they keep their order.
    let deletes: Vec<&String> = order.iter().filter(|(k, _)| k == "delete").map(|(_, i)| i).collect();
    assert_eq!(deletes, ids.iter().collect::<Vec<_>>());
    // SSE too.
    sse.until(|body| ids.iter().all(|id| contains(body, &format!("\"id\":\"{id}\"")))).await;
    let text = String::from_utf8_lossy(&sse.body).to_string();
    let pos = |needle: String| text.find(&needle).expect("in the body");
    assert!(ids.iter().any(|id| pos(format!("event: delete\ndata: {id}\n")) < pos(format!("\"id\":\"{id}\""))));
    sim.stop().await;
}

#[actix_rt::test]
async fn instance_endpoints_announce_the_streaming_url() {
    let sim = sim_with(config()).await;
    let client = awc::Client::default();
    let get = |path: &str| client.get(format!("{}{path}", sim.base_url())).send();
    let mut v2 = timeout(WAIT, get("/api/v2/instance")).await.expect("in time").expect("response");
    assert_eq!(v2.status().as_u16(), 200);
    let v2: Value = v2.json().await.expect("JSON");
    let url = format!("ws://{}", sim.addr());
    assert_eq!(v2["configuration"]["urls"]["streaming"], url.as_str());
    assert_eq!((v2["domain"].as_str(), v2["version"].as_str()), (Some("sim.example"), Some("4.3.0")));
    let mut v1 = timeout(WAIT, get("/api/v1/instance")).await.expect("in time").expect("response");
    let v1: Value = v1.json().await.expect("JSON");
    assert_eq!(v1["urls"]["streaming_api"], url.as_str());
    assert_eq!((v1["uri"].as_str(), v1["version"].as_str()), (Some("sim.example"), Some("4.3.0")));
    // The announced URL works.
    let mut req = awc::Client::new().ws(format!("{url}/api/v1/streaming/health?stream=user"));
    req = req.bearer_auth(DEMO_MASTODON_TOKEN);
    let (resp, _io) = timeout(WAIT, req.connect()).await.expect("in time").expect("upgrade on any streaming path");
    assert_eq!(resp.status().as_u16(), 101);
    sim.stop().await;
}

#[test]
fn frames_have_the_documented_shapes() {
    let stream = s(&["hashtag", "Foo"]);
    assert_eq!(
        event_frame(&stream, "update", br#"{"id":"1","content":"<p>\"hi\" \u00e9</p>"}"#),
        r#"{"stream":["hashtag","Foo"],"event":"update","payload":"{\"id\":\"1\",\"content\":\"<p>\\\"hi\\\" \\u00e9</p>\"}"}"#
    );
    assert_eq!(
        event_frame(&s(&["user"]), "announcement.delete", b"42"),
        r#"{"stream":["user"],"event":"announcement.delete","payload":"42"}"#
    );
    assert_eq!(event_frame(&s(&["user"]), "filters_changed", b""), r#"{"stream":["user"],"event":"filters_changed"}"#);
}

/// Waits until attempt `attempt` has withheld `n` events.
async fn wait_withheld(sim: &SimHandle, attempt: u64, n: u64) {
    wait_for(&format!("attempt {attempt} to withhold {n} events"), || {
        sim.connections().into_iter().find(|c| c.attempt == attempt && c.withheld >= n).map(|_| ())
    })
    .await
}

impl Ws {
    /// The next text frame as JSON; server pings on the way are answered.
    async fn json_answering_pings(&mut self) -> Value {
        loop {
            match self.frame().await {
                Frame::Ping(b) => self.send(Message::Pong(b)).await,
                Frame::Text(b) => return serde_json::from_slice(&b).expect("JSON frame"),
                other => panic!("expected a text frame or a ping, got {other:?}"),
            }
        }
    }

    /// Pings the server, then reads until its Pong and two pings of its own
    /// (answered): no event may come meanwhile.
    async fn only_pings_and_pongs(&mut self) {
        self.send(Message::Ping(Bytes::from_static(b"still there?"))).await;
        let (mut pong, mut pings) = (false, 0);
        while !pong || pings < 2 {
            match self.frame().await {
                Frame::Ping(b) => {
                    self.send(Message::Pong(b)).await;
                    pings += 1;
                }
                Frame::Pong(b) => {
                    assert_eq!(&b[..], b"still there?");
                    pong = true;
                }
                Frame::Text(t) => panic!("event on a muted connection: {}", String::from_utf8_lossy(&t)),
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }
}

/// The ids of a REST timeline's first page, newest first.
async fn rest_ids(sim: &SimHandle, path: &str) -> Vec<String> {
    let req = awc::Client::default().get(format!("{}{path}", sim.base_url())).bearer_auth(DEMO_MASTODON_TOKEN);
    let mut resp = timeout(WAIT, req.send()).await.expect("in time").expect("response");
    assert_eq!(resp.status().as_u16(), 200, "{path}");
    let page: Vec<Value> = resp.json().limit(10 << 20).await.expect("JSON page");
    page.iter().map(|s| s["id"].as_str().expect("id").to_string()).collect()
}

fn status_id(frame: &Value) -> String {
    let status: Value = serde_json::from_str(&event(frame).2).expect("status JSON");
    status["id"].as_str().expect("id").to_string()
}

#[actix_rt::test]
async fn mute_after_withholds_events_while_pings_and_pongs_go_on() {
    let scenario = Scenario::always(script(|s| s.mute_after = Some(1)));
    let sim = sim_with(SimulatorConfig { scenario, ws_ping_ms: 30, ..config() }).await;
    let mut ws = open(&sim, "/api/v1/streaming?stream=hashtag&tag=muted").await;
    let first = sim.mastodon_post(&["muted"], true, false);
    assert_eq!(status_id(&ws.json_answering_pings().await), first.id);
    let later: Vec<_> = (0..3).map(|_| sim.mastodon_post(&["muted"], true, false)).collect();
    // Taken and dropped: anything sent would come before the frames below.
    wait_withheld(&sim, 0, 3).await;
    ws.only_pings_and_pongs().await;
    let c = &sim.connections()[0];
    assert_eq!((c.messages_sent, c.withheld, c.end.as_str()), (1, 3, ""));
    // The last Pong may still be on its way to the server.
    let info = wait_for("two pongs counted", || sim.mastodon_ws_connections().pop().filter(|i| i.pongs >= 2)).await;
    assert!(info.open, "{info:?}");
    let want: Vec<String> = later.iter().rev().chain([&first]).map(|p| p.id.clone()).collect();
    assert_eq!(rest_ids(&sim, "/api/v1/timelines/tag/muted").await, want);
    sim.stop().await;
}

#[actix_rt::test]
async fn mute_all_mutes_websockets_until_unmuted() {
    let sim = sim_with(SimulatorConfig { ws_ping_ms: 30, ..config() }).await;
    let mut ws = open(&sim, "/api/v1/streaming?stream=public").await;
    ws.subscribe(json!({"type": "subscribe", "stream": "hashtag", "tag": "rust"})).await;
    wait_subscribed(&sim, 0, &["public", "hashtag:rust"]).await;
    sim.mastodon_mute_all(true);
    let a = sim.mastodon_post(&["rust"], true, false);
    // Once per subscription.
    wait_withheld(&sim, 0, 2).await;
    ws.only_pings_and_pongs().await;
    assert_eq!(rest_ids(&sim, "/api/v1/timelines/public").await, vec![a.id]);
    sim.mastodon_mute_all(false);
    let b = sim.mastodon_post(&["rust"], true, false);
    // `a` never comes: the next two events are `b`'s.
    assert_eq!(status_id(&ws.json_answering_pings().await), b.id);
    assert_eq!(status_id(&ws.json_answering_pings().await), b.id);
    let c = &sim.connections()[0];
    assert_eq!((c.messages_sent, c.withheld), (2, 2));
    sim.stop().await;
}

#[actix_rt::test]
async fn reset_all_drops_websockets_with_an_rst() {
    // Attempt 1 is in a scripted silence when the reset comes.
    let silent = script(|s| {
        s.silence_after = Some(0);
        s.silence_ms = 120_000;
    });
    let scenario = Scenario { attempts: vec![AttemptScript::default(), silent], then: AttemptScript::default() };
    let sim = sim_with(SimulatorConfig { scenario, ..config() }).await;
    let mut a = open(&sim, "/api/v1/streaming?stream=public").await;
    let mut b = open(&sim, "/api/v1/streaming?stream=user").await;
    let post = sim.mastodon_post(&[], true, false);
    assert_eq!(status_id(&a.json().await), post.id);
    assert_eq!(sim.reset_all(), 2);
    for ws in [&mut a, &mut b] {
        match ws.expect_dropped().await {
            Some(WsProtocolError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
            other => panic!("expected a reset, got {other:?}"),
        }
    }
    assert_eq!(end_of(&sim, 0).await, "reset_all");
    assert_eq!(end_of(&sim, 1).await, "reset_all");
    sim.stop().await;
}
