//! `herald_messages_out_total` by frame type, as a handle that writers outside a session (a
//! connection's direct writes, `socket.rs`) share with the registry (`metrics.rs`).

use prometheus_client::metrics::counter::Counter;

/// Frame types the server sends.
pub(crate) const OUT_TYPES: [&str; 9] = [
    "welcome",
    "ack",
    "error",
    "message",
    "direct",
    "presence",
    "pong",
    "going_away",
    "other",
];

/// `herald_messages_out_total` by frame type; cloning shares the counters.
#[derive(Clone, Debug)]
pub struct FramesOut(std::sync::Arc<[Counter]>);

impl FramesOut {
    /// One counter per entry of [`OUT_TYPES`], in order.
    pub fn new(counters: Vec<Counter>) -> Self {
        FramesOut(counters.into())
    }

    /// Counters registered nowhere (tests and tools).
    pub fn unregistered() -> Self {
        FramesOut::new(OUT_TYPES.iter().map(|_| Counter::default()).collect())
    }

    /// Counts one server frame by the type its encoding starts with.
    pub fn count(&self, frame: &str) {
        // The type ends within its first bytes: look no further (a per-delivery cost).
        let kind = frame
            .strip_prefix("{\"type\":\"")
            .and_then(|rest| {
                let head = &rest.as_bytes()[..rest.len().min(16)];
                head.iter().position(|&b| b == b'"').map(|end| &rest[..end])
            })
            .unwrap_or("other");
        let i = OUT_TYPES
            .iter()
            .position(|t| *t == kind)
            .unwrap_or(OUT_TYPES.len() - 1);
        if let Some(counter) = self.0.get(i) {
            counter.inc();
        }
    }
}
