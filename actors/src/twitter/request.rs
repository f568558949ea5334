//! Builds and signs Twitter v1.1 streaming requests. Signing is delegated to
//! `oauth1-request`; this module only decides method, URL and parameters, and
//! encodes the body exactly as it was signed.

use std::fmt;
use std::num::NonZeroU64;

/// OAuth 1.0a user-context credentials. Debug output hides the secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthCredentials {
    /// Consumer (app) key.
    pub consumer_key: String,
    /// Consumer secret.
    pub consumer_secret: String,
    /// Access token.
    pub token: String,
    /// Access token secret.
    pub token_secret: String,
}

impl fmt::Debug for OAuthCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthCredentials")
            .field("consumer_key", &self.consumer_key)
            .field("consumer_secret", &"***")
            .field("token", &"***")
            .field("token_secret", &"***")
            .finish()
    }
}

/// HTTP method of a streaming request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET, parameters in the query.
    Get,
    /// POST, parameters in an `application/x-www-form-urlencoded` body.
    Post,
}

impl Method {
    /// Upper-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// Which Twitter v1.1 stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TwitterEndpoint {
    /// `POST /1.1/statuses/filter.json`.
    Filter,
    /// `GET /1.1/statuses/sample.json`.
    Sample,
    /// `GET /1.1/user.json`.
    User,
    /// `GET /1.1/site.json`.
    Site,
}

/// Predicates and options of one Twitter connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TwitterQuery {
    /// `follow` user ids.
    pub follow: Vec<u64>,
    /// `track` phrases.
    pub track: Vec<String>,
    /// `locations` boxes, each "sw_lon,sw_lat,ne_lon,ne_lat".
    pub locations: Vec<String>,
    /// `delimited=length`.
    pub delimited: bool,
    /// `stall_warnings=true`.
    pub stall_warnings: bool,
    /// `filter_level`, when not the default.
    pub filter_level: Option<String>,
    /// `language` codes.
    pub language: Vec<String>,
    /// `with` (user and site streams).
    pub with: Option<String>,
    /// `replies` (user and site streams).
    pub replies: Option<String>,
}

/// An unsigned request: method, base URL (no query) and parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRequest {
    /// Method.
    pub method: Method,
    /// Scheme, host and path; never a query.
    pub url: String,
    /// Parameters, sent in the query (GET) or the form body (POST).
    pub params: Vec<(String, String)>,
}

/// A signed request ready for the HTTP client.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedRequest {
    /// Method.
    pub method: Method,
    /// Full URL, with the query for GET.
    pub url: String,
    /// Form body for POST.
    pub body: Option<String>,
    /// `Authorization` header value. Secret-bearing: never log it.
    pub authorization: String,
}

impl fmt::Debug for SignedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("body", &self.body)
            .field("authorization", &"OAuth ***")
            .finish()
    }
}

/// The request for one Twitter connection.
pub fn twitter_request(endpoint: TwitterEndpoint, base_url: &str, q: &TwitterQuery) -> StreamRequest {
    let base = base_url.trim_end_matches('/');
    let (method, path) = match endpoint {
        TwitterEndpoint::Filter => (Method::Post, "/1.1/statuses/filter.json"),
        TwitterEndpoint::Sample => (Method::Get, "/1.1/statuses/sample.json"),
        TwitterEndpoint::User => (Method::Get, "/1.1/user.json"),
        TwitterEndpoint::Site => (Method::Get, "/1.1/site.json"),
    };
    let mut params: Vec<(String, String)> = Vec::new();
    let mut push = |k: &str, v: String| params.push((k.to_owned(), v));
    let joined = |v: &[String]| v.join(",");
    if q.delimited {
        push("delimited", "length".into());
    }
    if q.stall_warnings {
        push("stall_warnings", "true".into());
    }
    if let Some(level) = &q.filter_level {
        push("filter_level", level.clone());
    }
    if !q.language.is_empty() {
        push("language", joined(&q.language));
    }
    match endpoint {
        TwitterEndpoint::Filter | TwitterEndpoint::User => {
            if !q.follow.is_empty() && endpoint == TwitterEndpoint::Filter {
                push("follow", join_ids(&q.follow));
            }
            if !q.track.is_empty() {
                push("track", joined(&q.track));
            }
            if !q.locations.is_empty() {
                push("locations", joined(&q.locations));
            }
        }
        TwitterEndpoint::Site => push("follow", join_ids(&q.follow)),
        TwitterEndpoint::Sample => {}
    }
    if matches!(endpoint, TwitterEndpoint::User | TwitterEndpoint::Site) {
        if let Some(with) = &q.with {
            push("with", with.clone());
        }
        if let Some(replies) = &q.replies {
            push("replies", replies.clone());
        }
    }
    StreamRequest { method, url: format!("{base}{path}"), params }
}

fn join_ids(ids: &[u64]) -> String {
    let mut s = String::with_capacity(ids.len() * 11);
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&id.to_string());
    }
    s
}

/// Signs `req` with a fresh nonce and the current time.
pub fn sign(req: &StreamRequest, creds: &OAuthCredentials) -> SignedRequest {
    sign_with(req, creds, None, None)
}

/// Signs `req`; `nonce` and `timestamp` pin the otherwise random values (tests).
pub fn sign_with(
    req: &StreamRequest,
    creds: &OAuthCredentials,
    nonce: Option<&str>,
    timestamp: Option<u64>,
) -> SignedRequest {
    let token = oauth1_request::Token::from_parts(
        creds.consumer_key.as_str(),
        creds.consumer_secret.as_str(),
        creds.token.as_str(),
        creds.token_secret.as_str(),
    );
    let pairs: Vec<(&str, &str)> = req.params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let params = oauth1_request::ParameterList::new(pairs);
    let mut builder = oauth1_request::Builder::with_token(token, oauth1_request::HmacSha1::new());
    builder.version(true).nonce(nonce).timestamp(timestamp.and_then(NonZeroU64::new));
    let authorization = builder.authorize(req.method.as_str(), &req.url, &params);
    // The same encoder that fed the signature encodes the body, so the
    // server decodes exactly the values that were signed.
    let encoded = oauth1_request::to_form(&params);
    let (url, body) = match req.method {
        Method::Get if encoded.is_empty() => (req.url.clone(), None),
        Method::Get => (format!("{}?{}", req.url, encoded), None),
        Method::Post => (req.url.clone(), Some(encoded)),
    };
    SignedRequest { method: req.method, url, body, authorization }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signature_of(header: &str) -> String {
        let enc = header
            .split(',')
            .find_map(|p| p.trim().strip_prefix("oauth_signature=\""))
            .and_then(|v| v.strip_suffix('"'))
            .expect("signature present");
        percent_decode(enc)
    }

    fn percent_decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() + 1 {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    /// protocols.md A.9: Twitter's documented example.
    #[test]
    fn reproduces_the_documented_signature() {
        let creds = OAuthCredentials {
            consumer_key: "xvz1evFS4wEEPTGEFPHBog".into(),
            consumer_secret: "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw".into(),
            token: "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb".into(),
            token_secret: "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE".into(),
        };
        let req = StreamRequest {
            method: Method::Post,
            url: "https://api.twitter.com/1.1/statuses/update.json".into(),
            params: vec![
                ("include_entities".into(), "true".into()),
                ("status".into(), "Hello Ladies + Gentlemen, a signed OAuth request!".into()),
            ],
        };
        let signed = sign_with(&req, &creds, Some("kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg"), Some(1318622958));
        assert_eq!(signature_of(&signed.authorization), "hCtSmYh+iHYCEqBWrE7C7hYmtUk=");
        assert!(signed.authorization.contains("oauth_version=\"1.0\""));
        assert_eq!(
            signed.body.as_deref(),
            Some("include_entities=true&status=Hello%20Ladies%20%2B%20Gentlemen%2C%20a%20signed%20OAuth%20request%21")
        );
    }

    #[test]
    fn filter_posts_a_form_and_sample_gets_a_query() {
        let q = TwitterQuery {
            follow: vec![1, 22],
            track: vec!["#cdu".into(), "a b".into()],
            delimited: true,
            stall_warnings: true,
            ..TwitterQuery::default()
        };
        let r = twitter_request(TwitterEndpoint::Filter, "http://127.0.0.1:1/", &q);
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.url, "http://127.0.0.1:1/1.1/statuses/filter.json");
        let creds = OAuthCredentials {
            consumer_key: "k".into(),
            consumer_secret: "s".into(),
            token: "t".into(),
            token_secret: "ts".into(),
        };
        let s = sign(&r, &creds);
        assert_eq!(s.body.as_deref(), Some("delimited=length&follow=1%2C22&stall_warnings=true&track=%23cdu%2Ca%20b"));
        assert!(!format!("{s:?}").contains(&s.authorization));
        assert!(!format!("{creds:?}").contains("ts\""));
        let r = twitter_request(
            TwitterEndpoint::Sample,
            "http://h",
            &TwitterQuery { delimited: true, ..Default::default() },
        );
        let s = sign(&r, &creds);
        assert_eq!(s.url, "http://h/1.1/statuses/sample.json?delimited=length");
        assert!(s.body.is_none());
    }

    #[test]
    fn site_request_carries_follow_and_with() {
        let q = TwitterQuery { follow: vec![5, 6], with: Some("user".into()), ..Default::default() };
        let r = twitter_request(TwitterEndpoint::Site, "http://h", &q);
        assert_eq!(r.method, Method::Get);
        assert!(r.params.contains(&("follow".into(), "5,6".into())));
        assert!(r.params.contains(&("with".into(), "user".into())));
    }
}
