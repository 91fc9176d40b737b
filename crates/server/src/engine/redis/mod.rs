//! The Redis engine: several Herald nodes form one service through Redis 7+ or Valkey.
//!
//! - **Fan-out.** A node subscribes to a channel's topic only while it has local subscribers.
//!   Every message, direct and presence delta reaches receivers through Redis, even on the
//!   sender's own node. One pub/sub connection per node then delivers everything in the order
//!   Redis saw it, which keeps FIFO per sender → receiver across frame types, as on one node.
//!   Each node encodes a client frame once for all its local receivers.
//! - **Presence.** It lives in Redis, reference-counted per (channel, peer) over nodes; each node
//!   counts its own connections. A subscribe runs one script that joins and returns the roster
//!   with a sequence number; deltas that raced it are filtered by that number, so the snapshot
//!   is complete and no delta is lost or applied twice.
//! - **Crashes.** Every node renews a lease. Any node reaps a node whose lease lapsed: one
//!   script removes its holds and publishes each `left` exactly once.
//! - **Outages.** While Redis is down, local traffic keeps flowing, operations that need Redis
//!   answer `backend_error`, and `/readyz` says not ready. On reconnect the node re-subscribes
//!   and re-asserts its local presence and routes in one script.
//!
//! See `scripts.rs` for the key layout.

mod bus;
mod local;
mod scripts;
mod wire;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::encode;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, Notify};

use self::bus::{BusCommand, Topics};
use self::local::{Local, SubscribeStart};
use self::scripts::Scripts;
use self::wire::Event;
use super::{
    ChannelSummary, Departure, Direct, Engine, EngineError, EngineStats, Member, Publication,
    SubscribeRequest, Target,
};
use crate::config::EngineConfig;
use crate::conn::{CloseReason, Conn, Frame};
use crate::ids::{AppId, ChannelName, PeerId};

/// How long a subscribe waits for its topic subscription to be confirmed.
const TOPIC_CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);
/// Redis commands fail after this, so a dead Redis turns into `backend_error` quickly.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Channel key used in Redis: `<app>:<channel>` (app ids contain no `:`).
fn channel_key(app: &str, channel: &str) -> String {
    format!("{app}:{channel}")
}

fn unavailable(err: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(err.to_string())
}

/// Shared between the engine handle, the bus task, the maintenance task and grace timers.
pub(crate) struct Inner {
    node: String,
    prefix: String,
    lease_ms: u64,
    grace: Duration,
    redis: ConnectionManager,
    scripts: Scripts,
    pub(crate) local: Local,
    topics: Topics,
    bus: mpsc::UnboundedSender<BusCommand>,
    /// The pub/sub connection is up and subscribed.
    bus_up: AtomicBool,
    /// The last maintenance round reached Redis.
    redis_ok: AtomicBool,
    /// Redis and local state may disagree (an op failed, the bus reconnected, the lease
    /// lapsed): the maintenance task re-asserts.
    needs_reassert: AtomicBool,
    wake_maintenance: Notify,
    /// When the maintenance task re-syncs local rosters with Redis (from, until). Set on every
    /// bus reconnect: deltas published while this node was not listening are lost. It starts
    /// after a settling delay, so the other nodes have re-asserted their presence too and a
    /// half-rebuilt roster never shows up as peers leaving.
    resync_window: std::sync::Mutex<Option<(std::time::Instant, std::time::Instant)>>,
    /// Presence holds whose `left` could not be recorded while Redis was down.
    departed: std::sync::Mutex<Vec<(String, String)>>,
    subscriptions: AtomicUsize,
}

/// The distributed engine. Cloning shares the node.
pub struct RedisEngine {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl RedisEngine {
    /// Connects to Redis and starts the node's background tasks. Fails only on a malformed URL;
    /// an unreachable Redis just makes the node not ready until it comes up.
    pub async fn start(config: &EngineConfig) -> Result<RedisEngine, EngineError> {
        let client = redis::Client::open(config.redis_url.as_str()).map_err(unavailable)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let redis = connect_manager(client.clone(), manager_config).await;
        let node = if config.node_id.is_empty() {
            format!("n{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
        } else {
            config.node_id.clone()
        };
        let (bus_tx, bus_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            topics: Topics::new(&config.key_prefix, &node),
            node,
            prefix: config.key_prefix.clone(),
            lease_ms: config.lease_ttl_ms,
            grace: Duration::from_millis(config.reconnect_grace_ms),
            redis,
            scripts: Scripts::new(),
            local: Local::default(),
            bus: bus_tx,
            bus_up: AtomicBool::new(false),
            redis_ok: AtomicBool::new(false),
            needs_reassert: AtomicBool::new(true),
            wake_maintenance: Notify::new(),
            departed: std::sync::Mutex::new(Vec::new()),
            resync_window: std::sync::Mutex::new(None),
            subscriptions: AtomicUsize::new(0),
        });
        let bus_task = tokio::spawn(bus::run(inner.clone(), client, bus_rx));
        let maintenance_task = tokio::spawn(maintenance(inner.clone()));
        tracing::info!(node = %inner.node, "redis engine started");
        Ok(RedisEngine {
            inner,
            tasks: vec![bus_task, maintenance_task],
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node
    }
}

/// A `ConnectionManager` that waits for Redis to come up (it reconnects by itself afterwards).
async fn connect_manager(
    client: redis::Client,
    config: ConnectionManagerConfig,
) -> ConnectionManager {
    let mut delay = Duration::from_millis(100);
    loop {
        match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
            Ok(manager) => return manager,
            Err(err) => {
                tracing::warn!(error = %err, "redis not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// How often a node renews its lease, reaps, re-asserts and re-syncs.
fn maintenance_period(lease_ms: u64) -> Duration {
    Duration::from_millis((lease_ms / 4).clamp(250, 2_000))
}

/// Lease renewal, reaping of dead nodes, and re-assertion after trouble.
async fn maintenance(inner: Arc<Inner>) {
    let period = maintenance_period(inner.lease_ms);
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = inner.wake_maintenance.notified() => {}
        }
        let ok = inner.maintain().await;
        inner.redis_ok.store(ok, Ordering::Release);
    }
}

impl Inner {
    fn conn(&self) -> ConnectionManager {
        self.redis.clone()
    }

    fn mark_trouble(&self) {
        self.needs_reassert.store(true, Ordering::Release);
    }

    async fn maintain(&self) -> bool {
        let mut redis = self.conn();
        let renewed: Result<i64, _> = self
            .scripts
            .renew
            .arg(&self.prefix)
            .arg(&self.node)
            .arg(self.lease_ms)
            .invoke_async(&mut redis)
            .await;
        match renewed {
            Ok(0) => self.mark_trouble(),
            Ok(_) => {}
            Err(err) => {
                tracing::debug!(error = %err, "lease renewal failed");
                self.mark_trouble();
                return false;
            }
        }
        if self.bus_up.load(Ordering::Acquire) && self.needs_reassert.swap(false, Ordering::AcqRel)
        {
            if let Err(err) = self.reassert().await {
                tracing::warn!(error = %err, "re-assert failed; will retry");
                self.mark_trouble();
                return false;
            }
            tracing::info!(node = %self.node, "local presence and routes re-asserted");
        }
        let now = std::time::Instant::now();
        let resyncing = crate::sync::lock(&self.resync_window)
            .is_some_and(|(from, until)| from <= now && now < until);
        if resyncing
            && self.bus_up.load(Ordering::Acquire)
            && !self.needs_reassert.load(Ordering::Acquire)
        {
            if let Err(err) = self.resync().await {
                tracing::debug!(error = %err, "roster re-sync failed");
                return false;
            }
        }
        let reaped: Result<Vec<String>, _> = self
            .scripts
            .reap
            .arg(&self.prefix)
            .arg(&self.node)
            .invoke_async(&mut redis)
            .await;
        match reaped {
            Ok(nodes) => {
                for node in nodes {
                    tracing::warn!(dead = %node, "reaped a node whose lease expired");
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Rewrites this node's holds, subscriber counts and routes from local state.
    async fn reassert(&self) -> redis::RedisResult<()> {
        let snapshot = self.local.snapshot_for_reassert();
        let departed: Vec<(String, String)> =
            std::mem::take(&mut *crate::sync::lock(&self.departed));
        let mut inv = self.scripts.reassert.prepare_invoke();
        inv.arg(&self.prefix).arg(&self.node).arg(self.lease_ms);
        inv.arg(snapshot.holds.len());
        for (ck, peer, meta) in &snapshot.holds {
            inv.arg(ck).arg(peer).arg(meta);
        }
        inv.arg(snapshot.subscribers.len());
        for (ck, n) in &snapshot.subscribers {
            inv.arg(ck).arg(*n);
        }
        inv.arg(snapshot.routes.len());
        for (pk, n) in &snapshot.routes {
            inv.arg(pk).arg(*n);
        }
        inv.arg(departed.len());
        for (ck, peer) in &departed {
            inv.arg(ck).arg(peer);
        }
        let result: redis::RedisResult<i64> = inv.invoke_async(&mut self.conn()).await;
        if result.is_err() {
            crate::sync::lock(&self.departed).extend(departed);
        }
        result.map(|_| ())
    }

    /// Starts the re-sync window after the bus (re)connected.
    pub(crate) fn bus_connected(&self) {
        self.local.reset_sequences();
        let settle = 2 * maintenance_period(self.lease_ms);
        let from = std::time::Instant::now() + settle;
        let until = from + Duration::from_millis(self.lease_ms.max(5_000) * 3);
        *crate::sync::lock(&self.resync_window) = Some((from, until));
        self.mark_trouble();
        self.wake_maintenance.notify_one();
    }

    /// Reads every locally subscribed channel's roster (with its sequence number, atomically)
    /// and lets local subscribers catch up on what they missed.
    async fn resync(&self) -> redis::RedisResult<()> {
        let keys = self.local.subscribed_channels();
        if keys.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (app, channel) in &keys {
            let ck = channel_key(app.as_str(), channel.as_str());
            pipe.cmd("HGETALL").arg(format!("{}meta:{ck}", self.prefix));
            pipe.cmd("GET").arg(format!("{}seq:{ck}", self.prefix));
        }
        let replies: Vec<redis::Value> = pipe.query_async(&mut self.conn()).await?;
        for (key, pair) in keys.iter().zip(replies.chunks_exact(2)) {
            let roster: Vec<String> = redis::from_redis_value(pair[0].clone())?;
            let seq: Option<u64> = redis::from_redis_value(pair[1].clone())?;
            self.local.resync(key, &roster, seq.unwrap_or(0));
        }
        Ok(())
    }

    fn require_bus(&self) -> Result<(), EngineError> {
        if self.bus_up.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(EngineError::Unavailable("redis pub/sub is down".into()))
        }
    }

    async fn join(
        &self,
        ck: &str,
        conn: &Conn,
        subscriber_delta: i64,
    ) -> redis::RedisResult<(i64, u64, Vec<String>)> {
        let meta = conn.peer_metadata.as_ref().map_or("", |m| m.get());
        self.scripts
            .join
            .arg(&self.prefix)
            .arg(ck)
            .arg(conn.peer_id.as_str())
            .arg(meta)
            .arg(&self.node)
            .arg(subscriber_delta)
            .invoke_async(&mut self.conn())
            .await
    }

    /// Drops this node's hold of (channel, peer), then re-checks: if the peer subscribed again
    /// locally while the script ran, its hold is restored.
    async fn leave(self: &Arc<Self>, app: &AppId, channel: &ChannelName, peer: &PeerId) {
        let ck = channel_key(app.as_str(), channel.as_str());
        let result: redis::RedisResult<i64> = self
            .scripts
            .leave
            .arg(&self.prefix)
            .arg(&ck)
            .arg(peer.as_str())
            .arg(&self.node)
            .invoke_async(&mut self.conn())
            .await;
        if result.is_err() {
            crate::sync::lock(&self.departed).push((ck, peer.as_str().to_string()));
            self.mark_trouble();
            return;
        }
        if let Some(conn) = self.local.any_holder(app, channel, peer) {
            if self.join(&ck, &conn, 0).await.is_err() {
                self.mark_trouble();
            }
        }
    }

    /// Removes one local subscription and settles its presence hold.
    async fn remove_subscription(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        channel: &ChannelName,
        departure: Departure,
    ) -> bool {
        let Some(outcome) = self.local.remove(
            conn,
            channel,
            &self.bus,
            &self.topics,
            departure,
            self.grace,
        ) else {
            return false;
        };
        self.subscriptions.fetch_sub(1, Ordering::Relaxed);
        let ck = channel_key(conn.app.as_str(), channel.as_str());
        let adjusted: redis::RedisResult<i64> = redis::cmd("HINCRBY")
            .arg(format!("{}subs:{ck}", self.prefix))
            .arg(&self.node)
            .arg(-1)
            .query_async(&mut self.conn())
            .await;
        if adjusted.is_err() {
            self.mark_trouble();
        }
        match outcome {
            local::Removal::Kept => {}
            local::Removal::LeaveNow => self.leave(&conn.app, channel, &conn.peer_id).await,
            local::Removal::LeaveAfterGrace(generation) => {
                let inner = self.clone();
                let (app, channel, peer) =
                    (conn.app.clone(), channel.clone(), conn.peer_id.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(inner.grace).await;
                    if inner.local.grace_expired(
                        &app,
                        &channel,
                        &peer,
                        generation,
                        &inner.bus,
                        &inner.topics,
                    ) {
                        inner.leave(&app, &channel, &peer).await;
                    }
                });
            }
        }
        true
    }

    async fn route(&self, pk: &str, payload: &str, self_send: bool) -> redis::RedisResult<usize> {
        self.scripts
            .route
            .arg(&self.prefix)
            .arg(pk)
            .arg(payload)
            .arg(&self.node)
            .arg(if self_send { "1" } else { "0" })
            .invoke_async(&mut self.conn())
            .await
    }

    /// Counts a connection of its peer on this node in the direct-routing table (`delta` is +1
    /// or -1). Local traffic keeps working without Redis; a failed update is repaired by the
    /// next re-assert.
    async fn adjust_route(&self, conn: &Conn, delta: i64) {
        let pk = channel_key(conn.app.as_str(), conn.peer_id.as_str());
        let result: redis::RedisResult<i64> = self
            .scripts
            .peer_add
            .arg(&self.prefix)
            .arg(pk)
            .arg(&self.node)
            .arg(delta)
            .invoke_async(&mut self.conn())
            .await;
        if result.is_err() {
            self.mark_trouble();
        }
    }

    fn exclusion(&self, conn: Option<&Conn>) -> Option<String> {
        conn.map(|c| format!("{}/{}", self.node, c.id.0))
    }
}

#[async_trait]
impl Engine for RedisEngine {
    async fn register(&self, conn: &Arc<Conn>) -> Result<(), EngineError> {
        let inner = &self.inner;
        inner.local.register(conn);
        inner.adjust_route(conn, 1).await;
        Ok(())
    }

    async fn disconnect(
        &self,
        conn: &Arc<Conn>,
        subscriptions: Vec<ChannelName>,
        departure: Departure,
    ) {
        let inner = &self.inner;
        for channel in &subscriptions {
            inner.remove_subscription(conn, channel, departure).await;
        }
        inner.local.unregister(conn);
        inner.adjust_route(conn, -1).await;
    }

    async fn subscribe(&self, req: SubscribeRequest<'_>) -> Result<bool, EngineError> {
        let inner = &self.inner;
        inner.require_bus()?;
        let conn = req.conn;
        if let Target::Pattern(pattern) = req.target {
            let (is_new, confirm) = inner.local.add_pattern(
                conn,
                req.channel,
                pattern,
                req.include_sender_metadata,
                &inner.bus,
                &inner.topics,
            );
            if let Some(confirm) = confirm {
                await_confirm(confirm).await?;
            }
            if let Some(ack) = req.ack {
                conn.deliver(ack);
            }
            if conn.receives_presence {
                conn.deliver(Frame::from(encode::presence(
                    req.channel.as_str(),
                    &[],
                    &[],
                )));
            }
            if is_new {
                inner.subscriptions.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(is_new);
        }
        let SubscribeStart { duplicate, confirm } = inner.local.begin_subscribe(
            conn,
            req.channel,
            req.include_sender_metadata,
            &inner.bus,
            &inner.topics,
        );
        if let Some(confirm) = confirm {
            if let Err(err) = await_confirm(confirm).await {
                inner.local.abort_subscribe(
                    conn,
                    req.channel,
                    duplicate,
                    &inner.bus,
                    &inner.topics,
                );
                return Err(err);
            }
        }
        let ck = channel_key(conn.app.as_str(), req.channel.as_str());
        let (_, seq, roster) = match inner.join(&ck, conn, if duplicate { 0 } else { 1 }).await {
            Ok(result) => result,
            Err(err) => {
                inner.local.abort_subscribe(
                    conn,
                    req.channel,
                    duplicate,
                    &inner.bus,
                    &inner.topics,
                );
                inner.mark_trouble();
                return Err(unavailable(err));
            }
        };
        inner
            .local
            .finish_subscribe(conn, req.channel, duplicate, req.ack, seq, &roster);
        if !duplicate {
            inner.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(!duplicate)
    }

    async fn unsubscribe(
        &self,
        conn: &Arc<Conn>,
        channel: &ChannelName,
    ) -> Result<bool, EngineError> {
        if herald_protocol::glob::has_wildcard(channel.as_str()) {
            let removed =
                self.inner
                    .local
                    .remove_pattern(conn, channel, &self.inner.bus, &self.inner.topics);
            if removed {
                self.inner.subscriptions.fetch_sub(1, Ordering::Relaxed);
            }
            return Ok(removed);
        }
        Ok(self
            .inner
            .remove_subscription(conn, channel, Departure::Left)
            .await)
    }

    async fn publish(&self, p: Publication<'_>) -> Result<usize, EngineError> {
        let inner = &self.inner;
        let mut event = Event::new("m");
        event.f = Some(p.from.as_str().into());
        event.m = p.from_metadata;
        event.d = Some(p.data);
        let exclusion = inner.exclusion(p.exclude);
        event.x = exclusion.as_deref().map(Into::into);
        let payload = event.to_json();
        let ck = channel_key(p.app.as_str(), p.channel.as_str());
        let publisher_subscribed = p
            .exclude
            .is_some_and(|c| inner.local.is_subscribed(c, p.channel));
        let result: redis::RedisResult<usize> = inner
            .scripts
            .publish
            .arg(&inner.prefix)
            .arg(&ck)
            .arg(&payload)
            .arg(usize::from(publisher_subscribed))
            .invoke_async(&mut inner.conn())
            .await;
        match result {
            Ok(n) => Ok(n),
            Err(err) => {
                // Local subscribers still get it; the caller learns remote delivery failed.
                inner
                    .local
                    .deliver_message(p.app, p.channel, &event, p.exclude.map(|c| c.id));
                inner.mark_trouble();
                Err(unavailable(err))
            }
        }
    }

    async fn send_direct(&self, d: Direct<'_>) -> Result<usize, EngineError> {
        let inner = &self.inner;
        let mut event = Event::new("d");
        event.a = Some(d.app.as_str().into());
        event.t = Some(d.to.as_str().into());
        event.f = Some(d.from.as_str().into());
        event.m = d.from_metadata;
        event.d = Some(d.data);
        let exclusion = inner.exclusion(d.exclude);
        event.x = exclusion.as_deref().map(Into::into);
        let payload = event.to_json();
        let pk = channel_key(d.app.as_str(), d.to.as_str());
        let self_send = d.exclude.is_some() && d.from == d.to;
        match inner.route(&pk, &payload, self_send).await {
            Ok(n) => Ok(n),
            Err(err) => {
                inner.mark_trouble();
                let local = inner.local.deliver_direct(&event, d.exclude.map(|c| c.id));
                if local > 0 {
                    Ok(local)
                } else {
                    Err(unavailable(err))
                }
            }
        }
    }

    async fn channel_members(
        &self,
        app: &AppId,
        channel: &ChannelName,
    ) -> Result<Vec<Member>, EngineError> {
        let inner = &self.inner;
        let key = format!(
            "{}meta:{}",
            inner.prefix,
            channel_key(app.as_str(), channel.as_str())
        );
        let flat: Vec<String> = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut inner.conn())
            .await
            .map_err(unavailable)?;
        Ok(local::roster_from_flat(&flat, None))
    }

    async fn close_peer(
        &self,
        app: &AppId,
        peer: &PeerId,
        reason: CloseReason,
    ) -> Result<usize, EngineError> {
        let inner = &self.inner;
        let mut event = Event::new("x");
        event.a = Some(app.as_str().into());
        event.p = Some(peer.as_str().into());
        event.c = Some(reason.code.as_u16());
        let pk = channel_key(app.as_str(), peer.as_str());
        match inner.route(&pk, &event.to_json(), false).await {
            Ok(n) => Ok(n),
            Err(err) => {
                inner.local.close_peer(app, peer, reason);
                inner.mark_trouble();
                Err(unavailable(err))
            }
        }
    }

    async fn is_ready(&self) -> bool {
        self.inner.bus_up.load(Ordering::Acquire) && self.inner.redis_ok.load(Ordering::Acquire)
    }

    fn stats(&self) -> EngineStats {
        EngineStats {
            channels: self.inner.local.channel_count(),
            subscriptions: self.inner.subscriptions.load(Ordering::Relaxed),
        }
    }

    fn local_channels(&self, app: &AppId) -> Vec<ChannelSummary> {
        self.inner.local.channels(app)
    }

    fn local_connections(
        &self,
        app: &AppId,
        peer: Option<&PeerId>,
    ) -> Vec<(Arc<Conn>, Vec<ChannelName>)> {
        self.inner.local.connections(app, peer)
    }
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
