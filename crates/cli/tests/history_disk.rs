//! `[history] store = "disk"` against the real `herald` binary: N messages published with
//! acknowledgements, `kill -9`, a restart on the same directory, and all N are in REST history
//! and in the rewind of a new subscriber, with the same ids, offsets and epoch.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use herald_testkit::process::HeraldProcess;
use herald_testkit::ws::Client;
use serde_json::{json, Value};

const KID: &str = "sk_id_disk";
const SECRET: &str = "sk_secret_disk_0123456789abcdef";
const N: usize = 40;

fn start(dir: &Path) -> HeraldProcess {
    let config = format!(
        r#"listen = "127.0.0.1:0"
[log]
format = "json"
level = "info"
[history]
store = "disk"
path = "{history}"
[[history.channels]]
patterns = ["room"]
max_messages = 100
rewind = {N}
[[apps]]
id = "app_disk"
[[apps.secret_keys]]
id = "{KID}"
secret = "{SECRET}"
"#,
        history = dir.join("history").display()
    );
    HeraldProcess::start(
        Path::new(env!("CARGO_BIN_EXE_herald")),
        &dir.join("herald.toml"),
        &config,
    )
}

/// A client of `node` as peer `sub`, with a token of this file's key.
async fn connect(node: &HeraldProcess, sub: &str) -> Client {
    Client::connect_jwt(&node.origin(), KID, SECRET, sub).await
}

/// The next frame; a restarted node replays from disk, so allow it time.
async fn next_json(ws: &mut Client) -> Value {
    ws.recv_within(Duration::from_secs(20)).await
}

/// Subscribes to `room` and returns the rewound messages (those before any live one).
async fn subscribe(ws: &mut Client, expect_rewind: usize) -> Vec<Value> {
    ws.subscribe("room").await;
    let mut rewound = Vec::new();
    while rewound.len() < expect_rewind {
        let frame = next_json(ws).await;
        assert_eq!(frame["type"], "message", "{frame}");
        rewound.push(frame);
    }
    rewound
}

/// (id, offset, epoch, from, data) of a message frame or a REST history entry.
fn position(m: &Value, epoch: &Value) -> (String, u64, String, String, Value) {
    (
        m["id"].as_str().unwrap().to_owned(),
        m["offset"].as_u64().unwrap(),
        epoch.as_str().unwrap().to_owned(),
        m["from"].as_str().unwrap().to_owned(),
        m["data"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9_with_their_ids_offsets_and_epoch() {
    let dir = std::env::temp_dir().join(format!("herald-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut node = start(&dir);

    let mut watcher = connect(&node, "watcher").await;
    assert!(subscribe(&mut watcher, 0).await.is_empty());
    let mut publisher = connect(&node, "publisher").await;
    for n in 0..N {
        let id = format!("p{n}");
        publisher
            .send_json(
                json!({"type": "publish", "channel": "room", "data": {"n": n}, "requestId": id}),
            )
            .await;
        let ack = next_json(&mut publisher).await;
        assert_eq!(
            (&ack["type"], &ack["requestId"]),
            (&json!("ack"), &json!(id))
        );
    }
    let mut published = Vec::new();
    while published.len() < N {
        let m = next_json(&mut watcher).await;
        if m["type"] == "message" {
            published.push(position(&m, &m["epoch"]));
        }
    }
    let offsets: Vec<u64> = published.iter().map(|p| p.1).collect();
    assert_eq!(offsets, (1..=N as u64).collect::<Vec<_>>());

    // kill -9: no shutdown path runs.
    node.kill9();

    let node = start(&dir);
    let url = format!(
        "http://{}/v1/channels/room/messages?limit=1000",
        node.listen
    );
    let resp = reqwest::Client::new()
        .get(url)
        .header("authorization", format!("Bearer {KID}:{SECRET}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let rest: Vec<_> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| position(m, &body["epoch"]))
        .collect();
    assert_eq!(rest, published);
    assert_eq!(body["hasMore"], false);

    let mut late = connect(&node, "late").await;
    let rewound: Vec<_> = subscribe(&mut late, N)
        .await
        .iter()
        .map(|m| position(m, &m["epoch"]))
        .collect();
    assert_eq!(rewound, published);

    // The history goes on in the same epoch.
    let mut publisher = connect(&node, "publisher").await;
    publisher
        .send_json(
            json!({"type": "publish", "channel": "room", "data": {"n": N}, "requestId": "after"}),
        )
        .await;
    assert_eq!(next_json(&mut publisher).await["type"], "ack");
    let next = next_json(&mut late).await;
    assert_eq!(next["offset"], json!(N + 1));
    assert_eq!(next["epoch"].as_str().unwrap(), published[0].2);
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
