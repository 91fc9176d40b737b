//! The reconnect grace on a paused clock, through the `Engine` trait. A paused clock only
//! moves when every task waits, and then straight to the next timer, so a `sleep` in a test
//! returns only after every grace timer due before it has run: "nothing arrived" is decided,
//! and the instant a `left` arrives is exact.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::MemoryEngine;
use crate::conn::{Conn, Outbound};
use crate::engine::{Departure, Engine, SubscribeRequest, Target};
use crate::ids::{AppId, ChannelName, PeerId};

const GRACE: Duration = Duration::from_millis(500);
const MS: Duration = Duration::from_millis(1);
const ROOM: &str = "room";

struct Client {
    conn: Arc<Conn>,
    rx: Outbound,
    /// The peers of its subscribe snapshot, sorted.
    snapshot: Vec<String>,
}

impl Client {
    async fn join(engine: &MemoryEngine, peer: &str, metadata: Option<&str>) -> Client {
        let (conn, rx) = Conn::new(
            AppId::new("app"),
            PeerId::new(peer),
            metadata.map(|m| Arc::from(RawValue::from_string(m.to_string()).unwrap())),
            true,
            "token",
            64,
        );
        engine.register(&conn).await.unwrap();
        let room = ChannelName::new(ROOM);
        let req = SubscribeRequest {
            conn: &conn,
            channel: &room,
            target: Target::Channel,
            include_sender_metadata: false,
            ack: None,
            max_app_patterns: usize::MAX,
        };
        assert!(engine.subscribe(req).await.unwrap());
        let mut client = Client {
            conn,
            rx,
            snapshot: Vec::new(),
        };
        let snapshot = client.next();
        let mut peers: Vec<String> = snapshot["joined"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["peerId"].as_str().unwrap().to_string())
            .collect();
        peers.sort();
        client.snapshot = peers;
        client
    }

    async fn end(&self, engine: &MemoryEngine, departure: Departure) {
        engine
            .disconnect(&self.conn, vec![ChannelName::new(ROOM)], departure)
            .await;
    }

    fn next(&mut self) -> Value {
        let frame = self.rx.try_recv().expect("a frame is queued");
        serde_json::from_str(frame.as_str()).unwrap()
    }

    fn nothing_queued(&mut self) {
        if let Some(frame) = self.rx.try_recv() {
            panic!("unexpected {}", frame.as_str());
        }
    }
}

fn left(peer: &str) -> Value {
    json!({"type": "presence", "channel": ROOM, "joined": [], "left": [{"peerId": peer}]})
}

fn joined(peer: &str) -> Value {
    json!({"type": "presence", "channel": ROOM, "joined": [{"peerId": peer}], "left": []})
}

async fn members(engine: &MemoryEngine) -> Vec<String> {
    let list = engine
        .channel_members(&AppId::new("app"), &ChannelName::new(ROOM))
        .await
        .unwrap();
    let mut peers: Vec<String> = list
        .iter()
        .map(|m| m.peer_id.as_str().to_string())
        .collect();
    peers.sort();
    peers
}

/// `a` watching, `b` present; `a` has read `b`'s joined.
async fn two_present(engine: &MemoryEngine) -> (Client, Client) {
    let mut a = Client::join(engine, "a", None).await;
    let b = Client::join(engine, "b", None).await;
    assert_eq!(a.next(), joined("b"));
    (a, b)
}

#[tokio::test(start_paused = true)]
async fn a_drop_is_announced_exactly_when_the_grace_runs_out() {
    let engine = MemoryEngine::with_grace(GRACE);
    let (mut a, b) = two_present(&engine).await;
    let dropped_at = Instant::now();
    b.end(&engine, Departure::Dropped).await;

    tokio::time::sleep(GRACE - MS).await;
    a.nothing_queued();
    assert_eq!(members(&engine).await, ["a", "b"], "held during the grace");
    // A newcomer's snapshot shows the held peer too.
    let mut c = Client::join(&engine, "c", None).await;
    assert_eq!(c.snapshot, ["a", "b"]);
    assert_eq!(a.next(), joined("c"));

    let frame = tokio::time::timeout(GRACE, a.rx.recv()).await.unwrap();
    assert_eq!(
        dropped_at.elapsed(),
        GRACE,
        "not a millisecond early or late"
    );
    assert_eq!(
        serde_json::from_str::<Value>(frame.unwrap().as_str()).unwrap(),
        left("b")
    );
    assert_eq!(c.next(), left("b"));
    assert_eq!(members(&engine).await, ["a", "c"]);
}

#[tokio::test(start_paused = true)]
async fn a_reconnect_within_the_grace_announces_nothing_and_refreshes_the_metadata() {
    let engine = MemoryEngine::with_grace(GRACE);
    let (mut a, b) = two_present(&engine).await;
    b.end(&engine, Departure::Dropped).await;
    tokio::time::sleep(GRACE - MS).await;
    let back = Client::join(&engine, "b", Some(r#"{"v":2}"#)).await;
    assert_eq!(back.snapshot, ["a"]);
    // Well past the first drop's deadline: its timer has run, and found b back.
    tokio::time::sleep(GRACE * 4).await;
    a.nothing_queued();
    let list = engine
        .channel_members(&AppId::new("app"), &ChannelName::new(ROOM))
        .await
        .unwrap();
    let b = list.iter().find(|m| m.peer_id.as_str() == "b").unwrap();
    assert_eq!(b.metadata.as_ref().unwrap().get(), r#"{"v":2}"#);
}

#[tokio::test(start_paused = true)]
async fn a_late_timer_does_not_end_the_hold_of_a_later_drop() {
    let engine = MemoryEngine::with_grace(GRACE);
    let (mut a, b) = two_present(&engine).await;
    let first_drop = Instant::now();
    b.end(&engine, Departure::Dropped).await;
    tokio::time::sleep(GRACE / 2).await;
    let back = Client::join(&engine, "b", None).await;
    tokio::time::sleep(GRACE / 4).await;
    let second_drop = Instant::now();
    back.end(&engine, Departure::Dropped).await;

    // The first drop's timer fires at first_drop + GRACE, inside the second hold.
    tokio::time::sleep_until(first_drop + GRACE + MS).await;
    a.nothing_queued();
    assert_eq!(members(&engine).await, ["a", "b"]);

    let frame = tokio::time::timeout(GRACE, a.rx.recv()).await.unwrap();
    assert_eq!(second_drop.elapsed(), GRACE);
    assert_eq!(
        serde_json::from_str::<Value>(frame.unwrap().as_str()).unwrap(),
        left("b")
    );
    // And the stale generation can no longer end anything.
    let key = (AppId::new("app"), ChannelName::new(ROOM));
    assert!(!engine.rosters().grace_expired(&key, &PeerId::new("b"), 0));
}

#[tokio::test(start_paused = true)]
async fn a_deliberate_leave_and_an_unsubscribe_are_announced_at_once() {
    let engine = MemoryEngine::with_grace(GRACE);
    let (mut a, b) = two_present(&engine).await;
    b.end(&engine, Departure::Left).await;
    assert_eq!(a.next(), left("b"), "queued before disconnect returned");

    let c = Client::join(&engine, "c", None).await;
    assert_eq!(a.next(), joined("c"));
    assert!(engine
        .unsubscribe(&c.conn, &ChannelName::new(ROOM))
        .await
        .unwrap());
    assert_eq!(a.next(), left("c"));
    assert_eq!(members(&engine).await, ["a"]);
}

#[tokio::test(start_paused = true)]
async fn another_connection_of_the_peer_keeps_it_present_without_a_timer() {
    let engine = MemoryEngine::with_grace(GRACE);
    let (mut a, b1) = two_present(&engine).await;
    let b2 = Client::join(&engine, "b", None).await;
    b1.end(&engine, Departure::Dropped).await;
    tokio::time::sleep(GRACE * 2).await;
    a.nothing_queued();
    // The last one leaving deliberately is announced at once, grace or not.
    b2.end(&engine, Departure::Left).await;
    assert_eq!(a.next(), left("b"));
}

#[tokio::test(start_paused = true)]
async fn without_grace_a_drop_is_announced_at_once_and_a_shutdown_never() {
    let engine = MemoryEngine::new();
    let (mut a, b) = two_present(&engine).await;
    b.end(&engine, Departure::Dropped).await;
    assert_eq!(a.next(), left("b"));

    let engine = MemoryEngine::with_grace(GRACE);
    let (mut a, b) = two_present(&engine).await;
    b.end(&engine, Departure::Shutdown).await;
    tokio::time::sleep(GRACE * 2).await;
    a.nothing_queued();
    assert_eq!(members(&engine).await, ["a"], "forgotten with the node");
}

#[tokio::test(start_paused = true)]
async fn a_channel_held_by_a_dropped_peer_alone_is_forgotten_after_the_grace() {
    let engine = MemoryEngine::with_grace(GRACE);
    let b = Client::join(&engine, "b", None).await;
    b.end(&engine, Departure::Dropped).await;
    assert_eq!(members(&engine).await, ["b"]);
    assert_eq!(engine.stats().subscriptions, 0);
    // Past the deadline (a timer due at the same instant as this sleep may run after it).
    tokio::time::sleep(GRACE + MS).await;
    assert!(members(&engine).await.is_empty());
    let key = (AppId::new("app"), ChannelName::new(ROOM));
    assert!(engine.rosters().hub.channels.with(&key, |_| ()).is_none());
}

/// Coalescing and occupancy mode together: deltas still waiting when the room goes over its
/// cap are sent first, so the count frame finds every watcher holding the roster it assumes.
#[tokio::test(start_paused = true)]
async fn waiting_deltas_leave_before_the_room_turns_to_counts() {
    let presence: crate::config::PresenceConfig = toml::from_str(
        r#"
        [[channels]]
        patterns = ["room"]
        max_roster = 12
        "#,
    )
    .unwrap();
    let engine = MemoryEngine::with_settings(super::MemorySettings {
        coalesce: Duration::from_millis(50),
        rules: crate::engine::hub::occupancy::OccupancyRules::new(&presence),
        ..super::MemorySettings::default()
    });
    let mut watcher = Client::join(&engine, "w", None).await;
    // The window's immediate allowance goes at once, the next joins wait.
    let mut joiners = Vec::new();
    // The watcher and 11 joiners: 12 members, at the cap.
    for i in 0..11 {
        joiners.push(Client::join(&engine, &format!("p{i}"), None).await);
    }
    let mut told = 0;
    while let Some(frame) = watcher.rx.try_recv() {
        let v: Value = serde_json::from_str(frame.as_str()).unwrap();
        told += v["joined"].as_array().unwrap().len();
    }
    assert!(told < 11, "some joins wait for the window");
    // This join takes the room to 13 > 12: the waiting joins leave first, then the count.
    let _over = Client::join(&engine, "over", None).await;
    let mut frames = Vec::new();
    while let Some(frame) = watcher.rx.try_recv() {
        frames.push(serde_json::from_str::<Value>(frame.as_str()).unwrap());
    }
    let (count, deltas) = frames.split_last().unwrap();
    let flushed: usize = deltas
        .iter()
        .map(|v| v["joined"].as_array().unwrap().len())
        .sum();
    assert_eq!(
        told + flushed,
        11,
        "every join before the cap was told: {frames:?}"
    );
    assert_eq!(count["occupancy"], json!({"peers": 13}));
    assert_eq!(count["joined"], json!([]));
    drop(joiners);
}
