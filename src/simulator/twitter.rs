//! Twitter v1.1 streaming endpoints (protocols.md A.1-A.8): filter, sample,
//! user and site streams plus the site control stream. Each accepted stream
//! gets one producer task that paces, scripts and frames its messages.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::{interval, Interval, MissedTickBehavior};

use super::oauth::{self, AuthFailure, SignedRequest};
use super::payloads::{Generator, GeneratorOptions, Rendered, StreamKind};
use super::scenario::AttemptScript;
use super::wire::{self, BodyStream, ConnFd, FrameWriter, Halt, CHANNEL_DEPTH};
use super::{lock, ConnSlot, SentMessage, Shared, SimCredentials};

/// Pacing granularity for `rate > 0`: a tick sends rate/100 messages, so no
/// per-message timer exists even at high rates.
const TICK: Duration = Duration::from_millis(10);
const TICKS_PER_S: u64 = 100;

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
    let mut visible: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in params.iter().filter(|(k, _)| !k.starts_with("oauth_")) {
        visible
            .entry(k.clone())
            .and_modify(|old| {
                old.push(',');
                old.push_str(v);
            })
            .or_insert_with(|| v.clone());
    }
    let log = |status: u16, auth_ok: bool| {
        shared.open(ConnSlot::new(
            attempt,
            req.method().as_str().to_string(),
            req.path().to_string(),
            visible.clone(),
            auth_ok,
            status,
            opened_at,
        ))
    };

    if let Err(why) = auth {
        tracing::debug!(attempt, path = req.path(), reason = ?why, "simulator refused a signature");
        log(401, false).finish("status");
        return status_response(401, script.retry_after_s);
    }
    if let Some(status) = script.status.filter(|s| *s != 200) {
        log(status, true).finish("status");
        return status_response(status, script.retry_after_s);
    }
    let sp = match StreamParams::parse(kind, &params) {
        Ok(sp) => sp,
        Err((status, text)) => {
            log(status, true).finish("status");
            return text_response(status, text);
        }
    };

    let slot = log(200, true);
    let site = (kind == StreamKind::Site).then(|| {
        let conn = Arc::new(SiteConn::new(&sp));
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
        control_uri: site.as_ref().map(|s| format!("/1.1/site/c/{}", s.stream_id)),
    });
    let shared = shared.into_inner();
    let producer = Producer {
        writer: FrameWriter::new(tx, shared.stop.subscribe(), sp.delimited, script.split, seed),
        stop: shared.stop.subscribe(),
        shared,
        slot,
        script,
        gen: generator,
        site,
    };
    actix_rt::spawn(producer.run());
    HttpResponse::Ok().content_type("application/json").streaming(BodyStream::new(rx, fd))
}

/// Feeds one stream: paces, applies the attempt's script, records.
struct Producer {
    shared: Arc<Shared>,
    slot: Arc<ConnSlot>,
    script: AttemptScript,
    gen: Generator,
    writer: FrameWriter,
    stop: watch::Receiver<bool>,
    site: Option<Arc<SiteConn>>,
}

impl Producer {
    async fn run(mut self) {
        let end = match self.stream().await {
            Ok(end) => end,
            Err(Halt::ClientClosed) => "client closed",
            Err(Halt::ServerStop) => "server stop",
        };
        self.slot.finish(end);
        if let Some(site) = &self.site {
            lock(&self.shared.sites).remove(&site.stream_id);
        }
        tracing::debug!(
            attempt = self.slot.attempt,
            end,
            messages = self.slot.messages.load(Ordering::Relaxed),
            "simulated stream ended"
        );
    }

    async fn stream(&mut self) -> Result<&'static str, Halt> {
        let script = self.script.clone();
        let rate = u64::from(self.shared.rate);
        let mut ticker = interval(TICK);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        // The first message goes out at once; at most about a second's worth
        // of messages is ever owed.
        let mut credit = TICKS_PER_S;
        let cap = rate + TICKS_PER_S;
        let mut sent: u64 = 0;
        let mut silenced = false;
        loop {
            if script.close_after.is_some_and(|n| sent >= n) {
                self.writer.abort(script.reset).await?;
                return Ok(if script.reset { "reset" } else { "close_after" });
            }
            if script.disconnect_after.is_some_and(|n| sent >= n) {
                let r = self.gen.disconnect(script.disconnect_code);
                self.note(&r);
                self.writer.message(&self.gen.buf).await?;
                self.writer.flush().await?;
                return Ok("disconnect");
            }
            if script.limit.is_some_and(|n| sent >= n) {
                self.writer.flush().await?;
                return Ok("limit");
            }
            if !silenced && script.silence_after.is_some_and(|n| sent >= n) {
                silenced = true;
                self.writer.flush().await?;
                self.silence(Duration::from_millis(script.silence_ms)).await?;
                // Carry on as if the silence had been traffic: no burst of
                // owed messages, no keep-alive first.
                ticker.reset();
                self.writer.last_write = Instant::now();
            }
            if rate == 0 {
                // Unthrottled: the channel's backpressure is the pace; look
                // for a stop now and then without a select per message.
                if sent % 64 == 0 && *self.stop.borrow() {
                    return Err(Halt::ServerStop);
                }
            } else {
                while credit < TICKS_PER_S {
                    self.writer.flush().await?;
                    self.wait_tick(&mut ticker).await?;
                    credit = (credit + rate).min(cap);
                    if self.writer.last_write.elapsed() >= self.shared.keepalive {
                        self.writer.keepalive().await?;
                    }
                }
                credit -= TICKS_PER_S;
            }
            self.apply_site_changes();
            sent += 1;
            let r = self.gen.next(sent, &script);
            self.note(&r);
            self.writer.message(&self.gen.buf).await?;
            if r.kind == "oversized" {
                self.gen.trim();
            }
        }
    }

    /// Nothing at all on the wire, keep-alives included.
    async fn silence(&mut self, how_long: Duration) -> Result<(), Halt> {
        tokio::select! {
            _ = tokio::time::sleep(how_long) => Ok(()),
            _ = self.writer.closed() => Err(Halt::ClientClosed),
            _ = wire::stopped(&mut self.stop) => Err(Halt::ServerStop),
        }
    }

    async fn wait_tick(&mut self, ticker: &mut Interval) -> Result<(), Halt> {
        tokio::select! {
            _ = ticker.tick() => Ok(()),
            _ = self.writer.closed() => Err(Halt::ClientClosed),
            _ = wire::stopped(&mut self.stop) => Err(Halt::ServerStop),
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

    fn apply_site_changes(&mut self) {
        if let Some(site) = &self.site {
            if site.dirty.swap(false, Ordering::AcqRel) {
                let (added, removed) = std::mem::take(&mut *lock(&site.changes));
                self.gen.change_site_users(&added, &removed);
            }
        }
    }
}

/// A live site stream, reachable through its control URI.
pub(crate) struct SiteConn {
    pub(crate) stream_id: String,
    delimited: bool,
    with: String,
    replies: String,
    users: Mutex<Vec<u64>>,
    /// Added and removed users the producer has not applied yet.
    changes: Mutex<(Vec<u64>, Vec<u64>)>,
    dirty: AtomicBool,
}

impl SiteConn {
    fn new(sp: &StreamParams) -> SiteConn {
        SiteConn {
            // protocols.md A.7: `1_1_` and 32 hex digits.
            stream_id: format!("1_1_{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
            delimited: sp.delimited,
            with: sp.with.clone(),
            replies: sp.replies.clone(),
            users: Mutex::new(sp.follow.clone()),
            changes: Mutex::new((Vec::new(), Vec::new())),
            dirty: AtomicBool::new(false),
        }
    }

    fn add(&self, ids: &[u64]) {
        let mut users = lock(&self.users);
        let mut changes = lock(&self.changes);
        for id in ids {
            if !users.contains(id) {
                users.push(*id);
                changes.0.push(*id);
                changes.1.retain(|r| r != id);
            }
        }
        self.dirty.store(true, Ordering::Release);
    }

    fn remove(&self, ids: &[u64]) {
        let mut users = lock(&self.users);
        let mut changes = lock(&self.changes);
        users.retain(|u| !ids.contains(u));
        changes.0.retain(|a| !ids.contains(a));
        changes.1.extend_from_slice(ids);
        self.dirty.store(true, Ordering::Release);
    }

    fn info_json(&self) -> serde_json::Value {
        let users: Vec<serde_json::Value> = lock(&self.users)
            .iter()
            .map(|id| serde_json::json!({ "id": id, "id_str": id.to_string(), "name": format!("user{id}"), "dm": false }))
            .collect();
        serde_json::json!({
            "info": {
                "users": users,
                "delimited": if self.delimited { "length" } else { "none" },
                "include_followings_activity": self.with == "followings",
                "include_user_changes": false,
                "replies": self.replies,
                "with": self.with,
            }
        })
    }
}

/// A refused control request: the status, and a plain-text body unless the
/// status has Twitter's own (401, 404).
type ControlRefusal = (u16, Option<String>);

/// A control request's stream and decoded parameters.
type ControlTarget = (Arc<SiteConn>, Vec<(String, String)>);

fn refuse((status, text): ControlRefusal) -> HttpResponse {
    match text {
        Some(t) => text_response(status, t),
        None => status_response(status, None),
    }
}

/// Authenticates a control request and finds its stream.
fn control_target(req: &HttpRequest, body: &[u8], shared: &Shared) -> Result<ControlTarget, ControlRefusal> {
    let params = request_params(req, body);
    if let Err(why) = check_auth(req, &params, &shared.credentials) {
        tracing::debug!(path = req.path(), reason = ?why, "simulator refused a control request");
        return Err((401, None));
    }
    let id = req.match_info().get("stream_id").unwrap_or_default();
    match lock(&shared.sites).get(id) {
        Some(conn) => Ok((Arc::clone(conn), params)),
        None => Err((404, None)),
    }
}

/// The `user_id` list of add/remove: 1 to 100 numeric ids.
fn control_ids(params: &[(String, String)]) -> Result<Vec<u64>, ControlRefusal> {
    let list = items(params, "user_id");
    if list.is_empty() {
        return Err((400, Some("Parameter user_id is required".into())));
    }
    if list.len() > MAX_CONTROL_IDS {
        return Err((413, Some(format!("Parameter user_id has more than {MAX_CONTROL_IDS} items"))));
    }
    parse_ids(&list, "user_id").map_err(|(s, t)| (s, Some(t)))
}

async fn control_info(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    match control_target(&req, &body, &shared) {
        Ok((conn, _)) => HttpResponse::Ok().json(conn.info_json()),
        Err(refusal) => refuse(refusal),
    }
}

async fn control_add(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    match control_target(&req, &body, &shared).and_then(|(c, p)| Ok((c, control_ids(&p)?))) {
        Ok((conn, ids)) => {
            conn.add(&ids);
            HttpResponse::Ok().finish()
        }
        Err(refusal) => refuse(refusal),
    }
}

async fn control_remove(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    match control_target(&req, &body, &shared).and_then(|(c, p)| Ok((c, control_ids(&p)?))) {
        Ok((conn, ids)) => {
            conn.remove(&ids);
            HttpResponse::Ok().finish()
        }
        Err(refusal) => refuse(refusal),
    }
}

async fn control_friends(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let (conn, params) = match control_target(&req, &body, &shared) {
        Ok(found) => found,
        Err(refusal) => return refuse(refusal),
    };
    let user = match first(&params, "user_id").map(str::parse::<u64>) {
        Some(Ok(u)) if lock(&conn.users).contains(&u) => u,
        Some(Ok(_)) => return text_response(404, "User is not on this stream".into()),
        _ => return text_response(400, "Parameter user_id is required".into()),
    };
    let friends: serde_json::Value =
        serde_json::from_slice(super::payloads::friends_json()).unwrap_or(serde_json::Value::Null);
    HttpResponse::Ok().json(serde_json::json!({
        "follow": {
            "user": { "id": user, "id_str": user.to_string() },
            "friends": friends["friends"],
            "previous_cursor": 0, "previous_cursor_str": "0",
            "next_cursor": 0, "next_cursor_str": "0",
        }
    }))
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
