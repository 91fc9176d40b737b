//! Webhooks on a Redis Cluster: each endpoint's outbox is sharded by slot.
//!
//! A script touches one slot, so it appends an event to the endpoint's stream in its own slot
//! (`P{T}w:<app>:<e>:outbox`, `T` a tag that hashes there: `slots.rs`). The event is still
//! produced once, in the same atomic step as its transition. A channel's events all come from
//! the channel's slot and a peer's route events from the route's slot, so each stream keeps
//! them in order; events of different slots (two channels, or a channel's `presence.joined`
//! and its peer's `peer.online`) have no order between them.
//!
//! Finding the streams: before a node runs its first script that may append in a slot, it
//! adds the slot to the endpoint's `:slots` set (once per node and slot, then re-added now and
//! then in case Redis lost it), so no event sits in a stream the owner does not know of. After
//! such a call the node adds the slot to `:dirty` (batched); the owner reads the dirty slots
//! every poll and every registered slot each `SWEEP`, so a lost hint costs latency, not
//! events. The owner counts the undelivered events over all slots into `:total`, which nodes
//! read to refuse events (counted as dropped) once `queue_max_bytes` is reached.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, StreamExt};
use redis::Script;
use tokio::time::Instant;

use super::node::Node;
use super::webhook_spec::{EndpointKeys, SlotSet, Spec, OFFLINE};
use super::webhooks::{feed_queue, Feed, ACK, OWN, POLL, READ};
use crate::sync::lock;

/// How often the owner reads every registered slot, hinted dirty or not.
const SWEEP: Duration = Duration::from_secs(1);
/// How long a node gathers dirty marks before sending them.
const DIRTY_BATCH: Duration = Duration::from_millis(2);
/// How often a node re-adds the slots it registered (Redis may have lost the sets).
const REREGISTER: Duration = Duration::from_secs(30);
/// Slot reads in flight at once.
const READS_IN_FLIGHT: usize = 32;
/// How long the owner's count of undelivered events holds if it stops refreshing it.
const TOTAL_TTL_MS: u64 = 10_000;

impl Node {
    /// The spec for a call in `slot` (none: a single Redis). With `offline`, the app's
    /// pending-offline zset (of the slot, on a cluster) comes first. On a cluster, the slot
    /// is registered for every endpoint the spec names before it is returned; when that fails
    /// the events are counted as dropped and the spec is empty.
    pub(super) async fn webhook_spec_in(
        &self,
        app: &str,
        channel: Option<&str>,
        mask: u32,
        extra: &str,
        slot: Option<u16>,
        offline: bool,
    ) -> Spec {
        let Some(w) = self.webhooks.get() else {
            return Spec::default();
        };
        let mut spec = w.spec(&self.keys, app, channel, mask, extra, slot);
        if spec.is_empty() {
            return spec;
        }
        let Some(slot) = spec.slot else {
            if offline {
                spec.keys.insert(0, self.keys.webhook_offline_key(app));
            }
            return spec;
        };
        let mut sets: Vec<&SlotSet> = spec
            .endpoints
            .iter()
            .filter_map(|i| w.all.get(*i))
            .map(|ep| &ep.slots)
            .collect();
        if offline {
            spec.keys
                .insert(0, self.keys.webhook_offline_shard(app, slot));
            if let Some(set) = w.offline_slots.get(app) {
                sets.push(set);
            }
        }
        for set in sets {
            if set.has(slot) {
                continue;
            }
            let added: redis::RedisResult<i64> = redis::cmd("SADD")
                .arg(&set.key)
                .arg(slot)
                .query_async(&mut self.conn())
                .await;
            if added.is_err() {
                w.hooks
                    .metrics()
                    .dropped
                    .inc_by(spec.endpoints.len() as u64);
                spec.endpoints.clear();
                return Spec::default();
            }
            set.set(slot);
        }
        spec
    }
}

/// Sends the dirty marks of calls that ran (batched), and re-adds registered slots now and
/// then. One per node, cluster mode only.
pub(super) async fn run_marker(node: Arc<Node>) {
    let Some(w) = node.webhooks.get() else {
        return;
    };
    let mut reregister = tokio::time::interval(REREGISTER);
    loop {
        tokio::select! {
            () = w.dirty.notify.notified() => {
                tokio::time::sleep(DIRTY_BATCH).await;
                let marks = std::mem::take(&mut *lock(&w.dirty.marks));
                let mut per_endpoint: BTreeMap<usize, Vec<u16>> = BTreeMap::new();
                for (endpoint, slot) in marks {
                    per_endpoint.entry(endpoint).or_default().push(slot);
                }
                for (endpoint, slots) in per_endpoint {
                    let Some(ep) = w.all.get(endpoint) else { continue };
                    // A lost hint costs latency only: the owner's sweep finds the events.
                    let _: redis::RedisResult<i64> = redis::cmd("SADD")
                        .arg(format!("{}:dirty", ep.base))
                        .arg(&slots)
                        .query_async(&mut node.conn())
                        .await;
                }
            }
            _ = reregister.tick() => {
                let sets = w
                    .all
                    .iter()
                    .map(|ep| &ep.slots)
                    .chain(w.offline_slots.values());
                for set in sets {
                    let slots = set.slots();
                    if slots.is_empty() {
                        continue;
                    }
                    let _: redis::RedisResult<i64> = redis::cmd("SADD")
                        .arg(&set.key)
                        .arg(&slots)
                        .query_async(&mut node.conn())
                        .await;
                }
            }
        }
    }
}

/// The owner's reading position in one slot's stream.
struct SlotRead {
    /// This consumer's pending entries after this id are read first (`0`: all of them).
    pending_from: Option<String>,
    /// Not read since this node became the owner: take over first.
    fresh: bool,
    /// The last read was full: read again without waiting for a hint.
    more: bool,
    /// (stream length, pending entries) at the last read.
    counts: (i64, i64),
}

/// Delivers one endpoint's sharded outbox while this node owns it; stands by otherwise.
pub(super) async fn run_endpoint(node: Arc<Node>, ep: Arc<EndpointKeys>) {
    let Some(w) = node.webhooks.get() else {
        return;
    };
    let (own, read, ack) = (Script::new(OWN), Script::new(READ), Script::new(ACK));
    let feed = Feed::attach(&ep.endpoint);
    let metrics = w.hooks.metrics().clone();
    let lease = Duration::from_millis(node.lease_ms.max(1_000));
    let room = 256usize;
    let shard = |slot: u16| node.keys.webhook_shard_base(&ep.app, &ep.name, slot);
    let mut owner_instance = String::new();
    let mut reads: HashMap<u16, SlotRead> = HashMap::new();
    let mut renew_at = Instant::now();
    let mut sweep_at = Instant::now();
    let mut published_total = -1i64;
    let mut publish_at = Instant::now();
    loop {
        // Acknowledge what the queue is done with, per slot, owner or not.
        let ids = std::mem::take(&mut *lock(&feed.acks));
        let mut per_slot: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        for id in ids {
            if let Some((entry, slot)) = id.split_once('.') {
                if let Ok(slot) = slot.parse::<u16>() {
                    per_slot.entry(slot).or_default().push(entry.to_string());
                }
            }
        }
        for (slot, entries) in per_slot {
            let acked: redis::RedisResult<i64> = ack
                .key(shard(slot))
                .arg(&entries)
                .invoke_async(&mut node.conn())
                .await;
            if acked.is_err() {
                lock(&feed.acks).extend(entries.into_iter().map(|e| format!("{e}.{slot}")));
            }
        }
        let instance = node.instance();
        if Instant::now() >= renew_at || owner_instance != instance {
            let owned: redis::RedisResult<i64> = own
                .key(&ep.base)
                .arg(&instance)
                .arg(lease.as_millis() as u64)
                .invoke_async(&mut node.conn())
                .await;
            renew_at = Instant::now() + lease / 3;
            match owned {
                Ok(1) if owner_instance == instance => {}
                Ok(1 | 2) => {
                    // Newly the owner: every slot is taken over at its first read.
                    owner_instance = instance.clone();
                    reads.clear();
                    sweep_at = Instant::now();
                }
                _ => {
                    w.record(&ep.base, None);
                    owner_instance.clear();
                    let total: redis::RedisResult<Option<i64>> = redis::cmd("GET")
                        .arg(format!("{}:total", ep.base))
                        .query_async(&mut node.conn())
                        .await;
                    if let Ok(total) = total {
                        let full = total.unwrap_or(0) >= w.cap as i64;
                        ep.full.store(full, Ordering::Release);
                    }
                    tokio::time::sleep(lease / 4).await;
                    continue;
                }
            }
        }
        if feed.in_queue.load(Ordering::Acquire) >= room {
            let _ = tokio::time::timeout(POLL, feed.released.notified()).await;
            continue;
        }
        // Which slots to read: unfinished ones, hinted ones, and all of them on a sweep.
        let mut slots: Vec<u16> = reads
            .iter()
            .filter(|(_, r)| r.pending_from.is_some() || r.more)
            .map(|(s, _)| *s)
            .collect();
        let dirty: redis::RedisResult<Vec<u16>> = redis::cmd("SPOP")
            .arg(format!("{}:dirty", ep.base))
            .arg(16_384)
            .query_async(&mut node.conn())
            .await;
        slots.extend(dirty.unwrap_or_default());
        if Instant::now() >= sweep_at {
            let all: redis::RedisResult<Vec<u16>> = redis::cmd("SMEMBERS")
                .arg(format!("{}:slots", ep.base))
                .query_async(&mut node.conn())
                .await;
            if let Ok(all) = all {
                slots.extend(all);
                sweep_at = Instant::now() + SWEEP;
            }
        }
        slots.sort_unstable();
        slots.dedup();
        let calls = slots.into_iter().map(|slot| {
            let r = reads.get(&slot);
            let fresh = r.is_none_or(|r| r.fresh);
            let start = match r {
                None => "0".to_string(),
                Some(r) => r.pending_from.clone().unwrap_or_else(|| ">".to_string()),
            };
            let mut invocation = read.key(shard(slot));
            invocation
                .arg(&instance)
                .arg(&start)
                .arg(room)
                .arg(if fresh { "1" } else { "0" });
            let mut conn = node.conn();
            async move {
                let reply: redis::RedisResult<Vec<String>> =
                    invocation.invoke_async(&mut conn).await;
                (slot, start, reply)
            }
        });
        let replies: Vec<_> = stream::iter(calls)
            .buffer_unordered(READS_IN_FLIGHT)
            .collect()
            .await;
        let mut fed = 0usize;
        for (slot, start, reply) in replies {
            let Ok(reply) = reply else {
                continue;
            };
            let number = |i: usize| reply.get(i).and_then(|n| n.parse::<i64>().ok());
            metrics.dropped.inc_by(number(0).unwrap_or(0).max(0) as u64);
            let counts = (number(1).unwrap_or(0), number(2).unwrap_or(0));
            let entries = reply.get(3..).unwrap_or_default();
            let last = feed_queue(ep.endpoint.queue(), &feed, entries, &format!(".{slot}")).await;
            fed += entries.len();
            let pending_from = (start != ">").then_some(last).flatten();
            // Pending entries done with: new ones next, without waiting for a hint.
            let more = entries.len() / 3 >= room || (start != ">" && pending_from.is_none());
            reads.insert(
                slot,
                SlotRead {
                    pending_from,
                    fresh: false,
                    more,
                    counts,
                },
            );
        }
        let (len, pending) = reads
            .values()
            .fold((0, 0), |(l, p), r| (l + r.counts.0, p + r.counts.1));
        w.record(&ep.base, Some((len, pending)));
        ep.full.store(len >= w.cap as i64, Ordering::Release);
        // Published when it changes, and refreshed well within its expiry.
        if len != published_total || Instant::now() >= publish_at {
            let set: redis::RedisResult<()> = redis::cmd("SET")
                .arg(format!("{}:total", ep.base))
                .arg(len)
                .arg("PX")
                .arg(TOTAL_TTL_MS)
                .query_async(&mut node.conn())
                .await;
            if set.is_ok() {
                published_total = len;
                publish_at = Instant::now() + Duration::from_millis(TOTAL_TTL_MS / 4);
            }
        }
        if fed == 0 {
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = feed.released.notified() => {}
            }
        }
    }
}

/// Sends the app's due `peer.offline`s from the slots' zsets, on the node that holds the
/// app's sweeper lease (each due peer is taken out of its zset in the same step as its event,
/// so a lease that changes hands produces no duplicate). Every registered slot is looked at
/// each `SWEEP`; slots that still had pending peers, every 250 ms.
pub(super) async fn run_sweeper(node: Arc<Node>, app: String) {
    let sweep = Script::new(&format!(
        "{}\n{}",
        super::scripts::WH_HELPERS,
        super::scripts::PEER_SWEEP
    ));
    let own = Script::new(OWN);
    let lease = Duration::from_millis(node.lease_ms.max(1_000));
    let base = node.keys.webhook_app_base(&app);
    let (before, after) = node.keys.route_key_parts(&app);
    let mut waiting: Vec<u16> = Vec::new();
    let mut sweep_at = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let owned: redis::RedisResult<i64> = own
            .key(&base)
            .arg(node.instance())
            .arg(lease.as_millis() as u64)
            .invoke_async(&mut node.conn())
            .await;
        if !matches!(owned, Ok(1 | 2)) {
            waiting.clear();
            tokio::time::sleep(lease / 4).await;
            continue;
        }
        let mut slots = std::mem::take(&mut waiting);
        if Instant::now() >= sweep_at {
            let all: redis::RedisResult<Vec<u16>> = redis::cmd("SMEMBERS")
                .arg(format!("{base}:oslots"))
                .query_async(&mut node.conn())
                .await;
            if let Ok(all) = all {
                slots.extend(all);
                sweep_at = Instant::now() + SWEEP;
            }
        }
        slots.sort_unstable();
        slots.dedup();
        let calls = slots.into_iter().map(|slot| {
            let (node, sweep, app) = (&node, &sweep, &app);
            let (before, after) = (&before, &after);
            async move {
                let mut spec = node
                    .webhook_spec_in(app, None, OFFLINE, "", Some(slot), false)
                    .await;
                if spec.is_empty() {
                    return None;
                }
                let mut invocation = sweep.key(node.keys.webhook_offline_shard(app, slot));
                invocation.arg(before).arg(after);
                spec.apply(&mut invocation);
                let reply: redis::RedisResult<(i64, i64)> =
                    invocation.invoke_async(&mut node.conn()).await;
                match reply {
                    Ok((taken, left)) => {
                        if taken == 0 {
                            // Nothing was due: no event, no hint for the owner.
                            spec.disarm();
                        }
                        (left > 0).then_some(slot)
                    }
                    Err(_) => Some(slot),
                }
            }
        });
        waiting = stream::iter(calls)
            .buffer_unordered(READS_IN_FLIGHT)
            .filter_map(|slot| async move { slot })
            .collect()
            .await;
    }
}
