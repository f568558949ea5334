//! Starts everything in order — the embedded simulator (when enabled),
//! sinks, the `StreamSupervisor` with every source, the control API, signal
//! handling — and owns the stop: streams close first, then every sink
//! drains and flushes. Also `probe`: one source for a while, counted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use anyhow::Context as _;
use streamherd_actors::connection::stats::StatsRegistry;
use streamherd_actors::coordination::{CoordinationSettings, Leases};
use streamherd_actors::metrics::{Metrics, SourceKindLabels};
use streamherd_actors::sinks::runtime::{start_sink, SinkHandle};
use streamherd_actors::supervisor::{ReloadHook, Shutdown, StreamSupervisor};

use crate::config::{Config, ConfigError, Registries};
use crate::sim;

/// Everything a running service holds on to.
pub struct Running {
    /// The top actor; send it [`Shutdown`] to stop.
    pub supervisor: Addr<StreamSupervisor>,
    /// The embedded simulator, when enabled.
    pub simulator: Option<sim::Embedded>,
    /// Metric families.
    pub metrics: Metrics,
    /// Per-connection stats.
    pub stats: StatsRegistry,
    /// The control API, when `[control]` is configured.
    pub control: Option<crate::control::ControlServer>,
    /// The sinks, for their health.
    pub sinks: Vec<SinkHandle>,
}

/// TLS for awc: rustls with the ring provider, installed once per process.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds and starts every configured sink.
pub fn start_sinks(
    config: &Config,
    registries: &Registries,
    metrics: &Metrics,
) -> Result<Vec<SinkHandle>, ConfigError> {
    config
        .sinks
        .iter()
        .map(|spec| {
            let err =
                |key: String, message: String| ConfigError { file: config.file.display().to_string(), key, message };
            let kind = registries.sinks.get(&spec.kind).map_err(|e| err(spec.context.key("kind"), e.to_string()))?;
            let sink = (kind.build)(spec.settings.clone(), &spec.context).map_err(|e| match e {
                streamherd_actors::error::SinkError::Config { key, message } => err(key, message),
                other => err(spec.context.key("kind"), other.to_string()),
            })?;
            start_sink(sink, spec.options.clone(), metrics.clone())
                .map_err(|e| err(spec.context.key("when_full"), e.to_string()))
        })
        .collect()
}

/// Starts the service inside the current actix System; a graceful stop (or
/// every source failing) stops the System with the exit code.
pub async fn start(config: &Config, registries: &Registries) -> anyhow::Result<Running> {
    start_with(config, registries, true).await
}

/// Like [`start`], but a stop leaves the actix System running: for tests,
/// `probe` and programs embedding streamherd.
pub async fn start_embedded(config: &Config, registries: &Registries) -> anyhow::Result<Running> {
    start_with(config, registries, false).await
}

async fn start_with(config: &Config, registries: &Registries, stop_system: bool) -> anyhow::Result<Running> {
    install_crypto();
    let simulator = sim::start(config).await?;
    let metrics = Metrics::default();
    let stats = StatsRegistry::default();
    let sinks = start_sinks(config, registries, &metrics)?;
    let interval = Duration::from_secs_f64(config.service.stats_interval_s);
    let (file, hook_registries) = (config.file.clone(), registries.clone());
    let reload: ReloadHook =
        Arc::new(move || crate::config::reload_sources(&file, &hook_registries).map_err(|e| e.to_string()));
    let mut supervisor =
        StreamSupervisor::new(config.sources.clone(), sinks.clone(), metrics.clone(), stats.clone(), interval)
            .state_dir(config.service.state_dir.clone())
            .stop_timeout(Duration::from_secs_f64(config.service.stop_timeout_s))
            .reload_hook(reload)
            .stop_system(stop_system);
    if let Some(url) = &config.service.coordination {
        let settings = CoordinationSettings { url: url.clone(), lease: Duration::from_millis(config.service.lease_ms) };
        let leases = Leases::process(url, config.service.lease_buckets);
        let (file, registries) = (config.file.clone(), registries.clone());
        let rebuild: ReloadHook =
            Arc::new(move || crate::config::rebuild_sources(&file, &registries).map_err(|e| e.to_string()));
        supervisor = supervisor.coordination(settings, leases, rebuild);
    }
    let supervisor = supervisor.start();
    let control = match &config.control {
        None => None,
        Some(c) => {
            let listen: SocketAddr = c.listen.parse().context("control.listen")?;
            let token = c.resolved_token()?;
            let ctx = crate::control::ControlContext {
                supervisor: supervisor.clone(),
                metrics: metrics.clone(),
                stats: stats.clone(),
                token,
                sinks: sinks.clone(),
            };
            // A listen address that cannot be bound is the config's fault: one line, exit 2.
            let server = crate::control::start(listen, ctx).await.map_err(|e| crate::config::ConfigError {
                file: config.file.display().to_string(),
                key: "control.listen".into(),
                message: format!("cannot listen on {listen}: {e}"),
            })?;
            Some(server)
        }
    };
    Ok(Running { supervisor, simulator, metrics, stats, control, sinks })
}

/// Sends [`Shutdown`] with exit code 0 on SIGINT or SIGTERM; a second signal (a second or more later)
/// exits at once.
pub fn handle_signals(supervisor: Addr<StreamSupervisor>) {
    actix_rt::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        supervisor.do_send(Shutdown { exit_code: 0 });
        // The same signal often arrives twice at once (sent to the process and
        // to its group); only a second one a moment later means "now".
        let first = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            if first.elapsed() >= Duration::from_secs(1) {
                break;
            }
        }
        tracing::warn!("second signal: exiting without waiting for sinks");
        std::process::exit(1);
    });
}

/// SIGHUP reloads like `POST /update` (the config's predicates and follow
/// files); SIGUSR1 and SIGUSR2 are logged and ignored rather than killing
/// the process (their default action).
pub fn handle_reload_signals(supervisor: Addr<StreamSupervisor>) {
    use tokio::signal::unix::{signal, SignalKind};
    actix_rt::spawn(async move {
        let (Ok(mut hup), Ok(mut usr1), Ok(mut usr2)) =
            (signal(SignalKind::hangup()), signal(SignalKind::user_defined1()), signal(SignalKind::user_defined2()))
        else {
            tracing::error!("cannot install the SIGHUP / SIGUSR handlers");
            return;
        };
        loop {
            tokio::select! {
                Some(()) = hup.recv() => {
                    tracing::info!("SIGHUP received: reloading the config's predicates and follow files");
                    match supervisor.send(streamherd_actors::supervisor::ReloadSources).await {
                        Ok(Ok(answers)) => {
                            for (source, changed) in &answers {
                                tracing::info!(source = %source, follows = changed.follows, added = changed.added, removed = changed.removed, applied = %changed.applied, "predicates reloaded on SIGHUP");
                            }
                        }
                        Ok(Err(e)) => tracing::error!(error = %e, "SIGHUP reload failed; the running config stays"),
                        Err(e) => tracing::error!(error = %e, "SIGHUP reload could not reach the supervisor"),
                    }
                }
                Some(()) = usr1.recv() => tracing::info!("SIGUSR1 ignored (SIGHUP reloads, SIGTERM stops)"),
                Some(()) = usr2.recv() => tracing::info!("SIGUSR2 ignored (SIGHUP reloads, SIGTERM stops)"),
                else => return,
            }
        }
    });
}

/// `streamherd run`: blocks until the service stops; returns the exit code.
pub fn run(config: Config, registries: Registries) -> anyhow::Result<i32> {
    let system = actix_rt::System::new();
    // Spawned tasks need the System's runtime: install the handlers inside it.
    let started = system.block_on(async {
        let running = start(&config, &registries).await?;
        handle_signals(running.supervisor.clone());
        handle_reload_signals(running.supervisor.clone());
        anyhow::Ok(running)
    });
    let _running = match started {
        Ok(running) => running,
        Err(e) => {
            // Half-started actors would be torn down outside the runtime
            // (a panic); the process exits with the error right after.
            std::mem::forget(system);
            return Err(e);
        }
    };
    let code = system.run_with_code()?;
    Ok(code)
}

/// What `streamherd probe` saw.
#[derive(Debug, Default)]
pub struct ProbeReport {
    /// Events per kind.
    pub kinds: BTreeMap<&'static str, u64>,
    /// Bytes read.
    pub bytes: u64,
    /// Reconnects.
    pub reconnects: u64,
    /// Last error per connection, if any.
    pub errors: Vec<String>,
    /// The server's health check, when the source's kind has one: `Ok(body)` when healthy.
    pub health: Option<Result<String, String>>,
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.health {
            Some(Ok(body)) => writeln!(f, "health: ok ({body})")?,
            Some(Err(e)) => writeln!(f, "health: FAILED: {e}")?,
            None => {}
        }
        let total: u64 = self.kinds.values().sum();
        writeln!(f, "events: {total}")?;
        for (k, n) in &self.kinds {
            writeln!(f, "  {k}: {n}")?;
        }
        writeln!(f, "bytes: {}", self.bytes)?;
        writeln!(f, "reconnects: {}", self.reconnects)?;
        for e in &self.errors {
            writeln!(f, "error: {e}")?;
        }
        Ok(())
    }
}

/// `streamherd probe`: connects one source for `seconds`, with no sinks, and
/// reports counts per event kind, bytes and reconnects (seed 004's `test()`).
/// A kind with a server health check runs it first; a failed one ends the probe.
pub fn probe(
    mut config: Config,
    registries: &Registries,
    source: &str,
    seconds: f64,
) -> anyhow::Result<(ProbeReport, i32)> {
    let Some(probed) = config.source(source).cloned() else {
        return Err(ConfigError {
            file: config.file.display().to_string(),
            key: "sources".into(),
            message: format!("no source is named `{source}`"),
        }
        .into());
    };
    config.sources = vec![probed.clone()];
    config.sinks.clear();
    config.service.stats_interval_s = 0.0;
    let event_kinds = registries.sources.get(probed.kind()).map(|k| k.kinds).unwrap_or_default();
    let system = actix_rt::System::new();
    let report = system.block_on(async move {
        let mut report = ProbeReport::default();
        let mut early_simulator = None;
        if let Some(check) = probed.probe_check() {
            // The health check comes first; an embedded simulator must be up for it.
            early_simulator = sim::start(&config).await?;
            config.simulator.enabled = false;
            let health = check.await;
            let failed = health.is_err();
            report.health = Some(health);
            if failed {
                if let Some(sim) = early_simulator {
                    sim.stop().await;
                }
                return anyhow::Ok(report);
            }
        }
        let running = start_embedded(&config, registries).await?;
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        let _ = running.supervisor.send(Shutdown { exit_code: 0 }).await;
        for kind in event_kinds.iter().chain([streamherd_actors::event::EventKind::GAP].iter()) {
            let n = running
                .metrics
                .events_total
                .get_or_create(&SourceKindLabels { source: source.to_owned(), kind: kind.as_str().to_owned() })
                .get();
            if n > 0 {
                report.kinds.insert(kind.as_str(), n);
            }
        }
        for s in running.stats.snapshots() {
            report.bytes += s.bytes;
            report.reconnects += s.reconnects;
            if let Some(e) = s.last_error {
                report.errors.push(format!("{}: {e}", s.id));
            }
        }
        for sim in [running.simulator, early_simulator].into_iter().flatten() {
            sim.stop().await;
        }
        anyhow::Ok(report)
    })?;
    let code = if report.kinds.is_empty() { 3 } else { 0 };
    Ok((report, code))
}
