//! The broadcast generator behind `broadcast = true` filter and sample
//! streams: one simulator-wide source whose every message goes to every
//! connection subscribed at that moment, as the real service fanned one
//! firehose out to all matching connections. Two overlapping connections (a
//! make-before-break handover) therefore see the same messages.
//!
//! The generator starts with the first subscriber and then runs at the
//! simulator's `rate` until the simulator stops, or until it has produced
//! `limit` messages when the script that started it sets one. Subscribers may
//! come and go meanwhile; what it produces while nobody is subscribed is lost,
//! as on the real service. With `rate = 0` it runs as fast as the slowest
//! subscriber takes (a bounded distance ahead of it) and waits while nobody
//! is subscribed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, watch, Notify};

use super::pace::Pacer;
use super::payloads::{Generator, GeneratorOptions, StreamKind};
use super::records::lock;
use super::scenario::{AttemptScript, Mix, MAX_BROADCAST_CAPACITY};
use super::wire;

/// With `rate = 0` the generator runs at most this many messages (and at most
/// half the capacity) ahead of the slowest subscriber, so unthrottled runs
/// neither lag anyone nor fill memory.
const UNTHROTTLED_AHEAD: usize = 256;

/// One broadcast message, shared by every subscriber's queue.
pub(crate) struct Frame {
    /// The SPEC section 4 kind.
    pub(crate) kind: &'static str,
    /// The id a client must report, if the kind has one.
    pub(crate) id: Option<u64>,
    /// Exactly the message bytes, without framing.
    pub(crate) payload: Bytes,
    written: AtomicBool,
}

impl Frame {
    /// True for exactly one caller: the first connection that writes this
    /// message records it in `sent()`.
    pub(crate) fn first_write(&self) -> bool {
        !self.written.swap(true, Ordering::AcqRel)
    }
}

/// A subscriber's queue.
pub(crate) type Feed = broadcast::Receiver<Arc<Frame>>;

/// The simulator-wide broadcast state.
#[derive(Default)]
pub(crate) struct Hub {
    state: Mutex<HubState>,
    produced: AtomicU64,
    /// Wakes an unthrottled generator waiting for its first subscriber.
    arrived: Notify,
}

#[derive(Default)]
struct HubState {
    /// The running generator's channel, for new subscribers.
    tx: Option<broadcast::Sender<Arc<Frame>>>,
    /// The generator stopped at its `limit`; later subscribers end at once
    /// until `set_scenario` re-arms it.
    finished: bool,
}

impl Hub {
    /// Messages produced by broadcast generators since the simulator started.
    pub(crate) fn produced(&self) -> u64 {
        self.produced.load(Ordering::Relaxed)
    }

    /// Lets the next subscriber start a fresh generator after one reached
    /// its limit (a running generator is left alone).
    pub(crate) fn rearm(&self) {
        lock(&self.state).finished = false;
    }
}

/// Subscribes connection `attempt`, starting the generator with its script
/// when none runs (at `rate`, until `stop`). None: the generator already
/// reached its limit.
pub(crate) fn subscribe(
    hub: &Arc<Hub>,
    attempt: u64,
    script: &AttemptScript,
    rate: u32,
    stop: watch::Receiver<bool>,
) -> Option<Feed> {
    let mut state = lock(&hub.state);
    if let Some(tx) = &state.tx {
        let rx = tx.subscribe();
        drop(state);
        hub.arrived.notify_one();
        return Some(rx);
    }
    if state.finished {
        return None;
    }
    let capacity = script.broadcast_capacity.clamp(1, MAX_BROADCAST_CAPACITY);
    let (tx, rx) = broadcast::channel(capacity);
    state.tx = Some(tx.clone());
    drop(state);
    let source = Source {
        hub: Arc::clone(hub),
        rate,
        stop,
        tx,
        ahead: UNTHROTTLED_AHEAD.min(capacity / 2).max(1),
        limit: script.limit,
        mix: script.mix,
        seed: attempt.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xB0AD,
    };
    tracing::debug!(attempt, capacity, limit = ?script.limit, "broadcast generator started");
    actix_rt::spawn(source.run());
    Some(rx)
}

/// The generator task.
struct Source {
    hub: Arc<Hub>,
    rate: u32,
    stop: watch::Receiver<bool>,
    tx: broadcast::Sender<Arc<Frame>>,
    ahead: usize,
    limit: Option<u64>,
    mix: Mix,
    seed: u64,
}

impl Source {
    async fn run(self) {
        let mut stop = self.stop.clone();
        let mut gen = Generator::new(GeneratorOptions {
            stream: StreamKind::Filter,
            seed: self.seed,
            stall_warnings: false,
            stringify_friend_ids: false,
            site_users: Vec::new(),
            control_uri: None,
        });
        // Only the mix: junk, silences and cuts are per connection.
        let script = AttemptScript { mix: self.mix, ..AttemptScript::default() };
        let mut pacer = Pacer::new(self.rate);
        let mut n: u64 = 0;
        let end = loop {
            if self.limit.is_some_and(|l| n >= l) {
                break "limit";
            }
            if *stop.borrow() {
                break "server stop";
            }
            if pacer.throttled() {
                if !self.paced(&mut pacer, &mut stop).await {
                    break "server stop";
                }
            } else {
                if !self.room(&mut stop).await {
                    break "server stop";
                }
                if n % 64 == 63 {
                    // Share the worker thread with the subscribers on it.
                    tokio::task::yield_now().await;
                }
            }
            n += 1;
            let r = gen.next(n, &script);
            let frame = Arc::new(Frame {
                kind: r.kind,
                id: r.id,
                payload: Bytes::copy_from_slice(&gen.buf),
                written: AtomicBool::new(false),
            });
            self.hub.produced.fetch_add(1, Ordering::Relaxed);
            // An error means nobody is subscribed: the message is lost, as it
            // would be on the real service between two connections.
            let _ = self.tx.send(frame);
        };
        if end == "limit" {
            lock(&self.hub.state).finished = true;
        }
        tracing::debug!(messages = n, end, "broadcast generator stopped");
        // Drop clears the hub's sender: subscribers drain, then see Closed.
    }

    /// Waits for one message's credit. False: the simulator is stopping.
    async fn paced(&self, pacer: &mut Pacer, stop: &mut watch::Receiver<bool>) -> bool {
        // Bounded: each turn waits for a tick, and a tick adds credit.
        while !pacer.try_take() {
            tokio::select! {
                _ = pacer.tick() => {}
                _ = wire::stopped(stop) => return false,
            }
        }
        true
    }

    /// Unthrottled: waits for a subscriber and for room ahead of the slowest
    /// one. False: the simulator is stopping.
    async fn room(&self, stop: &mut watch::Receiver<bool>) -> bool {
        // Bounded: every turn waits for a subscriber, a millisecond or a stop.
        loop {
            if self.tx.receiver_count() == 0 {
                tokio::select! {
                    _ = self.hub.arrived.notified() => continue,
                    _ = wire::stopped(stop) => return false,
                }
            }
            if self.tx.len() < self.ahead {
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                _ = wire::stopped(stop) => return false,
            }
        }
    }
}

impl Drop for Source {
    // Also runs when a worker's runtime drops the task at shutdown.
    fn drop(&mut self) {
        let mut state = lock(&self.hub.state);
        if state.tx.as_ref().is_some_and(|tx| tx.same_channel(&self.tx)) {
            state.tx = None;
        }
    }
}
