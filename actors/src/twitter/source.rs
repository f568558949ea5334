//! The Twitter v1.1 source kinds as registered — `twitter.filter`,
//! `twitter.sample`, `twitter.user`, `twitter.site` — and what a validated
//! Twitter source tells `check`, the simulator and the supervisor.

use std::any::Any;
use std::fmt::Write;
use std::sync::Arc;

use super::config;
use super::family::TwitterFamily;
use super::kinds::{DIRECT_MESSAGE, KINDS, TWEET};
use super::request::TwitterEndpoint;
use super::shards::plan_shards;
use super::spec::TwitterSpec;
use crate::delivery::dedup::Dedup;
use crate::error::ConfigError;
use crate::planner::{ShardPlanner, SourceBasics};
use crate::source::{Credential, PlannerContext, Source, SourceContext, SourceHandle, SourceKind};

fn parse_filter(table: serde_json::Value, ctx: &SourceContext) -> Result<Arc<dyn Source>, ConfigError> {
    Ok(Arc::new(config::parse(TwitterEndpoint::Filter, table, ctx)?))
}

fn parse_sample(table: serde_json::Value, ctx: &SourceContext) -> Result<Arc<dyn Source>, ConfigError> {
    Ok(Arc::new(config::parse(TwitterEndpoint::Sample, table, ctx)?))
}

fn parse_user(table: serde_json::Value, ctx: &SourceContext) -> Result<Arc<dyn Source>, ConfigError> {
    Ok(Arc::new(config::parse(TwitterEndpoint::User, table, ctx)?))
}

fn parse_site(table: serde_json::Value, ctx: &SourceContext) -> Result<Arc<dyn Source>, ConfigError> {
    Ok(Arc::new(config::parse(TwitterEndpoint::Site, table, ctx)?))
}

/// `twitter.filter`: `statuses/filter` (follow, track, locations), one standing connection per credential.
pub const FILTER: SourceKind = SourceKind { name: "twitter.filter", kinds: KINDS, parse: parse_filter };
/// `twitter.sample`: `statuses/sample`.
pub const SAMPLE: SourceKind = SourceKind { name: "twitter.sample", kinds: KINDS, parse: parse_sample };
/// `twitter.user`: the user stream.
pub const USER: SourceKind = SourceKind { name: "twitter.user", kinds: KINDS, parse: parse_user };
/// `twitter.site`: site streams, follows packed per connection.
pub const SITE: SourceKind = SourceKind { name: "twitter.site", kinds: KINDS, parse: parse_site };

impl Source for TwitterSpec {
    fn name(&self) -> &str {
        &self.name
    }

    fn share(&self) -> crate::scale::Share {
        self.share.clone()
    }

    fn kind(&self) -> &'static str {
        self.kind
    }

    fn describe(&self) -> String {
        let shards = plan_shards(self).unwrap_or_default();
        let mut out = format!(
            "{} ({} at {}): {} connection(s), {} credential(s)\n",
            self.name,
            self.kind,
            self.base_url,
            shards.len(),
            self.credentials.len()
        );
        for s in &shards {
            let _ = writeln!(
                out,
                "  {}/{}: {} follow ids, {} track terms, {} location boxes",
                self.name,
                s.index,
                s.query.follow.len(),
                s.query.track.len(),
                s.query.locations.len()
            );
        }
        let what = if self.endpoint == TwitterEndpoint::Site { "follow ids" } else { "" };
        if let Some(line) = self.share.describe(what) {
            let _ = writeln!(out, "{line}");
        }
        out
    }

    fn credentials(&self) -> Vec<Credential> {
        self.credentials
            .iter()
            .map(|c| Credential::OAuth1 {
                consumer_key: c.consumer_key.clone(),
                consumer_secret: c.consumer_secret.clone(),
                token: c.token.clone(),
                token_secret: c.token_secret.clone(),
            })
            .collect()
    }

    fn start(&self, ctx: PlannerContext) -> SourceHandle {
        let basics = SourceBasics {
            name: self.name.clone(),
            kind: self.kind,
            kinds: KINDS,
            backoff: self.backoff.clone(),
            stall_timeout: self.stall_timeout,
            max_message_bytes: self.max_message_bytes,
            // Make-before-break handovers and follows moving between site
            // connections overlap two connections.
            dedup: Dedup::Overlaps { unique_ids: &[TWEET, DIRECT_MESSAGE] },
        };
        ShardPlanner::new(basics, TwitterFamily::new(self.clone()), ctx).start_source()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
