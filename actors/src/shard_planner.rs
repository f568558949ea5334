//! One `ShardPlanner` per source: owns the source's predicates, splits them
//! into shards (one connection each), starts a supervised `StreamActor` per
//! shard and keeps the plan true as follows change: site streams through
//! their control streams, everything else by make-before-break restarts
//! paced by seed 002's update scheduling. API follow changes persist in
//! `state_dir`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::backoff::{BackoffActor, BackoffConfig};
use crate::control_messages::{
    ChangeFollows, Consolidate, Consolidated, FollowsChanged, GetSourceHealth, ReplacePredicates, SourceHealth,
};
use crate::control_stream::{self, ControlOp};
use crate::dedup::{DedupWindow, DEFAULT_WINDOW};
use crate::messages::{ControlAnnounced, SetRequest, StopStream, StreamConnected, StreamDisconnected, StreamFailed};
use crate::metrics::Metrics;
use crate::plan::{consolidate, solve_site, Assignment, UpdateScheduler};
use crate::protocol::framing::Delimiting;
use crate::protocol::request::{twitter_request, OAuthCredentials, TwitterEndpoint, TwitterQuery};
use crate::sink_actor::SinkHandle;
use crate::stats::{Carries, ConnectionState, ConnectionStats, SourceCounters, StatsRegistry};
use crate::stream_actor::{ConnectionSpec, LifecycleRecipients, StreamActor};

/// Per-connection limits of the public filter endpoint (protocols.md A.2).
pub const FILTER_MAX_FOLLOWS: usize = 5000;
/// Track phrases per filter connection.
pub const FILTER_MAX_TRACK: usize = 400;
/// Location boxes per filter connection.
pub const FILTER_MAX_LOCATIONS: usize = 25;
/// Ids a site-stream connect request may carry.
pub const SITE_MAX_CONNECT_FOLLOWS: usize = 100;

/// A validated source, as the planner needs it.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// Source name.
    pub name: Arc<str>,
    /// Which stream.
    pub endpoint: TwitterEndpoint,
    /// Scheme and host of the streaming API.
    pub base_url: String,
    /// One or more credentials (filter: one standing connection each).
    pub credentials: Vec<OAuthCredentials>,
    /// Predicates and options; `follow`/`track`/`locations` are split across shards.
    pub query: TwitterQuery,
    /// Follow ids per connection.
    pub follow_limit: usize,
    /// Most connections this source may open.
    pub max_connections: usize,
    /// Stall timeout.
    pub stall_timeout: Duration,
    /// Largest message kept.
    pub max_message_bytes: usize,
    /// Reconnect rules.
    pub backoff: BackoffConfig,
    /// Seed 002's `min_update_delay`: at most one predicate restart per this long.
    pub update_min: Duration,
    /// Seed 002's `max_update_delay`: with one change pending, restart after this long.
    pub update_max: Duration,
}

/// One connection's share of the source's predicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// 0-based index; the connection id is `source/index`.
    pub index: usize,
    /// Which credential signs it.
    pub credential: usize,
    /// Its predicates.
    pub query: TwitterQuery,
}

/// Why a source cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The predicates need more connections than allowed.
    #[error("{field}: {needed} connections needed, but {reason}")]
    TooMany {
        /// The config field that is too long.
        field: &'static str,
        /// Connections it would take.
        needed: usize,
        /// The limit that stops it.
        reason: String,
    },
    /// A filter stream needs at least one predicate.
    #[error("follow/track/locations: a filter stream needs at least one predicate")]
    NoPredicate,
    /// The operation does not apply to this kind of source.
    #[error("{0}")]
    NotApplicable(String),
    /// Persisting the change failed; nothing was applied.
    #[error("cannot persist follows in state_dir: {0}")]
    Persist(String),
}

fn chunks_needed(len: usize, per: usize) -> usize {
    len.div_ceil(per.max(1))
}

/// Splits a source into shards. Pure: the same spec gives the same plan.
pub fn plan_shards(spec: &SourceSpec) -> Result<Vec<Shard>, PlanError> {
    let q = &spec.query;
    match spec.endpoint {
        TwitterEndpoint::Sample | TwitterEndpoint::User => {
            Ok(vec![Shard { index: 0, credential: 0, query: q.clone() }])
        }
        TwitterEndpoint::Filter => {
            if q.follow.is_empty() && q.track.is_empty() && q.locations.is_empty() {
                return Err(PlanError::NoPredicate);
            }
            let per_follow = spec.follow_limit.clamp(1, FILTER_MAX_FOLLOWS);
            let needs = [
                ("follow", chunks_needed(q.follow.len(), per_follow)),
                ("track", chunks_needed(q.track.len(), FILTER_MAX_TRACK)),
                ("locations", chunks_needed(q.locations.len(), FILTER_MAX_LOCATIONS)),
            ];
            let shards = needs.iter().map(|n| n.1).max().unwrap_or(1).max(1);
            let creds = spec.credentials.len();
            for (field, needed) in needs {
                if needed > creds {
                    return Err(PlanError::TooMany {
                        field,
                        needed,
                        reason: format!(
                            "twitter.filter allows one standing connection per credential and {creds} credential(s) are configured"
                        ),
                    });
                }
                if needed > spec.max_connections {
                    return Err(PlanError::TooMany {
                        field,
                        needed,
                        reason: format!("max_connections is {}", spec.max_connections),
                    });
                }
            }
            Ok((0..shards)
                .map(|i| Shard {
                    index: i,
                    credential: i,
                    query: TwitterQuery {
                        follow: nth_chunk(&q.follow, per_follow, i),
                        track: nth_chunk(&q.track, FILTER_MAX_TRACK, i),
                        locations: nth_chunk(&q.locations, FILTER_MAX_LOCATIONS, i),
                        ..q.clone()
                    },
                })
                .collect())
        }
        TwitterEndpoint::Site => {
            // Until control streams carry the rest, a connection holds what its
            // connect request can name.
            let per = spec.follow_limit.clamp(1, SITE_MAX_CONNECT_FOLLOWS);
            let needed = chunks_needed(q.follow.len(), per).max(1);
            if needed > spec.max_connections {
                return Err(PlanError::TooMany {
                    field: "follow",
                    needed,
                    reason: format!("max_connections is {}", spec.max_connections),
                });
            }
            Ok((0..needed)
                .map(|i| Shard {
                    index: i,
                    credential: 0,
                    query: TwitterQuery { follow: nth_chunk(&q.follow, per, i), ..q.clone() },
                })
                .collect())
        }
    }
}

fn nth_chunk<T: Clone>(items: &[T], per: usize, n: usize) -> Vec<T> {
    items.chunks(per.max(1)).nth(n).map(<[T]>::to_vec).unwrap_or_default()
}

/// How long the old connection of a make-before-break handover keeps reading
/// after the new one answered 200.
pub const HANDOVER_OVERLAP: Duration = Duration::from_millis(250);

/// A source whose every connection failed for good.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct SourceFailed {
    /// Source name.
    pub source: Arc<str>,
}

/// Stop every connection of the source; answered once they are told.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopSource;

/// What the planner needs from the process.
#[derive(Clone)]
pub struct PlannerContext {
    /// Sinks every event is offered to.
    pub sinks: Arc<[SinkHandle]>,
    /// Metric families.
    pub metrics: Metrics,
    /// Where connection stats are listed for reporting.
    pub stats: StatsRegistry,
    /// Threads the stream actors are spread over.
    pub arbiters: Vec<ArbiterHandle>,
    /// Told when the source failed for good.
    pub on_failed: Recipient<SourceFailed>,
    /// Where follow changes made through the API are kept across restarts.
    pub state_dir: PathBuf,
}

/// Follow changes made through the API, applied on top of the config's list.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FollowDelta {
    /// Ids added.
    pub added: BTreeSet<u64>,
    /// Ids removed.
    pub removed: BTreeSet<u64>,
}

impl FollowDelta {
    fn apply(&self, base: &[u64]) -> Vec<u64> {
        let mut seen = BTreeSet::new();
        base.iter()
            .chain(self.added.iter())
            .copied()
            .filter(|id| !self.removed.contains(id) && seen.insert(*id))
            .collect()
    }

    /// `state_dir/<source>/follows.json`.
    pub fn path(state_dir: &Path, source: &str) -> PathBuf {
        state_dir.join(source).join("follows.json")
    }

    /// Reads the persisted delta; a missing file is an empty delta.
    pub fn load(path: &Path) -> Result<FollowDelta, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FollowDelta::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes atomically (see [`crate::persist::write_atomically`]).
    pub fn store(&self, path: &Path) -> Result<(), String> {
        let body = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        crate::persist::write_atomically(path, &body)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Started, not yet answered 200.
    Starting,
    /// Streaming.
    Connected,
    /// Failed for good.
    Failed,
}

/// One live connection as the planner sees it.
struct LiveShard {
    id: Arc<str>,
    credential: usize,
    /// What the connection should carry.
    query: TwitterQuery,
    /// Site streams: the follows the server carries for it now (connect
    /// request plus control-stream changes).
    has: BTreeSet<u64>,
    control_uri: Option<String>,
    addr: Addr<StreamActor>,
    stats: Arc<ConnectionStats>,
    phase: Phase,
    /// Make-before-break: the shard this one replaces, retired once this one answers 200.
    replaces: Option<usize>,
    /// A control-stream call is in flight; later changes wait for it.
    syncing: bool,
    /// Replaced: reading out its overlap before it is stopped. Not part of the plan.
    retiring: bool,
    /// Emptied by a consolidation: closes once the connections that took its
    /// follows carry them.
    draining: bool,
}

/// Owns one source's shards and their connections.
pub struct ShardPlanner {
    spec: SourceSpec,
    /// Follows from the config (`follow` + `follow_file`), before API changes.
    config_follows: Vec<u64>,
    delta: FollowDelta,
    ctx: PlannerContext,
    backoff: Option<Addr<BackoffActor>>,
    counters: Option<SourceCounters>,
    dedup: Arc<DedupWindow>,
    shards: BTreeMap<usize, LiveShard>,
    next_index: usize,
    scheduler: UpdateScheduler,
    update_timer: Option<(SpawnHandle, Instant)>,
    stopping: bool,
    failed_reported: bool,
}

impl ShardPlanner {
    /// A planner for a validated source.
    pub fn new(spec: SourceSpec, ctx: PlannerContext) -> Self {
        let scheduler = UpdateScheduler::new(spec.update_min, spec.update_max);
        ShardPlanner {
            config_follows: spec.query.follow.clone(),
            delta: FollowDelta::default(),
            spec,
            ctx,
            backoff: None,
            counters: None,
            dedup: Arc::new(DedupWindow::new(DEFAULT_WINDOW)),
            shards: BTreeMap::new(),
            next_index: 0,
            scheduler,
            update_timer: None,
            stopping: false,
            failed_reported: false,
        }
    }

    fn is_site(&self) -> bool {
        self.spec.endpoint == TwitterEndpoint::Site
    }

    fn site_limit(&self) -> usize {
        self.spec.follow_limit.max(1)
    }

    /// The follow ids a site connect request names: at most 100.
    fn connect_follows(&self, want: &[u64]) -> Vec<u64> {
        if self.is_site() {
            want.iter().copied().take(SITE_MAX_CONNECT_FOLLOWS).collect()
        } else {
            want.to_vec()
        }
    }

    fn request_for(&self, query: &TwitterQuery) -> crate::protocol::request::StreamRequest {
        let mut q = query.clone();
        q.follow = self.connect_follows(&query.follow);
        twitter_request(self.spec.endpoint, &self.spec.base_url, &q)
    }

    /// Starts a connection for `query`; returns its index.
    fn start_shard(
        &mut self,
        ctx: &mut Context<Self>,
        credential: usize,
        query: TwitterQuery,
        replaces: Option<usize>,
    ) -> Option<usize> {
        if self.is_site() && query.follow.is_empty() {
            // A site stream needs users; an emptied connection is closed instead.
            if let Some(old) = replaces {
                self.retire(old);
            }
            return None;
        }
        let (Some(backoff), Some(counters)) = (self.backoff.clone(), self.counters.clone()) else { return None };
        let index = self.next_index;
        self.next_index += 1;
        let id: Arc<str> = format!("{}/{}", self.spec.name, index).into();
        let Some(credentials) = self.spec.credentials.get(credential).cloned() else {
            tracing::error!(connection = %id, "no credential for this shard");
            return None;
        };
        let me = ctx.address();
        let lifecycle = LifecycleRecipients {
            connected: me.clone().recipient(),
            disconnected: me.clone().recipient(),
            failed: me.clone().recipient(),
            control: me.recipient(),
        };
        let spec = ConnectionSpec {
            id: id.clone(),
            source: self.spec.name.clone(),
            request: self.request_for(&query),
            credentials,
            delimiting: if self.spec.query.delimited { Delimiting::Length } else { Delimiting::Lines },
            stall_timeout: self.spec.stall_timeout,
            reset_after: self.spec.backoff.reset_after,
            max_message_bytes: self.spec.max_message_bytes,
        };
        let carries = Carries {
            follow: query.follow.clone(),
            track: query.track.clone(),
            locations: query.locations.clone(),
            streams: Vec::new(),
        };
        let stats = ConnectionStats::new(id.clone(), self.spec.name.clone(), carries, counters);
        self.ctx.stats.add(stats.clone());
        let (sinks, dedup, actor_stats) = (self.ctx.sinks.clone(), self.dedup.clone(), stats.clone());
        let make =
            move |_: &mut Context<StreamActor>| StreamActor::new(spec, backoff, sinks, lifecycle, actor_stats, dedup);
        let addr = match self.ctx.arbiters.get(index % self.ctx.arbiters.len().max(1)) {
            Some(arbiter) => actix::Supervisor::start_in_arbiter(arbiter, make),
            None => actix::Supervisor::start(make),
        };
        tracing::info!(connection = %id, follows = query.follow.len(), replaces = ?replaces.map(|r| format!("{}/{r}", self.spec.name)), "connection planned");
        self.shards.insert(
            index,
            LiveShard {
                id,
                credential,
                query,
                has: BTreeSet::new(),
                control_uri: None,
                addr,
                stats,
                phase: Phase::Starting,
                replaces,
                syncing: false,
                retiring: false,
                draining: false,
            },
        );
        Some(index)
    }

    fn retire(&mut self, index: usize) {
        if let Some(shard) = self.shards.remove(&index) {
            tracing::info!(connection = %shard.id, "connection retired");
            shard.addr.do_send(StopStream);
            self.ctx.stats.remove(&shard.id);
        }
    }

    fn index_of(&self, connection: &str) -> Option<usize> {
        self.shards.iter().find(|(_, s)| &*s.id == connection).map(|(i, _)| *i)
    }

    /// Shards that are not being replaced: the current plan.
    fn current_site_assignment(&self) -> Assignment {
        let replaced: BTreeSet<usize> = self.shards.values().filter_map(|s| s.replaces).collect();
        self.shards
            .iter()
            .filter(|(i, s)| !replaced.contains(i) && !s.retiring && !s.draining)
            .map(|(i, s)| (*i, s.query.follow.iter().copied().collect()))
            .collect()
    }

    fn desired_follows(&self) -> Vec<u64> {
        self.delta.apply(&self.config_follows)
    }

    /// Site streams: move the plan to the desired follows.
    fn apply_site(&mut self, ctx: &mut Context<Self>) -> String {
        let desired: BTreeSet<u64> = self.desired_follows().into_iter().collect();
        let current = self.current_site_assignment();
        let plan = solve_site(&current, &desired, self.site_limit());
        let mut touched = BTreeSet::new();
        for (index, ids) in &plan.remove {
            if let Some(s) = self.shards.get_mut(index) {
                s.query.follow.retain(|id| !ids.contains(id));
                touched.insert(*index);
            }
        }
        for (index, ids) in &plan.add {
            if let Some(s) = self.shards.get_mut(index) {
                s.query.follow.extend(ids.iter().copied());
                touched.insert(*index);
            }
        }
        for index in &plan.close {
            touched.remove(index);
            self.retire(*index);
        }
        for ids in &plan.open {
            let query = TwitterQuery { follow: ids.iter().copied().collect(), ..self.spec.query.clone() };
            self.start_shard(ctx, 0, query, None);
        }
        let mut how = if plan.open.is_empty() { "control_stream" } else { "control_stream+new_connections" };
        for index in touched {
            if self.sync_shard(ctx, index) {
                how = "restart";
            }
        }
        if plan.moves() == 0 {
            how = "none";
        }
        self.spec.query.follow = desired.into_iter().collect();
        how.to_owned()
    }

    /// Brings one site shard's server-side follows to its wanted set: through
    /// its control stream when it has one, else the next connect carries the
    /// new set, or (when it is streaming without a control stream) a
    /// make-before-break restart. Returns true when it restarted.
    fn sync_shard(&mut self, ctx: &mut Context<Self>, index: usize) -> bool {
        // A shard on its way out has a successor that carries its follows.
        if self.shards.values().any(|s| s.replaces == Some(index)) {
            return false;
        }
        let request = match self.shards.get(&index) {
            // Leaving: its users are carried elsewhere.
            Some(s) if s.retiring || s.draining => return false,
            Some(s) => self.request_for(&s.query),
            None => return false,
        };
        let Some(shard) = self.shards.get_mut(&index) else { return false };
        shard.addr.do_send(SetRequest(request));
        shard.stats.set_follows(shard.query.follow.clone());
        if shard.syncing || shard.phase != Phase::Connected {
            return false;
        }
        let want: BTreeSet<u64> = shard.query.follow.iter().copied().collect();
        let add: Vec<u64> = want.difference(&shard.has).copied().collect();
        let remove: Vec<u64> = shard.has.difference(&want).copied().collect();
        if add.is_empty() && remove.is_empty() {
            return false;
        }
        let Some(uri) = shard.control_uri.clone() else {
            let (credential, query) = (shard.credential, shard.query.clone());
            self.start_shard(ctx, credential, query, Some(index));
            return true;
        };
        shard.syncing = true;
        let Some(creds) = self.spec.credentials.get(shard.credential).cloned() else { return false };
        let base = self.spec.base_url.clone();
        let timeout = self.spec.stall_timeout.min(Duration::from_secs(30));
        let id = shard.id.clone();
        async move {
            // Adds first: a user moving between connections is never on neither.
            control_stream::call(&base, &uri, ControlOp::AddUser, &add, &creds, timeout).await?;
            control_stream::call(&base, &uri, ControlOp::RemoveUser, &remove, &creds, timeout).await?;
            Ok::<_, String>((add, remove))
        }
        .into_actor(self)
        .map(move |result, act, ctx| {
            let Some(shard) = act.shards.get_mut(&index) else { return };
            shard.syncing = false;
            match result {
                Ok((add, remove)) => {
                    shard.has.extend(add);
                    shard.has.retain(|id| !remove.contains(id));
                    tracing::debug!(connection = %id, follows = shard.has.len(), "control stream updated");
                    // Changes that arrived meanwhile.
                    act.sync_shard(ctx, index);
                    act.close_drained();
                }
                Err(e) => {
                    tracing::warn!(connection = %id, error = %e, "control stream call failed; restarting the connection make-before-break");
                    let (credential, query) = (shard.credential, shard.query.clone());
                    act.start_shard(ctx, credential, query, Some(index));
                }
            }
        })
        .spawn(ctx);
        false
    }

    /// Filter, sample and user streams: a predicate change waits for seed
    /// 002's schedule, then restarts make-before-break.
    fn request_update(&mut self, ctx: &mut Context<Self>) -> String {
        let now = Instant::now();
        // Seed 002: an update about to fire takes the new change with it.
        let soon = self.spec.update_min.min(Duration::from_secs(2));
        if let Some((_, at)) = self.update_timer {
            if at <= now + soon {
                self.scheduler.request(now);
                return "scheduled".into();
            }
        }
        let delay = self.scheduler.request(now);
        if let Some((handle, _)) = self.update_timer.take() {
            ctx.cancel_future(handle);
        }
        tracing::info!(source = %self.spec.name, delay_ms = delay.as_millis() as u64, pending = self.scheduler.pending(), "predicate update scheduled");
        let handle = ctx.run_later(delay, |act, ctx| {
            act.update_timer = None;
            act.apply_update(ctx);
        });
        self.update_timer = Some((handle, now + delay));
        if delay.is_zero() {
            "restart".into()
        } else {
            "scheduled".into()
        }
    }

    fn apply_update(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        self.scheduler.applied(Instant::now());
        self.spec.query.follow = self.desired_follows();
        let shards = match plan_shards(&self.spec) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(source = %self.spec.name, error = %e, "new predicates cannot be planned; keeping the current connections");
                return;
            }
        };
        for shard in &shards {
            // The newest live connection on this credential is the current one
            // (a replacement still connecting included).
            let latest = self
                .shards
                .iter()
                .filter(|(_, s)| s.credential == shard.credential && !s.retiring)
                .map(|(i, s)| (*i, s.query.clone(), s.replaces))
                .next_back();
            match latest {
                None => {
                    self.start_shard(ctx, shard.credential, shard.query.clone(), None);
                }
                Some((_, q, _)) if q == shard.query => {}
                Some((pending, _, Some(original))) => {
                    // Superseded before it connected: the newest predicates replace the original.
                    self.retire(pending);
                    self.start_shard(ctx, shard.credential, shard.query.clone(), Some(original));
                }
                Some((index, _, None)) => {
                    self.start_shard(ctx, shard.credential, shard.query.clone(), Some(index));
                }
            }
        }
        let planned: BTreeSet<usize> = shards.iter().map(|s| s.credential).collect();
        let stale: Vec<usize> = self
            .shards
            .iter()
            .filter(|(_, s)| !planned.contains(&s.credential) && !s.retiring)
            .map(|(i, _)| *i)
            .collect();
        for index in stale {
            self.retire(index);
        }
    }

    /// Refuses predicates that cannot be planned, before anything changes.
    fn check_plannable(&self, follow: &[u64], track: &[String], locations: &[String]) -> Result<(), PlanError> {
        if self.is_site() {
            let needed = follow.len().div_ceil(self.site_limit());
            if needed > self.spec.max_connections {
                return Err(PlanError::TooMany {
                    field: "follow",
                    needed,
                    reason: format!("max_connections is {}", self.spec.max_connections),
                });
            }
            return Ok(());
        }
        let mut probe = self.spec.clone();
        probe.query.follow = follow.to_vec();
        probe.query.track = track.to_vec();
        probe.query.locations = locations.to_vec();
        plan_shards(&probe).map(|_| ())
    }

    /// Applies the desired predicates (site: now, through control streams;
    /// others: on seed 002's schedule) and says what changed since `before`.
    fn apply_change(
        &mut self,
        ctx: &mut Context<Self>,
        before: &BTreeSet<u64>,
        predicates_changed: bool,
    ) -> FollowsChanged {
        let after: BTreeSet<u64> = self.desired_follows().into_iter().collect();
        let added = after.difference(before).count();
        let removed = before.difference(&after).count();
        let applied = if added + removed == 0 && !predicates_changed {
            "none".to_owned()
        } else if self.is_site() {
            self.apply_site(ctx)
        } else {
            self.request_update(ctx)
        };
        FollowsChanged { follows: after.len(), added, removed, applied }
    }

    /// Closes connections emptied by a consolidation once no control-stream
    /// call and no replacement is pending: by then their users are carried
    /// elsewhere.
    fn close_drained(&mut self) {
        let busy = self.shards.values().any(|s| s.syncing || s.replaces.is_some());
        if busy {
            return;
        }
        let drained: Vec<usize> = self.shards.iter().filter(|(_, s)| s.draining).map(|(i, _)| *i).collect();
        for index in drained {
            self.retire(index);
        }
    }

    fn persist(&self) -> Result<(), PlanError> {
        self.delta.store(&FollowDelta::path(&self.ctx.state_dir, &self.spec.name)).map_err(PlanError::Persist)
    }

    fn check_failed(&mut self) {
        if !self.stopping
            && !self.failed_reported
            && !self.shards.is_empty()
            && self.shards.values().all(|s| s.phase == Phase::Failed)
        {
            self.failed_reported = true;
            tracing::error!(source = %self.spec.name, "every connection of the source failed for good");
            self.ctx.on_failed.do_send(SourceFailed { source: self.spec.name.clone() });
        }
    }
}

impl Actor for ShardPlanner {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        match FollowDelta::load(&FollowDelta::path(&self.ctx.state_dir, &self.spec.name)) {
            Ok(delta) => {
                if delta != FollowDelta::default() {
                    tracing::info!(source = %self.spec.name, added = delta.added.len(), removed = delta.removed.len(), "follow changes restored from state_dir");
                }
                self.delta = delta;
            }
            Err(e) => {
                tracing::error!(source = %self.spec.name, error = %e, "cannot read persisted follow changes; starting from the config")
            }
        }
        self.spec.query.follow = self.desired_follows();
        self.backoff = Some(BackoffActor::new(self.spec.backoff.clone()).start());
        self.counters = Some(SourceCounters::new(&self.ctx.metrics, &self.spec.name));
        if self.is_site() {
            self.apply_site(ctx);
            return;
        }
        match plan_shards(&self.spec) {
            Ok(shards) => {
                for shard in shards {
                    self.start_shard(ctx, shard.credential, shard.query, None);
                }
            }
            Err(e) => {
                tracing::error!(source = %self.spec.name, error = %e, "source cannot be planned");
                self.ctx.on_failed.do_send(SourceFailed { source: self.spec.name.clone() });
            }
        }
    }
}

impl Handler<StreamConnected> for ShardPlanner {
    type Result = ();
    fn handle(&mut self, msg: StreamConnected, ctx: &mut Context<Self>) {
        let Some(index) = self.index_of(&msg.connection) else { return };
        let Some(shard) = self.shards.get_mut(&index) else { return };
        shard.phase = Phase::Connected;
        // What the request named, which may predate changes made while it connected.
        shard.has = msg.follow.into_iter().collect();
        // Make-before-break: the new connection answered 200; the old one
        // keeps reading a little longer so that nothing sent to it before the
        // new subscription began is left unread. The dedup window absorbs the overlap.
        if let Some(old) = shard.replaces.take() {
            if let Some(o) = self.shards.get_mut(&old) {
                o.retiring = true;
            }
            ctx.run_later(HANDOVER_OVERLAP, move |act, _| act.retire(old));
        }
        self.sync_shard(ctx, index);
        self.close_drained();
    }
}

impl Handler<ControlAnnounced> for ShardPlanner {
    type Result = ();
    fn handle(&mut self, msg: ControlAnnounced, ctx: &mut Context<Self>) {
        let Some(index) = self.index_of(&msg.connection) else { return };
        if let Some(shard) = self.shards.get_mut(&index) {
            tracing::debug!(connection = %shard.id, control_uri = %msg.control_uri, "control stream announced");
            shard.control_uri = Some(msg.control_uri);
        }
        // Follows beyond what the connect request could name join now.
        self.sync_shard(ctx, index);
    }
}

impl Handler<StreamDisconnected> for ShardPlanner {
    type Result = ();
    fn handle(&mut self, msg: StreamDisconnected, _: &mut Context<Self>) {
        let Some(index) = self.index_of(&msg.connection) else { return };
        if let Some(shard) = self.shards.get_mut(&index) {
            // The control stream dies with the connection; the reconnect carries the wanted set.
            shard.phase = Phase::Starting;
            shard.control_uri = None;
            shard.has.clear();
        }
    }
}

impl Handler<StreamFailed> for ShardPlanner {
    type Result = ();
    fn handle(&mut self, msg: StreamFailed, _: &mut Context<Self>) {
        let Some(index) = self.index_of(&msg.connection) else { return };
        if let Some(shard) = self.shards.get_mut(&index) {
            shard.phase = Phase::Failed;
        }
        // A replacement that failed leaves the old connection in place.
        if let Some(old) = self.shards.get_mut(&index).and_then(|s| s.replaces.take()) {
            tracing::warn!(connection = %msg.connection, "replacement failed; the connection it was to replace stays");
            let _ = old;
        }
        self.check_failed();
    }
}

impl Handler<ChangeFollows> for ShardPlanner {
    type Result = Result<FollowsChanged, PlanError>;

    fn handle(&mut self, msg: ChangeFollows, ctx: &mut Context<Self>) -> Self::Result {
        if matches!(self.spec.endpoint, TwitterEndpoint::Sample | TwitterEndpoint::User) {
            return Err(PlanError::NotApplicable(format!("source `{}` does not take follow ids", self.spec.name)));
        }
        let before: BTreeSet<u64> = self.desired_follows().into_iter().collect();
        let mut delta = self.delta.clone();
        let in_config: BTreeSet<u64> = self.config_follows.iter().copied().collect();
        for id in &msg.add {
            delta.removed.remove(id);
            if !in_config.contains(id) {
                delta.added.insert(*id);
            }
        }
        for id in &msg.remove {
            delta.added.remove(id);
            if in_config.contains(id) {
                delta.removed.insert(*id);
            }
        }
        let after = delta.apply(&self.config_follows);
        self.check_plannable(&after, &self.spec.query.track, &self.spec.query.locations)?;
        self.delta = delta;
        self.persist()?;
        Ok(self.apply_change(ctx, &before, false))
    }
}

impl Handler<ReplacePredicates> for ShardPlanner {
    type Result = Result<FollowsChanged, PlanError>;

    fn handle(&mut self, msg: ReplacePredicates, ctx: &mut Context<Self>) -> Self::Result {
        let before: BTreeSet<u64> = self.desired_follows().into_iter().collect();
        self.check_plannable(&self.delta.apply(&msg.follow), &msg.track, &msg.locations)?;
        let predicates_changed = msg.track != self.spec.query.track || msg.locations != self.spec.query.locations;
        self.config_follows = msg.follow;
        self.spec.query.track = msg.track;
        self.spec.query.locations = msg.locations;
        Ok(self.apply_change(ctx, &before, predicates_changed))
    }
}

impl Handler<Consolidate> for ShardPlanner {
    type Result = Result<Consolidated, PlanError>;

    fn handle(&mut self, _: Consolidate, ctx: &mut Context<Self>) -> Self::Result {
        if !self.is_site() {
            return Err(PlanError::NotApplicable(format!(
                "source `{}` is not a site stream; only site streams consolidate",
                self.spec.name
            )));
        }
        let current = self.current_site_assignment();
        let before = current.len();
        let (moves, close) = consolidate(&current, self.site_limit());
        let moved = moves.iter().map(|m| m.ids.len()).sum();
        // Targets gain their ids first; sources lose theirs in the same sync,
        // which adds before it removes on each connection.
        for m in &moves {
            if let Some(to) = self.shards.get_mut(&m.to) {
                to.query.follow.extend(m.ids.iter().copied());
            }
        }
        for m in &moves {
            if let Some(from) = self.shards.get_mut(&m.from) {
                from.query.follow.retain(|id| !m.ids.contains(id));
            }
        }
        for index in &close {
            if let Some(shard) = self.shards.get_mut(index) {
                shard.draining = true;
            }
        }
        let targets: BTreeSet<usize> = moves.iter().map(|m| m.to).collect();
        for index in targets {
            self.sync_shard(ctx, index);
        }
        let after = before - close.len();
        self.close_drained();
        Ok(Consolidated { before, after, moved })
    }
}

impl Handler<GetSourceHealth> for ShardPlanner {
    type Result = MessageResult<GetSourceHealth>;

    fn handle(&mut self, _: GetSourceHealth, _: &mut Context<Self>) -> Self::Result {
        let mut h = SourceHealth {
            source: self.spec.name.to_string(),
            follows: self.spec.query.follow.len(),
            healthy: vec![],
            unhealthy: vec![],
            failed: vec![],
            non_full: vec![],
        };
        for s in self.shards.values() {
            let snap = s.stats.snapshot();
            match snap.state {
                ConnectionState::Failed => h.failed.push((s.id.to_string(), snap.last_error.unwrap_or_default())),
                ConnectionState::Stalled | ConnectionState::BackingOff => h.unhealthy.push(s.id.to_string()),
                _ => h.healthy.push(s.id.to_string()),
            }
            if self.is_site() && s.query.follow.len() < self.site_limit() {
                h.non_full.push(s.id.to_string());
            }
        }
        MessageResult(h)
    }
}

impl Handler<StopSource> for ShardPlanner {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, _: StopSource, ctx: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        if let Some((handle, _)) = self.update_timer.take() {
            ctx.cancel_future(handle);
        }
        let addrs: Vec<_> = std::mem::take(&mut self.shards).into_values().map(|s| s.addr).collect();
        Box::pin(async move {
            for addr in addrs {
                let _ = addr.send(StopStream).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(n: usize) -> Vec<OAuthCredentials> {
        (0..n)
            .map(|i| OAuthCredentials {
                consumer_key: format!("k{i}"),
                consumer_secret: "s".into(),
                token: "t".into(),
                token_secret: "ts".into(),
            })
            .collect()
    }

    fn spec(endpoint: TwitterEndpoint, follows: usize, n_creds: usize, limit: usize) -> SourceSpec {
        SourceSpec {
            name: "s".into(),
            endpoint,
            base_url: "http://127.0.0.1:1".into(),
            credentials: creds(n_creds),
            query: TwitterQuery { follow: (1..=follows as u64).collect(), ..Default::default() },
            follow_limit: limit,
            max_connections: 50,
            stall_timeout: Duration::from_secs(90),
            max_message_bytes: 1 << 20,
            backoff: BackoffConfig::default(),
            update_min: Duration::from_secs(120),
            update_max: Duration::from_secs(600),
        }
    }

    #[test]
    fn filter_follows_are_sharded_across_credentials() {
        let plan = plan_shards(&spec(TwitterEndpoint::Filter, 12_000, 3, 5000)).unwrap();
        assert_eq!(plan.iter().map(|s| s.query.follow.len()).collect::<Vec<_>>(), vec![5000, 5000, 2000]);
        assert_eq!(plan.iter().map(|s| s.credential).collect::<Vec<_>>(), vec![0, 1, 2]);
        let all: Vec<u64> = plan.iter().flat_map(|s| s.query.follow.clone()).collect();
        assert_eq!(all, (1..=12_000).collect::<Vec<u64>>());
    }

    #[test]
    fn filter_needs_a_credential_per_connection() {
        let err = plan_shards(&spec(TwitterEndpoint::Filter, 5001, 1, 5000)).unwrap_err();
        assert!(matches!(err, PlanError::TooMany { field: "follow", needed: 2, .. }));
        assert_eq!(plan_shards(&spec(TwitterEndpoint::Filter, 0, 1, 5000)).unwrap_err(), PlanError::NoPredicate);
    }

    #[test]
    fn site_follows_are_packed_per_connection() {
        let plan = plan_shards(&spec(TwitterEndpoint::Site, 250, 1, 100)).unwrap();
        assert_eq!(plan.iter().map(|s| s.query.follow.len()).collect::<Vec<_>>(), vec![100, 100, 50]);
        let mut s = spec(TwitterEndpoint::Site, 6000, 1, 100);
        s.max_connections = 50;
        assert!(matches!(plan_shards(&s), Err(PlanError::TooMany { needed: 60, .. })));
    }

    #[test]
    fn sample_is_one_connection() {
        assert_eq!(plan_shards(&spec(TwitterEndpoint::Sample, 0, 1, 5000)).unwrap().len(), 1);
    }
}
