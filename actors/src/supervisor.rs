//! The process's top actor: starts every source over a pool of stream
//! threads (each through its [`SourceHandle`], whatever its kind), writes
//! the periodic stats line, notices when every source failed for good, and
//! owns the graceful stop (streams first, then sinks). Named
//! `StreamSupervisor` so it never collides with `actix::Supervisor`.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::connection::stats::{ConnectionState, StatsRegistry};
use crate::coordination::{CoordinationSettings, CoordinatorHandle, Leases, Reshare};
use crate::messages::{FollowsChanged, SourceFailed, SourceHealth};
use crate::metrics::Metrics;
use crate::sinks::runtime::SinkHandle;
use crate::source::{PlannerContext, Source, SourceHandle};

/// How long past `stop_timeout_s` a sink may take to put what it has
/// queued into its spill and close, before the stop goes on without it.
const STOP_GRACE: Duration = Duration::from_secs(5);

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

/// The running source of that name, if any.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Option<SourceHandle>")]
pub struct GetSource {
    /// Source name.
    pub source: String,
}

/// Every source's health.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Vec<SourceHealth>")]
pub struct GetHealth;

/// Re-read the config and apply what changed to every running source
/// (`POST /update`, seed 002's `/update`). Answered per source.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Result<Vec<(String, FollowsChanged)>, String>")]
pub struct ReloadSources;

/// Re-reads the config's sources (`POST /update`). Supplied by the
/// application, which knows where the config lives.
pub type ReloadHook = Arc<dyn Fn() -> Result<Vec<Arc<dyn Source>>, String> + Send + Sync>;

/// Starts and stops everything that streams.
pub struct StreamSupervisor {
    sources: Vec<Arc<dyn Source>>,
    sinks: Arc<[SinkHandle]>,
    metrics: Metrics,
    stats: StatsRegistry,
    stream_threads: usize,
    arbiters: Vec<Arbiter>,
    handles: BTreeMap<String, SourceHandle>,
    failed: HashSet<Arc<str>>,
    state_dir: PathBuf,
    reload: Option<ReloadHook>,
    stats_interval: Duration,
    /// How long the graceful stop may take (`[service] stop_timeout_s`).
    stop_timeout: Duration,
    last_tick: (Instant, u64),
    stopping: bool,
    /// Stop the actix System after the graceful stop (false in embedded uses such as `probe`).
    stop_system: bool,
    /// What the planners were started with (kept to restart a source that
    /// moves here or away under coordination).
    planner_ctx: Option<PlannerContext>,
    /// `[service] coordination`: the leases and the thread that keeps them.
    coordination: Option<(CoordinationSettings, Arc<Leases>, ReloadHook)>,
    coordinator: Option<CoordinatorHandle>,
    /// Whether each source runs here (single-connection sources under coordination move whole).
    running_here: BTreeMap<String, bool>,
}

impl StreamSupervisor {
    /// A supervisor for validated sources and started sinks.
    pub fn new(
        sources: Vec<Arc<dyn Source>>,
        sinks: Vec<SinkHandle>,
        metrics: Metrics,
        stats: StatsRegistry,
        stats_interval: Duration,
    ) -> Self {
        StreamSupervisor {
            sources,
            sinks: sinks.into(),
            metrics,
            stats,
            stream_threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            arbiters: Vec::new(),
            handles: BTreeMap::new(),
            failed: HashSet::new(),
            state_dir: PathBuf::from("state"),
            reload: None,
            stats_interval,
            stop_timeout: Duration::from_secs(30),
            last_tick: (Instant::now(), 0),
            stopping: false,
            stop_system: true,
            planner_ctx: None,
            coordination: None,
            coordinator: None,
            running_here: BTreeMap::new(),
        }
    }

    /// Carry the shards whose leases this instance holds in Redis; what it
    /// carries changes as instances come and go, and `rebuild` re-reads the
    /// sources cut to the leases then held.
    pub fn coordination(mut self, settings: CoordinationSettings, leases: Arc<Leases>, rebuild: ReloadHook) -> Self {
        self.coordination = Some((settings, leases, rebuild));
        self
    }

    /// Where sources keep follow changes and resume positions (default `state`).
    pub fn state_dir(mut self, dir: PathBuf) -> Self {
        self.state_dir = dir;
        self
    }

    /// How long a graceful stop may take (default 30 s): past it, what the
    /// sinks still have queued stays in their spill for the next start.
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// How `ReloadSources` re-reads the config.
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
        let gaps: u64 =
            self.sources.iter().map(|s| self.metrics.gaps_total.get_or_create(&Metrics::source(s.name())).get()).sum();
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
}

impl Actor for StreamSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.arbiters = (0..self.stream_threads.max(1)).map(|_| Arbiter::new()).collect();
        let pctx = PlannerContext {
            sinks: self.sinks.clone(),
            metrics: self.metrics.clone(),
            stats: self.stats.clone(),
            arbiters: self.arbiters.iter().map(|a| a.handle()).collect(),
            on_failed: ctx.address().recipient(),
            state_dir: self.state_dir.clone(),
        };
        for source in &self.sources {
            self.handles.insert(source.name().to_owned(), source.start(pctx.clone()));
            self.running_here.insert(source.name().to_owned(), source.share().runs_here);
        }
        self.planner_ctx = Some(pctx);
        if let Some((settings, leases, _)) = &self.coordination {
            let names = self.sources.iter().map(|s| s.name().to_owned()).collect();
            match crate::coordination::coordinator::start(settings, leases.clone(), names, ctx.address().recipient()) {
                Ok(handle) => {
                    tracing::info!(instance = %leases.me(), lease_ms = settings.lease.as_millis() as u64, buckets = leases.buckets(), "coordinating through leases in Redis");
                    self.coordinator = Some(handle);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the lease thread; stopping");
                    ctx.notify(Shutdown { exit_code: 1 });
                }
            }
        }
        if !self.stats_interval.is_zero() {
            ctx.run_interval(self.stats_interval, |act, _| act.stats_line());
        }
        if self.sources.is_empty() {
            tracing::warn!("no sources configured; nothing to stream");
        }
    }
}

impl Handler<SourceFailed> for StreamSupervisor {
    type Result = ();

    fn handle(&mut self, msg: SourceFailed, ctx: &mut Context<Self>) {
        self.failed.insert(msg.source);
        if !self.stopping && self.failed.len() == self.sources.len() {
            tracing::error!("every source failed for good; stopping");
            ctx.notify(Shutdown { exit_code: EXIT_ALL_SOURCES_FAILED });
        }
    }
}

impl Handler<GetSource> for StreamSupervisor {
    type Result = Option<SourceHandle>;

    fn handle(&mut self, msg: GetSource, _: &mut Context<Self>) -> Self::Result {
        self.handles.get(&msg.source).cloned()
    }
}

impl Handler<GetHealth> for StreamSupervisor {
    type Result = ResponseFuture<Vec<SourceHealth>>;

    fn handle(&mut self, _: GetHealth, _: &mut Context<Self>) -> Self::Result {
        let handles: Vec<SourceHandle> = self.handles.values().cloned().collect();
        Box::pin(async move {
            let mut out = Vec::new();
            for handle in handles {
                if let Some(h) = handle.health().await {
                    out.push(h);
                }
            }
            out
        })
    }
}

impl Handler<ReloadSources> for StreamSupervisor {
    type Result = ResponseFuture<Result<Vec<(String, FollowsChanged)>, String>>;

    fn handle(&mut self, _: ReloadSources, _: &mut Context<Self>) -> Self::Result {
        let reloaded = match &self.reload {
            Some(hook) => hook(),
            None => Err("this service was started without a config file to re-read".to_owned()),
        };
        let handles = self.handles.clone();
        Box::pin(async move {
            let mut out = Vec::new();
            for source in reloaded? {
                // A new source, or one whose kind changed, needs a restart.
                let Some(handle) = handles.get(source.name()).filter(|h| h.kind() == source.kind()) else {
                    continue;
                };
                let name = source.name().to_owned();
                match handle.reload(source).await {
                    Ok(Ok(changed)) => out.push((name, changed)),
                    Ok(Err(e)) => return Err(format!("{name}: {e}")),
                    Err(e) => return Err(format!("{name}: {e}")),
                }
            }
            Ok(out)
        })
    }
}

impl Handler<Reshare> for StreamSupervisor {
    type Result = ResponseActFuture<Self, ()>;

    /// The leases held changed: every source is rebuilt with the new share
    /// and applied like a `POST /update` (a single-connection source that
    /// moved here or away is started or stopped), the take-overs' gap events
    /// are written, and only then may the lease thread release what this
    /// instance let go (its positions are written by then).
    fn handle(&mut self, msg: Reshare, _: &mut Context<Self>) -> Self::Result {
        let rebuilt = match (&self.coordination, self.stopping) {
            (_, true) => Ok(Vec::new()),
            (Some((_, _, rebuild)), false) => rebuild(),
            (None, false) => Err("no config to rebuild the sources from".to_owned()),
        };
        let handles = self.handles.clone();
        let retry = msg.clone();
        Box::pin(
            async move {
                let sources = rebuilt?;
                let mut restarts = Vec::new();
                let mut failed = Vec::new();
                for source in sources {
                    let Some(handle) = handles.get(source.name()).filter(|h| h.kind() == source.kind()) else {
                        continue;
                    };
                    let share = source.share();
                    if share.whole_source() {
                        // One unit: it runs wholly here or wholly elsewhere.
                        restarts.push(source);
                        continue;
                    }
                    match handle.reload(source.clone()).await {
                        Ok(Ok(changed)) if changed.added + changed.removed > 0 => {
                            tracing::info!(source = %source.name(), carried = share.carried, of = share.total, added = changed.added, removed = changed.removed, "share changed")
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => failed.push(format!("{}: {e}", source.name())),
                        Err(e) => failed.push(format!("{}: {e}", source.name())),
                    }
                }
                for t in &msg.takeovers {
                    tracing::warn!(source = %t.source, bucket = t.bucket, previous = %t.previous, from = %t.from, to = %t.to, "shard taken over: writing a gap event");
                }
                let mut by_source: BTreeMap<String, Vec<_>> = BTreeMap::new();
                for t in msg.takeovers {
                    by_source.entry(t.source.clone()).or_default().push(t);
                }
                Ok::<_, String>((restarts, by_source, failed))
            }
            .into_actor(self)
            .then(move |result, act, _| {
                let mut restarted = Vec::new();
                let (mut by_source, mut failed) = (BTreeMap::new(), Vec::new());
                match result {
                    Ok((restarts, takeovers, f)) => {
                        by_source = takeovers;
                        failed = f;
                        for source in restarts {
                            let runs_here = source.share().runs_here;
                            let was = act.running_here.get(source.name()).copied().unwrap_or(true);
                            if runs_here == was {
                                continue;
                            }
                            if let (Some(old), Some(pctx)) = (act.handles.get(source.name()).cloned(), act.planner_ctx.clone()) {
                                tracing::info!(source = %source.name(), runs_here, "the source moves {}", if runs_here { "here" } else { "away" });
                                act.running_here.insert(source.name().to_owned(), runs_here);
                                restarted.push((old, source, pctx));
                            }
                        }
                    }
                    Err(e) => failed.push(e),
                }
                let generation = retry.generation;
                let handles = act.handles.clone();
                async move {
                    let mut started = Vec::new();
                    for (old, source, pctx) in restarted {
                        old.stop().await;
                        started.push(source.start(pctx));
                    }
                    for (name, takeovers) in by_source {
                        let handle = started.iter().find(|h| h.name() == name).or_else(|| handles.get(&name));
                        if let Some(handle) = handle {
                            handle.taken_over(takeovers).await;
                        }
                    }
                    (started, failed)
                }
                .into_actor(act)
                .map(move |(started, failed), act, ctx| {
                    for handle in started {
                        act.handles.insert(handle.name().to_owned(), handle);
                    }
                    if failed.is_empty() {
                        if let Some(c) = &act.coordinator {
                            c.applied(generation);
                        }
                    } else {
                        // Keep the leases it let go until the change holds.
                        tracing::error!(errors = %failed.join("; "), "cannot apply the new share yet; trying again in 1 s");
                        let mut again = retry.clone();
                        again.takeovers.clear();
                        ctx.notify_later(again, Duration::from_secs(1));
                    }
                })
            }),
        )
    }
}

impl Handler<Shutdown> for StreamSupervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Shutdown, _: &mut Context<Self>) -> Self::Result {
        let first = !self.stopping;
        self.stopping = true;
        // Sources stay listed so /health and /streams keep answering while the stop drains.
        let handles: Vec<SourceHandle> = self.handles.values().cloned().collect();
        let sinks = self.sinks.clone();
        let stop_system = self.stop_system && first;
        let deadline = Instant::now() + self.stop_timeout;
        for sink in sinks.iter() {
            sink.begin_stop(deadline);
        }
        Box::pin(
            async move {
                if first {
                    tracing::info!(exit_code = msg.exit_code, "stopping: closing streams, then flushing sinks");
                }
                for handle in &handles {
                    handle.stop().await;
                }
                for sink in sinks.iter() {
                    // Past the deadline a sink spills what is queued, which is
                    // quick; only a thread stuck in one write(2) (a hung mount)
                    // outlasts the grace, and is then left behind.
                    let left = deadline.saturating_duration_since(Instant::now()) + STOP_GRACE;
                    let drained = tokio::time::timeout(left, async {
                        if let Err(e) = sink.flush().await {
                            tracing::error!(sink = sink.name(), error = %e, "final flush failed");
                        }
                        sink.stop().await;
                    })
                    .await;
                    if drained.is_err() {
                        tracing::error!(
                            sink = sink.name(),
                            queued = sink.queue_depth(),
                            "sink did not finish within stop_timeout_s: it is stuck in a write; its queued events are lost"
                        );
                    }
                }
            }
            .into_actor(self)
            .map(move |_, act, _| {
                // Positions are written by now: the leases can go to the others.
                if let Some(mut c) = act.coordinator.take() {
                    c.stop();
                }
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
