//! Duplicate subscribes (spec §8.3) must each get an ack and a full presence snapshot again.
//! For a large room that snapshot is big, so a client that never reads could otherwise make the
//! server encode and queue one snapshot after another for the price of a few bytes each.
//!
//! The rule: a duplicate subscribe may queue its snapshot unless the snapshot of the previous
//! duplicate to the same channel on this connection is still unwritten. That refusal costs no
//! encoding at all. Well-behaved clients never meet it: a reconnect replay racing application
//! code sends at most two subscribes at once (the original and one duplicate), and the SDK's
//! reconcile watchdog repeats a subscribe only after 10 s without a snapshot.

use crate::conn::QueueProgress;
use crate::ids::ChannelName;

/// Per session: where in the outbound queue each channel's last duplicate snapshot sits.
///
/// A `Vec` because it is usually empty and never holds more than the connection's
/// subscriptions (entries go with `forget` on unsubscribe).
#[derive(Debug, Default)]
pub struct DuplicateSubscribes {
    /// (channel, frames ever queued just after its duplicate snapshot was queued).
    marks: Vec<(ChannelName, u64)>,
}

impl DuplicateSubscribes {
    /// Whether a duplicate subscribe to `channel` may queue another snapshot now.
    pub fn allows(&self, channel: &ChannelName, progress: QueueProgress) -> bool {
        self.mark(channel)
            .is_none_or(|queued_by| progress.written >= queued_by)
    }

    /// Records that a duplicate subscribe to `channel` has just queued its snapshot.
    pub fn queued(&mut self, channel: &ChannelName, progress: QueueProgress) {
        match self.marks.iter_mut().find(|(name, _)| name == channel) {
            Some((_, mark)) => *mark = progress.queued,
            None => self.marks.push((channel.clone(), progress.queued)),
        }
    }

    /// The channel was unsubscribed: its next subscribe is not a duplicate.
    pub fn forget(&mut self, channel: &ChannelName) {
        self.marks.retain(|(name, _)| name != channel);
    }

    fn mark(&self, channel: &ChannelName) -> Option<u64> {
        self.marks
            .iter()
            .find(|(name, _)| name == channel)
            .map(|(_, mark)| *mark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(queued: u64, written: u64) -> QueueProgress {
        QueueProgress { queued, written }
    }

    #[test]
    fn a_second_duplicate_waits_for_the_first_duplicates_snapshot_to_be_written() {
        let room = ChannelName::new("room".to_string());
        let mut dups = DuplicateSubscribes::default();
        // The original subscribe queued ack + snapshot (frames 1-2); the first duplicate is
        // always allowed, even while those are unwritten (the replay race).
        assert!(dups.allows(&room, progress(2, 0)));
        dups.queued(&room, progress(4, 0));
        // Its snapshot (frame 4) is unwritten: a further duplicate is refused.
        assert!(!dups.allows(&room, progress(4, 3)));
        // Once written, the next duplicate is fine again.
        assert!(dups.allows(&room, progress(5, 4)));
    }

    #[test]
    fn marks_are_per_channel_and_forgotten_on_unsubscribe() {
        let (a, b) = (
            ChannelName::new("a".to_string()),
            ChannelName::new("b".to_string()),
        );
        let mut dups = DuplicateSubscribes::default();
        dups.queued(&a, progress(10, 0));
        assert!(dups.allows(&b, progress(10, 0)));
        assert!(!dups.allows(&a, progress(10, 0)));
        dups.forget(&a);
        assert!(dups.allows(&a, progress(10, 0)));
        assert!(dups.marks.is_empty());
    }
}
