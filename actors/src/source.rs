//! Sources as plugins, the twin of the sink registry: a [`SourceKind`]
//! registers a `kind` name, the event kinds it emits and how its own config
//! table becomes a validated [`Source`]; a started source is a
//! [`SourceHandle`], the one way the supervisor, the control API, `check`
//! and `probe` talk to any family.

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use crate::connection::backoff::BackoffConfig;
use crate::connection::stats::StatsRegistry;
use crate::error::ConfigError;
use crate::event::EventKind;
use crate::messages::{
    ChangeFollows, Consolidate, Consolidated, FollowsChanged, GetSourceHealth, PlanError, SourceFailed, SourceHealth,
    StopSource,
};
use crate::metrics::Metrics;
use crate::sinks::runtime::SinkHandle;

/// Validates a source's table (without `name` and `kind`) into a [`Source`].
pub type ParseSource = fn(table: serde_json::Value, ctx: &SourceContext) -> Result<Arc<dyn Source>, ConfigError>;

/// One registered source kind.
#[derive(Clone, Copy)]
pub struct SourceKind {
    /// The `kind` name in config (`twitter.filter`, `mastodon`, ...).
    pub name: &'static str,
    /// Every event kind its sources emit (besides `gap` and `unknown`):
    /// what sink `kinds` filters may name, and the metrics present from the start.
    pub kinds: &'static [EventKind],
    /// Validates the source's table (without `name` and `kind`): parse it
    /// with [`parse_table`] into a struct with `deny_unknown_fields`.
    pub parse: ParseSource,
}

/// The source kinds known to this build: the built-ins plus those a user registers.
#[derive(Clone, Default)]
pub struct SourceRegistry {
    kinds: Vec<SourceKind>,
}

impl SourceRegistry {
    /// A registry holding `kinds` (see `SourceRegistry::builtin` for the built-ins).
    pub fn with(kinds: Vec<SourceKind>) -> Self {
        let mut registry = SourceRegistry::default();
        for kind in kinds {
            registry.register(kind);
        }
        registry
    }

    /// Adds (or replaces) a kind.
    pub fn register(&mut self, kind: SourceKind) -> &mut Self {
        self.kinds.retain(|k| k.name != kind.name);
        self.kinds.push(kind);
        self
    }

    /// Looks a kind up by name; `None` when no such kind is registered.
    pub fn get(&self, name: &str) -> Option<&SourceKind> {
        self.kinds.iter().find(|k| k.name == name)
    }

    /// Registered kind names.
    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.iter().map(|k| k.name).collect()
    }

    /// The event kind called `name`, if some registered source kind emits it
    /// (`gap` and `unknown` always exist).
    pub fn event_kind(&self, name: &str) -> Option<EventKind> {
        [EventKind::GAP, EventKind::UNKNOWN]
            .iter()
            .chain(self.kinds.iter().flat_map(|k| k.kinds.iter()))
            .find(|k| k.as_str() == name)
            .copied()
    }
}

/// What a source kind's `parse` gets besides its table.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// Index in the config's `[[sources]]` list, for error keys (`sources[N].follow`).
    pub index: usize,
    /// The source's name (checked unique and path-safe).
    pub name: Arc<str>,
    /// Its `kind`.
    pub kind: &'static str,
    /// The config file's directory: relative paths in a source table start here.
    pub base_dir: PathBuf,
    /// `[service] state_dir`.
    pub state_dir: PathBuf,
    /// `[backoff]`, validated.
    pub backoff: BackoffConfig,
    /// `[backoff] stall_timeout_s`: the default a source may lower or override.
    pub stall_timeout: Duration,
    /// `[service] max_message_bytes`.
    pub max_message_bytes: usize,
    /// `[service] instance` or `coordination`: which share of the shard keys this process carries.
    pub placement: crate::scale::Placement,
}

impl SourceContext {
    /// The context of source `index` called `name` of `kind`, with the
    /// service's defaults (for tests and programs that build sources
    /// without a config file).
    pub fn new(index: usize, name: &str, kind: &'static str) -> Self {
        SourceContext {
            index,
            name: name.into(),
            kind,
            base_dir: PathBuf::new(),
            state_dir: PathBuf::from("state"),
            backoff: BackoffConfig::default(),
            stall_timeout: Duration::from_secs(90),
            max_message_bytes: 16 * 1024 * 1024,
            placement: crate::scale::Placement::default(),
        }
    }

    /// The config key of one of this source's settings, e.g. `sources[1].follow`.
    pub fn key(&self, field: &str) -> String {
        format!("sources[{}].{}", self.index, field)
    }
}

/// Deserialises a source's table into its kind's config struct. A key the
/// struct does not know is an error naming the key and the kind; a wrong
/// value names its path (`sources[0].follow[3]`).
pub fn parse_table<T: DeserializeOwned>(table: serde_json::Value, ctx: &SourceContext) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(table).map_err(|e| {
        let message = e.inner().to_string();
        if let Some(field) = message.strip_prefix("unknown field `").and_then(|r| r.split('`').next()) {
            // The path ends at the unknown key itself.
            let path = e.path().to_string();
            let key = if path == "." { field.to_owned() } else { path };
            return ConfigError::new(ctx.key(&key), format!("is not a key of {} sources", ctx.kind));
        }
        let key = match e.path().to_string().as_str() {
            "." => format!("sources[{}]", ctx.index),
            path => ctx.key(path),
        };
        let message = crate::error::redact_secret_value(&key, &message);
        ConfigError::new(key, message)
    })
}

/// A credential a source presents, for whoever must accept it (the
/// embedded simulator).
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// OAuth 1.0a.
    OAuth1 {
        /// Consumer key.
        consumer_key: String,
        /// Consumer secret.
        consumer_secret: String,
        /// Access token.
        token: String,
        /// Access token secret.
        token_secret: String,
    },
    /// A bearer token.
    Bearer(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::OAuth1 { consumer_key, .. } => write!(f, "OAuth1({consumer_key}, ***)"),
            Credential::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

/// What a source needs from the process to start.
#[derive(Clone)]
pub struct PlannerContext {
    /// Sinks every event is offered to.
    pub sinks: Arc<[SinkHandle]>,
    /// Metric families.
    pub metrics: Metrics,
    /// Where connection stats are listed for reporting.
    pub stats: StatsRegistry,
    /// Threads the stream actors are spread over.
    pub arbiters: Vec<ArbiterHandle>,
    /// Told when the source failed for good.
    pub on_failed: Recipient<SourceFailed>,
    /// Where follow changes and resume positions are kept across restarts.
    pub state_dir: PathBuf,
}

/// A validated source of any kind.
pub trait Source: Send + Sync + std::fmt::Debug + 'static {
    /// Its configured name.
    fn name(&self) -> &str;
    /// Its `kind` name.
    fn kind(&self) -> &'static str;
    /// What this instance carries of it (default: all of it).
    fn share(&self) -> crate::scale::Share {
        crate::scale::Share { carried: 1, total: 1, runs_here: true, ..Default::default() }
    }
    /// What `streamherd check` prints for it: one line, then a line per connection.
    fn describe(&self) -> String;
    /// The credentials it presents.
    fn credentials(&self) -> Vec<Credential>;
    /// Starts its planner; the handle is how everything else talks to it.
    fn start(&self, ctx: PlannerContext) -> SourceHandle;
    /// A health check of the server that `probe` runs before listening
    /// (`Ok` with what the server said); `None` when the kind has none.
    fn probe_check(&self) -> Option<LocalBoxFuture<'static, Result<String, String>>> {
        None
    }
    /// For a planner to take a reloaded config of its own kind.
    fn as_any(&self) -> &dyn Any;
}

/// A re-read config of a running source (`POST /update`): the planner
/// applies what changed (predicates, follows, streams).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<FollowsChanged, PlanError>")]
pub struct ReloadSource(pub Arc<dyn Source>);

/// A running source: its name and kind, and the messages its planner takes.
#[derive(Clone)]
pub struct SourceHandle {
    name: Arc<str>,
    kind: &'static str,
    stop: Recipient<StopSource>,
    health: Recipient<GetSourceHealth>,
    follows: Recipient<ChangeFollows>,
    consolidate: Recipient<Consolidate>,
    reload: Recipient<ReloadSource>,
    take_over: Recipient<TakenOver>,
}

/// Shard buckets this instance took over from another (`[service]
/// coordination`): each gets a `gap` event for the time no one carried it.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct TakenOver(pub Vec<crate::coordination::TakeOver>);

impl std::fmt::Debug for SourceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceHandle").field("name", &self.name).field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl SourceHandle {
    /// The handle of a started planner.
    pub fn new<A>(name: Arc<str>, kind: &'static str, planner: Addr<A>) -> Self
    where
        A: Actor<Context = Context<A>>
            + Handler<StopSource>
            + Handler<GetSourceHealth>
            + Handler<ChangeFollows>
            + Handler<Consolidate>
            + Handler<ReloadSource>
            + Handler<TakenOver>,
    {
        SourceHandle {
            name,
            kind,
            stop: planner.clone().recipient(),
            health: planner.clone().recipient(),
            follows: planner.clone().recipient(),
            consolidate: planner.clone().recipient(),
            reload: planner.clone().recipient(),
            take_over: planner.recipient(),
        }
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The source's kind.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Stops every connection; resolves once they have ended.
    pub async fn stop(&self) {
        let _ = self.stop.send(StopSource).await;
    }

    /// The source's health, `None` when its planner is gone.
    pub async fn health(&self) -> Option<SourceHealth> {
        self.health.send(GetSourceHealth).await.ok()
    }

    /// Adds and removes follows.
    pub async fn change_follows(
        &self,
        change: ChangeFollows,
    ) -> Result<Result<FollowsChanged, PlanError>, MailboxError> {
        self.follows.send(change).await
    }

    /// Repacks into the fewest connections.
    pub async fn consolidate(&self) -> Result<Result<Consolidated, PlanError>, MailboxError> {
        self.consolidate.send(Consolidate).await
    }

    /// Writes the take-overs' gap events (in order with the source's events).
    pub async fn taken_over(&self, takeovers: Vec<crate::coordination::TakeOver>) {
        let _ = self.take_over.send(TakenOver(takeovers)).await;
    }

    /// Applies a re-read config of this source.
    pub async fn reload(&self, source: Arc<dyn Source>) -> Result<Result<FollowsChanged, PlanError>, MailboxError> {
        self.reload.send(ReloadSource(source)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Table {
        follow: Vec<u64>,
        #[serde(default)]
        update: Option<Update>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Update {
        min_delay_s: f64,
    }

    fn ctx() -> SourceContext {
        SourceContext::new(2, "s", "test.kind")
    }

    #[test]
    fn table_errors_name_the_key_and_the_kind() {
        let e = parse_table::<Table>(serde_json::json!({"follow": [1], "streams": ["x"]}), &ctx()).unwrap_err();
        assert_eq!(e.key, "sources[2].streams");
        assert!(e.message.contains("test.kind"), "{}", e.message);
        let e = parse_table::<Table>(serde_json::json!({"follow": [1, "x"]}), &ctx()).unwrap_err();
        assert_eq!(e.key, "sources[2].follow[1]");
        let e = parse_table::<Table>(serde_json::json!({"follow": [], "update": {"max": 1}}), &ctx()).unwrap_err();
        assert_eq!(e.key, "sources[2].update.max");
        let e = parse_table::<Table>(serde_json::json!({}), &ctx()).unwrap_err();
        assert_eq!(e.key, "sources[2]");
        assert!(e.message.contains("follow"), "{}", e.message);
    }

    #[test]
    fn the_registry_finds_kinds_and_their_event_kinds() {
        fn parse(_: serde_json::Value, _: &SourceContext) -> Result<Arc<dyn Source>, ConfigError> {
            Err(ConfigError::new("k", "unused"))
        }
        const KINDS: &[EventKind] = &[EventKind::new("ping")];
        let mut r = SourceRegistry::default();
        r.register(SourceKind { name: "a", kinds: KINDS, parse });
        r.register(SourceKind { name: "a", kinds: &[], parse });
        assert_eq!(r.names(), vec!["a"]);
        assert!(r.get("a").is_some() && r.get("b").is_none());
        assert_eq!(r.event_kind("gap"), Some(EventKind::GAP));
        assert_eq!(r.event_kind("ping"), None, "replaced by the second registration");
    }
}
