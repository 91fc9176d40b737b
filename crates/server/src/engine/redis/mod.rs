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
//! See `keys.rs` for the key layout and `scripts.rs` for the scripts.

mod bus;
mod inbox;
mod keys;
mod local;
mod scripts;
mod store;
mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{stream, StreamExt};
use herald_protocol::encode;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, Notify};

use self::bus::BusCommand;
use self::inbox::Inbox;
use self::keys::Keys;
use self::local::{Local, SubscribeStart};
use self::scripts::Scripts;
use self::store::Store;
use self::wire::Event;
use super::{
    ChannelSummary, Departure, Direct, Engine, EngineError, EngineStats, Member, Publication,
    SubscribeRequest, Target,
};
use crate::close::CloseReason;
use crate::config::EngineConfig;
use crate::conn::{Conn, Frame};
use crate::ids::{AppId, ChannelName, PeerId};
use crate::sync::lock;

/// How long a subscribe waits for its topic subscription to be confirmed.
const TOPIC_CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);
/// Index entries are pruned every this many maintenance rounds.
const PRUNE_EVERY: u64 = 4;
/// Scripts run concurrently during re-assertion, re-sync and reaping.
const BULK_CONCURRENCY: usize = 32;

fn unavailable(err: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(err.to_string())
}

/// A new instance id for this node: `<node>#<incarnation>`.
fn new_instance(node: &str) -> String {
    format!("{node}#{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Which index entries this node has written, and which are in use by an operation in flight.
/// An entry is pruned only when it is neither in use nor backing local state.
#[derive(Default)]
struct IndexState {
    written: HashSet<String>,
    busy: HashMap<String, u32>,
}

/// Keeps an index entry in use for as long as it lives.
struct InUse<'a> {
    inner: &'a Inner,
    base: String,
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        let mut index = lock(&self.inner.index);
        if let Some(n) = index.busy.get_mut(&self.base) {
            *n -= 1;
            if *n == 0 {
                index.busy.remove(&self.base);
            }
        }
    }
}

/// Shared between the engine handle, the bus task, the maintenance task and grace timers.
pub(crate) struct Inner {
    node: String,
    /// This node's current instance id; it changes when the node finds itself reaped.
    instance: Mutex<String>,
    keys: Keys,
    lease_ms: u64,
    grace: Duration,
    store: Store,
    scripts: Scripts,
    pub(crate) local: Local,
    /// Subscribe and unsubscribe requests for the bus task. Not bounded by a number, but by
    /// who sends: a session has one engine operation in flight at a time, and each sends at
    /// most two commands (the topic and a barrier), as does each reconnect-grace timer; so the
    /// queue holds at most about two commands per connection and running timer.
    bus: mpsc::UnboundedSender<BusCommand>,
    /// Pushes from Redis waiting for the bus task, bounded (`engine.bus_queue_*`).
    inbox: Arc<Inbox>,
    /// The pub/sub listener is up and subscribed.
    bus_up: AtomicBool,
    /// The last maintenance round reached Redis.
    redis_ok: AtomicBool,
    /// Redis and local state may disagree (an op failed, the bus reconnected, the lease
    /// lapsed): the maintenance task re-asserts.
    needs_reassert: AtomicBool,
    /// The next re-assert announces this node's peers (others saw them leave).
    announce: AtomicBool,
    wake_maintenance: Notify,
    /// When the maintenance task re-syncs local rosters with Redis (from, until). Set on every
    /// bus reconnect: deltas published while this node was not listening are lost. It starts
    /// after a settling delay, so the other nodes have re-asserted their presence too and a
    /// half-rebuilt roster never shows up as peers leaving.
    resync_window: Mutex<Option<(std::time::Instant, std::time::Instant)>>,
    /// Presence holds (channel base, peer) whose `left` could not be recorded while Redis was
    /// down.
    departed: Mutex<Vec<(String, String)>>,
    index: Mutex<IndexState>,
    /// Cluster mode: apps with wildcard subscribers anywhere, whose messages also go to the
    /// app's classic topic.
    pattern_apps: Mutex<HashSet<String>>,
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
    /// Connects to Redis (waiting until it answers) and starts the node's background tasks.
    /// Fails only on a malformed URL.
    pub async fn start(config: &EngineConfig) -> Result<RedisEngine, EngineError> {
        let store = Store::connect(&config.redis_url, config.redis_cluster)
            .await
            .map_err(unavailable)?;
        let node = if config.node_id.is_empty() {
            format!("n{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
        } else {
            config.node_id.clone()
        };
        let (bus_tx, bus_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            keys: Keys::new(&config.key_prefix, &node),
            instance: Mutex::new(new_instance(&node)),
            node,
            lease_ms: config.lease_ttl_ms,
            grace: Duration::from_millis(config.reconnect_grace_ms),
            store,
            scripts: Scripts::new(),
            local: Local::default(),
            bus: bus_tx,
            inbox: Arc::new(Inbox::new(
                config.bus_queue_messages,
                config.bus_queue_bytes,
            )),
            bus_up: AtomicBool::new(false),
            redis_ok: AtomicBool::new(false),
            needs_reassert: AtomicBool::new(true),
            announce: AtomicBool::new(false),
            wake_maintenance: Notify::new(),
            departed: Mutex::new(Vec::new()),
            resync_window: Mutex::new(None),
            index: Mutex::new(IndexState::default()),
            pattern_apps: Mutex::new(HashSet::new()),
            subscriptions: AtomicUsize::new(0),
        });
        let bus_task = tokio::spawn(bus::run(
            inner.clone(),
            config.redis_url.clone(),
            config.redis_cluster,
            bus_rx,
        ));
        let maintenance_task = tokio::spawn(maintenance(inner.clone()));
        tracing::info!(node = %inner.node, cluster = config.redis_cluster, "redis engine started");
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

/// How often a node renews its lease, reaps, re-asserts and re-syncs.
fn maintenance_period(lease_ms: u64) -> Duration {
    Duration::from_millis((lease_ms / 4).clamp(250, 2_000))
}

/// Successful lease renewals without a gap. A node reaps others only once its streak is a
/// whole lease long: leases lapse during a Redis outage or failover even on live nodes, and
/// they must get the chance to renew before anyone declares them dead.
#[derive(Default)]
struct RenewalStreak {
    /// (first, last) renewal of the current streak.
    span: Option<(std::time::Instant, std::time::Instant)>,
}

impl RenewalStreak {
    /// Records a successful renewal; a gap of more than `max_gap` since the last one (a
    /// renewal that hung in a failover and then succeeded, a stalled round) starts a new
    /// streak. Returns the streak's length.
    fn renewed(&mut self, max_gap: Duration) -> Duration {
        let now = std::time::Instant::now();
        let first = match self.span {
            Some((first, last)) if now - last <= max_gap => first,
            _ => now,
        };
        self.span = Some((first, now));
        now - first
    }

    fn broken(&mut self) {
        self.span = None;
    }
}

/// Lease renewal, reaping of dead nodes, re-assertion after trouble, index pruning.
async fn maintenance(inner: Arc<Inner>) {
    let period = maintenance_period(inner.lease_ms);
    let mut tick = tokio::time::interval(period);
    let mut round: u64 = 0;
    let mut streak = RenewalStreak::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = inner.wake_maintenance.notified() => {}
        }
        round += 1;
        let mut ok = inner.maintain(&mut streak).await;
        if ok && round.is_multiple_of(PRUNE_EVERY) {
            ok = inner.prune_index().await.is_ok();
        }
        inner.redis_ok.store(ok, Ordering::Release);
    }
}

impl Inner {
    fn conn(&self) -> Store {
        self.store.clone()
    }

    fn instance(&self) -> String {
        lock(&self.instance).clone()
    }

    fn publish_command(&self) -> &'static str {
        self.store.publish_command()
    }

    fn mark_trouble(&self) {
        self.needs_reassert.store(true, Ordering::Release);
    }

    /// Marks an index entry in use for the guard's lifetime; true when it is known written.
    fn use_entry(&self, base: &str) -> (InUse<'_>, bool) {
        let mut index = lock(&self.index);
        *index.busy.entry(base.to_string()).or_default() += 1;
        let written = index.written.contains(base);
        (
            InUse {
                inner: self,
                base: base.to_string(),
            },
            written,
        )
    }

    /// Writes the index entry that lets a reaper find `base`, before anything is held there.
    async fn ensure_indexed(&self, base: &str, written: bool) -> redis::RedisResult<()> {
        if written {
            return Ok(());
        }
        let instance = self.instance();
        let _: i64 = redis::cmd("HINCRBY")
            .arg(self.keys.index_key(&instance))
            .arg(base)
            .arg(1)
            .query_async(&mut self.conn())
            .await?;
        if *lock(&self.instance) == instance {
            lock(&self.index).written.insert(base.to_string());
        }
        Ok(())
    }

    /// Takes this node to a new instance id: the old one was reaped, so its state is gone and
    /// its peers were announced gone; the re-assert that follows announces them again.
    fn reincarnate(&self) {
        let fresh = new_instance(&self.node);
        tracing::warn!(node = %self.node, instance = %fresh, "this node was reaped; re-incarnating");
        *lock(&self.instance) = fresh;
        lock(&self.index).written.clear();
        // Sequence numbers may restart as the channels are rebuilt.
        self.local.reset_sequences();
        self.announce.store(true, Ordering::Release);
        self.mark_trouble();
    }

    async fn renew(&self) -> redis::RedisResult<i64> {
        self.scripts
            .renew
            .key(self.keys.cluster_base())
            .arg(self.instance())
            .arg(self.lease_ms)
            .invoke_async(&mut self.conn())
            .await
    }

    async fn maintain(&self, streak: &mut RenewalStreak) -> bool {
        let renewed = match self.renew().await {
            Ok(-1) => {
                self.reincarnate();
                self.renew().await
            }
            other => other,
        };
        match renewed {
            Ok(1) => {}
            Ok(_) => self.mark_trouble(),
            Err(err) => {
                tracing::debug!(error = %err, "lease renewal failed");
                streak.broken();
                self.mark_trouble();
                return false;
            }
        }
        let renewing_for = streak.renewed(2 * maintenance_period(self.lease_ms));
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
        let resyncing =
            lock(&self.resync_window).is_some_and(|(from, until)| from <= now && now < until);
        if resyncing
            && self.bus_up.load(Ordering::Acquire)
            && !self.needs_reassert.load(Ordering::Acquire)
        {
            if let Err(err) = self.resync().await {
                tracing::debug!(error = %err, "roster re-sync failed");
                return false;
            }
        }
        if self.store.is_cluster() {
            if let Err(err) = self.refresh_pattern_apps().await {
                tracing::debug!(error = %err, "wildcard interest refresh failed");
                return false;
            }
        }
        if renewing_for < Duration::from_millis(self.lease_ms) {
            return true;
        }
        match self.reap().await {
            Ok(()) => true,
            Err(err) => {
                tracing::debug!(error = %err, "reaping failed");
                false
            }
        }
    }

    /// Claims instances whose lease lapsed and cleans what their indexes list.
    async fn reap(&self) -> redis::RedisResult<()> {
        let linger = self.lease_ms.max(5_000) * 2;
        let claimed: Vec<String> = self
            .scripts
            .claim_dead
            .key(self.keys.cluster_base())
            .arg(self.instance())
            .arg(linger)
            .invoke_async(&mut self.conn())
            .await?;
        let Some((now, dead)) = claimed.split_first() else {
            return Ok(());
        };
        for instance in dead {
            self.reap_instance(instance).await?;
        }
        if !dead.is_empty() {
            // Instances whose linger is over, each cleaned at least once just now.
            let _: i64 = redis::cmd("ZREMRANGEBYSCORE")
                .arg(format!("{}:reaping", self.keys.cluster_base()))
                .arg("-inf")
                .arg(now)
                .query_async(&mut self.conn())
                .await?;
        }
        Ok(())
    }

    async fn reap_instance(&self, instance: &str) -> redis::RedisResult<()> {
        let index_key = self.keys.index_key(instance);
        let entries: Vec<String> = redis::cmd("HKEYS")
            .arg(&index_key)
            .query_async(&mut self.conn())
            .await?;
        let mut left = 0;
        let calls: Vec<_> = entries
            .into_iter()
            .map(|base| {
                let index_key = index_key.clone();
                async move {
                    let mut conn = self.conn();
                    let n: i64 = if self.keys.is_channel_base(&base) {
                        self.scripts
                            .reap_channel
                            .key(&base)
                            .arg(self.publish_command())
                            .arg(self.keys.topic_of_base(&base))
                            .arg(instance)
                            .invoke_async(&mut conn)
                            .await?
                    } else {
                        let _: i64 = redis::cmd("HDEL")
                            .arg(format!("{base}:route"))
                            .arg(instance)
                            .query_async(&mut conn)
                            .await?;
                        0
                    };
                    let _: i64 = redis::cmd("HDEL")
                        .arg(index_key)
                        .arg(&base)
                        .query_async(&mut conn)
                        .await?;
                    Ok::<i64, redis::RedisError>(n)
                }
            })
            .collect();
        let results = run_bounded(calls).await;
        for result in results {
            left += result?;
        }
        if left > 0 {
            tracing::warn!(dead = %instance, left, "reaped a node instance whose lease expired");
        }
        Ok(())
    }

    /// Forgets index entries that back nothing any more: no local state, no operation in
    /// flight, and unchanged since they were read.
    async fn prune_index(&self) -> redis::RedisResult<()> {
        let instance = self.instance();
        let index_key = self.keys.index_key(&instance);
        let entries: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&index_key)
            .query_async(&mut self.conn())
            .await?;
        let mut stale = Vec::new();
        {
            // Under the index lock, so an operation that finished before this point shows up
            // as local state, and one that starts after it finds its entry unwritten.
            let mut index = lock(&self.index);
            let live = self.local.live_bases(&self.keys);
            let departed: HashSet<String> = lock(&self.departed)
                .iter()
                .map(|(base, _)| base.clone())
                .collect();
            for (base, generation) in entries {
                let in_use = index.busy.contains_key(&base)
                    || departed.contains(&base)
                    || live.contains(&base);
                if !in_use {
                    index.written.remove(&base);
                    stale.push((base, generation));
                }
            }
        }
        for (base, generation) in stale {
            let _: i64 = self
                .scripts
                .index_prune
                .key(&index_key)
                .arg(&base)
                .arg(&generation)
                .invoke_async(&mut self.conn())
                .await?;
        }
        Ok(())
    }

    /// Makes Redis agree with local state: index entries first, then every channel this node
    /// holds or may have held, then routes and wildcard interest.
    async fn reassert(&self) -> redis::RedisResult<()> {
        let instance = self.instance();
        let announce = self.announce.load(Ordering::Acquire);
        let index_key = self.keys.index_key(&instance);
        lock(&self.index).written.clear();
        let departed: Vec<(String, String)> = std::mem::take(&mut *lock(&self.departed));
        let result = self
            .reassert_state(&instance, &index_key, announce, &departed)
            .await;
        match result {
            Ok(()) => {
                if announce {
                    self.announce.store(false, Ordering::Release);
                }
            }
            Err(_) => lock(&self.departed).extend(departed),
        }
        result
    }

    async fn reassert_state(
        &self,
        instance: &str,
        index_key: &str,
        announce: bool,
        departed: &[(String, String)],
    ) -> redis::RedisResult<()> {
        let snapshot = self.local.snapshot_for_reassert(&self.keys);
        let indexed: Vec<String> = redis::cmd("HKEYS")
            .arg(index_key)
            .query_async(&mut self.conn())
            .await?;
        let mut departed_by_channel: HashMap<&str, Vec<&str>> = HashMap::new();
        for (base, peer) in departed {
            departed_by_channel
                .entry(base.as_str())
                .or_default()
                .push(peer.as_str());
        }
        // Index first: whatever is held below must be findable by a reaper. (One key, so one
        // slot: a pipeline is fine even on a cluster.)
        let mut bases: Vec<&str> = snapshot
            .channels
            .keys()
            .chain(snapshot.routes.keys())
            .map(String::as_str)
            .collect();
        bases.extend(departed_by_channel.keys().copied());
        let mut pipe = redis::pipe();
        for base in &bases {
            pipe.cmd("HINCRBY")
                .arg(index_key)
                .arg(*base)
                .arg(1)
                .ignore();
        }
        run_pipe(&pipe, &mut self.conn()).await?;
        lock(&self.index)
            .written
            .extend(bases.iter().map(|b| b.to_string()));
        let mut channels: HashSet<&str> = snapshot.channels.keys().map(String::as_str).collect();
        channels.extend(departed_by_channel.keys().copied());
        channels.extend(
            indexed
                .iter()
                .filter(|b| self.keys.is_channel_base(b))
                .map(String::as_str),
        );
        let empty = local::ChannelState {
            holds: Vec::new(),
            subscribers: 0,
        };
        // Each invocation is built up front and owns its arguments.
        let invocations: Vec<redis::ScriptInvocation<'_>> = channels
            .into_iter()
            .map(|base| {
                let state = snapshot.channels.get(base).unwrap_or(&empty);
                let gone = departed_by_channel.get(base).cloned().unwrap_or_default();
                let mut inv = self.scripts.reassert_channel.key(base);
                inv.arg(self.publish_command())
                    .arg(self.keys.topic_of_base(base))
                    .arg(instance)
                    .arg(if announce { "1" } else { "0" })
                    .arg(state.subscribers)
                    .arg(state.holds.len());
                for (peer, meta) in &state.holds {
                    inv.arg(peer).arg(meta);
                }
                inv.arg(gone.len());
                for peer in gone {
                    inv.arg(peer);
                }
                inv
            })
            .collect();
        let calls: Vec<_> = invocations
            .into_iter()
            .map(|inv| {
                let mut conn = self.conn();
                async move { inv.invoke_async::<i64>(&mut conn).await }
            })
            .collect();
        let results = run_bounded(calls).await;
        for result in results {
            result?;
        }
        // Routes and wildcard interest live in many slots: one command each, pipelined by
        // the multiplexed connection.
        let mut commands = Vec::new();
        for (base, count) in &snapshot.routes {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(format!("{base}:route")).arg(instance).arg(*count);
            commands.push(cmd);
        }
        for base in indexed.iter().filter(|b| !self.keys.is_channel_base(b)) {
            if !snapshot.routes.contains_key(base) {
                let mut cmd = redis::cmd("HDEL");
                cmd.arg(format!("{base}:route")).arg(instance);
                commands.push(cmd);
            }
        }
        if self.store.is_cluster() {
            let patterns = format!("{}:patterns", self.keys.cluster_base());
            for app in self.local.pattern_apps() {
                let mut cmd = redis::cmd("SADD");
                cmd.arg(&patterns).arg(format!("{app}\n{instance}"));
                commands.push(cmd);
            }
        }
        let calls: Vec<_> = commands
            .into_iter()
            .map(|cmd| {
                let mut conn = self.conn();
                async move { cmd.query_async::<()>(&mut conn).await }
            })
            .collect();
        run_bounded(calls).await.into_iter().collect()
    }

    /// Starts the re-sync window after the bus (re)connected.
    pub(crate) fn bus_connected(&self) {
        self.local.reset_sequences();
        let settle = 2 * maintenance_period(self.lease_ms);
        let from = std::time::Instant::now() + settle;
        let until = from + Duration::from_millis(self.lease_ms.max(5_000) * 3);
        *lock(&self.resync_window) = Some((from, until));
        self.mark_trouble();
        self.wake_maintenance.notify_one();
    }

    /// The bus shed pushes and has caught up since: deltas may be lost, so local rosters are
    /// re-synced with Redis for a couple of maintenance rounds, starting now. (No re-assert:
    /// Redis lost nothing; only this node's view did.)
    pub(crate) fn bus_gap(&self) {
        let now = std::time::Instant::now();
        let until = now + 2 * maintenance_period(self.lease_ms);
        {
            let mut window = lock(&self.resync_window);
            *window = Some(match *window {
                Some((from, end)) if end > now => (from, end.max(until)),
                _ => (now, until),
            });
        }
        self.wake_maintenance.notify_one();
    }

    /// Reads every locally subscribed channel's roster (with its sequence number, atomically)
    /// and lets local subscribers catch up on what they missed.
    async fn resync(&self) -> redis::RedisResult<()> {
        let channels = self.local.subscribed_channels();
        let calls: Vec<_> = channels
            .into_iter()
            .map(|key| async move {
                let (seq, roster) = self.roster(key.0.as_str(), key.1.as_str()).await?;
                self.local.resync(&key, &roster, seq);
                Ok::<(), redis::RedisError>(())
            })
            .collect();
        run_bounded(calls).await.into_iter().collect()
    }

    /// A channel's roster (flat peer → metadata list) and its sequence number, read together.
    async fn roster(&self, app: &str, channel: &str) -> redis::RedisResult<(u64, Vec<String>)> {
        self.scripts
            .roster
            .key(self.keys.channel_base(app, channel))
            .invoke_async(&mut self.conn())
            .await
    }

    /// Cluster mode: re-records this node's own wildcard interest (an add and a remove for
    /// the same app can race; this settles it within a round), then reloads which apps have
    /// wildcard subscribers anywhere.
    async fn refresh_pattern_apps(&self) -> redis::RedisResult<()> {
        let key = format!("{}:patterns", self.keys.cluster_base());
        let own = self.local.pattern_apps();
        if !own.is_empty() {
            let instance = self.instance();
            let mut add = redis::cmd("SADD");
            add.arg(&key);
            for app in &own {
                add.arg(format!("{app}\n{instance}"));
            }
            add.query_async::<()>(&mut self.conn()).await?;
        }
        let entries: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&key)
            .query_async(&mut self.conn())
            .await?;
        let apps = entries
            .iter()
            .filter_map(|e| e.split_once('\n').map(|(app, _)| app.to_string()))
            .collect();
        *lock(&self.pattern_apps) = apps;
        Ok(())
    }

    /// Cluster mode: another node announced an app with wildcard subscribers.
    pub(crate) fn pattern_interest(&self, app: String) {
        lock(&self.pattern_apps).insert(app);
    }

    /// Cluster mode: records (or drops) this node's wildcard interest in an app and tells
    /// the other nodes at once, so their publishes reach it without waiting for a refresh.
    async fn set_pattern_interest(&self, app: &AppId, on: bool) -> redis::RedisResult<()> {
        let entry = format!("{}\n{}", app.as_str(), self.instance());
        let key = format!("{}:patterns", self.keys.cluster_base());
        let _: i64 = redis::cmd(if on { "SADD" } else { "SREM" })
            .arg(key)
            .arg(entry)
            .query_async(&mut self.conn())
            .await?;
        if on {
            self.pattern_interest(app.as_str().to_string());
            let _: i64 = redis::cmd("PUBLISH")
                .arg(self.keys.patterns_topic())
                .arg(app.as_str())
                .query_async(&mut self.conn())
                .await?;
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
        base: &str,
        conn: &Conn,
        subscriber_delta: i64,
    ) -> redis::RedisResult<(i64, u64, Vec<String>)> {
        let meta = conn.peer_metadata.as_ref().map_or("", |m| m.get());
        self.scripts
            .join
            .key(base)
            .arg(self.publish_command())
            .arg(self.keys.topic_of_base(base))
            .arg(self.instance())
            .arg(conn.peer_id.as_str())
            .arg(meta)
            .arg(subscriber_delta)
            .invoke_async(&mut self.conn())
            .await
    }

    /// Drops this node's hold of (channel, peer), then re-checks: if the peer subscribed again
    /// locally while the script ran, its hold is restored.
    async fn leave(self: &Arc<Self>, app: &AppId, channel: &ChannelName, peer: &PeerId) {
        let base = self.keys.channel_base(app.as_str(), channel.as_str());
        let (_in_use, written) = self.use_entry(&base);
        let result: redis::RedisResult<i64> = self
            .scripts
            .leave
            .key(&base)
            .arg(self.publish_command())
            .arg(self.keys.topic_of_base(&base))
            .arg(self.instance())
            .arg(peer.as_str())
            .invoke_async(&mut self.conn())
            .await;
        if result.is_err() {
            lock(&self.departed).push((base, peer.as_str().to_string()));
            self.mark_trouble();
            return;
        }
        if let Some(conn) = self.local.any_holder(app, channel, peer) {
            let rejoined = match self.ensure_indexed(&base, written).await {
                Ok(()) => self.join(&base, &conn, 0).await.map(|_| ()),
                Err(err) => Err(err),
            };
            if rejoined.is_err() {
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
        let base = self.keys.channel_base(conn.app.as_str(), channel.as_str());
        let in_use = self.use_entry(&base);
        let Some(outcome) = self
            .local
            .remove(conn, channel, &self.bus, &self.keys, departure, self.grace)
        else {
            return false;
        };
        self.subscriptions.fetch_sub(1, Ordering::Relaxed);
        let adjusted: redis::RedisResult<i64> = redis::cmd("HINCRBY")
            .arg(format!("{base}:subs"))
            .arg(self.instance())
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
                    let (_in_use, _) = inner.use_entry(&base);
                    if inner.local.grace_expired(
                        &app,
                        &channel,
                        &peer,
                        generation,
                        &inner.bus,
                        &inner.keys,
                    ) {
                        inner.leave(&app, &channel, &peer).await;
                    }
                });
            }
        }
        drop(in_use);
        true
    }

    /// Sends an event to every node holding the peer; returns the connections reached (the
    /// sender's own connection excluded when `self_send`).
    async fn route(
        &self,
        app: &str,
        peer: &str,
        payload: &str,
        self_send: bool,
    ) -> redis::RedisResult<usize> {
        let route_key = self.keys.route_key(app, peer);
        let instance = self.instance();
        if !self.store.is_cluster() {
            return self
                .scripts
                .route
                .key(route_key)
                .arg(self.keys.node_topic_prefix())
                .arg(payload)
                .arg(&instance)
                .arg(if self_send { "1" } else { "0" })
                .invoke_async(&mut self.conn())
                .await;
        }
        // Node topics live in other slots than the route: read it, then publish per node.
        let routes: HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(route_key)
            .query_async(&mut self.conn())
            .await?;
        let mut total = 0;
        for (target, mut n) in routes {
            if self_send && target == instance {
                n -= 1;
            }
            if n > 0 {
                let _: i64 = redis::cmd("SPUBLISH")
                    .arg(self.keys.node_topic_of_instance(&target))
                    .arg(payload)
                    .query_async(&mut self.conn())
                    .await?;
                total += usize::try_from(n).unwrap_or(0);
            }
        }
        Ok(total)
    }

    /// Counts a connection of its peer on this node in the direct-routing table (`delta` is +1
    /// or -1). Local traffic keeps working without Redis; a failed update is repaired by the
    /// next re-assert.
    async fn adjust_route(&self, conn: &Conn, delta: i64, written: bool) {
        let base = self
            .keys
            .route_base(conn.app.as_str(), conn.peer_id.as_str());
        let result = match self.ensure_indexed(&base, written).await {
            Ok(()) => self
                .scripts
                .route_adjust
                .key(format!("{base}:route"))
                .arg(self.instance())
                .arg(delta)
                .invoke_async::<i64>(&mut self.conn())
                .await
                .map(|_| ()),
            Err(err) => Err(err),
        };
        if result.is_err() {
            self.mark_trouble();
        }
    }

    fn exclusion(&self, conn: Option<&Conn>) -> Option<String> {
        conn.map(|c| format!("{}/{}", self.node, c.id.0))
    }
}

impl RedisEngine {
    /// Removes one subscription, exact or wildcard.
    async fn unsubscribe_one(
        &self,
        conn: &Arc<Conn>,
        channel: &ChannelName,
        departure: Departure,
    ) -> bool {
        let inner = &self.inner;
        if !herald_protocol::glob::has_wildcard(channel.as_str()) {
            return inner.remove_subscription(conn, channel, departure).await;
        }
        let (removed, app_done) = inner.local.remove_pattern(conn, channel, &inner.bus);
        if removed {
            inner.subscriptions.fetch_sub(1, Ordering::Relaxed);
        }
        if app_done
            && inner.store.is_cluster()
            && inner.set_pattern_interest(&conn.app, false).await.is_err()
        {
            inner.mark_trouble();
        }
        removed
    }
}

#[async_trait]
impl Engine for RedisEngine {
    async fn register(&self, conn: &Arc<Conn>) -> Result<(), EngineError> {
        let inner = &self.inner;
        let base = inner
            .keys
            .route_base(conn.app.as_str(), conn.peer_id.as_str());
        let (_in_use, written) = inner.use_entry(&base);
        inner.local.register(conn);
        inner.adjust_route(conn, 1, written).await;
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
            self.unsubscribe_one(conn, channel, departure).await;
        }
        let base = inner
            .keys
            .route_base(conn.app.as_str(), conn.peer_id.as_str());
        let (_in_use, _) = inner.use_entry(&base);
        inner.local.unregister(conn);
        // Removing needs no index entry: the count only goes down.
        inner.adjust_route(conn, -1, true).await;
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
                req.max_app_patterns,
                &inner.bus,
            )?;
            if let Some(confirm) = confirm {
                await_confirm(confirm).await?;
            }
            if inner.store.is_cluster() {
                if let Err(err) = inner.set_pattern_interest(&conn.app, true).await {
                    inner.mark_trouble();
                    return Err(unavailable(err));
                }
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
        let base = inner
            .keys
            .channel_base(conn.app.as_str(), req.channel.as_str());
        let (_in_use, written) = inner.use_entry(&base);
        let SubscribeStart { duplicate, confirm } = inner.local.begin_subscribe(
            conn,
            req.channel,
            req.include_sender_metadata,
            &inner.bus,
            &inner.keys,
        );
        if let Some(confirm) = confirm {
            if let Err(err) = await_confirm(confirm).await {
                inner
                    .local
                    .abort_subscribe(conn, req.channel, duplicate, &inner.bus, &inner.keys);
                return Err(err);
            }
        }
        let joined = match inner.ensure_indexed(&base, written).await {
            Ok(()) => inner.join(&base, conn, if duplicate { 0 } else { 1 }).await,
            Err(err) => Err(err),
        };
        let (_, seq, roster) = match joined {
            Ok(result) => result,
            Err(err) => {
                inner
                    .local
                    .abort_subscribe(conn, req.channel, duplicate, &inner.bus, &inner.keys);
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
        Ok(self.unsubscribe_one(conn, channel, Departure::Left).await)
    }

    async fn publish(&self, p: Publication<'_>) -> Result<usize, EngineError> {
        let inner = &self.inner;
        let mut event = Event::new("m");
        event.f = Some(p.from.as_str().into());
        event.m = p.from_metadata;
        event.d = Some(p.data);
        let exclusion = inner.exclusion(p.exclude);
        event.x = exclusion.as_deref().map(Into::into);
        // Cluster mode: wildcard subscribers of the app listen on its classic topic.
        let app_topic = (inner.store.is_cluster()
            && lock(&inner.pattern_apps).contains(p.app.as_str()))
        .then(|| inner.keys.app_topic(p.app.as_str()));
        if app_topic.is_some() {
            event.n = Some(p.channel.as_str().into());
        }
        let payload = event.to_json();
        let base = inner.keys.channel_base(p.app.as_str(), p.channel.as_str());
        let publisher_subscribed = p
            .exclude
            .is_some_and(|c| inner.local.is_subscribed(c, p.channel));
        let result: redis::RedisResult<usize> = inner
            .scripts
            .publish
            .key(&base)
            .arg(inner.publish_command())
            .arg(inner.keys.topic_of_base(&base))
            .arg(&payload)
            .arg(usize::from(publisher_subscribed))
            .arg(app_topic.unwrap_or_default())
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
        let self_send = d.exclude.is_some() && d.from == d.to;
        match inner
            .route(d.app.as_str(), d.to.as_str(), &payload, self_send)
            .await
        {
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
        let (_, flat) = self
            .inner
            .roster(app.as_str(), channel.as_str())
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
        match inner
            .route(app.as_str(), peer.as_str(), &event.to_json(), false)
            .await
        {
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
            bus_queue: self.inner.inbox.stats(),
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
