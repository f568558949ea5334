//! What the socket tests of the WebSocket endpoints (`mastodon_ws`,
//! `jetstream`) share: a simulator on `127.0.0.1:0`, awc's WebSocket client
//! with every wait bounded by `WAIT`, a raw upgrade request for the answers
//! that are not upgrades, and polling the simulator's logs. Each endpoint's
//! tests add their own `impl Ws` (its messages) next to them.
#![cfg(test)]

use std::time::Duration;

use awc::error::{WsClientError, WsProtocolError};
use awc::ws::{Frame, Message, WebsocketsRequest};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::{start, AttemptScript, SimHandle, SimulatorConfig};

/// The bound on every wait.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// On `127.0.0.1:0`, Twitter streams unpaced, sent messages recorded.
pub(crate) fn config() -> SimulatorConfig {
    SimulatorConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        rate: 0,
        record_sent: 10_000,
        ..SimulatorConfig::default()
    }
}

pub(crate) async fn sim_with(config: SimulatorConfig) -> SimHandle {
    start(config).await.expect("simulator starts")
}

/// An attempt script made by `f` from the default.
pub(crate) fn script(f: fn(&mut AttemptScript)) -> AttemptScript {
    let mut s = AttemptScript::default();
    f(&mut s);
    s
}

/// awc's client connection (its type is not nameable from here).
trait WsIo:
    Stream<Item = Result<Frame, WsProtocolError>> + Sink<Message, Error = WsProtocolError> + Unpin + 'static
{
}

impl<T> WsIo for T where
    T: Stream<Item = Result<Frame, WsProtocolError>> + Sink<Message, Error = WsProtocolError> + Unpin + 'static
{
}

/// A WebSocket client connection.
pub(crate) struct Ws {
    io: Box<dyn WsIo>,
    /// The `Sec-WebSocket-Protocol` the server answered with.
    pub(crate) protocol: Option<String>,
}

impl Ws {
    /// Upgrades `target` on `sim`; `build` adds the endpoint's headers and
    /// options to the request.
    pub(crate) async fn upgrade(
        sim: &SimHandle,
        target: &str,
        build: impl FnOnce(WebsocketsRequest) -> WebsocketsRequest,
    ) -> Result<Ws, WsClientError> {
        let req = build(awc::Client::new().ws(format!("ws://{}{target}", sim.addr())));
        let (resp, io) = timeout(WAIT, req.connect()).await.expect("upgrade answered in time")?;
        let protocol = resp.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).map(str::to_string);
        Ok(Ws { io: Box::new(io), protocol })
    }

    pub(crate) async fn send(&mut self, msg: Message) {
        timeout(WAIT, self.io.send(msg)).await.expect("sent in time").expect("send");
    }

    pub(crate) async fn text(&mut self, text: &str) {
        self.send(Message::Text(text.to_string().into())).await;
    }

    /// The next frame, None at EOF, an error after a reset.
    pub(crate) async fn next(&mut self) -> Option<Result<Frame, WsProtocolError>> {
        timeout(WAIT, self.io.next()).await.expect("frame or end in time")
    }

    pub(crate) async fn frame(&mut self) -> Frame {
        self.next().await.expect("a frame, not the end").expect("a valid frame")
    }

    /// The connection must end without a Close frame (the client sees
    /// 1006): None at EOF, the error after a reset.
    pub(crate) async fn expect_dropped(&mut self) -> Option<WsProtocolError> {
        loop {
            match self.next().await {
                None => return None,
                Some(Err(e)) => return Some(e),
                Some(Ok(Frame::Close(reason))) => panic!("expected an abrupt end, got Close {reason:?}"),
                Some(Ok(_)) => {}
            }
        }
    }
}

/// Polls `f` until it answers (bounded by `WAIT`).
pub(crate) async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let found = timeout(WAIT, async {
        loop {
            if let Some(v) = f() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A raw upgrade request. Returns the status, the head and the body: as
/// much as `Content-Length` announces, with whatever else came along (not
/// read to EOF: actix defers its close up to a second while the client
/// keeps the connection).
pub(crate) async fn raw_upgrade(sim: &SimHandle, target: &str, extra_headers: &str) -> (u16, String, String) {
    let mut stream = timeout(WAIT, TcpStream::connect(sim.addr())).await.expect("connect in time").expect("connect");
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n",
        sim.addr()
    );
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut bytes = Vec::new();
    let (head, body_len) = loop {
        if let Some(i) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..i]).to_string();
            let len = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
            bytes.drain(..i + 4);
            break (head, len);
        }
        let n = timeout(WAIT, stream.read_buf(&mut bytes)).await.expect("head in time").expect("read");
        assert!(n > 0, "EOF before the head: {}", String::from_utf8_lossy(&bytes));
    };
    while bytes.len() < body_len {
        let n = timeout(WAIT, stream.read_buf(&mut bytes)).await.expect("body in time").expect("read");
        assert!(n > 0, "EOF in the body");
    }
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status in {head:?}"));
    (status, head, String::from_utf8_lossy(&bytes).to_string())
}

/// A header's value from a raw head, by case-insensitive name.
pub(crate) fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}
