//! [`Handoff`]: how a planner passes its connections' batches on. Each batch
//! goes to every sink in order, carrying its acknowledgement; the sink's
//! `when_full` decides whether a full queue holds the reader back. A source
//! whose connections can overlap has a de-duplication window, which the
//! planner owns and opens only while an overlap lasts.

use std::future::Future;
use std::sync::Arc;

use super::ack::BatchAck;
use super::dedup::DedupWindow;
use crate::event::Event;
use crate::sinks::runtime::SinkHandle;

/// The sinks a source's events go to, and the source's overlap window.
pub struct Handoff {
    sinks: Arc<[SinkHandle]>,
    dedup: Option<DedupWindow>,
}

impl Handoff {
    /// Hands events to `sinks`; `dedup`, when given, drops what it has seen.
    pub fn new(sinks: Arc<[SinkHandle]>, dedup: Option<DedupWindow>) -> Self {
        Handoff { sinks, dedup }
    }

    /// Drops what the open overlap window has seen; returns what is left and
    /// how many were dropped.
    pub fn filter(&mut self, events: Vec<Event>) -> (Vec<Event>, usize) {
        match &mut self.dedup {
            Some(window) => window.filter(events),
            None => (events, 0),
        }
    }

    /// Queues `events` in every sink, in order; resolves once every sink has
    /// them (waiting while a `block` sink is full). Each sink holds a clone
    /// of `ack` until it wrote its share.
    pub fn deliver(&self, events: Vec<Event>, ack: Option<BatchAck>) -> impl Future<Output = ()> + 'static {
        let sinks = self.sinks.clone();
        async move {
            if events.is_empty() {
                return;
            }
            let batch: Arc<[Event]> = events.into();
            for sink in sinks.iter() {
                sink.deliver_acked(&batch, ack.as_ref()).await;
            }
        }
    }

    /// Opens or closes the source's overlap window (a no-op for sources
    /// whose connections never overlap).
    pub fn set_overlap(&mut self, open: bool) {
        if let Some(window) = &mut self.dedup {
            window.set_open(open);
        }
    }

    /// Whether the overlap window is open.
    pub fn overlapping(&self) -> bool {
        self.dedup.as_ref().is_some_and(|w| w.is_open())
    }
}
