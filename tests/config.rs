//! Config loading: the shipped file parses, `${VAR}` secrets resolve,
//! `STREAMHERD__SECTION__KEY` overrides file values, and secrets never show
//! in Debug output or the plan.

use std::path::Path;

use streamherd::config;
use streamherd_actors::jetstream::config::JetstreamSpec;
use streamherd_actors::mastodon::spec::MastodonSpec;
use streamherd_actors::twitter::spec::TwitterSpec;

fn load(body: &str) -> Result<config::Config, config::ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, body).unwrap();
    config::load(&path, &streamherd::Registries::builtin())
}

#[test]
fn the_shipped_config_parses_with_every_section() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let c = config::load(&path, &streamherd::Registries::builtin()).unwrap();
    assert!(c.simulator.enabled);
    assert_eq!(c.sources.len(), 5);
    assert_eq!(c.sinks.len(), 2);
    let site = c.sources[2].as_any().downcast_ref::<TwitterSpec>().expect("site source");
    assert_eq!(site.query.follow.len(), 250, "follow_file is read relative to the config file");
    let fedi = c.sources[3].as_any().downcast_ref::<MastodonSpec>().expect("mastodon source");
    assert_eq!(fedi.streams.len(), 4);
    assert_eq!(fedi.streaming_url, None, "discovered from the instance");
    assert!(fedi.catch_up.is_some());
    assert!(!format!("{fedi:?}").contains("demo-mastodon-token"), "the token never shows in Debug");
    let bsky = c.sources[4].as_any().downcast_ref::<JetstreamSpec>().expect("jetstream source");
    assert_eq!(bsky.hosts, ["ws://127.0.0.1:8900"]);
    assert!(bsky.dids.is_empty(), "every DID");
    assert_eq!(bsky.collections, ["app.bsky.feed.post", "app.bsky.graph.*"]);
}

// One test touches the process environment, so no other test races with it.
#[test]
fn secrets_and_environment_overrides() {
    std::env::set_var("STREAMHERD_TEST_SECRET", "s3cr3t-from-env");
    std::env::set_var("STREAMHERD__SERVICE__LOG_LEVEL", "debug");
    std::env::set_var("STREAMHERD__BACKOFF__NETWORK_INITIAL_MS", "7");
    let c = load(
        r#"
[service]
log_level = "info"
[[sources]]
name = "a"
kind = "twitter.filter"
track = ["x"]
auth = { kind = "oauth1", consumer_key = "k", consumer_secret = "${STREAMHERD_TEST_SECRET}", token = "t", token_secret = "literal-secret" }
"#,
    )
    .unwrap();
    std::env::remove_var("STREAMHERD__SERVICE__LOG_LEVEL");
    std::env::remove_var("STREAMHERD__BACKOFF__NETWORK_INITIAL_MS");
    assert_eq!(c.service.log_level, "debug", "environment overrides the file");
    let spec = c.sources[0].as_any().downcast_ref::<TwitterSpec>().expect("twitter source");
    assert_eq!(spec.backoff.network_initial.as_millis(), 7);
    assert_eq!(spec.credentials[0].consumer_secret, "s3cr3t-from-env");
    assert_eq!(spec.credentials[0].token_secret, "literal-secret");
    let shown = format!("{c:?}\n{}", config::describe_plan(&c));
    for secret in ["s3cr3t-from-env", "literal-secret"] {
        assert!(!shown.contains(secret), "{secret} leaked");
    }
}

#[test]
fn defaults_match_the_spec() {
    // The one required table: a source.
    let c = load("[[sources]]\nname = \"a\"\nkind = \"twitter.sample\"\nauth = { kind = \"oauth1\", consumer_key = \"k\", consumer_secret = \"s\", token = \"t\", token_secret = \"u\" }\n").unwrap();
    assert_eq!(c.service.max_message_bytes, 16 * 1024 * 1024);
    assert_eq!(c.service.stats_interval_s, 10.0);
    assert!(!c.simulator.enabled);
    assert!(c.control.is_none());
}

#[test]
fn errors_name_the_key() {
    let e = load("[backoff]\njitter = 2.0\n").unwrap_err();
    assert_eq!(e.key, "backoff.jitter");
    let e = load("[[sinks]]\nname = \"x\"\nkind = \"stdout\"\nwhen_full = \"spool\"\n").unwrap_err();
    assert_eq!(e.key, "sinks[0].when_full");
    assert!(e.message.contains("spill, block or drop_newest"), "{}", e.message);
    let e = load("[[sinks]]\nname = \"x\"\nkind = \"stdout\"\nspill_max_bytes = 0\n").unwrap_err();
    assert_eq!(e.key, "sinks[0].spill_max_bytes");
    let e = load("[[sinks]]\nname = \"x\"\nkind = \"stdout\"\nbatch_max_ms = -1\n").unwrap_err();
    assert_eq!(e.key, "sinks[0].batch_max_ms");
    let e = load("[[sinks]]\nname = \"x\"\nkind = \"kafka\"\n").unwrap_err();
    assert_eq!(e.key, "sinks[0].kind");
    assert!(e.message.contains("stdout") && e.message.contains("file"), "lists known kinds: {}", e.message);
    let e = load("[[sinks]]\nname = \"x\"\nkind = \"stdout\"\nkinds = [\"tweets\"]\n").unwrap_err();
    assert_eq!(e.key, "sinks[0].kinds[0]");
    let auth =
        r#"auth = { kind = "oauth1", consumer_key = "k", consumer_secret = "s", token = "t", token_secret = "ts" }"#;
    let e = load(&format!("[[sources]]\nname = \"a\"\nkind = \"twitter.filter\"\ntrack = [\"x\"]\n{auth}\n[[sources]]\nname = \"a\"\nkind = \"twitter.sample\"\n{auth}\n")).unwrap_err();
    assert_eq!(e.key, "sources[1].name");
    let e = load(&format!(
        "[[sources]]\nname = \"a\"\nkind = \"twitter.site\"\nfollow = [1]\nfollow_limit = 1001\n{auth}\n"
    ))
    .unwrap_err();
    assert_eq!(e.key, "sources[0].follow_limit");
    let e = load(&format!("[[sources]]\nname = \"a\"\nkind = \"twitter.filter\"\nlocations = [\"1,2,3\"]\n{auth}\n"))
        .unwrap_err();
    assert_eq!(e.key, "sources[0].locations[0]");
}

#[test]
fn filter_follows_shard_across_a_list_of_credentials() {
    let auth = r#"{ kind = "oauth1", consumer_key = "k", consumer_secret = "s", token = "t", token_secret = "ts" }"#;
    let follows: Vec<String> = (1..=12_000).map(|i| i.to_string()).collect();
    let c = load(&format!(
        "[[sources]]\nname = \"a\"\nkind = \"twitter.filter\"\nfollow = [{}]\nauth = [{auth}, {auth}, {auth}]\n",
        follows.join(",")
    ))
    .unwrap();
    let plan = config::describe_plan(&c);
    assert!(plan.contains("3 connection(s), 3 credential(s)"), "{plan}");
    assert!(plan.contains("a/2: 2000 follow ids"), "{plan}");
}
