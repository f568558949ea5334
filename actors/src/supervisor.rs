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
use crate::messages::{FollowsChanged, SourceFailed, SourceHealth};
use crate::metrics::Metrics;
use crate::sinks::runtime::SinkHandle;
use crate::source::{PlannerContext, Source, SourceHandle};

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
    last_tick: (Instant, u64),
    stopping: bool,
    /// Stop the actix System after the graceful stop (false in embedded uses such as `probe`).
    stop_system: bool,
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
            last_tick: (Instant::now(), 0),
            stopping: false,
            stop_system: true,
        }
    }

    /// Where sources keep follow changes and resume positions (default `state`).
    pub fn state_dir(mut self, dir: PathBuf) -> Self {
        self.state_dir = dir;
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

impl Handler<Shutdown> for StreamSupervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Shutdown, _: &mut Context<Self>) -> Self::Result {
        let first = !self.stopping;
        self.stopping = true;
        // Sources stay listed so /health and /streams keep answering while the stop drains.
        let handles: Vec<SourceHandle> = self.handles.values().cloned().collect();
        let sinks = self.sinks.clone();
        let stop_system = self.stop_system && first;
        Box::pin(
            async move {
                if first {
                    tracing::info!(exit_code = msg.exit_code, "stopping: closing streams, then flushing sinks");
                }
                for handle in &handles {
                    handle.stop().await;
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
