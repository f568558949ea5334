//! A Jetstream source's config table: its keys (every other key is an error
//! naming the key and the kind) and the rules that turn it into a
//! [`JetstreamSpec`]: hosts in failover order, filters the server accepts,
//! DIDs counted once, a plan that fits.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::syntax::{is_collection, is_did};
use crate::connection::backoff::BackoffConfig;
use crate::error::ConfigError;
use crate::settings::{secs, stall_timeout, websocket_scheme};
use crate::source::{parse_table, SourceContext};

/// The server takes at most this many DIDs per connection.
pub const MAX_DIDS_PER_CONNECTION: usize = 10_000;
/// The server takes at most this many collections.
pub const MAX_COLLECTIONS: usize = 100;
/// Default stall timeout: the server pings every 30 s and streamherd pings
/// every third of this, so a silent connection is noticed within it.
const JETSTREAM_STALL: Duration = Duration::from_secs(30);
/// The public instances, in failover order.
const DEFAULT_HOSTS: [&str; 2] = ["wss://jetstream2.us-east.bsky.network", "wss://jetstream1.us-east.bsky.network"];

const fn default_per_connection() -> usize {
    MAX_DIDS_PER_CONNECTION
}
const fn default_rewind() -> f64 {
    5.0
}
const fn default_failover_after() -> u32 {
    3
}
const fn default_max_connections() -> usize {
    50
}

/// `base_url`: one host or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Hosts {
    /// One host.
    One(String),
    /// Hosts in failover order.
    Many(Vec<String>),
}

/// The keys of a Jetstream source (besides `name` and `kind`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetstreamTable {
    /// Hosts (`ws://`, `wss://`; `/subscribe` is appended), in failover order.
    #[serde(default)]
    pub base_url: Option<Hosts>,
    /// NSIDs or `prefix.*`; empty = every collection.
    #[serde(default)]
    pub wanted_collections: Vec<String>,
    /// Repository DIDs; empty (and no `did_file`) = every DID.
    #[serde(default)]
    pub wanted_dids: Vec<String>,
    /// A file of DIDs, one per line (`#` starts a comment).
    #[serde(default)]
    pub did_file: Option<std::path::PathBuf>,
    /// DIDs per connection (the server's limit is 10,000).
    #[serde(default = "default_per_connection")]
    pub dids_per_connection: usize,
    /// zstd frames with Jetstream's dictionary.
    #[serde(default)]
    pub compress: bool,
    /// The server skips larger events (0 = no limit).
    #[serde(default)]
    pub max_message_size_bytes: u64,
    /// Resume this many seconds before the newest acknowledged event.
    #[serde(default = "default_rewind")]
    pub cursor_rewind_s: f64,
    /// Overrides `[backoff] stall_timeout_s` for this source.
    #[serde(default)]
    pub stall_timeout_s: Option<f64>,
    /// Overrides `[backoff] liveness_factor` for this source.
    #[serde(default)]
    pub liveness_factor: Option<f64>,
    /// Overrides `[backoff] liveness_min_s` for this source.
    #[serde(default)]
    pub liveness_min_s: Option<f64>,
    /// Failed attempts in a row on one host before the next is tried.
    #[serde(default = "default_failover_after")]
    pub failover_after: u32,
    /// Most connections.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

/// A validated Jetstream source.
#[derive(Debug, Clone)]
pub struct JetstreamSpec {
    /// Source name.
    pub name: Arc<str>,
    /// `ws(s)://host[:port]` of each instance, in failover order.
    pub hosts: Vec<String>,
    /// Wanted collections, as configured.
    pub collections: Vec<String>,
    /// DIDs from the config (`wanted_dids` then `did_file`), each once;
    /// empty = every DID on one connection.
    pub dids: Vec<String>,
    /// DIDs per connection.
    pub dids_per_connection: usize,
    /// zstd frames.
    pub compress: bool,
    /// `maxMessageSizeBytes` (0 = none).
    pub max_message_size_bytes: u64,
    /// How far before the newest acknowledged event a resume starts.
    pub cursor_rewind: Duration,
    /// Stall timeout of its connections.
    pub stall_timeout: Duration,
    /// Failed attempts in a row before the next host.
    pub failover_after: u32,
    /// Most connections.
    pub max_connections: usize,
    /// `[backoff]`.
    pub backoff: BackoffConfig,
    /// `[service] max_message_bytes`.
    pub max_message_bytes: usize,
    /// What this instance carries (`[service] instance`): DIDs split by
    /// DID; a source of every DID runs on one instance.
    pub share: crate::scale::Share,
    /// The config names no DID: one connection reads every DID.
    pub every_did: bool,
}

/// Validates a Jetstream source.
pub fn parse(table: serde_json::Value, ctx: &SourceContext) -> Result<JetstreamSpec, ConfigError> {
    let src: JetstreamTable = parse_table(table, ctx)?;
    let key = |f: &str| ctx.key(f);
    let hosts = match &src.base_url {
        None => DEFAULT_HOSTS.iter().map(|h| h.to_string()).collect(),
        Some(Hosts::One(h)) => vec![h.clone()],
        Some(Hosts::Many(list)) => list.clone(),
    };
    if hosts.is_empty() {
        return Err(ConfigError::new(key("base_url"), "needs at least one host"));
    }
    let many = matches!(src.base_url, Some(Hosts::Many(_)));
    let hosts = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| ws_url(&if many { key(&format!("base_url[{i}]")) } else { key("base_url") }, h))
        .collect::<Result<Vec<_>, _>>()?;
    if src.wanted_collections.len() > MAX_COLLECTIONS {
        return Err(ConfigError::new(
            key("wanted_collections"),
            format!("{} collections; the server takes at most {MAX_COLLECTIONS}", src.wanted_collections.len()),
        ));
    }
    for (i, c) in src.wanted_collections.iter().enumerate() {
        if !is_collection(c) {
            return Err(ConfigError::new(
                key(&format!("wanted_collections[{i}]")),
                format!("`{c}` is not an NSID (app.bsky.feed.post) or a prefix ending in `.*` (app.bsky.graph.*)"),
            ));
        }
    }
    let mut dids = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, d) in src.wanted_dids.iter().enumerate() {
        if !is_did(d) {
            return Err(ConfigError::new(key(&format!("wanted_dids[{i}]")), format!("`{d}` is not a DID")));
        }
        if seen.insert(d.clone()) {
            dids.push(d.clone());
        }
    }
    if let Some(path) = &src.did_file {
        let path = ctx.base_dir.join(path);
        for d in read_did_file(&path).map_err(|m| ConfigError::new(key("did_file"), m))? {
            if seen.insert(d.clone()) {
                dids.push(d);
            }
        }
    }
    if src.dids_per_connection == 0 || src.dids_per_connection > MAX_DIDS_PER_CONNECTION {
        return Err(ConfigError::new(
            key("dids_per_connection"),
            format!("must be 1..={MAX_DIDS_PER_CONNECTION} (the server's limit per connection)"),
        ));
    }
    if src.failover_after == 0 {
        return Err(ConfigError::new(key("failover_after"), "must be at least 1"));
    }
    if src.max_connections == 0 {
        return Err(ConfigError::new(key("max_connections"), "must be at least 1"));
    }
    let needed = dids.len().div_ceil(src.dids_per_connection).max(1);
    if needed > src.max_connections {
        return Err(ConfigError::new(
            key("wanted_dids"),
            format!(
                "{} DIDs need {needed} connections at dids_per_connection = {}, over max_connections ({})",
                dids.len(),
                src.dids_per_connection,
                src.max_connections
            ),
        ));
    }
    let every_did = dids.is_empty();
    let share = if every_did {
        ctx.placement.whole(&ctx.name)
    } else {
        ctx.placement.keep_owned(&ctx.name, &mut dids, String::clone)
    };
    Ok(JetstreamSpec {
        share,
        every_did,
        name: ctx.name.clone(),
        hosts,
        collections: src.wanted_collections,
        dids,
        dids_per_connection: src.dids_per_connection,
        compress: src.compress,
        max_message_size_bytes: src.max_message_size_bytes,
        cursor_rewind: secs(&key("cursor_rewind_s"), src.cursor_rewind_s)?,
        stall_timeout: stall_timeout(
            &key("stall_timeout_s"),
            src.stall_timeout_s,
            ctx.stall_timeout.min(JETSTREAM_STALL),
        )?,
        failover_after: src.failover_after,
        max_connections: src.max_connections,
        backoff: crate::settings::with_liveness(&ctx.backoff, key, src.liveness_factor, src.liveness_min_s)?,
        max_message_bytes: ctx.max_message_bytes,
    })
}

/// A host as `ws(s)://host[:port]` without a trailing slash (`http(s)://`
/// is taken for its WebSocket twin; a `/subscribe` path is dropped).
fn ws_url(key: &str, url: &str) -> Result<String, ConfigError> {
    let url = url.trim_end_matches('/');
    let url = url.strip_suffix("/subscribe").unwrap_or(url);
    let ws = websocket_scheme(url);
    if !(ws.starts_with("ws://") || ws.starts_with("wss://")) || ws.ends_with("//") {
        return Err(ConfigError::new(key, format!("`{url}` must start with wss:// or ws://")));
    }
    Ok(ws)
}

fn read_did_file(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut dids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if !is_did(line) {
            return Err(format!("{}:{}: `{line}` is not a DID", path.display(), n + 1));
        }
        dids.push(line.to_owned());
    }
    Ok(dids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> SourceContext {
        SourceContext::new(3, "bsky", "bluesky.jetstream")
    }

    #[test]
    fn defaults_follow_the_public_instances() {
        let s = parse(serde_json::json!({}), &ctx()).unwrap();
        assert_eq!(s.hosts.len(), 2);
        assert!(s.hosts[0].starts_with("wss://jetstream2"));
        assert_eq!(s.dids_per_connection, 10_000);
        assert_eq!(s.cursor_rewind, Duration::from_secs(5));
        assert_eq!(s.stall_timeout, Duration::from_secs(30));
        assert_eq!(s.failover_after, 3);
        assert!(s.every_did, "no DID named: every DID");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (serde_json::json!({"base_url": "ftp://x"}), "sources[3].base_url"),
            (serde_json::json!({"base_url": ["ws://a", "x"]}), "sources[3].base_url[1]"),
            (
                serde_json::json!({"wanted_collections": ["app.bsky.feed.post", "app.bsky.graph.fo*"]}),
                "sources[3].wanted_collections[1]",
            ),
            (serde_json::json!({"wanted_dids": ["did:plc:abc", "alice"]}), "sources[3].wanted_dids[1]"),
            (serde_json::json!({"dids_per_connection": 10_001}), "sources[3].dids_per_connection"),
            (serde_json::json!({"failover_after": 0}), "sources[3].failover_after"),
            (serde_json::json!({"cursor_rewind_s": -1}), "sources[3].cursor_rewind_s"),
            (serde_json::json!({"wantedDids": []}), "sources[3].wantedDids"),
        ];
        for (table, want) in cases {
            let e = parse(table.clone(), &ctx()).unwrap_err();
            assert_eq!(e.key, want, "{table}: {}", e.message);
        }
        let many: Vec<String> = (0..101).map(|i| format!("app.bsky.c{i}.post")).collect();
        let e = parse(serde_json::json!({"wanted_collections": many}), &ctx()).unwrap_err();
        assert_eq!(e.key, "sources[3].wanted_collections");
    }

    #[test]
    fn dids_count_once_and_plan_within_max_connections() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dids.txt"), "did:plc:aaa # alice\n\ndid:plc:bbb\ndid:plc:aaa\n").unwrap();
        let mut c = ctx();
        c.base_dir = dir.path().to_owned();
        let s = parse(serde_json::json!({"wanted_dids": ["did:plc:bbb"], "did_file": "dids.txt", "base_url": "http://127.0.0.1:1/"}), &c).unwrap();
        assert_eq!(s.dids, vec!["did:plc:bbb", "did:plc:aaa"]);
        assert_eq!(s.hosts, vec!["ws://127.0.0.1:1"]);
        let dids: Vec<String> = (0..25).map(|i| format!("did:plc:x{i}")).collect();
        let e = parse(serde_json::json!({"wanted_dids": dids, "dids_per_connection": 5, "max_connections": 4}), &ctx())
            .unwrap_err();
        assert_eq!(e.key, "sources[3].wanted_dids");
        assert!(e.message.contains("5 connections"), "{}", e.message);
        std::fs::write(dir.path().join("bad.txt"), "did:plc:ok\nnot-a-did\n").unwrap();
        let e = parse(serde_json::json!({"did_file": "bad.txt"}), &c).unwrap_err();
        assert!(e.key.ends_with("did_file") && e.message.contains(":2:"), "{}", e.message);
    }
}
