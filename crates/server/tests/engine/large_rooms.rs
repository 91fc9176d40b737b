//! Occupancy mode of large rooms (`[[presence.channels]]`), with a roster cap of 3 so the
//! scenarios stay small: above the cap, counts instead of per-member deltas; back at the cap,
//! one frame that repairs each watcher's roster.

use herald_server::config::{PresenceChannels, PresenceConfig};
use herald_server::engine::Departure;
use serde_json::{json, Value};

use crate::harness::{ack, connect, entry, joined, left, message, Barrier, Client, Nodes};

pub const CAP: usize = 3;
const STADIUM: &str = "stadium-1";

/// Caps channels `stadium-*` at [`CAP`] members.
pub fn stadium_caps() -> PresenceConfig {
    PresenceConfig {
        channels: vec![PresenceChannels {
            patterns: vec!["stadium-*".into()],
            max_roster: CAP,
        }],
    }
}

/// A count frame: empty deltas and the occupancy.
fn count(peers: usize) -> Value {
    json!({"type": "presence", "channel": STADIUM, "joined": [], "left": [], "occupancy": {"peers": peers}})
}

/// A count sent while over the cap (a repair frame carries a count at or below it).
fn is_count_over_cap(frame: &Value) -> bool {
    frame["joined"] == json!([])
        && frame["left"] == json!([])
        && frame["occupancy"]["peers"]
            .as_u64()
            .is_some_and(|n| n > CAP as u64)
}

/// The next frame that is not a count over the cap (counts arrive on their own timer).
async fn next_skipping_counts(client: &mut Client) -> Value {
    loop {
        let frame = client.next().await;
        if !is_count_over_cap(&frame) {
            return frame;
        }
    }
}

/// Nothing but counts arrived before a marker published now.
async fn only_counts_since(nodes: &Nodes, observers: &mut [&mut Client]) {
    Barrier::new(&nodes.engine())
        .on_channel(STADIUM, &mut [])
        .await;
    for observer in observers {
        let frame = next_skipping_counts(observer).await;
        assert_eq!(
            frame,
            message(STADIUM, "marker", json!("marker")),
            "{}",
            observer.peer()
        );
    }
}

/// Fills the stadium to the cap with a, b and c, as usual: snapshots and `joined`.
async fn fill_to_the_cap(nodes: &Nodes) -> [Client; 3] {
    let engine = nodes.engine();
    let mut a = connect(&engine, "a").await;
    a.subscribe(STADIUM).await;
    a.expect_subscribed(STADIUM, json!([])).await;
    let mut b = connect(&engine, "b").await;
    b.subscribe(STADIUM).await;
    b.expect_subscribed(STADIUM, json!([entry("a")])).await;
    a.expect(joined(STADIUM, json!([entry("b")]))).await;
    let mut c = connect(&engine, "c").await;
    c.subscribe(STADIUM).await;
    c.expect_subscribed(STADIUM, json!([entry("a"), entry("b")]))
        .await;
    a.expect(joined(STADIUM, json!([entry("c")]))).await;
    b.expect(joined(STADIUM, json!([entry("c")]))).await;
    [a, b, c]
}

/// The snapshot of the member that takes the room over the cap: the three before it. The
/// memory engine takes it before counting the newcomer (no count); the Redis engine may see
/// the newcomer's own `joined` first, and adds the count.
async fn expect_crossing_snapshot(d: &mut Client) {
    d.expect(ack()).await;
    let mut snapshot = next_skipping_counts(d).await;
    if let Some(occupancy) = snapshot.as_object_mut().and_then(|s| s.remove("occupancy")) {
        assert_eq!(occupancy, json!({"peers": 4}));
    }
    assert_eq!(
        snapshot,
        joined(STADIUM, json!([entry("a"), entry("b"), entry("c")]))
    );
}

/// Above the cap watchers get counts, never `joined`; a newcomer's snapshot lists the cap's
/// worth of members with the count.
pub async fn over_the_cap_watchers_get_counts_not_deltas(nodes: Nodes) {
    let engine = nodes.engine();
    let [mut a, mut b, mut c] = fill_to_the_cap(&nodes).await;
    // The fourth member: its own snapshot is still the whole room of three.
    let mut d = connect(&engine, "d").await;
    d.subscribe(STADIUM).await;
    expect_crossing_snapshot(&mut d).await;
    for watcher in [&mut a, &mut b, &mut c] {
        watcher.expect(count(4)).await;
    }
    let mut e = connect(&engine, "e").await;
    e.subscribe(STADIUM).await;
    e.expect(ack()).await;
    let mut snapshot = joined(STADIUM, json!([entry("a"), entry("b"), entry("c")]));
    snapshot["occupancy"] = json!({"peers": 5});
    assert_eq!(next_skipping_counts(&mut e).await, snapshot);
    only_counts_since(&nodes, &mut [&mut a, &mut b, &mut c, &mut d, &mut e]).await;
    // Within a second, the new count.
    a.expect(count(5)).await;
}

/// Back at the cap, each watcher gets one frame that makes its roster true: `left` for the
/// peers it was shown that are gone, `joined` for members it was never shown. Then deltas
/// resume.
pub async fn shrinking_back_repairs_every_roster(nodes: Nodes) {
    let engine = nodes.engine();
    let [a, mut b, mut c] = fill_to_the_cap(&nodes).await;
    let mut d = connect(&engine, "d").await;
    d.subscribe(STADIUM).await;
    expect_crossing_snapshot(&mut d).await;
    let mut e = connect(&engine, "e").await;
    e.subscribe(STADIUM).await;
    a.disconnect(Departure::Left).await;
    // f sees the shown members still here: b and c (a left unannounced).
    let mut f = connect(&engine, "f").await;
    f.subscribe(STADIUM).await;
    f.expect(ack()).await;
    let mut snapshot = joined(STADIUM, json!([entry("b"), entry("c")]));
    snapshot["occupancy"] = json!({"peers": 5});
    assert_eq!(next_skipping_counts(&mut f).await, snapshot);
    only_counts_since(&nodes, &mut [&mut b, &mut c, &mut d, &mut f]).await;

    d.disconnect(Departure::Left).await;
    e.disconnect(Departure::Left).await;
    // Three left: b, c and f. b and c were shown a (gone) and never f.
    let mut repair = presence_with(json!([entry("f")]), json!([entry("a")]), 3);
    for watcher in [&mut b, &mut c] {
        assert_eq!(
            next_skipping_counts(watcher).await,
            repair,
            "{}",
            watcher.peer()
        );
    }
    // f's snapshot was already true.
    repair = presence_with(json!([]), json!([]), 3);
    assert_eq!(next_skipping_counts(&mut f).await, repair);
    Barrier::new(&engine)
        .on_channel(STADIUM, &mut [&mut b, &mut c, &mut f])
        .await;

    // At the cap or below, the channel behaves as usual.
    b.disconnect(Departure::Left).await;
    c.expect(left(STADIUM, json!([entry("b")]))).await;
    f.expect(left(STADIUM, json!([entry("b")]))).await;
    Barrier::new(&engine)
        .on_channel(STADIUM, &mut [&mut c, &mut f])
        .await;
}

fn presence_with(joined: Value, left: Value, peers: usize) -> Value {
    json!({"type": "presence", "channel": STADIUM, "joined": joined, "left": left, "occupancy": {"peers": peers}})
}

/// Memory engine, paused clock: counts go out at most once a second, and only when the count
/// changed since the last one.
pub async fn counts_at_most_once_a_second(nodes: Nodes) {
    let engine = nodes.engine();
    let [mut a, _b, _c] = fill_to_the_cap(&nodes).await;
    let start = tokio::time::Instant::now();
    let mut d = connect(&engine, "d").await;
    d.subscribe(STADIUM).await;
    a.expect(count(4)).await;
    let mut e = connect(&engine, "e").await;
    e.subscribe(STADIUM).await;
    let mut f = connect(&engine, "f").await;
    f.subscribe(STADIUM).await;
    Barrier::new(&engine)
        .on_channel(STADIUM, &mut [&mut a])
        .await;
    assert_eq!(start.elapsed(), std::time::Duration::ZERO);
    a.expect(count(6)).await;
    assert_eq!(start.elapsed(), std::time::Duration::from_secs(1));
    // A leave and a join within the next second: the count is back where it was, so nothing.
    f.disconnect(Departure::Left).await;
    let mut g = connect(&engine, "g").await;
    g.subscribe(STADIUM).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    Barrier::new(&engine)
        .on_channel(STADIUM, &mut [&mut a])
        .await;
    drop((d, e, g));
}

/// Redis, two nodes: members on one node take the room over the cap; watchers on both get
/// counts, and the other node's first subscriber gets the capped snapshot.
pub async fn occupancy_mode_crosses_nodes(nodes: Nodes) {
    let (n0, n1) = (nodes.node(0), nodes.node(1));
    let [mut a, mut b, mut c] = fill_to_the_cap(&nodes).await;
    let mut d = connect(&n1, "d").await;
    d.subscribe(STADIUM).await;
    d.expect(ack()).await;
    let mut snapshot = joined(STADIUM, json!([entry("a"), entry("b"), entry("c")]));
    snapshot["occupancy"] = json!({"peers": 4});
    assert_eq!(
        next_skipping_counts(&mut d).await,
        snapshot,
        "capped, from n1"
    );
    for watcher in [&mut a, &mut b, &mut c] {
        watcher.expect(count(4)).await;
    }
    let mut e = connect(&n0, "e").await;
    e.subscribe(STADIUM).await;
    e.expect(ack()).await;
    snapshot["occupancy"] = json!({"peers": 5});
    assert_eq!(next_skipping_counts(&mut e).await, snapshot);
    // d, on the other node, hears no `joined` for e: only the count, within a second.
    loop {
        let frame = d.next().await;
        assert!(is_count_over_cap(&frame), "d got {frame}");
        if frame["occupancy"]["peers"] == 5 {
            break;
        }
    }
    only_counts_since(&nodes, &mut [&mut a, &mut d, &mut e]).await;
}
