//! The control API (SPEC 6) over real HTTP on 127.0.0.1 in front of the real
//! service and simulator: token, JSON errors, every route, strict OpenMetrics
//! parsing, and `POST /stop` ending the binary with exit 0 after sinks drain.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use awc::http::{header, Method};
use common::*;
use serde_json::{json, Value};
use streamherd::app::Running;
use streamherd::control::{self, ControlContext, ControlServer};
use streamherd_sim::{Scenario, SimHandle};

const T: Duration = Duration::from_secs(20);
const TOKEN: &str = "s3cret-control-token";

/// One HTTP answer, read whole.
struct Reply {
    status: u16,
    headers: header::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    fn header(&self, name: header::HeaderName) -> String {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
    }

    /// Asserts an error answer: this status, `Content-Type: application/json`,
    /// a body of exactly `{"error": "..."}`; returns the message.
    fn error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.text());
        assert!(self.header(header::CONTENT_TYPE).starts_with("application/json"), "{:?}", self.headers);
        let v = self.json();
        let obj = v.as_object().unwrap_or_else(|| panic!("not an object: {v}"));
        assert_eq!(obj.len(), 1, "only `error`: {v}");
        obj["error"].as_str().unwrap_or_else(|| panic!("error is not a string: {v}")).to_owned()
    }
}

/// A client for one control API.
struct Api {
    client: awc::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(addr: std::net::SocketAddr, token: Option<&str>) -> Api {
        let client = awc::Client::builder().timeout(Duration::from_secs(15)).finish();
        Api { client, base: format!("http://{addr}"), token: token.map(str::to_owned) }
    }

    /// A request carrying the token when there is one.
    fn request(&self, method: Method, path: &str) -> awc::ClientRequest {
        let req = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.insert_header((header::AUTHORIZATION, format!("Bearer {t}"))),
            None => req,
        }
    }

    async fn send(&self, req: awc::ClientRequest, body: Option<Vec<u8>>) -> Reply {
        let sent = match body {
            Some(b) => req.send_body(b).await,
            None => req.send().await,
        };
        let mut resp = sent.unwrap_or_else(|e| panic!("request failed: {e}"));
        let body = resp.body().limit(64 << 20).await.expect("response body").to_vec();
        Reply { status: resp.status().as_u16(), headers: resp.headers().clone(), body }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(self.request(Method::GET, path), None).await
    }

    async fn post(&self, path: &str) -> Reply {
        self.send(self.request(Method::POST, path), None).await
    }

    async fn post_json(&self, path: &str, body: &str) -> Reply {
        let req = self.request(Method::POST, path).insert_header((header::CONTENT_TYPE, "application/json"));
        self.send(req, Some(body.as_bytes().to_vec())).await
    }
}

/// Simulator, service and control API, all in this test's actix System.
struct Harness {
    sim: SimHandle,
    cfg: TestConfig,
    running: Running,
    control: ControlServer,
    api: Api,
}

impl Harness {
    /// `sources` is one or more `[[sources]]` tables; `{url}` is the simulator.
    async fn start(sources: &str, token: Option<&str>) -> Harness {
        let sim = start_sim(Scenario::default(), 50, 500).await;
        let sources = sources.replace("{url}", &sim.base_url()).replace("{auth}", DEMO_AUTH);
        let cfg = Conf::new().table(&sources).file_sink("").write();
        let running = start_service(&cfg).await;
        // Started here rather than through `[control]` so the test owns the
        // token and the port (127.0.0.1:0) whatever app.rs does with the table.
        let ctx = ControlContext {
            supervisor: running.supervisor.clone(),
            metrics: running.metrics.clone(),
            stats: running.stats.clone(),
            token: token.map(str::to_owned),
            sinks: running.sinks.clone(),
        };
        let control = control::start("127.0.0.1:0".parse().unwrap(), ctx).await.expect("control API starts");
        let api = Api::new(control.addr, token);
        Harness { sim, cfg, running, control, api }
    }

    async fn stop(self) {
        self.control.stop().await;
        stop_service(&self.running).await;
        self.sim.stop().await;
    }

    /// `/streams`, asserted to be a 200 JSON array.
    async fn streams(&self) -> Vec<Value> {
        let r = self.api.get("/streams").await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json().as_array().cloned().unwrap_or_else(|| panic!("not an array: {}", r.text()))
    }

    /// Every follow id `/streams` shows, over all connections.
    async fn followed(&self) -> BTreeSet<u64> {
        self.streams()
            .await
            .iter()
            .flat_map(|c| c["follow"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_u64())
            .collect()
    }
}

fn site(name: &str, follows: impl IntoIterator<Item = u64>) -> String {
    let ids: Vec<String> = follows.into_iter().map(|i| i.to_string()).collect();
    format!(
        "[[sources]]\nname = \"{name}\"\nkind = \"twitter.site\"\nbase_url = \"{{url}}\"\nfollow = [{}]\nfollow_limit = 100\n{{auth}}\n",
        ids.join(",")
    )
}

fn sample(name: &str) -> String {
    format!("[[sources]]\nname = \"{name}\"\nkind = \"twitter.sample\"\nbase_url = \"{{url}}\"\n{{auth}}\n")
}

fn filter(name: &str) -> String {
    format!("[[sources]]\nname = \"{name}\"\nkind = \"twitter.filter\"\nbase_url = \"{{url}}\"\ntrack = [\"rust\"]\n{{auth}}\n")
}

/// Re-runs `probe` every 20 ms until it yields a value or `timeout` passes.
async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids(range: std::ops::RangeInclusive<u64>) -> String {
    range.map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

#[actix_rt::test]
async fn health_is_open_without_the_token_and_lists_each_source() {
    let h = Harness::start(&format!("{}{}", site("site", 1..=3), sample("firehose")), Some(TOKEN)).await;
    let open = Api::new(h.control.addr, None);
    let body = eventually(T, "both sources healthy", || async {
        let r = open.get("/health").await;
        let v = r.json();
        let up = |i: usize| v["sources"][i]["healthy"].as_array().is_some_and(|a| !a.is_empty());
        (r.status == 200 && up(0) && up(1)).then_some(v)
    })
    .await;
    assert_eq!(body["status"], "ok");
    assert_eq!(body["reasons"], json!([]));
    let names: Vec<&str> = body["sources"].as_array().unwrap().iter().map(|s| s["source"].as_str().unwrap()).collect();
    assert_eq!(names, ["firehose", "site"]);
    assert_eq!(body["sources"][1]["follows"], 3);
    assert_eq!(body["sources"][1]["healthy"], json!(["site/0"]));
    // A site connection carrying 3 of 100 is not full (seed 000's monitor).
    assert_eq!(body["sources"][1]["non_full"], json!(["site/0"]));
    h.stop().await;
}

#[actix_rt::test]
async fn health_is_503_degraded_naming_the_connection_that_failed_for_good() {
    let refused = DEMO_AUTH.replace("demo-token-secret", "wrong-secret");
    let sources = format!(
        "{}[[sources]]\nname = \"refused\"\nkind = \"twitter.sample\"\nbase_url = \"{{url}}\"\n{refused}\n",
        sample("firehose")
    );
    let h = Harness::start(&sources, None).await;
    let r = eventually(T, "/health to degrade", || async {
        let r = h.api.get("/health").await;
        (r.status == 503).then_some(r)
    })
    .await;
    let v = r.json();
    assert_eq!(v["status"], "degraded", "{v}");
    let reasons: Vec<&str> = v["reasons"].as_array().unwrap().iter().filter_map(|r| r.as_str()).collect();
    assert!(reasons.iter().any(|r| r.starts_with("refused/0 failed") && r.contains("401")), "{reasons:?}");
    assert!(!r.text().contains("wrong-secret"), "secrets never in answers");
    h.stop().await;
}

#[actix_rt::test]
async fn every_route_but_health_needs_the_bearer_token() {
    let h = Harness::start(&site("site", 1..=3), Some(TOKEN)).await;
    let routes = [
        (Method::GET, "/streams"),
        (Method::GET, "/metrics"),
        (Method::POST, "/update"),
        (Method::POST, "/sources/site/follows"),
        (Method::POST, "/sources/site/consolidate"),
        (Method::POST, "/stop"),
        (Method::GET, "/no/such/route"),
    ];
    let anonymous = Api::new(h.control.addr, None);
    let wrong = Api::new(h.control.addr, Some("s3cret-control-tokeX"));
    let prefix = Api::new(h.control.addr, Some("s3cret"));
    for (method, path) in &routes {
        for api in [&anonymous, &wrong, &prefix] {
            // A body, so a route that reads one would fail differently.
            let req = api.request(method.clone(), path).insert_header((header::CONTENT_TYPE, "application/json"));
            let r = api.send(req, Some(br#"{"add":[1]}"#.to_vec())).await;
            assert_eq!(r.error(401), "missing or invalid bearer token", "{method} {path}");
            assert!(r.header(header::WWW_AUTHENTICATE).starts_with("Bearer"), "{method} {path}: {:?}", r.headers);
        }
    }
    // Another scheme is not a bearer token.
    let basic =
        anonymous.request(Method::GET, "/streams").insert_header((header::AUTHORIZATION, format!("Basic {TOKEN}")));
    assert_eq!(anonymous.send(basic, None).await.error(401), "missing or invalid bearer token");
    // The right token opens them; the scheme is case-insensitive.
    assert_eq!(h.api.get("/streams").await.status, 200);
    assert_eq!(h.api.get("/metrics").await.status, 200);
    assert_eq!(h.api.get("/no/such/route").await.status, 404);
    let lower =
        anonymous.request(Method::GET, "/streams").insert_header((header::AUTHORIZATION, format!("bearer {TOKEN}")));
    assert_eq!(anonymous.send(lower, None).await.status, 200);
    assert_eq!(anonymous.get("/health").await.status, 200);
    assert_eq!(anonymous.send(anonymous.request(Method::HEAD, "/health"), None).await.status, 200);
    h.stop().await;
}

#[actix_rt::test]
async fn bad_follow_bodies_get_400_with_a_json_error() {
    let h = Harness::start(&site("site", 1..=3), None).await;
    let path = "/sources/site/follows";
    for (body, needle) in [
        ("add 5", "invalid body"),
        ("", "invalid body"),
        (r#"{"add":[1,2"#, "invalid body"),
        (r#"{"add":"5"}"#, "expected a sequence"),
        (r#"{"add":[-5]}"#, "positive integer"),
        (r#"{"add":[1.5]}"#, "floating point"),
        (r#"{"add":["5x"]}"#, "5x"),
        (r#"{"add":[true]}"#, "boolean"),
        (r#"{"add":[5],"follow":[6]}"#, "unknown field `follow`"),
        (r#"{}"#, "nothing to change"),
        (r#"{"add":[],"remove":[]}"#, "nothing to change"),
        (r#"{"add":[7],"remove":[7]}"#, "both"),
        (r#"[1,2]"#, "invalid body"),
    ] {
        let msg = h.api.post_json(path, body).await.error(400);
        assert!(msg.contains(needle), "{body:?}: {msg}");
    }
    let too_many = format!(r#"{{"add":[{}]}}"#, ids(1..=100_001));
    assert!(h.api.post_json(path, &too_many).await.error(400).contains("at most 100000"));
    // JSON only: a form post (what `curl -d` sends by default) is refused.
    let form =
        h.api.request(Method::POST, path).insert_header((header::CONTENT_TYPE, "application/x-www-form-urlencoded"));
    assert!(h.api.send(form, Some(b"add=5".to_vec())).await.error(400).contains("Content-Type"));
    // Nothing above changed the plan.
    assert_eq!(h.followed().await, (1..=3).collect());
    h.stop().await;
}

#[actix_rt::test]
async fn unknown_sources_routes_and_methods_get_json_errors() {
    let h = Harness::start(&site("site", 1..=3), None).await;
    let r = h.api.post_json("/sources/nope/follows", r#"{"add":[5]}"#).await;
    assert_eq!(r.error(404), "no source named `nope`");
    assert_eq!(h.api.post("/sources/nope/consolidate").await.error(404), "no source named `nope`");
    assert!(h.api.get("/no/such/route").await.error(404).contains("/no/such/route"));
    assert!(h.api.post("/sources/site").await.error(404).contains("POST /sources/site"));
    assert!(h.api.get("/stop").await.error(405).contains("GET"));
    assert!(h.api.post("/health").await.error(405).contains("/health"));
    h.stop().await;
}

#[actix_rt::test]
async fn bodies_over_4_mib_get_413_json() {
    let h = Harness::start(&site("site", 1..=3), None).await;
    // Valid JSON that only its size makes wrong.
    let mut body = String::from(r#"{"add":[1"#);
    while body.len() <= control::MAX_BODY_BYTES {
        body.push_str(",00000000000000000001");
    }
    body.push_str("]}");
    assert!(h.api.post_json("/sources/site/follows", &body).await.error(413).contains("4194304"));
    assert_eq!(h.followed().await, (1..=3).collect(), "nothing changed");
    h.stop().await;
}

#[actix_rt::test]
async fn streams_lists_every_connection_with_its_follows_and_no_secrets() {
    let h = Harness::start(&format!("{}{}", site("site", 1..=250), filter("filtered")), None).await;
    let rows = eventually(T, "4 connections streaming", || async {
        let rows = h.streams().await;
        let live = |r: &Value| r["state"] == "connected" && r["messages"].as_u64() > Some(0);
        (rows.len() == 4 && rows.iter().all(live)).then_some(rows)
    })
    .await;
    let by_id: BTreeMap<&str, &Value> = rows.iter().map(|r| (r["id"].as_str().unwrap(), r)).collect();
    assert_eq!(by_id.keys().copied().collect::<Vec<_>>(), ["filtered/0", "site/0", "site/1", "site/2"]);
    let keys: BTreeSet<&str> = rows[0].as_object().unwrap().keys().map(String::as_str).collect();
    for k in [
        "id",
        "source",
        "state",
        "follow",
        "track",
        "locations",
        "messages",
        "bytes",
        "last_message_age_s",
        "reconnects",
        "last_error",
    ] {
        assert!(keys.contains(k), "`{k}` missing from {:?}", rows[0]);
    }
    // 250 follows at 100 per site connection: 100 + 100 + 50, each id once.
    let mut all = Vec::new();
    for id in ["site/0", "site/1", "site/2"] {
        let row = by_id[id];
        assert_eq!(row["source"], "site");
        let follow: Vec<u64> = row["follow"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert!(!follow.is_empty() && follow.len() <= 100, "{id}: {} follows", follow.len());
        all.extend(follow);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=250).collect::<Vec<_>>());
    let f = by_id["filtered/0"];
    assert_eq!(
        (f["source"].clone(), f["track"].clone(), f["follow"].clone()),
        (json!("filtered"), json!(["rust"]), json!([]))
    );
    for row in &rows {
        assert!(row["bytes"].as_u64() > Some(0), "{row}");
        let age = row["last_message_age_s"].as_f64().unwrap_or_else(|| panic!("no age: {row}"));
        assert!((0.0..60.0).contains(&age), "{row}");
        assert_eq!(row["reconnects"], 0);
        assert_eq!(row["last_error"], Value::Null);
    }
    let text = h.api.get("/streams").await.text();
    for secret in ["demo-consumer-secret", "demo-token-secret", "oauth_signature"] {
        assert!(!text.contains(secret), "`{secret}` in /streams");
    }
    h.stop().await;
}

/// A parsed OpenMetrics exposition.
#[derive(Debug, Default)]
struct Exposition {
    /// Family name -> type.
    types: BTreeMap<String, String>,
    /// (sample name, labels, value).
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `key="value",...` with OpenMetrics escapes; panics on anything else.
fn parse_labels(mut s: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"").unwrap_or_else(|| panic!("label without =\": {line}"));
        assert!(is_metric_name(key) && !key.contains(':'), "bad label name `{key}`: {line}");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => panic!("bad escape {other:?}: {line}"),
                },
                Some((_, '\n')) | None => panic!("unterminated label value: {line}"),
                Some((_, c)) => value.push(c),
            }
        };
        assert!(labels.insert(key.to_owned(), value).is_none(), "duplicate label `{key}`: {line}");
        s = &rest[end + 1..];
        if let Some(r) = s.strip_prefix(',') {
            s = r;
            assert!(!s.is_empty(), "trailing comma: {line}");
        } else {
            assert!(s.is_empty(), "junk after a label: {line}");
        }
    }
    labels
}

/// A strict OpenMetrics text parser for what streamherd exports (counters
/// and gauges): every line is a descriptor of the current family or one of
/// its samples, and `# EOF` ends the text.
fn parse_openmetrics(text: &str) -> Exposition {
    let mut out = Exposition::default();
    let body = text
        .strip_suffix("# EOF\n")
        .unwrap_or_else(|| panic!("no final `# EOF`: {:?}", &text[text.len().saturating_sub(80)..]));
    let mut family: Option<(String, String)> = None;
    for line in body.lines() {
        assert!(!line.is_empty(), "blank line");
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            assert!(is_metric_name(name), "bad family name: {line}");
            match kind {
                "HELP" | "UNIT" => {}
                "TYPE" => {
                    let ty = parts.next().unwrap_or("");
                    assert!(
                        ["counter", "gauge", "histogram", "info", "stateset", "unknown", "summary", "gaugehistogram"]
                            .contains(&ty),
                        "{line}"
                    );
                    assert!(
                        out.types.insert(name.to_owned(), ty.to_owned()).is_none(),
                        "family declared twice: {line}"
                    );
                    family = Some((name.to_owned(), ty.to_owned()));
                }
                _ => panic!("unknown descriptor: {line}"),
            }
            continue;
        }
        let (name_labels, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match name_labels.split_once('{') {
            Some((n, rest)) => {
                (n, parse_labels(rest.strip_suffix('}').unwrap_or_else(|| panic!("no `}}`: {line}")), line))
            }
            None => (name_labels, BTreeMap::new()),
        };
        let (fam, ty) = family.as_ref().unwrap_or_else(|| panic!("sample before any # TYPE: {line}"));
        let ok = match ty.as_str() {
            "counter" => name == format!("{fam}_total") || name == format!("{fam}_created"),
            _ => name == fam,
        };
        assert!(ok, "sample `{name}` does not belong to family `{fam}` ({ty})");
        if ty == "counter" {
            assert!(value >= 0.0, "negative counter: {line}");
        }
        out.samples.push((name.to_owned(), labels, value));
    }
    out
}

/// SPEC 8: every exported name and its label names.
const SPEC_METRICS: [(&str, &[&str]); 10] = [
    ("streamherd_events_total", &["source", "kind"]),
    ("streamherd_bytes_total", &["source"]),
    ("streamherd_connections", &["source", "state"]),
    ("streamherd_reconnects_total", &["source", "cause"]),
    ("streamherd_limit_omitted", &["source"]),
    ("streamherd_gaps_total", &["source"]),
    ("streamherd_duplicates_dropped_total", &["source"]),
    ("streamherd_sink_events_total", &["sink"]),
    ("streamherd_sink_errors_total", &["sink"]),
    ("streamherd_sink_queue_depth", &["sink"]),
];

#[test]
fn the_openmetrics_parser_is_strict() {
    let good = "# HELP a_b A.\n# TYPE a_b counter\na_b_total{x=\"1\\\"\",y=\"\"} 3\n# TYPE g gauge\ng -1\n# EOF\n";
    let e = parse_openmetrics(good);
    assert_eq!(e.samples.len(), 2);
    assert_eq!(e.samples[0].1["x"], "1\"");
    for bad in [
        "# TYPE a counter\na_total 1\n",                // no EOF
        "# TYPE a counter\na 1\n# EOF\n",               // counter sample without _total
        "# TYPE a gauge\nb 1\n# EOF\n",                 // sample of another family
        "a 1\n# EOF\n",                                 // no TYPE
        "# TYPE a gauge\na{x=\"1} 1\n# EOF\n",          // unterminated label
        "# TYPE a gauge\na{x=\"1\",} 1\n# EOF\n",       // trailing comma
        "# TYPE a gauge\na one\n# EOF\n",               // bad value
        "# TYPE a gauge\n# TYPE a gauge\na 1\n# EOF\n", // family twice
        "# TYPE a counter\na_total -1\n# EOF\n",        // negative counter
    ] {
        assert!(std::panic::catch_unwind(|| parse_openmetrics(bad)).is_err(), "accepted: {bad:?}");
    }
}

#[actix_rt::test]
async fn metrics_are_openmetrics_text_with_every_spec_name() {
    let h = Harness::start(&sample("firehose"), Some(TOKEN)).await;
    let exposition = eventually(T, "events, bytes and sink writes counted", || async {
        let r = h.api.get("/metrics").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header(header::CONTENT_TYPE), "application/openmetrics-text; version=1.0.0; charset=utf-8");
        let e = parse_openmetrics(&r.text());
        let value = |name: &str, label: (&str, &str)| {
            e.samples
                .iter()
                .filter(|s| s.0 == name && s.1.get(label.0).map(String::as_str) == Some(label.1))
                .map(|s| s.2)
                .sum::<f64>()
        };
        let flowing = value("streamherd_events_total", ("kind", "tweet")) > 0.0
            && value("streamherd_bytes_total", ("source", "firehose")) > 0.0
            && value("streamherd_connections", ("state", "connected")) == 1.0
            && value("streamherd_sink_events_total", ("sink", "archive")) > 0.0;
        flowing.then_some(e)
    })
    .await;
    for (name, labels) in SPEC_METRICS {
        // OpenMetrics names a counter family without `_total` and its samples with it.
        let declared = match name.strip_suffix("_total") {
            Some(family) => exposition.types.get(family).map(String::as_str) == Some("counter"),
            None => exposition.types.get(name).map(String::as_str) == Some("gauge"),
        };
        assert!(declared, "{name} not declared with the right type: {:?}", exposition.types);
        let want: BTreeSet<&str> = labels.iter().copied().collect();
        for (sample, got, _) in exposition.samples.iter().filter(|s| s.0 == name) {
            assert_eq!(got.keys().map(String::as_str).collect::<BTreeSet<_>>(), want, "{sample} labels");
        }
    }
    h.stop().await;
}

#[actix_rt::test]
async fn accept_text_plain_gets_the_classic_format_that_promtool_lints_clean() {
    let h = Harness::start(&sample("firehose"), Some(TOKEN)).await;
    eventually(T, "events counted", || async {
        h.api.get("/metrics").await.text().contains("streamherd_events_total{").then_some(())
    })
    .await;
    let r =
        h.api.send(h.api.request(Method::GET, "/metrics").insert_header((header::ACCEPT, "text/plain")), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header(header::CONTENT_TYPE), "text/plain; version=0.0.4; charset=utf-8");
    let text = r.text();
    assert!(!text.contains("# EOF") && text.contains("# TYPE streamherd_events_total counter"), "{text:.400}");
    let promtool =
        ["/usr/bin/promtool", "/usr/local/bin/promtool"].into_iter().find(|p| std::path::Path::new(p).exists());
    match promtool {
        Some(promtool) => {
            use std::io::Write;
            let mut child = std::process::Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("promtool runs");
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}");
        }
        None if std::env::var_os("STREAMHERD_SKIP_PROMTOOL").is_some() => {
            eprintln!("promtool not installed and STREAMHERD_SKIP_PROMTOOL set: lint skipped");
        }
        None => panic!("promtool is not installed: .ci/run installs it (Debian's prometheus package); set STREAMHERD_SKIP_PROMTOOL=1 to skip"),
    }
    // Without text/plain it stays OpenMetrics.
    let r = h.api.get("/metrics").await;
    assert_eq!(r.header(header::CONTENT_TYPE), "application/openmetrics-text; version=1.0.0; charset=utf-8");
    h.stop().await;
}

#[actix_rt::test]
async fn every_reconnect_cause_is_exported_at_zero_before_any_reconnect() {
    let h = Harness::start(&sample("firehose"), Some(TOKEN)).await;
    let e = eventually(T, "the connection up", || async {
        let e = parse_openmetrics(&h.api.get("/metrics").await.text());
        let up = e.samples.iter().any(|s| s.0 == "streamherd_connections" && s.1["state"] == "connected" && s.2 == 1.0);
        up.then_some(e)
    })
    .await;
    for cause in streamherd_actors::error::DisconnectCause::LABELS {
        let sample = e
            .samples
            .iter()
            .find(|s| s.0 == "streamherd_reconnects_total" && s.1["source"] == "firehose" && s.1["cause"] == cause);
        assert_eq!(sample.map(|s| s.2), Some(0.0), "streamherd_reconnects_total{{cause=\"{cause}\"}} at 0");
    }
    for family in ["streamherd_limit_omitted", "streamherd_liveness_probes_total", "streamherd_gaps_total"] {
        assert!(e.samples.iter().any(|s| s.0 == family && s.1["source"] == "firehose"), "{family} present");
    }
    h.stop().await;
}

#[actix_rt::test]
async fn posting_follows_changes_the_plan_and_persists() {
    let h = Harness::start(&format!("{}{}{}", site("site", 1..=3), filter("filtered"), sample("firehose")), None).await;
    eventually(T, "the site connection", || async { (h.followed().await == (1..=3).collect()).then_some(()) }).await;
    let r = h.api.post_json("/sources/site/follows", r#"{"add":[4,"5"],"remove":[2]}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!((v["follows"].clone(), v["added"].clone(), v["removed"].clone()), (json!(4), json!(2), json!(1)), "{v}");
    assert!(v["applied"].is_string(), "{v}");
    let want: BTreeSet<u64> = [1, 3, 4, 5].into();
    eventually(T, "/streams to carry 1, 3, 4, 5", || async { (h.followed().await == want).then_some(()) }).await;
    let state =
        std::fs::read_to_string(h.cfg.dir.path().join("state/site/follows.json")).expect("persisted in state_dir");
    assert!(state.contains('4') && state.contains('5'), "{state}");

    // Adding what is already there changes nothing.
    let v = h.api.post_json("/sources/site/follows", r#"{"add":[1]}"#).await.json();
    assert_eq!((v["follows"].clone(), v["added"].clone(), v["removed"].clone()), (json!(4), json!(0), json!(0)), "{v}");

    // One filter credential follows at most 5000: the planner's refusal is a
    // 409 with its reason, and nothing changes.
    let r = h.api.post_json("/sources/filtered/follows", &format!(r#"{{"add":[{}]}}"#, ids(1..=5001))).await;
    let msg = r.error(409);
    assert!(msg.contains("follow"), "{msg}");
    assert!(h.streams().await.iter().filter(|s| s["source"] == "filtered").all(|s| s["follow"] == json!([])));

    // A sample stream takes no follow ids.
    let msg = h.api.post_json("/sources/firehose/follows", r#"{"add":[1]}"#).await.error(400);
    assert!(msg.contains("firehose"), "{msg}");
    h.stop().await;
}

#[actix_rt::test]
async fn consolidate_repacks_a_site_source_into_fewer_connections() {
    let h = Harness::start(&format!("{}{}", site("site", 1..=250), filter("filtered")), None).await;
    let site_rows = || async { h.streams().await.into_iter().filter(|r| r["source"] == "site").collect::<Vec<_>>() };
    eventually(T, "3 site connections", || async {
        let rows = site_rows().await;
        (rows.len() == 3 && rows.iter().all(|r| r["state"] == "connected")).then_some(())
    })
    .await;
    // Empty most of one connection: 190 ids left fit in two.
    let r = h.api.post_json("/sources/site/follows", &format!(r#"{{"remove":[{}]}}"#, ids(1..=60))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let left: BTreeSet<u64> = (61..=250).collect();
    eventually(T, "the removal to reach the connections", || async { (h.followed().await == left).then_some(()) })
        .await;

    let r = h.api.post("/sources/site/consolidate").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!((v["before"].clone(), v["after"].clone()), (json!(3), json!(2)), "{v}");
    assert!(v["moved"].as_u64() > Some(0), "{v}");
    let started = Instant::now();
    loop {
        let rows = site_rows().await;
        let carried: BTreeSet<u64> = rows
            .iter()
            .flat_map(|r| r["follow"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_u64())
            .collect();
        if rows.len() == 2 && carried == left {
            break;
        }
        let brief: Vec<String> = rows
            .iter()
            .map(|r| format!("{} {} {} follows", r["id"], r["state"], r["follow"].as_array().map_or(0, Vec::len)))
            .collect();
        assert!(started.elapsed() < T, "two site connections carrying every follow, within {T:?}: {brief:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Only site streams consolidate.
    let msg = h.api.post("/sources/filtered/consolidate").await.error(400);
    assert!(msg.contains("site"), "{msg}");
    h.stop().await;
}

#[actix_rt::test]
async fn update_rereads_the_follow_file_and_reports_a_broken_one() {
    let sources = "[[sources]]\nname = \"site\"\nkind = \"twitter.site\"\nbase_url = \"{url}\"\nfollow_file = \"{dir}/users.txt\"\nfollow_limit = 100\n{auth}\n";
    // The follow file must exist before the config is loaded.
    // so it lives in a directory of its own, named in the config.
    let users = |dir: &Path, text: &str| std::fs::write(dir.join("users.txt"), text).unwrap();
    let follow_dir = tempfile::tempdir().unwrap();
    users(follow_dir.path(), "1\n2\n");
    let h = Harness::start(&sources.replace("{dir}", &follow_dir.path().display().to_string()), Some(TOKEN)).await;
    eventually(T, "the site connection", || async { (h.followed().await == [1, 2].into()).then_some(()) }).await;

    users(follow_dir.path(), "# comment\n1\n2\n3\n");
    let r = h.api.post("/update").await;
    assert_eq!(r.status, 202, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "scheduled", "{v}");
    let site = &v["sources"]["site"];
    assert_eq!(
        (site["follows"].clone(), site["added"].clone(), site["removed"].clone()),
        (json!(3), json!(1), json!(0)),
        "{v}"
    );
    eventually(T, "the new follow on a connection", || async {
        (h.followed().await == [1, 2, 3].into()).then_some(())
    })
    .await;

    std::fs::remove_file(follow_dir.path().join("users.txt")).unwrap();
    let msg = h.api.post("/update").await.error(500);
    assert!(msg.contains("users.txt") || msg.contains("follow_file"), "{msg}");
    assert_eq!(h.followed().await, [1, 2, 3].into(), "a failed reload changes nothing");
    h.stop().await;
}

#[actix_rt::test]
async fn stop_answers_202_then_closes_every_stream_and_flushes() {
    let h = Harness::start(&format!("{}{}", site("site", 1..=3), sample("firehose")), Some(TOKEN)).await;
    eventually(T, "events written", || async {
        (h.running.metrics.sink_events_total.get_or_create(&streamherd_actors::metrics::Metrics::sink("archive")).get()
            > 20)
            .then_some(())
    })
    .await;
    let r = h.api.post("/stop").await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json(), json!({"status": "stopping"}));
    eventually(T, "every simulator connection closed", || async {
        let conns = h.sim.connections();
        (!conns.is_empty() && conns.iter().all(|c| c.closed_at.is_some())).then_some(())
    })
    .await;
    eventually(T, "no connection streaming", || async {
        h.running.stats.snapshots().iter().all(|s| s.state.as_str() != "connected").then_some(())
    })
    .await;
    // A second stop is harmless and answered the same.
    assert_eq!(h.api.post("/stop").await.status, 202);
    let envelopes = read_envelopes(&h.cfg.data());
    assert!(envelopes.len() > 20, "{}", envelopes.len());
    h.stop().await;
}

// ---- the binary -----------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_streamherd");

async fn wait_exit(child: &mut Child, timeout: Duration) -> i32 {
    let status = eventually(timeout, "the process to exit", || {
        let status = child.try_wait().expect("try_wait");
        async move { status }
    })
    .await;
    status.code().unwrap_or(-1)
}

#[actix_rt::test]
async fn post_stop_drains_sinks_and_the_process_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (sim_port, control_port) = (free_port(), free_port());
    let body = format!(
        r#"
[service]
stats_interval_s = 0
state_dir = "state"
[control]
listen = "127.0.0.1:{control_port}"
token = "${{STREAMHERD_TEST_CONTROL_TOKEN}}"
[simulator]
enabled = true
listen = "127.0.0.1:{sim_port}"
rate = 2000
[[sources]]
name = "firehose"
kind = "twitter.sample"
base_url = "http://127.0.0.1:{sim_port}"
{DEMO_AUTH}
[[sinks]]
name = "archive"
kind = "file"
path = "data/{{source}}.jsonl"
fsync = "never"
"#
    );
    std::fs::write(dir.path().join("config.toml"), body).unwrap();
    let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let mut child = Guard(
        Command::new(BIN)
            .current_dir(dir.path())
            .env_remove("STREAMHERD_CONFIG")
            .env_remove("RUST_LOG")
            .env("STREAMHERD_TEST_CONTROL_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("streamherd starts"),
    );
    let log = || std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{control_port}").parse().unwrap();
    let api = Api::new(addr, Some(TOKEN));
    let file = dir.path().join("data/firehose.jsonl");
    let size = || std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    eventually(T, "the control API and 200 kB written", || {
        let up = std::net::TcpStream::connect(addr).is_ok();
        let exited = child.0.try_wait().ok().flatten();
        assert!(exited.is_none(), "exited early ({exited:?}): {}", log());
        async move { (up && size() > 200_000).then_some(()) }
    })
    .await;
    // The token guards /stop in the binary too.
    assert_eq!(Api::new(addr, None).post("/stop").await.error(401), "missing or invalid bearer token");
    let written_before_stop = size();
    let r = api.post("/stop").await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json(), json!({"status": "stopping"}));
    let code = wait_exit(&mut child.0, T).await;
    assert_eq!(code, 0, "{}", log());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.ends_with('\n'), "the file ends with a complete line");
    let mut lines = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("broken line ({e}): {line:.120}"));
        assert_eq!(v["source"], "firehose");
        lines += 1;
    }
    assert!(lines >= 10, "{lines} lines");
    assert!(text.len() as u64 >= written_before_stop, "the stop lost written data");
    assert!(!log().contains(TOKEN), "the token is never logged");
}
