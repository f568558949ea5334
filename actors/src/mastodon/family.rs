//! Mastodon's shard logic for the `ShardPlanner`: finds the streaming host
//! (instance API discovery, B.1), packs the source's streams into
//! connections (SSE: one each; WebSocket: `streams_per_connection` each,
//! keyed by normalised hashtag), applies stream changes by touching only the
//! connections concerned, and keeps the catch-up positions flushed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::discovery::discover_streaming_url;
use super::protocol::{ChangeSubscriptions, MastodonConnection, MastodonProtocol, SubscriptionRejected};
use super::resume::ResumeStore;
use super::spec::{MastodonSpec, Transport};
use super::streams::MastodonStream;
use crate::connection::stats::Carries;
use crate::error::DisconnectCause;
use crate::messages::{ChangeFollows, Consolidated, FollowsChanged, PlanError, SourceHealth};
use crate::planner::{Ctx, Family, Phase, ShardPlanner};

/// How often changed stream positions are written to `state_dir`.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Subscription refusals kept for `/health`.
const MAX_REJECTIONS: usize = 100;

/// What the planner keeps per Mastodon connection: the streams it carries, by key.
pub struct MastodonShard {
    streams: BTreeMap<String, MastodonStream>,
}

/// A Mastodon source's planning state.
pub struct MastodonFamily {
    spec: MastodonSpec,
    streaming_url: Option<String>,
    positions: Arc<ResumeStore>,
    /// Wanted streams by key.
    streams: BTreeMap<String, MastodonStream>,
    rejections: Vec<(String, String)>,
}

type P = ShardPlanner<MastodonFamily>;

impl MastodonFamily {
    /// The planning state of a validated source.
    pub fn new(spec: MastodonSpec) -> Self {
        let streams = spec.streams.iter().map(|s| (s.key(), s.clone())).collect();
        MastodonFamily {
            streaming_url: spec.streaming_url.clone(),
            spec,
            positions: Arc::new(ResumeStore::in_memory()),
            streams,
            rejections: Vec::new(),
        }
    }

    fn flush_positions(&self) {
        if let Err(e) = self.positions.flush() {
            tracing::error!(source = %self.spec.name, error = %e, "cannot write the stream positions");
        }
    }
}

fn not_for_mastodon(p: &P) -> PlanError {
    PlanError::NotApplicable(format!(
        "source `{}` is a mastodon source: change its `streams` in the config and POST /update",
        p.name()
    ))
}

/// Opens connections for every wanted stream no connection carries yet,
/// filling non-full WebSocket connections first (the fullest first).
fn place(p: &mut P, ctx: &mut Ctx<MastodonFamily>, keys: Vec<String>) -> Result<(), PlanError> {
    let per = p.family.spec.per_connection();
    let mut rest: Vec<String> = keys;
    let multiplexed = p.family.spec.transport == Transport::WebSocket;
    let mut room: Vec<(usize, usize)> = p
        .shards
        .iter()
        .filter(|(_, c)| c.phase != Phase::Failed && c.state.streams.len() < per && multiplexed)
        .map(|(i, c)| (*i, per - c.state.streams.len()))
        .collect();
    room.sort_by_key(|(i, free)| (*free, *i));
    let needed = rest.len().saturating_sub(room.iter().map(|r| r.1).sum()).div_ceil(per);
    let live = p.shards.values().filter(|c| c.phase != Phase::Failed).count();
    if live + needed > p.family.spec.max_connections {
        return Err(PlanError::TooMany {
            field: "streams",
            needed: live + needed,
            reason: format!("max_connections is {}", p.family.spec.max_connections),
        });
    }
    for (index, free) in room {
        if rest.is_empty() {
            break;
        }
        let take: Vec<String> = rest.drain(..free.min(rest.len())).collect();
        let add: Vec<MastodonStream> = take.iter().filter_map(|k| p.family.streams.get(k).cloned()).collect();
        let Some(conn) = p.shards.get_mut(&index) else { continue };
        conn.state.streams.extend(add.iter().map(|s| (s.key(), s.clone())));
        p.command(index, ChangeSubscriptions { add, remove: Vec::new() });
    }
    while !rest.is_empty() {
        let streams =
            rest.drain(..per.min(rest.len())).filter_map(|k| p.family.streams.get(&k).map(|s| (k, s.clone())));
        let shard = MastodonShard { streams: streams.collect() };
        p.start_shard(ctx, shard, None);
    }
    Ok(())
}

fn start_all(p: &mut P, ctx: &mut Ctx<MastodonFamily>) {
    let keys: Vec<String> = p.family.streams.keys().cloned().collect();
    if let Err(e) = place(p, ctx, keys) {
        tracing::error!(source = %p.name(), error = %e, "cannot plan the source's streams");
    }
}

impl Family for MastodonFamily {
    type Protocol = MastodonProtocol;
    type Shard = MastodonShard;
    type Spec = MastodonSpec;

    fn start(p: &mut P, ctx: &mut Ctx<Self>) {
        let store = match &p.family.spec.share.placement {
            crate::scale::Placement::Leased(leases) => ResumeStore::remote(leases.url(), p.name()),
            crate::scale::Placement::Static(_) => ResumeStore::open(ResumeStore::path(&p.ctx.state_dir, p.name())),
        };
        match store {
            Ok(store) => p.family.positions = Arc::new(store),
            Err(e) => {
                // Starting from nothing would silently skip the gap: refuse instead.
                p.fail_source(&format!("cannot read the stream positions (fix or remove the file): {e}"));
                return;
            }
        }
        let keys: Vec<String> = p.family.streams.keys().cloned().collect();
        if let Err(e) = p.family.positions.refresh(&keys) {
            tracing::error!(source = %p.name(), error = %e, "cannot read the stream positions from the coordination Redis; the streams start without catch-up");
        }
        ctx.run_interval(FLUSH_EVERY, |p, _| p.family.flush_positions());
        if p.family.streaming_url.is_some() {
            start_all(p, ctx);
            return;
        }
        let (instance, token) = (p.family.spec.instance_url.clone(), p.family.spec.token.clone());
        async move { discover_streaming_url(&instance, &token).await }
            .into_actor(p)
            .map(|found, p, ctx| {
                let url = match found {
                    Ok(url) => {
                        tracing::info!(source = %p.name(), streaming = %url, "streaming host discovered");
                        url
                    }
                    Err(e) => {
                        tracing::warn!(source = %p.name(), error = %e, "streaming host discovery failed; streaming from the instance host");
                        p.family.spec.instance_url.trim_end_matches('/').to_owned()
                    }
                };
                p.family.streaming_url = Some(url);
                if !p.is_stopping() {
                    start_all(p, ctx);
                }
            })
            .spawn(ctx);
    }

    fn connection(p: &P, _id: &Arc<str>, shard: &MastodonShard) -> MastodonConnection {
        let f = &p.family;
        MastodonConnection {
            transport: f.spec.transport,
            streaming_url: f.streaming_url.clone().unwrap_or_else(|| f.spec.instance_url.clone()),
            rest_url: f.spec.instance_url.clone(),
            token: f.spec.token.clone(),
            catch_up: f.spec.catch_up.clone(),
            streams: shard.streams.values().cloned().collect(),
            positions: f.positions.clone(),
        }
    }

    fn carries(shard: &MastodonShard) -> Carries {
        Carries { streams: shard.streams.values().map(MastodonStream::config_name).collect(), ..Default::default() }
    }

    fn follows(p: &P) -> usize {
        p.family.streams.len()
    }

    fn non_full(p: &P, shard: &MastodonShard) -> bool {
        shard.streams.len() < p.family.spec.per_connection()
    }

    fn disconnected(p: &mut P, _: &mut Ctx<Self>, _: usize, _: &DisconnectCause) {
        p.family.flush_positions();
    }

    fn notice(p: &mut P, _: &mut Ctx<Self>, index: usize, notice: SubscriptionRejected) {
        let Some(id) = p.shards.get(&index).map(|s| s.id.to_string()) else { return };
        let status = notice.status.map_or_else(|| "no status".to_owned(), |s| s.to_string());
        if p.family.rejections.len() < MAX_REJECTIONS {
            p.family.rejections.push((id, format!("subscription refused ({status}): {}", notice.message)));
        }
    }

    fn change_follows(p: &mut P, _: &mut Ctx<Self>, _: ChangeFollows) -> Result<FollowsChanged, PlanError> {
        Err(not_for_mastodon(p))
    }

    fn consolidate(p: &mut P, _: &mut Ctx<Self>) -> Result<Consolidated, PlanError> {
        Err(not_for_mastodon(p))
    }

    /// Subscribes what is new and unsubscribes what went, on the
    /// connections concerned only; a connection left with nothing closes.
    fn reload(p: &mut P, ctx: &mut Ctx<Self>, spec: MastodonSpec) -> Result<FollowsChanged, PlanError> {
        let desired: BTreeMap<String, MastodonStream> = spec.streams.into_iter().map(|s| (s.key(), s)).collect();
        let removed: Vec<String> = p.family.streams.keys().filter(|k| !desired.contains_key(*k)).cloned().collect();
        let added: Vec<String> = desired.keys().filter(|k| !p.family.streams.contains_key(*k)).cloned().collect();
        // A stream another instance carried resumes where that one's writes
        // were acknowledged (positions kept in Redis under coordination).
        p.family.positions.refresh(&added).map_err(PlanError::Coordination)?;
        let old = std::mem::replace(&mut p.family.streams, desired);
        p.family.spec.share = spec.share;
        // Removals first: they make room the additions can fill.
        let mut emptied = Vec::new();
        let mut changed = Vec::new();
        for (index, conn) in p.shards.iter_mut() {
            let gone: Vec<String> = conn.state.streams.keys().filter(|k| removed.contains(k)).cloned().collect();
            if gone.is_empty() {
                continue;
            }
            conn.state.streams.retain(|k, _| !gone.contains(k));
            if conn.state.streams.is_empty() {
                emptied.push(*index);
            } else {
                changed.push((*index, gone));
            }
        }
        for (index, gone) in changed {
            p.command(index, ChangeSubscriptions { add: Vec::new(), remove: gone });
        }
        for index in emptied {
            tracing::info!(source = %p.name(), index, "closing a connection: it carries no stream any more");
            p.retire(index);
        }
        if let Err(e) = place(p, ctx, added.clone()) {
            // Keep what runs consistent with what is wanted.
            for key in &added {
                p.family.streams.remove(key);
            }
            for key in &removed {
                if let Some(s) = old.get(key) {
                    tracing::warn!(stream = %s.config_name(), "was unsubscribed before the change was refused");
                }
            }
            return Err(e);
        }
        if !removed.is_empty() {
            p.family.flush_positions();
        }
        let applied = if added.is_empty() && removed.is_empty() { "none" } else { "subscriptions" };
        tracing::info!(source = %p.name(), added = added.len(), removed = removed.len(), streams = p.family.streams.len(), "streams changed");
        Ok(FollowsChanged {
            follows: p.family.streams.len(),
            added: added.len(),
            removed: removed.len(),
            applied: applied.into(),
        })
    }

    fn health(p: &P, health: &mut SourceHealth) {
        health.failed.extend(p.family.rejections.iter().cloned());
    }

    fn stopped(p: &mut P) {
        p.family.flush_positions();
    }
}
