//! Webhooks: each app's `[[apps.webhooks]]` endpoints (where to POST, the signing secret, which
//! events, which channels), and the node-wide `[webhooks]` delivery settings.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::validate::check_patterns;
use super::{invalid, ConfigError};

/// Every event type an endpoint may ask for. `message.published` is opt-in: an endpoint that
/// names no events gets the others.
pub const EVENT_TYPES: [&str; 7] = [
    "peer.online",
    "peer.offline",
    "presence.joined",
    "presence.left",
    "channel.occupied",
    "channel.vacated",
    "message.published",
];

/// One `[[apps.webhooks]]` endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpointConfig {
    /// `http://` or `https://` URL the batches are POSTed to.
    pub url: String,
    /// Standard Webhooks secret: `whsec_` followed by base64 of 24 to 64 random bytes.
    pub secret: String,
    /// Event types sent to this endpoint ([`EVENT_TYPES`]); default: all but
    /// `message.published`.
    #[serde(default = "default_events")]
    pub events: Vec<String>,
    /// Channels whose channel events (presence, occupancy, messages) are sent: glob patterns as
    /// in key `channel_patterns`. Peer events (`peer.online`/`peer.offline`) are app-wide.
    #[serde(default = "all_channels")]
    pub channels: Vec<String>,
}

fn default_events() -> Vec<String> {
    EVENT_TYPES
        .iter()
        .filter(|t| **t != "message.published")
        .map(|t| t.to_string())
        .collect()
}

fn all_channels() -> Vec<String> {
    vec!["**".into()]
}

/// `[webhooks]`: how events are batched, how long a failing endpoint is retried, and how much
/// may wait for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Most events in one POST.
    pub batch_max_events: usize,
    /// How long the first event of a batch waits for others to join it.
    pub batch_delay_ms: u64,
    /// A POST that has not answered in this long counts as failed.
    pub timeout_ms: u64,
    /// A batch is retried (exponential backoff with jitter) for this long, then dropped with a
    /// metric and a log line.
    pub retry_for_secs: u64,
    /// The longest wait between two attempts.
    pub max_backoff_secs: u64,
    /// Events waiting for one endpoint (encoded bytes, the batch in flight included); past it
    /// new events for that endpoint are dropped and counted, and messaging is never slowed.
    pub queue_max_bytes: usize,

    // The memory engine on the disk store (`[history] store = "disk"`) keeps each endpoint's
    // queue on disk too, in `webhooks.redb` beside the history database.
    /// Queued events are committed to disk in one transaction (one fsync) at most this often:
    /// a `kill -9` loses at most the events of the last interval and one commit. 0 commits
    /// as soon as the previous commit is done.
    pub outbox_commit_ms: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            batch_max_events: 100,
            batch_delay_ms: 10,
            timeout_ms: 10_000,
            retry_for_secs: 86_400,
            max_backoff_secs: 300,
            queue_max_bytes: 64 * 1024 * 1024,
            outbox_commit_ms: 5,
        }
    }
}

impl WebhooksConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=10_000).contains(&self.batch_max_events) {
            return Err(invalid("webhooks.batch_max_events", "must be 1 to 10000"));
        }
        if self.timeout_ms == 0 {
            return Err(invalid("webhooks.timeout_ms", "must be above 0"));
        }
        if self.max_backoff_secs == 0 {
            return Err(invalid("webhooks.max_backoff_secs", "must be above 0"));
        }
        if self.queue_max_bytes < 64 * 1024 {
            return Err(invalid(
                "webhooks.queue_max_bytes",
                "must be at least 65536",
            ));
        }
        if self.outbox_commit_ms > 1000 {
            return Err(invalid("webhooks.outbox_commit_ms", "must be 0 to 1000"));
        }
        Ok(())
    }
}

impl WebhookEndpointConfig {
    /// Checks the endpoint; `at` names it in errors (`apps[0].webhooks[1]`).
    pub fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let field = |name: &str| format!("{at}.{name}");
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(invalid(field("url"), "must start with http:// or https://"));
        }
        if secret_bytes(&self.secret).is_none() {
            return Err(invalid(
                field("secret"),
                "must be whsec_ followed by base64 of 24 to 64 bytes",
            ));
        }
        if let Some(unknown) = self
            .events
            .iter()
            .find(|e| !EVENT_TYPES.contains(&e.as_str()))
        {
            return Err(invalid(
                field("events"),
                format!("unknown event type {unknown:?}"),
            ));
        }
        check_patterns(&self.channels, &field("channels"))
    }
}

/// The HMAC key of a `whsec_` secret, if it is one.
pub fn secret_bytes(secret: &str) -> Option<Vec<u8>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_")?)
        .ok()?;
    (24..=64).contains(&bytes.len()).then_some(bytes)
}
