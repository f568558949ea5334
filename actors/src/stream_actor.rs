//! One `StreamActor` per connection: signs and opens one streaming request,
//! frames and classifies what arrives, detects stalls against the time of the
//! last byte, hands events to the sinks and reports its lifecycle. It runs
//! under actix supervision: when a connection ends it stops, the supervisor
//! restarts it, and `started` waits out the backoff before reconnecting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use chrono::Utc;
use futures_util::StreamExt;

use crate::backoff::BackoffActor;
use crate::dedup::DedupWindow;
use crate::error::StreamError;
use crate::messages::{
    ControlAnnounced, DisconnectCause, Event, EventKind, SetRequest, StopStream, StreamConnected, StreamDisconnected,
    StreamFailed,
};
use crate::protocol::classify::classify_twitter;
use crate::protocol::framing::{Delimiting, Frame, Framer};
use crate::protocol::request::{sign, Method, OAuthCredentials, StreamRequest};
use crate::sink_actor::SinkHandle;
use crate::stats::{ConnectionState, ConnectionStats};
use crate::supervised::{refusal, snippet, AttemptEnd, SupervisedConnection};

/// Everything one connection needs to connect and read.
#[derive(Debug, Clone)]
pub struct ConnectionSpec {
    /// Connection id, `source/N`.
    pub id: Arc<str>,
    /// Source name.
    pub source: Arc<str>,
    /// The unsigned request.
    pub request: StreamRequest,
    /// Credentials to sign it with.
    pub credentials: OAuthCredentials,
    /// Body framing.
    pub delimiting: Delimiting,
    /// No byte for this long = stalled. Also bounds the wait for the response headers.
    pub stall_timeout: Duration,
    /// A connection healthy this long resets its backoff history.
    pub reset_after: Duration,
    /// Larger messages are dropped with an error.
    pub max_message_bytes: usize,
}

/// Where a `StreamActor` reports its lifecycle.
#[derive(Clone)]
pub struct LifecycleRecipients {
    /// `StreamConnected`.
    pub connected: Recipient<StreamConnected>,
    /// `StreamDisconnected`.
    pub disconnected: Recipient<StreamDisconnected>,
    /// `StreamFailed`.
    pub failed: Recipient<StreamFailed>,
    /// `ControlAnnounced` (site streams).
    pub control: Recipient<ControlAnnounced>,
}

/// One supervised streaming connection.
pub struct StreamActor {
    spec: Arc<ConnectionSpec>,
    sinks: Arc<[SinkHandle]>,
    lifecycle: LifecycleRecipients,
    stats: Arc<ConnectionStats>,
    dedup: Arc<DedupWindow>,
    supervised: SupervisedConnection,
}

impl StreamActor {
    /// A new actor; start it with `actix::Supervisor::start_in_arbiter`.
    pub fn new(
        spec: ConnectionSpec,
        backoff: Addr<BackoffActor>,
        sinks: Arc<[SinkHandle]>,
        lifecycle: LifecycleRecipients,
        stats: Arc<ConnectionStats>,
        dedup: Arc<DedupWindow>,
    ) -> Self {
        let supervised = SupervisedConnection::new(
            spec.id.clone(),
            stats.clone(),
            backoff,
            lifecycle.disconnected.clone(),
            lifecycle.failed.clone(),
        );
        StreamActor { spec: Arc::new(spec), sinks, lifecycle, stats, dedup, supervised }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let run = run_connection(
            self.spec.clone(),
            self.sinks.clone(),
            self.stats.clone(),
            self.lifecycle.clone(),
            self.dedup.clone(),
            self.supervised.stop_signal(),
        );
        self.supervised.start_attempt(ctx, run, |act, end, ctx| act.supervised.attempt_ended(end, ctx));
    }
}

impl Actor for StreamActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.supervised.schedule(ctx, Self::connect);
    }
}

impl Supervised for StreamActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.supervised.restarting();
    }
}

impl Handler<SetRequest> for StreamActor {
    type Result = ();

    /// The next (re)connect uses the new request; a live connection is not touched.
    fn handle(&mut self, msg: SetRequest, _: &mut Context<Self>) {
        let mut spec = (*self.spec).clone();
        spec.request = msg.0;
        self.spec = Arc::new(spec);
    }
}

impl Handler<StopStream> for StreamActor {
    type Result = ResponseFuture<()>;

    /// Ends the connection after the batch in hand is delivered; answered
    /// when it has ended (bounded), so a graceful stop flushes sinks after it.
    fn handle(&mut self, _: StopStream, ctx: &mut Context<Self>) -> Self::Result {
        self.supervised.stop(ctx)
    }
}

const FATAL_STATUSES: [u16; 7] = [401, 403, 404, 406, 413, 416, 422];

async fn run_connection(
    spec: Arc<ConnectionSpec>,
    sinks: Arc<[SinkHandle]>,
    stats: Arc<ConnectionStats>,
    lifecycle: LifecycleRecipients,
    dedup: Arc<DedupWindow>,
    stop: Arc<tokio::sync::Notify>,
) -> AttemptEnd {
    let mut connected_at = None;
    let result = read_stream(&spec, &sinks, &stats, &lifecycle, &dedup, &stop, &mut connected_at).await;
    AttemptEnd::new(result, connected_at, spec.reset_after)
}

async fn read_stream(
    spec: &ConnectionSpec,
    sinks: &[SinkHandle],
    stats: &ConnectionStats,
    lifecycle: &LifecycleRecipients,
    dedup: &DedupWindow,
    stop: &tokio::sync::Notify,
    connected_at: &mut Option<Instant>,
) -> StreamError {
    let client = awc::Client::builder()
        .timeout(spec.stall_timeout)
        .add_default_header((awc::http::header::USER_AGENT, concat!("streamherd/", env!("CARGO_PKG_VERSION"))))
        .finish();
    let signed = sign(&spec.request, &spec.credentials);
    let request = match signed.method {
        Method::Get => client.get(&signed.url),
        Method::Post => client.post(&signed.url),
    }
    .insert_header((awc::http::header::AUTHORIZATION, signed.authorization.as_str()));
    // The base URL only: a site stream's query names 100 users.
    tracing::info!(connection = %spec.id, url = %spec.request.url, params = spec.request.params.len(), "connecting");
    let send = async {
        match signed.body {
            Some(body) => request.content_type("application/x-www-form-urlencoded").send_body(body).await,
            None => request.send().await,
        }
    };
    // Connecting can be abandoned at any point: nothing was delivered yet.
    let sent = tokio::select! {
        r = send => r,
        _ = stop.notified() => return StreamError::Finished { reason: "stopped".into() },
    };
    let mut response = match sent {
        Ok(r) => r,
        Err(e) => return StreamError::Retryable(DisconnectCause::Network(e.to_string())),
    };
    if response.status().as_u16() != 200 {
        return refusal(&spec.id, &mut response, &FATAL_STATUSES).await;
    }

    *connected_at = Some(Instant::now());
    stats.connection_opened();
    stats.set_state(ConnectionState::Connected);
    tracing::info!(connection = %spec.id, "connected");
    let follow = spec
        .request
        .params
        .iter()
        .find(|(k, _)| k == "follow")
        .map(|(_, v)| v.split(',').filter_map(|id| id.parse().ok()).collect())
        .unwrap_or_default();
    lifecycle.connected.do_send(StreamConnected { connection: spec.id.clone(), follow });

    let mut framer = Framer::new(spec.delimiting, spec.max_message_bytes);
    let counters = stats.counters();
    let mut kind_counts = [0u64; EventKind::ALL.len()];
    loop {
        let read = tokio::time::timeout(spec.stall_timeout, response.next());
        // A stop ends the loop only here, between batches.
        let chunk = match tokio::select! {
            r = read => r,
            _ = stop.notified() => return StreamError::Finished { reason: "stopped".into() },
        } {
            Err(_) => return StreamError::Retryable(DisconnectCause::Stall),
            Ok(None) => return StreamError::Retryable(DisconnectCause::Eof),
            Ok(Some(Err(e))) => return StreamError::Retryable(DisconnectCause::Network(e.to_string())),
            Ok(Some(Ok(chunk))) => chunk,
        };
        stats.add_bytes(chunk.len() as u64);
        framer.push(&chunk);
        let received_at = Utc::now();
        let mut events = Vec::new();
        let mut end = None;
        while let Some(frame) = framer.next_frame() {
            let payload = match frame {
                Frame::Message(m) => m,
                Frame::KeepAlive => continue,
                Frame::Oversized { len } => {
                    counters.oversized.inc();
                    tracing::error!(connection = %spec.id, len, max = spec.max_message_bytes, "message over max_message_bytes dropped");
                    continue;
                }
                Frame::BadLength(line) => {
                    counters.malformed.inc();
                    tracing::warn!(connection = %spec.id, line = %snippet(&line), "length line is not a number; skipped");
                    continue;
                }
            };
            let c = match classify_twitter(&payload) {
                Ok(c) => c,
                Err(e) => {
                    counters.malformed.inc();
                    tracing::warn!(connection = %spec.id, error = %e, message = %snippet(&payload), "malformed message skipped");
                    continue;
                }
            };
            if let Some(track) = c.limit_track {
                stats.set_limit_track(track);
            }
            if let Some(control_uri) = c.control_uri.clone() {
                lifecycle.control.do_send(ControlAnnounced { connection: spec.id.clone(), control_uri });
            }
            if c.kind == EventKind::Disconnect {
                end = Some(disconnect_decision(c.disconnect_code, &payload));
            }
            kind_counts[c.kind.index()] += 1;
            events.push(Event {
                source: spec.source.clone(),
                kind: c.kind,
                id: c.id,
                received_at,
                connection: spec.id.clone(),
                for_user: c.for_user,
                stream: None,
                payload,
            });
            if end.is_some() {
                break;
            }
        }
        if !events.is_empty() {
            stats.add_messages(events.len() as u64, received_at.timestamp_millis());
            // Two connections overlap during a make-before-break handover: write each event once.
            let (events, duplicates) = dedup.filter(events);
            if duplicates > 0 {
                counters.duplicates.inc_by(duplicates as u64);
            }
            for (i, n) in kind_counts.iter_mut().enumerate() {
                if *n > 0 {
                    counters.events[i].inc_by(*n);
                    *n = 0;
                }
            }
            if !events.is_empty() {
                let batch: Arc<[Event]> = events.into();
                for sink in sinks {
                    sink.deliver(&batch).await;
                }
            }
        }
        if let Some(end) = end {
            return end;
        }
    }
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

    #[test]
    fn snippets_are_truncated() {
        let long = vec![b'a'; 1000];
        let s = snippet(&long);
        assert!(s.len() < 260 && s.ends_with("(1000 bytes)"));
    }
}
