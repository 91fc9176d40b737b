//! The OpenAPI 3.1 document of the REST API, served at `GET /v1/openapi.json`.
//!
//! Derived from the code: each operation comes from the `#[utoipa::path]` on its handler, and
//! each schema from the type the handler serializes (`rest/schema.rs`), so the document changes
//! when they do. `tests/openapi.rs` checks that every route the router serves is in it, and
//! the schemathesis run checks every answer against it.

use std::sync::LazyLock;

use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::rest::ApiError;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald REST API",
        description = "The Metered REST control plane as Herald serves it: token minting, \
            channel rosters, occupancy, history and publish, kicks, usage, and the read-only \
            admin view. Every failure answers `{\"error\", \"message\"}` with the status and \
            code listed per operation.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        crate::rest::mint_token,
        crate::rest::channel_peers,
        crate::rest::channel_occupancy,
        crate::rest::channel_publish,
        crate::rest::history::channel_messages,
        crate::rest::kick_peer,
        crate::rest::usage,
        crate::rest::webhooks::send_test,
        serve,
        crate::admin::overview,
        crate::admin::connections,
        crate::admin::channels,
        crate::admin::channel,
        crate::admin::peer,
        super::healthz,
        super::readyz,
        super::metrics,
    ),
    modifiers(&Security),
    tags(
        (name = "tokens", description = "Connect tokens for clients"),
        (name = "channels", description = "Rosters, occupancy, history and server-side publish"),
        (name = "peers", description = "Disconnecting a peer"),
        (name = "usage", description = "Live counters of the key's app"),
        (name = "webhooks", description = "A test event for the app's webhook endpoints"),
        (name = "admin", description = "The read-only admin view of this node"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// The three credentials an `Authorization: Bearer …` header may carry.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |format: &str, description: &str| {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.bearer_format = Some(format.to_string());
            http.description = Some(description.to_string());
            SecurityScheme::Http(http)
        };
        components.add_security_scheme(
            "secretKey",
            bearer(
                "<key id>:<secret>",
                "A secret key of the app, `<key id>:<secret>` (the legacy form, the secret \
                 alone, is also accepted). Publishable keys are refused.",
            ),
        );
        components.add_security_scheme(
            "connectJwt",
            bearer(
                "JWT",
                "A connect JWT (HS256) minted by `POST /v1/tokens`; accepted by the history \
                 read only, in the token's channel and permission scope.",
            ),
        );
        components.add_security_scheme(
            "publishableKey",
            bearer(
                "pk_…",
                "A publishable key; accepted by the history read only, in the key's scope \
                 and allowed origins.",
            ),
        );
    }
}

/// The document, encoded once.
static DOCUMENT: LazyLock<Result<Bytes, String>> = LazyLock::new(|| {
    serde_json::to_vec(&ApiDoc::openapi())
        .map(Bytes::from)
        .map_err(|e| e.to_string())
});

/// `GET /v1/openapi.json`: this document. Public, like the API's prose reference.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations", operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json",
        body = Object)))]
pub async fn serve() -> Response {
    match &*DOCUMENT {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes.clone()).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the OpenAPI document");
            ApiError::unavailable("OpenAPI document unavailable").into_response()
        }
    }
}
