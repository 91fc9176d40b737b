//! The Redis engine's node-local half: the hub (local subscribers, wildcard index, peer
//! registry) with, per channel, what this node needs on top of it: its presence holds, the
//! subscribes in flight, whether it listens to the channel's topic, and the roster as its
//! subscribers were told it.
//!
//! - `subscribe.rs`: the life of a subscription (begin, finish or abort, remove, grace).
//! - `events.rs`: delivery of what arrives from the bus.
//! - `resync.rs`: bringing rosters back in line after deltas were lost.
//! - `state.rs`: what re-assertion, pruning and the bus need to know about local state.
//!
//! Locks: the hub's (see `engine/hub/`). The engine's index lock may be held while taking any
//! of them (never the reverse). Every section is short and synchronous.

mod events;
mod history;
mod resync;
#[cfg(test)]
mod sim_tests;
mod state;
mod subscribe;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use serde_json::value::RawValue;

use self::events::message_frames;
pub use self::history::{position_of, Gap};
pub use self::state::ChannelHolds;
pub use self::subscribe::{Removal, RosterRead, SubscribeStart};
use super::stored_metadata;
use super::topics::BusSender;
use crate::close::CloseReason;
use crate::conn::{Conn, Frame};
use crate::engine::hub::occupancy::{OccupancyRules, OccupancySlot, RoomState};
use crate::engine::hub::presence_batch::{DeltaBatch, HasDeltas};
use crate::engine::hub::snapshot::SnapshotCache;
use crate::engine::hub::Hub;
use crate::engine::Member;
use crate::ids::{ConnId, PeerId};

pub struct Local {
    /// Shared with the timers that send a channel's coalesced presence deltas.
    pub hub: Arc<Hub<NodeChannel>>,
    /// Topic subscriptions and barriers go to the bus task through this.
    bus: BusSender,
    /// Tags each reconnect grace, so a late timer cannot end a newer hold.
    generation: AtomicU64,
    /// Roster caps of large rooms (`[presence]`), none unless configured.
    rules: Arc<OccupancyRules>,
    /// Pushes the bus has shed so far: a mirror read before a loss may lack a delta.
    losses: Arc<AtomicU64>,
}

/// What the Redis engine keeps per channel beside the hub's subscribers.
#[derive(Default)]
pub struct NodeChannel {
    /// Subscribes in flight: events are buffered until the snapshot is queued.
    joining: HashMap<ConnId, Joining>,
    /// This node's presence holds, per peer.
    holds: HashMap<PeerId, Hold>,
    /// The node is subscribed to this channel's topic.
    topic: bool,
    /// The roster as this node's subscribers have been told it (snapshot plus deltas), so a
    /// re-sync after an outage can send exactly the deltas they missed.
    known: HashMap<PeerId, Option<Arc<RawValue>>>,
    /// Sequence number of the last change reflected in `known`: `known` is the roster as of
    /// this number (it only grows, until a reset of the numbering).
    known_seq: u64,
    /// Sequence number of the latest delta received (subscribes in flight buffered every one
    /// above their snapshot's number).
    last_seq: u64,
    /// Sequence number of the last re-sync: a delta at or below it that `known` already
    /// reflects was sent by the re-sync (it was published before the roster was read but
    /// arrived after), so it is not sent again.
    resync_floor: u64,
    /// Deltas seen while a subscribe is in flight, to bring `known` from its snapshot to now.
    recent: Vec<(u64, bool, PeerId, Option<Arc<RawValue>>)>,
    /// Occupancy mode, when the channel has a roster cap: over it, `known` is the true roster
    /// and this holds what watchers were shown.
    room: RoomState,
    /// The roster as told to subscribers whose snapshot predates the last sequence reset (a
    /// bus reconnect; their floor is 0), until a re-sync brings everyone to one roster. Their
    /// snapshot's numbers mean nothing after Redis may have restarted, so a delta reaches them
    /// only when it changes this roster: a peer re-asserted after data loss, which they already
    /// know, is not announced to them twice (`resync.rs`).
    pre_reset: Option<HashSet<PeerId>>,
    /// `known` follows Redis exactly (every delta since a roster read in this epoch of the
    /// channel's numbering was applied): a subscribe may then take its snapshot from `known`
    /// instead of reading the roster (`JOIN` says whether nothing changed since).
    mirror: Option<Mirror>,
    /// `known` encoded once per version, for snapshots taken from the mirror.
    snapshot: SnapshotCache,
    /// Presence deltas coalesced under load, numbered as Redis numbers them (while
    /// `pre_reset` is set, deltas go out one by one instead: those subscribers' floors mean
    /// nothing).
    deltas: DeltaBatch,
    /// History: the position (epoch, offset) of the last message received from the bus while
    /// listening, to see a gap (pub/sub is at most once) and repair it from the stream.
    cursor: Option<(Arc<str>, u64)>,
    /// History: subscribers whose rewind reached further than the bus had yet delivered
    /// here, with the last offset of their rewind; messages up to it are not theirs again.
    floors: HashMap<ConnId, (Arc<str>, u64)>,
}

impl HasDeltas for NodeChannel {
    fn deltas(&mut self) -> &mut DeltaBatch {
        &mut self.deltas
    }
}

impl OccupancySlot for NodeChannel {
    fn room(&mut self) -> &mut RoomState {
        &mut self.room
    }
    fn roster_len(&self) -> usize {
        self.known.len()
    }
    fn has_member(&self, peer: &PeerId) -> bool {
        self.known.contains_key(peer)
    }
    fn for_each_member(&self, f: &mut dyn FnMut(&PeerId, &Option<Arc<RawValue>>)) {
        self.known
            .iter()
            .for_each(|(peer, metadata)| f(peer, metadata));
    }
}

/// Where a channel's mirror of the roster stands.
struct Mirror {
    /// The epoch of the channel's numbering the roster was read in.
    epoch: String,
    /// The node's shed count then: any loss since ends the mirror.
    losses: u64,
}

impl NodeChannel {
    fn apply_known(&mut self, joined: bool, peer: PeerId, metadata: Option<Arc<RawValue>>) {
        self.snapshot.invalidate();
        if joined {
            self.known.insert(peer, metadata);
        } else {
            self.known.remove(&peer);
        }
    }

    /// A member's metadata changed without a join: the mirror follows.
    fn apply_metadata(&mut self, peer: &PeerId, metadata: Option<Arc<RawValue>>) {
        if let Some(entry) = self.known.get_mut(peer) {
            *entry = metadata;
            self.snapshot.invalidate();
        }
    }

    /// Replaces `known` wholesale; returns the old one.
    fn replace_known(
        &mut self,
        fresh: HashMap<PeerId, Option<Arc<RawValue>>>,
    ) -> HashMap<PeerId, Option<Arc<RawValue>>> {
        self.snapshot.invalidate();
        std::mem::replace(&mut self.known, fresh)
    }

    /// The mirror as a `JOIN` argument (epoch, sequence number), when it can be trusted.
    fn mirror_position(&self, losses: u64) -> Option<(String, u64)> {
        match &self.mirror {
            Some(m) if m.losses == losses && self.pre_reset.is_none() => {
                Some((m.epoch.clone(), self.known_seq))
            }
            _ => None,
        }
    }

    /// How many peers this node holds presence for here.
    pub fn hold_count(&self) -> usize {
        self.holds.len()
    }
}

/// Most events buffered for one subscribe in flight. A subscriber that falls this far behind
/// before its snapshot is even queued would overflow its outbound queue on replay anyway, so
/// it is closed as a slow consumer instead of buffering on.
const JOINING_BUFFER_MAX: usize = 4096;

struct Joining {
    conn: Arc<Conn>,
    include_sender_metadata: bool,
    buffer: Vec<Buffered>,
    /// The history read for this subscribe, queued after its snapshot.
    rewind: Option<Rewind>,
}

/// A subscriber's rewind, read from the channel's stream after its topic was subscribed:
/// every message after `last` reaches it live, those up to `last` only from here.
pub struct Rewind {
    pub epoch: Arc<str>,
    pub last: u64,
    /// Encoded frames, oldest first.
    pub frames: Vec<Frame>,
}

impl Joining {
    fn buffer_event(&mut self, event: Buffered) {
        if self.buffer.len() < JOINING_BUFFER_MAX {
            self.buffer.push(event);
        } else if self.buffer.len() == JOINING_BUFFER_MAX {
            self.conn.close(CloseReason::SLOW_CONSUMER);
            // One past the bound marks it closed; nothing more is kept.
            self.buffer.push(Buffered::Dropped);
        }
    }
}

enum Buffered {
    Presence {
        seq: u64,
        frame: Frame,
    },
    /// A message, with its history position (epoch, offset) when the channel keeps one.
    Message(Frame, Option<(Arc<str>, u64)>),
    /// The buffer overflowed here (the connection was closed).
    Dropped,
}

struct Hold {
    /// Local subscribed connections of the peer.
    connections: u32,
    metadata: Option<Arc<RawValue>>,
    /// Set while a dropped peer's hold waits out the reconnect grace.
    pending_leave: Option<u64>,
}

/// Roster entries from a flat `HGETALL meta:<ck>` reply, without `exclude`.
pub fn roster_from_flat(flat: &[String], exclude: Option<&PeerId>) -> Vec<Member> {
    flat.chunks_exact(2)
        .filter(|kv| exclude.is_none_or(|p| p.as_str() != kv[0]))
        .map(|kv| Member {
            peer_id: PeerId::new(kv[0].as_str()),
            metadata: stored_metadata(&kv[1]),
        })
        .collect()
}

impl Local {
    /// A node's local half; presence deltas are coalesced over `coalesce` under load (zero:
    /// never).
    pub fn new(bus: BusSender, coalesce: std::time::Duration) -> Local {
        Local {
            hub: Arc::new(Hub::with_coalescing(coalesce)),
            bus,
            generation: AtomicU64::new(0),
            rules: Arc::default(),
            losses: Arc::default(),
        }
    }

    /// Shares the bus's count of shed pushes, which ends every roster mirror read before.
    pub fn watching_losses(mut self, losses: Arc<AtomicU64>) -> Local {
        self.losses = losses;
        self
    }

    fn losses(&self) -> u64 {
        self.losses.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Applies the roster caps of `[presence]` (occupancy mode of large rooms).
    pub fn set_occupancy(&mut self, rules: OccupancyRules) {
        self.rules = Arc::new(rules);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::conn::Outbound;
    use crate::engine::redis::keys::Keys;
    use crate::engine::redis::wire::{kind, Event};
    use crate::engine::Departure;
    use crate::ids::{AppId, ChannelName};
    use std::time::Duration;

    fn drain(rx: &mut Outbound) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| rx.try_recv())
            .map(|f| serde_json::from_str(f.as_str()).unwrap())
            .collect()
    }

    fn delta<'a>(kind: &'a str, seq: u64, peer: &'a str) -> Event<'a> {
        let mut event = Event::new(kind);
        event.seq = Some(seq);
        event.peer = Some(peer.into());
        event
    }

    fn local() -> Local {
        let (bus, _commands) = BusSender::new(Arc::new(Keys::new("h:", "n1")));
        Local::new(bus, Duration::ZERO)
    }

    /// Peer `x` subscribed to `room` on a fresh node, with a snapshot read at `seq`.
    fn subscribed(
        local: &Local,
        seq: u64,
        roster: &[String],
    ) -> (Arc<Conn>, Outbound, ChannelName) {
        let (conn, rx) = Conn::new(
            AppId::new("app".to_string()),
            PeerId::new("x".to_string()),
            None,
            true,
            "publishable",
            64,
        );
        let room = ChannelName::new("room".to_string());
        local.begin_subscribe(&conn, &room, false);
        local.finish_subscribe(&conn, &room, false, None, seq, roster);
        (conn, rx, room)
    }

    #[test]
    fn a_delta_that_arrives_after_the_resync_that_covered_it_is_not_sent_twice() {
        let local = local();
        let (conn, mut rx, room) = subscribed(&local, 1, &["x".into(), String::new()]);
        assert_eq!(drain(&mut rx)[0]["joined"], serde_json::json!([]));

        // The re-sync reads the roster at seq 3: y joined meanwhile (its delta, seq 2, is late).
        let key = (conn.app.clone(), room.clone());
        let roster = ["x", "", "y", ""].map(String::from);
        local.resync(&key, &roster, 3);
        let sent = drain(&mut rx);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0]["joined"][0]["peerId"], "y");
        local.on_channel_event("app", "room", &delta(kind::JOINED, 2, "y"), "n1");
        assert!(drain(&mut rx).is_empty());

        // Later changes flow as usual.
        local.on_channel_event("app", "room", &delta(kind::LEFT, 4, "y"), "n1");
        assert_eq!(drain(&mut rx)[0]["left"][0]["peerId"], "y");
    }

    #[test]
    fn a_delta_already_in_the_snapshot_is_not_sent_when_it_arrives_after_the_subscribe() {
        // The roster was read at seq 5 and already lists y, whose `joined` (seq 4) is still on
        // its way through the bus.
        let local = local();
        let roster = ["x", "", "y", ""].map(String::from);
        let (_conn, mut rx, _room) = subscribed(&local, 5, &roster);
        let snapshot = drain(&mut rx);
        assert_eq!(snapshot[0]["joined"][0]["peerId"], "y");

        local.on_channel_event("app", "room", &delta(kind::JOINED, 4, "y"), "n1");
        assert!(drain(&mut rx).is_empty(), "y's joined was in the snapshot");

        local.on_channel_event("app", "room", &delta(kind::JOINED, 6, "z"), "n1");
        assert_eq!(drain(&mut rx)[0]["joined"][0]["peerId"], "z");
    }

    /// A re-sync of a large room sends the count, not the members it found; back at the cap,
    /// the repair (left for the shown peers that are gone, joined for the unseen).
    #[tokio::test]
    async fn a_resync_over_the_roster_cap_sends_counts_and_repairs_back_at_the_cap() {
        let mut local = local();
        local.set_occupancy(OccupancyRules::new(&crate::config::PresenceConfig {
            channels: vec![crate::config::PresenceChannels {
                patterns: vec!["room".into()],
                max_roster: 2,
            }],
        }));
        let roster = ["x", "", "y", ""].map(String::from);
        let (conn, mut rx, room) = subscribed(&local, 1, &roster);
        assert_eq!(drain(&mut rx)[0]["joined"][0]["peerId"], "y");
        let key = (conn.app.clone(), room);

        // y left, a, b and c joined while deltas were lost: four members, over the cap of 2.
        let roster = ["x", "", "a", "", "b", "", "c", ""].map(String::from);
        local.resync(&key, &roster, 5);
        let sent = drain(&mut rx);
        assert_eq!(
            sent,
            [
                serde_json::json!({"type": "presence", "channel": "room", "joined": [], "left": [],
                "occupancy": {"peers": 4}})
            ]
        );

        // Back to two (x and a): x was shown y, never a.
        let roster = ["x", "", "a", ""].map(String::from);
        local.resync(&key, &roster, 9);
        assert_eq!(
            drain(&mut rx),
            [serde_json::json!({"type": "presence", "channel": "room",
                "joined": [{"peerId": "a"}], "left": [{"peerId": "y"}],
                "occupancy": {"peers": 2}})]
        );
    }

    /// A second connection of peer `x` subscribed to `room`.
    fn second_connection(local: &Local, room: &ChannelName) -> (Arc<Conn>, Outbound) {
        let (conn, rx) = Conn::new(
            AppId::new("app".to_string()),
            PeerId::new("x".to_string()),
            None,
            true,
            "publishable",
            64,
        );
        local.begin_subscribe(&conn, room, false);
        local.finish_subscribe(&conn, room, false, None, 1, &[]);
        (conn, rx)
    }

    const GRACE: Duration = Duration::from_millis(500);

    #[tokio::test(start_paused = true)]
    async fn a_dropped_hold_is_released_exactly_when_the_grace_runs_out() {
        let local = Arc::new(local());
        let (conn, _rx, room) = subscribed(&local, 1, &[]);
        let Some(Removal::LeaveAfterGrace(generation)) =
            local.remove(&conn, &room, Departure::Dropped, GRACE)
        else {
            panic!("a drop waits out the grace");
        };
        let waiting = {
            let (local, room, app, peer) = (
                local.clone(),
                room.clone(),
                conn.app.clone(),
                conn.peer_id.clone(),
            );
            tokio::spawn(async move {
                local
                    .wait_out_grace(GRACE, &app, &room, &peer, generation)
                    .await
            })
        };
        tokio::time::advance(GRACE - Duration::from_millis(1)).await;
        assert!(!waiting.is_finished(), "not a millisecond early");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(waiting.await.unwrap(), "the peer did not come back: leave");
        // The hold is gone, and with it the channel.
        assert!(local
            .hub
            .channels
            .with(&(conn.app.clone(), room), |_| ())
            .is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_back_within_the_grace_keeps_its_hold_and_a_late_timer_changes_nothing() {
        let local = Arc::new(local());
        let (conn, _rx, room) = subscribed(&local, 1, &[]);
        let Some(Removal::LeaveAfterGrace(first)) =
            local.remove(&conn, &room, Departure::Dropped, GRACE)
        else {
            panic!("a drop waits out the grace");
        };
        let (app, peer) = (conn.app.clone(), conn.peer_id.clone());
        tokio::time::advance(GRACE / 2).await;
        // The peer reconnects (a new connection) inside the grace.
        let (again, _rx2) = second_connection(&local, &room);
        tokio::time::advance(GRACE).await;
        assert!(!local.grace_expired(&app, &room, &peer, first));
        // It drops again: a new grace, and the first timer's generation no longer counts.
        let Some(Removal::LeaveAfterGrace(second)) =
            local.remove(&again, &room, Departure::Dropped, GRACE)
        else {
            panic!("a drop waits out the grace");
        };
        assert_ne!(first, second);
        assert!(!local.grace_expired(&app, &room, &peer, first));
        assert!(
            local
                .wait_out_grace(GRACE, &app, &room, &peer, second)
                .await
        );
    }

    #[test]
    fn a_deliberate_leave_or_a_zero_grace_leaves_at_once_and_other_connections_keep_the_hold() {
        let local = local();
        let (conn, _rx, room) = subscribed(&local, 1, &[]);
        let (other, _rx2) = second_connection(&local, &room);
        assert!(matches!(
            local.remove(&conn, &room, Departure::Dropped, GRACE),
            Some(Removal::Kept)
        ));
        assert!(
            local.remove(&conn, &room, Departure::Left, GRACE).is_none(),
            "idempotent"
        );
        assert!(matches!(
            local.remove(&other, &room, Departure::Left, GRACE),
            Some(Removal::LeaveNow)
        ));
        let (conn, _rx, room) = subscribed(&local, 2, &[]);
        assert!(matches!(
            local.remove(&conn, &room, Departure::Shutdown, Duration::ZERO),
            Some(Removal::LeaveNow)
        ));
    }
}
