//! Config values every source kind parses the same way: secrets (a literal
//! or `${VAR}`, never printed), credential tables (one, or a list), seconds
//! as fractions, and stream URLs.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::connection::backoff::BackoffConfig;
use crate::error::ConfigError;

/// A secret value: a literal or `${VAR}`. Never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The literal, or the environment variable it names; `key` names it in the error.
    pub fn resolve(&self, key: &str) -> Result<String, ConfigError> {
        let s = self.0.trim();
        if let Some(var) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
            let value = std::env::var(var)
                .map_err(|_| ConfigError::new(key, format!("environment variable {var} is not set")))?;
            if value.trim().is_empty() {
                return Err(ConfigError::new(key, format!("environment variable {var} is empty")));
            }
            return Ok(value);
        }
        if s.is_empty() {
            return Err(ConfigError::new(key, "must not be empty"));
        }
        Ok(self.0.clone())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One credential table: `{ kind = "oauth1", ... }` or `{ kind = "bearer", token = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `oauth1` or `bearer`.
    pub kind: AuthKind,
    /// OAuth consumer key.
    #[serde(default)]
    pub consumer_key: Option<String>,
    /// OAuth consumer secret.
    #[serde(default)]
    pub consumer_secret: Option<Secret>,
    /// OAuth access token, or the bearer token.
    #[serde(default)]
    pub token: Option<Secret>,
    /// OAuth token secret.
    #[serde(default)]
    pub token_secret: Option<Secret>,
}

/// Credential kinds.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthKind {
    /// OAuth 1.0a user context.
    Oauth1,
    /// A bearer token.
    Bearer,
}

/// `auth = {...}` or `auth = [{...}, ...]`.
#[derive(Debug, Clone, Default)]
pub struct AuthList(pub Vec<AuthConfig>);

impl<'de> Deserialize<'de> for AuthList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AuthList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a credential table or a list of them")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<AuthList, A::Error> {
                AuthConfig::deserialize(de::value::MapAccessDeserializer::new(map)).map(|a| AuthList(vec![a]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<AuthList, A::Error> {
                Vec::<AuthConfig>::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(AuthList)
            }
        }
        d.deserialize_any(V)
    }
}

/// `v` seconds as a duration; `key` names it in the error.
pub fn secs(key: &str, v: f64) -> Result<Duration, ConfigError> {
    if !v.is_finite() || !(0.0..=1e9).contains(&v) {
        return Err(ConfigError::new(key, "must be a non-negative number of seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// A per-source `stall_timeout_s` override, else `default`.
pub fn stall_timeout(key: &str, value: Option<f64>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        Some(v) => {
            let d = secs(key, v)?;
            if d.is_zero() {
                return Err(ConfigError::new(key, "must be above 0"));
            }
            Ok(d)
        }
        None => Ok(default),
    }
}

/// `liveness_factor`: how many usual gaps between events a silence may last.
pub fn liveness_factor(key: &str, v: f64) -> Result<f64, ConfigError> {
    if !v.is_finite() || !(1.0..=1e6).contains(&v) {
        return Err(ConfigError::new(key, "must be a number from 1 to 1000000"));
    }
    Ok(v)
}

/// `liveness_min_s`: the shortest silence that is probed (above 0).
pub fn liveness_min(key: &str, v: f64) -> Result<Duration, ConfigError> {
    let d = secs(key, v)?;
    if d.is_zero() {
        return Err(ConfigError::new(key, "must be above 0"));
    }
    Ok(d)
}

/// `[backoff]` with a source's own `liveness_factor` / `liveness_min_s`
/// (`key` names the source's fields, e.g. `sources[2].`).
pub fn with_liveness(
    backoff: &BackoffConfig,
    key: impl Fn(&str) -> String,
    factor: Option<f64>,
    min_s: Option<f64>,
) -> Result<BackoffConfig, ConfigError> {
    let mut b = backoff.clone();
    if let Some(f) = factor {
        b.liveness_factor = liveness_factor(&key("liveness_factor"), f)?;
    }
    if let Some(m) = min_s {
        b.liveness_min = liveness_min(&key("liveness_min_s"), m)?;
    }
    Ok(b)
}

/// `url` without a trailing slash, if it is http(s).
pub fn http_url(key: &str, url: &str) -> Result<String, ConfigError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url.trim_end_matches('/').to_owned())
    } else {
        Err(ConfigError::new(key, format!("`{url}` must start with http:// or https://")))
    }
}

/// `url` on its WebSocket scheme: `https://` becomes `wss://`, `http://`
/// becomes `ws://`; anything else is returned as it is.
pub fn websocket_scheme(url: &str) -> String {
    match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => format!("wss://{rest}"),
        (_, Some(rest)) => format!("ws://{rest}"),
        _ => url.to_owned(),
    }
}

/// The `host[:port]` of `url` (what shares one attempt budget): the part
/// between `://` and the next `/`, `?` or `#`, lower-cased; `url` itself when
/// it has no scheme.
pub fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host = &rest[..end];
    // Credentials in a URL are not part of the host.
    host.rsplit_once('@').map_or(host, |(_, h)| h).to_ascii_lowercase()
}

/// `url` on its HTTP scheme: `wss://` becomes `https://`, `ws://` becomes
/// `http://`; anything else is returned as it is.
pub fn http_scheme(url: &str) -> String {
    match (url.strip_prefix("wss://"), url.strip_prefix("ws://")) {
        (Some(rest), _) => format!("https://{rest}"),
        (_, Some(rest)) => format!("http://{rest}"),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_resolve_and_never_print() {
        let s = Secret("literal".into());
        assert_eq!(s.resolve("k").unwrap(), "literal");
        assert!(!format!("{s:?}").contains("literal"));
        let unset = Secret("${STREAMHERD_SETTINGS_TEST_UNSET}".into());
        let e = unset.resolve("sources[0].auth.token").unwrap_err();
        assert_eq!(e.key, "sources[0].auth.token");
    }

    #[test]
    fn durations_and_urls_are_checked() {
        assert_eq!(secs("k", 0.5).unwrap(), Duration::from_millis(500));
        assert!(secs("k", -1.0).is_err());
        assert!(stall_timeout("k", Some(0.0), Duration::from_secs(1)).is_err());
        assert_eq!(stall_timeout("k", None, Duration::from_secs(3)).unwrap(), Duration::from_secs(3));
        assert_eq!(http_url("k", "http://h:1/").unwrap(), "http://h:1");
        assert_eq!(http_url("k", "ftp://h").unwrap_err().key, "k");
        assert_eq!(websocket_scheme("https://h:1/x"), "wss://h:1/x");
        assert_eq!(websocket_scheme("http://h"), "ws://h");
        assert_eq!(websocket_scheme("ws://h"), "ws://h");
        assert_eq!(http_scheme("wss://h"), "https://h");
        assert_eq!(http_scheme("ws://h/"), "http://h/");
        assert_eq!(http_scheme("https://h"), "https://h");
    }
}
