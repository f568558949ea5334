//! Bugs the fuzz targets found, each minimised to a direct call of the code
//! at fault (see `fuzz/src/known.rs`); all fixed, so they are regression tests.

use std::path::PathBuf;

use streamherd::config::{self, Registries};
use streamherd_actors::sinks::{SinkKind, SinkRegistry};
use streamherd_actors::source::SourceRegistry;

const AUTH: &str =
    r#"auth = { kind = "oauth1", consumer_key = "k", consumer_secret = "s", token = "t", token_secret = "ts" }"#;

fn write(dir: &tempfile::TempDir, body: &str) -> PathBuf {
    let path = dir.path().join("c.toml");
    std::fs::write(&path, body).expect("write the config");
    path
}

/// `Known::NestedKeysUndecoded`: actors/src/twitter/classify.rs `nested_id`
/// and `deleted_id` match nested keys as written; top-level keys are decoded.
#[test]
fn nested_keys_are_read_as_a_json_reader_reads_them() {
    use streamherd_actors::twitter::classify::classify_twitter;
    let c = classify_twitter(br#"{"delete":{"status":{"\u0069d_str":"5"}}}"#).expect("a delete notice");
    assert_eq!(c.id.as_deref(), Some("5"), "\\u0069d_str is id_str");
    let c = classify_twitter(br#"{"status_withheld":{"\u0069d":7}}"#).expect("a withheld notice");
    assert_eq!(c.id.as_deref(), Some("7"));
}

/// `Known::ConfigEchoesNewlines`: src/config.rs `validate` quotes names and
/// kinds as given (`duplicate source name `{name}``, `unknown source kind
/// `{kind_name}``, ...), so the "one line" configuration error is two.
#[test]
fn config_errors_are_one_line_whatever_the_values() {
    let dir = tempfile::tempdir().expect("temp dir");
    let twice = format!(
        "[[sources]]\nname = \"a\\nb\"\nkind = \"twitter.sample\"\n{AUTH}\n[[sources]]\nname = \"a\\nb\"\nkind = \"twitter.sample\"\n{AUTH}\n"
    );
    for body in [twice.as_str(), "[[sources]]\nname = \"a\"\nkind = \"x\\ny\"\n"] {
        let e = config::load(&write(&dir, body), &Registries::builtin()).expect_err("refused");
        assert!(!e.to_string().contains('\n'), "{:?}", e.to_string());
    }
}

/// `Known::ConfigShowsRedisPasswords`: src/config.rs `describe_plan` prints
/// each sink's `settings` as they are (a Redis sink's `url`, password
/// included), and the derived Debug of `Config` shows that and
/// `service.coordination` (also `Leases::url`) in full.
#[test]
fn check_and_debug_output_hide_redis_passwords() {
    // A Redis sink whose server "answers": only the output is under test.
    let mut sinks = SinkRegistry::builtin();
    let redis = *sinks.get("redis").expect("the redis sink");
    sinks.register(SinkKind { preflight: |_, _| Ok(()), ..redis });
    let registries = Registries { sources: SourceRegistry::builtin(), sinks };
    let dir = tempfile::tempdir().expect("temp dir");
    let body = format!(
        "[service]\ncoordination = \"redis://app:coord-pw@127.0.0.1:6379/0\"\n[[sources]]\nname = \"a\"\nkind = \"twitter.sample\"\n{AUTH}\n[[sinks]]\nname = \"q\"\nkind = \"redis\"\nurl = \"redis://:sink-pw@127.0.0.1:6379/0\"\n"
    );
    let c = config::load(&write(&dir, &body), &registries).expect("a valid config");
    let plan = config::describe_plan(&c);
    assert!(!plan.contains("sink-pw"), "check shows the sink's password: {plan}");
    let debug = format!("{c:?}");
    for pw in ["sink-pw", "coord-pw"] {
        assert!(!debug.contains(pw), "Debug shows {pw}");
    }
}

/// `Known::RedactedMissesMistypedUrls`: actors/src/coordination/remote.rs
/// `redacted` returns a URL without `://` unchanged, and the Redis sink and
/// `service.coordination` put that into "must start with redis://" errors.
#[test]
fn a_mistyped_redis_url_keeps_its_password_out_of_errors() {
    use streamherd_actors::coordination::remote::redacted;
    for url in ["redis//:pw@127.0.0.1:6379", "redis:/user:pw@host"] {
        assert!(!redacted(url).contains("pw"), "{url} shown as {}", redacted(url));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let body = format!(
        "[[sources]]\nname = \"a\"\nkind = \"twitter.sample\"\n{AUTH}\n[[sinks]]\nname = \"q\"\nkind = \"redis\"\nurl = \"redis//:pw@127.0.0.1:6379/0\"\n"
    );
    let e = config::load(&write(&dir, &body), &Registries::builtin()).expect_err("refused");
    assert!(!e.to_string().contains("pw@"), "{e}");
}

/// `Known::ControlEchoesNewlines`: src/control/routes.rs `into_message`
/// (`id {both} is both ...`) and serde's unknown-field message quote the
/// body's text as given.
#[test]
fn control_api_errors_are_one_line_whatever_the_body() {
    use streamherd::control::parse_follows_body;
    for body in [&br#"{"add":["a\nb"],"remove":["a\nb"]}"#[..], br#"{"add":[1],"x\ny":1}"#] {
        let e = parse_follows_body(body).expect_err("refused");
        assert!(!e.to_string().contains('\n'), "{:?}", e.to_string());
    }
}

/// `Known::ControlAcceptsArrays`: src/control/routes.rs `FollowsBody` is a
/// derived struct, which serde also reads from a sequence, positionally.
#[test]
fn a_follows_body_is_an_object() {
    use streamherd::control::parse_follows_body;
    for body in [&b"[[1]]"[..], b"[null,[2]]", b"[[3],[4]]"] {
        let got = parse_follows_body(body);
        assert!(got.is_err(), "{} accepted as {got:?}", String::from_utf8_lossy(body));
    }
}
