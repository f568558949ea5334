//! The control API's routes (SPEC 6) and their handlers: each reads the live
//! stats or asks the supervisor or a planner one message, and answers JSON.
//! `configure` is the one place that lists them (actix `App::configure`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use actix_web::error::JsonPayloadError;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use streamherd_actors::connection::stats::ConnectionSnapshot;
use streamherd_actors::messages::{ChangeFollows, FollowsChanged, SourceHealth};
use streamherd_actors::source::SourceHandle;
use streamherd_actors::supervisor::{GetHealth, GetSource, ReloadSources, Shutdown};

use super::error::ApiError;
use super::state::State;

/// Largest request body (SPEC 6: 100,000 ids fit many times over).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Most ids one `POST /sources/{name}/follows` may add and remove together.
pub const MAX_IDS_PER_REQUEST: usize = 100_000;

/// How long a handler waits for the supervisor or a planner: a busy actor
/// answers a 503 instead of holding the connection open forever.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// `Content-Type` of `/metrics` (what prometheus-client's text encoder writes).
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Registers every route, the JSON body rules and the JSON 404.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(MAX_BODY_BYTES)
            // Only application/json: a browser cannot send that cross-origin
            // without a CORS preflight, which this API never grants.
            .error_handler(json_error),
    )
    // HEAD too: some load balancers probe with it (actix drops the body).
    .service(resource("/health").route(web::get().to(health)).route(web::head().to(health)))
    .service(resource("/streams").route(web::get().to(streams)))
    .service(resource("/metrics").route(web::get().to(metrics)))
    .service(resource("/update").route(web::post().to(update)))
    .service(resource("/sources/{name}/follows").route(web::post().to(change_follows)))
    .service(resource("/sources/{name}/consolidate").route(web::post().to(consolidate)))
    .service(resource("/stop").route(web::post().to(stop)))
    .default_service(web::to(no_route));
}

/// A resource whose wrong methods get a JSON 405 instead of an empty body.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

async fn no_route(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NoRoute { method: req.method().to_string(), path: req.path().to_owned() })
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { method: req.method().to_string(), path: req.path().to_owned() })
}

fn json_error(err: JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    let api = match err {
        JsonPayloadError::OverflowKnownLength { limit, .. } | JsonPayloadError::Overflow { limit } => {
            ApiError::PayloadTooLarge { limit }
        }
        JsonPayloadError::ContentType => ApiError::BadRequest("expected Content-Type: application/json".into()),
        JsonPayloadError::Deserialize(e) => invalid_body(&e),
        JsonPayloadError::Payload(actix_web::error::PayloadError::Overflow) => {
            ApiError::PayloadTooLarge { limit: MAX_BODY_BYTES }
        }
        other => ApiError::BadRequest(format!("cannot read the body: {other}")),
    };
    api.into()
}

/// Overall health, as `/health` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// Every connection is up or on its way up.
    Ok,
    /// Some connections failed for good or are stalled or backing off.
    Degraded,
    /// Every connection of every source failed for good.
    Failed,
}

/// What degrades a sink: its spill reached `spill_max_bytes` (it holds its
/// streams back), or its destination does not answer (it retries, spilling).
pub(crate) enum SinkTrouble<'a> {
    SpillFull(&'a str),
    Unavailable(&'a str, String),
}

/// Judges the sources' health; `states` names each unhealthy connection's
/// state and last error; `sinks` the sinks in trouble, which degrades.
/// Pure, so the rules are tested without a service.
pub(crate) fn assess(
    sources: &[SourceHealth],
    states: &[ConnectionSnapshot],
    sinks: &[SinkTrouble<'_>],
) -> (Status, Vec<String>) {
    let by_id: HashMap<&str, &ConnectionSnapshot> = states.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut reasons = Vec::new();
    let (mut live, mut failed) = (0, 0);
    for source in sources {
        live += source.healthy.len() + source.unhealthy.len();
        failed += source.failed.len();
        for (id, why) in &source.failed {
            let why = if why.is_empty() { "no reason recorded" } else { why.as_str() };
            reasons.push(format!("{id} failed: {why}"));
        }
        for id in &source.unhealthy {
            let snap = by_id.get(id.as_str());
            let state = snap.map_or("unhealthy", |s| s.state.as_str());
            match snap.and_then(|s| s.last_error.as_deref()) {
                Some(e) => reasons.push(format!("{id} is {state}: {e}")),
                None => reasons.push(format!("{id} is {state}")),
            }
        }
    }
    for s in states.iter().filter(|s| s.silent) {
        let bound = s.liveness_bound.map_or(String::new(), |b| format!(" (its bound is {:.0} s)", b.as_secs_f64()));
        reasons.push(format!("{} is silent: no event past its liveness bound{bound}, probing", s.id));
    }
    for trouble in sinks {
        reasons.push(match trouble {
            SinkTrouble::SpillFull(sink) => {
                format!("sink {sink}: its spill is full (spill_max_bytes); its streams wait for it")
            }
            SinkTrouble::Unavailable(sink, why) => format!("sink {sink}: {why}; retrying, its queue spills"),
        });
    }
    let status = if failed > 0 && live == 0 {
        Status::Failed
    } else if reasons.is_empty() {
        Status::Ok
    } else {
        Status::Degraded
    };
    (status, reasons)
}

/// `GET /health`: 200 when all is well, else 503 with the reasons.
async fn health(state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    let sources = state.supervisor.send(GetHealth).timeout(ASK_TIMEOUT).await?;
    let mut troubles = Vec::new();
    for sink in state.sinks.iter() {
        if sink.spill_full() {
            troubles.push(SinkTrouble::SpillFull(sink.name()));
        }
        if let Some(why) = sink.unavailable() {
            troubles.push(SinkTrouble::Unavailable(sink.name(), why));
        }
    }
    let (status, reasons) = assess(&sources, &state.stats.snapshots(), &troubles);
    let code = if status == Status::Ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok(HttpResponse::build(code).json(serde_json::json!({ "status": status, "sources": sources, "reasons": reasons })))
}

/// One connection in `/streams`.
#[derive(Debug, Serialize)]
struct StreamRow {
    id: String,
    source: String,
    state: &'static str,
    follow: Vec<u64>,
    track: Vec<String>,
    locations: Vec<String>,
    /// Named streams (Mastodon).
    streams: Vec<String>,
    /// Repository DIDs (Jetstream).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dids: Vec<String>,
    messages: u64,
    bytes: u64,
    /// Seconds since the last event; null before the first.
    last_message_age_s: Option<f64>,
    /// Seconds since the last byte (heartbeats included); null before the first.
    last_byte_age_s: Option<f64>,
    /// The learned event rate (events per second); null before the first events.
    events_per_s: Option<f64>,
    /// The silence tolerated before a liveness probe, seconds.
    liveness_bound_s: Option<f64>,
    /// Silent past its liveness bound right now.
    silent: bool,
    reconnects: u64,
    /// The connection's last cumulative `limit.track` (seed 004).
    limit_track: u64,
    last_error: Option<String>,
}

impl StreamRow {
    fn new(s: ConnectionSnapshot, now_ms: i64) -> Self {
        StreamRow {
            last_message_age_s: s.last_message_ms.map(|t| now_ms.saturating_sub(t).max(0) as f64 / 1000.0),
            last_byte_age_s: s.last_byte_ms.map(|t| now_ms.saturating_sub(t).max(0) as f64 / 1000.0),
            events_per_s: s.usual_gap.map(|g| if g.is_zero() { f64::MAX } else { 1.0 / g.as_secs_f64() }),
            liveness_bound_s: s.liveness_bound.map(|b| b.as_secs_f64()),
            silent: s.silent,
            id: s.id,
            source: s.source,
            state: s.state.as_str(),
            follow: s.carries.follow,
            track: s.carries.track,
            locations: s.carries.locations,
            streams: s.carries.streams,
            dids: s.carries.dids,
            messages: s.messages,
            bytes: s.bytes,
            reconnects: s.reconnects,
            limit_track: s.limit_track,
            last_error: s.last_error,
        }
    }
}

/// `GET /streams`: every connection, in start order. Built from the stats
/// registry alone, so it answers even while the actors are busy.
async fn streams(state: web::Data<State>) -> HttpResponse {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let rows: Vec<StreamRow> = state.stats.snapshots().into_iter().map(|s| StreamRow::new(s, now_ms)).collect();
    HttpResponse::Ok().json(rows)
}

/// `GET /metrics`: the SPEC 8 families as OpenMetrics text, or as the
/// classic Prometheus text format when the client asks for `text/plain`
/// and not for OpenMetrics (what `promtool check metrics` lints).
async fn metrics(req: HttpRequest, state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    // A derived gauge: computed from the connections when asked for.
    state.stats.refresh_limit_omitted(&state.metrics);
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, &state.registry)
        .map_err(|e| ApiError::Internal(format!("encoding metrics: {e}")))?;
    let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let (content_type, body) = if wants_classic_text(accept) {
        (CLASSIC_CONTENT_TYPE, classic_text(&body))
    } else {
        (OPENMETRICS_CONTENT_TYPE, body)
    };
    Ok(HttpResponse::Ok().insert_header((header::CONTENT_TYPE, HeaderValue::from_static(content_type))).body(body))
}

/// The classic Prometheus text format's content type.
const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `text/plain` asked for and OpenMetrics not: Prometheus itself lists both
/// and gets OpenMetrics; curl and promtool users get the classic format.
fn wants_classic_text(accept: &str) -> bool {
    accept.contains("text/plain") && !accept.contains("application/openmetrics-text")
}

/// OpenMetrics text as the classic format: a counter family's `# HELP` and
/// `# TYPE` name its `_total` samples, and there is no `# UNIT` or `# EOF`.
fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "].into_iter().find(|p| line.starts_with(p));
        match descriptor {
            Some(prefix) => {
                let rest = &line[prefix.len()..];
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                if !tail.is_empty() {
                    out.push(' ');
                    out.push_str(tail);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// `POST /update`: re-read follow files and config predicates (seed 002).
async fn update(state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    let answers = state.supervisor.send(ReloadSources).timeout(ASK_TIMEOUT).await?.map_err(ApiError::ReloadFailed)?;
    for (source, changed) in &answers {
        tracing::info!(source = %source, follows = changed.follows, added = changed.added, removed = changed.removed, applied = %changed.applied, "predicates reloaded via the control API");
    }
    let sources: BTreeMap<String, FollowsChanged> = answers.into_iter().collect();
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "status": "scheduled", "sources": sources })))
}

/// An id in a follows body: a number, or a string (JavaScript clients
/// cannot hold ids over 2^53 as numbers; other kinds' ids are strings). It
/// travels as text; the source's kind says whether it is a valid id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FollowId(String);

impl<'de> Deserialize<'de> for FollowId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;

        impl Visitor<'_> for IdVisitor {
            type Value = FollowId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an id: an integer or a string")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FollowId, E> {
                Ok(FollowId(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FollowId, E> {
                Ok(FollowId(v.to_string()))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<FollowId, E> {
                Ok(FollowId(v.to_owned()))
            }
        }

        deserializer.deserialize_any(IdVisitor)
    }
}

/// The body of `POST /sources/{name}/follows`: a JSON object only. serde's
/// derive would also read `[add, remove]` positionally, so the fields are
/// read through a map (which keeps the derive's unknown and duplicate key
/// errors).
#[derive(Debug)]
struct FollowsBody {
    add: Option<Vec<FollowId>>,
    remove: Option<Vec<FollowId>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FollowsFields {
    #[serde(default)]
    add: Option<Vec<FollowId>>,
    #[serde(default)]
    remove: Option<Vec<FollowId>>,
}

impl<'de> Deserialize<'de> for FollowsBody {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> serde::de::Visitor<'de> for Object {
            type Value = FollowsBody;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object with `add` and/or `remove`")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<FollowsBody, A::Error> {
                let f = FollowsFields::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(FollowsBody { add: f.add, remove: f.remove })
            }
        }
        deserializer.deserialize_map(Object)
    }
}

impl FollowsBody {
    /// Checks the rules serde cannot express and builds the message.
    fn into_message(self) -> Result<ChangeFollows, ApiError> {
        let add: Vec<String> = self.add.unwrap_or_default().into_iter().map(|id| id.0).collect();
        let remove: Vec<String> = self.remove.unwrap_or_default().into_iter().map(|id| id.0).collect();
        if add.is_empty() && remove.is_empty() {
            return Err(ApiError::BadRequest("nothing to change: give `add` and/or `remove` ids".into()));
        }
        if add.len() + remove.len() > MAX_IDS_PER_REQUEST {
            return Err(ApiError::BadRequest(format!(
                "{} ids in one request; at most {MAX_IDS_PER_REQUEST}",
                add.len() + remove.len()
            )));
        }
        let removing: std::collections::HashSet<&String> = remove.iter().collect();
        if let Some(both) = add.iter().find(|id| removing.contains(id)) {
            return Err(ApiError::BadRequest(format!("id {both} is both in `add` and in `remove`")));
        }
        Ok(ChangeFollows { add, remove })
    }
}

/// A body serde could not read, as the JSON extractor's error handler words it.
fn invalid_body(e: &serde_json::Error) -> ApiError {
    ApiError::BadRequest(format!("invalid body: {e}"))
}

/// A `POST /sources/{name}/follows` body as the route reads it: the JSON
/// extractor's serde step, then the rules serde cannot express. Pure, so
/// the fuzzer reaches it without a server.
pub fn parse_follows_body(body: &[u8]) -> Result<ChangeFollows, ApiError> {
    let parsed: FollowsBody = serde_json::from_slice(body).map_err(|e| invalid_body(&e))?;
    parsed.into_message()
}

/// Waits for a source's answer, at most [`ASK_TIMEOUT`].
async fn ask<T>(answer: impl std::future::Future<Output = Result<T, actix::MailboxError>>) -> Result<T, ApiError> {
    match tokio::time::timeout(ASK_TIMEOUT, answer).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(actix::MailboxError::Timeout.into()),
    }
}

/// The running source `name`, or a 404.
async fn source(state: &State, name: &str) -> Result<SourceHandle, ApiError> {
    match state.supervisor.send(GetSource { source: name.to_owned() }).timeout(ASK_TIMEOUT).await? {
        Some(handle) => Ok(handle),
        None => Err(ApiError::UnknownSource(name.to_owned())),
    }
}

/// `POST /sources/{name}/follows`: add and remove follow ids.
async fn change_follows(
    state: web::Data<State>,
    name: web::Path<String>,
    body: web::Json<FollowsBody>,
) -> Result<HttpResponse, ApiError> {
    let msg = body.into_inner().into_message()?;
    let (asked_add, asked_remove) = (msg.add.len(), msg.remove.len());
    let source = source(&state, &name).await?;
    let changed = ask(source.change_follows(msg)).await??;
    tracing::info!(source = %name, asked_add, asked_remove, follows = changed.follows, added = changed.added, removed = changed.removed, applied = %changed.applied, "follows changed via the control API");
    Ok(HttpResponse::Ok().json(changed))
}

/// `POST /sources/{name}/consolidate`: repack a site source (seed 000).
async fn consolidate(state: web::Data<State>, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let source = source(&state, &name).await?;
    let done = ask(source.consolidate()).await??;
    tracing::info!(source = %name, before = done.before, after = done.after, moved = done.moved, "consolidated via the control API");
    Ok(HttpResponse::Ok().json(done))
}

/// `POST /stop`: answers first, then asks for the graceful stop, so the
/// client sees the 202 before the process goes away.
async fn stop(state: web::Data<State>) -> HttpResponse {
    tracing::info!("stop requested via the control API");
    let supervisor = state.supervisor.clone();
    actix_rt::spawn(async move {
        if supervisor.send(Shutdown { exit_code: 0 }).await.is_err() {
            tracing::debug!("stop: the supervisor was already gone");
        }
    });
    HttpResponse::Accepted().json(serde_json::json!({ "status": "stopping" }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamherd_actors::connection::stats::{Carries, ConnectionState};

    fn source(healthy: &[&str], unhealthy: &[&str], failed: &[(&str, &str)]) -> SourceHealth {
        SourceHealth {
            source: "s".into(),
            follows: 0,
            healthy: healthy.iter().map(|s| s.to_string()).collect(),
            unhealthy: unhealthy.iter().map(|s| s.to_string()).collect(),
            failed: failed.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            non_full: vec![],
        }
    }

    fn snap(id: &str, state: ConnectionState, last_error: Option<&str>) -> ConnectionSnapshot {
        ConnectionSnapshot {
            id: id.into(),
            source: "s".into(),
            state,
            carries: Carries::default(),
            messages: 0,
            bytes: 0,
            reconnects: 0,
            last_message_ms: None,
            last_byte_ms: None,
            usual_gap: None,
            liveness_bound: None,
            silent: false,
            limit_track: 0,
            last_error: last_error.map(str::to_owned),
        }
    }

    #[test]
    fn health_is_ok_degraded_or_failed() {
        assert_eq!(assess(&[], &[], &[]), (Status::Ok, vec![]));
        assert_eq!(assess(&[source(&["s/0"], &[], &[])], &[], &[]).0, Status::Ok);

        let snaps = [snap("s/1", ConnectionState::BackingOff, Some("HTTP 503"))];
        let (status, reasons) = assess(&[source(&["s/0"], &["s/1"], &[])], &snaps, &[]);
        assert_eq!(status, Status::Degraded);
        assert_eq!(reasons, vec!["s/1 is backing_off: HTTP 503".to_owned()]);

        let (status, reasons) = assess(&[source(&["s/0"], &[], &[("s/1", "HTTP 401")])], &[], &[]);
        assert_eq!(status, Status::Degraded);
        assert_eq!(reasons, vec!["s/1 failed: HTTP 401".to_owned()]);

        let all_failed = [source(&[], &[], &[("a/0", "HTTP 401")]), source(&[], &[], &[("b/0", "")])];
        let (status, reasons) = assess(&all_failed, &[], &[]);
        assert_eq!(status, Status::Failed);
        assert_eq!(reasons.len(), 2);
        assert_eq!(reasons[1], "b/0 failed: no reason recorded");

        let (status, reasons) = assess(&[source(&["s/0"], &[], &[])], &[], &[SinkTrouble::SpillFull("archive")]);
        assert_eq!(status, Status::Degraded, "a full spill holds its streams back");
        assert_eq!(
            reasons,
            vec!["sink archive: its spill is full (spill_max_bytes); its streams wait for it".to_owned()]
        );
        let down = SinkTrouble::Unavailable("queue", "unavailable: connection refused".into());
        let (status, reasons) = assess(&[source(&["s/0"], &[], &[])], &[], &[down]);
        assert_eq!(status, Status::Degraded, "a sink whose destination is down degrades");
        assert_eq!(reasons, vec!["sink queue: unavailable: connection refused; retrying, its queue spills".to_owned()]);

        let mut quiet = snap("s/0", ConnectionState::Connected, None);
        quiet.silent = true;
        quiet.liveness_bound = Some(std::time::Duration::from_secs(120));
        let (status, reasons) = assess(&[source(&["s/0"], &[], &[])], &[quiet], &[]);
        assert_eq!(status, Status::Degraded, "a connected stream silent past its bound degrades");
        assert_eq!(
            reasons,
            vec!["s/0 is silent: no event past its liveness bound (its bound is 120 s), probing".to_owned()]
        );
    }

    #[test]
    fn the_classic_format_names_counter_descriptors_after_their_samples() {
        let om = "# HELP streamherd_events Events read.\n# TYPE streamherd_events counter\nstreamherd_events_total{source=\"a\"} 3\n# HELP streamherd_sink_queue_depth Events queued.\n# TYPE streamherd_sink_queue_depth gauge\nstreamherd_sink_queue_depth{sink=\"x\"} 0\n# EOF\n";
        assert_eq!(
            classic_text(om),
            "# HELP streamherd_events_total Events read.\n# TYPE streamherd_events_total counter\nstreamherd_events_total{source=\"a\"} 3\n# HELP streamherd_sink_queue_depth Events queued.\n# TYPE streamherd_sink_queue_depth gauge\nstreamherd_sink_queue_depth{sink=\"x\"} 0\n"
        );
        assert!(wants_classic_text("text/plain"));
        assert!(!wants_classic_text("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"));
        assert!(!wants_classic_text(""));
    }

    fn body(json: &str) -> Result<ChangeFollows, String> {
        let parsed: FollowsBody = serde_json::from_str(json).map_err(|e| e.to_string())?;
        parsed.into_message().map_err(|e| e.to_string())
    }

    #[test]
    fn follows_bodies_take_numbers_and_digit_strings() {
        let m = body(r#"{"add":[1,"18446744073709551615","did:plc:abc"],"remove":[3]}"#).unwrap();
        assert_eq!(m.add, vec!["1".to_owned(), u64::MAX.to_string(), "did:plc:abc".to_owned()]);
        assert_eq!(m.remove, vec!["3".to_owned()]);
        let m = body(r#"{"remove":[7]}"#).unwrap();
        assert!(m.add.is_empty());
        assert_eq!(body(r#"{"add":null,"remove":[7]}"#).unwrap().remove, vec!["7".to_owned()]);
    }

    #[test]
    fn bad_follows_bodies_are_refused_with_a_reason() {
        for (json, needle) in [
            (r#"{"add":[1.5]}"#, "floating point"),
            (r#"{"add":[true]}"#, "boolean"),
            (r#"{"add":1}"#, "a sequence"),
            (r#"{"add":[1],"extra":true}"#, "unknown field `extra`"),
            (r#"{}"#, "nothing to change"),
            (r#"{"add":[],"remove":[]}"#, "nothing to change"),
            (r#"{"add":[5],"remove":[5]}"#, "id 5 is both"),
        ] {
            let e = body(json).unwrap_err();
            assert!(e.contains(needle), "{json}: {e}");
        }
        let many: Vec<String> = (1..=MAX_IDS_PER_REQUEST as u64 + 1).map(|i| i.to_string()).collect();
        let e = body(&format!(r#"{{"add":[{}]}}"#, many.join(","))).unwrap_err();
        assert!(e.contains("at most 100000"), "{e}");
    }

    #[test]
    fn stream_rows_never_go_back_in_time() {
        let mut s = snap("s/0", ConnectionState::Connected, None);
        s.last_message_ms = Some(2_000);
        assert_eq!(StreamRow::new(s.clone(), 3_500).last_message_age_s, Some(1.5));
        assert_eq!(StreamRow::new(s, 1_000).last_message_age_s, Some(0.0));
    }
}
