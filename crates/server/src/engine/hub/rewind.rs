//! Rewind: a new subscriber's first messages, read from history under the channel's lock.
//!
//! The seam rule: a message is appended to history and queued to the channel's subscribers
//! under the channel's lock, and a subscribe reads its rewind and registers under that same
//! lock. So every message is either in the subscriber's rewind or queued to it live, never
//! both and never neither, and both arrive in offset order.

use herald_protocol::Position;

use super::channels::ChannelKey;
use super::frames::MessageFrames;
use crate::conn::Conn;
use crate::history::HistoryStore;

/// Queues up to `rewind` of the channel's most recent messages to a new subscriber, oldest
/// first, each with its original sender and position. Called under the channel's lock, after
/// the ack and the snapshot and before any live message can reach the subscriber.
pub fn rewind(
    store: &dyn HistoryStore,
    key: &ChannelKey,
    conn: &Conn,
    rewind: usize,
    include_sender_metadata: bool,
) {
    let channel = key.1.as_str();
    let retained = match store.latest(key, rewind) {
        Ok(retained) => retained,
        Err(e) => {
            tracing::warn!(channel, error = %e, "history read for rewind failed");
            return;
        }
    };
    let Some(epoch) = retained.epoch else {
        return;
    };
    for message in &retained.messages {
        let id = message.id(&epoch);
        let position = Position {
            id: &id,
            offset: message.offset,
            epoch: &epoch,
            ts: message.ts,
        };
        let frame = MessageFrames::new(
            channel,
            message.from.as_str(),
            &message.data,
            message.from_metadata.as_deref(),
        )
        .with_position(Some(position))
        .get(include_sender_metadata);
        conn.deliver(frame);
    }
}
