//! The `Sink` trait users implement and the `SinkRegistry` that maps a
//! config `kind` name to a builder.

use std::path::PathBuf;

use crate::error::SinkError;
use crate::event::Event;

/// A destination for events. Each configured sink runs on its own thread
/// behind a bounded queue, so a blocking `write` holds back only itself.
pub trait Sink: Send + 'static {
    /// Writes `events`, in order. Called with the events of one batch.
    /// A returned error is counted and retried with backoff.
    fn write(&mut self, events: &[Event]) -> Result<(), SinkError>;

    /// Makes everything written so far durable as far as the sink's policy
    /// says; called after each batch drained from the queue and on stop.
    /// A failed flush must keep what `write` took: the runtime retries the
    /// flush, not the writes (which would then be written twice).
    fn flush(&mut self) -> Result<(), SinkError>;
}

/// What a sink builder gets besides its own settings.
#[derive(Debug, Clone)]
pub struct SinkBuildContext {
    /// The sink's configured name.
    pub name: String,
    /// Index in the config's `[[sinks]]` list, for error keys (`sinks[N].path`).
    pub index: usize,
    /// `[service] state_dir`.
    pub state_dir: PathBuf,
}

impl SinkBuildContext {
    /// The config key for one of this sink's settings, e.g. `sinks[1].path`.
    pub fn key(&self, field: &str) -> String {
        format!("sinks[{}].{}", self.index, field)
    }
}

/// Builds a sink from its settings: the sink's TOML table without the keys
/// every sink shares (`name`, `kind`, `kinds`, `sources`, `buffer`, `when_full`).
pub type BuildSink = fn(settings: serde_json::Value, ctx: &SinkBuildContext) -> Result<Box<dyn Sink>, SinkError>;

/// Checks settings that need IO (a writable path) without building the sink.
pub type PreflightSink = fn(settings: &serde_json::Value, ctx: &SinkBuildContext) -> Result<(), SinkError>;

/// One registered sink kind.
#[derive(Clone, Copy)]
pub struct SinkKind {
    /// The `kind` name in config.
    pub name: &'static str,
    /// Builds the sink.
    pub build: BuildSink,
    /// Validates settings with IO, for `streamherd check` and before start.
    pub preflight: PreflightSink,
}

/// The sink kinds known to this build: the built-ins plus those a user registers.
#[derive(Clone)]
pub struct SinkRegistry {
    kinds: Vec<SinkKind>,
}

impl SinkRegistry {
    /// A registry holding `kinds` (see `SinkRegistry::builtin` for the built-ins).
    pub fn with(kinds: Vec<SinkKind>) -> Self {
        let mut registry = SinkRegistry { kinds: Vec::new() };
        for kind in kinds {
            registry.register(kind);
        }
        registry
    }

    /// Adds (or replaces) a kind.
    pub fn register(&mut self, kind: SinkKind) -> &mut Self {
        self.kinds.retain(|k| k.name != kind.name);
        self.kinds.push(kind);
        self
    }

    /// Looks a kind up by name; the error lists the known ones.
    pub fn get(&self, name: &str) -> Result<&SinkKind, SinkError> {
        self.kinds
            .iter()
            .find(|k| k.name == name)
            .ok_or_else(|| SinkError::UnknownKind { kind: name.to_owned(), known: self.names().join(", ") })
    }

    /// Registered kind names.
    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.iter().map(|k| k.name).collect()
    }
}

/// Deserialises a sink's settings into its config struct, turning serde's
/// message into a [`SinkError::Config`] that names the sink's table.
pub fn parse_settings<T: serde::de::DeserializeOwned>(
    settings: serde_json::Value,
    ctx: &SinkBuildContext,
) -> Result<T, SinkError> {
    // A sink's settings may hold a password (a Redis URL): no value in the message.
    serde_json::from_value(settings).map_err(|e| SinkError::Config {
        key: format!("sinks[{}]", ctx.index),
        message: crate::error::hide_value(&e.to_string()),
    })
}
