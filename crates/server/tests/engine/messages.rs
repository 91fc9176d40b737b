//! Channel messages, directs and wildcard subscriptions, on one node.

use herald_server::engine::{Departure, EngineError};
use serde_json::json;

use crate::harness::{
    ack, connect, direct, entry, joined, left, message, message_with_metadata, presence, Barrier,
    Client, ClientSpec, Nodes, OTHER_APP,
};

const ROOM: &str = "room/1";

/// A connection of `peer` without the presence action, subscribed to `name`, its ack read.
async fn quiet_subscriber(nodes: &Nodes, peer: &str, name: &str, with_metadata: bool) -> Client {
    let mut client = ClientSpec::new(peer)
        .without_presence()
        .connect(&nodes.engine())
        .await;
    assert!(client.subscribe_with(name, with_metadata).await.unwrap());
    client.expect(ack()).await;
    client
}

/// Every subscriber but the publishing connection gets the message; `fromMetadata` only where
/// the subscription asked for it and the publisher has some.
pub async fn publish_reaches_every_subscriber_but_the_publisher(nodes: Nodes) {
    let engine = nodes.engine();
    let mut plain = quiet_subscriber(&nodes, "plain", ROOM, false).await;
    let mut curious = quiet_subscriber(&nodes, "curious", ROOM, true).await;
    let mut publisher = quiet_subscriber(&nodes, "pub", ROOM, true).await;

    let sent = publisher
        .publish(ROOM, r#"{"text":"hi"}"#, Some(r#"{"n":"pub"}"#))
        .await;
    assert_eq!(sent, 2);
    plain
        .expect(message(ROOM, "pub", json!({"text": "hi"})))
        .await;
    curious
        .expect(message_with_metadata(
            ROOM,
            "pub",
            json!({"text": "hi"}),
            json!({"n": "pub"}),
        ))
        .await;

    // A publisher without metadata: nobody gets `fromMetadata`.
    publisher.publish(ROOM, "2", None).await;
    plain.expect(message(ROOM, "pub", json!(2))).await;
    curious.expect(message(ROOM, "pub", json!(2))).await;

    // The publisher never heard itself.
    Barrier::new(&engine)
        .on_channel(ROOM, &mut [&mut publisher, &mut plain, &mut curious])
        .await;
}

/// `publish` returns how many connections it was queued for.
pub async fn publish_counts_its_receivers(nodes: Nodes) {
    let engine = nodes.engine();
    let mut one = quiet_subscriber(&nodes, "one", ROOM, false).await;
    let two = quiet_subscriber(&nodes, "two", ROOM, false).await;
    let _three = quiet_subscriber(&nodes, "three", ROOM, false).await;
    let outsider = connect(&engine, "outsider").await;

    assert_eq!(two.publish(ROOM, "1", None).await, 2, "publisher excluded");
    assert_eq!(outsider.publish(ROOM, "2", None).await, 3, "not subscribed");
    assert!(one.unsubscribe(ROOM).await);
    assert_eq!(outsider.publish(ROOM, "3", None).await, 2);
    assert_eq!(outsider.publish("room/empty", "4", None).await, 0);
}

/// A direct reaches every connection of the peer; a send to oneself only one's other
/// connections; an offline peer counts 0.
pub async fn directs_reach_every_connection_of_the_peer(nodes: Nodes) {
    let engine = nodes.engine();
    let mut p1 = connect(&engine, "p").await;
    let mut p2 = connect(&engine, "p").await;
    let mut q = connect(&engine, "q").await;

    assert_eq!(q.send("p", r#""hello""#, Some(r#"{"n":"q"}"#)).await, 2);
    let want = json!({"type": "direct", "from": "q", "data": "hello", "fromMetadata": {"n": "q"}});
    p1.expect(want.clone()).await;
    p2.expect(want).await;

    assert_eq!(
        p1.send("p", r#""self""#, None).await,
        1,
        "own connection excluded"
    );
    p2.expect(direct("p", json!("self"))).await;
    Barrier::new(&engine)
        .direct("p", &mut [&mut p1, &mut p2])
        .await;

    assert_eq!(q.send("nobody", "1", None).await, 0, "offline peer");
    Barrier::new(&engine).direct("q", &mut [&mut q]).await;
}

/// A pattern subscription gets an empty snapshot (even over populated channels) and the
/// messages of matching channels, never their presence deltas.
pub async fn wildcards_get_messages_but_never_presence(nodes: Nodes) {
    let engine = nodes.engine();
    let mut a = connect(&engine, "a").await;
    a.subscribe(ROOM).await;
    a.expect_subscribed(ROOM, json!([])).await;

    let mut watcher = connect(&engine, "watcher").await;
    assert!(watcher
        .subscribe_pattern("room/*", usize::MAX)
        .await
        .unwrap());
    watcher.expect(ack()).await;
    watcher
        .expect(presence("room/*", json!([]), json!([])))
        .await;

    let mut b = connect(&engine, "b").await;
    b.subscribe(ROOM).await;
    b.expect_subscribed(ROOM, json!([entry("a")])).await;
    a.expect(joined(ROOM, json!([entry("b")]))).await;

    a.publish(ROOM, "1", None).await;
    watcher.expect(message(ROOM, "a", json!(1))).await;
    b.expect(message(ROOM, "a", json!(1))).await;
    a.publish("lobby", "2", None).await;

    b.disconnect(Departure::Left).await;
    a.expect(left(ROOM, json!([entry("b")]))).await;
    Barrier::new(&engine)
        .on_channel(ROOM, &mut [&mut watcher, &mut a])
        .await;
}

/// A connection subscribed to a channel both exactly and through a pattern gets each message
/// once.
pub async fn exact_and_wildcard_subscriptions_deliver_once(nodes: Nodes) {
    let engine = nodes.engine();
    let mut both = ClientSpec::new("both")
        .without_presence()
        .connect(&engine)
        .await;
    both.subscribe(ROOM).await;
    both.expect(ack()).await;
    assert!(both.subscribe_pattern("room/*", usize::MAX).await.unwrap());
    both.expect(ack()).await;
    let publisher = connect(&engine, "pub").await;

    assert_eq!(publisher.publish(ROOM, "1", None).await, 1);
    both.expect(message(ROOM, "pub", json!(1))).await;
    Barrier::new(&engine)
        .on_channel(ROOM, &mut [&mut both])
        .await;
}

/// The app-wide cap on distinct wildcard patterns refuses a new pattern beyond it, enqueueing
/// nothing; a pattern the app already holds, or another app's, is not refused.
pub async fn the_app_pattern_cap_refuses_new_patterns(nodes: Nodes) {
    let engine = nodes.engine();
    let mut first = connect(&engine, "first").await;
    assert!(first.subscribe_pattern("a/*", 1).await.unwrap());
    first.expect(ack()).await;
    first.expect(presence("a/*", json!([]), json!([]))).await;

    let mut second = connect(&engine, "second").await;
    assert!(matches!(
        second.subscribe_pattern("b/*", 1).await,
        Err(EngineError::PatternLimit)
    ));
    second.expect_nothing_queued();
    assert!(
        second.subscribe_pattern("a/*", 1).await.unwrap(),
        "a pattern the app holds is not new to it"
    );
    second.expect(ack()).await;
    second.expect(presence("a/*", json!([]), json!([]))).await;

    let mut elsewhere = ClientSpec::new("first")
        .app(OTHER_APP)
        .connect(&engine)
        .await;
    assert!(elsewhere.subscribe_pattern("c/*", 1).await.unwrap());
    elsewhere.expect(ack()).await;

    assert!(first.unsubscribe("a/*").await);
    assert!(second.unsubscribe("a/*").await);
    assert!(
        second.subscribe_pattern("b/*", 1).await.unwrap(),
        "the cap counts patterns held now"
    );
}
