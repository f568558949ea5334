//! Follow ids of a Twitter source: the changes made through the control
//! API, kept in `state_dir/<source>/follows.json` and applied on top of the
//! config's list at every start, and the parsing of ids the API receives.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Follow changes made through the API, applied on top of the config's list.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FollowDelta {
    /// Ids added.
    pub added: BTreeSet<u64>,
    /// Ids removed.
    pub removed: BTreeSet<u64>,
}

impl FollowDelta {
    /// `base` with the added ids after it and the removed ones left out, each once.
    pub fn apply(&self, base: &[u64]) -> Vec<u64> {
        let mut seen = BTreeSet::new();
        base.iter()
            .chain(self.added.iter())
            .copied()
            .filter(|id| !self.removed.contains(id) && seen.insert(*id))
            .collect()
    }

    /// `state_dir/<source>/follows.json`.
    pub fn path(state_dir: &Path, source: &str) -> PathBuf {
        state_dir.join(source).join("follows.json")
    }

    /// Reads the persisted delta; a missing file is an empty delta.
    pub fn load(path: &Path) -> Result<FollowDelta, String> {
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

/// A user id as the control API passes it on: digits only, not zero
/// (`"+5"`, `" 5"` and `"5.0"` are mistakes worth reporting).
pub fn parse_user_id(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if n > 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(format!("invalid value: `{text}`, expected a user id: a positive integer or a string of digits")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_positive_integers() {
        assert_eq!(parse_user_id("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_user_id("7"), Ok(7));
        for bad in ["-1", "0", "12a", " 12", "+5", "5.0", "", "18446744073709551616"] {
            let e = parse_user_id(bad).unwrap_err();
            assert!(e.contains("positive integer") && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn deltas_apply_on_top_of_the_config_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = FollowDelta::path(dir.path(), "src");
        assert_eq!(FollowDelta::load(&path).unwrap(), FollowDelta::default());
        let delta = FollowDelta { added: [9, 3].into(), removed: [2].into() };
        assert_eq!(delta.apply(&[1, 2, 3]), vec![1, 3, 9]);
        delta.store(&path).unwrap();
        assert_eq!(FollowDelta::load(&path).unwrap(), delta);
    }
}
