//! A log sink that stops reading must not stall the node. Every refused connect is logged; with
//! stderr a pipe that nobody drains (a stalled collector, `herald serve 2>&1 | slow-consumer`),
//! blocking writes would park the runtime's threads after a few hundred lines, and an
//! unauthenticated client could freeze the node by sending bad upgrades. Logs are written from a
//! thread of their own through a bounded, lossy buffer instead. Likewise a stdout closed early
//! (`herald serve | head -1`) loses the rest of the dev banner, not the node.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One upgrade with an unknown key: refused (and logged at info).
async fn refused_upgrade(addr: &str) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /v1?key=pk_unknown HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = [0u8; 1024];
    let _ = s.read(&mut buf).await;
}

async fn healthz(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undrained_log_pipe_never_stalls_the_node() {
    let dir = std::env::temp_dir().join(format!("herald-cli-logsink-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--dev-keys"])
        .arg(dir.join("keys.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped()) // held open, never read
        .spawn()
        .unwrap();
    let stderr = child.stderr.take();
    let mut addr = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.split("WebSocket at ws://").nth(1) {
            addr = Some(rest.trim_end_matches("/v1").to_string());
            break;
        }
    }
    // The banner's reader is gone too (dropped after its first line): the banner's remaining
    // lines fail to print, which must not take the node down either.
    let addr = addr.unwrap();
    // Far more refused connects than a pipe's buffer holds log lines of.
    for _ in 0..40 {
        let batch: Vec<_> = (0..50).map(|_| refused_upgrade(&addr)).collect();
        tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::future::join_all(batch),
        )
        .await
        .expect("refused connects kept being answered");
    }
    let health = tokio::time::timeout(Duration::from_secs(5), healthz(&addr))
        .await
        .expect("/healthz answered");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stderr);
}
