//! Wall-clock time as the wire protocol counts it. Kept apart from [`crate::state`] so code that
//! only needs "now" (a connection's `connected_at`, token expiry) does not depend on the whole
//! node's state.

use std::time::{SystemTime, UNIX_EPOCH};

/// Current Unix time in seconds (the unit of `serverTime`, `exp` and `expiresAt`).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Current Unix time in milliseconds.
pub fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
