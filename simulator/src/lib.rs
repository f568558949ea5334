//! The protocol simulator: Twitter v1.1 streaming endpoints and Mastodon
//! streaming (SSE and WebSocket) on loopback with realistic payloads, OAuth
//! and bearer-token checks and scripted faults, for the tests, the benchmarks
//! and `streamherd simulate` (SPEC section 9).

// Map: `scenario` (fault scripts) drives `twitter` (endpoints, one producer
// task per stream), which renders from `payloads` (the corpus), paces with
// `pace` and writes through `wire` (framing, chunk cuts, FIN/RST); `fanout`
// is the shared generator of `broadcast` streams; `oauth` checks signatures.
// `mastodon` holds the Mastodon history, SSE and REST; `mastodon_ws` its
// WebSocket endpoint and instance discovery.
// This file: the public API, the shared logs, the server and its test hooks
// (`GET /_sim/connections`, `GET /_sim/carried`, `PUT /_sim/scenario` with a
// JSON scenario).

mod fanout;
mod mastodon;
mod mastodon_ws;
mod oauth;
mod pace;
pub mod payloads;
mod scenario;
mod twitter;
mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix_web::{dev::ServerHandle, web, App, HttpResponse, HttpServer};
use bytes::Bytes;
use tokio::sync::watch;

pub use mastodon::{MastodonPost, DEMO_MASTODON_TOKEN, MAX_MASTODON_HISTORY};
pub use mastodon_ws::{MastodonWsInfo, MAX_MASTODON_WS_RECORDS};
pub use scenario::{AttemptScript, Mix, Scenario, Split};

/// How the simulator is started.
#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    /// Where to listen; must be a loopback address (tests use 127.0.0.1:0).
    pub listen: SocketAddr,
    /// Messages per second per connection (for `broadcast` streams: of the
    /// shared generator); 0 = as fast as the socket takes.
    pub rate: u32,
    /// A blank-line keep-alive goes out when nothing else was sent for this
    /// long (Twitter: 30000).
    pub keepalive_ms: u64,
    /// Accepted OAuth credentials; anything else gets 401.
    pub credentials: Vec<SimCredentials>,
    /// The fault script.
    pub scenario: Scenario,
    /// Keep at most this many `SentMessage` records (0 = none): bounded
    /// memory however long the simulator runs.
    pub record_sent: usize,
    /// Accepted Mastodon bearer tokens; anything else gets 401.
    pub mastodon_tokens: Vec<String>,
    /// Mastodon WebSocket: a Ping goes out every this many ms (the first one
    /// interval after the upgrade); a client that has not answered the
    /// previous Ping with a Pong by the next tick is dropped (Mastodon: 30000).
    pub ws_ping_ms: u64,
    /// Mastodon public and hashtag channels (SSE and WebSocket): each
    /// `update` and `status.update` is held back a random 0..=this many ms
    /// while other events go out at once, so they arrive out of order as on
    /// the real server (B.9). 0: never.
    pub mastodon_update_delay_ms: u64,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8900)),
            rate: 200,
            keepalive_ms: 30_000,
            credentials: vec![SimCredentials::demo()],
            scenario: Scenario::default(),
            record_sent: 0,
            mastodon_tokens: vec![DEMO_MASTODON_TOKEN.to_string()],
            ws_ping_ms: 30_000,
            mastodon_update_delay_ms: 0,
        }
    }
}

/// One accepted OAuth 1.0a credential set (consumer and access token).
#[derive(Clone)]
pub struct SimCredentials {
    /// The consumer (API) key.
    pub consumer_key: String,
    /// The consumer secret.
    pub consumer_secret: String,
    /// The access token.
    pub token: String,
    /// The access token secret.
    pub token_secret: String,
}

impl std::fmt::Debug for SimCredentials {
    // Secrets never reach logs, not even the demo ones.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCredentials")
            .field("consumer_key", &self.consumer_key)
            .field("consumer_secret", &"<redacted>")
            .field("token", &self.token)
            .field("token_secret", &"<redacted>")
            .finish()
    }
}

impl SimCredentials {
    /// The credentials the shipped config.toml uses.
    pub fn demo() -> Self {
        SimCredentials {
            consumer_key: "demo-consumer-key".into(),
            consumer_secret: "demo-consumer-secret".into(),
            token: "demo-token".into(),
            token_secret: "demo-token-secret".into(),
        }
    }
}

/// One request to a streaming endpoint, as the simulator saw it.
#[derive(Clone, Debug)]
pub struct ConnectionRecord {
    /// 0, 1, 2, ... across all streaming requests (the scenario's index).
    pub attempt: u64,
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Decoded query and form parameters, `oauth_*` excluded; a repeated
    /// key's values are joined with ",".
    pub params: BTreeMap<String, String>,
    /// Whether the OAuth signature verified.
    pub auth_ok: bool,
    /// The response status (101 for an accepted Mastodon WebSocket).
    pub status: u16,
    /// When the request arrived.
    pub opened_at: Instant,
    /// When the response or stream ended (None while open).
    pub closed_at: Option<Instant>,
    /// Messages written (keep-alives not counted).
    pub messages_sent: u64,
    /// How it ended: "status", "client closed", "close_after", "reset",
    /// "disconnect", "limit", "lagged" (a broadcast subscriber fell more than
    /// `broadcast_capacity` messages behind), "server stop"; Mastodon also
    /// "revoked" (`SimHandle::mastodon_revoke`), and WebSockets "ping timeout"
    /// (no Pong in time) and "binary" (closed with 1003); empty while open.
    pub end: String,
    /// The follow ids the connection carries: site streams the connect
    /// request's `follow` plus every accepted `add_user` minus every
    /// `remove_user` (the list `info.json` reports, in that order); filter
    /// streams the request's `follow`; empty otherwise and for refused
    /// requests. After the close, what it carried when it closed.
    pub follows: Vec<u64>,
    /// Site streams: the `control_uri` announced on the stream.
    pub control_uri: Option<String>,
}

/// One request to a site stream's control URI, as the simulator answered it.
#[derive(Clone, Debug)]
pub struct ControlCall {
    /// The attempt number of the stream addressed; `u64::MAX` when the stream
    /// id is unknown or the stream is closed.
    pub attempt: u64,
    /// "add_user", "remove_user", "info" or "friends_ids".
    pub op: &'static str,
    /// The call's `user_id`s as parsed (at most the first 100 valid ones of a
    /// refused call); empty for `info`.
    pub user_ids: Vec<u64>,
    /// The response status.
    pub status: u16,
    /// When the request was answered.
    pub at: Instant,
}

/// One message the simulator wrote.
#[derive(Clone, Debug)]
pub struct SentMessage {
    /// The connection attempt it went out on.
    pub attempt: u64,
    /// The SPEC section 4 kind a client must classify it as, or "malformed" /
    /// "oversized" for injected junk.
    pub kind: &'static str,
    /// The id a client must report (SPEC 4 `id`), if the kind has one.
    pub id: Option<String>,
    /// Site streams: the envelope's `for_user`.
    pub for_user: Option<u64>,
    /// Exactly the message bytes, without framing.
    pub payload: Bytes,
}

/// A running simulator.
#[derive(Clone)]
pub struct SimHandle {
    shared: Arc<Shared>,
    server: ServerHandle,
    addr: SocketAddr,
}

impl SimHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for a source's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request to a streaming endpoint, in arrival order (the most
    /// recent `MAX_CONNECTION_RECORDS`).
    pub fn connections(&self) -> Vec<ConnectionRecord> {
        self.shared.connections()
    }

    /// The last `record_sent` messages sent, in order.
    ///
    /// A broadcast message (script `broadcast = true`) is recorded once, when
    /// the first connection writes it, with that connection's `attempt`; a
    /// message produced while no connection was subscribed, or only queued
    /// for connections that ended before writing it, is not recorded. So the
    /// broadcast ids in `sent()` are exactly the ones some connection wrote,
    /// each once. When two connections write concurrently the order of
    /// broadcast records can differ from the generation order by a few.
    pub fn sent(&self) -> Vec<SentMessage> {
        lock(&self.shared.sent).iter().cloned().collect()
    }

    /// Messages the broadcast generator has produced so far (summed over
    /// generators, should one be restarted after reaching its limit),
    /// including those produced while nobody was subscribed.
    pub fn broadcast_sent(&self) -> u64 {
        self.shared.hub.produced()
    }

    /// For every streaming connection still open, by attempt number: the
    /// follow ids it carries now (see `ConnectionRecord::follows`). Attempt
    /// numbers restart at `set_scenario`; should two open connections share
    /// one, the later-opened is shown.
    pub fn carried(&self) -> BTreeMap<u64, BTreeSet<u64>> {
        self.shared.carried()
    }

    /// The last `MAX_CONTROL_CALLS` control-stream requests, in order.
    pub fn control_calls(&self) -> Vec<ControlCall> {
        lock(&self.shared.control_calls).iter().cloned().collect()
    }

    /// Replaces the script and resets the attempt counter; a broadcast
    /// generator that reached its `limit` may start again, a running one is
    /// left alone.
    pub fn set_scenario(&self, scenario: Scenario) {
        self.shared.set_scenario(scenario);
    }

    /// Ends every open stream cleanly, then stops the server.
    pub async fn stop(&self) {
        self.shared.stop.send_replace(true);
        self.shared.mastodon.ws_log.drained(Duration::from_millis(500)).await;
        self.server.stop(true).await;
    }
}

/// Starts the simulator inside the running actix System; returns once the
/// socket is bound.
pub async fn start(config: SimulatorConfig) -> std::io::Result<SimHandle> {
    if !config.listen.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "simulator listen address {} is not loopback: it serves demo credentials and fault scripts",
                config.listen
            ),
        ));
    }
    config.scenario.validate().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let listener = listen(config.listen)?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared::new(&config, addr));
    let data = web::Data::from(Arc::clone(&shared));
    let workers = std::thread::available_parallelism().map(|n| n.get().min(2)).unwrap_or(1);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .configure(twitter::configure)
            // Before `mastodon`: its upgrade routes take precedence.
            .configure(mastodon_ws::configure)
            .configure(mastodon::configure)
            .configure(hooks)
            .default_service(web::to(twitter::not_found))
    })
    .workers(workers)
    // The embedding app owns signals and the shutdown order.
    .disable_signals()
    .shutdown_timeout(2)
    .tcp_nodelay(true)
    // A client that closes is noticed at once, not at the next write.
    .h1_allow_half_closed(false)
    // Makes actix poll a body only with an empty write buffer; see
    // `wire::BodyStream` for why abrupt ends need that.
    .h1_write_buffer_size(1)
    .on_connect(|io, ext| {
        if let Some(tcp) = io.downcast_ref::<actix_web::rt::net::TcpStream>() {
            ext.insert(wire::ConnFd(tcp.as_raw_fd()));
        }
    })
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    tracing::info!(%addr, workers, "simulator listening");
    Ok(SimHandle { shared, server: handle, addr })
}

/// Binds with a 1024-connection accept backlog (std's `bind` uses 128): a
/// thousand clients connecting at once must not wait for SYN retries.
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Test hooks, also handy from the command line.
fn hooks(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/_sim/connections").route(web::get().to(connections_json)))
        .service(web::resource("/_sim/carried").route(web::get().to(carried_json)))
        .service(web::resource("/_sim/scenario").route(web::put().to(put_scenario)));
}

/// `GET /_sim/carried`: `{"<attempt>": [ids...], ...}` for open connections.
async fn carried_json(shared: web::Data<Shared>) -> HttpResponse {
    let map: serde_json::Map<String, serde_json::Value> =
        shared.carried().into_iter().map(|(attempt, ids)| (attempt.to_string(), serde_json::json!(ids))).collect();
    HttpResponse::Ok().json(map)
}

/// `GET /_sim/connections`: the connection log, times in ms since start.
async fn connections_json(shared: web::Data<Shared>) -> HttpResponse {
    let ms = |t: Instant| t.saturating_duration_since(shared.started).as_millis() as u64;
    let rows: Vec<serde_json::Value> = shared
        .connections()
        .into_iter()
        .map(|c| {
            serde_json::json!({
                "attempt": c.attempt,
                "method": c.method,
                "path": c.path,
                "params": c.params,
                "auth_ok": c.auth_ok,
                "status": c.status,
                "opened_ms": ms(c.opened_at),
                "closed_ms": c.closed_at.map(ms),
                "messages_sent": c.messages_sent,
                "end": c.end,
                "follows": c.follows,
                "control_uri": c.control_uri,
            })
        })
        .collect();
    HttpResponse::Ok().json(rows)
}

/// `PUT /_sim/scenario` with a JSON scenario: replaces the script.
async fn put_scenario(shared: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    match serde_json::from_slice::<Scenario>(&body).map_err(|e| e.to_string()).and_then(|s| s.validate().map(|()| s)) {
        Ok(s) => {
            shared.set_scenario(s);
            HttpResponse::NoContent().finish()
        }
        Err(e) => HttpResponse::BadRequest().json(serde_json::json!({ "error": e })),
    }
}

/// The connection log keeps this many records: a client in a reconnect loop
/// with a 5000-id follow list must not grow the simulator without bound.
pub const MAX_CONNECTION_RECORDS: usize = 10_000;

/// The control-call log keeps this many records.
pub const MAX_CONTROL_CALLS: usize = 10_000;

/// State shared by every worker thread and stream.
pub(crate) struct Shared {
    pub(crate) started: Instant,
    /// The bound address (instance discovery announces it).
    pub(crate) addr: SocketAddr,
    pub(crate) rate: u32,
    pub(crate) keepalive: Duration,
    pub(crate) credentials: Vec<SimCredentials>,
    pub(crate) record_sent: usize,
    script: Mutex<(Scenario, u64)>,
    log: Mutex<VecDeque<Arc<ConnSlot>>>,
    /// Streams answered 200 and not yet ended, by `ConnSlot::serial`.
    open: Mutex<BTreeMap<u64, Arc<ConnSlot>>>,
    serials: AtomicU64,
    sent: Mutex<VecDeque<SentMessage>>,
    control_calls: Mutex<VecDeque<ControlCall>>,
    pub(crate) sites: Mutex<HashMap<String, Arc<twitter::SiteConn>>>,
    pub(crate) hub: fanout::Hub,
    pub(crate) mastodon: mastodon::State,
    pub(crate) stop: watch::Sender<bool>,
}

impl Shared {
    fn new(config: &SimulatorConfig, addr: SocketAddr) -> Shared {
        Shared {
            started: Instant::now(),
            addr,
            rate: config.rate,
            keepalive: Duration::from_millis(config.keepalive_ms.max(1)),
            credentials: config.credentials.clone(),
            record_sent: config.record_sent,
            script: Mutex::new((config.scenario.clone(), 0)),
            log: Mutex::new(VecDeque::new()),
            open: Mutex::new(BTreeMap::new()),
            serials: AtomicU64::new(0),
            sent: Mutex::new(VecDeque::new()),
            control_calls: Mutex::new(VecDeque::new()),
            sites: Mutex::new(HashMap::new()),
            hub: fanout::Hub::default(),
            mastodon: mastodon::State::new(config),
            stop: watch::channel(false).0,
        }
    }

    fn set_scenario(&self, scenario: Scenario) {
        *lock(&self.script) = (scenario, 0);
        self.hub.rearm();
    }

    /// Takes the next attempt number and its script.
    pub(crate) fn next_attempt(&self) -> (u64, AttemptScript) {
        let mut guard = lock(&self.script);
        let attempt = guard.1;
        guard.1 += 1;
        (attempt, guard.0.script_for(attempt).clone())
    }

    /// Logs a new streaming request; one answered 200 (or 101, a WebSocket)
    /// also counts as open until `close`.
    pub(crate) fn open(&self, mut slot: ConnSlot) -> Arc<ConnSlot> {
        slot.serial = self.serials.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(slot);
        {
            let mut log = lock(&self.log);
            if log.len() >= MAX_CONNECTION_RECORDS {
                log.pop_front();
            }
            log.push_back(Arc::clone(&slot));
        }
        if matches!(slot.status, 200 | 101) {
            lock(&self.open).insert(slot.serial, Arc::clone(&slot));
        }
        slot
    }

    /// The stream of `slot` has ended.
    pub(crate) fn close(&self, slot: &ConnSlot) {
        lock(&self.open).remove(&slot.serial);
    }

    fn carried(&self) -> BTreeMap<u64, BTreeSet<u64>> {
        let open: Vec<Arc<ConnSlot>> = lock(&self.open).values().cloned().collect();
        // In opening order, so a later connection with the same attempt
        // number (after `set_scenario`) wins.
        open.iter().filter(|s| !s.is_closed()).map(|s| (s.attempt, s.follows().into_iter().collect())).collect()
    }

    /// Logs a control-stream request, dropping the oldest beyond the bound.
    pub(crate) fn log_control(&self, call: ControlCall) {
        let mut calls = lock(&self.control_calls);
        while calls.len() >= MAX_CONTROL_CALLS {
            calls.pop_front();
        }
        calls.push_back(call);
    }

    /// Keeps `msg` if recording is on, dropping the oldest beyond the bound.
    pub(crate) fn record(&self, msg: SentMessage) {
        if self.record_sent == 0 {
            return;
        }
        let mut sent = lock(&self.sent);
        while sent.len() >= self.record_sent {
            sent.pop_front();
        }
        sent.push_back(msg);
    }

    fn connections(&self) -> Vec<ConnectionRecord> {
        lock(&self.log).iter().map(|s| s.snapshot()).collect()
    }
}

/// Which follows a connection carries (`ConnectionRecord::follows`).
pub(crate) enum Follows {
    /// None: sample and user streams, refused requests.
    None,
    /// Filter streams: the request's `follow`, read from `params` when asked
    /// (a 5000-id list is not kept twice).
    Request,
    /// Site streams: the carried list, changed by the control stream. The one
    /// source of truth for `info.json`, `carried()` and the connection log.
    Live(Arc<Mutex<Vec<u64>>>),
}

/// A live entry of the connection log; the producer updates it in place.
pub(crate) struct ConnSlot {
    /// Unique per simulator (attempt numbers restart at `set_scenario`).
    pub(crate) serial: u64,
    pub(crate) attempt: u64,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) params: BTreeMap<String, String>,
    pub(crate) auth_ok: bool,
    pub(crate) status: u16,
    pub(crate) opened_at: Instant,
    pub(crate) messages: AtomicU64,
    pub(crate) follows: Follows,
    pub(crate) control_uri: Option<String>,
    closed: Mutex<Option<(Instant, &'static str)>>,
}

impl ConnSlot {
    /// The record of streaming request `req`, with its visible parameters.
    pub(crate) fn for_request(
        req: &actix_web::HttpRequest,
        attempt: u64,
        visible: &BTreeMap<String, String>,
        auth_ok: bool,
        status: u16,
        opened_at: Instant,
    ) -> ConnSlot {
        ConnSlot::new(
            attempt,
            req.method().as_str().to_string(),
            req.path().to_string(),
            visible.clone(),
            auth_ok,
            status,
            opened_at,
        )
    }

    pub(crate) fn new(
        attempt: u64,
        method: String,
        path: String,
        params: BTreeMap<String, String>,
        auth_ok: bool,
        status: u16,
        opened_at: Instant,
    ) -> ConnSlot {
        ConnSlot {
            serial: 0,
            attempt,
            method,
            path,
            params,
            auth_ok,
            status,
            opened_at,
            messages: AtomicU64::new(0),
            follows: Follows::None,
            control_uri: None,
            closed: Mutex::new(None),
        }
    }

    /// Whether the stream or response has ended.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.closed).is_some()
    }

    /// The follow ids carried now (or when it closed).
    pub(crate) fn follows(&self) -> Vec<u64> {
        match &self.follows {
            Follows::None => Vec::new(),
            Follows::Request => self
                .params
                .get("follow")
                .map(|v| v.split(',').filter_map(|id| id.trim().parse().ok()).collect())
                .unwrap_or_default(),
            Follows::Live(carried) => lock(carried).clone(),
        }
    }

    /// Records the end; the first reason wins.
    pub(crate) fn finish(&self, end: &'static str) {
        let mut closed = lock(&self.closed);
        if closed.is_none() {
            *closed = Some((Instant::now(), end));
        }
    }

    fn snapshot(&self) -> ConnectionRecord {
        let closed = *lock(&self.closed);
        ConnectionRecord {
            attempt: self.attempt,
            method: self.method.clone(),
            path: self.path.clone(),
            params: self.params.clone(),
            auth_ok: self.auth_ok,
            status: self.status,
            opened_at: self.opened_at,
            closed_at: closed.map(|(t, _)| t),
            messages_sent: self.messages.load(Ordering::Relaxed),
            end: closed.map(|(_, e)| e.to_string()).unwrap_or_default(),
            follows: self.follows(),
            control_uri: self.control_uri.clone(),
        }
    }
}

/// A poisoned lock only means another thread panicked mid-update of a log;
/// the log is still worth reading.
/// Request parameters as the connection log shows them: repeated keys joined
/// with commas, `hidden` ones (credentials) left out.
pub(crate) fn visible_params(params: &[(String, String)], hidden: impl Fn(&str) -> bool) -> BTreeMap<String, String> {
    let mut visible: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in params.iter().filter(|(k, _)| !hidden(k)) {
        visible
            .entry(k.clone())
            .and_modify(|old| {
                old.push(',');
                old.push_str(v);
            })
            .or_insert_with(|| v.clone());
    }
    visible
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
