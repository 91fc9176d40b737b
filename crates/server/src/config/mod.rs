//! Herald's one configuration struct: defaults, TOML loading, environment overrides, validation.
//!
//! `config/herald.toml` (embedded, printed by `herald config default`) documents every field.
//! A config error names the offending field.

use std::net::SocketAddr;
use std::path::Path;

use herald_protocol::validate::is_valid_channel;
use herald_protocol::Action;
use serde::{Deserialize, Serialize};

/// The commented default configuration file, embedded in the binary.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../../config/herald.toml");

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP/WebSocket listener binds to.
    pub listen: SocketAddr,
    pub limits: Limits,
    pub timing: Timing,
    pub log: LogConfig,
    pub turn: TurnConfig,
    pub web: WebConfig,
    pub engine: EngineConfig,
    /// Serve wildcard subscriptions such as `devices/*/events` (spec §9.4, Q6).
    pub wildcard_subscriptions: bool,
    /// Tenants and their keys. Empty means "dev mode": the binary generates a dev app.
    pub apps: Vec<AppConfig>,
}

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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: String,
    /// A tracing filter such as `info` or `herald_server=debug`.
    pub level: String,
}

/// Which engine does presence and fan-out: `memory` (one node) or `redis` (many nodes).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// `memory` or `redis`.
    pub kind: String,
    /// Redis (or Valkey) URL, e.g. `redis://127.0.0.1:6379/0`. With `redis_cluster`, one or
    /// more seed nodes of the cluster, comma-separated.
    pub redis_url: String,
    /// Talk to a Redis Cluster: keys are hash-tagged per channel, peer and node, and channel
    /// topics use sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7+).
    pub redis_cluster: bool,
    /// Prefix of every Redis key and pub/sub topic, so several services can share one Redis.
    pub key_prefix: String,
    /// This node's id; empty means a random id per start.
    pub node_id: String,
    /// A node that has not renewed its lease for this long is dead: its peers leave.
    pub lease_ttl_ms: u64,
    /// A peer whose connection drops (not a clean close) keeps its presence this long, so a
    /// quick reconnect, possibly to another node, shows no left/joined flap.
    pub reconnect_grace_ms: u64,

    // Inter-node traffic bounds (Redis engine): how much a node buffers when it cannot keep up
    // with what Redis pushes to it. Beyond either bound it sheds the newest pushes (counted in
    // `herald_bus_shed_total`) and then re-syncs rosters from Redis.
    /// Most pub/sub pushes queued for the node's bus task.
    pub bus_queue_messages: usize,
    /// Most payload bytes queued for the node's bus task.
    pub bus_queue_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            kind: "memory".into(),
            redis_url: "redis://127.0.0.1:6379/0".into(),
            redis_cluster: false,
            key_prefix: "herald:".into(),
            node_id: String::new(),
            lease_ttl_ms: 10_000,
            reconnect_grace_ms: 3_000,
            bus_queue_messages: 4_096,
            bus_queue_bytes: 8 * 1024 * 1024,
        }
    }
}

/// The browser demo served at `/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Serve the presence & chat demo app at `/`.
    pub demo: bool,
    /// `POST /dev/token` mints JWTs for anyone who asks, for the demo's sign-in. Never enable it
    /// in production; dev mode (no apps configured) turns it on.
    pub dev_tokens: bool,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            demo: true,
            dev_tokens: false,
        }
    }
}

/// ICE servers merged into `welcome.metadata.iceServers` for keys with `auto_inject_turn`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    pub ice_servers: Vec<IceServer>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// A tenant with its keys (spec §13.8).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub id: String,
    /// A suspended app's connections are refused (4012).
    #[serde(default)]
    pub suspended: bool,
    /// Concurrent connections of this app (0 = unlimited) → close 4010.
    #[serde(default)]
    pub max_connections: usize,
    #[serde(default)]
    pub secret_keys: Vec<SecretKeyConfig>,
    #[serde(default)]
    pub publishable_keys: Vec<PublishableKeyConfig>,
}

/// A secret key: `id` is the JWT `kid`, `secret` the HS256 signing secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyConfig {
    pub id: String,
    pub secret: String,
    #[serde(default = "all_channels")]
    pub channel_patterns: Vec<String>,
    #[serde(default = "all_actions")]
    pub actions: Vec<Action>,
    #[serde(default = "yes")]
    pub auto_inject_turn: bool,
    #[serde(default)]
    pub revoked: bool,
}

/// A publishable key (`pk_…`): the id is the whole credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishableKeyConfig {
    pub id: String,
    #[serde(default = "all_channels")]
    pub channel_patterns: Vec<String>,
    /// The dashboard default: everything but `send`.
    #[serde(default = "publishable_default_actions")]
    pub actions: Vec<Action>,
    /// Exact origins (scheme://host[:port]); empty = any origin, including none.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    #[serde(default = "yes")]
    pub auto_inject_turn: bool,
    #[serde(default)]
    pub revoked: bool,
}

fn all_channels() -> Vec<String> {
    vec!["**".into()]
}
fn all_actions() -> Vec<Action> {
    Action::ALL.to_vec()
}
fn publishable_default_actions() -> Vec<Action> {
    vec![Action::Subscribe, Action::Publish, Action::Presence]
}
fn yes() -> bool {
    true
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            limits: Limits::default(),
            timing: Timing::default(),
            log: LogConfig::default(),
            turn: TurnConfig::default(),
            web: WebConfig::default(),
            engine: EngineConfig::default(),
            wildcard_subscriptions: true,
            apps: Vec::new(),
        }
    }
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
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "pretty".into(),
            level: "info".into(),
        }
    }
}

/// A configuration problem, naming the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("invalid value for `{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// Parses TOML text (unknown fields are errors, so typos do not pass silently).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(format!("config: {e}")))
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Applies `HERALD_*` environment overrides for the fields operators change most.
    pub fn apply_env(
        &mut self,
        vars: impl Iterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (name, value) in vars {
            let parse_err = |field: &str| {
                invalid(
                    format!("{field} (from {name})"),
                    format!("cannot parse {value:?}"),
                )
            };
            match name.as_str() {
                "HERALD_LISTEN" => self.listen = value.parse().map_err(|_| parse_err("listen"))?,
                "HERALD_LOG_LEVEL" => self.log.level = value,
                "HERALD_LOG_FORMAT" => self.log.format = value,
                "HERALD_MAX_CONNECTIONS" => {
                    self.limits.max_connections = value
                        .parse()
                        .map_err(|_| parse_err("limits.max_connections"))?
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks every cross-field rule; the error names the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if l.max_frame_bytes < 1024 {
            return Err(invalid("limits.max_frame_bytes", "must be at least 1024"));
        }
        if l.max_message_size == 0 || l.max_message_size > l.max_frame_bytes {
            return Err(invalid(
                "limits.max_message_size",
                "must be between 1 and limits.max_frame_bytes",
            ));
        }
        if l.max_json_depth == 0 || l.max_json_depth > 512 {
            return Err(invalid(
                "limits.max_json_depth",
                "must be between 1 and 512",
            ));
        }
        if l.max_channels_per_connection == 0 {
            return Err(invalid(
                "limits.max_channels_per_connection",
                "must be at least 1",
            ));
        }
        if !(l.rate_per_second > 0.0 && l.rate_per_second.is_finite()) {
            return Err(invalid(
                "limits.rate_per_second",
                "must be a positive number",
            ));
        }
        if !(l.rate_burst >= 1.0 && l.rate_burst.is_finite()) {
            return Err(invalid("limits.rate_burst", "must be at least 1"));
        }
        if l.outbound_queue_frames < 8 {
            return Err(invalid(
                "limits.outbound_queue_frames",
                "must be at least 8",
            ));
        }
        if l.outbound_queue_bytes < 64 * 1024 {
            return Err(invalid(
                "limits.outbound_queue_bytes",
                "must be at least 65536",
            ));
        }
        if l.node_outbound_bytes > 0 && l.node_outbound_bytes < l.outbound_queue_bytes {
            return Err(invalid(
                "limits.node_outbound_bytes",
                "must be 0 (unlimited) or at least limits.outbound_queue_bytes",
            ));
        }
        if l.connect_attempts_per_ip > 0 && l.connect_window_secs == 0 {
            return Err(invalid("limits.connect_window_secs", "must be at least 1"));
        }
        if !(10..=600_000).contains(&l.http_header_read_timeout_ms) {
            return Err(invalid(
                "limits.http_header_read_timeout_ms",
                "must be between 10 and 600000",
            ));
        }
        if l.http_idle_timeout_secs == 0 {
            return Err(invalid(
                "limits.http_idle_timeout_secs",
                "must be at least 1",
            ));
        }
        if l.connect_limiter_max_entries == 0 {
            return Err(invalid(
                "limits.connect_limiter_max_entries",
                "must be at least 1",
            ));
        }
        if l.max_wildcard_subscriptions_per_connection == 0 {
            return Err(invalid(
                "limits.max_wildcard_subscriptions_per_connection",
                "must be at least 1 (turn wildcards off with wildcard_subscriptions = false)",
            ));
        }
        if l.max_wildcard_patterns_per_app == 0 {
            return Err(invalid(
                "limits.max_wildcard_patterns_per_app",
                "must be at least 1",
            ));
        }
        let t = &self.timing;
        if t.ping_interval_secs == 0 {
            return Err(invalid("timing.ping_interval_secs", "must be at least 1"));
        }
        if t.shutdown_deadline_secs == 0 {
            return Err(invalid(
                "timing.shutdown_deadline_secs",
                "must be at least 1",
            ));
        }
        if !matches!(self.log.format.as_str(), "pretty" | "json") {
            return Err(invalid("log.format", "must be \"pretty\" or \"json\""));
        }
        for (i, server) in self.turn.ice_servers.iter().enumerate() {
            let ok = !server.urls.is_empty()
                && server.urls.iter().all(|u| {
                    let lower = u.to_ascii_lowercase();
                    u.len() <= 512
                        && ["stun:", "stuns:", "turn:", "turns:"]
                            .iter()
                            .any(|s| lower.starts_with(s))
                });
            if !ok {
                return Err(invalid(
                    format!("turn.ice_servers[{i}].urls"),
                    "need 1+ urls starting with stun:, stuns:, turn: or turns:",
                ));
            }
        }
        let e = &self.engine;
        if !matches!(e.kind.as_str(), "memory" | "redis") {
            return Err(invalid("engine.kind", "must be \"memory\" or \"redis\""));
        }
        if e.bus_queue_messages < 16 {
            return Err(invalid("engine.bus_queue_messages", "must be at least 16"));
        }
        if e.bus_queue_bytes < 65_536 {
            return Err(invalid("engine.bus_queue_bytes", "must be at least 65536"));
        }
        let urls: Vec<&str> = if e.redis_cluster {
            e.redis_url.split(',').map(str::trim).collect()
        } else {
            vec![e.redis_url.as_str()]
        };
        if e.kind == "redis"
            && !urls
                .iter()
                .all(|u| u.starts_with("redis://") || u.starts_with("rediss://"))
        {
            return Err(invalid(
                "engine.redis_url",
                "must start with redis:// or rediss:// (with redis_cluster, each comma-separated seed)",
            ));
        }
        if e.key_prefix.contains(['{', '}']) {
            // A hash tag in the prefix would put every key in one Redis Cluster slot.
            return Err(invalid("engine.key_prefix", "must not contain '{' or '}'"));
        }
        if e.lease_ttl_ms < 1000 {
            return Err(invalid("engine.lease_ttl_ms", "must be at least 1000"));
        }
        if !e
            .node_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || e.node_id.len() > 64
        {
            return Err(invalid(
                "engine.node_id",
                "use at most 64 of [A-Za-z0-9._-]",
            ));
        }
        let mut key_ids = std::collections::HashSet::new();
        let mut app_ids = std::collections::HashSet::new();
        for (a, app) in self.apps.iter().enumerate() {
            let field = |rest: &str| format!("apps[{a}]{rest}");
            if app.id.is_empty() || !app_ids.insert(app.id.as_str()) {
                return Err(invalid(field(".id"), "must be non-empty and unique"));
            }
            if app.id.len() > 64
                || !app
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(invalid(field(".id"), "use at most 64 of [A-Za-z0-9._-]"));
            }
            for (k, key) in app.secret_keys.iter().enumerate() {
                let f = |rest: &str| field(&format!(".secret_keys[{k}]{rest}"));
                if key.id.is_empty() || !key_ids.insert(key.id.as_str()) {
                    return Err(invalid(
                        f(".id"),
                        "must be non-empty and unique across apps",
                    ));
                }
                if key.secret.len() < 16 {
                    return Err(invalid(f(".secret"), "must be at least 16 characters"));
                }
                check_patterns(&key.channel_patterns, &f(".channel_patterns"))?;
            }
            for (k, key) in app.publishable_keys.iter().enumerate() {
                let f = |rest: &str| field(&format!(".publishable_keys[{k}]{rest}"));
                if !key.id.starts_with("pk_") || !key_ids.insert(key.id.as_str()) {
                    return Err(invalid(
                        f(".id"),
                        "must start with pk_ and be unique across apps",
                    ));
                }
                check_patterns(&key.channel_patterns, &f(".channel_patterns"))?;
                for origin in &key.allowed_origins {
                    if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                        return Err(invalid(
                            f(".allowed_origins"),
                            format!("{origin:?} is not an http(s) origin"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn check_patterns(patterns: &[String], field: &str) -> Result<(), ConfigError> {
    if patterns.is_empty() {
        return Err(invalid(field, "needs at least one pattern"));
    }
    match patterns.iter().find(|p| !is_valid_channel(p)) {
        Some(bad) => Err(invalid(
            field,
            format!("{bad:?} is not a valid channel pattern"),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_file_parses_to_the_built_in_defaults() {
        let parsed = Config::from_toml(DEFAULT_CONFIG_TOML).unwrap();
        parsed.validate().unwrap();
        let built_in = Config::default();
        assert_eq!(
            toml::to_string(&parsed).unwrap(),
            toml::to_string(&built_in).unwrap()
        );
    }

    #[test]
    fn json_depth_is_bounded() {
        for bad in [0, 513] {
            let text = format!("[limits]\nmax_json_depth = {bad}\n");
            let err = Config::from_toml(&text).unwrap().validate().unwrap_err();
            assert!(err.to_string().contains("limits.max_json_depth"), "{err}");
        }
        let ok = Config::from_toml("[limits]\nmax_json_depth = 512\n").unwrap();
        ok.validate().unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let err = Config::from_toml("[limits]\nmax_channels_per_connection = 0\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("limits.max_channels_per_connection"),
            "{err}"
        );
        let err = Config::from_toml("[limits]\nmax_chanels = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_chanels"), "{err}");
        let text =
            "[[apps]]\nid = \"a\"\n[[apps.secret_keys]]\nid = \"sk_id_1\"\nsecret = \"short\"\n";
        let err = Config::from_toml(text).unwrap().validate().unwrap_err();
        assert!(
            err.to_string().contains("apps[0].secret_keys[0].secret"),
            "{err}"
        );
    }

    #[test]
    fn redis_cluster_seeds_and_prefix_are_checked() {
        let ok = "[engine]\nkind = \"redis\"\nredis_cluster = true\nredis_url = \"redis://a:7000, redis://b:7000\"\n";
        assert!(Config::from_toml(ok).unwrap().validate().is_ok());
        let bad_seed = ok.replace("redis://b", "http://b");
        let err = Config::from_toml(&bad_seed)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("engine.redis_url"), "{err}");
        let tagged = format!("{ok}key_prefix = \"h{{x}}:\"\n");
        let err = Config::from_toml(&tagged).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("engine.key_prefix"), "{err}");
    }

    #[test]
    fn outbound_byte_budgets_are_checked() {
        let ok = "[limits]\noutbound_queue_bytes = 1048576\nnode_outbound_bytes = 0\n";
        assert!(Config::from_toml(ok).unwrap().validate().is_ok());
        for (text, field) in [
            (
                "[limits]\noutbound_queue_bytes = 1000\n",
                "limits.outbound_queue_bytes",
            ),
            (
                "[limits]\noutbound_queue_bytes = 1048576\nnode_outbound_bytes = 65536\n",
                "limits.node_outbound_bytes",
            ),
        ] {
            let err = Config::from_toml(text).unwrap().validate().unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn env_overrides() {
        let mut c = Config::default();
        c.apply_env([("HERALD_LISTEN".to_string(), "0.0.0.0:9000".to_string())].into_iter())
            .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert!(c
            .apply_env([("HERALD_LISTEN".into(), "nope".into())].into_iter())
            .is_err());
    }
}
