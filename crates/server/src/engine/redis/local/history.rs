//! History on the Redis engine's local side: delivering messages that carry a position, the
//! rewind of a subscribe and its seam with live messages, and noticing gaps.
//!
//! - **Seam.** A subscribe reads its rewind from the stream after the channel's topic is
//!   subscribed, so every message after the rewind's last offset reaches the node live. Live
//!   messages received while the subscribe was in flight are buffered; at finish, those up to
//!   the rewind's last offset are dropped (they are in the rewind). If the bus has not yet
//!   delivered up to that offset here, the subscriber gets a *floor*: messages up to it that
//!   arrive later are not sent to it again.
//! - **Gaps.** Pub/sub is at most once. The channel's cursor is the last position received;
//!   a message further on than the next offset, in the same epoch, means messages were lost
//!   on the way: the bus fetches them from the stream before this one is delivered
//!   (`redis/history.rs`).

use std::sync::Arc;

use herald_protocol::Position;

use super::super::wire::Event;
use super::{message_frames, Buffered, Local, Rewind};
use crate::conn::Conn;
use crate::engine::hub::{channel_key, ChannelKey, MessageFrames};
use crate::history::message_id;
use crate::ids::{AppId, ChannelName};

/// Messages a node did not receive: offsets `from..=to` of `epoch`, to fetch from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub app: AppId,
    pub channel: ChannelName,
    pub epoch: Arc<str>,
    pub from: u64,
    pub to: u64,
}

/// The history position an event carries: (epoch, offset, ts).
pub fn position_of<'e>(event: &'e Event<'_>) -> Option<(&'e str, u64, i64)> {
    Some((event.epoch.as_deref()?, event.offset?, event.ts?))
}

/// The id of a message event with a position.
pub fn id_of(event: &Event<'_>) -> Option<String> {
    position_of(event).map(|(epoch, offset, _)| message_id(epoch, offset))
}

/// The shared encoder for a message event, with its position when it has one (`id` is
/// [`id_of`] the event).
pub(super) fn positioned_frames<'e>(
    channel: &'e str,
    event: &'e Event<'_>,
    id: &'e Option<String>,
) -> MessageFrames<'e> {
    let position = position_of(event)
        .zip(id.as_deref())
        .map(|((epoch, offset, ts), id)| Position {
            id,
            offset,
            epoch,
            ts,
        });
    message_frames(channel, event).with_position(position)
}

impl Local {
    /// A `message` from a channel topic. Returns the gap before it instead of delivering it
    /// when `check_gaps` and messages are missing; the caller repairs, then calls again with
    /// `check_gaps` false.
    pub(super) fn on_message(
        &self,
        key: &ChannelKey,
        event: &Event<'_>,
        node: &str,
        check_gaps: bool,
    ) -> Option<Gap> {
        let channel = key.1.as_str();
        let excluded = event.excluded_on(node);
        let position = position_of(event);
        let id = id_of(event);
        let mut frames = positioned_frames(channel, event, &id).prepared();
        self.hub
            .channels
            .with(key, |ch| {
                let mut kept = None;
                if let Some((epoch, offset, _)) = position {
                    let same_epoch = match &ch.slot.cursor {
                        Some((e, last)) if **e == *epoch => {
                            if offset <= *last {
                                // Delivered already (by a repair that fetched it).
                                return None;
                            }
                            let listened = ch.subscriber_count() > 0 || !ch.slot.joining.is_empty();
                            if check_gaps && offset > last + 1 && listened {
                                return Some(Gap {
                                    app: key.0.clone(),
                                    channel: key.1.clone(),
                                    epoch: e.clone(),
                                    from: last + 1,
                                    to: offset - 1,
                                });
                            }
                            Some(e.clone())
                        }
                        _ => None,
                    };
                    let epoch = same_epoch.unwrap_or_else(|| Arc::from(epoch));
                    ch.slot.cursor = Some((epoch.clone(), offset));
                    kept = Some((epoch, offset));
                }
                // A message never overtakes its sender's (coalesced) `joined`.
                self.hub.flush_deltas(key, ch);
                match &kept {
                    Some((epoch, offset)) if !ch.slot.floors.is_empty() => {
                        let floors = &ch.slot.floors;
                        for sub in ch.subscribers() {
                            let behind_rewind = floors
                                .get(&sub.conn.id)
                                .is_some_and(|(e, floor)| e == epoch && offset <= floor);
                            if Some(sub.conn.id) != excluded && !behind_rewind {
                                sub.conn.deliver(frames.get(sub.include_sender_metadata));
                            }
                        }
                        // A floor the bus has reached is done with (pub/sub keeps order).
                        ch.slot
                            .floors
                            .retain(|_, (e, floor)| e == epoch && *floor > *offset);
                    }
                    _ => {
                        ch.deliver_message(&mut frames, excluded);
                    }
                }
                for joining in ch.slot.joining.values_mut() {
                    if Some(joining.conn.id) != excluded {
                        let frame = frames.get(joining.include_sender_metadata);
                        joining.buffer_event(Buffered::Message(frame, kept.clone()));
                    }
                }
                None
            })
            .flatten()
    }

    /// The last history position this node delivered on the channel: `Some(None)` when it
    /// delivered none since it started listening, `None` when the channel is not here.
    /// Read under the channel's lock (lossless reconnect's watermark).
    pub fn cursor(&self, key: &ChannelKey) -> Option<Option<(Arc<str>, u64)>> {
        self.hub.channels.with(key, |ch| ch.slot.cursor.clone())
    }

    /// Hands a subscribe in flight its rewind (queued after its snapshot at finish).
    pub fn set_rewind(&self, conn: &Conn, channel: &ChannelName, rewind: Rewind) {
        self.hub
            .channels
            .with(&channel_key(&conn.app, channel), |ch| {
                if let Some(joining) = ch.slot.joining.get_mut(&conn.id) {
                    joining.rewind = Some(rewind);
                }
            });
    }
}
