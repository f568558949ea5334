//! The examples are real binaries built on `streamherd::cli::main`: the
//! `sse` source kind of examples/custom_source.rs against a small SSE server
//! (every event once across a forced reconnect, the right `Last-Event-ID`,
//! the position kept across a restart), and the `counter` sink of
//! examples/custom_sink.rs fed by the embedded simulator.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

/// An example binary, built by `cargo test` next to the service binary.
fn example(name: &str) -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_streamherd"));
    let path: PathBuf = bin.parent().expect("a target dir").join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo test` (it builds the examples) or `cargo build --examples`",
        path.display()
    );
    path.display().to_string()
}

/// What one connection to the SSE server asked for.
#[derive(Debug, Clone)]
struct Request {
    last_event_id: Option<String>,
}

/// An SSE server: connection `n` gets the events of `script[n]` (ids and
/// JSON data), then is cut off abruptly or, when its flag says so, stays
/// open with heartbeats.
fn sse_server(script: Vec<(std::ops::Range<u64>, bool)>) -> (u16, Arc<Mutex<Vec<Request>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { return };
            let (events, stay_open) = script.get(n).cloned().unwrap_or((0..0, true));
            let log = log.clone();
            std::thread::spawn(move || serve(stream, events, stay_open, &log));
        }
    });
    (port, seen)
}

fn serve(mut stream: TcpStream, events: std::ops::Range<u64>, stay_open: bool, log: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut last_event_id = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("last-event-id") {
                last_event_id = Some(value.trim().to_owned());
            }
        }
    }
    log.lock().unwrap().push(Request { last_event_id });
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
    let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());
    let mut body = String::from(head);
    body.push_str(&chunk(":hello\n\n"));
    for id in events {
        body.push_str(&chunk(&format!("id: {id}\nevent: message\ndata: {{\"n\":{id}}}\n\n")));
    }
    if stream.write_all(body.as_bytes()).is_err() || !stay_open {
        // Cut off without the last chunk: the client must reconnect.
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return;
    }
    while stream.write_all(chunk(":beat\n\n").as_bytes()).is_ok() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sse_config(dir: &Path, port: u16) -> PathBuf {
    let url = format!("url = \"http://127.0.0.1:{port}/v2/stream/recentchange\"");
    Conf::new().source("wiki", "sse", &url).file_sink("").write_to(dir)
}

fn written_ids(dir: &Path) -> Vec<String> {
    read_envelopes_so_far(&dir.join("data")).into_iter().map(|e| e.id.unwrap_or_default()).collect()
}

#[test]
fn the_sse_source_resumes_with_last_event_id_and_writes_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let (port, requests) = sse_server(vec![(1..51, false), (51..121, true), (121..131, true)]);
    let config = sse_config(dir.path(), port);
    let bin = example("custom_source");

    let check = command(&bin, &["check", "--config", config.to_str().unwrap()], dir.path()).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    assert!(String::from_utf8_lossy(&check.stdout).contains("wiki (sse at http://127.0.0.1"));

    let run = |dir: &Path| spawn(command(&bin, &["--config", config.to_str().unwrap()], dir).stderr(Stdio::null()));
    let mut child = run(dir.path());
    wait_blocking(T, "120 events across the forced reconnect", || written_ids(dir.path()).len() >= 120);
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit_blocking(&mut child, T), 0, "SIGTERM is a clean stop");
    let want: Vec<String> = (1..=120).map(|i| i.to_string()).collect();
    assert_eq!(written_ids(dir.path()), want, "every event once, in order");
    let seen: Vec<Option<String>> = requests.lock().unwrap().iter().map(|r| r.last_event_id.clone()).collect();
    assert_eq!(seen, vec![None, Some("50".to_owned())], "the reconnect resumed after the last event written");
    let kept = std::fs::read_to_string(dir.path().join("state/wiki/sse.json")).unwrap();
    assert!(kept.contains("\"120\""), "the position is kept: {kept}");

    // A restart resumes from the kept position.
    let mut child = run(dir.path());
    wait_blocking(T, "130 events after the restart", || written_ids(dir.path()).len() >= 130);
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit_blocking(&mut child, T), 0);
    let want: Vec<String> = (1..=130).map(|i| i.to_string()).collect();
    assert_eq!(written_ids(dir.path()), want);
    assert_eq!(requests.lock().unwrap()[2].last_event_id.as_deref(), Some("120"));
}

#[test]
fn a_key_the_sse_kind_does_not_have_exits_2_naming_the_key_and_the_kind() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        Conf::new().source("wiki", "sse", "url = \"http://127.0.0.1:1\"\ntrack = [\"x\"]").write_to(dir.path());
    let out = command(&example("custom_source"), &["check", "--config", config.to_str().unwrap()], dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("sources[0].track") && stderr.contains("sse"), "{stderr}");
}

#[test]
fn the_custom_sink_counts_what_the_simulator_sends() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = Conf::new()
        .table(&format!("[simulator]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nrate = 500"))
        .source("sample", "twitter.sample", &format!("base_url = \"http://127.0.0.1:{port}\"\n{DEMO_AUTH}"))
        .sink("name = \"counter\"\nkind = \"counter\"\nevery = 100")
        .write_to(dir.path());
    let bin = example("custom_sink");
    let check = command(&bin, &["check", "--config", config.to_str().unwrap()], dir.path()).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    assert!(String::from_utf8_lossy(&check.stdout).contains("counter (counter)"));

    let mut child = spawn(command(&bin, &["--config", config.to_str().unwrap()], dir.path()).stderr(Stdio::piped()));
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let summary = loop {
        let line = rx.recv_timeout(T).expect("the counter sink prints a summary");
        if line.starts_with("counter: 100 events") {
            break line;
        }
    };
    assert!(summary.contains("\"tweet\""), "{summary}");
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit_blocking(&mut child, T), 0);
}
