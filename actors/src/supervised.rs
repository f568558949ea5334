//! What every supervised connection actor (Twitter's `StreamActor`,
//! `MastodonStreamActor`) shares: the backoff wait before each attempt, the
//! decision when an attempt ended (restart through actix supervision, fail
//! for good, or finish), and a stop that never cuts a delivery in half.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::backoff::{BackoffActor, PlanAttempt};
use crate::error::StreamError;
use crate::messages::{DisconnectCause, StreamDisconnected, StreamFailed};
use crate::stats::{ConnectionState, ConnectionStats};

/// Log excerpts of messages and response bodies are cut at this many bytes.
const LOG_SNIPPET: usize = 200;

/// How long a stop waits for the batch in hand to reach the sinks.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How one connection attempt ended.
pub struct AttemptEnd {
    /// Why.
    pub result: StreamError,
    /// It streamed for at least `reset_after`.
    pub healthy: bool,
}

impl AttemptEnd {
    /// `result`, healthy when it connected at least `reset_after` ago.
    pub fn new(result: StreamError, connected_at: Option<Instant>, reset_after: Duration) -> Self {
        AttemptEnd { result, healthy: connected_at.is_some_and(|t| t.elapsed() >= reset_after) }
    }
}

/// The lifecycle state a connection actor keeps across supervised restarts.
pub struct SupervisedConnection {
    id: Arc<str>,
    stats: Arc<ConnectionStats>,
    backoff: Addr<BackoffActor>,
    disconnected: Recipient<StreamDisconnected>,
    failed: Recipient<StreamFailed>,
    /// Asks the read loop to end between batches.
    stop: Arc<tokio::sync::Notify>,
    /// Woken when a connection attempt ends.
    ended: Arc<tokio::sync::Notify>,
    /// Why the previous attempt ended.
    last_end: Option<(DisconnectCause, bool)>,
    /// Failed for good or stopped: a restart must not reconnect.
    done: bool,
    attempt: Option<SpawnHandle>,
}

impl SupervisedConnection {
    /// The state of connection `id`.
    pub fn new(
        id: Arc<str>,
        stats: Arc<ConnectionStats>,
        backoff: Addr<BackoffActor>,
        disconnected: Recipient<StreamDisconnected>,
        failed: Recipient<StreamFailed>,
    ) -> Self {
        SupervisedConnection {
            id,
            stats,
            backoff,
            disconnected,
            failed,
            stop: Arc::new(tokio::sync::Notify::new()),
            ended: Arc::new(tokio::sync::Notify::new()),
            last_end: None,
            done: false,
            attempt: None,
        }
    }

    /// What the read loop waits on to end between batches.
    pub fn stop_signal(&self) -> Arc<tokio::sync::Notify> {
        self.stop.clone()
    }

    /// From `Actor::started`: asks the source's `BackoffActor` for the wait
    /// (none for the first attempt), then calls `connect`.
    pub fn schedule<A>(&mut self, ctx: &mut Context<A>, connect: fn(&mut A, &mut Context<A>))
    where
        A: Actor<Context = Context<A>>,
    {
        if self.done {
            return;
        }
        let (cause, was_healthy) = match self.last_end.take() {
            Some((cause, healthy)) => (Some(cause), healthy),
            None => (None, false),
        };
        if cause.is_some() {
            self.stats.set_state(ConnectionState::BackingOff);
        }
        let id = self.id.clone();
        let plan = self.backoff.send(PlanAttempt { connection: id.clone(), cause, was_healthy });
        ctx.spawn(actix::fut::wrap_future::<_, A>(plan).map(move |wait, _, ctx: &mut Context<A>| {
            let wait = wait.unwrap_or(Duration::from_secs(1));
            tracing::debug!(connection = %id, wait_ms = wait.as_millis() as u64, "next attempt scheduled");
            ctx.run_later(wait, connect);
        }));
    }

    /// Spawns one connection attempt; `ended` receives how it ended.
    pub fn start_attempt<A, F>(
        &mut self,
        ctx: &mut Context<A>,
        attempt: F,
        ended: fn(&mut A, AttemptEnd, &mut Context<A>),
    ) where
        A: Actor<Context = Context<A>>,
        F: std::future::Future<Output = AttemptEnd> + 'static,
    {
        self.stats.set_state(ConnectionState::Connecting);
        let handle = ctx.spawn(actix::fut::wrap_future::<_, A>(attempt).map(move |end, act, ctx| ended(act, end, ctx)));
        self.attempt = Some(handle);
    }

    /// When an attempt ended: a retryable end stops the actor so actix
    /// supervision restarts it (and `schedule` waits out the backoff); a
    /// fatal one leaves it idle in state `failed`.
    pub fn attempt_ended<A>(&mut self, end: AttemptEnd, ctx: &mut Context<A>)
    where
        A: Actor<Context = Context<A>>,
    {
        self.attempt = None;
        self.ended.notify_waiters();
        let id = self.id.clone();
        if self.done {
            if self.stats.state() != ConnectionState::Failed {
                self.stats.set_state(ConnectionState::Stopped);
            }
            return;
        }
        match end.result {
            StreamError::Retryable(cause) => {
                if cause == DisconnectCause::Stall {
                    self.stats.set_state(ConnectionState::Stalled);
                }
                tracing::warn!(connection = %id, %cause, "connection ended; reconnecting after backoff");
                self.stats.set_last_error(cause.to_string());
                self.stats.counters().reconnect(cause.label());
                self.disconnected.do_send(StreamDisconnected { connection: id, cause: cause.clone() });
                self.last_end = Some((cause, end.healthy));
                ctx.stop();
            }
            StreamError::Fatal { reason } => {
                tracing::error!(connection = %id, %reason, "connection failed for good; not retrying");
                self.done = true;
                self.stats.set_last_error(reason.clone());
                self.stats.set_state(ConnectionState::Failed);
                self.failed.do_send(StreamFailed { connection: id, reason });
            }
            StreamError::Finished { reason } => {
                tracing::info!(connection = %id, %reason, "stream finished");
                self.done = true;
                self.stats.set_state(ConnectionState::Stopped);
            }
        }
    }

    /// From `Supervised::restarting`.
    pub fn restarting(&self) {
        if !self.done {
            self.stats.add_reconnect();
        }
    }

    /// `StopStream`: ends the connection after the batch in hand is
    /// delivered; the future resolves when it has ended (bounded).
    pub fn stop<A>(&mut self, ctx: &mut Context<A>) -> ResponseFuture<()>
    where
        A: Actor<Context = Context<A>>,
    {
        self.done = true;
        if self.attempt.is_none() {
            if self.stats.state() != ConnectionState::Failed {
                self.stats.set_state(ConnectionState::Stopped);
            }
            // Backing off: pending timers die with the context.
            ctx.stop();
            return Box::pin(async {});
        }
        let ended = self.ended.clone().notified_owned();
        self.stop.notify_one();
        Box::pin(async move {
            if tokio::time::timeout(STOP_GRACE, ended).await.is_err() {
                tracing::warn!("a connection did not end within the stop grace period");
            }
        })
    }
}

/// What a response other than 200 means for the connection: a `fatal`
/// status is final (the reason carries the body); 420/429 back off on the
/// rate-limit schedule, anything else on the HTTP one (`Retry-After` kept).
pub async fn refusal<S>(connection: &str, response: &mut awc::ClientResponse<S>, fatal: &[u16]) -> StreamError
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
{
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(awc::http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = read_error_body(response).await;
    refusal_of(connection, status, retry_after, &body, fatal)
}

/// [`refusal`] once the status, `Retry-After` and body are known.
pub fn refusal_of(
    connection: &str,
    status: u16,
    retry_after: Option<Duration>,
    body: &str,
    fatal: &[u16],
) -> StreamError {
    if fatal.contains(&status) {
        return StreamError::Fatal { reason: format!("HTTP {status}: {body}") };
    }
    tracing::warn!(connection, status, body = %body, "connection refused");
    StreamError::Retryable(match status {
        420 | 429 => DisconnectCause::RateLimited { status, retry_after },
        _ => DisconnectCause::Http { status, retry_after },
    })
}

/// The first 2 KiB of an error body, waiting at most 2 s, as a log snippet.
async fn read_error_body<S>(response: &mut awc::ClientResponse<S>) -> String
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
{
    use futures_util::StreamExt;
    let mut body = Vec::new();
    let read = async {
        while let Some(Ok(chunk)) = response.next().await {
            body.extend_from_slice(&chunk);
            if body.len() >= 2048 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
    snippet(&body)
}

/// The first bytes of a message, lossily decoded, for logs.
pub fn snippet(bytes: &[u8]) -> String {
    let cut = bytes.len().min(LOG_SNIPPET);
    let mut s = String::from_utf8_lossy(&bytes[..cut]).into_owned();
    if bytes.len() > cut {
        s.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    s
}
