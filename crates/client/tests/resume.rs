//! The SDK's explicit resume against a real Herald: every reconnect re-subscribes with the
//! position of the last message received (`since`), gets the rest in order with no duplicate,
//! and tells the app with `ConnectionEvent::Resumed`; when the history moved past that position
//! or was reset (a restarted node: a new epoch), the app is told `recovered: false`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use herald_client::{
    ChannelMessage, ConnectionEvent, EventStream, SignallingClient, SubscribeOptions,
};

use herald_testkit::prelude::*;
use herald_testkit::proxy::TcpProxy;
use serde_json::json;
use tokio::net::TcpListener;

/// `room/*` keeps 100 and rewinds 5 (a rewind on resume would show as duplicates); `small/*`
/// keeps 10.
/// A Herald with those channels on `listener`.
fn serve(listener: TcpListener) -> TestServer {
    TestServer::serve(
        listener,
        config_with(|c| {
            c.history.enable_for_dev();
            let mut small = c.history.channels[0].clone();
            let room = &mut c.history.channels[0];
            room.patterns = vec!["room/*".into()];
            room.max_messages = 100;
            room.rewind = 5;
            small.patterns = vec!["small/*".into()];
            small.max_messages = 10;
            small.rewind = 0;
            c.history.channels.push(small);
        }),
    )
}

async fn start() -> TestServer {
    serve(TcpListener::bind("127.0.0.1:0").await.unwrap())
}

async fn next(stream: &mut EventStream<ChannelMessage>) -> ChannelMessage {
    tokio::time::timeout(Duration::from_secs(10), stream.recv())
        .await
        .expect("a message within 10 s")
        .expect("the stream is open")
}

/// The next `Resumed` event (other connection events are skipped).
async fn resumed(events: &mut EventStream<ConnectionEvent>) -> (String, bool) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("a resume within 10 s")
            .expect("the stream is open");
        if let ConnectionEvent::Resumed { channel, recovered } = event {
            return (channel, recovered);
        }
    }
}

/// Waits until the client saw its socket end.
async fn disconnected(events: &mut EventStream<ConnectionEvent>) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("a disconnect within 10 s")
            .expect("the stream is open");
        if matches!(event, ConnectionEvent::Disconnected { .. }) {
            return;
        }
    }
}

fn n(m: &ChannelMessage) -> u64 {
    m.data["n"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_resumes_from_the_last_message_with_nothing_missed_or_repeated() {
    let server = start().await;
    let proxy = TcpProxy::start(server.addr.port()).await;
    let alice = SignallingClient::new(options_for(&server.origin(), "alice")).unwrap();
    alice.connect().await.unwrap();
    let bob = SignallingClient::new(options_for(
        &format!("ws://127.0.0.1:{}", proxy.port),
        "bob",
    ))
    .unwrap();
    let mut messages = bob.messages();
    let mut events = bob.connection_events();
    bob.connect().await.unwrap();
    bob.subscribe("room/1", SubscribeOptions::default())
        .await
        .unwrap();
    for k in 1..=3 {
        alice.publish("room/1", json!({ "n": k })).await.unwrap();
    }
    for k in 1..=3 {
        assert_eq!(n(&next(&mut messages).await), k);
    }

    proxy.cut();
    disconnected(&mut events).await;
    for k in 4..=50 {
        alice.publish("room/1", json!({ "n": k })).await.unwrap();
    }
    proxy.restore();
    assert_eq!(resumed(&mut events).await, ("room/1".to_string(), true));
    for k in 4..=50 {
        let m = next(&mut messages).await;
        assert_eq!(n(&m), k, "every missed message, in order, once");
        assert_eq!(m.offset, Some(k));
    }
    alice.publish("room/1", json!({ "n": 51 })).await.unwrap();
    assert_eq!(
        n(&next(&mut messages).await),
        51,
        "then live, with no rewind and no duplicate in between"
    );
    bob.close().await;
    alice.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_past_retention_is_reported_as_not_recovered() {
    let server = start().await;
    let proxy = TcpProxy::start(server.addr.port()).await;
    let alice = SignallingClient::new(options_for(&server.origin(), "alice")).unwrap();
    alice.connect().await.unwrap();
    let bob = SignallingClient::new(options_for(
        &format!("ws://127.0.0.1:{}", proxy.port),
        "bob",
    ))
    .unwrap();
    let mut messages = bob.messages();
    let mut events = bob.connection_events();
    bob.connect().await.unwrap();
    bob.subscribe("small/1", SubscribeOptions::default())
        .await
        .unwrap();
    alice.publish("small/1", json!({ "n": 1 })).await.unwrap();
    assert_eq!(n(&next(&mut messages).await), 1);

    proxy.cut();
    disconnected(&mut events).await;
    // `small/*` keeps 10: offsets 2..=11 are gone once 21 is in.
    for k in 2..=21 {
        alice.publish("small/1", json!({ "n": k })).await.unwrap();
    }
    proxy.restore();
    assert_eq!(resumed(&mut events).await, ("small/1".to_string(), false));
    alice.publish("small/1", json!({ "n": 22 })).await.unwrap();
    assert_eq!(
        n(&next(&mut messages).await),
        22,
        "nothing replayed, not even part of the gap"
    );
    bob.close().await;
    alice.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_has_a_new_epoch_and_the_app_is_told() {
    let server = start().await;
    let addr = server.addr;
    let bob = SignallingClient::new(options_for(&server.origin(), "bob")).unwrap();
    let mut messages = bob.messages();
    let mut events = bob.connection_events();
    bob.connect().await.unwrap();
    bob.subscribe("room/2", SubscribeOptions::default())
        .await
        .unwrap();
    let alice = SignallingClient::new(options_for(&server.origin(), "alice")).unwrap();
    alice.connect().await.unwrap();
    alice.publish("room/2", json!({ "n": 1 })).await.unwrap();
    let before = next(&mut messages).await;
    alice.close().await;

    // The memory store dies with the node; the restarted one starts a new epoch.
    server.shutdown().await;
    let listener = TcpListener::bind(addr).await.unwrap();
    let server = serve(listener);
    assert_eq!(resumed(&mut events).await, ("room/2".to_string(), false));
    let alice = SignallingClient::new(options_for(&server.origin(), "alice")).unwrap();
    alice.connect().await.unwrap();
    alice.publish("room/2", json!({ "n": 2 })).await.unwrap();
    let after = next(&mut messages).await;
    assert_eq!(n(&after), 2);
    assert_eq!(
        after.offset,
        Some(1),
        "offset 1 of the new epoch is not a duplicate"
    );
    assert_ne!(after.epoch, before.epoch);
    bob.close().await;
    alice.close().await;
    server.shutdown().await;
}
