//! The Redis Streams sink against a real `redis-server` started by the test
//! on 127.0.0.1 (installed by .ci/run when absent): every event appended
//! once with the envelope fields and the exact payload bytes, and a Redis
//! killed mid-stream and started again on the same port loses and doubles
//! nothing while the streaming connection reads on and /health goes
//! degraded and back.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::redis_server::Redis;
use common::*;
use streamherd_actors::metrics::Metrics;
use streamherd_sim::{Scenario, SimHandle};

const T: Duration = Duration::from_secs(30);
/// How long the second test keeps Redis down (the 3 s).
const DOWN: Duration = Duration::from_secs(3);

/// One XRANGE entry as the client returns it: its id and field-value pairs.
type Entry = (String, Vec<(String, Vec<u8>)>);

/// Every entry of `key`: its fields by name.
fn entries(redis: &Redis, key: &str) -> Vec<BTreeMap<String, Vec<u8>>> {
    let mut conn = redis.client().get_connection().unwrap();
    let reply: Vec<Entry> = redis::cmd("XRANGE").arg(key).arg("-").arg("+").query(&mut conn).unwrap();
    reply.into_iter().map(|(_, fields)| fields.into_iter().collect()).collect()
}

fn xlen(redis: &Redis, key: &str) -> usize {
    let Ok(mut conn) = redis.client().get_connection() else { return 0 };
    redis::cmd("XLEN").arg(key).query(&mut conn).unwrap_or(0)
}

fn conf(sim: &SimHandle, port: u16, dids: &[String], sink_extra: &str) -> Conf {
    let quoted: Vec<String> = dids.iter().map(|d| format!("{d:?}")).collect();
    Conf::new()
        .source(
            "bsky",
            "bluesky.jetstream",
            &format!("base_url = \"ws://{}\"\nwanted_dids = [{}]", sim.addr(), quoted.join(", ")),
        )
        .sink(&format!(
            "name = \"queue\"\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\npipeline = 64\n{sink_extra}"
        ))
}

fn written(running: &streamherd::app::Running) -> u64 {
    running.metrics.sink_events_total.get_or_create(&Metrics::sink("queue")).get()
}

#[actix_rt::test]
async fn five_thousand_events_are_appended_once_with_envelope_fields_and_exact_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(free_port(), dir.path(), false);
    let sim = start_sim(Scenario::default(), 0, 1000).await;
    let dids: Vec<String> = (0..10).map(|i| sim.jetstream_did(i)).collect();
    let cfg = conf(&sim, redis.port, &dids, "").write();
    let running = start_service(&cfg).await;
    wait_for(T, "connected", || sim.jetstream_connections().iter().any(|c| c.closed_at.is_none())).await;
    let mut sent = Vec::new();
    for _ in 0..10 {
        sent.extend(sim.jetstream_publish(&dids, 500));
    }
    wait_for(T, "5,000 written", || written(&running) >= 5_000).await;
    stop_service(&running).await;

    assert_eq!(xlen(&redis, "streamherd:bsky"), 5_000);
    let got = entries(&redis, "streamherd:bsky");
    let by_payload: BTreeMap<&[u8], &streamherd_sim::JetstreamEvent> = sent.iter().map(|e| (&e.json[..], e)).collect();
    for (n, entry) in got.iter().enumerate() {
        let payload = &entry["payload"];
        let s = by_payload.get(&payload[..]).unwrap_or_else(|| panic!("entry {n}: payload not sent, or altered"));
        assert_eq!(entry["source"], b"bsky");
        assert_eq!(entry["connection"], b"bsky/0");
        assert_eq!(
            std::str::from_utf8(&entry["kind"]).unwrap(),
            if s.kind == "commit" { "commit" } else { s.kind.as_str() }
        );
        assert_eq!(entry.get("id").map(|v| String::from_utf8(v.clone()).unwrap()), s.id());
        assert!(chrono::DateTime::parse_from_rfc3339(std::str::from_utf8(&entry["received_at"]).unwrap()).is_ok());
        assert!(!entry.contains_key("for_user") && !entry.contains_key("stream"), "absent fields are left out");
    }
    let distinct: std::collections::BTreeSet<&Vec<u8>> = got.iter().map(|e| &e["payload"]).collect();
    assert_eq!(distinct.len(), 5_000, "each event once");
}

async fn health(port: u16) -> (u16, serde_json::Value) {
    let client = awc::Client::builder().timeout(Duration::from_secs(5)).finish();
    let mut r = client.get(format!("http://127.0.0.1:{port}/health")).send().await.unwrap();
    let status = r.status().as_u16();
    (status, serde_json::from_slice(&r.body().await.unwrap()).unwrap())
}

#[actix_rt::test]
async fn a_redis_restart_loses_and_doubles_nothing_while_the_stream_reads_on() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let redis = Redis::start(port, dir.path(), true);
    let sim = start_sim(Scenario::default(), 0, 1000).await;
    let dids: Vec<String> = (0..10).map(|i| sim.jetstream_did(i)).collect();
    let control = free_port();
    // A small queue, so the outage spills to disk.
    let cfg =
        conf(&sim, port, &dids, "buffer = 500").table(&format!("[control]\nlisten = \"127.0.0.1:{control}\"")).write();
    let running = start_service(&cfg).await;
    wait_for(T, "connected", || sim.jetstream_connections().iter().any(|c| c.closed_at.is_none())).await;
    assert_eq!(health(control).await.0, 200);

    // 2,000 events a second, before, during and after the outage.
    let mut sent = Vec::new();
    let publish = |sent: &mut Vec<streamherd_sim::JetstreamEvent>| sent.extend(sim.jetstream_publish(&dids, 100));
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(500) {
        publish(&mut sent);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.kill();
    let down = Instant::now();
    let mut degraded = None;
    let mut spilled = 0;
    while down.elapsed() < DOWN {
        publish(&mut sent);
        spilled = spilled.max(running.metrics.spill_bytes.get_or_create(&Metrics::sink("queue")).get());
        if degraded.is_none() {
            let (code, body) = health(control).await;
            if code == 503 {
                degraded = Some(body);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let degraded = degraded.expect("/health went degraded while Redis was down");
    assert!(spilled > 0, "the outage outlasted the 500-event queue: it spilled to disk");
    assert!(degraded["reasons"].to_string().contains("sink queue"), "{degraded}");
    let redis = Redis::start(port, dir.path(), true);
    let up = Instant::now();
    while up.elapsed() < Duration::from_millis(500) {
        publish(&mut sent);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = sent.len();
    let start = Instant::now();
    while xlen(&redis, "streamherd:bsky") < total {
        assert!(start.elapsed() < T, "{} of {total} in Redis", xlen(&redis, "streamherd:bsky"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = Instant::now();
    while health(control).await.0 != 200 {
        assert!(start.elapsed() < T, "/health did not come back: {}", health(control).await.1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_service(&running).await;

    let log = sim.jetstream_connections();
    assert_eq!(log.len(), 1, "the streaming connection never dropped");
    assert_eq!(log[0].events_sent as usize, total, "it read everything at the server's pace");
    let got = entries(&redis, "streamherd:bsky");
    let mut counts: BTreeMap<&[u8], usize> = BTreeMap::new();
    for e in &got {
        *counts.entry(&e["payload"][..]).or_default() += 1;
    }
    let doubled = counts.values().filter(|n| **n > 1).count();
    let missing = sent.iter().filter(|e| !counts.contains_key(&e.json[..])).count();
    assert_eq!((missing, doubled), (0, 0), "{total} sent, {} in Redis", got.len());
    assert_eq!(got.len(), total);
}

#[test]
fn check_says_whether_redis_answers() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(free_port(), dir.path(), false);
    let bin = env!("CARGO_BIN_EXE_streamherd");
    // An unreachable one, with a password that must not be printed.
    let unreachable = |port: u16| {
        Conf::new()
            .source("bsky", "bluesky.jetstream", "base_url = \"ws://127.0.0.1:1\"")
            .sink(&format!("name = \"queue\"\nkind = \"redis\"\nurl = \"redis://user:s3cret@127.0.0.1:{port}\""))
            .write_to(dir.path())
    };
    // A reachable server (no ACLs set up here, so no password).
    let config = Conf::new()
        .source("bsky", "bluesky.jetstream", "base_url = \"ws://127.0.0.1:1\"")
        .sink(&format!("name = \"queue\"\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{}\"", redis.port))
        .write_to(dir.path());
    let out = command(bin, &["check", "--config", config.to_str().unwrap()], dir.path()).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    let config = unreachable(free_port());
    let out = command(bin, &["check", "--config", config.to_str().unwrap()], dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("sinks[0].url") && stderr.contains("cannot reach Redis"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "the password never shows: {stderr}");
}
