//! The Mastodon streaming family: SSE and multiplexed WebSocket streams.
//! `source` registers the kind; `config` and `spec` validate a source,
//! `streams` names its streams; `family` packs them into connections and
//! applies changes; `protocol` runs one connection (`decode` reads events,
//! `kinds` is the catalogue); `catch_up` fetches what a gap missed over
//! REST, from the positions `resume` keeps; `discovery` finds the host.

pub mod catch_up;
pub mod config;
pub mod decode;
pub mod discovery;
pub mod family;
pub mod kinds;
pub mod protocol;
pub mod resume;
pub mod source;
pub mod spec;
pub mod streams;
