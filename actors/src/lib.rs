//! streamherd's actors and everything they move. The actor graph: the
//! `StreamSupervisor` starts each configured source through its
//! `SourceHandle`; a source is one `ShardPlanner` (generic over its
//! family's shard logic) with a `BackoffActor`; the planner starts one
//! supervised `StreamActor` per connection (generic over the family's
//! protocol), and each connection hands what it parsed to the sink actors'
//! bounded queues.
//!
//! Map: `event` (what flows), `messages` (what actors say), `source` (the
//! source registry and handle), `planner`, `supervisor`, `connection` (one
//! connection and its transports), `delivery` (hand-off, overlap window),
//! `sinks`, `packing` and `follow_delta` (what families share: ids into
//! connections, follow changes kept in state_dir), `scale` and
//! `coordination` (instances sharing the shards), and one folder per family
//! (`twitter`, `mastodon`, `jetstream`); `builtin` lists the kinds this
//! crate ships.
#![warn(missing_docs)]

pub mod builtin;
pub mod connection;
pub mod coordination;
pub mod delivery;
pub mod error;
pub mod event;
pub mod follow_delta;
pub mod jetstream;
pub mod mastodon;
pub mod messages;
pub mod metrics;
pub mod packing;
pub mod persist;
pub mod planner;
pub mod scale;
pub mod scan;
pub mod settings;
pub mod sinks;
pub mod source;
pub mod supervisor;
pub mod twitter;
