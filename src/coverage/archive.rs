//! Finding the files a `file` sink's path template can have produced: the
//! template becomes one pattern per path component (`{source}` and every
//! strftime field a wildcard), walked directory by directory, with the size
//! rotations (`2026-11-22.1.jsonl`, `log.1`) matched beside each file.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use chrono::format::{Item, StrftimeItems};

use streamherd_actors::sinks::file::{sanitise_source, SOURCE_PLACEHOLDER};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// A numeric strftime field: digits, with the padding and sign chrono may write.
    Digits,
    /// `{source}` or a textual strftime field (month names, `%Z`, `%.3f`, ...).
    Any,
}

/// One path component of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Component(Vec<Token>);

impl Component {
    fn literal(&self) -> Option<&str> {
        match self.0.as_slice() {
            [Token::Literal(s)] => Some(s),
            [] => Some(""),
            _ => None,
        }
    }

    fn matches(&self, name: &str) -> bool {
        match_tokens(&self.0, name)
    }
}

fn match_tokens(tokens: &[Token], s: &str) -> bool {
    let Some((first, rest)) = tokens.split_first() else { return s.is_empty() };
    match first {
        Token::Literal(l) => s.strip_prefix(l.as_str()).is_some_and(|r| match_tokens(rest, r)),
        Token::Digits => {
            let run = s.bytes().take_while(|b| b.is_ascii_digit() || matches!(b, b' ' | b'-' | b'+')).count();
            (1..=run).rev().any(|k| match_tokens(rest, &s[k..]))
        }
        // Wildcards match at least one character: neither a sanitised source
        // nor a formatted field is ever empty.
        Token::Any => {
            s.char_indices().skip(1).map(|(i, _)| i).chain([s.len()]).any(|k| k > 0 && match_tokens(rest, &s[k..]))
        }
    }
}

/// A `path` template turned into something to walk.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// Where the walk starts: the literal leading directories.
    root: PathBuf,
    /// The components after `root`, the last one naming files.
    components: Vec<Component>,
}

/// A file a pattern matched.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    /// The path the template resolves to (rotation 0).
    pub base: PathBuf,
    /// The rotation number (0 = `base` itself).
    pub rotation: u32,
    /// The file.
    pub path: PathBuf,
}

impl Pattern {
    /// `template` as the file sink reads it; relative templates are resolved
    /// against `cwd`, as the service resolves them against its own working
    /// directory. With `source`, `{source}` is that source's sanitised name
    /// instead of a wildcard.
    pub fn parse(template: &str, source: Option<&str>, cwd: &Path) -> Result<Pattern, String> {
        let mut tokens = Vec::new();
        // The time fields are split off before `{source}` is looked at, as the
        // sink expands them first: a `%` inside `{source}` cannot occur here.
        for (i, part) in template.split(SOURCE_PLACEHOLDER).enumerate() {
            if i > 0 {
                tokens.push(match source {
                    Some(name) => Token::Literal(sanitise_source(name)),
                    None => Token::Any,
                });
            }
            if part.contains('{') {
                return Err(format!("`{template}` has a placeholder other than {SOURCE_PLACEHOLDER}"));
            }
            let items = StrftimeItems::new(part)
                .parse_to_owned()
                .map_err(|_| format!("`{template}` has an unknown or incomplete % field"))?;
            for item in items {
                tokens.push(match item {
                    Item::Literal(s) | Item::Space(s) => Token::Literal(s.to_owned()),
                    Item::OwnedLiteral(s) | Item::OwnedSpace(s) => Token::Literal(s.into()),
                    Item::Numeric(..) => Token::Digits,
                    Item::Fixed(..) => Token::Any,
                    Item::Error => return Err(format!("`{template}` has an unknown or incomplete % field")),
                });
            }
        }
        let mut components = vec![Component(Vec::new())];
        for token in tokens {
            match token {
                Token::Literal(text) => {
                    for (j, piece) in text.split('/').enumerate() {
                        if j > 0 {
                            components.push(Component(Vec::new()));
                        }
                        if !piece.is_empty() {
                            push_token(components.last_mut(), Token::Literal(piece.to_owned()));
                        }
                    }
                }
                other => push_token(components.last_mut(), other),
            }
        }
        let absolute = template.starts_with('/');
        // `a//b` and a trailing `/` name the same files as `a/b`.
        let mut components: Vec<Component> = components.into_iter().filter(|c| !c.0.is_empty()).collect();
        if components.is_empty() {
            return Err(format!("`{template}` names no file"));
        }
        let mut root = if absolute { PathBuf::from("/") } else { cwd.to_path_buf() };
        while components.len() > 1 {
            match components[0].literal() {
                Some(dir) => {
                    root.push(dir);
                    components.remove(0);
                }
                None => break,
            }
        }
        Ok(Pattern { root, components })
    }

    /// Every regular file under the pattern, rotations included, sorted by
    /// base path and rotation. Directories that cannot be read are reported
    /// in `warnings` and skipped.
    pub fn find(&self, warnings: &mut Vec<String>) -> Vec<Found> {
        let mut out = Vec::new();
        walk(&self.root, &self.components, &mut out, warnings);
        out.sort();
        out
    }
}

fn push_token(component: Option<&mut Component>, token: Token) {
    let Some(component) = component else { return };
    if let (Some(Token::Literal(prev)), Token::Literal(next)) = (component.0.last_mut(), &token) {
        prev.push_str(next);
        return;
    }
    component.0.push(token);
}

fn walk(dir: &Path, components: &[Component], out: &mut Vec<Found>, warnings: &mut Vec<String>) {
    let Some((first, rest)) = components.split_first() else { return };
    if !rest.is_empty() {
        if let Some(name) = first.literal() {
            let next = dir.join(name);
            if next.is_dir() {
                walk(&next, rest, out, warnings);
            }
            return;
        }
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            warnings.push(format!("cannot read directory {}: {e}", dir.display()));
            return;
        }
    };
    let mut names: Vec<String> = entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        if rest.is_empty() {
            let Some((base_name, rotation)) = match_file(first, &name) else { continue };
            if fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                out.push(Found { base: dir.join(base_name), rotation, path });
            }
        } else if first.matches(&name) && path.is_dir() {
            walk(&path, rest, out, warnings);
        }
    }
}

/// Whether `name` is a file of `component` or one of its rotations
/// (`stem.N.ext`, or `name.N` for a name without extension; the spelling
/// actors/src/sinks/file.rs `numbered` writes), as (base name, rotation).
fn match_file(component: &Component, name: &str) -> Option<(String, u32)> {
    if component.matches(name) {
        return Some((name.to_owned(), 0));
    }
    let (front, last) = name.rsplit_once('.')?;
    // `stem.N.ext`: the base is `stem.ext`, whose extension is `last`.
    if let Some((stem, digits)) = front.rsplit_once('.') {
        if let Some(n) = rotation_number(digits) {
            let base = format!("{stem}.{last}");
            if !stem.is_empty() && component.matches(&base) {
                return Some((base, n));
            }
        }
    }
    // `name.N` for a base without an extension (a dot only at the start).
    let n = rotation_number(last)?;
    let has_extension = front.rfind('.').is_some_and(|dot| dot > 0);
    (!front.is_empty() && !has_extension && component.matches(front)).then(|| (front.to_owned(), n))
}

/// `N` as `numbered` spells it: digits without leading zeros, at least 1.
fn rotation_number(digits: &str) -> Option<u32> {
    let n: u32 = digits.parse().ok()?;
    (n > 0 && n.to_string() == digits).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(template: &str) -> Pattern {
        Pattern::parse(template, None, Path::new("/cwd")).expect("valid template")
    }

    #[test]
    fn templates_become_components() {
        let p = pattern("data/{source}/%Y-%m-%d.jsonl");
        assert_eq!(p.root, PathBuf::from("/cwd/data"));
        assert_eq!(p.components.len(), 2);
        assert!(p.components[0].matches("election"));
        assert!(p.components[1].matches("2026-11-22.jsonl"));
        assert!(!p.components[1].matches("2026-11-22.txt"));
        assert!(!p.components[1].matches("notes.jsonl"));

        let abs = pattern("/srv/a/%Y/%m/{source}-%H.log");
        assert_eq!(abs.root, PathBuf::from("/srv/a"));
        assert!(abs.components[2].matches("bsky-07.log"));
        // `%D` expands to `%m/%d/%y`: three components.
        assert_eq!(pattern("x/%D.jsonl").components.len(), 3);

        let one = Pattern::parse("data/{source}/%F.jsonl", Some("a/b"), Path::new("/cwd")).expect("valid");
        assert_eq!(one.root, PathBuf::from("/cwd/data/a_b"));
        assert!(Pattern::parse("x/{kind}.jsonl", None, Path::new("/")).is_err());
        assert!(Pattern::parse("x/%Q.jsonl", None, Path::new("/")).is_err());
    }

    #[test]
    fn rotations_match_beside_their_base() {
        let p = pattern("{source}/%Y-%m-%d.jsonl");
        let last = &p.components[1];
        assert_eq!(match_file(last, "2026-11-22.jsonl"), Some(("2026-11-22.jsonl".into(), 0)));
        assert_eq!(match_file(last, "2026-11-22.3.jsonl"), Some(("2026-11-22.jsonl".into(), 3)));
        assert_eq!(match_file(last, "2026-11-22.03.jsonl"), None);
        assert_eq!(match_file(last, "2026-11-22.0.jsonl"), None);
        assert_eq!(match_file(last, "2026-11-22.jsonl.1"), None);

        let bare = pattern("logs/{source}");
        assert_eq!(match_file(&bare.components[0], "x.2"), Some(("x.2".into(), 0)));
        let no_ext = pattern("logs/%Y%m%d");
        assert_eq!(match_file(&no_ext.components[0], "20261122.12"), Some(("20261122".into(), 12)));
    }

    #[test]
    fn sanitising_matches_the_file_sink() {
        assert_eq!(sanitise_source("../../etc/pass\\wd"), "______etc_pass_wd");
        assert_eq!(sanitise_source(".."), "__");
        assert_eq!(sanitise_source(""), "_");
        assert_eq!(sanitise_source("."), "_");
        assert_eq!(sanitise_source("a%Yb"), "a%Yb");
    }
}
