//! The newest event of a Twitter source that every sink acknowledged, kept
//! in `state_dir` so that the next start can write a `restart` gap from it:
//! Twitter streams cannot be replayed, so what a stop cost is at least named.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::persist::write_atomically;

#[derive(Debug, Default, Serialize, Deserialize)]
struct OnDisk {
    last_written: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
struct State {
    newest: Option<DateTime<Utc>>,
    dirty: bool,
    /// What the previous run left, until the first event of this run claims it.
    previous: Option<DateTime<Utc>>,
}

/// One source's acknowledged watermark.
#[derive(Debug)]
pub struct Watermark {
    path: Option<PathBuf>,
    state: Mutex<State>,
}

impl Watermark {
    /// `state_dir/twitter/<source>.written.json`.
    pub fn path(state_dir: &Path, source: &str) -> PathBuf {
        state_dir.join("twitter").join(format!("{source}.written.json"))
    }

    /// Reads the previous run's watermark (none on a first start).
    pub fn open(path: PathBuf) -> Result<Watermark, String> {
        let previous = match std::fs::read(&path) {
            Ok(body) => {
                serde_json::from_slice::<OnDisk>(&body).map_err(|e| format!("{}: {e}", path.display()))?.last_written
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let state = State { newest: previous, dirty: false, previous };
        Ok(Watermark { path: Some(path), state: Mutex::new(state) })
    }

    /// A watermark kept nowhere (no restart gaps).
    pub fn in_memory() -> Watermark {
        Watermark { path: None, state: Mutex::new(State::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Events up to `at` are written by every sink.
    pub fn advance(&self, at: DateTime<Utc>) {
        let mut s = self.lock();
        if s.newest.map_or(true, |n| at > n) {
            s.newest = Some(at);
            s.dirty = true;
        }
    }

    /// The previous run's last acknowledged event, once per run: the first
    /// event after a start closes the restart gap.
    pub fn take_previous(&self) -> Option<DateTime<Utc>> {
        self.lock().previous.take()
    }

    /// Writes the watermark if it moved.
    pub fn flush(&self) -> Result<(), String> {
        let Some(path) = &self.path else { return Ok(()) };
        let newest = {
            let mut s = self.lock();
            if !s.dirty {
                return Ok(());
            }
            s.dirty = false;
            s.newest
        };
        let body = serde_json::to_vec(&OnDisk { last_written: newest }).map_err(|e| e.to_string())?;
        write_atomically(path, &body).inspect_err(|_| self.lock().dirty = true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flushed_watermark_is_the_next_runs_restart_point_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = Watermark::path(dir.path(), "election");
        let first = Watermark::open(path.clone()).expect("open");
        assert_eq!(first.take_previous(), None);
        let t1 = Utc::now();
        let t0 = t1 - chrono::Duration::seconds(5);
        first.advance(t1);
        first.advance(t0);
        first.flush().expect("flush");
        let second = Watermark::open(path).expect("reopen");
        assert_eq!(second.take_previous(), Some(t1));
        assert_eq!(second.take_previous(), None);
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = Watermark::path(dir.path(), "s");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, b"{not json").expect("write");
        let e = Watermark::open(path).expect_err("damaged");
        assert!(e.contains("s.written.json"), "{e}");
    }
}
