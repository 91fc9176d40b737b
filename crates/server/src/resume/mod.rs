//! Lossless reconnect: what the server keeps so a stable peer that dropped can pick up where
//! it left off.
//!
//! - [`watermark`]: the session's ping/pong watermark. A WebSocket pong proves the client read
//!   everything written before the matching ping (TCP keeps order), so the channel positions
//!   read just before that ping are *confirmed*.
//! - [`book`]: per (app, peer), for `history.resume_window_secs` after an abnormal close, the
//!   confirmed position of each channel (taken back by the peer's next subscribe to it) and a
//!   bounded inbox of the directs sent to it meanwhile.
//!
//! The replay itself runs in the engine, under the channel's lock, with the seam rule of
//! rewind (`engine/hub/replay.rs`). Publishable-key peers get a fresh id per connection and
//! are never parked, so none of this applies to them.

pub mod book;
pub mod metrics;
pub mod watermark;

use std::sync::Arc;
use std::time::Duration;

use crate::config::HistoryConfig;
use crate::conn::Frame;

/// A position in a channel's history up to which a client has everything: the messages of
/// `epoch` with offsets up to `offset`. `epoch: None` means the channel had no history yet,
/// so every message of its current epoch is after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    pub epoch: Option<Arc<str>>,
    pub offset: u64,
}

/// The resume knobs of `[history]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeSettings {
    /// How long positions and the inbox of a dropped stable peer are kept
    /// (`resume_window_secs`; zero turns transparent resume and the inbox off).
    pub window: Duration,
    /// How long a queued direct waits for its peer (`direct_inbox_secs`).
    pub inbox_ttl: Duration,
    /// Directs one peer's inbox holds at most (`direct_inbox_max_messages`).
    pub inbox_max_messages: usize,
    /// Bytes of frames one peer's inbox holds at most (`direct_inbox_max_bytes`).
    pub inbox_max_bytes: usize,
    /// The most messages one resume replays; a longer gap fails (`resume_max_messages`).
    pub max_replay: usize,
    /// How long after unconfirmed traffic the session sends its watermark ping
    /// (`resume_confirm_ms`).
    pub confirm_after: Duration,
}

impl Default for ResumeSettings {
    /// Resume off: nothing is parked, no watermark ping is sent.
    fn default() -> Self {
        ResumeSettings {
            window: Duration::ZERO,
            inbox_ttl: Duration::ZERO,
            inbox_max_messages: 0,
            inbox_max_bytes: 0,
            max_replay: 0,
            confirm_after: Duration::from_secs(1),
        }
    }
}

impl ResumeSettings {
    /// `outbound_queue_frames` caps the replay: it is queued at once, beside ack and snapshot.
    pub fn from_config(config: &HistoryConfig, outbound_queue_frames: usize) -> Self {
        ResumeSettings {
            window: Duration::from_secs(config.resume_window_secs),
            inbox_ttl: Duration::from_secs(config.direct_inbox_secs),
            inbox_max_messages: config.direct_inbox_max_messages,
            inbox_max_bytes: config.direct_inbox_max_bytes,
            max_replay: config
                .resume_max_messages
                .min(outbound_queue_frames.saturating_sub(2)),
            confirm_after: Duration::from_millis(config.resume_confirm_ms),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.window.is_zero()
    }
}

/// A subscribe that continues from a known position: every retained message after `since`
/// follows the snapshot before live ones, or nothing does.
#[derive(Debug, Clone)]
pub struct ResumeFrom {
    pub since: Since,
    /// For an explicit `since`: the acks to queue first, one saying `recovered: true` and one
    /// `recovered: false` (the client sent a requestId). `None` for a transparent resume, which
    /// queues the request's own ack.
    pub acks: Option<(Frame, Frame)>,
    /// The most messages the replay may hold; a longer gap fails.
    pub max_replay: usize,
}

/// What a subscribe did about a [`ResumeFrom`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Every retained message after the position was queued (`replayed` of them).
    Recovered { replayed: usize },
    /// The gap could not be filled (retention passed, the epoch changed, too long): nothing
    /// was replayed.
    Failed,
}
