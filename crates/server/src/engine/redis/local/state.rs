//! What the rest of the engine needs to know about local state as a whole: the topics the bus
//! must listen to, the index entries that must stay, and what re-assertion writes back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::value::RawValue;

use super::Local;

/// Local state as re-assertion wants it, keyed by channel and route base keys.
pub struct ReassertState {
    pub channels: HashMap<String, ChannelHolds>,
    /// Per route base key, the peer's connections on this node.
    pub routes: HashMap<String, usize>,
}

/// One channel's holds (peer, metadata JSON or `""`) and local subscriber count.
#[derive(Default)]
pub struct ChannelHolds {
    pub holds: Vec<(String, String)>,
    pub subscribers: usize,
}

impl Local {
    /// Channel topics the node must be subscribed to, and apps with wildcard subscribers
    /// (after a bus reconnect).
    pub fn topics(&self) -> (Vec<String>, Vec<String>) {
        let mut channels = Vec::new();
        self.hub.channels.for_each(None, |key, ch| {
            if ch.slot.topic {
                channels.push(self.bus.keys().channel(key.0.as_str(), key.1.as_str()));
            }
        });
        (channels, self.pattern_apps())
    }

    /// Apps with local wildcard subscribers.
    pub fn pattern_apps(&self) -> Vec<String> {
        self.hub
            .patterns
            .apps()
            .into_iter()
            .map(|app| app.as_str().to_string())
            .collect()
    }

    /// Base keys of every channel the node may hold presence on (subscribers, holds, a
    /// subscribe in flight or a grace period running) and every peer with connections here:
    /// their index entries must stay.
    pub fn live_bases(&self) -> HashSet<String> {
        let keys = self.bus.keys();
        let mut bases = HashSet::new();
        self.hub.channels.for_each(None, |(app, channel), _| {
            bases.insert(keys.channel_base(app.as_str(), channel.as_str()));
        });
        self.hub.peers.for_each(None, |(app, peer), _| {
            bases.insert(keys.route_base(app.as_str(), peer.as_str()));
        });
        bases
    }

    /// Local state as re-assertion wants it.
    pub fn snapshot_for_reassert(&self) -> ReassertState {
        let keys = self.bus.keys();
        let mut channels = HashMap::new();
        self.hub.channels.for_each(None, |(app, channel), ch| {
            let meta_of = |m: &Option<Arc<RawValue>>| {
                m.as_ref().map_or(String::new(), |m| m.get().to_string())
            };
            let mut holds: Vec<(String, String)> = ch
                .slot
                .holds
                .iter()
                .map(|(peer, hold)| (peer.as_str().to_string(), meta_of(&hold.metadata)))
                .collect();
            // A subscribe in flight may have joined in Redis already: its hold is not stale.
            let mut added = HashSet::new();
            for joining in ch.slot.joining.values() {
                let peer = &joining.conn.peer_id;
                if !ch.slot.holds.contains_key(peer) && added.insert(peer) {
                    holds.push((
                        peer.as_str().to_string(),
                        meta_of(&joining.conn.peer_metadata),
                    ));
                }
            }
            channels.insert(
                keys.channel_base(app.as_str(), channel.as_str()),
                ChannelHolds {
                    holds,
                    subscribers: ch.subscriber_count(),
                },
            );
        });
        let mut routes = HashMap::new();
        self.hub.peers.for_each(None, |(app, peer), conns| {
            routes.insert(keys.route_base(app.as_str(), peer.as_str()), conns.len());
        });
        ReassertState { channels, routes }
    }
}
