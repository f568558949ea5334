//! Where each Mastodon stream of a source stands: the newest id delivered and
//! when, kept in `state_dir/<source>/mastodon.json` — or, when instances
//! share shards through Redis, in a Redis hash — so catch-up after a
//! reconnect, a process restart or a take-over knows where to start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::coordination::remote::RedisLink;

/// One Redis round trip for positions gives up after this long.
const REMOTE_TIMEOUT: Duration = Duration::from_millis(250);
/// After a failed write, Redis is left alone this long (the flush runs on a
/// thread that also reads sockets).
const REMOTE_QUIET: Duration = Duration::from_secs(2);

struct Remote {
    link: RedisLink,
    key: String,
    quiet_until: Option<Instant>,
}

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::catch_up::id_cmp;

/// One stream's position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The newest status (or notification) id delivered, in Mastodon's id order.
    pub last_id: String,
    /// When it was delivered.
    pub last_at: DateTime<Utc>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Positions {
    /// By stream key (`hashtag:rust`, `public:local`).
    streams: BTreeMap<String, StreamPosition>,
}

/// The positions of one source's streams; shared by its connections.
#[derive(Debug)]
pub struct ResumeStore {
    path: PathBuf,
    inner: Mutex<(Positions, bool)>,
    remote: Option<Mutex<Remote>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("key", &self.key).finish_non_exhaustive()
    }
}

impl ResumeStore {
    /// `state_dir/<source>/mastodon.json`.
    pub fn path(state_dir: &Path, source: &str) -> PathBuf {
        state_dir.join(source).join("mastodon.json")
    }

    /// Loads the positions; a missing file means none yet. A corrupt file is
    /// an error rather than a silent restart from nothing.
    pub fn open(path: PathBuf) -> Result<ResumeStore, String> {
        let positions = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Positions::default(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(ResumeStore { path, inner: Mutex::new((positions, false)), remote: None })
    }

    /// A store that starts empty and is never read back (no catch-up state).
    pub fn in_memory() -> ResumeStore {
        ResumeStore { path: PathBuf::new(), inner: Mutex::new((Positions::default(), false)), remote: None }
    }

    /// Positions kept in the Redis at `url` (hash `streamherd:positions:{source}:mastodon`),
    /// shared by every instance that may carry the source's streams. Starts
    /// empty: [`ResumeStore::refresh`] reads the streams this instance takes.
    pub fn remote(url: &str, source: &str) -> Result<ResumeStore, String> {
        let link = RedisLink::new(url, REMOTE_TIMEOUT)?;
        let key = format!("streamherd:positions:{source}:mastodon");
        Ok(ResumeStore {
            path: PathBuf::new(),
            inner: Mutex::new((Positions::default(), false)),
            remote: Some(Mutex::new(Remote { link, key, quiet_until: None })),
        })
    }

    /// Reads where `keys` stand in Redis (what their last carrier
    /// acknowledged), before this instance starts carrying them. A store
    /// without Redis has nothing to read.
    pub fn refresh(&self, keys: &[String]) -> Result<(), String> {
        let Some(remote) = &self.remote else { return Ok(()) };
        if keys.is_empty() {
            return Ok(());
        }
        let Ok(mut remote) = remote.lock() else { return Err("position store lock poisoned".into()) };
        let hash = remote.key.clone();
        let values: Vec<Option<String>> = remote.link.run(|c| redis::cmd("HMGET").arg(&hash).arg(keys).query(c))?;
        drop(remote);
        for (key, value) in keys.iter().zip(values) {
            let Some(value) = value else { continue };
            let Some((id, at)) = value.split_once(' ') else { continue };
            let Ok(at) = DateTime::parse_from_rfc3339(at) else { continue };
            self.advance(key, id, at.with_timezone(&Utc));
        }
        Ok(())
    }

    /// Where `key` stands, if anything was delivered on it.
    pub fn position(&self, key: &str) -> Option<StreamPosition> {
        self.inner.lock().ok()?.0.streams.get(key).cloned()
    }

    /// Records `id` as delivered on `key` when it is newer than the position.
    pub fn advance(&self, key: &str, id: &str, at: DateTime<Utc>) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let (positions, dirty) = &mut *inner;
        match positions.streams.get_mut(key) {
            Some(p) if id_cmp(id, &p.last_id).is_le() => {}
            Some(p) => {
                p.last_id = id.to_owned();
                p.last_at = at;
                *dirty = true;
            }
            None => {
                positions.streams.insert(key.to_owned(), StreamPosition { last_id: id.to_owned(), last_at: at });
                *dirty = true;
            }
        }
    }

    /// Writes the positions when they changed since the last write.
    pub fn flush(&self) -> Result<(), String> {
        if let Some(remote) = &self.remote {
            return self.flush_remote(remote);
        }
        if self.path.as_os_str().is_empty() {
            return Ok(());
        }
        let body = {
            let Ok(mut inner) = self.inner.lock() else { return Err("position store lock poisoned".into()) };
            if !inner.1 {
                return Ok(());
            }
            inner.1 = false;
            serde_json::to_vec_pretty(&inner.0).map_err(|e| e.to_string())?
        };
        crate::persist::write_atomically(&self.path, &body).inspect_err(|_| {
            // Try again at the next flush.
            if let Ok(mut inner) = self.inner.lock() {
                inner.1 = true;
            }
        })
    }
}

impl ResumeStore {
    fn flush_remote(&self, remote: &Mutex<Remote>) -> Result<(), String> {
        let Ok(mut remote) = remote.lock() else { return Err("position store lock poisoned".into()) };
        if remote.quiet_until.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        let pairs: Vec<String> = {
            let Ok(mut inner) = self.inner.lock() else { return Err("position store lock poisoned".into()) };
            if !inner.1 {
                return Ok(());
            }
            inner.1 = false;
            inner
                .0
                .streams
                .iter()
                .flat_map(|(k, p)| {
                    [
                        k.clone(),
                        format!("{} {}", p.last_id, p.last_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
                    ]
                })
                .collect()
        };
        let hash = remote.key.clone();
        let written = crate::coordination::remote::hset_if_newer(&mut remote.link, &hash, &pairs);
        match written {
            Ok(_) => {
                remote.quiet_until = None;
                Ok(())
            }
            Err(e) => {
                remote.quiet_until = Some(Instant::now() + REMOTE_QUIET);
                if let Ok(mut inner) = self.inner.lock() {
                    inner.1 = true;
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_only_move_forward_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = ResumeStore::path(dir.path(), "fedi");
        let store = ResumeStore::open(path.clone()).unwrap();
        assert_eq!(store.position("hashtag:rust"), None);
        let t = Utc::now();
        store.advance("hashtag:rust", "109000000000000005", t);
        store.advance("hashtag:rust", "109000000000000003", t);
        store.advance("hashtag:rust", "99", t);
        store.advance("public", "7", t);
        store.flush().unwrap();
        let again = ResumeStore::open(path).unwrap();
        assert_eq!(again.position("hashtag:rust").unwrap().last_id, "109000000000000005");
        assert_eq!(again.position("public").unwrap().last_id, "7");
    }

    #[test]
    fn a_corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = ResumeStore::path(dir.path(), "fedi");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{not json").unwrap();
        assert!(ResumeStore::open(path).unwrap_err().contains("mastodon.json"));
    }
}
