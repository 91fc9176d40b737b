//! Why the server closes a connection. Its own module because those who decide a close (auth,
//! REST, the engines, the session) and the connection that carries it all need the type, and
//! none of them should have to depend on another for it.

use herald_protocol::CloseCode;

/// Why the server closes a connection: the wire code plus a short reason (≤ 123 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: CloseCode,
    pub reason: &'static str,
}

impl CloseReason {
    pub const fn new(code: CloseCode, reason: &'static str) -> Self {
        CloseReason { code, reason }
    }
    /// The outbound queue was full: the client reads slower than it is sent to.
    pub const SLOW_CONSUMER: CloseReason =
        CloseReason::new(CloseCode::PolicyViolation, "slow consumer");
    /// An administrator kicked the peer (`DELETE /v1/peers/:id`), on this node or another.
    pub const ADMIN_DISCONNECT: CloseReason =
        CloseReason::new(CloseCode::AdminDisconnect, "disconnected by admin");
}
