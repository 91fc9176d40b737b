//! The Redis engine when things go wrong: Redis restarts (with its data lost; on a single Redis
//! and on a Redis Cluster), Redis outages,
//! and peers that reconnect to another node within the grace period. (Node crashes with
//! `kill -9` are in `crates/cli/tests/cluster_crash.rs`, which runs real processes.)
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use herald_testkit::cluster::{readyz_status, redis_config, wait_ready, Cluster};
use herald_testkit::prelude::*;
use herald_testkit::proxy::TcpProxy;
use herald_testkit::redis::RedisServer;
use serde_json::{json, Value};

const AUTH: &str = "Bearer sk_id_test:sk_secret_test_0123456789abcdef";

async fn peers_via_rest(node: &TestServer, channel: &str) -> Option<BTreeSet<String>> {
    let resp = reqwest::Client::new()
        .get(format!(
            "http://{}/v1/channels/{}/peers",
            node.addr, channel
        ))
        .header("authorization", AUTH)
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body: Value = resp.json().await.ok()?;
    Some(
        body["peers"]
            .as_array()?
            .iter()
            .map(|p| p["peerId"].as_str().unwrap_or_default().to_string())
            .collect(),
    )
}

/// A client's view of a channel roster, kept from its snapshot and deltas.
struct Roster(BTreeSet<String>);

impl Roster {
    fn apply(&mut self, frame: &Value) {
        if frame["type"] != "presence" {
            return;
        }
        for e in frame["joined"].as_array().unwrap() {
            self.0.insert(e["peerId"].as_str().unwrap().to_string());
        }
        for e in frame["left"].as_array().unwrap() {
            self.0.remove(e["peerId"].as_str().unwrap());
        }
    }
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_with_data_loss_recovers_within_ten_seconds() {
    restart_with_data_loss_recovers(Cluster::redis(3).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_restart_with_data_loss_recovers_within_ten_seconds() {
    restart_with_data_loss_recovers(Cluster::redis_cluster(3).await).await;
}

/// How long Herald may take to recover once Redis is back. Its own timers bound it, with the
/// test cluster's 5 s lease: the reconnect backoff (at most 1 s), maintenance rounds every
/// 1.25 s, and at worst a re-sync that waits one lease after the lapse is noticed: about
/// 8.5 s in all. Beside a CPU load it took 0.6 to 1.2 s. The clock used to start before
/// `restart_redis`, which for a Redis Cluster waits for three masters and the cluster state
/// (about 3 s beside the same load, more on a busier machine): that part measured Redis and
/// the machine, and is what ran over.
const RECOVERY: Duration = Duration::from_secs(10);

async fn restart_with_data_loss_recovers(mut cluster: Cluster) {
    let mut clients = Vec::new();
    let mut rosters = Vec::new();
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        let mut c = cluster.node(i).client(name).await;
        let (_, snap) = c.subscribe("room").await;
        let mut roster = Roster(BTreeSet::new());
        roster.apply(&snap);
        clients.push(c);
        rosters.push(roster);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A peer that leaves while Redis is down must not stay behind as a ghost.
    let mut leaver = cluster.node(1).client("leaver").await;
    leaver.subscribe("room").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    cluster.kill_redis();
    leaver.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // `restart_redis` returns once Redis serves again (a Redis Cluster: every master up and the
    // cluster state ok); the clock starts there and measures Herald alone (see RECOVERY).
    cluster.restart_redis();
    let started = Instant::now();

    // Within RECOVERY of Redis being back: every node ready and the roster right everywhere.
    let expected = set(&["a", "b", "c"]);
    loop {
        let mut all_ready = true;
        for node in &cluster.nodes {
            all_ready &= readyz_status(node).await == 200;
        }
        let listed = peers_via_rest(cluster.node(0), "room").await;
        if all_ready && listed.as_ref() == Some(&expected) {
            break;
        }
        assert!(
            started.elapsed() < RECOVERY,
            "not recovered after {RECOVERY:?}: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("recovered {:?} after the Redis restart", started.elapsed());
    for node in 1..3 {
        assert_eq!(
            peers_via_rest(cluster.node(node), "room").await,
            Some(expected.clone())
        );
    }
    // Each client's own roster converges within the same bound: no ghost (leaver), nobody
    // missing, and nobody who stayed is ever reported as gone.
    for (i, client) in clients.iter_mut().enumerate() {
        let mut want = expected.clone();
        want.remove(["a", "b", "c"][i]);
        while rosters[i].0 != want {
            assert!(
                started.elapsed() < RECOVERY,
                "client {i} roster {:?}",
                rosters[i].0
            );
            let next = tokio::time::timeout(
                Duration::from_millis(100),
                futures_util::StreamExt::next(&mut client.ws),
            );
            if let Ok(Some(Ok(msg))) = next.await {
                if let Ok(text) = msg.to_text() {
                    let frame: Value = serde_json::from_str(text).unwrap();
                    for gone in frame["left"].as_array().into_iter().flatten() {
                        assert_eq!(
                            gone["peerId"], "leaver",
                            "client {i} was told a present peer left: {frame}"
                        );
                    }
                    rosters[i].apply(&frame);
                }
            }
        }
    }
    println!(
        "client rosters converged {:?} after the Redis restart",
        started.elapsed()
    );
    // And the service works across nodes again.
    let mut late = cluster.node(2).client("late").await;
    let (_, snap) = late.subscribe("room").await;
    assert_eq!(peer_ids(&snap["joined"]), vec!["a", "b", "c"]);
    clients[0]
        .request(
            json!({"type": "publish", "channel": "room", "data": "again"}),
            "p",
        )
        .await;
    assert_eq!(late.recv().await["data"], "again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_an_outage_local_traffic_flows_and_redis_work_fails_cleanly() {
    outage(Cluster::redis(2).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_redis_cluster_outage_local_traffic_flows_and_redis_work_fails_cleanly() {
    outage(Cluster::redis_cluster(2).await).await;
}

async fn outage(mut cluster: Cluster) {
    let mut publisher = cluster.node(0).client("p").await;
    let mut local = cluster.node(0).client("l").await;
    let mut remote = cluster.node(1).client("r").await;
    local.subscribe("room").await;
    remote.subscribe("room").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(Some(_)) = tokio::time::timeout(
        Duration::from_millis(50),
        futures_util::StreamExt::next(&mut local.ws),
    )
    .await
    {}

    cluster.kill_redis();
    // Readiness drops.
    let deadline = Instant::now() + Duration::from_secs(10);
    while readyz_status(cluster.node(0)).await == 200 {
        assert!(Instant::now() < deadline, "node stayed ready without Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A publish still reaches the local subscriber, and the publisher learns remote delivery failed.
    let reply = publisher
        .request(
            json!({"type": "publish", "channel": "room", "data": 7}),
            "p1",
        )
        .await;
    assert_eq!(reply["code"], "backend_error");
    assert_eq!(local.recv().await["data"], 7);
    // A direct to a peer on this node still works; to another node it cannot be routed.
    assert_eq!(
        publisher
            .request(json!({"type": "send", "to": "l", "data": 1}), "d1")
            .await["type"],
        "ack"
    );
    assert_eq!(local.recv().await["type"], "direct");
    let reply = publisher
        .request(json!({"type": "send", "to": "r", "data": 1}), "d2")
        .await;
    assert_eq!(reply["code"], "backend_error");
    // Subscribing needs the cluster roster.
    let reply = publisher
        .request(json!({"type": "subscribe", "channel": "other"}), "s1")
        .await;
    assert_eq!(reply["code"], "backend_error");
    // Nobody was disconnected.
    publisher.send_json(json!({"type": "ping"})).await;
    assert_eq!(publisher.recv().await["type"], "pong");

    cluster.restart_redis();
    let started = Instant::now();
    for node in &cluster.nodes {
        wait_ready(node).await;
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    publisher
        .request(
            json!({"type": "publish", "channel": "room", "data": 8}),
            "p2",
        )
        .await;
    assert_eq!(remote.recv().await["data"], 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_reconnecting_to_another_node_within_the_grace_does_not_flap() {
    reconnect_within_grace(Cluster::redis_with(2, |c| c.engine.reconnect_grace_ms = 2_000).await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_a_peer_reconnecting_within_the_grace_does_not_flap() {
    let cluster = Cluster::redis_cluster_with(2, |c| c.engine.reconnect_grace_ms = 2_000).await;
    reconnect_within_grace(cluster).await;
}

async fn reconnect_within_grace(cluster: Cluster) {
    let mut watcher = cluster.node(0).client("w").await;
    watcher.subscribe("room").await;
    let mut peer = cluster
        .node(0)
        .client_with_meta("p", r#"{"username":"P"}"#)
        .await;
    peer.subscribe("room").await;
    assert_eq!(watcher.recv().await["joined"][0]["peerId"], "p");

    // The socket dies without a close frame, and the peer comes back on the other node.
    drop(peer);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = cluster
        .node(1)
        .client_with_meta("p", r#"{"username":"P"}"#)
        .await;
    let (_, snap) = again.subscribe("room").await;
    assert_eq!(peer_ids(&snap["joined"]), vec!["w"]);
    // Past the grace period: still no left/joined pair.
    watcher.expect_silence(3_000).await;
    assert_eq!(
        peers_via_rest(cluster.node(1), "room").await,
        Some(set(&["p", "w"]))
    );

    // A peer that does not come back leaves once the grace runs out.
    drop(again);
    let left = watcher.recv().await;
    assert_eq!(left["left"][0]["peerId"], "p");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_close_leaves_at_once_even_with_a_grace_period() {
    let cluster = Cluster::redis_with(2, |c| c.engine.reconnect_grace_ms = 5_000).await;
    let mut watcher = cluster.node(0).client("w").await;
    watcher.subscribe("room").await;
    let mut peer = cluster.node(1).client("p").await;
    peer.subscribe("room").await;
    watcher.recv().await;
    let started = Instant::now();
    peer.close().await;
    assert_eq!(watcher.recv().await["left"][0]["peerId"], "p");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// The next text frame, waiting longer than `Client::recv` does (reaping takes a lease).
async fn recv_within(client: &mut Client, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(left, futures_util::StreamExt::next(&mut client.ws));
        match next.await.expect("no frame in time") {
            Some(Ok(msg)) if msg.is_text() => {
                return serde_json::from_str(msg.to_text().unwrap()).unwrap()
            }
            Some(Ok(_)) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
}

/// Test node `i`, reaching Redis through a proxy the test can cut.
async fn node_behind_proxy(redis: &RedisServer, i: usize) -> (TestServer, TcpProxy) {
    let proxy = TcpProxy::start(redis.port).await;
    let config = redis_config(&proxy.url(), false, i);
    (TestServer::start_with(config).await, proxy)
}

/// A node cut off from Redis for longer than its lease is reaped by the others (its peers
/// leave, once). When it gets Redis back it returns as a new incarnation and announces its
/// peers again; the reaping of its old incarnation never touches the new one's presence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_past_its_lease_is_reaped_then_announces_its_peers_again() {
    let redis = RedisServer::start();
    let (cut_node, proxy) = node_behind_proxy(&redis, 0).await;
    let other = TestServer::start_with(redis_config(&redis.url(), false, 1)).await;
    wait_ready(&cut_node).await;
    wait_ready(&other).await;

    let mut watcher = other.client("w").await;
    watcher.subscribe("room").await;
    let mut peer = cut_node.client_with_meta("p", r#"{"username":"P"}"#).await;
    peer.subscribe("room").await;
    assert_eq!(watcher.recv().await["joined"][0]["peerId"], "p");

    proxy.cut();
    let cut_at = Instant::now();
    let left = recv_within(&mut watcher, Duration::from_secs(15)).await;
    assert_eq!(left["left"][0]["peerId"], "p", "{left}");
    println!("reaped after {:?} (lease 5000 ms)", cut_at.elapsed());
    assert_eq!(peers_via_rest(&other, "room").await, Some(set(&["w"])));

    proxy.restore();
    let back_at = Instant::now();
    let joined = watcher.recv().await;
    assert_eq!(joined["joined"][0]["peerId"], "p", "{joined}");
    assert_eq!(joined["joined"][0]["metadata"]["username"], "P");
    println!(
        "announced again {:?} after Redis came back",
        back_at.elapsed()
    );
    assert_eq!(peers_via_rest(&other, "room").await, Some(set(&["p", "w"])));
    // Routing reaches the new incarnation, and messages flow both ways.
    let reply = watcher
        .request(json!({"type": "send", "to": "p", "data": "hi"}), "d1")
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let direct = peer.recv().await;
    assert_eq!(
        (direct["type"].as_str(), direct["from"].as_str()),
        (Some("direct"), Some("w"))
    );
    peer.request(
        json!({"type": "publish", "channel": "room", "data": "back"}),
        "p1",
    )
    .await;
    assert_eq!(watcher.recv().await["data"], "back");
    // The old incarnation's cleanup goes on for a while; it must not make p leave again.
    watcher.expect_silence(4_000).await;
    assert_eq!(peers_via_rest(&other, "room").await, Some(set(&["p", "w"])));
}

/// Every node loses Redis for longer than the lease (a shared outage), and they get it back
/// one after the other. All leases lapsed meanwhile, but every node is alive, so nobody may be
/// reaped: a node reaps only after renewing without a gap for a whole lease, which gives the
/// others time to come back and renew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_outage_longer_than_the_lease_reaps_nobody() {
    let redis = RedisServer::start();
    let mut proxies = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..2 {
        let (node, proxy) = node_behind_proxy(&redis, i).await;
        nodes.push(node);
        proxies.push(proxy);
    }
    for node in &nodes {
        wait_ready(node).await;
    }
    let mut watcher = nodes[0].client("w").await;
    watcher.subscribe("room").await;
    let mut peer = nodes[1].client("p").await;
    peer.subscribe("room").await;
    assert_eq!(watcher.recv().await["joined"][0]["peerId"], "p");

    for proxy in &proxies {
        proxy.cut();
    }
    tokio::time::sleep(Duration::from_millis(7_000)).await; // lease: 5 s
    proxies[0].restore();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    proxies[1].restore();
    for node in &nodes {
        wait_ready(node).await;
    }
    // Well past the point where a reaper would have struck: no left, no re-join.
    watcher.expect_silence(7_000).await;
    assert_eq!(
        peers_via_rest(&nodes[0], "room").await,
        Some(set(&["p", "w"]))
    );
    peer.request(
        json!({"type": "publish", "channel": "room", "data": "still here"}),
        "p1",
    )
    .await;
    assert_eq!(watcher.recv().await["data"], "still here");
}
