//! Presence deltas coalesced under load. A channel sends its first [`IMMEDIATE_PER_WINDOW`]
//! deltas of a window at once, each in its own frame, as it always did; past that, deltas wait
//! and leave together at the window's end, as one `presence` frame with several `joined` and
//! `left` entries (which the protocol allows). A join storm in a room of N watchers then costs
//! each watcher a handful of frames per window instead of one per join, and the node encodes
//! that many frames instead of one per join per watcher group. A room that is not under load
//! sees no delay and no change at all.
//!
//! Exactness: a watcher gets exactly the entries newer than its snapshot (each delta has a
//! sequence number; a subscriber's `floor` is the number its snapshot reflects), never its own
//! peer, and a peer appears at most once per frame (a second delta of a peer already waiting
//! sends the waiting ones first). Order: whatever the engine delivers on the channel after a
//! delta (a message, a snapshot) sends the waiting deltas first (`flush`).

use std::sync::Arc;
use std::time::Duration;

use herald_protocol::PresenceEntry;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::channels::Channel;
use super::frames::presence;
use crate::ids::PeerId;

/// One presence change waiting to be sent.
#[derive(Debug, Clone)]
pub struct Delta {
    pub seq: u64,
    pub joined: bool,
    pub peer: PeerId,
    pub metadata: Option<Arc<RawValue>>,
}

/// Deltas a channel sends at once in each window before it starts to coalesce: enough that
/// ordinary traffic (a few peers arriving together) is never delayed or merged.
pub const IMMEDIATE_PER_WINDOW: u32 = 8;

/// A channel's presence deltas and their coalescing state.
#[derive(Debug, Default)]
pub struct DeltaBatch {
    /// Sequence number of the latest delta (sent or waiting): what a new snapshot reflects.
    seq: u64,
    /// Deltas waiting, oldest first.
    waiting: Vec<Delta>,
    /// The current window's start, and how many sends it has seen.
    window_start: Option<Instant>,
    sent_in_window: u32,
    /// A flush is scheduled (the caller runs it at the instant `record` returned).
    scheduled: bool,
}

/// What the caller does after [`DeltaBatch::record`].
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Everything recorded so far may be sent now (`flush`).
    SendNow,
    /// The delta waits; schedule a flush at this instant (at most one is scheduled).
    FlushAt(Instant),
    /// The delta waits for a flush already scheduled.
    Waiting,
}

impl DeltaBatch {
    /// The sequence number a snapshot taken now reflects (the subscriber's floor).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Records a delta. Whatever is waiting for the same peer is sent first (the caller
    /// flushes when told `SendNow`), so a frame never holds two deltas of one peer.
    pub fn record(
        &mut self,
        window: Duration,
        joined: bool,
        peer: PeerId,
        metadata: Option<Arc<RawValue>>,
    ) -> Recorded {
        self.record_numbered(window, self.seq + 1, joined, peer, metadata)
    }

    /// [`DeltaBatch::record`] for an engine whose deltas come numbered (the Redis engine's
    /// cluster-wide sequence numbers): `seq` must be above every number recorded before.
    pub fn record_numbered(
        &mut self,
        window: Duration,
        seq: u64,
        joined: bool,
        peer: PeerId,
        metadata: Option<Arc<RawValue>>,
    ) -> Recorded {
        self.seq = seq;
        let now = Instant::now();
        let conflict = self.waiting.iter().any(|d| d.peer == peer);
        self.waiting.push(Delta {
            seq: self.seq,
            joined,
            peer,
            metadata,
        });
        if window.is_zero() || conflict {
            return Recorded::SendNow;
        }
        if self.scheduled {
            return Recorded::Waiting;
        }
        let start = match self.window_start {
            Some(start) if now.saturating_duration_since(start) < window => start,
            _ => {
                self.window_start = Some(now);
                self.sent_in_window = 0;
                now
            }
        };
        if self.sent_in_window < IMMEDIATE_PER_WINDOW {
            self.sent_in_window += 1;
            return Recorded::SendNow;
        }
        self.scheduled = true;
        Recorded::FlushAt(start + window)
    }

    /// Takes the waiting deltas (for [`deliver`]). Called for a `SendNow`, by the scheduled
    /// flush, and before anything else is delivered on the channel.
    pub fn take(&mut self, from_timer: bool) -> Vec<Delta> {
        if from_timer {
            self.scheduled = false;
            // The flush opens the next window, and counts as its first send.
            self.window_start = Some(Instant::now());
            self.sent_in_window = 1;
        }
        std::mem::take(&mut self.waiting)
    }
}

/// Queues `deltas` (oldest first) to every subscriber of the channel that receives presence:
/// each gets the deltas newer than its snapshot, never its own peer. A peer's second delta
/// starts a new frame, so no frame names a peer twice.
pub fn deliver<S>(channel_name: &str, channel: &Channel<S>, deltas: &[Delta]) {
    let mut start = 0;
    for end in 1..=deltas.len() {
        let repeats = deltas
            .get(end)
            .is_some_and(|next| deltas[start..end].iter().any(|d| d.peer == next.peer));
        if end == deltas.len() || repeats {
            deliver_group(channel_name, channel, &deltas[start..end]);
            start = end;
        }
    }
}

/// One frame's worth: subscribers that need all of it and appear in none share one frame.
fn deliver_group<S>(channel_name: &str, channel: &Channel<S>, deltas: &[Delta]) {
    let Some(first) = deltas.first() else {
        return;
    };
    let frame_of = |deltas: &mut dyn Iterator<Item = &Delta>| {
        let (mut joined, mut left) = (Vec::new(), Vec::new());
        for d in deltas {
            let entry = PresenceEntry {
                peer_id: d.peer.as_str(),
                metadata: d.metadata.as_deref(),
            };
            if d.joined {
                joined.push(entry);
            } else {
                left.push(entry);
            }
        }
        (!joined.is_empty() || !left.is_empty()).then(|| presence(channel_name, &joined, &left))
    };
    let mut shared = None;
    for sub in channel.subscribers() {
        if !sub.conn.receives_presence {
            continue;
        }
        let me = &sub.conn.peer_id;
        let needs_all = sub.floor < first.seq && deltas.iter().all(|d| d.peer != *me);
        let frame = if needs_all {
            shared
                .get_or_insert_with(|| frame_of(&mut deltas.iter()))
                .clone()
        } else {
            frame_of(&mut deltas.iter().filter(|d| d.seq > sub.floor && d.peer != *me))
        };
        if let Some(frame) = frame {
            sub.conn.deliver(frame);
        }
    }
}

/// Engine state that carries a channel's [`DeltaBatch`].
pub trait HasDeltas {
    fn deltas(&mut self) -> &mut DeltaBatch;
}

/// Which peers have deltas waiting on which channels, so a `direct` from such a peer can send
/// them first: a receiver must learn that the sender joined before it hears from it (the
/// official `MeteredPeer` drops directs from peers it does not know). Touched only while
/// deltas wait, that is under load; otherwise one atomic read per direct.
#[derive(Default)]
pub struct WaitingPeers {
    count: std::sync::atomic::AtomicUsize,
    by_peer: std::sync::Mutex<
        std::collections::HashMap<
            super::PeerKey,
            std::collections::HashSet<crate::ids::ChannelName>,
        >,
    >,
}

impl WaitingPeers {
    pub fn add(&self, key: &super::ChannelKey, peer: &PeerId) {
        let mut map = crate::sync::lock(&self.by_peer);
        if map
            .entry((key.0.clone(), peer.clone()))
            .or_default()
            .insert(key.1.clone())
        {
            self.count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn remove(&self, key: &super::ChannelKey, deltas: &[Delta]) {
        if self.count.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return;
        }
        let mut map = crate::sync::lock(&self.by_peer);
        for d in deltas {
            let peer_key = (key.0.clone(), d.peer.clone());
            if let Some(channels) = map.get_mut(&peer_key) {
                if channels.remove(&key.1) {
                    self.count
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
                if channels.is_empty() {
                    map.remove(&peer_key);
                }
            }
        }
    }

    /// The channels where `peer` has deltas waiting.
    pub fn channels_of(&self, peer: &super::PeerKey) -> Vec<crate::ids::ChannelName> {
        if self.count.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        crate::sync::lock(&self.by_peer)
            .get(peer)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(50);

    fn peer(p: &str) -> PeerId {
        PeerId::new(p.to_string())
    }

    /// Records deltas of distinct peers until one is held back; returns how many went at once.
    fn fill_window(batch: &mut DeltaBatch, prefix: &str) -> u32 {
        let mut sent = 0;
        loop {
            match batch.record(WINDOW, true, peer(&format!("{prefix}{sent}")), None) {
                Recorded::SendNow => {
                    batch.take(false);
                    sent += 1;
                }
                _ => return sent,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_channel_sends_at_once_until_a_window_is_busy_then_once_at_its_end() {
        let mut batch = DeltaBatch::default();
        let start = Instant::now();
        assert_eq!(fill_window(&mut batch, "a"), IMMEDIATE_PER_WINDOW);
        // The next one (held back by fill_window) waits for a flush at the window's end.
        assert_eq!(
            batch.record(WINDOW, true, peer("b"), None),
            Recorded::Waiting
        );
        tokio::time::advance(WINDOW).await;
        let sent: Vec<String> = batch
            .take(true)
            .iter()
            .map(|d| d.peer.as_str().to_string())
            .collect();
        assert_eq!(sent, [format!("a{IMMEDIATE_PER_WINDOW}"), "b".to_string()]);
        assert_eq!(Instant::now(), start + WINDOW);
        // The flush counted as the new window's first send.
        assert_eq!(fill_window(&mut batch, "c"), IMMEDIATE_PER_WINDOW - 1);
        // A quiet window later, the allowance is whole again.
        batch.take(true);
        tokio::time::advance(WINDOW * 2).await;
        assert_eq!(fill_window(&mut batch, "d"), IMMEDIATE_PER_WINDOW);
    }

    #[tokio::test(start_paused = true)]
    async fn the_flush_is_scheduled_at_the_end_of_the_window_that_filled() {
        let mut batch = DeltaBatch::default();
        let start = Instant::now();
        for i in 0..IMMEDIATE_PER_WINDOW {
            tokio::time::advance(Duration::from_millis(1)).await;
            assert_eq!(
                batch.record(WINDOW, true, peer(&format!("p{i}")), None),
                Recorded::SendNow
            );
            batch.take(false);
        }
        assert_eq!(
            batch.record(WINDOW, true, peer("late"), None),
            Recorded::FlushAt(start + Duration::from_millis(1) + WINDOW)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_delta_of_a_waiting_peer_sends_the_waiting_ones_first() {
        let mut batch = DeltaBatch::default();
        fill_window(&mut batch, "a");
        assert_eq!(
            batch.record(WINDOW, true, peer("x"), None),
            Recorded::Waiting
        );
        assert_eq!(
            batch.record(WINDOW, false, peer("x"), None),
            Recorded::SendNow
        );
        let sent = batch.take(false);
        assert_eq!(
            sent.len(),
            3,
            "a's held-back one, x joined, x left: deliver splits them"
        );
    }

    #[test]
    fn a_zero_window_never_waits() {
        let mut batch = DeltaBatch::default();
        for p in ["a", "b", "c"] {
            assert_eq!(
                batch.record(Duration::ZERO, true, peer(p), None),
                Recorded::SendNow
            );
        }
    }
}
