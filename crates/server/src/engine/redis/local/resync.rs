//! Bringing local rosters back in line with Redis after deltas could not flow (the bus was
//! down, or the node shed pushes it could not keep up with).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use herald_protocol::PresenceEntry;
use serde_json::value::RawValue;

use super::{roster_from_flat, Local};
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
    /// The roster the subscribers were told is kept aside, as their snapshots' numbers no
    /// longer tell which deltas they already know: when Redis lost its data, every node
    /// re-asserts its peers with a `joined` (so subscribers whose snapshot was read before
    /// that learn of them), and those who knew the peer all along must not hear it twice.
    /// (A second reset before the re-sync keeps the first roster: subscribers since then get
    /// the re-sync's view of what changed against it.)
    pub fn reset_sequences(&self) {
        self.hub.channels.for_each(None, |_, ch| {
            if ch.slot.pre_reset.is_none() {
                ch.slot.pre_reset = Some(ch.slot.known.keys().cloned().collect());
            }
            ch.slot.known_seq = 0;
            ch.slot.resync_floor = 0;
            for sub in ch.subscribers_mut() {
                sub.floor = 0;
            }
        });
    }

    /// Brings local subscribers up to date with the cluster roster (read at `seq`): whoever
    /// joined or left while deltas could not flow gets one presence frame. Subscribers from
    /// before a sequence reset are compared with the roster they were told, the others with
    /// `known`; afterwards everyone knows the roster at `seq`, so a delta at or below it is
    /// old news. Skipped when a newer delta already arrived or a subscribe is in flight (the
    /// next re-sync tick covers it).
    pub fn resync(&self, key: &ChannelKey, roster: &[String], seq: u64) {
        let fresh: HashMap<PeerId, Option<Arc<RawValue>>> = roster_from_flat(roster, None)
            .into_iter()
            .map(|m| (m.peer_id, m.metadata))
            .collect();
        self.hub.channels.with(key, |ch| {
            let state = &ch.slot;
            if !state.joining.is_empty() || state.known_seq > seq {
                return;
            }
            let (joined, left) = changes(&fresh, state.known.keys(), &state.known);
            let pre_reset = state
                .pre_reset
                .as_ref()
                .map(|told| changes(&fresh, told.iter(), &state.known));
            for sub in ch.subscribers().filter(|s| s.conn.receives_presence) {
                let (joined, left) = match &pre_reset {
                    Some(changes) if sub.floor == 0 => (&changes.0, &changes.1),
                    _ => (&joined, &left),
                };
                let me = &sub.conn.peer_id;
                let (j, l) = (entries_except(joined, me), entries_except(left, me));
                if !j.is_empty() || !l.is_empty() {
                    sub.conn.deliver(presence(key.1.as_str(), &j, &l));
                }
            }
            for sub in ch.subscribers_mut() {
                sub.floor = sub.floor.max(seq);
            }
            let state = &mut ch.slot;
            state.known = fresh;
            state.known_seq = seq;
            state.resync_floor = seq;
            state.pre_reset = None;
        });
    }
}

type Entries<'a> = Vec<(&'a PeerId, &'a Option<Arc<RawValue>>)>;

/// Who joined and who left between a roster subscribers were told (`told`) and `fresh`; the
/// metadata of a peer that left comes from `known` when it is there.
fn changes<'a>(
    fresh: &'a HashMap<PeerId, Option<Arc<RawValue>>>,
    told: impl Iterator<Item = &'a PeerId> + Clone,
    known: &'a HashMap<PeerId, Option<Arc<RawValue>>>,
) -> (Entries<'a>, Entries<'a>) {
    const NONE: &Option<Arc<RawValue>> = &None;
    let told_set: HashSet<&PeerId> = told.clone().collect();
    let joined = fresh
        .iter()
        .filter(|(peer, _)| !told_set.contains(peer))
        .collect();
    let left = told
        .filter(|peer| !fresh.contains_key(*peer))
        .map(|peer| (peer, known.get(peer).unwrap_or(NONE)))
        .collect();
    (joined, left)
}
