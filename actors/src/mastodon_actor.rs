//! One `MastodonStreamActor` per Mastodon connection: an SSE stream (one
//! Mastodon stream) or a WebSocket multiplexing many subscriptions. It decodes
//! events, answers pings, restores every subscription after a reconnect and,
//! after any gap, catches up over REST: what was missed is written in id
//! order, de-duplicated against the live stream, followed by a `gap` event.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::{Item as WsItem, ProtocolError as WsProtocolError};
use awc::ws;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::future::LocalBoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, SinkExt, StreamExt};

use crate::backoff::BackoffActor;
use crate::catch_up::{fetch_since, id_cmp, CatchUpError, CatchUpOutcome, CatchUpRequest};
use crate::error::StreamError;
use crate::messages::{
    ChangeSubscriptions, DisconnectCause, Event, EventKind, StopStream, StreamConnected, StreamDisconnected,
    StreamFailed, SubscriptionRejected,
};
use crate::protocol::mastodon::{from_sse, from_websocket, MastodonFrame, MastodonMessage};
use crate::protocol::mastodon_streams::{key_of_echo, MastodonStream};
use crate::protocol::sse::{SseItem, SseParser};
use crate::resume::ResumeStore;
use crate::sink_actor::SinkHandle;
use crate::stats::{ConnectionState, ConnectionStats};
use crate::supervised::{refusal, refusal_of, snippet, AttemptEnd, SupervisedConnection};

/// How a Mastodon source connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One Server-Sent Events connection per stream.
    Sse,
    /// Subscriptions multiplexed over WebSocket connections.
    WebSocket,
}

impl Transport {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::WebSocket => "websocket",
        }
    }
}

/// A bearer token: shown as `[redacted]` by `Debug`, so it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(Arc<str>);

impl BearerToken {
    /// Wraps a token.
    pub fn new(token: impl Into<Arc<str>>) -> Self {
        BearerToken(token.into())
    }

    /// The token itself, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken([redacted])")
    }
}

/// Bounds of one catch-up (B.7, B.8).
#[derive(Debug, Clone)]
pub struct CatchUpLimits {
    /// Stop after this many items; the gap event then says `complete: false`.
    pub max_items: usize,
    /// The longest wait for a REST rate-limit reset.
    pub max_rate_wait: Duration,
    /// First wait before retrying a failed REST call.
    pub retry_wait: Duration,
    /// Per REST call.
    pub timeout: Duration,
}

impl Default for CatchUpLimits {
    fn default() -> Self {
        CatchUpLimits {
            max_items: 20_000,
            max_rate_wait: Duration::from_secs(300),
            retry_wait: Duration::from_secs(1),
            timeout: Duration::from_secs(30),
        }
    }
}

/// Everything one Mastodon connection needs.
#[derive(Debug, Clone)]
pub struct MastodonConnectionSpec {
    /// Connection id, `source/N`.
    pub id: Arc<str>,
    /// Source name.
    pub source: Arc<str>,
    /// SSE or WebSocket.
    pub transport: Transport,
    /// `http(s)://host[:port]` of the streaming server (`ws(s)://` is derived).
    pub streaming_url: String,
    /// `http(s)://host[:port]` of the REST API (catch-up).
    pub rest_url: String,
    /// The user token.
    pub token: BearerToken,
    /// No byte (SSE) or frame (WebSocket, pings included) for this long = stalled.
    pub stall_timeout: Duration,
    /// A connection healthy this long resets its backoff history.
    pub reset_after: Duration,
    /// Larger messages are dropped with an error.
    pub max_message_bytes: usize,
    /// Catch up over REST after a gap; `None` = only report gaps.
    pub catch_up: Option<CatchUpLimits>,
}

/// Where a `MastodonStreamActor` reports its lifecycle.
#[derive(Clone)]
pub struct MastodonLifecycle {
    /// `StreamConnected`.
    pub connected: Recipient<StreamConnected>,
    /// `StreamDisconnected`.
    pub disconnected: Recipient<StreamDisconnected>,
    /// `StreamFailed`.
    pub failed: Recipient<StreamFailed>,
    /// `SubscriptionRejected` (WebSocket error frames).
    pub rejected: Recipient<SubscriptionRejected>,
}

/// The streams a connection should carry, by key; shared with its live connection.
type Wanted = Arc<Mutex<BTreeMap<String, MastodonStream>>>;
/// Streams whose gap is not yet closed by a catch-up: key to when it began.
type OpenGaps = Arc<Mutex<HashMap<String, DateTime<Utc>>>>;

/// One supervised Mastodon connection.
pub struct MastodonStreamActor {
    spec: Arc<MastodonConnectionSpec>,
    sinks: Arc<[SinkHandle]>,
    lifecycle: MastodonLifecycle,
    stats: Arc<ConnectionStats>,
    positions: Arc<ResumeStore>,
    wanted: Wanted,
    open_gaps: OpenGaps,
    /// Wakes the live connection when `wanted` changed.
    changed: Arc<tokio::sync::Notify>,
    supervised: SupervisedConnection,
}

impl MastodonStreamActor {
    /// A new actor carrying `streams`; start it with `actix::Supervisor::start_in_arbiter`.
    pub fn new(
        spec: MastodonConnectionSpec,
        streams: Vec<MastodonStream>,
        backoff: Addr<BackoffActor>,
        sinks: Arc<[SinkHandle]>,
        lifecycle: MastodonLifecycle,
        stats: Arc<ConnectionStats>,
        positions: Arc<ResumeStore>,
    ) -> Self {
        let wanted = streams.into_iter().map(|s| (s.key(), s)).collect();
        let supervised = SupervisedConnection::new(
            spec.id.clone(),
            stats.clone(),
            backoff,
            lifecycle.disconnected.clone(),
            lifecycle.failed.clone(),
        );
        MastodonStreamActor {
            spec: Arc::new(spec),
            sinks,
            lifecycle,
            stats,
            positions,
            wanted: Arc::new(Mutex::new(wanted)),
            open_gaps: Arc::new(Mutex::new(HashMap::new())),
            changed: Arc::new(tokio::sync::Notify::new()),
            supervised,
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let conn = Conn {
            spec: self.spec.clone(),
            sinks: self.sinks.clone(),
            stats: self.stats.clone(),
            lifecycle: self.lifecycle.clone(),
            positions: self.positions.clone(),
            wanted: self.wanted.clone(),
            open_gaps: self.open_gaps.clone(),
            changed: self.changed.clone(),
            stop: self.supervised.stop_signal(),
        };
        self.supervised
            .start_attempt(ctx, run_connection(conn), |act, end, ctx| act.supervised.attempt_ended(end, ctx));
    }
}

impl Actor for MastodonStreamActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.supervised.schedule(ctx, Self::connect);
    }
}

impl Supervised for MastodonStreamActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.supervised.restarting();
    }
}

impl Handler<ChangeSubscriptions> for MastodonStreamActor {
    type Result = ();

    /// Takes effect at once on a live WebSocket (subscribe/unsubscribe
    /// messages), else at the next connect.
    fn handle(&mut self, msg: ChangeSubscriptions, _: &mut Context<Self>) {
        let Ok(mut wanted) = self.wanted.lock() else { return };
        for key in &msg.remove {
            wanted.remove(key);
        }
        for stream in msg.add {
            wanted.entry(stream.key()).or_insert(stream);
        }
        self.stats.set_streams(wanted.values().map(MastodonStream::config_name).collect());
        drop(wanted);
        self.changed.notify_one();
    }
}

impl Handler<StopStream> for MastodonStreamActor {
    type Result = ResponseFuture<()>;

    /// Ends the connection after the batch in hand is delivered; answered
    /// when it has ended (bounded).
    fn handle(&mut self, _: StopStream, ctx: &mut Context<Self>) -> Self::Result {
        self.supervised.stop(ctx)
    }
}

/// Statuses after which retrying the same request cannot help (B.7, SPEC 5).
const FATAL_STATUSES: [u16; 9] = [400, 401, 403, 404, 406, 410, 413, 416, 422];
/// Live events of one stream held back while its catch-up runs; past this
/// they are written as they come and catch-up merges (never blocks reading,
/// so WebSocket pings are always answered).
const PENDING_LIMIT: usize = 10_000;
/// REST catch-ups one connection runs at once; the others queue.
const MAX_CONCURRENT_CATCH_UPS: usize = 4;
/// Live ids remembered per stream while its catch-up runs.
const MAX_LIVE_IDS: usize = 100_000;
/// How long the ids a catch-up recovered are kept to drop a late live copy.
const CATCH_UP_LINGER: Duration = Duration::from_secs(60);

/// What a live connection shares with its actor.
struct Conn {
    spec: Arc<MastodonConnectionSpec>,
    sinks: Arc<[SinkHandle]>,
    stats: Arc<ConnectionStats>,
    lifecycle: MastodonLifecycle,
    positions: Arc<ResumeStore>,
    wanted: Wanted,
    open_gaps: OpenGaps,
    changed: Arc<tokio::sync::Notify>,
    stop: Arc<tokio::sync::Notify>,
}

async fn run_connection(conn: Conn) -> AttemptEnd {
    let mut connected_at = None;
    let result = match conn.spec.transport {
        Transport::Sse => read_sse(&conn, &mut connected_at).await,
        Transport::WebSocket => read_websocket(&conn, &mut connected_at).await,
    };
    if connected_at.is_some() {
        // Every stream this connection carried now has a gap, from now.
        let now = Utc::now();
        if let (Ok(wanted), Ok(mut gaps)) = (conn.wanted.lock(), conn.open_gaps.lock()) {
            for key in wanted.keys() {
                gaps.entry(key.clone()).or_insert(now);
            }
        }
    }
    AttemptEnd::new(result, connected_at, conn.spec.reset_after)
}

fn wanted_streams(conn: &Conn) -> Vec<MastodonStream> {
    conn.wanted.lock().map(|w| w.values().cloned().collect()).unwrap_or_default()
}

fn http_client(conn: &Conn) -> awc::Client {
    awc::Client::builder()
        .timeout(conn.spec.stall_timeout)
        .add_default_header((awc::http::header::USER_AGENT, concat!("streamherd/", env!("CARGO_PKG_VERSION"))))
        .finish()
}

async fn read_sse(conn: &Conn, connected_at: &mut Option<Instant>) -> StreamError {
    let spec = &conn.spec;
    let Some(stream) = wanted_streams(conn).into_iter().next() else {
        return StreamError::Finished { reason: "no stream to carry".into() };
    };
    let (path, query) = stream.sse_path();
    let mut url = format!("{}{path}", spec.streaming_url.trim_end_matches('/'));
    if !query.is_empty() {
        url.push('?');
        url.push_str(&form_urlencoded::Serializer::new(String::new()).extend_pairs(&query).finish());
    }
    let client = http_client(conn);
    tracing::info!(connection = %spec.id, url = %url, "connecting (sse)");
    let send = client
        .get(&url)
        .insert_header((awc::http::header::AUTHORIZATION, format!("Bearer {}", spec.token.expose())))
        .insert_header((awc::http::header::ACCEPT, "text/event-stream"))
        .send();
    let sent = tokio::select! {
        r = send => r,
        _ = conn.stop.notified() => return StreamError::Finished { reason: "stopped".into() },
    };
    let mut response = match sent {
        Ok(r) => r,
        Err(e) => return StreamError::Retryable(DisconnectCause::Network(e.to_string())),
    };
    if response.status().as_u16() != 200 {
        return refusal(&spec.id, &mut response, &FATAL_STATUSES).await;
    }
    *connected_at = Some(Instant::now());
    on_connected(conn);
    let mut demux = Demux::new(conn, client);
    demux.subscribed(vec![stream], true);
    let mut parser = SseParser::new(spec.max_message_bytes, spec.max_message_bytes);
    loop {
        let read = tokio::time::timeout(spec.stall_timeout, response.next());
        let chunk = tokio::select! {
            r = read => match r {
                Err(_) => return StreamError::Retryable(DisconnectCause::Stall),
                Ok(None) => return StreamError::Retryable(DisconnectCause::Eof),
                Ok(Some(Err(e))) => return StreamError::Retryable(DisconnectCause::Network(e.to_string())),
                Ok(Some(Ok(chunk))) => chunk,
            },
            Some(done) = demux.catch_ups.next() => {
                demux.catch_up_done(done).await;
                continue;
            }
            _ = conn.stop.notified() => return StreamError::Finished { reason: "stopped".into() },
        };
        conn.stats.add_bytes(chunk.len() as u64);
        parser.push(&chunk);
        let mut decoded = Vec::new();
        while let Some(item) = parser.next_item() {
            match item {
                SseItem::Event { event, data, .. } => match from_sse(&event, &data) {
                    Ok(m) => decoded.push(m),
                    Err(e) => demux.malformed(&e.to_string(), data.as_bytes()),
                },
                SseItem::TooLong { what, len } => {
                    conn.stats.counters().oversized.inc();
                    tracing::error!(connection = %spec.id, what, len, max = spec.max_message_bytes, "SSE {what} over max_message_bytes dropped");
                }
                SseItem::Comment | SseItem::Retry(_) => {}
            }
        }
        if !decoded.is_empty() {
            demux.live(decoded).await;
        }
    }
}

async fn read_websocket(conn: &Conn, connected_at: &mut Option<Instant>) -> StreamError {
    let spec = &conn.spec;
    let base = spec.streaming_url.trim_end_matches('/');
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    let url = format!("{ws_base}/api/v1/streaming");
    let client = http_client(conn);
    tracing::info!(connection = %spec.id, url = %url, "connecting (websocket)");
    let connect = client.ws(&url).bearer_auth(spec.token.expose()).max_frame_size(spec.max_message_bytes).connect();
    let connected = tokio::select! {
        r = tokio::time::timeout(spec.stall_timeout, connect) => r,
        _ = conn.stop.notified() => return StreamError::Finished { reason: "stopped".into() },
    };
    let mut framed = match connected {
        Err(_) => return StreamError::Retryable(DisconnectCause::Stall),
        Ok(Err(awc::error::WsClientError::InvalidResponseStatus(status))) => {
            let status = status.as_u16();
            return refusal_of(&spec.id, status, None, "WebSocket upgrade refused", &FATAL_STATUSES);
        }
        Ok(Err(e)) => return StreamError::Retryable(DisconnectCause::Network(e.to_string())),
        Ok(Ok((_, framed))) => framed,
    };
    *connected_at = Some(Instant::now());
    on_connected(conn);
    let mut demux = Demux::new(conn, client);
    let mut subscribed: BTreeMap<String, MastodonStream> = BTreeMap::new();
    // Subscriptions to restore, and the catch-up after the gap.
    if let Err(e) = sync_subscriptions(conn, &mut framed, &mut subscribed, &mut demux, true).await {
        return e;
    }
    let mut fragments: Option<BytesMut> = None;
    loop {
        let read = tokio::time::timeout(spec.stall_timeout, framed.next());
        let frame = tokio::select! {
            r = read => match r {
                Err(_) => return StreamError::Retryable(DisconnectCause::Stall),
                Ok(None) => return StreamError::Retryable(DisconnectCause::Eof),
                Ok(Some(Err(e))) => return StreamError::Retryable(DisconnectCause::Network(e.to_string())),
                Ok(Some(Ok(frame))) => frame,
            },
            Some(done) = demux.catch_ups.next() => {
                demux.catch_up_done(done).await;
                continue;
            }
            _ = conn.changed.notified() => {
                if let Err(e) = sync_subscriptions(conn, &mut framed, &mut subscribed, &mut demux, false).await {
                    return e;
                }
                continue;
            }
            _ = conn.stop.notified() => {
                let _ = framed.send(ws::Message::Close(Some(ws::CloseCode::Normal.into()))).await;
                return StreamError::Finished { reason: "stopped".into() };
            }
        };
        let text = match frame {
            ws::Frame::Text(b) => b,
            ws::Frame::Ping(p) => {
                if let Err(e) = framed.send(ws::Message::Pong(p)).await {
                    return StreamError::Retryable(DisconnectCause::Network(e.to_string()));
                }
                continue;
            }
            ws::Frame::Pong(_) => continue,
            ws::Frame::Binary(b) => {
                demux.malformed("binary frame (Mastodon sends text only)", &b);
                continue;
            }
            ws::Frame::Close(reason) => {
                let code = reason.as_ref().map(|r| u16::from(r.code));
                tracing::info!(connection = %spec.id, code, "server closed the WebSocket");
                return StreamError::Retryable(DisconnectCause::Eof);
            }
            ws::Frame::Continuation(item) => match continuation(&mut fragments, item, spec.max_message_bytes) {
                Fragment::Complete(b) => b,
                Fragment::More => continue,
                Fragment::Dropped(len) => {
                    conn.stats.counters().oversized.inc();
                    tracing::error!(connection = %spec.id, len, "fragmented message over max_message_bytes dropped");
                    continue;
                }
            },
        };
        conn.stats.add_bytes(text.len() as u64);
        match from_websocket(&text) {
            Ok(MastodonFrame::Event(m)) => demux.live(vec![m]).await,
            Ok(MastodonFrame::Error { message, status }) => {
                tracing::warn!(connection = %spec.id, status, error = %message, "the server refused a subscription");
                conn.stats.set_last_error(format!("subscription error {}: {message}", status.unwrap_or(0)));
                conn.lifecycle.rejected.do_send(SubscriptionRejected { connection: spec.id.clone(), message, status });
            }
            Err(e) => demux.malformed(&e.to_string(), &text),
        }
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

/// Brings the WebSocket's subscriptions to the wanted set: subscribes what
/// is new (after a reconnect: everything, then catches up), unsubscribes what
/// was dropped. Only this connection is touched.
async fn sync_subscriptions<F>(
    conn: &Conn,
    framed: &mut F,
    subscribed: &mut BTreeMap<String, MastodonStream>,
    demux: &mut Demux<'_>,
    after_connect: bool,
) -> Result<(), StreamError>
where
    F: futures_util::Sink<ws::Message, Error = WsProtocolError> + Unpin,
{
    let wanted = conn.wanted.lock().map(|w| w.clone()).unwrap_or_default();
    let add: Vec<MastodonStream> =
        wanted.iter().filter(|(k, _)| !subscribed.contains_key(*k)).map(|(_, s)| s.clone()).collect();
    let remove: Vec<MastodonStream> =
        subscribed.iter().filter(|(k, _)| !wanted.contains_key(*k)).map(|(_, s)| s.clone()).collect();
    let send_err = |e: WsProtocolError| StreamError::Retryable(DisconnectCause::Network(e.to_string()));
    for stream in &remove {
        framed.send(ws::Message::Text(stream.unsubscribe_message().into())).await.map_err(send_err)?;
        subscribed.remove(&stream.key());
        demux.unsubscribed(&stream.key());
    }
    for stream in &add {
        framed.send(ws::Message::Text(stream.subscribe_message().into())).await.map_err(send_err)?;
        subscribed.insert(stream.key(), stream.clone());
    }
    if !add.is_empty() || !remove.is_empty() {
        tracing::debug!(connection = %conn.spec.id, subscribed = add.len(), unsubscribed = remove.len(), total = subscribed.len(), "subscriptions synced");
    }
    demux.subscribed(add, after_connect);
    Ok(())
}

fn on_connected(conn: &Conn) {
    conn.stats.connection_opened();
    conn.stats.set_state(ConnectionState::Connected);
    tracing::info!(connection = %conn.spec.id, "connected");
    conn.lifecycle.connected.do_send(StreamConnected { connection: conn.spec.id.clone(), follow: Vec::new() });
}

/// One stream on a live connection.
struct Slot {
    stream: MastodonStream,
    echo: Arc<[String]>,
    /// Changes when the stream is unsubscribed, so a late catch-up is ignored.
    generation: u64,
    catching_up: Option<CatchingUp>,
    /// Ids a finished catch-up wrote, kept a while to drop a late live copy.
    recovered: Option<(Instant, HashSet<Box<str>>)>,
}

/// A catch-up in flight for one stream.
struct CatchingUp {
    reason: &'static str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    since_id: String,
    /// Live events held back until the recovered ones are written.
    pending: Vec<Event>,
    /// The pending limit was hit: live events are written as they come.
    merged: bool,
    /// Ids of the tracked kind seen live since the catch-up began.
    live_ids: HashSet<Box<str>>,
    newest_live: Option<Box<str>>,
}

type CatchUpDone = (String, u64, Result<CatchUpOutcome, CatchUpError>);

/// Routes decoded events to their stream, runs catch-ups and delivers.
struct Demux<'a> {
    conn: &'a Conn,
    client: awc::Client,
    slots: HashMap<String, Slot>,
    generation: u64,
    catch_ups: FuturesUnordered<LocalBoxFuture<'static, CatchUpDone>>,
    /// Catch-ups waiting for a free slot (futures do nothing until polled).
    queued: VecDeque<LocalBoxFuture<'static, CatchUpDone>>,
}

impl<'a> Demux<'a> {
    fn new(conn: &'a Conn, client: awc::Client) -> Self {
        Demux {
            conn,
            client,
            slots: HashMap::new(),
            generation: 0,
            catch_ups: FuturesUnordered::new(),
            queued: VecDeque::new(),
        }
    }

    /// Runs at most `MAX_CONCURRENT_CATCH_UPS` at once: a reconnect of a
    /// connection carrying hundreds of streams must not fire hundreds of REST
    /// calls together.
    fn run_catch_ups(&mut self) {
        while self.catch_ups.len() < MAX_CONCURRENT_CATCH_UPS {
            let Some(next) = self.queued.pop_front() else { break };
            self.catch_ups.push(next);
        }
    }

    /// New streams on this connection. `after_connect`: they may have a gap
    /// (a reconnect, or a process restart with a stored position) to close.
    fn subscribed(&mut self, streams: Vec<MastodonStream>, after_connect: bool) {
        let now = Utc::now();
        let mut gaps_without_catch_up = Vec::new();
        for stream in streams {
            self.generation += 1;
            let key = stream.key();
            let mut slot = Slot {
                echo: stream.echo().into(),
                stream,
                generation: self.generation,
                catching_up: None,
                recovered: None,
            };
            if after_connect {
                let opened = self.conn.open_gaps.lock().ok().and_then(|mut g| g.remove(&key));
                let position = self.conn.positions.position(&key);
                let gap = match (opened, &position) {
                    (Some(from), _) => Some(("reconnect", from)),
                    (None, Some(p)) => Some(("restart", p.last_at)),
                    (None, None) => None,
                };
                if let Some((reason, from)) = gap {
                    let source = slot.stream.catch_up_source();
                    match (position, source, &self.conn.spec.catch_up) {
                        (Some(p), Some(source), Some(limits)) => {
                            let request = CatchUpRequest {
                                base_url: self.conn.spec.rest_url.clone(),
                                path: source.path,
                                params: source.params,
                                min_id: p.last_id.clone(),
                                token: self.conn.spec.token.expose().to_owned(),
                                page_limit: source.page_limit,
                                max_items: limits.max_items,
                                timeout: limits.timeout,
                                max_rate_wait: limits.max_rate_wait,
                                retry_wait: limits.retry_wait,
                            };
                            tracing::info!(connection = %self.conn.spec.id, stream = %key, since_id = %p.last_id, reason, "catching up over REST");
                            let client = self.client.clone();
                            let generation = slot.generation;
                            let k = key.clone();
                            self.queued.push_back(
                                async move {
                                    let result = fetch_since(&client, &request).await;
                                    (k, generation, result)
                                }
                                .boxed_local(),
                            );
                            slot.catching_up = Some(CatchingUp {
                                reason,
                                from,
                                to: now,
                                since_id: p.last_id,
                                pending: Vec::new(),
                                merged: false,
                                live_ids: HashSet::new(),
                                newest_live: None,
                            });
                        }
                        (position, source, limits) => {
                            let why = if limits.is_none() {
                                "catch_up is off"
                            } else if source.is_none() {
                                "this stream has no catch-up timeline"
                            } else {
                                "nothing was delivered on this stream before the gap"
                            };
                            let since = position.map(|p| p.last_id);
                            gaps_without_catch_up.push(self.gap_event(
                                &slot.echo,
                                &GapReport {
                                    reason,
                                    from,
                                    to: now,
                                    since_id: since,
                                    recovered: 0,
                                    until_id: None,
                                    complete: false,
                                    note: Some(why.to_owned()),
                                },
                            ));
                        }
                    }
                }
            }
            self.conn.stats.set_streams(self.stream_names_with(&slot));
            self.slots.insert(key, slot);
        }
        self.run_catch_ups();
        if !gaps_without_catch_up.is_empty() {
            // Reported without waiting: nothing to merge them with.
            let sinks = self.conn.sinks.clone();
            let events: Arc<[Event]> = gaps_without_catch_up.into();
            self.conn.stats.counters().gaps.inc_by(events.len() as u64);
            actix_rt::spawn(async move {
                for sink in sinks.iter() {
                    sink.deliver(&events).await;
                }
            });
        }
    }

    fn stream_names_with(&self, extra: &Slot) -> Vec<String> {
        let mut names: Vec<String> = self.slots.values().map(|s| s.stream.config_name()).collect();
        names.push(extra.stream.config_name());
        names.sort();
        names.dedup();
        names
    }

    fn unsubscribed(&mut self, key: &str) {
        if let Some(slot) = self.slots.remove(key) {
            if let Some(cu) = slot.catching_up {
                // Its catch-up result will find no slot; what was held back still goes out.
                let pending = cu.pending;
                if !pending.is_empty() {
                    let sinks = self.conn.sinks.clone();
                    let events: Arc<[Event]> = pending.into();
                    actix_rt::spawn(async move {
                        for sink in sinks.iter() {
                            sink.deliver(&events).await;
                        }
                    });
                }
            }
        }
    }

    fn malformed(&self, error: &str, bytes: &[u8]) {
        self.conn.stats.counters().malformed.inc();
        tracing::warn!(connection = %self.conn.spec.id, %error, message = %snippet(bytes), "malformed message skipped");
    }

    /// The kind whose ids mark a stream's position.
    fn tracked_kind(stream: &MastodonStream) -> EventKind {
        if stream.tracks_notifications() {
            EventKind::Notification
        } else {
            EventKind::Update
        }
    }

    /// Live events in arrival order.
    async fn live(&mut self, messages: Vec<MastodonMessage>) {
        let received_at = Utc::now();
        let counters = self.conn.stats.counters();
        let mut out = Vec::with_capacity(messages.len());
        let mut advance: Vec<(String, Box<str>)> = Vec::new();
        let single = (self.slots.len() == 1).then(|| self.slots.keys().next().cloned()).flatten();
        let mut duplicates = 0u64;
        for m in messages {
            counters.events[m.kind.index()].inc();
            let key = match &m.stream {
                Some(echo) => key_of_echo(echo),
                None => single.clone(),
            };
            let slot = key.as_ref().and_then(|k| self.slots.get_mut(k));
            let stream: Option<Arc<[String]>> = match (&m.stream, &slot) {
                (Some(echo), _) => Some(echo.clone().into()),
                (None, Some(slot)) => Some(slot.echo.clone()),
                (None, None) => None,
            };
            let payload =
                if m.kind == EventKind::Unknown { keep_event_name(&m.event_name, &m.payload) } else { m.payload };
            let event = Event {
                source: self.conn.spec.source.clone(),
                kind: m.kind,
                id: m.id,
                received_at,
                connection: self.conn.spec.id.clone(),
                for_user: None,
                stream,
                payload,
            };
            let (Some(key), Some(slot)) = (key, slot) else {
                out.push(event);
                continue;
            };
            let tracked = event.kind == Self::tracked_kind(&slot.stream);
            if tracked {
                if let (Some((since, ids)), Some(id)) = (&slot.recovered, &event.id) {
                    if since.elapsed() < CATCH_UP_LINGER && ids.contains(id) {
                        duplicates += 1;
                        continue;
                    }
                }
            }
            match &mut slot.catching_up {
                Some(cu) => {
                    if tracked {
                        if let Some(id) = &event.id {
                            if cu.live_ids.len() < MAX_LIVE_IDS {
                                cu.live_ids.insert(id.clone());
                            }
                            if cu.newest_live.as_deref().map_or(true, |n| id_cmp(id, n).is_gt()) {
                                cu.newest_live = Some(id.clone());
                            }
                        }
                    }
                    if cu.merged {
                        out.push(event);
                    } else if cu.pending.len() < PENDING_LIMIT {
                        cu.pending.push(event);
                    } else {
                        tracing::warn!(connection = %self.conn.spec.id, stream = %key, held = PENDING_LIMIT, "catch-up is slow: writing live events as they come and merging");
                        cu.merged = true;
                        out.append(&mut cu.pending);
                        out.push(event);
                    }
                }
                None => {
                    if tracked {
                        if let Some(id) = &event.id {
                            advance.push((key, id.clone()));
                        }
                    }
                    out.push(event);
                }
            }
        }
        if duplicates > 0 {
            counters.duplicates.inc_by(duplicates);
        }
        self.deliver(out).await;
        for (key, id) in advance {
            self.conn.positions.advance(&key, &id, received_at);
        }
    }

    async fn deliver(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        self.conn.stats.add_messages(events.len() as u64, Utc::now().timestamp_millis());
        let batch: Arc<[Event]> = events.into();
        for sink in self.conn.sinks.iter() {
            sink.deliver(&batch).await;
        }
    }

    /// A catch-up finished: writes what it recovered in id order (minus what
    /// the live stream already wrote), then what was held back, then the gap event.
    async fn catch_up_done(&mut self, (key, generation, result): CatchUpDone) {
        self.run_catch_ups();
        let Some(slot) = self.slots.get_mut(&key).filter(|s| s.generation == generation) else { return };
        let Some(cu) = slot.catching_up.take() else { return };
        let kind = Self::tracked_kind(&slot.stream);
        let echo = slot.echo.clone();
        let now = Utc::now();
        let mut out = Vec::new();
        let mut recovered_ids = HashSet::new();
        let (mut recovered, mut complete, mut note, mut until_id) = (0u64, false, None, None);
        match result {
            Ok(outcome) => {
                complete = outcome.complete;
                for item in outcome.items {
                    if cu.merged && cu.live_ids.contains(&item.id) {
                        continue;
                    }
                    recovered += 1;
                    until_id = Some(item.id.clone());
                    recovered_ids.insert(item.id.clone());
                    out.push(Event {
                        source: self.conn.spec.source.clone(),
                        kind,
                        id: Some(item.id),
                        received_at: now,
                        connection: self.conn.spec.id.clone(),
                        for_user: None,
                        stream: Some(echo.clone()),
                        payload: item.payload,
                    });
                }
                if !complete {
                    note = Some("catch-up stopped at its limit (max items or rate-limit wait)".to_owned());
                }
                tracing::info!(connection = %self.conn.spec.id, stream = %key, recovered, pages = outcome.pages, complete, "caught up");
            }
            Err(e) => {
                tracing::warn!(connection = %self.conn.spec.id, stream = %key, error = %e, "catch-up failed; the gap stays open");
                note = Some(format!("catch-up failed: {e}"));
            }
        }
        self.conn.stats.counters().events[kind.index()].inc_by(recovered);
        let mut duplicates = 0u64;
        for event in cu.pending {
            if event.kind == kind && event.id.as_ref().is_some_and(|id| recovered_ids.contains(id)) {
                duplicates += 1;
                continue;
            }
            out.push(event);
        }
        if duplicates > 0 {
            self.conn.stats.counters().duplicates.inc_by(duplicates);
        }
        let report = GapReport {
            reason: cu.reason,
            from: cu.from,
            to: cu.to,
            since_id: Some(cu.since_id),
            recovered,
            until_id: until_id.clone().map(String::from),
            complete,
            note,
        };
        out.push(self.gap_event(&echo, &report));
        self.conn.stats.counters().gaps.inc();
        let newest = [until_id, cu.newest_live].into_iter().flatten().max_by(|a, b| id_cmp(a, b));
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.recovered = Some((Instant::now(), recovered_ids));
        }
        self.deliver(out).await;
        if let Some(newest) = newest {
            self.conn.positions.advance(&key, &newest, now);
        }
    }

    fn gap_event(&self, echo: &Arc<[String]>, r: &GapReport) -> Event {
        let mut payload = serde_json::json!({
            "reason": r.reason,
            "stream": &**echo,
            "from": r.from.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "to": r.to.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "since_id": r.since_id,
            "until_id": r.until_id,
            "recovered": r.recovered,
            "complete": r.complete,
        });
        if let (Some(note), Some(map)) = (&r.note, payload.as_object_mut()) {
            map.insert("note".into(), note.clone().into());
        }
        Event {
            source: self.conn.spec.source.clone(),
            kind: EventKind::Gap,
            id: None,
            received_at: Utc::now(),
            connection: self.conn.spec.id.clone(),
            for_user: None,
            stream: Some(echo.clone()),
            payload: Bytes::from(payload.to_string()),
        }
    }
}

/// An `unknown` event's payload keeps the event name the server used:
/// `{"event":"<name>","payload":<payload>}` (the payload is valid JSON).
fn keep_event_name(event_name: &str, payload: &Bytes) -> Bytes {
    let name = serde_json::to_string(event_name).unwrap_or_else(|_| "null".into());
    let mut out = BytesMut::with_capacity(payload.len() + name.len() + 24);
    out.extend_from_slice(b"{\"event\":");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"}");
    out.freeze()
}

/// What a gap event says.
struct GapReport {
    reason: &'static str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    since_id: Option<String>,
    recovered: u64,
    until_id: Option<String>,
    complete: bool,
    note: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_show_in_debug() {
        let t = BearerToken::new("s3cret-token");
        assert!(!format!("{t:?}").contains("s3cret"));
    }

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
    fn unknown_events_keep_their_name() {
        let p = keep_event_name("encrypted_message", &Bytes::from_static(b"{\"a\":1}"));
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v, serde_json::json!({"event": "encrypted_message", "payload": {"a": 1}}));
    }

    #[test]
    fn refusals_follow_the_reconnect_rules() {
        for status in [400, 401, 404] {
            assert!(
                matches!(refusal_of("c", status, None, "", &FATAL_STATUSES), StreamError::Fatal { .. }),
                "{status}"
            );
        }
        assert!(matches!(
            refusal_of("c", 503, None, "", &FATAL_STATUSES),
            StreamError::Retryable(DisconnectCause::Http { status: 503, .. })
        ));
        assert!(matches!(
            refusal_of("c", 429, None, "", &FATAL_STATUSES),
            StreamError::Retryable(DisconnectCause::RateLimited { status: 429, .. })
        ));
    }
}
