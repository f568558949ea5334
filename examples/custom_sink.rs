//! A complete custom sink: counts events per kind and prints a summary line to
//! stderr every `every` events. Implement `Sink`, describe it with a
//! `SinkKind`, register it, and hand the registries to `streamherd::cli::main`:
//! the binary gets run, check, probe and simulate. Try:
//! `cargo run --example custom_sink -- --config examples/custom_sink.toml`.

use std::collections::BTreeMap;

use serde::Deserialize;
use streamherd_actors::error::SinkError;
use streamherd_actors::event::Event;
use streamherd_actors::sinks::{parse_settings, Sink, SinkBuildContext, SinkKind, SinkRegistry};
use streamherd_actors::source::SourceRegistry;

/// The sink's own keys in its `[[sinks]]` table (shared keys are handled for it).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CounterSettings {
    #[serde(default = "default_every")]
    every: u64,
}

const fn default_every() -> u64 {
    1000
}

struct CounterSink {
    name: String,
    every: u64,
    seen: u64,
    by_kind: BTreeMap<&'static str, u64>,
}

impl Sink for CounterSink {
    fn write(&mut self, events: &[Event]) -> Result<(), SinkError> {
        for event in events {
            *self.by_kind.entry(event.kind.as_str()).or_default() += 1;
            self.seen += 1;
            if self.seen % self.every == 0 {
                eprintln!("{}: {} events {:?}", self.name, self.seen, self.by_kind);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

fn build(settings: serde_json::Value, ctx: &SinkBuildContext) -> Result<Box<dyn Sink>, SinkError> {
    let s: CounterSettings = parse_settings(settings, ctx)?;
    if s.every == 0 {
        return Err(SinkError::Config { key: ctx.key("every"), message: "must be at least 1".into() });
    }
    Ok(Box::new(CounterSink { name: ctx.name.clone(), every: s.every, seen: 0, by_kind: BTreeMap::new() }))
}

fn preflight(settings: &serde_json::Value, ctx: &SinkBuildContext) -> Result<(), SinkError> {
    build(settings.clone(), ctx).map(|_| ())
}

/// `kind = "counter"` in a `[[sinks]]` table.
const COUNTER: SinkKind = SinkKind { name: "counter", build, preflight };

fn main() {
    let mut sinks = SinkRegistry::builtin();
    sinks.register(COUNTER);
    streamherd::cli::main(SourceRegistry::builtin(), sinks)
}
