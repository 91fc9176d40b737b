//! The shared face of one connection: what other tasks (fan-out, direct, kick, shutdown) may
//! touch. The session task owns the socket; everyone else only enqueues frames or asks it to
//! close.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::ws::Utf8Bytes;
use herald_protocol::CloseCode;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, Notify};

use crate::ids::{AppId, ConnId, PeerId};

/// An encoded server frame. Cloning shares the bytes, so one encoding serves every receiver.
pub type Frame = Utf8Bytes;

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
}

/// Outcome of handing a frame to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// The queue was full; the connection is being closed as a slow consumer.
    Dropped,
    /// The connection is already gone.
    Closed,
}

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// A live connection as seen by the engine. Created by the session, shared through `Arc`.
#[derive(Debug)]
pub struct Conn {
    pub id: ConnId,
    pub app: AppId,
    pub peer_id: PeerId,
    /// Public identity bag from the JWT, stamped on presence and `direct`/`message` frames.
    pub peer_metadata: Option<Arc<RawValue>>,
    /// Whether this connection receives presence frames (the `presence` action, spec Q2).
    pub receives_presence: bool,
    /// `token` or `publishable` (for operators and metrics).
    pub kind: &'static str,
    /// Unix seconds when the connection was accepted (for operators).
    pub connected_at: i64,
    /// Bounded outbound queue; the session task drains it into the socket.
    tx: mpsc::Sender<Frame>,
    /// Set once by whoever decides the connection must end; the session task obeys it.
    close_reason: OnceLock<CloseReason>,
    close_signal: Notify,
}

impl Conn {
    /// Creates the shared handle and the receiving end of its outbound queue.
    pub fn new(
        app: AppId,
        peer_id: PeerId,
        peer_metadata: Option<Arc<RawValue>>,
        receives_presence: bool,
        kind: &'static str,
        queue_capacity: usize,
    ) -> (Arc<Conn>, mpsc::Receiver<Frame>) {
        let (tx, rx) = mpsc::channel(queue_capacity.max(1));
        let conn = Conn {
            id: ConnId(NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed)),
            app,
            peer_id,
            peer_metadata,
            receives_presence,
            kind,
            connected_at: crate::state::unix_now(),
            tx,
            close_reason: OnceLock::new(),
            close_signal: Notify::new(),
        };
        (Arc::new(conn), rx)
    }

    /// Enqueues a frame without ever blocking. A full queue closes the connection as a slow
    /// consumer: the sender is never slowed down by one bad receiver and memory stays bounded.
    pub fn deliver(&self, frame: Frame) -> Delivery {
        match self.tx.try_send(frame) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close(CloseReason::SLOW_CONSUMER);
                Delivery::Dropped
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Closed,
        }
    }

    /// Asks the session to close with this reason. The first reason wins.
    pub fn close(&self, reason: CloseReason) {
        if self.close_reason.set(reason).is_ok() {
            self.close_signal.notify_one();
        }
    }

    /// The reason set by [`Conn::close`], if any.
    pub fn close_requested(&self) -> Option<CloseReason> {
        self.close_reason.get().copied()
    }

    /// Resolves once [`Conn::close`] has been called.
    pub async fn closed(&self) -> CloseReason {
        loop {
            if let Some(reason) = self.close_requested() {
                return reason;
            }
            self.close_signal.notified().await;
        }
    }
}
