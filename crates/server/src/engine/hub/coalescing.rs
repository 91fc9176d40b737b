//! The hub's side of presence coalescing (`presence_batch.rs`): recording a channel's deltas,
//! the scheduled flush, and the flushes that must come first (before a message on the channel,
//! before a direct from a peer whose delta waits).

use std::sync::Arc;

use serde_json::value::RawValue;

use super::presence_batch::{deliver, HasDeltas, Recorded};
use super::{Channel, ChannelKey, Hub};
use crate::ids::{AppId, PeerId};

impl<S: Default + HasDeltas + Send + 'static> Hub<S> {
    /// Records a presence delta of the channel (the caller holds the channel's lock, with the
    /// roster already changed) and sends it now or leaves it for the batch's flush.
    pub fn record_delta(
        self: &Arc<Self>,
        key: &ChannelKey,
        ch: &mut Channel<S>,
        joined: bool,
        peer: &PeerId,
        metadata: Option<Arc<RawValue>>,
    ) {
        let seq = ch.slot.deltas().seq() + 1;
        self.record_numbered_delta(key, ch, seq, joined, peer, metadata);
    }

    /// [`Hub::record_delta`] for a delta numbered by the engine (`seq` above every number the
    /// channel recorded before; subscribers' floors are in the same numbers).
    pub fn record_numbered_delta(
        self: &Arc<Self>,
        key: &ChannelKey,
        ch: &mut Channel<S>,
        seq: u64,
        joined: bool,
        peer: &PeerId,
        metadata: Option<Arc<RawValue>>,
    ) {
        match ch
            .slot
            .deltas()
            .record_numbered(self.coalesce, seq, joined, peer.clone(), metadata)
        {
            Recorded::SendNow => self.flush_deltas(key, ch),
            Recorded::Waiting => self.waiting.add(key, peer),
            Recorded::FlushAt(at) => {
                self.waiting.add(key, peer);
                let (hub, key) = (self.clone(), key.clone());
                tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    hub.channels.with(&key, |ch| {
                        let deltas = ch.slot.deltas().take(true);
                        hub.waiting.remove(&key, &deltas);
                        deliver(key.1.as_str(), ch, &deltas);
                    });
                });
            }
        }
    }

    /// Sends the channel's waiting deltas now (under its lock).
    pub fn flush_deltas(&self, key: &ChannelKey, ch: &mut Channel<S>) {
        let deltas = ch.slot.deltas().take(false);
        if !deltas.is_empty() {
            self.waiting.remove(key, &deltas);
            deliver(key.1.as_str(), ch, &deltas);
        }
    }

    /// Sends, on every channel, the deltas waiting for `peer` (before a direct from it).
    pub fn flush_deltas_of(&self, app: &AppId, peer: &PeerId) {
        for name in self.waiting.channels_of(&(app.clone(), peer.clone())) {
            let key = (app.clone(), name);
            self.channels.with(&key, |ch| self.flush_deltas(&key, ch));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use serde_json::Value;

    use super::super::presence_batch::DeltaBatch;
    use super::super::{channel_key, MessageFrames};
    use super::*;
    use crate::conn::{Conn, Outbound};
    use crate::ids::ChannelName;

    const WINDOW: Duration = Duration::from_millis(50);

    #[derive(Default)]
    struct Slot(DeltaBatch);

    impl HasDeltas for Slot {
        fn deltas(&mut self) -> &mut DeltaBatch {
            &mut self.0
        }
    }

    fn conn(peer: &str) -> (Arc<Conn>, Outbound) {
        Conn::new(
            AppId::new("app".to_string()),
            PeerId::new(peer.to_string()),
            None,
            true,
            "publishable",
            256,
        )
    }

    fn frames(rx: &mut Outbound) -> Vec<Value> {
        std::iter::from_fn(|| rx.try_recv())
            .map(|f| serde_json::from_str(f.as_str()).unwrap())
            .collect()
    }

    fn names(entries: &Value) -> Vec<String> {
        entries
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["peerId"].as_str().unwrap().to_string())
            .collect()
    }

    /// Lets `d` pass on the paused clock, then lets the flush tasks due by then run.
    async fn pass(d: Duration) {
        tokio::time::sleep(d).await;
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }

    struct Room {
        hub: Arc<Hub<Slot>>,
        key: ChannelKey,
    }

    impl Room {
        fn new() -> Room {
            Room {
                hub: Arc::new(Hub::with_coalescing(WINDOW)),
                key: channel_key(
                    &AppId::new("app".to_string()),
                    &ChannelName::new("room".to_string()),
                ),
            }
        }

        /// Subscribes a connection as the memory engine does: its floor is the latest delta.
        fn watch(&self, peer: &str) -> (Arc<Conn>, Outbound) {
            let (c, rx) = conn(peer);
            self.hub.channels.with_or_create(&self.key, |ch| {
                let floor = ch.slot.0.seq();
                ch.subscribe(&c, false, floor);
            });
            (c, rx)
        }

        /// Fills the window's allowance of immediate sends, as a storm would, and drains what
        /// the watchers got.
        fn busy(&self, watchers: &mut [&mut Outbound]) {
            for i in 0..super::super::presence_batch::IMMEDIATE_PER_WINDOW {
                self.delta(true, &format!("f{i}"));
            }
            for rx in watchers {
                assert_eq!(
                    frames(rx).len() as u32,
                    super::super::presence_batch::IMMEDIATE_PER_WINDOW
                );
            }
        }

        fn delta(&self, joined: bool, peer: &str) {
            self.hub.channels.with_or_create(&self.key, |ch| {
                self.hub
                    .record_delta(&self.key, ch, joined, &PeerId::new(peer.to_string()), None);
            });
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_storm_reaches_each_watcher_as_one_frame_per_window_and_a_quiet_room_at_once() {
        let room = Room::new();
        let (_w, mut w_rx) = room.watch("w");
        room.delta(true, "a");
        assert_eq!(
            names(&frames(&mut w_rx)[0]["joined"]),
            ["a"],
            "the first goes at once"
        );
        for i in 1..super::super::presence_batch::IMMEDIATE_PER_WINDOW {
            room.delta(true, &format!("f{i}"));
        }
        assert_eq!(
            frames(&mut w_rx).len() as u32,
            super::super::presence_batch::IMMEDIATE_PER_WINDOW - 1,
            "a window's allowance goes at once, frame by frame"
        );
        for p in ["b", "c", "d"] {
            room.delta(true, p);
        }
        room.delta(false, "a");
        assert!(
            frames(&mut w_rx).is_empty(),
            "the rest waits for the window"
        );
        pass(WINDOW - Duration::from_millis(1)).await;
        assert!(frames(&mut w_rx).is_empty(), "not a millisecond early");
        pass(Duration::from_millis(1)).await;
        let got = frames(&mut w_rx);
        assert_eq!(got.len(), 1);
        assert_eq!(names(&got[0]["joined"]), ["b", "c", "d"]);
        assert_eq!(names(&got[0]["left"]), ["a"]);
        // After a quiet window, at once again.
        pass(WINDOW * 2).await;
        room.delta(false, "b");
        assert_eq!(names(&frames(&mut w_rx)[0]["left"]), ["b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_watcher_gets_only_what_its_snapshot_lacks_and_never_itself() {
        let room = Room::new();
        let (_w, mut w_rx) = room.watch("w");
        room.busy(&mut [&mut w_rx]);
        room.delta(true, "x"); // waits
                               // x's own connection subscribes while its joined waits; then y joins.
        let (_x, mut x_rx) = room.watch("x");
        room.delta(true, "y");
        let (_late, mut late_rx) = room.watch("late");
        pass(WINDOW).await;
        assert_eq!(names(&frames(&mut w_rx)[0]["joined"]), ["x", "y"]);
        assert_eq!(names(&frames(&mut x_rx)[0]["joined"]), ["y"], "not itself");
        assert!(frames(&mut late_rx).is_empty(), "its snapshot had both");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_comes_and_goes_within_a_window_is_never_in_one_frame_twice() {
        let room = Room::new();
        let (_w, mut w_rx) = room.watch("w");
        room.busy(&mut [&mut w_rx]);
        room.delta(true, "b");
        room.delta(true, "c");
        room.delta(false, "b");
        let got = frames(&mut w_rx);
        assert_eq!(
            got.len(),
            2,
            "the waiting ones first, then the second delta of b"
        );
        assert_eq!(names(&got[0]["joined"]), ["b", "c"]);
        assert_eq!(names(&got[1]["left"]), ["b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_or_a_direct_never_overtakes_its_senders_joined() {
        let room = Room::new();
        let (_w, mut w_rx) = room.watch("w");
        room.busy(&mut [&mut w_rx]);
        room.delta(true, "s");
        // s publishes at once: the engine's publish flushes first.
        let data = serde_json::value::RawValue::from_string("1".into()).unwrap();
        let mut message = MessageFrames::new("room", "s", &data, None);
        let hub = &room.hub;
        hub.fan_out(&room.key, &mut message, None, |ch| {
            hub.flush_deltas(&room.key, ch)
        });
        let got = frames(&mut w_rx);
        assert_eq!(got[0]["type"], "presence");
        assert_eq!(got[1]["type"], "message");
        // A direct from a peer whose joined waits sends it first too.
        room.delta(true, "t");
        assert!(frames(&mut w_rx).is_empty());
        hub.flush_deltas_of(&room.key.0, &PeerId::new("t".to_string()));
        assert_eq!(names(&frames(&mut w_rx)[0]["joined"]), ["t"]);
        // Nothing is left waiting; the timer that fires later sends nothing more.
        pass(WINDOW * 2).await;
        assert!(frames(&mut w_rx).is_empty());
        assert!(hub
            .waiting
            .channels_of(&(room.key.0.clone(), PeerId::new("t")))
            .is_empty());
    }
}
