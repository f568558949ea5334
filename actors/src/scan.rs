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

/// `bytes` as text when it is valid UTF-8: every message is checked once, so
/// the SIMD validator (several times std's speed on long messages) is used.
#[inline]
pub fn utf8(bytes: &[u8]) -> Option<&str> {
    simdutf8::basic::from_utf8(bytes).ok()
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
///
/// Works on 64-byte blocks as simdjson's first stage does: bit masks of the
/// quotes, backslashes and brackets of a block, the escaped bytes derived
/// from the backslash runs, the inside of strings as the prefix XOR of the
/// unescaped quotes; only the brackets outside strings are then visited one
/// by one. That is several times faster than a byte loop with a memchr per
/// string, on messages made of many short strings. Where the CPU has AVX2
/// and carry-less multiplication (checked once, at run time) the masks take
/// half the instructions and the prefix XOR one.
fn container_end(b: &[u8], start: usize) -> Result<usize, ScanError> {
    #[cfg(target_arch = "x86_64")]
    if wide_blocks() {
        // SAFETY: the CPU has both features (checked just above).
        return unsafe { container_end_avx2(b, start) };
    }
    container_end_with::<false>(b, start)
}

/// Whether this CPU has AVX2 and PCLMULQDQ; std caches the answer.
#[cfg(target_arch = "x86_64")]
#[inline]
fn wide_blocks() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("pclmulqdq")
}

/// [`container_end_with`] compiled for AVX2 and PCLMULQDQ.
///
/// # Safety
/// The CPU must have both features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,pclmulqdq")]
unsafe fn container_end_avx2(b: &[u8], start: usize) -> Result<usize, ScanError> {
    container_end_with::<true>(b, start)
}

/// The block loop of [`container_end`]; `WIDE` says whether the caller was
/// compiled with AVX2 and PCLMULQDQ (only then may it be true).
#[inline(always)]
fn container_end_with<const WIDE: bool>(b: &[u8], start: usize) -> Result<usize, ScanError> {
    let mut closers = [0u8; MAX_DEPTH];
    let mut depth = 0usize;
    // Carried between blocks: whether the next block's first byte is escaped
    // (1 or 0), and whether it starts inside a string (all ones or zero).
    let mut next_escaped = 0u64;
    let mut in_string = 0u64;
    let mut at = start;
    let mut tail = [b' '; 64];
    while at < b.len() {
        let block: &[u8; 64] = match b.get(at..at + 64) {
            Some(full) => full.try_into().unwrap_or(&tail),
            None => {
                // Spaces pad the last block: they are neither quotes nor brackets.
                tail = [b' '; 64];
                tail[..b.len() - at].copy_from_slice(&b[at..]);
                &tail
            }
        };
        let m = if WIDE { Masks::of_wide(block) } else { Masks::of(block) };
        let escaped = escaped_bytes(m.backslash, &mut next_escaped);
        let quotes = m.quote & !escaped;
        let inside = if WIDE { prefix_xor_clmul(quotes) } else { prefix_xor(quotes) } ^ in_string;
        in_string = ((inside as i64) >> 63) as u64;
        // Outside strings a backslash is never valid (and the escape masks
        // would let it hide the quote after it): it is visited with the
        // brackets, so that one after the container's end is left alone.
        let mut visit = (m.open | m.close | m.backslash) & !inside;
        while visit != 0 {
            let i = at + visit.trailing_zeros() as usize;
            visit &= visit - 1;
            match b[i] {
                b'\\' => return Err(NotJson("a backslash outside a string")),
                open @ (b'{' | b'[') => {
                    if depth == MAX_DEPTH {
                        return Err(NotJson("nested too deeply"));
                    }
                    // '{' + 2 is '}', '[' + 2 is ']'.
                    closers[depth] = open + 2;
                    depth += 1;
                }
                close => {
                    if depth == 0 || closers[depth - 1] != close {
                        return Err(NotJson("unbalanced brackets"));
                    }
                    depth -= 1;
                    if depth == 0 {
                        return Ok(i + 1);
                    }
                }
            }
        }
        at += 64;
    }
    Err(NotJson("truncated"))
}

/// One bit per byte of a 64-byte block.
struct Masks {
    quote: u64,
    backslash: u64,
    /// `{` and `[`.
    open: u64,
    /// `}` and `]`.
    close: u64,
}

impl Masks {
    /// Setting bit 0x20 folds `[` onto `{` and `]` onto `}`, and no other byte
    /// onto either, so two comparisons find all four brackets.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn of(block: &[u8; 64]) -> Masks {
        use std::arch::x86_64::*;
        let mut m = Masks { quote: 0, backslash: 0, open: 0, close: 0 };
        // SAFETY: SSE2 is part of the x86_64 baseline, and every unaligned
        // 16-byte load reads inside the 64-byte block.
        unsafe {
            let (quote, backslash) = (_mm_set1_epi8(b'"' as i8), _mm_set1_epi8(b'\\' as i8));
            let (open, close, fold) = (_mm_set1_epi8(b'{' as i8), _mm_set1_epi8(b'}' as i8), _mm_set1_epi8(0x20));
            for k in 0..4 {
                let v = _mm_loadu_si128(block.as_ptr().add(16 * k).cast::<__m128i>());
                let folded = _mm_or_si128(v, fold);
                let bits = |x: __m128i| (_mm_movemask_epi8(x) as u32 as u64 & 0xffff) << (16 * k);
                m.quote |= bits(_mm_cmpeq_epi8(v, quote));
                m.backslash |= bits(_mm_cmpeq_epi8(v, backslash));
                m.open |= bits(_mm_cmpeq_epi8(folded, open));
                m.close |= bits(_mm_cmpeq_epi8(folded, close));
            }
        }
        m
    }

    /// [`Masks::of`] with two 32-byte loads. Only called from code compiled
    /// with AVX2 (`container_end_avx2`), into which it is inlined.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn of_wide(block: &[u8; 64]) -> Masks {
        use std::arch::x86_64::*;
        let mut m = Masks { quote: 0, backslash: 0, open: 0, close: 0 };
        // SAFETY: only reached when the CPU has AVX2 (see `container_end`),
        // and both unaligned 32-byte loads read inside the 64-byte block.
        unsafe {
            let (quote, backslash) = (_mm256_set1_epi8(b'"' as i8), _mm256_set1_epi8(b'\\' as i8));
            let (open, close, fold) =
                (_mm256_set1_epi8(b'{' as i8), _mm256_set1_epi8(b'}' as i8), _mm256_set1_epi8(0x20));
            for k in 0..2 {
                let v = _mm256_loadu_si256(block.as_ptr().add(32 * k).cast::<__m256i>());
                let folded = _mm256_or_si256(v, fold);
                let bits = |x: __m256i| (_mm256_movemask_epi8(x) as u32 as u64) << (32 * k);
                m.quote |= bits(_mm256_cmpeq_epi8(v, quote));
                m.backslash |= bits(_mm256_cmpeq_epi8(v, backslash));
                m.open |= bits(_mm256_cmpeq_epi8(folded, open));
                m.close |= bits(_mm256_cmpeq_epi8(folded, close));
            }
        }
        m
    }

    #[cfg(not(target_arch = "x86_64"))]
    #[inline(always)]
    fn of_wide(block: &[u8; 64]) -> Masks {
        Masks::of(block)
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn of(block: &[u8; 64]) -> Masks {
        let mut m = Masks { quote: 0, backslash: 0, open: 0, close: 0 };
        for (i, &c) in block.iter().enumerate() {
            m.quote |= u64::from(c == b'"') << i;
            m.backslash |= u64::from(c == b'\\') << i;
            m.open |= u64::from(c | 0x20 == b'{') << i;
            m.close |= u64::from(c | 0x20 == b'}') << i;
        }
        m
    }
}

/// The bytes of a block that follow an escaping backslash: in a run of
/// backslashes every second one escapes the next byte. Found for all runs at
/// once with one subtraction (simdjson's escape scanner); `next_escaped`
/// carries a run that escapes the first byte of the next block.
#[inline(always)]
fn escaped_bytes(backslash: u64, next_escaped: &mut u64) -> u64 {
    const ODD_BITS: u64 = 0xAAAA_AAAA_AAAA_AAAA;
    if backslash == 0 {
        return std::mem::take(next_escaped);
    }
    let potential = backslash & !*next_escaped;
    let codes = (((potential << 1) | ODD_BITS).wrapping_sub(potential)) ^ ODD_BITS;
    let escaped = codes ^ (backslash | *next_escaped);
    *next_escaped = (codes & backslash) >> 63;
    escaped
}

/// Bit i is the XOR of bits 0..=i: set from an opening quote up to (not
/// including) its closing quote.
#[inline(always)]
fn prefix_xor(mut x: u64) -> u64 {
    for shift in [1, 2, 4, 8, 16, 32] {
        x ^= x << shift;
    }
    x
}

/// [`prefix_xor`] as one carry-less multiplication by all ones. Only called
/// from code compiled with PCLMULQDQ (`container_end_avx2`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefix_xor_clmul(x: u64) -> u64 {
    use std::arch::x86_64::*;
    // SAFETY: only reached when the CPU has PCLMULQDQ (see `container_end`).
    unsafe {
        let product = _mm_clmulepi64_si128(_mm_set_epi64x(0, x as i64), _mm_set1_epi8(-1), 0);
        _mm_cvtsi128_si64(product) as u64
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn prefix_xor_clmul(x: u64) -> u64 {
    prefix_xor(x)
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

    /// The byte loop the block scanner replaced: the reference it must agree with.
    fn reference_end(b: &[u8], start: usize) -> Result<usize, ScanError> {
        let mut closers = Vec::new();
        let mut i = start;
        while i < b.len() {
            match b[i] {
                b'"' => {
                    i = string_end(b, i)?;
                    continue;
                }
                b'\\' => return Err(NotJson("a backslash outside a string")),
                b'{' => closers.push(b'}'),
                b'[' => closers.push(b']'),
                close @ (b'}' | b']') => {
                    if closers.pop() != Some(close) {
                        return Err(NotJson("unbalanced brackets"));
                    }
                    if closers.is_empty() {
                        return Ok(i + 1);
                    }
                }
                _ => {}
            }
            if closers.len() > MAX_DEPTH {
                return Err(NotJson("nested too deeply"));
            }
            i += 1;
        }
        Err(NotJson("truncated"))
    }

    /// A random container whose strings hold quotes, brackets and runs of
    /// backslashes, so that strings and escapes straddle block boundaries.
    fn random_container(rng: &mut fastrand::Rng, out: &mut String, depth: usize) {
        let (open, close) = if rng.bool() { ('{', '}') } else { ('[', ']') };
        out.push(open);
        for n in 0..rng.usize(0..6) {
            if n > 0 {
                out.push(',');
            }
            match rng.u8(0..4) {
                0 if depth < 6 => random_container(rng, out, depth + 1),
                1 => out.push_str(&"7".repeat(rng.usize(1..90))),
                _ => {
                    out.push('"');
                    for _ in 0..rng.usize(0..80) {
                        match rng.u8(0..8) {
                            0 => out.push_str(&"\\\\".repeat(rng.usize(1..40))),
                            1 => out.push_str("\\\""),
                            2 => out.push_str("{[]}"),
                            _ => out.push('a'),
                        }
                    }
                    out.push('"');
                }
            }
        }
        out.push(close);
    }

    /// Both block widths this machine can run: the SSE2 one always, the
    /// AVX2 one where the CPU has it.
    type Scanner = fn(&[u8], usize) -> Result<usize, ScanError>;

    fn scanners() -> Vec<(&'static str, Scanner)> {
        let mut all: Vec<(&'static str, Scanner)> = vec![("sse2", container_end_with::<false>)];
        #[cfg(target_arch = "x86_64")]
        if wide_blocks() {
            // SAFETY: the CPU has AVX2 and PCLMULQDQ (checked just above).
            all.push(("avx2", |b, start| unsafe { container_end_avx2(b, start) }));
        }
        all
    }

    #[test]
    fn the_block_scanner_agrees_with_the_byte_loop_at_every_cut() {
        for (name, container_end) in scanners() {
            let mut rng = fastrand::Rng::with_seed(9);
            for _ in 0..400 {
                let mut text = String::new();
                random_container(&mut rng, &mut text, 0);
                let b = text.as_bytes();
                assert_eq!(container_end(b, 0), Ok(b.len()), "{name}: {text}");
                // Every truncation, and a stray quote or bracket anywhere, gives
                // the same answer as the byte loop.
                for cut in 1..b.len() {
                    let (got, want) = (container_end(&b[..cut], 0), reference_end(&b[..cut], 0));
                    assert_eq!(got.ok(), want.ok(), "{name}: {}: {got:?} against {want:?}", &text[..cut]);
                }
                for _ in 0..20 {
                    let mut bad = b.to_vec();
                    let at = rng.usize(0..bad.len());
                    bad.insert(at, *b"\"{}[]".get(rng.usize(0..5)).unwrap_or(&b'"'));
                    let (got, want) = (container_end(&bad, 0), reference_end(&bad, 0));
                    assert_eq!(
                        got.ok(),
                        want.ok(),
                        "{name}: {}: {got:?} against {want:?}",
                        String::from_utf8_lossy(&bad)
                    );
                }
            }
            let deep = "[".repeat(129) + &"]".repeat(129);
            assert_eq!(container_end(deep.as_bytes(), 0), Err(NotJson("nested too deeply")), "{name}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_carry_less_prefix_xor_is_the_shifted_one() {
        if !wide_blocks() {
            return;
        }
        let mut rng = fastrand::Rng::with_seed(3);
        for x in [0, 1, u64::MAX, 1 << 63].into_iter().chain((0..1000).map(|_| rng.u64(..))) {
            // SAFETY: the CPU has PCLMULQDQ (checked above).
            let wide = unsafe { clmul_for_test(x) };
            assert_eq!(wide, prefix_xor(x), "{x:#x}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "pclmulqdq")]
    unsafe fn clmul_for_test(x: u64) -> u64 {
        prefix_xor_clmul(x)
    }
}
