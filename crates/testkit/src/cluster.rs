//! One Herald service for behaviour tests: a single memory node, or several nodes sharing a
//! real Redis. Tests address "node i"; on one node every index is the same node.

use std::time::{Duration, Instant};

use crate::config::test_config;
use crate::redis::{RedisCluster, RedisServer};
use crate::server::TestServer;
use herald_server::Config;

pub struct Cluster {
    pub nodes: Vec<TestServer>,
    pub redis: Option<RedisServer>,
    pub redis_cluster: Option<RedisCluster>,
}

/// Redis settings for test node `node` on `url` (a single Redis, or a cluster's seeds): a lease
/// long enough that a node starved of CPU by a parallel test run is not declared dead, and no
/// reconnect grace unless a test asks for it.
pub fn redis_config(url: &str, cluster: bool, node: usize) -> Config {
    let mut config = test_config();
    config.engine.kind = "redis".into();
    config.engine.redis_url = url.into();
    config.engine.redis_cluster = cluster;
    config.engine.node_id = format!("node{node}");
    config.engine.lease_ttl_ms = 5_000;
    config.engine.reconnect_grace_ms = 0;
    config
}

impl Cluster {
    pub async fn memory() -> Cluster {
        Cluster {
            nodes: vec![TestServer::start().await],
            redis: None,
            redis_cluster: None,
        }
    }

    pub async fn redis(nodes: usize) -> Cluster {
        Self::redis_with(nodes, |_| {}).await
    }

    pub async fn redis_with(nodes: usize, tweak: impl Fn(&mut Config)) -> Cluster {
        let redis = RedisServer::start();
        let mut servers = Vec::new();
        for i in 0..nodes {
            let mut config = redis_config(&redis.url(), false, i);
            tweak(&mut config);
            servers.push(TestServer::start_with(config).await);
        }
        let cluster = Cluster {
            nodes: servers,
            redis: Some(redis),
            redis_cluster: None,
        };
        cluster.wait_ready().await;
        cluster
    }

    /// Herald nodes on a three-master Redis Cluster (sharded pub/sub).
    pub async fn redis_cluster(nodes: usize) -> Cluster {
        Self::redis_cluster_with(nodes, |_| {}).await
    }

    pub async fn redis_cluster_with(nodes: usize, tweak: impl Fn(&mut Config)) -> Cluster {
        Self::on_redis_cluster(RedisCluster::start(), nodes, tweak).await
    }

    /// Herald nodes on a given Redis Cluster (for example one with replicas).
    pub async fn on_redis_cluster(
        redis: RedisCluster,
        nodes: usize,
        tweak: impl Fn(&mut Config),
    ) -> Cluster {
        let mut servers = Vec::new();
        for i in 0..nodes {
            let mut config = redis_config(&redis.urls(), true, i);
            tweak(&mut config);
            servers.push(TestServer::start_with(config).await);
        }
        let cluster = Cluster {
            nodes: servers,
            redis: None,
            redis_cluster: Some(redis),
        };
        cluster.wait_ready().await;
        cluster
    }

    pub fn node(&self, i: usize) -> &TestServer {
        &self.nodes[i % self.nodes.len()]
    }

    /// Kills Redis (every master of a Redis Cluster): its data is gone.
    pub fn kill_redis(&mut self) {
        if let Some(redis) = self.redis.as_mut() {
            redis.kill();
        }
        if let Some(redis) = self.redis_cluster.as_mut() {
            redis.kill();
        }
    }

    /// Restarts Redis (every master of a Redis Cluster) empty, on the same ports.
    pub fn restart_redis(&mut self) {
        if let Some(redis) = self.redis.as_mut() {
            redis.restart();
        }
        if let Some(redis) = self.redis_cluster.as_mut() {
            redis.restart();
        }
    }

    pub fn is_distributed(&self) -> bool {
        self.redis.is_some() || self.redis_cluster.is_some()
    }

    /// Waits until every node answers `/readyz` with 200.
    pub async fn wait_ready(&self) {
        for node in &self.nodes {
            wait_ready(node).await;
        }
    }
}

pub async fn wait_ready(node: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let url = format!("http://{}/readyz", node.addr);
    loop {
        if let Ok(resp) = reqwest::get(&url).await {
            if resp.status() == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {} never became ready",
            node.addr
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn readyz_status(node: &TestServer) -> u16 {
    reqwest::get(format!("http://{}/readyz", node.addr))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}
