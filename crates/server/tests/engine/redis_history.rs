//! History on the Redis engine with several nodes: a message published on one node is in the
//! rewind and the history read on another, also after the publisher's node crashed; the seam
//! holds with publishers on other nodes; a message pub/sub lost on the way is fetched back
//! from the stream; trimming by count and age; and Redis data loss starts a new epoch.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use herald_server::config::{HistoryChannels, HistoryConfig};
use herald_server::engine::Engine;
use herald_server::history::{Page, PageQuery};
use herald_server::ids::AppId;
use serde_json::{json, Value};

use crate::harness::{ack, channel, connect, presence, Client, ClientSpec, Nodes, APP};

const ROOM: &str = "room/1";

/// `room/*` keeps `max_messages` for `max_age_secs` and rewinds `rewind`.
pub fn rooms(rewind: usize, max_messages: usize, max_age_secs: u64) -> HistoryConfig {
    HistoryConfig {
        channels: vec![HistoryChannels {
            patterns: vec!["room/*".into()],
            max_messages,
            max_age_secs,
            rewind,
        }],
        ..HistoryConfig::default()
    }
}

fn newest(limit: usize) -> PageQuery {
    PageQuery {
        limit,
        before: None,
        after: None,
    }
}

async fn page(engine: &Arc<dyn Engine>, query: &PageQuery) -> Page {
    engine
        .history(&AppId::new(APP), &channel(ROOM), query)
        .await
        .unwrap()
        .unwrap()
}

fn offsets(page: &Page) -> Vec<u64> {
    page.retained.messages.iter().map(|m| m.offset).collect()
}

/// The next frame: a message with this data; returns (offset, epoch), checking the id.
async fn expect_at(client: &mut Client, data: Value) -> (u64, String) {
    let frame = client.next().await;
    assert_eq!(
        (&frame["type"], &frame["channel"], &frame["data"]),
        (&json!("message"), &json!(ROOM), &data),
        "{}: {frame}",
        client.peer()
    );
    let offset = frame["offset"].as_u64().unwrap();
    let epoch = frame["epoch"].as_str().unwrap().to_string();
    assert_eq!(frame["id"], json!(format!("{epoch}-{offset}")));
    assert!(frame["ts"].as_i64().unwrap() > 1_700_000_000_000);
    (offset, epoch)
}

/// Three nodes: 30 published on node 0 (rewind 20) are rewound and listed on node 2 with the
/// same positions; after node 0 crashes, a new subscriber on node 2 still gets them.
pub async fn publish_on_one_node_rewind_and_read_on_another(mut nodes: Nodes) {
    let (a, c) = (nodes.node(0), nodes.node(2));
    let alice = ClientSpec::new("alice")
        .metadata(r#"{"name":"A"}"#)
        .connect(&a)
        .await;
    for n in 1..=30 {
        alice
            .publish(
                ROOM,
                &json!({ "n": n }).to_string(),
                Some(r#"{"name":"A"}"#),
            )
            .await;
    }
    let mut bob = connect(&c, "bob").await;
    assert!(bob.subscribe_with(ROOM, true).await.unwrap());
    bob.expect(ack()).await;
    bob.expect(presence(ROOM, json!([]), json!([]))).await;
    let mut epoch = None;
    for n in 11..=30 {
        let frame = bob.next().await;
        assert_eq!(frame["fromMetadata"], json!({"name": "A"}), "{frame}");
        assert_eq!(frame["from"], json!("alice"));
        assert_eq!(
            (frame["offset"].as_u64(), &frame["data"]),
            (Some(n), &json!({ "n": n }))
        );
        epoch.get_or_insert_with(|| frame["epoch"].clone());
        assert_eq!(Some(&frame["epoch"]), epoch.as_ref());
    }
    let listed = page(&c, &newest(100)).await;
    assert_eq!(offsets(&listed), (1..=30).collect::<Vec<_>>());
    assert_eq!(
        listed.retained.epoch.as_deref().map(|e| json!(e)),
        epoch.clone()
    );
    let first = &listed.retained.messages[0];
    assert_eq!(
        (
            first.from.as_str(),
            first.data.get(),
            first.from_metadata.as_ref().map(|m| m.get())
        ),
        ("alice", r#"{"n":1}"#, Some(r#"{"name":"A"}"#))
    );
    alice.publish(ROOM, r#"{"n":31}"#, None).await;
    assert_eq!(expect_at(&mut bob, json!({"n": 31})).await.0, 31);

    // Node 0 crashes; what it published stays.
    drop((alice, a, c));
    nodes.crash(0);
    let c = nodes.node(1);
    let mut carol = ClientSpec::new("carol")
        .without_presence()
        .connect(&c)
        .await;
    assert!(carol.subscribe(ROOM).await);
    carol.expect(ack()).await;
    for n in 12..=31 {
        let (offset, e) = expect_at(&mut carol, json!({ "n": n })).await;
        assert_eq!((offset, Some(json!(e))), (n, epoch.clone()));
    }
    let listed = page(&c, &newest(1000)).await;
    assert_eq!(offsets(&listed), (1..=31).collect::<Vec<_>>());
    carol.expect_nothing_queued();
}

/// Publishers on nodes 0 and 1 run while clients subscribe on node 2: each subscriber's
/// messages, rewind then live, have consecutive offsets up to the last one published.
pub async fn the_seam_holds_with_publishers_on_other_nodes(nodes: Nodes) {
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 100;
    let started = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let engine = nodes.node(p as usize % 2);
        let started = started.clone();
        tasks.push(tokio::spawn(async move {
            let publisher = connect(&engine, &format!("pub{p}")).await;
            for i in 1..=EACH {
                publisher
                    .publish(ROOM, &format!("{{\"p\":{p},\"i\":{i}}}"), None)
                    .await;
                if p == 0 && i == 10 {
                    started.notify_one();
                }
            }
        }));
    }
    started.notified().await;
    let c = nodes.node(2);
    let mut subscribers = Vec::new();
    for s in 0..8 {
        let mut client = ClientSpec::new(&format!("sub{s}"))
            .without_presence()
            .connect(&c)
            .await;
        assert!(client.subscribe(ROOM).await);
        subscribers.push(client);
        tokio::time::sleep(Duration::from_millis(3)).await;
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
            match expected {
                Some(want) => assert_eq!(
                    offset,
                    want,
                    "{}: gap or duplicate at {frame}",
                    client.peer()
                ),
                // A rewind of 20 that starts before the last 20 means live messages followed
                // it: this subscriber joined while publishers ran.
                None if offset + 20 <= total => joined_midway += 1,
                None => {}
            }
            assert!(seen.insert(frame["data"].to_string()), "{frame}");
            expected = Some(offset + 1);
            if offset == total {
                break;
            }
        }
        client.expect_nothing_queued();
    }
    assert!(joined_midway > 0, "nobody subscribed while publishers ran");
    for i in 0..nodes.len() {
        let stats = nodes.node(i).stats().bus_queue;
        assert_eq!(
            (stats.history_repaired, stats.history_lost),
            (0, 0),
            "node {i}"
        );
    }
}

/// Base key of `ROOM` with the default key prefix.
const BASE: &str = "herald:{c:app_one:room/1}";

/// A message pub/sub lost on its way to node 1 is fetched from the stream before the next one
/// is delivered; one the stream no longer holds is counted and skipped.
pub async fn a_message_lost_on_the_bus_is_repaired_from_history(nodes: Nodes) {
    let (a, b) = (nodes.node(0), nodes.node(1));
    let alice = connect(&a, "alice").await;
    let mut bob = ClientSpec::new("bob").without_presence().connect(&b).await;
    assert!(bob.subscribe(ROOM).await);
    bob.expect(ack()).await;
    alice.publish(ROOM, "1", None).await;
    let (_, epoch) = expect_at(&mut bob, json!(1)).await;

    // What the publish script does, without the publish: offset 2 is written, never sent.
    let offset: u64 = nodes
        .redis_command(
            redis::cmd("HINCRBY")
                .arg(format!("{BASE}:hpos"))
                .arg("offset")
                .arg(1),
        )
        .await;
    assert_eq!(offset, 2);
    let event = json!({"offset": 2, "epoch": epoch, "ts": 1_800_000_000_000_i64, "kind": "message", "from": "ghost", "data": "2"});
    let _: String = nodes
        .redis_command(
            redis::cmd("XADD")
                .arg(format!("{BASE}:hist"))
                .arg("2-0")
                .arg("t")
                .arg(i64::MAX / 2)
                .arg("e")
                .arg(event.to_string()),
        )
        .await;
    alice.publish(ROOM, "3", None).await;
    let frame = bob.next().await;
    assert_eq!(
        (&frame["from"], &frame["data"], frame["offset"].as_u64()),
        (&json!("ghost"), &json!("2"), Some(2)),
        "{frame}"
    );
    assert_eq!(expect_at(&mut bob, json!(3)).await.0, 3);
    let stats = b.stats().bus_queue;
    assert_eq!((stats.history_repaired, stats.history_lost), (1, 0));

    // Offset 4 is taken and never stored: nothing to fetch.
    let _: u64 = nodes
        .redis_command(
            redis::cmd("HINCRBY")
                .arg(format!("{BASE}:hpos"))
                .arg("offset")
                .arg(1),
        )
        .await;
    alice.publish(ROOM, "5", None).await;
    assert_eq!(expect_at(&mut bob, json!(5)).await.0, 5);
    let stats = b.stats().bus_queue;
    assert_eq!((stats.history_repaired, stats.history_lost), (1, 1));
    bob.expect_nothing_queued();
}

/// `max_messages` keeps the newest; `max_age_secs` drops what is older (Redis's clock, so a
/// real second passes), and a history that aged out entirely starts a new epoch.
pub async fn trimmed_by_count_and_by_age(nodes: Nodes) {
    let engine = nodes.engine();
    let alice = connect(&engine, "alice").await;
    for n in 1..=8 {
        alice.publish(ROOM, &n.to_string(), None).await;
    }
    let kept = page(&engine, &newest(100)).await;
    assert_eq!(offsets(&kept), vec![4, 5, 6, 7, 8]);
    let first_epoch = kept.retained.epoch.clone().unwrap();
    let len: u64 = nodes
        .redis_command(redis::cmd("XLEN").arg(format!("{BASE}:hist")))
        .await;
    assert_eq!(len, 5);
    // Paging agrees with the trim: nothing older than 4 remains.
    let older = page(
        &engine,
        &PageQuery {
            limit: 2,
            before: Some(6),
            after: None,
        },
    )
    .await;
    assert_eq!((offsets(&older), older.has_more), (vec![4, 5], false));

    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Everything is older than a second: reads show none, and the keys expired.
    assert!(page(&engine, &newest(100))
        .await
        .retained
        .messages
        .is_empty());
    alice.publish(ROOM, "9", None).await;
    let fresh = page(&engine, &newest(100)).await;
    assert_eq!(offsets(&fresh), vec![1]);
    assert_ne!(fresh.retained.epoch.unwrap(), first_epoch);

    // Age trimming on publish, while the history lives on: 2 old, then 1 new.
    alice.publish(ROOM, "10", None).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    alice.publish(ROOM, "11", None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    alice.publish(ROOM, "12", None).await;
    let kept = page(&engine, &newest(100)).await;
    assert_eq!(offsets(&kept), vec![3, 4]);
    let len: u64 = nodes
        .redis_command(redis::cmd("XLEN").arg(format!("{BASE}:hist")))
        .await;
    assert_eq!(len, 2, "expired entries are trimmed from the stream");
}

/// Redis restarts empty: the channel's history is gone, and the next message starts a new
/// epoch at offset 1, on every node.
pub async fn data_loss_starts_a_new_epoch(mut nodes: Nodes) {
    let (a, b) = (nodes.node(0), nodes.node(1));
    let alice = connect(&a, "alice").await;
    for n in 1..=3 {
        alice.publish(ROOM, &n.to_string(), None).await;
    }
    // A subscriber from before the loss stays subscribed through it.
    let mut carol = ClientSpec::new("carol")
        .without_presence()
        .connect(&b)
        .await;
    assert!(carol.subscribe(ROOM).await);
    carol.expect(ack()).await;
    for n in 1..=3 {
        let (offset, _) = expect_at(&mut carol, json!(n)).await;
        assert_eq!(offset, n);
    }
    let before = page(&b, &newest(10)).await;
    assert_eq!(offsets(&before), vec![1, 2, 3]);
    let old_epoch = before.retained.epoch.unwrap();
    nodes.restart_redis();
    // Waits (bounded) until node 1 reaches the new Redis, which has nothing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let empty = loop {
        let read = b
            .history(&AppId::new(APP), &channel(ROOM), &newest(10))
            .await;
        if let Ok(page) = read {
            break page.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(empty.retained.epoch.is_none() && empty.retained.messages.is_empty());
    let mut bob = ClientSpec::new("bob").without_presence().connect(&b).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bob.subscribe_with(ROOM, false).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 1 never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bob.expect(ack()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a
        .history(&AppId::new(APP), &channel(ROOM), &newest(1))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 0 never reached redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    alice.publish(ROOM, "4", None).await;
    let (offset, epoch) = expect_at(&mut bob, json!(4)).await;
    assert_eq!(offset, 1);
    assert_ne!(epoch, *old_epoch);
    // The old epoch's cursor does not hold the new epoch's messages back.
    assert_eq!(expect_at(&mut carol, json!(4)).await, (1, epoch.clone()));
    let after = page(&a, &newest(10)).await;
    assert_eq!(offsets(&after), vec![1]);
    assert_eq!(after.retained.epoch.as_deref(), Some(epoch.as_str()));
}
