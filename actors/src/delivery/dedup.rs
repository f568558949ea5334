//! A bounded de-duplication window per source, open only while two of its
//! connections can deliver the same message (a make-before-break handover,
//! a follow moving between connections). Its planner owns it, so it needs no
//! lock; outside an overlap events pass untouched. Keys are 64-bit hashes in
//! a ring, so memory is fixed however long the service runs.

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;

use crate::event::{Event, EventKind};

/// Keys remembered by default: minutes of traffic at usual rates, seconds at a firehose's.
pub const DEFAULT_WINDOW: usize = 200_000;

/// Whether a source's connections can deliver one message twice, and how
/// its messages are told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dedup {
    /// Connections never overlap: nothing is compared.
    Never,
    /// Connections overlap during handovers.
    Overlaps {
        /// The kinds whose event id names exactly one message (a tweet, a
        /// status): two deliveries with that id are one message even when
        /// rendered differently. Other kinds' ids name what a notice is about
        /// (a user, a deleted status), so those are compared by their
        /// payload bytes.
        unique_ids: &'static [EventKind],
    },
}

/// Remembers the keys of the last `capacity` events of an overlap.
#[derive(Debug)]
pub struct DedupWindow {
    capacity: usize,
    unique_ids: &'static [EventKind],
    hasher: std::collections::hash_map::RandomState,
    open: bool,
    ring: Ring,
}

#[derive(Debug, Default)]
struct Ring {
    seen: HashSet<u64>,
    order: VecDeque<u64>,
}

impl DedupWindow {
    /// A closed window of `capacity` keys; `unique_ids` as in [`Dedup::Overlaps`].
    pub fn new(capacity: usize, unique_ids: &'static [EventKind]) -> Self {
        DedupWindow {
            capacity: capacity.max(1),
            unique_ids,
            hasher: std::collections::hash_map::RandomState::new(),
            open: false,
            ring: Ring::default(),
        }
    }

    /// Opens the window (an overlap began) or closes it (the overlap ended):
    /// closing forgets every key, so a later overlap compares only its own
    /// events.
    pub fn set_open(&mut self, open: bool) {
        if self.open && !open {
            self.ring = Ring::default();
        }
        self.open = open;
    }

    /// Whether an overlap is open.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Keeps the events not seen before in the current overlap; returns them
    /// and how many were dropped. A closed window keeps everything.
    pub fn filter(&mut self, events: Vec<Event>) -> (Vec<Event>, usize) {
        if !self.open {
            return (events, 0);
        }
        let before = events.len();
        let ring = &mut self.ring;
        let (hasher, unique_ids) = (&self.hasher, self.unique_ids);
        let kept: Vec<Event> = events
            .into_iter()
            .filter(|e| {
                let k = key(hasher, unique_ids, e);
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
            })
            .collect();
        let dropped = before - kept.len();
        (kept, dropped)
    }
}

/// One message's identity: its id for kinds whose ids are unique per
/// message, else its payload bytes, so that two distinct notices about the
/// same user or status are never taken for one. The user and stream it was
/// delivered for are part of it: one status for two users (or on two
/// streams) is two deliveries.
fn key(hasher: &std::collections::hash_map::RandomState, unique_ids: &[EventKind], e: &Event) -> u64 {
    let stream = e.stream.as_deref();
    match e.id.as_deref() {
        Some(id) if unique_ids.contains(&e.kind) => hasher.hash_one((e.kind, e.for_user, stream, 0u8, id)),
        _ => hasher.hash_one((e.kind, e.for_user, stream, 1u8, &e.payload[..])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use chrono::Utc;

    const TWEET: EventKind = EventKind::new("tweet");
    const DELETE: EventKind = EventKind::new("delete");
    const LIMIT: EventKind = EventKind::new("limit");
    const USER_WITHHELD: EventKind = EventKind::new("user_withheld");

    fn ev(kind: EventKind, id: Option<&str>, for_user: Option<u64>, payload: &'static str) -> Event {
        Event {
            source: "s".into(),
            kind,
            id: id.map(Into::into),
            received_at: Utc::now(),
            connection: "s/0".into(),
            for_user,
            stream: None,
            payload: Bytes::from_static(payload.as_bytes()),
        }
    }

    fn open(capacity: usize) -> DedupWindow {
        let mut w = DedupWindow::new(capacity, &[TWEET]);
        w.set_open(true);
        w
    }

    #[test]
    fn drops_repeats_of_one_message_by_id_or_by_bytes() {
        let mut w = open(100);
        let (kept, dropped) = w.filter(vec![
            ev(TWEET, Some("1"), None, r#"{"id":1}"#),
            // The same tweet rendered differently by the other connection.
            ev(TWEET, Some("1"), None, r#"{"id":1,"x":0}"#),
            ev(DELETE, Some("1"), None, r#"{"delete":1}"#),
            ev(TWEET, Some("1"), Some(7), r#"{"id":1}"#),
            ev(LIMIT, None, None, r#"{"limit":{"track":5}}"#),
            ev(LIMIT, None, None, r#"{"limit":{"track":5}}"#),
        ]);
        assert_eq!((kept.len(), dropped), (4, 2));
        let (kept, dropped) =
            w.filter(vec![ev(TWEET, Some("1"), None, r#"{"id":1}"#), ev(TWEET, Some("2"), None, r#"{"id":2}"#)]);
        assert_eq!((kept.len(), dropped), (1, 1));
    }

    #[test]
    fn distinct_notices_about_one_user_are_never_merged() {
        let mut w = open(100);
        let notices = vec![
            ev(USER_WITHHELD, Some("9"), None, r#"{"user_withheld":{"id":9,"withheld_in_countries":["DE"]}}"#),
            ev(USER_WITHHELD, Some("9"), None, r#"{"user_withheld":{"id":9,"withheld_in_countries":["FR"]}}"#),
            ev(LIMIT, None, None, r#"{"limit":{"track":5}}"#),
            ev(LIMIT, None, None, r#"{"limit":{"track":6}}"#),
        ];
        assert_eq!(w.filter(notices).1, 0);
    }

    #[test]
    fn a_closed_window_keeps_everything_and_closing_forgets() {
        let mut w = DedupWindow::new(100, &[TWEET]);
        let twice = || vec![ev(LIMIT, None, None, r#"{"limit":{"track":5}}"#); 2];
        assert_eq!(w.filter(twice()).0.len(), 2);
        w.set_open(true);
        assert_eq!(w.filter(twice()).0.len(), 1);
        w.set_open(false);
        assert_eq!(w.ring.seen.len(), 0);
        w.set_open(true);
        assert_eq!(w.filter(twice()).0.len(), 1, "a new overlap compares only its own events");
    }

    #[test]
    fn the_window_is_bounded() {
        let mut w = open(10);
        for i in 0..1000 {
            w.filter(vec![ev(TWEET, Some(&i.to_string()), None, "{}")]);
        }
        assert_eq!((w.ring.seen.len(), w.ring.order.len()), (10, 10));
        // An old key has been forgotten, a recent one is remembered.
        assert_eq!(w.filter(vec![ev(TWEET, Some("0"), None, "{}")]).1, 0);
        assert_eq!(w.filter(vec![ev(TWEET, Some("999"), None, "{}")]).1, 1);
    }
}
