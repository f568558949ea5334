//! The Twitter v1.1 event catalogue: what a message can be, decided by
//! [`classify`](super::classify) from its top-level keys.

use crate::event::EventKind;

/// A status (`text` / `full_text` at the top level).
pub const TWEET: EventKind = EventKind::new("tweet");
/// A status or direct-message deletion notice.
pub const DELETE: EventKind = EventKind::new("delete");
/// A location scrub notice.
pub const SCRUB_GEO: EventKind = EventKind::new("scrub_geo");
/// A limit notice (undelivered matches).
pub const LIMIT: EventKind = EventKind::new("limit");
/// A withheld status.
pub const STATUS_WITHHELD: EventKind = EventKind::new("status_withheld");
/// A withheld user.
pub const USER_WITHHELD: EventKind = EventKind::new("user_withheld");
/// A disconnect message.
pub const DISCONNECT: EventKind = EventKind::new("disconnect");
/// A stall or follows-over-limit warning.
pub const WARNING: EventKind = EventKind::new("warning");
/// The friends preamble of user and site streams.
pub const FRIENDS: EventKind = EventKind::new("friends");
/// A user or site stream event (`favorite`, `follow`, ...).
pub const EVENT: EventKind = EventKind::new("event");
/// A user or site stream direct message.
pub const DIRECT_MESSAGE: EventKind = EventKind::new("direct_message");
/// The site stream control message carrying the `control_uri`.
pub const CONTROL: EventKind = EventKind::new("control");

/// Every kind a Twitter source emits, `unknown` included.
pub const KINDS: &[EventKind] = &[
    TWEET,
    DELETE,
    SCRUB_GEO,
    LIMIT,
    STATUS_WITHHELD,
    USER_WITHHELD,
    DISCONNECT,
    WARNING,
    FRIENDS,
    EVENT,
    DIRECT_MESSAGE,
    CONTROL,
    EventKind::UNKNOWN,
];
