//! How a simulator is started: listen address, pace, keep-alives, the
//! accepted Twitter credentials and Mastodon tokens, the fault script, the
//! WebSocket and reordering knobs and the Jetstream generator, population,
//! ping and outbox (`SimulatorConfig`).

use std::net::SocketAddr;

use super::scenario::Scenario;

/// The bearer token `SimulatorConfig::default()` accepts.
pub const DEMO_MASTODON_TOKEN: &str = "demo-mastodon-token";

/// How the simulator is started.
#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    /// Where to listen; must be a loopback address (tests use 127.0.0.1:0).
    pub listen: SocketAddr,
    /// Messages per second per connection (for `broadcast` streams: of the
    /// shared generator); 0 = as fast as the socket takes.
    pub rate: u32,
    /// A blank-line keep-alive goes out when nothing else was sent for this
    /// long (Twitter: 30000).
    pub keepalive_ms: u64,
    /// Accepted OAuth credentials; anything else gets 401.
    pub credentials: Vec<SimCredentials>,
    /// The fault script.
    pub scenario: Scenario,
    /// Keep at most this many `SentMessage` records (0 = none): bounded
    /// memory however long the simulator runs.
    pub record_sent: usize,
    /// Accepted Mastodon bearer tokens; anything else gets 401.
    pub mastodon_tokens: Vec<String>,
    /// Mastodon WebSocket: a Ping goes out every this many ms (the first one
    /// interval after the upgrade); a client that has not answered the
    /// previous Ping with a Pong by the next tick is dropped (Mastodon: 30000).
    pub ws_ping_ms: u64,
    /// Mastodon public and hashtag channels (SSE and WebSocket): each
    /// `update` and `status.update` is held back a random 0..=this many ms
    /// while other events go out at once, so they arrive out of order as on
    /// the real server (B.9). 0: never.
    pub mastodon_update_delay_ms: u64,
    /// Jetstream: events per second the live generator appends over the
    /// whole firehose, at random members of the population. 0 (the
    /// default): no generator; tests publish with
    /// `SimHandle::jetstream_publish`.
    pub jetstream_rate: u32,
    /// Jetstream: how many population DIDs (`SimHandle::jetstream_did`) the
    /// generator and `POST /_sim/jetstream/publish` draw from.
    pub jetstream_dids: usize,
    /// Jetstream: a Ping goes out every this many ms once the stream has
    /// started (the real server: 30000); a client that does not answer is
    /// never dropped for it.
    pub jetstream_ping_ms: u64,
    /// Jetstream: events a live subscriber's outbox holds; one that falls
    /// this far behind is dropped without a close frame (the real server:
    /// 50000).
    pub jetstream_outbox: usize,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8900)),
            rate: 200,
            keepalive_ms: 30_000,
            credentials: vec![SimCredentials::demo()],
            scenario: Scenario::default(),
            record_sent: 0,
            mastodon_tokens: vec![DEMO_MASTODON_TOKEN.to_string()],
            ws_ping_ms: 30_000,
            mastodon_update_delay_ms: 0,
            jetstream_rate: 0,
            jetstream_dids: 1_000,
            jetstream_ping_ms: 30_000,
            jetstream_outbox: 50_000,
        }
    }
}

/// One accepted OAuth 1.0a credential set (consumer and access token).
#[derive(Clone)]
pub struct SimCredentials {
    /// The consumer (API) key.
    pub consumer_key: String,
    /// The consumer secret.
    pub consumer_secret: String,
    /// The access token.
    pub token: String,
    /// The access token secret.
    pub token_secret: String,
}

impl std::fmt::Debug for SimCredentials {
    // Secrets never reach logs, not even the demo ones.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCredentials")
            .field("consumer_key", &self.consumer_key)
            .field("consumer_secret", &"<redacted>")
            .field("token", &self.token)
            .field("token_secret", &"<redacted>")
            .finish()
    }
}

impl SimCredentials {
    /// The credentials the shipped config.toml uses.
    pub fn demo() -> Self {
        SimCredentials {
            consumer_key: "demo-consumer-key".into(),
            consumer_secret: "demo-consumer-secret".into(),
            token: "demo-token".into(),
            token_secret: "demo-token-secret".into(),
        }
    }
}
