//! Connection lifecycle (spec §5.1-5.2, §8.3, §12, §15): presence deltas and reference counting,
//! per-connection FIFO, graceful shutdown, WebSocket pings and dead-socket reaping.
#![allow(clippy::unwrap_used)]
use herald_testkit::prelude::*;

use serde_json::json;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn left(channel: &str, peer: &str) -> serde_json::Value {
    json!({"type":"presence","channel":channel,"joined":[],"left":[{"peerId":peer}]})
}

fn joined(channel: &str, peer: &str) -> serde_json::Value {
    json!({"type":"presence","channel":channel,"joined":[{"peerId":peer}],"left":[]})
}

#[tokio::test]
async fn closing_a_connection_emits_left_to_others_only() {
    let server = TestServer::start().await;
    let mut a = server.client("alice").await;
    let mut b = server.client("bob").await;
    let mut c = server.client("carol").await;
    for ch in ["room/a", "room/b"] {
        a.subscribe(ch).await;
        b.subscribe(ch).await;
        assert_eq!(a.recv().await, joined(ch, "bob"));
    }
    c.subscribe("room/a").await;
    assert_eq!(a.recv().await, joined("room/a", "carol"));
    assert_eq!(b.recv().await, joined("room/a", "carol"));
    // bob closes without unsubscribing (as MeteredPeer.close() does): left on both channels.
    b.close().await;
    let mut got = vec![a.recv().await, a.recv().await];
    got.sort_by_key(|f| f["channel"].as_str().unwrap().to_string());
    assert_eq!(got, vec![left("room/a", "bob"), left("room/b", "bob")]);
    assert_eq!(c.recv().await, left("room/a", "bob"));
    a.expect_silence(100).await;
    c.expect_silence(50).await;
}

/// A socket that ends with no close frame is a drop: its peer stays present for the reconnect
/// grace, then `left` goes out (on the default memory engine as on Redis).
#[tokio::test]
async fn abrupt_tcp_drop_emits_left_after_the_grace() {
    let grace = Duration::from_millis(600);
    let config = config_with(|c| c.engine.reconnect_grace_ms = grace.as_millis() as u64);
    let server = TestServer::start_with(config).await;
    let mut watcher = server.client("watcher").await;
    watcher.subscribe("room/drop").await;
    let mut raw = RawWs::connect(server.addr, &format!("token={}", token("dropper"))).await;
    raw.recv_json().await;
    raw.send_text(r#"{"type":"subscribe","channel":"room/drop","requestId":"s"}"#)
        .await;
    assert_eq!(raw.recv_json().await, ack("s"));
    raw.recv_json().await;
    assert_eq!(watcher.recv().await, joined("room/drop", "dropper"));
    let dropped_at = Instant::now();
    drop(raw); // no close frame at all
    assert_eq!(watcher.recv().await, left("room/drop", "dropper"));
    assert!(
        dropped_at.elapsed() >= grace,
        "left {:?} after the drop, inside the grace",
        dropped_at.elapsed()
    );
}

#[tokio::test]
async fn unsubscribe_emits_left_to_others_and_nothing_to_self() {
    let server = TestServer::start().await;
    let mut a = server.client_with_meta("alice", r#"{"n":1}"#).await;
    let mut b = server.client("bob").await;
    a.subscribe("room/u").await;
    b.subscribe("room/u").await;
    a.recv().await;
    a.expect_ack(json!({"type":"unsubscribe","channel":"room/u"}), "u1")
        .await;
    let frame = b.recv().await;
    assert_eq!(frame["left"][0]["peerId"], "alice");
    assert_eq!(frame["joined"], json!([]));
    a.expect_silence(150).await;
    // Unsubscribing again is still an ack and emits nothing.
    a.expect_ack(json!({"type":"unsubscribe","channel":"room/u"}), "u2")
        .await;
    b.expect_silence(150).await;
    // After unsubscribing, alice no longer receives the channel's messages.
    b.publish("room/u", json!(1), "p").await;
    a.expect_silence(150).await;
    // Re-subscribing is a fresh join.
    let (_, snap) = a.subscribe("room/u").await;
    assert_eq!(peer_ids(&snap["joined"]), vec!["bob"]);
    assert_eq!(b.recv().await["joined"][0]["peerId"], "alice");
}

#[tokio::test]
async fn same_peer_on_two_sockets_reference_counting_with_unsubscribe() {
    let server = TestServer::start().await;
    let mut w = server.client("watcher").await;
    w.subscribe("room/rc").await;
    let mut a1 = server.client_with_meta("alice", r#"{"v":1}"#).await;
    let mut a2 = server.client_with_meta("alice", r#"{"v":2}"#).await;
    a1.subscribe("room/rc").await;
    assert_eq!(
        w.recv().await,
        json!({"type":"presence","channel":"room/rc","joined":[{"peerId":"alice","metadata":{"v":1}}],"left":[]})
    );
    // The second connection's snapshot excludes alice herself (spec Q18), and no new joined.
    let (_, snap) = a2.subscribe("room/rc").await;
    assert_eq!(peer_ids(&snap["joined"]), vec!["watcher"]);
    a1.expect_silence(100).await;
    w.expect_silence(100).await;
    // Rosters list alice once, with the metadata of her most recent subscription.
    let mut late = server.client("late").await;
    let (_, snap) = late.subscribe("room/rc").await;
    let entries = snap["joined"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{snap}");
    let alice = entries.iter().find(|e| e["peerId"] == "alice").unwrap();
    assert_eq!(alice["metadata"], json!({"v":2}));
    for c in [&mut w, &mut a1, &mut a2] {
        assert_eq!(c.recv().await, joined("room/rc", "late"));
    }
    // One connection unsubscribes: no left. The other unsubscribes: one left.
    a1.expect_ack(json!({"type":"unsubscribe","channel":"room/rc"}), "u1")
        .await;
    w.expect_silence(150).await;
    a2.expect_ack(json!({"type":"unsubscribe","channel":"room/rc"}), "u2")
        .await;
    for c in [&mut w, &mut late] {
        let f = c.recv().await;
        assert_eq!(peer_ids(&f["left"]), vec!["alice"]);
        assert_eq!(f["joined"], json!([]));
    }
    w.expect_silence(100).await;
}

#[tokio::test]
async fn connections_without_presence_get_no_presence_but_still_appear() {
    let server = TestServer::start().await;
    let mut np_claims = claims("quiet");
    np_claims.permissions = Some(vec!["subscribe".into(), "publish".into()]);
    let mut quiet = server.client_with_token(&token_for(&np_claims)).await;
    let mut loud = server.client("loud").await;
    loud.subscribe("room/p").await;
    // Ack, then no snapshot at all.
    assert_eq!(
        quiet
            .request(json!({"type":"subscribe","channel":"room/p"}), "q1")
            .await,
        ack("q1")
    );
    quiet.expect_silence(200).await;
    // ...but others see it join.
    assert_eq!(loud.recv().await, joined("room/p", "quiet"));
    // No deltas either, for joins or leaves.
    let mut third = server.client("third").await;
    let (_, snap) = third.subscribe("room/p").await;
    assert_eq!(peer_ids(&snap["joined"]), vec!["loud", "quiet"]);
    loud.recv().await;
    third.close().await;
    loud.recv().await;
    quiet.expect_silence(200).await;
    // A duplicate subscribe is still acked, still without a snapshot.
    assert_eq!(
        quiet
            .request(json!({"type":"subscribe","channel":"room/p"}), "q2")
            .await,
        ack("q2")
    );
    quiet.expect_silence(150).await;
    // Messages still flow to it, and its leave is seen by others.
    loud.publish("room/p", json!("hello"), "p1").await;
    assert_eq!(quiet.recv().await["data"], "hello");
    quiet.close().await;
    assert_eq!(loud.recv().await, left("room/p", "quiet"));
}

#[tokio::test]
async fn ack_snapshot_delta_fifo_with_a_direct_reacting_to_the_join() {
    let server = TestServer::start().await;
    let mut member = server.client("member").await;
    member.subscribe("room/fifo").await;
    let mut newcomer = server.client("newcomer").await;
    // Several rounds: the member reacts to each join with a direct as fast as it can.
    for round in 0..20 {
        let channel = format!("room/fifo{round}");
        member.subscribe(&channel).await;
        newcomer
            .send_json(json!({"type":"subscribe","channel":channel,"requestId":"n"}))
            .await;
        let delta = member.recv().await;
        assert_eq!(delta, joined(&channel, "newcomer"));
        member
            .send_json(json!({"type":"send","to":"newcomer","data":{"offer":round}}))
            .await;
        // The newcomer sees ack, then the full snapshot, then the direct.
        assert_eq!(newcomer.recv().await, ack("n"));
        let snap = newcomer.recv().await;
        assert_eq!(peer_ids(&snap["joined"]), vec!["member"], "{snap}");
        assert_eq!(
            newcomer.recv().await,
            json!({"type":"direct","from":"member","data":{"offer":round}})
        );
    }
}

#[tokio::test]
async fn burst_of_publishes_arrives_in_order_and_a_direct_after_them() {
    let config = config_with(|c| c.limits.rate_burst = 2000.0);
    let server = TestServer::start_with(config).await;
    let mut a = server.client("alice").await;
    let mut b = server.client("bob").await;
    b.subscribe("room/order").await;
    a.send_burst(
        (0..500).map(|i| json!({"type":"publish","channel":"room/order","data":i}).to_string()),
    )
    .await;
    a.send_json(json!({"type":"send","to":"bob","data":"after"}))
        .await;
    for i in 0..500 {
        let m = b.recv().await;
        assert_eq!(m["type"], "message");
        assert_eq!(m["data"], i, "message {i} out of order: {m}");
    }
    assert_eq!(
        b.recv().await,
        json!({"type":"direct","from":"alice","data":"after"})
    );
    // And mixed order: publish, direct, publish.
    a.send_json(json!({"type":"publish","channel":"room/order","data":"p1"}))
        .await;
    a.send_json(json!({"type":"send","to":"bob","data":"d"}))
        .await;
    a.send_json(json!({"type":"publish","channel":"room/order","data":"p2"}))
        .await;
    assert_eq!(b.recv().await["data"], "p1");
    assert_eq!(b.recv().await["data"], "d");
    assert_eq!(b.recv().await["data"], "p2");
}

#[tokio::test]
async fn graceful_shutdown_flushes_then_going_away_then_1001() {
    let mut server = TestServer::start().await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = server.client(&format!("p{i}")).await;
        c.subscribe("room/sd").await;
        clients.push(c);
    }
    let (mut pk, _) = server.pk_client(PK).await;
    // Drain the joins.
    for (i, c) in clients.iter_mut().enumerate() {
        for _ in i + 1..5 {
            c.recv().await;
        }
    }
    let started = Instant::now();
    let run = server.begin_shutdown();
    for c in clients.iter_mut().chain(std::iter::once(&mut pk)) {
        let ga = c.recv().await;
        assert_eq!(ga["type"], "going_away", "{ga}");
        let retry = ga["retryAfterMs"].as_u64().expect("integer retryAfterMs");
        assert!(retry > 0 && retry <= 300_000, "{ga}");
        let (code, frames) = c.recv_close().await;
        assert_eq!(code, 1001);
        // Others closing for the shutdown are not announced as `left`: they will be back in a
        // moment, and a `left` would make clients tear down peers they are about to rebuild.
        assert!(frames.is_empty(), "{frames:?}");
    }
    tokio::time::timeout(Duration::from_secs(6), run)
        .await
        .expect("run returns within the deadline")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(6));
}

#[tokio::test]
async fn no_new_connections_once_shutdown_began() {
    let mut server = TestServer::start().await;
    let mut a = server.client("alice").await;
    let run = server.begin_shutdown();
    assert_eq!(a.recv().await["type"], "going_away");
    // Whatever the refusal looks like (no listener, HTTP 503, or a close), no welcome.
    let attempt = tokio::time::timeout(
        Duration::from_secs(3),
        Client::try_connect(&server.token_url(&token("late"))),
    )
    .await;
    if let Ok(Ok(mut late)) = attempt {
        match late.next_event().await {
            Event::Frame(f) => assert_ne!(f["type"], "welcome", "welcomed during shutdown"),
            Event::Close(..) | Event::Ended => {}
        }
    }
    assert_eq!(a.recv_close().await.0, 1001);
    tokio::time::timeout(Duration::from_secs(6), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_with_no_connections_returns_promptly() {
    let server = TestServer::start().await;
    let started = Instant::now();
    server.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn shutdown_returns_by_the_deadline_even_if_a_client_never_reads() {
    let config = config_with(|c| c.timing.shutdown_deadline_secs = 2);
    let mut server = TestServer::start_with(config).await;
    // A raw client that never reads nor answers anything.
    let mut raw = RawWs::connect(server.addr, &format!("token={}", token("deaf"))).await;
    raw.recv_json().await;
    let started = Instant::now();
    let run = server.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("run returns")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn server_sends_websocket_pings() {
    let config = config_with(|c| c.timing.ping_interval_secs = 1);
    let server = TestServer::start_with(config).await;
    let mut c = server.client("alice").await;
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut pinged = false;
    while Instant::now() < deadline {
        match c.next_raw(Duration::from_millis(500)).await {
            Some(Message::Ping(_)) => {
                pinged = true;
                break;
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => {}
        }
    }
    assert!(pinged, "no WebSocket ping within 4 s");
    // tungstenite answered the ping: the connection lives on past the grace period.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.sync().await;
}

#[tokio::test]
async fn silent_socket_is_reaped_and_others_see_left() {
    let config = config_with(|c| {
        c.timing.ping_interval_secs = 1;
        c.timing.pong_grace_secs = 1;
        // A reaped socket is a drop; with no reconnect grace its `left` marks the reap itself.
        c.engine.reconnect_grace_ms = 0;
    });
    let server = TestServer::start_with(config).await;
    let mut watcher = server.client("watcher").await;
    watcher.subscribe("room/reap").await;
    let mut raw = RawWs::connect(server.addr, &format!("token={}", token("zombie"))).await;
    assert_eq!(raw.recv_json().await["type"], "welcome");
    raw.send_text(r#"{"type":"subscribe","channel":"room/reap","requestId":"z"}"#)
        .await;
    assert_eq!(raw.recv_json().await, ack("z"));
    raw.recv_json().await;
    assert_eq!(watcher.recv().await, joined("room/reap", "zombie"));
    // From here on the raw client reads but never answers pings. The watcher is read at the
    // same time (tungstenite answers pings only while it is being read).
    let started = Instant::now();
    let zombie = async {
        let mut pings = 0;
        loop {
            match raw.read_frame_within(Duration::from_secs(8)).await {
                Some(RawFrame::Ping(_)) => pings += 1,
                Some(RawFrame::Close(_)) | None => break,
                Some(other) => panic!("unexpected {other:?}"),
            }
        }
        (pings, started.elapsed())
    };
    let ((pings, elapsed), seen) =
        tokio::join!(zombie, watcher.recv_within(Duration::from_secs(8)));
    assert!(pings >= 1, "the server pinged before reaping");
    assert!(
        elapsed <= Duration::from_secs(6),
        "reaped after {elapsed:?}"
    );
    assert_eq!(seen, left("room/reap", "zombie"));
    // The watcher, which answers pings, is alive.
    watcher.sync().await;
}

#[tokio::test]
async fn a_client_that_closes_gets_its_close_acknowledged() {
    let server = TestServer::start().await;
    let mut raw = RawWs::connect(server.addr, &format!("token={}", token("alice"))).await;
    raw.recv_json().await;
    raw.send_frame(OP_CLOSE, &1000u16.to_be_bytes(), true).await;
    assert_eq!(raw.recv_close().await, Some(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_joins_and_leaves_keep_every_roster_consistent() {
    use std::collections::BTreeSet;
    const N: usize = 24;
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for i in 0..N {
        clients.push(server.client(&format!("p{i:02}")).await);
    }
    let everyone: BTreeSet<String> = (0..N).map(|i| format!("p{i:02}")).collect();
    // Everyone subscribes at once: snapshot + joined deltas = everyone else, each exactly once.
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let everyone = everyone.clone();
            tokio::spawn(async move {
                let me = format!("p{i:02}");
                c.send_json(json!({"type":"subscribe","channel":"room/conc","requestId":"s"}))
                    .await;
                assert_eq!(c.recv().await, ack("s"));
                let snap = c.recv().await;
                assert_eq!(snap["left"], json!([]));
                let mut roster: BTreeSet<String> = peer_ids(&snap["joined"]).into_iter().collect();
                while roster.len() < N - 1 {
                    let f = c.recv().await;
                    assert_eq!(f["left"], json!([]), "{me}: {f}");
                    for id in peer_ids(&f["joined"]) {
                        assert!(roster.insert(id.clone()), "{me}: {id} joined twice");
                    }
                }
                let mut expected = everyone.clone();
                expected.remove(&me);
                assert_eq!(roster, expected, "{me}");
                (me, c)
            })
        })
        .collect();
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    // Half leave at once while the others watch: each watcher sees exactly those `left`s.
    let (leaving, staying): (Vec<_>, Vec<_>) = clients
        .into_iter()
        .partition(|(id, _)| id.trim_start_matches('p').parse::<usize>().unwrap() % 2 == 0);
    let gone: BTreeSet<String> = leaving.iter().map(|(id, _)| id.clone()).collect();
    let watchers: Vec<_> = staying
        .into_iter()
        .map(|(me, mut c)| {
            let gone = gone.clone();
            tokio::spawn(async move {
                let mut seen = BTreeSet::new();
                while seen.len() < gone.len() {
                    let f = c.recv().await;
                    assert_eq!(f["joined"], json!([]), "{me}: {f}");
                    for id in peer_ids(&f["left"]) {
                        assert!(seen.insert(id.clone()), "{me}: {id} left twice");
                    }
                }
                assert_eq!(seen, gone, "{me}");
                c.expect_silence(150).await;
                c // kept open until every watcher is done
            })
        })
        .collect();
    for (_, c) in leaving {
        tokio::spawn(c.close());
    }
    let mut kept = Vec::new();
    for w in watchers {
        kept.push(w.await.unwrap());
    }
}

/// With write coalescing on, frames still arrive, in order, and a lone frame is not held back
/// waiting for company.
#[tokio::test]
async fn write_delay_coalesces_without_losing_or_reordering_frames() {
    let mut config = test_config();
    config.timing.write_delay_ms = 20;
    let server = TestServer::start_with(config).await;
    let mut receiver = server.client("r").await;
    receiver.subscribe("room").await;
    let mut sender = server.client("s").await;
    sender.subscribe("room").await;
    assert_eq!(receiver.recv().await["joined"][0]["peerId"], "s");
    for i in 0..5 {
        sender
            .send_json(json!({"type": "publish", "channel": "room", "data": i}))
            .await;
    }
    for i in 0..5 {
        assert_eq!(receiver.recv().await["data"], i);
    }
    sender
        .send_json(json!({"type": "publish", "channel": "room", "data": "alone"}))
        .await;
    assert_eq!(receiver.recv().await["data"], "alone");
}
