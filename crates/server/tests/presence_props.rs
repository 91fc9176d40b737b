//! Presence reference counting (spec §12) under random join / leave / disconnect sequences.
//!
//! Several peers hold several connections each across a few channels. A reference model (per
//! channel: peer → its subscribed connections and the metadata of its latest subscriber)
//! predicts exactly which frames every connection receives after each step, and the final
//! rosters; the in-memory engine, driven through the `Engine` trait, must agree. The engine has
//! a reconnect grace, on a paused clock: a peer whose last connection dropped stays in the model
//! with no connection until an `Expire` step lets every grace run out.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use herald_protocol::encode;
use herald_server::conn::{Conn, Outbound};
use herald_server::engine::memory::MemoryEngine;
use herald_server::engine::{Departure, Engine, SubscribeRequest, Target};
use herald_server::ids::{AppId, ChannelName, PeerId};
use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::Value;

const PEERS: u8 = 3;
const SLOTS: u8 = 3;
const CHANNELS: u8 = 3;
const GRACE: Duration = Duration::from_millis(1000);

#[derive(Debug, Clone, Copy)]
enum Op {
    Subscribe {
        peer: u8,
        slot: u8,
        channel: u8,
    },
    Unsubscribe {
        peer: u8,
        slot: u8,
        channel: u8,
    },
    Disconnect {
        peer: u8,
        slot: u8,
        how: Departure,
    },
    /// The clock moves past every grace running: held peers leave.
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    let at = (0..PEERS, 0..SLOTS, 0..CHANNELS);
    let how = prop_oneof![
        Just(Departure::Left),
        Just(Departure::Dropped),
        Just(Departure::Shutdown)
    ];
    prop_oneof![
        5 => at.clone().prop_map(|(peer, slot, channel)| Op::Subscribe { peer, slot, channel }),
        2 => at.prop_map(|(peer, slot, channel)| Op::Unsubscribe { peer, slot, channel }),
        1 => (0..PEERS, 0..SLOTS, how).prop_map(|(peer, slot, how)| Op::Disconnect { peer, slot, how }),
        1 => Just(Op::Expire),
    ]
}

/// A frame as the model predicts it; presence entries are (peer, metadata JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Ack,
    Presence {
        channel: String,
        joined: BTreeSet<(String, String)>,
        left: BTreeSet<(String, String)>,
    },
}

fn entries(v: &Value) -> BTreeSet<(String, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["peerId"].as_str().unwrap().to_string(),
                e["metadata"].to_string(),
            )
        })
        .collect()
}

fn decode(frame: &str) -> Seen {
    let v: Value = serde_json::from_str(frame).unwrap();
    match v["type"].as_str() {
        Some("ack") => Seen::Ack,
        Some("presence") => Seen::Presence {
            channel: v["channel"].as_str().unwrap().to_string(),
            joined: entries(&v["joined"]),
            left: entries(&v["left"]),
        },
        _ => panic!("unexpected frame {frame}"),
    }
}

fn peer_name(peer: u8) -> String {
    format!("peer-{peer}")
}

fn channel_name(channel: u8) -> String {
    format!("room/{channel}")
}

fn receives_presence(presence: &[bool], peer: u8, slot: u8) -> bool {
    presence[usize::from(peer * SLOTS + slot)]
}

/// One live connection of the test.
struct Live {
    conn: Arc<Conn>,
    rx: Outbound,
    /// `{"conn":N}`, unique per connection, so the model can tell whose metadata a roster holds.
    metadata: String,
    channels: BTreeSet<u8>,
}

/// Per channel: peer → (its subscribed connection slots, metadata of its latest subscriber).
/// A peer with no slot is held through its reconnect grace.
type Roster = BTreeMap<u8, (BTreeSet<u8>, String)>;

struct World {
    engine: MemoryEngine,
    app: AppId,
    live: BTreeMap<(u8, u8), Live>,
    rosters: Vec<Roster>,
    /// Which (peer, slot) connections have the `presence` action.
    presence: Vec<bool>,
    next_conn: u64,
}

impl World {
    fn receives_presence(&self, peer: u8, slot: u8) -> bool {
        receives_presence(&self.presence, peer, slot)
    }

    async fn connect(&mut self, peer: u8, slot: u8) {
        if self.live.contains_key(&(peer, slot)) {
            return;
        }
        self.next_conn += 1;
        let metadata = format!(r#"{{"conn":{}}}"#, self.next_conn);
        let (conn, rx) = Conn::new(
            self.app.clone(),
            PeerId::new(peer_name(peer)),
            Some(Arc::from(RawValue::from_string(metadata.clone()).unwrap())),
            self.receives_presence(peer, slot),
            "token",
            1024,
        );
        self.engine.register(&conn).await.unwrap();
        let live = Live {
            conn,
            rx,
            metadata,
            channels: BTreeSet::new(),
        };
        self.live.insert((peer, slot), live);
    }

    /// The frames each live connection should receive when `peer` leaves `channel`.
    fn expect_leave(
        &mut self,
        peer: u8,
        slot: u8,
        channel: u8,
        how: Departure,
        expected: &mut BTreeMap<(u8, u8), Vec<Seen>>,
    ) {
        let roster = &mut self.rosters[usize::from(channel)];
        let Some((slots, _)) = roster.get_mut(&peer) else {
            return;
        };
        slots.remove(&slot);
        if !slots.is_empty() || how == Departure::Dropped {
            // Still subscribed elsewhere, or held for the grace.
            return;
        }
        let Some((_, metadata)) = roster.remove(&peer) else {
            return;
        };
        // The memory engine announces nothing while its node shuts down.
        if how != Departure::Shutdown {
            self.announce_left(peer, channel, metadata, expected);
        }
    }

    /// The `left` of `peer` (already out of the roster) to every connection that receives it.
    fn announce_left(
        &self,
        peer: u8,
        channel: u8,
        metadata: String,
        expected: &mut BTreeMap<(u8, u8), Vec<Seen>>,
    ) {
        let presence = &self.presence;
        let roster = &self.rosters[usize::from(channel)];
        let left = BTreeSet::from([(peer_name(peer), metadata)]);
        for (&other_peer, (slots, _)) in roster.iter() {
            for &other_slot in slots {
                if receives_presence(presence, other_peer, other_slot) {
                    expected
                        .entry((other_peer, other_slot))
                        .or_default()
                        .push(Seen::Presence {
                            channel: channel_name(channel),
                            joined: BTreeSet::new(),
                            left: left.clone(),
                        });
                }
            }
        }
    }

    /// Applies one step to the engine and the model; returns what each connection should see.
    async fn apply(&mut self, op: Op) -> BTreeMap<(u8, u8), Vec<Seen>> {
        let mut expected: BTreeMap<(u8, u8), Vec<Seen>> = BTreeMap::new();
        match op {
            Op::Subscribe {
                peer,
                slot,
                channel,
            } => {
                self.connect(peer, slot).await;
                let name = ChannelName::new(channel_name(channel));
                let live = &self.live[&(peer, slot)];
                let is_new = self
                    .engine
                    .subscribe(SubscribeRequest {
                        conn: &live.conn,
                        channel: &name,
                        target: Target::Channel,
                        include_sender_metadata: false,
                        max_app_patterns: usize::MAX,
                        ack: Some(encode::ack("s").into()),
                    })
                    .await
                    .unwrap();
                let metadata = live.metadata.clone();
                let roster = &self.rosters[usize::from(channel)];
                let mine = expected.entry((peer, slot)).or_default();
                mine.push(Seen::Ack);
                if self.receives_presence(peer, slot) {
                    let others = roster
                        .iter()
                        .filter(|(p, _)| **p != peer)
                        .map(|(p, (_, m))| (peer_name(*p), m.clone()))
                        .collect();
                    mine.push(Seen::Presence {
                        channel: channel_name(channel),
                        joined: others,
                        left: BTreeSet::new(),
                    });
                }
                let already = roster.get(&peer).is_some_and(|(s, _)| s.contains(&slot));
                assert_eq!(is_new, !already, "subscribe reports whether it is new");
                if already {
                    return expected;
                }
                let first = !roster.contains_key(&peer);
                if first {
                    let joined = BTreeSet::from([(peer_name(peer), metadata.clone())]);
                    for (&other_peer, (slots, _)) in roster.iter() {
                        for &other_slot in slots {
                            if self.receives_presence(other_peer, other_slot) {
                                expected.entry((other_peer, other_slot)).or_default().push(
                                    Seen::Presence {
                                        channel: channel_name(channel),
                                        joined: joined.clone(),
                                        left: BTreeSet::new(),
                                    },
                                );
                            }
                        }
                    }
                }
                let entry = self.rosters[usize::from(channel)]
                    .entry(peer)
                    .or_insert_with(|| (BTreeSet::new(), String::new()));
                entry.0.insert(slot);
                // The roster shows the metadata of the peer's latest new subscription.
                entry.1 = metadata;
                if let Some(live) = self.live.get_mut(&(peer, slot)) {
                    live.channels.insert(channel);
                }
            }
            Op::Unsubscribe {
                peer,
                slot,
                channel,
            } => {
                let Some(live) = self.live.get_mut(&(peer, slot)) else {
                    return expected;
                };
                let was = live.channels.remove(&channel);
                let removed = self
                    .engine
                    .unsubscribe(&live.conn, &ChannelName::new(channel_name(channel)))
                    .await
                    .unwrap();
                assert_eq!(
                    removed, was,
                    "unsubscribe reports whether it was subscribed"
                );
                if was {
                    self.expect_leave(peer, slot, channel, Departure::Left, &mut expected);
                }
            }
            Op::Disconnect { peer, slot, how } => {
                let Some(live) = self.live.remove(&(peer, slot)) else {
                    return expected;
                };
                let channels: Vec<u8> = live.channels.iter().copied().collect();
                let names = channels
                    .iter()
                    .map(|c| ChannelName::new(channel_name(*c)))
                    .collect();
                self.engine.disconnect(&live.conn, names, how).await;
                for channel in channels {
                    self.expect_leave(peer, slot, channel, how, &mut expected);
                }
            }
            Op::Expire => {
                // On the paused clock this returns after every grace timer due has run.
                tokio::time::sleep(GRACE * 2).await;
                for channel in 0..CHANNELS {
                    let held: Vec<u8> = self.rosters[usize::from(channel)]
                        .iter()
                        .filter(|(_, (slots, _))| slots.is_empty())
                        .map(|(p, _)| *p)
                        .collect();
                    for peer in held {
                        if let Some((_, metadata)) =
                            self.rosters[usize::from(channel)].remove(&peer)
                        {
                            self.announce_left(peer, channel, metadata, &mut expected);
                        }
                    }
                }
            }
        }
        expected
    }

    /// Drains every live connection and compares with the prediction.
    fn check(&mut self, step: usize, op: Op, mut expected: BTreeMap<(u8, u8), Vec<Seen>>) {
        for (at, live) in self.live.iter_mut() {
            let mut got = Vec::new();
            while let Some(frame) = live.rx.try_recv() {
                got.push(decode(frame.as_str()));
            }
            let mut want = expected.remove(at).unwrap_or_default();
            if matches!(op, Op::Expire) {
                // Graces that run out at the same instant leave in no promised order.
                let key = |s: &Seen| format!("{s:?}");
                got.sort_by_key(key);
                want.sort_by_key(key);
            }
            assert_eq!(got, want, "step {step} ({op:?}): connection {at:?}");
        }
    }

    async fn check_rosters(&self) {
        for channel in 0..CHANNELS {
            let members = self
                .engine
                .channel_members(&self.app, &ChannelName::new(channel_name(channel)))
                .await
                .unwrap();
            let got: BTreeSet<(String, String)> = members
                .iter()
                .map(|m| {
                    let meta = m.metadata.as_ref().map_or("null", |r| r.get()).to_string();
                    (m.peer_id.as_str().to_string(), meta)
                })
                .collect();
            let want: BTreeSet<(String, String)> = self.rosters[usize::from(channel)]
                .iter()
                .map(|(p, (_, m))| (peer_name(*p), m.clone()))
                .collect();
            assert_eq!(got, want, "roster of {}", channel_name(channel));
        }
    }
}

async fn run(ops: Vec<Op>, presence: Vec<bool>) {
    let mut world = World {
        engine: MemoryEngine::with_grace(GRACE),
        app: AppId::new("app"),
        live: BTreeMap::new(),
        rosters: vec![Roster::new(); usize::from(CHANNELS)],
        presence,
        next_conn: 0,
    };
    for (step, op) in ops.into_iter().enumerate() {
        let expected = world.apply(op).await;
        world.check(step, op, expected);
    }
    world.check_rosters().await;
    // Everyone leaves: every roster empties and the engine forgets every channel.
    let everyone: Vec<(u8, u8)> = world.live.keys().copied().collect();
    for (i, (peer, slot)) in everyone.into_iter().enumerate() {
        let op = Op::Disconnect {
            peer,
            slot,
            how: Departure::Left,
        };
        let expected = world.apply(op).await;
        world.check(usize::MAX - i, op, expected);
    }
    // Every hold of a drop runs out.
    let expected = world.apply(Op::Expire).await;
    world.check(usize::MAX, Op::Expire, expected);
    world.check_rosters().await;
    let stats = world.engine.stats();
    assert_eq!((stats.channels, stats.subscriptions), (0, 0));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn presence_deltas_and_rosters_follow_the_reference_model(
        ops in prop::collection::vec(op(), 1..80),
        presence in prop::collection::vec(prop::bool::weighted(0.8), usize::from(PEERS * SLOTS)),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(run(ops, presence));
    }
}
