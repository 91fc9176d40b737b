//! The bounded queue between the Redis connection and the bus task.
//!
//! The redis crate reads pub/sub pushes off the socket as fast as they come and hands each to a
//! push sender without waiting. If that sender were an unbounded channel, a node that cannot
//! keep up (a flood published on another node, a CPU-starved host) would buffer without limit.
//! The inbox is that sender: it holds at most `engine.bus_queue_messages` pushes and
//! `engine.bus_queue_bytes` of payload. Beyond either bound pushes are **shed**, from the topic
//! with the most queued (the flood, not the quiet channel next to it). Shed pushes are counted,
//! and the node re-syncs channel rosters from Redis once it has caught up, so a lost presence
//! delta is repaired; a lost message is counted as dropped, as a slow consumer's would be.
//! Shedding never reorders: FIFO holds for everything that is delivered. Since at most a full
//! queue waits ahead of any push, the bound also caps the delay a flood adds to other traffic.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use redis::{PushInfo, PushKind, Value};
use tokio::sync::Notify;

use crate::engine::BusQueueStats;
use crate::sync::lock;

/// A message pushed by Redis: its topic, payload, and whether it came through `PSUBSCRIBE`.
pub struct Push {
    pub topic: String,
    pub payload: Vec<u8>,
    pub from_pattern: bool,
}

impl Push {
    /// What a push holds in memory, roughly: payload, topic and the entry itself.
    fn cost(&self) -> usize {
        self.payload.len() + self.topic.len() + std::mem::size_of::<Push>()
    }
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Push>,
    bytes: usize,
    /// Pushes queued per topic, to find the topic that floods the queue.
    per_topic: HashMap<String, usize>,
}

impl Queue {
    fn push_back(&mut self, push: Push) {
        self.bytes += push.cost();
        match self.per_topic.get_mut(push.topic.as_str()) {
            Some(n) => *n += 1,
            None => {
                self.per_topic.insert(push.topic.clone(), 1);
            }
        }
        self.items.push_back(push);
    }

    fn forget(&mut self, push: &Push) {
        self.bytes -= push.cost();
        if let Some(n) = self.per_topic.get_mut(push.topic.as_str()) {
            *n -= 1;
            if *n == 0 {
                self.per_topic.remove(push.topic.as_str());
            }
        }
    }

    fn pop_front(&mut self) -> Option<Push> {
        let push = self.items.pop_front()?;
        self.forget(&push);
        Some(push)
    }

    fn is_full_for(&self, cost: usize, max_messages: usize, max_bytes: usize) -> bool {
        // A push larger than the byte bound still gets in when nothing else is queued, so a
        // tight byte bound cannot starve every large message.
        self.items.len() >= max_messages
            || (!self.items.is_empty() && self.bytes + cost > max_bytes)
    }

    /// The topic with the most pushes queued, and how many.
    fn heaviest(&self) -> Option<(&str, usize)> {
        self.per_topic
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(topic, n)| (topic.as_str(), *n))
    }

    /// Drops the oldest queued push of `topic`.
    fn evict_oldest_of(&mut self, topic: &str) {
        let Some(i) = self.items.iter().position(|p| p.topic == topic) else {
            return;
        };
        if let Some(push) = self.items.remove(i) {
            self.forget(&push);
        }
    }
}

pub struct Inbox {
    /// A leaf lock: held only to push or pop, never with another lock.
    queue: Mutex<Queue>,
    max_messages: usize,
    max_bytes: usize,
    /// Wakes the bus task when pushes arrive or the connection drops.
    ready: Notify,
    /// The connection the pushes come from; pushes of an older one are ignored.
    epoch: AtomicU64,
    /// The current connection reported its end.
    disconnected: AtomicBool,
    /// Something was shed since the bus task last asked: rosters need a re-sync.
    gap: AtomicBool,
    /// Pushes shed so far; shared with the node's roster mirrors, which a loss invalidates.
    shed: Arc<AtomicU64>,
    peak: AtomicUsize,
}

impl Inbox {
    pub fn new(max_messages: usize, max_bytes: usize) -> Inbox {
        Inbox {
            queue: Mutex::new(Queue::default()),
            max_messages: max_messages.max(1),
            max_bytes: max_bytes.max(1),
            ready: Notify::new(),
            epoch: AtomicU64::new(0),
            disconnected: AtomicBool::new(false),
            gap: AtomicBool::new(false),
            shed: Arc::new(AtomicU64::new(0)),
            peak: AtomicUsize::new(0),
        }
    }

    /// Starts accepting pushes from a new connection (after a reconnect): what the old one
    /// queued is forgotten, since the re-subscribe that follows re-syncs rosters anyway.
    pub fn new_connection(&self) -> u64 {
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        *lock(&self.queue) = Queue::default();
        self.disconnected.store(false, Ordering::Release);
        epoch
    }

    /// The push sender of the connection of `epoch`. It never blocks: the redis crate calls it
    /// on the task that reads the socket.
    pub fn offer(&self, epoch: u64, info: PushInfo) {
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        let push = match info.kind {
            PushKind::Disconnection => {
                self.disconnected.store(true, Ordering::Release);
                self.ready.notify_one();
                return;
            }
            PushKind::Message | PushKind::SMessage => match <[Value; 2]>::try_from(info.data) {
                Ok([Value::BulkString(topic), Value::BulkString(payload)]) => Push {
                    topic: String::from_utf8_lossy(&topic).into_owned(),
                    payload,
                    from_pattern: false,
                },
                _ => return,
            },
            PushKind::PMessage => match <[Value; 3]>::try_from(info.data) {
                Ok([_, Value::BulkString(topic), Value::BulkString(payload)]) => Push {
                    topic: String::from_utf8_lossy(&topic).into_owned(),
                    payload,
                    from_pattern: true,
                },
                _ => return,
            },
            // Subscription confirmations and the like carry nothing to deliver.
            _ => return,
        };
        self.push(push);
    }

    /// Queues a push. When either bound would be exceeded, the topic with the most pushes
    /// queued pays: its oldest pushes are dropped to make room, or the newcomer is when it
    /// belongs to that topic. So a flood on one channel sheds its own traffic, and a quiet
    /// channel's messages still get through, in order, behind at most a full queue.
    pub fn push(&self, push: Push) {
        let cost = push.cost();
        let (queued, shed) = {
            let mut queue = lock(&self.queue);
            let mut shed = 0u64;
            let mut admit = true;
            while queue.is_full_for(cost, self.max_messages, self.max_bytes) {
                shed += 1;
                let own = queue
                    .per_topic
                    .get(push.topic.as_str())
                    .copied()
                    .unwrap_or(0);
                let heaviest = match queue.heaviest() {
                    Some((topic, n)) if n > own + 1 => topic.to_string(),
                    _ => {
                        admit = false;
                        break;
                    }
                };
                queue.evict_oldest_of(&heaviest);
            }
            if admit {
                queue.push_back(push);
            }
            // Counted before any later push can be taken: a mirror that applied a later delta
            // must see that an earlier one was lost.
            if shed > 0 {
                self.shed.fetch_add(shed, Ordering::AcqRel);
            }
            (admit.then_some(queue.items.len()), shed)
        };
        if let Some(len) = queued {
            self.peak.fetch_max(len, Ordering::Relaxed);
            if len == 1 {
                self.ready.notify_one();
            }
        }
        if shed > 0 && !self.gap.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                max_messages = self.max_messages,
                max_bytes = self.max_bytes,
                "bus queue full: shedding pushes from redis; rosters will be re-synced"
            );
        }
    }

    /// Waits until there is something to do: pushes queued, or the connection dropped.
    pub async fn ready(&self) {
        loop {
            let notified = self.ready.notified();
            if self.has_work() {
                return;
            }
            notified.await;
        }
    }

    fn has_work(&self) -> bool {
        self.disconnected.load(Ordering::Acquire) || !lock(&self.queue).items.is_empty()
    }

    /// Moves up to `max` queued pushes into `out`, oldest first.
    pub fn take(&self, out: &mut Vec<Push>, max: usize) {
        let mut queue = lock(&self.queue);
        for _ in 0..max {
            let Some(push) = queue.pop_front() else { break };
            out.push(push);
        }
    }

    /// Asks the bus task to come back for more.
    pub fn wake(&self) {
        self.ready.notify_one();
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.queue).items.is_empty()
    }

    /// True once when the current connection has reported its end.
    pub fn take_disconnected(&self) -> bool {
        self.disconnected.swap(false, Ordering::AcqRel)
    }

    /// The count of pushes shed so far, as a shared counter.
    pub fn shed_counter(&self) -> Arc<AtomicU64> {
        self.shed.clone()
    }

    /// True once after pushes were shed.
    pub fn take_gap(&self) -> bool {
        self.gap.swap(false, Ordering::AcqRel)
    }

    pub fn stats(&self) -> BusQueueStats {
        let (queued, queued_bytes) = {
            let queue = lock(&self.queue);
            (queue.items.len(), queue.bytes)
        };
        BusQueueStats {
            queued,
            queued_bytes,
            peak: self.peak.load(Ordering::Relaxed),
            shed: self.shed.load(Ordering::Relaxed),
            ..BusQueueStats::default()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn message(topic: &str, payload: &str) -> PushInfo {
        PushInfo {
            kind: PushKind::Message,
            data: vec![
                Value::BulkString(topic.as_bytes().to_vec()),
                Value::BulkString(payload.as_bytes().to_vec()),
            ],
        }
    }

    fn drain(inbox: &Inbox) -> Vec<String> {
        let mut out = Vec::new();
        inbox.take(&mut out, usize::MAX);
        out.into_iter()
            .map(|p| String::from_utf8(p.payload).unwrap())
            .collect()
    }

    #[test]
    fn sheds_the_newest_beyond_the_count_bound_and_keeps_order() {
        let inbox = Inbox::new(3, 1 << 20);
        let epoch = inbox.new_connection();
        for i in 0..5 {
            inbox.offer(epoch, message("t", &i.to_string()));
        }
        let stats = inbox.stats();
        assert_eq!((stats.queued, stats.peak, stats.shed), (3, 3, 2));
        assert!(inbox.take_gap());
        assert!(!inbox.take_gap());
        assert_eq!(drain(&inbox), ["0", "1", "2"]);
        assert_eq!(inbox.stats().queued_bytes, 0);
    }

    #[test]
    fn a_flooded_topic_pays_for_the_shedding_not_a_quiet_one() {
        let inbox = Inbox::new(4, 1 << 20);
        let epoch = inbox.new_connection();
        inbox.offer(epoch, message("quiet", "q0"));
        for i in 0..6 {
            inbox.offer(epoch, message("flood", &format!("f{i}")));
        }
        inbox.offer(epoch, message("quiet", "q1"));
        assert_eq!(inbox.stats().shed, 4);
        assert_eq!(drain(&inbox), ["q0", "f1", "f2", "q1"]);
    }

    #[test]
    fn sheds_beyond_the_byte_bound_but_always_admits_one() {
        let big = "x".repeat(1000);
        let inbox = Inbox::new(100, 500);
        let epoch = inbox.new_connection();
        inbox.offer(epoch, message("t", &big));
        inbox.offer(epoch, message("t", "small"));
        assert_eq!(inbox.stats().shed, 1);
        assert_eq!(drain(&inbox), [big]);
    }

    #[test]
    fn ignores_an_old_connection_and_reports_a_drop_once() {
        let inbox = Inbox::new(10, 1 << 20);
        let old = inbox.new_connection();
        let current = inbox.new_connection();
        inbox.offer(old, message("t", "stale"));
        inbox.offer(old, disconnection());
        assert!(inbox.is_empty());
        assert!(!inbox.take_disconnected());
        inbox.offer(current, disconnection());
        assert!(inbox.take_disconnected());
        assert!(!inbox.take_disconnected());
    }

    fn disconnection() -> PushInfo {
        PushInfo {
            kind: PushKind::Disconnection,
            data: vec![],
        }
    }
}
