//! The `bluesky.jetstream` family: Bluesky's JSON firehose over WebSocket
//! (`/subscribe`), sharded by DID, resumed from a time cursor across
//! reconnects, host failovers and restarts, with the replayed overlap
//! written once.

// Map: `kinds` (the catalogue), `syntax` (DIDs and NSIDs as the server
// checks them), `config` (the source table into a `JetstreamSpec`),
// `decode` (one event: kind, id, cursor time, overlap key; zstd frames),
// `cursor` (positions in state_dir), `protocol` (one connection),
// `family` (shards for the ShardPlanner), `source` (the registration).

pub mod config;
pub mod cursor;
pub mod decode;
pub mod family;
pub mod kinds;
pub mod protocol;
pub mod source;
pub mod syntax;
