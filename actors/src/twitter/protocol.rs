//! The Twitter v1.1 connection protocol: sign and send the streaming
//! request, frame the chunked body (CRLF lines or `delimited=length`),
//! classify each message by its top-level keys, and act on what the stream
//! itself says (limit counts, the site stream's control URI, disconnect
//! messages). A changed request takes effect at the next connect. Every
//! interruption is written as a `gap` event before the first message after it.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::classify::classify_twitter;
use super::framing::{Delimiting, Frame, Framer};
use super::kinds;
use super::request::{sign, Method, OAuthCredentials, StreamRequest};
use super::watermark::Watermark;
use crate::connection::actor::{Conn, ConnectionSpec, Protocol};
use crate::connection::http::{self, BodyKind};
use crate::connection::link::{snippet, Input, Link};
use crate::connection::stats::ConnectionStats;
use crate::delivery::ack::OnWritten;
use crate::error::{DisconnectCause, StreamError};
use crate::event::{EventKind, GapPayload};

/// Statuses after which retrying the same request cannot help (SPEC 5).
const FATAL_STATUSES: [u16; 7] = [401, 403, 404, 406, 413, 416, 422];

/// What a Twitter connection needs.
#[derive(Debug, Clone)]
pub struct TwitterConnection {
    /// The unsigned request.
    pub request: StreamRequest,
    /// Credentials to sign it with.
    pub credentials: OAuthCredentials,
    /// Body framing.
    pub delimiting: Delimiting,
    /// The source's acknowledged watermark, shared by its connections.
    pub watermark: Arc<Watermark>,
}

/// Replace the request a connection uses for its next (re)connect; a live
/// connection is not touched.
#[derive(Debug, Clone)]
pub struct SetRequest(pub StreamRequest);

/// What a Twitter connection tells its planner.
#[derive(Debug, Clone)]
pub enum TwitterNotice {
    /// Connected with a request naming these follow ids (what the server now carries).
    Connected {
        /// The follow ids of the request.
        follow: Vec<u64>,
    },
    /// A site stream announced its control stream.
    ControlAnnounced {
        /// The `control_uri`, e.g. `/1.1/site/c/1_1_54e3`.
        control_uri: String,
    },
}

/// One Twitter connection's protocol state.
pub struct TwitterProtocol {
    config: TwitterConnection,
    max_message_bytes: usize,
    stall_timeout: std::time::Duration,
    framer: Framer,
    /// When the last bytes arrived: where the gap of an interruption begins.
    last_byte_at: Option<DateTime<Utc>>,
    /// An interruption whose gap event waits for the first message after it.
    gap: Option<OpenGap>,
    /// The newest event of this step, recorded in the watermark once written.
    newest: Option<DateTime<Utc>>,
}

/// An interruption not yet closed by a message.
#[derive(Debug)]
struct OpenGap {
    reason: &'static str,
    cause: Option<String>,
    from: DateTime<Utc>,
    /// The highest cumulative `limit.track` the new connection reported
    /// before its first other message: tweets withheld inside the gap.
    limit_omitted: u64,
}

impl Protocol for TwitterProtocol {
    type Config = TwitterConnection;
    type Command = SetRequest;
    type Notice = TwitterNotice;
    type Side = ();

    fn host(&self) -> String {
        crate::settings::authority(&self.config.request.url)
    }

    fn new(config: TwitterConnection, spec: &ConnectionSpec) -> Self {
        let framer = Framer::new(config.delimiting, spec.max_message_bytes);
        // What a previous run wrote last, claimed by the first connection
        // that delivers: the restart gap runs from there.
        let gap = config.watermark.take_previous().map(|from| OpenGap {
            reason: "restart",
            cause: Some("the process was stopped".into()),
            from,
            limit_omitted: 0,
        });
        TwitterProtocol {
            config,
            max_message_bytes: spec.max_message_bytes,
            stall_timeout: spec.stall_timeout,
            framer,
            last_byte_at: None,
            gap,
            newest: None,
        }
    }

    async fn open(&mut self, conn: &mut Conn<Self>) -> Result<Link, StreamError> {
        let client = http::client(self.stall_timeout);
        let request = &self.config.request;
        let signed = sign(request, &self.config.credentials);
        let req = match signed.method {
            Method::Get => client.get(&signed.url),
            Method::Post => client.post(&signed.url),
        }
        .insert_header((awc::http::header::AUTHORIZATION, signed.authorization.as_str()));
        // The base URL only: a site stream's query names 100 users.
        tracing::info!(connection = %conn.spec.id, url = %request.url, params = request.params.len(), "connecting");
        let send = match signed.body {
            Some(body) => req.content_type("application/x-www-form-urlencoded").send_body(body),
            None => req.send(),
        };
        let link = http::open(&conn.spec.id, send, BodyKind::Chunks, &FATAL_STATUSES, self.max_message_bytes).await?;
        // A new body: nothing of the old one may be carried over.
        self.framer = Framer::new(self.config.delimiting, self.max_message_bytes);
        Ok(link)
    }

    async fn opened(&mut self, _link: &mut Link, conn: &mut Conn<Self>) -> Result<(), StreamError> {
        let follow = self
            .config
            .request
            .params
            .iter()
            .find(|(k, _)| k == "follow")
            .map(|(_, v)| v.split(',').filter_map(|id| id.parse().ok()).collect())
            .unwrap_or_default();
        conn.notice(TwitterNotice::Connected { follow });
        Ok(())
    }

    fn input(&mut self, input: Input, conn: &mut Conn<Self>) -> Option<StreamError> {
        let Input::Bytes(chunk) = input else { return None };
        self.framer.push(&chunk);
        let received_at = Utc::now();
        self.last_byte_at = Some(received_at);
        while let Some(frame) = self.framer.next_frame() {
            let payload = match frame {
                Frame::Message(m) => m,
                Frame::KeepAlive => continue,
                Frame::Oversized { len } => {
                    conn.oversized("message", len);
                    continue;
                }
                Frame::Runaway { len } => {
                    // Counted, logged, and reconnected: a line without end is a
                    // broken body, and skipping it could take for ever.
                    conn.oversized("line without a CRLF", len);
                    return Some(StreamError::network(format!(
                        "broken body: a line ran past max_message_bytes ({} bytes) without a CRLF",
                        conn.spec.max_message_bytes
                    )));
                }
                Frame::BadLength(line) => {
                    conn.stats.counters().malformed.inc();
                    tracing::warn!(connection = %conn.spec.id, line = %snippet(&line), "length line is not a number; skipped");
                    continue;
                }
            };
            let c = match classify_twitter(&payload) {
                Ok(c) => c,
                Err(e) => {
                    conn.malformed(&e.to_string(), &payload);
                    continue;
                }
            };
            if let Some(track) = c.limit_track {
                conn.stats.set_limit_track(track);
            }
            if let Some(gap) = self.gap.as_mut() {
                if c.kind == kinds::LIMIT {
                    gap.limit_omitted = gap.limit_omitted.max(c.limit_track.unwrap_or(0));
                } else {
                    let gap = self.gap.take();
                    if let Some(gap) = gap {
                        push_gap(conn, &gap, received_at);
                    }
                }
            }
            self.newest = Some(received_at);
            if let Some(control_uri) = c.control_uri.clone() {
                conn.notice(TwitterNotice::ControlAnnounced { control_uri });
            }
            let end = (c.kind == kinds::DISCONNECT).then(|| disconnect_decision(c.disconnect_code, &payload));
            conn.stats.counters().count_events(c.kind, 1);
            let mut event = conn.event(c.kind, c.id, received_at, payload);
            event.for_user = c.for_user;
            conn.push(event);
            if end.is_some() {
                return end;
            }
        }
        None
    }

    fn apply(&mut self, command: SetRequest, _: &ConnectionStats) {
        self.config.request = command.0;
    }

    fn written(&mut self) -> Option<OnWritten> {
        let at = self.newest.take()?;
        let watermark = self.config.watermark.clone();
        Some(Box::new(move || watermark.advance(at)))
    }

    fn closed(&mut self, connected: bool, end: &StreamError) {
        // A failed attempt extends the open gap; a stop or a final end leaves none.
        if !connected || !matches!(end, StreamError::Retryable(_)) {
            return;
        }
        let from = self.last_byte_at.unwrap_or_else(Utc::now);
        match self.gap.as_mut() {
            // Answered but nothing came before it ended: the same interruption.
            Some(gap) => gap.cause = Some(end.to_string()),
            None => {
                self.gap =
                    Some(OpenGap { reason: end.gap_reason(), cause: Some(end.to_string()), from, limit_omitted: 0 })
            }
        }
    }
}

/// Writes the gap event of `gap`, closed by a message received at `to`.
fn push_gap(conn: &mut Conn<TwitterProtocol>, gap: &OpenGap, to: DateTime<Utc>) {
    let payload = GapPayload {
        reason: gap.reason,
        cause: gap.cause.as_deref(),
        from: Some(gap.from),
        to,
        limit_omitted: Some(gap.limit_omitted),
        ..GapPayload::default()
    };
    tracing::info!(connection = %conn.spec.id, reason = gap.reason, from = %gap.from, %to, limit_omitted = gap.limit_omitted, "stream resumed after a gap");
    conn.stats.counters().gaps.inc();
    let event = conn.event(EventKind::GAP, None, to, payload.to_bytes());
    conn.push(event);
}

/// What a disconnect message means for the connection (protocols.md A.5).
fn disconnect_decision(code: Option<u32>, payload: &Bytes) -> StreamError {
    match code {
        // Duplicate stream, token revoked, admin logout: another client or the
        // user's choice; reconnecting would fight it.
        Some(code @ (2 | 6 | 7)) => {
            StreamError::Fatal { reason: format!("disconnect code {code}: {}", snippet(payload)) }
        }
        Some(9) => StreamError::Finished { reason: "disconnect code 9: backfill complete".into() },
        Some(code) => StreamError::Retryable(DisconnectCause::DisconnectMessage { code }),
        None => StreamError::Retryable(DisconnectCause::DisconnectMessage { code: 0 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnect_codes_follow_the_catalogue() {
        let p = Bytes::from_static(b"{}");
        for code in [1, 3, 4, 5, 8, 10, 11, 12] {
            assert!(
                matches!(disconnect_decision(Some(code), &p), StreamError::Retryable(DisconnectCause::DisconnectMessage { code: c }) if c == code),
                "code {code}"
            );
        }
        for code in [2, 6, 7] {
            assert!(matches!(disconnect_decision(Some(code), &p), StreamError::Fatal { .. }), "code {code}");
        }
        assert!(matches!(disconnect_decision(Some(9), &p), StreamError::Finished { .. }));
    }
}
