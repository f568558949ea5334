//! The Jetstream event catalogue: each kind is named as the server's `kind`
//! field names it.

use crate::event::EventKind;

/// A repository commit operation (create, update or delete of one record).
pub const COMMIT: EventKind = EventKind::new("commit");
/// An identity change (handle, DID document).
pub const IDENTITY: EventKind = EventKind::new("identity");
/// An account status change (active, deactivated, taken down).
pub const ACCOUNT: EventKind = EventKind::new("account");

/// Every kind a Jetstream source emits, `unknown` included.
pub const KINDS: &[EventKind] = &[COMMIT, IDENTITY, ACCOUNT, EventKind::UNKNOWN];
