//! Lossless reconnect through the `Engine` trait on both engines: parking, taking a position
//! once, replaying the gap before live messages, and the direct inbox with its bounds. The
//! Redis scenarios at the end resume on another node than the one the peer dropped from.

use std::sync::Arc;
use std::time::Duration;

use herald_protocol::encode;
use herald_server::engine::memory::{MemoryEngine, MemorySettings};
use herald_server::engine::{Departure, Direct, Engine, SubscribeRequest, Target};
use herald_server::history::History;
use herald_server::ids::{AppId, ChannelName, PeerId};
use herald_server::resume::book::Queued;
use herald_server::resume::{Recovery, ResumeFrom, ResumeSettings, Since};
use serde_json::json;
use serde_json::value::RawValue;

use crate::harness::{connect, Client, ClientSpec, Nodes, APP};
use crate::history::rooms;

const ROOM: &str = "room/1";
/// Inbox bounds small enough to reach.
const INBOX_MAX: usize = 3;

fn settings() -> ResumeSettings {
    ResumeSettings {
        window: Duration::from_secs(30),
        inbox_ttl: Duration::from_secs(30),
        inbox_max_messages: INBOX_MAX,
        inbox_max_bytes: 64 * 1024,
        max_replay: 1000,
        confirm_after: Duration::from_secs(1),
    }
}

/// A memory engine with `room/*` history (rewind 20, so a wrongly applied rewind would show).
pub fn memory() -> Nodes {
    let engine = MemoryEngine::with_settings(MemorySettings {
        history: History::from_config(&rooms(20, 1000)),
        resume: settings(),
        ..MemorySettings::default()
    });
    let engine: Arc<dyn Engine> = Arc::new(engine);
    Nodes::from_engines(vec![engine])
}

/// `count` Redis nodes with the same history and resume settings.
pub async fn redis(count: usize) -> Nodes {
    Nodes::redis_with_resume(count, &rooms(20, 1000), settings()).await
}

fn room() -> ChannelName {
    ChannelName::new(ROOM.to_string())
}

async fn publish_range(publisher: &Client, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        publisher
            .publish(ROOM, &format!("{{\"i\":{i}}}"), None)
            .await;
    }
}

/// Reads `range` as consecutive message offsets (and data) from `client`.
async fn expect_offsets(client: &mut Client, range: std::ops::RangeInclusive<u64>) {
    for want in range {
        let frame = client.next().await;
        assert_eq!(
            (&frame["type"], &frame["offset"], &frame["data"]["i"]),
            (&json!("message"), &json!(want), &json!(want)),
            "{frame}"
        );
    }
}

/// Takes `peer`'s parked position in `room()` on `taker`; a second take, on `again` (the same
/// node or another), finds nothing: a position is handed out exactly once.
async fn take_once(
    taker: &Arc<dyn Engine>,
    again: &Arc<dyn Engine>,
    app: &AppId,
    peer: &PeerId,
) -> Since {
    let since = taker
        .take_position(app, peer, &room())
        .await
        .expect("a parked position");
    assert_eq!(
        again.take_position(app, peer, &room()).await,
        None,
        "taken once"
    );
    since
}

/// Subscribes `client` resuming from `since`, with `recovered` acks for request `r`.
async fn subscribe_from(client: &Client, since: Since) -> Recovery {
    let channel = room();
    let request = SubscribeRequest {
        conn: &client.conn,
        channel: &channel,
        target: Target::Channel,
        include_sender_metadata: false,
        ack: None,
        max_app_patterns: usize::MAX,
    };
    let from = ResumeFrom {
        since,
        acks: Some((
            encode::ack_recovered("r", true).into(),
            encode::ack_recovered("r", false).into(),
        )),
        max_replay: 1000,
    };
    let (is_new, recovery) = client.engine.subscribe_from(request, from).await.unwrap();
    assert!(is_new);
    recovery
}

/// A dropped subscriber's position is parked, taken back exactly once, and its resubscribe
/// gets the ack, the snapshot, the gap in order (no rewind), then live messages.
pub async fn a_parked_position_is_taken_once_and_replays_the_gap(nodes: Nodes) {
    let engine = nodes.engine();
    let publisher = connect(&engine, "pub").await;
    let mut alice = ClientSpec::new("alice")
        .without_presence()
        .connect(&engine)
        .await;
    alice.subscribe(ROOM).await;
    alice.expect(json!({"type": "ack", "requestId": "s"})).await;
    publish_range(&publisher, 1..=5).await;
    expect_offsets(&mut alice, 1..=5).await;
    let positions = engine.positions(alice.app(), &[room()]).await;
    assert_eq!(positions.len(), 1);
    assert_eq!(positions[0].1.offset, 5, "{positions:?}");
    // Confirmed up to 3 only: 4 and 5 were in the unconfirmed interval.
    let mut confirmed = positions[0].1.clone();
    confirmed.offset = 3;
    engine.park(&alice.conn, vec![(room(), confirmed)]).await;
    alice.disconnect(Departure::Dropped).await;
    publish_range(&publisher, 6..=10).await;

    let (app, peer) = (
        AppId::new(APP.to_string()),
        PeerId::new("alice".to_string()),
    );
    let since = take_once(&engine, &engine, &app, &peer).await;
    assert_eq!(since.offset, 3);

    let mut back = ClientSpec::new("alice")
        .without_presence()
        .connect(&engine)
        .await;
    let recovery = subscribe_from(&back, since).await;
    assert_eq!(recovery, Recovery::Recovered { replayed: 7 });
    back.expect(json!({"type": "ack", "requestId": "r", "recovered": true}))
        .await;
    expect_offsets(&mut back, 4..=10).await;
    publish_range(&publisher, 11..=12).await;
    expect_offsets(&mut back, 11..=12).await;
    back.expect_nothing_queued();
}

/// A gap that cannot be filled whole (another epoch) replays nothing, rewind included, and
/// the failed ack says so; live messages still follow.
pub async fn a_gap_that_cannot_be_filled_replays_nothing(nodes: Nodes) {
    let engine = nodes.engine();
    let publisher = connect(&engine, "pub").await;
    publish_range(&publisher, 1..=4).await;
    let mut alice = ClientSpec::new("alice")
        .without_presence()
        .connect(&engine)
        .await;
    let since = Since {
        epoch: Some(Arc::from("not-this-one")),
        offset: 2,
    };
    assert_eq!(subscribe_from(&alice, since).await, Recovery::Failed);
    alice
        .expect(json!({"type": "ack", "requestId": "r", "recovered": false}))
        .await;
    publish_range(&publisher, 5..=5).await;
    expect_offsets(&mut alice, 5..=5).await;
    alice.expect_nothing_queued();
}

fn direct<'a>(
    app: &'a AppId,
    to: &'a PeerId,
    from: &'a PeerId,
    data: &'a RawValue,
    sender: &'a Client,
) -> Direct<'a> {
    Direct {
        app,
        to,
        from,
        from_metadata: None,
        data,
        exclude: Some(&sender.conn),
    }
}

/// Directs to a parked peer are held up to the inbox's bound (then refused, so order is kept
/// and the sender knows), and are the first thing its next connection gets, in order; once it
/// is back, directs reach it live. A peer that was never parked gets none held.
pub async fn the_inbox_holds_directs_in_order_up_to_its_bound(nodes: Nodes) {
    let engine = nodes.engine();
    let bob = connect(&engine, "bob").await;
    let alice = connect(&engine, "alice").await;
    engine.park(&alice.conn, Vec::new()).await;
    alice.disconnect(Departure::Dropped).await;
    let app = AppId::new(APP.to_string());
    let (to, from) = (
        PeerId::new("alice".to_string()),
        PeerId::new("bob".to_string()),
    );
    for n in 1..=INBOX_MAX + 1 {
        let data = RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap();
        let d = direct(&app, &to, &from, &data, &bob);
        assert_eq!(engine.send_direct(d).await.unwrap(), 0, "parked: not live");
        let want = if n <= INBOX_MAX {
            Queued::Queued
        } else {
            Queued::Full
        };
        assert_eq!(engine.queue_direct(d).await.unwrap(), want, "direct {n}");
    }
    let nobody = PeerId::new("carol".to_string());
    let data = RawValue::from_string("{}".to_string()).unwrap();
    let d = direct(&app, &nobody, &from, &data, &bob);
    assert_eq!(engine.queue_direct(d).await.unwrap(), Queued::NotParked);

    let mut back = connect(&engine, "alice").await;
    for n in 1..=INBOX_MAX {
        back.expect(json!({"type": "direct", "from": "bob", "data": {"n": n}}))
            .await;
    }
    bob.send("alice", "{\"n\":\"live\"}", None).await;
    back.expect(json!({"type": "direct", "from": "bob", "data": {"n": "live"}}))
        .await;
    back.expect_nothing_queued();
}

/// Redis: a peer that dropped from node 0 reconnects to node 1 and resumes there: the direct
/// sent (from node 2) while it was away comes first, then its resubscribe replays the
/// messages published (on node 2) meanwhile.
pub async fn a_peer_resumes_on_another_node(nodes: Nodes) {
    let (first, second, third) = (nodes.node(0), nodes.node(1), nodes.node(2));
    let publisher = connect(&third, "pub").await;
    let mut alice = ClientSpec::new("alice")
        .without_presence()
        .connect(&first)
        .await;
    alice.subscribe(ROOM).await;
    alice.expect(json!({"type": "ack", "requestId": "s"})).await;
    publish_range(&publisher, 1..=3).await;
    expect_offsets(&mut alice, 1..=3).await;
    let positions = first.positions(alice.app(), &[room()]).await;
    assert_eq!(positions[0].1.offset, 3, "{positions:?}");
    first.park(&alice.conn, positions).await;
    alice.disconnect(Departure::Dropped).await;
    publish_range(&publisher, 4..=8).await;
    let app = AppId::new(APP.to_string());
    let (to, from) = (
        PeerId::new("alice".to_string()),
        PeerId::new("pub".to_string()),
    );
    let data = RawValue::from_string("{\"sdp\":1}".to_string()).unwrap();
    let d = direct(&app, &to, &from, &data, &publisher);
    assert_eq!(third.send_direct(d).await.unwrap(), 0);
    assert_eq!(third.queue_direct(d).await.unwrap(), Queued::Queued);

    let mut back = ClientSpec::new("alice")
        .without_presence()
        .connect(&second)
        .await;
    back.expect(json!({"type": "direct", "from": "pub", "data": {"sdp": 1}}))
        .await;
    let peer = PeerId::new("alice".to_string());
    let since = take_once(&second, &first, &app, &peer).await;
    assert_eq!(
        subscribe_from(&back, since).await,
        Recovery::Recovered { replayed: 5 }
    );
    back.expect(json!({"type": "ack", "requestId": "r", "recovered": true}))
        .await;
    expect_offsets(&mut back, 4..=8).await;
    publish_range(&publisher, 9..=9).await;
    expect_offsets(&mut back, 9..=9).await;
    back.expect_nothing_queued();
}

/// Redis: the same parked position, taken by two nodes at once, goes to exactly one.
pub async fn only_one_node_takes_a_position(nodes: Nodes) {
    let (first, second) = (nodes.node(0), nodes.node(1));
    let alice = connect(&first, "alice").await;
    let since = Since {
        epoch: Some(Arc::from("e")),
        offset: 7,
    };
    first.park(&alice.conn, vec![(room(), since.clone())]).await;
    alice.disconnect(Departure::Dropped).await;
    let (app, peer) = (
        AppId::new(APP.to_string()),
        PeerId::new("alice".to_string()),
    );
    let channel = room();
    let (a, b) = tokio::join!(
        first.take_position(&app, &peer, &channel),
        second.take_position(&app, &peer, &channel)
    );
    let taken: Vec<_> = [a, b].into_iter().flatten().collect();
    assert_eq!(taken, vec![since]);
}

/// Redis: a peer still connected on another node is not parked (its directs stay live).
pub async fn a_peer_connected_elsewhere_is_not_parked(nodes: Nodes) {
    let (first, second) = (nodes.node(0), nodes.node(1));
    let bob = connect(&first, "bob").await;
    let alice = connect(&first, "alice").await;
    let mut other_tab = connect(&second, "alice").await;
    first.park(&alice.conn, Vec::new()).await;
    alice.disconnect(Departure::Dropped).await;
    let (app, peer) = (
        AppId::new(APP.to_string()),
        PeerId::new("alice".to_string()),
    );
    assert_eq!(first.take_position(&app, &peer, &room()).await, None);
    assert_eq!(bob.send("alice", "{\"n\":1}", None).await, 1);
    other_tab
        .expect(json!({"type": "direct", "from": "bob", "data": {"n": 1}}))
        .await;
}

/// Polls Redis (bounded) until `check` holds on the reply of `cmd`.
async fn wait_redis<T: redis::FromRedisValue>(
    nodes: &Nodes,
    cmd: &redis::Cmd,
    what: &str,
    check: impl Fn(&T) -> bool,
) {
    for _ in 0..200 {
        if check(&nodes.redis_command::<T>(cmd).await) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never: {what}");
}

/// Redis: a node that dies before it sees its client drop parks nothing, but the positions its
/// watermark confirmed were written lazily: while it lives another node leaves them alone (they
/// belong to a live connection), once it is dead another node takes them, once, and the
/// resubscribe replays the gap. Once the dead node is reaped, directs to the peer wait for it.
pub async fn positions_outlive_a_node_that_dies_before_parking(mut nodes: Nodes) {
    let first = nodes.node(0);
    let publisher = connect(&nodes.node(1), "pub").await;
    let mut alice = ClientSpec::new("alice")
        .without_presence()
        .connect(&first)
        .await;
    alice.subscribe(ROOM).await;
    alice.expect(json!({"type": "ack", "requestId": "s"})).await;
    publish_range(&publisher, 1..=3).await;
    expect_offsets(&mut alice, 1..=3).await;
    let positions = first.positions(alice.app(), &[room()]).await;
    first.confirmed(&alice.conn, positions);
    let lazy = redis::cmd("KEYS").arg("*alice*:lpos").clone();
    wait_redis::<Vec<String>>(&nodes, &lazy, "positions written", |k| k.len() == 1).await;
    let (app, peer) = (
        AppId::new(APP.to_string()),
        PeerId::new("alice".to_string()),
    );
    let second = nodes.node(1);
    assert_eq!(
        second.take_position(&app, &peer, &room()).await,
        None,
        "the writer lives: a live connection's position is not taken"
    );

    let topics = redis::cmd("PUBSUB").arg("CHANNELS").arg("*node:*").clone();
    let before: Vec<String> = nodes.redis_command(&topics).await;
    drop(alice);
    drop(first);
    nodes.crash(0);
    wait_redis::<Vec<String>>(&nodes, &topics, "the dead node's topic gone", |t| {
        t.len() + 1 == before.len()
    })
    .await;
    // The survivors reap the dead node (simulated: its route entry goes), then a direct to
    // the peer finds no route: it waits, since the dead node could not park the peer.
    let route = redis::cmd("KEYS").arg("*alice*:route").clone();
    for key in nodes.redis_command::<Vec<String>>(&route).await {
        nodes
            .redis_command::<i64>(redis::cmd("DEL").arg(&key))
            .await;
    }
    let data = RawValue::from_string("{\"sdp\":2}".to_string()).unwrap();
    let from = PeerId::new("pub".to_string());
    let d = direct(&app, &peer, &from, &data, &publisher);
    assert_eq!(second.send_direct(d).await.unwrap(), 0);
    assert_eq!(second.queue_direct(d).await.unwrap(), Queued::Queued);
    publish_range(&publisher, 4..=6).await;
    let since = take_once(&second, &second, &app, &peer).await;
    assert_eq!(since.offset, 3);
    let mut back = ClientSpec::new("alice")
        .without_presence()
        .connect(&second)
        .await;
    back.expect(json!({"type": "direct", "from": "pub", "data": {"sdp": 2}}))
        .await;
    assert_eq!(
        subscribe_from(&back, since).await,
        Recovery::Recovered { replayed: 3 }
    );
    back.expect(json!({"type": "ack", "requestId": "r", "recovered": true}))
        .await;
    expect_offsets(&mut back, 4..=6).await;
    back.expect_nothing_queued();
}
