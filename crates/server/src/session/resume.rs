//! The session's part of lossless reconnect (`resume/`): the watermark ping and its pong,
//! parking a stable peer that dropped, and which subscribes resume.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use herald_protocol::glob::has_wildcard;
use herald_protocol::{encode, StreamPosition};

use super::write::write_batch;
use super::Session;
use crate::auth::CredentialKind;
use crate::conn::Outbound;
use crate::engine::{EngineError, SubscribeRequest, Target};
use crate::ids::ChannelName;
use crate::resume::metrics::ResumeKind;
use crate::resume::watermark::Watermark;
use crate::resume::{Recovery, ResumeFrom, ResumeSettings, Since};

impl Session {
    fn resume_settings(&self) -> ResumeSettings {
        let config = &self.state.config;
        ResumeSettings::from_config(&config.history, config.limits.outbound_queue_frames)
    }

    /// A stable peer id (a JWT's `sub`) can come back and be recognised; a publishable key's
    /// peer id is fresh per connection, so nothing is tracked for it.
    fn is_stable(&self) -> bool {
        self.identity.kind == CredentialKind::Token
    }

    pub(super) fn new_watermark(&self) -> Option<Box<Watermark>> {
        let settings = self.resume_settings();
        (self.is_stable() && settings.enabled())
            .then(|| Box::new(Watermark::new(settings.confirm_after)))
    }

    /// Reads the positions of this connection's history channels (under each channel's lock:
    /// every message up to them is in the queue by then), writes the whole queue, then pings.
    /// False when the socket failed.
    pub(super) async fn watermark_ping(&mut self, ws: &mut WebSocket, rx: &mut Outbound) -> bool {
        let engine = &self.state.engine;
        let channels: Vec<ChannelName> = self
            .subscriptions
            .iter()
            .filter(|c| !has_wildcard(c.as_str()) && engine.keeps_history(c))
            .cloned()
            .collect();
        let positions = if channels.is_empty() {
            Vec::new()
        } else {
            engine.positions(&self.identity.app.id, &channels).await
        };
        let Some(watermark) = &mut self.watermark else {
            return true;
        };
        if positions.is_empty() {
            // Nothing to confirm: no ping.
            watermark.skip();
            return true;
        }
        // Every message up to the positions is among the frames queued so far; those are
        // written before the ping (and no more, so a flood cannot keep this loop going).
        let target = self.conn.progress().queued;
        let mut flushed = false;
        while self.conn.progress().written < target {
            let Some(frame) = rx.try_recv() else {
                break;
            };
            if !write_batch(ws, frame, rx, &self.state.metrics).await {
                return false;
            }
            flushed = true;
        }
        let payload = watermark.ping(positions);
        if flushed {
            // Some of those frames may be newer than the positions read: the next ping covers
            // them.
            watermark.written();
        }
        self.state.metrics.resume.watermark_pings.inc();
        ws.send(Message::Ping(payload.into())).await.is_ok()
    }

    pub(super) fn on_pong(&mut self, payload: &[u8]) {
        if let Some(watermark) = &mut self.watermark {
            if watermark.pong(payload) {
                self.state.metrics.resume.watermark_confirmed.inc();
            }
        }
    }

    /// The connection dropped: a stable peer's confirmed positions and an inbox are kept for
    /// the resume window (the engine unregisters the connection in the same step).
    pub(super) async fn park(&mut self) {
        let Some(watermark) = &self.watermark else {
            return;
        };
        let positions = watermark
            .confirmed()
            .into_iter()
            .filter(|(c, _)| self.subscriptions.contains(c))
            .collect();
        self.state.engine.park(&self.conn, positions).await;
    }

    /// The channel was unsubscribed: its position is no longer this connection's to resume.
    pub(super) fn forget_position(&mut self, channel: &ChannelName) {
        if let Some(watermark) = &mut self.watermark {
            watermark.forget(channel);
        }
    }

    /// What a subscribe resumes from: the client's own `since`, or else, for a stable peer's
    /// new subscription to a history channel, the position it left inside its window. An
    /// explicit `since` also takes (and drops) a parked one.
    pub(super) async fn resume_from(
        &self,
        channel: &ChannelName,
        target: &Target,
        duplicate: bool,
        since: Option<Option<StreamPosition>>,
        request_id: Option<&str>,
    ) -> Option<(ResumeFrom, ResumeKind)> {
        let engine = &self.state.engine;
        let resumable = self.watermark.is_some()
            && !duplicate
            && matches!(target, Target::Channel)
            && engine.keeps_history(channel);
        let parked = if resumable {
            let (app, peer) = (&self.identity.app.id, &self.identity.peer_id);
            engine.take_position(app, peer, channel).await
        } else {
            None
        };
        let max_replay = self.resume_settings().max_replay;
        if let Some(since) = since {
            // A malformed `since` names an epoch no channel has: never recovered.
            let since = since.map_or(
                Since {
                    epoch: Some(Arc::from("")),
                    offset: 0,
                },
                |p| Since {
                    epoch: Some(Arc::from(p.epoch)),
                    offset: p.offset,
                },
            );
            let acks = request_id.map(|id| {
                (
                    encode::ack_recovered(id, true).into(),
                    encode::ack_recovered(id, false).into(),
                )
            });
            let from = ResumeFrom {
                since,
                acks,
                max_replay,
            };
            return Some((from, ResumeKind::Explicit));
        }
        let from = ResumeFrom {
            since: parked?,
            acks: None,
            max_replay,
        };
        Some((from, ResumeKind::Transparent))
    }

    /// Subscribes with a resume, counting it; a full replay seeds the watermark (the client
    /// holds everything up to `since`, even if it drops again before the next pong).
    pub(super) async fn subscribe_resuming(
        &mut self,
        request: SubscribeRequest<'_>,
        from: ResumeFrom,
        kind: ResumeKind,
    ) -> Result<(), EngineError> {
        let metrics = &self.state.metrics.resume;
        metrics.attempted(kind);
        let channel = request.channel.clone();
        let since = from.since.clone();
        let (_, recovery) = self.state.engine.subscribe_from(request, from).await?;
        match recovery {
            Recovery::Recovered { replayed } => {
                metrics.succeeded(kind, replayed);
                if let Some(watermark) = &mut self.watermark {
                    watermark.seed(channel, since);
                }
            }
            Recovery::Failed => metrics.failed(kind),
        }
        Ok(())
    }
}
