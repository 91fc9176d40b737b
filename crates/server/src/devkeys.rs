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
    /// they were just created. On unix the file is private to its owner (0600, in a 0700
    /// directory when Herald creates it); a loaded file readable by others is tightened.
    pub fn load_or_create(path: &Path) -> std::io::Result<(DevKeys, bool)> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let keys = serde_json::from_str(&text)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                make_private(path)?;
                Ok((keys, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let keys = DevKeys::generate();
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    create_private_dir(dir)?;
                }
                let text = serde_json::to_string_pretty(&keys).map_err(std::io::Error::other)?;
                write_private(path, text.as_bytes())?;
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
            webhooks: Vec::new(),
        }
    }
}

/// The secret must not be readable by other users of the machine.
#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Creates the file with mode 0600 from the start (no window in which it is world-readable);
/// `create_new` refuses to follow a planted symlink or overwrite a file created meanwhile.
#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(unix)]
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn make_private(_path: &Path) -> std::io::Result<()> {
    Ok(())
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

    #[cfg(unix)]
    #[test]
    fn key_files_are_private_to_their_owner() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = std::env::temp_dir().join(format!("herald-devkeys-mode-{}", std::process::id()));
        let path = dir.join("nested").join("keys.json");
        DevKeys::load_or_create(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // A file left world-readable by an older version is tightened on load.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        DevKeys::load_or_create(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
