//! The `mastodon` source kind as registered, and what a validated Mastodon
//! source tells `check`, `probe`, the simulator and the supervisor.

use std::any::Any;
use std::fmt::Write;
use std::sync::Arc;

use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt;

use super::config;
use super::discovery::{discover_streaming_url, streaming_health};
use super::family::MastodonFamily;
use super::kinds::KINDS;
use super::spec::MastodonSpec;
use super::streams::MastodonStream;
use crate::delivery::dedup::Dedup;
use crate::error::ConfigError;
use crate::planner::{ShardPlanner, SourceBasics};
use crate::source::{Credential, PlannerContext, Source, SourceContext, SourceHandle, SourceKind};

fn parse(table: serde_json::Value, ctx: &SourceContext) -> Result<Arc<dyn Source>, ConfigError> {
    Ok(Arc::new(config::parse(table, ctx)?))
}

/// `mastodon`: streams over SSE or multiplexed WebSocket, caught up over REST after any gap.
pub const MASTODON: SourceKind = SourceKind { name: "mastodon", kinds: KINDS, parse };

impl Source for MastodonSpec {
    fn name(&self) -> &str {
        &self.name
    }

    fn share(&self) -> crate::scale::Share {
        self.share.clone()
    }

    fn kind(&self) -> &'static str {
        MASTODON.name
    }

    fn describe(&self) -> String {
        let per = self.per_connection();
        let names: Vec<String> = self.streams.iter().map(MastodonStream::config_name).collect();
        let mut out = format!(
            "{} (mastodon, {} at {}{}): {} stream(s) in {} connection(s), catch-up {}\n",
            self.name,
            self.transport.as_str(),
            self.instance_url,
            self.streaming_url
                .as_ref()
                .map(|u| format!(", streaming {u}"))
                .unwrap_or_else(|| ", streaming host discovered".into()),
            self.streams.len(),
            self.streams.len().div_ceil(per),
            if self.catch_up.is_some() { "on" } else { "off" },
        );
        for (n, chunk) in names.chunks(per).enumerate() {
            let _ = writeln!(out, "  connection {n}: {}", chunk.join(", "));
        }
        if let Some(line) = self.share.describe("streams") {
            let _ = writeln!(out, "{line}");
        }
        out
    }

    fn credentials(&self) -> Vec<Credential> {
        vec![Credential::Bearer(self.token.expose().to_owned())]
    }

    fn start(&self, ctx: PlannerContext) -> SourceHandle {
        let basics = SourceBasics {
            name: self.name.clone(),
            kind: MASTODON.name,
            kinds: KINDS,
            backoff: self.backoff.clone(),
            stall_timeout: self.stall_timeout,
            max_message_bytes: self.max_message_bytes,
            // Catch-up de-duplicates against the live stream per stream.
            dedup: Dedup::Never,
        };
        ShardPlanner::new(basics, MastodonFamily::new(self.clone()), ctx).start_source()
    }

    /// `GET /api/v1/streaming/health` on the streaming host (discovered when not configured).
    fn probe_check(&self) -> Option<LocalBoxFuture<'static, Result<String, String>>> {
        let spec = self.clone();
        Some(
            async move {
                let streaming = match &spec.streaming_url {
                    Some(u) => u.clone(),
                    None => discover_streaming_url(&spec.instance_url, &spec.token)
                        .await
                        .unwrap_or_else(|_| spec.instance_url.clone()),
                };
                streaming_health(&streaming).await
            }
            .boxed_local(),
        )
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
