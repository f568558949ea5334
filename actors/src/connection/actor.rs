//! The one `StreamActor`, generic over a family's [`Protocol`]: per
//! connection it waits out the backoff asked of its source's `BackoffActor`,
//! opens the link, reads it against a stall deadline (the time of the last
//! byte), hands what the protocol parsed to its planner in batches, runs commands from its
//! planner, reports its lifecycle, and stops without cutting a delivery in
//! half. It runs under actix supervision: when a connection ends the actor
//! stops, actix restarts it, and `started` asks for the wait again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use futures_util::FutureExt;
use tokio::sync::{mpsc, Notify};

use super::backoff_actor::{BackoffActor, PlanAttempt};
use super::link::{snippet, Input, Link};
use super::liveness::Liveness;
use super::stats::{ConnectionState, ConnectionStats};
use crate::delivery::ack::{AckChain, OnWritten};
use crate::error::{DisconnectCause, StreamError};
use crate::event::{Event, EventKind};
use crate::messages::{Batch, StopStream};

/// How long a stop waits for the batch in hand to reach the sinks.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Inputs already read off the socket are parsed into one batch, up to this many events.
const MAX_BATCH_EVENTS: usize = 1024;

/// What every connection has, whatever its family.
#[derive(Debug, Clone)]
pub struct ConnectionSpec {
    /// Connection id, `source/N`.
    pub id: Arc<str>,
    /// Source name.
    pub source: Arc<str>,
    /// No byte (or WebSocket frame) for this long = stalled. Also bounds the wait for the answer.
    pub stall_timeout: Duration,
    /// A connection healthy this long resets its backoff history.
    pub reset_after: Duration,
    /// Larger messages are dropped with an error.
    pub max_message_bytes: usize,
    /// A silence of this many usual gaps between events is probed ...
    pub liveness_factor: f64,
    /// ... and never one shorter than this.
    pub liveness_min: Duration,
}

/// What a protocol does about a connection silent past its liveness bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    /// Reconnect (resuming from a cursor where there is one): the
    /// reconnect is the probe.
    Reconnect,
    /// A probe runs beside the reads (a REST request); it ends the
    /// connection itself if it finds events the stream did not deliver.
    Probing,
}

/// What a family supplies to run one kind of connection: how to open it,
/// how to parse what arrives, and how to apply its planner's commands.
/// Everything else — the backoff wait, the stall deadline, stops, hand-off
/// and lifecycle reports — is the `StreamActor`'s.
///
/// A protocol value lives as long as its connection's actor, across
/// reconnects; it runs on one thread, so its futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait Protocol: Sized + Unpin + 'static {
    /// What the planner hands over to build the protocol; it travels to the
    /// connection's thread.
    type Config: Send + 'static;
    /// A change the planner asks of a connection (a new request, subscriptions).
    type Command: Send + 'static;
    /// What a connection tells its planner besides its lifecycle.
    type Notice: Send + 'static;
    /// The result of work a connection runs beside its reads (a REST catch-up).
    type Side: 'static;

    /// The protocol of a new connection.
    fn new(config: Self::Config, spec: &ConnectionSpec) -> Self;

    /// Opens the connection: the request, or the WebSocket upgrade. A stop
    /// while it waits abandons it (nothing was delivered yet).
    async fn open(&mut self, conn: &mut Conn<Self>) -> Result<Link, StreamError>;

    /// The connection answered: restore subscriptions, start catch-ups,
    /// tell the planner what it carries. Runs before `Connected` is reported.
    async fn opened(&mut self, _link: &mut Link, _conn: &mut Conn<Self>) -> Result<(), StreamError> {
        Ok(())
    }

    /// Parses one input; events and notices go to `conn`. `Some` ends the
    /// connection once what was parsed so far is delivered.
    fn input(&mut self, input: Input, conn: &mut Conn<Self>) -> Option<StreamError>;

    /// Takes a command into the wanted state (also while disconnected: the
    /// next connect uses it).
    fn apply(&mut self, command: Self::Command, stats: &ConnectionStats);

    /// Brings the open connection to the wanted state after commands (send
    /// subscribe messages); a request-based protocol leaves it to the next connect.
    async fn sync(&mut self, _link: &mut Link, _conn: &mut Conn<Self>) -> Result<(), StreamError> {
        Ok(())
    }

    /// Work running beside the reads; never resolves when there is none.
    async fn side(&mut self) -> Self::Side {
        std::future::pending().await
    }

    /// A piece of side work finished. `true` asks for a [`Protocol::sync`]
    /// next (side work that must write to the connection: a ping).
    fn side_done(&mut self, _done: Self::Side, _conn: &mut Conn<Self>) -> bool {
        false
    }

    /// Work to run once the events of the last step are written by every
    /// sink that takes them, after the work of earlier steps (record a
    /// resume position). `None` when there is nothing to record.
    fn written(&mut self) -> Option<OnWritten> {
        None
    }

    /// The connection has been silent past its liveness bound (heartbeats,
    /// no events). The default reconnects.
    fn silent(&mut self, _conn: &mut Conn<Self>) -> Silence {
        Silence::Reconnect
    }

    /// The attempt is over; `connected` says whether it had been answered,
    /// `end` why it ended.
    fn closed(&mut self, _connected: bool, _end: &StreamError) {}

    /// The `host[:port]` the next attempt goes to: attempts to one host
    /// share one budget across every source and shard (empty: the source's
    /// own budget).
    fn host(&self) -> String {
        String::new()
    }
}

/// A connection's report to its planner.
#[derive(Debug)]
pub struct Report<N> {
    /// Connection id.
    pub connection: Arc<str>,
    /// What happened.
    pub what: Reported<N>,
}

impl<N: Send + 'static> Message for Report<N> {
    type Result = ();
}

/// What a [`Report`] says.
#[derive(Debug)]
pub enum Reported<N> {
    /// It was answered and is streaming (the family's notices of this
    /// connect came just before).
    Connected,
    /// It ended and will be retried after a backoff wait.
    Disconnected(DisconnectCause),
    /// It failed for good (401, a fatal disconnect code, ...): not retried.
    Failed(String),
    /// Something family-specific (a control stream announced, a refused subscription).
    Notice(N),
}

/// A planner's command for one connection.
#[derive(Debug)]
pub struct Command<C>(pub C);

impl<C: Send + 'static> Message for Command<C> {
    type Result = ();
}

/// What a protocol step may read and produce: the connection's spec and
/// stats, and the events and notices of this step.
pub struct Conn<P: Protocol> {
    /// The connection.
    pub spec: Arc<ConnectionSpec>,
    /// Its live counters.
    pub stats: Arc<ConnectionStats>,
    events: Vec<Event>,
    notices: Vec<P::Notice>,
}

impl<P: Protocol> Conn<P> {
    fn new(spec: Arc<ConnectionSpec>, stats: Arc<ConnectionStats>) -> Self {
        Conn { spec, stats, events: Vec::new(), notices: Vec::new() }
    }

    /// An event of this connection, received now-ish (`received_at` is the caller's).
    pub fn event(
        &self,
        kind: EventKind,
        id: Option<Box<str>>,
        received_at: chrono::DateTime<Utc>,
        payload: bytes::Bytes,
    ) -> Event {
        Event {
            source: self.spec.source.clone(),
            kind,
            id,
            received_at,
            connection: self.spec.id.clone(),
            for_user: None,
            stream: None,
            payload,
        }
    }

    /// Queues `event` for the sinks, after those queued before it.
    pub fn push(&mut self, event: Event) {
        self.events.push(event);
    }

    /// Queues `events`, in order.
    pub fn extend(&mut self, events: impl IntoIterator<Item = Event>) {
        self.events.extend(events);
    }

    /// Events queued in this step.
    pub fn queued(&self) -> usize {
        self.events.len()
    }

    /// Tells the planner `notice` (before the events of this step are delivered).
    pub fn notice(&mut self, notice: P::Notice) {
        self.notices.push(notice);
    }

    /// Counts and logs a message that could not be parsed; the stream goes on.
    pub fn malformed(&self, error: &str, bytes: &[u8]) {
        self.stats.counters().malformed.inc();
        tracing::warn!(connection = %self.spec.id, %error, message = %snippet(bytes), "malformed message skipped");
    }

    /// Counts and logs a message dropped for its size; the stream goes on.
    pub fn oversized(&self, what: &str, len: usize) {
        self.stats.counters().oversized.inc();
        tracing::error!(connection = %self.spec.id, what, len, max = self.spec.max_message_bytes, "message over max_message_bytes dropped");
    }
}

/// One supervised streaming connection of any family.
pub struct StreamActor<P: Protocol> {
    spec: Arc<ConnectionSpec>,
    /// `None` while an attempt runs: the attempt owns it and gives it back.
    protocol: Option<P>,
    planner: Recipient<Batch>,
    acks: AckChain,
    reports: Recipient<Report<P::Notice>>,
    stats: Arc<ConnectionStats>,
    backoff: Addr<BackoffActor>,
    /// Asks the read loop to end between batches.
    stop: Arc<Notify>,
    /// Woken when an attempt ends.
    ended: Arc<Notify>,
    /// Commands for the running attempt.
    commands: Option<mpsc::UnboundedSender<P::Command>>,
    /// Why the previous attempt ended, and whether it had been healthy.
    last_end: Option<(DisconnectCause, bool)>,
    /// Failed for good or stopped: a restart must not reconnect.
    done: bool,
    attempt: Option<SpawnHandle>,
    /// `None` while an attempt runs, like `protocol`.
    liveness: Option<Liveness>,
}

impl<P: Protocol> StreamActor<P> {
    /// A new actor; start it with `actix::Supervisor::start_in_arbiter`.
    pub fn new(
        spec: ConnectionSpec,
        config: P::Config,
        backoff: Addr<BackoffActor>,
        planner: Recipient<Batch>,
        reports: Recipient<Report<P::Notice>>,
        stats: Arc<ConnectionStats>,
    ) -> Self {
        let protocol = P::new(config, &spec);
        let liveness = Liveness::new(spec.liveness_factor, spec.liveness_min);
        StreamActor {
            spec: Arc::new(spec),
            protocol: Some(protocol),
            planner,
            acks: AckChain::default(),
            reports,
            stats,
            backoff,
            stop: Arc::new(Notify::new()),
            ended: Arc::new(Notify::new()),
            commands: None,
            last_end: None,
            done: false,
            attempt: None,
            liveness: Some(liveness),
        }
    }

    fn report(&self, what: Reported<P::Notice>) {
        self.reports.do_send(Report { connection: self.spec.id.clone(), what });
    }

    /// Asks the source's `BackoffActor` for the wait (none for a first
    /// attempt), then connects.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
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
        let id = self.spec.id.clone();
        let host = self.protocol.as_ref().map(Protocol::host).unwrap_or_default();
        let plan = self.backoff.send(PlanAttempt { connection: id.clone(), cause, was_healthy, host });
        ctx.spawn(plan.into_actor(self).map(move |at, _, ctx| {
            let wait = at.map_or(Duration::from_secs(1), |at| at.saturating_duration_since(Instant::now()));
            tracing::debug!(connection = %id, wait_ms = wait.as_millis() as u64, "next attempt scheduled");
            ctx.run_later(wait, Self::connect);
        }));
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let Some(protocol) = self.protocol.take() else { return };
        let liveness =
            self.liveness.take().unwrap_or_else(|| Liveness::new(self.spec.liveness_factor, self.spec.liveness_min));
        let (tx, rx) = mpsc::unbounded_channel();
        self.commands = Some(tx);
        self.stats.set_state(ConnectionState::Connecting);
        let io = Io {
            spec: self.spec.clone(),
            stats: self.stats.clone(),
            planner: self.planner.clone(),
            acks: self.acks.clone(),
            reports: self.reports.clone(),
            stop: self.stop.clone(),
            commands: rx,
            liveness,
        };
        let handle = ctx.spawn(attempt(protocol, io).into_actor(self).map(|(protocol, liveness, end), act, ctx| {
            act.protocol = Some(protocol);
            act.liveness = Some(liveness);
            act.commands = None;
            act.attempt_ended(end, ctx);
        }));
        self.attempt = Some(handle);
    }

    /// A retryable end stops the actor so that actix supervision restarts it
    /// (and `schedule` waits out the backoff); a final one leaves it idle.
    fn attempt_ended(&mut self, end: AttemptEnd, ctx: &mut Context<Self>) {
        self.attempt = None;
        self.ended.notify_waiters();
        let id = self.spec.id.clone();
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
                self.report(Reported::Disconnected(cause.clone()));
                self.last_end = Some((cause, end.healthy));
                ctx.stop();
            }
            StreamError::Fatal { reason } => {
                tracing::error!(connection = %id, %reason, "connection failed for good; not retrying");
                self.done = true;
                self.stats.set_last_error(reason.clone());
                self.stats.set_state(ConnectionState::Failed);
                self.report(Reported::Failed(reason));
            }
            StreamError::Finished { reason } => {
                tracing::info!(connection = %id, %reason, "stream finished");
                self.done = true;
                self.stats.set_state(ConnectionState::Stopped);
            }
        }
    }
}

impl<P: Protocol> Actor for StreamActor<P> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.schedule(ctx);
    }
}

impl<P: Protocol> Supervised for StreamActor<P> {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        if !self.done {
            self.stats.add_reconnect();
        }
    }
}

impl<P: Protocol> Handler<Command<P::Command>> for StreamActor<P> {
    type Result = ();

    /// Applied at once while disconnected; handed to the running attempt otherwise.
    fn handle(&mut self, msg: Command<P::Command>, _: &mut Context<Self>) {
        match (&mut self.protocol, &self.commands) {
            (Some(protocol), _) => protocol.apply(msg.0, &self.stats),
            (None, Some(tx)) => {
                // The attempt owns the protocol and applies it between reads.
                if tx.send(msg.0).is_err() {
                    tracing::warn!(connection = %self.spec.id, "a command arrived for an attempt that was cancelled");
                }
            }
            (None, None) => {}
        }
    }
}

impl<P: Protocol> Handler<StopStream> for StreamActor<P> {
    type Result = ResponseFuture<()>;

    /// Ends the connection after the batch in hand is delivered; answered
    /// when it has ended (bounded), so a graceful stop flushes sinks after it.
    fn handle(&mut self, _: StopStream, ctx: &mut Context<Self>) -> Self::Result {
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

/// How one connection attempt ended.
struct AttemptEnd {
    result: StreamError,
    /// It streamed for at least `reset_after`.
    healthy: bool,
}

/// What one attempt needs from its actor.
struct Io<P: Protocol> {
    spec: Arc<ConnectionSpec>,
    stats: Arc<ConnectionStats>,
    planner: Recipient<Batch>,
    acks: AckChain,
    reports: Recipient<Report<P::Notice>>,
    stop: Arc<Notify>,
    commands: mpsc::UnboundedReceiver<P::Command>,
    liveness: Liveness,
}

impl<P: Protocol> Io<P> {
    /// Sends this step's notices to the planner, then its events as one
    /// batch, with the protocol's work for when they are written; returns
    /// once the sinks have queued them (one message per batch, not per event).
    async fn flush(&self, protocol: &mut P, conn: &mut Conn<P>) {
        for notice in conn.notices.drain(..) {
            self.reports.do_send(Report { connection: self.spec.id.clone(), what: Reported::Notice(notice) });
        }
        let ack = self.acks.batch(protocol.written());
        if conn.events.is_empty() {
            // Nothing to write: the work runs once the batches before it are written.
            return;
        }
        let events = std::mem::take(&mut conn.events);
        let count = events.len();
        self.stats.add_messages(count as u64, Utc::now().timestamp_millis());
        let unsent = ack.clone();
        match self.planner.send(Batch { connection: self.spec.id.clone(), events, ack }).await {
            Ok(0) => {}
            Ok(duplicates) => {
                self.stats.counters().duplicates.inc_by(duplicates as u64);
            }
            Err(_) => {
                if let Some(a) = &unsent {
                    a.lost();
                }
                tracing::error!(connection = %self.spec.id, lost = count, "the planner is gone; a batch was not delivered")
            }
        }
    }
}

async fn attempt<P: Protocol>(mut protocol: P, mut io: Io<P>) -> (P, Liveness, AttemptEnd) {
    let mut connected_at = None;
    let result = run(&mut protocol, &mut io, &mut connected_at).await;
    // Commands that arrived as it ended still count for the next connect.
    while let Ok(command) = io.commands.try_recv() {
        protocol.apply(command, &io.stats);
    }
    protocol.closed(connected_at.is_some(), &result);
    let healthy = connected_at.is_some_and(|t: Instant| t.elapsed() >= io.spec.reset_after);
    (protocol, io.liveness, AttemptEnd { result, healthy })
}

async fn run<P: Protocol>(protocol: &mut P, io: &mut Io<P>, connected_at: &mut Option<Instant>) -> StreamError {
    let mut conn = Conn::new(io.spec.clone(), io.stats.clone());
    let opened = tokio::select! {
        r = protocol.open(&mut conn) => r,
        _ = io.stop.notified() => return StreamError::stopped(),
    };
    let mut link = match opened {
        Ok(link) => link,
        Err(e) => return e,
    };
    *connected_at = Some(Instant::now());
    io.liveness.connected();
    io.stats.set_silent(false);
    io.stats.connection_opened();
    io.stats.set_state(ConnectionState::Connected);
    tracing::info!(connection = %io.spec.id, "connected");
    let opened = protocol.opened(&mut link, &mut conn).await;
    io.flush(protocol, &mut conn).await;
    io.reports.do_send(Report { connection: io.spec.id.clone(), what: Reported::Connected });
    if let Err(e) = opened {
        return e;
    }

    let mut last_read = tokio::time::Instant::now();
    loop {
        let deadline = last_read + io.spec.stall_timeout;
        let silent_at = io.liveness.deadline();
        let mut end = None;
        tokio::select! {
            biased;
            // A stop ends the loop only here, between batches.
            _ = io.stop.notified() => {
                link.close().await;
                return StreamError::stopped();
            }
            Some(command) = io.commands.recv() => {
                protocol.apply(command, &io.stats);
                while let Ok(more) = io.commands.try_recv() {
                    protocol.apply(more, &io.stats);
                }
                if let Err(e) = protocol.sync(&mut link, &mut conn).await {
                    end = Some(e);
                }
            }
            _ = tokio::time::sleep_until(silent_at) => {
                let bound = io.liveness.bound();
                io.liveness.probed();
                io.stats.set_silent(true);
                io.stats.counters().liveness_probes.inc();
                match protocol.silent(&mut conn) {
                    Silence::Reconnect => {
                        tracing::warn!(connection = %io.spec.id, silent_s = bound.as_secs_f64(), "no event within the liveness bound; reconnecting");
                        end = Some(StreamError::Retryable(DisconnectCause::Silent));
                    }
                    Silence::Probing => {
                        tracing::info!(connection = %io.spec.id, silent_s = bound.as_secs_f64(), "no event within the liveness bound; probing");
                    }
                }
            }
            done = protocol.side() => {
                if protocol.side_done(done, &mut conn) {
                    if let Err(e) = protocol.sync(&mut link, &mut conn).await {
                        end = Some(e);
                    }
                }
            }
            read = tokio::time::timeout_at(deadline, link.next()) => {
                match read {
                    Err(_) => end = Some(StreamError::Retryable(DisconnectCause::Stall)),
                    Ok(Err(e)) => end = Some(e),
                    Ok(Ok(input)) => {
                        last_read = tokio::time::Instant::now();
                        end = protocol.input(input, &mut conn);
                        // Whatever the socket already holds joins this batch.
                        while end.is_none() && conn.queued() < MAX_BATCH_EVENTS {
                            match link.next().now_or_never() {
                                None => break,
                                Some(Ok(input)) => end = protocol.input(input, &mut conn),
                                Some(Err(e)) => end = Some(e),
                            }
                        }
                        if conn.queued() > 0 {
                            io.liveness.events(conn.queued());
                            io.stats.set_liveness(io.liveness.usual_gap(), io.liveness.bound());
                        }
                    }
                }
                io.stats.add_bytes(link.take_bytes());
                if end.is_none() {
                    if let Err(e) = link.settle().await {
                        end = Some(e);
                    }
                }
            }
        }
        io.flush(protocol, &mut conn).await;
        if let Some(end) = end {
            return end;
        }
    }
}
