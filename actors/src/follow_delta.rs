//! Follow changes made through the control API (user ids, DIDs), kept in
//! `state_dir/<source>/follows.json` and applied on top of the config's list
//! at every start.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

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
