//! One Jetstream connection: the `/subscribe` upgrade with the shard's
//! filters and a cursor, its events classified, WebSocket pings sent and
//! counted, filter changes sent live as `options_update`, and every
//! reconnect resumed from the newest acknowledged `time_us` minus the
//! rewind: the replayed overlap is dropped (by `time_us` on the same
//! instance, by the event's own key on another), and one `gap` event says
//! where the stream was interrupted and whether the replay reached back.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::cursor::{CursorStore, Resume, Seen};
use super::decode::{decode, Unzstd};
use crate::connection::actor::{Conn, ConnectionSpec, Protocol};
use crate::connection::http;
use crate::connection::link::{Input, Link};
use crate::connection::stats::ConnectionStats;
use crate::delivery::ack::OnWritten;
use crate::error::StreamError;
use crate::event::{Event, EventKind};

/// The server refuses these for good: a bad filter or cursor (400), and
/// authorisation refusals a proxy in front of it may send.
const FATAL_STATUSES: [u16; 3] = [400, 401, 403];
/// Past this many bytes of query the DIDs go in a first `options_update`
/// (with `requireHello=true`) instead: 10,000 DIDs are ~460 KB of URL.
const MAX_QUERY_BYTES: usize = 8 * 1024;
/// Keys of the newest events kept to recognise a replay from another
/// instance (whose `time_us` differ): at Jetstream's per-client limit of
/// 5,000 events/s, 13 s of traffic, beyond the default 5 s rewind.
const RECENT_KEYS: usize = 65_536;

/// What one Jetstream connection needs.
#[derive(Debug, Clone)]
pub struct JetstreamConnection {
    /// The shard's index: its key in the cursor store.
    pub index: usize,
    /// `ws(s)://host` of each instance, in failover order.
    pub hosts: Arc<[String]>,
    /// The instance to start with.
    pub host: usize,
    /// Wanted collections (empty = all).
    pub collections: Vec<String>,
    /// Wanted DIDs; `None` = every DID (no DID filter).
    pub dids: Option<Vec<String>>,
    /// zstd frames.
    pub compress: bool,
    /// `maxMessageSizeBytes` (0 = none).
    pub max_message_size_bytes: u64,
    /// Resume this far before the newest acknowledged event.
    pub cursor_rewind: Duration,
    /// Failed attempts in a row before the next instance.
    pub failover_after: u32,
    /// The source's positions.
    pub store: Arc<CursorStore>,
    /// Where the previous run left the DIDs it carries.
    pub resume: Option<Resume>,
}

/// A new filter for a live connection: sent as `options_update`, which
/// replaces both filters (an omitted array means "all").
#[derive(Debug, Clone)]
pub struct SetFilter {
    /// Wanted DIDs; `None` = every DID. Never empty: an emptied shard is closed.
    pub dids: Option<Vec<String>>,
    /// Wanted collections.
    pub collections: Vec<String>,
}

/// An interruption not yet reported: written before the first new event.
#[derive(Debug, Clone)]
struct OpenGap {
    reason: &'static str,
    /// What ended the connection (`None` for a restart).
    cause: Option<String>,
    from: DateTime<Utc>,
    /// The cursor of the request that resumed (`None`: live tail).
    cursor: Option<u64>,
    /// Replayed events dropped as already written.
    replayed: u64,
}

/// Keys of the newest events, bounded.
#[derive(Debug, Default)]
struct Recent {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Recent {
    fn contains(&self, key: u64) -> bool {
        self.set.contains(&key)
    }

    fn insert(&mut self, key: u64) {
        if self.set.insert(key) {
            self.order.push_back(key);
            if self.order.len() > RECENT_KEYS {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// The open connection's state.
struct Session {
    /// The filter changed since it was last sent.
    dirty: bool,
    next_ping: tokio::time::Instant,
    ping_due: bool,
    pings: u64,
    /// The connection reads the live tail: it asked for no cursor, or an
    /// event within the rewind of now arrived. Until then a pong proves
    /// nothing (a replay may still be scanning the server's history).
    live: bool,
}

/// One Jetstream connection's protocol state.
pub struct JetstreamProtocol {
    c: JetstreamConnection,
    id: Arc<str>,
    source: Arc<str>,
    stall_timeout: Duration,
    max_message_bytes: usize,
    ping_every: Duration,
    dids: Option<BTreeSet<String>>,
    collections: Vec<String>,
    host: usize,
    failures: u32,
    unzstd: Option<Unzstd>,
    session: Option<Session>,
    /// The instance and `time_us` of the newest event received: a replay
    /// from that instance drops everything up to it.
    received: Option<(usize, u64)>,
    recent: Recent,
    /// What the previous run wrote, on its instance's clock, until the
    /// replay passes it.
    seen: Option<(String, Seen)>,
    gap: Option<OpenGap>,
    last_event_at: Option<DateTime<Utc>>,
    /// This step's position, recorded once its events are written.
    advance: Option<(u64, Option<u64>)>,
}

impl JetstreamProtocol {
    fn host_url(&self) -> &str {
        self.c.hosts.get(self.host).map_or("", String::as_str)
    }

    fn rewind_us(&self) -> u64 {
        self.c.cursor_rewind.as_micros().min(u128::from(u64::MAX)) as u64
    }

    /// The request URL; `true` when the DIDs must follow in an `options_update`.
    fn url(&self, cursor: Option<u64>) -> (String, bool) {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for c in &self.collections {
            q.append_pair("wantedCollections", c);
        }
        if self.c.compress {
            q.append_pair("compress", "true");
        }
        if self.c.max_message_size_bytes > 0 {
            q.append_pair("maxMessageSizeBytes", &self.c.max_message_size_bytes.to_string());
        }
        if let Some(cursor) = cursor {
            q.append_pair("cursor", &cursor.to_string());
        }
        let mut query = q.finish();
        let mut hello = false;
        if let Some(dids) = &self.dids {
            let mut with = form_urlencoded::Serializer::new(query.clone());
            for d in dids {
                with.append_pair("wantedDids", d);
            }
            let with = with.finish();
            if with.len() <= MAX_QUERY_BYTES {
                query = with;
            } else {
                let mut q = form_urlencoded::Serializer::new(query);
                q.append_pair("requireHello", "true");
                query = q.finish();
                hello = true;
            }
        }
        let mut url = format!("{}/subscribe", self.host_url());
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query);
        }
        (url, hello)
    }

    /// The `options_update` carrying the whole filter.
    fn options_update(&self) -> String {
        let mut payload = serde_json::json!({
            "wantedCollections": self.collections,
            "maxMessageSizeBytes": self.c.max_message_size_bytes,
        });
        if let (Some(dids), Some(map)) = (&self.dids, payload.as_object_mut()) {
            map.insert("wantedDids".into(), serde_json::json!(dids));
        }
        serde_json::json!({ "type": "options_update", "payload": payload }).to_string()
    }

    fn event(&self, kind: EventKind, id: Option<Box<str>>, at: DateTime<Utc>, payload: Bytes) -> Event {
        Event {
            source: self.source.clone(),
            kind,
            id,
            received_at: at,
            connection: self.id.clone(),
            for_user: None,
            stream: None,
            payload,
        }
    }

    fn gap_event(&self, gap: &OpenGap, to: DateTime<Utc>, first_us: Option<u64>) -> Event {
        let t = |d: DateTime<Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let payload = serde_json::json!({
            "reason": gap.reason,
            "cause": gap.cause,
            "from": t(gap.from),
            "to": t(to),
            "host": self.host_url(),
            "cursor": gap.cursor,
            // The schema every family shares calls a resume cursor `cursor_us`.
            "cursor_us": gap.cursor,
            "first_time_us": first_us,
            "replayed": gap.replayed,
            // The replay reached back to events already written: nothing
            // between them and the first new event can be missing.
            "complete": gap.replayed > 0,
        });
        self.event(EventKind::GAP, None, to, Bytes::from(payload.to_string()))
    }

    /// One event's bytes, as sent (decompressed when `compress`).
    fn message(&mut self, payload: Bytes, conn: &mut Conn<Self>) {
        let d = match decode(&payload) {
            Ok(d) => d,
            Err(e) => return conn.malformed(&e.to_string(), &payload),
        };
        if let Some(t) = d.time_us {
            let same_host = self.received.is_some_and(|(h, last)| h == self.host && t <= last);
            let seen = match &self.seen {
                Some((host, seen)) if host == self.host_url() => {
                    let covered = seen.covers(d.did.as_deref(), t);
                    if t > seen.newest() {
                        self.seen = None;
                    }
                    covered
                }
                _ => false,
            };
            if same_host || seen || self.recent.contains(d.key) {
                if let Some(gap) = self.gap.as_mut() {
                    gap.replayed += 1;
                }
                conn.stats.counters().duplicates.inc();
                return;
            }
        }
        let now = Utc::now();
        if let Some(gap) = self.gap.take() {
            conn.push(self.gap_event(&gap, now, d.time_us));
            conn.stats.counters().gaps.inc();
            tracing::info!(connection = %self.id, reason = gap.reason, replayed = gap.replayed, complete = gap.replayed > 0, "stream resumed");
        }
        conn.stats.counters().count_events(d.kind, 1);
        self.recent.insert(d.key);
        self.last_event_at = Some(now);
        if let Some(t) = d.time_us {
            let rewind = self.rewind_us();
            if let Some(s) = self.session.as_mut() {
                s.live |= t.saturating_add(rewind) >= now.timestamp_micros().max(0) as u64;
            }
            let newer = match self.received {
                Some((h, last)) if h == self.host => t > last,
                _ => true,
            };
            if newer {
                self.received = Some((self.host, t));
            }
            let cursor = self.advance.map_or(t, |(c, _)| c.max(t));
            self.advance = Some((cursor, Some(t)));
        }
        conn.push(self.event(d.kind, d.id, now, payload));
    }
}

impl Protocol for JetstreamProtocol {
    type Config = JetstreamConnection;
    type Command = SetFilter;
    type Notice = ();
    type Side = ();

    fn host(&self) -> String {
        crate::settings::authority(self.host_url())
    }

    fn new(c: JetstreamConnection, spec: &ConnectionSpec) -> Self {
        let unzstd = if c.compress {
            match Unzstd::new(spec.max_message_bytes) {
                Ok(u) => Some(u),
                Err(e) => {
                    tracing::error!(connection = %spec.id, error = %e, "cannot load the zstd dictionary");
                    None
                }
            }
        } else {
            None
        };
        // A restart resumes from the stored cursor: that interruption is a gap too.
        let gap = c.resume.as_ref().map(|r| OpenGap {
            reason: "restart",
            cause: None,
            from: DateTime::from_timestamp_micros(r.cursor_us as i64).unwrap_or_else(Utc::now),
            cursor: None,
            replayed: 0,
        });
        let seen = c.resume.as_ref().and_then(|r| Some((r.host.clone()?, r.seen.clone()?)));
        let host =
            c.resume.as_ref().and_then(|r| c.hosts.iter().position(|h| Some(h) == r.host.as_ref())).unwrap_or(c.host);
        JetstreamProtocol {
            id: spec.id.clone(),
            source: spec.source.clone(),
            stall_timeout: spec.stall_timeout,
            max_message_bytes: spec.max_message_bytes,
            ping_every: (spec.stall_timeout / 3).max(Duration::from_millis(10)),
            dids: c.dids.as_ref().map(|d| d.iter().cloned().collect()),
            collections: c.collections.clone(),
            host,
            failures: 0,
            unzstd,
            session: None,
            received: None,
            recent: Recent::default(),
            seen,
            gap,
            last_event_at: None,
            advance: None,
            c,
        }
    }

    async fn open(&mut self, conn: &mut Conn<Self>) -> Result<Link, StreamError> {
        if self.dids.as_ref().is_some_and(BTreeSet::is_empty) {
            // An empty wantedDids means every DID: never ask for that by accident.
            return Err(StreamError::Finished { reason: "no DID left to carry".into() });
        }
        if self.c.compress && self.unzstd.is_none() {
            return Err(StreamError::Fatal { reason: "compress = true, but the zstd dictionary did not load".into() });
        }
        let cursor = match self.c.store.position(self.c.index) {
            Some(p) => Some(p.cursor_us.saturating_sub(self.rewind_us())),
            None => {
                // A new connection reads the live tail, and its start is
                // kept at once: a crash before the first event is written
                // must still resume from here, not from a later live tail.
                let now_us = Utc::now().timestamp_micros().max(0) as u64;
                self.c.store.advance(self.c.index, now_us, None, self.host_url());
                if let Err(e) = self.c.store.flush() {
                    tracing::error!(connection = %self.id, error = %e, "cannot write Jetstream cursors to state_dir");
                }
                None
            }
        };
        let (url, hello) = self.url(cursor);
        if let Some(gap) = self.gap.as_mut() {
            gap.cursor = cursor;
        }
        tracing::info!(connection = %conn.spec.id, host = %self.host_url(), cursor, dids = self.dids.as_ref().map(BTreeSet::len), "connecting (jetstream)");
        let client = http::client(self.stall_timeout);
        let request = client.ws(&url);
        let link =
            http::open_websocket(&conn.spec.id, request, self.stall_timeout, &FATAL_STATUSES, self.max_message_bytes)
                .await?;
        self.session = Some(Session {
            dirty: hello,
            next_ping: tokio::time::Instant::now() + self.ping_every,
            ping_due: false,
            pings: 0,
            live: cursor.is_none(),
        });
        Ok(link)
    }

    async fn opened(&mut self, link: &mut Link, conn: &mut Conn<Self>) -> Result<(), StreamError> {
        conn.stats.set_dids(self.dids.iter().flatten().cloned().collect());
        self.sync(link, conn).await
    }

    fn input(&mut self, input: Input, conn: &mut Conn<Self>) -> Option<StreamError> {
        match input {
            Input::Text(text) => self.message(text, conn),
            Input::Binary(frame) => match self.unzstd.as_mut().map(|u| u.frame(&frame)) {
                Some(Ok(json)) => self.message(Bytes::from(json), conn),
                Some(Err(e)) => conn.malformed(&e.to_string(), &frame),
                None => conn.malformed("a binary frame, but compress is off", &frame),
            },
            Input::Pong if self.session.as_ref().is_some_and(|s| s.live) => {
                // On the live tail the server answered after sending what it
                // had (give or take the rewind): a quiet connection is as far
                // as now, less the rewind.
                let now_us = Utc::now().timestamp_micros().max(0) as u64;
                let quiet = now_us.saturating_sub(self.rewind_us());
                let (cursor, event) = self.advance.unwrap_or((0, None));
                self.advance = Some((cursor.max(quiet), event));
            }
            Input::Oversized { what, len } => conn.oversized(what, len),
            Input::Pong | Input::Bytes(_) | Input::Sse(_) | Input::KeepAlive => {}
        }
        None
    }

    fn apply(&mut self, command: SetFilter, stats: &ConnectionStats) {
        self.dids = command.dids.map(|d| d.into_iter().collect());
        self.collections = command.collections;
        stats.set_dids(self.dids.iter().flatten().cloned().collect());
        if let Some(s) = self.session.as_mut() {
            s.dirty = true;
        }
    }

    async fn sync(&mut self, link: &mut Link, _conn: &mut Conn<Self>) -> Result<(), StreamError> {
        let Some(session) = self.session.as_mut() else { return Ok(()) };
        if session.ping_due {
            session.ping_due = false;
            session.pings += 1;
            let payload = Bytes::from(session.pings.to_string());
            link.ping(payload).await?;
        }
        if session.dirty {
            session.dirty = false;
            if self.dids.as_ref().is_some_and(BTreeSet::is_empty) {
                return Err(StreamError::Finished { reason: "no DID left to carry".into() });
            }
            let update = self.options_update();
            tracing::debug!(connection = %self.id, dids = self.dids.as_ref().map(BTreeSet::len), collections = self.collections.len(), "options_update sent");
            link.send_text(update).await?;
        }
        Ok(())
    }

    async fn side(&mut self) {
        match self.session.as_ref() {
            Some(s) => tokio::time::sleep_until(s.next_ping).await,
            None => std::future::pending().await,
        }
    }

    fn side_done(&mut self, _: (), _conn: &mut Conn<Self>) -> bool {
        let every = self.ping_every;
        match self.session.as_mut() {
            Some(s) => {
                s.next_ping = tokio::time::Instant::now() + every;
                s.ping_due = true;
                true
            }
            None => false,
        }
    }

    fn written(&mut self) -> Option<OnWritten> {
        let (cursor, event) = self.advance.take()?;
        let (store, index, host) = (self.c.store.clone(), self.c.index, self.host_url().to_owned());
        Some(Box::new(move || store.advance(index, cursor, event, &host)))
    }

    fn closed(&mut self, connected: bool, end: &StreamError) {
        self.session = None;
        if connected {
            self.failures = 0;
            if self.gap.is_none() {
                self.gap = Some(OpenGap {
                    reason: end.gap_reason(),
                    cause: Some(end.to_string()),
                    from: self.last_event_at.unwrap_or_else(Utc::now),
                    cursor: None,
                    replayed: 0,
                });
            }
            return;
        }
        self.failures += 1;
        if self.failures >= self.c.failover_after && self.c.hosts.len() > 1 {
            let from = self.host_url().to_owned();
            self.host = (self.host + 1) % self.c.hosts.len();
            self.failures = 0;
            tracing::warn!(connection = %self.id, from = %from, to = %self.host_url(), attempts = self.c.failover_after, "failing over to the next host; resuming from the same cursor");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protocol(dids: Option<Vec<String>>) -> JetstreamProtocol {
        let c = JetstreamConnection {
            index: 0,
            hosts: vec!["ws://127.0.0.1:1".to_string()].into(),
            host: 0,
            collections: vec!["app.bsky.feed.post".into(), "app.bsky.graph.*".into()],
            dids,
            compress: false,
            max_message_size_bytes: 0,
            cursor_rewind: Duration::from_secs(5),
            failover_after: 3,
            store: Arc::new(CursorStore::in_memory()),
            resume: None,
        };
        let spec = ConnectionSpec {
            id: "bsky/0".into(),
            source: "bsky".into(),
            stall_timeout: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
            max_message_bytes: 1 << 20,
            liveness_factor: 20.0,
            liveness_min: Duration::from_secs(120),
        };
        JetstreamProtocol::new(c, &spec)
    }

    #[test]
    fn short_filters_go_in_the_query_long_ones_in_a_hello() {
        let p = protocol(Some(vec!["did:plc:a".into(), "did:plc:b".into()]));
        let (url, hello) = p.url(Some(1_700_000_000_000_000));
        assert!(!hello);
        assert_eq!(url, "ws://127.0.0.1:1/subscribe?wantedCollections=app.bsky.feed.post&wantedCollections=app.bsky.graph.*&cursor=1700000000000000&wantedDids=did%3Aplc%3Aa&wantedDids=did%3Aplc%3Ab");
        let many: Vec<String> = (0..1000).map(|i| format!("did:plc:{i:024}")).collect();
        let p = protocol(Some(many));
        let (url, hello) = p.url(None);
        assert!(hello && url.ends_with("requireHello=true") && !url.contains("wantedDids"), "{url}");
        let update: serde_json::Value = serde_json::from_str(&p.options_update()).unwrap();
        assert_eq!(update["type"], "options_update");
        assert_eq!(update["payload"]["wantedDids"].as_array().unwrap().len(), 1000);
        assert_eq!(
            update["payload"]["wantedCollections"].as_array().unwrap().len(),
            2,
            "an update replaces both filters"
        );
        let all = protocol(None);
        assert!(all.options_update().find("wantedDids").is_none(), "every DID: no DID filter at all");
    }
}
