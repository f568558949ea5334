//! Starting a simulator: the loopback listener, the actix server with every
//! route (Twitter, Mastodon WebSocket, Mastodon SSE and REST, Jetstream) and
//! the test hooks (`GET /_sim/connections`, `GET /_sim/carried`, `PUT
//! /_sim/scenario`; Jetstream's own are in `jetstream`).

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use actix_web::{web, App, HttpResponse, HttpServer};

use super::config::SimulatorConfig;
use super::handle::SimHandle;
use super::jetstream;
use super::mastodon;
use super::mastodon_ws;
use super::scenario::Scenario;
use super::shared::Shared;
use super::twitter;
use super::wire;

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
            .configure(jetstream::configure)
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
    jetstream::start_generator(&shared);
    tracing::info!(%addr, workers, "simulator listening");
    Ok(SimHandle::new(shared, handle, addr))
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
                "withheld": c.withheld,
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
