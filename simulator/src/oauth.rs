//! OAuth 1.0a HMAC-SHA1 verification of simulator requests (protocols.md A.9):
//! the signature is recomputed with oauth1-request over the request's own
//! nonce, timestamp and decoded parameters, never with a hand-rolled HMAC.

use std::num::NonZeroU64;

use percent_encoding::percent_decode_str;

use super::config::SimCredentials;

/// Why a request was refused with 401.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    /// No `Authorization: OAuth ...` header and no `oauth_*` parameters.
    Missing,
    /// A required `oauth_*` parameter is absent or unusable.
    Malformed(&'static str),
    /// No configured credential has this consumer key and token.
    UnknownCredentials,
    /// The recomputed signature differs.
    BadSignature,
}

/// The request as the verifier needs it.
pub(crate) struct SignedRequest<'a> {
    /// Upper-case HTTP method.
    pub method: &'a str,
    /// `http://<Host header><path>`: what the client signed.
    pub base_url: &'a str,
    /// The `Authorization` header, when present.
    pub authorization: Option<&'a str>,
    /// Every decoded query and form parameter, `oauth_*` ones included (they
    /// carry the protocol parameters when there is no header).
    pub params: &'a [(String, String)],
}

/// Checks the request against `credentials`; returns the index of the
/// credential that signed it.
pub(crate) fn verify(req: &SignedRequest<'_>, credentials: &[SimCredentials]) -> Result<usize, AuthFailure> {
    let protocol = match req.authorization {
        Some(header) => parse_authorization(header)?,
        None => req.params.iter().filter(|(k, _)| k.starts_with("oauth_")).cloned().collect(),
    };
    if protocol.is_empty() {
        return Err(AuthFailure::Missing);
    }
    let get = |key: &'static str| {
        protocol.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).ok_or(AuthFailure::Malformed(key))
    };
    let consumer_key = get("oauth_consumer_key")?;
    let token = get("oauth_token")?;
    let nonce = get("oauth_nonce")?;
    let signature = get("oauth_signature")?;
    if get("oauth_signature_method")? != "HMAC-SHA1" {
        return Err(AuthFailure::Malformed("oauth_signature_method"));
    }
    let timestamp = get("oauth_timestamp")?
        .parse::<u64>()
        .ok()
        .and_then(NonZeroU64::new)
        .ok_or(AuthFailure::Malformed("oauth_timestamp"))?;
    let with_version = match protocol.iter().find(|(k, _)| k == "oauth_version") {
        Some((_, v)) if v == "1.0" => true,
        Some(_) => return Err(AuthFailure::Malformed("oauth_version")),
        None => false,
    };
    // oauth1-request asserts (in debug builds) that the URI has no query; a
    // hostile Host header must not be able to trip that.
    if req.base_url.contains(['?', '#']) {
        return Err(AuthFailure::Malformed("host"));
    }

    let index = credentials
        .iter()
        .position(|c| c.consumer_key == consumer_key && c.token == token)
        .ok_or(AuthFailure::UnknownCredentials)?;
    let cred = &credentials[index];

    // The signature covers every non-oauth parameter; oauth1-request adds the
    // protocol parameters itself from the builder's options.
    let list: oauth1_request::ParameterList<&str, &str> =
        req.params.iter().filter(|(k, _)| !k.starts_with("oauth_")).map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut builder = oauth1_request::Builder::<_, &str, &str>::new(
        oauth1_request::Credentials::new(cred.consumer_key.as_str(), cred.consumer_secret.as_str()),
        oauth1_request::HmacSha1::new(),
    );
    builder
        .token(oauth1_request::Credentials::new(cred.token.as_str(), cred.token_secret.as_str()))
        .nonce(nonce)
        .timestamp(timestamp)
        .version(with_version);
    let expected_header = builder.authorize(req.method, req.base_url, &list);
    let expected = parse_authorization(&expected_header)?
        .into_iter()
        .find(|(k, _)| k == "oauth_signature")
        .map(|(_, v)| v)
        .ok_or(AuthFailure::BadSignature)?;
    if constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
        Ok(index)
    } else {
        Err(AuthFailure::BadSignature)
    }
}

/// Parses `OAuth k="v", k2="v2"` into percent-decoded pairs (`realm` dropped:
/// it is not signed).
pub(crate) fn parse_authorization(header: &str) -> Result<Vec<(String, String)>, AuthFailure> {
    let header = header.trim_start();
    let rest = match header.get(..6) {
        Some(scheme) if scheme.eq_ignore_ascii_case("oauth ") => &header[6..],
        _ => return Err(AuthFailure::Missing),
    };
    let mut pairs = Vec::new();
    let mut rest = rest;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let eq = rest.find('=').ok_or(AuthFailure::Malformed("authorization"))?;
        let key = rest[..eq].trim();
        let after = rest[eq + 1..].trim_start();
        let (raw, tail) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"').ok_or(AuthFailure::Malformed("authorization"))?;
                (&quoted[..end], &quoted[end + 1..])
            }
            // Unquoted values are tolerated up to the next comma.
            None => {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim_end(), &after[end..])
            }
        };
        let value = percent_decode_str(raw).decode_utf8().map_err(|_| AuthFailure::Malformed("authorization"))?;
        if key != "realm" {
            pairs.push((key.to_string(), value.into_owned()));
        }
        rest = tail;
    }
    Ok(pairs)
}

/// Compares without an early exit, so response timing says nothing about how
/// much of a guessed signature was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(cred: &SimCredentials, method: &str, url: &str, params: &[(&str, &str)], nonce: &str, ts: u64) -> String {
        let list: oauth1_request::ParameterList<&str, &str> = params.iter().copied().collect();
        let mut b = oauth1_request::Builder::<_, &str, &str>::new(
            oauth1_request::Credentials::new(cred.consumer_key.as_str(), cred.consumer_secret.as_str()),
            oauth1_request::HmacSha1::new(),
        );
        b.token(oauth1_request::Credentials::new(cred.token.as_str(), cred.token_secret.as_str()))
            .nonce(nonce)
            .timestamp(NonZeroU64::new(ts))
            .version(true);
        b.authorize(method, url, &list)
    }

    fn owned(params: &[(&str, &str)]) -> Vec<(String, String)> {
        params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const URL: &str = "http://127.0.0.1:8900/1.1/statuses/filter.json";

    #[test]
    fn demo_signed_request_verifies() {
        let demo = SimCredentials::demo();
        let params = [("track", "#cdu,#spd"), ("delimited", "length"), ("follow", "1,2")];
        let header = sign(&demo, "POST", URL, &params, "abc123", 1_700_000_000);
        let p = owned(&params);
        let req = SignedRequest { method: "POST", base_url: URL, authorization: Some(&header), params: &p };
        assert_eq!(verify(&req, &[demo]), Ok(0));
    }

    #[test]
    fn second_credential_is_found() {
        let other = SimCredentials {
            consumer_key: "ck2".into(),
            consumer_secret: "cs2".into(),
            token: "t2".into(),
            token_secret: "ts2".into(),
        };
        let header = sign(&other, "GET", URL, &[], "n", 1);
        let req = SignedRequest { method: "GET", base_url: URL, authorization: Some(&header), params: &[] };
        assert_eq!(verify(&req, &[SimCredentials::demo(), other]), Ok(1));
    }

    #[test]
    fn wrong_secret_does_not_verify() {
        let mut wrong = SimCredentials::demo();
        wrong.token_secret = "not-the-secret".into();
        let params = [("track", "rust")];
        let header = sign(&wrong, "POST", URL, &params, "n1", 1_700_000_000);
        let p = owned(&params);
        let req = SignedRequest { method: "POST", base_url: URL, authorization: Some(&header), params: &p };
        assert_eq!(verify(&req, &[SimCredentials::demo()]), Err(AuthFailure::BadSignature));
    }

    #[test]
    fn tampered_form_param_does_not_verify() {
        let demo = SimCredentials::demo();
        let header = sign(&demo, "POST", URL, &[("track", "rust")], "n2", 1_700_000_000);
        let p = owned(&[("track", "rust,go")]);
        let req = SignedRequest { method: "POST", base_url: URL, authorization: Some(&header), params: &p };
        assert_eq!(verify(&req, std::slice::from_ref(&demo)), Err(AuthFailure::BadSignature));
        // Same for a different method or URL.
        let p = owned(&[("track", "rust")]);
        let req = SignedRequest { method: "GET", base_url: URL, authorization: Some(&header), params: &p };
        assert_eq!(verify(&req, &[demo]), Err(AuthFailure::BadSignature));
    }

    #[test]
    fn unknown_key_and_missing_header_are_refused() {
        let mut stranger = SimCredentials::demo();
        stranger.consumer_key = "someone-else".into();
        let header = sign(&stranger, "GET", URL, &[], "n", 5);
        let req = SignedRequest { method: "GET", base_url: URL, authorization: Some(&header), params: &[] };
        let demo = [SimCredentials::demo()];
        assert_eq!(verify(&req, &demo), Err(AuthFailure::UnknownCredentials));
        let req = SignedRequest { method: "GET", base_url: URL, authorization: None, params: &[] };
        assert_eq!(verify(&req, &demo), Err(AuthFailure::Missing));
        let req = SignedRequest { method: "GET", base_url: URL, authorization: Some("Bearer abc"), params: &[] };
        assert_eq!(verify(&req, &demo), Err(AuthFailure::Missing));
    }

    #[test]
    fn oauth_params_in_the_query_verify() {
        // Twitter also accepted the protocol parameters in the query string.
        let demo = SimCredentials::demo();
        let header = sign(&demo, "GET", URL, &[("track", "a b")], "qn", 77);
        let mut p = parse_authorization(&header).expect("own header parses");
        p.push(("track".into(), "a b".into()));
        let req = SignedRequest { method: "GET", base_url: URL, authorization: None, params: &p };
        assert_eq!(verify(&req, &[demo]), Ok(0));
    }

    #[test]
    fn hostile_host_is_refused_without_panicking() {
        let demo = SimCredentials::demo();
        let header = sign(&demo, "GET", URL, &[], "n", 5);
        let req = SignedRequest {
            method: "GET",
            base_url: "http://evil?x/1.1/user.json",
            authorization: Some(&header),
            params: &[],
        };
        assert_eq!(verify(&req, &[demo]), Err(AuthFailure::Malformed("host")));
        assert!(parse_authorization("OAuth oauth_nonce=\"unterminated").is_err());
        assert!(parse_authorization("OAuth oauth_nonce=\"%FF\"").is_err());
    }

    #[test]
    fn twitter_documented_vector_verifies() {
        // protocols.md A.9: Twitter's own example, expected signature
        // hCtSmYh+iHYCEqBWrE7C7hYmtUk=.
        let cred = SimCredentials {
            consumer_key: "xvz1evFS4wEEPTGEFPHBog".into(),
            consumer_secret: "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw".into(),
            token: "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb".into(),
            token_secret: "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE".into(),
        };
        let header = "OAuth oauth_consumer_key=\"xvz1evFS4wEEPTGEFPHBog\", \
            oauth_nonce=\"kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg\", \
            oauth_signature=\"hCtSmYh%2BiHYCEqBWrE7C7hYmtUk%3D\", \
            oauth_signature_method=\"HMAC-SHA1\", oauth_timestamp=\"1318622958\", \
            oauth_token=\"370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb\", \
            oauth_version=\"1.0\"";
        let p = owned(&[("include_entities", "true"), ("status", "Hello Ladies + Gentlemen, a signed OAuth request!")]);
        let req = SignedRequest {
            method: "POST",
            base_url: "https://api.twitter.com/1.1/statuses/update.json",
            authorization: Some(header),
            params: &p,
        };
        assert_eq!(verify(&req, &[cred]), Ok(0));
    }
}
