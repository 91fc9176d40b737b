//! The node-local hub both engines build on: who on this node listens to what, and delivery to
//! them. It holds
//!
//! - the concrete channels (`channels.rs`): a map sharded by `(app, channel)`, each channel with
//!   its local subscribers and a slot for the engine's own state;
//! - the wildcard subscriptions (`wildcard.rs`), indexed per app;
//! - the peer registry (`peers.rs`) for directs and kicks;
//! - frames encoded once per publication and shared by every receiver (`frames.rs`), and
//!   roster snapshots encoded once per roster version (`snapshot.rs`);
//! - the operator views (`views.rs`);
//! - occupancy mode of large rooms (`occupancy.rs`), which both engines drive under the
//!   channel's lock;
//! - the rewind of a subscribe to a channel that keeps history (`rewind.rs`), and the replay
//!   of a resuming one (`replay.rs`).
//!
//! The memory engine is this hub plus an in-process roster per channel; the Redis engine is
//! this hub plus what is truly distributed (presence in Redis, routing, leases).
//!
//! Lock order (never reversed): a channel shard's map → a channel → an app's wildcard index →
//! a connection's queue (a leaf). The peer registry's shards are never held with any of them
//! (a resume book shard may be held while taking one: `resume/book.rs`).
//! Every section is short and synchronous; delivery is a non-blocking `Conn::deliver`.

mod channels;
mod coalescing;
mod frames;
pub mod occupancy;
mod peers;
pub mod presence_batch;
pub mod replay;
pub mod rewind;
pub mod snapshot;
mod views;
pub mod wildcard;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub use channels::{Channel, ChannelKey, ChannelMap, ChannelRef, Subscriber};
pub use frames::{entry, presence, MessageFrames};
pub use peers::{PeerKey, PeerRegistry};
pub use snapshot::SnapshotCache;

use crate::conn::{Conn, Delivery};
use crate::ids::{AppId, ChannelName, ConnId};
use wildcard::WildcardIndex;

/// Node-local subscriptions and delivery; `S` is the engine's state per concrete channel.
pub struct Hub<S> {
    pub channels: ChannelMap<S>,
    pub patterns: WildcardIndex,
    pub peers: PeerRegistry,
    /// Subscriptions (exact and wildcard) of local connections.
    subscriptions: AtomicUsize,
    /// Presence deltas of a channel coming faster than one per this window leave together
    /// (`presence_batch.rs`); zero sends each at once.
    coalesce: std::time::Duration,
    /// Peers with deltas waiting, for the flush before a direct from them.
    waiting: presence_batch::WaitingPeers,
}

impl<S: Default> Default for Hub<S> {
    fn default() -> Self {
        Hub {
            channels: ChannelMap::default(),
            patterns: WildcardIndex::default(),
            peers: PeerRegistry::default(),
            subscriptions: AtomicUsize::new(0),
            coalesce: std::time::Duration::ZERO,
            waiting: presence_batch::WaitingPeers::default(),
        }
    }
}

impl<S: Default> Hub<S> {
    /// A hub whose presence deltas are coalesced over `window` (zero: never).
    pub fn with_coalescing(window: std::time::Duration) -> Self {
        Hub {
            coalesce: window,
            ..Hub::default()
        }
    }

    /// Queues a message for every local subscriber of the channel, exact or by pattern, once
    /// per connection, except `excluded`. Exact subscribers get it under the channel's lock,
    /// in order with the channel's presence changes. Returns how many queues took it.
    /// `before` runs under the channel's lock first (the memory engine sends waiting presence
    /// deltas there, so a message never overtakes the `joined` of its sender).
    pub fn fan_out(
        &self,
        key: &ChannelKey,
        frames: &mut MessageFrames<'_>,
        excluded: Option<ConnId>,
        before: impl FnOnce(&mut Channel<S>),
    ) -> usize {
        let (app, channel) = (&key.0, key.1.as_str());
        self.channels
            .with(key, |ch| {
                before(ch);
                ch.deliver_message(frames, excluded)
                    + self.deliver_to_patterns(app, channel, frames, excluded, |id| {
                        ch.is_subscribed(id)
                    })
            })
            .unwrap_or_else(|| self.deliver_to_patterns(app, channel, frames, excluded, |_| false))
    }

    /// Queues a message for the wildcard subscribers whose pattern matches `channel`, except
    /// `excluded` and connections `gets_it_otherwise` names (they are exact subscribers).
    pub fn deliver_to_patterns(
        &self,
        app: &AppId,
        channel: &str,
        frames: &mut MessageFrames<'_>,
        excluded: Option<ConnId>,
        gets_it_otherwise: impl Fn(ConnId) -> bool,
    ) -> usize {
        let mut delivered = 0;
        self.patterns
            .for_each_match(app, channel, |conn, include_sender_metadata| {
                if Some(conn.id) != excluded
                    && !gets_it_otherwise(conn.id)
                    && conn.deliver(frames.get(include_sender_metadata)) == Delivery::Queued
                {
                    delivered += 1;
                }
            });
        delivered
    }

    /// The wildcard subscribers whose pattern matches `channel`, except `excluded`, with their
    /// sender-metadata flag (for engines that filter them under another lock before delivery).
    pub fn pattern_matches(
        &self,
        app: &AppId,
        channel: &str,
        excluded: Option<ConnId>,
    ) -> Vec<(Arc<Conn>, bool)> {
        let mut matched = Vec::new();
        self.patterns
            .for_each_match(app, channel, |conn, include_sender_metadata| {
                if Some(conn.id) != excluded {
                    matched.push((conn.clone(), include_sender_metadata));
                }
            });
        matched
    }

    pub fn count_subscribed(&self) {
        self.subscriptions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_unsubscribed(&self) {
        self.subscriptions.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// Concrete channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        let mut n = 0;
        self.channels.for_each(None, |_, channel| {
            if channel.subscriber_count() > 0 {
                n += 1;
            }
        });
        n
    }
}

/// The key of a channel of an app.
pub fn channel_key(app: &AppId, channel: &ChannelName) -> ChannelKey {
    (app.clone(), channel.clone())
}

#[cfg(test)]
mod tests;
