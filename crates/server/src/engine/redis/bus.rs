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

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{PushKind, Value};
use tokio::sync::{mpsc, oneshot};

use super::store::{cluster_seeds, COMMAND_TIMEOUT};
use super::wire::Event;
use super::Inner;

/// Requests to the bus task, applied in the order they were sent.
pub enum BusCommand {
    /// Listen (true) or stop listening (false) to a channel topic.
    Channel(String, bool),
    /// Listen (true) or stop listening (false) to every channel of an app, for wildcard
    /// subscriptions.
    App(String, bool),
    /// Answered once every command sent before it has been applied (`false` if the bus is down).
    Barrier(oneshot::Sender<bool>),
}

fn dispatch(inner: &Inner, topic: &str, payload: &[u8], from_pattern: bool) {
    if topic == inner.keys.patterns_topic() {
        // A node announces an app that gained wildcard subscribers (cluster mode).
        inner.pattern_interest(String::from_utf8_lossy(payload).into_owned());
        return;
    }
    let Ok(event) = serde_json::from_slice::<Event<'_>>(payload) else {
        tracing::warn!(topic, "undecodable event on the bus");
        return;
    };
    let node = inner.node.as_str();
    if topic == inner.keys.node() {
        match event.k.as_ref() {
            "d" => inner.local.on_direct(&event, node),
            "x" => {
                if let (Some(app), Some(peer), Some(code)) =
                    (event.a.as_deref(), event.p.as_deref(), event.c)
                {
                    let reason = crate::conn::CloseReason::new(
                        if code == 4020 {
                            herald_protocol::CloseCode::AdminDisconnect
                        } else {
                            herald_protocol::CloseCode::PolicyViolation
                        },
                        "disconnected by admin",
                    );
                    inner.local.close_peer(
                        &crate::ids::AppId::new(app),
                        &crate::ids::PeerId::new(peer),
                        reason,
                    );
                }
            }
            _ => {}
        }
        return;
    }
    if let Some(app) = inner.keys.app_of_topic(topic) {
        if let Some(channel) = event.n.as_deref() {
            inner.local.on_pattern_message(app, channel, &event, node);
        }
        return;
    }
    let Some((app, channel)) = inner.keys.parse_channel(topic) else {
        return;
    };
    if from_pattern {
        inner.local.on_pattern_message(app, channel, &event, node);
    } else {
        inner.local.on_channel_event(app, channel, &event, node);
    }
}

/// Runs the bus for the configured Redis until the engine stops.
pub async fn run(
    inner: Arc<Inner>,
    urls: String,
    cluster: bool,
    commands: mpsc::UnboundedReceiver<BusCommand>,
) {
    if cluster {
        run_cluster(inner, urls, commands).await;
    } else {
        match redis::Client::open(urls.as_str()) {
            Ok(client) => run_single(inner, client, commands).await,
            Err(err) => tracing::error!(error = %err, "bad redis url; pub/sub disabled"),
        }
    }
}

async fn apply_single(sink: &mut PubSubSink, inner: &Inner, command: BusCommand) -> bool {
    let result = match command {
        BusCommand::Channel(topic, true) => sink.subscribe(topic).await,
        BusCommand::Channel(topic, false) => sink.unsubscribe(topic).await,
        BusCommand::App(app, true) => sink.psubscribe(inner.keys.app_pattern(&app)).await,
        BusCommand::App(app, false) => sink.punsubscribe(inner.keys.app_pattern(&app)).await,
        BusCommand::Barrier(done) => {
            let _ = done.send(true);
            Ok(())
        }
    };
    result.is_ok()
}

async fn run_single(
    inner: Arc<Inner>,
    client: redis::Client,
    mut commands: mpsc::UnboundedReceiver<BusCommand>,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        let connected = tokio::time::timeout(COMMAND_TIMEOUT, client.get_async_pubsub()).await;
        let Ok(Ok(pubsub)) = connected else {
            inner.bus_up.store(false, Ordering::Release);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
            continue;
        };
        let (mut sink, mut stream) = pubsub.split();
        let (channels, apps) = inner.local.topics(&inner.keys);
        let mut ok = sink.subscribe(inner.keys.node()).await.is_ok();
        for topic in channels {
            ok = ok && sink.subscribe(topic).await.is_ok();
        }
        for app in apps {
            ok = ok && sink.psubscribe(inner.keys.app_pattern(&app)).await.is_ok();
        }
        if !ok {
            tokio::time::sleep(delay).await;
            continue;
        }
        delay = Duration::from_millis(100);
        inner.bus_up.store(true, Ordering::Release);
        inner.bus_connected();
        tracing::info!(node = %inner.node, "redis pub/sub connected");
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    if !apply_single(&mut sink, &inner, command).await {
                        break;
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    dispatch(&inner, msg.get_channel_name(), msg.get_payload_bytes(), msg.from_pattern());
                }
            }
        }
        inner.bus_up.store(false, Ordering::Release);
        tracing::warn!(node = %inner.node, "redis pub/sub lost; reconnecting");
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

async fn apply_cluster(conn: &mut ClusterConnection, inner: &Inner, command: BusCommand) -> bool {
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
async fn subscribe_all(conn: &mut ClusterConnection, inner: &Inner) -> redis::RedisResult<()> {
    bounded(conn.ssubscribe(inner.keys.node())).await?;
    bounded(conn.subscribe(inner.keys.patterns_topic())).await?;
    let (channels, apps) = inner.local.topics(&inner.keys);
    for topic in channels {
        bounded(conn.ssubscribe(topic)).await?;
    }
    for app in apps {
        bounded(conn.subscribe(inner.keys.app_topic(&app))).await?;
    }
    Ok(())
}

/// `(topic, payload)` of a pushed message.
fn message_parts(data: &[Value]) -> Option<(&[u8], &[u8])> {
    match data {
        [Value::BulkString(topic), Value::BulkString(payload)] => Some((topic, payload)),
        _ => None,
    }
}

async fn run_cluster(
    inner: Arc<Inner>,
    urls: String,
    mut commands: mpsc::UnboundedReceiver<BusCommand>,
) {
    let (push_tx, mut pushes) = mpsc::unbounded_channel();
    let client = match ClusterClientBuilder::new(cluster_seeds(&urls))
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(push_tx)
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
            push = pushes.recv() => {
                let Some(push) = push else { return };
                match push.kind {
                    PushKind::Message | PushKind::SMessage => {
                        if let Some((topic, payload)) = message_parts(&push.data) {
                            dispatch(&inner, &String::from_utf8_lossy(topic), payload, false);
                        }
                    }
                    PushKind::Disconnection => lost(&inner),
                    _ => {}
                }
            }
            _ = probe.tick(), if !inner.bus_up.load(Ordering::Acquire) => {
                if subscribe_all(&mut conn, &inner).await.is_ok() {
                    inner.bus_up.store(true, Ordering::Release);
                    inner.bus_connected();
                    tracing::info!(node = %inner.node, "redis cluster pub/sub connected");
                }
            }
        }
    }
}

fn lost(inner: &Inner) {
    if inner.bus_up.swap(false, Ordering::AcqRel) {
        tracing::warn!(node = %inner.node, "redis cluster pub/sub lost; reconnecting");
    }
}
