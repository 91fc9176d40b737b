//! The node-local half of the Redis engine: which local connections subscribe to what, the
//! node's presence holds, the local peer registry, and delivery of events from the bus.
//!
//! Lock order: channels, then an app's wildcard index (`engine/wildcard.rs`, which matching
//! takes without the channels lock); the peer registry is never held with either. The
//! engine's index lock may be held while taking any of them (never the reverse). Every
//! section is short and synchronous; delivery is a non-blocking enqueue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_protocol::glob::Pattern;
use herald_protocol::{encode, PresenceEntry};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use super::bus::BusCommand;
use super::keys::Keys;
use super::stored_metadata;
use super::wire::Event;
use crate::close::CloseReason;
use crate::conn::{Conn, Delivery, Frame};
use crate::engine::wildcard::{Added, WildcardIndex};
use crate::engine::{ChannelSummary, Departure, EngineError, Member, MessageFrames};
use crate::ids::{AppId, ChannelName, ConnId, PeerId};
use crate::sync::lock;

type ChannelKey = (AppId, ChannelName);
type PeerKey = (AppId, PeerId);

#[derive(Default)]
pub struct Local {
    channels: Mutex<HashMap<ChannelKey, LocalChannel>>,
    peers: Mutex<HashMap<PeerKey, Vec<Arc<Conn>>>>,
    patterns: WildcardIndex,
    generation: AtomicU64,
}

#[derive(Default)]
struct LocalChannel {
    subscribers: HashMap<ConnId, Sub>,
    /// Subscribes in flight: events are buffered until the snapshot is queued.
    joining: HashMap<ConnId, Joining>,
    /// This node's presence holds, per peer.
    holds: HashMap<PeerId, Hold>,
    /// The node is subscribed to this channel's topic.
    topic: bool,
    /// The roster as this node's subscribers have been told it (snapshot plus deltas), so a
    /// re-sync after an outage can send exactly the deltas they missed.
    known: HashMap<PeerId, Option<Arc<RawValue>>>,
    /// Sequence number of the last change reflected in `known`.
    known_seq: u64,
    /// Sequence number of the last re-sync: a delta at or below it that `known` already
    /// reflects was sent by the re-sync (it was published before the roster was read but
    /// arrived after), so it is not sent again.
    resync_floor: u64,
    /// Deltas seen while a subscribe is in flight, to bring `known` from its snapshot to now.
    recent: Vec<(u64, bool, PeerId, Option<Arc<RawValue>>)>,
}

impl LocalChannel {
    fn apply_known(&mut self, joined: bool, peer: PeerId, metadata: Option<Arc<RawValue>>) {
        if joined {
            self.known.insert(peer, metadata);
        } else {
            self.known.remove(&peer);
        }
    }
}

struct Sub {
    conn: Arc<Conn>,
    include_sender_metadata: bool,
    /// The presence sequence number of this subscriber's snapshot. A delta at or below it is
    /// already in the snapshot: the bus can deliver it late, after the subscribe finished (the
    /// node's pushes lag the script that read the roster), and it must not be sent again.
    floor: u64,
}

/// Most events buffered for one subscribe in flight. A subscriber that falls this far behind
/// before its snapshot is even queued would overflow its outbound queue on replay anyway, so
/// it is closed as a slow consumer instead of buffering on.
const JOINING_BUFFER_MAX: usize = 4096;

struct Joining {
    conn: Arc<Conn>,
    include_sender_metadata: bool,
    buffer: Vec<Buffered>,
}

impl Joining {
    fn buffer_event(&mut self, event: Buffered) {
        if self.buffer.len() < JOINING_BUFFER_MAX {
            self.buffer.push(event);
        } else if self.buffer.len() == JOINING_BUFFER_MAX {
            self.conn.close(CloseReason::SLOW_CONSUMER);
            // One past the bound marks it closed; nothing more is kept.
            self.buffer.push(Buffered::Dropped);
        }
    }
}

enum Buffered {
    Presence {
        seq: u64,
        frame: Frame,
    },
    Message(Frame),
    /// The buffer overflowed here (the connection was closed).
    Dropped,
}

struct Hold {
    /// Local subscribed connections of the peer.
    connections: u32,
    metadata: Option<Arc<RawValue>>,
    /// Set while a dropped peer's hold waits out the reconnect grace.
    pending_leave: Option<u64>,
}

/// What a subscribe must wait for before it may read the roster.
pub struct SubscribeStart {
    pub duplicate: bool,
    pub confirm: Option<oneshot::Receiver<bool>>,
}

/// What removing a subscription means for the node's presence hold.
pub enum Removal {
    /// Other local connections of the peer remain.
    Kept,
    LeaveNow,
    /// Leave once the grace period passes, unless the peer is back (generation matches).
    LeaveAfterGrace(u64),
}

/// Local state as re-assertion wants it: per channel base key, the holds (peer, metadata) and
/// the subscriber count; per route base key, the peer's connections.
pub struct ReassertState {
    pub channels: HashMap<String, ChannelState>,
    pub routes: HashMap<String, usize>,
}

pub struct ChannelState {
    pub holds: Vec<(String, String)>,
    pub subscribers: usize,
}

fn frame(text: String) -> Frame {
    Frame::from(text)
}

/// Roster entries from a flat `HGETALL meta:<ck>` reply, without `exclude`.
pub fn roster_from_flat(flat: &[String], exclude: Option<&PeerId>) -> Vec<Member> {
    flat.chunks_exact(2)
        .filter(|kv| exclude.is_none_or(|p| p.as_str() != kv[0]))
        .map(|kv| Member {
            peer_id: PeerId::new(kv[0].as_str()),
            metadata: stored_metadata(&kv[1]),
        })
        .collect()
}

/// Presence entries for a receiver, which never hears about its own peer.
fn entries_except<'a>(
    list: &[(&'a PeerId, &'a Option<Arc<RawValue>>)],
    me: &PeerId,
) -> Vec<PresenceEntry<'a>> {
    list.iter()
        .filter(|(peer, _)| *peer != me)
        .map(|(peer, meta)| PresenceEntry {
            peer_id: peer.as_str(),
            metadata: meta.as_deref(),
        })
        .collect()
}

/// The shared encoder for a message event from the bus.
fn message_frames<'e>(channel: &'e str, event: &'e Event<'_>) -> MessageFrames<'e> {
    let from = event.f.as_deref().unwrap_or_default();
    MessageFrames::new(
        channel,
        from,
        event.d.unwrap_or(RawValue::NULL),
        event.metadata(),
    )
}

/// [`message_frames`] with both variants encoded up front, so no encoding happens under the
/// local state lock. Still at most two encodings per message.
fn encoded_message_frames<'e>(channel: &'e str, event: &'e Event<'_>) -> MessageFrames<'e> {
    let mut frames = message_frames(channel, event);
    frames.get(false);
    if event.m.is_some() {
        frames.get(true);
    }
    frames
}

fn exclusion_of(event: &Event<'_>, node: &str) -> Option<ConnId> {
    let x = event.x.as_deref()?;
    let (origin, id) = x.split_once('/')?;
    (origin == node)
        .then(|| id.parse().ok().map(ConnId))
        .flatten()
}

impl Local {
    pub fn register(&self, conn: &Arc<Conn>) {
        lock(&self.peers)
            .entry((conn.app.clone(), conn.peer_id.clone()))
            .or_default()
            .push(conn.clone());
    }

    pub fn unregister(&self, conn: &Conn) {
        let key = (conn.app.clone(), conn.peer_id.clone());
        let mut peers = lock(&self.peers);
        if let Some(list) = peers.get_mut(&key) {
            list.retain(|c| c.id != conn.id);
            if list.is_empty() {
                peers.remove(&key);
            }
        }
    }

    /// Registers a subscribe in flight and asks the bus to make sure the topic is subscribed
    /// before the caller reads the roster (the confirmation is ordered after any pending
    /// SUBSCRIBE on the bus).
    pub fn begin_subscribe(
        &self,
        conn: &Arc<Conn>,
        channel: &ChannelName,
        include_sender_metadata: bool,
        bus: &mpsc::UnboundedSender<BusCommand>,
        topics: &Keys,
    ) -> SubscribeStart {
        let mut channels = lock(&self.channels);
        let state = channels
            .entry((conn.app.clone(), channel.clone()))
            .or_default();
        let duplicate = state.subscribers.remove(&conn.id).is_some();
        state.joining.insert(
            conn.id,
            Joining {
                conn: conn.clone(),
                include_sender_metadata,
                buffer: Vec::new(),
            },
        );
        if !state.topic {
            state.topic = true;
            let _ = bus.send(BusCommand::Channel(
                topics.channel(conn.app.as_str(), channel.as_str()),
                true,
            ));
        }
        let (tx, rx) = oneshot::channel();
        let _ = bus.send(BusCommand::Barrier(tx));
        SubscribeStart {
            duplicate,
            confirm: Some(rx),
        }
    }

    /// Undoes [`Local::begin_subscribe`] after a failure. A duplicate stays subscribed.
    pub fn abort_subscribe(
        &self,
        conn: &Arc<Conn>,
        channel: &ChannelName,
        duplicate: bool,
        bus: &mpsc::UnboundedSender<BusCommand>,
        topics: &Keys,
    ) {
        let mut channels = lock(&self.channels);
        let key = (conn.app.clone(), channel.clone());
        let Some(state) = channels.get_mut(&key) else {
            return;
        };
        if let Some(joining) = state.joining.remove(&conn.id) {
            if duplicate {
                for buffered in joining.buffer {
                    if let Buffered::Presence { frame, .. } | Buffered::Message(frame) = buffered {
                        conn.deliver(frame);
                    }
                }
                let include = joining.include_sender_metadata;
                state.subscribers.insert(
                    conn.id,
                    Sub {
                        conn: conn.clone(),
                        include_sender_metadata: include,
                        floor: 0,
                    },
                );
            }
        }
        Self::settle(&mut channels, &key, bus, topics);
    }

    /// Queues ack, snapshot, then the buffered events newer than the snapshot, and makes the
    /// connection a subscriber — all under the channel lock, so nothing overtakes them.
    pub fn finish_subscribe(
        &self,
        conn: &Arc<Conn>,
        channel: &ChannelName,
        duplicate: bool,
        ack: Option<Frame>,
        seq: u64,
        roster: &[String],
    ) {
        // Encoded before the lock is taken; queued under it, right after the ack.
        let snapshot = conn.receives_presence.then(|| {
            let members = roster_from_flat(roster, Some(&conn.peer_id));
            let entries: Vec<PresenceEntry<'_>> = members
                .iter()
                .map(|m| PresenceEntry {
                    peer_id: m.peer_id.as_str(),
                    metadata: m.metadata.as_deref(),
                })
                .collect();
            frame(encode::presence(channel.as_str(), &entries, &[]))
        });
        let known: HashMap<PeerId, Option<Arc<RawValue>>> = roster_from_flat(roster, None)
            .into_iter()
            .map(|m| (m.peer_id, m.metadata))
            .collect();
        let mut channels = lock(&self.channels);
        let Some(state) = channels.get_mut(&(conn.app.clone(), channel.clone())) else {
            return;
        };
        let Some(joining) = state.joining.remove(&conn.id) else {
            return;
        };
        if let Some(ack) = ack {
            conn.deliver(ack);
        }
        if let Some(snapshot) = snapshot {
            conn.deliver(snapshot);
        }
        for buffered in joining.buffer {
            match buffered {
                Buffered::Presence { seq: s, frame } if s > seq => {
                    conn.deliver(frame);
                }
                Buffered::Presence { .. } | Buffered::Dropped => {}
                Buffered::Message(frame) => {
                    conn.deliver(frame);
                }
            }
        }
        let include = joining.include_sender_metadata;
        state.subscribers.insert(
            conn.id,
            Sub {
                conn: conn.clone(),
                include_sender_metadata: include,
                floor: seq,
            },
        );
        // The roster at `seq` plus every change after it is what subscribers now know.
        state.known = known;
        state.known_seq = seq;
        let recent = if state.joining.is_empty() {
            std::mem::take(&mut state.recent)
        } else {
            // Another subscribe is still in flight and needs the log too.
            state.recent.clone()
        };
        for (s, joined, peer, metadata) in recent {
            if s > seq {
                state.known_seq = s;
                state.apply_known(joined, peer, metadata);
            }
        }
        let hold = state.holds.entry(conn.peer_id.clone()).or_insert(Hold {
            connections: 0,
            metadata: None,
            pending_leave: None,
        });
        hold.metadata = conn.peer_metadata.clone();
        if !duplicate {
            hold.connections += 1;
            hold.pending_leave = None;
        }
    }

    /// Removes a subscription; says what happens to the presence hold.
    pub fn remove(
        &self,
        conn: &Conn,
        channel: &ChannelName,
        bus: &mpsc::UnboundedSender<BusCommand>,
        topics: &Keys,
        departure: Departure,
        grace: Duration,
    ) -> Option<Removal> {
        let mut channels = lock(&self.channels);
        let key = (conn.app.clone(), channel.clone());
        let state = channels.get_mut(&key)?;
        state.subscribers.remove(&conn.id)?;
        let mut outcome = Removal::Kept;
        if let Some(hold) = state.holds.get_mut(&conn.peer_id) {
            hold.connections = hold.connections.saturating_sub(1);
            if hold.connections == 0 {
                // A node shutting down hands its peers to other nodes: the grace covers that too.
                if departure != Departure::Left && !grace.is_zero() {
                    let generation = self.generation.fetch_add(1, Ordering::Relaxed);
                    hold.pending_leave = Some(generation);
                    outcome = Removal::LeaveAfterGrace(generation);
                } else {
                    state.holds.remove(&conn.peer_id);
                    outcome = Removal::LeaveNow;
                }
            }
        }
        Self::settle(&mut channels, &key, bus, topics);
        Some(outcome)
    }

    /// True when the grace of this generation ran out with the peer still gone; drops the hold.
    pub fn grace_expired(
        &self,
        app: &AppId,
        channel: &ChannelName,
        peer: &PeerId,
        generation: u64,
        bus: &mpsc::UnboundedSender<BusCommand>,
        topics: &Keys,
    ) -> bool {
        let mut channels = lock(&self.channels);
        let key = (app.clone(), channel.clone());
        let Some(state) = channels.get_mut(&key) else {
            return false;
        };
        let expired = state
            .holds
            .get(peer)
            .is_some_and(|h| h.connections == 0 && h.pending_leave == Some(generation));
        if expired {
            state.holds.remove(peer);
            Self::settle(&mut channels, &key, bus, topics);
        }
        expired
    }

    /// Unsubscribes the topic when nobody local listens, and forgets an empty channel.
    fn settle(
        channels: &mut HashMap<ChannelKey, LocalChannel>,
        key: &ChannelKey,
        bus: &mpsc::UnboundedSender<BusCommand>,
        topics: &Keys,
    ) {
        let Some(state) = channels.get_mut(key) else {
            return;
        };
        if state.topic && state.subscribers.is_empty() && state.joining.is_empty() {
            state.topic = false;
            let _ = bus.send(BusCommand::Channel(
                topics.channel(key.0.as_str(), key.1.as_str()),
                false,
            ));
        }
        if !state.topic && state.holds.is_empty() {
            channels.remove(key);
        }
    }

    /// A local connection of `peer` still subscribed to the channel, if any.
    pub fn any_holder(
        &self,
        app: &AppId,
        channel: &ChannelName,
        peer: &PeerId,
    ) -> Option<Arc<Conn>> {
        let channels = lock(&self.channels);
        let state = channels.get(&(app.clone(), channel.clone()))?;
        state
            .subscribers
            .values()
            .find(|s| s.conn.peer_id == *peer)
            .map(|s| s.conn.clone())
    }

    pub fn is_subscribed(&self, conn: &Conn, channel: &ChannelName) -> bool {
        lock(&self.channels)
            .get(&(conn.app.clone(), channel.clone()))
            .is_some_and(|s| s.subscribers.contains_key(&conn.id))
    }

    /// Adds a wildcard subscription; the first of an app makes the node listen to the app. A
    /// pattern new to the app beyond `max_app_patterns` is refused.
    pub fn add_pattern(
        &self,
        conn: &Arc<Conn>,
        name: &ChannelName,
        pattern: Pattern,
        include_sender_metadata: bool,
        max_app_patterns: usize,
        bus: &mpsc::UnboundedSender<BusCommand>,
    ) -> Result<(bool, Option<oneshot::Receiver<bool>>), EngineError> {
        let mut confirm = None;
        let added = self.patterns.add(
            conn,
            name,
            &pattern,
            include_sender_metadata,
            max_app_patterns,
            |first_of_app| {
                if first_of_app {
                    let _ = bus.send(BusCommand::App(conn.app.as_str().to_string(), true));
                }
                let (tx, rx) = oneshot::channel();
                let _ = bus.send(BusCommand::Barrier(tx));
                confirm = Some(rx);
            },
        );
        match added {
            Added::PatternLimit => Err(EngineError::PatternLimit),
            Added::Duplicate => Ok((false, confirm)),
            Added::New { .. } => Ok((true, confirm)),
        }
    }

    pub fn remove_pattern(
        &self,
        conn: &Conn,
        name: &ChannelName,
        bus: &mpsc::UnboundedSender<BusCommand>,
    ) -> (bool, bool) {
        let removed = self.patterns.remove(conn, name, || {
            let _ = bus.send(BusCommand::App(conn.app.as_str().to_string(), false));
        });
        (removed.removed, removed.app_empty)
    }

    /// An event from a channel topic: a message, or a presence delta. The frame is encoded
    /// before the local state lock is taken: under it, only receivers are looked up and the
    /// shared bytes enqueued.
    pub fn on_channel_event(&self, app: &str, channel: &str, event: &Event<'_>, node: &str) {
        let key = (AppId::new(app), ChannelName::new(channel));
        match event.k.as_ref() {
            "m" => {
                let excluded = exclusion_of(event, node);
                let mut frames = encoded_message_frames(channel, event);
                let mut channels = lock(&self.channels);
                let Some(state) = channels.get_mut(&key) else {
                    return;
                };
                for sub in state.subscribers.values() {
                    if Some(sub.conn.id) != excluded {
                        sub.conn.deliver(frames.get(sub.include_sender_metadata));
                    }
                }
                for joining in state.joining.values_mut() {
                    if Some(joining.conn.id) != excluded {
                        let frame = frames.get(joining.include_sender_metadata);
                        joining.buffer_event(Buffered::Message(frame));
                    }
                }
            }
            kind @ ("j" | "l") => {
                let (Some(peer), Some(seq)) = (event.p.as_deref(), event.s) else {
                    return;
                };
                let entry = [PresenceEntry {
                    peer_id: peer,
                    metadata: event.metadata(),
                }];
                let delta = frame(if kind == "j" {
                    encode::presence(channel, &entry, &[])
                } else {
                    encode::presence(channel, &[], &entry)
                });
                let (joined, peer_id) = (kind == "j", PeerId::new(peer));
                let metadata = event.metadata().map(|m| Arc::from(m.to_owned()));
                let mut channels = lock(&self.channels);
                let Some(state) = channels.get_mut(&key) else {
                    return;
                };
                if seq <= state.resync_floor && state.known.contains_key(&peer_id) == joined {
                    return;
                }
                if !state.joining.is_empty() {
                    state
                        .recent
                        .push((seq, joined, peer_id.clone(), metadata.clone()));
                }
                state.known_seq = seq;
                state.apply_known(joined, peer_id, metadata);
                for sub in state.subscribers.values() {
                    if sub.conn.receives_presence
                        && sub.conn.peer_id.as_str() != peer
                        && seq > sub.floor
                    {
                        sub.conn.deliver(delta.clone());
                    }
                }
                for joining in state.joining.values_mut() {
                    if joining.conn.receives_presence && joining.conn.peer_id.as_str() != peer {
                        joining.buffer_event(Buffered::Presence {
                            seq,
                            frame: delta.clone(),
                        });
                    }
                }
            }
            _ => {}
        }
    }

    /// A message seen through the node's wildcard subscription: for pattern subscribers only
    /// (exact subscribers get it from the channel topic).
    pub fn on_pattern_message(&self, app: &str, channel: &str, event: &Event<'_>, node: &str) {
        if event.k != "m" {
            return;
        }
        let excluded = exclusion_of(event, node);
        let app = AppId::new(app);
        // Matched under the app's index lock only; the node-wide channels lock is taken after,
        // just to drop connections that get the message from the channel topic themselves.
        let mut matched: Vec<(Arc<Conn>, bool)> = Vec::new();
        self.patterns
            .for_each_match(&app, channel, |conn, include_sender_metadata| {
                if Some(conn.id) != excluded {
                    matched.push((conn.clone(), include_sender_metadata));
                }
            });
        if matched.is_empty() {
            return;
        }
        {
            let channels = lock(&self.channels);
            if let Some(exact) = channels.get(&(app, ChannelName::new(channel))) {
                matched.retain(|(conn, _)| {
                    !exact.subscribers.contains_key(&conn.id)
                        && !exact.joining.contains_key(&conn.id)
                });
            }
        }
        let mut frames = message_frames(channel, event);
        for (conn, include_sender_metadata) in matched {
            conn.deliver(frames.get(include_sender_metadata));
        }
    }

    /// Delivers a message to local exact subscribers directly (Redis unreachable).
    pub fn deliver_message(
        &self,
        app: &AppId,
        channel: &ChannelName,
        event: &Event<'_>,
        exclude: Option<ConnId>,
    ) {
        let mut frames = encoded_message_frames(channel.as_str(), event);
        let channels = lock(&self.channels);
        let Some(state) = channels.get(&(app.clone(), channel.clone())) else {
            return;
        };
        for sub in state.subscribers.values() {
            if Some(sub.conn.id) != exclude {
                sub.conn.deliver(frames.get(sub.include_sender_metadata));
            }
        }
    }

    /// A `direct` for a peer on this node. Returns the connections reached.
    pub fn deliver_direct(&self, event: &Event<'_>, exclude: Option<ConnId>) -> usize {
        let (Some(app), Some(to), Some(from), Some(data)) = (
            event.a.as_deref(),
            event.t.as_deref(),
            event.f.as_deref(),
            event.d,
        ) else {
            return 0;
        };
        let conns = lock(&self.peers)
            .get(&(AppId::new(app), PeerId::new(to)))
            .cloned()
            .unwrap_or_default();
        let mut encoded: Option<Frame> = None;
        let mut reached = 0;
        for conn in conns.iter().filter(|c| Some(c.id) != exclude) {
            let bytes = encoded
                .get_or_insert_with(|| frame(encode::direct(from, data, event.metadata())))
                .clone();
            if conn.deliver(bytes) == Delivery::Queued {
                reached += 1;
            }
        }
        reached
    }

    pub fn on_direct(&self, event: &Event<'_>, node: &str) {
        self.deliver_direct(event, exclusion_of(event, node));
    }

    pub fn close_peer(&self, app: &AppId, peer: &PeerId, reason: CloseReason) -> usize {
        let conns = lock(&self.peers)
            .get(&(app.clone(), peer.clone()))
            .cloned()
            .unwrap_or_default();
        for conn in &conns {
            conn.close(reason);
        }
        conns.len()
    }

    /// Channels with local subscribers (to re-sync their rosters after an outage).
    pub fn subscribed_channels(&self) -> Vec<ChannelKey> {
        lock(&self.channels)
            .iter()
            .filter(|(_, s)| !s.subscribers.is_empty())
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Forgets sequence numbers after a bus reconnect: Redis may have restarted and counts anew.
    pub fn reset_sequences(&self) {
        for state in lock(&self.channels).values_mut() {
            state.known_seq = 0;
            state.resync_floor = 0;
            for sub in state.subscribers.values_mut() {
                sub.floor = 0;
            }
        }
    }

    /// Brings local subscribers up to date with the cluster roster (read at `seq`): whoever
    /// joined or left while deltas could not flow gets one presence frame. Skipped when a newer
    /// delta already arrived or a subscribe is in flight (the next re-sync tick covers it).
    pub fn resync(&self, key: &ChannelKey, roster: &[String], seq: u64) {
        let mut channels = lock(&self.channels);
        let Some(state) = channels.get_mut(key) else {
            return;
        };
        if !state.joining.is_empty() || state.known_seq > seq {
            return;
        }
        let fresh: HashMap<PeerId, Option<Arc<RawValue>>> = roster_from_flat(roster, None)
            .into_iter()
            .map(|m| (m.peer_id, m.metadata))
            .collect();
        let joined: Vec<(&PeerId, &Option<Arc<RawValue>>)> = fresh
            .iter()
            .filter(|(peer, _)| !state.known.contains_key(*peer))
            .collect();
        let left: Vec<(&PeerId, &Option<Arc<RawValue>>)> = state
            .known
            .iter()
            .filter(|(peer, _)| !fresh.contains_key(*peer))
            .collect();
        if !joined.is_empty() || !left.is_empty() {
            for sub in state
                .subscribers
                .values()
                .filter(|s| s.conn.receives_presence)
            {
                let me = &sub.conn.peer_id;
                let (j, l) = (entries_except(&joined, me), entries_except(&left, me));
                if !j.is_empty() || !l.is_empty() {
                    sub.conn
                        .deliver(frame(encode::presence(key.1.as_str(), &j, &l)));
                }
            }
        }
        state.known = fresh;
        state.known_seq = seq;
        state.resync_floor = seq;
    }

    /// Channel topics the node must be subscribed to, and apps with wildcard subscribers
    /// (after a bus reconnect).
    pub fn topics(&self, keys: &Keys) -> (Vec<String>, Vec<String>) {
        let channels: Vec<String> = lock(&self.channels)
            .iter()
            .filter(|(_, s)| s.topic)
            .map(|((app, channel), _)| keys.channel(app.as_str(), channel.as_str()))
            .collect();
        (channels, self.pattern_apps())
    }

    /// Apps with local wildcard subscribers.
    pub fn pattern_apps(&self) -> Vec<String> {
        self.patterns
            .apps()
            .into_iter()
            .map(|app| app.as_str().to_string())
            .collect()
    }

    /// Base keys of every channel the node may hold presence on (subscribers, holds, a
    /// subscribe in flight or a grace period running) and every peer with connections here:
    /// their index entries must stay.
    pub fn live_bases(&self, keys: &Keys) -> std::collections::HashSet<String> {
        let mut bases: std::collections::HashSet<String> = lock(&self.channels)
            .keys()
            .map(|(app, channel)| keys.channel_base(app.as_str(), channel.as_str()))
            .collect();
        bases.extend(
            lock(&self.peers)
                .keys()
                .map(|(app, peer)| keys.route_base(app.as_str(), peer.as_str())),
        );
        bases
    }

    /// Local state as re-assertion wants it, keyed by channel and route base keys.
    pub fn snapshot_for_reassert(&self, keys: &Keys) -> ReassertState {
        let mut channels = HashMap::new();
        for ((app, channel), state) in lock(&self.channels).iter() {
            let holds = state
                .holds
                .iter()
                .map(|(peer, hold)| {
                    let meta = hold
                        .metadata
                        .as_ref()
                        .map_or(String::new(), |m| m.get().to_string());
                    (peer.as_str().to_string(), meta)
                })
                .collect();
            channels.insert(
                keys.channel_base(app.as_str(), channel.as_str()),
                ChannelState {
                    holds,
                    subscribers: state.subscribers.len(),
                },
            );
        }
        let routes = lock(&self.peers)
            .iter()
            .map(|((app, peer), conns)| (keys.route_base(app.as_str(), peer.as_str()), conns.len()))
            .collect();
        ReassertState { channels, routes }
    }

    pub fn channel_count(&self) -> usize {
        lock(&self.channels)
            .values()
            .filter(|s| !s.subscribers.is_empty())
            .count()
    }

    pub fn channels(&self, app: &AppId) -> Vec<ChannelSummary> {
        let mut out: Vec<ChannelSummary> = lock(&self.channels)
            .iter()
            .filter(|((a, _), s)| a == app && !s.subscribers.is_empty())
            .map(|((_, channel), s)| ChannelSummary {
                channel: channel.clone(),
                members: s.holds.len(),
                subscribers: s.subscribers.len(),
            })
            .collect();
        let mut pattern_counts: HashMap<ChannelName, usize> = HashMap::new();
        for (_, name) in self.patterns.subscriptions(app) {
            *pattern_counts.entry(name).or_default() += 1;
        }
        out.extend(
            pattern_counts
                .into_iter()
                .map(|(channel, subscribers)| ChannelSummary {
                    channel,
                    members: 0,
                    subscribers,
                }),
        );
        out.sort_by(|a, b| a.channel.cmp(&b.channel));
        out
    }

    pub fn connections(
        &self,
        app: &AppId,
        peer: Option<&PeerId>,
    ) -> Vec<(Arc<Conn>, Vec<ChannelName>)> {
        let conns: Vec<Arc<Conn>> = lock(&self.peers)
            .iter()
            .filter(|((a, p), _)| a == app && peer.is_none_or(|want| want == p))
            .flat_map(|(_, list)| list.iter().cloned())
            .collect();
        let mut by_conn: HashMap<ConnId, Vec<ChannelName>> = HashMap::new();
        for ((a, channel), state) in lock(&self.channels).iter() {
            if a == app {
                for id in state.subscribers.keys() {
                    by_conn.entry(*id).or_default().push(channel.clone());
                }
            }
        }
        for (id, name) in self.patterns.subscriptions(app) {
            by_conn.entry(id).or_default().push(name);
        }
        crate::engine::with_channels(conns, by_conn)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::conn::Outbound;

    fn drain(rx: &mut Outbound) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| rx.try_recv())
            .map(|f| serde_json::from_str(f.as_str()).unwrap())
            .collect()
    }

    fn delta<'a>(kind: &'a str, seq: u64, peer: &'a str) -> Event<'a> {
        let mut event = Event::new(kind);
        event.s = Some(seq);
        event.p = Some(peer.into());
        event
    }

    /// Peer `x` subscribed to `room` on a fresh node, with a snapshot read at `seq`.
    fn subscribed(
        local: &Local,
        seq: u64,
        roster: &[String],
    ) -> (Arc<Conn>, Outbound, ChannelName) {
        let keys = Keys::new("h:", "n1");
        let (bus, _bus_rx) = mpsc::unbounded_channel();
        let (conn, rx) = Conn::new(
            AppId::new("app".to_string()),
            PeerId::new("x".to_string()),
            None,
            true,
            "publishable",
            64,
        );
        let room = ChannelName::new("room".to_string());
        local.begin_subscribe(&conn, &room, false, &bus, &keys);
        local.finish_subscribe(&conn, &room, false, None, seq, roster);
        (conn, rx, room)
    }

    #[test]
    fn a_delta_that_arrives_after_the_resync_that_covered_it_is_not_sent_twice() {
        let local = Local::default();
        let (conn, mut rx, room) = subscribed(&local, 1, &["x".into(), String::new()]);
        assert_eq!(drain(&mut rx)[0]["joined"], serde_json::json!([]));

        // The re-sync reads the roster at seq 3: y joined meanwhile (its delta, seq 2, is late).
        let key = (conn.app.clone(), room.clone());
        let roster = ["x", "", "y", ""].map(String::from);
        local.resync(&key, &roster, 3);
        let sent = drain(&mut rx);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0]["joined"][0]["peerId"], "y");
        local.on_channel_event("app", "room", &delta("j", 2, "y"), "n1");
        assert!(drain(&mut rx).is_empty());

        // Later changes flow as usual.
        local.on_channel_event("app", "room", &delta("l", 4, "y"), "n1");
        assert_eq!(drain(&mut rx)[0]["left"][0]["peerId"], "y");
    }

    #[test]
    fn a_delta_already_in_the_snapshot_is_not_sent_when_it_arrives_after_the_subscribe() {
        // The roster was read at seq 5 and already lists y, whose `joined` (seq 4) is still on
        // its way through the bus.
        let local = Local::default();
        let roster = ["x", "", "y", ""].map(String::from);
        let (_conn, mut rx, _room) = subscribed(&local, 5, &roster);
        let snapshot = drain(&mut rx);
        assert_eq!(snapshot[0]["joined"][0]["peerId"], "y");

        local.on_channel_event("app", "room", &delta("j", 4, "y"), "n1");
        assert!(drain(&mut rx).is_empty(), "y's joined was in the snapshot");

        local.on_channel_event("app", "room", &delta("j", 6, "z"), "n1");
        assert_eq!(drain(&mut rx)[0]["joined"][0]["peerId"], "z");
    }
}
