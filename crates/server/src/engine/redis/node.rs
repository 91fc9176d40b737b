//! The state one Redis-engine node shares between the engine handle, the bus task, the
//! maintenance task and reconnect-grace timers. Each job's methods live in their own file
//! (`lease.rs`, `index.rs`, `reassert.rs`, `presence.rs`, `routing.rs`, `interest.rs`,
//! `publish.rs`); this file holds the fields and the small helpers they all use.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::inbox::Inbox;
use super::index_book::IndexBook;
use super::keys::Keys;
use super::local::Local;
use super::scripts::Scripts;
use super::store::Store;
use super::topics::{BusCommand, BusSender};
use crate::config::EngineConfig;
use crate::engine::EngineError;
use crate::history::HistoryRules;
use crate::sync::lock;

pub(crate) struct Node {
    /// This node's id (stable across incarnations).
    pub(super) id: String,
    /// This node's current instance id; it changes when the node finds itself reaped.
    pub(super) instance: Mutex<String>,
    pub(super) keys: Arc<Keys>,
    pub(super) lease_ms: u64,
    pub(super) grace: Duration,
    pub(super) store: Store,
    pub(super) scripts: Scripts,
    pub(super) local: Local,
    /// Pushes from Redis waiting for the bus task, bounded (`engine.bus_queue_*`).
    pub(super) inbox: Arc<Inbox>,
    /// The pub/sub listener is up and subscribed.
    pub(super) bus_up: AtomicBool,
    /// The last maintenance round reached Redis.
    pub(super) redis_ok: AtomicBool,
    /// Redis and local state may disagree (an op failed, the bus reconnected, the lease
    /// lapsed): the maintenance task re-asserts.
    pub(super) needs_reassert: AtomicBool,
    pub(super) wake_maintenance: Notify,
    /// Counts re-assertions. Each takes a new number before it reads local state; a join
    /// records the number current when it runs, so a re-assertion never drops a hold written
    /// by a subscribe that began after it read local state (`REASSERT_CHANNEL`).
    pub(super) reassert_generation: AtomicU64,
    /// When the maintenance task re-syncs local rosters with Redis (from, until). Set on every
    /// bus reconnect: deltas published while this node was not listening are lost. Until
    /// `from` only who joined is told; full re-syncs start after a settling delay (a lease
    /// after data loss), so the other nodes have re-asserted their presence too and a
    /// half-rebuilt roster never shows up as peers leaving.
    pub(super) resync_window: Mutex<Option<(tokio::time::Instant, tokio::time::Instant)>>,
    /// When the node last found its lease gone without a reap (Redis lost its data, or was
    /// away a whole lease). For a lease after that, other nodes may not have re-asserted their
    /// peers yet, so roster re-syncs wait: a half-rebuilt roster must not read as peers leaving.
    pub(super) lease_lapsed: Mutex<Option<tokio::time::Instant>>,
    /// Presence holds (channel base, peer) whose `left` could not be recorded while Redis was
    /// down.
    pub(super) departed: Mutex<Vec<(String, String)>>,
    pub(super) index: IndexBook,
    /// Cluster mode: apps with wildcard subscribers anywhere, whose messages also go to the
    /// app's classic topic.
    pub(super) pattern_apps: Mutex<HashSet<String>>,
    /// Which channels keep history (`[[history.channels]]`; none by default).
    pub(super) history: Arc<HistoryRules>,
    /// Messages lost on the bus and fetched back from a channel's history (`history.rs`).
    pub(super) history_repaired: AtomicU64,
    /// Messages lost on the bus that the channel's history no longer held.
    pub(super) history_lost: AtomicU64,
    /// Webhook endpoints, set once when some app has any (single Redis only).
    pub(super) webhooks: std::sync::OnceLock<super::webhook_spec::RedisWebhooks>,
    /// `webhooks.queue_max_bytes`: an endpoint's outbox stream holds this much, roughly.
    pub(super) webhook_queue_bytes: usize,
}

/// A new instance id for a node: `<node>#<incarnation>`.
pub(super) fn new_instance(node: &str) -> String {
    format!("{node}#{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

pub(super) fn unavailable(err: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(err.to_string())
}

impl Node {
    /// A node of the given id over a connected store; the receiver feeds the bus task.
    pub(super) fn new(
        id: String,
        config: &EngineConfig,
        coalesce: Duration,
        store: Store,
    ) -> (Node, tokio::sync::mpsc::UnboundedReceiver<BusCommand>) {
        let keys = Arc::new(Keys::new(&config.key_prefix, &id));
        let (bus, commands) = BusSender::new(keys.clone());
        let inbox = Arc::new(Inbox::new(
            config.bus_queue_messages,
            config.bus_queue_bytes,
        ));
        let node = Node {
            instance: Mutex::new(new_instance(&id)),
            id,
            keys,
            lease_ms: config.lease_ttl_ms,
            grace: Duration::from_millis(config.reconnect_grace_ms),
            store,
            scripts: Scripts::new(),
            local: Local::new(bus, coalesce).watching_losses(inbox.shed_counter()),
            inbox,
            bus_up: AtomicBool::new(false),
            redis_ok: AtomicBool::new(false),
            needs_reassert: AtomicBool::new(true),
            wake_maintenance: Notify::new(),
            reassert_generation: AtomicU64::new(0),
            departed: Mutex::new(Vec::new()),
            resync_window: Mutex::new(None),
            lease_lapsed: Mutex::new(None),
            index: IndexBook::default(),
            pattern_apps: Mutex::new(HashSet::new()),
            history: Arc::new(HistoryRules::default()),
            history_repaired: AtomicU64::new(0),
            history_lost: AtomicU64::new(0),
            webhooks: std::sync::OnceLock::new(),
            webhook_queue_bytes: 64 * 1024 * 1024,
        };
        (node, commands)
    }

    /// A handle on the command connection (cheap: it is multiplexed).
    pub(super) fn conn(&self) -> Store {
        self.store.clone()
    }

    pub(super) fn instance(&self) -> String {
        lock(&self.instance).clone()
    }

    pub(super) fn publish_command(&self) -> &'static str {
        self.store.publish_command()
    }

    /// Redis and local state may disagree: the next maintenance round re-asserts.
    pub(super) fn mark_trouble(&self) {
        self.needs_reassert.store(true, Ordering::Release);
    }

    pub(super) fn require_bus(&self) -> Result<(), EngineError> {
        if self.bus_up.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(EngineError::Unavailable("redis pub/sub is down".into()))
        }
    }
}
