//! Herald's one configuration struct: defaults, TOML loading, environment overrides, validation.
//!
//! `config/herald.toml` (embedded, printed by `herald config default`) documents every field.
//! A config error names the offending field.
//!
//! This file holds the top-level struct, loading and env overrides; each section's struct lives
//! with its defaults in `limits` (`[limits]`, `[timing]`), `engine`, `presence`, `history`,
//! `web` (`[web]`, `[turn]`), `tls` and `apps`, and the cross-field rules in `validate`.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

mod apps;
mod engine;
mod history;
mod limits;
mod presence;
mod tls;
mod validate;
mod web;
mod webhooks;

pub use self::apps::{AppConfig, PublishableKeyConfig, SecretKeyConfig};
pub use self::engine::EngineConfig;
pub use self::history::{HistoryChannels, HistoryConfig, MAX_HISTORY_MESSAGES, MAX_REWIND};
pub use self::limits::{Limits, Timing};
pub use self::presence::{PresenceChannels, PresenceConfig, MAX_ROSTER_CAP};
pub use self::tls::{PlainHttp, TlsConfig};
pub use self::web::{IceServer, TurnConfig, WebConfig};
pub use self::webhooks::{secret_bytes, WebhookEndpointConfig, WebhooksConfig, EVENT_TYPES};

/// The commented default configuration file, embedded in the binary.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../../../config/herald.toml");

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
    /// Presence policy per channel pattern: the roster caps of large rooms.
    pub presence: PresenceConfig,
    /// Channel history: which channels keep recent messages, and rewind on subscribe.
    pub history: HistoryConfig,
    /// Serve wildcard subscriptions such as `devices/*/events` (spec §9.4, Q6).
    pub wildcard_subscriptions: bool,
    /// Tenants and their keys. Empty means "dev mode": the binary generates a dev app.
    pub apps: Vec<AppConfig>,

    // TLS on the listener (`[tls]`, `config/tls.rs`): off unless a certificate is set.
    pub tls: TlsConfig,
    /// How webhook batches are delivered (`[webhooks]`; the endpoints are per app).
    pub webhooks: WebhooksConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: String,
    /// A tracing filter such as `info` or `herald_server=debug`.
    pub level: String,
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
            presence: PresenceConfig::default(),
            history: HistoryConfig::default(),
            wildcard_subscriptions: true,
            apps: Vec::new(),
            tls: TlsConfig::default(),
            webhooks: WebhooksConfig::default(),
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
