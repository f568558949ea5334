//! Error enums at the crate boundary: why a connection ended, why a sink
//! failed, and which config key is wrong.

use std::time::Duration;

/// Why a connection ended; decides the wait before the next attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectCause {
    /// TCP/IP error, reset, refused, DNS, a broken body.
    Network(String),
    /// No byte (not even a keep-alive) for the stall timeout.
    Stall,
    /// The server ended the body cleanly.
    Eof,
    /// A retryable HTTP status (5xx and the like).
    Http {
        /// Status code.
        status: u16,
        /// `Retry-After` in seconds, when the server sent one.
        retry_after: Option<Duration>,
    },
    /// HTTP 420 or 429.
    RateLimited {
        /// Status code.
        status: u16,
        /// `Retry-After` in seconds, when the server sent one.
        retry_after: Option<Duration>,
    },
    /// A retryable disconnect message.
    DisconnectMessage {
        /// The code from the message.
        code: u32,
    },
    /// Bytes kept coming (heartbeats) but no event for longer than the
    /// connection's liveness bound: reconnected as a probe.
    Silent,
}

impl DisconnectCause {
    /// Every label [`DisconnectCause::label`] gives, for metrics.
    pub const LABELS: [&'static str; 7] =
        ["network", "stall", "eof", "http", "rate_limit", "disconnect", "silent_stream"];

    /// Short label for metrics (`streamherd_reconnects_total{cause}`).
    pub fn label(&self) -> &'static str {
        match self {
            DisconnectCause::Network(_) => "network",
            DisconnectCause::Stall => "stall",
            DisconnectCause::Eof => "eof",
            DisconnectCause::Http { .. } => "http",
            DisconnectCause::RateLimited { .. } => "rate_limit",
            DisconnectCause::DisconnectMessage { .. } => "disconnect",
            DisconnectCause::Silent => "silent_stream",
        }
    }
}

impl std::fmt::Display for DisconnectCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DisconnectCause::Network(e) => write!(f, "network error: {e}"),
            DisconnectCause::Stall => f.write_str("stalled: nothing received within the stall timeout"),
            DisconnectCause::Eof => f.write_str("the server closed the stream"),
            DisconnectCause::Http { status, .. } => write!(f, "HTTP {status}"),
            DisconnectCause::RateLimited { status, .. } => write!(f, "HTTP {status} (rate limited)"),
            DisconnectCause::DisconnectMessage { code } => write!(f, "disconnect message, code {code}"),
            DisconnectCause::Silent => f.write_str("silent stream: no event within the liveness bound"),
        }
    }
}

/// Why a stream connection attempt or read ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Retryable; the cause decides the wait.
    #[error("{0}")]
    Retryable(DisconnectCause),
    /// Final: the connection is `failed` and is not retried.
    #[error("{reason}")]
    Fatal {
        /// What happened, with the status and the (truncated) body.
        reason: String,
    },
    /// Final but not an error (stopped on request, a backfill that finished).
    #[error("stream finished: {reason}")]
    Finished {
        /// What happened.
        reason: String,
    },
}

impl StreamError {
    /// A retryable network error.
    pub fn network(error: impl std::fmt::Display) -> StreamError {
        StreamError::Retryable(DisconnectCause::Network(error.to_string()))
    }

    /// The `reason` of the gap a connection that ended like this leaves: a
    /// silent stream's reconnect is its liveness probe.
    pub fn gap_reason(&self) -> &'static str {
        match self {
            StreamError::Retryable(DisconnectCause::Stall) => "stall",
            StreamError::Retryable(DisconnectCause::Silent) => "silent_stream",
            _ => "reconnect",
        }
    }

    /// The end of a connection that was asked to stop.
    pub fn stopped() -> StreamError {
        StreamError::Finished { reason: "stopped".into() }
    }
}

/// A sink could not be built or could not write.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A configuration value of the sink is wrong; `key` names it.
    #[error("{key}: {message}")]
    Config {
        /// The offending key, e.g. `sinks[1].path`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// No sink kind of that name is registered.
    #[error("unknown sink kind `{kind}` (known: {known})")]
    UnknownKind {
        /// The kind asked for.
        kind: String,
        /// The registered kind names, comma-separated.
        known: String,
    },
    /// Writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The destination is down or busy (a server that does not answer):
    /// the batch is retried without limit, with capped backoff, while the
    /// queue spills, and `/health` is degraded meanwhile.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Any other sink-specific failure.
    #[error("{0}")]
    Other(String),
}

/// A configuration value is wrong: the key (`sources[0].follow`) and why.
/// The service adds the file's name when it reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The offending key, e.g. `sources[0].follow`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError { key: key.into(), message: message.into() }
    }
}

/// Keys whose values are secrets (credential tables, tokens, passwords).
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["auth", "token", "secret", "password", "url"].iter().any(|k| key.contains(k))
}

/// A value error under a secret key without the value: serde says
/// `invalid type: string "<the secret>", expected ...`, which must never
/// reach a terminal or a log. Other messages pass unchanged.
pub fn redact_secret_value(key: &str, message: &str) -> String {
    if is_secret_key(key) {
        hide_value(message)
    } else {
        message.to_owned()
    }
}

/// A serde value error without the value it quotes.
pub fn hide_value(message: &str) -> String {
    let shown = ["invalid type: ", "invalid value: ", "invalid length "].iter().any(|p| message.starts_with(p));
    if !shown {
        return message.to_owned();
    }
    // `invalid type: <what> <value>, expected <...>`: keep what and expected.
    let (head, expected) = match message.rfind(", expected ") {
        Some(i) => (&message[..i], &message[i..]),
        None => (message, ""),
    };
    let what = head.split_once(['"', '`']).map_or(head, |(before, _)| before).trim_end();
    format!("{what} (value not shown){expected}")
}

#[cfg(test)]
mod redact_tests {
    use super::redact_secret_value;

    #[test]
    fn secret_values_never_appear_in_value_errors() {
        let m = r#"invalid type: string "SUPERSECRET3", expected a credential table or a list of them"#;
        assert_eq!(
            redact_secret_value("sources[0].auth", m),
            "invalid type: string (value not shown), expected a credential table or a list of them"
        );
        let m = "invalid type: integer `5`, expected a string";
        assert_eq!(
            redact_secret_value("control.token", m),
            "invalid type: integer (value not shown), expected a string"
        );
        let m = r#"invalid type: string "a", expected x", expected struct AuthConfig"#;
        assert!(!redact_secret_value("sources[0].auth[0]", m).contains("expected x"));
        // Elsewhere the value helps and is no secret.
        let m = r#"invalid type: string "5", expected u64"#;
        assert_eq!(redact_secret_value("sources[0].follow[0]", m), m);
    }
}
