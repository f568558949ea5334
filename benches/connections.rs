//! Many idle connections: 1,000 site-stream connections of 100 follows each
//! against a simulator in its own process. Reports streamherd's RSS per
//! connection and its idle CPU once every connection streams.
//! `cargo bench --bench connections`.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use streamherd_actors::connection::stats::ConnectionState;
use streamherd_actors::supervisor::Shutdown;

const CONNECTIONS: usize = 1000;
const FOLLOWS_PER_CONNECTION: usize = 100;
const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// Kills the simulator when the bench ends, however it ends.
struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status_kb(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that closes the command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / ticks
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    // Friends preambles and the control message at once, then silence: idle connections.
    let scenario = dir.path().join("idle.toml");
    std::fs::write(&scenario, "[then]\nsilence_after = 101\nsilence_ms = 600000\n").unwrap();
    let sim = Sim(Command::new(env!("CARGO_BIN_EXE_streamherd"))
        .args(["simulate", "--listen", &addr, "--rate", "1000", "--scenario", scenario.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("simulator starts"));
    let start = Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "simulator did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut users = std::fs::File::create(dir.path().join("users.txt")).unwrap();
    for id in 1..=(CONNECTIONS * FOLLOWS_PER_CONNECTION) {
        writeln!(users, "{}", 1_000_000 + id).unwrap();
    }
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[service]
state_dir = "{d}/state"
stats_interval_s = 0
[backoff]
max_connects_per_s = 500
[[sources]]
name = "site"
kind = "twitter.site"
base_url = "http://{addr}"
follow_file = "users.txt"
follow_limit = {FOLLOWS_PER_CONNECTION}
max_connections = {CONNECTIONS}
auth = {{ kind = "oauth1", consumer_key = "demo-consumer-key", consumer_secret = "demo-consumer-secret", token = "demo-token", token_secret = "demo-token-secret" }}
[[sinks]]
name = "archive"
kind = "file"
path = "{d}/data/{{source}}.jsonl"
fsync = "never"
"#,
            d = dir.path().display()
        ),
    )
    .unwrap();
    let me = std::process::id().to_string();
    let sim_pid = sim.0.id().to_string();
    streamherd::app::install_crypto();
    let system = actix_rt::System::new();
    system.block_on(async {
        let config = streamherd::config::load(&config, &streamherd::Registries::builtin()).unwrap();
        let rss_before = status_kb(&me, "VmRSS:");
        let started = Instant::now();
        let running = streamherd::app::start_embedded(&config, &streamherd::Registries::builtin()).await.unwrap();
        let connected = || {
            running
                .stats
                .snapshots()
                .iter()
                .filter(|s| s.state == ConnectionState::Connected && s.messages >= 101)
                .count()
        };
        while connected() < CONNECTIONS {
            assert!(started.elapsed() < Duration::from_secs(180), "only {} connected", connected());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ramp = started.elapsed();
        // Let the sink drain the friends preambles before measuring idle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_after = status_kb(&me, "VmRSS:");
        let (cpu0, sim_cpu0, t0) = (cpu_seconds(&me), cpu_seconds(&sim_pid), Instant::now());
        tokio::time::sleep(IDLE_WINDOW).await;
        let wall = t0.elapsed().as_secs_f64();
        let cpu = (cpu_seconds(&me) - cpu0) / wall * 100.0;
        let sim_cpu = (cpu_seconds(&sim_pid) - sim_cpu0) / wall * 100.0;
        let per_conn = (rss_after.saturating_sub(rss_before)) as f64 / CONNECTIONS as f64;
        println!(
            "{CONNECTIONS} site-stream connections x {FOLLOWS_PER_CONNECTION} follows, simulator in its own process:"
        );
        println!(
            "  all connected and past their preambles in {:.2} s (attempts rationed at 500/s)",
            ramp.as_secs_f64()
        );
        println!("  streamherd RSS {rss_before} kB before, {rss_after} kB after: {per_conn:.1} kB per connection");
        println!("  streamherd idle CPU over {wall:.1} s: {cpu:.2} % of one core");
        println!(
            "  simulator idle CPU over the same window: {sim_cpu:.2} % of one core; RSS {} kB",
            status_kb(&sim_pid, "VmRSS:")
        );
        running.supervisor.send(Shutdown { exit_code: 0 }).await.unwrap();
    });
    drop(sim);
}
