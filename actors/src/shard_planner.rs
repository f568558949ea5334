//! One `ShardPlanner` per source: owns the source's predicates, splits them
//! into shards (one connection each) with the pure [`plan_shards`], starts a
//! supervised `StreamActor` per shard and follows their lifecycle.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::backoff::{BackoffActor, BackoffConfig};
use crate::messages::{StopStream, StreamConnected, StreamDisconnected, StreamFailed};
use crate::metrics::Metrics;
use crate::protocol::framing::Delimiting;
use crate::protocol::request::{twitter_request, OAuthCredentials, TwitterEndpoint, TwitterQuery};
use crate::sink_actor::SinkHandle;
use crate::stats::{ConnectionStats, SourceCounters, StatsRegistry};
use crate::stream_actor::{ConnectionSpec, LifecycleRecipients, StreamActor};

/// Per-connection limits of the public filter endpoint (protocols.md A.2).
pub const FILTER_MAX_FOLLOWS: usize = 5000;
/// Track phrases per filter connection.
pub const FILTER_MAX_TRACK: usize = 400;
/// Location boxes per filter connection.
pub const FILTER_MAX_LOCATIONS: usize = 25;
/// Ids a site-stream connect request may carry.
pub const SITE_MAX_CONNECT_FOLLOWS: usize = 100;

/// A validated source, as the planner needs it.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// Source name.
    pub name: Arc<str>,
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
}

/// One connection's share of the source's predicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// 0-based index; the connection id is `source/index`.
    pub index: usize,
    /// Which credential signs it.
    pub credential: usize,
    /// Its predicates.
    pub query: TwitterQuery,
}

/// Why a source cannot be planned.
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
}

fn chunks_needed(len: usize, per: usize) -> usize {
    len.div_ceil(per.max(1))
}

/// Splits a source into shards. Pure: the same spec gives the same plan.
pub fn plan_shards(spec: &SourceSpec) -> Result<Vec<Shard>, PlanError> {
    let q = &spec.query;
    match spec.endpoint {
        TwitterEndpoint::Sample | TwitterEndpoint::User => {
            Ok(vec![Shard { index: 0, credential: 0, query: q.clone() }])
        }
        TwitterEndpoint::Filter => {
            if q.follow.is_empty() && q.track.is_empty() && q.locations.is_empty() {
                return Err(PlanError::NoPredicate);
            }
            let per_follow = spec.follow_limit.clamp(1, FILTER_MAX_FOLLOWS);
            let needs = [
                ("follow", chunks_needed(q.follow.len(), per_follow)),
                ("track", chunks_needed(q.track.len(), FILTER_MAX_TRACK)),
                ("locations", chunks_needed(q.locations.len(), FILTER_MAX_LOCATIONS)),
            ];
            let shards = needs.iter().map(|n| n.1).max().unwrap_or(1).max(1);
            let creds = spec.credentials.len();
            for (field, needed) in needs {
                if needed > creds {
                    return Err(PlanError::TooMany {
                        field,
                        needed,
                        reason: format!(
                            "twitter.filter allows one standing connection per credential and {creds} credential(s) are configured"
                        ),
                    });
                }
                if needed > spec.max_connections {
                    return Err(PlanError::TooMany {
                        field,
                        needed,
                        reason: format!("max_connections is {}", spec.max_connections),
                    });
                }
            }
            Ok((0..shards)
                .map(|i| Shard {
                    index: i,
                    credential: i,
                    query: TwitterQuery {
                        follow: nth_chunk(&q.follow, per_follow, i),
                        track: nth_chunk(&q.track, FILTER_MAX_TRACK, i),
                        locations: nth_chunk(&q.locations, FILTER_MAX_LOCATIONS, i),
                        ..q.clone()
                    },
                })
                .collect())
        }
        TwitterEndpoint::Site => {
            // Until control streams carry the rest, a connection holds what its
            // connect request can name.
            let per = spec.follow_limit.clamp(1, SITE_MAX_CONNECT_FOLLOWS);
            let needed = chunks_needed(q.follow.len(), per).max(1);
            if needed > spec.max_connections {
                return Err(PlanError::TooMany {
                    field: "follow",
                    needed,
                    reason: format!("max_connections is {}", spec.max_connections),
                });
            }
            Ok((0..needed)
                .map(|i| Shard {
                    index: i,
                    credential: 0,
                    query: TwitterQuery { follow: nth_chunk(&q.follow, per, i), ..q.clone() },
                })
                .collect())
        }
    }
}

fn nth_chunk<T: Clone>(items: &[T], per: usize, n: usize) -> Vec<T> {
    items.chunks(per.max(1)).nth(n).map(<[T]>::to_vec).unwrap_or_default()
}

/// A source whose every connection failed for good.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct SourceFailed {
    /// Source name.
    pub source: Arc<str>,
}

/// Stop every connection of the source; answered once they are told.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopSource;

/// What the planner needs from the process.
#[derive(Clone)]
pub struct PlannerContext {
    /// Sinks every event is offered to.
    pub sinks: Arc<[SinkHandle]>,
    /// Metric families.
    pub metrics: Metrics,
    /// Where connection stats are listed for reporting.
    pub stats: StatsRegistry,
    /// Threads the stream actors are spread over.
    pub arbiters: Vec<ArbiterHandle>,
    /// Told when the source failed for good.
    pub on_failed: Recipient<SourceFailed>,
}

struct Connection {
    addr: Addr<StreamActor>,
    failed: bool,
}

/// Owns one source's shards and their connections.
pub struct ShardPlanner {
    spec: SourceSpec,
    ctx: PlannerContext,
    connections: HashMap<Arc<str>, Connection>,
    stopping: bool,
}

impl ShardPlanner {
    /// A planner for a validated source.
    pub fn new(spec: SourceSpec, ctx: PlannerContext) -> Self {
        ShardPlanner { spec, ctx, connections: HashMap::new(), stopping: false }
    }
}

impl Actor for ShardPlanner {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let shards = match plan_shards(&self.spec) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(source = %self.spec.name, error = %e, "source cannot be planned");
                self.ctx.on_failed.do_send(SourceFailed { source: self.spec.name.clone() });
                return;
            }
        };
        let backoff = BackoffActor::new(self.spec.backoff.clone()).start();
        let counters = SourceCounters::new(&self.ctx.metrics, &self.spec.name);
        let me = ctx.address();
        let lifecycle = LifecycleRecipients {
            connected: me.clone().recipient(),
            disconnected: me.clone().recipient(),
            failed: me.recipient(),
        };
        let delimiting = if self.spec.query.delimited { Delimiting::Length } else { Delimiting::Lines };
        for shard in shards {
            let id: Arc<str> = format!("{}/{}", self.spec.name, shard.index).into();
            let Some(credentials) = self.spec.credentials.get(shard.credential).cloned() else {
                tracing::error!(connection = %id, "no credential for this shard");
                continue;
            };
            let spec = ConnectionSpec {
                id: id.clone(),
                source: self.spec.name.clone(),
                request: twitter_request(self.spec.endpoint, &self.spec.base_url, &shard.query),
                credentials,
                delimiting,
                stall_timeout: self.spec.stall_timeout,
                reset_after: self.spec.backoff.reset_after,
                max_message_bytes: self.spec.max_message_bytes,
            };
            let carries = describe(&shard.query);
            let stats = ConnectionStats::new(id.clone(), self.spec.name.clone(), carries, counters.clone());
            self.ctx.stats.add(stats.clone());
            let sinks = self.ctx.sinks.clone();
            let backoff = backoff.clone();
            let lifecycle = lifecycle.clone();
            let addr = match self.ctx.arbiters.get(shard.index % self.ctx.arbiters.len().max(1)) {
                Some(arbiter) => actix::Supervisor::start_in_arbiter(arbiter, move |_| {
                    StreamActor::new(spec, backoff, sinks, lifecycle, stats)
                }),
                None => actix::Supervisor::start(move |_| StreamActor::new(spec, backoff, sinks, lifecycle, stats)),
            };
            self.connections.insert(id, Connection { addr, failed: false });
        }
    }
}

fn describe(q: &TwitterQuery) -> String {
    let mut parts = Vec::new();
    if !q.follow.is_empty() {
        parts.push(format!("{} follows", q.follow.len()));
    }
    if !q.track.is_empty() {
        parts.push(format!("{} track terms", q.track.len()));
    }
    if !q.locations.is_empty() {
        parts.push(format!("{} location boxes", q.locations.len()));
    }
    if parts.is_empty() {
        "everything the stream sends".into()
    } else {
        parts.join(", ")
    }
}

impl Handler<StreamConnected> for ShardPlanner {
    type Result = ();
    fn handle(&mut self, msg: StreamConnected, _: &mut Context<Self>) {
        tracing::debug!(connection = %msg.connection, "stream connected");
    }
}

impl Handler<StreamDisconnected> for ShardPlanner {
    type Result = ();
    fn handle(&mut self, msg: StreamDisconnected, _: &mut Context<Self>) {
        tracing::debug!(connection = %msg.connection, cause = %msg.cause, "stream disconnected");
    }
}

impl Handler<StreamFailed> for ShardPlanner {
    type Result = ();
    fn handle(&mut self, msg: StreamFailed, _: &mut Context<Self>) {
        if let Some(c) = self.connections.get_mut(&msg.connection) {
            c.failed = true;
        }
        if !self.stopping && !self.connections.is_empty() && self.connections.values().all(|c| c.failed) {
            tracing::error!(source = %self.spec.name, "every connection of the source failed for good");
            self.ctx.on_failed.do_send(SourceFailed { source: self.spec.name.clone() });
        }
    }
}

impl Handler<StopSource> for ShardPlanner {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, _: StopSource, _: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        let addrs: Vec<_> = self.connections.drain().map(|(_, c)| c.addr).collect();
        Box::pin(async move {
            for addr in addrs {
                let _ = addr.send(StopStream).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(n: usize) -> Vec<OAuthCredentials> {
        (0..n)
            .map(|i| OAuthCredentials {
                consumer_key: format!("k{i}"),
                consumer_secret: "s".into(),
                token: "t".into(),
                token_secret: "ts".into(),
            })
            .collect()
    }

    fn spec(endpoint: TwitterEndpoint, follows: usize, n_creds: usize, limit: usize) -> SourceSpec {
        SourceSpec {
            name: "s".into(),
            endpoint,
            base_url: "http://127.0.0.1:1".into(),
            credentials: creds(n_creds),
            query: TwitterQuery { follow: (1..=follows as u64).collect(), ..Default::default() },
            follow_limit: limit,
            max_connections: 50,
            stall_timeout: Duration::from_secs(90),
            max_message_bytes: 1 << 20,
            backoff: BackoffConfig::default(),
        }
    }

    #[test]
    fn filter_follows_are_sharded_across_credentials() {
        let plan = plan_shards(&spec(TwitterEndpoint::Filter, 12_000, 3, 5000)).unwrap();
        assert_eq!(plan.iter().map(|s| s.query.follow.len()).collect::<Vec<_>>(), vec![5000, 5000, 2000]);
        assert_eq!(plan.iter().map(|s| s.credential).collect::<Vec<_>>(), vec![0, 1, 2]);
        let all: Vec<u64> = plan.iter().flat_map(|s| s.query.follow.clone()).collect();
        assert_eq!(all, (1..=12_000).collect::<Vec<u64>>());
    }

    #[test]
    fn filter_needs_a_credential_per_connection() {
        let err = plan_shards(&spec(TwitterEndpoint::Filter, 5001, 1, 5000)).unwrap_err();
        assert!(matches!(err, PlanError::TooMany { field: "follow", needed: 2, .. }));
        assert_eq!(plan_shards(&spec(TwitterEndpoint::Filter, 0, 1, 5000)).unwrap_err(), PlanError::NoPredicate);
    }

    #[test]
    fn site_follows_are_packed_per_connection() {
        let plan = plan_shards(&spec(TwitterEndpoint::Site, 250, 1, 100)).unwrap();
        assert_eq!(plan.iter().map(|s| s.query.follow.len()).collect::<Vec<_>>(), vec![100, 100, 50]);
        let mut s = spec(TwitterEndpoint::Site, 6000, 1, 100);
        s.max_connections = 50;
        assert!(matches!(plan_shards(&s), Err(PlanError::TooMany { needed: 60, .. })));
    }

    #[test]
    fn sample_is_one_connection() {
        assert_eq!(plan_shards(&spec(TwitterEndpoint::Sample, 0, 1, 5000)).unwrap().len(), 1);
    }
}
