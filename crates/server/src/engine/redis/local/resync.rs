//! Bringing local rosters back in line with Redis after deltas could not flow (the bus was
//! down, or the node shed pushes it could not keep up with).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use herald_protocol::PresenceEntry;
use serde_json::value::RawValue;

use super::{roster_from_flat, Local};
use crate::engine::hub::occupancy::{self, Change};
use crate::engine::hub::{presence, ChannelKey, Subscriber};
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
        self.hub.channels.for_each(None, |key, ch| {
            // Waiting deltas carry the old numbers: they go out before the numbers are dropped.
            self.hub.flush_deltas(key, ch);
            if ch.slot.pre_reset.is_none() && ch.subscriber_count() > 0 {
                ch.slot.pre_reset = Some(ch.slot.known.keys().cloned().collect());
            }
            ch.slot.known_seq = 0;
            ch.slot.last_seq = 0;
            ch.slot.resync_floor = 0;
            ch.slot.mirror = None;
            for sub in ch.subscribers_mut() {
                sub.floor = 0;
            }
        });
    }

    /// Brings local subscribers up to date with the cluster roster (read at `seq`): whoever
    /// joined or left while deltas could not flow gets one presence frame. Subscribers from
    /// before a sequence reset are compared with the roster they were told, the others with
    /// `known`; afterwards everyone knows the roster at `seq`, so a delta at or below it is
    /// old news. Skipped when a newer delta already arrived or a subscribe is in flight:
    /// returns false then, and the caller reads the roster again.
    pub fn resync(&self, key: &ChannelKey, roster: &[String], seq: u64) -> bool {
        let mut fresh = fresh_roster(roster);
        let mut tick = None;
        let applied = self.hub.channels.with(key, |ch| {
            let state = &ch.slot;
            if !state.joining.is_empty() || state.known_seq > seq {
                return false;
            }
            // The differences below are against `known`, which the waiting deltas are in.
            self.hub.flush_deltas(key, ch);
            // A large room over its cap gets the count (or, back at the cap, the repair),
            // never the per-member differences.
            if self.rules.cap_for(key.1.as_str()).is_some() {
                let before = ch.slot.replace_known(fresh);
                let now = tokio::time::Instant::now();
                let change =
                    occupancy::roster_replaced(ch, &self.rules, key.1.as_str(), &before, now);
                if let Change::Handled(at) = change {
                    tick = at;
                    for sub in ch.subscribers_mut() {
                        sub.floor = sub.floor.max(seq);
                    }
                    let state = &mut ch.slot;
                    state.known_seq = seq;
                    state.resync_floor = seq;
                    state.pre_reset = None;
                    // Exact again, but of an epoch this read did not say: the next subscribe
                    // reads the roster.
                    state.mirror = None;
                    return true;
                }
                fresh = ch.slot.replace_known(before);
            }
            let state = &ch.slot;
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
                tell(key, sub, joined, left);
            }
            for sub in ch.subscribers_mut() {
                sub.floor = sub.floor.max(seq);
            }
            let state = &mut ch.slot;
            state.replace_known(fresh);
            state.known_seq = seq;
            state.resync_floor = seq;
            state.pre_reset = None;
            state.mirror = None;
            true
        });
        if let Some(at) = tick {
            occupancy::schedule_count(&self.hub.channels, key, at);
        }
        applied.unwrap_or(true)
    }

    /// Tells subscribers from before the last sequence reset who joined while this node's bus
    /// was down, and nothing else: peers missing from the roster stay in their roster (right
    /// after Redis lost its data, a missing peer may just not be re-asserted yet, while a
    /// listed one is surely there). Safe at any time, so a node that reconnects later than the
    /// others tells its old subscribers at once, not a lease later. Their roster is a set
    /// (`pre_reset`), so a late delta for a peer told here is not told again, and a `left`
    /// still goes out. Subscribers since the reset read their snapshot with the topic
    /// subscribed: they missed nothing.
    pub fn resync_joined(&self, key: &ChannelKey, roster: &[String]) {
        let fresh = fresh_roster(roster);
        self.hub.channels.with(key, |ch| {
            let Some(told) = ch.slot.pre_reset.as_ref() else {
                return;
            };
            let (joined, _) = changes(&fresh, told.iter(), &ch.slot.known);
            if joined.is_empty() {
                return;
            }
            for sub in ch.subscribers() {
                if sub.floor == 0 && sub.conn.receives_presence {
                    tell(key, sub, &joined, &[]);
                }
            }
            if let Some(told) = ch.slot.pre_reset.as_mut() {
                told.extend(fresh.into_keys());
            }
        });
    }
}

fn fresh_roster(roster: &[String]) -> HashMap<PeerId, Option<Arc<RawValue>>> {
    roster_from_flat(roster, None)
        .into_iter()
        .map(|m| (m.peer_id, m.metadata))
        .collect()
}

/// One presence frame to a subscriber with who joined and who left, itself excepted.
fn tell(key: &ChannelKey, sub: &Subscriber, joined: &[Entry<'_>], left: &[Entry<'_>]) {
    let me = &sub.conn.peer_id;
    let (j, l) = (entries_except(joined, me), entries_except(left, me));
    if !j.is_empty() || !l.is_empty() {
        sub.conn.deliver(presence(key.1.as_str(), &j, &l));
    }
}

type Entry<'a> = (&'a PeerId, &'a Option<Arc<RawValue>>);
type Entries<'a> = Vec<Entry<'a>>;

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use crate::conn::{Conn, Outbound};
    use crate::engine::redis::keys::Keys;
    use crate::engine::redis::local::Local;
    use crate::engine::redis::topics::BusSender;
    use crate::engine::redis::wire::{kind, Event};
    use crate::ids::{AppId, ChannelName, PeerId};

    fn local() -> Local {
        let (bus, _commands) = BusSender::new(Arc::new(Keys::new("h:", "n1")));
        Local::new(bus, std::time::Duration::ZERO)
    }

    fn delta<'a>(kind: &'a str, seq: u64, peer: &'a str) -> Event<'a> {
        let mut event = Event::new(kind);
        event.seq = Some(seq);
        event.peer = Some(peer.into());
        event
    }

    /// Peer ids of every `joined` / `left` entry queued for a connection, in order.
    fn told(rx: &mut Outbound) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv())
            .map(|f| serde_json::from_str::<serde_json::Value>(f.as_str()).unwrap())
            .flat_map(|f| {
                let mut out = Vec::new();
                for (list, sign) in [("joined", "+"), ("left", "-")] {
                    for e in f[list].as_array().into_iter().flatten() {
                        out.push(format!("{sign}{}", e["peerId"].as_str().unwrap()));
                    }
                }
                out
            })
            .collect()
    }

    /// Subscribes peer `name` to `room`, with a snapshot read at `seq`.
    fn subscribe(local: &Local, name: &str, seq: u64, roster: &[&str]) -> Outbound {
        let (conn, rx) = Conn::new(
            AppId::new("app".to_string()),
            PeerId::new(name.to_string()),
            None,
            true,
            "publishable",
            64,
        );
        let room = ChannelName::new("room".to_string());
        let flat: Vec<String> = roster
            .iter()
            .flat_map(|p| [p.to_string(), String::new()])
            .collect();
        local.begin_subscribe(&conn, &room, false);
        local.finish_subscribe(&conn, &room, false, None, seq, &flat);
        rx
    }

    #[test]
    fn after_data_loss_a_reasserted_peer_reaches_only_those_who_never_heard_of_it() {
        let local = local();
        // a and c on the channel before Redis goes; a is local, c on another node.
        let mut a = subscribe(&local, "a", 7, &["a", "c"]);
        assert_eq!(told(&mut a), ["+c"]);
        // The bus reconnects to a Redis that lost everything; this node re-asserts a (seq 1).
        local.reset_sequences();
        local.on_channel_event("app", "room", &delta(kind::JOINED, 1, "a"), "n1");
        // e subscribes before c's node re-asserted c: its snapshot (seq 2) lacks c.
        let mut e = subscribe(&local, "e", 2, &["a", "e"]);
        assert_eq!(told(&mut e), ["+a"]);
        local.on_channel_event("app", "room", &delta(kind::JOINED, 2, "e"), "n1");
        // c's node re-asserts c, announcing it.
        local.on_channel_event("app", "room", &delta(kind::JOINED, 3, "c"), "n1");
        assert_eq!(told(&mut a), ["+e"], "a knew c all along");
        assert_eq!(told(&mut e), ["+c"], "e never heard of c");
        // Later changes reach both, once.
        local.on_channel_event("app", "room", &delta(kind::LEFT, 4, "c"), "n1");
        assert_eq!(told(&mut a), ["-c"]);
        assert_eq!(told(&mut e), ["-c"]);
    }

    #[test]
    fn a_resync_after_a_reset_compares_each_subscriber_with_what_it_was_told() {
        let local = local();
        let mut a = subscribe(&local, "a", 7, &["a", "c", "ghost"]);
        assert_eq!(told(&mut a), ["+c", "+ghost"]);
        local.reset_sequences();
        // e's snapshot was read before c was re-asserted, and its delta was lost.
        let mut e = subscribe(&local, "e", 2, &["a", "e"]);
        assert_eq!(told(&mut e), ["+a"]);
        // The re-sync reads the whole roster: ghost left during the outage, e joined.
        let key = (
            AppId::new("app".to_string()),
            ChannelName::new("room".to_string()),
        );
        let roster: Vec<String> = ["a", "c", "e"]
            .iter()
            .flat_map(|p| [p.to_string(), String::new()])
            .collect();
        local.resync(&key, &roster, 5);
        assert_eq!(told(&mut a), ["+e", "-ghost"]);
        assert_eq!(told(&mut e), ["+c"], "no left for a peer e never knew");
        // Deltas the re-sync covered are not told again; newer ones are, to everyone.
        local.on_channel_event("app", "room", &delta(kind::JOINED, 4, "c"), "n1");
        local.on_channel_event("app", "room", &delta(kind::JOINED, 6, "f"), "n1");
        assert_eq!(told(&mut a), ["+f"]);
        assert_eq!(told(&mut e), ["+f"]);
    }

    #[test]
    fn a_joins_only_resync_tells_who_joined_and_keeps_who_is_missing() {
        let local = local();
        let mut c = subscribe(&local, "c", 7, &["a", "c", "x"]);
        assert_eq!(told(&mut c), ["+a", "+x"]);
        // This node reconnects late: e joined meanwhile (its delta is lost), a's node has not
        // re-asserted a yet, and x left (its `left`, seq 4, is still on its way).
        local.reset_sequences();
        let key = (
            AppId::new("app".to_string()),
            ChannelName::new("room".to_string()),
        );
        let roster: Vec<String> = ["c", "e"]
            .iter()
            .flat_map(|p| [p.to_string(), String::new()])
            .collect();
        local.resync_joined(&key, &roster);
        assert_eq!(told(&mut c), ["+e"], "a may just not be re-asserted yet");
        local.on_channel_event("app", "room", &delta(kind::LEFT, 4, "x"), "n1");
        local.on_channel_event("app", "room", &delta(kind::JOINED, 6, "a"), "n1");
        assert_eq!(
            told(&mut c),
            ["-x"],
            "x's left still goes out; a was never gone"
        );
    }
}
