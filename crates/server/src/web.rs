//! The browser demo: the presence & chat app at `/` (files in `web/app`, embedded in the
//! binary) and `POST /dev/token`, the development-only sign-in that mints a JWT for anyone.
//!
//! `[web] demo` switches the page on; `[web] dev_tokens` switches the token endpoint on (dev mode
//! turns it on). The page talks to Herald only through the wire protocol at `/v1`; it fetches
//! nothing from anywhere else, and its content security policy says so.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_protocol::claims::Claims;
use herald_protocol::jwt;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::clock::unix_now;
use crate::config::SecretKeyConfig;
use crate::errors::RestCode;
use crate::rest::ApiError;
use crate::state::ServerState;

const INDEX_HTML: &str = include_str!("../../../web/app/index.html");

/// The app's files under `/app/`: name, body, content type.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        include_str!("../../../web/app/app.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "herald-client.js",
        include_str!("../../../web/app/herald-client.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "call.js",
        include_str!("../../../web/app/call.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "ui.js",
        include_str!("../../../web/app/ui.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "app.css",
        include_str!("../../../web/app/app.css"),
        "text/css; charset=utf-8",
    ),
    (
        "favicon.svg",
        include_str!("../../../web/app/favicon.svg"),
        "image/svg+xml",
    ),
];

/// Lifetime of a dev token. The app asks for a fresh one on every (re)connect.
const DEV_TOKEN_TTL_SECS: i64 = 3600;
/// How long after its expiry a previous token still proves its peer id (a tab reconnecting
/// after a laptop slept overnight keeps its identity).
const DEV_REFRESH_GRACE_SECS: i64 = 24 * 3600;
/// Largest accepted `POST /dev/token` body.
const MAX_DEV_TOKEN_BODY: usize = 4 * 1024;
const MAX_USERNAME_CHARS: usize = 40;
const MAX_AVATAR_URL_BYTES: usize = 512;
const MAX_PEER_ID_BYTES: usize = 64;
/// Avatar colours handed out when the client does not pick one.
const PALETTE: &[&str] = &[
    "#4f46e5", "#0891b2", "#059669", "#ca8a04", "#dc2626", "#db2777", "#7c3aed", "#475569",
];

pub fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/", get(index))
        .route("/app/{file}", get(asset))
        .route("/dev/token", post(dev_token))
}

/// The policy for every page and asset. Scripts and styles come only from this origin, images
/// from this origin or an avatar's http(s) URL, and the only connection allowed is the
/// WebSocket back to the host the page was loaded from (CSP `'self'` does not cover `ws:` in
/// every browser, so the host is spelled out when it is a plain host name).
fn csp(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        });
    let connect = match host {
        Some(host) => format!("'self' ws://{host} wss://{host}"),
        None => "'self'".to_string(),
    };
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' http: https:; \
         media-src 'self' blob: mediastream:; connect-src {connect}; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'"
    )
}

fn page(headers: &HeaderMap, body: &'static str, content_type: &'static str) -> Response {
    let policy = HeaderValue::from_str(&csp(headers))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_SECURITY_POLICY, policy),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the demo app, when `[web] demo` is on.
async fn index(State(state): State<Arc<ServerState>>, headers: HeaderMap) -> Response {
    if !state.config.web.demo {
        return ApiError::not_found().into_response();
    }
    page(&headers, INDEX_HTML, "text/html; charset=utf-8")
}

/// `GET /app/<file>`: the app's scripts, styles and icon.
async fn asset(
    State(state): State<Arc<ServerState>>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, body, content_type)) if state.config.web.demo => {
            page(&headers, body, content_type)
        }
        _ => ApiError::not_found().into_response(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DevTokenRequest {
    username: String,
    #[serde(default)]
    avatar_url: Option<String>,
    #[serde(default)]
    color: Option<String>,
    /// Keep the same peer id across token refreshes: honoured only with `previous_token`.
    #[serde(default)]
    peer_id: Option<String>,
    /// A token this server minted for `peer_id`: the proof that the caller is that peer.
    #[serde(default)]
    previous_token: Option<String>,
}

fn error(status: StatusCode, code: RestCode, message: &str) -> Response {
    (
        status,
        Json(json!({"error": code.as_str(), "message": message})),
    )
        .into_response()
}

fn invalid(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, RestCode::InvalidRequest, message)
}

/// 1-40 characters after trimming, no control characters. Anything else is allowed: the app
/// renders names as text, so `<b>` is just a strange name.
fn check_username(raw: &str) -> Result<String, &'static str> {
    let name = raw.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_USERNAME_CHARS {
        return Err("username must be 1-40 characters");
    }
    if name.chars().any(char::is_control) {
        return Err("username must not contain control characters");
    }
    Ok(name.to_string())
}

/// An absolute `http(s)://` URL or a same-origin path (`/…`, not `//…`), at most 512 bytes, with
/// no spaces or control characters. `data:`, `javascript:` and everything else are refused.
fn check_avatar_url(raw: &str) -> Result<Option<String>, &'static str> {
    let url = raw.trim();
    if url.is_empty() {
        return Ok(None);
    }
    let lower = url.to_ascii_lowercase();
    let scheme_ok = ["https://", "http://"]
        .iter()
        .any(|s| lower.starts_with(s) && lower.len() > s.len());
    let path_ok = url.starts_with('/') && !url.starts_with("//") && !url.starts_with("/\\");
    if url.len() > MAX_AVATAR_URL_BYTES
        || !(scheme_ok || path_ok)
        || url
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return Err("avatarUrl must be an http(s) URL or a path on this server, at most 512 bytes");
    }
    Ok(Some(url.to_string()))
}

/// `#rrggbb`, normalised to lower case.
fn check_color(raw: &str) -> Result<String, &'static str> {
    let ok =
        raw.len() == 7 && raw.starts_with('#') && raw[1..].bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(raw.to_ascii_lowercase())
    } else {
        Err("color must look like #1a2b3c")
    }
}

fn check_peer_id(raw: &str) -> Result<String, &'static str> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_PEER_ID_BYTES
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(raw.to_string())
    } else {
        Err("peerId must be 1-64 characters of A-Z, a-z, 0-9, - and _")
    }
}

/// Whether `previous_token` is a token signed with `key` for `peer_id` that expired at most
/// [`DEV_REFRESH_GRACE_SECS`] ago. Peer ids are public (every presence entry shows them), so
/// only a token proves that the caller is that peer.
fn proves_peer(
    previous_token: Option<&str>,
    peer_id: &str,
    key: &SecretKeyConfig,
    now: i64,
) -> bool {
    let Some(token) = previous_token else {
        return false;
    };
    let Ok(unverified) = jwt::UnverifiedToken::parse(token) else {
        return false;
    };
    if unverified.kid() != key.id {
        return false;
    }
    match unverified.verify(key.secret.as_bytes()) {
        Ok(claims) => {
            claims.sub == peer_id
                && claims
                    .exp
                    .is_some_and(|exp| exp.saturating_add(DEV_REFRESH_GRACE_SECS) >= now)
        }
        Err(_) => false,
    }
}

fn palette_color(peer_id: &str) -> &'static str {
    let hash = peer_id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    PALETTE[hash as usize % PALETTE.len()]
}

/// `POST /dev/token` `{username, avatarUrl?, color?, peerId?, previousToken?}` → `{token,
/// peerId, expiresAt, peerMetadata}`. The JWT is signed with the first live secret key of the
/// first app, and its `peerMetadata` is `{username, avatarUrl?, color}`. Without `peerId` the
/// peer id is new and random; with it, `previousToken` must be a token minted for that peer id
/// (403 otherwise). 403 unless `[web] dev_tokens` is on.
async fn dev_token(State(state): State<Arc<ServerState>>, body: Body) -> Response {
    if !state.config.web.dev_tokens {
        return error(
            StatusCode::FORBIDDEN,
            RestCode::DevTokensDisabled,
            "Sign-in with POST /dev/token is disabled on this server. It is for development \
             only: run Herald in dev mode (no [[apps]] configured) or set [web] dev_tokens = true. \
             In production, your backend mints tokens with POST /v1/tokens.",
        );
    }
    let Ok(bytes) = to_bytes(body, MAX_DEV_TOKEN_BODY).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            RestCode::InvalidRequest,
            "body larger than 4 KB",
        );
    };
    let req: DevTokenRequest = match serde_json::from_slice(&bytes) {
        Ok(req) => req,
        Err(_) => return invalid("body must be a JSON object with a string username"),
    };
    let username = match check_username(&req.username) {
        Ok(name) => name,
        Err(msg) => return invalid(msg),
    };
    let avatar_url = match req.avatar_url.as_deref().map(check_avatar_url) {
        None => None,
        Some(Ok(url)) => url,
        Some(Err(msg)) => return invalid(msg),
    };
    let Some(key) = state
        .config
        .apps
        .first()
        .and_then(|app| app.secret_keys.iter().find(|k| !k.revoked))
    else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            RestCode::NoSigningKey,
            "the first configured app has no live secret key to sign dev tokens with",
        );
    };
    let now = unix_now();
    // A caller-chosen peer id is someone's identity: minting it on request would let anyone
    // who can reach this page take over a connected peer and read its directs.
    let peer_id = match req.peer_id.as_deref().map(check_peer_id) {
        None => format!("u-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        Some(Err(msg)) => return invalid(msg),
        Some(Ok(id)) if proves_peer(req.previous_token.as_deref(), &id, key, now) => id,
        Some(Ok(_)) => {
            return error(
                StatusCode::FORBIDDEN,
                RestCode::PeerIdNotProven,
                "peerId is kept only for its owner: send the previousToken you were given for \
                 it, or leave peerId out to get a new one",
            )
        }
    };
    let color = match req.color.as_deref().map(check_color) {
        None => palette_color(&peer_id).to_string(),
        Some(Ok(color)) => color,
        Some(Err(msg)) => return invalid(msg),
    };
    let mut meta = Map::new();
    meta.insert("username".into(), Value::String(username));
    if let Some(url) = avatar_url {
        meta.insert("avatarUrl".into(), Value::String(url));
    }
    meta.insert("color".into(), Value::String(color));
    let peer_metadata = Value::Object(meta);
    let Ok(raw_meta) = serde_json::value::to_raw_value(&peer_metadata) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            RestCode::InternalError,
            "cannot encode peerMetadata",
        );
    };
    let expires_at = now + DEV_TOKEN_TTL_SECS;
    let claims = Claims {
        sub: peer_id.clone(),
        exp: Some(expires_at),
        iat: Some(now),
        nbf: None,
        channels: None,
        permissions: None,
        metadata: None,
        peer_metadata: Some(raw_meta),
    };
    let token = jwt::sign(&key.id, key.secret.as_bytes(), &claims);
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "token": token,
            "peerId": peer_id,
            "expiresAt": expires_at,
            "peerMetadata": peer_metadata,
        })),
    )
        .into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert_eq!(check_username("  Ana ").unwrap(), "Ana");
        assert_eq!(
            check_username("<img src=x onerror=alert(1)>").unwrap(),
            "<img src=x onerror=alert(1)>"
        );
        assert!(check_username("").is_err());
        assert!(check_username("   ").is_err());
        assert!(check_username(&"é".repeat(40)).is_ok());
        assert!(check_username(&"é".repeat(41)).is_err());
        assert!(check_username("a\nb").is_err());
    }

    #[test]
    fn avatar_urls() {
        assert_eq!(check_avatar_url("").unwrap(), None);
        assert!(check_avatar_url("https://example.com/a.png")
            .unwrap()
            .is_some());
        assert!(check_avatar_url("HTTP://example.com/a.png")
            .unwrap()
            .is_some());
        assert!(check_avatar_url("/avatars/a.png").unwrap().is_some());
        for bad in [
            "javascript:alert(1)",
            "data:image/png;base64,AAAA",
            "//evil.example/a.png",
            "/\\evil.example",
            "https://",
            "https://x/a b.png",
            "ftp://x/a.png",
            "a.png",
        ] {
            assert!(check_avatar_url(bad).is_err(), "{bad}");
        }
        assert!(check_avatar_url(&format!("https://x/{}", "a".repeat(600))).is_err());
    }

    #[test]
    fn colors_and_peer_ids() {
        assert_eq!(check_color("#A1B2C3").unwrap(), "#a1b2c3");
        assert!(check_color("red").is_err());
        assert!(check_color("#12345").is_err());
        assert!(check_color("#12345g").is_err());
        assert!(check_peer_id("u-0123abc_X").is_ok());
        assert!(check_peer_id("").is_err());
        assert!(check_peer_id("a b").is_err());
        assert!(check_peer_id(&"a".repeat(65)).is_err());
        assert!(PALETTE.contains(&palette_color("anyone")));
    }

    #[test]
    fn csp_spells_out_the_websocket_host() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        let policy = csp(&headers);
        assert!(policy.contains("connect-src 'self' ws://127.0.0.1:8080 wss://127.0.0.1:8080;"));
        assert!(policy.contains("script-src 'self';"));
        headers.insert(header::HOST, HeaderValue::from_static("x; script-src *"));
        assert!(csp(&headers).contains("connect-src 'self';"));
    }
}
