//! What the watermark and position tracking cost on fan-out: the same run with resume on
//! (`history.resume_window_secs` 30, watermark pings 1 s after traffic) and off (0), on a
//! channel that keeps history, with stable-peer (JWT) subscribers that answer pings as any
//! WebSocket client does. It measures; it asserts only that every message arrived and that the
//! pings stayed within one per second per connection. Run it on an idle machine, in release:
//!
//! ```sh
//! cargo test --release -p herald-server --test resume_cost -- --ignored --nocapture
//! ```
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use herald_server::config::{HistoryChannels, HistoryConfig};
use herald_testkit::prelude::*;
use serde_json::json;

const CHANNEL: &str = "room/cost";
const SUBSCRIBERS: usize = 50;
const MESSAGES: usize = 5_000;
const ROUNDS: usize = 3;

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

/// One fan-out run: messages per second delivered to all subscribers, and the watermark pings
/// sent during it.
async fn run(resume_window_secs: u64) -> (f64, f64, Duration) {
    let config = config_with(|c| {
        c.limits.rate_per_second = 1e9;
        c.limits.rate_burst = 1e9;
        // Subscribers must not be shed as slow consumers while the burst is in flight.
        c.limits.outbound_queue_frames = MESSAGES + 16;
        c.limits.outbound_queue_bytes = 64 << 20;
        c.history = HistoryConfig {
            channels: vec![HistoryChannels {
                patterns: vec!["room/*".into()],
                max_messages: 1000,
                max_age_secs: 3600,
                rewind: 0,
            }],
            resume_window_secs,
            ..HistoryConfig::default()
        };
    });
    config.validate().unwrap();
    let server = TestServer::start_with(config).await;
    let mut readers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut sub = server.client(&format!("sub-{i}")).await;
        sub.subscribe(CHANNEL).await;
        readers.push(tokio::spawn(async move {
            let mut got = 0;
            while got < MESSAGES {
                // Other subscribers' `joined` deltas come too.
                if sub.recv().await["type"] == "message" {
                    got += 1;
                }
            }
            sub
        }));
    }
    let mut publisher = server.client("publisher").await;
    let pings_before = metric(&server, "herald_watermark_pings_total").await;
    let started = Instant::now();
    let frames = (0..MESSAGES)
        .map(|n| json!({"type": "publish", "channel": CHANNEL, "data": {"n": n}}).to_string());
    publisher.send_burst(frames).await;
    for reader in readers {
        reader.await.unwrap();
    }
    let elapsed = started.elapsed();
    let pings = metric(&server, "herald_watermark_pings_total").await - pings_before;
    server.shutdown().await;
    (MESSAGES as f64 / elapsed.as_secs_f64(), pings, elapsed)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: run it alone, in release"]
async fn watermark_cost_on_fan_out() {
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (rate, pings, _) = run(0).await;
        assert_eq!(pings, 0.0);
        off.push(rate);
        let (rate, pings, elapsed) = run(30).await;
        let per_conn_per_sec = pings / SUBSCRIBERS as f64 / elapsed.as_secs_f64();
        println!("resume on: {pings} watermark pings, {per_conn_per_sec:.2}/s per connection");
        assert!(
            pings <= (SUBSCRIBERS as f64) * (elapsed.as_secs_f64() + 2.0),
            "at most one ping per second per connection (plus the last one)"
        );
        on.push(rate);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (off_m, on_m) = (median(&mut off), median(&mut on));
    println!(
        "{SUBSCRIBERS} JWT subscribers, {MESSAGES} messages: resume off {off_m:.0} msg/s, \
         on {on_m:.0} msg/s (median of {ROUNDS}; on/off = {:.3}); off {off:?}, on {on:?}",
        on_m / off_m
    );
}
