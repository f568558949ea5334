//! The rules `streamherd_actors::scan::members` documents, read one byte at
//! a time: the slow, obvious reference its SIMD block scanner must agree with.

use std::ops::Range;

/// Why the reference refuses a text (the two `ScanError` variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not JSON as the scanner reads it.
    NotJson,
    /// A complete value, but not an object.
    NotObject,
}

/// One member: the key between its quotes (escapes kept) and the value's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub key: Range<usize>,
    pub value: Range<usize>,
}

/// The scanner's depth limit.
const MAX_DEPTH: usize = 128;

/// The members of the object in `b`, in order, and the verdict. Members
/// before an error are kept: the scanner has visited them by then.
pub(crate) fn members(b: &[u8]) -> (Vec<Member>, Result<(), Refused>) {
    let mut out = Vec::new();
    let verdict = walk(b, &mut out);
    (out, verdict)
}

fn walk(b: &[u8], out: &mut Vec<Member>) -> Result<(), Refused> {
    let mut i = ws(b, 0);
    match b.get(i) {
        Some(b'{') => {}
        None => return Err(Refused::NotJson),
        Some(_) => {
            let end = value_end(b, i)?;
            return if ws(b, end) == b.len() { Err(Refused::NotObject) } else { Err(Refused::NotJson) };
        }
    }
    i = ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return end_of_text(b, i + 1);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return Err(Refused::NotJson);
        }
        let key_end = string_end(b, i)?;
        let key = i + 1..key_end - 1;
        i = ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return Err(Refused::NotJson);
        }
        i = ws(b, i + 1);
        let end = value_end(b, i)?;
        out.push(Member { key, value: i..end });
        i = ws(b, end);
        match b.get(i) {
            Some(b',') => i = ws(b, i + 1),
            Some(b'}') => return end_of_text(b, i + 1),
            _ => return Err(Refused::NotJson),
        }
    }
}

fn end_of_text(b: &[u8], i: usize) -> Result<(), Refused> {
    if ws(b, i) == b.len() {
        Ok(())
    } else {
        Err(Refused::NotJson)
    }
}

fn ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// `b[start]` is a quote: the index after the closing one. A backslash
/// escapes the next byte, whatever it is; nothing else is checked.
fn string_end(b: &[u8], start: usize) -> Result<usize, Refused> {
    let mut i = start + 1;
    loop {
        match b.get(i) {
            None => return Err(Refused::NotJson),
            Some(b'"') => return Ok(i + 1),
            Some(b'\\') => {
                if i + 1 >= b.len() {
                    return Err(Refused::NotJson);
                }
                i += 2;
            }
            Some(_) => i += 1,
        }
    }
}

fn value_end(b: &[u8], i: usize) -> Result<usize, Refused> {
    match b.get(i) {
        Some(b'"') => string_end(b, i),
        Some(b'{' | b'[') => container_end(b, i),
        Some(b'-' | b'0'..=b'9') => {
            let mut j = i + 1;
            while matches!(b.get(j), Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')) {
                j += 1;
            }
            Ok(j)
        }
        Some(b't') => literal(b, i, b"true"),
        Some(b'f') => literal(b, i, b"false"),
        Some(b'n') => literal(b, i, b"null"),
        _ => Err(Refused::NotJson),
    }
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Result<usize, Refused> {
    if b.get(i..i + word.len()) == Some(word) {
        Ok(i + word.len())
    } else {
        Err(Refused::NotJson)
    }
}

/// `b[start]` opens a container: the index after its close. Outside strings
/// a backslash is an error; every bracket must close the one it should.
fn container_end(b: &[u8], start: usize) -> Result<usize, Refused> {
    let mut closers: Vec<u8> = Vec::new();
    let mut i = start;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i = string_end(b, i)?;
                continue;
            }
            b'\\' => return Err(Refused::NotJson),
            b'{' | b'[' => {
                if closers.len() == MAX_DEPTH {
                    return Err(Refused::NotJson);
                }
                closers.push(if b[i] == b'{' { b'}' } else { b']' });
            }
            close @ (b'}' | b']') => {
                if closers.pop() != Some(close) {
                    return Err(Refused::NotJson);
                }
                if closers.is_empty() {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(Refused::NotJson)
}

/// The value of a JSON string token (`"..."`) with escapes decoded, when it
/// is one valid JSON string.
pub(crate) fn string_value(raw: &str) -> Option<String> {
    if raw.starts_with('"') {
        serde_json::from_str::<String>(raw).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Result<Vec<(&str, &str)>, Refused> {
        let (m, verdict) = members(text.as_bytes());
        verdict.map(|()| m.into_iter().map(|m| (&text[m.key], &text[m.value])).collect())
    }

    #[test]
    fn the_documented_rules() {
        assert_eq!(keys(r#" {"a":1, "b" : {"c":[1,{"d":"}"}]}, "e":"x\"y"} "#).map(|v| v.len()), Ok(3));
        assert_eq!(keys("{}"), Ok(vec![]));
        for bad in ["", "{", r#"{"a":1,}"#, r#"{"a":tru}"#, r#"{"a":1} x"#, r#"{"a":[1\]}"#, r#"{"a":[}"#] {
            assert_eq!(keys(bad), Err(Refused::NotJson), "{bad}");
        }
        for not_object in ["[1]", " 12 ", "\"s\"", "null"] {
            assert_eq!(keys(not_object), Err(Refused::NotObject), "{not_object}");
        }
        // Lenient inside values: bad numbers and escapes pass, as documented.
        assert!(keys(r#"{"a":[1 2 -],"b":"\x","c":-}"#).is_ok());
        let deep = |n: usize| format!("{{\"a\":{}{}}}", "[".repeat(n), "]".repeat(n));
        assert!(keys(&deep(128)).is_ok());
        assert_eq!(keys(&deep(129)), Err(Refused::NotJson));
    }
}
