//! A bounded de-duplication window per source: during a make-before-break
//! handover two connections deliver the same events; each (kind, id,
//! for_user) is written once. Keys are 64-bit hashes in a ring, so memory is
//! fixed however long the service runs.

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;

use crate::event::Event;

/// Keys remembered by default: minutes of traffic at usual rates, seconds at a firehose's.
pub const DEFAULT_WINDOW: usize = 200_000;

/// Remembers the last `capacity` event keys.
#[derive(Debug)]
pub struct DedupWindow {
    capacity: usize,
    hasher: std::collections::hash_map::RandomState,
    inner: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    seen: HashSet<u64>,
    order: VecDeque<u64>,
}

impl DedupWindow {
    /// A window of `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        DedupWindow {
            capacity: capacity.max(1),
            hasher: std::collections::hash_map::RandomState::new(),
            inner: Mutex::new(Ring::default()),
        }
    }

    fn key(&self, e: &Event) -> Option<u64> {
        let id = e.id.as_deref()?;
        Some(self.hasher.hash_one((e.kind, id, e.for_user)))
    }

    /// Keeps the events not seen before (events without an id always pass);
    /// returns them and how many were dropped.
    pub fn filter(&self, events: Vec<Event>) -> (Vec<Event>, usize) {
        let Ok(mut ring) = self.inner.lock() else { return (events, 0) };
        let before = events.len();
        let kept: Vec<Event> = events
            .into_iter()
            .filter(|e| match self.key(e) {
                None => true,
                Some(k) => {
                    if !ring.seen.insert(k) {
                        return false;
                    }
                    ring.order.push_back(k);
                    if ring.order.len() > self.capacity {
                        if let Some(old) = ring.order.pop_front() {
                            ring.seen.remove(&old);
                        }
                    }
                    true
                }
            })
            .collect();
        let dropped = before - kept.len();
        (kept, dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use bytes::Bytes;
    use chrono::Utc;

    const TWEET: EventKind = EventKind::new("tweet");
    const DELETE: EventKind = EventKind::new("delete");
    const LIMIT: EventKind = EventKind::new("limit");

    fn ev(kind: EventKind, id: Option<&str>, for_user: Option<u64>) -> Event {
        Event {
            source: "s".into(),
            kind,
            id: id.map(Into::into),
            received_at: Utc::now(),
            connection: "s/0".into(),
            for_user,
            stream: None,
            payload: Bytes::from_static(b"{}"),
        }
    }

    #[test]
    fn drops_repeats_by_kind_id_and_user() {
        let w = DedupWindow::new(100);
        let (kept, dropped) = w.filter(vec![
            ev(TWEET, Some("1"), None),
            ev(TWEET, Some("1"), None),
            ev(DELETE, Some("1"), None),
            ev(TWEET, Some("1"), Some(7)),
            ev(LIMIT, None, None),
            ev(LIMIT, None, None),
        ]);
        assert_eq!((kept.len(), dropped), (5, 1));
        let (kept, dropped) = w.filter(vec![ev(TWEET, Some("1"), None), ev(TWEET, Some("2"), None)]);
        assert_eq!((kept.len(), dropped), (1, 1));
    }

    #[test]
    fn the_window_is_bounded() {
        let w = DedupWindow::new(10);
        for i in 0..1000 {
            w.filter(vec![ev(TWEET, Some(&i.to_string()), None)]);
        }
        let ring = w.inner.lock().unwrap();
        assert_eq!((ring.seen.len(), ring.order.len()), (10, 10));
        drop(ring);
        // An old key has been forgotten, a recent one is remembered.
        assert_eq!(w.filter(vec![ev(TWEET, Some("0"), None)]).1, 0);
        assert_eq!(w.filter(vec![ev(TWEET, Some("999"), None)]).1, 1);
    }
}
