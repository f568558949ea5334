//! Bluesky Jetstream end to end, against the simulator over loopback: every
//! kind classified with its id and the request carrying the filters; a drop
//! resumed from the acknowledged cursor minus the rewind, written once with
//! one complete gap; a graceful restart and a SIGKILL resumed from
//! cursor.json with nothing lost; 25,000 DIDs sharded over 3 disjoint
//! connections, changed live with `options_update` only where needed;
//! failover to the second host with the same cursor; the reconnect rules of
//! a refused upgrade, a stall, pings, compressed frames, and `check`'s plan.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use streamherd_actors::connection::stats::ConnectionState;
use streamherd_actors::metrics::Metrics;
use streamherd_sim::{AttemptScript, JetstreamConnInfo, Scenario, SimHandle};

const BIN: &str = env!("CARGO_BIN_EXE_streamherd");
const T: Duration = Duration::from_secs(30);
/// The rewind the tests configure, in microseconds.
const REWIND_US: u64 = 2_000_000;

/// A host that serves 20 events once, then answers every attempt with 503.
async fn failing_host() -> SimHandle {
    let scenario = Scenario {
        attempts: vec![AttemptScript { close_after: Some(20), ..Default::default() }],
        then: AttemptScript { status: Some(503), ..Default::default() },
    };
    start_sim(scenario, 0, 1000).await
}

fn dids(sim: &SimHandle, n: usize) -> Vec<String> {
    (0..n).map(|i| sim.jetstream_did(i)).collect()
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// A Jetstream source `bsky` against `hosts`, with `extra` keys.
fn jetstream(conf: Conf, hosts: &[&SimHandle], extra: &str) -> Conf {
    let urls: Vec<String> = hosts.iter().map(|s| format!("ws://{}", s.addr())).collect();
    conf.source(
        "bsky",
        "bluesky.jetstream",
        &format!("base_url = {}\ncursor_rewind_s = {}\n{extra}", toml_list(&urls), REWIND_US as f64 / 1e6),
    )
}

fn sink_events(running: &streamherd::app::Running) -> u64 {
    running.metrics.sink_events_total.get_or_create(&Metrics::sink("archive")).get()
}

fn connected(running: &streamherd::app::Running) -> usize {
    running.stats.snapshots().iter().filter(|s| s.state == ConnectionState::Connected).count()
}

fn events(envs: &[Envelope]) -> Vec<&Envelope> {
    envs.iter().filter(|e| e.kind != "gap").collect()
}

fn gaps(envs: &[Envelope]) -> Vec<serde_json::Value> {
    envs.iter().filter(|e| e.kind == "gap").map(|e| serde_json::from_str(&e.payload).unwrap()).collect()
}

fn time_us(e: &Envelope) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
    v["time_us"].as_u64().expect("time_us")
}

fn open_on(sim: &SimHandle) -> Vec<JetstreamConnInfo> {
    sim.jetstream_connections().into_iter().filter(|c| c.closed_at.is_none() && c.status == 101).collect()
}

/// Every payload written, checked against what the simulator sent: each
/// exactly once, with its kind and id.
fn assert_once(envs: &[Envelope], sent: &[streamherd_sim::JetstreamEvent]) {
    let written: Vec<&str> = events(envs).iter().map(|e| e.payload.as_str()).collect();
    let distinct: BTreeSet<&str> = written.iter().copied().collect();
    assert_eq!(distinct.len(), written.len(), "an event was written twice");
    let expected: BTreeSet<&str> = sent.iter().map(|e| std::str::from_utf8(&e.json).unwrap()).collect();
    let missing: Vec<&&str> = expected.difference(&distinct).collect();
    let extra: Vec<&&str> = distinct.difference(&expected).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}\nnot sent {extra:?}");
}

#[actix_rt::test]
async fn every_kind_is_classified_with_its_id_and_the_request_carries_the_filters() {
    let sim = start_sim(Scenario::default(), 0, 1000).await;
    let wanted = dids(&sim, 4);
    let extra = format!(
        "wanted_collections = [\"app.bsky.feed.post\", \"app.bsky.graph.*\", \"app.bsky.feed.like\"]\nwanted_dids = {}",
        toml_list(&wanted)
    );
    let cfg = jetstream(Conf::new(), &[&sim], &extra).file_sink("").write();
    let running = start_service(&cfg).await;
    wait_for(T, "connected", || connected(&running) == 1).await;
    // Other DIDs' events never reach this connection.
    sim.jetstream_publish(&dids(&sim, 20)[4..], 40);
    let mut sent = sim.jetstream_publish(&wanted, 120);
    sent.push(sim.jetstream_publish_unknown(&wanted[0]));
    let delivered = || open_on(&sim).first().map_or(0, |c| c.events_sent);
    wait_for(T, "the simulator sent the matching events", || delivered() > 0 && sink_events(&running) >= delivered())
        .await;
    let sent_count = delivered();
    stop_service(&running).await;

    let conn = &sim.jetstream_connections()[0];
    let query: BTreeMap<&str, Vec<&str>> = conn.query.iter().fold(BTreeMap::new(), |mut m, (k, v)| {
        m.entry(k.as_str()).or_default().push(v.as_str());
        m
    });
    assert_eq!(query["wantedCollections"], ["app.bsky.feed.post", "app.bsky.graph.*", "app.bsky.feed.like"]);
    let mut asked = query["wantedDids"].clone();
    asked.sort_unstable();
    let mut want: Vec<&str> = wanted.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(asked, want);
    assert!(!query.contains_key("cursor"), "a first start reads the live tail");
    let state = std::fs::read_to_string(cfg.dir.path().join("state/bsky/cursor.json")).unwrap();
    assert!(state.contains("cursor_us"), "the start is kept before anything is written: {state}");

    let envs = read_envelopes(&cfg.data());
    let evs = events(&envs);
    assert_eq!(evs.len() as u64, sent_count);
    let by_payload: BTreeMap<&str, &streamherd_sim::JetstreamEvent> =
        sent.iter().map(|e| (std::str::from_utf8(&e.json).unwrap(), e)).collect();
    let mut kinds = BTreeSet::new();
    for e in &evs {
        let s = by_payload.get(e.payload.as_str()).unwrap_or_else(|| panic!("not sent, or altered: {}", e.line));
        let kind =
            if ["commit", "identity", "account"].contains(&s.kind.as_str()) { s.kind.as_str() } else { "unknown" };
        assert_eq!(e.kind, kind, "{}", e.line);
        assert_eq!(e.id, s.id(), "{}", e.line);
        assert_eq!(e.stream, None);
        kinds.insert(e.kind.clone());
        assert!(wanted.contains(&s.did), "an event of a DID not asked for: {}", e.line);
    }
    assert_eq!(kinds, ["account", "commit", "identity", "unknown"].map(String::from).into(), "every kind seen");
    assert!(gaps(&envs).is_empty());
}

#[actix_rt::test]
async fn a_drop_resumes_from_the_acknowledged_cursor_and_writes_each_event_once_with_one_complete_gap() {
    // Attempt 0 sends 51 events and breaks off without a close frame.
    let scenario = Scenario {
        attempts: vec![AttemptScript { close_after: Some(51), ..Default::default() }],
        ..Default::default()
    };
    let sim = start_sim(scenario, 0, 1000).await;
    let wanted = dids(&sim, 10);
    let cfg = jetstream(Conf::new(), &[&sim], &format!("wanted_dids = {}", toml_list(&wanted))).file_sink("").write();
    let running = start_service(&cfg).await;
    wait_for(T, "connected", || connected(&running) == 1).await;
    let mut sent = sim.jetstream_publish(&wanted, 50);
    wait_for(T, "50 written", || sink_events(&running) >= 50).await;
    // The 51st event goes out, then the connection breaks.
    sent.extend(sim.jetstream_publish(&wanted, 1));
    wait_for(T, "the reconnect", || sim.jetstream_connections().len() >= 2 && open_on(&sim).len() == 1).await;
    sent.extend(sim.jetstream_publish(&wanted, 49));
    wait_for(T, "100 written and a gap", || sink_events(&running) >= 101).await;
    stop_service(&running).await;

    let log = sim.jetstream_connections();
    let cursor = log[1].cursor.expect("the reconnect carries a cursor") as u64;
    let t50 = sent[49].time_us;
    let t51 = sent[50].time_us;
    assert!(
        cursor + REWIND_US == t50 || cursor + REWIND_US == t51,
        "cursor {cursor} is not the last acknowledged time_us ({t50} or {t51}) minus the rewind"
    );
    let envs = read_envelopes(&cfg.data());
    assert_once(&envs, &sent);
    let g = gaps(&envs);
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!(g[0]["reason"], "reconnect");
    assert_eq!(g[0]["complete"], true, "the replay reached back to written events: {}", g[0]);
    assert_eq!(g[0]["cursor"].as_u64(), Some(cursor));
    assert!(g[0]["replayed"].as_u64().unwrap() >= 50, "{}", g[0]);
    // The gap sits between the last event before the drop and the first after.
    let pos = envs.iter().position(|e| e.kind == "gap").unwrap();
    assert!(time_us(&envs[pos - 1]) <= t51 && time_us(&envs[pos + 1]) > t51);
    let from = chrono::DateTime::parse_from_rfc3339(g[0]["from"].as_str().unwrap()).unwrap();
    let to = chrono::DateTime::parse_from_rfc3339(g[0]["to"].as_str().unwrap()).unwrap();
    assert!(from <= to);
    assert_eq!(running.metrics.gaps_total.get_or_create(&Metrics::source("bsky")).get(), 1);
}

#[actix_rt::test]
async fn a_graceful_restart_resumes_from_cursor_json_with_nothing_lost_or_doubled() {
    let sim = start_sim(Scenario::default(), 0, 1000).await;
    let wanted = dids(&sim, 10);
    let cfg = jetstream(Conf::new(), &[&sim], &format!("wanted_dids = {}", toml_list(&wanted))).file_sink("").write();
    let running = start_service(&cfg).await;
    wait_for(T, "connected", || connected(&running) == 1).await;
    let mut sent = sim.jetstream_publish(&wanted, 30);
    wait_for(T, "30 written", || sink_events(&running) >= 30).await;
    stop_service(&running).await;
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cfg.dir.path().join("state/bsky/cursor.json")).unwrap()).unwrap();
    let stored = state["connections"]["0"]["cursor_us"].as_u64().expect("a stored cursor");
    assert_eq!(stored, sent[29].time_us, "the cursor is the newest written time_us: {state}");

    sent.extend(sim.jetstream_publish(&wanted, 40));
    let running = start_service(&cfg).await;
    wait_for(T, "the 40 published while stopped", || sink_events(&running) >= 41).await;
    stop_service(&running).await;

    let log = sim.jetstream_connections();
    assert_eq!(log[1].cursor, Some((stored - REWIND_US) as i64), "resumed from cursor.json minus the rewind");
    let envs = read_envelopes(&cfg.data());
    assert_once(&envs, &sent);
    let g = gaps(&envs);
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!(g[0]["reason"], "restart");
    assert_eq!(g[0]["complete"], true, "{}", g[0]);
}

async fn metric(port: u16, family: &str, filter: &str) -> f64 {
    let client = awc::Client::builder().timeout(Duration::from_secs(5)).finish();
    let Ok(mut resp) = client.get(format!("http://127.0.0.1:{port}/metrics")).send().await else { return 0.0 };
    let body = resp.body().limit(16 << 20).await.unwrap_or_default();
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[actix_rt::test]
async fn after_sigkill_nothing_is_lost() {
    let sim = start_sim(Scenario::default(), 0, 1000).await;
    let wanted = dids(&sim, 10);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    jetstream(Conf::new(), &[&sim], &format!("wanted_dids = {}", toml_list(&wanted)))
        .file_sink("")
        .table(&format!("[control]\nlisten = \"127.0.0.1:{port}\""))
        .write_to(dir.path());
    let run = |log: &str| {
        let log = File::create(dir.path().join(log)).unwrap();
        spawn(command(BIN, &[], dir.path()).stdout(Stdio::null()).stderr(log))
    };
    let mut child = run("first.log");
    let start = std::time::Instant::now();
    while open_on(&sim).is_empty() {
        assert!(start.elapsed() < T && child.0.try_wait().unwrap().is_none(), "never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut sent = sim.jetstream_publish(&wanted, 200);
    while metric(port, "streamherd_events_total", "source=\"bsky\"").await < 200.0 {
        assert!(start.elapsed() < T, "200 events not read");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&child.0, libc::SIGKILL);
    let _ = child.0.wait();
    sent.extend(sim.jetstream_publish(&wanted, 100));

    let mut child = run("second.log");
    let data = dir.path().join("data");
    let want: BTreeSet<String> = sent.iter().map(|e| String::from_utf8(e.json.to_vec()).unwrap()).collect();
    let start = std::time::Instant::now();
    loop {
        let have: BTreeSet<String> =
            read_envelopes_so_far(&data).into_iter().filter(|e| e.kind != "gap").map(|e| e.payload).collect();
        if want.is_subset(&have) {
            break;
        }
        assert!(child.0.try_wait().unwrap().is_none(), "streamherd exited early");
        if start.elapsed() > T {
            let log = std::fs::read_to_string(dir.path().join("second.log")).unwrap_or_default();
            panic!("{} of 300 written after the restart; log:\n{log}", want.intersection(&have).count());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&child.0, libc::SIGTERM);
    assert_eq!(wait_exit_blocking(&mut child.0, T), 0);
    let envs = read_envelopes(&data);
    let written = events(&envs);
    let distinct: BTreeSet<&str> = written.iter().map(|e| e.payload.as_str()).collect();
    assert_eq!(distinct.len(), 300, "every event sent, nothing else");
    eprintln!("jetstream sigkill: {} events written for 300 sent ({} duplicates)", written.len(), written.len() - 300);
}

/// POST `path` on the control API (with `body` as JSON when given): the
/// status and the answer.
async fn post_for(port: u16, path: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
    let request =
        awc::Client::builder().timeout(Duration::from_secs(20)).finish().post(format!("http://127.0.0.1:{port}{path}"));
    let mut response = match body {
        Some(body) => request.send_json(&body).await,
        None => request.send().await,
    }
    .unwrap();
    let status = response.status().as_u16();
    let answer: serde_json::Value = serde_json::from_slice(&response.body().limit(1 << 20).await.unwrap()).unwrap();
    (status, answer)
}

/// A follow change, answered 200.
async fn post_follows(port: u16, body: serde_json::Value) -> serde_json::Value {
    let (status, answer) = post_for(port, "/sources/bsky/follows", Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// A bodyless POST (consolidate, update), answered 200 or 202.
async fn post(port: u16, path: &str) -> serde_json::Value {
    let (status, answer) = post_for(port, path, None).await;
    assert!(status == 200 || status == 202, "{status}: {answer}");
    answer
}

#[actix_rt::test]
async fn twenty_five_thousand_dids_open_three_disjoint_connections_changed_live() {
    let sim = start_sim(Scenario::default(), 0, 1000).await;
    let all: Vec<String> = (0..25_100).map(|i| format!("did:plc:{i:024}")).collect();
    let (config_dids, added) = all.split_at(25_000);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dids.txt"), config_dids.join("\n")).unwrap();
    let port = free_port();
    let cfg = jetstream(Conf::new(), &[&sim], &format!("did_file = \"{}/dids.txt\"", dir.path().display()))
        .table(&format!("[control]\nlisten = \"127.0.0.1:{port}\""))
        .file_sink("")
        .write();
    let running = start_service(&cfg).await;
    wait_for(T, "3 connections with their DIDs", || {
        let open = open_on(&sim);
        open.len() == 3 && open.iter().map(|c| c.wanted_dids.len()).sum::<usize>() == 25_000
    })
    .await;
    let open = open_on(&sim);
    assert_eq!(sim.jetstream_connections().len(), 3, "exactly 3 connections opened");
    let mut union = BTreeSet::new();
    for c in &open {
        assert!(c.wanted_dids.len() <= 10_000);
        assert!(c.require_hello, "10,000 DIDs do not fit in a URL: they go in the first options_update");
        for d in &c.wanted_dids {
            assert!(union.insert(d.clone()), "{d} is on two connections");
        }
    }
    assert_eq!(union, config_dids.iter().cloned().collect(), "every DID on exactly one connection");
    let updates_before: usize = open.iter().map(|c| c.options_updates.len()).sum();

    // 100 more DIDs: one options_update on the one connection with room.
    let answer = post_follows(port, serde_json::json!({ "add": added })).await;
    assert_eq!(answer["applied"], "options_update", "{answer}");
    let partial = open.iter().find(|c| c.wanted_dids.len() == 5_000).expect("a connection with room").attempt;
    wait_for(T, "the options_update", || {
        open_on(&sim).iter().find(|c| c.attempt == partial).is_some_and(|c| c.wanted_dids.len() == 5_100)
    })
    .await;
    let after = open_on(&sim);
    assert_eq!(after.iter().map(|c| c.options_updates.len()).sum::<usize>(), updates_before + 1, "one update in all");
    assert_eq!(sim.jetstream_connections().len(), 3, "no connection reopened");
    assert!(after.iter().all(|c| c.options_updates.iter().all(|u| u.accepted)));

    // Removing every DID of that connection closes it, without an empty filter.
    let shard: Vec<String> = after.iter().find(|c| c.attempt == partial).unwrap().wanted_dids.iter().cloned().collect();
    let answer = post_follows(port, serde_json::json!({ "remove": shard })).await;
    assert_eq!(answer["follows"], 20_000, "{answer}");
    wait_for(T, "that connection closed", || open_on(&sim).len() == 2).await;
    let log = sim.jetstream_connections();
    let closed = log.iter().find(|c| c.attempt == partial).unwrap();
    assert!(
        closed.options_updates.iter().all(|u| u.dids > 0),
        "an empty wantedDids was sent: {:?}",
        closed.options_updates
    );
    assert_eq!(log.len(), 3, "nothing reopened");
    stop_service(&running).await;
}

#[actix_rt::test]
async fn the_first_host_refusing_three_times_fails_over_to_the_second_with_the_same_cursor() {
    let first = failing_host().await;
    let second = start_sim(Scenario::default(), 0, 1000).await;
    let wanted = dids(&first, 5);
    let cfg = jetstream(
        Conf::new(),
        &[&first, &second],
        &format!("wanted_dids = {}\nfailover_after = 3", toml_list(&wanted)),
    )
    .file_sink("")
    .write();
    let running = start_service(&cfg).await;
    wait_for(T, "connected", || connected(&running) == 1).await;
    // The second host has its own history of the same DIDs, before and after the drop.
    let mut on_second = second.jetstream_publish(&wanted, 10);
    let before = first.jetstream_publish(&wanted, 20);
    wait_for(T, "the failover", || !open_on(&second).is_empty()).await;
    on_second.extend(second.jetstream_publish(&wanted, 10));
    let cursor = second.jetstream_connections()[0].cursor.expect("the failover resumes from the cursor") as u64;
    assert_eq!(
        cursor + REWIND_US,
        before[19].time_us,
        "the same cursor: the last acknowledged time_us minus the rewind"
    );
    // Another host's copy of an event is the same event: identity and
    // account events are known by (did, kind, seq) on every host (the two
    // simulators number their seqs alike, so such copies exist here).
    let known: BTreeSet<(String, String, Option<u64>)> =
        before.iter().filter(|e| e.seq.is_some()).map(|e| (e.did.clone(), e.kind.clone(), e.seq)).collect();
    let replayed: Vec<_> = on_second
        .iter()
        .filter(|e| e.time_us >= cursor && !known.contains(&(e.did.clone(), e.kind.clone(), e.seq)))
        .cloned()
        .collect();
    let expected: Vec<_> = before.iter().chain(replayed.iter()).cloned().collect();
    wait_for(T, "written", || sink_events(&running) > expected.len() as u64).await;
    stop_service(&running).await;

    let refusals: Vec<u16> = first.jetstream_connections().iter().skip(1).map(|c| c.status).collect();
    assert_eq!(refusals, [503, 503, 503], "three failed attempts on the first host, then none");
    let envs = read_envelopes(&cfg.data());
    assert_once(&envs, &expected);
    assert_eq!(gaps(&envs).len(), 1);
}

/// The wait before each attempt after the first: from the end of the one before.
fn waits(sim: &SimHandle) -> Vec<u64> {
    let log = sim.jetstream_connections();
    log.windows(2)
        .map(|w| w[1].opened_at.saturating_duration_since(w[0].closed_at.unwrap_or(w[0].opened_at)).as_millis() as u64)
        .collect()
}

#[actix_rt::test]
async fn refused_upgrades_follow_the_reconnect_rules() {
    let refused = |status| AttemptScript { status: Some(status), ..Default::default() };
    let sim =
        start_sim(Scenario { attempts: vec![refused(503), refused(503), refused(429)], ..Default::default() }, 0, 1000)
            .await;
    let cfg = jetstream(Conf::new(), &[&sim], "").file_sink("").write();
    let running = start_service(&cfg).await;
    wait_for(T, "connected after 503, 503, 429", || connected(&running) == 1).await;
    stop_service(&running).await;
    // FAST_BACKOFF: HTTP 50 ms doubling; rate limits from 80 ms; no jitter.
    let w = waits(&sim);
    assert_eq!(w.len(), 3, "{w:?}");
    for (ms, expected) in w.iter().zip([50u64, 100, 80]) {
        assert!(*ms >= expected && *ms < expected + 250, "waited {ms} ms, expected {expected}: {w:?}");
    }

    // 400 (a filter or cursor the server refuses) is final.
    let sim = start_sim(Scenario { then: refused(400), ..Default::default() }, 0, 1000).await;
    let cfg = jetstream(Conf::new(), &[&sim], "").file_sink("").write();
    let running = start_service(&cfg).await;
    let failed = || running.stats.snapshots().iter().any(|s| s.state == ConnectionState::Failed);
    wait_for(T, "failed for good", failed).await;
    assert_eq!(sim.jetstream_connections().len(), 1, "a 400 is not retried");
    let error = running.stats.snapshots()[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("400"), "{error}");
    stop_service(&running).await;
}

#[actix_rt::test]
async fn a_stall_reconnects_from_the_cursor_and_pings_keep_a_quiet_stream_alive() {
    // Attempt 0 sends 20 events, then nothing at all (no pings, no pongs).
    let scenario = Scenario {
        attempts: vec![AttemptScript { silence_after: Some(20), silence_ms: 60_000, ..Default::default() }],
        ..Default::default()
    };
    let sim = start_sim(scenario, 0, 1000).await;
    let wanted = dids(&sim, 5);
    let extra = format!("wanted_dids = {}\nstall_timeout_s = 0.6", toml_list(&wanted));
    let cfg = jetstream(Conf::new(), &[&sim], &extra).file_sink("").write();
    let running = start_service(&cfg).await;
    wait_for(T, "connected", || connected(&running) == 1).await;
    let mut sent = sim.jetstream_publish(&wanted, 20);
    wait_for(T, "20 written", || sink_events(&running) >= 20).await;
    let silent_since = std::time::Instant::now();
    wait_for(T, "the reconnect after the stall", || open_on(&sim).iter().any(|c| c.attempt >= 1)).await;
    let waited = silent_since.elapsed();
    assert!(waited >= Duration::from_millis(500) && waited < Duration::from_secs(3), "stall noticed after {waited:?}");
    // The new connection is quiet: streamherd's pings (every 0.2 s) and
    // their pongs keep it from stalling.
    wait_for(T, "pings on the quiet connection", || open_on(&sim).first().is_some_and(|c| c.client_pings >= 5)).await;
    assert_eq!(sim.jetstream_connections().len(), 2, "a quiet connection that answers pings is not a stall");
    sent.extend(sim.jetstream_publish(&wanted, 10));
    wait_for(T, "30 written and a gap", || sink_events(&running) >= 31).await;
    stop_service(&running).await;
    let envs = read_envelopes(&cfg.data());
    assert_once(&envs, &sent);
    let g = gaps(&envs);
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!(g[0]["complete"], true, "{}", g[0]);
    assert_eq!(sim.jetstream_connections()[1].cursor.map(|c| c as u64 + REWIND_US), Some(sent[19].time_us));
}

#[actix_rt::test]
async fn compressed_frames_are_written_as_the_json_they_carry() {
    let sim = start_sim(Scenario::default(), 0, 1000).await;
    let wanted = dids(&sim, 3);
    let cfg = jetstream(Conf::new(), &[&sim], &format!("wanted_dids = {}\ncompress = true", toml_list(&wanted)))
        .file_sink("")
        .write();
    let running = start_service(&cfg).await;
    wait_for(T, "connected", || connected(&running) == 1).await;
    let sent = sim.jetstream_publish(&wanted, 60);
    wait_for(T, "60 written", || sink_events(&running) >= 60).await;
    stop_service(&running).await;
    assert!(sim.jetstream_connections()[0].compress, "the request asked for zstd");
    let envs = read_envelopes(&cfg.data());
    assert_once(&envs, &sent);
    let malformed = running.metrics.malformed_total.get_or_create(&Metrics::source("bsky")).get();
    assert_eq!(malformed, 0);
}

#[test]
fn check_prints_the_shard_plan() {
    let dir = tempfile::tempdir().unwrap();
    let dids: Vec<String> = (0..25_000).map(|i| format!("did:plc:{i:024}")).collect();
    std::fs::write(dir.path().join("dids.txt"), dids.join("\n")).unwrap();
    let config = Conf::new()
        .source("bsky", "bluesky.jetstream", "did_file = \"dids.txt\"\nmax_message_size_bytes = 100000")
        .file_sink("")
        .write_to(dir.path());
    let out = command(BIN, &["check", "--config", config.to_str().unwrap()], dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("25000 DIDs in 3 connection(s) of up to 10000"), "{stdout}");
    for (n, count) in [(0, 10_000), (1, 10_000), (2, 5_000)] {
        assert!(stdout.contains(&format!("  connection {n}: {count} DIDs (")), "{stdout}");
    }
    assert!(
        stdout.contains("failing over to wss://jetstream1.us-east.bsky.network after 3 failed attempts"),
        "{stdout}"
    );
    assert!(stdout.contains("warning: the server skips events over 100000 bytes"), "{stdout}");
}

#[actix_rt::test]
async fn consolidation_and_reloads_change_filters_live_and_lose_nothing() {
    let sim = start_sim(Scenario::default(), 0, 1000).await;
    let all = dids(&sim, 30);
    let port = free_port();
    let conf = |collections: &str| {
        jetstream(
            Conf::new(),
            &[&sim],
            &format!("wanted_dids = {}\ndids_per_connection = 10{collections}", toml_list(&all)),
        )
        .table(&format!("[control]\nlisten = \"127.0.0.1:{port}\""))
        .file_sink("")
    };
    let cfg = conf("").write();
    let running = start_service(&cfg).await;
    wait_for(T, "3 connections", || open_on(&sim).len() == 3).await;
    // 5 DIDs leave each of two connections: 5 + 5 + 10 fit in 2.
    let by_size: Vec<Vec<String>> = open_on(&sim).iter().map(|c| c.wanted_dids.iter().cloned().collect()).collect();
    let removed: Vec<String> = by_size[0][..5].iter().chain(&by_size[1][..5]).cloned().collect();
    post_follows(port, serde_json::json!({ "remove": removed })).await;
    let kept: Vec<String> = all.iter().filter(|d| !removed.contains(d)).cloned().collect();
    wait_for(T, "the removals applied", || open_on(&sim).iter().map(|c| c.wanted_dids.len()).sum::<usize>() == 20)
        .await;
    let answer = post(port, "/sources/bsky/consolidate").await;
    assert_eq!((answer["before"].as_u64(), answer["after"].as_u64()), (Some(3), Some(2)), "{answer}");
    // Events published while DIDs move are written once.
    let mut sent = sim.jetstream_publish(&kept, 40);
    wait_for(T, "one connection closed", || open_on(&sim).len() == 2).await;
    let open = open_on(&sim);
    let union: BTreeSet<String> = open.iter().flat_map(|c| c.wanted_dids.iter().cloned()).collect();
    assert_eq!(union, kept.iter().cloned().collect(), "the kept DIDs, each on one connection");
    assert_eq!(open.iter().map(|c| c.wanted_dids.len()).sum::<usize>(), 20);
    assert_eq!(sim.jetstream_connections().len(), 3, "nothing reopened");
    sent.extend(sim.jetstream_publish(&kept, 40));

    // A changed wanted_collections reaches every connection as options_update.
    std::fs::write(
        &cfg.path,
        conf("\nwanted_collections = [\"app.bsky.feed.post\"]")
            .render()
            .replace("{dir}", &cfg.dir.path().display().to_string()),
    )
    .unwrap();
    post(port, "/update").await;
    wait_for(T, "the collections on both connections", || {
        open_on(&sim).iter().all(|c| c.wanted_collections == ["app.bsky.feed.post"])
    })
    .await;
    let posts: Vec<_> = sim.jetstream_publish(&kept, 40);
    sent.extend(posts.into_iter().filter(|e| e.collection.as_deref() == Some("app.bsky.feed.post") || e.seq.is_some()));
    wait_for(T, "every event written", || sink_events(&running) >= sent.len() as u64).await;
    stop_service(&running).await;
    assert_eq!(sim.jetstream_connections().len(), 3, "no reconnect");
    let envs = read_envelopes(&cfg.data());
    assert_once(&envs, &sent);
    assert!(gaps(&envs).is_empty());
}

#[actix_rt::test]
async fn a_failover_writes_the_other_hosts_copies_of_written_events_once() {
    let first = failing_host().await;
    let second = start_sim(Scenario::default(), 0, 1000).await;
    let wanted = dids(&first, 5);
    let cfg = jetstream(Conf::new(), &[&first, &second], &format!("wanted_dids = {}", toml_list(&wanted)))
        .file_sink("")
        .write();
    let running = start_service(&cfg).await;
    wait_for(T, "connected", || connected(&running) == 1).await;
    let before = first.jetstream_publish(&wanted, 20);
    wait_for(T, "20 written", || sink_events(&running) >= 20).await;
    // The second instance has the same 20 events, on its own clock, then 10 more.
    let times: Vec<u64> = before.iter().map(|e| e.time_us).collect();
    let copies = second.jetstream_publish_copies(&first, &times);
    assert_eq!(copies.len(), 20);
    assert!(copies.iter().zip(&before).all(|(c, b)| c.time_us != b.time_us && c.rev == b.rev));
    let after = second.jetstream_publish(&wanted, 10);
    wait_for(T, "the failover and the 10 new events", || sink_events(&running) > 30).await;
    stop_service(&running).await;

    let envs = read_envelopes(&cfg.data());
    let expected: Vec<_> = before.iter().chain(after.iter()).cloned().collect();
    assert_once(&envs, &expected);
    let g = gaps(&envs);
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!(g[0]["replayed"], 20, "the copies were recognised by their own keys: {}", g[0]);
    assert_eq!(g[0]["complete"], true);
    assert_eq!(g[0]["host"], format!("ws://{}", second.addr()));
}
