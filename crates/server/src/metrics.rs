//! Prometheus metrics for one node, in a registry owned by the node (no global state, so several
//! nodes in one test process keep separate counts).
//!
//! Hot-path counters are resolved once at start-up into plain `Counter` handles: counting a frame
//! is one relaxed atomic add, with no label lookup and no lock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use herald_protocol::ErrorCode;

type Labels = Vec<(&'static str, String)>;

/// Frame types a client may send, plus `invalid` for frames that did not parse.
const IN_TYPES: [&str; 6] = [
    "subscribe",
    "unsubscribe",
    "publish",
    "send",
    "ping",
    "invalid",
];
/// Frame types the server sends.
const OUT_TYPES: [&str; 9] = [
    "welcome",
    "ack",
    "error",
    "message",
    "direct",
    "presence",
    "pong",
    "going_away",
    "other",
];

pub struct Metrics {
    registry: Registry,
    connections: Family<Labels, Gauge>,
    closes: Family<Labels, Counter>,
    rate_limited: Family<Labels, Counter>,
    /// Updated from the engine when scraped.
    pub subscriptions: Gauge,
    pub channels: Gauge,
    messages_in: Vec<Counter>,
    messages_out: Vec<Counter>,
    errors: Vec<Counter>,
    pub slow_consumers: Counter,
    /// Time from accepting a publish to having queued it for every local subscriber.
    pub fanout_seconds: Histogram,
    /// HTTP hygiene (see [`HttpMetrics`]).
    pub http: HttpMetrics,
    /// The Redis engine's queue of pushes from Redis, updated when scraped.
    pub bus_queue: BusQueueMetrics,

    // Outbound memory (the node-wide budget, `limits.node_outbound_bytes`).
    /// Unwritten outbound bytes held for all connections; the connections update it directly.
    pub outbound_queued_bytes: Gauge,
    /// Connections closed because the node was over its outbound budget.
    pub outbound_shed: Counter,
    /// Present when the listener speaks TLS.
    tls: Option<TlsMetrics>,
    /// Lossless reconnect (`resume/metrics.rs`).
    pub resume: crate::resume::metrics::ResumeMetrics,
}

/// What bare TCP sockets cost the node, and what the accept loop cut short.
pub struct HttpMetrics {
    /// TCP connections accepted and not yet closed (upgraded WebSocket sessions included).
    pub open_connections: Gauge,
    /// Sockets closed at accept because their source was at `max_connections_per_ip`.
    pub refused_per_source: Counter,
    /// Connections closed because a request's headers did not arrive in time.
    pub header_timeouts: Counter,
    /// Non-upgraded connections closed because no byte moved for `http_idle_timeout_secs`.
    pub idle_timeouts: Counter,
    /// Connect attempts let through uncounted because the limiter's table was full.
    pub connect_limiter_untracked: Counter,
    /// TLS listener: sockets closed because the handshake did not finish within the
    /// header-read timeout.
    pub tls_handshake_timeouts: Counter,
    /// TLS listener: sockets closed because the handshake failed (not TLS, no common version or
    /// suite, the client refused the certificate).
    pub tls_handshake_errors: Counter,
    /// TLS listener: plain-HTTP connections answered with `[tls] plain_http` and closed.
    pub plain_http_on_tls: Counter,
}

impl HttpMetrics {
    fn register(registry: &mut Registry) -> HttpMetrics {
        let closed = Family::<Labels, Counter>::default();
        registry.register(
            "tcp_closed_early",
            "TCP connections the server closed before or instead of serving them, by reason",
            closed.clone(),
        );
        let reason = |r: &str| closed.get_or_create(&label("reason", r)).clone();
        let http = HttpMetrics {
            open_connections: Gauge::default(),
            refused_per_source: reason("per_ip_cap"),
            header_timeouts: reason("header_read_timeout"),
            idle_timeouts: reason("idle_timeout"),
            connect_limiter_untracked: Counter::default(),
            tls_handshake_timeouts: reason("tls_handshake_timeout"),
            tls_handshake_errors: reason("tls_handshake_failed"),
            plain_http_on_tls: reason("plain_http_on_tls"),
        };
        registry.register(
            "tcp_connections",
            "Open TCP connections (HTTP and upgraded WebSocket)",
            http.open_connections.clone(),
        );
        registry.register(
            "connect_limiter_untracked",
            "Connect attempts let through uncounted because the per-IP table was full",
            http.connect_limiter_untracked.clone(),
        );
        http
    }
}

/// TLS on the listener: the certificate's expiry and its reloads. Registered only when `[tls]`
/// is on, so a plain node shows no expiry for an alert to fire on.
#[derive(Clone)]
pub struct TlsMetrics {
    /// The certificate in service's notAfter (Unix seconds); the gauge is computed from it at
    /// each scrape, so it counts down without a timer.
    not_after: Arc<AtomicI64>,
    expiry: Gauge,
    reloads: Family<Labels, Counter>,
    /// Reloads that put a new certificate in service.
    pub reloads_ok: Counter,
    /// Reloads refused (unreadable file, bad PEM, key not matching); the old pair stayed.
    pub reloads_failed: Counter,
}

impl Default for TlsMetrics {
    fn default() -> Self {
        let reloads = Family::<Labels, Counter>::default();
        let reloads_ok = reloads.get_or_create(&label("result", "ok")).clone();
        let reloads_failed = reloads.get_or_create(&label("result", "error")).clone();
        TlsMetrics {
            not_after: Arc::new(AtomicI64::new(0)),
            expiry: Gauge::default(),
            reloads,
            reloads_ok,
            reloads_failed,
        }
    }
}

impl TlsMetrics {
    pub fn set_not_after(&self, unix: i64) {
        self.not_after.store(unix, Ordering::Relaxed);
    }

    fn refresh(&self) {
        self.expiry
            .set(self.not_after.load(Ordering::Relaxed) - crate::clock::unix_now());
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "tls_certificate_expiry_seconds",
            "Seconds until the served certificate's notAfter (negative once expired)",
            self.expiry.clone(),
        );
        registry.register(
            "tls_reloads",
            "Certificate reloads by result (error: the certificate in service stayed)",
            self.reloads.clone(),
        );
    }
}

/// Inter-node traffic (Redis engine): the bus queue's depth, its high-water mark and what it
/// shed. All zero on the memory engine.
#[derive(Default)]
pub struct BusQueueMetrics {
    queued: Gauge,
    queued_bytes: Gauge,
    peak: Gauge,
    shed: Counter,
    history_repaired: Counter,
    history_lost: Counter,
    /// Serialises scrapes, so the shed counter is advanced exactly once per shed push.
    sync: std::sync::Mutex<()>,
}

impl BusQueueMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "bus_queue_messages",
            "Pushes from Redis queued for this node's bus task",
            self.queued.clone(),
        );
        registry.register(
            "bus_queue_bytes",
            "Bytes of pushes from Redis queued for this node's bus task",
            self.queued_bytes.clone(),
        );
        registry.register(
            "bus_queue_peak_messages",
            "The most pushes from Redis ever queued at once on this node",
            self.peak.clone(),
        );
        registry.register(
            "bus_shed",
            "Pushes from Redis dropped because this node's bus queue was full",
            self.shed.clone(),
        );
        registry.register(
            "bus_history_repaired",
            "Messages lost on the way to this node and fetched back from channel history",
            self.history_repaired.clone(),
        );
        registry.register(
            "bus_history_lost",
            "Messages lost on the way to this node that channel history no longer held",
            self.history_lost.clone(),
        );
    }

    /// Copies the engine's counters in.
    pub fn update(&self, stats: &crate::engine::BusQueueStats) {
        let _serial = crate::sync::lock(&self.sync);
        self.queued
            .set(i64::try_from(stats.queued).unwrap_or(i64::MAX));
        self.queued_bytes
            .set(i64::try_from(stats.queued_bytes).unwrap_or(i64::MAX));
        self.peak.set(i64::try_from(stats.peak).unwrap_or(i64::MAX));
        let seen = self.shed.get();
        if stats.shed > seen {
            self.shed.inc_by(stats.shed - seen);
        }
        for (counter, total) in [
            (&self.history_repaired, stats.history_repaired),
            (&self.history_lost, stats.history_lost),
        ] {
            let seen = counter.get();
            if total > seen {
                counter.inc_by(total - seen);
            }
        }
    }
}

fn label(name: &'static str, value: impl Into<String>) -> Labels {
    vec![(name, value.into())]
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("herald");
        let connections = Family::<Labels, Gauge>::default();
        registry.register(
            "connections",
            "Open WebSocket connections by credential kind and app",
            connections.clone(),
        );
        let subscriptions = Gauge::default();
        registry.register(
            "subscriptions",
            "Channel and pattern subscriptions held",
            subscriptions.clone(),
        );
        let channels = Gauge::default();
        registry.register(
            "channels",
            "Channels with at least one subscriber",
            channels.clone(),
        );
        let messages_in_family = Family::<Labels, Counter>::default();
        registry.register(
            "messages_in",
            "Client frames received, by type",
            messages_in_family.clone(),
        );
        let messages_out_family = Family::<Labels, Counter>::default();
        registry.register(
            "messages_out",
            "Frames written to clients, by type",
            messages_out_family.clone(),
        );
        let errors_family = Family::<Labels, Counter>::default();
        registry.register(
            "errors",
            "Error frames sent, by code",
            errors_family.clone(),
        );
        let closes = Family::<Labels, Counter>::default();
        registry.register(
            "closes",
            "Connections closed by the server, by close code",
            closes.clone(),
        );
        let slow_consumers = Counter::default();
        registry.register(
            "slow_consumer_disconnects",
            "Connections closed because their outbound queue was full",
            slow_consumers.clone(),
        );
        let rate_limited = Family::<Labels, Counter>::default();
        registry.register(
            "rate_limited",
            "Rate-limit hits, by limit",
            rate_limited.clone(),
        );
        // 1 µs to about 1 s.
        let fanout_seconds = Histogram::new(exponential_buckets(1e-6, 2.0, 21));
        registry.register(
            "fanout_seconds",
            "Publish fan-out latency on this node",
            fanout_seconds.clone(),
        );

        let bus_queue = BusQueueMetrics::default();
        bus_queue.register(&mut registry);
        let resume = crate::resume::metrics::ResumeMetrics::default();
        resume.register(&mut registry);
        let outbound_queued_bytes = Gauge::default();
        registry.register(
            "outbound_queued_bytes",
            "Outbound bytes queued or being written, for all connections of this node",
            outbound_queued_bytes.clone(),
        );
        let outbound_shed = Counter::default();
        registry.register(
            "outbound_budget_disconnects",
            "Connections closed as slow consumers because the node was over its outbound budget",
            outbound_shed.clone(),
        );

        let resolve = |family: &Family<Labels, Counter>,
                       name: &'static str,
                       values: &[&str]|
         -> Vec<Counter> {
            values
                .iter()
                .map(|v| family.get_or_create(&label(name, *v)).clone())
                .collect()
        };
        let error_codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        for limit in ["message_rate", "connect_per_ip"] {
            drop(rate_limited.get_or_create(&label("limit", limit)));
        }
        let http = HttpMetrics::register(&mut registry);
        Metrics {
            http,
            messages_in: resolve(&messages_in_family, "type", &IN_TYPES),
            messages_out: resolve(&messages_out_family, "type", &OUT_TYPES),
            errors: resolve(&errors_family, "code", &error_codes),
            registry,
            connections,
            closes,
            rate_limited,
            subscriptions,
            channels,
            slow_consumers,
            fanout_seconds,
            bus_queue,
            outbound_queued_bytes,
            outbound_shed,
            tls: None,
            resume,
        }
    }

    /// Adds the webhook delivery metrics (only on a node with endpoints).
    pub fn register_webhooks(&mut self, webhooks: &crate::webhooks::WebhookMetrics) {
        webhooks.register(&mut self.registry);
    }

    /// Adds the TLS metrics (once: a node has one listener).
    pub fn register_tls(&mut self, tls: TlsMetrics) {
        if self.tls.is_none() {
            tls.register(&mut self.registry);
            self.tls = Some(tls);
        }
    }

    /// A client frame of this type arrived (`invalid` when it did not parse).
    pub fn frame_in(&self, kind: &str) {
        let i = IN_TYPES
            .iter()
            .position(|t| *t == kind)
            .unwrap_or(IN_TYPES.len() - 1);
        self.messages_in[i].inc();
    }

    /// An encoded server frame was written. The type is read from the frame's fixed prefix
    /// (`{"type":"…"`), which every encoder in `herald_protocol::encode` writes first.
    pub fn frame_out(&self, frame: &str) {
        let kind = frame
            .strip_prefix("{\"type\":\"")
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("other");
        let i = OUT_TYPES
            .iter()
            .position(|t| *t == kind)
            .unwrap_or(OUT_TYPES.len() - 1);
        self.messages_out[i].inc();
    }

    pub fn error_sent(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[i].inc();
        }
    }

    pub fn closed(&self, code: u16) {
        self.closes
            .get_or_create(&label("code", code.to_string()))
            .inc();
    }

    pub fn rate_limited(&self, limit: &'static str) {
        self.rate_limited
            .get_or_create(&label("limit", limit))
            .inc();
    }

    pub fn connection_opened(&self, kind: &str, app: &str) {
        self.connections
            .get_or_create(&vec![("kind", kind.to_string()), ("app", app.to_string())])
            .inc();
    }

    pub fn connection_closed(&self, kind: &str, app: &str) {
        self.connections
            .get_or_create(&vec![("kind", kind.to_string()), ("app", app.to_string())])
            .dec();
    }

    /// OpenMetrics text exposition of every metric.
    pub fn render(&self) -> String {
        if let Some(tls) = &self.tls {
            tls.refresh();
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_frames_by_type_from_their_prefix() {
        let m = Metrics::new();
        m.frame_out(r#"{"type":"message","channel":"c"}"#);
        m.frame_out(r#"{"type":"presence"}"#);
        m.frame_out("garbage");
        m.frame_in("publish");
        m.frame_in("dance");
        m.error_sent(ErrorCode::PeerNotFound);
        m.closed(4011);
        let text = m.render();
        for line in [
            "herald_messages_out_total{type=\"message\"} 1",
            "herald_messages_out_total{type=\"other\"} 1",
            "herald_messages_in_total{type=\"invalid\"} 1",
            "herald_errors_total{code=\"peer_not_found\"} 1",
            "herald_closes_total{code=\"4011\"} 1",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
