//! End-to-end throughput: simulator -> StreamActor (framing, classification)
//! -> file sink, next to a plain read of the same byte stream over loopback
//! with the same HTTP client, in the same run. Prints events/s, MB/s and the
//! ratio to the baseline. `cargo bench --bench end_to_end`.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use streamherd_actors::metrics::Metrics;
use streamherd_actors::twitter::request::{sign, twitter_request, OAuthCredentials, TwitterEndpoint, TwitterQuery};

use streamherd_actors::supervisor::Shutdown;
use streamherd_sim::{self as simulator, AttemptScript, Scenario, SimCredentials, SimHandle, SimulatorConfig};

const MESSAGES: u64 = 100_000;
const ROUNDS: usize = 3;

fn scenario() -> Scenario {
    // Each attempt streams MESSAGES then ends; nothing after that.
    Scenario::always(AttemptScript { limit: Some(MESSAGES), ..Default::default() })
}

async fn sim() -> SimHandle {
    simulator::start(SimulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        rate: 0,
        keepalive_ms: 30_000,
        credentials: vec![SimCredentials::demo()],
        scenario: scenario(),
        record_sent: 0,
        ..SimulatorConfig::default()
    })
    .await
    .unwrap()
}

fn demo() -> OAuthCredentials {
    let d = SimCredentials::demo();
    OAuthCredentials {
        consumer_key: d.consumer_key,
        consumer_secret: d.consumer_secret,
        token: d.token,
        token_secret: d.token_secret,
    }
}

/// Baseline: read the whole body, count bytes, do nothing else.
async fn raw_read(sim: &SimHandle) -> (Duration, u64) {
    let req = twitter_request(TwitterEndpoint::Sample, &sim.base_url(), &TwitterQuery::default());
    let signed = sign(&req, &demo());
    let client = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
    let start = Instant::now();
    let mut res =
        client.get(&signed.url).insert_header(("Authorization", signed.authorization.as_str())).send().await.unwrap();
    let mut bytes = 0u64;
    while let Some(chunk) = res.next().await {
        bytes += chunk.map(|c| c.len() as u64).unwrap_or(0);
    }
    (start.elapsed(), bytes)
}

/// The service: a sample source into a file sink; time until every event is written.
async fn service(sim: &SimHandle) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[service]
stats_interval_s = 0
[backoff]
http_initial_ms = 60000
network_initial_ms = 60000
network_max_ms = 60000
[[sources]]
name = "bench"
kind = "twitter.sample"
base_url = "{}"
auth = {{ kind = "oauth1", consumer_key = "demo-consumer-key", consumer_secret = "demo-consumer-secret", token = "demo-token", token_secret = "demo-token-secret" }}
[[sinks]]
name = "archive"
kind = "file"
path = "{}/data/{{source}}.jsonl"
fsync = "never"
"#,
            sim.base_url(),
            dir.path().display()
        ),
    )
    .unwrap();
    let config = streamherd::config::load(&path, &streamherd::Registries::builtin()).unwrap();
    let start = Instant::now();
    let running = streamherd::app::start_embedded(&config, &streamherd::Registries::builtin()).await.unwrap();
    let written = running.metrics.sink_events_total.get_or_create(&Metrics::sink("archive"));
    while written.get() < MESSAGES {
        assert!(start.elapsed() < Duration::from_secs(300), "bench did not finish");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed();
    running.supervisor.send(Shutdown { exit_code: 0 }).await.unwrap();
    elapsed
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` runs bench binaries with --test: keep that quick.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    streamherd::app::install_crypto();
    let system = actix_rt::System::new();
    system.block_on(async {
        let sim = sim().await;
        let mut raw = Vec::new();
        let mut bytes = 0;
        let mut ours = Vec::new();
        for _ in 0..ROUNDS {
            let (d, b) = raw_read(&sim).await;
            raw.push(d);
            bytes = b;
            ours.push(service(&sim).await);
        }
        let (raw, ours) = (median(raw), median(ours));
        let mb = bytes as f64 / 1e6;
        let line = |name: &str, d: Duration| {
            println!(
                "{name:<34} {:>10.0} events/s {:>8.1} MB/s  ({:.3} s for {MESSAGES} messages, {mb:.1} MB)",
                MESSAGES as f64 / d.as_secs_f64(),
                mb / d.as_secs_f64(),
                d.as_secs_f64()
            )
        };
        println!("end-to-end, median of {ROUNDS} rounds, same stream, same run:");
        line("baseline: plain loopback read", raw);
        line("streamherd: simulator -> file sink", ours);
        println!("ratio streamherd / baseline throughput: {:.2}", raw.as_secs_f64() / ours.as_secs_f64());
        sim.stop().await;
    });
}
