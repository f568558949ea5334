//! The unit everything else moves: an [`Event`] (one message from a stream,
//! its payload bytes untouched) and its [`EventKind`]. Plain data, no actors:
//! sinks, families and tests all build and read these.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};

/// What a message is: a short name from its family's catalogue (`tweet`,
/// `update`, `commit`, ...) or streamherd's own `gap`.
///
/// Kinds are an open set so that a source kind written outside this crate
/// brings its own: each family declares its catalogue as constants and
/// registers it with its source kind (config `kinds` filters, metrics).
/// Two kinds are equal when their names are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKind(&'static str);

impl EventKind {
    /// streamherd's own: events may be missing here.
    pub const GAP: EventKind = EventKind("gap");
    /// Anything well-formed that no rule of its family recognises.
    pub const UNKNOWN: EventKind = EventKind("unknown");

    /// A kind named `name`, as written in the output, config filters and metrics.
    pub const fn new(name: &'static str) -> EventKind {
        EventKind(name)
    }

    /// The kind named `name`, for names read back from disk (a spill). A
    /// name not seen before is leaked once: kinds are a small fixed set.
    pub fn intern(name: &str) -> EventKind {
        use std::collections::HashSet;
        use std::sync::{Mutex, OnceLock, PoisonError};
        static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
        let mut names = NAMES.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = names.get(name) {
            return EventKind(n);
        }
        let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
        names.insert(leaked);
        EventKind(leaked)
    }

    /// The name used in the output format, config `kinds` filters and metrics.
    pub const fn as_str(self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// A `gap` event's payload: one schema for every family, fields that do
/// not apply left out. `from` is the last byte (or acknowledged event)
/// before the interruption, `to` the first event after it.
#[derive(Debug, Default, serde::Serialize)]
pub struct GapPayload<'a> {
    /// `reconnect`, `stall`, `restart`, `handover`, `silent_stream`,
    /// `takeover`, `sink_full` or `spill_corrupt`.
    pub reason: &'a str,
    /// What ended the connection, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<&'a str>,
    /// Start of the interval where events may be missing.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "stamp_opt")]
    pub from: Option<DateTime<Utc>>,
    /// Its end.
    #[serde(serialize_with = "stamp")]
    pub to: DateTime<Utc>,
    /// Twitter: tweets the server reported withholding (limit notices) inside the interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_omitted: Option<u64>,
    /// Events catch-up or replay brought back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<u64>,
    /// Whether catch-up or replay covered the whole interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub complete: Option<bool>,
    /// Anything else worth knowing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'a str>,
}

fn stamp<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

fn stamp_opt<S: serde::Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => stamp(t, s),
        None => s.serialize_none(),
    }
}

impl Event {
    /// A `gap` event of `source`, written on `connection`, at `at`.
    pub fn gap(source: Arc<str>, connection: Arc<str>, at: DateTime<Utc>, payload: Bytes) -> Event {
        Event {
            source,
            kind: EventKind::GAP,
            id: None,
            received_at: at,
            connection,
            for_user: None,
            stream: None,
            payload,
        }
    }
}

impl GapPayload<'_> {
    /// The payload's JSON bytes.
    pub fn to_bytes(&self) -> Bytes {
        // Serialising plain strings, numbers and booleans cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// One message from a stream, ready for the sinks.
///
/// `payload` holds the bytes exactly as the server sent them (minus framing);
/// sinks write them through without re-serialising.
#[derive(Debug, Clone)]
pub struct Event {
    /// Configured source name.
    pub source: Arc<str>,
    /// Classified kind.
    pub kind: EventKind,
    /// The message's own id as a string (tweet `id_str`, deleted status id, ...).
    pub id: Option<Box<str>>,
    /// When the last byte of the message was read.
    pub received_at: DateTime<Utc>,
    /// Connection id, `source/N`.
    pub connection: Arc<str>,
    /// Site streams: the user the message was for.
    pub for_user: Option<u64>,
    /// Sources with named streams (Mastodon): the stream the event came on,
    /// e.g. `["hashtag","rust"]`.
    pub stream: Option<Arc<[String]>>,
    /// The raw JSON payload.
    pub payload: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_compare_and_hash_by_name() {
        let owned = String::from("tweet");
        let leaked: &'static str = Box::leak(owned.into_boxed_str());
        let a = EventKind::new("tweet");
        let b = EventKind::new(leaked);
        assert_eq!(a, b);
        let mut set = std::collections::HashSet::new();
        set.insert(a);
        assert!(set.contains(&b));
        assert_ne!(a, EventKind::GAP);
        assert_eq!(EventKind::GAP.to_string(), "gap");
    }
}
