//! Rosters, kicks, operator views, counters and app isolation, on one node.

use std::time::Duration;

use herald_server::close::CloseReason;
use herald_server::engine::{Departure, EngineStats};
use herald_server::ids::{AppId, PeerId};
use serde_json::json;

use crate::harness::{
    connect, direct, entry, joined, members, members_in, message, Barrier, ClientSpec, Nodes, APP,
    OTHER_APP,
};

const ROOM: &str = "room/1";

/// The roster has one entry per peer, with the metadata of its latest subscribed connection.
pub async fn channel_members_lists_each_peer_once(nodes: Nodes) {
    let engine = nodes.engine();
    assert_eq!(members(&nodes, ROOM).await, json!([]), "an unknown channel");
    let mut a1 = ClientSpec::new("a")
        .metadata(r#"{"v":1}"#)
        .without_presence()
        .connect(&engine)
        .await;
    a1.subscribe(ROOM).await;
    let mut b = ClientSpec::new("b")
        .without_presence()
        .connect(&engine)
        .await;
    b.subscribe(ROOM).await;
    assert_eq!(
        members(&nodes, ROOM).await,
        json!([{"peerId": "a", "metadata": {"v": 1}}, entry("b")])
    );

    let mut a2 = ClientSpec::new("a")
        .metadata(r#"{"v":2}"#)
        .without_presence()
        .connect(&engine)
        .await;
    a2.subscribe(ROOM).await;
    assert_eq!(
        members(&nodes, ROOM).await,
        json!([{"peerId": "a", "metadata": {"v": 2}}, entry("b")])
    );
}

/// `close_peer` asks every connection of the peer, and no other, to close.
pub async fn close_peer_closes_every_connection_of_the_peer(nodes: Nodes) {
    let engine = nodes.engine();
    let p1 = connect(&engine, "p").await;
    let p2 = connect(&engine, "p").await;
    let mut q = connect(&engine, "q").await;
    let app = AppId::new(APP);
    let reason = CloseReason::ADMIN_DISCONNECT;

    assert_eq!(
        engine
            .close_peer(&app, &PeerId::new("p"), reason)
            .await
            .unwrap(),
        2
    );
    for conn in [&p1.conn, &p2.conn] {
        let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
        assert_eq!(closed.ok(), Some(reason));
    }
    assert_eq!(
        engine
            .close_peer(&app, &PeerId::new("nobody"), reason)
            .await
            .unwrap(),
        0
    );
    // The kick of p went the way a direct to q goes; q was not closed.
    Barrier::new(&engine).direct("q", &mut [&mut q]).await;
    assert_eq!(q.conn.close_requested(), None);
}

/// What operators see: this node's channels (patterns included, with no members) and its
/// connections, each with its sorted channels.
pub async fn local_views_show_channels_and_connections(nodes: Nodes) {
    let engine = nodes.engine();
    let mut a = connect(&engine, "a").await;
    a.subscribe("room/2").await;
    a.subscribe(ROOM).await;
    let mut b = connect(&engine, "b").await;
    b.subscribe(ROOM).await;
    let mut w = connect(&engine, "w").await;
    assert!(w.subscribe_pattern("room/*", usize::MAX).await.unwrap());
    let idle = connect(&engine, "idle").await;
    let _elsewhere = ClientSpec::new("a").app(OTHER_APP).connect(&engine).await;

    let channels: Vec<_> = engine
        .local_channels(&AppId::new(APP))
        .into_iter()
        .map(|c| (c.channel.as_str().to_string(), c.members, c.subscribers))
        .collect();
    assert_eq!(
        channels,
        [
            ("room/*".to_string(), 0, 1),
            ("room/1".to_string(), 2, 2),
            ("room/2".to_string(), 1, 1)
        ]
    );

    let view = |peer: Option<&str>| {
        engine
            .local_connections(&AppId::new(APP), peer.map(PeerId::new).as_ref())
            .into_iter()
            .map(|(conn, list)| {
                let list: Vec<String> = list.iter().map(|c| c.as_str().to_string()).collect();
                (conn.id, list)
            })
            .collect::<Vec<_>>()
    };
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        view(None),
        [
            (a.conn.id, names(&["room/1", "room/2"])),
            (b.conn.id, names(&["room/1"])),
            (w.conn.id, names(&["room/*"])),
            (idle.conn.id, names(&[])),
        ]
    );
    assert_eq!(view(Some("a")), [(a.conn.id, names(&["room/1", "room/2"]))]);
}

/// The counters follow subscriptions and channels, and return to zero once everyone left.
pub async fn stats_count_and_return_to_zero(nodes: Nodes) {
    let engine = nodes.engine();
    let counts = || {
        let EngineStats {
            channels,
            subscriptions,
            ..
        } = engine.stats();
        (channels, subscriptions)
    };
    assert_eq!(counts(), (0, 0));
    let mut a = connect(&engine, "a").await;
    a.subscribe(ROOM).await;
    a.subscribe("room/2").await;
    let mut b = connect(&engine, "b").await;
    b.subscribe(ROOM).await;
    assert!(b.subscribe_pattern("room/*", usize::MAX).await.unwrap());
    b.subscribe(ROOM).await;
    assert_eq!(
        counts(),
        (2, 4),
        "a pattern is a subscription, not a channel"
    );

    assert!(a.unsubscribe("room/2").await);
    assert_eq!(counts(), (1, 3));
    a.disconnect(Departure::Left).await;
    b.disconnect(Departure::Left).await;
    assert_eq!(counts(), (0, 0));
}

/// Two apps may use the same channel and peer names without seeing each other.
pub async fn apps_are_isolated(nodes: Nodes) {
    let engine = nodes.engine();
    let mut one = connect(&engine, "alice").await;
    one.subscribe(ROOM).await;
    one.expect_subscribed(ROOM, json!([])).await;
    let mut two = ClientSpec::new("alice")
        .app(OTHER_APP)
        .connect(&engine)
        .await;
    two.subscribe(ROOM).await;
    two.expect_subscribed(ROOM, json!([])).await;

    let mut bob = connect(&engine, "bob").await;
    bob.subscribe(ROOM).await;
    bob.expect_subscribed(ROOM, json!([entry("alice")])).await;
    one.expect(joined(ROOM, json!([entry("bob")]))).await;

    assert_eq!(bob.publish(ROOM, "1", None).await, 1);
    one.expect(message(ROOM, "bob", json!(1))).await;
    assert_eq!(bob.send("alice", "2", None).await, 1);
    one.expect(direct("bob", json!(2))).await;

    assert_eq!(
        members(&nodes, ROOM).await,
        json!([entry("alice"), entry("bob")])
    );
    assert_eq!(
        members_in(&engine, OTHER_APP, ROOM).await,
        json!([entry("alice")])
    );
    let kicked = engine
        .close_peer(
            &AppId::new(OTHER_APP),
            &PeerId::new("alice"),
            CloseReason::ADMIN_DISCONNECT,
        )
        .await
        .unwrap();
    assert_eq!(kicked, 1);
    let closed = tokio::time::timeout(Duration::from_secs(5), two.conn.closed()).await;
    assert_eq!(closed.ok(), Some(CloseReason::ADMIN_DISCONNECT));

    // Nothing of app one reached app two's alice, and the kick spared app one's.
    Barrier::in_app(&engine, OTHER_APP)
        .on_channel(ROOM, &mut [&mut two])
        .await;
    Barrier::in_app(&engine, OTHER_APP)
        .direct("alice", &mut [&mut two])
        .await;
    assert_eq!(one.conn.close_requested(), None);
}
