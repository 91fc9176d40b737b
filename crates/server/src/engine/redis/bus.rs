//! The node's pub/sub listener: it subscribes to channel topics on demand and delivers what
//! arrives, in order, to local connections. It reconnects with backoff, then re-subscribes
//! everything the node needs and asks for a re-assert and a roster re-sync.
//!
//! - **Single Redis**: one pub/sub connection carries every topic, so events from all channels
//!   arrive in the order Redis saw them. Wildcard subscriptions use `PSUBSCRIBE`.
//! - **Redis Cluster**: channel and node topics are sharded (`SSUBSCRIBE` on the shard that
//!   owns the topic's slot), through one cluster connection whose pushes arrive on one queue.
//!   Order holds per topic (per channel, per target node), which is what FIFO per sender needs
//!   on one channel. Wildcard subscribers listen on a classic per-app topic instead.
//!
//! In both modes the connection hands pushes to the node's bounded inbox (`inbox.rs`), and
//! this task takes them from there in batches, yielding between batches.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion};
use tokio::sync::mpsc;

use super::inbox::Push;
use super::local::Gap;
use super::node::Node;
use super::store::{cluster_seeds, COMMAND_TIMEOUT};
use super::topics::BusCommand;
use super::wire::Event;

/// Delivers one push. Returns the gap before a message instead of delivering it when
/// `check_gaps` and messages of its channel's history went missing on the way.
fn dispatch(
    inner: &Node,
    topic: &str,
    payload: &[u8],
    from_pattern: bool,
    check_gaps: bool,
) -> Option<Gap> {
    if topic == inner.keys.patterns_topic() {
        // A node announces an app that gained wildcard subscribers (cluster mode).
        inner.pattern_interest(String::from_utf8_lossy(payload).into_owned());
        return None;
    }
    let Ok(event) = serde_json::from_slice::<Event<'_>>(payload) else {
        tracing::warn!(topic, "undecodable event on the bus");
        return None;
    };
    let node = inner.id.as_str();
    if topic == inner.keys.node() {
        inner.local.on_node_event(&event, node);
        return None;
    }
    if let Some(app) = inner.keys.app_of_topic(topic) {
        if let Some(channel) = event.channel.as_deref() {
            inner.local.on_pattern_message(app, channel, &event, node);
        }
        return None;
    }
    let (app, channel) = inner.keys.parse_channel(topic)?;
    if from_pattern {
        inner.local.on_pattern_message(app, channel, &event, node);
        None
    } else {
        inner
            .local
            .on_channel_event_at(app, channel, &event, node, check_gaps)
    }
}

/// Pushes handled per turn of the bus task. After a batch it yields, so its subscribe
/// commands, timers and the sessions sharing its worker thread get a turn during a flood.
const BATCH: usize = 64;

/// Runs the bus for the configured Redis until the engine stops.
pub async fn run(
    inner: Arc<Node>,
    urls: String,
    cluster: bool,
    commands: mpsc::UnboundedReceiver<BusCommand>,
) {
    if cluster {
        run_cluster(inner, urls, commands).await;
    } else {
        // RESP3, so pushes reach the inbox through a push sender that never blocks, instead
        // of an unbounded channel inside the redis crate.
        let client = urls.as_str().into_connection_info().and_then(|info| {
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            redis::Client::open(info.set_redis_settings(settings))
        });
        match client {
            Ok(client) => run_single(inner, client, commands).await,
            Err(err) => tracing::error!(error = %err, "bad redis url; pub/sub disabled"),
        }
    }
}

/// Runs a bus command against a single Redis, bounded like every command.
async fn apply_single(conn: &mut MultiplexedConnection, inner: &Node, command: BusCommand) -> bool {
    let result = match command {
        BusCommand::Channel(topic, true) => bounded(conn.subscribe(topic)).await,
        BusCommand::Channel(topic, false) => bounded(conn.unsubscribe(topic)).await,
        BusCommand::App(app, true) => bounded(conn.psubscribe(inner.keys.app_pattern(&app))).await,
        BusCommand::App(app, false) => {
            bounded(conn.punsubscribe(inner.keys.app_pattern(&app))).await
        }
        BusCommand::Barrier(done) => {
            let _ = done.send(true);
            Ok(())
        }
    };
    result.is_ok()
}

/// (Re-)subscribes everything the node needs on a fresh single-Redis connection.
async fn subscribe_all_single(
    conn: &mut MultiplexedConnection,
    inner: &Node,
) -> redis::RedisResult<()> {
    bounded(conn.subscribe(inner.keys.node())).await?;
    let (channels, apps) = inner.local.topics();
    for topic in channels {
        bounded(conn.subscribe(topic)).await?;
    }
    for app in apps {
        bounded(conn.psubscribe(inner.keys.app_pattern(&app))).await?;
    }
    Ok(())
}

async fn run_single(
    inner: Arc<Node>,
    client: redis::Client,
    mut commands: mpsc::UnboundedReceiver<BusCommand>,
) {
    let mut delay = Duration::from_millis(100);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let epoch = inner.inbox.new_connection();
        let inbox = inner.inbox.clone();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_push_sender(move |info| {
                inbox.offer(epoch, info);
                Ok::<(), std::convert::Infallible>(())
            });
        let connected = tokio::time::timeout(
            COMMAND_TIMEOUT,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        let Ok(Ok(mut conn)) = connected else {
            inner.bus_up.store(false, Ordering::Release);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
            continue;
        };
        if subscribe_all_single(&mut conn, &inner).await.is_err() {
            tokio::time::sleep(delay).await;
            continue;
        }
        delay = Duration::from_millis(100);
        inner.bus_up.store(true, Ordering::Release);
        inner.bus_connected();
        tracing::info!(node = %inner.id, "redis pub/sub connected");
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    if !apply_single(&mut conn, &inner, command).await {
                        break;
                    }
                }
                () = inner.inbox.ready() => {
                    if inner.inbox.take_disconnected() {
                        break;
                    }
                    deliver_batch(&inner, &mut batch).await;
                }
            }
            tokio::task::yield_now().await;
        }
        inner.bus_up.store(false, Ordering::Release);
        tracing::warn!(node = %inner.id, "redis pub/sub lost; reconnecting");
    }
}

/// Dispatches up to one batch of queued pushes, oldest first. After pushes were shed, asks
/// for a roster re-sync once the queue has drained (re-syncing while still behind would
/// compare rosters with stale deltas).
///
/// A message after a gap in its channel's history waits for the repair (one bounded read of
/// the channel's stream), and everything behind it on the bus waits too: order is kept.
async fn deliver_batch(inner: &Node, batch: &mut Vec<Push>) {
    inner.inbox.take(batch, BATCH);
    for push in batch.drain(..) {
        if let Some(gap) = dispatch(inner, &push.topic, &push.payload, push.from_pattern, true) {
            inner.repair(&gap).await;
            dispatch(inner, &push.topic, &push.payload, push.from_pattern, false);
        }
    }
    if inner.inbox.is_empty() {
        if inner.inbox.take_gap() {
            inner.bus_gap();
        }
    } else {
        // More is queued: come back after yielding.
        inner.inbox.wake();
    }
}

/// Bounds a cluster (un)subscribe: with a shard down, the cluster client may wait a long time
/// for a connection, and the bus must keep draining pushes and probing meanwhile.
async fn bounded(
    call: impl std::future::Future<Output = redis::RedisResult<()>>,
) -> redis::RedisResult<()> {
    tokio::time::timeout(COMMAND_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err((redis::ErrorKind::Io, "pub/sub command timed out").into()))
}

async fn apply_cluster(conn: &mut ClusterConnection, inner: &Node, command: BusCommand) -> bool {
    let result = match command {
        BusCommand::Channel(topic, true) => bounded(conn.ssubscribe(topic)).await,
        BusCommand::Channel(topic, false) => bounded(conn.sunsubscribe(topic)).await,
        BusCommand::App(app, true) => bounded(conn.subscribe(inner.keys.app_topic(&app))).await,
        BusCommand::App(app, false) => bounded(conn.unsubscribe(inner.keys.app_topic(&app))).await,
        BusCommand::Barrier(done) => {
            let _ = done.send(inner.bus_up.load(Ordering::Acquire));
            Ok(())
        }
    };
    result.is_ok()
}

/// (Re-)subscribes everything the node needs. Subscribing twice is harmless.
async fn subscribe_all(conn: &mut ClusterConnection, inner: &Node) -> redis::RedisResult<()> {
    bounded(conn.ssubscribe(inner.keys.node())).await?;
    bounded(conn.subscribe(inner.keys.patterns_topic())).await?;
    let (channels, apps) = inner.local.topics();
    for topic in channels {
        bounded(conn.ssubscribe(topic)).await?;
    }
    for app in apps {
        bounded(conn.subscribe(inner.keys.app_topic(&app))).await?;
    }
    Ok(())
}

async fn run_cluster(
    inner: Arc<Node>,
    urls: String,
    mut commands: mpsc::UnboundedReceiver<BusCommand>,
) {
    // One cluster client for the node's life: its pushes all come from connection epoch 1.
    let epoch = inner.inbox.new_connection();
    let inbox = inner.inbox.clone();
    let client = match ClusterClientBuilder::new(cluster_seeds(&urls))
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(move |info| {
            inbox.offer(epoch, info);
            Ok::<(), std::convert::Infallible>(())
        })
        .connection_timeout(COMMAND_TIMEOUT)
        .response_timeout(COMMAND_TIMEOUT)
        .retries(1)
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "bad redis cluster urls; pub/sub disabled");
            return;
        }
    };
    let mut delay = Duration::from_millis(100);
    let mut conn = loop {
        match client.get_async_connection().await {
            Ok(conn) => break conn,
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    };
    let mut batch = Vec::with_capacity(BATCH);
    // While the bus is down, this probes the cluster and re-subscribes once it answers.
    let mut probe = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { return };
                if !apply_cluster(&mut conn, &inner, command).await {
                    lost(&inner);
                }
            }
            () = inner.inbox.ready() => {
                if inner.inbox.take_disconnected() {
                    lost(&inner);
                }
                deliver_batch(&inner, &mut batch).await;
            }
            _ = probe.tick(), if !inner.bus_up.load(Ordering::Acquire) => {
                if subscribe_all(&mut conn, &inner).await.is_ok() {
                    inner.bus_up.store(true, Ordering::Release);
                    inner.bus_connected();
                    tracing::info!(node = %inner.id, "redis cluster pub/sub connected");
                }
            }
        }
        tokio::task::yield_now().await;
    }
}

fn lost(inner: &Node) {
    if inner.bus_up.swap(false, Ordering::AcqRel) {
        tracing::warn!(node = %inner.id, "redis cluster pub/sub lost; reconnecting");
    }
}
