//! [`Link`]: one open connection as the `StreamActor` reads it, whatever the
//! transport — a chunked HTTP body, a Server-Sent Events stream or a
//! WebSocket — yielding [`Input`]s. Every read is cancel-safe: anything that
//! must be written back (a pong) waits in the link until [`Link::settle`].

use std::sync::Arc;

use actix_codec::Framed;
use actix_http::ws::Item as WsItem;
use awc::ws;
use awc::BoxedSocket;
use bytes::{Bytes, BytesMut};
use futures_util::stream::LocalBoxStream;
use futures_util::{SinkExt, StreamExt};

use super::sse::{SseItem, SseParser};
use crate::error::{DisconnectCause, StreamError};

/// Log excerpts of messages and response bodies are cut at this many bytes.
const LOG_SNIPPET: usize = 200;

/// An HTTP response body, as awc yields it.
pub type Body = LocalBoxStream<'static, Result<Bytes, awc::error::PayloadError>>;

/// One dispatched Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event` field, or `message` when it was absent or empty.
    pub event: String,
    /// The `data` lines joined with LF.
    pub data: String,
    /// The last event ID the stream gave so far (it persists across events).
    pub id: String,
}

/// What a link yields.
#[derive(Debug)]
pub enum Input {
    /// Bytes of an HTTP body as read; framing them is the family's.
    Bytes(Bytes),
    /// One Server-Sent Event.
    Sse(SseEvent),
    /// One complete WebSocket text message (fragments reassembled).
    Text(Bytes),
    /// One complete WebSocket binary message.
    Binary(Bytes),
    /// Proof of life that carries nothing: an SSE comment or `retry`, bytes
    /// that end no event yet, a WebSocket ping or partial fragment.
    KeepAlive,
    /// A WebSocket pong: the server answered one of our pings.
    Pong,
    /// A message over `max_message_bytes` was dropped; the stream goes on.
    Oversized {
        /// What was too long (`line`, `event`, `fragmented message`).
        what: &'static str,
        /// Its length in bytes as far as known.
        len: usize,
    },
}

enum Inner {
    Body(Body),
    Sse { body: Body, parser: SseParser },
    Ws(Box<WsLink>),
}

struct WsLink {
    framed: Framed<BoxedSocket, ws::Codec>,
    fragments: Option<BytesMut>,
    max_message_bytes: usize,
    /// A ping to answer once the read that saw it is over.
    pong: Option<Bytes>,
}

/// One open connection.
pub struct Link {
    id: Arc<str>,
    inner: Inner,
    /// Bytes read since the last [`Link::take_bytes`].
    bytes: u64,
}

impl Link {
    /// A chunked HTTP body whose bytes the family frames.
    pub fn body(id: Arc<str>, body: Body) -> Link {
        Link { id, inner: Inner::Body(body), bytes: 0 }
    }

    /// An SSE body, parsed within `max_message_bytes` per line and per event.
    pub fn sse(id: Arc<str>, body: Body, max_message_bytes: usize) -> Link {
        let parser = SseParser::new(max_message_bytes, max_message_bytes);
        Link { id, inner: Inner::Sse { body, parser }, bytes: 0 }
    }

    /// An upgraded WebSocket; messages over `max_message_bytes` are dropped.
    pub fn websocket(id: Arc<str>, framed: Framed<BoxedSocket, ws::Codec>, max_message_bytes: usize) -> Link {
        let ws = WsLink { framed, fragments: None, max_message_bytes, pong: None };
        Link { id, inner: Inner::Ws(Box::new(ws)), bytes: 0 }
    }

    /// Bytes read since the last call (WebSocket: message payloads).
    pub fn take_bytes(&mut self) -> u64 {
        std::mem::take(&mut self.bytes)
    }

    /// The next input. The end of the stream is `Err(Retryable(Eof))`, a
    /// broken connection `Err(Retryable(Network))`.
    pub async fn next(&mut self) -> Result<Input, StreamError> {
        match &mut self.inner {
            Inner::Body(body) => {
                let chunk = read(body).await?;
                self.bytes += chunk.len() as u64;
                Ok(Input::Bytes(chunk))
            }
            Inner::Sse { body, parser } => {
                if let Some(item) = parser.next_item() {
                    return Ok(sse_input(item));
                }
                let chunk = read(body).await?;
                self.bytes += chunk.len() as u64;
                parser.push(&chunk);
                // Bytes that complete nothing still prove the connection alive.
                Ok(parser.next_item().map_or(Input::KeepAlive, sse_input))
            }
            Inner::Ws(ws) => {
                let frame = match ws.framed.next().await {
                    None => return Err(StreamError::Retryable(DisconnectCause::Eof)),
                    Some(Err(e)) => return Err(StreamError::network(e)),
                    Some(Ok(frame)) => frame,
                };
                let input = match frame {
                    ws::Frame::Text(b) => Input::Text(b),
                    ws::Frame::Binary(b) => Input::Binary(b),
                    ws::Frame::Ping(p) => {
                        ws.pong = Some(p);
                        Input::KeepAlive
                    }
                    ws::Frame::Pong(_) => Input::Pong,
                    ws::Frame::Close(reason) => {
                        let code = reason.as_ref().map(|r| u16::from(r.code));
                        tracing::info!(connection = %self.id, code, "server closed the WebSocket");
                        return Err(StreamError::Retryable(DisconnectCause::Eof));
                    }
                    ws::Frame::Continuation(item) => {
                        match continuation(&mut ws.fragments, item, ws.max_message_bytes) {
                            Fragment::Complete(b) => Input::Text(b),
                            Fragment::More => Input::KeepAlive,
                            Fragment::Dropped(len) => Input::Oversized { what: "fragmented message", len },
                        }
                    }
                };
                if let Input::Text(b) | Input::Binary(b) = &input {
                    self.bytes += b.len() as u64;
                }
                Ok(input)
            }
        }
    }

    /// Writes back what the last read owes the server (a pong). Called
    /// outside any race, so a write is never cut in half.
    pub async fn settle(&mut self) -> Result<(), StreamError> {
        if let Inner::Ws(ws) = &mut self.inner {
            if let Some(p) = ws.pong.take() {
                ws.framed.send(ws::Message::Pong(p)).await.map_err(StreamError::network)?;
            }
        }
        Ok(())
    }

    /// Sends a WebSocket ping (WebSocket only); its pong comes back as [`Input::Pong`].
    pub async fn ping(&mut self, payload: Bytes) -> Result<(), StreamError> {
        match &mut self.inner {
            Inner::Ws(ws) => ws.framed.send(ws::Message::Ping(payload)).await.map_err(StreamError::network),
            _ => Err(StreamError::Fatal { reason: "cannot ping an HTTP stream".into() }),
        }
    }

    /// Sends a text message (WebSocket only).
    pub async fn send_text(&mut self, text: String) -> Result<(), StreamError> {
        match &mut self.inner {
            Inner::Ws(ws) => ws.framed.send(ws::Message::Text(text.into())).await.map_err(StreamError::network),
            _ => Err(StreamError::Fatal { reason: "cannot send a message on an HTTP stream".into() }),
        }
    }

    /// Ends the connection politely (WebSocket: a Close frame).
    pub async fn close(&mut self) {
        if let Inner::Ws(ws) = &mut self.inner {
            let _ = ws.framed.send(ws::Message::Close(Some(ws::CloseCode::Normal.into()))).await;
        }
    }
}

async fn read(body: &mut Body) -> Result<Bytes, StreamError> {
    match body.next().await {
        None => Err(StreamError::Retryable(DisconnectCause::Eof)),
        Some(Err(e)) => Err(StreamError::network(e)),
        Some(Ok(chunk)) => Ok(chunk),
    }
}

fn sse_input(item: SseItem) -> Input {
    match item {
        SseItem::Event { event, data, last_event_id } => Input::Sse(SseEvent { event, data, id: last_event_id }),
        SseItem::TooLong { what, len } => Input::Oversized { what, len },
        SseItem::Comment | SseItem::Retry(_) => Input::KeepAlive,
    }
}

enum Fragment {
    Complete(Bytes),
    More,
    Dropped(usize),
}

/// Reassembles a fragmented message, bounded by `max`.
fn continuation(buf: &mut Option<BytesMut>, item: WsItem, max: usize) -> Fragment {
    let (first, last, bytes) = match item {
        WsItem::FirstText(b) | WsItem::FirstBinary(b) => (true, false, b),
        WsItem::Continue(b) => (false, false, b),
        WsItem::Last(b) => (false, true, b),
    };
    if first {
        *buf = Some(BytesMut::new());
    }
    let Some(acc) = buf.as_mut() else { return Fragment::More };
    if acc.len() + bytes.len() > max {
        let len = acc.len() + bytes.len();
        *buf = None;
        return Fragment::Dropped(len);
    }
    acc.extend_from_slice(&bytes);
    if last {
        return Fragment::Complete(buf.take().map(BytesMut::freeze).unwrap_or_default());
    }
    Fragment::More
}

/// The first bytes of a message, lossily decoded, for logs.
pub fn snippet(bytes: &[u8]) -> String {
    let cut = bytes.len().min(LOG_SNIPPET);
    let mut s = String::from_utf8_lossy(&bytes[..cut]).into_owned();
    if bytes.len() > cut {
        s.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_reassemble_within_the_limit() {
        let mut buf = None;
        assert!(matches!(
            continuation(&mut buf, WsItem::FirstText(Bytes::from_static(b"{\"a\"")), 100),
            Fragment::More
        ));
        assert!(matches!(continuation(&mut buf, WsItem::Continue(Bytes::from_static(b":")), 100), Fragment::More));
        match continuation(&mut buf, WsItem::Last(Bytes::from_static(b"1}")), 100) {
            Fragment::Complete(b) => assert_eq!(&b[..], b"{\"a\":1}"),
            _ => panic!("not complete"),
        }
        assert!(matches!(continuation(&mut buf, WsItem::FirstText(Bytes::from(vec![b'x'; 60])), 100), Fragment::More));
        assert!(matches!(
            continuation(&mut buf, WsItem::Last(Bytes::from(vec![b'x'; 60])), 100),
            Fragment::Dropped(120)
        ));
        // A stray continuation without a first frame is ignored.
        assert!(matches!(continuation(&mut buf, WsItem::Last(Bytes::from_static(b"x")), 100), Fragment::More));
    }

    #[test]
    fn snippets_are_truncated() {
        let long = vec![b'a'; 1000];
        let s = snippet(&long);
        assert!(s.len() < 260 && s.ends_with("(1000 bytes)"));
    }
}
