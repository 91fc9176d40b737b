//! The REST control plane (spec §13): token minting, channel peers and occupancy, server-side
//! publish, kick, and usage. Every response body is JSON; every failure uses the spec's status
//! and error code.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::{Json, Router};
use herald_protocol::claims::{
    is_json_object, Claims, MAX_CHANNEL_CLAIMS, MAX_METADATA_BYTES, MAX_PEER_METADATA_BYTES,
    MAX_PERMISSION_CLAIMS,
};
use herald_protocol::glob::{has_wildcard, is_covered_by, Pattern};
use herald_protocol::validate::{
    is_reserved_channel, is_valid_channel, is_valid_subject, is_valid_target_peer_id,
};
use herald_protocol::{jwt, Action, ActionSet};
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::auth::SecretKey;
use crate::clock::unix_now;
use crate::close::CloseReason;
use crate::engine::{EngineError, Occupancy, Publication};
use crate::errors::RestCode;
use crate::ids::{ChannelName, PeerId};
use crate::state::ServerState;

/// Largest accepted request body (spec §10); above it: 413.
pub const MAX_BODY_BYTES: usize = 32 * 1024;
/// `expiresInSec` default and cap for minted tokens.
const DEFAULT_TOKEN_TTL: i64 = 3600;
const MAX_TOKEN_TTL: i64 = 86_400;
/// What the synthetic plan reports for "no cap": large, and exact in every JSON client.
const UNLIMITED: i64 = 1_000_000_000;

pub(crate) mod history;
pub mod schema;
pub(crate) mod webhooks;

use schema::{
    ErrorBody, KickResponse, MintRequest, MintResponse, PeersResponse, Plan, PublishRequest,
    PublishResponse, UsageResponse,
};

pub fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/v1/tokens", post(mint_token))
        .route("/v1/usage", get(usage))
        .route("/v1/peers/{peer_id}", delete(kick_peer))
        .route("/v1/webhooks/test", post(webhooks::send_test))
        .route("/v1/channels/{*rest}", any(channel_endpoint))
}

/// A REST failure: status plus the spec's `{"error", "message"}` body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: RestCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: RestCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    /// 400 `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, RestCode::InvalidRequest, message)
    }
    /// One response for every 401 cause (spec §13.2).
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            RestCode::Unauthorized,
            "missing or invalid secret key",
        )
    }
    fn reserved() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            RestCode::ChannelReserved,
            "channel prefix is reserved",
        )
    }
    pub(crate) fn not_authorized(channel: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            RestCode::ChannelNotAuthorized,
            format!("channel not in key's allowed patterns: {channel}"),
        )
    }
    pub(crate) fn action(action: Action) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            RestCode::ActionNotPermitted,
            format!("key lacks the {} action", action.as_str()),
        )
    }
    /// 403 for an operation that reaches the whole app (a kick) from a key that does not.
    fn not_app_wide(what: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            RestCode::ChannelNotAuthorized,
            format!("{what} needs a key whose patterns cover every channel (**)"),
        )
    }
    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            RestCode::NotFound,
            "no such endpoint",
        )
    }
    /// 503 `internal_error` for a fault of Herald's own.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            RestCode::InternalError,
            message,
        )
    }
    /// 404 for the history of a channel that keeps none.
    fn no_history(channel: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            RestCode::HistoryNotEnabled,
            format!("channel keeps no history: {channel}"),
        )
    }
}

/// The engine's failures answer with the one mapping in `errors.rs`.
impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        let (status, code, message) = err.rest();
        ApiError::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code,
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

/// The calling secret key, as an extractor: a handler that takes it answers 401 before it reads
/// anything else. The scope checks (actions, patterns) stay in the handlers, next to the channel
/// or peer they are about.
pub struct AppKey(pub Arc<SecretKey>);

impl FromRequestParts<Arc<ServerState>> for AppKey {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ServerState>,
    ) -> Result<Self, ApiError> {
        authorize(state, &parts.headers).map(AppKey)
    }
}

/// The calling secret key, from `Authorization: Bearer …`.
pub fn authorize(state: &ServerState, headers: &HeaderMap) -> Result<Arc<SecretKey>, ApiError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    state
        .keys
        .authenticate_rest(header)
        .ok_or_else(ApiError::unauthorized)
}

/// Refuses a key without `action` (403 `action_not_permitted`).
pub(crate) fn require_action(key: &SecretKey, action: Action) -> Result<(), ApiError> {
    if key.actions.contains(action) {
        Ok(())
    } else {
        Err(ApiError::action(action))
    }
}

/// Reads a body of at most [`MAX_BODY_BYTES`] (413 above it).
async fn read_body(body: Body) -> Result<axum::body::Bytes, ApiError> {
    to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            RestCode::InvalidRequest,
            "body larger than 32 KB",
        )
    })
}

fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid(format!("malformed body: {e}")))
}

fn check_object(name: &str, raw: Option<&RawValue>, cap: usize) -> Result<(), ApiError> {
    match raw {
        Some(raw) if !is_json_object(raw) => {
            Err(ApiError::invalid(format!("{name} must be a JSON object")))
        }
        Some(raw) if raw.get().len() > cap => {
            Err(ApiError::invalid(format!("{name} exceeds {cap} bytes")))
        }
        _ => Ok(()),
    }
}

/// Checks a concrete channel against the key's scope, in the spec's order.
fn check_channel_scope(key: &SecretKey, channel: &str) -> Result<(), ApiError> {
    check_concrete_channel(channel)?;
    if !key.covers(channel) {
        return Err(ApiError::not_authorized(channel));
    }
    Ok(())
}

/// A channel a REST call may name: valid, not reserved, not a pattern.
fn check_concrete_channel(channel: &str) -> Result<(), ApiError> {
    if !is_valid_channel(channel) {
        return Err(ApiError::invalid(
            "channel must be 1-256 bytes without control characters",
        ));
    }
    if is_reserved_channel(channel) {
        return Err(ApiError::reserved());
    }
    if has_wildcard(channel) {
        return Err(ApiError::invalid(
            "channel must be a concrete name, not a pattern",
        ));
    }
    Ok(())
}

/// `POST /v1/tokens`: mint a connect JWT within the calling key's scope (spec §13.3).
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", operation_id = "mintToken",
    request_body = MintRequest,
    responses(
        (status = 200, description = "The token", body = MintResponse),
        (status = 400, description = "`invalid_request` or `channel_reserved`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "A channel or permission outside the key's scope", body = ErrorBody),
        (status = 413, description = "Body over 32 KB", body = ErrorBody),
    ),
    security(("secretKey" = [])))]
pub(crate) async fn mint_token(AppKey(key): AppKey, body: Body) -> ApiResult {
    let bytes = read_body(body).await?;
    let req: MintRequest = parse_json(&bytes)?;
    if !is_valid_subject(&req.peer_id) {
        return Err(ApiError::invalid(
            "peerId must be 1-128 printable ASCII characters",
        ));
    }
    if let Some(channels) = &req.channels {
        if channels.len() > MAX_CHANNEL_CLAIMS {
            return Err(ApiError::invalid(format!(
                "at most {MAX_CHANNEL_CLAIMS} channels"
            )));
        }
        for channel in channels {
            if !is_valid_channel(channel) {
                return Err(ApiError::invalid(format!(
                    "invalid channel pattern: {channel:?}"
                )));
            }
            if is_reserved_channel(channel) {
                return Err(ApiError::reserved());
            }
            // Real glob-language inclusion: `a/**` is not within `a/*` (spec §9.3).
            if !is_covered_by(&Pattern::parse(channel), &key.patterns) {
                return Err(ApiError::not_authorized(channel));
            }
        }
    }
    if let Some(permissions) = &req.permissions {
        if permissions.len() > MAX_PERMISSION_CLAIMS {
            return Err(ApiError::invalid(format!(
                "at most {MAX_PERMISSION_CLAIMS} permissions"
            )));
        }
        let mut requested = ActionSet::NONE;
        for p in permissions {
            let action = Action::parse(p)
                .ok_or_else(|| ApiError::invalid(format!("unknown permission: {p:?}")))?;
            requested = requested.with(action);
        }
        if let Some(missing) = requested.iter().find(|a| !key.actions.contains(*a)) {
            return Err(ApiError::action(missing));
        }
    }
    let ttl = req.expires_in_sec.unwrap_or(DEFAULT_TOKEN_TTL);
    if !(1..=MAX_TOKEN_TTL).contains(&ttl) {
        return Err(ApiError::invalid(format!(
            "expiresInSec must be between 1 and {MAX_TOKEN_TTL}"
        )));
    }
    check_object("metadata", req.metadata.as_deref(), MAX_METADATA_BYTES)?;
    check_object(
        "peerMetadata",
        req.peer_metadata.as_deref(),
        MAX_PEER_METADATA_BYTES,
    )?;
    let now = unix_now();
    let expires_at = now + ttl;
    let claims = Claims {
        sub: req.peer_id,
        exp: Some(expires_at),
        iat: Some(now),
        nbf: None,
        channels: req.channels,
        permissions: req.permissions,
        metadata: req.metadata,
        peer_metadata: req.peer_metadata,
    };
    let token = jwt::sign(&key.id, &key.secret, &claims);
    Ok(Json(MintResponse { token, expires_at }).into_response())
}

/// `/v1/channels/<id>/peers`, `…/occupancy`, `…/publish` and `…/messages` (history). The id is everything between the
/// prefix and the last segment, percent-decoded exactly once, so `dm%2Fx` and `dm/x` both work.
async fn channel_endpoint(
    State(state): State<Arc<ServerState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let rest = uri.path().strip_prefix("/v1/channels/").unwrap_or_default();
    let Some((raw_id, action)) = rest.rsplit_once('/') else {
        return Err(ApiError::not_found());
    };
    let Some(&(_, ref allowed, handler)) = CHANNEL_ENDPOINTS.iter().find(|e| e.0 == action) else {
        return Err(ApiError::not_found());
    };
    if method != allowed {
        let refusal = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            RestCode::InvalidRequest,
            "method not allowed",
        );
        // RFC 9110 §15.5.6: a 405 names the methods the resource does allow.
        return Ok(([(header::ALLOW, allowed.as_str())], refusal).into_response());
    }
    let decode = || {
        percent_decode_str(raw_id)
            .decode_utf8()
            .map_err(|_| ApiError::invalid("channel id is not valid UTF-8"))
            .map(|c| c.into_owned())
    };
    if let Endpoint::Messages = handler {
        // Its own credentials: a secret key, or a subscriber's JWT or publishable key.
        return history::channel_messages(&state, &headers, uri.query(), decode()?).await;
    }
    // Authorised here, not by the extractor: an unknown endpoint is 404 even without a key.
    let key = authorize(&state, &headers)?;
    let channel = decode()?;
    match handler {
        Endpoint::Peers => channel_peers(&state, &key, channel).await,
        Endpoint::Publish => channel_publish(&state, &key, channel, body).await,
        Endpoint::Occupancy => channel_occupancy(&state, &key, channel).await,
        Endpoint::Messages => Err(ApiError::not_found()),
    }
}

#[derive(Clone, Copy)]
enum Endpoint {
    Peers,
    Publish,
    Occupancy,
    Messages,
}

/// What `/v1/channels/{channel}/<last segment>` serves, and with which method.
const CHANNEL_ENDPOINTS: [(&str, Method, Endpoint); 4] = [
    ("peers", Method::GET, Endpoint::Peers),
    ("publish", Method::POST, Endpoint::Publish),
    ("occupancy", Method::GET, Endpoint::Occupancy),
    ("messages", Method::GET, Endpoint::Messages),
];

/// The operations behind the `/v1/channels/{*rest}` route, as (path, method): the router
/// cannot list them, so the test that every served route is documented asks here.
pub fn channel_operations() -> impl Iterator<Item = (String, Method)> {
    CHANNEL_ENDPOINTS.iter().map(|(segment, method, _)| {
        (
            format!("/v1/channels/{{channel}}/{segment}"),
            method.clone(),
        )
    })
}

/// `GET /v1/channels/:id/peers` (spec §13.4).
#[utoipa::path(get, path = "/v1/channels/{channel}/peers", tag = "channels",
    operation_id = "channelPeers", params(schema::ChannelParam),
    responses(
        (status = 200, description = "The channel's roster", body = PeersResponse<'_>),
        (status = 400, description = "Invalid or reserved channel", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "No `presence` action, or the channel is outside the key's patterns", body = ErrorBody),
        (status = 503, description = "The engine is unavailable", body = ErrorBody),
    ),
    security(("secretKey" = [])))]
pub(crate) async fn channel_peers(
    state: &ServerState,
    key: &SecretKey,
    channel: String,
) -> ApiResult {
    require_action(key, Action::Presence)?;
    check_channel_scope(key, &channel)?;
    let members = state
        .engine
        .channel_members(&key.app.id, &ChannelName::new(channel.as_str()))
        .await?;
    Ok(Json(PeersResponse {
        channel: &channel,
        peers: &members,
    })
    .into_response())
}

/// `GET /v1/channels/:id/occupancy`: the roster's size and the subscribed connections, for
/// rooms too big to list. It tells no more than the roster would, so it has the roster's scope.
#[utoipa::path(get, path = "/v1/channels/{channel}/occupancy", tag = "channels",
    operation_id = "channelOccupancy", params(schema::ChannelParam),
    responses(
        (status = 200, description = "Counts only; an unknown channel is all zeros", body = Occupancy),
        (status = 400, description = "Invalid or reserved channel", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "No `presence` action, or the channel is outside the key's patterns", body = ErrorBody),
        (status = 503, description = "The engine is unavailable", body = ErrorBody),
    ),
    security(("secretKey" = [])))]
pub(crate) async fn channel_occupancy(
    state: &ServerState,
    key: &SecretKey,
    channel: String,
) -> ApiResult {
    require_action(key, Action::Presence)?;
    check_channel_scope(key, &channel)?;
    let occupancy = state
        .engine
        .occupancy(&key.app.id, &ChannelName::new(channel.as_str()))
        .await?;
    Ok(Json(occupancy).into_response())
}

/// `POST /v1/channels/:id/publish` (spec §13.5): a normal `message` to every subscriber.
#[utoipa::path(post, path = "/v1/channels/{channel}/publish", tag = "channels",
    operation_id = "channelPublish", params(schema::ChannelParam),
    request_body = PublishRequest<'_>,
    responses(
        (status = 200, description = "Published", body = PublishResponse),
        (status = 400, description = "Invalid body, channel or sender", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "No `publish` action, or the channel is outside the key's patterns", body = ErrorBody),
        (status = 413, description = "Body over 32 KB", body = ErrorBody),
        (status = 503, description = "The engine is unavailable", body = ErrorBody),
    ),
    security(("secretKey" = [])))]
pub(crate) async fn channel_publish(
    state: &ServerState,
    key: &SecretKey,
    channel: String,
    body: Body,
) -> ApiResult {
    require_action(key, Action::Publish)?;
    check_channel_scope(key, &channel)?;
    let bytes = read_body(body).await?;
    let req: PublishRequest<'_> = parse_json(&bytes)?;
    let data = req
        .data
        .ok_or_else(|| ApiError::invalid("data is required"))?;
    if herald_protocol::json_depth::nesting_exceeds(
        data.get().as_bytes(),
        state.config.limits.max_json_depth,
    ) {
        return Err(ApiError::invalid(
            "data nests deeper than limits.max_json_depth",
        ));
    }
    let from = req.from.unwrap_or_else(|| "system".to_string());
    if !is_valid_subject(&from) {
        return Err(ApiError::invalid(
            "from must be 1-128 printable ASCII characters",
        ));
    }
    let peer_metadata = req.peer_metadata.filter(|m| m.get() != "null");
    check_object("peerMetadata", peer_metadata, MAX_PEER_METADATA_BYTES)?;
    let name = ChannelName::new(channel.as_str());
    let from = PeerId::new(from);
    let delivered = state
        .engine
        .publish(Publication {
            app: &key.app.id,
            channel: &name,
            from: &from,
            from_metadata: peer_metadata,
            data,
            exclude: None,
        })
        .await?;
    Ok(Json(PublishResponse { channel, delivered }).into_response())
}

/// `DELETE /v1/peers/:id` (spec §13.6): close every connection of the peer with 4020.
///
/// Only an app-wide key may kick. A peer's channels live on whichever nodes hold its connections
/// and change while we look, so "the key covers the peer's channels" cannot be checked soundly;
/// a peer with no subscriptions would also be fair game for every scoped key. No action is
/// needed (spec §13.6).
#[utoipa::path(delete, path = "/v1/peers/{peerId}", tag = "peers", operation_id = "kickPeer",
    params(crate::rest::schema::PeerIdParam),
    responses(
        (status = 200, description = "Closed the peer's connections (0 when offline)", body = KickResponse),
        (status = 400, description = "Invalid peer id", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "The key is not app-wide (`**`)", body = ErrorBody),
        (status = 503, description = "The engine is unavailable", body = ErrorBody),
    ),
    security(("secretKey" = [])))]
pub(crate) async fn kick_peer(
    State(state): State<Arc<ServerState>>,
    AppKey(key): AppKey,
    peer_id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    // A path that does not decode is a 400 with the usual JSON body, not axum's plain text.
    let Path(peer_id) = peer_id.map_err(|_| ApiError::invalid("peerId is not valid UTF-8"))?;
    if !is_valid_target_peer_id(&peer_id) {
        return Err(ApiError::invalid(
            "peerId must be 1-128 bytes without control characters",
        ));
    }
    if !key.is_app_wide() {
        return Err(ApiError::not_app_wide("kicking a peer"));
    }
    let reason = CloseReason::ADMIN_DISCONNECT;
    let closed = state
        .engine
        .close_peer(&key.app.id, &PeerId::new(peer_id.as_str()), reason)
        .await?;
    Ok(Json(KickResponse { peer_id, closed }).into_response())
}

/// `GET /v1/usage` (spec §13.7): live counters and a synthetic self-hosted plan. Any key of the
/// app may read them: app-wide totals, no channel or peer names.
#[utoipa::path(get, path = "/v1/usage", tag = "usage", operation_id = "usage",
    responses(
        (status = 200, description = "Live counters", body = UsageResponse<'_>),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    ),
    security(("secretKey" = [])))]
pub(crate) async fn usage(State(state): State<Arc<ServerState>>, AppKey(key): AppKey) -> ApiResult {
    let app = &key.app;
    let max_connections = match (app.max_connections, state.config.limits.max_connections) {
        (0, 0) => UNLIMITED,
        (0, node) => node as i64,
        (app_max, _) => app_max as i64,
    };
    Ok(Json(UsageResponse {
        app_id: app.id.as_str(),
        period_start_unix: None,
        period_end_unix: None,
        concurrent_now: app.connections.load(Ordering::Relaxed),
        peak_concurrent: app.peak_connections.load(Ordering::Relaxed),
        messages_used: app.messages_used.load(Ordering::Relaxed),
        overage_messages: 0,
        overage_connections: 0,
        plan: Plan {
            name: "SELF_HOSTED",
            max_concurrent_connections: max_connections,
            max_messages_per_period: UNLIMITED,
            overages_allowed: false,
            overages_enabled: false,
        },
    })
    .into_response())
}
