//! The in-memory engine: the node-local hub plus an in-process roster per channel. It serves a
//! single node and needs nothing else.
//!
//! Presence ordering is atomic because a subscribe queues its ack, its snapshot and the
//! `joined` to others under the channel's lock (see `hub/` for the lock order).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use herald_protocol::glob::{has_wildcard, Pattern};
use herald_protocol::{encode, PresenceEntry};
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::hub::occupancy::{self, Change, OccupancyRules, OccupancySlot, RoomState};
use super::hub::wildcard::Added;
use super::hub::{self, channel_key, entry, Hub, MessageFrames};
use super::{
    ChannelSummary, Departure, Direct, Engine, EngineError, EngineStats, Member, Occupancy,
    Publication, SubscribeRequest, Target,
};
use crate::close::CloseReason;
use crate::conn::{Conn, Frame};
use crate::ids::{AppId, ChannelName, PeerId};

/// A channel's reference-counted roster: one entry per peer with local connections subscribed.
#[derive(Default)]
struct Roster {
    members: HashMap<PeerId, MemberState>,
    /// Occupancy mode, when the channel has a roster cap (`[[presence.channels]]`).
    room: RoomState,
}

impl OccupancySlot for Roster {
    fn room(&mut self) -> &mut RoomState {
        &mut self.room
    }
    fn roster_len(&self) -> usize {
        self.members.len()
    }
    fn has_member(&self, peer: &PeerId) -> bool {
        self.members.contains_key(peer)
    }
    fn for_each_member(&self, f: &mut dyn FnMut(&PeerId, &Option<Arc<RawValue>>)) {
        self.members
            .iter()
            .for_each(|(peer, m)| f(peer, &m.metadata));
    }
}

struct MemberState {
    /// Connections of this peer subscribed here; `left` is emitted when it drops to zero.
    connections: u32,
    /// Metadata of the most recently subscribed connection (it refreshes after a token rotation).
    metadata: Option<Arc<RawValue>>,
}

/// The default single-node engine.
#[derive(Default)]
pub struct MemoryEngine {
    hub: Hub<Roster>,
    /// Roster caps of large rooms (none unless configured).
    rules: Arc<OccupancyRules>,
}

impl MemoryEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies the roster caps of `[presence]` (occupancy mode of large rooms).
    pub fn with_occupancy(mut self, rules: OccupancyRules) -> Self {
        self.rules = Arc::new(rules);
        self
    }

    fn subscribe_channel(&self, req: SubscribeRequest<'_>) -> bool {
        let conn = req.conn;
        let key = channel_key(&conn.app, req.channel);
        let mut tick = None;
        let is_new = self.hub.channels.with_or_create(&key, |ch| {
            if let Some(ack) = req.ack.clone() {
                conn.deliver(ack);
            }
            let is_new = ch.subscribe(conn, req.include_sender_metadata, 0);
            if conn.receives_presence {
                let capped = occupancy::snapshot(ch, &self.rules, req.channel.as_str(), conn);
                conn.deliver(capped.unwrap_or_else(|| {
                    let others: Vec<PresenceEntry<'_>> = ch
                        .slot
                        .members
                        .iter()
                        .filter(|(peer, _)| **peer != conn.peer_id)
                        .map(|(peer, m)| entry(peer, &m.metadata))
                        .collect();
                    hub::presence(req.channel.as_str(), &others, &[])
                }));
            }
            if !is_new {
                return false;
            }
            let member = ch
                .slot
                .members
                .entry(conn.peer_id.clone())
                .or_insert(MemberState {
                    connections: 0,
                    metadata: None,
                });
            member.connections += 1;
            member.metadata = conn.peer_metadata.clone();
            if member.connections == 1 {
                let now = Instant::now();
                let change =
                    occupancy::on_join(ch, &self.rules, req.channel.as_str(), &conn.peer_id, now);
                if let Change::Handled(at) = change {
                    tick = at;
                    return true;
                }
                let joined = [entry(&conn.peer_id, &conn.peer_metadata)];
                let delta = hub::presence(req.channel.as_str(), &joined, &[]);
                for sub in ch.subscribers() {
                    if sub.conn.id != conn.id && sub.conn.receives_presence {
                        sub.conn.deliver(delta.clone());
                    }
                }
            }
            true
        });
        if let Some(at) = tick {
            occupancy::schedule_count(&self.hub.channels, &key, at);
        }
        if is_new {
            self.hub.count_subscribed();
        }
        is_new
    }

    fn subscribe_pattern(
        &self,
        req: SubscribeRequest<'_>,
        pattern: Pattern,
    ) -> Result<bool, EngineError> {
        let conn = req.conn;
        let added = self.hub.patterns.add(
            conn,
            req.channel,
            &pattern,
            req.include_sender_metadata,
            req.max_app_patterns,
            |_| {
                if let Some(ack) = req.ack.clone() {
                    conn.deliver(ack);
                }
                // The mandatory snapshot of a pattern subscription is empty (spec §9.4).
                if conn.receives_presence {
                    conn.deliver(hub::presence(req.channel.as_str(), &[], &[]));
                }
            },
        );
        match added {
            Added::PatternLimit => Err(EngineError::PatternLimit),
            Added::Duplicate => Ok(false),
            Added::New { .. } => {
                self.hub.count_subscribed();
                Ok(true)
            }
        }
    }

    /// `announce` is false only while the node shuts down: everyone is leaving, and a `left` for
    /// peers that will reconnect in a moment would only make clients tear down and rebuild.
    fn unsubscribe_channel(&self, conn: &Arc<Conn>, channel: &ChannelName, announce: bool) -> bool {
        let key = channel_key(&conn.app, channel);
        let mut tick = None;
        let removed = self.hub.channels.with(&key, |ch| {
            if ch.unsubscribe(conn.id).is_none() {
                return false;
            }
            occupancy::forget(ch, conn.id);
            let Some(member) = ch.slot.members.get_mut(&conn.peer_id) else {
                return true;
            };
            member.connections -= 1;
            if member.connections > 0 {
                return true;
            }
            let metadata = ch
                .slot
                .members
                .remove(&conn.peer_id)
                .and_then(|m| m.metadata);
            let now = Instant::now();
            if announce {
                let change =
                    occupancy::on_leave(ch, &self.rules, channel.as_str(), &conn.peer_id, now);
                if let Change::Handled(at) = change {
                    tick = at;
                    return true;
                }
                let left = [entry(&conn.peer_id, &metadata)];
                let delta = hub::presence(channel.as_str(), &[], &left);
                for sub in ch.subscribers() {
                    if sub.conn.receives_presence {
                        sub.conn.deliver(delta.clone());
                    }
                }
            }
            true
        });
        if removed != Some(true) {
            return false;
        }
        if let Some(at) = tick {
            occupancy::schedule_count(&self.hub.channels, &key, at);
        }
        self.hub.count_unsubscribed();
        // The roster empties with the subscribers: nothing else keeps a channel.
        self.hub.channels.remove_if_idle(&key, |_| true);
        true
    }

    fn unsubscribe_pattern(&self, conn: &Conn, name: &ChannelName) -> bool {
        let removed = self.hub.patterns.remove(conn, name, || {}).removed;
        if removed {
            self.hub.count_unsubscribed();
        }
        removed
    }

    fn unsubscribe_any(&self, conn: &Arc<Conn>, channel: &ChannelName, announce: bool) -> bool {
        if has_wildcard(channel.as_str()) {
            self.unsubscribe_pattern(conn, channel)
        } else {
            self.unsubscribe_channel(conn, channel, announce)
        }
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    async fn register(&self, conn: &Arc<Conn>) -> Result<(), EngineError> {
        self.hub.peers.register(conn);
        Ok(())
    }

    /// The memory engine has no reconnect grace: on a single node a reconnect overlapping the old
    /// socket is covered by reference counting. During shutdown nothing is announced: the node's
    /// presence dies with it, and clients rebuild their rosters from the next snapshot.
    async fn disconnect(
        &self,
        conn: &Arc<Conn>,
        subscriptions: Vec<ChannelName>,
        departure: Departure,
    ) {
        let announce = departure != Departure::Shutdown;
        for channel in &subscriptions {
            self.unsubscribe_any(conn, channel, announce);
        }
        self.hub.peers.unregister(conn);
    }

    async fn subscribe(&self, req: SubscribeRequest<'_>) -> Result<bool, EngineError> {
        Ok(match req.target.clone() {
            Target::Channel => self.subscribe_channel(req),
            Target::Pattern(pattern) => self.subscribe_pattern(req, pattern)?,
        })
    }

    async fn unsubscribe(
        &self,
        conn: &Arc<Conn>,
        channel: &ChannelName,
    ) -> Result<bool, EngineError> {
        Ok(self.unsubscribe_any(conn, channel, true))
    }

    async fn publish(&self, p: Publication<'_>) -> Result<usize, EngineError> {
        // Encoded lazily, at most once per variant, and shared by every receiver.
        let mut frames =
            MessageFrames::new(p.channel.as_str(), p.from.as_str(), p.data, p.from_metadata);
        let key = channel_key(p.app, p.channel);
        Ok(self.hub.fan_out(&key, &mut frames, p.exclude.map(|c| c.id)))
    }

    async fn send_direct(&self, d: Direct<'_>) -> Result<usize, EngineError> {
        Ok(self
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
        let members = self.hub.channels.with(&channel_key(app, channel), |ch| {
            ch.slot
                .members
                .iter()
                .map(|(peer, m)| Member {
                    peer_id: peer.clone(),
                    metadata: m.metadata.clone(),
                })
                .collect()
        });
        Ok(members.unwrap_or_default())
    }

    async fn occupancy(
        &self,
        app: &AppId,
        channel: &ChannelName,
    ) -> Result<Occupancy, EngineError> {
        let occupancy = self
            .hub
            .channels
            .with(&channel_key(app, channel), |ch| Occupancy {
                peers: ch.slot.members.len(),
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
        Ok(self.hub.peers.close(app, peer, reason))
    }

    async fn is_ready(&self) -> bool {
        true
    }

    fn stats(&self) -> EngineStats {
        EngineStats {
            channels: self.hub.channel_count(),
            subscriptions: self.hub.subscription_count(),
            ..EngineStats::default()
        }
    }

    fn local_channels(&self, app: &AppId) -> Vec<ChannelSummary> {
        self.hub.channel_summaries(app, |ch| ch.slot.members.len())
    }

    fn local_connections(
        &self,
        app: &AppId,
        peer: Option<&PeerId>,
    ) -> Vec<(Arc<Conn>, Vec<ChannelName>)> {
        self.hub.connection_summaries(app, peer)
    }
}
