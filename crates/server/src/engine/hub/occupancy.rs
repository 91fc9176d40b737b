//! Occupancy mode of large rooms (`[[presence.channels]]`), for both engines: above its roster
//! cap N, a channel stops sending per-member `joined`/`left` to watchers and sends counts.
//!
//! - A new subscriber's snapshot lists at most N members (the ones every watcher was shown
//!   when the room went over N, minus those gone since) plus `"occupancy":{"peers":n}`.
//! - Watchers get, at most once per [`COUNT_INTERVAL`] and only when the count changed, a
//!   `presence` frame with empty `joined`/`left` and the `occupancy` field.
//! - When the room shrinks back to N, each watcher gets one `presence` frame that repairs its
//!   roster: `left` for the peers it was shown that are gone, `joined` for the members it was
//!   never shown. After it the channel behaves as usual.
//!
//! A watcher's picture is known without keeping one per watcher: when the room goes over N,
//! every watcher holds the same roster (the *visible* set); during the episode only departures
//! of visible peers change what a new snapshot shows, so they are numbered, and a watcher's
//! picture is "the visible peers not departed before my snapshot's number". Memory is the
//! visible set (at most N) plus one number per watcher that subscribed during the episode.
//!
//! Everything here runs under the channel's lock; frames are encoded once and shared.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_protocol::glob::Pattern;
use herald_protocol::{encode, PresenceEntry};
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::channels::{Channel, ChannelKey, ChannelMap};
use super::frames::entry;
use crate::config::PresenceConfig;
use crate::conn::{Conn, Frame};
use crate::ids::{ConnId, PeerId};

/// The shortest time between two count frames of one channel.
pub const COUNT_INTERVAL: Duration = Duration::from_secs(1);

/// The roster caps of `[[presence.channels]]`, compiled.
#[derive(Default)]
pub struct OccupancyRules {
    groups: Vec<(Vec<Pattern>, usize)>,
}

impl OccupancyRules {
    pub fn new(config: &PresenceConfig) -> Self {
        OccupancyRules {
            groups: config
                .channels
                .iter()
                .map(|g| {
                    (
                        g.patterns.iter().map(|p| Pattern::parse(p)).collect(),
                        g.max_roster,
                    )
                })
                .collect(),
        }
    }

    /// The cap of a concrete channel: the first group that matches it.
    pub fn cap_for(&self, channel: &str) -> Option<usize> {
        self.groups
            .iter()
            .find(|(patterns, _)| patterns.iter().any(|p| p.matches(channel)))
            .map(|(_, cap)| *cap)
    }
}

/// What an engine's per-channel slot shows occupancy mode: its state and the channel's roster
/// (one entry per peer, with metadata).
pub trait OccupancySlot {
    fn room(&mut self) -> &mut RoomState;
    fn roster_len(&self) -> usize;
    fn has_member(&self, peer: &PeerId) -> bool;
    fn for_each_member(&self, f: &mut dyn FnMut(&PeerId, &Option<Arc<RawValue>>));
}

/// One channel's occupancy-mode state.
#[derive(Default)]
pub struct RoomState {
    /// The channel's cap, resolved on first use (`Some(None)`: no group matches).
    cap: Option<Option<usize>>,
    episode: Option<Episode>,
    /// The count watchers were last told (or could tell from their roster).
    announced: usize,
    last_count_sent: Option<Instant>,
    /// A timer is set to send the count; no second one is needed.
    tick_pending: bool,
}

/// A stretch of time above the cap.
struct Episode {
    /// The roster every watcher held when the room went over the cap: peer → its metadata and
    /// the number of its first departure since (none while it stayed).
    visible: HashMap<PeerId, (Option<Arc<RawValue>>, Option<u64>)>,
    /// Departures of visible peers so far.
    departures: u64,
    /// Watchers that subscribed during the episode → `departures` when their snapshot was
    /// taken (absent: they were there before, and hold the whole visible set).
    subscribed_at: HashMap<ConnId, u64>,
}

/// What the engine does about a member joining or leaving.
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Send the per-member delta, as outside occupancy mode.
    Announce,
    /// Handled here (count sent, or roster repaired); if `Some`, call [`on_tick`] at that
    /// instant to send the count.
    Handled(Option<Instant>),
}

impl RoomState {
    fn cap(&mut self, rules: &OccupancyRules, channel: &str) -> Option<usize> {
        *self.cap.get_or_insert_with(|| rules.cap_for(channel))
    }

    /// The count changed while over the cap: true to send it now; otherwise a timer is due
    /// (returned unless one is set already).
    fn count_due(&mut self, now: Instant) -> Result<(), Option<Instant>> {
        match self.last_count_sent {
            Some(last) if now < last + COUNT_INTERVAL => {
                if self.tick_pending {
                    return Err(None);
                }
                self.tick_pending = true;
                Err(Some(last + COUNT_INTERVAL))
            }
            _ => Ok(()),
        }
    }
}

/// Sends the count to every watcher, once encoded, unless they have it already.
fn send_count<S: OccupancySlot>(ch: &mut Channel<S>, channel: &str, now: Instant) {
    let count = ch.slot.roster_len();
    if count == ch.slot.room().announced {
        return;
    }
    let frame = Frame::from(encode::presence_with_occupancy(channel, &[], &[], count));
    for sub in ch.subscribers().filter(|s| s.conn.receives_presence) {
        sub.conn.deliver(frame.clone());
    }
    let room = ch.slot.room();
    room.announced = count;
    room.last_count_sent = Some(now);
}

/// The count changed while over the cap: send it, or ask for a timer.
fn count_changed<S: OccupancySlot>(ch: &mut Channel<S>, channel: &str, now: Instant) -> Change {
    match ch.slot.room().count_due(now) {
        Ok(()) => {
            send_count(ch, channel, now);
            Change::Handled(None)
        }
        Err(at) => Change::Handled(at),
    }
}

/// The snapshot for `conn` while the channel is over its cap (`None`: not in occupancy mode,
/// send the usual full snapshot). Lists the visible peers that have not left: at most the cap,
/// since the visible set is what watchers held at the cap. (On the Redis engine, joins racing
/// the crossing can make that a few more; they are listed all the same, so the repair, which
/// assumes a watcher was shown exactly them, stays exact.)
pub fn snapshot<S: OccupancySlot>(
    ch: &mut Channel<S>,
    rules: &OccupancyRules,
    channel: &str,
    conn: &Conn,
) -> Option<Frame> {
    ch.slot.room().cap(rules, channel)?;
    // The count the subscriber will be part of.
    let count = ch.slot.roster_len() + usize::from(!ch.slot.has_member(&conn.peer_id));
    let episode = ch.slot.room().episode.as_mut()?;
    episode.subscribed_at.insert(conn.id, episode.departures);
    let shown: Vec<PresenceEntry<'_>> = episode
        .visible
        .iter()
        .filter(|(peer, (_, departed))| departed.is_none() && **peer != conn.peer_id)
        .map(|(peer, (metadata, _))| entry(peer, metadata))
        .collect();
    Some(Frame::from(encode::presence_with_occupancy(
        channel,
        &shown,
        &[],
        count,
    )))
}

/// True when the channel has a cap and its roster is above it: the next join is handled by
/// occupancy mode (an engine that coalesces deltas sends the waiting ones first, since the
/// mode assumes every watcher holds the roster as it stands).
pub fn over_cap<S: OccupancySlot>(
    ch: &mut Channel<S>,
    rules: &OccupancyRules,
    channel: &str,
) -> bool {
    let Some(cap) = ch.slot.room().cap(rules, channel) else {
        return false;
    };
    ch.slot.roster_len() > cap
}

/// A peer's first connection joined (it is in the roster already).
pub fn on_join<S: OccupancySlot>(
    ch: &mut Channel<S>,
    rules: &OccupancyRules,
    channel: &str,
    peer: &PeerId,
    now: Instant,
) -> Change {
    if !over_cap(ch, rules, channel) {
        return Change::Announce;
    }
    if ch.slot.room().episode.is_none() {
        // Over the cap: every watcher holds the roster as it was before this join.
        let count = ch.slot.roster_len();
        start_episode(ch, peer, count, count - 1);
    }
    count_changed(ch, channel, now)
}

/// A peer's last connection left (it is out of the roster already).
pub fn on_leave<S: OccupancySlot>(
    ch: &mut Channel<S>,
    rules: &OccupancyRules,
    channel: &str,
    peer: &PeerId,
    now: Instant,
) -> Change {
    let Some(cap) = ch.slot.room().cap(rules, channel) else {
        return Change::Announce;
    };
    if ch.slot.room().episode.is_none() {
        return Change::Announce;
    }
    on_leave_marked(ch, peer);
    settle(ch, channel, cap, now)
}

/// In an episode after a change: the count while over the cap, the repair back at it.
fn settle<S: OccupancySlot>(
    ch: &mut Channel<S>,
    channel: &str,
    cap: usize,
    now: Instant,
) -> Change {
    let count = ch.slot.roster_len();
    if count > cap {
        return count_changed(ch, channel, now);
    }
    let room = ch.slot.room();
    let episode = room.episode.take();
    room.announced = count;
    if let Some(episode) = episode {
        repair(ch, channel, &episode);
    }
    Change::Handled(None)
}

/// The timer [`Change::Handled`] asked for: sends the count if it changed since last sent.
pub fn on_tick<S: OccupancySlot>(ch: &mut Channel<S>, channel: &str, now: Instant) {
    ch.slot.room().tick_pending = false;
    if ch.slot.room().episode.is_some() {
        send_count(ch, channel, now);
    }
}

/// Comes back to the channel at `at` to send its count ([`Change::Handled`] asked for it).
pub fn schedule_count<S: OccupancySlot + Default + Send + 'static>(
    channels: &ChannelMap<S>,
    key: &ChannelKey,
    at: Instant,
) {
    let Some(room) = channels.get_ref(key) else {
        return;
    };
    let channel = key.1.clone();
    tokio::spawn(async move {
        tokio::time::sleep_until(at).await;
        room.with(|ch| on_tick(ch, channel.as_str(), Instant::now()));
    });
}

/// After the roster was read whole for `me`, the first local subscriber (on an engine whose
/// roster lives elsewhere): over the cap with no episode, start one that shows the first `cap`
/// members other than `me`.
pub fn start_if_over<S: OccupancySlot>(
    ch: &mut Channel<S>,
    rules: &OccupancyRules,
    channel: &str,
    me: &PeerId,
) {
    let Some(cap) = ch.slot.room().cap(rules, channel) else {
        return;
    };
    let count = ch.slot.roster_len();
    if count <= cap || ch.slot.room().episode.is_some() {
        return;
    }
    start_episode(ch, me, cap, count);
}

/// Starts an episode whose visible set is up to `limit` members other than `except`, with
/// `announced` the count watchers are taken to know.
fn start_episode<S: OccupancySlot>(
    ch: &mut Channel<S>,
    except: &PeerId,
    limit: usize,
    announced: usize,
) {
    let mut visible = HashMap::with_capacity(limit);
    ch.slot.for_each_member(&mut |p, metadata| {
        if visible.len() < limit && p != except {
            visible.insert(p.clone(), (metadata.clone(), None));
        }
    });
    let room = ch.slot.room();
    room.announced = announced;
    room.episode = Some(Episode {
        visible,
        departures: 0,
        subscribed_at: HashMap::new(),
    });
}

/// The roster was replaced by one read from elsewhere (a re-sync after lost deltas); `before`
/// is what watchers were told. Over the cap, or in an episode, no per-member frames: the peers
/// watchers were shown that are gone count as departed, then the count goes out, or, back at
/// the cap, the repair. `Announce`: send the per-member differences as usual.
pub fn roster_replaced<S: OccupancySlot>(
    ch: &mut Channel<S>,
    rules: &OccupancyRules,
    channel: &str,
    before: &HashMap<PeerId, Option<Arc<RawValue>>>,
    now: Instant,
) -> Change {
    let Some(cap) = ch.slot.room().cap(rules, channel) else {
        return Change::Announce;
    };
    let count = ch.slot.roster_len();
    if ch.slot.room().episode.is_none() {
        if count <= cap {
            return Change::Announce;
        }
        let visible = before
            .iter()
            .map(|(peer, metadata)| (peer.clone(), (metadata.clone(), None)))
            .collect();
        let room = ch.slot.room();
        room.announced = before.len();
        room.episode = Some(Episode {
            visible,
            departures: 0,
            subscribed_at: HashMap::new(),
        });
    }
    // Shown peers still believed here: those gone now departed, unannounced.
    let shown: Vec<PeerId> = ch
        .slot
        .room()
        .episode
        .as_ref()
        .map(|e| {
            e.visible
                .iter()
                .filter(|(_, (_, departed))| departed.is_none())
                .map(|(peer, _)| peer.clone())
                .collect()
        })
        .unwrap_or_default();
    for peer in shown {
        if !ch.slot.has_member(&peer) {
            on_leave_marked(ch, &peer);
        }
    }
    settle(ch, channel, cap, now)
}

/// Numbers the departure of a visible peer (its first only).
fn on_leave_marked<S: OccupancySlot>(ch: &mut Channel<S>, peer: &PeerId) {
    if let Some(episode) = ch.slot.room().episode.as_mut() {
        if let Some((_, departed @ None)) = episode.visible.get_mut(peer) {
            episode.departures += 1;
            *departed = Some(episode.departures);
        }
    }
}

/// A subscriber left: forget its snapshot's number.
pub fn forget<S: OccupancySlot>(ch: &mut Channel<S>, conn: ConnId) {
    if let Some(episode) = ch.slot.room().episode.as_mut() {
        episode.subscribed_at.remove(&conn);
    }
}

/// Back at the cap: gives each watcher `left` for the peers it was shown that are gone and
/// `joined` for the members it was never shown, in one frame with the count.
fn repair<S: OccupancySlot>(ch: &Channel<S>, channel: &str, episode: &Episode) {
    let slot = &ch.slot;
    // Visible peers gone now, and visible peers that left and came back, by departure number.
    let mut gone: Vec<(u64, &PeerId, &Option<Arc<RawValue>>)> = Vec::new();
    let mut returned: Vec<(u64, &PeerId)> = Vec::new();
    for (peer, (metadata, departed)) in &episode.visible {
        if let Some(d) = *departed {
            if slot.has_member(peer) {
                returned.push((d, peer));
            } else {
                gone.push((d, peer, metadata));
            }
        }
    }
    gone.sort_unstable_by_key(|(d, ..)| *d);
    returned.sort_unstable_by_key(|(d, _)| *d);
    // Members nobody was shown during the episode.
    let mut unseen: Vec<(PeerId, Option<Arc<RawValue>>)> = Vec::new();
    let mut metadata_of: HashMap<PeerId, Option<Arc<RawValue>>> = HashMap::new();
    slot.for_each_member(&mut |peer, metadata| match episode.visible.get(peer) {
        None => unseen.push((peer.clone(), metadata.clone())),
        Some((_, Some(_))) => {
            metadata_of.insert(peer.clone(), metadata.clone());
        }
        Some((_, None)) => {}
    });
    let count = slot.roster_len();
    // Watchers with the same snapshot number get the same frame (unless it would name them).
    let mut frames: HashMap<(u64, Option<&PeerId>), Frame> = HashMap::new();
    for sub in ch.subscribers().filter(|s| s.conn.receives_presence) {
        let at = episode
            .subscribed_at
            .get(&sub.conn.id)
            .copied()
            .unwrap_or(0);
        let me = &sub.conn.peer_id;
        let named = match episode.visible.get(me) {
            None => true,
            Some((_, departed)) => departed.is_some_and(|d| d <= at),
        };
        let key = (at, named.then_some(me));
        let frame = frames.entry(key).or_insert_with(|| {
            let left: Vec<PresenceEntry<'_>> = gone
                .iter()
                .filter(|(d, ..)| *d > at)
                .map(|(_, p, m)| entry(p, m))
                .collect();
            let none = None;
            let joined: Vec<PresenceEntry<'_>> = unseen
                .iter()
                .map(|(p, m)| entry(p, m))
                .chain(
                    returned
                        .iter()
                        .filter(|(d, _)| *d <= at)
                        .map(|(_, p)| entry(p, metadata_of.get(*p).unwrap_or(&none))),
                )
                .filter(|e| e.peer_id != me.as_str())
                .collect();
            Frame::from(encode::presence_with_occupancy(
                channel, &joined, &left, count,
            ))
        });
        sub.conn.deliver(frame.clone());
    }
}
