//! The command connection: one multiplexed connection to a single Redis (or Valkey), or a
//! Redis Cluster connection that routes each command by its key's slot. Both reconnect by
//! themselves; commands fail fast while Redis is away.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Redis commands fail after this, so a dead Redis turns into `backend_error` quickly.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// A single Redis, or a Redis Cluster.
#[derive(Clone)]
pub enum Store {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Seed URLs of a cluster: one or more, comma-separated.
pub fn cluster_seeds(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

impl Store {
    /// Connects, waiting (with backoff) until Redis answers.
    pub async fn connect(urls: &str, cluster: bool) -> redis::RedisResult<Store> {
        let mut delay = Duration::from_millis(100);
        if cluster {
            let client = ClusterClientBuilder::new(cluster_seeds(urls))
                .connection_timeout(COMMAND_TIMEOUT)
                .response_timeout(COMMAND_TIMEOUT)
                .overall_response_timeout(Some(COMMAND_TIMEOUT * 2))
                .retries(1)
                .build()?;
            loop {
                match client.get_async_connection().await {
                    Ok(conn) => return Ok(Store::Cluster(conn)),
                    Err(err) => wait_for_redis(&err, &mut delay).await,
                }
            }
        }
        let client = redis::Client::open(urls)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        loop {
            match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                Ok(manager) => return Ok(Store::Single(manager)),
                Err(err) => wait_for_redis(&err, &mut delay).await,
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Store::Cluster(_))
    }

    /// The publish command for channel topics: sharded in cluster mode.
    pub fn publish_command(&self) -> &'static str {
        if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }
}

async fn wait_for_redis(err: &redis::RedisError, delay: &mut Duration) {
    tracing::warn!(error = %err, "redis not reachable yet; retrying");
    tokio::time::sleep(*delay).await;
    *delay = (*delay * 2).min(Duration::from_secs(1));
}

impl ConnectionLike for Store {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Store::Single(c) => c.req_packed_command(cmd),
            Store::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Store::Single(c) => c.req_packed_commands(cmd, offset, count),
            Store::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Store::Single(c) => c.get_db(),
            Store::Cluster(c) => c.get_db(),
        }
    }
}
