//! The bodies the REST API reads and writes, as types: the handlers serialize these, and the
//! OpenAPI document (`openapi.rs`) derives its schemas from the same types, so the two agree.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use crate::engine::Member;
use crate::errors::RestCode;

/// Every failure's body (spec §13.2).
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: RestCode,
    /// Human-readable; not for matching.
    pub message: String,
}

impl Serialize for RestCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The codes as a string enum, listed from [`RestCode::PUBLIC`], so a new code is documented
/// by being added there.
impl PartialSchema for RestCode {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .enum_values(Some(RestCode::PUBLIC.iter().map(|c| c.as_str())))
            .description(Some("The failure's code (see the status for its class)."))
            .into()
    }
}

impl ToSchema for RestCode {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ErrorCode")
    }
}

/// A roster entry, as `Member`'s hand-written `Serialize` writes it.
impl PartialSchema for Member {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::Object))
            .property("peerId", String::schema())
            .required("peerId")
            .property(
                "metadata",
                ObjectBuilder::new()
                    .schema_type(SchemaType::Type(Type::Object))
                    .description(Some(
                        "The peerMetadata of the peer's most recently subscribed connection; \
                         absent when it has none.",
                    )),
            )
            .into()
    }
}

impl ToSchema for Member {}

/// `POST /v1/tokens` body.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MintRequest {
    /// 1-128 printable ASCII characters; becomes the token's `sub`.
    #[schema(pattern = "^[ -~]{1,128}$")]
    pub peer_id: String,
    /// At most 100 channel patterns (1-256 bytes, no control characters, no reserved prefix),
    /// each inside the key's patterns.
    #[schema(max_items = 100)]
    pub channels: Option<Vec<String>>,
    /// A subset of the key's actions; default: all of them.
    #[schema(value_type = Option<Vec<Permission>>)]
    pub permissions: Option<Vec<String>>,
    /// 1-86400; default 3600.
    #[schema(minimum = 1, maximum = 86400)]
    pub expires_in_sec: Option<i64>,
    /// Private object of at most 8 KB, sent back as `welcome.metadata`.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Box<RawValue>>,
    /// Public object of at most 4 KB, shown in presence and as `fromMetadata`.
    #[schema(value_type = Option<Object>)]
    pub peer_metadata: Option<Box<RawValue>>,
}

/// An action a token may grant.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // A schema only: permissions are parsed by `Action::parse`.
pub enum Permission {
    Publish,
    Subscribe,
    Presence,
    Send,
}

/// `POST /v1/tokens` answer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MintResponse {
    /// The connect JWT (HS256, `kid` = the key id).
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// `POST /v1/channels/{channel}/publish` body.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishRequest<'a> {
    /// Any JSON value, `null` included; forwarded byte for byte.
    #[serde(default, borrow, deserialize_with = "herald_protocol::frames::present")]
    #[schema(value_type = Value, required = true)]
    pub data: Option<&'a RawValue>,
    /// The sender subscribers see (1-128 printable ASCII characters); default `"system"`.
    #[schema(pattern = "^[ -~]{1,128}$")]
    pub from: Option<String>,
    /// Becomes `fromMetadata` (an object of at most 4 KB, or `null`).
    #[serde(borrow)]
    #[schema(value_type = Option<Object>)]
    pub peer_metadata: Option<&'a RawValue>,
}

/// `POST /v1/channels/{channel}/publish` answer.
#[derive(Serialize, ToSchema)]
pub struct PublishResponse {
    pub channel: String,
    /// Connections the message was queued for (exact subscribers; wildcard ones not counted).
    pub delivered: usize,
}

/// `GET /v1/channels/{channel}/peers` answer.
#[derive(Serialize, ToSchema)]
pub struct PeersResponse<'a> {
    pub channel: &'a str,
    /// Each peer once, however many connections it has.
    pub peers: &'a [Member],
}

/// `DELETE /v1/peers/{peerId}` answer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KickResponse {
    pub peer_id: String,
    /// Connections closed with 4020 (0 when the peer is offline).
    pub closed: usize,
}

/// `GET /v1/usage` answer: live counters and a synthetic self-hosted plan.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageResponse<'a> {
    pub app_id: &'a str,
    /// Always `null`: a self-hosted plan has no billing period.
    #[schema(value_type = Option<i64>)]
    pub period_start_unix: Option<()>,
    /// Always `null`.
    #[schema(value_type = Option<i64>)]
    pub period_end_unix: Option<()>,
    pub concurrent_now: usize,
    pub peak_concurrent: usize,
    /// Client `publish` and `send` frames, rejected attempts included.
    pub messages_used: u64,
    pub overage_messages: u64,
    pub overage_connections: u64,
    pub plan: Plan,
}

/// The self-hosted plan; unlimited caps show as 1000000000.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// `"SELF_HOSTED"`.
    pub name: &'static str,
    pub max_concurrent_connections: i64,
    pub max_messages_per_period: i64,
    pub overages_allowed: bool,
    pub overages_enabled: bool,
}

/// The channel path parameter of `/v1/channels/{channel}/…`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Documents the path only: `channel_endpoint` reads the raw path.
pub struct ChannelParam {
    /// A concrete channel (1-256 bytes, no control characters, no wildcard, no reserved
    /// prefix), percent-encoded (`rooms%2Flobby`); its slashes may also be written raw.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$"
    )]
    channel: String,
}

/// The peer path parameter of `/v1/peers/{peerId}` and `/admin/api/peers/{peerId}`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path, rename_all = "camelCase")]
#[allow(dead_code)] // Documents the path only: the handlers read it with `Path<String>`.
pub struct PeerIdParam {
    /// 1-128 bytes without control characters.
    #[param(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$"
    )]
    peer_id: String,
}
