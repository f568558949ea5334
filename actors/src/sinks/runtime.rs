//! Runs each configured sink as a [`SinkActor`] on its own thread (an actix
//! `Arbiter`) behind a bounded queue counted in events. [`SinkHandle`] is the
//! producer side: it filters, applies `when_full`, and writes gap events for
//! what `drop_newest` dropped. The actor coalesces queued batches into one
//! write and flush, and acknowledges each batch only after that flush.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, Addr, AsyncContext, Context, Handler, Message};
use actix_rt::{Arbiter, ArbiterHandle};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::encode::{push_json_str, push_timestamp, push_u64};
use super::overflow::{corruption_gap, Appended, Overflow, SpillOptions};
use super::sink::Sink;
use crate::delivery::ack::BatchAck;
use crate::error::SinkError;
use crate::event::{Event, EventKind};
use crate::metrics::{Metrics, SourceLabel};

/// Attempts per batch before its events are dropped.
const WRITE_ATTEMPTS: u32 = 5;

/// Wait before the first retry; doubled before each further one.
const RETRY_INITIAL: Duration = Duration::from_millis(100);

/// Cap of the wait between attempts while the destination is unavailable.
const UNAVAILABLE_MAX_WAIT: Duration = Duration::from_secs(5);

/// While waiting to retry, a stop is looked for this often.
const STOP_POLL: Duration = Duration::from_millis(50);

/// A sink that wrote since its last flush is flushed again this long after,
/// so time-throttled work (the file sink's batched `sync_data`) also happens
/// once traffic stops.
const IDLE_FLUSH_INTERVAL: Duration = Duration::from_millis(250);

/// A producer waiting for room in a full spill looks again this often.
const SPILL_RECHECK: Duration = Duration::from_millis(100);

/// Semaphore permits are taken `u32` at a time.
const MAX_BUFFER: usize =
    if Semaphore::MAX_PERMITS < u32::MAX as usize { Semaphore::MAX_PERMITS } else { u32::MAX as usize };

/// What a sink does with new events when its queue is full (`when_full`).
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Append the overflow to a disk queue and replay it in order: the
    /// streams read on at full speed while the sink is slow or down.
    #[default]
    Spill,
    /// Wait for room: the stream stops reading and TCP pushes back on the server.
    Block,
    /// Drop what does not fit, count it, and write one gap event per source
    /// once there is room again.
    DropNewest,
}

impl WhenFull {
    /// The name the config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            WhenFull::Spill => "spill",
            WhenFull::Block => "block",
            WhenFull::DropNewest => "drop_newest",
        }
    }
}

/// The settings every sink shares, from its `[[sinks]]` table.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// The sink's configured name (metrics label, logs, gap events).
    pub name: String,
    /// Queued events written with one write and flush, at most this many.
    pub batch_max_events: usize,
    /// A batch waits at most this long for more queued events before it is flushed.
    pub batch_max: Duration,
    /// Events held in the queue before `when_full` applies (at least 1).
    pub buffer: usize,
    /// What to do with events that do not fit.
    pub when_full: WhenFull,
    /// Only these kinds; `None` takes every kind.
    pub kinds: Option<Vec<EventKind>>,
    /// Only these sources; `None` takes every source.
    pub sources: Option<Vec<String>>,
    /// Where `when_full = "spill"` spills (unused otherwise).
    pub spill: SpillOptions,
}

/// Starts `sink` on a new `Arbiter` (thread) and returns the handle that
/// queues events for it. Fails when its spill directory cannot be opened.
///
/// # Panics
///
/// When called outside a running actix `System`, or when the OS cannot start
/// the thread.
pub fn start_sink(sink: Box<dyn Sink>, options: SinkOptions, metrics: Metrics) -> Result<SinkHandle, SinkError> {
    let label = Metrics::sink(&options.name);
    let spill_gauge = metrics.spill_bytes.get_or_create(&label).clone();
    let overflow = match options.when_full {
        WhenFull::Spill => Some(Arc::new(
            Overflow::open(&options.spill, &options.name, spill_gauge)
                .map_err(|e| SinkError::Other(format!("sink `{}`: cannot open its spill queue: {e}", options.name)))?,
        )),
        _ => None,
    };
    let counters = Counters {
        written: metrics.sink_events_total.get_or_create(&label).clone(),
        errors: metrics.sink_errors_total.get_or_create(&label).clone(),
        dropped: metrics.sink_dropped_total.get_or_create(&label).clone(),
        depth: metrics.sink_queue_depth.get_or_create(&label).clone(),
    };
    let capacity = options.buffer.clamp(1, MAX_BUFFER);
    let arbiter = Arbiter::new().handle();
    let queued = Arc::new(AtomicUsize::new(0));
    let unavailable = Arc::new(Mutex::new(None));
    let stopping = Arc::new(AtomicBool::new(false));
    let deadline = Arc::new(Mutex::new(None));
    let actor = SinkActor {
        sink: Some(sink),
        name: options.name.clone(),
        counters: counters.clone(),
        flush_due: false,
        queued: queued.clone(),
        batch_max_events: options.batch_max_events.max(1),
        batch_max: options.batch_max,
        held: Vec::new(),
        held_events: 0,
        held_since: None,
        overflow: overflow.clone(),
        unflushed_replay: None,
        connection: Arc::from(format!("sink/{}", options.name)),
        gaps_total: metrics.gaps_total.clone(),
        unavailable: unavailable.clone(),
        stopping: stopping.clone(),
        deadline: deadline.clone(),
        kept_at_stop: 0,
    };
    let addr = SinkActor::start_in_arbiter(&arbiter, move |_| actor);
    Ok(SinkHandle {
        shared: Arc::new(Shared {
            connection: Arc::from(format!("sink/{}", options.name)),
            name: options.name,
            capacity,
            when_full: options.when_full,
            kinds: options.kinds,
            sources: options.sources,
            permits: Arc::new(Semaphore::new(capacity)),
            queued,
            addr,
            arbiter,
            counters,
            gaps_total: metrics.gaps_total,
            dropped_runs: Mutex::new(Vec::new()),
            overflow,
            unavailable,
            stopping,
            deadline,
        }),
    })
}

/// This sink's metric handles, resolved once so the hot path takes no lock.
#[derive(Clone, Debug)]
struct Counters {
    written: Counter,
    errors: Counter,
    dropped: Counter,
    depth: Gauge,
}

/// The producer side of one sink: cheap to clone, shared by every stream.
#[derive(Clone)]
pub struct SinkHandle {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    /// `sink/<name>`, the `connection` of this sink's gap events.
    connection: Arc<str>,
    capacity: usize,
    when_full: WhenFull,
    /// Accepted kinds; `None` takes every kind.
    kinds: Option<Vec<EventKind>>,
    sources: Option<Vec<String>>,
    /// One permit per queued event; a permit travels with its event and is
    /// released once the event is written, which is what bounds the queue.
    permits: Arc<Semaphore>,
    /// `WriteEvents` messages sent and not yet handled, so the actor knows
    /// whether more are coming before it flushes.
    queued: Arc<AtomicUsize>,
    addr: Addr<SinkActor>,
    arbiter: ArbiterHandle,
    counters: Counters,
    gaps_total: Family<SourceLabel, Counter>,
    /// What `drop_newest` dropped, per source, not yet reported by a gap event.
    dropped_runs: Mutex<Vec<DroppedRun>>,
    /// `when_full = "spill"`: the disk queue.
    overflow: Option<Arc<Overflow>>,
    /// Why the destination is unavailable, while it is.
    unavailable: Arc<Mutex<Option<String>>>,
    /// Told to the actor when the service stops.
    stopping: Arc<AtomicBool>,
    /// When a graceful stop must be done by (`stop_timeout_s`); past it,
    /// what is still queued goes to the spill instead of the sink.
    deadline: Arc<Mutex<Option<Instant>>>,
}

/// Consecutive drops from one source, reported as one gap event.
#[derive(Debug)]
struct DroppedRun {
    source: Arc<str>,
    dropped: u64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

impl DroppedRun {
    /// `{"reason":"sink_full","sink":..,"dropped":..,"from":..,"to":..}`.
    fn gap_event(&self, shared: &Shared) -> Event {
        let mut payload = Vec::with_capacity(128);
        payload.extend_from_slice(b"{\"reason\":\"sink_full\",\"sink\":");
        push_json_str(&mut payload, &shared.name);
        payload.extend_from_slice(b",\"dropped\":");
        push_u64(&mut payload, self.dropped);
        payload.extend_from_slice(b",\"from\":\"");
        push_timestamp(&mut payload, &self.from);
        payload.extend_from_slice(b"\",\"to\":\"");
        push_timestamp(&mut payload, &self.to);
        payload.extend_from_slice(b"\"}");
        Event::gap(self.source.clone(), shared.connection.clone(), Utc::now(), Bytes::from(payload))
    }
}

impl std::fmt::Debug for SinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkHandle")
            .field("name", &self.shared.name)
            .field("buffer", &self.shared.capacity)
            .field("when_full", &self.shared.when_full)
            .field("queue_depth", &self.queue_depth())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn accepts_kind(&self, kind: EventKind) -> bool {
        match &self.kinds {
            Some(kinds) => kinds.contains(&kind),
            None => true,
        }
    }

    fn accepts_source(&self, source: &str) -> bool {
        match &self.sources {
            Some(sources) => sources.iter().any(|s| s == source),
            None => true,
        }
    }
}

impl SinkHandle {
    /// The sink's configured name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Whether the sink's `kinds` and `sources` filters let `event` through.
    pub fn accepts(&self, event: &Event) -> bool {
        self.shared.accepts_kind(event.kind) && self.shared.accepts_source(&event.source)
    }

    /// Events queued and not yet written.
    pub fn queue_depth(&self) -> usize {
        self.shared.capacity.saturating_sub(self.shared.permits.available_permits())
    }

    /// Queues the accepted events of `events`, in order.
    ///
    /// Under `block` this waits until the queue has room, which is how a slow
    /// sink pushes back on the socket reader. Under `drop_newest` it never
    /// waits: what does not fit is dropped and later reported by a gap event.
    pub async fn deliver(&self, events: &Arc<[Event]>) {
        self.deliver_acked(events, None).await
    }

    /// Like [`SinkHandle::deliver`]; the sink drops its clone of `ack` once
    /// the events it took are written and flushed (or marks it lost).
    pub async fn deliver_acked(&self, events: &Arc<[Event]>, ack: Option<&BatchAck>) {
        let accepted: Arc<[Event]> = if events.iter().all(|e| self.accepts(e)) {
            Arc::clone(events)
        } else {
            events.iter().filter(|e| self.accepts(e)).cloned().collect()
        };
        if accepted.is_empty() {
            return;
        }
        let capacity = self.shared.capacity;
        if accepted.len() <= capacity {
            self.enqueue(accepted, ack).await;
        } else {
            // More than the whole queue could never get its permits at once.
            for chunk in accepted.chunks(capacity) {
                self.enqueue(chunk.iter().cloned().collect(), ack).await;
            }
        }
    }

    /// Queues at most `capacity` events.
    async fn enqueue(&self, events: Arc<[Event]>, ack: Option<&BatchAck>) {
        let shared = &*self.shared;
        if shared.permits.is_closed() {
            self.dropped_after_stop(events.len(), ack);
            return;
        }
        match shared.when_full {
            WhenFull::Block => self.block(events, ack).await,
            WhenFull::DropNewest => self.enqueue_or_drop(events, ack),
            WhenFull::Spill => self.enqueue_or_spill(events, ack).await,
        }
    }

    /// Queues in memory while there is room and nothing is spilled, else
    /// appends to the spill; at the spill's limit waits for replay to make
    /// room (the fallback to `block`). A full queue first waits up to the
    /// spill's `after` for room, so a sink that keeps up, only just, paces
    /// the streams instead of paying a disk round trip for every event.
    async fn enqueue_or_spill(&self, events: Arc<[Event]>, ack: Option<&BatchAck>) {
        let shared = &*self.shared;
        let Some(overflow) = &shared.overflow else { return self.block(events, ack).await };
        let n = permit_count(events.len());
        let mut held = None;
        if !overflow.active() && !overflow.after().is_zero() {
            held = match shared.permits.clone().try_acquire_many_owned(n) {
                Ok(permit) => Some(permit),
                Err(TryAcquireError::Closed) => return self.dropped_after_stop(events.len(), ack),
                Err(TryAcquireError::NoPermits) => {
                    match tokio::time::timeout(overflow.after(), shared.permits.clone().acquire_many_owned(n)).await {
                        Ok(Ok(permit)) => Some(permit),
                        Ok(Err(_closed)) => return self.dropped_after_stop(events.len(), ack),
                        // Still full: the sink is stalled, not just slow.
                        Err(_elapsed) => None,
                    }
                }
            };
        }
        loop {
            let room = overflow.room.notified();
            tokio::pin!(room);
            // Registered before the check, so a wake-up in between is not missed.
            room.as_mut().enable();
            let mut permit = None;
            // A permit won while waiting is used only if nothing was spilled
            // meanwhile (else these events go after the spilled ones).
            let appended = overflow.append(&events, ack, || {
                permit = held.take().or_else(|| shared.permits.clone().try_acquire_many_owned(n).ok());
                permit.is_some()
            });
            match appended {
                Appended::NotNeeded => {
                    if let Some(permit) = permit {
                        self.send(events, permit, ack.cloned());
                    }
                    return;
                }
                Appended::Yes { first } => {
                    if first {
                        shared.addr.do_send(DrainSpill);
                    }
                    return;
                }
                Appended::Broken => return self.block(events, ack).await,
                Appended::Full => {
                    // Bounded, so a stop is noticed even if no replay wakes us.
                    let _ = tokio::time::timeout(SPILL_RECHECK, room).await;
                    if shared.permits.is_closed() {
                        return self.dropped_after_stop(events.len(), ack);
                    }
                }
            }
        }
    }

    async fn block(&self, events: Arc<[Event]>, ack: Option<&BatchAck>) {
        match self.shared.permits.clone().acquire_many_owned(permit_count(events.len())).await {
            Ok(permit) => self.send(events, permit, ack.cloned()),
            Err(_closed) => self.dropped_after_stop(events.len(), ack),
        }
    }

    /// Whether events are spilled and not yet replayed.
    pub fn spilled(&self) -> bool {
        self.shared.overflow.as_ref().is_some_and(|o| o.active())
    }

    /// Whether the spill is at its limit, so the sink holds its streams back.
    pub fn spill_full(&self) -> bool {
        self.shared.overflow.as_ref().is_some_and(|o| o.full())
    }

    /// Why the destination does not answer, while it does not (the sink
    /// retries; the queue spills meanwhile).
    pub fn unavailable(&self) -> Option<String> {
        self.shared.unavailable.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn enqueue_or_drop(&self, events: Arc<[Event]>, ack: Option<&BatchAck>) {
        let shared = &*self.shared;
        let emit_gaps = shared.accepts_kind(EventKind::GAP);
        // Held across the permit check so that two producers cannot both
        // take the same pending runs or both count on the same free room.
        let mut runs = shared.dropped_runs.lock().unwrap_or_else(PoisonError::into_inner);
        let available = shared.permits.available_permits();
        let gaps_now = if emit_gaps { runs.len().min(available) } else { 0 };
        let take = events.len().min(available - gaps_now);
        let permit = match gaps_now + take {
            0 => None,
            wanted => shared.permits.clone().try_acquire_many_owned(permit_count(wanted)).ok(),
        };
        let Some(permit) = permit else {
            record_drop(shared, &mut runs, &events);
            if let Some(a) = &ack {
                a.lost();
            }
            return;
        };
        let reported: Vec<DroppedRun> =
            if emit_gaps { runs.drain(..gaps_now).collect() } else { runs.drain(..).collect() };
        if take < events.len() {
            record_drop(shared, &mut runs, &events[take..]);
            if let Some(a) = &ack {
                a.lost();
            }
        }
        drop(runs);

        for run in &reported {
            tracing::warn!(
                sink = %shared.name,
                source = %run.source,
                dropped = run.dropped,
                "sink has room again after dropping events"
            );
        }
        if reported.is_empty() || !emit_gaps {
            let batch = if take == events.len() { events } else { events[..take].iter().cloned().collect() };
            if !batch.is_empty() {
                self.send(batch, permit, ack.cloned());
            }
            return;
        }
        let mut batch = Vec::with_capacity(reported.len() + take);
        for run in &reported {
            batch.push(run.gap_event(shared));
            shared.gaps_total.get_or_create(&Metrics::source(&run.source)).inc();
        }
        batch.extend(events[..take].iter().cloned());
        self.send(batch.into(), permit, ack.cloned());
    }

    fn send(&self, events: Arc<[Event]>, permit: OwnedSemaphorePermit, ack: Option<BatchAck>) {
        let shared = &*self.shared;
        let count = permit.num_permits();
        shared.counters.depth.inc_by(gauge_value(count));
        let permit = QueuedPermit { _permit: permit, count, depth: shared.counters.depth.clone() };
        if !shared.addr.connected() {
            shared.counters.dropped.inc_by(events.len() as u64);
            tracing::error!(
                sink = %shared.name,
                dropped = events.len(),
                "sink actor is gone; events dropped"
            );
            if let Some(a) = &ack {
                a.lost();
            }
            return;
        }
        shared.queued.fetch_add(1, Ordering::AcqRel);
        // The permits bound the queue, so ignoring actix's own mailbox
        // capacity (which `do_send` does) is what we want.
        shared.addr.do_send(WriteEvents { events, permit, ack });
    }

    fn dropped_after_stop(&self, count: usize, ack: Option<&BatchAck>) {
        if let Some(a) = &ack {
            a.lost();
        }
        self.shared.counters.dropped.inc_by(count as u64);
        tracing::warn!(sink = %self.shared.name, dropped = count, "sink is stopped; dropping events");
    }

    /// Waits until everything queued before this call is written and the
    /// sink's `flush` ran; returns the flush's error.
    pub async fn flush(&self) -> Result<(), SinkError> {
        match self.shared.addr.send(Flush).await {
            Ok(result) => result,
            Err(_) => Err(SinkError::Other(format!("sink `{}` is stopped", self.shared.name))),
        }
    }

    /// A graceful stop began and must be done by `deadline`: until then the
    /// queue drains into the sink; after it, what is left goes to the spill
    /// (`when_full = "spill"`) for the next start, and a failing write is
    /// not retried.
    pub fn begin_stop(&self, deadline: Instant) {
        *self.shared.deadline.lock().unwrap_or_else(PoisonError::into_inner) = Some(deadline);
    }

    /// Writes everything already queued, flushes and closes the sink, and
    /// ends its thread. Events delivered afterwards are counted as dropped.
    pub async fn stop(&self) {
        let shared = &*self.shared;
        // Closed first, so nothing is queued behind the final flush.
        shared.permits.close();
        // A destination that is down is not waited for: what it holds goes to the spill.
        shared.stopping.store(true, Ordering::Release);
        match shared.addr.send(Close).await {
            Ok(Ok(())) => tracing::info!(sink = %shared.name, "sink stopped"),
            Ok(Err(e)) => {
                tracing::error!(sink = %shared.name, error = %e, "final flush of the sink failed")
            }
            Err(_) => {}
        }
        let runs = shared.dropped_runs.lock().unwrap_or_else(PoisonError::into_inner);
        for run in runs.iter() {
            tracing::warn!(
                sink = %shared.name,
                source = %run.source,
                dropped = run.dropped,
                "sink stopped before a gap event could record dropped events"
            );
        }
        drop(runs);
        shared.arbiter.stop();
    }
}

/// Adds `events` to the per-source runs of dropped events and counts them.
fn record_drop(shared: &Shared, runs: &mut Vec<DroppedRun>, events: &[Event]) {
    shared.counters.dropped.inc_by(events.len() as u64);
    for event in events {
        match runs.iter_mut().find(|r| r.source == event.source) {
            Some(run) => {
                run.dropped += 1;
                run.from = run.from.min(event.received_at);
                run.to = run.to.max(event.received_at);
            }
            None => {
                tracing::warn!(
                    sink = %shared.name,
                    source = %event.source,
                    buffer = shared.capacity,
                    "sink queue is full; dropping new events until there is room (when_full = \"drop_newest\")"
                );
                runs.push(DroppedRun {
                    source: event.source.clone(),
                    dropped: 1,
                    from: event.received_at,
                    to: event.received_at,
                });
            }
        }
    }
}

fn permit_count(events: usize) -> u32 {
    // `events` is at most the capacity, which is at most `u32::MAX`.
    u32::try_from(events).unwrap_or(u32::MAX)
}

fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Queue permits of one message; dropping it (after the write) frees the
/// room and lowers the queue-depth gauge by the same amount it was raised.
struct QueuedPermit {
    _permit: OwnedSemaphorePermit,
    count: usize,
    depth: Gauge,
}

impl Drop for QueuedPermit {
    fn drop(&mut self) {
        self.depth.dec_by(gauge_value(self.count));
    }
}

/// Writes these events, in order; flushed with the batches queued behind it.
#[derive(Message)]
#[rtype(result = "()")]
struct WriteEvents {
    events: Arc<[Event]>,
    permit: QueuedPermit,
    ack: Option<BatchAck>,
}

/// Replays the next chunk of the spill (sent when a spill starts, and by
/// the actor to itself until the spill is empty).
#[derive(Message)]
#[rtype(result = "()")]
struct DrainSpill;

/// Flushes what was written if the oldest of it has waited `batch_max`.
#[derive(Message)]
#[rtype(result = "()")]
struct FlushDue;

/// Answers once everything queued before it is written and the sink flushed.
#[derive(Message)]
#[rtype(result = "Result<(), SinkError>")]
struct Flush;

/// Flushes, then drops the sink (its final flush) and stops the actor.
#[derive(Message)]
#[rtype(result = "Result<(), SinkError>")]
struct Close;

/// Owns one sink on its own thread and drains its queue into it.
pub struct SinkActor {
    /// `None` once closed.
    sink: Option<Box<dyn Sink>>,
    name: String,
    counters: Counters,
    /// A batch was written since the last idle flush.
    flush_due: bool,
    /// `WriteEvents` sent and not yet handled (shared with the handle).
    queued: Arc<AtomicUsize>,
    batch_max_events: usize,
    batch_max: Duration,
    /// Written and not yet flushed: their room in the queue and their
    /// acknowledgements, released by the next successful flush.
    held: Vec<(QueuedPermit, Option<BatchAck>)>,
    held_events: usize,
    held_since: Option<Instant>,
    overflow: Option<Arc<Overflow>>,
    /// A replayed spill chunk the sink took but could not flush, and whether
    /// it was written: only the flush is retried (the sink still holds its
    /// lines), then the chunk is consumed. Writing it again would duplicate it.
    unflushed_replay: Option<(crate::delivery::spill::Chunk, bool)>,
    /// `sink/<name>`, the `connection` of this sink's gap events.
    connection: Arc<str>,
    gaps_total: Family<SourceLabel, Counter>,
    /// Set while the destination is unavailable (shared with the handle).
    unavailable: Arc<Mutex<Option<String>>>,
    /// Set when the service stops: an unavailable destination is given up on.
    stopping: Arc<AtomicBool>,
    /// The graceful stop's deadline, once the stop began (shared with the handle).
    deadline: Arc<Mutex<Option<Instant>>>,
    /// Events put in the spill instead of the sink because the stop's
    /// deadline passed, for the last log line.
    kept_at_stop: u64,
}

impl SinkActor {
    /// Retries `events` while the destination is unavailable, with doubling
    /// waits capped at `UNAVAILABLE_MAX_WAIT` and jitter; true once written.
    /// A stop ends the wait: the events go to the spill (replayed at the
    /// next start) when there is one, and are dropped and counted otherwise.
    fn write_while_unavailable(&mut self, events: &[Event], first: SinkError) -> bool {
        let mut delay = RETRY_INITIAL;
        let mut error = first;
        loop {
            self.counters.errors.inc();
            let was = self.unavailable.lock().unwrap_or_else(PoisonError::into_inner).replace(error.to_string());
            if was.is_none() {
                tracing::error!(sink = %self.name, error = %error, "sink unavailable; retrying until it answers (the queue spills meanwhile)");
            }
            let wait = delay.mul_f64(0.8 + 0.4 * fastrand::f64());
            let until = Instant::now() + wait;
            while Instant::now() < until {
                if self.stop_begun() {
                    return self.give_up_at_stop(events);
                }
                std::thread::sleep(STOP_POLL.min(until.saturating_duration_since(Instant::now())));
            }
            delay = (delay * 2).min(UNAVAILABLE_MAX_WAIT);
            let Some(sink) = self.sink.as_mut() else { return false };
            match guarded(|| sink.write(events)) {
                Ok(()) => {
                    self.counters.written.inc_by(events.len() as u64);
                    *self.unavailable.lock().unwrap_or_else(PoisonError::into_inner) = None;
                    tracing::info!(sink = %self.name, "sink available again");
                    return true;
                }
                Err(e @ SinkError::Unavailable(_)) => error = e,
                Err(e) => {
                    *self.unavailable.lock().unwrap_or_else(PoisonError::into_inner) = None;
                    tracing::warn!(sink = %self.name, error = %e, "sink answers again, but refused the batch");
                    return self.write_with_retry(events);
                }
            }
        }
    }

    /// Whether a graceful stop began and its deadline passed.
    fn past_deadline(&self) -> bool {
        self.deadline.lock().unwrap_or_else(PoisonError::into_inner).is_some_and(|d| Instant::now() >= d)
    }

    /// Whether a graceful stop began (a failing write is then not retried).
    fn stop_begun(&self) -> bool {
        self.stopping.load(Ordering::Acquire) || self.deadline.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    /// Past the stop's deadline: the batch goes to the spill, for the next
    /// start, instead of the sink. False when there is no spill to take it.
    fn keep_for_next_start(&mut self, events: &[Event]) -> bool {
        let Some(overflow) = &self.overflow else { return false };
        match overflow.append(events, None, || false) {
            Appended::Yes { .. } => {
                self.kept_at_stop += events.len() as u64;
                true
            }
            _ => false,
        }
    }

    /// The service stops while the destination is down.
    fn give_up_at_stop(&mut self, events: &[Event]) -> bool {
        if let Some(overflow) = &self.overflow {
            if let Appended::Yes { .. } = overflow.append(events, None, || false) {
                tracing::warn!(sink = %self.name, events = events.len(), "sink unavailable at stop: the batch is kept in the spill for the next start");
                return false;
            }
        }
        self.counters.dropped.inc_by(events.len() as u64);
        tracing::error!(sink = %self.name, dropped = events.len(), "sink unavailable at stop and no spill to keep the batch: dropped");
        false
    }

    /// Writes `events`; false when they were dropped after every attempt failed.
    fn write_with_retry(&mut self, events: &[Event]) -> bool {
        if self.sink.is_none() {
            self.counters.dropped.inc_by(events.len() as u64);
            tracing::error!(sink = %self.name, dropped = events.len(), "sink is closed; events dropped");
            return false;
        }
        let mut delay = RETRY_INITIAL;
        for attempt in 1..=WRITE_ATTEMPTS {
            let Some(sink) = self.sink.as_mut() else { return false };
            let result = guarded(|| sink.write(events));
            match result {
                Ok(()) => {
                    self.counters.written.inc_by(events.len() as u64);
                    return true;
                }
                Err(e @ SinkError::Unavailable(_)) => return self.write_while_unavailable(events, e),
                Err(e) if self.stop_begun() && self.overflow.is_some() => {
                    // Stopping: minutes of retries would hold the stop up.
                    self.counters.errors.inc();
                    tracing::warn!(sink = %self.name, error = %e, "sink write failed while stopping; the batch is kept in the spill");
                    return self.give_up_at_stop(events);
                }
                Err(e) if attempt == WRITE_ATTEMPTS => {
                    self.counters.errors.inc();
                    self.counters.dropped.inc_by(events.len() as u64);
                    tracing::error!(
                        sink = %self.name,
                        attempts = attempt,
                        dropped = events.len(),
                        error = %e,
                        "sink write failed for good; events dropped"
                    );
                }
                Err(e) => {
                    self.counters.errors.inc();
                    tracing::warn!(
                        sink = %self.name,
                        attempt,
                        retry_in_ms = delay.as_millis() as u64,
                        error = %e,
                        "sink write failed; retrying"
                    );
                    // This thread belongs to the sink alone: sleeping holds back
                    // only its queue, which is the backpressure we want.
                    std::thread::sleep(delay);
                    delay *= 2;
                }
            }
        }
        false
    }

    /// Flushes what was written since the last flush and, when that worked,
    /// acknowledges its batches and frees their room. A failed flush keeps
    /// them held (the file sink keeps the unwritten bytes) and is retried.
    fn flush_held(&mut self, ctx: &mut Context<Self>) -> Result<(), SinkError> {
        let result = self.flush_sink();
        match &result {
            Ok(()) => {
                self.held.clear();
                self.held_events = 0;
                self.held_since = None;
            }
            Err(_) if !self.held.is_empty() => {
                self.held_since = Some(Instant::now());
                ctx.notify_later(FlushDue, RETRY_INITIAL.max(self.batch_max));
            }
            Err(_) => {}
        }
        result
    }

    fn flush_sink(&mut self) -> Result<(), SinkError> {
        let Some(sink) = self.sink.as_mut() else {
            return Err(SinkError::Other(format!("sink `{}` is closed", self.name)));
        };
        let result = guarded(|| sink.flush());
        let mut unavailable = self.unavailable.lock().unwrap_or_else(PoisonError::into_inner);
        match &result {
            // A full disk shows here first (lines reach the OS at the flush):
            // /health names the sink until a flush works again.
            Err(e @ SinkError::Unavailable(_)) => {
                self.counters.errors.inc();
                if unavailable.replace(e.to_string()).is_none() {
                    tracing::error!(sink = %self.name, error = %e, "sink unavailable; retrying until it takes the lines (the queue spills meanwhile)");
                }
            }
            Err(e) => {
                self.counters.errors.inc();
                tracing::warn!(sink = %self.name, error = %e, "sink flush failed");
            }
            Ok(()) => {
                if unavailable.take().is_some() {
                    tracing::info!(sink = %self.name, "sink available again");
                }
            }
        }
        drop(unavailable);
        result
    }
}

/// Runs a sink call, turning a panic into an error so that a buggy sink
/// costs its events, not the process.
fn guarded<T>(call: impl FnOnce() -> Result<T, SinkError>) -> Result<T, SinkError> {
    // The sink may be left inconsistent by its panic; it is retried or
    // dropped like any failing sink, and nothing else shares its state.
    catch_unwind(AssertUnwindSafe(call)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic".to_owned());
        Err(SinkError::Other(format!("the sink panicked: {what}")))
    })
}

impl Actor for SinkActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.overflow.as_ref().is_some_and(|o| o.active()) {
            // An earlier run's spill goes first: new events queue behind it.
            ctx.notify(DrainSpill);
        }
        ctx.run_interval(IDLE_FLUSH_INTERVAL, |act, ctx| {
            if std::mem::take(&mut act.flush_due) {
                // Errors are counted and logged inside; held batches are
                // acknowledged only by a flush that worked.
                let _ = act.flush_held(ctx);
            }
        });
    }
}

impl Handler<WriteEvents> for SinkActor {
    type Result = ();

    /// Writes the batch, then flushes unless more batches are already queued
    /// (they join this write(2)) and the held ones are within
    /// `batch_max_events` and `batch_max`.
    fn handle(&mut self, msg: WriteEvents, ctx: &mut Self::Context) {
        let WriteEvents { events, permit, ack } = msg;
        if self.past_deadline() && self.keep_for_next_start(&events) {
            // In the spill, not written: its positions must not advance.
            if let Some(a) = &ack {
                a.lost();
            }
            drop(permit);
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        if !self.write_with_retry(&events) {
            if let Some(a) = &ack {
                a.lost();
            }
        }
        self.held.push((permit, ack));
        self.held_events += events.len();
        self.flush_due = true;
        let more_queued = self.queued.fetch_sub(1, Ordering::AcqRel) > 1;
        let since = *self.held_since.get_or_insert_with(Instant::now);
        if !more_queued || self.held_events >= self.batch_max_events || since.elapsed() >= self.batch_max {
            // Counted and logged inside; a failed flush is retried.
            let _ = self.flush_held(ctx);
        } else if self.held.len() == 1 {
            ctx.notify_later(FlushDue, self.batch_max);
        }
    }
}

impl Handler<DrainSpill> for SinkActor {
    type Result = ();

    /// Writes one chunk of the spill, flushes, consumes it, and asks for the
    /// next; other messages (a stop) are handled in between.
    fn handle(&mut self, _: DrainSpill, ctx: &mut Self::Context) {
        let Some(overflow) = self.overflow.clone() else { return };
        if self.sink.is_none() {
            return;
        }
        if let Some((chunk, written)) = self.unflushed_replay.take() {
            self.finish_replay(&overflow, chunk, written, ctx);
            return;
        }
        if self.past_deadline() {
            // What is left stays on disk for the next start.
            return;
        }
        let chunk = match overflow.next(self.batch_max_events) {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return,
            Err(e) => {
                self.counters.errors.inc();
                tracing::error!(sink = %self.name, error = %e, "cannot read the spill; retrying");
                ctx.notify_later(DrainSpill, SPILL_RECHECK * 10);
                return;
            }
        };
        let mut gap = None;
        if let Some(c) = &chunk.corruption {
            tracing::error!(
                sink = %self.name,
                segment = %c.segment.display(),
                offset = c.offset,
                bytes_cut = c.bytes_cut,
                "spill file is damaged (torn or corrupt record); cut there, the events stored after it are lost"
            );
            let event = corruption_gap(&self.name, &self.connection, chunk.events.last(), c);
            self.gaps_total.get_or_create(&Metrics::source(&event.source)).inc();
            gap = Some(event);
        }
        let written = self.write_with_retry(&chunk.events)
            && gap.as_ref().map_or(true, |g| self.write_with_retry(std::slice::from_ref(g)));
        self.finish_replay(&overflow, chunk, written, ctx);
    }
}

impl SinkActor {
    /// Flushes a replayed chunk and consumes it from the spill; a failed
    /// flush keeps it (not consumed) and only the flush is tried again.
    fn finish_replay(
        &mut self,
        overflow: &Overflow,
        chunk: crate::delivery::spill::Chunk,
        written: bool,
        ctx: &mut Context<Self>,
    ) {
        if self.flush_held(ctx).is_err() && written {
            self.unflushed_replay = Some((chunk, written));
            ctx.notify_later(DrainSpill, RETRY_INITIAL);
            return;
        }
        if let Err(e) = overflow.consumed(&chunk, !written) {
            tracing::error!(sink = %self.name, error = %e, "cannot update the spill after replay; events may be written again");
        }
        ctx.notify(DrainSpill);
    }
}

impl Handler<FlushDue> for SinkActor {
    type Result = ();

    fn handle(&mut self, _: FlushDue, ctx: &mut Self::Context) {
        if self.held_since.is_some_and(|t| t.elapsed() >= self.batch_max) {
            let _ = self.flush_held(ctx);
        }
    }
}

impl Handler<Flush> for SinkActor {
    type Result = Result<(), SinkError>;

    fn handle(&mut self, _: Flush, ctx: &mut Self::Context) -> Self::Result {
        self.flush_due = false;
        self.flush_held(ctx)
    }
}

impl Handler<Close> for SinkActor {
    type Result = Result<(), SinkError>;

    fn handle(&mut self, _: Close, ctx: &mut Self::Context) -> Self::Result {
        let result = self.flush_held(ctx);
        let late = self.past_deadline();
        if let Some(overflow) = &self.overflow {
            if late && (self.kept_at_stop > 0 || overflow.active()) {
                tracing::warn!(
                    sink = %self.name,
                    events = self.kept_at_stop,
                    spill_bytes = overflow.bytes(),
                    "stop_timeout_s passed before the queue drained: {} queued events went to the spill, which keeps what is left for the next start",
                    self.kept_at_stop
                );
            }
            // A replayed chunk whose flush failed until now: consumed only if
            // this last flush worked, else it is replayed at the next start.
            if let Some((chunk, written)) = self.unflushed_replay.take() {
                if result.is_ok() {
                    if let Err(e) = overflow.consumed(&chunk, !written) {
                        tracing::error!(sink = %self.name, error = %e, "cannot update the spill after replay; events may be written again");
                    }
                }
            }
            overflow.close();
        }

        // What the last flush could not hand over is lost with the sink.
        for (_, ack) in self.held.drain(..) {
            if let Some(a) = &ack {
                a.lost();
            }
        }
        if let Some(sink) = self.sink.take() {
            // Dropping is a sink's last chance to finish (the file sink syncs).
            if let Err(e) = guarded(move || {
                drop(sink);
                Ok(())
            }) {
                tracing::error!(sink = %self.name, error = %e, "closing the sink failed");
            }
        }
        ctx.stop();
        result
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Condvar;

    use std::path::PathBuf;

    use chrono::TimeZone;

    use super::*;

    const TWEET: EventKind = EventKind::new("tweet");
    const DELETE: EventKind = EventKind::new("delete");
    const UPDATE: EventKind = EventKind::new("update");
    const NOTIFICATION: EventKind = EventKind::new("notification");

    /// 2026-11-22T10:00:00Z.
    const T0: i64 = 1_795_341_600;

    /// Long enough for any queued work on a loaded CI machine; tests only
    /// wait this long when they are about to fail.
    const PATIENCE: Duration = Duration::from_secs(10);

    fn event(source: &str, kind: EventKind, id: u64) -> Event {
        Event {
            source: Arc::from(source),
            kind,
            id: Some(id.to_string().into()),
            received_at: Utc.timestamp_opt(T0 + id as i64, 0).single().expect("valid test time"),
            connection: Arc::from(format!("{source}/0")),
            for_user: None,
            stream: None,
            payload: Bytes::from(format!("{{\"n\":{id}}}")),
        }
    }

    fn tweets(source: &str, ids: std::ops::Range<u64>) -> Arc<[Event]> {
        ids.map(|id| event(source, TWEET, id)).collect()
    }

    /// A closed gate blocks the sink's writes until it opens; it opens on drop
    /// too, so a failing test does not leave a thread waiting forever.
    #[derive(Clone, Default)]
    struct Gate(Arc<(Mutex<bool>, Condvar)>);

    impl Gate {
        fn open(&self) {
            *self.0 .0.lock().unwrap_or_else(PoisonError::into_inner) = true;
            self.0 .1.notify_all();
        }

        fn wait(&self) {
            let mut open = self.0 .0.lock().unwrap_or_else(PoisonError::into_inner);
            while !*open {
                open = self.0 .1.wait(open).unwrap_or_else(PoisonError::into_inner);
            }
        }
    }

    struct OpenOnDrop(Gate);

    impl Drop for OpenOnDrop {
        fn drop(&mut self) {
            self.0.open();
        }
    }

    /// Records what it is given; can block, fail or panic on demand.
    #[derive(Clone, Default)]
    struct Recorder {
        written: Arc<Mutex<Vec<Event>>>,
        flushes: Arc<AtomicUsize>,
        fail_writes: Arc<AtomicUsize>,
        panic_next: Arc<AtomicBool>,
        dropped: Arc<AtomicBool>,
        gate: Option<Gate>,
        write_delay: Option<Duration>,
    }

    impl Recorder {
        fn written(&self) -> Vec<Event> {
            self.written.lock().unwrap_or_else(PoisonError::into_inner).clone()
        }

        fn ids(&self) -> Vec<String> {
            self.written().iter().map(|e| e.id.as_deref().unwrap_or("-").to_owned()).collect()
        }
    }

    struct RecordingSink(Recorder);

    impl Sink for RecordingSink {
        fn write(&mut self, events: &[Event]) -> Result<(), SinkError> {
            if let Some(gate) = &self.0.gate {
                gate.wait();
            }
            if let Some(delay) = self.0.write_delay {
                std::thread::sleep(delay);
            }
            if self.0.panic_next.swap(false, Ordering::SeqCst) {
                panic!("test sink told to panic");
            }
            if self.0.fail_writes.load(Ordering::SeqCst) > 0 {
                self.0.fail_writes.fetch_sub(1, Ordering::SeqCst);
                return Err(SinkError::Other("test sink told to fail".into()));
            }
            self.0.written.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(events);
            Ok(())
        }

        fn flush(&mut self) -> Result<(), SinkError> {
            self.0.flushes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    impl Drop for RecordingSink {
        fn drop(&mut self) {
            self.0.dropped.store(true, Ordering::SeqCst);
        }
    }

    fn options(buffer: usize, when_full: WhenFull) -> SinkOptions {
        SinkOptions {
            name: "archive".into(),
            batch_max_events: 1024,
            batch_max: Duration::from_millis(50),
            buffer,
            when_full,
            kinds: None,
            sources: None,
            spill: SpillOptions {
                dir: PathBuf::new(),
                max_bytes: 1 << 20,
                segment_bytes: 1 << 16,
                after: Duration::ZERO,
            },
        }
    }

    fn start(recorder: &Recorder, options: SinkOptions, metrics: &Metrics) -> SinkHandle {
        start_sink(Box::new(RecordingSink(recorder.clone())), options, metrics.clone()).expect("sink starts")
    }

    async fn within<F: Future>(what: &str, fut: F) -> F::Output {
        match tokio::time::timeout(PATIENCE, fut).await {
            Ok(out) => out,
            Err(_) => panic!("{what} did not finish within {PATIENCE:?}"),
        }
    }

    fn counter(family: &Family<crate::metrics::SinkLabel, Counter>) -> u64 {
        family.get_or_create(&Metrics::sink("archive")).get()
    }

    #[actix_rt::test]
    async fn order_is_preserved_across_many_batches() {
        let recorder = Recorder::default();
        let metrics = Metrics::default();
        let sink = start(&recorder, options(16, WhenFull::Block), &metrics);
        let mut expected = Vec::new();
        let mut next = 0;
        for round in 0..200 {
            // Every seventh batch is bigger than the queue and gets split.
            let size = if round % 7 == 0 { 40 } else { 1 + round % 5 };
            let batch = tweets("a", next..next + size);
            expected.extend((next..next + size).map(|id| id.to_string()));
            next += size;
            within("deliver", sink.deliver(&batch)).await;
        }
        within("flush", sink.flush()).await.expect("flush succeeds");
        assert_eq!(recorder.ids(), expected);
        assert_eq!(counter(&metrics.sink_events_total), next);
        assert_eq!(sink.queue_depth(), 0);
        assert_eq!(metrics.sink_queue_depth.get_or_create(&Metrics::sink("archive")).get(), 0);
        within("stop", sink.stop()).await;
    }

    #[actix_rt::test]
    async fn kinds_and_sources_filter_events() {
        let recorder = Recorder::default();
        let mut opts = options(100, WhenFull::Block);
        opts.kinds = Some(vec![TWEET, UPDATE]);
        opts.sources = Some(vec!["election".into(), "fedi".into()]);
        let sink = start(&recorder, opts, &Metrics::default());
        assert_eq!(sink.name(), "archive");

        let events: Arc<[Event]> = vec![
            event("election", TWEET, 1),
            event("election", DELETE, 2),
            event("other", TWEET, 3),
            event("fedi", UPDATE, 4),
            event("fedi", NOTIFICATION, 5),
        ]
        .into();
        assert!(sink.accepts(&events[0]));
        assert!(!sink.accepts(&events[1]));
        assert!(!sink.accepts(&events[2]));
        within("deliver", sink.deliver(&events)).await;
        within("deliver", sink.deliver(&tweets("other", 10..20))).await;
        within("deliver", sink.deliver(&tweets("election", 20..22))).await;
        within("flush", sink.flush()).await.expect("flush succeeds");
        assert_eq!(recorder.ids(), ["1", "4", "20", "21"]);
        within("stop", sink.stop()).await;
    }

    #[actix_rt::test]
    async fn block_holds_the_caller_until_the_sink_has_room() {
        let gate = Gate::default();
        let _open = OpenOnDrop(gate.clone());
        let recorder = Recorder { gate: Some(gate.clone()), ..Recorder::default() };
        let metrics = Metrics::default();
        let sink = start(&recorder, options(4, WhenFull::Block), &metrics);

        let events = tweets("a", 0..6);
        let delivery = sink.deliver(&events);
        tokio::pin!(delivery);
        // The first four fill the queue; the last two must wait for room.
        let early = tokio::time::timeout(Duration::from_millis(200), &mut delivery).await;
        assert!(early.is_err(), "deliver returned while the queue was full");
        assert_eq!(sink.queue_depth(), 4);
        assert_eq!(metrics.sink_queue_depth.get_or_create(&Metrics::sink("archive")).get(), 4);
        assert!(recorder.written().is_empty());

        gate.open();
        within("deliver after the gate opened", &mut delivery).await;
        within("flush", sink.flush()).await.expect("flush succeeds");
        assert_eq!(recorder.ids(), ["0", "1", "2", "3", "4", "5"]);
        assert_eq!(sink.queue_depth(), 0);
        assert_eq!(metrics.sink_queue_depth.get_or_create(&Metrics::sink("archive")).get(), 0);
        assert_eq!(counter(&metrics.sink_dropped_total), 0);
        within("stop", sink.stop()).await;
    }

    #[actix_rt::test]
    async fn drop_newest_drops_counts_and_writes_one_gap_per_source() {
        let gate = Gate::default();
        let _open = OpenOnDrop(gate.clone());
        let recorder = Recorder { gate: Some(gate.clone()), ..Recorder::default() };
        let metrics = Metrics::default();
        let sink = start(&recorder, options(4, WhenFull::DropNewest), &metrics);

        within("deliver", sink.deliver(&tweets("a", 0..4))).await;
        assert_eq!(sink.queue_depth(), 4);
        // Full: these return at once and are dropped.
        within("deliver", sink.deliver(&tweets("a", 10..13))).await;
        within("deliver", sink.deliver(&tweets("b", 20..22))).await;
        within("deliver", sink.deliver(&tweets("a", 13..14))).await;
        assert_eq!(counter(&metrics.sink_dropped_total), 6);

        gate.open();
        within("flush", sink.flush()).await.expect("flush succeeds");
        within("deliver", sink.deliver(&tweets("a", 30..31))).await;
        within("deliver", sink.deliver(&tweets("a", 31..32))).await;
        within("flush", sink.flush()).await.expect("flush succeeds");

        let written = recorder.written();
        let kinds: Vec<EventKind> = written.iter().map(|e| e.kind).collect();
        let gap = EventKind::GAP;
        assert_eq!(kinds, [TWEET, TWEET, TWEET, TWEET, gap, gap, TWEET, TWEET]);
        assert_eq!(recorder.ids()[6..], ["30", "31"]);

        let gap_a = &written[4];
        assert_eq!(&*gap_a.source, "a");
        assert_eq!(&*gap_a.connection, "sink/archive");
        assert_eq!(gap_a.id, None);
        let payload: serde_json::Value = serde_json::from_slice(&gap_a.payload).expect("gap payload is JSON");
        assert_eq!(payload["reason"], "sink_full");
        assert_eq!(payload["sink"], "archive");
        assert_eq!(payload["dropped"], 4);
        assert_eq!(payload["from"], "2026-11-22T10:00:10.000000Z");
        assert_eq!(payload["to"], "2026-11-22T10:00:13.000000Z");
        assert!(gap_a.payload.starts_with(b"{\"reason\":\"sink_full\",\"sink\":\"archive\",\"dropped\":4,"));

        let gap_b = &written[5];
        assert_eq!(&*gap_b.source, "b");
        let payload: serde_json::Value = serde_json::from_slice(&gap_b.payload).expect("gap payload is JSON");
        assert_eq!(payload["dropped"], 2);

        assert_eq!(metrics.gaps_total.get_or_create(&Metrics::source("a")).get(), 1);
        assert_eq!(metrics.gaps_total.get_or_create(&Metrics::source("b")).get(), 1);
        assert_eq!(counter(&metrics.sink_events_total), 8);
        assert_eq!(sink.queue_depth(), 0);
        within("stop", sink.stop()).await;
    }

    #[actix_rt::test]
    async fn drop_newest_keeps_what_fits() {
        let gate = Gate::default();
        let _open = OpenOnDrop(gate.clone());
        let recorder = Recorder { gate: Some(gate.clone()), ..Recorder::default() };
        let metrics = Metrics::default();
        let sink = start(&recorder, options(4, WhenFull::DropNewest), &metrics);

        within("deliver", sink.deliver(&tweets("a", 0..3))).await;
        within("deliver", sink.deliver(&tweets("a", 3..6))).await;
        assert_eq!(counter(&metrics.sink_dropped_total), 2);
        gate.open();
        within("flush", sink.flush()).await.expect("flush succeeds");
        assert_eq!(recorder.ids(), ["0", "1", "2", "3"]);
        within("stop", sink.stop()).await;
    }

    #[actix_rt::test]
    async fn a_sink_filtering_out_gaps_gets_none() {
        let gate = Gate::default();
        let _open = OpenOnDrop(gate.clone());
        let recorder = Recorder { gate: Some(gate.clone()), ..Recorder::default() };
        let metrics = Metrics::default();
        let mut opts = options(2, WhenFull::DropNewest);
        opts.kinds = Some(vec![TWEET]);
        let sink = start(&recorder, opts, &metrics);

        within("deliver", sink.deliver(&tweets("a", 0..2))).await;
        within("deliver", sink.deliver(&tweets("a", 2..4))).await;
        gate.open();
        within("flush", sink.flush()).await.expect("flush succeeds");
        within("deliver", sink.deliver(&tweets("a", 4..6))).await;
        within("flush", sink.flush()).await.expect("flush succeeds");
        assert_eq!(recorder.ids(), ["0", "1", "4", "5"]);
        assert_eq!(counter(&metrics.sink_dropped_total), 2);
        assert_eq!(metrics.gaps_total.get_or_create(&Metrics::source("a")).get(), 0);
        within("stop", sink.stop()).await;
    }

    #[actix_rt::test]
    async fn a_failing_sink_is_retried_then_its_events_dropped() {
        let recorder = Recorder::default();
        let metrics = Metrics::default();
        let sink = start(&recorder, options(100, WhenFull::Block), &metrics);

        // Two failures, then success on the third attempt.
        recorder.fail_writes.store(2, Ordering::SeqCst);
        within("deliver", sink.deliver(&tweets("a", 0..2))).await;
        within("flush", sink.flush()).await.expect("flush succeeds");
        assert_eq!(recorder.ids(), ["0", "1"]);
        assert_eq!(counter(&metrics.sink_errors_total), 2);

        // Fails every attempt: dropped and counted.
        recorder.fail_writes.store(WRITE_ATTEMPTS as usize, Ordering::SeqCst);
        within("deliver", sink.deliver(&tweets("a", 2..5))).await;
        within("flush", sink.flush()).await.expect("flush succeeds");
        assert_eq!(counter(&metrics.sink_errors_total), 2 + u64::from(WRITE_ATTEMPTS));
        assert_eq!(counter(&metrics.sink_dropped_total), 3);

        // Later batches still go through.
        within("deliver", sink.deliver(&tweets("a", 5..6))).await;
        within("flush", sink.flush()).await.expect("flush succeeds");
        assert_eq!(recorder.ids(), ["0", "1", "5"]);
        assert_eq!(counter(&metrics.sink_events_total), 3);
        within("stop", sink.stop()).await;
    }

    #[actix_rt::test]
    async fn a_panicking_sink_counts_as_an_error() {
        let recorder = Recorder::default();
        let metrics = Metrics::default();
        let sink = start(&recorder, options(10, WhenFull::Block), &metrics);
        recorder.panic_next.store(true, Ordering::SeqCst);
        within("deliver", sink.deliver(&tweets("a", 0..1))).await;
        within("flush", sink.flush()).await.expect("flush succeeds");
        assert_eq!(recorder.ids(), ["0"]);
        assert_eq!(counter(&metrics.sink_errors_total), 1);
        within("stop", sink.stop()).await;
    }

    #[actix_rt::test]
    async fn flush_returns_after_queued_events_are_written() {
        let recorder = Recorder { write_delay: Some(Duration::from_millis(20)), ..Recorder::default() };
        let sink = start(&recorder, options(1000, WhenFull::Block), &Metrics::default());
        for n in 0..5 {
            within("deliver", sink.deliver(&tweets("a", n * 5..n * 5 + 5))).await;
        }
        let flushes_before = recorder.flushes.load(Ordering::SeqCst);
        within("flush", sink.flush()).await.expect("flush succeeds");
        assert_eq!(recorder.written().len(), 25);
        assert!(recorder.flushes.load(Ordering::SeqCst) > flushes_before);
        within("stop", sink.stop()).await;
    }

    #[actix_rt::test]
    async fn stop_writes_what_is_queued_and_closes_the_sink() {
        let recorder = Recorder { write_delay: Some(Duration::from_millis(10)), ..Recorder::default() };
        let metrics = Metrics::default();
        let sink = start(&recorder, options(100, WhenFull::Block), &metrics);
        for n in 0..3 {
            within("deliver", sink.deliver(&tweets("a", n * 2..n * 2 + 2))).await;
        }
        within("stop", sink.stop()).await;
        assert_eq!(recorder.written().len(), 6);
        assert!(recorder.dropped.load(Ordering::SeqCst), "the sink was dropped, running its final flush");

        within("deliver after stop", sink.deliver(&tweets("a", 10..12))).await;
        assert_eq!(counter(&metrics.sink_dropped_total), 2);
        assert!(within("flush after stop", sink.flush()).await.is_err());
        within("second stop", sink.stop()).await;
    }

    fn spilling(dir: &std::path::Path, buffer: usize) -> SinkOptions {
        let mut opts = options(buffer, WhenFull::Spill);
        opts.spill =
            SpillOptions { dir: dir.to_path_buf(), max_bytes: 1 << 24, segment_bytes: 1 << 12, after: Duration::ZERO };
        opts
    }

    #[actix_rt::test]
    async fn spill_keeps_the_producer_reading_and_replays_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let gate = Gate::default();
        let _open = OpenOnDrop(gate.clone());
        let recorder = Recorder { gate: Some(gate.clone()), ..Recorder::default() };
        let metrics = Metrics::default();
        let sink = start(&recorder, spilling(dir.path(), 4), &metrics);
        // The sink is held: a `block` sink would stop the caller after 4 events.
        for n in 0..50 {
            within("deliver while the sink is held", sink.deliver(&tweets("a", n * 10..n * 10 + 10))).await;
        }
        assert!(sink.spilled());
        assert!(metrics.spill_bytes.get_or_create(&Metrics::sink("archive")).get() > 0);
        gate.open();
        let expected: Vec<String> = (0..500).map(|i| i.to_string()).collect();
        within("replay", async {
            while recorder.written().len() < 500 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert_eq!(recorder.ids(), expected);
        within("spill idle", async {
            while sink.spilled() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert_eq!(metrics.spill_bytes.get_or_create(&Metrics::sink("archive")).get(), 0);
        within("stop", sink.stop()).await;
    }

    #[actix_rt::test]
    async fn a_full_queue_waits_spill_after_for_room_before_it_spills() {
        let dir = tempfile::tempdir().expect("temp dir");
        let after = Duration::from_millis(300);
        let mut opts = spilling(dir.path(), 4);
        opts.spill.after = after;

        // A slow sink (every write takes 20 ms) frees room well within
        // `after`: the producer is paced and nothing goes to disk.
        let slow = Recorder { write_delay: Some(Duration::from_millis(20)), ..Recorder::default() };
        let metrics = Metrics::default();
        let sink = start(&slow, opts.clone(), &metrics);
        for n in 0..10 {
            within("deliver to a slow sink", sink.deliver(&tweets("a", n * 4..n * 4 + 4))).await;
            assert!(!sink.spilled(), "batch {n} spilled although the sink keeps freeing room");
        }
        within("flush", sink.flush()).await.expect("flush succeeds");
        assert_eq!(slow.written().len(), 40);
        within("stop", sink.stop()).await;

        // A held sink frees nothing: the batch that does not fit waits
        // `after`, then spills, and the producer reads on.
        let gate = Gate::default();
        let _open = OpenOnDrop(gate.clone());
        let held = Recorder { gate: Some(gate.clone()), ..Recorder::default() };
        let sink = start(&held, opts, &Metrics::default());
        within("fill the memory queue", sink.deliver(&tweets("b", 0..4))).await;
        let started = Instant::now();
        within("deliver past a full queue", sink.deliver(&tweets("b", 4..8))).await;
        let waited = started.elapsed();
        assert!(sink.spilled(), "held past spill_after, the overflow spills");
        assert!(waited >= after, "spilled after {waited:?}, before spill_after ({after:?})");
        let started = Instant::now();
        within("deliver while spilling", sink.deliver(&tweets("b", 8..12))).await;
        assert!(started.elapsed() < after, "once spilling, later batches do not wait again");
        gate.open();
        within("replay", async {
            while held.written().len() < 12 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert_eq!(held.ids(), (0..12).map(|i| i.to_string()).collect::<Vec<_>>());
        within("stop", sink.stop()).await;
    }

    #[actix_rt::test]
    async fn a_restart_replays_what_was_spilled_before_new_events() {
        let dir = tempfile::tempdir().expect("temp dir");
        let gate = Gate::default();
        let _open = OpenOnDrop(gate.clone());
        let first = Recorder { gate: Some(gate.clone()), ..Recorder::default() };
        let metrics = Metrics::default();
        let mut opts = spilling(dir.path(), 2);
        opts.batch_max_events = 4;
        let sink = start(&first, opts.clone(), &metrics);
        within("deliver into memory", sink.deliver(&tweets("a", 0..2))).await;
        within("deliver into the spill", sink.deliver(&tweets("a", 2..20))).await;
        assert!(sink.spilled());
        // The stop is queued behind the held write and one replay chunk, so
        // most of the spill is still on disk when the sink closes.
        let stopping = actix_rt::spawn({
            let sink = sink.clone();
            async move { sink.stop().await }
        });
        gate.open();
        within("stop", stopping).await.expect("stop task");
        let before: Vec<String> = first.ids();
        assert!(before.len() < 20, "the stop came before the spill was replayed: {before:?}");

        let second = Recorder::default();
        let sink = start(&second, opts, &metrics);
        within("deliver after the restart", sink.deliver(&tweets("a", 100..103))).await;
        within("replay", async {
            while before.len() + second.written().len() < 23 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let mut all = before;
        all.extend(second.ids());
        let expected: Vec<String> = (0..20).chain(100..103).map(|i| i.to_string()).collect();
        assert_eq!(all, expected);
        within("stop again", sink.stop()).await;
    }
}
