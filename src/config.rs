//! Configuration: raw serde structs read through the `config` crate (TOML
//! file plus `STREAMHERD__SECTION__KEY` overrides), `${VAR}` secrets, and the
//! validation that turns them into what the actors need. Every error names
//! the file and the key.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use streamherd_actors::backoff::BackoffConfig;
use streamherd_actors::control_messages::{ReplacePredicates, ReplaceStreams, SourcePredicates};
use streamherd_actors::mastodon_actor::{BearerToken, CatchUpLimits, Transport};
use streamherd_actors::mastodon_planner::MastodonSourceSpec;
use streamherd_actors::messages::EventKind;
use streamherd_actors::protocol::mastodon_streams::MastodonStream;
use streamherd_actors::protocol::request::{OAuthCredentials, TwitterEndpoint, TwitterQuery};
use streamherd_actors::shard_planner::{
    plan_shards, Shard, SourceSpec, FILTER_MAX_FOLLOWS, FILTER_MAX_LOCATIONS, FILTER_MAX_TRACK,
};
use streamherd_actors::sink_actor::{SinkOptions, WhenFull};
use streamherd_actors::sinks::{SinkBuildContext, SinkRegistry};

/// A configuration error: the file, the key and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    /// The config file.
    pub file: String,
    /// The offending key, e.g. `sources[0].follow`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// A secret value: a literal or `${VAR}`. Never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The literal, or the environment variable it names.
    fn resolve(&self, key: &str) -> Result<String, (String, String)> {
        let s = self.0.trim();
        if let Some(var) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
            return std::env::var(var).map_err(|_| (key.to_owned(), format!("environment variable {var} is not set")));
        }
        Ok(self.0.clone())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

const fn default_true() -> bool {
    true
}

/// `[service]`.
#[derive(Debug, Clone, Deserialize)]
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
    /// Messages longer than this are dropped with an error.
    pub max_message_bytes: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            state_dir: PathBuf::from("state"),
            log_format: LogFormat::Pretty,
            log_level: "info".into(),
            stats_interval_s: 10.0,
            max_message_bytes: 16 * 1024 * 1024,
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
        let token = secret.resolve("control.token").map_err(|(_, m)| err(m))?;
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
    /// Connection attempts per second per source.
    pub max_connects_per_s: u32,
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
        }
    }
}

/// Source kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// `twitter.filter`.
    TwitterFilter,
    /// `twitter.sample`.
    TwitterSample,
    /// `twitter.user`.
    TwitterUser,
    /// `twitter.site`.
    TwitterSite,
    /// `mastodon`.
    Mastodon,
}

impl SourceKind {
    /// Every kind.
    pub const ALL: [SourceKind; 5] = [
        SourceKind::TwitterFilter,
        SourceKind::TwitterSample,
        SourceKind::TwitterUser,
        SourceKind::TwitterSite,
        SourceKind::Mastodon,
    ];

    /// Parses a config name.
    pub fn parse(name: &str) -> Option<SourceKind> {
        SourceKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Config name.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::TwitterFilter => "twitter.filter",
            SourceKind::TwitterSample => "twitter.sample",
            SourceKind::TwitterUser => "twitter.user",
            SourceKind::TwitterSite => "twitter.site",
            SourceKind::Mastodon => "mastodon",
        }
    }

    fn endpoint(self) -> Option<TwitterEndpoint> {
        match self {
            SourceKind::TwitterFilter => Some(TwitterEndpoint::Filter),
            SourceKind::TwitterSample => Some(TwitterEndpoint::Sample),
            SourceKind::TwitterUser => Some(TwitterEndpoint::User),
            SourceKind::TwitterSite => Some(TwitterEndpoint::Site),
            SourceKind::Mastodon => None,
        }
    }

    fn default_base_url(self) -> &'static str {
        match self {
            SourceKind::TwitterFilter | SourceKind::TwitterSample => "https://stream.twitter.com",
            SourceKind::TwitterUser => "https://userstream.twitter.com",
            SourceKind::TwitterSite => "https://sitestream.twitter.com",
            SourceKind::Mastodon => "https://mastodon.social",
        }
    }
}

/// One credential.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `oauth1` or `bearer`.
    pub kind: AuthKind,
    /// OAuth consumer key.
    #[serde(default)]
    pub consumer_key: Option<String>,
    /// OAuth consumer secret.
    #[serde(default)]
    pub consumer_secret: Option<Secret>,
    /// OAuth access token, or the bearer token.
    #[serde(default)]
    pub token: Option<Secret>,
    /// OAuth token secret.
    #[serde(default)]
    pub token_secret: Option<Secret>,
}

/// Credential kinds.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthKind {
    /// OAuth 1.0a user context (Twitter).
    Oauth1,
    /// Bearer token (Mastodon).
    Bearer,
}

/// `auth = {...}` or `auth = [{...}, ...]`.
#[derive(Debug, Clone, Default)]
pub struct AuthList(pub Vec<AuthConfig>);

impl<'de> Deserialize<'de> for AuthList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AuthList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a credential table or a list of them")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<AuthList, A::Error> {
                AuthConfig::deserialize(de::value::MapAccessDeserializer::new(map)).map(|a| AuthList(vec![a]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<AuthList, A::Error> {
                Vec::<AuthConfig>::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(AuthList)
            }
        }
        d.deserialize_any(V)
    }
}

/// `update = { min_delay_s, max_delay_s }` (seed 002's scheduling).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// At most one predicate restart per this many seconds.
    pub min_delay_s: f64,
    /// With one change pending, restart after this many seconds.
    pub max_delay_s: f64,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig { min_delay_s: 120.0, max_delay_s: 600.0 }
    }
}

/// One `[[sources]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Unique name.
    pub name: String,
    /// Stream kind name (checked in validation, so the error can list the known ones).
    pub kind: String,
    /// Scheme and host of the streaming API (Mastodon: of the instance).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Mastodon: the streaming host, when it should not be discovered from
    /// the instance API (B.1).
    #[serde(default)]
    pub streaming_url: Option<String>,
    /// Track phrases.
    #[serde(default)]
    pub track: Vec<String>,
    /// Follow ids.
    #[serde(default)]
    pub follow: Vec<u64>,
    /// A file of follow ids, one per line, `#` comments.
    #[serde(default)]
    pub follow_file: Option<PathBuf>,
    /// Location boxes.
    #[serde(default)]
    pub locations: Vec<String>,
    /// Ask for stall warnings.
    #[serde(default = "default_true")]
    pub stall_warnings: bool,
    /// `none`, `low` or `medium`.
    #[serde(default)]
    pub filter_level: Option<String>,
    /// `none` or `length`.
    #[serde(default)]
    pub delimited: Delimited,
    /// Language codes.
    #[serde(default)]
    pub language: Vec<String>,
    /// Ids per connection.
    #[serde(default)]
    pub follow_limit: Option<usize>,
    /// Most connections.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Credentials.
    #[serde(default)]
    pub auth: Option<AuthList>,
    /// Predicate-change scheduling.
    #[serde(default)]
    pub update: UpdateConfig,
    /// `user` or `followings` (user and site streams).
    #[serde(default)]
    pub with: Option<String>,
    /// `all` (user and site streams).
    #[serde(default)]
    pub replies: Option<String>,
    /// Mastodon: `sse` or `websocket`.
    #[serde(default)]
    pub transport: Option<String>,
    /// Mastodon streams.
    #[serde(default)]
    pub streams: Vec<String>,
    /// Mastodon WebSocket multiplexing.
    #[serde(default)]
    pub streams_per_connection: Option<usize>,
    /// Mastodon: catch up over REST after a gap.
    #[serde(default)]
    pub catch_up: Option<bool>,
    /// Overrides `[backoff] stall_timeout_s` for this source.
    #[serde(default)]
    pub stall_timeout_s: Option<f64>,
}

const fn default_max_connections() -> usize {
    50
}

/// Body framing asked of Twitter.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Delimited {
    /// CRLF lines.
    #[default]
    None,
    /// Length-prefixed.
    Length,
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
    /// `[[sources]]`.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// `[[sinks]]`, kept as tables: each sink kind parses its own keys.
    #[serde(default)]
    pub sinks: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// A validated sink: shared options plus the kind's own settings.
#[derive(Debug, Clone)]
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

/// A validated source of a kind this build can stream.
#[derive(Debug, Clone)]
pub enum ValidSource {
    /// A Twitter v1.1 source.
    Twitter(Box<SourceSpec>),
    /// A Mastodon source.
    Mastodon(Box<MastodonSourceSpec>),
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
    /// Sources.
    pub sources: Vec<ValidSource>,
    /// Sinks.
    pub sinks: Vec<SinkSpec>,
}

/// Reads `file` and the `STREAMHERD__*` environment into raw structs.
pub fn read(file: &Path) -> Result<RawConfig, ConfigError> {
    let name = file.display().to_string();
    if !file.exists() {
        return Err(ConfigError { file: name, key: "(file)".into(), message: "no such file".into() });
    }
    let built = config::Config::builder()
        .add_source(config::File::from(file).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("STREAMHERD").prefix_separator("__").separator("__").try_parsing(true),
        )
        .build()
        .map_err(|e| from_config_error(&name, e))?;
    built.try_deserialize::<RawConfig>().map_err(|e| from_config_error(&name, e))
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
    let message = text.split(" for key `").next().unwrap_or(&text).trim().to_owned();
    ConfigError { file: file.into(), key, message }
}

/// Reads and validates; no network IO, but follow files are read and sink
/// paths checked (`preflight`).
pub fn load(file: &Path, registry: &SinkRegistry) -> Result<Config, ConfigError> {
    let raw = read(file)?;
    validate(file, raw, registry)
}

/// Turns raw structs into a [`Config`], checking every rule of SPEC section 3.
pub fn validate(file: &Path, raw: RawConfig, registry: &SinkRegistry) -> Result<Config, ConfigError> {
    let fname = file.display().to_string();
    let err = |key: String, message: String| ConfigError { file: fname.clone(), key, message };
    let base_dir = file.parent().map(Path::to_path_buf).unwrap_or_default();

    let s = &raw.service;
    if s.max_message_bytes < 1024 {
        return Err(err("service.max_message_bytes".into(), "must be at least 1024".into()));
    }
    if !(s.stats_interval_s >= 0.0 && s.stats_interval_s.is_finite()) {
        return Err(err("service.stats_interval_s".into(), "must be a non-negative number".into()));
    }
    if let Some(c) = &raw.control {
        c.listen.parse::<SocketAddr>().map_err(|e| err("control.listen".into(), format!("not an address: {e}")))?;
        if let Some(t) = &c.token {
            t.resolve("control.token").map_err(|(k, m)| err(k, m))?;
        }
    }
    if raw.simulator.enabled {
        raw.simulator
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| err("simulator.listen".into(), format!("not an address: {e}")))?;
    }
    let backoff = backoff_config(&raw.backoff).map_err(|(k, m)| err(k, m))?;
    let default_stall = secs("backoff.stall_timeout_s", raw.backoff.stall_timeout_s).map_err(|(k, m)| err(k, m))?;

    let mut names = HashSet::new();
    let mut sources = Vec::new();
    for (i, src) in raw.sources.iter().enumerate() {
        let key = |f: &str| format!("sources[{i}].{f}");
        if src.name.is_empty() || src.name.contains(['/', '\\']) || src.name == ".." {
            return Err(err(key("name"), "must be non-empty and contain no '/' or '\\'".into()));
        }
        if !names.insert(src.name.clone()) {
            return Err(err(key("name"), format!("duplicate source name `{}`", src.name)));
        }
        sources.push(validate_source(i, src, &backoff, default_stall, s, &base_dir).map_err(|(k, m)| err(k, m))?);
    }

    let mut sink_names = HashSet::new();
    let mut sinks = Vec::new();
    for (i, table) in raw.sinks.iter().enumerate() {
        let spec = validate_sink(i, table, &names, s, registry).map_err(|(k, m)| err(k, m))?;
        if !sink_names.insert(spec.context.name.clone()) {
            return Err(err(format!("sinks[{i}].name"), format!("duplicate sink name `{}`", spec.context.name)));
        }
        sinks.push(spec);
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

fn secs(key: &str, v: f64) -> Result<Duration, KeyedError> {
    if !v.is_finite() || !(0.0..=1e9).contains(&v) {
        return Err((key.into(), "must be a non-negative number of seconds".into()));
    }
    Ok(Duration::from_secs_f64(v))
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
    let stall = secs("backoff.stall_timeout_s", b.stall_timeout_s)?;
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
        reset_after: secs("backoff.reset_after_s", b.reset_after_s)?,
        jitter: b.jitter,
        max_connects_per_s: b.max_connects_per_s,
    })
}

/// Default stall timeout of a Mastodon source: three missed 15 s heartbeats.
const MASTODON_STALL: Duration = Duration::from_secs(45);
/// Default WebSocket subscriptions per connection.
const DEFAULT_STREAMS_PER_CONNECTION: usize = 100;

fn source_stall_timeout(i: usize, src: &SourceConfig, default: Duration) -> Result<Duration, KeyedError> {
    let key = format!("sources[{i}].stall_timeout_s");
    match src.stall_timeout_s {
        Some(v) => secs(&key, v).and_then(|d| if d.is_zero() { Err((key, "must be above 0".into())) } else { Ok(d) }),
        None => Ok(default),
    }
}

fn validate_mastodon(
    i: usize,
    src: &SourceConfig,
    backoff: &BackoffConfig,
    default_stall: Duration,
    service: &ServiceConfig,
) -> Result<ValidSource, KeyedError> {
    let key = |f: &str| format!("sources[{i}].{f}");
    let auths = src.auth.as_ref().map(|a| a.0.clone()).unwrap_or_default();
    let token = match auths.as_slice() {
        [AuthConfig { kind: AuthKind::Bearer, token: Some(t), .. }] => t.resolve(&key("auth.token"))?,
        _ => return Err((key("auth"), "a mastodon source needs auth = { kind = \"bearer\", token = \"...\" }".into())),
    };
    if token.trim().is_empty() {
        return Err((key("auth.token"), "is empty".into()));
    }
    let twitter_only = [
        ("follow", !src.follow.is_empty()),
        ("follow_file", src.follow_file.is_some()),
        ("track", !src.track.is_empty()),
        ("locations", !src.locations.is_empty()),
        ("with", src.with.is_some()),
        ("replies", src.replies.is_some()),
        ("follow_limit", src.follow_limit.is_some()),
    ];
    if let Some((field, _)) = twitter_only.iter().find(|(_, set)| *set) {
        return Err((key(field), "applies to twitter sources, not mastodon (use `streams`)".into()));
    }
    let url_key = |f: &str, v: &str| -> Result<String, KeyedError> {
        if v.starts_with("http://") || v.starts_with("https://") {
            Ok(v.trim_end_matches('/').to_owned())
        } else {
            Err((key(f), format!("`{v}` must start with http:// or https://")))
        }
    };
    let instance_url = url_key("base_url", src.base_url.as_deref().unwrap_or("https://mastodon.social"))?;
    let streaming_url = match &src.streaming_url {
        Some(u) => {
            let http = u.replacen("wss://", "https://", 1).replacen("ws://", "http://", 1);
            Some(url_key("streaming_url", &http)?)
        }
        None => None,
    };
    let transport = match src.transport.as_deref() {
        None | Some("websocket") => Transport::WebSocket,
        Some("sse") => Transport::Sse,
        Some(t) => return Err((key("transport"), format!("`{t}` is not sse or websocket"))),
    };
    if src.streams.is_empty() {
        return Err((key("streams"), "a mastodon source needs at least one stream".into()));
    }
    let mut streams = Vec::new();
    let mut keys: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for (j, s) in src.streams.iter().enumerate() {
        let skey = format!("sources[{i}].streams[{j}]");
        let stream = MastodonStream::parse(s).ok_or_else(|| (skey.clone(), format!("unknown stream name `{s}`")))?;
        if let Some(first) = keys.insert(stream.key(), s.clone()) {
            return Err((
                skey,
                format!("`{s}` is the same stream as `{first}` (hashtags match whatever their case or accents)"),
            ));
        }
        streams.push(stream);
    }
    let per = src.streams_per_connection.unwrap_or(DEFAULT_STREAMS_PER_CONNECTION);
    if per == 0 || per > 10_000 {
        return Err((key("streams_per_connection"), "must be 1..=10000".into()));
    }
    if src.max_connections == 0 {
        return Err((key("max_connections"), "must be at least 1".into()));
    }
    let needed = match transport {
        Transport::Sse => streams.len(),
        Transport::WebSocket => streams.len().div_ceil(per),
    };
    if needed > src.max_connections {
        return Err((
            key("streams"),
            format!(
                "{} stream(s) need {needed} {} connection(s), over max_connections ({})",
                streams.len(),
                transport.as_str(),
                src.max_connections
            ),
        ));
    }
    let stall_timeout = source_stall_timeout(i, src, default_stall.min(MASTODON_STALL))?;
    Ok(ValidSource::Mastodon(Box::new(MastodonSourceSpec {
        name: src.name.as_str().into(),
        transport,
        instance_url,
        streaming_url,
        streams,
        streams_per_connection: per,
        catch_up: src.catch_up.unwrap_or(true).then(CatchUpLimits::default),
        token: BearerToken::new(token),
        stall_timeout,
        max_message_bytes: service.max_message_bytes,
        max_connections: src.max_connections,
        backoff: backoff.clone(),
    })))
}

fn validate_source(
    i: usize,
    src: &SourceConfig,
    backoff: &BackoffConfig,
    default_stall: Duration,
    service: &ServiceConfig,
    base_dir: &Path,
) -> Result<ValidSource, KeyedError> {
    let key = |f: &str| format!("sources[{i}].{f}");
    let known = || SourceKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ");
    let kind = SourceKind::parse(&src.kind)
        .ok_or_else(|| (key("kind"), format!("unknown source kind `{}` (known: {})", src.kind, known())))?;
    let auths = src.auth.as_ref().map(|a| a.0.clone()).unwrap_or_default();
    let base_url = src.base_url.clone().unwrap_or_else(|| kind.default_base_url().to_owned());
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        return Err((key("base_url"), format!("`{base_url}` must start with http:// or https://")));
    }
    let Some(endpoint) = kind.endpoint() else {
        return validate_mastodon(i, src, backoff, default_stall, service);
    };
    if src.streaming_url.is_some() {
        return Err((key("streaming_url"), format!("applies to mastodon sources, not {}", kind.as_str())));
    }
    if !src.streams.is_empty()
        || src.transport.is_some()
        || src.streams_per_connection.is_some()
        || src.catch_up.is_some()
    {
        return Err((
            key("streams"),
            format!("streams/transport/catch_up apply to mastodon sources, not {}", kind.as_str()),
        ));
    }
    if auths.is_empty() {
        return Err((
            key("auth"),
            format!("{} needs OAuth 1.0a credentials: auth = {{ kind = \"oauth1\", ... }}", kind.as_str()),
        ));
    }
    let mut credentials = Vec::new();
    for (j, a) in auths.iter().enumerate() {
        let akey =
            |f: &str| if auths.len() == 1 { key(&format!("auth.{f}")) } else { format!("sources[{i}].auth[{j}].{f}") };
        if a.kind != AuthKind::Oauth1 {
            return Err((akey("kind"), format!("{} needs kind = \"oauth1\"", kind.as_str())));
        }
        let need = |v: &Option<Secret>, f: &str| -> Result<String, KeyedError> {
            v.as_ref().ok_or_else(|| (akey(f), "missing".into()))?.resolve(&akey(f))
        };
        credentials.push(OAuthCredentials {
            consumer_key: a.consumer_key.clone().ok_or_else(|| (akey("consumer_key"), "missing".into()))?,
            consumer_secret: need(&a.consumer_secret, "consumer_secret")?,
            token: need(&a.token, "token")?,
            token_secret: need(&a.token_secret, "token_secret")?,
        });
    }

    let mut follow = src.follow.clone();
    if let Some(path) = &src.follow_file {
        let path = if path.is_relative() { base_dir.join(path) } else { path.clone() };
        follow.extend(read_follow_file(&path).map_err(|m| (key("follow_file"), m))?);
    }
    let mut seen = HashSet::new();
    follow.retain(|id| seen.insert(*id));

    for (j, t) in src.track.iter().enumerate() {
        if t.is_empty() || t.len() > 60 {
            return Err((
                format!("sources[{i}].track[{j}]"),
                format!("a track phrase must be 1-60 bytes, `{t}` is {}", t.len()),
            ));
        }
    }
    for (j, l) in src.locations.iter().enumerate() {
        let parts: Vec<_> = l.split(',').map(|p| p.trim().parse::<f64>()).collect();
        if parts.len() != 4 || parts.iter().any(Result::is_err) {
            return Err((
                format!("sources[{i}].locations[{j}]"),
                format!("`{l}` is not \"sw_lon,sw_lat,ne_lon,ne_lat\""),
            ));
        }
    }
    if let Some(level) = &src.filter_level {
        if !["none", "low", "medium"].contains(&level.as_str()) {
            return Err((key("filter_level"), format!("`{level}` is not none, low or medium")));
        }
    }
    for (field, v) in [("with", &src.with), ("replies", &src.replies)] {
        if let Some(v) = v {
            let ok = match field {
                "with" => v == "user" || v == "followings",
                _ => v == "all",
            };
            if !ok || !matches!(endpoint, TwitterEndpoint::User | TwitterEndpoint::Site) {
                return Err((
                    key(field),
                    format!("`{v}` is not valid here (user/site streams: with = user|followings, replies = all)"),
                ));
            }
        }
    }
    let (default_limit, max_limit) = match endpoint {
        TwitterEndpoint::Site => (100, 1000),
        _ => (FILTER_MAX_FOLLOWS, FILTER_MAX_FOLLOWS),
    };
    let follow_limit = src.follow_limit.unwrap_or(default_limit);
    if follow_limit == 0 || follow_limit > max_limit {
        return Err((key("follow_limit"), format!("must be 1..={max_limit} for {}", kind.as_str())));
    }
    if src.max_connections == 0 {
        return Err((key("max_connections"), "must be at least 1".into()));
    }
    match endpoint {
        TwitterEndpoint::Filter => {
            let creds = credentials.len();
            let checks = [
                ("follow", follow.len(), FILTER_MAX_FOLLOWS, "follow ids"),
                ("track", src.track.len(), FILTER_MAX_TRACK, "track terms"),
                ("locations", src.locations.len(), FILTER_MAX_LOCATIONS, "location boxes"),
            ];
            for (field, n, per, what) in checks {
                if n > per * creds {
                    return Err((
                        key(field),
                        format!("{n} {what} need {} connections at {per} each, but twitter.filter allows one per credential and {creds} credential(s) are given", n.div_ceil(per)),
                    ));
                }
            }
        }
        TwitterEndpoint::Sample => {
            if !follow.is_empty() || !src.track.is_empty() || !src.locations.is_empty() {
                return Err((key("follow"), "twitter.sample takes no follow, track or locations".into()));
            }
        }
        TwitterEndpoint::User | TwitterEndpoint::Site => {}
    }
    if follow.len() > follow_limit.saturating_mul(src.max_connections) {
        return Err((
            key("follow"),
            format!(
                "{} follow ids exceed follow_limit ({follow_limit}) x max_connections ({})",
                follow.len(),
                src.max_connections
            ),
        ));
    }
    if endpoint == TwitterEndpoint::Site && follow.is_empty() {
        return Err((key("follow"), "twitter.site needs follow ids (follow or follow_file)".into()));
    }
    let stall_timeout = source_stall_timeout(i, src, default_stall)?;
    let spec = SourceSpec {
        name: src.name.as_str().into(),
        endpoint,
        base_url,
        credentials,
        query: TwitterQuery {
            follow,
            track: src.track.clone(),
            locations: src.locations.clone(),
            delimited: src.delimited == Delimited::Length,
            stall_warnings: src.stall_warnings,
            filter_level: src.filter_level.clone().filter(|l| l != "none"),
            language: src.language.clone(),
            with: src.with.clone(),
            replies: src.replies.clone(),
        },
        follow_limit,
        max_connections: src.max_connections,
        stall_timeout,
        max_message_bytes: service.max_message_bytes,
        backoff: backoff.clone(),
        update_min: secs(&key("update.min_delay_s"), src.update.min_delay_s)?,
        update_max: secs(&key("update.max_delay_s"), src.update.max_delay_s)?,
    };
    if spec.update_min > spec.update_max {
        return Err((key("update.min_delay_s"), "must not exceed max_delay_s".into()));
    }
    plan_shards(&spec).map_err(|e| (key("follow"), e.to_string()))?;
    Ok(ValidSource::Twitter(Box::new(spec)))
}

fn read_follow_file(path: &Path) -> Result<Vec<u64>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        ids.push(
            line.parse::<u64>()
                .map_err(|_| format!("{}:{}: `{line}` is not a numeric user id", path.display(), n + 1))?,
        );
    }
    Ok(ids)
}

const SHARED_SINK_KEYS: [&str; 6] = ["name", "kind", "kinds", "sources", "buffer", "when_full"];

fn validate_sink(
    i: usize,
    table: &serde_json::Map<String, serde_json::Value>,
    sources: &HashSet<String>,
    service: &ServiceConfig,
    registry: &SinkRegistry,
) -> Result<SinkSpec, KeyedError> {
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
                    EventKind::parse(k)
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
    let when_full = match string("when_full")?.as_deref() {
        None | Some("block") => WhenFull::Block,
        Some("drop_newest") => WhenFull::DropNewest,
        Some("spill") => {
            return Err((key("when_full"), "`spill` is planned, not available yet: use block or drop_newest".into()))
        }
        Some(other) => return Err((key("when_full"), format!("`{other}` is not block, drop_newest or spill"))),
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
        options: SinkOptions { name, buffer, when_full, kinds, sources: sources_filter },
        settings,
        context,
    })
}

/// The predicates of every Twitter source, re-read from `file` and its
/// follow files (`POST /update`).
pub fn reload_predicates(file: &Path, registry: &SinkRegistry) -> Result<Vec<(String, SourcePredicates)>, ConfigError> {
    let config = load(file, registry)?;
    Ok(config
        .sources
        .into_iter()
        .map(|s| match s {
            ValidSource::Twitter(spec) => (
                spec.name.to_string(),
                SourcePredicates::Twitter(ReplacePredicates {
                    follow: spec.query.follow,
                    track: spec.query.track,
                    locations: spec.query.locations,
                }),
            ),
            ValidSource::Mastodon(spec) => {
                (spec.name.to_string(), SourcePredicates::Mastodon(ReplaceStreams { streams: spec.streams }))
            }
        })
        .collect())
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
    let _ = writeln!(out, "sources: {}", config.sources.len());
    for src in &config.sources {
        match src {
            ValidSource::Twitter(spec) => {
                let shards: Vec<Shard> = plan_shards(spec).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  {} ({:?} at {}): {} connection(s), {} credential(s)",
                    spec.name,
                    spec.endpoint,
                    spec.base_url,
                    shards.len(),
                    spec.credentials.len()
                );
                for s in &shards {
                    let _ = writeln!(
                        out,
                        "    {}/{}: {} follow ids, {} track terms, {} location boxes",
                        spec.name,
                        s.index,
                        s.query.follow.len(),
                        s.query.track.len(),
                        s.query.locations.len()
                    );
                }
            }
            ValidSource::Mastodon(spec) => {
                let per = match spec.transport {
                    Transport::Sse => 1,
                    Transport::WebSocket => spec.streams_per_connection,
                };
                let names: Vec<String> = spec.streams.iter().map(MastodonStream::config_name).collect();
                let _ = writeln!(
                    out,
                    "  {} (mastodon, {} at {}{}): {} stream(s) in {} connection(s), catch-up {}",
                    spec.name,
                    spec.transport.as_str(),
                    spec.instance_url,
                    spec.streaming_url
                        .as_ref()
                        .map(|u| format!(", streaming {u}"))
                        .unwrap_or_else(|| ", streaming host discovered".into()),
                    spec.streams.len(),
                    spec.streams.len().div_ceil(per),
                    if spec.catch_up.is_some() { "on" } else { "off" },
                );
                for (n, chunk) in names.chunks(per).enumerate() {
                    let _ = writeln!(out, "    connection {n}: {}", chunk.join(", "));
                }
            }
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
            "  {} ({}): kinds {kinds}, sources {sources}, buffer {}, when_full {:?}, {}",
            s.options.name, s.kind, s.options.buffer, s.options.when_full, s.settings
        );
    }
    out
}
