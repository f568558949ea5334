//! A Mastodon source's config table: its keys (every other key is an error
//! naming the key and the kind) and the rules that turn it into a
//! [`MastodonSpec`] — a bearer token, known stream names counted once
//! (hashtags match whatever their case or accents), and a plan that fits.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use super::spec::{BearerToken, CatchUpLimits, MastodonSpec, Transport};
use super::streams::MastodonStream;
use crate::error::ConfigError;
use crate::settings::{http_url, stall_timeout, AuthConfig, AuthKind, AuthList};
use crate::source::{parse_table, SourceContext};

/// Default stall timeout of a Mastodon source: three missed 15 s heartbeats.
const MASTODON_STALL: Duration = Duration::from_secs(45);
/// Default WebSocket subscriptions per connection.
const DEFAULT_STREAMS_PER_CONNECTION: usize = 100;

const fn default_max_connections() -> usize {
    50
}

/// The keys of a Mastodon source (besides `name` and `kind`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MastodonTable {
    /// The instance (REST API).
    #[serde(default)]
    pub base_url: Option<String>,
    /// The streaming host, when it should not be discovered from the instance API (B.1).
    #[serde(default)]
    pub streaming_url: Option<String>,
    /// `sse` or `websocket`.
    #[serde(default)]
    pub transport: Option<String>,
    /// Stream names (B.3).
    #[serde(default)]
    pub streams: Vec<String>,
    /// WebSocket multiplexing.
    #[serde(default)]
    pub streams_per_connection: Option<usize>,
    /// Catch up over REST after a gap.
    #[serde(default)]
    pub catch_up: Option<bool>,
    /// Most connections.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// `{ kind = "bearer", token = "..." }`.
    #[serde(default)]
    pub auth: Option<AuthList>,
    /// Overrides `[backoff] stall_timeout_s` for this source.
    #[serde(default)]
    pub stall_timeout_s: Option<f64>,
    /// Overrides `[backoff] liveness_factor` for this source.
    #[serde(default)]
    pub liveness_factor: Option<f64>,
    /// Overrides `[backoff] liveness_min_s` for this source.
    #[serde(default)]
    pub liveness_min_s: Option<f64>,
}

/// Validates a Mastodon source.
pub fn parse(table: serde_json::Value, ctx: &SourceContext) -> Result<MastodonSpec, ConfigError> {
    let src: MastodonTable = parse_table(table, ctx)?;
    let key = |f: &str| ctx.key(f);
    let instance_url = http_url(&key("base_url"), src.base_url.as_deref().unwrap_or("https://mastodon.social"))?;
    let auths = src.auth.as_ref().map(|a| a.0.clone()).unwrap_or_default();
    let token = match auths.as_slice() {
        [AuthConfig { kind: AuthKind::Bearer, token: Some(t), .. }] => t.resolve(&key("auth.token"))?,
        _ => {
            return Err(ConfigError::new(
                key("auth"),
                "a mastodon source needs auth = { kind = \"bearer\", token = \"...\" }",
            ))
        }
    };
    if token.trim().is_empty() {
        return Err(ConfigError::new(key("auth.token"), "is empty"));
    }
    let streaming_url = match &src.streaming_url {
        Some(u) => {
            let http = crate::settings::http_scheme(u);
            Some(http_url(&key("streaming_url"), &http)?)
        }
        None => None,
    };
    let transport = match src.transport.as_deref() {
        None | Some("websocket") => Transport::WebSocket,
        Some("sse") => Transport::Sse,
        Some(t) => return Err(ConfigError::new(key("transport"), format!("`{t}` is not sse or websocket"))),
    };
    if src.streams.is_empty() {
        return Err(ConfigError::new(key("streams"), "a mastodon source needs at least one stream"));
    }
    let mut streams = Vec::new();
    let mut keys: HashMap<String, String> = HashMap::new();
    for (j, s) in src.streams.iter().enumerate() {
        let skey = key(&format!("streams[{j}]"));
        let stream = MastodonStream::parse(s)
            .ok_or_else(|| ConfigError::new(skey.clone(), format!("unknown stream name `{s}`")))?;
        if let Some(first) = keys.insert(stream.key(), s.clone()) {
            return Err(ConfigError::new(
                skey,
                format!("`{s}` is the same stream as `{first}` (hashtags match whatever their case or accents)"),
            ));
        }
        streams.push(stream);
    }
    let per = src.streams_per_connection.unwrap_or(DEFAULT_STREAMS_PER_CONNECTION);
    if per == 0 || per > 10_000 {
        return Err(ConfigError::new(key("streams_per_connection"), "must be 1..=10000"));
    }
    if src.max_connections == 0 {
        return Err(ConfigError::new(key("max_connections"), "must be at least 1"));
    }
    let needed = match transport {
        Transport::Sse => streams.len(),
        Transport::WebSocket => streams.len().div_ceil(per),
    };
    if needed > src.max_connections {
        return Err(ConfigError::new(
            key("streams"),
            format!(
                "{} stream(s) need {needed} {} connection(s), over max_connections ({})",
                streams.len(),
                transport.as_str(),
                src.max_connections
            ),
        ));
    }
    let share = ctx.placement.keep_owned(&ctx.name, &mut streams, MastodonStream::key);
    Ok(MastodonSpec {
        share,
        name: ctx.name.clone(),
        transport,
        instance_url,
        streaming_url,
        streams,
        streams_per_connection: per,
        catch_up: src.catch_up.unwrap_or(true).then(CatchUpLimits::default),
        token: BearerToken::new(token),
        stall_timeout: stall_timeout(
            &key("stall_timeout_s"),
            src.stall_timeout_s,
            ctx.stall_timeout.min(MASTODON_STALL),
        )?,
        max_message_bytes: ctx.max_message_bytes,
        max_connections: src.max_connections,
        backoff: crate::settings::with_liveness(&ctx.backoff, key, src.liveness_factor, src.liveness_min_s)?,
    })
}
