//! Scale-out. Static: two instances (`[service] instance = "0/2"` and
//! `"1/2"`) run one config, and the simulator's record of what each open
//! connection carries shows every follow on exactly one of them; `check`
//! shows each instance's share, and a follow change sent to the wrong
//! instance is refused naming the owner. With leases in a real
//! `redis-server`: three instances split a Mastodon (or Jetstream) source,
//! one is SIGKILLed, and the other two carry its shards within the lease,
//! resume them from the positions in Redis with nothing lost, and write a
//! `takeover` gap naming the interval.

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

/// The lease the coordination tests run with.
const LEASE_MS: u64 = 1_500;

/// A `redis-server` and three streamherd processes sharing one config
/// through it, each in its own directory with its own file sink.
struct Cluster {
    redis: common::redis_server::Redis,
    _redis_dir: tempfile::TempDir,
    dirs: Vec<tempfile::TempDir>,
    children: Vec<Option<Guard>>,
    pids: Vec<u32>,
}

impl Cluster {
    fn start(conf: impl Fn(usize, Conf) -> Conf) -> Cluster {
        const BIN: &str = env!("CARGO_BIN_EXE_streamherd");
        let redis_dir = tempfile::tempdir().unwrap();
        let redis = common::redis_server::Redis::start(free_port(), redis_dir.path(), false);
        let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let children: Vec<Option<Guard>> = dirs
            .iter()
            .enumerate()
            .map(|(i, dir)| {
                conf(i, Conf::new())
                    .service(&format!("coordination = \"{}\"\nlease_ms = {LEASE_MS}\nlease_buckets = 16", redis.url()))
                    .sink(&format!(
                        "name = \"archive\"\nkind = \"file\"\npath = \"{}/data/{{source}}.jsonl\"\nfsync = \"never\"",
                        dir.path().display()
                    ))
                    .write_to(dir.path());
                let log = std::fs::File::create(dir.path().join("run.log")).unwrap();
                Some(spawn(command(BIN, &[], dir.path()).stdout(std::process::Stdio::null()).stderr(log)))
            })
            .collect();
        let pids = children.iter().map(|c| c.as_ref().unwrap().0.id()).collect();
        Cluster { redis, _redis_dir: redis_dir, dirs, children, pids }
    }

    /// How many of `keys` of `source` instance `i` holds the lease of.
    fn carried_by(&self, i: usize, source: &str, keys: &[String]) -> usize {
        let view = streamherd_actors::coordination::Leases::new(String::new(), &self.redis.url(), 16);
        let mut conn = self.redis.client().get_connection().unwrap();
        let me = format!(":{}", self.pids[i]);
        keys.iter()
            .filter(|k| {
                let key = format!("streamherd:lease:{source}:{}", view.bucket(source, k));
                let holder: Option<String> = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
                holder.is_some_and(|h| h.ends_with(&me))
            })
            .count()
    }

    /// Whether the leases of `source` settled: all 16 held, none by an
    /// instance beyond its fair share (a third, rounded up).
    fn settled(&self, source: &str) -> bool {
        let mut conn = self.redis.client().get_connection().unwrap();
        let keys: Vec<String> = (0..16).map(|b| format!("streamherd:lease:{source}:{b}")).collect();
        let holders: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(&mut conn).unwrap();
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for h in &holders {
            *per.entry(h.clone().unwrap_or_default()).or_default() += 1;
        }
        !per.contains_key("") && per.values().all(|n| *n <= 6)
    }

    /// The instance holding the most of `keys` (and how many).
    fn busiest(&self, source: &str, keys: &[String]) -> (usize, usize) {
        let counts: Vec<usize> = (0..3).map(|i| self.carried_by(i, source, keys)).collect();
        assert_eq!(counts.iter().sum::<usize>(), keys.len(), "every key leased once: {counts:?}");
        let i = (0..3).max_by_key(|i| counts[*i]).unwrap();
        (i, counts[i])
    }

    fn kill(&mut self, i: usize) {
        let mut child = self.children[i].take().unwrap();
        signal(&child.0, libc::SIGKILL);
        let _ = child.0.wait();
    }

    fn written(&self, i: usize) -> Vec<Envelope> {
        read_envelopes_so_far(&self.dirs[i].path().join("data"))
    }

    fn logs(&self) -> String {
        (0..3)
            .map(|i| std::fs::read_to_string(self.dirs[i].path().join("run.log")).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }

    /// The `takeover` gaps the others wrote of instance `victim`, checked:
    /// each names the victim and brackets the kill.
    fn takeover_gaps(&self, victim: usize, killed_at: chrono::DateTime<chrono::Utc>) -> usize {
        let victim_name = format!(":{}", self.pids[victim]);
        let gaps: Vec<serde_json::Value> = (0..3)
            .filter(|i| *i != victim)
            .flat_map(|i| self.written(i))
            .filter(|e| e.kind == "gap")
            .map(|e| serde_json::from_str(&e.payload).unwrap())
            .filter(|g: &serde_json::Value| g["reason"] == "takeover")
            .collect();
        assert!(!gaps.is_empty(), "no takeover gap\n{}", self.logs());
        for g in &gaps {
            let from: chrono::DateTime<chrono::Utc> = g["from"].as_str().unwrap().parse().unwrap();
            let to: chrono::DateTime<chrono::Utc> = g["to"].as_str().unwrap().parse().unwrap();
            assert!(g["previous_owner"].as_str().unwrap().ends_with(&victim_name), "{g}");
            assert!(from <= killed_at && killed_at <= to, "the gap brackets the kill at {killed_at}: {g}");
            assert!(g["released"] == false, "{g}");
        }
        gaps.len()
    }

    fn hash_len(&self, key: &str) -> usize {
        let mut conn = self.redis.client().get_connection().unwrap();
        redis::cmd("HLEN").arg(key).query(&mut conn).unwrap()
    }

    /// SIGTERM to the live ones: each exits 0 and releases its leases.
    fn stop(mut self) {
        for child in self.children.iter_mut().flatten() {
            signal(&child.0, libc::SIGTERM);
            assert_eq!(wait_exit_blocking(&mut child.0, T), 0);
        }
        let mut conn = self.redis.client().get_connection().unwrap();
        let left: Vec<String> = redis::cmd("KEYS").arg("streamherd:lease:*").query(&mut conn).unwrap();
        assert!(left.is_empty(), "leases left after a graceful stop: {left:?}");
    }
}

/// Publishes with `publish` every 2 ms (at most 20,000 times) until stopped;
/// returns what each call reported published.
struct Publisher {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    published: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Publisher {
    fn start(publish: impl Fn(usize) -> String + Send + 'static) -> Publisher {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let published = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, p) = (stop.clone(), published.clone());
        let thread = std::thread::spawn(move || {
            for i in 0..20_000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let id = publish(i);
                p.lock().unwrap().push(id);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Publisher { stop, published, thread }
    }

    fn count(&self) -> usize {
        self.published.lock().unwrap().len()
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap();
        let published = self.published.lock().unwrap().clone();
        published
    }
}

/// Kills the instance carrying most of `keys` (`what`, e.g. "streams"),
/// waits until `every_key_once` holds again, publishes 200 more and waits
/// until `written` covers all that was published; prints the figures.
async fn kill_and_take_over(
    cluster: &mut Cluster,
    (source, what): (&str, &str),
    keys: &[String],
    publisher: Publisher,
    every_key_once: impl Fn() -> bool,
    written: impl Fn(&Cluster) -> Vec<String>,
) {
    let (victim, share) = cluster.busiest(source, keys);
    assert!(share > 0);
    // Long enough for its positions to reach Redis (written every 500 ms).
    wait_for(T, "the victim writes", || written_by(cluster, victim) >= 300).await;
    let killed_at = chrono::Utc::now();
    let clock = std::time::Instant::now();
    cluster.kill(victim);
    wait_blocking(T, "the victim's connections closed", || !every_key_once());
    wait_for(T, "every key carried once by the other two", &every_key_once).await;
    let took = clock.elapsed();
    assert_eq!(cluster.carried_by(victim, source, keys), 0, "the victim holds nothing");
    let more = publisher.count() + 200;
    wait_blocking(T, "published after the take-over", || publisher.count() >= more);
    let published = publisher.finish();
    let mut missing = Vec::new();
    let waited = std::time::Instant::now();
    while waited.elapsed() < T {
        let have: BTreeSet<String> = written(cluster).into_iter().collect();
        missing = published.iter().filter(|id| !have.contains(*id)).cloned().collect();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        missing.is_empty(),
        "{} of {} never written: {missing:?}\n{}",
        missing.len(),
        published.len(),
        cluster.logs()
    );
    let gaps = cluster.takeover_gaps(victim, killed_at);
    // The bound: the lease expires at most a lease after the kill, the next
    // round (a twentieth of it) takes it, then the connection opens.
    assert!(took < Duration::from_millis(LEASE_MS * 5 / 4), "took {took:?} for a lease of {LEASE_MS} ms");
    let total = written(cluster).len();
    eprintln!(
        "coordination ({source}): the victim carried {share} of {} {what}; taken over {} ms after the SIGKILL \
         (lease {LEASE_MS} ms); {} published, {total} written ({} duplicates), {gaps} takeover gaps",
        keys.len(),
        took.as_millis(),
        published.len(),
        total - published.len()
    );
}

/// Events (not gaps) instance `i` wrote.
fn written_by(cluster: &Cluster, i: usize) -> usize {
    cluster.written(i).iter().filter(|e| e.kind != "gap").count()
}

#[actix_rt::test]
async fn three_coordinated_instances_take_over_a_killed_ones_mastodon_streams_with_nothing_lost() {
    const TAGS: usize = 12;
    let sim = start_sim(Scenario::default(), 0, 1000).await;
    let tags: Vec<String> = (0..TAGS).map(|i| format!("t{i}")).collect();
    let streams: Vec<String> = tags.iter().map(|t| format!("hashtag:{t}")).collect();
    let refs: Vec<&str> = streams.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start(|_, c| c.mastodon("fedi", &sim, "sse", &refs, ""));
    let every_tag_once = || {
        let mut open: BTreeMap<String, usize> = BTreeMap::new();
        for c in sim.connections() {
            if c.closed_at.is_none() && c.path.ends_with("/streaming/hashtag") {
                *open.entry(c.params.get("tag").cloned().unwrap_or_default()).or_default() += 1;
            }
        }
        open.len() == TAGS && open.values().all(|n| *n == 1)
    };
    wait_for(T, "every stream carried once by the three instances", every_tag_once).await;
    let publisher = {
        let (sim, tags) = (sim.clone(), tags.clone());
        Publisher::start(move |i| sim.mastodon_post(&[tags[i % tags.len()].as_str()], true, false).id)
    };
    let statuses = |c: &Cluster| -> Vec<String> {
        (0..3).flat_map(|i| c.written(i)).filter(|e| e.kind == "update").filter_map(|e| e.id).collect()
    };
    kill_and_take_over(&mut cluster, ("fedi", "streams"), &streams, publisher, every_tag_once, statuses).await;
    assert_eq!(cluster.hash_len("streamherd:positions:fedi:mastodon"), TAGS, "a position per stream in Redis");
    cluster.stop();
}

#[actix_rt::test]
async fn three_coordinated_instances_take_over_a_killed_ones_jetstream_dids_from_the_cursors_in_redis() {
    const DIDS: usize = 12;
    let sim = start_sim(Scenario::default(), 0, 1000).await;
    let dids: Vec<String> = (0..DIDS).map(|i| sim.jetstream_did(i)).collect();
    let list: Vec<String> = dids.iter().map(|d| format!("{d:?}")).collect();
    let body = format!(
        "base_url = [\"ws://{}\"]\ncursor_rewind_s = 0.5\nwanted_dids = [{}]\ndids_per_connection = 4",
        sim.addr(),
        list.join(", ")
    );
    let mut cluster = Cluster::start(|_, c| c.source("bsky", "bluesky.jetstream", &body));
    let every_did_once = || {
        let mut open: BTreeMap<String, usize> = BTreeMap::new();
        for c in sim.jetstream_connections() {
            if c.closed_at.is_none() && c.status == 101 {
                for d in &c.wanted_dids {
                    *open.entry(d.clone()).or_default() += 1;
                }
            }
        }
        open.len() == DIDS && open.values().all(|n| *n == 1)
    };
    wait_for(T, "every DID carried once by the three instances", every_did_once).await;
    let publisher = {
        let (sim, dids) = (sim.clone(), dids.clone());
        Publisher::start(move |i| {
            let e = sim.jetstream_publish(&[dids[i % dids.len()].clone()], 1);
            String::from_utf8_lossy(&e[0].json).into_owned()
        })
    };
    let payloads = |c: &Cluster| -> Vec<String> {
        (0..3).flat_map(|i| c.written(i)).filter(|e| e.kind != "gap").map(|e| e.payload).collect()
    };
    kill_and_take_over(&mut cluster, ("bsky", "DIDs"), &dids, publisher, every_did_once, payloads).await;
    assert!(cluster.hash_len("streamherd:positions:bsky:jetstream") > 0, "cursors per bucket in Redis");
    cluster.stop();
}

#[actix_rt::test]
async fn a_follow_change_kept_in_redis_moves_with_its_shard_when_the_owner_is_killed() {
    let sim = start_sim(Scenario::default(), 0, 1000).await;
    let follows: Vec<String> = (1..=200u64).map(|i| i.to_string()).collect();
    let body = format!("follow = [{}]\nfollow_limit = 100", follows.join(","));
    let ports = [free_port(), free_port(), free_port()];
    let mut cluster = Cluster::start(|i, c| {
        c.table(&format!("[control]\nlisten = \"127.0.0.1:{}\"", ports[i])).twitter("site", "twitter.site", &sim, &body)
    });
    let carried = || -> BTreeMap<u64, usize> {
        let mut count = BTreeMap::new();
        for ids in sim.carried().values() {
            for id in ids {
                *count.entry(*id).or_default() += 1;
            }
        }
        count
    };
    let all_once = |n: usize| carried().len() == n && carried().values().all(|c| *c == 1);
    wait_for(T, "every follow carried once by the three instances, the leases settled", || {
        all_once(200) && cluster.settled("site")
    })
    .await;

    // The id's lease holder takes the change; the others name it (once their
    // view of the leases, a round old at most, caught up).
    let new_id = "5000".to_string();
    let owner = (0..3).find(|i| cluster.carried_by(*i, "site", std::slice::from_ref(&new_id)) == 1).unwrap();
    let other = (owner + 1) % 3;
    let client = awc::Client::new();
    let post = |i: usize| {
        client
            .post(format!("http://127.0.0.1:{}/sources/site/follows", ports[i]))
            .send_json(&serde_json::json!({ "add": [5000] }))
    };
    let owner_name = "5000 on ";
    let waited = std::time::Instant::now();
    loop {
        let mut r = post(other).await.unwrap();
        let answer = String::from_utf8_lossy(&r.body().await.unwrap()).into_owned();
        assert_eq!(r.status().as_u16(), 409, "{answer}");
        if answer.contains(owner_name) && answer.contains(&format!(":{}", cluster.pids[owner])) {
            break;
        }
        assert!(waited.elapsed() < T, "the 409 never named the owner: {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut r = post(owner).await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", String::from_utf8_lossy(&r.body().await.unwrap()));
    wait_for(T, "the new follow carried once", || carried().get(&5000) == Some(&1)).await;

    // Its owner dies: the instance that takes the shard reads the change from Redis.
    cluster.kill(owner);
    let mut keys = follows.clone();
    keys.push(new_id);
    wait_for(T, "every follow, the added one too, carried once by the other two", || {
        cluster.carried_by(owner, "site", &keys) == 0 && all_once(201)
    })
    .await;
    cluster.stop();
}

#[actix_rt::test]
async fn a_single_connection_source_runs_on_one_coordinated_instance_and_moves_whole_when_it_dies() {
    let sim = start_sim(Scenario::default(), 50, 1000).await;
    let mut cluster = Cluster::start(|_, c| c.twitter("filter", "twitter.filter", &sim, "track = [\"rust\"]"));
    let open = || sim.connections().into_iter().filter(|c| c.closed_at.is_none() && c.status == 200).count();
    let whole = vec![String::new()];
    let runner = |cluster: &Cluster| (0..3).find(|i| cluster.carried_by(*i, "filter", &whole) == 1);
    wait_for(T, "one instance runs the filter stream", || {
        open() == 1 && runner(&cluster).is_some() && cluster.settled("filter")
    })
    .await;
    let first = runner(&cluster).unwrap();
    wait_for(T, "it writes", || written_by(&cluster, first) > 0).await;
    cluster.kill(first);
    wait_for(T, "another instance runs it", || open() == 1 && runner(&cluster).is_some_and(|i| i != first)).await;
    let second = runner(&cluster).unwrap();
    wait_for(T, "the new runner writes", || written_by(&cluster, second) > 0).await;
    assert_eq!(open(), 1, "one connection, never two");
    cluster.stop();
}

#[test]
fn check_pings_the_coordination_redis_and_says_shares_are_leased() {
    const BIN: &str = env!("CARGO_BIN_EXE_streamherd");
    let redis_dir = tempfile::tempdir().unwrap();
    let redis = common::redis_server::Redis::start(free_port(), redis_dir.path(), false);
    let dead = format!("redis://127.0.0.1:{}/", free_port());
    for (url, code) in [(redis.url(), 0), (dead, 2)] {
        let dir = tempfile::tempdir().unwrap();
        let body = "track = [\"x\"]\nauth = { kind = \"oauth1\", consumer_key = \"k\", consumer_secret = \"s\", token = \"t\", token_secret = \"ts\" }";
        Conf::new()
            .service(&format!("coordination = \"{url}\""))
            .source("f", "twitter.filter", body)
            .file_sink("")
            .write_to(dir.path());
        let out = command(BIN, &["check"], dir.path()).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(code), "{stdout}{stderr}");
        assert!(stdout.contains("coordination: leases in redis://127.0.0.1:"), "{stdout}");
        assert!(stdout.contains("carries what it leases at run time"), "{stdout}");
        if code == 2 {
            assert!(stderr.contains("service.coordination") && stderr.contains("does not answer"), "{stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
        }
    }
}
