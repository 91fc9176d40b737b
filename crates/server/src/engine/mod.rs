//! The engine boundary: presence and fan-out, behind one small trait.
//!
//! The session code talks only to [`Engine`]. The in-memory engine ([`memory::MemoryEngine`])
//! serves a single node; a distributed engine fills the same trait without touching sessions.
//! Presence and fan-out share one trait because the subscribe sequence (ack, snapshot, then the
//! delta to others) must be atomic with respect to other presence changes on the channel, and
//! only the engine can order those.

pub mod memory;
pub mod redis;
pub mod wildcard;

use std::sync::Arc;

use async_trait::async_trait;
use herald_protocol::glob::Pattern;
use serde_json::value::RawValue;

use crate::close::CloseReason;
use crate::conn::{Conn, Frame};
use crate::ids::{AppId, ChannelName, PeerId};

/// Faults of the engine itself (not of client input). Maps to `backend_error` on the wire.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// A wildcard subscribe would exceed the app's distinct-pattern cap on this node
    /// (`channel_limit_exceeded` on the wire).
    #[error("too many distinct wildcard patterns in this app")]
    PatternLimit,
}

/// How a connection ended, as far as presence is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// A deliberate leave (client close frame, kick, terminal close): `left` goes out at once.
    Left,
    /// The socket dropped or the server closed it for a reason the client retries after (expiry,
    /// rate limit, dead socket). An engine may hold presence for a grace period.
    Dropped,
    /// The node is shutting down (close 1001): the client will reconnect, here or elsewhere.
    /// Nothing should be announced that the reconnect would immediately undo.
    Shutdown,
}

/// What a subscription targets: one concrete channel or a wildcard pattern (spec §9.4).
#[derive(Debug, Clone)]
pub enum Target {
    Channel,
    Pattern(Pattern),
}

/// A subscribe request, already validated and authorised by the session.
pub struct SubscribeRequest<'a> {
    pub conn: &'a Arc<Conn>,
    pub channel: &'a ChannelName,
    pub target: Target,
    pub include_sender_metadata: bool,
    /// The `ack` to enqueue first, when the client sent a requestId.
    pub ack: Option<Frame>,
    /// Distinct wildcard patterns the app may hold on this node; a pattern new to the app beyond
    /// it is refused with [`EngineError::PatternLimit`] (nothing enqueued).
    pub max_app_patterns: usize,
}

/// A publication to one concrete channel.
pub struct Publication<'a> {
    pub app: &'a AppId,
    pub channel: &'a ChannelName,
    pub from: &'a PeerId,
    pub from_metadata: Option<&'a RawValue>,
    pub data: &'a RawValue,
    /// The publishing connection, which never receives its own message. `None` for REST.
    pub exclude: Option<&'a Conn>,
}

/// A direct message to every connection of one peer.
pub struct Direct<'a> {
    pub app: &'a AppId,
    pub to: &'a PeerId,
    pub from: &'a PeerId,
    pub from_metadata: Option<&'a RawValue>,
    pub data: &'a RawValue,
    /// The sending connection: a `send` to oneself reaches only one's *other* connections.
    pub exclude: Option<&'a Conn>,
}

/// One roster entry: a peer and the metadata of its most recently subscribed connection.
#[derive(Debug, Clone)]
pub struct Member {
    pub peer_id: PeerId,
    pub metadata: Option<Arc<RawValue>>,
}

/// Serializes as a presence entry, `{"peerId", "metadata"?}`, with the metadata passed through
/// byte-for-byte (REST and admin answers show exactly what presence frames show).
impl serde::Serialize for Member {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("peerId", self.peer_id.as_str())?;
        if let Some(metadata) = &self.metadata {
            map.serialize_entry("metadata", &**metadata)?;
        }
        map.end()
    }
}

/// A `message` encoded at most once per variant (with and without `fromMetadata`) and shared by
/// every receiver: the "encode once, fan out bytes" rule of both engines.
pub(crate) struct MessageFrames<'a> {
    channel: &'a str,
    from: &'a str,
    data: &'a RawValue,
    from_metadata: Option<&'a RawValue>,
    plain: Option<Frame>,
    with_metadata: Option<Frame>,
}

impl<'a> MessageFrames<'a> {
    pub(crate) fn new(
        channel: &'a str,
        from: &'a str,
        data: &'a RawValue,
        from_metadata: Option<&'a RawValue>,
    ) -> Self {
        MessageFrames {
            channel,
            from,
            data,
            from_metadata,
            plain: None,
            with_metadata: None,
        }
    }

    /// The frame for a receiver whose subscription did (or did not) ask for sender metadata.
    pub(crate) fn get(&mut self, include_sender_metadata: bool) -> Frame {
        let metadata = self.from_metadata.filter(|_| include_sender_metadata);
        let slot = if metadata.is_some() {
            &mut self.with_metadata
        } else {
            &mut self.plain
        };
        let (channel, from, data) = (self.channel, self.from, self.data);
        slot.get_or_insert_with(|| {
            Frame::from(herald_protocol::encode::message(
                channel, from, data, metadata,
            ))
        })
        .clone()
    }
}

/// Pairs each connection (sorted by id) with its sorted channel list, for the operator views.
pub(crate) fn with_channels(
    mut conns: Vec<Arc<Conn>>,
    mut by_conn: std::collections::HashMap<crate::ids::ConnId, Vec<ChannelName>>,
) -> Vec<(Arc<Conn>, Vec<ChannelName>)> {
    conns.sort_by_key(|c| c.id);
    conns
        .into_iter()
        .map(|c| {
            let mut list = by_conn.remove(&c.id).unwrap_or_default();
            list.sort();
            (c, list)
        })
        .collect()
}

/// One channel as operators see it on this node.
#[derive(Debug, Clone)]
pub struct ChannelSummary {
    pub channel: ChannelName,
    /// Distinct peers in the roster.
    pub members: usize,
    /// Subscribed connections on this node.
    pub subscribers: usize,
}

/// Live counters an engine can report (for usage and operations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub channels: usize,
    pub subscriptions: usize,
    /// The Redis engine's queue of pushes from Redis (zero on the memory engine).
    pub bus_queue: BusQueueStats,
}

/// The queue between Redis pub/sub and the node's bus task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusQueueStats {
    /// Pushes queued now.
    pub queued: usize,
    /// Bytes queued now.
    pub queued_bytes: usize,
    /// The most pushes ever queued at once.
    pub peak: usize,
    /// Pushes dropped because the queue was full, since the node started.
    pub shed: u64,
}

#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Makes a connection reachable by `send` and `kick`. Called just before `welcome` is written
    /// (frames routed meanwhile wait in the queue, behind the welcome).
    async fn register(&self, conn: &Arc<Conn>) -> Result<(), EngineError>;

    /// Removes the connection from the given subscriptions (reference-counted `left` deltas) and
    /// from the peer registry. Called exactly once by the session on its way out; the session
    /// passes its own subscription list so the engine keeps no per-connection index.
    async fn disconnect(
        &self,
        conn: &Arc<Conn>,
        subscriptions: Vec<ChannelName>,
        departure: Departure,
    );

    /// Atomically: enqueue the ack, the full snapshot (to presence receivers), then, when this is
    /// the peer's first connection on the channel, the `joined` delta to the other subscribers.
    /// A repeat subscribe of the same connection re-sends ack and snapshot, updates the flag and
    /// broadcasts nothing. Returns `true` when the subscription is new.
    async fn subscribe(&self, req: SubscribeRequest<'_>) -> Result<bool, EngineError>;

    /// Removes one subscription (idempotent; a name with an unescaped `*` is a pattern) and emits the reference-counted `left`. Returns
    /// `true` when the connection was subscribed.
    async fn unsubscribe(
        &self,
        conn: &Arc<Conn>,
        channel: &ChannelName,
    ) -> Result<bool, EngineError>;

    /// Fans a message out to every subscriber of the channel (exact and wildcard, once per
    /// connection) except the publisher. Returns the number of connections it was queued for.
    async fn publish(&self, publication: Publication<'_>) -> Result<usize, EngineError>;

    /// Delivers `direct` to every live connection of the target peer. Returns how many; 0 means
    /// the peer is offline (`peer_not_found`).
    async fn send_direct(&self, direct: Direct<'_>) -> Result<usize, EngineError>;

    /// The channel's roster, one entry per peer.
    async fn channel_members(
        &self,
        app: &AppId,
        channel: &ChannelName,
    ) -> Result<Vec<Member>, EngineError>;

    /// Closes every connection of a peer with `reason`. Returns how many were closed.
    async fn close_peer(
        &self,
        app: &AppId,
        peer: &PeerId,
        reason: CloseReason,
    ) -> Result<usize, EngineError>;

    /// True when the engine can serve requests (the node is ready only if this holds).
    async fn is_ready(&self) -> bool;

    /// Point-in-time counters.
    fn stats(&self) -> EngineStats;

    /// Operator view: this node's channels of an app (pattern subscriptions included, with no
    /// members), sorted by name.
    fn local_channels(&self, app: &AppId) -> Vec<ChannelSummary>;

    /// Operator view: this node's connections of an app, or of one peer, each with the channels
    /// it is subscribed to.
    fn local_connections(
        &self,
        app: &AppId,
        peer: Option<&PeerId>,
    ) -> Vec<(Arc<Conn>, Vec<ChannelName>)>;
}
