//! The control API (SPEC 6): an actix-web server on its own workers that holds
//! only an `Addr` and cheap clones of the stats and metrics, so it can stop or
//! fail without touching a stream; `POST`s become supervisor/planner messages.

mod error;
mod routes;
mod state;

use std::net::SocketAddr;

use actix::Addr;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpServer};
use prometheus_client::registry::Registry;
use streamherd_actors::connection::stats::StatsRegistry;
use streamherd_actors::metrics::Metrics;
use streamherd_actors::sinks::runtime::SinkHandle;
use streamherd_actors::supervisor::StreamSupervisor;
use subtle::ConstantTimeEq;

pub use error::{ApiError, UNAUTHORIZED_MESSAGE};
pub use routes::{configure, parse_follows_body, MAX_BODY_BYTES, MAX_IDS_PER_REQUEST};
use state::State;

/// Worker threads: the API is light and the cores belong to the streams, but
/// a second worker keeps `/health` answering while another request encodes
/// a large `/streams` or `/metrics` body.
const WORKERS: usize = 2;

/// Seconds a graceful stop waits for requests in flight (keep-alive clients
/// must not hold up the process exit).
const SHUTDOWN_GRACE_S: u64 = 2;

/// What the control API needs from the running service.
pub struct ControlContext {
    /// Where control messages go.
    pub supervisor: Addr<StreamSupervisor>,
    /// Metric families, registered once for `/metrics`.
    pub metrics: Metrics,
    /// Live per-connection stats for `/streams` and `/health`.
    pub stats: StatsRegistry,
    /// The resolved bearer token; `None` leaves every route open.
    pub token: Option<String>,
    /// The sinks: one whose spill is full holds its streams back, which
    /// `/health` reports.
    pub sinks: Vec<SinkHandle>,
}

/// A running control API.
pub struct ControlServer {
    /// The bound address (the real port when asked for port 0).
    pub addr: SocketAddr,
    handle: ServerHandle,
}

impl ControlServer {
    /// Stops accepting, lets requests in flight finish (bounded), and returns
    /// when the workers are gone.
    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// Binds `listen` and serves the control API inside the current actix
/// System. Signals are left to the app, which stops the whole service.
pub async fn start(listen: SocketAddr, ctx: ControlContext) -> std::io::Result<ControlServer> {
    if ctx.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
        // "Bearer " with nothing after it would then open every route.
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "control.token is empty"));
    }
    if ctx.token.is_none() && !listen.ip().is_loopback() {
        tracing::warn!(%listen, "control API on a non-loopback address without a token: anyone who reaches it can stop the service");
    }
    let mut registry = Registry::default();
    ctx.metrics.register(&mut registry);
    let authenticated = ctx.token.is_some();
    let state = web::Data::new(State {
        supervisor: ctx.supervisor,
        stats: ctx.stats,
        metrics: ctx.metrics,
        registry,
        token: ctx.token,
        sinks: ctx.sinks,
    });

    let listener = std::net::TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    let server = HttpServer::new(move || {
        App::new().app_data(state.clone()).wrap(from_fn(require_token)).configure(routes::configure)
    })
    .workers(WORKERS)
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_GRACE_S)
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_rt::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "control API stopped with an error");
        }
    });
    tracing::info!(%addr, authenticated, "control API listening");
    Ok(ControlServer { addr, handle })
}

/// The only route that stays open when a token is set: load balancers and
/// orchestrators probe it without credentials.
const OPEN_PATH: &str = "/health";

/// Rejects requests without the bearer token, before any extractor reads a
/// body, so an unauthenticated client learns nothing about a route.
async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let allowed = match req.app_data::<web::Data<State>>() {
        Some(state) => match state.token.as_deref() {
            None => true,
            Some(token) => req.path() == OPEN_PATH || presented_token(req.headers()).is_some_and(|t| same(t, token)),
        },
        // Fail closed: without the state there is no way to know the token.
        None => false,
    };
    if !allowed {
        tracing::debug!(method = %req.method(), path = req.path(), "control request without a valid token");
        return Ok(req.error_response(ApiError::Unauthorized).map_into_right_body());
    }
    next.call(req).await.map(ServiceResponse::map_into_left_body)
}

/// The credentials of `Authorization: Bearer <token>` (scheme case-insensitive, RFC 7235).
fn presented_token(headers: &header::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credentials.trim())
}

/// Compares in constant time, so response timing does not reveal how much of
/// a guessed token was right (only whether its length was).
fn same(presented: &str, token: &str) -> bool {
    presented.as_bytes().ct_eq(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderMap, HeaderValue};

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn bearer_credentials_are_read_case_insensitively() {
        assert_eq!(presented_token(&headers("Bearer abc")), Some("abc"));
        assert_eq!(presented_token(&headers("bearer   abc ")), Some("abc"));
        assert_eq!(presented_token(&headers("Basic abc")), None);
        assert_eq!(presented_token(&headers("Bearer")), None);
        assert_eq!(presented_token(&HeaderMap::new()), None);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same("s3cret", "s3cret"));
        assert!(!same("s3cre", "s3cret"));
        assert!(!same("s3cretX", "s3cret"));
        assert!(!same("", "s3cret"));
    }
}
