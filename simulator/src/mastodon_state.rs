//! The Mastodon half of the simulator's shared state (protocols.md B.3,
//! B.5, B.8): accepted tokens and revocations, the status and notification
//! history with its JSON, the event broadcast and which channel carries what,
//! and the simulator-wide mute (`SimHandle::mastodon_mute_all`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{broadcast, watch};

use super::config::SimulatorConfig;
use super::mastodon_ws_log::WsLog;
use super::records::{lock, push_capped};

/// The first status id: 18 digits like a 2022 Mastodon snowflake, so every id
/// the simulator hands out has the same length and numeric order is Mastodon's
/// length-then-lexical order.
const FIRST_STATUS_ID: u64 = 109_000_000_000_000_000;
/// The first notification id (Mastodon's are plain sequence numbers).
const FIRST_NOTIFICATION_ID: u64 = 30_000_000;
/// Statuses and notifications kept for catch-up: bounded memory.
pub const MAX_MASTODON_HISTORY: usize = 10_000;
/// Events the broadcast channel holds for a slow SSE or WebSocket
/// connection; past that it ends abruptly with `end = "lagged"`.
const EVENT_CAPACITY: usize = 4096;
/// REST rate limit: calls per window per token (B.7).
/// The hashtags statuses are tagged with.
const TAGS: [&str; 6] = ["rust", "mastodon", "fediverse", "photography", "news", "caturday"];
/// The lists the token's user owns.
pub(super) const LISTS: [&str; 2] = ["1", "2"];
/// The local instance's domain.
pub(super) const LOCAL_DOMAIN: &str = "sim.example";

/// A fixed author.
struct Author {
    id: &'static str,
    username: &'static str,
    display_name: &'static str,
    /// None: local to `LOCAL_DOMAIN`.
    domain: Option<&'static str>,
    /// Followed by the token's user: the status reaches the home timeline
    /// and the `user` stream.
    followed: bool,
    /// In list "1" (followed authors only) or "2".
    list: Option<&'static str>,
}

const AUTHORS: [Author; 8] = [
    Author { id: "1", username: "alice", display_name: "Alice 🦀", domain: None, followed: true, list: Some("1") },
    Author { id: "2", username: "bob", display_name: "Bob", domain: None, followed: false, list: None },
    Author {
        id: "3",
        username: "yuki",
        display_name: "雪 ❄️",
        domain: Some("mastodon.social"),
        followed: true,
        list: Some("2"),
    },
    Author {
        id: "4",
        username: "carol",
        display_name: "Carol (she/her)",
        domain: Some("fosstodon.org"),
        followed: false,
        list: None,
    },
    Author { id: "5", username: "dmitri", display_name: "Дмитрий", domain: None, followed: true, list: None },
    Author {
        id: "6",
        username: "news",
        display_name: "World News Bot 🤖",
        domain: Some("botsin.space"),
        followed: false,
        list: None,
    },
    Author {
        id: "7", username: "li", display_name: "李明", domain: Some("m.cmx.im"), followed: true, list: Some("1")
    },
    Author { id: "8", username: "emma", display_name: "Emma 📷", domain: None, followed: false, list: None },
];

/// Paragraphs statuses are made of: emoji, CJK, RTL, entities.
const TEXTS: [(&str, &str); 6] = [
    ("en", "Hello fediverse 👋 shipping a new release today 🚀"),
    ("ja", "今日はいい天気ですね ☀️ 散歩に行きます"),
    ("zh", "你好，世界！这是一个测试帖子 🐼"),
    ("en", "Tea &amp; biscuits &lt;3 — the best combo ☕🍪"),
    ("ar", "مرحبا بالعالم 🌍"),
    ("de", "Schöne Grüße aus Köln — Straßenbahn verspätet 🚋"),
];

/// Who a status reaches.
#[derive(Clone, Debug)]
pub(super) struct Audience {
    pub(super) local: bool,
    pub(super) media: bool,
    /// Lower-case names.
    pub(super) tags: Vec<String>,
    pub(super) home: bool,
    pub(super) list: Option<&'static str>,
}

/// One status of the history.
struct Status {
    id: String,
    author: usize,
    text: usize,
    created_at: String,
    audience: Audience,
    json: String,
}

/// One notification of the history.
struct Notification {
    id: String,
    json: String,
}

/// A status the simulator published (for tests and tools).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MastodonPost {
    /// The status id.
    pub id: String,
    /// Its hashtags, lower-case.
    pub tags: Vec<String>,
    /// Whether its author is local (public:local) or remote (public:remote).
    pub local: bool,
    /// Whether it has a media attachment (`only_media`).
    pub media: bool,
}

/// One event on the broadcast channel.
pub(crate) struct Event {
    /// The SSE event name, which is also the SPEC 4 kind.
    pub(super) kind: &'static str,
    /// The status id, the deleted id or the notification id.
    pub(super) id: String,
    /// The data line as user and list streams get it.
    payload: Bytes,
    /// For `update` and `status.update`: the payload public and hashtag
    /// streams get, with `"filtered":[]` added (B.9).
    filtered: Option<Bytes>,
    /// None for notifications and the user- or direct-only events.
    audience: Option<Audience>,
    /// Without an audience: only this channel carries it (None: `user` and
    /// `user:notification`, as for notifications).
    only: Option<Only>,
    /// Emitted while `mastodon_mute_all` was on: no connection delivers it,
    /// however late it takes it (set by `State::emit`).
    pub(super) muted: bool,
}

/// The one channel an event without an audience goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Only {
    User,
    Direct,
}

impl Event {
    /// Whether public and hashtag channels may hold it back (B.9).
    pub(super) fn reorderable(&self) -> bool {
        matches!(self.kind, "update" | "status.update")
    }
}

struct History {
    statuses: VecDeque<Arc<Status>>,
    notifications: VecDeque<Arc<Notification>>,
    next_status: u64,
    next_notification: u64,
    rng: fastrand::Rng,
}

/// The Mastodon half of the simulator's shared state.
pub(crate) struct State {
    /// The accepted bearer tokens; `SimHandle::mastodon_revoke` removes.
    tokens: Mutex<Vec<String>>,
    /// Bumped at every revocation: open streams then recheck their token.
    /// Subscribe before checking a token, so no revocation is missed.
    revocations: watch::Sender<u64>,
    history: Mutex<History>,
    pub(super) events: broadcast::Sender<Arc<Event>>,
    /// Open Mastodon streams (`mastodon::Subscription`).
    pub(super) subscribers: AtomicUsize,
    /// Whether the generator task (`mastodon::generate`) runs.
    pub(super) generating: AtomicBool,
    /// Per rate-limit key: window start and calls in it. Keys are accepted
    /// tokens and "anonymous", so the map is bounded.
    pub(super) limits: Mutex<HashMap<String, (Instant, u32)>>,
    /// Most that an `update`/`status.update` is held back on public and
    /// hashtag channels (0: never).
    pub(super) update_delay_ms: u64,
    /// The WebSocket ping interval.
    pub(super) ws_ping: Duration,
    /// The WebSocket connections, for `SimHandle::mastodon_ws_connections`.
    pub(super) ws_log: WsLog,
    /// `SimHandle::mastodon_mute_all`. Read as each event is emitted, not
    /// as a connection takes it: what was published while muted stays
    /// undelivered after an unmute, like pub/sub messages nobody was
    /// subscribed to.
    muted: AtomicBool,
}

impl State {
    pub(crate) fn new(config: &SimulatorConfig) -> State {
        State {
            tokens: Mutex::new(config.mastodon_tokens.clone()),
            revocations: watch::channel(0).0,
            update_delay_ms: config.mastodon_update_delay_ms,
            ws_ping: Duration::from_millis(config.ws_ping_ms.max(1)),
            ws_log: WsLog::default(),
            history: Mutex::new(History {
                statuses: VecDeque::new(),
                notifications: VecDeque::new(),
                next_status: FIRST_STATUS_ID,
                next_notification: FIRST_NOTIFICATION_ID,
                rng: fastrand::Rng::with_seed(0x3A5_70D0),
            }),
            events: broadcast::channel(EVENT_CAPACITY).0,
            subscribers: AtomicUsize::new(0),
            generating: AtomicBool::new(false),
            limits: Mutex::new(HashMap::new()),
            muted: AtomicBool::new(false),
        }
    }

    /// Checks a streaming token (B.2, B.9).
    pub(super) fn check_token(&self, token: Option<&str>) -> Result<(), &'static str> {
        match token {
            None | Some("") => Err("Missing access token"),
            Some(t) if self.token_ok(t) => Ok(()),
            Some(_) => Err("Invalid access token"),
        }
    }

    pub(super) fn token_ok(&self, token: &str) -> bool {
        lock(&self.tokens).iter().any(|ok| ok == token)
    }

    /// Tells about revocations from now on.
    pub(super) fn revocations(&self) -> watch::Receiver<u64> {
        self.revocations.subscribe()
    }

    /// Sends while the history lock is held, so the channel's order is the
    /// id order. Nobody listening is fine.
    fn emit(&self, mut event: Event) {
        event.muted = self.muted.load(Ordering::SeqCst);
        let _ = self.events.send(Arc::new(event));
    }

    /// `SimHandle::mastodon_mute_all`.
    pub(super) fn mute_all(&self, on: bool) {
        // Under the history lock, so no event is emitted half-way through.
        let _h = lock(&self.history);
        self.muted.store(on, Ordering::SeqCst);
    }

    /// Creates, stores and broadcasts one status; random tags and author
    /// unless given.
    fn post(&self, h: &mut History, tags: Option<&[&str]>, local: Option<bool>, media: Option<bool>) -> MastodonPost {
        let id = h.next_status.to_string();
        h.next_status += 1;
        let candidates: Vec<usize> =
            (0..AUTHORS.len()).filter(|&i| local.map_or(true, |l| AUTHORS[i].domain.is_none() == l)).collect();
        let author = candidates[h.rng.usize(..candidates.len())];
        let tags: Vec<String> = match tags {
            Some(t) => t.iter().map(|t| normalise_tag(t)).filter(|t| !t.is_empty()).collect(),
            None => {
                let mut t: Vec<String> = Vec::new();
                for _ in 0..h.rng.usize(1..=3) {
                    let tag = TAGS[h.rng.usize(..TAGS.len())].to_string();
                    if !t.contains(&tag) {
                        t.push(tag);
                    }
                }
                t
            }
        };
        let a = &AUTHORS[author];
        let audience = Audience {
            local: a.domain.is_none(),
            media: media.unwrap_or_else(|| h.rng.u8(..4) == 0),
            tags,
            home: a.followed,
            list: a.list,
        };
        let text = h.rng.usize(..TEXTS.len());
        let created_at = now_iso();
        let json = render_status(&id, author, text, &created_at, &audience, None, &mut h.rng);
        let status = Arc::new(Status {
            id: id.clone(),
            author,
            text,
            created_at,
            audience: audience.clone(),
            json: json.clone(),
        });
        push_capped(&mut h.statuses, status, MAX_MASTODON_HISTORY);
        self.emit(Event {
            kind: "update",
            id: id.clone(),
            filtered: Some(Bytes::from(with_filtered(&json))),
            payload: Bytes::from(json),
            audience: Some(audience.clone()),
            only: None,
            muted: false,
        });
        MastodonPost { id, tags: audience.tags, local: audience.local, media: audience.media }
    }

    /// Deletes status `id` (or a recent random one): gone from the history,
    /// a `delete` to every stream the status reached.
    fn delete(&self, h: &mut History, id: Option<&str>) -> Option<String> {
        let at = match id {
            Some(id) => h.statuses.iter().position(|s| s.id == id)?,
            None => {
                let n = h.statuses.len();
                if n == 0 {
                    return None;
                }
                n - 1 - h.rng.usize(..n.min(50))
            }
        };
        let status = h.statuses.remove(at)?;
        self.emit(Event {
            kind: "delete",
            id: status.id.clone(),
            payload: Bytes::from(status.id.clone()),
            filtered: None,
            audience: Some(status.audience.clone()),
            only: None,
            muted: false,
        });
        Some(status.id.clone())
    }

    /// Edits a recent status: `status.update` with `edited_at` set.
    fn edit(&self, h: &mut History) -> Option<String> {
        let n = h.statuses.len();
        if n == 0 {
            return None;
        }
        let at = n - 1 - h.rng.usize(..n.min(50));
        let old = Arc::clone(&h.statuses[at]);
        let edited_at = now_iso();
        let json =
            render_status(&old.id, old.author, old.text, &old.created_at, &old.audience, Some(&edited_at), &mut h.rng);
        h.statuses[at] = Arc::new(Status {
            id: old.id.clone(),
            author: old.author,
            text: old.text,
            created_at: old.created_at.clone(),
            audience: old.audience.clone(),
            json: json.clone(),
        });
        self.emit(Event {
            kind: "status.update",
            id: old.id.clone(),
            filtered: Some(Bytes::from(with_filtered(&json))),
            payload: Bytes::from(json),
            audience: Some(old.audience.clone()),
            only: None,
            muted: false,
        });
        Some(old.id.clone())
    }

    /// A notification for the token's user, about a recent status when one
    /// exists.
    fn notify(&self, h: &mut History) -> String {
        let id = h.next_notification.to_string();
        h.next_notification += 1;
        let author = h.rng.usize(..AUTHORS.len());
        let status = h.statuses.back().map(Arc::clone);
        let kind = match (&status, h.rng.u8(..4)) {
            (None, _) | (_, 0) => "follow",
            (_, 1) => "mention",
            (_, 2) => "favourite",
            _ => "reblog",
        };
        let mut json = format!(
            r#"{{"id":"{id}","type":"{kind}","created_at":"{}","group_key":"ungrouped-{id}","account":{}"#,
            now_iso(),
            render_account(author, &mut h.rng)
        );
        if let (Some(s), true) = (&status, kind != "follow") {
            json.push_str(",\"status\":");
            json.push_str(&s.json);
        }
        json.push('}');
        push_capped(
            &mut h.notifications,
            Arc::new(Notification { id: id.clone(), json: json.clone() }),
            MAX_MASTODON_HISTORY,
        );
        self.emit(Event {
            kind: "notification",
            id: id.clone(),
            payload: Bytes::from(json),
            filtered: None,
            audience: None,
            only: None,
            muted: false,
        });
        id
    }

    /// The rest of the event catalogue (B.5): a conversation on `direct`;
    /// filters_changed, an announcement, a reaction to it, its deletion,
    /// notifications_merged and an event no client knows (`encrypted_message`)
    /// on `user`; an edit (`status.update`) wherever the status went.
    fn catalogue(&self, h: &mut History) -> Vec<(String, String)> {
        let id = h.next_notification.to_string();
        h.next_notification += 1;
        let last = h.statuses.back().map(|s| s.json.clone()).unwrap_or_else(|| "null".into());
        let account = render_account(0, &mut h.rng);
        let now = now_iso();
        let only = |kind: &'static str, to: Only, payload: String| {
            self.emit(Event {
                kind,
                id: id.clone(),
                payload: Bytes::from(payload),
                filtered: None,
                audience: None,
                only: Some(to),
                muted: false,
            })
        };
        only(
            "conversation",
            Only::Direct,
            format!(r#"{{"id":"{id}","unread":true,"accounts":[{account}],"last_status":{last}}}"#),
        );
        only("filters_changed", Only::User, "undefined".into());
        only(
            "announcement",
            Only::User,
            format!(
                r#"{{"id":"{id}","content":"<p>Maintenance tonight 🛠️ — Wartung heute Nacht</p>","starts_at":null,"ends_at":null,"all_day":false,"published":true,"published_at":"{now}","updated_at":"{now}","read":false,"mentions":[],"statuses":[],"tags":[],"emojis":[],"reactions":[]}}"#
            ),
        );
        only("announcement.reaction", Only::User, format!(r#"{{"name":"👍","count":1,"announcement_id":"{id}"}}"#));
        only("announcement.delete", Only::User, id.clone());
        only("notifications_merged", Only::User, "1".into());
        only("encrypted_message", Only::User, format!(r#"{{"id":"{id}","ciphertext":"AAEC"}}"#));
        let mut out: Vec<(String, String)> = [
            ("conversation", "direct"),
            ("filters_changed", "user"),
            ("announcement", "user"),
            ("announcement.reaction", "user"),
            ("announcement.delete", "user"),
            ("notifications_merged", "user"),
            ("unknown", "user"),
        ]
        .iter()
        .map(|(k, s)| ((*k).to_string(), (*s).to_string()))
        .collect();
        if self.edit(h).is_some() {
            out.push(("status.update".into(), "public".into()));
        }
        out
    }

    /// One generated event: mostly new statuses, some deletes, edits and
    /// notifications.
    pub(super) fn step(&self) {
        let mut h = lock(&self.history);
        let roll = h.rng.u8(..100);
        let done = match roll {
            0..=84 => None,
            85..=91 => self.delete(&mut h, None),
            92..=95 => self.edit(&mut h),
            _ => Some(self.notify(&mut h)),
        };
        if roll <= 84 || (done.is_none() && roll <= 95) {
            self.post(&mut h, None, None, None);
        }
    }

    /// `SimHandle::mastodon_publish`: `n` statuses with random authors and
    /// tags, in id order.
    pub(super) fn publish(&self, n: usize) -> Vec<MastodonPost> {
        let mut h = lock(&self.history);
        (0..n).map(|_| self.post(&mut h, None, None, None)).collect()
    }

    /// `SimHandle::mastodon_post`: one status with exactly these tags.
    pub(super) fn publish_exactly(&self, tags: &[&str], local: bool, media: bool) -> MastodonPost {
        let mut h = lock(&self.history);
        self.post(&mut h, Some(tags), Some(local), Some(media))
    }

    /// `SimHandle::mastodon_delete`: false when `id` is not in the history.
    pub(super) fn delete_status(&self, id: &str) -> bool {
        let mut h = lock(&self.history);
        self.delete(&mut h, Some(id)).is_some()
    }

    /// `SimHandle::mastodon_notify`: the new notification's id.
    pub(super) fn notify_now(&self) -> String {
        let mut h = lock(&self.history);
        self.notify(&mut h)
    }

    /// `SimHandle::mastodon_emit_catalogue`: see `catalogue`.
    pub(super) fn emit_catalogue(&self) -> Vec<(String, String)> {
        let mut h = lock(&self.history);
        self.catalogue(&mut h)
    }

    /// `SimHandle::mastodon_revoke`: true when `token` was accepted until
    /// now. Open streams are told either way.
    pub(super) fn revoke(&self, token: &str) -> bool {
        let removed = {
            let mut tokens = lock(&self.tokens);
            let before = tokens.len();
            tokens.retain(|t| t != token);
            tokens.len() != before
        };
        self.revocations.send_modify(|n| *n = n.wrapping_add(1));
        removed
    }

    /// One REST page (B.8) as (id, JSON), newest first: at most `limit` of
    /// the `timeline` items whose ids are `in_range`, the newest of them or,
    /// with `oldest` (a `min_id` page), the oldest.
    pub(super) fn page(
        &self,
        timeline: &Timeline,
        in_range: impl Fn(&str) -> bool,
        limit: usize,
        oldest: bool,
    ) -> Vec<(String, String)> {
        let h = lock(&self.history);
        let items: Vec<(&str, &str)> = match timeline {
            Timeline::Statuses(admit) => h
                .statuses
                .iter()
                .filter(|s| admit(&s.audience) && in_range(&s.id))
                .map(|s| (s.id.as_str(), s.json.as_str()))
                .collect(),
            Timeline::Notifications => {
                h.notifications.iter().filter(|n| in_range(&n.id)).map(|n| (n.id.as_str(), n.json.as_str())).collect()
            }
        };
        let chosen: Vec<(&str, &str)> = if oldest {
            items.iter().take(limit).rev().copied().collect()
        } else {
            items.iter().rev().take(limit).copied().collect()
        };
        chosen.into_iter().map(|(i, j)| (i.to_string(), j.to_string())).collect()
    }
}

fn now_iso() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Mastodon's hashtag key (B.4), as far as the simulator needs it:
/// lower-cased, keeping only letters, digits, `_`, `·` and ZWNJ (so a
/// leading `#` goes too). No NFKC or ASCII folding.
pub(super) fn normalise_tag(tag: &str) -> String {
    tag.chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '_' | '·' | '\u{200c}'))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The Status JSON with `"filtered":[]` added as the last key.
fn with_filtered(json: &str) -> String {
    match json.strip_suffix('}') {
        Some(head) => format!("{head},\"filtered\":[]}}"),
        None => json.to_string(),
    }
}

fn render_account(author: usize, rng: &mut fastrand::Rng) -> String {
    let a = &AUTHORS[author % AUTHORS.len()];
    let domain = a.domain.unwrap_or(LOCAL_DOMAIN);
    let acct = match a.domain {
        Some(d) => format!("{}@{d}", a.username),
        None => a.username.to_string(),
    };
    serde_json::json!({
        "id": a.id,
        "username": a.username,
        "acct": acct,
        "display_name": a.display_name,
        "locked": false,
        "bot": a.username == "news",
        "discoverable": true,
        "group": false,
        "created_at": "2022-11-07T00:00:00.000Z",
        "note": format!("<p>{} on {domain} ✨</p>", a.display_name),
        "url": format!("https://{domain}/@{}", a.username),
        "uri": format!("https://{domain}/users/{}", a.username),
        "avatar": format!("https://{domain}/avatars/{}.png", a.id),
        "avatar_static": format!("https://{domain}/avatars/{}.png", a.id),
        "header": format!("https://{domain}/headers/missing.png"),
        "header_static": format!("https://{domain}/headers/missing.png"),
        "followers_count": rng.u32(0..50_000),
        "following_count": rng.u32(0..2_000),
        "statuses_count": rng.u32(1..100_000),
        "last_status_at": "2024-05-01",
        "emojis": [],
        "fields": [],
    })
    .to_string()
}

fn render_status(
    id: &str,
    author: usize,
    text: usize,
    created_at: &str,
    audience: &Audience,
    edited_at: Option<&str>,
    rng: &mut fastrand::Rng,
) -> String {
    let a = &AUTHORS[author % AUTHORS.len()];
    let domain = a.domain.unwrap_or(LOCAL_DOMAIN);
    let (language, body) = TEXTS[text % TEXTS.len()];
    let mut content = format!("<p>{body}");
    if edited_at.is_some() {
        content.push_str(" (edited ✏️)");
    }
    for tag in &audience.tags {
        content.push_str(&format!(
            r#" <a href="https://{domain}/tags/{tag}" class="mention hashtag" rel="tag">#<span>{tag}</span></a>"#
        ));
    }
    content.push_str("</p>");
    let media: Vec<serde_json::Value> = if audience.media {
        vec![serde_json::json!({
            "id": format!("{id}1"),
            "type": "image",
            "url": format!("https://{domain}/media/{id}.jpg"),
            "preview_url": format!("https://{domain}/media/{id}_small.jpg"),
            "remote_url": null,
            "description": "A cat in a box 🐈📦",
            "blurhash": "UFF6L.t7~qWB_3ofRjj[xuRjRjof",
        })]
    } else {
        Vec::new()
    };
    let tags: Vec<serde_json::Value> = audience
        .tags
        .iter()
        .map(|t| serde_json::json!({ "name": t, "url": format!("https://{LOCAL_DOMAIN}/tags/{t}") }))
        .collect();
    let account: serde_json::Value =
        serde_json::from_str(&render_account(author, rng)).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "id": id,
        "created_at": created_at,
        "in_reply_to_id": null,
        "in_reply_to_account_id": null,
        "sensitive": false,
        "spoiler_text": "",
        "visibility": "public",
        "language": language,
        "uri": format!("https://{domain}/users/{}/statuses/{id}", a.username),
        "url": format!("https://{domain}/@{}/{id}", a.username),
        "replies_count": rng.u32(0..20),
        "reblogs_count": rng.u32(0..200),
        "favourites_count": rng.u32(0..500),
        "edited_at": edited_at,
        "content": content,
        "reblog": null,
        "account": account,
        "media_attachments": media,
        "mentions": [],
        "tags": tags,
        "emojis": [],
        "card": null,
        "poll": null,
    })
    .to_string()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scope {
    All,
    Local,
    Remote,
}

impl Scope {
    pub(super) fn admits(self, local: bool) -> bool {
        match self {
            Scope::All => true,
            Scope::Local => local,
            Scope::Remote => !local,
        }
    }
}

/// What one SSE connection (or one WebSocket subscription) carries.
#[derive(Clone, Debug)]
pub(super) enum Channel {
    User,
    UserNotification,
    Public { scope: Scope, media: bool },
    Hashtag { tag: String, local: bool },
    List(String),
    Direct,
}

impl Channel {
    /// Whether `update`/`status.update` may be held back here (B.9).
    pub(super) fn reorders(&self) -> bool {
        matches!(self, Channel::Public { .. } | Channel::Hashtag { .. })
    }

    /// The data line this channel sends for `ev`, if it carries it.
    pub(super) fn payload<'a>(&self, ev: &'a Event) -> Option<&'a Bytes> {
        let Some(a) = &ev.audience else {
            let carries = match ev.only {
                Some(Only::User) => matches!(self, Channel::User),
                Some(Only::Direct) => matches!(self, Channel::Direct),
                None => matches!(self, Channel::User | Channel::UserNotification),
            };
            return carries.then_some(&ev.payload);
        };
        let public = || ev.filtered.as_ref().unwrap_or(&ev.payload);
        match self {
            Channel::User => a.home.then_some(&ev.payload),
            Channel::Public { scope, media } => (scope.admits(a.local) && (!media || a.media)).then(public),
            Channel::Hashtag { tag, local } => (a.tags.contains(tag) && (!local || a.local)).then(public),
            Channel::List(l) => (a.list == Some(l.as_str())).then_some(&ev.payload),
            Channel::UserNotification | Channel::Direct => None,
        }
    }
}

/// What a REST call reads from.
pub(super) enum Timeline {
    Statuses(Box<dyn Fn(&Audience) -> bool>),
    Notifications,
}
