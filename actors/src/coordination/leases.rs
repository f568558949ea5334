//! What this process holds: the shard buckets of each source whose lease it
//! has in Redis, as the lease thread last saw them. Source configs are cut
//! to these buckets when they are (re)built, so a source carries exactly
//! the shard keys whose bucket this instance leased.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use chrono::{DateTime, Utc};

/// A bucket whose previous owner stopped renewing it (or let it go), as the
/// instance that took it over found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakeOver {
    /// Source name.
    pub source: String,
    /// The bucket.
    pub bucket: u32,
    /// The instance that held it before.
    pub previous: String,
    /// When the previous owner last renewed it (or released it).
    pub from: DateTime<Utc>,
    /// When this instance took it.
    pub to: DateTime<Utc>,
    /// Released on a stop or a rebalance, rather than left to expire.
    pub released: bool,
}

#[derive(Debug, Default)]
struct View {
    /// The lease thread has run at least once: an empty view means "holds nothing".
    started: bool,
    held: BTreeMap<String, BTreeSet<u32>>,
    /// Who holds the buckets this instance does not, by (source, bucket).
    others: BTreeMap<(String, u32), String>,
}

/// The shard buckets this process holds, shared by the config loader (which
/// cuts sources to them) and the lease thread (which changes them).
pub struct Leases {
    me: String,
    url: String,
    buckets: u32,
    view: RwLock<View>,
}

impl std::fmt::Debug for Leases {
    /// The URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("me", &self.me)
            .field("url", &super::remote::redacted(&self.url))
            .field("buckets", &self.buckets)
            .field("view", &self.view)
            .finish()
    }
}

static PROCESS: OnceLock<Arc<Leases>> = OnceLock::new();

impl Leases {
    /// A view of the leases in the Redis at `url` that holds nothing yet.
    pub fn new(me: String, url: &str, buckets: u32) -> Leases {
        Leases { me, url: url.to_owned(), buckets: buckets.max(1), view: RwLock::new(View::default()) }
    }

    /// The process's view (one coordination per process): created by the
    /// first config that names a coordination, shared by every later load
    /// (a reload cannot move a running process to another Redis).
    pub fn process(url: &str, buckets: u32) -> Arc<Leases> {
        PROCESS.get_or_init(|| Arc::new(Leases::new(process_name(), url, buckets))).clone()
    }

    /// The coordination Redis, also where positions are kept.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// This instance's name in Redis (`host:pid`).
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Buckets per source.
    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    /// The bucket of `key` of `source`.
    pub fn bucket(&self, source: &str, key: &str) -> u32 {
        (crate::scale::stable_hash(source, key) % u64::from(self.buckets)) as u32
    }

    /// Whether the lease thread has looked at Redis yet.
    pub fn started(&self) -> bool {
        self.view.read().unwrap_or_else(PoisonError::into_inner).started
    }

    /// Whether this instance holds the bucket of `key` of `source`.
    pub fn owns(&self, source: &str, key: &str) -> bool {
        let bucket = self.bucket(source, key);
        let view = self.view.read().unwrap_or_else(PoisonError::into_inner);
        view.held.get(source).is_some_and(|b| b.contains(&bucket))
    }

    /// Who holds the bucket of `key` of `source`, as last seen.
    pub fn holder(&self, source: &str, key: &str) -> String {
        let bucket = self.bucket(source, key);
        let view = self.view.read().unwrap_or_else(PoisonError::into_inner);
        if view.held.get(source).is_some_and(|b| b.contains(&bucket)) {
            return self.me.clone();
        }
        match view.others.get(&(source.to_owned(), bucket)) {
            Some(holder) => holder.clone(),
            None => format!("no instance (lease {bucket} of `{source}` is free)"),
        }
    }

    /// The buckets held of `source`.
    pub fn held(&self, source: &str) -> BTreeSet<u32> {
        let view = self.view.read().unwrap_or_else(PoisonError::into_inner);
        view.held.get(source).cloned().unwrap_or_default()
    }

    /// Replaces the view (the lease thread, after a round).
    pub fn set(&self, held: BTreeMap<String, BTreeSet<u32>>, others: BTreeMap<(String, u32), String>) {
        let mut view = self.view.write().unwrap_or_else(PoisonError::into_inner);
        *view = View { started: true, held, others };
    }
}

/// `host:pid`: unique among live processes, readable in logs and /streams.
fn process_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "streamherd".to_owned());
    format!("{host}:{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_owned_only_while_its_bucket_is_held() {
        let leases = Leases::new("a:1".into(), "redis://127.0.0.1:1", 8);
        let b = leases.bucket("fedi", "hashtag:rust");
        assert!(b < 8);
        assert!(!leases.owns("fedi", "hashtag:rust") && !leases.started());
        leases.set(
            [("fedi".to_owned(), [b].into())].into(),
            [(("fedi".to_owned(), (b + 1) % 8), "b:2".to_owned())].into(),
        );
        assert!(leases.owns("fedi", "hashtag:rust") && leases.started());
        assert!(!leases.owns("other", "hashtag:rust"));
        assert_eq!(leases.holder("fedi", "hashtag:rust"), "a:1");
        leases.set(BTreeMap::new(), [(("fedi".to_owned(), b), "b:2".to_owned())].into());
        assert_eq!(leases.holder("fedi", "hashtag:rust"), "b:2");
    }
}
