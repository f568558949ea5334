//! Configuration: the raw tables read through the `config` crate (TOML file
//! plus `STREAMHERD__SECTION__KEY` overrides), and the validation that turns
//! them into what the service runs. Each `[[sources]]` table is validated by
//! its kind, found in the source registry; each `[[sinks]]` table by its sink
//! kind. Every error names the file and the key.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use streamherd_actors::connection::backoff::BackoffConfig;
use streamherd_actors::coordination::Leases;
use streamherd_actors::delivery::spill::SEGMENT_BYTES;
use streamherd_actors::scale::{Instance, Placement};
use streamherd_actors::settings::{secs, Secret};
use streamherd_actors::sinks::overflow::SpillOptions;
use streamherd_actors::sinks::runtime::{SinkOptions, WhenFull};
use streamherd_actors::sinks::{SinkBuildContext, SinkRegistry};
use streamherd_actors::source::{Source, SourceContext, SourceRegistry};

/// A configuration error: the file, the key and what is wrong. Shown on one
/// line whatever the values it quotes hold (a newline is written `\n`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}: {}", one_line(file), one_line(key), one_line(message))]
pub struct ConfigError {
    /// The config file.
    pub file: String,
    /// The offending key, e.g. `sources[0].follow`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// `text` with its line breaks and other control characters escaped.
pub fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] })
            .collect(),
    )
}

/// The kinds a binary knows: its source kinds and its sink kinds.
#[derive(Clone)]
pub struct Registries {
    /// Source kinds.
    pub sources: SourceRegistry,
    /// Sink kinds.
    pub sinks: SinkRegistry,
}

impl Registries {
    /// The kinds streamherd ships.
    pub fn builtin() -> Self {
        Registries { sources: SourceRegistry::builtin(), sinks: SinkRegistry::builtin() }
    }
}

/// `[service]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Follow lists changed at run time, last ids seen.
    pub state_dir: PathBuf,
    /// `pretty` or `json`.
    pub log_format: LogFormat,
    /// A tracing filter, e.g. `info` or `streamherd=debug`.
    pub log_level: String,
    /// Seconds between stats lines (0 = off).
    pub stats_interval_s: f64,
    /// How long a graceful stop may take to drain the sinks; what is left
    /// then stays in the spill for the next start.
    pub stop_timeout_s: f64,
    /// Messages longer than this are dropped with an error.
    pub max_message_bytes: usize,
    /// `"i/N"`: this is instance i of N sharing the config; each carries the
    /// shard keys whose stable hash falls on it.
    pub instance: Option<String>,
    /// `redis://...`: instances hold the shards as leases in this Redis
    /// (and keep stream positions there), so a dead one's shards move.
    pub coordination: Option<String>,
    /// How long a lease lives without renewal (renewed at a third of it).
    pub lease_ms: u64,
    /// Hash buckets per source: the unit a lease covers.
    pub lease_buckets: u32,
}

impl std::fmt::Debug for ServiceConfig {
    /// The coordination URL without its password; the rest as it is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("state_dir", &self.state_dir)
            .field("log_format", &self.log_format)
            .field("log_level", &self.log_level)
            .field("stats_interval_s", &self.stats_interval_s)
            .field("stop_timeout_s", &self.stop_timeout_s)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("instance", &self.instance)
            .field("coordination", &self.coordination.as_deref().map(streamherd_actors::coordination::remote::redacted))
            .field("lease_ms", &self.lease_ms)
            .field("lease_buckets", &self.lease_buckets)
            .finish()
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            state_dir: PathBuf::from("state"),
            log_format: LogFormat::Pretty,
            log_level: "info".into(),
            stats_interval_s: 10.0,
            stop_timeout_s: 30.0,
            max_message_bytes: 16 * 1024 * 1024,
            instance: None,
            coordination: None,
            lease_ms: 15_000,
            lease_buckets: 16,
        }
    }
}

/// Log output style.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `[control]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Address of the control API.
    #[serde(default = "default_control_listen")]
    pub listen: String,
    /// Bearer token; when set, all routes but /health need it.
    #[serde(default)]
    pub token: Option<Secret>,
}

impl ControlConfig {
    /// The bearer token with `${VAR}` resolved (`None`: no token, every route
    /// open). Validation already resolved it once; this errs only if the
    /// variable vanished since, or the token is empty (which would open
    /// every route to `Authorization: Bearer `).
    pub fn resolved_token(&self) -> Result<Option<String>, ConfigError> {
        let err = |message: String| ConfigError { file: "(environment)".into(), key: "control.token".into(), message };
        let Some(secret) = &self.token else { return Ok(None) };
        let token = secret.resolve("control.token").map_err(|e| err(e.message))?;
        if token.trim().is_empty() {
            return Err(err("must not be empty".into()));
        }
        Ok(Some(token))
    }
}

fn default_control_listen() -> String {
    "127.0.0.1:8890".into()
}

/// `[simulator]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorSection {
    /// Start the simulator in-process.
    pub enabled: bool,
    /// Where it listens (loopback).
    pub listen: String,
    /// Messages per second per connection (0 = unthrottled).
    pub rate: u32,
    /// Keep-alive interval.
    pub keepalive_ms: u64,
    /// A scenario file with fault scripts.
    pub scenario: Option<PathBuf>,
}

impl Default for SimulatorSection {
    fn default() -> Self {
        SimulatorSection {
            enabled: false,
            listen: "127.0.0.1:8900".into(),
            rate: 200,
            keepalive_ms: 30_000,
            scenario: None,
        }
    }
}

/// `[backoff]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffSection {
    /// Linear step for network errors, stalls, EOF.
    pub network_initial_ms: u64,
    /// Cap of the linear schedule.
    pub network_max_ms: u64,
    /// First wait after a retryable HTTP status.
    pub http_initial_ms: u64,
    /// Cap of the HTTP schedule.
    pub http_max_ms: u64,
    /// First wait after 420/429.
    pub rate_limit_initial_ms: u64,
    /// Cap of the rate-limit schedule.
    pub rate_limit_max_ms: u64,
    /// Nothing received for this long = stalled.
    pub stall_timeout_s: f64,
    /// Healthy this long forgets the error history (0 = at once).
    pub reset_after_s: f64,
    /// ± relative jitter.
    pub jitter: f64,
    /// Connection attempts per second per host.
    pub max_connects_per_s: u32,
    /// Silence longer than this many usual gaps between events is probed.
    pub liveness_factor: f64,
    /// ... and at least this long.
    pub liveness_min_s: f64,
}

impl Default for BackoffSection {
    fn default() -> Self {
        BackoffSection {
            network_initial_ms: 250,
            network_max_ms: 16_000,
            http_initial_ms: 5_000,
            http_max_ms: 320_000,
            rate_limit_initial_ms: 60_000,
            rate_limit_max_ms: 960_000,
            stall_timeout_s: 90.0,
            reset_after_s: 1800.0,
            jitter: 0.1,
            max_connects_per_s: 20,
            liveness_factor: 20.0,
            liveness_min_s: 120.0,
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[service]`.
    #[serde(default)]
    pub service: ServiceConfig,
    /// `[control]`.
    #[serde(default)]
    pub control: Option<ControlConfig>,
    /// `[simulator]`.
    #[serde(default)]
    pub simulator: SimulatorSection,
    /// `[backoff]`.
    #[serde(default)]
    pub backoff: BackoffSection,
    /// `[[sources]]`, kept as tables: each source kind parses its own keys.
    #[serde(default)]
    pub sources: Vec<serde_json::Map<String, serde_json::Value>>,
    /// `[[sinks]]`, kept as tables: each sink kind parses its own keys.
    #[serde(default)]
    pub sinks: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// A validated sink: shared options plus the kind's own settings.
#[derive(Clone)]
pub struct SinkSpec {
    /// Registered kind name.
    pub kind: String,
    /// Queue and filter options.
    pub options: SinkOptions,
    /// The kind's own keys.
    pub settings: serde_json::Value,
    /// Build context (name, index, state_dir).
    pub context: SinkBuildContext,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    /// `[service]`.
    pub service: ServiceConfig,
    /// `[control]`.
    pub control: Option<ControlConfig>,
    /// `[simulator]`.
    pub simulator: SimulatorSection,
    /// Sources, validated by their kinds.
    pub sources: Vec<Arc<dyn Source>>,
    /// Sinks.
    pub sinks: Vec<SinkSpec>,
}

impl Config {
    /// The source called `name`.
    pub fn source(&self, name: &str) -> Option<&Arc<dyn Source>> {
        self.sources.iter().find(|s| s.name() == name)
    }
}

/// Reads `file` and the `STREAMHERD__*` environment into raw structs.
pub fn read(file: &Path) -> Result<RawConfig, ConfigError> {
    let name = file.display().to_string();
    if !file.exists() {
        return Err(ConfigError { file: name, key: "(file)".into(), message: "no such file".into() });
    }
    if file.is_dir() {
        return Err(ConfigError {
            file: name,
            key: "(file)".into(),
            message: "is a directory, not a config file".into(),
        });
    }
    let built = config::Config::builder()
        .add_source(config::File::from(file).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("STREAMHERD").prefix_separator("__").separator("__").try_parsing(true),
        )
        .build()
        .map_err(|e| too_large(file, &name).unwrap_or_else(|| from_config_error(&name, e)))?;
    built.try_deserialize::<RawConfig>().map_err(|e| from_config_error(&name, e))
}

/// The config crate reads TOML integers as i64 and says only "number too
/// large to fit in target type", without a key: find the number in the text
/// and name its key (`sources[1].follow`) and line.
fn too_large(file: &Path, name: &str) -> Option<ConfigError> {
    let text = std::fs::read_to_string(file).ok()?;
    let (mut table, mut counts) = (String::new(), HashMap::<String, usize>::new());
    let mut last_key = String::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(header) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            let n = counts.entry(header.trim().to_owned()).or_insert(0);
            table = format!("{}[{}]", header.trim(), *n);
            *n += 1;
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = header.trim().to_owned();
            continue;
        }
        // A line of a multi-line array belongs to the key above it.
        let (key, value) = match line.split_once('=') {
            Some((key, value)) => {
                last_key = key.trim().trim_matches('"').to_owned();
                (last_key.as_str(), value)
            }
            None => (last_key.as_str(), line),
        };
        let huge = value
            .split(|c: char| !(c.is_ascii_digit() || c == '_' || c == '-' || c == '+'))
            .map(|n| n.replace('_', ""))
            .any(|n| n.trim_start_matches(['-', '+']).len() >= 19 && n.parse::<i64>().is_err());
        if huge {
            let key = if table.is_empty() { key.to_owned() } else { format!("{table}.{key}") };
            return Some(ConfigError {
                file: name.into(),
                key,
                message: format!("line {}: number too large (the largest is {})", i + 1, i64::MAX),
            });
        }
    }
    None
}

fn from_config_error(file: &str, e: config::ConfigError) -> ConfigError {
    let text = e.to_string();
    // The config crate says "... for key `sources[0].kind` in <file>"; pull
    // the key out (it writes `sources[0]kind` for fields of list items).
    let key = text
        .split("for key `")
        .nth(1)
        .and_then(|r| r.split('`').next())
        .map(|k| k.replace("]", "].").replace("]..", "].").trim_end_matches('.').to_owned())
        .unwrap_or_else(|| "(file)".into());
    let message = text.split(" for key `").next().unwrap_or(&text).trim();
    let message = streamherd_actors::error::redact_secret_value(&key, &one_line_toml_error(message));
    ConfigError { file: file.into(), key, message }
}

/// A TOML syntax error in one line, without the excerpt of the offending
/// line (which may hold a secret): `TOML parse error at line 5, column 12:
/// unclosed inline table, expected `}``.
fn one_line_toml_error(message: &str) -> String {
    let mut lines = message.lines();
    let Some(first) = lines.next() else { return String::new() };
    if !first.starts_with("TOML parse error") {
        return message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
    }
    // After the excerpt (lines of `|`, the line itself and the `^` marker) comes the reason.
    let reason: Vec<&str> = lines
        .skip_while(|l| !l.trim_start().starts_with('|') || !l.contains('^'))
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("in "))
        .collect();
    format!("{first}: {}", reason.join(" "))
}

/// Reads and validates; no network IO, but follow files are read and sink
/// paths checked (`preflight`).
pub fn load(file: &Path, registries: &Registries) -> Result<Config, ConfigError> {
    let raw = read(file)?;
    validate(file, raw, registries)
}

/// Whether this binary has the simulator built in (the default cargo feature `simulator`).
pub const SIMULATOR_BUILT_IN: bool = cfg!(feature = "simulator");

/// Turns raw tables into a [`Config`], checking every rule of SPEC section 3.
pub fn validate(file: &Path, raw: RawConfig, registries: &Registries) -> Result<Config, ConfigError> {
    let fname = file.display().to_string();
    let err = |key: String, message: String| ConfigError { file: fname.clone(), key, message };
    let from =
        |e: streamherd_actors::error::ConfigError| ConfigError { file: fname.clone(), key: e.key, message: e.message };
    let base_dir = file.parent().map(Path::to_path_buf).unwrap_or_default();

    let s = &raw.service;
    if s.max_message_bytes < 1024 {
        return Err(err("service.max_message_bytes".into(), "must be at least 1024".into()));
    }
    if !(s.stats_interval_s >= 0.0 && s.stats_interval_s.is_finite()) {
        return Err(err("service.stats_interval_s".into(), "must be a non-negative number".into()));
    }
    if !(s.stop_timeout_s > 0.0 && s.stop_timeout_s <= 86_400.0) {
        return Err(err("service.stop_timeout_s".into(), "must be a number of seconds in (0, 86400]".into()));
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&s.log_level) {
        return Err(err("service.log_level".into(), format!("`{}` is not a log filter: {e}", s.log_level)));
    }
    if s.state_dir.exists() && !s.state_dir.is_dir() {
        return Err(err("service.state_dir".into(), format!("{} is a file, not a directory", s.state_dir.display())));
    }
    if let Some(c) = &raw.control {
        c.listen.parse::<SocketAddr>().map_err(|e| err("control.listen".into(), format!("not an address: {e}")))?;
        if let Some(t) = &c.token {
            if t.resolve("control.token").map_err(from)?.trim().is_empty() {
                // An empty token would open every route to `Authorization: Bearer `.
                return Err(err("control.token".into(), "must not be empty (leave the key out for no token)".into()));
            }
        }
    }
    if raw.simulator.enabled {
        if !SIMULATOR_BUILT_IN {
            return Err(err(
                "simulator.enabled".into(),
                "the simulator is not built in (this binary was built without the cargo feature `simulator`): set enabled = false and point the sources at real servers".into(),
            ));
        }
        raw.simulator
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| err("simulator.listen".into(), format!("not an address: {e}")))?;
    }
    let placement = match (&s.instance, &s.coordination) {
        (Some(_), Some(_)) => {
            return Err(err(
                "service.coordination".into(),
                "set either `instance` (a static split) or `coordination` (leases in Redis), not both".into(),
            ))
        }
        (Some(text), None) => Placement::Static(Instance::parse(text).map_err(|m| err("service.instance".into(), m))?),
        (None, Some(url)) => {
            streamherd_actors::coordination::remote::check_url(url)
                .map_err(|m| err("service.coordination".into(), m))?;
            if s.lease_ms < 300 {
                return Err(err("service.lease_ms".into(), "must be at least 300".into()));
            }
            if !(1..=1024).contains(&s.lease_buckets) {
                return Err(err("service.lease_buckets".into(), "must be between 1 and 1024".into()));
            }
            Placement::Leased(Leases::process(url, s.lease_buckets))
        }
        (None, None) => Placement::Static(Instance::ALONE),
    };
    let backoff = backoff_config(&raw.backoff).map_err(|(k, m)| err(k, m))?;
    let default_stall = secs("backoff.stall_timeout_s", raw.backoff.stall_timeout_s).map_err(from)?;

    let mut names = HashSet::new();
    let mut sources = Vec::new();
    for (i, table) in raw.sources.iter().enumerate() {
        let key = |f: &str| format!("sources[{i}].{f}");
        let text = |f: &str| match table.get(f) {
            Some(serde_json::Value::String(v)) => Ok(v.clone()),
            Some(_) => Err(err(key(f), "must be a string".into())),
            None => Err(err(key(f), "missing".into())),
        };
        let name = text("name")?;
        if name.is_empty() || name.contains(['/', '\\']) || name == ".." {
            return Err(err(key("name"), "must be non-empty and contain no '/' or '\\'".into()));
        }
        if !names.insert(name.clone()) {
            return Err(err(key("name"), format!("duplicate source name `{name}`")));
        }
        let kind_name = text("kind")?;
        let kind = registries.sources.get(&kind_name).ok_or_else(|| {
            err(
                key("kind"),
                format!("unknown source kind `{kind_name}` (known: {})", registries.sources.names().join(", ")),
            )
        })?;
        let ctx = SourceContext {
            index: i,
            name: name.as_str().into(),
            kind: kind.name,
            base_dir: base_dir.clone(),
            state_dir: s.state_dir.clone(),
            backoff: backoff.clone(),
            stall_timeout: default_stall,
            max_message_bytes: s.max_message_bytes,
            placement: placement.clone(),
        };
        let rest: serde_json::Map<String, serde_json::Value> =
            table.iter().filter(|(k, _)| *k != "name" && *k != "kind").map(|(k, v)| (k.clone(), v.clone())).collect();
        sources.push((kind.parse)(serde_json::Value::Object(rest), &ctx).map_err(from)?);
    }

    let mut sink_names = HashSet::new();
    let mut sinks = Vec::new();
    for (i, table) in raw.sinks.iter().enumerate() {
        let spec = validate_sink(i, table, &names, s, registries).map_err(|(k, m)| err(k, m))?;
        if !sink_names.insert(spec.context.name.clone()) {
            return Err(err(format!("sinks[{i}].name"), format!("duplicate sink name `{}`", spec.context.name)));
        }
        sinks.push(spec);
    }
    // Checked last, so that a config in the making hears about its other keys first.
    if sources.is_empty() {
        return Err(err("sources".into(), "no [[sources]] table: there is nothing to run".into()));
    }
    Ok(Config {
        file: file.to_path_buf(),
        service: raw.service,
        control: raw.control,
        simulator: raw.simulator,
        sources,
        sinks,
    })
}

type KeyedError = (String, String);

fn keyed(e: streamherd_actors::error::ConfigError) -> KeyedError {
    (e.key, e.message)
}

fn backoff_config(b: &BackoffSection) -> Result<BackoffConfig, KeyedError> {
    let pairs = [
        ("network", b.network_initial_ms, b.network_max_ms),
        ("http", b.http_initial_ms, b.http_max_ms),
        ("rate_limit", b.rate_limit_initial_ms, b.rate_limit_max_ms),
    ];
    for (name, initial, max) in pairs {
        if initial > max {
            return Err((format!("backoff.{name}_initial_ms"), format!("{initial} is above {name}_max_ms ({max})")));
        }
    }
    if !(0.0..=1.0).contains(&b.jitter) {
        return Err(("backoff.jitter".into(), "must be between 0 and 1".into()));
    }
    if b.max_connects_per_s == 0 {
        return Err(("backoff.max_connects_per_s".into(), "must be at least 1".into()));
    }
    let stall = secs("backoff.stall_timeout_s", b.stall_timeout_s).map_err(keyed)?;
    if stall.is_zero() {
        return Err(("backoff.stall_timeout_s".into(), "must be above 0".into()));
    }
    Ok(BackoffConfig {
        network_initial: Duration::from_millis(b.network_initial_ms),
        network_max: Duration::from_millis(b.network_max_ms),
        http_initial: Duration::from_millis(b.http_initial_ms),
        http_max: Duration::from_millis(b.http_max_ms),
        rate_limit_initial: Duration::from_millis(b.rate_limit_initial_ms),
        rate_limit_max: Duration::from_millis(b.rate_limit_max_ms),
        reset_after: secs("backoff.reset_after_s", b.reset_after_s).map_err(keyed)?,
        jitter: b.jitter,
        max_connects_per_s: b.max_connects_per_s,
        liveness_factor: streamherd_actors::settings::liveness_factor("backoff.liveness_factor", b.liveness_factor)
            .map_err(keyed)?,
        liveness_min: streamherd_actors::settings::liveness_min("backoff.liveness_min_s", b.liveness_min_s)
            .map_err(keyed)?,
    })
}

/// `spill_max_bytes` unless set: 10 GiB.
const DEFAULT_SPILL_MAX_BYTES: u64 = 10 << 30;

/// A sink name as one path component (its spill directory).
fn file_name_of(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect()
}

const SHARED_SINK_KEYS: [&str; 10] = [
    "name",
    "kind",
    "kinds",
    "sources",
    "buffer",
    "when_full",
    "batch_max_events",
    "batch_max_ms",
    "spill_max_bytes",
    "spill_after_ms",
];

/// `spill_after_ms` unless set.
const DEFAULT_SPILL_AFTER_MS: u64 = 100;

fn validate_sink(
    i: usize,
    table: &serde_json::Map<String, serde_json::Value>,
    sources: &HashSet<String>,
    service: &ServiceConfig,
    registries: &Registries,
) -> Result<SinkSpec, KeyedError> {
    let registry = &registries.sinks;
    let key = |f: &str| format!("sinks[{i}].{f}");
    let string = |f: &str| -> Result<Option<String>, KeyedError> {
        match table.get(f) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err((key(f), "must be a string".into())),
        }
    };
    let strings = |f: &str| -> Result<Option<Vec<String>>, KeyedError> {
        match table.get(f) {
            None => Ok(None),
            Some(v) => serde_json::from_value::<Vec<String>>(v.clone())
                .map(Some)
                .map_err(|_| (key(f), "must be a list of strings".into())),
        }
    };
    let name = string("name")?.ok_or_else(|| (key("name"), "missing".into()))?;
    let kind = string("kind")?.ok_or_else(|| (key("kind"), "missing".into()))?;
    let sink_kind = registry.get(&kind).map_err(|e| (key("kind"), e.to_string()))?;
    let kinds = match strings("kinds")? {
        None => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(j, k)| {
                    registries
                        .sources
                        .event_kind(k)
                        .ok_or_else(|| (format!("sinks[{i}].kinds[{j}]"), format!("unknown event kind `{k}`")))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let sources_filter = strings("sources")?;
    if let Some(list) = &sources_filter {
        for (j, s) in list.iter().enumerate() {
            if !sources.contains(s) {
                return Err((format!("sinks[{i}].sources[{j}]"), format!("no source is named `{s}`")));
            }
        }
    }
    let buffer = match table.get("buffer") {
        None => 10_000,
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 1 && *n <= 10_000_000)
            .ok_or_else(|| (key("buffer"), "must be 1..=10000000".into()))? as usize,
    };
    let bounded = |f: &str, default: u64, max: u64| -> Result<u64, KeyedError> {
        match table.get(f) {
            None => Ok(default),
            Some(v) => {
                v.as_u64().filter(|n| (1..=max).contains(n)).ok_or_else(|| (key(f), format!("must be 1..={max}")))
            }
        }
    };
    let batch_max_events = bounded("batch_max_events", 1024, 1_000_000)? as usize;
    let batch_max = Duration::from_millis(bounded("batch_max_ms", 50, 60_000)?);
    let when_full = match string("when_full")?.as_deref() {
        None | Some("spill") => WhenFull::Spill,
        Some("block") => WhenFull::Block,
        Some("drop_newest") => WhenFull::DropNewest,
        Some(other) => return Err((key("when_full"), format!("`{other}` is not spill, block or drop_newest"))),
    };
    let spill = SpillOptions {
        dir: service.state_dir.join("spill").join(file_name_of(&name)),
        max_bytes: bounded("spill_max_bytes", DEFAULT_SPILL_MAX_BYTES, u64::MAX >> 1)?,
        segment_bytes: SEGMENT_BYTES,
        after: Duration::from_millis(match table.get("spill_after_ms") {
            None => DEFAULT_SPILL_AFTER_MS,
            Some(v) => v
                .as_u64()
                .filter(|n| *n <= 60_000)
                .ok_or_else(|| (key("spill_after_ms"), "must be 0..=60000".into()))?,
        }),
    };
    let settings: serde_json::Map<String, serde_json::Value> = table
        .iter()
        .filter(|(k, _)| !SHARED_SINK_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let settings = serde_json::Value::Object(settings);
    let context = SinkBuildContext { name: name.clone(), index: i, state_dir: service.state_dir.clone() };
    (sink_kind.preflight)(&settings, &context).map_err(|e| match e {
        streamherd_actors::error::SinkError::Config { key, message } => (key, message),
        other => (key("kind"), other.to_string()),
    })?;
    Ok(SinkSpec {
        kind,
        options: SinkOptions {
            name,
            batch_max_events,
            batch_max,
            buffer,
            when_full,
            kinds,
            sources: sources_filter,
            spill,
        },
        settings,
        context,
    })
}

impl std::fmt::Debug for SinkSpec {
    /// The settings as `check` shows them: no password, no token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkSpec")
            .field("kind", &self.kind)
            .field("options", &self.options)
            .field("settings", &shown_settings(&self.settings))
            .field("context", &self.context)
            .finish()
    }
}

/// The sources as the config file says now (`POST /update`).
pub fn reload_sources(file: &Path, registries: &Registries) -> Result<Vec<Arc<dyn Source>>, ConfigError> {
    Ok(load(file, registries)?.sources)
}

/// The sources only, re-cut to the leases now held (`[service]
/// coordination`): the sinks are neither re-validated nor asked whether
/// they answer, so a sink's outage cannot hold a take-over back.
pub fn rebuild_sources(file: &Path, registries: &Registries) -> Result<Vec<Arc<dyn Source>>, ConfigError> {
    let mut raw = read(file)?;
    raw.sinks.clear();
    Ok(validate(file, raw, registries)?.sources)
}

/// `streamherd check`: whether the coordination Redis answers (when set).
pub fn check_coordination(config: &Config) -> Result<(), String> {
    let Some(url) = &config.service.coordination else { return Ok(()) };
    streamherd_actors::coordination::remote::ping(url, Duration::from_secs(2))
        .map_err(|e| format!("the coordination Redis does not answer: {e}"))
}

/// `streamherd check`'s description of what would run.
pub fn describe_plan(config: &Config) -> String {
    use fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "config {} is valid", config.file.display());
    if config.simulator.enabled {
        let _ = writeln!(
            out,
            "simulator: on, {} at {} msg/s per connection",
            config.simulator.listen, config.simulator.rate
        );
    }
    if let Some(c) = &config.control {
        let _ = writeln!(out, "control API: {}{}", c.listen, if c.token.is_some() { " (token required)" } else { "" });
    }
    if let Some(url) = &config.service.coordination {
        let _ = writeln!(
            out,
            "coordination: leases in {} ({} ms, {} buckets per source); shares are decided at run time",
            streamherd_actors::coordination::remote::redacted(url),
            config.service.lease_ms,
            config.service.lease_buckets
        );
    }
    let _ = writeln!(out, "sources: {}", config.sources.len());
    for src in &config.sources {
        for line in src.describe().lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    let _ = writeln!(out, "sinks: {}", config.sinks.len());
    for s in &config.sinks {
        let kinds = s
            .options
            .kinds
            .as_ref()
            .map(|k| k.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(","))
            .unwrap_or_else(|| "all".into());
        let sources = s.options.sources.as_ref().map(|v| v.join(",")).unwrap_or_else(|| "all".into());
        let _ = writeln!(
            out,
            "  {} ({}): kinds {kinds}, sources {sources}, buffer {}, when_full {}, {}",
            s.options.name,
            s.kind,
            s.options.buffer,
            s.options.when_full.as_str(),
            shown_settings(&s.settings)
        );
    }
    out
}

/// A sink's settings as `check` prints them: a URL without its password,
/// any other value under a secret-looking key (token, password, ...) hidden.
fn shown_settings(settings: &serde_json::Value) -> serde_json::Value {
    let serde_json::Value::Object(map) = settings else { return settings.clone() };
    let shown = map
        .iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(url) if k.to_ascii_lowercase().contains("url") => {
                    serde_json::Value::String(streamherd_actors::coordination::remote::redacted(url))
                }
                _ if streamherd_actors::error::is_secret_key(k) => serde_json::Value::String("***".into()),
                v => v.clone(),
            };
            (k.clone(), v)
        })
        .collect();
    serde_json::Value::Object(shown)
}

/// Whether the control API's address can be listened on here: one not on
/// this host, or one needing privileges, is an error. An address in use is
/// only a warning on stderr, since the running service may be what holds it.
pub fn check_control_listen(config: &Config) -> Result<(), String> {
    let Some(c) = &config.control else { return Ok(()) };
    let Ok(listen) = c.listen.parse::<SocketAddr>() else { return Ok(()) };
    match std::net::TcpListener::bind(listen) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            eprintln!("warning: control.listen: {listen} is in use now (by the running service?); `run` needs it free");
            Ok(())
        }
        Err(e) => Err(format!("cannot listen on {listen}: {e}")),
    }
}
