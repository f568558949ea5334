//! The Jetstream half of the simulator's shared state: the bounded,
//! time-ordered history every connection replays from, the monotonic
//! microsecond clock, the live subscribers with their bounded outboxes, the
//! connection log (`JetstreamConnInfo`) and the shared zstd compressor.
//!
//! One lock orders everything: events are stamped, stored and handed to the
//! live outboxes under the history lock, and a replaying connection joins
//! the live subscribers under that same lock once it has read the newest
//! event. So replay and live meet with no gap and no duplicate. (The real
//! server can skip about a second of events at that cutover, protocols.md
//! D+.2; the simulator does it exactly.)

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Notify};

use super::config::SimulatorConfig;
use super::jetstream_events::{is_second_op, population_did, Mixer, Stored};
use super::jetstream_filter::Filter;
use super::records::{lock, push_capped};

/// The history keeps this many events; the oldest go first.
pub const MAX_JETSTREAM_HISTORY: usize = 200_000;

/// `SimHandle::jetstream_connections` keeps this many connections. Lower
/// than the other logs: one entry may hold 10,000 DIDs.
pub const MAX_JETSTREAM_RECORDS: usize = 2_000;

/// Options updates kept per connection (the most recent).
pub const MAX_OPTIONS_UPDATES: usize = 1_000;

/// The zstd dictionary of `compress=true` (protocols.md D+.1).
pub(crate) const ZSTD_DICTIONARY: &[u8] = include_bytes!("../../actors/src/jetstream/zstd_dictionary");

/// zstd level: the Go encoder's default.
const ZSTD_LEVEL: i32 = 3;

/// Most events one replay step scans under the history lock.
const REPLAY_SCAN: usize = 2_048;

/// One `/subscribe` request, as the simulator saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JetstreamConnInfo {
    /// Its attempt number (`ConnectionRecord::attempt`).
    pub attempt: u64,
    /// When the request arrived.
    pub opened_at: Instant,
    /// When it ended (None while open).
    pub closed_at: Option<Instant>,
    /// 101 when upgraded; else the status answered (400, or a scripted one).
    pub status: u16,
    /// The decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// The `cursor` as parsed (a future one is kept here but serves live).
    pub cursor: Option<i64>,
    /// Events go out zstd-compressed (`compress=true` or `Socket-Encoding`).
    pub compress: bool,
    /// `requireHello=true`.
    pub require_hello: bool,
    /// The collection filter now, as given (empty: all).
    pub wanted_collections: Vec<String>,
    /// The DID filter now (empty: all).
    pub wanted_dids: BTreeSet<String>,
    /// Every `options_update` received (and any message that ended the
    /// connection as one), the most recent `MAX_OPTIONS_UPDATES`.
    pub options_updates: Vec<OptionsUpdateRecord>,
    /// Events sent (injected junk not counted).
    pub events_sent: u64,
    /// `time_us` of the first event sent.
    pub first_time_us: Option<u64>,
    /// `time_us` of the last event sent.
    pub last_time_us: Option<u64>,
    /// Events skipped for `maxMessageSizeBytes`.
    pub skipped_oversize: u64,
    /// Pings the server sent.
    pub pings_sent: u64,
    /// Pongs the client sent.
    pub pongs_received: u64,
    /// Pings the client sent (each answered with a Pong).
    pub client_pings: u64,
    /// How it ended: "status" (not upgraded), "client closed",
    /// "close_after", "reset", "disconnect", "limit", "lagged" (the live
    /// outbox was full: dropped without a close frame), "bad
    /// options_update" (closed with 1000 and the error), "server stop";
    /// None while open.
    pub end: Option<String>,
}

/// One `options_update` as the simulator handled it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionsUpdateRecord {
    /// When it arrived.
    pub at: Instant,
    /// Its `wantedCollections` (empty when it did not parse).
    pub wanted_collections: Vec<String>,
    /// How many DIDs its `wantedDids` listed (with repeats).
    pub dids: usize,
    /// Whether it was applied.
    pub accepted: bool,
    /// Why not: the close reason sent.
    pub error: Option<String>,
}

/// A log entry; the connection task updates it in place. The filter is
/// kept once, shared with the subscriber, and copied out by `snapshot`.
pub(crate) struct LogEntry {
    pub(crate) info: JetstreamConnInfo,
    pub(crate) filter: Arc<Filter>,
}

impl LogEntry {
    /// Records an options update, dropping the oldest beyond the bound.
    pub(crate) fn update(&mut self, record: OptionsUpdateRecord) {
        let updates = &mut self.info.options_updates;
        if updates.len() >= MAX_OPTIONS_UPDATES {
            updates.remove(0);
        }
        updates.push(record);
    }

    /// Records the end; the first one wins.
    pub(crate) fn finish(&mut self, end: &str) {
        if self.info.end.is_none() {
            self.info.end = Some(end.to_string());
            self.info.closed_at = Some(Instant::now());
        }
    }
}

/// A connection's side of live delivery: its filter (which the publisher
/// reads) and its outbox.
pub(crate) struct LiveSub {
    filter: Mutex<Arc<Filter>>,
    tx: mpsc::Sender<Arc<Stored>>,
    /// Set (with a permit) when the outbox was full: the task drops the
    /// connection.
    kicked: AtomicBool,
    pub(crate) kick: Notify,
}

impl LiveSub {
    pub(crate) fn filter(&self) -> Arc<Filter> {
        Arc::clone(&lock(&self.filter))
    }

    pub(crate) fn set_filter(&self, filter: Arc<Filter>) {
        *lock(&self.filter) = filter;
    }

    pub(crate) fn lagged(&self) -> bool {
        self.kicked.load(Ordering::SeqCst)
    }

    fn wants(&self, ev: &Stored) -> bool {
        lock(&self.filter).wants(&ev.did, ev.collection())
    }
}

/// Where a replay stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ReplayFrom {
    /// The first event whose `time_us`, as a decimal string, is not below
    /// the cursor's (the server's Pebble lower bound compares bytes).
    Cursor(String),
    /// The first event after this `time_us`.
    After(u64),
}

/// What a replay step found.
pub(crate) enum Replayed {
    /// Events (already filtered; maybe none) were appended; more may follow.
    More,
    /// Nothing newer: the connection is now a live subscriber.
    Live,
}

struct History {
    events: VecDeque<Arc<Stored>>,
    /// The clock's last value.
    last_us: u64,
    mixer: Mixer,
}

impl History {
    /// The monotonic clock (`monotonic.Clock`): now in µs since the epoch,
    /// or the last value plus one if now is not later.
    fn stamp(&mut self) -> u64 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        self.last_us = if now <= self.last_us { self.last_us + 1 } else { now };
        self.last_us
    }

    fn push(&mut self, ev: Arc<Stored>) {
        push_capped(&mut self.events, ev, MAX_JETSTREAM_HISTORY);
    }
}

/// The Jetstream state every connection shares.
pub(crate) struct State {
    history: Mutex<History>,
    /// Live subscribers by id; lock it only with `history` held (or alone).
    subscribers: Mutex<BTreeMap<u64, Arc<LiveSub>>>,
    next_sub: AtomicU64,
    log: Mutex<VecDeque<Arc<Mutex<LogEntry>>>>,
    /// Made at the first compressed event.
    compressor: Mutex<Option<zstd::bulk::Compressor<'static>>>,
    /// The generator's events per second (0: none).
    pub(crate) rate: u32,
    /// The population the generator and the publish hook draw from.
    pub(crate) population: usize,
    /// The server ping interval.
    pub(crate) ping: Duration,
    /// Events a live subscriber's outbox holds.
    pub(crate) outbox: usize,
    /// Whether the generator task runs.
    pub(crate) generating: AtomicBool,
}

impl State {
    pub(crate) fn new(config: &SimulatorConfig) -> State {
        State {
            history: Mutex::new(History { events: VecDeque::new(), last_us: 0, mixer: Mixer::default() }),
            subscribers: Mutex::new(BTreeMap::new()),
            next_sub: AtomicU64::new(0),
            log: Mutex::new(VecDeque::new()),
            compressor: Mutex::new(None),
            rate: config.jetstream_rate,
            population: config.jetstream_dids.max(1),
            ping: Duration::from_millis(config.jetstream_ping_ms.max(1)),
            outbox: config.jetstream_outbox.max(1),
            generating: AtomicBool::new(false),
        }
    }

    /// Appends `n` events of the mix (event `k` of this call is mix index
    /// `base + k` with DID `did_for(base + k)`) and hands each to the live
    /// subscribers that want it.
    pub(crate) fn publish(&self, base: u64, n: usize, mut did_for: impl FnMut(u64) -> Arc<str>) -> Vec<Arc<Stored>> {
        let mut out = Vec::with_capacity(n);
        let mut h = lock(&self.history);
        let mut subs = lock(&self.subscribers);
        for k in 0..n as u64 {
            let i = base + k;
            let did = did_for(i);
            let time_us = h.stamp();
            let ev = Arc::new(h.mixer.event(i, did, time_us));
            h.push(Arc::clone(&ev));
            deliver(&mut subs, &ev);
            out.push(ev);
        }
        out
    }

    /// Appends copies of `originals` as another instance of the firehose
    /// would send them: the same events (DID, rev, record, seq), stamped
    /// with this instance's own `time_us`.
    pub(crate) fn publish_copies(&self, originals: &[Arc<Stored>]) -> Vec<Arc<Stored>> {
        let mut h = lock(&self.history);
        let mut subs = lock(&self.subscribers);
        let mut out = Vec::with_capacity(originals.len());
        for o in originals {
            h.mixer.saw(&o.body);
            let time_us = h.stamp();
            let old = format!("\"time_us\":{},", o.time_us);
            let new = format!("\"time_us\":{time_us},");
            let json = String::from_utf8_lossy(&o.json).replacen(&old, &new, 1);
            let ev = Arc::new(Stored {
                time_us,
                did: Arc::clone(&o.did),
                body: o.body.clone(),
                json: Bytes::from(json),
                zstd: OnceLock::new(),
            });
            h.push(Arc::clone(&ev));
            deliver(&mut subs, &ev);
            out.push(ev);
        }
        out
    }

    /// Appends one `sync` event (`SimHandle::jetstream_publish_unknown`).
    pub(crate) fn publish_unknown(&self, did: &str) -> Arc<Stored> {
        let mut h = lock(&self.history);
        let mut subs = lock(&self.subscribers);
        let time_us = h.stamp();
        let ev = Arc::new(h.mixer.sync(Arc::from(did), time_us));
        h.push(Arc::clone(&ev));
        deliver(&mut subs, &ev);
        ev
    }

    /// The whole history, oldest first.
    pub(crate) fn history(&self) -> Vec<Arc<Stored>> {
        lock(&self.history).events.iter().cloned().collect()
    }

    /// A new subscriber (not yet live) with `filter` and an outbox of
    /// `self.outbox` events, and its receiving end.
    pub(crate) fn subscriber(&self, filter: Arc<Filter>) -> (u64, Arc<LiveSub>, mpsc::Receiver<Arc<Stored>>) {
        let (tx, rx) = mpsc::channel(self.outbox);
        let sub = LiveSub { filter: Mutex::new(filter), tx, kicked: AtomicBool::new(false), kick: Notify::new() };
        (self.next_sub.fetch_add(1, Ordering::Relaxed), Arc::new(sub), rx)
    }

    /// Makes `sub` live: every event stored from now on that it wants goes
    /// to its outbox.
    pub(crate) fn go_live(&self, id: u64, sub: &Arc<LiveSub>) {
        let _h = lock(&self.history);
        lock(&self.subscribers).insert(id, Arc::clone(sub));
    }

    /// The next replay step from `from`: up to `REPLAY_SCAN` events are
    /// scanned and those `sub` wants appended to `out`. When there is
    /// nothing newer, `sub` goes live under the same lock.
    pub(crate) fn replay(
        &self,
        from: &mut ReplayFrom,
        id: u64,
        sub: &Arc<LiveSub>,
        out: &mut VecDeque<Arc<Stored>>,
    ) -> Replayed {
        let h = lock(&self.history);
        let start = match from {
            ReplayFrom::Cursor(c) => {
                let c = c.as_bytes();
                h.events.partition_point(|e| e.time_us.to_string().as_bytes() < c)
            }
            ReplayFrom::After(t) => {
                let t = *t;
                h.events.partition_point(|e| e.time_us <= t)
            }
        };
        let filter = sub.filter();
        let mut last = None;
        for ev in h.events.range(start..).take(REPLAY_SCAN) {
            if filter.wants(&ev.did, ev.collection()) {
                out.push_back(Arc::clone(ev));
            }
            last = Some(ev.time_us);
        }
        match last {
            Some(t) => {
                *from = ReplayFrom::After(t);
                Replayed::More
            }
            None => {
                lock(&self.subscribers).insert(id, Arc::clone(sub));
                Replayed::Live
            }
        }
    }

    /// Ends live delivery to subscriber `id`.
    pub(crate) fn unsubscribe(&self, id: u64) {
        lock(&self.subscribers).remove(&id);
    }

    /// The zstd frame of `ev` (made once, then shared).
    pub(crate) fn compressed(&self, ev: &Stored) -> std::io::Result<Bytes> {
        if let Some(z) = ev.zstd.get() {
            return Ok(z.clone());
        }
        let z = Bytes::from(self.compress(&ev.json)?);
        Ok(ev.zstd.get_or_init(|| z).clone())
    }

    /// One zstd frame of `data` with Jetstream's dictionary (its ID is in
    /// the frame header).
    pub(crate) fn compress(&self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut guard = lock(&self.compressor);
        let compressor = match guard.as_mut() {
            Some(c) => c,
            None => guard.insert(zstd::bulk::Compressor::with_dictionary(ZSTD_LEVEL, ZSTD_DICTIONARY)?),
        };
        compressor.compress(data)
    }

    /// Logs a request; its task updates the entry in place.
    pub(crate) fn register(&self, info: JetstreamConnInfo, filter: Arc<Filter>) -> Arc<Mutex<LogEntry>> {
        let entry = Arc::new(Mutex::new(LogEntry { info, filter }));
        push_capped(&mut lock(&self.log), Arc::clone(&entry), MAX_JETSTREAM_RECORDS);
        entry
    }

    /// Every logged request, in arrival order.
    pub(crate) fn snapshot(&self) -> Vec<JetstreamConnInfo> {
        let entries: Vec<Arc<Mutex<LogEntry>>> = lock(&self.log).iter().cloned().collect();
        entries
            .iter()
            .map(|e| {
                let e = lock(e);
                let mut info = e.info.clone();
                info.wanted_collections = e.filter.collections.clone();
                info.wanted_dids = e.filter.dids.clone();
                info
            })
            .collect()
    }
}

/// Hands `ev` to every live subscriber that wants it; one whose outbox is
/// full is removed and kicked (the server's "drop slow subscribers").
fn deliver(subs: &mut BTreeMap<u64, Arc<LiveSub>>, ev: &Arc<Stored>) {
    subs.retain(|_, sub| {
        if !sub.wants(ev) {
            return true;
        }
        match sub.tx.try_send(Arc::clone(ev)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                sub.kicked.store(true, Ordering::SeqCst);
                sub.kick.notify_one();
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    });
}

/// DIDs for `publish`: `dids` round-robin, except that the second op of a
/// multi-op commit keeps the DID of the first. `dids` must not be empty.
pub(crate) fn round_robin(dids: &[String]) -> impl FnMut(u64) -> Arc<str> {
    let dids: Vec<Arc<str>> = dids.iter().map(|d| Arc::from(d.as_str())).collect();
    move |i| {
        let j = if is_second_op(i) { i - 1 } else { i };
        Arc::clone(&dids[(j % dids.len() as u64) as usize])
    }
}

/// DIDs for the generator: population members at random; the second op of
/// a multi-op commit keeps the DID of the first.
pub(crate) fn scattered(population: usize, seed: u64) -> impl FnMut(u64) -> Arc<str> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut last: Option<Arc<str>> = None;
    move |i| {
        let did = match last.take() {
            Some(prev) if is_second_op(i) => prev,
            _ => Arc::from(population_did(rng.usize(..population))),
        };
        last = Some(Arc::clone(&did));
        did
    }
}
