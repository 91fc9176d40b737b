//! The in-memory engine: presence and fan-out for one node, with no external dependencies.
//!
//! Lock order (never reversed): channel map shard → channel state → an app's wildcard index
//! (see `wildcard.rs`). Locks are
//! std mutexes held for short, non-async sections; delivery inside them is a non-blocking
//! `Conn::deliver` (a push under the connection queue's leaf lock), so holding a channel lock
//! while enqueueing is cheap and is what makes presence ordering atomic.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use herald_protocol::glob::{has_wildcard, Pattern};
use herald_protocol::{encode, PresenceEntry};
use serde_json::value::RawValue;

use super::wildcard::{Added, WildcardIndex};
use super::{
    ChannelSummary, Departure, Direct, Engine, EngineError, EngineStats, Member, MessageFrames,
    Publication, SubscribeRequest, Target,
};
use crate::close::CloseReason;
use crate::conn::{Conn, Delivery, Frame};
use crate::ids::{AppId, ChannelName, ConnId, PeerId};
use crate::sync::lock;

const SHARDS: usize = 16;

type ChannelKey = (AppId, ChannelName);
type PeerKey = (AppId, PeerId);

/// One concrete channel's subscribers and reference-counted roster.
#[derive(Default)]
struct ChannelState {
    /// Set when the channel was dropped from the map; a subscriber holding a stale `Arc` retries.
    removed: bool,
    subscribers: HashMap<ConnId, Subscriber>,
    members: HashMap<PeerId, MemberState>,
}

struct Subscriber {
    conn: Arc<Conn>,
    include_sender_metadata: bool,
}

struct MemberState {
    /// Connections of this peer subscribed here; `left` is emitted when it drops to zero.
    connections: u32,
    /// Metadata of the most recently subscribed connection (it refreshes after a token rotation).
    metadata: Option<Arc<RawValue>>,
}

/// The default single-node engine.
pub struct MemoryEngine {
    channels: Vec<Mutex<HashMap<ChannelKey, Arc<Mutex<ChannelState>>>>>,
    peers: Vec<Mutex<HashMap<PeerKey, Vec<Arc<Conn>>>>>,
    /// Wildcard subscriptions (messages of matching channels, never presence deltas).
    patterns: WildcardIndex,
    subscriptions: AtomicUsize,
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::new()
    }
}

fn shard_of<K: Hash>(key: &K) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

fn frame(text: String) -> Frame {
    Frame::from(text)
}

fn entry<'a>(peer_id: &'a PeerId, metadata: &'a Option<Arc<RawValue>>) -> PresenceEntry<'a> {
    PresenceEntry {
        peer_id: peer_id.as_str(),
        metadata: metadata.as_deref(),
    }
}

impl MemoryEngine {
    pub fn new() -> Self {
        MemoryEngine {
            channels: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            peers: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            patterns: WildcardIndex::default(),
            subscriptions: AtomicUsize::new(0),
        }
    }

    fn channel(&self, key: &ChannelKey) -> Option<Arc<Mutex<ChannelState>>> {
        lock(&self.channels[shard_of(key)]).get(key).cloned()
    }

    fn channel_or_create(&self, key: &ChannelKey) -> Arc<Mutex<ChannelState>> {
        lock(&self.channels[shard_of(key)])
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// Drops an empty channel from the map (map lock, then channel lock: the documented order).
    fn remove_if_empty(&self, key: &ChannelKey) {
        let mut map = lock(&self.channels[shard_of(key)]);
        if let Some(cell) = map.get(key) {
            let mut state = lock(cell);
            if state.subscribers.is_empty() {
                state.removed = true;
                drop(state);
                map.remove(key);
            }
        }
    }

    fn subscribe_channel(&self, req: SubscribeRequest<'_>) -> bool {
        let conn = req.conn;
        let key = (conn.app.clone(), req.channel.clone());
        loop {
            let cell = self.channel_or_create(&key);
            let mut state = lock(&cell);
            if state.removed {
                continue;
            }
            if let Some(ack) = req.ack.clone() {
                conn.deliver(ack);
            }
            let is_new = match state.subscribers.entry(conn.id) {
                Entry::Occupied(mut existing) => {
                    existing.get_mut().include_sender_metadata = req.include_sender_metadata;
                    false
                }
                Entry::Vacant(slot) => {
                    slot.insert(Subscriber {
                        conn: conn.clone(),
                        include_sender_metadata: req.include_sender_metadata,
                    });
                    true
                }
            };
            if conn.receives_presence {
                let others: Vec<PresenceEntry<'_>> = state
                    .members
                    .iter()
                    .filter(|(peer, _)| **peer != conn.peer_id)
                    .map(|(peer, m)| entry(peer, &m.metadata))
                    .collect();
                conn.deliver(frame(encode::presence(req.channel.as_str(), &others, &[])));
            }
            if !is_new {
                return false;
            }
            self.subscriptions.fetch_add(1, Ordering::Relaxed);
            let member = state
                .members
                .entry(conn.peer_id.clone())
                .or_insert(MemberState {
                    connections: 0,
                    metadata: None,
                });
            member.connections += 1;
            member.metadata = conn.peer_metadata.clone();
            if member.connections == 1 {
                let joined = [entry(&conn.peer_id, &conn.peer_metadata)];
                let delta = frame(encode::presence(req.channel.as_str(), &joined, &[]));
                for sub in state.subscribers.values() {
                    if sub.conn.id != conn.id && sub.conn.receives_presence {
                        sub.conn.deliver(delta.clone());
                    }
                }
            }
            return true;
        }
    }

    fn subscribe_pattern(
        &self,
        req: SubscribeRequest<'_>,
        pattern: Pattern,
    ) -> Result<bool, EngineError> {
        let conn = req.conn;
        let added = self.patterns.add(
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
                    conn.deliver(frame(encode::presence(req.channel.as_str(), &[], &[])));
                }
            },
        );
        if added == Added::PatternLimit {
            return Err(EngineError::PatternLimit);
        }
        let is_new = matches!(added, Added::New { .. });
        if is_new {
            self.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(is_new)
    }

    /// `announce` is false only while the node shuts down: everyone is leaving, and a `left` for
    /// peers that will reconnect in a moment would only make clients tear down and rebuild.
    fn unsubscribe_channel(&self, conn: &Arc<Conn>, channel: &ChannelName, announce: bool) -> bool {
        let key = (conn.app.clone(), channel.clone());
        let Some(cell) = self.channel(&key) else {
            return false;
        };
        let mut state = lock(&cell);
        if state.subscribers.remove(&conn.id).is_none() {
            return false;
        }
        self.subscriptions.fetch_sub(1, Ordering::Relaxed);
        let mut last = false;
        if let Some(member) = state.members.get_mut(&conn.peer_id) {
            member.connections -= 1;
            last = member.connections == 0;
        }
        if last {
            let metadata = state.members.remove(&conn.peer_id).and_then(|m| m.metadata);
            if !announce {
                drop(state);
                self.remove_if_empty(&key);
                return true;
            }
            let left = [entry(&conn.peer_id, &metadata)];
            let delta = frame(encode::presence(channel.as_str(), &[], &left));
            for sub in state.subscribers.values() {
                if sub.conn.receives_presence {
                    sub.conn.deliver(delta.clone());
                }
            }
        }
        let empty = state.subscribers.is_empty();
        drop(state);
        if empty {
            self.remove_if_empty(&key);
        }
        true
    }

    fn unsubscribe_pattern(&self, conn: &Conn, name: &ChannelName) -> bool {
        let removed = self.patterns.remove(conn, name, || {}).removed;
        if removed {
            self.subscriptions.fetch_sub(1, Ordering::Relaxed);
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

    fn publish_now(&self, p: &Publication<'_>) -> usize {
        // Encoded lazily, at most once per variant, and shared by every receiver.
        let mut frames =
            MessageFrames::new(p.channel.as_str(), p.from.as_str(), p.data, p.from_metadata);
        let excluded = p.exclude.map(|c| c.id);
        let mut delivered = 0;
        let key = (p.app.clone(), p.channel.clone());
        let cell = self.channel(&key);
        let state = cell.as_ref().map(|c| lock(c));
        if let Some(state) = &state {
            for sub in state.subscribers.values() {
                if Some(sub.conn.id) != excluded
                    && sub.conn.deliver(frames.get(sub.include_sender_metadata)) == Delivery::Queued
                {
                    delivered += 1;
                }
            }
        }
        // A connection gets a publication once, however many of its subscriptions match, and
        // not again through a pattern when it subscribes to the channel itself.
        self.patterns.for_each_match(
            p.app,
            p.channel.as_str(),
            |conn, include_sender_metadata| {
                if Some(conn.id) == excluded
                    || state
                        .as_ref()
                        .is_some_and(|s| s.subscribers.contains_key(&conn.id))
                {
                    return;
                }
                if conn.deliver(frames.get(include_sender_metadata)) == Delivery::Queued {
                    delivered += 1;
                }
            },
        );
        delivered
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    async fn register(&self, conn: &Arc<Conn>) -> Result<(), EngineError> {
        let key = (conn.app.clone(), conn.peer_id.clone());
        lock(&self.peers[shard_of(&key)])
            .entry(key)
            .or_default()
            .push(conn.clone());
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
        let key = (conn.app.clone(), conn.peer_id.clone());
        let mut peers = lock(&self.peers[shard_of(&key)]);
        if let Some(conns) = peers.get_mut(&key) {
            conns.retain(|c| c.id != conn.id);
            if conns.is_empty() {
                peers.remove(&key);
            }
        }
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

    async fn publish(&self, publication: Publication<'_>) -> Result<usize, EngineError> {
        Ok(self.publish_now(&publication))
    }

    async fn send_direct(&self, d: Direct<'_>) -> Result<usize, EngineError> {
        let key = (d.app.clone(), d.to.clone());
        let peers = lock(&self.peers[shard_of(&key)]);
        let Some(conns) = peers.get(&key) else {
            return Ok(0);
        };
        let excluded = d.exclude.map(|c| c.id);
        let mut encoded: Option<Frame> = None;
        let mut delivered = 0;
        for conn in conns.iter().filter(|c| Some(c.id) != excluded) {
            let bytes = encoded
                .get_or_insert_with(|| {
                    frame(encode::direct(d.from.as_str(), d.data, d.from_metadata))
                })
                .clone();
            if conn.deliver(bytes) == Delivery::Queued {
                delivered += 1;
            }
        }
        Ok(delivered)
    }

    async fn channel_members(
        &self,
        app: &AppId,
        channel: &ChannelName,
    ) -> Result<Vec<Member>, EngineError> {
        let Some(cell) = self.channel(&(app.clone(), channel.clone())) else {
            return Ok(Vec::new());
        };
        let state = lock(&cell);
        Ok(state
            .members
            .iter()
            .map(|(peer, m)| Member {
                peer_id: peer.clone(),
                metadata: m.metadata.clone(),
            })
            .collect())
    }

    async fn close_peer(
        &self,
        app: &AppId,
        peer: &PeerId,
        reason: CloseReason,
    ) -> Result<usize, EngineError> {
        let key = (app.clone(), peer.clone());
        let conns = lock(&self.peers[shard_of(&key)])
            .get(&key)
            .cloned()
            .unwrap_or_default();
        for conn in &conns {
            conn.close(reason);
        }
        Ok(conns.len())
    }

    async fn is_ready(&self) -> bool {
        true
    }

    fn stats(&self) -> EngineStats {
        EngineStats {
            channels: self.channels.iter().map(|shard| lock(shard).len()).sum(),
            subscriptions: self.subscriptions.load(Ordering::Relaxed),
            ..EngineStats::default()
        }
    }

    fn local_channels(&self, app: &AppId) -> Vec<ChannelSummary> {
        let mut out = Vec::new();
        for shard in &self.channels {
            let cells: Vec<(ChannelName, Arc<Mutex<ChannelState>>)> = lock(shard)
                .iter()
                .filter(|((a, _), _)| a == app)
                .map(|((_, name), cell)| (name.clone(), cell.clone()))
                .collect();
            for (channel, cell) in cells {
                let state = lock(&cell);
                out.push(ChannelSummary {
                    channel,
                    members: state.members.len(),
                    subscribers: state.subscribers.len(),
                });
            }
        }
        let mut pattern_counts: HashMap<ChannelName, usize> = HashMap::new();
        for (_, name) in self.patterns.subscriptions(app) {
            *pattern_counts.entry(name).or_default() += 1;
        }
        for (name, subscribers) in pattern_counts {
            out.push(ChannelSummary {
                channel: name,
                members: 0,
                subscribers,
            });
        }
        out.sort_by(|a, b| a.channel.cmp(&b.channel));
        out
    }

    fn local_connections(
        &self,
        app: &AppId,
        peer: Option<&PeerId>,
    ) -> Vec<(Arc<Conn>, Vec<ChannelName>)> {
        let mut conns: Vec<Arc<Conn>> = Vec::new();
        for shard in &self.peers {
            for ((a, p), list) in lock(shard).iter() {
                if a == app && peer.is_none_or(|want| want == p) {
                    conns.extend(list.iter().cloned());
                }
            }
        }
        let mut channels: HashMap<ConnId, Vec<ChannelName>> = HashMap::new();
        for shard in &self.channels {
            let cells: Vec<(ChannelName, Arc<Mutex<ChannelState>>)> = lock(shard)
                .iter()
                .filter(|((a, _), _)| a == app)
                .map(|((_, name), cell)| (name.clone(), cell.clone()))
                .collect();
            for (name, cell) in cells {
                for id in lock(&cell).subscribers.keys() {
                    channels.entry(*id).or_default().push(name.clone());
                }
            }
        }
        for (id, name) in self.patterns.subscriptions(app) {
            channels.entry(id).or_default().push(name);
        }
        super::with_channels(conns, channels)
    }
}
