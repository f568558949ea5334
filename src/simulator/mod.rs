//! The protocol simulator: Twitter v1.1 streaming endpoints on loopback with
//! realistic payloads, OAuth checks and scripted faults, for the tests, the
//! benchmarks and `streamherd simulate` (SPEC section 9).

// Map: `scenario` (fault scripts) drives `twitter` (endpoints, one producer
// task per stream), which renders from `payloads` (the corpus) and writes
// through `wire` (framing, chunk cuts, FIN/RST); `oauth` checks signatures.
// This file: the public API, the shared logs, the server and its test hooks
// (`GET /_sim/connections`, `PUT /_sim/scenario` with a JSON scenario).

mod oauth;
pub mod payloads;
mod scenario;
mod twitter;
mod wire;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix_web::{dev::ServerHandle, web, App, HttpResponse, HttpServer};
use bytes::Bytes;
use tokio::sync::watch;

pub use scenario::{AttemptScript, Mix, Scenario, Split};

/// How the simulator is started.
#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    /// Where to listen; must be a loopback address (tests use 127.0.0.1:0).
    pub listen: SocketAddr,
    /// Messages per second per connection; 0 = as fast as the socket takes.
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
    /// The response status.
    pub status: u16,
    /// When the request arrived.
    pub opened_at: Instant,
    /// When the response or stream ended (None while open).
    pub closed_at: Option<Instant>,
    /// Messages written (keep-alives not counted).
    pub messages_sent: u64,
    /// How it ended: "status", "client closed", "close_after", "reset",
    /// "disconnect", "limit", "server stop"; empty while open.
    pub end: String,
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
    pub fn sent(&self) -> Vec<SentMessage> {
        lock(&self.shared.sent).iter().cloned().collect()
    }

    /// Replaces the script and resets the attempt counter.
    pub fn set_scenario(&self, scenario: Scenario) {
        self.shared.set_scenario(scenario);
    }

    /// Ends every open stream cleanly, then stops the server.
    pub async fn stop(&self) {
        self.shared.stop.send_replace(true);
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
    let listener = std::net::TcpListener::bind(config.listen)?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared::new(&config));
    let data = web::Data::from(Arc::clone(&shared));
    let workers = std::thread::available_parallelism().map(|n| n.get().min(2)).unwrap_or(1);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .configure(twitter::configure)
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

/// Test hooks, also handy from the command line.
fn hooks(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/_sim/connections").route(web::get().to(connections_json)))
        .service(web::resource("/_sim/scenario").route(web::put().to(put_scenario)));
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

/// State shared by every worker thread and stream.
pub(crate) struct Shared {
    pub(crate) started: Instant,
    pub(crate) rate: u32,
    pub(crate) keepalive: Duration,
    pub(crate) credentials: Vec<SimCredentials>,
    pub(crate) record_sent: usize,
    script: Mutex<(Scenario, u64)>,
    log: Mutex<VecDeque<Arc<ConnSlot>>>,
    sent: Mutex<VecDeque<SentMessage>>,
    pub(crate) sites: Mutex<HashMap<String, Arc<twitter::SiteConn>>>,
    pub(crate) stop: watch::Sender<bool>,
}

impl Shared {
    fn new(config: &SimulatorConfig) -> Shared {
        Shared {
            started: Instant::now(),
            rate: config.rate,
            keepalive: Duration::from_millis(config.keepalive_ms.max(1)),
            credentials: config.credentials.clone(),
            record_sent: config.record_sent,
            script: Mutex::new((config.scenario.clone(), 0)),
            log: Mutex::new(VecDeque::new()),
            sent: Mutex::new(VecDeque::new()),
            sites: Mutex::new(HashMap::new()),
            stop: watch::channel(false).0,
        }
    }

    fn set_scenario(&self, scenario: Scenario) {
        *lock(&self.script) = (scenario, 0);
    }

    /// Takes the next attempt number and its script.
    pub(crate) fn next_attempt(&self) -> (u64, AttemptScript) {
        let mut guard = lock(&self.script);
        let attempt = guard.1;
        guard.1 += 1;
        (attempt, guard.0.script_for(attempt).clone())
    }

    /// Logs a new streaming request.
    pub(crate) fn open(&self, slot: ConnSlot) -> Arc<ConnSlot> {
        let slot = Arc::new(slot);
        let mut log = lock(&self.log);
        if log.len() >= MAX_CONNECTION_RECORDS {
            log.pop_front();
        }
        log.push_back(Arc::clone(&slot));
        slot
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

/// A live entry of the connection log; the producer updates it in place.
pub(crate) struct ConnSlot {
    pub(crate) attempt: u64,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) params: BTreeMap<String, String>,
    pub(crate) auth_ok: bool,
    pub(crate) status: u16,
    pub(crate) opened_at: Instant,
    pub(crate) messages: AtomicU64,
    closed: Mutex<Option<(Instant, &'static str)>>,
}

impl ConnSlot {
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
            attempt,
            method,
            path,
            params,
            auth_ok,
            status,
            opened_at,
            messages: AtomicU64::new(0),
            closed: Mutex::new(None),
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
        }
    }
}

/// A poisoned lock only means another thread panicked mid-update of a log;
/// the log is still worth reading.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
