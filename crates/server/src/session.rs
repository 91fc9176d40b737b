//! One task per connection: reads frames in order, runs each operation, and writes the
//! connection's outbound queue to the socket in batches.
//!
//! Everything sent to a client, its own acks included, passes through its one bounded queue,
//! which is what gives FIFO per sender → receiver across every frame type (spec §14).

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::future::Either;
use futures_util::{FutureExt, SinkExt};
use herald_protocol::glob::{has_wildcard, Pattern};
use herald_protocol::validate::{is_reserved_channel, is_valid_channel, is_valid_target_peer_id};
use herald_protocol::{encode, parse_client_frame, Action, ClientOp, CloseCode, ErrorCode};
use rand::Rng;
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::auth::{AuthError, Identity};
use crate::clock::{unix_now, unix_now_ms};
use crate::close::CloseReason;
use crate::conn::{Conn, Frame, Outbound};
use crate::engine::{Departure, Direct, EngineError, Publication, SubscribeRequest, Target};
use crate::ids::{ChannelName, ConnId, PeerId};
use crate::limits::TokenBucket;
use crate::metrics::Metrics;
use crate::resubscribe::DuplicateSubscribes;
use crate::state::{ServerState, SessionGuard};

/// Frames written per flush; bounds the time the socket task spends away from reading.
const MAX_BATCH: usize = 64;
/// A write that stalls this long means the peer stopped reading; the session ends.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Scope-search work units (see `glob::covered_with_work`) that cost one extra rate token: the
/// full budget of one search (~1 ms of CPU) costs ~60 tokens, so a connection can force at most a
/// few such searches per second before its bucket closes it with 4011; honest patterns cost none.
const SCOPE_WORK_PER_TOKEN: usize = 1_000;
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
}

/// What the read side decided.
enum Flow {
    Continue,
    Close(CloseReason),
    /// The client went away (or closed); nothing more can be written.
    Gone,
}

impl Session {
    /// Runs one admitted connection; `_slot` holds its place in the node and app quotas until
    /// the session ends.
    async fn start(
        mut ws: WebSocket,
        state: Arc<ServerState>,
        identity: Identity,
        _slot: SessionGuard,
    ) {
        let limits = &state.config.limits;
        let (conn, rx) = Conn::with_limits(
            identity.app.id.clone(),
            identity.peer_id.clone(),
            identity.peer_metadata.clone(),
            identity.access.can(Action::Presence),
            identity.kind.as_str(),
            state.queue_limits(),
        );
        let welcome = encode::welcome(
            identity.peer_id.as_str(),
            identity.expires_at,
            unix_now(),
            limits.max_message_size,
            identity.welcome_metadata.as_deref(),
        );
        // Registered before the welcome is written, so a peer that has seen its welcome is
        // already reachable by `send`; anything routed meanwhile waits in the queue, which is
        // only drained after the welcome, so welcome stays the first frame.
        if let Err(err) = state.engine.register(&conn).await {
            tracing::warn!(conn = %conn.id, error = %err, "engine register failed");
            send_close(&mut ws, err.close_reason()).await;
            return;
        }
        if ws.send(Message::Text(welcome.into())).await.is_err() {
            state
                .engine
                .disconnect(&conn, Vec::new(), Departure::Dropped)
                .await;
            return;
        }
        state.metrics.frame_out("{\"type\":\"welcome\"");
        let (kind, app) = (identity.kind.as_str(), identity.app.id.as_str());
        state.metrics.connection_opened(kind, app);
        tracing::info!(conn = %conn.id, app = %identity.app.id, peer = %identity.peer_id, kind = identity.kind.as_str(), "connected");
        let bucket = TokenBucket::new(
            limits.rate_per_second,
            limits.rate_burst,
            Instant::now().into_std(),
        );
        let mut session = Session {
            state,
            identity,
            conn,
            subscriptions: HashSet::new(),
            bucket,
            client_closed: false,
            duplicates: DuplicateSubscribes::default(),
        };
        // A panic anywhere in the loop (a handler, the engine) ends only this session, and the
        // cleanup below still runs: no ghost presence, no leaked quota or gauge.
        let conn_id = session.conn.id;
        let reason = unwind_to_close(session.run(&mut ws, rx), conn_id).await;
        let subscriptions = session.subscriptions.drain().collect();
        let departure = departure(session.client_closed, reason);
        session
            .state
            .engine
            .disconnect(&session.conn, subscriptions, departure)
            .await;
        let metrics = &session.state.metrics;
        metrics.connection_closed(
            session.identity.kind.as_str(),
            session.identity.app.id.as_str(),
        );
        if let Some(reason) = reason {
            metrics.closed(reason.code.as_u16());
            if reason == CloseReason::SLOW_CONSUMER {
                metrics.slow_consumers.inc();
            } else if reason.code == CloseCode::OverMessageRate {
                metrics.rate_limited("message_rate");
            }
        }
        let code = reason.map(|r| r.code.as_u16());
        tracing::info!(conn = %session.conn.id, peer = %session.identity.peer_id, close = ?code, "disconnected");
        if let Some(reason) = reason {
            send_close(&mut ws, reason).await;
        }
    }

    /// The connection loop. Returns the close to send, or `None` when the client is gone.
    async fn run(&mut self, ws: &mut WebSocket, mut rx: Outbound) -> Option<CloseReason> {
        let timing = self.state.config.timing.clone();
        let ping_every = Duration::from_secs(timing.ping_interval_secs);
        let dead_after = ping_every + Duration::from_secs(timing.pong_grace_secs);
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut last_seen = Instant::now();
        let expiry = self
            .identity
            .expires_at
            .and_then(|exp| expiry_deadline(exp, timing.expiry_lead_ms, unix_now_ms()));
        let mut shutdown = self.state.shutdown_signal();
        if *shutdown.borrow() {
            // Shutdown began between the upgrade and now: still owe this client `going_away`.
            shutdown.mark_changed();
        }
        let mut going_away_until: Option<Instant> = None;
        let write_delay = Duration::from_millis(timing.write_delay_ms);
        let conn = self.conn.clone();
        loop {
            tokio::select! {
                biased;
                reason = conn.closed() => return Some(reason),
                _ = sleep_until_opt(expiry) => {
                    return Some(AuthError::Expired.close_reason());
                }
                _ = sleep_until_opt(going_away_until) => {
                    flush_pending(ws, &mut rx, &self.state.metrics).await;
                    return Some(CloseReason::new(CloseCode::GoingAway, "server shutting down"));
                }
                changed = shutdown.changed(), if going_away_until.is_none() => {
                    if changed.is_err() || *shutdown.borrow() {
                        let base = timing.going_away_retry_ms.max(1);
                        let retry = rand::rng().random_range(base / 2..=base + base / 2);
                        self.conn.deliver(encode::going_away(retry).into());
                        going_away_until = Some(Instant::now() + Duration::from_millis(timing.going_away_drain_ms));
                    }
                }
                Some(first) = rx.recv() => {
                    // A peer that stopped reading blocks this write; a close request (slow
                    // consumer, kick, shutdown) must still end the session at once.
                    tokio::select! {
                        written = async {
                            if !write_delay.is_zero() {
                                tokio::time::sleep(write_delay).await;
                            }
                            write_batch(ws, first, &mut rx, &self.state.metrics).await
                        } => {
                            if !written {
                                return None;
                            }
                        }
                        reason = conn.closed() => return Some(reason),
                    }
                }
                inbound = ws.recv() => {
                    last_seen = Instant::now();
                    let mut flow = self.on_inbound(inbound).await;
                    // Frames the client has already sent are handled before the replies they
                    // caused are written: a burst of N requests then costs one socket write for
                    // its N acks (and one wake-up per receiver), not N. Only frames that are
                    // ready now are taken, so nothing waits for more input; order is unchanged.
                    let mut handled = 1;
                    while matches!(flow, Flow::Continue) && handled < MAX_BATCH {
                        let Some(next) = ws.recv().now_or_never() else {
                            break;
                        };
                        flow = self.on_inbound(next).await;
                        handled += 1;
                    }
                    match flow {
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
                _ = ping.tick() => {
                    if last_seen.elapsed() > dead_after {
                        tracing::info!(conn = %self.conn.id, "no pong: reaping dead socket");
                        return None;
                    }
                    if ws.send(Message::Ping(Default::default())).await.is_err() {
                        return None;
                    }
                }
            }
        }
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
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Flow::Continue,
            Some(Ok(Message::Close(_))) => {
                self.client_closed = true;
                Flow::Gone
            }
        }
    }

    fn take_token(&mut self) -> bool {
        self.bucket.take(std::time::Instant::now())
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
            } => {
                self.subscribe(channel, include_sender_metadata, request_id)
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
            Err(OpError(code, message)) => self.reply_error(request_id, code, message),
        }
        Flow::Continue
    }

    /// Validation shared by subscribe and publish: name, reserved prefix (spec §5.1 steps 2-3).
    fn check_channel(channel: Option<String>) -> Result<String, OpError> {
        let channel = channel.ok_or(OpError(
            ErrorCode::InvalidChannel,
            "channel must be a string",
        ))?;
        if !is_valid_channel(&channel) {
            return Err(OpError(
                ErrorCode::InvalidChannel,
                "channel must be 1-256 bytes without control characters",
            ));
        }
        if is_reserved_channel(&channel) {
            return Err(OpError(
                ErrorCode::ChannelReserved,
                "channel prefix is reserved",
            ));
        }
        Ok(channel)
    }

    /// `data` may be as large as the advertised `welcome.maxMessageSize`, measured in bytes as
    /// received (what receivers get); the frame cap only leaves room for the envelope.
    fn check_data_size(&self, data: &RawValue) -> Result<(), OpError> {
        if data.get().len() > self.state.config.limits.max_message_size {
            return Err(OpError(
                ErrorCode::MalformedMessage,
                "data is larger than maxMessageSize",
            ));
        }
        Ok(())
    }

    fn require(&self, action: Action) -> Result<(), OpError> {
        if self.identity.access.can(action) {
            Ok(())
        } else {
            Err(OpError(
                ErrorCode::ActionNotPermitted,
                action_message(action),
            ))
        }
    }

    async fn subscribe(
        &mut self,
        channel: Option<String>,
        include_sender_metadata: bool,
        request_id: Option<&str>,
    ) -> Result<Acked, OpError> {
        let channel = Self::check_channel(channel)?;
        self.require(Action::Subscribe)?;
        let target = if has_wildcard(&channel) {
            if !self.state.config.wildcard_subscriptions {
                return Err(OpError(
                    ErrorCode::InvalidChannel,
                    "wildcard subscriptions are disabled",
                ));
            }
            let pattern = Pattern::parse(&channel);
            // Refused before the scope check, whose cost grows with the wildcard count.
            if pattern.is_too_complex() {
                return Err(OpError(
                    ErrorCode::InvalidChannel,
                    "pattern has too many wildcards",
                ));
            }
            let limit = self
                .state
                .config
                .limits
                .max_wildcard_subscriptions_per_connection;
            let held = self
                .subscriptions
                .iter()
                .filter(|n| has_wildcard(n.as_str()));
            if !self.subscriptions.contains(channel.as_str()) && held.count() >= limit {
                return Err(OpError(
                    ErrorCode::ChannelLimitExceeded,
                    "too many wildcard subscriptions on this connection",
                ));
            }
            let (allowed, work) = self.identity.access.check_pattern(&pattern);
            if work >= SCOPE_WORK_PER_TOKEN {
                // A costly scope search is paid for from this connection's own rate budget,
                // and the worker thread is handed back before the next frame.
                self.bucket.charge((work / SCOPE_WORK_PER_TOKEN) as f64);
                tokio::task::yield_now().await;
            }
            if !allowed {
                return Err(OpError(
                    ErrorCode::ChannelNotAuthorized,
                    "pattern not within allowed channels",
                ));
            }
            Target::Pattern(pattern)
        } else {
            if !self.identity.access.allows_channel(&channel) {
                return Err(OpError(
                    ErrorCode::ChannelNotAuthorized,
                    "channel not within allowed channels",
                ));
            }
            Target::Channel
        };
        let name = ChannelName::new(channel);
        let limit = self.state.config.limits.max_channels_per_connection;
        let duplicate = self.subscriptions.contains(&name);
        if !duplicate && self.subscriptions.len() >= limit {
            return Err(OpError(
                ErrorCode::ChannelLimitExceeded,
                "too many subscriptions on this connection",
            ));
        }
        if duplicate && !self.duplicates.allows(&name, self.conn.progress()) {
            // Refused before any snapshot is encoded; the session ends as a slow consumer.
            self.conn.close(CloseReason::SLOW_CONSUMER);
            return Ok(Acked::Done);
        }
        let request = SubscribeRequest {
            conn: &self.conn,
            channel: &name,
            target,
            include_sender_metadata,
            ack: request_id.map(|id| encode::ack(id).into()),
            max_app_patterns: self.state.config.limits.max_wildcard_patterns_per_app,
        };
        self.state.engine.subscribe(request).await?;
        if duplicate {
            self.duplicates.queued(&name, self.conn.progress());
        }
        self.subscriptions.insert(name);
        Ok(Acked::Done)
    }

    async fn unsubscribe(&mut self, channel: Option<String>) -> Result<Acked, OpError> {
        let channel = channel.filter(|c| is_valid_channel(c)).ok_or(OpError(
            ErrorCode::InvalidChannel,
            "channel must be 1-256 bytes without control characters",
        ))?;
        let name = ChannelName::new(channel);
        if self.subscriptions.remove(&name) {
            self.duplicates.forget(&name);
            self.state.engine.unsubscribe(&self.conn, &name).await?;
        }
        Ok(Acked::Pending)
    }

    async fn publish(
        &mut self,
        channel: Option<String>,
        data: Option<&RawValue>,
    ) -> Result<Acked, OpError> {
        let channel = Self::check_channel(channel)?;
        if has_wildcard(&channel) {
            return Err(OpError(
                ErrorCode::InvalidChannel,
                "cannot publish to a wildcard pattern",
            ));
        }
        let data = data.ok_or(OpError(
            ErrorCode::MissingData,
            "publish needs a data field",
        ))?;
        self.check_data_size(data)?;
        self.require(Action::Publish)?;
        if !self.identity.access.allows_channel(&channel) {
            return Err(OpError(
                ErrorCode::ChannelNotAuthorized,
                "channel not within allowed channels",
            ));
        }
        let name = ChannelName::new(channel);
        let publication = Publication {
            app: &self.identity.app.id,
            channel: &name,
            from: &self.identity.peer_id,
            from_metadata: self.identity.peer_metadata.as_deref(),
            data,
            exclude: Some(&self.conn),
        };
        let started = std::time::Instant::now();
        let result = self.state.engine.publish(publication).await;
        self.state
            .metrics
            .fanout_seconds
            .observe(started.elapsed().as_secs_f64());
        result?;
        Ok(Acked::Pending)
    }

    async fn send(
        &mut self,
        to: Option<String>,
        data: Option<&RawValue>,
    ) -> Result<Acked, OpError> {
        let to = to.filter(|t| is_valid_target_peer_id(t)).ok_or(OpError(
            ErrorCode::InvalidPeerId,
            "to must be 1-128 bytes without control characters",
        ))?;
        let data = data.ok_or(OpError(ErrorCode::MissingData, "send needs a data field"))?;
        self.check_data_size(data)?;
        self.require(Action::Send)?;
        let to = PeerId::new(to);
        let direct = Direct {
            app: &self.identity.app.id,
            to: &to,
            from: &self.identity.peer_id,
            from_metadata: self.identity.peer_metadata.as_deref(),
            data,
            exclude: Some(&self.conn),
        };
        match self.state.engine.send_direct(direct).await {
            Ok(0) => Err(OpError(ErrorCode::PeerNotFound, "peer is not connected")),
            Ok(_) => Ok(Acked::Pending),
            Err(err) => Err(err.into()),
        }
    }
}

/// Whether the caller still owes the client an ack.
enum Acked {
    Pending,
    Done,
}

/// A per-request failure: answered with an `error` frame, the socket stays open.
struct OpError(ErrorCode, &'static str);

/// The engine's failures answer with the one mapping in `errors.rs`.
impl From<EngineError> for OpError {
    fn from(err: EngineError) -> Self {
        let (code, message) = err.wire();
        OpError(code, message)
    }
}

fn action_message(action: Action) -> &'static str {
    match action {
        Action::Publish => "publish is not permitted for this connection",
        Action::Subscribe => "subscribe is not permitted for this connection",
        Action::Presence => "presence is not permitted for this connection",
        Action::Send => "send is not permitted for this connection",
    }
}

/// Whether the peer left on purpose (presence goes at once) or dropped and may come straight
/// back (an engine may keep its presence for a grace period, so a reconnect does not flap).
fn departure(client_closed: bool, reason: Option<CloseReason>) -> Departure {
    let deliberate = client_closed || reason.is_some_and(|r| r.code.is_terminal_for_sdks());
    if deliberate {
        Departure::Left
    } else if reason.is_some_and(|r| r.code == CloseCode::GoingAway) {
        Departure::Shutdown
    } else {
        Departure::Dropped
    }
}

fn rate_limited() -> Flow {
    Flow::Close(CloseReason::new(
        CloseCode::OverMessageRate,
        "message rate exceeded",
    ))
}

/// Maps WebSocket read errors to the close the spec asks for (1009 too big, 1007 bad UTF-8).
fn classify_read_error(err: &axum::Error) -> Flow {
    use std::error::Error as _;
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(ws_err) = e.downcast_ref::<tokio_tungstenite_error::Error>() {
            return match ws_err {
                tokio_tungstenite_error::Error::Capacity(_) => Flow::Close(CloseReason::new(
                    CloseCode::MessageTooBig,
                    "message too big",
                )),
                tokio_tungstenite_error::Error::Utf8(_) => {
                    Flow::Close(CloseReason::new(CloseCode::InvalidPayload, "invalid UTF-8"))
                }
                _ => Flow::Gone,
            };
        }
        source = e.source();
    }
    Flow::Gone
}

/// The WebSocket library behind `axum::Error`.
mod tokio_tungstenite_error {
    pub use tokio_tungstenite::tungstenite::Error;
}

/// When a token expiring at `exp` (Unix seconds) must be closed, `lead_ms` early. Saturating
/// math: a token with an absurd `exp` (near `i64::MAX`) gets a deadline centuries away, or
/// `None` where the platform's clock cannot represent it, and never an overflow.
fn expiry_deadline(exp: i64, lead_ms: u64, now_ms: i64) -> Option<Instant> {
    let lead_ms = i64::try_from(lead_ms).unwrap_or(i64::MAX);
    let ms_left = exp
        .saturating_mul(1000)
        .saturating_sub(lead_ms)
        .saturating_sub(now_ms);
    let ms_left = u64::try_from(ms_left).unwrap_or(0);
    Instant::now().checked_add(Duration::from_millis(ms_left))
}

/// Runs the session loop, turning a panic into a close with 1011, so that the caller's cleanup
/// always runs.
async fn unwind_to_close(
    run: impl std::future::Future<Output = Option<CloseReason>>,
    conn: ConnId,
) -> Option<CloseReason> {
    match AssertUnwindSafe(run).catch_unwind().await {
        Ok(reason) => reason,
        Err(_) => {
            tracing::error!(conn = %conn, "session panicked; closing it");
            Some(CloseReason::new(CloseCode::InternalError, "internal error"))
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes `first` and whatever else is already queued (up to a batch), then flushes once.
async fn write_batch(
    ws: &mut WebSocket,
    first: Frame,
    rx: &mut Outbound,
    metrics: &Metrics,
) -> bool {
    let write = async {
        metrics.frame_out(first.as_str());
        ws.feed(Message::Text(first)).await?;
        for _ in 1..MAX_BATCH {
            match rx.try_recv() {
                Some(frame) => {
                    metrics.frame_out(frame.as_str());
                    ws.feed(Message::Text(frame)).await?
                }
                None => break,
            }
        }
        ws.flush().await
    };
    let written = matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())));
    if written {
        // The frames reached the socket: the connection and the node stop being charged.
        rx.written();
    }
    written
}

/// Best-effort delivery of what is already queued (used before a graceful close).
async fn flush_pending(ws: &mut WebSocket, rx: &mut Outbound, metrics: &Metrics) {
    while let Some(frame) = rx.try_recv() {
        if !write_batch(ws, frame, rx, metrics).await {
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ids::{AppId, PeerId};

    #[test]
    fn an_absurd_exp_never_overflows_and_never_expires() {
        let now_ms = 1_700_000_000_000;
        let year = Duration::from_secs(365 * 24 * 3600);
        for (exp, lead) in [(i64::MAX, 5000), (i64::MAX / 1000, 5000), (i64::MAX, 0)] {
            // Far away (or unrepresentable, then no deadline at all), but no overflow.
            let deadline = expiry_deadline(exp, lead, now_ms);
            assert!(
                deadline.is_none_or(|at| at > Instant::now() + year),
                "{exp} {lead}"
            );
        }
        // A past exp closes at once; a normal one closes `lead` early.
        let before = Instant::now();
        let past = expiry_deadline(i64::MIN, 0, now_ms).unwrap();
        assert!(past >= before && past <= Instant::now());
        let soon = expiry_deadline(now_ms / 1000 + 60, 5000, now_ms).unwrap();
        let left = soon - Instant::now();
        assert!(left <= Duration::from_secs(55) && left > Duration::from_secs(54));
    }

    #[tokio::test]
    async fn a_panicking_session_loop_still_returns_a_close_for_the_cleanup() {
        let (conn, _rx) = Conn::new(
            AppId::new("app".to_string()),
            PeerId::new("p".to_string()),
            None,
            true,
            "publishable",
            8,
        );
        let panicking = async {
            if conn.close_requested().is_none() {
                panic!("handler bug");
            }
            None
        };
        let reason = unwind_to_close(panicking, conn.id).await;
        assert_eq!(reason.map(|r| r.code), Some(CloseCode::InternalError));
        let fine = unwind_to_close(async { Some(CloseReason::SLOW_CONSUMER) }, conn.id).await;
        assert_eq!(fine, Some(CloseReason::SLOW_CONSUMER));
    }
}
