//! A complete source kind written outside the crates: `kind = "sse"`, any
//! Server-Sent Events feed, such as Wikimedia EventStreams
//! (`https://stream.wikimedia.org/v2/stream/recentchange`). After a reconnect
//! it asks the server to resume with `Last-Event-ID`, and it keeps that id in
//! `state_dir/<source>/sse.json` so a restart resumes too. The
//! `StreamActor` does the rest: backoff, stall detection, stops, hand-off.
//! Try: `cargo run --example custom_source -- --config my.toml` with
//! `[[sources]] name = "wiki" kind = "sse" url = "https://..."`.

use std::any::Any;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use serde::Deserialize;
use streamherd_actors::connection::actor::{Conn, ConnectionSpec, Protocol};
use streamherd_actors::connection::http::{self, BodyKind};
use streamherd_actors::connection::link::{Input, Link};
use streamherd_actors::connection::stats::ConnectionStats;
use streamherd_actors::delivery::ack::OnWritten;
use streamherd_actors::delivery::dedup::Dedup;
use streamherd_actors::error::{ConfigError, StreamError};
use streamherd_actors::event::EventKind;
use streamherd_actors::planner::{Ctx, Family, ShardPlanner, SourceBasics};
use streamherd_actors::settings::{http_url, stall_timeout};
use streamherd_actors::sinks::SinkRegistry;
use streamherd_actors::source::{
    parse_table, Credential, PlannerContext, Source, SourceContext, SourceHandle, SourceKind, SourceRegistry,
};

/// An event of the SSE type `message` (the default type); other types are `unknown`.
const MESSAGE: EventKind = EventKind::new("message");
/// Statuses after which retrying cannot help.
const FATAL: [u16; 5] = [400, 401, 403, 404, 410];
/// The resume position is written at most this often (and when the connection ends).
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// The keys of an `sse` source besides `name` and `kind`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SseTable {
    url: String,
    stall_timeout_s: Option<f64>,
}

/// A validated `sse` source.
#[derive(Debug, Clone)]
struct SseSource {
    name: Arc<str>,
    url: String,
    position: PathBuf,
    basics: SourceBasics,
}

fn parse(table: serde_json::Value, ctx: &SourceContext) -> Result<Arc<dyn Source>, ConfigError> {
    let t: SseTable = parse_table(table, ctx)?;
    let basics = SourceBasics {
        name: ctx.name.clone(),
        kind: SSE.name,
        kinds: SSE.kinds,
        backoff: ctx.backoff.clone(),
        stall_timeout: stall_timeout(&ctx.key("stall_timeout_s"), t.stall_timeout_s, ctx.stall_timeout)?,
        max_message_bytes: ctx.max_message_bytes,
        dedup: Dedup::Never,
    };
    let position = ctx.state_dir.join(&*ctx.name).join("sse.json");
    Ok(Arc::new(SseSource { name: ctx.name.clone(), url: http_url(&ctx.key("url"), &t.url)?, position, basics }))
}

/// `kind = "sse"`.
const SSE: SourceKind = SourceKind { name: "sse", kinds: &[MESSAGE], parse };

impl Source for SseSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        SSE.name
    }
    fn describe(&self) -> String {
        format!("{} (sse at {}): 1 connection, resuming from {}\n", self.name, self.url, self.position.display())
    }
    fn credentials(&self) -> Vec<Credential> {
        Vec::new()
    }
    fn start(&self, ctx: PlannerContext) -> SourceHandle {
        ShardPlanner::new(self.basics.clone(), SseFamily(self.clone()), ctx).start_source()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// One connection, nothing to shard.
struct SseFamily(SseSource);

impl Family for SseFamily {
    type Protocol = SseProtocol;
    type Shard = ();
    type Spec = SseSource;

    fn start(p: &mut ShardPlanner<Self>, ctx: &mut Ctx<Self>) {
        p.start_shard(ctx, (), None);
    }
    fn connection(p: &ShardPlanner<Self>, _: &Arc<str>, _: &()) -> SseSource {
        p.family.0.clone()
    }
}

/// One SSE connection: the id of the last event every sink wrote is its position.
struct SseProtocol {
    source: SseSource,
    /// The last event id every sink wrote: set by the sinks' acknowledgement.
    delivered: Arc<Mutex<Option<String>>>,
    /// The last event id parsed, recorded once this step's events are written.
    parsed: Option<String>,
    saved_at: Option<Instant>,
}

impl SseProtocol {
    fn save(&mut self) {
        let Some(id) = self.delivered.lock().ok().and_then(|d| d.clone()) else { return };
        let body = serde_json::json!({ "last_event_id": id }).to_string();
        match streamherd_actors::persist::write_atomically(&self.source.position, body.as_bytes()) {
            Ok(()) => self.saved_at = Some(Instant::now()),
            Err(e) => tracing::error!(source = %self.source.name, error = %e, "cannot save the resume position"),
        }
    }
}

impl Protocol for SseProtocol {
    type Config = SseSource;
    type Command = ();
    type Notice = ();
    type Side = ();

    fn new(source: SseSource, _: &ConnectionSpec) -> Self {
        let stored =
            std::fs::read(&source.position).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        let delivered = stored.and_then(|v| v["last_event_id"].as_str().map(str::to_owned));
        SseProtocol { source, delivered: Arc::new(Mutex::new(delivered)), parsed: None, saved_at: None }
    }

    async fn open(&mut self, conn: &mut Conn<Self>) -> Result<Link, StreamError> {
        let mut request = http::client(conn.spec.stall_timeout).get(&self.source.url);
        request = request.insert_header((awc::http::header::ACCEPT, "text/event-stream"));
        if let Some(id) = self.delivered.lock().ok().and_then(|d| d.clone()) {
            request = request.insert_header(("Last-Event-ID", id));
        }
        tracing::info!(connection = %conn.spec.id, url = %self.source.url, resume = ?self.delivered, "connecting (sse)");
        http::open(&conn.spec.id, request.send(), BodyKind::Sse, &FATAL, conn.spec.max_message_bytes).await
    }

    fn input(&mut self, input: Input, conn: &mut Conn<Self>) -> Option<StreamError> {
        match input {
            Input::Sse(ev) => {
                let kind = if ev.event == "message" { MESSAGE } else { EventKind::UNKNOWN };
                // The envelope's payload must be JSON: other data is written as a JSON string.
                let payload = match serde_json::from_str::<serde::de::IgnoredAny>(&ev.data) {
                    Ok(_) => Bytes::from(ev.data),
                    Err(_) => Bytes::from(serde_json::Value::String(ev.data).to_string()),
                };
                let id = (!ev.id.is_empty()).then(|| ev.id.clone());
                conn.stats.counters().count_events(kind, 1);
                conn.push(conn.event(kind, id.clone().map(String::into_boxed_str), Utc::now(), payload));
                self.parsed = id.or(self.parsed.take());
            }
            Input::Oversized { what, len } => conn.oversized(what, len),
            _ => {}
        }
        None
    }

    fn apply(&mut self, _: (), _: &ConnectionStats) {}

    fn written(&mut self) -> Option<OnWritten> {
        // Saves what earlier acknowledgements recorded; this step's id is
        // recorded only once its events are written.
        if self.saved_at.map_or(true, |t| t.elapsed() >= SAVE_EVERY) {
            self.save();
        }
        let id = self.parsed.take()?;
        let delivered = self.delivered.clone();
        Some(Box::new(move || {
            if let Ok(mut d) = delivered.lock() {
                *d = Some(id);
            }
        }))
    }

    fn closed(&mut self, _: bool, _: &streamherd_actors::error::StreamError) {
        self.save();
    }
}

fn main() {
    let mut sources = SourceRegistry::builtin();
    sources.register(SSE);
    streamherd::cli::main(sources, SinkRegistry::builtin())
}
