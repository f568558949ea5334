//! `when_full = "spill"`: a sink's overflow goes to its disk queue
//! (`delivery::spill`) instead of holding back the sockets, and is replayed
//! in order once the sink keeps up. Once anything is spilled every newer
//! event is spilled behind it until replay has caught up, so order holds.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use super::encode::{push_json_str, push_timestamp, push_u64};
use crate::delivery::ack::BatchAck;
use crate::delivery::spill::{Chunk, Corruption, Spill, SpillError};
use crate::event::Event;

/// Where a sink spills and how much.
#[derive(Debug, Clone)]
pub struct SpillOptions {
    /// `state_dir/spill/<sink>`.
    pub dir: PathBuf,
    /// The most bytes the spill holds; beyond it the sink blocks.
    pub max_bytes: u64,
    /// Size at which the spill starts a new segment file.
    pub segment_bytes: u64,
    /// How long a full memory queue holds the streams back before the
    /// overflow goes to disk (`spill_after_ms`). A sink that is merely the
    /// slowest stage frees room every few milliseconds and never spills:
    /// spilling costs each event a second write and a read, so spilling a
    /// sink that keeps up but only just would slow it further.
    pub after: Duration,
}

/// One sink's spill, shared by its producers and its actor.
pub struct Overflow {
    state: Mutex<State>,
    /// Woken when replay made room in the spill.
    pub room: Notify,
    gauge: Gauge,
    sink: String,
    after: Duration,
}

struct State {
    spill: Spill,
    /// Events are going to the spill (it holds events not yet replayed).
    active: bool,
    /// At `max_bytes`: producers wait (said once in the log, and in `/health`).
    full: bool,
    /// Bytes ever appended, counting what an earlier run left.
    appended: u64,
    /// Acknowledgements of spilled batches, with the `appended` total at
    /// their end: released once replay consumed that far.
    acks: VecDeque<(u64, BatchAck)>,
}

/// What an append did.
pub enum Appended {
    /// Spilled; `first` when this started a spill (the actor must be told to replay).
    Yes {
        /// The spill was empty before.
        first: bool,
    },
    /// The memory queue had room after all: nothing was spilled.
    NotNeeded,
    /// The spill is at its limit: wait for `room`, then try again.
    Full,
    /// The spill cannot be written and holds nothing: block on the memory queue.
    Broken,
}

impl Overflow {
    /// Opens the sink's spill; what an earlier run left is replayed first.
    pub fn open(options: &SpillOptions, sink: &str, gauge: Gauge) -> Result<Overflow, SpillError> {
        let spill = Spill::open(options.dir.clone(), options.max_bytes, options.segment_bytes)?;
        let left = spill.bytes();
        if left > 0 {
            tracing::warn!(sink, bytes = left, dir = %options.dir.display(), "replaying events an earlier run spilled, before new ones");
        }
        gauge.set(i64::try_from(left).unwrap_or(i64::MAX));
        let state = State { active: left > 0, full: false, appended: left, acks: VecDeque::new(), spill };
        Ok(Overflow {
            state: Mutex::new(state),
            room: Notify::new(),
            gauge,
            sink: sink.to_owned(),
            after: options.after,
        })
    }

    /// How long a full memory queue waits for room before spilling.
    pub fn after(&self) -> Duration {
        self.after
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes in the spill not yet replayed.
    pub fn bytes(&self) -> u64 {
        self.lock().spill.bytes()
    }

    /// Whether events are going to the spill.
    pub fn active(&self) -> bool {
        self.lock().active
    }

    /// Whether the spill is at its limit (the sink blocks its streams).
    pub fn full(&self) -> bool {
        // An empty spill is never full, whatever the last append saw.
        let st = self.lock();
        st.full && st.active
    }

    /// Appends `events` unless the spill is idle and `try_memory` finds room
    /// in the memory queue (it is called under the spill's lock, so no replay
    /// can finish in between and let newer events overtake spilled ones).
    pub fn append(&self, events: &[Event], ack: Option<&BatchAck>, try_memory: impl FnOnce() -> bool) -> Appended {
        let mut st = self.lock();
        if !st.active && try_memory() {
            // The spill drained while this producer waited: it is not full
            // any more either (else /health would stay degraded for good).
            if std::mem::take(&mut st.full) {
                tracing::info!(sink = %self.sink, "the spill has room again; streams read on");
            }
            return Appended::NotNeeded;
        }
        match st.spill.append(events) {
            Ok(bytes) => {
                let first = !st.active;
                st.active = true;
                st.appended += bytes;
                if let Some(ack) = ack {
                    let end = st.appended;
                    st.acks.push_back((end, ack.clone()));
                }
                if std::mem::take(&mut st.full) {
                    tracing::info!(sink = %self.sink, "the spill has room again; streams read on");
                }
                if first {
                    tracing::warn!(sink = %self.sink, "sink queue is full; spilling to disk (when_full = \"spill\")");
                }
                self.set_gauge(&st);
                Appended::Yes { first }
            }
            Err(SpillError::Full { max_bytes }) => {
                if !st.full {
                    st.full = true;
                    tracing::warn!(sink = %self.sink, max_bytes, "spill reached spill_max_bytes; blocking the streams until it drains");
                }
                Appended::Full
            }
            Err(e) => {
                tracing::error!(sink = %self.sink, error = %e, "cannot spill to disk; blocking the streams instead");
                if st.active {
                    Appended::Full
                } else {
                    Appended::Broken
                }
            }
        }
    }

    /// The next events to replay, oldest first (`None`: nothing left, the
    /// spill is idle again). Not consumed until [`Overflow::consumed`].
    pub fn next(&self, max_events: usize) -> Result<Option<Chunk>, SpillError> {
        let mut st = self.lock();
        if !st.active {
            return Ok(None);
        }
        let chunk = st.spill.read(max_events)?;
        if chunk.events.is_empty() && chunk.corruption.is_none() {
            st.active = false;
            self.set_gauge(&st);
            drop(st);
            self.room.notify_waiters();
            return Ok(None);
        }
        Ok(Some(chunk))
    }

    /// The sink wrote `chunk` (or, `lost`, dropped it after its retries):
    /// drops it from the spill and acknowledges the spilled batches it
    /// completed (a lost one as lost, so its positions do not advance).
    pub fn consumed(&self, chunk: &Chunk, lost: bool) -> Result<(), SpillError> {
        let released: Vec<BatchAck> = {
            let mut st = self.lock();
            st.spill.consume(chunk)?;
            let done = st.appended.saturating_sub(st.spill.bytes());
            let mut released = Vec::new();
            while st.acks.front().is_some_and(|(end, _)| *end <= done) {
                released.extend(st.acks.pop_front().map(|(_, a)| a));
            }
            if lost {
                released.iter().for_each(BatchAck::lost);
            }
            self.set_gauge(&st);
            released
        };
        self.room.notify_waiters();
        // Dropped outside the lock: the last drop runs the batch's work.
        drop(released);
        Ok(())
    }

    /// The sink is closing: what is still spilled stays on disk for the
    /// next start, so its batches must not count as written.
    pub fn close(&self) {
        let mut st = self.lock();
        for (_, ack) in st.acks.drain(..) {
            ack.lost();
        }
    }

    fn set_gauge(&self, st: &State) {
        self.gauge.set(i64::try_from(st.spill.bytes()).unwrap_or(i64::MAX));
    }
}

/// The gap event for a spill cut at damaged records: the events stored
/// after the damage are lost.
pub fn corruption_gap(sink: &str, connection: &std::sync::Arc<str>, before: Option<&Event>, c: &Corruption) -> Event {
    let mut payload = Vec::with_capacity(192);
    payload.extend_from_slice(b"{\"reason\":\"spill_corrupt\",\"sink\":");
    push_json_str(&mut payload, sink);
    payload.extend_from_slice(b",\"segment\":");
    push_json_str(&mut payload, &c.segment.display().to_string());
    payload.extend_from_slice(b",\"offset\":");
    push_u64(&mut payload, c.offset);
    payload.extend_from_slice(b",\"bytes_cut\":");
    push_u64(&mut payload, c.bytes_cut);
    if let Some(from) = c.last_good_at.or(before.map(|e| e.received_at)) {
        payload.extend_from_slice(b",\"from\":\"");
        push_timestamp(&mut payload, &from);
        payload.push(b'"');
    }
    payload.extend_from_slice(b",\"to\":\"");
    push_timestamp(&mut payload, &Utc::now());
    payload.extend_from_slice(b"\",\"complete\":false}");
    let source = before.map_or_else(|| std::sync::Arc::from("streamherd"), |e| e.source.clone());
    Event::gap(source, connection.clone(), Utc::now(), Bytes::from(payload))
}
