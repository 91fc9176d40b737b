//! Resume: the messages after a position, read from history under the channel's lock, all or
//! nothing; and a channel's current position, for the session's watermark.
//!
//! The seam rule is rewind's (`rewind.rs`): appends and fan-out happen under the channel's
//! lock, and a resuming subscribe reads its replay and registers under that lock too, so the
//! replay and the live messages meet with no gap and no duplicate.

use herald_protocol::Position;

use super::channels::ChannelKey;
use super::frames::MessageFrames;
use crate::conn::Conn;
use crate::history::{HistoryStore, PageQuery, Retained};
use crate::resume::Since;

/// Every retained message after `since`, oldest first, or `None` when the gap cannot be filled
/// whole: the epoch changed, retention passed the position, or more than `max` messages are
/// missing. Called under the channel's lock.
pub fn read_since(
    store: &dyn HistoryStore,
    key: &ChannelKey,
    since: &Since,
    max: usize,
) -> Option<Retained> {
    let latest = store.latest(key, 1).ok()?;
    let Some(epoch) = latest.epoch else {
        // Nothing retained now. A position in an epoch may have had messages after it that
        // expired since; a position from before any history has nothing to miss.
        return since.epoch.is_none().then(Retained::default);
    };
    if since.epoch.as_ref().is_some_and(|e| *e != epoch) {
        return None;
    }
    let last = latest.messages.last()?.offset;
    if since.offset >= last {
        return Some(Retained {
            epoch: Some(epoch),
            messages: Vec::new(),
        });
    }
    let missing = last - since.offset;
    if missing > max as u64 {
        return None;
    }
    let query = PageQuery {
        limit: usize::try_from(missing).ok()?,
        before: None,
        after: Some(since.offset),
    };
    let page = store.page(key, &query).ok()?;
    let whole = page.retained.epoch.as_ref() == Some(&epoch)
        && page.retained.messages.len() as u64 == missing
        && page
            .retained
            .messages
            .first()
            .is_some_and(|m| m.offset == since.offset + 1);
    whole.then_some(page.retained)
}

/// The channel's position now: its newest retained message, or "no history yet". Called under
/// the channel's lock, so every message up to it has been queued to the channel's subscribers.
pub fn current(store: &dyn HistoryStore, key: &ChannelKey) -> Option<Since> {
    let latest = store.latest(key, 1).ok()?;
    Some(match (latest.epoch, latest.messages.last()) {
        (Some(epoch), Some(last)) => Since {
            epoch: Some(epoch),
            offset: last.offset,
        },
        _ => Since {
            epoch: None,
            offset: 0,
        },
    })
}

/// Queues `retained` to `conn` as ordinary message frames with their positions. Returns how
/// many.
pub fn deliver(
    retained: &Retained,
    key: &ChannelKey,
    conn: &Conn,
    include_sender_metadata: bool,
) -> usize {
    let Some(epoch) = &retained.epoch else {
        return 0;
    };
    for message in &retained.messages {
        let id = message.id(epoch);
        let position = Position {
            id: &id,
            offset: message.offset,
            epoch,
            ts: message.ts,
        };
        let frame = MessageFrames::new(
            key.1.as_str(),
            message.from.as_str(),
            &message.data,
            message.from_metadata.as_deref(),
        )
        .with_position(Some(position))
        .get(include_sender_metadata);
        conn.deliver(frame);
    }
    retained.messages.len()
}
