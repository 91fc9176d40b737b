//! The webhook half that the node's shared state holds: the endpoints with their Redis keys,
//! and the spec each script is told (which endpoints want which events a call may produce).
//! Delivery and the `Node` helpers are in `webhooks.rs`; the cluster-mode shards (one outbox
//! stream per endpoint and slot) in `webhook_shards.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::keys::Keys;
use super::slots::SLOTS;
use crate::sync::lock;
use crate::webhooks::{Endpoint, EventType, Webhooks};

/// Event bits of a spec (the scripts test them with `bit.band`).
pub(super) const JOINED: u32 = 1;
pub(super) const LEFT: u32 = 2;
pub(super) const OCCUPIED: u32 = 4;
pub(super) const VACATED: u32 = 8;
pub(super) const ONLINE: u32 = 16;
pub(super) const OFFLINE: u32 = 32;
pub(super) const MESSAGE: u32 = 64;

const KINDS: [(u32, EventType); 7] = [
    (JOINED, EventType::PresenceJoined),
    (LEFT, EventType::PresenceLeft),
    (OCCUPIED, EventType::ChannelOccupied),
    (VACATED, EventType::ChannelVacated),
    (ONLINE, EventType::PeerOnline),
    (OFFLINE, EventType::PeerOffline),
    (MESSAGE, EventType::MessagePublished),
];

/// Average bytes an event is taken to cost, to turn `queue_max_bytes` into a stream length.
const EVENT_BYTES: usize = 512;

/// Which slots a node knows to be registered in a Redis set (one bit per slot).
pub(super) struct SlotSet {
    /// The set that lists the slots (`…:slots`, `…:oslots`).
    pub key: String,
    bits: Vec<AtomicU64>,
}

impl SlotSet {
    fn new(key: String) -> SlotSet {
        SlotSet {
            key,
            bits: (0..SLOTS / 64).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn has(&self, slot: u16) -> bool {
        let (word, bit) = (usize::from(slot) / 64, slot % 64);
        self.bits
            .get(word)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << bit) != 0)
    }

    pub fn set(&self, slot: u16) {
        let (word, bit) = (usize::from(slot) / 64, slot % 64);
        if let Some(w) = self.bits.get(word) {
            w.fetch_or(1 << bit, Ordering::AcqRel);
        }
    }

    /// Every slot known registered.
    pub fn slots(&self) -> Vec<u16> {
        (0..SLOTS as u16).filter(|s| self.has(*s)).collect()
    }
}

/// One endpoint with its keys.
pub(crate) struct EndpointKeys {
    pub app: String,
    /// A short stable name (a hash of the URL and position).
    pub name: String,
    /// `P{w:<app>:<name>}`: the outbox on a single Redis; owner, registry and totals always.
    pub base: String,
    pub endpoint: Arc<Endpoint>,
    /// Cluster mode: the slots registered in `base:slots`.
    pub slots: SlotSet,
    /// Cluster mode: the undelivered events over all slots reached the cap.
    pub full: AtomicBool,
}

/// Slots appended to (per endpoint index), for the owner's dirty hint (cluster mode).
#[derive(Default)]
pub(super) struct Dirty {
    pub marks: Mutex<HashSet<(usize, u16)>>,
    pub notify: Notify,
}

/// The endpoints, with their Redis base keys, per app.
pub(crate) struct RedisWebhooks {
    pub(super) hooks: Arc<Webhooks>,
    /// Undelivered events an endpoint's outbox holds at most.
    pub(super) cap: usize,
    pub(super) cluster: bool,
    /// Every endpoint; `apps` holds indexes into it.
    pub(super) all: Vec<Arc<EndpointKeys>>,
    apps: HashMap<String, Vec<usize>>,
    /// Cluster mode: per app, the slots registered in `P{w:<app>}:oslots`.
    pub(super) offline_slots: HashMap<String, SlotSet>,
    pub(super) dirty: Arc<Dirty>,
    /// Per endpoint base: (outbox length, pending entries) as its owner last read them.
    streams: Mutex<HashMap<String, (i64, i64)>>,
}

/// What a script is told about webhooks: the endpoint base keys (extra `KEYS`) and the spec
/// (its last argument, `""` when no endpoint wants anything this call may produce). In
/// cluster mode, dropping it after the call marks its slot dirty for the endpoints' owners.
#[derive(Default)]
pub(super) struct Spec {
    pub keys: Vec<String>,
    pub arg: String,
    /// Cluster mode: the slot, the endpoints appended to, and registrations still needed.
    pub(super) slot: Option<u16>,
    pub(super) endpoints: Vec<usize>,
    pub(super) dirty: Option<Arc<Dirty>>,
}

impl Spec {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The call produced no event: no dirty hint when dropped.
    pub fn disarm(&mut self) {
        self.endpoints.clear();
    }

    /// Adds the keys and the spec to an invocation (the spec must be its last argument).
    pub fn apply(&self, invocation: &mut redis::ScriptInvocation<'_>) {
        for key in &self.keys {
            invocation.key(key);
        }
        invocation.arg(&self.arg);
    }
}

impl Drop for Spec {
    fn drop(&mut self) {
        let (Some(dirty), Some(slot)) = (self.dirty.take(), self.slot) else {
            return;
        };
        if self.endpoints.is_empty() {
            return;
        }
        lock(&dirty.marks).extend(self.endpoints.iter().map(|e| (*e, slot)));
        dirty.notify.notify_one();
    }
}

/// A short stable name for an endpoint: FNV-1a of its URL and position.
fn endpoint_name(url: &str, position: usize) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in url.bytes().chain(position.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl RedisWebhooks {
    pub(super) fn new(
        keys: &Keys,
        hooks: Arc<Webhooks>,
        queue_max_bytes: usize,
        cluster: bool,
    ) -> Self {
        let mut all = Vec::new();
        let mut apps: HashMap<String, Vec<usize>> = HashMap::new();
        let mut offline_slots = HashMap::new();
        for (app, _) in hooks.endpoints() {
            if apps.contains_key(app) {
                continue;
            }
            let mut list = Vec::new();
            for (i, e) in hooks.app_endpoints(app).iter().enumerate() {
                let name = endpoint_name(&e.url, i);
                let base = keys.webhook_base(app, &name);
                list.push(all.len());
                all.push(Arc::new(EndpointKeys {
                    app: app.to_string(),
                    slots: SlotSet::new(format!("{base}:slots")),
                    name,
                    base,
                    endpoint: e.clone(),
                    full: AtomicBool::new(false),
                }));
            }
            let oslots = format!("{}:oslots", keys.webhook_app_base(app));
            offline_slots.insert(app.to_string(), SlotSet::new(oslots));
            apps.insert(app.to_string(), list);
        }
        RedisWebhooks {
            hooks,
            cap: (queue_max_bytes / EVENT_BYTES).max(1),
            cluster,
            all,
            apps,
            offline_slots,
            dirty: Arc::new(Dirty::default()),
            streams: Mutex::new(HashMap::new()),
        }
    }

    /// Every endpoint with its keys.
    pub(super) fn endpoints(&self) -> impl Iterator<Item = &Arc<EndpointKeys>> {
        self.all.iter()
    }

    /// Records what an owner read of its endpoint's outbox (none: it is not the owner), and
    /// sets the node's gauges to the sums over the endpoints it owns.
    pub(super) fn record(&self, base: &str, read: Option<(i64, i64)>) {
        let (len, pending) = {
            let mut streams = lock(&self.streams);
            match read {
                Some(read) => streams.insert(base.to_string(), read),
                None => streams.remove(base),
            };
            streams
                .values()
                .fold((0, 0), |(l, p), (len, pend)| (l + len, p + pend))
        };
        let metrics = self.hooks.metrics();
        metrics.stream_events.set(len);
        metrics.stream_pending.set(pending);
    }

    /// The spec for a call on `app` (and `channel`) that may produce the events in `mask`.
    /// `extra` is appended to `message.published` events (`"from":…,"data":…`). In cluster
    /// mode `slot` is the slot of the call's keys: the streams are that slot's shards, and the
    /// caller must register the slot first (`Node::webhook_spec`).
    pub(super) fn spec(
        &self,
        keys: &Keys,
        app: &str,
        channel: Option<&str>,
        mask: u32,
        extra: &str,
        slot: Option<u16>,
    ) -> Spec {
        let Some(endpoints) = self.apps.get(app) else {
            return Spec::default();
        };
        let slot = slot.filter(|_| self.cluster);
        let mut spec = Spec::default();
        let mut masks = Vec::new();
        for &index in endpoints {
            let Some(ep) = self.all.get(index) else {
                continue;
            };
            let wanted = KINDS
                .iter()
                .filter(|(bit, kind)| mask & bit != 0 && ep.endpoint.takes(*kind, channel))
                .fold(0, |m, (bit, _)| m | bit);
            if wanted == 0 {
                continue;
            }
            match slot {
                Some(slot) => {
                    spec.keys.push(keys.webhook_shard_base(app, &ep.name, slot));
                    spec.endpoints.push(index);
                    // A full outbox: the script counts the event as dropped.
                    if ep.full.load(Ordering::Acquire) {
                        masks.push(format!("-{wanted}"));
                    } else {
                        masks.push(wanted.to_string());
                    }
                }
                None => {
                    spec.keys.push(ep.base.clone());
                    masks.push(wanted.to_string());
                }
            }
        }
        if spec.keys.is_empty() {
            return Spec::default();
        }
        let json = |s: &str| serde_json::to_string(s).unwrap_or_default();
        spec.arg = format!(
            "{}\n{}\n{}\n{}\n{}",
            json(app),
            channel.map(json).unwrap_or_default(),
            self.cap,
            extra,
            masks.join("\n")
        );
        if slot.is_some() {
            spec.slot = slot;
            spec.dirty = Some(self.dirty.clone());
        }
        spec
    }
}
