//! The reconnect grace on the default memory engine, as the OFFICIAL JS SDK meets it
//! (`@metered-ca/realtime` in Node 20, `ws` as its `webSocketFactory`; script
//! `tests/compat/js/grace.mjs`, installed by `bash tests/compat/install.sh`).
//!
//! The observer is a testkit WebSocket client. Client `b` reaches Herald through a TCP proxy
//! that the test cuts (no close frame: a drop); its SDK reconnects on its own backoff within
//! the grace, and the observer sees no `left`/`joined`. Its clean `close()` is then seen within
//! 100 ms. Client `c` is killed with its process (a drop with no reconnect): its `left` is seen
//! once, after the grace. "Nothing else arrived" is proved with a marker message.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_testkit::prelude::*;
use herald_testkit::proxy::TcpProxy;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

const CHANNEL: &str = "room/grace";
/// How long one script may take to reach a marker before the test fails.
const MARKER_TIMEOUT: Duration = Duration::from_secs(20);

/// One `grace.mjs` process: its stdin, and its output lines as they come.
struct Script {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
    output: Arc<Mutex<Vec<String>>>,
}

fn script_path() -> PathBuf {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/compat/js");
    let sdk = js.join("node_modules/@metered-ca/realtime/package.json");
    assert!(
        sdk.exists(),
        "The JS SDK is not installed ({} is missing). Run `bash tests/compat/install.sh` from \
         the workspace root first.",
        sdk.display()
    );
    js.join("grace.mjs")
}

/// Forwards a pipe's lines to the channel and keeps them for the failure report.
fn forward(pipe: impl AsyncRead + Unpin + Send + 'static, tx: mpsc::UnboundedSender<String>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
}

impl Script {
    fn spawn(url: &str, peer: &str, mode: &str) -> Script {
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
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be on PATH");
        let (tx, lines) = mpsc::unbounded_channel();
        forward(child.stdout.take().unwrap(), tx.clone());
        forward(child.stderr.take().unwrap(), tx);
        Script {
            stdin: child.stdin.take().unwrap(),
            child,
            lines,
            output: Arc::default(),
        }
    }

    /// Reads output until the line `marker`.
    async fn wait_for(&mut self, marker: &str) {
        let deadline = tokio::time::Instant::now() + MARKER_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    let done = line == marker;
                    self.output.lock().unwrap().push(line);
                    if done {
                        return;
                    }
                }
                Ok(None) => panic!("script ended before {marker}:\n{}", self.report()),
                Err(_) => panic!("no {marker} within {MARKER_TIMEOUT:?}:\n{}", self.report()),
            }
        }
    }

    fn report(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    async fn send_line(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }
}

/// Proves nothing else reached `observer`: a marker published after the action must be its
/// next frame.
async fn barrier(observer: &mut Client, marker: &mut Client, n: u32) {
    marker.publish(CHANNEL, json!({"marker": n}), "m").await;
    let frame = observer.recv().await;
    assert_eq!(frame["type"], "message", "expected the marker, got {frame}");
    assert_eq!(frame["data"], json!({"marker": n}));
}

fn only_peer(frame: &Value, key: &str) -> String {
    assert_eq!(frame["type"], "presence", "{frame}");
    let entries = frame[key].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{frame}");
    entries[0]["peerId"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_sdk_drop_and_reconnect_within_the_grace_shows_no_flap_on_the_memory_engine() {
    let config = test_config();
    assert_eq!(config.engine.kind, "memory", "the default engine");
    let grace = Duration::from_millis(config.engine.reconnect_grace_ms);
    let server = TestServer::start_with(config).await;
    let proxy = TcpProxy::start(server.addr.port()).await;

    let mut observer = server.client("observer").await;
    observer.subscribe(CHANNEL).await;
    let mut marker = server.client("marker").await;

    let mut b = Script::spawn(&format!("ws://127.0.0.1:{}", proxy.port), "b", "reconnect");
    b.wait_for("@READY").await;
    assert_eq!(only_peer(&observer.recv().await, "joined"), "b");
    let mut c = Script::spawn(&server.origin(), "c", "hold");
    c.wait_for("@READY").await;
    assert_eq!(only_peer(&observer.recv().await, "joined"), "c");

    // b's socket is cut under it: no close frame reaches either side.
    let cut_at = Instant::now();
    proxy.cut();
    proxy.restore();
    b.wait_for("@RESUBSCRIBED").await;
    let back_after = cut_at.elapsed();
    assert!(
        back_after < grace,
        "premise: the SDK was back after {back_after:?}, beyond the {grace:?} grace"
    );
    // Past the grace of the drop: its timer has run and found b back.
    tokio::time::sleep((grace + Duration::from_millis(500)).saturating_sub(cut_at.elapsed())).await;
    barrier(&mut observer, &mut marker, 1).await;

    // A clean close is a leave: seen at once.
    let closed_at = Instant::now();
    b.send_line("close").await;
    assert_eq!(only_peer(&observer.recv().await, "left"), "b");
    let close_seen = closed_at.elapsed();
    assert!(
        close_seen <= Duration::from_millis(100),
        "a clean close was seen after {close_seen:?}"
    );
    b.wait_for("@CLOSED").await;
    let status = b.child.wait().await.unwrap();
    assert!(status.success(), "b's script failed:\n{}", b.report());

    // A drop with no reconnect: `left` once, after the grace.
    let killed_at = Instant::now();
    c.child.kill().await.unwrap();
    let frame = observer.recv_within(grace + Duration::from_secs(3)).await;
    assert_eq!(only_peer(&frame, "left"), "c");
    let seen_after = killed_at.elapsed();
    assert!(
        seen_after >= grace,
        "c's left came {seen_after:?} after the kill, inside the grace"
    );
    barrier(&mut observer, &mut marker, 2).await;
    println!(
        "b back after {back_after:?}; its clean close seen after {close_seen:?}; \
         c's left {seen_after:?} after the kill (grace {grace:?})"
    );
    server.shutdown().await;
}
