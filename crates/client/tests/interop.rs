//! Interop with the official JS SDK (`@metered-ca/realtime` 1.2.0, unmodified): a Rust
//! `SignallingClient`/`Peer` and a JS `SignallingClient`/`MeteredPeer` on the same channel see
//! each other's presence with metadata, messages and directs, in both directions.
//!
//! Each test starts Herald on 127.0.0.1:0 and runs its Rust half concurrently with a scenario
//! script (`tests/compat/js/rust_interop_*.mjs`) in Node, the way
//! `crates/server/tests/sdk_compat.rs` runs the SDK suites. The SDK is installed by
//! `bash tests/compat/install.sh`; without it these tests fail with a hint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_client::{
    DataKind, Peer, PeerOptions, RemotePeer, Signal, SignalHandler, SignallingClient,
    SignallingClientOptions, SubscribeOptions,
};
use herald_testkit::prelude::*;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// Hard deadline for the Node process.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

fn compat_js() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/compat/js")
}

/// Runs `script` against `server`; returns (passed, output).
async fn run_js(server: &TestServer, script: &str) -> (bool, String) {
    let dir = compat_js();
    let sdk = dir.join("node_modules/@metered-ca/realtime/package.json");
    assert!(
        sdk.exists(),
        "the official JS SDK is not installed ({} is missing): run `bash tests/compat/install.sh` \
         from the workspace root first",
        sdk.display()
    );
    let mut child = Command::new("node")
        .arg(dir.join(script))
        .current_dir(&dir)
        .env("HERALD_URL", server.origin())
        .env("HERALD_APP", APP)
        .env("HERALD_SK_ID", SK_ID)
        .env("HERALD_SK_SECRET", SK_SECRET)
        .env("HERALD_PK", PK)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("could not start node");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s).await;
        s
    });
    let err = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let status = match tokio::time::timeout(SCRIPT_TIMEOUT, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    };
    let output = format!(
        "{script}: {status:?}\n----- stdout -----\n{}\n----- stderr -----\n{}",
        out.await.unwrap_or_default(),
        err.await.unwrap_or_default()
    );
    (status.is_some_and(|s| s.success()), output)
}

/// Fails with both sides' story when either side failed (the cause is often on the other).
fn check(
    js_passed: bool,
    js_output: String,
    rust: Result<Result<(), tokio::time::error::Elapsed>, tokio::task::JoinError>,
) {
    match rust {
        Ok(Ok(())) => {
            assert!(js_passed, "the JS side failed\n{js_output}");
            if std::env::var_os("HERALD_COMPAT_SHOW").is_some() {
                println!("{js_output}");
            }
        }
        Ok(Err(_)) => panic!("the Rust side timed out\n{js_output}"),
        Err(e) => panic!("the Rust side failed: {e}\n{js_output}"),
    }
}

fn rust_meta() -> Value {
    json!({"username": "Rust", "sdk": "rust"})
}

fn js_meta() -> Value {
    json!({"username": "Node", "sdk": "js"})
}

fn rust_options(url: &str, sub: &'static str) -> SignallingClientOptions {
    SignallingClientOptions {
        reconnect: Some(fast_reconnect()),
        ..SignallingClientOptions::token_provider(move || {
            std::future::ready(Ok::<_, std::io::Error>(token_with(
                sub,
                3600,
                Some(rust_meta()),
                None,
            )))
        })
        .with_url(url)
    }
}

/// The Rust half of `rust_interop_client.mjs`.
async fn rust_client_side(url: String) {
    const CHAT: &str = "interop/rust-chat";
    let client = SignallingClient::new(rust_options(&url, "rust-client")).unwrap();
    let mut presence = client.presence();
    let mut messages = client.messages();
    let mut directs = client.directs();
    client.connect().await.unwrap();
    client
        .subscribe(
            CHAT,
            SubscribeOptions {
                include_sender_metadata: true,
            },
        )
        .await
        .unwrap();

    let seen = next_matching(&mut presence, "js-client's presence", |p| {
        p.channel == CHAT && p.joined.iter().any(|j| j.peer_id == "js-client")
    })
    .await;
    let entry = seen
        .joined
        .iter()
        .find(|j| j.peer_id == "js-client")
        .unwrap();
    assert_eq!(entry.metadata.clone().map(Value::Object), Some(js_meta()));

    client
        .publish(
            CHAT,
            json!({"from_sdk": "rust", "kind": "broadcast", "text": "héllo ✓"}),
        )
        .await
        .unwrap();
    client
        .send("js-client", json!({"from_sdk": "rust", "kind": "direct"}))
        .await
        .unwrap();

    let m = next(&mut messages, "js broadcast").await;
    assert_eq!(m.from, "js-client");
    assert_eq!(m.channel, CHAT);
    assert_eq!(
        m.data,
        json!({"from_sdk": "js", "kind": "broadcast", "n": 1.5, "list": [1, "two", null]})
    );
    assert_eq!(m.from_metadata.map(Value::Object), Some(js_meta()));
    let d = next(&mut directs, "js direct").await;
    assert_eq!(d.from, "js-client");
    assert_eq!(d.data, json!({"from_sdk": "js", "kind": "direct"}));
    assert_eq!(d.from_metadata.map(Value::Object), Some(js_meta()));

    client.unsubscribe(CHAT).await.unwrap();
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_and_js_signalling_clients_interoperate() {
    let server = TestServer::start().await;
    let rust = tokio::spawn(tokio::time::timeout(
        SCRIPT_TIMEOUT,
        rust_client_side(server.origin()),
    ));
    let ((passed, output), rust) = tokio::join!(run_js(&server, "rust_interop_client.mjs"), rust);
    check(passed, output, rust);
    server.shutdown().await;
}

#[derive(Default)]
struct Signals(Mutex<Vec<Signal>>);

impl SignalHandler for Signals {
    fn signal(&self, remote: &RemotePeer, signal: Signal) {
        assert_eq!(remote.peer_id(), "js-peer");
        self.0.lock().unwrap().push(signal);
    }
}

/// The Rust half of `rust_interop_peer.mjs`.
async fn rust_peer_side(url: String) {
    const ROOM: &str = "interop/rust-room";
    let signals = Arc::new(Signals::default());
    let peer = Peer::new(
        PeerOptions::new(rust_options(&url, "rust-peer")).with_signal_handler(signals.clone()),
    )
    .unwrap();
    let mut joined = peer.peer_joined();
    let mut data = peer.data();
    peer.join_with(
        ROOM,
        SubscribeOptions {
            include_sender_metadata: true,
        },
    )
    .await
    .unwrap();

    let js = next_matching(&mut joined, "js-peer", |r| r.peer_id() == "js-peer").await;
    assert_eq!(js.metadata().map(Value::Object), Some(js_meta()));

    peer.send_to("js-peer", json!({"hello": "send_to", "from_sdk": "rust"}))
        .await
        .unwrap();
    js.send(json!({"hello": "remote.send", "from_sdk": "rust"}))
        .await
        .unwrap();
    peer.send(json!({"hello": "broadcast", "from_sdk": "rust"}))
        .await
        .unwrap();

    // JS sent three data payloads, two signal-shaped ones, then a marker: only the data and
    // the marker surface, in order.
    let mut got = Vec::new();
    for _ in 0..4 {
        let d = next(&mut data, "data from js-peer").await;
        assert_eq!(d.from, "js-peer");
        assert_eq!(d.from_metadata.clone().map(Value::Object), Some(js_meta()));
        assert_eq!(d.data["from_sdk"], "js", "{:?}", d.data);
        got.push((d.data["hello"].as_str().unwrap().to_string(), d.kind));
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("broadcast".to_string(), DataKind::Broadcast),
            ("marker".to_string(), DataKind::Direct),
            ("remote.send".to_string(), DataKind::Direct),
            ("send_to".to_string(), DataKind::Direct),
        ]
    );
    let routed = signals.0.lock().unwrap().clone();
    assert_eq!(routed.len(), 2, "{routed:?}");
    assert_eq!(routed[0], Signal::Ice(None));
    assert!(matches!(&routed[1], Signal::TrackMeta(t) if t.track_id == "js-track"));
    assert_eq!(
        js.track_metadata("js-track").unwrap().metadata.unwrap()["role"],
        "camera"
    );
    peer.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_peer_and_js_metered_peer_interoperate() {
    let server = TestServer::start().await;
    let rust = tokio::spawn(tokio::time::timeout(
        SCRIPT_TIMEOUT,
        rust_peer_side(server.origin()),
    ));
    let ((passed, output), rust) = tokio::join!(run_js(&server, "rust_interop_peer.mjs"), rust);
    check(passed, output, rust);
    server.shutdown().await;
}
