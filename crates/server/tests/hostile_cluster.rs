//! One node cannot take down another (Redis engine). An attacker holding the public key opens
//! many connections on node A and publishes as fast as the rate limit allows to a channel with
//! subscribers on node B, some of which never read. Node B must keep delivering unrelated
//! traffic in time and without loss, keep its queue of pushes from Redis under its bound,
//! answer `/healthz`, and shut down within its deadline while the flood goes on.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use herald_testkit::cluster::Cluster;
use herald_testkit::prelude::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// Attacker connections on node A, each publishing at its full rate.
const ATTACKERS: usize = 20;
/// Node B's bus queue bound for this test: small, so on most machines the flood overruns it
/// and B has to shed (the unrelated messages must then still all arrive, in order).
const BUS_QUEUE: usize = 64;
/// Bytes of `data` per flood message.
const FLOOD_BYTES: usize = 8 * 1024;
const SHUTDOWN_DEADLINE_SECS: u64 = 3;

/// An attacker: a burst, then the sustained rate, just under the limits (exceeding them would
/// only get it disconnected). Its own acks are read and thrown away.
async fn attack(node_a_url: String, stop: Arc<AtomicBool>) {
    let mut client = Client::connect(&node_a_url).await;
    assert_eq!(client.recv().await["type"], "welcome");
    let (mut tx, mut rx) = client.ws.split();
    tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
    let frame =
        json!({"type": "publish", "channel": "flood", "data": "x".repeat(FLOOD_BYTES)}).to_string();
    // The default bucket: 200 burst, 100 per second. Stay a little under both.
    for _ in 0..180 {
        if tx.send(Message::text(frame.clone())).await.is_err() {
            return;
        }
    }
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        for _ in 0..9 {
            if tx.send(Message::text(frame.clone())).await.is_err() {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_published_on_one_node_does_not_hurt_another() {
    let mut cluster = Cluster::redis_with(2, |config| {
        config.engine.bus_queue_messages = BUS_QUEUE;
        config.timing.shutdown_deadline_secs = SHUTDOWN_DEADLINE_SECS;
    })
    .await;
    let (a, b) = (cluster.node(0), cluster.node(1));

    // On B: subscribers of the flooded channel that never read, and some that do.
    let mut sleepers = Vec::new();
    for _ in 0..10 {
        let (mut c, _) = b.pk_client(PK).await;
        c.subscribe("flood").await;
        sleepers.push(c);
    }
    for _ in 0..5 {
        let (mut c, _) = b.pk_client(PK).await;
        c.subscribe("flood").await;
        tokio::spawn(async move { while let Some(Ok(_)) = c.ws.next().await {} });
    }
    // The unrelated conversation: published on A, received on B.
    let mut calm_rx = b.client("calm-reader").await;
    calm_rx.subscribe("calm").await;
    let mut calm_tx = a.client("calm-writer").await;

    let stop = Arc::new(AtomicBool::new(false));
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|_| tokio::spawn(attack(a.url(&format!("key={PK}")), stop.clone())))
        .collect();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Unrelated messages keep arriving on B, in order, none lost, each within 500 ms.
    let mut worst = Duration::ZERO;
    for i in 0..30u64 {
        let sent = Instant::now();
        calm_tx
            .send_json(json!({"type": "publish", "channel": "calm", "data": i}))
            .await;
        let got = loop {
            let frame = calm_rx.recv().await;
            if frame["type"] == "message" {
                break frame;
            }
        };
        assert_eq!(
            got["data"], i,
            "calm messages arrive in order and none is lost"
        );
        worst = worst.max(sent.elapsed());
        // B answers its health check meanwhile.
        if i % 10 == 0 {
            let asked = Instant::now();
            let status = reqwest::get(format!("http://{}/healthz", b.addr))
                .await
                .unwrap()
                .status();
            assert_eq!(status, 200);
            assert!(
                asked.elapsed() < Duration::from_millis(500),
                "/healthz on B took {:?} under the flood",
                asked.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        worst < Duration::from_millis(500),
        "an unrelated message on B waited {worst:?} behind the flood"
    );

    // B's queue of pushes from Redis never outgrew its bound.
    let peak = b.metric("herald_bus_queue_peak_messages").await;
    let shed = b.metric("herald_bus_shed_total").await;
    assert!(peak <= BUS_QUEUE as f64, "bus queue peaked at {peak}");
    eprintln!(
        "flood for {:?}: B's bus queue peaked at {peak}, shed {shed}, worst calm latency {worst:?}",
        started.elapsed()
    );

    // B shuts down within its deadline while the flood goes on.
    let mut b = cluster.nodes.pop().unwrap();
    let asked = Instant::now();
    let stopped = tokio::time::timeout(
        Duration::from_secs(SHUTDOWN_DEADLINE_SECS + 2),
        b.begin_shutdown(),
    )
    .await;
    assert!(
        stopped.is_ok(),
        "node B did not stop within {SHUTDOWN_DEADLINE_SECS} s (+2 s slack) under the flood"
    );
    eprintln!("B shut down in {:?}", asked.elapsed());
    stop.store(true, Ordering::Relaxed);
    for attacker in attackers {
        attacker.abort();
    }
    drop(sleepers);
}
