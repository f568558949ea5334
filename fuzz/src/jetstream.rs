//! `jetstream`: the Jetstream event decoder and the zstd frames of
//! `compress = true`, against the scanner's byte-loop reference.

use std::cell::RefCell;
use std::collections::HashMap;

use streamherd_actors::event::EventKind;
use streamherd_actors::jetstream::decode::{decode, DecodeError, Decoded, Unzstd, ZSTD_DICTIONARY};
use streamherd_actors::jetstream::kinds::{ACCOUNT, COMMIT, IDENTITY};

use crate::input::{show, Input};
use crate::json_ref::{self, Member};
use crate::mastodon::assert_one_line;

/// Decompression limits an input chooses from with its first byte.
const LIMITS: &[usize] = &[0, 1, 7, 64, 300, 1000, 4096, 1 << 16, 1 << 20];

thread_local! {
    /// One decompressor per limit: loading the dictionary costs more than a frame.
    static UNZSTD: RefCell<HashMap<usize, Unzstd>> = RefCell::new(HashMap::new());
    /// Compressors with the dictionary, writing the content size and not.
    static ZSTD: RefCell<Option<(zstd::bulk::Compressor<'static>, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
}

/// Input layout: `[limit][body]`; the body is an event's JSON, a zstd frame,
/// and the payload of frames compressed here, all at once. A decoded event
/// is what its top-level members say, and the same but for `time_us` in a
/// copy with another `time_us` (the overlap key too); a decompressor never
/// returns more than its limit, and gives back what fits, exactly.
pub fn jetstream(data: &[u8]) {
    let mut input = Input::new(data);
    let max = LIMITS[usize::from(input.byte()) % LIMITS.len()];
    let body = input.rest();

    check_decode(body);

    // Raw bytes as a frame: whatever they are, never more than the limit.
    if let Ok(out) = unzstd(max, body) {
        assert!(out.len() <= max, "a frame decompressed to {} bytes, limit {max}", out.len());
    }
    // The body compressed with Jetstream's dictionary, with and without the
    // content size in the header: back exactly when it fits, TooLarge when not.
    for frame in compressed(body) {
        let got = unzstd(max, &frame);
        if body.len() <= max {
            assert_eq!(got.as_deref(), Ok(body), "round trip through zstd, limit {max}");
        } else {
            assert_eq!(got, Err(DecodeError::TooLarge(max)), "{} bytes through a limit of {max}", body.len());
        }
    }
}

fn check_decode(body: &[u8]) {
    let got = decode(body);
    let Ok(text) = std::str::from_utf8(body) else {
        assert!(got.is_err(), "invalid UTF-8 decoded: {got:?}");
        return;
    };
    let (members, verdict) = json_ref::members(body);
    let d = match (got, verdict) {
        (Ok(d), Ok(())) => d,
        (Err(e), Err(_)) => {
            assert_one_line(&e);
            return;
        }
        (got, want) => panic!("decode gave {got:?}, the scanner's rules {want:?}, for {}", show(body, 400)),
    };
    assert_eq!(d, expected(text, &members, d.key), "decoded fields of {}", show(body, 400));

    // Another instance sends the same event with its own time_us: same key.
    let Some(last) = members.iter().rev().find(|m| &text[m.key.clone()] == "time_us") else { return };
    if d.kind == EventKind::UNKNOWN {
        return;
    }
    let other = d.time_us.map_or(1, |t| t ^ 0x2a);
    let copy = format!("{}{other}{}", &text[..last.value.start], &text[last.value.end..]);
    match decode(copy.as_bytes()) {
        Ok(c) => {
            assert_eq!(c.time_us, Some(other), "time_us of {copy}");
            assert_eq!(Decoded { time_us: d.time_us, ..c }, d, "another time_us changed the event: {copy}");
        }
        Err(e) => panic!("a copy with another time_us does not decode ({e}): {copy}"),
    }
}

/// The fields the top-level members say, with the key given (it is a hash).
fn expected(text: &str, members: &[Member], key: u64) -> Decoded {
    let last = |name: &str| members.iter().rev().find(|m| &text[m.key.clone()] == name).map(|m| &text[m.value.clone()]);
    let did = last("did").and_then(string);
    let time_us = last("time_us").and_then(|v| v.parse::<u64>().ok());
    let kind = last("kind").and_then(string);
    let (kind, id) = match (kind.as_deref(), &did) {
        (Some("commit"), Some(did)) => {
            // The commit's own members, as far as they scan.
            let commit = last("commit").unwrap_or("");
            let (inner, _) = json_ref::members(commit.as_bytes());
            let field = |name: &str| {
                inner
                    .iter()
                    .rev()
                    .find(|m| &commit[m.key.clone()] == name)
                    .and_then(|m| string(&commit[m.value.clone()]))
            };
            let id = match (field("collection"), field("rkey")) {
                (Some(col), Some(rkey)) => Some(format!("at://{did}/{col}/{rkey}").into_boxed_str()),
                _ => None,
            };
            (COMMIT, id)
        }
        (Some("identity"), Some(did)) => (IDENTITY, Some(did.clone())),
        (Some("account"), Some(did)) => (ACCOUNT, Some(did.clone())),
        _ => (EventKind::UNKNOWN, None),
    };
    Decoded { kind, id, did, time_us, key }
}

/// A JSON string's text: as written when it has no escape, else decoded.
fn string(raw: &str) -> Option<Box<str>> {
    match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Some(inner.into()),
        _ => json_ref::string_value(raw).map(String::into_boxed_str),
    }
}

fn unzstd(max: usize, frame: &[u8]) -> Result<Vec<u8>, DecodeError> {
    UNZSTD.with(|cache| {
        let mut cache = cache.borrow_mut();
        let u = match cache.entry(max) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => match Unzstd::new(max) {
                Ok(u) => e.insert(u),
                Err(err) => panic!("Jetstream's dictionary does not load: {err}"),
            },
        };
        u.frame(frame)
    })
}

/// `payload` compressed with the dictionary: with the content size, without.
pub(crate) fn compressed(payload: &[u8]) -> Vec<Vec<u8>> {
    ZSTD.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.is_none() {
            *slot = Some(compressors());
        }
        let Some((sized, unsized_)) = slot.as_mut() else { return Vec::new() };
        [sized, unsized_]
            .into_iter()
            .map(|c| match c.compress(payload) {
                Ok(frame) => frame,
                Err(e) => panic!("zstd does not compress {} bytes: {e}", payload.len()),
            })
            .collect()
    })
}

fn compressors() -> (zstd::bulk::Compressor<'static>, zstd::bulk::Compressor<'static>) {
    let make = || match zstd::bulk::Compressor::with_dictionary(1, ZSTD_DICTIONARY) {
        Ok(c) => c,
        Err(e) => panic!("Jetstream's dictionary does not load into a compressor: {e}"),
    };
    let sized = make();
    let mut unsized_ = make();
    if let Err(e) = unsized_.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(false)) {
        panic!("zstd refuses to leave out the content size: {e}");
    }
    (sized, unsized_)
}
