//! The byte level of a simulated stream: CRLF or length framing, cutting
//! frames into chunks, and the response body that can end with a FIN or a
//! TCP RST after every byte before it has reached the kernel; also the waits
//! every producer shares (the stop, the `reset_all` epoch).

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::{mpsc, watch};

use super::scenario::Split;

/// With `Split::None`, frames are gathered into chunks of about this size:
/// one channel hop and one write per 64 KiB instead of per message.
const COALESCE_BYTES: usize = 64 * 1024;

/// Chunks in flight between a producer and its response body.
pub(crate) const CHANNEL_DEPTH: usize = 8;

/// What a producer hands the response body.
pub(crate) enum Piece {
    /// Bytes to send as one HTTP chunk.
    Data(Bytes),
    /// End the body abruptly (no final chunk); with `reset`, by RST.
    Abort { reset: bool },
}

/// Why a producer stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Halt {
    /// The response body was dropped: the client went away.
    ClientClosed,
    /// The simulator is stopping.
    ServerStop,
    /// `SimHandle::reset_all`: the producer ends the body with an RST.
    ResetAll,
}

impl Halt {
    /// The connection log's `end` for it.
    pub(crate) fn why(self) -> &'static str {
        match self {
            Halt::ClientClosed => "client closed",
            Halt::ServerStop => "server stop",
            Halt::ResetAll => "reset_all",
        }
    }
}

/// The raw fd of an accepted connection, captured in `on_connect`, so a
/// scripted reset can set SO_LINGER 0 on exactly that socket.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnFd(pub RawFd);

/// Resolves once the simulator is asked to stop (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // `wait_for` checks the current value first, so a stop that happened
    // before this call is seen too.
    let _ = stop.wait_for(|s| *s).await;
}

/// Resolves at the next change; never once the sender is gone (the
/// revocation counter, the `reset_all` epoch).
pub(crate) async fn changed(rx: &mut watch::Receiver<u64>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Frames messages and writes them as chunks into the body channel.
pub(crate) struct FrameWriter {
    tx: mpsc::Sender<Piece>,
    stop: watch::Receiver<bool>,
    delimited: bool,
    split: Split,
    pending: BytesMut,
    frames: u64,
    rng: fastrand::Rng,
    /// When the last bytes went into the channel (keep-alive timing).
    pub last_write: Instant,
}

impl FrameWriter {
    pub(crate) fn new(
        tx: mpsc::Sender<Piece>,
        stop: watch::Receiver<bool>,
        delimited: bool,
        split: Split,
        seed: u64,
    ) -> FrameWriter {
        FrameWriter {
            tx,
            stop,
            delimited,
            split,
            pending: BytesMut::new(),
            frames: 0,
            rng: fastrand::Rng::with_seed(seed),
            last_write: Instant::now(),
        }
    }

    /// Writes one message: `msg` CRLF, or with `delimited=length` its byte
    /// count (message plus CRLF) on a line of its own first.
    pub(crate) async fn message(&mut self, msg: &[u8]) -> Result<(), Halt> {
        let frame_no = self.frames;
        self.frames += 1;
        match self.split {
            Split::None => {
                frame_into(&mut self.pending, msg, self.delimited);
                if self.pending.len() >= COALESCE_BYTES {
                    self.flush().await?;
                }
                Ok(())
            }
            Split::Random | Split::Sweep => {
                self.flush().await?;
                let mut frame = BytesMut::with_capacity(msg.len() + 24);
                frame_into(&mut frame, msg, self.delimited);
                for piece in split_frame(self.split, frame_no, &frame.freeze(), &mut self.rng) {
                    self.send(Piece::Data(piece)).await?;
                }
                Ok(())
            }
        }
    }

    /// Bytes sent as they are, no framing (a broken body), at once.
    pub(crate) async fn raw(&mut self, bytes: Bytes) -> Result<(), Halt> {
        self.flush().await?;
        self.send(Piece::Data(bytes)).await
    }

    /// A keep-alive: a bare CRLF, sent at once.
    pub(crate) async fn keepalive(&mut self) -> Result<(), Halt> {
        self.pending.extend_from_slice(b"\r\n");
        self.flush().await
    }

    /// Sends whatever is gathered.
    pub(crate) async fn flush(&mut self) -> Result<(), Halt> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = self.pending.split().freeze();
        self.send(Piece::Data(chunk)).await
    }

    /// Flushes, then ends the body abruptly.
    pub(crate) async fn abort(&mut self, reset: bool) -> Result<(), Halt> {
        self.flush().await?;
        self.send(Piece::Abort { reset }).await
    }

    /// Resolves when the client is gone (the body was dropped).
    pub(crate) async fn closed(&self) {
        self.tx.closed().await
    }

    async fn send(&mut self, piece: Piece) -> Result<(), Halt> {
        tokio::select! {
            biased;
            sent = self.tx.send(piece) => sent.map_err(|_| Halt::ClientClosed)?,
            _ = stopped(&mut self.stop) => return Err(Halt::ServerStop),
        }
        self.last_write = Instant::now();
        Ok(())
    }
}

/// Appends one framed message.
pub(crate) fn frame_into(out: &mut BytesMut, msg: &[u8], delimited: bool) {
    if delimited {
        // protocols.md A.4: the count includes the message's trailing CRLF.
        let mut digits = Vec::with_capacity(20);
        super::payloads::push_u64(&mut digits, msg.len() as u64 + 2);
        out.extend_from_slice(&digits);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(msg);
    out.extend_from_slice(b"\r\n");
}

/// Frame `i` is cut at `i % len` (no cut at 0: that is the frame boundary).
/// `frame` cut per `split` (frame number `frame_no` of its connection), as
/// the pieces to write one by one; empty pieces are skipped.
pub(crate) fn split_frame(split: Split, frame_no: u64, frame: &Bytes, rng: &mut fastrand::Rng) -> Vec<Bytes> {
    let cuts = match split {
        Split::None => Vec::new(),
        Split::Sweep => sweep_cuts(frame_no, frame.len()),
        Split::Random => random_cuts(rng, frame.len()),
    };
    let mut start = 0;
    let mut pieces = Vec::with_capacity(cuts.len() + 1);
    for cut in cuts.into_iter().chain(std::iter::once(frame.len())) {
        if cut > start {
            pieces.push(frame.slice(start..cut));
            start = cut;
        }
    }
    pieces
}

pub(crate) fn sweep_cuts(frame_no: u64, len: usize) -> Vec<usize> {
    if len == 0 {
        return Vec::new();
    }
    let at = (frame_no % len as u64) as usize;
    if at == 0 {
        Vec::new()
    } else {
        vec![at]
    }
}

/// 1-3 distinct cut points, so 2-4 pieces, anywhere inside the frame.
pub(crate) fn random_cuts(rng: &mut fastrand::Rng, len: usize) -> Vec<usize> {
    if len < 2 {
        return Vec::new();
    }
    let want = rng.usize(1..=3).min(len - 1);
    let mut cuts: Vec<usize> = Vec::with_capacity(want);
    while cuts.len() < want {
        let c = rng.usize(1..len);
        if !cuts.contains(&c) {
            cuts.push(c);
        }
    }
    cuts.sort_unstable();
    cuts
}

/// The response body: chunks from the producer, then either a clean end
/// (channel closed) or an error that makes actix drop the connection.
///
/// The server runs with `h1_write_buffer_size(1)`, so actix polls this body
/// only when its write buffer is empty: when the error is yielded every byte
/// before it is already in the kernel, and the client sees all of it before
/// the FIN or RST.
pub(crate) struct BodyStream {
    rx: mpsc::Receiver<Piece>,
    fd: Option<RawFd>,
    done: bool,
}

impl BodyStream {
    pub(crate) fn new(rx: mpsc::Receiver<Piece>, fd: Option<RawFd>) -> BodyStream {
        BodyStream { rx, fd, done: false }
    }
}

impl Stream for BodyStream {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(Piece::Data(bytes))) => Poll::Ready(Some(Ok(bytes))),
            Poll::Ready(Some(Piece::Abort { reset })) => {
                this.done = true;
                if reset {
                    prepare_reset(this.fd);
                }
                Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "simulator: scripted abrupt end of stream",
                ))))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Makes the close that follows a scripted abrupt end an RST; call only
/// from the poll of the response body of the connection `fd` belongs to.
pub(crate) fn prepare_reset(fd: Option<RawFd>) {
    match fd {
        Some(fd) => {
            if let Err(e) = linger_zero(fd) {
                tracing::warn!(error = %e, "could not set SO_LINGER 0; the close will be a FIN");
            }
        }
        None => tracing::warn!("no socket fd for this connection; the close will be a FIN"),
    }
}

/// SO_LINGER with a zero timeout: the close that follows sends RST.
#[allow(unsafe_code)]
fn linger_zero(fd: RawFd) -> io::Result<()> {
    // SAFETY: `fd` is the accepted socket of the connection whose response
    // body (an SSE or Twitter `BodyStream`, or a WebSocket's
    // `ws_body::WsBody`) is being polled right now. actix owns it and closes
    // it only after this poll returns, so it is open for the duration of
    // this borrow.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&borrowed).set_linger(Some(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_and_length_framing() {
        let mut out = BytesMut::new();
        frame_into(&mut out, br#"{"limit":{"track":12}}"#, true);
        assert_eq!(&out[..], b"24\r\n{\"limit\":{\"track\":12}}\r\n");
        let mut out = BytesMut::new();
        frame_into(&mut out, "{\"t\":\"🚀\"}".as_bytes(), true);
        // 4-byte emoji: 12 bytes of JSON + CRLF = 14, though only 9 chars.
        assert_eq!(&out[..], "14\r\n{\"t\":\"🚀\"}\r\n".as_bytes());
        let mut out = BytesMut::new();
        frame_into(&mut out, b"{}", false);
        assert_eq!(&out[..], b"{}\r\n");
    }

    #[test]
    fn sweep_covers_every_offset() {
        let len = 7;
        let mut seen = vec![false; len];
        for i in 0..len as u64 {
            match sweep_cuts(i, len).as_slice() {
                [] => seen[0] = true,
                [c] => seen[*c] = true,
                other => panic!("two cuts: {other:?}"),
            }
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn random_cuts_make_two_to_four_pieces() {
        let mut rng = fastrand::Rng::with_seed(1);
        for len in 2..200 {
            let cuts = random_cuts(&mut rng, len);
            assert!((1..=3).contains(&cuts.len()));
            assert!(cuts.windows(2).all(|w| w[0] < w[1]));
            assert!(cuts.iter().all(|c| (1..len).contains(c)));
        }
        assert!(random_cuts(&mut rng, 1).is_empty());
    }
}
