//! The delivery guarantee end to end, with a sink whose writes are really
//! held: the file sink writes into a FIFO that the test reads only when it
//! frees the sink. A held sink spills to disk while the connection reads at
//! the server's rate; the spill is replayed once, in order, also after a
//! restart; a torn spill tail is cut with an ERROR line and a gap event; and
//! a SIGKILL while a Mastodon sink is held loses no status, because resume
//! positions only advance past what a sink wrote.

mod common;

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use common::*;
use streamherd_actors::metrics::Metrics;
use streamherd_sim::{AttemptScript, Scenario, SimHandle};

const BIN: &str = env!("CARGO_BIN_EXE_streamherd");
const T: Duration = Duration::from_secs(30);

/// A named pipe the file sink writes into. The test keeps a non-blocking read
/// end open from the start, so the pipe (and what is in it) outlives a killed
/// writer, and reads it only when it frees the sink: until then the sink's
/// write(2) blocks once the 64 KiB pipe buffer is full.
struct Fifo {
    reader: File,
}

impl Fifo {
    fn create(path: PathBuf) -> Fifo {
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
        let reader = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&path).expect("open the fifo");
        Fifo { reader }
    }

    /// Appends what the pipe holds now to `out`; true at end of file (no
    /// writer has it open any more).
    fn read_now(&mut self, out: &mut Vec<u8>) -> bool {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("reading the fifo: {e}"),
            }
        }
    }

    /// Frees the sink: a thread reads the pipe into the returned buffer until
    /// the writer closes it (bounded by `T`).
    fn drain(mut self) -> (Arc<Mutex<Vec<u8>>>, std::thread::JoinHandle<()>) {
        let out = Arc::new(Mutex::new(Vec::new()));
        let shared = out.clone();
        let thread = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let mut chunk = Vec::new();
            loop {
                let eof = self.read_now(&mut chunk);
                shared.lock().unwrap_or_else(PoisonError::into_inner).append(&mut chunk);
                if eof || start.elapsed() > T * 2 {
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        (out, thread)
    }
}

impl Fifo {
    /// A slow sink: a thread reads at most `per_tick` bytes every `tick`
    /// until the writer closes the pipe (bounded by `T`).
    fn drain_slowly(mut self, per_tick: usize, tick: Duration) -> (Arc<Mutex<Vec<u8>>>, std::thread::JoinHandle<()>) {
        let out = Arc::new(Mutex::new(Vec::new()));
        let shared = out.clone();
        let thread = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let mut buf = vec![0u8; per_tick];
            let mut seen = false;
            while start.elapsed() < T * 2 {
                match self.reader.read(&mut buf) {
                    // End of file once the writer that wrote has gone (before
                    // it opened the pipe, no writer reads as end of file too).
                    Ok(0) if seen => return,
                    Ok(0) => {}
                    Ok(n) => {
                        seen = true;
                        shared.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(&buf[..n]);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => panic!("reading the fifo: {e}"),
                }
                std::thread::sleep(tick);
            }
        });
        (out, thread)
    }
}

/// What a killed writer left in the pipe, without its last partial line
/// (that event was not acknowledged, so it is not counted as written).
fn whole_lines(fifo: &mut Fifo) -> Vec<Envelope> {
    let mut bytes = Vec::new();
    assert!(fifo.read_now(&mut bytes), "the killed writer closed the fifo");
    bytes.truncate(bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1));
    parse_envelopes(std::str::from_utf8(&bytes).unwrap())
}

fn lines(bytes: &Mutex<Vec<u8>>) -> usize {
    bytes.lock().unwrap_or_else(PoisonError::into_inner).iter().filter(|b| **b == b'\n').count()
}

fn text(bytes: &Mutex<Vec<u8>>) -> String {
    String::from_utf8(bytes.lock().unwrap_or_else(PoisonError::into_inner).clone()).expect("utf-8 output")
}

/// Messages streamherd read, over all its connections.
fn read_total(running: &streamherd::app::Running) -> u64 {
    running.stats.snapshots().iter().map(|s| s.messages).sum()
}

fn sink_written(running: &streamherd::app::Running) -> u64 {
    running.metrics.sink_events_total.get_or_create(&Metrics::sink("archive")).get()
}

fn spill_bytes(running: &streamherd::app::Running) -> i64 {
    running.metrics.spill_bytes.get_or_create(&Metrics::sink("archive")).get()
}

/// The payloads the simulator sent on `attempt`, in order.
fn sent_on(sim: &SimHandle, attempt: u64) -> Vec<String> {
    sim.sent().iter().filter(|m| m.attempt == attempt).map(|m| String::from_utf8(m.payload.to_vec()).unwrap()).collect()
}

/// Payloads of the non-gap events, in the order written.
fn payloads(envs: &[Envelope]) -> Vec<String> {
    envs.iter().filter(|e| e.kind != "gap").map(|e| e.payload.clone()).collect()
}

/// `n` messages on the first connection, then a connection that stays silent.
fn limited(n: u64) -> Scenario {
    Scenario {
        attempts: vec![AttemptScript { limit: Some(n), ..Default::default() }],
        then: AttemptScript { silence_after: Some(0), silence_ms: 600_000, ..Default::default() },
    }
}

/// A filter source into a file sink writing into `fifo` (as `{dir}/hold.fifo`).
fn held_config(sim: &SimHandle) -> TestConfig {
    Conf::new()
        .twitter("filter", "twitter.filter", sim, "track = [\"spill\"]")
        .sink("name = \"archive\"\nkind = \"file\"\npath = \"{dir}/hold.fifo\"\nfsync = \"never\"\nbuffer = 256")
        .write()
}

/// Points the sink of `cfg` at ordinary files instead of the fifo.
fn free_the_sink(cfg: &TestConfig) {
    let text = std::fs::read_to_string(&cfg.path).unwrap();
    let fifo = cfg.dir.path().join("hold.fifo");
    let data = cfg.dir.path().join("data/{source}.jsonl");
    let text = text.replace(fifo.to_str().unwrap(), data.to_str().unwrap());
    std::fs::write(&cfg.path, text).unwrap();
}

#[actix_rt::test]
async fn a_sink_held_for_10_s_at_2000_msgs_spills_and_the_connection_reads_at_full_rate() {
    let sim = start_sim(limited(20_000), 2_000, 1000).await;
    let cfg = held_config(&sim);
    let fifo = Fifo::create(cfg.dir.path().join("hold.fifo"));
    let running = start_service(&cfg).await;
    wait_for(T, "the simulator to send 20,000 at 2,000/s", || {
        sim.connections().first().is_some_and(|c| c.closed_at.is_some())
    })
    .await;
    wait_for(T, "streamherd to read all 20,000", || read_total(&running) >= 20_000).await;
    // The sink was held all along: most of it went to the spill.
    assert!(sink_written(&running) < 2_000, "the sink was held, yet wrote {}", sink_written(&running));
    assert!(spill_bytes(&running) > 20 << 20, "spilled {} bytes", spill_bytes(&running));

    let conns = sim.connections();
    let first = &conns[0];
    assert_eq!((first.messages_sent, first.end.as_str()), (20_000, "limit"), "{first:?}");
    let took = first.closed_at.unwrap() - first.opened_at;
    // 20,000 at 2,000/s is 10 s. A reader held with its sink would have
    // filled the socket buffers within a second and kept the server waiting
    // until the sink was freed, after this; the slack is for a loaded machine.
    assert!(took < Duration::from_millis(12_000), "the server needed {took:?} for 20,000 messages");
    assert!(
        conns.iter().skip(1).all(|c| c.opened_at >= first.closed_at.unwrap()),
        "no reconnect while the sink was held"
    );

    let (out, reader) = fifo.drain();
    wait_for(T, "the spill replayed into the freed sink", || lines(&out) >= 20_000).await;
    wait_for(T, "the spill to empty", || spill_bytes(&running) == 0).await;
    stop_service(&running).await;
    reader.join().unwrap();
    let envs = parse_envelopes(&text(&out));
    assert_eq!(payloads(&envs), sent_on(&sim, 0), "every message once, in the order sent");
    assert!(envs.iter().all(|e| e.connection == "filter/0"));
    assert!(
        std::fs::read_dir(cfg.dir.path().join("state/spill/archive")).unwrap().count() <= 2,
        "replayed segments are deleted"
    );
}

#[actix_rt::test]
async fn a_restart_mid_spill_replays_the_rest_before_new_events() {
    let sim = start_sim(limited(5_000), 0, 1000).await;
    let cfg = held_config(&sim);
    let fifo = Fifo::create(cfg.dir.path().join("hold.fifo"));
    let running = start_service(&cfg).await;
    wait_for(T, "5,000 read", || read_total(&running) >= 5_000).await;
    wait_for(T, "the spill to hold them", || spill_bytes(&running) > 0).await;
    // The stop waits for the held write, so the sink is freed while it runs.
    let stopping = actix_rt::spawn(async move {
        stop_service(&running).await;
        running
    });
    let (out, reader) = fifo.drain();
    let running = tokio::time::timeout(T, stopping).await.expect("the stop finishes").unwrap();
    reader.join().unwrap();
    let before = parse_envelopes(&text(&out));
    let spilled = spill_bytes(&running);
    assert!(before.len() < 5_000 && spilled > 0, "{} written before the stop, {spilled} bytes left", before.len());

    let first_run = sent_on(&sim, 0);
    assert_eq!(first_run.len(), 5_000);
    sim.set_scenario(limited(100));
    free_the_sink(&cfg);
    let running = start_service(&cfg).await;
    let rest = 5_000 - before.len() as u64;
    wait_for(T, "the rest and the new events written", || sink_written(&running) >= rest + 100).await;
    stop_service(&running).await;
    let after = read_envelopes(&cfg.data());
    let mut all = payloads(&before);
    all.extend(payloads(&after));
    // Attempt numbers restart with the new script, so the log now holds both
    // runs' attempt 0, the first run's first.
    let new = sent_on(&sim, 0).split_off(5_000);
    assert_eq!(new.len(), 100, "the new connection sent 100");
    assert_eq!(all.len(), 5_100, "every message once");
    assert_eq!(all[..5_000], first_run[..], "the first run's messages in order, the spill's rest first");
    assert_eq!(all[5_000..], new[..], "then the new events");
}

/// Polls the control API's /health until `ok(status, body)`, bounded by `T`;
/// the body it accepted.
async fn wait_health(port: u16, what: &str, ok: impl Fn(u16, &serde_json::Value) -> bool) -> serde_json::Value {
    let client = awc::Client::builder().timeout(Duration::from_secs(5)).finish();
    let start = std::time::Instant::now();
    loop {
        let mut last = None;
        if let Ok(mut resp) = client.get(format!("http://127.0.0.1:{port}/health")).send().await {
            let status = resp.status().as_u16();
            if let Ok(body) = resp.json::<serde_json::Value>().await {
                if ok(status, &body) {
                    return body;
                }
                last = Some((status, body));
            }
        }
        assert!(start.elapsed() < T, "timed out waiting for {what}; /health said {last:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `name{labels} value` lines of the control API's /metrics, summed over the
/// series of `family` whose labels contain `filter`.
async fn metric(port: u16, family: &str, filter: &str) -> f64 {
    let client = awc::Client::builder().timeout(Duration::from_secs(5)).finish();
    let Ok(mut resp) = client.get(format!("http://127.0.0.1:{port}/metrics")).send().await else { return 0.0 };
    let body = resp.body().limit(16 << 20).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_metric(port: u16, family: &str, filter: &str, at_least: f64, child: &mut Guard) {
    let start = std::time::Instant::now();
    loop {
        if metric(port, family, filter).await >= at_least {
            return;
        }
        assert!(child.0.try_wait().unwrap().is_none(), "streamherd exited early");
        assert!(start.elapsed() < T, "timed out waiting for {family}{{{filter}}} >= {at_least}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_exit(child: &mut Guard) -> i32 {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(start.elapsed() < T, "streamherd did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The binary, run in `dir` with its log in `log`.
fn run(dir: &Path, log: &str) -> Guard {
    let log = File::create(dir.join(log)).unwrap();
    spawn(command(BIN, &[], dir).stdout(Stdio::null()).stderr(log))
}

/// `[control]` on `port` in front of `conf`, written to `dir/config.toml`.
fn write_process_config(dir: &Path, conf: Conf, port: u16) {
    conf.table(&format!("[control]\nlisten = \"127.0.0.1:{port}\"")).write_to(dir);
}

fn fifo_sink(dir: &Path) -> String {
    format!(
        "name = \"archive\"\nkind = \"file\"\npath = \"{}\"\nfsync = \"never\"\nbuffer = 16",
        dir.join("hold.fifo").display()
    )
}

fn file_sink(dir: &Path) -> String {
    format!(
        "name = \"archive\"\nkind = \"file\"\npath = \"{}/data/{{source}}.jsonl\"\nfsync = \"never\"",
        dir.display()
    )
}

#[actix_rt::test]
async fn sigkill_while_a_mastodon_sink_is_held_loses_no_status() {
    let sim = start_sim(Scenario::default(), 0, 1000).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = |sink: String| Conf::new().mastodon("fedi", &sim, "sse", &["public"], "").sink(&sink);
    write_process_config(dir.path(), conf(fifo_sink(dir.path())), port);
    let mut fifo = Fifo::create(dir.path().join("hold.fifo"));
    let mut child = run(dir.path(), "first.log");
    wait_metric(port, "streamherd_connections", "state=\"connected\"", 1.0, &mut child).await;
    let published: Vec<String> = sim.mastodon_publish(300).into_iter().map(|p| p.id).collect();
    wait_metric(port, "streamherd_events_total", "source=\"fedi\"", 300.0, &mut child).await;
    let written = metric(port, "streamherd_sink_events_total", "sink=\"archive\"").await;
    assert!(written < 300.0, "the sink was held, yet wrote {written}");
    signal(&child.0, libc::SIGKILL);
    wait_exit(&mut child).await;
    let first = whole_lines(&mut fifo);

    write_process_config(dir.path(), conf(file_sink(dir.path())), port);
    let mut child = run(dir.path(), "second.log");
    let data = dir.path().join("data");
    let ids = |envs: &[Envelope]| -> Vec<String> {
        envs.iter().filter(|e| e.kind == "update").filter_map(|e| e.id.clone()).collect()
    };
    let start = std::time::Instant::now();
    loop {
        let have: BTreeSet<String> = ids(&first).into_iter().chain(ids(&read_envelopes_so_far(&data))).collect();
        if published.iter().all(|id| have.contains(id)) {
            break;
        }
        assert!(child.0.try_wait().unwrap().is_none(), "streamherd exited early");
        if start.elapsed() > T {
            let missing: Vec<&String> = published.iter().filter(|id| !have.contains(*id)).collect();
            let log = std::fs::read_to_string(dir.path().join("second.log")).unwrap_or_default();
            let state = std::fs::read_to_string(dir.path().join("state/fedi/mastodon.json")).unwrap_or_default();
            panic!("{} of 300 written after the restart; missing {missing:?}; state {state}; log:\n{log}", have.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&child.0, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child).await, 0);
    let mut all = ids(&first);
    all.extend(ids(&read_envelopes(&data)));
    let distinct: BTreeSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), 300, "every published status, nothing else");
    eprintln!(
        "sigkill with a held sink: {} written before the kill, {} after, {} duplicates",
        ids(&first).len(),
        all.len() - ids(&first).len(),
        all.len() - 300
    );
}

#[actix_rt::test]
async fn a_torn_spill_tail_is_cut_with_an_error_line_and_a_gap_event() {
    let sim = start_sim(limited(3_000), 0, 1000).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = |sink: String| Conf::new().twitter("filter", "twitter.filter", &sim, "track = [\"x\"]").sink(&sink);
    write_process_config(dir.path(), conf(fifo_sink(dir.path())), port);
    let mut fifo = Fifo::create(dir.path().join("hold.fifo"));
    let mut child = run(dir.path(), "first.log");
    wait_metric(port, "streamherd_events_total", "source=\"filter\"", 3_000.0, &mut child).await;
    wait_metric(port, "streamherd_spill_bytes", "sink=\"archive\"", 1.0, &mut child).await;
    // Read is not yet spilled: the kill waits until the spill stops growing.
    let start = std::time::Instant::now();
    let mut last = metric(port, "streamherd_spill_bytes", "sink=\"archive\"").await;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = metric(port, "streamherd_spill_bytes", "sink=\"archive\"").await;
        if now == last {
            break;
        }
        assert!(start.elapsed() < T, "the spill kept growing");
        last = now;
    }
    signal(&child.0, libc::SIGKILL);
    wait_exit(&mut child).await;
    let first = whole_lines(&mut fifo);

    // A torn write: the last record of the newest segment loses its end.
    let spill = dir.path().join("state/spill/archive");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&spill)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    let last = segments.last().expect("a spill segment");
    let len = std::fs::metadata(last).unwrap().len();
    OpenOptions::new().write(true).open(last).unwrap().set_len(len - 7).unwrap();

    write_process_config(dir.path(), conf(file_sink(dir.path())), port);
    let mut child = run(dir.path(), "second.log");
    let data = dir.path().join("data");
    let start = std::time::Instant::now();
    while !read_envelopes_so_far(&data).iter().any(|e| e.kind == "gap") {
        assert!(child.0.try_wait().unwrap().is_none(), "streamherd exited early");
        assert!(start.elapsed() < T, "no gap event after the restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&child.0, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child).await, 0);
    let log = std::fs::read_to_string(dir.path().join("second.log")).unwrap();
    let error = log.lines().find(|l| l.contains("spill file is damaged")).unwrap_or_else(|| panic!("{log}"));
    assert!(error.contains("ERROR"), "{error}");

    let after = read_envelopes(&data);
    let gaps: Vec<serde_json::Value> =
        after.iter().filter(|e| e.kind == "gap").map(|e| serde_json::from_str(&e.payload).unwrap()).collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(gaps[0]["reason"], "spill_corrupt");
    assert_eq!(gaps[0]["complete"], false);
    assert!(gaps[0]["bytes_cut"].as_u64().unwrap() > 0);
    // The killed run wrote a prefix of what was sent; the few events queued
    // in memory at the kill are gone (Twitter cannot send them again); the
    // spill comes back in order up to the torn record, the one loss inside it.
    assert_eq!(after.last().unwrap().kind, "gap", "the gap follows the events it describes");
    let sent = sent_on(&sim, 0);
    let first = payloads(&first);
    let after = payloads(&after);
    assert_eq!(first[..], sent[..first.len()]);
    let resumed = sent.iter().position(|p| *p == after[0]).expect("replayed events were sent");
    assert!(resumed >= first.len() && resumed - first.len() <= 32, "{} lost from memory", resumed - first.len());
    assert_eq!(after[..], sent[resumed..2_999], "the spill up to the torn record, in order");
    eprintln!(
        "torn spill tail: {} written before the kill, {} lost from memory, 1 torn",
        first.len(),
        resumed - first.len()
    );
}

#[actix_rt::test]
async fn a_full_spill_holds_the_stream_back_and_degrades_health() {
    let sim = start_sim(limited(5_000), 0, 1000).await;
    let port = free_port();
    let cfg = Conf::new()
        .table(&format!("[control]\nlisten = \"127.0.0.1:{port}\""))
        .twitter("filter", "twitter.filter", &sim, "track = [\"spill\"]")
        .sink("name = \"archive\"\nkind = \"file\"\npath = \"{dir}/hold.fifo\"\nfsync = \"never\"\nbuffer = 16\nspill_max_bytes = 1000000")
        .write();
    let fifo = Fifo::create(cfg.dir.path().join("hold.fifo"));
    let running = start_service(&cfg).await;
    let degraded = wait_health(port, "the full spill in /health", |status, body| {
        status == 503 && body["reasons"].to_string().contains("spill is full")
    })
    .await;
    assert_eq!(degraded["status"], "degraded", "{degraded}");
    // At the limit the stream waits: far fewer than 5,000 were read.
    assert!(read_total(&running) < 5_000, "read {} with a full spill", read_total(&running));
    let (out, reader) = fifo.drain();
    wait_for(T, "everything written once the sink is free", || lines(&out) >= 5_000).await;
    wait_health(port, "/health to recover", |status, _| status == 200).await;
    stop_service(&running).await;
    reader.join().unwrap();
    assert_eq!(payloads(&parse_envelopes(&text(&out))), sent_on(&sim, 0), "nothing lost, in order");
}

#[actix_rt::test]
async fn a_full_disk_degrades_health_spills_and_loses_nothing() {
    // The archive's path is a symlink to /dev/full: every write(2) fails
    // with ENOSPC, as on a full disk. The spill (state_dir) has room.
    let sim = start_sim(limited(2_000), 1_000, 1000).await;
    let port = free_port();
    let cfg = Conf::new()
        .table(&format!("[control]\nlisten = \"127.0.0.1:{port}\""))
        .twitter("filter", "twitter.filter", &sim, "track = [\"full\"]")
        .sink("name = \"archive\"\nkind = \"file\"\npath = \"{dir}/out/archive.jsonl\"\nfsync = \"never\"\nbuffer = 64\nspill_after_ms = 0")
        .write();
    let out = cfg.dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let archive = out.join("archive.jsonl");
    std::os::unix::fs::symlink("/dev/full", &archive).unwrap();
    let running = start_service(&cfg).await;
    let degraded = wait_health(port, "/health to name the full disk", |status, body| {
        status == 503 && body["reasons"].to_string().contains("sink archive")
    })
    .await;
    assert_eq!(degraded["status"], "degraded", "{degraded}");
    assert!(degraded["reasons"].to_string().contains("No space left on device"), "{degraded}");
    wait_for(T, "the overflow to go to the spill", || spill_bytes(&running) > 0).await;
    // The stream reads on at the server's rate while the disk is full.
    wait_for(T, "all 2,000 read", || read_total(&running) >= 2_000).await;
    assert_eq!(running.metrics.sink_dropped_total.get_or_create(&Metrics::sink("archive")).get(), 0);

    // Room again: the path becomes an ordinary file.
    std::fs::remove_file(&archive).unwrap();
    wait_for(T, "everything written once the disk has room", || sink_written(&running) >= 2_000).await;
    wait_health(port, "/health to recover", |status, _| status == 200).await;
    stop_service(&running).await;
    let envs = parse_envelopes(&std::fs::read_to_string(&archive).unwrap());
    let (got, sent) = (payloads(&envs), sent_on(&sim, 0));
    let first_difference = got.iter().zip(&sent).position(|(a, b)| a != b);
    assert!(
        got == sent,
        "every message once, in order: {} written, {} sent, first difference at {first_difference:?}",
        got.len(),
        sent.len()
    );
    assert_eq!(running.metrics.sink_dropped_total.get_or_create(&Metrics::sink("archive")).get(), 0);
}

#[actix_rt::test]
async fn a_stop_drains_for_stop_timeout_s_and_keeps_the_rest_in_the_spill() {
    const N: u64 = 20_000;
    let sim = start_sim(limited(N), 0, 1000).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // A slow sink: 20,000 tweets (88 MB) at 25 MB/s take 3.5 s to drain,
    // and all of them fit its memory queue.
    let slow = format!(
        "name = \"archive\"\nkind = \"file\"\npath = \"{}\"\nfsync = \"never\"\nbuffer = 100000",
        dir.path().join("hold.fifo").display()
    );
    let conf = |sink: &str| {
        Conf::new()
            .service("stop_timeout_s = 0.5")
            .twitter("filter", "twitter.filter", &sim, "track = [\"stop\"]")
            .sink(sink)
    };
    write_process_config(dir.path(), conf(&slow), port);
    let fifo = Fifo::create(dir.path().join("hold.fifo"));
    let (out, reader) = fifo.drain_slowly(256 << 10, Duration::from_millis(10));
    let mut child = run(dir.path(), "first.log");
    let start = std::time::Instant::now();
    while metric(port, "streamherd_events_total", "source=\"filter\"").await < N as f64 {
        assert!(child.0.try_wait().unwrap().is_none(), "streamherd exited early");
        if start.elapsed() > T {
            let log = std::fs::read_to_string(dir.path().join("first.log")).unwrap_or_default();
            let read = metric(port, "streamherd_events_total", "source=\"filter\"").await;
            panic!("read {read} of {N}; log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let written = metric(port, "streamherd_sink_events_total", "sink=\"archive\"").await;
    assert!(written < N as f64 / 2.0, "the sink is slow, yet wrote {written} of {N}");
    let stopped_at = std::time::Instant::now();
    signal(&child.0, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child).await, 0);
    let took = stopped_at.elapsed();
    reader.join().unwrap();
    let log = std::fs::read_to_string(dir.path().join("first.log")).unwrap();
    // 0.5 s of draining, then the rest goes to the spill. The slack is for the
    // write(2) in progress (at most 4 MiB: 0.2 s here) and a loaded machine;
    // draining everything would take 3.5 s.
    assert!(took < Duration::from_millis(2_000), "the stop took {took:?} with stop_timeout_s = 0.5; log:\n{log}");
    let kept_line = log.lines().find(|l| l.contains("stop_timeout_s passed")).unwrap_or_else(|| panic!("{log}"));
    let before = parse_envelopes(&text(&out));
    let spilled: u64 = kept_line
        .split_whitespace()
        .find_map(|w| strip_ansi(w).strip_prefix("spill_bytes=")?.parse().ok())
        .unwrap_or_else(|| panic!("no spill size in {kept_line}"));
    assert!(spilled > 0 && (before.len() as u64) < N, "{} written, {spilled} bytes kept: {kept_line}", before.len());
    eprintln!("stop with a slow sink: {took:?}, {} written before it, {spilled} bytes kept in the spill", before.len());

    // The next start writes the rest first.
    write_process_config(dir.path(), conf(&file_sink(dir.path())), port);
    let mut child = run(dir.path(), "second.log");
    let rest = N as usize - before.len();
    wait_metric(port, "streamherd_sink_events_total", "sink=\"archive\"", rest as f64, &mut child).await;
    signal(&child.0, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child).await, 0);
    let mut all = payloads(&before);
    all.extend(payloads(&read_envelopes(&dir.path().join("data"))));
    let sent = sent_on(&sim, 0);
    assert!(all == sent, "every message once, in order: {} written of {} sent", all.len(), sent.len());
}
