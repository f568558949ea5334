//! Byte framing for Twitter v1.1 stream bodies: CRLF-terminated lines, or
//! `delimited=length` frames. Chunks may split anywhere (inside a delimiter,
//! inside UTF-8); the framer keeps one bounded buffer across reads.

use bytes::{Buf, Bytes, BytesMut};

/// One unit out of the framer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A message, without its terminating CRLF.
    Message(Bytes),
    /// A blank line: keeps the connection alive, carries nothing.
    KeepAlive,
    /// A message longer than the limit was skipped; the stream goes on.
    Oversized {
        /// Its length (the announced length, or the complete line's).
        len: usize,
    },
    /// Line mode: more than the limit arrived without a CRLF. Reported once,
    /// as soon as the limit is passed (an endless line would otherwise be
    /// skipped silently for ever); the framer then drops bytes up to the
    /// next CRLF, but the stream is broken and is best reconnected.
    Runaway {
        /// Bytes of the line so far.
        len: usize,
    },
    /// A length line that is not a number (`delimited=length` only); skipped.
    BadLength(Bytes),
}

/// How the body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delimiting {
    /// Each message ends with `\r\n`; a lone `\n` belongs to the message.
    Lines,
    /// Each message is preceded by its length in bytes (which counts the
    /// message's trailing CRLF) on a line of its own.
    Length,
}

#[derive(Debug)]
enum State {
    /// Looking for the end of a line (a message, or a length line).
    Line,
    /// Reading exactly this many bytes of a length-delimited message.
    Body(usize),
    /// Throwing away the rest of an oversized message.
    Skip {
        /// Bytes still to drop (length mode) or None: drop up to the next CRLF (line mode).
        remaining: Option<usize>,
        /// How long the message was, for the report.
        len: usize,
    },
}

/// Incremental framer. Feed chunks with [`Framer::push`], take frames with
/// [`Framer::next_frame`] until it returns `None`.
#[derive(Debug)]
pub struct Framer {
    delimiting: Delimiting,
    max_message: usize,
    buf: BytesMut,
    /// Bytes of `buf` already searched for a delimiter, so a long message
    /// arriving in many chunks is scanned once, not once per chunk.
    scanned: usize,
    state: State,
}

impl Framer {
    /// A framer that drops messages over `max_message` bytes.
    pub fn new(delimiting: Delimiting, max_message: usize) -> Self {
        Framer {
            delimiting,
            max_message: max_message.max(1),
            // Empty until the first chunk: a thousand idle connections should
            // not each hold a read-sized buffer.
            buf: BytesMut::new(),
            scanned: 0,
            state: State::Line,
        }
    }

    /// Appends a chunk read from the socket.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes held that do not yet form a frame (a partial message at EOF is
    /// discarded, never emitted).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, if the buffer holds one.
    pub fn next_frame(&mut self) -> Option<Frame> {
        let frame = self.next_frame_inner();
        if frame.is_none() && self.buf.is_empty() && self.buf.capacity() > 0 {
            // Everything read was framed: let go of the allocation (frames
            // still in flight keep their part alive) so an idle connection
            // holds no buffer; the next chunk allocates what it needs.
            self.buf = BytesMut::new();
        }
        frame
    }

    fn next_frame_inner(&mut self) -> Option<Frame> {
        loop {
            match self.state {
                State::Line => {
                    let Some(end) = self.find_crlf() else {
                        // Bound memory: a line this long without a CRLF is
                        // oversized in line mode, and cannot be a length line.
                        if self.buf.len() > self.max_message + 2 {
                            let len = self.buf.len();
                            let keep_cr = self.buf.ends_with(b"\r");
                            self.buf.clear();
                            if keep_cr {
                                self.buf.extend_from_slice(b"\r");
                            }
                            self.scanned = 0;
                            self.state = State::Skip { remaining: None, len };
                            return Some(Frame::Runaway { len });
                        }
                        return None;
                    };
                    if end > self.max_message {
                        self.buf.advance(end + 2);
                        self.scanned = 0;
                        return Some(Frame::Oversized { len: end });
                    }
                    let line = self.buf.split_to(end + 2).freeze();
                    self.scanned = 0;
                    let line = line.slice(..end);
                    if line.iter().all(|b| b.is_ascii_whitespace()) {
                        return Some(Frame::KeepAlive);
                    }
                    match self.delimiting {
                        Delimiting::Lines => return Some(Frame::Message(line)),
                        Delimiting::Length => match parse_length(&line) {
                            Some(n) if n > self.max_message + 2 => {
                                self.state = State::Skip { remaining: Some(n), len: n };
                            }
                            Some(0) => return Some(Frame::KeepAlive),
                            Some(n) => self.state = State::Body(n),
                            None => return Some(Frame::BadLength(line)),
                        },
                    }
                }
                State::Body(n) => {
                    if self.buf.len() < n {
                        self.buf.reserve(n - self.buf.len());
                        return None;
                    }
                    let mut msg = self.buf.split_to(n).freeze();
                    self.state = State::Line;
                    // The count includes the trailing CRLF; tolerate a bare LF or none.
                    if msg.ends_with(b"\r\n") {
                        msg.truncate(msg.len() - 2);
                    } else if msg.ends_with(b"\n") {
                        msg.truncate(msg.len() - 1);
                    }
                    if msg.iter().all(|b| b.is_ascii_whitespace()) {
                        return Some(Frame::KeepAlive);
                    }
                    return Some(Frame::Message(msg));
                }
                State::Skip { remaining: Some(rem), len } => {
                    let take = rem.min(self.buf.len());
                    self.buf.advance(take);
                    if take < rem {
                        self.state = State::Skip { remaining: Some(rem - take), len };
                        return None;
                    }
                    self.state = State::Line;
                    return Some(Frame::Oversized { len });
                }
                State::Skip { remaining: None, len } => match self.find_crlf() {
                    Some(end) => {
                        // Already reported as `Runaway` when it passed the limit.
                        self.buf.advance(end + 2);
                        self.scanned = 0;
                        self.state = State::Line;
                    }
                    None => {
                        let dropped = self.buf.len().saturating_sub(1);
                        // Keep a trailing CR: its LF may come in the next chunk.
                        self.buf.advance(dropped);
                        self.scanned = 0;
                        self.state = State::Skip { remaining: None, len: len + dropped };
                        return None;
                    }
                },
            }
        }
    }

    /// Finds `\r\n` in the buffer, resuming where the last search stopped.
    fn find_crlf(&mut self) -> Option<usize> {
        let start = self.scanned.saturating_sub(1);
        let hay = &self.buf[start..];
        let mut from = 0;
        while let Some(i) = memchr::memchr(b'\n', &hay[from..]) {
            let at = from + i;
            if at > 0 && hay[at - 1] == b'\r' {
                return Some(start + at - 1);
            }
            from = at + 1;
        }
        self.scanned = self.buf.len();
        None
    }
}

fn parse_length(line: &[u8]) -> Option<usize> {
    let digits = line.trim_ascii();
    if digits.is_empty() || digits.len() > 12 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(f: &mut Framer) -> Vec<Frame> {
        std::iter::from_fn(|| f.next_frame()).collect()
    }

    fn run(delimiting: Delimiting, max: usize, chunks: &[&[u8]]) -> Vec<Frame> {
        let mut f = Framer::new(delimiting, max);
        let mut out = Vec::new();
        for c in chunks {
            f.push(c);
            out.extend(frames(&mut f));
        }
        out
    }

    fn msg(s: &str) -> Frame {
        Frame::Message(Bytes::copy_from_slice(s.as_bytes()))
    }

    const TWEET: &str = "{\"id_str\":\"1\",\"text\":\"line\\none 😀 漢字\\u2026 \\\"q\\\" \n lone-lf\"}";

    fn length_frame(m: &str) -> Vec<u8> {
        let mut v = format!("{}\r\n", m.len() + 2).into_bytes();
        v.extend_from_slice(m.as_bytes());
        v.extend_from_slice(b"\r\n");
        v
    }

    #[test]
    fn lines_split_only_on_crlf() {
        let body = format!("{TWEET}\r\n\r\n{{\"limit\":{{\"track\":3}}}}\r\n");
        let got = run(Delimiting::Lines, 1 << 20, &[body.as_bytes()]);
        assert_eq!(got, vec![msg(TWEET), Frame::KeepAlive, msg("{\"limit\":{\"track\":3}}")]);
    }

    #[test]
    fn lines_split_at_every_offset_give_the_same_frames() {
        let body = format!("\r\n{TWEET}\r\n{TWEET}\r\n").into_bytes();
        let want = run(Delimiting::Lines, 1 << 20, &[&body]);
        assert_eq!(want.len(), 3);
        for cut in 0..=body.len() {
            let got = run(Delimiting::Lines, 1 << 20, &[&body[..cut], &body[cut..]]);
            assert_eq!(got, want, "cut at {cut}");
        }
        // and byte by byte
        let singles: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(run(Delimiting::Lines, 1 << 20, &singles), want);
    }

    #[test]
    fn length_frames_split_at_every_offset() {
        let mut body = b"\r\n".to_vec();
        body.extend(length_frame(TWEET));
        body.extend(b"\r\n");
        body.extend(length_frame("{\"limit\":{\"track\":12}}"));
        let want = vec![Frame::KeepAlive, msg(TWEET), Frame::KeepAlive, msg("{\"limit\":{\"track\":12}}")];
        for cut in 0..=body.len() {
            for cut2 in [cut, (cut + 7).min(body.len())] {
                let got = run(Delimiting::Length, 1 << 20, &[&body[..cut], &body[cut..cut2], &body[cut2..]]);
                assert_eq!(got, want, "cut at {cut}/{cut2}");
            }
        }
    }

    #[test]
    fn length_counts_bytes_not_chars() {
        let m = "{\"text\":\"😀😀\"}";
        assert_eq!(m.len(), 19);
        let body = length_frame(m);
        assert!(body.starts_with(b"21\r\n"));
        assert_eq!(run(Delimiting::Length, 100, &[&body]), vec![msg(m)]);
    }

    #[test]
    fn oversized_line_is_skipped_and_stream_goes_on() {
        let big = format!("{{\"text\":\"{}\"}}", "x".repeat(500));
        let body = format!("{big}\r\n{TWEET}\r\n");
        for cut in [0, 3, 100, 511, 512, 513, body.len()] {
            let got = run(Delimiting::Lines, 64, &[&body.as_bytes()[..cut], &body.as_bytes()[cut..]]);
            assert_eq!(got.len(), 2, "cut {cut}: {got:?}");
            // Whole in one chunk, its end is known; cut past the limit, it is
            // reported as soon as the limit is passed.
            let want_runaway = cut > 66 && cut < big.len() + 2;
            match got[0] {
                Frame::Oversized { len } => assert!(len >= 64 && !want_runaway, "cut {cut}: {got:?}"),
                Frame::Runaway { len } => assert!(len > 64 && want_runaway, "cut {cut}: {got:?}"),
                _ => panic!("cut {cut}: {got:?}"),
            }
        }
        let got = run(Delimiting::Lines, 1 << 10, &[format!("{big}\r\n{TWEET}\r\n").as_bytes()]);
        assert_eq!(got, vec![msg(&big), msg(TWEET)]);
    }

    #[test]
    fn an_endless_line_is_reported_once_as_soon_as_it_passes_the_limit() {
        let mut f = Framer::new(Delimiting::Lines, 1000);
        let mut reports = Vec::new();
        for _ in 0..10_000 {
            f.push(&[b'x'; 333]);
            reports.extend(frames(&mut f));
            assert!(f.pending() <= 1000 + 2 + 333, "bounded: {}", f.pending());
        }
        assert_eq!(reports, vec![Frame::Runaway { len: 1332 }]);
        // If it ever ends, the stream goes on after it.
        f.push(b"xx\r\n{\"a\":1}\r\n");
        assert_eq!(frames(&mut f), vec![msg("{\"a\":1}")]);
    }

    #[test]
    fn oversized_length_frame_is_skipped_without_buffering() {
        let big = "y".repeat(10_000);
        let mut body = length_frame(&big);
        body.extend(length_frame("{\"a\":1}"));
        let mut f = Framer::new(Delimiting::Length, 100);
        let mut out = Vec::new();
        for c in body.chunks(333) {
            f.push(c);
            out.extend(frames(&mut f));
            assert!(f.pending() <= 333 + 100, "buffer stays bounded");
        }
        assert_eq!(out, vec![Frame::Oversized { len: 10_002 }, msg("{\"a\":1}")]);
    }

    #[test]
    fn bad_length_line_is_reported_and_skipped() {
        let mut body = b"abc\r\n".to_vec();
        body.extend(length_frame("{\"a\":1}"));
        let got = run(Delimiting::Length, 100, &[&body]);
        assert_eq!(got, vec![Frame::BadLength(Bytes::from_static(b"abc")), msg("{\"a\":1}")]);
    }

    #[test]
    fn partial_message_at_eof_is_never_emitted() {
        let got = run(Delimiting::Lines, 100, &[b"{\"a\":1}\r\n{\"b\":"]);
        assert_eq!(got, vec![msg("{\"a\":1}")]);
        let got = run(Delimiting::Length, 100, &[b"20\r\n{\"b\":"]);
        assert!(got.is_empty());
    }
}
