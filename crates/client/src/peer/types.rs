//! The public vocabulary of a [`Peer`](super::Peer)(super::Peer): its options, its lifecycle, the data it
//! delivers and the errors it reports.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::remote::{RemotePeer, SignalHandler};
use crate::options::SignallingClientOptions;
use crate::types::{Metadata, ServerError};

/// Remote peers tracked per channel; further joins are ignored (as MeteredPeer does).
pub const DEFAULT_MAX_PEERS: usize = 256;

/// Options of a [`Peer`](super::Peer).
#[derive(Clone)]
pub struct PeerOptions {
    /// The underlying client's options. `auto_resubscribe` must stay on: the reconcile needs
    /// the replayed subscribe's snapshot.
    pub client: SignallingClientOptions,
    /// The WebRTC hook; without one, signals are recognised and dropped.
    pub signal_handler: Option<Arc<dyn SignalHandler>>,
    /// Most remote peers tracked. Default [`DEFAULT_MAX_PEERS`].
    pub max_peers: usize,
    /// How long to wait for the roster snapshot after a reconnect before subscribing again
    /// (twice), then reporting [`PeerError::ReconcileTimeout`]. Default 10 s.
    pub reconcile_timeout: Duration,
}

impl PeerOptions {
    /// Peer options around client options, with the defaults.
    pub fn new(client: SignallingClientOptions) -> Self {
        PeerOptions {
            client,
            signal_handler: None,
            max_peers: DEFAULT_MAX_PEERS,
            reconcile_timeout: Duration::from_secs(10),
        }
    }

    /// The same options with a WebRTC signal handler.
    pub fn with_signal_handler(mut self, handler: Arc<dyn SignalHandler>) -> Self {
        self.signal_handler = Some(handler);
        self
    }
}

impl std::fmt::Debug for PeerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerOptions")
            .field("client", &self.client)
            .field("signal_handler", &self.signal_handler.is_some())
            .field("max_peers", &self.max_peers)
            .field("reconcile_timeout", &self.reconcile_timeout)
            .finish()
    }
}

/// The lifecycle of a [`Peer`](super::Peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerState {
    /// Not joined (yet, or again after a failed join).
    Idle,
    /// `join()` in progress.
    Joining,
    /// In the channel.
    Joined,
    /// The connection dropped; the roster is kept and will be reconciled.
    Reconnecting,
    /// `leave()` in progress.
    Leaving,
    /// Left for good (by `leave()` or a terminal disconnect). Every stream has ended.
    Closed,
}

/// How a [`PeerData`] travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataKind {
    /// A channel broadcast ([`Peer::send`](super::Peer::send)).
    Broadcast,
    /// Per-peer data ([`Peer::send_to`](super::Peer::send_to), [`RemotePeer::send`]).
    Direct,
}

/// Application data from another peer. WebRTC signals never arrive here.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerData {
    /// The sender's peer id, stamped by the server.
    pub from: String,
    /// The sender's `peerMetadata` (for broadcasts only when joined with
    /// `include_sender_metadata`).
    pub from_metadata: Option<Metadata>,
    /// The payload.
    pub data: Value,
    /// Broadcast or direct.
    pub kind: DataKind,
    /// The sender's handle, when it is in the roster (always, for direct data).
    pub remote: Option<RemotePeer>,
}

/// Something the application should react to; see [`Peer::errors`](super::Peer::errors).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PeerError {
    /// The connection ended for good (a terminal close code such as 4020, or the reconnect
    /// budget ran out) and the peer is now [`PeerState::Closed`].
    Closed {
        /// The last close code.
        code: u16,
        /// The last close reason.
        reason: String,
    },
    /// An uncorrelated server error that makes the session unusable (account suspended,
    /// channel not authorized, action not permitted).
    Server(ServerError),
    /// The token provider keeps failing; the client keeps retrying.
    TokenProvider {
        /// Consecutive failures.
        consecutive_failures: u32,
        /// The last failure.
        error: String,
    },
    /// No roster snapshot arrived after a reconnect, even after subscribing again. Leave and
    /// create a new [`Peer`](super::Peer) to recover.
    ReconcileTimeout,
}
