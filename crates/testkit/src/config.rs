//! The test apps and keys every test starts from, and builders for configs that tweak them.

use std::path::Path;

use herald_protocol::Action;
use herald_server::config::{AppConfig, Config, PublishableKeyConfig, SecretKeyConfig};

pub const APP: &str = "app_test";
pub const SK_ID: &str = "sk_id_test";
pub const SK_SECRET: &str = "sk_secret_test_0123456789abcdef";
/// The REST `authorization` header of the app's secret key.
pub const SK_AUTH: &str = "Bearer sk_id_test:sk_secret_test_0123456789abcdef";
/// A second, rotated-in secret key of the same app.
pub const SK2_ID: &str = "sk_id_test_2";
pub const SK2_SECRET: &str = "sk_secret_test2_0123456789abcdef";
/// A secret key limited to `room/*` and publish+subscribe.
pub const SK_NARROW_ID: &str = "sk_id_narrow";
pub const SK_NARROW_SECRET: &str = "sk_secret_narrow_0123456789abcdef";
/// Publishable key with every action and any origin.
pub const PK: &str = "pk_live_test";
/// Publishable key restricted to one origin.
pub const PK_ORIGIN: &str = "pk_live_origin";
pub const ALLOWED_ORIGIN: &str = "https://app.example.com";
/// Publishable key with the dashboard defaults (no `send`), limited to `public/**`.
pub const PK_DEFAULTS: &str = "pk_live_defaults";
pub const REVOKED_PK: &str = "pk_live_revoked";

pub const OTHER_APP: &str = "app_other";
pub const OTHER_SK_ID: &str = "sk_id_other";
pub const OTHER_SK_SECRET: &str = "sk_secret_other_0123456789abcdef";

pub const SUSPENDED_SK_ID: &str = "sk_id_suspended";
pub const SUSPENDED_SK_SECRET: &str = "sk_secret_suspended_0123456789ab";

fn secret_key(id: &str, secret: &str) -> SecretKeyConfig {
    SecretKeyConfig {
        id: id.into(),
        secret: secret.into(),
        channel_patterns: vec!["**".into()],
        actions: Action::ALL.to_vec(),
        auto_inject_turn: true,
        revoked: false,
    }
}

fn publishable_key(id: &str) -> PublishableKeyConfig {
    PublishableKeyConfig {
        id: id.into(),
        channel_patterns: vec!["**".into()],
        actions: Action::ALL.to_vec(),
        allowed_origins: vec![],
        auto_inject_turn: true,
        revoked: false,
    }
}

/// The configuration every test starts from: three apps and a variety of keys.
#[allow(clippy::field_reassign_with_default)]
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.timing.shutdown_deadline_secs = 5;
    config.timing.going_away_drain_ms = 100;
    let mut narrow = secret_key(SK_NARROW_ID, SK_NARROW_SECRET);
    narrow.channel_patterns = vec!["room/*".into()];
    narrow.actions = vec![Action::Publish, Action::Subscribe];
    let mut origin = publishable_key(PK_ORIGIN);
    origin.allowed_origins = vec![ALLOWED_ORIGIN.into()];
    let mut defaults = publishable_key(PK_DEFAULTS);
    defaults.actions = vec![Action::Subscribe, Action::Publish, Action::Presence];
    defaults.channel_patterns = vec!["public/**".into()];
    let mut revoked = publishable_key(REVOKED_PK);
    revoked.revoked = true;
    config.apps = vec![
        AppConfig {
            id: APP.into(),
            suspended: false,
            max_connections: 0,
            secret_keys: vec![
                secret_key(SK_ID, SK_SECRET),
                secret_key(SK2_ID, SK2_SECRET),
                narrow,
            ],
            publishable_keys: vec![publishable_key(PK), origin, defaults, revoked],
            webhooks: Vec::new(),
        },
        AppConfig {
            id: OTHER_APP.into(),
            suspended: false,
            max_connections: 0,
            secret_keys: vec![secret_key(OTHER_SK_ID, OTHER_SK_SECRET)],
            publishable_keys: vec![],
            webhooks: Vec::new(),
        },
        AppConfig {
            id: "app_suspended".into(),
            suspended: true,
            max_connections: 0,
            secret_keys: vec![secret_key(SUSPENDED_SK_ID, SUSPENDED_SK_SECRET)],
            publishable_keys: vec![],
            webhooks: Vec::new(),
        },
    ];
    config
}

/// A config with every timer and limit at the test defaults, tweaked by `f`.
pub fn config_with(f: impl FnOnce(&mut Config)) -> Config {
    let mut config = test_config();
    f(&mut config);
    config
}

/// A config file as `herald serve --config` would read it (for tests that run a shipped config,
/// such as the bench's).
pub fn load_toml(path: impl AsRef<Path>) -> Config {
    Config::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap()
}
