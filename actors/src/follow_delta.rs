//! Follow changes made through the control API (user ids, DIDs), kept in
//! `state_dir/<source>/follows.json` — or, when instances share shards
//! through Redis, in two Redis sets every instance reads — and applied on
//! top of the config's list at every start (and every take-over).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::coordination::remote::RedisLink;
use crate::scale::Placement;

/// Follow changes made through the API, applied on top of the config's list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(bound(deserialize = "T: Ord + serde::de::DeserializeOwned", serialize = "T: serde::Serialize"))]
pub struct FollowDelta<T: Ord = u64> {
    /// Ids added.
    pub added: BTreeSet<T>,
    /// Ids removed.
    pub removed: BTreeSet<T>,
}

impl<T: Ord> Default for FollowDelta<T> {
    fn default() -> Self {
        FollowDelta { added: BTreeSet::new(), removed: BTreeSet::new() }
    }
}

impl<T: Ord + Clone + serde::Serialize + serde::de::DeserializeOwned> FollowDelta<T> {
    /// `base` with the added ids after it and the removed ones left out, each once.
    pub fn apply(&self, base: &[T]) -> Vec<T> {
        let mut seen = BTreeSet::new();
        base.iter()
            .chain(self.added.iter())
            .filter(|id| !self.removed.contains(*id) && seen.insert(*id))
            .cloned()
            .collect()
    }

    /// Adds `add` and removes `remove` on top of `base` (the config's list):
    /// an id of the config is removed by listing it, any other is added.
    pub fn change(&mut self, base: &[T], add: &[T], remove: &[T]) {
        let in_config: BTreeSet<&T> = base.iter().collect();
        for id in add {
            self.removed.remove(id);
            if !in_config.contains(id) {
                self.added.insert(id.clone());
            }
        }
        for id in remove {
            self.added.remove(id);
            if in_config.contains(id) {
                self.removed.insert(id.clone());
            }
        }
    }

    /// `state_dir/<source>/follows.json`.
    pub fn path(state_dir: &Path, source: &str) -> PathBuf {
        state_dir.join(source).join("follows.json")
    }

    /// Reads the persisted delta; a missing file is an empty delta.
    pub fn load(path: &Path) -> Result<FollowDelta<T>, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FollowDelta::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes atomically (see [`crate::persist::write_atomically`]).
    pub fn store(&self, path: &Path) -> Result<(), String> {
        let body = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        crate::persist::write_atomically(path, &body)
    }
}

/// Where a source's follow changes are kept.
#[derive(Debug)]
pub enum FollowStore {
    /// `state_dir/<source>/follows.json`, this instance's alone.
    File(PathBuf),
    /// `streamherd:follows:{source}:added` and `:removed` in the
    /// coordination Redis: each change is applied to the sets atomically,
    /// so instances changing different ids never undo each other's.
    Redis {
        /// The coordination Redis.
        link: Box<Mutex<RedisLink>>,
        /// `streamherd:follows:{source}`.
        key: String,
    },
}

impl FollowStore {
    /// The store a source of `placement` uses.
    pub fn for_source(placement: &Placement, state_dir: &Path, source: &str) -> Result<FollowStore, String> {
        match placement {
            Placement::Leased(leases) => Ok(FollowStore::Redis {
                link: Box::new(Mutex::new(RedisLink::new(leases.url(), Duration::from_millis(500))?)),
                key: format!("streamherd:follows:{source}"),
            }),
            Placement::Static(_) => Ok(FollowStore::File(state_dir.join(source).join("follows.json"))),
        }
    }

    /// Opens the store of `source` and reads its changes, logging what went
    /// wrong: a store that cannot open leaves `None` (changes then fail
    /// with an error), an unreadable one the config's list alone.
    pub fn open<T>(placement: &Placement, state_dir: &Path, source: &str) -> (Option<FollowStore>, FollowDelta<T>)
    where
        T: Ord + Clone + serde::Serialize + serde::de::DeserializeOwned,
    {
        let store = match FollowStore::for_source(placement, state_dir, source) {
            Ok(store) => store,
            Err(e) => {
                tracing::error!(source, error = %e, "cannot open the follow store; changes cannot be kept");
                return (None, FollowDelta::default());
            }
        };
        let delta = match store.load::<T>() {
            Ok(delta) => {
                if delta != FollowDelta::default() {
                    tracing::info!(source, added = delta.added.len(), removed = delta.removed.len(), from = %store.describe(), "follow changes restored");
                }
                delta
            }
            Err(e) => {
                tracing::error!(source, error = %e, "cannot read persisted follow changes; starting from the config");
                FollowDelta::default()
            }
        };
        (Some(store), delta)
    }

    /// Whether other instances change it too (re-read before a share change).
    pub fn shared(&self) -> bool {
        matches!(self, FollowStore::Redis { .. })
    }

    /// Where it is, for log lines.
    pub fn describe(&self) -> String {
        match self {
            FollowStore::File(path) => path.display().to_string(),
            FollowStore::Redis { key, .. } => format!("the coordination Redis ({key}:*)"),
        }
    }

    /// The changes made so far.
    pub fn load<T>(&self) -> Result<FollowDelta<T>, String>
    where
        T: Ord + Clone + serde::Serialize + serde::de::DeserializeOwned,
    {
        match self {
            FollowStore::File(path) => FollowDelta::load(path),
            FollowStore::Redis { link, key } => {
                let mut link = link.lock().map_err(|_| "follow store lock poisoned".to_owned())?;
                let (added, removed): (Vec<String>, Vec<String>) = link.run(|c| {
                    redis::pipe()
                        .cmd("SMEMBERS")
                        .arg(format!("{key}:added"))
                        .cmd("SMEMBERS")
                        .arg(format!("{key}:removed"))
                        .query(c)
                })?;
                let parse = |list: Vec<String>| -> Result<BTreeSet<T>, String> {
                    list.iter().map(|m| serde_json::from_str(m).map_err(|e| format!("{key}: `{m}`: {e}"))).collect()
                };
                Ok(FollowDelta { added: parse(added)?, removed: parse(removed)? })
            }
        }
    }

    /// Keeps `delta`, which is the stored one after
    /// [`FollowDelta::change`]`(base, add, remove)`.
    pub fn save<T>(&self, delta: &FollowDelta<T>, base: &[T], add: &[T], remove: &[T]) -> Result<(), String>
    where
        T: Ord + Clone + serde::Serialize + serde::de::DeserializeOwned,
    {
        match self {
            FollowStore::File(path) => delta.store(path),
            FollowStore::Redis { link, key } => {
                let json = |id: &T| serde_json::to_string(id).map_err(|e| e.to_string());
                let in_config: BTreeSet<&T> = base.iter().collect();
                let (added, removed) = (format!("{key}:added"), format!("{key}:removed"));
                let mut pipe = redis::pipe();
                pipe.atomic();
                for id in add {
                    pipe.cmd("SREM").arg(&removed).arg(json(id)?).ignore();
                    if !in_config.contains(id) {
                        pipe.cmd("SADD").arg(&added).arg(json(id)?).ignore();
                    }
                }
                for id in remove {
                    pipe.cmd("SREM").arg(&added).arg(json(id)?).ignore();
                    if in_config.contains(id) {
                        pipe.cmd("SADD").arg(&removed).arg(json(id)?).ignore();
                    }
                }
                let mut link = link.lock().map_err(|_| "follow store lock poisoned".to_owned())?;
                link.run(|c| pipe.query::<()>(c))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_apply_on_top_of_the_config_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = FollowDelta::<u64>::path(dir.path(), "src");
        assert_eq!(FollowDelta::<u64>::load(&path).unwrap(), FollowDelta::default());
        let delta = FollowDelta { added: [9, 3].into(), removed: [2].into() };
        assert_eq!(delta.apply(&[1, 2, 3]), vec![1, 3, 9]);
        delta.store(&path).unwrap();
        assert_eq!(FollowDelta::load(&path).unwrap(), delta);
    }

    #[test]
    fn changes_remove_config_ids_and_add_others() {
        let base: Vec<String> = vec!["a".into(), "b".into()];
        let mut d = FollowDelta::default();
        d.change(&base, &["c".into(), "a".into()], &["b".into()]);
        assert_eq!(d.apply(&base), vec!["a".to_string(), "c".to_string()]);
        d.change(&base, &["b".into()], &["c".into()]);
        assert_eq!(d, FollowDelta::default());
    }
}
