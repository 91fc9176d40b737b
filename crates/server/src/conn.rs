//! The shared face of one connection: what other tasks (fan-out, direct, kick, shutdown) may
//! touch. The session task owns the socket; everyone else only enqueues frames or asks it to
//! close.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::ws::Utf8Bytes;
use herald_protocol::CloseCode;
use serde_json::value::RawValue;
use tokio::sync::Notify;

use crate::ids::{AppId, ConnId, PeerId};
use crate::sync::lock;

/// An emptied queue keeps at most this many slots; more is released, so a connection that had
/// one burst does not hold its peak buffer while idle.
const IDLE_QUEUE_SLOTS: usize = 8;

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
    /// Bounded outbound queue; the session task drains it into the socket (see [`Outbound`]).
    ///
    /// A mutex around a `VecDeque` rather than a channel: an idle connection's queue allocates
    /// nothing (a tokio mpsc channel allocates its first 32-slot block up front, ~1.5 KB per
    /// connection), and a fan-out enqueue is one uncontended lock plus a wake-up only when the
    /// queue goes from empty to non-empty, which the session task then drains as one batch.
    outbox: Mutex<Outbox>,
    /// Signalled when the queue becomes non-empty.
    outbox_ready: Notify,
    /// Frames the queue may hold (`limits.outbound_queue_frames`).
    capacity: usize,
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
    ) -> (Arc<Conn>, Outbound) {
        let conn = Conn {
            id: ConnId(NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed)),
            app,
            peer_id,
            peer_metadata,
            receives_presence,
            kind,
            connected_at: crate::state::unix_now(),
            outbox: Mutex::new(Outbox::default()),
            outbox_ready: Notify::new(),
            capacity: queue_capacity.max(1),
            close_reason: OnceLock::new(),
            close_signal: Notify::new(),
        };
        let conn = Arc::new(conn);
        let rx = Outbound {
            conn: conn.clone(),
            batch: VecDeque::new(),
        };
        (conn, rx)
    }

    /// Enqueues a frame without ever blocking. A full queue closes the connection as a slow
    /// consumer: the sender is never slowed down by one bad receiver and memory stays bounded.
    pub fn deliver(&self, frame: Frame) -> Delivery {
        let mut outbox = lock(&self.outbox);
        if outbox.closed {
            return Delivery::Closed;
        }
        if outbox.frames.len() >= self.capacity {
            drop(outbox);
            self.close(CloseReason::SLOW_CONSUMER);
            return Delivery::Dropped;
        }
        let was_empty = outbox.frames.is_empty();
        outbox.frames.push_back(frame);
        drop(outbox);
        if was_empty {
            // Stores a permit if the session is not waiting yet, so the wake-up is never lost.
            self.outbox_ready.notify_one();
        }
        Delivery::Queued
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

/// The queue shared by deliverers and the session task.
#[derive(Debug, Default)]
struct Outbox {
    frames: VecDeque<Frame>,
    /// The session ended: later deliveries are refused (`Delivery::Closed`).
    closed: bool,
}

/// The receiving end of a connection's outbound queue, owned by its session task. Dropping it
/// closes the queue.
pub struct Outbound {
    conn: Arc<Conn>,
    /// Frames taken from the shared queue in one swap, written before the next swap.
    batch: VecDeque<Frame>,
}

impl Outbound {
    /// The next frame, waiting until one is queued. Cancel-safe: nothing is taken before it
    /// returns.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.try_recv() {
                return Some(frame);
            }
            self.conn.outbox_ready.notified().await;
        }
    }

    /// The next frame if one is queued. Takes the whole shared queue in one swap, so the lock
    /// is taken once per batch rather than once per frame.
    pub fn try_recv(&mut self) -> Option<Frame> {
        if let Some(frame) = self.batch.pop_front() {
            return Some(frame);
        }
        let mut outbox = lock(&self.conn.outbox);
        if outbox.frames.is_empty() {
            if outbox.frames.capacity() > IDLE_QUEUE_SLOTS {
                outbox.frames = VecDeque::new();
            }
            drop(outbox);
            if self.batch.capacity() > IDLE_QUEUE_SLOTS {
                self.batch = VecDeque::new();
            }
            return None;
        }
        std::mem::swap(&mut outbox.frames, &mut self.batch);
        drop(outbox);
        self.batch.pop_front()
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        let mut outbox = lock(&self.conn.outbox);
        outbox.closed = true;
        outbox.frames = VecDeque::new();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn conn(capacity: usize) -> (Arc<Conn>, Outbound) {
        Conn::new(
            AppId::new("app".to_string()),
            PeerId::new("p".to_string()),
            None,
            true,
            "publishable",
            capacity,
        )
    }

    #[tokio::test]
    async fn frames_come_out_in_order_across_batches() {
        let (conn, mut rx) = conn(16);
        for i in 0..5 {
            assert_eq!(conn.deliver(Frame::from(i.to_string())), Delivery::Queued);
        }
        assert_eq!(rx.recv().await.unwrap().as_str(), "0");
        conn.deliver(Frame::from("5"));
        let rest: Vec<String> = std::iter::from_fn(|| rx.try_recv())
            .map(|f| f.as_str().to_string())
            .collect();
        assert_eq!(rest, ["1", "2", "3", "4", "5"]);
        assert!(rx.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_full_queue_closes_as_slow_consumer() {
        let (conn, _rx) = conn(2);
        assert_eq!(conn.deliver(Frame::from("a")), Delivery::Queued);
        assert_eq!(conn.deliver(Frame::from("b")), Delivery::Queued);
        assert_eq!(conn.deliver(Frame::from("c")), Delivery::Dropped);
        assert_eq!(conn.close_requested(), Some(CloseReason::SLOW_CONSUMER));
    }

    #[tokio::test]
    async fn a_dropped_receiver_refuses_deliveries() {
        let (conn, rx) = conn(2);
        drop(rx);
        assert_eq!(conn.deliver(Frame::from("a")), Delivery::Closed);
    }

    #[tokio::test]
    async fn recv_wakes_on_a_later_delivery() {
        let (conn, mut rx) = conn(4);
        let waiter = tokio::spawn(async move { rx.recv().await.map(|f| f.as_str().to_string()) });
        tokio::task::yield_now().await;
        conn.deliver(Frame::from("late"));
        assert_eq!(waiter.await.unwrap().as_deref(), Some("late"));
    }
}
