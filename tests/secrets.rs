//! No secret in any message: one whole-process run with distinctive secret
//! values everywhere a config can hold one (OAuth secrets and tokens, a
//! Mastodon token, the control token, a Redis password), refused by the
//! simulator or unreachable so the error paths run too, with debug logging,
//! every control API route (authorised and not), a SIGHUP reload and a
//! stop; `check` of that config; and the config-error paths. Every byte
//! printed or answered is searched for the secrets.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_streamherd");
/// Every secret value below starts with this; nothing printed may contain it.
const MARK: &str = "zzSECRET";
const T: Duration = Duration::from_secs(30);

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.0 exchange with the control API: the whole response, headers
/// included (empty when it cannot connect).
fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: test\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn assert_no_secret(what: &str, text: &str) {
    if let Some(at) = text.find(MARK) {
        let from = text[..at].char_indices().rev().nth(200).map_or(0, |(i, _)| i);
        let to = (at + 100).min(text.len());
        panic!("{what} shows a secret: ...{}...", &text[from..to]);
    }
}

#[test]
fn no_secret_reaches_a_log_line_an_error_check_or_the_control_api() {
    let dir = tempfile::tempdir().unwrap();
    let sim_port = free_port();
    let sim_addr = format!("127.0.0.1:{sim_port}");
    let _sim = Killed(
        command(BIN, &["simulate", "--listen", &sim_addr, "--rate", "50"], dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_blocking(T, "the simulator to listen", || TcpStream::connect(&sim_addr).is_ok());
    let (port, redis_port) = (free_port(), free_port());
    // A Redis with a password; killed mid-run so the sink's errors are logged.
    let mut redis = Killed(
        std::process::Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--requirepass", &format!("{MARK}redis")])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)"),
    );
    wait_blocking(T, "redis-server to listen", || TcpStream::connect(("127.0.0.1", redis_port)).is_ok());
    let control_token = format!("{MARK}control");
    let config = format!(
        r#"
[service]
log_level = "debug"
stats_interval_s = 0.2
state_dir = "{dir}/state"

[control]
listen = "127.0.0.1:{port}"
token = "{control_token}"

[backoff]
http_initial_ms = 50
network_initial_ms = 50

# Refused by the simulator (it knows only the demo credentials).
[[sources]]
name = "tw"
kind = "twitter.filter"
base_url = "http://{sim_addr}"
track = ["x"]
auth = {{ kind = "oauth1", consumer_key = "{MARK}ck", consumer_secret = "{MARK}cs", token = "{MARK}tk", token_secret = "{MARK}ts" }}

# Refused at the WebSocket upgrade.
[[sources]]
name = "refused"
kind = "mastodon"
base_url = "http://{sim_addr}"
transport = "websocket"
streams = ["public"]
auth = {{ kind = "bearer", token = "{MARK}masto" }}

# Accepted: keeps the service running (the demo token is no secret here).
[[sources]]
name = "fedi"
kind = "mastodon"
base_url = "http://{sim_addr}"
transport = "sse"
streams = ["public"]
auth = {{ kind = "bearer", token = "demo-mastodon-token" }}

[[sinks]]
name = "archive"
kind = "file"
path = "{dir}/data/{{source}}.jsonl"
fsync = "never"

# Killed mid-run: its errors name the URL, never the password.
[[sinks]]
name = "queue"
kind = "redis"
url = "redis://:{MARK}redis@127.0.0.1:{redis_port}/"
"#,
        dir = dir.path().display()
    );
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, &config).unwrap();
    let cfg = config_path.to_str().unwrap();

    let mut printed = Vec::new();
    let check = command(BIN, &["check", "--config", cfg], dir.path()).output().unwrap();
    printed.push((
        "check",
        format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr)),
    ));

    let log_path = dir.path().join("run.log");
    let mut child = Killed(
        command(BIN, &["run", "--config", cfg], dir.path())
            .stdout(std::fs::File::create(dir.path().join("run.out")).unwrap())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    // Without the pretty format's colour codes, so that `key=value` matches.
    let log = || strip_ansi(&std::fs::read_to_string(&log_path).unwrap_or_default());
    wait_blocking(T, "the control API", || {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("streamherd exited with {status}; check said {:?}; log:\n{}", printed[0].1, log());
        }
        http(port, "GET", "/health", None, "").starts_with("HTTP/1")
    });
    // The refusals have happened and been logged.
    let logged = |needle: &str| {
        let start = std::time::Instant::now();
        while !log().contains(needle) {
            let lines: Vec<String> = log().lines().rev().take(30).map(str::to_owned).collect();
            assert!(start.elapsed() < T, "no `{needle}` in the log; its end:\n{}", lines.join("\n"));
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    logged("tw/0");
    logged("refused/0");
    signal(&redis.0, libc::SIGKILL);
    let _ = redis.0.wait();
    let token = Some(control_token.as_str());
    let mut answers = String::new();
    for (method, path, token, body) in [
        ("GET", "/health", None, ""),
        ("GET", "/health", token, ""),
        ("GET", "/streams", token, ""),
        ("GET", "/streams", None, ""),
        ("GET", "/metrics", token, ""),
        ("GET", "/nowhere", token, ""),
        ("POST", "/update", None, ""),
        ("POST", "/update", token, ""),
        ("POST", "/sources/tw/follows", token, r#"{"add":[1,2]}"#),
        ("POST", "/sources/fedi/follows", token, r#"{"add":"zzSECRET? no, a bad body"}"#),
        ("POST", "/sources/nope/follows", token, r#"{"add":[1]}"#),
        ("POST", "/sources/tw/consolidate", token, ""),
    ] {
        let answer = http(port, method, path, token, body);
        assert!(answer.starts_with("HTTP/1"), "{method} {path}: no answer");
        // The bad body above carries the mark itself: it is the caller's
        // text, echoed or not, and not a secret of the config.
        answers.push_str(&answer.replace("zzSECRET? no, a bad body", ""));
    }
    printed.push(("control API answers", answers));
    logged("sink unavailable");
    signal(&child.0, libc::SIGHUP);
    wait_blocking(T, "the SIGHUP reload", || log().contains("SIGHUP"));
    signal(&child.0, libc::SIGTERM);
    assert_eq!(wait_exit_blocking(&mut child.0, T), 0, "{}", log());
    // Logs use the config's words, never Rust's Debug forms.
    let run_log = log();
    for debug_form in ["=None", "=Some(", "Some(\"", "=[\""] {
        let line = run_log.lines().find(|l| l.contains(debug_form));
        assert!(line.is_none(), "a Debug form `{debug_form}` in the log: {line:?}");
    }
    printed.push(("the run's log", run_log));
    printed.push(("the run's stdout", std::fs::read_to_string(dir.path().join("run.out")).unwrap_or_default()));
    for entry in std::fs::read_dir(dir.path().join("data")).unwrap() {
        let path = entry.unwrap().path();
        printed.push(("an output file", std::fs::read_to_string(&path).unwrap_or_default()));
    }

    // The config-error paths: a secret where a table, a string or a list was expected, a
    // syntax error on the line that holds secrets, and empty neighbours.
    let source = "[[sources]]\nname = \"a\"\nkind = \"twitter.filter\"\ntrack = [\"x\"]\n";
    let broken = [
        format!("{source}auth = {{ kind = \"oauth1\", consumer_key = \"k\", consumer_secret = \"{MARK}1\", token = \"t\", token_secret = \"{MARK}2\" \n"),
        format!("{source}auth = \"{MARK}3\"\n"),
        format!("{source}auth = [\"{MARK}4\", \"x\"]\n"),
        format!("{source}auth = {{ kind = \"oauth1\", consumer_key = \"k\", consumer_secret = [\"{MARK}5\"], token = \"t\", token_secret = \"u\" }}\n"),
        format!("{source}auth = {{ kind = \"oauth1\", consumer_key = \"k\", consumer_secret = \"{MARK}6\", token = \"t\", token_secret = \"\" }}\n"),
        format!("{source}auth = {{ kind = \"oauth9\", consumer_secret = \"{MARK}7\" }}\n"),
        format!("[[sources]]\nname = \"m\"\nkind = \"mastodon\"\nstreams = [\"public\"]\nauth = {{ kind = \"bearer\", token = 12 }}\nextra = \"{MARK}8\"\n"),
        format!("[control]\ntoken = [\"{MARK}9\"]\n{source}"),
        format!("[control]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{MARK}10\"\nbogus = 1\n{source}"),
        format!("[[sinks]]\nname = \"q\"\nkind = \"redis\"\nurl = [\"redis://:{MARK}11@127.0.0.1:1/\"]\n"),
        format!("[[sinks]]\nname = \"q\"\nkind = \"redis\"\nurl = \"redis://:{MARK}12@127.0.0.1:1/\"\npipeline = 0\n"),
        format!("[[sinks]]\nname = \"q\"\nkind = \"redis\"\nurl = \"http://:{MARK}13@127.0.0.1:1/\"\n"),
    ];
    for (i, body) in broken.iter().enumerate() {
        let path = dir.path().join(format!("broken-{i}.toml"));
        std::fs::write(&path, body).unwrap();
        for args in [["check", "--config"], ["run", "--config"]] {
            let out = command(BIN, &[args[0], args[1], path.to_str().unwrap()], dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()
                .unwrap();
            let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert_eq!(out.status.code(), Some(2), "broken config {i} ({}): {said}", args[0]);
            printed.push(("a config error", said));
        }
    }

    let total: usize = printed.iter().map(|(_, t)| t.len()).sum();
    assert!(total > 10_000, "the run printed only {total} bytes: the search proves nothing");
    for (what, text) in &printed {
        assert_no_secret(what, text);
    }
}
