//! Bluesky Jetstream's v1 `/subscribe` on the simulator (protocols.md D,
//! D+; SPEC 12), the live generator and the `/_sim/jetstream/*` hooks.
//!
//! `GET /subscribe` parses its query as the original server does, before
//! the upgrade: a bad `cursor` is HTTP 400 `invalid cursor: X`, bad options
//! are 400 `invalid subscriber options…` (`jetstream_filter`). One task per
//! upgraded connection then waits for the first valid `options_update` if
//! `requireHello=true`, replays the history from the cursor (every event
//! with `time_us >= cursor`), joins the live subscribers exactly where the
//! replay ended (`jetstream_state`), pings every `jetstream_ping_ms`,
//! answers client pings, applies `options_update`s (an invalid one closes
//! with 1000 and the error as reason; other types and binary frames are
//! ignored) and sends each event as a text frame, or with compression as a
//! binary frame holding one zstd frame made with Jetstream's dictionary.
//! `maxMessageSizeBytes` skips larger events silently. A live subscriber
//! whose outbox is full is dropped without a close frame ("lagged").
//!
//! The attempt script applies as on the other endpoints, counting events:
//! `status` (+ `retry_after_s`) answers instead of upgrading, `close_after`
//! ends abruptly (FIN, or RST with `reset`), `disconnect_after` and `limit`
//! close with 1000, `silence_after`/`silence_ms` send neither events nor
//! pings for a while, and `malformed_every` makes every Nth frame a
//! truncated event (compressed too under `compress`) followed by the event
//! itself. `split`, `mix`, `oversized_at`, `broadcast` and `mute_after` do
//! not apply. `SimHandle::reset_all` drops the connection with an RST, no
//! close frame (`end = "reset_all"`).
//!
//! Limits of the simulator's HTTP layer: actix takes a request target of at
//! most 65,534 bytes (the `http` crate's `Uri`; longer is a plain 400 from
//! actix, before this code runs) and a request head of at most 128 KiB,
//! where Go allows 1 MiB. A query of ~1,400 DIDs fits; a client must send
//! larger DID sets in an `options_update` (as SPEC 12 has it do anyway).

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use bytes::Bytes;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{Interval, MissedTickBehavior};

use super::handle::SimHandle;
use super::jetstream_events::{population_did, JetstreamEvent, Stored};
use super::jetstream_filter::{max_message_size, parse_client_message, parse_go_int, ClientMessage, Filter};
use super::jetstream_state::{
    round_robin, scattered, JetstreamConnInfo, LiveSub, LogEntry, OptionsUpdateRecord, ReplayFrom, Replayed,
    MAX_JETSTREAM_HISTORY,
};
use super::pace::Pacer;
use super::records::{lock, visible_params, ConnSlot, SentMessage};
use super::scenario::AttemptScript;
use super::shared::Shared;
use super::wire::{self, ConnFd};
use super::ws_conn::{reset_all, server_stop, End, WsLink, GONE};

/// Client messages over this size are ignored, as on the server.
const MAX_CLIENT_MESSAGE: usize = 10_000_000;

/// Largest client message read at all (frames and continuations); bigger
/// is a protocol error that ends the connection. Above `MAX_CLIENT_MESSAGE`
/// so that the server's "ignore" is seen, bounded so memory is.
const MAX_CLIENT_FRAME: usize = 16 * 1024 * 1024;

/// A close reason fits a control frame (125 bytes) after the code. Longer
/// reasons are cut at a character boundary. (gorilla, on the real server,
/// then fails to send the frame at all and just closes the socket.)
const MAX_REASON: usize = 123;

/// Most events the generator appends under one lock.
const MAX_BATCH: usize = 1_000;

impl SimHandle {
    /// Population DID number `i`: `did:plc:` and 24 base32 characters,
    /// the same for every simulator. The generator and `POST
    /// /_sim/jetstream/publish` use numbers below `jetstream_dids`; any `i`
    /// works here.
    pub fn jetstream_did(&self, i: usize) -> String {
        population_did(i)
    }

    /// Appends `n` events to the history, DIDs round-robin over `dids`,
    /// delivers them live to the subscribers that want them and returns
    /// them in order. A connection without a cursor gets what is published
    /// after its upgrade was answered; with `requireHello`, after its first
    /// valid update was applied (`JetstreamConnInfo::options_updates`); with
    /// a cursor, everything from the cursor on. Delivery to live outboxes
    /// happens inside this call: a batch much larger than `jetstream_outbox`
    /// can overflow a live subscriber's outbox before it drains, and that
    /// subscriber is then dropped as "lagged", like a slow one. The mix depends only on the position `k` in this call:
    /// per ten, a post create, a like, a follow, a repost, an account event
    /// (every fourth inactive, with a status), a block create or a post or
    /// follow delete, a two-op commit (post and like, one `rev`, the DID of
    /// position 6 for both), a profile update or a like delete, an identity
    /// event. Nothing when `dids` is empty.
    pub fn jetstream_publish(&self, dids: &[String], n: usize) -> Vec<JetstreamEvent> {
        if dids.is_empty() {
            return Vec::new();
        }
        self.shared.jetstream.publish(0, n, round_robin(dids)).iter().map(|e| e.public()).collect()
    }

    /// Appends the events of `origin` (another simulator) with these
    /// `time_us` as this instance of the firehose sends the same events:
    /// equal but for this simulator's own `time_us`, which is how two
    /// Jetstream instances differ. Unknown times are skipped.
    pub fn jetstream_publish_copies(&self, origin: &SimHandle, time_us: &[u64]) -> Vec<JetstreamEvent> {
        let wanted: std::collections::BTreeSet<u64> = time_us.iter().copied().collect();
        let originals: Vec<_> =
            origin.shared.jetstream.history().into_iter().filter(|e| wanted.contains(&e.time_us)).collect();
        self.shared.jetstream.publish_copies(&originals).iter().map(|e| e.public()).collect()
    }

    /// Appends one event of a kind v1 clients do not know (`"kind":"sync"`
    /// with a `"sync":{did,rev,seq,time}` body), delivered like any other
    /// (no collection, so only the DID filter applies).
    pub fn jetstream_publish_unknown(&self, did: &str) -> JetstreamEvent {
        self.shared.jetstream.publish_unknown(did).public()
    }

    /// The history (the most recent `MAX_JETSTREAM_HISTORY` events), oldest
    /// first.
    pub fn jetstream_history(&self) -> Vec<JetstreamEvent> {
        self.shared.jetstream.history().iter().map(|e| e.public()).collect()
    }

    /// Every `/subscribe` request (the most recent `MAX_JETSTREAM_RECORDS`),
    /// refused ones too, in arrival order. They are in `connections()` as
    /// well, with the same attempt numbers.
    pub fn jetstream_connections(&self) -> Vec<JetstreamConnInfo> {
        self.shared.jetstream.snapshot()
    }
}

/// Registers `/subscribe` and the hooks.
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/subscribe").route(web::get().to(subscribe)))
        .service(web::resource("/_sim/jetstream/connections").route(web::get().to(connections_json)))
        .service(web::resource("/_sim/jetstream/publish").route(web::post().to(publish_json)));
}

/// Starts the generator if `jetstream_rate` asks for one; it ends at the
/// simulator's stop.
pub(crate) fn start_generator(shared: &Arc<Shared>) {
    if shared.jetstream.rate > 0 {
        shared.jetstream.generating.store(true, Ordering::SeqCst);
        actix_rt::spawn(generate(Arc::clone(shared)));
    }
}

/// `jetstream_rate` events per second at random population members.
async fn generate(shared: Arc<Shared>) {
    let js = &shared.jetstream;
    let mut pacer = Pacer::new(js.rate);
    let mut stop = shared.stop.subscribe();
    let mut did_for = scattered(js.population, 0x1E75_7EA3);
    let mut next = 0u64;
    loop {
        let mut n = 0;
        while n < MAX_BATCH && pacer.try_take() {
            n += 1;
        }
        if n > 0 {
            js.publish(next, n, &mut did_for);
            next += n as u64;
        }
        tokio::select! {
            _ = pacer.tick() => {}
            _ = wire::stopped(&mut stop) => break,
        }
    }
    js.generating.store(false, Ordering::SeqCst);
    tracing::debug!(events = next, "jetstream generator stopped");
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// A plain-text answer instead of the upgrade (Go's `c.String`).
fn text_response(status: u16, body: String, retry_after: Option<u64>) -> HttpResponse {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = HttpResponse::build(code);
    // The connection is not reused: a refused client reconnects anyway.
    resp.force_close();
    if let Some(s) = retry_after {
        resp.insert_header((header::RETRY_AFTER, s.to_string()));
    }
    resp.content_type("text/plain; charset=UTF-8").body(body)
}

/// `GET /subscribe`.
async fn subscribe(req: HttpRequest, body: web::Payload, shared: web::Data<Shared>) -> HttpResponse {
    let opened_at = Instant::now();
    let query: Vec<(String, String)> = form_urlencoded::parse(req.query_string().as_bytes()).into_owned().collect();
    let visible = visible_params(&query, |_| false);
    let (attempt, script) = shared.next_attempt();
    // Go's `Query().Get`: the first value.
    let first = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let all = |key: &str| -> Vec<String> { query.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect() };
    let compress = first("compress") == Some("true")
        || req.headers().get("Socket-Encoding").is_some_and(|v| String::from_utf8_lossy(v.as_bytes()).contains("zstd"));
    let require_hello = first("requireHello") == Some("true");
    let max_size = first("maxMessageSizeBytes").map(max_message_size).unwrap_or(0);
    let raw_cursor = first("cursor").filter(|c| !c.is_empty()).map(str::to_string);
    let cursor = raw_cursor.as_deref().and_then(parse_go_int);
    let info = JetstreamConnInfo {
        attempt,
        opened_at,
        closed_at: None,
        status: 101,
        query: query.clone(),
        cursor,
        compress,
        require_hello,
        wanted_collections: Vec::new(),
        wanted_dids: BTreeSet::new(),
        options_updates: Vec::new(),
        events_sent: 0,
        first_time_us: None,
        last_time_us: None,
        skipped_oversize: 0,
        pings_sent: 0,
        pongs_received: 0,
        client_pings: 0,
        end: None,
    };
    let refuse = |status: u16, text: String, retry_after: Option<u64>| {
        shared.log_refused(ConnSlot::for_request(&req, attempt, &visible, true, status, opened_at)).finish("status");
        let mut info = info.clone();
        info.status = status;
        let entry = shared.jetstream.register(info, Arc::new(Filter::default()));
        lock(&entry).finish("status");
        text_response(status, text, retry_after)
    };
    if let Some(status) = script.status.filter(|s| !matches!(s, 101 | 200)) {
        let reason = StatusCode::from_u16(status).ok().and_then(|c| c.canonical_reason()).unwrap_or("Error");
        return refuse(status, reason.to_string(), script.retry_after_s);
    }
    if let (Some(raw), None) = (&raw_cursor, cursor) {
        return refuse(400, format!("invalid cursor: {raw}"), None);
    }
    let filter = match Filter::parse(&all("wantedCollections"), &all("wantedDids")) {
        Ok(f) => Arc::new(f),
        Err(e) => return refuse(400, e, None),
    };
    let (resp, session, messages) = match actix_ws::handle(&req, body) {
        Ok(parts) => parts,
        Err(e) => {
            let resp = e.error_response();
            shared
                .log_refused(ConnSlot::for_request(&req, attempt, &visible, true, resp.status().as_u16(), opened_at))
                .finish("status");
            let mut info = info;
            info.status = resp.status().as_u16();
            lock(&shared.jetstream.register(info, Arc::new(Filter::default()))).finish("status");
            return resp;
        }
    };
    let (slot, resets) = shared.open_stream(ConnSlot::for_request(&req, attempt, &visible, true, 101, opened_at));
    let entry = shared.jetstream.register(info, Arc::clone(&filter));
    let (sub_id, sub, outbox) = shared.jetstream.subscriber(filter);
    let shared = shared.into_inner();
    let fd = req.conn_data::<ConnFd>().map(|c| c.0);
    // A cursor later than now means live only.
    let start = cursor.filter(|c| *c <= now_us()).map(|c| ReplayFrom::Cursor(c.to_string()));
    let messages =
        messages.max_frame_size(MAX_CLIENT_FRAME).aggregate_continuations().max_continuation_size(MAX_CLIENT_FRAME);
    let mut ws = WsLink::new(session, messages, shared.stop.subscribe(), resets);
    let resp =
        resp.map_body(|_, inner| ws.body("jetstream", inner, fd, Arc::clone(&shared.upgraded))).map_into_boxed_body();
    let mut conn = JsConn {
        shared,
        slot,
        entry,
        sub_id,
        sub,
        outbox,
        script,
        ws,
        compress,
        max_size,
        start,
        phase: Phase::Hello,
        pending: VecDeque::new(),
        pings: None,
        last_sent: 0,
        events: 0,
        frames: 0,
    };
    if !require_hello {
        // Before the 101 goes out: whatever is published once the client
        // has its answer reaches it.
        conn.start_stream();
    }
    actix_rt::spawn(conn.run());
    resp
}

/// Where a connection's stream stands.
enum Phase {
    /// `requireHello`: nothing goes out before the first valid update.
    Hello,
    /// Sending the history from here.
    Replay(ReplayFrom),
    /// A live subscriber.
    Live,
}

fn normal(why: &'static str) -> End {
    End::Close { reason: Some(CloseCode::Normal.into()), why }
}

/// `reason` cut to `MAX_REASON` bytes at a character boundary.
fn close_reason(reason: &str) -> CloseReason {
    let mut cut = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    CloseReason { code: CloseCode::Normal, description: Some(reason[..cut].to_string()) }
}

/// Serves one `/subscribe` WebSocket.
struct JsConn {
    shared: Arc<Shared>,
    slot: Arc<ConnSlot>,
    entry: Arc<Mutex<LogEntry>>,
    sub_id: u64,
    sub: Arc<LiveSub>,
    outbox: mpsc::Receiver<Arc<Stored>>,
    script: AttemptScript,
    /// The client's session and messages, and the stop signal.
    ws: WsLink,
    compress: bool,
    /// `maxMessageSizeBytes` from the query (0: none); updates never change it.
    max_size: u32,
    /// Where the replay starts once the stream starts (None: live only).
    start: Option<ReplayFrom>,
    phase: Phase,
    /// Replayed events not sent yet.
    pending: VecDeque<Arc<Stored>>,
    /// Server pings, from the start of the stream.
    pings: Option<Interval>,
    /// `time_us` of the last event sent: nothing older or equal goes out.
    last_sent: u64,
    /// Events sent (what the script counts).
    events: u64,
    /// Frames of events and junk sent (what `malformed_every` counts).
    frames: u64,
}

impl JsConn {
    async fn run(mut self) {
        let end = self.serve().await;
        let why = end.why();
        self.shared.jetstream.unsubscribe(self.sub_id);
        self.slot.finish(why);
        self.shared.close(&self.slot);
        lock(&self.entry).finish(why);
        tracing::debug!(attempt = self.slot.attempt, end = why, events = self.events, "simulated jetstream ended");
        self.ws.finish(end).await;
    }

    async fn serve(&mut self) -> End {
        let mut silenced = false;
        loop {
            if let Some(end) = self.scripted_end() {
                return end;
            }
            if !silenced && self.script.silence_after.is_some_and(|n| self.events >= n) {
                silenced = true;
                let buffered = match self.ws.silence(Duration::from_millis(self.script.silence_ms)).await {
                    Ok(b) => b,
                    Err(end) => return end,
                };
                if let Some(p) = self.pings.as_mut() {
                    p.reset();
                }
                for m in buffered {
                    if let Err(end) = self.on_message(m).await {
                        return end;
                    }
                }
                continue;
            }
            let replaying = matches!(self.phase, Phase::Replay(_));
            let live = matches!(self.phase, Phase::Live);
            let step = tokio::select! {
                m = self.ws.messages.recv() => match m {
                    Some(Ok(m)) => self.on_message(m).await,
                    Some(Err(e)) => {
                        tracing::debug!(attempt = self.slot.attempt, error = %e, "websocket protocol error");
                        Err(GONE)
                    }
                    None => Err(GONE),
                },
                _ = tick(&mut self.pings) => self.ping().await,
                _ = self.sub.kick.notified() => Err(End::Abort { reset: false, why: "lagged" }),
                _ = wire::changed(&mut self.ws.resets) => Err(reset_all()),
                ev = self.outbox.recv(), if live => match ev {
                    Some(ev) => self.send(ev).await,
                    None => Err(GONE),
                },
                _ = std::future::ready(()), if replaying => self.replay_step().await,
                _ = wire::stopped(&mut self.ws.stop) => Err(server_stop()),
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    fn scripted_end(&self) -> Option<End> {
        let (s, n) = (&self.script, self.events);
        if s.close_after.is_some_and(|c| n >= c) {
            return Some(End::Abort { reset: s.reset, why: if s.reset { "reset" } else { "close_after" } });
        }
        if s.disconnect_after.is_some_and(|c| n >= c) {
            return Some(normal("disconnect"));
        }
        if s.limit.is_some_and(|c| n >= c) {
            return Some(normal("limit"));
        }
        if self.sub.lagged() {
            // The server's `ws.Close()`: no close frame.
            return Some(End::Abort { reset: false, why: "lagged" });
        }
        None
    }

    /// Replay, or live at once, and the ping timer.
    fn start_stream(&mut self) {
        self.phase = match self.start.take() {
            Some(from) => Phase::Replay(from),
            None => {
                self.shared.jetstream.go_live(self.sub_id, &self.sub);
                Phase::Live
            }
        };
        let every = self.shared.jetstream.ping;
        let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.pings = Some(pings);
    }

    async fn ping(&mut self) -> Result<(), End> {
        lock(&self.entry).info.pings_sent += 1;
        or_stop(self.ws.session.ping(b""), &mut self.ws.stop, &self.sub.kick).await
    }

    async fn on_message(&mut self, m: AggregatedMessage) -> Result<(), End> {
        match m {
            AggregatedMessage::Text(text) if text.len() <= MAX_CLIENT_MESSAGE => self.on_text(&text),
            // Oversized and binary messages are ignored.
            AggregatedMessage::Text(_) | AggregatedMessage::Binary(_) => Ok(()),
            AggregatedMessage::Ping(bytes) => {
                lock(&self.entry).info.client_pings += 1;
                or_stop(self.ws.session.pong(&bytes), &mut self.ws.stop, &self.sub.kick).await
            }
            AggregatedMessage::Pong(_) => {
                lock(&self.entry).info.pongs_received += 1;
                Ok(())
            }
            AggregatedMessage::Close(reason) => Err(End::Close { reason, why: "client closed" }),
        }
    }

    /// A client text frame: an `options_update` replaces both filters.
    fn on_text(&mut self, text: &str) -> Result<(), End> {
        let (collections, dids) = match parse_client_message(text) {
            ClientMessage::Ignored => return Ok(()),
            ClientMessage::Invalid(reason) => return Err(self.reject(Vec::new(), 0, reason)),
            ClientMessage::Update { collections, dids } => (collections, dids),
        };
        let filter = match Filter::parse(&collections, &dids) {
            Ok(f) => Arc::new(f),
            Err(e) => {
                return Err(self.reject(collections, dids.len(), format!("failed to parse subscriber options: {e}")))
            }
        };
        self.sub.set_filter(Arc::clone(&filter));
        {
            let mut entry = lock(&self.entry);
            entry.filter = filter;
            entry.update(OptionsUpdateRecord {
                at: Instant::now(),
                wanted_collections: collections,
                dids: dids.len(),
                accepted: true,
                error: None,
            });
        }
        if matches!(self.phase, Phase::Hello) {
            self.start_stream();
        }
        Ok(())
    }

    /// Logs a rejected update; the end: Close 1000 with the reason.
    fn reject(&mut self, collections: Vec<String>, dids: usize, reason: String) -> End {
        tracing::debug!(attempt = self.slot.attempt, %reason, "jetstream options_update rejected");
        let close = close_reason(&reason);
        lock(&self.entry).update(OptionsUpdateRecord {
            at: Instant::now(),
            wanted_collections: collections,
            dids,
            accepted: false,
            error: Some(reason),
        });
        End::Close { reason: Some(close), why: "bad options_update" }
    }

    /// The next replayed event, or the next replay step.
    async fn replay_step(&mut self) -> Result<(), End> {
        if let Some(ev) = self.pending.pop_front() {
            return self.send(ev).await;
        }
        if let Phase::Replay(from) = &mut self.phase {
            if let Replayed::Live = self.shared.jetstream.replay(from, self.sub_id, &self.sub, &mut self.pending) {
                self.phase = Phase::Live;
            }
        }
        Ok(())
    }

    /// Sends one event (filtered already), unless it is not newer than the
    /// last one sent or too big.
    async fn send(&mut self, ev: Arc<Stored>) -> Result<(), End> {
        if ev.time_us <= self.last_sent {
            return Ok(());
        }
        let frame = if self.compress { self.compressed(&ev)? } else { ev.json.clone() };
        if self.max_size > 0 && frame.len() > self.max_size as usize {
            lock(&self.entry).info.skipped_oversize += 1;
            return Ok(());
        }
        if self.script.malformed_every.is_some_and(|every| every > 0 && (self.frames + 1) % every == 0) {
            self.junk(&ev).await?;
        }
        self.frame(frame).await?;
        self.frames += 1;
        self.events += 1;
        self.last_sent = ev.time_us;
        self.slot.messages.fetch_add(1, Ordering::Relaxed);
        {
            let info = &mut lock(&self.entry).info;
            info.events_sent += 1;
            info.first_time_us.get_or_insert(ev.time_us);
            info.last_time_us = Some(ev.time_us);
        }
        self.record(ev.spec_kind(), ev.public().id(), ev.json.clone());
        Ok(())
    }

    /// A truncated copy of `ev` (cut at a character boundary, so the text
    /// frame stays valid UTF-8).
    async fn junk(&mut self, ev: &Stored) -> Result<(), End> {
        let text = String::from_utf8_lossy(&ev.json);
        let mut cut = text.len() / 2;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let junk = Bytes::from(text[..cut].to_string());
        let frame = match self.compress {
            true => match self.shared.jetstream.compress(&junk) {
                Ok(z) => Bytes::from(z),
                Err(e) => return Err(compress_failed(&e)),
            },
            false => junk.clone(),
        };
        self.frame(frame).await?;
        self.frames += 1;
        self.slot.messages.fetch_add(1, Ordering::Relaxed);
        self.record("malformed", None, junk);
        Ok(())
    }

    fn compressed(&self, ev: &Stored) -> Result<Bytes, End> {
        self.shared.jetstream.compressed(ev).map_err(|e| compress_failed(&e))
    }

    async fn frame(&mut self, frame: Bytes) -> Result<(), End> {
        if self.compress {
            or_stop(self.ws.session.binary(frame), &mut self.ws.stop, &self.sub.kick).await
        } else {
            let text = String::from_utf8_lossy(&frame).into_owned();
            or_stop(self.ws.session.text(text), &mut self.ws.stop, &self.sub.kick).await
        }
    }

    fn record(&self, kind: &'static str, id: Option<String>, payload: Bytes) {
        if self.shared.record_sent > 0 {
            self.shared.record(SentMessage { attempt: self.slot.attempt, kind, id, for_user: None, payload });
        }
    }
}

fn compress_failed(e: &io::Error) -> End {
    tracing::error!(error = %e, "zstd compression failed; dropping the jetstream connection");
    End::Abort { reset: false, why: "compress error" }
}

/// The next ping; never without a timer.
async fn tick(pings: &mut Option<Interval>) {
    match pings {
        Some(p) => {
            p.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// A send to the client. One that does not read blocks it: then neither a
/// stopping server nor a full outbox (the subscriber was kicked) may wait.
async fn or_stop(
    send: impl Future<Output = Result<(), actix_ws::Closed>>,
    stop: &mut watch::Receiver<bool>,
    kick: &Notify,
) -> Result<(), End> {
    tokio::select! {
        biased;
        sent = send => sent.map_err(|_| GONE),
        _ = wire::stopped(stop) => Err(End::Abort { reset: false, why: "server stop" }),
        _ = kick.notified() => Err(End::Abort { reset: false, why: "lagged" }),
    }
}

/// `GET /_sim/jetstream/connections`: the connection log, times in ms
/// since start, DID sets as counts.
async fn connections_json(shared: web::Data<Shared>) -> HttpResponse {
    let ms = |t: Instant| t.saturating_duration_since(shared.started).as_millis() as u64;
    let rows: Vec<serde_json::Value> = shared
        .jetstream
        .snapshot()
        .into_iter()
        .map(|c| {
            let query: Vec<(&str, &str)> =
                c.query.iter().filter(|(k, _)| k != "wantedDids").map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let updates: Vec<serde_json::Value> = c
                .options_updates
                .iter()
                .map(|u| {
                    serde_json::json!({
                        "at_ms": ms(u.at),
                        "wanted_collections": u.wanted_collections,
                        "dids": u.dids,
                        "accepted": u.accepted,
                        "error": u.error,
                    })
                })
                .collect();
            serde_json::json!({
                "attempt": c.attempt,
                "status": c.status,
                "opened_ms": ms(c.opened_at),
                "closed_ms": c.closed_at.map(ms),
                "query": query,
                "query_dids": c.query.iter().filter(|(k, _)| k == "wantedDids").count(),
                "cursor": c.cursor,
                "compress": c.compress,
                "require_hello": c.require_hello,
                "wanted_collections": c.wanted_collections,
                "wanted_dids": c.wanted_dids.len(),
                "options_updates": updates,
                "events_sent": c.events_sent,
                "first_time_us": c.first_time_us,
                "last_time_us": c.last_time_us,
                "skipped_oversize": c.skipped_oversize,
                "pings_sent": c.pings_sent,
                "pongs_received": c.pongs_received,
                "client_pings": c.client_pings,
                "end": c.end,
            })
        })
        .collect();
    HttpResponse::Ok().json(rows)
}

/// `POST /_sim/jetstream/publish?n=N` (default 1, at most
/// `MAX_JETSTREAM_HISTORY`): N events round-robin over the first min(N,
/// population) population DIDs.
async fn publish_json(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let n = form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "n")
        .map(|(_, v)| v.parse::<usize>().map_err(|_| v.into_owned()))
        .unwrap_or(Ok(1));
    let n = match n {
        Ok(n) if n <= MAX_JETSTREAM_HISTORY => n,
        Ok(n) => return bad_request(format!("n: {n} is over {MAX_JETSTREAM_HISTORY}")),
        Err(v) => return bad_request(format!("n: {v:?} is not a count")),
    };
    let dids: Vec<String> = (0..n.min(shared.jetstream.population)).map(population_did).collect();
    let events = if dids.is_empty() { Vec::new() } else { shared.jetstream.publish(0, n, round_robin(&dids)) };
    HttpResponse::Ok().json(serde_json::json!({
        "published": events.len(),
        "first_time_us": events.first().map(|e| e.time_us),
        "last_time_us": events.last().map(|e| e.time_us),
    }))
}

fn bad_request(error: String) -> HttpResponse {
    HttpResponse::BadRequest().json(serde_json::json!({ "error": error }))
}

#[cfg(test)]
#[path = "jetstream_tests.rs"]
mod tests;
