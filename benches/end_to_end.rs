//! End-to-end throughput across processes: `streamherd simulate` serves the
//! streams in its own process; the baseline is curl, another process, reading
//! the same stream to /dev/null; streamherd runs as its own process into a
//! file sink. Prints msgs/s of each, the ratio, streamherd's CPU per message
//! (from /proc) and, under strace when installed, its write(2) and read calls
//! per 1,000 messages. `cargo bench --bench end_to_end`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use streamherd_actors::twitter::request::{
    sign, twitter_request, Method, OAuthCredentials, TwitterEndpoint, TwitterQuery,
};
use streamherd_sim::{SimCredentials, DEMO_MASTODON_TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_streamherd");
const TWEETS: u64 = 200_000;
const STATUSES: u64 = 50_000;
/// Statuses per second the Mastodon simulator generates. Its streams follow a
/// live generator (a status is built as a JSON tree), which sustains about
/// 20,000/s on the 2-core machine; above that its broadcast lags and ends
/// the streams. So both readers are capped by this rate: the ratio shows
/// whether streamherd keeps up, and the CPU per message what it costs.
const MASTODON_RATE: u32 = 15_000;
const ROUNDS: usize = 3;
const PATIENCE: Duration = Duration::from_secs(300);

/// A child process killed when dropped.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `streamherd simulate` on its own port, every connection streaming `limit`
/// messages then ending.
fn simulator(dir: &Path, rate: u32, limit: u64) -> (Proc, String) {
    let port = free_port();
    let scenario = dir.join(format!("scenario-{port}.toml"));
    std::fs::write(&scenario, format!("[then]\nlimit = {limit}\n")).unwrap();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(BIN)
        .args(["simulate", "--listen", &addr, "--rate", &rate.to_string(), "--scenario"])
        .arg(&scenario)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the simulator starts");
    let start = Instant::now();
    while TcpStream::connect(&addr).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "the simulator did not listen");
        std::thread::sleep(Duration::from_millis(10));
    }
    (Proc(child), format!("http://{addr}"))
}

/// CPU seconds (user, system) used so far by `pid`.
fn cpu_seconds(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // utime and stime are fields 14 and 15; after the ')' they are 12 and 13 (0-based 11, 12).
    (ticks(11) / hz, ticks(12) / hz)
}

/// CPU seconds (user + system) of every child process waited for so far.
fn children_cpu() -> f64 {
    // SAFETY: getrusage writes into the struct we pass and nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(u.ru_utime) + s(u.ru_stime)
}

/// The baseline: curl reads the stream to `out` (/dev/null, or a file to
/// show what the page cache costs this machine in this round); returns its
/// wall time and its CPU seconds.
fn curl(url: &str, headers: &[String], form: Option<&str>, out: &Path) -> Option<(Duration, f64)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-N", "--max-time", "300", "-o"]).arg(out);
    for h in headers {
        cmd.arg("-H").arg(h);
    }
    if let Some(body) = form {
        cmd.arg("--data").arg(body);
    }
    cmd.arg(url);
    let (start, cpu) = (Instant::now(), children_cpu());
    let status = cmd.status().ok()?;
    // The simulator ends a limited stream by closing the connection: for a
    // chunked (Twitter) body that is a clean end, for an SSE body without a
    // length curl reports a partial transfer (18). Both read the whole stream.
    matches!(status.code(), Some(0) | Some(18)).then(|| (start.elapsed(), children_cpu() - cpu))
}

/// The OpenMetrics text of /metrics (empty when it cannot be read).
fn scrape(port: u16) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n").is_err() {
        return String::new();
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

/// The sum of the series of `family` in a scrape.
fn metric(body: &str, family: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Run {
    wall: Duration,
    /// CPU seconds (user, system) of the streamherd process.
    cpu_s: (f64, f64),
    /// `strace -c` output, when traced.
    trace: Option<String>,
    /// The most bytes the sink's disk queue held at one scrape: a sink that
    /// fell more than its `buffer` behind spilled (and wrote those bytes twice).
    spilled: f64,
}

/// streamherd as its own process with `source` (a `[[sources]]` body) into a
/// file sink; timed from its start until the sink wrote `expect` events.
fn streamherd(dir: &Path, source: &str, expect: u64, traced: bool) -> Run {
    let port = free_port();
    let out = tempfile::tempdir_in(dir).unwrap();
    let config = out.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[service]
stats_interval_s = 0
log_level = "warn"
state_dir = "{dir}/state"
[control]
listen = "127.0.0.1:{port}"
[backoff]
http_initial_ms = 60000
network_initial_ms = 60000
network_max_ms = 60000
[[sources]]
{source}
[[sinks]]
name = "archive"
kind = "file"
path = "{dir}/data/{{source}}.jsonl"
fsync = "never"
"#,
            dir = out.path().display()
        ),
    )
    .unwrap();
    let trace_file = out.path().join("strace.txt");
    let mut cmd = if traced {
        let mut c = Command::new("strace");
        c.args(["-f", "-c", "-e", "trace=write,writev,read,recvfrom,readv", "-o"]).arg(&trace_file).arg(BIN);
        c
    } else {
        Command::new(BIN)
    };
    cmd.arg("--config").arg(&config).env_remove("RUST_LOG").stdout(Stdio::null()).stderr(Stdio::null());
    let start = Instant::now();
    let mut child = Proc(cmd.spawn().expect("streamherd starts"));
    let pid = child.0.id();
    let mut said = Instant::now();
    let mut spilled = 0f64;
    loop {
        let body = scrape(port);
        spilled = spilled.max(metric(&body, "streamherd_spill_bytes"));
        let written = metric(&body, "streamherd_sink_events_total");
        if written >= expect as f64 {
            break;
        }
        if said.elapsed() > Duration::from_secs(10) {
            eprintln!("  ... {written} of {expect} written after {:?}", start.elapsed());
            said = Instant::now();
        }
        assert!(start.elapsed() < PATIENCE, "streamherd did not write {expect} events");
        assert!(child.0.try_wait().unwrap().is_none(), "streamherd exited");
        std::thread::sleep(Duration::from_millis(5));
    }
    let wall = start.elapsed();
    // Under strace the pid is strace's; streamherd is its child.
    let cpu_s = if traced { (0.0, 0.0) } else { cpu_seconds(pid) };
    // Under strace, streamherd is strace's child: stopping it ends strace too.
    let target = if traced { children(pid).first().copied().unwrap_or(pid) } else { pid };
    // SAFETY: kill(2) on our own child (or its child).
    unsafe {
        libc::kill(target as i32, libc::SIGTERM);
    }
    let _ = child.0.wait();
    let trace = traced.then(|| std::fs::read_to_string(&trace_file).unwrap_or_default());
    Run { wall, cpu_s, trace, spilled }
}

/// The child processes of `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// `calls` of `syscall` in an `strace -c` summary.
fn calls(trace: &str, syscall: &str) -> u64 {
    trace
        .lines()
        .filter(|l| l.split_whitespace().last() == Some(syscall))
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // % time, seconds, usecs/call, calls, [errors], syscall
            cols.get(3)?.parse::<u64>().ok()
        })
        .sum()
}

/// The median run's CPU (by total) per message, in µs of user and system time.
fn per_message(mut cpu: Vec<(f64, f64)>, messages: u64) -> (f64, f64) {
    cpu.sort_by(|a, b| (a.0 + a.1).total_cmp(&(b.0 + b.1)));
    let (user, sys) = cpu[cpu.len() / 2];
    (user * 1e6 / messages as f64, sys * 1e6 / messages as f64)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn has(tool: &str) -> bool {
    Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

fn twitter(dir: &Path) {
    let (_sim, base) = simulator(dir, 0, TWEETS);
    let d = SimCredentials::demo();
    let creds = OAuthCredentials {
        consumer_key: d.consumer_key.clone(),
        consumer_secret: d.consumer_secret.clone(),
        token: d.token.clone(),
        token_secret: d.token_secret.clone(),
    };
    let query = TwitterQuery { track: vec!["bench".into()], ..TwitterQuery::default() };
    let source = format!(
        "name = \"bench\"\nkind = \"twitter.filter\"\nbase_url = \"{base}\"\ntrack = [\"bench\"]\nauth = {{ kind = \"oauth1\", consumer_key = \"{}\", consumer_secret = \"{}\", token = \"{}\", token_secret = \"{}\" }}",
        d.consumer_key, d.consumer_secret, d.token, d.token_secret
    );
    let (mut base_runs, mut ours, mut cpu, mut file_runs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut base_cpu, mut file_cpu, mut spills) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        // Signed afresh each round: the simulator refuses a replayed nonce.
        let signed = sign(&twitter_request(TwitterEndpoint::Filter, &base, &query), &creds);
        assert!(matches!(signed.method, Method::Post));
        let auth = format!("Authorization: {}", signed.authorization);
        match curl(&signed.url, std::slice::from_ref(&auth), signed.body.as_deref(), Path::new("/dev/null")) {
            Some((d, c)) => {
                base_runs.push(d);
                base_cpu.push(c);
            }
            None => {
                println!("twitter.filter: curl failed or is not installed; no baseline");
                return;
            }
        }
        let signed = sign(&twitter_request(TwitterEndpoint::Filter, &base, &query), &creds);
        let auth = format!("Authorization: {}", signed.authorization);
        let file = dir.join("curl.out");
        if let Some((d, c)) = curl(&signed.url, &[auth], signed.body.as_deref(), &file) {
            file_runs.push(d);
            file_cpu.push(c);
        }
        let _ = std::fs::remove_file(&file);
        let run = streamherd(dir, &source, TWEETS, false);
        println!(
            "  round {}: streamherd {:.0} msgs/s, {:.2} us CPU/msg ({:.2} system), spilled at most {:.1} MB",
            ours.len() + 1,
            rate(TWEETS, run.wall),
            (run.cpu_s.0 + run.cpu_s.1) * 1e6 / TWEETS as f64,
            run.cpu_s.1 * 1e6 / TWEETS as f64,
            run.spilled / 1e6
        );
        ours.push(run.wall);
        cpu.push(run.cpu_s);
        spills.push(run.spilled);
    }
    let (b, o) = (median(base_runs), median(ours));
    let (user_us, sys_us) = per_message(cpu, TWEETS);
    println!("twitter.filter, {TWEETS} tweets, median of {ROUNDS} rounds, simulator in its own process:");
    let us_per_msg = |c: Vec<f64>| median_f64(c) * 1e6 / TWEETS as f64;
    println!(
        "  baseline curl -> /dev/null        {:>10.0} msgs/s, curl's CPU {:.2} us/msg",
        rate(TWEETS, b),
        us_per_msg(base_cpu)
    );
    if !file_runs.is_empty() {
        let f = median(file_runs);
        println!(
            "  curl -> file (the page cache here) {:>10.0} msgs/s, curl's CPU {:.2} us/msg",
            rate(TWEETS, f),
            us_per_msg(file_cpu)
        );
        println!("  ratio streamherd / curl -> file    {:>10.2}", f.as_secs_f64() / o.as_secs_f64());
    }
    println!("  streamherd -> file (fsync never)  {:>10.0} msgs/s", rate(TWEETS, o));
    println!("  ratio streamherd / curl            {:>10.2}", b.as_secs_f64() / o.as_secs_f64());
    println!(
        "  streamherd CPU per message         {:>10.2} us ({user_us:.2} user + {sys_us:.2} system, startup included)",
        user_us + sys_us
    );
    println!(
        "  sink fell behind its buffer        {} of {ROUNDS} rounds (most spilled at a scrape: {:.1} MB)",
        spills.iter().filter(|&&b| b > 0.0).count(),
        spills.iter().copied().fold(0.0, f64::max) / 1e6
    );
    if has("strace") {
        let run = streamherd(dir, &source, TWEETS, true);
        let trace = run.trace.unwrap_or_default();
        let per_k = |n: u64| n as f64 * 1000.0 / TWEETS as f64;
        let writes = calls(&trace, "write") + calls(&trace, "writev");
        let reads = calls(&trace, "read") + calls(&trace, "recvfrom") + calls(&trace, "readv");
        println!(
            "  under strace: write(2)+writev {writes} ({:.1} per 1,000 msgs), read+recvfrom {reads} ({:.1} per 1,000 msgs)",
            per_k(writes),
            per_k(reads)
        );
    }
}

fn mastodon(dir: &Path) {
    let (_sim, base) = simulator(dir, MASTODON_RATE, STATUSES);
    let auth = format!("Authorization: Bearer {DEMO_MASTODON_TOKEN}");
    let source = |transport: &str| {
        format!(
            "name = \"fedi\"\nkind = \"mastodon\"\nbase_url = \"{base}\"\ntransport = \"{transport}\"\nstreams = [\"public\"]\nauth = {{ kind = \"bearer\", token = \"{DEMO_MASTODON_TOKEN}\" }}"
        )
    };
    let (mut base_runs, mut sse, mut ws) = (Vec::new(), Vec::new(), Vec::new());
    let (mut sse_cpu, mut ws_cpu) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        match curl(
            &format!("{base}/api/v1/streaming/public"),
            std::slice::from_ref(&auth),
            None,
            Path::new("/dev/null"),
        ) {
            Some((d, _)) => base_runs.push(d),
            None => {
                println!("mastodon: curl failed or is not installed; no baseline");
                return;
            }
        }
        let run = streamherd(dir, &source("sse"), STATUSES, false);
        sse.push(run.wall);
        sse_cpu.push(run.cpu_s);
        let run = streamherd(dir, &source("websocket"), STATUSES, false);
        ws.push(run.wall);
        ws_cpu.push(run.cpu_s);
    }
    let (b, s, w) = (median(base_runs), median(sse), median(ws));
    println!("mastodon public, {STATUSES} statuses generated at up to {MASTODON_RATE}/s, median of {ROUNDS} rounds:");
    println!("  baseline curl SSE -> /dev/null    {:>10.0} msgs/s", rate(STATUSES, b));
    println!(
        "  streamherd SSE -> file            {:>10.0} msgs/s  ratio {:.2}",
        rate(STATUSES, s),
        b.as_secs_f64() / s.as_secs_f64()
    );
    println!(
        "  streamherd WebSocket -> file      {:>10.0} msgs/s  ratio {:.2} (against the SSE baseline)",
        rate(STATUSES, w),
        b.as_secs_f64() / w.as_secs_f64()
    );
    for (name, cpu) in [("SSE", sse_cpu), ("WebSocket", ws_cpu)] {
        let (user, sys) = per_message(cpu, STATUSES);
        println!("  streamherd {name} CPU per message   {:>7.2} us ({user:.2} user + {sys:.2} system)", user + sys);
    }
}

fn main() {
    // `cargo test --benches` runs bench binaries with --test: keep that quick.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let only = std::env::var("STREAMHERD_BENCH").unwrap_or_default();
    if only.is_empty() || only == "twitter" {
        twitter(dir.path());
    }
    if only.is_empty() || only == "mastodon" {
        mastodon(dir.path());
    }
}
