//! Presence on the memory engine: each channel's reference-counted roster, kept in the hub's
//! per-channel slot, and its changes: subscribe, unsubscribe, and the reconnect grace.
//!
//! Every change happens under the channel's lock, so the ack, the snapshot and the deltas of a
//! channel leave in one order. A peer whose last connection *dropped* stays in the roster for
//! the grace (`held`); a subscribe in that time takes it back without a delta, and otherwise
//! its timer announces `left`. Nothing here awaits with a lock held: the timer sleeps first and
//! then takes the channel's lock once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_protocol::glob::Pattern;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::online::Announcer;
use super::MemorySettings;
use crate::conn::Conn;
use crate::engine::hub::occupancy::{self, Change, OccupancyRules, OccupancySlot, RoomState};
use crate::engine::hub::presence_batch::{DeltaBatch, HasDeltas};
use crate::engine::hub::wildcard::Added;
use crate::engine::hub::{self, channel_key, Channel, ChannelKey, Hub, SnapshotCache};
use crate::engine::{Departure, EngineError, Member, SubscribeRequest};
use crate::history::{History, Retained};
use crate::ids::{ChannelName, PeerId};
use crate::resume::{Recovery, ResumeFrom};
use crate::webhooks::{EventFields, EventType};

/// A channel's roster: one entry per peer with a connection subscribed here, or held through
/// its reconnect grace. Every change of `members` goes through a method that keeps the
/// snapshot cache true.
#[derive(Default)]
pub struct Roster {
    members: HashMap<PeerId, MemberState>,
    /// The snapshot of `members`, encoded once per change.
    snapshot: SnapshotCache,
    /// Deltas of `members`, coalesced under load.
    deltas: DeltaBatch,
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

impl HasDeltas for Roster {
    fn deltas(&mut self) -> &mut DeltaBatch {
        &mut self.deltas
    }
}

struct MemberState {
    /// Connections of this peer subscribed here.
    connections: u32,
    /// Metadata of the most recently subscribed connection (it refreshes after a token rotation
    /// or a reconnect, without a delta).
    metadata: Option<Arc<RawValue>>,
    /// With no connection left after a drop: the generation of the grace holding the peer, so
    /// a late timer of an earlier drop cannot end a newer hold.
    held: Option<u64>,
}

impl Roster {
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Counts a subscribed connection of `peer`, whose metadata becomes the member's (silently
    /// for a peer already here, even one held through its grace). True when the peer arrives.
    fn add_connection(&mut self, peer: &PeerId, metadata: &Option<Arc<RawValue>>) -> bool {
        let member = self.members.entry(peer.clone()).or_insert(MemberState {
            connections: 0,
            metadata: None,
            held: None,
        });
        let arrives = member.connections == 0 && member.held.is_none();
        member.connections += 1;
        member.held = None;
        member.metadata = metadata.clone();
        self.snapshot.invalidate();
        arrives
    }

    /// Takes `peer` out of the roster; its metadata.
    fn remove(&mut self, peer: &PeerId) -> Option<Arc<RawValue>> {
        self.snapshot.invalidate();
        self.members.remove(peer).and_then(|m| m.metadata)
    }

    pub fn members(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|(peer, m)| Member {
                peer_id: peer.clone(),
                metadata: m.metadata.clone(),
            })
            .collect()
    }
}

/// What removing one subscription did to the peer's place in the roster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Other connections of the peer remain subscribed.
    Kept,
    /// The peer left and `left` went out.
    Left,
    /// The peer left with the node: nothing was announced.
    Forgotten,
    /// The peer is held for the grace; `left` goes out when this generation's grace runs out.
    Held(u64),
}

/// The memory engine's state: the hub with a roster per channel, and the grace.
pub struct Rosters {
    pub hub: Arc<Hub<Roster>>,
    /// How long a dropped peer stays in the roster (`engine.reconnect_grace_ms`).
    pub grace: Duration,
    /// Tags each grace, so a late timer cannot end a newer hold.
    generation: AtomicU64,
    /// Roster caps of large rooms (none unless configured).
    rules: OccupancyRules,
    /// Which channels keep history, and the store (`[history]`).
    pub history: History,
    /// Webhooks, once attached, and peers' online state (`online.rs`).
    pub announcer: Announcer,
}

impl Rosters {
    pub fn new(settings: MemorySettings) -> Self {
        Rosters {
            hub: Arc::new(Hub::with_coalescing(settings.coalesce)),
            grace: settings.grace,
            generation: AtomicU64::new(0),
            rules: settings.rules,
            history: settings.history,
            announcer: Announcer::default(),
        }
    }

    /// Subscribes a connection to a concrete channel: ack, snapshot of the others (held peers
    /// included), then `joined` to the others if the peer is new here. A peer back within its
    /// grace is taken back silently. Returns true when the subscription is new.
    pub fn subscribe_channel(&self, req: SubscribeRequest<'_>) -> bool {
        self.subscribe_channel_from(req, None).0
    }

    /// [`Rosters::subscribe_channel`], resuming from `from` when given: the replay (all of
    /// it, or nothing) takes the rewind's place, and an explicit resume's ack says which.
    pub fn subscribe_channel_from(
        &self,
        req: SubscribeRequest<'_>,
        from: Option<&ResumeFrom>,
    ) -> (bool, Option<Recovery>) {
        let conn = req.conn;
        let key = channel_key(&conn.app, req.channel);
        let mut tick = None;
        let mut recovery = None;
        let is_new = self.hub.channels.with_or_create(&key, |ch| {
            // Read before the ack, which must come first and may have to say how it went.
            let replay = from.map(|from| {
                if ch.is_subscribed(conn.id) {
                    // A repeated subscribe: this connection already has every message live.
                    return Some(Retained::default());
                }
                self.history.policy_for(req.channel.as_str())?;
                let store = &*self.history.store;
                hub::replay::read_since(store, &key, &from.since, from.max_replay)
            });
            let ack = match (from.and_then(|f| f.acks.as_ref()), &replay) {
                (Some((recovered, _)), Some(Some(_))) => Some(recovered.clone()),
                (Some((_, failed)), _) => Some(failed.clone()),
                (None, _) => req.ack.clone(),
            };
            if let Some(ack) = ack {
                conn.deliver(ack);
            }
            // The snapshot reflects every delta recorded so far, sent or waiting.
            let floor = ch.slot.deltas.seq();
            let is_new = ch.subscribe(conn, req.include_sender_metadata, floor);
            if conn.receives_presence {
                let capped = occupancy::snapshot(ch, &self.rules, req.channel.as_str(), conn);
                let snapshot = capped.unwrap_or_else(|| {
                    let roster = &mut ch.slot;
                    let members = roster.members.iter().map(|(peer, m)| (peer, &m.metadata));
                    roster
                        .snapshot
                        .snapshot(req.channel.as_str(), members, &conn.peer_id)
                });
                conn.deliver(snapshot);
            }
            if let Some(replay) = replay {
                recovery = Some(match replay {
                    Some(retained) => Recovery::Recovered {
                        replayed: hub::replay::deliver(
                            &retained,
                            &key,
                            conn,
                            req.include_sender_metadata,
                        ),
                    },
                    None => Recovery::Failed,
                });
            }
            if !is_new {
                // A repeated subscribe gets no rewind: the connection already has the messages.
                return false;
            }
            let rewind = self
                .history
                .policy_for(req.channel.as_str())
                .map_or(0, |p| p.rewind);
            // A resume replaces the rewind: the client has those messages already.
            if rewind > 0 && from.is_none() {
                let store = &*self.history.store;
                hub::rewind::rewind(store, &key, conn, rewind, req.include_sender_metadata);
            }
            if ch.slot.add_connection(&conn.peer_id, &conn.peer_metadata) {
                let channel = req.channel.as_str();
                self.announce_arrival(&key, ch.slot.len(), conn);
                if occupancy::over_cap(ch, &self.rules, channel) {
                    // Occupancy mode assumes watchers hold the roster as it stands.
                    self.hub.flush_deltas(&key, ch);
                }
                match occupancy::on_join(ch, &self.rules, channel, &conn.peer_id, Instant::now()) {
                    Change::Handled(at) => tick = at,
                    Change::Announce => self.hub.record_delta(
                        &key,
                        ch,
                        true,
                        &conn.peer_id,
                        conn.peer_metadata.clone(),
                    ),
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
        (is_new, recovery)
    }

    /// Subscribes a connection to a wildcard pattern: messages only, an empty snapshot.
    pub fn subscribe_pattern(
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

    /// Removes one subscription to a concrete channel; `None` when there was none. When it was
    /// the peer's last connection here, `departure` decides: a deliberate leave (or a drop with
    /// no grace) announces `left` at once, a drop holds the peer for the grace, and a shutdown
    /// forgets it quietly (everyone is leaving with the node, and a `left` for peers that
    /// reconnect in a moment would only make clients tear down and rebuild).
    pub fn unsubscribe_channel(
        &self,
        conn: &Conn,
        channel: &ChannelName,
        departure: Departure,
    ) -> Option<Removal> {
        let key = channel_key(&conn.app, channel);
        let mut tick = None;
        let removal = self.hub.channels.with(&key, |ch| {
            ch.unsubscribe(conn.id)?;
            occupancy::forget(ch, conn.id);
            let Some(member) = ch.slot.members.get_mut(&conn.peer_id) else {
                return Some(Removal::Kept);
            };
            member.connections = member.connections.saturating_sub(1);
            if member.connections > 0 {
                return Some(Removal::Kept);
            }
            Some(match departure {
                Departure::Dropped if !self.grace.is_zero() => {
                    let generation = self.generation.fetch_add(1, Ordering::Relaxed);
                    member.held = Some(generation);
                    Removal::Held(generation)
                }
                Departure::Shutdown => {
                    // Subscribers hear nothing (they leave with the node), but the backend
                    // hears the roster end: this node's presence dies with it.
                    let metadata = ch.slot.remove(&conn.peer_id);
                    self.announce_departure(&key, ch.slot.is_empty(), &conn.peer_id, &metadata);
                    Removal::Forgotten
                }
                Departure::Left | Departure::Dropped => {
                    tick = self.announce_left(&key, ch, &conn.peer_id);
                    Removal::Left
                }
            })
        })??;
        if let Some(at) = tick {
            occupancy::schedule_count(&self.hub.channels, &key, at);
        }
        self.hub.count_unsubscribed();
        self.forget_if_idle(&key);
        Some(removal)
    }

    /// Ends the hold of this generation if the peer is still gone: drops it from the roster
    /// and announces `left`. True when it did.
    pub fn grace_expired(&self, key: &ChannelKey, peer: &PeerId, generation: u64) -> bool {
        let mut tick = None;
        let expired = self.hub.channels.with(key, |ch| {
            let expired = ch
                .slot
                .members
                .get(peer)
                .is_some_and(|m| m.connections == 0 && m.held == Some(generation));
            if expired {
                tick = self.announce_left(key, ch, peer);
            }
            expired
        }) == Some(true);
        if let Some(at) = tick {
            occupancy::schedule_count(&self.hub.channels, key, at);
        }
        if expired {
            self.forget_if_idle(key);
        }
        expired
    }

    /// Waits until `deadline` (the drop plus the grace), then ends the hold unless the peer
    /// came back. True when `left` went out.
    pub async fn wait_out_grace(
        &self,
        deadline: Instant,
        key: &ChannelKey,
        peer: &PeerId,
        generation: u64,
    ) -> bool {
        tokio::time::sleep_until(deadline).await;
        self.grace_expired(key, peer, generation)
    }

    /// Drops `peer` from the roster and has its `left` go to every subscriber that receives
    /// presence (at once or with the channel's coalesced deltas). Runs under the channel's lock.
    /// Over a roster cap, watchers get the count instead (or the repair, back at the cap);
    /// returns when the count's timer is due, if one is.
    fn announce_left(
        &self,
        key: &ChannelKey,
        ch: &mut Channel<Roster>,
        peer: &PeerId,
    ) -> Option<Instant> {
        let metadata = ch.slot.remove(peer);
        self.announce_departure(key, ch.slot.is_empty(), peer, &metadata);
        let mut tick = None;
        match occupancy::on_leave(ch, &self.rules, key.1.as_str(), peer, Instant::now()) {
            Change::Handled(at) => tick = at,
            Change::Announce => self.hub.record_delta(key, ch, false, peer, metadata),
        }
        if ch.subscriber_count() == 0 {
            // Nobody is left to tell, and the channel may go: nothing may keep waiting.
            self.hub.flush_deltas(key, ch);
        }
        tick
    }

    /// Webhooks of a peer's arrival in a roster (under the channel's lock):
    /// `channel.occupied` when it is the first member, then `presence.joined`.
    fn announce_arrival(&self, key: &ChannelKey, members: usize, conn: &Conn) {
        let (app, channel) = (&key.0, Some(key.1.as_str()));
        let peer_id = Some(conn.peer_id.as_str());
        if members == 1 {
            self.announcer.emit(
                app,
                EventType::ChannelOccupied,
                EventFields {
                    channel,
                    peer_id,
                    ..EventFields::default()
                },
            );
        }
        self.announcer.emit(
            app,
            EventType::PresenceJoined,
            EventFields {
                channel,
                peer_id,
                metadata: conn.peer_metadata.as_deref(),
                ..EventFields::default()
            },
        );
    }

    /// Webhooks of a peer's departure from a roster (under the channel's lock):
    /// `presence.left`, then `channel.vacated` when it was the last member.
    fn announce_departure(
        &self,
        key: &ChannelKey,
        vacated: bool,
        peer: &PeerId,
        metadata: &Option<Arc<RawValue>>,
    ) {
        let (app, channel) = (&key.0, Some(key.1.as_str()));
        let peer_id = Some(peer.as_str());
        self.announcer.emit(
            app,
            EventType::PresenceLeft,
            EventFields {
                channel,
                peer_id,
                metadata: metadata.as_deref(),
                ..EventFields::default()
            },
        );
        if vacated {
            self.announcer.emit(
                app,
                EventType::ChannelVacated,
                EventFields {
                    channel,
                    peer_id,
                    ..EventFields::default()
                },
            );
        }
    }

    /// Drops a channel with no subscriber and no member, held ones included.
    fn forget_if_idle(&self, key: &ChannelKey) {
        self.hub
            .channels
            .remove_if_idle(key, |roster| roster.is_empty());
    }
}
