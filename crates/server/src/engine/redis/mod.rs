//! The Redis engine: several Herald nodes form one service through Redis 7+ or Valkey, a
//! single server or a Redis Cluster.
//!
//! - **Fan-out.** A node subscribes to a channel's topic only while it has local subscribers.
//!   Every message, direct and presence delta reaches receivers through Redis, even on the
//!   sender's own node, and one listener per node delivers it in the order Redis saw it per
//!   topic, which keeps FIFO per sender → receiver. Each node encodes a client frame once for
//!   all its local receivers. In cluster mode channel and node topics use sharded pub/sub.
//! - **Presence.** It lives in Redis, reference-counted per (channel, peer) over node
//!   instances; each node counts its own connections. A subscribe runs one script on the
//!   channel's slot that joins and returns the roster with a sequence number; deltas that raced
//!   it are filtered by that number, so the snapshot is complete and no delta is lost or
//!   applied twice.
//! - **Crashes.** Every node instance renews a lease and keeps an index of the channels and
//!   routes it may hold, written before the state it points to. Any node claims an instance
//!   whose lease lapsed and cleans what its index lists, one channel script at a time, which
//!   publishes each `left` exactly once. A node that finds itself reaped (it was cut off, not
//!   dead) comes back as a new incarnation and announces its peers again.
//! - **Outages.** While Redis is down, local traffic keeps flowing, operations that need Redis
//!   answer `backend_error`, and `/readyz` says not ready. On reconnect the node re-subscribes
//!   and re-asserts its local presence and routes.
//!
//! Files by job: `node.rs` (the shared state), `presence.rs` (subscribe, leave, grace),
//! `publish.rs`, `routing.rs` (directs and kicks), `interest.rs` (wildcards), `lease.rs`
//! (lease, maintenance, reaping), `index.rs` (the instance index), `reassert.rs` (repair after
//! trouble), `local/` (the node-local hub and per-channel state), `bus.rs` + `inbox.rs` (pub/sub
//! in), `topics.rs` (what the node asks the bus for), `index_book.rs`, `occupancy.rs` (a channel's counts), `wire.rs` (events between nodes), `keys.rs` (every key and topic name), `scripts.rs`,
//! `store.rs` (the command connection).

mod bus;
mod history;
mod inbox;
mod index;
mod index_book;
mod interest;
mod keys;
mod lease;
mod local;
mod node;
mod occupancy;
mod presence;
mod publish;
mod reassert;
mod resume;
mod resume_lazy;
mod resume_scripts;
mod routing;
mod scripts;
pub mod slots;
mod store;
mod topics;
mod webhook_shards;
mod webhook_spec;
mod webhooks;
mod wire;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{stream, StreamExt};
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use self::node::{unavailable, Node};
use self::store::Store;
use super::hub::occupancy::OccupancyRules;
use super::{
    BusQueueStats, ChannelSummary, Departure, Direct, Engine, EngineError, EngineStats, Member,
    Occupancy, Publication, SubscribeRequest, Target,
};
use crate::close::CloseReason;
use crate::config::{Config, EngineConfig, HistoryConfig, PresenceConfig};
use crate::conn::Conn;
use crate::history::{HistoryRules, Page, PageQuery};
use crate::ids::{AppId, ChannelName, PeerId};
use crate::resume::book::{BookStats, Queued};
use crate::resume::{Recovery, ResumeFrom, ResumeSettings, Since};

/// How long a subscribe waits for its topic subscription to be confirmed.
const TOPIC_CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);
/// Scripts run concurrently during re-assertion, re-sync and reaping.
const BULK_CONCURRENCY: usize = 32;

/// How a Redis node treats presence beyond `[engine]`; [`RedisSettings::from_config`] is what a
/// node runs.
#[derive(Default)]
pub struct RedisSettings {
    /// The window presence deltas are coalesced over under load (`timing.presence_coalesce_ms`).
    pub coalesce: Duration,
    /// Roster caps of large rooms (`[presence]`).
    pub presence: PresenceConfig,
    /// Which channels keep history in Redis (`[[history.channels]]`; `store` and
    /// `max_memory_bytes` are the memory store's and do not apply).
    pub history: HistoryConfig,
    /// Lossless reconnect of stable peers, kept in Redis (`resume.rs`; off by default here,
    /// on in a node's config).
    pub resume: ResumeSettings,
    /// `webhooks.queue_max_bytes`: bounds each endpoint's outbox stream (0: the default).
    pub webhook_queue_bytes: usize,
}

impl RedisSettings {
    pub fn from_config(config: &Config) -> Self {
        RedisSettings {
            coalesce: Duration::from_millis(config.timing.presence_coalesce_ms),
            presence: config.presence.clone(),
            history: config.history.clone(),
            resume: ResumeSettings::from_config(
                &config.history,
                config.limits.outbound_queue_frames,
            ),
            webhook_queue_bytes: config.webhooks.queue_max_bytes,
        }
    }
}

/// The distributed engine.
pub struct RedisEngine {
    node: Arc<Node>,
    resume: Arc<resume::Resume>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Webhook readers and sweepers, started by `attach_webhooks`.
    webhook_tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in crate::sync::lock(&self.webhook_tasks).iter() {
            task.abort();
        }
    }
}

impl RedisEngine {
    /// Connects to Redis (waiting until it answers) and starts the node's background tasks:
    /// the bus (pub/sub in) and maintenance (lease, reaping, repair). Fails only on a
    /// malformed URL.
    pub async fn start(config: &EngineConfig) -> Result<RedisEngine, EngineError> {
        Self::start_with(config, &RedisSettings::default()).await
    }

    /// [`RedisEngine::start`] with the presence settings from beyond `[engine]` (roster caps,
    /// delta coalescing).
    pub async fn start_with(
        config: &EngineConfig,
        settings: &RedisSettings,
    ) -> Result<RedisEngine, EngineError> {
        let store = Store::connect(&config.redis_url, config.redis_cluster)
            .await
            .map_err(unavailable)?;
        let id = if config.node_id.is_empty() {
            format!("n{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
        } else {
            config.node_id.clone()
        };
        let (mut node, commands) = Node::new(id, config, settings.coalesce, store);
        node.local
            .set_occupancy(OccupancyRules::new(&settings.presence));
        node.history = Arc::new(HistoryRules::new(&settings.history));
        if settings.webhook_queue_bytes > 0 {
            node.webhook_queue_bytes = settings.webhook_queue_bytes;
        }
        let node = Arc::new(node);
        let bus_task = tokio::spawn(bus::run(
            node.clone(),
            config.redis_url.clone(),
            config.redis_cluster,
            commands,
        ));
        let maintenance_task = tokio::spawn(lease::maintenance(node.clone()));
        let resume = Arc::new(resume::Resume::new(settings.resume));
        let resume_task = tokio::spawn(resume.flush_task(node.clone()));
        tracing::info!(node = %node.id, cluster = config.redis_cluster, "redis engine started");
        Ok(RedisEngine {
            node,
            resume,
            tasks: vec![bus_task, maintenance_task, resume_task],
            webhook_tasks: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node.id
    }

    /// Removes one subscription, exact or wildcard.
    async fn unsubscribe_one(
        &self,
        conn: &Arc<Conn>,
        channel: &ChannelName,
        departure: Departure,
    ) -> bool {
        if herald_protocol::glob::has_wildcard(channel.as_str()) {
            self.node.unsubscribe_pattern(conn, channel).await
        } else {
            self.node
                .unsubscribe_channel(conn, channel, departure)
                .await
        }
    }
}

#[async_trait]
impl Engine for RedisEngine {
    /// A stable peer's held directs follow the welcome, in order (`resume.rs`).
    async fn register(&self, conn: &Arc<Conn>) -> Result<(), EngineError> {
        if self.resume.applies(conn) {
            self.resume.register(&self.node, conn).await;
        } else {
            self.node.register_connection(conn).await;
        }
        Ok(())
    }

    async fn disconnect(
        &self,
        conn: &Arc<Conn>,
        subscriptions: Vec<ChannelName>,
        departure: Departure,
    ) {
        for channel in &subscriptions {
            self.unsubscribe_one(conn, channel, departure).await;
        }
        if self.resume.was_parked(conn) {
            // `park` took the route back already.
            self.node.local.hub.peers.unregister(conn);
        } else {
            if self.resume.applies(conn) {
                self.resume.forget_lazy(&self.node, conn).await;
            }
            self.node.unregister_connection(conn).await;
        }
    }

    fn confirmed(&self, conn: &Arc<Conn>, positions: Vec<(ChannelName, Since)>) {
        self.resume.confirmed(conn, positions);
    }

    fn keeps_history(&self, channel: &ChannelName) -> bool {
        self.node.history_policy(channel.as_str()).is_some()
    }

    async fn positions(&self, app: &AppId, channels: &[ChannelName]) -> Vec<(ChannelName, Since)> {
        self.resume.positions(&self.node, app, channels).await
    }

    async fn park(&self, conn: &Arc<Conn>, positions: Vec<(ChannelName, Since)>) {
        if self.resume.applies(conn) {
            self.resume.park(&self.node, conn, positions).await;
        }
    }

    async fn take_position(
        &self,
        app: &AppId,
        peer: &PeerId,
        channel: &ChannelName,
    ) -> Option<Since> {
        self.resume.take(&self.node, app, peer, channel).await
    }

    async fn subscribe_from(
        &self,
        mut req: SubscribeRequest<'_>,
        from: ResumeFrom,
    ) -> Result<(bool, Recovery), EngineError> {
        self.node.require_bus()?;
        if let Target::Pattern(_) = req.target {
            // Patterns keep no position: an explicit resume of one recovers nothing.
            if let Some((_, failed)) = from.acks {
                req.ack = Some(failed);
            }
            return Ok((self.subscribe(req).await?, Recovery::Failed));
        }
        let (is_new, recovery) = self.node.subscribe_channel_from(req, Some(&from)).await?;
        Ok((is_new, recovery.unwrap_or(Recovery::Failed)))
    }

    async fn queue_direct(&self, direct: Direct<'_>) -> Result<Queued, EngineError> {
        self.resume.queue_direct(&self.node, direct).await
    }

    fn resume_stats(&self) -> BookStats {
        self.resume.stats()
    }

    async fn subscribe(&self, req: SubscribeRequest<'_>) -> Result<bool, EngineError> {
        self.node.require_bus()?;
        match req.target.clone() {
            Target::Pattern(pattern) => self.node.subscribe_pattern(req, pattern).await,
            Target::Channel => self.node.subscribe_channel(req).await,
        }
    }

    async fn unsubscribe(
        &self,
        conn: &Arc<Conn>,
        channel: &ChannelName,
    ) -> Result<bool, EngineError> {
        Ok(self.unsubscribe_one(conn, channel, Departure::Left).await)
    }

    async fn publish(&self, publication: Publication<'_>) -> Result<usize, EngineError> {
        self.node.publish(publication).await
    }

    async fn send_direct(&self, direct: Direct<'_>) -> Result<usize, EngineError> {
        self.node.send_direct(direct).await
    }

    async fn channel_members(
        &self,
        app: &AppId,
        channel: &ChannelName,
    ) -> Result<Vec<Member>, EngineError> {
        self.node.channel_members(app, channel).await
    }

    async fn occupancy(
        &self,
        app: &AppId,
        channel: &ChannelName,
    ) -> Result<Occupancy, EngineError> {
        self.node.occupancy(app, channel).await
    }

    async fn history(
        &self,
        app: &AppId,
        channel: &ChannelName,
        query: &PageQuery,
    ) -> Result<Option<Page>, EngineError> {
        let Some(policy) = self.node.history_policy(channel.as_str()) else {
            return Ok(None);
        };
        let base = self.node.keys.channel_base(app.as_str(), channel.as_str());
        self.node
            .history_page(&base, query, &policy)
            .await
            .map(Some)
            .map_err(unavailable)
    }

    async fn close_peer(
        &self,
        app: &AppId,
        peer: &PeerId,
        reason: CloseReason,
    ) -> Result<usize, EngineError> {
        self.node.close_peer(app, peer, reason).await
    }

    async fn shutdown(&self) {
        // Stop reading first, so no task takes a lease back after it was given up.
        for task in crate::sync::lock(&self.webhook_tasks).drain(..) {
            task.abort();
        }
        let released = webhooks::release_leases(&self.node).await;
        if released > 0 {
            tracing::info!(leases = released, "webhook delivery handed over");
        }
    }

    async fn is_ready(&self) -> bool {
        self.node.bus_up.load(Ordering::Acquire) && self.node.redis_ok.load(Ordering::Acquire)
    }

    fn stats(&self) -> EngineStats {
        let hub = &self.node.local.hub;
        EngineStats {
            channels: hub.channel_count(),
            subscriptions: hub.subscription_count(),
            bus_queue: BusQueueStats {
                history_repaired: self.node.history_repaired.load(Ordering::Relaxed),
                history_lost: self.node.history_lost.load(Ordering::Relaxed),
                ..self.node.inbox.stats()
            },
        }
    }

    fn local_channels(&self, app: &AppId) -> Vec<ChannelSummary> {
        self.node
            .local
            .hub
            .channel_summaries(app, |ch| ch.slot.hold_count())
    }

    fn attach_webhooks(&self, hooks: Arc<crate::webhooks::Webhooks>) {
        let node = &self.node;
        let cluster = node.store.is_cluster();
        if node
            .webhooks
            .set(webhook_spec::RedisWebhooks::new(
                &node.keys,
                hooks,
                node.webhook_queue_bytes,
                cluster,
            ))
            .is_err()
        {
            return;
        }
        let Some(w) = node.webhooks.get() else {
            return;
        };
        let mut tasks = crate::sync::lock(&self.webhook_tasks);
        let mut apps = std::collections::HashSet::new();
        for ep in w.endpoints() {
            let (n, e) = (node.clone(), ep.clone());
            tasks.push(match cluster {
                true => tokio::spawn(webhook_shards::run_endpoint(n, e)),
                false => tokio::spawn(webhooks::run_endpoint(n, e)),
            });
            if apps.insert(ep.app.clone()) {
                let (n, app) = (node.clone(), ep.app.clone());
                tasks.push(match cluster {
                    true => tokio::spawn(webhook_shards::run_sweeper(n, app)),
                    false => tokio::spawn(webhooks::run_sweeper(n, app)),
                });
            }
        }
        if cluster {
            // Sharded outboxes: dirty hints and re-registration (`webhook_shards.rs`).
            tasks.push(tokio::spawn(webhook_shards::run_marker(node.clone())));
        }
    }

    fn local_connections(
        &self,
        app: &AppId,
        peer: Option<&PeerId>,
    ) -> Vec<(Arc<Conn>, Vec<ChannelName>)> {
        self.node.local.hub.connection_summaries(app, peer)
    }
}

/// Sends a pipeline of ignored replies; an empty one is not sent. On a cluster, every command
/// of a pipeline must be in one slot.
async fn run_pipe(pipe: &redis::Pipeline, conn: &mut Store) -> redis::RedisResult<()> {
    if pipe.cmd_iter().next().is_none() {
        return Ok(());
    }
    pipe.query_async::<()>(conn).await
}

/// Runs futures with at most `BULK_CONCURRENCY` in flight (they share the multiplexed
/// connection, so this pipelines their commands).
async fn run_bounded<F: std::future::Future>(calls: Vec<F>) -> Vec<F::Output> {
    stream::iter(calls)
        .buffer_unordered(BULK_CONCURRENCY)
        .collect()
        .await
}

async fn await_confirm(confirm: oneshot::Receiver<bool>) -> Result<(), EngineError> {
    match tokio::time::timeout(TOPIC_CONFIRM_TIMEOUT, confirm).await {
        Ok(Ok(true)) => Ok(()),
        _ => Err(EngineError::Unavailable(
            "topic subscription not confirmed".into(),
        )),
    }
}

/// Parses metadata text stored in Redis (`""` = none).
fn stored_metadata(text: &str) -> Option<Arc<RawValue>> {
    if text.is_empty() {
        return None;
    }
    RawValue::from_string(text.to_string()).ok().map(Arc::from)
}
