//! The messages every source shares: between a planner and its connections,
//! and what the control API asks a planner, with the serialisable answers.
//! Commands are verbs, notifications past tense, data nouns.

use std::sync::Arc;

use actix::prelude::Message;
use serde::Serialize;

use crate::delivery::ack::BatchAck;
use crate::event::Event;

/// A connection's batch for its planner: the events of one socket read (up
/// to a bound), in arrival order. Answered with how many the overlap window
/// dropped, once every sink has queued the rest; the sinks acknowledge
/// through `ack` once written.
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub struct Batch {
    /// Connection id.
    pub connection: Arc<str>,
    /// The events, in the order they were read.
    pub events: Vec<Event>,
    /// Dropped by every sink once it wrote its share.
    pub ack: Option<BatchAck>,
}

/// Close the connection and do not reconnect; answered once it has ended.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopStream;

/// A source whose every connection failed for good.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct SourceFailed {
    /// Source name.
    pub source: Arc<str>,
}

/// Stop every connection of the source; answered once they have ended.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopSource;

/// Why a planner refuses a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The predicates need more connections than allowed.
    #[error("{field}: {needed} connections needed, but {reason}")]
    TooMany {
        /// The config field that is too long.
        field: &'static str,
        /// Connections it would take.
        needed: usize,
        /// The limit that stops it.
        reason: String,
    },
    /// A filter stream needs at least one predicate.
    #[error("follow/track/locations: a filter stream needs at least one predicate")]
    NoPredicate,
    /// The operation does not apply to this kind of source.
    #[error("{0}")]
    NotApplicable(String),
    /// A value in the request is not valid for this source (a malformed id).
    #[error("{0}")]
    BadValue(String),
    /// Another instance carries these ids (`[service] instance`); send the
    /// change there. Nothing was applied.
    #[error("{} id(s) belong to other instances: {}", .0.len(), .0.iter().take(20).map(|(id, i)| format!("{id} on {i}")).collect::<Vec<_>>().join(", "))]
    NotOwned(Vec<(String, String)>),
    /// Persisting the change failed; nothing was applied.
    #[error("cannot persist follows in state_dir: {0}")]
    Persist(String),
    /// The coordination Redis (`[service] coordination`) did not answer;
    /// nothing was applied.
    #[error("the coordination Redis did not answer: {0}")]
    Coordination(String),
}

/// Add and remove follows of one source (persisted in `state_dir`). Ids
/// travel as the text the client sent (a number is its decimal digits); the
/// source's kind parses them, since what an id looks like is the kind's.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<FollowsChanged, PlanError>")]
pub struct ChangeFollows {
    /// Ids to follow.
    pub add: Vec<String>,
    /// Ids to stop following.
    pub remove: Vec<String>,
}

/// The answer to [`ChangeFollows`] and to a reload.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FollowsChanged {
    /// Follows (or streams) after the change.
    pub follows: usize,
    /// Ids that were new.
    pub added: usize,
    /// Ids that were followed before.
    pub removed: usize,
    /// How it is applied: `control_stream`, `restart` (make-before-break),
    /// `subscriptions`, `scheduled` or `none`.
    pub applied: String,
}

/// Repack a source into the fewest connections (seed 000 `consolidate_streams`).
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
    /// Follows (or streams) the source should carry.
    pub follows: usize,
    /// Connections that are up or on their way up.
    pub healthy: Vec<String>,
    /// Connections that are stalled or backing off.
    pub unhealthy: Vec<String>,
    /// Connections that failed for good (or refusals the server sent), with the reason.
    pub failed: Vec<(String, String)>,
    /// Connections carrying less than they could.
    pub non_full: Vec<String>,
}
