//! The Mastodon streaming event catalogue (protocols.md B.4): each kind is
//! named as the server names the event.

use crate::event::EventKind;

/// A new status.
pub const UPDATE: EventKind = EventKind::new("update");
/// A deleted status (the payload is its id).
pub const DELETE: EventKind = EventKind::new("delete");
/// A notification.
pub const NOTIFICATION: EventKind = EventKind::new("notification");
/// A direct conversation changed.
pub const CONVERSATION: EventKind = EventKind::new("conversation");
/// An edited status.
pub const STATUS_UPDATE: EventKind = EventKind::new("status.update");
/// The user's filters changed.
pub const FILTERS_CHANGED: EventKind = EventKind::new("filters_changed");
/// An announcement.
pub const ANNOUNCEMENT: EventKind = EventKind::new("announcement");
/// A reaction to an announcement.
pub const ANNOUNCEMENT_REACTION: EventKind = EventKind::new("announcement.reaction");
/// A deleted announcement (the payload is its id).
pub const ANNOUNCEMENT_DELETE: EventKind = EventKind::new("announcement.delete");
/// Grouped notifications were merged.
pub const NOTIFICATIONS_MERGED: EventKind = EventKind::new("notifications_merged");

/// Every kind a Mastodon source emits, `unknown` included.
pub const KINDS: &[EventKind] = &[
    UPDATE,
    DELETE,
    NOTIFICATION,
    CONVERSATION,
    STATUS_UPDATE,
    FILTERS_CHANGED,
    ANNOUNCEMENT,
    ANNOUNCEMENT_REACTION,
    ANNOUNCEMENT_DELETE,
    NOTIFICATIONS_MERGED,
    EventKind::UNKNOWN,
];
