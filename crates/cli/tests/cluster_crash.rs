//! A node of a Redis-backed cluster is killed with SIGKILL: the surviving nodes remove its peers
//! from every channel and each watcher sees each `left` exactly once, within the lease bound.
//! Real `herald` processes, on a real `redis-server` and on a real three-master Redis Cluster
//! (both started here on free ports).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use herald_testkit::process::{redis_node_config, HeraldProcess};
use herald_testkit::redis::{Backend, RedisCluster, RedisServer};
use herald_testkit::ws::Client;
use serde_json::{json, Value};

const KID: &str = "sk_id_crash";
const SECRET: &str = "sk_secret_crash_0123456789abcdef";
const LEASE_MS: u64 = 10_000;

fn start_node(dir: &std::path::Path, redis: &Backend, id: &str) -> HeraldProcess {
    start_node_with(dir, redis, id, "")
}

/// [`start_node`] with more configuration appended (for example `[[history.channels]]`).
fn start_node_with(dir: &std::path::Path, redis: &Backend, id: &str, extra: &str) -> HeraldProcess {
    let key = ("app_crash", KID, SECRET);
    let config = redis_node_config(&redis.engine_config(), id, LEASE_MS, key, extra);
    HeraldProcess::start(
        Path::new(env!("CARGO_BIN_EXE_herald")),
        &dir.join(format!("{id}.toml")),
        &config,
    )
}

/// A client of `node` as peer `sub`, with a token of this file's key.
async fn connect(node: &HeraldProcess, sub: &str) -> Client {
    Client::connect_jwt(&node.origin(), KID, SECRET, sub).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_peers_leave_exactly_once_within_the_lease_bound() {
    killed_node_peers_leave_exactly_once(Backend::Single(RedisServer::start()), "single").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_cluster_killed_node_peers_leave_exactly_once_within_the_lease_bound() {
    let backend = Backend::Cluster(RedisCluster::start());
    killed_node_peers_leave_exactly_once(backend, "cluster").await;
}

async fn killed_node_peers_leave_exactly_once(redis: Backend, label: &str) {
    let dir = std::env::temp_dir().join(format!("herald-crash-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let nodes: Vec<HeraldProcess> = ["crash-a", "crash-b", "crash-c"]
        .iter()
        .map(|id| start_node(&dir, &redis, id))
        .collect();
    for node in &nodes {
        node.wait_ready().await;
    }

    let mut watchers = vec![
        connect(&nodes[0], "watch-a").await,
        connect(&nodes[1], "watch-b").await,
    ];
    for w in &mut watchers {
        w.subscribe("room").await;
        w.subscribe("lobby").await;
    }
    let mut victims = Vec::new();
    for name in ["v1", "v2"] {
        let mut v = connect(&nodes[2], name).await;
        v.subscribe("room").await;
        v.subscribe("lobby").await;
        victims.push(v);
    }
    // Each watcher sees both victims (and the other watcher) join both channels.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut victim_node = nodes.into_iter().collect::<Vec<_>>();
    let killed_at = Instant::now();
    victim_node[2].kill9();

    let bound = Duration::from_millis(LEASE_MS + 5_000);
    for (i, w) in watchers.iter_mut().enumerate() {
        let mut lefts: BTreeMap<(String, String), u32> = BTreeMap::new();
        let wanted = 4; // two victims × two channels
        while lefts.values().sum::<u32>() < wanted {
            assert!(
                killed_at.elapsed() < bound,
                "watcher {i} saw only {lefts:?} after {:?}",
                killed_at.elapsed()
            );
            let Some(frame) = w.next_frame_within(bound - killed_at.elapsed()).await else {
                panic!("watcher {i} disconnected")
            };
            if frame["type"] == "presence" {
                for e in frame["left"].as_array().unwrap() {
                    *lefts
                        .entry((
                            frame["channel"].as_str().unwrap().into(),
                            e["peerId"].as_str().unwrap().into(),
                        ))
                        .or_default() += 1;
                }
            }
        }
        println!(
            "{label} redis, watcher {i}: every peer of the killed node left after {:?} (lease {LEASE_MS} ms)",
            killed_at.elapsed()
        );
        assert!(lefts.values().all(|n| *n == 1), "{lefts:?}");
        assert!(
            lefts.keys().all(|(_, peer)| peer.starts_with('v')),
            "{lefts:?}"
        );
    }
    // Exactly once: nothing more arrives.
    for w in &mut watchers {
        w.expect_silence(2_000).await;
    }
    if let Backend::Cluster(cluster) = &redis {
        // The dead instance's index was emptied (and so deleted) on whichever master holds it;
        // the survivors' indexes are still there.
        let keys: String = cluster
            .ports
            .iter()
            .map(|port| cluster.cli_on(*port, &["--scan", "--pattern", "*:index"]))
            .collect();
        assert!(!keys.contains("crash-c#"), "left behind: {keys}");
        assert!(
            keys.contains("crash-a#") && keys.contains("crash-b#"),
            "{keys}"
        );
    }
    drop(victims);
    let _ = std::fs::remove_dir_all(dir);
}

/// Channel history lives in Redis: 30 messages published on node A (each acknowledged), then
/// A is killed with SIGKILL; a subscriber on node C gets the last 20 as its rewind, and REST
/// history on C lists all 30, in order, with one epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_outlives_a_killed_node() {
    history_outlives_a_killed_node_on(Backend::Single(RedisServer::start()), "single").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_cluster_history_outlives_a_killed_node() {
    history_outlives_a_killed_node_on(Backend::Cluster(RedisCluster::start()), "cluster").await;
}

async fn history_outlives_a_killed_node_on(redis: Backend, label: &str) {
    let dir = std::env::temp_dir().join(format!("herald-hist-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let history = "[[history.channels]]\npatterns = [\"room\"]\nrewind = 20\n";
    let mut nodes: Vec<HeraldProcess> = ["hist-a", "hist-b", "hist-c"]
        .iter()
        .map(|id| start_node_with(&dir, &redis, id, history))
        .collect();
    for node in &nodes {
        node.wait_ready().await;
    }
    let mut alice = connect(&nodes[0], "alice").await;
    for n in 1..=30 {
        let request = format!("p{n}");
        alice.publish("room", json!(n), &request).await;
    }
    nodes[0].kill9();
    drop(alice);

    let mut bob = connect(&nodes[2], "bob").await;
    bob.subscribe("room").await;
    let mut epoch = None;
    for n in 11..=30_u64 {
        let frame = bob.recv().await;
        assert_eq!(
            (&frame["type"], &frame["data"], frame["offset"].as_u64()),
            (&json!("message"), &json!(n), Some(n)),
            "{frame}"
        );
        assert_eq!(frame["from"], "alice");
        let e = epoch.get_or_insert_with(|| frame["epoch"].clone());
        assert_eq!(&frame["epoch"], e);
    }
    let http = nodes[2].http();
    let page: Value = reqwest::Client::new()
        .get(format!("{http}/v1/channels/room/messages"))
        .header("authorization", format!("Bearer {KID}:{SECRET}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let offsets: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (1..=30).collect::<Vec<_>>(), "{page}");
    assert_eq!(Some(&page["epoch"]), epoch.as_ref());
    drop(nodes);
    let _ = std::fs::remove_dir_all(dir);
}
