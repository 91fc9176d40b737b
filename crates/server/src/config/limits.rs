//! The abuse limits and quotas (`[limits]`) and the timers (`[timing]`), with their defaults.

use serde::{Deserialize, Serialize};

/// Abuse limits and quotas (spec §10-11). Every default is the spec's value.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest inbound WebSocket message in bytes; above it the socket closes with 1009.
    /// The spec advertises 65536 for `data` and recommends 4 KiB of headroom for the envelope.
    pub max_frame_bytes: usize,
    /// Advertised as `welcome.maxMessageSize`; the SDKs pre-check `data` against it.
    pub max_message_size: usize,
    /// Distinct subscriptions one connection may hold.
    pub max_channels_per_connection: usize,
    /// Token bucket per connection: sustained frames per second...
    pub rate_per_second: f64,
    /// ...and burst capacity. Every inbound frame except `ping` costs one token; empty → 4011.
    pub rate_burst: f64,
    /// Node-wide cap on concurrent connections (0 = unlimited) → close 4010.
    pub max_connections: usize,
    /// Frames queued for one connection before it is closed as a slow consumer.
    pub outbound_queue_frames: usize,
    /// Connection attempts per source IP per window before HTTP 429 (0 = unlimited).
    pub connect_attempts_per_ip: u32,
    pub connect_window_secs: u64,
    /// Loopback clients skip the per-IP limit (local tools, tests, a reverse proxy on the host).
    pub connect_limit_exempt_loopback: bool,

    // HTTP hygiene: what a bare TCP socket can make the node hold. A "source" below is an IPv4
    // address or an IPv6 /64.
    /// A client must send a request's headers within this time of the server starting to wait
    /// for them: on a new socket, and after each response on a kept-alive one.
    pub http_header_read_timeout_ms: u64,
    /// A connection that has not upgraded to WebSocket and moves no byte for this long is
    /// closed (a stalled request body, a handler that never answers).
    pub http_idle_timeout_secs: u64,
    /// Concurrent TCP connections per source (0 = unlimited); more are closed at accept.
    /// Loopback is exempt when `connect_limit_exempt_loopback` is on.
    pub max_connections_per_ip: usize,
    /// Sources the connect-attempt limiter tracks per window. When full, sources not in the
    /// table are let through uncounted (fail open; see ARCHITECTURE.md).
    pub connect_limiter_max_entries: usize,
    // Wildcard subscriptions (issue 11): each costs matching work on publishes, so they are
    // capped apart from exact ones. Over a cap: `channel_limit_exceeded`, connection stays open.
    /// Wildcard subscriptions one connection may hold (they count toward
    /// `max_channels_per_connection` too).
    pub max_wildcard_subscriptions_per_connection: usize,
    /// Distinct wildcard patterns one app may have on this node (identical patterns of many
    /// connections count once). Bounds what one publish can cost in pattern matching.
    pub max_wildcard_patterns_per_app: usize,
    // Outbound memory, bounded in bytes (see ARCHITECTURE.md, "Delivery never blocks").
    /// Unwritten bytes one connection may hold (queued, plus the batch being written) before it
    /// is closed as a slow consumer. One frame always fits an empty queue.
    pub outbound_queue_bytes: usize,
    /// Unwritten bytes the whole node may hold for all connections (0 = unlimited). Over it, a
    /// delivery to a connection holding more than 64 KiB closes that connection as a slow
    /// consumer; connections with small queues still get their frames.
    pub node_outbound_bytes: usize,
    // Input shape (hostile payloads).
    /// How deeply a client frame's fields (`data` included) may nest arrays and objects; a
    /// deeper frame gets `malformed_message` and is not forwarded, since receivers' JSON
    /// parsers recurse (the Python SDK's reader dies near 1,000 levels).
    pub max_json_depth: usize,
}

/// Timers (spec §8.1, §15).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// WebSocket-protocol ping interval.
    pub ping_interval_secs: u64,
    /// A socket silent for `ping_interval + pong_grace` is reaped as dead.
    pub pong_grace_secs: u64,
    /// Close with 4002 this long before a JWT's `exp`.
    pub expiry_lead_ms: u64,
    /// Tolerated clock skew for `nbf` and `iat`.
    pub clock_skew_secs: i64,
    /// After `going_away`, how long clients get to drain before the 1001 close.
    pub going_away_drain_ms: u64,
    /// `retryAfterMs` advertised in `going_away` is this, jittered by ±50 %.
    pub going_away_retry_ms: u64,
    /// Hard deadline for a graceful shutdown; the process exits 0 by then.
    pub shutdown_deadline_secs: u64,
    /// Outbound write coalescing: after a connection's queue wakes it, wait this long before
    /// writing, so frames that arrive meanwhile share one socket write. 0 (the default) writes
    /// at once, for the lowest latency; a few ms buy fan-out throughput under load.
    pub write_delay_ms: u64,
    /// Presence deltas of a channel that come faster than one per this window are sent
    /// together, as one `presence` frame with several entries, at most once per window. The
    /// first delta after a quiet spell goes out at once, so a quiet room sees no delay.
    /// 0 sends every delta on its own.
    pub presence_coalesce_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 65536 + 4096,
            max_message_size: herald_protocol::MAX_MESSAGE_SIZE,
            max_channels_per_connection: 100,
            rate_per_second: 100.0,
            rate_burst: 200.0,
            max_connections: 0,
            outbound_queue_frames: 1024,
            connect_attempts_per_ip: 60,
            connect_window_secs: 60,
            connect_limit_exempt_loopback: true,
            http_header_read_timeout_ms: 10_000,
            http_idle_timeout_secs: 60,
            max_connections_per_ip: 256,
            connect_limiter_max_entries: 100_000,
            max_wildcard_subscriptions_per_connection: 16,
            max_wildcard_patterns_per_app: 1000,
            // 4 MiB: 64 maximum-size messages, or a few presence snapshots of a large room,
            // which is seconds of backlog for a reader on a slow link; 1,000 stalled
            // connections still pin at most 4 GiB before the node budget sheds them.
            outbound_queue_bytes: 4 * 1024 * 1024,
            // 512 MiB: what a modest host can spare for backlog, room for 128 connections at
            // their full budget before the largest holders are shed.
            node_outbound_bytes: 512 * 1024 * 1024,
            max_json_depth: herald_protocol::json_depth::DEFAULT_MAX_JSON_DEPTH,
        }
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            ping_interval_secs: 30,
            pong_grace_secs: 10,
            expiry_lead_ms: 250,
            clock_skew_secs: 60,
            going_away_drain_ms: 500,
            going_away_retry_ms: 1000,
            shutdown_deadline_secs: 10,
            write_delay_ms: 0,
            presence_coalesce_ms: 50,
        }
    }
}
