//! `[[apps]]`: tenants and their secret and publishable keys, with the keys' defaults.

use herald_protocol::Action;
use serde::{Deserialize, Serialize};

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
    /// Endpoints told what happens in the app (`config/webhooks.rs`).
    #[serde(default)]
    pub webhooks: Vec<super::WebhookEndpointConfig>,
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
