//! The simulator's records of what it saw and did: one entry per streaming
//! request (`ConnSlot`, read out as `ConnectionRecord`), per control call and
//! per message written, plus the helpers every module fills them in with.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;

/// One request to a streaming endpoint, as the simulator saw it.
#[derive(Clone, Debug)]
pub struct ConnectionRecord {
    /// 0, 1, 2, ... across all streaming requests (the scenario's index).
    pub attempt: u64,
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Decoded query and form parameters, `oauth_*` excluded; a repeated
    /// key's values are joined with ",".
    pub params: BTreeMap<String, String>,
    /// Whether the OAuth signature verified.
    pub auth_ok: bool,
    /// The response status (101 for an accepted Mastodon WebSocket).
    pub status: u16,
    /// When the request arrived: a monotonic `Instant` taken as the
    /// handler starts (the head, and a form body, already read), not a wall
    /// clock; `SimHandle::started_at` is the simulator's start on the same
    /// clock (`/_sim/connections` reports ms since it).
    pub opened_at: Instant,
    /// When the response or stream ended (None while open): when the end was
    /// decided, for an abrupt end once the FIN or RST is queued behind the
    /// body's last bytes.
    pub closed_at: Option<Instant>,
    /// Messages written (keep-alives not counted).
    pub messages_sent: u64,
    /// Mastodon: events this connection carries but withheld because it was
    /// muted (script `mute_after`, `SimHandle::mastodon_mute_all`), counted
    /// as the connection takes them; 0 elsewhere.
    pub withheld: u64,
    /// How it ended: "status", "client closed", "close_after", "reset",
    /// "disconnect", "limit", "lagged" (a broadcast subscriber fell more than
    /// `broadcast_capacity` messages behind), "reset_all"
    /// (`SimHandle::reset_all`), "server stop"; Mastodon also "revoked"
    /// (`SimHandle::mastodon_revoke`), and WebSockets "ping timeout" (no Pong
    /// in time) and "binary" (closed with 1003); empty while open.
    pub end: String,
    /// The follow ids the connection carries: site streams the connect
    /// request's `follow` plus every accepted `add_user` minus every
    /// `remove_user` (the list `info.json` reports, in that order); filter
    /// streams the request's `follow`; empty otherwise and for refused
    /// requests. After the close, what it carried when it closed.
    pub follows: Vec<u64>,
    /// Site streams: the `control_uri` announced on the stream.
    pub control_uri: Option<String>,
}

/// One request to a site stream's control URI, as the simulator answered it.
#[derive(Clone, Debug)]
pub struct ControlCall {
    /// The attempt number of the stream addressed; `u64::MAX` when the stream
    /// id is unknown or the stream is closed.
    pub attempt: u64,
    /// "add_user", "remove_user", "info" or "friends_ids".
    pub op: &'static str,
    /// The call's `user_id`s as parsed (at most the first 100 valid ones of a
    /// refused call); empty for `info`.
    pub user_ids: Vec<u64>,
    /// The response status.
    pub status: u16,
    /// When the request was answered.
    pub at: Instant,
}

/// One message the simulator wrote.
#[derive(Clone, Debug)]
pub struct SentMessage {
    /// The connection attempt it went out on.
    pub attempt: u64,
    /// The SPEC section 4 kind a client must classify it as, or "malformed" /
    /// "oversized" for injected junk.
    pub kind: &'static str,
    /// The id a client must report (SPEC 4 `id`), if the kind has one.
    pub id: Option<String>,
    /// Site streams: the envelope's `for_user`.
    pub for_user: Option<u64>,
    /// Exactly the message bytes, without framing.
    pub payload: Bytes,
}

/// Which follows a connection carries (`ConnectionRecord::follows`).
pub(crate) enum Follows {
    /// None: sample and user streams, refused requests.
    None,
    /// Filter streams: the request's `follow`, read from `params` when asked
    /// (a 5000-id list is not kept twice).
    Request,
    /// Site streams: the carried list, changed by the control stream. The one
    /// source of truth for `info.json`, `carried()` and the connection log.
    Live(Arc<Mutex<Vec<u64>>>),
}

/// A live entry of the connection log; the producer updates it in place.
pub(crate) struct ConnSlot {
    /// Unique per simulator (attempt numbers restart at `set_scenario`).
    pub(crate) serial: u64,
    pub(crate) attempt: u64,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) params: BTreeMap<String, String>,
    pub(crate) auth_ok: bool,
    pub(crate) status: u16,
    pub(crate) opened_at: Instant,
    pub(crate) messages: AtomicU64,
    pub(crate) withheld: AtomicU64,
    pub(crate) follows: Follows,
    pub(crate) control_uri: Option<String>,
    closed: Mutex<Option<(Instant, &'static str)>>,
}

impl ConnSlot {
    /// The record of streaming request `req`, with its visible parameters.
    pub(crate) fn for_request(
        req: &actix_web::HttpRequest,
        attempt: u64,
        visible: &BTreeMap<String, String>,
        auth_ok: bool,
        status: u16,
        opened_at: Instant,
    ) -> ConnSlot {
        ConnSlot::new(
            attempt,
            req.method().as_str().to_string(),
            req.path().to_string(),
            visible.clone(),
            auth_ok,
            status,
            opened_at,
        )
    }

    pub(crate) fn new(
        attempt: u64,
        method: String,
        path: String,
        params: BTreeMap<String, String>,
        auth_ok: bool,
        status: u16,
        opened_at: Instant,
    ) -> ConnSlot {
        ConnSlot {
            serial: 0,
            attempt,
            method,
            path,
            params,
            auth_ok,
            status,
            opened_at,
            messages: AtomicU64::new(0),
            withheld: AtomicU64::new(0),
            follows: Follows::None,
            control_uri: None,
            closed: Mutex::new(None),
        }
    }

    /// Whether the stream or response has ended.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.closed).is_some()
    }

    /// The follow ids carried now (or when it closed).
    pub(crate) fn follows(&self) -> Vec<u64> {
        match &self.follows {
            Follows::None => Vec::new(),
            Follows::Request => self
                .params
                .get("follow")
                .map(|v| v.split(',').filter_map(|id| id.trim().parse().ok()).collect())
                .unwrap_or_default(),
            Follows::Live(carried) => lock(carried).clone(),
        }
    }

    /// Records the end; the first reason wins.
    pub(crate) fn finish(&self, end: &'static str) {
        let mut closed = lock(&self.closed);
        if closed.is_none() {
            *closed = Some((Instant::now(), end));
        }
    }

    /// The entry as `SimHandle::connections` reports it.
    pub(crate) fn snapshot(&self) -> ConnectionRecord {
        let closed = *lock(&self.closed);
        ConnectionRecord {
            attempt: self.attempt,
            method: self.method.clone(),
            path: self.path.clone(),
            params: self.params.clone(),
            auth_ok: self.auth_ok,
            status: self.status,
            opened_at: self.opened_at,
            closed_at: closed.map(|(t, _)| t),
            messages_sent: self.messages.load(Ordering::Relaxed),
            withheld: self.withheld.load(Ordering::Relaxed),
            end: closed.map(|(_, e)| e.to_string()).unwrap_or_default(),
            follows: self.follows(),
            control_uri: self.control_uri.clone(),
        }
    }
}

/// Request parameters as the connection log shows them: repeated keys joined
/// with commas, `hidden` ones (credentials) left out.
pub(crate) fn visible_params(params: &[(String, String)], hidden: impl Fn(&str) -> bool) -> BTreeMap<String, String> {
    let mut visible: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in params.iter().filter(|(k, _)| !hidden(k)) {
        visible
            .entry(k.clone())
            .and_modify(|old| {
                old.push(',');
                old.push_str(v);
            })
            .or_insert_with(|| v.clone());
    }
    visible
}

/// A poisoned lock only means another thread panicked mid-update of a log;
/// the log is still worth reading.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Appends `item` to a bounded log, first dropping the oldest entries so
/// that at most `cap` (at least one) remain.
pub(crate) fn push_capped<T>(q: &mut VecDeque<T>, item: T, cap: usize) {
    while q.len() >= cap.max(1) {
        q.pop_front();
    }
    q.push_back(item);
}
