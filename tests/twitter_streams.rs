//! Whole-service tests over real loopback sockets against the simulator:
//! classification of every Twitter kind, framing split at every offset,
//! the reconnect schedules of SPEC 5, stalls, disconnect codes, malformed
//! and oversized messages, and OAuth verification.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use streamherd_actors::connection::stats::ConnectionState;
use streamherd_actors::metrics::{Metrics, SourceCauseLabels};
use streamherd_sim::{AttemptScript, Mix, Scenario, SimHandle, Split};

const T: Duration = Duration::from_secs(20);

fn sink_events(running: &streamherd::app::Running) -> u64 {
    running.metrics.sink_events_total.get_or_create(&Metrics::sink("archive")).get()
}

fn reconnects(running: &streamherd::app::Running, cause: &str) -> u64 {
    running
        .metrics
        .reconnects_total
        .get_or_create(&SourceCauseLabels { source: "src".into(), cause: cause.into() })
        .get()
}

fn attempts(sim: &SimHandle) -> usize {
    sim.connections().len()
}

fn state(running: &streamherd::app::Running) -> ConnectionState {
    running.stats.snapshots().first().map(|s| s.state).unwrap_or(ConnectionState::Connecting)
}

/// Every message the simulator sent on attempt 0 (junk excluded) must come
/// out, in order, with the right kind, id and for_user, payload byte for byte.
fn assert_matches_sent(sim: &SimHandle, envs: &[Envelope], attempt: u64) -> usize {
    let sent: Vec<_> = sim
        .sent()
        .into_iter()
        .filter(|m| m.attempt == attempt && m.kind != "malformed" && m.kind != "oversized")
        .collect();
    let got: Vec<_> = envs.iter().filter(|e| e.connection == "src/0").collect();
    let n = sent.len().min(got.len());
    assert!(n > 0, "nothing to compare");
    for (i, (s, e)) in sent.iter().zip(got.iter()).enumerate() {
        assert_eq!(e.kind, s.kind, "message {i}: {}", e.line);
        assert_eq!(e.id, s.id, "message {i} id: {}", e.line);
        assert_eq!(e.for_user, s.for_user, "message {i} for_user");
        assert_eq!(e.payload.as_bytes(), &s.payload[..], "message {i} payload bytes");
        assert_eq!(e.source, "src");
    }
    n
}

async fn classify_endpoint(kind: &str, extra: &str) {
    let scenario = Scenario { then: AttemptScript { mix: Mix::Catalog, ..Default::default() }, ..Default::default() };
    let sim = start_sim(scenario, 0, 1000).await;
    let cfg = one_source(&sim, kind, extra);
    let running = start_service(&cfg).await;
    wait_for(T, "catalog messages", || sink_events(&running) >= 60).await;
    stop_service(&running).await;
    let envs = read_envelopes(&cfg.data());
    let n = assert_matches_sent(&sim, &envs, 0);
    let kinds: std::collections::BTreeSet<_> = envs.iter().map(|e| e.kind.as_str()).collect();
    for k in ["tweet", "delete", "scrub_geo", "limit", "status_withheld", "user_withheld", "warning", "unknown"] {
        assert!(kinds.contains(k), "{kind}: kind {k} never seen in {kinds:?}");
    }
    if kind != "twitter.filter" {
        for k in ["friends", "event", "direct_message"] {
            assert!(kinds.contains(k), "{kind}: kind {k} never seen in {kinds:?}");
        }
    }
    if kind == "twitter.site" {
        assert!(kinds.contains("control"), "site: no control message");
        // Per-user messages arrive in for_user envelopes; stream-wide ones (control, stall warnings) do not.
        let per_user = ["tweet", "friends", "event", "direct_message", "delete"];
        assert!(envs.iter().filter(|e| per_user.contains(&e.kind.as_str())).all(|e| e.for_user.is_some()));
        assert!(envs.iter().filter(|e| e.kind == "control").all(|e| e.for_user.is_none()));
    }
    assert!(n >= 60, "compared {n}");
    sim.stop().await;
}

#[actix_rt::test]
async fn every_filter_kind_is_classified() {
    classify_endpoint("twitter.filter", r#"track = ["rust"]"#).await;
}

#[actix_rt::test]
async fn every_user_stream_kind_is_classified() {
    classify_endpoint("twitter.user", r#"with = "followings""#).await;
}

#[actix_rt::test]
async fn every_site_stream_kind_is_classified_with_for_user() {
    classify_endpoint("twitter.site", "follow = [11, 22, 33]\nfollow_limit = 100").await;
}

async fn sweep(delimited: &str) {
    let script = AttemptScript { mix: Mix::Fixed, split: Split::Sweep, limit: Some(6000), ..Default::default() };
    let scenario = Scenario { attempts: vec![script], then: AttemptScript { status: Some(503), ..Default::default() } };
    let sim = start_sim(scenario, 0, 1000).await;
    let cfg = one_source(&sim, "twitter.filter", &format!("track = [\"rust\"]\ndelimited = \"{delimited}\""));
    let running = start_service(&cfg).await;
    wait_for(T, "6000 messages", || sink_events(&running) >= 6000).await;
    stop_service(&running).await;
    let sent = sim.sent();
    let frame_len = sent[0].payload.len() + 2;
    assert!(sent.iter().all(|m| m.payload.len() == sent[0].payload.len()), "fixed mix keeps one length");
    assert!(6000 >= frame_len, "6000 frames cover every offset of a {frame_len}-byte frame");
    let envs = read_envelopes(&cfg.data());
    assert_eq!(envs.len(), 6000);
    assert_eq!(assert_matches_sent(&sim, &envs, 0), 6000);
    sim.stop().await;
}

#[actix_rt::test]
async fn crlf_framing_survives_a_split_at_every_offset() {
    sweep("none").await;
}

#[actix_rt::test]
async fn length_framing_survives_a_split_at_every_offset() {
    sweep("length").await;
}

#[actix_rt::test]
async fn random_splits_inside_utf8_lose_nothing() {
    let script = AttemptScript { split: Split::Random, limit: Some(3000), ..Default::default() };
    let scenario = Scenario { attempts: vec![script], then: AttemptScript { status: Some(503), ..Default::default() } };
    let sim = start_sim(scenario, 0, 1000).await;
    let cfg = one_source(&sim, "twitter.filter", "track = [\"rust\"]\ndelimited = \"length\"");
    let running = start_service(&cfg).await;
    wait_for(T, "3000 messages", || sink_events(&running) >= 3000).await;
    stop_service(&running).await;
    assert_eq!(assert_matches_sent(&sim, &read_envelopes(&cfg.data()), 0), 3000);
    sim.stop().await;
}

fn assert_waits(sim: &SimHandle, expected_ms: &[u64]) {
    let waits = waits_between_attempts(sim);
    assert!(waits.len() >= expected_ms.len(), "waits {waits:?}");
    for (i, (w, e)) in waits.iter().zip(expected_ms).enumerate() {
        let e = Duration::from_millis(*e);
        // A timer never fires early; the upper bound leaves room for a busy CI machine.
        assert!(*w + Duration::from_millis(3) >= e, "wait {i} was {w:?}, expected {e:?} ({waits:?})");
        assert!(*w < e + Duration::from_millis(400), "wait {i} was {w:?}, expected {e:?} ({waits:?})");
    }
}

#[actix_rt::test]
async fn http_503_backs_off_doubling_then_streams() {
    let s503 = AttemptScript { status: Some(503), ..Default::default() };
    let scenario = Scenario { attempts: vec![s503.clone(), s503], then: AttemptScript::default() };
    let sim = start_sim(scenario, 0, 1000).await;
    let cfg = one_source(&sim, "twitter.filter", "track = [\"rust\"]");
    let running = start_service(&cfg).await;
    wait_for(T, "events after two 503s", || sink_events(&running) >= 50).await;
    stop_service(&running).await;
    let log = sim.connections();
    assert_eq!(log[0].status, 503);
    assert_eq!(log[1].status, 503);
    assert_eq!(log[2].status, 200);
    // http_initial_ms = 50: 50 ms, then 100 ms.
    assert_waits(&sim, &[50, 100]);
    let reconnects = reconnects(&running, "http");
    assert_eq!(reconnects, 2);
    sim.stop().await;
}

#[actix_rt::test]
async fn http_420_uses_the_rate_limit_schedule() {
    let s420 = AttemptScript { status: Some(420), ..Default::default() };
    let scenario = Scenario { attempts: vec![s420.clone(), s420.clone(), s420], then: AttemptScript::default() };
    let sim = start_sim(scenario, 0, 1000).await;
    let cfg = one_source(&sim, "twitter.filter", "track = [\"rust\"]");
    let running = start_service(&cfg).await;
    wait_for(T, "events after three 420s", || sink_events(&running) >= 10).await;
    stop_service(&running).await;
    // rate_limit_initial_ms = 80: 80, 160, 320 ms.
    assert_waits(&sim, &[80, 160, 320]);
    sim.stop().await;
}

#[actix_rt::test]
async fn tcp_reset_uses_the_linear_schedule() {
    let reset = AttemptScript { close_after: Some(3), reset: true, ..Default::default() };
    let scenario =
        Scenario { attempts: vec![reset.clone(), reset.clone(), reset.clone(), reset], then: AttemptScript::default() };
    let sim = start_sim(scenario, 0, 1000).await;
    let cfg = one_source(&sim, "twitter.filter", "track = [\"rust\"]");
    let running = start_service(&cfg).await;
    wait_for(T, "the fifth attempt to stream", || attempts(&sim) >= 5 && sink_events(&running) >= 30).await;
    stop_service(&running).await;
    let log = sim.connections();
    assert!(log[..4].iter().all(|c| c.end == "reset"), "{log:?}");
    // network_initial_ms = 20: 20, 40, 60, 80 ms.
    assert_waits(&sim, &[20, 40, 60, 80]);
    let network = reconnects(&running, "network");
    assert_eq!(network, 4, "a reset is a network error");
    sim.stop().await;
}

async fn assert_fatal_status(status: u16, body_part: &str) {
    let scenario =
        Scenario { then: AttemptScript { status: Some(status), ..Default::default() }, ..Default::default() };
    let sim = start_sim(scenario, 0, 1000).await;
    let cfg = one_source(&sim, "twitter.filter", "track = [\"rust\"]");
    let running = start_service(&cfg).await;
    wait_for(T, "the connection to fail", || state(&running) == ConnectionState::Failed).await;
    // Ten network steps: a retry would have happened by now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(attempts(&sim), 1, "no second attempt after {status}");
    let snap = &running.stats.snapshots()[0];
    let err = snap.last_error.clone().unwrap_or_default();
    assert!(err.contains(&format!("HTTP {status}")) && err.contains(body_part), "{err}");
    stop_service(&running).await;
    sim.stop().await;
}

#[actix_rt::test]
async fn http_401_fails_without_retry() {
    assert_fatal_status(401, "Could not authenticate you").await;
}

#[actix_rt::test]
async fn http_406_fails_without_retry() {
    assert_fatal_status(406, "Parameter").await;
}

#[actix_rt::test]
async fn silence_past_the_stall_timeout_reconnects() {
    let silent = AttemptScript { silence_after: Some(5), silence_ms: 5_000, ..Default::default() };
    let scenario = Scenario { attempts: vec![silent], then: AttemptScript::default() };
    let sim = start_sim(scenario, 0, 1000).await;
    let cfg = one_source(&sim, "twitter.filter", "track = [\"rust\"]\nstall_timeout_s = 0.3");
    let running = start_service(&cfg).await;
    wait_for(T, "a second attempt", || attempts(&sim) >= 2).await;
    wait_for(T, "events on the second attempt", || sink_events(&running) >= 20).await;
    stop_service(&running).await;
    let log = sim.connections();
    let gap = log[1].opened_at - log[0].opened_at;
    assert!(gap >= Duration::from_millis(300), "reconnected after {gap:?}, before the stall timeout");
    assert!(gap < Duration::from_millis(1500), "stall noticed too late: {gap:?}");
    let stalls = reconnects(&running, "stall");
    assert_eq!(stalls, 1);
    sim.stop().await;
}

#[actix_rt::test]
async fn keepalives_prevent_a_stall() {
    // 40 ms keep-alives, 300 ms stall timeout, no messages for a second:
    let quiet = AttemptScript { silence_after: Some(1), silence_ms: 0, ..Default::default() };
    let scenario = Scenario { attempts: vec![], then: quiet };
    let sim = start_sim(scenario, 1, 40).await;
    let cfg = one_source(&sim, "twitter.filter", "track = [\"rust\"]\nstall_timeout_s = 0.3");
    let running = start_service(&cfg).await;
    wait_for(T, "connected", || state(&running) == ConnectionState::Connected).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(attempts(&sim), 1, "keep-alives count as bytes");
    stop_service(&running).await;
    sim.stop().await;
}

#[actix_rt::test]
async fn disconnect_codes_follow_the_catalogue() {
    let mut outcomes = HashMap::new();
    for code in 1..=12u32 {
        let script = AttemptScript { disconnect_after: Some(2), disconnect_code: code, ..Default::default() };
        let scenario = Scenario { attempts: vec![script], then: AttemptScript::default() };
        let sim = start_sim(scenario, 0, 1000).await;
        let cfg = one_source(&sim, "twitter.filter", "track = [\"rust\"]");
        let running = start_service(&cfg).await;
        wait_for(T, "the disconnect to be handled", || {
            attempts(&sim) >= 2 || matches!(state(&running), ConnectionState::Failed | ConnectionState::Stopped)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let outcome = match (attempts(&sim), state(&running)) {
            (1, ConnectionState::Failed) => "failed",
            (1, ConnectionState::Stopped) => "finished",
            (n, _) if n >= 2 => "reconnected",
            other => panic!("code {code}: unexpected {other:?}"),
        };
        outcomes.insert(code, outcome);
        // The disconnect message itself is an event.
        stop_service(&running).await;
        let envs = read_envelopes(&cfg.data());
        assert!(envs.iter().any(|e| e.kind == "disconnect"), "code {code}: disconnect event written");
        sim.stop().await;
    }
    for code in [1, 3, 4, 5, 8, 10, 11, 12] {
        assert_eq!(outcomes[&code], "reconnected", "code {code}");
    }
    for code in [2, 6, 7] {
        assert_eq!(outcomes[&code], "failed", "code {code}");
    }
    assert_eq!(outcomes[&9], "finished");
}

#[actix_rt::test]
async fn malformed_lines_are_counted_and_skipped() {
    let script = AttemptScript { malformed_every: Some(10), limit: Some(200), ..Default::default() };
    let scenario = Scenario { attempts: vec![script], then: AttemptScript { status: Some(503), ..Default::default() } };
    let sim = start_sim(scenario, 0, 1000).await;
    let cfg = one_source(&sim, "twitter.filter", "track = [\"rust\"]");
    let running = start_service(&cfg).await;
    wait_for(T, "180 good messages", || sink_events(&running) >= 180).await;
    stop_service(&running).await;
    let malformed = sim.sent().iter().filter(|m| m.kind == "malformed").count() as u64;
    assert_eq!(malformed, 20);
    assert_eq!(running.metrics.malformed_total.get_or_create(&Metrics::source("src")).get(), malformed);
    assert_eq!(assert_matches_sent(&sim, &read_envelopes(&cfg.data()), 0), 180);
    assert_eq!(sim.connections()[0].end, "limit", "the stream went on past the junk");
    sim.stop().await;
}

#[actix_rt::test]
async fn an_oversized_message_is_dropped_and_the_stream_goes_on() {
    let script =
        AttemptScript { oversized_at: vec![3], oversized_bytes: 3 << 20, limit: Some(50), ..Default::default() };
    let scenario = Scenario { attempts: vec![script], then: AttemptScript { status: Some(503), ..Default::default() } };
    let sim = start_sim(scenario, 0, 1000).await;
    let cfg = one_source(&sim, "twitter.filter", "track = [\"rust\"]\ndelimited = \"length\"");
    std::fs::write(
        &cfg.path,
        std::fs::read_to_string(&cfg.path)
            .unwrap()
            .replace("stats_interval_s = 0", "stats_interval_s = 0\nmax_message_bytes = 1048576"),
    )
    .unwrap();
    let running = start_service(&cfg).await;
    wait_for(T, "49 messages", || sink_events(&running) >= 49).await;
    stop_service(&running).await;
    assert_eq!(running.metrics.oversized_total.get_or_create(&Metrics::source("src")).get(), 1);
    assert_eq!(assert_matches_sent(&sim, &read_envelopes(&cfg.data()), 0), 49);
    assert_eq!(sim.connections()[0].end, "limit");
    sim.stop().await;
}

#[actix_rt::test]
async fn an_endless_line_is_counted_as_oversized_and_the_stream_reconnected() {
    // After 5 messages the body turns into one line without end.
    let endless = AttemptScript { endless_after: Some(5), ..Default::default() };
    let scenario = Scenario { attempts: vec![endless], then: AttemptScript { limit: Some(5), ..Default::default() } };
    let sim = start_sim(scenario, 0, 1000).await;
    let cfg = one_source(&sim, "twitter.filter", "track = [\"rust\"]");
    std::fs::write(
        &cfg.path,
        std::fs::read_to_string(&cfg.path)
            .unwrap()
            .replace("stats_interval_s = 0", "stats_interval_s = 0\nmax_message_bytes = 1048576"),
    )
    .unwrap();
    let running = start_service(&cfg).await;
    wait_for(T, "the second connection's 5 messages", || sink_events(&running) >= 10).await;
    stop_service(&running).await;
    assert_eq!(running.metrics.oversized_total.get_or_create(&Metrics::source("src")).get(), 1);
    let conns = sim.connections();
    assert!(conns.len() >= 2, "reconnected after the endless line: {conns:?}");
    let first = &conns[0];
    // streamherd hung up soon after the line passed 1 MiB, not after the
    // simulator's 1 GiB cap.
    assert_ne!(first.end, "endless", "{first:?}");
    let envs = read_envelopes(&cfg.data());
    assert_eq!(envs.iter().filter(|e| e.kind != "gap").count(), 10, "5 before, 5 after");
    assert_eq!(envs.iter().filter(|e| e.kind == "gap").count(), 1, "the reconnect is a gap");
    sim.stop().await;
}

#[actix_rt::test]
async fn our_signature_verifies_and_a_wrong_secret_is_refused() {
    let sim = start_sim(Scenario::default(), 0, 1000).await;
    let cfg = one_source(
        &sim,
        "twitter.filter",
        "track = [\"rust\"]\nfollow = [1, 2]\nlocations = [\"-122.75,36.8,-121.75,37.8\"]",
    );
    let running = start_service(&cfg).await;
    wait_for(T, "events", || sink_events(&running) >= 5).await;
    stop_service(&running).await;
    let first = &sim.connections()[0];
    assert!(first.auth_ok && first.status == 200, "{first:?}");
    assert_eq!(first.method, "POST");
    assert_eq!(first.params.get("track").map(String::as_str), Some("rust"));
    assert_eq!(first.params.get("follow").map(String::as_str), Some("1,2"));
    assert_eq!(first.params.get("locations").map(String::as_str), Some("-122.75,36.8,-121.75,37.8"));
    sim.stop().await;

    let sim = start_sim(Scenario::default(), 0, 1000).await;
    let cfg = one_source(&sim, "twitter.filter", "track = [\"rust\"]");
    let wrong = std::fs::read_to_string(&cfg.path).unwrap().replace("demo-token-secret", "not-the-secret");
    std::fs::write(&cfg.path, wrong).unwrap();
    let running = start_service(&cfg).await;
    wait_for(T, "the connection to fail", || state(&running) == ConnectionState::Failed).await;
    let first = &sim.connections()[0];
    assert!(!first.auth_ok && first.status == 401, "{first:?}");
    assert_eq!(attempts(&sim), 1);
    stop_service(&running).await;
    sim.stop().await;
}

#[actix_rt::test]
async fn a_supervised_stream_actor_is_restarted_after_the_backoff_wait() {
    let close = AttemptScript { close_after: Some(5), ..Default::default() };
    let scenario = Scenario { attempts: vec![close.clone(), close], then: AttemptScript::default() };
    let sim = start_sim(scenario, 0, 1000).await;
    let cfg = one_source(&sim, "twitter.filter", "track = [\"rust\"]");
    let running = start_service(&cfg).await;
    wait_for(T, "the third attempt", || attempts(&sim) >= 3 && sink_events(&running) >= 20).await;
    // The actor's `restarting` hook counted each restart by actix supervision.
    assert_eq!(running.stats.snapshots()[0].reconnects, 2);
    stop_service(&running).await;
    // EOF mid-stream is a network-class cause: 20 ms, then 40 ms.
    assert_waits(&sim, &[20, 40]);
    sim.stop().await;
}

#[actix_rt::test]
async fn envelope_lines_follow_the_spec_field_by_field() {
    let scenario = Scenario { then: AttemptScript { mix: Mix::Catalog, ..Default::default() }, ..Default::default() };
    let sim = start_sim(scenario, 0, 1000).await;
    let cfg = one_source(&sim, "twitter.filter", "track = [\"rust\"]");
    let running = start_service(&cfg).await;
    wait_for(T, "events", || sink_events(&running) >= 20).await;
    stop_service(&running).await;
    let envs = read_envelopes(&cfg.data());
    for e in &envs {
        // Field order of SPEC 4, payload last and raw.
        let order = [
            "\"source\":",
            "\"kind\":",
            "\"id\":",
            "\"received_at\":",
            "\"connection\":",
            "\"for_user\":",
            "\"stream\":",
            "\"payload\":",
        ];
        let head = &e.line[..e.line.len() - e.payload.len()];
        let at: Vec<usize> =
            order.iter().map(|k| head.find(k).unwrap_or_else(|| panic!("{k} missing: {head}"))).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "field order: {head}");
        assert!(e.line.starts_with("{\"source\":\"src\",\"kind\":"), "{head}");
        assert!(e.line.ends_with(&format!("\"payload\":{}}}", e.payload)));
        assert_eq!(e.connection, "src/0");
        assert_eq!(e.stream, None);
        assert_eq!(e.for_user, None);
        // 2026-11-22T10:00:00.123456Z
        let ts = &e.received_at;
        assert_eq!(ts.len(), 27, "{ts}");
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z'), "{ts}");
    }
    sim.stop().await;
}

/// A filter stream served from a plain socket: `lines` delimited by CRLF
/// in one chunked body, then the connection stays open until the test ends.
fn serve_lines_once(lines: Vec<String>) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else { return };
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
            line.clear();
        }
        let body: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        let _ = write!(stream, "{head}{:x}\r\n{body}\r\n", body.len());
        let _ = stream.flush();
        // Held open: the stream neither ends nor reconnects while the test reads.
        let _ = reader.read_line(&mut line);
    });
    port
}

#[actix_rt::test]
async fn notices_that_repeat_user_ids_are_each_written_once() {
    // 2,000 notices about three users, some repeated byte for byte: with no
    // handover in progress nothing may be taken for a duplicate.
    let lines: Vec<String> = (0..2000u64)
        .map(|i| {
            let user = i % 3;
            match (i / 2) % 5 {
                0 => format!(r#"{{"user_withheld":{{"id":{user},"withheld_in_countries":["DE"]}}}}"#),
                1 => format!(r#"{{"scrub_geo":{{"user_id":{user},"user_id_str":"{user}","up_to_status_id":{i}}}}}"#),
                2 => format!(r#"{{"status_withheld":{{"id":{i},"user_id":{user},"withheld_in_countries":["FR"]}}}}"#),
                3 => format!(r#"{{"limit":{{"track":{}}}}}"#, i / 10),
                _ => r#"{"warning":{"code":"FALLING_BEHIND","message":"behind","percent_full":60}}"#.to_string(),
            }
        })
        .collect();
    let port = serve_lines_once(lines.clone());
    let cfg = Conf::new()
        .source(
            "src",
            "twitter.filter",
            &format!("base_url = \"http://127.0.0.1:{port}\"\ntrack = [\"x\"]\n{DEMO_AUTH}"),
        )
        .file_sink("")
        .write();
    let running = start_service(&cfg).await;
    wait_for(T, "2000 notices written", || sink_events(&running) >= 2000).await;
    stop_service(&running).await;
    let envs = read_envelopes(&cfg.data());
    let payloads: Vec<&str> = envs.iter().map(|e| e.payload.as_str()).collect();
    assert_eq!(payloads.len(), 2000, "every notice once");
    assert_eq!(payloads, lines, "in the order sent, bytes untouched");
    let kinds: std::collections::BTreeSet<&str> = envs.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["limit", "scrub_geo", "status_withheld", "user_withheld", "warning"].into());
    let dups = running.metrics.duplicates_dropped_total.get_or_create(&Metrics::source("src")).get();
    assert_eq!(dups, 0);
}

/// One attempt budget per host: two site sources of 50 shards each start
/// together against one host; the simulator's log never shows more than
/// `max_connects_per_s` attempts in any second, though each source alone
/// would be allowed that many.
#[actix_rt::test]
async fn sources_on_one_host_share_its_attempt_budget() {
    const PER_S: usize = 40;
    // A trickle of messages: at full speed 100 connections would fill the
    // sink and the graceful stop would first drain the spill.
    let sim = start_sim(Scenario::default(), 2, 1000).await;
    let ids = |from: u64| (from..from + 5_000).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let cfg = Conf::new()
        .backoff(Some(&FAST_BACKOFF.replace("max_connects_per_s = 1000", &format!("max_connects_per_s = {PER_S}"))))
        .twitter("a", "twitter.site", &sim, &format!("follow = [{}]\nfollow_limit = 100", ids(1)))
        .twitter("b", "twitter.site", &sim, &format!("follow = [{}]\nfollow_limit = 100", ids(100_001)))
        .file_sink("")
        .write();
    let running = start_service(&cfg).await;
    let site = || sim.connections().into_iter().filter(|c| c.path.ends_with("site.json")).collect::<Vec<_>>();
    wait_for(T, "100 site connections opened", || site().len() >= 100).await;
    let at: Vec<std::time::Instant> = site().iter().map(|c| c.opened_at).collect();
    let (busiest, spread) = busiest_second(&at);
    eprintln!("100 site attempts over {spread:?}; the busiest second held {busiest} (budget {PER_S}/s for the host)");
    // Two budgets of their own let 81 through in one second.
    assert!(busiest <= PER_S, "{busiest} attempts in one second, budget {PER_S}");
    assert!(spread >= Duration::from_millis(2_400), "100 attempts at {PER_S}/s take at least 2.4 s: {spread:?}");
    stop_service(&running).await;
}
