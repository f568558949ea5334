//! The process's top actor: starts a `ShardPlanner` per source over a pool of
//! stream threads, writes the periodic stats line, notices when every source
//! failed for good, and owns the graceful stop (streams first, then sinks).
//! Named `StreamSupervisor` so it never collides with `actix::Supervisor`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::control_messages::{
    FollowsChanged, GetHealth, GetPlanner, GetSourceHealth, PlannerAddr, ReloadPredicates, SourceHealth,
    SourcePredicates,
};
use crate::mastodon_planner::{MastodonPlanner, MastodonSourceSpec};
use crate::metrics::Metrics;
use crate::shard_planner::{PlannerContext, ShardPlanner, SourceFailed, SourceSpec, StopSource};
use crate::sink_actor::SinkHandle;
use crate::stats::{ConnectionState, StatsRegistry};

/// Exit code when every source failed for good (SPEC section 2).
pub const EXIT_ALL_SOURCES_FAILED: i32 = 3;

/// Stop gracefully: close streams, drain and flush sinks, stop the system
/// with `exit_code`. Answered when everything is flushed.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Shutdown {
    /// The process exit code.
    pub exit_code: i32,
}

/// Re-reads the predicates of every source from the config (`POST /update`):
/// source name to its new predicates. Supplied by the application, which
/// knows where the config lives.
pub type ReloadHook = Arc<dyn Fn() -> Result<Vec<(String, SourcePredicates)>, String> + Send + Sync>;

/// Starts and stops everything that streams.
pub struct StreamSupervisor {
    sources: Vec<SourceSpec>,
    mastodon_sources: Vec<MastodonSourceSpec>,
    sinks: Arc<[SinkHandle]>,
    metrics: Metrics,
    stats: StatsRegistry,
    stream_threads: usize,
    arbiters: Vec<Arbiter>,
    planners: HashMap<String, PlannerAddr>,
    failed: HashSet<Arc<str>>,
    state_dir: PathBuf,
    reload: Option<ReloadHook>,
    stats_interval: Duration,
    last_tick: (Instant, u64),
    stopping: bool,
    /// Stop the actix System after the graceful stop (false in embedded uses such as `probe`).
    stop_system: bool,
}

impl StreamSupervisor {
    /// A supervisor for validated sources and started sinks.
    pub fn new(
        sources: Vec<SourceSpec>,
        sinks: Vec<SinkHandle>,
        metrics: Metrics,
        stats: StatsRegistry,
        stats_interval: Duration,
    ) -> Self {
        StreamSupervisor {
            sources,
            mastodon_sources: Vec::new(),
            sinks: sinks.into(),
            metrics,
            stats,
            stream_threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            arbiters: Vec::new(),
            planners: HashMap::new(),
            failed: HashSet::new(),
            state_dir: PathBuf::from("state"),
            reload: None,
            stats_interval,
            last_tick: (Instant::now(), 0),
            stopping: false,
            stop_system: true,
        }
    }

    /// Mastodon sources to stream too.
    pub fn mastodon_sources(mut self, sources: Vec<MastodonSourceSpec>) -> Self {
        self.mastodon_sources = sources;
        self
    }

    fn source_count(&self) -> usize {
        self.sources.len() + self.mastodon_sources.len()
    }

    /// Where planners persist follow changes (default `state`).
    pub fn state_dir(mut self, dir: PathBuf) -> Self {
        self.state_dir = dir;
        self
    }

    /// How `ReloadPredicates` re-reads the config.
    pub fn reload_hook(mut self, hook: ReloadHook) -> Self {
        self.reload = Some(hook);
        self
    }

    /// Whether the graceful stop also stops the actix System (default true).
    pub fn stop_system(mut self, yes: bool) -> Self {
        self.stop_system = yes;
        self
    }

    fn stats_line(&mut self) {
        let snaps = self.stats.snapshots();
        let total: u64 = snaps.iter().map(|s| s.messages).sum();
        let (then, before) = self.last_tick;
        let secs = then.elapsed().as_secs_f64().max(1e-3);
        let rate = total.saturating_sub(before) as f64 / secs;
        self.last_tick = (Instant::now(), total);
        let mut states: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &snaps {
            *states.entry(s.state.as_str()).or_default() += 1;
        }
        let omitted = self.stats.refresh_limit_omitted(&self.metrics);
        let connected = states.get(ConnectionState::Connected.as_str()).copied().unwrap_or(0);
        let lag: Vec<String> = self.sinks.iter().map(|s| format!("{}={}", s.name(), s.queue_depth())).collect();
        let gaps: u64 = self.metrics_gaps();
        tracing::info!(
            events_per_s = format!("{rate:.1}"),
            events = total,
            connected,
            connections = ?states,
            limit_omitted = omitted,
            gaps,
            sink_lag = %lag.join(","),
            "stats"
        );
    }

    fn metrics_gaps(&self) -> u64 {
        let sources: HashSet<&str> =
            self.sources.iter().map(|s| &*s.name).chain(self.mastodon_sources.iter().map(|s| &*s.name)).collect();
        sources.iter().map(|s| self.metrics.gaps_total.get_or_create(&Metrics::source(s)).get()).sum()
    }
}

impl Actor for StreamSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.arbiters = (0..self.stream_threads.max(1)).map(|_| Arbiter::new()).collect();
        let handles: Vec<ArbiterHandle> = self.arbiters.iter().map(|a| a.handle()).collect();
        let pctx = PlannerContext {
            sinks: self.sinks.clone(),
            metrics: self.metrics.clone(),
            stats: self.stats.clone(),
            arbiters: handles,
            on_failed: ctx.address().recipient(),
            state_dir: self.state_dir.clone(),
        };
        for spec in self.sources.clone() {
            let planner = ShardPlanner::new(spec.clone(), pctx.clone()).start();
            self.planners.insert(spec.name.to_string(), PlannerAddr::Twitter(planner));
        }
        for spec in self.mastodon_sources.clone() {
            let planner = MastodonPlanner::new(spec.clone(), pctx.clone()).start();
            self.planners.insert(spec.name.to_string(), PlannerAddr::Mastodon(planner));
        }
        if !self.stats_interval.is_zero() {
            ctx.run_interval(self.stats_interval, |act, _| act.stats_line());
        }
        if self.source_count() == 0 {
            tracing::warn!("no sources configured; nothing to stream");
        }
    }
}

impl Handler<SourceFailed> for StreamSupervisor {
    type Result = ();

    fn handle(&mut self, msg: SourceFailed, ctx: &mut Context<Self>) {
        self.failed.insert(msg.source);
        if !self.stopping && self.failed.len() == self.source_count() {
            tracing::error!("every source failed for good; stopping");
            ctx.notify(Shutdown { exit_code: EXIT_ALL_SOURCES_FAILED });
        }
    }
}

impl Handler<GetPlanner> for StreamSupervisor {
    type Result = Option<PlannerAddr>;

    fn handle(&mut self, msg: GetPlanner, _: &mut Context<Self>) -> Self::Result {
        self.planners.get(&msg.source).cloned()
    }
}

impl Handler<GetHealth> for StreamSupervisor {
    type Result = ResponseFuture<Vec<SourceHealth>>;

    fn handle(&mut self, _: GetHealth, _: &mut Context<Self>) -> Self::Result {
        let mut planners: Vec<_> = self.planners.iter().map(|(n, a)| (n.clone(), a.clone())).collect();
        planners.sort_by(|a, b| a.0.cmp(&b.0));
        Box::pin(async move {
            let mut out = Vec::new();
            for (_, planner) in planners {
                let health = match planner {
                    PlannerAddr::Twitter(p) => p.send(GetSourceHealth).await,
                    PlannerAddr::Mastodon(p) => p.send(GetSourceHealth).await,
                };
                if let Ok(h) = health {
                    out.push(h);
                }
            }
            out
        })
    }
}

impl Handler<ReloadPredicates> for StreamSupervisor {
    type Result = ResponseFuture<Result<Vec<(String, FollowsChanged)>, String>>;

    fn handle(&mut self, _: ReloadPredicates, _: &mut Context<Self>) -> Self::Result {
        let reloaded = match &self.reload {
            Some(hook) => hook(),
            None => Err("this service was started without a config file to re-read".to_owned()),
        };
        let planners = self.planners.clone();
        Box::pin(async move {
            let mut out = Vec::new();
            for (source, predicates) in reloaded? {
                let answer = match (planners.get(&source), predicates) {
                    (Some(PlannerAddr::Twitter(p)), SourcePredicates::Twitter(m)) => p.send(m).await,
                    (Some(PlannerAddr::Mastodon(p)), SourcePredicates::Mastodon(m)) => p.send(m).await,
                    // A new source, or one whose kind changed: that needs a restart.
                    _ => continue,
                };
                match answer {
                    Ok(Ok(changed)) => out.push((source, changed)),
                    Ok(Err(e)) => return Err(format!("{source}: {e}")),
                    Err(e) => return Err(format!("{source}: {e}")),
                }
            }
            Ok(out)
        })
    }
}

impl Handler<Shutdown> for StreamSupervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Shutdown, _: &mut Context<Self>) -> Self::Result {
        let first = !self.stopping;
        self.stopping = true;
        // Planners stay listed so /health and /streams keep answering while the stop drains.
        let planners: Vec<_> = self.planners.values().cloned().collect();
        let sinks = self.sinks.clone();
        let stop_system = self.stop_system && first;
        Box::pin(
            async move {
                if first {
                    tracing::info!(exit_code = msg.exit_code, "stopping: closing streams, then flushing sinks");
                }
                for planner in &planners {
                    let _ = match planner {
                        PlannerAddr::Twitter(p) => p.send(StopSource).await,
                        PlannerAddr::Mastodon(p) => p.send(StopSource).await,
                    };
                }
                for sink in sinks.iter() {
                    if let Err(e) = sink.flush().await {
                        tracing::error!(sink = sink.name(), error = %e, "final flush failed");
                    }
                    sink.stop().await;
                }
            }
            .into_actor(self)
            .map(move |_, act, _| {
                act.stats_line();
                for arbiter in act.arbiters.drain(..) {
                    arbiter.stop();
                }
                if stop_system {
                    tracing::info!("stopped");
                    System::current().stop_with_code(msg.exit_code);
                }
            }),
        )
    }
}
