//! What browsers get: the demo app and dev sign-in (`[web]`), and the ICE servers handed to
//! clients in `welcome` (`[turn]`).

use serde::{Deserialize, Serialize};

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
