//! The engine boundary: presence and fan-out, behind one small trait.
//!
//! The session code talks only to [`Engine`]. Both engines build on the node-local [`hub`]
//! (local subscribers, wildcard index, peer registry, encode-once delivery): the in-memory
//! engine ([`memory::MemoryEngine`]) adds an in-process roster and serves a single node; the
//! Redis engine ([`redis::RedisEngine`]) adds presence, routing and leases in Redis.
//! Presence and fan-out share one trait because the subscribe sequence (ack, snapshot, then the
//! delta to others) must be atomic with respect to other presence changes on the channel, and
//! only the engine can order those.

pub mod hub;
pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use herald_protocol::glob::Pattern;
use serde_json::value::RawValue;

use crate::close::CloseReason;
use crate::conn::{Conn, Frame};
use crate::history::{Page, PageQuery};
use crate::ids::{AppId, ChannelName, PeerId};
use crate::resume::book::{BookStats, Queued};
use crate::resume::{Recovery, ResumeFrom, Since};

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
#[derive(Clone, Copy)]
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

/// One channel as operators see it on this node.
#[derive(Debug, Clone)]
pub struct ChannelSummary {
    pub channel: ChannelName,
    /// Distinct peers in the roster.
    pub members: usize,
    /// Subscribed connections on this node.
    pub subscribers: usize,
}

/// How full a channel is across the service, read without listing its roster: what
/// `GET /v1/channels/{channel}/occupancy` answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Occupancy {
    /// Distinct peers in the roster.
    pub peers: usize,
    /// Connections subscribed to the channel itself on every node (wildcard subscribers are
    /// not counted: which patterns match is known only on their own nodes).
    pub connections: usize,
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
    /// Messages of channels with history that pub/sub lost on the way to this node and that
    /// were fetched back from the channel's history before the next one was delivered.
    pub history_repaired: u64,
    /// Messages lost on the way that the channel's history no longer held (trimmed).
    pub history_lost: u64,
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

    /// The channel's roster size and subscribed connections, at O(1) cost in its size (one
    /// Redis call on the Redis engine), so a huge room can be watched cheaply.
    async fn occupancy(&self, app: &AppId, channel: &ChannelName)
        -> Result<Occupancy, EngineError>;

    /// A page of the channel's history (`GET /v1/channels/{channel}/messages`), or `None` when
    /// this engine keeps none for the channel.
    async fn history(
        &self,
        app: &AppId,
        channel: &ChannelName,
        query: &PageQuery,
    ) -> Result<Option<Page>, EngineError> {
        let _ = (app, channel, query);
        Ok(None)
    }

    // Lossless reconnect (`resume/`). The defaults keep nothing and resume nothing, so an
    // engine without history behaves as before; an engine that keeps history implements them
    // together (positions and inboxes then live where its history lives).

    /// Whether `channel` keeps history here, so its positions can be confirmed and resumed.
    fn keeps_history(&self, channel: &ChannelName) -> bool {
        let _ = channel;
        false
    }

    /// The current position of each of `channels` that keeps history, each read under its
    /// channel's lock (every message up to it is already queued to the channel's local
    /// subscribers). For the session's watermark ping.
    async fn positions(&self, app: &AppId, channels: &[ChannelName]) -> Vec<(ChannelName, Since)> {
        let _ = (app, channels);
        Vec::new()
    }

    /// A stable peer's connection dropped: takes it out of the peer registry (in place of
    /// `disconnect`'s, which then finds nothing) and keeps its confirmed positions and an inbox
    /// for the resume window. The default only unregisters, through `disconnect`.
    async fn park(&self, conn: &Arc<Conn>, positions: Vec<(ChannelName, Since)>) {
        let _ = (conn, positions);
    }

    /// A watermark pong confirmed `positions` (all of them so far) for a stable peer's
    /// connection. An engine whose nodes can die before they see a drop writes them down
    /// lazily, so another node can still resume the peer; the default keeps nothing. Must
    /// not block: it runs in the session's loop.
    fn confirmed(&self, conn: &Arc<Conn>, positions: Vec<(ChannelName, Since)>) {
        let _ = (conn, positions);
    }

    /// The confirmed position a peer inside its resume window left on `channel`, taken.
    async fn take_position(
        &self,
        app: &AppId,
        peer: &PeerId,
        channel: &ChannelName,
    ) -> Option<Since> {
        let _ = (app, peer, channel);
        None
    }

    /// Like `subscribe`, then, before any live message, every retained message after
    /// `from.since`, or none. With `from.acks`, the ack queued first says which. No rewind.
    /// The default cannot replay: it subscribes and reports failure.
    async fn subscribe_from(
        &self,
        mut req: SubscribeRequest<'_>,
        from: ResumeFrom,
    ) -> Result<(bool, Recovery), EngineError> {
        if let Some((_, failed)) = from.acks {
            req.ack = Some(failed);
        }
        Ok((self.subscribe(req).await?, Recovery::Failed))
    }

    /// A direct that found no live connection (`send_direct` returned 0): delivered if the
    /// peer has registered since, else held in its inbox when it is inside its resume window.
    async fn queue_direct(&self, direct: Direct<'_>) -> Result<Queued, EngineError> {
        let _ = direct;
        Ok(Queued::NotParked)
    }

    /// Counters of the resume book, for metrics.
    fn resume_stats(&self) -> BookStats {
        BookStats::default()
    }

    /// Webhooks (`webhooks/`): the node's endpoints, handed over once at start when some app
    /// has `[[apps.webhooks]]`. The engine announces each transition where it decides it (once
    /// cluster-wide, after the reconnect grace). The default announces nothing.
    fn attach_webhooks(&self, webhooks: Arc<crate::webhooks::Webhooks>) {
        let _ = webhooks;
    }

    /// Closes every connection of a peer with `reason`. Returns how many were closed.
    async fn close_peer(
        &self,
        app: &AppId,
        peer: &PeerId,
        reason: CloseReason,
    ) -> Result<usize, EngineError>;

    /// Called once at the end of a graceful shutdown, after every session has ended: hands
    /// over what this node holds for the cluster (the Redis engine releases its webhook
    /// delivery leases, so another node delivers at once instead of after a lease).
    async fn shutdown(&self) {}

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
