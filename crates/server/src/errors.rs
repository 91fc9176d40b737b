//! How each internal error shows up outside Herald: one mapping per internal error type, all in
//! this file, so a code, close code or HTTP status is decided once and sessions, the REST and
//! admin APIs and the Redis bus all answer the same failure the same way.
//!
//! | Internal error | `error` frame | close | REST |
//! |---|---|---|---|
//! | [`EngineError::Unavailable`] | `backend_error` | 1011 (at connect) | 503 `internal_error` |
//! | [`EngineError::PatternLimit`] | `channel_limit_exceeded` | – | 503 `internal_error` (never arises) |
//! | [`AuthError`] | – | 4001 / 4002 / 4003 / 4012 | – (REST has its own 401) |
//!
//! REST failures that are not internal errors (bad input, scope) keep their constructors on
//! `rest::ApiError`, but take their code from [`RestCode`], never from a string literal.

use axum::http::StatusCode;
use herald_protocol::{CloseCode, ErrorCode};

use crate::auth::AuthError;
use crate::close::CloseReason;
use crate::engine::EngineError;

/// The REST `error` codes (spec §13.2), plus the three of the development sign-in
/// (`POST /dev/token`, not part of the public API). Those the wire protocol also has spell themselves with
/// [`ErrorCode::as_str`], so the two can never drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestCode {
    /// 400 (also 405 and 413): malformed body, missing or invalid field.
    InvalidRequest,
    /// 401: every credential failure, alike (spec §13.2).
    Unauthorized,
    /// 400: the channel prefix is reserved.
    ChannelReserved,
    /// 403: the key's patterns do not cover the channel.
    ChannelNotAuthorized,
    /// 403: the key lacks the action.
    ActionNotPermitted,
    /// 404: unknown endpoint.
    NotFound,
    /// 404: the channel keeps no history (`GET …/messages`).
    HistoryNotEnabled,
    /// 503 (500 on `/dev/token`): infrastructure fault.
    InternalError,
    /// 403, `POST /dev/token` only: development sign-in is switched off.
    DevTokensDisabled,
    /// 503, `POST /dev/token` only: no live secret key to sign with.
    NoSigningKey,
    /// 403, `POST /dev/token` only: a `peerId` asked for without the token that proves it.
    PeerIdNotProven,
}

impl RestCode {
    /// The codes the public REST API answers with (the development sign-in's three are not
    /// part of it): the OpenAPI document's enum.
    pub const PUBLIC: [RestCode; 8] = [
        RestCode::InvalidRequest,
        RestCode::Unauthorized,
        RestCode::ChannelReserved,
        RestCode::ChannelNotAuthorized,
        RestCode::ActionNotPermitted,
        RestCode::NotFound,
        RestCode::HistoryNotEnabled,
        RestCode::InternalError,
    ];

    /// The exact string in the body's `error` field.
    pub fn as_str(self) -> &'static str {
        match self {
            RestCode::InvalidRequest => "invalid_request",
            RestCode::Unauthorized => "unauthorized",
            RestCode::NotFound => "not_found",
            RestCode::HistoryNotEnabled => "history_not_enabled",
            RestCode::ChannelReserved => ErrorCode::ChannelReserved.as_str(),
            RestCode::ChannelNotAuthorized => ErrorCode::ChannelNotAuthorized.as_str(),
            RestCode::ActionNotPermitted => ErrorCode::ActionNotPermitted.as_str(),
            RestCode::InternalError => ErrorCode::InternalError.as_str(),
            RestCode::DevTokensDisabled => "dev_tokens_disabled",
            RestCode::NoSigningKey => "no_signing_key",
            RestCode::PeerIdNotProven => "peer_id_not_proven",
        }
    }
}

impl EngineError {
    /// The `error` frame that answers a client request the engine refused or failed; the
    /// socket stays open.
    pub fn wire(&self) -> (ErrorCode, &'static str) {
        match self {
            EngineError::PatternLimit => (
                ErrorCode::ChannelLimitExceeded,
                "too many distinct wildcard patterns in this app",
            ),
            EngineError::Unavailable(_) => {
                (ErrorCode::BackendError, "backend unavailable, retry later")
            }
        }
    }

    /// The close when the engine fails before a session exists (registering the connection):
    /// there is no request to answer, so the socket goes with 1011.
    pub fn close_reason(&self) -> CloseReason {
        CloseReason::new(CloseCode::InternalError, "backend unavailable")
    }

    /// The REST answer. Every engine failure a REST call can meet is an infrastructure fault
    /// (the pattern cap only concerns subscribes, which REST does not make).
    pub fn rest(&self) -> (StatusCode, RestCode, &'static str) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            RestCode::InternalError,
            "engine unavailable",
        )
    }
}

impl AuthError {
    /// The close that refuses a connect attempt (spec §7). Credential failures all share 4001,
    /// with a reason that does not tell which part of the credential was wrong.
    pub fn close_reason(&self) -> CloseReason {
        match self {
            AuthError::Expired => CloseReason::new(CloseCode::TokenExpired, "token expired"),
            AuthError::ChannelsOutsideKey => CloseReason::new(
                CloseCode::ChannelNotAuthorized,
                "channels claim exceeds key scope",
            ),
            AuthError::Suspended => {
                CloseReason::new(CloseCode::AccountSuspended, "account suspended")
            }
            AuthError::OriginNotAllowed => {
                CloseReason::new(CloseCode::InvalidToken, "origin not allowed")
            }
            AuthError::MissingCredential | AuthError::BothCredentials => {
                CloseReason::new(CloseCode::InvalidToken, "missing or ambiguous credential")
            }
            AuthError::UnknownKey => CloseReason::new(CloseCode::InvalidToken, "invalid key"),
            AuthError::Token(_) | AuthError::UnknownKid | AuthError::Claims(_) => {
                CloseReason::new(CloseCode::InvalidToken, "invalid token")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_codes_shared_with_the_wire_spell_the_same() {
        assert_eq!(RestCode::ChannelReserved.as_str(), "channel_reserved");
        assert_eq!(
            RestCode::ChannelNotAuthorized.as_str(),
            "channel_not_authorized"
        );
        assert_eq!(
            RestCode::ActionNotPermitted.as_str(),
            "action_not_permitted"
        );
        assert_eq!(RestCode::InternalError.as_str(), "internal_error");
    }

    #[test]
    fn every_code_is_public_or_deliberately_not() {
        use RestCode::*;
        for code in [
            InvalidRequest,
            Unauthorized,
            ChannelReserved,
            ChannelNotAuthorized,
            ActionNotPermitted,
            NotFound,
            HistoryNotEnabled,
            InternalError,
            DevTokensDisabled,
            NoSigningKey,
            PeerIdNotProven,
        ] {
            // A new variant fails to compile here: decide whether the public API answers it
            // (then list it in `RestCode::PUBLIC`, which the OpenAPI document lists).
            let public = match code {
                InvalidRequest | Unauthorized | ChannelReserved | ChannelNotAuthorized
                | ActionNotPermitted | NotFound | HistoryNotEnabled | InternalError => true,
                DevTokensDisabled | NoSigningKey | PeerIdNotProven => false,
            };
            assert_eq!(RestCode::PUBLIC.contains(&code), public, "{code:?}");
        }
    }

    #[test]
    fn engine_errors_map_to_the_spec_codes() {
        let down = EngineError::Unavailable("redis gone".into());
        assert_eq!(down.wire().0, ErrorCode::BackendError);
        assert_eq!(down.close_reason().code, CloseCode::InternalError);
        assert_eq!(down.rest().0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            EngineError::PatternLimit.wire().0,
            ErrorCode::ChannelLimitExceeded
        );
    }
}
