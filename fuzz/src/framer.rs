//! `framer_lines` and `framer_length`: the Twitter body framer in both
//! modes, against a whole-input model of its rules and well-formed streams.

use bytes::Bytes;
use streamherd_actors::twitter::framing::{Delimiting, Frame, Framer};

use crate::input::{chunkings, chunks, show, Input};

/// Byte that separates messages when the input is read as a message list.
pub(crate) const MESSAGE_SEPARATOR: u8 = 0xFE;

/// Lines mode (`\r\n` after each message).
pub fn framer_lines(data: &[u8]) {
    check(Delimiting::Lines, data);
}

/// `delimited=length` mode (`<len>\r\n<body>`, `len` counting the body's CRLF).
pub fn framer_length(data: &[u8]) {
    check(Delimiting::Length, data);
}

/// Input layout: `[max][seed: 4][body]`. The body raw, and read as messages
/// framed as Twitter frames them: pushed whole, the frames are the model's
/// (exactly those messages); pushed in chunks, the same but that a line over
/// the limit may be reported as `Runaway` as soon as it passes the limit.
/// No frame breaks the limit; once drained, at most limit + 2 bytes are held.
fn check(mode: Delimiting, data: &[u8]) {
    let mut input = Input::new(data);
    let max = max_message(input.byte());
    let seed = input.u32();
    let body = input.rest();

    // (a) The body as raw bytes: the model's frames, whatever the chunking.
    let want = model(mode, max, body);
    for cuts in chunkings(body.len(), seed) {
        let got = run(mode, max, body, &cuts);
        let ok = if cuts.is_empty() { got == want } else { same_frames(&got, &want, max) };
        assert!(ok, "{mode:?} max {max}, raw body {}, cuts {cuts:?}:\n got {got:?}\nwant {want:?}", show(body, 300));
    }

    // (b) The body as a list of messages, framed as the server frames them:
    // the frames are exactly those messages, in order.
    let max = if mode == Delimiting::Length { max.max(16) } else { max };
    let (stream, want) = well_formed(mode, max, body);
    for cuts in chunkings(stream.len(), seed.rotate_left(7)) {
        let got = run(mode, max, &stream, &cuts);
        let ok = if cuts.is_empty() { got == want } else { same_frames(&got, &want, max) };
        assert!(ok, "{mode:?} max {max}, stream {}, cuts {cuts:?}:\n got {got:?}\nwant {want:?}", show(&stream, 300));
    }
}

/// `got` (from chunks) is `want` (the whole-input frames), but that a line
/// over the limit may have been reported early: `Runaway` with the bytes
/// held then, past the limit plus CRLF and at most the line and its CR.
fn same_frames(got: &[Frame], want: &[Frame], max: usize) -> bool {
    let max = max.max(1);
    got.len() == want.len()
        && got.iter().zip(want).all(|(g, w)| match (g, w) {
            (Frame::Runaway { len: r }, Frame::Oversized { len: l }) => *r > max + 2 && *r <= l + 1,
            (Frame::Runaway { len: r }, Frame::Runaway { len: l }) => *r > max + 2 && r <= l,
            _ => g == w,
        })
}

/// Small limits most of the time, so oversized paths run often.
fn max_message(b: u8) -> usize {
    match b {
        0..=191 => usize::from(b % 64),
        192..=247 => 64 + usize::from(b - 192) * 37,
        _ => 1 << 20,
    }
}

/// Pushes `body` in the chunks `cuts` makes and drains after each push,
/// checking each frame on its own and the buffer bound.
fn run(mode: Delimiting, max: usize, body: &[u8], cuts: &[usize]) -> Vec<Frame> {
    let mut framer = Framer::new(mode, max);
    // The framer treats a limit of 0 as 1.
    let max = max.max(1);
    let mut out = Vec::new();
    for chunk in chunks(body, cuts) {
        framer.push(chunk);
        while let Some(frame) = framer.next_frame() {
            check_frame(mode, max, &frame);
            out.push(frame);
        }
        // Once drained, only a partial message (or a partial length line) is
        // held, and never more than the limit plus its CRLF.
        assert!(
            framer.pending() <= max + 2,
            "{mode:?} max {max}: {} bytes pending after draining, body {}",
            framer.pending(),
            show(body, 300)
        );
    }
    out
}

/// What holds for any one frame, whatever came before.
fn check_frame(mode: Delimiting, max: usize, frame: &Frame) {
    match frame {
        Frame::Message(m) => {
            assert!(!m.iter().all(u8::is_ascii_whitespace), "a blank message {} is not a keep-alive", show(m, 80));
            match mode {
                Delimiting::Lines => {
                    assert!(m.len() <= max, "message of {} bytes over the limit {max}", m.len());
                    assert!(!m.windows(2).any(|w| w == b"\r\n"), "a CRLF inside the message {}", show(m, 200));
                }
                // The announced length counts the CRLF, which is stripped
                // only when it is there.
                Delimiting::Length => assert!(m.len() <= max + 2, "message of {} bytes over {max} + 2", m.len()),
            }
        }
        Frame::Oversized { len } => assert!(*len > max, "oversized frame of {len} bytes within the limit {max}"),
        Frame::Runaway { len } => assert!(*len > max + 2, "runaway line of {len} bytes within the limit {max} + 2"),
        Frame::BadLength(line) => {
            assert_eq!(mode, Delimiting::Length, "a BadLength frame in lines mode");
            assert!(line.len() <= max, "bad length line over the limit");
            assert!(parse_length(line).is_none(), "BadLength for a valid length {}", show(line, 80));
        }
        Frame::KeepAlive => {}
    }
}

/// The framing rules read over the whole input at once: lines end at CRLF
/// (a lone CR or LF belongs to the line); a line over the limit is
/// oversized; a blank line is a keep-alive; in length mode a line is a
/// decimal length (blank or 0: keep-alive; over the limit plus CRLF: that
/// many bytes skipped as one oversized message), else a bad length, and a
/// body's trailing CRLF (or LF) is stripped. An incomplete tail is
/// nothing, unless it is a line already over the limit plus CRLF: that is a
/// `Runaway` of its length.
fn model(mode: Delimiting, max: usize, b: &[u8]) -> Vec<Frame> {
    let max = max.max(1);
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let Some(end) = find_crlf(&b[pos..]).map(|i| pos + i) else {
            if b.len() - pos > max + 2 {
                out.push(Frame::Runaway { len: b.len() - pos });
            }
            break;
        };
        let line = &b[pos..end];
        pos = end + 2;
        if line.len() > max {
            out.push(Frame::Oversized { len: line.len() });
            continue;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            out.push(Frame::KeepAlive);
            continue;
        }
        if mode == Delimiting::Lines {
            out.push(Frame::Message(Bytes::copy_from_slice(line)));
            continue;
        }
        match parse_length(line) {
            None => out.push(Frame::BadLength(Bytes::copy_from_slice(line))),
            Some(0) => out.push(Frame::KeepAlive),
            Some(n) => {
                if b.len() - pos < n {
                    break;
                }
                let body = &b[pos..pos + n];
                pos += n;
                if n > max + 2 {
                    out.push(Frame::Oversized { len: n });
                    continue;
                }
                let body = body.strip_suffix(b"\r\n").or_else(|| body.strip_suffix(b"\n")).unwrap_or(body);
                if body.iter().all(u8::is_ascii_whitespace) {
                    out.push(Frame::KeepAlive);
                } else {
                    out.push(Frame::Message(Bytes::copy_from_slice(body)));
                }
            }
        }
    }
    out
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// A length line: up to 12 ASCII digits, surrounding whitespace allowed.
fn parse_length(line: &[u8]) -> Option<usize> {
    let digits = line.trim_ascii();
    if digits.is_empty() || digits.len() > 12 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The body read as messages separated by [`MESSAGE_SEPARATOR`] (an empty
/// one is a blank keep-alive line), framed as Twitter frames them, and the
/// frames that must come out.
fn well_formed(mode: Delimiting, max: usize, body: &[u8]) -> (Vec<u8>, Vec<Frame>) {
    let max = max.max(1);
    let mut stream = Vec::new();
    let mut want = Vec::new();
    for raw in body.split(|&b| b == MESSAGE_SEPARATOR) {
        if raw.is_empty() {
            stream.extend_from_slice(b"\r\n");
            want.push(Frame::KeepAlive);
            continue;
        }
        match mode {
            Delimiting::Lines => {
                // A CRLF would end the message early: keep its CR only.
                let mut m = Vec::with_capacity(raw.len());
                for &byte in raw {
                    if !(byte == b'\n' && m.last() == Some(&b'\r')) {
                        m.push(byte);
                    }
                }
                stream.extend_from_slice(&m);
                stream.extend_from_slice(b"\r\n");
                want.push(if m.len() > max {
                    Frame::Oversized { len: m.len() }
                } else if m.iter().all(u8::is_ascii_whitespace) {
                    Frame::KeepAlive
                } else {
                    Frame::Message(Bytes::from(m))
                });
            }
            Delimiting::Length => {
                let n = raw.len() + 2;
                stream.extend_from_slice(format!("{n}\r\n").as_bytes());
                stream.extend_from_slice(raw);
                stream.extend_from_slice(b"\r\n");
                want.push(if n > max + 2 {
                    Frame::Oversized { len: n }
                } else if raw.iter().all(u8::is_ascii_whitespace) {
                    Frame::KeepAlive
                } else {
                    Frame::Message(Bytes::copy_from_slice(raw))
                });
            }
        }
    }
    (stream, want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_reads_the_framers_own_examples() {
        let tweet = b"{\"id_str\":\"1\",\"text\":\"a\nb\"}";
        let mut body = tweet.to_vec();
        body.extend_from_slice(b"\r\n\r\n{\"x\":1}\r\n{\"partial");
        let want = vec![
            Frame::Message(Bytes::copy_from_slice(tweet)),
            Frame::KeepAlive,
            Frame::Message(Bytes::from_static(b"{\"x\":1}")),
        ];
        assert_eq!(model(Delimiting::Lines, 1 << 20, &body), want);
        let length = b"\r\n9\r\n{\"a\":1}\r\nabc\r\n10002\r\n";
        assert_eq!(
            model(Delimiting::Length, 100, length),
            vec![Frame::KeepAlive, Frame::Message(Bytes::from_static(b"{\"a\":1}")), Frame::BadLength("abc".into())]
        );
    }
}
