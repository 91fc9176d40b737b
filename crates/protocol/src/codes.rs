//! The closed set of wire error codes (spec §6) and WebSocket close codes (spec §7).
//!
//! Internal errors elsewhere in Herald map onto these in exactly one place each; nothing else
//! invents codes.

/// `error.code` values a server may put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    MalformedMessage,
    UnknownType,
    InvalidChannel,
    InvalidPeerId,
    ChannelNotAuthorized,
    ChannelReserved,
    ChannelLimitExceeded,
    PeerNotFound,
    MissingData,
    ActionNotPermitted,
    OverMessageQuota,
    BackendError,
    InternalError,
}

impl ErrorCode {
    /// Every code, in catalogue order (useful for metrics and docs).
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::MalformedMessage,
        ErrorCode::UnknownType,
        ErrorCode::InvalidChannel,
        ErrorCode::InvalidPeerId,
        ErrorCode::ChannelNotAuthorized,
        ErrorCode::ChannelReserved,
        ErrorCode::ChannelLimitExceeded,
        ErrorCode::PeerNotFound,
        ErrorCode::MissingData,
        ErrorCode::ActionNotPermitted,
        ErrorCode::OverMessageQuota,
        ErrorCode::BackendError,
        ErrorCode::InternalError,
    ];

    /// The exact string sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedMessage => "malformed_message",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::InvalidPeerId => "invalid_peer_id",
            ErrorCode::ChannelNotAuthorized => "channel_not_authorized",
            ErrorCode::ChannelReserved => "channel_reserved",
            ErrorCode::ChannelLimitExceeded => "channel_limit_exceeded",
            ErrorCode::PeerNotFound => "peer_not_found",
            ErrorCode::MissingData => "missing_data",
            ErrorCode::ActionNotPermitted => "action_not_permitted",
            ErrorCode::OverMessageQuota => "over_message_quota",
            ErrorCode::BackendError => "backend_error",
            ErrorCode::InternalError => "internal_error",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes the server sends (spec §7.1). 4000 is client-only and absent on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: used only when the client itself closed normally.
    Normal,
    /// 1001: graceful shutdown, after a `going_away` frame.
    GoingAway,
    /// 1007: a text frame that is not valid UTF-8.
    InvalidPayload,
    /// 1008: generic policy violation (rare; used for a dead or unresponsive socket).
    PolicyViolation,
    /// 1009: an inbound message above the frame cap.
    MessageTooBig,
    /// 1011: an unexpected server fault.
    InternalError,
    /// 4001: credential invalid (JWT, publishable key, origin, missing credential).
    InvalidToken,
    /// 4002: the JWT `exp` has passed, at connect time or proactively just before it.
    TokenExpired,
    /// 4003: the JWT `channels` claim reaches outside the key's patterns (connect time only).
    ChannelNotAuthorized,
    /// 4010: the concurrent-connection quota is exhausted.
    OverConcurrentLimit,
    /// 4011: the per-connection rate bucket is empty.
    OverMessageRate,
    /// 4012: the app is suspended.
    AccountSuspended,
    /// 4020: an administrator kicked the peer (`DELETE /v1/peers/:id`).
    AdminDisconnect,
}

impl CloseCode {
    /// Every code, in numeric order.
    pub const ALL: [CloseCode; 13] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::InvalidPayload,
        CloseCode::PolicyViolation,
        CloseCode::MessageTooBig,
        CloseCode::InternalError,
        CloseCode::InvalidToken,
        CloseCode::TokenExpired,
        CloseCode::ChannelNotAuthorized,
        CloseCode::OverConcurrentLimit,
        CloseCode::OverMessageRate,
        CloseCode::AccountSuspended,
        CloseCode::AdminDisconnect,
    ];

    /// The code with this number, if the server sends it (the inverse of [`CloseCode::as_u16`]).
    /// Numbers only a client or the WebSocket layer uses (4000, 1006) give `None`.
    pub fn from_u16(code: u16) -> Option<CloseCode> {
        Some(match code {
            1000 => CloseCode::Normal,
            1001 => CloseCode::GoingAway,
            1007 => CloseCode::InvalidPayload,
            1008 => CloseCode::PolicyViolation,
            1009 => CloseCode::MessageTooBig,
            1011 => CloseCode::InternalError,
            4001 => CloseCode::InvalidToken,
            4002 => CloseCode::TokenExpired,
            4003 => CloseCode::ChannelNotAuthorized,
            4010 => CloseCode::OverConcurrentLimit,
            4011 => CloseCode::OverMessageRate,
            4012 => CloseCode::AccountSuspended,
            4020 => CloseCode::AdminDisconnect,
            _ => return None,
        })
    }

    /// The numeric code.
    pub fn as_u16(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::InvalidPayload => 1007,
            CloseCode::PolicyViolation => 1008,
            CloseCode::MessageTooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::InvalidToken => 4001,
            CloseCode::TokenExpired => 4002,
            CloseCode::ChannelNotAuthorized => 4003,
            CloseCode::OverConcurrentLimit => 4010,
            CloseCode::OverMessageRate => 4011,
            CloseCode::AccountSuspended => 4012,
            CloseCode::AdminDisconnect => 4020,
        }
    }

    /// True for codes after which the official SDKs never reconnect (spec §7.2).
    pub fn is_terminal_for_sdks(self) -> bool {
        matches!(
            self,
            CloseCode::InvalidToken
                | CloseCode::ChannelNotAuthorized
                | CloseCode::AccountSuspended
                | CloseCode::AdminDisconnect
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards [`CloseCode::ALL`]: this match stops compiling when a variant is added, and the
    /// test below fails until the new variant is in `ALL` too.
    fn listed(code: CloseCode) -> bool {
        match code {
            CloseCode::Normal
            | CloseCode::GoingAway
            | CloseCode::InvalidPayload
            | CloseCode::PolicyViolation
            | CloseCode::MessageTooBig
            | CloseCode::InternalError
            | CloseCode::InvalidToken
            | CloseCode::TokenExpired
            | CloseCode::ChannelNotAuthorized
            | CloseCode::OverConcurrentLimit
            | CloseCode::OverMessageRate
            | CloseCode::AccountSuspended
            | CloseCode::AdminDisconnect => CloseCode::ALL.contains(&code),
        }
    }

    #[test]
    fn close_codes_read_back_from_their_numbers() {
        for code in CloseCode::ALL {
            assert!(listed(code));
            assert_eq!(CloseCode::from_u16(code.as_u16()), Some(code), "{code:?}");
        }
        // Exactly the listed numbers decode, each to the code that sends it.
        let decoded: Vec<u16> = (0..=u16::MAX)
            .filter(|&n| CloseCode::from_u16(n).is_some_and(|c| c.as_u16() == n))
            .collect();
        let mut numbers: Vec<u16> = CloseCode::ALL.iter().map(|c| c.as_u16()).collect();
        numbers.sort_unstable();
        assert_eq!(decoded, numbers);
        assert!((0..=u16::MAX).all(|n| CloseCode::from_u16(n).is_none_or(|c| c.as_u16() == n)));
        for client_only in [1006, 4000] {
            assert_eq!(CloseCode::from_u16(client_only), None);
        }
    }
}
