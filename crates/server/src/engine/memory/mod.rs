//! The in-memory engine: the node-local hub plus an in-process roster per channel. It serves a
//! single node and needs nothing else.
//!
//! Presence ordering is atomic because a subscribe queues its ack, its snapshot and the
//! `joined` to others under the channel's lock (see `hub/` for the lock order).
//!
//! Presence follows the same departure rules as the Redis engine: a deliberate leave is
//! announced at once, a dropped connection's peer stays in the roster for
//! `engine.reconnect_grace_ms` so a quick reconnect shows no `left`/`joined` (`roster.rs`).

mod history;
mod online;
mod resume;
mod roster;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::encode;
use herald_protocol::glob::has_wildcard;

use super::hub::occupancy::OccupancyRules;
use super::hub::{channel_key, MessageFrames};
use super::{
    ChannelSummary, Departure, Direct, Engine, EngineError, EngineStats, Member, Occupancy,
    Publication, SubscribeRequest, Target,
};
use crate::close::CloseReason;
use crate::config::Config;
use crate::conn::{Conn, Frame};
use crate::history::{History, Page, PageQuery};
use crate::ids::{AppId, ChannelName, PeerId};
use crate::resume::book::{BookStats, Queued, ResumeBook};
use crate::resume::{Recovery, ResumeFrom, ResumeSettings, Since};
use online::PeerEnd;
pub use roster::{Removal, Rosters};

/// How a memory engine treats presence; [`MemorySettings::from_config`] is what a node runs.
#[derive(Default)]
pub struct MemorySettings {
    /// How long a dropped peer stays in the roster (`engine.reconnect_grace_ms`).
    pub grace: Duration,
    /// The window presence deltas are coalesced over under load (`timing.presence_coalesce_ms`).
    pub coalesce: Duration,
    /// Roster caps of large rooms (`[presence]`).
    pub rules: OccupancyRules,
    /// Which channels keep history, and where (`[history]`; none by default).
    pub history: History,
    /// Lossless reconnect of stable peers (`[history]` `resume_*`, `direct_inbox_*`; off by
    /// default here, on in a node's config).
    pub resume: ResumeSettings,
    /// The webhook outbox kept on disk (`[history] store = "disk"`), started when webhooks
    /// attach; none keeps it in memory only.
    pub webhook_outbox: Option<crate::webhooks::durable::DurableOutbox>,
}

impl MemorySettings {
    pub fn from_config(config: &Config) -> Self {
        MemorySettings {
            grace: Duration::from_millis(config.engine.reconnect_grace_ms),
            coalesce: Duration::from_millis(config.timing.presence_coalesce_ms),
            rules: OccupancyRules::new(&config.presence),
            history: History::from_config(&config.history),
            resume: ResumeSettings::from_config(
                &config.history,
                config.limits.outbound_queue_frames,
            ),
            webhook_outbox: None,
        }
    }
}

/// How often history entries past their age are dropped from channels nobody reads or writes
/// (reads never return them; this gives their memory back).
const HISTORY_EXPIRY_PERIOD: Duration = Duration::from_secs(5);

/// The default single-node engine.
pub struct MemoryEngine {
    /// Shared with the grace timers, which outlive the call that started them.
    state: Arc<Rosters>,
    /// Dropped stable peers' positions and inboxes (`resume.rs`).
    book: Arc<ResumeBook>,
    /// Until webhooks attach (`MemorySettings::webhook_outbox`).
    webhook_outbox: std::sync::Mutex<Option<crate::webhooks::durable::DurableOutbox>>,
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryEngine {
    /// An engine without reconnect grace, coalescing or roster caps: every departure but a
    /// shutdown announces `left` at once (for tests that want exactly that).
    pub fn new() -> Self {
        Self::with_settings(MemorySettings::default())
    }

    /// An engine that holds a dropped peer's presence for `grace` (`engine.reconnect_grace_ms`).
    pub fn with_grace(grace: Duration) -> Self {
        Self::with_settings(MemorySettings {
            grace,
            ..MemorySettings::default()
        })
    }

    /// An engine whose presence deltas are coalesced over `window` under load
    /// (`timing.presence_coalesce_ms`), without reconnect grace.
    pub fn with_presence_coalescing(window: Duration) -> Self {
        Self::with_settings(MemorySettings {
            coalesce: window,
            ..MemorySettings::default()
        })
    }

    pub fn with_settings(mut settings: MemorySettings) -> Self {
        settings.history.spawn_expiry(HISTORY_EXPIRY_PERIOD);
        let book = Arc::new(ResumeBook::new(settings.resume));
        resume::spawn_sweep(&book);
        let webhook_outbox = std::sync::Mutex::new(settings.webhook_outbox.take());
        MemoryEngine {
            state: Arc::new(Rosters::new(settings)),
            book,
            webhook_outbox,
        }
    }

    /// The presence state, for tests that drive the grace on a paused clock.
    pub fn rosters(&self) -> &Arc<Rosters> {
        &self.state
    }

    /// Removes one subscription; the removal (a held peer's generation among them), or `None`
    /// when there was none.
    fn unsubscribe_any(
        &self,
        conn: &Conn,
        channel: &ChannelName,
        departure: Departure,
    ) -> Option<Removal> {
        if has_wildcard(channel.as_str()) {
            let removed = self.state.hub.patterns.remove(conn, channel, || {}).removed;
            if removed {
                self.state.hub.count_unsubscribed();
            }
            return removed.then_some(Removal::Kept);
        }
        self.state.unsubscribe_channel(conn, channel, departure)
    }
}

/// Waits out the grace of one dropped connection: each channel it held, then its peer's
/// online state, so a peer's `presence.left` events precede its `peer.offline`. One task per
/// dropped connection that held something, so the timers are bounded by the connections that
/// dropped in the last grace period.
fn spawn_grace(state: Arc<Rosters>, conn: &Conn, held: Vec<(ChannelName, u64)>, peer: PeerEnd) {
    if held.is_empty() && peer == PeerEnd::Settled {
        return;
    }
    let deadline = tokio::time::Instant::now() + state.grace;
    let (app, peer_id) = (conn.app.clone(), conn.peer_id.clone());
    tokio::spawn(async move {
        tokio::time::sleep_until(deadline).await;
        for (channel, generation) in held {
            state.grace_expired(&channel_key(&app, &channel), &peer_id, generation);
        }
        if let PeerEnd::Held(generation) = peer {
            state.announcer.grace_expired(&app, &peer_id, generation);
        }
    });
}

#[async_trait]
impl Engine for MemoryEngine {
    /// Directs held for the peer while it was away follow the welcome, in order.
    async fn register(&self, conn: &Arc<Conn>) -> Result<(), EngineError> {
        let peers = &self.state.hub.peers;
        if resume::is_stable(conn) {
            let register = || peers.register(conn);
            self.book
                .reconnect(&conn.app, &conn.peer_id, register, |frame| {
                    conn.deliver(frame);
                });
        } else {
            peers.register(conn);
        }
        self.state.announcer.connected(conn);
        Ok(())
    }

    /// A deliberate leave announces `left` at once; a drop holds the peer for the grace; a
    /// shutdown announces nothing: the node's presence dies with it (a timer would die too),
    /// and clients rebuild their rosters from the next snapshot wherever they reconnect.
    async fn disconnect(
        &self,
        conn: &Arc<Conn>,
        subscriptions: Vec<ChannelName>,
        departure: Departure,
    ) {
        let mut held = Vec::new();
        for channel in subscriptions {
            if let Some(Removal::Held(generation)) = self.unsubscribe_any(conn, &channel, departure)
            {
                held.push((channel, generation));
            }
        }
        self.state.hub.peers.unregister(conn);
        let grace = !self.state.grace.is_zero();
        let peer = self.state.announcer.disconnected(conn, departure, grace);
        spawn_grace(self.state.clone(), conn, held, peer);
    }

    fn attach_webhooks(&self, webhooks: Arc<crate::webhooks::Webhooks>) {
        // Before the announcer has them: stored events are queued ahead of any new one.
        if let Some(outbox) = crate::sync::lock(&self.webhook_outbox).take() {
            webhooks.make_durable(outbox);
        }
        self.state.announcer.attach(webhooks);
    }

    fn keeps_history(&self, channel: &ChannelName) -> bool {
        self.state.history.policy_for(channel.as_str()).is_some()
    }

    async fn positions(&self, app: &AppId, channels: &[ChannelName]) -> Vec<(ChannelName, Since)> {
        resume::positions(&self.state, app, channels)
    }

    async fn park(&self, conn: &Arc<Conn>, positions: Vec<(ChannelName, Since)>) {
        if !resume::is_stable(conn) {
            return;
        }
        let peers = &self.state.hub.peers;
        let unregister = || {
            peers.unregister(conn);
            !peers.connections_of(&conn.app, &conn.peer_id).is_empty()
        };
        self.book
            .park(&conn.app, &conn.peer_id, positions, unregister);
    }

    async fn take_position(
        &self,
        app: &AppId,
        peer: &PeerId,
        channel: &ChannelName,
    ) -> Option<Since> {
        self.book.take(app, peer, channel)
    }

    async fn subscribe_from(
        &self,
        req: SubscribeRequest<'_>,
        from: ResumeFrom,
    ) -> Result<(bool, Recovery), EngineError> {
        if let Target::Pattern(_) = req.target {
            // Patterns keep no position: an explicit resume of one recovers nothing.
            let mut req = req;
            if let Some((_, failed)) = from.acks {
                req.ack = Some(failed);
            }
            return Ok((self.subscribe(req).await?, Recovery::Failed));
        }
        let (is_new, recovery) = self.state.subscribe_channel_from(req, Some(&from));
        Ok((is_new, recovery.unwrap_or(Recovery::Failed)))
    }

    async fn queue_direct(&self, d: Direct<'_>) -> Result<Queued, EngineError> {
        let peers = &self.state.hub.peers;
        let exclude = d.exclude.map(|c| c.id);
        let frame = || Frame::from(encode::direct(d.from.as_str(), d.data, d.from_metadata));
        let live = || peers.deliver_direct(d.app, d.to, exclude, frame);
        Ok(self.book.queue_direct(d.app, d.to, live, frame))
    }

    fn resume_stats(&self) -> BookStats {
        self.book.stats()
    }

    async fn subscribe(&self, req: SubscribeRequest<'_>) -> Result<bool, EngineError> {
        Ok(match req.target.clone() {
            Target::Channel => self.state.subscribe_channel(req),
            Target::Pattern(pattern) => self.state.subscribe_pattern(req, pattern)?,
        })
    }

    async fn unsubscribe(
        &self,
        conn: &Arc<Conn>,
        channel: &ChannelName,
    ) -> Result<bool, EngineError> {
        // An unsubscribe is deliberate: no grace.
        Ok(self
            .unsubscribe_any(conn, channel, Departure::Left)
            .is_some())
    }

    async fn publish(&self, p: Publication<'_>) -> Result<usize, EngineError> {
        if let Some(policy) = self.state.history.policy_for(p.channel.as_str()) {
            return Ok(history::publish_kept(&self.state, &p, policy));
        }
        // Encoded lazily, at most once per variant, and shared by every receiver.
        let mut frames =
            MessageFrames::new(p.channel.as_str(), p.from.as_str(), p.data, p.from_metadata);
        let key = channel_key(p.app, p.channel);
        let hub = &self.state.hub;
        let mut announced = false;
        // Deltas waiting on the channel go first: a message never overtakes its sender's
        // `joined`. Its webhook is queued under the channel's lock, in the channel's order.
        let delivered = hub.fan_out(&key, &mut frames, p.exclude.map(|c| c.id), |ch| {
            hub.flush_deltas(&key, ch);
            history::announce_message(&self.state, &p, None);
            announced = true;
        });
        if !announced {
            history::announce_message(&self.state, &p, None);
        }
        Ok(delivered)
    }

    async fn send_direct(&self, d: Direct<'_>) -> Result<usize, EngineError> {
        // The receiver learns that the sender joined before it hears from it.
        self.state.hub.flush_deltas_of(d.app, d.from);
        Ok(self
            .state
            .hub
            .peers
            .deliver_direct(d.app, d.to, d.exclude.map(|c| c.id), || {
                Frame::from(encode::direct(d.from.as_str(), d.data, d.from_metadata))
            }))
    }

    async fn channel_members(
        &self,
        app: &AppId,
        channel: &ChannelName,
    ) -> Result<Vec<Member>, EngineError> {
        let members = self
            .state
            .hub
            .channels
            .with(&channel_key(app, channel), |ch| ch.slot.members());
        Ok(members.unwrap_or_default())
    }

    async fn occupancy(
        &self,
        app: &AppId,
        channel: &ChannelName,
    ) -> Result<Occupancy, EngineError> {
        let occupancy = self
            .state
            .hub
            .channels
            .with(&channel_key(app, channel), |ch| Occupancy {
                peers: ch.slot.len(),
                connections: ch.subscriber_count(),
            });
        Ok(occupancy.unwrap_or_default())
    }

    async fn close_peer(
        &self,
        app: &AppId,
        peer: &PeerId,
        reason: CloseReason,
    ) -> Result<usize, EngineError> {
        Ok(self.state.hub.peers.close(app, peer, reason))
    }

    async fn history(
        &self,
        app: &AppId,
        channel: &ChannelName,
        query: &PageQuery,
    ) -> Result<Option<Page>, EngineError> {
        if self.state.history.policy_for(channel.as_str()).is_none() {
            return Ok(None);
        }
        let key = channel_key(app, channel);
        let page = self.state.history.store.page(&key, query);
        page.map(Some)
            .map_err(|e| EngineError::Unavailable(e.to_string()))
    }

    async fn is_ready(&self) -> bool {
        true
    }

    fn stats(&self) -> EngineStats {
        EngineStats {
            channels: self.state.hub.channel_count(),
            subscriptions: self.state.hub.subscription_count(),
            ..EngineStats::default()
        }
    }

    fn local_channels(&self, app: &AppId) -> Vec<ChannelSummary> {
        self.state.hub.channel_summaries(app, |ch| ch.slot.len())
    }

    fn local_connections(
        &self,
        app: &AppId,
        peer: Option<&PeerId>,
    ) -> Vec<(Arc<Conn>, Vec<ChannelName>)> {
        self.state.hub.connection_summaries(app, peer)
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod webhook_tests;
