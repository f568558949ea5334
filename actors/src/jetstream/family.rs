//! Jetstream's shard logic for the `ShardPlanner`: DIDs packed into
//! connections of `dids_per_connection` (every DID on one connection when
//! none is named), follow changes sent as `options_update` on the
//! connections concerned only (a shard left empty is closed, never sent an
//! empty filter, which would mean every DID), consolidation into the fewest
//! connections, and the cursors kept in `state_dir` so a restart resumes
//! each DID where the connection that carried it stood.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::config::JetstreamSpec;
use super::cursor::{BucketCursors, CursorStore, Previous, Resume};
use super::protocol::{JetstreamConnection, JetstreamProtocol, SetFilter};
use super::syntax::is_did;
use crate::connection::stats::Carries;
use crate::coordination::Leases;
use crate::error::DisconnectCause;
use crate::follow_delta::{FollowDelta, FollowStore};
use crate::messages::{ChangeFollows, Consolidated, FollowsChanged, PlanError};
use crate::packing::{consolidate, solve_site, Assignment};
use crate::planner::{Ctx, Family, ShardPlanner, HANDOVER_OVERLAP};
use crate::scale::Placement;

/// How often changed cursors are written to `state_dir`.
const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// What the planner keeps per Jetstream connection.
pub struct JetstreamShard {
    /// Its DIDs; `None` = every DID.
    dids: Option<BTreeSet<String>>,
    /// Where the previous run left its DIDs (start only).
    resume: Option<Resume>,
    /// Taking DIDs from a connection that still carries them (consolidation).
    moving: bool,
}

/// A Jetstream source's planning state.
pub struct JetstreamFamily {
    spec: JetstreamSpec,
    hosts: Arc<[String]>,
    delta: FollowDelta<String>,
    /// Where `delta` is kept.
    follow_store: Option<FollowStore>,
    store: Arc<CursorStore>,
    previous: Previous,
    /// Under coordination: the leases and the cursors per bucket in Redis.
    buckets: Option<(Arc<Leases>, BucketCursors)>,
}

type P = ShardPlanner<JetstreamFamily>;

impl JetstreamFamily {
    /// The planning state of a validated source.
    pub fn new(spec: JetstreamSpec) -> Self {
        JetstreamFamily {
            hosts: spec.hosts.clone().into(),
            spec,
            delta: FollowDelta::default(),
            follow_store: None,
            buckets: None,
            store: Arc::new(CursorStore::in_memory()),
            previous: Previous::default(),
        }
    }

    /// Every DID: the config names none and the API added none.
    fn every_did(&self) -> bool {
        self.spec.every_did && self.delta.added.is_empty()
    }

    /// The config's DIDs (already cut to this instance's share) with the
    /// API's changes, of which only those this instance carries.
    fn desired(&self) -> BTreeSet<String> {
        let placement = &self.spec.share.placement;
        self.delta.apply(&self.spec.dids).into_iter().filter(|d| placement.owns(&self.spec.name, d)).collect()
    }

    fn flush(&self) {
        if let Some((leases, remote)) = &self.buckets {
            let name = &self.spec.name;
            let held = leases.held(name);
            let mut cursors = self.store.by_bucket(|did| leases.bucket(name, did.unwrap_or("")));
            cursors.retain(|b, _| held.contains(b));
            if let Err(e) = remote.write(&cursors) {
                tracing::error!(source = %name, error = %e, "cannot write Jetstream cursors to the coordination Redis");
            }
            return;
        }
        if let Err(e) = self.store.flush() {
            tracing::error!(source = %self.spec.name, error = %e, "cannot write Jetstream cursors to state_dir");
        }
    }

    fn flush_members(&self) {
        if let Err(e) = self.store.flush_members() {
            tracing::error!(source = %self.spec.name, error = %e, "cannot write the Jetstream shard plan to state_dir");
        }
    }
}

/// Starts a connection for `dids`; at start it resumes where the previous
/// run left them, and the store holds that point at once, so a crash before
/// the first write does not lose it.
fn open_shard(p: &mut P, ctx: &mut Ctx<JetstreamFamily>, dids: Option<BTreeSet<String>>, at_start: bool) {
    let resume = if at_start { p.family.previous.resume_for(dids.as_ref()) } else { None };
    open_resuming(p, ctx, dids, resume);
}

/// Starts a connection for `dids` that resumes at `resume` (if any).
fn open_resuming(p: &mut P, ctx: &mut Ctx<JetstreamFamily>, dids: Option<BTreeSet<String>>, resume: Option<Resume>) {
    let members = dids.as_ref().map(|d| d.iter().cloned().collect());
    let shard = JetstreamShard { dids, resume: resume.clone(), moving: false };
    let Some(index) = p.start_shard(ctx, shard, None) else { return };
    p.family.store.set_members(index, members);
    if let Some(r) = resume {
        p.family.store.advance(index, r.cursor_us, None, r.host.as_deref().unwrap_or(""));
    }
}

fn assignment(p: &P) -> Assignment<String> {
    p.shards
        .iter()
        .filter(|(_, s)| !s.retiring && !s.draining)
        .map(|(i, s)| (*i, s.state.dids.clone().unwrap_or_default()))
        .collect()
}

fn send_filter(p: &P, index: usize) {
    if let Some(s) = p.shards.get(&index) {
        let dids = s.state.dids.as_ref().map(|d| d.iter().cloned().collect::<Vec<_>>());
        p.family.store.set_members(index, dids.clone());
        p.command(index, SetFilter { dids, collections: p.family.spec.collections.clone() });
    }
}

/// Moves the connections to the desired DIDs: removed DIDs leave their
/// connection, added ones fill non-full connections first, the rest open
/// new ones. Returns how it was applied.
fn apply_dids(p: &mut P, ctx: &mut Ctx<JetstreamFamily>) -> &'static str {
    let desired = p.family.desired();
    let plan = solve_site(&assignment(p), &desired, p.family.spec.dids_per_connection);
    let mut touched = BTreeSet::new();
    for (index, ids) in &plan.remove {
        if let Some(s) = p.shards.get_mut(index) {
            if let Some(d) = s.state.dids.as_mut() {
                d.retain(|id| !ids.contains(id));
            }
            touched.insert(*index);
        }
    }
    for (index, ids) in &plan.add {
        if let Some(s) = p.shards.get_mut(index) {
            s.state.dids.get_or_insert_with(BTreeSet::new).extend(ids.iter().cloned());
            touched.insert(*index);
        }
    }
    for index in &plan.close {
        touched.remove(index);
        tracing::info!(source = %p.name(), index, "closing a connection: it carries no DID any more");
        p.family.store.remove(*index);
        p.retire(*index);
    }
    for index in &touched {
        send_filter(p, *index);
    }
    let opened = !plan.open.is_empty();
    for ids in plan.open {
        open_shard(p, ctx, Some(ids), false);
    }
    p.family.flush_members();
    match (touched.is_empty(), opened) {
        (true, false) if plan.close.is_empty() => "none",
        (_, false) => "options_update",
        (true, true) => "new_connections",
        (false, true) => "options_update+new_connections",
    }
}

fn every_did_refusal(p: &P) -> PlanError {
    PlanError::NotApplicable(format!(
        "source `{}` carries every DID (no wanted_dids): name DIDs in the config to follow a list",
        p.name()
    ))
}

/// Under coordination, DIDs this instance starts carrying resume from their
/// bucket's cursor in Redis (where the previous carrier's writes were
/// acknowledged), on connections of their own; DIDs of a bucket without a
/// cursor join the live connections.
fn resume_taken_over(p: &mut P, ctx: &mut Ctx<JetstreamFamily>, dids: BTreeSet<String>) -> Result<(), PlanError> {
    let Some((leases, remote)) = &p.family.buckets else { return Ok(()) };
    let mut by_bucket: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    for did in dids {
        by_bucket.entry(leases.bucket(p.name(), &did)).or_default().insert(did);
    }
    let buckets: Vec<u32> = by_bucket.keys().copied().collect();
    let cursors = remote.read(&buckets).map_err(PlanError::Coordination)?;
    let per = p.family.spec.dids_per_connection.max(1);
    for (b, position) in cursors {
        let Some(dids) = by_bucket.remove(&b) else { continue };
        tracing::info!(source = %p.name(), bucket = b, dids = dids.len(), cursor_us = position.cursor_us, "resuming taken-over DIDs from the cursor in Redis");
        let list: Vec<String> = dids.into_iter().collect();
        for chunk in list.chunks(per) {
            let resume = Resume { cursor_us: position.cursor_us, host: position.host.clone(), seen: None };
            open_resuming(p, ctx, Some(chunk.iter().cloned().collect()), Some(resume));
        }
    }
    Ok(())
}

impl Family for JetstreamFamily {
    type Protocol = JetstreamProtocol;
    type Shard = JetstreamShard;
    type Spec = JetstreamSpec;

    fn start(p: &mut P, ctx: &mut Ctx<Self>) {
        let (store, delta) = FollowStore::open(&p.family.spec.share.placement, &p.ctx.state_dir, p.name());
        (p.family.follow_store, p.family.delta) = (store, delta);
        let placement = p.family.spec.share.placement.clone();
        let opened = match &placement {
            Placement::Leased(leases) => BucketCursors::new(leases.url(), p.name()).and_then(|remote| {
                // A source of every DID is one bucket: resume from its cursor.
                let previous = if p.family.every_did() {
                    let b = leases.bucket(p.name(), "");
                    remote.read(&[b])?.remove(&b).map(Previous::from_position).unwrap_or_default()
                } else {
                    Previous::default()
                };
                p.family.buckets = Some((leases.clone(), remote));
                Ok((CursorStore::in_memory(), previous))
            }),
            Placement::Static(_) => CursorStore::open(CursorStore::dir(&p.ctx.state_dir, p.name())),
        };
        match opened {
            Ok((store, previous)) => {
                if !previous.is_empty() {
                    tracing::info!(source = %p.name(), "resuming from the stored cursors");
                }
                p.family.store = Arc::new(store);
                p.family.previous = previous;
            }
            Err(e) => {
                // Starting from the live tail would silently skip the gap: refuse instead.
                p.fail_source(&format!("cannot read the Jetstream cursors (fix or remove the file): {e}"));
                return;
            }
        }
        ctx.run_interval(FLUSH_EVERY, |p, _| p.family.flush());
        if p.family.every_did() {
            if p.family.spec.share.runs_here {
                open_shard(p, ctx, None, true);
            } else {
                tracing::info!(source = %p.name(), instance = %p.family.spec.share.placement, "another instance runs this source");
            }
        } else {
            let plan = solve_site(&Assignment::new(), &p.family.desired(), p.family.spec.dids_per_connection);
            for ids in plan.open {
                open_shard(p, ctx, Some(ids), true);
            }
        }
        p.family.previous = Previous::default();
        p.family.flush_members();
        p.family.flush();
    }

    fn connection(p: &P, id: &Arc<str>, shard: &JetstreamShard) -> JetstreamConnection {
        let s = &p.family.spec;
        JetstreamConnection {
            index: id.rsplit('/').next().and_then(|n| n.parse().ok()).unwrap_or(0),
            hosts: p.family.hosts.clone(),
            host: 0,
            collections: s.collections.clone(),
            dids: shard.dids.as_ref().map(|d| d.iter().cloned().collect()),
            compress: s.compress,
            max_message_size_bytes: s.max_message_size_bytes,
            cursor_rewind: s.cursor_rewind,
            failover_after: s.failover_after,
            store: p.family.store.clone(),
            resume: shard.resume.clone(),
        }
    }

    fn overlapping(shard: &JetstreamShard) -> bool {
        shard.moving
    }

    fn carries(shard: &JetstreamShard) -> Carries {
        Carries { dids: shard.dids.iter().flatten().cloned().collect(), ..Carries::default() }
    }

    fn follows(p: &P) -> usize {
        p.family.desired().len()
    }

    fn non_full(p: &P, shard: &JetstreamShard) -> bool {
        shard.dids.as_ref().is_some_and(|d| d.len() < p.family.spec.dids_per_connection)
    }

    fn disconnected(p: &mut P, _: &mut Ctx<Self>, _: usize, _: &DisconnectCause) {
        p.family.flush();
    }

    fn change_follows(p: &mut P, ctx: &mut Ctx<Self>, msg: ChangeFollows) -> Result<FollowsChanged, PlanError> {
        if p.family.every_did() {
            return Err(every_did_refusal(p));
        }
        if let Some(bad) = msg.add.iter().chain(&msg.remove).find(|d| !is_did(d)) {
            return Err(PlanError::BadValue(format!(
                "invalid value: `{bad}`, expected a DID (did:plc:..., did:web:...)"
            )));
        }
        let f = &mut p.family;
        let before = f.desired();
        let mut delta = f.delta.clone();
        delta.change(&f.spec.dids, &msg.add, &msg.remove);
        let after: BTreeSet<String> = delta.apply(&f.spec.dids).into_iter().collect();
        let needed = after.len().div_ceil(f.spec.dids_per_connection);
        if needed > f.spec.max_connections {
            return Err(PlanError::TooMany {
                field: "wanted_dids",
                needed,
                reason: format!("max_connections is {}", f.spec.max_connections),
            });
        }
        match &f.follow_store {
            Some(store) => store.save(&delta, &f.spec.dids, &msg.add, &msg.remove).map_err(PlanError::Persist)?,
            None => return Err(PlanError::Persist("the DID change store did not open at start".into())),
        }
        f.delta = delta;
        let added = after.difference(&before).count();
        let removed = before.difference(&after).count();
        let applied = if added + removed == 0 { "none" } else { apply_dids(p, ctx) };
        tracing::info!(source = %p.name(), added, removed, dids = after.len(), applied, "DIDs changed");
        Ok(FollowsChanged { follows: after.len(), added, removed, applied: applied.into() })
    }

    fn reload(p: &mut P, ctx: &mut Ctx<Self>, spec: JetstreamSpec) -> Result<FollowsChanged, PlanError> {
        let f = &mut p.family;
        if spec.every_did != f.spec.every_did {
            return Err(PlanError::NotApplicable(format!(
                "source `{}` switches between every DID and a DID list; restart the service to apply it",
                f.spec.name
            )));
        }
        let before = f.desired();
        // Another instance may have changed the DIDs of the shards this one takes.
        if let Some(store) = f.follow_store.as_ref().filter(|s| s.shared()) {
            f.delta = store.load().map_err(PlanError::Coordination)?;
        }
        let needed = f.delta.apply(&spec.dids).len().div_ceil(spec.dids_per_connection);
        if needed > spec.max_connections {
            return Err(PlanError::TooMany {
                field: "wanted_dids",
                needed,
                reason: format!("max_connections is {}", spec.max_connections),
            });
        }
        let collections_changed = spec.collections != f.spec.collections;
        f.spec.dids = spec.dids;
        f.spec.collections = spec.collections;
        f.spec.share = spec.share;
        let after = f.desired();
        let (added, removed) = (after.difference(&before).count(), before.difference(&after).count());
        if removed > 0 {
            // What goes to another instance resumes there from these cursors.
            f.flush();
        }
        let taken: BTreeSet<String> = after.difference(&before).cloned().collect();
        resume_taken_over(p, ctx, taken)?;
        let mut applied = if added + removed > 0 { apply_dids(p, ctx) } else { "none" };
        if collections_changed {
            let indexes: Vec<usize> = p.shards.keys().copied().collect();
            for index in indexes {
                send_filter(p, index);
            }
            applied = "options_update";
        }
        Ok(FollowsChanged { follows: after.len(), added, removed, applied: applied.into() })
    }

    /// Repacks into the fewest connections: the connections that take DIDs
    /// are sent their new filter first, and the emptied ones close only
    /// after the overlap, written once, so no event of a moving DID is missed.
    fn consolidate(p: &mut P, ctx: &mut Ctx<Self>) -> Result<Consolidated, PlanError> {
        if p.family.every_did() {
            return Err(every_did_refusal(p));
        }
        let current = assignment(p);
        let before = current.len();
        let (moves, close) = consolidate(&current, p.family.spec.dids_per_connection);
        let moved = moves.iter().map(|m| m.ids.len()).sum();
        let mut targets = BTreeSet::new();
        for m in &moves {
            if let Some(to) = p.shards.get_mut(&m.to) {
                to.state.dids.get_or_insert_with(BTreeSet::new).extend(m.ids.iter().cloned());
                to.state.moving = true;
                targets.insert(m.to);
            }
        }
        for index in &targets {
            send_filter(p, *index);
        }
        for index in &close {
            if let Some(s) = p.shards.get_mut(index) {
                s.draining = true;
            }
        }
        p.family.flush_members();
        let after = before - close.len();
        // Twice the handover overlap: the update travels to the server before it applies.
        ctx.run_later(HANDOVER_OVERLAP * 2, move |p, ctx| {
            for index in &close {
                p.family.store.remove(*index);
                p.retire(*index);
            }
            for index in &targets {
                if let Some(s) = p.shards.get_mut(index) {
                    s.state.moving = false;
                }
            }
            p.family.flush_members();
            p.refresh_overlap(ctx);
        });
        Ok(Consolidated { before, after, moved })
    }

    fn stopped(p: &mut P) {
        p.family.flush();
        p.family.flush_members();
    }
}
