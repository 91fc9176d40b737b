//! Delivery of what arrives from the bus (and of what must be delivered locally while Redis is
//! unreachable). Frames are encoded before a channel lock is taken: under it, only receivers
//! are looked up and the shared bytes enqueued.

use std::sync::Arc;

use herald_protocol::{encode, PresenceEntry};
use serde_json::value::RawValue;

use super::super::wire::{kind, Event};
use super::history::{id_of, positioned_frames, Gap};
use super::{Buffered, Local};
use crate::close::CloseReason;
use crate::conn::Frame;
use crate::engine::hub::occupancy::{self, Change};
use crate::engine::hub::{channel_key, presence, ChannelKey, MessageFrames};
use crate::ids::{AppId, ChannelName, ConnId, PeerId};

/// The shared encoder for a message event from the bus.
pub(super) fn message_frames<'e>(channel: &'e str, event: &'e Event<'_>) -> MessageFrames<'e> {
    MessageFrames::new(
        channel,
        event.from.as_deref().unwrap_or_default(),
        event.data.unwrap_or(RawValue::NULL),
        event.metadata(),
    )
}

/// A delta as applied to a channel's rosters, for [`Local::announce_delta`].
struct Applied {
    seq: u64,
    joined: bool,
    metadata: Option<Arc<RawValue>>,
    /// Whether it changed the roster of subscribers from before a sequence reset (`None`:
    /// there are none).
    pre_reset_changed: Option<bool>,
}

impl Local {
    /// An event from a channel topic: a message, or a presence delta.
    #[cfg(test)]
    pub fn on_channel_event(&self, app: &str, channel: &str, event: &Event<'_>, node: &str) {
        let _ = self.on_channel_event_at(app, channel, event, node, false);
    }

    /// [`Local::on_channel_event`], except that a message after a gap in its channel's history
    /// is not delivered when `check_gaps`: the gap is returned, for the caller to repair first.
    pub fn on_channel_event_at(
        &self,
        app: &str,
        channel: &str,
        event: &Event<'_>,
        node: &str,
        check_gaps: bool,
    ) -> Option<Gap> {
        let key = (AppId::new(app), ChannelName::new(channel));
        match event.kind.as_ref() {
            kind::MESSAGE => return self.on_message(&key, event, node, check_gaps),
            kind @ (kind::JOINED | kind::LEFT) => {
                let (Some(peer), Some(seq)) = (event.peer.as_deref(), event.seq) else {
                    return None;
                };
                let joined = kind == kind::JOINED;
                let entry = [PresenceEntry {
                    peer_id: peer,
                    metadata: event.metadata(),
                }];
                let delta = if joined {
                    presence(channel, &entry, &[])
                } else {
                    presence(channel, &[], &entry)
                };
                let peer_id = PeerId::new(peer);
                let metadata = event.metadata().map(|m| Arc::from(m.to_owned()));
                let tick = self.hub.channels.with(&key, |ch| {
                    let news = self.apply_delta(
                        ch,
                        seq,
                        joined,
                        peer_id.clone(),
                        metadata.clone(),
                        &delta,
                    )?;
                    let change = Applied {
                        seq,
                        joined,
                        metadata,
                        pre_reset_changed: news,
                    };
                    self.announce_delta(&key, ch, change, &peer_id, &delta)
                });
                if let Some(Some(at)) = tick {
                    occupancy::schedule_count(&self.hub.channels, &key, at);
                }
            }
            kind::META => {
                let (Some(peer), Some(seq)) = (event.peer.as_deref(), event.seq) else {
                    return None;
                };
                let metadata = event.metadata().map(|m| Arc::from(m.to_owned()));
                let peer = PeerId::new(peer);
                self.hub.channels.with(&key, |ch| {
                    let state = &mut ch.slot;
                    if !state.joining.is_empty() {
                        // At `seq` the peer is a member with this metadata (a subscribe in
                        // flight may bring `known` back to an older roster read).
                        state
                            .recent
                            .push((seq, true, peer.clone(), metadata.clone()));
                    }
                    if seq <= state.known_seq {
                        return; // a roster read since has it
                    }
                    state.known_seq = seq;
                    state.apply_metadata(&peer, metadata);
                });
            }
            _ => {}
        }
        None
    }

    /// Applies a delta to the channel's rosters and buffers it for subscribes in flight.
    /// `None` when it is stale; otherwise whether it changed the roster of subscribers from
    /// before a sequence reset (`None` inside: there are none).
    fn apply_delta(
        &self,
        ch: &mut crate::engine::hub::Channel<super::NodeChannel>,
        seq: u64,
        joined: bool,
        peer_id: PeerId,
        metadata: Option<Arc<RawValue>>,
        delta: &Frame,
    ) -> Option<Option<bool>> {
        let state = &mut ch.slot;
        if seq <= state.resync_floor && state.known.contains_key(&peer_id) == joined {
            return None;
        }
        if !state.joining.is_empty() {
            state
                .recent
                .push((seq, joined, peer_id.clone(), metadata.clone()));
        }
        state.last_seq = state.last_seq.max(seq);
        for joining in state.joining.values_mut() {
            if joining.conn.receives_presence && joining.conn.peer_id != peer_id {
                joining.buffer_event(Buffered::Presence {
                    seq,
                    frame: delta.clone(),
                });
            }
        }
        // A delta at or below `known_seq` is in the roster read that `known` was last set
        // from (it was published before the read, delivered after): `known` stays the roster
        // as of `known_seq`. Subscribers with older snapshots still hear of it.
        if seq > state.known_seq {
            state.known_seq = seq;
            state.apply_known(joined, peer_id.clone(), metadata);
        }
        Some(match state.pre_reset.as_mut() {
            Some(roster) if joined => Some(roster.insert(peer_id)),
            Some(roster) => Some(roster.remove(&peer_id)),
            None => None,
        })
    }

    /// Sends an applied delta to the subscribers (at once, or with the channel's coalesced
    /// deltas under load), or, over a roster cap, the count instead (returns when to come back
    /// to send it).
    fn announce_delta(
        &self,
        key: &ChannelKey,
        ch: &mut crate::engine::hub::Channel<super::NodeChannel>,
        applied: Applied,
        peer_id: &PeerId,
        delta: &Frame,
    ) -> Option<tokio::time::Instant> {
        let Applied {
            seq,
            joined,
            metadata,
            pre_reset_changed,
        } = applied;
        let channel = key.1.as_str();
        // Over a roster cap, watchers get counts instead (subscribes in flight still buffer
        // the delta: `finish_subscribe` drops it if their snapshot is a capped one). Occupancy
        // mode assumes every watcher holds the roster as it stands: waiting deltas go first.
        let now = tokio::time::Instant::now();
        if occupancy::over_cap(ch, &self.rules, channel) {
            self.hub.flush_deltas(key, ch);
        }
        let change = if joined {
            occupancy::on_join(ch, &self.rules, channel, peer_id, now)
        } else {
            occupancy::on_leave(ch, &self.rules, channel, peer_id, now)
        };
        if let Change::Handled(tick) = change {
            return tick;
        }
        let Some(pre_reset_changed) = pre_reset_changed else {
            // Every subscriber's floor is in Redis's numbers: the hub sends each the deltas
            // newer than its snapshot, never its own peer.
            self.hub
                .record_numbered_delta(key, ch, seq, joined, peer_id, metadata);
            return None;
        };
        // Subscribers from before a sequence reset hear of the delta when it changes their
        // roster; the others when it is newer than their snapshot. (Nothing waits in the
        // batch: the reset sent it.)
        for sub in ch.subscribers() {
            if !sub.conn.receives_presence || sub.conn.peer_id == *peer_id {
                continue;
            }
            let news = if sub.floor == 0 {
                pre_reset_changed
            } else {
                seq > sub.floor
            };
            if news {
                sub.conn.deliver(delta.clone());
            }
        }
        None
    }

    /// A message seen through the node's wildcard subscription: for pattern subscribers only
    /// (exact subscribers get it from the channel topic).
    pub fn on_pattern_message(&self, app: &str, channel: &str, event: &Event<'_>, node: &str) {
        if event.kind != kind::MESSAGE {
            return;
        }
        let app = AppId::new(app);
        // Matched under the app's index lock only; the channel's lock is taken after, just to
        // drop connections that get the message from the channel topic themselves.
        let mut matched = self
            .hub
            .pattern_matches(&app, channel, event.excluded_on(node));
        if matched.is_empty() {
            return;
        }
        self.hub
            .channels
            .with(&(app, ChannelName::new(channel)), |ch| {
                matched.retain(|(conn, _)| {
                    !ch.is_subscribed(conn.id) && !ch.slot.joining.contains_key(&conn.id)
                });
            });
        let id = id_of(event);
        let mut frames = positioned_frames(channel, event, &id);
        for (conn, include_sender_metadata) in matched {
            conn.deliver(frames.get(include_sender_metadata));
        }
    }

    /// Delivers a message to local exact subscribers directly (Redis unreachable).
    pub fn deliver_message(
        &self,
        app: &AppId,
        channel: &ChannelName,
        event: &Event<'_>,
        exclude: Option<ConnId>,
    ) {
        let mut frames = message_frames(channel.as_str(), event).prepared();
        let key = channel_key(app, channel);
        self.hub.channels.with(&key, |ch| {
            self.hub.flush_deltas(&key, ch);
            ch.deliver_message(&mut frames, exclude)
        });
    }

    /// A `direct` for a peer on this node. Returns the connections reached.
    pub fn deliver_direct(&self, event: &Event<'_>, exclude: Option<ConnId>) -> usize {
        let (Some(app), Some(to), Some(from), Some(data)) = (
            event.app.as_deref(),
            event.to.as_deref(),
            event.from.as_deref(),
            event.data,
        ) else {
            return 0;
        };
        let (app, from) = (AppId::new(app), PeerId::new(from));
        // The receiver learns that the sender joined before it hears from it.
        self.hub.flush_deltas_of(&app, &from);
        self.hub
            .peers
            .deliver_direct(&app, &PeerId::new(to), exclude, || {
                Frame::from(encode::direct(from.as_str(), data, event.metadata()))
            })
    }

    /// An event on this node's topic: a direct or a kick.
    pub fn on_node_event(&self, event: &Event<'_>, node: &str) {
        match event.kind.as_ref() {
            kind::DIRECT => {
                self.deliver_direct(event, event.excluded_on(node));
            }
            kind::KICK => {
                if let (Some(app), Some(peer), Some(code)) =
                    (event.app.as_deref(), event.peer.as_deref(), event.code)
                {
                    // Only kicks travel today (4020); a number this node does not know still
                    // closes the peer, with the generic policy code.
                    let code = herald_protocol::CloseCode::from_u16(code)
                        .unwrap_or(herald_protocol::CloseCode::PolicyViolation);
                    let reason = CloseReason::new(code, CloseReason::ADMIN_DISCONNECT.reason);
                    self.hub
                        .peers
                        .close(&AppId::new(app), &PeerId::new(peer), reason);
                }
            }
            _ => {}
        }
    }
}
