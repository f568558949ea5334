//! The log of Mastodon WebSocket connections (`MastodonWsInfo`: attempt,
//! subscriptions, message counts).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::records::{lock, push_capped};

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

/// The last `MAX_MASTODON_WS_RECORDS` WebSocket connections.
#[derive(Default)]
pub(crate) struct WsLog {
    log: Mutex<VecDeque<Arc<Mutex<MastodonWsInfo>>>>,
}

impl WsLog {
    /// Logs a new connection; its task updates the entry in place.
    pub(crate) fn register(&self, attempt: u64) -> Arc<Mutex<MastodonWsInfo>> {
        let info = Arc::new(Mutex::new(MastodonWsInfo { attempt, open: true, ..MastodonWsInfo::default() }));
        push_capped(&mut lock(&self.log), Arc::clone(&info), MAX_MASTODON_WS_RECORDS);
        info
    }

    /// Every logged connection, in opening order.
    pub(crate) fn snapshot(&self) -> Vec<MastodonWsInfo> {
        lock(&self.log).iter().map(|i| lock(i).clone()).collect()
    }
}
