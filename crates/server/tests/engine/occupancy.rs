//! `Engine::occupancy`: a channel's distinct peers and subscribed connections, without the
//! roster.

use std::sync::Arc;

use herald_server::engine::{Departure, Engine, Occupancy};
use herald_server::ids::AppId;

use crate::harness::{channel, connect, ClientSpec, Nodes, APP, OTHER_APP};

const ROOM: &str = "room/1";

async fn occupancy_in(engine: &Arc<dyn Engine>, app: &str, name: &str) -> (usize, usize) {
    let Occupancy { peers, connections } = engine
        .occupancy(&AppId::new(app), &channel(name))
        .await
        .unwrap();
    (peers, connections)
}

/// Peers count once however many connections they have; a connection without the presence
/// action still counts (it appears to others); pattern subscribers and other apps do not;
/// leaving brings the counts back down to zero.
pub async fn occupancy_counts_peers_and_connections(nodes: Nodes) {
    let engine = nodes.engine();
    assert_eq!(occupancy_in(&engine, APP, ROOM).await, (0, 0), "unknown");
    let mut a1 = connect(&engine, "a").await;
    let mut a2 = connect(&engine, "a").await;
    let mut b = connect(&engine, "b").await;
    let mut quiet = ClientSpec::new("q")
        .without_presence()
        .connect(&engine)
        .await;
    let mut watcher = connect(&engine, "w").await;
    for client in [&mut a1, &mut a2, &mut b, &mut quiet] {
        client.subscribe(ROOM).await;
    }
    watcher
        .subscribe_pattern("room/*", usize::MAX)
        .await
        .unwrap();
    assert_eq!(occupancy_in(&engine, APP, ROOM).await, (3, 4));
    assert_eq!(occupancy_in(&engine, OTHER_APP, ROOM).await, (0, 0));
    assert_eq!(occupancy_in(&engine, APP, "room/2").await, (0, 0));

    a1.disconnect(Departure::Left).await;
    assert_eq!(
        occupancy_in(&engine, APP, ROOM).await,
        (3, 3),
        "a still has a2"
    );
    a2.unsubscribe(ROOM).await;
    assert_eq!(occupancy_in(&engine, APP, ROOM).await, (2, 2));
    b.disconnect(Departure::Left).await;
    quiet.disconnect(Departure::Left).await;
    assert_eq!(occupancy_in(&engine, APP, ROOM).await, (0, 0));
}

/// Redis: every node answers for the whole service, connections summed over nodes.
pub async fn occupancy_sums_every_node(nodes: Nodes) {
    let (n0, n1) = (nodes.node(0), nodes.node(1));
    let mut a = connect(&n0, "a").await;
    let mut b1 = connect(&n1, "b").await;
    let mut b2 = connect(&n1, "b").await;
    let mut a_elsewhere = connect(&n1, "a").await;
    for client in [&mut a, &mut b1, &mut b2, &mut a_elsewhere] {
        client.subscribe(ROOM).await;
    }
    assert_eq!(occupancy_in(&n0, APP, ROOM).await, (2, 4));
    assert_eq!(occupancy_in(&n1, APP, ROOM).await, (2, 4));
    a.disconnect(Departure::Left).await;
    assert_eq!(
        occupancy_in(&n1, APP, ROOM).await,
        (2, 3),
        "a is still on n1"
    );
}
