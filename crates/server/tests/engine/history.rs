//! Channel history on the memory engine: positions on messages, rewind on subscribe, and the
//! seam between rewind and live messages while others publish.

use std::collections::HashSet;
use std::sync::Arc;

use herald_server::close::CloseReason;
use herald_server::config::{HistoryChannels, HistoryConfig};
use herald_server::conn::Conn;
use herald_server::engine::{SubscribeRequest, Target};
use herald_server::history::PageQuery;
use herald_server::ids::{AppId, PeerId};
use serde_json::{json, Value};

use crate::harness::{ack, channel, connect, Client, ClientSpec, Nodes, APP};

const ROOM: &str = "room/1";

/// `room/*` keeps `max_messages` and rewinds `rewind`.
pub fn rooms(rewind: usize, max_messages: usize) -> HistoryConfig {
    HistoryConfig {
        channels: vec![HistoryChannels {
            patterns: vec!["room/*".into()],
            max_messages,
            max_age_secs: 3600,
            rewind,
        }],
        ..HistoryConfig::default()
    }
}

/// The next frame, which must be a `message` on `name` from `from` with `data`; returned whole.
async fn expect_message(client: &mut Client, name: &str, from: &str, data: Value) -> Value {
    let frame = client.next().await;
    assert_eq!(
        (
            &frame["type"],
            &frame["channel"],
            &frame["from"],
            &frame["data"]
        ),
        (&json!("message"), &json!(name), &json!(from), &data),
        "{}: {frame}",
        client.peer()
    );
    frame
}

/// Checks a message's position fields and returns its offset and epoch.
fn position(frame: &Value) -> (u64, String) {
    let offset = frame["offset"].as_u64().unwrap();
    let epoch = frame["epoch"].as_str().unwrap().to_string();
    assert_eq!(frame["id"], json!(format!("{epoch}-{offset}")), "{frame}");
    assert!(frame["ts"].as_i64().unwrap() > 1_700_000_000_000, "{frame}");
    (offset, epoch)
}

/// A subscriber after 30 messages to a rewind-20 channel gets ack, snapshot, the last 20
/// oldest first with their sender (and `fromMetadata` where asked), then live messages.
pub async fn rewind_sends_the_last_messages_then_live(nodes: Nodes) {
    let engine = nodes.engine();
    let alice = ClientSpec::new("alice")
        .metadata(r#"{"name":"Alice"}"#)
        .connect(&engine)
        .await;
    for n in 1..=30 {
        alice
            .publish(ROOM, &format!("{{\"n\":{n}}}"), Some(r#"{"name":"Alice"}"#))
            .await;
    }
    let mut bob = connect(&engine, "bob").await;
    assert!(bob.subscribe_with(ROOM, true).await.unwrap());
    let mut carol = connect(&engine, "carol").await;
    assert!(carol.subscribe(ROOM).await);
    bob.expect(ack()).await;
    bob.expect(crate::harness::presence(ROOM, json!([]), json!([])))
        .await;
    let mut epochs = HashSet::new();
    for n in 11..=30 {
        let frame = expect_message(&mut bob, ROOM, "alice", json!({ "n": n })).await;
        assert_eq!(frame["fromMetadata"], json!({"name": "Alice"}));
        let (offset, epoch) = position(&frame);
        assert_eq!(offset, n);
        epochs.insert(epoch);
    }
    // bob's joined, then live messages.
    bob.expect(crate::harness::joined(ROOM, json!([{"peerId": "carol"}])))
        .await;
    carol.expect(ack()).await;
    carol
        .expect(crate::harness::presence(
            ROOM,
            json!([{"peerId": "bob"}]),
            json!([]),
        ))
        .await;
    for n in 11..=30 {
        let frame = expect_message(&mut carol, ROOM, "alice", json!({ "n": n })).await;
        assert!(frame.get("fromMetadata").is_none(), "{frame}");
        assert_eq!(position(&frame).0, n);
    }
    alice.publish(ROOM, r#"{"n":31}"#, None).await;
    for client in [&mut bob, &mut carol] {
        let frame = expect_message(client, ROOM, "alice", json!({"n": 31})).await;
        let (offset, epoch) = position(&frame);
        assert_eq!(offset, 31);
        epochs.insert(epoch);
    }
    assert_eq!(epochs.len(), 1, "one epoch: {epochs:?}");

    // A repeated subscribe gets ack and snapshot again, and no rewind.
    assert!(!bob.subscribe_with(ROOM, true).await.unwrap());
    bob.expect(ack()).await;
    bob.expect(crate::harness::presence(
        ROOM,
        json!([{"peerId": "carol"}]),
        json!([]),
    ))
    .await;
    alice.publish(ROOM, r#"{"n":32}"#, None).await;
    let frame = expect_message(&mut bob, ROOM, "alice", json!({"n": 32})).await;
    assert_eq!(position(&frame).0, 32);
    bob.expect_nothing_queued();
}

/// Pattern subscriptions get no rewind (their live messages still carry positions); channels
/// outside every group keep nothing and their messages carry no position.
pub async fn wildcards_get_no_rewind_and_other_channels_keep_nothing(nodes: Nodes) {
    let engine = nodes.engine();
    let alice = connect(&engine, "alice").await;
    for n in 1..=5 {
        alice.publish(ROOM, &n.to_string(), None).await;
    }
    let mut watcher = ClientSpec::new("watcher")
        .without_presence()
        .connect(&engine)
        .await;
    assert!(watcher.subscribe_pattern("room/*", 100).await.unwrap());
    assert!(watcher.subscribe_with("lobby", false).await.unwrap());
    watcher.expect(ack()).await;
    watcher.expect(ack()).await;
    alice.publish(ROOM, "6", None).await;
    let frame = expect_message(&mut watcher, ROOM, "alice", json!(6)).await;
    assert_eq!(position(&frame).0, 6);
    alice.publish("lobby", "7", None).await;
    let frame = expect_message(&mut watcher, "lobby", "alice", json!(7)).await;
    assert_eq!(
        frame,
        json!({"type": "message", "channel": "lobby", "from": "alice", "data": 7})
    );
    let app = AppId::new(APP);
    let query = PageQuery {
        limit: 100,
        before: None,
        after: None,
    };
    assert!(engine
        .history(&app, &channel("lobby"), &query)
        .await
        .unwrap()
        .is_none());
    let page = engine
        .history(&app, &channel(ROOM), &query)
        .await
        .unwrap()
        .unwrap();
    let offsets: Vec<u64> = page.retained.messages.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, (1..=6).collect::<Vec<_>>());
    assert!(!page.has_more);
    watcher.expect_nothing_queued();
}

/// Rewind frames count against the connection's outbound bound like any other frame.
pub async fn rewind_counts_against_the_outbound_queue(nodes: Nodes) {
    let engine = nodes.engine();
    let alice = connect(&engine, "alice").await;
    for n in 1..=30 {
        alice.publish(ROOM, &n.to_string(), None).await;
    }
    let (conn, _rx) = Conn::new(AppId::new(APP), PeerId::new("tiny"), None, true, "token", 8);
    engine.register(&conn).await.unwrap();
    engine
        .subscribe(SubscribeRequest {
            conn: &conn,
            channel: &channel(ROOM),
            target: Target::Channel,
            include_sender_metadata: false,
            ack: None,
            max_app_patterns: 100,
        })
        .await
        .unwrap();
    assert_eq!(conn.close_requested(), Some(CloseReason::SLOW_CONSUMER));
}

/// Publishers run while subscribers join: each subscriber's messages, rewind then live, have
/// consecutive offsets up to the last one published: no gap and no duplicate at the seam.
pub async fn no_gap_and_no_duplicate_at_the_seam(nodes: Nodes) {
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 150;
    let engine = nodes.engine();
    let started = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let engine = engine.clone();
        let started = started.clone();
        tasks.push(tokio::spawn(async move {
            let publisher = connect(&engine, &format!("pub{p}")).await;
            for i in 1..=EACH {
                publisher
                    .publish(ROOM, &format!("{{\"p\":{p},\"i\":{i}}}"), None)
                    .await;
                if p == 0 && i == 20 {
                    started.notify_one();
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    started.notified().await;
    let mut subscribers = Vec::new();
    for s in 0..8 {
        let mut client = ClientSpec::new(&format!("sub{s}"))
            .without_presence()
            .connect(&engine)
            .await;
        assert!(client.subscribe(ROOM).await);
        subscribers.push(client);
        tokio::task::yield_now().await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total = PUBLISHERS * EACH;
    let mut joined_midway = 0;
    for client in &mut subscribers {
        client.expect(ack()).await;
        let mut expected = None;
        let mut seen = HashSet::new();
        loop {
            let frame = client.next().await;
            let offset = frame["offset"].as_u64().unwrap();
            if let Some(want) = expected {
                assert_eq!(
                    offset,
                    want,
                    "{}: gap or duplicate at {frame}",
                    client.peer()
                );
            } else if offset > 1 {
                joined_midway += 1;
            }
            assert!(seen.insert(frame["data"].to_string()), "{frame}");
            expected = Some(offset + 1);
            if offset == total {
                break;
            }
        }
        client.expect_nothing_queued();
    }
    // The scenario did exercise the seam: someone subscribed after messages were published.
    assert!(joined_midway > 0);
}
