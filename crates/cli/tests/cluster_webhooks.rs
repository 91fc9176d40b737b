//! Webhooks on three real `herald` processes sharing a real `redis-server`, delivered to a
//! real HTTP receiver that fails about 30 % of requests (500s, and some held past Herald's
//! timeout) and checks every signature with the Standard Webhooks reference library. The node
//! that owns the endpoint's delivery and holds a room's last member is killed with SIGKILL
//! while every event it read is still undelivered (the backend is unreachable until then): the room's `presence.left`, `peer.offline` and
//! `channel.vacated` each arrive exactly once (de-duplicated by id) within the lease bound,
//! and every event the dead node had read is delivered by another node, in order per channel.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use herald_testkit::process::{redis_node_config, HeraldProcess};
use herald_testkit::redis::RedisServer;
use herald_testkit::webhook_receiver::Receiver;
use herald_testkit::ws::Client;
use serde_json::{json, Value};

const KID: &str = "sk_id_hooks";
const SECRET: &str = "sk_secret_hooks_0123456789abcdef";
const LEASE_MS: u64 = 5_000;
/// 32 bytes, base64: a Standard Webhooks secret for the test only.
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYo=";
const MESSAGES: u64 = 40;

fn start_node(dir: &std::path::Path, redis: &RedisServer, id: &str, extra: &str) -> HeraldProcess {
    start_node_with_lease(dir, redis, id, extra, LEASE_MS)
}

fn start_node_with_lease(
    dir: &std::path::Path,
    redis: &RedisServer,
    id: &str,
    extra: &str,
    lease_ms: u64,
) -> HeraldProcess {
    let engine = format!("redis_url = \"{}\"", redis.url());
    let config = redis_node_config(&engine, id, lease_ms, ("app_hooks", KID, SECRET), extra);
    HeraldProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_herald")),
        &dir.join(format!("{id}.toml")),
        &config,
    )
}

/// A client of `node` as peer `sub`, with a token of this file's key.
async fn connect(node: &HeraldProcess, sub: &str) -> Client {
    Client::connect_jwt(&node.origin(), KID, SECRET, sub).await
}

/// Forwards connections on `listener` to the receiver: the backend is reachable from now on.
async fn forward(listener: tokio::net::TcpListener, to: u16) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        tokio::spawn(async move {
            if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            }
        });
    }
}

fn redis_cli(redis: &RedisServer, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-u", &redis.url()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the endpoint's outbox holds at least `at_least` events and every one is
/// pending (read, not acknowledged) on the consumer of node instance `consumer`, and returns
/// how many.
async fn wait_all_pending_on(redis: &RedisServer, consumer: &str, at_least: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stream = redis_cli(redis, &["--scan", "--pattern", "*:outbox"]);
        let stream = stream.trim();
        let length: usize = redis_cli(redis, &["XLEN", stream])
            .trim()
            .parse()
            .unwrap_or(0);
        let pending = redis_cli(redis, &["XPENDING", stream, "delivery"]);
        let pending_count: usize = pending
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        if length >= at_least && pending_count == length {
            assert!(pending.contains(consumer), "{pending}");
            return pending_count;
        }
        assert!(
            Instant::now() < deadline,
            "{length} events, pending: {pending}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stream entry id in an event id (`evt_<ms>-<seq>`), for order checks.
fn entry(event: &Value) -> (u64, u64) {
    let id = event["id"].as_str().unwrap().strip_prefix("evt_").unwrap();
    let (ms, seq) = id.split_once('-').unwrap();
    (ms.parse().unwrap(), seq.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_room_is_vacated_once_and_its_pending_events_are_delivered_elsewhere() {
    let redis = RedisServer::start();
    let receiver = Receiver::start(WHSEC, 1.0, 0.30);
    let dir = std::env::temp_dir().join(format!("herald-hooks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The endpoint's address: nothing listens there until the owner is dead.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hooks = format!(
        r#"[[apps.webhooks]]
url = "http://127.0.0.1:{port}/hooks"
secret = "{WHSEC}"
events = ["peer.online", "peer.offline", "presence.joined", "presence.left",
          "channel.occupied", "channel.vacated", "message.published"]
channels = ["room-*"]
[webhooks]
timeout_ms = 400
max_backoff_secs = 1
batch_max_events = 10
batch_delay_ms = 5
"#
    );
    // One after the other: the first node takes the endpoint's delivery.
    let mut nodes = Vec::new();
    for id in ["hooks-a", "hooks-b", "hooks-c"] {
        let node = start_node(&dir, &redis, id, &hooks);
        node.wait_ready().await;
        nodes.push(node);
    }
    let mut last = connect(&nodes[0], "last").await;
    last.subscribe("room-1").await;
    let mut publisher = connect(&nodes[1], "pub").await;
    for n in 1..=MESSAGES {
        let request = format!("p{n}");
        publisher.publish("room-1", json!(n), &request).await;
    }
    // The owner has read every event (they are pending on its consumer) and delivered none.
    let pending_on_a = wait_all_pending_on(&redis, "hooks-a#", MESSAGES as usize + 4).await;
    let delivered_before = receiver.events().len();
    assert_eq!(delivered_before, 0);
    let killed_at = Instant::now();
    nodes[0].kill9();
    drop(last);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(forward(listener, receiver.port));

    let bound = Duration::from_millis(LEASE_MS + 5_000);
    while !(receiver.count("presence.left", "peerId", "last") >= 1
        && receiver.count("peer.offline", "peerId", "last") >= 1
        && receiver.count("channel.vacated", "channel", "room-1") >= 1)
    {
        assert!(
            killed_at.elapsed() < bound,
            "after {:?}: {:#?}",
            killed_at.elapsed(),
            receiver.events()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = killed_at.elapsed();
    // Every message the dead owner had read arrives too.
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver
        .events()
        .iter()
        .filter(|e| e["type"] == "message.published")
        .count()
        < MESSAGES as usize
    {
        assert!(Instant::now() < deadline, "{:#?}", receiver.events());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A barrier: the publisher leaves; its offline comes after everything above.
    drop(publisher);
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.count("peer.offline", "peerId", "pub") == 0 {
        assert!(Instant::now() < deadline, "{:#?}", receiver.events());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = receiver.events();
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in events.iter().filter(|e| e["type"] != "message.published") {
        let who = e["peerId"].as_str().or(e["channel"].as_str()).unwrap();
        *counts
            .entry((e["type"].as_str().unwrap().into(), who.into()))
            .or_default() += 1;
    }
    let expected: BTreeMap<(String, String), usize> = [
        ("peer.online", "last"),
        ("peer.online", "pub"),
        ("peer.offline", "last"),
        ("peer.offline", "pub"),
        ("presence.joined", "last"),
        ("presence.left", "last"),
        ("channel.occupied", "room-1"),
        ("channel.vacated", "room-1"),
    ]
    .iter()
    .map(|(k, w)| ((k.to_string(), w.to_string()), 1))
    .collect();
    assert_eq!(counts, expected);
    // In order per channel: first arrivals follow the order the events happened.
    let room: Vec<&Value> = events.iter().filter(|e| e["channel"] == "room-1").collect();
    assert!(
        room.windows(2).all(|w| entry(w[0]) < entry(w[1])),
        "{room:#?}"
    );
    let data: Vec<u64> = room
        .iter()
        .filter(|e| e["type"] == "message.published")
        .map(|e| e["data"].as_u64().unwrap())
        .collect();
    assert_eq!(data, (1..=MESSAGES).collect::<Vec<_>>());
    assert_eq!(room.first().unwrap()["type"], "channel.occupied");
    assert_eq!(room.last().unwrap()["type"], "channel.vacated");
    println!(
        "the killed node's room was vacated {took:?} after the kill (lease {LEASE_MS} ms); \
         {pending_on_a} events were pending on it, {} events delivered in all",
        events.len()
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A node that stops cleanly (SIGTERM) gives up its delivery lease: another node delivers
/// what it had read at once, not when the lease would have lapsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_cleanly_hands_delivery_over_at_once() {
    // Long enough that a take-over by expiry (at least two thirds of a lease after the exit)
    // cannot pass for a hand-over (at most a third of a lease: a stand-by's next look).
    const LEASE: u64 = 15_000;
    let redis = RedisServer::start();
    let receiver = Receiver::start(WHSEC, 1.0, 0.0);
    let dir = std::env::temp_dir().join(format!("herald-handover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hooks = format!(
        r#"[[apps.webhooks]]
url = "http://127.0.0.1:{port}/hooks"
secret = "{WHSEC}"
events = ["message.published"]
channels = ["room-*"]
[webhooks]
timeout_ms = 400
max_backoff_secs = 1
"#
    );
    // The first node takes the endpoint's delivery; every client is on the second.
    let mut owner = start_node_with_lease(&dir, &redis, "handover-a", &hooks, LEASE);
    owner.wait_ready().await;
    let heir = start_node_with_lease(&dir, &redis, "handover-b", &hooks, LEASE);
    heir.wait_ready().await;
    let mut publisher = connect(&heir, "pub").await;
    for n in 1..=MESSAGES {
        publisher
            .publish("room-1", json!(n), &format!("p{n}"))
            .await;
    }
    // The owner read every event (they are pending on its consumer); the endpoint is down.
    wait_all_pending_on(&redis, "handover-a#", MESSAGES as usize).await;
    owner.terminate();
    let stopped_at = Instant::now();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(forward(listener, receiver.port));
    let bound = Duration::from_millis(LEASE / 3 + 3_000);
    while receiver
        .events()
        .iter()
        .filter(|e| e["type"] == "message.published")
        .count()
        < MESSAGES as usize
    {
        assert!(
            stopped_at.elapsed() < bound,
            "only {} events {:?} after a clean stop (lease {LEASE} ms)",
            receiver.events().len(),
            stopped_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "a clean stop handed delivery over: all {MESSAGES} events {:?} after the exit (lease {LEASE} ms)",
        stopped_at.elapsed()
    );
    let _ = std::fs::remove_dir_all(dir);
}
