//! [`DataChannel`]: one open SCTP data channel to a remote, with back-pressure and the
//! negotiated maximum message size.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use webrtc::data_channel::data_channel_state::RTCDataChannelState;
use webrtc::data_channel::RTCDataChannel;

use super::RtcError;

/// Above this many queued bytes a send waits for the channel to drain (the browsers' own
/// send buffer is 16 MiB; a smaller mark keeps latency and memory bounded).
pub const HIGH_WATER: usize = 1024 * 1024;
/// The channel wakes waiting senders once it has drained below this.
const LOW_WATER: usize = 256 * 1024;
/// A send that cannot make progress for this long fails instead of hanging forever.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// RFC 8841: without an `a=max-message-size` attribute the peer accepts 64 KiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 65_536;

/// An RTCDataChannel to one remote peer. Clones share the channel.
#[derive(Clone)]
pub struct DataChannel {
    inner: Arc<RTCDataChannel>,
    peer_id: Arc<str>,
    max_message_size: usize,
    drained: Arc<Notify>,
}

impl std::fmt::Debug for DataChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataChannel")
            .field("peer_id", &self.peer_id)
            .field("label", &self.label())
            .field("id", &self.inner.id())
            .field("max_message_size", &self.max_message_size)
            .finish()
    }
}

impl DataChannel {
    pub(super) async fn new(
        inner: Arc<RTCDataChannel>,
        peer_id: Arc<str>,
        max_message_size: usize,
    ) -> Self {
        let drained = Arc::new(Notify::new());
        inner.set_buffered_amount_low_threshold(LOW_WATER).await;
        let wake = drained.clone();
        inner
            .on_buffered_amount_low(Box::new(move || {
                wake.notify_waiters();
                Box::pin(async {})
            }))
            .await;
        DataChannel {
            inner,
            peer_id,
            max_message_size,
            drained,
        }
    }

    /// The remote peer at the other end.
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// The channel's label (`"herald"` for the default one).
    pub fn label(&self) -> &str {
        self.inner.label()
    }

    /// True while messages can be sent.
    pub fn is_open(&self) -> bool {
        self.inner.ready_state() == RTCDataChannelState::Open
    }

    /// The largest message this side may send: the remote's `a=max-message-size` (64 KiB when
    /// it gives none), capped by what this stack can send.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// Bytes queued in the SCTP association and not yet sent.
    pub async fn buffered_amount(&self) -> usize {
        self.inner.buffered_amount().await
    }

    /// Sends one binary message. Waits while more than [`HIGH_WATER`] bytes are queued, so a
    /// fast producer cannot grow memory without bound on a slow link.
    pub async fn send(&self, data: &[u8]) -> Result<(), RtcError> {
        self.check(data.len()).await?;
        self.inner
            .send(&Bytes::copy_from_slice(data))
            .await
            .map(drop)
            .map_err(|e| RtcError::Send(e.to_string()))
    }

    /// Sends one text message (a string message on the browser side).
    pub async fn send_text(&self, text: &str) -> Result<(), RtcError> {
        self.check(text.len()).await?;
        self.inner
            .send_text(text.to_owned())
            .await
            .map(drop)
            .map_err(|e| RtcError::Send(e.to_string()))
    }

    async fn check(&self, len: usize) -> Result<(), RtcError> {
        if len > self.max_message_size {
            return Err(RtcError::TooLarge {
                size: len,
                max: self.max_message_size,
            });
        }
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        loop {
            if !self.is_open() {
                return Err(RtcError::ChannelClosed(self.label().to_owned()));
            }
            // Registered before the check, so a drain between the check and the wait wakes us.
            let drained = self.drained.notified();
            if self.inner.buffered_amount().await <= HIGH_WATER {
                return Ok(());
            }
            // The low-water callback is the wake-up; the short timeout re-checks a channel
            // that closed while we waited (close fires no drain).
            let step = tokio::time::timeout(Duration::from_millis(250), drained);
            let _ = step.await;
            if tokio::time::Instant::now() > deadline {
                return Err(RtcError::Send("the data channel did not drain".into()));
            }
        }
    }

    /// Closes the channel.
    pub async fn close(&self) {
        let _ = self.inner.close().await;
    }

    pub(super) fn raw(&self) -> &Arc<RTCDataChannel> {
        &self.inner
    }
}
