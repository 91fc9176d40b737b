//! Herald on a real three-master Redis Cluster: channel state and sharded topics spread over
//! the masters, and a node's crash-cleanup index forgets channels it no longer holds.
//! (The behaviour suite in `behaviour.rs` also runs on a Redis Cluster.)
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use herald_testkit::cluster::{wait_ready, Cluster};
use herald_testkit::config::APP;
use herald_testkit::frames::peer_ids;
use herald_testkit::redis::RedisCluster;
use serde_json::json;

const CHANNELS: usize = 16;

/// Masters (by port) whose output for `args` contains `needle`.
fn masters_with(c: &Cluster, args: &[&str], needle: &str) -> Vec<u16> {
    let redis = c.redis_cluster.as_ref().unwrap();
    redis
        .ports
        .iter()
        .copied()
        .filter(|port| redis.cli_on(*port, args).contains(needle))
        .collect()
}

/// Entries of node0's index, over every master.
fn node0_index(c: &Cluster) -> Vec<String> {
    let redis = c.redis_cluster.as_ref().unwrap();
    let mut entries = Vec::new();
    for port in &redis.ports {
        for key in redis
            .cli_on(*port, &["--scan", "--pattern", "*{n:node0#*}:index"])
            .lines()
        {
            entries.extend(
                redis
                    .cli_on(*port, &["hkeys", key])
                    .lines()
                    .map(str::to_string),
            );
        }
    }
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_spread_over_the_masters_and_the_index_forgets_what_is_gone() {
    let c = Cluster::redis_cluster(2).await;
    let mut a = c.node(0).client("alice").await;
    let mut b = c.node(1).client("bob").await;
    for i in 0..CHANNELS {
        a.subscribe(&format!("room-{i}")).await;
        b.subscribe(&format!("room-{i}")).await;
        // alice hears bob join
        let joined = a.recv().await;
        assert_eq!(joined["joined"][0]["peerId"], "bob");
    }
    for i in 0..CHANNELS {
        let channel = format!("room-{i}");
        b.request(
            json!({"type": "publish", "channel": channel, "data": i}),
            &format!("p{i}"),
        )
        .await;
        let got = a.recv().await;
        assert_eq!(
            (got["channel"].as_str(), got["data"].as_u64()),
            (Some(channel.as_str()), Some(i as u64))
        );
    }

    // Keys and sharded topics live on more than one master: slots, not one shard, decide.
    let with_keys = masters_with(&c, &["--scan", "--pattern", "*{c:*:members"], "members");
    let with_topics = masters_with(&c, &["pubsub", "shardchannels"], "ch:{c:");
    println!("masters holding channel keys: {with_keys:?}; with shard topics: {with_topics:?}");
    assert!(with_keys.len() >= 2, "{with_keys:?}");
    assert!(with_topics.len() >= 2, "{with_topics:?}");
    let entries = node0_index(&c);
    assert!(
        entries.iter().filter(|e| e.contains("{c:")).count() >= CHANNELS,
        "{entries:?}"
    );

    // Once nobody holds them, the channels drop out of the index; alice's route stays.
    for i in 0..CHANNELS {
        a.request(
            json!({"type": "unsubscribe", "channel": format!("room-{i}")}),
            &format!("u{i}"),
        )
        .await;
    }
    let started = Instant::now();
    loop {
        let entries = node0_index(&c);
        if !entries.iter().any(|e| e.contains("{c:")) {
            assert!(entries.iter().any(|e| e.contains("{p:")), "{entries:?}");
            println!("index pruned after {:?}", started.elapsed());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "index still lists {entries:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // bob saw alice leave every channel, once each.
    for _ in 0..CHANNELS {
        let left = b.recv().await;
        assert_eq!(left["left"][0]["peerId"], "alice");
    }
}

fn no_one_left(frame: &serde_json::Value) -> bool {
    frame["left"].as_array().is_none_or(|left| left.is_empty())
}

/// A master of the Redis Cluster dies and its replica takes over: Herald nodes re-subscribe
/// their sharded topics on the new master, presence survives (it was replicated), and
/// messages and deltas on the failed shard's channels flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_taking_over_a_dead_master_keeps_presence_and_traffic() {
    let redis = RedisCluster::start_with_replicas(1);
    let mut c = Cluster::on_redis_cluster(redis, 2, |_| {}).await;
    let mut a = c.node(0).client("alice").await;
    let mut b = c.node(1).client("bob").await;
    a.subscribe("room").await;
    b.subscribe("room").await;
    assert_eq!(a.recv().await["joined"][0]["peerId"], "bob");
    let redis = c.redis_cluster.as_mut().unwrap();
    redis.wait_replicas_synced();
    tokio::time::sleep(Duration::from_millis(300)).await; // the roster reaches the replicas
    let asked = redis.ports[0];
    let key = format!("herald:{{c:{}:room}}:members", APP);
    let old = redis.master_of(asked, &key).unwrap();
    redis.kill_node(old);
    let killed_at = Instant::now();
    let live = *redis.ports.iter().find(|p| **p != old).unwrap();
    loop {
        let now = redis.master_of(live, &key);
        if now.is_some_and(|p| p != old) {
            println!(
                "replica {now:?} took over from {old} after {:?}",
                killed_at.elapsed()
            );
            break;
        }
        assert!(killed_at.elapsed() < Duration::from_secs(20), "no failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Both nodes notice and re-subscribe (ready again); meanwhile messages on the failed
    // shard's channels cannot reach them, as in any outage.
    for node in &c.nodes {
        wait_ready(node).await;
    }
    // Traffic on the failed shard's channel flows again, and presence is intact.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let reply = b
            .request(
                json!({"type": "publish", "channel": "room", "data": attempt}),
                &format!("p{attempt}"),
            )
            .await;
        if reply["type"] == "ack" {
            break;
        }
        assert!(Instant::now() < deadline, "publish still failing: {reply}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // alice gets that publish (earlier attempts failed before reaching Redis).
    let mut got = a.recv().await;
    while got["type"] != "message" {
        assert!(no_one_left(&got), "a live peer was reported gone: {got}");
        got = a.recv().await;
    }
    assert_eq!(got["data"], attempt);
    let mut carol = c.node(0).client("carol").await;
    let (_, snap) = carol.subscribe("room").await;
    assert_eq!(peer_ids(&snap["joined"]), vec!["alice", "bob"]);
    let mut joined = b.recv().await;
    while joined["type"] != "presence" || joined["joined"] == json!([]) {
        assert!(
            no_one_left(&joined),
            "a live peer was reported gone: {joined}"
        );
        joined = b.recv().await;
    }
    assert_eq!(joined["joined"][0]["peerId"], "carol");
    println!("service back {:?} after the kill", killed_at.elapsed());
}
