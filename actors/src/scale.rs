//! Scale-out: N instances run the same config and split its shard keys
//! (follow ids, DIDs, stream names, or a whole single-connection source) by
//! a stable hash — statically (`[service] instance = "i/N"`, no talking to
//! each other), or by the hash buckets each instance leased in Redis
//! (`[service] coordination`), so a dead instance's keys move to the others.

use std::fmt;
use std::sync::Arc;

use crate::coordination::leases::Leases;

/// This process's place among the instances sharing a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    /// Which one, from 0.
    pub index: u32,
    /// How many.
    pub count: u32,
}

impl Default for Instance {
    fn default() -> Self {
        Instance::ALONE
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Instance {
    /// One instance carries everything.
    pub const ALONE: Instance = Instance { index: 0, count: 1 };

    /// `"i/N"` with `i < N`, `N >= 1`.
    pub fn parse(text: &str) -> Result<Instance, String> {
        let bad = || format!("`{text}` is not \"i/N\" with 0 <= i < N (for example \"0/2\" and \"1/2\")");
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.trim().parse::<u32>().map_err(|_| bad())?, n.trim().parse::<u32>().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Instance { index, count })
    }

    /// Whether several instances share the config.
    pub fn shared(&self) -> bool {
        self.count > 1
    }

    /// The instance that carries `key` of `source`.
    pub fn owner(&self, source: &str, key: &str) -> Instance {
        Instance { index: (stable_hash(source, key) % u64::from(self.count)) as u32, count: self.count }
    }

    /// Whether this instance carries `key` of `source`.
    pub fn owns(&self, source: &str, key: &str) -> bool {
        self.owner(source, key) == *self
    }
}

/// How this process finds its share of the shard keys.
#[derive(Debug, Clone)]
pub enum Placement {
    /// `[service] instance = "i/N"` (or alone: `0/1`).
    Static(Instance),
    /// `[service] coordination`: the buckets leased in Redis.
    Leased(Arc<Leases>),
}

impl Default for Placement {
    fn default() -> Self {
        Placement::Static(Instance::ALONE)
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Static(i) => i.fmt(f),
            Placement::Leased(l) => write!(f, "{} (leases in Redis)", l.me()),
        }
    }
}

impl Placement {
    /// Whether other instances may carry part of a source.
    pub fn shared(&self) -> bool {
        match self {
            Placement::Static(i) => i.shared(),
            Placement::Leased(_) => true,
        }
    }

    /// Whether this process carries `key` of `source`.
    pub fn owns(&self, source: &str, key: &str) -> bool {
        match self {
            Placement::Static(i) => i.owns(source, key),
            Placement::Leased(l) => l.owns(source, key),
        }
    }

    /// Which instance carries `key` of `source` (for a 409's answer).
    pub fn owner(&self, source: &str, key: &str) -> String {
        match self {
            Placement::Static(i) => i.owner(source, key).to_string(),
            Placement::Leased(l) => l.holder(source, key),
        }
    }

    /// Keeps the items of `items` whose key this process carries.
    pub fn keep_owned<T>(&self, source: &str, items: &mut Vec<T>, key: impl Fn(&T) -> String) -> Share {
        let total = items.len();
        if self.shared() {
            items.retain(|item| self.owns(source, &key(item)));
        }
        Share { placement: self.clone(), carried: items.len(), total, runs_here: !items.is_empty() || total == 0 }
    }

    /// A source that is one unit: it runs where its name falls.
    pub fn whole(&self, source: &str) -> Share {
        let runs_here = self.owns(source, "");
        Share { placement: self.clone(), carried: usize::from(runs_here), total: 1, runs_here }
    }

    /// Ids of `ids` this process does not carry, with who does.
    pub fn not_owned(&self, source: &str, ids: &[String]) -> Vec<(String, String)> {
        ids.iter().filter(|id| !self.owns(source, id)).map(|id| (id.clone(), self.owner(source, id))).collect()
    }
}

/// What one instance carries of one source.
#[derive(Debug, Clone, Default)]
pub struct Share {
    /// How this process found its share.
    pub placement: Placement,
    /// Keys it carries.
    pub carried: usize,
    /// Keys in the config.
    pub total: usize,
    /// A source without keys to split (one connection) runs on one instance.
    pub runs_here: bool,
}

impl Share {
    /// `check`'s line about it, when instances share the config.
    pub fn describe(&self, what: &str) -> Option<String> {
        let instance = match &self.placement {
            Placement::Static(i) if !i.shared() => return None,
            Placement::Static(i) => i.to_string(),
            Placement::Leased(l) if !l.started() => {
                return Some(format!(
                    "  coordination: this instance ({}) carries what it leases at run time ({} buckets per source)",
                    l.me(),
                    l.buckets()
                ))
            }
            Placement::Leased(l) => l.me().to_owned(),
        };
        Some(if self.total == 1 && self.carried <= 1 && what.is_empty() {
            if self.runs_here {
                format!("  instance {instance}: runs this source")
            } else {
                format!("  instance {instance}: not here (another instance runs this source)")
            }
        } else {
            format!("  instance {instance}: carries {} of {} {what}", self.carried, self.total)
        })
    }

    /// Whether the share is the whole source (one instance, or a
    /// single-connection source that runs here).
    pub fn whole_source(&self) -> bool {
        self.total <= 1
    }
}

/// FNV-1a over `source`, a separator and `key`: the same on every machine,
/// build and Rust version (std's hashers promise none of that).
pub(crate) fn stable_hash(source: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in source.bytes().chain([0xff]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_parse_and_refuse_nonsense() {
        assert_eq!(Instance::parse("1/3"), Ok(Instance { index: 1, count: 3 }));
        for bad in ["3/3", "0/0", "1", "a/2", "-1/2", ""] {
            assert!(Instance::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_key_has_exactly_one_owner_and_the_split_is_even() {
        let all: Vec<Instance> = (0..3).map(|index| Instance { index, count: 3 }).collect();
        let mut per = [0usize; 3];
        for id in 0..30_000u64 {
            let owners: Vec<&Instance> = all.iter().filter(|i| i.owns("site", &id.to_string())).collect();
            assert_eq!(owners.len(), 1);
            per[owners[0].index as usize] += 1;
        }
        assert!(per.iter().all(|n| (9_000..11_000).contains(n)), "{per:?}");
        // Pinned: the hash must never change, or a rolling upgrade would move shards.
        assert_eq!(stable_hash("site", "12"), 0x9c6c_af82_ba9d_67ac);
        assert!(Instance::ALONE.owns("anything", "at all"));
    }
}
