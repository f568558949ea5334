//! A single-pass scanner over the top level of one JSON object: it hands
//! each member's key and raw value text to the caller and checks only what a
//! stream reader must reject (a message that is truncated, unbalanced, not an
//! object, or has bytes after it), at close to memchr speed: strings are
//! skipped with memchr, nothing is decoded or allocated.

/// Why a message is not a JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// Not valid JSON; says what was wrong.
    #[error("not valid JSON: {0}")]
    NotJson(&'static str),
    /// Valid-looking JSON, but not an object.
    #[error("not a JSON object")]
    NotObject,
}

use ScanError::NotJson;

/// Deeper nesting is refused, as serde_json refuses it (its limit is 128).
const MAX_DEPTH: usize = 128;

/// Calls `visit(key, value)` for every top-level member of the object in
/// `text`, in order: `key` is the key's text between its quotes (escapes not
/// decoded), `value` the value's JSON text. Values are checked for balance
/// and complete strings, not fully validated.
pub fn members<'a>(text: &'a str, mut visit: impl FnMut(&'a str, &'a str)) -> Result<(), ScanError> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    match b.get(i) {
        Some(b'{') => {}
        None => return Err(NotJson("empty")),
        Some(_) => {
            let end = value_end(b, i)?;
            return if skip_ws(b, end) == b.len() {
                Err(ScanError::NotObject)
            } else {
                Err(NotJson("trailing characters"))
            };
        }
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return finish(b, i + 1);
    }
    loop {
        match b.get(i) {
            Some(b'"') => {}
            None => return Err(NotJson("truncated")),
            Some(_) => return Err(NotJson("expected a key")),
        }
        let key_end = string_end(b, i)?;
        let key = &text[i + 1..key_end - 1];
        i = skip_ws(b, key_end);
        match b.get(i) {
            Some(b':') => {}
            None => return Err(NotJson("truncated")),
            Some(_) => return Err(NotJson("expected ':'")),
        }
        i = skip_ws(b, i + 1);
        let value_end = value_end(b, i)?;
        visit(key, &text[i..value_end]);
        i = skip_ws(b, value_end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return finish(b, i + 1),
            None => return Err(NotJson("truncated")),
            Some(_) => return Err(NotJson("expected ',' or '}'")),
        }
    }
}

/// The text of a JSON string value without its quotes when it has no escape
/// (the common case), else `None` (decode it with serde_json).
pub fn plain_string(value: &str) -> Option<&str> {
    let inner = value.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\')).then_some(inner)
}

fn finish(b: &[u8], i: usize) -> Result<(), ScanError> {
    if skip_ws(b, i) == b.len() {
        Ok(())
    } else {
        Err(NotJson("trailing characters"))
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// `b[start]` is a quote; the index just after the closing one.
fn string_end(b: &[u8], start: usize) -> Result<usize, ScanError> {
    let mut i = start + 1;
    loop {
        let Some(off) = memchr::memchr2(b'"', b'\\', b.get(i..).unwrap_or_default()) else {
            return Err(NotJson("truncated string"));
        };
        let at = i + off;
        if b[at] == b'"' {
            return Ok(at + 1);
        }
        // An escape: the next byte is escaped, whatever it is.
        i = at + 2;
        if i > b.len() {
            return Err(NotJson("truncated string"));
        }
    }
}

/// The index just after the value starting at `i`.
fn value_end(b: &[u8], i: usize) -> Result<usize, ScanError> {
    match b.get(i) {
        None => Err(NotJson("truncated")),
        Some(b'"') => string_end(b, i),
        Some(b'{' | b'[') => container_end(b, i),
        Some(b'-' | b'0'..=b'9') => {
            let mut j = i + 1;
            while j < b.len() && matches!(b[j], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') {
                j += 1;
            }
            Ok(j)
        }
        Some(b't') => literal(b, i, b"true"),
        Some(b'f') => literal(b, i, b"false"),
        Some(b'n') => literal(b, i, b"null"),
        Some(_) => Err(NotJson("expected a value")),
    }
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Result<usize, ScanError> {
    match b.get(i..i + word.len()) {
        Some(w) if w == word => Ok(i + word.len()),
        Some(_) => Err(NotJson("expected a value")),
        None => Err(NotJson("truncated")),
    }
}

/// `b[start]` opens an object or array; the index just after its close,
/// checking that every bracket closes the one it should.
fn container_end(b: &[u8], start: usize) -> Result<usize, ScanError> {
    let mut closers = [0u8; MAX_DEPTH];
    let mut depth = 0;
    let mut i = start;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i = string_end(b, i)?;
                continue;
            }
            open @ (b'{' | b'[') => {
                if depth == MAX_DEPTH {
                    return Err(NotJson("nested too deeply"));
                }
                closers[depth] = if open == b'{' { b'}' } else { b']' };
                depth += 1;
            }
            close @ (b'}' | b']') => {
                if depth == 0 || closers[depth - 1] != close {
                    return Err(NotJson("unbalanced brackets"));
                }
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(NotJson("truncated"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> Result<Vec<(String, String)>, ScanError> {
        let mut out = Vec::new();
        members(text, |k, v| out.push((k.to_owned(), v.to_owned())))?;
        Ok(out)
    }

    #[test]
    fn members_come_in_order_with_their_raw_values() {
        let got = scan(r#" {"a":1, "b" : {"c":[1,{"d":"}"}]}, "e":"x\"y", "f":null,"g":-1.5e3,"h":true} "#).unwrap();
        let want = [
            ("a", "1"),
            ("b", r#"{"c":[1,{"d":"}"}]}"#),
            ("e", r#""x\"y""#),
            ("f", "null"),
            ("g", "-1.5e3"),
            ("h", "true"),
        ];
        assert_eq!(got, want.map(|(k, v)| (k.to_owned(), v.to_owned())));
        assert_eq!(scan("{}").unwrap(), vec![]);
    }

    #[test]
    fn broken_messages_are_refused() {
        for bad in [
            "",
            "   ",
            r#"{"a":1"#,
            r#"{"a":{"b":1}"#,
            r#"{"a":"unterminated}"#,
            r#"{"a":[1,2}"#,
            r#"{"a":1}}"#,
            r#"{"a":1} x"#,
            r#"{"a" 1}"#,
            r#"{a:1}"#,
            r#"{"a":}"#,
            r#"{"a":tru}"#,
            r#"{"a":1,}"#,
            "{\"a\":\"x\\",
        ] {
            assert!(matches!(scan(bad), Err(NotJson(_))), "{bad:?} gave {:?}", scan(bad));
        }
        for not_object in ["[1,2]", "\"s\"", "12", "null", " true "] {
            assert_eq!(scan(not_object), Err(ScanError::NotObject), "{not_object:?}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(scan(&deep), Err(NotJson("nested too deeply")));
    }

    #[test]
    fn it_agrees_with_serde_json_on_valid_objects() {
        for text in [
            r#"{"id":1,"id_str":"1","text":"h\u00e9 \\ \"q\"","user":{"id":2,"entities":{"urls":[]}},"n":[[],[{}]]}"#,
            r#"{"delete":{"status":{"id":1234,"id_str":"1234"}}}"#,
        ] {
            let value: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).unwrap();
            let got = scan(text).unwrap();
            assert_eq!(got.len(), value.len());
            for (k, v) in got {
                let parsed: serde_json::Value = serde_json::from_str(&v).unwrap();
                assert_eq!(value[&k], parsed, "{k}");
            }
        }
    }

    #[test]
    fn plain_strings_are_borrowed_and_escaped_ones_left_to_serde() {
        assert_eq!(plain_string(r#""123""#), Some("123"));
        assert_eq!(plain_string(r#""a\"b""#), None);
        assert_eq!(plain_string("123"), None);
    }
}
