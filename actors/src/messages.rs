//! Every cross-actor message and the [`Event`] type that flows from a
//! `StreamActor` to the sinks. Commands are verbs, notifications past tense,
//! data nouns.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::Message;
use bytes::Bytes;
use chrono::{DateTime, Utc};

/// What a message is, decided from its top-level keys (SPEC section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// A Twitter status (`text` / `full_text` at the top level).
    Tweet,
    /// A status or direct-message deletion notice (Twitter) or Mastodon `delete`.
    Delete,
    /// Twitter location scrub notice.
    ScrubGeo,
    /// Twitter limit notice (undelivered matches).
    Limit,
    /// Twitter withheld status.
    StatusWithheld,
    /// Twitter withheld user.
    UserWithheld,
    /// Twitter disconnect message.
    Disconnect,
    /// Twitter stall or follows-over-limit warning.
    Warning,
    /// User/site stream friends preamble.
    Friends,
    /// User/site stream event (`favorite`, `follow`, ...).
    Event,
    /// User/site stream direct message.
    DirectMessage,
    /// Site stream control message carrying the `control_uri`.
    Control,
    /// Mastodon `update`.
    Update,
    /// Mastodon `notification`.
    Notification,
    /// Mastodon `conversation`.
    Conversation,
    /// Mastodon `status.update`.
    StatusUpdate,
    /// Mastodon `filters_changed`.
    FiltersChanged,
    /// Mastodon `announcement`.
    Announcement,
    /// Mastodon `announcement.reaction`.
    AnnouncementReaction,
    /// Mastodon `announcement.delete`.
    AnnouncementDelete,
    /// Mastodon `notifications_merged`.
    NotificationsMerged,
    /// streamherd's own: events may be missing here.
    Gap,
    /// Anything well-formed that no rule recognises.
    Unknown,
}

impl EventKind {
    /// Every kind, in a stable order (metrics, `check`, validation).
    pub const ALL: [EventKind; 23] = [
        EventKind::Tweet,
        EventKind::Delete,
        EventKind::ScrubGeo,
        EventKind::Limit,
        EventKind::StatusWithheld,
        EventKind::UserWithheld,
        EventKind::Disconnect,
        EventKind::Warning,
        EventKind::Friends,
        EventKind::Event,
        EventKind::DirectMessage,
        EventKind::Control,
        EventKind::Update,
        EventKind::Notification,
        EventKind::Conversation,
        EventKind::StatusUpdate,
        EventKind::FiltersChanged,
        EventKind::Announcement,
        EventKind::AnnouncementReaction,
        EventKind::AnnouncementDelete,
        EventKind::NotificationsMerged,
        EventKind::Gap,
        EventKind::Unknown,
    ];

    /// The name used in the output format, config `kinds` filters and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::Tweet => "tweet",
            EventKind::Delete => "delete",
            EventKind::ScrubGeo => "scrub_geo",
            EventKind::Limit => "limit",
            EventKind::StatusWithheld => "status_withheld",
            EventKind::UserWithheld => "user_withheld",
            EventKind::Disconnect => "disconnect",
            EventKind::Warning => "warning",
            EventKind::Friends => "friends",
            EventKind::Event => "event",
            EventKind::DirectMessage => "direct_message",
            EventKind::Control => "control",
            EventKind::Update => "update",
            EventKind::Notification => "notification",
            EventKind::Conversation => "conversation",
            EventKind::StatusUpdate => "status.update",
            EventKind::FiltersChanged => "filters_changed",
            EventKind::Announcement => "announcement",
            EventKind::AnnouncementReaction => "announcement.reaction",
            EventKind::AnnouncementDelete => "announcement.delete",
            EventKind::NotificationsMerged => "notifications_merged",
            EventKind::Gap => "gap",
            EventKind::Unknown => "unknown",
        }
    }

    /// Parses a kind name as written in config files.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.iter().copied().find(|k| k.as_str() == name)
    }

    /// Position in [`EventKind::ALL`], for per-kind counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
    /// Mastodon: the stream the event came on, e.g. `["hashtag","rust"]`.
    pub stream: Option<Arc<[String]>>,
    /// The raw JSON payload.
    pub payload: Bytes,
}

/// Events from one connection, in arrival order. Shared by every sink that
/// takes them, so fan-out copies a pointer, not the payloads.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The events, in the order they were read.
    pub events: Arc<[Event]>,
}

impl Message for Batch {
    type Result = ();
}

/// Why a connection ended; decides the wait before the next attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectCause {
    /// TCP/IP error, reset, refused, DNS, a broken body.
    Network(String),
    /// No byte (not even a keep-alive) for the stall timeout.
    Stall,
    /// The server ended the body cleanly.
    Eof,
    /// A retryable HTTP status (5xx and the like).
    Http {
        /// Status code.
        status: u16,
        /// `Retry-After` in seconds, when the server sent one.
        retry_after: Option<Duration>,
    },
    /// HTTP 420 or 429.
    RateLimited {
        /// Status code.
        status: u16,
        /// `Retry-After` in seconds, when the server sent one.
        retry_after: Option<Duration>,
    },
    /// A retryable disconnect message.
    DisconnectMessage {
        /// The code from the message.
        code: u32,
    },
}

impl DisconnectCause {
    /// Short label for metrics (`streamherd_reconnects_total{cause}`).
    pub fn label(&self) -> &'static str {
        match self {
            DisconnectCause::Network(_) => "network",
            DisconnectCause::Stall => "stall",
            DisconnectCause::Eof => "eof",
            DisconnectCause::Http { .. } => "http",
            DisconnectCause::RateLimited { .. } => "rate_limit",
            DisconnectCause::DisconnectMessage { .. } => "disconnect",
        }
    }
}

impl std::fmt::Display for DisconnectCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DisconnectCause::Network(e) => write!(f, "network error: {e}"),
            DisconnectCause::Stall => f.write_str("stalled: nothing received within the stall timeout"),
            DisconnectCause::Eof => f.write_str("the server closed the stream"),
            DisconnectCause::Http { status, .. } => write!(f, "HTTP {status}"),
            DisconnectCause::RateLimited { status, .. } => write!(f, "HTTP {status} (rate limited)"),
            DisconnectCause::DisconnectMessage { code } => write!(f, "disconnect message, code {code}"),
        }
    }
}

/// A connection answered 200 and is streaming.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct StreamConnected {
    /// Connection id.
    pub connection: Arc<str>,
    /// The follow ids the request that connected named (what the server now carries).
    pub follow: Vec<u64>,
}

/// A connection ended and will be retried after a backoff wait.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct StreamDisconnected {
    /// Connection id.
    pub connection: Arc<str>,
    /// Why it ended.
    pub cause: DisconnectCause,
}

/// A connection failed for good (401, 406, disconnect code 2, ...): not retried.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct StreamFailed {
    /// Connection id.
    pub connection: Arc<str>,
    /// The status and the (truncated) body, or the disconnect reason.
    pub reason: String,
}

/// Close the connection and do not reconnect.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopStream;

/// A site stream announced its control stream (`control_uri`).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ControlAnnounced {
    /// Connection id.
    pub connection: Arc<str>,
    /// The `control_uri`, e.g. `/1.1/site/c/1_1_54e3`.
    pub control_uri: String,
}

/// Replace the request a connection uses for its next (re)connect.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct SetRequest(pub crate::protocol::request::StreamRequest);

/// Add and remove streams on a Mastodon connection (WebSocket: subscribe and
/// unsubscribe messages on the live socket; every subscription is restored
/// after a reconnect).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ChangeSubscriptions {
    /// Streams to carry.
    pub add: Vec<crate::protocol::mastodon_streams::MastodonStream>,
    /// Stream keys to drop.
    pub remove: Vec<String>,
}

/// The Mastodon streaming server refused a subscription with an error frame
/// (`{"error":"...","status":400}`); the connection goes on.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct SubscriptionRejected {
    /// Connection id.
    pub connection: Arc<str>,
    /// The server's `error` text.
    pub message: String,
    /// Its `status`, when the server sent one.
    pub status: Option<u16>,
}
