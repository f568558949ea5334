//! The server side of an upgraded WebSocket that every WebSocket endpoint
//! (`mastodon_ws`, `jetstream`) shares, written once and driven by each
//! endpoint's protocol: the link a connection task talks through
//! (`WsLink`: actix-ws's session and the client's messages, the stop
//! signal and the `reset_all` epoch), how a connection ends (`End`) and the server's half of the
//! closing handshake, a scripted silence, and the response body
//! (`WsBody`) that ends cleanly or abruptly (FIN, or RST) when the task
//! asks, counted in `OpenBodies` for `SimHandle::stop`.

use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Session};
use bytes::Bytes;
use tokio::sync::{oneshot, watch, Notify};

use super::wire;

/// Client frames kept while a scripted silence lasts; more are dropped.
const MAX_BUFFERED: usize = 1024;

/// How long the server waits for the client's Close frame after sending
/// its own before it drops the connection anyway.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How a connection ends.
pub(crate) enum End {
    /// Drop the TCP connection without a Close frame (RST with `reset`):
    /// the client sees 1006.
    Abort { reset: bool, why: &'static str },
    /// Send a Close frame; None: no status code (the client sees 1005).
    Close { reason: Option<CloseReason>, why: &'static str },
    /// Just stop: the client is gone.
    Gone(&'static str),
}

impl End {
    /// Why, as the logs record it.
    pub(crate) fn why(&self) -> &'static str {
        match self {
            End::Abort { why, .. } | End::Close { why, .. } | End::Gone(why) => why,
        }
    }
}

/// The client went away.
pub(crate) const GONE: End = End::Gone("client closed");

/// The simulator stops: Close 1001.
pub(crate) fn server_stop() -> End {
    End::Close { reason: Some(CloseCode::Away.into()), why: "server stop" }
}

/// `SimHandle::reset_all`: the TCP connection is dropped with an RST.
pub(crate) fn reset_all() -> End {
    End::Abort { reset: true, why: "reset_all" }
}

/// What a connection task talks to its client through.
pub(crate) struct WsLink {
    /// Frames to the client.
    pub(crate) session: Session,
    /// The client's messages, as the endpoint configured their limits.
    pub(crate) messages: AggregatedMessageStream,
    /// The simulator's stop signal: no wait may outlast it.
    pub(crate) stop: watch::Receiver<bool>,
    /// `SimHandle::reset_all`'s epoch: a change ends the connection with
    /// `reset_all()`; the serve loop waits on it too.
    pub(crate) resets: watch::Receiver<u64>,
    /// Tells the body to end with an error, so actix drops the connection
    /// (None once told, and until `body` made it).
    abort: Option<oneshot::Sender<DropConnection>>,
}

impl WsLink {
    pub(crate) fn new(
        session: Session,
        messages: AggregatedMessageStream,
        stop: watch::Receiver<bool>,
        resets: watch::Receiver<u64>,
    ) -> WsLink {
        WsLink { session, messages, stop, resets, abort: None }
    }

    /// The response body around `inner` (actix-ws's frames) of the
    /// connection `fd`, counted in `open`; `label` names the endpoint in
    /// the error actix logs when the connection is dropped.
    pub(crate) fn body(
        &mut self,
        label: &'static str,
        inner: BoxBody,
        fd: Option<RawFd>,
        open: Arc<OpenBodies>,
    ) -> WsBody {
        let (abort, abort_rx) = oneshot::channel();
        self.abort = Some(abort);
        open.opened();
        WsBody { inner, abort: Some(abort_rx), fd, done: false, label, open }
    }

    /// The server's side of the end, once the task has logged it: drop the
    /// TCP connection, or send the Close frame and (unless the client
    /// closed first or the server stops) wait up to `CLOSE_WAIT` for the
    /// client's before dropping it; a client that is gone needs nothing.
    pub(crate) async fn finish(&mut self, end: End) {
        match end {
            End::Abort { reset, why } => self.drop_connection(DropConnection { reset, why }),
            End::Close { reason, why } => {
                let close = self.session.clone().close(reason);
                let sent = matches!(tokio::time::timeout(CLOSE_WAIT, close).await, Ok(Ok(())));
                // The closing handshake: the server closes the TCP
                // connection once the client answered (or at once when the
                // client closed first or the server stops).
                if sent && !matches!(why, "client closed" | "server stop") {
                    self.await_close().await;
                }
                // A client that closed first closes its TCP side itself: the
                // body just ends, without the error actix would log.
                if why != "client closed" {
                    self.drop_connection(DropConnection { reset: false, why });
                }
            }
            // The client is gone: the body just ends.
            End::Gone(_) => {}
        }
    }

    /// Ends the body with an error after the frames queued so far: actix
    /// drops the connection (FIN, or RST with `reset`) instead of lingering
    /// for the client to close first. (actix logs the error.)
    fn drop_connection(&mut self, how: DropConnection) {
        if let Some(abort) = self.abort.take() {
            let _ = abort.send(how);
        }
    }

    /// Waits (at most `CLOSE_WAIT`) for the client's Close frame.
    async fn await_close(&mut self) {
        let answered = async {
            loop {
                match self.messages.recv().await {
                    Some(Ok(AggregatedMessage::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => {}
                }
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(CLOSE_WAIT, answered) => {}
            _ = wire::stopped(&mut self.stop) => {}
        }
    }

    /// Sends nothing for `how_long`; the client's frames wait (up to
    /// `MAX_BUFFERED`) and are returned. A `reset_all` still cuts it short.
    pub(crate) async fn silence(&mut self, how_long: Duration) -> Result<Vec<AggregatedMessage>, End> {
        let over = tokio::time::sleep(how_long);
        tokio::pin!(over);
        let mut buffered = Vec::new();
        loop {
            tokio::select! {
                _ = &mut over => return Ok(buffered),
                m = self.messages.recv() => match m {
                    Some(Ok(m)) => {
                        if buffered.len() < MAX_BUFFERED {
                            buffered.push(m);
                        }
                    }
                    Some(Err(_)) | None => return Err(GONE),
                },
                _ = wire::changed(&mut self.resets) => return Err(reset_all()),
                _ = wire::stopped(&mut self.stop) => return Err(server_stop()),
            }
        }
    }
}

/// How the connection task has actix drop the TCP connection.
struct DropConnection {
    /// By RST instead of FIN.
    reset: bool,
    /// Why (in actix's log of the body error).
    why: &'static str,
}

/// How many upgraded connections' bodies actix still holds. A body goes
/// when actix drops its connection (or finishes the response).
#[derive(Default)]
pub(crate) struct OpenBodies {
    count: AtomicUsize,
    none_left: Notify,
}

impl OpenBodies {
    /// Waits (at most `within`) until actix has dropped every upgraded
    /// connection. A WebSocket ends in two steps (Close frame, then the TCP
    /// connection) after the simulator's stop signal; an actix worker that
    /// is asked to stop while one is still there checks again only a second
    /// later.
    pub(crate) async fn drained(&self, within: Duration) {
        let _ = tokio::time::timeout(within, async {
            loop {
                let gone = self.none_left.notified();
                tokio::pin!(gone);
                gone.as_mut().enable();
                if self.count.load(Ordering::SeqCst) == 0 {
                    return;
                }
                gone.await;
            }
        })
        .await;
    }

    fn opened(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// The last one wakes `drained`.
    fn closed(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.none_left.notify_waiters();
        }
    }
}

/// The upgrade's body: actix-ws's frames, then either a clean end or,
/// when the connection task asks, an error that makes actix drop the
/// connection (see `wire::BodyStream`: with `h1_write_buffer_size(1)` every
/// frame before it has reached the kernel).
pub(crate) struct WsBody {
    inner: BoxBody,
    abort: Option<oneshot::Receiver<DropConnection>>,
    fd: Option<RawFd>,
    done: bool,
    /// The endpoint, in the body error actix logs ("simulator: {label}
    /// connection dropped (why)").
    label: &'static str,
    /// Counts this body while it lives.
    open: Arc<OpenBodies>,
}

impl Drop for WsBody {
    fn drop(&mut self) {
        self.open.closed();
    }
}

impl MessageBody for WsBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        // Frames first: the abort is sent after the last frame was queued.
        let ended = match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(item)) => return Poll::Ready(Some(item)),
            Poll::Ready(None) => true,
            Poll::Pending => false,
        };
        if let Some(abort) = this.abort.as_mut() {
            match Pin::new(abort).poll(cx) {
                Poll::Ready(Ok(how)) => {
                    this.done = true;
                    if how.reset {
                        wire::prepare_reset(this.fd);
                    }
                    let message = format!("simulator: {} connection dropped ({})", this.label, how.why);
                    return Poll::Ready(Some(Err(Box::new(io::Error::new(io::ErrorKind::ConnectionAborted, message)))));
                }
                Poll::Ready(Err(_)) => this.abort = None,
                Poll::Pending => {}
            }
        }
        if ended {
            this.done = true;
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}
