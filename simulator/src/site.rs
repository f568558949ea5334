//! The control side of a live site stream (protocols.md A.3, A.7): the users
//! it carries, changed through its control URI, and its `info.json`. Apart
//! from `twitter` because the shared state indexes live streams by stream id.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::records::{lock, ConnSlot};

/// Users one site stream may carry through its control stream (protocols.md
/// A.3: "1,000 users per connection", unverified; also the service's
/// `follow_limit` maximum). Bounds a stream's memory.
pub(crate) const MAX_SITE_CARRIED: usize = 1000;

/// A refused control request: the status, and a plain-text body unless the
/// status has Twitter's own (401, 404).
pub(crate) type ControlRefusal = (u16, Option<String>);

/// `ids` without repeats, in first-seen order.
pub(crate) fn dedup(ids: &[u64]) -> Vec<u64> {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

/// A live site stream, reachable through its control URI.
pub(crate) struct SiteConn {
    pub(crate) stream_id: String,
    delimited: bool,
    with: String,
    replies: String,
    pub(crate) slot: Arc<ConnSlot>,
    /// The users carried now, in order; shared with `slot.follows`.
    carried: Arc<Mutex<Vec<u64>>>,
    /// `carried` changed since the producer last looked.
    dirty: AtomicBool,
}

impl SiteConn {
    /// `delimited`, `with` and `replies` as the connect request set them,
    /// for `info.json`.
    pub(crate) fn new(
        stream_id: String,
        delimited: bool,
        with: String,
        replies: String,
        slot: Arc<ConnSlot>,
        carried: Arc<Mutex<Vec<u64>>>,
    ) -> SiteConn {
        SiteConn { stream_id, delimited, with, replies, slot, carried, dirty: AtomicBool::new(false) }
    }

    /// `add_user`: refused when the stream would carry too many.
    pub(crate) fn add(&self, ids: &[u64]) -> Result<(), ControlRefusal> {
        let mut users = lock(&self.carried);
        let new = dedup(ids).into_iter().filter(|id| !users.contains(id)).collect::<Vec<u64>>();
        if users.len() + new.len() > MAX_SITE_CARRIED {
            return Err((413, Some(format!("A stream carries at most {MAX_SITE_CARRIED} users"))));
        }
        users.extend(new);
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// `remove_user`.
    pub(crate) fn remove(&self, ids: &[u64]) {
        lock(&self.carried).retain(|u| !ids.contains(u));
        self.dirty.store(true, Ordering::Release);
    }

    /// The `info.json` answer.
    pub(crate) fn info_json(&self) -> serde_json::Value {
        let users: Vec<serde_json::Value> = lock(&self.carried)
            .iter()
            .map(|id| serde_json::json!({ "id": id, "id_str": id.to_string(), "name": format!("user{id}"), "dm": false }))
            .collect();
        serde_json::json!({
            "info": {
                "users": users,
                "delimited": if self.delimited { "length" } else { "none" },
                "include_followings_activity": self.with == "followings",
                "include_user_changes": false,
                "replies": self.replies,
                "with": self.with,
            }
        })
    }

    /// Whether `id` is carried now.
    pub(crate) fn carries(&self, id: u64) -> bool {
        lock(&self.carried).contains(&id)
    }

    /// The carried users if they changed since the last call (the producer
    /// hands them to its generator).
    pub(crate) fn changes(&self) -> Option<Vec<u64>> {
        self.dirty.swap(false, Ordering::AcqRel).then(|| lock(&self.carried).clone())
    }
}
