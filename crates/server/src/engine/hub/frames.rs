//! Client frames encoded once and shared: every receiver of a publication gets the same bytes.

use std::sync::Arc;

use herald_protocol::{encode, Position, PresenceEntry};
use serde_json::value::RawValue;

use crate::conn::Frame;
use crate::ids::PeerId;

/// A `message` encoded at most once per variant (with and without `fromMetadata`) and shared by
/// every receiver: the "encode once, fan out bytes" rule of both engines.
pub struct MessageFrames<'a> {
    channel: &'a str,
    from: &'a str,
    data: &'a RawValue,
    from_metadata: Option<&'a RawValue>,
    /// Where the message sits in its channel's history, when the channel keeps one.
    position: Option<Position<'a>>,
    plain: Option<Frame>,
    with_metadata: Option<Frame>,
}

impl<'a> MessageFrames<'a> {
    pub fn new(
        channel: &'a str,
        from: &'a str,
        data: &'a RawValue,
        from_metadata: Option<&'a RawValue>,
    ) -> Self {
        MessageFrames {
            channel,
            from,
            data,
            from_metadata,
            position: None,
            plain: None,
            with_metadata: None,
        }
    }

    /// The same message carrying its history position (`id`, `offset`, `epoch`, `ts`).
    pub fn with_position(mut self, position: Option<Position<'a>>) -> Self {
        self.position = position;
        self
    }

    /// Encodes every variant a receiver may need now, so no encoding happens later under a
    /// lock. Still at most two encodings per message.
    pub fn prepared(mut self) -> Self {
        self.get(false);
        if self.from_metadata.is_some() {
            self.get(true);
        }
        self
    }

    /// The frame for a receiver whose subscription did (or did not) ask for sender metadata.
    pub fn get(&mut self, include_sender_metadata: bool) -> Frame {
        let metadata = self.from_metadata.filter(|_| include_sender_metadata);
        let slot = if metadata.is_some() {
            &mut self.with_metadata
        } else {
            &mut self.plain
        };
        let (channel, from, data) = (self.channel, self.from, self.data);
        let position = self.position.as_ref();
        slot.get_or_insert_with(|| {
            Frame::from(encode::message_at(channel, from, data, metadata, position))
        })
        .clone()
    }
}

/// A presence entry borrowing a peer and its metadata.
pub fn entry<'a>(peer_id: &'a PeerId, metadata: &'a Option<Arc<RawValue>>) -> PresenceEntry<'a> {
    PresenceEntry {
        peer_id: peer_id.as_str(),
        metadata: metadata.as_deref(),
    }
}

/// A `presence` frame with `joined` and `left` entries.
pub fn presence(channel: &str, joined: &[PresenceEntry<'_>], left: &[PresenceEntry<'_>]) -> Frame {
    Frame::from(encode::presence(channel, joined, left))
}
