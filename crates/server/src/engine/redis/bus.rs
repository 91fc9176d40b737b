//! The node's one Redis pub/sub connection: it subscribes to channel topics on demand, and
//! delivers what arrives, in order, to local connections. It reconnects with backoff and then
//! re-subscribes everything the node needs and asks for a re-assert.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::{mpsc, oneshot};

use super::wire::Event;
use super::Inner;

/// Requests to the bus task, applied in the order they were sent.
pub enum BusCommand {
    Subscribe(String),
    Unsubscribe(String),
    PSubscribe(String),
    PUnsubscribe(String),
    /// Answered once every command sent before it has been applied (`false` if the bus is down).
    Barrier(oneshot::Sender<bool>),
}

/// Topic names for one node.
pub struct Topics {
    channel_prefix: String,
    node: String,
}

impl Topics {
    pub fn new(prefix: &str, node: &str) -> Topics {
        Topics {
            channel_prefix: format!("{prefix}ch:"),
            node: format!("{prefix}node:{node}"),
        }
    }

    pub fn channel(&self, app: &str, channel: &str) -> String {
        format!("{}{app}:{channel}", self.channel_prefix)
    }

    /// Every channel topic of an app (app ids hold no glob characters).
    pub fn app_pattern(&self, app: &str) -> String {
        format!("{}{app}:*", self.channel_prefix)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// `(app, channel)` of a channel topic.
    pub fn parse_channel<'t>(&self, topic: &'t str) -> Option<(&'t str, &'t str)> {
        topic
            .strip_prefix(self.channel_prefix.as_str())?
            .split_once(':')
    }
}

async fn apply(sink: &mut PubSubSink, command: BusCommand) -> redis::RedisResult<()> {
    match command {
        BusCommand::Subscribe(topic) => sink.subscribe(topic).await,
        BusCommand::Unsubscribe(topic) => sink.unsubscribe(topic).await,
        BusCommand::PSubscribe(pattern) => sink.psubscribe(pattern).await,
        BusCommand::PUnsubscribe(pattern) => sink.punsubscribe(pattern).await,
        BusCommand::Barrier(done) => {
            let _ = done.send(true);
            Ok(())
        }
    }
}

fn dispatch(inner: &Inner, msg: &redis::Msg) {
    let topic = msg.get_channel_name();
    let Ok(event) = serde_json::from_slice::<Event<'_>>(msg.get_payload_bytes()) else {
        tracing::warn!(topic, "undecodable event on the bus");
        return;
    };
    let node = inner.node.as_str();
    if topic == inner.topics.node() {
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
    let Some((app, channel)) = inner.topics.parse_channel(topic) else {
        return;
    };
    if msg.from_pattern() {
        inner.local.on_pattern_message(app, channel, &event, node);
    } else {
        inner.local.on_channel_event(app, channel, &event, node);
    }
}

pub async fn run(
    inner: Arc<Inner>,
    client: redis::Client,
    mut commands: mpsc::UnboundedReceiver<BusCommand>,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        let connected =
            tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub()).await;
        let Ok(Ok(pubsub)) = connected else {
            inner.bus_up.store(false, Ordering::Release);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
            continue;
        };
        let (mut sink, mut stream) = pubsub.split();
        let (channels, patterns) = inner.local.topics(&inner.topics);
        let mut ok = sink.subscribe(inner.topics.node()).await.is_ok();
        for topic in channels {
            ok = ok && sink.subscribe(topic).await.is_ok();
        }
        for pattern in patterns {
            ok = ok && sink.psubscribe(pattern).await.is_ok();
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
                    if apply(&mut sink, command).await.is_err() {
                        break;
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    dispatch(&inner, &msg);
                }
            }
        }
        inner.bus_up.store(false, Ordering::Release);
        tracing::warn!(node = %inner.node, "redis pub/sub lost; reconnecting");
    }
}
