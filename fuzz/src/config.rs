//! `config`: the config loader on the input as a TOML file, its errors and
//! what it shows, with the sinks' load-time IO confined to this machine.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use streamherd::config::{self, Registries};
use streamherd_actors::coordination::Leases;
use streamherd_actors::error::SinkError;
use streamherd_actors::sinks::{PreflightSink, SinkBuildContext, SinkKind, SinkRegistry};
use streamherd_actors::source::SourceRegistry;

use crate::control::without_quoted;
use crate::known::{self, Known};
use crate::mastodon::assert_one_line;

/// What seeds put in secret fields (`consumer_secret = "zzSECRETcs1"`).
pub const SECRET_MARKER: &str = "zzSECRET";

/// Keys whose values are secrets: credential tables, credentials, tokens.
const SECRET_KEYS: &[&str] = &["auth", "secret", "token", "password"];

/// The whole input is the config file, loaded (`read` + `validate`) and,
/// when sinks are reached, rebuilt sources-only as a take-over does: no
/// panic, every error one line; when [`SECRET_MARKER`] sits only in secret
/// values (credential and token fields, Redis URL passwords), no error, no
/// Debug output and no `check` plan shows it. The file sink's paths go under
/// a scratch directory and Redis URLs to a closed loopback port, where a
/// refused connection counts as reachable: the settings parsers are real.
pub fn config(data: &[u8]) {
    let dir = scratch();
    let path = dir.join("fuzz.toml");
    if let Err(e) = std::fs::write(&path, data) {
        panic!("cannot write {}: {e}", path.display());
    }
    let guard_secrets = secrets_only_in_secret_values(data);
    let must_hide = |what: &str, text: &str| {
        if guard_secrets {
            assert!(!text.contains(SECRET_MARKER), "{what} shows a secret value: {text}");
        }
    };
    let registries = registries();
    let mut redis_urls = Vec::new();
    match config::load(&path, registries) {
        Ok(c) => {
            if let Some(url) = &c.service.coordination {
                redis_urls.push(url.clone());
                // One coordination per process: the first config's URL stays.
                redis_urls.push(Leases::process(url, c.service.lease_buckets).url().to_owned());
            }
            redis_urls.extend(c.sinks.iter().filter_map(|s| s.settings.get("url")?.as_str().map(str::to_owned)));
            let tolerated = |text: String| {
                if known::tolerated(Known::ConfigShowsRedisPasswords) {
                    without(text, &redis_urls)
                } else {
                    text
                }
            };
            must_hide("the config's Debug output", &tolerated(format!("{c:?}")));
            must_hide("the check plan", &tolerated(config::describe_plan(&c)));
        }
        // Sinks are validated last: an error before them, rebuilding the
        // sources alone would only meet again.
        Err(e) if !e.key.starts_with("sinks") => return check_error(&e, &must_hide),
        Err(e) => check_error(&e, &must_hide),
    }
    match config::rebuild_sources(&path, registries) {
        Ok(sources) => {
            let text = format!("{sources:?}");
            let text =
                if known::tolerated(Known::ConfigShowsRedisPasswords) { without(text, &redis_urls) } else { text };
            must_hide("the sources' Debug output", &text);
        }
        Err(e) => check_error(&e, &must_hide),
    }
}

fn check_error(e: &config::ConfigError, must_hide: &dyn Fn(&str, &str)) {
    let text = e.to_string();
    if known::tolerated(Known::ConfigEchoesNewlines) {
        assert_one_line(&without_quoted(&text));
    } else {
        assert_one_line(&text);
    }
    let mistyped_url = text.contains("must start with redis:// or rediss://");
    if !(mistyped_url && known::tolerated(Known::RedactedMissesMistypedUrls)) {
        must_hide("a config error", &text);
    }
}

/// `text` without `values`, however they are rendered (as is, Debug, JSON).
fn without(mut text: String, values: &[String]) -> String {
    for v in values.iter().filter(|v| !v.is_empty()) {
        let debug = format!("{v:?}");
        let json = serde_json::Value::String(v.clone()).to_string();
        for shown in [v.as_str(), debug.trim_matches('"'), json.trim_matches('"')] {
            text = text.replace(shown, "<known leak>");
        }
    }
    text
}

/// A directory of this process's own, for the config file and whatever the
/// file sink's preflight creates; in memory where there is a tmpfs, since
/// rewriting a file on ext4 waits for the disk and would be most of the time.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        remove_stale(&base);
        let dir = base.join(format!("{SCRATCH_PREFIX}{}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        dir
    })
}

const SCRATCH_PREFIX: &str = "streamherd-fuzz-config-";

/// Scratch directories of processes that are gone: nothing else removes them.
fn remove_stale(base: &Path) {
    // Without /proc there is no telling a live process from a gone one.
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(SCRATCH_PREFIX)) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The built-in kinds, with the file and Redis sinks confined.
fn registries() -> &'static Registries {
    static REGISTRIES: OnceLock<Registries> = OnceLock::new();
    REGISTRIES.get_or_init(|| {
        let mut sinks = SinkRegistry::builtin();
        for (name, preflight) in [("file", confined_file as PreflightSink), ("redis", confined_redis)] {
            if let Ok(kind) = sinks.get(name).copied() {
                sinks.register(SinkKind { preflight, ..kind });
            }
        }
        Registries { sources: SourceRegistry::builtin(), sinks }
    })
}

fn builtin_preflight(name: &str) -> Option<PreflightSink> {
    SinkRegistry::builtin().get(name).ok().map(|k| k.preflight)
}

/// The file sink's preflight with `path` moved under the scratch directory.
fn confined_file(settings: &serde_json::Value, ctx: &SinkBuildContext) -> Result<(), SinkError> {
    let Some(real) = builtin_preflight("file") else { return Ok(()) };
    let mut settings = settings.clone();
    if let Some(serde_json::Value::String(path)) = settings.get_mut("path") {
        let inside = path.trim_start_matches('/').replace("..", "_.");
        *path = scratch().join("sink").join(inside).display().to_string();
    }
    real(&settings, ctx)
}

/// The Redis sink's preflight against a closed loopback port: the settings
/// and URL parsing are the real ones; refused means reachable here.
fn confined_redis(settings: &serde_json::Value, ctx: &SinkBuildContext) -> Result<(), SinkError> {
    let Some(real) = builtin_preflight("redis") else { return Ok(()) };
    let mut settings = settings.clone();
    if let Some(serde_json::Value::String(url)) = settings.get_mut("url") {
        *url = to_closed_port(url);
    }
    match real(&settings, ctx) {
        Err(SinkError::Config { message, .. }) if message.starts_with("cannot reach Redis at") => Ok(()),
        other => other,
    }
}

/// `redis://[userinfo@]host[:port][/rest]` with the host and port replaced
/// by `127.0.0.1:1`; anything else unchanged (the sink refuses it before
/// connecting: only `redis://` and `rediss://` URLs get that far).
fn to_closed_port(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    if scheme != "redis" && scheme != "rediss" {
        return url.to_owned();
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let userinfo = authority.rsplit_once('@').map(|(u, _)| format!("{u}@")).unwrap_or_default();
    format!("{scheme}://{userinfo}127.0.0.1:1{tail}")
}

/// Whether every occurrence of [`SECRET_MARKER`] is inside a quoted value of
/// a secret key (`consumer_secret = "..zzSECRET.."`) or the password of a
/// URL (`url = "redis://user:zzSECRET..@host"`), on one line, not a
/// `${VAR}` name. Only then must no output show it; multi-line strings and
/// escapes make the answer unsure, and unsure is no.
fn secrets_only_in_secret_values(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else { return false };
    if !text.contains(SECRET_MARKER) || text.contains("\"\"\"") || text.contains("'''") {
        return false;
    }
    text.lines().all(|line| {
        let mut from = 0;
        while let Some(i) = line[from..].find(SECRET_MARKER).map(|i| from + i) {
            if !secret_position(&line[..i], &line[i..]) {
                return false;
            }
            from = i + SECRET_MARKER.len();
        }
        true
    })
}

/// A line cut at a marker, `before` it and `after` (from it): is the marker
/// inside a secret value?
fn secret_position(before: &str, after: &str) -> bool {
    let Some(eq) = before.rfind('=') else { return false };
    let value = before[eq + 1..].trim_start();
    let Some(quote) = value.chars().next().filter(|c| *c == '"' || *c == '\'') else { return false };
    let inside = &value[1..];
    if inside.contains(quote) || inside.contains('\\') || inside.ends_with("${") {
        return false;
    }
    let key = before[..eq].trim_end();
    let key = key.rsplit([' ', '{', ',', '.']).next().unwrap_or(key).trim_matches(['"', '\'']).to_ascii_lowercase();
    if SECRET_KEYS.iter().any(|k| key.contains(k)) {
        return true;
    }
    // A Redis URL's password (a sink's `url`, `coordination`), mistyped
    // URLs included: after a `:`, before an `@`, in the same value.
    let rest_of_value = after.split(quote).next().unwrap_or(after);
    (key == "url" || key == "coordination")
        && inside.rsplit_once(':').is_some_and(|(_, pw)| !pw.contains(['@', '/']))
        && rest_of_value.contains('@')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_positions() {
        let yes = |s: &str| secrets_only_in_secret_values(s.as_bytes());
        assert!(yes("auth = { kind = \"oauth1\", consumer_secret = \"zzSECRETa\", token = \"zzSECRETb\" }\n"));
        assert!(yes("url = \"redis://u:zzSECRETpw@127.0.0.1:6379/0\"\n"));
        assert!(yes("token = 'x zzSECRET'\n"));
        assert!(!yes("name = \"zzSECRET\"\n"), "a name is no secret");
        assert!(!yes("url = \"redis://zzSECRET@h\"\n"), "a user name is no password");
        assert!(yes("url = \"redis//:zzSECRETpw@h\"\n"), "a mistyped URL's password is still one");
        assert!(!yes("url = \"redis://h:zzSECRET\"\n"), "a port is no password");
        assert!(!yes("token = \"${zzSECRET}\"\n"), "a variable name is no secret");
        assert!(!yes("token = \"a\\\"zzSECRET\"\n"), "escapes make it unsure");
        assert!(!yes("base_url = \"http://u:zzSECRET@h\"\n"), "only Redis URLs carry passwords here");
        assert!(!yes("no marker at all\n"));
    }

    #[test]
    fn redis_urls_go_to_a_closed_port() {
        assert_eq!(to_closed_port("redis://:pw@10.1.2.3:6379/0"), "redis://:pw@127.0.0.1:1/0");
        assert_eq!(to_closed_port("rediss://a@b@host?x=1"), "rediss://a@b@127.0.0.1:1?x=1");
        assert_eq!(to_closed_port("redis://host"), "redis://127.0.0.1:1");
        assert_eq!(to_closed_port("redis+unix:///tmp/s"), "redis+unix:///tmp/s");
    }
}
