//! Written as the attacker: clients that make the server queue bytes they never read. Each test
//! checks what the attacker would break: the server's memory stays bounded (the node's
//! outbound gauge and the process's peak RSS, since the server runs in this process), the
//! attacker and nobody else is disconnected, and well-behaved clients lose nothing.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_server::config::Config;
use herald_testkit::prelude::*;
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const MIB: usize = 1024 * 1024;

/// A config whose rate limits do not get in the attacker's way: only the memory limits act.
fn unthrottled(f: impl FnOnce(&mut Config)) -> Config {
    config_with(|c| {
        c.limits.rate_per_second = 100_000.0;
        c.limits.rate_burst = 100_000.0;
        f(c);
    })
}

/// One field of `/proc/self/status`, in bytes.
fn proc_status_bytes(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kb: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Polls `metric` until it reaches `at_least`, or fails after `within`.
async fn metric_reaches(server: &TestServer, name: &str, at_least: f64, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let value = server.metric(name).await;
        if value >= at_least {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed at {value}, wanted {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Records the highest value of the node's outbound gauge while an attack runs.
struct GaugeWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<f64>,
}

impl GaugeWatch {
    fn start(server: &TestServer) -> GaugeWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("http://{}/metrics", server.addr);
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            while !stopped.load(Ordering::Acquire) {
                let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
                let value = text
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("herald_outbound_queued_bytes ")?
                            .parse()
                            .ok()
                    })
                    .unwrap();
                peak = peak.max(value);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            peak
        });
        GaugeWatch { stop, task }
    }

    async fn peak(self) -> usize {
        self.stop.store(true, Ordering::Release);
        self.task.await.unwrap() as usize
    }
}

/// A client that never reads: a 4 KiB receive buffer, and nothing ever taken out of it
/// after the welcome.
struct Stalled {
    ws: WebSocketStream<TcpStream>,
}

impl Stalled {
    async fn connect(server: &TestServer, token: &str) -> Stalled {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(server.addr).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(server.token_url(token), stream)
            .await
            .unwrap();
        let welcome = ws.next().await.unwrap().unwrap();
        assert!(welcome.to_text().unwrap().contains("welcome"));
        Stalled { ws }
    }

    /// Writes frames in one flush, without reading anything.
    async fn send_burst(&mut self, frames: impl IntoIterator<Item = String>) {
        for frame in frames {
            self.ws.feed(Message::text(frame)).await.unwrap();
        }
        self.ws.flush().await.unwrap();
    }

    /// Finally reads what the server left in the socket, up to its end: the close code
    /// (1006 when the server dropped the connection without a close frame getting through).
    async fn read_to_end(mut self) -> u16 {
        loop {
            match tokio::time::timeout(RECV_TIMEOUT, self.ws.next()).await {
                Err(_) => panic!("the server did not close the stalled connection"),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return frame.map_or(1005, |f| u16::from(f.code));
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) => return 1006,
            }
        }
    }
}

/// Reads `total` messages of `channel` in order (skipping presence) and reports progress.
fn read_messages(
    mut client: Client,
    total: usize,
    progress: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut received = 0;
        while received < total {
            let text = client.recv_text().await;
            if text.starts_with(r#"{"type":"message""#) {
                assert!(
                    text.contains(&format!(r#""i":{received}}}"#))
                        || text.contains(&format!(r#""i":{received},"#)),
                    "out of order at {received}: {}",
                    &text[..text.len().min(120)]
                );
                received += 1;
                progress.store(received, Ordering::Release);
            }
        }
        received
    })
}

/// Publishes `total` messages, never more than `window` ahead of the slowest well-behaved reader.
async fn publish_paced(
    publisher: &mut Client,
    channel: &str,
    total: usize,
    payload: &str,
    readers: &[Arc<AtomicUsize>],
    window: usize,
) {
    for i in 0..total {
        let frame = json!({"type": "publish", "channel": channel, "data": {"p": payload, "i": i}});
        publisher.send_json(frame).await;
        loop {
            let slowest = readers
                .iter()
                .map(|r| r.load(Ordering::Acquire))
                .min()
                .unwrap_or(i);
            if slowest + window > i {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

// ---- (a) the repeated-subscribe snapshot attack --------------------------------------------------

/// A roster member: ~4 KB of `peerMetadata`, and no `presence` action, so building a roster of
/// hundreds costs no presence traffic to the members themselves.
async fn join_roster(server: &TestServer, i: usize, metadata: &str) -> Client {
    let mut claims = claims(&format!("member-{i}"));
    claims.peer_metadata = Some(raw(metadata));
    claims.permissions = Some(vec!["subscribe".into()]);
    let mut member = server.client_with_token(&token_for(&claims)).await;
    let reply = member
        .request(json!({"type": "subscribe", "channel": "room"}), "join")
        .await;
    assert_eq!(reply, ack("join"));
    member
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_subscribes_to_a_big_room_cannot_pin_snapshots() {
    const MEMBERS: usize = 300;
    const ATTACKERS: usize = 2;
    const SUBSCRIBES: usize = 64;
    const MESSAGES: usize = 200;
    let server = TestServer::start_with(unthrottled(|c| {
        c.limits.outbound_queue_bytes = 4 * MIB;
    }))
    .await;
    let metadata = format!(r#"{{"blob":"{}"}}"#, "m".repeat(4000));
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        members.push(join_roster(&server, i, &metadata).await);
    }
    let mut watcher = server.client("watcher").await;
    let (_, snapshot) = watcher.subscribe("room").await;
    assert_eq!(snapshot["joined"].as_array().unwrap().len(), MEMBERS);
    let snapshot_bytes = snapshot.to_string().len();
    assert!(snapshot_bytes > MEMBERS * 4000, "{snapshot_bytes}");
    let mut publisher = server.client("publisher").await;

    let rss_before = proc_status_bytes("VmRSS:");
    let gauge = GaugeWatch::start(&server);
    let progress = Arc::new(AtomicUsize::new(0));
    let reader = read_messages(watcher, MESSAGES, progress.clone());
    // Each attacker asks for the 1.2 MB snapshot 64 times (~4 KB sent) and never reads.
    let mut attackers = Vec::new();
    for a in 0..ATTACKERS {
        let mut attacker = Stalled::connect(&server, &token(&format!("attacker-{a}"))).await;
        attacker
            .send_burst((0..SUBSCRIBES).map(|i| {
                json!({"type": "subscribe", "channel": "room", "requestId": i.to_string()})
                    .to_string()
            }))
            .await;
        attackers.push(attacker);
    }
    publish_paced(&mut publisher, "room", MESSAGES, "hello", &[progress], 16).await;
    let received = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        received, MESSAGES,
        "the well-behaved subscriber lost messages"
    );
    metric_reaches(
        &server,
        "herald_slow_consumer_disconnects_total",
        ATTACKERS as f64,
        Duration::from_secs(20),
    )
    .await;
    let peak = gauge.peak().await;
    let rss_growth = proc_status_bytes("VmHWM:").saturating_sub(rss_before);
    println!(
        "snapshot {snapshot_bytes} B; peak queued {peak} B; peak RSS growth {} MB",
        rss_growth / MIB
    );
    // Unbounded, the 128 snapshots would pin ~150 MB. Bounded: per attacker its budget plus
    // one snapshot, far less in practice (the third subscribe is refused before encoding).
    assert!(
        peak <= ATTACKERS * (4 * MIB + snapshot_bytes),
        "peak queued {peak} B"
    );
    assert!(rss_growth < 48 * MIB, "RSS grew by {} MB", rss_growth / MIB);
    for attacker in attackers {
        let code = attacker.read_to_end().await;
        assert!(code == 1008 || code == 1006, "attacker closed with {code}");
    }
    assert!(server.metric("herald_outbound_queued_bytes").await < 64.0 * 1024.0);
    // The members, who did nothing wrong, are still connected (past the messages they got).
    for member in &mut members {
        member
            .send_json(json!({"type": "ping", "requestId": "alive"}))
            .await;
        while member.recv().await["type"] != "pong" {}
    }
}

#[tokio::test]
async fn a_racing_duplicate_subscribe_still_gets_ack_and_full_snapshot() {
    // The spec's idempotent path (§8.3) for a well-behaved client: two subscribes sent at once
    // (a reconnect replay racing application code) each get an ack and a full snapshot.
    let server = TestServer::start().await;
    let _other = {
        let mut other = server.client("other").await;
        other.subscribe("room").await;
        other
    };
    let mut client = server.client("me").await;
    client
        .send_burst(
            ["a", "b"].map(|id| {
                json!({"type": "subscribe", "channel": "room", "requestId": id}).to_string()
            }),
        )
        .await;
    for id in ["a", "b"] {
        assert_eq!(client.recv().await, ack(id));
        let snapshot = client.recv().await;
        assert_eq!(peer_ids(&snapshot["joined"]), ["other"], "{snapshot}");
    }
    // And later duplicates too, once the earlier snapshots were written.
    let snapshot = client.subscribe_as("room", "c").await;
    assert_eq!(peer_ids(&snapshot["joined"]), ["other"]);
    client.sync().await;
}

// ---- (b) large directs to a connection that never reads ------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_directs_to_a_stalled_peer_stay_within_its_byte_budget() {
    const DIRECTS: usize = 1200; // 72 MB, more than the old 1,024-frame queue could pin.
    let server = TestServer::start_with(unthrottled(|c| {
        c.limits.outbound_queue_bytes = 4 * MIB;
    }))
    .await;
    let sink = Stalled::connect(&server, &token("sink")).await;
    let mut sender = server.client("sender").await;
    let payload = "x".repeat(60_000);
    let rss_before = proc_status_bytes("VmRSS:");
    let gauge = GaugeWatch::start(&server);
    let mut replies = 0;
    let mut refused = 0;
    for i in 0..DIRECTS {
        let frame = json!({"type": "send", "to": "sink", "data": {"i": i, "p": payload}, "requestId": i.to_string()});
        sender.send_json(frame).await;
        // Replies are read as they come, so the sender is a prompt reader.
        while let Some(Message::Text(text)) = sender.next_raw(Duration::ZERO).await {
            replies += 1;
            refused += usize::from(text.contains("peer_not_found"));
        }
    }
    while replies < DIRECTS {
        let reply = sender.recv().await;
        replies += 1;
        refused += usize::from(reply["error"] == "peer_not_found");
    }
    let peak = gauge.peak().await;
    let rss_growth = proc_status_bytes("VmHWM:").saturating_sub(rss_before);
    println!(
        "peak queued {peak} B; peak RSS growth {} MB; {refused} directs refused after the close",
        rss_growth / MIB
    );
    assert!(peak <= 4 * MIB + 2 * 64 * 1024, "peak queued {peak} B");
    assert!(rss_growth < 32 * MIB, "RSS grew by {} MB", rss_growth / MIB);
    assert!(refused > 0, "the stalled peer was never disconnected");
    let code = sink.read_to_end().await;
    assert!(code == 1008 || code == 1006, "sink closed with {code}");
    assert_eq!(
        server
            .metric("herald_slow_consumer_disconnects_total")
            .await,
        1.0
    );
    sender.sync().await;
}

// ---- (c) many stalled connections against the node-wide budget -----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_budget_sheds_stalled_connections_and_readers_keep_receiving() {
    const STALLED: usize = 8;
    const MESSAGES: usize = 2000; // 8 MB to each subscriber.
    const NODE_BUDGET: usize = 2 * MIB;
    let server = TestServer::start_with(unthrottled(|c| {
        c.limits.outbound_queue_bytes = MIB;
        c.limits.node_outbound_bytes = NODE_BUDGET;
    }))
    .await;
    let mut stalled = Vec::new();
    for i in 0..STALLED {
        let mut s = Stalled::connect(&server, &token(&format!("stalled-{i}"))).await;
        s.send_burst([json!({"type": "subscribe", "channel": "feed"}).to_string()])
            .await;
        stalled.push(s);
    }
    let mut readers = Vec::new();
    let mut progress = Vec::new();
    for i in 0..2 {
        let mut reader = server.client(&format!("reader-{i}")).await;
        reader.subscribe("feed").await;
        let seen = Arc::new(AtomicUsize::new(0));
        readers.push(read_messages(reader, MESSAGES, seen.clone()));
        progress.push(seen);
    }
    let mut publisher = server.client("publisher").await;
    publisher.sync().await; // every subscribe above is in place
    let gauge = GaugeWatch::start(&server);
    let payload = "y".repeat(4000);
    publish_paced(&mut publisher, "feed", MESSAGES, &payload, &progress, 8).await;
    for reader in readers {
        let received = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(received, MESSAGES, "a prompt reader lost messages");
    }
    metric_reaches(
        &server,
        "herald_slow_consumer_disconnects_total",
        STALLED as f64,
        Duration::from_secs(20),
    )
    .await;
    let peak = gauge.peak().await;
    let shed = server
        .metric("herald_outbound_budget_disconnects_total")
        .await;
    println!("peak queued {peak} B; {shed} shed by the node budget");
    assert!(shed >= 1.0, "the node budget never acted");
    // Over the budget only connections holding ≤ 64 KiB may still grow, by one frame each.
    let slack = (STALLED + 3) * (64 * 1024 + 4100);
    assert!(peak <= NODE_BUDGET + slack, "peak queued {peak} B");
    for s in stalled {
        let code = s.read_to_end().await;
        assert!(code == 1008 || code == 1006, "stalled closed with {code}");
    }
    publisher.sync().await;
}

// ---- odd tokens and quotas --------------------------------------------------------------------------

#[tokio::test]
async fn a_token_expiring_near_the_end_of_time_is_served_without_overflow() {
    let server = TestServer::start().await;
    for exp in [i64::MAX, i64::MAX / 1000 + 1, i64::MAX - 1] {
        let mut claims = claims("far");
        claims.exp = Some(exp);
        let mut client = Client::connect(&server.token_url(&token_for(&claims))).await;
        let welcome = client.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        // The session runs (an overflow would have closed it with 1011).
        client.sync().await;
        client.expect_silence(200).await;
    }
}

#[tokio::test]
async fn peak_concurrent_counts_only_admitted_connections() {
    let server = TestServer::start_with(config_with(|c| c.apps[0].max_connections = 2)).await;
    let _a = server.client("a").await;
    let _b = server.client("b").await;
    for _ in 0..3 {
        assert_eq!(server.refused_token(&token("c")).await, 4010);
    }
    let usage: Value = reqwest::Client::new()
        .get(format!("http://{}/v1/usage", server.addr))
        .header("Authorization", format!("Bearer {SK_ID}:{SK_SECRET}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage["peakConcurrent"], 2, "{usage}");
}
