//! Positions that survive a node that dies before it sees a drop (a crash takes its clients'
//! sockets with it, or a `kill -9` beats the socket's end).
//!
//! Each watermark pong hands the engine its connection's confirmed positions; they wait in a
//! per-node batch (one entry per connection, replaced by the next pong) and a task writes the
//! batch every [`FLUSH_PERIOD`] to the peer's `:lpos` hash, tagged with the instance. Only JWT
//! connections on history channels ever confirm, and fan-out never touches this.
//!
//! A resubscribe that finds no parked position looks at `:lpos`: a position whose writer's
//! node topic has no subscriber any more (its pub/sub connection died with it: Redis knows at
//! once, long before the lease lapses) is taken, once, and replayed from. One whose writer is
//! alive belongs to a live connection (another tab) or to a drop that writer will park, and is
//! left alone.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::node::Node;
use super::resume_scripts::{decode_since, encode_since, SCRIPTS};
use super::run_bounded;
use crate::conn::Conn;
use crate::ids::{AppId, ChannelName, ConnId, PeerId};
use crate::resume::Since;
use crate::sync::lock;

/// How often confirmed positions are written to Redis: at most this much of confirmation is
/// lost with a node (on top of the watermark's own interval).
pub(super) const FLUSH_PERIOD: Duration = Duration::from_secs(1);

type Pending = (AppId, PeerId, Vec<(ChannelName, Since)>);

/// The batch of confirmed positions not written yet, and which connections have some in Redis.
#[derive(Default)]
pub(super) struct LazyPositions {
    pending: Mutex<HashMap<ConnId, Pending>>,
    written: Mutex<HashSet<ConnId>>,
}

impl LazyPositions {
    pub(super) fn confirmed(&self, conn: &Conn, positions: Vec<(ChannelName, Since)>) {
        if positions.is_empty() {
            return;
        }
        lock(&self.written).insert(conn.id);
        lock(&self.pending).insert(conn.id, (conn.app.clone(), conn.peer_id.clone(), positions));
    }

    /// The connection ends: nothing more of it is written. True when Redis may hold some.
    pub(super) fn end(&self, conn: &Conn) -> bool {
        lock(&self.pending).remove(&conn.id);
        lock(&self.written).remove(&conn.id)
    }

    /// A deliberate close: what the connection wrote lazily goes (it must not resume).
    pub(super) async fn forget(&self, node: &Node, conn: &Conn) {
        if !self.end(conn) {
            return;
        }
        let base = node
            .keys
            .route_base(conn.app.as_str(), conn.peer_id.as_str());
        let forgot: redis::RedisResult<i64> = SCRIPTS
            .lazy_forget
            .key(&base)
            .arg(node.instance())
            .invoke_async(&mut node.conn())
            .await;
        if let Err(err) = forgot {
            tracing::warn!(error = %err, "forgetting confirmed positions failed");
        }
    }

    fn take_batch(&self) -> HashMap<ConnId, Pending> {
        std::mem::take(&mut *lock(&self.pending))
    }
}

/// Writes the batch every [`FLUSH_PERIOD`] for as long as the node runs.
pub(super) async fn flush(node: Arc<Node>, lazy: Arc<LazyPositions>, window: Duration) {
    let mut tick = tokio::time::interval(FLUSH_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let window = window.as_millis() as u64;
    loop {
        tick.tick().await;
        let batch = lazy.take_batch();
        if batch.is_empty() {
            continue;
        }
        let instance = node.instance();
        let node = &node;
        let calls = batch
            .into_values()
            .map(|(app, peer, positions)| {
                let instance = instance.clone();
                async move {
                    let base = node.keys.route_base(app.as_str(), peer.as_str());
                    let mut call = SCRIPTS.lazy_write.key(&base);
                    call.arg(instance).arg(window);
                    for (channel, since) in &positions {
                        let (offset, epoch) = encode_since(since);
                        call.arg(channel.as_str()).arg(offset).arg(epoch);
                    }
                    call.invoke_async::<i64>(&mut node.conn()).await
                }
            })
            .collect();
        if run_bounded(calls).await.iter().any(Result::is_err) {
            tracing::warn!("writing confirmed positions to redis failed");
        }
    }
}

/// A position a dead node wrote lazily for the peer's channel, taken (once).
pub(super) async fn take(
    node: &Node,
    app: &AppId,
    peer: &PeerId,
    channel: &ChannelName,
) -> Option<Since> {
    let base = node.keys.route_base(app.as_str(), peer.as_str());
    let value: Option<String> = redis::cmd("HGET")
        .arg(format!("{base}:lpos"))
        .arg(channel.as_str())
        .query_async(&mut node.conn())
        .await
        .ok()?;
    let value = value?;
    let (position, instance) = value.rsplit_once('\n')?;
    if node_listens(node, instance).await {
        return None;
    }
    let taken: i64 = SCRIPTS
        .lazy_take
        .key(&base)
        .arg(channel.as_str())
        .arg(&value)
        .invoke_async(&mut node.conn())
        .await
        .ok()?;
    (taken == 1).then(|| decode_since(position)).flatten()
}

/// A direct found a peer with no route and not parked: when a dead node wrote positions
/// for it (it died before it could park the peer), the peer is parked now, so its
/// directs wait for it. True when it is.
pub(super) async fn park_orphan(node: &Node, base: &str, window: Duration) -> bool {
    let values: Vec<String> = match redis::cmd("HVALS")
        .arg(format!("{base}:lpos"))
        .query_async(&mut node.conn())
        .await
    {
        Ok(values) => values,
        Err(_) => return false,
    };
    let mut writers: Vec<&str> = values
        .iter()
        .filter_map(|v| v.rsplit_once('\n').map(|(_, instance)| instance))
        .collect();
    writers.dedup();
    let mut orphaned = false;
    for writer in writers {
        if !node_listens(node, writer).await {
            orphaned = true;
            break;
        }
    }
    if !orphaned {
        return false;
    }
    let parked: redis::RedisResult<i64> = SCRIPTS
        .park_orphan
        .key(base)
        .arg(window.as_millis() as u64)
        .invoke_async(&mut node.conn())
        .await;
    parked.is_ok_and(|p| p == 1)
}

/// Whether the node of `instance` is still subscribed to its topic (alive, or at least still
/// connected to Redis). In doubt (Redis did not answer), yes.
async fn node_listens(node: &Node, instance: &str) -> bool {
    let topic = node.keys.node_topic_of_instance(instance);
    let sub = if node.store.is_cluster() {
        "SHARDNUMSUB"
    } else {
        "NUMSUB"
    };
    let counts: redis::RedisResult<HashMap<String, i64>> = redis::cmd("PUBSUB")
        .arg(sub)
        .arg(&topic)
        .query_async(&mut node.conn())
        .await;
    counts.map_or(true, |c| c.get(&topic).copied().unwrap_or(0) > 0)
}
