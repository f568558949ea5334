//! Mastodon streaming on the simulator (protocols.md B.1-B.9): one status and
//! notification history per simulator, bearer-token checks, the SSE channels
//! of B.3 with Mastodon's exact wire format (B.6, B.9), the health check and
//! the REST catch-up timelines of B.8 with Link and rate-limit headers.
//!
//! Statuses are generated at the simulator's `rate` while at least one
//! Mastodon stream is open (rate 0: only on demand, through
//! `SimHandle::mastodon_publish` and friends). Every event goes through one
//! broadcast channel; each SSE connection has a producer task that picks the
//! events its channel carries, writes them through the same body machinery as
//! Twitter (`wire::BodyStream`) and applies the attempt's script: `status`,
//! `close_after` (+ `reset`), `limit`, `disconnect_after` (a clean end, like a
//! revoked token's `kill`), `silence_after`/`silence_ms` and `split`. The
//! Twitter-only junk options (`malformed_every`, `oversized_at`, `mix`,
//! `broadcast`) do not apply.
//!
//! The accepted tokens can be revoked while streams are open
//! (`SimHandle::mastodon_revoke`): SSE bodies then end cleanly. With
//! `mastodon_update_delay_ms`, `update` and `status.update` on public and
//! hashtag channels are held back a random while (B.9). The WebSocket side
//! (same events, same channels) is in `mastodon_ws`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, watch};

use super::mastodon_ws::WsLog;
use super::pace::Pacer;
use super::scenario::{AttemptScript, Split};
use super::wire::{self, BodyStream, ConnFd, Halt, Piece, CHANNEL_DEPTH};
use super::{lock, ConnSlot, SentMessage, Shared, SimHandle, SimulatorConfig};

/// The bearer token `SimulatorConfig::default()` accepts.
pub const DEMO_MASTODON_TOKEN: &str = "demo-mastodon-token";

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
const RATE_LIMIT: u32 = 300;
const RATE_WINDOW: Duration = Duration::from_secs(300);
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
struct Audience {
    local: bool,
    media: bool,
    /// Lower-case names.
    tags: Vec<String>,
    home: bool,
    list: Option<&'static str>,
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
    subscribers: AtomicUsize,
    generating: AtomicBool,
    /// Per rate-limit key: window start and calls in it. Keys are accepted
    /// tokens and "anonymous", so the map is bounded.
    limits: Mutex<HashMap<String, (Instant, u32)>>,
    /// Most that an `update`/`status.update` is held back on public and
    /// hashtag channels (0: never).
    pub(super) update_delay_ms: u64,
    /// The WebSocket ping interval.
    pub(super) ws_ping: Duration,
    /// The WebSocket connections, for `SimHandle::mastodon_ws_connections`.
    pub(super) ws_log: WsLog,
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
    fn emit(&self, event: Event) {
        let _ = self.events.send(Arc::new(event));
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
        push_capped(&mut h.statuses, status);
        self.emit(Event {
            kind: "update",
            id: id.clone(),
            filtered: Some(Bytes::from(with_filtered(&json))),
            payload: Bytes::from(json),
            audience: Some(audience.clone()),
            only: None,
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
        push_capped(&mut h.notifications, Arc::new(Notification { id: id.clone(), json: json.clone() }));
        self.emit(Event {
            kind: "notification",
            id: id.clone(),
            payload: Bytes::from(json),
            filtered: None,
            audience: None,
            only: None,
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
    fn step(&self) {
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
}

fn push_capped<T>(q: &mut VecDeque<T>, item: T) {
    while q.len() >= MAX_MASTODON_HISTORY {
        q.pop_front();
    }
    q.push_back(item);
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

impl SimHandle {
    /// Publishes `n` new statuses with random authors and tags, as the
    /// generator does, and returns them in id order.
    pub fn mastodon_publish(&self, n: usize) -> Vec<MastodonPost> {
        let m = &self.shared.mastodon;
        let mut h = lock(&m.history);
        (0..n).map(|_| m.post(&mut h, None, None, None)).collect()
    }

    /// Publishes one status with exactly these hashtags, local or remote,
    /// with or without media.
    pub fn mastodon_post(&self, tags: &[&str], local: bool, media: bool) -> MastodonPost {
        let m = &self.shared.mastodon;
        let mut h = lock(&m.history);
        m.post(&mut h, Some(tags), Some(local), Some(media))
    }

    /// Deletes a status: removed from the history, `delete` on the streams
    /// it reached. False when `id` is not (or no longer) in the history.
    pub fn mastodon_delete(&self, id: &str) -> bool {
        let m = &self.shared.mastodon;
        let mut h = lock(&m.history);
        m.delete(&mut h, Some(id)).is_some()
    }

    /// Sends a notification to the token's user; returns its id.
    pub fn mastodon_notify(&self) -> String {
        let m = &self.shared.mastodon;
        let mut h = lock(&m.history);
        m.notify(&mut h)
    }

    /// Emits one event of every kind not covered by the methods above (see
    /// `State::catalogue`); returns (SPEC 4 kind, stream joined with ':') of
    /// each, `unknown` for `encrypted_message`.
    pub fn mastodon_emit_catalogue(&self) -> Vec<(String, String)> {
        let m = &self.shared.mastodon;
        let mut h = lock(&m.history);
        m.catalogue(&mut h)
    }

    /// Revokes a bearer token, like Mastodon's `kill` (B.2, B.9): it is no
    /// longer accepted (later connects get 401 `Invalid access token`),
    /// every open SSE stream with it ends its body cleanly and every open
    /// WebSocket with it gets a Close frame with no status code. True when
    /// the token was accepted until now.
    pub fn mastodon_revoke(&self, token: &str) -> bool {
        let m = &self.shared.mastodon;
        let removed = {
            let mut tokens = lock(&m.tokens);
            let before = tokens.len();
            tokens.retain(|t| t != token);
            tokens.len() != before
        };
        m.revocations.send_modify(|n| *n = n.wrapping_add(1));
        removed
    }
}

/// Registers the Mastodon routes.
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/api/v1/streaming/health").route(web::get().to(health)))
        .service(web::resource("/api/v1/streaming").route(web::get().to(bare_streaming)))
        .service(web::resource("/api/v1/streaming/{tail:.*}").route(web::get().to(stream)))
        .service(web::resource("/api/v1/timelines/public").route(web::get().to(public_timeline)))
        .service(web::resource("/api/v1/timelines/tag/{tag}").route(web::get().to(tag_timeline)))
        .service(web::resource("/api/v1/timelines/home").route(web::get().to(home_timeline)))
        .service(web::resource("/api/v1/timelines/list/{list}").route(web::get().to(list_timeline)))
        .service(web::resource("/api/v1/notifications").route(web::get().to(notifications)));
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; charset=utf-8").body("OK")
}

/// B.9: plain `GET /api/v1/streaming` on the streaming host is a 400.
async fn bare_streaming() -> HttpResponse {
    error_json(400, "Unknown channel requested", None)
}

/// The error message of a scripted refusal with `status`.
pub(super) fn scripted_message(status: u16) -> &'static str {
    match status {
        401 => "Invalid access token",
        s if s >= 500 => "An unexpected error occurred",
        s => StatusCode::from_u16(s).ok().and_then(|c| c.canonical_reason()).unwrap_or("Error"),
    }
}

fn error_json(status: u16, message: &str, retry_after: Option<u64>) -> HttpResponse {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = HttpResponse::build(code);
    if let Some(s) = retry_after {
        resp.insert_header((header::RETRY_AFTER, s.to_string()));
    }
    resp.json(serde_json::json!({ "error": message }))
}

/// The streaming server's token lookup (B.2, B.9): the `Authorization`
/// header with the `Bearer ` prefix stripped (exactly that, case-sensitive;
/// anything else is taken whole as the token), else `access_token`.
fn streaming_token(req: &HttpRequest, params: &[(String, String)]) -> Option<String> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        return Some(value.strip_prefix("Bearer ").map(str::to_string).unwrap_or(value));
    }
    params.iter().find(|(k, _)| k == "access_token").map(|(_, v)| v.clone())
}

/// Mastodon's truthiness of `only_media` (B.3).
pub(super) fn truthy(value: Option<&str>) -> bool {
    value.is_some_and(|v| !matches!(v, "" | "false" | "0" | "f" | "F" | "FALSE" | "off" | "OFF"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scope {
    All,
    Local,
    Remote,
}

impl Scope {
    fn admits(self, local: bool) -> bool {
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

pub(super) fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

impl Channel {
    fn parse(tail: &str, params: &[(String, String)]) -> Result<Channel, (u16, &'static str)> {
        let media = truthy(param(params, "only_media"));
        let tag = || match param(params, "tag").map(normalise_tag) {
            Some(t) if !t.is_empty() => Ok(t),
            _ => Err((400, "Missing tag name parameter")),
        };
        Ok(match tail {
            "user" => Channel::User,
            "user/notification" => Channel::UserNotification,
            "public" => Channel::Public { scope: Scope::All, media },
            "public/local" => Channel::Public { scope: Scope::Local, media },
            "public/remote" => Channel::Public { scope: Scope::Remote, media },
            "hashtag" => Channel::Hashtag { tag: tag()?, local: false },
            "hashtag/local" => Channel::Hashtag { tag: tag()?, local: true },
            "list" => match param(params, "list") {
                None | Some("") => return Err((400, "Missing list name parameter")),
                Some(l) if LISTS.contains(&l) => Channel::List(l.to_string()),
                Some(_) => return Err((401, "Not authorized to stream this list")),
            },
            "direct" => Channel::Direct,
            _ => return Err((400, "Unknown channel requested")),
        })
    }

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

/// Counts an open Mastodon stream; the last one to go stops the generator.
pub(super) struct Subscription(Arc<Shared>);

impl Subscription {
    pub(super) fn new(shared: &Arc<Shared>) -> Subscription {
        let m = &shared.mastodon;
        m.subscribers.fetch_add(1, Ordering::SeqCst);
        if shared.rate > 0 && !m.generating.swap(true, Ordering::SeqCst) {
            actix_rt::spawn(generate(Arc::clone(shared)));
        }
        Subscription(Arc::clone(shared))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.0.mastodon.subscribers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The generator: `rate` events per second while someone is subscribed.
async fn generate(shared: Arc<Shared>) {
    let m = &shared.mastodon;
    let mut pacer = Pacer::new(shared.rate);
    let mut stop = shared.stop.subscribe();
    loop {
        if m.subscribers.load(Ordering::SeqCst) == 0 {
            m.generating.store(false, Ordering::SeqCst);
            // A subscriber that arrived meanwhile saw `generating` still set
            // and started nothing: carry on for it, unless another did.
            if m.subscribers.load(Ordering::SeqCst) == 0 || m.generating.swap(true, Ordering::SeqCst) {
                return;
            }
        }
        while !pacer.try_take() {
            tokio::select! {
                _ = pacer.tick() => {}
                _ = wire::stopped(&mut stop) => {
                    m.generating.store(false, Ordering::SeqCst);
                    return;
                }
            }
        }
        m.step();
    }
}

/// `GET /api/v1/streaming/<channel>`: an SSE stream (B.3, B.6).
async fn stream(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let opened_at = Instant::now();
    let tail = req.match_info().get("tail").unwrap_or("").to_string();
    let params: Vec<(String, String)> = form_urlencoded::parse(req.query_string().as_bytes()).into_owned().collect();
    let visible = super::visible_params(&params, |k| k == "access_token");
    let token = streaming_token(&req, &params);
    let revoked = shared.mastodon.revocations();
    let auth = shared.mastodon.check_token(token.as_deref());
    let (attempt, script) = shared.next_attempt();
    let log = |status: u16, auth_ok: bool| ConnSlot::for_request(&req, attempt, &visible, auth_ok, status, opened_at);
    if let Err(message) = auth {
        shared.open(log(401, false)).finish("status");
        return error_json(401, message, None);
    }
    if let Some(status) = script.status.filter(|s| *s != 200) {
        shared.open(log(status, true)).finish("status");
        return error_json(status, scripted_message(status), script.retry_after_s);
    }
    let channel = match Channel::parse(&tail, &params) {
        Ok(c) => c,
        Err((status, message)) => {
            shared.open(log(status, true)).finish("status");
            return error_json(status, message, None);
        }
    };
    let slot = shared.open(log(200, true));
    let events = shared.mastodon.events.subscribe();
    let shared = shared.into_inner();
    let subscription = Subscription::new(&shared);
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let fd = req.conn_data::<ConnFd>().map(|c| c.0);
    let seed = attempt.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED;
    let producer = SseProducer {
        out: SseWriter {
            tx,
            stop: shared.stop.subscribe(),
            split: script.split,
            rng: fastrand::Rng::with_seed(seed),
            frames: 0,
            last_write: Instant::now(),
        },
        stop: shared.stop.subscribe(),
        held: Holdback::new(shared.mastodon.update_delay_ms, seed),
        token: token.unwrap_or_default(),
        revoked,
        shared,
        slot,
        script,
        channel,
        events,
        _subscription: subscription,
    };
    actix_rt::spawn(producer.run());
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "private, no-store"))
        .streaming(BodyStream::new(rx, fd))
}

/// Writes SSE bytes into the body channel, cut per the script's `split`.
struct SseWriter {
    tx: mpsc::Sender<Piece>,
    stop: watch::Receiver<bool>,
    split: Split,
    rng: fastrand::Rng,
    frames: u64,
    last_write: Instant,
}

impl SseWriter {
    /// One event block or comment, cut into chunks per `split`.
    async fn frame(&mut self, frame: Bytes) -> Result<(), Halt> {
        let frame_no = self.frames;
        self.frames += 1;
        for piece in wire::split_frame(self.split, frame_no, &frame, &mut self.rng) {
            self.send(Piece::Data(piece)).await?;
        }
        Ok(())
    }

    async fn send(&mut self, piece: Piece) -> Result<(), Halt> {
        tokio::select! {
            biased;
            sent = self.tx.send(piece) => sent.map_err(|_| Halt::ClientClosed)?,
            _ = wire::stopped(&mut self.stop) => return Err(Halt::ServerStop),
        }
        self.last_write = Instant::now();
        Ok(())
    }
}

/// Feeds one SSE connection.
struct SseProducer {
    shared: Arc<Shared>,
    slot: Arc<ConnSlot>,
    script: AttemptScript,
    channel: Channel,
    events: broadcast::Receiver<Arc<Event>>,
    out: SseWriter,
    stop: watch::Receiver<bool>,
    /// Updates held back (B.9), with their data lines.
    held: Holdback<(Arc<Event>, Bytes)>,
    /// The token it was opened with, rechecked at every revocation.
    token: String,
    revoked: watch::Receiver<u64>,
    _subscription: Subscription,
}

impl SseProducer {
    async fn run(mut self) {
        let end = match self.stream().await {
            Ok(end) => end,
            Err(Halt::ClientClosed) => "client closed",
            Err(Halt::ServerStop) => "server stop",
        };
        self.slot.finish(end);
        self.shared.close(&self.slot);
        tracing::debug!(
            attempt = self.slot.attempt,
            end,
            messages = self.slot.messages.load(Ordering::Relaxed),
            "simulated mastodon stream ended"
        );
    }

    async fn stream(&mut self) -> Result<&'static str, Halt> {
        // B.9: the preamble is a comment and one LF, no blank line.
        self.out.frame(Bytes::from_static(b":)\n")).await?;
        let keepalive = self.shared.keepalive;
        let mut sent: u64 = 0;
        let mut silenced = false;
        loop {
            let s = &self.script;
            if s.close_after.is_some_and(|n| sent >= n) {
                let reset = s.reset;
                self.out.send(Piece::Abort { reset }).await?;
                return Ok(if reset { "reset" } else { "close_after" });
            }
            if s.disconnect_after.is_some_and(|n| sent >= n) {
                // Like a revoked token's `kill`: the body just ends.
                return Ok("disconnect");
            }
            if s.limit.is_some_and(|n| sent >= n) {
                return Ok("limit");
            }
            if !silenced && s.silence_after.is_some_and(|n| sent >= n) {
                silenced = true;
                let how_long = Duration::from_millis(s.silence_ms);
                tokio::select! {
                    _ = tokio::time::sleep(how_long) => {}
                    _ = self.out.tx.closed() => return Err(Halt::ClientClosed),
                    _ = wire::stopped(&mut self.stop) => return Err(Halt::ServerStop),
                }
                self.out.last_write = Instant::now();
            }
            let idle = keepalive.saturating_sub(self.out.last_write.elapsed());
            let due = self.held.next_due();
            tokio::select! {
                r = self.events.recv() => match r {
                    Ok(ev) => {
                        if let Some(payload) = self.channel.payload(&ev).cloned() {
                            let item = (ev, payload);
                            let now = if self.channel.reorders() && item.0.reorderable() {
                                self.held.hold(item)
                            } else {
                                Some(item)
                            };
                            if let Some((ev, payload)) = now {
                                self.write(&ev, payload).await?;
                                sent += 1;
                            }
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(attempt = self.slot.attempt, missed, "mastodon subscriber lagged");
                        self.out.send(Piece::Abort { reset: false }).await?;
                        return Ok("lagged");
                    }
                    Err(RecvError::Closed) => return Err(Halt::ServerStop),
                },
                _ = tokio::time::sleep(idle) => {
                    if self.out.last_write.elapsed() >= keepalive {
                        self.out.frame(Bytes::from_static(b":thump\n\n")).await?;
                    }
                }
                _ = until(due) => {
                    if let Some((ev, payload)) = self.held.pop_due() {
                        self.write(&ev, payload).await?;
                        sent += 1;
                    }
                }
                _ = changed(&mut self.revoked) => {
                    if !self.shared.mastodon.token_ok(&self.token) {
                        // B.9: the body simply ends.
                        return Ok("revoked");
                    }
                }
                _ = self.out.tx.closed() => return Err(Halt::ClientClosed),
                _ = wire::stopped(&mut self.stop) => return Err(Halt::ServerStop),
            }
        }
    }

    /// One event block.
    async fn write(&mut self, ev: &Event, payload: Bytes) -> Result<(), Halt> {
        let mut block = BytesMut::with_capacity(payload.len() + ev.kind.len() + 16);
        block.extend_from_slice(b"event: ");
        block.extend_from_slice(ev.kind.as_bytes());
        block.extend_from_slice(b"\ndata: ");
        block.extend_from_slice(&payload);
        block.extend_from_slice(b"\n\n");
        self.out.frame(block.freeze()).await?;
        self.note(ev, &payload);
        Ok(())
    }

    fn note(&self, ev: &Event, payload: &Bytes) {
        self.slot.messages.fetch_add(1, Ordering::Relaxed);
        if self.shared.record_sent > 0 {
            self.shared.record(SentMessage {
                attempt: self.slot.attempt,
                kind: ev.kind,
                id: Some(ev.id.clone()),
                for_user: None,
                payload: payload.clone(),
            });
        }
    }
}

/// Events held back a random 0..=`max_ms` ms (B.9: on public and hashtag
/// channels `update` and `status.update` wait for a database check while
/// everything else goes out at once). At most `MAX_HELD` at a time; past
/// that, events go out at once.
pub(super) struct Holdback<T> {
    max_ms: u64,
    rng: fastrand::Rng,
    seq: u64,
    held: BTreeMap<(Instant, u64), T>,
}

/// Bound of `Holdback`.
const MAX_HELD: usize = 4096;

impl<T> Holdback<T> {
    pub(super) fn new(max_ms: u64, seed: u64) -> Holdback<T> {
        Holdback { max_ms, rng: fastrand::Rng::with_seed(seed), seq: 0, held: BTreeMap::new() }
    }

    /// Holds `item` for a random while, or gives it back to send now.
    pub(super) fn hold(&mut self, item: T) -> Option<T> {
        if self.max_ms == 0 || self.held.len() >= MAX_HELD {
            return Some(item);
        }
        let ms = self.rng.u64(0..=self.max_ms);
        if ms == 0 {
            return Some(item);
        }
        self.seq += 1;
        self.held.insert((Instant::now() + Duration::from_millis(ms), self.seq), item);
        None
    }

    /// When the next held item is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.held.keys().next().map(|(at, _)| *at)
    }

    /// The next held item if it is due.
    pub(super) fn pop_due(&mut self) -> Option<T> {
        let (at, _) = *self.held.keys().next()?;
        if at > Instant::now() {
            return None;
        }
        self.held.pop_first().map(|(_, item)| item)
    }

    /// Keeps only the held items `keep` accepts.
    pub(super) fn retain(&mut self, keep: impl Fn(&T) -> bool) {
        self.held.retain(|_, item| keep(item));
    }
}

/// Resolves at `due`; never without one.
pub(super) async fn until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// Resolves at the next change; never once the sender is gone.
pub(super) async fn changed(rx: &mut watch::Receiver<u64>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Mastodon's id order: length first, then lexical (B.8).
fn id_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// The REST token: `Authorization: Bearer` (OAuth's scheme is
/// case-insensitive) or `access_token`.
fn rest_token(req: &HttpRequest, params: &[(String, String)]) -> Option<String> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = value.trim().split_once(' ').unwrap_or((value, ""));
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string());
    }
    param(params, "access_token").map(str::to_string)
}

/// What a REST call reads from.
enum Timeline {
    Statuses(Box<dyn Fn(&Audience) -> bool>),
    Notifications,
}

async fn public_timeline(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let params = query(&req);
    let scope = scope_of(&params);
    let media = truthy(param(&params, "only_media"));
    let tl = Timeline::Statuses(Box::new(move |a: &Audience| scope.admits(a.local) && (!media || a.media)));
    rest(&req, &shared, &params, false, tl)
}

async fn tag_timeline(req: HttpRequest, shared: web::Data<Shared>, path: web::Path<String>) -> HttpResponse {
    let params = query(&req);
    let scope = scope_of(&params);
    let media = truthy(param(&params, "only_media"));
    let tag = normalise_tag(&path.into_inner());
    let tl = Timeline::Statuses(Box::new(move |a: &Audience| {
        a.tags.contains(&tag) && scope.admits(a.local) && (!media || a.media)
    }));
    rest(&req, &shared, &params, false, tl)
}

async fn home_timeline(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let params = query(&req);
    rest(&req, &shared, &params, true, Timeline::Statuses(Box::new(|a: &Audience| a.home)))
}

async fn list_timeline(req: HttpRequest, shared: web::Data<Shared>, path: web::Path<String>) -> HttpResponse {
    let params = query(&req);
    let Some(list) = LISTS.iter().copied().find(|l| *l == path.as_str()) else {
        // Checked after auth and rate limit below would be more faithful;
        // an unknown list is answered like Mastodon's missing record.
        return match rest_auth(&req, &shared, &params, true) {
            Ok(headers) => {
                with_headers(HttpResponse::NotFound(), &headers).json(serde_json::json!({"error": "Record not found"}))
            }
            Err(resp) => *resp,
        };
    };
    rest(&req, &shared, &params, true, Timeline::Statuses(Box::new(move |a: &Audience| a.list == Some(list))))
}

async fn notifications(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let params = query(&req);
    rest(&req, &shared, &params, true, Timeline::Notifications)
}

pub(super) fn query(req: &HttpRequest) -> Vec<(String, String)> {
    form_urlencoded::parse(req.query_string().as_bytes()).into_owned().collect()
}

fn scope_of(params: &[(String, String)]) -> Scope {
    if truthy(param(params, "local")) {
        Scope::Local
    } else if truthy(param(params, "remote")) {
        Scope::Remote
    } else {
        Scope::All
    }
}

type Headers = Vec<(&'static str, String)>;

fn with_headers(mut builder: actix_web::HttpResponseBuilder, headers: &Headers) -> actix_web::HttpResponseBuilder {
    for (k, v) in headers {
        builder.insert_header((*k, v.clone()));
    }
    builder
}

/// Token check and rate limit; the rate-limit headers on success.
fn rest_auth(
    req: &HttpRequest,
    shared: &Shared,
    params: &[(String, String)],
    token_required: bool,
) -> Result<Headers, Box<HttpResponse>> {
    let m = &shared.mastodon;
    let key = match rest_token(req, params) {
        Some(t) if m.token_ok(&t) => t,
        Some(_) => return Err(Box::new(error_json(401, "The access token is invalid", None))),
        None if token_required => return Err(Box::new(error_json(401, "The access token is invalid", None))),
        None => "anonymous".to_string(),
    };
    let now = Instant::now();
    let (start, used) = {
        let mut limits = lock(&m.limits);
        let entry = limits.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= RATE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        *entry
    };
    let left = RATE_WINDOW.saturating_sub(now.duration_since(start));
    let reset = chrono::Utc::now() + chrono::Duration::milliseconds(i64::try_from(left.as_millis()).unwrap_or(0));
    let headers = vec![
        ("X-RateLimit-Limit", RATE_LIMIT.to_string()),
        ("X-RateLimit-Remaining", RATE_LIMIT.saturating_sub(used).to_string()),
        ("X-RateLimit-Reset", reset.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()),
    ];
    if used > RATE_LIMIT {
        return Err(Box::new(
            with_headers(HttpResponse::TooManyRequests(), &headers)
                .json(serde_json::json!({"error": "Too many requests"})),
        ));
    }
    Ok(headers)
}

/// One REST page (B.8): newest first; `max_id` bounds from above,
/// `since_id` and `min_id` from below; with `min_id` the page is the one
/// immediately newer than it. Link: `next` = older, `prev` = newer.
fn rest(
    req: &HttpRequest,
    shared: &Shared,
    params: &[(String, String)],
    token_required: bool,
    timeline: Timeline,
) -> HttpResponse {
    let headers = match rest_auth(req, shared, params, token_required) {
        Ok(h) => h,
        Err(resp) => return *resp,
    };
    let (default_limit, max_limit) = match timeline {
        Timeline::Statuses(_) => (20, 40),
        Timeline::Notifications => (40, 80),
    };
    let limit = param(params, "limit").and_then(|l| l.trim().parse::<usize>().ok()).unwrap_or(default_limit);
    let limit = limit.clamp(1, max_limit);
    let max_id = param(params, "max_id").filter(|s| !s.is_empty());
    let since_id = param(params, "since_id").filter(|s| !s.is_empty());
    let min_id = param(params, "min_id").filter(|s| !s.is_empty());
    let in_range = |id: &str| {
        max_id.map_or(true, |m| id_cmp(id, m).is_lt())
            && since_id.map_or(true, |s| id_cmp(id, s).is_gt())
            && min_id.map_or(true, |s| id_cmp(id, s).is_gt())
    };
    // (id, json), newest first.
    let page: Vec<(String, String)> = {
        let h = lock(&shared.mastodon.history);
        let items: Vec<(&str, &str)> = match &timeline {
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
        let chosen: Vec<(&str, &str)> = if min_id.is_some() {
            items.iter().take(limit).rev().copied().collect()
        } else {
            items.iter().rev().take(limit).copied().collect()
        };
        chosen.into_iter().map(|(i, j)| (i.to_string(), j.to_string())).collect()
    };
    let mut body = String::with_capacity(page.iter().map(|(_, j)| j.len() + 1).sum::<usize>() + 2);
    body.push('[');
    for (i, (_, json)) in page.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(json);
    }
    body.push(']');
    let mut resp = with_headers(HttpResponse::Ok(), &headers);
    if let (Some((newest, _)), Some((oldest, _))) = (page.first(), page.last()) {
        let base = format!("http://{}{}", req.connection_info().host(), req.path());
        let keep: Vec<&(String, String)> = params
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "max_id" | "min_id" | "since_id" | "access_token" | "limit"))
            .collect();
        let link = |key: &str, id: &str| {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("limit", &limit.to_string());
            for (k, v) in &keep {
                q.append_pair(k, v);
            }
            q.append_pair(key, id);
            format!("{base}?{}", q.finish())
        };
        resp.insert_header((
            header::LINK,
            format!("<{}>; rel=\"next\", <{}>; rel=\"prev\"", link("max_id", oldest), link("min_id", newest)),
        ));
    }
    resp.content_type("application/json; charset=utf-8").body(body)
}

#[cfg(test)]
#[path = "mastodon_tests.rs"]
mod tests;
