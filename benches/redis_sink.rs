//! The redis sink's throughput against a real `redis-server` (started here
//! on 127.0.0.1, its own process), next to the same run's baseline: a
//! minimal client that pipelines raw `XADD key * payload <bytes>` with the
//! same pipeline depth, and `redis-benchmark` when it is installed.
//! `cargo bench --bench redis_sink`.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use streamherd_actors::event::{Event, EventKind};
use streamherd_actors::sinks::{SinkBuildContext, SinkRegistry};
use streamherd_sim::payloads::Corpus;

const EVENTS: usize = 200_000;
const BATCH: usize = 1024;
const PIPELINE: usize = 512;
const ROUNDS: usize = 3;

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn events(corpus: &Corpus) -> Vec<Event> {
    let source: Arc<str> = Arc::from("bench");
    let connection: Arc<str> = Arc::from("bench/0");
    (0..EVENTS)
        .map(|i| Event {
            source: source.clone(),
            kind: EventKind::new("tweet"),
            id: Some(i.to_string().into()),
            received_at: Utc::now(),
            connection: connection.clone(),
            for_user: None,
            stream: None,
            payload: Bytes::from(corpus.tweet(1_500_000_000_000_000_000 + i as u64)),
        })
        .collect()
}

fn flushall(url: &str) -> Result<()> {
    let mut c = redis::Client::open(url)?.get_connection()?;
    redis::cmd("FLUSHALL").query::<()>(&mut c)?;
    Ok(())
}

/// The baseline: raw pipelined XADDs of the payloads, nothing else.
fn raw(url: &str, events: &[Event]) -> Result<Duration> {
    let mut c = redis::Client::open(url)?.get_connection()?;
    let start = Instant::now();
    for chunk in events.chunks(PIPELINE) {
        let mut pipe = redis::pipe();
        for e in chunk {
            pipe.cmd("XADD").arg("raw").arg("*").arg("payload").arg(&e.payload[..]).ignore();
        }
        pipe.query::<()>(&mut c)?;
    }
    Ok(start.elapsed())
}

/// The sink as the service builds it, handed batches as the runtime hands them.
fn sink(url: &str, events: &[Event]) -> Result<Duration> {
    let ctx = SinkBuildContext { name: "queue".into(), index: 0, state_dir: std::env::temp_dir() };
    let settings = serde_json::json!({ "url": url, "pipeline": PIPELINE, "maxlen": 0 });
    let mut sink = (SinkRegistry::builtin().get("redis")?.build)(settings, &ctx)?;
    let start = Instant::now();
    for batch in events.chunks(BATCH) {
        sink.write(batch)?;
    }
    sink.flush()?;
    Ok(start.elapsed())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let port = free_port()?;
    let Ok(server) = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
    else {
        eprintln!("redis-server is not installed (apt-get install -y redis-server); skipping");
        return Ok(());
    };
    let _server = Child(server);
    let url = format!("redis://127.0.0.1:{port}/");
    let start = Instant::now();
    while redis::Client::open(url.as_str())?.get_connection().is_err() {
        if start.elapsed() > Duration::from_secs(20) {
            return Err("redis-server did not start within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let events = events(&Corpus::new());
    let bytes: usize = events.iter().map(|e| e.payload.len()).sum();
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        flushall(&url)?;
        base.push(EVENTS as f64 / raw(&url, &events)?.as_secs_f64());
        flushall(&url)?;
        ours.push(EVENTS as f64 / sink(&url, &events)?.as_secs_f64());
    }
    let (base, ours) = (median(base), median(ours));
    println!(
        "redis sink, {EVENTS} events of {} bytes on average, pipeline {PIPELINE}, median of {ROUNDS}:",
        bytes / EVENTS
    );
    println!("  baseline raw XADD payload pipelining   {base:>10.0} events/s");
    println!("  redis sink (envelope fields + payload) {ours:>10.0} events/s  ratio {:.2}", ours / base);
    let out = Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-P", &PIPELINE.to_string(), "-n", "200000", "-q", "-d", "3000", "-t", "set"])
        .output();
    if let Ok(out) = out {
        let text = String::from_utf8_lossy(&out.stdout);
        // Its progress lines end in CR: the summary is the last piece.
        if let Some(line) = text.split(['\r', '\n']).rev().find(|l| l.contains("requests per second")) {
            println!("  for scale, redis-benchmark SET of 3000 bytes, -P {PIPELINE}: {}", line.trim());
        }
    }
    Ok(())
}
