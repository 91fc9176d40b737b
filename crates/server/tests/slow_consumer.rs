//! A client that stops reading is closed as a slow consumer once its bounded queue fills: the
//! publisher is never slowed down, other subscribers get everything, and memory stays bounded.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use herald_testkit::prelude::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stalls_is_cut_off_and_nobody_else_waits() {
    let mut config = test_config();
    config.limits.outbound_queue_frames = 64;
    config.limits.rate_burst = 1000.0;
    config.limits.rate_per_second = 1000.0;
    let server = TestServer::start_with(config).await;
    let mut publisher = server.client("pub").await;
    let mut healthy = server.client("healthy").await;
    let mut stalled = server.client("stalled").await;
    healthy.subscribe("big").await;
    stalled.subscribe("big").await;
    // `healthy` reads as fast as it can; `stalled` is never read, so its socket buffers and
    // then its queue fill up.
    let total = 600; // 36 MB: far beyond loopback socket buffers plus the queue.
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = progress.clone();
    let reader = tokio::spawn(async move {
        // Counted without parsing, so this reader keeps up with the publisher.
        let mut received = 0;
        while received < total {
            let text = healthy.recv_text().await;
            if text.starts_with(r#"{"type":"message""#) {
                assert!(
                    text.contains(&format!(r#""i":{received},"#)),
                    "out of order at {received}"
                );
                received += 1;
                seen.store(received, std::sync::atomic::Ordering::Release);
            }
        }
        received
    });
    let payload = "x".repeat(60_000);
    let started = Instant::now();
    for i in 0..total {
        publisher
            .send_json(json!({"type": "publish", "channel": "big", "data": {"i": i, "p": payload}}))
            .await;
        // Paced by the healthy reader (however slow this machine is), never by the stalled one.
        if i % 32 == 31 {
            while progress.load(std::sync::atomic::Ordering::Acquire) + 8 < i {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        if i % 50 == 49 {
            // The publisher gets its acks without waiting on the stalled reader.
            publisher
                .send_json(json!({"type": "ping", "requestId": format!("p{i}")}))
                .await;
        }
    }
    let mut pongs = 0;
    while pongs < total / 50 {
        if publisher.recv().await["type"] == "pong" {
            pongs += 1;
        }
    }
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .unwrap()
            .unwrap(),
        total
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // The stalled connection ends. The 1008 "slow consumer" close frame gets through only if the
    // socket has room for it; otherwise the server drops the TCP connection (1006 here).
    let (code, frames) = stalled.recv_close().await;
    assert!(
        code == 1008 || code == 1006,
        "closed with {code} after {} frames",
        frames.len()
    );
    assert!(frames.len() < total);
    let metrics = reqwest::get(format!("http://{}/metrics", server.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("herald_slow_consumer_disconnects_total 1"),
        "{metrics}"
    );
}
