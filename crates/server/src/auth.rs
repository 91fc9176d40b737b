//! Credentials: the key store built from config, and connect-time authentication (spec §1-2).
//!
//! Every failure is an [`AuthError`]; [`AuthError::close_reason`], in `errors.rs` beside the other
//! error mappings, is the single place that maps them to close codes. Failures are reported after the WebSocket upgrade, never as HTTP errors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use herald_protocol::claims::ClaimsError;
use herald_protocol::glob::{covered_with_work, has_wildcard, is_covered_by, Pattern};
use herald_protocol::jwt::{JwtError, UnverifiedToken};
use herald_protocol::{Action, ActionSet};
use percent_encoding::percent_decode_str;
use serde_json::value::RawValue;

use crate::config::{Config, IceServer};
use crate::ids::{AppId, PeerId};

/// A tenant at run time.
#[derive(Debug)]
pub struct App {
    pub id: AppId,
    /// Suspended apps are refused at connect (4012).
    pub suspended: AtomicBool,
    /// 0 = unlimited.
    pub max_connections: usize,
    /// Live connections of this app on this node (for the 4010 quota and usage).
    pub connections: AtomicUsize,
    /// Highest `connections` seen since start (`GET /v1/usage`).
    pub peak_connections: AtomicUsize,
    /// Client `publish` and `send` frames accepted for processing (`messagesUsed`).
    pub messages_used: AtomicU64,
}

/// A secret key: signs JWTs (`kid` = id) and authenticates REST calls.
#[derive(Debug)]
pub struct SecretKey {
    pub id: String,
    pub secret: Vec<u8>,
    pub app: Arc<App>,
    pub patterns: Arc<[Pattern]>,
    pub actions: ActionSet,
    pub auto_inject_turn: bool,
    pub revoked: bool,
}

impl SecretKey {
    /// Whether a subscription name lies inside the key's patterns: a concrete channel must match
    /// one; a wildcard subscription must be included in them as a language (spec §9.3), the
    /// same rules the WebSocket applies to subscribe.
    pub fn covers(&self, name: &str) -> bool {
        if has_wildcard(name) {
            is_covered_by(&Pattern::parse(name), &self.patterns)
        } else {
            self.patterns.iter().any(|p| p.matches(name))
        }
    }

    /// True when the patterns cover every channel name (`**`): the key speaks for the whole app.
    pub fn is_app_wide(&self) -> bool {
        is_covered_by(&Pattern::parse("**"), &self.patterns)
    }
}

/// A publishable key: the id is the whole credential; fixed patterns, actions and origins.
#[derive(Debug)]
pub struct PublishableKey {
    pub id: String,
    pub app: Arc<App>,
    pub patterns: Arc<[Pattern]>,
    pub actions: ActionSet,
    /// Normalised (lowercase, no trailing slash). Empty = any origin, including none.
    pub allowed_origins: Vec<String>,
    pub auto_inject_turn: bool,
    pub revoked: bool,
}

/// All apps and keys, immutable after start-up.
#[derive(Debug)]
pub struct KeyStore {
    apps: HashMap<AppId, Arc<App>>,
    secret_keys: HashMap<String, Arc<SecretKey>>,
    publishable_keys: HashMap<String, Arc<PublishableKey>>,
    /// The configured ICE servers, pre-serialized for welcome metadata.
    ice_servers: Option<Box<RawValue>>,
}

/// Which credential a connection used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    Token,
    Publishable,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Token => "token",
            CredentialKind::Publishable => "publishable",
        }
    }
}

/// What a connection may do: the key's actions and patterns narrowed by the JWT (spec §2.2).
#[derive(Debug, Clone)]
pub struct Access {
    pub actions: ActionSet,
    key_patterns: Arc<[Pattern]>,
    claim_patterns: Option<Arc<[Pattern]>>,
}

impl Access {
    pub fn new(
        actions: ActionSet,
        key_patterns: Arc<[Pattern]>,
        claim_patterns: Option<Arc<[Pattern]>>,
    ) -> Self {
        Access {
            actions,
            key_patterns,
            claim_patterns,
        }
    }

    pub fn can(&self, action: Action) -> bool {
        self.actions.contains(action)
    }

    /// A concrete channel must match a key pattern and, with a `channels` claim, a claim entry.
    pub fn allows_channel(&self, channel: &str) -> bool {
        self.key_patterns.iter().any(|p| p.matches(channel))
            && self
                .claim_patterns
                .as_ref()
                .is_none_or(|claims| claims.iter().any(|p| p.matches(channel)))
    }

    /// A wildcard subscription must be included (as a language) in both pattern sets.
    pub fn allows_pattern(&self, pattern: &Pattern) -> bool {
        self.check_pattern(pattern).0
    }

    /// [`Access::allows_pattern`], plus the inclusion-search work it spent (for the caller to
    /// charge to the connection: see `glob::covered_with_work`).
    pub fn check_pattern(&self, pattern: &Pattern) -> (bool, usize) {
        let (in_key, mut work) = covered_with_work(pattern, &self.key_patterns);
        if !in_key {
            return (false, work);
        }
        match &self.claim_patterns {
            None => (true, work),
            Some(claims) => {
                let (in_claims, more) = covered_with_work(pattern, claims);
                work += more;
                (in_claims, work)
            }
        }
    }

    /// The key's own patterns (for REST scope checks).
    pub fn key_patterns(&self) -> &[Pattern] {
        &self.key_patterns
    }
}

/// A connection that passed authentication.
#[derive(Debug)]
pub struct Identity {
    pub app: Arc<App>,
    pub peer_id: PeerId,
    pub kind: CredentialKind,
    /// JWT `exp` (Unix seconds); `None` for publishable keys.
    pub expires_at: Option<i64>,
    pub peer_metadata: Option<Arc<RawValue>>,
    /// `welcome.metadata`: the JWT `metadata` plus injected ICE servers.
    pub welcome_metadata: Option<Box<RawValue>>,
    pub access: Access,
}

/// Why a connect was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credential: pass ?token= or ?key=")]
    MissingCredential,
    #[error("pass exactly one of ?token= and ?key=")]
    BothCredentials,
    #[error("invalid token: {0}")]
    Token(JwtError),
    #[error("invalid token: unknown or revoked kid")]
    UnknownKid,
    #[error("invalid token: {0}")]
    Claims(ClaimsError),
    #[error("token expired")]
    Expired,
    #[error("unknown or revoked key")]
    UnknownKey,
    #[error("origin not allowed")]
    OriginNotAllowed,
    #[error("channels claim exceeds the key's patterns")]
    ChannelsOutsideKey,
    #[error("account suspended")]
    Suspended,
}

/// The credential found in the connect URL's query string.
#[derive(Debug, PartialEq, Eq)]
pub enum Credential {
    Token(String),
    Key(String),
}

/// Extracts the single credential from a raw query string, percent-decoding it (spec §1.2).
/// `+` is kept literally: both SDKs percent-encode, so a `+` is never a space here.
pub fn parse_credential(query: Option<&str>) -> Result<Credential, AuthError> {
    let (mut token, mut key) = (None, None);
    for pair in query.unwrap_or("").split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = || percent_decode_str(value).decode_utf8_lossy().into_owned();
        match name {
            "token" if token.is_none() => token = Some(decoded()),
            "key" if key.is_none() => key = Some(decoded()),
            "token" | "key" => return Err(AuthError::BothCredentials),
            _ => {}
        }
    }
    match (token, key) {
        (Some(_), Some(_)) => Err(AuthError::BothCredentials),
        (Some(t), None) if !t.is_empty() => Ok(Credential::Token(t)),
        (None, Some(k)) if !k.is_empty() => Ok(Credential::Key(k)),
        _ => Err(AuthError::MissingCredential),
    }
}

fn normalise_origin(origin: &str) -> String {
    origin.trim_end_matches('/').to_ascii_lowercase()
}

fn compile(patterns: &[String]) -> Arc<[Pattern]> {
    patterns.iter().map(|p| Pattern::parse(p)).collect()
}

impl KeyStore {
    /// Builds the store from a validated config.
    pub fn from_config(config: &Config) -> KeyStore {
        let mut store = KeyStore {
            apps: HashMap::new(),
            secret_keys: HashMap::new(),
            publishable_keys: HashMap::new(),
            ice_servers: ice_servers_json(&config.turn.ice_servers),
        };
        for app_cfg in &config.apps {
            let app = Arc::new(App {
                id: AppId::new(app_cfg.id.as_str()),
                suspended: AtomicBool::new(app_cfg.suspended),
                max_connections: app_cfg.max_connections,
                connections: AtomicUsize::new(0),
                peak_connections: AtomicUsize::new(0),
                messages_used: AtomicU64::new(0),
            });
            store.apps.insert(app.id.clone(), app.clone());
            for k in &app_cfg.secret_keys {
                let key = SecretKey {
                    id: k.id.clone(),
                    secret: k.secret.as_bytes().to_vec(),
                    app: app.clone(),
                    patterns: compile(&k.channel_patterns),
                    actions: k.actions.iter().copied().collect(),
                    auto_inject_turn: k.auto_inject_turn,
                    revoked: k.revoked,
                };
                store.secret_keys.insert(k.id.clone(), Arc::new(key));
            }
            for k in &app_cfg.publishable_keys {
                let key = PublishableKey {
                    id: k.id.clone(),
                    app: app.clone(),
                    patterns: compile(&k.channel_patterns),
                    actions: k.actions.iter().copied().collect(),
                    allowed_origins: k
                        .allowed_origins
                        .iter()
                        .map(|o| normalise_origin(o))
                        .collect(),
                    auto_inject_turn: k.auto_inject_turn,
                    revoked: k.revoked,
                };
                store.publishable_keys.insert(k.id.clone(), Arc::new(key));
            }
        }
        store
    }

    pub fn apps(&self) -> impl Iterator<Item = &Arc<App>> {
        self.apps.values()
    }

    pub fn app(&self, id: &AppId) -> Option<&Arc<App>> {
        self.apps.get(id)
    }

    /// Authenticates a REST `Authorization` header (spec §13.1): `Bearer sk_id:sk_secret`, or the
    /// legacy single-string secret. Secrets are compared in constant time; publishable keys and
    /// every other failure give the same `None`, so key ids cannot be enumerated.
    pub fn authenticate_rest(&self, authorization: Option<&str>) -> Option<Arc<SecretKey>> {
        use subtle::ConstantTimeEq;
        let credential = authorization?.strip_prefix("Bearer ")?.trim();
        if credential.is_empty() || credential.starts_with("pk_") {
            return None;
        }
        match credential.split_once(':') {
            Some((id, secret)) => {
                let key = self.secret_key(id)?;
                bool::from(key.secret.as_slice().ct_eq(secret.as_bytes())).then(|| key.clone())
            }
            None => {
                // Legacy form: the whole string is the secret. Check every key so the time taken
                // does not depend on which key (if any) matches.
                let mut found = None;
                for key in self.secret_keys.values().filter(|k| !k.revoked) {
                    if bool::from(key.secret.as_slice().ct_eq(credential.as_bytes())) {
                        found = Some(key.clone());
                    }
                }
                found
            }
        }
    }

    /// A live (not revoked) secret key by id.
    pub fn secret_key(&self, id: &str) -> Option<&Arc<SecretKey>> {
        self.secret_keys.get(id).filter(|k| !k.revoked)
    }

    /// Authenticates a connect request. `now` is Unix seconds.
    pub fn authenticate(
        &self,
        query: Option<&str>,
        origin: Option<&str>,
        now: i64,
        clock_skew: i64,
    ) -> Result<Identity, AuthError> {
        match parse_credential(query)? {
            Credential::Token(token) => self.authenticate_token(&token, now, clock_skew),
            Credential::Key(key) => self.authenticate_key(&key, origin),
        }
    }

    fn authenticate_token(
        &self,
        token: &str,
        now: i64,
        clock_skew: i64,
    ) -> Result<Identity, AuthError> {
        let unverified = UnverifiedToken::parse(token).map_err(AuthError::Token)?;
        let key = self
            .secret_key(unverified.kid())
            .ok_or(AuthError::UnknownKid)?;
        let claims = unverified.verify(&key.secret).map_err(AuthError::Token)?;
        claims.validate(now, clock_skew).map_err(|e| match e {
            ClaimsError::Expired => AuthError::Expired,
            other => AuthError::Claims(other),
        })?;
        let claim_actions = claims.actions().map_err(AuthError::Claims)?;
        let actions = claim_actions.map_or(key.actions, |a| a.intersect(key.actions));
        // Suspension (spec §2.2 step 5) is checked before the channels claim (step 6).
        if key.app.suspended.load(Ordering::Relaxed) {
            return Err(AuthError::Suspended);
        }
        let claim_patterns: Option<Arc<[Pattern]>> = claims.channels.as_deref().map(compile);
        if let Some(entries) = &claim_patterns {
            // A claim entry reaching outside the key is refused at connect (spec Q3).
            let outside = entries.iter().any(|p| {
                if has_wildcard(p.as_str()) {
                    !is_covered_by(p, &key.patterns)
                } else {
                    !key.patterns
                        .iter()
                        .any(|k| p.literal().is_some_and(|lit| k.matches(&lit)))
                }
            });
            if outside {
                return Err(AuthError::ChannelsOutsideKey);
            }
        }
        let welcome_metadata = self.welcome_metadata(claims.metadata, key.auto_inject_turn);
        Ok(Identity {
            app: key.app.clone(),
            peer_id: PeerId::new(claims.sub),
            kind: CredentialKind::Token,
            expires_at: claims.exp,
            peer_metadata: claims.peer_metadata.map(Arc::from),
            welcome_metadata,
            access: Access::new(actions, key.patterns.clone(), claim_patterns),
        })
    }

    /// Authenticates a REST `Bearer` credential that is not a secret key (`GET …/messages`):
    /// a connect JWT, or a publishable key (`pk_…`), under the rules of a connect, except that
    /// a publishable key's allowed origins are checked only when the request names an origin
    /// (a browser's same-origin GET sends none; a script that forges one gains nothing a
    /// script could not already do with a missing header).
    pub fn authenticate_bearer(
        &self,
        credential: &str,
        origin: Option<&str>,
        now: i64,
        clock_skew: i64,
    ) -> Result<Identity, AuthError> {
        if credential.starts_with("pk_") {
            self.authenticate_key_with(credential, origin, false)
        } else {
            self.authenticate_token(credential, now, clock_skew)
        }
    }

    fn authenticate_key(&self, id: &str, origin: Option<&str>) -> Result<Identity, AuthError> {
        self.authenticate_key_with(id, origin, true)
    }

    fn authenticate_key_with(
        &self,
        id: &str,
        origin: Option<&str>,
        origin_required: bool,
    ) -> Result<Identity, AuthError> {
        let key = self
            .publishable_keys
            .get(id)
            .filter(|k| !k.revoked)
            .ok_or(AuthError::UnknownKey)?;
        if !key.allowed_origins.is_empty() && (origin_required || origin.is_some()) {
            let origin = origin
                .map(normalise_origin)
                .ok_or(AuthError::OriginNotAllowed)?;
            if !key.allowed_origins.contains(&origin) {
                return Err(AuthError::OriginNotAllowed);
            }
        }
        if key.app.suspended.load(Ordering::Relaxed) {
            return Err(AuthError::Suspended);
        }
        Ok(Identity {
            app: key.app.clone(),
            peer_id: PeerId::new(uuid::Uuid::new_v4().to_string()),
            kind: CredentialKind::Publishable,
            expires_at: None,
            peer_metadata: None,
            welcome_metadata: self.welcome_metadata(None, key.auto_inject_turn),
            access: Access::new(key.actions, key.patterns.clone(), None),
        })
    }

    /// JWT `metadata`, plus the configured ICE servers unless the token brought its own.
    fn welcome_metadata(
        &self,
        metadata: Option<Box<RawValue>>,
        inject: bool,
    ) -> Option<Box<RawValue>> {
        let servers = self.ice_servers.as_ref().filter(|_| inject);
        let Some(servers) = servers else {
            return metadata;
        };
        let Some(metadata) = metadata else {
            return RawValue::from_string(format!("{{\"iceServers\":{}}}", servers.get())).ok();
        };
        let mut map: serde_json::Map<String, serde_json::Value> =
            match serde_json::from_str(metadata.get()) {
                Ok(map) => map,
                Err(_) => return Some(metadata),
            };
        if map.contains_key("iceServers") {
            return Some(metadata);
        }
        let servers: serde_json::Value = serde_json::from_str(servers.get()).unwrap_or_default();
        map.insert("iceServers".into(), servers);
        serde_json::value::to_raw_value(&map)
            .ok()
            .or(Some(metadata))
    }
}

fn ice_servers_json(servers: &[IceServer]) -> Option<Box<RawValue>> {
    if servers.is_empty() {
        return None;
    }
    serde_json::value::to_raw_value(servers).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn credential_parsing() {
        assert_eq!(
            parse_credential(Some("token=a%2Eb")),
            Ok(Credential::Token("a.b".into()))
        );
        assert_eq!(
            parse_credential(Some("x=1&key=pk_1")),
            Ok(Credential::Key("pk_1".into()))
        );
        assert_eq!(
            parse_credential(Some("key=a&token=b")),
            Err(AuthError::BothCredentials)
        );
        assert_eq!(
            parse_credential(Some("key=a&key=b")),
            Err(AuthError::BothCredentials)
        );
        assert_eq!(parse_credential(None), Err(AuthError::MissingCredential));
        assert_eq!(
            parse_credential(Some("token=")),
            Err(AuthError::MissingCredential)
        );
    }

    #[test]
    fn every_auth_error_closes_with_the_spec_code() {
        let code = |e: AuthError| e.close_reason().code.as_u16();
        assert_eq!(code(AuthError::Expired), 4002);
        assert_eq!(code(AuthError::ChannelsOutsideKey), 4003);
        assert_eq!(code(AuthError::Suspended), 4012);
        for e in [
            AuthError::MissingCredential,
            AuthError::UnknownKid,
            AuthError::UnknownKey,
            AuthError::OriginNotAllowed,
        ] {
            assert_eq!(code(e), 4001);
        }
    }
}
