//! streamherd's actor graph: `StreamSupervisor` starts one `ShardPlanner` and
//! `BackoffActor` per source, planners start supervised `StreamActor`s, and
//! events flow from each `StreamActor` straight into the sinks' bounded queues.
#![warn(missing_docs)]

pub mod backoff;
pub mod catch_up;
pub mod control_messages;
pub mod control_stream;
pub mod dedup;
pub mod error;
pub mod mastodon_actor;
pub mod mastodon_planner;
pub mod messages;
pub mod metrics;
pub mod persist;
pub mod plan;
pub mod protocol;
pub mod resume;
pub mod shard_planner;
pub mod sink_actor;
pub mod sinks;
pub mod stats;
pub mod stream_actor;
pub mod supervised;
pub mod supervisor;
