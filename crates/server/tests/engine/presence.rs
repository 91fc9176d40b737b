//! Subscribe, presence deltas and departures, on one node.

use herald_server::engine::Departure;
use serde_json::json;

use crate::harness::{
    ack, connect, entry, joined, left, members, message, message_with_metadata, Barrier,
    ClientSpec, Nodes,
};

const ROOM: &str = "room/1";

/// The first subscriber gets its ack and an empty snapshot; the next one gets the roster, with
/// metadata; a connection without the presence action gets the ack alone.
pub async fn subscribe_queues_ack_then_full_snapshot(nodes: Nodes) {
    let engine = nodes.engine();
    let mut a = ClientSpec::new("a")
        .metadata(r#"{"name":"Ann"}"#)
        .connect(&engine)
        .await;
    assert!(a.subscribe(ROOM).await, "a first subscribe is new");
    a.expect_subscribed(ROOM, json!([])).await;

    let mut b = connect(&engine, "b").await;
    assert!(b.subscribe(ROOM).await);
    b.expect_subscribed(ROOM, json!([{"peerId": "a", "metadata": {"name": "Ann"}}]))
        .await;
    a.expect(joined(ROOM, json!([entry("b")]))).await;

    let mut quiet = ClientSpec::new("q")
        .without_presence()
        .connect(&engine)
        .await;
    assert!(quiet.subscribe(ROOM).await);
    quiet.expect(ack()).await;
    a.expect(joined(ROOM, json!([entry("q")]))).await;
    b.expect(joined(ROOM, json!([entry("q")]))).await;
    // No snapshot for the quiet connection: the marker comes right after its ack.
    Barrier::new(&engine)
        .on_channel(ROOM, &mut [&mut quiet, &mut a, &mut b])
        .await;
}

/// Others learn of a peer's first connection; the peer never hears of itself.
pub async fn joined_goes_to_others_never_to_self(nodes: Nodes) {
    let engine = nodes.engine();
    let mut a = connect(&engine, "a").await;
    a.subscribe(ROOM).await;
    a.expect_subscribed(ROOM, json!([])).await;
    let mut b = connect(&engine, "b").await;
    b.subscribe(ROOM).await;
    b.expect_subscribed(ROOM, json!([entry("a")])).await;
    a.expect(joined(ROOM, json!([entry("b")]))).await;
    Barrier::new(&engine)
        .on_channel(ROOM, &mut [&mut a, &mut b])
        .await;
}

/// Two connections of one peer: one `joined`, and `left` only when the second one leaves.
pub async fn presence_is_reference_counted(nodes: Nodes) {
    let engine = nodes.engine();
    let mut a = connect(&engine, "a").await;
    a.subscribe(ROOM).await;
    a.expect_subscribed(ROOM, json!([])).await;
    let mut b1 = connect(&engine, "b").await;
    b1.subscribe(ROOM).await;
    b1.expect_subscribed(ROOM, json!([entry("a")])).await;
    a.expect(joined(ROOM, json!([entry("b")]))).await;

    let mut b2 = connect(&engine, "b").await;
    assert!(b2.subscribe(ROOM).await);
    b2.expect_subscribed(ROOM, json!([entry("a")])).await;
    Barrier::new(&engine)
        .on_channel(ROOM, &mut [&mut a, &mut b1, &mut b2])
        .await;

    b1.disconnect(Departure::Left).await;
    Barrier::new(&engine)
        .on_channel(ROOM, &mut [&mut a, &mut b2])
        .await;
    assert_eq!(members(&nodes, ROOM).await, json!([entry("a"), entry("b")]));

    b2.disconnect(Departure::Left).await;
    a.expect(left(ROOM, json!([entry("b")]))).await;
    Barrier::new(&engine).on_channel(ROOM, &mut [&mut a]).await;
    assert_eq!(members(&nodes, ROOM).await, json!([entry("a")]));
}

/// Subscribing again re-sends ack and snapshot, tells nobody, and takes the new
/// includeSenderMetadata flag.
pub async fn repeat_subscribe_resends_snapshot_and_updates_the_flag(nodes: Nodes) {
    let engine = nodes.engine();
    let mut a = ClientSpec::new("a")
        .metadata(r#"{"n":"a"}"#)
        .connect(&engine)
        .await;
    a.subscribe(ROOM).await;
    a.expect_subscribed(ROOM, json!([])).await;
    let mut b = connect(&engine, "b").await;
    b.subscribe(ROOM).await;
    b.expect_subscribed(ROOM, json!([{"peerId": "a", "metadata": {"n": "a"}}]))
        .await;
    a.expect(joined(ROOM, json!([entry("b")]))).await;

    a.publish(ROOM, "1", Some(r#"{"n":"a"}"#)).await;
    b.expect(message(ROOM, "a", json!(1))).await;

    assert!(
        !b.subscribe_with(ROOM, true).await.unwrap(),
        "a repeat is not new"
    );
    b.expect_subscribed(ROOM, json!([{"peerId": "a", "metadata": {"n": "a"}}]))
        .await;
    Barrier::new(&engine)
        .on_channel(ROOM, &mut [&mut a, &mut b])
        .await;
    assert_eq!(engine.stats().subscriptions, 2);

    a.publish(ROOM, "2", Some(r#"{"n":"a"}"#)).await;
    b.expect(message_with_metadata(
        ROOM,
        "a",
        json!(2),
        json!({"n": "a"}),
    ))
    .await;
}

/// Unsubscribe announces `left` and says whether there was a subscription; again, it does
/// nothing.
pub async fn unsubscribe_emits_left_and_is_idempotent(nodes: Nodes) {
    let engine = nodes.engine();
    let mut a = connect(&engine, "a").await;
    a.subscribe(ROOM).await;
    a.expect_subscribed(ROOM, json!([])).await;
    let mut b = connect(&engine, "b").await;
    b.subscribe(ROOM).await;
    b.expect_subscribed(ROOM, json!([entry("a")])).await;
    a.expect(joined(ROOM, json!([entry("b")]))).await;

    assert!(b.unsubscribe(ROOM).await);
    a.expect(left(ROOM, json!([entry("b")]))).await;
    assert!(
        !b.unsubscribe(ROOM).await,
        "a second unsubscribe finds nothing"
    );
    assert!(!b.unsubscribe("room/never").await);
    Barrier::new(&engine).on_channel(ROOM, &mut [&mut a]).await;
    b.expect_nothing_queued();
    assert_eq!(members(&nodes, ROOM).await, json!([entry("a")]));
}
