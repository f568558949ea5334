//! Where each Jetstream connection of a source stands: the newest
//! acknowledged `time_us` (the cursor), the instance that sent it, and which
//! DIDs each connection carries, kept in `state_dir/<source>/cursor.json`
//! and `shards.json` so that a restart resumes every DID from the cursor of
//! the connection that carried it, and drops what that connection already
//! wrote.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One connection's position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Resume from here (minus the rewind): the newest acknowledged event's
    /// `time_us`, or later when a quiet connection proved itself alive.
    pub cursor_us: u64,
    /// The newest acknowledged event's `time_us` as its instance sent it:
    /// what a resume from the same instance drops as already written.
    #[serde(default)]
    pub event_us: Option<u64>,
    /// The instance (`ws(s)://host`) whose clock the times are on.
    #[serde(default)]
    pub host: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CursorFile {
    run: u64,
    connections: BTreeMap<usize, Position>,
}

/// `None`: the connection carries every DID.
type Members = Option<Vec<String>>;

#[derive(Debug, Default, Serialize, Deserialize)]
struct ShardsFile {
    run: u64,
    connections: BTreeMap<usize, Members>,
}

/// What was already written for one DID (or every DID) by the connection
/// that carried it before a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Events of any DID at or before this `time_us` were written.
    All(u64),
    /// Per DID.
    PerDid(HashMap<Box<str>, u64>),
}

impl Seen {
    /// Whether an event of `did` at `time_us` was already written.
    pub fn covers(&self, did: Option<&str>, time_us: u64) -> bool {
        match self {
            Seen::All(t) => time_us <= *t,
            Seen::PerDid(map) => did.and_then(|d| map.get(d)).is_some_and(|t| time_us <= *t),
        }
    }

    /// The newest time it covers: past it nothing is dropped.
    pub fn newest(&self) -> u64 {
        match self {
            Seen::All(t) => *t,
            Seen::PerDid(map) => map.values().copied().max().unwrap_or(0),
        }
    }
}

/// Where a connection planned at start resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The oldest cursor among the connections that carried its DIDs.
    pub cursor_us: u64,
    /// The instance of that cursor.
    pub host: Option<String>,
    /// What was written already, on that instance's clock.
    pub seen: Option<Seen>,
}

/// The previous run's positions, as read at start.
#[derive(Debug, Default)]
pub struct Previous {
    positions: BTreeMap<usize, Position>,
    /// `None` when the two files do not belong to one run (a crash between
    /// their writes): every connection then resumes from the oldest cursor.
    members: Option<BTreeMap<usize, Members>>,
}

impl Previous {
    /// Whether anything was stored.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Where a connection carrying `dids` (`None`: every DID) resumes: from
    /// the oldest cursor of the old connections that carried any of them,
    /// so no DID resumes later than where it stood.
    pub fn resume_for(&self, dids: Option<&BTreeSet<String>>) -> Option<Resume> {
        let carried_any = |index: &usize| -> bool {
            let Some(members) = &self.members else { return true };
            match (members.get(index), dids) {
                (None, _) => true,
                (Some(None), _) | (Some(Some(_)), None) => true,
                (Some(Some(list)), Some(want)) => list.iter().any(|d| want.contains(d)),
            }
        };
        let relevant: Vec<(&usize, &Position)> = self.positions.iter().filter(|(i, _)| carried_any(i)).collect();
        let (_, oldest) = relevant.iter().min_by_key(|(_, p)| p.cursor_us)?;
        let host = oldest.host.clone();
        let same_host: Vec<&(&usize, &Position)> = relevant.iter().filter(|(_, p)| p.host == host).collect();
        let seen = match (&self.members, dids) {
            (Some(members), Some(want)) => {
                let mut map = HashMap::new();
                for (index, p) in &same_host {
                    let (Some(t), Some(Some(list))) = (p.event_us, members.get(index)) else { continue };
                    for d in list.iter().filter(|d| want.contains(*d)) {
                        let e = map.entry(d.clone().into_boxed_str()).or_insert(t);
                        *e = (*e).min(t);
                    }
                }
                (!map.is_empty()).then_some(Seen::PerDid(map))
            }
            _ => same_host.iter().filter_map(|(_, p)| p.event_us).min().map(Seen::All),
        };
        Some(Resume { cursor_us: oldest.cursor_us, host, seen })
    }
}

#[derive(Debug, Default)]
struct Inner {
    positions: BTreeMap<usize, Position>,
    dirty: bool,
}

/// The positions of one source's connections in this run; shared by them.
#[derive(Debug)]
pub struct CursorStore {
    dir: Option<PathBuf>,
    run: u64,
    inner: Mutex<Inner>,
    members: Mutex<BTreeMap<usize, Members>>,
}

impl CursorStore {
    /// `state_dir/<source>/`.
    pub fn dir(state_dir: &Path, source: &str) -> PathBuf {
        state_dir.join(source)
    }

    /// Reads what the previous run left and starts this run's store. A
    /// corrupt file is an error rather than a silent start from the live
    /// tail (which would skip the gap).
    pub fn open(dir: PathBuf) -> Result<(CursorStore, Previous), String> {
        let cursors: Option<CursorFile> = read_json(&dir.join("cursor.json"))?;
        let shards: Option<ShardsFile> = read_json(&dir.join("shards.json"))?;
        let previous = match cursors {
            None => Previous::default(),
            Some(c) => {
                let members = shards.filter(|s| s.run == c.run).map(|s| s.connections);
                Previous { positions: c.connections, members }
            }
        };
        // Tells this run's two files from another run's; a counter keeps two
        // stores opened in one microsecond apart.
        static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let run = (chrono::Utc::now().timestamp_micros().max(0) as u64 ^ (u64::from(std::process::id()) << 40))
            .wrapping_add(n);
        let store = CursorStore { dir: Some(dir), run, inner: Mutex::default(), members: Mutex::default() };
        Ok((store, previous))
    }

    /// A store that is never written (tests, a source without state).
    pub fn in_memory() -> CursorStore {
        CursorStore { dir: None, run: 0, inner: Mutex::default(), members: Mutex::default() }
    }

    /// Connection `index` carries `dids` (`None`: every DID) from now on.
    pub fn set_members(&self, index: usize, dids: Option<Vec<String>>) {
        if let Ok(mut m) = self.members.lock() {
            m.insert(index, dids);
        }
    }

    /// Connection `index` is gone: its DIDs are carried elsewhere or not at all.
    pub fn remove(&self, index: usize) {
        if let Ok(mut m) = self.members.lock() {
            m.remove(&index);
        }
        if let Ok(mut inner) = self.inner.lock() {
            if inner.positions.remove(&index).is_some() {
                inner.dirty = true;
            }
        }
    }

    /// Where connection `index` stands.
    pub fn position(&self, index: usize) -> Option<Position> {
        self.inner.lock().ok()?.positions.get(&index).cloned()
    }

    /// Records what connection `index` had written: the cursor only moves
    /// forward; the event time and host are those of the newest event.
    pub fn advance(&self, index: usize, cursor_us: u64, event_us: Option<u64>, host: &str) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let entry = inner.positions.entry(index).or_insert(Position { cursor_us, event_us: None, host: None });
        let mut changed = false;
        if cursor_us > entry.cursor_us {
            entry.cursor_us = cursor_us;
            changed = true;
        }
        if let Some(e) = event_us {
            if entry.host.as_deref() != Some(host) || entry.event_us.map_or(true, |old| e > old) {
                entry.event_us = Some(e);
                entry.host = Some(host.to_owned());
                changed = true;
            }
        }
        if changed || inner.positions.len() == 1 {
            inner.dirty = true;
        }
    }

    /// Writes which connection carries which DIDs (after a plan change).
    pub fn flush_members(&self) -> Result<(), String> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let body = {
            let m = self.members.lock().map_err(|_| "member lock poisoned".to_owned())?;
            serde_json::to_vec(&ShardsFile { run: self.run, connections: m.clone() }).map_err(|e| e.to_string())?
        };
        crate::persist::write_atomically(&dir.join("shards.json"), &body)
    }

    /// Writes the positions when they changed since the last write.
    pub fn flush(&self) -> Result<(), String> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let body = {
            let mut inner = self.inner.lock().map_err(|_| "position lock poisoned".to_owned())?;
            if !inner.dirty {
                return Ok(());
            }
            inner.dirty = false;
            let file = CursorFile { run: self.run, connections: inner.positions.clone() };
            serde_json::to_vec_pretty(&file).map_err(|e| e.to_string())?
        };
        crate::persist::write_atomically(&dir.join("cursor.json"), &body).inspect_err(|_| {
            if let Ok(mut inner) = self.inner.lock() {
                inner.dirty = true;
            }
        })
    }
}

impl CursorStore {
    /// Per bucket of `bucket_of` (a DID's, or `None` for a connection of
    /// every DID), the oldest cursor among the connections carrying it, with
    /// that cursor's instance: where a take-over of the bucket resumes.
    pub fn by_bucket(&self, bucket_of: impl Fn(Option<&str>) -> u32) -> BTreeMap<u32, Position> {
        let (Ok(inner), Ok(members)) = (self.inner.lock(), self.members.lock()) else { return BTreeMap::new() };
        let mut out: BTreeMap<u32, Position> = BTreeMap::new();
        for (index, position) in &inner.positions {
            let buckets: BTreeSet<u32> = match members.get(index) {
                Some(Some(dids)) => dids.iter().map(|d| bucket_of(Some(d))).collect(),
                Some(None) => [bucket_of(None)].into(),
                None => continue,
            };
            for b in buckets {
                let older = out.get(&b).map_or(true, |p| position.cursor_us < p.cursor_us);
                if older {
                    out.insert(b, position.clone());
                }
            }
        }
        out
    }
}

/// Under `[service] coordination`: the cursors per lease bucket in the Redis
/// hash `streamherd:positions:{source}:jetstream`, so the instance that takes
/// a bucket over resumes its DIDs from where the last carrier's writes were
/// acknowledged. Values are `cursor_us host`; a cursor never moves back.
#[derive(Debug)]
pub struct BucketCursors {
    link: Mutex<crate::coordination::remote::RedisLink>,
    key: String,
}

impl BucketCursors {
    /// The cursors of `source` in the Redis at `url`.
    pub fn new(url: &str, source: &str) -> Result<BucketCursors, String> {
        let link = crate::coordination::remote::RedisLink::new(url, std::time::Duration::from_millis(250))?;
        Ok(BucketCursors { link: Mutex::new(link), key: format!("streamherd:positions:{source}:jetstream") })
    }

    /// Writes `cursors` (from [`CursorStore::by_bucket`]).
    pub fn write(&self, cursors: &BTreeMap<u32, Position>) -> Result<(), String> {
        let pairs: Vec<String> = cursors
            .iter()
            .flat_map(|(b, p)| [b.to_string(), format!("{} {}", p.cursor_us, p.host.as_deref().unwrap_or(""))])
            .collect();
        let mut link = self.link.lock().map_err(|_| "cursor link lock poisoned".to_owned())?;
        crate::coordination::remote::hset_if_newer(&mut link, &self.key, &pairs).map(|_| ())
    }

    /// Where `buckets` stand, those that have a cursor.
    pub fn read(&self, buckets: &[u32]) -> Result<BTreeMap<u32, Position>, String> {
        if buckets.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut link = self.link.lock().map_err(|_| "cursor link lock poisoned".to_owned())?;
        let values: Vec<Option<String>> = link.run(|c| redis::cmd("HMGET").arg(&self.key).arg(buckets).query(c))?;
        Ok(buckets
            .iter()
            .zip(values)
            .filter_map(|(b, v)| {
                let v = v?;
                let (cursor, host) = v.split_once(' ').unwrap_or((v.as_str(), ""));
                let host = (!host.is_empty()).then(|| host.to_owned());
                Some((*b, Position { cursor_us: cursor.parse().ok()?, event_us: None, host }))
            })
            .collect())
    }
}

impl Previous {
    /// A previous run that left one cursor for every DID it carried (a
    /// bucket taken over under coordination).
    pub fn from_position(position: Position) -> Previous {
        Previous { positions: [(0, position)].into(), members: None }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(d: &[&str]) -> BTreeSet<String> {
        d.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_restart_resumes_each_did_from_the_connection_that_carried_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, previous) = CursorStore::open(dir.path().to_owned()).unwrap();
        assert!(previous.is_empty());
        store.set_members(0, Some(vec!["did:a".into(), "did:b".into()]));
        store.set_members(1, Some(vec!["did:c".into()]));
        store.advance(0, 100, Some(100), "ws://h1");
        store.advance(1, 250, Some(240), "ws://h1");
        store.advance(1, 200, Some(230), "ws://h1");
        store.flush_members().unwrap();
        store.flush().unwrap();
        assert_eq!(store.position(1).unwrap().cursor_us, 250, "cursors only move forward");

        let (_, previous) = CursorStore::open(dir.path().to_owned()).unwrap();
        let r = previous.resume_for(Some(&set(&["did:c"]))).unwrap();
        assert_eq!((r.cursor_us, r.host.as_deref()), (250, Some("ws://h1")));
        let seen = r.seen.unwrap();
        assert!(seen.covers(Some("did:c"), 240) && !seen.covers(Some("did:c"), 241));
        // Moving DIDs carry the older cursor; each keeps its own "written" bound.
        let r = previous.resume_for(Some(&set(&["did:b", "did:c"]))).unwrap();
        assert_eq!(r.cursor_us, 100);
        let seen = r.seen.unwrap();
        assert!(seen.covers(Some("did:b"), 100) && !seen.covers(Some("did:b"), 101));
        assert!(seen.covers(Some("did:c"), 240));
        assert!(!seen.covers(Some("did:z"), 1));
        assert_eq!(previous.resume_for(Some(&set(&["did:new"]))), None);
        assert_eq!(previous.resume_for(None).unwrap().cursor_us, 100);
    }

    #[test]
    fn files_of_two_runs_fall_back_to_the_oldest_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = CursorStore::open(dir.path().to_owned()).unwrap();
        a.set_members(0, Some(vec!["did:a".into()]));
        a.advance(0, 100, Some(100), "ws://h");
        a.advance(1, 50, Some(50), "ws://h");
        a.flush().unwrap();
        let (b, _) = CursorStore::open(dir.path().to_owned()).unwrap();
        b.set_members(0, Some(vec!["did:x".into()]));
        b.flush_members().unwrap();
        let (_, previous) = CursorStore::open(dir.path().to_owned()).unwrap();
        assert_eq!(previous.resume_for(Some(&set(&["did:a"]))).unwrap().cursor_us, 50);
    }

    #[test]
    fn a_corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cursor.json"), b"{oops").unwrap();
        assert!(CursorStore::open(dir.path().to_owned()).unwrap_err().contains("cursor.json"));
    }
}
