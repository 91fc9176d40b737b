//! Two Redis nodes sharing one redis-server: presence, messages, directs and kicks cross.

use std::time::Duration;

use herald_server::close::CloseReason;
use herald_server::engine::Departure;
use herald_server::ids::{AppId, PeerId};
use serde_json::json;

use crate::harness::{
    ack, connect, direct, entry, joined, left, members_in, message, message_with_metadata, Barrier,
    ClientSpec, Nodes, APP,
};

const ROOM: &str = "room/1";

/// A peer on one node sees peers of the other join and leave, and both nodes agree on the
/// roster.
pub async fn presence_crosses_nodes(nodes: Nodes) {
    let (n0, n1) = (nodes.node(0), nodes.node(1));
    let mut a = connect(&n0, "a").await;
    a.subscribe(ROOM).await;
    a.expect_subscribed(ROOM, json!([])).await;
    let mut b = ClientSpec::new("b")
        .metadata(r#"{"n":"b"}"#)
        .connect(&n1)
        .await;
    b.subscribe(ROOM).await;
    b.expect_subscribed(ROOM, json!([entry("a")])).await;
    a.expect(joined(
        ROOM,
        json!([{"peerId": "b", "metadata": {"n": "b"}}]),
    ))
    .await;
    let both = json!([entry("a"), {"peerId": "b", "metadata": {"n": "b"}}]);
    assert_eq!(members_in(&n0, APP, ROOM).await, both);
    assert_eq!(members_in(&n1, APP, ROOM).await, both);

    b.disconnect(Departure::Left).await;
    a.expect(left(ROOM, json!([{"peerId": "b", "metadata": {"n": "b"}}])))
        .await;
    assert_eq!(members_in(&n1, APP, ROOM).await, json!([entry("a")]));
    Barrier::new(&n1).on_channel(ROOM, &mut [&mut a]).await;
}

/// A message published on one node reaches exact and wildcard subscribers on the other, and
/// the count covers subscribers on every node.
pub async fn messages_cross_nodes(nodes: Nodes) {
    let (n0, n1) = (nodes.node(0), nodes.node(1));
    let mut a = ClientSpec::new("a").without_presence().connect(&n0).await;
    a.subscribe(ROOM).await;
    a.expect(ack()).await;
    let mut b = ClientSpec::new("b").without_presence().connect(&n1).await;
    assert!(b.subscribe_with(ROOM, true).await.unwrap());
    b.expect(ack()).await;
    let mut w = ClientSpec::new("w").without_presence().connect(&n1).await;
    assert!(w.subscribe_pattern("room/*", usize::MAX).await.unwrap());
    w.expect(ack()).await;

    assert_eq!(a.publish(ROOM, "1", Some(r#"{"n":"a"}"#)).await, 1);
    b.expect(message_with_metadata(
        ROOM,
        "a",
        json!(1),
        json!({"n": "a"}),
    ))
    .await;
    w.expect(message(ROOM, "a", json!(1))).await;

    assert_eq!(b.publish(ROOM, "2", None).await, 1);
    a.expect(message(ROOM, "b", json!(2))).await;
    w.expect(message(ROOM, "b", json!(2))).await;
    Barrier::new(&n0)
        .on_channel(ROOM, &mut [&mut a, &mut b, &mut w])
        .await;
}

/// A direct reaches the peer's connections on both nodes (the sender's own excluded on a
/// self-send), and a kick from one node closes a connection on the other.
pub async fn directs_and_kicks_cross_nodes(nodes: Nodes) {
    let (n0, n1) = (nodes.node(0), nodes.node(1));
    let mut p0 = connect(&n0, "p").await;
    let mut p1 = connect(&n1, "p").await;
    let q = connect(&n1, "q").await;

    assert_eq!(q.send("p", r#""hi""#, None).await, 2);
    p0.expect(direct("q", json!("hi"))).await;
    p1.expect(direct("q", json!("hi"))).await;
    assert_eq!(p0.send("p", r#""me""#, None).await, 1);
    p1.expect(direct("p", json!("me"))).await;
    Barrier::new(&n0).direct("p", &mut [&mut p0, &mut p1]).await;

    let reason = CloseReason::ADMIN_DISCONNECT;
    let kicked = n0
        .close_peer(&AppId::new(APP), &PeerId::new("q"), reason)
        .await
        .unwrap();
    assert_eq!(kicked, 1);
    let closed = tokio::time::timeout(Duration::from_secs(5), q.conn.closed()).await;
    assert_eq!(closed.ok(), Some(reason));
}

/// Once a node follows a room (it has read the roster and applied every delta since), its
/// subscribers' snapshots come from its mirror of the roster: the roster is not read from
/// Redis again, and the snapshots are still exact, metadata changes included.
pub async fn a_followed_room_is_not_read_again(nodes: Nodes) {
    let (n0, n1) = (nodes.node(0), nodes.node(1));
    let mut members = Vec::new();
    for i in 0..10 {
        let mut m = connect(&n1, &format!("m{i}")).await;
        m.subscribe(ROOM).await;
        members.push(m);
    }
    let mut watcher = connect(&n0, "watcher").await;
    watcher.subscribe(ROOM).await;
    watcher.expect(ack()).await;
    watcher.next().await; // the snapshot of the ten
    let reads = nodes.redis_calls("hgetall").await;
    let mut expected = json!((0..10).map(|i| entry(&format!("m{i}"))).collect::<Vec<_>>());
    expected.as_array_mut().unwrap().push(entry("watcher"));
    for i in 0..5 {
        let name = format!("late{i}");
        let mut late = connect(&n0, &name).await;
        late.subscribe(ROOM).await;
        late.expect_subscribed(ROOM, expected.clone()).await;
        // Once the watcher hears of it, node 0 has applied its `joined` too.
        watcher.expect(joined(ROOM, json!([entry(&name)]))).await;
        expected.as_array_mut().unwrap().push(entry(&name));
    }
    assert_eq!(
        nodes.redis_calls("hgetall").await,
        reads,
        "no roster read for a followed room"
    );
    // m0 reconnects on node 1 within the grace with new metadata: nobody is told, and the
    // next snapshot on node 0 has it.
    let m0 = members.remove(0);
    m0.disconnect(Departure::Dropped).await;
    let mut again = ClientSpec::new("m0")
        .metadata(r#"{"v":2}"#)
        .connect(&n1)
        .await;
    again.subscribe(ROOM).await;
    again.expect(ack()).await;
    again.next().await;
    Barrier::new(&n1)
        .on_channel(ROOM, &mut [&mut watcher])
        .await;
    let mut last = connect(&n0, "last").await;
    last.subscribe(ROOM).await;
    last.expect(ack()).await;
    let snapshot = last.next().await;
    let m0_entry = snapshot["joined"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["peerId"] == "m0")
        .cloned();
    assert_eq!(
        m0_entry,
        Some(json!({"peerId": "m0", "metadata": {"v": 2}}))
    );
    tokio::time::sleep(Duration::ZERO).await;
}
