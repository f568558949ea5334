//! Mastodon sources end to end against the simulator over loopback: every
//! stream over SSE and WebSocket, catch-up over REST after a drop and after a
//! process restart, WebSocket multiplexing of 1,000 hashtags with run-time
//! changes, the reconnect rules (401, 503, stall) and `probe`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use streamherd_actors::connection::stats::ConnectionState;
use streamherd_actors::metrics::Metrics;
use streamherd_sim::{AttemptScript, Scenario, SimHandle, DEMO_MASTODON_TOKEN};

const T: Duration = Duration::from_secs(20);

/// Every stream name of protocols.md B.3.
const ALL_STREAMS: [&str; 12] = [
    "user",
    "user:notification",
    "public",
    "public:media",
    "public:local",
    "public:local:media",
    "public:remote",
    "public:remote:media",
    "hashtag:Rust",
    "hashtag:local:rust",
    "list:1",
    "direct",
];

/// A config with one Mastodon source `fedi` against the simulator and a file sink.
fn mastodon_config(sim: &SimHandle, transport: &str, streams: &[&str], extra: &str) -> TestConfig {
    mastodon_config_with(sim, transport, streams, extra, "")
}

fn mastodon_config_with(sim: &SimHandle, transport: &str, streams: &[&str], extra: &str, top: &str) -> TestConfig {
    Conf::new().table(top).mastodon("fedi", sim, transport, streams, extra).file_sink("").write()
}

fn sink_events(running: &streamherd::app::Running) -> u64 {
    running.metrics.sink_events_total.get_or_create(&Metrics::sink("archive")).get()
}

fn connected(running: &streamherd::app::Running) -> usize {
    running.stats.snapshots().iter().filter(|s| s.state == ConnectionState::Connected).count()
}

fn updates(envs: &[Envelope]) -> Vec<&Envelope> {
    envs.iter().filter(|e| e.kind == "update").collect()
}

fn gaps(envs: &[Envelope]) -> Vec<serde_json::Value> {
    envs.iter().filter(|e| e.kind == "gap").map(|e| serde_json::from_str(&e.payload).unwrap()).collect()
}

/// Mastodon's id order: length, then lexical.
fn id_key(id: &str) -> (usize, String) {
    (id.len(), id.to_owned())
}

/// Waits until the file sink has written `n` events (the sink flushes per batch).
async fn wait_written(running: &streamherd::app::Running, n: u64, what: &str) {
    wait_for(T, what, || sink_events(running) >= n).await;
}

/// Drop, 500 statuses while down, reconnect: all 500 once, in id order,
/// and a gap event saying 500 were recovered.
async fn catch_up_after_drop(transport: &str) {
    // Attempt 0 streams 10 events and drops; attempts 1-3 are refused (503),
    // which keeps the client away while the 500 are published.
    let scenario = Scenario {
        attempts: vec![
            AttemptScript { close_after: Some(10), ..Default::default() },
            AttemptScript { status: Some(503), ..Default::default() },
            AttemptScript { status: Some(503), ..Default::default() },
            AttemptScript { status: Some(503), ..Default::default() },
        ],
        ..Default::default()
    };
    let sim = start_sim(scenario, 0, 1000).await;
    let cfg = mastodon_config(&sim, transport, &["public"], "");
    let running = start_service(&cfg).await;
    wait_for(T, "connected", || connected(&running) == 1).await;
    let before: Vec<String> = sim.mastodon_publish(10).into_iter().map(|p| p.id).collect();
    wait_for(T, "the drop and the first refusal", || sim.connections().len() >= 2).await;
    let missed: Vec<String> = sim.mastodon_publish(500).into_iter().map(|p| p.id).collect();
    assert!(sim.connections().len() < 5, "reconnected before the statuses were published");
    wait_written(&running, 10 + 500 + 1, "catch-up written").await;
    stop_service(&running).await;

    let envs = read_envelopes(&cfg.data());
    let ups: Vec<String> = updates(&envs).iter().map(|e| e.id.clone().unwrap()).collect();
    let expected: Vec<String> = before.iter().chain(missed.iter()).cloned().collect();
    assert_eq!(ups.len(), 510, "{transport}: every status once");
    assert_eq!(ups.iter().collect::<BTreeSet<_>>().len(), 510, "{transport}: no duplicates");
    assert_eq!(ups[10..], missed[..], "{transport}: the missed 500 in id order");
    assert_eq!(ups.iter().collect::<BTreeSet<_>>(), expected.iter().collect::<BTreeSet<_>>());
    for e in updates(&envs) {
        assert_eq!(e.stream.as_deref(), Some(&["public".to_owned()][..]), "{}", e.line);
        let payload: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
        assert_eq!(payload["id"].as_str(), e.id.as_deref(), "payload id");
    }
    let g = gaps(&envs);
    assert_eq!(g.len(), 1, "{transport}: one gap event: {g:?}");
    assert_eq!(g[0]["recovered"], 500);
    assert_eq!(g[0]["complete"], true);
    assert_eq!(g[0]["reason"], "reconnect");
    assert_eq!(g[0]["since_id"].as_str(), before.last().map(String::as_str));
    assert_eq!(g[0]["until_id"].as_str(), missed.last().map(String::as_str));
    assert_eq!(g[0]["stream"], serde_json::json!(["public"]));
    let gap = envs.iter().find(|e| e.kind == "gap").unwrap();
    assert_eq!(gap.stream.as_deref(), Some(&["public".to_owned()][..]));
    assert_eq!(running.metrics.gaps_total.get_or_create(&Metrics::source("fedi")).get(), 1);
}

#[actix_rt::test]
async fn sse_catch_up_after_a_drop_recovers_all_500_in_order() {
    catch_up_after_drop("sse").await;
}

#[actix_rt::test]
async fn websocket_catch_up_after_a_drop_recovers_all_500_in_order() {
    catch_up_after_drop("websocket").await;
}

/// The same across a process restart: positions come from state_dir.
async fn catch_up_after_restart(transport: &str) {
    let sim = start_sim(Scenario::default(), 0, 1000).await;
    let cfg = mastodon_config(&sim, transport, &["hashtag:Rust"], "");
    let running = start_service(&cfg).await;
    wait_for(T, "connected", || connected(&running) == 1).await;
    let before: Vec<String> = (0..10).map(|_| sim.mastodon_post(&["rust"], true, false).id).collect();
    wait_written(&running, 10, "live statuses").await;
    stop_service(&running).await;
    let state = std::fs::read_to_string(cfg.dir.path().join("state/fedi/mastodon.json")).unwrap();
    assert!(state.contains(before.last().unwrap()), "position stored: {state}");

    let missed: Vec<String> =
        (0..500).map(|i| sim.mastodon_post(&["rust", "news"][..1 + i % 2], i % 3 == 0, false).id).collect();
    // Noise on other tags is not this stream's.
    for _ in 0..20 {
        sim.mastodon_post(&["caturday"], true, false);
    }
    let running = start_service(&cfg).await;
    wait_written(&running, 500 + 1, "catch-up after the restart").await;
    stop_service(&running).await;

    let envs = read_envelopes(&cfg.data());
    let ups: Vec<String> = updates(&envs).iter().map(|e| e.id.clone().unwrap()).collect();
    assert_eq!(ups.len(), 510, "{transport}: {} updates", ups.len());
    assert_eq!(ups[..10], before[..]);
    assert_eq!(ups[10..], missed[..], "{transport}: the missed 500 once each, in id order");
    let g = gaps(&envs);
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!(g[0]["reason"], "restart");
    assert_eq!(g[0]["recovered"], 500);
    assert_eq!(g[0]["stream"], serde_json::json!(["hashtag", "Rust"]));
    for e in updates(&envs) {
        assert_eq!(e.stream.as_deref(), Some(&["hashtag".to_owned(), "Rust".to_owned()][..]));
    }
}

#[actix_rt::test]
async fn sse_catch_up_across_a_process_restart() {
    catch_up_after_restart("sse").await;
}

#[actix_rt::test]
async fn websocket_catch_up_across_a_process_restart() {
    catch_up_after_restart("websocket").await;
}

#[actix_rt::test]
async fn a_401_fails_the_connection_without_retry() {
    for transport in ["sse", "websocket"] {
        let sim = start_sim(Scenario::default(), 0, 1000).await;
        let cfg = mastodon_config(&sim, transport, &["public"], "");
        let body = std::fs::read_to_string(&cfg.path).unwrap().replace(DEMO_MASTODON_TOKEN, "unknown-token");
        std::fs::write(&cfg.path, body).unwrap();
        let running = start_service(&cfg).await;
        wait_for(T, "failed", || running.stats.snapshots().first().is_some_and(|s| s.state == ConnectionState::Failed))
            .await;
        // Ten network backoff steps: a retry would have come by now.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let attempts = sim.connections();
        assert_eq!(attempts.len(), 1, "{transport}: exactly one attempt");
        assert_eq!(attempts[0].status, 401);
        let snap = &running.stats.snapshots()[0];
        assert!(snap.last_error.as_deref().unwrap_or("").contains("401"), "{transport}: {:?}", snap.last_error);
        stop_service(&running).await;
    }
}

#[actix_rt::test]
async fn a_503_backs_off_on_the_http_schedule() {
    for transport in ["sse", "websocket"] {
        let scenario = Scenario {
            attempts: vec![
                AttemptScript { status: Some(503), ..Default::default() },
                AttemptScript { status: Some(503), ..Default::default() },
            ],
            ..Default::default()
        };
        let sim = start_sim(scenario, 0, 1000).await;
        let cfg = mastodon_config(&sim, transport, &["public:local"], "");
        let running = start_service(&cfg).await;
        wait_for(T, "connected after two 503s", || connected(&running) == 1).await;
        let waits = waits_between_attempts(&sim);
        assert_eq!(waits.len(), 2, "{transport}: {waits:?}");
        // FAST_BACKOFF: http 50 ms, doubling, no jitter.
        for (w, expected) in waits.iter().zip([50u64, 100]) {
            let ms = w.as_millis() as u64;
            assert!(ms >= expected && ms < expected + 250, "{transport}: waited {ms} ms, expected {expected}");
        }
        stop_service(&running).await;
    }
}

#[actix_rt::test]
async fn silence_past_the_stall_timeout_reconnects_and_catches_up() {
    for transport in ["sse", "websocket"] {
        let scenario = Scenario {
            attempts: vec![AttemptScript { silence_after: Some(5), silence_ms: 5_000, ..Default::default() }],
            ..Default::default()
        };
        // Heartbeats every 100 ms keep a healthy SSE stream alive well within
        // the 400 ms stall timeout (a quiet WebSocket is covered below).
        let sim = start_sim(scenario, 0, 100).await;
        let cfg = mastodon_config(&sim, transport, &["public"], "stall_timeout_s = 0.4");
        let running = start_service(&cfg).await;
        wait_for(T, "connected", || connected(&running) == 1).await;
        let first: Vec<String> = sim.mastodon_publish(5).into_iter().map(|p| p.id).collect();
        wait_written(&running, 5, "the first five").await;
        let missed: Vec<String> = sim.mastodon_publish(20).into_iter().map(|p| p.id).collect();
        wait_for(T, "the stall reconnect", || sim.connections().len() >= 2).await;
        wait_written(&running, 5 + 20 + 1, "catch-up").await;
        stop_service(&running).await;
        let log = sim.connections();
        let stalled = log[1].opened_at.duration_since(log[0].opened_at);
        assert!(stalled >= Duration::from_millis(400), "{transport}: reconnected after {stalled:?}");
        let envs = read_envelopes(&cfg.data());
        let ups: Vec<String> = updates(&envs).iter().map(|e| e.id.clone().unwrap()).collect();
        let want: Vec<String> = first.iter().chain(missed.iter()).cloned().collect();
        assert_eq!(ups, want, "{transport}: every status once, the missed ones in id order");
        let g = gaps(&envs);
        assert_eq!(g.len(), 1, "{transport}: {g:?}");
        assert_eq!(g[0]["recovered"], 20);
        assert!(
            running
                .metrics
                .reconnects_total
                .get_or_create(&streamherd_actors::metrics::SourceCauseLabels {
                    source: "fedi".into(),
                    cause: "stall".into()
                })
                .get()
                >= 1
        );
    }
}

/// The ids of a REST timeline of the simulator: the oracle for which
/// statuses a stream carries.
async fn rest_ids(sim: &SimHandle, path: &str) -> BTreeSet<String> {
    let sep = if path.contains('?') { "&" } else { "?" };
    let url = format!("{}{path}{sep}limit=40", sim.base_url());
    let mut ids = BTreeSet::new();
    let mut min_id = "0".to_owned();
    for _ in 0..50 {
        let mut response = awc::Client::new()
            .get(format!("{url}&min_id={min_id}"))
            .insert_header(("Authorization", format!("Bearer {DEMO_MASTODON_TOKEN}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let body = response.body().limit(1 << 24).await.unwrap();
        let items: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        let page: Vec<String> = items.iter().filter_map(|i| i["id"].as_str().map(str::to_owned)).collect();
        let Some(newest) = page.iter().max_by_key(|id| id_key(id)).cloned() else { break };
        ids.extend(page);
        min_id = newest;
    }
    ids
}

/// Every stream over one transport: the right events on the right stream,
/// with the stream field and the payload as the server sent it.
async fn every_stream(transport: &str) {
    let sim = start_sim(Scenario::default(), 0, 1000).await;
    let cfg = mastodon_config(&sim, transport, &ALL_STREAMS, "catch_up = false");
    let running = start_service(&cfg).await;
    let want_connections = if transport == "sse" { ALL_STREAMS.len() } else { 1 };
    wait_for(T, "every stream connected", || connected(&running) == want_connections).await;
    if transport == "websocket" {
        wait_for(T, "every subscription", || {
            sim.mastodon_ws_connections().first().is_some_and(|c| c.subscriptions.len() == ALL_STREAMS.len())
        })
        .await;
    }
    // Statuses of every audience, an edit, a delete, notifications and the rest of the catalogue.
    let mut posts = Vec::new();
    for (local, media) in [(true, false), (false, false), (true, true), (false, true)] {
        posts.push(sim.mastodon_post(&["rust"], local, media));
        posts.push(sim.mastodon_post(&["caturday"], local, media));
    }
    posts.extend(sim.mastodon_publish(30));
    let deleted = posts[1].id.clone();
    assert!(sim.mastodon_delete(&deleted));
    let notification = sim.mastodon_notify();
    let extra = sim.mastodon_emit_catalogue();
    wait_for(T, "events on every stream", || {
        let envs = read_envelopes_so_far(&cfg.data());
        let streams: BTreeSet<String> = envs.iter().filter_map(|e| e.stream.as_ref().map(|s| s.join(":"))).collect();
        streams.len() >= ALL_STREAMS.len() && envs.iter().any(|e| e.kind == "notifications_merged")
    })
    .await;
    // Late events: give the last deliveries a moment to land, bounded by the wait below.
    wait_for(T, "the catalogue", || {
        let envs = read_envelopes_so_far(&cfg.data());
        extra.iter().all(|(kind, _)| envs.iter().any(|e| &e.kind == kind))
    })
    .await;
    stop_service(&running).await;

    let envs = read_envelopes(&cfg.data());
    let by_stream = |name: &str| -> Vec<&Envelope> {
        let echo: Vec<String> =
            name.splitn(if name.starts_with("hashtag:local") { 3 } else { 2 }, ':').map(str::to_owned).collect();
        let echo = match echo.as_slice() {
            [a, b] if a == "public" || a == "user" => vec![format!("{a}:{b}")],
            [a, b, c] if a == "public" => vec![format!("{a}:{b}:{c}")],
            [a, b, c] => vec![format!("{a}:{b}"), c.clone()],
            _ => echo,
        };
        envs.iter().filter(|e| e.stream.as_ref() == Some(&echo)).collect()
    };
    let checks: [(&str, &str); 10] = [
        ("public", "/api/v1/timelines/public"),
        ("public:media", "/api/v1/timelines/public?only_media=true"),
        ("public:local", "/api/v1/timelines/public?local=true"),
        ("public:local:media", "/api/v1/timelines/public?local=true&only_media=true"),
        ("public:remote", "/api/v1/timelines/public?remote=true"),
        ("public:remote:media", "/api/v1/timelines/public?remote=true&only_media=true"),
        ("hashtag:Rust", "/api/v1/timelines/tag/rust"),
        ("hashtag:local:rust", "/api/v1/timelines/tag/rust?local=true"),
        ("user", "/api/v1/timelines/home"),
        ("list:1", "/api/v1/timelines/list/1"),
    ];
    for (stream, path) in checks {
        let got: BTreeSet<String> =
            by_stream(stream).iter().filter(|e| e.kind == "update").filter_map(|e| e.id.clone()).collect();
        let mut want = rest_ids(&sim, path).await;
        // The deleted status is gone from the timeline but was streamed first.
        if got.contains(&deleted) {
            want.insert(deleted.clone());
        }
        assert_eq!(got, want, "{transport}: updates on {stream}");
        for e in by_stream(stream).iter().filter(|e| e.kind == "update") {
            let v: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
            assert_eq!(v["id"].as_str(), e.id.as_deref(), "{transport} {stream}: payload id");
            let filtered = stream.starts_with("public") || stream.starts_with("hashtag");
            assert_eq!(v.get("filtered").is_some(), filtered, "{transport} {stream}: filtered array: {}", e.line);
        }
    }
    // The delete reached the public stream as a bare id in a JSON string.
    let delete = by_stream("public").into_iter().find(|e| e.kind == "delete").expect("delete on public");
    assert_eq!(delete.id.as_deref(), Some(deleted.as_str()));
    assert_eq!(delete.payload, format!("{deleted:?}"));
    // Notifications on user and user:notification.
    for stream in ["user", "user:notification"] {
        let n = by_stream(stream).into_iter().find(|e| e.kind == "notification").expect("notification");
        assert_eq!(n.id.as_deref(), Some(notification.as_str()), "{transport} {stream}");
    }
    // The rest of the catalogue, each on the stream the server sends it on.
    for (kind, stream) in &extra {
        let e = envs
            .iter()
            .find(|e| &e.kind == kind && e.stream.as_ref().map(|s| s.join(":")).as_deref() == Some(stream.as_str()))
            .unwrap_or_else(|| panic!("{transport}: no {kind} on {stream}"));
        serde_json::from_str::<serde_json::Value>(&e.payload).unwrap_or_else(|err| panic!("{kind}: payload {err}"));
        if kind == "announcement.delete" || kind == "conversation" || kind == "announcement" {
            assert!(e.id.is_some(), "{transport}: {kind} has an id: {}", e.line);
        }
    }
    let filters = envs.iter().find(|e| e.kind == "filters_changed").unwrap();
    assert_eq!(filters.payload, "null", "{transport}: filters_changed without a payload");
    // Object payloads are the bytes the server sent, untouched.
    let sent = sim.sent();
    for e in &envs {
        if ["update", "status.update", "notification", "conversation", "announcement", "announcement.reaction"]
            .contains(&e.kind.as_str())
        {
            assert!(
                sent.iter().any(|m| m.kind == e.kind && m.payload[..] == *e.payload.as_bytes()),
                "{transport}: payload not byte for byte as sent: {:.300}",
                e.line
            );
        }
    }
    let unknown = envs.iter().find(|e| e.kind == "unknown").expect("unknown event kept");
    let v: serde_json::Value = serde_json::from_str(&unknown.payload).unwrap();
    assert_eq!(v["event"], "encrypted_message", "{transport}: the event name is kept: {}", unknown.line);
    assert_eq!(v["payload"]["ciphertext"], "AAEC");
    assert!(envs.iter().all(|e| e.source == "fedi" && e.connection.starts_with("fedi/")));
}

#[actix_rt::test]
async fn every_stream_and_event_kind_over_sse() {
    every_stream("sse").await;
}

#[actix_rt::test]
async fn every_stream_and_event_kind_over_websocket() {
    every_stream("websocket").await;
}

/// Connection info of the simulator's WebSocket that carries `key`.
fn ws_carrying(sim: &SimHandle, key: &str) -> streamherd_sim::MastodonWsInfo {
    sim.mastodon_ws_connections()
        .into_iter()
        .find(|c| c.open && c.subscriptions.iter().any(|s| s == key))
        .unwrap_or_else(|| panic!("no open connection carries {key}"))
}

/// (attempt, subscribes, unsubscribes) of every open WebSocket.
fn ws_counts(sim: &SimHandle) -> BTreeMap<u64, (usize, usize, usize)> {
    sim.mastodon_ws_connections()
        .into_iter()
        .filter(|c| c.open)
        .map(|c| (c.attempt, (c.subscriptions.len(), c.subscribes, c.unsubscribes)))
        .collect()
}

async fn post_update(port: u16) -> serde_json::Value {
    let mut response = awc::Client::new().post(format!("http://127.0.0.1:{port}/update")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    serde_json::from_slice(&response.body().await.unwrap()).unwrap()
}

fn rewrite_streams(cfg: &TestConfig, streams: &[String]) {
    let body = std::fs::read_to_string(&cfg.path).unwrap();
    let start = body.find("streams = [").unwrap();
    let end = start + body[start..].find(']').unwrap() + 1;
    let list: Vec<String> = streams.iter().map(|s| format!("{s:?}")).collect();
    let body = format!("{}streams = [{}]{}", &body[..start], list.join(", "), &body[end..]);
    std::fs::write(&cfg.path, body).unwrap();
}

#[actix_rt::test]
async fn a_thousand_hashtags_use_ten_websockets_and_changes_touch_only_their_connection() {
    let sim = start_sim(Scenario::default(), 0, 1000).await;
    let tags: Vec<String> = (0..1000).map(|i| format!("hashtag:t{i:04}")).collect();
    let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
    let port = free_port();
    let cfg = mastodon_config_with(
        &sim,
        "websocket",
        &refs,
        "streams_per_connection = 100",
        &format!("[control]\nlisten = \"127.0.0.1:{port}\""),
    );
    let running = start_service(&cfg).await;
    wait_for(T, "ten connections with 100 subscriptions each", || {
        let c = ws_counts(&sim);
        c.len() == 10 && c.values().all(|(subs, ..)| *subs == 100)
    })
    .await;
    assert_eq!(sim.connections().len(), 10, "ten connection attempts, no more");
    let before = ws_counts(&sim);
    let first = ws_carrying(&sim, "hashtag:t0000").attempt;
    assert!(before.values().all(|(_, subscribes, unsubscribes)| *subscribes == 100 && *unsubscribes == 0));

    // Three tags of the first connection go, three new ones come: they fill its room.
    let mut wanted: Vec<String> = tags[3..].to_vec();
    wanted.extend((0..3).map(|i| format!("hashtag:New{i}")));
    rewrite_streams(&cfg, &wanted);
    let answer = post_update(port).await;
    assert_eq!(answer["sources"]["fedi"]["added"], 3, "{answer}");
    assert_eq!(answer["sources"]["fedi"]["removed"], 3, "{answer}");
    wait_for(T, "the first connection resubscribed", || {
        ws_counts(&sim).get(&first).is_some_and(|c| *c == (100, 103, 3))
    })
    .await;
    let after = ws_counts(&sim);
    for (attempt, counts) in &before {
        if *attempt != first {
            assert_eq!(after.get(attempt), Some(counts), "connection {attempt} was not touched");
        }
    }
    assert_eq!(ws_carrying(&sim, "hashtag:new1").attempt, first, "keyed by the normalised tag");
    assert_eq!(sim.connections().len(), 10, "no connection was opened or reopened");

    // Fifty more: every connection is full, so one new connection takes them.
    let extra: Vec<String> = (0..50).map(|i| format!("hashtag:x{i:02}")).collect();
    let mut more = wanted.clone();
    more.extend(extra.iter().cloned());
    rewrite_streams(&cfg, &more);
    post_update(port).await;
    wait_for(T, "an eleventh connection with 50", || ws_counts(&sim).values().any(|c| *c == (50, 50, 0))).await;
    let with_new = ws_counts(&sim);
    assert_eq!(with_new.len(), 11);
    for (attempt, counts) in &after {
        assert_eq!(with_new.get(attempt), Some(counts), "connection {attempt} was not touched");
    }

    // Events still flow on a connection that was changed and on a new one.
    let p1 = sim.mastodon_post(&["new2"], true, false);
    let p2 = sim.mastodon_post(&["x07"], false, false);
    wait_for(T, "both posts", || {
        let envs = read_envelopes_so_far(&cfg.data());
        [&p1.id, &p2.id].iter().all(|id| envs.iter().any(|e| e.id.as_ref() == Some(*id)))
    })
    .await;

    // Removing the fifty again closes that connection and touches no other.
    rewrite_streams(&cfg, &wanted);
    post_update(port).await;
    wait_for(T, "the eleventh connection closed", || ws_counts(&sim).len() == 10).await;
    assert_eq!(ws_counts(&sim), after);
    stop_service(&running).await;

    let envs = read_envelopes(&cfg.data());
    let e = envs.iter().find(|e| e.id.as_ref() == Some(&p1.id)).unwrap();
    assert_eq!(e.stream, Some(vec!["hashtag".to_owned(), "New2".to_owned()]), "echoed as configured");
    let e = envs.iter().find(|e| e.id.as_ref() == Some(&p2.id)).unwrap();
    assert_eq!(e.stream, Some(vec!["hashtag".to_owned(), "x07".to_owned()]));
}

async fn start_sim_pinging(ping_ms: u64) -> SimHandle {
    streamherd_sim::start(streamherd_sim::SimulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        rate: 0,
        record_sent: 10_000,
        ws_ping_ms: ping_ms,
        ..Default::default()
    })
    .await
    .unwrap()
}

#[actix_rt::test]
async fn websocket_pings_are_answered_and_keep_a_quiet_stream_alive() {
    // Pings every 50 ms; the server drops a client that misses one pong, and
    // the client stalls after 300 ms without a frame: only answered pings
    // keep this quiet connection up.
    let sim = start_sim_pinging(50).await;
    let cfg = mastodon_config(&sim, "websocket", &["public"], "stall_timeout_s = 0.3");
    let running = start_service(&cfg).await;
    wait_for(T, "twenty pongs", || sim.mastodon_ws_connections().first().is_some_and(|c| c.pongs >= 20)).await;
    assert_eq!(sim.connections().len(), 1, "one connection, never dropped");
    assert!(sim.mastodon_ws_connections()[0].open);
    assert_eq!(connected(&running), 1);
    let post = sim.mastodon_post(&[], true, false);
    wait_written(&running, 1, "a status after a second of quiet").await;
    stop_service(&running).await;
    assert_eq!(updates(&read_envelopes(&cfg.data()))[0].id.as_deref(), Some(post.id.as_str()));
}

#[actix_rt::test]
async fn a_refused_subscription_degrades_health_and_the_others_go_on() {
    let sim = start_sim(Scenario::default(), 0, 1000).await;
    let cfg = mastodon_config(&sim, "websocket", &["public", "list:999"], "");
    let running = start_service(&cfg).await;
    let health = || async { running.supervisor.send(streamherd_actors::supervisor::GetHealth).await.unwrap() };
    let start = std::time::Instant::now();
    let refused = loop {
        let h = health().await;
        if let Some((_, why)) = h[0].failed.first() {
            break why.clone();
        }
        assert!(start.elapsed() < T, "no refusal reported");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(refused.contains("401") && refused.contains("Not authorized to stream this list"), "{refused}");
    let snap = &running.stats.snapshots()[0];
    assert_eq!(snap.state, ConnectionState::Connected, "the connection goes on");
    assert!(snap.last_error.as_deref().unwrap_or("").contains("Not authorized"), "{:?}", snap.last_error);
    let post = sim.mastodon_post(&["rust"], true, false);
    wait_written(&running, 1, "public still streams").await;
    stop_service(&running).await;
    assert_eq!(updates(&read_envelopes(&cfg.data()))[0].id.as_deref(), Some(post.id.as_str()));
}

#[actix_rt::test]
async fn a_revoked_token_ends_the_stream_and_the_401_on_reconnect_is_final() {
    for transport in ["sse", "websocket"] {
        let sim = start_sim(Scenario::default(), 0, 1000).await;
        let cfg = mastodon_config(&sim, transport, &["user"], "");
        let running = start_service(&cfg).await;
        wait_for(T, "connected", || connected(&running) == 1).await;
        assert!(sim.mastodon_revoke(DEMO_MASTODON_TOKEN));
        wait_for(T, "failed", || running.stats.snapshots()[0].state == ConnectionState::Failed).await;
        let log = sim.connections();
        assert_eq!(log.len(), 2, "{transport}: the stream, then one refused reconnect");
        assert_eq!(log[0].end, "revoked", "{transport}");
        assert_eq!(log[1].status, 401, "{transport}");
        stop_service(&running).await;
    }
}

#[actix_rt::test]
async fn many_streams_of_one_websocket_catch_up_each_with_their_own_gap_event() {
    let scenario = Scenario {
        attempts: vec![
            AttemptScript { close_after: Some(10), ..Default::default() },
            AttemptScript { status: Some(503), ..Default::default() },
            AttemptScript { status: Some(503), ..Default::default() },
        ],
        ..Default::default()
    };
    let sim = start_sim(scenario, 0, 1000).await;
    let tags: Vec<String> = (0..10).map(|i| format!("tag{i}")).collect();
    let streams: Vec<String> = tags.iter().map(|t| format!("hashtag:{t}")).collect();
    let refs: Vec<&str> = streams.iter().map(String::as_str).collect();
    let cfg = mastodon_config(&sim, "websocket", &refs, "");
    let running = start_service(&cfg).await;
    wait_for(T, "ten subscriptions", || {
        sim.mastodon_ws_connections().first().is_some_and(|c| c.subscriptions.len() == 10)
    })
    .await;
    // One status per tag: every stream has a position; the tenth event ends attempt 0.
    for t in &tags {
        sim.mastodon_post(&[t.as_str()], true, false);
    }
    wait_for(T, "the drop", || sim.connections().len() >= 2).await;
    let mut missed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..300 {
        let t = &tags[i % 10];
        missed.entry(t.clone()).or_default().push(sim.mastodon_post(&[t.as_str()], i % 2 == 0, false).id);
    }
    wait_written(&running, 10 + 300 + 10, "every stream caught up").await;
    stop_service(&running).await;
    let envs = read_envelopes(&cfg.data());
    for t in &tags {
        let on: Vec<&Envelope> =
            envs.iter().filter(|e| e.stream.as_ref().is_some_and(|s| s[0] == "hashtag" && &s[1] == t)).collect();
        let ids: Vec<String> = on.iter().filter(|e| e.kind == "update").skip(1).filter_map(|e| e.id.clone()).collect();
        assert_eq!(ids, missed[t], "{t}: the missed 30 once, in id order");
        let gap: Vec<serde_json::Value> =
            on.iter().filter(|e| e.kind == "gap").map(|e| serde_json::from_str(&e.payload).unwrap()).collect();
        assert_eq!(gap.len(), 1, "{t}");
        assert_eq!(gap[0]["recovered"], 30, "{t}");
    }
}

#[actix_rt::test]
async fn sse_stream_changes_open_and_close_only_their_connections() {
    let sim = start_sim(Scenario::default(), 0, 1000).await;
    let port = free_port();
    let cfg = mastodon_config_with(&sim, "sse", &["public"], "", &format!("[control]\nlisten = \"127.0.0.1:{port}\""));
    let running = start_service(&cfg).await;
    wait_for(T, "connected", || connected(&running) == 1).await;
    rewrite_streams(&cfg, &["public".into(), "user".into()]);
    let answer = post_update(port).await;
    assert_eq!(answer["sources"]["fedi"]["added"], 1, "{answer}");
    wait_for(T, "a second connection", || connected(&running) == 2).await;
    rewrite_streams(&cfg, &["user".into()]);
    post_update(port).await;
    wait_for(T, "the public connection closed", || {
        sim.connections().iter().filter(|c| c.closed_at.is_none()).count() == 1
    })
    .await;
    let log = sim.connections();
    assert_eq!(log.len(), 2, "nothing reconnected");
    assert_eq!(log[0].path, "/api/v1/streaming/public");
    assert!(log[0].closed_at.is_some());
    assert_eq!(log[1].path, "/api/v1/streaming/user");
    let rows = running.stats.snapshots();
    assert_eq!(rows.iter().filter(|r| r.carries.streams == ["user"]).count(), 1, "{rows:?}");
    stop_service(&running).await;
}
