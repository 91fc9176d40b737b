//! Presence coalescing under a join storm: every connection in the room, on every node, ends
//! with the true roster, told each change once, in far fewer frames than there were changes.
//! The window is long (seconds), so the storm surely falls in few windows however busy the
//! machine is; the marker message sends whatever still waits (a message never overtakes a
//! `joined`), so nothing waits for the window to end.

use std::collections::BTreeSet;
use std::time::Duration;

use herald_server::engine::Departure;
use herald_testkit::prelude::PresenceView;

use crate::harness::{connect, Barrier, Client, Nodes};

/// The coalescing window of the scenario's engines.
pub const WINDOW: Duration = Duration::from_secs(5);
const ROOM: &str = "storm";
const WATCHERS: usize = 4;
const JOINERS: usize = 60;

/// Reads a client's frames up to the next marker into its view; returns the presence frames.
async fn read_to_marker(client: &mut Client, view: &mut PresenceView) -> usize {
    let mut presence = 0;
    loop {
        let frame = client.next().await;
        if frame["type"] == "message" && frame["from"] == "marker" {
            return presence;
        }
        if frame["type"] == "presence" {
            presence += 1;
        }
        view.absorb(&frame.to_string(), client.peer());
    }
}

/// Every client's view equals the room's members, and the watchers got few frames.
async fn check(nodes: &Nodes, clients: &mut [(Client, PresenceView)], changes: usize) {
    Barrier::new(&nodes.engine())
        .on_channel(ROOM, &mut [])
        .await;
    let truth: BTreeSet<String> = clients.iter().map(|(c, _)| c.peer().to_string()).collect();
    for (i, (client, view)) in clients.iter_mut().enumerate() {
        let frames = read_to_marker(client, view).await;
        view.assert_equals(&truth, client.peer());
        if i < WATCHERS {
            assert!(
                frames <= changes / 2,
                "{} got {frames} presence frames for {changes} changes",
                client.peer()
            );
        }
    }
}

pub async fn a_join_storm_is_coalesced_and_exact(nodes: Nodes) {
    let node_count = nodes.len();
    let mut clients: Vec<(Client, PresenceView)> = Vec::new();
    for i in 0..WATCHERS {
        let mut watcher = connect(&nodes.node(i % node_count), &format!("watcher{i}")).await;
        watcher.subscribe(ROOM).await;
        clients.push((watcher, PresenceView::default()));
    }
    // Let the watchers' own joins pass, so the storm starts a window of its own.
    check(&nodes, &mut clients, usize::MAX).await;
    let joiners = futures_util::future::join_all((0..JOINERS).map(|i| {
        let engine = nodes.node(i % node_count);
        async move {
            let mut joiner = connect(&engine, &format!("joiner{i:02}")).await;
            joiner.subscribe(ROOM).await;
            joiner
        }
    }))
    .await;
    clients.extend(joiners.into_iter().map(|j| (j, PresenceView::default())));
    check(&nodes, &mut clients, JOINERS).await;

    // And back out: half of the joiners leave at once.
    let leaving: Vec<(Client, PresenceView)> =
        clients.drain(WATCHERS..WATCHERS + JOINERS / 2).collect();
    futures_util::future::join_all(
        leaving
            .into_iter()
            .map(|(client, _)| client.disconnect(Departure::Left)),
    )
    .await;
    check(&nodes, &mut clients, JOINERS / 2).await;
}
