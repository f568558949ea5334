//! Static scale-out: two instances (`[service] instance = "0/2"` and
//! `"1/2"`) run one config, and the simulator's record of what each open
//! connection carries shows every follow on exactly one of them; `check`
//! shows each instance's share, and a follow change sent to the wrong
//! instance is refused naming the owner.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use streamherd_actors::scale::Instance;
use streamherd_sim::Scenario;

const T: Duration = Duration::from_secs(30);

#[actix_rt::test]
async fn two_instances_carry_every_follow_of_a_twenty_shard_site_source_exactly_once() {
    let sim = start_sim(Scenario::default(), 0, 1000).await;
    let follows: Vec<u64> = (1..=2_000).collect();
    let list: Vec<String> = follows.iter().map(u64::to_string).collect();
    let body = format!("follow = [{}]\nfollow_limit = 100", list.join(","));
    let ports = [free_port(), free_port()];
    let configs: Vec<TestConfig> = (0..2)
        .map(|i| {
            Conf::new()
                .service(&format!("instance = \"{i}/2\""))
                .table(&format!("[control]\nlisten = \"127.0.0.1:{}\"", ports[i]))
                .twitter("site", "twitter.site", &sim, &body)
                .file_sink("")
                .write()
        })
        .collect();
    // `check`'s view: the two shares add up to the whole list.
    let mut shares = Vec::new();
    for (i, cfg) in configs.iter().enumerate() {
        let described = cfg.load().sources[0].describe();
        let line = described
            .lines()
            .find(|l| l.contains(&format!("instance {i}/2: carries ")))
            .unwrap_or_else(|| panic!("{described}"));
        let n: usize = line.split("carries ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert!(line.ends_with("of 2000 follow ids"), "{line}");
        shares.push(n);
    }
    assert_eq!(shares.iter().sum::<usize>(), 2_000, "{shares:?}");
    assert!(shares.iter().all(|n| (800..1_200).contains(n)), "an even split: {shares:?}");

    let first = start_service(&configs[0]).await;
    let second = start_service(&configs[1]).await;
    let expected_connections: usize = shares.iter().map(|n| n.div_ceil(100)).sum();
    let carried = || -> BTreeMap<u64, usize> {
        let mut count = BTreeMap::new();
        for ids in sim.carried().values() {
            for id in ids {
                *count.entry(*id).or_default() += 1;
            }
        }
        count
    };
    wait_for(T, "every follow carried", || carried().len() == 2_000 && sim.carried().len() == expected_connections)
        .await;
    let count = carried();
    assert!(count.values().all(|n| *n == 1), "a follow on two connections");
    assert_eq!(count.keys().copied().collect::<BTreeSet<u64>>(), follows.iter().copied().collect());

    // A change goes to the instance that owns the id; the other says which that is.
    let one = Instance { index: 1, count: 2 };
    let theirs = (3_000u64..).find(|id| one.owns("site", &id.to_string())).unwrap();
    let client = awc::Client::new();
    let mut r = client
        .post(format!("http://127.0.0.1:{}/sources/site/follows", ports[0]))
        .send_json(&serde_json::json!({ "add": [theirs] }))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&r.body().await.unwrap()).into_owned();
    assert_eq!(r.status().as_u16(), 409, "{answer}");
    assert!(answer.contains(&format!("{theirs} on 1/2")), "{answer}");
    let mut r = client
        .post(format!("http://127.0.0.1:{}/sources/site/follows", ports[1]))
        .send_json(&serde_json::json!({ "add": [theirs] }))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", String::from_utf8_lossy(&r.body().await.unwrap()));
    wait_for(T, "the new follow carried once", || carried().get(&theirs) == Some(&1)).await;
    stop_service(&first).await;
    stop_service(&second).await;
}
