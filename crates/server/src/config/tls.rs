//! `[tls]`: serve `https://` and `wss://` on the listener itself, with a certificate reloaded
//! without a restart (`crate::tls`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// TLS on the listener. Off unless both `cert` and `key` are set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain: the server's certificate first, then its intermediates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) of the first certificate in `cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// How often the files are read to notice a renewed certificate (SIGHUP reloads at once).
    /// 0: only on SIGHUP.
    pub watch_interval_ms: u64,
    /// What a plain-HTTP request on the TLS listener gets: `refuse` (400 naming `https://`)
    /// or `redirect` (308 to the same URL over `https://`).
    pub plain_http: PlainHttp,
}

/// The answer to a plain-HTTP request on a TLS listener. Either way it is one response and a
/// close; a WebSocket client on `ws://` fails at its upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlainHttp {
    Refuse,
    Redirect,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: None,
            key: None,
            watch_interval_ms: 5_000,
            plain_http: PlainHttp::Refuse,
        }
    }
}

/// Fastest file check allowed: each check reads both files.
const MIN_WATCH_INTERVAL_MS: u64 = 100;

impl TlsConfig {
    /// Whether the listener speaks TLS.
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        match (&self.cert, &self.key) {
            (Some(_), None) => {
                return Err(invalid("tls.key", "tls.cert is set but tls.key is not"))
            }
            (None, Some(_)) => {
                return Err(invalid("tls.cert", "tls.key is set but tls.cert is not"))
            }
            _ => {}
        }
        if self.watch_interval_ms != 0 && self.watch_interval_ms < MIN_WATCH_INTERVAL_MS {
            return Err(invalid(
                "tls.watch_interval_ms",
                format!("must be 0 (SIGHUP only) or at least {MIN_WATCH_INTERVAL_MS}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::config::Config;

    #[test]
    fn cert_without_key_names_the_missing_field() {
        let c = Config::from_toml("[tls]\ncert = \"/etc/herald/cert.pem\"\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("`tls.key`"), "{e}");
    }

    #[test]
    fn plain_http_takes_refuse_or_redirect_only() {
        let c = Config::from_toml("[tls]\nplain_http = \"redirect\"\n").unwrap();
        assert_eq!(c.tls.plain_http, super::PlainHttp::Redirect);
        assert!(Config::from_toml("[tls]\nplain_http = \"allow\"\n").is_err());
    }

    #[test]
    fn a_watch_interval_below_the_floor_is_refused_but_zero_is_sighup_only() {
        let c = Config::from_toml("[tls]\nwatch_interval_ms = 10\n").unwrap();
        assert!(c.validate().is_err());
        let c = Config::from_toml("[tls]\nwatch_interval_ms = 0\n").unwrap();
        c.validate().unwrap();
    }
}
