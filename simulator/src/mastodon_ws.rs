//! Mastodon's WebSocket streaming on the simulator (protocols.md B.4, B.9)
//! and instance discovery (B.1).
//!
//! A request with `Upgrade: websocket` to `/api/v1/streaming` or any path
//! under it is upgraded (a plain GET keeps the SSE behaviour of `mastodon`).
//! The token is checked like the real server's: `Authorization: Bearer`,
//! else `access_token`, else the raw `Sec-WebSocket-Protocol` header (then
//! echoed); a refusal is a plain HTTP response with the reason in
//! `X-Error-Message`. One task per connection reads the client's frames
//! (subscribe, unsubscribe, Ping, Pong, Close; a binary frame closes with
//! 1003), forwards the events of the shared broadcast channel once per
//! matching subscription, pings every `ws_ping_ms` and drops a client that
//! did not answer the previous Ping. The attempt script applies as on SSE:
//! `status`, `close_after` (+ `reset`: the TCP connection is dropped, no
//! Close frame), `disconnect_after` (a Close frame with no code, like a
//! revoked token's `kill`), `limit` (Close 1000), `silence_after`/
//! `silence_ms` (no events, no pings) and `mute_after` (no more events,
//! while pings and pongs go on). `split` does not apply.
//! `SimHandle::mastodon_mute_all` mutes it as it mutes SSE (`mastodon`);
//! `SimHandle::reset_all` drops it with an RST, no Close frame. After a
//! Close frame of its own the server waits up to `CLOSE_WAIT` for the
//! client's, then closes the TCP connection (`ws_conn`).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::guard::{self, GuardContext};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode};
use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio::time::MissedTickBehavior;

use super::handle::SimHandle;
use super::mastodon::{self, Holdback, Subscription};
use super::mastodon_state::{normalise_tag, Channel, Event, Scope, LISTS, LOCAL_DOMAIN};
use super::mastodon_ws_log::MastodonWsInfo;
use super::records::{lock, visible_params, ConnSlot, SentMessage};
use super::scenario::AttemptScript;
use super::shared::Shared;
use super::wire::{self, ConnFd};
use super::ws_conn::{reset_all, server_stop, End, WsLink, GONE};

/// The Mastodon version the instance endpoints announce.
const VERSION: &str = "4.3.0";

/// Largest client message (also when sent in continuation frames).
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

impl SimHandle {
    /// Every Mastodon WebSocket connection opened (the most recent
    /// `MAX_MASTODON_WS_RECORDS`), in opening order. Refused upgrades are
    /// only in `connections()`.
    pub fn mastodon_ws_connections(&self) -> Vec<MastodonWsInfo> {
        self.shared.mastodon.ws_log.snapshot()
    }
}

/// Registers the WebSocket upgrade (before `mastodon::configure`, whose
/// routes take the same paths without the upgrade) and instance discovery.
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource(["/api/v1/streaming", "/api/v1/streaming/{tail:.*}"])
            .guard(guard::fn_guard(wants_websocket))
            .route(web::get().to(upgrade)),
    )
    .service(web::resource("/api/v2/instance").route(web::get().to(instance_v2)))
    .service(web::resource("/api/v1/instance").route(web::get().to(instance_v1)));
}

fn wants_websocket(ctx: &GuardContext<'_>) -> bool {
    ctx.head()
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("websocket")))
}

/// `GET /api/v2/instance` (B.1): the streaming base URL is this simulator.
async fn instance_v2(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "domain": LOCAL_DOMAIN,
        "version": VERSION,
        "configuration": { "urls": { "streaming": format!("ws://{}", shared.addr) } },
    }))
}

/// `GET /api/v1/instance` (B.1, older servers).
async fn instance_v1(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "uri": LOCAL_DOMAIN,
        "version": VERSION,
        "urls": { "streaming_api": format!("ws://{}", shared.addr) },
    }))
}

/// The token as the streaming server looks for it (B.2, B.9): the
/// `Authorization` header (`Bearer ` stripped, case-sensitive), else
/// `access_token`, else the whole `Sec-WebSocket-Protocol` header.
fn ws_token(req: &HttpRequest, params: &[(String, String)]) -> Option<String> {
    let header_text = |name| {
        req.headers()
            .get(name)
            .map(|v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if let Some(value) = header_text(header::AUTHORIZATION) {
        return Some(value.strip_prefix("Bearer ").map(str::to_string).unwrap_or(value));
    }
    mastodon::param(params, "access_token")
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .or_else(|| header_text(header::SEC_WEBSOCKET_PROTOCOL))
}

/// A refused upgrade (B.4, B.9): plain HTTP, empty body, the reason in a
/// header, and the connection closed.
fn refusal(status: StatusCode, message: &str, retry_after: Option<u64>) -> HttpResponse {
    let mut resp = HttpResponse::build(status);
    resp.force_close();
    if let Ok(value) = HeaderValue::from_str(message) {
        resp.insert_header(("X-Error-Message", value));
    }
    if let Some(s) = retry_after {
        resp.insert_header((header::RETRY_AFTER, s.to_string()));
    }
    resp.finish()
}

/// `GET /api/v1/streaming[/...]` with `Upgrade: websocket`.
async fn upgrade(req: HttpRequest, body: web::Payload, shared: web::Data<Shared>) -> HttpResponse {
    let opened_at = Instant::now();
    let params = mastodon::query(&req);
    let visible = visible_params(&params, |k| k == "access_token");
    let token = ws_token(&req, &params);
    // Before the check, so a revocation right after it is still seen.
    let revoked = shared.mastodon.revocations();
    let auth = shared.mastodon.check_token(token.as_deref());
    let (attempt, script) = shared.next_attempt();
    let log = |status: u16, auth_ok: bool| ConnSlot::for_request(&req, attempt, &visible, auth_ok, status, opened_at);
    if let Err(message) = auth {
        shared.log_refused(log(401, false)).finish("status");
        return refusal(StatusCode::UNAUTHORIZED, message, None);
    }
    if let Some(status) = script.status.filter(|s| !matches!(s, 101 | 200)) {
        shared.log_refused(log(status, true)).finish("status");
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return refusal(code, mastodon::scripted_message(status), script.retry_after_s);
    }
    let (mut resp, session, messages) = match actix_ws::handle(&req, body) {
        Ok(parts) => parts,
        Err(e) => {
            let resp = e.error_response();
            shared.log_refused(log(resp.status().as_u16(), true)).finish("status");
            return resp;
        }
    };
    // Browsers fail a connection whose offered protocol is not echoed.
    let protocol = req
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|p| HeaderValue::from_str(p.trim()).ok());
    if let Some(p) = protocol {
        resp.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    let (slot, resets) = shared.open_stream(log(101, true));
    let info = shared.mastodon.ws_log.register(attempt);
    let events = shared.mastodon.events.subscribe();
    let shared = shared.into_inner();
    let subscription = Subscription::new(&shared);
    let fd = req.conn_data::<ConnFd>().map(|c| c.0);
    let seed = attempt.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x3EB5;
    let messages =
        messages.max_frame_size(MAX_CLIENT_MESSAGE).aggregate_continuations().max_continuation_size(MAX_CLIENT_MESSAGE);
    let mut ws = WsLink::new(session, messages, shared.stop.subscribe(), resets);
    let resp =
        resp.map_body(|_, inner| ws.body("websocket", inner, fd, Arc::clone(&shared.upgraded))).map_into_boxed_body();
    let conn = WsConn {
        held: Holdback::new(shared.mastodon.update_delay_ms, seed),
        shared,
        slot,
        info,
        script,
        token: token.unwrap_or_default(),
        ws,
        events,
        revoked,
        subs: Vec::new(),
        sent: 0,
        awaiting_pong: false,
        _subscription: subscription,
    };
    actix_rt::spawn(conn.run(SubRequest::from_query(&params)));
    resp
}

/// A subscribe or unsubscribe request: from the URL or a client message.
#[derive(Debug, Default)]
struct SubRequest {
    stream: Option<String>,
    tag: Option<String>,
    list: Option<String>,
    only_media: bool,
}

impl SubRequest {
    /// `?stream=<name>` (+ `tag`, `list`, `only_media`): a single-purpose
    /// connection.
    fn from_query(params: &[(String, String)]) -> Option<SubRequest> {
        let stream = mastodon::param(params, "stream").filter(|s| !s.is_empty())?;
        Some(SubRequest {
            stream: Some(stream.to_string()),
            tag: mastodon::param(params, "tag").map(str::to_string),
            list: mastodon::param(params, "list").map(str::to_string),
            only_media: mastodon::truthy(mastodon::param(params, "only_media")),
        })
    }

    fn from_message(msg: &Map<String, Value>) -> SubRequest {
        let text = |key: &str| match msg.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        SubRequest {
            stream: text("stream"),
            tag: text("tag"),
            list: text("list"),
            only_media: match msg.get("only_media") {
                Some(Value::Bool(b)) => *b,
                Some(Value::String(s)) => mastodon::truthy(Some(s)),
                _ => false,
            },
        }
    }
}

/// One subscription of a connection.
#[derive(Debug)]
struct Sub {
    /// The normalised key (`MastodonWsInfo::subscriptions`).
    key: String,
    /// The `stream` array its events carry: the hashtag as first
    /// subscribed (B.9).
    stream: Vec<String>,
    channel: Channel,
}

/// Resolves a WebSocket stream name (B.3's WS column), or the error frame's
/// status and message.
fn resolve(r: &SubRequest) -> Result<Sub, (u16, &'static str)> {
    let name = r.stream.as_deref().unwrap_or("");
    let simple = |name: &str, channel: Channel| Sub { key: name.to_string(), stream: vec![name.to_string()], channel };
    let public = |base: &str, scope: Scope, media: bool| {
        let name = if media { format!("{base}:media") } else { base.to_string() };
        Sub { key: name.clone(), stream: vec![name], channel: Channel::Public { scope, media } }
    };
    let media = r.only_media;
    Ok(match name {
        "user" => simple(name, Channel::User),
        "user:notification" => simple(name, Channel::UserNotification),
        "public" => public("public", Scope::All, media),
        "public:media" => public("public", Scope::All, true),
        "public:local" => public("public:local", Scope::Local, media),
        "public:local:media" => public("public:local", Scope::Local, true),
        "public:remote" => public("public:remote", Scope::Remote, media),
        "public:remote:media" => public("public:remote", Scope::Remote, true),
        "hashtag" | "hashtag:local" => {
            let raw = r.tag.clone().unwrap_or_default();
            let tag = normalise_tag(&raw);
            if tag.is_empty() {
                return Err((400, "Missing tag name parameter"));
            }
            Sub {
                key: format!("{name}:{tag}"),
                stream: vec![name.to_string(), raw],
                channel: Channel::Hashtag { tag, local: name == "hashtag:local" },
            }
        }
        "list" => match r.list.as_deref() {
            None | Some("") => return Err((400, "Missing list name parameter")),
            Some(l) if LISTS.contains(&l) => Sub {
                key: format!("list:{l}"),
                stream: vec!["list".to_string(), l.to_string()],
                channel: Channel::List(l.to_string()),
            },
            Some(_) => return Err((401, "Not authorized to stream this list")),
        },
        "direct" => simple(name, Channel::Direct),
        _ => return Err((400, "Unknown stream type")),
    })
}

/// One event frame (B.4): `payload` is the SSE data line as a JSON string
/// (so a bare id for `delete` and `announcement.delete`); `filters_changed`
/// has no payload key.
fn event_frame(stream: &[String], kind: &str, payload: &[u8]) -> String {
    let mut frame = String::with_capacity(payload.len() + payload.len() / 8 + 64);
    frame.push_str("{\"stream\":");
    frame.push_str(&serde_json::to_string(stream).unwrap_or_else(|_| "[]".to_string()));
    frame.push_str(",\"event\":");
    frame.push_str(&json_string(kind));
    if kind != "filters_changed" {
        frame.push_str(",\"payload\":");
        frame.push_str(&json_string(&String::from_utf8_lossy(payload)));
    }
    frame.push('}');
    frame
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// An error frame (B.4); the failed unsubscribe has no status.
fn error_frame(message: &str, status: Option<u16>) -> String {
    match status {
        Some(s) => serde_json::json!({ "error": message, "status": s }),
        None => serde_json::json!({ "error": message }),
    }
    .to_string()
}

/// An event frame ready to go, for the subscription `key`.
struct Out {
    key: String,
    event: Arc<Event>,
    payload: Bytes,
    frame: String,
}

/// Serves one WebSocket.
struct WsConn {
    shared: Arc<Shared>,
    slot: Arc<ConnSlot>,
    info: Arc<Mutex<MastodonWsInfo>>,
    script: AttemptScript,
    /// The token it was opened with, rechecked at every revocation.
    token: String,
    /// The client's session and messages, and the stop signal.
    ws: WsLink,
    events: broadcast::Receiver<Arc<Event>>,
    revoked: watch::Receiver<u64>,
    subs: Vec<Sub>,
    /// Updates held back on public and hashtag subscriptions (B.9).
    held: Holdback<Out>,
    /// Event frames sent (what the script counts).
    sent: u64,
    awaiting_pong: bool,
    _subscription: Subscription,
}

impl WsConn {
    async fn run(mut self, initial: Option<SubRequest>) {
        let end = self.serve(initial).await;
        let why = end.why();
        self.slot.finish(why);
        self.shared.close(&self.slot);
        lock(&self.info).open = false;
        tracing::debug!(
            attempt = self.slot.attempt,
            end = why,
            messages = self.slot.messages.load(Ordering::Relaxed),
            "simulated mastodon websocket ended"
        );
        self.ws.finish(end).await;
    }

    async fn serve(&mut self, initial: Option<SubRequest>) -> End {
        if let Some(r) = initial {
            if let Err(end) = self.subscribe(&r).await {
                return end;
            }
        }
        let every = self.shared.mastodon.ws_ping;
        let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut silenced = false;
        loop {
            if let Some(end) = self.scripted_end() {
                return end;
            }
            if !silenced && self.script.silence_after.is_some_and(|n| self.sent >= n) {
                silenced = true;
                let buffered = match self.ws.silence(Duration::from_millis(self.script.silence_ms)).await {
                    Ok(b) => b,
                    Err(end) => return end,
                };
                // No ping went out meanwhile, so none is owed.
                pings.reset();
                self.awaiting_pong = false;
                for m in buffered {
                    if let Err(end) = self.on_message(m).await {
                        return end;
                    }
                }
                continue;
            }
            let due = self.held.next_due();
            let step = tokio::select! {
                m = self.ws.messages.recv() => match m {
                    Some(Ok(m)) => self.on_message(m).await,
                    Some(Err(e)) => {
                        tracing::debug!(attempt = self.slot.attempt, error = %e, "websocket protocol error");
                        Err(GONE)
                    }
                    None => Err(GONE),
                },
                r = self.events.recv() => match r {
                    Ok(ev) => self.on_event(ev).await,
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(attempt = self.slot.attempt, missed, "mastodon websocket lagged");
                        Err(End::Abort { reset: false, why: "lagged" })
                    }
                    Err(RecvError::Closed) => Err(End::Gone("server stop")),
                },
                _ = pings.tick() => {
                    if self.awaiting_pong {
                        // B.9: dropped at the next tick, the client sees 1006.
                        Err(End::Abort { reset: false, why: "ping timeout" })
                    } else {
                        self.awaiting_pong = true;
                        or_stop(self.ws.session.ping(b""), &mut self.ws.stop).await
                    }
                }
                _ = mastodon::until(due) => match self.held.pop_due() {
                    Some(out) => self.deliver(out).await,
                    None => Ok(()),
                },
                _ = wire::changed(&mut self.revoked) => {
                    if self.shared.mastodon.token_ok(&self.token) {
                        Ok(())
                    } else {
                        // B.9: closed with no status code.
                        Err(End::Close { reason: None, why: "revoked" })
                    }
                }
                _ = wire::changed(&mut self.ws.resets) => Err(reset_all()),
                _ = wire::stopped(&mut self.ws.stop) => Err(server_stop()),
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    fn scripted_end(&self) -> Option<End> {
        let (s, n) = (&self.script, self.sent);
        if s.close_after.is_some_and(|c| n >= c) {
            return Some(End::Abort { reset: s.reset, why: if s.reset { "reset" } else { "close_after" } });
        }
        if s.disconnect_after.is_some_and(|c| n >= c) {
            // Like a revoked token's `kill`: a Close frame without a code.
            return Some(End::Close { reason: None, why: "disconnect" });
        }
        if s.limit.is_some_and(|c| n >= c) {
            return Some(End::Close { reason: Some(CloseCode::Normal.into()), why: "limit" });
        }
        None
    }

    async fn on_message(&mut self, m: AggregatedMessage) -> Result<(), End> {
        match m {
            AggregatedMessage::Text(text) => self.on_text(&text).await,
            // B.4: text frames only.
            AggregatedMessage::Binary(_) => {
                Err(End::Close { reason: Some(CloseCode::Unsupported.into()), why: "binary" })
            }
            AggregatedMessage::Ping(bytes) => or_stop(self.ws.session.pong(&bytes), &mut self.ws.stop).await,
            AggregatedMessage::Pong(_) => {
                self.awaiting_pong = false;
                lock(&self.info).pongs += 1;
                Ok(())
            }
            AggregatedMessage::Close(reason) => Err(End::Close { reason, why: "client closed" }),
        }
    }

    /// A client message; invalid JSON and unknown types are ignored (B.4).
    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        let Ok(Value::Object(msg)) = serde_json::from_str::<Value>(text) else {
            return Ok(());
        };
        match msg.get("type").and_then(Value::as_str) {
            Some("subscribe") => {
                lock(&self.info).subscribes += 1;
                self.subscribe(&SubRequest::from_message(&msg)).await
            }
            Some("unsubscribe") => {
                lock(&self.info).unsubscribes += 1;
                self.unsubscribe(&SubRequest::from_message(&msg)).await
            }
            _ => Ok(()),
        }
    }

    /// Subscribing twice to one channel is a no-op (B.4): the first
    /// spelling of a hashtag stays in the echo.
    async fn subscribe(&mut self, r: &SubRequest) -> Result<(), End> {
        match resolve(r) {
            Ok(sub) => {
                if !self.subs.iter().any(|s| s.key == sub.key) {
                    self.subs.push(sub);
                    self.publish_subs();
                }
                Ok(())
            }
            Err((status, message)) => self.text(error_frame(message, Some(status))).await,
        }
    }

    async fn unsubscribe(&mut self, r: &SubRequest) -> Result<(), End> {
        let key = resolve(r).ok().map(|s| s.key);
        match key.and_then(|k| self.subs.iter().position(|s| s.key == k)) {
            Some(i) => {
                let gone = self.subs.remove(i);
                self.held.retain(|out| out.key != gone.key);
                self.publish_subs();
                Ok(())
            }
            None => self.text(error_frame("Error unsubscribing from channel", None)).await,
        }
    }

    fn publish_subs(&self) {
        lock(&self.info).subscriptions = self.subs.iter().map(|s| s.key.clone()).collect();
    }

    /// Once per matching subscription, each with its own `stream` (as the
    /// real server does).
    async fn on_event(&mut self, ev: Arc<Event>) -> Result<(), End> {
        let reorderable = ev.reorderable();
        let outs: Vec<(bool, Out)> = self
            .subs
            .iter()
            .filter_map(|sub| {
                let payload = sub.channel.payload(&ev)?;
                let frame = event_frame(&sub.stream, ev.kind, payload);
                let out = Out { key: sub.key.clone(), event: Arc::clone(&ev), payload: payload.clone(), frame };
                Some((reorderable && sub.channel.reorders(), out))
            })
            .collect();
        for (hold, out) in outs {
            if self.scripted_end().is_some() {
                break;
            }
            // A muted event is withheld as it is taken, not after a hold-back.
            let now = if hold && !self.mutes(&out.event) { self.held.hold(out) } else { Some(out) };
            if let Some(out) = now {
                self.deliver(out).await?;
            }
        }
        Ok(())
    }

    /// Whether `ev` is withheld: emitted while everything was muted, or
    /// this connection's `mute_after` is reached.
    fn mutes(&self, ev: &Event) -> bool {
        ev.muted || self.script.mute_after.is_some_and(|n| self.sent >= n)
    }

    /// Writes `out` unless it is muted.
    async fn deliver(&mut self, out: Out) -> Result<(), End> {
        if self.mutes(&out.event) {
            self.slot.withheld.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.write(out).await
    }

    async fn write(&mut self, out: Out) -> Result<(), End> {
        self.text(out.frame).await?;
        self.sent += 1;
        self.slot.messages.fetch_add(1, Ordering::Relaxed);
        if self.shared.record_sent > 0 {
            self.shared.record(SentMessage {
                attempt: self.slot.attempt,
                kind: out.event.kind,
                id: Some(out.event.id.clone()),
                for_user: None,
                payload: out.payload,
            });
        }
        Ok(())
    }

    async fn text(&mut self, frame: String) -> Result<(), End> {
        or_stop(self.ws.session.text(frame), &mut self.ws.stop).await
    }
}

/// A send to the client; a client that does not read (the frames queue
/// up) must not keep a stopping server waiting.
async fn or_stop(
    send: impl Future<Output = Result<(), actix_ws::Closed>>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), End> {
    tokio::select! {
        biased;
        sent = send => sent.map_err(|_| GONE),
        _ = wire::stopped(stop) => Err(End::Abort { reset: false, why: "server stop" }),
    }
}

#[cfg(test)]
#[path = "mastodon_ws_tests.rs"]
mod tests;
