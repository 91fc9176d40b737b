//! The Redis engine's node-local half against a simulated Redis: deltas arrive numbered and
//! possibly late (published before a subscriber's roster read, delivered after), subscribes
//! are two-phase, the hub coalesces what arrives under load, and a subscribe takes its
//! snapshot from the node's mirror of the roster whenever `JOIN` says nothing changed since
//! the mirror's position (the model runs `JOIN`'s rule). Every watcher must end with the true
//! roster, told each change once; a snapshot from the mirror must equal the roster, metadata
//! included; and whatever is delivered on the channel after a delta (a message, a direct from
//! the peer) never overtakes it.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use herald_testkit::prelude::PresenceView;
use proptest::prelude::*;
use serde_json::value::RawValue;

use super::{Local, RosterRead, SubscribeStart};
use crate::conn::{Conn, Outbound};
use crate::engine::redis::keys::Keys;
use crate::engine::redis::topics::BusSender;
use crate::engine::redis::wire::{kind, Event};
use crate::engine::Departure;
use crate::ids::{AppId, ChannelName, PeerId};

const WINDOW: Duration = Duration::from_millis(50);
const ROOM: &str = "room";

fn local() -> Local {
    let (bus, _commands) = BusSender::new(Arc::new(Keys::new("h:", "n1")));
    Local::new(bus, WINDOW)
}

/// What Redis would publish on the channel's topic.
#[derive(Debug, Clone)]
enum Pushed {
    Delta {
        joined: bool,
        seq: u64,
        peer: String,
        meta: String,
    },
    Meta {
        seq: u64,
        peer: String,
        meta: String,
    },
    Message {
        from: String,
    },
}

/// A subscribe's roster read while it is in flight.
enum Read {
    Full {
        seq: u64,
        flat: Vec<String>,
        epoch: String,
        losses: u64,
    },
    Mirror {
        seq: u64,
    },
}

/// One local watcher: its connection, queue and view, and its roster read while the subscribe
/// is in flight.
struct Watcher {
    conn: Arc<Conn>,
    rx: Outbound,
    view: PresenceView,
    pending: Option<Read>,
}

impl Watcher {
    fn absorb(&mut self) {
        while let Some(frame) = self.rx.try_recv() {
            self.view.absorb(frame.as_str(), self.conn.peer_id.as_str());
        }
    }
}

/// A node's `Local` beside a model of Redis: the true roster with metadata, its sequence
/// number, epoch and last visible change, and what was published but not yet delivered.
struct Sim {
    local: Arc<Local>,
    losses: Arc<AtomicU64>,
    seq: u64,
    /// `:vseq`: the last change a mirror follows.
    vseq: u64,
    /// The life of the numbering (it only changes when Redis loses it).
    epoch: u32,
    roster: BTreeMap<String, String>,
    in_flight: VecDeque<Pushed>,
    watchers: BTreeMap<u8, Watcher>,
    /// Subscribes that took their snapshot from the mirror.
    mirror_reads: usize,
}

impl Sim {
    fn new() -> Sim {
        let losses = Arc::new(AtomicU64::new(0));
        Sim {
            local: Arc::new(local().watching_losses(losses.clone())),
            losses,
            seq: 0,
            vseq: 0,
            epoch: 1,
            roster: BTreeMap::new(),
            in_flight: VecDeque::new(),
            watchers: BTreeMap::new(),
            mirror_reads: 0,
        }
    }

    fn members(&self) -> BTreeSet<String> {
        self.roster.keys().cloned().collect()
    }

    /// Redis runs a join or leave of `peer`: it changes the roster, numbers the change and
    /// publishes it (a join of a member is a silent re-hold: numbered, not published).
    fn redis_change(&mut self, joined: bool, peer: &str) {
        self.redis_change_with(joined, peer, String::new());
    }

    fn redis_change_with(&mut self, joined: bool, peer: &str, meta: String) {
        if joined {
            self.seq += 1;
            match self.roster.insert(peer.to_string(), meta.clone()) {
                None => {
                    self.vseq = self.seq;
                    self.in_flight.push_back(Pushed::Delta {
                        joined,
                        seq: self.seq,
                        peer: peer.to_string(),
                        meta,
                    });
                }
                Some(old) if old != meta => {
                    self.vseq = self.seq;
                    self.in_flight.push_back(Pushed::Meta {
                        seq: self.seq,
                        peer: peer.to_string(),
                        meta,
                    });
                }
                Some(_) => {}
            }
        } else if let Some(meta) = self.roster.remove(peer) {
            self.seq += 1;
            self.in_flight.push_back(Pushed::Delta {
                joined,
                seq: self.seq,
                peer: peer.to_string(),
                meta,
            });
            // An empty channel's numbering lives on (it expires only long after).
            self.vseq = self.seq;
        }
    }

    /// The node receives the next `n` pushes.
    fn deliver(&mut self, n: usize) {
        for _ in 0..n {
            let Some(pushed) = self.in_flight.pop_front() else {
                return;
            };
            let data = RawValue::from_string("1".into()).unwrap();
            let meta_of =
                |m: &str| (!m.is_empty()).then(|| RawValue::from_string(m.into()).unwrap());
            let meta;
            let mut event;
            match &pushed {
                Pushed::Delta {
                    joined,
                    seq,
                    peer,
                    meta: m,
                } => {
                    event = Event::new(if *joined { kind::JOINED } else { kind::LEFT });
                    event.seq = Some(*seq);
                    event.peer = Some(peer.as_str().into());
                    meta = meta_of(m);
                }
                Pushed::Meta { seq, peer, meta: m } => {
                    event = Event::new(kind::META);
                    event.seq = Some(*seq);
                    event.peer = Some(peer.as_str().into());
                    meta = meta_of(m);
                }
                Pushed::Message { from } => {
                    event = Event::new(kind::MESSAGE);
                    event.from = Some(from.as_str().into());
                    event.data = Some(&data);
                    meta = None;
                }
            }
            event.meta = meta.as_deref();
            self.local.on_channel_event("app", ROOM, &event, "n2");
        }
    }

    /// `JOIN` of `peer` for a subscribe that began with `start`: the roster, or nothing when
    /// the node's mirror is current.
    fn join(&mut self, peer: &str, start: &SubscribeStart) -> Read {
        let epoch = self.epoch.to_string();
        let current = start
            .mirror
            .as_ref()
            .is_some_and(|(e, have)| *e == epoch && self.vseq <= *have);
        self.redis_change(true, peer);
        if current {
            return Read::Mirror { seq: self.seq };
        }
        Read::Full {
            seq: self.seq,
            flat: self.flat(),
            epoch: self.epoch.to_string(),
            losses: start.losses,
        }
    }

    fn flat(&self) -> Vec<String> {
        self.roster
            .iter()
            .flat_map(|(p, m)| [p.clone(), m.clone()])
            .collect()
    }

    /// Watcher `w` begins a subscribe, and Redis joins it and reads the roster for it.
    fn begin(&mut self, w: u8) {
        if self.watchers.contains_key(&w) {
            return;
        }
        let peer = format!("w{w}");
        let (conn, rx) = Conn::new(
            AppId::new("app"),
            PeerId::new(peer.as_str()),
            None,
            true,
            "token",
            1 << 16,
        );
        let start = self
            .local
            .begin_subscribe(&conn, &ChannelName::new(ROOM), false);
        let read = self.join(&peer, &start);
        self.watchers.insert(
            w,
            Watcher {
                conn,
                rx,
                view: PresenceView::default(),
                pending: Some(read),
            },
        );
    }

    /// The roster read of watcher `w`'s subscribe comes back to the node.
    fn finish(&mut self, w: u8) {
        let Some(read) = self.watchers.get_mut(&w).and_then(|x| x.pending.take()) else {
            return;
        };
        let conn = self.watchers[&w].conn.clone();
        let room = ChannelName::new(ROOM);
        let finished = match &read {
            Read::Full {
                seq,
                flat,
                epoch,
                losses,
            } => {
                let read = RosterRead::Full {
                    seq: *seq,
                    roster: flat,
                    epoch,
                    losses: *losses,
                };
                self.local.finish_read(&conn, &room, false, None, read)
            }
            Read::Mirror { seq } => {
                self.mirror_reads += 1;
                self.local
                    .finish_read(&conn, &room, false, None, RosterRead::Mirror { seq: *seq })
            }
        };
        if !finished {
            let flat = self.flat();
            self.local
                .finish_subscribe(&conn, &room, false, None, self.seq, &flat);
        }
    }

    /// Watcher `w` leaves (once subscribed), and Redis announces it.
    fn leave(&mut self, w: u8) {
        if self.watchers.get(&w).is_some_and(|x| x.pending.is_none()) {
            let watcher = self.watchers.remove(&w).unwrap();
            self.local.remove(
                &watcher.conn,
                &ChannelName::new(ROOM),
                Departure::Left,
                Duration::ZERO,
            );
            self.redis_change(false, watcher.conn.peer_id.as_str());
        }
    }

    fn absorb(&mut self) {
        for w in self.watchers.values_mut() {
            w.absorb();
        }
    }

    /// Delivers everything, finishes every subscribe, lets the flushes run: each watcher's
    /// view is the true roster.
    async fn settle_and_check(mut self) {
        let ws: Vec<u8> = self.watchers.keys().copied().collect();
        for w in ws {
            self.finish(w);
        }
        self.deliver(usize::MAX);
        tokio::time::sleep(WINDOW * 2).await;
        let members = self.members();
        for w in self.watchers.values_mut() {
            w.absorb();
            w.view.assert_equals(&members, w.conn.peer_id.as_str());
        }
        // A last subscriber's snapshot (from the mirror when `JOIN` allows it) is the roster,
        // metadata included.
        self.begin(LAST);
        self.finish(LAST);
        let watcher = self.watchers.get_mut(&LAST).unwrap();
        let snapshot: serde_json::Value =
            serde_json::from_str(watcher.rx.try_recv().unwrap().as_str()).unwrap();
        let got: BTreeMap<String, String> = snapshot["joined"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let meta = e.get("metadata").map_or(String::new(), |m| m.to_string());
                (e["peerId"].as_str().unwrap().to_string(), meta)
            })
            .collect();
        let mut want = self.roster.clone();
        want.remove(&format!("w{LAST}"));
        assert_eq!(got, want, "a late subscriber's snapshot");
    }
}

/// The watcher that subscribes last, to check a snapshot against the roster.
const LAST: u8 = 200;

#[derive(Debug, Clone, Copy)]
enum Op {
    /// A peer on another node joins or leaves.
    Remote {
        peer: u8,
        joined: bool,
    },
    /// The node receives this many pushes.
    Deliver(u8),
    Begin(u8),
    Finish(u8),
    Leave(u8),
    /// A peer on another node publishes.
    Message(u8),
    /// A member on another node reconnects within the grace with this metadata.
    Rehold {
        peer: u8,
        metadata: u8,
    },
    Wait(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..16u8, any::<bool>()).prop_map(|(peer, joined)| Op::Remote { peer, joined }),
        5 => (1..12u8).prop_map(Op::Deliver),
        2 => (0..4u8).prop_map(Op::Begin),
        2 => (0..4u8).prop_map(Op::Finish),
        1 => (0..4u8).prop_map(Op::Leave),
        1 => (0..16u8).prop_map(Op::Message),
        2 => (0..16u8, 0..3u8).prop_map(|(peer, metadata)| Op::Rehold { peer, metadata }),
        1 => (0..80u8).prop_map(Op::Wait),
    ]
}

async fn run(ops: Vec<Op>) {
    let mut sim = Sim::new();
    for op in ops {
        match op {
            Op::Remote { peer, joined } => sim.redis_change(joined, &format!("r{peer}")),
            Op::Deliver(n) => sim.deliver(usize::from(n)),
            Op::Begin(w) => sim.begin(w),
            Op::Finish(w) => sim.finish(w),
            Op::Leave(w) => sim.leave(w),
            Op::Message(p) => {
                let from = format!("r{p}");
                if sim.roster.contains_key(&from) {
                    sim.in_flight.push_back(Pushed::Message { from });
                }
            }
            Op::Rehold { peer, metadata } => {
                let peer = format!("r{peer}");
                if sim.roster.contains_key(&peer) {
                    let meta = if metadata == 0 {
                        String::new()
                    } else {
                        format!(r#"{{"v":{metadata}}}"#)
                    };
                    sim.redis_change_with(true, &peer, meta);
                }
            }
            Op::Wait(ms) => tokio::time::sleep(Duration::from_millis(u64::from(ms))).await,
        }
        sim.absorb();
    }
    sim.settle_and_check().await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_watcher_converges_to_the_true_roster(ops in prop::collection::vec(op(), 1..250)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(run(ops));
    }
}

/// The frames queued for watcher `w` so far, also applied to its view.
fn frames(sim: &mut Sim, w: u8) -> Vec<serde_json::Value> {
    let watcher = sim.watchers.get_mut(&w).unwrap();
    let me = watcher.conn.peer_id.as_str().to_string();
    std::iter::from_fn(|| watcher.rx.try_recv())
        .map(|f| {
            watcher.view.absorb(f.as_str(), &me);
            serde_json::from_str(f.as_str()).unwrap()
        })
        .collect()
}

/// Lets `d` pass on the paused clock, then lets the flush timers due by then run.
async fn pass(d: Duration) {
    tokio::time::sleep(d).await;
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
}

fn joined_names(frame: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = frame["joined"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["peerId"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

use crate::engine::hub::presence_batch::IMMEDIATE_PER_WINDOW;

/// Watcher 0 subscribed, then a storm of joins that used up the window's immediate sends.
async fn busy_room() -> Sim {
    let mut sim = Sim::new();
    sim.begin(0);
    sim.finish(0);
    sim.deliver(usize::MAX);
    // The watcher's own joined was the window's first send: start a fresh window.
    tokio::time::sleep(WINDOW * 2).await;
    for i in 0..IMMEDIATE_PER_WINDOW {
        sim.redis_change(true, &format!("f{i}"));
    }
    sim.deliver(usize::MAX);
    let sent = frames(&mut sim, 0);
    assert_eq!(
        sent.len() as u32,
        1 + IMMEDIATE_PER_WINDOW,
        "the snapshot, then one frame per join"
    );
    sim
}

#[tokio::test(start_paused = true)]
async fn past_the_immediate_sends_deltas_leave_together_at_the_window_end() {
    let mut sim = busy_room().await;
    for p in ["a", "b", "c"] {
        sim.redis_change(true, p);
    }
    sim.redis_change(false, "f0");
    sim.deliver(usize::MAX);
    assert!(frames(&mut sim, 0).is_empty(), "they wait for the window");
    pass(WINDOW).await;
    let got = frames(&mut sim, 0);
    assert_eq!(got.len(), 1);
    assert_eq!(joined_names(&got[0]), ["a", "b", "c"]);
    assert_eq!(got[0]["left"][0]["peerId"], "f0");
}

#[tokio::test(start_paused = true)]
async fn a_message_or_a_direct_from_a_waiting_peer_sends_its_joined_first() {
    let mut sim = busy_room().await;
    sim.redis_change(true, "s");
    sim.in_flight
        .push_back(Pushed::Message { from: "s".into() });
    sim.deliver(usize::MAX);
    let got = frames(&mut sim, 0);
    assert_eq!(got.len(), 2);
    assert_eq!(joined_names(&got[0]), ["s"]);
    assert_eq!(got[1]["type"], "message");

    // A direct from t, whose joined waits, to the watcher.
    sim.redis_change(true, "t");
    sim.deliver(usize::MAX);
    sim.local.hub.peers.register(&sim.watchers[&0].conn);
    assert!(frames(&mut sim, 0).is_empty());
    let data = RawValue::from_string("1".into()).unwrap();
    let mut direct = Event::new(kind::DIRECT);
    direct.app = Some("app".into());
    direct.to = Some("w0".into());
    direct.from = Some("t".into());
    direct.data = Some(&data);
    assert_eq!(sim.local.deliver_direct(&direct, None), 1);
    let got = frames(&mut sim, 0);
    assert_eq!(got.len(), 2);
    assert_eq!(joined_names(&got[0]), ["t"]);
    assert_eq!(got[1]["type"], "direct");
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_during_a_storm_is_told_each_change_once() {
    let mut sim = busy_room().await;
    // x waits; then watcher 1 begins (Redis reads the roster with x and w1 in it), y joins
    // after the read and reaches the node while the subscribe is in flight.
    sim.redis_change(true, "x");
    sim.deliver(usize::MAX);
    sim.begin(1);
    sim.redis_change(true, "y");
    sim.deliver(usize::MAX);
    sim.finish(1);
    sim.absorb();
    pass(WINDOW).await;
    sim.absorb();
    let w1 = &sim.watchers[&1];
    assert!(w1.view.roster.as_ref().unwrap().contains("y"));
    sim.settle_and_check().await;
}

#[tokio::test(start_paused = true)]
async fn a_sequence_reset_sends_what_waits_under_the_old_numbers() {
    let mut sim = busy_room().await;
    sim.redis_change(true, "z");
    sim.deliver(usize::MAX);
    assert!(frames(&mut sim, 0).is_empty());
    sim.local.reset_sequences();
    let got = frames(&mut sim, 0);
    assert_eq!(joined_names(&got[0]), ["z"]);
}

/// Whether watcher `w`'s subscribe in flight was told the mirror is current.
fn reads_mirror(sim: &Sim, w: u8) -> bool {
    matches!(sim.watchers[&w].pending, Some(Read::Mirror { .. }))
}

#[tokio::test(start_paused = true)]
async fn once_the_node_follows_a_room_subscribes_take_the_roster_from_its_mirror() {
    let mut sim = Sim::new();
    for p in 0..5 {
        sim.redis_change(true, &format!("r{p}"));
    }
    sim.deliver(usize::MAX);
    sim.begin(0);
    assert!(
        !reads_mirror(&sim, 0),
        "the first subscribe reads the roster"
    );
    sim.finish(0);
    for w in 1..4 {
        sim.deliver(usize::MAX);
        sim.begin(w);
        assert!(reads_mirror(&sim, w), "watcher {w}");
        sim.finish(w);
    }
    // A member reconnecting within the grace with the same metadata changes nothing a mirror
    // follows; new metadata does, and reaches the mirror once delivered.
    sim.redis_change(true, "r1");
    sim.deliver(usize::MAX);
    sim.begin(4);
    assert!(reads_mirror(&sim, 4));
    sim.finish(4);
    sim.redis_change_with(true, "r2", r#"{"v":7}"#.into());
    sim.begin(5);
    assert!(
        !reads_mirror(&sim, 5),
        "the metadata change is not delivered yet"
    );
    sim.finish(5);
    sim.deliver(usize::MAX);
    sim.begin(6);
    assert!(reads_mirror(&sim, 6));
    sim.finish(6);
    // A push shed by the bus ends the mirror until the roster is read again.
    sim.deliver(usize::MAX);
    sim.losses.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    sim.begin(7);
    assert!(!reads_mirror(&sim, 7));
    sim.finish(7);
    sim.deliver(usize::MAX);
    sim.begin(8);
    assert!(reads_mirror(&sim, 8), "read again after the loss");
    assert_eq!(sim.mirror_reads, 5);
    sim.settle_and_check().await;
}

#[tokio::test(start_paused = true)]
async fn a_mirror_that_stops_being_trusted_during_a_subscribe_reads_the_roster_instead() {
    let mut sim = Sim::new();
    sim.redis_change(true, "r0");
    sim.deliver(usize::MAX);
    sim.begin(0);
    sim.finish(0);
    sim.deliver(usize::MAX);
    sim.begin(1);
    assert!(reads_mirror(&sim, 1));
    // The bus reconnects while the join runs: numbers are reset, the mirror ends.
    sim.local.reset_sequences();
    sim.finish(1);
    sim.settle_and_check().await;
}

#[tokio::test(start_paused = true)]
async fn a_resync_sends_what_waits_before_comparing_rosters() {
    let mut sim = busy_room().await;
    sim.redis_change(true, "z");
    sim.deliver(usize::MAX);
    assert!(
        frames(&mut sim, 0).is_empty(),
        "z's joined waits for the window"
    );
    // A re-sync compares Redis's roster with `known`, which has z already: without sending
    // what waits first, the watcher would never hear of z.
    let key = (AppId::new("app"), ChannelName::new(ROOM));
    let flat = sim.flat();
    assert!(sim.local.resync(&key, &flat, sim.seq));
    let got = frames(&mut sim, 0);
    assert_eq!(joined_names(&got[0]), ["z"]);
    sim.settle_and_check().await;
}
