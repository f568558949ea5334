//! Issue-3 behaviour over real sockets: site streams packed `follow_limit`
//! per connection, live follow changes through control streams, consolidation,
//! make-before-break predicate updates under load with nothing lost or
//! written twice, and follow changes that survive a restart.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use streamherd::app::Running;
use streamherd_actors::messages::ChangeFollows;
use streamherd_actors::metrics::Metrics;
use streamherd_actors::source::SourceHandle;
use streamherd_actors::supervisor::GetSource;
use streamherd_sim::{AttemptScript, Scenario, SimHandle};

const T: Duration = Duration::from_secs(30);

async fn planner(running: &Running, source: &str) -> SourceHandle {
    running.supervisor.send(GetSource { source: source.into() }).await.unwrap().expect("the source runs")
}

/// Follow ids as the control API passes them on.
fn ids(list: impl IntoIterator<Item = u64>) -> Vec<String> {
    list.into_iter().map(|id| id.to_string()).collect()
}

fn site_config(sim: &SimHandle, follows: &[u64], extra: &str) -> TestConfig {
    let body = format!("follow_file = \"{{dir}}/users.txt\"\nfollow_limit = 100\nmax_connections = 200\n{extra}");
    let cfg = Conf::new().twitter("site", "twitter.site", sim, &body).file_sink("").write();
    let list: Vec<String> = follows.iter().map(u64::to_string).collect();
    std::fs::write(cfg.dir.path().join("users.txt"), list.join("\n")).unwrap();
    cfg
}

/// Every follow carried by exactly one open connection, per the simulator.
fn carried_once(sim: &SimHandle) -> Result<BTreeSet<u64>, String> {
    let mut all = BTreeSet::new();
    for (attempt, ids) in sim.carried() {
        for id in ids {
            if !all.insert(id) {
                return Err(format!("{id} carried twice (again on attempt {attempt})"));
            }
        }
    }
    Ok(all)
}

/// `wait_for` that dumps the simulator's view when it times out.
async fn wait_sim(sim: &SimHandle, what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        if start.elapsed() > T {
            let conns: Vec<_> = sim
                .connections()
                .iter()
                .map(|c| (c.attempt, c.closed_at.is_some(), c.end.clone(), c.follows.len(), c.control_uri.is_some()))
                .collect();
            let calls: Vec<_> =
                sim.control_calls().iter().map(|c| (c.attempt, c.op, c.user_ids.len(), c.status)).collect();
            let carried: Vec<_> = sim.carried().iter().map(|(a, ids)| (*a, ids.len())).collect();
            panic!("timed out waiting for {what}\nconnections {conns:?}\ncalls {calls:?}\ncarried {carried:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn open_connections(sim: &SimHandle) -> BTreeMap<u64, BTreeSet<u64>> {
    sim.carried()
}

#[actix_rt::test]
async fn ten_thousand_follows_use_exactly_one_hundred_site_connections() {
    let sim = start_sim(Scenario::default(), 1, 500).await;
    let follows: Vec<u64> = (1..=10_000).collect();
    let cfg = site_config(&sim, &follows, "");
    let running = start_service(&cfg).await;
    wait_for(T, "100 connections carrying 10,000 follows", || {
        open_connections(&sim).len() == 100 && carried_once(&sim).map(|s| s.len()) == Ok(10_000)
    })
    .await;
    let carried = carried_once(&sim).unwrap();
    assert_eq!(carried, follows.iter().copied().collect());
    assert!(sim.carried().values().all(|ids| ids.len() == 100));
    assert_eq!(sim.connections().len(), 100, "no connection was opened twice");
    stop_service(&running).await;
    sim.stop().await;
}

#[actix_rt::test]
async fn follow_changes_fill_non_full_connections_through_control_streams() {
    // Fast enough that the control message follows the 100 friends preambles at once.
    let sim = start_sim(Scenario::default(), 2000, 500).await;
    let cfg = site_config(&sim, &(1..=300).collect::<Vec<_>>(), "");
    let running = start_service(&cfg).await;
    wait_for(T, "3 connections", || carried_once(&sim).map(|s| s.len()) == Ok(300)).await;
    wait_for(T, "control streams announced", || {
        running.stats.snapshots().iter().all(|s| s.messages > 101) && running.stats.snapshots().len() == 3
    })
    .await;
    let p = planner(&running, "site").await;

    // Make room: 40 leave each connection (control-stream remove_user).
    let remove: Vec<u64> = [1..=40u64, 101..=140, 201..=240].into_iter().flatten().collect();
    let r = p.change_follows(ChangeFollows { add: vec![], remove: ids(remove) }).await.unwrap().unwrap();
    assert_eq!((r.follows, r.removed), (180, 120));
    wait_for(T, "three connections of 60", || sim.carried().values().all(|s| s.len() == 60)).await;

    // 250 new follows: 120 fill the three connections, 130 open two more.
    let attempts_before: BTreeSet<u64> = sim.carried().keys().copied().collect();
    let add: Vec<u64> = (10_001..=10_250).collect();
    let r = p.change_follows(ChangeFollows { add: ids(add.clone()), remove: vec![] }).await.unwrap().unwrap();
    assert_eq!((r.follows, r.added), (430, 250));
    wait_sim(&sim, "430 follows carried", || carried_once(&sim).map(|s| s.len()) == Ok(430)).await;
    let after = sim.carried();
    let diag = format!(
        "{:?}\n{:?}",
        sim.connections()
            .iter()
            .map(|c| (c.attempt, c.closed_at.is_some(), c.end.clone(), c.follows.len()))
            .collect::<Vec<_>>(),
        sim.control_calls().iter().map(|c| (c.attempt, c.op, c.user_ids.len(), c.status)).collect::<Vec<_>>()
    );
    for a in &attempts_before {
        assert!(after.contains_key(a), "attempt {a} closed: {diag}");
        assert_eq!(after[a].len(), 100, "connection {a} was filled in place");
    }
    assert_eq!(after.len(), 5, "two new connections for the 130 that did not fit");
    assert_eq!(sim.connections().len(), 5, "no reconnect: the old connections stayed up");
    let adds: usize =
        sim.control_calls().iter().filter(|c| c.op == "add_user" && c.status == 200).map(|c| c.user_ids.len()).sum();
    assert_eq!(adds, 120, "the non-full connections were filled through control streams");

    // Remove 60 % and consolidate: the fewest connections, every follow once.
    let all: Vec<u64> = carried_once(&sim).unwrap().into_iter().collect();
    let gone: Vec<u64> = all.iter().copied().filter(|id| id % 5 < 3).collect();
    let left: BTreeSet<u64> = all.iter().copied().filter(|id| id % 5 >= 3).collect();
    p.change_follows(ChangeFollows { add: vec![], remove: ids(gone) }).await.unwrap().unwrap();
    wait_sim(&sim, "removals applied", || carried_once(&sim).as_ref() == Ok(&left)).await;
    let c = p.consolidate().await.unwrap().unwrap();
    let fewest = left.len().div_ceil(100);
    assert_eq!(c.after, fewest);
    wait_for(T, "consolidated", || sim.carried().len() == fewest && carried_once(&sim).as_ref() == Ok(&left)).await;
    stop_service(&running).await;
    sim.stop().await;
}

#[actix_rt::test]
async fn twenty_predicate_updates_under_load_lose_nothing_and_write_nothing_twice() {
    const MESSAGES: u64 = 6_000;
    // One simulator-wide stream at 1,500 events/s that every open filter connection sees.
    let scenario = Scenario::always(AttemptScript { broadcast: true, limit: Some(MESSAGES), ..Default::default() });
    let sim = start_sim(scenario, 1500, 100).await;
    let cfg =
        one_source(&sim, "twitter.filter", "track = [\"rust\"]\nupdate = { min_delay_s = 0.05, max_delay_s = 0.2 }");
    let running = start_service(&cfg).await;
    wait_for(T, "streaming", || sim.broadcast_sent() > 100).await;
    let p = planner(&running, "src").await;
    for i in 0..20u64 {
        p.change_follows(ChangeFollows { add: ids([1_000 + i]), remove: vec![] }).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    let written = || running.metrics.sink_events_total.get_or_create(&Metrics::sink("archive")).get();
    wait_for(T, "every broadcast message", || sim.broadcast_sent() >= MESSAGES).await;
    let expected: BTreeSet<String> =
        sim.sent().iter().filter(|m| m.kind == "tweet").filter_map(|m| m.id.clone()).collect();
    wait_for(T, "all events written", || written() as usize >= sim.sent().len()).await;
    stop_service(&running).await;
    let envs = read_envelopes(&cfg.data());
    let mut seen = BTreeMap::new();
    for e in envs.iter().filter(|e| e.kind == "tweet") {
        *seen.entry(e.id.clone().unwrap()).or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "written twice: {twice:?}");
    let missing: Vec<_> = expected.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} lost, e.g. {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(5)]
    );
    // Make-before-break: each connection opened before its predecessor closed.
    let log = sim.connections();
    assert!(log.len() >= 5, "several restarts happened: {}", log.len());
    for w in log.windows(2) {
        let closed = w[0].closed_at.expect("replaced connections are closed");
        assert!(w[1].opened_at < closed, "attempt {} opened after {} closed", w[1].attempt, w[0].attempt);
    }
    assert_eq!(log.last().unwrap().params.get("follow").map(|f| f.split(',').count()), Some(20));
    let dups = running.metrics.duplicates_dropped_total.get_or_create(&Metrics::source("src")).get();
    assert!(dups > 0, "the overlaps were de-duplicated");
    sim.stop().await;
}

#[actix_rt::test]
async fn follows_added_through_the_api_survive_a_restart() {
    let sim = start_sim(Scenario::default(), 5, 500).await;
    let cfg = site_config(&sim, &(1..=50).collect::<Vec<_>>(), "");
    let running = start_service(&cfg).await;
    wait_for(T, "connected", || carried_once(&sim).map(|s| s.len()) == Ok(50)).await;
    let p = planner(&running, "site").await;
    p.change_follows(ChangeFollows { add: ids(501..=530), remove: ids([1, 2]) }).await.unwrap().unwrap();
    wait_sim(&sim, "78 carried", || carried_once(&sim).map(|s| s.len()) == Ok(78)).await;
    stop_service(&running).await;
    wait_for(T, "closed", || sim.carried().is_empty()).await;

    let running = start_service(&cfg).await;
    let want: BTreeSet<u64> = (3..=50).chain(501..=530).collect();
    wait_for(T, "the same 78 after the restart", || carried_once(&sim).as_ref() == Ok(&want)).await;
    stop_service(&running).await;
    sim.stop().await;
}
