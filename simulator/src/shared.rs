//! The state every worker thread and stream shares (`Shared`): the settings
//! taken from the config, the fault script and attempt counter, the logs, the
//! site streams by id, the broadcast hub, the Mastodon and Jetstream state,
//! the count of upgraded connections actix still holds, the `reset_all`
//! epoch and the stop.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::config::{SimCredentials, SimulatorConfig};
use super::fanout::Hub;
use super::jetstream_state;
use super::mastodon_state;
use super::records::{lock, push_capped, ConnSlot, ConnectionRecord, ControlCall, SentMessage};
use super::scenario::{AttemptScript, Scenario};
use super::site::SiteConn;
use super::ws_conn::OpenBodies;

/// The connection log keeps this many records: a client in a reconnect loop
/// with a 5000-id follow list must not grow the simulator without bound.
pub const MAX_CONNECTION_RECORDS: usize = 10_000;

/// The control-call log keeps this many records.
pub const MAX_CONTROL_CALLS: usize = 10_000;

/// State shared by every worker thread and stream.
pub(crate) struct Shared {
    pub(crate) started: Instant,
    /// The bound address (instance discovery announces it).
    pub(crate) addr: SocketAddr,
    pub(crate) rate: u32,
    pub(crate) keepalive: Duration,
    pub(crate) credentials: Vec<SimCredentials>,
    pub(crate) record_sent: usize,
    script: Mutex<(Scenario, u64)>,
    log: Mutex<VecDeque<Arc<ConnSlot>>>,
    /// Streams answered 200 and not yet ended, by `ConnSlot::serial`.
    open: Mutex<BTreeMap<u64, Arc<ConnSlot>>>,
    serials: AtomicU64,
    sent: Mutex<VecDeque<SentMessage>>,
    control_calls: Mutex<VecDeque<ControlCall>>,
    pub(crate) sites: Mutex<HashMap<String, Arc<SiteConn>>>,
    /// Shared with the broadcast generator task.
    pub(crate) hub: Arc<Hub>,
    pub(crate) mastodon: mastodon_state::State,
    pub(crate) jetstream: jetstream_state::State,
    /// Every WebSocket endpoint's upgraded bodies (`SimHandle::stop` waits
    /// for none).
    pub(crate) upgraded: Arc<OpenBodies>,
    /// Bumped by `SimHandle::reset_all`; every open stream's producer
    /// watches it. Subscribed under the `open` lock (`open_stream`), so a
    /// stream is either counted and reset or opened after the bump and left
    /// alone.
    resets: watch::Sender<u64>,
    pub(crate) stop: watch::Sender<bool>,
}

impl Shared {
    pub(crate) fn new(config: &SimulatorConfig, addr: SocketAddr) -> Shared {
        Shared {
            started: Instant::now(),
            addr,
            rate: config.rate,
            keepalive: Duration::from_millis(config.keepalive_ms.max(1)),
            credentials: config.credentials.clone(),
            record_sent: config.record_sent,
            script: Mutex::new((config.scenario.clone(), 0)),
            log: Mutex::new(VecDeque::new()),
            open: Mutex::new(BTreeMap::new()),
            serials: AtomicU64::new(0),
            sent: Mutex::new(VecDeque::new()),
            control_calls: Mutex::new(VecDeque::new()),
            sites: Mutex::new(HashMap::new()),
            hub: Arc::default(),
            mastodon: mastodon_state::State::new(config),
            jetstream: jetstream_state::State::new(config),
            upgraded: Arc::default(),
            resets: watch::channel(0).0,
            stop: watch::channel(false).0,
        }
    }

    /// Replaces the script and resets the attempt counter
    /// (`SimHandle::set_scenario`).
    pub(crate) fn set_scenario(&self, scenario: Scenario) {
        *lock(&self.script) = (scenario, 0);
        self.hub.rearm();
    }

    /// Takes the next attempt number and its script.
    pub(crate) fn next_attempt(&self) -> (u64, AttemptScript) {
        let mut guard = lock(&self.script);
        let attempt = guard.1;
        guard.1 += 1;
        (attempt, guard.0.script_for(attempt).clone())
    }

    /// Logs a streaming request that was refused (or failed the upgrade):
    /// it never counts as open.
    pub(crate) fn log_refused(&self, slot: ConnSlot) -> Arc<ConnSlot> {
        self.log_slot(slot)
    }

    /// Logs a stream answered 200 (or 101, a WebSocket), open until
    /// `close`; the receiver tells its producer about `reset_all`.
    pub(crate) fn open_stream(&self, slot: ConnSlot) -> (Arc<ConnSlot>, watch::Receiver<u64>) {
        let slot = self.log_slot(slot);
        let mut open = lock(&self.open);
        let resets = self.resets.subscribe();
        open.insert(slot.serial, Arc::clone(&slot));
        drop(open);
        (slot, resets)
    }

    fn log_slot(&self, mut slot: ConnSlot) -> Arc<ConnSlot> {
        slot.serial = self.serials.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(slot);
        push_capped(&mut lock(&self.log), Arc::clone(&slot), MAX_CONNECTION_RECORDS);
        slot
    }

    /// `SimHandle::reset_all`: how many open streams were told.
    pub(crate) fn reset_all(&self) -> usize {
        let open = lock(&self.open);
        // Counted before the bump: a producer on another worker may log its
        // "reset_all" end before this thread could count it. One that already
        // logged another end (and is about to leave `open`) is not reset.
        let told = open.values().filter(|s| !s.is_closed()).count();
        self.resets.send_modify(|epoch| *epoch = epoch.wrapping_add(1));
        told
    }

    /// The stream of `slot` has ended.
    pub(crate) fn close(&self, slot: &ConnSlot) {
        lock(&self.open).remove(&slot.serial);
    }

    /// `SimHandle::carried`.
    pub(crate) fn carried(&self) -> BTreeMap<u64, BTreeSet<u64>> {
        let open: Vec<Arc<ConnSlot>> = lock(&self.open).values().cloned().collect();
        // In opening order, so a later connection with the same attempt
        // number (after `set_scenario`) wins.
        open.iter().filter(|s| !s.is_closed()).map(|s| (s.attempt, s.follows().into_iter().collect())).collect()
    }

    /// Logs a control-stream request, dropping the oldest beyond the bound.
    pub(crate) fn log_control(&self, call: ControlCall) {
        push_capped(&mut lock(&self.control_calls), call, MAX_CONTROL_CALLS);
    }

    /// Keeps `msg` if recording is on, dropping the oldest beyond the bound.
    pub(crate) fn record(&self, msg: SentMessage) {
        if self.record_sent == 0 {
            return;
        }
        push_capped(&mut lock(&self.sent), msg, self.record_sent);
    }

    /// `SimHandle::connections`.
    pub(crate) fn connections(&self) -> Vec<ConnectionRecord> {
        lock(&self.log).iter().map(|s| s.snapshot()).collect()
    }

    /// `SimHandle::sent`.
    pub(crate) fn sent(&self) -> Vec<SentMessage> {
        lock(&self.sent).iter().cloned().collect()
    }

    /// `SimHandle::control_calls`.
    pub(crate) fn control_calls(&self) -> Vec<ControlCall> {
        lock(&self.control_calls).iter().cloned().collect()
    }
}
