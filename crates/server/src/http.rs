//! HTTP surface: the WebSocket endpoint `/v1` (and, later, REST and operations routes).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

mod openapi;
pub use openapi::ApiDoc;

use crate::admin;
use crate::clock::unix_now;
use crate::limits::Attempt;
use crate::rest::{self, ApiError};
use crate::session;
use crate::state::ServerState;

/// Read buffer per socket, allocated for the connection's lifetime. Small, because most sockets
/// are idle most of the time: client frames are small (subscribe, publish, send), and a larger
/// frame only costs more read calls, since tungstenite grows the buffer to the frame's size.
/// 4 KiB → 1 KiB cut idle RSS by ~3 KB per connection, 1 KiB → 256 B by ~0.8 KB more
/// (BENCHMARKS.md).
pub(crate) const READ_BUFFER_BYTES: usize = 256;
/// Outbound bytes gathered before a write; batches are flushed explicitly anyway.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/v1", get(connect))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi::serve))
        .merge(rest::routes())
        .merge(admin::routes())
        .merge(crate::web::routes())
        .fallback(not_found)
        .with_state(state)
}

/// `GET /v1`: rate-limit by IP (429 before any handshake), upgrade, then authenticate. Auth
/// failures are close codes after the upgrade, never HTTP statuses (spec §1.3).
async fn connect(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match state
        .connect_limiter
        .check(peer.ip(), tokio::time::Instant::now())
    {
        Attempt::Allowed => {}
        Attempt::Untracked => {
            state.metrics.http.connect_limiter_untracked.inc();
        }
        Attempt::Limited => {
            state.metrics.rate_limited("connect_per_ip");
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "60")],
                "too many connection attempts\n",
            )
                .into_response();
        }
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    if state.is_shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    let auth = state.keys.authenticate(
        uri.query(),
        origin,
        unix_now(),
        state.config.timing.clock_skew_secs,
    );
    let max_frame = state.config.limits.max_frame_bytes;
    upgrade
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .on_upgrade({
            // axum's upgrade task keeps its callback's captures for the connection's whole
            // life, even after the call moved them out: a box there costs 8 bytes, the
            // `Identity` ~200 (it is freed once the session takes it).
            let auth = Box::new(auth);
            move |socket| session::serve(socket, state, *auth)
        })
}

async fn not_found() -> Response {
    ApiError::not_found().into_response()
}

/// Liveness: the process answers HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", operation_id = "healthz",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Object)))]
pub(crate) async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// Readiness: accepting connections and the engine is reachable.
#[utoipa::path(get, path = "/readyz", tag = "operations", operation_id = "readyz",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Shutting down, or the engine is unreachable", body = Readiness),
    ))]
pub(crate) async fn readyz(State(state): State<Arc<ServerState>>) -> Response {
    let accepting = !state.is_shutting_down();
    let engine = state.engine.is_ready().await;
    let status = if accepting && engine {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Readiness { accepting, engine })).into_response()
}

/// Prometheus scrape endpoint (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "metrics",
    responses((status = 200, description = "OpenMetrics text",
        content_type = "application/openmetrics-text", body = String)))]
pub(crate) async fn metrics(State(state): State<Arc<ServerState>>) -> Response {
    let stats = state.engine.stats();
    state.metrics.subscriptions.set(stats.subscriptions as i64);
    state.metrics.channels.set(stats.channels as i64);
    state.metrics.bus_queue.update(&stats.bus_queue);
    state.metrics.resume.update(&state.engine.resume_stats());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /readyz` answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Readiness {
    /// False once shutdown began.
    accepting: bool,
    /// Whether the engine (Redis) answers.
    engine: bool,
}
