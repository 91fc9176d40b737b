//! One welcomed socket: the read/write loop with its heartbeat and inactivity watchdog, and
//! the routing of each inbound frame to requests, observers and streams.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

use super::dial::{
    close_parts, close_socket, error_code, Closed, Ws, CLIENT_INACTIVITY, CLOSE_FLUSH_TIMEOUT,
};
use super::stopped;
use crate::error::Error;
use crate::events::lock;
use crate::frames::{self, ServerFrame};
use crate::shared::{Inner, Observed};
use crate::types::ConnectionEvent;

/// Frames written per flush.
const WRITE_BATCH: usize = 64;
/// A write that cannot complete in this time means the link is dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads and writes one welcomed socket until it ends; returns how it ended.
pub(super) async fn run_session(
    inner: &Inner,
    ws: &mut Ws,
    out_rx: &mut mpsc::Receiver<String>,
    conn_id: u64,
    stop: &mut watch::Receiver<bool>,
) -> Closed {
    let inactivity = inner.options.inactivity_timeout;
    // A third of the watchdog window (at least 1 s), as the official SDKs do: two pings go
    // out before a silent link is given up.
    let heartbeat = inactivity.map(|t| (t / 3).max(Duration::from_secs(1)));
    let mut last_inbound = Instant::now();
    let mut next_ping = heartbeat.map(|h| last_inbound + h);
    loop {
        let watchdog = inactivity.map(|t| last_inbound + t);
        tokio::select! {
            biased;
            _ = stopped(stop) => {
                close_socket(ws, 1000, "client requested close").await;
                return Closed { code: 1000, reason: "client requested close".into() };
            }
            inbound = ws.next() => match inbound {
                Some(Ok(Message::Text(text))) => {
                    last_inbound = Instant::now();
                    next_ping = heartbeat.map(|h| last_inbound + h);
                    dispatch(inner, conn_id, text.as_str());
                }
                Some(Ok(Message::Binary(_))) => {
                    tracing::warn!("dropping a binary frame: the protocol is text only");
                }
                Some(Ok(Message::Close(frame))) => {
                    // Flushing sends the close echo tungstenite queued.
                    let _ = timeout(CLOSE_FLUSH_TIMEOUT, ws.flush()).await;
                    return close_parts(frame);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Closed { code: error_code(&e), reason: e.to_string() },
                None => return Closed { code: 1006, reason: "the connection ended".into() },
            },
            outbound = out_rx.recv() => {
                let Some(first) = outbound else {
                    return Closed { code: 1006, reason: "the outbound queue closed".into() };
                };
                if let Err(e) = write_batch(ws, out_rx, first).await {
                    return Closed { code: 1006, reason: e };
                }
            }
            _ = sleep_until_opt(next_ping) => {
                next_ping = heartbeat.map(|h| Instant::now() + h);
                if let Err(e) = write_batch(ws, out_rx, frames::PING.to_owned()).await {
                    return Closed { code: 1006, reason: e };
                }
            }
            _ = sleep_until_opt(watchdog) => {
                tracing::warn!(?inactivity, "no frame from the server in time; reconnecting");
                close_socket(ws, CLIENT_INACTIVITY, "inactivity timeout").await;
                return Closed { code: CLIENT_INACTIVITY, reason: "inactivity timeout".into() };
            }
        }
    }
}

/// Writes `first` and whatever else is queued (up to a batch) with one flush.
async fn write_batch(
    ws: &mut Ws,
    out_rx: &mut mpsc::Receiver<String>,
    first: String,
) -> Result<(), String> {
    let write = async {
        ws.feed(Message::text(first)).await?;
        for _ in 1..WRITE_BATCH {
            match out_rx.try_recv() {
                Ok(next) => ws.feed(Message::text(next)).await?,
                Err(_) => break,
            }
        }
        ws.flush().await
    };
    match timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("a write stalled".into()),
    }
}

/// Routes one inbound frame: answers to requests, then events to observers and streams.
fn dispatch(inner: &Inner, conn_id: u64, text: &str) {
    let frame = match frames::parse_server_frame(text) {
        Ok(frame) => frame,
        Err(e) => {
            tracing::warn!(error = %e, conn_id, "dropping a malformed frame from the server");
            return;
        }
    };
    match frame {
        ServerFrame::Welcome(_) => tracing::warn!("ignoring a second welcome"),
        ServerFrame::Ack {
            request_id,
            recovered,
        } => {
            let resumed = lock(&inner.shared).resuming.remove(&request_id);
            if let (Some(channel), Some(recovered)) = (resumed, recovered) {
                if !recovered {
                    tracing::warn!(%channel, "resume not recovered: messages may have been missed");
                }
                inner
                    .connection
                    .emit(ConnectionEvent::Resumed { channel, recovered });
            }
            if !inner.settle(&request_id, Ok(())) {
                tracing::debug!(%request_id, "ack for no pending request (timed out?)");
            }
        }
        ServerFrame::Error(error) => {
            if let Some(request_id) = error.request_id.clone() {
                if inner.settle(&request_id, Err(Error::Server(error.clone()))) {
                    return;
                }
            }
            // The official SDKs' compatibility path for servers without `ping`: an
            // uncorrelated unknown_type answers the heartbeat and means nothing else.
            if error.code == "unknown_type" && error.request_id.is_none() {
                tracing::debug!("server does not know ping; ignoring its unknown_type");
                return;
            }
            inner.notify(Observed::ServerError(&error));
            inner.server_errors.emit(error);
        }
        ServerFrame::Message(message) => {
            if !lock(&inner.shared).take_position(&message) {
                tracing::debug!(channel = %message.channel, offset = ?message.offset, "dropping a duplicate");
                return;
            }
            inner.notify(Observed::Message(&message));
            inner.messages.emit(message);
        }
        ServerFrame::Direct(direct) => {
            inner.notify(Observed::Direct(&direct));
            inner.directs.emit(direct);
        }
        ServerFrame::Presence(presence) => {
            inner.notify(Observed::Presence(&presence));
            inner.presence.emit(presence);
        }
        ServerFrame::GoingAway(going_away) => inner.going_away.emit(going_away),
        ServerFrame::Pong => {}
    }
}
