//! DIDs and collection names (NSIDs and `prefix.*`) checked as the
//! Jetstream server checks them before it accepts a filter: one invalid
//! entry makes the server refuse the whole request (HTTP 400) or drop the
//! connection (an `options_update`), so they are refused at `check` time.

/// Longest DID the AT Protocol allows.
const MAX_DID: usize = 2048;
/// Longest NSID.
const MAX_NSID: usize = 317;

/// Whether `s` is a DID: `did:<method>:<id>`, the method lowercase ASCII
/// letters, the id of `A-Za-z0-9._:%-` not ending in `:` or `%`.
pub fn is_did(s: &str) -> bool {
    if s.len() > MAX_DID {
        return false;
    }
    let Some(rest) = s.strip_prefix("did:") else { return false };
    let Some((method, id)) = rest.split_once(':') else { return false };
    !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_lowercase())
        && !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'%' | b'-'))
        && !id.ends_with([':', '%'])
}

/// Whether `s` is an NSID: at least three dot-separated segments, the
/// domain segments of `A-Za-z0-9-` (1-63, no leading or trailing `-`, the
/// first starting with a letter), the last (the name) a letter then letters
/// and digits.
pub fn is_nsid(s: &str) -> bool {
    if s.len() > MAX_NSID {
        return false;
    }
    let segments: Vec<&str> = s.split('.').collect();
    let Some((name, domain)) = segments.split_last() else { return false };
    if domain.len() < 2 {
        return false;
    }
    let domain_ok = domain.iter().enumerate().all(|(i, seg)| {
        (1..=63).contains(&seg.len())
            && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !seg.starts_with('-')
            && !seg.ends_with('-')
            && (i > 0 || seg.as_bytes()[0].is_ascii_alphabetic())
    });
    let name_ok = (1..=63).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphabetic()
        && name.bytes().all(|b| b.is_ascii_alphanumeric());
    domain_ok && name_ok
}

/// Whether `s` is a wanted collection the server accepts: an NSID, or a
/// prefix ending in `.*` (the server does not check what comes before it,
/// but a prefix that no NSID could start with is a mistake worth refusing).
pub fn is_collection(s: &str) -> bool {
    match s.strip_suffix(".*") {
        Some(head) => {
            !head.is_empty()
                && head
                    .split('.')
                    .all(|seg| !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        }
        None => is_nsid(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dids_are_checked_like_the_server() {
        for ok in ["did:plc:z72i7hdynmk6r22z27h6tvur", "did:web:example.com", "did:web:localhost%3A8080"] {
            assert!(is_did(ok), "{ok}");
        }
        for bad in
            ["", "did:", "did:plc", "did:plc:", "did:PLC:abc", "did:plc:abc:", "did:plc:a%", "plc:abc", "did:plc:a b"]
        {
            assert!(!is_did(bad), "{bad}");
        }
    }

    #[test]
    fn collections_are_nsids_or_prefixes() {
        for ok in ["app.bsky.feed.post", "app.bsky.graph.*", "com.example.fooBar", "app.bsky.*"] {
            assert!(is_collection(ok), "{ok}");
        }
        for bad in ["*", "app.bsky.graph.fo*", "app", "app.bsky", "app..post", "app.bsky.feed.9post", ".*", "-a.b.c"] {
            assert!(!is_collection(bad), "{bad}");
        }
    }
}
