//! [`MastodonSpec`]: a validated Mastodon source, and the values it is
//! made of (transport, token, catch-up bounds).

use std::sync::Arc;
use std::time::Duration;

use super::streams::MastodonStream;
use crate::connection::backoff::BackoffConfig;

/// How a Mastodon source connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One Server-Sent Events connection per stream.
    Sse,
    /// Subscriptions multiplexed over WebSocket connections.
    WebSocket,
}

impl Transport {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::WebSocket => "websocket",
        }
    }
}

/// A bearer token: shown as `[redacted]` by `Debug`, so it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(Arc<str>);

impl BearerToken {
    /// Wraps a token.
    pub fn new(token: impl Into<Arc<str>>) -> Self {
        BearerToken(token.into())
    }

    /// The token itself, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken([redacted])")
    }
}

/// Bounds of one catch-up (B.7, B.8).
#[derive(Debug, Clone)]
pub struct CatchUpLimits {
    /// Stop after this many items; the gap event then says `complete: false`.
    pub max_items: usize,
    /// The longest wait for a REST rate-limit reset.
    pub max_rate_wait: Duration,
    /// First wait before retrying a failed REST call.
    pub retry_wait: Duration,
    /// Per REST call.
    pub timeout: Duration,
}

impl Default for CatchUpLimits {
    fn default() -> Self {
        CatchUpLimits {
            max_items: 20_000,
            max_rate_wait: Duration::from_secs(300),
            retry_wait: Duration::from_secs(1),
            timeout: Duration::from_secs(30),
        }
    }
}

/// A validated Mastodon source.
#[derive(Debug, Clone)]
pub struct MastodonSpec {
    /// Source name.
    pub name: Arc<str>,
    /// SSE or WebSocket.
    pub transport: Transport,
    /// The instance (REST API) base URL, `http(s)://host[:port]`.
    pub instance_url: String,
    /// The streaming host; `None`: discovered from the instance API.
    pub streaming_url: Option<String>,
    /// Streams to carry.
    pub streams: Vec<MastodonStream>,
    /// WebSocket subscriptions per connection.
    pub streams_per_connection: usize,
    /// Catch-up limits; `None` = catch-up off (gaps are still reported).
    pub catch_up: Option<CatchUpLimits>,
    /// The user token.
    pub token: BearerToken,
    /// Stall timeout (heartbeats come every 15 s, pings every 30 s).
    pub stall_timeout: Duration,
    /// Largest message kept.
    pub max_message_bytes: usize,
    /// Most connections this source may open.
    pub max_connections: usize,
    /// Reconnect rules.
    pub backoff: BackoffConfig,
    /// What this instance carries (`[service] instance`): streams split by key.
    pub share: crate::scale::Share,
}

impl MastodonSpec {
    /// Streams one connection carries.
    pub fn per_connection(&self) -> usize {
        match self.transport {
            Transport::Sse => 1,
            Transport::WebSocket => self.streams_per_connection.max(1),
        }
    }
}
