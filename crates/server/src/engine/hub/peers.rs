//! The node's peer registry: every live local connection by `(app, peer)`, for `send` (direct
//! delivery) and kicks. Sharded like the channel map; its locks are never held with a channel's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::close::CloseReason;
use crate::conn::{Conn, Delivery, Frame};
use crate::ids::{AppId, PeerId};
use crate::sync::lock;

use super::channels::shard_of;

const SHARDS: usize = 16;

pub type PeerKey = (AppId, PeerId);

pub struct PeerRegistry {
    shards: Vec<Mutex<HashMap<PeerKey, Vec<Arc<Conn>>>>>,
}

impl Default for PeerRegistry {
    fn default() -> Self {
        PeerRegistry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl PeerRegistry {
    fn shard(&self, key: &PeerKey) -> &Mutex<HashMap<PeerKey, Vec<Arc<Conn>>>> {
        &self.shards[shard_of(key)]
    }

    pub fn register(&self, conn: &Arc<Conn>) {
        let key = (conn.app.clone(), conn.peer_id.clone());
        lock(self.shard(&key))
            .entry(key)
            .or_default()
            .push(conn.clone());
    }

    pub fn unregister(&self, conn: &Conn) {
        let key = (conn.app.clone(), conn.peer_id.clone());
        let mut peers = lock(self.shard(&key));
        if let Some(conns) = peers.get_mut(&key) {
            conns.retain(|c| c.id != conn.id);
            if conns.is_empty() {
                peers.remove(&key);
            }
        }
    }

    /// The peer's live connections on this node.
    pub fn connections_of(&self, app: &AppId, peer: &PeerId) -> Vec<Arc<Conn>> {
        let key = (app.clone(), peer.clone());
        lock(self.shard(&key))
            .get(&key)
            .cloned()
            .unwrap_or_default()
    }

    /// Queues a `direct` for every connection of the peer but `excluded`, encoded at most once
    /// (by `encode`, only if someone is there). Returns how many queues took it.
    pub fn deliver_direct(
        &self,
        app: &AppId,
        to: &PeerId,
        excluded: Option<crate::ids::ConnId>,
        encode: impl FnOnce() -> Frame,
    ) -> usize {
        let key = (app.clone(), to.clone());
        let peers = lock(self.shard(&key));
        let Some(conns) = peers.get(&key) else {
            return 0;
        };
        let mut targets = conns.iter().filter(|c| Some(c.id) != excluded).peekable();
        if targets.peek().is_none() {
            return 0;
        }
        let frame = encode();
        let mut delivered = 0;
        for conn in targets {
            if conn.deliver(frame.clone()) == Delivery::Queued {
                delivered += 1;
            }
        }
        delivered
    }

    /// Closes every connection of the peer on this node. Returns how many.
    pub fn close(&self, app: &AppId, peer: &PeerId, reason: CloseReason) -> usize {
        let conns = self.connections_of(app, peer);
        for conn in &conns {
            conn.close(reason);
        }
        conns.len()
    }

    /// Visits every registered peer (of one app, or all) with its connections, shard by shard.
    pub fn for_each(&self, app: Option<&AppId>, mut f: impl FnMut(&PeerKey, &[Arc<Conn>])) {
        for shard in &self.shards {
            for (key, conns) in lock(shard).iter() {
                if app.is_none_or(|want| *want == key.0) {
                    f(key, conns);
                }
            }
        }
    }
}
