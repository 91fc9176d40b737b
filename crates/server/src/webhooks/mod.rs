//! Webhooks: what happens in an app (peers coming online and going offline, presence joins and
//! leaves as subscribers see them, rooms becoming occupied or vacated, and, opt-in, messages)
//! told to the app's backend over HTTP, following the Standard Webhooks convention so backends
//! verify with existing libraries.
//!
//! - `event.rs`: the events, encoded once when they happen;
//! - `outbox.rs`: one endpoint's queue, bounded in bytes;
//! - `durable.rs`: the memory engine's queues kept on disk (`[history] store = "disk"`);
//! - `delivery.rs`: one endpoint's task: ordered batches, retries with backoff, giving up;
//! - `signing.rs`: the `webhook-signature` header;
//! - `transport.rs`: the POST itself (HTTP, or a test double).
//!
//! The engine decides when an event happens (once per transition, after the reconnect grace)
//! and calls [`Webhooks::emit`]; nothing here can slow it: emitting encodes one event and
//! queues it, or drops it when the endpoint's queue is full.

pub mod delivery;
pub mod durable;
pub mod event;
pub mod outbox;
pub mod signing;
pub mod transport;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_protocol::glob::Pattern;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use self::delivery::DeliverySettings;
use self::durable::{DurableMetrics, DurableOutbox};
pub use self::event::{Event, EventFields, EventType};
use self::outbox::Outbox;
use self::transport::Transport;
use crate::config::{secret_bytes, Config, WebhookEndpointConfig};

/// One endpoint of an app: where, with which key, for which events and channels.
pub struct Endpoint {
    pub url: String,
    /// Names the endpoint in the durable outbox across restarts: app, URL, and its rank
    /// among the app's endpoints with that URL.
    store_key: String,
    key: Vec<u8>,
    events: Vec<EventType>,
    channels: Vec<Pattern>,
    outbox: Outbox,
}

impl Endpoint {
    fn new(
        config: &WebhookEndpointConfig,
        settings: &crate::config::WebhooksConfig,
        gauge: Gauge,
        store_key: String,
    ) -> Endpoint {
        Endpoint {
            url: config.url.clone(),
            store_key,
            key: secret_bytes(&config.secret).unwrap_or_default(),
            events: config
                .events
                .iter()
                .filter_map(|name| EventType::from_name(name))
                .collect(),
            channels: config.channels.iter().map(|p| Pattern::parse(p)).collect(),
            outbox: Outbox::new(settings.queue_max_bytes, gauge),
        }
    }

    fn wants(&self, kind: EventType, channel: Option<&str>) -> bool {
        (kind == EventType::Test || self.events.contains(&kind))
            && (!kind.is_channel_event()
                || channel.is_some_and(|c| self.channels.iter().any(|p| p.matches(c))))
    }
}

impl EventType {
    /// The type an endpoint's `events` entry names.
    pub fn from_name(name: &str) -> Option<EventType> {
        [
            EventType::PeerOnline,
            EventType::PeerOffline,
            EventType::PresenceJoined,
            EventType::PresenceLeft,
            EventType::ChannelOccupied,
            EventType::ChannelVacated,
            EventType::MessagePublished,
        ]
        .into_iter()
        .find(|t| t.as_str() == name)
    }
}

/// What webhook delivery counts.
#[derive(Clone)]
pub struct WebhookMetrics {
    events: Family<Vec<(&'static str, String)>, Counter>,
    pub delivered: Counter,
    pub retried: Counter,
    pub failed: Counter,
    pub dropped: Counter,
    pub queued_bytes: Gauge,
    pub latency: Histogram,
    /// Redis engine: events in the outbox streams of the endpoints this node delivers, and
    /// of those, read but not yet acknowledged.
    pub stream_events: Gauge,
    pub stream_pending: Gauge,
    /// Memory engine on the disk store: the durable outbox.
    pub outbox: DurableMetrics,
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        let events = Family::<Vec<(&'static str, String)>, Counter>::default();
        let outcome = |o: &str| {
            events
                .get_or_create(&vec![("outcome", o.to_string())])
                .clone()
        };
        WebhookMetrics {
            delivered: outcome("delivered"),
            retried: outcome("retried"),
            failed: outcome("failed"),
            dropped: outcome("dropped"),
            events,
            queued_bytes: Gauge::default(),
            latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            stream_events: Gauge::default(),
            stream_pending: Gauge::default(),
            outbox: DurableMetrics::default(),
        }
    }
}

impl WebhookMetrics {
    /// Adds the webhook metrics to a node's registry (which prefixes them `herald_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "webhook_events",
            "Webhook events by outcome: delivered, retried (counted per failed attempt), failed (dropped after the retry period), dropped (the endpoint's queue was full)",
            self.events.clone(),
        );
        registry.register(
            "webhook_queued_bytes",
            "Bytes of webhook events waiting for their endpoints, batches in flight included",
            self.queued_bytes.clone(),
        );
        registry.register(
            "webhook_delivery_seconds",
            "Time a successful webhook POST took",
            self.latency.clone(),
        );
        registry.register(
            "webhook_stream_events",
            "Redis engine: webhook events in the outbox streams of the endpoints this node delivers",
            self.stream_events.clone(),
        );
        registry.register(
            "webhook_stream_pending",
            "Redis engine: of those, events read and not yet acknowledged (in delivery)",
            self.stream_pending.clone(),
        );
        self.outbox.register(registry);
    }
}

/// The node's webhook endpoints, per app, and their delivery tasks.
pub struct Webhooks {
    apps: HashMap<String, Vec<Arc<Endpoint>>>,
    metrics: WebhookMetrics,
}

impl Webhooks {
    /// The endpoints `config` names, each with its delivery task started (on the current
    /// runtime) over `transport`.
    pub fn start(
        config: &Config,
        transport: Arc<dyn Transport>,
        metrics: WebhookMetrics,
    ) -> Webhooks {
        let w = &config.webhooks;
        let settings = DeliverySettings {
            batch_max: w.batch_max_events,
            batch_delay: Duration::from_millis(w.batch_delay_ms),
            retry_for: Duration::from_secs(w.retry_for_secs),
            max_backoff: Duration::from_secs(w.max_backoff_secs),
        };
        let mut apps = HashMap::new();
        for app in &config.apps {
            let endpoints: Vec<Arc<Endpoint>> = app
                .webhooks
                .iter()
                .enumerate()
                .map(|(i, hook)| {
                    let rank = app.webhooks[..i]
                        .iter()
                        .filter(|h| h.url == hook.url)
                        .count();
                    let key = format!("{}\n{}\n{rank}", app.id, hook.url);
                    Arc::new(Endpoint::new(hook, w, metrics.queued_bytes.clone(), key))
                })
                .collect();
            for endpoint in &endpoints {
                tokio::spawn(delivery::run(
                    endpoint.clone(),
                    transport.clone(),
                    settings.clone(),
                    metrics.clone(),
                ));
            }
            if !endpoints.is_empty() {
                apps.insert(app.id.clone(), endpoints);
            }
        }
        Webhooks { apps, metrics }
    }

    /// No endpoint anywhere: callers skip building events.
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }

    /// Whether some endpoint of `app` takes this event (cheap: check before gathering fields).
    pub fn wants(&self, app: &str, kind: EventType, channel: Option<&str>) -> bool {
        self.apps
            .get(app)
            .is_some_and(|eps| eps.iter().any(|e| e.wants(kind, channel)))
    }

    /// Encodes the event once and queues it for every endpoint of `app` that takes it. Returns
    /// how many endpoints queued it.
    pub fn emit(&self, app: &str, kind: EventType, fields: EventFields<'_>) -> usize {
        self.queue(app, kind, fields).1
    }

    /// Queues a `webhook.test` event for every endpoint of `app` (REST `POST
    /// /v1/webhooks/test`): its id and how many endpoints queued it, or `None` when the app has
    /// no endpoint.
    pub fn send_test(&self, app: &str) -> Option<(String, usize)> {
        self.apps.get(app)?;
        let (event, queued) = self.queue(app, EventType::Test, EventFields::default());
        Some((event.map(|e| e.id).unwrap_or_default(), queued))
    }

    fn queue(&self, app: &str, kind: EventType, fields: EventFields<'_>) -> (Option<Event>, usize) {
        let Some(endpoints) = self.apps.get(app) else {
            return (None, 0);
        };
        let channel = fields.channel;
        let mut fields = Some(fields);
        let mut event = None;
        let mut queued = 0;
        for endpoint in endpoints.iter().filter(|e| e.wants(kind, channel)) {
            let event = event
                .get_or_insert_with(|| {
                    Event::new(kind, app, now_ms(), fields.take().unwrap_or_default())
                })
                .clone();
            if endpoint.outbox.push(event) {
                queued += 1;
            } else {
                self.metrics.dropped.inc();
            }
        }
        (event, queued)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Webhooks {
    /// Keeps every endpoint's queue on disk from now on (the memory engine on the disk store;
    /// call before any event): the stored events go back to their endpoints first, in their
    /// order and with their ids; those of endpoints no longer configured, or that no longer
    /// fit a queue, are dropped (counted and logged).
    pub fn make_durable(&self, outbox: DurableOutbox) {
        let stored = match outbox.stored() {
            Ok(stored) => stored,
            Err(e) => {
                tracing::error!(error = %e, "webhook outbox unreadable: its events are not sent");
                Vec::new()
            }
        };
        let next_seq = stored.last().map_or(1, |s| s.seq + 1);
        let writer = outbox.start(stored.len(), next_seq, self.metrics.outbox.clone());
        let mut by_key: HashMap<&str, &Endpoint> = HashMap::new();
        for (_, endpoint) in self.endpoints() {
            by_key.insert(&endpoint.store_key, endpoint);
            endpoint
                .outbox
                .set_journal(writer.journal(&endpoint.store_key));
        }
        let (mut restored, mut forget) = (0usize, Vec::new());
        for s in stored {
            match by_key.get(s.endpoint.as_str()) {
                Some(endpoint) if endpoint.outbox.restore(s.event, s.seq) => restored += 1,
                Some(_) => {
                    self.metrics.dropped.inc();
                    forget.push(s.seq);
                }
                None => forget.push(s.seq),
            }
        }
        if restored > 0 || !forget.is_empty() {
            tracing::info!(
                restored,
                dropped = forget.len(),
                "webhook events undelivered before the restart are queued again"
            );
        }
        writer.forget(&forget);
    }
}

/// For engines that keep the outbox elsewhere (the Redis engine's streams) and feed the
/// endpoints' queues themselves.
impl Webhooks {
    /// Every endpoint, with its app and its position in the app's list.
    pub fn endpoints(&self) -> impl Iterator<Item = (&str, &Arc<Endpoint>)> {
        self.apps
            .iter()
            .flat_map(|(app, eps)| eps.iter().map(move |e| (app.as_str(), e)))
    }

    /// The endpoints of one app.
    pub fn app_endpoints(&self, app: &str) -> &[Arc<Endpoint>] {
        self.apps.get(app).map_or(&[], Vec::as_slice)
    }

    pub fn metrics(&self) -> &WebhookMetrics {
        &self.metrics
    }
}

impl Endpoint {
    /// Whether this endpoint takes the event (see [`Webhooks::wants`]).
    pub fn takes(&self, kind: EventType, channel: Option<&str>) -> bool {
        self.wants(kind, channel)
    }

    /// The endpoint's queue, which its delivery task drains.
    pub fn queue(&self) -> &Outbox {
        &self.outbox
    }
}
