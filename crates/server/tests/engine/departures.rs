//! How a connection's end is announced: at once, never, or after the Redis reconnect grace.

use std::time::Instant;

use herald_server::engine::Departure;
use serde_json::json;

use crate::harness::{connect, entry, joined, left, members, Barrier, Client, Nodes, REDIS_GRACE};

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

/// A deliberate leave is announced at once.
pub async fn disconnect_left_announces_at_once(nodes: Nodes) {
    departure_announces_left_at_once(nodes, Departure::Left).await;
}

/// `left` goes out as soon as the connection ends (memory: any departure but shutdown).
pub async fn departure_announces_left_at_once(nodes: Nodes, departure: Departure) {
    let (mut a, b) = two_present(&nodes).await;
    b.disconnect(departure).await;
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

/// Redis engine: a dropped connection (or one ended by a shutdown) keeps its peer present for
/// the reconnect grace, then `left` goes out.
pub async fn redis_holds_presence_for_the_grace(nodes: Nodes, departure: Departure) {
    let (mut a, b) = two_present(&nodes).await;
    let dropped_at = Instant::now();
    b.disconnect(departure).await;
    assert_eq!(
        members(&nodes, ROOM).await,
        json!([entry("a"), entry("b")]),
        "held during the grace"
    );
    a.expect(left(ROOM, json!([entry("b")]))).await;
    assert!(
        dropped_at.elapsed() >= REDIS_GRACE,
        "left came {:?} after the drop, inside the grace",
        dropped_at.elapsed()
    );
    assert_eq!(members(&nodes, ROOM).await, json!([entry("a")]));
}

/// Redis engine: a reconnect inside the grace, to node `reconnect_to`, shows no left/joined
/// flap, even once the grace has run out.
pub async fn redis_reconnect_within_the_grace_announces_nothing(nodes: Nodes, reconnect_to: usize) {
    let (mut a, b) = two_present(&nodes).await;
    let dropped_at = Instant::now();
    b.disconnect(Departure::Dropped).await;
    let mut back = connect(&nodes.node(reconnect_to), "b").await;
    back.subscribe(ROOM).await;
    back.expect_subscribed(ROOM, json!([entry("a")])).await;
    // The premise, stated: were the reconnect slower than the grace, `left` would be right.
    assert!(
        dropped_at.elapsed() < REDIS_GRACE,
        "the reconnect took {:?}, longer than the grace",
        dropped_at.elapsed()
    );
    // The grace timer runs on the real clock (the engine talks to a real redis-server): let
    // it fire, then show it announced nothing.
    tokio::time::sleep(REDIS_GRACE * 2).await;
    Barrier::new(&nodes.engine())
        .on_channel(ROOM, &mut [&mut a, &mut back])
        .await;
    assert_eq!(members(&nodes, ROOM).await, json!([entry("a"), entry("b")]));
}
