//! The one error type of the SDK.

use std::time::Duration;

use crate::types::{ConnectionState, ServerError};

/// Why an operation failed.
///
/// The variants fall into four groups: rejected locally before anything was sent (options,
/// names, payload size, state), rejected by the server ([`Error::Server`]), lost in transit
/// ([`Error::Timeout`], [`Error::Disconnected`]), and connect failures.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The options are unusable (bad URL, zero timeout, …).
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// The channel name breaks the server's rules: 1–256 bytes of UTF-8, no control
    /// characters. Nothing was sent.
    #[error("invalid channel name {0:?}: 1-256 bytes without control characters")]
    InvalidChannel(String),
    /// The channel starts with `_metered/`, `_internal/` or `_system/` (checked by [`crate::Peer`]).
    #[error("channel {0:?} uses a reserved prefix")]
    ReservedChannel(String),
    /// The target peer id breaks the server's rules: 1–128 bytes, no control characters.
    #[error("invalid peer id {0:?}: 1-128 bytes without control characters")]
    InvalidPeerId(String),
    /// The serialized payload is larger than the server's `maxMessageSize`; sending it would
    /// get the whole connection closed with 1009.
    #[error("payload of {size} bytes exceeds the server's limit of {cap} bytes")]
    Oversized {
        /// Serialized size of `data`.
        size: usize,
        /// The welcome's `maxMessageSize` (65536 before the first welcome).
        cap: usize,
    },
    /// The payload could not be serialized to JSON.
    #[error("payload is not serializable: {0}")]
    Serialize(String),
    /// The server answered the request with an `error` frame.
    #[error("server error {0}")]
    Server(ServerError),
    /// No `ack` or `error` arrived in time; the request may or may not have taken effect.
    #[error("no ack within {0:?}")]
    Timeout(Duration),
    /// The connection closed while the request was waiting for its answer.
    #[error("connection closed before the ack (code {code})")]
    Disconnected {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// The request needs a welcomed connection and there is none right now.
    #[error("not connected (state {0:?})")]
    NotConnected(ConnectionState),
    /// The operation is not allowed in the current state (e.g. `connect()` while connected).
    #[error("{operation} is not allowed in state {state}")]
    InvalidState {
        /// The operation that was refused.
        operation: &'static str,
        /// The state it met.
        state: String,
    },
    /// The server closed the socket before its `welcome`, typically with an auth close code
    /// (4001 bad credential, 4002 expired token, 4003, 4010, 4012). The first connect is never
    /// retried.
    #[error("connection refused: closed with code {code} before the welcome")]
    ConnectRejected {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// No `welcome` arrived in time.
    #[error("no welcome within {0:?}")]
    WelcomeTimeout(Duration),
    /// The TCP connection or the WebSocket upgrade failed (for example HTTP 429).
    #[error("connection failed: {0}")]
    Transport(String),
    /// The token provider returned an error.
    #[error("token provider failed: {0}")]
    TokenProvider(String),
    /// The token provider did not answer in time.
    #[error("token provider did not answer within {0:?}")]
    TokenProviderTimeout(Duration),
    /// `close()` was called (or the last handle dropped) while the operation was in progress.
    #[error("the client was closed")]
    Closed,
    /// The client was disposed; it cannot be used any more.
    #[error("the client was disposed")]
    Disposed,
    /// The [`crate::Peer`] has not joined a channel (or has left it).
    #[error("the peer has not joined a channel")]
    NotJoined,
    /// A [`crate::Peer`] cannot send to its own peer id.
    #[error("cannot send to yourself")]
    SelfSend,
    /// The [`crate::RemotePeer`] has left the channel; its handle no longer sends.
    #[error("remote peer {0:?} has left")]
    PeerGone(String),
    /// The history request was answered with an error (for example 404
    /// `history_not_enabled` for a channel that keeps no history, or 403 outside the
    /// credential's scope).
    #[error("history request failed with {status} {code}: {message}")]
    Rest {
        /// The HTTP status.
        status: u16,
        /// The body's `error` code.
        code: String,
        /// The body's `message`.
        message: String,
    },
    /// The history request got no usable answer (network, or a body that is not JSON).
    #[error("history request failed: {0}")]
    Http(String),
}

impl Error {
    /// The server's error code, for [`Error::Server`].
    pub fn server_code(&self) -> Option<&str> {
        match self {
            Error::Server(e) => Some(&e.code),
            _ => None,
        }
    }
}
