//! Webhooks as OFFICIAL JS SDK clients produce them (`@metered-ca/realtime` in Node 20 with
//! `ws`; script `tests/compat/js/grace.mjs`, installed by `bash tests/compat/install.sh`), on
//! the memory engine with its reconnect grace, into a real receiver that verifies signatures
//! with `standardwebhooks`:
//! - a socket blip (the SDK reconnects on its own) and a page reload (the process is killed
//!   and a new one connects as the same peer) inside the grace give no `presence.left`, no
//!   second `presence.joined` and no `peer.offline`;
//! - two tabs of one peer give one `peer.online` and, once both are gone, one `peer.offline`;
//! - every peer's events come in order: online, joined, left, offline.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use herald_server::config::{WebhookEndpointConfig, EVENT_TYPES};
use herald_testkit::prelude::*;
use herald_testkit::proxy::TcpProxy;
use herald_testkit::webhook_receiver::{new_secret, Receiver};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const CHANNEL: &str = "room/hooks";

fn script_path() -> PathBuf {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/compat/js");
    let sdk = js.join("node_modules/@metered-ca/realtime/package.json");
    assert!(
        sdk.exists(),
        "The JS SDK is not installed ({} is missing). Run `bash tests/compat/install.sh`.",
        sdk.display()
    );
    js.join("grace.mjs")
}

/// One `grace.mjs` process (one browser tab).
struct Tab {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Tab {
    async fn open(url: &str, peer: &str, mode: &str) -> Tab {
        let mut child = Command::new("node")
            .arg(script_path())
            .env("HERALD_URL", url)
            .env("HERALD_APP", APP)
            .env("HERALD_SK_ID", SK_ID)
            .env("HERALD_SK_SECRET", SK_SECRET)
            .env("HERALD_PK", PK)
            .env("GRACE_PEER", peer)
            .env("GRACE_CHANNEL", CHANNEL)
            .env("GRACE_MODE", mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be on PATH");
        let mut tab = Tab {
            stdin: child.stdin.take().unwrap(),
            lines: BufReader::new(child.stdout.take().unwrap()).lines(),
            child,
        };
        tab.wait_for("@READY").await;
        tab
    }

    async fn wait_for(&mut self, marker: &str) {
        let wait = async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                if line == marker {
                    return;
                }
            }
            panic!("the script ended before {marker}");
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .unwrap_or_else(|_| panic!("no {marker} within 20 s"));
    }
}

/// The types of `peer`'s peer and presence events, in order.
fn of(events: &[Value], peer: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["peerId"] == peer && !e["type"].as_str().unwrap().starts_with("channel."))
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_sdk_reloads_and_blips_inside_the_grace_and_two_tabs_give_one_online_and_one_offline() {
    let secret = new_secret();
    let receiver = Receiver::start(&secret, 1.0, 0.0);
    let mut config = test_config();
    let grace = Duration::from_millis(config.engine.reconnect_grace_ms);
    config.webhooks.batch_delay_ms = 5;
    let app = config.apps.iter_mut().find(|a| a.id == APP).unwrap();
    app.webhooks = vec![WebhookEndpointConfig {
        url: receiver.url(),
        secret,
        events: EVENT_TYPES.iter().map(|e| e.to_string()).collect(),
        channels: vec!["room/*".into()],
    }];
    let server = TestServer::start_with(config).await;
    let proxy = TcpProxy::start(server.addr.port()).await;
    let direct = server.origin();

    let mut blip = Tab::open(
        &format!("ws://127.0.0.1:{}", proxy.port),
        "blip",
        "reconnect",
    )
    .await;
    let reload = Tab::open(&direct, "reload", "hold").await;
    let tab1 = Tab::open(&direct, "tabs", "hold").await;
    let tab2 = Tab::open(&direct, "tabs", "hold").await;

    // A blip: the socket is cut under the SDK, which reconnects and resubscribes.
    let cut_at = Instant::now();
    proxy.cut();
    proxy.restore();
    blip.wait_for("@RESUBSCRIBED").await;
    // A reload: the tab's process dies (no close frame) and a new one connects as the peer.
    let mut reload = reload;
    let reload_at = Instant::now();
    reload.child.kill().await.unwrap();
    let reloaded = Tab::open(&direct, "reload", "hold").await;
    let (blip_back, reload_back) = (cut_at.elapsed(), reload_at.elapsed());
    assert!(
        blip_back < grace && reload_back < grace,
        "premise: back after {blip_back:?} and {reload_back:?}, beyond the {grace:?} grace"
    );
    // Past both graces: their timers have run and found the peers back.
    tokio::time::sleep(grace + Duration::from_millis(500)).await;
    let marker = server.client("marker").await;
    let events = receiver
        .wait_for(Duration::from_secs(10), |e| {
            e.iter().any(|e| e["peerId"] == "marker")
        })
        .await;
    for peer in ["blip", "reload", "tabs"] {
        assert_eq!(
            of(&events, peer),
            ["peer.online", "presence.joined"],
            "{peer}: nothing but its arrival, once"
        );
    }

    // The end of each: a clean close is seen at once, the tabs' and the reload's drops after
    // the grace of the last one gone.
    blip.stdin.write_all(b"close\n").await.unwrap();
    blip.wait_for("@CLOSED").await;
    let mut tab1 = tab1;
    tab1.child.kill().await.unwrap();
    tokio::time::sleep(grace / 2).await;
    let mut tab2 = tab2;
    tab2.child.kill().await.unwrap();
    let mut reloaded = reloaded;
    reloaded.child.kill().await.unwrap();
    marker.close().await;
    let events = receiver
        .wait_for(grace * 3 + Duration::from_secs(10), |e| {
            e.iter().filter(|e| e["type"] == "peer.offline").count() == 4
        })
        .await;
    for peer in ["blip", "reload", "tabs"] {
        assert_eq!(
            of(&events, peer),
            [
                "peer.online",
                "presence.joined",
                "presence.left",
                "peer.offline"
            ],
            "{peer}"
        );
    }
    let room: Vec<&str> = events
        .iter()
        .filter(|e| e["type"].as_str().unwrap().starts_with("channel."))
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(room, ["channel.occupied", "channel.vacated"]);
    assert_eq!(events.first().unwrap()["type"], "peer.online");
    assert!(
        events
            .iter()
            .position(|e| e["type"] == "channel.vacated")
            .unwrap()
            > events
                .iter()
                .rposition(|e| e["type"] == "presence.left")
                .unwrap(),
        "vacated after the last left"
    );
    println!("blip back after {blip_back:?}, reload back after {reload_back:?} (grace {grace:?})");
    server.shutdown().await;
}
