//! Writing the outbound queue to the socket: a batch of frames, one flush.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::SinkExt;

use crate::conn::{Frame, Outbound};
use crate::metrics::Metrics;

/// Frames written per flush; bounds the time the socket task spends away from reading. The
/// read side takes at most as many ready frames before it writes.
pub(super) const MAX_BATCH: usize = 64;
/// A write that stalls this long means the peer stopped reading; the session ends.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes `first` and whatever else is already queued (up to a batch), then flushes once.
pub(super) async fn write_batch(
    ws: &mut WebSocket,
    first: Frame,
    rx: &mut Outbound,
    metrics: &Metrics,
) -> bool {
    let write = async {
        metrics.frame_out(first.as_str());
        ws.feed(Message::Text(first)).await?;
        for _ in 1..MAX_BATCH {
            match rx.try_recv() {
                Some(frame) => {
                    metrics.frame_out(frame.as_str());
                    ws.feed(Message::Text(frame)).await?
                }
                None => break,
            }
        }
        ws.flush().await
    };
    let written = matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())));
    if written {
        // The frames reached the socket: the connection and the node stop being charged.
        rx.written();
    }
    written
}

/// Best-effort delivery of what is already queued (used before a graceful close).
pub(super) async fn flush_pending(ws: &mut WebSocket, rx: &mut Outbound, metrics: &Metrics) {
    while let Some(frame) = rx.try_recv() {
        if !write_batch(ws, frame, rx, metrics).await {
            return;
        }
    }
}
