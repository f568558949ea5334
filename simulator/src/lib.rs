//! The protocol simulator: Twitter v1.1 streaming endpoints and Mastodon
//! streaming (SSE and WebSocket) on loopback with realistic payloads, OAuth
//! and bearer-token checks and scripted faults, for the tests, the benchmarks
//! and `streamherd simulate` (SPEC section 9).

// Map, bottom layer first; a module uses only modules of layers below it.
// 1. Leaves: `scenario` (fault scripts), `config` (how a simulator is
//    started), `pace`, `payloads` (the corpus), `wire` (framing, chunk cuts,
//    FIN/RST), `oauth` (signature checks), `records` (the connection,
//    control-call and sent-message records, `lock`).
// 2. State parts: `fanout` (the shared generator of `broadcast` streams),
//    `site` (a live site stream's carried users), `mastodon_ws_log` (the
//    WebSocket connection log), `mastodon_state` (Mastodon tokens, history,
//    events and channels).
// 3. `shared` (the state every stream shares), then `handle` (`SimHandle`).
// 4. Endpoints: `twitter` (one producer task per stream), `mastodon` (SSE
//    and REST), `mastodon_ws` (WebSocket and instance discovery).
// 5. `server`: `start`, the routes and the test hooks (`GET
//    /_sim/connections`, `GET /_sim/carried`, `PUT /_sim/scenario`).
// This file: only the modules and the public API.

mod config;
mod fanout;
mod handle;
mod mastodon;
mod mastodon_state;
mod mastodon_ws;
mod mastodon_ws_log;
mod oauth;
mod pace;
pub mod payloads;
mod records;
mod scenario;
mod server;
mod shared;
mod site;
mod twitter;
mod wire;

pub use config::{SimCredentials, SimulatorConfig, DEMO_MASTODON_TOKEN};
pub use handle::SimHandle;
pub use mastodon_state::{MastodonPost, MAX_MASTODON_HISTORY};
pub use mastodon_ws_log::{MastodonWsInfo, MAX_MASTODON_WS_RECORDS};
pub use records::{ConnectionRecord, ControlCall, SentMessage};
pub use scenario::{AttemptScript, Mix, Scenario, Split};
pub use server::start;
pub use shared::{MAX_CONNECTION_RECORDS, MAX_CONTROL_CALLS};

#[cfg(test)]
mod tests;
