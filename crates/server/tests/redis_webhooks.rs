//! Webhooks on the Redis engine, through the `Engine` trait and a recording transport, with
//! several nodes on one real redis-server: each event is produced once cluster-wide however
//! the nodes race, a dead node's members leave once, and events a dead node had read but not
//! delivered are delivered by another node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use herald_server::config::{AppConfig, Config, EngineConfig, WebhookEndpointConfig};
use herald_server::conn::Conn;
use herald_server::engine::{Departure, Engine};
use herald_server::ids::ChannelName;
use herald_server::webhooks::transport::Transport;
use herald_server::webhooks::WebhookMetrics;
use herald_testkit::redis::RedisServer;
use serde_json::Value;

#[path = "support/webhook_nodes.rs"]
mod webhook_nodes;
use webhook_nodes::{connect, publish, subscribe, Down, APP};

const GRACE_MS: u64 = 300;
const LEASE_MS: u64 = 1_000;

/// Records every event POSTed to it (all nodes share one, as they share the backend); answers
/// 200, or 500 while `failing`.
#[derive(Default)]
struct Receiver {
    events: Mutex<Vec<Value>>,
    failing: Mutex<bool>,
}

#[async_trait]
impl Transport for Receiver {
    async fn post(
        &self,
        _url: &str,
        _headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<u16, String> {
        if *self.failing.lock().unwrap() {
            return Ok(500);
        }
        let body: Value = serde_json::from_slice(&body).unwrap();
        let mut events = self.events.lock().unwrap();
        events.extend(body["events"].as_array().unwrap().iter().cloned());
        Ok(200)
    }
}

impl Receiver {
    /// Events received, de-duplicated by id, in arrival order.
    fn unique(&self) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| seen.insert(e["id"].as_str().unwrap().to_string()))
            .cloned()
            .collect()
    }

    fn count(&self, kind: &str, key: &str, value: &str) -> usize {
        self.unique()
            .iter()
            .filter(|e| e["type"] == kind && e[key] == value)
            .count()
    }

    /// Waits until `done` holds for the received events (bounded: a failing test stops).
    async fn until(&self, what: &str, done: impl Fn(&Receiver) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !done(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; got {:#?}",
                self.unique()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn config() -> Config {
    let mut config = Config::default();
    config.apps.push(AppConfig {
        id: APP.into(),
        suspended: false,
        max_connections: 0,
        secret_keys: Vec::new(),
        publishable_keys: Vec::new(),
        webhooks: vec![WebhookEndpointConfig {
            url: "http://backend.test/hooks".into(),
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            events: [
                "peer.online",
                "peer.offline",
                "presence.joined",
                "presence.left",
                "channel.occupied",
                "channel.vacated",
                "message.published",
            ]
            .iter()
            .map(|e| e.to_string())
            .collect(),
            channels: vec!["room-*".into()],
        }],
    });
    config.webhooks.batch_delay_ms = 5;
    config
}

async fn node(redis: &RedisServer, transport: Arc<dyn Transport>) -> Arc<dyn Engine> {
    node_with(redis, transport, config(), WebhookMetrics::default()).await
}

async fn node_with(
    redis: &RedisServer,
    transport: Arc<dyn Transport>,
    config: Config,
    metrics: WebhookMetrics,
) -> Arc<dyn Engine> {
    let engine = EngineConfig {
        kind: "redis".into(),
        redis_url: redis.url(),
        reconnect_grace_ms: GRACE_MS,
        lease_ttl_ms: LEASE_MS,
        ..EngineConfig::default()
    };
    webhook_nodes::node(engine, &config, transport, metrics).await
}

async fn leave(engine: &Arc<dyn Engine>, conn: &Arc<Conn>, channel: &str, departure: Departure) {
    engine
        .disconnect(conn, vec![ChannelName::new(channel)], departure)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_transition_is_one_event_however_three_nodes_race() {
    let redis = RedisServer::start();
    let receiver = Arc::new(Receiver::default());
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(node(&redis, receiver.clone()).await);
    }
    // Six connections: ann on all three nodes, bob and cy on one each, all at once.
    let plan = [
        (0, "ann"),
        (1, "ann"),
        (2, "ann"),
        (0, "bob"),
        (1, "cy"),
        (2, "bob"),
    ];
    let conns = futures_util::future::join_all(plan.iter().map(|(i, peer)| {
        let engine = nodes[*i].clone();
        async move {
            let conn = connect(&engine, peer).await;
            subscribe(&engine, &conn, "room-1").await;
            subscribe(&engine, &conn, "other").await;
            (engine, conn)
        }
    }))
    .await;
    receiver
        .until("three joins", |r| {
            r.unique()
                .iter()
                .filter(|e| e["type"] == "presence.joined")
                .count()
                >= 3
        })
        .await;
    // Everyone leaves at once, deliberately (no grace for presence).
    futures_util::future::join_all(conns.iter().map(|(engine, conn)| async move {
        leave(engine, conn, "room-1", Departure::Left).await;
        engine
            .disconnect(conn, vec![ChannelName::new("other")], Departure::Left)
            .await;
    }))
    .await;
    receiver
        .until("three offlines", |r| {
            r.unique()
                .iter()
                .filter(|e| e["type"] == "peer.offline")
                .count()
                >= 3
        })
        .await;
    // A barrier: one more transition, after which nothing earlier can still be on its way.
    let late = connect(&nodes[0], "dan").await;
    receiver
        .until("the barrier", |r| {
            r.count("peer.online", "peerId", "dan") == 1
        })
        .await;
    drop(late);
    for peer in ["ann", "bob", "cy"] {
        assert_eq!(receiver.count("peer.online", "peerId", peer), 1, "{peer}");
        assert_eq!(receiver.count("peer.offline", "peerId", peer), 1, "{peer}");
        assert_eq!(
            receiver.count("presence.joined", "peerId", peer),
            1,
            "{peer}"
        );
        assert_eq!(receiver.count("presence.left", "peerId", peer), 1, "{peer}");
    }
    assert_eq!(receiver.count("channel.occupied", "channel", "room-1"), 1);
    assert_eq!(receiver.count("channel.vacated", "channel", "room-1"), 1);
    // `other` is not covered by the endpoint's channel patterns.
    assert_eq!(receiver.count("channel.occupied", "channel", "other"), 0);
    // Per channel, in order: occupied first, vacated last; each peer joins before it leaves.
    let room: Vec<Value> = receiver
        .unique()
        .into_iter()
        .filter(|e| e["channel"] == "room-1")
        .collect();
    assert_eq!(room.first().unwrap()["type"], "channel.occupied");
    assert_eq!(room.last().unwrap()["type"], "channel.vacated");
    for e in &receiver.unique() {
        assert!(e["id"].as_str().unwrap().starts_with("evt_"));
        assert_eq!(e["app"], APP);
        assert!(e["ts"].as_u64().unwrap() > 1_600_000_000_000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_within_the_grace_is_no_offline_and_no_leave() {
    let redis = RedisServer::start();
    let receiver = Arc::new(Receiver::default());
    let a = node(&redis, receiver.clone()).await;
    let b = node(&redis, receiver.clone()).await;
    let first = connect(&a, "eve").await;
    subscribe(&a, &first, "room-2").await;
    receiver
        .until("eve joined", |r| {
            r.count("presence.joined", "peerId", "eve") == 1
        })
        .await;
    // The page reloads onto the other node: dropped (parked for a resume first, as a session
    // does with a stable peer), then back within the grace.
    a.park(&first, Vec::new()).await;
    leave(&a, &first, "room-2", Departure::Dropped).await;
    let second = connect(&b, "eve").await;
    subscribe(&b, &second, "room-2").await;
    tokio::time::sleep(Duration::from_millis(GRACE_MS * 3)).await;
    // Then a deliberate leave: exactly one left, one offline, one vacated.
    leave(&b, &second, "room-2", Departure::Left).await;
    receiver
        .until("eve offline", |r| {
            r.count("peer.offline", "peerId", "eve") == 1
        })
        .await;
    receiver
        .until("room vacated", |r| {
            r.count("channel.vacated", "channel", "room-2") == 1
        })
        .await;
    assert_eq!(receiver.count("peer.online", "peerId", "eve"), 1);
    assert_eq!(receiver.count("presence.joined", "peerId", "eve"), 1);
    assert_eq!(receiver.count("presence.left", "peerId", "eve"), 1);
    assert_eq!(receiver.count("channel.occupied", "channel", "room-2"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_members_leave_once_and_its_pending_events_reach_the_backend() {
    let redis = RedisServer::start();
    let receiver = Arc::new(Receiver::default());
    // The first node owns the endpoint (it starts first) and cannot reach the backend: it reads
    // every event and delivers none.
    let doomed = node(&redis, Arc::new(Down)).await;
    let b = node(&redis, receiver.clone()).await;
    let c = node(&redis, receiver.clone()).await;
    let zed = connect(&doomed, "zed").await;
    subscribe(&doomed, &zed, "room-3").await;
    let yan = connect(&b, "yan").await;
    subscribe(&b, &yan, "room-4").await;
    publish(&c, "room-4", "yan", r#"{"n":1}"#).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.unique().is_empty(), "the owner delivers nothing");
    // kill -9: the node's tasks stop, nothing is cleaned up.
    drop(zed);
    drop(doomed);
    let killed = tokio::time::Instant::now();
    receiver
        .until("zed's departure", |r| {
            r.count("presence.left", "peerId", "zed") == 1
                && r.count("peer.offline", "peerId", "zed") == 1
                && r.count("channel.vacated", "channel", "room-3") == 1
        })
        .await;
    let took = killed.elapsed();
    // What the dead node had read and not delivered arrives through another node.
    receiver
        .until("the dead owner's pending events", |r| {
            r.count("peer.online", "peerId", "zed") == 1
                && r.count("presence.joined", "peerId", "yan") == 1
                && r.count("message.published", "channel", "room-4") == 1
        })
        .await;
    let message = receiver
        .unique()
        .into_iter()
        .find(|e| e["type"] == "message.published")
        .unwrap();
    assert_eq!(message["from"], "yan");
    assert_eq!(message["data"]["n"], 1);
    // One more transition as a barrier, then every count is exact.
    leave(&b, &yan, "room-4", Departure::Left).await;
    receiver
        .until("the barrier", |r| {
            r.count("channel.vacated", "channel", "room-4") == 1
        })
        .await;
    let mut counts: HashMap<(String, String), usize> = HashMap::new();
    for e in receiver.unique() {
        let who = e["peerId"]
            .as_str()
            .or(e["channel"].as_str())
            .unwrap_or_default()
            .to_string();
        *counts
            .entry((e["type"].as_str().unwrap().to_string(), who))
            .or_default() += 1;
    }
    assert!(counts.values().all(|n| *n == 1), "{counts:#?}");
    eprintln!("a dead node's members left {took:?} after it died (lease {LEASE_MS} ms)");
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_stream_refuses_new_events_and_counts_them() {
    let redis = RedisServer::start();
    let mut config = config();
    // The smallest queue: 65536 / 512 = 128 undelivered events per endpoint.
    config.webhooks.queue_max_bytes = 64 * 1024;
    let metrics = WebhookMetrics::default();
    let engine = node_with(&redis, Arc::new(Down), config, metrics.clone()).await;
    for n in 0..200 {
        publish(&engine, "room-9", "pub", &n.to_string()).await;
    }
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let streams: Vec<String> = redis::cmd("KEYS")
        .arg("*:outbox")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(streams.len(), 1, "{streams:?}");
    let len: usize = redis::cmd("XLEN")
        .arg(&streams[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 128);
    // The owner moves the refusals into the node's dropped count as it reads.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while metrics.dropped.get() < 72 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            metrics.dropped.get()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metrics.dropped.get(), 72);
    // The oldest are kept: the first message is in the stream, the last is not.
    let first: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(&streams[0])
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(first[0].1[3].contains("\"data\":0"), "{first:?}");
}
