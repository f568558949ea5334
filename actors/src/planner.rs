//! The one `ShardPlanner`, generic over a [`Family`]: per source it owns the
//! shards (one supervised `StreamActor` each), starts and retires them,
//! replaces one make-before-break (the new connection answers first, the old
//! one reads on for a moment, the overlap is written once), follows their
//! lifecycle, reports health, notices when every connection failed for good,
//! and stops them. A family supplies what differs: how its predicates split
//! into shards, how changes reach a live connection, what a shard carries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::connection::actor::{Command, ConnectionSpec, Protocol, Report, Reported, StreamActor};
use crate::connection::backoff::BackoffConfig;
use crate::connection::backoff_actor::BackoffActor;
use crate::connection::stats::{Carries, ConnectionState, ConnectionStats, SourceCounters};
use crate::delivery::dedup::{Dedup, DedupWindow, DEFAULT_WINDOW};
use crate::delivery::handoff::Handoff;
use crate::error::DisconnectCause;
use crate::event::EventKind;
use crate::messages::{
    Batch, ChangeFollows, Consolidate, Consolidated, FollowsChanged, GetSourceHealth, PlanError, SourceFailed,
    SourceHealth, StopSource, StopStream,
};
use crate::source::{PlannerContext, ReloadSource, SourceHandle, TakenOver};

/// How long the old connection of a make-before-break handover keeps reading
/// after the new one answered.
pub const HANDOVER_OVERLAP: Duration = Duration::from_millis(250);

/// The planner's context, as a family's functions get it.
pub type Ctx<F> = Context<ShardPlanner<F>>;

/// A family's notices.
pub type Notice<F> = <<F as Family>::Protocol as Protocol>::Notice;

/// A family's connection commands.
pub type FamilyCommand<F> = <<F as Family>::Protocol as Protocol>::Command;

/// What differs between families, as the `ShardPlanner` asks it. The
/// functions take the planner itself, so a family reaches the shards, the
/// generic helpers ([`ShardPlanner::start_shard`], [`ShardPlanner::retire`])
/// and its own state (`p.family`) alike, and may spawn work on the planner.
pub trait Family: Sized + Unpin + 'static {
    /// The connections' protocol.
    type Protocol: Protocol;
    /// What the family keeps per shard (its share of the predicates).
    type Shard;
    /// The validated source config, as a reload hands it over.
    type Spec: Clone + 'static;

    /// Plans and starts the shards (after any state in `state_dir` is read).
    fn start(p: &mut ShardPlanner<Self>, ctx: &mut Ctx<Self>);

    /// The protocol config of a new connection `id` carrying `shard`.
    fn connection(p: &ShardPlanner<Self>, id: &Arc<str>, shard: &Self::Shard) -> <Self::Protocol as Protocol>::Config;

    /// Whether `shard` is in a change during which another connection of the
    /// source may deliver the same messages (beyond the handovers, retiring
    /// and draining connections the planner itself tracks).
    fn overlapping(_shard: &Self::Shard) -> bool {
        false
    }

    /// What a shard carries, for `/streams` (default: nothing to list).
    fn carries(_shard: &Self::Shard) -> Carries {
        Carries::default()
    }

    /// Follows (or streams) the source should carry, for `/health` (default: none).
    fn follows(_p: &ShardPlanner<Self>) -> usize {
        0
    }

    /// Whether a shard could carry more.
    fn non_full(_p: &ShardPlanner<Self>, _shard: &Self::Shard) -> bool {
        false
    }

    /// Shard `index` answered (after its notices of the connect, and after
    /// the shard it replaces was marked retiring).
    fn connected(_p: &mut ShardPlanner<Self>, _ctx: &mut Ctx<Self>, _index: usize) {}

    /// Shard `index` lost its connection; it reconnects by itself.
    fn disconnected(_p: &mut ShardPlanner<Self>, _ctx: &mut Ctx<Self>, _index: usize, _cause: &DisconnectCause) {}

    /// A notice from shard `index`.
    fn notice(_p: &mut ShardPlanner<Self>, _ctx: &mut Ctx<Self>, _index: usize, _notice: Notice<Self>) {}

    /// `POST /sources/{name}/follows`.
    fn change_follows(
        p: &mut ShardPlanner<Self>,
        _ctx: &mut Ctx<Self>,
        _change: ChangeFollows,
    ) -> Result<FollowsChanged, PlanError> {
        Err(PlanError::NotApplicable(format!("source `{}` does not take follow ids", p.name())))
    }

    /// `POST /update`: the source's config as re-read (default: nothing
    /// changes while it runs; a restart applies the rest).
    fn reload(
        p: &mut ShardPlanner<Self>,
        _ctx: &mut Ctx<Self>,
        _spec: Self::Spec,
    ) -> Result<FollowsChanged, PlanError> {
        Ok(FollowsChanged { follows: Self::follows(p), added: 0, removed: 0, applied: "none".into() })
    }

    /// `POST /sources/{name}/consolidate`.
    fn consolidate(p: &mut ShardPlanner<Self>, _ctx: &mut Ctx<Self>) -> Result<Consolidated, PlanError> {
        Err(PlanError::NotApplicable(format!("source `{}` does not consolidate", p.name())))
    }

    /// Adds what the family knows to `/health` (before the connections are listed).
    fn health(_p: &ShardPlanner<Self>, _health: &mut SourceHealth) {}

    /// The source is stopping: cancel timers (the connections are told next).
    fn stopping(_p: &mut ShardPlanner<Self>, _ctx: &mut Ctx<Self>) {}

    /// Every connection has ended: write what must survive.
    fn stopped(_p: &mut ShardPlanner<Self>) {}
}

/// What the planner needs to know of any source.
#[derive(Debug, Clone)]
pub struct SourceBasics {
    /// Source name.
    pub name: Arc<str>,
    /// Its kind's name.
    pub kind: &'static str,
    /// The event kinds it emits (metrics start at 0 for each).
    pub kinds: &'static [EventKind],
    /// Reconnect rules.
    pub backoff: BackoffConfig,
    /// Stall timeout of its connections.
    pub stall_timeout: Duration,
    /// Largest message kept.
    pub max_message_bytes: usize,
    /// Whether connections of the source can deliver the same message (a
    /// make-before-break overlap) and how its messages are told apart.
    pub dedup: Dedup,
}

/// Where a shard's connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Started, not yet answered.
    Starting,
    /// Streaming.
    Connected,
    /// Failed for good.
    Failed,
}

/// One live connection as the planner sees it.
pub struct Shard<F: Family> {
    /// Connection id, `source/index`.
    pub id: Arc<str>,
    /// Its actor.
    pub addr: Addr<StreamActor<F::Protocol>>,
    /// Its live counters.
    pub stats: Arc<ConnectionStats>,
    /// Where it stands.
    pub phase: Phase,
    /// Make-before-break: the shard this one replaces, retired once this one answers.
    pub replaces: Option<usize>,
    /// Replaced: reading out its overlap before it is stopped. Not part of the plan.
    pub retiring: bool,
    /// Emptied by a consolidation: closes once the connections that took
    /// its share carry it.
    pub draining: bool,
    /// The family's share.
    pub state: F::Shard,
}

/// Owns one source's shards and their connections.
pub struct ShardPlanner<F: Family> {
    basics: SourceBasics,
    /// The family's own state.
    pub family: F,
    /// What the process gave the source.
    pub ctx: PlannerContext,
    /// Live shards by index.
    pub shards: BTreeMap<usize, Shard<F>>,
    backoff: Option<Addr<BackoffActor>>,
    counters: Option<SourceCounters>,
    handoff: Handoff,
    next_index: usize,
    stopping: bool,
    failed_reported: bool,
}

impl<F: Family> ShardPlanner<F> {
    /// A planner for a validated source.
    pub fn new(basics: SourceBasics, family: F, ctx: PlannerContext) -> Self {
        let dedup = match basics.dedup {
            Dedup::Never => None,
            Dedup::Overlaps { unique_ids } => Some(DedupWindow::new(DEFAULT_WINDOW, unique_ids)),
        };
        let handoff = Handoff::new(ctx.sinks.clone(), dedup);
        ShardPlanner {
            basics,
            family,
            ctx,
            shards: BTreeMap::new(),
            backoff: None,
            counters: None,
            handoff,
            next_index: 0,
            stopping: false,
            failed_reported: false,
        }
    }

    /// Starts the planner and returns the handle of its source.
    pub fn start_source(self) -> SourceHandle {
        let (name, kind) = (self.basics.name.clone(), self.basics.kind);
        SourceHandle::new(name, kind, self.start())
    }

    /// The source's name.
    pub fn name(&self) -> &Arc<str> {
        &self.basics.name
    }

    /// What the planner knows of the source.
    pub fn basics(&self) -> &SourceBasics {
        &self.basics
    }

    /// The source is stopping: nothing new may start.
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// Starts a connection carrying `state`; with `replaces`, a
    /// make-before-break replacement of that shard. Returns its index.
    pub fn start_shard(&mut self, ctx: &mut Ctx<F>, state: F::Shard, replaces: Option<usize>) -> Option<usize> {
        let (Some(backoff), Some(counters)) = (self.backoff.clone(), self.counters.clone()) else { return None };
        let index = self.next_index;
        self.next_index += 1;
        let id: Arc<str> = format!("{}/{}", self.basics.name, index).into();
        let config = F::connection(self, &id, &state);
        let spec = ConnectionSpec {
            id: id.clone(),
            source: self.basics.name.clone(),
            stall_timeout: self.basics.stall_timeout,
            reset_after: self.basics.backoff.reset_after,
            max_message_bytes: self.basics.max_message_bytes,
            liveness_factor: self.basics.backoff.liveness_factor,
            liveness_min: self.basics.backoff.liveness_min,
        };
        let carries = F::carries(&state);
        let (follows, streams) = (carries.follow.len() + carries.dids.len(), carries.streams.len());
        let stats = ConnectionStats::new(id.clone(), self.basics.name.clone(), carries, counters);
        self.ctx.stats.add(stats.clone());
        let (batches, reports, actor_stats) = (ctx.address().recipient(), ctx.address().recipient(), stats.clone());
        let make = move |_: &mut Context<StreamActor<F::Protocol>>| {
            StreamActor::new(spec, config, backoff, batches, reports, actor_stats)
        };
        let addr = match self.ctx.arbiters.get(index % self.ctx.arbiters.len().max(1)) {
            Some(arbiter) => actix::Supervisor::start_in_arbiter(arbiter, make),
            None => actix::Supervisor::start(make),
        };
        tracing::info!(connection = %id, follows, streams, replaces = %replaces.map_or_else(|| "nothing".to_owned(), |r| format!("{}/{r}", self.basics.name)), "connection planned");
        let shard =
            Shard { id, addr, stats, phase: Phase::Starting, replaces, retiring: false, draining: false, state };
        self.shards.insert(index, shard);
        self.refresh_overlap(ctx);
        Some(index)
    }

    /// Stops shard `index` and forgets it.
    pub fn retire(&mut self, index: usize) {
        if let Some(shard) = self.shards.remove(&index) {
            tracing::info!(connection = %shard.id, "connection retired");
            shard.addr.do_send(StopStream);
            self.ctx.stats.remove(&shard.id);
        }
    }

    /// Opens the source's de-duplication window while two connections can
    /// deliver the same messages — a replacement not yet answered, a
    /// connection reading out its overlap or draining its share, a family
    /// change in flight — and closes it `HANDOVER_OVERLAP` after the last one
    /// ended, so that what was already in flight is still compared. Call it
    /// after any change to the shards.
    pub fn refresh_overlap(&mut self, ctx: &mut Ctx<F>) {
        if self.overlap_now() {
            self.handoff.set_overlap(true);
        } else if self.handoff.overlapping() {
            ctx.run_later(HANDOVER_OVERLAP, |act, _| {
                if !act.overlap_now() {
                    act.handoff.set_overlap(false);
                }
            });
        }
    }

    fn overlap_now(&self) -> bool {
        self.shards.values().any(|s| s.replaces.is_some() || s.retiring || s.draining || F::overlapping(&s.state))
    }

    /// Sends shard `index` a command (applied live, or at its next connect).
    pub fn command(&self, index: usize, command: FamilyCommand<F>) {
        if let Some(shard) = self.shards.get(&index) {
            shard.addr.do_send(Command(command));
        }
    }

    /// The index of connection `id`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.shards.iter().find(|(_, s)| &*s.id == id).map(|(i, _)| *i)
    }

    /// The source cannot run (its state in `state_dir` is unreadable, its
    /// predicates cannot be planned): tells the supervisor.
    pub fn fail_source(&mut self, why: &str) {
        tracing::error!(source = %self.basics.name, error = %why, "the source cannot start");
        self.failed_reported = true;
        self.ctx.on_failed.do_send(SourceFailed { source: self.basics.name.clone() });
    }

    fn check_failed(&mut self) {
        if !self.stopping
            && !self.failed_reported
            && !self.shards.is_empty()
            && self.shards.values().all(|s| s.phase == Phase::Failed)
        {
            self.failed_reported = true;
            tracing::error!(source = %self.basics.name, "every connection of the source failed for good");
            self.ctx.on_failed.do_send(SourceFailed { source: self.basics.name.clone() });
        }
    }
}

impl<F: Family> Actor for ShardPlanner<F> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.backoff = Some(BackoffActor::new(self.basics.backoff.clone()).start());
        self.counters = Some(SourceCounters::new(&self.ctx.metrics, &self.basics.name, self.basics.kinds));
        F::start(self, ctx);
    }
}

impl<F: Family> Handler<Report<Notice<F>>> for ShardPlanner<F> {
    type Result = ();

    fn handle(&mut self, msg: Report<Notice<F>>, ctx: &mut Context<Self>) {
        let Some(index) = self.index_of(&msg.connection) else { return };
        match msg.what {
            Reported::Connected => {
                let Some(shard) = self.shards.get_mut(&index) else { return };
                shard.phase = Phase::Connected;
                // Make-before-break: the new connection answered; the old one
                // keeps reading a little longer so that nothing sent to it
                // before the new one began is left unread. The overlap
                // window writes what both delivered once.
                if let Some(old) = shard.replaces.take() {
                    if let Some(o) = self.shards.get_mut(&old) {
                        o.retiring = true;
                        if o.phase != Phase::Connected {
                            // The old connection was down when the new one
                            // answered: nothing overlapped, and its own gap dies
                            // with it, so the hand-over names the hole.
                            let gap = handover_gap(&self.basics.name, &msg.connection, &o.stats);
                            if let Some(counters) = &self.counters {
                                counters.gaps.inc();
                            }
                            ctx.wait(self.handoff.deliver(vec![gap], None).into_actor(self));
                        }
                    }
                    ctx.run_later(HANDOVER_OVERLAP, move |act, ctx| {
                        act.retire(old);
                        act.refresh_overlap(ctx);
                    });
                }
                F::connected(self, ctx, index);
            }
            Reported::Disconnected(cause) => {
                if let Some(shard) = self.shards.get_mut(&index) {
                    shard.phase = Phase::Starting;
                }
                F::disconnected(self, ctx, index, &cause);
            }
            Reported::Failed(_) => {
                if let Some(shard) = self.shards.get_mut(&index) {
                    shard.phase = Phase::Failed;
                    if shard.replaces.take().is_some() {
                        tracing::warn!(connection = %msg.connection, "replacement failed; the connection it was to replace stays");
                    }
                }
                self.check_failed();
            }
            Reported::Notice(notice) => F::notice(self, ctx, index, notice),
        }
        self.refresh_overlap(ctx);
    }
}

impl<F: Family> Handler<Batch> for ShardPlanner<F> {
    type Result = ResponseFuture<usize>;

    /// De-duplicates the batch against the other connections' while an
    /// overlap is open, then queues it in every sink. The answer waits for
    /// the sinks' queues (backpressure on that connection only); batches of
    /// other connections are handled meanwhile.
    fn handle(&mut self, msg: Batch, _: &mut Context<Self>) -> Self::Result {
        let (events, duplicates) = self.handoff.filter(msg.events);
        let queued = self.handoff.deliver(events, msg.ack);
        Box::pin(async move {
            queued.await;
            duplicates
        })
    }
}

impl<F: Family> Handler<ChangeFollows> for ShardPlanner<F> {
    type Result = Result<FollowsChanged, PlanError>;

    fn handle(&mut self, msg: ChangeFollows, ctx: &mut Context<Self>) -> Self::Result {
        let changed = F::change_follows(self, ctx, msg);
        self.refresh_overlap(ctx);
        changed
    }
}

impl<F: Family> Handler<ReloadSource> for ShardPlanner<F> {
    type Result = Result<FollowsChanged, PlanError>;

    fn handle(&mut self, msg: ReloadSource, ctx: &mut Context<Self>) -> Self::Result {
        match msg.0.as_any().downcast_ref::<F::Spec>() {
            Some(spec) => {
                let changed = F::reload(self, ctx, spec.clone());
                self.refresh_overlap(ctx);
                changed
            }
            None => Err(PlanError::NotApplicable(format!(
                "source `{}` changed its kind; restart the service to apply it",
                self.basics.name
            ))),
        }
    }
}

/// The gap of a make-before-break hand-over whose old connection was not
/// streaming when the new one answered: from its last byte to now.
fn handover_gap(source: &Arc<str>, new: &Arc<str>, old: &ConnectionStats) -> crate::event::Event {
    let snap = old.snapshot();
    let from = snap.last_byte_ms.or(snap.last_message_ms).and_then(chrono::DateTime::from_timestamp_millis);
    let now = chrono::Utc::now();
    let note =
        format!("{} was {} when {new} replaced it; the overlap could not be confirmed", snap.id, snap.state.as_str());
    let payload = crate::event::GapPayload {
        reason: "handover",
        cause: snap.last_error.as_deref(),
        from,
        to: now,
        note: Some(&note),
        ..crate::event::GapPayload::default()
    };
    tracing::warn!(connection = %new, replaced = %snap.id, "hand-over without an overlap: writing a gap event");
    crate::event::Event::gap(source.clone(), new.clone(), now, payload.to_bytes())
}

impl<F: Family> Handler<TakenOver> for ShardPlanner<F> {
    type Result = ResponseFuture<()>;

    /// One `gap` event per bucket taken over, on the source's ordered path:
    /// from the previous owner's last renewal (or release) to the take-over.
    /// What the family can fetch again (Mastodon's catch-up) follows with
    /// its own gap events.
    fn handle(&mut self, msg: TakenOver, _: &mut Context<Self>) -> Self::Result {
        let stamp = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let connection: Arc<str> = format!("{}/leases", self.basics.name).into();
        let events: Vec<crate::event::Event> = msg
            .0
            .iter()
            .map(|t| {
                let payload = serde_json::json!({
                    "reason": "takeover",
                    "from": stamp(t.from),
                    "to": stamp(t.to),
                    "bucket": t.bucket,
                    "previous_owner": t.previous,
                    "released": t.released,
                    "note": if t.released {
                        "the previous owner let the shard go; its events up to then were written by it"
                    } else {
                        "the previous owner stopped renewing its lease; events it had read but not written are missing unless the family recovers them"
                    },
                });
                crate::event::Event::gap(self.basics.name.clone(), connection.clone(), t.to, payload.to_string().into())
            })
            .collect();
        if let Some(counters) = &self.counters {
            counters.gaps.inc_by(events.len() as u64);
        }
        Box::pin(self.handoff.deliver(events, None))
    }
}

impl<F: Family> Handler<Consolidate> for ShardPlanner<F> {
    type Result = Result<Consolidated, PlanError>;

    fn handle(&mut self, _: Consolidate, ctx: &mut Context<Self>) -> Self::Result {
        let consolidated = F::consolidate(self, ctx);
        self.refresh_overlap(ctx);
        consolidated
    }
}

impl<F: Family> Handler<GetSourceHealth> for ShardPlanner<F> {
    type Result = MessageResult<GetSourceHealth>;

    fn handle(&mut self, _: GetSourceHealth, _: &mut Context<Self>) -> Self::Result {
        let mut h = SourceHealth {
            source: self.basics.name.to_string(),
            follows: F::follows(self),
            healthy: vec![],
            unhealthy: vec![],
            failed: vec![],
            non_full: vec![],
        };
        F::health(self, &mut h);
        for s in self.shards.values() {
            let snap = s.stats.snapshot();
            match snap.state {
                ConnectionState::Failed => h.failed.push((s.id.to_string(), snap.last_error.unwrap_or_default())),
                ConnectionState::Stalled | ConnectionState::BackingOff => h.unhealthy.push(s.id.to_string()),
                _ => h.healthy.push(s.id.to_string()),
            }
            if F::non_full(self, &s.state) {
                h.non_full.push(s.id.to_string());
            }
        }
        MessageResult(h)
    }
}

impl<F: Family> Handler<StopSource> for ShardPlanner<F> {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: StopSource, ctx: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        F::stopping(self, ctx);
        let addrs: Vec<_> = std::mem::take(&mut self.shards).into_values().map(|s| s.addr).collect();
        Box::pin(
            async move {
                for addr in addrs {
                    let _ = addr.send(StopStream).await;
                }
            }
            .into_actor(self)
            .map(|_, act, _| F::stopped(act)),
        )
    }
}
