//! The protocol simulator: Twitter v1.1 streaming endpoints, Mastodon
//! streaming (SSE and WebSocket) and Bluesky Jetstream (`/subscribe`) on
//! loopback with realistic payloads, OAuth and bearer-token checks and
//! scripted faults, for the tests, the benchmarks and `streamherd simulate`
//! (SPEC sections 9 and 12).

// Map, bottom layer first; a module uses only modules of layers below it.
// 1. Leaves: `scenario` (fault scripts), `config` (how a simulator is
//    started), `pace`, `payloads` (the corpus), `wire` (framing, chunk cuts,
//    FIN/RST, the stop and `reset_all` waits), `oauth` (signature checks), `records` (the connection,
//    control-call and sent-message records, `lock`, `push_capped`),
//    `ws_conn` (what every WebSocket endpoint's connection shares: the
//    `WsLink` a task talks through, `End` and the closing handshake, the
//    scripted silence, the body that ends by FIN or RST and the count of
//    such bodies `stop` waits on), `jetstream_events` (Jetstream event
//    JSON, the publish mix, DIDs, TIDs, CIDs) and `jetstream_filter`
//    (subscriber options, NSID/DID syntax, `options_update` parsing).
// 2. State parts: `fanout` (the shared generator of `broadcast` streams),
//    `site` (a live site stream's carried users), `mastodon_ws_log` (the
//    WebSocket connection log), `mastodon_state` (Mastodon tokens, history,
//    events and channels), `jetstream_state` (the Jetstream history, clock,
//    live outboxes, connection log and compressor).
// 3. `shared` (the state every stream shares), then `handle` (`SimHandle`).
// 4. Endpoints: `twitter` (one producer task per stream), `mastodon` (SSE
//    and REST), `mastodon_ws` (WebSocket and instance discovery),
//    `jetstream` (`/subscribe`, the generator and the `/_sim/jetstream/*`
//    hooks).
// 5. `server`: `start`, the routes and the test hooks (`GET
//    /_sim/connections`, `GET /_sim/carried`, `PUT /_sim/scenario`).
// Tests: `tests` (the Twitter endpoints), and next to each endpoint its
// `<endpoint>_tests.rs`; `ws_test_support` holds what the WebSocket
// endpoints' tests share (the simulator on loopback, awc's client `Ws`, raw
// upgrades, polling the logs).
// This file: only the modules and the public API.

mod config;
mod fanout;
mod handle;
mod jetstream;
mod jetstream_events;
mod jetstream_filter;
mod jetstream_state;
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
mod ws_conn;

pub use config::{SimCredentials, SimulatorConfig, DEMO_MASTODON_TOKEN};
pub use handle::SimHandle;
pub use jetstream_events::JetstreamEvent;
pub use jetstream_state::{
    JetstreamConnInfo, OptionsUpdateRecord, MAX_JETSTREAM_HISTORY, MAX_JETSTREAM_RECORDS, MAX_OPTIONS_UPDATES,
};
pub use mastodon_state::{MastodonPost, MAX_MASTODON_HISTORY};
pub use mastodon_ws_log::{MastodonWsInfo, MAX_MASTODON_WS_RECORDS};
pub use records::{ConnectionRecord, ControlCall, SentMessage};
pub use scenario::{AttemptScript, Mix, Scenario, Split};
pub use server::start;
pub use shared::{MAX_CONNECTION_RECORDS, MAX_CONTROL_CALLS};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod ws_test_support;
