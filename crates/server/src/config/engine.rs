//! `[engine]`: which engine does presence and fan-out, and the Redis engine's settings.

use serde::{Deserialize, Serialize};

/// Which engine does presence and fan-out: `memory` (one node) or `redis` (many nodes).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// `memory` or `redis`.
    pub kind: String,
    /// Redis (or Valkey) URL, e.g. `redis://127.0.0.1:6379/0`. With `redis_cluster`, one or
    /// more seed nodes of the cluster, comma-separated.
    pub redis_url: String,
    /// Talk to a Redis Cluster: keys are hash-tagged per channel, peer and node, and channel
    /// topics use sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7+).
    pub redis_cluster: bool,
    /// Prefix of every Redis key and pub/sub topic, so several services can share one Redis.
    pub key_prefix: String,
    /// This node's id; empty means a random id per start.
    pub node_id: String,
    /// A node that has not renewed its lease for this long is dead: its peers leave.
    pub lease_ttl_ms: u64,
    /// A peer whose connection drops (not a clean close) keeps its presence this long, so a
    /// quick reconnect, possibly to another node, shows no left/joined flap. Both engines.
    pub reconnect_grace_ms: u64,

    // Inter-node traffic bounds (Redis engine): how much a node buffers when it cannot keep up
    // with what Redis pushes to it. Beyond either bound it sheds the newest pushes (counted in
    // `herald_bus_shed_total`) and then re-syncs rosters from Redis.
    /// Most pub/sub pushes queued for the node's bus task.
    pub bus_queue_messages: usize,
    /// Most payload bytes queued for the node's bus task.
    pub bus_queue_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            kind: "memory".into(),
            redis_url: "redis://127.0.0.1:6379/0".into(),
            redis_cluster: false,
            key_prefix: "herald:".into(),
            node_id: String::new(),
            lease_ttl_ms: 10_000,
            reconnect_grace_ms: 3_000,
            bus_queue_messages: 4_096,
            bus_queue_bytes: 8 * 1024 * 1024,
        }
    }
}
