//! The resume book: per (app, peer) that dropped, for the resume window, its confirmed channel
//! positions and a bounded inbox of directs.
//!
//! Sharded 16 ways by peer, each shard behind a std mutex held for a few map operations.
//! Lock order: a shard, then the hub's peer registry (`register`, `queue_direct` call into it
//! under the shard's lock, so a direct either reaches a registered connection or waits in the
//! inbox that the next registration drains: never neither). Nothing here awaits.
//!
//! Memory is bounded by the peers that dropped in the last window: each holds at most its
//! subscriptions' positions and `inbox_max_messages` / `inbox_max_bytes` of directs. Entries
//! leave when the window ends (a sweep on every call and from the engine's timer).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::time::Instant;

use super::{ResumeSettings, Since};
use crate::conn::Frame;
use crate::ids::{AppId, ChannelName, PeerId};
use crate::sync::lock;

const SHARDS: usize = 16;

type PeerKey = (AppId, PeerId);

/// What happened to a direct for a peer with no live connection at first sight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// A connection registered meanwhile and got it (this many).
    Live(usize),
    /// It waits in the peer's inbox.
    Queued,
    /// The peer is not inside a resume window: nobody to hold it for.
    NotParked,
    /// The inbox is full (count or bytes): refused, so order is kept and the sender knows.
    Full,
}

/// Counters the engine reports for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BookStats {
    /// Peers inside a resume window now.
    pub parked_peers: usize,
    /// Directs held now.
    pub inbox_directs: usize,
    /// Directs dropped unread because their time or the window ran out, since start.
    pub directs_expired: u64,
}

struct Held {
    frame: Frame,
    expires: Instant,
}

struct Parked {
    until: Instant,
    generation: u64,
    positions: HashMap<ChannelName, Since>,
    inbox: VecDeque<Held>,
    inbox_bytes: usize,
}

impl Parked {
    /// Drops directs whose time ran out; returns how many.
    fn expire_inbox(&mut self, now: Instant) -> u64 {
        let mut expired = 0;
        while self.inbox.front().is_some_and(|h| h.expires <= now) {
            if let Some(held) = self.inbox.pop_front() {
                self.inbox_bytes -= held.frame.len();
                expired += 1;
            }
        }
        expired
    }
}

#[derive(Default)]
struct Shard {
    peers: HashMap<PeerKey, Parked>,
    /// When each parking ends, in time order (the window is the same for all).
    deadlines: VecDeque<(Instant, PeerKey, u64)>,
    generations: u64,
}

impl Shard {
    /// Ends the windows that are over; returns the directs they still held.
    fn sweep(&mut self, now: Instant) -> u64 {
        let mut expired = 0;
        while self.deadlines.front().is_some_and(|(at, _, _)| *at <= now) {
            let Some((_, key, generation)) = self.deadlines.pop_front() else {
                break;
            };
            if self
                .peers
                .get(&key)
                .is_some_and(|p| p.generation == generation)
            {
                if let Some(parked) = self.peers.remove(&key) {
                    expired += parked.inbox.len() as u64;
                }
            }
        }
        expired
    }

    /// The peer's parking, if its window is still open.
    fn live(&mut self, key: &PeerKey, now: Instant) -> Option<&mut Parked> {
        self.peers.get_mut(key).filter(|p| p.until > now)
    }
}

/// See the module's doc.
pub struct ResumeBook {
    settings: ResumeSettings,
    shards: Vec<Mutex<Shard>>,
    directs_expired: AtomicU64,
}

impl ResumeBook {
    pub fn new(settings: ResumeSettings) -> Self {
        ResumeBook {
            settings,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            directs_expired: AtomicU64::new(0),
        }
    }

    pub fn settings(&self) -> &ResumeSettings {
        &self.settings
    }

    fn shard(&self, app: &AppId, peer: &PeerId) -> std::sync::MutexGuard<'_, Shard> {
        let mut hasher = DefaultHasher::new();
        (app, peer).hash(&mut hasher);
        let mut shard = lock(&self.shards[hasher.finish() as usize % SHARDS]);
        let expired = shard.sweep(Instant::now());
        self.count_expired(expired);
        shard
    }

    fn count_expired(&self, n: u64) {
        if n > 0 {
            self.directs_expired.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A stable peer's connection dropped: keep its confirmed positions for the window (a
    /// position already parked for another channel stays), and open its inbox. `unregister`
    /// runs under the shard's lock, so no direct can fall between the live connection and the
    /// inbox; it says whether the peer still has a live connection, in which case nothing is
    /// parked (the peer is back already, or never left: a later subscribe of it must not
    /// replay from this old position). A no-op when resume is off.
    pub fn park(
        &self,
        app: &AppId,
        peer: &PeerId,
        positions: Vec<(ChannelName, Since)>,
        unregister: impl FnOnce() -> bool,
    ) {
        if !self.settings.enabled() {
            unregister();
            return;
        }
        let now = Instant::now();
        let until = now + self.settings.window;
        let mut shard = self.shard(app, peer);
        if unregister() {
            return;
        }
        shard.generations += 1;
        let generation = shard.generations;
        let key = (app.clone(), peer.clone());
        let parked = shard.peers.entry(key.clone()).or_insert_with(|| Parked {
            until,
            generation,
            positions: HashMap::new(),
            inbox: VecDeque::new(),
            inbox_bytes: 0,
        });
        parked.until = until;
        parked.generation = generation;
        parked.positions.extend(positions);
        shard.deadlines.push_back((until, key, generation));
    }

    /// The confirmed position of `channel` for a peer inside its window, taken (a second
    /// subscribe of the same peer does not resume again).
    pub fn take(&self, app: &AppId, peer: &PeerId, channel: &ChannelName) -> Option<Since> {
        if !self.settings.enabled() {
            return None;
        }
        let now = Instant::now();
        let mut shard = self.shard(app, peer);
        shard
            .live(&(app.clone(), peer.clone()), now)?
            .positions
            .remove(channel)
    }

    /// A direct found no live connection of `peer`. Under the shard's lock, `live` tries
    /// again (a connection may have registered since); failing that, the direct waits in the
    /// inbox of a parked peer, within its bounds.
    pub fn queue_direct(
        &self,
        app: &AppId,
        peer: &PeerId,
        live: impl FnOnce() -> usize,
        frame: impl FnOnce() -> Frame,
    ) -> Queued {
        if !self.settings.enabled() {
            return Queued::NotParked;
        }
        let now = Instant::now();
        let mut shard = self.shard(app, peer);
        let delivered = live();
        if delivered > 0 {
            return Queued::Live(delivered);
        }
        let settings = self.settings;
        let Some(parked) = shard.live(&(app.clone(), peer.clone()), now) else {
            return Queued::NotParked;
        };
        let expired = parked.expire_inbox(now);
        let frame = frame();
        let outcome = if parked.inbox.len() >= settings.inbox_max_messages
            || parked.inbox_bytes + frame.len() > settings.inbox_max_bytes
        {
            Queued::Full
        } else {
            parked.inbox_bytes += frame.len();
            parked.inbox.push_back(Held {
                frame,
                expires: now + settings.inbox_ttl,
            });
            Queued::Queued
        };
        drop(shard);
        self.count_expired(expired);
        outcome
    }

    /// A connection of `peer` registers: `register` runs under the shard's lock, then every
    /// direct still waiting goes to `deliver` in the order it was sent. The positions stay
    /// until the peer's subscribes take them or the window ends.
    pub fn reconnect(
        &self,
        app: &AppId,
        peer: &PeerId,
        register: impl FnOnce(),
        mut deliver: impl FnMut(Frame),
    ) {
        if !self.settings.enabled() {
            register();
            return;
        }
        let now = Instant::now();
        let mut shard = self.shard(app, peer);
        register();
        let Some(parked) = shard.live(&(app.clone(), peer.clone()), now) else {
            return;
        };
        let expired = parked.expire_inbox(now);
        parked.inbox_bytes = 0;
        for held in parked.inbox.drain(..) {
            deliver(held.frame);
        }
        drop(shard);
        self.count_expired(expired);
    }

    /// Ends every window that is over (the engine calls this now and then, so memory and the
    /// expiry count do not wait for the next call on the same shard).
    pub fn sweep(&self) {
        let now = Instant::now();
        for shard in &self.shards {
            let expired = lock(shard).sweep(now);
            self.count_expired(expired);
        }
    }

    pub fn stats(&self) -> BookStats {
        let mut stats = BookStats {
            directs_expired: self.directs_expired.load(Ordering::Relaxed),
            ..BookStats::default()
        };
        for shard in &self.shards {
            let shard = lock(shard);
            stats.parked_peers += shard.peers.len();
            stats.inbox_directs += shard.peers.values().map(|p| p.inbox.len()).sum::<usize>();
        }
        stats
    }
}

#[cfg(test)]
#[path = "book_tests.rs"]
mod tests;
