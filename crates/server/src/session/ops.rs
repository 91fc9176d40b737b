//! The four client operations that reach the engine (subscribe, unsubscribe, publish, send):
//! each runs the spec's checks in order, then calls the engine. A failed check is an `error`
//! frame for that request; the connection stays open.

use herald_protocol::glob::{has_wildcard, Pattern};
use herald_protocol::validate::{is_reserved_channel, is_valid_channel, is_valid_target_peer_id};
use herald_protocol::{encode, Action, ErrorCode, StreamPosition};
use serde_json::value::RawValue;

use super::Session;
use crate::close::CloseReason;
use crate::engine::{Direct, EngineError, Publication, SubscribeRequest, Target};
use crate::ids::{ChannelName, PeerId};
use crate::resume::book::Queued;

/// Scope-search work units (see `glob::covered_with_work`) that cost one extra rate token: the
/// full budget of one search (~1 ms of CPU) costs ~60 tokens, so a connection can force at most a
/// few such searches per second before its bucket closes it with 4011; honest patterns cost none.
const SCOPE_WORK_PER_TOKEN: usize = 1_000;

impl Session {
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

    pub(super) async fn subscribe(
        &mut self,
        channel: Option<String>,
        include_sender_metadata: bool,
        since: Option<Option<StreamPosition>>,
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
        let resume = self
            .resume_from(&name, &target, duplicate, since, request_id)
            .await;
        let conn = self.conn.clone();
        let request = SubscribeRequest {
            conn: &conn,
            channel: &name,
            target,
            include_sender_metadata,
            ack: request_id.map(|id| encode::ack(id).into()),
            max_app_patterns: self.state.config.limits.max_wildcard_patterns_per_app,
        };
        match resume {
            Some((from, kind)) => self.subscribe_resuming(request, from, kind).await?,
            None => {
                self.state.engine.subscribe(request).await?;
            }
        }
        if duplicate {
            self.duplicates.queued(&name, self.conn.progress());
        }
        self.subscriptions.insert(name);
        Ok(Acked::Done)
    }

    pub(super) async fn unsubscribe(&mut self, channel: Option<String>) -> Result<Acked, OpError> {
        let channel = channel.filter(|c| is_valid_channel(c)).ok_or(OpError(
            ErrorCode::InvalidChannel,
            "channel must be 1-256 bytes without control characters",
        ))?;
        let name = ChannelName::new(channel);
        if self.subscriptions.remove(&name) {
            self.duplicates.forget(&name);
            self.forget_position(&name);
            self.state.engine.unsubscribe(&self.conn, &name).await?;
        }
        Ok(Acked::Pending)
    }

    pub(super) async fn publish(
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

    pub(super) async fn send(
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
        let not_found = OpError(ErrorCode::PeerNotFound, "peer is not connected");
        let engine = &self.state.engine;
        if engine.send_direct(direct).await? > 0 {
            return Ok(Acked::Pending);
        }
        // Nobody live: a peer that dropped inside its resume window gets it on its return.
        match engine.queue_direct(direct).await? {
            Queued::Live(_) => Ok(Acked::Pending),
            Queued::Queued => {
                self.state.metrics.resume.directs_queued.inc();
                Ok(Acked::Queued)
            }
            Queued::NotParked | Queued::Full => Err(not_found),
        }
    }
}

/// Whether the caller still owes the client an ack.
pub(super) enum Acked {
    Pending,
    /// The ack of a `send` held for a dropped peer (it says `queued`).
    Queued,
    Done,
}

/// A per-request failure: answered with an `error` frame, the socket stays open.
pub(super) struct OpError(pub(super) ErrorCode, pub(super) &'static str);

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
