//! History on the memory engine: publishing to a channel that keeps history (the rewind of a
//! subscribe is `hub::rewind`, called by `roster.rs`).
//!
//! The seam rule: a message is appended to history and queued to the channel's subscribers
//! under the channel's lock, and a subscribe reads its rewind and registers under that same
//! lock. So every message is either in the subscriber's rewind or queued to it live, never
//! both and never neither, and both arrive in offset order.

use herald_protocol::Position;

use super::roster::{Roster, Rosters};
use crate::engine::hub::{channel_key, MessageFrames};
use crate::engine::Publication;
use crate::history::{message_id, NewMessage, Policy};
use crate::webhooks::{EventFields, EventType};

/// Appends `p` to its channel's history and fans it out, both under the channel's lock (the
/// channel is created for it, and dropped again when nobody is subscribed). Returns how many
/// queues took it. A store failure is logged and the message still goes out, without a
/// position.
pub(super) fn publish_kept(state: &Rosters, p: &Publication<'_>, policy: &Policy) -> usize {
    let key = channel_key(p.app, p.channel);
    let hub = &state.hub;
    let excluded = p.exclude.map(|c| c.id);
    let (delivered, unwatched) = hub.channels.with_or_create(&key, |ch| {
        // Deltas waiting on the channel go first: a message never overtakes its sender's
        // `joined`.
        hub.flush_deltas(&key, ch);
        let message = NewMessage {
            from: p.from,
            from_metadata: p.from_metadata,
            data: p.data,
        };
        let appended = match state.history.store.append(&key, policy, message) {
            Ok(appended) => Some(appended),
            Err(e) => {
                tracing::warn!(channel = %p.channel, error = %e, "history append failed");
                None
            }
        };
        let id = appended.as_ref().map(|a| message_id(&a.epoch, a.offset));
        let position = appended
            .as_ref()
            .zip(id.as_deref())
            .map(|(a, id)| Position {
                id,
                offset: a.offset,
                epoch: &a.epoch,
                ts: a.ts,
            });
        let offset = appended.as_ref().map(|a| a.offset);
        announce_message(state, p, id.as_deref().zip(offset));
        let mut frames =
            MessageFrames::new(p.channel.as_str(), p.from.as_str(), p.data, p.from_metadata)
                .with_position(position);
        let delivered = ch.deliver_message(&mut frames, excluded)
            + hub.deliver_to_patterns(p.app, p.channel.as_str(), &mut frames, excluded, |id| {
                ch.is_subscribed(id)
            });
        (delivered, ch.subscriber_count() == 0 && ch.slot.is_empty())
    });
    if unwatched {
        hub.channels
            .remove_if_idle(&key, |roster: &Roster| roster.is_empty());
    }
    delivered
}

/// `message.published`, when some endpoint of the app takes it, with the message's id and
/// offset where the channel keeps history. Called under the channel's lock, so a channel's
/// events leave in its order.
pub(super) fn announce_message(
    state: &Rosters,
    p: &Publication<'_>,
    position: Option<(&str, u64)>,
) {
    let channel = Some(p.channel.as_str());
    let kind = EventType::MessagePublished;
    let Some(hooks) = state.announcer.wants(p.app, kind, channel) else {
        return;
    };
    hooks.emit(
        p.app.as_str(),
        kind,
        EventFields {
            channel,
            peer_id: Some(p.from.as_str()),
            from: Some(p.from.as_str()),
            from_metadata: p.from_metadata,
            data: Some(p.data),
            message_id: position.map(|(id, _)| id),
            offset: position.map(|(_, offset)| offset),
            ..EventFields::default()
        },
    );
}
