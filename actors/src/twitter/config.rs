//! A Twitter source's config table: its keys (every other key is an error
//! naming the key and the kind) and the rules that turn it into a
//! [`TwitterSpec`] — credentials, follow files, predicate limits per
//! connection and per credential, and a plan that fits.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

use super::request::{OAuthCredentials, TwitterEndpoint, TwitterQuery};
use super::shards::{plan_shards, FILTER_MAX_FOLLOWS, FILTER_MAX_LOCATIONS, FILTER_MAX_TRACK};
use super::spec::TwitterSpec;
use crate::error::ConfigError;
use crate::settings::{http_url, secs, stall_timeout, AuthKind, AuthList, Secret};
use crate::source::{parse_table, SourceContext};

const fn default_true() -> bool {
    true
}

const fn default_max_connections() -> usize {
    50
}

/// `update = { min_delay_s, max_delay_s }` (seed 002's scheduling).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateTable {
    /// At most one predicate restart per this many seconds.
    pub min_delay_s: f64,
    /// With one change pending, restart after this many seconds.
    pub max_delay_s: f64,
}

impl Default for UpdateTable {
    fn default() -> Self {
        UpdateTable { min_delay_s: 120.0, max_delay_s: 600.0 }
    }
}

/// Body framing asked of Twitter.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Delimited {
    /// CRLF lines.
    #[default]
    None,
    /// Length-prefixed.
    Length,
}

/// The keys of a Twitter source (besides `name` and `kind`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwitterTable {
    /// Scheme and host of the streaming API.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Track phrases.
    #[serde(default)]
    pub track: Vec<String>,
    /// Follow ids.
    #[serde(default)]
    pub follow: Vec<u64>,
    /// A file of follow ids, one per line, `#` comments.
    #[serde(default)]
    pub follow_file: Option<std::path::PathBuf>,
    /// Location boxes.
    #[serde(default)]
    pub locations: Vec<String>,
    /// Ask for stall warnings.
    #[serde(default = "default_true")]
    pub stall_warnings: bool,
    /// `none`, `low` or `medium`.
    #[serde(default)]
    pub filter_level: Option<String>,
    /// `none` or `length`.
    #[serde(default)]
    pub delimited: Delimited,
    /// Language codes.
    #[serde(default)]
    pub language: Vec<String>,
    /// Ids per connection.
    #[serde(default)]
    pub follow_limit: Option<usize>,
    /// Most connections.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Credentials.
    #[serde(default)]
    pub auth: Option<AuthList>,
    /// Predicate-change scheduling.
    #[serde(default)]
    pub update: UpdateTable,
    /// `user` or `followings` (user and site streams).
    #[serde(default)]
    pub with: Option<String>,
    /// `all` (user and site streams).
    #[serde(default)]
    pub replies: Option<String>,
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

fn default_base_url(endpoint: TwitterEndpoint) -> &'static str {
    match endpoint {
        TwitterEndpoint::Filter | TwitterEndpoint::Sample => "https://stream.twitter.com",
        TwitterEndpoint::User => "https://userstream.twitter.com",
        TwitterEndpoint::Site => "https://sitestream.twitter.com",
    }
}

/// Validates a Twitter source of `endpoint`.
pub fn parse(
    endpoint: TwitterEndpoint,
    table: serde_json::Value,
    ctx: &SourceContext,
) -> Result<TwitterSpec, ConfigError> {
    let src: TwitterTable = parse_table(table, ctx)?;
    let key = |f: &str| ctx.key(f);
    let kind = ctx.kind;
    let base_url = http_url(&key("base_url"), src.base_url.as_deref().unwrap_or(default_base_url(endpoint)))?;
    let credentials = credentials(&src, ctx)?;

    let mut follow = src.follow.clone();
    if let Some(path) = &src.follow_file {
        let path = if path.is_relative() { ctx.base_dir.join(path) } else { path.clone() };
        follow.extend(read_follow_file(&path).map_err(|m| ConfigError::new(key("follow_file"), m))?);
    }
    let mut seen = HashSet::new();
    follow.retain(|id| seen.insert(*id));

    for (j, t) in src.track.iter().enumerate() {
        if t.is_empty() || t.len() > 60 {
            return Err(ConfigError::new(
                key(&format!("track[{j}]")),
                format!("a track phrase must be 1-60 bytes, `{t}` is {}", t.len()),
            ));
        }
    }
    for (j, l) in src.locations.iter().enumerate() {
        let parts: Vec<_> = l.split(',').map(|p| p.trim().parse::<f64>()).collect();
        if parts.len() != 4 || parts.iter().any(Result::is_err) {
            return Err(ConfigError::new(
                key(&format!("locations[{j}]")),
                format!("`{l}` is not \"sw_lon,sw_lat,ne_lon,ne_lat\""),
            ));
        }
        let v: Vec<f64> = parts.into_iter().flatten().collect();
        let lon_ok = |x: f64| (-180.0..=180.0).contains(&x);
        let lat_ok = |y: f64| (-90.0..=90.0).contains(&y);
        if !(lon_ok(v[0]) && lat_ok(v[1]) && lon_ok(v[2]) && lat_ok(v[3])) {
            return Err(ConfigError::new(
                key(&format!("locations[{j}]")),
                format!("`{l}`: longitudes must be within ±180 and latitudes within ±90"),
            ));
        }
        if v[0] >= v[2] || v[1] >= v[3] {
            return Err(ConfigError::new(
                key(&format!("locations[{j}]")),
                format!("`{l}`: the south-west corner must be below and left of the north-east one"),
            ));
        }
    }
    if let Some(level) = &src.filter_level {
        if !["none", "low", "medium"].contains(&level.as_str()) {
            return Err(ConfigError::new(key("filter_level"), format!("`{level}` is not none, low or medium")));
        }
    }
    for (field, v) in [("with", &src.with), ("replies", &src.replies)] {
        if let Some(v) = v {
            let ok = match field {
                "with" => v == "user" || v == "followings",
                _ => v == "all",
            };
            if !ok || !matches!(endpoint, TwitterEndpoint::User | TwitterEndpoint::Site) {
                return Err(ConfigError::new(
                    key(field),
                    format!("`{v}` is not valid here (user/site streams: with = user|followings, replies = all)"),
                ));
            }
        }
    }
    let (default_limit, max_limit) = match endpoint {
        TwitterEndpoint::Site => (100, 1000),
        _ => (FILTER_MAX_FOLLOWS, FILTER_MAX_FOLLOWS),
    };
    let follow_limit = src.follow_limit.unwrap_or(default_limit);
    if follow_limit == 0 || follow_limit > max_limit {
        return Err(ConfigError::new(key("follow_limit"), format!("must be 1..={max_limit} for {kind}")));
    }
    if src.max_connections == 0 {
        return Err(ConfigError::new(key("max_connections"), "must be at least 1"));
    }
    match endpoint {
        TwitterEndpoint::Filter => {
            let creds = credentials.len();
            let checks = [
                ("follow", follow.len(), FILTER_MAX_FOLLOWS, "follow ids"),
                ("track", src.track.len(), FILTER_MAX_TRACK, "track terms"),
                ("locations", src.locations.len(), FILTER_MAX_LOCATIONS, "location boxes"),
            ];
            for (field, n, per, what) in checks {
                if n > per * creds {
                    return Err(ConfigError::new(
                        key(field),
                        format!("{n} {what} need {} connections at {per} each, but twitter.filter allows one per credential and {creds} credential(s) are given", n.div_ceil(per)),
                    ));
                }
            }
        }
        TwitterEndpoint::Sample => {
            if !follow.is_empty() || !src.track.is_empty() || !src.locations.is_empty() {
                return Err(ConfigError::new(key("follow"), "twitter.sample takes no follow, track or locations"));
            }
        }
        TwitterEndpoint::User | TwitterEndpoint::Site => {}
    }
    if follow.len() > follow_limit.saturating_mul(src.max_connections) {
        return Err(ConfigError::new(
            key("follow"),
            format!(
                "{} follow ids exceed follow_limit ({follow_limit}) x max_connections ({})",
                follow.len(),
                src.max_connections
            ),
        ));
    }
    if endpoint == TwitterEndpoint::Site && follow.is_empty() {
        return Err(ConfigError::new(key("follow"), "twitter.site needs follow ids (follow or follow_file)"));
    }
    let share = if endpoint == TwitterEndpoint::Site {
        ctx.placement.keep_owned(&ctx.name, &mut follow, u64::to_string)
    } else {
        ctx.placement.whole(&ctx.name)
    };
    let spec = TwitterSpec {
        name: ctx.name.clone(),
        kind,
        endpoint,
        base_url,
        credentials,
        query: TwitterQuery {
            follow,
            track: src.track.clone(),
            locations: src.locations.clone(),
            delimited: src.delimited == Delimited::Length,
            stall_warnings: src.stall_warnings,
            filter_level: src.filter_level.clone().filter(|l| l != "none"),
            language: src.language.clone(),
            with: src.with.clone(),
            replies: src.replies.clone(),
        },
        follow_limit,
        max_connections: src.max_connections,
        stall_timeout: stall_timeout(&key("stall_timeout_s"), src.stall_timeout_s, ctx.stall_timeout)?,
        max_message_bytes: ctx.max_message_bytes,
        backoff: crate::settings::with_liveness(&ctx.backoff, key, src.liveness_factor, src.liveness_min_s)?,
        share,
        update_min: secs(&key("update.min_delay_s"), src.update.min_delay_s)?,
        update_max: secs(&key("update.max_delay_s"), src.update.max_delay_s)?,
    };
    if spec.update_min > spec.update_max {
        return Err(ConfigError::new(key("update.min_delay_s"), "must not exceed max_delay_s"));
    }
    plan_shards(&spec).map_err(|e| ConfigError::new(key("follow"), e.to_string()))?;
    Ok(spec)
}

/// The source's OAuth 1.0a credentials, every secret resolved.
fn credentials(src: &TwitterTable, ctx: &SourceContext) -> Result<Vec<OAuthCredentials>, ConfigError> {
    let auths = src.auth.as_ref().map(|a| a.0.clone()).unwrap_or_default();
    if auths.is_empty() {
        return Err(ConfigError::new(
            ctx.key("auth"),
            format!("{} needs OAuth 1.0a credentials: auth = {{ kind = \"oauth1\", ... }}", ctx.kind),
        ));
    }
    let mut credentials = Vec::new();
    for (j, a) in auths.iter().enumerate() {
        let akey =
            |f: &str| if auths.len() == 1 { ctx.key(&format!("auth.{f}")) } else { ctx.key(&format!("auth[{j}].{f}")) };
        if a.kind != AuthKind::Oauth1 {
            return Err(ConfigError::new(akey("kind"), format!("{} needs kind = \"oauth1\"", ctx.kind)));
        }
        let need = |v: &Option<Secret>, f: &str| -> Result<String, ConfigError> {
            v.as_ref().ok_or_else(|| ConfigError::new(akey(f), "missing"))?.resolve(&akey(f))
        };
        credentials.push(OAuthCredentials {
            consumer_key: a.consumer_key.clone().ok_or_else(|| ConfigError::new(akey("consumer_key"), "missing"))?,
            consumer_secret: need(&a.consumer_secret, "consumer_secret")?,
            token: need(&a.token, "token")?,
            token_secret: need(&a.token_secret, "token_secret")?,
        });
    }
    Ok(credentials)
}

fn read_follow_file(path: &Path) -> Result<Vec<u64>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        ids.push(
            line.parse::<u64>()
                .map_err(|_| format!("{}:{}: `{line}` is not a numeric user id", path.display(), n + 1))?,
        );
    }
    Ok(ids)
}
