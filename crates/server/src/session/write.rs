//! Writing the outbound queue to the socket: a batch of frames, one write.
//!
//! On a plain socket the batch is one vectored write of each frame's header and its shared
//! payload (`socket.rs`); over TLS, tungstenite frames and copies it, then flushes once.

use std::io;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::SinkExt;

use crate::conn::{Frame, Outbound};
use crate::metrics::Metrics;
use crate::socket::DirectSocket;

/// Frames written per flush; bounds the time the socket task spends away from reading. The
/// read side takes at most as many ready frames before it writes.
pub(super) const MAX_BATCH: usize = 64;
/// A write that stalls this long means the peer stopped reading; the session ends.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes `first` and whatever else is already queued (up to a batch), then flushes once.
pub(super) async fn write_batch(
    ws: &mut WebSocket,
    direct: Option<&DirectSocket>,
    first: Frame,
    rx: &mut Outbound,
    metrics: &Metrics,
) -> bool {
    let written = match direct {
        Some(direct) => {
            let write = write_direct(ws, direct, first, rx, metrics);
            matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())))
        }
        None => {
            let write = write_framed(ws, first, rx, metrics);
            matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())))
        }
    };
    if written {
        // The frames reached the socket: the connection and the node stop being charged.
        rx.written();
    }
    written
}

async fn write_direct(
    ws: &mut WebSocket,
    direct: &DirectSocket,
    first: Frame,
    rx: &mut Outbound,
    metrics: &Metrics,
) -> io::Result<()> {
    let mut frames = Vec::with_capacity(rx.ready().min(MAX_BATCH - 1) + 1);
    frames.push(first);
    while frames.len() < MAX_BATCH {
        match rx.try_recv() {
            Some(frame) => frames.push(frame),
            None => break,
        }
    }
    for frame in frames.iter().filter(|f| !f.is_empty()) {
        metrics.frame_out(frame.as_str());
    }
    if direct.tungstenite_mid() {
        // A control frame (a pong, a ping) is half-written: it goes first.
        ws.flush().await.map_err(io::Error::other)?;
    }
    direct.write_frames(&frames).await
}

async fn write_framed(
    ws: &mut WebSocket,
    first: Frame,
    rx: &mut Outbound,
    metrics: &Metrics,
) -> Result<(), axum::Error> {
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
}

/// Best-effort delivery of what is already queued (used before a graceful close).
pub(super) async fn flush_pending(
    ws: &mut WebSocket,
    direct: Option<&DirectSocket>,
    rx: &mut Outbound,
    metrics: &Metrics,
) {
    while let Some(frame) = rx.try_recv() {
        if !write_batch(ws, direct, frame, rx, metrics).await {
            return;
        }
    }
}
