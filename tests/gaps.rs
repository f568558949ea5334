//! Knowing what was missed, over real loopback sockets against the
//! simulator: a gap event for every interruption of a Twitter stream (reset,
//! stall, restart, with the limit omissions inside it), the data-liveness
//! probe against a Mastodon stream that keeps its heartbeats and withholds
//! its events, a quiet stream that is not probed more than the rule allows,
//! and one attempt budget for a host whose 100 connections drop at once.

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;
use streamherd_actors::metrics::Metrics;
use streamherd_sim::{AttemptScript, ConnectionRecord, Scenario, SimHandle};

const T: Duration = Duration::from_secs(20);

/// Maps the simulator's monotonic instants onto the wall clock the gap
/// events are written in.
#[derive(Clone, Copy)]
struct Clock {
    mono: Instant,
    wall: DateTime<Utc>,
}

impl Clock {
    fn now() -> Clock {
        Clock { mono: Instant::now(), wall: Utc::now() }
    }

    fn wall(&self, at: Instant) -> DateTime<Utc> {
        if at >= self.mono {
            self.wall + chrono::Duration::from_std(at - self.mono).unwrap()
        } else {
            self.wall - chrono::Duration::from_std(self.mono - at).unwrap()
        }
    }
}

fn time(v: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("a timestamp: {v}"))).unwrap().with_timezone(&Utc)
}

fn gaps(envs: &[Envelope]) -> Vec<serde_json::Value> {
    envs.iter().filter(|e| e.kind == "gap").map(|e| serde_json::from_str(&e.payload).unwrap()).collect()
}

fn sink_events(running: &streamherd::app::Running) -> u64 {
    running.metrics.sink_events_total.get_or_create(&Metrics::sink("archive")).get()
}

fn gaps_total(running: &streamherd::app::Running, source: &str) -> u64 {
    running.metrics.gaps_total.get_or_create(&Metrics::source(source)).get()
}

/// The clock's error bound: the two readings in `Clock::now` and the
/// simulator's record of an end (taken as the end is queued) are this close.
const SLACK: chrono::Duration = chrono::Duration::milliseconds(5);

/// The gap of an interruption between `before` and `after`, checked against
/// the simulator's log: it starts no earlier than the old connection opened
/// and no later than it ended, and ends after the new one was opened.
fn assert_brackets(gap: &serde_json::Value, clock: Clock, before: &ConnectionRecord, after: &ConnectionRecord) {
    let (from, to) = (time(&gap["from"]), time(&gap["to"]));
    let closed = clock.wall(before.closed_at.expect("the old connection ended"));
    let reopened = clock.wall(after.opened_at);
    assert!(from >= clock.wall(before.opened_at) - SLACK, "{gap}: from before the old connection opened");
    assert!(from <= closed + SLACK, "{gap}: from {from} after the old connection ended at {closed}");
    assert!(to >= reopened - SLACK, "{gap}: to {to} before the new connection opened at {reopened}");
    assert!(to > from, "{gap}");
}

#[actix_rt::test]
async fn a_reset_filter_stream_writes_a_gap_bracketing_the_outage() {
    let reset = AttemptScript { close_after: Some(40), reset: true, ..Default::default() };
    let scenario = Scenario { attempts: vec![reset], then: AttemptScript::default() };
    let clock = Clock::now();
    let sim = start_sim(scenario, 500, 1000).await;
    let cfg = one_source(&sim, "twitter.filter", "track = [\"rust\"]");
    let running = start_service(&cfg).await;
    wait_for(T, "both connections' messages and the gap", || sink_events(&running) >= 81).await;
    stop_service(&running).await;
    let log = sim.connections();
    assert_eq!(log[0].end, "reset", "{log:?}");
    let envs = read_envelopes(&cfg.data());
    let g = gaps(&envs);
    assert_eq!(g.len(), 1, "one interruption, one gap: {g:?}");
    assert_eq!(g[0]["reason"], "reconnect");
    assert!(g[0]["cause"].as_str().unwrap().contains("network"), "{}", g[0]);
    assert_eq!(g[0]["limit_omitted"], 0);
    assert_brackets(&g[0], clock, &log[0], &log[1]);
    // In order: every message of the old connection, the gap, then the new one's.
    let at = envs.iter().position(|e| e.kind == "gap").unwrap();
    assert_eq!(at, 40, "the gap follows the 40 messages before the reset");
    assert_eq!(envs[at].connection, "src/0");
    let second: Vec<_> = sim.sent().into_iter().filter(|m| m.attempt == 1).collect();
    assert_eq!(envs[at + 1].id, second[0].id, "then the new connection's first message");
    assert_eq!(gaps_total(&running, "src"), 1);
    sim.stop().await;
}

#[actix_rt::test]
async fn a_stall_writes_a_stall_gap_from_the_last_byte() {
    let silent = AttemptScript { silence_after: Some(5), silence_ms: 5_000, ..Default::default() };
    let scenario = Scenario { attempts: vec![silent], then: AttemptScript::default() };
    let clock = Clock::now();
    let sim = start_sim(scenario, 500, 1000).await;
    let cfg = one_source(&sim, "twitter.filter", "track = [\"rust\"]\nstall_timeout_s = 0.3");
    let running = start_service(&cfg).await;
    wait_for(T, "the second connection's messages", || sink_events(&running) >= 11).await;
    stop_service(&running).await;
    let log = sim.connections();
    let envs = read_envelopes(&cfg.data());
    let g = gaps(&envs);
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!(g[0]["reason"], "stall");
    let (from, to) = (time(&g[0]["from"]), time(&g[0]["to"]));
    // The silence began after the fifth message: from is the last byte,
    // at least the stall timeout before the reconnect.
    let reopened = clock.wall(log[1].opened_at);
    assert!(reopened - from >= chrono::Duration::milliseconds(300) - SLACK, "{}: reconnected too early", g[0]);
    assert!(reopened - from < chrono::Duration::milliseconds(1500), "{}: from is not the last byte", g[0]);
    assert!(to >= reopened - SLACK, "{}", g[0]);
    let fifth = envs.iter().filter(|e| e.kind != "gap").nth(4).unwrap();
    let fifth_at = DateTime::parse_from_rfc3339(&fifth.received_at).unwrap().with_timezone(&Utc);
    assert!(from >= fifth_at, "{}: from precedes the last message {fifth_at}", g[0]);
    sim.stop().await;
}

#[actix_rt::test]
async fn limit_notices_inside_a_gap_are_counted_in_it() {
    // The new connection reports 3 limit notices (cumulative track 10, 25,
    // 45) before its first tweet: 45 tweets withheld inside the gap.
    let reset = AttemptScript { close_after: Some(10), reset: true, ..Default::default() };
    let throttled = AttemptScript { limit_first: vec![10, 25, 45], ..Default::default() };
    let scenario = Scenario { attempts: vec![reset, throttled], then: AttemptScript::default() };
    let sim = start_sim(scenario, 500, 1000).await;
    let cfg = one_source(&sim, "twitter.filter", "track = [\"rust\"]");
    let running = start_service(&cfg).await;
    wait_for(T, "both connections", || sink_events(&running) >= 24).await;
    stop_service(&running).await;
    let envs = read_envelopes(&cfg.data());
    let kinds: Vec<&str> = envs[10..15].iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds[..4], ["limit", "limit", "limit", "gap"], "the limit notices come first, then the gap");
    assert_ne!(kinds[4], "limit", "the gap closes at the first other message");
    let g = gaps(&envs);
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!(g[0]["limit_omitted"], 45, "{}", g[0]);
    assert_eq!(g[0]["reason"], "reconnect");
    sim.stop().await;
}

#[actix_rt::test]
async fn a_graceful_restart_writes_a_restart_gap_from_the_last_written_event() {
    let sim = start_sim(Scenario::default(), 200, 1000).await;
    let cfg = one_source(&sim, "twitter.filter", "track = [\"rust\"]");
    let running = start_service(&cfg).await;
    wait_for(T, "the first run's events", || sink_events(&running) >= 20).await;
    stop_service(&running).await;
    let first = read_envelopes(&cfg.data());
    assert!(gaps(&first).is_empty(), "a first start has nothing to name: {:?}", gaps(&first));
    let last_written = first.iter().map(|e| e.received_at.clone()).max().unwrap();
    let stopped = Utc::now();

    let running = start_service(&cfg).await;
    wait_for(T, "the second run's events", || sink_events(&running) >= 20).await;
    stop_service(&running).await;
    let all = read_envelopes(&cfg.data());
    let g = gaps(&all);
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!(g[0]["reason"], "restart");
    let from = time(&g[0]["from"]);
    let last = DateTime::parse_from_rfc3339(&last_written).unwrap().with_timezone(&Utc);
    assert!((from - last).num_milliseconds().abs() <= 1, "from {from} is the last written event {last}");
    assert!(time(&g[0]["to"]) > stopped, "{}", g[0]);
    let at = all.iter().position(|e| e.kind == "gap").unwrap();
    assert_eq!(at, first.len(), "the restart gap comes before the second run's first event");
    sim.stop().await;
}

/// Config of one Mastodon hashtag stream with the liveness rule scaled down.
fn silent_config(sim: &SimHandle, transport: &str, liveness: &str) -> TestConfig {
    Conf::new().mastodon("fedi", sim, transport, &["hashtag:rust"], liveness).file_sink("").write()
}

fn probes(running: &streamherd::app::Running) -> u64 {
    running.metrics.liveness_probes_total.get_or_create(&Metrics::source("fedi")).get()
}

async fn silent_stream_is_recovered(transport: &str) {
    // The first connection delivers 5 events, then only heartbeats.
    let muted = AttemptScript { mute_after: Some(5), ..Default::default() };
    let scenario = Scenario { attempts: vec![muted], ..Default::default() };
    let sim = start_sim(scenario, 0, 50).await;
    let cfg = silent_config(&sim, transport, "liveness_min_s = 0.4\nliveness_factor = 20");
    let running = start_service(&cfg).await;
    wait_for(T, "connected", || running.stats.snapshots().iter().any(|s| s.state.as_str() == "connected")).await;
    let first: Vec<String> = (0..5).map(|_| sim.mastodon_post(&["rust"], true, false).id).collect();
    wait_for(T, "the five delivered", || sink_events(&running) >= 5).await;
    let delivered_at = Instant::now();
    let withheld: Vec<String> = (0..7).map(|_| sim.mastodon_post(&["rust"], true, false).id).collect();
    wait_for(T, "the probe's recovery", || sink_events(&running) > 5 + 7).await;
    let recovered_after = delivered_at.elapsed();
    // The probe reconnected: the muted connection was given up.
    wait_for(T, "the probe's reconnect", || sim.connections().len() >= 2).await;
    stop_service(&running).await;
    let envs = read_envelopes(&cfg.data());
    let ups: Vec<String> = envs.iter().filter(|e| e.kind == "update").map(|e| e.id.clone().unwrap()).collect();
    let want: Vec<String> = first.iter().chain(&withheld).cloned().collect();
    assert_eq!(ups, want, "{transport}: the withheld statuses are written once, in order");
    let g = gaps(&envs);
    assert!(!g.is_empty(), "{transport}: a gap");
    assert_eq!(g[0]["reason"], "silent_stream", "{transport}: {g:?}");
    assert_eq!(g[0]["recovered"], 7, "{}", g[0]);
    let at = envs.iter().position(|e| e.kind == "gap").unwrap();
    assert_eq!(at, 12, "{transport}: the gap follows what it recovered");
    // The bound: 0.4 s of silence (20 gaps of a burst are less), then the
    // REST call; the silence began as the fifth arrived, a little before
    // the test saw it written.
    assert!(
        recovered_after + Duration::from_millis(50) >= Duration::from_millis(400),
        "{transport}: probed after {recovered_after:?}"
    );
    assert!(recovered_after < Duration::from_secs(3), "{transport}: probed after {recovered_after:?}");
    assert!(probes(&running) >= 1);
    assert_eq!(sim.connections()[0].end, "client closed", "{transport}: {:?}", sim.connections());
    sim.stop().await;
}

#[actix_rt::test]
async fn a_silent_sse_stream_is_probed_recovered_and_reconnected() {
    silent_stream_is_recovered("sse").await;
}

#[actix_rt::test]
async fn a_silent_websocket_stream_is_probed_recovered_and_reconnected() {
    silent_stream_is_recovered("websocket").await;
}

#[actix_rt::test]
async fn a_quiet_stream_is_probed_no_more_than_the_rule_allows() {
    // One status, then heartbeats only: each probe asks the timeline, finds
    // nothing and doubles the bound, so over a window W after the status the
    // probes come at B, 3B, 7B, ... (B = the bound learned from the status).
    let sim = start_sim(Scenario::default(), 0, 50).await;
    let cfg = silent_config(&sim, "websocket", "liveness_min_s = 0.2\nliveness_factor = 2");
    let running = start_service(&cfg).await;
    wait_for(T, "connected", || running.stats.snapshots().iter().any(|s| s.state.as_str() == "connected")).await;
    sim.mastodon_post(&["rust"], true, false);
    wait_for(T, "the one status", || sink_events(&running) >= 1).await;
    let start = Instant::now();
    let bound = running.stats.snapshots()[0].liveness_bound.expect("a bound once an event came");
    wait_for(T, "a first probe", || probes(&running) >= 1).await;
    assert!(
        start.elapsed() + Duration::from_millis(20) >= bound,
        "probed after {:?}, bound {bound:?}",
        start.elapsed()
    );
    const W: Duration = Duration::from_millis(3_200);
    wait_for(T, "the window", || start.elapsed() >= W).await;
    let n = probes(&running);
    let allowed = (1..10).take_while(|k| bound * ((1u32 << k) - 1) <= W).count() as u64;
    eprintln!("bound {bound:?}: {n} probes in {W:?} of quiet, the rule allows {allowed}");
    assert!(n >= 1 && n <= allowed, "{n} probes in {W:?} of quiet with a {bound:?} bound; the rule allows {allowed}");
    let snap = &running.stats.snapshots()[0];
    assert!(!snap.silent, "a probe that found nothing clears the silent mark");
    stop_service(&running).await;
    let envs = read_envelopes(&cfg.data());
    assert!(gaps(&envs).is_empty(), "a quiet stream missed nothing: {:?}", gaps(&envs));
    assert_eq!(sim.connections().len(), 1, "a quiet stream is not reconnected");
    sim.stop().await;
}

#[actix_rt::test]
async fn a_hundred_site_shards_reset_at_once_stay_within_the_host_budget() {
    const PER_S: usize = 40;
    let sim = start_sim(Scenario::default(), 2, 1000).await;
    let ids = (1..=10_000u64).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let cfg = Conf::new()
        .backoff(Some(&FAST_BACKOFF.replace("max_connects_per_s = 1000", &format!("max_connects_per_s = {PER_S}"))))
        .twitter("src", "twitter.site", &sim, &format!("follow = [{ids}]\nfollow_limit = 100\nmax_connections = 100"))
        .file_sink("")
        .write();
    let running = start_service(&cfg).await;
    let site = || sim.connections().into_iter().filter(|c| c.path.ends_with("site.json")).collect::<Vec<_>>();
    let open = || site().iter().filter(|c| c.closed_at.is_none()).count();
    wait_for(T, "100 site connections open", || open() >= 100).await;
    let before = site().len();
    let reset = sim.reset_all();
    assert_eq!(reset, 100, "every open stream was reset");
    wait_for(T, "all 100 back", || site().len() >= before + 100 && open() >= 100).await;
    wait_for(T, "a gap from each", || gaps_total(&running, "src") >= 100).await;
    let log = site();
    assert!(log[..before].iter().all(|c| c.end == "reset_all"), "{log:?}");
    let at: Vec<Instant> = log[before..].iter().map(|c| c.opened_at).collect();
    let (busiest, spread) = busiest_second(&at);
    eprintln!("100 reconnects over {spread:?}; the busiest second held {busiest} (budget {PER_S}/s)");
    assert!(busiest <= PER_S, "{busiest} attempts in one second, budget {PER_S}");
    stop_service(&running).await;
    // Every reset connection's gap was written, each by its own connection.
    let envs = read_envelopes(&cfg.data());
    let g: Vec<&Envelope> = envs.iter().filter(|e| e.kind == "gap").collect();
    let connections: std::collections::BTreeSet<&str> = g.iter().map(|e| e.connection.as_str()).collect();
    assert_eq!(connections.len(), 100, "one gap per reset connection");
    sim.stop().await;
}

#[actix_rt::test]
async fn a_hand_over_from_a_connection_that_was_down_writes_a_handover_gap() {
    // The old connection is reset and then refused (503, a 3 s wait): the
    // predicate change's new connection answers while it is down, so
    // nothing overlaps.
    let reset = AttemptScript { close_after: Some(20), reset: true, ..Default::default() };
    let refused = AttemptScript { status: Some(503), ..Default::default() };
    let scenario = Scenario { attempts: vec![reset, refused], then: AttemptScript::default() };
    let clock = Clock::now();
    let sim = start_sim(scenario, 500, 1000).await;
    let cfg = Conf::new()
        .backoff(Some(
            &FAST_BACKOFF
                .replace("http_initial_ms = 50\nhttp_max_ms = 400", "http_initial_ms = 3000\nhttp_max_ms = 3000"),
        ))
        .twitter(
            "src",
            "twitter.filter",
            &sim,
            "track = [\"rust\"]\nupdate = { min_delay_s = 0.05, max_delay_s = 0.1 }",
        )
        .file_sink("")
        .write();
    let running = start_service(&cfg).await;
    wait_for(T, "the old connection refused after its reset", || sim.connections().len() >= 2).await;
    let planner = running
        .supervisor
        .send(streamherd_actors::supervisor::GetSource { source: "src".into() })
        .await
        .unwrap()
        .expect("the source runs");
    let change = streamherd_actors::messages::ChangeFollows { add: vec!["42".into()], remove: vec![] };
    planner.change_follows(change).await.unwrap().unwrap();
    wait_for(T, "the hand-over's gap", || gaps_total(&running, "src") >= 1).await;
    wait_for(T, "the new connection's messages", || sink_events(&running) >= 20 + 1 + 10).await;
    stop_service(&running).await;
    let log = sim.connections();
    let envs = read_envelopes(&cfg.data());
    let g: Vec<(&Envelope, serde_json::Value)> =
        envs.iter().filter(|e| e.kind == "gap").map(|e| (e, serde_json::from_str(&e.payload).unwrap())).collect();
    assert_eq!(g.len(), 1, "{g:?}");
    let (gap_env, gap) = &g[0];
    assert_eq!(gap["reason"], "handover", "{gap}");
    assert_eq!(gap_env.connection, "src/1", "written on the new connection");
    assert!(gap["note"].as_str().unwrap().contains("src/0 was backing_off"), "{gap}");
    assert_eq!(log[2].params.get("follow").map(String::as_str), Some("42"), "{log:?}");
    assert_brackets(gap, clock, &log[0], &log[2]);
    // Nothing of the new connection precedes the gap.
    let at = envs.iter().position(|e| e.kind == "gap").unwrap();
    assert_eq!(at, 20, "{:?}", &envs[..at.min(25)].iter().map(|e| &e.connection).collect::<Vec<_>>());
    sim.stop().await;
}

/// `streamherd coverage` on the archive of a real run with two scripted
/// outages (a reset, then a stall): the table's gap count and seconds are
/// the outages' as the gap events and the simulator's log have them, and
/// the page's timeline shades both where they were.
#[actix_rt::test]
async fn coverage_reports_the_outages_of_a_real_run() {
    let reset = AttemptScript { close_after: Some(30), reset: true, ..Default::default() };
    let stall = AttemptScript { silence_after: Some(30), silence_ms: 5_000, ..Default::default() };
    let scenario = Scenario { attempts: vec![reset, stall], then: AttemptScript::default() };
    let clock = Clock::now();
    let sim = start_sim(scenario, 500, 1000).await;
    let cfg = one_source(&sim, "twitter.filter", "track = [\"rust\"]\nstall_timeout_s = 0.4");
    let running = start_service(&cfg).await;
    wait_for(T, "two gaps", || gaps_total(&running, "src") >= 2).await;
    wait_for(T, "the third connection's messages", || sink_events(&running) >= 30 + 30 + 2 + 20).await;
    stop_service(&running).await;
    let log = sim.connections();
    let envs = read_envelopes(&cfg.data());
    let g = gaps(&envs);
    assert_eq!(g.len(), 2, "{g:?}");
    assert_brackets(&g[0], clock, &log[0], &log[1]);
    assert_eq!((g[0]["reason"].as_str(), g[1]["reason"].as_str()), (Some("reconnect"), Some("stall")));
    let seconds: f64 =
        g.iter().map(|g| (time(&g["to"]) - time(&g["from"])).num_microseconds().unwrap() as f64 / 1e6).sum();
    // The stall alone lasted the stall timeout: from its last byte to the reconnect.
    assert!(seconds >= 0.4, "{seconds}");

    let out = command(
        env!("CARGO_BIN_EXE_streamherd"),
        &["coverage", "--config", "config.toml", "--by", "minute", "--html", "page.html"],
        cfg.dir.path(),
    )
    .output()
    .expect("streamherd runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let total =
        stdout.lines().find(|l| l.starts_with("src") && l.contains("total")).unwrap_or_else(|| panic!("{stdout}"));
    let cells: Vec<&str> = total.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
    // source, bucket, events, covered_s, covered%, gaps, gap_s, reasons, recovered, omitted
    assert_eq!(cells[2], (envs.len() - 2).to_string(), "{stdout}");
    assert_eq!(cells[5], "2", "{stdout}");
    let gap_s: f64 = cells[6].parse().unwrap();
    assert!((gap_s - seconds).abs() < 0.002, "{gap_s} s in the report, {seconds} s in the gap events\n{stdout}");
    assert!(cells[7].contains("reconnect×1") && cells[7].contains("stall×1"), "{stdout}");
    let page = std::fs::read_to_string(cfg.dir.path().join("page.html")).unwrap();
    assert_eq!(page.matches("class=\"timeline\" data-source=\"src\"").count(), 1, "one timeline");
    let shaded: Vec<&str> =
        page.match_indices("class=\"gap\"").map(|(i, _)| &page[i..(i + 300).min(page.len())]).collect();
    assert_eq!(shaded.len(), 2, "two shaded gaps");
    assert!(
        shaded[0].contains("data-reason=\"reconnect\"") && shaded[1].contains("data-reason=\"stall\""),
        "{shaded:?}"
    );
    eprintln!("coverage of the run:\n{stdout}");
    sim.stop().await;
}
