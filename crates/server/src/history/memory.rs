//! The memory store: one ring per channel, bounded by the channel's count and age, and all of
//! them together by the node-wide byte cap, past which the oldest entry of any channel goes
//! first.
//!
//! - A ring holds consecutive offsets and is trimmed from its front only.
//! - Every appended entry also leaves a *mark* in the queue of its channel's `max_age` (one
//!   queue per distinct age, so one per `[[history.channels]]` group at most). Within a queue,
//!   marks are in append order, so its front is both the oldest entry and the next to expire:
//!   expiry pops fronts while they are too old, and the byte cap pops the oldest front of all
//!   queues. Neither scans. Entries trimmed by count leave *stale* marks, skipped when they
//!   reach a front; when stale marks outnumber live ones the queues are compacted, so an
//!   append costs O(1) amortised (plus one look at each queue's front) and the marks stay
//!   below twice the live entries.
//! - A ring that empties is dropped; the channel's next message starts a new epoch (its
//!   history was lost), so an idle channel costs nothing.
//! - Age is read on tokio's clock: on every append (every queue's expired fronts go), on every
//!   read of the channel, and by [`HistoryStore::expire`] when nothing is appended.
//!
//! One mutex guards it all: every section is a few deque operations.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::mem::size_of;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{
    Appended, HistoryError, HistoryKey, HistoryStore, NewMessage, Page, PageQuery, Policy,
    Retained, StoredMessage,
};
use crate::clock::unix_now_ms;
use crate::sync::lock;

/// Where an entry is: the channel, the ring's generation, the offset, and when it was appended.
struct Mark {
    key: HistoryKey,
    generation: u64,
    offset: u64,
    at: Instant,
}

/// The marks of every entry appended under one `max_age`, in append order.
struct AgeQueue {
    max_age: Duration,
    marks: VecDeque<Mark>,
}

/// What an entry costs beyond its strings: the message struct and its `Arc` header, its slot
/// in the ring and its mark.
pub const ENTRY_OVERHEAD: usize = size_of::<StoredMessage>()
    + 2 * size_of::<usize>()
    + size_of::<Arc<StoredMessage>>()
    + size_of::<Mark>();

/// The bytes an entry is charged against `max_memory_bytes`.
pub fn entry_cost(message: &StoredMessage) -> usize {
    ENTRY_OVERHEAD
        + message.from.as_str().len()
        + message.from_metadata.as_ref().map_or(0, |m| m.get().len())
        + message.data.get().len()
}

struct Ring {
    epoch: Arc<str>,
    /// Tells this ring from an earlier one of the same channel (for the marks).
    generation: u64,
    next_offset: u64,
    entries: VecDeque<Arc<StoredMessage>>,
    max_age: Duration,
}

impl Ring {
    /// An empty ring: a fresh epoch at offset 1, and the next generation.
    fn new(generations: &mut u64) -> Self {
        *generations += 1;
        Ring {
            epoch: new_epoch(),
            generation: *generations,
            next_offset: 1,
            entries: VecDeque::new(),
            max_age: Duration::MAX,
        }
    }

    fn first_offset(&self) -> u64 {
        self.entries.front().map_or(self.next_offset, |e| e.offset)
    }

    /// Pops entries whose age reached `max_age`; returns their cost.
    fn trim_age(&mut self, now: Instant) -> (usize, usize) {
        let (mut bytes, mut count) = (0, 0);
        while let Some(front) = self.entries.front() {
            if now.saturating_duration_since(front.at) < self.max_age {
                break;
            }
            bytes += entry_cost(front);
            count += 1;
            self.entries.pop_front();
        }
        (bytes, count)
    }

    fn retained(&self, range: std::ops::Range<usize>) -> Retained {
        Retained {
            epoch: Some(self.epoch.clone()),
            messages: self.entries.range(range).cloned().collect(),
        }
    }
}

#[derive(Default)]
struct Inner {
    rings: HashMap<HistoryKey, Ring>,
    queues: Vec<AgeQueue>,
    /// Marks in all queues, stale ones included.
    marks: usize,
    /// Entries in all rings.
    live: usize,
    /// Their cost.
    bytes: usize,
    generations: u64,
}

impl Inner {
    fn forget(&mut self, bytes: usize, count: usize) {
        self.bytes -= bytes;
        self.live -= count;
    }

    /// Trims a channel's expired entries, dropping its ring when it empties.
    fn trim_age(&mut self, key: &HistoryKey, now: Instant) {
        let Some(ring) = self.rings.get_mut(key) else {
            return;
        };
        let (bytes, count) = ring.trim_age(now);
        let empty = ring.entries.is_empty();
        self.forget(bytes, count);
        if empty {
            self.rings.remove(key);
        }
    }

    fn mark(&mut self, key: &HistoryKey, generation: u64, offset: u64, at: Instant, age: Duration) {
        let mark = Mark {
            key: key.clone(),
            generation,
            offset,
            at,
        };
        match self.queues.iter_mut().find(|q| q.max_age == age) {
            Some(queue) => queue.marks.push_back(mark),
            None => self.queues.push(AgeQueue {
                max_age: age,
                marks: VecDeque::from([mark]),
            }),
        }
        self.marks += 1;
    }

    fn is_live(rings: &HashMap<HistoryKey, Ring>, mark: &Mark) -> bool {
        rings
            .get(&mark.key)
            .is_some_and(|r| r.generation == mark.generation && mark.offset >= r.first_offset())
    }

    /// Drops the stale marks at the front of queue `q`; its front is then live (or absent).
    fn skip_stale(&mut self, q: usize) {
        let (rings, queue) = (&self.rings, &mut self.queues[q]);
        while queue
            .marks
            .front()
            .is_some_and(|m| !Self::is_live(rings, m))
        {
            queue.marks.pop_front();
            self.marks -= 1;
        }
    }

    /// Drops the entry of queue `q`'s front mark, which is live: it is its ring's front.
    fn drop_front(&mut self, q: usize) {
        let Some(mark) = self.queues[q].marks.pop_front() else {
            return;
        };
        self.marks -= 1;
        let Some(ring) = self.rings.get_mut(&mark.key) else {
            return;
        };
        let cost = ring.entries.pop_front().map_or(0, |e| entry_cost(&e));
        let empty = ring.entries.is_empty();
        self.forget(cost, 1);
        if empty {
            self.rings.remove(&mark.key);
        }
    }

    /// Drops the node's oldest live entry. False when there is none.
    fn evict_oldest(&mut self) -> bool {
        let mut oldest: Option<(usize, Instant)> = None;
        for q in 0..self.queues.len() {
            self.skip_stale(q);
            if let Some(front) = self.queues[q].marks.front() {
                if oldest.is_none_or(|(_, at)| front.at < at) {
                    oldest = Some((q, front.at));
                }
            }
        }
        let Some((q, _)) = oldest else {
            return false;
        };
        self.drop_front(q);
        true
    }

    /// Drops every entry whose age reached its `max_age`, queue by queue from the front.
    fn expire(&mut self, now: Instant) {
        for q in 0..self.queues.len() {
            loop {
                self.skip_stale(q);
                let queue = &self.queues[q];
                match queue.marks.front() {
                    Some(front) if now.saturating_duration_since(front.at) >= queue.max_age => {
                        self.drop_front(q)
                    }
                    _ => break,
                }
            }
        }
    }

    /// Drops stale marks once they outnumber the live ones (amortised O(1) per append).
    fn compact(&mut self) {
        if self.marks > 2 * self.live + 64 {
            let rings = &self.rings;
            let mut kept = 0;
            for queue in &mut self.queues {
                queue.marks.retain(|m| Self::is_live(rings, m));
                kept += queue.marks.len();
            }
            self.queues.retain(|q| !q.marks.is_empty());
            self.marks = kept;
        }
    }
}

/// See the module's doc.
pub struct MemoryStore {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// A store holding at most `max_bytes` of entries (see [`entry_cost`]).
    pub fn new(max_bytes: u64) -> Self {
        MemoryStore {
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Bytes charged now, and entries retained.
    pub fn usage(&self) -> (usize, usize) {
        let inner = lock(&self.inner);
        (inner.bytes, inner.live)
    }

    /// Marks in the age queues, stale ones included (for tests of their bound).
    pub fn marks(&self) -> usize {
        lock(&self.inner).marks
    }

    /// A channel's epoch and first retained offset, or `None` when it retains nothing (the
    /// disk store deletes what lies below it).
    pub fn span(&self, key: &HistoryKey) -> Option<(Arc<str>, u64)> {
        let inner = lock(&self.inner);
        let ring = inner.rings.get(key)?;
        Some((ring.epoch.clone(), ring.first_offset()))
    }

    /// Puts back a message kept elsewhere (the disk store, at start), with its own epoch,
    /// offset and time, then trims as an append does. Messages must come in append order
    /// across all channels (their `at`), and each channel's consecutively; one that does not
    /// follow its channel's last is refused (false).
    pub fn restore(
        &self,
        key: &HistoryKey,
        policy: &Policy,
        epoch: &Arc<str>,
        message: StoredMessage,
    ) -> bool {
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        let ring = match inner.rings.entry(key.clone()) {
            Entry::Occupied(ring) => ring.into_mut(),
            Entry::Vacant(slot) => {
                let ring = slot.insert(Ring::new(&mut inner.generations));
                ring.epoch = epoch.clone();
                ring.next_offset = message.offset;
                ring
            }
        };
        if ring.epoch != *epoch || ring.next_offset != message.offset {
            return false;
        }
        ring.max_age = policy.max_age;
        ring.next_offset += 1;
        let (offset, at) = (message.offset, message.at);
        let mut added = entry_cost(&message) as isize;
        let mut live = 1;
        ring.entries.push_back(Arc::new(message));
        while ring.entries.len() > policy.max_messages {
            if let Some(old) = ring.entries.pop_front() {
                added -= entry_cost(&old) as isize;
                live -= 1;
            }
        }
        let generation = ring.generation;
        inner.bytes = inner.bytes.saturating_add_signed(added);
        inner.live = inner.live.saturating_add_signed(live);
        inner.mark(key, generation, offset, at, policy.max_age);
        inner.expire(Instant::now());
        while inner.bytes > self.max_bytes && inner.evict_oldest() {}
        inner.compact();
        true
    }
}

fn new_epoch() -> Arc<str> {
    let bits: u64 = rand::random();
    Arc::from(format!("{:012x}", bits & 0xffff_ffff_ffff))
}

impl HistoryStore for MemoryStore {
    fn append(
        &self,
        key: &HistoryKey,
        policy: &Policy,
        message: NewMessage<'_>,
    ) -> Result<Appended, HistoryError> {
        let now = Instant::now();
        // Copied before the lock: the store's critical section stays a few deque operations.
        let mut stored = StoredMessage {
            offset: 0,
            ts: unix_now_ms(),
            at: now,
            from: message.from.clone(),
            from_metadata: message.from_metadata.map(ToOwned::to_owned),
            data: message.data.to_owned(),
        };
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        let ring = match inner.rings.entry(key.clone()) {
            Entry::Occupied(ring) => ring.into_mut(),
            Entry::Vacant(slot) => slot.insert(Ring::new(&mut inner.generations)),
        };
        ring.max_age = policy.max_age;
        let (expired_bytes, expired) = ring.trim_age(now);
        if ring.entries.is_empty() && ring.next_offset > 1 {
            // Everything retained expired: the history was lost, a new epoch begins.
            *ring = Ring::new(&mut inner.generations);
            ring.max_age = policy.max_age;
        }
        stored.offset = ring.next_offset;
        let appended = Appended {
            epoch: ring.epoch.clone(),
            offset: stored.offset,
            ts: stored.ts,
        };
        ring.next_offset += 1;
        let mut added = entry_cost(&stored) as isize - expired_bytes as isize;
        let mut live = 1 - expired as isize;
        ring.entries.push_back(Arc::new(stored));
        while ring.entries.len() > policy.max_messages {
            if let Some(old) = ring.entries.pop_front() {
                added -= entry_cost(&old) as isize;
                live -= 1;
            }
        }
        let generation = ring.generation;
        inner.bytes = inner.bytes.saturating_add_signed(added);
        inner.live = inner.live.saturating_add_signed(live);
        inner.mark(key, generation, appended.offset, now, policy.max_age);
        inner.expire(now);
        while inner.bytes > self.max_bytes && inner.evict_oldest() {}
        inner.compact();
        Ok(appended)
    }

    fn latest(&self, key: &HistoryKey, n: usize) -> Result<Retained, HistoryError> {
        let mut inner = lock(&self.inner);
        inner.trim_age(key, Instant::now());
        Ok(inner.rings.get(key).map_or_else(Retained::default, |ring| {
            let len = ring.entries.len();
            ring.retained(len.saturating_sub(n)..len)
        }))
    }

    fn page(&self, key: &HistoryKey, query: &PageQuery) -> Result<Page, HistoryError> {
        let mut inner = lock(&self.inner);
        inner.trim_age(key, Instant::now());
        let Some(ring) = inner.rings.get(key) else {
            return Ok(Page::default());
        };
        // Offsets are consecutive: offset `o` sits at index `o - first`.
        let first = ring.first_offset();
        let len = ring.entries.len() as u64;
        let index = |offset: u64| offset.saturating_sub(first).min(len);
        let low = query.after.map_or(0, |a| index(a.saturating_add(1)));
        let high = query.before.map_or(len, index).max(low);
        let start = high.saturating_sub(query.limit as u64).max(low);
        Ok(Page {
            retained: ring.retained(start as usize..high as usize),
            has_more: start > low,
        })
    }

    fn expire(&self) {
        let mut inner = lock(&self.inner);
        inner.expire(Instant::now());
        inner.compact();
    }
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
