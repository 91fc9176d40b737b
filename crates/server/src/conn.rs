//! The shared face of one connection: what other tasks (fan-out, direct, kick, shutdown) may
//! touch. The session task owns the socket; everyone else only enqueues frames or asks it to
//! close.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::ws::Utf8Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::value::RawValue;
use tokio::sync::Notify;

use crate::clock::unix_now;
use crate::close::CloseReason;
use crate::ids::{AppId, ConnId, PeerId};
use crate::sync::lock;

/// An emptied queue keeps at most this many slots; more is released, so a connection that had
/// one burst does not hold its peak buffer while idle.
const IDLE_QUEUE_SLOTS: usize = 8;

/// While the node is over `limits.node_outbound_bytes`, a connection holding more than this many
/// unwritten bytes is shed. A client that reads promptly holds far less (one batch of small
/// frames), so it keeps receiving while the connections that pile memory up are closed.
pub const NODE_SHED_ABOVE_BYTES: usize = 64 * 1024;

/// An encoded server frame. Cloning shares the bytes, so one encoding serves every receiver.
pub type Frame = Utf8Bytes;

/// The node-wide account of outbound bytes: every connection's queued and not-yet-written frames.
///
/// The gauge doubles as the counter itself (an atomic add per delivery, no separate bookkeeping),
/// so the metric is exact at any scrape.
#[derive(Debug)]
pub struct NodeOutbound {
    /// Bytes the node may hold for all connections together (0 = unlimited).
    limit: usize,
    queued: Gauge,
    /// Connections closed because the node was over its budget.
    shed: Counter,
}

impl NodeOutbound {
    pub fn new(limit: usize, queued: Gauge, shed: Counter) -> Self {
        NodeOutbound {
            limit,
            queued,
            shed,
        }
    }

    /// No node-wide budget, with its own unregistered metrics (for tests and tools).
    pub fn unlimited() -> Arc<Self> {
        Arc::new(NodeOutbound::new(0, Gauge::default(), Counter::default()))
    }

    /// Outbound bytes currently held for all connections of this node.
    pub fn queued_bytes(&self) -> usize {
        self.queued.get().max(0) as usize
    }

    fn would_exceed(&self, len: usize) -> bool {
        self.limit > 0 && self.queued_bytes().saturating_add(len) > self.limit
    }

    fn charge(&self, len: usize) {
        self.queued.inc_by(len as i64);
    }

    fn release(&self, len: usize) {
        if len > 0 {
            self.queued.dec_by(len as i64);
        }
    }
}

/// How much one connection's outbound queue may hold before it is closed as a slow consumer.
#[derive(Debug, Clone)]
pub struct QueueLimits {
    /// Frames in the shared queue (`limits.outbound_queue_frames`).
    pub frames: usize,
    /// Bytes queued plus taken by the session but not yet written (`limits.outbound_queue_bytes`).
    pub bytes: usize,
    /// The node-wide account this connection charges.
    pub node: Arc<NodeOutbound>,
}

impl QueueLimits {
    /// A frame cap only: no byte budget and no node-wide account.
    pub fn frames_only(frames: usize) -> Self {
        QueueLimits {
            frames,
            bytes: usize::MAX,
            node: NodeOutbound::unlimited(),
        }
    }
}

/// Outcome of handing a frame to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// The queue was full (frames or bytes, its own or the node's); the connection is being
    /// closed as a slow consumer.
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
    /// Unwritten bytes the connection may hold (`limits.outbound_queue_bytes`).
    byte_budget: usize,
    node: Arc<NodeOutbound>,
    /// Set once by whoever decides the connection must end; the session task obeys it.
    close_reason: OnceLock<CloseReason>,
    close_signal: Notify,
}

impl Conn {
    /// Creates the shared handle and the receiving end of its outbound queue, with a frame cap
    /// only (engine tests and tools; sessions use [`Conn::with_limits`]).
    pub fn new(
        app: AppId,
        peer_id: PeerId,
        peer_metadata: Option<Arc<RawValue>>,
        receives_presence: bool,
        kind: &'static str,
        queue_capacity: usize,
    ) -> (Arc<Conn>, Outbound) {
        let limits = QueueLimits::frames_only(queue_capacity);
        Conn::with_limits(app, peer_id, peer_metadata, receives_presence, kind, limits)
    }

    /// Creates the shared handle and the receiving end of its outbound queue.
    pub fn with_limits(
        app: AppId,
        peer_id: PeerId,
        peer_metadata: Option<Arc<RawValue>>,
        receives_presence: bool,
        kind: &'static str,
        limits: QueueLimits,
    ) -> (Arc<Conn>, Outbound) {
        let conn = Conn {
            id: ConnId(NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed)),
            app,
            peer_id,
            peer_metadata,
            receives_presence,
            kind,
            connected_at: unix_now(),
            outbox: Mutex::new(Outbox::default()),
            outbox_ready: Notify::new(),
            capacity: limits.frames.max(1),
            byte_budget: limits.bytes.max(1),
            node: limits.node,
            close_reason: OnceLock::new(),
            close_signal: Notify::new(),
        };
        let conn = Arc::new(conn);
        let rx = Outbound {
            conn: conn.clone(),
            batch: VecDeque::new(),
            taken_frames: 0,
            taken_bytes: 0,
        };
        (conn, rx)
    }

    /// Enqueues a frame without ever blocking. The connection is closed as a slow consumer,
    /// and the frame dropped, when its queue is full (frames or bytes), or when the node is over
    /// its outbound budget and this connection holds more than [`NODE_SHED_ABOVE_BYTES`]. The
    /// sender is never slowed down by one bad receiver and memory stays bounded.
    ///
    /// A frame always fits an empty queue, so one frame larger than the byte budget (a big
    /// presence snapshot) still reaches a client that reads.
    pub fn deliver(&self, frame: Frame) -> Delivery {
        let len = frame.len();
        let mut outbox = lock(&self.outbox);
        if outbox.closed {
            return Delivery::Closed;
        }
        let held = outbox.bytes;
        let after = held.saturating_add(len);
        let over_own =
            outbox.frames.len() >= self.capacity || (held > 0 && after > self.byte_budget);
        // The node total is read only for connections already holding a large share, so a
        // delivery to a prompt reader never looks at it.
        let over_node = !over_own && after > NODE_SHED_ABOVE_BYTES && self.node.would_exceed(len);
        if over_own || over_node {
            drop(outbox);
            if self.close_first(CloseReason::SLOW_CONSUMER) && over_node {
                self.node.shed.inc();
            }
            return Delivery::Dropped;
        }
        let was_empty = outbox.frames.is_empty();
        outbox.frames.push_back(frame);
        outbox.bytes = after;
        outbox.enqueued += 1;
        // Charged under the queue lock, as the release is, so the node total never dips below
        // what the connections hold.
        self.node.charge(len);
        drop(outbox);
        if was_empty {
            // Stores a permit if the session is not waiting yet, so the wake-up is never lost.
            self.outbox_ready.notify_one();
        }
        Delivery::Queued
    }

    /// Unwritten bytes this connection holds: queued plus taken by the session but not yet
    /// written.
    pub fn queued_bytes(&self) -> usize {
        lock(&self.outbox).bytes
    }

    /// Frames ever queued and frames written so far. A frame queued when `queued` read `n` has
    /// been written once `written` reaches `n`.
    pub fn progress(&self) -> QueueProgress {
        let outbox = lock(&self.outbox);
        QueueProgress {
            queued: outbox.enqueued,
            written: outbox.written,
        }
    }

    /// Asks the session to close with this reason. The first reason wins.
    pub fn close(&self, reason: CloseReason) {
        self.close_first(reason);
    }

    /// [`Conn::close`], telling whether this reason was the first (and so the one that counts).
    fn close_first(&self, reason: CloseReason) -> bool {
        let first = self.close_reason.set(reason).is_ok();
        if first {
            self.close_signal.notify_one();
        }
        first
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

/// Counters of a connection's outbound queue (see [`Conn::progress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueProgress {
    pub queued: u64,
    pub written: u64,
}

/// The queue shared by deliverers and the session task.
#[derive(Debug, Default)]
struct Outbox {
    frames: VecDeque<Frame>,
    /// Bytes of `frames` plus the session's batch and the frames it has taken but not yet
    /// written: everything this connection pins.
    bytes: usize,
    /// Frames ever queued, and frames written (see [`QueueProgress`]).
    enqueued: u64,
    written: u64,
    /// The session ended: later deliveries are refused (`Delivery::Closed`).
    closed: bool,
}

/// The receiving end of a connection's outbound queue, owned by its session task. Dropping it
/// closes the queue.
pub struct Outbound {
    conn: Arc<Conn>,
    /// Frames taken from the shared queue in one swap, written before the next swap.
    batch: VecDeque<Frame>,
    /// Frames handed out by `try_recv` since the last [`Outbound::written`], and their bytes:
    /// still charged to the connection until the session says they reached the socket.
    taken_frames: u64,
    taken_bytes: usize,
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
        let frame = self.take_next()?;
        self.taken_frames += 1;
        self.taken_bytes += frame.len();
        Some(frame)
    }

    /// Releases the bytes of every frame taken so far: the session has written and flushed
    /// them. One lock per written batch.
    pub fn written(&mut self) {
        if self.taken_frames == 0 {
            return;
        }
        let mut outbox = lock(&self.conn.outbox);
        outbox.bytes = outbox.bytes.saturating_sub(self.taken_bytes);
        outbox.written += self.taken_frames;
        self.conn.node.release(self.taken_bytes);
        drop(outbox);
        self.taken_frames = 0;
        self.taken_bytes = 0;
    }

    fn take_next(&mut self) -> Option<Frame> {
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
        self.conn.node.release(outbox.bytes);
        outbox.bytes = 0;
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

    fn limited(bytes: usize, node: &Arc<NodeOutbound>) -> (Arc<Conn>, Outbound) {
        let limits = QueueLimits {
            frames: 1024,
            bytes,
            node: node.clone(),
        };
        let (app, peer) = (AppId::new("app".to_string()), PeerId::new("p".to_string()));
        Conn::with_limits(app, peer, None, true, "publishable", limits)
    }

    fn frame_of(len: usize) -> Frame {
        Frame::from("x".repeat(len))
    }

    #[tokio::test]
    async fn bytes_stay_charged_until_written_and_the_budget_closes_the_connection() {
        let node = Arc::new(NodeOutbound::new(0, Gauge::default(), Counter::default()));
        let (conn, mut rx) = limited(1000, &node);
        assert_eq!(conn.deliver(frame_of(400)), Delivery::Queued);
        assert_eq!(conn.deliver(frame_of(400)), Delivery::Queued);
        // Taken by the session but not yet written: still pinned, still charged.
        assert!(rx.try_recv().is_some());
        assert_eq!(conn.queued_bytes(), 800);
        assert_eq!(node.queued_bytes(), 800);
        rx.written();
        assert_eq!(conn.queued_bytes(), 400);
        assert_eq!(node.queued_bytes(), 400);
        assert_eq!(conn.deliver(frame_of(500)), Delivery::Queued);
        assert_eq!(conn.deliver(frame_of(200)), Delivery::Dropped);
        assert_eq!(conn.close_requested(), Some(CloseReason::SLOW_CONSUMER));
        drop(rx);
        assert_eq!(
            node.queued_bytes(),
            0,
            "a closed queue gives its bytes back"
        );
    }

    #[tokio::test]
    async fn one_frame_larger_than_the_budget_fits_an_empty_queue() {
        let node = NodeOutbound::unlimited();
        let (conn, mut rx) = limited(100, &node);
        assert_eq!(conn.deliver(frame_of(5000)), Delivery::Queued);
        assert!(rx.try_recv().is_some());
        rx.written();
        assert_eq!(conn.deliver(frame_of(5000)), Delivery::Queued);
        assert_eq!(conn.deliver(frame_of(1)), Delivery::Dropped);
    }

    #[tokio::test]
    async fn over_the_node_budget_only_large_holders_are_shed() {
        let shed = Counter::default();
        let node = Arc::new(NodeOutbound::new(
            3 * NODE_SHED_ABOVE_BYTES,
            Gauge::default(),
            shed.clone(),
        ));
        let budget = 10 * NODE_SHED_ABOVE_BYTES;
        let (hog, _hog_rx) = limited(budget, &node);
        let (reader, mut reader_rx) = limited(budget, &node);
        // The hog fills the node up to its budget.
        for _ in 0..3 {
            assert_eq!(
                hog.deliver(frame_of(NODE_SHED_ABOVE_BYTES)),
                Delivery::Queued
            );
        }
        // A prompt reader with a small queue still gets its frames.
        for _ in 0..10 {
            assert_eq!(reader.deliver(frame_of(1000)), Delivery::Queued);
            while reader_rx.try_recv().is_some() {}
            reader_rx.written();
        }
        // The next delivery to the hog closes it; it is counted once.
        assert_eq!(hog.deliver(frame_of(10)), Delivery::Dropped);
        assert_eq!(hog.deliver(frame_of(10)), Delivery::Dropped);
        assert_eq!(hog.close_requested(), Some(CloseReason::SLOW_CONSUMER));
        assert_eq!(shed.get(), 1);
        assert_eq!(reader.close_requested(), None);
    }

    #[tokio::test]
    async fn progress_counts_frames_queued_and_written() {
        let (conn, mut rx) = conn(16);
        conn.deliver(Frame::from("a"));
        conn.deliver(Frame::from("b"));
        assert!(rx.try_recv().is_some());
        rx.written();
        let progress = conn.progress();
        assert_eq!((progress.queued, progress.written), (2, 1));
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
