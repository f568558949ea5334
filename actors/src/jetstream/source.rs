//! The `bluesky.jetstream` source kind as registered, and what a validated
//! Jetstream source tells `check` (its shard plan) and the supervisor.

use std::any::Any;
use std::fmt::Write;
use std::sync::Arc;

use super::config::{self, JetstreamSpec};
use super::family::JetstreamFamily;
use super::kinds::KINDS;
use crate::delivery::dedup::Dedup;
use crate::error::ConfigError;
use crate::packing::{solve_site, Assignment};
use crate::planner::{ShardPlanner, SourceBasics};
use crate::source::{Credential, PlannerContext, Source, SourceContext, SourceHandle, SourceKind};

fn parse(table: serde_json::Value, ctx: &SourceContext) -> Result<Arc<dyn Source>, ConfigError> {
    Ok(Arc::new(config::parse(table, ctx)?))
}

/// `bluesky.jetstream`: Bluesky's firehose as JSON over WebSocket, sharded by DID, resumed by cursor.
pub const JETSTREAM: SourceKind = SourceKind { name: "bluesky.jetstream", kinds: KINDS, parse };

impl Source for JetstreamSpec {
    fn name(&self) -> &str {
        &self.name
    }

    fn share(&self) -> crate::scale::Share {
        self.share.clone()
    }

    fn kind(&self) -> &'static str {
        JETSTREAM.name
    }

    fn describe(&self) -> String {
        let collections =
            if self.collections.is_empty() { "every collection".to_owned() } else { self.collections.join(", ") };
        let hosts = match self.hosts.as_slice() {
            [one] => one.clone(),
            [first, rest @ ..] => {
                format!("{first}, failing over to {} after {} failed attempts", rest.join(", "), self.failover_after)
            }
            [] => String::new(),
        };
        let mut out = String::new();
        if self.dids.is_empty() {
            let _ =
                writeln!(out, "{} (bluesky.jetstream at {hosts}): every DID on 1 connection, {collections}", self.name);
        } else {
            let desired = self.dids.iter().cloned().collect();
            let plan = solve_site(&Assignment::new(), &desired, self.dids_per_connection);
            let _ = writeln!(
                out,
                "{} (bluesky.jetstream at {hosts}): {} DIDs in {} connection(s) of up to {}, {collections}",
                self.name,
                self.dids.len(),
                plan.open.len(),
                self.dids_per_connection
            );
            for (n, ids) in plan.open.iter().enumerate() {
                let first = ids.first().map_or("", String::as_str);
                let last = ids.last().map_or("", String::as_str);
                let _ = writeln!(out, "  connection {n}: {} DIDs ({first} .. {last})", ids.len());
            }
        }
        let _ = writeln!(
            out,
            "  compress {}, resume from the cursor in state_dir minus {} s",
            if self.compress { "on (zstd, Jetstream's dictionary)" } else { "off" },
            self.cursor_rewind.as_secs_f64()
        );
        if let Some(line) = self.share.describe(if self.every_did { "" } else { "DIDs" }) {
            let _ = writeln!(out, "{line}");
        }
        if self.max_message_size_bytes > 0 {
            let _ = writeln!(
                out,
                "  warning: the server skips events over {} bytes without a trace; they cannot be recovered",
                self.max_message_size_bytes
            );
        }
        out
    }

    fn credentials(&self) -> Vec<Credential> {
        Vec::new()
    }

    fn start(&self, ctx: PlannerContext) -> SourceHandle {
        let basics = SourceBasics {
            name: self.name.clone(),
            kind: JETSTREAM.name,
            kinds: KINDS,
            backoff: self.backoff.clone(),
            stall_timeout: self.stall_timeout,
            max_message_bytes: self.max_message_bytes,
            // One instance sends one event as the same bytes on every
            // connection, so a DID moving between connections is compared
            // by payload. Replays after a reconnect are dropped per connection.
            dedup: Dedup::Overlaps { unique_ids: &[] },
        };
        ShardPlanner::new(basics, JetstreamFamily::new(self.clone()), ctx).start_source()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
