//! The Rust SDK's explicit resume across a real restart of a node whose history is on disk
//! (`[history] store = "disk"`): the SDK is cut off, the `herald` process is killed with
//! `kill -9` and started again on the same directory and port, messages are published while the
//! SDK is away, and on its reconnect it is told `recovered: true` and gets every missed message
//! once, in order, in the same epoch, then live ones with nothing repeated.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use herald_client::{
    ChannelMessage, ConnectionEvent, EventStream, SignallingClient, SubscribeOptions,
};
use herald_testkit::prelude::*;
use herald_testkit::process::HeraldProcess;
use herald_testkit::proxy::TcpProxy;
use serde_json::json;

/// A node on `port` with its history on disk in `dir`; `room/*` keeps 100 and rewinds 5 (a
/// rewind on resume would show as duplicates).
fn start(dir: &Path, port: u16) -> HeraldProcess {
    let config = format!(
        r#"listen = "127.0.0.1:{port}"
[log]
format = "json"
level = "info"
[history]
store = "disk"
path = "{history}"
[[history.channels]]
patterns = ["room/*"]
max_messages = 100
rewind = 5
[[apps]]
id = "{APP}"
[[apps.secret_keys]]
id = "{SK_ID}"
secret = "{SK_SECRET}"
"#,
        history = dir.join("history").display()
    );
    HeraldProcess::start(
        Path::new(env!("CARGO_BIN_EXE_herald")),
        &dir.join("herald.toml"),
        &config,
    )
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-sdk-resume-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A port nothing listens on now (the node binds it; a restart binds it again).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn next(stream: &mut EventStream<ChannelMessage>) -> ChannelMessage {
    tokio::time::timeout(Duration::from_secs(10), stream.recv())
        .await
        .expect("a message within 10 s")
        .expect("the stream is open")
}

/// The next event that matches `want` (other connection events are skipped).
async fn until<T>(
    events: &mut EventStream<ConnectionEvent>,
    want: impl Fn(ConnectionEvent) -> Option<T>,
) -> T {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .expect("the event within 20 s")
            .expect("the stream is open");
        if let Some(found) = want(event) {
            return found;
        }
    }
}

fn n(m: &ChannelMessage) -> u64 {
    m.data["n"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_the_disk_store_resumes_with_nothing_missed_or_repeated() {
    let dir = temp_dir();
    let port = free_port();
    let mut node = start(&dir, port);
    let proxy = TcpProxy::start(port).await;
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
    let alice = SignallingClient::new(options_for(&node.origin(), "alice")).unwrap();
    alice.connect().await.unwrap();
    for k in 1..=3 {
        alice.publish("room/1", json!({ "n": k })).await.unwrap();
    }
    let mut epoch = None;
    for k in 1..=3 {
        let m = next(&mut messages).await;
        assert_eq!(n(&m), k);
        epoch = m.epoch;
    }
    assert!(
        epoch.is_some(),
        "a channel with history numbers its messages"
    );
    alice.close().await;

    // Bob is cut off; the node dies without any shutdown path and comes back on its store.
    proxy.cut();
    until(&mut events, |e| {
        matches!(e, ConnectionEvent::Disconnected { .. }).then_some(())
    })
    .await;
    node.kill9();
    let node = start(&dir, port);
    let alice = SignallingClient::new(options_for(&node.origin(), "alice")).unwrap();
    alice.connect().await.unwrap();
    for k in 4..=20 {
        alice.publish("room/1", json!({ "n": k })).await.unwrap();
    }
    proxy.restore();
    let resumed = until(&mut events, |e| match e {
        ConnectionEvent::Resumed { channel, recovered } => Some((channel, recovered)),
        _ => None,
    })
    .await;
    assert_eq!(
        resumed,
        ("room/1".to_string(), true),
        "the disk store kept the epoch, so the whole gap is recovered"
    );
    for k in 4..=20 {
        let m = next(&mut messages).await;
        assert_eq!(n(&m), k, "every missed message, in order, once");
        assert_eq!(m.offset, Some(k));
        assert_eq!(m.epoch, epoch, "the same epoch across the restart");
    }
    alice.publish("room/1", json!({ "n": 21 })).await.unwrap();
    let live = next(&mut messages).await;
    assert_eq!(
        n(&live),
        21,
        "then live, with no rewind and no duplicate in between"
    );
    bob.close().await;
    alice.close().await;
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
