//! Mastodon stream names (protocols.md B.3): parses the config's spelling
//! (`hashtag:local:rust`, `list:42`, `public:media`), and gives each stream's
//! SSE path, WebSocket subscribe messages, echoed `stream` array, shard key
//! and REST catch-up timeline.

use super::decode::normalize_hashtag;

/// One Mastodon stream, as the WebSocket protocol names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MastodonStream {
    /// The WebSocket `stream` name: `user`, `public:local:media`, `hashtag:local`, `list`, ...
    pub name: String,
    /// The tag of a hashtag stream (as the user wrote it) or the id of a list.
    pub param: Option<String>,
}

/// Where catch-up reads a stream's missed events from (B.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUpSource {
    /// REST path, e.g. `/api/v1/timelines/tag/rust`.
    pub path: String,
    /// Extra query parameters (`local`, `remote`, `only_media`).
    pub params: Vec<(String, String)>,
    /// Items per page: 40 for timelines, 80 for notifications.
    pub page_limit: u32,
}

const FIXED: [&str; 11] = [
    "user",
    "user:notification",
    "public",
    "public:media",
    "public:local",
    "public:local:media",
    "public:remote",
    "public:remote:media",
    "direct",
    "public:allow_local_only",
    "public:allow_local_only:media",
];

impl MastodonStream {
    /// The `public` stream (whose timeline holds the newest public statuses).
    pub fn public() -> MastodonStream {
        MastodonStream { name: "public".to_owned(), param: None }
    }

    /// Parses a config stream name; `None` when it is not one of B.3's.
    pub fn parse(s: &str) -> Option<MastodonStream> {
        if FIXED.contains(&s) {
            return Some(MastodonStream { name: s.to_owned(), param: None });
        }
        for prefix in ["hashtag:local", "hashtag", "list"] {
            if let Some(rest) = s.strip_prefix(prefix).and_then(|r| r.strip_prefix(':')) {
                if rest.is_empty() || rest.contains(char::is_whitespace) || rest.contains(':') && prefix == "list" {
                    return None;
                }
                if prefix.starts_with("hashtag") && normalize_hashtag(rest).is_empty() {
                    return None;
                }
                return Some(MastodonStream { name: prefix.to_owned(), param: Some(rest.to_owned()) });
            }
        }
        None
    }

    /// The config spelling: `hashtag:rust`, `list:42`, `public:local`.
    pub fn config_name(&self) -> String {
        match &self.param {
            Some(p) => format!("{}:{p}", self.name),
            None => self.name.clone(),
        }
    }

    /// The shard key: hashtags normalised the way the server keys its
    /// subscriptions (B.4), so `Rust` and `rust` are one stream.
    pub fn key(&self) -> String {
        key_of(&self.name, self.param.as_deref())
    }

    /// The `stream` array the envelope carries and the server echoes.
    pub fn echo(&self) -> Vec<String> {
        let mut v = vec![self.name.clone()];
        v.extend(self.param.clone());
        v
    }

    fn is_hashtag(&self) -> bool {
        self.name == "hashtag" || self.name == "hashtag:local"
    }

    /// `(path, query)` of the SSE endpoint, relative to the streaming host.
    pub fn sse_path(&self) -> (String, Vec<(String, String)>) {
        let (base, media) = match self.name.strip_suffix(":media") {
            Some(base) => (base, true),
            None => (self.name.as_str(), false),
        };
        let path = format!("/api/v1/streaming/{}", base.replace(':', "/"));
        let mut query = Vec::new();
        if media {
            query.push(("only_media".to_owned(), "true".to_owned()));
        }
        if let Some(p) = &self.param {
            let key = if self.is_hashtag() { "tag" } else { "list" };
            query.push((key.to_owned(), p.clone()));
        }
        (path, query)
    }

    /// The WebSocket message that subscribes to this stream.
    pub fn subscribe_message(&self) -> String {
        self.ws_message("subscribe")
    }

    /// The WebSocket message that unsubscribes from this stream.
    pub fn unsubscribe_message(&self) -> String {
        self.ws_message("unsubscribe")
    }

    fn ws_message(&self, kind: &str) -> String {
        let mut m = serde_json::Map::new();
        m.insert("type".into(), kind.into());
        m.insert("stream".into(), self.name.clone().into());
        if let Some(p) = &self.param {
            m.insert(if self.is_hashtag() { "tag" } else { "list" }.into(), p.clone().into());
        }
        serde_json::Value::Object(m).to_string()
    }

    /// Where missed events are fetched after a gap; `None` for `direct`
    /// (conversations page only through Link headers, with internal ids)
    /// and the `allow_local_only` variants.
    pub fn catch_up_source(&self) -> Option<CatchUpSource> {
        let timeline = |path: &str, params: &[(&str, &str)]| CatchUpSource {
            path: path.to_owned(),
            params: params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            page_limit: 40,
        };
        let media = [("only_media", "true")];
        Some(match self.name.as_str() {
            "user" => timeline("/api/v1/timelines/home", &[]),
            "user:notification" => {
                CatchUpSource { path: "/api/v1/notifications".into(), params: Vec::new(), page_limit: 80 }
            }
            "public" => timeline("/api/v1/timelines/public", &[]),
            "public:media" => timeline("/api/v1/timelines/public", &media),
            "public:local" => timeline("/api/v1/timelines/public", &[("local", "true")]),
            "public:local:media" => timeline("/api/v1/timelines/public", &[("local", "true"), ("only_media", "true")]),
            "public:remote" => timeline("/api/v1/timelines/public", &[("remote", "true")]),
            "public:remote:media" => {
                timeline("/api/v1/timelines/public", &[("remote", "true"), ("only_media", "true")])
            }
            "hashtag" | "hashtag:local" => {
                let tag = self.param.as_deref()?;
                let path = format!("/api/v1/timelines/tag/{}", percent_encode_segment(tag));
                let local: &[(&str, &str)] = if self.name == "hashtag:local" { &[("local", "true")] } else { &[] };
                timeline(&path, local)
            }
            "list" => {
                timeline(&format!("/api/v1/timelines/list/{}", percent_encode_segment(self.param.as_deref()?)), &[])
            }
            _ => return None,
        })
    }

    /// The event kind catch-up recovers and whose ids mark the stream's
    /// position: notifications for `user:notification`, statuses otherwise.
    pub fn tracks_notifications(&self) -> bool {
        self.name == "user:notification"
    }
}

/// The shard key for an echoed `stream` array (`["hashtag","Rust"]` → `hashtag:rust`).
pub fn key_of_echo(echo: &[String]) -> Option<String> {
    match echo {
        [name] => Some(key_of(name, None)),
        [name, param] => Some(key_of(name, Some(param))),
        _ => None,
    }
}

fn key_of(name: &str, param: Option<&str>) -> String {
    match param {
        Some(p) if name.starts_with("hashtag") => format!("{name}:{}", normalize_hashtag(p)),
        Some(p) => format!("{name}:{p}"),
        None => name.to_owned(),
    }
}

/// Percent-encodes one path segment (RFC 3986 unreserved characters stay).
fn percent_encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str) -> MastodonStream {
        MastodonStream::parse(name).unwrap_or_else(|| panic!("{name} should parse"))
    }

    #[test]
    fn every_b3_stream_parses_with_its_sse_path() {
        type Case = (&'static str, &'static str, &'static [(&'static str, &'static str)]);
        let cases: [Case; 14] = [
            ("user", "/api/v1/streaming/user", &[]),
            ("user:notification", "/api/v1/streaming/user/notification", &[]),
            ("public", "/api/v1/streaming/public", &[]),
            ("public:media", "/api/v1/streaming/public", &[("only_media", "true")]),
            ("public:local", "/api/v1/streaming/public/local", &[]),
            ("public:local:media", "/api/v1/streaming/public/local", &[("only_media", "true")]),
            ("public:remote", "/api/v1/streaming/public/remote", &[]),
            ("public:remote:media", "/api/v1/streaming/public/remote", &[("only_media", "true")]),
            ("hashtag:Rust", "/api/v1/streaming/hashtag", &[("tag", "Rust")]),
            ("hashtag:local:rust", "/api/v1/streaming/hashtag/local", &[("tag", "rust")]),
            ("list:42", "/api/v1/streaming/list", &[("list", "42")]),
            ("direct", "/api/v1/streaming/direct", &[]),
            ("public:allow_local_only", "/api/v1/streaming/public/allow_local_only", &[]),
            ("public:allow_local_only:media", "/api/v1/streaming/public/allow_local_only", &[("only_media", "true")]),
        ];
        for (name, path, query) in cases {
            let stream = s(name);
            assert_eq!(stream.config_name(), name);
            let (p, q) = stream.sse_path();
            assert_eq!(p, path, "{name}");
            let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_eq!(q, query, "{name}");
        }
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["", "users", "hashtag", "hashtag:", "hashtag: x", "list:", "list:1:2", "hashtag:!!!", "public:x"] {
            assert_eq!(MastodonStream::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn subscribe_messages_and_echoes() {
        assert_eq!(s("hashtag:Rust").subscribe_message(), r#"{"stream":"hashtag","tag":"Rust","type":"subscribe"}"#);
        assert_eq!(s("list:42").unsubscribe_message(), r#"{"list":"42","stream":"list","type":"unsubscribe"}"#);
        assert_eq!(s("public:local").subscribe_message(), r#"{"stream":"public:local","type":"subscribe"}"#);
        assert_eq!(s("hashtag:local:Rust").echo(), vec!["hashtag:local", "Rust"]);
        assert_eq!(s("user").echo(), vec!["user"]);
    }

    #[test]
    fn keys_normalise_hashtags_only() {
        assert_eq!(s("hashtag:RustLang").key(), "hashtag:rustlang");
        assert_eq!(s("hashtag:RustLang").key(), s("hashtag:rustlang").key());
        assert_eq!(key_of_echo(&["hashtag".into(), "RUSTLANG".into()]).as_deref(), Some("hashtag:rustlang"));
        assert_eq!(s("list:42").key(), "list:42");
        assert_eq!(key_of_echo(&["public:local".into()]).as_deref(), Some("public:local"));
        assert_eq!(key_of_echo(&[]), None);
    }

    #[test]
    fn catch_up_timelines() {
        let tl = |n: &str| s(n).catch_up_source().map(|c| (c.path, c.params, c.page_limit));
        assert_eq!(tl("user").unwrap().0, "/api/v1/timelines/home");
        assert_eq!(tl("user:notification").unwrap(), ("/api/v1/notifications".into(), vec![], 80));
        assert_eq!(tl("public:local").unwrap().1, vec![("local".to_owned(), "true".to_owned())]);
        assert_eq!(tl("hashtag:local:café").unwrap().0, "/api/v1/timelines/tag/caf%C3%A9");
        assert_eq!(tl("list:42").unwrap().0, "/api/v1/timelines/list/42");
        assert_eq!(tl("direct"), None);
        assert!(s("user:notification").tracks_notifications());
    }
}
