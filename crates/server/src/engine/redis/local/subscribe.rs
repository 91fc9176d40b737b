//! The life of a local subscription on the Redis engine. An exact subscribe is two-phase: it
//! begins here (events for the connection are buffered from now on, the topic is listened
//! to), the engine then joins the channel in Redis and reads the roster, and it finishes here
//! (ack, snapshot, buffered events, in that order) or is aborted.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herald_protocol::glob::Pattern;
use herald_protocol::PresenceEntry;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::{roster_from_flat, Buffered, Hold, Joining, Local};
use crate::conn::{Conn, Frame};
use crate::engine::hub::occupancy;
use crate::engine::hub::wildcard::Added;
use crate::engine::hub::{channel_key, presence, ChannelKey};
use crate::engine::{Departure, EngineError};
use crate::ids::{AppId, ChannelName, PeerId};

/// A full snapshot of `known` for `me` (a room that came back under its cap while its
/// subscribe was in flight: at most the cap's worth of entries).
fn known_snapshot(
    known: &HashMap<PeerId, Option<Arc<RawValue>>>,
    channel: &str,
    me: &PeerId,
) -> Frame {
    let entries: Vec<PresenceEntry<'_>> = known
        .iter()
        .filter(|(peer, _)| *peer != me)
        .map(|(peer, metadata)| PresenceEntry {
            peer_id: peer.as_str(),
            metadata: metadata.as_deref(),
        })
        .collect();
    presence(channel, &entries, &[])
}

/// What a subscribe must wait for before it may read the roster.
pub struct SubscribeStart {
    pub duplicate: bool,
    pub confirm: oneshot::Receiver<bool>,
}

/// What removing a subscription means for the node's presence hold.
pub enum Removal {
    /// Other local connections of the peer remain.
    Kept,
    LeaveNow,
    /// Leave once the grace period passes, unless the peer is back (generation matches).
    LeaveAfterGrace(u64),
}

impl Local {
    /// Registers a subscribe in flight and asks the bus to make sure the topic is subscribed
    /// before the caller reads the roster (the confirmation is ordered after any pending
    /// SUBSCRIBE on the bus).
    pub fn begin_subscribe(
        &self,
        conn: &Arc<Conn>,
        channel: &ChannelName,
        include_sender_metadata: bool,
    ) -> SubscribeStart {
        let key = channel_key(&conn.app, channel);
        let duplicate = self.hub.channels.with_or_create(&key, |ch| {
            let duplicate = ch.unsubscribe(conn.id).is_some();
            ch.slot.joining.insert(
                conn.id,
                Joining {
                    conn: conn.clone(),
                    include_sender_metadata,
                    buffer: Vec::new(),
                },
            );
            if !ch.slot.topic {
                ch.slot.topic = true;
                self.bus.listen_channel(&key, true);
            }
            duplicate
        });
        SubscribeStart {
            duplicate,
            confirm: self.bus.barrier(),
        }
    }

    /// Undoes [`Local::begin_subscribe`] after a failure. A duplicate stays subscribed.
    pub fn abort_subscribe(&self, conn: &Arc<Conn>, channel: &ChannelName, duplicate: bool) {
        let key = channel_key(&conn.app, channel);
        self.hub.channels.with(&key, |ch| {
            let Some(joining) = ch.slot.joining.remove(&conn.id) else {
                return;
            };
            if duplicate {
                for buffered in joining.buffer {
                    if let Buffered::Presence { frame, .. } | Buffered::Message(frame) = buffered {
                        conn.deliver(frame);
                    }
                }
                ch.subscribe(conn, joining.include_sender_metadata, 0);
            }
        });
        self.settle(&key);
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
        // Encoded before the lock is taken; queued under it, right after the ack. Not for a
        // room over its roster cap: its snapshot is the capped one, made under the lock.
        let over_cap = self
            .rules
            .cap_for(channel.as_str())
            .is_some_and(|cap| roster.len() / 2 > cap);
        let snapshot = (conn.receives_presence && !over_cap).then(|| {
            let members = roster_from_flat(roster, Some(&conn.peer_id));
            let entries: Vec<PresenceEntry<'_>> = members
                .iter()
                .map(|m| PresenceEntry {
                    peer_id: m.peer_id.as_str(),
                    metadata: m.metadata.as_deref(),
                })
                .collect();
            presence(channel.as_str(), &entries, &[])
        });
        let known: HashMap<PeerId, Option<Arc<RawValue>>> = roster_from_flat(roster, None)
            .into_iter()
            .map(|m| (m.peer_id, m.metadata))
            .collect();
        self.hub
            .channels
            .with(&channel_key(&conn.app, channel), |ch| {
                let Some(joining) = ch.slot.joining.remove(&conn.id) else {
                    return;
                };
                let state = &mut ch.slot;
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
                // Over a roster cap, the snapshot is the capped one as of now (at most the
                // cap's worth of entries, encoded here), and no buffered delta follows it.
                // The node's first subscriber: nobody here was shown anything yet. Otherwise
                // the episode starts when the delta that crosses the cap arrives.
                if ch.subscriber_count() == 0 {
                    occupancy::start_if_over(ch, &self.rules, channel.as_str(), &conn.peer_id);
                }
                let capped = conn
                    .receives_presence
                    .then(|| occupancy::snapshot(ch, &self.rules, channel.as_str(), conn))
                    .flatten();
                if let Some(ack) = ack {
                    conn.deliver(ack);
                }
                // A snapshot made here is of the roster as of now: the buffered deltas are in it.
                let replay_presence = capped.is_none() && snapshot.is_some();
                let snapshot = match (capped, snapshot) {
                    (Some(capped), _) => Some(capped),
                    (None, Some(at_seq)) => Some(at_seq),
                    (None, None) if conn.receives_presence => Some(known_snapshot(
                        &ch.slot.known,
                        channel.as_str(),
                        &conn.peer_id,
                    )),
                    (None, None) => None,
                };
                if let Some(snapshot) = snapshot {
                    conn.deliver(snapshot);
                }
                for buffered in joining.buffer {
                    match buffered {
                        Buffered::Presence { seq: s, frame } if s > seq && replay_presence => {
                            conn.deliver(frame);
                        }
                        Buffered::Presence { .. } | Buffered::Dropped => {}
                        Buffered::Message(frame) => {
                            conn.deliver(frame);
                        }
                    }
                }
                ch.subscribe(conn, joining.include_sender_metadata, seq);
                let state = &mut ch.slot;
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
            });
    }

    /// Removes a subscription; says what happens to the presence hold.
    pub fn remove(
        &self,
        conn: &Conn,
        channel: &ChannelName,
        departure: Departure,
        grace: Duration,
    ) -> Option<Removal> {
        let key = channel_key(&conn.app, channel);
        let outcome = self.hub.channels.with(&key, |ch| {
            ch.unsubscribe(conn.id)?;
            occupancy::forget(ch, conn.id);
            let Some(hold) = ch.slot.holds.get_mut(&conn.peer_id) else {
                return Some(Removal::Kept);
            };
            hold.connections = hold.connections.saturating_sub(1);
            if hold.connections > 0 {
                return Some(Removal::Kept);
            }
            // A node shutting down hands its peers to other nodes: the grace covers that too.
            if departure != Departure::Left && !grace.is_zero() {
                let generation = self.generation.fetch_add(1, Ordering::Relaxed);
                hold.pending_leave = Some(generation);
                Some(Removal::LeaveAfterGrace(generation))
            } else {
                ch.slot.holds.remove(&conn.peer_id);
                Some(Removal::LeaveNow)
            }
        })??;
        self.settle(&key);
        Some(outcome)
    }

    /// True when the grace of this generation ran out with the peer still gone; drops the hold.
    pub fn grace_expired(
        &self,
        app: &AppId,
        channel: &ChannelName,
        peer: &PeerId,
        generation: u64,
    ) -> bool {
        let key = channel_key(app, channel);
        let expired = self.hub.channels.with(&key, |ch| {
            let expired = ch
                .slot
                .holds
                .get(peer)
                .is_some_and(|h| h.connections == 0 && h.pending_leave == Some(generation));
            if expired {
                ch.slot.holds.remove(peer);
            }
            expired
        });
        if expired == Some(true) {
            self.settle(&key);
        }
        expired == Some(true)
    }

    /// Waits out the reconnect grace of a hold released by a drop; true when the peer did not
    /// come back in time (the hold is gone, and the caller announces the leave).
    pub async fn wait_out_grace(
        &self,
        grace: Duration,
        app: &AppId,
        channel: &ChannelName,
        peer: &PeerId,
        generation: u64,
    ) -> bool {
        tokio::time::sleep(grace).await;
        self.grace_expired(app, channel, peer, generation)
    }

    /// Stops listening to the topic when nobody local listens, and forgets a channel that
    /// holds nothing any more.
    fn settle(&self, key: &ChannelKey) {
        self.hub.channels.with(key, |ch| {
            if ch.slot.topic && ch.subscriber_count() == 0 && ch.slot.joining.is_empty() {
                ch.slot.topic = false;
                self.bus.listen_channel(key, false);
            }
        });
        self.hub
            .channels
            .remove_if_idle(key, |state| !state.topic && state.holds.is_empty());
    }

    /// A local connection of `peer` still subscribed to the channel, if any.
    pub fn any_holder(
        &self,
        app: &AppId,
        channel: &ChannelName,
        peer: &PeerId,
    ) -> Option<Arc<Conn>> {
        self.hub
            .channels
            .with(&channel_key(app, channel), |ch| {
                ch.subscribers()
                    .find(|s| s.conn.peer_id == *peer)
                    .map(|s| s.conn.clone())
            })
            .flatten()
    }

    pub fn is_subscribed(&self, conn: &Conn, channel: &ChannelName) -> bool {
        self.hub
            .channels
            .with(&channel_key(&conn.app, channel), |ch| {
                ch.is_subscribed(conn.id)
            })
            .unwrap_or(false)
    }

    /// Adds a wildcard subscription; the first of an app makes the node listen to the app. A
    /// pattern new to the app beyond `max_app_patterns` is refused. Returns whether the
    /// subscription is new, and the barrier to wait for when the bus was asked for something.
    pub fn add_pattern(
        &self,
        conn: &Arc<Conn>,
        name: &ChannelName,
        pattern: Pattern,
        include_sender_metadata: bool,
        max_app_patterns: usize,
    ) -> Result<(bool, Option<oneshot::Receiver<bool>>), EngineError> {
        let mut confirm = None;
        let added = self.hub.patterns.add(
            conn,
            name,
            &pattern,
            include_sender_metadata,
            max_app_patterns,
            |first_of_app| {
                if first_of_app {
                    self.bus.listen_app(&conn.app, true);
                }
                confirm = Some(self.bus.barrier());
            },
        );
        match added {
            Added::PatternLimit => Err(EngineError::PatternLimit),
            Added::Duplicate => Ok((false, confirm)),
            Added::New { .. } => Ok((true, confirm)),
        }
    }

    /// Removes a wildcard subscription. Returns (removed, the app has no pattern left here).
    pub fn remove_pattern(&self, conn: &Conn, name: &ChannelName) -> (bool, bool) {
        let removed = self.hub.patterns.remove(conn, name, || {
            self.bus.listen_app(&conn.app, false);
        });
        (removed.removed, removed.app_empty)
    }
}
