//! One task per connection: reads frames in order, runs each operation, and writes the
//! connection's outbound queue to the socket in batches.
//!
//! Everything sent to a client, its own acks included, passes through its one bounded queue,
//! which is what gives FIFO per sender → receiver across every frame type (spec §14).
//!
//! This file is the connection loop; `ops` holds the operations, `timers` the deadlines,
//! `write` the batched writes and `ending` how a session ends.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::future::Either;
use futures_util::{FutureExt, SinkExt};
use herald_protocol::{encode, parse_client_frame, Action, ClientOp, CloseCode, ErrorCode};
use tokio::time::Instant;

use crate::auth::{AuthError, Identity};
use crate::clock::{unix_now, unix_now_ms};
use crate::close::CloseReason;
use crate::conn::{Conn, Frame, Outbound};
use crate::engine::Departure;
use crate::ids::ChannelName;
use crate::limits::TokenBucket;
use crate::resubscribe::DuplicateSubscribes;
use crate::resume::watermark::Watermark;
use crate::state::{ServerState, SessionGuard};

use self::ending::{classify_read_error, departure, rate_limited, unwind_to_close};
use self::ops::{Acked, OpError};
use self::timers::{earliest, going_away_retry_ms, Beat, Deadline, Deadlines, Liveness};
use self::write::{flush_pending, write_batch, MAX_BATCH};

mod ending;
mod ops;
mod resume;
mod timers;
mod write;

/// How long the final close frame may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Entry point after the upgrade: refuse with a close code, or run the session.
///
/// It decides synchronously and returns one of two futures. An `async fn` that awaited the
/// session would keep its own arguments, among them the socket and the auth result, in the
/// task's state for the session's whole life. That second copy cost ~0.5 KB per connection
/// (BENCHMARKS.md).
pub fn serve(
    ws: WebSocket,
    state: Arc<ServerState>,
    auth: Result<Identity, AuthError>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let identity = match auth {
        Ok(identity) => identity,
        Err(err) => {
            tracing::info!(error = %err, code = err.close_reason().code.as_u16(), "connect refused");
            state.metrics.closed(err.close_reason().code.as_u16());
            return Either::Left(refuse(ws, err.close_reason()));
        }
    };
    let Some(slot) = state.admit(&identity.app) else {
        tracing::info!(app = %identity.app.id, "connect refused: over concurrent limit");
        state
            .metrics
            .closed(CloseCode::OverConcurrentLimit.as_u16());
        return Either::Left(refuse(
            ws,
            CloseReason::new(
                CloseCode::OverConcurrentLimit,
                "over concurrent connection limit",
            ),
        ));
    };
    Either::Right(Session::start(ws, state, identity, slot))
}

async fn refuse(mut ws: WebSocket, reason: CloseReason) {
    send_close(&mut ws, reason).await;
}

async fn send_close(ws: &mut WebSocket, reason: CloseReason) {
    let frame = CloseFrame {
        code: reason.code.as_u16(),
        reason: reason.reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.send(Message::Close(Some(frame)))).await;
}

/// Per-connection state, owned by the session task alone.
struct Session {
    state: Arc<ServerState>,
    identity: Identity,
    conn: Arc<Conn>,
    /// This connection's subscriptions (exact names and patterns), for the limit and cleanup.
    subscriptions: HashSet<ChannelName>,
    bucket: TokenBucket,
    /// The client sent a close frame: it left on purpose.
    client_closed: bool,
    /// Snapshots queued by duplicate subscribes, so a client that does not read cannot ask
    /// for one snapshot after another.
    duplicates: DuplicateSubscribes,
    /// What this connection is known to have read, for a resume after a drop: only for a
    /// stable peer id with resume on (boxed: other connections pay one pointer).
    watermark: Option<Box<Watermark>>,
}

/// What the read side decided.
enum Flow {
    Continue,
    Close(CloseReason),
    /// The client went away (or closed); nothing more can be written.
    Gone,
}

impl Session {
    /// Sets up one admitted connection and returns its task; `slot` holds its place in the node
    /// and app quotas until the session ends.
    ///
    /// Synchronous for the same reason as [`serve`]: the session's state is built here, before
    /// the future exists, so the future holds it once (an `async fn` would keep the `Identity`
    /// argument beside the `Session` that it moved into).
    fn start(
        ws: WebSocket,
        state: Arc<ServerState>,
        identity: Identity,
        slot: SessionGuard,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let limits = &state.config.limits;
        let (conn, rx) = Conn::with_limits(
            identity.app.id.clone(),
            identity.peer_id.clone(),
            identity.peer_metadata.clone(),
            identity.access.can(Action::Presence),
            identity.kind.as_str(),
            state.queue_limits(),
        );
        let bucket = TokenBucket::new(limits.rate_per_second, limits.rate_burst, Instant::now());
        let mut session = Session {
            state,
            identity,
            conn,
            subscriptions: HashSet::new(),
            bucket,
            client_closed: false,
            duplicates: DuplicateSubscribes::default(),
            watermark: None,
        };
        session.watermark = session.new_watermark();
        session.live(ws, rx, slot)
    }

    /// Registers the connection, writes the welcome, runs the loop, then cleans up.
    async fn live(mut self, mut ws: WebSocket, rx: Outbound, _slot: SessionGuard) {
        let identity = &self.identity;
        let welcome = encode::welcome(
            identity.peer_id.as_str(),
            identity.expires_at,
            unix_now(),
            self.state.config.limits.max_message_size,
            identity.welcome_metadata.as_deref(),
        );
        // Registered before the welcome is written, so a peer that has seen its welcome is
        // already reachable by `send`; anything routed meanwhile waits in the queue, which is
        // only drained after the welcome, so welcome stays the first frame.
        if let Err(err) = self.state.engine.register(&self.conn).await {
            tracing::warn!(conn = %self.conn.id, error = %err, "engine register failed");
            send_close(&mut ws, err.close_reason()).await;
            return;
        }
        if ws.send(Message::Text(welcome.into())).await.is_err() {
            self.state
                .engine
                .disconnect(&self.conn, Vec::new(), Departure::Dropped)
                .await;
            return;
        }
        let identity = &self.identity;
        let metrics = &self.state.metrics;
        metrics.frame_out("{\"type\":\"welcome\"");
        metrics.connection_opened(identity.kind.as_str(), identity.app.id.as_str());
        tracing::info!(conn = %self.conn.id, app = %identity.app.id, peer = %identity.peer_id, kind = identity.kind.as_str(), "connected");
        // A panic anywhere in the loop (a handler, the engine) ends only this session, and the
        // cleanup below still runs: no ghost presence, no leaked quota or gauge.
        // Two statements: the loop's future must not outlive its own statement as a moved-from
        // temporary, which would hold its bytes twice across the await.
        let conn_id = self.conn.id;
        let run = unwind_to_close(self.run(&mut ws, rx), conn_id);
        let reason = run.await;
        let departure = departure(self.client_closed, reason);
        if departure == Departure::Dropped {
            self.park().await;
        }
        let subscriptions = self.subscriptions.drain().collect();
        self.state
            .engine
            .disconnect(&self.conn, subscriptions, departure)
            .await;
        let metrics = &self.state.metrics;
        metrics.connection_closed(self.identity.kind.as_str(), self.identity.app.id.as_str());
        if let Some(reason) = reason {
            metrics.closed(reason.code.as_u16());
            if reason == CloseReason::SLOW_CONSUMER {
                metrics.slow_consumers.inc();
            } else if reason.code == CloseCode::OverMessageRate {
                metrics.rate_limited("message_rate");
            }
        }
        let code = reason.map(|r| r.code.as_u16());
        tracing::info!(conn = %self.conn.id, peer = %self.identity.peer_id, close = ?code, "disconnected");
        if let Some(reason) = reason {
            send_close(&mut ws, reason).await;
        }
    }

    /// The connection loop. Returns the close to send, or `None` when the client is gone.
    ///
    /// Its future lives as long as the connection, so it is kept small (a test bounds it): one
    /// `Sleep` for every clock (token expiry, the shutdown drain, the watermark ping, the
    /// keepalive), set to the earliest, and the write path boxed, only while a batch is written.
    async fn run(&mut self, ws: &mut WebSocket, mut rx: Outbound) -> Option<CloseReason> {
        let timing = &self.state.config.timing;
        let mut liveness = Liveness::new(timing);
        let mut deadlines = Deadlines::new(
            self.identity.expires_at,
            timing.expiry_lead_ms,
            unix_now_ms(),
        );
        let mut shutdown = self.state.shutdown_signal();
        if *shutdown.borrow() {
            // Shutdown began between the upgrade and now: still owe this client `going_away`.
            shutdown.mark_changed();
        }
        let conn = self.conn.clone();
        let sleep = tokio::time::sleep_until(self.next_wake(&deadlines, &liveness));
        tokio::pin!(sleep);
        loop {
            let wake = self.next_wake(&deadlines, &liveness);
            if sleep.deadline() != wake {
                sleep.as_mut().reset(wake);
            }
            tokio::select! {
                biased;
                reason = conn.closed() => return Some(reason),
                () = &mut sleep => {
                    // Whatever set `wake` is due now (the timer never fires early; `max` makes
                    // sure of progress), so each turn here takes at least one thing off.
                    let now = Instant::now().max(wake);
                    match deadlines.due(now) {
                        Some(Deadline::Expired) => return Some(AuthError::Expired.close_reason()),
                        Some(Deadline::DrainOver) => {
                            Box::pin(flush_pending(ws, &mut rx, &self.state.metrics)).await;
                            return Some(CloseReason::new(CloseCode::GoingAway, "server shutting down"));
                        }
                        None => {}
                    }
                    if self.watermark_due().is_some_and(|at| at <= now) {
                        let ping = Box::pin(self.watermark_ping(ws, &mut rx));
                        tokio::select! {
                            sent = ping => if !sent {
                                return None;
                            },
                            reason = conn.closed() => return Some(reason),
                        }
                    } else if let Some(beat) = liveness.tick(now) {
                        if beat == Beat::Dead {
                            tracing::info!(conn = %self.conn.id, "no pong: reaping dead socket");
                            return None;
                        }
                        if ws.send(Message::Ping(Default::default())).await.is_err() {
                            return None;
                        }
                    }
                }
                changed = shutdown.changed(), if !deadlines.draining() => {
                    if changed.is_err() || *shutdown.borrow() {
                        let timing = &self.state.config.timing;
                        let retry = going_away_retry_ms(timing.going_away_retry_ms);
                        self.conn.deliver(encode::going_away(retry).into());
                        deadlines.start_drain(Duration::from_millis(timing.going_away_drain_ms));
                    }
                }
                Some(first) = rx.recv() => {
                    // A peer that stopped reading blocks this write; a close request (slow
                    // consumer, kick, shutdown) must still end the session at once.
                    let write = Box::pin(self.write(ws, first, &mut rx));
                    tokio::select! {
                        written = write => if !written {
                            return None;
                        },
                        reason = conn.closed() => return Some(reason),
                    }
                }
                inbound = ws.recv() => {
                    liveness.heard();
                    // Boxed, like the write: the operations' state exists only while frames
                    // are handled, not in every idle connection's task.
                    match Box::pin(self.on_inbound_burst(ws, inbound)).await {
                        Flow::Continue => {}
                        Flow::Close(reason) => return Some(reason),
                        Flow::Gone => {
                            // Sends the close reply tungstenite queued for a client-initiated
                            // close (RFC 6455 §5.5.1); a no-op error on a dead socket.
                            let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
                            return None;
                        }
                    }
                }
            }
        }
    }

    /// Handles `first` and the frames the client has already sent behind it.
    ///
    /// Frames the client has already sent are handled before the replies they caused are
    /// written: a burst of N requests then costs one socket write for its N acks (and one
    /// wake-up per receiver), not N. Only frames that are ready now are taken, so nothing
    /// waits for more input; order is unchanged.
    async fn on_inbound_burst(
        &mut self,
        ws: &mut WebSocket,
        first: Option<Result<Message, axum::Error>>,
    ) -> Flow {
        let mut flow = self.on_inbound(first).await;
        let mut handled = 1;
        while matches!(flow, Flow::Continue) && handled < MAX_BATCH {
            let Some(next) = ws.recv().now_or_never() else {
                break;
            };
            flow = self.on_inbound(next).await;
            handled += 1;
        }
        flow
    }

    /// When the session's one timer must next fire: the earliest of its clocks.
    fn next_wake(&self, deadlines: &Deadlines, liveness: &Liveness) -> Instant {
        let at = earliest(deadlines.next(), self.watermark_due());
        earliest(at, Some(liveness.next_tick())).unwrap_or_else(|| liveness.next_tick())
    }

    fn watermark_due(&self) -> Option<Instant> {
        self.watermark.as_ref().and_then(|w| w.due())
    }

    /// Writes `first` and what is queued behind it (after the configured write delay), and
    /// notes the write for the watermark. False when the socket failed.
    async fn write(&mut self, ws: &mut WebSocket, first: Frame, rx: &mut Outbound) -> bool {
        let delay = self.state.config.timing.write_delay_ms;
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if !write_batch(ws, first, rx, &self.state.metrics).await {
            return false;
        }
        if let Some(watermark) = &mut self.watermark {
            watermark.written();
        }
        true
    }

    async fn on_inbound(&mut self, inbound: Option<Result<Message, axum::Error>>) -> Flow {
        let max_frame = self.state.config.limits.max_frame_bytes;
        match inbound {
            None => Flow::Gone,
            Some(Err(err)) => classify_read_error(&err),
            Some(Ok(Message::Text(text))) => {
                if text.len() > max_frame {
                    return Flow::Close(CloseReason::new(
                        CloseCode::MessageTooBig,
                        "message too big",
                    ));
                }
                self.on_text(text.as_str()).await
            }
            Some(Ok(Message::Binary(_))) => {
                if !self.take_token() {
                    return rate_limited();
                }
                self.reply_error(
                    None,
                    ErrorCode::MalformedMessage,
                    "binary frames are not supported",
                );
                Flow::Continue
            }
            Some(Ok(Message::Pong(payload))) => {
                self.on_pong(&payload);
                Flow::Continue
            }
            Some(Ok(Message::Ping(_))) => Flow::Continue,
            Some(Ok(Message::Close(_))) => {
                self.client_closed = true;
                Flow::Gone
            }
        }
    }

    fn take_token(&mut self) -> bool {
        self.bucket.take(Instant::now())
    }

    fn reply(&self, frame: String) {
        self.conn.deliver(frame.into());
    }

    fn reply_error(&self, request_id: Option<&str>, code: ErrorCode, message: &str) {
        self.state.metrics.error_sent(code);
        self.reply(encode::error(request_id, code, message));
    }

    async fn on_text(&mut self, text: &str) -> Flow {
        let frame = match parse_client_frame(text, self.state.config.limits.max_json_depth) {
            Ok(frame) => frame,
            Err(err) => {
                self.state.metrics.frame_in("invalid");
                if !self.take_token() {
                    return rate_limited();
                }
                self.reply_error(err.request_id.as_deref(), err.code, err.message);
                return Flow::Continue;
            }
        };
        let request_id = frame.request_id.as_deref();
        self.state.metrics.frame_in(frame.op.kind());
        if !matches!(frame.op, ClientOp::Ping) && !self.take_token() {
            return rate_limited();
        }
        if matches!(frame.op, ClientOp::Publish { .. } | ClientOp::Send { .. }) {
            // `messagesUsed` (spec §13.7) counts every publish and send attempt.
            (self.identity.app.messages_used).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let result = match frame.op {
            ClientOp::Ping => {
                self.reply(encode::pong(request_id));
                return Flow::Continue;
            }
            ClientOp::Subscribe {
                channel,
                include_sender_metadata,
                since,
            } => {
                self.subscribe(channel, include_sender_metadata, since, request_id)
                    .await
            }
            ClientOp::Unsubscribe { channel } => self.unsubscribe(channel).await,
            ClientOp::Publish { channel, data } => self.publish(channel, data).await,
            ClientOp::Send { to, data } => self.send(to, data).await,
        };
        match result {
            // Subscribe enqueues its own ack (it must precede the snapshot).
            Ok(Acked::Done) => {}
            Ok(Acked::Pending) => {
                if let Some(id) = request_id {
                    self.reply(encode::ack(id));
                }
            }
            Ok(Acked::Queued) => {
                if let Some(id) = request_id {
                    self.reply(encode::ack_queued(id));
                }
            }
            Err(OpError(code, message)) => self.reply_error(request_id, code, message),
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod size_tests;
