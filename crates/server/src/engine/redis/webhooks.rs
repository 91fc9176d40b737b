//! Webhooks on the Redis engine. Events are produced by the scripts that decide each
//! transition (`scripts.rs`, `WH_HELPERS`), appended to one outbox stream per endpoint in the
//! same atomic step, so each is produced once cluster-wide however many nodes race. This file
//! builds the spec those scripts take (which endpoints want which of the events a call may
//! produce) and runs the delivery side: per endpoint, the node that holds the endpoint's
//! owner lease reads the stream through the consumer group `delivery`, feeds the endpoint's
//! queue (the shared delivery task batches, signs and retries) and acknowledges and deletes
//! each entry once its batch is done with. A new owner first claims what the previous one
//! read and never acknowledged (`XAUTOCLAIM`): events pending on a dead node are delivered by
//! another one, about a lease after it died. On a Redis Cluster the outbox is sharded by slot
//! and `webhook_shards.rs` runs the delivery side over the shards (sharing the scripts and
//! the queue feeding here).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Script;
use tokio::sync::Notify;

use super::node::Node;
use super::webhook_spec::{EndpointKeys, Spec, OFFLINE};
use crate::sync::lock;
use crate::webhooks::outbox::Outbox;
use crate::webhooks::{Endpoint, Event, EventType};

/// How often an idle owner looks at its stream, and a node at due `peer.offline`s.
pub(super) const POLL: Duration = Duration::from_millis(25);
const SWEEP_EVERY: Duration = Duration::from_millis(250);

impl Node {
    /// The webhook spec of a call whose first key is `key`, empty when webhooks are off. On
    /// a cluster the events go to the endpoints' streams in `key`'s slot, which is registered
    /// first (once per node and slot), so that no event sits in a stream the owner does not
    /// know of.
    pub(super) async fn webhook_spec(
        &self,
        app: &str,
        channel: Option<&str>,
        mask: u32,
        extra: &str,
        key: &str,
    ) -> Spec {
        let slot = self.cluster_slot(key);
        self.webhook_spec_in(app, channel, mask, extra, slot, false)
            .await
    }

    /// `key`'s hash slot when webhooks run on a Redis Cluster (where events go to the
    /// endpoints' streams in the call's own slot), none otherwise.
    fn cluster_slot(&self, key: &str) -> Option<u16> {
        self.webhooks
            .get()
            .filter(|w| w.cluster)
            .map(|_| super::slots::key_slot(key))
    }

    /// The spec of a channel call, from the channel's base key.
    pub(super) async fn channel_webhook_spec(&self, base: &str, mask: u32) -> Spec {
        if self.webhooks.get().is_none() {
            return Spec::default();
        }
        match self.keys.parse_base(base) {
            Some((app, channel)) => self.webhook_spec(app, Some(channel), mask, "", base).await,
            None => Spec::default(),
        }
    }

    /// The spec of a route call (peer events; `key` is the call's route or peer base key):
    /// the pending-offline zset comes first, in the route's slot on a cluster.
    pub(super) async fn route_webhook_spec(&self, app: &str, key: &str, mask: u32) -> Spec {
        let slot = self.cluster_slot(key);
        self.webhook_spec_in(app, None, mask, "", slot, true).await
    }
}

/// KEYS: endpoint base. ARGV: instance, ttl ms. Takes or renews the endpoint's owner lease:
/// 2 taken now, 1 renewed, 0 another instance holds it.
pub(super) const OWN: &str = r#"
local k = KEYS[1] .. ':owner'
local cur = redis.call('GET', k)
if cur == ARGV[1] then redis.call('PEXPIRE', k, ARGV[2]) return 1 end
if cur then return 0 end
redis.call('SET', k, ARGV[1], 'PX', ARGV[2])
return 2
"#;

/// KEYS: a lease base. ARGV: instance. Gives the lease up if this instance holds it (1).
const RELEASE: &str = r#"
local k = KEYS[1] .. ':owner'
if redis.call('GET', k) == ARGV[1] then return redis.call('DEL', k) end
return 0
"#;

/// A clean shutdown's hand-over: gives up every delivery and sweeper lease this instance
/// holds, so another node takes each over on its next look (about a third of a lease)
/// instead of when the lease lapses. What this node read and never acknowledged is claimed
/// by the next owner (at least once). Call after the webhook tasks stopped. Returns the
/// leases released.
pub(super) async fn release_leases(node: &Node) -> usize {
    let Some(w) = node.webhooks.get() else {
        return 0;
    };
    let mut bases: Vec<String> = w.endpoints().map(|e| e.base.clone()).collect();
    let apps: std::collections::BTreeSet<&str> = w.endpoints().map(|e| e.app.as_str()).collect();
    bases.extend(apps.into_iter().map(|app| node.keys.webhook_app_base(app)));
    let (release, instance) = (Script::new(RELEASE), node.instance());
    let mut released = 0;
    for base in &bases {
        let r: redis::RedisResult<i64> = release
            .key(base)
            .arg(&instance)
            .invoke_async(&mut node.conn())
            .await;
        released += usize::from(matches!(r, Ok(1)));
    }
    released
}

/// KEYS: endpoint base. ARGV: instance, start id (`0` for this consumer's pending entries,
/// `>` for new ones), count, 1 to take over first. Taking over makes sure the group exists
/// and claims every entry another consumer read and never acknowledged. Returns {events
/// dropped since the last read, stream length, pending count, then id, type, body…} (a
/// pending entry deleted meanwhile has type and body "").
pub(super) const READ: &str = r#"
local out, g, me = KEYS[1] .. ':outbox', 'delivery', ARGV[1]
if ARGV[4] == '1' then
  redis.pcall('XGROUP', 'CREATE', out, g, '0', 'MKSTREAM')
  local cursor = '0-0'
  repeat
    local r = redis.call('XAUTOCLAIM', out, g, me, 0, cursor, 'COUNT', 1000, 'JUSTID')
    cursor = r[1]
  until cursor == '0-0'
end
local res = {redis.call('GETDEL', KEYS[1] .. ':dropped') or '0', redis.call('XLEN', out), 0}
local r = redis.call('XREADGROUP', 'GROUP', g, me, 'COUNT', ARGV[3], 'STREAMS', out, ARGV[2])
res[3] = redis.call('XPENDING', out, g)[1]
if r and r[1] then
  for _, e in ipairs(r[1][2]) do
    local k, body = '', ''
    if e[2] then
      for i = 1, #e[2], 2 do
        if e[2][i] == 'k' then k = e[2][i + 1] elseif e[2][i] == 'e' then body = e[2][i + 1] end
      end
    end
    table.insert(res, e[1])
    table.insert(res, k)
    table.insert(res, body)
  end
end
return res
"#;

/// KEYS: endpoint base. ARGV: entry ids. Acknowledges delivered (or given up) events and
/// deletes them, so the stream's length is what is still to deliver.
pub(super) const ACK: &str = r#"
local out = KEYS[1] .. ':outbox'
redis.call('XACK', out, 'delivery', unpack(ARGV))
return redis.call('XDEL', out, unpack(ARGV))
"#;

/// The entry id of an event read from a stream (`evt_<id>`, or `evt_<id>.<slot>` from a
/// cluster shard), none for other events.
pub(super) fn entry_id(event: &Event) -> Option<&str> {
    let rest = event.json.strip_prefix("{\"id\":\"evt_")?;
    let id = &rest[..rest.find('"')?];
    id.contains('-').then_some(id)
}

/// What one endpoint's reader shares with the release hook of its queue.
#[derive(Default)]
pub(super) struct Feed {
    /// Events handed to the queue and not yet released.
    pub in_queue: AtomicUsize,
    /// Released entry ids waiting to be acknowledged.
    pub acks: Mutex<Vec<String>>,
    pub released: Notify,
}

impl Feed {
    /// A feed whose entries the endpoint's queue reports when it is done with them.
    pub(super) fn attach(endpoint: &Endpoint) -> Arc<Feed> {
        let feed = Arc::new(Feed::default());
        let hook_feed = feed.clone();
        endpoint.queue().on_release(Box::new(move |batch| {
            let ids: Vec<String> = batch
                .iter()
                .filter_map(entry_id)
                .map(str::to_string)
                .collect();
            if ids.is_empty() {
                return;
            }
            hook_feed.in_queue.fetch_sub(ids.len(), Ordering::AcqRel);
            lock(&hook_feed.acks).extend(ids);
            hook_feed.released.notify_one();
        }));
        feed
    }
}

/// Delivers one endpoint's outbox while this node owns it; stands by otherwise (single Redis;
/// a cluster's sharded outboxes: `webhook_shards.rs`).
pub(super) async fn run_endpoint(node: Arc<Node>, ep: Arc<EndpointKeys>) {
    let (base, endpoint) = (ep.base.clone(), ep.endpoint.clone());
    let (own, read, ack) = (Script::new(OWN), Script::new(READ), Script::new(ACK));
    let feed = Feed::attach(&endpoint);
    let metrics = node
        .webhooks
        .get()
        .map(|w| w.hooks.metrics().clone())
        .unwrap_or_default();
    let lease = Duration::from_millis(node.lease_ms.max(1_000));
    let room = 256usize;
    let mut owner_instance = String::new();
    // `None` reads new entries (`>`); `Some(id)` reads this consumer's pending ones after id.
    let mut pending_from: Option<String> = None;
    let mut take_over = false;
    let mut renew_at = tokio::time::Instant::now();
    loop {
        // Acknowledge what the queue is done with, owner or not: the entries were read here.
        let ids = std::mem::take(&mut *lock(&feed.acks));
        if !ids.is_empty() {
            let acked: redis::RedisResult<i64> = ack
                .key(&base)
                .arg(&ids)
                .invoke_async(&mut node.conn())
                .await;
            if acked.is_err() {
                lock(&feed.acks).extend(ids);
            }
        }
        let instance = node.instance();
        if tokio::time::Instant::now() >= renew_at || owner_instance != instance {
            let owned: redis::RedisResult<i64> = own
                .key(&base)
                .arg(&instance)
                .arg(lease.as_millis() as u64)
                .invoke_async(&mut node.conn())
                .await;
            renew_at = tokio::time::Instant::now() + lease / 3;
            match owned {
                Ok(1) if owner_instance == instance => {}
                Ok(1 | 2) => {
                    // Newly the owner: claim what others read and never acknowledged, then
                    // deliver this consumer's pending entries before new ones.
                    owner_instance = instance.clone();
                    take_over = true;
                    pending_from = Some("0".to_string());
                }
                _ => {
                    if let Some(w) = node.webhooks.get() {
                        w.record(&base, None);
                    }
                    owner_instance.clear();
                    tokio::time::sleep(lease / 4).await;
                    continue;
                }
            }
        }
        if feed.in_queue.load(Ordering::Acquire) >= room {
            let _ = tokio::time::timeout(POLL, feed.released.notified()).await;
            continue;
        }
        let start = pending_from.as_deref().unwrap_or(">").to_string();
        let reply: redis::RedisResult<Vec<String>> = read
            .key(&base)
            .arg(&instance)
            .arg(&start)
            .arg(room)
            .arg(if take_over { "1" } else { "0" })
            .invoke_async(&mut node.conn())
            .await;
        let Ok(reply) = reply else {
            tokio::time::sleep(POLL * 4).await;
            continue;
        };
        take_over = false;
        if let Some(dropped) = reply.first().and_then(|d| d.parse::<u64>().ok()) {
            metrics.dropped.inc_by(dropped);
        }
        let stream_len = reply
            .get(1)
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or(0);
        let pending = reply
            .get(2)
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or(0);
        if let Some(w) = node.webhooks.get() {
            w.record(&base, Some((stream_len, pending)));
        }
        let entries = reply.get(3..).unwrap_or_default();
        let last = feed_queue(endpoint.queue(), &feed, entries, "").await;
        if pending_from.is_some() {
            pending_from = last;
            continue;
        }
        if entries.is_empty() {
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = feed.released.notified() => {}
            }
        }
    }
}

/// Sends the app's due `peer.offline`s, on every node (each due peer is taken once; single
/// Redis).
pub(super) async fn run_sweeper(node: Arc<Node>, app: String) {
    let sweep = Script::new(&format!(
        "{}\n{}",
        super::scripts::WH_HELPERS,
        super::scripts::PEER_SWEEP
    ));
    let (before, after) = node.keys.route_key_parts(&app);
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let spec = node
            .webhook_spec_in(&app, None, OFFLINE, "", None, false)
            .await;
        if spec.is_empty() {
            continue;
        }
        let mut invocation = sweep.key(node.keys.webhook_offline_key(&app));
        invocation.arg(&before).arg(&after);
        spec.apply(&mut invocation);
        let _: redis::RedisResult<Vec<i64>> = invocation.invoke_async(&mut node.conn()).await;
    }
}

/// Hands read entries to the endpoint's queue in order, waiting for room when it is full.
/// `suffix` follows the entry id in the event id (`.<slot>` on a cluster). Returns the last
/// entry id fed.
pub(super) async fn feed_queue(
    queue: &Outbox,
    feed: &Feed,
    entries: &[String],
    suffix: &str,
) -> Option<String> {
    let mut last = None;
    for entry in entries.chunks_exact(3) {
        let (id, kind, body) = (&entry[0], &entry[1], &entry[2]);
        last = Some(id.clone());
        let Some(kind) = EventType::from_name(kind).filter(|_| !body.is_empty()) else {
            // Deleted meanwhile, or unknown to this version: nothing to send.
            lock(&feed.acks).push(format!("{id}{suffix}"));
            continue;
        };
        let event = Event {
            id: format!("evt_{id}{suffix}"),
            kind,
            channel: None,
            json: format!("{{\"id\":\"evt_{id}{suffix}\",{body}"),
        };
        feed.in_queue.fetch_add(1, Ordering::AcqRel);
        let mut event = Some(event);
        while let Some(e) = event.take() {
            if !queue.push(e.clone()) {
                event = Some(e);
                let _ = tokio::time::timeout(POLL, feed.released.notified()).await;
            }
        }
    }
    last
}
