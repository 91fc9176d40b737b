//! What every scenario stands on: engines to run against, and test clients that are plain
//! `Conn` values whose outbound queues the test reads directly (no websockets).

use std::sync::Arc;
use std::time::Duration;

use herald_protocol::encode;
use herald_protocol::glob::Pattern;
use herald_server::config::{EngineConfig, HistoryConfig, PresenceConfig};
use herald_server::conn::{Conn, Outbound};
use herald_server::engine::hub::occupancy::OccupancyRules;
use herald_server::engine::memory::{MemoryEngine, MemorySettings};
use herald_server::engine::redis::{RedisEngine, RedisSettings};
use herald_server::engine::{
    Departure, Direct, Engine, EngineError, Publication, SubscribeRequest, Target,
};
use herald_server::history::History;
use herald_server::ids::{AppId, ChannelName, PeerId};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use herald_testkit::redis::{RedisCluster, RedisServer};

/// How long a frame routed through Redis may take to arrive before the test fails. Generous:
/// a passing test never waits this long, it only bounds a failing one.
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// The reconnect grace of every engine in this suite: short, so the grace scenarios stay fast.
pub const GRACE: Duration = Duration::from_millis(500);

pub const APP: &str = "app_one";
pub const OTHER_APP: &str = "app_two";

/// The engines of one scenario: one node, or (Redis) several sharing one redis-server.
pub struct Nodes {
    engines: Vec<Arc<dyn Engine>>,
    /// Kept alive for the scenario; dropped (killed) after the engines.
    _redis: Option<RedisServer>,
    /// A Redis Cluster instead (history scenarios on sharded pub/sub).
    redis_cluster: Option<RedisCluster>,
}

impl Nodes {
    /// A fresh memory engine with the suite's reconnect grace.
    pub fn memory() -> Nodes {
        Nodes {
            engines: vec![Arc::new(MemoryEngine::with_grace(GRACE))],
            _redis: None,
            redis_cluster: None,
        }
    }

    /// A memory engine with the roster caps of `presence` (occupancy mode).
    pub fn memory_with(presence: &PresenceConfig) -> Nodes {
        let engine = MemoryEngine::with_settings(MemorySettings {
            rules: OccupancyRules::new(presence),
            ..MemorySettings::default()
        });
        Nodes {
            engines: vec![Arc::new(engine)],
            _redis: None,
            redis_cluster: None,
        }
    }

    /// A memory engine whose presence deltas are coalesced over `window` under load.
    pub fn memory_coalescing(window: Duration) -> Nodes {
        Nodes {
            engines: vec![Arc::new(MemoryEngine::with_presence_coalescing(window))],
            _redis: None,
            redis_cluster: None,
        }
    }

    /// Memory engines built by a scenario file itself.
    pub fn from_engines(engines: Vec<Arc<dyn Engine>>) -> Nodes {
        Nodes {
            engines,
            _redis: None,
            redis_cluster: None,
        }
    }

    /// A memory engine keeping the history `history` configures.
    pub fn memory_with_history(history: &HistoryConfig) -> Nodes {
        let engine = MemoryEngine::with_settings(MemorySettings {
            history: History::from_config(history),
            ..MemorySettings::default()
        });
        Nodes {
            engines: vec![Arc::new(engine)],
            _redis: None,
            redis_cluster: None,
        }
    }

    /// `count` Redis nodes on one fresh redis-server, each ready before this returns.
    pub async fn redis(count: usize) -> Nodes {
        Self::redis_with(count, &PresenceConfig::default()).await
    }

    /// [`Nodes::redis`] with the roster caps of `presence` (occupancy mode).
    pub async fn redis_with(count: usize, presence: &PresenceConfig) -> Nodes {
        let settings = RedisSettings {
            presence: presence.clone(),
            ..RedisSettings::default()
        };
        Self::redis_with_settings(count, &settings).await
    }

    /// `count` Redis nodes on one fresh redis-server keeping the history `history` configures.
    pub async fn redis_with_history(count: usize, history: &HistoryConfig) -> Nodes {
        let settings = RedisSettings {
            history: history.clone(),
            ..RedisSettings::default()
        };
        Self::redis_with_settings(count, &settings).await
    }

    /// `count` Redis nodes on one fresh redis-server keeping `history`, with lossless
    /// reconnect on (`resume`).
    pub async fn redis_with_resume(
        count: usize,
        history: &HistoryConfig,
        resume: herald_server::resume::ResumeSettings,
    ) -> Nodes {
        let settings = RedisSettings {
            history: history.clone(),
            resume,
            ..RedisSettings::default()
        };
        Self::redis_with_settings(count, &settings).await
    }

    /// [`Nodes::redis`] whose presence deltas are coalesced over `window` under load.
    pub async fn redis_coalescing(count: usize, window: Duration) -> Nodes {
        let settings = RedisSettings {
            coalesce: window,
            ..RedisSettings::default()
        };
        Self::redis_with_settings(count, &settings).await
    }

    async fn redis_with_settings(count: usize, settings: &RedisSettings) -> Nodes {
        let redis = RedisServer::start();
        let config = EngineConfig {
            kind: "redis".into(),
            redis_url: redis.url(),
            reconnect_grace_ms: GRACE.as_millis() as u64,
            ..EngineConfig::default()
        };
        let mut engines: Vec<Arc<dyn Engine>> = Vec::new();
        for _ in 0..count {
            let engine = RedisEngine::start_with(&config, settings).await.unwrap();
            wait_ready(&engine).await;
            engines.push(Arc::new(engine));
        }
        Nodes {
            engines,
            _redis: Some(redis),
            redis_cluster: None,
        }
    }

    /// `count` Redis nodes on a fresh three-master Redis Cluster keeping the history `history`
    /// configures.
    pub async fn redis_cluster_with_history(count: usize, history: &HistoryConfig) -> Nodes {
        let redis = RedisCluster::start();
        let config = EngineConfig {
            kind: "redis".into(),
            redis_url: redis.urls(),
            redis_cluster: true,
            reconnect_grace_ms: GRACE.as_millis() as u64,
            ..EngineConfig::default()
        };
        let settings = RedisSettings {
            history: history.clone(),
            ..RedisSettings::default()
        };
        let mut engines: Vec<Arc<dyn Engine>> = Vec::new();
        for _ in 0..count {
            let engine = RedisEngine::start_with(&config, &settings).await.unwrap();
            wait_ready(&engine).await;
            engines.push(Arc::new(engine));
        }
        Nodes {
            engines,
            _redis: None,
            redis_cluster: Some(redis),
        }
    }

    /// Node `i` stops as a crashed process would: its tasks end and nothing is cleaned up.
    /// Its clients must be gone already (they hold the engine). Later nodes move down by one.
    pub fn crash(&mut self, i: usize) {
        let engine = self.engines.remove(i);
        assert_eq!(Arc::strong_count(&engine), 1, "node {i} still has clients");
    }

    /// Kills the redis-server and starts it again, empty (data loss).
    pub fn restart_redis(&mut self) {
        self._redis.as_mut().expect("a single redis").restart();
    }

    /// Runs one Redis command (single Redis or cluster) and returns its reply.
    pub async fn redis_command<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        if let Some(cluster) = &self.redis_cluster {
            let seeds: Vec<String> = cluster.urls().split(',').map(String::from).collect();
            let client = redis::cluster::ClusterClient::new(seeds).unwrap();
            let mut conn = client.get_async_connection().await.unwrap();
            return cmd.query_async(&mut conn).await.unwrap();
        }
        let url = self._redis.as_ref().expect("a redis scenario").url();
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        cmd.query_async(&mut conn).await.unwrap()
    }

    /// How many times Redis ran a command so far (scripts' calls included), for scenarios that
    /// show a read did not happen. Redis nodes only.
    pub async fn redis_calls(&self, command: &str) -> u64 {
        let url = self._redis.as_ref().expect("a redis scenario").url();
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.engines.len()
    }

    /// Node `i`'s engine.
    pub fn node(&self, i: usize) -> Arc<dyn Engine> {
        self.engines[i].clone()
    }

    /// The only (or first) node's engine.
    pub fn engine(&self) -> Arc<dyn Engine> {
        self.node(0)
    }
}

/// Polls `is_ready` (the engine has no readiness signal to await), bounded.
async fn wait_ready(engine: &RedisEngine) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !engine.is_ready().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis engine never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn raw(json: &str) -> Arc<RawValue> {
    Arc::from(RawValue::from_string(json.to_string()).unwrap())
}

pub fn channel(name: &str) -> ChannelName {
    ChannelName::new(name)
}

/// One test connection: registered with an engine, its queue read by the test.
pub struct Client {
    pub engine: Arc<dyn Engine>,
    pub conn: Arc<Conn>,
    pub rx: Outbound,
    /// What it is subscribed to, handed to `disconnect` as a session would.
    subscriptions: Vec<ChannelName>,
}

/// Builds a connection of `peer` in `app`.
pub struct ClientSpec<'a> {
    app: &'a str,
    peer: &'a str,
    metadata: Option<&'a str>,
    presence: bool,
}

impl<'a> ClientSpec<'a> {
    /// A connection that receives presence, with no metadata, in [`APP`].
    pub fn new(peer: &'a str) -> Self {
        ClientSpec {
            app: APP,
            peer,
            metadata: None,
            presence: true,
        }
    }

    pub fn app(mut self, app: &'a str) -> Self {
        self.app = app;
        self
    }

    pub fn metadata(mut self, metadata: &'a str) -> Self {
        self.metadata = Some(metadata);
        self
    }

    pub fn without_presence(mut self) -> Self {
        self.presence = false;
        self
    }

    /// Creates the connection and registers it, as a session does before `welcome`.
    pub async fn connect(self, engine: &Arc<dyn Engine>) -> Client {
        let (conn, rx) = Conn::new(
            AppId::new(self.app),
            PeerId::new(self.peer),
            self.metadata.map(raw),
            self.presence,
            "token",
            1024,
        );
        engine.register(&conn).await.unwrap();
        Client {
            engine: engine.clone(),
            conn,
            rx,
            subscriptions: Vec::new(),
        }
    }
}

/// A connection of `peer` in [`APP`] that receives presence, with no metadata.
pub async fn connect(engine: &Arc<dyn Engine>, peer: &str) -> Client {
    ClientSpec::new(peer).connect(engine).await
}

impl Client {
    pub fn peer(&self) -> &str {
        self.conn.peer_id.as_str()
    }

    pub fn app(&self) -> &AppId {
        &self.conn.app
    }

    /// Subscribes to a concrete channel with request id `s`.
    pub async fn subscribe(&mut self, name: &str) -> bool {
        self.subscribe_with(name, false).await.unwrap()
    }

    pub async fn subscribe_with(
        &mut self,
        name: &str,
        include_sender_metadata: bool,
    ) -> Result<bool, EngineError> {
        self.subscribe_target(name, Target::Channel, include_sender_metadata, usize::MAX)
            .await
    }

    /// Subscribes to a wildcard pattern, the app allowed `max_app_patterns` distinct ones.
    pub async fn subscribe_pattern(
        &mut self,
        pattern: &str,
        max_app_patterns: usize,
    ) -> Result<bool, EngineError> {
        let target = Target::Pattern(Pattern::parse(pattern));
        self.subscribe_target(pattern, target, false, max_app_patterns)
            .await
    }

    async fn subscribe_target(
        &mut self,
        name: &str,
        target: Target,
        include_sender_metadata: bool,
        max_app_patterns: usize,
    ) -> Result<bool, EngineError> {
        let name = channel(name);
        let result = self
            .engine
            .subscribe(SubscribeRequest {
                conn: &self.conn,
                channel: &name,
                target,
                include_sender_metadata,
                ack: Some(encode::ack("s").into()),
                max_app_patterns,
            })
            .await;
        if result.is_ok() && !self.subscriptions.contains(&name) {
            self.subscriptions.push(name);
        }
        result
    }

    pub async fn unsubscribe(&mut self, name: &str) -> bool {
        let name = channel(name);
        self.subscriptions.retain(|c| *c != name);
        self.engine.unsubscribe(&self.conn, &name).await.unwrap()
    }

    /// Publishes from this connection (which never receives its own message).
    pub async fn publish(&self, name: &str, data: &str, from_metadata: Option<&str>) -> usize {
        let (data, metadata) = (raw(data), from_metadata.map(raw));
        self.engine
            .publish(Publication {
                app: self.app(),
                channel: &channel(name),
                from: &self.conn.peer_id,
                from_metadata: metadata.as_deref(),
                data: &data,
                exclude: Some(&self.conn),
            })
            .await
            .unwrap()
    }

    /// Sends a direct from this connection to `to`.
    pub async fn send(&self, to: &str, data: &str, from_metadata: Option<&str>) -> usize {
        let (data, metadata) = (raw(data), from_metadata.map(raw));
        self.engine
            .send_direct(Direct {
                app: self.app(),
                to: &PeerId::new(to),
                from: &self.conn.peer_id,
                from_metadata: metadata.as_deref(),
                data: &data,
                exclude: Some(&self.conn),
            })
            .await
            .unwrap()
    }

    /// Ends the connection as its session would.
    pub async fn disconnect(mut self, departure: Departure) {
        let subscriptions = std::mem::take(&mut self.subscriptions);
        self.engine
            .disconnect(&self.conn, subscriptions, departure)
            .await;
    }

    /// The next frame as JSON (presence entries sorted by peer), waiting for it (bounded).
    pub async fn next(&mut self) -> Value {
        match tokio::time::timeout(FRAME_TIMEOUT, self.rx.recv()).await {
            Ok(Some(frame)) => normalized(serde_json::from_str(frame.as_str()).unwrap()),
            Ok(None) => panic!("{}: queue closed", self.peer()),
            Err(_) => panic!("{}: no frame within {FRAME_TIMEOUT:?}", self.peer()),
        }
    }

    /// Asserts the next frame, waiting for it.
    pub async fn expect(&mut self, want: Value) {
        let got = self.next().await;
        assert_eq!(got, normalized(want), "frame received by {}", self.peer());
    }

    /// Asserts the ack of a subscribe (request id `s`) and its snapshot of `others`.
    pub async fn expect_subscribed(&mut self, name: &str, others: Value) {
        self.expect(ack()).await;
        self.expect(presence(name, others, json!([]))).await;
    }

    /// Asserts nothing is queued right now. Meaningful only after a barrier showed everything
    /// sent before it has arrived (see [`Barrier`]).
    pub fn expect_nothing_queued(&mut self) {
        if let Some(frame) = self.rx.try_recv() {
            panic!("{} received unexpected {}", self.peer(), frame.as_str());
        }
    }
}

/// Proves "nothing else arrived": a marker sent after the action under test must be the next
/// frame of each observer. Both engines keep FIFO per topic, and a single Redis orders every
/// push to a node as it executed the publishes, so anything the action produced would come
/// before the marker.
pub struct Barrier<'a> {
    engine: &'a Arc<dyn Engine>,
    app: &'a str,
}

/// The peer that sends markers; it holds no connection.
pub const MARKER_PEER: &str = "marker";

impl<'a> Barrier<'a> {
    pub fn new(engine: &'a Arc<dyn Engine>) -> Self {
        Barrier { engine, app: APP }
    }

    pub fn in_app(engine: &'a Arc<dyn Engine>, app: &'a str) -> Self {
        Barrier { engine, app }
    }

    /// Publishes a marker on `name`; each of `observers` (subscribed to it) must receive it next.
    pub async fn on_channel(&self, name: &str, observers: &mut [&mut Client]) {
        let data = raw(r#""marker""#);
        self.engine
            .publish(Publication {
                app: &AppId::new(self.app),
                channel: &channel(name),
                from: &PeerId::new(MARKER_PEER),
                from_metadata: None,
                data: &data,
                exclude: None,
            })
            .await
            .unwrap();
        for observer in observers {
            observer
                .expect(message(name, MARKER_PEER, json!("marker")))
                .await;
        }
    }

    /// Sends a marker direct to `peer`; each of `observers` (its connections) must receive it
    /// next.
    pub async fn direct(&self, peer: &str, observers: &mut [&mut Client]) {
        let data = raw(r#""marker""#);
        let sent = self
            .engine
            .send_direct(Direct {
                app: &AppId::new(self.app),
                to: &PeerId::new(peer),
                from: &PeerId::new(MARKER_PEER),
                from_metadata: None,
                data: &data,
                exclude: None,
            })
            .await
            .unwrap();
        assert_eq!(sent, observers.len(), "the marker direct reached {sent}");
        for observer in observers {
            observer.expect(direct(MARKER_PEER, json!("marker"))).await;
        }
    }
}

/// Sorts presence arrays by peer, so rosters compare regardless of order.
fn normalized(mut frame: Value) -> Value {
    for key in ["joined", "left"] {
        if let Some(Value::Array(entries)) = frame.get_mut(key) {
            entries.sort_by(|a, b| a["peerId"].as_str().cmp(&b["peerId"].as_str()));
        }
    }
    frame
}

pub fn ack() -> Value {
    json!({"type": "ack", "requestId": "s"})
}

pub fn presence(name: &str, joined: Value, left: Value) -> Value {
    json!({"type": "presence", "channel": name, "joined": joined, "left": left})
}

pub fn joined(name: &str, entries: Value) -> Value {
    presence(name, entries, json!([]))
}

pub fn left(name: &str, entries: Value) -> Value {
    presence(name, json!([]), entries)
}

pub fn message(name: &str, from: &str, data: Value) -> Value {
    json!({"type": "message", "channel": name, "from": from, "data": data})
}

pub fn message_with_metadata(name: &str, from: &str, data: Value, metadata: Value) -> Value {
    let mut frame = message(name, from, data);
    frame["fromMetadata"] = metadata;
    frame
}

pub fn direct(from: &str, data: Value) -> Value {
    json!({"type": "direct", "from": from, "data": data})
}

/// One presence entry without metadata.
pub fn entry(peer: &str) -> Value {
    json!({"peerId": peer})
}

/// The roster of `name` in [`APP`] as node 0 reports it, as presence entries sorted by peer.
pub async fn members(nodes: &Nodes, name: &str) -> Value {
    members_in(&nodes.engine(), APP, name).await
}

pub async fn members_in(engine: &Arc<dyn Engine>, app: &str, name: &str) -> Value {
    let list = engine
        .channel_members(&AppId::new(app), &channel(name))
        .await
        .unwrap();
    let mut entries = serde_json::to_value(list).unwrap();
    if let Value::Array(entries) = &mut entries {
        entries.sort_by(|a, b| a["peerId"].as_str().cmp(&b["peerId"].as_str()));
    }
    entries
}
