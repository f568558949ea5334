//! [`Handoff`]: where a connection puts what it parsed. Each batch goes to
//! every sink in order; the sink's `when_full` decides whether a full queue
//! holds the reader back. A source whose connections can overlap passes a
//! de-duplication window shared by its connections, which its planner opens
//! only while an overlap lasts.

use std::sync::Arc;

use super::dedup::DedupWindow;
use crate::event::Event;
use crate::sinks::runtime::SinkHandle;

/// The sinks a source's events go to, and the source's overlap window.
#[derive(Clone)]
pub struct Handoff {
    sinks: Arc<[SinkHandle]>,
    dedup: Option<Arc<DedupWindow>>,
}

impl Handoff {
    /// Hands events to `sinks`; `dedup`, when given, drops what it has seen.
    pub fn new(sinks: Arc<[SinkHandle]>, dedup: Option<Arc<DedupWindow>>) -> Self {
        Handoff { sinks, dedup }
    }

    /// Delivers `events` to every sink, in order; returns how many the
    /// window dropped as duplicates. Waits while a `block` sink is full.
    pub async fn deliver(&self, events: Vec<Event>) -> usize {
        let (events, duplicates) = match &self.dedup {
            Some(window) => window.filter(events),
            None => (events, 0),
        };
        if !events.is_empty() {
            let batch: Arc<[Event]> = events.into();
            for sink in self.sinks.iter() {
                sink.deliver(&batch).await;
            }
        }
        duplicates
    }

    /// Opens or closes the source's overlap window (a no-op for sources
    /// whose connections never overlap).
    pub fn set_overlap(&self, open: bool) {
        if let Some(window) = &self.dedup {
            window.set_open(open);
        }
    }

    /// Whether the overlap window is open.
    pub fn overlapping(&self) -> bool {
        self.dedup.as_ref().is_some_and(|w| w.is_open())
    }
}
