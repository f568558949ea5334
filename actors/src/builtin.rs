//! The one list of built-in kinds: the source kinds and the sink kinds this
//! crate ships. A binary that adds its own registers them on top.

use crate::sinks::{file, redis, stdout, SinkRegistry};
use crate::source::SourceRegistry;
use crate::{jetstream, mastodon, twitter};

impl SourceRegistry {
    /// The built-in source kinds.
    pub fn builtin() -> Self {
        SourceRegistry::with(vec![
            twitter::source::FILTER,
            twitter::source::SAMPLE,
            twitter::source::USER,
            twitter::source::SITE,
            mastodon::source::MASTODON,
            jetstream::source::JETSTREAM,
        ])
    }
}

impl SinkRegistry {
    /// The built-in sinks: `stdout`, `file` and `redis`.
    pub fn builtin() -> Self {
        SinkRegistry::with(vec![stdout::KIND, file::KIND, redis::KIND])
    }
}
