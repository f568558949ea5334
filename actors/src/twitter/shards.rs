//! How a Twitter source splits into connections (pure: the same spec gives
//! the same plan): filter follows, track phrases and boxes across the
//! credentials, one standing connection each; site follows packed per
//! connection; sample and user streams one connection.

use super::request::{TwitterEndpoint, TwitterQuery};
use super::spec::TwitterSpec;
use crate::messages::PlanError;

/// Per-connection limits of the public filter endpoint (protocols.md A.2).
pub const FILTER_MAX_FOLLOWS: usize = 5000;
/// Track phrases per filter connection.
pub const FILTER_MAX_TRACK: usize = 400;
/// Location boxes per filter connection.
pub const FILTER_MAX_LOCATIONS: usize = 25;
/// Ids a site-stream connect request may carry.
pub const SITE_MAX_CONNECT_FOLLOWS: usize = 100;

/// One connection's share of the source's predicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedShard {
    /// 0-based index; the connection id is `source/index`.
    pub index: usize,
    /// Which credential signs it.
    pub credential: usize,
    /// Its predicates.
    pub query: TwitterQuery,
}

fn chunks_needed(len: usize, per: usize) -> usize {
    len.div_ceil(per.max(1))
}

/// Splits a source into shards. Pure: the same spec gives the same plan.
pub fn plan_shards(spec: &TwitterSpec) -> Result<Vec<PlannedShard>, PlanError> {
    let q = &spec.query;
    match spec.endpoint {
        TwitterEndpoint::Sample | TwitterEndpoint::User => {
            Ok(vec![PlannedShard { index: 0, credential: 0, query: q.clone() }])
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
                .map(|i| PlannedShard {
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
                .map(|i| PlannedShard {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::connection::backoff::BackoffConfig;
    use crate::twitter::request::OAuthCredentials;

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

    fn spec(endpoint: TwitterEndpoint, follows: usize, n_creds: usize, limit: usize) -> TwitterSpec {
        TwitterSpec {
            name: "s".into(),
            kind: "twitter.filter",
            endpoint,
            base_url: "http://127.0.0.1:1".into(),
            credentials: creds(n_creds),
            query: TwitterQuery { follow: (1..=follows as u64).collect(), ..Default::default() },
            follow_limit: limit,
            max_connections: 50,
            stall_timeout: Duration::from_secs(90),
            max_message_bytes: 1 << 20,
            backoff: BackoffConfig::default(),
            update_min: Duration::from_secs(120),
            update_max: Duration::from_secs(600),
            share: crate::scale::Share::default(),
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
