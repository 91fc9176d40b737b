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

use axum::extract::{Path, State};
use axum::http::{header, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use herald_protocol::validate::{is_valid_channel, is_valid_target_peer_id};
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};

use herald_protocol::Action;

use crate::auth::SecretKey;
use crate::conn::Conn;
use crate::engine::{ChannelSummary, Member};
use crate::ids::{ChannelName, PeerId};
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
fn connections_in_scope(state: &ServerState, key: &SecretKey, peer: Option<&PeerId>) -> Vec<Value> {
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
            Some(connection_json(&conn, &channels))
        })
        .collect()
}

fn connection_json(conn: &Conn, channels: &[ChannelName]) -> Value {
    json!({
        "connId": conn.id.to_string(),
        "peerId": conn.peer_id.as_str(),
        "kind": conn.kind,
        "connectedAt": conn.connected_at,
        "receivesPresence": conn.receives_presence,
        "channels": channels.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
    })
}

async fn overview(
    State(state): State<Arc<ServerState>>,
    AppKey(key): AppKey,
) -> Result<Response, ApiError> {
    let app = &key.app;
    let local = channels_in_scope(&state, &key);
    Ok(Json(json!({
        "appId": app.id.as_str(),
        "node": {
            "sessions": state.live_sessions(),
            "uptimeSecs": state.started.elapsed().as_secs(),
            "engineReady": state.engine.is_ready().await,
            "shuttingDown": state.is_shutting_down(),
        },
        "app": {
            "connections": app.connections.load(Ordering::Relaxed),
            "peakConnections": app.peak_connections.load(Ordering::Relaxed),
            "messagesUsed": app.messages_used.load(Ordering::Relaxed),
            "channels": local.len(),
            "subscriptions": local.iter().map(|c| c.subscribers).sum::<usize>(),
        },
    }))
    .into_response())
}

async fn connections(
    State(state): State<Arc<ServerState>>,
    AppKey(key): AppKey,
) -> Result<Response, ApiError> {
    require_action(&key, Action::Presence)?;
    let list = connections_in_scope(&state, &key, None);
    Ok(Json(json!({ "connections": list })).into_response())
}

async fn channels(
    State(state): State<Arc<ServerState>>,
    AppKey(key): AppKey,
) -> Result<Response, ApiError> {
    require_action(&key, Action::Presence)?;
    let list: Vec<Value> = channels_in_scope(&state, &key)
        .iter()
        .map(|c| json!({"channel": c.channel.as_str(), "members": c.members, "subscribers": c.subscribers}))
        .collect();
    Ok(Json(json!({ "channels": list })).into_response())
}

/// Who is in channel Y: the roster (cluster-wide when the engine is) plus local subscribers.
async fn channel(
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
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ChannelView<'a> {
        channel: &'a str,
        members: &'a [Member],
        local_subscribers: usize,
    }
    Ok(Json(ChannelView {
        channel: &name,
        members: &members,
        local_subscribers: subscribers,
    })
    .into_response())
}

/// Where is peer X: its connections on this node and the channels each holds. For a scoped key,
/// a peer seen only outside its patterns is reported offline.
async fn peer(
    State(state): State<Arc<ServerState>>,
    AppKey(key): AppKey,
    Path(peer_id): Path<String>,
) -> Result<Response, ApiError> {
    require_action(&key, Action::Presence)?;
    if !is_valid_target_peer_id(&peer_id) {
        return Err(ApiError::invalid(
            "peerId must be 1-128 bytes without control characters",
        ));
    }
    let peer = PeerId::new(peer_id.as_str());
    let list = connections_in_scope(&state, &key, Some(&peer));
    Ok(
        Json(json!({"peerId": peer_id, "online": !list.is_empty(), "connections": list}))
            .into_response(),
    )
}
