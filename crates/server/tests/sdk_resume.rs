//! Lossless reconnect with the OFFICIAL JS and Python SDKs, unmodified (`@metered-ca/realtime`
//! in Node with `ws`, `metered-realtime` in Python; scripts `tests/compat/{js,py}/resume.*`,
//! installed by `bash tests/compat/install.sh`).
//!
//! The subscriber connects with a JWT (a stable peer id) through a TCP proxy. After 5 messages
//! and a confirmed watermark, the proxy cuts its socket (no close frame). While it is away 200
//! messages are published and a direct is sent (its ack says `queued`). Once let back, the SDK
//! reconnects and resubscribes by itself; it must then hold every message 1..=205 in publish
//! order, the only duplicates being the pre-drop messages that were not yet confirmed (at most
//! 5), and the direct after the reconnect.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use herald_server::config::{HistoryChannels, HistoryConfig};
use herald_testkit::prelude::*;
use herald_testkit::proxy::TcpProxy;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const CHANNEL: &str = "room/resume";
const BEFORE: u64 = 5;
const LAST: u64 = BEFORE + 200;
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(40);

#[derive(Clone, Copy, Debug)]
enum Sdk {
    Js,
    Py,
}

fn command(sdk: Sdk) -> Command {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/compat");
    let hint = "Run `bash tests/compat/install.sh` from the workspace root first.";
    match sdk {
        Sdk::Js => {
            let sdk = dir.join("js/node_modules/@metered-ca/realtime/package.json");
            assert!(sdk.exists(), "the JS SDK is missing. {hint}");
            let mut cmd = Command::new("node");
            cmd.arg(dir.join("js/resume.mjs"));
            cmd
        }
        Sdk::Py => {
            let python = dir.join("py/.venv/bin/python");
            assert!(python.exists(), "the Python SDK venv is missing. {hint}");
            let mut cmd = Command::new(python);
            cmd.arg("-u").arg(dir.join("py/resume.py"));
            cmd
        }
    }
}

async fn metric(server: &TestServer, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", server.http()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Polls until `name` reaches `want` (a barrier on the server's own account).
async fn wait_metric(server: &TestServer, name: &str, want: f64) {
    for _ in 0..400 {
        if metric(server, name).await >= want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{name} never reached {want}");
}

async fn run(sdk: Sdk) {
    let server = TestServer::start_with(config_with(|c| {
        c.history = HistoryConfig {
            // A rewind of 3 would show as extra duplicates: a resume must not rewind.
            channels: vec![HistoryChannels {
                patterns: vec!["room/*".into()],
                max_messages: 1000,
                max_age_secs: 3600,
                rewind: 3,
            }],
            ..HistoryConfig::default()
        }
    }))
    .await;
    let proxy = TcpProxy::start(server.addr.port()).await;
    let peer = format!("resume-{sdk:?}").to_lowercase();
    let mut child = command(sdk)
        .env("HERALD_URL", format!("ws://127.0.0.1:{}", proxy.port))
        .env("HERALD_APP", APP)
        .env("HERALD_SK_ID", SK_ID)
        .env("HERALD_SK_SECRET", SK_SECRET)
        .env("HERALD_PK", PK)
        .env("RESUME_PEER", &peer)
        .env("RESUME_CHANNEL", CHANNEL)
        .env("RESUME_LAST", LAST.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut output = Vec::new();
    let mut wait_line = async |prefix: &str| -> String {
        let deadline = tokio::time::Instant::now() + SCRIPT_TIMEOUT;
        loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {prefix}:\n{}", output.join("\n")))
                .unwrap()
                .unwrap_or_else(|| panic!("script ended before {prefix}:\n{}", output.join("\n")));
            output.push(line.clone());
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_string();
            }
        }
    };
    wait_line("@READY").await;

    let mut publisher = server.client("publisher").await;
    for n in 1..=BEFORE {
        publisher.publish(CHANNEL, json!({"n": n}), "p").await;
    }
    // The SDK answers the watermark pings by itself (any WebSocket client does).
    wait_metric(&server, "herald_watermark_confirmed_total", 1.0).await;

    proxy.cut();
    wait_metric(&server, "herald_resume_parked_peers", 1.0).await;
    for n in BEFORE + 1..=LAST {
        publisher.publish(CHANNEL, json!({"n": n}), "p").await;
    }
    let ack = publisher
        .request(json!({"type": "send", "to": peer, "data": {"d": 1}}), "d")
        .await;
    assert_eq!(
        ack,
        json!({"type": "ack", "requestId": "d", "queued": true})
    );
    proxy.restore();

    stdin.write_all(b"dump\n").await.unwrap();
    stdin.flush().await.unwrap();
    let result: Value = serde_json::from_str(&wait_line("@RESULT ").await).unwrap();
    wait_line("@DONE").await;
    assert!(child.wait().await.unwrap().success());

    let ns: Vec<u64> = result["ns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    // 1..=5 before the drop, then the replay from just after the confirmed position.
    assert_eq!(ns[..BEFORE as usize], (1..=BEFORE).collect::<Vec<_>>()[..]);
    let resumed_from = ns[BEFORE as usize];
    assert!(
        (1..=BEFORE + 1).contains(&resumed_from),
        "{sdk:?}: the replay starts at {resumed_from}"
    );
    let after: Vec<u64> = ns[BEFORE as usize..].to_vec();
    assert_eq!(
        after,
        (resumed_from..=LAST).collect::<Vec<_>>(),
        "{sdk:?}: every message after the confirmed position, in publish order, once"
    );
    let duplicates = BEFORE + 1 - resumed_from;
    assert!(duplicates <= BEFORE);
    assert_eq!(result["directs"], json!([{"d": 1}]), "{sdk:?}");
    assert_eq!(
        metric(
            &server,
            "herald_resume_succeeded_total{kind=\"transparent\"}"
        )
        .await,
        1.0
    );
    println!(
        "{sdk:?}: received all {} missed messages in order; {duplicates} duplicates (bound: the \
         {BEFORE} written before the drop); the held direct after the reconnect",
        LAST - BEFORE
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_sdk_resumes_across_a_cut_socket_with_nothing_missed() {
    run(Sdk::Js).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_resumes_across_a_cut_socket_with_nothing_missed() {
    run(Sdk::Py).await;
}
