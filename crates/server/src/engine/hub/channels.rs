//! The node's concrete channels: a map sharded by `(app, channel)`, each channel behind its own
//! lock, holding its local subscribers and a slot for the engine's own per-channel state (the
//! memory engine's roster, the Redis engine's presence holds and subscribes in flight).
//!
//! Lock order: a shard's map, then a channel. A channel is dropped from the map only under
//! both, and marked `removed` so a caller still holding its `Arc` starts over with a fresh one.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use crate::conn::{Conn, Delivery};
use crate::ids::{AppId, ChannelName, ConnId};
use crate::sync::lock;

use super::frames::MessageFrames;

const SHARDS: usize = 16;

pub type ChannelKey = (AppId, ChannelName);

/// A local connection subscribed to a channel.
pub struct Subscriber {
    pub conn: Arc<Conn>,
    pub include_sender_metadata: bool,
    /// The presence sequence number of this subscriber's snapshot: a delta at or below it is
    /// already in the snapshot (engines without sequence numbers leave it at 0).
    pub floor: u64,
}

/// One channel on this node.
pub struct Channel<S> {
    /// Set when the channel was dropped from the map; whoever holds a stale `Arc` retries.
    removed: bool,
    subscribers: HashMap<ConnId, Subscriber>,
    /// The engine's own state for this channel.
    pub slot: S,
}

impl<S: Default> Default for Channel<S> {
    fn default() -> Self {
        Channel {
            removed: false,
            subscribers: HashMap::new(),
            slot: S::default(),
        }
    }
}

impl<S> Channel<S> {
    pub fn subscribers(&self) -> impl Iterator<Item = &Subscriber> {
        self.subscribers.values()
    }

    pub fn subscribers_mut(&mut self) -> impl Iterator<Item = &mut Subscriber> {
        self.subscribers.values_mut()
    }

    pub fn subscriber_count(&self) -> usize {
        self.subscribers.len()
    }

    pub fn is_subscribed(&self, conn: ConnId) -> bool {
        self.subscribers.contains_key(&conn)
    }

    /// Adds a subscriber, or updates the flag and floor of one already there. Returns true
    /// when it is new.
    pub fn subscribe(
        &mut self,
        conn: &Arc<Conn>,
        include_sender_metadata: bool,
        floor: u64,
    ) -> bool {
        match self.subscribers.entry(conn.id) {
            Entry::Occupied(mut existing) => {
                let sub = existing.get_mut();
                sub.include_sender_metadata = include_sender_metadata;
                sub.floor = floor;
                false
            }
            Entry::Vacant(slot) => {
                slot.insert(Subscriber {
                    conn: conn.clone(),
                    include_sender_metadata,
                    floor,
                });
                true
            }
        }
    }

    pub fn unsubscribe(&mut self, conn: ConnId) -> Option<Subscriber> {
        self.subscribers.remove(&conn)
    }

    /// Queues a message for every subscriber but `excluded`, each in its variant (with or
    /// without sender metadata). Returns how many queues took it.
    pub fn deliver_message(
        &self,
        frames: &mut MessageFrames<'_>,
        excluded: Option<ConnId>,
    ) -> usize {
        let mut delivered = 0;
        for sub in self.subscribers.values() {
            if Some(sub.conn.id) != excluded
                && sub.conn.deliver(frames.get(sub.include_sender_metadata)) == Delivery::Queued
            {
                delivered += 1;
            }
        }
        delivered
    }
}

type Cell<S> = Arc<Mutex<Channel<S>>>;

/// A channel held for a timer that comes back to it later.
pub struct ChannelRef<S>(Cell<S>);

impl<S> ChannelRef<S> {
    /// Runs `f` under the channel's lock, unless the channel left the map meanwhile.
    pub fn with<R>(&self, f: impl FnOnce(&mut Channel<S>) -> R) -> Option<R> {
        let mut channel = lock(&self.0);
        (!channel.removed).then(|| f(&mut channel))
    }
}

/// The sharded map of channels.
pub struct ChannelMap<S> {
    shards: Vec<Mutex<HashMap<ChannelKey, Cell<S>>>>,
}

impl<S: Default> Default for ChannelMap<S> {
    fn default() -> Self {
        ChannelMap {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

pub(super) fn shard_of<K: Hash>(key: &K) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

impl<S: Default> ChannelMap<S> {
    fn cell(&self, key: &ChannelKey) -> Option<Cell<S>> {
        lock(&self.shards[shard_of(key)]).get(key).cloned()
    }

    /// The channel, for a timer to come back to (see [`ChannelRef`]).
    pub fn get_ref(&self, key: &ChannelKey) -> Option<ChannelRef<S>> {
        self.cell(key).map(ChannelRef)
    }

    /// Runs `f` on the channel under its lock, if the channel exists.
    pub fn with<R>(&self, key: &ChannelKey, f: impl FnOnce(&mut Channel<S>) -> R) -> Option<R> {
        let cell = self.cell(key)?;
        let mut channel = lock(&cell);
        // A channel removed since the lookup is as good as absent.
        (!channel.removed).then(|| f(&mut channel))
    }

    /// Runs `f` on the channel under its lock, creating the channel first when missing.
    pub fn with_or_create<R>(&self, key: &ChannelKey, f: impl FnOnce(&mut Channel<S>) -> R) -> R {
        loop {
            let cell = lock(&self.shards[shard_of(key)])
                .entry(key.clone())
                .or_default()
                .clone();
            let mut channel = lock(&cell);
            if !channel.removed {
                return f(&mut channel);
            }
        }
    }

    /// Drops the channel when it has no subscribers and `idle` says the engine holds nothing
    /// there either.
    pub fn remove_if_idle(&self, key: &ChannelKey, idle: impl FnOnce(&S) -> bool) {
        let mut map = lock(&self.shards[shard_of(key)]);
        if let Some(cell) = map.get(key) {
            let mut channel = lock(cell);
            if channel.subscribers.is_empty() && idle(&channel.slot) {
                channel.removed = true;
                drop(channel);
                map.remove(key);
            }
        }
    }

    /// Visits every channel (of one app, or all), each under its own lock; a shard's map is
    /// held only while its channels are listed.
    pub fn for_each(&self, app: Option<&AppId>, mut f: impl FnMut(&ChannelKey, &mut Channel<S>)) {
        for shard in &self.shards {
            let cells: Vec<(ChannelKey, Cell<S>)> = lock(shard)
                .iter()
                .filter(|((a, _), _)| app.is_none_or(|want| want == a))
                .map(|(key, cell)| (key.clone(), cell.clone()))
                .collect();
            for (key, cell) in cells {
                let mut channel = lock(&cell);
                if !channel.removed {
                    f(&key, &mut channel);
                }
            }
        }
    }
}
