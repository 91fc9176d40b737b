//! The read-only admin view: JSON endpoints plus a small page, both scoped to the app of the
//! secret key presented (`Authorization: Bearer sk_id:sk_secret`), like the REST API.
//!
//! It answers what an operator asks of a running node: which connections are open, which
//! channels exist and how full they are, where a peer is, and who is in a channel.
//!
//! Scope: the views that name channels or peers are presence reads, so they need the key's
//! `presence` action, and they show only what the key's patterns cover ([`SecretKey::covers`]):
//! a channel outside them is refused (403), listings leave it out, and a connection appears with
//! its in-scope subscriptions only, and not at all when it has none. An app-wide key (`**`) sees
//! everything. The overview needs no action; its channel counts cover the key's scope only.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use herald_protocol::validate::{is_valid_channel, is_valid_target_peer_id};
use percent_encoding::percent_decode_str;
use serde::Serialize;
use utoipa::ToSchema;

use herald_protocol::Action;

use crate::auth::SecretKey;
use crate::conn::Conn;
use crate::engine::{ChannelSummary, Member};
use crate::ids::{ChannelName, PeerId};
use crate::rest::schema::ErrorBody;
use crate::rest::{require_action, ApiError, AppKey};
use crate::state::ServerState;

const PAGE_HTML: &str = include_str!("../../../web/admin/index.html");
const PAGE_JS: &str = include_str!("../../../web/admin/admin.js");
const PAGE_CSS: &str = include_str!("../../../web/admin/admin.css");
/// The page loads only its own script and style, and can only talk to this origin.
const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'";

pub fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route(
            "/admin",
            get(|| async { page(PAGE_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/admin/admin.js",
            get(|| async { page(PAGE_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/admin/admin.css",
            get(|| async { page(PAGE_CSS, "text/css; charset=utf-8") }),
        )
        .route("/admin/api/overview", get(overview))
        .route("/admin/api/connections", get(connections))
        .route("/admin/api/channels", get(channels))
        .route("/admin/api/channels/{*channel}", get(channel))
        .route("/admin/api/peers/{peer_id}", get(peer))
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// This node's channels of the key's app that the key's patterns cover.
fn channels_in_scope(state: &ServerState, key: &SecretKey) -> Vec<ChannelSummary> {
    let mut list = state.engine.local_channels(&key.app.id);
    list.retain(|c| key.covers(c.channel.as_str()));
    list
}

/// This node's connections of the app (or of one peer) as the key may see them: each with its
/// in-scope subscriptions; a connection with none is left out unless the key is app-wide.
fn connections_in_scope(
    state: &ServerState,
    key: &SecretKey,
    peer: Option<&PeerId>,
) -> Vec<Connection> {
    let app_wide = key.is_app_wide();
    state
        .engine
        .local_connections(&key.app.id, peer)
        .into_iter()
        .filter_map(|(conn, mut channels)| {
            if !app_wide {
                channels.retain(|c| key.covers(c.as_str()));
                if channels.is_empty() {
                    return None;
                }
            }
            Some(Connection::new(&conn, &channels))
        })
        .collect()
}

/// A connection of this node, with the subscriptions the key may see.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = AdminConnection)]
pub(crate) struct Connection {
    conn_id: String,
    peer_id: String,
    /// `token` or `publishable`.
    kind: &'static str,
    /// Unix seconds.
    connected_at: i64,
    receives_presence: bool,
    channels: Vec<String>,
}

impl Connection {
    fn new(conn: &Conn, channels: &[ChannelName]) -> Self {
        Connection {
            conn_id: conn.id.to_string(),
            peer_id: conn.peer_id.as_str().to_string(),
            kind: conn.kind,
            connected_at: conn.connected_at,
            receives_presence: conn.receives_presence,
            channels: channels.iter().map(|c| c.as_str().to_string()).collect(),
        }
    }
}

/// The key's app on this node.
#[utoipa::path(get, path = "/admin/api/overview", tag = "admin", operation_id = "adminOverview",
    responses(
        (status = 200, description = "This node and the key's app", body = Overview<'_>),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    ),
    security(("secretKey" = [])))]
pub(crate) async fn overview(
    State(state): State<Arc<ServerState>>,
    AppKey(key): AppKey,
) -> Result<Response, ApiError> {
    let app = &key.app;
    let local = channels_in_scope(&state, &key);
    Ok(Json(Overview {
        app_id: app.id.as_str(),
        node: NodeView {
            sessions: state.live_sessions(),
            uptime_secs: state.started.elapsed().as_secs(),
            engine_ready: state.engine.is_ready().await,
            shutting_down: state.is_shutting_down(),
        },
        app: AppView {
            connections: app.connections.load(Ordering::Relaxed),
            peak_connections: app.peak_connections.load(Ordering::Relaxed),
            messages_used: app.messages_used.load(Ordering::Relaxed),
            channels: local.len(),
            subscriptions: local.iter().map(|c| c.subscribers).sum::<usize>(),
        },
    })
    .into_response())
}

/// This node's connections of the app, as the key may see them.
#[utoipa::path(get, path = "/admin/api/connections", tag = "admin", operation_id = "adminConnections",
    responses(
        (status = 200, description = "The connections", body = ConnectionsView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "No `presence` action, or outside the key's patterns", body = ErrorBody),
    ),
    security(("secretKey" = [])))]
pub(crate) async fn connections(
    State(state): State<Arc<ServerState>>,
    AppKey(key): AppKey,
) -> Result<Response, ApiError> {
    require_action(&key, Action::Presence)?;
    let list = connections_in_scope(&state, &key, None);
    Ok(Json(ConnectionsView { connections: list }).into_response())
}

/// This node's channels of the app within the key's patterns.
#[utoipa::path(get, path = "/admin/api/channels", tag = "admin", operation_id = "adminChannels",
    responses(
        (status = 200, description = "The channels", body = ChannelsView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "No `presence` action, or outside the key's patterns", body = ErrorBody),
    ),
    security(("secretKey" = [])))]
pub(crate) async fn channels(
    State(state): State<Arc<ServerState>>,
    AppKey(key): AppKey,
) -> Result<Response, ApiError> {
    require_action(&key, Action::Presence)?;
    let channels = channels_in_scope(&state, &key)
        .iter()
        .map(|c| ChannelRow {
            channel: c.channel.as_str().to_string(),
            members: c.members,
            subscribers: c.subscribers,
        })
        .collect();
    Ok(Json(ChannelsView { channels }).into_response())
}

/// Who is in channel Y: the roster (cluster-wide when the engine is) plus local subscribers.
#[utoipa::path(get, path = "/admin/api/channels/{channel}", tag = "admin", operation_id = "adminChannel",
    params(crate::rest::schema::ChannelParam),
    responses(
        (status = 200, description = "The roster and local subscribers", body = ChannelView<'_>),
        (status = 400, description = "Invalid channel or peer id", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "No `presence` action, or outside the key's patterns", body = ErrorBody),
        (status = 503, description = "The engine is unavailable", body = ErrorBody),
    ),
    security(("secretKey" = [])))]
pub(crate) async fn channel(
    State(state): State<Arc<ServerState>>,
    AppKey(key): AppKey,
    uri: Uri,
) -> Result<Response, ApiError> {
    require_action(&key, Action::Presence)?;
    // Raw path, decoded exactly once: `room%2F1` and `room/1` name the same channel.
    let raw = uri
        .path()
        .strip_prefix("/admin/api/channels/")
        .unwrap_or_default();
    let name = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::invalid("channel is not valid UTF-8"))?
        .into_owned();
    if !is_valid_channel(&name) {
        return Err(ApiError::invalid(
            "channel must be 1-256 bytes without control characters",
        ));
    }
    if !key.covers(&name) {
        return Err(ApiError::not_authorized(&name));
    }
    let channel = ChannelName::new(name.as_str());
    let members = state.engine.channel_members(&key.app.id, &channel).await?;
    let subscribers = state
        .engine
        .local_channels(&key.app.id)
        .into_iter()
        .find(|c| c.channel == channel)
        .map_or(0, |c| c.subscribers);
    Ok(Json(ChannelView {
        channel: &name,
        members: &members,
        local_subscribers: subscribers,
    })
    .into_response())
}

/// Where is peer X: its connections on this node and the channels each holds. For a scoped key,
/// a peer seen only outside its patterns is reported offline.
#[utoipa::path(get, path = "/admin/api/peers/{peerId}", tag = "admin", operation_id = "adminPeer",
    params(crate::rest::schema::PeerIdParam),
    responses(
        (status = 200, description = "The peer's connections on this node", body = PeerView),
        (status = 400, description = "Invalid channel or peer id", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "No `presence` action, or outside the key's patterns", body = ErrorBody),
        (status = 503, description = "The engine is unavailable", body = ErrorBody),
    ),
    security(("secretKey" = [])))]
pub(crate) async fn peer(
    State(state): State<Arc<ServerState>>,
    AppKey(key): AppKey,
    peer_id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    require_action(&key, Action::Presence)?;
    // A path that does not decode is a 400 with the usual JSON body, not axum's plain text.
    let Path(peer_id) = peer_id.map_err(|_| ApiError::invalid("peerId is not valid UTF-8"))?;
    if !is_valid_target_peer_id(&peer_id) {
        return Err(ApiError::invalid(
            "peerId must be 1-128 bytes without control characters",
        ));
    }
    let peer = PeerId::new(peer_id.as_str());
    let list = connections_in_scope(&state, &key, Some(&peer));
    Ok(Json(PeerView {
        online: !list.is_empty(),
        peer_id,
        connections: list,
    })
    .into_response())
}

/// `GET /admin/api/overview` answer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = AdminOverview)]
pub(crate) struct Overview<'a> {
    app_id: &'a str,
    node: NodeView,
    app: AppView,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = AdminNode)]
pub(crate) struct NodeView {
    sessions: usize,
    uptime_secs: u64,
    engine_ready: bool,
    shutting_down: bool,
}

/// The app's counters; `channels` and `subscriptions` cover the key's scope on this node.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = AdminApp)]
pub(crate) struct AppView {
    connections: usize,
    peak_connections: usize,
    messages_used: u64,
    channels: usize,
    subscriptions: usize,
}

#[derive(Serialize, ToSchema)]
#[schema(as = AdminConnections)]
pub(crate) struct ConnectionsView {
    connections: Vec<Connection>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = AdminChannels)]
pub(crate) struct ChannelsView {
    channels: Vec<ChannelRow>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = AdminChannelRow)]
pub(crate) struct ChannelRow {
    channel: String,
    /// Distinct peers in the roster.
    members: usize,
    /// Subscribed connections on this node.
    subscribers: usize,
}

/// `GET /admin/api/channels/{channel}` answer: the roster (cluster-wide when the engine is)
/// and this node's subscribers.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = AdminChannel)]
pub(crate) struct ChannelView<'a> {
    channel: &'a str,
    members: &'a [Member],
    local_subscribers: usize,
}

/// `GET /admin/api/peers/{peerId}` answer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = AdminPeer)]
pub(crate) struct PeerView {
    peer_id: String,
    online: bool,
    connections: Vec<Connection>,
}
