//! Dev mode: with no apps configured, Herald creates one app with a secret key and a
//! publishable key, keeps them in a small JSON file so they survive restarts, and prints them.

use std::path::Path;

use herald_protocol::Action;
use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};

use crate::config::{AppConfig, PublishableKeyConfig, SecretKeyConfig};

/// Default location, relative to the working directory (ignored by git).
pub const DEV_KEYS_PATH: &str = ".herald/dev-keys.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DevKeys {
    pub app_id: String,
    pub secret_key_id: String,
    pub secret: String,
    pub publishable_key: String,
}

impl DevKeys {
    pub fn generate() -> DevKeys {
        let mut rng = rand::rng();
        let mut random = |n| Alphanumeric.sample_string(&mut rng, n);
        DevKeys {
            app_id: "app_dev".into(),
            secret_key_id: format!("sk_id_dev_{}", random(12)),
            secret: format!("sk_secret_{}", random(40)),
            publishable_key: format!("pk_live_dev_{}", random(24)),
        }
    }

    /// Loads the keys at `path`, or generates and stores new ones. Returns the keys and whether
    /// they were just created.
    pub fn load_or_create(path: &Path) -> std::io::Result<(DevKeys, bool)> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let keys = serde_json::from_str(&text)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                Ok((keys, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let keys = DevKeys::generate();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(
                    path,
                    serde_json::to_string_pretty(&keys).map_err(std::io::Error::other)?,
                )?;
                Ok((keys, true))
            }
            Err(e) => Err(e),
        }
    }

    /// The dev app: everything allowed, `send` included for the publishable key so that
    /// MeteredPeer calls work out of the box in development.
    pub fn app_config(&self) -> AppConfig {
        AppConfig {
            id: self.app_id.clone(),
            suspended: false,
            max_connections: 0,
            secret_keys: vec![SecretKeyConfig {
                id: self.secret_key_id.clone(),
                secret: self.secret.clone(),
                channel_patterns: vec!["**".into()],
                actions: Action::ALL.to_vec(),
                auto_inject_turn: true,
                revoked: false,
            }],
            publishable_keys: vec![PublishableKeyConfig {
                id: self.publishable_key.clone(),
                channel_patterns: vec!["**".into()],
                actions: Action::ALL.to_vec(),
                allowed_origins: Vec::new(),
                auto_inject_turn: true,
                revoked: false,
            }],
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_persist_between_runs() {
        let dir = std::env::temp_dir().join(format!("herald-devkeys-{}", std::process::id()));
        let path = dir.join("keys.json");
        let (first, created) = DevKeys::load_or_create(&path).unwrap();
        assert!(created);
        let (again, created) = DevKeys::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(first, again);
        let mut config = crate::Config::default();
        config.apps.push(first.app_config());
        config.validate().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
