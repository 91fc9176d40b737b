//! The memory engine's webhook outbox on the disk store, against the real `herald` binary: the
//! endpoint is down while clients produce presence and message events; once
//! `herald_webhook_outbox_uncommitted` reads 0 (every event is committed) the node is killed
//! with SIGKILL and restarted on the same directory; the endpoint comes up (a real receiver that
//! fails some requests and checks every signature with the Standard Webhooks library). Every
//! event produced before the kill arrives, once after de-duplication by id, in order per
//! channel, followed by the events produced after the restart. With the memory store the same
//! run loses them, which shows the test can fail.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use herald_protocol::claims::Claims;
use herald_testkit::process::HeraldProcess;
use herald_testkit::tokens::{now, sign};
use herald_testkit::webhook_receiver::{summary, Receiver};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const KID: &str = "sk_id_hookdisk";
const SECRET: &str = "sk_secret_hookdisk_0123456789abcdef";
/// 32 bytes, base64: a Standard Webhooks secret for the test only.
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYo=";
const MESSAGES: u64 = 30;

fn start(dir: &Path, store: &str, port: u16) -> HeraldProcess {
    let config = format!(
        r#"listen = "127.0.0.1:0"
[log]
format = "json"
level = "info"
[history]
store = "{store}"
path = "{history}"
[webhooks]
timeout_ms = 400
max_backoff_secs = 1
batch_max_events = 10
batch_delay_ms = 5
outbox_commit_ms = 5
[[apps]]
id = "app_hookdisk"
[[apps.secret_keys]]
id = "{KID}"
secret = "{SECRET}"
[[apps.webhooks]]
url = "http://127.0.0.1:{port}/hooks"
secret = "{WHSEC}"
events = ["peer.online", "peer.offline", "presence.joined", "presence.left",
          "channel.occupied", "channel.vacated", "message.published"]
channels = ["room-*"]
"#,
        history = dir.join("history").display()
    );
    HeraldProcess::start(
        Path::new(env!("CARGO_BIN_EXE_herald")),
        &dir.join("herald.toml"),
        &config,
    )
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(node: &HeraldProcess, sub: &str) -> Ws {
    let claims = Claims {
        sub: sub.into(),
        exp: Some(now() + 600),
        ..Claims::default()
    };
    let token = sign(KID, SECRET, &claims);
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{}/v1?token={token}", node.origin()))
            .await
            .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    ws
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("no frame within 20 s")
            .expect("socket ended")
            .unwrap();
        if let Message::Text(t) = frame {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// Sends a request and waits for its ack (frames of other kinds in between are skipped).
async fn request(ws: &mut Ws, mut frame: Value, id: &str) {
    frame["requestId"] = json!(id);
    ws.send(Message::text(frame.to_string())).await.unwrap();
    loop {
        let f = next_json(ws).await;
        if f["requestId"] == id {
            assert_eq!(f["type"], "ack", "{f}");
            return;
        }
    }
}

/// Two peers join `room-1`, one also `room-2`, and each room gets `MESSAGES` messages, all
/// acknowledged (so every event is queued); the sockets stay open.
async fn produce(node: &HeraldProcess, phase: &str) -> Vec<Ws> {
    let (a, b) = (format!("ann-{phase}"), format!("bob-{phase}"));
    let mut ann = connect(node, &a).await;
    let mut bob = connect(node, &b).await;
    request(
        &mut ann,
        json!({"type": "subscribe", "channel": "room-1"}),
        "s1",
    )
    .await;
    request(
        &mut bob,
        json!({"type": "subscribe", "channel": "room-1"}),
        "s1",
    )
    .await;
    request(
        &mut bob,
        json!({"type": "subscribe", "channel": "room-2"}),
        "s2",
    )
    .await;
    for n in 1..=MESSAGES {
        for (ws, channel) in [(&mut ann, "room-1"), (&mut bob, "room-2")] {
            let data = json!({"phase": phase, "n": n});
            request(
                ws,
                json!({"type": "publish", "channel": channel, "data": data}),
                &format!("{channel}-{n}"),
            )
            .await;
        }
    }
    vec![ann, bob]
}

/// A metric's value from `/metrics`.
async fn metric(node: &HeraldProcess, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", node.http()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Forwards connections on `listener` to the receiver: the endpoint is up from now on.
async fn forward(listener: tokio::net::TcpListener, to: u16) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        tokio::spawn(async move {
            if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            }
        });
    }
}

/// The events a phase's `produce` gives, as `summary` strings, in the order they happen per
/// room (room-1's, then room-2's) and per peer.
fn expected(phase: &str) -> (Vec<String>, Vec<String>, usize) {
    let (a, b) = (format!("ann-{phase}"), format!("bob-{phase}"));
    let mut room1 = vec![
        format!("channel.occupied room-1 {a}"),
        format!("presence.joined room-1 {a}"),
        format!("presence.joined room-1 {b}"),
    ];
    let mut room2 = vec![
        format!("channel.occupied room-2 {b}"),
        format!("presence.joined room-2 {b}"),
    ];
    for _ in 1..=MESSAGES {
        room1.push(format!("message.published room-1 {a}"));
        room2.push(format!("message.published room-2 {b}"));
    }
    let total = room1.len() + room2.len() + 2; // and two peer.online
    (room1, room2, total)
}

struct Run {
    /// Every event received, de-duplicated by id, in order of arrival.
    events: Vec<Value>,
    /// What the outbox held on disk when the node was killed.
    stored_at_kill: f64,
}

/// Produces events with the endpoint down, kills the node once they are committed, restarts it
/// on the same directory, brings the endpoint up, produces more, and waits for the receiver to
/// have every event of the second phase (and of the first, when `expect_first`).
async fn run(store: &str, expect_first: bool) -> Run {
    let dir = std::env::temp_dir().join(format!("herald-hookdisk-{store}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The endpoint's address: nothing listens there until after the restart.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut node = start(&dir, store, port);
    node.wait_ready().await;
    let clients = produce(&node, "before").await;
    // Every event is queued (each ack came after its event); wait until all are committed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&node, "herald_webhook_outbox_uncommitted").await != 0.0 {
        assert!(Instant::now() < deadline, "events never committed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stored_at_kill = metric(&node, "herald_webhook_outbox_stored").await;
    node.kill9();
    drop(clients);

    let node = start(&dir, store, port);
    node.wait_ready().await;
    let receiver = Receiver::start(WHSEC, 1.0, 0.30);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(forward(listener, receiver.port));
    let _clients = produce(&node, "after").await;
    let (_, _, per_phase) = expected("after");
    let want = per_phase + if expect_first { per_phase } else { 0 };
    let events = receiver
        .wait_for(Duration::from_secs(60), |events| events.len() >= want)
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    Run {
        events,
        stored_at_kill,
    }
}

fn phase_of(e: &Value) -> &str {
    let who = e["peerId"].as_str().or(e["from"].as_str()).unwrap_or("");
    if who.ends_with("-before") || e["data"]["phase"] == "before" {
        "before"
    } else {
        "after"
    }
}

/// The events of one room, as `summary` strings, with message data checked in order.
fn room(events: &[&Value], channel: &str, phase: &str) -> Vec<String> {
    let data: Vec<u64> = events
        .iter()
        .filter(|e| e["channel"] == channel && e["type"] == "message.published")
        .map(|e| {
            assert_eq!(e["data"]["phase"], phase, "{e}");
            e["data"]["n"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(
        data,
        (1..=MESSAGES).collect::<Vec<_>>(),
        "{channel} in order"
    );
    events
        .iter()
        .filter(|e| e["channel"] == channel)
        .map(|e| summary(e))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_for_a_down_endpoint_survive_kill_9_on_the_disk_store() {
    let run = run("disk", true).await;
    let (room1, room2, per_phase) = expected("before");
    assert_eq!(run.stored_at_kill, per_phase as f64);
    assert_eq!(run.events.len(), 2 * per_phase, "{:#?}", run.events);
    // The stored events come first, then those of the restarted node.
    let (before, after) = run.events.split_at(per_phase);
    let before: Vec<&Value> = before.iter().collect();
    let after: Vec<&Value> = after.iter().collect();
    assert!(before.iter().all(|e| phase_of(e) != "after"), "{before:#?}");
    assert!(after.iter().all(|e| phase_of(e) != "before"), "{after:#?}");
    assert_eq!(room(&before, "room-1", "before"), room1);
    assert_eq!(room(&before, "room-2", "before"), room2);
    let online: Vec<String> = before
        .iter()
        .filter(|e| e["type"] == "peer.online")
        .map(|e| summary(e))
        .collect();
    assert_eq!(
        online,
        ["peer.online - ann-before", "peer.online - bob-before"]
    );
    let (room1, room2, _) = expected("after");
    assert_eq!(room(&after, "room-1", "after"), room1);
    assert_eq!(room(&after, "room-2", "after"), room2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_memory_store_the_same_events_are_lost() {
    let run = run("memory", false).await;
    assert_eq!(run.stored_at_kill, 0.0);
    let (room1, room2, per_phase) = expected("after");
    assert_eq!(run.events.len(), per_phase, "{:#?}", run.events);
    let events: Vec<&Value> = run.events.iter().collect();
    assert!(events.iter().all(|e| phase_of(e) != "before"));
    assert_eq!(room(&events, "room-1", "after"), room1);
    assert_eq!(room(&events, "room-2", "after"), room2);
}
