//! The message corpus: realistic Twitter v1.1 payloads for every kind in the
//! message catalogue (protocols.md A.5), built once as templates so a stream
//! renders a message by concatenating byte slices around a fresh id.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use super::scenario::{AttemptScript, Mix};

/// First id handed out. 19 digits, and the counter never leaves 19 digits in
/// practice, so `Mix::Fixed` frames all have the same length.
pub(crate) const FIRST_ID: u64 = 1_500_000_000_000_000_000;

/// Ids of nested statuses (retweeted, quoted, replied-to) sit below
/// `FIRST_ID`, so they never collide with a message's own id.
const NESTED_ID_BASE: u64 = 1_100_000_000_000_000_000;

/// Process-wide: ids stay unique across simulators running in one test binary.
static NEXT_ID: AtomicU64 = AtomicU64::new(FIRST_ID);

/// A fresh, never repeated message id.
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Which endpoint a stream serves: decides what a mix may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamKind {
    Filter,
    Sample,
    User,
    Site,
}

impl StreamKind {
    /// The `stream_name` Twitter put in disconnect messages.
    fn stream_name(self) -> &'static str {
        match self {
            StreamKind::Filter | StreamKind::Sample => "streamherd_sim-statuses",
            StreamKind::User => "streamherd_sim-user",
            StreamKind::Site => "streamherd_sim-site",
        }
    }

    fn has_user_messages(self) -> bool {
        matches!(self, StreamKind::User | StreamKind::Site)
    }
}

/// A value filled in at send time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// The message's unique id (numeric or inside a string).
    Id,
    /// `timestamp_ms`: 13 digits, inside a string.
    TimestampMs,
    /// `created_at`: `Wed Nov 22 10:00:00 +0000 2026` (always 30 bytes).
    CreatedAt,
    /// The cumulative `limit.track` count.
    Count,
}

/// Placeholders as they appear in a template's JSON text. A quoted `_N` token
/// loses its quotes: it becomes a JSON number.
const TOKENS: [(&str, Slot); 5] = [
    ("\"@@ID_N@@\"", Slot::Id),
    ("@@ID@@", Slot::Id),
    ("@@TS@@", Slot::TimestampMs),
    ("@@CREATED@@", Slot::CreatedAt),
    ("\"@@COUNT_N@@\"", Slot::Count),
];

/// A message split around its placeholders.
pub(crate) struct Template {
    parts: Vec<(Box<[u8]>, Option<Slot>)>,
}

/// Send-time values for a template's slots.
pub(crate) struct Fill<'a> {
    pub id: u64,
    pub count: u64,
    pub clock: &'a Clock,
}

impl Template {
    fn new(json: &str) -> Template {
        let mut parts = Vec::new();
        let mut rest = json;
        loop {
            let next = TOKENS
                .iter()
                .filter_map(|(tok, slot)| rest.find(tok).map(|at| (at, *tok, *slot)))
                .min_by_key(|(at, _, _)| *at);
            match next {
                Some((at, tok, slot)) => {
                    parts.push((rest.as_bytes()[..at].into(), Some(slot)));
                    rest = &rest[at + tok.len()..];
                }
                None => {
                    parts.push((rest.as_bytes().into(), None));
                    break;
                }
            }
        }
        Template { parts }
    }

    /// Appends the message to `out`.
    pub(crate) fn render(&self, out: &mut Vec<u8>, fill: &Fill<'_>) {
        for (literal, slot) in &self.parts {
            out.extend_from_slice(literal);
            match slot {
                Some(Slot::Id) => push_u64(out, fill.id),
                Some(Slot::Count) => push_u64(out, fill.count),
                Some(Slot::TimestampMs) => push_u64(out, fill.clock.ms),
                Some(Slot::CreatedAt) => out.extend_from_slice(fill.clock.created_at.as_bytes()),
                None => {}
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn has_slot_id(&self) -> bool {
        self.parts.iter().any(|(_, s)| *s == Some(Slot::Id))
    }
}

/// Decimal digits without going through `fmt`: this runs for every message.
pub(crate) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Wall-clock values for templates, refreshed per message but formatted only
/// when the second changes.
pub(crate) struct Clock {
    ms: u64,
    second: i64,
    created_at: String,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        let mut c = Clock { ms: 0, second: i64::MIN, created_at: String::new() };
        c.refresh();
        c
    }

    pub(crate) fn refresh(&mut self) {
        let now = chrono::Utc::now();
        self.ms = u64::try_from(now.timestamp_millis()).unwrap_or(0);
        if now.timestamp() != self.second {
            self.second = now.timestamp();
            self.created_at = now.format("%a %b %d %H:%M:%S +0000 %Y").to_string();
        }
    }
}

// ---------------------------------------------------------------------------
// Building JSON text in Twitter's field order (serde_json's map would sort).

/// An object written field by field, in the order given.
struct Obj(String);

impl Obj {
    fn new() -> Obj {
        Obj(String::from("{"))
    }
    fn key(&mut self, k: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        self.0.push('"');
        self.0.push_str(k);
        self.0.push_str("\":");
    }
    fn raw(mut self, k: &str, json: &str) -> Obj {
        self.key(k);
        self.0.push_str(json);
        self
    }
    fn str(self, k: &str, v: &str) -> Obj {
        let quoted = quote(v);
        self.raw(k, &quoted)
    }
    fn num(self, k: &str, v: u64) -> Obj {
        self.raw(k, &v.to_string())
    }
    fn bool(self, k: &str, v: bool) -> Obj {
        self.raw(k, if v { "true" } else { "false" })
    }
    fn null(self, k: &str) -> Obj {
        self.raw(k, "null")
    }
    fn opt_str(self, k: &str, v: Option<&str>) -> Obj {
        match v {
            Some(v) => self.str(k, v),
            None => self.null(k),
        }
    }
    fn end(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn array(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().collect();
    format!("[{}]", items.join(","))
}

/// Twitter's writer escaped every `/` and wrote `…` as `\u2026`.
fn twitter_escapes(json: &str) -> String {
    json.replace('/', "\\/").replace('\u{2026}', "\\u2026")
}

/// The older ASCII-only output: every non-ASCII character as `\uXXXX`,
/// astral ones as surrogate pairs.
fn ascii_escapes(json: &str) -> String {
    let mut out = String::with_capacity(json.len() * 2);
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{:04x}", u));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Seeds.

struct UserSeed {
    id: u64,
    name: &'static str,
    screen: &'static str,
    location: &'static str,
    description: &'static str,
    url: Option<&'static str>,
    followers: u64,
    friends: u64,
    statuses: u64,
    created_at: &'static str,
    verified: bool,
    color: &'static str,
}

const USERS: [UserSeed; 8] = [
    UserSeed {
        id: 96574766,
        name: "Tagesschau-Redaktion 📰",
        screen: "tagesschau_sim",
        location: "Hamburg, Deutschland",
        description: "Nachrichten… aus der Simulation: Wahlen, Wetter, Weltgeschehen. Hier twittert die Redaktion rund um die Uhr. Impressum: https://example.org/impressum",
        url: Some("https://example.org/tagesschau"),
        followers: 2_412_007,
        friends: 412,
        statuses: 187_223,
        created_at: "Sat Sep 26 08:13:41 +0000 2009",
        verified: true,
        color: "1DA1F2",
    },
    UserSeed {
        id: 783214,
        name: "Twitter API Sim",
        screen: "twitterapi_sim",
        location: "San Francisco, CA",
        description: "The simulated voice of the \"Streaming API\" — status updates & outages",
        url: Some("https://developer.example.com"),
        followers: 6_101_332,
        friends: 48,
        statuses: 3_701,
        created_at: "Wed May 23 06:01:13 +0000 2007",
        verified: true,
        color: "0084B4",
    },
    UserSeed {
        id: 2244994945,
        name: "Ada Lovelace",
        screen: "ada_lovelace",
        location: "London",
        description: "Poet of numbers 🔢 | Analytical Engine fan | writing notes on Menabrea's memoir, one bug at a time | she/her | views my own, obviously",
        url: None,
        followers: 18_233,
        friends: 1_022,
        statuses: 44_871,
        created_at: "Sat Dec 14 04:35:55 +0000 2013",
        verified: false,
        color: "E81C4F",
    },
    UserSeed {
        id: 1234567,
        name: "グレース",
        screen: "grace_hopper",
        location: "東京都 渋谷区",
        description: "バグを見つけた 🐛 日本語のプロフィールです。コンパイラとCOBOLの話をします。フォローはお気軽にどうぞ！ ナノ秒は30センチ。",
        url: None,
        followers: 902,
        friends: 877,
        statuses: 12_005,
        created_at: "Mon Mar 05 22:08:25 +0000 2007",
        verified: false,
        color: "19CF86",
    },
    UserSeed {
        id: 500000001,
        name: "News Desk Bot",
        screen: "newsdesk_bot",
        location: "",
        description: "Automated headlines every 5 minutes \\o/ <not a tag>",
        url: Some("http://news.example.net/feed?format=rss&lang=en"),
        followers: 55_210,
        friends: 0,
        statuses: 901_244,
        created_at: "Thu Jan 01 00:00:01 +0000 2015",
        verified: false,
        color: "ABB8C2",
    },
    UserSeed {
        id: 3141592653,
        name: "محمد",
        screen: "m_rtl_sim",
        location: "القاهرة",
        description: "نص عربي للاختبار، من اليمين إلى اليسار",
        url: None,
        followers: 3_311,
        friends: 2_950,
        statuses: 8_120,
        created_at: "Fri Mar 13 11:02:33 +0000 2015",
        verified: false,
        color: "3B94D9",
    },
    UserSeed {
        id: 271828,
        name: "Zoë Ünicode",
        screen: "zoe_unicode",
        location: "Zürich 🇨🇭",
        description: "Ελληνικά / русский / עברית / 한국어",
        url: Some("https://zoe.example.ch/ü"),
        followers: 777,
        friends: 778,
        statuses: 6_502,
        created_at: "Tue Apr 17 17:44:02 +0000 2007",
        verified: false,
        color: "F5ABB5",
    },
    UserSeed {
        id: 1618033988,
        name: "Line\nBreaker",
        screen: "line_breaker",
        location: "Tab\tLand",
        description: "Descriptions can hold\nnewlines, \"quotes\" and back\\slashes",
        url: None,
        followers: 42,
        friends: 4_200,
        statuses: 420,
        created_at: "Sun Aug 11 09:09:09 +0000 2013",
        verified: false,
        color: "981CEB",
    },
];

/// Short texts (compatibility-mode tweets): emoji outside the BMP, CJK, RTL,
/// quotes, backslashes, newlines, HTML entities, slashes and `…`.
const TEXTS: [&str; 16] = [
    "Wahlabend in Berlin 🗳️ Die ersten Hochrechnungen sind da. #cdu #spd https://t.co/Wq3xR8vLp2",
    "Line one\nLine two with a \"quoted\" word, a back\\slash and C:\\temp #rustlang",
    "東京で開催された会議について、詳しくはこちら… https://t.co/Jk29dLm0Qa #テスト",
    "@ada_lovelace totally agree 😂🔥 streaming APIs are tricky #streaming",
    "Family 👨‍👩‍👧‍👦 flags 🇩🇪🇫🇷🇯🇵 and math 𝔸𝕓𝕔 — all outside the BMP",
    "Tom &amp; Jerry &lt;3 &gt; everything else. HTML entities stay escaped in v1.1",
    "مرحبا بالعالم! هذا اختبار للنص من اليمين إلى اليسار #اختبار",
    "Breaking: the feed is up again 🎉 https://t.co/Zz81KqPq0v via @newsdesk_bot",
    "Ελληνικά, русский, עברית, हिन्दी — one tweet, five scripts 🌍 #unicode",
    "Tab\tseparated\tvalues and a trailing newline\n",
    "Quote of the day: \"Programs must be written for people to read\" — H. Abelson #quotes",
    "@grace_hopper @ada_lovelace meeting at 10:00 ☕ bring the slides https://t.co/Mn4Pq7Rs9t",
    "Zero width joiner: 👩‍💻 skin tones 👋🏽👋🏿 keycap 1️⃣ #emoji",
    "한국어 텍스트와 中文 混合 text 🇰🇷 #다국어",
    "Election night thread 🧵 1/12: turnout at 61.2 % in the first districts #btw #wahl https://t.co/Aa0Bb1Cc2D",
    "Slashes / in text and paths like /usr/local/bin get escaped as \\/ by the writer",
];

/// Long texts (`extended_tweet.full_text`, up to 280 characters).
const LONG_TEXTS: [&str; 4] = [
    "Thread 🧵 on reconnect etiquette: back off linearly on network errors, exponentially on HTTP errors, and start at a full minute on 420. Never hammer the endpoint — @twitterapi_sim will rate limit you, and then everyone on your IP suffers. Details: https://t.co/BkOff12345 #streaming",
    "長いツイートのテストです。Twitterの280文字制限を使って、日本語と English と emoji 🎌 を混ぜています。ストリーミングAPIは改行で区切られたJSONを送ってきます… 受信側はUTF-8の途中で切れたチャンクにも対応しなければなりません。チャンクの境界はメッセージの境界と一致しないので、バッファを保持して改行まで待つ必要があります。 #テスト #長文",
    "Why length-delimited framing counts bytes, not characters: \"ü\" is 2 bytes, \"€\" is 3 and \"🚀\" is 4. A reader that counts chars will cut this very tweet in the wrong place 🚀🚀🚀 — ask @ada_lovelace, she counted. https://t.co/LenDel6789",
    "Live from the count: district 1 ✅ district 2 ✅ district 3 ⏳ district 4 ⏳ district 5 ❌ (recount requested) — we update this tweet every few minutes, follow #wahl and #btw for the full picture, and please don't trust screenshots of old numbers. https://t.co/CoUnT00001",
];

const SOURCES: [&str; 4] = [
    "<a href=\"http://twitter.com/download/android\" rel=\"nofollow\">Twitter for Android</a>",
    "<a href=\"http://twitter.com/download/iphone\" rel=\"nofollow\">Twitter for iPhone</a>",
    "<a href=\"https://mobile.twitter.com\" rel=\"nofollow\">Twitter Web App</a>",
    "<a href=\"https://example.org/bot\" rel=\"nofollow\">streamherd-sim bot</a>",
];

fn user_json(u: &UserSeed) -> String {
    let img = format!("http://pbs.twimg.com/profile_images/{}/avatar_normal.jpg", u.id);
    Obj::new()
        .num("id", u.id)
        .str("id_str", &u.id.to_string())
        .str("name", u.name)
        .str("screen_name", u.screen)
        .str("location", u.location)
        .opt_str("url", u.url)
        .str("description", u.description)
        .str("translator_type", "none")
        .bool("protected", false)
        .bool("verified", u.verified)
        .num("followers_count", u.followers)
        .num("friends_count", u.friends)
        .num("listed_count", u.followers / 97)
        .num("favourites_count", u.statuses / 3)
        .num("statuses_count", u.statuses)
        .str("created_at", u.created_at)
        .null("utc_offset")
        .null("time_zone")
        .bool("geo_enabled", u.id % 2 == 0)
        .null("lang")
        .bool("contributors_enabled", false)
        .bool("is_translator", false)
        .str("profile_background_color", "C0DEED")
        .str("profile_background_image_url", "http://abs.twimg.com/images/themes/theme1/bg.png")
        .str("profile_background_image_url_https", "https://abs.twimg.com/images/themes/theme1/bg.png")
        .bool("profile_background_tile", false)
        .str("profile_link_color", u.color)
        .str("profile_sidebar_border_color", "C0DEED")
        .str("profile_sidebar_fill_color", "DDEEF6")
        .str("profile_text_color", "333333")
        .bool("profile_use_background_image", true)
        .str("profile_image_url", &img)
        .str("profile_image_url_https", &img.replacen("http:", "https:", 1))
        .str("profile_banner_url", &format!("https://pbs.twimg.com/profile_banners/{}/1500000000", u.id))
        .bool("default_profile", u.color == "1DA1F2")
        .bool("default_profile_image", false)
        .null("following")
        .null("follow_request_sent")
        .null("notifications")
        .end()
}

fn user_by_screen(screen: &str) -> Option<&'static UserSeed> {
    USERS.iter().find(|u| u.screen.eq_ignore_ascii_case(screen))
}

/// The `entities` object for `text`, with indices in code points; `t.co`
/// links whose code starts with `MeDiA` are media and left out of `urls`.
fn entities(text: &str, media: Option<&str>) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut hashtags = Vec::new();
    let mut mentions = Vec::new();
    let mut urls = Vec::new();
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let boundary = i == 0 || !word(chars[i - 1]);
        if (c == '#' || c == '@') && boundary {
            let mut j = i + 1;
            while j < chars.len()
                && (if c == '#' { word(chars[j]) } else { chars[j].is_ascii_alphanumeric() || chars[j] == '_' })
            {
                j += 1;
            }
            if j > i + 1 {
                let name: String = chars[i + 1..j].iter().collect();
                let indices = format!("[{},{}]", i, j);
                if c == '#' {
                    hashtags.push(Obj::new().str("text", &name).raw("indices", &indices).end());
                } else {
                    let (id, display) = match user_by_screen(&name) {
                        Some(u) => (u.id, u.name.to_string()),
                        None => (1000 + name.len() as u64, name.clone()),
                    };
                    mentions.push(
                        Obj::new()
                            .str("screen_name", &name)
                            .str("name", &display)
                            .num("id", id)
                            .str("id_str", &id.to_string())
                            .raw("indices", &indices)
                            .end(),
                    );
                }
                i = j;
                continue;
            }
        }
        if c == 'h' && boundary {
            let rest: String = chars[i..chars.len().min(i + 8)].iter().collect();
            if rest.starts_with("https://") || rest.starts_with("http://") {
                let mut j = i;
                while j < chars.len() && !chars[j].is_whitespace() {
                    j += 1;
                }
                let url: String = chars[i..j].iter().collect();
                let code = url.rsplit('/').next().unwrap_or("");
                if !code.starts_with("MeDiA") {
                    let expanded = if url.contains("t.co/") {
                        format!("https://example.com/articles/{code}/a-long-slug-that-gets-shortened")
                    } else {
                        url.clone()
                    };
                    let short: String = code.chars().take(6).collect();
                    let display = format!("example.com/articles/{short}…");
                    urls.push(
                        Obj::new()
                            .str("url", &url)
                            .str("expanded_url", &expanded)
                            .str("display_url", &display)
                            .raw("indices", &format!("[{},{}]", i, j))
                            .end(),
                    );
                }
                i = j;
                continue;
            }
        }
        i += 1;
    }
    let o = Obj::new()
        .raw("hashtags", &array(hashtags))
        .raw("urls", &array(urls))
        .raw("user_mentions", &array(mentions))
        .raw("symbols", "[]");
    match media {
        Some(m) => o.raw("media", m).end(),
        None => o.end(),
    }
}

/// The `media` array of a photo tweet (it appears in both `entities` and
/// `extended_entities`, as Twitter sent it).
fn media_array(text: &str, media_id: u64, owner: &UserSeed, status_id: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let code = format!("MeDiA{}", media_id % 100_000);
    let url = format!("https://t.co/{code}");
    let start = text.find(&url).map(|b| text[..b].chars().count()).unwrap_or(chars.len());
    let end = start + url.chars().count();
    let size = |w: u64, h: u64, resize: &str| Obj::new().num("w", w).num("h", h).str("resize", resize).end();
    let sizes = Obj::new()
        .raw("thumb", &size(150, 150, "crop"))
        .raw("medium", &size(1200, 675, "fit"))
        .raw("small", &size(680, 383, "fit"))
        .raw("large", &size(1920, 1080, "fit"))
        .end();
    let media = Obj::new()
        .num("id", media_id)
        .str("id_str", &media_id.to_string())
        .raw("indices", &format!("[{start},{end}]"))
        .str("media_url", &format!("http://pbs.twimg.com/media/{code}.jpg"))
        .str("media_url_https", &format!("https://pbs.twimg.com/media/{code}.jpg"))
        .str("url", &url)
        .str("display_url", &format!("pic.twitter.com/{code}"))
        .str("expanded_url", &format!("https://twitter.com/{}/status/{status_id}/photo/1", owner.screen))
        .str("type", "photo")
        .raw("sizes", &sizes)
        .end();
    array([media])
}

fn place_json(i: usize) -> (String, String, String) {
    const PLACES: [(&str, &str, &str, &str, f64, f64); 3] = [
        ("3078869807f9dd36", "Berlin", "Berlin, Deutschland", "DE", 13.4050, 52.5200),
        ("25530ba03b7d90c6", "Tōkyō", "東京都 渋谷区", "JP", 139.7016, 35.6580),
        ("5a110d312052166f", "San Francisco", "San Francisco, CA", "US", -122.4194, 37.7749),
    ];
    let (id, name, full, cc, lon, lat) = PLACES[i % PLACES.len()];
    let country = match cc {
        "DE" => "Deutschland",
        "JP" => "日本",
        _ => "United States",
    };
    let bbox = format!(
        "[[[{:.6},{:.6}],[{:.6},{:.6}],[{:.6},{:.6}],[{:.6},{:.6}]]]",
        lon - 0.3,
        lat - 0.2,
        lon - 0.3,
        lat + 0.2,
        lon + 0.3,
        lat + 0.2,
        lon + 0.3,
        lat - 0.2
    );
    let place = Obj::new()
        .str("id", id)
        .str("url", &format!("https://api.twitter.com/1.1/geo/id/{id}.json"))
        .str("place_type", "city")
        .str("name", name)
        .str("full_name", full)
        .str("country_code", cc)
        .str("country", country)
        .raw("bounding_box", &Obj::new().str("type", "Polygon").raw("coordinates", &bbox).end())
        .raw("attributes", "{}")
        .end();
    let coordinates = Obj::new().str("type", "Point").raw("coordinates", &format!("[{lon:.6},{lat:.6}]")).end();
    // `geo` is the deprecated lat,lon order.
    let geo = Obj::new().str("type", "Point").raw("coordinates", &format!("[{lat:.6},{lon:.6}]")).end();
    (place, coordinates, geo)
}

/// How a status's own id and time are written.
#[derive(Clone, Copy)]
enum Stamp {
    /// The message's id and send time (a top-level tweet).
    Live,
    /// Fixed values (a nested status).
    Fixed(u64),
}

/// What goes into one status object.
struct StatusSpec<'a> {
    stamp: Stamp,
    user: &'static UserSeed,
    text: &'a str,
    source: &'static str,
    place: Option<usize>,
    media: bool,
    retweeted: Option<String>,
    quoted: Option<(u64, &'static UserSeed, String)>,
    extended: Option<&'a str>,
    counts: (u64, u64, u64, u64),
    lang: &'static str,
    with_timestamp: bool,
}

fn status_json(s: &StatusSpec<'_>) -> String {
    let (id_num, id_str, created) = match s.stamp {
        Stamp::Live => ("\"@@ID_N@@\"".to_string(), "@@ID@@".to_string(), "@@CREATED@@".to_string()),
        Stamp::Fixed(id) => (id.to_string(), id.to_string(), "Tue Nov 21 18:42:07 +0000 2026".to_string()),
    };
    let status_id_for_urls = match s.stamp {
        Stamp::Live => "@@ID@@".to_string(),
        Stamp::Fixed(id) => id.to_string(),
    };
    let mut text = s.text.to_string();
    if s.media {
        text.push_str(&format!(" https://t.co/MeDiA{}", s.user.id % 100_000));
    }
    let reply_to = text
        .strip_prefix('@')
        .and_then(|rest| rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next())
        .and_then(user_by_screen);
    let mut o = Obj::new().str("created_at", &created).raw("id", &id_num).str("id_str", &id_str).str("text", &text);
    if s.extended.is_some() {
        o = o.raw("display_text_range", &format!("[0,{}]", text.chars().count()));
    }
    o = o.str("source", s.source).bool("truncated", s.extended.is_some());
    o = match reply_to {
        Some(u) => o
            .num("in_reply_to_status_id", NESTED_ID_BASE + u.id % 1_000_000)
            .str("in_reply_to_status_id_str", &(NESTED_ID_BASE + u.id % 1_000_000).to_string())
            .num("in_reply_to_user_id", u.id)
            .str("in_reply_to_user_id_str", &u.id.to_string())
            .str("in_reply_to_screen_name", u.screen),
        None => o
            .null("in_reply_to_status_id")
            .null("in_reply_to_status_id_str")
            .null("in_reply_to_user_id")
            .null("in_reply_to_user_id_str")
            .null("in_reply_to_screen_name"),
    };
    o = o.raw("user", &user_json(s.user));
    o = match s.place {
        Some(p) => {
            let (place, coordinates, geo) = place_json(p);
            o.raw("geo", &geo).raw("coordinates", &coordinates).raw("place", &place)
        }
        None => o.null("geo").null("coordinates").null("place"),
    };
    o = o.null("contributors");
    if let Some(rt) = &s.retweeted {
        o = o.raw("retweeted_status", rt);
    }
    if let Some((qid, quser, quoted)) = &s.quoted {
        let link = format!("https://twitter.com/{}/status/{qid}", quser.screen);
        o = o
            .num("quoted_status_id", *qid)
            .str("quoted_status_id_str", &qid.to_string())
            .raw("quoted_status", quoted)
            .raw(
                "quoted_status_permalink",
                &Obj::new()
                    .str("url", &format!("https://t.co/QuOt{}", qid % 10_000))
                    .str("expanded", &link)
                    .str("display", &format!("twitter.com/{}/status/…", quser.screen))
                    .end(),
            );
    }
    o = o.bool("is_quote_status", s.quoted.is_some());
    let media = s.media.then(|| media_array(&text, NESTED_ID_BASE / 2 + s.user.id, s.user, &status_id_for_urls));
    if let Some(full) = s.extended {
        let mut ext = Obj::new()
            .str("full_text", full)
            .raw("display_text_range", &format!("[0,{}]", full.chars().count()))
            .raw("entities", &entities(full, media.as_deref()));
        if let Some(m) = &media {
            ext = ext.raw("extended_entities", &Obj::new().raw("media", m).end());
        }
        o = o.raw("extended_tweet", &ext.end());
    }
    let (quotes, replies, retweets, favorites) = s.counts;
    o = o
        .num("quote_count", quotes)
        .num("reply_count", replies)
        .num("retweet_count", retweets)
        .num("favorite_count", favorites)
        .raw("entities", &entities(&text, media.as_deref()));
    if let Some(m) = &media {
        o = o.raw("extended_entities", &Obj::new().raw("media", m).end()).bool("possibly_sensitive", false);
    }
    o = o.bool("favorited", false).bool("retweeted", false).str("filter_level", "low").str("lang", s.lang);
    if s.with_timestamp {
        o = o.str("timestamp_ms", "@@TS@@");
    }
    o.end()
}

fn lang_of(text: &str) -> &'static str {
    if text.chars().any(|c| ('\u{3040}'..='\u{30ff}').contains(&c)) {
        "ja"
    } else if text.chars().any(|c| ('\u{0600}'..='\u{06ff}').contains(&c)) {
        "ar"
    } else if text.chars().any(|c| ('\u{ac00}'..='\u{d7af}').contains(&c)) {
        "ko"
    } else if text.contains("Wahl") || text.contains("Hochrechnungen") {
        "de"
    } else {
        "en"
    }
}

/// Variants of the 32 tweet templates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TweetVariant {
    Plain,
    Retweet,
    Quote,
    Extended,
}

fn variant_of(i: usize) -> TweetVariant {
    if i % 5 == 4 {
        TweetVariant::Retweet
    } else if i % 8 == 2 {
        TweetVariant::Quote
    } else if i % 6 == 1 {
        TweetVariant::Extended
    } else {
        TweetVariant::Plain
    }
}

/// A nested status (retweeted, quoted, event target) with a fixed id.
fn nested_status(n: usize, text: &str) -> (u64, &'static UserSeed, String) {
    let id = NESTED_ID_BASE + 7 * n as u64 + 1;
    let user = &USERS[(n + 3) % USERS.len()];
    let json = status_json(&StatusSpec {
        stamp: Stamp::Fixed(id),
        user,
        text,
        source: SOURCES[(n + 1) % SOURCES.len()],
        place: None,
        media: false,
        retweeted: None,
        quoted: None,
        extended: None,
        counts: (n as u64 * 3, n as u64, 100 + n as u64 * 11, 250 + n as u64 * 17),
        lang: lang_of(text),
        with_timestamp: false,
    });
    (id, user, json)
}

fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

fn tweet_template_json(i: usize) -> String {
    let user = &USERS[i % USERS.len()];
    let text = TEXTS[(i * 5) % TEXTS.len()];
    let base = StatusSpec {
        stamp: Stamp::Live,
        user,
        text,
        source: SOURCES[i % SOURCES.len()],
        // Photos everywhere and places on two thirds: the 3-5 KB of a
        // typical captured tweet.
        place: (i % 3 != 2).then_some(i / 3),
        media: true,
        retweeted: None,
        quoted: None,
        extended: None,
        counts: (0, 0, 0, 0),
        lang: lang_of(text),
        with_timestamp: true,
    };
    match variant_of(i) {
        TweetVariant::Plain => status_json(&base),
        TweetVariant::Retweet => {
            let original_text = TEXTS[(i * 7 + 3) % TEXTS.len()];
            let (_, ouser, original) = nested_status(i, original_text);
            let rt_text = truncate_chars(&format!("RT @{}: {}", ouser.screen, original_text), 140);
            status_json(&StatusSpec {
                text: &rt_text,
                media: false,
                place: None,
                lang: lang_of(original_text),
                retweeted: Some(original),
                ..base
            })
        }
        TweetVariant::Quote => {
            let quoted_text = TEXTS[(i * 3 + 1) % TEXTS.len()];
            let (qid, quser, quoted) = nested_status(i + 100, quoted_text);
            let own = format!("{} https://t.co/QuOt{}", TEXTS[(i + 9) % TEXTS.len()], qid % 10_000);
            status_json(&StatusSpec {
                text: &own,
                lang: lang_of(&own),
                quoted: Some((qid, quser, quoted)),
                media: false,
                ..base
            })
        }
        TweetVariant::Extended => {
            let full = LONG_TEXTS[i % LONG_TEXTS.len()];
            let short: String = full.chars().take(110).collect();
            let shown = format!("{short}… https://t.co/ExTd{i:05}");
            status_json(&StatusSpec { text: &shown, extended: Some(full), lang: lang_of(full), ..base })
        }
    }
}

/// The friend ids every preamble carries (a realistic few hundred).
fn friend_ids() -> Vec<u64> {
    let mut ids: Vec<u64> = USERS.iter().map(|u| u.id).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while ids.len() < 240 {
        // xorshift: deterministic, so preambles are stable across runs.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ids.push(1 + x % 3_000_000_000);
    }
    ids
}

/// Event names in the catalog, in cycle order.
pub(crate) const EVENT_NAMES: [&str; 8] = [
    "favorite",
    "unfavorite",
    "follow",
    "unfollow",
    "list_member_added",
    "user_update",
    "access_revoked",
    "quoted_tweet",
];

fn event_json(name: &str) -> String {
    let source = &USERS[2];
    let target = &USERS[3];
    let mut o = Obj::new().str("event", name).str("created_at", "@@CREATED@@").raw("source", &user_json(source));
    match name {
        "user_update" => {
            o = o.raw("target", &user_json(source));
        }
        _ => {
            o = o.raw("target", &user_json(target));
        }
    }
    match name {
        "favorite" | "unfavorite" | "quoted_tweet" => {
            // The favourited status gets the message's unique id.
            let status = status_json(&StatusSpec {
                stamp: Stamp::Live,
                user: target,
                text: TEXTS[11],
                source: SOURCES[2],
                place: None,
                media: false,
                retweeted: None,
                quoted: None,
                extended: None,
                counts: (0, 1, 2, 3),
                lang: "en",
                with_timestamp: false,
            });
            o = o.raw("target_object", &status);
        }
        "list_member_added" => {
            let list = Obj::new()
                .raw("id", "\"@@ID_N@@\"")
                .str("id_str", "@@ID@@")
                .str("name", "Wahl 2026 🗳️")
                .str("uri", "/ada_lovelace/lists/wahl-2026")
                .num("subscriber_count", 12)
                .num("member_count", 88)
                .str("mode", "public")
                .str("description", "Accounts to watch on election night")
                .str("slug", "wahl-2026")
                .str("full_name", "@ada_lovelace/wahl-2026")
                .str("created_at", "Mon Oct 02 12:00:00 +0000 2026")
                .bool("following", false)
                .raw("user", &user_json(source))
                .end();
            o = o.raw("target_object", &list);
        }
        "access_revoked" => {
            // protocols.md A.5: the string "client_application".
            o = o.str("target_object", "client_application");
        }
        _ => {}
    }
    o.end()
}

fn direct_message_json() -> String {
    let sender = &USERS[6];
    let recipient = &USERS[2];
    let text = "Hi Ada 👋 did the stream drop for you too?\nMine reconnected after 250 ms… https://t.co/DmLiNk0001";
    let dm = Obj::new()
        .raw("id", "\"@@ID_N@@\"")
        .str("id_str", "@@ID@@")
        .str("text", text)
        .raw("sender", &user_json(sender))
        .num("sender_id", sender.id)
        .str("sender_id_str", &sender.id.to_string())
        .str("sender_screen_name", sender.screen)
        .raw("recipient", &user_json(recipient))
        .num("recipient_id", recipient.id)
        .str("recipient_id_str", &recipient.id.to_string())
        .str("recipient_screen_name", recipient.screen)
        .str("created_at", "@@CREATED@@")
        .raw("entities", &entities(text, None))
        .end();
    Obj::new().raw("direct_message", &dm).end()
}

/// Every template. The simulator builds one per process; benchmarks build
/// their own to get realistic bytes without a server.
pub struct Corpus {
    pub(crate) tweets: Vec<Template>,
    pub(crate) variants: Vec<TweetVariant>,
    delete_status: Template,
    delete_dm: Template,
    scrub_geo: Template,
    limit: Template,
    status_withheld: Template,
    user_withheld: Template,
    warning_falling_behind: Template,
    warning_follows_over_limit: Template,
    events: Vec<Template>,
    direct_message: Template,
    unknown: Template,
    friends: Vec<u8>,
    friends_str: Vec<u8>,
    /// A plain, raw-UTF-8 tweet with a 4-byte emoji: `Mix::Fixed` uses it.
    pub(crate) fixed: usize,
}

/// The `{"friends":[...]}` preamble, for the control stream's friends/ids.
pub(crate) fn friends_json() -> &'static [u8] {
    &corpus().friends
}

/// The shared corpus.
pub(crate) fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(Corpus::build)
}

impl Default for Corpus {
    fn default() -> Self {
        Corpus::build()
    }
}

impl Corpus {
    /// Builds every template (a few milliseconds).
    pub fn new() -> Corpus {
        Corpus::build()
    }

    /// How many tweet templates there are.
    pub fn tweet_templates(&self) -> usize {
        self.tweets.len()
    }

    /// A tweet with this id (template `id % tweet_templates()`), exactly as
    /// the simulator would send it, without framing.
    pub fn tweet(&self, id: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        let clock = Clock::new();
        let template = &self.tweets[(id % self.tweets.len() as u64) as usize];
        template.render(&mut out, &Fill { id, count: 0, clock: &clock });
        out
    }

    fn build() -> Corpus {
        let mut tweets = Vec::new();
        let mut variants = Vec::new();
        for i in 0..32 {
            let json = twitter_escapes(&tweet_template_json(i));
            // A quarter of the templates use the older ASCII-only output.
            let json = if i % 4 == 3 { ascii_escapes(&json) } else { json };
            tweets.push(Template::new(&json));
            variants.push(variant_of(i));
        }
        let t = |s: String| Template::new(&twitter_escapes(&s));
        let u = &USERS[0];
        let friends = friend_ids();
        Corpus {
            tweets,
            variants,
            delete_status: t(Obj::new()
                .raw(
                    "delete",
                    &Obj::new()
                        .raw(
                            "status",
                            &Obj::new()
                                .raw("id", "\"@@ID_N@@\"")
                                .str("id_str", "@@ID@@")
                                .num("user_id", u.id)
                                .str("user_id_str", &u.id.to_string())
                                .end(),
                        )
                        .str("timestamp_ms", "@@TS@@")
                        .end(),
                )
                .end()),
            delete_dm: t(Obj::new()
                .raw(
                    "delete",
                    &Obj::new()
                        .raw(
                            "direct_message",
                            &Obj::new()
                                .raw("id", "\"@@ID_N@@\"")
                                .str("id_str", "@@ID@@")
                                .num("user_id", USERS[6].id)
                                .str("user_id_str", &USERS[6].id.to_string())
                                .end(),
                        )
                        .end(),
                )
                .end()),
            scrub_geo: t(Obj::new()
                .raw(
                    "scrub_geo",
                    &Obj::new()
                        .num("user_id", USERS[1].id)
                        .str("user_id_str", &USERS[1].id.to_string())
                        .raw("up_to_status_id", "\"@@ID_N@@\"")
                        .str("up_to_status_id_str", "@@ID@@")
                        .end(),
                )
                .end()),
            limit: t(Obj::new()
                .raw(
                    "limit",
                    &Obj::new()
                        .raw("track", "\"@@COUNT_N@@\"")
                        .str("timestamp_ms", "@@TS@@")
                        .end(),
                )
                .end()),
            status_withheld: t(Obj::new()
                .raw(
                    "status_withheld",
                    &Obj::new()
                        .raw("id", "\"@@ID_N@@\"")
                        .num("user_id", USERS[4].id)
                        .raw("withheld_in_countries", "[\"DE\",\"AR\"]")
                        .str("timestamp_ms", "@@TS@@")
                        .end(),
                )
                .end()),
            user_withheld: t(Obj::new()
                .raw(
                    "user_withheld",
                    &Obj::new()
                        .raw("id", "\"@@ID_N@@\"")
                        .raw("withheld_in_countries", "[\"TR\"]")
                        .str("timestamp_ms", "@@TS@@")
                        .end(),
                )
                .end()),
            warning_falling_behind: t(Obj::new()
                .raw(
                    "warning",
                    &Obj::new()
                        .str("code", "FALLING_BEHIND")
                        .str(
                            "message",
                            "Your connection is falling behind and messages are being queued for delivery to you. Your queue is now over 60% full. You will be disconnected when the queue is full.",
                        )
                        .num("percent_full", 60)
                        .end(),
                )
                .end()),
            warning_follows_over_limit: t(Obj::new()
                .raw(
                    "warning",
                    &Obj::new()
                        .str("code", "FOLLOWS_OVER_LIMIT")
                        .str(
                            "message",
                            "This stream is now sending a random subset of 10000 of the accounts the user follows.",
                        )
                        .num("user_id", USERS[2].id)
                        .end(),
                )
                .end()),
            events: EVENT_NAMES.iter().map(|n| t(event_json(n))).collect(),
            direct_message: t(direct_message_json()),
            unknown: Template::new("{\"some_future_notice\":{\"x\":1}}"),
            friends: format!(
                "{{\"friends\":[{}]}}",
                friends.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
            )
            .into_bytes(),
            friends_str: format!(
                "{{\"friends_str\":[{}]}}",
                friends
                    .iter()
                    .map(|id| format!("\"{id}\""))
                    .collect::<Vec<_>>()
                    .join(",")
            )
            .into_bytes(),
            fixed: 0,
        }
    }

    fn first_of(&self, v: TweetVariant) -> usize {
        self.variants.iter().position(|x| *x == v).unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------
// Choosing and rendering messages.

/// One message the generator can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    Tweet(usize),
    DeleteStatus,
    DeleteDm,
    ScrubGeo,
    /// A limit notice; `Some` reports exactly this cumulative count.
    Limit(Option<u64>),
    StatusWithheld,
    UserWithheld,
    WarningFallingBehind,
    WarningFollowsOverLimit,
    Friends,
    Event(usize),
    DirectMessage,
    Control,
    Unknown,
}

/// Messages that must come next regardless of the mix.
#[derive(Clone, Copy, Debug)]
enum Forced {
    /// A friends preamble, for a site-stream user or the user stream.
    Friends(Option<u64>),
    /// The site stream's control message.
    Control,
}

/// What was rendered into `Generator::buf`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rendered {
    pub kind: &'static str,
    pub id: Option<u64>,
    pub for_user: Option<u64>,
}

/// Per-connection message source: decides the next message and renders it
/// into `buf` (reused, so the steady state allocates nothing).
pub(crate) struct Generator {
    corpus: &'static Corpus,
    stream: StreamKind,
    rng: fastrand::Rng,
    stall_warnings: bool,
    stringify_friend_ids: bool,
    limit_track: u64,
    next_limit_at: u64,
    catalog: Vec<Item>,
    catalog_pos: usize,
    forced: VecDeque<Forced>,
    control_uri: Option<String>,
    control_after_first: bool,
    site_users: Vec<u64>,
    site_pos: usize,
    clock: Clock,
    /// The last rendered message, without framing.
    pub buf: Vec<u8>,
}

/// Settings a generator needs from the request.
pub(crate) struct GeneratorOptions {
    pub stream: StreamKind,
    pub seed: u64,
    pub stall_warnings: bool,
    pub stringify_friend_ids: bool,
    /// Site streams: the followed users, each gets a friends preamble.
    pub site_users: Vec<u64>,
    /// Site streams: the `control_uri` announced early in the stream.
    pub control_uri: Option<String>,
}

impl Generator {
    pub(crate) fn new(opts: GeneratorOptions) -> Generator {
        let corpus = corpus();
        let mut rng = fastrand::Rng::with_seed(opts.seed);
        let mut forced = VecDeque::new();
        match opts.stream {
            StreamKind::User => forced.push_back(Forced::Friends(None)),
            StreamKind::Site => forced.extend(opts.site_users.iter().map(|u| Forced::Friends(Some(*u)))),
            StreamKind::Filter | StreamKind::Sample => {}
        }
        let mut catalog = vec![
            Item::Tweet(corpus.first_of(TweetVariant::Plain)),
            Item::Tweet(corpus.first_of(TweetVariant::Retweet)),
            Item::Tweet(corpus.first_of(TweetVariant::Extended)),
            Item::Tweet(corpus.first_of(TweetVariant::Quote)),
            Item::DeleteStatus,
            Item::ScrubGeo,
            Item::Limit(None),
            Item::StatusWithheld,
            Item::UserWithheld,
            Item::WarningFallingBehind,
            Item::WarningFollowsOverLimit,
            Item::Unknown,
        ];
        if opts.stream.has_user_messages() {
            catalog.extend((0..EVENT_NAMES.len()).map(Item::Event));
            catalog.push(Item::DirectMessage);
            catalog.push(Item::DeleteDm);
            catalog.push(Item::Friends);
        }
        let next_limit_at = rng.u64(150..=250);
        Generator {
            corpus,
            stream: opts.stream,
            rng,
            stall_warnings: opts.stall_warnings,
            stringify_friend_ids: opts.stringify_friend_ids,
            limit_track: 0,
            next_limit_at,
            catalog,
            catalog_pos: 0,
            forced,
            control_after_first: opts.control_uri.is_some(),
            control_uri: opts.control_uri,
            site_users: opts.site_users,
            site_pos: 0,
            clock: Clock::new(),
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    /// Site streams: makes the enveloped users exactly `carried` (the control
    /// stream's view): removed users get nothing more, not even a queued
    /// friends preamble; added ones get their preamble first.
    pub(crate) fn set_site_users(&mut self, carried: &[u64]) {
        let now: HashSet<u64> = carried.iter().copied().collect();
        let had: HashSet<u64> = self.site_users.iter().copied().collect();
        let removed: Vec<u64> = had.iter().copied().filter(|u| !now.contains(u)).collect();
        let added: Vec<u64> = carried.iter().copied().filter(|u| !had.contains(u)).collect();
        self.change_site_users(&added, &removed);
    }

    /// Site streams: users added or removed through the control stream.
    pub(crate) fn change_site_users(&mut self, added: &[u64], removed: &[u64]) {
        self.site_users.retain(|u| !removed.contains(u));
        self.forced.retain(|f| !matches!(f, Forced::Friends(Some(u)) if removed.contains(u)));
        for u in added {
            if !self.site_users.contains(u) {
                self.site_users.push(*u);
                self.forced.push_back(Forced::Friends(Some(*u)));
            }
        }
    }

    /// Renders message number `n` (from 1) of the attempt into `buf`.
    pub(crate) fn next(&mut self, n: u64, script: &AttemptScript) -> Rendered {
        self.buf.clear();
        self.clock.refresh();
        if script.oversized_at.contains(&n) {
            return self.oversized(script.oversized_bytes);
        }
        if script.malformed_every.is_some_and(|every| every > 0 && n % every == 0) {
            return self.malformed();
        }
        let item = match self.forced.pop_front() {
            Some(Forced::Friends(user)) => return self.friends(user),
            Some(Forced::Control) => Item::Control,
            None => self.choose(n, script.mix),
        };
        if self.control_after_first {
            // "Not necessarily the first message": announce it right after
            // the first ordinary one.
            self.control_after_first = false;
            self.forced.push_back(Forced::Control);
        }
        self.render(item)
    }

    /// Renders a `disconnect` message into `buf`.
    pub(crate) fn disconnect(&mut self, code: u32) -> Rendered {
        self.buf.clear();
        let body = Obj::new()
            .num("code", u64::from(code))
            .str("stream_name", self.stream.stream_name())
            .str("reason", disconnect_reason(code))
            .end();
        self.buf.extend_from_slice(Obj::new().raw("disconnect", &body).end().as_bytes());
        Rendered { kind: "disconnect", id: None, for_user: None }
    }

    /// Renders a limit notice reporting `track` (cumulative) into `buf`.
    pub(crate) fn limit_notice(&mut self, track: u64) -> Rendered {
        self.buf.clear();
        self.limit_track = track;
        self.render(Item::Limit(Some(track)))
    }

    fn choose(&mut self, n: u64, mix: Mix) -> Item {
        match mix {
            Mix::Fixed => Item::Tweet(self.corpus.fixed),
            Mix::Catalog => {
                let item = self.catalog[self.catalog_pos % self.catalog.len()];
                self.catalog_pos += 1;
                item
            }
            Mix::Realistic => {
                if n >= self.next_limit_at {
                    self.next_limit_at = n + self.rng.u64(150..=250);
                    return Item::Limit(None);
                }
                let tweet = Item::Tweet(self.rng.usize(..self.corpus.tweets.len()));
                let r = self.rng.u32(..1000);
                if self.stream.has_user_messages() {
                    match r {
                        0..=799 => tweet,
                        800..=849 => Item::DeleteStatus,
                        850..=919 => Item::Event(self.rng.usize(..EVENT_NAMES.len())),
                        920..=959 => Item::DirectMessage,
                        960..=974 => Item::DeleteDm,
                        975..=979 => Item::ScrubGeo,
                        980..=984 => Item::StatusWithheld,
                        985..=987 => Item::UserWithheld,
                        988..=989 => Item::WarningFollowsOverLimit,
                        990..=994 if self.stall_warnings => Item::WarningFallingBehind,
                        _ => tweet,
                    }
                } else {
                    match r {
                        0..=899 => tweet,
                        900..=969 => Item::DeleteStatus,
                        970..=979 => Item::ScrubGeo,
                        980..=987 => Item::StatusWithheld,
                        988..=993 => Item::UserWithheld,
                        994..=996 if self.stall_warnings => Item::WarningFallingBehind,
                        _ => tweet,
                    }
                }
            }
        }
    }

    fn render(&mut self, item: Item) -> Rendered {
        let c = self.corpus;
        let (template, kind, own_id, enveloped): (&Template, &'static str, bool, bool) = match item {
            Item::Tweet(i) => (&c.tweets[i % c.tweets.len()], "tweet", true, true),
            Item::DeleteStatus => (&c.delete_status, "delete", true, true),
            Item::DeleteDm => (&c.delete_dm, "delete", true, true),
            Item::ScrubGeo => (&c.scrub_geo, "scrub_geo", false, true),
            Item::Limit(track) => {
                self.limit_track = track.unwrap_or(self.limit_track + self.rng.u64(1..=50));
                (&c.limit, "limit", false, false)
            }
            Item::StatusWithheld => (&c.status_withheld, "status_withheld", true, true),
            Item::UserWithheld => (&c.user_withheld, "user_withheld", true, true),
            Item::WarningFallingBehind => (&c.warning_falling_behind, "warning", false, false),
            Item::WarningFollowsOverLimit => (&c.warning_follows_over_limit, "warning", false, true),
            Item::Friends => return self.friends(None),
            Item::Event(e) => (&c.events[e % c.events.len()], "event", false, true),
            Item::DirectMessage => (&c.direct_message, "direct_message", true, true),
            Item::Unknown => (&c.unknown, "unknown", false, false),
            Item::Control => {
                let uri = self.control_uri.as_deref().unwrap_or("/1.1/site/c/1_1_0");
                let msg = Obj::new().raw("control", &Obj::new().str("control_uri", uri).end()).end();
                self.buf.extend_from_slice(msg.as_bytes());
                return Rendered { kind: "control", id: None, for_user: None };
            }
        };
        let id = next_id();
        let for_user = if enveloped { self.envelope_user() } else { None };
        if let Some(u) = for_user {
            self.buf.extend_from_slice(b"{\"for_user\":");
            push_u64(&mut self.buf, u);
            self.buf.extend_from_slice(b",\"message\":");
        }
        template.render(&mut self.buf, &Fill { id, count: self.limit_track, clock: &self.clock });
        if for_user.is_some() {
            self.buf.push(b'}');
        }
        Rendered { kind, id: own_id.then_some(id), for_user }
    }

    /// Site streams wrap per-user messages; users take turns.
    fn envelope_user(&mut self) -> Option<u64> {
        if self.stream != StreamKind::Site || self.site_users.is_empty() {
            return None;
        }
        let u = self.site_users[self.site_pos % self.site_users.len()];
        self.site_pos += 1;
        Some(u)
    }

    fn friends(&mut self, for_user: Option<u64>) -> Rendered {
        let body = if self.stringify_friend_ids { &self.corpus.friends_str } else { &self.corpus.friends };
        let for_user = match for_user {
            Some(u) => Some(u),
            None => self.envelope_user(),
        };
        if let Some(u) = for_user {
            self.buf.extend_from_slice(b"{\"for_user\":");
            push_u64(&mut self.buf, u);
            self.buf.extend_from_slice(b",\"message\":");
            self.buf.extend_from_slice(body);
            self.buf.push(b'}');
        } else {
            self.buf.extend_from_slice(body);
        }
        Rendered { kind: "friends", id: None, for_user }
    }

    /// A broken line: truncated JSON of several shapes, sometimes cut inside
    /// a UTF-8 sequence. Never contains CR, so framing stays intact.
    fn malformed(&mut self) -> Rendered {
        match self.rng.u8(..4) {
            0 => self.buf.extend_from_slice(b"{\"text\":\"unterminated"),
            1 => self.buf.extend_from_slice(b"{\"delete\":{\"status\":{\"id\":123,"),
            2 => self.buf.extend_from_slice(b"{\"limit\":{\"track\":"),
            _ => {
                let i = self.rng.usize(..self.corpus.tweets.len());
                self.corpus.tweets[i].render(&mut self.buf, &Fill { id: next_id(), count: 0, clock: &self.clock });
                let cut = self.rng.usize(1..self.buf.len().saturating_sub(1).max(2));
                self.buf.truncate(cut);
            }
        }
        Rendered { kind: "malformed", id: None, for_user: None }
    }

    /// A valid JSON object of exactly `bytes` bytes (at least the 8 bytes of
    /// the empty shape).
    fn oversized(&mut self, bytes: usize) -> Rendered {
        const HEAD: &[u8] = b"{\"p\":\"";
        const TAIL: &[u8] = b"\"}";
        let pad = bytes.saturating_sub(HEAD.len() + TAIL.len());
        self.buf.reserve(HEAD.len() + pad + TAIL.len());
        self.buf.extend_from_slice(HEAD);
        self.buf.resize(HEAD.len() + pad, b'x');
        self.buf.extend_from_slice(TAIL);
        Rendered { kind: "oversized", id: None, for_user: None }
    }

    /// Gives back memory an oversized message grabbed.
    pub(crate) fn trim(&mut self) {
        if self.buf.capacity() > 1024 * 1024 {
            self.buf = Vec::with_capacity(16 * 1024);
        }
    }
}

/// The reason text Twitter used for each disconnect code (protocols.md A.5).
pub(crate) fn disconnect_reason(code: u32) -> &'static str {
    match code {
        1 => "Shutdown",
        2 => "Duplicate stream",
        3 => "Control request",
        4 => "Stall",
        5 => "Normal",
        6 => "Token revoked",
        7 => "Admin logout",
        8 => "Reserved",
        9 => "Max message limit",
        10 => "Stream exception",
        11 => "Broker stall",
        12 => "Shed load",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::AttemptScript;

    fn gen(stream: StreamKind) -> Generator {
        Generator::new(GeneratorOptions {
            stream,
            seed: 7,
            stall_warnings: true,
            stringify_friend_ids: false,
            site_users: vec![11, 22],
            control_uri: (stream == StreamKind::Site)
                .then(|| "/1.1/site/c/1_1_0123456789abcdef0123456789abcdef".to_string()),
        })
    }

    #[test]
    fn every_tweet_template_renders_valid_json_with_its_id() {
        let c = corpus();
        assert_eq!(c.tweets.len(), 32);
        let clock = Clock::new();
        for (i, t) in c.tweets.iter().enumerate() {
            assert!(t.has_slot_id(), "template {i}");
            let mut out = Vec::new();
            t.render(&mut out, &Fill { id: FIRST_ID + 5, count: 0, clock: &clock });
            assert!(!out.contains(&b'\r'), "template {i} has a raw CR");
            assert!(!out.contains(&b'\n'), "template {i} has a raw LF");
            let v: serde_json::Value = serde_json::from_slice(&out)
                .unwrap_or_else(|e| panic!("template {i}: {e}: {}", String::from_utf8_lossy(&out)));
            assert_eq!(v["id"].as_u64(), Some(FIRST_ID + 5), "template {i}");
            assert_eq!(v["id_str"].as_str(), Some("1500000000000000005"));
            assert!(v["user"]["screen_name"].is_string());
            assert!(v["entities"]["hashtags"].is_array());
            assert_eq!(v["timestamp_ms"].as_str().map(str::len), Some(13));
            match c.variants[i] {
                TweetVariant::Retweet => assert!(v["retweeted_status"]["id_str"].is_string()),
                TweetVariant::Quote => assert!(v["quoted_status"]["user"].is_object()),
                TweetVariant::Extended => {
                    assert!(v["extended_tweet"]["full_text"].as_str().is_some_and(|t| t.chars().count() > 140));
                    assert_eq!(v["truncated"], true);
                }
                TweetVariant::Plain => {}
            }
        }
    }

    #[test]
    fn tweets_are_realistic_in_size_and_escapes() {
        let c = corpus();
        let clock = Clock::new();
        let mut all = Vec::new();
        let retweets = c.variants.iter().filter(|v| **v == TweetVariant::Retweet).count();
        assert!((5..=8).contains(&retweets), "about a fifth are retweets: {retweets}");
        for (i, t) in c.tweets.iter().enumerate() {
            let mut out = Vec::new();
            t.render(&mut out, &Fill { id: FIRST_ID, count: 0, clock: &clock });
            if c.variants[i] == TweetVariant::Plain {
                assert!((3_000..=5_500).contains(&out.len()), "template {i}: {} bytes", out.len());
            }
            all.extend_from_slice(&out);
        }
        let text = String::from_utf8(all).expect("templates are UTF-8");
        for needle in ["\\n", "\\\"", "\\\\", "\\/", "\\u2026", "🗳", "東京", "\\ud83d"] {
            assert!(text.contains(needle), "corpus lacks {needle}");
        }
        // The fixed template carries a 4-byte UTF-8 sequence.
        let mut fixed = Vec::new();
        c.tweets[c.fixed].render(&mut fixed, &Fill { id: FIRST_ID, count: 0, clock: &clock });
        assert!(fixed.iter().any(|b| *b >= 0xF0), "fixed tweet has no 4-byte UTF-8");
    }

    #[test]
    fn public_corpus_renders_tweets_for_benches() {
        let c = Corpus::new();
        assert_eq!(c.tweet_templates(), 32);
        for id in [FIRST_ID, FIRST_ID + 31, 7] {
            let v: serde_json::Value = serde_json::from_slice(&c.tweet(id)).expect("json");
            assert_eq!(v["id"].as_u64(), Some(id));
            assert_eq!(v["id_str"], id.to_string());
        }
    }

    #[test]
    fn entity_indices_point_at_their_text() {
        let e: serde_json::Value =
            serde_json::from_str(&entities("RT @ada_lovelace: 東京 #テスト and #rust https://t.co/abc", None))
                .expect("json");
        let chars: Vec<char> = "RT @ada_lovelace: 東京 #テスト and #rust https://t.co/abc".chars().collect();
        let span = |v: &serde_json::Value| -> String {
            let a = v["indices"][0].as_u64().unwrap_or(0) as usize;
            let b = v["indices"][1].as_u64().unwrap_or(0) as usize;
            chars[a..b].iter().collect()
        };
        assert_eq!(span(&e["hashtags"][0]), "#テスト");
        assert_eq!(span(&e["hashtags"][1]), "#rust");
        assert_eq!(span(&e["user_mentions"][0]), "@ada_lovelace");
        assert_eq!(e["user_mentions"][0]["id"].as_u64(), Some(2244994945));
        assert_eq!(span(&e["urls"][0]), "https://t.co/abc");
    }

    #[test]
    fn catalog_covers_every_kind_with_ids() {
        let script = AttemptScript { mix: Mix::Catalog, ..AttemptScript::default() };
        let mut g = gen(StreamKind::Site);
        let mut kinds = std::collections::BTreeSet::new();
        let mut ids = std::collections::HashSet::new();
        for n in 1..=60 {
            let r = g.next(n, &script);
            let v: serde_json::Value =
                serde_json::from_slice(&g.buf).unwrap_or_else(|e| panic!("message {n} ({}): {e}", r.kind));
            if n <= 2 {
                assert_eq!(r.kind, "friends");
                assert_eq!(v["for_user"].as_u64(), r.for_user);
            }
            if let Some(id) = r.id {
                assert!(ids.insert(id), "duplicate id {id}");
                let inner = if v.get("for_user").is_some() { &v["message"] } else { &v };
                let text = inner.to_string();
                assert!(text.contains(&id.to_string()), "{} lacks its id", r.kind);
            }
            kinds.insert(r.kind);
        }
        let want = [
            "tweet",
            "delete",
            "scrub_geo",
            "limit",
            "status_withheld",
            "user_withheld",
            "warning",
            "friends",
            "event",
            "direct_message",
            "control",
            "unknown",
        ];
        for k in want {
            assert!(kinds.contains(k), "catalog lacks {k}: {kinds:?}");
        }
    }

    #[test]
    fn limit_counts_are_cumulative() {
        let mut g = gen(StreamKind::Filter);
        let script = AttemptScript::default();
        let mut last = 0;
        let mut seen = 0;
        for n in 1..=2_000 {
            if g.next(n, &script).kind == "limit" {
                let v: serde_json::Value = serde_json::from_slice(&g.buf).expect("json");
                let track = v["limit"]["track"].as_u64().expect("track");
                assert!(track > last);
                assert!(v["limit"]["timestamp_ms"].is_string());
                last = track;
                seen += 1;
            }
        }
        assert!((6..=14).contains(&seen), "about one limit per 200: {seen}");
    }

    #[test]
    fn fixed_mix_has_equal_lengths() {
        let script = AttemptScript { mix: Mix::Fixed, ..AttemptScript::default() };
        let mut g = gen(StreamKind::Filter);
        g.next(1, &script);
        let len = g.buf.len();
        for n in 2..200 {
            g.next(n, &script);
            assert_eq!(g.buf.len(), len);
        }
    }

    #[test]
    fn junk_is_sized_and_shaped() {
        let script = AttemptScript {
            oversized_at: vec![2],
            oversized_bytes: 1000,
            malformed_every: Some(3),
            ..AttemptScript::default()
        };
        let mut g = gen(StreamKind::Filter);
        assert_eq!(g.next(2, &script).kind, "oversized");
        assert_eq!(g.buf.len(), 1000);
        serde_json::from_slice::<serde_json::Value>(&g.buf).expect("oversized is valid JSON");
        for n in [3, 6, 9, 12, 15, 18] {
            assert_eq!(g.next(n, &script).kind, "malformed");
            assert!(serde_json::from_slice::<serde_json::Value>(&g.buf).is_err());
            assert!(!g.buf.contains(&b'\r'));
        }
    }

    #[test]
    fn disconnect_message_shape() {
        let mut g = gen(StreamKind::Filter);
        g.disconnect(4);
        let v: serde_json::Value = serde_json::from_slice(&g.buf).expect("json");
        assert_eq!(v["disconnect"]["code"], 4);
        assert_eq!(v["disconnect"]["reason"], "Stall");
        assert!(v["disconnect"]["stream_name"].is_string());
    }
}
