//! Live per-connection state and counters, shared between a `StreamActor`
//! (which writes them) and the stats line, `probe` and the control API
//! (which read them). Atomics only: the read path never blocks the stream.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::event::EventKind;
use crate::metrics::{Metrics, SourceCauseLabels, SourceKindLabels, SourceStateLabels};

/// A connection's lifecycle state, as `/streams` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnectionState {
    /// Request sent, waiting for the status.
    Connecting = 0,
    /// Streaming.
    Connected = 1,
    /// Waiting before the next attempt.
    BackingOff = 2,
    /// Nothing received within the stall timeout (until the reconnect starts).
    Stalled = 3,
    /// Failed for good; not retried.
    Failed = 4,
    /// Stopped on request.
    Stopped = 5,
}

impl ConnectionState {
    /// Every state, in order.
    pub const ALL: [ConnectionState; 6] = [
        ConnectionState::Connecting,
        ConnectionState::Connected,
        ConnectionState::BackingOff,
        ConnectionState::Stalled,
        ConnectionState::Failed,
        ConnectionState::Stopped,
    ];

    /// The name used by `/streams` and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::BackingOff => "backing_off",
            ConnectionState::Stalled => "stalled",
            ConnectionState::Failed => "failed",
            ConnectionState::Stopped => "stopped",
        }
    }

    fn from_u8(v: u8) -> ConnectionState {
        ConnectionState::ALL.get(v as usize).copied().unwrap_or(ConnectionState::Stopped)
    }
}

/// Counters and state of one connection.
#[derive(Debug)]
pub struct ConnectionStats {
    /// Connection id, `source/N`.
    pub id: Arc<str>,
    /// Source name.
    pub source: Arc<str>,
    carries: Mutex<Carries>,
    state: AtomicU8,
    messages: AtomicU64,
    bytes: AtomicU64,
    reconnects: AtomicU64,
    last_message_ms: AtomicI64,
    last_byte_ms: AtomicI64,
    /// Learned mean gap between events, µs (`u64::MAX`: nothing learned yet).
    usual_gap_us: AtomicU64,
    /// The silence tolerated before a probe, ms.
    liveness_bound_ms: AtomicU64,
    /// Silent past its liveness bound, not yet cleared by an event or a probe.
    silent: AtomicBool,
    limit_track: AtomicU64,
    last_error: Mutex<Option<String>>,
    counters: SourceCounters,
}

/// The predicates a connection carries, for `/streams`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carries {
    /// Follow ids.
    pub follow: Vec<u64>,
    /// Track phrases.
    pub track: Vec<String>,
    /// Location boxes.
    pub locations: Vec<String>,
    /// Mastodon streams (config spelling).
    pub streams: Vec<String>,
    /// Repository DIDs (Jetstream); empty with no follow either = every DID.
    pub dids: Vec<String>,
}

/// Pre-resolved metric handles for one source, so the hot path adds to an
/// atomic instead of looking up a label set per event.
#[derive(Debug, Clone)]
pub struct SourceCounters {
    metrics: Metrics,
    source: Arc<str>,
    /// Events by kind: the source kind's catalogue, then any other kind met.
    events: Vec<(EventKind, Counter)>,
    /// Bytes read.
    pub bytes: Counter,
    /// Malformed messages.
    pub malformed: Counter,
    /// Oversized messages.
    pub oversized: Counter,
    /// Events dropped as duplicates.
    pub duplicates: Counter,
    /// Gap events written.
    pub gaps: Counter,
    /// Liveness probes run.
    pub liveness_probes: Counter,
    states: Vec<Gauge>,
}

impl SourceCounters {
    /// Resolves the handles for `source`, whose kind emits `kinds`.
    pub fn new(metrics: &Metrics, source: &str, kinds: &[EventKind]) -> Self {
        let events = kinds.iter().chain([EventKind::GAP, EventKind::UNKNOWN].iter()).fold(Vec::new(), |mut v, k| {
            if !v.iter().any(|(known, _)| known == k) {
                v.push((*k, event_counter(metrics, source, *k)));
            }
            v
        });
        let states = ConnectionState::ALL
            .iter()
            .map(|s| {
                metrics
                    .connections
                    .get_or_create(&SourceStateLabels { source: source.to_owned(), state: s.as_str().to_owned() })
                    .clone()
            })
            .collect();
        // Every family is present from the first scrape: the known causes at 0.
        for cause in crate::error::DisconnectCause::LABELS {
            let _ = metrics
                .reconnects_total
                .get_or_create(&SourceCauseLabels { source: source.to_owned(), cause: cause.to_owned() });
        }
        let label = Metrics::source(source);
        let _ = metrics.limit_omitted.get_or_create(&label);
        SourceCounters {
            events,
            bytes: metrics.bytes_total.get_or_create(&label).clone(),
            malformed: metrics.malformed_total.get_or_create(&label).clone(),
            oversized: metrics.oversized_total.get_or_create(&label).clone(),
            duplicates: metrics.duplicates_dropped_total.get_or_create(&label).clone(),
            gaps: metrics.gaps_total.get_or_create(&label).clone(),
            liveness_probes: metrics.liveness_probes_total.get_or_create(&label).clone(),
            states,
            metrics: metrics.clone(),
            source: source.into(),
        }
    }

    /// Counts `n` events of `kind`; a kind outside the catalogue is looked up.
    pub fn count_events(&self, kind: EventKind, n: u64) {
        match self.events.iter().find(|(k, _)| *k == kind) {
            Some((_, c)) => {
                c.inc_by(n);
            }
            None => {
                event_counter(&self.metrics, &self.source, kind).inc_by(n);
            }
        }
    }

    /// Counts a reconnect by cause label.
    pub fn reconnect(&self, cause: &str) {
        self.metrics
            .reconnects_total
            .get_or_create(&SourceCauseLabels { source: self.source.to_string(), cause: cause.to_owned() })
            .inc();
    }
}

fn event_counter(metrics: &Metrics, source: &str, kind: EventKind) -> Counter {
    metrics
        .events_total
        .get_or_create(&SourceKindLabels { source: source.to_owned(), kind: kind.as_str().to_owned() })
        .clone()
}

impl ConnectionStats {
    /// A new connection in state `connecting` (counted in the connections gauge).
    pub fn new(id: Arc<str>, source: Arc<str>, carries: Carries, counters: SourceCounters) -> Arc<Self> {
        counters.states[ConnectionState::Connecting as usize].inc();
        Arc::new(ConnectionStats {
            id,
            source,
            carries: Mutex::new(carries),
            state: AtomicU8::new(ConnectionState::Connecting as u8),
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            last_message_ms: AtomicI64::new(0),
            last_byte_ms: AtomicI64::new(0),
            usual_gap_us: AtomicU64::new(u64::MAX),
            liveness_bound_ms: AtomicU64::new(0),
            silent: AtomicBool::new(false),
            limit_track: AtomicU64::new(0),
            last_error: Mutex::new(None),
            counters,
        })
    }

    /// The metric handles of this connection's source.
    pub fn counters(&self) -> &SourceCounters {
        &self.counters
    }

    /// Current state.
    pub fn state(&self) -> ConnectionState {
        ConnectionState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Moves to `state`, keeping the connections gauge in step.
    pub fn set_state(&self, state: ConnectionState) {
        let old = ConnectionState::from_u8(self.state.swap(state as u8, Ordering::Relaxed));
        if old != state {
            self.counters.states[old as usize].dec();
            self.counters.states[state as usize].inc();
        }
    }

    /// Adds messages read and the time of the newest.
    pub fn add_messages(&self, n: u64, now_ms: i64) {
        self.messages.fetch_add(n, Ordering::Relaxed);
        self.last_message_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Adds bytes read (now).
    pub fn add_bytes(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.bytes.fetch_add(n, Ordering::Relaxed);
        self.counters.bytes.inc_by(n);
        self.last_byte_ms.store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// Events arrived: the learned gap between them and the bound it
    /// implies; the connection is not silent.
    pub fn set_liveness(&self, usual_gap: Option<Duration>, bound: Duration) {
        let gap = usual_gap.map_or(u64::MAX, |g| u64::try_from(g.as_micros()).unwrap_or(u64::MAX - 1));
        self.usual_gap_us.store(gap, Ordering::Relaxed);
        self.liveness_bound_ms.store(u64::try_from(bound.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.silent.store(false, Ordering::Relaxed);
    }

    /// Marks the connection silent past its liveness bound, or clears it
    /// (an event came, a probe found the stream merely quiet, a reconnect).
    pub fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::Relaxed);
    }

    /// Counts a reconnect.
    pub fn add_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the cumulative `limit.track` of this connection's latest notice.
    pub fn set_limit_track(&self, track: u64) {
        self.limit_track.store(track, Ordering::Relaxed);
    }

    /// Resets per-connection-lifetime values when a new connection opens
    /// (limit counts are cumulative per connection).
    pub fn connection_opened(&self) {
        self.limit_track.store(0, Ordering::Relaxed);
    }

    /// The follow ids it carries changed (site control streams).
    pub fn set_follows(&self, follow: Vec<u64>) {
        if let Ok(mut c) = self.carries.lock() {
            c.follow = follow;
        }
    }

    /// The Mastodon streams it carries changed.
    pub fn set_streams(&self, streams: Vec<String>) {
        if let Ok(mut c) = self.carries.lock() {
            c.streams = streams;
        }
    }

    /// The DIDs it carries changed.
    pub fn set_dids(&self, dids: Vec<String>) {
        if let Ok(mut c) = self.carries.lock() {
            c.dids = dids;
        }
    }

    /// Records the last error, for `/streams` and the stats line.
    pub fn set_last_error(&self, error: impl Into<String>) {
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = Some(error.into());
        }
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self) -> ConnectionSnapshot {
        ConnectionSnapshot {
            id: self.id.to_string(),
            source: self.source.to_string(),
            state: self.state(),
            carries: self.carries.lock().map(|c| c.clone()).unwrap_or_default(),
            messages: self.messages.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            last_message_ms: match self.last_message_ms.load(Ordering::Relaxed) {
                0 => None,
                v => Some(v),
            },
            last_byte_ms: match self.last_byte_ms.load(Ordering::Relaxed) {
                0 => None,
                v => Some(v),
            },
            usual_gap: match self.usual_gap_us.load(Ordering::Relaxed) {
                u64::MAX => None,
                us => Some(Duration::from_micros(us)),
            },
            liveness_bound: match self.liveness_bound_ms.load(Ordering::Relaxed) {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
            silent: self.silent.load(Ordering::Relaxed),
            limit_track: self.limit_track.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }
}

impl Drop for ConnectionStats {
    fn drop(&mut self) {
        self.counters.states[self.state() as usize].dec();
    }
}

/// A copy of one connection's stats.
#[derive(Debug, Clone)]
pub struct ConnectionSnapshot {
    /// Connection id.
    pub id: String,
    /// Source name.
    pub source: String,
    /// State.
    pub state: ConnectionState,
    /// What it carries.
    pub carries: Carries,
    /// Messages read.
    pub messages: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Reconnects so far.
    pub reconnects: u64,
    /// Unix ms of the last message.
    pub last_message_ms: Option<i64>,
    /// Unix ms of the last byte read (heartbeats included).
    pub last_byte_ms: Option<i64>,
    /// The learned mean gap between events.
    pub usual_gap: Option<Duration>,
    /// The silence tolerated before a liveness probe (known once events came).
    pub liveness_bound: Option<Duration>,
    /// Silent past its liveness bound right now.
    pub silent: bool,
    /// Last cumulative limit count.
    pub limit_track: u64,
    /// Last error.
    pub last_error: Option<String>,
}

/// Every connection's stats, for reporting. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct StatsRegistry {
    inner: Arc<Mutex<Vec<Arc<ConnectionStats>>>>,
}

impl StatsRegistry {
    /// Adds a connection.
    pub fn add(&self, stats: Arc<ConnectionStats>) {
        if let Ok(mut v) = self.inner.lock() {
            v.push(stats);
        }
    }

    /// Removes a connection by id.
    pub fn remove(&self, id: &str) {
        if let Ok(mut v) = self.inner.lock() {
            v.retain(|s| &*s.id != id);
        }
    }

    /// Sets `streamherd_limit_omitted{source}` to the sum, over the source's
    /// connections, of the last cumulative `limit.track` each saw (seed 004).
    pub fn refresh_limit_omitted(&self, metrics: &Metrics) -> u64 {
        let mut per_source: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        for s in self.snapshots() {
            *per_source.entry(s.source).or_default() += s.limit_track;
        }
        for (source, n) in &per_source {
            metrics.limit_omitted.get_or_create(&Metrics::source(source)).set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        per_source.values().sum()
    }

    /// Snapshots of every connection, in start order.
    pub fn snapshots(&self) -> Vec<ConnectionSnapshot> {
        self.inner.lock().map(|v| v.iter().map(|s| s.snapshot()).collect()).unwrap_or_default()
    }
}
