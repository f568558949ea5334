//! Twitter v1.1 streaming endpoints (protocols.md A.1-A.8): filter, sample,
//! user and site streams plus the site control stream. Each accepted stream
//! gets one producer task that paces, scripts and frames its messages, or,
//! for a `broadcast` filter/sample stream, forwards the shared generator's;
//! `SimHandle::reset_all` has every producer end its body with an RST.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{mpsc, watch};

use super::config::SimCredentials;
use super::fanout::{self, Feed, Frame};
use super::oauth::{self, AuthFailure, SignedRequest};
use super::pace::Pacer;
use super::payloads::{Generator, GeneratorOptions, Rendered, StreamKind};
use super::records::{lock, visible_params, ConnSlot, ControlCall, Follows, SentMessage};
use super::scenario::AttemptScript;
use super::shared::Shared;
use super::site::{dedup, ControlRefusal, SiteConn};
use super::wire::{self, BodyStream, ConnFd, FrameWriter, Halt, CHANNEL_DEPTH};

/// Documented filter limits (protocols.md A.2) and hbc's site-stream limit.
const MAX_TRACK: usize = 400;
const MAX_TRACK_BYTES: usize = 60;
const MAX_FOLLOW: usize = 5000;
const MAX_BOXES: usize = 25;
const MAX_SITE_FOLLOW: usize = 100;
const MAX_CONTROL_IDS: usize = 100;

/// Registers the Twitter routes.
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(4 * 1024 * 1024))
        .service(web::resource("/1.1/statuses/filter.json").route(web::post().to(filter)).route(web::get().to(filter)))
        .service(web::resource("/1.1/statuses/sample.json").route(web::get().to(sample)))
        .service(web::resource("/1.1/user.json").route(web::get().to(user)))
        .service(web::resource("/1.1/site.json").route(web::get().to(site)))
        .service(web::resource("/1.1/site/c/{stream_id}/info.json").route(web::get().to(control_info)))
        .service(web::resource("/1.1/site/c/{stream_id}/add_user.json").route(web::post().to(control_add)))
        .service(web::resource("/1.1/site/c/{stream_id}/remove_user.json").route(web::post().to(control_remove)))
        .service(
            web::resource("/1.1/site/c/{stream_id}/friends/ids.json")
                .route(web::post().to(control_friends))
                .route(web::get().to(control_friends)),
        );
}

/// Twitter's 404 for any other path.
pub(crate) async fn not_found() -> HttpResponse {
    status_response(404, None)
}

async fn filter(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    open_stream(req, &body, shared, StreamKind::Filter)
}

async fn sample(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    open_stream(req, &body, shared, StreamKind::Sample)
}

async fn user(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    open_stream(req, &body, shared, StreamKind::User)
}

async fn site(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    open_stream(req, &body, shared, StreamKind::Site)
}

/// Decoded query parameters, plus the form body when the request says it is
/// one (a body without that content type is not signed, so not read).
fn request_params(req: &HttpRequest, body: &[u8]) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> =
        form_urlencoded::parse(req.query_string().as_bytes()).into_owned().collect();
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    if is_form {
        params.extend(form_urlencoded::parse(body).into_owned());
    }
    params
}

/// Verifies the request's OAuth signature over `http://<Host><path>`.
fn check_auth(
    req: &HttpRequest,
    params: &[(String, String)],
    credentials: &[SimCredentials],
) -> Result<usize, AuthFailure> {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).ok_or(AuthFailure::Malformed("host"))?;
    let host_ok = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b));
    if !host_ok {
        return Err(AuthFailure::Malformed("host"));
    }
    let base_url = format!("http://{}{}", host, req.path());
    let signed = SignedRequest {
        method: req.method().as_str(),
        base_url: &base_url,
        authorization: req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()),
        params,
    };
    oauth::verify(&signed, credentials)
}

/// The parameters a stream needs, validated like Twitter did.
struct StreamParams {
    delimited: bool,
    stall_warnings: bool,
    stringify_friend_ids: bool,
    follow: Vec<u64>,
    with: String,
    replies: String,
}

fn first<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Every comma-separated item of every occurrence of `key`.
fn items<'a>(params: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    params
        .iter()
        .filter(|(k, _)| k == key)
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

type Refusal = (u16, String);

fn parse_ids(list: &[&str], key: &str) -> Result<Vec<u64>, Refusal> {
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            v.parse::<u64>().map_err(|_| (406, format!("Parameter {key} item index {i} is not a valid user id: {v}")))
        })
        .collect()
}

impl StreamParams {
    fn parse(kind: StreamKind, params: &[(String, String)]) -> Result<StreamParams, Refusal> {
        if first(params, "count").is_some() {
            return Err((416, "Parameter count not allowed in role statuses".into()));
        }
        if let Some(level) = first(params, "filter_level") {
            if !matches!(level, "none" | "low" | "medium") {
                return Err((406, format!("Parameter filter_level has an invalid value: {level}")));
            }
        }
        let delimited = match first(params, "delimited") {
            None => false,
            Some("length") => true,
            Some(other) => return Err((406, format!("Parameter delimited has an invalid value: {other}"))),
        };
        let track = items(params, "track");
        if track.len() > MAX_TRACK {
            return Err((413, format!("Parameter track has more than {MAX_TRACK} items")));
        }
        if let Some((i, t)) = track.iter().enumerate().find(|(_, t)| t.len() > MAX_TRACK_BYTES) {
            return Err((406, format!("Parameter track item index {i} too long: {t}")));
        }
        let locations = items(params, "locations");
        if locations.len() % 4 != 0 || locations.iter().any(|n| n.parse::<f64>().is_err()) {
            return Err((406, "Parameter locations must be sets of 4 numbers: sw_lon,sw_lat,ne_lon,ne_lat".into()));
        }
        if locations.len() / 4 > MAX_BOXES {
            return Err((413, format!("Parameter locations has more than {MAX_BOXES} boxes")));
        }
        let follow = parse_ids(&items(params, "follow"), "follow")?;
        match kind {
            StreamKind::Filter => {
                if follow.len() > MAX_FOLLOW {
                    return Err((413, format!("Parameter follow has more than {MAX_FOLLOW} items")));
                }
                if follow.is_empty() && track.is_empty() && locations.is_empty() {
                    return Err((
                        406,
                        "No filter parameters found. Expect at least one parameter: follow track locations".into(),
                    ));
                }
            }
            StreamKind::Site => {
                if follow.is_empty() {
                    return Err((406, "Parameter follow is required for site streams".into()));
                }
                if follow.len() > MAX_SITE_FOLLOW {
                    return Err((413, format!("Parameter follow has more than {MAX_SITE_FOLLOW} items")));
                }
            }
            StreamKind::Sample | StreamKind::User => {}
        }
        let default_with = if kind == StreamKind::Site { "user" } else { "followings" };
        Ok(StreamParams {
            delimited,
            stall_warnings: first(params, "stall_warnings") == Some("true"),
            stringify_friend_ids: first(params, "stringify_friend_ids") == Some("true"),
            follow,
            with: first(params, "with").unwrap_or(default_with).to_string(),
            replies: first(params, "replies").unwrap_or("none").to_string(),
        })
    }
}

fn open_stream(req: HttpRequest, body: &[u8], shared: web::Data<Shared>, kind: StreamKind) -> HttpResponse {
    let opened_at = Instant::now();
    let params = request_params(&req, body);
    let auth = check_auth(&req, &params, &shared.credentials);
    let (attempt, script) = shared.next_attempt();
    let visible = visible_params(&params, |k| k.starts_with("oauth_"));
    let log = |status: u16, auth_ok: bool| ConnSlot::for_request(&req, attempt, &visible, auth_ok, status, opened_at);

    if let Err(why) = auth {
        tracing::debug!(attempt, path = req.path(), reason = ?why, "simulator refused a signature");
        shared.log_refused(log(401, false)).finish("status");
        return status_response(401, script.retry_after_s);
    }
    if let Some(status) = script.status.filter(|s| *s != 200) {
        shared.log_refused(log(status, true)).finish("status");
        return status_response(status, script.retry_after_s);
    }
    let sp = match StreamParams::parse(kind, &params) {
        Ok(sp) => sp,
        Err((status, text)) => {
            shared.log_refused(log(status, true)).finish("status");
            return text_response(status, text);
        }
    };

    let mut slot = log(200, true);
    // protocols.md A.7: `1_1_` and 32 hex digits.
    let stream_id =
        (kind == StreamKind::Site).then(|| format!("1_1_{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)));
    let carried = Arc::new(Mutex::new(dedup(&sp.follow)));
    slot.follows = match kind {
        StreamKind::Site => Follows::Live(Arc::clone(&carried)),
        StreamKind::Filter => Follows::Request,
        StreamKind::Sample | StreamKind::User => Follows::None,
    };
    slot.control_uri = stream_id.as_ref().map(|id| format!("/1.1/site/c/{id}"));
    let (slot, resets) = shared.open_stream(slot);
    let site = stream_id.map(|stream_id| {
        let conn = Arc::new(SiteConn::new(
            stream_id,
            sp.delimited,
            sp.with.clone(),
            sp.replies.clone(),
            Arc::clone(&slot),
            carried,
        ));
        lock(&shared.sites).insert(conn.stream_id.clone(), Arc::clone(&conn));
        conn
    });
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let fd = req.conn_data::<ConnFd>().map(|c| c.0);
    // Seeded by attempt: a failing client test replays the same mix and cuts.
    let seed = attempt.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED;
    let generator = Generator::new(GeneratorOptions {
        stream: kind,
        seed,
        stall_warnings: sp.stall_warnings,
        stringify_friend_ids: sp.stringify_friend_ids,
        site_users: sp.follow.clone(),
        control_uri: slot.control_uri.clone(),
    });
    let shared = shared.into_inner();
    let broadcast = script.broadcast && matches!(kind, StreamKind::Filter | StreamKind::Sample);
    let feed = if broadcast {
        fanout::subscribe(&shared.hub, attempt, &script, shared.rate, shared.stop.subscribe())
    } else {
        None
    };
    let producer = Producer {
        writer: FrameWriter::new(tx, shared.stop.subscribe(), sp.delimited, script.split, seed),
        stop: shared.stop.subscribe(),
        resets,
        shared,
        slot,
        script,
        gen: generator,
        site,
        broadcast,
        feed,
    };
    actix_rt::spawn(producer.run());
    HttpResponse::Ok().content_type("application/json").streaming(BodyStream::new(rx, fd))
}

/// Feeds one stream: paces, applies the attempt's script, records.
struct Producer {
    shared: Arc<Shared>,
    slot: Arc<ConnSlot>,
    script: AttemptScript,
    /// Renders this connection's messages; on a broadcast stream only its
    /// junk and disconnect messages.
    gen: Generator,
    writer: FrameWriter,
    stop: watch::Receiver<bool>,
    /// `SimHandle::reset_all`'s epoch, seen when the stream opened.
    resets: watch::Receiver<u64>,
    site: Option<Arc<SiteConn>>,
    /// Forwards the broadcast generator instead of using `gen`.
    broadcast: bool,
    /// The broadcast subscription (None on a broadcast stream: the generator
    /// already reached its limit). Taken by `forward`, so it is dropped the
    /// moment the stream decides to end.
    feed: Option<Feed>,
}

/// What the script says before the next message.
enum Step {
    /// Send it.
    Go,
    /// A scripted silence just ended: restart pacing, then send it.
    Resumed,
    /// The stream ends, for this reason.
    End(&'static str),
}

/// Whether message number `n` of a broadcast stream is this connection's
/// own junk (inserted before the next broadcast message, never replacing it).
fn is_junk(n: u64, script: &AttemptScript) -> bool {
    script.oversized_at.contains(&n) || script.malformed_every.is_some_and(|every| every > 0 && n % every == 0)
}

impl Producer {
    async fn run(mut self) {
        let end = match self.stream().await {
            Ok(end) => end,
            // Behind whatever is still queued for the body: the RST has to
            // go through the same channel.
            Err(Halt::ResetAll) => self.writer.abort(true).await.map_or_else(Halt::why, |()| "reset_all"),
            Err(halt) => halt.why(),
        };
        self.slot.finish(end);
        tracing::debug!(
            attempt = self.slot.attempt,
            end,
            messages = self.slot.messages.load(Ordering::Relaxed),
            "simulated stream ended"
        );
        // Drop unregisters the stream.
    }

    async fn stream(&mut self) -> Result<&'static str, Halt> {
        for track in self.script.limit_first.clone() {
            let r = self.gen.limit_notice(track);
            self.note(&r);
            self.writer.message(&self.gen.buf).await?;
        }
        if !self.broadcast {
            return self.generate().await;
        }
        match self.feed.take() {
            Some(feed) => self.forward(feed).await,
            None => {
                // The generator reached its limit before this connection.
                self.writer.flush().await?;
                Ok("limit")
            }
        }
    }

    /// The script's ends and silence, checked before message `sent + 1`.
    async fn scripted(&mut self, sent: u64, silenced: &mut bool) -> Result<Step, Halt> {
        let s = &self.script;
        let (reset, code, silence) = (s.reset, s.disconnect_code, Duration::from_millis(s.silence_ms));
        if s.close_after.is_some_and(|n| sent >= n) {
            self.writer.abort(reset).await?;
            return Ok(Step::End(if reset { "reset" } else { "close_after" }));
        }
        if s.disconnect_after.is_some_and(|n| sent >= n) {
            let r = self.gen.disconnect(code);
            self.note(&r);
            self.writer.message(&self.gen.buf).await?;
            self.writer.flush().await?;
            return Ok(Step::End("disconnect"));
        }
        if s.limit.is_some_and(|n| sent >= n) {
            self.writer.flush().await?;
            return Ok(Step::End("limit"));
        }
        if s.endless_after.is_some_and(|n| sent >= n) {
            let cap = s.endless_bytes;
            let piece = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
            let mut written = 0u64;
            // Bounded by the cap; ends early when the client hangs up.
            while written < cap {
                let n = (cap - written).min(piece.len() as u64) as usize;
                self.writer.raw(piece.slice(..n)).await?;
                written += n as u64;
            }
            return Ok(Step::End("endless"));
        }
        if !*silenced && s.silence_after.is_some_and(|n| sent >= n) {
            *silenced = true;
            self.writer.flush().await?;
            self.silence(silence).await?;
            // Carry on as if the silence had been traffic: no keep-alive
            // first (and, when paced, no burst of owed messages).
            self.writer.last_write = Instant::now();
            return Ok(Step::Resumed);
        }
        Ok(Step::Go)
    }

    /// This connection's own messages, paced at the simulator's rate.
    async fn generate(&mut self) -> Result<&'static str, Halt> {
        let mut pacer = Pacer::new(self.shared.rate);
        let mut sent: u64 = 0;
        let mut silenced = false;
        loop {
            match self.scripted(sent, &mut silenced).await? {
                Step::End(end) => return Ok(end),
                Step::Resumed => pacer.reset(),
                Step::Go => {}
            }
            if pacer.throttled() {
                // Bounded: every turn waits for a tick or a keep-alive.
                while !pacer.try_take() {
                    self.writer.flush().await?;
                    self.wait_tick(&mut pacer).await?;
                }
            } else if sent % 64 == 0 && *self.stop.borrow() {
                // Unthrottled: the channel's backpressure is the pace; look
                // for a stop now and then without a select per message.
                return Err(Halt::ServerStop);
            }
            if sent % 64 == 0 {
                // Also when paced: a rate the client cannot keep up with
                // never waits for a tick.
                self.check_reset()?;
            }
            self.apply_site_changes();
            sent += 1;
            let r = self.gen.next(sent, &self.script);
            self.note(&r);
            self.writer.message(&self.gen.buf).await?;
            if r.kind == "oversized" {
                self.gen.trim();
            }
        }
    }

    /// The broadcast generator's messages, each one produced while this
    /// connection is subscribed, in order; its own junk in between.
    async fn forward(&mut self, mut feed: Feed) -> Result<&'static str, Halt> {
        let mut sent: u64 = 0;
        let mut silenced = false;
        loop {
            if let Step::End(end) = self.scripted(sent, &mut silenced).await? {
                return Ok(end);
            }
            if sent % 64 == 0 {
                // A subscriber that never waits (its feed always has the
                // next message) would otherwise not see the reset.
                self.check_reset()?;
            }
            sent += 1;
            if is_junk(sent, &self.script) {
                let r = self.gen.next(sent, &self.script);
                self.note(&r);
                self.writer.message(&self.gen.buf).await?;
                if r.kind == "oversized" {
                    self.gen.trim();
                }
                continue;
            }
            match self.next_frame(&mut feed).await? {
                Ok(frame) => {
                    self.note_frame(&frame);
                    self.writer.message(&frame.payload).await?;
                }
                Err(RecvError::Lagged(missed)) => {
                    // Never skip silently: the client sees a broken body.
                    tracing::debug!(attempt = self.slot.attempt, missed, "broadcast subscriber lagged");
                    self.writer.abort(false).await?;
                    return Ok("lagged");
                }
                Err(RecvError::Closed) => {
                    if *self.stop.borrow() {
                        return Err(Halt::ServerStop);
                    }
                    // The generator reached its limit and this connection
                    // has written everything it produced.
                    self.writer.flush().await?;
                    return Ok("limit");
                }
            }
        }
    }

    /// The next broadcast message; flushes and sends keep-alives while none
    /// is queued.
    async fn next_frame(&mut self, feed: &mut Feed) -> Result<Result<Arc<Frame>, RecvError>, Halt> {
        match feed.try_recv() {
            Ok(frame) => return Ok(Ok(frame)),
            Err(TryRecvError::Lagged(n)) => return Ok(Err(RecvError::Lagged(n))),
            Err(TryRecvError::Closed) => return Ok(Err(RecvError::Closed)),
            Err(TryRecvError::Empty) => {}
        }
        self.writer.flush().await?;
        // Bounded: every turn that does not return sends a keep-alive.
        loop {
            let idle = self.shared.keepalive.saturating_sub(self.writer.last_write.elapsed());
            tokio::select! {
                r = feed.recv() => return Ok(r),
                _ = tokio::time::sleep(idle) => {}
                _ = self.writer.closed() => return Err(Halt::ClientClosed),
                _ = wire::changed(&mut self.resets) => return Err(Halt::ResetAll),
                _ = wire::stopped(&mut self.stop) => return Err(Halt::ServerStop),
            }
            self.writer.keepalive().await?;
        }
    }

    /// Nothing at all on the wire, keep-alives included.
    async fn silence(&mut self, how_long: Duration) -> Result<(), Halt> {
        tokio::select! {
            _ = tokio::time::sleep(how_long) => Ok(()),
            _ = self.writer.closed() => Err(Halt::ClientClosed),
            _ = wire::changed(&mut self.resets) => Err(Halt::ResetAll),
            _ = wire::stopped(&mut self.stop) => Err(Halt::ServerStop),
        }
    }

    /// Waits for the next tick, sending a keep-alive when one is due.
    async fn wait_tick(&mut self, pacer: &mut Pacer) -> Result<(), Halt> {
        let idle = self.shared.keepalive.saturating_sub(self.writer.last_write.elapsed());
        tokio::select! {
            _ = pacer.tick() => {}
            _ = tokio::time::sleep(idle) => {}
            _ = self.writer.closed() => return Err(Halt::ClientClosed),
            _ = wire::changed(&mut self.resets) => return Err(Halt::ResetAll),
            _ = wire::stopped(&mut self.stop) => return Err(Halt::ServerStop),
        }
        if self.writer.last_write.elapsed() >= self.shared.keepalive {
            self.writer.keepalive().await?;
        }
        Ok(())
    }

    /// Whether `reset_all` was called since the stream opened.
    fn check_reset(&self) -> Result<(), Halt> {
        match self.resets.has_changed() {
            Ok(true) => Err(Halt::ResetAll),
            // Err: the simulator is gone, which the stop reports.
            Ok(false) | Err(_) => Ok(()),
        }
    }

    fn note(&self, r: &Rendered) {
        self.slot.messages.fetch_add(1, Ordering::Relaxed);
        if self.shared.record_sent > 0 {
            self.shared.record(SentMessage {
                attempt: self.slot.attempt,
                kind: r.kind,
                id: r.id.map(|id| id.to_string()),
                for_user: r.for_user,
                payload: Bytes::copy_from_slice(&self.gen.buf),
            });
        }
    }

    /// A broadcast message is recorded once, by the first connection that
    /// writes it.
    fn note_frame(&self, frame: &Frame) {
        self.slot.messages.fetch_add(1, Ordering::Relaxed);
        if frame.first_write() && self.shared.record_sent > 0 {
            self.shared.record(SentMessage {
                attempt: self.slot.attempt,
                kind: frame.kind,
                id: frame.id.map(|id| id.to_string()),
                for_user: None,
                payload: frame.payload.clone(),
            });
        }
    }

    fn apply_site_changes(&mut self) {
        if let Some(site) = &self.site {
            if let Some(carried) = site.changes() {
                self.gen.set_site_users(&carried);
            }
        }
    }
}

impl Drop for Producer {
    // Also runs when a worker's runtime drops the task at shutdown.
    fn drop(&mut self) {
        self.slot.finish("server stop");
        self.shared.close(&self.slot);
        if let Some(site) = &self.site {
            lock(&self.shared.sites).remove(&site.stream_id);
        }
    }
}

fn refuse((status, text): ControlRefusal) -> HttpResponse {
    match text {
        Some(t) => text_response(status, t),
        None => status_response(status, None),
    }
}

/// The control-stream operations (protocols.md A.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ControlOp {
    Info,
    AddUser,
    RemoveUser,
    FriendsIds,
}

impl ControlOp {
    fn name(self) -> &'static str {
        match self {
            ControlOp::Info => "info",
            ControlOp::AddUser => "add_user",
            ControlOp::RemoveUser => "remove_user",
            ControlOp::FriendsIds => "friends_ids",
        }
    }
}

/// The `user_id` list of add/remove: 1 to 100 numeric ids (hbc's limit; more
/// is a 400). Also returns what to log: the ids, or for a refused call at
/// most the first 100 that parse.
fn control_ids(params: &[(String, String)]) -> (Vec<u64>, Result<(), ControlRefusal>) {
    let list = items(params, "user_id");
    let logged = || list.iter().filter_map(|v| v.parse().ok()).take(MAX_CONTROL_IDS).collect();
    if list.is_empty() {
        return (Vec::new(), Err((400, Some("Parameter user_id is required".into()))));
    }
    if list.len() > MAX_CONTROL_IDS {
        return (logged(), Err((400, Some(format!("Parameter user_id has more than {MAX_CONTROL_IDS} items")))));
    }
    match parse_ids(&list, "user_id") {
        Ok(ids) => (ids, Ok(())),
        Err((status, text)) => (logged(), Err((status, Some(text)))),
    }
}

async fn control_info(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    control(ControlOp::Info, &req, &body, &shared)
}

async fn control_add(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    control(ControlOp::AddUser, &req, &body, &shared)
}

async fn control_remove(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    control(ControlOp::RemoveUser, &req, &body, &shared)
}

async fn control_friends(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    control(ControlOp::FriendsIds, &req, &body, &shared)
}

/// Answers a control request and logs it.
fn control(op: ControlOp, req: &HttpRequest, body: &[u8], shared: &Shared) -> HttpResponse {
    let params = request_params(req, body);
    let id = req.match_info().get("stream_id").unwrap_or_default();
    // A closed stream's id is unknown, even before its producer unregistered.
    let conn = lock(&shared.sites).get(id).filter(|c| !c.slot.is_closed()).cloned();
    let attempt = conn.as_ref().map_or(u64::MAX, |c| c.slot.attempt);
    let (user_ids, resp) = control_answer(op, req, &params, conn, shared);
    shared.log_control(ControlCall {
        attempt,
        op: op.name(),
        user_ids,
        status: resp.status().as_u16(),
        at: Instant::now(),
    });
    resp
}

fn control_answer(
    op: ControlOp,
    req: &HttpRequest,
    params: &[(String, String)],
    conn: Option<Arc<SiteConn>>,
    shared: &Shared,
) -> (Vec<u64>, HttpResponse) {
    // Parsed first, so a refused call is logged with its ids too.
    let (ids, checked) = match op {
        ControlOp::AddUser | ControlOp::RemoveUser => control_ids(params),
        ControlOp::FriendsIds => match first(params, "user_id").map(str::parse::<u64>) {
            Some(Ok(u)) => (vec![u], Ok(())),
            _ => (Vec::new(), Err((400, Some("Parameter user_id is required".into())))),
        },
        ControlOp::Info => (Vec::new(), Ok(())),
    };
    if let Err(why) = check_auth(req, params, &shared.credentials) {
        tracing::debug!(path = req.path(), reason = ?why, "simulator refused a control request");
        return (ids, status_response(401, None));
    }
    let Some(conn) = conn else {
        return (ids, status_response(404, None));
    };
    let answer = checked.and_then(|()| match op {
        ControlOp::Info => Ok(HttpResponse::Ok().json(conn.info_json())),
        ControlOp::AddUser => conn.add(&ids).map(|()| HttpResponse::Ok().finish()),
        ControlOp::RemoveUser => {
            conn.remove(&ids);
            Ok(HttpResponse::Ok().finish())
        }
        ControlOp::FriendsIds => friends_ids(&conn, &ids),
    });
    (ids, answer.unwrap_or_else(refuse))
}

/// `friends/ids.json` for the one user in `ids`, who must be on the stream.
fn friends_ids(conn: &SiteConn, ids: &[u64]) -> Result<HttpResponse, ControlRefusal> {
    let user = match ids {
        [u] if conn.carries(*u) => *u,
        _ => return Err((404, Some("User is not on this stream".into()))),
    };
    let friends: serde_json::Value =
        serde_json::from_slice(super::payloads::friends_json()).unwrap_or(serde_json::Value::Null);
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "follow": {
            "user": { "id": user, "id_str": user.to_string() },
            "friends": friends["friends"],
            "previous_cursor": 0, "previous_cursor_str": "0",
            "next_cursor": 0, "next_cursor_str": "0",
        }
    })))
}

/// A refusal with a plain-text body, as the streaming hosts sent them.
fn text_response(status: u16, text: String) -> HttpResponse {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(code).content_type("text/plain; charset=utf-8").body(text)
}

/// The status with the body Twitter sent for it.
fn status_response(status: u16, retry_after_s: Option<u64>) -> HttpResponse {
    let json = |code: u32, message: &str| {
        (
            "application/json; charset=utf-8",
            serde_json::json!({ "errors": [{ "code": code, "message": message }] }).to_string(),
        )
    };
    let text = |t: &str| ("text/plain; charset=utf-8", t.to_string());
    let (content_type, body) = match status {
        401 => json(32, "Could not authenticate you."),
        403 => text("Forbidden: this account is not allowed to use this endpoint"),
        404 => json(34, "Sorry, that page does not exist."),
        406 => text("Parameter track item index 0 too long"),
        413 => text("Parameter follow has more than 5000 items"),
        416 => text("Parameter count out of range"),
        420 => text("Exceeded connection limit for user"),
        429 => json(88, "Rate limit exceeded"),
        500 => text("Internal Server Error"),
        502 => text("Bad Gateway"),
        503 => text("Service Unavailable"),
        504 => text("Gateway Timeout"),
        _ => text(StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error")),
    };
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = HttpResponse::build(code);
    if status == 420 {
        resp.reason("Enhance Your Calm");
    }
    if let Some(s) = retry_after_s {
        resp.insert_header((header::RETRY_AFTER, s.to_string()));
    }
    resp.content_type(content_type).body(body)
}
