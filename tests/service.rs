//! Whole-process tests of the `streamherd` binary: the shipped config runs and
//! checks, broken configs exit 2 naming the key, SIGKILL during heavy writing
//! leaves no partial line once restarted, a shared file sink never interleaves
//! lines, and a source whose credentials are refused exits 3.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use streamherd_sim::{AttemptScript, Scenario, Split};

const BIN: &str = env!("CARGO_BIN_EXE_streamherd");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn streamherd(args: &[&str], cwd: &Path) -> Command {
    command(BIN, args, cwd)
}

/// A copy of the shipped config in a temp dir, on a free simulator port.
fn shipped_config_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = std::fs::read_to_string(Path::new(ROOT).join("config.toml"))
        .unwrap()
        .replace("127.0.0.1:8900", &format!("127.0.0.1:{port}"));
    std::fs::create_dir_all(dir.path().join("examples")).unwrap();
    std::fs::copy(Path::new(ROOT).join("examples/users.txt"), dir.path().join("examples/users.txt")).unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn shipped_config_checks() {
    let out = streamherd(&["check", "--config", "config.toml"], Path::new(ROOT)).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("election (twitter.filter at"), "{stdout}");
    assert!(stdout.contains("app-users (twitter.site at"), "{stdout}");
    // The config's own names, never Rust's.
    assert!(stdout.contains("when_full spill") && !stdout.contains("Spill") && !stdout.contains("Filter"), "{stdout}");
    assert!(stdout.contains("3 connection(s)"), "250 site follows at 100 per connection: {stdout}");
    assert!(stdout.contains("archive (file)"), "{stdout}");
    assert!(stdout.contains("fedi (mastodon, websocket"), "{stdout}");
    assert!(stdout.contains("4 stream(s) in 1 connection(s)"), "{stdout}");
    assert!(stdout.contains("bsky (bluesky.jetstream at ws://127.0.0.1:8900): every DID on 1 connection"), "{stdout}");
    assert!(!stdout.contains("demo-token-secret") && !stdout.contains("demo-consumer-secret"), "secrets never printed");
}

#[test]
fn shipped_config_prints_envelopes_and_writes_data() {
    let (dir, _) = shipped_config_copy();
    let mut child = spawn(streamherd(&[], dir.path()).stdout(Stdio::piped()).stderr(Stdio::null()));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok).take(5) {
            let _ = tx.send(line);
        }
    });
    let started = Instant::now();
    let mut lines = Vec::new();
    while lines.len() < 5 {
        let left = Duration::from_secs(10).saturating_sub(started.elapsed());
        lines.push(rx.recv_timeout(left).expect("five envelope lines on stdout within 10 s"));
    }
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["kind"], "tweet", "{line}");
        assert_eq!(v["source"], "election", "{line}");
    }
    wait_blocking(Duration::from_secs(10), "data/ files", || {
        ["election", "sample", "app-users", "fedi", "bsky"].iter().all(|s| dir.path().join("data").join(s).is_dir())
    });
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit_blocking(&mut child, Duration::from_secs(20)), 0, "SIGTERM is a clean stop");
}

/// `streamherd probe --source NAME --seconds S` in `dir`: its exit code and stdout.
fn probe(dir: &Path, source: &str, seconds: &str) -> (i32, String) {
    let mut child = spawn(
        streamherd(&["probe", "--source", source, "--seconds", seconds], dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut stdout = child.stdout.take().unwrap();
    let code = wait_exit_blocking(&mut child, Duration::from_secs(20));
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    (code, out)
}

#[test]
fn probe_counts_one_source_by_kind() {
    let (dir, _) = shipped_config_copy();
    let (code, out) = probe(dir.path(), "sample", "1.5");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("events: ") && out.contains("  tweet: ") && out.contains("bytes: "), "{out}");
    assert!(out.contains("reconnects: 0"), "{out}");
    assert!(!dir.path().join("data").exists(), "probe writes no sinks");
}

#[test]
fn probe_checks_a_mastodon_source_health_then_counts_by_kind() {
    let (dir, _) = shipped_config_copy();
    let (code, out) = probe(dir.path(), "fedi", "1.5");
    assert_eq!(code, 0, "{out}");
    let health = out.find("health: ok (OK)").unwrap_or_else(|| panic!("health line first: {out}"));
    let events = out.find("events: ").unwrap_or_else(|| panic!("{out}"));
    assert!(health < events, "{out}");
    assert!(out.contains("  update: ") && out.contains("bytes: "), "{out}");
    assert!(!out.contains("demo-mastodon-token"), "the token is never printed");
    assert!(!dir.path().join("data").exists(), "probe writes no sinks");
}

#[test]
fn probe_counts_a_jetstream_source_by_kind() {
    let (dir, _) = shipped_config_copy();
    let (code, out) = probe(dir.path(), "bsky", "1.5");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("events: ") && out.contains("  commit: ") && out.contains("bytes: "), "{out}");
    assert!(out.contains("reconnects: 0"), "{out}");
    assert!(!dir.path().join("data").exists(), "probe writes no sinks");
}

#[test]
fn probe_of_an_unreachable_mastodon_host_reports_the_failed_health_check() {
    let (dir, _) = shipped_config_copy();
    let port = free_port();
    let cfg = dir.path().join("config.toml");
    let body = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("catch_up = true ", &format!("streaming_url = \"http://127.0.0.1:{port}\"\ncatch_up = true "));
    std::fs::write(&cfg, body).unwrap();
    let (code, out) = probe(dir.path(), "fedi", "1");
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("health: FAILED") && out.contains(&port.to_string()), "{out}");
}

fn broken(body: &str, key: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, body).unwrap();
    let out = streamherd(&["check", "--config", path.to_str().unwrap()], dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{body}\n{stderr}");
    assert!(stderr.contains(key), "stderr should name `{key}`: {stderr}");
    assert!(stderr.contains("broken.toml"), "stderr should name the file: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(!stderr.contains("panicked"));
}

const AUTH: &str =
    r#"auth = { kind = "oauth1", consumer_key = "k", consumer_secret = "s", token = "t", token_secret = "ts" }"#;

#[test]
fn broken_configs_exit_2_naming_the_key() {
    // Accepted before, each now one line naming the key.
    broken("[service]\nstats_interval_s = 0\n", "sources");
    // Past i64 (the config crate named no key), also inside a multi-line array.
    broken(
        "[service]\nmax_message_bytes = 18446744073709551616\n",
        "service.max_message_bytes: line 2: number too large",
    );
    broken(
        &format!("[[sources]]\nname = \"a\"\nkind = \"twitter.filter\"\nfollow = [\n  1,\n  99999999999999999999,\n]\n{AUTH}\n"),
        "sources[0].follow: line 6: number too large",
    );
    broken("[backoff]\nhttp_initial_ms = -99999999999999999999\n", "backoff.http_initial_ms");
    // A directory given as the config: said so, not "not found".
    let dir = tempfile::tempdir().unwrap();
    let out = streamherd(&["check", "--config", dir.path().to_str().unwrap()], dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is a directory, not a config file") && stderr.lines().count() == 1, "{stderr}");
    broken("[service]\nlog_level = \"bogus=[\"\n", "service.log_level");
    broken(
        &format!("[[sources]]\nname = \"a\"\nkind = \"twitter.filter\"\nlocations = [\"-200,0,10,10\"]\n{AUTH}\n"),
        "sources[0].locations[0]",
    );
    broken(
        &format!("[[sources]]\nname = \"a\"\nkind = \"twitter.filter\"\nlocations = [\"10,0,-10,10\"]\n{AUTH}\n"),
        "sources[0].locations[0]",
    );
    broken(
        "[[sources]]\nname = \"a\"\nkind = \"twitter.filter\"\ntrack = [\"x\"]\nauth = { kind = \"oauth1\", consumer_key = \"k\", consumer_secret = \"\", token = \"t\", token_secret = \"u\" }\n",
        "consumer_secret",
    );
    broken("[[sources]]\nname = \"m\"\nkind = \"mastodon\"\nstreams = [\"public\"]\nauth = { kind = \"bearer\", token = \"\" }\n", "token");
    broken("[service]\nstats_intervall_s = 5\n", "stats_intervall_s");
    broken("[service]\ninstance = \"2/2\"\n", "service.instance");
    broken("[service]\ninstance = \"0/2\"\ncoordination = \"redis://127.0.0.1:1/\"\n", "service.coordination");
    broken("[service]\ncoordination = \"http://127.0.0.1:1/\"\n", "service.coordination");
    broken("[service]\ncoordination = \"redis://127.0.0.1:1/\"\nlease_ms = 100\n", "service.lease_ms");
    broken("[service]\ncoordination = \"redis://127.0.0.1:1/\"\nlease_buckets = 0\n", "service.lease_buckets");
    broken(
        &format!("[[sources]]\nname = \"a\"\nkind = \"twitter.firehose\"\ntrack = [\"x\"]\n{AUTH}\n"),
        "sources[0].kind",
    );
    broken("[[sources]]\nname = \"a\"\nkind = \"twitter.filter\"\ntrack = [\"x\"]\n", "sources[0].auth");
    let follows: Vec<String> = (1..=5001).map(|i| i.to_string()).collect();
    broken(
        &format!("[[sources]]\nname = \"a\"\nkind = \"twitter.filter\"\nfollow = [{}]\n{AUTH}\n", follows.join(",")),
        "sources[0].follow",
    );
    broken("[[sinks]]\nname = \"f\"\nkind = \"file\"\npath = \"/proc/streamherd-nope/x.jsonl\"\n", "sinks[0].path");
    // A typo inside a sink table is caught by the sink's own settings.
    broken("[[sinks]]\nname = \"c\"\nkind = \"stdout\"\nformt = \"payload\"\n", "sinks[0]");
    broken(&format!("[[sources]]\nname = \"a\"\nkind = \"twitter.filter\"\ntrack = [\"x\"]\n{AUTH}\n[[sinks]]\nname = \"c\"\nkind = \"stdout\"\nsources = [\"b\"]\n"), "sinks[0].sources[0]");
    broken(
        &format!("[[sources]]\nname = \"a\"\nkind = \"twitter.filter\"\ntrack = [\"{}\"]\n{AUTH}\n", "x".repeat(61)),
        "sources[0].track[0]",
    );
    broken("[[sources]]\nname = \"m\"\nkind = \"mastodon\"\nstreams = [\"hashtag\"]\nauth = { kind = \"bearer\", token = \"t\" }\n", "sources[0].streams[0]");
    broken("[[sources]]\nname = \"m\"\nkind = \"mastodon\"\nstreams = [\"hashtag:Rust\", \"hashtag:rust\"]\nauth = { kind = \"bearer\", token = \"t\" }\n", "sources[0].streams[1]");
    broken("[[sources]]\nname = \"m\"\nkind = \"mastodon\"\nstreams = [\"public\"]\nfollow = [1]\nauth = { kind = \"bearer\", token = \"t\" }\n", "sources[0].follow");
    broken("[[sources]]\nname = \"m\"\nkind = \"mastodon\"\nstreams = [\"public\"]\ntransport = \"grpc\"\nauth = { kind = \"bearer\", token = \"t\" }\n", "sources[0].transport");
    broken("[[sources]]\nname = \"m\"\nkind = \"mastodon\"\nstreams = [\"public\", \"user\"]\ntransport = \"sse\"\nmax_connections = 1\nauth = { kind = \"bearer\", token = \"t\" }\n", "sources[0].streams");
}

/// Each kind has its own table: a key of another kind is refused by name,
/// with the kind that refused it.
#[test]
fn a_key_of_another_kind_exits_2_naming_the_key_and_the_kind() {
    let cases = [
        (
            "[[sources]]\nname = \"m\"\nkind = \"mastodon\"\nstreams = [\"public\"]\ntrack = [\"rust\"]\nauth = { kind = \"bearer\", token = \"t\" }\n".to_owned(),
            "sources[0].track",
            "mastodon",
        ),
        (
            format!("[[sources]]\nname = \"t\"\nkind = \"twitter.filter\"\ntrack = [\"x\"]\nstreams = [\"public\"]\n{AUTH}\n"),
            "sources[0].streams",
            "twitter.filter",
        ),
        (
            format!("[[sources]]\nname = \"t\"\nkind = \"twitter.site\"\nfollow = [1]\ntransport = \"sse\"\n{AUTH}\n"),
            "sources[0].transport",
            "twitter.site",
        ),
    ];
    for (body, key, kind) in cases {
        broken(&body, key);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.toml");
        std::fs::write(&path, &body).unwrap();
        let out = streamherd(&["check", "--config", path.to_str().unwrap()], dir.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("{key}: is not a key of {kind} sources")), "{stderr}");
    }
}

#[test]
fn a_state_dir_that_is_a_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("afile"), b"").unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, format!("[service]\nstate_dir = \"afile\"\n[[sources]]\nname = \"a\"\nkind = \"twitter.filter\"\ntrack = [\"x\"]\n{AUTH}\n")).unwrap();
    let out = streamherd(&["check", "--config", path.to_str().unwrap()], dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("service.state_dir") && stderr.contains("is a file"), "{stderr}");
}

#[test]
fn missing_secret_variable_is_a_config_error() {
    broken(
        "[[sources]]\nname = \"a\"\nkind = \"twitter.filter\"\ntrack = [\"x\"]\nauth = { kind = \"oauth1\", consumer_key = \"k\", consumer_secret = \"${STREAMHERD_TEST_UNSET_VAR}\", token = \"t\", token_secret = \"ts\" }\n",
        "sources[0].auth.consumer_secret",
    );
}

fn heavy_config(dir: &Path, port: u16) -> PathBuf {
    Conf::new()
        .backoff(None)
        .table(&format!("[simulator]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nrate = 0"))
        .source("firehose", "twitter.sample", &format!("base_url = \"http://127.0.0.1:{port}\"\n{DEMO_AUTH}"))
        .file_sink("")
        .write_to(dir)
}

#[test]
fn sigkill_during_heavy_writing_leaves_no_partial_line_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    heavy_config(dir.path(), port);
    let file = dir.path().join("data/firehose.jsonl");
    let size = || std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let mut child = spawn(streamherd(&[], dir.path()).stdout(Stdio::null()).stderr(Stdio::null()));
    wait_blocking(Duration::from_secs(30), "20 MB written", || size() > 20 << 20);
    signal(&child, libc::SIGKILL);
    wait_exit_blocking(&mut child, Duration::from_secs(10));
    let killed_at = size();

    let mut child = spawn(streamherd(&[], dir.path()).stdout(Stdio::null()).stderr(Stdio::null()));
    wait_blocking(Duration::from_secs(30), "writing to resume", || size() > killed_at + (1 << 20));
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit_blocking(&mut child, Duration::from_secs(20)), 0);
    let mut text = String::new();
    std::fs::File::open(&file).unwrap().read_to_string(&mut text).unwrap();
    assert!(text.ends_with('\n'));
    let mut lines = 0;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("partial or broken line ({e}): {line:.120}"));
        assert_eq!(v["source"], "firehose");
        lines += 1;
    }
    assert!(lines > 1000, "{lines} lines");
}

#[test]
fn every_source_failing_for_good_exits_3_with_the_reason_logged() {
    // A separate simulator process that knows only the demo credentials.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let _sim = spawn(
        streamherd(&["simulate", "--listen", &addr, "--rate", "10"], dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_blocking(Duration::from_secs(10), "the simulator to listen", || std::net::TcpStream::connect(&addr).is_ok());
    let body = format!(
        "[service]\nstats_interval_s = 0\n[[sources]]\nname = \"a\"\nkind = \"twitter.sample\"\nbase_url = \"http://{addr}\"\n{}\n",
        DEMO_AUTH.replace("demo-token-secret", "wrong-secret")
    );
    std::fs::write(dir.path().join("config.toml"), body).unwrap();
    let mut child = spawn(streamherd(&[], dir.path()).stdout(Stdio::null()).stderr(Stdio::piped()));
    let mut stderr = child.stderr.take().unwrap();
    let code = wait_exit_blocking(&mut child, Duration::from_secs(20));
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    assert_eq!(code, 3, "{log}");
    assert!(log.contains("HTTP 401") && log.contains("Could not authenticate you"), "{log}");
    assert!(!log.contains("wrong-secret"), "secrets stay out of logs");
}

#[actix_rt::test]
async fn four_connections_share_one_file_without_interleaving() {
    let scenario = Scenario {
        then: AttemptScript { split: Split::Random, limit: Some(1500), ..Default::default() },
        ..Default::default()
    };
    let sim = start_sim(scenario, 0, 1000).await;
    let follows: Vec<String> = (1..=400).map(|i| i.to_string()).collect();
    let body = format!("follow = [{}]\nfollow_limit = 100", follows.join(","));
    let cfg = Conf::new()
        .twitter("site", "twitter.site", &sim, &body)
        // `block`: with a 64-event queue a spill would keep events for the next start.
        .sink("name = \"archive\"\nkind = \"file\"\npath = \"{dir}/data/all.jsonl\"\nfsync = \"never\"\nbuffer = 64\nwhen_full = \"block\"")
        .write();
    let running = start_service(&cfg).await;
    let per_connection = || running.stats.snapshots().iter().map(|s| s.messages).collect::<Vec<_>>();
    wait_for(Duration::from_secs(30), "1500 events on each of 4 connections", || {
        let m = per_connection();
        m.len() == 4 && m.iter().all(|n| *n >= 1500)
    })
    .await;
    stop_service(&running).await;
    let conns: std::collections::BTreeSet<_> =
        sim.connections().iter().take(4).map(|c| c.params["follow"].clone()).collect();
    assert_eq!(conns.len(), 4, "four distinct shards");
    // read_envelopes parses every line strictly: a split or interleaved line fails here.
    let envs = read_envelopes(&cfg.data());
    assert!(envs.len() >= 6000);
    let sent = sim.sent();
    for conn in 0..4 {
        let id = format!("site/{conn}");
        let mine: Vec<_> = envs.iter().filter(|e| e.connection == id).collect();
        assert!(mine.len() >= 1500, "{id}: {}", mine.len());
    }
    // Payloads are byte-exact: every written payload was sent.
    let sent_payloads: std::collections::HashSet<&[u8]> = sent.iter().map(|m| &m.payload[..]).collect();
    // Gap events are streamherd's own (a stream that reached its limit and
    // reconnected before the stop writes one); every other payload was sent.
    for e in envs.iter().filter(|e| e.kind != "gap") {
        assert!(
            sent_payloads.contains(e.payload.as_bytes()),
            "written but never sent: {} {:?} on {}: {}",
            e.kind,
            e.id,
            e.connection,
            e.payload.chars().take(300).collect::<String>()
        );
    }
    sim.stop().await;
}

/// SIGHUP reloads like `POST /update` and SIGUSR1 is ignored: neither
/// ends the process (their default action would).
#[test]
fn sighup_reloads_the_follows_and_sigusr1_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = |follows: &str| {
        Conf::new()
            .service("log_format = \"json\"")
            .table(&format!("[simulator]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nrate = 20"))
            .source(
                "f",
                "twitter.filter",
                &format!(
                    "base_url = \"http://127.0.0.1:{port}\"\nfollow = [{follows}]\nupdate = {{ min_delay_s = 0.05, max_delay_s = 0.1 }}\n{DEMO_AUTH}"
                ),
            )
            .file_sink("")
            .write_to(dir.path())
    };
    conf("1, 2");
    let log = dir.path().join("stderr.log");
    let mut child =
        spawn(streamherd(&[], dir.path()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()));
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let data = dir.path().join("data/f.jsonl");
    wait_blocking(Duration::from_secs(20), "streaming", || std::fs::metadata(&data).is_ok_and(|m| m.len() > 0));

    signal(&child, libc::SIGUSR1);
    wait_blocking(Duration::from_secs(10), "SIGUSR1 logged", || text().contains("SIGUSR1 ignored"));
    assert!(child.0.try_wait().unwrap().is_none(), "SIGUSR1 must not end the process");

    let connects = || text().matches("\"message\":\"connecting\"").count();
    let before = connects();
    assert!(before >= 1, "{}", text());
    conf("1, 2, 3");
    signal(&child, libc::SIGHUP);
    wait_blocking(Duration::from_secs(10), "the reload", || text().contains("predicates reloaded on SIGHUP"));
    let line = text().lines().find(|l| l.contains("predicates reloaded on SIGHUP")).unwrap().to_owned();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!((v["fields"]["follows"].as_u64(), v["fields"]["added"].as_u64()), (Some(3), Some(1)), "{line}");
    // The change takes effect: the stream reconnects carrying the new follow.
    wait_blocking(Duration::from_secs(10), "the new request", || connects() > before);
    assert!(child.0.try_wait().unwrap().is_none(), "SIGHUP must not end the process");
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit_blocking(&mut child, Duration::from_secs(20)), 0, "SIGTERM is still a clean stop");
}

/// An empty control token and a control address that cannot be listened
/// on are one line naming the key with exit 2, from `check` and from
/// `run`, never a panic; a port in use fails `run` the same way.
#[test]
fn control_api_tokens_and_addresses_fail_in_one_line() {
    let source =
        format!("[[sources]]\nname = \"a\"\nkind = \"twitter.sample\"\nbase_url = \"http://127.0.0.1:9\"\n{AUTH}\n");
    broken(&format!("[control]\nlisten = \"127.0.0.1:0\"\ntoken = \"\"\n{source}"), "control.token");
    broken(&format!("[control]\nlisten = \"127.0.0.1:0\"\ntoken = \"  \"\n{source}"), "control.token");
    // 192.0.2.1 (TEST-NET-1) is on no host here.
    broken(&format!("[control]\nlisten = \"192.0.2.1:8890\"\n{source}"), "control.listen");

    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let path = dir.path().join("busy.toml");
    std::fs::write(&path, format!("[control]\nlisten = \"127.0.0.1:{port}\"\n{source}")).unwrap();
    let mut child = spawn(
        streamherd(&["run", "--config", path.to_str().unwrap()], dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let code = wait_exit_blocking(&mut child, Duration::from_secs(20));
    let mut stderr = String::new();
    child.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("streamherd:")).collect();
    assert_eq!(code, 2, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("busy.toml: control.listen: cannot listen on"), "{stderr}");
    drop(held);
}

/// The shipped systemd unit verifies clean (with its binary path pointed at
/// the one just built, since `verify` checks that the commands exist).
#[test]
fn the_systemd_unit_verifies_clean() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() {
        assert!(
            std::env::var_os("STREAMHERD_SKIP_SYSTEMD").is_some(),
            "systemd-analyze is not installed: .ci/run installs it (Debian's systemd); STREAMHERD_SKIP_SYSTEMD=1 skips"
        );
        return;
    }
    let unit = std::fs::read_to_string(Path::new(ROOT).join("deploy/streamherd.service")).unwrap();
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID") && unit.contains("Restart=on-failure"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("streamherd.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/streamherd", BIN)).unwrap();
    let out = Command::new(analyze).arg("verify").arg(&path).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
}

/// Config errors on secret values never echo them: a TOML syntax error on
/// a credential line, a string or list where a credential table belongs, a
/// wrong type for a token, a redis URL with a password.
#[test]
fn config_errors_never_echo_secret_values() {
    const S: &str = "Zq9SECRETvalue";
    let source = "[[sources]]\nname = \"a\"\nkind = \"twitter.filter\"\ntrack = [\"x\"]\n";
    let cases = [
        (format!("{source}auth = {{ kind = \"oauth1\", consumer_key = \"k\", consumer_secret = \"{S}1\", token = \"t\", token_secret = \"{S}2\" \n"), "(file)"),
        (format!("{source}auth = \"{S}3\"\n"), "sources[0].auth"),
        (format!("{source}auth = [\"{S}4\", \"x\"]\n"), "sources[0].auth[0]"),
        (format!("[[sources]]\nname = \"m\"\nkind = \"mastodon\"\nstreams = [\"public\"]\nauth = {{ kind = \"bearer\", token = [\"{S}5\"] }}\n"), "sources[0].auth.token"),
        (format!("[control]\ntoken = [\"{S}6\"]\n{source}auth = {{ kind = \"oauth1\", consumer_key = \"k\", consumer_secret = \"s\", token = \"t\", token_secret = \"u\" }}\n"), "control.token"),
        (format!("[[sinks]]\nname = \"q\"\nkind = \"redis\"\nurl = [\"redis://:{S}7@127.0.0.1:1/\"]\n"), "sinks[0]"),
    ];
    for (body, key) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.toml");
        std::fs::write(&path, &body).unwrap();
        let out = streamherd(&["check", "--config", path.to_str().unwrap()], dir.path()).output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{body}\n{said}");
        assert!(!said.contains(S), "a secret value was echoed: {said}");
        assert!(said.contains(key), "names `{key}`: {said}");
        assert_eq!(said.trim_end().lines().count(), 1, "one line: {said}");
    }
}
