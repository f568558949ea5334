//! Socket tests of the simulator's Jetstream endpoint: awc's WebSocket
//! client for frames, a raw socket for the answers that are not upgrades.
//! Every wait is bounded by `WAIT`; "nothing else arrived" is shown by a
//! marker event published afterwards arriving next.
#![cfg(test)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use awc::error::{WsClientError, WsProtocolError};
use awc::ws::{CloseCode, Frame, Message};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::time::timeout;

use super::super::jetstream_state::ZSTD_DICTIONARY;
use super::super::ws_test_support::{config, header, raw_upgrade, script, sim_with, wait_for, Ws, WAIT};
use super::super::{
    AttemptScript, JetstreamConnInfo, JetstreamEvent, Scenario, SimHandle, SimulatorConfig, DEMO_MASTODON_TOKEN,
};

/// The dictionary's ID, in every compressed frame's header.
const DICT_ID: u32 = 1_612_007_021;

/// Upgrades `target` with these extra request headers.
async fn try_connect(sim: &SimHandle, target: &str, headers: &[(&str, &str)]) -> Result<Ws, WsClientError> {
    Ws::upgrade(sim, target, |req| headers.iter().fold(req.max_frame_size(1 << 20), |req, (k, v)| req.header(*k, *v)))
        .await
}

async fn open(sim: &SimHandle, target: &str) -> Ws {
    try_connect(sim, target, &[]).await.expect("upgrade accepted")
}

impl Ws {
    async fn update(&mut self, payload: Value) {
        self.text(&json!({"type": "options_update", "payload": payload}).to_string()).await;
    }

    /// The next frame that is not a server Ping.
    async fn data(&mut self) -> Frame {
        loop {
            match self.frame().await {
                Frame::Ping(_) => {}
                other => return other,
            }
        }
    }

    /// The next event, as text.
    async fn event(&mut self) -> String {
        match self.data().await {
            Frame::Text(b) => String::from_utf8(b.to_vec()).expect("utf-8 text frame"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next `want.len()` events must be exactly these.
    async fn expect_events(&mut self, want: &[JetstreamEvent]) {
        for (k, ev) in want.iter().enumerate() {
            let got = self.event().await;
            assert_eq!(got.as_bytes(), &ev.json[..], "event {k} of {}", want.len());
        }
    }

    /// Nothing else came before: a marker event about `did` (which must
    /// pass the filter) arrives next.
    async fn expect_nothing_more(&mut self, sim: &SimHandle, did: &str) {
        let marker = sim.jetstream_publish_unknown(did);
        assert_eq!(self.event().await.as_bytes(), &marker.json[..], "something came before the marker");
    }

    async fn expect_close(&mut self, description: Option<&str>) {
        match self.data().await {
            Frame::Close(Some(reason)) => {
                assert_eq!(reason.code, CloseCode::Normal);
                assert_eq!(reason.description.as_deref(), description);
            }
            other => panic!("expected Close 1000, got {other:?}"),
        }
    }
}

fn dids(sim: &SimHandle, n: usize) -> Vec<String> {
    (0..n).map(|i| sim.jetstream_did(i)).collect()
}

/// The log entry of attempt `attempt`, once `ok` holds for it.
async fn conn_when(sim: &SimHandle, attempt: u64, ok: impl Fn(&JetstreamConnInfo) -> bool) -> JetstreamConnInfo {
    wait_for(&format!("connection {attempt}"), || {
        sim.jetstream_connections().into_iter().find(|c| c.attempt == attempt).filter(|c| ok(c))
    })
    .await
}

/// How attempt `attempt` ended, once it did.
async fn end_of(sim: &SimHandle, attempt: u64) -> String {
    conn_when(sim, attempt, |c| c.end.is_some()).await.end.unwrap_or_default()
}

fn query_dids(dids: &[String]) -> String {
    dids.iter().map(|d| format!("wantedDids={d}")).collect::<Vec<_>>().join("&")
}

fn decompress(frame: &[u8]) -> Vec<u8> {
    let mut d = zstd::bulk::Decompressor::with_dictionary(ZSTD_DICTIONARY).expect("dictionary loads");
    d.decompress(frame, 1 << 20).expect("a zstd frame made with the dictionary")
}

#[actix_rt::test]
async fn filters_select_by_collection_prefix_and_did_and_let_identity_and_account_through() {
    let sim = sim_with(config()).await;
    let d = dids(&sim, 3);
    let target = format!(
        "/subscribe?wantedCollections=app.bsky.graph.*&wantedCollections=app.bsky.feed.post&{}",
        query_dids(&d[..2])
    );
    let mut ws = open(&sim, &target).await;
    let mut all = open(&sim, "/subscribe").await;
    let published = sim.jetstream_publish(&d, 60);
    let wanted = |e: &JetstreamEvent| {
        d[..2].contains(&e.did)
            && match e.collection.as_deref() {
                None => true,
                Some(c) => c.starts_with("app.bsky.graph.") || c == "app.bsky.feed.post",
            }
    };
    let want: Vec<JetstreamEvent> = published.iter().filter(|e| wanted(e)).cloned().collect();
    // The mix has every kind for the wanted DIDs, and events it must drop.
    for kind in ["commit", "identity", "account"] {
        assert!(want.iter().any(|e| e.kind == kind), "{kind}");
    }
    assert!(want.iter().any(|e| e.collection.as_deref() == Some("app.bsky.graph.follow")));
    assert!(published.iter().any(|e| !wanted(e) && d[..2].contains(&e.did)), "some dropped by collection");
    assert!(published.iter().any(|e| e.did == d[2]), "some dropped by DID");
    ws.expect_events(&want).await;
    // An unknown kind has no collection either; the DID filter still holds.
    let _other = sim.jetstream_publish_unknown(&d[2]);
    ws.expect_nothing_more(&sim, &d[1]).await;
    // The unfiltered connection got everything, in order.
    all.expect_events(&published).await;
    let info = conn_when(&sim, 0, |c| c.events_sent == want.len() as u64 + 1).await;
    assert_eq!(info.wanted_collections, ["app.bsky.graph.*", "app.bsky.feed.post"]);
    assert_eq!(info.wanted_dids, d[..2].iter().cloned().collect::<BTreeSet<_>>());
    assert_eq!((info.status, info.cursor, info.compress, info.require_hello), (101, None, false, false));
    assert_eq!(info.first_time_us, Some(want[0].time_us));
    // Recorded as sent, with the kinds and ids a client must report.
    let sent = sim.sent();
    let first = sent.iter().find(|m| m.attempt == 0).expect("recorded");
    assert_eq!((first.kind, first.id.clone()), ("commit", want[0].id()));
    assert!(sent.iter().any(|m| m.attempt == 0 && m.kind == "unknown" && m.id.is_none()));
    sim.stop().await;
}

#[actix_rt::test]
async fn cursor_replays_inclusively_then_live_without_gap_or_duplicate() {
    let sim = sim_with(config()).await;
    let d = dids(&sim, 4);
    let before = sim.jetstream_publish(&d, 20);
    let mut ws = open(&sim, &format!("/subscribe?cursor={}", before[5].time_us)).await;
    ws.expect_events(&before[5..]).await;
    let after = sim.jetstream_publish(&d, 10);
    ws.expect_events(&after).await;
    ws.expect_nothing_more(&sim, &d[0]).await;
    let info = conn_when(&sim, 0, |c| c.events_sent == 26).await;
    assert_eq!((info.cursor, info.first_time_us), (Some(before[5].time_us as i64), Some(before[5].time_us)));
    let history = sim.jetstream_history();
    assert_eq!(history.len(), 31);
    assert!(history.windows(2).all(|w| w[0].time_us < w[1].time_us));
    sim.stop().await;
}

#[actix_rt::test]
async fn replay_racing_live_publication_loses_and_repeats_nothing() {
    let sim = sim_with(config()).await;
    let d = dids(&sim, 50);
    sim.jetstream_publish(&d, 5_000);
    let publisher = {
        let sim = sim.clone();
        let d = d.clone();
        std::thread::spawn(move || {
            for _ in 0..60 {
                sim.jetstream_publish(&d, 50);
                std::thread::yield_now();
            }
        })
    };
    let mut ws = open(&sim, "/subscribe?cursor=1").await;
    publisher.join().expect("publisher");
    let marker = sim.jetstream_publish_unknown(&d[0]);
    let history = sim.jetstream_history();
    assert_eq!(history.len(), 8_001);
    ws.expect_events(&history).await;
    assert_eq!(history.last().map(|e| e.time_us), Some(marker.time_us));
    sim.stop().await;
}

#[actix_rt::test]
async fn old_cursors_start_at_the_oldest_and_a_future_cursor_is_live() {
    let sim = sim_with(config()).await;
    let d = dids(&sim, 2);
    let before = sim.jetstream_publish(&d, 10);
    for cursor in ["1", "0", "-5", "%2B1"] {
        let mut ws = open(&sim, &format!("/subscribe?cursor={cursor}")).await;
        ws.expect_events(&before).await;
    }
    let future = before[9].time_us + 3_600_000_000;
    let mut ws = open(&sim, &format!("/subscribe?cursor={future}")).await;
    let live = sim.jetstream_publish(&d, 3);
    ws.expect_events(&live).await;
    let info = conn_when(&sim, 4, |c| c.events_sent == 3).await;
    assert_eq!(info.cursor, Some(future as i64));
    // An empty cursor is no cursor.
    let mut ws = open(&sim, "/subscribe?cursor=").await;
    let live = sim.jetstream_publish(&d, 2);
    ws.expect_events(&live).await;
    assert_eq!(conn_when(&sim, 5, |_| true).await.cursor, None);
    sim.stop().await;
}

#[actix_rt::test]
async fn require_hello_sends_nothing_before_the_first_valid_update() {
    let sim = sim_with(SimulatorConfig { jetstream_ping_ms: 20, ..config() }).await;
    let d = dids(&sim, 2);
    let before = sim.jetstream_publish(&d, 20);
    let mut ws = open(&sim, "/subscribe?cursor=1&requireHello=true").await;
    let live = sim.jetstream_publish(&d, 5);
    // Nothing came before the answer to our ping: no event, no server ping.
    ws.send(Message::Ping(Bytes::from_static(b"hello?"))).await;
    assert_eq!(ws.frame().await, Frame::Pong(Bytes::from_static(b"hello?")));
    let info = conn_when(&sim, 0, |c| c.client_pings == 1).await;
    assert_eq!((info.events_sent, info.pings_sent, info.require_hello), (0, 0, true));
    // Ignored messages are no hello.
    ws.text(r#"{"type":"heartbeat","payload":"x"}"#).await;
    ws.send(Message::Ping(Bytes::from_static(b"still?"))).await;
    assert_eq!(ws.frame().await, Frame::Pong(Bytes::from_static(b"still?")));
    ws.update(json!({"wantedDids": [d[1]]})).await;
    let want: Vec<JetstreamEvent> = before.iter().chain(&live).filter(|e| e.did == d[1]).cloned().collect();
    ws.expect_events(&want).await;
    ws.expect_nothing_more(&sim, &d[1]).await;
    let info = conn_when(&sim, 0, |c| c.pings_sent > 0).await;
    assert_eq!(info.options_updates.len(), 1);
    assert!(info.options_updates[0].accepted);
    // A first update that is invalid ends it all.
    let mut ws = open(&sim, "/subscribe?requireHello=true").await;
    ws.update(json!({"wantedCollections": ["*"]})).await;
    ws.expect_close(Some("failed to parse subscriber options: invalid subscriber options: invalid collection: *"))
        .await;
    assert_eq!(end_of(&sim, 1).await, "bad options_update");
    assert_eq!(conn_when(&sim, 1, |_| true).await.events_sent, 0);
    sim.stop().await;
}

#[actix_rt::test]
async fn options_update_replaces_both_filters_without_reconnecting() {
    let sim = sim_with(config()).await;
    let d = dids(&sim, 2);
    let mut ws = open(&sim, &format!("/subscribe?wantedCollections=app.bsky.feed.post&wantedDids={}", d[0])).await;
    let first = sim.jetstream_publish(&d, 20);
    let want: Vec<JetstreamEvent> = first
        .iter()
        .filter(|e| e.did == d[0] && (e.collection.is_none() || e.collection.as_deref() == Some("app.bsky.feed.post")))
        .cloned()
        .collect();
    ws.expect_events(&want).await;
    // Ignored: other types, binary frames.
    ws.text(r#"{"type":"heartbeat","payload":"x"}"#).await;
    ws.text(r#"{"type":"something_new"}"#).await;
    ws.send(Message::Binary(Bytes::from_static(b"\x00\x01"))).await;
    // Only DIDs: the collection filter goes; maxMessageSizeBytes is ignored.
    ws.update(json!({"wantedDids": [d[1]], "maxMessageSizeBytes": 1})).await;
    let info = conn_when(&sim, 0, |c| !c.options_updates.is_empty()).await;
    assert_eq!(info.wanted_collections, Vec::<String>::new());
    assert_eq!(info.wanted_dids, BTreeSet::from([d[1].clone()]));
    let update = &info.options_updates[0];
    assert_eq!((update.accepted, update.dids, update.error.clone()), (true, 1, None));
    let second = sim.jetstream_publish(&d, 20);
    let want: Vec<JetstreamEvent> = second.iter().filter(|e| e.did == d[1]).cloned().collect();
    assert!(want.iter().any(|e| e.collection.as_deref() == Some("app.bsky.feed.like")));
    ws.expect_events(&want).await;
    // Empty lists mean all.
    ws.update(json!({"wantedCollections": [], "wantedDids": []})).await;
    conn_when(&sim, 0, |c| c.options_updates.len() == 2).await;
    let third = sim.jetstream_publish(&d, 5);
    ws.expect_events(&third).await;
    assert_eq!(sim.jetstream_connections().len(), 1);
    assert_eq!(conn_when(&sim, 0, |_| true).await.end, None);
    sim.stop().await;
}

#[actix_rt::test]
async fn an_invalid_options_update_closes_with_1000_and_the_reason() {
    let sim = sim_with(config()).await;
    let cases: [(&str, &str); 5] = [
        ("not json", "failed to unmarshal subscriber sourced message: "),
        (r#"{"type":"options_update"}"#, "failed to unmarshal subscriber options update: unexpected end of JSON input"),
        (
            r#"{"type":"options_update","payload":{"wantedCollections":["app.bsky.graph.fo*"]}}"#,
            "failed to parse subscriber options: invalid subscriber options: invalid collection: app.bsky.graph.fo*",
        ),
        (
            r#"{"type":"options_update","payload":{"wantedDids":["nope"]}}"#,
            "failed to parse subscriber options: invalid subscriber options",
        ),
        (
            r#"{"type":"options_update","payload":{"maxMessageSizeBytes":"big"}}"#,
            "failed to unmarshal subscriber options update: json: cannot unmarshal string",
        ),
    ];
    for (attempt, (text, reason)) in cases.iter().enumerate() {
        let mut ws = open(&sim, "/subscribe").await;
        ws.text(text).await;
        match ws.data().await {
            Frame::Close(Some(r)) => {
                assert_eq!(r.code, CloseCode::Normal, "{text}");
                let got = r.description.unwrap_or_default();
                assert!(got.starts_with(reason), "{text}: {got}");
            }
            other => panic!("{text}: expected Close 1000, got {other:?}"),
        }
        // Answered, the server ends the connection at once.
        ws.send(Message::Close(None)).await;
        assert!(matches!(ws.next().await, None | Some(Err(_))), "{text}");
        assert_eq!(end_of(&sim, attempt as u64).await, "bad options_update");
        let info = conn_when(&sim, attempt as u64, |_| true).await;
        let update = info.options_updates.last().expect("recorded");
        assert!(!update.accepted);
        assert!(update.error.as_deref().is_some_and(|e| e.starts_with(reason)), "{update:?}");
    }
    // A reason longer than a close frame holds is cut.
    let mut ws = open(&sim, "/subscribe").await;
    let long = format!("com.example.{}*", "x".repeat(200));
    ws.update(json!({ "wantedCollections": [long] })).await;
    match ws.data().await {
        Frame::Close(Some(r)) => assert_eq!(r.description.map(|d| d.len()), Some(123)),
        other => panic!("expected Close 1000, got {other:?}"),
    }
    sim.stop().await;
}

#[actix_rt::test]
async fn bad_queries_get_400_before_the_upgrade() {
    let sim = sim_with(config()).await;
    let many: String = (0..101).map(|i| format!("wantedCollections=com.example.n{i}&")).collect();
    let cases = [
        ("/subscribe?cursor=abc", "invalid cursor: abc"),
        ("/subscribe?cursor=1.5", "invalid cursor: 1.5"),
        ("/subscribe?cursor=99999999999999999999", "invalid cursor: 99999999999999999999"),
        ("/subscribe?wantedCollections=*", "invalid subscriber options: invalid collection: *"),
        (
            "/subscribe?wantedCollections=app.bsky.graph.fo*",
            "invalid subscriber options: invalid collection: app.bsky.graph.fo*",
        ),
        ("/subscribe?wantedDids=nope", "invalid subscriber options"),
        ("/subscribe?wantedDids=", "invalid subscriber options"),
        (&format!("/subscribe?{many}"), "invalid subscriber options: too many wanted collections"),
    ];
    for (target, body) in cases {
        let (status, head, got) = raw_upgrade(&sim, target, "").await;
        assert_eq!(status, 400, "{target}: {head}");
        assert_eq!(got, body, "{target}");
        assert_eq!(header(&head, "content-type"), Some("text/plain; charset=UTF-8"), "{head}");
        assert!(header(&head, "upgrade").is_none(), "{head}");
    }
    let log = sim.jetstream_connections();
    assert_eq!(log.len(), cases.len());
    assert!(log.iter().all(|c| c.status == 400 && c.end.as_deref() == Some("status")));
    assert_eq!(log[0].query, [("cursor".to_string(), "abc".to_string())]);
    assert!(sim.connections().iter().all(|c| c.status == 400 && c.path == "/subscribe"));
    // A cursor of another length is not refused (the server compares
    // strings), nor a bad maxMessageSizeBytes (no limit then).
    let _ws = open(&sim, "/subscribe?cursor=12&maxMessageSizeBytes=abc").await;
    assert_eq!(conn_when(&sim, cases.len() as u64, |_| true).await.cursor, Some(12));
    sim.stop().await;
}

#[actix_rt::test]
async fn ten_thousand_dids_fit_an_update_and_one_more_is_refused() {
    let sim = sim_with(config()).await;
    let d = dids(&sim, 10_001);
    let mut ws = open(&sim, "/subscribe?requireHello=true").await;
    // Repeats do not count.
    let mut with_repeats = d[..10_000].to_vec();
    with_repeats.extend_from_slice(&d[..100]);
    ws.update(json!({ "wantedDids": with_repeats })).await;
    let info = conn_when(&sim, 0, |c| !c.options_updates.is_empty()).await;
    assert_eq!((info.wanted_dids.len(), info.options_updates[0].dids), (10_000, 10_100));
    let published = sim.jetstream_publish(&d[9_995..], 10);
    let want: Vec<JetstreamEvent> = published.into_iter().filter(|e| e.did != d[10_000]).collect();
    ws.expect_events(&want).await;
    let mut over = open(&sim, "/subscribe").await;
    over.update(json!({ "wantedDids": d })).await;
    over.expect_close(Some("failed to parse subscriber options: invalid subscriber options: too many wanted DIDs"))
        .await;
    sim.stop().await;
}

#[actix_rt::test]
async fn long_queries_up_to_the_uri_cap_work() {
    let sim = sim_with(config()).await;
    let d = dids(&sim, 1_500);
    let target = format!("/subscribe?{}", query_dids(&d[..1_400]));
    assert!(target.len() > 60_000 && target.len() <= 65_534, "{}", target.len());
    let mut ws = open(&sim, &target).await;
    let info = conn_when(&sim, 0, |_| true).await;
    assert_eq!(info.wanted_dids.len(), 1_400);
    let published = sim.jetstream_publish(&d[1_399..1_401], 4);
    let want: Vec<JetstreamEvent> = published.into_iter().filter(|e| e.did == d[1_399]).collect();
    ws.expect_events(&want).await;
    // Past the `http` crate's 65,534-byte URI limit actix answers 400
    // itself: the request never reaches the endpoint.
    let target = format!("/subscribe?{}", query_dids(&d));
    assert!(target.len() > 65_534);
    let (status, _, body) = raw_upgrade(&sim, &target, "").await;
    assert_eq!((status, body.as_str()), (400, ""));
    assert_eq!(sim.jetstream_connections().len(), 1);
    sim.stop().await;
}

#[actix_rt::test]
async fn compressed_frames_decode_with_the_dictionary() {
    let sim = sim_with(config()).await;
    let d = dids(&sim, 3);
    let mut by_query = open(&sim, "/subscribe?compress=true").await;
    let mut by_header = try_connect(&sim, "/subscribe", &[("Socket-Encoding", "gzip, zstd")]).await.expect("ws");
    let published = sim.jetstream_publish(&d, 30);
    for ws in [&mut by_query, &mut by_header] {
        let mut compressed = 0;
        for ev in &published {
            match ws.data().await {
                Frame::Binary(frame) => {
                    let id = zstd::zstd_safe::get_dict_id_from_frame(&frame).map(|i| i.get());
                    assert_eq!(id, Some(DICT_ID));
                    assert_eq!(decompress(&frame), ev.json.to_vec());
                    compressed += frame.len();
                }
                other => panic!("expected a binary frame, got {other:?}"),
            }
        }
        let plain: usize = published.iter().map(|e| e.json.len()).sum();
        assert!(compressed < plain, "{compressed} >= {plain}");
    }
    let log = sim.jetstream_connections();
    assert!(log.iter().all(|c| c.compress && c.events_sent == 30));
    sim.stop().await;
}

#[actix_rt::test]
async fn max_message_size_skips_larger_events_silently() {
    let sim = sim_with(config()).await;
    let d = dids(&sim, 3);
    let published = sim.jetstream_publish(&d, 40);
    let mut sizes: Vec<usize> = published.iter().map(|e| e.json.len()).collect();
    sizes.sort_unstable();
    let limit = sizes[sizes.len() / 2];
    let mut ws = open(&sim, &format!("/subscribe?cursor=1&maxMessageSizeBytes={limit}")).await;
    let want: Vec<JetstreamEvent> = published.iter().filter(|e| e.json.len() <= limit).cloned().collect();
    assert!(want.len() < published.len());
    ws.expect_events(&want).await;
    ws.expect_nothing_more(&sim, &d[0]).await;
    let info = conn_when(&sim, 0, |c| c.events_sent == want.len() as u64 + 1).await;
    assert_eq!(info.skipped_oversize, (published.len() - want.len()) as u64);
    // Compressed, the compressed size counts.
    let mut zc = zstd::bulk::Compressor::with_dictionary(3, ZSTD_DICTIONARY).expect("compressor");
    let zsize = |e: &JetstreamEvent| zc.compress(&e.json).expect("compress").len();
    let zsizes: Vec<usize> = published.iter().map(zsize).collect();
    let mut sorted = zsizes.clone();
    sorted.sort_unstable();
    let zlimit = sorted[sorted.len() / 2];
    let mut ws = open(&sim, &format!("/subscribe?cursor=1&compress=true&maxMessageSizeBytes={zlimit}")).await;
    for (ev, size) in published.iter().zip(&zsizes).filter(|(_, s)| **s <= zlimit) {
        match ws.data().await {
            Frame::Binary(frame) => {
                assert_eq!(frame.len(), *size);
                assert_eq!(decompress(&frame), ev.json.to_vec());
            }
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }
    sim.stop().await;
}

#[actix_rt::test]
async fn pings_go_out_client_pings_are_answered_and_no_pong_is_fine() {
    let sim = sim_with(SimulatorConfig { jetstream_ping_ms: 30, ..config() }).await;
    let d = dids(&sim, 1);
    let opened = Instant::now();
    let mut ws = open(&sim, "/subscribe").await;
    ws.send(Message::Ping(Bytes::from_static(b"hi"))).await;
    loop {
        match ws.frame().await {
            Frame::Ping(_) => {}
            Frame::Pong(b) => {
                assert_eq!(b, Bytes::from_static(b"hi"));
                break;
            }
            other => panic!("expected the pong, got {other:?}"),
        }
    }
    // Three pings, none answered.
    let mut pings = 0;
    while pings < 3 {
        if let Frame::Ping(_) = ws.frame().await {
            pings += 1;
        }
    }
    assert!(opened.elapsed() >= Duration::from_millis(85), "{:?}", opened.elapsed());
    // Still served: v1 never drops a client for missing pongs.
    let ev = sim.jetstream_publish(&d, 1);
    ws.expect_events(&ev).await;
    ws.send(Message::Pong(Bytes::new())).await;
    let info = conn_when(&sim, 0, |c| c.pongs_received == 1).await;
    assert_eq!(info.client_pings, 1);
    assert!(info.pings_sent >= 3, "{info:?}");
    assert_eq!(info.end, None);
    sim.stop().await;
}

#[actix_rt::test]
async fn scripted_statuses_answer_instead_of_upgrading() {
    let scenario = Scenario {
        attempts: vec![
            script(|s| {
                s.status = Some(503);
                s.retry_after_s = Some(7);
            }),
            script(|s| s.status = Some(429)),
        ],
        then: AttemptScript::default(),
    };
    let sim = sim_with(SimulatorConfig { scenario, ..config() }).await;
    // The script comes first, even before a bad cursor.
    let (status, head, body) = raw_upgrade(&sim, "/subscribe?cursor=abc", "").await;
    assert_eq!((status, body.as_str()), (503, "Service Unavailable"));
    assert_eq!(header(&head, "retry-after"), Some("7"), "{head}");
    match try_connect(&sim, "/subscribe", &[]).await {
        Err(WsClientError::InvalidResponseStatus(status)) => assert_eq!(status.as_u16(), 429),
        Err(e) => panic!("unexpected error {e:?}"),
        Ok(_) => panic!("scripted 429 upgraded"),
    }
    let _ok = open(&sim, "/subscribe").await;
    let log = sim.jetstream_connections();
    assert_eq!(log.iter().map(|c| c.status).collect::<Vec<_>>(), [503, 429, 101]);
    assert_eq!(sim.connections().iter().map(|c| c.status).collect::<Vec<_>>(), [503, 429, 101]);
    sim.stop().await;
}

#[actix_rt::test]
async fn close_after_ends_abruptly_with_a_fin_or_a_reset() {
    let scenario = Scenario {
        attempts: vec![
            script(|s| s.close_after = Some(2)),
            script(|s| {
                s.close_after = Some(2);
                s.reset = true;
            }),
        ],
        then: AttemptScript::default(),
    };
    let sim = sim_with(SimulatorConfig { scenario, ..config() }).await;
    let d = dids(&sim, 2);
    for (attempt, end) in [(0, "close_after"), (1, "reset")] {
        let mut ws = open(&sim, "/subscribe").await;
        let published = sim.jetstream_publish(&d, 3);
        ws.expect_events(&published[..2]).await;
        match (ws.expect_dropped().await, end) {
            (None, "close_after") => {}
            (Some(WsProtocolError::Io(e)), "reset") => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}")
            }
            (other, _) => panic!("{end}: unexpected {other:?}"),
        }
        assert_eq!(end_of(&sim, attempt).await, end);
        assert_eq!(conn_when(&sim, attempt, |_| true).await.events_sent, 2);
    }
    sim.stop().await;
}

#[actix_rt::test]
async fn disconnect_after_and_limit_close_with_1000() {
    let scenario = Scenario {
        attempts: vec![script(|s| s.disconnect_after = Some(1)), script(|s| s.limit = Some(2))],
        then: AttemptScript::default(),
    };
    let sim = sim_with(SimulatorConfig { scenario, ..config() }).await;
    let d = dids(&sim, 2);
    for (attempt, n, end) in [(0, 1, "disconnect"), (1, 2, "limit")] {
        let mut ws = open(&sim, "/subscribe").await;
        let published = sim.jetstream_publish(&d, 3);
        ws.expect_events(&published[..n]).await;
        ws.expect_close(None).await;
        assert_eq!(end_of(&sim, attempt).await, end);
    }
    assert_eq!(sim.connections().iter().map(|c| c.messages_sent).collect::<Vec<_>>(), [1, 2]);
    sim.stop().await;
}

#[actix_rt::test]
async fn silence_sends_neither_events_nor_pings() {
    let scenario = Scenario::always(AttemptScript { silence_after: Some(1), silence_ms: 150, ..Default::default() });
    let sim = sim_with(SimulatorConfig { scenario, jetstream_ping_ms: 30, ..config() }).await;
    let d = dids(&sim, 2);
    let mut ws = open(&sim, "/subscribe").await;
    let published = sim.jetstream_publish(&d, 3);
    // Straight away: the first event comes before any ping is due.
    let got = ws.frame().await;
    assert_eq!(got, Frame::Text(published[0].json.clone()));
    let first_at = Instant::now();
    // Then nothing for 150 ms, though pings were due every 30: the next
    // frame is the second event.
    assert_eq!(ws.frame().await, Frame::Text(published[1].json.clone()));
    assert!(first_at.elapsed() >= Duration::from_millis(140), "{:?}", first_at.elapsed());
    assert_eq!(ws.frame().await, Frame::Text(published[2].json.clone()));
    // Then pings again.
    assert!(matches!(ws.frame().await, Frame::Ping(_)));
    sim.stop().await;
}

#[actix_rt::test]
async fn malformed_every_inserts_truncated_frames_and_loses_nothing() {
    let scenario = Scenario::always(AttemptScript { malformed_every: Some(2), ..Default::default() });
    let sim = sim_with(SimulatorConfig { scenario, ..config() }).await;
    let d = dids(&sim, 2);
    let mut ws = open(&sim, "/subscribe").await;
    let mut zws = open(&sim, "/subscribe?compress=true").await;
    let published = sim.jetstream_publish(&d, 3);
    // Frames: e1, junk, e2, junk, e3.
    assert_eq!(ws.event().await.as_bytes(), &published[0].json[..]);
    for ev in &published[1..] {
        let junk = ws.event().await;
        assert!(ev.json.starts_with(junk.as_bytes()) && junk.len() < ev.json.len(), "{junk}");
        assert!(serde_json::from_str::<Value>(&junk).is_err());
        assert_eq!(ws.event().await.as_bytes(), &ev.json[..]);
    }
    // Compressed, the junk is compressed too.
    let mut frames = Vec::new();
    for _ in 0..5 {
        match zws.data().await {
            Frame::Binary(b) => frames.push(decompress(&b)),
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }
    assert_eq!(frames[0], published[0].json.to_vec());
    assert!(published[1].json.starts_with(&frames[1]) && frames[1].len() < published[1].json.len());
    assert_eq!(frames[4], published[2].json.to_vec());
    let info = conn_when(&sim, 0, |c| c.events_sent == 3).await;
    assert_eq!(info.events_sent, 3);
    assert_eq!(sim.connections()[0].messages_sent, 5);
    assert_eq!(sim.sent().iter().filter(|m| m.attempt == 0 && m.kind == "malformed").count(), 2);
    sim.stop().await;
}

#[actix_rt::test]
async fn a_full_outbox_drops_a_live_subscriber_without_close_frame() {
    let sim = sim_with(SimulatorConfig { jetstream_outbox: 64, ..config() }).await;
    let d = dids(&sim, 10);
    let mut slow = open(&sim, "/subscribe").await;
    // Ten of every hundred events, read as they come.
    let mut fast = open(&sim, &format!("/subscribe?wantedDids={}", d[8])).await;
    // The slow client reads nothing: once the socket buffers are full its
    // outbox fills and it is dropped.
    let mut published = 0u64;
    let mut fast_got = 0;
    while sim.jetstream_connections()[0].end.is_none() {
        assert!(published < 150_000, "never dropped");
        let batch = sim.jetstream_publish(&d, 100);
        published += 100;
        let want: Vec<JetstreamEvent> = batch.into_iter().filter(|e| e.did == d[8]).collect();
        fast.expect_events(&want).await;
        fast_got += want.len();
    }
    assert_eq!(end_of(&sim, 0).await, "lagged");
    // What was in flight arrives, then the end without a Close frame.
    slow.expect_dropped().await;
    let info = conn_when(&sim, 0, |_| true).await;
    assert!(info.events_sent < published, "{} of {published}", info.events_sent);
    let fast_info = conn_when(&sim, 1, |_| true).await;
    assert_eq!((fast_info.end, fast_info.events_sent), (None, fast_got as u64));
    sim.stop().await;
}

#[actix_rt::test]
async fn the_generator_publishes_at_its_rate_and_stops_with_the_simulator() {
    let sim = sim_with(SimulatorConfig { jetstream_rate: 2_000, jetstream_dids: 20, ..config() }).await;
    let population: BTreeSet<String> = dids(&sim, 20).into_iter().collect();
    let started = Instant::now();
    let mut ws = open(&sim, "/subscribe").await;
    let mut last = 0;
    for _ in 0..200 {
        let text = ws.event().await;
        let v: Value = serde_json::from_str(&text).expect("JSON");
        assert!(population.contains(v["did"].as_str().expect("did")), "{text}");
        let t = v["time_us"].as_u64().expect("time_us");
        assert!(t > last);
        last = t;
    }
    // 200 events at 2,000/s take about 100 ms, certainly not 10 ms.
    assert!(started.elapsed() >= Duration::from_millis(50), "{:?}", started.elapsed());
    assert!(sim.shared.jetstream.generating.load(std::sync::atomic::Ordering::SeqCst));
    sim.stop().await;
    wait_for("the generator to stop", || {
        (!sim.shared.jetstream.generating.load(std::sync::atomic::Ordering::SeqCst)).then_some(())
    })
    .await;
    let n = sim.jetstream_history().len();
    assert!(n >= 200);
}

#[actix_rt::test]
async fn hooks_show_connections_and_publish() {
    let sim = sim_with(SimulatorConfig { jetstream_dids: 3, ..config() }).await;
    let d = dids(&sim, 3);
    let mut ws = open(&sim, &format!("/subscribe?wantedCollections=app.bsky.feed.*&{}", query_dids(&d[..2]))).await;
    let client = awc::Client::default();
    let mut resp = timeout(WAIT, client.post(format!("{}/_sim/jetstream/publish?n=5", sim.base_url())).send())
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["published"], 5);
    let history = sim.jetstream_history();
    assert_eq!(history.iter().map(|e| e.did.as_str()).collect::<Vec<_>>()[..4], [&d[0], &d[1], &d[2], &d[0]]);
    assert_eq!(body["last_time_us"].as_u64(), history.last().map(|e| e.time_us));
    let want: Vec<JetstreamEvent> = history
        .iter()
        .filter(|e| {
            d[..2].contains(&e.did) && e.collection.as_deref().map_or(true, |c| c.starts_with("app.bsky.feed."))
        })
        .cloned()
        .collect();
    ws.expect_events(&want).await;
    let bad = timeout(WAIT, client.post(format!("{}/_sim/jetstream/publish?n=x", sim.base_url())).send())
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(bad.status().as_u16(), 400);
    conn_when(&sim, 0, |c| c.events_sent == want.len() as u64).await;
    let mut resp = timeout(WAIT, client.get(format!("{}/_sim/jetstream/connections", sim.base_url())).send())
        .await
        .expect("in time")
        .expect("response");
    let rows: Value = resp.json().await.expect("JSON");
    let row = &rows[0];
    assert_eq!(row["attempt"], 0);
    assert_eq!(row["status"], 101);
    assert_eq!(row["wanted_dids"], 2);
    assert_eq!(row["query_dids"], 2);
    assert_eq!(row["query"], json!([["wantedCollections", "app.bsky.feed.*"]]));
    assert_eq!(row["wanted_collections"], json!(["app.bsky.feed.*"]));
    assert_eq!(row["events_sent"], want.len());
    assert!(row["closed_ms"].is_null() && row["opened_ms"].is_u64());
    sim.stop().await;
}

#[actix_rt::test]
async fn attempts_are_numbered_across_endpoints() {
    let sim = sim_with(config()).await;
    let _a = open(&sim, "/subscribe").await;
    let mut req = awc::Client::new().ws(format!("ws://{}/api/v1/streaming?stream=public", sim.addr()));
    req = req.bearer_auth(DEMO_MASTODON_TOKEN);
    let _m = timeout(WAIT, req.connect()).await.expect("in time").expect("mastodon upgrade");
    let _b = open(&sim, "/subscribe?cursor=5").await;
    let log = sim.connections();
    assert_eq!(
        log.iter().map(|c| (c.attempt, c.path.as_str())).collect::<Vec<_>>(),
        [(0, "/subscribe"), (1, "/api/v1/streaming"), (2, "/subscribe")]
    );
    assert_eq!(log[2].params.get("cursor").map(String::as_str), Some("5"));
    assert_eq!(sim.jetstream_connections().iter().map(|c| c.attempt).collect::<Vec<_>>(), [0, 2]);
    sim.stop().await;
}

#[actix_rt::test]
async fn reset_all_drops_jetstream_connections_with_an_rst() {
    let sim = sim_with(config()).await;
    let d = dids(&sim, 2);
    let mut live = open(&sim, "/subscribe").await;
    let published = sim.jetstream_publish(&d, 2);
    live.expect_events(&published).await;
    // Still waiting for its hello when the reset comes.
    let mut hello = open(&sim, "/subscribe?requireHello=true").await;
    conn_when(&sim, 1, |_| true).await;
    assert_eq!(sim.reset_all(), 2);
    for ws in [&mut live, &mut hello] {
        match ws.expect_dropped().await {
            Some(WsProtocolError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
            other => panic!("expected a reset, got {other:?}"),
        }
    }
    assert_eq!((end_of(&sim, 0).await, end_of(&sim, 1).await), ("reset_all".to_string(), "reset_all".to_string()));
    sim.stop().await;
}
