//! End-to-end tests of the simulator over real loopback sockets: a raw HTTP/1.1
//! client that sees every chunk boundary, FIN and RST, plus awc for the
//! client the service itself uses.
#![cfg(test)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::*;

const WAIT: Duration = Duration::from_secs(10);

async fn sim(scenario: Scenario, rate: u32, record_sent: usize) -> SimHandle {
    start(SimulatorConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        rate,
        keepalive_ms: 30_000,
        credentials: vec![SimCredentials::demo()],
        scenario,
        record_sent,
        mastodon_tokens: vec![DEMO_MASTODON_TOKEN.to_string()],
        ..SimulatorConfig::default()
    })
    .await
    .expect("simulator starts")
}

fn script(f: impl FnOnce(&mut AttemptScript)) -> Scenario {
    let mut s = AttemptScript::default();
    f(&mut s);
    Scenario::always(s)
}

fn authorization(cred: &SimCredentials, method: &str, url: &str, params: &[(&str, &str)]) -> String {
    let list: oauth1_request::ParameterList<&str, &str> = params.iter().copied().collect();
    let mut b = oauth1_request::Builder::<_, &str, &str>::new(
        oauth1_request::Credentials::new(cred.consumer_key.as_str(), cred.consumer_secret.as_str()),
        oauth1_request::HmacSha1::new(),
    );
    b.token(oauth1_request::Credentials::new(cred.token.as_str(), cred.token_secret.as_str()));
    b.authorize(method, url, &list)
}

fn encode(params: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish()
}

/// One request of a table-driven test: method, path, parameters.
type Request<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// A raw HTTP/1.1 client connection after the response head.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    /// Sends a signed request: GET parameters in the query, POST ones as a
    /// form body.
    async fn signed(sim: &SimHandle, method: &str, path: &str, params: &[(&str, &str)]) -> Raw {
        Self::signed_as(sim, &SimCredentials::demo(), method, path, params).await
    }

    async fn signed_as(
        sim: &SimHandle,
        cred: &SimCredentials,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
    ) -> Raw {
        let url = format!("{}{}", sim.base_url(), path);
        let auth = authorization(cred, method, &url, params);
        let encoded = encode(params);
        let (target, body) = if method == "POST" {
            (path.to_string(), encoded)
        } else if encoded.is_empty() {
            (path.to_string(), String::new())
        } else {
            (format!("{path}?{encoded}"), String::new())
        };
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\nUser-Agent: streamherd-test\r\n",
            sim.addr()
        );
        if method == "POST" {
            head.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        head.push_str(&body);
        Self::send(sim.addr(), head.as_bytes()).await
    }

    async fn send(addr: SocketAddr, request: &[u8]) -> Raw {
        let mut stream = timeout(WAIT, TcpStream::connect(addr)).await.expect("connect in time").expect("connect");
        stream.write_all(request).await.expect("write request");
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = timeout(WAIT, stream.read_buf(&mut buf)).await.expect("head in time").expect("read head");
            assert!(n > 0, "EOF before the response head");
        };
        let head = String::from_utf8(buf.split_to(end + 4).to_vec()).expect("ASCII head");
        let mut lines = head.split("\r\n");
        let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Raw { status, headers, stream, buf }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    async fn fill(&mut self) -> io::Result<()> {
        let n = timeout(WAIT, self.stream.read_buf(&mut self.buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no bytes in time"))??;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF inside the body"));
        }
        Ok(())
    }

    /// The next HTTP chunk; None after the final zero-size chunk.
    async fn chunk(&mut self) -> io::Result<Option<Bytes>> {
        let line_end = loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let line = std::str::from_utf8(&self.buf[..line_end]).expect("chunk size line");
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16).expect("hex chunk size");
        self.buf.advance(line_end + 2);
        while self.buf.len() < size + 2 {
            self.fill().await?;
        }
        let data = self.buf.split_to(size).freeze();
        assert_eq!(&self.buf[..2], b"\r\n", "chunk not followed by CRLF");
        self.buf.advance(2);
        Ok((size > 0).then_some(data))
    }

    /// A whole body with Content-Length.
    async fn fixed_body(&mut self) -> Vec<u8> {
        let len: usize = self.header("content-length").and_then(|v| v.parse().ok()).expect("content-length");
        while self.buf.len() < len {
            self.fill().await.expect("body");
        }
        self.buf.split_to(len).to_vec()
    }
}

/// Splits a CRLF body into messages; blank lines (keep-alives) are counted.
#[derive(Default)]
struct Lines {
    pending: Vec<u8>,
    messages: Vec<Vec<u8>>,
    keepalives: usize,
}

impl Lines {
    fn push(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
        while let Some(i) = self.pending.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = self.pending.drain(..i + 2).take(i).collect();
            if line.is_empty() {
                self.keepalives += 1;
            } else {
                self.messages.push(line);
            }
        }
    }
}

/// Reads the whole chunked body; returns its messages and how it ended.
async fn read_all(raw: &mut Raw) -> (Lines, io::Result<()>) {
    let mut lines = Lines::default();
    loop {
        match raw.chunk().await {
            Ok(Some(data)) => lines.push(&data),
            Ok(None) => return (lines, Ok(())),
            Err(e) => return (lines, Err(e)),
        }
    }
}

async fn wait_for_end(sim: &SimHandle, attempt: u64) -> ConnectionRecord {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(c) = sim.connections().into_iter().find(|c| c.attempt == attempt && c.closed_at.is_some()) {
            return c;
        }
        assert!(Instant::now() < deadline, "attempt {attempt} never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn payloads(sim: &SimHandle, attempt: u64) -> Vec<Vec<u8>> {
    sim.sent().into_iter().filter(|m| m.attempt == attempt).map(|m| m.payload.to_vec()).collect()
}

#[actix_rt::test]
async fn filter_streams_crlf_messages_equal_to_sent() {
    let sim = sim(script(|s| s.limit = Some(500)), 0, 10_000).await;
    let mut raw = Raw::signed(
        &sim,
        "POST",
        "/1.1/statuses/filter.json",
        &[("track", "#cdu,#spd"), ("follow", "96574766"), ("stall_warnings", "true")],
    )
    .await;
    assert_eq!(raw.status, 200);
    assert_eq!(raw.header("transfer-encoding"), Some("chunked"));
    assert_eq!(raw.header("content-type"), Some("application/json"));
    let (lines, end) = read_all(&mut raw).await;
    end.expect("clean end after `limit`");
    assert_eq!(lines.messages.len(), 500);
    assert_eq!(lines.messages, payloads(&sim, 0));
    for m in &lines.messages {
        serde_json::from_slice::<serde_json::Value>(m).expect("every message is JSON");
    }
    let c = wait_for_end(&sim, 0).await;
    assert_eq!((c.status, c.end.as_str(), c.messages_sent), (200, "limit", 500));
    assert!(c.auth_ok);
    assert_eq!(c.method, "POST");
    assert_eq!(c.params.get("track").map(String::as_str), Some("#cdu,#spd"));
    assert!(c.params.keys().all(|k| !k.starts_with("oauth_")));
    let kinds: BTreeSet<&str> = sim.sent().iter().map(|m| m.kind).collect();
    assert!(kinds.contains("tweet") && kinds.contains("delete") && kinds.contains("limit"));
    sim.stop().await;
}

#[actix_rt::test]
async fn length_delimited_counts_bytes_with_emoji() {
    let sim = sim(script(|s| s.limit = Some(300)), 0, 1_000).await;
    let mut raw =
        Raw::signed(&sim, "POST", "/1.1/statuses/filter.json", &[("track", "wahl"), ("delimited", "length")]).await;
    let mut body = Vec::new();
    while let Some(d) = raw.chunk().await.expect("clean body") {
        body.extend_from_slice(&d);
    }
    let mut messages = Vec::new();
    let mut rest = &body[..];
    while !rest.is_empty() {
        let nl = rest.windows(2).position(|w| w == b"\r\n").expect("length line");
        let line = &rest[..nl];
        rest = &rest[nl + 2..];
        if line.is_empty() {
            continue; // keep-alive before a length line
        }
        let len: usize = std::str::from_utf8(line).expect("digits").parse().expect("length");
        assert!(rest.len() >= len, "count {len} runs past the body");
        assert_eq!(&rest[len - 2..len], b"\r\n", "count must include the trailing CRLF");
        messages.push(rest[..len - 2].to_vec());
        rest = &rest[len..];
    }
    assert_eq!(messages.len(), 300);
    assert_eq!(messages, payloads(&sim, 0));
    assert!(messages.iter().any(|m| m.iter().any(|b| *b >= 0xF0)), "no 4-byte UTF-8 in 300 messages");
    sim.stop().await;
}

#[actix_rt::test]
async fn scripted_503_then_200_over_awc() {
    let scenario = Scenario {
        attempts: vec![AttemptScript { status: Some(503), retry_after_s: Some(7), ..AttemptScript::default() }],
        then: AttemptScript { limit: Some(3), ..AttemptScript::default() },
    };
    let sim = sim(scenario, 0, 100).await;
    let client = awc::Client::default();
    let url = format!("{}/1.1/statuses/sample.json", sim.base_url());
    let demo = SimCredentials::demo();

    let mut first = client
        .get(&url)
        .insert_header(("Authorization", authorization(&demo, "GET", &url, &[])))
        .send()
        .await
        .expect("first request");
    assert_eq!(first.status().as_u16(), 503);
    assert_eq!(first.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("7"));
    assert_eq!(&first.body().await.expect("503 body")[..], b"Service Unavailable");

    let mut second = client
        .get(&url)
        .insert_header(("Authorization", authorization(&demo, "GET", &url, &[])))
        .send()
        .await
        .expect("second request");
    assert_eq!(second.status().as_u16(), 200);
    let body = second.body().limit(1 << 20).await.expect("whole body");
    let mut lines = Lines::default();
    lines.push(&body);
    assert_eq!(lines.messages, payloads(&sim, 1));
    assert_eq!(lines.messages.len(), 3);

    let log = sim.connections();
    assert_eq!(log.len(), 2);
    assert_eq!((log[0].attempt, log[0].status, log[0].end.as_str()), (0, 503, "status"));
    assert_eq!((log[1].attempt, log[1].status), (1, 200));
    assert_eq!(wait_for_end(&sim, 1).await.end, "limit");
    sim.stop().await;
}

#[actix_rt::test]
async fn bad_signature_gets_401() {
    let sim = sim(Scenario::default(), 50, 0).await;
    let client = awc::Client::default();
    let url = format!("{}/1.1/statuses/filter.json", sim.base_url());
    let mut wrong = SimCredentials::demo();
    wrong.consumer_secret = "guessed".into();
    let params = [("track", "rust")];
    let mut resp = client
        .post(&url)
        .insert_header(("Authorization", authorization(&wrong, "POST", &url, &params)))
        .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
        .send_body(encode(&params))
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 401);
    let body: serde_json::Value = serde_json::from_slice(&resp.body().await.expect("body")).expect("JSON body");
    assert_eq!(body["errors"][0]["code"], 32);
    assert_eq!(body["errors"][0]["message"], "Could not authenticate you.");

    // A signature over other parameters than the ones sent.
    let mut resp = client
        .post(&url)
        .insert_header(("Authorization", authorization(&SimCredentials::demo(), "POST", &url, &params)))
        .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
        .send_body(encode(&[("track", "rust,go")]))
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 401);
    let _ = resp.body().await;

    // No Authorization at all.
    let resp = client.post(&url).send_body("track=rust").await.expect("request");
    assert_eq!(resp.status().as_u16(), 401);

    let log = sim.connections();
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|c| !c.auth_ok && c.status == 401 && c.end == "status"));
    sim.stop().await;
}

#[actix_rt::test]
async fn catalog_kinds_on_every_endpoint() {
    let sim = sim(
        script(|s| {
            s.mix = Mix::Catalog;
            s.limit = Some(40);
        }),
        0,
        10_000,
    )
    .await;
    let requests: [Request<'_>; 5] = [
        ("POST", "/1.1/statuses/filter.json", &[("follow", "1,2")]),
        ("GET", "/1.1/statuses/sample.json", &[]),
        ("GET", "/1.1/user.json", &[("with", "followings")]),
        ("GET", "/1.1/user.json", &[("stringify_friend_ids", "true")]),
        ("GET", "/1.1/site.json", &[("follow", "11,22,33"), ("with", "user")]),
    ];
    for (i, (method, path, params)) in requests.iter().enumerate() {
        let mut raw = Raw::signed(&sim, method, path, params).await;
        assert_eq!(raw.status, 200, "{path}");
        let (lines, end) = read_all(&mut raw).await;
        end.expect("clean end");
        assert_eq!(lines.messages, payloads(&sim, i as u64), "{path}");
    }
    let sent = sim.sent();
    let kinds = |attempt: u64| -> BTreeSet<&'static str> {
        sent.iter().filter(|m| m.attempt == attempt).map(|m| m.kind).collect()
    };
    let public = ["tweet", "delete", "scrub_geo", "limit", "status_withheld", "user_withheld", "warning", "unknown"];
    for attempt in 0..5 {
        for k in public {
            assert!(kinds(attempt).contains(k), "attempt {attempt} lacks {k}");
        }
    }
    for attempt in 2..5 {
        for k in ["friends", "event", "direct_message"] {
            assert!(kinds(attempt).contains(k), "attempt {attempt} lacks {k}");
        }
    }
    assert!(kinds(4).contains("control"));
    assert!(!kinds(0).contains("friends") && !kinds(0).contains("event"));

    // User streams open with the friends preamble, ints or strings.
    let first = |attempt: u64| sent.iter().find(|m| m.attempt == attempt).expect("a message");
    assert!(first(2).payload.starts_with(b"{\"friends\":[96574766,"));
    assert!(first(3).payload.starts_with(b"{\"friends_str\":[\"96574766\","));

    // Site streams: a preamble per user, then envelopes and one control.
    let site: Vec<&SentMessage> = sent.iter().filter(|m| m.attempt == 4).collect();
    for (i, user) in [11, 22, 33].iter().enumerate() {
        assert_eq!(site[i].kind, "friends");
        assert_eq!(site[i].for_user, Some(*user));
        let v: serde_json::Value = serde_json::from_slice(&site[i].payload).expect("json");
        assert_eq!(v["for_user"], *user);
        assert!(v["message"]["friends"].is_array());
    }
    assert_ne!(site[3].kind, "control", "control is not the first message");
    let control = site.iter().find(|m| m.kind == "control").expect("control message");
    let v: serde_json::Value = serde_json::from_slice(&control.payload).expect("json");
    let uri = v["control"]["control_uri"].as_str().expect("control_uri");
    let id = uri.strip_prefix("/1.1/site/c/1_1_").expect("control_uri prefix");
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{uri}");
    for m in site.iter().filter(|m| m.kind == "tweet" || m.kind == "event") {
        let user = m.for_user.expect("per-user messages are enveloped");
        assert!([11, 22, 33].contains(&user));
        assert!(m.payload.starts_with(format!("{{\"for_user\":{user},\"message\":{{").as_bytes()));
    }
    // Ids are unique across the whole run.
    let ids: Vec<&String> = sent.iter().filter_map(|m| m.id.as_ref()).collect();
    let unique: BTreeSet<&&String> = ids.iter().collect();
    assert_eq!(ids.len(), unique.len());
    sim.stop().await;
}

#[actix_rt::test]
async fn sweep_cuts_every_frame_at_its_offset() {
    let sim = sim(
        script(|s| {
            s.mix = Mix::Fixed;
            s.split = Split::Sweep;
            s.limit = Some(6_000);
        }),
        0,
        0,
    )
    .await;
    let mut raw = Raw::signed(&sim, "GET", "/1.1/statuses/sample.json", &[]).await;
    // Frame 0 is not cut, so its single chunk gives the frame length.
    let frame_len = raw.chunk().await.expect("chunk").expect("first frame").len();
    assert!(frame_len > 1_000, "a fixed tweet frame is {frame_len} bytes");
    assert!(frame_len < 6_000, "limit too small to cover {frame_len} offsets");
    let mut covered = vec![false; frame_len];
    covered[0] = true;
    for i in 1..frame_len {
        let a = raw.chunk().await.expect("chunk").expect("data").len();
        let cut = i % frame_len;
        assert_eq!(a, cut, "frame {i}: first piece");
        let b = raw.chunk().await.expect("chunk").expect("data");
        assert_eq!(a + b.len(), frame_len, "frame {i}: pieces add up");
        assert!(b.ends_with(b"\n"), "frame {i} must end with its CRLF");
        covered[cut] = true;
    }
    assert!(covered.iter().all(|c| *c), "every byte offset was a cut point");
    drop(raw);
    assert_eq!(wait_for_end(&sim, 0).await.end, "client closed");
    sim.stop().await;
}

#[actix_rt::test]
async fn random_split_reassembles_exactly() {
    let sim = sim(
        script(|s| {
            s.mix = Mix::Catalog;
            s.split = Split::Random;
            s.limit = Some(200);
        }),
        0,
        1_000,
    )
    .await;
    let mut raw = Raw::signed(&sim, "GET", "/1.1/user.json", &[]).await;
    let mut lines = Lines::default();
    let mut chunks = 0;
    while let Some(d) = raw.chunk().await.expect("clean body") {
        chunks += 1;
        lines.push(&d);
    }
    assert_eq!(lines.messages, payloads(&sim, 0));
    assert!(chunks >= 2 * 200, "{chunks} chunks for 200 frames");
    sim.stop().await;
}

#[actix_rt::test]
async fn close_after_without_reset_is_an_incomplete_body() {
    let sim = sim(script(|s| s.close_after = Some(5)), 0, 100).await;
    let mut raw = Raw::signed(&sim, "GET", "/1.1/statuses/sample.json", &[]).await;
    let (lines, end) = read_all(&mut raw).await;
    let err = end.expect_err("the body must not end cleanly");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    assert_eq!(lines.messages.len(), 5, "every message before the cut arrives");
    assert_eq!(lines.messages, payloads(&sim, 0));
    assert_eq!(wait_for_end(&sim, 0).await.end, "close_after");
    sim.stop().await;
}

#[actix_rt::test]
async fn reset_is_a_connection_reset() {
    let sim = sim(
        script(|s| {
            s.close_after = Some(5);
            s.reset = true;
        }),
        0,
        100,
    )
    .await;
    let mut raw = Raw::signed(&sim, "GET", "/1.1/statuses/sample.json", &[]).await;
    let (lines, end) = read_all(&mut raw).await;
    let err = end.expect_err("the body must not end cleanly");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    assert_eq!(lines.messages, payloads(&sim, 0));
    assert_eq!(lines.messages.len(), 5);
    let c = wait_for_end(&sim, 0).await;
    assert_eq!((c.end.as_str(), c.messages_sent), ("reset", 5));
    sim.stop().await;
}

#[actix_rt::test]
async fn disconnect_message_then_clean_end() {
    let sim = sim(
        script(|s| {
            s.disconnect_after = Some(2);
            s.disconnect_code = 4;
        }),
        0,
        100,
    )
    .await;
    let mut raw = Raw::signed(&sim, "GET", "/1.1/statuses/sample.json", &[]).await;
    let (lines, end) = read_all(&mut raw).await;
    end.expect("a disconnect ends the body cleanly");
    assert_eq!(lines.messages.len(), 3);
    let v: serde_json::Value = serde_json::from_slice(&lines.messages[2]).expect("json");
    assert_eq!(v["disconnect"]["code"], 4);
    assert_eq!(v["disconnect"]["reason"], "Stall");
    let sent = sim.sent();
    assert_eq!(sent[2].kind, "disconnect");
    assert_eq!(wait_for_end(&sim, 0).await.end, "disconnect");
    sim.stop().await;
}

#[actix_rt::test]
async fn junk_messages_arrive_byte_exact() {
    let sim = sim(
        script(|s| {
            s.malformed_every = Some(5);
            s.oversized_at = vec![3];
            s.oversized_bytes = 200_000;
            s.limit = Some(12);
        }),
        0,
        100,
    )
    .await;
    let mut raw = Raw::signed(&sim, "GET", "/1.1/statuses/sample.json", &[]).await;
    let (lines, end) = read_all(&mut raw).await;
    end.expect("clean end");
    assert_eq!(lines.messages, payloads(&sim, 0));
    let kinds: Vec<&str> = sim.sent().iter().map(|m| m.kind).collect();
    assert_eq!(kinds[2], "oversized");
    assert_eq!((kinds[4], kinds[9]), ("malformed", "malformed"));
    assert_eq!(lines.messages[2].len(), 200_000);
    sim.stop().await;
}

#[actix_rt::test]
async fn silence_sends_nothing_then_resumes() {
    let sim = start(SimulatorConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        rate: 100,
        keepalive_ms: 20,
        scenario: script(|s| {
            s.silence_after = Some(2);
            s.silence_ms = 400;
            s.limit = Some(4);
        }),
        record_sent: 10,
        mastodon_tokens: vec![DEMO_MASTODON_TOKEN.to_string()],
        ..SimulatorConfig::default()
    })
    .await
    .expect("start");
    let mut raw = Raw::signed(&sim, "GET", "/1.1/statuses/sample.json", &[]).await;
    let mut lines = Lines::default();
    let mut arrivals = Vec::new();
    while let Some(d) = raw.chunk().await.expect("clean body") {
        arrivals.push((Instant::now(), lines.messages.len(), lines.keepalives));
        lines.push(&d);
    }
    assert_eq!(lines.messages.len(), 4);
    // The chunk carrying message 3 is the first after the silence.
    let (t3, ..) = arrivals.iter().find(|(_, before, _)| *before == 2).copied().expect("message 3 arrived");
    let (t2, ..) = arrivals.iter().rev().find(|(_, before, _)| *before < 2).copied().expect("message 2 arrived");
    // A keep-alive during the silence would be a chunk in this gap.
    assert!(t3 - t2 >= Duration::from_millis(380), "gap {:?}", t3 - t2);
    sim.stop().await;
}

#[actix_rt::test]
async fn keepalives_fill_idle_time_and_client_close_is_logged() {
    let sim = start(SimulatorConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        rate: 1,
        keepalive_ms: 20,
        ..SimulatorConfig::default()
    })
    .await
    .expect("start");
    let mut raw = Raw::signed(&sim, "GET", "/1.1/statuses/sample.json", &[]).await;
    let mut lines = Lines::default();
    let deadline = Instant::now() + Duration::from_millis(400);
    while Instant::now() < deadline {
        let d = raw.chunk().await.expect("chunk").expect("open body");
        lines.push(&d);
    }
    assert_eq!(lines.messages.len(), 1, "rate 1: one message in 400 ms");
    assert!(lines.keepalives >= 5, "only {} keep-alives", lines.keepalives);
    drop(raw);
    assert_eq!(wait_for_end(&sim, 0).await.end, "client closed");
    sim.stop().await;
}

#[actix_rt::test]
async fn rate_paces_messages() {
    let sim = sim(Scenario::default(), 200, 0).await;
    let mut raw = Raw::signed(&sim, "GET", "/1.1/statuses/sample.json", &[]).await;
    let mut lines = Lines::default();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1_000) {
        let d = raw.chunk().await.expect("chunk").expect("open body");
        lines.push(&d);
    }
    let n = lines.messages.len();
    assert!((100..=300).contains(&n), "rate 200 gave {n} messages in 1 s");
    sim.stop().await;
}

#[actix_rt::test]
async fn stop_ends_open_streams() {
    let sim = sim(Scenario::default(), 50, 0).await;
    let mut raw = Raw::signed(&sim, "GET", "/1.1/user.json", &[]).await;
    raw.chunk().await.expect("chunk").expect("data");
    timeout(WAIT, sim.stop()).await.expect("stop in time");
    let (_, end) = read_all(&mut raw).await;
    if let Err(e) = end {
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }
    assert_eq!(wait_for_end(&sim, 0).await.end, "server stop");
    assert!(TcpStream::connect(sim.addr()).await.is_err(), "port still open");
}

#[actix_rt::test]
async fn refusals_follow_twitter() {
    let sim = sim(Scenario::default(), 50, 0).await;
    let long = "x".repeat(61);
    let cases: [(Request<'_>, u16); 6] = [
        (("POST", "/1.1/statuses/filter.json", &[("stall_warnings", "true")]), 406),
        (("POST", "/1.1/statuses/filter.json", &[("track", long.as_str())]), 406),
        (("POST", "/1.1/statuses/filter.json", &[("track", "a"), ("count", "100")]), 416),
        (("GET", "/1.1/site.json", &[]), 406),
        (("GET", "/1.1/statuses/sample.json", &[("delimited", "words")]), 406),
        (("GET", "/1.1/statuses/firehose.json", &[]), 404),
    ];
    for ((method, path, params), want) in &cases {
        let mut raw = Raw::signed(&sim, method, path, params).await;
        assert_eq!(raw.status, *want, "{method} {path} {params:?}");
        let body = String::from_utf8(raw.fixed_body().await).expect("text");
        assert!(!body.is_empty());
    }
    let ids: Vec<String> = (1..=101).map(|i| i.to_string()).collect();
    let follow = ids.join(",");
    let mut raw = Raw::signed(&sim, "GET", "/1.1/site.json", &[("follow", &follow)]).await;
    assert_eq!(raw.status, 413);
    let body = String::from_utf8(raw.fixed_body().await).expect("text");
    assert!(body.contains("100"), "{body}");
    // 420 carries Twitter's reason phrase.
    sim.set_scenario(script(|s| s.status = Some(420)));
    let mut raw = Raw::signed(&sim, "GET", "/1.1/statuses/sample.json", &[]).await;
    assert_eq!(raw.status, 420);
    assert_eq!(raw.fixed_body().await, b"Exceeded connection limit for user");
    assert_eq!(sim.connections().last().map(|c| c.attempt), Some(0), "counter reset");
    sim.stop().await;
}

#[actix_rt::test]
async fn site_control_stream_adds_and_removes_users() {
    let sim = sim(script(|s| s.mix = Mix::Catalog), 200, 10_000).await;
    let mut raw = Raw::signed(&sim, "GET", "/1.1/site.json", &[("follow", "1,2")]).await;
    let mut lines = Lines::default();
    let uri = loop {
        lines.push(&raw.chunk().await.expect("chunk").expect("data"));
        let found = lines.messages.iter().find_map(|m| {
            let v: serde_json::Value = serde_json::from_slice(m).ok()?;
            v["control"]["control_uri"].as_str().map(str::to_string)
        });
        if let Some(uri) = found {
            break uri;
        }
    };
    // Remove first: once user 3's preamble shows, the removal has applied.
    let mut remove = Raw::signed(&sim, "POST", &format!("{uri}/remove_user.json"), &[("user_id", "1")]).await;
    assert_eq!(remove.status, 200);
    let _ = remove.fixed_body().await;
    let mut add = Raw::signed(&sim, "POST", &format!("{uri}/add_user.json"), &[("user_id", "3")]).await;
    assert_eq!(add.status, 200);
    let _ = add.fixed_body().await;
    let mut info = Raw::signed(&sim, "GET", &format!("{uri}/info.json"), &[]).await;
    assert_eq!(info.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&info.fixed_body().await).expect("json");
    let users: Vec<u64> =
        v["info"]["users"].as_array().expect("users").iter().filter_map(|u| u["id"].as_u64()).collect();
    assert_eq!(users, vec![2, 3]);
    // Wait for user 3's preamble and then a message for them.
    let before = lines.messages.len();
    let deadline = Instant::now() + WAIT;
    let mut after: Vec<serde_json::Value> = Vec::new();
    while after.iter().filter(|v| v["for_user"] == 3).count() < 3 {
        assert!(Instant::now() < deadline, "user 3 never got messages");
        lines.push(&raw.chunk().await.expect("chunk").expect("data"));
        after = lines.messages[before..].iter().filter_map(|m| serde_json::from_slice(m).ok()).collect();
    }
    let at = after.iter().position(|v| v["for_user"] == 3).expect("a message for 3");
    assert!(after[at]["message"]["friends"].is_array(), "preamble first: {}", after[at]);
    let for_one = after[at..].iter().filter(|v| v["for_user"] == 1).count();
    assert_eq!(for_one, 0, "user 1 was removed");
    // A control request for a stream that does not exist.
    let mut bad = Raw::signed(&sim, "GET", "/1.1/site/c/1_1_nope/info.json", &[]).await;
    assert_eq!(bad.status, 404);
    let _ = bad.fixed_body().await;
    sim.stop().await;
}

#[actix_rt::test]
async fn connection_log_over_http() {
    let sim = sim(script(|s| s.limit = Some(2)), 0, 0).await;
    let mut raw = Raw::signed(&sim, "GET", "/1.1/statuses/sample.json", &[("stall_warnings", "true")]).await;
    let _ = read_all(&mut raw).await;
    wait_for_end(&sim, 0).await;
    let mut log =
        Raw::send(sim.addr(), format!("GET /_sim/connections HTTP/1.1\r\nHost: {}\r\n\r\n", sim.addr()).as_bytes())
            .await;
    assert_eq!(log.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&log.fixed_body().await).expect("json");
    assert_eq!(v[0]["attempt"], 0);
    assert_eq!(v[0]["path"], "/1.1/statuses/sample.json");
    assert_eq!(v[0]["params"]["stall_warnings"], "true");
    assert_eq!(v[0]["end"], "limit");
    assert_eq!(v[0]["messages_sent"], 2);
    assert!(v[0]["closed_ms"].as_u64() >= v[0]["opened_ms"].as_u64());

    let body = r#"{"then":{"status":503}}"#;
    let put = Raw::send(
        sim.addr(),
        format!(
            "PUT /_sim/scenario HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            sim.addr(),
            body.len()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(put.status, 204);
    drop(put);
    let mut raw = Raw::signed(&sim, "GET", "/1.1/statuses/sample.json", &[]).await;
    assert_eq!(raw.status, 503);
    let _ = raw.fixed_body().await;
    sim.stop().await;
}

#[actix_rt::test]
async fn refuses_non_loopback_listen() {
    let err = start(SimulatorConfig { listen: SocketAddr::from(([0, 0, 0, 0], 0)), ..SimulatorConfig::default() })
        .await
        .err()
        .expect("must refuse");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

const FILTER: &str = "/1.1/statuses/filter.json";
const SAMPLE: &str = "/1.1/statuses/sample.json";

/// Splits a `delimited=length` body into messages; bare CRLFs (keep-alives)
/// are skipped.
#[derive(Default)]
struct LenFrames {
    pending: Vec<u8>,
    messages: Vec<Vec<u8>>,
}

impl LenFrames {
    fn push(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
        // Bounded: every turn consumes bytes or returns.
        while let Some(nl) = self.pending.windows(2).position(|w| w == b"\r\n") {
            if nl == 0 {
                self.pending.drain(..2);
                continue;
            }
            let len: usize = std::str::from_utf8(&self.pending[..nl]).expect("digits").parse().expect("length");
            if self.pending.len() < nl + 2 + len {
                return;
            }
            let frame = &self.pending[nl + 2..nl + 2 + len];
            assert!(frame.ends_with(b"\r\n"), "count must include the trailing CRLF");
            self.messages.push(frame[..len - 2].to_vec());
            self.pending.drain(..nl + 2 + len);
        }
    }
}

/// A signed control request; returns the status (the body is read).
async fn control(sim: &SimHandle, uri: &str, op: &str, ids: &str) -> u16 {
    let mut raw = Raw::signed(sim, "POST", &format!("{uri}/{op}.json"), &[("user_id", ids)]).await;
    let _ = raw.fixed_body().await;
    raw.status
}

fn id_set(ids: impl IntoIterator<Item = u64>) -> BTreeSet<u64> {
    ids.into_iter().collect()
}

fn id_list(ids: impl IntoIterator<Item = u64>) -> String {
    ids.into_iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

#[actix_rt::test]
async fn broadcast_overlapping_connections_get_identical_messages_recorded_once() {
    let sim = sim(script(|s| s.broadcast = true), 200, 100_000).await;
    // A: a length-delimited filter stream; B: a CRLF sample stream. Each uses
    // its own framing over the one generator.
    let mut a = Raw::signed(&sim, "POST", FILTER, &[("track", "a"), ("delimited", "length")]).await;
    assert_eq!(a.status, 200);
    let mut a_msgs = LenFrames::default();
    while a_msgs.messages.len() < 10 {
        a_msgs.push(&a.chunk().await.expect("chunk").expect("data"));
    }
    // Everything A has before B connects was produced before B subscribed.
    let before_b: BTreeSet<Vec<u8>> = a_msgs.messages.iter().cloned().collect();
    let mut b = Raw::signed(&sim, "GET", SAMPLE, &[]).await;
    assert_eq!(b.status, 200);
    let mut b_msgs = Lines::default();
    while b_msgs.messages.len() < 40 {
        b_msgs.push(&b.chunk().await.expect("chunk").expect("data"));
    }
    assert!(
        b_msgs.messages.iter().all(|m| !before_b.contains(m)),
        "the later connection got a message produced before it subscribed"
    );
    // A goes on to B's first message and 40 more.
    let deadline = Instant::now() + WAIT;
    let at = loop {
        if let Some(i) = a_msgs.messages.iter().position(|m| *m == b_msgs.messages[0]) {
            if a_msgs.messages.len() >= i + 40 {
                break i;
            }
        }
        assert!(Instant::now() < deadline, "A never caught up with B's messages");
        a_msgs.push(&a.chunk().await.expect("chunk").expect("data"));
    };
    assert!(at >= before_b.len(), "B's first message is one A had before B connected");
    assert_eq!(a_msgs.messages[at..at + 40], b_msgs.messages[..40], "the overlap differs");
    drop(a);
    drop(b);
    assert_eq!(wait_for_end(&sim, 0).await.end, "client closed");
    assert_eq!(wait_for_end(&sim, 1).await.end, "client closed");

    // Every message either connection received is in sent() exactly once,
    // and no id is recorded twice.
    let sent = sim.sent();
    let mut counts: HashMap<&[u8], usize> = HashMap::new();
    for m in &sent {
        *counts.entry(&m.payload[..]).or_default() += 1;
    }
    let received: BTreeSet<&Vec<u8>> = a_msgs.messages.iter().chain(&b_msgs.messages).collect();
    for m in &received {
        assert_eq!(counts.get(&m[..]).copied(), Some(1), "{}", String::from_utf8_lossy(m));
    }
    let ids: Vec<&String> = sent.iter().filter_map(|m| m.id.as_ref()).collect();
    assert_eq!(ids.len(), ids.iter().collect::<BTreeSet<_>>().len(), "an id recorded twice");
    assert!(sent.iter().all(|m| m.attempt <= 1 && m.for_user.is_none()));
    assert!(sim.broadcast_sent() >= received.len() as u64);
    sim.stop().await;
}

#[actix_rt::test]
async fn broadcast_junk_is_per_connection_and_inserted() {
    let scenario = Scenario {
        attempts: vec![AttemptScript { broadcast: true, malformed_every: Some(3), ..AttemptScript::default() }],
        then: AttemptScript { broadcast: true, ..AttemptScript::default() },
    };
    let sim = sim(scenario, 200, 10_000).await;
    let mut a = Raw::signed(&sim, "GET", SAMPLE, &[]).await;
    let mut a_msgs = Lines::default();
    a_msgs.push(&a.chunk().await.expect("chunk").expect("data"));
    let mut b = Raw::signed(&sim, "GET", SAMPLE, &[]).await;
    let mut b_msgs = Lines::default();
    while b_msgs.messages.len() < 20 {
        b_msgs.push(&b.chunk().await.expect("chunk").expect("data"));
    }
    let deadline = Instant::now() + WAIT;
    while a_msgs.messages.len() < 120 {
        assert!(Instant::now() < deadline, "A stalled");
        a_msgs.push(&a.chunk().await.expect("chunk").expect("data"));
    }
    // Every third message of A is junk; the rest is the broadcast, none
    // skipped: B's messages appear in A contiguously once junk is removed.
    for (i, m) in a_msgs.messages.iter().enumerate() {
        let junk = serde_json::from_slice::<serde_json::Value>(m).is_err();
        assert_eq!(junk, (i + 1) % 3 == 0, "message {}", i + 1);
    }
    let a_clean: Vec<&Vec<u8>> =
        a_msgs.messages.iter().enumerate().filter(|(i, _)| (i + 1) % 3 != 0).map(|(_, m)| m).collect();
    let at = a_clean.iter().position(|m| **m == b_msgs.messages[0]).expect("B's first message reached A");
    let overlap: Vec<&Vec<u8>> = b_msgs.messages.iter().take(a_clean.len() - at).collect();
    assert!(overlap.len() >= 10, "overlap of {}", overlap.len());
    assert_eq!(a_clean[at..at + overlap.len()], overlap[..]);
    assert!(b_msgs.messages.iter().all(|m| serde_json::from_slice::<serde_json::Value>(m).is_ok()));
    let junk = sim.sent().iter().filter(|m| m.kind == "malformed").map(|m| m.attempt).collect::<BTreeSet<u64>>();
    assert_eq!(junk, id_set([0]));
    sim.stop().await;
}

#[actix_rt::test]
async fn broadcast_subscriber_that_lags_ends_abruptly_as_lagged() {
    let sim = sim(
        script(|s| {
            s.broadcast = true;
            // Rate 1000 releases up to 11 messages a 10 ms tick: 64 holds a
            // few ticks' bursts but not the ~300 of the silence.
            s.broadcast_capacity = 64;
            s.silence_after = Some(2);
            s.silence_ms = 300;
        }),
        1_000,
        1_000,
    )
    .await;
    let mut raw = Raw::signed(&sim, "GET", SAMPLE, &[]).await;
    let (lines, end) = read_all(&mut raw).await;
    let err = end.expect_err("a lagged subscriber's body must not end cleanly");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    assert_eq!(lines.messages.len(), 2, "the messages before the silence arrive");
    let c = wait_for_end(&sim, 0).await;
    assert_eq!((c.end.as_str(), c.messages_sent), ("lagged", 2));
    assert!(sim.broadcast_sent() > 66, "only {} produced", sim.broadcast_sent());
    // Only what was written is recorded.
    assert_eq!(sim.sent().iter().map(|m| m.payload.to_vec()).collect::<Vec<_>>(), lines.messages);
    sim.stop().await;
}

#[actix_rt::test]
async fn broadcast_limit_ends_the_generator_until_the_scenario_changes() {
    let scenario = Scenario {
        attempts: vec![AttemptScript { broadcast: true, limit: Some(30), ..AttemptScript::default() }],
        then: AttemptScript { broadcast: true, ..AttemptScript::default() },
    };
    let sim = sim(scenario, 0, 1_000).await;
    let mut a = Raw::signed(&sim, "GET", SAMPLE, &[]).await;
    let (lines, end) = read_all(&mut a).await;
    end.expect("clean end at the limit");
    assert_eq!(lines.messages.len(), 30);
    assert_eq!(lines.messages, payloads(&sim, 0));
    assert_eq!(wait_for_end(&sim, 0).await.end, "limit");
    assert_eq!(sim.broadcast_sent(), 30);
    // A later subscriber finds the generator done.
    let mut b = Raw::signed(&sim, "POST", FILTER, &[("track", "b")]).await;
    let (lines, end) = read_all(&mut b).await;
    end.expect("clean end");
    assert!(lines.messages.is_empty());
    assert_eq!(wait_for_end(&sim, 1).await.end, "limit");
    // A new scenario re-arms it.
    sim.set_scenario(script(|s| s.broadcast = true));
    let mut c = Raw::signed(&sim, "GET", SAMPLE, &[]).await;
    let mut c_msgs = Lines::default();
    while c_msgs.messages.len() < 5 {
        c_msgs.push(&c.chunk().await.expect("chunk").expect("data"));
    }
    assert!(sim.broadcast_sent() > 30);
    sim.stop().await;
    let c = sim.connections().pop().expect("C's record");
    assert_eq!((c.attempt, c.end.as_str()), (0, "server stop"));
}

#[actix_rt::test]
async fn carried_view_follows_add_and_remove_user() {
    let sim = sim(Scenario::default(), 1, 0).await;
    let site = Raw::signed(&sim, "GET", "/1.1/site.json", &[("follow", "1,2")]).await;
    assert_eq!(site.status, 200);
    let filter = Raw::signed(&sim, "POST", FILTER, &[("follow", "7,8"), ("track", "x")]).await;
    assert_eq!(filter.status, 200);
    let log = sim.connections();
    let uri = log[0].control_uri.clone().expect("a site stream has a control_uri");
    assert!(uri.starts_with("/1.1/site/c/1_1_"), "{uri}");
    assert_eq!(log[1].control_uri, None);
    assert_eq!(sim.carried(), BTreeMap::from([(0, id_set([1, 2])), (1, id_set([7, 8]))]));

    assert_eq!(control(&sim, &uri, "add_user", "3,4").await, 200);
    assert_eq!(sim.carried()[&0], id_set([1, 2, 3, 4]));
    assert_eq!(control(&sim, &uri, "remove_user", "1").await, 200);
    assert_eq!(sim.carried()[&0], id_set([2, 3, 4]));
    let mut info = Raw::signed(&sim, "GET", &format!("{uri}/info.json"), &[]).await;
    assert_eq!(info.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&info.fixed_body().await).expect("json");
    let users: Vec<u64> =
        v["info"]["users"].as_array().expect("users").iter().filter_map(|u| u["id"].as_u64()).collect();
    assert_eq!(users, vec![2, 3, 4], "info.json reads the carried list");
    assert_eq!(sim.connections()[0].follows, vec![2, 3, 4]);

    // More than 100 ids in one call: 400, nothing changes. 100 is fine.
    assert_eq!(control(&sim, &uri, "add_user", &id_list(100..201)).await, 400);
    assert_eq!(control(&sim, &uri, "remove_user", &id_list(100..201)).await, 400);
    assert_eq!(sim.carried()[&0], id_set([2, 3, 4]));
    assert_eq!(control(&sim, &uri, "add_user", &id_list(100..200)).await, 200);
    assert_eq!(sim.carried()[&0].len(), 103);
    assert_eq!(control(&sim, &uri, "remove_user", &id_list(100..200)).await, 200);
    assert_eq!(sim.carried()[&0], id_set([2, 3, 4]));
    // Unknown stream: 404.
    let unknown = "/1.1/site/c/1_1_0123456789abcdef0123456789abcdef";
    assert_eq!(control(&sim, unknown, "add_user", "5").await, 404);

    let calls: Vec<(u64, &str, u16, usize)> =
        sim.control_calls().iter().map(|c| (c.attempt, c.op, c.status, c.user_ids.len())).collect();
    assert_eq!(
        calls,
        vec![
            (0, "add_user", 200, 2),
            (0, "remove_user", 200, 1),
            (0, "info", 200, 0),
            (0, "add_user", 400, 100),
            (0, "remove_user", 400, 100),
            (0, "add_user", 200, 100),
            (0, "remove_user", 200, 100),
            (u64::MAX, "add_user", 404, 1),
        ]
    );
    assert_eq!(sim.control_calls()[0].user_ids, vec![3, 4]);

    let mut json =
        Raw::send(sim.addr(), format!("GET /_sim/carried HTTP/1.1\r\nHost: {}\r\n\r\n", sim.addr()).as_bytes()).await;
    assert_eq!(json.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&json.fixed_body().await).expect("json");
    assert_eq!(v, serde_json::json!({ "0": [2, 3, 4], "1": [7, 8] }));

    // A closed stream leaves the view, and its control URI is unknown.
    drop(site);
    assert_eq!(wait_for_end(&sim, 0).await.end, "client closed");
    assert_eq!(sim.carried(), BTreeMap::from([(1, id_set([7, 8]))]));
    assert_eq!(control(&sim, &uri, "add_user", "5").await, 404);
    assert_eq!(sim.connections()[0].follows, vec![2, 3, 4], "what it carried when it closed");
    drop(filter);
    wait_for_end(&sim, 1).await;
    assert!(sim.carried().is_empty());
    sim.stop().await;
}

#[actix_rt::test]
async fn add_user_beyond_the_stream_cap_is_refused() {
    let sim = sim(Scenario::default(), 1, 0).await;
    let _site = Raw::signed(&sim, "GET", "/1.1/site.json", &[("follow", "1")]).await;
    let uri = sim.connections()[0].control_uri.clone().expect("control_uri");
    for call in 0..10u64 {
        let from = 1_000 + call * 100;
        let to = if call == 9 { from + 99 } else { from + 100 };
        assert_eq!(control(&sim, &uri, "add_user", &id_list(from..to)).await, 200, "call {call}");
    }
    assert_eq!(sim.carried()[&0].len(), site::MAX_SITE_CARRIED);
    assert_eq!(control(&sim, &uri, "add_user", "1,1000").await, 200, "already carried: no change");
    assert_eq!(control(&sim, &uri, "add_user", "5").await, 413);
    assert_eq!(sim.carried()[&0].len(), site::MAX_SITE_CARRIED);
    sim.stop().await;
}

#[actix_rt::test]
async fn two_hundred_site_connections_carry_their_own_follows() {
    const CONNS: u64 = 200;
    let sim = start(SimulatorConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        rate: 1,
        keepalive_ms: 30_000,
        ..SimulatorConfig::default()
    })
    .await
    .expect("start");
    let lists: Vec<BTreeSet<u64>> = (0..CONNS).map(|c| id_set((0..100).map(|i| 10_000_000 + c * 1_000 + i))).collect();
    let sim_ref = &sim;
    let opens = lists.iter().map(|ids| async move {
        let follow = id_list(ids.iter().copied());
        Raw::signed(sim_ref, "GET", "/1.1/site.json", &[("follow", follow.as_str())]).await
    });
    let raws: Vec<Raw> = futures_util::future::join_all(opens).await;
    assert!(raws.iter().all(|r| r.status == 200));
    let carried = sim.carried();
    assert_eq!(carried.len(), CONNS as usize);
    let mut got: Vec<&BTreeSet<u64>> = carried.values().collect();
    let mut want: Vec<&BTreeSet<u64>> = lists.iter().collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "every connection carries exactly its own follows");
    // And each by its attempt: the request's follow list is its carried set.
    for c in sim.connections() {
        let requested = id_set(c.params["follow"].split(',').filter_map(|v| v.parse().ok()));
        assert_eq!(carried[&c.attempt], requested, "attempt {}", c.attempt);
    }
    drop(raws);
    let deadline = Instant::now() + WAIT;
    while !sim.carried().is_empty() {
        assert!(Instant::now() < deadline, "{} connections still carried", sim.carried().len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(sim.connections().iter().all(|c| c.end == "client closed"));
    sim.stop().await;
}

/// Opens `requests` and reads each body's first chunk, so every producer
/// is running before the test goes on.
async fn open_all(sim: &SimHandle, requests: &[Request<'_>]) -> Vec<Raw> {
    let mut raws = Vec::new();
    for (method, path, params) in requests {
        let mut raw = Raw::signed(sim, method, path, params).await;
        assert_eq!(raw.status, 200, "{path}");
        raw.chunk().await.expect("first chunk").expect("an open body");
        raws.push(raw);
    }
    raws
}

/// Every body must end with an RST; returns when all have.
async fn expect_all_reset(raws: &mut [Raw]) {
    let ends = futures_util::future::join_all(raws.iter_mut().map(read_all)).await;
    for (i, (_, end)) in ends.into_iter().enumerate() {
        let err = end.expect_err("the body must not end cleanly");
        // TimedOut here would mean the reset never came.
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "stream {i}: {err}");
    }
}

#[actix_rt::test]
async fn reset_all_resets_every_open_stream_at_once_and_spares_later_ones() {
    let broadcast = AttemptScript { broadcast: true, ..AttemptScript::default() };
    // Attempt 4 waits in a scripted silence when the reset comes.
    let silent = AttemptScript { silence_after: Some(1), ..AttemptScript::default() };
    let scenario = Scenario {
        attempts: vec![broadcast.clone(), broadcast, AttemptScript::default(), AttemptScript::default(), silent],
        then: AttemptScript::default(),
    };
    let sim = sim(scenario, 20, 0).await;
    let kinds: [Request<'_>; 4] = [
        ("GET", SAMPLE, &[]),
        ("POST", FILTER, &[("track", "rust")]),
        ("GET", "/1.1/user.json", &[]),
        ("GET", "/1.1/site.json", &[("follow", "1,2")]),
    ];
    let requests: Vec<Request<'_>> = kinds.iter().copied().cycle().take(20).collect();
    let mut raws = open_all(&sim, &requests).await;
    let before = Instant::now();
    assert_eq!(sim.reset_all(), 20);
    let mut later = open_all(&sim, &[("GET", SAMPLE, &[])]).await;
    expect_all_reset(&mut raws).await;
    for attempt in 0..20 {
        let c = wait_for_end(&sim, attempt).await;
        assert_eq!(c.end, "reset_all", "attempt {attempt} ({})", c.path);
        assert!(c.closed_at.expect("end time") >= before, "attempt {attempt}");
    }
    // Opened after the call: still streaming, until the next one.
    later[0].chunk().await.expect("chunk").expect("still open");
    let c = sim.connections().into_iter().find(|c| c.attempt == 20).expect("record of the later stream");
    assert!(c.end.is_empty() && c.closed_at.is_none(), "{c:?}");
    assert_eq!(sim.reset_all(), 1);
    expect_all_reset(&mut later).await;
    assert_eq!(wait_for_end(&sim, 20).await.end, "reset_all");
    assert_eq!(sim.reset_all(), 0);
    sim.stop().await;
}

#[actix_rt::test]
async fn reset_all_reaches_unpaced_streams() {
    let sim = sim(Scenario::default(), 0, 0).await;
    let requests: [Request<'_>; 3] =
        [("GET", SAMPLE, &[]), ("POST", FILTER, &[("follow", "12")]), ("GET", "/1.1/user.json", &[])];
    let mut raws = open_all(&sim, &requests).await;
    assert_eq!(sim.reset_all(), 3);
    expect_all_reset(&mut raws).await;
    for attempt in 0..3 {
        assert_eq!(wait_for_end(&sim, attempt).await.end, "reset_all");
    }
    sim.stop().await;
}
