//! `control_body`: the body of `POST /sources/{name}/follows`, read as the
//! route reads it, against the follows rules over serde_json's reading.

use std::collections::HashSet;

use actix_web::ResponseError;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use streamherd::control::{parse_follows_body, MAX_IDS_PER_REQUEST};

use crate::input::show;
use crate::known::{self, Known};
use crate::mastodon::assert_one_line;

/// The whole input is the request body. Accepted: an object of `add` and
/// `remove` lists of integers or strings, each key once, ids as their text,
/// something to change, nothing both added and removed. Refused: a 400 with
/// a one-line message.
pub fn control_body(data: &[u8]) {
    let got = parse_follows_body(data);
    let want = reference(data);
    match (got, want) {
        (Ok(m), Some(Ok((add, remove)))) => {
            assert_eq!((m.add, m.remove), (add, remove), "ids of {}", show(data, 300));
        }
        (Err(e), Some(Err(()))) | (Err(e), None) => {
            assert_eq!(e.status_code().as_u16(), 400, "a body is refused as a bad request: {e}");
            let text = e.to_string();
            let both = text.starts_with("id ") && text.ends_with(" is both in `add` and in `remove`");
            if !known::tolerated(Known::ControlEchoesNewlines) {
                assert_one_line(&text);
            } else if !both {
                assert_one_line(&without_quoted(&text));
            }
        }
        (got, want) => panic!("parse_follows_body gave {got:?}, the rules {want:?}, for {}", show(data, 300)),
    }
}

/// The body rules over serde_json's reading: `None` when it is not JSON at
/// all (any refusal is right then), else the ids or a refusal.
#[allow(clippy::type_complexity)]
fn reference(data: &[u8]) -> Option<Result<(Vec<String>, Vec<String>), ()>> {
    let body = match serde_json::from_slice::<Value>(data).ok()? {
        Value::Object(body) => {
            let Ok(Keys(keys)) = serde_json::from_slice::<Keys>(data) else { return Some(Err(())) };
            let mut seen = HashSet::new();
            if keys.iter().any(|k| !matches!(k.as_str(), "add" | "remove") || !seen.insert(k.clone())) {
                return Some(Err(()));
            }
            body
        }
        // serde's derive reads a struct from an array too, field by field.
        Value::Array(items) if items.len() <= 2 && known::tolerated(Known::ControlAcceptsArrays) => {
            ["add", "remove"].into_iter().zip(items).map(|(k, v)| (k.to_owned(), v)).collect()
        }
        _ => return Some(Err(())),
    };
    let ids = |key: &str| -> Result<Vec<String>, ()> {
        match body.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) if n.is_u64() || n.is_i64() => Ok(n.to_string()),
                    _ => Err(()),
                })
                .collect(),
            Some(_) => Err(()),
        }
    };
    let verdict = (|| {
        let (add, remove) = (ids("add")?, ids("remove")?);
        let removing: HashSet<&String> = remove.iter().collect();
        let nothing = add.is_empty() && remove.is_empty();
        if nothing || add.len() + remove.len() > MAX_IDS_PER_REQUEST || add.iter().any(|id| removing.contains(id)) {
            return Err(());
        }
        Ok((add, remove))
    })();
    Some(verdict)
}

/// `text` without what lies between its first and last backtick: field
/// names are quoted there as given, backticks and newlines included.
pub(crate) fn without_quoted(text: &str) -> String {
    match (text.find('`'), text.rfind('`')) {
        (Some(a), Some(b)) if a < b => format!("{}``{}", &text[..a], &text[b + 1..]),
        _ => text.to_owned(),
    }
}

/// An object's keys in the order written, duplicates kept.
struct Keys(Vec<String>);

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    keys.push(key);
                }
                Ok(Keys(keys))
            }
        }
        d.deserialize_map(V)
    }
}
