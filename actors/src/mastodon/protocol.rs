//! The Mastodon connection protocol: an SSE stream (one Mastodon stream) or
//! a WebSocket multiplexing many subscriptions. It decodes events, routes
//! them by their stream, restores every subscription after a reconnect and,
//! after any gap, catches up over REST: what was missed is written in id
//! order, de-duplicated against the live stream, followed by a `gap` event.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::future::LocalBoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};

use super::catch_up::{fetch_since, id_cmp, newest_id, CatchUpError, CatchUpOutcome, CatchUpRequest};
use super::decode::{from_sse, from_websocket, MastodonFrame, MastodonMessage};
use super::kinds;
use super::resume::{ResumeStore, StreamPosition};
use super::spec::{BearerToken, CatchUpLimits, Transport};
use super::streams::{key_of_echo, MastodonStream};
use crate::connection::actor::{Conn, ConnectionSpec, Protocol, Silence};
use crate::connection::http::{self, BodyKind};
use crate::connection::link::{Input, Link};
use crate::connection::stats::ConnectionStats;
use crate::delivery::ack::OnWritten;
use crate::error::{DisconnectCause, StreamError};
use crate::event::{Event, EventKind};

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

/// What one Mastodon connection needs.
#[derive(Debug, Clone)]
pub struct MastodonConnection {
    /// SSE or WebSocket.
    pub transport: Transport,
    /// `http(s)://host[:port]` of the streaming server (`ws(s)://` is derived).
    pub streaming_url: String,
    /// `http(s)://host[:port]` of the REST API (catch-up).
    pub rest_url: String,
    /// The user token.
    pub token: BearerToken,
    /// Catch up over REST after a gap; `None` = only report gaps.
    pub catch_up: Option<CatchUpLimits>,
    /// The streams it carries.
    pub streams: Vec<MastodonStream>,
    /// Where the source's streams stand (shared by its connections).
    pub positions: Arc<ResumeStore>,
}

/// Add and remove streams on a Mastodon connection (WebSocket: subscribe and
/// unsubscribe messages on the live socket; every subscription is restored
/// after a reconnect).
#[derive(Debug, Clone)]
pub struct ChangeSubscriptions {
    /// Streams to carry.
    pub add: Vec<MastodonStream>,
    /// Stream keys to drop.
    pub remove: Vec<String>,
}

/// The streaming server refused a subscription with an error frame
/// (`{"error":"...","status":400}`); the connection goes on.
#[derive(Debug, Clone)]
pub struct SubscriptionRejected {
    /// The server's `error` text.
    pub message: String,
    /// Its `status`, when the server sent one.
    pub status: Option<u16>,
}

type CatchUpDone = (String, u64, Result<CatchUpOutcome, CatchUpError>);

/// The gap reason of a liveness probe that found what the stream withheld.
const SILENT_STREAM: &str = "silent_stream";

/// One Mastodon connection's protocol state.
pub struct MastodonProtocol {
    spec: MastodonConnection,
    id: Arc<str>,
    source: Arc<str>,
    stall_timeout: Duration,
    max_message_bytes: usize,
    /// The streams it should carry, by key.
    wanted: BTreeMap<String, MastodonStream>,
    /// Streams whose gap no catch-up has closed yet: key to when it began and why.
    open_gaps: HashMap<String, OpenGap>,
    /// When the last input (event or heartbeat) arrived: where a reconnect's gap begins.
    last_input_at: Option<DateTime<Utc>>,
    /// A liveness probe found statuses the stream did not deliver: reconnect
    /// once its catch-ups are written.
    probe_found: bool,
    /// The newest id per stream handed to the planner, written or not yet:
    /// a reconnect within this process catches up from here (the planner
    /// delivers what it holds), a restart from the written positions.
    handed: HashMap<String, StreamPosition>,
    /// The open connection's state.
    session: Option<Session>,
    /// Positions to record once the events of this step are delivered.
    advance: Vec<(String, Box<str>, DateTime<Utc>)>,
    /// Streams given their first position just before this subscription:
    /// nothing was missed on them, so no gap and no catch-up.
    anchored: HashSet<String>,
}

/// What one open connection keeps.
struct Session {
    client: awc::Client,
    /// WebSocket: what the server was asked to send.
    subscribed: BTreeMap<String, MastodonStream>,
    slots: HashMap<String, Slot>,
    generation: u64,
    catch_ups: FuturesUnordered<LocalBoxFuture<'static, CatchUpDone>>,
    /// Catch-ups waiting for a free place (futures do nothing until polled).
    queued: VecDeque<LocalBoxFuture<'static, CatchUpDone>>,
}

impl Session {
    fn new(client: awc::Client) -> Self {
        Session {
            client,
            subscribed: BTreeMap::new(),
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
    cause: Option<String>,
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

/// A stream's gap, open until the next connection's catch-up closes it.
#[derive(Debug, Clone)]
struct OpenGap {
    from: DateTime<Utc>,
    reason: &'static str,
    cause: String,
}

/// What a gap event says.
struct GapReport {
    reason: &'static str,
    cause: Option<String>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    since_id: Option<String>,
    recovered: u64,
    until_id: Option<String>,
    complete: bool,
    note: Option<String>,
}

/// The kind whose ids mark a stream's position.
fn tracked_kind(stream: &MastodonStream) -> EventKind {
    if stream.tracks_notifications() {
        kinds::NOTIFICATION
    } else {
        kinds::UPDATE
    }
}

impl MastodonProtocol {
    /// Where catch-up for `key` starts: the newer of the written position
    /// and what this process already handed to the planner.
    fn resume_point(&self, key: &str) -> Option<StreamPosition> {
        let written = self.spec.positions.position(key);
        match (written, self.handed.get(key)) {
            (Some(w), Some(h)) if id_cmp(&h.last_id, &w.last_id).is_gt() => Some(h.clone()),
            (None, Some(h)) => Some(h.clone()),
            (w, _) => w,
        }
    }

    /// A liveness probe's catch-ups are still running.
    fn probing(&self) -> bool {
        self.session.as_ref().is_some_and(|s| {
            s.slots.values().any(|slot| slot.catching_up.as_ref().is_some_and(|c| c.reason == SILENT_STREAM))
        })
    }

    fn stream_names(&self) -> Vec<String> {
        self.wanted.values().map(MastodonStream::config_name).collect()
    }

    fn event(&self, kind: EventKind, id: Option<Box<str>>, stream: Option<Arc<[String]>>, payload: Bytes) -> Event {
        Event {
            source: self.source.clone(),
            kind,
            id,
            received_at: Utc::now(),
            connection: self.id.clone(),
            for_user: None,
            stream,
            payload,
        }
    }

    fn gap_event(&self, echo: &Arc<[String]>, r: &GapReport) -> Event {
        let mut payload = serde_json::json!({
            "reason": r.reason,
            "cause": r.cause,
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
        self.event(EventKind::GAP, None, Some(echo.clone()), Bytes::from(payload.to_string()))
    }

    /// New streams on the open connection. `after_connect`: they may have a
    /// gap (a reconnect, or a process restart with a stored position) to close.
    fn subscribed(&mut self, streams: Vec<MastodonStream>, after_connect: bool, conn: &mut Conn<Self>) {
        let now = Utc::now();
        for stream in streams {
            let Some(session) = self.session.as_mut() else { return };
            session.generation += 1;
            let key = stream.key();
            let mut slot = Slot {
                echo: stream.echo().into(),
                stream,
                generation: session.generation,
                catching_up: None,
                recovered: None,
            };
            let anchored = self.anchored.remove(&key);
            if after_connect && !anchored {
                let opened = self.open_gaps.remove(&key);
                let position = self.resume_point(&key);
                let gap = match (opened, &position) {
                    (Some(g), _) => Some((g.reason, g.from, Some(g.cause))),
                    (None, Some(p)) => Some(("restart", p.last_at, None)),
                    (None, None) => None,
                };
                if let Some((reason, from, cause)) = gap {
                    let request =
                        position.as_ref().and_then(|p| self.catch_up_request(&slot.stream, p.last_id.clone()));
                    match (position, request) {
                        (Some(p), Some(request)) => {
                            tracing::info!(connection = %self.id, stream = %key, since_id = %p.last_id, reason, "catching up over REST");
                            let Some(session) = self.session.as_mut() else { return };
                            let client = session.client.clone();
                            let (generation, k) = (slot.generation, key.clone());
                            session.queued.push_back(
                                async move {
                                    let result = fetch_since(&client, &request).await;
                                    (k, generation, result)
                                }
                                .boxed_local(),
                            );
                            slot.catching_up = Some(CatchingUp {
                                reason,
                                cause,
                                from,
                                to: now,
                                since_id: p.last_id,
                                pending: Vec::new(),
                                merged: false,
                                live_ids: HashSet::new(),
                                newest_live: None,
                            });
                        }
                        (position, _) => {
                            let why = if self.spec.catch_up.is_none() {
                                "catch_up is off"
                            } else if slot.stream.catch_up_source().is_none() {
                                "this stream has no catch-up timeline"
                            } else {
                                "nothing was delivered on this stream before the gap"
                            };
                            // Nothing to merge it with: it goes out now, in order.
                            let report = GapReport {
                                reason,
                                cause,
                                from,
                                to: now,
                                since_id: position.map(|p| p.last_id),
                                recovered: 0,
                                until_id: None,
                                complete: false,
                                note: Some(why.to_owned()),
                            };
                            conn.push(self.gap_event(&slot.echo, &report));
                            conn.stats.counters().gaps.inc();
                        }
                    }
                }
            } else if anchored {
                self.open_gaps.remove(&key);
            }
            if let Some(session) = self.session.as_mut() {
                session.slots.insert(key, slot);
            }
        }
        if let Some(session) = self.session.as_mut() {
            session.run_catch_ups();
        }
    }

    fn unsubscribed(&mut self, key: &str, conn: &mut Conn<Self>) {
        let Some(slot) = self.session.as_mut().and_then(|s| s.slots.remove(key)) else { return };
        // Its catch-up result will find no slot; what was held back still goes out.
        if let Some(cu) = slot.catching_up {
            conn.extend(cu.pending);
        }
    }

    /// Live events, in arrival order.
    fn live(&mut self, m: MastodonMessage, conn: &mut Conn<Self>) {
        let Some(session) = self.session.as_mut() else { return };
        conn.stats.counters().count_events(m.kind, 1);
        let key = match &m.stream {
            Some(echo) => key_of_echo(echo),
            // SSE: the connection's one stream.
            None => (session.slots.len() == 1).then(|| session.slots.keys().next().cloned()).flatten(),
        };
        let slot = key.as_ref().and_then(|k| session.slots.get_mut(k));
        let stream: Option<Arc<[String]>> = match (&m.stream, &slot) {
            (Some(echo), _) => Some(echo.clone().into()),
            (None, Some(slot)) => Some(slot.echo.clone()),
            (None, None) => None,
        };
        let payload = if m.kind == EventKind::UNKNOWN { keep_event_name(&m.event_name, &m.payload) } else { m.payload };
        let event = Event {
            source: self.source.clone(),
            kind: m.kind,
            id: m.id,
            received_at: Utc::now(),
            connection: self.id.clone(),
            for_user: None,
            stream,
            payload,
        };
        let (Some(key), Some(slot)) = (key, slot) else {
            conn.push(event);
            return;
        };
        let tracked = event.kind == tracked_kind(&slot.stream);
        if tracked {
            if let (Some((since, ids)), Some(id)) = (&slot.recovered, &event.id) {
                if since.elapsed() < CATCH_UP_LINGER && ids.contains(id) {
                    conn.stats.counters().duplicates.inc();
                    return;
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
                    conn.push(event);
                } else if cu.pending.len() < PENDING_LIMIT {
                    cu.pending.push(event);
                } else {
                    tracing::warn!(connection = %self.id, stream = %key, held = PENDING_LIMIT, "catch-up is slow: writing live events as they come and merging");
                    cu.merged = true;
                    conn.extend(std::mem::take(&mut cu.pending));
                    conn.push(event);
                }
            }
            None => {
                if tracked {
                    if let Some(id) = &event.id {
                        self.advance.push((key, id.clone(), event.received_at));
                    }
                }
                conn.push(event);
            }
        }
    }

    /// A catch-up finished: writes what it recovered in id order (minus what
    /// the live stream already wrote), then what was held back, then the gap event.
    fn catch_up_done(&mut self, (key, generation, result): CatchUpDone, conn: &mut Conn<Self>) {
        let Some(session) = self.session.as_mut() else { return };
        session.run_catch_ups();
        let Some(slot) = session.slots.get_mut(&key).filter(|s| s.generation == generation) else { return };
        let Some(cu) = slot.catching_up.take() else { return };
        let kind = tracked_kind(&slot.stream);
        let echo = slot.echo.clone();
        let now = Utc::now();
        let mut recovered_ids = HashSet::new();
        let (mut recovered, mut complete, mut note, mut until_id) = (0u64, false, None, None);
        let mut out = Vec::new();
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
                    let mut event = self.event(kind, Some(item.id), Some(echo.clone()), item.payload);
                    event.received_at = now;
                    out.push(event);
                }
                if !complete {
                    note = Some("catch-up stopped at its limit (max items or rate-limit wait)".to_owned());
                }
                tracing::info!(connection = %self.id, stream = %key, recovered, pages = outcome.pages, complete, "caught up");
            }
            Err(e) => {
                tracing::warn!(connection = %self.id, stream = %key, error = %e, "catch-up failed; the gap stays open");
                note = Some(format!("catch-up failed: {e}"));
            }
        }
        conn.stats.counters().count_events(kind, recovered);
        let mut duplicates = 0u64;
        for event in cu.pending {
            if event.kind == kind && event.id.as_ref().is_some_and(|id| recovered_ids.contains(id)) {
                duplicates += 1;
                continue;
            }
            out.push(event);
        }
        if duplicates > 0 {
            conn.stats.counters().duplicates.inc_by(duplicates);
        }
        // A liveness probe that found the stream merely quiet: nothing missed, no gap.
        let quiet_probe = cu.reason == SILENT_STREAM && recovered == 0 && complete;
        if cu.reason == SILENT_STREAM && !quiet_probe {
            self.probe_found = true;
        }
        let report = GapReport {
            reason: cu.reason,
            cause: cu.cause,
            from: cu.from,
            to: cu.to,
            since_id: Some(cu.since_id),
            recovered,
            until_id: until_id.clone().map(String::from),
            complete,
            note,
        };
        if !quiet_probe {
            out.push(self.gap_event(&echo, &report));
            conn.stats.counters().gaps.inc();
        }
        let newest = [until_id, cu.newest_live].into_iter().flatten().max_by(|a, b| id_cmp(a, b));
        if let Some(slot) = self.session.as_mut().and_then(|s| s.slots.get_mut(&key)) {
            slot.recovered = Some((Instant::now(), recovered_ids));
        }
        conn.extend(out);
        if let Some(newest) = newest {
            self.advance.push((key, newest, now));
        }
    }

    /// The REST request that catches `stream` up from `min_id`; `None` when
    /// catch-up is off or the stream has no timeline.
    fn catch_up_request(&self, stream: &MastodonStream, min_id: String) -> Option<CatchUpRequest> {
        let (source, limits) = (stream.catch_up_source()?, self.spec.catch_up.as_ref()?);
        Some(CatchUpRequest {
            base_url: self.spec.rest_url.clone(),
            path: source.path,
            params: source.params,
            min_id,
            token: self.spec.token.expose().to_owned(),
            page_limit: source.page_limit,
            max_items: limits.max_items,
            timeout: limits.timeout,
            max_rate_wait: limits.max_rate_wait,
            retry_wait: limits.retry_wait,
        })
    }

    /// Gives each of `streams` that has no position yet a first one before it
    /// is subscribed, and saves it at once: the newest id of its id space
    /// (statuses: the public timeline; notifications: their own list; "0"
    /// when empty). Every event the subscription then brings is newer, so a
    /// crash before the first of them is written still leaves catch-up a
    /// point to start from. One call per id space, whatever the number of
    /// streams; when catch-up is off or the call fails, the stream starts
    /// without one (logged).
    async fn anchor(&mut self, client: &awc::Client, streams: &[MastodonStream]) {
        let mut newest: HashMap<bool, Option<Box<str>>> = HashMap::new();
        let mut recorded = false;
        for stream in streams {
            let key = stream.key();
            if self.spec.positions.position(&key).is_some() || stream.catch_up_source().is_none() {
                continue;
            }
            let space = stream.tracks_notifications();
            if let std::collections::hash_map::Entry::Vacant(slot) = newest.entry(space) {
                let probe = if space { stream.clone() } else { MastodonStream::public() };
                let found = match self.catch_up_request(&probe, String::new()) {
                    Some(req) => match newest_id(client, &req).await {
                        Ok(id) => Some(id.unwrap_or_else(|| "0".into())),
                        Err(e) => {
                            tracing::warn!(connection = %self.id, stream = %key, error = %e, "cannot learn where the stream starts; until its first event is written, a crash can lose what is queued in memory");
                            None
                        }
                    },
                    None => None,
                };
                slot.insert(found);
            }
            if let Some(Some(id)) = newest.get(&space) {
                self.spec.positions.advance(&key, id, Utc::now());
                self.anchored.insert(key);
                recorded = true;
            }
        }
        if recorded {
            if let Err(e) = self.spec.positions.flush() {
                tracing::error!(connection = %self.id, error = %e, "cannot write stream positions to state_dir");
            }
        }
    }

    /// Brings the WebSocket's subscriptions to the wanted set: subscribes
    /// what is new (after a reconnect: everything, then catches up),
    /// unsubscribes what was dropped. Only this connection is touched.
    async fn sync_subscriptions(
        &mut self,
        link: &mut Link,
        after_connect: bool,
        conn: &mut Conn<Self>,
    ) -> Result<(), StreamError> {
        let Some(session) = self.session.as_mut() else { return Ok(()) };
        let add: Vec<MastodonStream> =
            self.wanted.iter().filter(|(k, _)| !session.subscribed.contains_key(*k)).map(|(_, s)| s.clone()).collect();
        let remove: Vec<MastodonStream> =
            session.subscribed.iter().filter(|(k, _)| !self.wanted.contains_key(*k)).map(|(_, s)| s.clone()).collect();
        for stream in &remove {
            link.send_text(stream.unsubscribe_message()).await?;
            if let Some(session) = self.session.as_mut() {
                session.subscribed.remove(&stream.key());
            }
            self.unsubscribed(&stream.key(), conn);
        }
        if let Some(client) = self.session.as_ref().map(|s| s.client.clone()) {
            self.anchor(&client, &add).await;
        }
        for stream in &add {
            link.send_text(stream.subscribe_message()).await?;
            if let Some(session) = self.session.as_mut() {
                session.subscribed.insert(stream.key(), stream.clone());
            }
        }
        if !add.is_empty() || !remove.is_empty() {
            let total = self.session.as_ref().map_or(0, |s| s.subscribed.len());
            tracing::debug!(connection = %self.id, subscribed = add.len(), unsubscribed = remove.len(), total, "subscriptions synced");
        }
        self.subscribed(add, after_connect, conn);
        Ok(())
    }
}

impl Protocol for MastodonProtocol {
    type Config = MastodonConnection;
    type Command = ChangeSubscriptions;
    type Notice = SubscriptionRejected;
    type Side = CatchUpDone;

    fn host(&self) -> String {
        crate::settings::authority(&self.spec.streaming_url)
    }

    fn new(config: MastodonConnection, spec: &ConnectionSpec) -> Self {
        let wanted = config.streams.iter().map(|s| (s.key(), s.clone())).collect();
        MastodonProtocol {
            spec: config,
            id: spec.id.clone(),
            source: spec.source.clone(),
            stall_timeout: spec.stall_timeout,
            max_message_bytes: spec.max_message_bytes,
            wanted,
            open_gaps: HashMap::new(),
            last_input_at: None,
            probe_found: false,
            handed: HashMap::new(),
            session: None,
            advance: Vec::new(),
            anchored: HashSet::new(),
        }
    }

    async fn open(&mut self, conn: &mut Conn<Self>) -> Result<Link, StreamError> {
        let client = http::client(self.stall_timeout);
        let token = self.spec.token.clone();
        // Before connecting, so that a subscription follows the connect at once.
        let first: Vec<MastodonStream> = match self.spec.transport {
            Transport::Sse => self.wanted.values().take(1).cloned().collect(),
            Transport::WebSocket => self.wanted.values().cloned().collect(),
        };
        self.anchor(&client, &first).await;
        let link = match self.spec.transport {
            Transport::Sse => {
                let Some(stream) = self.wanted.values().next() else {
                    return Err(StreamError::Finished { reason: "no stream to carry".into() });
                };
                let (path, query) = stream.sse_path();
                let mut url = format!("{}{path}", self.spec.streaming_url.trim_end_matches('/'));
                if !query.is_empty() {
                    url.push('?');
                    url.push_str(&form_urlencoded::Serializer::new(String::new()).extend_pairs(&query).finish());
                }
                tracing::info!(connection = %conn.spec.id, url = %url, "connecting (sse)");
                let send = client
                    .get(&url)
                    .insert_header((awc::http::header::AUTHORIZATION, format!("Bearer {}", token.expose())))
                    .insert_header((awc::http::header::ACCEPT, "text/event-stream"))
                    .send();
                http::open(&conn.spec.id, send, BodyKind::Sse, &FATAL_STATUSES, self.max_message_bytes).await?
            }
            Transport::WebSocket => {
                let ws_base = crate::settings::websocket_scheme(self.spec.streaming_url.trim_end_matches('/'));
                let url = format!("{ws_base}/api/v1/streaming");
                tracing::info!(connection = %conn.spec.id, url = %url, "connecting (websocket)");
                let request = client.ws(&url).bearer_auth(token.expose());
                http::open_websocket(
                    &conn.spec.id,
                    request,
                    self.stall_timeout,
                    &FATAL_STATUSES,
                    self.max_message_bytes,
                )
                .await?
            }
        };
        self.session = Some(Session::new(client));
        Ok(link)
    }

    async fn opened(&mut self, link: &mut Link, conn: &mut Conn<Self>) -> Result<(), StreamError> {
        match self.spec.transport {
            Transport::Sse => {
                let streams: Vec<MastodonStream> = self.wanted.values().take(1).cloned().collect();
                self.subscribed(streams, true, conn);
                Ok(())
            }
            // Subscriptions to restore, and the catch-up after the gap.
            Transport::WebSocket => self.sync_subscriptions(link, true, conn).await,
        }
    }

    fn input(&mut self, input: Input, conn: &mut Conn<Self>) -> Option<StreamError> {
        self.last_input_at = Some(Utc::now());
        match input {
            Input::Sse(ev) => match from_sse(&ev.event, &ev.data) {
                Ok(m) => self.live(m, conn),
                Err(e) => conn.malformed(&e.to_string(), ev.data.as_bytes()),
            },
            Input::Text(text) => match from_websocket(&text) {
                Ok(MastodonFrame::Event(m)) => self.live(m, conn),
                Ok(MastodonFrame::Error { message, status }) => {
                    tracing::warn!(connection = %self.id, status, error = %message, "the server refused a subscription");
                    conn.stats.set_last_error(format!("subscription error {}: {message}", status.unwrap_or(0)));
                    conn.notice(SubscriptionRejected { message, status });
                }
                Err(e) => conn.malformed(&e.to_string(), &text),
            },
            Input::Binary(b) => conn.malformed("binary frame (Mastodon sends text only)", &b),
            Input::Oversized { what, len } => conn.oversized(what, len),
            Input::Bytes(_) | Input::KeepAlive | Input::Pong => {}
        }
        None
    }

    fn apply(&mut self, command: ChangeSubscriptions, stats: &ConnectionStats) {
        for key in &command.remove {
            self.wanted.remove(key);
        }
        for stream in command.add {
            self.wanted.entry(stream.key()).or_insert(stream);
        }
        stats.set_streams(self.stream_names());
    }

    async fn sync(&mut self, link: &mut Link, conn: &mut Conn<Self>) -> Result<(), StreamError> {
        if std::mem::take(&mut self.probe_found) && !self.probing() {
            tracing::warn!(connection = %self.id, "the stream withheld statuses its timeline has: reconnecting");
            return Err(StreamError::Retryable(DisconnectCause::Silent));
        }
        match self.spec.transport {
            Transport::WebSocket => self.sync_subscriptions(link, false, conn).await,
            // An SSE connection carries one stream; its planner opens and closes connections instead.
            Transport::Sse => Ok(()),
        }
    }

    async fn side(&mut self) -> CatchUpDone {
        match self.session.as_mut() {
            Some(session) if !session.catch_ups.is_empty() => match session.catch_ups.next().await {
                Some(done) => done,
                None => std::future::pending().await,
            },
            _ => std::future::pending().await,
        }
    }

    fn side_done(&mut self, done: CatchUpDone, conn: &mut Conn<Self>) -> bool {
        self.catch_up_done(done, conn);
        if self.probing() {
            return false;
        }
        if self.probe_found {
            // `sync` ends the connection, after this step's events are out.
            return true;
        }
        conn.stats.set_silent(false);
        false
    }

    fn written(&mut self) -> Option<OnWritten> {
        if self.advance.is_empty() {
            return None;
        }
        let (positions, advance) = (self.spec.positions.clone(), std::mem::take(&mut self.advance));
        for (key, id, at) in &advance {
            let newer = self.handed.get(key).map_or(true, |h| id_cmp(id, &h.last_id).is_gt());
            if newer {
                self.handed.insert(key.clone(), StreamPosition { last_id: id.to_string(), last_at: *at });
            }
        }
        Some(Box::new(move || {
            for (key, id, at) in advance {
                positions.advance(&key, &id, at);
            }
        }))
    }

    fn silent(&mut self, conn: &mut Conn<Self>) -> Silence {
        let now = Utc::now();
        let Some(session) = self.session.as_ref() else { return Silence::Reconnect };
        let keys: Vec<String> =
            session.slots.iter().filter(|(_, s)| s.catching_up.is_none()).map(|(k, _)| k.clone()).collect();
        let mut probes = 0;
        let mut checkable = false;
        for key in keys {
            let Some(slot) = self.session.as_ref().and_then(|s| s.slots.get(&key)) else { continue };
            let stream = slot.stream.clone();
            let generation = slot.generation;
            checkable |= self.spec.catch_up.is_some() && stream.catch_up_source().is_some();
            // A stream that never delivered anything has no id to ask past.
            let Some(position) = self.resume_point(&key) else { continue };
            let Some(request) = self.catch_up_request(&stream, position.last_id.clone()) else { continue };
            let Some(session) = self.session.as_mut() else { break };
            let client = session.client.clone();
            let k = key.clone();
            session.queued.push_back(
                async move {
                    let result = fetch_since(&client, &request).await;
                    (k, generation, result)
                }
                .boxed_local(),
            );
            if let Some(slot) = session.slots.get_mut(&key) {
                slot.catching_up = Some(CatchingUp {
                    reason: SILENT_STREAM,
                    cause: Some("no event within the liveness bound; the stream's timeline was asked".into()),
                    from: position.last_at,
                    to: now,
                    since_id: position.last_id,
                    pending: Vec::new(),
                    merged: false,
                    live_ids: HashSet::new(),
                    newest_live: None,
                });
            }
            probes += 1;
        }
        if let Some(session) = self.session.as_mut() {
            session.run_catch_ups();
        }
        match (probes, checkable) {
            (0, false) => Silence::Reconnect,
            (0, true) => {
                // Nothing delivered yet on any stream: nothing to compare a timeline with.
                conn.stats.set_silent(false);
                Silence::Probing
            }
            _ => Silence::Probing,
        }
    }

    fn closed(&mut self, connected: bool, end: &StreamError) {
        self.session = None;
        if connected {
            // Every stream this connection carried now has a gap, from its last byte.
            let from = self.last_input_at.unwrap_or_else(Utc::now);
            let reason = match end {
                StreamError::Retryable(DisconnectCause::Stall) => "stall",
                _ => "reconnect",
            };
            for key in self.wanted.keys() {
                self.open_gaps.entry(key.clone()).or_insert_with(|| OpenGap { from, reason, cause: end.to_string() });
            }
        }
        self.probe_found = false;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_show_in_debug() {
        let t = BearerToken::new("s3cret-token");
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn unknown_events_keep_their_name() {
        let p = keep_event_name("encrypted_message", &Bytes::from_static(b"{\"a\":1}"));
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v, serde_json::json!({"event": "encrypted_message", "payload": {"a": 1}}));
    }

    #[test]
    fn refusals_follow_the_reconnect_rules() {
        use crate::connection::http::refusal_of;
        use crate::error::DisconnectCause;
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
