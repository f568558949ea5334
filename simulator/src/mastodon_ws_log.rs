//! The log of Mastodon WebSocket connections (`MastodonWsInfo`: attempt,
//! subscriptions, message counts) and the count of upgraded connections
//! actix still holds, which `SimHandle::stop` waits on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::records::lock;

/// `SimHandle::mastodon_ws_connections` keeps this many connections.
pub const MAX_MASTODON_WS_RECORDS: usize = 10_000;

/// One Mastodon WebSocket connection, as the simulator saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MastodonWsInfo {
    /// Its attempt number (`ConnectionRecord::attempt`; the connection log
    /// shows it with status 101).
    pub attempt: u64,
    /// Whether it is still open.
    pub open: bool,
    /// The current subscriptions in subscription order, as normalised keys:
    /// "user", "user:notification", "public", "public:media", "public:local",
    /// "public:local:media", "public:remote", "public:remote:media",
    /// "hashtag:<tag>", "hashtag:local:<tag>" (the tag normalised, e.g.
    /// "hashtag:rust"), "list:<id>", "direct". After the close, those it had
    /// when it closed.
    pub subscriptions: Vec<String>,
    /// `subscribe` messages received, valid or not (a `?stream=` in the URL
    /// is not a message).
    pub subscribes: usize,
    /// `unsubscribe` messages received, valid or not.
    pub unsubscribes: usize,
    /// Pongs received.
    pub pongs: usize,
}

/// The last `MAX_MASTODON_WS_RECORDS` WebSocket connections, and how many
/// upgraded connections actix still holds.
#[derive(Default)]
pub(crate) struct WsLog {
    log: Mutex<VecDeque<Arc<Mutex<MastodonWsInfo>>>>,
    /// Live `WsBody`s: a body goes when actix drops its connection (or
    /// finishes the response).
    bodies: AtomicUsize,
    no_bodies: Notify,
}

impl WsLog {
    /// Logs a new connection; its task updates the entry in place.
    pub(crate) fn register(&self, attempt: u64) -> Arc<Mutex<MastodonWsInfo>> {
        let info = Arc::new(Mutex::new(MastodonWsInfo { attempt, open: true, ..MastodonWsInfo::default() }));
        let mut log = lock(&self.log);
        while log.len() >= MAX_MASTODON_WS_RECORDS {
            log.pop_front();
        }
        log.push_back(Arc::clone(&info));
        info
    }

    /// Every logged connection, in opening order.
    pub(crate) fn snapshot(&self) -> Vec<MastodonWsInfo> {
        lock(&self.log).iter().map(|i| lock(i).clone()).collect()
    }

    /// Waits (at most `within`) until actix has dropped every upgraded
    /// connection. A WebSocket ends in two steps (Close frame, then the TCP
    /// connection) after the simulator's stop signal; an actix worker that
    /// is asked to stop while one is still there checks again only a second
    /// later.
    pub(crate) async fn drained(&self, within: Duration) {
        let _ = tokio::time::timeout(within, async {
            loop {
                let gone = self.no_bodies.notified();
                tokio::pin!(gone);
                gone.as_mut().enable();
                if self.bodies.load(Ordering::SeqCst) == 0 {
                    return;
                }
                gone.await;
            }
        })
        .await;
    }

    /// An upgraded connection's body was created.
    pub(crate) fn body_opened(&self) {
        self.bodies.fetch_add(1, Ordering::SeqCst);
    }

    /// An upgraded connection's body was dropped; the last one wakes
    /// `drained`.
    pub(crate) fn body_closed(&self) {
        if self.bodies.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.no_bodies.notify_waiters();
        }
    }
}
