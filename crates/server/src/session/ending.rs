//! How a session ends: the close for a read error, the panic guard, and whether the peer left
//! on purpose (which tells the engine how long to keep its presence).

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use herald_protocol::CloseCode;

use super::Flow;
use crate::close::CloseReason;
use crate::engine::Departure;
use crate::ids::ConnId;

/// Whether the peer left on purpose (presence goes at once) or dropped and may come straight
/// back (an engine may keep its presence for a grace period, so a reconnect does not flap).
pub(super) fn departure(client_closed: bool, reason: Option<CloseReason>) -> Departure {
    let deliberate = client_closed || reason.is_some_and(|r| r.code.is_terminal_for_sdks());
    if deliberate {
        Departure::Left
    } else if reason.is_some_and(|r| r.code == CloseCode::GoingAway) {
        Departure::Shutdown
    } else {
        Departure::Dropped
    }
}

pub(super) fn rate_limited() -> Flow {
    Flow::Close(CloseReason::new(
        CloseCode::OverMessageRate,
        "message rate exceeded",
    ))
}

/// Maps WebSocket read errors to the close the spec asks for (1009 too big, 1007 bad UTF-8).
pub(super) fn classify_read_error(err: &axum::Error) -> Flow {
    use std::error::Error as _;
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(ws_err) = e.downcast_ref::<tokio_tungstenite_error::Error>() {
            return match ws_err {
                tokio_tungstenite_error::Error::Capacity(_) => Flow::Close(CloseReason::new(
                    CloseCode::MessageTooBig,
                    "message too big",
                )),
                tokio_tungstenite_error::Error::Utf8(_) => {
                    Flow::Close(CloseReason::new(CloseCode::InvalidPayload, "invalid UTF-8"))
                }
                _ => Flow::Gone,
            };
        }
        source = e.source();
    }
    Flow::Gone
}

/// The WebSocket library behind `axum::Error`.
mod tokio_tungstenite_error {
    pub use tokio_tungstenite::tungstenite::Error;
}

/// Runs the session loop, turning a panic into a close with 1011, so that the caller's cleanup
/// always runs.
///
/// Not an `async fn`: one would keep its `run` argument in its own state beside the
/// `CatchUnwind` it moved into, holding the whole session loop twice for the connection's life.
pub(super) fn unwind_to_close(
    run: impl std::future::Future<Output = Option<CloseReason>>,
    conn: ConnId,
) -> impl std::future::Future<Output = Option<CloseReason>> {
    AssertUnwindSafe(run)
        .catch_unwind()
        .map(move |outcome| match outcome {
            Ok(reason) => reason,
            Err(_) => {
                tracing::error!(conn = %conn, "session panicked; closing it");
                Some(CloseReason::new(CloseCode::InternalError, "internal error"))
            }
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::conn::Conn;
    use crate::ids::{AppId, PeerId};

    #[tokio::test]
    async fn a_panicking_session_loop_still_returns_a_close_for_the_cleanup() {
        let (conn, _rx) = Conn::new(
            AppId::new("app".to_string()),
            PeerId::new("p".to_string()),
            None,
            true,
            "publishable",
            8,
        );
        let panicking = async {
            if conn.close_requested().is_none() {
                panic!("handler bug");
            }
            None
        };
        let reason = unwind_to_close(panicking, conn.id).await;
        assert_eq!(reason.map(|r| r.code), Some(CloseCode::InternalError));
        let fine = unwind_to_close(async { Some(CloseReason::SLOW_CONSUMER) }, conn.id).await;
        assert_eq!(fine, Some(CloseReason::SLOW_CONSUMER));
    }
}
