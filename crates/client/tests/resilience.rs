//! Reconnects, resubscribes, terminal codes, timeouts and hostile input: a real Herald that is
//! restarted on the same port or kicks peers over REST, and a scripted fake server for what
//! Herald never does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use herald_client::{
    ConnectionEvent, ConnectionState, DataKind, Error, Peer, PeerError, PeerOptions, PeerState,
    ReconnectOptions, SignallingClient, SignallingClientOptions, SubscribeOptions,
};
use herald_testkit::prelude::*;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const WITH_META: SubscribeOptions = SubscribeOptions {
    include_sender_metadata: true,
};

fn is_reconnected(e: &ConnectionEvent) -> bool {
    matches!(
        e,
        ConnectionEvent::Connected {
            is_reconnect: true,
            ..
        }
    )
}

fn is_state(e: &ConnectionEvent, state: ConnectionState) -> bool {
    matches!(e, ConnectionEvent::StateChanged { to, .. } if *to == state)
}

async fn peer_in(url: &str, sub: &str, channel: &str, reconnect: bool) -> Peer {
    let mut client = options_for(url, sub);
    if !reconnect {
        client.reconnect = None;
    }
    let peer = Peer::new(PeerOptions::new(client)).unwrap();
    peer.join_with(channel, WITH_META).await.unwrap();
    peer
}

/// Shuts `server` down and starts a fresh Herald (empty state) on the same port, retrying the
/// bind while the OS still holds the port.
async fn restart(server: TestServer) -> TestServer {
    let addr = server.addr;
    server.shutdown().await;
    let mut last = None;
    for _ in 0..100 {
        match TcpListener::bind(addr).await {
            Ok(listener) => return TestServer::serve(listener, test_config()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("could not re-bind {addr}: {last:?}");
}

/// `DELETE /v1/peers/:id` (spec §13.6): closes every connection of the peer with 4020.
async fn kick(server: &TestServer, peer_id: &str) -> Value {
    let response = reqwest::Client::new()
        .delete(format!("{}/v1/peers/{peer_id}", server.http()))
        .header("authorization", format!("Bearer {SK_ID}:{SK_SECRET}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Reads `peer_joined` until exactly these peers (in any order) have arrived.
async fn expect_joined(
    joined: &mut herald_client::EventStream<herald_client::RemotePeer>,
    ids: &[&str],
) {
    let mut seen = Vec::new();
    while seen.len() < ids.len() {
        seen.push(
            next(joined, &format!("peer_joined for {ids:?}"))
                .await
                .peer_id()
                .to_string(),
        );
    }
    seen.sort();
    let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(seen, want);
}

/// Waits until `watcher` (subscribed to `channel`) has seen `peer_id` in its presence.
async fn wait_present(
    presence: &mut herald_client::EventStream<herald_client::PresenceEvent>,
    channel: &str,
    peer_id: &str,
) {
    next_matching(presence, &format!("{peer_id} in {channel}"), |p| {
        p.channel == channel && p.joined.iter().any(|j| j.peer_id == peer_id)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_reconnects_resubscribes_and_reconciles() {
    let server = TestServer::start().await;
    let url = server.origin();

    // A raw client in the lobby (with sender metadata) and in the room.
    let alice = SignallingClient::new(options_for(&url, "alice")).unwrap();
    let mut alice_events = alice.connection_events();
    let mut alice_going_away = alice.going_away();
    let mut alice_messages = alice.messages();
    alice.connect().await.unwrap();
    alice.subscribe("lobby", WITH_META).await.unwrap();
    alice
        .subscribe("room", SubscribeOptions::default())
        .await
        .unwrap();

    // Bob's reconnects wait at his token provider until the test opens the gate: the
    // reconcile is against the snapshot at bob's resubscribe, so the survivors must be back
    // first (a peer still reconnecting at that moment is, correctly, reported as left).
    let (gate, gate_rx) = tokio::sync::watch::channel(false);
    let bob_tokens = Arc::new(AtomicUsize::new(0));
    let counter = bob_tokens.clone();
    let bob_provider = move || {
        let mut gate = gate_rx.clone();
        let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if !first {
                let _ = gate.wait_for(|open| *open).await;
            }
            Ok::<_, std::io::Error>(token_with("bob", 3600, Some(meta("bob")), None))
        }
    };
    let bob = Peer::new(PeerOptions::new(SignallingClientOptions {
        reconnect: Some(fast_reconnect()),
        ..SignallingClientOptions::token_provider(bob_provider).with_url(&url)
    }))
    .unwrap();
    let mut bob_joined = bob.peer_joined();
    let mut bob_left = bob.peer_left();
    let mut bob_states = bob.states();
    bob.join_with("room", WITH_META).await.unwrap();
    let carol = peer_in(&url, "carol", "room", true).await;
    let mut carol_data = carol.data();
    // Dave has reconnect off: he will not come back.
    let dave = peer_in(&url, "dave", "room", false).await;
    let mut dave_errors = dave.errors();
    expect_joined(&mut bob_joined, &["alice", "carol", "dave"]).await;
    let alice_at_bob = bob.remote_peer("alice").unwrap();
    let carol_at_bob = bob.remote_peer("carol").unwrap();
    assert_eq!(carol_at_bob.metadata().unwrap()["username"], "carol");

    let server = restart(server).await;

    let g = next(&mut alice_going_away, "going_away").await;
    assert!(g.retry_after > Duration::ZERO);
    let mut alice_presence = alice.presence();
    next_matching(&mut alice_events, "1001 with a reconnect", |e| {
        matches!(
            e,
            ConnectionEvent::Disconnected {
                code: 1001,
                will_reconnect: true,
                ..
            }
        )
    })
    .await;
    next_matching(&mut alice_events, "alice reconnected", is_reconnected).await;

    // Dave is closed for good.
    match next(&mut dave_errors, "dave's terminal error").await {
        PeerError::Closed { code, .. } => assert_eq!(code, 1001),
        other => panic!("{other:?}"),
    }
    assert_eq!(dave.state(), PeerState::Closed);

    // Once carol is back in the room (seen by alice's replayed subscription), let bob in.
    wait_present(&mut alice_presence, "room", "carol").await;
    next_matching(&mut bob_states, "bob reconnecting", |s| {
        *s == PeerState::Reconnecting
    })
    .await;
    gate.send(true).unwrap();
    next_matching(&mut bob_states, "bob joined again", |s| {
        *s == PeerState::Joined
    })
    .await;

    // The roster converged: dave is gone (peer_left, handle dead), alice and carol are in.
    // Herald's memory engine broadcasts `left` while its sessions drain during a graceful
    // shutdown, so a survivor may already have been reported left on the old connection and
    // rejoin as a new handle; the strict survivor-identity check is in
    // `peer_reconciles_after_its_connection_drops`, where no such deltas exist.
    let mut left_ids = Vec::new();
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(200), bob_left.next()).await
    {
        assert!(!r.is_present());
        left_ids.push(r.peer_id().to_string());
    }
    assert!(left_ids.contains(&"dave".to_string()), "{left_ids:?}");
    let mut roster: Vec<String> = bob
        .remote_peers()
        .iter()
        .map(|r| r.peer_id().to_string())
        .collect();
    roster.sort();
    assert_eq!(roster, ["alice", "carol"]);
    for (who, before) in [("alice", &alice_at_bob), ("carol", &carol_at_bob)] {
        let now = bob.remote_peer(who).unwrap();
        if left_ids.iter().any(|l| l == who) {
            assert_ne!(&now, before, "{who} left and came back: a new handle");
        } else {
            assert_eq!(&now, before, "{who} survived: the same handle");
        }
        assert!(now.is_present());
    }
    assert!(
        bob_tokens.load(Ordering::SeqCst) >= 2,
        "bob's provider minted again"
    );

    // Per-peer data flows over the current handle.
    let carol_at_bob = bob.remote_peer("carol").unwrap();
    carol_at_bob.send(json!({"hi": "carol"})).await.unwrap();
    let d = next_matching(&mut carol_data, "bob's direct", |d| {
        d.kind == DataKind::Direct
    })
    .await;
    assert_eq!(d.from, "bob");
    assert_eq!(d.remote.as_ref(), carol.remote_peer("bob").as_ref());

    // A newcomer after the restart is a normal peer_joined.
    let frank = peer_in(&server.origin(), "frank", "room", true).await;
    let f = next_matching(&mut bob_joined, "frank", |r| r.peer_id() == "frank").await;
    assert_eq!(f.metadata().unwrap()["username"], "frank");

    // Alice's lobby subscription was replayed with its options: fromMetadata still arrives.
    let eve = SignallingClient::new(options_for(&server.origin(), "eve")).unwrap();
    let mut eve_presence = eve.presence();
    eve.connect().await.unwrap();
    eve.subscribe("lobby", SubscribeOptions::default())
        .await
        .unwrap();
    wait_present(&mut eve_presence, "lobby", "alice").await;
    eve.publish("lobby", json!({"after": "restart"}))
        .await
        .unwrap();
    let m = next(&mut alice_messages, "eve's message").await;
    assert_eq!(m.data, json!({"after": "restart"}));
    assert_eq!(m.from_metadata.unwrap()["username"], "eve");

    for p in [bob, carol, frank] {
        p.leave().await;
    }
    alice.close().await;
    eve.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_is_refreshed_through_the_provider() {
    let server = TestServer::start().await;
    // The first token lives ~1-2 s (Herald closes with 4002 250 ms before exp); later ones an hour.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let provider = move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let ttl = if n == 0 { 2 } else { 3600 };
        std::future::ready(Ok::<_, std::io::Error>(token_with(
            "alice",
            ttl,
            Some(meta("alice")),
            None,
        )))
    };
    let alice = SignallingClient::new(SignallingClientOptions {
        reconnect: Some(fast_reconnect()),
        ..SignallingClientOptions::token_provider(provider).with_url(server.origin())
    })
    .unwrap();
    let mut events = alice.connection_events();
    let mut messages = alice.messages();
    alice.connect().await.unwrap();
    let first_expiry = alice.welcome().unwrap().expires_at.unwrap();
    alice
        .subscribe("news", SubscribeOptions::default())
        .await
        .unwrap();

    let watcher = SignallingClient::new(options_for(&server.origin(), "watcher")).unwrap();
    watcher.connect().await.unwrap();

    next_matching(&mut events, "the 4002 close", |e| {
        matches!(
            e,
            ConnectionEvent::Disconnected {
                code: 4002,
                will_reconnect: true,
                ..
            }
        )
    })
    .await;
    next_matching(&mut events, "reconnected", is_reconnected).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the provider minted a fresh token"
    );
    assert!(alice.welcome().unwrap().expires_at.unwrap() > first_expiry + 60);

    // The subscription was replayed: the watcher's publishes reach alice again (retried
    // until the replay's ack, which races the reconnect event).
    let mut delivered = None;
    for _ in 0..50 {
        watcher.publish("news", json!("fresh")).await.unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), messages.next()).await
        {
            delivered = Some(m);
            break;
        }
    }
    assert_eq!(
        delivered.expect("news after the refresh").data,
        json!("fresh")
    );
    alice.close().await;
    watcher.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_kick_4020_is_terminal() {
    let server = TestServer::start().await;
    let (provider, calls) = counting_provider("kicked", 3600);
    let client = SignallingClient::new(SignallingClientOptions {
        reconnect: Some(fast_reconnect()),
        ..SignallingClientOptions::token_provider(provider).with_url(server.origin())
    })
    .unwrap();
    let mut events = client.connection_events();
    client.connect().await.unwrap();
    client
        .subscribe("lobby", SubscribeOptions::default())
        .await
        .unwrap();

    let peer = Peer::new(PeerOptions::new(options_for(
        &server.origin(),
        "kicked-peer",
    )))
    .unwrap();
    let mut peer_errors = peer.errors();
    let mut peer_joined = peer.peer_joined();
    let mut peer_states = peer.states();
    peer.join("lobby").await.unwrap();
    next_matching(&mut peer_joined, "kicked in the roster", |r| {
        r.peer_id() == "kicked"
    })
    .await;

    assert_eq!(kick(&server, "kicked").await["closed"], 1);
    next_matching(&mut events, "4020", |e| {
        matches!(
            e,
            ConnectionEvent::Disconnected {
                code: 4020,
                will_reconnect: false,
                ..
            }
        )
    })
    .await;
    next_matching(&mut events, "closed", |e| {
        is_state(e, ConnectionState::Closed)
    })
    .await;
    // With a 50 ms backoff a reconnect would long have happened by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no reconnect after 4020");
    assert_eq!(client.state(), ConnectionState::Closed);
    assert!(matches!(
        client.publish("lobby", json!(1)).await,
        Err(Error::NotConnected(ConnectionState::Closed))
    ));

    // A kicked Peer reports the code, ends up closed, and its streams end.
    assert_eq!(kick(&server, "kicked-peer").await["closed"], 1);
    match next(&mut peer_errors, "the peer's error").await {
        PeerError::Closed { code, .. } => assert_eq!(code, 4020),
        other => panic!("{other:?}"),
    }
    next_matching(&mut peer_states, "peer closed", |s| *s == PeerState::Closed).await;
    expect_end(&mut peer_joined, "peer_joined").await;
    expect_end(&mut peer_errors, "errors").await;
    assert_eq!(peer.send(json!(1)).await, Err(Error::NotJoined));
}

/// Records what a WebRTC layer would be told.
#[derive(Default)]
struct Recorder {
    calls: std::sync::Mutex<Vec<String>>,
}

impl herald_client::SignalHandler for Recorder {
    fn peer_joined(&self, remote: &herald_client::RemotePeer) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("joined {}", remote.peer_id()));
    }
    fn peer_left(&self, remote: &herald_client::RemotePeer) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("left {}", remote.peer_id()));
    }
    fn connection_reset(&self, remote: &herald_client::RemotePeer) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("reset {}", remote.peer_id()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_reconciles_after_its_connection_drops() {
    let server = TestServer::start().await;
    let url = server.origin();
    // Bob's first token expires in 1-2 s (Herald closes with 4002); his reconnect then waits
    // at the gate while the room changes behind his back.
    let (gate, gate_rx) = tokio::sync::watch::channel(false);
    let counter = Arc::new(AtomicUsize::new(0));
    let bob_provider = move || {
        let mut gate = gate_rx.clone();
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n > 0 {
                let _ = gate.wait_for(|open| *open).await;
            }
            let ttl = if n == 0 { 2 } else { 3600 };
            Ok::<_, std::io::Error>(token_with("bob", ttl, Some(meta("bob")), None))
        }
    };
    let recorder = Arc::new(Recorder::default());
    let bob = Peer::new(
        PeerOptions::new(SignallingClientOptions {
            reconnect: Some(fast_reconnect()),
            ..SignallingClientOptions::token_provider(bob_provider).with_url(&url)
        })
        .with_signal_handler(recorder.clone()),
    )
    .unwrap();
    let mut joined = bob.peer_joined();
    let mut left = bob.peer_left();
    let mut states = bob.states();
    let carol = peer_in(&url, "carol", "room", true).await;
    let dave = peer_in(&url, "dave", "room", true).await;
    bob.join_with("room", WITH_META).await.unwrap();
    expect_joined(&mut joined, &["carol", "dave"]).await;
    let carol_handle = bob.remote_peer("carol").unwrap();
    let dave_handle = bob.remote_peer("dave").unwrap();

    next_matching(&mut states, "reconnecting", |s| {
        *s == PeerState::Reconnecting
    })
    .await;
    assert_eq!(
        bob.remote_peers().len(),
        2,
        "the roster is kept while reconnecting"
    );
    assert_eq!(
        carol_handle.send(json!(1)).await,
        Err(Error::NotJoined),
        "no per-peer data while reconnecting"
    );
    dave.leave().await;
    let frank = peer_in(&url, "frank", "room", true).await;
    gate.send(true).unwrap();

    let gone = next(&mut left, "dave, gone during the drop").await;
    assert_eq!(gone, dave_handle);
    assert!(!dave_handle.is_present());
    assert_eq!(
        dave_handle.send(json!(1)).await,
        Err(Error::PeerGone("dave".into()))
    );
    let newcomer = next(&mut joined, "frank, new during the drop").await;
    assert_eq!(newcomer.peer_id(), "frank");
    next_matching(&mut states, "joined", |s| *s == PeerState::Joined).await;
    assert_eq!(bob.remote_peer("carol"), Some(carol_handle.clone()));
    assert!(carol_handle.is_present());
    expect_quiet(&mut left, 200, "a peer_left for the survivor").await;
    expect_quiet(&mut joined, 10, "a peer_joined for the survivor").await;
    let calls = recorder.calls.lock().unwrap().clone();
    assert!(calls.contains(&"reset carol".to_string()), "{calls:?}");
    assert!(calls.contains(&"left dave".to_string()), "{calls:?}");
    assert!(calls.contains(&"joined frank".to_string()), "{calls:?}");
    assert!(!calls.contains(&"left carol".to_string()), "{calls:?}");

    // Data flows again over the surviving handle.
    let mut carol_data = carol.data();
    carol_handle.send(json!({"back": true})).await.unwrap();
    let d = next(&mut carol_data, "bob's direct").await;
    assert_eq!(d.data, json!({"back": true}));
    for p in [bob, carol, frank] {
        p.leave().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Against a scripted fake server
// ---------------------------------------------------------------------------------------------

fn fake_options(fake: &FakeServer) -> SignallingClientOptions {
    SignallingClientOptions {
        reconnect: Some(fast_reconnect()),
        ..SignallingClientOptions::api_key("pk_fake").with_url(fake.url())
    }
}

async fn connect_to_fake(
    fake: &mut FakeServer,
    options: SignallingClientOptions,
) -> (SignallingClient, FakeConn) {
    let client = SignallingClient::new(options).unwrap();
    let connecting = {
        let client = client.clone();
        tokio::spawn(async move { client.connect().await })
    };
    let mut conn = fake.accept().await;
    assert_eq!(conn.query, "key=pk_fake");
    conn.welcome("me").await;
    connecting.await.unwrap().unwrap();
    (client, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_an_ack_times_out() {
    let mut fake = FakeServer::start().await;
    let options = SignallingClientOptions {
        request_timeout: Duration::from_millis(300),
        ..fake_options(&fake)
    };
    let (client, mut conn) = connect_to_fake(&mut fake, options).await;
    let pending = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .subscribe("silent", SubscribeOptions::default())
                .await
        })
    };
    let frame = conn.recv_json().await;
    assert_eq!(frame["type"], "subscribe");
    assert_eq!(frame["channel"], "silent");
    let request_id = frame["requestId"].as_str().unwrap().to_string();
    assert_eq!(
        pending.await.unwrap(),
        Err(Error::Timeout(Duration::from_millis(300)))
    );
    // A late ack is ignored; the timed-out subscription stays in the replay set (it may have
    // been processed), and the connection keeps working.
    conn.send_json(json!({"type": "ack", "requestId": request_id}))
        .await;
    assert_eq!(client.subscriptions().len(), 1);
    let publish = {
        let client = client.clone();
        tokio::spawn(async move { client.publish("silent", json!({"x": 1})).await })
    };
    let frame = conn.recv_json().await;
    assert_eq!(frame["type"], "publish");
    assert_eq!(frame["data"], json!({"x": 1}));
    conn.send_json(json!({"type": "ack", "requestId": frame["requestId"]}))
        .await;
    publish.await.unwrap().unwrap();
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_are_dropped_and_the_client_keeps_running() {
    let mut fake = FakeServer::start().await;
    let (client, mut conn) = {
        let options = fake_options(&fake);
        connect_to_fake(&mut fake, options).await
    };
    let mut messages = client.messages();
    let mut presence = client.presence();
    let mut directs = client.directs();
    let mut errors = client.server_errors();
    let mut going_away = client.going_away();
    let mut events = client.connection_events();

    for garbage in [
        "not json",
        "[1,2,3]",
        "42",
        "{}",
        r#"{"type":17}"#,
        r#"{"type":"surprise","data":1}"#,
        r#"{"type":"ack"}"#,
        r#"{"type":"ack","requestId":"nobody-asked"}"#,
        r#"{"type":"error","code":""}"#,
        r#"{"type":"message","channel":"c","from":"x"}"#,
        r#"{"type":"message","channel":5,"from":"x","data":1}"#,
        r#"{"type":"direct","data":1}"#,
        r#"{"type":"presence","channel":"c","joined":[]}"#,
        r#"{"type":"presence","channel":"c","joined":[{"id":"x"}],"left":[]}"#,
        r#"{"type":"welcome","peerId":"impostor","expiresAt":null,"serverTime":1,"maxMessageSize":1}"#,
        r#"{"type":"error","code":"unknown_type"}"#,
    ] {
        conn.send_text(garbage).await;
    }
    conn.ws
        .send(tokio_tungstenite::tungstenite::Message::binary(vec![
            0u8, 1, 2,
        ]))
        .await
        .unwrap();
    conn.send_json(json!({"type": "message", "channel": "c", "from": "x", "data": {"ok": true}}))
        .await;
    conn.send_json(json!({"type": "presence", "channel": "c", "joined": [{"peerId": "x", "metadata": 7}], "left": []}))
        .await;
    conn.send_json(json!({"type": "direct", "from": "x", "data": [1], "fromMetadata": {"n": 1}}))
        .await;
    conn.send_json(json!({"type": "error", "code": "over_message_quota", "message": "slow down"}))
        .await;
    conn.send_json(json!({"type": "going_away", "retryAfterMs": 250}))
        .await;

    let m = next(&mut messages, "the valid message").await;
    assert_eq!(m.data, json!({"ok": true}));
    let p = next(&mut presence, "the valid presence").await;
    assert_eq!(p.joined[0].peer_id, "x");
    assert_eq!(
        p.joined[0].metadata, None,
        "a non-object metadata is dropped"
    );
    let d = next(&mut directs, "the valid direct").await;
    assert_eq!(d.data, json!([1]));
    let e = next(&mut errors, "the uncorrelated error").await;
    assert_eq!(e.code, "over_message_quota");
    assert_eq!(e.message.as_deref(), Some("slow down"));
    assert_eq!(
        next(&mut going_away, "going_away").await.retry_after,
        Duration::from_millis(250)
    );
    expect_quiet(&mut errors, 100, "the swallowed unknown_type").await;
    expect_quiet(&mut messages, 100, "a message from the garbage").await;
    assert_eq!(
        client.peer_id().as_deref(),
        Some("me"),
        "a second welcome is ignored"
    );
    assert_eq!(client.state(), ConnectionState::Connected);
    expect_quiet(&mut events, 100, "a disconnect").await;

    // Requests still round-trip.
    let sending = {
        let client = client.clone();
        tokio::spawn(async move { client.send("x", json!("still here")).await })
    };
    let frame = conn.recv_json().await;
    assert_eq!(frame["to"], "x");
    conn.send_json(
        json!({"type": "error", "requestId": frame["requestId"], "code": "peer_not_found"}),
    )
    .await;
    assert_eq!(
        sending.await.unwrap().unwrap_err().server_code(),
        Some("peer_not_found")
    );
    client.close().await;
    assert_eq!(conn.recv_close().await, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_fails_pending_requests_and_the_subscription_is_replayed() {
    let mut fake = FakeServer::start().await;
    let (client, mut conn) = {
        let options = fake_options(&fake);
        connect_to_fake(&mut fake, options).await
    };
    let mut events = client.connection_events();
    let pending = {
        let client = client.clone();
        tokio::spawn(async move { client.subscribe("room", WITH_META).await })
    };
    assert_eq!(conn.recv_json().await["type"], "subscribe");
    conn.close(1011).await;
    assert!(matches!(
        pending.await.unwrap(),
        Err(Error::Disconnected { code: 1011, .. })
    ));

    // The subscribe was in flight, so it is replayed, with its options, on the new connection.
    let mut conn = fake.accept().await;
    conn.welcome("me").await;
    next_matching(&mut events, "reconnected", is_reconnected).await;
    let replay = conn.recv_json().await;
    assert_eq!(replay["type"], "subscribe");
    assert_eq!(replay["channel"], "room");
    assert_eq!(replay["includeSenderMetadata"], true);
    conn.send_json(json!({"type": "ack", "requestId": replay["requestId"]}))
        .await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_ping_then_inactivity_close_4000_and_reconnect() {
    let mut fake = FakeServer::start().await;
    let options = SignallingClientOptions {
        inactivity_timeout: Some(Duration::from_millis(1500)),
        ..fake_options(&fake)
    };
    let (client, mut conn) = connect_to_fake(&mut fake, options).await;
    let mut events = client.connection_events();
    // After a third of the window (floored at 1 s) of silence: a bare ping, no requestId.
    assert_eq!(conn.recv_json().await, json!({"type": "ping"}));
    // The fake never answers: the watchdog closes with 4000 and the client reconnects.
    assert_eq!(conn.recv_close().await, 4000);
    next_matching(&mut events, "4000", |e| {
        matches!(
            e,
            ConnectionEvent::Disconnected {
                code: 4000,
                will_reconnect: true,
                ..
            }
        )
    })
    .await;
    let mut conn = fake.accept().await;
    conn.welcome("me").await;
    next_matching(&mut events, "reconnected", is_reconnected).await;
    // A pong (any frame) keeps the link alive: answer the next ping.
    assert_eq!(conn.recv_json().await, json!({"type": "ping"}));
    conn.send_json(json!({"type": "pong"})).await;
    assert_eq!(
        conn.recv_json().await,
        json!({"type": "ping"}),
        "pings go on while idle"
    );
    client.close().await;
}

/// The floor's arithmetic (how long, applied once) is tested exactly on a paused clock in the
/// crate (`connection/backoff.rs`, `connection.rs`); this checks that a real 4010 close reaches
/// it, with no timing measured: a 1011 reconnects on the 10 ms curve, a 4010 does not within
/// half a second of a 60 s floor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_4010_puts_a_floor_under_the_next_delay() {
    let mut fake = FakeServer::start().await;
    let options = SignallingClientOptions {
        reconnect: Some(ReconnectOptions {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            jitter: 0.0,
            overload_floor: Duration::from_secs(60),
            ..ReconnectOptions::default()
        }),
        ..fake_options(&fake)
    };
    let (client, conn) = connect_to_fake(&mut fake, options).await;
    let mut events = client.connection_events();
    conn.close(1011).await;
    let mut conn = fake.accept().await;
    conn.welcome("me").await;
    next_matching(&mut events, "reconnected", is_reconnected).await;
    conn.close(4010).await;
    next_matching(&mut events, "the 4010", |e| {
        matches!(
            e,
            ConnectionEvent::Disconnected {
                code: 4010,
                will_reconnect: true,
                ..
            }
        )
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), fake.accept())
            .await
            .is_err(),
        "reconnected under the 4010 floor"
    );
    assert_eq!(client.state(), ConnectionState::Reconnecting);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_codes_and_an_exhausted_budget_close_the_client() {
    // 4001 after the welcome: terminal.
    let mut fake = FakeServer::start().await;
    let (client, conn) = {
        let options = fake_options(&fake);
        connect_to_fake(&mut fake, options).await
    };
    let mut events = client.connection_events();
    conn.close(4001).await;
    next_matching(&mut events, "4001", |e| {
        matches!(
            e,
            ConnectionEvent::Disconnected {
                code: 4001,
                will_reconnect: false,
                ..
            }
        )
    })
    .await;
    next_matching(&mut events, "closed", |e| {
        is_state(e, ConnectionState::Closed)
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), fake.accept())
            .await
            .is_err(),
        "no reconnect after 4001"
    );

    // Two attempts, each refused before the welcome: the client gives up.
    let mut fake = FakeServer::start().await;
    let options = SignallingClientOptions {
        reconnect: Some(ReconnectOptions {
            max_attempts: Some(2),
            ..fast_reconnect()
        }),
        ..fake_options(&fake)
    };
    let (client, conn) = connect_to_fake(&mut fake, options).await;
    let mut events = client.connection_events();
    conn.close(1011).await;
    for attempt in 1..=2 {
        let conn = fake.accept().await;
        conn.close(1013).await;
        let last = attempt == 2;
        next_matching(&mut events, "a failed attempt", |e| {
            matches!(e, ConnectionEvent::Disconnected { code: 1013, will_reconnect, .. } if *will_reconnect != last)
        })
        .await;
    }
    next_matching(&mut events, "closed", |e| {
        is_state(e, ConnectionState::Closed)
    })
    .await;
    assert_eq!(client.state(), ConnectionState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_token_provider_is_reported_and_retried() {
    let mut fake = FakeServer::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let provider = move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        std::future::ready(if n == 0 {
            Ok("first-token".to_string())
        } else {
            Err(std::io::Error::other("mint endpoint down"))
        })
    };
    let client = SignallingClient::new(SignallingClientOptions {
        reconnect: Some(ReconnectOptions {
            max_attempts: Some(4),
            ..fast_reconnect()
        }),
        ..SignallingClientOptions::token_provider(provider).with_url(fake.url())
    })
    .unwrap();
    let mut events = client.connection_events();
    let connecting = {
        let client = client.clone();
        tokio::spawn(async move { client.connect().await })
    };
    let mut conn = fake.accept().await;
    assert_eq!(conn.query, "token=first-token");
    conn.welcome("me").await;
    connecting.await.unwrap().unwrap();
    conn.close(1011).await;
    match next_matching(&mut events, "token provider failing", |e| {
        matches!(e, ConnectionEvent::TokenProviderFailing { .. })
    })
    .await
    {
        ConnectionEvent::TokenProviderFailing {
            consecutive_failures,
            error,
        } => {
            assert_eq!(consecutive_failures, 3);
            assert!(error.contains("mint endpoint down"), "{error}");
        }
        _ => unreachable!(),
    }
    next_matching(&mut events, "gave up", |e| {
        matches!(
            e,
            ConnectionEvent::Disconnected {
                will_reconnect: false,
                ..
            }
        )
    })
    .await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "one success, then four attempts"
    );
    assert_eq!(client.state(), ConnectionState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_reconcile_watchdog_resubscribes_then_reports() {
    let mut fake = FakeServer::start().await;
    let options = PeerOptions {
        reconcile_timeout: Duration::from_millis(300),
        ..PeerOptions::new(fake_options(&fake))
    };
    let peer = Peer::new(options).unwrap();
    let mut joined = peer.peer_joined();
    let mut errors = peer.errors();
    let mut states = peer.states();
    let joining = {
        let peer = peer.clone();
        tokio::spawn(async move { peer.join("room").await })
    };
    let mut conn = fake.accept().await;
    conn.welcome("me").await;
    let sub = conn.recv_json().await;
    conn.send_json(json!({"type": "ack", "requestId": sub["requestId"]}))
        .await;
    conn.send_json(
        json!({"type": "presence", "channel": "room", "joined": [{"peerId": "x"}], "left": []}),
    )
    .await;
    joining.await.unwrap().unwrap();
    assert_eq!(next(&mut joined, "x").await.peer_id(), "x");
    // An uncorrelated fatal error code is escalated.
    conn.send_json(json!({"type": "error", "code": "account_suspended"}))
        .await;
    match next(&mut errors, "fatal server error").await {
        PeerError::Server(e) => assert_eq!(e.code, "account_suspended"),
        other => panic!("{other:?}"),
    }

    conn.close(1011).await;
    let mut conn = fake.accept().await;
    conn.welcome("me").await;
    // The replay, then two more subscribes from the watchdog, all acked but never answered
    // with a snapshot.
    for round in 0..3 {
        let frame = conn.recv_json().await;
        assert_eq!(frame["type"], "subscribe", "round {round}");
        assert_eq!(frame["channel"], "room");
        conn.send_json(json!({"type": "ack", "requestId": frame["requestId"]}))
            .await;
    }
    assert_eq!(
        next(&mut errors, "reconcile timeout").await,
        PeerError::ReconcileTimeout
    );
    assert_eq!(peer.state(), PeerState::Reconnecting);
    // A late snapshot still completes the reconcile.
    conn.send_json(
        json!({"type": "presence", "channel": "room", "joined": [{"peerId": "x"}], "left": []}),
    )
    .await;
    next_matching(&mut states, "reconnecting", |s| {
        *s == PeerState::Reconnecting
    })
    .await;
    next_matching(&mut states, "joined", |s| *s == PeerState::Joined).await;
    assert_eq!(peer.remote_peers().len(), 1);
    peer.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_timeout_close_during_backoff_and_the_advertised_cap() {
    // No welcome in time: the client gives up with 4000, as the official SDKs do.
    let mut fake = FakeServer::start().await;
    let client = SignallingClient::new(SignallingClientOptions {
        welcome_timeout: Duration::from_millis(200),
        ..fake_options(&fake)
    })
    .unwrap();
    let connecting = {
        let client = client.clone();
        tokio::spawn(async move { client.connect().await })
    };
    let mut silent = fake.accept().await;
    assert_eq!(
        connecting.await.unwrap(),
        Err(Error::WelcomeTimeout(Duration::from_millis(200)))
    );
    assert_eq!(silent.recv_close().await, 4000);
    assert_eq!(client.state(), ConnectionState::Closed);

    // The payload cap is whatever the welcome advertised.
    let conn = {
        let connecting = {
            let client = client.clone();
            tokio::spawn(async move { client.connect().await })
        };
        let mut conn = fake.accept().await;
        conn.send_json(json!({"type": "welcome", "peerId": "me", "expiresAt": null,
            "serverTime": now(), "maxMessageSize": 10}))
            .await;
        connecting.await.unwrap().unwrap();
        conn
    };
    assert_eq!(
        client.publish("c", "0123456789").await,
        Err(Error::Oversized { size: 12, cap: 10 })
    );

    // close() during the backoff wait returns at once and nothing reconnects.
    let slow = ReconnectOptions {
        initial_delay: Duration::from_secs(20),
        max_delay: Duration::from_secs(20),
        ..ReconnectOptions::default()
    };
    client.close().await;
    drop(conn);
    let client2 = SignallingClient::new(SignallingClientOptions {
        reconnect: Some(slow),
        ..fake_options(&fake)
    })
    .unwrap();
    let mut events = client2.connection_events();
    let connecting = {
        let client = client2.clone();
        tokio::spawn(async move { client.connect().await })
    };
    let mut conn = fake.accept().await;
    conn.welcome("me").await;
    connecting.await.unwrap().unwrap();
    conn.close(1011).await;
    next_matching(&mut events, "reconnecting", |e| {
        is_state(e, ConnectionState::Reconnecting)
    })
    .await;
    let started = Instant::now();
    client2.close().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "close() waited for the backoff"
    );
    assert_eq!(client2.state(), ConnectionState::Closed);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), fake.accept())
            .await
            .is_err(),
        "no reconnect after close()"
    );
}

// ---------------------------------------------------------------------------------------------
// A scripted fake server
// ---------------------------------------------------------------------------------------------

/// A listener whose accepted WebSocket connections are handed to the test one by one.
struct FakeServer {
    addr: SocketAddr,
    conns: mpsc::Receiver<FakeConn>,
}

/// One accepted connection of a [`FakeServer`].
struct FakeConn {
    ws: WebSocketStream<TcpStream>,
    /// The request query (`token=…` or `key=…`).
    query: String,
}

impl FakeServer {
    // The handshake callback's error type is tungstenite's, an HTTP response: large by design.
    #[allow(clippy::result_large_err)]
    async fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, conns) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut query = String::new();
                    let callback =
                        |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                            query = req.uri().query().unwrap_or_default().to_string();
                            Ok(resp)
                        };
                    if let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await {
                        let _ = tx.send(FakeConn { ws, query }).await;
                    }
                });
            }
        });
        FakeServer { addr, conns }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The next connection the client opens.
    async fn accept(&mut self) -> FakeConn {
        tokio::time::timeout(WAIT, self.conns.recv())
            .await
            .expect("timed out waiting for the client to connect")
            .expect("fake server stopped")
    }
}

impl FakeConn {
    async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_string())).await.unwrap();
    }

    async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends a welcome for `peer_id`.
    async fn welcome(&mut self, peer_id: &str) {
        self.send_json(
            json!({"type": "welcome", "peerId": peer_id, "expiresAt": null,
            "serverTime": now(), "maxMessageSize": 65536}),
        )
        .await;
    }

    /// The next text frame from the client, as JSON.
    async fn recv_json(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a client frame")
                .expect("client went away")
                .expect("read error");
            if let Message::Text(t) = msg {
                return serde_json::from_str(t.as_str()).unwrap();
            }
        }
    }

    /// Reads until the client's close frame; returns its code.
    async fn recv_close(&mut self) -> u16 {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for the client's close")
            {
                Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                Some(Ok(Message::Close(None))) => return 1005,
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return 1006,
            }
        }
    }

    /// Closes with `code`.
    async fn close(mut self, code: u16) {
        let _ = self
            .ws
            .close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: "fake server".into(),
            }))
            .await;
        // Let the client's echo arrive before dropping the socket.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}
