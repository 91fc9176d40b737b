//! [`RemotePeer`], the handle of one other peer in the channel, and [`SignalHandler`], the
//! hook through which a WebRTC layer follows the roster and its signals.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use serde::Serialize;

use super::roster::Member;
use super::{Peer, PeerInner};
use crate::error::Error;
use crate::events::lock;
use crate::signal::{Signal, TrackMeta};
use crate::types::Metadata;

/// Cached track-metadata entries per remote peer.
const MAX_TRACK_META: usize = 512;

/// Another peer in the joined channel.
///
/// A handle: clones refer to the same remote. It keeps its identity across reconnects as long
/// as the remote is still in the channel, so state attached to it (a UI row, a WebRTC
/// connection) survives a signalling blip. Equality is identity.
#[derive(Clone)]
pub struct RemotePeer {
    inner: Arc<RemoteInner>,
}

struct RemoteInner {
    peer_id: String,
    /// Refreshed from the snapshot when the remote survives a reconcile (its token, and so its
    /// metadata, may have rotated during the drop).
    metadata: Mutex<Option<Metadata>>,
    /// False once the remote left the roster; the handle then refuses to send.
    present: AtomicBool,
    /// Weak: a handle kept by the application must not keep the peer (and its connection)
    /// alive.
    peer: Weak<PeerInner>,
    tracks: Mutex<BTreeMap<String, TrackMeta>>,
}

impl std::fmt::Debug for RemotePeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemotePeer")
            .field("peer_id", &self.inner.peer_id)
            .field("metadata", &self.metadata())
            .field("present", &self.is_present())
            .finish()
    }
}

impl PartialEq for RemotePeer {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for RemotePeer {}

impl RemotePeer {
    pub(super) fn new(peer_id: &str, metadata: Option<Metadata>, peer: Weak<PeerInner>) -> Self {
        RemotePeer {
            inner: Arc::new(RemoteInner {
                peer_id: peer_id.to_owned(),
                metadata: Mutex::new(metadata),
                present: AtomicBool::new(true),
                peer,
                tracks: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// The remote's peer id.
    pub fn peer_id(&self) -> &str {
        &self.inner.peer_id
    }

    /// The remote's public `peerMetadata` (name, avatar, …), if it has any.
    pub fn metadata(&self) -> Option<Metadata> {
        lock(&self.inner.metadata).clone()
    }

    /// True while the remote is in the roster.
    pub fn is_present(&self) -> bool {
        self.inner.present.load(Ordering::Acquire)
    }

    /// The perfect-negotiation role against this remote: polite when the local peer id sorts
    /// first (spec §17.2). `None` before the first welcome.
    pub fn polite(&self) -> Option<bool> {
        let peer = self.inner.peer.upgrade()?;
        let local = peer.client.peer_id()?;
        Some(local.as_str() < self.peer_id())
    }

    /// Track metadata the remote announced for `track_id` (or its stream id).
    pub fn track_metadata(&self, track_id: &str) -> Option<TrackMeta> {
        let tracks = lock(&self.inner.tracks);
        tracks.get(track_id).cloned().or_else(|| {
            tracks
                .values()
                .find(|t| t.stream_id.as_deref() == Some(track_id))
                .cloned()
        })
    }

    /// Sends `data` to this remote only (a `send` frame; it arrives as direct data).
    pub async fn send(&self, data: impl Serialize) -> Result<(), Error> {
        let peer = self.live_peer()?;
        Peer { inner: peer }.send_to(self.peer_id(), data).await
    }

    /// Sends a WebRTC signal to this remote, in the exact wire shape the official SDKs expect.
    pub async fn send_signal(&self, signal: &Signal) -> Result<(), Error> {
        let peer = self.live_peer()?;
        peer.client.send(self.peer_id(), signal.to_data()).await
    }

    fn live_peer(&self) -> Result<Arc<PeerInner>, Error> {
        if !self.is_present() {
            return Err(Error::PeerGone(self.inner.peer_id.clone()));
        }
        self.inner.peer.upgrade().ok_or(Error::Closed)
    }

    /// Caches announced track metadata, bounded per remote.
    pub(super) fn store_track(&self, meta: &TrackMeta) {
        let mut tracks = lock(&self.inner.tracks);
        if meta.metadata.is_none() {
            tracks.remove(&meta.track_id);
        } else if tracks.len() < MAX_TRACK_META || tracks.contains_key(&meta.track_id) {
            tracks.insert(meta.track_id.clone(), meta.clone());
        }
    }
}

impl Member for RemotePeer {
    fn refresh(&self, metadata: Option<Metadata>) {
        *lock(&self.inner.metadata) = metadata;
    }

    fn depart(&self) {
        self.inner.present.store(false, Ordering::Release);
    }
}

/// The hook a WebRTC layer implements to ride on [`Peer`]'s roster and signalling (the payloads
/// are in `signal.rs`).
///
/// Every method is called from the connection task, in wire order, and must not block: hand
/// work to your own task. The default methods do nothing, so a handler implements only what it
/// needs.
pub trait SignalHandler: Send + Sync + 'static {
    /// A remote peer entered the roster (before `peer_joined` is delivered): create its
    /// peer connection here. Politeness is [`RemotePeer::polite`].
    fn peer_joined(&self, remote: &RemotePeer) {
        let _ = remote;
    }

    /// A remote peer left the roster: close its peer connection.
    fn peer_left(&self, remote: &RemotePeer) {
        let _ = remote;
    }

    /// The signalling connection was re-established and `remote` survived the reconcile.
    /// The official SDKs build a fresh peer connection and offer again (spec §17.4).
    fn connection_reset(&self, remote: &RemotePeer) {
        let _ = remote;
    }

    /// A signal arrived from `remote` (only from peers in the roster, as the SDKs require).
    /// Track metadata is also cached on the [`RemotePeer`] before this call.
    fn signal(&self, remote: &RemotePeer, signal: Signal) {
        let _ = (remote, signal);
    }
}
