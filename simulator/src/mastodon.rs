//! Mastodon streaming on the simulator (protocols.md B.1-B.9): bearer-token
//! checks, the SSE channels of B.3 with Mastodon's exact wire format (B.6,
//! B.9), the health check and the REST catch-up timelines of B.8 with Link
//! and rate-limit headers, all served from the one status and notification
//! history per simulator that `mastodon_state` keeps.
//!
//! Statuses are generated at the simulator's `rate` while at least one
//! Mastodon stream is open (rate 0: only on demand, through
//! `SimHandle::mastodon_publish` and friends). Every event goes through one
//! broadcast channel; each SSE connection has a producer task that picks the
//! events its channel carries, writes them through the same body machinery as
//! Twitter (`wire::BodyStream`) and applies the attempt's script: `status`,
//! `close_after` (+ `reset`), `limit`, `disconnect_after` (a clean end, like a
//! revoked token's `kill`), `silence_after`/`silence_ms`, `split` and
//! `mute_after` (no more events, heartbeats go on: the muted stream of a
//! streaming server after a Redis restart, mastodon/mastodon#25157). The
//! Twitter-only junk options (`malformed_every`, `oversized_at`, `mix`,
//! `broadcast`) do not apply.
//!
//! The accepted tokens can be revoked while streams are open
//! (`SimHandle::mastodon_revoke`): SSE bodies then end cleanly.
//! `SimHandle::mastodon_mute_all` mutes every SSE and WebSocket connection
//! at once, as that Redis restart does, and `SimHandle::reset_all` ends
//! every SSE body with an RST. With
//! `mastodon_update_delay_ms`, `update` and `status.update` on public and
//! hashtag channels are held back a random while (B.9). The WebSocket side
//! (same events, same channels) is in `mastodon_ws`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, watch};

use super::handle::SimHandle;
use super::mastodon_state::{normalise_tag, Audience, Channel, Event, MastodonPost, Scope, Timeline, LISTS};
use super::pace::Pacer;
use super::records::{lock, visible_params, ConnSlot, SentMessage};
use super::scenario::{AttemptScript, Split};
use super::shared::Shared;
use super::wire::{self, BodyStream, ConnFd, Halt, Piece, CHANNEL_DEPTH};

/// REST rate limit: calls per window per token (B.7).
const RATE_LIMIT: u32 = 300;
const RATE_WINDOW: Duration = Duration::from_secs(300);

impl SimHandle {
    /// Publishes `n` new statuses with random authors and tags, as the
    /// generator does, and returns them in id order.
    pub fn mastodon_publish(&self, n: usize) -> Vec<MastodonPost> {
        self.shared.mastodon.publish(n)
    }

    /// Publishes one status with exactly these hashtags, local or remote,
    /// with or without media.
    pub fn mastodon_post(&self, tags: &[&str], local: bool, media: bool) -> MastodonPost {
        self.shared.mastodon.publish_exactly(tags, local, media)
    }

    /// Deletes a status: removed from the history, `delete` on the streams
    /// it reached. False when `id` is not (or no longer) in the history.
    pub fn mastodon_delete(&self, id: &str) -> bool {
        self.shared.mastodon.delete_status(id)
    }

    /// Sends a notification to the token's user; returns its id.
    pub fn mastodon_notify(&self) -> String {
        self.shared.mastodon.notify_now()
    }

    /// Emits one event of every kind not covered by the methods above (see
    /// `mastodon_state::State::catalogue`); returns (SPEC 4 kind, stream joined with ':') of
    /// each, `unknown` for `encrypted_message`.
    pub fn mastodon_emit_catalogue(&self) -> Vec<(String, String)> {
        self.shared.mastodon.emit_catalogue()
    }

    /// Revokes a bearer token, like Mastodon's `kill` (B.2, B.9): it is no
    /// longer accepted (later connects get 401 `Invalid access token`),
    /// every open SSE stream with it ends its body cleanly and every open
    /// WebSocket with it gets a Close frame with no status code. True when
    /// the token was accepted until now.
    pub fn mastodon_revoke(&self, token: &str) -> bool {
        self.shared.mastodon.revoke(token)
    }

    /// Mutes (`true`) or unmutes every Mastodon SSE and WebSocket
    /// connection, open or future, as a Redis restart under the streaming
    /// server does (mastodon/mastodon#25157): events emitted while muted
    /// reach no connection, even after the unmute, while SSE heartbeats,
    /// WebSocket pings and pongs go on and the statuses still enter the
    /// history and the REST timelines. Counted per connection in
    /// `ConnectionRecord::withheld`. Unmuting does not lift a script's
    /// `mute_after`.
    pub fn mastodon_mute_all(&self, on: bool) {
        self.shared.mastodon.mute_all(on);
    }
}

/// Registers the Mastodon routes.
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/api/v1/streaming/health").route(web::get().to(health)))
        .service(web::resource("/api/v1/streaming").route(web::get().to(bare_streaming)))
        .service(web::resource("/api/v1/streaming/{tail:.*}").route(web::get().to(stream)))
        .service(web::resource("/api/v1/timelines/public").route(web::get().to(public_timeline)))
        .service(web::resource("/api/v1/timelines/tag/{tag}").route(web::get().to(tag_timeline)))
        .service(web::resource("/api/v1/timelines/home").route(web::get().to(home_timeline)))
        .service(web::resource("/api/v1/timelines/list/{list}").route(web::get().to(list_timeline)))
        .service(web::resource("/api/v1/notifications").route(web::get().to(notifications)));
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; charset=utf-8").body("OK")
}

/// B.9: plain `GET /api/v1/streaming` on the streaming host is a 400.
async fn bare_streaming() -> HttpResponse {
    error_json(400, "Unknown channel requested", None)
}

/// The error message of a scripted refusal with `status`.
pub(super) fn scripted_message(status: u16) -> &'static str {
    match status {
        401 => "Invalid access token",
        s if s >= 500 => "An unexpected error occurred",
        s => StatusCode::from_u16(s).ok().and_then(|c| c.canonical_reason()).unwrap_or("Error"),
    }
}

fn error_json(status: u16, message: &str, retry_after: Option<u64>) -> HttpResponse {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = HttpResponse::build(code);
    if let Some(s) = retry_after {
        resp.insert_header((header::RETRY_AFTER, s.to_string()));
    }
    resp.json(serde_json::json!({ "error": message }))
}

/// The streaming server's token lookup (B.2, B.9): the `Authorization`
/// header with the `Bearer ` prefix stripped (exactly that, case-sensitive;
/// anything else is taken whole as the token), else `access_token`.
fn streaming_token(req: &HttpRequest, params: &[(String, String)]) -> Option<String> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        return Some(value.strip_prefix("Bearer ").map(str::to_string).unwrap_or(value));
    }
    params.iter().find(|(k, _)| k == "access_token").map(|(_, v)| v.clone())
}

/// Mastodon's truthiness of `only_media` (B.3).
pub(super) fn truthy(value: Option<&str>) -> bool {
    value.is_some_and(|v| !matches!(v, "" | "false" | "0" | "f" | "F" | "FALSE" | "off" | "OFF"))
}

pub(super) fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The channel of `GET /api/v1/streaming/<tail>` (B.3's SSE column), or the
/// refusal's status and message.
fn sse_channel(tail: &str, params: &[(String, String)]) -> Result<Channel, (u16, &'static str)> {
    let media = truthy(param(params, "only_media"));
    let tag = || match param(params, "tag").map(normalise_tag) {
        Some(t) if !t.is_empty() => Ok(t),
        _ => Err((400, "Missing tag name parameter")),
    };
    Ok(match tail {
        "user" => Channel::User,
        "user/notification" => Channel::UserNotification,
        "public" => Channel::Public { scope: Scope::All, media },
        "public/local" => Channel::Public { scope: Scope::Local, media },
        "public/remote" => Channel::Public { scope: Scope::Remote, media },
        "hashtag" => Channel::Hashtag { tag: tag()?, local: false },
        "hashtag/local" => Channel::Hashtag { tag: tag()?, local: true },
        "list" => match param(params, "list") {
            None | Some("") => return Err((400, "Missing list name parameter")),
            Some(l) if LISTS.contains(&l) => Channel::List(l.to_string()),
            Some(_) => return Err((401, "Not authorized to stream this list")),
        },
        "direct" => Channel::Direct,
        _ => return Err((400, "Unknown channel requested")),
    })
}

/// Counts an open Mastodon stream; the last one to go stops the generator.
pub(super) struct Subscription(Arc<Shared>);

impl Subscription {
    pub(super) fn new(shared: &Arc<Shared>) -> Subscription {
        let m = &shared.mastodon;
        m.subscribers.fetch_add(1, Ordering::SeqCst);
        if shared.rate > 0 && !m.generating.swap(true, Ordering::SeqCst) {
            actix_rt::spawn(generate(Arc::clone(shared)));
        }
        Subscription(Arc::clone(shared))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.0.mastodon.subscribers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The generator: `rate` events per second while someone is subscribed.
async fn generate(shared: Arc<Shared>) {
    let m = &shared.mastodon;
    let mut pacer = Pacer::new(shared.rate);
    let mut stop = shared.stop.subscribe();
    loop {
        if m.subscribers.load(Ordering::SeqCst) == 0 {
            m.generating.store(false, Ordering::SeqCst);
            // A subscriber that arrived meanwhile saw `generating` still set
            // and started nothing: carry on for it, unless another did.
            if m.subscribers.load(Ordering::SeqCst) == 0 || m.generating.swap(true, Ordering::SeqCst) {
                return;
            }
        }
        while !pacer.try_take() {
            tokio::select! {
                _ = pacer.tick() => {}
                _ = wire::stopped(&mut stop) => {
                    m.generating.store(false, Ordering::SeqCst);
                    return;
                }
            }
        }
        m.step();
    }
}

/// `GET /api/v1/streaming/<channel>`: an SSE stream (B.3, B.6).
async fn stream(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let opened_at = Instant::now();
    let tail = req.match_info().get("tail").unwrap_or("").to_string();
    let params: Vec<(String, String)> = form_urlencoded::parse(req.query_string().as_bytes()).into_owned().collect();
    let visible = visible_params(&params, |k| k == "access_token");
    let token = streaming_token(&req, &params);
    let revoked = shared.mastodon.revocations();
    let auth = shared.mastodon.check_token(token.as_deref());
    let (attempt, script) = shared.next_attempt();
    let log = |status: u16, auth_ok: bool| ConnSlot::for_request(&req, attempt, &visible, auth_ok, status, opened_at);
    if let Err(message) = auth {
        shared.log_refused(log(401, false)).finish("status");
        return error_json(401, message, None);
    }
    if let Some(status) = script.status.filter(|s| *s != 200) {
        shared.log_refused(log(status, true)).finish("status");
        return error_json(status, scripted_message(status), script.retry_after_s);
    }
    let channel = match sse_channel(&tail, &params) {
        Ok(c) => c,
        Err((status, message)) => {
            shared.log_refused(log(status, true)).finish("status");
            return error_json(status, message, None);
        }
    };
    let (slot, resets) = shared.open_stream(log(200, true));
    let events = shared.mastodon.events.subscribe();
    let shared = shared.into_inner();
    let subscription = Subscription::new(&shared);
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let fd = req.conn_data::<ConnFd>().map(|c| c.0);
    let seed = attempt.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED;
    let producer = SseProducer {
        out: SseWriter {
            tx,
            stop: shared.stop.subscribe(),
            split: script.split,
            rng: fastrand::Rng::with_seed(seed),
            frames: 0,
            last_write: Instant::now(),
            pending: BytesMut::new(),
        },
        stop: shared.stop.subscribe(),
        resets,
        held: Holdback::new(shared.mastodon.update_delay_ms, seed),
        token: token.unwrap_or_default(),
        revoked,
        shared,
        slot,
        script,
        channel,
        events,
        _subscription: subscription,
    };
    actix_rt::spawn(producer.run());
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "private, no-store"))
        .streaming(BodyStream::new(rx, fd))
}

/// Writes SSE bytes into the body channel, cut per the script's `split`.
struct SseWriter {
    tx: mpsc::Sender<Piece>,
    stop: watch::Receiver<bool>,
    split: Split,
    rng: fastrand::Rng,
    frames: u64,
    last_write: Instant,
    /// Unsplit blocks gathered while more events are ready, sent as one
    /// chunk: a fast reader then gets large reads, as from a real server.
    pending: BytesMut,
}

/// Gathered bytes are sent at this size (or when no event is ready).
const COALESCE_BYTES: usize = 64 * 1024;

impl SseWriter {
    /// One event block or comment, cut into chunks per `split`; unsplit
    /// blocks are gathered until [`SseWriter::flush`] or `COALESCE_BYTES`.
    async fn frame(&mut self, frame: Bytes) -> Result<(), Halt> {
        let frame_no = self.frames;
        self.frames += 1;
        if self.split == Split::None {
            self.pending.extend_from_slice(&frame);
            if self.pending.len() >= COALESCE_BYTES {
                self.flush().await?;
            }
            return Ok(());
        }
        self.flush().await?;
        for piece in wire::split_frame(self.split, frame_no, &frame, &mut self.rng) {
            self.send(Piece::Data(piece)).await?;
        }
        Ok(())
    }

    /// Sends what is gathered.
    async fn flush(&mut self) -> Result<(), Halt> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = self.pending.split().freeze();
        self.send(Piece::Data(chunk)).await
    }

    async fn send(&mut self, piece: Piece) -> Result<(), Halt> {
        if let Piece::Abort { .. } = piece {
            // What was gathered goes out before the end.
            Box::pin(self.flush()).await?;
        }
        tokio::select! {
            biased;
            sent = self.tx.send(piece) => sent.map_err(|_| Halt::ClientClosed)?,
            _ = wire::stopped(&mut self.stop) => return Err(Halt::ServerStop),
        }
        self.last_write = Instant::now();
        Ok(())
    }
}

/// Feeds one SSE connection.
struct SseProducer {
    shared: Arc<Shared>,
    slot: Arc<ConnSlot>,
    script: AttemptScript,
    channel: Channel,
    events: broadcast::Receiver<Arc<Event>>,
    out: SseWriter,
    stop: watch::Receiver<bool>,
    /// `SimHandle::reset_all`'s epoch, seen when the stream opened.
    resets: watch::Receiver<u64>,
    /// Updates held back (B.9), with their data lines.
    held: Holdback<(Arc<Event>, Bytes)>,
    /// The token it was opened with, rechecked at every revocation.
    token: String,
    revoked: watch::Receiver<u64>,
    _subscription: Subscription,
}

impl SseProducer {
    async fn run(mut self) {
        let end = match self.stream().await {
            Ok(end) => end,
            Err(Halt::ResetAll) => {
                self.out.send(Piece::Abort { reset: true }).await.map_or_else(Halt::why, |()| "reset_all")
            }
            Err(halt) => halt.why(),
        };
        self.slot.finish(end);
        self.shared.close(&self.slot);
        tracing::debug!(
            attempt = self.slot.attempt,
            end,
            messages = self.slot.messages.load(Ordering::Relaxed),
            "simulated mastodon stream ended"
        );
    }

    async fn stream(&mut self) -> Result<&'static str, Halt> {
        // B.9: the preamble is a comment and one LF, no blank line.
        self.out.frame(Bytes::from_static(b":)\n")).await?;
        let keepalive = self.shared.keepalive;
        let mut sent: u64 = 0;
        let mut silenced = false;
        loop {
            // Gather while the next event is already waiting and no script
            // threshold is due; otherwise what is gathered goes out now.
            if self.events.is_empty() || self.due(sent, silenced) {
                self.out.flush().await?;
            }
            let s = &self.script;
            if s.close_after.is_some_and(|n| sent >= n) {
                let reset = s.reset;
                self.out.send(Piece::Abort { reset }).await?;
                return Ok(if reset { "reset" } else { "close_after" });
            }
            if s.disconnect_after.is_some_and(|n| sent >= n) {
                // Like a revoked token's `kill`: the body just ends.
                return Ok("disconnect");
            }
            if s.limit.is_some_and(|n| sent >= n) {
                return Ok("limit");
            }
            if !silenced && s.silence_after.is_some_and(|n| sent >= n) {
                silenced = true;
                let how_long = Duration::from_millis(s.silence_ms);
                tokio::select! {
                    _ = tokio::time::sleep(how_long) => {}
                    _ = self.out.tx.closed() => return Err(Halt::ClientClosed),
                    _ = wire::changed(&mut self.resets) => return Err(Halt::ResetAll),
                    _ = wire::stopped(&mut self.stop) => return Err(Halt::ServerStop),
                }
                self.out.last_write = Instant::now();
            }
            let idle = keepalive.saturating_sub(self.out.last_write.elapsed());
            let due = self.held.next_due();
            tokio::select! {
                r = self.events.recv() => match r {
                    Ok(ev) => {
                        if let Some(payload) = self.channel.payload(&ev).cloned() {
                            let item = (ev, payload);
                            // A muted event is withheld as it is taken, not
                            // after a hold-back.
                            let hold = self.channel.reorders() && item.0.reorderable() && !self.mutes(&item.0, sent);
                            let now = if hold { self.held.hold(item) } else { Some(item) };
                            if let Some((ev, payload)) = now {
                                self.deliver(&ev, payload, &mut sent).await?;
                            }
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(attempt = self.slot.attempt, missed, "mastodon subscriber lagged");
                        self.out.send(Piece::Abort { reset: false }).await?;
                        return Ok("lagged");
                    }
                    Err(RecvError::Closed) => return Err(Halt::ServerStop),
                },
                _ = tokio::time::sleep(idle) => {
                    if self.out.last_write.elapsed() >= keepalive {
                        self.out.frame(Bytes::from_static(b":thump\n\n")).await?;
                    }
                }
                _ = until(due) => {
                    if let Some((ev, payload)) = self.held.pop_due() {
                        self.deliver(&ev, payload, &mut sent).await?;
                    }
                }
                _ = wire::changed(&mut self.revoked) => {
                    if !self.shared.mastodon.token_ok(&self.token) {
                        // B.9: the body simply ends.
                        return Ok("revoked");
                    }
                }
                _ = wire::changed(&mut self.resets) => return Err(Halt::ResetAll),
                _ = self.out.tx.closed() => return Err(Halt::ClientClosed),
                _ = wire::stopped(&mut self.stop) => return Err(Halt::ServerStop),
            }
        }
    }

    /// Whether a script threshold (a close, an end, a silence) is reached.
    fn due(&self, sent: u64, silenced: bool) -> bool {
        let s = &self.script;
        let at = |n: Option<u64>| n.is_some_and(|n| sent >= n);
        at(s.close_after) || at(s.disconnect_after) || at(s.limit) || (!silenced && at(s.silence_after))
    }

    /// Whether `ev` is withheld: emitted while everything was muted, or
    /// this connection's `mute_after` is reached.
    fn mutes(&self, ev: &Event, sent: u64) -> bool {
        ev.muted || self.script.mute_after.is_some_and(|n| sent >= n)
    }

    /// Writes `ev` and counts it in `sent`, unless it is muted.
    async fn deliver(&mut self, ev: &Event, payload: Bytes, sent: &mut u64) -> Result<(), Halt> {
        if self.mutes(ev, *sent) {
            self.slot.withheld.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.write(ev, payload).await?;
        *sent += 1;
        Ok(())
    }

    /// One event block.
    async fn write(&mut self, ev: &Event, payload: Bytes) -> Result<(), Halt> {
        let mut block = BytesMut::with_capacity(payload.len() + ev.kind.len() + 16);
        block.extend_from_slice(b"event: ");
        block.extend_from_slice(ev.kind.as_bytes());
        block.extend_from_slice(b"\ndata: ");
        block.extend_from_slice(&payload);
        block.extend_from_slice(b"\n\n");
        self.out.frame(block.freeze()).await?;
        self.note(ev, &payload);
        Ok(())
    }

    fn note(&self, ev: &Event, payload: &Bytes) {
        self.slot.messages.fetch_add(1, Ordering::Relaxed);
        if self.shared.record_sent > 0 {
            self.shared.record(SentMessage {
                attempt: self.slot.attempt,
                kind: ev.kind,
                id: Some(ev.id.clone()),
                for_user: None,
                payload: payload.clone(),
            });
        }
    }
}

/// Events held back a random 0..=`max_ms` ms (B.9: on public and hashtag
/// channels `update` and `status.update` wait for a database check while
/// everything else goes out at once). At most `MAX_HELD` at a time; past
/// that, events go out at once.
pub(super) struct Holdback<T> {
    max_ms: u64,
    rng: fastrand::Rng,
    seq: u64,
    held: BTreeMap<(Instant, u64), T>,
}

/// Bound of `Holdback`.
const MAX_HELD: usize = 4096;

impl<T> Holdback<T> {
    pub(super) fn new(max_ms: u64, seed: u64) -> Holdback<T> {
        Holdback { max_ms, rng: fastrand::Rng::with_seed(seed), seq: 0, held: BTreeMap::new() }
    }

    /// Holds `item` for a random while, or gives it back to send now.
    pub(super) fn hold(&mut self, item: T) -> Option<T> {
        if self.max_ms == 0 || self.held.len() >= MAX_HELD {
            return Some(item);
        }
        let ms = self.rng.u64(0..=self.max_ms);
        if ms == 0 {
            return Some(item);
        }
        self.seq += 1;
        self.held.insert((Instant::now() + Duration::from_millis(ms), self.seq), item);
        None
    }

    /// When the next held item is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.held.keys().next().map(|(at, _)| *at)
    }

    /// The next held item if it is due.
    pub(super) fn pop_due(&mut self) -> Option<T> {
        let (at, _) = *self.held.keys().next()?;
        if at > Instant::now() {
            return None;
        }
        self.held.pop_first().map(|(_, item)| item)
    }

    /// Keeps only the held items `keep` accepts.
    pub(super) fn retain(&mut self, keep: impl Fn(&T) -> bool) {
        self.held.retain(|_, item| keep(item));
    }
}

/// Resolves at `due`; never without one.
pub(super) async fn until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// Mastodon's id order: length first, then lexical (B.8).
fn id_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// The REST token: `Authorization: Bearer` (OAuth's scheme is
/// case-insensitive) or `access_token`.
fn rest_token(req: &HttpRequest, params: &[(String, String)]) -> Option<String> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = value.trim().split_once(' ').unwrap_or((value, ""));
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string());
    }
    param(params, "access_token").map(str::to_string)
}

async fn public_timeline(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let params = query(&req);
    let scope = scope_of(&params);
    let media = truthy(param(&params, "only_media"));
    let tl = Timeline::Statuses(Box::new(move |a: &Audience| scope.admits(a.local) && (!media || a.media)));
    rest(&req, &shared, &params, false, tl)
}

async fn tag_timeline(req: HttpRequest, shared: web::Data<Shared>, path: web::Path<String>) -> HttpResponse {
    let params = query(&req);
    let scope = scope_of(&params);
    let media = truthy(param(&params, "only_media"));
    let tag = normalise_tag(&path.into_inner());
    let tl = Timeline::Statuses(Box::new(move |a: &Audience| {
        a.tags.contains(&tag) && scope.admits(a.local) && (!media || a.media)
    }));
    rest(&req, &shared, &params, false, tl)
}

async fn home_timeline(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let params = query(&req);
    rest(&req, &shared, &params, true, Timeline::Statuses(Box::new(|a: &Audience| a.home)))
}

async fn list_timeline(req: HttpRequest, shared: web::Data<Shared>, path: web::Path<String>) -> HttpResponse {
    let params = query(&req);
    let Some(list) = LISTS.iter().copied().find(|l| *l == path.as_str()) else {
        // Checked after auth and rate limit below would be more faithful;
        // an unknown list is answered like Mastodon's missing record.
        return match rest_auth(&req, &shared, &params, true) {
            Ok(headers) => {
                with_headers(HttpResponse::NotFound(), &headers).json(serde_json::json!({"error": "Record not found"}))
            }
            Err(resp) => *resp,
        };
    };
    rest(&req, &shared, &params, true, Timeline::Statuses(Box::new(move |a: &Audience| a.list == Some(list))))
}

async fn notifications(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let params = query(&req);
    rest(&req, &shared, &params, true, Timeline::Notifications)
}

pub(super) fn query(req: &HttpRequest) -> Vec<(String, String)> {
    form_urlencoded::parse(req.query_string().as_bytes()).into_owned().collect()
}

fn scope_of(params: &[(String, String)]) -> Scope {
    if truthy(param(params, "local")) {
        Scope::Local
    } else if truthy(param(params, "remote")) {
        Scope::Remote
    } else {
        Scope::All
    }
}

type Headers = Vec<(&'static str, String)>;

fn with_headers(mut builder: actix_web::HttpResponseBuilder, headers: &Headers) -> actix_web::HttpResponseBuilder {
    for (k, v) in headers {
        builder.insert_header((*k, v.clone()));
    }
    builder
}

/// Token check and rate limit; the rate-limit headers on success.
fn rest_auth(
    req: &HttpRequest,
    shared: &Shared,
    params: &[(String, String)],
    token_required: bool,
) -> Result<Headers, Box<HttpResponse>> {
    let m = &shared.mastodon;
    let key = match rest_token(req, params) {
        Some(t) if m.token_ok(&t) => t,
        Some(_) => return Err(Box::new(error_json(401, "The access token is invalid", None))),
        None if token_required => return Err(Box::new(error_json(401, "The access token is invalid", None))),
        None => "anonymous".to_string(),
    };
    let now = Instant::now();
    let (start, used) = {
        let mut limits = lock(&m.limits);
        let entry = limits.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= RATE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        *entry
    };
    let left = RATE_WINDOW.saturating_sub(now.duration_since(start));
    let reset = chrono::Utc::now() + chrono::Duration::milliseconds(i64::try_from(left.as_millis()).unwrap_or(0));
    let headers = vec![
        ("X-RateLimit-Limit", RATE_LIMIT.to_string()),
        ("X-RateLimit-Remaining", RATE_LIMIT.saturating_sub(used).to_string()),
        ("X-RateLimit-Reset", reset.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()),
    ];
    if used > RATE_LIMIT {
        return Err(Box::new(
            with_headers(HttpResponse::TooManyRequests(), &headers)
                .json(serde_json::json!({"error": "Too many requests"})),
        ));
    }
    Ok(headers)
}

/// One REST page (B.8): newest first; `max_id` bounds from above,
/// `since_id` and `min_id` from below; with `min_id` the page is the one
/// immediately newer than it. Link: `next` = older, `prev` = newer.
fn rest(
    req: &HttpRequest,
    shared: &Shared,
    params: &[(String, String)],
    token_required: bool,
    timeline: Timeline,
) -> HttpResponse {
    let headers = match rest_auth(req, shared, params, token_required) {
        Ok(h) => h,
        Err(resp) => return *resp,
    };
    let (default_limit, max_limit) = match timeline {
        Timeline::Statuses(_) => (20, 40),
        Timeline::Notifications => (40, 80),
    };
    let limit = param(params, "limit").and_then(|l| l.trim().parse::<usize>().ok()).unwrap_or(default_limit);
    let limit = limit.clamp(1, max_limit);
    let max_id = param(params, "max_id").filter(|s| !s.is_empty());
    let since_id = param(params, "since_id").filter(|s| !s.is_empty());
    let min_id = param(params, "min_id").filter(|s| !s.is_empty());
    let in_range = |id: &str| {
        max_id.map_or(true, |m| id_cmp(id, m).is_lt())
            && since_id.map_or(true, |s| id_cmp(id, s).is_gt())
            && min_id.map_or(true, |s| id_cmp(id, s).is_gt())
    };
    // (id, json), newest first.
    let page = shared.mastodon.page(&timeline, in_range, limit, min_id.is_some());
    let mut body = String::with_capacity(page.iter().map(|(_, j)| j.len() + 1).sum::<usize>() + 2);
    body.push('[');
    for (i, (_, json)) in page.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(json);
    }
    body.push(']');
    let mut resp = with_headers(HttpResponse::Ok(), &headers);
    if let (Some((newest, _)), Some((oldest, _))) = (page.first(), page.last()) {
        let base = format!("http://{}{}", req.connection_info().host(), req.path());
        let keep: Vec<&(String, String)> = params
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "max_id" | "min_id" | "since_id" | "access_token" | "limit"))
            .collect();
        let link = |key: &str, id: &str| {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("limit", &limit.to_string());
            for (k, v) in &keep {
                q.append_pair(k, v);
            }
            q.append_pair(key, id);
            format!("{base}?{}", q.finish())
        };
        resp.insert_header((
            header::LINK,
            format!("<{}>; rel=\"next\", <{}>; rel=\"prev\"", link("max_id", oldest), link("min_id", newest)),
        ));
    }
    resp.content_type("application/json; charset=utf-8").body(body)
}

#[cfg(test)]
#[path = "mastodon_tests.rs"]
mod tests;
