//! One `MastodonPlanner` per Mastodon source: finds the streaming host
//! (instance API discovery, B.1), packs the source's streams into
//! connections (SSE: one each; WebSocket: `streams_per_connection` each,
//! keyed by normalised hashtag), applies stream changes by touching only the
//! connections concerned, and keeps the catch-up positions flushed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::backoff::{BackoffActor, BackoffConfig};
use crate::control_messages::{FollowsChanged, GetSourceHealth, ReplaceStreams, SourceHealth};
use crate::mastodon_actor::{
    BearerToken, CatchUpLimits, MastodonConnectionSpec, MastodonLifecycle, MastodonStreamActor, Transport,
};
use crate::messages::{
    ChangeSubscriptions, StopStream, StreamConnected, StreamDisconnected, StreamFailed, SubscriptionRejected,
};
use crate::protocol::mastodon_streams::MastodonStream;
use crate::resume::ResumeStore;
use crate::shard_planner::{PlanError, PlannerContext, SourceFailed, StopSource};
use crate::stats::{Carries, ConnectionState, ConnectionStats, SourceCounters};

/// A validated Mastodon source.
#[derive(Debug, Clone)]
pub struct MastodonSourceSpec {
    /// Source name.
    pub name: Arc<str>,
    /// SSE or WebSocket.
    pub transport: Transport,
    /// The instance (REST API) base URL, `http(s)://host[:port]`.
    pub instance_url: String,
    /// The streaming host; `None`: discovered from the instance API.
    pub streaming_url: Option<String>,
    /// Streams to carry.
    pub streams: Vec<MastodonStream>,
    /// WebSocket subscriptions per connection.
    pub streams_per_connection: usize,
    /// Catch-up limits; `None` = catch-up off (gaps are still reported).
    pub catch_up: Option<CatchUpLimits>,
    /// The user token.
    pub token: BearerToken,
    /// Stall timeout (heartbeats come every 15 s, pings every 30 s).
    pub stall_timeout: Duration,
    /// Largest message kept.
    pub max_message_bytes: usize,
    /// Most connections this source may open.
    pub max_connections: usize,
    /// Reconnect rules.
    pub backoff: BackoffConfig,
}

/// How often changed stream positions are written to `state_dir`.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Subscription refusals kept for `/health`.
const MAX_REJECTIONS: usize = 100;

struct LiveConnection {
    id: Arc<str>,
    addr: Addr<MastodonStreamActor>,
    stats: Arc<ConnectionStats>,
    /// Stream keys it carries.
    streams: BTreeSet<String>,
    failed: bool,
}

/// Owns one Mastodon source's connections.
pub struct MastodonPlanner {
    spec: MastodonSourceSpec,
    ctx: PlannerContext,
    streaming_url: Option<String>,
    backoff: Option<Addr<BackoffActor>>,
    counters: Option<SourceCounters>,
    positions: Arc<ResumeStore>,
    /// Wanted streams by key.
    streams: BTreeMap<String, MastodonStream>,
    connections: BTreeMap<usize, LiveConnection>,
    next_index: usize,
    rejections: Vec<(String, String)>,
    stopping: bool,
    failed_reported: bool,
}

impl MastodonPlanner {
    /// A planner for a validated source.
    pub fn new(spec: MastodonSourceSpec, ctx: PlannerContext) -> Self {
        let streams = spec.streams.iter().map(|s| (s.key(), s.clone())).collect();
        MastodonPlanner {
            streaming_url: spec.streaming_url.clone(),
            spec,
            ctx,
            backoff: None,
            counters: None,
            positions: Arc::new(ResumeStore::in_memory()),
            streams,
            connections: BTreeMap::new(),
            next_index: 0,
            rejections: Vec::new(),
            stopping: false,
            failed_reported: false,
        }
    }

    fn per_connection(&self) -> usize {
        match self.spec.transport {
            Transport::Sse => 1,
            Transport::WebSocket => self.spec.streams_per_connection.max(1),
        }
    }

    /// Opens connections for every wanted stream no connection carries yet,
    /// filling non-full WebSocket connections first (the fullest first).
    fn place(&mut self, ctx: &mut Context<Self>, keys: Vec<String>) -> Result<(), PlanError> {
        let per = self.per_connection();
        let mut rest: Vec<String> = keys;
        let mut room: Vec<(usize, usize)> = self
            .connections
            .iter()
            .filter(|(_, c)| !c.failed && c.streams.len() < per && self.spec.transport == Transport::WebSocket)
            .map(|(i, c)| (*i, per - c.streams.len()))
            .collect();
        room.sort_by_key(|(i, free)| (*free, *i));
        let needed = rest.len().saturating_sub(room.iter().map(|r| r.1).sum()).div_ceil(per);
        let live = self.connections.values().filter(|c| !c.failed).count();
        if live + needed > self.spec.max_connections {
            return Err(PlanError::TooMany {
                field: "streams",
                needed: live + needed,
                reason: format!("max_connections is {}", self.spec.max_connections),
            });
        }
        for (index, free) in room {
            if rest.is_empty() {
                break;
            }
            let take: Vec<String> = rest.drain(..free.min(rest.len())).collect();
            let Some(conn) = self.connections.get_mut(&index) else { continue };
            let add: Vec<MastodonStream> = take.iter().filter_map(|k| self.streams.get(k).cloned()).collect();
            conn.streams.extend(take);
            conn.addr.do_send(ChangeSubscriptions { add, remove: Vec::new() });
        }
        while !rest.is_empty() {
            let take: Vec<String> = rest.drain(..per.min(rest.len())).collect();
            self.start_connection(ctx, take);
        }
        Ok(())
    }

    fn start_connection(&mut self, ctx: &mut Context<Self>, keys: Vec<String>) {
        let (Some(backoff), Some(counters), Some(streaming_url)) =
            (self.backoff.clone(), self.counters.clone(), self.streaming_url.clone())
        else {
            return;
        };
        let index = self.next_index;
        self.next_index += 1;
        let id: Arc<str> = format!("{}/{}", self.spec.name, index).into();
        let streams: Vec<MastodonStream> = keys.iter().filter_map(|k| self.streams.get(k).cloned()).collect();
        let me = ctx.address();
        let lifecycle = MastodonLifecycle {
            connected: me.clone().recipient(),
            disconnected: me.clone().recipient(),
            failed: me.clone().recipient(),
            rejected: me.recipient(),
        };
        let spec = MastodonConnectionSpec {
            id: id.clone(),
            source: self.spec.name.clone(),
            transport: self.spec.transport,
            streaming_url,
            rest_url: self.spec.instance_url.clone(),
            token: self.spec.token.clone(),
            stall_timeout: self.spec.stall_timeout,
            reset_after: self.spec.backoff.reset_after,
            max_message_bytes: self.spec.max_message_bytes,
            catch_up: self.spec.catch_up.clone(),
        };
        let carries =
            Carries { streams: streams.iter().map(MastodonStream::config_name).collect(), ..Default::default() };
        let stats = ConnectionStats::new(id.clone(), self.spec.name.clone(), carries, counters);
        self.ctx.stats.add(stats.clone());
        let (sinks, positions, actor_stats) = (self.ctx.sinks.clone(), self.positions.clone(), stats.clone());
        let make = move |_: &mut Context<MastodonStreamActor>| {
            MastodonStreamActor::new(spec, streams, backoff, sinks, lifecycle, actor_stats, positions)
        };
        let addr = match self.ctx.arbiters.get(index % self.ctx.arbiters.len().max(1)) {
            Some(arbiter) => actix::Supervisor::start_in_arbiter(arbiter, make),
            None => actix::Supervisor::start(make),
        };
        tracing::info!(connection = %id, streams = keys.len(), transport = self.spec.transport.as_str(), "connection planned");
        self.connections
            .insert(index, LiveConnection { id, addr, stats, streams: keys.into_iter().collect(), failed: false });
    }

    fn index_of(&self, connection: &str) -> Option<usize> {
        self.connections.iter().find(|(_, c)| &*c.id == connection).map(|(i, _)| *i)
    }

    fn start_all(&mut self, ctx: &mut Context<Self>) {
        let keys: Vec<String> = self.streams.keys().cloned().collect();
        if let Err(e) = self.place(ctx, keys) {
            tracing::error!(source = %self.spec.name, error = %e, "cannot plan the source's streams");
        }
    }

    fn flush_positions(&self) {
        if let Err(e) = self.positions.flush() {
            tracing::error!(source = %self.spec.name, error = %e, "cannot write stream positions to state_dir");
        }
    }
}

/// `GET /api/v1/streaming/health` on the streaming host (B.1): `Ok` with
/// the body when it answers 200.
pub async fn streaming_health(streaming_url: &str) -> Result<String, String> {
    let client = awc::Client::builder().timeout(Duration::from_secs(15)).finish();
    let url = format!("{}/api/v1/streaming/health", streaming_url.trim_end_matches('/'));
    let mut response = client.get(&url).send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response.body().limit(4096).await.map_err(|e| format!("{url}: {e}"))?;
    let body = String::from_utf8_lossy(&body).trim().to_owned();
    if status == 200 {
        Ok(body)
    } else {
        Err(format!("{url}: HTTP {status} {body}"))
    }
}

/// Asks the instance API for the streaming host (B.1): v2, then v1. The
/// caller falls back to the instance host.
pub async fn discover_streaming_url(instance: &str, token: &BearerToken) -> Result<String, String> {
    let client = awc::Client::builder().timeout(Duration::from_secs(15)).finish();
    let base = instance.trim_end_matches('/');
    let mut last_error = String::new();
    for (path, pointer) in
        [("/api/v2/instance", "/configuration/urls/streaming"), ("/api/v1/instance", "/urls/streaming_api")]
    {
        let url = format!("{base}{path}");
        let response = client
            .get(&url)
            .insert_header((awc::http::header::AUTHORIZATION, format!("Bearer {}", token.expose())))
            .send()
            .await;
        let mut response = match response {
            Ok(r) => r,
            Err(e) => {
                last_error = format!("{url}: {e}");
                continue;
            }
        };
        if !response.status().is_success() {
            last_error = format!("{url}: HTTP {}", response.status().as_u16());
            continue;
        }
        let body = match response.body().limit(1 << 20).await {
            Ok(b) => b,
            Err(e) => {
                last_error = format!("{url}: {e}");
                continue;
            }
        };
        let value: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                last_error = format!("{url}: {e}");
                continue;
            }
        };
        if let Some(streaming) = value.pointer(pointer).and_then(|v| v.as_str()).filter(|s| !s.is_empty()) {
            // SSE and the WebSocket URL are both derived from an http(s) base.
            let http = if let Some(rest) = streaming.strip_prefix("wss://") {
                format!("https://{rest}")
            } else if let Some(rest) = streaming.strip_prefix("ws://") {
                format!("http://{rest}")
            } else {
                streaming.to_owned()
            };
            return Ok(http.trim_end_matches('/').to_owned());
        }
        last_error = format!("{url}: no streaming URL in the answer");
    }
    Err(last_error)
}

impl Actor for MastodonPlanner {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.backoff = Some(BackoffActor::new(self.spec.backoff.clone()).start());
        self.counters = Some(SourceCounters::new(&self.ctx.metrics, &self.spec.name));
        match ResumeStore::open(ResumeStore::path(&self.ctx.state_dir, &self.spec.name)) {
            Ok(store) => self.positions = Arc::new(store),
            Err(e) => {
                // Starting from nothing would silently skip the gap: refuse instead.
                tracing::error!(source = %self.spec.name, error = %e, "cannot read the stream positions; the source is not started (fix or remove the file)");
                self.failed_reported = true;
                self.ctx.on_failed.do_send(SourceFailed { source: self.spec.name.clone() });
                return;
            }
        }
        ctx.run_interval(FLUSH_EVERY, |act, _| act.flush_positions());
        if self.streaming_url.is_some() {
            self.start_all(ctx);
            return;
        }
        let (instance, token) = (self.spec.instance_url.clone(), self.spec.token.clone());
        async move { discover_streaming_url(&instance, &token).await }
            .into_actor(self)
            .map(|found, act, ctx| {
                let url = match found {
                    Ok(url) => {
                        tracing::info!(source = %act.spec.name, streaming = %url, "streaming host discovered");
                        url
                    }
                    Err(e) => {
                        tracing::warn!(source = %act.spec.name, error = %e, "streaming host discovery failed; streaming from the instance host");
                        act.spec.instance_url.trim_end_matches('/').to_owned()
                    }
                };
                act.streaming_url = Some(url);
                if !act.stopping {
                    act.start_all(ctx);
                }
            })
            .spawn(ctx);
    }
}

impl Handler<StreamConnected> for MastodonPlanner {
    type Result = ();

    fn handle(&mut self, msg: StreamConnected, _: &mut Context<Self>) {
        tracing::debug!(connection = %msg.connection, "mastodon connection up");
    }
}

impl Handler<StreamDisconnected> for MastodonPlanner {
    type Result = ();

    fn handle(&mut self, msg: StreamDisconnected, _: &mut Context<Self>) {
        tracing::debug!(connection = %msg.connection, cause = %msg.cause, "mastodon connection down");
        self.flush_positions();
    }
}

impl Handler<StreamFailed> for MastodonPlanner {
    type Result = ();

    fn handle(&mut self, msg: StreamFailed, _: &mut Context<Self>) {
        if let Some(index) = self.index_of(&msg.connection) {
            if let Some(c) = self.connections.get_mut(&index) {
                c.failed = true;
            }
        }
        let all_failed = !self.connections.is_empty() && self.connections.values().all(|c| c.failed);
        if all_failed && !self.failed_reported && !self.stopping {
            self.failed_reported = true;
            tracing::error!(source = %self.spec.name, "every connection of the source failed for good");
            self.ctx.on_failed.do_send(SourceFailed { source: self.spec.name.clone() });
        }
    }
}

impl Handler<SubscriptionRejected> for MastodonPlanner {
    type Result = ();

    fn handle(&mut self, msg: SubscriptionRejected, _: &mut Context<Self>) {
        let status = msg.status.map_or_else(|| "no status".to_owned(), |s| s.to_string());
        if self.rejections.len() < MAX_REJECTIONS {
            self.rejections
                .push((msg.connection.to_string(), format!("subscription refused ({status}): {}", msg.message)));
        }
    }
}

impl Handler<ReplaceStreams> for MastodonPlanner {
    type Result = Result<FollowsChanged, PlanError>;

    /// Subscribes what is new and unsubscribes what went, on the
    /// connections concerned only; a connection left with nothing closes.
    fn handle(&mut self, msg: ReplaceStreams, ctx: &mut Context<Self>) -> Self::Result {
        let desired: BTreeMap<String, MastodonStream> = msg.streams.into_iter().map(|s| (s.key(), s)).collect();
        let removed: Vec<String> = self.streams.keys().filter(|k| !desired.contains_key(*k)).cloned().collect();
        let added: Vec<String> = desired.keys().filter(|k| !self.streams.contains_key(*k)).cloned().collect();
        let old = std::mem::replace(&mut self.streams, desired);
        // Removals first: they make room the additions can fill.
        let mut emptied = Vec::new();
        for (index, conn) in self.connections.iter_mut() {
            let gone: Vec<String> = conn.streams.iter().filter(|k| removed.contains(k)).cloned().collect();
            if gone.is_empty() {
                continue;
            }
            conn.streams.retain(|k| !gone.contains(k));
            if conn.streams.is_empty() {
                emptied.push(*index);
            } else {
                conn.addr.do_send(ChangeSubscriptions { add: Vec::new(), remove: gone });
            }
        }
        for index in emptied {
            if let Some(conn) = self.connections.remove(&index) {
                tracing::info!(connection = %conn.id, "connection closed: it carries no stream any more");
                conn.addr.do_send(StopStream);
                self.ctx.stats.remove(&conn.id);
            }
        }
        if let Err(e) = self.place(ctx, added.clone()) {
            // Keep what runs consistent with what is wanted.
            for key in &added {
                self.streams.remove(key);
            }
            for key in &removed {
                if let Some(s) = old.get(key) {
                    tracing::warn!(stream = %s.config_name(), "was unsubscribed before the change was refused");
                }
            }
            return Err(e);
        }
        let applied = if added.is_empty() && removed.is_empty() { "none" } else { "subscriptions" };
        tracing::info!(source = %self.spec.name, added = added.len(), removed = removed.len(), streams = self.streams.len(), "streams changed");
        Ok(FollowsChanged {
            follows: self.streams.len(),
            added: added.len(),
            removed: removed.len(),
            applied: applied.into(),
        })
    }
}

impl Handler<GetSourceHealth> for MastodonPlanner {
    type Result = MessageResult<GetSourceHealth>;

    fn handle(&mut self, _: GetSourceHealth, _: &mut Context<Self>) -> Self::Result {
        let mut h = SourceHealth {
            source: self.spec.name.to_string(),
            follows: self.streams.len(),
            healthy: vec![],
            unhealthy: vec![],
            failed: self.rejections.clone(),
            non_full: vec![],
        };
        let per = self.per_connection();
        for c in self.connections.values() {
            let snap = c.stats.snapshot();
            match snap.state {
                ConnectionState::Failed => h.failed.push((c.id.to_string(), snap.last_error.unwrap_or_default())),
                ConnectionState::Stalled | ConnectionState::BackingOff => h.unhealthy.push(c.id.to_string()),
                _ => h.healthy.push(c.id.to_string()),
            }
            if c.streams.len() < per {
                h.non_full.push(c.id.to_string());
            }
        }
        MessageResult(h)
    }
}

impl Handler<StopSource> for MastodonPlanner {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: StopSource, _: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        let addrs: Vec<_> = std::mem::take(&mut self.connections).into_values().map(|c| c.addr).collect();
        Box::pin(
            async move {
                for addr in addrs {
                    let _ = addr.send(StopStream).await;
                }
            }
            .into_actor(self)
            .map(|_, act, _| act.flush_positions()),
        )
    }
}
