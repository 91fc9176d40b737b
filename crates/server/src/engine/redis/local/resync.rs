//! Bringing local rosters back in line with Redis after deltas could not flow (the bus was
//! down, or the node shed pushes it could not keep up with).

use std::collections::HashMap;
use std::sync::Arc;

use herald_protocol::PresenceEntry;
use serde_json::value::RawValue;

use super::{roster_from_flat, Local};
use crate::engine::hub::occupancy::{self, Change};
use crate::engine::hub::{presence, ChannelKey};
use crate::ids::PeerId;

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

impl Local {
    /// Channels with local subscribers (to re-sync their rosters after an outage).
    pub fn subscribed_channels(&self) -> Vec<ChannelKey> {
        let mut keys = Vec::new();
        self.hub.channels.for_each(None, |key, ch| {
            if ch.subscriber_count() > 0 {
                keys.push(key.clone());
            }
        });
        keys
    }

    /// Forgets sequence numbers after a bus reconnect: Redis may have restarted and counts anew.
    pub fn reset_sequences(&self) {
        self.hub.channels.for_each(None, |_, ch| {
            ch.slot.known_seq = 0;
            ch.slot.resync_floor = 0;
            for sub in ch.subscribers_mut() {
                sub.floor = 0;
            }
        });
    }

    /// Brings local subscribers up to date with the cluster roster (read at `seq`): whoever
    /// joined or left while deltas could not flow gets one presence frame. Skipped when a newer
    /// delta already arrived or a subscribe is in flight (the next re-sync tick covers it).
    pub fn resync(&self, key: &ChannelKey, roster: &[String], seq: u64) {
        let mut fresh: HashMap<PeerId, Option<Arc<RawValue>>> = roster_from_flat(roster, None)
            .into_iter()
            .map(|m| (m.peer_id, m.metadata))
            .collect();
        let tick = self.hub.channels.with(key, |ch| {
            let state = &ch.slot;
            if !state.joining.is_empty() || state.known_seq > seq {
                return None;
            }
            // A large room over its cap gets the count (or, back at the cap, the repair),
            // never the per-member differences.
            if self.rules.cap_for(key.1.as_str()).is_some() {
                let before = std::mem::replace(&mut ch.slot.known, fresh);
                let now = tokio::time::Instant::now();
                let change =
                    occupancy::roster_replaced(ch, &self.rules, key.1.as_str(), &before, now);
                if let Change::Handled(tick) = change {
                    ch.slot.known_seq = seq;
                    ch.slot.resync_floor = seq;
                    return tick;
                }
                fresh = std::mem::replace(&mut ch.slot.known, before);
            }
            let state = &ch.slot;
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
                for sub in ch.subscribers().filter(|s| s.conn.receives_presence) {
                    let me = &sub.conn.peer_id;
                    let (j, l) = (entries_except(&joined, me), entries_except(&left, me));
                    if !j.is_empty() || !l.is_empty() {
                        sub.conn.deliver(presence(key.1.as_str(), &j, &l));
                    }
                }
            }
            let state = &mut ch.slot;
            state.known = fresh;
            state.known_seq = seq;
            state.resync_floor = seq;
            None
        });
        if let Some(Some(at)) = tick {
            occupancy::schedule_count(&self.hub.channels, key, at);
        }
    }
}
