//! Client configuration: where to connect, which credential, and the timers and backoff of
//! spec §7.2 and §8.1, with the official SDKs' defaults.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;

/// The official SDKs' default server. Point [`SignallingClientOptions::url`] at your Herald.
pub const DEFAULT_URL: &str = "wss://rms.metered.ca";

/// Errors a token provider may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The future a [`TokenProvider`] returns.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>;

/// Mints a connect JWT. Called before the first connect and again before **every** reconnect,
/// so an expired token (close 4002) is replaced by a fresh one without the application doing
/// anything. Each call has [`SignallingClientOptions::token_provider_timeout`] to answer.
///
/// Any `Fn() -> impl Future<Output = Result<String, E>>` is a provider, so an `async fn`
/// that asks your backend for a token can be passed directly.
pub trait TokenProvider: Send + Sync + 'static {
    /// Returns a fresh JWT.
    fn token(&self) -> TokenFuture;
}

impl<F, Fut, E> TokenProvider for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn token(&self) -> TokenFuture {
        let fut = self();
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

/// How the client authenticates (spec §1.2, §2): exactly one of the two credentials.
#[derive(Clone)]
pub enum Credential {
    /// A publishable key (`pk_live_…`), sent as `?key=`. The server gives each connection a
    /// fresh UUID peer id and no metadata.
    ApiKey(String),
    /// A JWT source, sent as `?token=`.
    TokenProvider(Arc<dyn TokenProvider>),
}

impl fmt::Debug for Credential {
    /// Never prints the credential itself, so options can be logged safely.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::ApiKey(_) => f.write_str("ApiKey(…)"),
            Credential::TokenProvider(_) => f.write_str("TokenProvider(…)"),
        }
    }
}

/// Automatic reconnection after a connection that was welcomed drops (spec §7.2).
///
/// The delay before attempt *n* (counting from 1 since the last welcome) is
/// `min(initial_delay · multiplier^(n-1), max_delay)`, raised to `overload_floor` once after a
/// 4010 close, then jittered by ±`jitter`. Close codes 4001, 4003, 4012 and 4020 never
/// reconnect.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReconnectOptions {
    /// Delay before the first attempt. Default 500 ms.
    pub initial_delay: Duration,
    /// Growth per attempt. Default 2.
    pub multiplier: f64,
    /// Cap on the computed delay. Default 30 s.
    pub max_delay: Duration,
    /// Symmetric jitter as a fraction of the delay. Default 0.2 (±20 %).
    pub jitter: f64,
    /// Attempts before giving up and closing; `None` retries forever. Default 100 (about 50
    /// minutes with the other defaults).
    pub max_attempts: Option<u32>,
    /// The least delay after a 4010 (server over its connection quota): hammering a full
    /// server does not help. Default 30 s.
    pub overload_floor: Duration,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        ReconnectOptions {
            initial_delay: Duration::from_millis(500),
            multiplier: 2.0,
            max_delay: Duration::from_secs(30),
            jitter: 0.2,
            max_attempts: Some(100),
            overload_floor: Duration::from_secs(30),
        }
    }
}

impl ReconnectOptions {
    fn validate(&self) -> Result<(), Error> {
        let bad = |what: &str| Err(Error::InvalidOptions(format!("reconnect: {what}")));
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return bad("multiplier must be finite and at least 1");
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return bad("jitter must be between 0 and 1");
        }
        if self.max_delay < self.initial_delay {
            return bad("max_delay must not be below initial_delay");
        }
        Ok(())
    }

    /// The delay before `attempt` (1-based), given an optional one-off floor and a uniform
    /// random sample in `[-1, 1]` for the jitter. Pure, so it can be tested exactly.
    pub(crate) fn delay(&self, attempt: u32, floor: Option<Duration>, unit: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(1024) as i32;
        let grown = self.initial_delay.as_secs_f64() * self.multiplier.powi(exponent);
        let base = grown.min(self.max_delay.as_secs_f64());
        let base = base.max(floor.map_or(0.0, |f| f.as_secs_f64()));
        let jittered = base + base * self.jitter * unit.clamp(-1.0, 1.0);
        Duration::from_secs_f64(jittered.max(0.0))
    }
}

/// Everything a [`crate::SignallingClient`] needs. Start from
/// [`SignallingClientOptions::token_provider`] or [`SignallingClientOptions::api_key`] and
/// override fields with struct update syntax:
///
/// ```
/// use herald_client::SignallingClientOptions;
/// use std::time::Duration;
///
/// let options = SignallingClientOptions {
///     url: "ws://127.0.0.1:8080".into(),
///     request_timeout: Duration::from_secs(5),
///     ..SignallingClientOptions::api_key("pk_live_dev_…")
/// };
/// ```
#[derive(Debug, Clone)]
pub struct SignallingClientOptions {
    /// The server origin: `wss://host[:port]`, or `ws://` for `localhost`, `127.0.0.1` and
    /// `[::1]` only, with no path, query or fragment. The client appends `/v1` itself, as the
    /// official SDKs do. Default [`DEFAULT_URL`].
    pub url: String,
    /// The credential.
    pub credential: Credential,
    /// Automatic reconnection; `None` turns it off (a dropped connection then closes the
    /// client).
    pub reconnect: Option<ReconnectOptions>,
    /// Re-subscribe every subscribed channel, with its options, after each reconnect.
    /// Default true; [`crate::Peer`] requires it.
    pub auto_resubscribe: bool,
    /// How long a request waits for its `ack` or `error`. Default 15 s.
    pub request_timeout: Duration,
    /// How long the upgrade plus the `welcome` may take. Default 10 s.
    pub welcome_timeout: Duration,
    /// How long the token provider may take on each (re)connect. Default 10 s.
    pub token_provider_timeout: Duration,
    /// Close (code 4000) and reconnect after this long without an inbound frame; a `ping` is
    /// sent after a third of it (at least 1 s) of silence to keep an idle link provably alive.
    /// `None` disables both. Default 60 s.
    pub inactivity_timeout: Option<Duration>,
    /// Capacity of each event stream's queue. Default 1024.
    pub event_buffer: usize,
}

impl SignallingClientOptions {
    fn with_credential(credential: Credential) -> Self {
        SignallingClientOptions {
            url: DEFAULT_URL.to_string(),
            credential,
            reconnect: Some(ReconnectOptions::default()),
            auto_resubscribe: true,
            request_timeout: Duration::from_secs(15),
            welcome_timeout: Duration::from_secs(10),
            token_provider_timeout: Duration::from_secs(10),
            inactivity_timeout: Some(Duration::from_secs(60)),
            event_buffer: 1024,
        }
    }

    /// Options that authenticate with JWTs from `provider`.
    pub fn token_provider(provider: impl TokenProvider) -> Self {
        Self::with_credential(Credential::TokenProvider(Arc::new(provider)))
    }

    /// Options that authenticate with a publishable key.
    pub fn api_key(key: impl Into<String>) -> Self {
        Self::with_credential(Credential::ApiKey(key.into()))
    }

    /// The same options with another server origin.
    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// Checks every field and returns the origin to connect to (without a trailing slash).
    pub(crate) fn validate(&self) -> Result<String, Error> {
        if let Some(reconnect) = &self.reconnect {
            reconnect.validate()?;
        }
        if self.request_timeout.is_zero()
            || self.welcome_timeout.is_zero()
            || self.token_provider_timeout.is_zero()
        {
            return Err(Error::InvalidOptions("timeouts must be positive".into()));
        }
        if self.inactivity_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::InvalidOptions(
                "inactivity_timeout must be positive; use None to disable it".into(),
            ));
        }
        if let Credential::ApiKey(key) = &self.credential {
            if key.is_empty() {
                return Err(Error::InvalidOptions("the API key is empty".into()));
            }
        }
        validate_origin(&self.url)
    }
}

/// Applies the official SDKs' URL rules (spec §1.1) and returns `scheme://authority`.
pub(crate) fn validate_origin(url: &str) -> Result<String, Error> {
    let bad = |why: &str| Err(Error::InvalidOptions(format!("url {url:?}: {why}")));
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => return bad("expected wss://host"),
    };
    if rest.contains(['?', '#']) {
        return bad("no query string or fragment allowed");
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !(path.is_empty() || path == "/") {
        return bad("no path allowed: give the origin only, the client appends /v1");
    }
    if authority.is_empty() || authority.contains('@') {
        return bad("expected a host (and no user info)");
    }
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        match bracketed.split_once(']') {
            Some((h, _)) => h.to_string(),
            None => return bad("unterminated IPv6 address"),
        }
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .to_ascii_lowercase()
    };
    match scheme.as_str() {
        "wss" => {}
        "ws" if matches!(host.as_str(), "localhost" | "127.0.0.1" | "::1") => {}
        "ws" => return bad("ws:// is only allowed for localhost; use wss://"),
        _ => return bad("the scheme must be wss:// (or ws:// for localhost)"),
    }
    Ok(format!("{scheme}://{authority}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        for (url, origin) in [
            ("wss://rms.metered.ca", "wss://rms.metered.ca"),
            ("wss://rms.metered.ca/", "wss://rms.metered.ca"),
            ("WSS://Example.com:8443", "wss://Example.com:8443"),
            ("ws://127.0.0.1:8080", "ws://127.0.0.1:8080"),
            ("ws://localhost", "ws://localhost"),
            ("ws://[::1]:9000/", "ws://[::1]:9000"),
        ] {
            assert_eq!(validate_origin(url).unwrap(), origin, "{url}");
        }
        for url in [
            "rms.metered.ca",
            "https://rms.metered.ca",
            "ws://example.com",
            "ws://10.0.0.1:80",
            "wss://host/v1",
            "wss://host?x=1",
            "wss://host#f",
            "wss://",
            "wss://user@host",
        ] {
            assert!(validate_origin(url).is_err(), "{url}");
        }
    }

    #[test]
    fn backoff_curve_cap_floor_and_jitter() {
        let r = ReconnectOptions::default();
        let ms = |attempt, floor, unit| r.delay(attempt, floor, unit).as_millis();
        assert_eq!(ms(1, None, 0.0), 500);
        assert_eq!(ms(2, None, 0.0), 1000);
        assert_eq!(ms(3, None, 0.0), 2000);
        assert_eq!(ms(7, None, 0.0), 30_000, "500·2^6 = 32 s is capped at 30 s");
        assert_eq!(ms(100, None, 0.0), 30_000);
        assert_eq!(ms(u32::MAX, None, 0.0), 30_000);
        assert_eq!(ms(1, None, 1.0), 600);
        assert_eq!(ms(1, None, -1.0), 400);
        assert_eq!(ms(1, Some(Duration::from_secs(30)), 0.0), 30_000);
        assert_eq!(ms(1, Some(Duration::from_secs(30)), -1.0), 24_000);
        assert_eq!(ms(8, Some(Duration::from_secs(30)), 1.0), 36_000);
    }

    #[test]
    fn option_validation() {
        let ok = SignallingClientOptions::api_key("pk").with_url("ws://127.0.0.1:1");
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.reconnect = Some(ReconnectOptions {
            multiplier: 0.5,
            ..ReconnectOptions::default()
        });
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.inactivity_timeout = Some(Duration::ZERO);
        assert!(bad.validate().is_err());
        assert!(SignallingClientOptions::api_key("")
            .with_url("ws://localhost")
            .validate()
            .is_err());
        assert_eq!(
            format!(
                "{:?}",
                SignallingClientOptions::api_key("pk_secret").credential
            ),
            "ApiKey(…)"
        );
    }
}
