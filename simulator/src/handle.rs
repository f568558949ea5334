//! The handle of a running simulator (`SimHandle`): its address, the logs,
//! the fault script, `reset_all` and `stop`. The Mastodon controls are added to it in
//! `mastodon` and `mastodon_ws`, the Jetstream ones in `jetstream`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;

use super::records::{ConnectionRecord, ControlCall, SentMessage};
use super::scenario::Scenario;
use super::shared::Shared;

/// A running simulator.
#[derive(Clone)]
pub struct SimHandle {
    pub(crate) shared: Arc<Shared>,
    server: ServerHandle,
    addr: SocketAddr,
}

impl SimHandle {
    /// The handle of the server `server`, bound to `addr`.
    pub(crate) fn new(shared: Arc<Shared>, server: ServerHandle, addr: SocketAddr) -> SimHandle {
        SimHandle { shared, server, addr }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for a source's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// When the simulator started, on the clock of `ConnectionRecord`'s
    /// `opened_at` and `closed_at`.
    pub fn started_at(&self) -> Instant {
        self.shared.started
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
        self.shared.sent()
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
        self.shared.control_calls()
    }

    /// Replaces the script and resets the attempt counter; a broadcast
    /// generator that reached its `limit` may start again, a running one is
    /// left alone.
    pub fn set_scenario(&self, scenario: Scenario) {
        self.shared.set_scenario(scenario);
    }

    /// Resets every open stream at once, as a load balancer or a host going
    /// away does: each body ends with a TCP RST behind the bytes already
    /// queued for it (no final chunk, no disconnect message, no WebSocket
    /// Close frame) and its record gets `end = "reset_all"`. Twitter streams
    /// (filter, sample, user, site), Mastodon SSE and WebSocket streams and
    /// Jetstream connections alike. Returns how many open streams were told;
    /// a stream opened after the call is not affected. The RST follows when
    /// the producer next looks (at once while it waits; unpaced, within 64
    /// messages); a client that does not read gets it once its queued chunks
    /// drain.
    pub fn reset_all(&self) -> usize {
        self.shared.reset_all()
    }

    /// Ends every open stream cleanly, then stops the server.
    pub async fn stop(&self) {
        self.shared.stop.send_replace(true);
        self.shared.upgraded.drained(Duration::from_millis(500)).await;
        self.server.stop(true).await;
    }
}
