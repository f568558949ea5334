//! [`TwitterSpec`]: a validated Twitter v1.1 source, as `check` describes
//! it and the planner runs it.

use std::sync::Arc;
use std::time::Duration;

use super::request::{OAuthCredentials, TwitterEndpoint, TwitterQuery};
use crate::connection::backoff::BackoffConfig;
use crate::scale::Share;

/// A validated Twitter source.
#[derive(Debug, Clone)]
pub struct TwitterSpec {
    /// Source name.
    pub name: Arc<str>,
    /// Its `kind` name (`twitter.filter`, ...).
    pub kind: &'static str,
    /// Which stream.
    pub endpoint: TwitterEndpoint,
    /// Scheme and host of the streaming API.
    pub base_url: String,
    /// One or more credentials (filter: one standing connection each).
    pub credentials: Vec<OAuthCredentials>,
    /// Predicates and options; `follow`/`track`/`locations` are split across shards.
    pub query: TwitterQuery,
    /// Follow ids per connection.
    pub follow_limit: usize,
    /// Most connections this source may open.
    pub max_connections: usize,
    /// Stall timeout.
    pub stall_timeout: Duration,
    /// Largest message kept.
    pub max_message_bytes: usize,
    /// Reconnect rules.
    pub backoff: BackoffConfig,
    /// Seed 002's `min_update_delay`: at most one predicate restart per this long.
    pub update_min: Duration,
    /// Seed 002's `max_update_delay`: with one change pending, restart after this long.
    pub update_max: Duration,
    /// What this instance carries (`[service] instance`): site streams split
    /// their follow ids; the other streams run on one instance.
    pub share: Share,
}
