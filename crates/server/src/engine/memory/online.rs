//! Webhooks on the memory engine: whether a peer is online in its app (`peer.online` /
//! `peer.offline`), with a reconnect grace of its own, and the one place the engine asks
//! whether an app wants an event at all.
//!
//! A peer is online from its first connection to the end of its last one. A dropped last
//! connection holds the peer for the grace, as channel rosters do, so a page reload or a blip
//! announces nothing, and two tabs give one `online` and one `offline`. Only apps with an
//! endpoint that takes peer events are tracked: others pay one lookup per connect.
//!
//! Events are emitted under the lock that decides the transition, so a peer's events leave in
//! the order they happened.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::value::RawValue;

use crate::conn::Conn;
use crate::engine::Departure;
use crate::ids::{AppId, PeerId};
use crate::sync::lock;
use crate::webhooks::{EventFields, EventType, Webhooks};

const SHARDS: usize = 16;

type PeerKey = (AppId, PeerId);

struct Life {
    /// Live connections of the peer on this node.
    connections: u32,
    /// With none left after a drop: the generation of the grace holding the peer online.
    held: Option<u64>,
    /// The metadata of its latest connection, told with `online` and `offline`.
    metadata: Option<Arc<RawValue>>,
}

/// The node's webhooks, once attached, and the peers of apps that want peer events.
#[derive(Default)]
pub struct Announcer {
    hooks: OnceLock<Arc<Webhooks>>,
    shards: [Mutex<HashMap<PeerKey, Life>>; SHARDS],
    generation: AtomicU64,
}

/// What the end of a connection did to its peer's online state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEnd {
    /// Not tracked, or other connections remain, or `offline` went out.
    Settled,
    /// Held for the grace: `offline` goes out when this generation's grace runs out.
    Held(u64),
}

impl Announcer {
    pub fn attach(&self, hooks: Arc<Webhooks>) {
        let _ = self.hooks.set(hooks);
    }

    /// The webhooks, when some endpoint of `app` takes `kind` (for `channel`). Cheap: check
    /// before gathering an event's fields.
    pub fn wants(&self, app: &AppId, kind: EventType, channel: Option<&str>) -> Option<&Webhooks> {
        let hooks = self.hooks.get()?;
        hooks.wants(app.as_str(), kind, channel).then_some(&**hooks)
    }

    /// Emits `kind` if some endpoint of `app` takes it.
    pub fn emit(&self, app: &AppId, kind: EventType, fields: EventFields<'_>) {
        if let Some(hooks) = self.wants(app, kind, fields.channel) {
            hooks.emit(app.as_str(), kind, fields);
        }
    }

    fn tracks(&self, app: &AppId) -> bool {
        self.wants(app, EventType::PeerOnline, None).is_some()
            || self.wants(app, EventType::PeerOffline, None).is_some()
    }

    fn shard(&self, key: &PeerKey) -> &Mutex<HashMap<PeerKey, Life>> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// A connection of the peer registered: `online` if it is the first and the peer was not
    /// held through a grace.
    pub fn connected(&self, conn: &Conn) {
        if !self.tracks(&conn.app) {
            return;
        }
        let key = (conn.app.clone(), conn.peer_id.clone());
        let mut peers = lock(self.shard(&key));
        let life = peers.entry(key).or_insert(Life {
            connections: 0,
            held: None,
            metadata: None,
        });
        let arrives = life.connections == 0 && life.held.is_none();
        life.connections += 1;
        life.held = None;
        life.metadata = conn.peer_metadata.clone();
        if arrives {
            self.emit_peer(
                EventType::PeerOnline,
                &conn.app,
                &conn.peer_id,
                &life.metadata,
            );
        }
    }

    /// A connection of the peer ended. A drop of the last one (with a grace) holds the peer;
    /// any other end of the last one announces `offline` at once.
    pub fn disconnected(&self, conn: &Conn, departure: Departure, grace: bool) -> PeerEnd {
        if !self.tracks(&conn.app) {
            return PeerEnd::Settled;
        }
        let key = (conn.app.clone(), conn.peer_id.clone());
        let mut peers = lock(self.shard(&key));
        let Some(life) = peers.get_mut(&key) else {
            return PeerEnd::Settled;
        };
        life.connections = life.connections.saturating_sub(1);
        if life.connections > 0 {
            return PeerEnd::Settled;
        }
        if departure == Departure::Dropped && grace {
            let generation = self.generation.fetch_add(1, Ordering::Relaxed);
            life.held = Some(generation);
            return PeerEnd::Held(generation);
        }
        if let Some(life) = peers.remove(&key) {
            self.emit_peer(EventType::PeerOffline, &key.0, &key.1, &life.metadata);
        }
        PeerEnd::Settled
    }

    /// Ends the hold of this generation if the peer is still gone: `offline`. True when it
    /// went out.
    pub fn grace_expired(&self, app: &AppId, peer: &PeerId, generation: u64) -> bool {
        let key = (app.clone(), peer.clone());
        let mut peers = lock(self.shard(&key));
        let expired = peers
            .get(&key)
            .is_some_and(|l| l.connections == 0 && l.held == Some(generation));
        if expired {
            if let Some(life) = peers.remove(&key) {
                self.emit_peer(EventType::PeerOffline, app, peer, &life.metadata);
            }
        }
        expired
    }

    fn emit_peer(
        &self,
        kind: EventType,
        app: &AppId,
        peer: &PeerId,
        metadata: &Option<Arc<RawValue>>,
    ) {
        self.emit(
            app,
            kind,
            EventFields {
                peer_id: Some(peer.as_str()),
                metadata: metadata.as_deref(),
                ..EventFields::default()
            },
        );
    }
}
