//! Requests the control API sends to the planners and the supervisor, and
//! the serialisable answers it turns into JSON.

use actix::prelude::*;
use serde::Serialize;

use crate::mastodon_planner::MastodonPlanner;
use crate::protocol::mastodon_streams::MastodonStream;
use crate::shard_planner::{PlanError, ShardPlanner};

/// Add and remove follow ids of one source (persisted in `state_dir`).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<FollowsChanged, PlanError>")]
pub struct ChangeFollows {
    /// Ids to follow.
    pub add: Vec<u64>,
    /// Ids to stop following.
    pub remove: Vec<u64>,
}

/// The answer to [`ChangeFollows`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FollowsChanged {
    /// Follows after the change.
    pub follows: usize,
    /// Ids that were new.
    pub added: usize,
    /// Ids that were followed before.
    pub removed: usize,
    /// How it is applied: `control_stream`, `restart` (make-before-break), `scheduled` or `none`.
    pub applied: String,
}

/// Predicates re-read from the config and follow file (`POST /update`).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<FollowsChanged, PlanError>")]
pub struct ReplacePredicates {
    /// Follow ids from `follow` + `follow_file` (API changes are applied on top).
    pub follow: Vec<u64>,
    /// Track phrases.
    pub track: Vec<String>,
    /// Location boxes.
    pub locations: Vec<String>,
}

/// Streams re-read from the config for a Mastodon source (`POST /update`).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<FollowsChanged, PlanError>")]
pub struct ReplaceStreams {
    /// Every stream the source should carry.
    pub streams: Vec<MastodonStream>,
}

/// A source's predicates as re-read from the config.
#[derive(Debug, Clone)]
pub enum SourcePredicates {
    /// Follows, track terms and locations of a Twitter source.
    Twitter(ReplacePredicates),
    /// Streams of a Mastodon source.
    Mastodon(ReplaceStreams),
}

/// Repack a site source into the fewest connections (seed 000 `consolidate_streams`).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Result<Consolidated, PlanError>")]
pub struct Consolidate;

/// The answer to [`Consolidate`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Consolidated {
    /// Connections before.
    pub before: usize,
    /// Connections after.
    pub after: usize,
    /// Follows moved between connections.
    pub moved: usize,
}

/// Health of one source's connections (seed 000's monitor).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "SourceHealth")]
pub struct GetSourceHealth;

/// One source's health.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SourceHealth {
    /// Source name.
    pub source: String,
    /// Follows the source should carry.
    pub follows: usize,
    /// Connections that are up or on their way up.
    pub healthy: Vec<String>,
    /// Connections that are stalled or backing off.
    pub unhealthy: Vec<String>,
    /// Connections that failed for good, with the reason.
    pub failed: Vec<(String, String)>,
    /// Site connections carrying fewer than `follow_limit` follows.
    pub non_full: Vec<String>,
}

/// The planner of a source.
#[derive(Debug, Clone)]
pub enum PlannerAddr {
    /// A Twitter source's.
    Twitter(Addr<ShardPlanner>),
    /// A Mastodon source's.
    Mastodon(Addr<MastodonPlanner>),
}

/// The planner of a source, by name (None: no such source).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Option<PlannerAddr>")]
pub struct GetPlanner {
    /// Source name.
    pub source: String,
}

/// Every source's health.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Vec<SourceHealth>")]
pub struct GetHealth;

/// Re-read follow files and config predicates and schedule the changes
/// (`POST /update`, seed 002's `/update`). Answered per source.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Result<Vec<(String, FollowsChanged)>, String>")]
pub struct ReloadPredicates;
