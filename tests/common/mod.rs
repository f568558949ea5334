//! Shared helpers for the whole-service tests: a simulator on 127.0.0.1:0,
//! a config written to a temp dir, the service started in-process, and
//! bounded waits on observable events (never sleep-and-hope).
#![allow(dead_code)]

pub mod redis_server;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;
use streamherd::app::{self, Running};
use streamherd::config;

use streamherd_actors::supervisor::Shutdown;
use streamherd_sim::{self as simulator, Scenario, SimCredentials, SimHandle, SimulatorConfig};

/// Starts a simulator with the demo credentials and a record of what it sent.
pub async fn start_sim(scenario: Scenario, rate: u32, keepalive_ms: u64) -> SimHandle {
    simulator::start(SimulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        rate,
        keepalive_ms,
        credentials: vec![SimCredentials::demo()],
        scenario,
        record_sent: 200_000,
        ..SimulatorConfig::default()
    })
    .await
    .expect("simulator starts")
}

pub const DEMO_AUTH: &str = r#"auth = { kind = "oauth1", consumer_key = "demo-consumer-key", consumer_secret = "demo-consumer-secret", token = "demo-token", token_secret = "demo-token-secret" }"#;

/// Fast backoff for tests: 20 ms network steps, 50 ms HTTP, 80 ms rate limit, no jitter.
pub const FAST_BACKOFF: &str = r#"
[backoff]
network_initial_ms = 20
network_max_ms = 200
http_initial_ms = 50
http_max_ms = 400
rate_limit_initial_ms = 80
rate_limit_max_ms = 1000
stall_timeout_s = 5
reset_after_s = 1800
jitter = 0.0
max_connects_per_s = 1000
"#;

/// A temp dir with a config file in it.
pub struct TestConfig {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TestConfig {
    /// Writes `body` (with `{dir}` replaced by the temp dir) to config.toml.
    pub fn new(body: &str) -> TestConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), body);
        TestConfig { dir, path }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn load(&self) -> config::Config {
        config::load(&self.path, &streamherd::Registries::builtin()).expect("valid config")
    }
}

/// Writes `body` to `dir/config.toml`, `{dir}` replaced by `dir`.
pub fn write_config(dir: &Path, body: &str) -> PathBuf {
    let body = body.replace("{dir}", &dir.display().to_string());
    let path = dir.join("config.toml");
    std::fs::write(&path, body).unwrap();
    path
}

/// The one config builder of the tests: `[service]` with `state_dir` in the
/// temp dir and no stats line, fast backoff, and the sources and sinks a
/// test adds. `{dir}` in any text stands for the temp dir.
#[derive(Debug, Clone)]
pub struct Conf {
    service: Vec<String>,
    backoff: Option<String>,
    tables: Vec<String>,
    sources: Vec<String>,
    sinks: Vec<String>,
}

impl Default for Conf {
    fn default() -> Self {
        Conf::new()
    }
}

impl Conf {
    pub fn new() -> Conf {
        Conf {
            service: vec!["state_dir = \"{dir}/state\"".into(), "stats_interval_s = 0".into()],
            backoff: Some(FAST_BACKOFF.into()),
            tables: Vec::new(),
            sources: Vec::new(),
            sinks: Vec::new(),
        }
    }

    /// Another `[service]` line (`key = value`); a key given again replaces the default.
    pub fn service(mut self, line: &str) -> Conf {
        let key = line.split('=').next().unwrap_or("").trim().to_owned();
        self.service.retain(|l| l.split('=').next().unwrap_or("").trim() != key);
        self.service.push(line.to_owned());
        self
    }

    /// `[backoff]` as given instead of the fast one; `None` leaves the defaults.
    pub fn backoff(mut self, table: Option<&str>) -> Conf {
        self.backoff = table.map(str::to_owned);
        self
    }

    /// Another table, e.g. `[control]` or `[simulator]`, written as given.
    pub fn table(mut self, toml: &str) -> Conf {
        self.tables.push(toml.to_owned());
        self
    }

    /// A `[[sources]]` table: `name`, `kind`, then `body` as given.
    pub fn source(mut self, name: &str, kind: &str, body: &str) -> Conf {
        self.sources.push(format!("[[sources]]\nname = \"{name}\"\nkind = \"{kind}\"\n{body}\n"));
        self
    }

    /// A Twitter source against the simulator, with the demo credentials.
    pub fn twitter(self, name: &str, kind: &str, sim: &SimHandle, body: &str) -> Conf {
        let url = sim.base_url();
        self.source(name, kind, &format!("base_url = \"{url}\"\n{body}\n{DEMO_AUTH}"))
    }

    /// A Mastodon source against the simulator, with the demo token.
    pub fn mastodon(self, name: &str, sim: &SimHandle, transport: &str, streams: &[&str], body: &str) -> Conf {
        let streams: Vec<String> = streams.iter().map(|s| format!("{s:?}")).collect();
        let url = sim.base_url();
        let auth = format!("auth = {{ kind = \"bearer\", token = \"{}\" }}", streamherd_sim::DEMO_MASTODON_TOKEN);
        let streams = streams.join(", ");
        self.source(
            name,
            "mastodon",
            &format!("base_url = \"{url}\"\ntransport = \"{transport}\"\nstreams = [{streams}]\n{auth}\n{body}"),
        )
    }

    /// A `[[sinks]]` table written as given (without the header).
    pub fn sink(mut self, body: &str) -> Conf {
        self.sinks.push(format!("[[sinks]]\n{body}\n"));
        self
    }

    /// The file sink `archive`: envelopes in `{dir}/data/{source}.jsonl`, no fsync, plus `extra` lines.
    pub fn file_sink(self, extra: &str) -> Conf {
        self.sink(&format!(
            "name = \"archive\"\nkind = \"file\"\npath = \"{{dir}}/data/{{source}}.jsonl\"\nfsync = \"never\"\n{extra}"
        ))
    }

    /// The TOML text, `{dir}` still in it.
    pub fn render(&self) -> String {
        let mut out = format!("[service]\n{}\n", self.service.join("\n"));
        if let Some(b) = &self.backoff {
            out.push_str(b);
            out.push('\n');
        }
        for t in self.tables.iter().chain(&self.sources).chain(&self.sinks) {
            out.push_str(t);
            out.push('\n');
        }
        out
    }

    /// Written into a new temp dir.
    pub fn write(&self) -> TestConfig {
        TestConfig::new(&self.render())
    }

    /// Written into `dir` (for services run as a separate process).
    pub fn write_to(&self, dir: &Path) -> PathBuf {
        write_config(dir, &self.render())
    }
}

/// A config with one source of `kind` against the simulator and one file sink
/// writing envelopes to `{dir}/data/{source}.jsonl`.
pub fn one_source(sim: &SimHandle, kind: &str, extra: &str) -> TestConfig {
    Conf::new().twitter("src", kind, sim, extra).file_sink("").write()
}

/// Starts the service in the current actix System.
pub async fn start_service(cfg: &TestConfig) -> Running {
    app::start_embedded(&cfg.load(), &streamherd::Registries::builtin()).await.expect("service starts")
}

/// Graceful stop: streams closed, sinks flushed.
pub async fn stop_service(running: &Running) {
    running.supervisor.send(Shutdown { exit_code: 0 }).await.unwrap();
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub async fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One parsed envelope line, with the payload kept as raw bytes.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub source: String,
    pub kind: String,
    pub id: Option<String>,
    pub received_at: String,
    pub connection: String,
    pub for_user: Option<u64>,
    pub stream: Option<Vec<String>>,
    pub payload: String,
    pub line: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvelope<'a> {
    source: String,
    kind: String,
    id: Option<String>,
    received_at: String,
    connection: String,
    for_user: Option<u64>,
    stream: Option<Vec<String>>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// Parses every line of every `.jsonl` file under `dir` (sorted by name);
/// the files must end in a complete line (the service has stopped).
pub fn read_envelopes(dir: &Path) -> Vec<Envelope> {
    read_files(dir, false)
}

/// Like [`read_envelopes`], while the service may be writing: a last line
/// not yet complete is left out.
pub fn read_envelopes_so_far(dir: &Path) -> Vec<Envelope> {
    read_files(dir, true)
}

fn read_files(dir: &Path, while_writing: bool) -> Vec<Envelope> {
    let mut files: Vec<PathBuf> = Vec::new();
    collect(dir, &mut files);
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let mut text = std::fs::read_to_string(&f).unwrap();
        if while_writing {
            text.truncate(text.rfind('\n').map_or(0, |i| i + 1));
        }
        assert!(text.is_empty() || text.ends_with('\n'), "{} ends in a partial line", f.display());
        out.extend(parse_envelopes(&text));
    }
    out
}

/// Parses every line of `text` strictly: a split or interleaved line fails.
pub fn parse_envelopes(text: &str) -> Vec<Envelope> {
    text.lines()
        .map(|line| {
            let raw: RawEnvelope<'_> =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("bad envelope line ({e}): {line:.200}"));
            Envelope {
                source: raw.source,
                kind: raw.kind,
                id: raw.id,
                received_at: raw.received_at,
                connection: raw.connection,
                for_user: raw.for_user,
                stream: raw.stream,
                payload: raw.payload.get().to_owned(),
                line: line.to_owned(),
            }
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "jsonl") {
            out.push(p);
        }
    }
}

/// Gaps between attempts: the time from each connection's end to the next one's start.
pub fn waits_between_attempts(sim: &SimHandle) -> Vec<Duration> {
    let log = sim.connections();
    log.windows(2)
        .map(|w| {
            let end = w[0].closed_at.unwrap_or(w[0].opened_at);
            w[1].opened_at.saturating_duration_since(end)
        })
        .collect()
}

/// The most attempts in any one-second window of `at`, and the time from
/// the first to the last.
pub fn busiest_second(at: &[Instant]) -> (usize, Duration) {
    let mut at = at.to_vec();
    at.sort();
    let busiest = (0..at.len())
        .map(|i| at[i..].iter().take_while(|t| **t < at[i] + Duration::from_secs(1)).count())
        .max()
        .unwrap_or(0);
    let spread = match (at.first(), at.last()) {
        (Some(a), Some(b)) => *b - *a,
        _ => Duration::ZERO,
    };
    (busiest, spread)
}

/// A free loopback port (for processes that must be told their port up front).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `bin` with `args`, run in `cwd`, without the caller's config and log environment.
pub fn command(bin: &str, args: &[&str], cwd: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(bin);
    c.args(args).current_dir(cwd).env_remove("STREAMHERD_CONFIG").env_remove("RUST_LOG");
    c
}

/// Waits for `cond` with a bound, polling every 20 ms.
pub fn wait_blocking(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn spawn(cmd: &mut std::process::Command) -> Guard {
    Guard(cmd.spawn().expect("the process starts"))
}

pub fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

pub fn wait_exit_blocking(child: &mut std::process::Child, timeout: Duration) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the child when dropped, so a failing test never leaves a service running.
pub struct Guard(pub std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Guard {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Guard {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

/// `text` without ANSI escape sequences (the pretty log format's colours),
/// so that a log's `key=value` can be matched.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Up to and including the final letter of the sequence.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
