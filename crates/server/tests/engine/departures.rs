//! How a connection's end is announced: at once, never, or after the reconnect grace. Both
//! engines hold a dropped peer for the grace; they differ only on a node's shutdown.

use std::time::Instant;

use herald_server::engine::Departure;
use serde_json::json;

use crate::harness::{
    connect, entry, joined, left, members, Barrier, Client, ClientSpec, Nodes, GRACE,
};

const ROOM: &str = "room/1";

/// `a` and `b` on node 0, both subscribed to [`ROOM`], every setup frame read.
async fn two_present(nodes: &Nodes) -> (Client, Client) {
    let engine = nodes.engine();
    let mut a = connect(&engine, "a").await;
    a.subscribe(ROOM).await;
    a.expect_subscribed(ROOM, json!([])).await;
    let mut b = connect(&engine, "b").await;
    b.subscribe(ROOM).await;
    b.expect_subscribed(ROOM, json!([entry("a")])).await;
    a.expect(joined(ROOM, json!([entry("b")]))).await;
    (a, b)
}

/// A deliberate leave is announced at once, grace or not.
pub async fn disconnect_left_announces_at_once(nodes: Nodes) {
    let (mut a, b) = two_present(&nodes).await;
    b.disconnect(Departure::Left).await;
    a.expect(left(ROOM, json!([entry("b")]))).await;
    assert_eq!(members(&nodes, ROOM).await, json!([entry("a")]));
}

/// Memory engine: a connection ending with the node announces nothing.
pub async fn memory_shutdown_announces_nothing(nodes: Nodes) {
    let (mut a, b) = two_present(&nodes).await;
    b.disconnect(Departure::Shutdown).await;
    Barrier::new(&nodes.engine())
        .on_channel(ROOM, &mut [&mut a])
        .await;
    assert_eq!(members(&nodes, ROOM).await, json!([entry("a")]));
}

/// A drop holds the peer for the grace.
pub async fn dropped_holds_presence_for_the_grace(nodes: Nodes) {
    holds_presence_for_the_grace(nodes, Departure::Dropped).await;
}

/// A reconnect to the same node within the grace shows no flap.
pub async fn reconnect_within_the_grace_announces_nothing_on_one_node(nodes: Nodes) {
    reconnect_within_the_grace_announces_nothing(nodes, 0).await;
}

/// A dropped connection (on Redis also one ended by a shutdown) keeps its peer present for the
/// reconnect grace, in the roster and in a newcomer's snapshot, then `left` goes out once.
pub async fn holds_presence_for_the_grace(nodes: Nodes, departure: Departure) {
    let (mut a, b) = two_present(&nodes).await;
    let dropped_at = Instant::now();
    b.disconnect(departure).await;
    assert_eq!(
        members(&nodes, ROOM).await,
        json!([entry("a"), entry("b")]),
        "held during the grace"
    );
    let mut c = connect(&nodes.engine(), "c").await;
    c.subscribe(ROOM).await;
    assert!(
        dropped_at.elapsed() < GRACE,
        "premise: c subscribed within the grace"
    );
    c.expect_subscribed(ROOM, json!([entry("a"), entry("b")]))
        .await;
    a.expect(joined(ROOM, json!([entry("c")]))).await;
    a.expect(left(ROOM, json!([entry("b")]))).await;
    c.expect(left(ROOM, json!([entry("b")]))).await;
    assert!(
        dropped_at.elapsed() >= GRACE,
        "left came {:?} after the drop, inside the grace",
        dropped_at.elapsed()
    );
    assert_eq!(members(&nodes, ROOM).await, json!([entry("a"), entry("c")]));
    // Once: nothing follows the left.
    Barrier::new(&nodes.engine())
        .on_channel(ROOM, &mut [&mut a, &mut c])
        .await;
}

/// A reconnect inside the grace, to node `reconnect_to`, shows no left/joined
/// flap, even once the grace has run out.
pub async fn reconnect_within_the_grace_announces_nothing(nodes: Nodes, reconnect_to: usize) {
    let (mut a, b) = two_present(&nodes).await;
    let dropped_at = Instant::now();
    b.disconnect(Departure::Dropped).await;
    let mut back = connect(&nodes.node(reconnect_to), "b").await;
    back.subscribe(ROOM).await;
    back.expect_subscribed(ROOM, json!([entry("a")])).await;
    // The premise, stated: were the reconnect slower than the grace, `left` would be right.
    assert!(
        dropped_at.elapsed() < GRACE,
        "the reconnect took {:?}, longer than the grace",
        dropped_at.elapsed()
    );
    // The grace timer runs on the real clock (a Redis engine talks to a real redis-server):
    // let it fire, then show it announced nothing.
    tokio::time::sleep(GRACE * 2).await;
    Barrier::new(&nodes.engine())
        .on_channel(ROOM, &mut [&mut a, &mut back])
        .await;
    assert_eq!(members(&nodes, ROOM).await, json!([entry("a"), entry("b")]));
}

/// A peer back within the grace with other metadata (a new token) is taken back silently, as a
/// second connection of a present peer would be: no delta, and the roster and later snapshots
/// show the new metadata.
pub async fn reconnect_with_new_metadata_announces_nothing(nodes: Nodes) {
    let (mut a, b) = two_present(&nodes).await;
    let dropped_at = Instant::now();
    b.disconnect(Departure::Dropped).await;
    let engine = nodes.engine();
    let mut back = ClientSpec::new("b")
        .metadata(r#"{"v":2}"#)
        .connect(&engine)
        .await;
    back.subscribe(ROOM).await;
    assert!(
        dropped_at.elapsed() < GRACE,
        "premise: back within the grace"
    );
    back.expect_subscribed(ROOM, json!([entry("a")])).await;
    let with_metadata = json!([entry("a"), {"peerId": "b", "metadata": {"v": 2}}]);
    assert_eq!(members(&nodes, ROOM).await, with_metadata);
    tokio::time::sleep(GRACE * 2).await;
    Barrier::new(&engine)
        .on_channel(ROOM, &mut [&mut a, &mut back])
        .await;
    assert_eq!(members(&nodes, ROOM).await, with_metadata);
}
