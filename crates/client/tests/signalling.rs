//! `SignallingClient` against a real Herald on 127.0.0.1:0: every operation, success and
//! error paths.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use herald_client::{
    ConnectionEvent, ConnectionState, Error, SignallingClient, SignallingClientOptions,
    SubscribeOptions,
};
use herald_testkit::prelude::*;
use serde_json::json;

const WITH_META: SubscribeOptions = SubscribeOptions {
    include_sender_metadata: true,
};

async fn connected(server: &TestServer, sub: &str) -> SignallingClient {
    let client = SignallingClient::new(options_for(&server.origin(), sub)).unwrap();
    client.connect().await.unwrap();
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_welcome_peer_id_and_ice_servers() {
    let server = TestServer::start().await;
    let ice = json!({"iceServers": [{"urls": ["turn:turn.example.com:3478"], "username": "u", "credential": "c"}]});
    let token = token_with("alice", 3600, Some(meta("Alice")), Some(ice));
    let client = SignallingClient::new(
        SignallingClientOptions::token_provider(move || {
            std::future::ready(Ok::<_, std::io::Error>(token.clone()))
        })
        .with_url(server.origin()),
    )
    .unwrap();
    assert_eq!(client.state(), ConnectionState::Idle);
    assert_eq!(client.peer_id(), None);
    let mut events = client.connection_events();

    client.connect().await.unwrap();
    assert_eq!(client.state(), ConnectionState::Connected);
    assert_eq!(client.peer_id().as_deref(), Some("alice"));
    let welcome = client.welcome().unwrap();
    assert!(welcome.expires_at.unwrap() > now());
    assert_eq!(welcome.max_message_size, 65536);
    let servers = welcome.ice_servers().expect("the JWT's iceServers");
    assert_eq!(servers[0].urls, vec!["turn:turn.example.com:3478"]);
    assert_eq!(servers[0].credential.as_deref(), Some("c"));

    assert_eq!(
        next(&mut events, "connecting").await,
        ConnectionEvent::StateChanged {
            from: ConnectionState::Idle,
            to: ConnectionState::Connecting
        }
    );
    assert_eq!(
        next(&mut events, "connected").await,
        ConnectionEvent::StateChanged {
            from: ConnectionState::Connecting,
            to: ConnectionState::Connected
        }
    );
    match next(&mut events, "welcome").await {
        ConnectionEvent::Connected {
            welcome,
            is_reconnect,
        } => {
            assert_eq!(welcome.peer_id, "alice");
            assert!(!is_reconnect);
        }
        other => panic!("{other:?}"),
    }

    let again = client.connect().await;
    assert!(
        matches!(again, Err(Error::InvalidState { .. })),
        "{again:?}"
    );
    client.close().await;
    assert_eq!(client.state(), ConnectionState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishable_key_gets_a_uuid_and_no_expiry() {
    let server = TestServer::start().await;
    let client =
        SignallingClient::new(SignallingClientOptions::api_key(PK).with_url(server.origin()))
            .unwrap();
    client.connect().await.unwrap();
    let welcome = client.welcome().unwrap();
    assert_eq!(welcome.peer_id.len(), 36, "{}", welcome.peer_id);
    assert_eq!(welcome.expires_at, None);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_snapshot_and_deltas_carry_metadata() {
    let server = TestServer::start().await;
    let alice = connected(&server, "alice").await;
    let bob = connected(&server, "bob").await;
    let mut alice_presence = alice.presence();
    let mut bob_presence = bob.presence();

    alice
        .subscribe("lobby", SubscribeOptions::default())
        .await
        .unwrap();
    let snapshot = next(&mut alice_presence, "alice's snapshot").await;
    assert_eq!(snapshot.channel, "lobby");
    assert!(snapshot.joined.is_empty() && snapshot.left.is_empty());

    bob.subscribe("lobby", WITH_META).await.unwrap();
    let snapshot = next(&mut bob_presence, "bob's snapshot").await;
    assert_eq!(snapshot.joined.len(), 1);
    assert_eq!(snapshot.joined[0].peer_id, "alice");
    assert_eq!(
        snapshot.joined[0].metadata.as_ref().unwrap()["username"],
        "alice"
    );
    let delta = next(&mut alice_presence, "bob joined").await;
    assert_eq!(delta.joined[0].peer_id, "bob");
    assert_eq!(
        delta.joined[0].metadata.as_ref().unwrap()["username"],
        "bob"
    );

    bob.unsubscribe("lobby").await.unwrap();
    let delta = next(&mut alice_presence, "bob left").await;
    assert!(delta.joined.is_empty());
    assert_eq!(delta.left[0].peer_id, "bob");
    assert!(bob.subscriptions().is_empty());
    // Unsubscribing again is fine (idempotent on the server).
    bob.unsubscribe("lobby").await.unwrap();

    bob.close().await;
    alice.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_others_with_metadata_only_when_asked() {
    let server = TestServer::start().await;
    let alice = connected(&server, "alice").await;
    let bob = connected(&server, "bob").await;
    let carol = connected(&server, "carol").await;
    let mut alice_messages = alice.messages();
    let mut bob_messages = bob.messages();
    let mut carol_messages = carol.messages();
    alice
        .subscribe("chat", SubscribeOptions::default())
        .await
        .unwrap();
    bob.subscribe("chat", WITH_META).await.unwrap();
    carol
        .subscribe("chat", SubscribeOptions::default())
        .await
        .unwrap();

    let data = json!({"type": "chat", "text": "hi", "n": 1.5, "nested": [null, true]});
    alice.publish("chat", &data).await.unwrap();
    let at_bob = next(&mut bob_messages, "bob's message").await;
    assert_eq!(at_bob.channel, "chat");
    assert_eq!(at_bob.from, "alice");
    assert_eq!(at_bob.data, data);
    assert_eq!(at_bob.from_metadata.unwrap()["username"], "alice");
    let at_carol = next(&mut carol_messages, "carol's message").await;
    assert_eq!(at_carol.data, data);
    assert_eq!(at_carol.from_metadata, None, "carol did not opt in");
    expect_quiet(&mut alice_messages, 200, "echo of alice's own publish").await;

    // null is a valid payload; publishing needs no subscription.
    let outsider = connected(&server, "dave").await;
    outsider
        .publish("chat", serde_json::Value::Null)
        .await
        .unwrap();
    let m = next(&mut carol_messages, "dave's null").await;
    assert_eq!((m.from.as_str(), m.data), ("dave", serde_json::Value::Null));

    for c in [alice, bob, carol, outsider] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_and_peer_not_found() {
    let server = TestServer::start().await;
    let alice = connected(&server, "alice").await;
    let bob = connected(&server, "bob").await;
    let mut bob_directs = bob.directs();

    alice
        .send("bob", json!({"type": "dm", "text": "hey"}))
        .await
        .unwrap();
    let d = next(&mut bob_directs, "bob's direct").await;
    assert_eq!(d.from, "alice");
    assert_eq!(d.data, json!({"type": "dm", "text": "hey"}));
    assert_eq!(d.from_metadata.unwrap()["username"], "alice");

    let err = alice.send("nobody", json!(1)).await.unwrap_err();
    assert_eq!(err.server_code(), Some("peer_not_found"), "{err:?}");
    match err {
        Error::Server(e) => assert_eq!(
            e.known_code(),
            Some(herald_protocol::ErrorCode::PeerNotFound)
        ),
        other => panic!("{other:?}"),
    }
    alice.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_typed_and_the_connection_survives() {
    let server = TestServer::start().await;
    let client = connected(&server, "alice").await;

    let err = client
        .subscribe("_system/x", SubscribeOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some("channel_reserved"));
    assert!(
        client.subscriptions().is_empty(),
        "a refused subscription is not replayed"
    );
    let err = client.publish("_metered/x", json!(1)).await.unwrap_err();
    assert_eq!(err.server_code(), Some("channel_reserved"));

    // A narrow key: room/* only, publish and subscribe only.
    let narrow = herald_protocol::jwt::sign(
        SK_NARROW_ID,
        SK_NARROW_SECRET.as_bytes(),
        &herald_protocol::Claims {
            sub: "narrow".into(),
            exp: Some(now() + 3600),
            ..Default::default()
        },
    );
    let limited = SignallingClient::new(
        SignallingClientOptions::token_provider(move || {
            std::future::ready(Ok::<_, std::io::Error>(narrow.clone()))
        })
        .with_url(server.origin()),
    )
    .unwrap();
    limited.connect().await.unwrap();
    let err = limited
        .subscribe("lobby", SubscribeOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some("channel_not_authorized"));
    let err = limited.send("alice", json!(1)).await.unwrap_err();
    assert_eq!(err.server_code(), Some("action_not_permitted"));
    limited
        .subscribe("room/1", SubscribeOptions::default())
        .await
        .unwrap();

    // Still usable after the errors.
    client
        .subscribe("lobby", SubscribeOptions::default())
        .await
        .unwrap();
    assert_eq!(client.state(), ConnectionState::Connected);
    client.close().await;
    limited.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_side_validation_sends_nothing() {
    let server = TestServer::start().await;
    let client = connected(&server, "alice").await;
    for bad in ["", "a\nb", "x\u{85}y", &"a".repeat(257), &"é".repeat(129)] {
        let err = client
            .subscribe(bad, SubscribeOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidChannel(_)), "{bad:?}: {err:?}");
        assert!(matches!(
            client.publish(bad, json!(1)).await,
            Err(Error::InvalidChannel(_))
        ));
    }
    // 256 bytes is the limit, counted in bytes.
    client
        .subscribe(&"é".repeat(128), SubscribeOptions::default())
        .await
        .unwrap();
    for bad in ["", "a\u{0}", &"p".repeat(129)] {
        assert!(matches!(
            client.send(bad, json!(1)).await,
            Err(Error::InvalidPeerId(_))
        ));
    }
    // The payload cap is the welcome's maxMessageSize, measured on the serialized data.
    let just_fits = "x".repeat(65536 - 2);
    client.publish("big", &just_fits).await.unwrap();
    let too_big = "x".repeat(65536 - 1);
    assert_eq!(
        client.publish("big", &too_big).await,
        Err(Error::Oversized {
            size: 65537,
            cap: 65536
        })
    );
    assert!(matches!(
        client.send("bob", &too_big).await,
        Err(Error::Oversized { .. })
    ));
    assert_eq!(client.state(), ConnectionState::Connected);
    assert_eq!(
        client
            .subscriptions()
            .into_iter()
            .map(|(c, _)| c)
            .collect::<Vec<_>>(),
        vec!["é".repeat(128)]
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_need_a_connection() {
    let server = TestServer::start().await;
    let client = SignallingClient::new(options_for(&server.origin(), "alice")).unwrap();
    let err = client
        .subscribe("lobby", SubscribeOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err, Error::NotConnected(ConnectionState::Idle));
    assert!(client.subscriptions().is_empty());
    assert_eq!(
        client.publish("lobby", json!(1)).await,
        Err(Error::NotConnected(ConnectionState::Idle))
    );

    // close() then connect() again works; requests after close fail.
    client.connect().await.unwrap();
    client.close().await;
    assert_eq!(
        client.send("bob", json!(1)).await,
        Err(Error::NotConnected(ConnectionState::Closed))
    );
    client.connect().await.unwrap();
    client
        .subscribe("lobby", SubscribeOptions::default())
        .await
        .unwrap();
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_typed() {
    let server = TestServer::start().await;

    // A bad signature: the upgrade succeeds, then 4001 before any welcome. Never retried.
    let forged = herald_protocol::jwt::sign(
        SK_ID,
        b"not-the-secret",
        &herald_protocol::Claims {
            sub: "mallory".into(),
            exp: Some(now() + 60),
            ..Default::default()
        },
    );
    let client = SignallingClient::new(
        SignallingClientOptions::token_provider(move || {
            std::future::ready(Ok::<_, std::io::Error>(forged.clone()))
        })
        .with_url(server.origin()),
    )
    .unwrap();
    let err = client.connect().await.unwrap_err();
    assert!(
        matches!(err, Error::ConnectRejected { code: 4001, .. }),
        "{err:?}"
    );
    assert_eq!(client.state(), ConnectionState::Closed);

    // An expired token: 4002.
    let expired = token_with("old", -10, None, None);
    let client = SignallingClient::new(
        SignallingClientOptions::token_provider(move || {
            std::future::ready(Ok::<_, std::io::Error>(expired.clone()))
        })
        .with_url(server.origin()),
    )
    .unwrap();
    assert!(matches!(
        client.connect().await,
        Err(Error::ConnectRejected { code: 4002, .. })
    ));

    // The provider fails, or takes too long.
    let client = SignallingClient::new(
        SignallingClientOptions::token_provider(|| async {
            Err::<String, _>(std::io::Error::other("backend down"))
        })
        .with_url(server.origin()),
    )
    .unwrap();
    let err = client.connect().await.unwrap_err();
    assert!(
        matches!(&err, Error::TokenProvider(m) if m.contains("backend down")),
        "{err:?}"
    );
    let client = SignallingClient::new(SignallingClientOptions {
        token_provider_timeout: Duration::from_millis(100),
        ..SignallingClientOptions::token_provider(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, std::io::Error>(String::new())
        })
        .with_url(server.origin())
    })
    .unwrap();
    assert_eq!(
        client.connect().await,
        Err(Error::TokenProviderTimeout(Duration::from_millis(100)))
    );

    // Nothing listens: a transport error.
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let client = SignallingClient::new(
        SignallingClientOptions::api_key(PK).with_url(format!("ws://{closed_port}")),
    )
    .unwrap();
    assert!(matches!(client.connect().await, Err(Error::Transport(_))));

    // Bad options are refused up front.
    assert!(matches!(
        SignallingClient::new(SignallingClientOptions::api_key(PK).with_url("ws://example.com")),
        Err(Error::InvalidOptions(_))
    ));
    assert!(matches!(
        SignallingClient::new(SignallingClientOptions::api_key(PK).with_url("wss://h/v1")),
        Err(Error::InvalidOptions(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispose_ends_every_stream() {
    let server = TestServer::start().await;
    let client = connected(&server, "alice").await;
    let mut presence = client.presence();
    let mut messages = client.messages();
    let mut directs = client.directs();
    let mut errors = client.server_errors();
    let mut going_away = client.going_away();
    let mut events = client.connection_events();
    client
        .subscribe("lobby", SubscribeOptions::default())
        .await
        .unwrap();

    // close() alone keeps the streams open (the client may connect again).
    client.close().await;
    next_matching(&mut events, "closed", |e| {
        matches!(
            e,
            ConnectionEvent::StateChanged {
                to: ConnectionState::Closed,
                ..
            }
        )
    })
    .await;
    expect_quiet(&mut messages, 100, "messages after close").await;

    client.dispose().await;
    expect_end(&mut presence, "presence").await;
    expect_end(&mut messages, "messages").await;
    expect_end(&mut directs, "directs").await;
    expect_end(&mut errors, "server_errors").await;
    expect_end(&mut going_away, "going_away").await;
    expect_end(&mut events, "connection_events").await;
    let mut late = client.messages();
    expect_end(&mut late, "a stream taken after dispose").await;
    assert_eq!(client.connect().await, Err(Error::Disposed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_closes_the_connection() {
    let server = TestServer::start().await;
    let watcher = connected(&server, "watcher").await;
    let mut presence = watcher.presence();
    watcher
        .subscribe("lobby", SubscribeOptions::default())
        .await
        .unwrap();
    next(&mut presence, "snapshot").await;

    let client = connected(&server, "leaver").await;
    client
        .subscribe("lobby", SubscribeOptions::default())
        .await
        .unwrap();
    let p = next(&mut presence, "leaver joined").await;
    assert_eq!(p.joined[0].peer_id, "leaver");
    let clone = client.clone();
    drop(client);
    expect_quiet(&mut presence, 200, "a left while a clone lives").await;
    drop(clone);
    let p = next(&mut presence, "leaver left").await;
    assert_eq!(p.left[0].peer_id, "leaver");
    watcher.close().await;
}
