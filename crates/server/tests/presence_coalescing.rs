//! Presence coalescing (memory engine) against the truth: random joins and leaves of many
//! peers in one room, fast enough that deltas are coalesced, on a paused clock. Whatever the
//! frames, every watcher's view (its snapshot plus every delta after it) must end equal to the
//! true roster without itself; no frame names a peer twice; no watcher is told of a join it
//! already knew or a leave of a peer it never knew.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use herald_protocol::encode;
use herald_server::conn::{Conn, Outbound};
use herald_server::engine::memory::MemoryEngine;
use herald_server::engine::{Departure, Engine, SubscribeRequest, Target};
use herald_server::ids::{AppId, ChannelName, PeerId};
use herald_testkit::prelude::PresenceView;
use proptest::prelude::*;

const PEERS: u8 = 24;
const WINDOW: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy)]
enum Op {
    /// Connection `slot` of `peer` subscribes (opening it if needed).
    Join { peer: u8, slot: u8 },
    /// That connection goes away.
    Leave { peer: u8, slot: u8 },
    /// Time passes on the paused clock.
    Wait { ms: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..PEERS, 0..2u8).prop_map(|(peer, slot)| Op::Join { peer, slot }),
        4 => (0..PEERS, 0..2u8).prop_map(|(peer, slot)| Op::Leave { peer, slot }),
        1 => (0..80u8).prop_map(|ms| Op::Wait { ms }),
    ]
}

struct Watcher {
    conn: Arc<Conn>,
    rx: Outbound,
    /// What this connection has been told: its snapshot plus deltas since.
    view: PresenceView,
}

impl Watcher {
    /// Applies every frame queued so far to the view, checking each one makes sense.
    fn absorb(&mut self) {
        while let Some(frame) = self.rx.try_recv() {
            self.view.absorb(frame.as_str(), self.conn.peer_id.as_str());
        }
    }
}

async fn run(ops: Vec<Op>) {
    let engine = MemoryEngine::with_presence_coalescing(WINDOW);
    let app = AppId::new("app");
    let room = ChannelName::new("room");
    let mut live: BTreeMap<(u8, u8), Watcher> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Join { peer, slot } => {
                if live.contains_key(&(peer, slot)) {
                    continue;
                }
                let (conn, rx) = Conn::new(
                    app.clone(),
                    PeerId::new(format!("p{peer}")),
                    None,
                    true,
                    "token",
                    4096,
                );
                engine.register(&conn).await.unwrap();
                engine
                    .subscribe(SubscribeRequest {
                        conn: &conn,
                        channel: &room,
                        target: Target::Channel,
                        include_sender_metadata: false,
                        max_app_patterns: usize::MAX,
                        ack: Some(encode::ack("s").into()),
                    })
                    .await
                    .unwrap();
                live.insert(
                    (peer, slot),
                    Watcher {
                        conn,
                        rx,
                        view: PresenceView::default(),
                    },
                );
            }
            Op::Leave { peer, slot } => {
                if let Some(w) = live.remove(&(peer, slot)) {
                    engine
                        .disconnect(&w.conn, vec![room.clone()], Departure::Left)
                        .await;
                }
            }
            Op::Wait { ms } => tokio::time::sleep(Duration::from_millis(u64::from(ms))).await,
        }
        for w in live.values_mut() {
            w.absorb();
        }
    }
    // Let every waiting flush run.
    tokio::time::sleep(WINDOW * 2).await;
    let truth: BTreeSet<String> = live.keys().map(|(p, _)| format!("p{p}")).collect();
    for w in live.values_mut() {
        w.absorb();
        w.view.assert_equals(&truth, w.conn.peer_id.as_str());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn every_watcher_converges_to_the_true_roster(ops in prop::collection::vec(op(), 1..200)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(run(ops));
    }
}

/// The proptest, but with a storm the window must coalesce: 40 joins at once, then 20 leaves.
#[tokio::test(start_paused = true)]
async fn a_storm_is_coalesced_and_still_exact() {
    let mut ops: Vec<Op> = (0..PEERS).map(|peer| Op::Join { peer, slot: 0 }).collect();
    ops.extend((0..PEERS).map(|peer| Op::Join { peer, slot: 1 }));
    ops.extend((0..PEERS / 2).map(|peer| Op::Leave { peer, slot: 0 }));
    ops.extend((0..PEERS / 2).map(|peer| Op::Leave { peer, slot: 1 }));
    run(ops).await;
}
