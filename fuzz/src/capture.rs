//! The simulator's own payloads, for realistic seeds: a simulator on
//! loopback sending every message kind in turn, its Twitter and Mastodon
//! streams read for a moment with std sockets, and its Jetstream publisher.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use streamherd_actors::twitter::request::{sign, twitter_request, OAuthCredentials, TwitterEndpoint, TwitterQuery};
use streamherd_sim::{AttemptScript, Mix, Scenario, SimCredentials, SimHandle, SimulatorConfig, DEMO_MASTODON_TOKEN};

/// What the simulator sent.
#[derive(Debug, Default)]
pub struct Captured {
    /// Twitter bodies as sent (chunked encoding removed): sample, user and
    /// site streams in CRLF lines, and sample with `delimited=length`.
    pub twitter_lines: Vec<Vec<u8>>,
    /// The `delimited=length` sample body.
    pub twitter_length: Vec<u8>,
    /// Mastodon SSE bodies: the user, public and direct streams.
    pub mastodon_sse: Vec<Vec<u8>>,
    /// Mastodon WebSocket text frames.
    pub mastodon_ws: Vec<Vec<u8>>,
    /// Jetstream events, each as its text frame.
    pub jetstream: Vec<Vec<u8>>,
}

/// Why nothing could be captured.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The simulator did not start.
    #[error("starting the simulator: {0}")]
    Start(std::io::Error),
    /// A socket failed.
    #[error("{what}: {source}")]
    Io {
        /// Which request.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The simulator answered something unexpected.
    #[error("{0}")]
    Protocol(String),
}

/// How long each stream is read.
const READ_FOR: Duration = Duration::from_millis(500);
/// Most bytes kept of one stream.
const MAX_BODY: usize = 512 * 1024;

/// Starts a simulator, captures, stops it.
pub fn capture() -> Result<Captured, CaptureError> {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let flag = Arc::clone(&stop);
    let server = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let config = SimulatorConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                rate: 200,
                keepalive_ms: 100,
                credentials: vec![SimCredentials::demo()],
                scenario: Scenario {
                    attempts: Vec::new(),
                    then: AttemptScript { mix: Mix::Catalog, ..Default::default() },
                },
                ..SimulatorConfig::default()
            };
            match streamherd_sim::start(config).await {
                Ok(sim) => {
                    let _ = tx.send(Ok(sim.clone()));
                    while !flag.load(Ordering::SeqCst) {
                        actix_rt::time::sleep(Duration::from_millis(10)).await;
                    }
                    sim.stop().await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
    });
    let result = match rx.recv() {
        Ok(Ok(sim)) => capture_from(&sim),
        Ok(Err(e)) => Err(CaptureError::Start(e)),
        Err(_) => Err(CaptureError::Protocol("the simulator thread ended before it started".into())),
    };
    stop.store(true, Ordering::SeqCst);
    let _ = server.join();
    result
}

fn capture_from(sim: &SimHandle) -> Result<Captured, CaptureError> {
    let addr = sim.addr();
    let twitter = |endpoint, query: TwitterQuery| -> Result<Conn, CaptureError> {
        let req = twitter_request(endpoint, &sim.base_url(), &query);
        let demo = SimCredentials::demo();
        let creds = OAuthCredentials {
            consumer_key: demo.consumer_key,
            consumer_secret: demo.consumer_secret,
            token: demo.token,
            token_secret: demo.token_secret,
        };
        let signed = sign(&req, &creds);
        let target = signed.url.strip_prefix(&sim.base_url()).unwrap_or(&signed.url).to_owned();
        Conn::open(addr, &target, &[("Authorization", &signed.authorization)])
    };
    let sample = TwitterQuery { stall_warnings: true, ..TwitterQuery::default() };
    let twitter_conns = vec![
        twitter(TwitterEndpoint::Sample, sample.clone())?,
        twitter(TwitterEndpoint::User, TwitterQuery { with: Some("user".into()), ..TwitterQuery::default() })?,
        twitter(
            TwitterEndpoint::Site,
            TwitterQuery { follow: vec![11, 22, 33], with: Some("user".into()), ..TwitterQuery::default() },
        )?,
        twitter(TwitterEndpoint::Sample, TwitterQuery { delimited: true, ..sample })?,
    ];
    let bearer = format!("Bearer {DEMO_MASTODON_TOKEN}");
    let mut sse_conns = Vec::new();
    for channel in ["user", "public", "direct"] {
        sse_conns.push(Conn::open(addr, &format!("/api/v1/streaming/{channel}"), &[("Authorization", &bearer)])?);
    }
    let mut ws_conns = Vec::new();
    for stream in ["user", "public", "direct", "hashtag&tag=rust"] {
        let target = format!("/api/v1/streaming?stream={stream}&access_token={DEMO_MASTODON_TOKEN}");
        let upgrade = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ];
        ws_conns.push(Conn::open(addr, &target, &upgrade)?);
    }

    // Every connection is subscribed now: emit what the generator does not.
    let posts = sim.mastodon_publish(4);
    sim.mastodon_post(&["rust", "RustLang"], true, true);
    sim.mastodon_notify();
    sim.mastodon_emit_catalogue();
    if let Some(first) = posts.first() {
        sim.mastodon_delete(&first.id);
    }
    let dids: Vec<String> = (0..6).map(|i| sim.jetstream_did(i)).collect();
    let mut jetstream: Vec<Vec<u8>> = sim.jetstream_publish(&dids, 40).into_iter().map(|e| e.json.to_vec()).collect();
    jetstream.push(sim.jetstream_publish_unknown(&dids[0]).json.to_vec());

    let read_all = |conns: Vec<Conn>| -> Vec<std::thread::JoinHandle<Result<Vec<u8>, CaptureError>>> {
        conns.into_iter().map(|c| std::thread::spawn(move || c.body())).collect()
    };
    let (twitter, sse, ws) = (read_all(twitter_conns), read_all(sse_conns), read_all(ws_conns));
    let join = |handles: Vec<std::thread::JoinHandle<Result<Vec<u8>, CaptureError>>>| {
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(CaptureError::Protocol("a reader thread panicked".into()))))
            .collect::<Result<Vec<_>, _>>()
    };
    let mut twitter_lines = join(twitter)?;
    let twitter_length = twitter_lines.pop().unwrap_or_default();
    let mastodon_sse = join(sse)?;
    let mut mastodon_ws = Vec::new();
    for raw in join(ws)? {
        mastodon_ws.extend(ws_text_frames(&raw));
    }
    Ok(Captured { twitter_lines, twitter_length, mastodon_sse, mastodon_ws, jetstream })
}

/// One request whose response head has been read.
struct Conn {
    what: String,
    sock: TcpStream,
    /// Body bytes read with the head.
    early: Vec<u8>,
    chunked: bool,
}

impl Conn {
    fn open(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Result<Conn, CaptureError> {
        let what = format!("GET {}", target.split('?').next().unwrap_or(target));
        let io = |source| CaptureError::Io { what: what.clone(), source };
        let mut sock = TcpStream::connect(addr).map_err(io)?;
        sock.set_read_timeout(Some(Duration::from_millis(50))).map_err(io)?;
        let mut request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        sock.write_all(request.as_bytes()).map_err(io)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        let end = loop {
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if Instant::now() > deadline {
                return Err(CaptureError::Protocol(format!("{what}: no response head in 5 s")));
            }
            read_some(&mut sock, &mut got).map_err(io)?;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        let status = head.split(' ').nth(1).unwrap_or("");
        if status != "200" && status != "101" {
            return Err(CaptureError::Protocol(format!("{what}: answered {}", head.lines().next().unwrap_or(""))));
        }
        let chunked = head.contains("transfer-encoding: chunked");
        Ok(Conn { early: got[end + 4..].to_vec(), what, sock, chunked })
    }

    /// The body for [`READ_FOR`] (at most [`MAX_BODY`] bytes), de-chunked.
    fn body(mut self) -> Result<Vec<u8>, CaptureError> {
        let deadline = Instant::now() + READ_FOR;
        let mut raw = std::mem::take(&mut self.early);
        while Instant::now() < deadline && raw.len() < MAX_BODY {
            if let Err(source) = read_some(&mut self.sock, &mut raw) {
                return Err(CaptureError::Io { what: self.what, source });
            }
        }
        Ok(if self.chunked { dechunk(&raw) } else { raw })
    }
}

/// Appends what the socket has; a read timeout is not an error.
fn read_some(sock: &mut TcpStream, out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    match sock.read(&mut buf) {
        Ok(n) => {
            out.extend_from_slice(&buf[..n]);
            if n == 0 {
                // The server closed: wait out the deadline without spinning.
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        }
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The content of a chunked body, up to its last complete chunk.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..i]).ok().and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let Some(size) = size.filter(|n| *n > 0) else { break };
        let Some(chunk) = raw.get(i + 2..i + 2 + size) else { break };
        out.extend_from_slice(chunk);
        raw = raw.get(i + 4 + size..).unwrap_or_default();
    }
    out
}

/// The text frames (reassembled) of a server's WebSocket byte stream.
fn ws_text_frames(mut raw: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut partial: Option<Vec<u8>> = None;
    while raw.len() >= 2 {
        let (fin, opcode) = (raw[0] & 0x80 != 0, raw[0] & 0x0F);
        let masked = raw[1] & 0x80 != 0;
        let (len, mut at) = match raw[1] & 0x7F {
            126 if raw.len() >= 4 => (usize::from(u16::from_be_bytes([raw[2], raw[3]])), 4),
            127 if raw.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&raw[2..10]);
                (usize::try_from(u64::from_be_bytes(n)).unwrap_or(usize::MAX), 10)
            }
            126 | 127 => break,
            n => (usize::from(n), 2),
        };
        let mask = if masked {
            let Some(m) = raw.get(at..at + 4) else { break };
            at += 4;
            Some([m[0], m[1], m[2], m[3]])
        } else {
            None
        };
        let Some(payload) = raw.get(at..at.saturating_add(len)) else { break };
        let mut payload = payload.to_vec();
        if let Some(m) = mask {
            payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= m[i % 4]);
        }
        raw = &raw[at + len..];
        match (opcode, fin) {
            (1, true) => frames.push(payload),
            (1, false) => partial = Some(payload),
            (0, _) => {
                if let Some(p) = partial.as_mut() {
                    p.extend_from_slice(&payload);
                }
                if fin {
                    frames.extend(partial.take());
                }
            }
            _ => {}
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_and_websocket_frames_decode() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n4\r\nfg"), b"abcde");
        let mut ws = vec![0x81, 3];
        ws.extend_from_slice(b"abc");
        ws.extend_from_slice(&[0x89, 0, 0x01, 2]);
        ws.extend_from_slice(b"de");
        ws.extend_from_slice(&[0x80, 1, b'f', 0x81, 5, b'x']);
        assert_eq!(ws_text_frames(&ws), vec![b"abc".to_vec(), b"def".to_vec()]);
    }
}
