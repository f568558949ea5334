//! Twitter's shard logic for the `ShardPlanner`: filter, sample and user
//! streams restart make-before-break when their predicates change, paced by
//! seed 002's update scheduling; site streams take follow changes through
//! each connection's control stream, fill non-full connections first and
//! consolidate into the fewest. API follow changes persist in `state_dir`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::control_stream::{self, ControlOp};
use super::follows::{parse_user_id, FollowDelta};
use super::framing::Delimiting;
use super::plan::{consolidate, solve_site, Assignment, UpdateScheduler};
use super::protocol::{SetRequest, TwitterConnection, TwitterNotice, TwitterProtocol};
use super::request::{twitter_request, StreamRequest, TwitterEndpoint, TwitterQuery};
use super::shards::{plan_shards, SITE_MAX_CONNECT_FOLLOWS};
use super::spec::TwitterSpec;
use super::watermark::Watermark;
use crate::connection::stats::Carries;
use crate::follow_delta::FollowStore;
use crate::messages::{ChangeFollows, Consolidated, FollowsChanged, PlanError};
use crate::planner::{Ctx, Family, Phase, ShardPlanner};

/// What the planner keeps per Twitter connection.
pub struct TwitterShard {
    /// Which credential signs it.
    pub credential: usize,
    /// What the connection should carry.
    pub query: TwitterQuery,
    /// Site streams: the follows the server carries for it now (connect
    /// request plus control-stream changes).
    pub has: BTreeSet<u64>,
    /// Site streams: its control stream, once announced.
    pub control_uri: Option<String>,
    /// A control-stream call is in flight; later changes wait for it.
    pub syncing: bool,
}

/// A Twitter source's planning state.
pub struct TwitterFamily {
    spec: TwitterSpec,
    /// Follows from the config (`follow` + `follow_file`), before API changes.
    config_follows: Vec<u64>,
    delta: FollowDelta,
    /// Where `delta` is kept.
    follow_store: Option<FollowStore>,
    scheduler: UpdateScheduler,
    update_timer: Option<(SpawnHandle, Instant)>,
    /// The newest event every sink wrote, for the next start's restart gap.
    watermark: Arc<Watermark>,
}

/// How often a moved watermark is written to `state_dir`.
const WATERMARK_FLUSH_EVERY: Duration = Duration::from_millis(500);

type P = ShardPlanner<TwitterFamily>;

impl TwitterFamily {
    /// The planning state of a validated source.
    pub fn new(spec: TwitterSpec) -> Self {
        TwitterFamily {
            config_follows: spec.query.follow.clone(),
            delta: FollowDelta::default(),
            follow_store: None,
            scheduler: UpdateScheduler::new(spec.update_min, spec.update_max),
            update_timer: None,
            watermark: Arc::new(Watermark::in_memory()),
            spec,
        }
    }

    fn flush_watermark(&self) {
        if let Err(e) = self.watermark.flush() {
            tracing::error!(source = %self.spec.name, error = %e, "cannot write the written-events watermark");
        }
    }

    fn is_site(&self) -> bool {
        self.spec.endpoint == TwitterEndpoint::Site
    }

    fn site_limit(&self) -> usize {
        self.spec.follow_limit.max(1)
    }

    /// The config's follows (already cut to this instance's share) with the
    /// API's changes, of which only those this instance carries.
    fn desired_follows(&self) -> Vec<u64> {
        let placement = &self.spec.share.placement;
        let mut ids = self.delta.apply(&self.config_follows);
        if self.is_site() && placement.shared() {
            ids.retain(|id| placement.owns(&self.spec.name, &id.to_string()));
        }
        ids
    }

    /// The request for `query`; a site connect request names at most 100 ids.
    fn request_for(&self, query: &TwitterQuery) -> StreamRequest {
        let mut q = query.clone();
        if self.is_site() {
            q.follow.truncate(SITE_MAX_CONNECT_FOLLOWS);
        }
        twitter_request(self.spec.endpoint, &self.spec.base_url, &q)
    }

    /// Keeps the change `add`/`remove` that made `delta`.
    fn persist(&self, delta: &FollowDelta, add: &[u64], remove: &[u64]) -> Result<(), PlanError> {
        match &self.follow_store {
            Some(store) => store.save(delta, &self.config_follows, add, remove).map_err(PlanError::Persist),
            None => Err(PlanError::Persist("the follow store did not open at start".into())),
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
}

/// Starts a connection for `query`; a site stream with nothing to carry is
/// not started (and the shard it would replace is retired).
fn start(p: &mut P, ctx: &mut Ctx<TwitterFamily>, credential: usize, query: TwitterQuery, replaces: Option<usize>) {
    if p.family.is_site() && query.follow.is_empty() {
        if let Some(old) = replaces {
            p.retire(old);
        }
        return;
    }
    if credential >= p.family.spec.credentials.len() {
        tracing::error!(source = %p.name(), credential, "no credential for this shard");
        return;
    }
    let shard = TwitterShard { credential, query, has: BTreeSet::new(), control_uri: None, syncing: false };
    p.start_shard(ctx, shard, replaces);
}

/// Shards that are not being replaced: the current site plan.
fn current_site_assignment(p: &P) -> Assignment {
    let replaced: BTreeSet<usize> = p.shards.values().filter_map(|s| s.replaces).collect();
    p.shards
        .iter()
        .filter(|(i, s)| !replaced.contains(i) && !s.retiring && !s.draining)
        .map(|(i, s)| (*i, s.state.query.follow.iter().copied().collect()))
        .collect()
}

/// Site streams: moves the plan to the desired follows.
fn apply_site(p: &mut P, ctx: &mut Ctx<TwitterFamily>) -> String {
    let desired: BTreeSet<u64> = p.family.desired_follows().into_iter().collect();
    let current = current_site_assignment(p);
    let plan = solve_site(&current, &desired, p.family.site_limit());
    let mut touched = BTreeSet::new();
    for (index, ids) in &plan.remove {
        if let Some(s) = p.shards.get_mut(index) {
            s.state.query.follow.retain(|id| !ids.contains(id));
            touched.insert(*index);
        }
    }
    for (index, ids) in &plan.add {
        if let Some(s) = p.shards.get_mut(index) {
            s.state.query.follow.extend(ids.iter().copied());
            touched.insert(*index);
        }
    }
    for index in &plan.close {
        touched.remove(index);
        p.retire(*index);
    }
    for ids in &plan.open {
        let query = TwitterQuery { follow: ids.iter().copied().collect(), ..p.family.spec.query.clone() };
        start(p, ctx, 0, query, None);
    }
    let mut how = if plan.open.is_empty() { "control_stream" } else { "control_stream+new_connections" };
    for index in touched {
        if sync_shard(p, ctx, index) {
            how = "restart";
        }
    }
    if plan.moves() == 0 {
        how = "none";
    }
    p.family.spec.query.follow = desired.into_iter().collect();
    how.to_owned()
}

/// Brings one site shard's server-side follows to its wanted set: through
/// its control stream when it has one, else the next connect carries the
/// new set, or (when it is streaming without a control stream) a
/// make-before-break restart. Returns true when it restarted.
fn sync_shard(p: &mut P, ctx: &mut Ctx<TwitterFamily>, index: usize) -> bool {
    // A shard on its way out has a successor that carries its follows.
    if p.shards.values().any(|s| s.replaces == Some(index)) {
        return false;
    }
    let request = match p.shards.get(&index) {
        // Leaving: its users are carried elsewhere.
        Some(s) if s.retiring || s.draining => return false,
        Some(s) => p.family.request_for(&s.state.query),
        None => return false,
    };
    p.command(index, SetRequest(request));
    let Some(shard) = p.shards.get_mut(&index) else { return false };
    shard.stats.set_follows(shard.state.query.follow.clone());
    if shard.state.syncing || shard.phase != Phase::Connected {
        return false;
    }
    let want: BTreeSet<u64> = shard.state.query.follow.iter().copied().collect();
    let add: Vec<u64> = want.difference(&shard.state.has).copied().collect();
    let remove: Vec<u64> = shard.state.has.difference(&want).copied().collect();
    if add.is_empty() && remove.is_empty() {
        return false;
    }
    let Some(uri) = shard.state.control_uri.clone() else {
        let (credential, query) = (shard.state.credential, shard.state.query.clone());
        start(p, ctx, credential, query, Some(index));
        return true;
    };
    let Some(creds) = p.family.spec.credentials.get(shard.state.credential).cloned() else { return false };
    shard.state.syncing = true;
    let base = p.family.spec.base_url.clone();
    let timeout = p.family.spec.stall_timeout.min(Duration::from_secs(30));
    let id = shard.id.clone();
    async move {
        // Adds first: a user moving between connections is never on neither.
        control_stream::call(&base, &uri, ControlOp::AddUser, &add, &creds, timeout).await?;
        control_stream::call(&base, &uri, ControlOp::RemoveUser, &remove, &creds, timeout).await?;
        Ok::<_, String>((add, remove))
    }
    .into_actor(p)
    .map(move |result, p, ctx| {
        let Some(shard) = p.shards.get_mut(&index) else { return };
        shard.state.syncing = false;
        match result {
            Ok((add, remove)) => {
                shard.state.has.extend(add);
                shard.state.has.retain(|id| !remove.contains(id));
                tracing::debug!(connection = %id, follows = shard.state.has.len(), "control stream updated");
                // Changes that arrived meanwhile.
                sync_shard(p, ctx, index);
                close_drained(p);
            }
            Err(e) => {
                tracing::warn!(connection = %id, error = %e, "control stream call failed; restarting the connection make-before-break");
                let (credential, query) = (shard.state.credential, shard.state.query.clone());
                start(p, ctx, credential, query, Some(index));
            }
        }
        p.refresh_overlap(ctx);
    })
    .spawn(ctx);
    p.refresh_overlap(ctx);
    false
}

/// Filter, sample and user streams: a predicate change waits for seed
/// 002's schedule, then restarts make-before-break.
fn request_update(p: &mut P, ctx: &mut Ctx<TwitterFamily>) -> String {
    let now = Instant::now();
    let f = &mut p.family;
    // Seed 002: an update about to fire takes the new change with it.
    let soon = f.spec.update_min.min(Duration::from_secs(2));
    if let Some((_, at)) = f.update_timer {
        if at <= now + soon {
            f.scheduler.request(now);
            return "scheduled".into();
        }
    }
    let delay = f.scheduler.request(now);
    if let Some((handle, _)) = f.update_timer.take() {
        ctx.cancel_future(handle);
    }
    tracing::info!(source = %f.spec.name, delay_ms = delay.as_millis() as u64, pending = f.scheduler.pending(), "predicate update scheduled");
    let handle = ctx.run_later(delay, |p, ctx| {
        p.family.update_timer = None;
        apply_update(p, ctx);
        p.refresh_overlap(ctx);
    });
    p.family.update_timer = Some((handle, now + delay));
    if delay.is_zero() {
        "restart".into()
    } else {
        "scheduled".into()
    }
}

fn apply_update(p: &mut P, ctx: &mut Ctx<TwitterFamily>) {
    if p.is_stopping() {
        return;
    }
    p.family.scheduler.applied(Instant::now());
    p.family.spec.query.follow = p.family.desired_follows();
    let shards = match plan_shards(&p.family.spec) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(source = %p.name(), error = %e, "new predicates cannot be planned; keeping the current connections");
            return;
        }
    };
    for shard in &shards {
        // The newest live connection on this credential is the current one
        // (a replacement still connecting included).
        let latest = p
            .shards
            .iter()
            .filter(|(_, s)| s.state.credential == shard.credential && !s.retiring)
            .map(|(i, s)| (*i, s.state.query.clone(), s.replaces))
            .next_back();
        match latest {
            None => start(p, ctx, shard.credential, shard.query.clone(), None),
            Some((_, q, _)) if q == shard.query => {}
            Some((pending, _, Some(original))) => {
                // Superseded before it connected: the newest predicates replace the original.
                p.retire(pending);
                start(p, ctx, shard.credential, shard.query.clone(), Some(original));
            }
            Some((index, _, None)) => start(p, ctx, shard.credential, shard.query.clone(), Some(index)),
        }
    }
    let planned: BTreeSet<usize> = shards.iter().map(|s| s.credential).collect();
    let stale: Vec<usize> = p
        .shards
        .iter()
        .filter(|(_, s)| !planned.contains(&s.state.credential) && !s.retiring)
        .map(|(i, _)| *i)
        .collect();
    for index in stale {
        p.retire(index);
    }
}

/// Applies the desired predicates (site: now, through control streams;
/// others: on seed 002's schedule) and says what changed since `before`.
fn apply_change(
    p: &mut P,
    ctx: &mut Ctx<TwitterFamily>,
    before: &BTreeSet<u64>,
    predicates_changed: bool,
) -> FollowsChanged {
    let after: BTreeSet<u64> = p.family.desired_follows().into_iter().collect();
    let added = after.difference(before).count();
    let removed = before.difference(&after).count();
    let applied = if added + removed == 0 && !predicates_changed {
        "none".to_owned()
    } else if p.family.is_site() {
        apply_site(p, ctx)
    } else {
        request_update(p, ctx)
    };
    FollowsChanged { follows: after.len(), added, removed, applied }
}

/// Closes connections emptied by a consolidation once no control-stream
/// call and no replacement is pending: by then their users are carried
/// elsewhere.
fn close_drained(p: &mut P) {
    let busy = p.shards.values().any(|s| s.state.syncing || s.replaces.is_some());
    if busy {
        return;
    }
    let drained: Vec<usize> = p.shards.iter().filter(|(_, s)| s.draining).map(|(i, _)| *i).collect();
    for index in drained {
        p.retire(index);
    }
}

impl Family for TwitterFamily {
    type Protocol = TwitterProtocol;
    type Shard = TwitterShard;
    type Spec = TwitterSpec;

    fn start(p: &mut P, ctx: &mut Ctx<Self>) {
        let (store, delta) = FollowStore::open(&p.family.spec.share.placement, &p.ctx.state_dir, p.name());
        (p.family.follow_store, p.family.delta) = (store, delta);
        p.family.spec.query.follow = p.family.desired_follows();
        match Watermark::open(Watermark::path(&p.ctx.state_dir, p.name())) {
            Ok(w) => p.family.watermark = Arc::new(w),
            Err(e) => {
                tracing::error!(source = %p.name(), error = %e, "cannot read the written-events watermark; no restart gap this time")
            }
        }
        ctx.run_interval(WATERMARK_FLUSH_EVERY, |p, _| p.family.flush_watermark());
        if !p.family.spec.share.runs_here {
            tracing::info!(source = %p.name(), instance = %p.family.spec.share.placement, "another instance runs this source");
            return;
        }
        if p.family.is_site() {
            apply_site(p, ctx);
            return;
        }
        match plan_shards(&p.family.spec) {
            Ok(shards) => {
                for shard in shards {
                    start(p, ctx, shard.credential, shard.query, None);
                }
            }
            Err(e) => p.fail_source(&format!("the source cannot be planned: {e}")),
        }
    }

    fn connection(p: &P, _id: &Arc<str>, shard: &TwitterShard) -> TwitterConnection {
        let spec = &p.family.spec;
        TwitterConnection {
            request: p.family.request_for(&shard.query),
            credentials: spec.credentials[shard.credential].clone(),
            delimiting: if spec.query.delimited { Delimiting::Length } else { Delimiting::Lines },
            watermark: p.family.watermark.clone(),
        }
    }

    /// A control-stream change in flight: a follow moving between site
    /// connections is added to the new one before it leaves the old one.
    fn overlapping(shard: &TwitterShard) -> bool {
        shard.syncing
    }

    fn carries(shard: &TwitterShard) -> Carries {
        Carries {
            follow: shard.query.follow.clone(),
            track: shard.query.track.clone(),
            locations: shard.query.locations.clone(),
            ..Carries::default()
        }
    }

    fn follows(p: &P) -> usize {
        p.family.spec.query.follow.len()
    }

    fn non_full(p: &P, shard: &TwitterShard) -> bool {
        p.family.is_site() && shard.query.follow.len() < p.family.site_limit()
    }

    fn connected(p: &mut P, ctx: &mut Ctx<Self>, index: usize) {
        sync_shard(p, ctx, index);
        close_drained(p);
    }

    fn disconnected(p: &mut P, _: &mut Ctx<Self>, index: usize, _: &crate::error::DisconnectCause) {
        if let Some(shard) = p.shards.get_mut(&index) {
            // The control stream dies with the connection; the reconnect carries the wanted set.
            shard.state.control_uri = None;
            shard.state.has.clear();
        }
    }

    fn notice(p: &mut P, ctx: &mut Ctx<Self>, index: usize, notice: TwitterNotice) {
        match notice {
            TwitterNotice::Connected { follow } => {
                if let Some(shard) = p.shards.get_mut(&index) {
                    // What the request named, which may predate changes made while it connected.
                    shard.state.has = follow.into_iter().collect();
                }
            }
            TwitterNotice::ControlAnnounced { control_uri } => {
                if let Some(shard) = p.shards.get_mut(&index) {
                    tracing::debug!(connection = %shard.id, control_uri = %control_uri, "control stream announced");
                    shard.state.control_uri = Some(control_uri);
                }
                // Follows beyond what the connect request could name join now.
                sync_shard(p, ctx, index);
            }
        }
    }

    fn change_follows(p: &mut P, ctx: &mut Ctx<Self>, msg: ChangeFollows) -> Result<FollowsChanged, PlanError> {
        if matches!(p.family.spec.endpoint, TwitterEndpoint::Sample | TwitterEndpoint::User) {
            return Err(PlanError::NotApplicable(format!("source `{}` does not take follow ids", p.name())));
        }
        let ids = |list: &[String]| list.iter().map(|t| parse_user_id(t)).collect::<Result<Vec<u64>, String>>();
        let add = ids(&msg.add).map_err(PlanError::BadValue)?;
        let remove = ids(&msg.remove).map_err(PlanError::BadValue)?;
        let share = p.family.spec.share.clone();
        let elsewhere = if p.family.is_site() {
            // Keyed as the config's ids are: their decimal digits.
            let all: Vec<String> = add.iter().chain(&remove).map(u64::to_string).collect();
            share.placement.not_owned(p.name(), &all)
        } else if !share.runs_here {
            let owner = share.placement.owner(p.name(), "");
            msg.add.iter().chain(&msg.remove).map(|id| (id.clone(), owner.clone())).collect()
        } else {
            Vec::new()
        };
        if !elsewhere.is_empty() {
            return Err(PlanError::NotOwned(elsewhere));
        }
        let f = &mut p.family;
        let before: BTreeSet<u64> = f.desired_follows().into_iter().collect();
        let mut delta = f.delta.clone();
        delta.change(&f.config_follows, &add, &remove);
        let after = delta.apply(&f.config_follows);
        f.check_plannable(&after, &f.spec.query.track, &f.spec.query.locations)?;
        f.persist(&delta, &add, &remove)?;
        f.delta = delta;
        Ok(apply_change(p, ctx, &before, false))
    }

    fn reload(p: &mut P, ctx: &mut Ctx<Self>, spec: TwitterSpec) -> Result<FollowsChanged, PlanError> {
        let f = &mut p.family;
        let q = spec.query;
        let before: BTreeSet<u64> = f.desired_follows().into_iter().collect();
        // Another instance may have changed the follows of the shards this one takes.
        if let Some(store) = f.follow_store.as_ref().filter(|s| s.shared()) {
            f.delta = store.load().map_err(PlanError::Coordination)?;
        }
        f.check_plannable(&f.delta.apply(&q.follow), &q.track, &q.locations)?;
        let predicates_changed = q.track != f.spec.query.track || q.locations != f.spec.query.locations;
        f.config_follows = q.follow;
        f.spec.share = spec.share;
        f.spec.query.track = q.track;
        f.spec.query.locations = q.locations;
        Ok(apply_change(p, ctx, &before, predicates_changed))
    }

    fn consolidate(p: &mut P, ctx: &mut Ctx<Self>) -> Result<Consolidated, PlanError> {
        if !p.family.is_site() {
            return Err(PlanError::NotApplicable(format!(
                "source `{}` is not a site stream; only site streams consolidate",
                p.name()
            )));
        }
        let current = current_site_assignment(p);
        let before = current.len();
        let (moves, close) = consolidate(&current, p.family.site_limit());
        let moved = moves.iter().map(|m| m.ids.len()).sum();
        // Targets gain their ids first; sources lose theirs in the same sync,
        // which adds before it removes on each connection.
        for m in &moves {
            if let Some(to) = p.shards.get_mut(&m.to) {
                to.state.query.follow.extend(m.ids.iter().copied());
            }
        }
        for m in &moves {
            if let Some(from) = p.shards.get_mut(&m.from) {
                from.state.query.follow.retain(|id| !m.ids.contains(id));
            }
        }
        for index in &close {
            if let Some(shard) = p.shards.get_mut(index) {
                shard.draining = true;
            }
        }
        let targets: BTreeSet<usize> = moves.iter().map(|m| m.to).collect();
        for index in targets {
            sync_shard(p, ctx, index);
        }
        let after = before - close.len();
        close_drained(p);
        Ok(Consolidated { before, after, moved })
    }

    fn stopping(p: &mut P, ctx: &mut Ctx<Self>) {
        if let Some((handle, _)) = p.family.update_timer.take() {
            ctx.cancel_future(handle);
        }
    }

    fn stopped(p: &mut P) {
        p.family.flush_watermark();
    }
}
