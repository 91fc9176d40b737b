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

use super::{roster_from_flat, Buffered, Hold, Joining, Local, Mirror};
use crate::conn::{Conn, Frame};
use crate::engine::hub::occupancy;
use crate::engine::hub::wildcard::Added;
use crate::engine::hub::{channel_key, presence, ChannelKey};
use crate::engine::{Departure, EngineError};
use crate::ids::{AppId, ChannelName, PeerId};

/// What a subscribe must wait for before it may read the roster, and what it tells `JOIN`.
pub struct SubscribeStart {
    pub duplicate: bool,
    pub confirm: oneshot::Receiver<bool>,
    /// The channel's roster mirror as (epoch, sequence number), when it can be trusted.
    pub mirror: Option<(String, u64)>,
    /// The bus's shed count when the subscribe began.
    pub losses: u64,
}

/// What the roster read of a subscribe returned.
pub enum RosterRead<'a> {
    /// The roster at `seq`, in the channel's numbering epoch `epoch` (empty: not known), read
    /// by a subscribe that began at shed count `losses`.
    Full {
        seq: u64,
        roster: &'a [String],
        epoch: &'a str,
        losses: u64,
    },
    /// Nothing a mirror follows changed since the mirror's position: the join is `seq`.
    Mirror { seq: u64 },
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
        let losses = self.losses();
        let (duplicate, mirror) = self.hub.channels.with_or_create(&key, |ch| {
            let duplicate = ch.unsubscribe(conn.id).is_some();
            ch.slot.joining.insert(
                conn.id,
                Joining {
                    conn: conn.clone(),
                    include_sender_metadata,
                    buffer: Vec::new(),
                    rewind: None,
                },
            );
            if !ch.slot.topic {
                ch.slot.topic = true;
                self.bus.listen_channel(&key, true);
            }
            (duplicate, ch.slot.mirror_position(losses))
        });
        SubscribeStart {
            duplicate,
            confirm: self.bus.barrier(),
            mirror,
            losses,
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
                    if let Buffered::Presence { frame, .. } | Buffered::Message(frame, _) = buffered
                    {
                        conn.deliver(frame);
                    }
                }
                ch.subscribe(conn, joining.include_sender_metadata, 0);
            }
        });
        self.settle(&key);
    }

    /// [`Local::finish_read`] of a full roster read at `seq` (with no mirror kept after).
    pub fn finish_subscribe(
        &self,
        conn: &Arc<Conn>,
        channel: &ChannelName,
        duplicate: bool,
        ack: Option<Frame>,
        seq: u64,
        roster: &[String],
    ) {
        let read = RosterRead::Full {
            seq,
            roster,
            epoch: "",
            losses: self.losses(),
        };
        self.finish_read(conn, channel, duplicate, ack, read);
    }

    /// Queues ack, snapshot, then the buffered events newer than the snapshot, and makes the
    /// connection a subscriber — all under the channel lock, so nothing overtakes them.
    /// Returns false, changing nothing, when told the mirror is current but it can no longer
    /// be trusted (the caller reads the roster and finishes with that).
    pub fn finish_read(
        &self,
        conn: &Arc<Conn>,
        channel: &ChannelName,
        duplicate: bool,
        ack: Option<Frame>,
        read: RosterRead<'_>,
    ) -> bool {
        let (seq, full) = match read {
            RosterRead::Full {
                seq,
                roster,
                epoch,
                losses,
            } => (seq, Some((roster, epoch, losses))),
            RosterRead::Mirror { seq } => (seq, None),
        };
        // Encoded before the lock is taken; queued under it, right after the ack. Not for a
        // room over its roster cap: its snapshot is the capped one, made under the lock.
        let mut snapshot = None;
        let mut fresh = None;
        if let Some((roster, _, _)) = full {
            let over_cap = self
                .rules
                .cap_for(channel.as_str())
                .is_some_and(|cap| roster.len() / 2 > cap);
            snapshot = (conn.receives_presence && !over_cap).then(|| {
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
            fresh = Some(
                roster_from_flat(roster, None)
                    .into_iter()
                    .map(|m| (m.peer_id, m.metadata))
                    .collect::<HashMap<PeerId, Option<Arc<RawValue>>>>(),
            );
        }
        let losses_now = self.losses();
        let finished = self
            .hub
            .channels
            .with(&channel_key(&conn.app, channel), |ch| {
                if full.is_none() && ch.slot.mirror_position(losses_now).is_none() {
                    return false;
                }
                let Some(joining) = ch.slot.joining.remove(&conn.id) else {
                    return true;
                };
                let state = &mut ch.slot;
                let recent = if state.joining.is_empty() {
                    std::mem::take(&mut state.recent)
                } else {
                    // Another subscribe is still in flight and needs the log too.
                    state.recent.clone()
                };
                // A read older than what `known` reflects (another subscribe's, later, finished
                // first) leaves `known` as it is: it only moves forward.
                let newer = fresh.filter(|_| seq >= state.known_seq);
                if let (Some(fresh), Some((_, epoch, losses))) = (newer, full) {
                    // The roster at `seq` plus every change after it is what subscribers now
                    // know, and, read in a known epoch, a mirror of Redis from now on.
                    state.replace_known(fresh);
                    state.known_seq = seq;
                    for (s, joined, peer, metadata) in recent {
                        if s > seq {
                            state.known_seq = s;
                            state.apply_known(joined, peer, metadata);
                        }
                    }
                    state.mirror = (!epoch.is_empty()).then(|| Mirror {
                        epoch: epoch.to_string(),
                        losses,
                    });
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
                // A snapshot made here is of the roster as of now (the mirror, shared by
                // every subscriber until it changes): the buffered deltas are in it.
                let replay_presence = capped.is_none() && snapshot.is_some();
                let snapshot = match (capped, snapshot) {
                    (Some(capped), _) => Some(capped),
                    (None, Some(at_seq)) => Some(at_seq),
                    (None, None) if conn.receives_presence => {
                        let state = &mut ch.slot;
                        Some(state.snapshot.snapshot(
                            channel.as_str(),
                            state.known.iter(),
                            &conn.peer_id,
                        ))
                    }
                    (None, None) => None,
                };
                if let Some(snapshot) = snapshot {
                    conn.deliver(snapshot);
                }
                // The rewind, then what arrived meanwhile, without what the rewind holds.
                let rewound = joining.rewind.map(|rewind| {
                    for frame in rewind.frames {
                        conn.deliver(frame);
                    }
                    (rewind.epoch, rewind.last)
                });
                for buffered in joining.buffer {
                    match buffered {
                        Buffered::Presence { seq: s, frame } if s > seq && replay_presence => {
                            conn.deliver(frame);
                        }
                        Buffered::Presence { .. } | Buffered::Dropped => {}
                        Buffered::Message(frame, position) => {
                            let in_rewind = matches!(
                                (&rewound, &position),
                                (Some((re, last)), Some((e, offset))) if re == e && offset <= last
                            );
                            if !in_rewind {
                                conn.deliver(frame);
                            }
                        }
                    }
                }
                // The connection now holds every delta received here: those up to `seq` in
                // its snapshot and the later ones replayed from its buffer (deltas received
                // before the subscribe began are at most `seq`), or, for a snapshot made now,
                // the roster as of `known_seq`. Coalesced deltas still waiting must not reach
                // it again.
                let floor = if replay_presence {
                    seq.max(ch.slot.last_seq)
                } else {
                    seq.max(ch.slot.known_seq)
                };
                ch.subscribe(conn, joining.include_sender_metadata, floor);
                if let Some((epoch, last)) = rewound {
                    // Messages of the rewind the bus has not delivered here yet must not
                    // reach this subscriber when they do.
                    let caught_up =
                        matches!(&ch.slot.cursor, Some((e, at)) if *e == epoch && *at >= last);
                    if !caught_up {
                        ch.slot.floors.insert(conn.id, (epoch, last));
                    }
                }
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
                true
            });
        finished.unwrap_or(true)
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
            ch.slot.floors.remove(&conn.id);
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
                // Nobody is left to tell, and the channel may go: nothing may keep waiting.
                self.hub.flush_deltas(key, ch);
                ch.slot.topic = false;
                // Deltas stop arriving: `known` no longer follows Redis.
                ch.slot.mirror = None;
                // Nor do messages: a later gap would be this pause, not a loss.
                ch.slot.cursor = None;
                ch.slot.floors.clear();
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
