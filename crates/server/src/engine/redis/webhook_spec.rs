//! The webhook half that the node's shared state holds: the endpoints with their Redis keys,
//! and the spec each script is told (which endpoints want which events a call may produce).
//! Delivery and the `Node` helpers are in `webhooks.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::keys::Keys;
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

/// The endpoints, with their Redis base keys, per app.
pub(crate) struct RedisWebhooks {
    pub(super) hooks: Arc<Webhooks>,
    /// Undelivered events an endpoint's stream holds at most.
    cap: usize,
    apps: HashMap<String, Vec<(String, Arc<Endpoint>)>>,
    /// Per endpoint base: (stream length, pending entries) as its owner last read them.
    streams: Mutex<HashMap<String, (i64, i64)>>,
}

/// What a script is told about webhooks: the endpoint base keys (extra `KEYS`) and the spec
/// (its last argument, `""` when no endpoint wants anything this call may produce).
#[derive(Default)]
pub(super) struct Spec {
    pub keys: Vec<String>,
    pub arg: String,
}

impl Spec {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Adds the keys and the spec to an invocation (the spec must be its last argument).
    pub fn apply(&self, invocation: &mut redis::ScriptInvocation<'_>) {
        for key in &self.keys {
            invocation.key(key);
        }
        invocation.arg(&self.arg);
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
    pub(super) fn new(keys: &Keys, hooks: Arc<Webhooks>, queue_max_bytes: usize) -> Self {
        let mut apps: HashMap<String, Vec<(String, Arc<Endpoint>)>> = HashMap::new();
        for (app, _) in hooks.endpoints() {
            if apps.contains_key(app) {
                continue;
            }
            let list = hooks
                .app_endpoints(app)
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let name = endpoint_name(&e.url, i);
                    (keys.webhook_base(app, &name), e.clone())
                })
                .collect();
            apps.insert(app.to_string(), list);
        }
        RedisWebhooks {
            hooks,
            cap: (queue_max_bytes / EVENT_BYTES).max(1),
            apps,
            streams: Mutex::new(HashMap::new()),
        }
    }

    /// Every endpoint: its base key and the endpoint, per app.
    pub(super) fn endpoints(&self) -> impl Iterator<Item = (&str, &str, &Arc<Endpoint>)> {
        self.apps
            .iter()
            .flat_map(|(app, eps)| eps.iter().map(move |(b, e)| (app.as_str(), b.as_str(), e)))
    }

    /// Records what an owner read of its endpoint's stream (none: it is not the owner), and
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
    /// `extra` is appended to `message.published` events (`"from":…,"data":…`).
    pub(super) fn spec(&self, app: &str, channel: Option<&str>, mask: u32, extra: &str) -> Spec {
        let Some(endpoints) = self.apps.get(app) else {
            return Spec::default();
        };
        let mut spec = Spec::default();
        let mut masks = Vec::new();
        for (base, endpoint) in endpoints {
            let wanted = KINDS
                .iter()
                .filter(|(bit, kind)| mask & bit != 0 && endpoint.takes(*kind, channel))
                .fold(0, |m, (bit, _)| m | bit);
            if wanted != 0 {
                spec.keys.push(base.clone());
                masks.push(wanted.to_string());
            }
        }
        if spec.keys.is_empty() {
            return spec;
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
        spec
    }
}
