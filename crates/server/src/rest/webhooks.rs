//! `POST /v1/webhooks/test`: queues a `webhook.test` event for every webhook endpoint of the
//! key's app, so an operator can check an endpoint's URL and secret without waiting for a peer
//! to come online. The answer says the event was queued, not delivered: delivery follows the
//! usual retries, and the event's id lets the backend find it.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, ApiResult, AppKey};
use crate::rest::schema::ErrorBody;
use crate::state::ServerState;

/// `POST /v1/webhooks/test` answer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookTestResponse {
    /// The `id` of the `webhook.test` event, as the endpoints receive it.
    pub id: String,
    /// Endpoints that queued it (one whose queue is full drops it and counts it).
    pub queued: usize,
}

#[utoipa::path(post, path = "/v1/webhooks/test", tag = "webhooks", operation_id = "testWebhooks",
    responses(
        (status = 202, description = "A `webhook.test` event was queued for the app's endpoints", body = WebhookTestResponse),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 400, description = "`invalid_request`: the app has no webhook endpoint", body = ErrorBody),
    ),
    security(("secretKey" = [])))]
pub(crate) async fn send_test(
    State(state): State<Arc<ServerState>>,
    AppKey(key): AppKey,
) -> ApiResult {
    let sent = state
        .webhooks
        .as_ref()
        .and_then(|hooks| hooks.send_test(key.app.id.as_str()));
    let Some((id, queued)) = sent else {
        // Not 404: that is the answer for a route that does not exist.
        return Err(ApiError::invalid(
            "the app has no webhook endpoint ([[apps.webhooks]])",
        ));
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(WebhookTestResponse { id, queued }),
    )
        .into_response())
}
