//! What the Redis webhook tests share (included with `#[path]`): Redis engine nodes with
//! webhooks attached, connections registered straight on an engine, and a backend that is down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use herald_server::config::{Config, EngineConfig};
use herald_server::conn::Conn;
use herald_server::engine::redis::{RedisEngine, RedisSettings};
use herald_server::engine::{Engine, Publication, SubscribeRequest, Target};
use herald_server::ids::{AppId, ChannelName, PeerId};
use herald_server::webhooks::transport::Transport;
use herald_server::webhooks::{WebhookMetrics, Webhooks};

pub const APP: &str = "app";

/// The receiving ends of the test connections' queues, kept for the test's life.
static OUTBOUND: Mutex<Vec<herald_server::conn::Outbound>> = Mutex::new(Vec::new());

/// A transport that always fails: the node that owns it reads events and never delivers.
pub struct Down;

#[async_trait]
impl Transport for Down {
    async fn post(&self, _: &str, _: &[(&'static str, String)], _: Bytes) -> Result<u16, String> {
        Ok(500)
    }
}

/// A Redis engine node on `engine` (its `kind` and URLs set by the caller), ready, with the
/// webhooks of `config` attached over `transport`.
pub async fn node(
    engine: EngineConfig,
    config: &Config,
    transport: Arc<dyn Transport>,
    metrics: WebhookMetrics,
) -> Arc<dyn Engine> {
    let node = RedisEngine::start_with(&engine, &RedisSettings::from_config(config))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !node.is_ready().await {
        assert!(tokio::time::Instant::now() < deadline, "node not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.attach_webhooks(Arc::new(Webhooks::start(config, transport, metrics)));
    Arc::new(node)
}

/// A registered connection of `APP`; the test reads none of its frames, but keeps its queue's
/// receiving end alive.
pub async fn connect(engine: &Arc<dyn Engine>, peer: &str) -> Arc<Conn> {
    let (conn, rx) = Conn::new(
        AppId::new(APP),
        PeerId::new(peer),
        None,
        true,
        "token",
        1024,
    );
    OUTBOUND.lock().unwrap().push(rx);
    engine.register(&conn).await.unwrap();
    conn
}

pub async fn subscribe(engine: &Arc<dyn Engine>, conn: &Arc<Conn>, channel: &str) {
    let channel = ChannelName::new(channel);
    let req = SubscribeRequest {
        conn,
        channel: &channel,
        target: Target::Channel,
        include_sender_metadata: false,
        ack: None,
        max_app_patterns: 100,
    };
    assert!(engine.subscribe(req).await.unwrap());
}

/// Publishes `data` (JSON) on `channel` of `APP` as `from`.
pub async fn publish(engine: &Arc<dyn Engine>, channel: &str, from: &str, data: &str) {
    let data = serde_json::value::RawValue::from_string(data.to_string()).unwrap();
    let (app, channel, from) = (
        AppId::new(APP),
        ChannelName::new(channel),
        PeerId::new(from),
    );
    engine
        .publish(Publication {
            app: &app,
            channel: &channel,
            from: &from,
            from_metadata: None,
            data: &data,
            exclude: None,
        })
        .await
        .unwrap();
}
