//! Socket tests of the simulator's Mastodon side: a raw HTTP/1.1 client for
//! the exact SSE bytes, awc for the REST calls and refusals.
#![cfg(test)]

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::super::{start, SimHandle, SimulatorConfig, DEMO_MASTODON_TOKEN};

const WAIT: Duration = Duration::from_secs(10);

async fn sim(keepalive_ms: u64) -> SimHandle {
    start(SimulatorConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        rate: 0,
        keepalive_ms,
        record_sent: 10_000,
        ..SimulatorConfig::default()
    })
    .await
    .expect("simulator starts")
}

/// An SSE response read through a raw socket, dechunked.
struct Sse {
    status: u16,
    head: String,
    stream: TcpStream,
    raw: BytesMut,
    body: Vec<u8>,
}

impl Sse {
    async fn open(sim: &SimHandle, target: &str, auth: Option<&str>) -> Sse {
        let mut stream =
            timeout(WAIT, TcpStream::connect(sim.addr())).await.expect("connect in time").expect("connect");
        let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        let req = format!("GET {target} HTTP/1.1\r\nHost: {}\r\n{auth}Accept: text/event-stream\r\n\r\n", sim.addr());
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut raw = BytesMut::new();
        let end = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = timeout(WAIT, stream.read_buf(&mut raw)).await.expect("head in time").expect("read");
            assert!(n > 0, "EOF before head");
        };
        let head = String::from_utf8(raw.split_to(end + 4).to_vec()).expect("ascii head");
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
        Sse { status, head: head.to_ascii_lowercase(), stream, raw, body: Vec::new() }
    }

    /// Reads chunks until the body satisfies `done`.
    async fn until(&mut self, done: impl Fn(&[u8]) -> bool) {
        while !done(&self.body) {
            // Decode every complete chunk in `raw`.
            while let Some(line) = self.raw.windows(2).position(|w| w == b"\r\n") {
                let size = std::str::from_utf8(&self.raw[..line])
                    .ok()
                    .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                    .expect("chunk size line");
                if self.raw.len() < line + 2 + size + 2 {
                    break;
                }
                self.raw.advance(line + 2);
                self.body.extend_from_slice(&self.raw[..size]);
                self.raw.advance(size + 2);
            }
            if done(&self.body) {
                return;
            }
            let n = timeout(WAIT, self.stream.read_buf(&mut self.raw)).await.expect("bytes in time").expect("read");
            assert!(n > 0, "EOF; body so far: {}", String::from_utf8_lossy(&self.body));
        }
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("utf-8 body")
    }
}

fn bearer() -> String {
    format!("Bearer {DEMO_MASTODON_TOKEN}")
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[actix_rt::test]
async fn sse_preamble_events_and_heartbeat_framing_are_exact() {
    let sim = sim(300).await;
    let mut sse = Sse::open(&sim, "/api/v1/streaming/public", Some(&bearer())).await;
    assert_eq!(sse.status, 200);
    assert!(sse.head.contains("content-type: text/event-stream"), "{}", sse.head);
    sse.until(|b| b.starts_with(b":)\n")).await;
    let posts = sim.mastodon_publish(2);
    assert!(sim.mastodon_delete(&posts[0].id));
    let deleted = format!("event: delete\ndata: {}\n\n", posts[0].id);
    sse.until(|b| contains(b, &deleted)).await;
    sse.until(|b| b.ends_with(b":thump\n\n")).await;
    let sent = sim.sent();
    assert_eq!(sent.iter().map(|m| m.kind).collect::<Vec<_>>(), ["update", "update", "delete"]);
    assert_eq!(sent[2].id.as_deref(), Some(posts[0].id.as_str()));
    let mut expected = String::from(":)\n");
    for m in &sent {
        expected.push_str(&format!("event: {}\ndata: {}\n\n", m.kind, String::from_utf8_lossy(&m.payload)));
    }
    // Public streams get `"filtered":[]` (B.9); heartbeats may fall anywhere
    // between blocks.
    assert!(String::from_utf8_lossy(&sent[0].payload).ends_with(",\"filtered\":[]}"));
    let text = sse.text();
    assert_eq!(text.replace(":thump\n\n", ""), expected);
    assert!(text.starts_with(":)\nevent: update\ndata: {\"") || text.starts_with(":)\n:thump\n\n"));
    let status: serde_json::Value = serde_json::from_slice(&sent[0].payload).expect("status JSON");
    assert_eq!(status["id"], posts[0].id.as_str());
    assert!(status["account"]["acct"].is_string() && status["created_at"].is_string());
    let conns = sim.connections();
    assert_eq!(conns[0].path, "/api/v1/streaming/public");
    assert!(conns[0].auth_ok);
    sim.stop().await;
}

#[actix_rt::test]
async fn missing_and_invalid_tokens_get_401() {
    let sim = sim(30_000).await;
    let client = awc::Client::default();
    let url = format!("{}/api/v1/streaming/public", sim.base_url());
    let cases: [(Option<String>, &str); 3] = [
        (None, r#"{"error":"Missing access token"}"#),
        (Some("Bearer nope".into()), r#"{"error":"Invalid access token"}"#),
        (Some(format!("bearer {DEMO_MASTODON_TOKEN}")), r#"{"error":"Invalid access token"}"#),
    ];
    for (auth, body) in cases {
        let mut req = client.get(&url);
        if let Some(a) = auth {
            req = req.insert_header(("Authorization", a));
        }
        let mut resp = timeout(WAIT, req.send()).await.expect("in time").expect("response");
        assert_eq!(resp.status().as_u16(), 401);
        assert_eq!(&resp.body().await.expect("body")[..], body.as_bytes());
    }
    assert!(sim.connections().iter().all(|c| !c.auth_ok && c.status == 401));
    sim.stop().await;
}

#[actix_rt::test]
async fn unknown_channel_and_missing_tag_get_400_and_health_is_ok() {
    let sim = sim(30_000).await;
    let client = awc::Client::default();
    let cases = [
        ("/api/v1/streaming/firehose", 400, r#"{"error":"Unknown channel requested"}"#),
        ("/api/v1/streaming/hashtag", 400, r#"{"error":"Missing tag name parameter"}"#),
        ("/api/v1/streaming/list", 400, r#"{"error":"Missing list name parameter"}"#),
        ("/api/v1/streaming/list?list=999", 401, r#"{"error":"Not authorized to stream this list"}"#),
    ];
    for (path, status, body) in cases {
        let req = client.get(format!("{}{path}", sim.base_url())).insert_header(("Authorization", bearer()));
        let mut resp = timeout(WAIT, req.send()).await.expect("in time").expect("response");
        assert_eq!(resp.status().as_u16(), status, "{path}");
        assert_eq!(&resp.body().await.expect("body")[..], body.as_bytes(), "{path}");
    }
    let mut resp = timeout(WAIT, client.get(format!("{}/api/v1/streaming/health", sim.base_url())).send())
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(&resp.body().await.expect("body")[..], b"OK");
    sim.stop().await;
}

#[actix_rt::test]
async fn status_reaches_public_and_its_hashtag_but_not_another_hashtag() {
    let sim = sim(30_000).await;
    let mut public = Sse::open(&sim, "/api/v1/streaming/public", Some(&bearer())).await;
    let mut rust = Sse::open(&sim, "/api/v1/streaming/hashtag?tag=Rust", Some(&bearer())).await;
    let mut news = Sse::open(&sim, "/api/v1/streaming/hashtag?tag=news", Some(&bearer())).await;
    let mut local = Sse::open(&sim, "/api/v1/streaming/public/local", Some(&bearer())).await;
    for s in [&mut public, &mut rust, &mut news, &mut local] {
        s.until(|b| b.starts_with(b":)\n")).await;
    }
    let remote_rust = sim.mastodon_post(&["rust"], false, false);
    let marker = sim.mastodon_post(&["news"], true, false);
    let (a, b) = (format!("\"id\":\"{}\"", remote_rust.id), format!("\"id\":\"{}\"", marker.id));
    public.until(|x| contains(x, &a) && contains(x, &b)).await;
    rust.until(|x| contains(x, &a)).await;
    news.until(|x| contains(x, &b)).await;
    local.until(|x| contains(x, &b)).await;
    // Events keep their order per connection: the marker came after.
    assert!(!contains(&news.body, &a), "news stream got the #rust status");
    assert!(!contains(&local.body, &a), "public:local got a remote status");
    sim.stop().await;
}

/// Parses `<url>; rel="prev"` out of a Link header.
fn link(header: &str, rel: &str) -> Option<String> {
    header.split(", ").find(|p| p.ends_with(&format!("rel=\"{rel}\""))).and_then(|p| {
        let start = p.find('<')? + 1;
        let end = p.find('>')?;
        Some(p[start..end].to_string())
    })
}

#[actix_rt::test]
async fn rest_min_id_walks_forward_through_100_statuses_with_links() {
    let sim = sim(30_000).await;
    let posts = sim.mastodon_publish(100);
    let client = awc::Client::default();
    let mut url = format!("{}/api/v1/timelines/public?limit=40&min_id=0", sim.base_url());
    let mut seen: Vec<String> = Vec::new();
    let mut sizes = Vec::new();
    for _ in 0..10 {
        let req = client.get(&url).insert_header(("Authorization", bearer()));
        let mut resp = timeout(WAIT, req.send()).await.expect("in time").expect("response");
        assert_eq!(resp.status().as_u16(), 200);
        let links = resp.headers().get("link").and_then(|v| v.to_str().ok()).map(str::to_string);
        let page: Vec<serde_json::Value> = resp.json().limit(10 << 20).await.expect("JSON page");
        sizes.push(page.len());
        if page.is_empty() {
            assert!(links.is_none());
            break;
        }
        let ids: Vec<String> = page.iter().map(|s| s["id"].as_str().expect("id").to_string()).collect();
        // Newest first within the page.
        assert!(ids.windows(2).all(|w| super::id_cmp(&w[0], &w[1]).is_gt()), "{ids:?}");
        let links = links.expect("Link header");
        let next = link(&links, "next").expect("rel=next");
        assert!(next.ends_with(&format!("max_id={}", ids[ids.len() - 1])), "{next}");
        url = link(&links, "prev").expect("rel=prev");
        assert!(url.ends_with(&format!("min_id={}", ids[0])), "{url}");
        seen.extend(ids.into_iter().rev());
    }
    assert_eq!(sizes, [40, 40, 20, 0]);
    assert_eq!(seen, posts.iter().map(|p| p.id.clone()).collect::<Vec<_>>());
    sim.stop().await;
}

#[actix_rt::test]
async fn rest_rate_limit_headers_decrement_and_max_id_pages_back() {
    let sim = sim(30_000).await;
    let posts = sim.mastodon_publish(30);
    let client = awc::Client::default();
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let req = client
            .get(format!("{}/api/v1/timelines/public?max_id={}", sim.base_url(), posts[25].id))
            .insert_header(("Authorization", bearer()));
        let mut resp = timeout(WAIT, req.send()).await.expect("in time").expect("response");
        let h = |k: &str| resp.headers().get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        assert_eq!(h("x-ratelimit-limit"), "300");
        assert!(h("x-ratelimit-reset").ends_with('Z'));
        remaining.push(h("x-ratelimit-remaining"));
        let page: Vec<serde_json::Value> = resp.json().limit(10 << 20).await.expect("JSON page");
        let ids: Vec<&str> = page.iter().filter_map(|s| s["id"].as_str()).collect();
        let want: Vec<&str> = posts[5..25].iter().rev().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, want);
    }
    assert_eq!(remaining, ["299", "298", "297"]);
    let resp = timeout(WAIT, client.get(format!("{}/api/v1/notifications", sim.base_url())).send())
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(resp.status().as_u16(), 401);
    sim.stop().await;
}

#[actix_rt::test]
async fn user_streams_get_notifications_and_close_after_ends_abruptly() {
    let sim = start(SimulatorConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        rate: 0,
        keepalive_ms: 30_000,
        record_sent: 100,
        scenario: super::super::Scenario::always(super::super::AttemptScript {
            close_after: Some(1),
            ..Default::default()
        }),
        ..SimulatorConfig::default()
    })
    .await
    .expect("start");
    let mut user = Sse::open(&sim, "/api/v1/streaming/user/notification", Some(&bearer())).await;
    user.until(|b| b.starts_with(b":)\n")).await;
    let id = sim.mastodon_notify();
    let want = format!("event: notification\ndata: {{\"id\":\"{id}\"");
    user.until(|b| contains(b, &want)).await;
    // close_after = 1: no final chunk, the socket just ends.
    let mut rest = Vec::new();
    let read = timeout(WAIT, user.stream.read_to_end(&mut rest)).await.expect("end in time");
    assert!(read.is_err() || !contains(&rest, "0\r\n\r\n"), "clean end: {rest:?}");
    let conns = sim.connections();
    let end = timeout(WAIT, async {
        loop {
            if let Some(c) = sim.connections().into_iter().find(|c| !c.end.is_empty()) {
                return c.end;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("end logged");
    assert_eq!(end, "close_after");
    assert_eq!(conns[0].path, "/api/v1/streaming/user/notification");
    assert_eq!(sim.sent()[0].kind, "notification");
    sim.stop().await;
}

fn count(hay: &[u8], needle: &str) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle.as_bytes()).count()
}

fn has_status(body: &[u8], id: &str) -> bool {
    contains(body, &format!("\"id\":\"{id}\""))
}

/// Waits until attempt `attempt` has withheld `n` events.
async fn wait_withheld(sim: &SimHandle, attempt: u64, n: u64) {
    timeout(WAIT, async {
        while !sim.connections().iter().any(|c| c.attempt == attempt && c.withheld >= n) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("attempt {attempt} never withheld {n} events: {:?}", sim.connections()));
}

impl Sse {
    /// Two more heartbeats arrive (what came before them was already sent).
    async fn two_more_heartbeats(&mut self) {
        let seen = self.body.len();
        self.until(|b| count(&b[seen..], ":thump\n\n") >= 2).await;
    }
}

/// The ids of a REST timeline's first page, newest first.
async fn rest_ids(sim: &SimHandle, path: &str) -> Vec<String> {
    let req =
        awc::Client::default().get(format!("{}{path}", sim.base_url())).insert_header(("Authorization", bearer()));
    let mut resp = timeout(WAIT, req.send()).await.expect("in time").expect("response");
    assert_eq!(resp.status().as_u16(), 200, "{path}");
    let page: Vec<serde_json::Value> = resp.json().limit(10 << 20).await.expect("JSON page");
    page.iter().map(|s| s["id"].as_str().expect("id").to_string()).collect()
}

#[actix_rt::test]
async fn mute_after_withholds_events_while_heartbeats_and_rest_go_on() {
    let sim = start(SimulatorConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        rate: 0,
        keepalive_ms: 20,
        record_sent: 100,
        scenario: super::super::Scenario::always(super::super::AttemptScript {
            mute_after: Some(1),
            ..Default::default()
        }),
        ..SimulatorConfig::default()
    })
    .await
    .expect("start");
    let mut sse = Sse::open(&sim, "/api/v1/streaming/hashtag?tag=muted", Some(&bearer())).await;
    sse.until(|b| b.starts_with(b":)\n")).await;
    let first = sim.mastodon_post(&["muted"], true, false);
    sse.until(|b| has_status(b, &first.id)).await;
    let later: Vec<_> = (0..3).map(|_| sim.mastodon_post(&["muted"], false, false)).collect();
    // Taken by the connection and dropped: anything it sent would be
    // before the heartbeats that follow.
    wait_withheld(&sim, 0, 3).await;
    sse.two_more_heartbeats().await;
    for p in &later {
        assert!(!has_status(&sse.body, &p.id), "muted stream delivered {}", p.id);
    }
    let c = &sim.connections()[0];
    assert_eq!((c.messages_sent, c.withheld, c.end.as_str()), (1, 3, ""));
    let want: Vec<String> = later.iter().rev().chain([&first]).map(|p| p.id.clone()).collect();
    assert_eq!(rest_ids(&sim, "/api/v1/timelines/tag/muted").await, want);
    assert_eq!(rest_ids(&sim, "/api/v1/timelines/public").await, want);
    sim.stop().await;
}

#[actix_rt::test]
async fn mute_all_mutes_open_and_new_streams_until_unmuted() {
    let sim = sim(20).await;
    let mut public = Sse::open(&sim, "/api/v1/streaming/public", Some(&bearer())).await;
    public.until(|b| b.starts_with(b":)\n")).await;
    sim.mastodon_mute_all(true);
    let a = sim.mastodon_post(&["rust"], true, false);
    // Opened while muted.
    let mut rust = Sse::open(&sim, "/api/v1/streaming/hashtag?tag=rust", Some(&bearer())).await;
    rust.until(|b| b.starts_with(b":)\n")).await;
    let b = sim.mastodon_post(&["rust"], false, false);
    wait_withheld(&sim, 0, 2).await;
    wait_withheld(&sim, 1, 1).await;
    for s in [&mut public, &mut rust] {
        s.two_more_heartbeats().await;
        assert!(!has_status(&s.body, &a.id) && !has_status(&s.body, &b.id), "{}", s.text());
    }
    assert_eq!(rest_ids(&sim, "/api/v1/timelines/tag/rust").await, [b.id.clone(), a.id.clone()]);
    sim.mastodon_mute_all(false);
    let c = sim.mastodon_post(&["rust"], true, false);
    for s in [&mut public, &mut rust] {
        s.until(|body| has_status(body, &c.id)).await;
        // What was published while muted stays lost.
        assert!(!has_status(&s.body, &a.id) && !has_status(&s.body, &b.id), "{}", s.text());
    }
    let log = sim.connections();
    assert_eq!(log.iter().map(|c| (c.messages_sent, c.withheld)).collect::<Vec<_>>(), [(1, 2), (1, 1)]);
    assert!(sim.sent().iter().all(|m| m.id.as_deref() == Some(c.id.as_str())));
    sim.stop().await;
}

#[actix_rt::test]
async fn reset_all_ends_sse_bodies_with_an_rst() {
    let sim = sim(30_000).await;
    let mut streams = Vec::new();
    for target in ["/api/v1/streaming/public", "/api/v1/streaming/user", "/api/v1/streaming/hashtag?tag=rust"] {
        let mut sse = Sse::open(&sim, target, Some(&bearer())).await;
        sse.until(|b| b.starts_with(b":)\n")).await;
        streams.push(sse);
    }
    assert_eq!(sim.reset_all(), 3);
    for (i, sse) in streams.iter_mut().enumerate() {
        let mut rest = Vec::new();
        let read = timeout(WAIT, sse.stream.read_to_end(&mut rest)).await.expect("the end in time");
        let err = read.expect_err("the body must not end cleanly");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "stream {i}: {err}");
    }
    let ends = timeout(WAIT, async {
        loop {
            let log = sim.connections();
            if log.iter().all(|c| c.closed_at.is_some()) {
                return log.into_iter().map(|c| c.end).collect::<Vec<_>>();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("ends logged");
    assert_eq!(ends, ["reset_all"; 3]);
    sim.stop().await;
}
