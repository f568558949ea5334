//! Mastodon REST catch-up (protocols.md B.8): after a stream had a gap, fetch
//! everything newer than the last delivered id with `min_id` paging, within the
//! REST rate limits (B.7), and hand the items back in ascending id order.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use awc::http::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, LINK, RETRY_AFTER};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Largest page body read (after content decoding); a larger one is [`CatchUpError::TooLarge`].
pub const MAX_PAGE_BYTES: usize = 8 * 1024 * 1024;
/// Tries of one call on a 5xx status or a network error before giving up.
pub const MAX_TRIES: u32 = 3;
/// Retries of one call answered 429 before catch-up stops (`complete = false`).
pub const MAX_RATE_LIMIT_RETRIES: usize = 5;
/// Characters of an error response's body kept in [`CatchUpError::Http`].
const SNIPPET_CHARS: usize = 200;
/// Bytes of an error response's body read for the snippet.
const SNIPPET_READ: usize = 4096;
/// Query parameters fetch_since sets itself; the same keys in `params` are dropped.
const CURSOR_PARAMS: [&str; 4] = ["min_id", "max_id", "since_id", "limit"];

/// One catch-up call.
#[derive(Clone)]
pub struct CatchUpRequest {
    /// REST host, e.g. `http://127.0.0.1:8900` (a trailing slash is tolerated).
    pub base_url: String,
    /// Endpoint path, e.g. `/api/v1/timelines/tag/rust` or `/api/v1/notifications`.
    pub path: String,
    /// Extra query parameters, e.g. `[("local", "true")]`. Cursor keys
    /// (`min_id`, `max_id`, `since_id`, `limit`) are ignored here.
    pub params: Vec<(String, String)>,
    /// Newest id already delivered (opaque).
    pub min_id: String,
    /// Bearer token (a secret: never logged, never in errors or Debug output).
    /// Empty means no `Authorization` header.
    pub token: String,
    /// `limit` per page: 40 for timelines, 80 for notifications (at least 1 is sent).
    pub page_limit: u32,
    /// Stop (`complete = false`) once this many items are collected; the
    /// oldest `max_items` are returned.
    pub max_items: usize,
    /// Per HTTP call (sending and reading the body).
    pub timeout: Duration,
    /// Longest wait for a rate-limit reset accepted; a longer one stops
    /// catch-up with `complete = false` and the items so far.
    pub max_rate_wait: Duration,
    /// Base wait between tries after a 5xx or network error, doubling
    /// ([`MAX_TRIES`] tries); also the wait after a 429 that names no reset.
    pub retry_wait: Duration,
}

impl CatchUpRequest {
    /// A request with defaults: the page limit for `path`
    /// ([`default_page_limit`]), no extra params, at most 10 000 items, 30 s
    /// per call, rate-limit waits up to 5 min (one Mastodon window), 1 s retry wait.
    pub fn new(
        base_url: impl Into<String>,
        path: impl Into<String>,
        min_id: impl Into<String>,
        token: impl Into<String>,
    ) -> Self {
        let path = path.into();
        CatchUpRequest {
            base_url: base_url.into(),
            page_limit: default_page_limit(&path),
            path,
            params: Vec::new(),
            min_id: min_id.into(),
            token: token.into(),
            max_items: 10_000,
            timeout: Duration::from_secs(30),
            max_rate_wait: Duration::from_secs(300),
            retry_wait: Duration::from_secs(1),
        }
    }

    /// The URL of one page call with cursor `min_id` (no token in it).
    pub fn page_url(&self, min_id: &str) -> String {
        self.url(Some(min_id), self.page_limit)
    }

    /// `limit` items from the newest (`min_id` absent), or the page after
    /// `min_id`.
    fn url(&self, min_id: Option<&str>, limit: u32) -> String {
        let path = self.path.as_str();
        let mut url = String::with_capacity(self.base_url.len() + path.len() + 64);
        url.push_str(self.base_url.trim_end_matches('/'));
        if !path.starts_with('/') {
            url.push('/');
        }
        url.push_str(path);
        url.push(if path.contains('?') { '&' } else { '?' });
        for (k, v) in &self.params {
            if CURSOR_PARAMS.contains(&k.as_str()) {
                continue;
            }
            encode_component(k, &mut url);
            url.push('=');
            encode_component(v, &mut url);
            url.push('&');
        }
        if let Some(min_id) = min_id {
            url.push_str("min_id=");
            encode_component(min_id, &mut url);
            url.push('&');
        }
        url.push_str("limit=");
        url.push_str(&limit.max(1).to_string());
        url
    }

    /// The `Authorization` value, marked sensitive so it never shows in logs.
    fn auth(&self) -> Result<Option<HeaderValue>, CatchUpError> {
        if self.token.is_empty() {
            return Ok(None);
        }
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.token))
            .map_err(|_| CatchUpError::InvalidRequest("the token is not a valid header value".into()))?;
        value.set_sensitive(true);
        Ok(Some(value))
    }
}

impl fmt::Debug for CatchUpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatchUpRequest")
            .field("base_url", &self.base_url)
            .field("path", &self.path)
            .field("params", &self.params)
            .field("min_id", &self.min_id)
            .field("token", &if self.token.is_empty() { "" } else { "[redacted]" })
            .field("page_limit", &self.page_limit)
            .field("max_items", &self.max_items)
            .field("timeout", &self.timeout)
            .field("max_rate_wait", &self.max_rate_wait)
            .field("retry_wait", &self.retry_wait)
            .finish()
    }
}

/// The page limit Mastodon allows for `path`: 80 for notifications, 40 otherwise (B.8).
pub fn default_page_limit(path: &str) -> u32 {
    let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
    if path.ends_with("/notifications") {
        80
    } else {
        40
    }
}

/// One caught-up item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUpItem {
    /// The item's top-level `"id"`.
    pub id: Box<str>,
    /// The item's JSON exactly as the server sent it (a slice of the page).
    pub payload: Bytes,
}

/// What a catch-up fetched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatchUpOutcome {
    /// Items in ascending id order ([`id_cmp`]), each id once.
    pub items: Vec<CatchUpItem>,
    /// Pages answered 200, the final empty one included.
    pub pages: usize,
    /// True when paging ended on an empty page; false when it stopped early
    /// (`max_items`, a rate-limit wait too long, a server making no progress).
    pub complete: bool,
    /// Waits for a rate-limit reset: after `X-RateLimit-Remaining: 0` and after each 429.
    pub rate_limited_waits: usize,
    /// Page elements skipped because they had no top-level string `"id"`.
    pub skipped: usize,
}

/// Why a catch-up failed. No variant carries the token.
#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    /// A status that is not retried (404, 410, 422, other 4xx, 3xx), or a 5xx
    /// still there after [`MAX_TRIES`] tries; `body` is the start of the response body.
    #[error("catch-up call answered HTTP {status}: {body}")]
    Http {
        /// The HTTP status.
        status: u16,
        /// Up to 200 characters of the body, lossily decoded.
        body: String,
    },
    /// 401 or 403: the token is missing, invalid or lacks the scope.
    #[error("catch-up call rejected with HTTP {status} (token missing, invalid or without scope)")]
    Auth {
        /// The HTTP status.
        status: u16,
    },
    /// Connecting, sending or reading failed (or timed out) [`MAX_TRIES`] times.
    #[error("catch-up network error: {0}")]
    Network(String),
    /// A 2xx body that is not a JSON array.
    #[error("catch-up page is not a JSON array: {0}")]
    Decode(String),
    /// A page body over [`MAX_PAGE_BYTES`].
    #[error("catch-up page is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The request could not be sent at all (bad URL, bad token characters).
    #[error("invalid catch-up request: {0}")]
    InvalidRequest(String),
}

/// Mastodon id order (B.8): shorter ids are older; equal lengths compare
/// lexically. Ids are opaque and never parsed as integers.
pub fn id_cmp(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// The URL of the `rel="prev"` link in a `Link` header (RFC 8288), if any.
/// Tolerates spacing, several links, quoted or unquoted `rel` values, several
/// relation types in one `rel`, and commas or semicolons inside quotes.
pub fn link_prev(link_header: &str) -> Option<String> {
    let mut rest = link_header;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if rest.is_empty() {
            return None;
        }
        let Some(after_lt) = rest.strip_prefix('<') else {
            // Not a link-value: skip to the next comma outside quotes.
            let (_, after) = split_unquoted(rest, ',');
            rest = after;
            continue;
        };
        let end = after_lt.find('>')?;
        let url = after_lt[..end].trim();
        let (params, after) = split_unquoted(&after_lt[end + 1..], ',');
        rest = after;
        let mut params = params;
        while !params.is_empty() {
            let (param, next) = split_unquoted(params, ';');
            params = next;
            let Some((name, value)) = param.split_once('=') else { continue };
            if !name.trim().eq_ignore_ascii_case("rel") {
                continue;
            }
            let value = value.trim().trim_matches('"');
            if value.split_whitespace().any(|t| t.eq_ignore_ascii_case("prev") || t.eq_ignore_ascii_case("previous")) {
                return Some(url.to_owned());
            }
        }
    }
}

/// Splits `s` at the first `sep` outside double quotes (backslash escapes
/// honoured): the part before and the part after (empty when none).
fn split_unquoted(s: &str, sep: char) -> (&str, &str) {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if in_quotes && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_quotes = !in_quotes;
        } else if c == sep && !in_quotes {
            return (&s[..i], &s[i + c.len_utf8()..]);
        }
    }
    (s, "")
}

/// The percent-decoded value of query parameter `key` in `url`, if present and non-empty.
fn query_value(url: &str, key: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| percent_decode(k).as_deref() == Some(key))
        .and_then(|(_, v)| percent_decode(v))
        .filter(|v| !v.is_empty())
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(if b == b'+' { b' ' } else { b });
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Appends `s` percent-encoded (everything but RFC 3986 unreserved characters).
fn encode_component(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

/// The top-level `"id"` of one JSON value, when it is an object whose `id` is
/// a non-empty string; other values are skipped, never built.
fn top_level_id(raw: &RawValue) -> Option<Box<str>> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    TopLevelId.deserialize(&mut de).ok().flatten()
}

struct TopLevelId;

impl<'de> DeserializeSeed<'de> for TopLevelId {
    type Value = Option<Box<str>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopLevelId {
    type Value = Option<Box<str>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut id = None;
        while let Some(is_id) = map.next_key_seed(KeyIsId)? {
            if is_id && id.is_none() {
                id = map.next_value_seed(MaybeStr)?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(id.filter(|s| !s.is_empty()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A map key, answering whether it is `"id"`.
struct KeyIsId;

impl<'de> DeserializeSeed<'de> for KeyIsId {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIsId {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == "id")
    }
}

/// A value kept when it is a string, skipped otherwise.
struct MaybeStr;

impl<'de> DeserializeSeed<'de> for MaybeStr {
    type Value = Option<Box<str>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MaybeStr {
    type Value = Option<Box<str>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(v.into()))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// The elements of one page with a string id, as `(id, raw bytes)` slices of
/// `body`, and how many elements had none.
fn split_page(body: &Bytes) -> Result<(Vec<CatchUpItem>, usize), CatchUpError> {
    let elements: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| CatchUpError::Decode(e.to_string()))?;
    let mut items = Vec::with_capacity(elements.len());
    let mut skipped = 0;
    for raw in elements {
        match top_level_id(raw) {
            Some(id) => items.push(CatchUpItem { id, payload: body.slice_ref(raw.get().as_bytes()) }),
            None => skipped += 1,
        }
    }
    Ok((items, skipped))
}

/// The rate-limit headers of a response.
#[derive(Debug, Default)]
struct RateHeaders {
    remaining: Option<u64>,
    reset: Option<String>,
    retry_after: Option<String>,
}

impl RateHeaders {
    fn from_headers(headers: &HeaderMap) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(|s| s.trim().to_owned());
        RateHeaders {
            remaining: text("x-ratelimit-remaining").and_then(|s| s.parse().ok()),
            reset: text("x-ratelimit-reset"),
            retry_after: headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).map(|s| s.trim().to_owned()),
        }
    }

    /// Time until `X-RateLimit-Reset` (zero when past), if it parses.
    fn until_reset(&self) -> Option<Duration> {
        let reset = chrono::DateTime::parse_from_rfc3339(self.reset.as_deref()?).ok()?;
        Some((reset.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO))
    }

    /// `Retry-After` as seconds or as an HTTP date, if it parses.
    fn retry_after(&self) -> Option<Duration> {
        let value = self.retry_after.as_deref()?;
        if let Ok(secs) = value.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
        Some((at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO))
    }
}

/// One response as far as catch-up needs it.
struct Response {
    status: u16,
    rate: RateHeaders,
    link: Option<String>,
    body: Bytes,
}

/// A failed attempt: retried (network) or final.
enum AttemptError {
    Transient(String),
    Fatal(CatchUpError),
}

/// Removes the token from text that came from elsewhere (a server body, an error message).
fn redact(text: String, token: &str) -> String {
    if token.is_empty() || !text.contains(token) {
        text
    } else {
        text.replace(token, "[redacted]")
    }
}

fn snippet(body: &[u8], token: &str) -> String {
    let text = redact(String::from_utf8_lossy(body).into_owned(), token);
    text.chars().take(SNIPPET_CHARS).collect()
}

/// One GET, body read included, within `timeout`.
async fn attempt(
    client: &awc::Client,
    url: &str,
    auth: Option<&HeaderValue>,
    timeout: Duration,
) -> Result<Response, AttemptError> {
    let mut request = client.get(url).timeout(timeout).insert_header((ACCEPT, "application/json"));
    if let Some(auth) = auth {
        request = request.insert_header((AUTHORIZATION, auth.clone()));
    }
    let call = async {
        let mut res = request.send().await.map_err(|e| match e {
            awc::error::SendRequestError::Url(_)
            | awc::error::SendRequestError::Http(_)
            | awc::error::SendRequestError::TunnelNotSupported => {
                AttemptError::Fatal(CatchUpError::InvalidRequest(e.to_string()))
            }
            other => AttemptError::Transient(other.to_string()),
        })?;
        let status = res.status().as_u16();
        let success = res.status().is_success();
        let rate = RateHeaders::from_headers(res.headers());
        let link = res.headers().get(LINK).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = if success {
            match res.body().limit(MAX_PAGE_BYTES).await {
                Ok(body) => body,
                Err(awc::error::PayloadError::Overflow) => {
                    return Err(AttemptError::Fatal(CatchUpError::TooLarge { limit: MAX_PAGE_BYTES }))
                }
                Err(e) => return Err(AttemptError::Transient(format!("reading the page: {e}"))),
            }
        } else {
            // Only for the error snippet: the first bytes, whatever follows.
            let mut prefix = BytesMut::new();
            while let Some(Ok(chunk)) = res.next().await {
                prefix.extend_from_slice(&chunk);
                if prefix.len() >= SNIPPET_READ {
                    break;
                }
            }
            prefix.freeze()
        };
        Ok(Response { status, rate, link, body })
    };
    match actix_rt::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(AttemptError::Transient(format!("no complete answer within {timeout:?}"))),
    }
}

/// What one page call ended with.
enum CallResult {
    Page(Response),
    /// Rate limited beyond what we wait for: stop with what we have.
    Stop,
}

/// One page call with its retries: 429 waits, 5xx and network retries.
async fn call_page(
    client: &awc::Client,
    req: &CatchUpRequest,
    url: &str,
    auth: Option<&HeaderValue>,
    outcome: &mut CatchUpOutcome,
) -> Result<CallResult, CatchUpError> {
    let mut failures = 0u32;
    let mut rate_retries = 0usize;
    loop {
        let failure = match attempt(client, url, auth, req.timeout).await {
            Ok(res) if (200..300).contains(&res.status) => return Ok(CallResult::Page(res)),
            Ok(res) if res.status == 429 => {
                let wait = res.rate.until_reset().or_else(|| res.rate.retry_after()).unwrap_or(req.retry_wait);
                let wait = wait.max(req.retry_wait);
                if rate_retries >= MAX_RATE_LIMIT_RETRIES || wait > req.max_rate_wait {
                    tracing::info!(path = %req.path, ?wait, "catch-up rate limited; stopping early");
                    return Ok(CallResult::Stop);
                }
                tracing::debug!(path = %req.path, ?wait, "catch-up rate limited (429); waiting");
                rate_retries += 1;
                outcome.rate_limited_waits += 1;
                actix_rt::time::sleep(wait).await;
                continue;
            }
            Ok(res) if res.status == 401 || res.status == 403 => {
                return Err(CatchUpError::Auth { status: res.status });
            }
            Ok(res) if res.status >= 500 || res.status == 408 => {
                CatchUpError::Http { status: res.status, body: snippet(&res.body, &req.token) }
            }
            Ok(res) => return Err(CatchUpError::Http { status: res.status, body: snippet(&res.body, &req.token) }),
            Err(AttemptError::Fatal(e)) => return Err(e),
            Err(AttemptError::Transient(message)) => CatchUpError::Network(redact(message, &req.token)),
        };
        failures += 1;
        if failures >= MAX_TRIES {
            return Err(failure);
        }
        let wait = req.retry_wait.saturating_mul(1 << (failures - 1));
        tracing::debug!(path = %req.path, error = %failure, ?wait, "catch-up call failed; retrying");
        actix_rt::time::sleep(wait).await;
    }
}

/// Fetches everything newer than `req.min_id` (protocols.md B.8): `min_id`
/// paging until an empty page, within the rate limits (B.7). The result is
/// sorted ascending by [`id_cmp`] without duplicates; `complete` says whether
/// paging reached the end. Items not newer than `req.min_id` are not filtered
/// out (the caller de-duplicates against the live stream anyway).
pub async fn fetch_since(client: &awc::Client, req: &CatchUpRequest) -> Result<CatchUpOutcome, CatchUpError> {
    let auth = req.auth()?;
    let mut outcome = CatchUpOutcome::default();
    let mut seen: HashSet<Box<str>> = HashSet::new();
    let mut used_cursors: HashSet<String> = HashSet::new();
    let mut cursor = req.min_id.clone();
    let complete = loop {
        if outcome.items.len() >= req.max_items {
            break false;
        }
        used_cursors.insert(cursor.clone());
        let url = req.page_url(&cursor);
        let res = match call_page(client, req, &url, auth.as_ref(), &mut outcome).await? {
            CallResult::Page(res) => res,
            CallResult::Stop => break false,
        };
        outcome.pages += 1;
        let (items, skipped) = split_page(&res.body)?;
        outcome.skipped += skipped;
        if items.is_empty() && skipped == 0 {
            break true;
        }
        let newest = items.iter().map(|i| &*i.id).max_by(|a, b| id_cmp(a, b)).map(str::to_owned);
        let mut fresh = 0;
        for item in items {
            if seen.insert(item.id.clone()) {
                outcome.items.push(item);
                fresh += 1;
            }
        }
        // Prefer the server's own cursor (conversations page only through
        // it, B.8), taking nothing but its min_id value.
        let next = res.link.as_deref().and_then(link_prev).and_then(|url| query_value(&url, "min_id")).or(newest);
        let Some(next) = next else { break false };
        if fresh == 0 || used_cursors.contains(&next) {
            tracing::warn!(path = %req.path, "catch-up: the server made no progress; stopping");
            break false;
        }
        cursor = next;
        if outcome.items.len() >= req.max_items {
            break false;
        }
        if res.rate.remaining == Some(0) {
            if let Some(wait) = res.rate.until_reset() {
                if wait > req.max_rate_wait {
                    tracing::info!(path = %req.path, ?wait, "catch-up: rate-limit reset too far; stopping early");
                    break false;
                }
                outcome.rate_limited_waits += 1;
                actix_rt::time::sleep(wait).await;
            }
        }
    };
    outcome.items.sort_by(|a, b| id_cmp(&a.id, &b.id));
    if outcome.items.len() > req.max_items {
        outcome.items.truncate(req.max_items);
    }
    outcome.complete = complete;
    Ok(outcome)
}

/// The id of the newest item on `req`'s timeline (`req.min_id` is not
/// used); `None` when the timeline is empty. A stream that has no position
/// yet records this before it subscribes, so that a crash before its first
/// event is written still leaves a point to catch up from.
pub async fn newest_id(client: &awc::Client, req: &CatchUpRequest) -> Result<Option<Box<str>>, CatchUpError> {
    let auth = req.auth()?;
    let mut outcome = CatchUpOutcome::default();
    let url = req.url(None, 1);
    match call_page(client, req, &url, auth.as_ref(), &mut outcome).await? {
        CallResult::Page(res) => {
            let (items, _) = split_page(&res.body)?;
            Ok(items.into_iter().map(|i| i.id).max_by(|a, b| id_cmp(a, b)))
        }
        CallResult::Stop => Err(CatchUpError::Network("rate limited".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::StatusCode;
    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    const TOKEN: &str = "s3cret-T0ken-xyz";

    #[derive(Clone, Debug)]
    struct Call {
        at: Instant,
        uri: String,
        auth: Option<String>,
        accept: Option<String>,
    }

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
        delay: Duration,
    }

    fn reply(status: u16, body: impl Into<String>) -> Reply {
        Reply { status, headers: Vec::new(), body: body.into(), delay: Duration::ZERO }
    }

    impl Reply {
        fn header(mut self, name: &str, value: impl Into<String>) -> Self {
            self.headers.push((name.to_owned(), value.into()));
            self
        }
    }

    type Script = dyn Fn(usize, &Call) -> Reply + Send + Sync;

    struct TestServer {
        addr: SocketAddr,
        calls: Arc<Mutex<Vec<Call>>>,
        handle: actix_web::dev::ServerHandle,
    }

    impl TestServer {
        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }
        async fn stop(self) {
            self.handle.stop(false).await;
        }
    }

    /// A loopback HTTP server answering call `n` with `script(n, call)`.
    async fn serve(script: impl Fn(usize, &Call) -> Reply + Send + Sync + 'static) -> TestServer {
        let calls: Arc<Mutex<Vec<Call>>> = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let state = (calls.clone(), script);
        let server = HttpServer::new(move || {
            let (calls, script) = state.clone();
            App::new().default_service(web::to(move |req: HttpRequest| {
                let (calls, script) = (calls.clone(), script.clone());
                async move {
                    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
                    let call = Call {
                        at: Instant::now(),
                        uri: req.uri().to_string(),
                        auth: header("authorization"),
                        accept: header("accept"),
                    };
                    let n = {
                        let mut calls = calls.lock().unwrap();
                        calls.push(call.clone());
                        calls.len() - 1
                    };
                    let r = script(n, &call);
                    if !r.delay.is_zero() {
                        actix_rt::time::sleep(r.delay).await;
                    }
                    let mut res = HttpResponse::build(StatusCode::from_u16(r.status).unwrap());
                    for (k, v) in r.headers {
                        res.insert_header((k, v));
                    }
                    res.content_type("application/json").body(r.body)
                }
            }))
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .unwrap();
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        TestServer { addr, calls, handle }
    }

    fn status_json(id: &str) -> String {
        format!(
            r#"{{"id":"{id}","content":"<p>post {id}, \"quoted\"</p>","account":{{"id":"7","acct":"a"}},"tags":[]}}"#
        )
    }

    /// A Mastodon-like timeline over `ids`: `min_id` pages, newest first; with
    /// `link_host`, Link headers pointing at that host.
    fn timeline(ids: Vec<String>, link_host: Option<&'static str>) -> impl Fn(usize, &Call) -> Reply + Send + Sync {
        let mut ids = ids;
        ids.sort_by(|a, b| id_cmp(a, b));
        move |_, call| {
            let min_id = query_value(&call.uri, "min_id").unwrap_or_default();
            let limit: usize = query_value(&call.uri, "limit").and_then(|l| l.parse().ok()).unwrap_or(20);
            let mut page: Vec<&String> = ids.iter().filter(|id| id_cmp(id, &min_id) == Ordering::Greater).collect();
            page.truncate(limit);
            page.reverse();
            let body = format!("[{}]", page.iter().map(|id| status_json(id)).collect::<Vec<_>>().join(",\n  "));
            let mut r = reply(200, body);
            if let (Some(host), Some(newest), Some(oldest)) = (link_host, page.first(), page.last()) {
                r = r.header(
                    "link",
                    format!(
                        "<{host}/api/v1/timelines/tag/rust?max_id={oldest}>; rel=\"next\", \
                         <{host}/api/v1/timelines/tag/rust?min_id={newest}>; rel=\"prev\""
                    ),
                );
            }
            r
        }
    }

    fn id_range(from: u32, to: u32) -> Vec<String> {
        (from..=to).map(|i| i.to_string()).collect()
    }

    fn request(addr: SocketAddr) -> CatchUpRequest {
        CatchUpRequest {
            base_url: format!("http://{addr}/"),
            path: "/api/v1/timelines/tag/rust".into(),
            params: vec![("local".into(), "true".into())],
            min_id: "950".into(),
            token: TOKEN.into(),
            page_limit: 40,
            max_items: 1000,
            timeout: Duration::from_secs(2),
            max_rate_wait: Duration::from_secs(1),
            retry_wait: Duration::from_millis(10),
        }
    }

    fn client() -> awc::Client {
        // The binary installs this at start-up (src/app.rs); unit tests of this crate must do it themselves.
        let _ = rustls::crypto::ring::default_provider().install_default();
        awc::Client::builder().finish()
    }

    fn ids(outcome: &CatchUpOutcome) -> Vec<&str> {
        outcome.items.iter().map(|i| &*i.id).collect()
    }

    fn reset_in(ms: i64) -> String {
        (chrono::Utc::now() + chrono::Duration::milliseconds(ms)).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    }

    fn assert_no_token(err: &CatchUpError) {
        assert!(!err.to_string().contains(TOKEN), "token in Display: {err}");
        assert!(!format!("{err:?}").contains(TOKEN), "token in Debug: {err:?}");
    }

    #[test]
    fn id_cmp_is_length_then_lexical() {
        assert_eq!(id_cmp("99", "100"), Ordering::Less);
        assert_eq!(id_cmp("100", "99"), Ordering::Greater);
        assert_eq!(id_cmp("108914327388663283", "108914327388663283"), Ordering::Equal);
        assert_eq!(id_cmp("108914327388663283", "108914327388663284"), Ordering::Less);
        assert_eq!(id_cmp("abc", "abd"), Ordering::Less);
        assert_eq!(id_cmp("", "0"), Ordering::Less);
        // Opaque: longer than any integer type, never parsed.
        assert_eq!(id_cmp("99999999999999999999999999", "100000000000000000000000000"), Ordering::Less);
        let mut v = vec!["1000", "999", "1", "20", "3"];
        v.sort_by(|a, b| id_cmp(a, b));
        assert_eq!(v, ["1", "3", "20", "999", "1000"]);
    }

    #[test]
    fn link_prev_forms() {
        // protocols.md B.8, verbatim.
        assert_eq!(
            link_prev(r#"<…?max_id=7163058>; rel="next", <…?min_id=7275607>; rel="prev""#).as_deref(),
            Some("…?min_id=7275607")
        );
        let h = "<https://m.example/api/v1/notifications?max_id=1>; rel=\"next\", \
                 <https://m.example/api/v1/notifications?min_id=9>; rel=\"prev\"";
        assert_eq!(link_prev(h).as_deref(), Some("https://m.example/api/v1/notifications?min_id=9"));
        // prev first, no spaces, unquoted rel, odd case.
        assert_eq!(
            link_prev("<http://a/?min_id=5>;rel=PREV,<http://a/?max_id=1>;rel=next").as_deref(),
            Some("http://a/?min_id=5")
        );
        // Lots of spacing.
        assert_eq!(link_prev("  < http://a/?min_id=5 >  ;  rel = \"prev\"  ").as_deref(), Some("http://a/?min_id=5"));
        // Several relation types, other params with commas and semicolons in quotes.
        assert_eq!(
            link_prev(r#"<http://a/1>; title="x, y; z"; rel="next", <http://a/2>; rel="previous prev-archive""#)
                .as_deref(),
            Some("http://a/2")
        );
        assert_eq!(link_prev(r#"<http://a/1>; title="rel=\"prev\""; rel="next""#), None);
        // A comma inside the URL.
        assert_eq!(
            link_prev(r#"<http://a/?ids=1,2&min_id=3>; rel="prev""#).as_deref(),
            Some("http://a/?ids=1,2&min_id=3")
        );
        // Absent or malformed.
        assert_eq!(link_prev(r#"<http://a/?max_id=1>; rel="next""#), None);
        assert_eq!(link_prev(""), None);
        assert_eq!(link_prev("garbage, more garbage; rel=prev"), None);
        assert_eq!(link_prev("<http://a/?min_id=1; rel=prev"), None);
        assert_eq!(link_prev(r#"<http://a/>; rel="prev"#), Some("http://a/".into()));
        assert_eq!(link_prev(",,, <x>; rel=prev ,"), Some("x".into()));
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(query_value("http://a/p?max_id=1&min_id=77#frag", "min_id").as_deref(), Some("77"));
        assert_eq!(query_value("/p?min%5Fid=a%2Fb", "min_id").as_deref(), Some("a/b"));
        assert_eq!(query_value("/p?min_id=", "min_id"), None);
        assert_eq!(query_value("/p?min_id=%", "min_id").as_deref(), Some("%"));
        assert_eq!(query_value("/p?min_id=%FF", "min_id"), None);
        assert_eq!(query_value("/p", "min_id"), None);
    }

    #[test]
    fn page_url_encodes_and_owns_the_cursor() {
        let mut req = CatchUpRequest::new("http://h:1/", "api/v1/notifications", "x", TOKEN);
        assert_eq!(req.page_limit, 80);
        req.params = vec![
            ("types[]".into(), "mention".into()),
            ("limit".into(), "5".into()),
            ("min_id".into(), "0".into()),
            ("q".into(), "a b&c".into()),
        ];
        assert_eq!(
            req.page_url("1/2"),
            "http://h:1/api/v1/notifications?types%5B%5D=mention&q=a%20b%26c&min_id=1%2F2&limit=80"
        );
        req.page_limit = 0;
        assert!(req.page_url("1").ends_with("min_id=1&limit=1"));
        assert_eq!(CatchUpRequest::new("http://h", "/api/v1/timelines/public", "1", "").page_limit, 40);
        assert!(!req.page_url("1").contains(TOKEN));
    }

    #[test]
    fn debug_redacts_the_token() {
        let req = CatchUpRequest::new("http://h", "/api/v1/timelines/home", "1", TOKEN);
        let debug = format!("{req:?}");
        assert!(!debug.contains(TOKEN), "{debug}");
        assert!(debug.contains("[redacted]") && debug.contains("/api/v1/timelines/home"), "{debug}");
        let debug = format!("{req:#?}");
        assert!(!debug.contains(TOKEN), "{debug}");
    }

    #[test]
    fn only_top_level_string_ids_count() {
        let body = Bytes::from_static(
            br#" [ {"id" : "5" , "x":[1,{"id":"nested"}]}, {"noid":1,"a":{"id":"9"}}, {"id":7}, 42, "s", null, [{"id":"1"}],
                {"account":{"id":"8"},"id":"6\u0030"}, {"id":""}, {"id":"11","id":"12"} ] "#,
        );
        let (items, skipped) = split_page(&body).unwrap();
        let got: Vec<(&str, &[u8])> = items.iter().map(|i| (&*i.id, &i.payload[..])).collect();
        assert_eq!(
            got,
            [
                ("5", &br#"{"id" : "5" , "x":[1,{"id":"nested"}]}"#[..]),
                ("60", &br#"{"account":{"id":"8"},"id":"6\u0030"}"#[..]),
                ("11", &br#"{"id":"11","id":"12"}"#[..]),
            ]
        );
        assert_eq!(skipped, 7);
        for bad in [&b"{}"[..], b"[", b"", b"[1,]", b"\xff", b"[{\"id\":\"1\"}] x"] {
            assert!(matches!(split_page(&Bytes::copy_from_slice(bad)), Err(CatchUpError::Decode(_))), "{bad:?}");
        }
        // Deep nesting: an error or a skipped element, never a stack overflow.
        let deep = format!("[{}{}]", "[".repeat(100_000), "]".repeat(100_000));
        assert!(split_page(&Bytes::from(deep)).map_or(true, |(items, skipped)| items.is_empty() && skipped == 1));
        let deep = format!("{{\"id\":\"1\",\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let (items, _) = split_page(&Bytes::from(format!("[{deep}]"))).unwrap();
        assert_eq!(items.iter().map(|i| &*i.id).collect::<Vec<_>>(), ["1"]);
    }

    #[actix_rt::test]
    async fn ninety_five_items_over_three_pages_once_each_in_order() {
        let mut all = id_range(900, 1045);
        all.extend(id_range(1, 99));
        let srv = serve(timeline(all, Some("http://elsewhere.invalid"))).await;
        let out = fetch_since(&client(), &request(srv.addr)).await.unwrap();
        assert_eq!(ids(&out), id_range(951, 1045));
        assert!(out.complete);
        assert_eq!(out.pages, 4, "three pages and the empty one");
        assert_eq!((out.skipped, out.rate_limited_waits), (0, 0));
        for item in &out.items {
            assert_eq!(&item.payload[..], status_json(&item.id).as_bytes());
        }
        let calls = srv.calls();
        let cursors: Vec<String> = calls.iter().map(|c| query_value(&c.uri, "min_id").unwrap()).collect();
        assert_eq!(cursors, ["950", "990", "1030", "1045"]);
        for call in &calls {
            assert!(call.uri.starts_with("/api/v1/timelines/tag/rust?local=true&min_id="), "{}", call.uri);
            assert!(call.uri.ends_with("&limit=40"), "{}", call.uri);
            assert!(!call.uri.contains(TOKEN), "{}", call.uri);
            assert_eq!(call.auth.as_deref(), Some(&*format!("Bearer {TOKEN}")));
            assert_eq!(call.accept.as_deref(), Some("application/json"));
        }
        srv.stop().await;
    }

    #[actix_rt::test]
    async fn pages_without_link_headers_use_the_newest_id() {
        let srv = serve(timeline(id_range(951, 1045), None)).await;
        let mut req = request(srv.addr);
        req.base_url = format!("http://{}", srv.addr);
        req.page_limit = 50;
        let out = fetch_since(&client(), &req).await.unwrap();
        assert_eq!(ids(&out), id_range(951, 1045));
        assert!(out.complete);
        assert_eq!(out.pages, 3);
        srv.stop().await;
    }

    #[actix_rt::test]
    async fn empty_first_page_is_complete() {
        let srv = serve(|_, _| reply(200, " [ ] ")).await;
        let out = fetch_since(&client(), &request(srv.addr)).await.unwrap();
        assert!(out.items.is_empty());
        assert!(out.complete);
        assert_eq!(out.pages, 1);
        assert_eq!(srv.calls().len(), 1);
        srv.stop().await;
    }

    #[actix_rt::test]
    async fn remaining_zero_waits_for_the_reset() {
        let tl = timeline(id_range(951, 960), None);
        let srv = serve(move |n, call| {
            let r = tl(n, call).header("x-ratelimit-limit", "300");
            if n == 0 {
                r.header("x-ratelimit-remaining", "0").header("x-ratelimit-reset", reset_in(50))
            } else {
                r.header("x-ratelimit-remaining", "299").header("x-ratelimit-reset", reset_in(300_000))
            }
        })
        .await;
        let out = fetch_since(&client(), &request(srv.addr)).await.unwrap();
        assert_eq!(ids(&out), id_range(951, 960));
        assert!(out.complete);
        assert_eq!(out.rate_limited_waits, 1);
        let calls = srv.calls();
        assert_eq!(calls.len(), 2);
        let gap = calls[1].at - calls[0].at;
        assert!(gap >= Duration::from_millis(40) && gap < Duration::from_secs(3), "{gap:?}");
        srv.stop().await;
    }

    #[actix_rt::test]
    async fn reset_beyond_max_rate_wait_stops_incomplete() {
        let tl = timeline(id_range(951, 960), None);
        let srv = serve(move |n, call| {
            tl(n, call).header("x-ratelimit-remaining", "0").header("x-ratelimit-reset", reset_in(60_000))
        })
        .await;
        let mut req = request(srv.addr);
        req.max_rate_wait = Duration::from_millis(100);
        req.page_limit = 4;
        let started = Instant::now();
        let out = fetch_since(&client(), &req).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(ids(&out), id_range(951, 954));
        assert!(!out.complete);
        assert_eq!((out.pages, out.rate_limited_waits), (1, 0));
        assert_eq!(srv.calls().len(), 1);
        srv.stop().await;
    }

    #[actix_rt::test]
    async fn too_many_requests_then_ok_retries_the_same_call() {
        let tl = timeline(id_range(951, 955), None);
        let srv = serve(move |n, call| match n {
            0 => reply(429, r#"{"error":"Too many requests"}"#)
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-reset", reset_in(30)),
            1 => reply(429, "").header("retry-after", "0"),
            2 => reply(429, ""),
            _ => tl(n, call),
        })
        .await;
        let out = fetch_since(&client(), &request(srv.addr)).await.unwrap();
        assert_eq!(ids(&out), id_range(951, 955));
        assert!(out.complete);
        assert_eq!(out.rate_limited_waits, 3);
        let calls = srv.calls();
        assert_eq!(calls.len(), 5);
        assert!(calls[..4].iter().all(|c| c.uri == calls[0].uri));
        assert!(calls[1].at - calls[0].at >= Duration::from_millis(20), "{:?}", calls[1].at - calls[0].at);
        assert!(calls[3].at - calls[2].at >= Duration::from_millis(10));
        srv.stop().await;
    }

    #[actix_rt::test]
    async fn too_many_requests_stops_when_the_wait_is_too_long_or_repeats() {
        let srv = serve(|_, _| reply(429, "").header("retry-after", "3600")).await;
        let out = fetch_since(&client(), &request(srv.addr)).await.unwrap();
        assert!(!out.complete && out.items.is_empty());
        assert_eq!((out.pages, out.rate_limited_waits), (0, 0));
        assert_eq!(srv.calls().len(), 1);
        srv.stop().await;

        let srv = serve(|_, _| reply(429, "")).await;
        let out = fetch_since(&client(), &request(srv.addr)).await.unwrap();
        assert!(!out.complete);
        assert_eq!(out.rate_limited_waits, MAX_RATE_LIMIT_RETRIES);
        assert_eq!(srv.calls().len(), MAX_RATE_LIMIT_RETRIES + 1);
        srv.stop().await;
    }

    #[actix_rt::test]
    async fn unavailable_twice_then_ok_retries_with_doubling_waits() {
        let tl = timeline(id_range(951, 952), None);
        let srv = serve(move |n, call| if n < 2 { reply(503, "down") } else { tl(n, call) }).await;
        let out = fetch_since(&client(), &request(srv.addr)).await.unwrap();
        assert_eq!(ids(&out), ["951", "952"]);
        assert!(out.complete);
        let calls = srv.calls();
        assert_eq!(calls.len(), 4);
        assert!(calls[1].at - calls[0].at >= Duration::from_millis(10));
        assert!(calls[2].at - calls[1].at >= Duration::from_millis(20));
        assert!(calls[..3].iter().all(|c| c.uri == calls[0].uri));
        srv.stop().await;
    }

    #[actix_rt::test]
    async fn server_errors_give_up_after_three_tries() {
        let srv = serve(|_, _| reply(502, format!("bad gateway for {TOKEN} {}", "x".repeat(5000)))).await;
        let err = fetch_since(&client(), &request(srv.addr)).await.unwrap_err();
        match &err {
            CatchUpError::Http { status: 502, body } => assert!(body.starts_with("bad gateway") && body.len() < 300),
            other => panic!("{other:?}"),
        }
        assert_no_token(&err);
        assert_eq!(srv.calls().len(), MAX_TRIES as usize);
        srv.stop().await;
    }

    #[actix_rt::test]
    async fn unauthorized_and_not_found_fail_at_once() {
        let srv = serve(|_, _| reply(401, format!(r#"{{"error":"The access token {TOKEN} is invalid"}}"#))).await;
        let err = fetch_since(&client(), &request(srv.addr)).await.unwrap_err();
        assert!(matches!(err, CatchUpError::Auth { status: 401 }), "{err:?}");
        assert_no_token(&err);
        assert_eq!(srv.calls().len(), 1);
        srv.stop().await;

        for status in [403, 404, 410, 422, 400] {
            let srv = serve(move |_, _| reply(status, format!(r#"{{"error":"no {TOKEN}"}}"#))).await;
            let err = fetch_since(&client(), &request(srv.addr)).await.unwrap_err();
            match &err {
                CatchUpError::Auth { status: s } | CatchUpError::Http { status: s, .. } => assert_eq!(*s, status),
                other => panic!("{other:?}"),
            }
            if status != 403 {
                assert!(err.to_string().contains("[redacted]"), "{err}");
            }
            assert_no_token(&err);
            assert_eq!(srv.calls().len(), 1, "{status}");
            srv.stop().await;
        }
    }

    #[actix_rt::test]
    async fn items_without_an_id_are_skipped() {
        let srv = serve(|n, _| match n {
            0 => reply(200, r#"[{"id":"953","a":{"id":"x"}},{"type":"mention"},{"id":952},{"id":"951"}]"#),
            _ => reply(200, "[]"),
        })
        .await;
        let out = fetch_since(&client(), &request(srv.addr)).await.unwrap();
        assert_eq!(ids(&out), ["951", "953"]);
        assert_eq!(&out.items[1].payload[..], br#"{"id":"953","a":{"id":"x"}}"#);
        assert_eq!(out.skipped, 2);
        assert!(out.complete);
        assert_eq!(query_value(&srv.calls()[1].uri, "min_id").as_deref(), Some("953"));
        srv.stop().await;
    }

    #[actix_rt::test]
    async fn a_page_of_items_without_ids_stops() {
        let srv = serve(|_, _| reply(200, r#"[{"x":1}]"#)).await;
        let out = fetch_since(&client(), &request(srv.addr)).await.unwrap();
        assert!(!out.complete && out.items.is_empty());
        assert_eq!((out.skipped, srv.calls().len()), (1, 1));
        srv.stop().await;
    }

    #[actix_rt::test]
    async fn max_items_is_respected() {
        let srv = serve(timeline(id_range(951, 1045), None)).await;
        let mut req = request(srv.addr);
        req.max_items = 50;
        let out = fetch_since(&client(), &req).await.unwrap();
        assert_eq!(ids(&out), id_range(951, 1000));
        assert!(!out.complete);
        assert_eq!(srv.calls().len(), 2);
        srv.stop().await;

        let srv = serve(timeline(id_range(951, 1045), None)).await;
        req.max_items = 0;
        let out = fetch_since(&client(), &req).await.unwrap();
        assert!(out.items.is_empty() && !out.complete);
        assert!(srv.calls().is_empty());
        srv.stop().await;
    }

    #[actix_rt::test]
    async fn the_same_page_again_stops() {
        // A server that ignores min_id (and its own Link cursor does not move).
        let body = format!("[{},{}]", status_json("960"), status_json("951"));
        let srv = serve(move |_, _| reply(200, body.clone()).header("link", "</x?min_id=960>; rel=\"prev\"")).await;
        let out = fetch_since(&client(), &request(srv.addr)).await.unwrap();
        assert_eq!(ids(&out), ["951", "960"]);
        assert!(!out.complete);
        assert_eq!(srv.calls().len(), 2);
        srv.stop().await;

        // A Link cursor that moves, over the same items.
        let body = format!("[{}]", status_json("951"));
        let srv =
            serve(move |n, _| reply(200, body.clone()).header("link", format!("</x?min_id={}>; rel=prev", 2000 + n)))
                .await;
        let out = fetch_since(&client(), &request(srv.addr)).await.unwrap();
        assert_eq!(ids(&out), ["951"]);
        assert!(!out.complete);
        assert_eq!(srv.calls().len(), 2);
        srv.stop().await;
    }

    #[actix_rt::test]
    async fn link_prev_cursor_is_preferred_but_never_followed() {
        let srv = serve(|n, call| match n {
            0 => reply(200, format!("[{}]", status_json("951")))
                .header("link", "<https://evil.invalid/api/v1/conversations?min_id=77%3A7>; rel=\"prev\""),
            _ => {
                assert_eq!(query_value(&call.uri, "min_id").as_deref(), Some("77:7"));
                reply(200, "[]")
            }
        })
        .await;
        let out = fetch_since(&client(), &request(srv.addr)).await.unwrap();
        assert!(out.complete);
        let calls = srv.calls();
        assert_eq!(calls.len(), 2);
        assert!(calls[1].uri.starts_with("/api/v1/timelines/tag/rust?local=true&min_id=77%3A7&"), "{}", calls[1].uri);
        srv.stop().await;
    }

    #[actix_rt::test]
    async fn duplicates_across_pages_come_back_once() {
        let srv = serve(|n, _| match n {
            0 => reply(200, format!("[{},{}]", status_json("953"), status_json("951"))),
            1 => reply(200, format!("[{},{},{}]", status_json("955"), status_json("953"), status_json("954"))),
            _ => reply(200, "[]"),
        })
        .await;
        let out = fetch_since(&client(), &request(srv.addr)).await.unwrap();
        assert_eq!(ids(&out), ["951", "953", "954", "955"]);
        assert!(out.complete);
        srv.stop().await;
    }

    #[actix_rt::test]
    async fn network_errors_retry_then_fail() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let started = Instant::now();
        let err = fetch_since(&client(), &request(port)).await.unwrap_err();
        assert!(matches!(err, CatchUpError::Network(_)), "{err:?}");
        assert!(started.elapsed() >= Duration::from_millis(30), "10 ms + 20 ms between three tries");
        assert_no_token(&err);
    }

    #[actix_rt::test]
    async fn a_slow_answer_times_out_as_a_network_error() {
        let srv = serve(|_, _| {
            let mut r = reply(200, "[]");
            r.delay = Duration::from_millis(300);
            r
        })
        .await;
        let mut req = request(srv.addr);
        req.timeout = Duration::from_millis(50);
        let err = fetch_since(&client(), &req).await.unwrap_err();
        assert!(matches!(err, CatchUpError::Network(_)), "{err:?}");
        assert_eq!(srv.calls().len(), MAX_TRIES as usize);
        srv.stop().await;
    }

    #[actix_rt::test]
    async fn bad_bodies_are_errors() {
        let srv = serve(|_, _| reply(200, r#"{"error":"not an array"}"#)).await;
        let err = fetch_since(&client(), &request(srv.addr)).await.unwrap_err();
        assert!(matches!(err, CatchUpError::Decode(_)), "{err:?}");
        srv.stop().await;

        let srv = serve(|_, _| reply(200, format!("[\"{}\"]", "a".repeat(MAX_PAGE_BYTES)))).await;
        let err = fetch_since(&client(), &request(srv.addr)).await.unwrap_err();
        assert!(matches!(err, CatchUpError::TooLarge { limit: MAX_PAGE_BYTES }), "{err:?}");
        assert_eq!(srv.calls().len(), 1);
        srv.stop().await;
    }

    #[actix_rt::test]
    async fn bad_tokens_and_urls_are_invalid_requests() {
        let mut req = request("127.0.0.1:9".parse().unwrap());
        req.token = format!("{TOKEN}\r\nX-Evil: 1");
        let err = fetch_since(&client(), &req).await.unwrap_err();
        assert!(matches!(err, CatchUpError::InvalidRequest(_)), "{err:?}");
        assert_no_token(&err);
        req.token = TOKEN.into();
        req.base_url = "not a url".into();
        let err = fetch_since(&client(), &req).await.unwrap_err();
        assert!(matches!(err, CatchUpError::InvalidRequest(_)), "{err:?}");
        assert_no_token(&err);
    }

    #[actix_rt::test]
    async fn an_empty_token_sends_no_authorization() {
        let srv = serve(|_, _| reply(200, "[]")).await;
        let mut req = request(srv.addr);
        req.token.clear();
        fetch_since(&client(), &req).await.unwrap();
        assert_eq!(srv.calls()[0].auth, None);
        srv.stop().await;
    }
}
