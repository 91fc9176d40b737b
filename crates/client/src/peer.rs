//! [`Peer`]: the counterpart of the official SDKs' `MeteredPeer` (spec §17). One channel per
//! instance, a roster of [`RemotePeer`] handles kept from presence, broadcast and per-peer
//! data, and reconciliation of the roster after every reconnect (spec §8.4).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::client::{check_channel, SignallingClient};
use crate::error::Error;
use crate::events::{lock, EventStream, Subscribers};
use crate::options::SignallingClientOptions;
use crate::shared::{Observed, Observer};
use crate::signal::{Signal, TrackMeta};
use crate::types::{ConnectionState, Metadata, PresencePeer, ServerError, SubscribeOptions};

/// Remote peers tracked per channel; further joins are ignored (as MeteredPeer does).
pub const DEFAULT_MAX_PEERS: usize = 256;
/// Cached track-metadata entries per remote peer.
const MAX_TRACK_META: usize = 512;
/// Re-subscribes issued when no snapshot arrives after a reconnect, before giving up.
const MAX_RECONCILE_RESUBSCRIBES: u32 = 2;
/// Uncorrelated server errors that mean the session cannot work (MeteredPeer's list).
const FATAL_SERVER_CODES: [&str; 5] = [
    "account_suspended",
    "channel_not_authorized",
    "action_not_permitted",
    "invalid_token",
    "token_expired",
];

/// Options of a [`Peer`].
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

/// The lifecycle of a [`Peer`].
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
    /// A channel broadcast ([`Peer::send`]).
    Broadcast,
    /// Per-peer data ([`Peer::send_to`], [`RemotePeer::send`]).
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

/// Something the application should react to; see [`Peer::errors`].
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
    /// create a new [`Peer`] to recover.
    ReconcileTimeout,
}

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
    fn new(peer_id: &str, metadata: Option<Metadata>, peer: Weak<PeerInner>) -> Self {
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

    fn leave(&self) {
        self.inner.present.store(false, Ordering::Release);
    }

    fn set_metadata(&self, metadata: Option<Metadata>) {
        *lock(&self.inner.metadata) = metadata;
    }

    fn store_track(&self, meta: &TrackMeta) {
        let mut tracks = lock(&self.inner.tracks);
        if meta.metadata.is_none() {
            tracks.remove(&meta.track_id);
        } else if tracks.len() < MAX_TRACK_META || tracks.contains_key(&meta.track_id) {
            tracks.insert(meta.track_id.clone(), meta.clone());
        }
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

/// One channel's presence room, like the official `MeteredPeer`, without media.
///
/// [`Peer::join`] connects and subscribes; the roster then fills from the presence snapshot
/// and deltas, and each remote arrives on [`Peer::peer_joined`] as a [`RemotePeer`] with its
/// metadata. [`Peer::send`] broadcasts to the channel, [`RemotePeer::send`] talks to one peer.
/// After a reconnect the roster is reconciled from the fresh snapshot: survivors keep their
/// handle, missing peers get `peer_left`, newcomers `peer_joined`.
///
/// It interoperates with the official SDKs' `MeteredPeer` over the same wire shapes: per-peer
/// data is `send`/`direct`, broadcasts are `publish`/`message`, and the WebRTC signals those
/// peers exchange (`rtc-description`, `rtc-ice`, `__meteredTrackMeta`) are routed to the
/// [`SignalHandler`] instead of surfacing as data.
///
/// ```no_run
/// # async fn run() -> Result<(), herald_client::Error> {
/// use futures_util::StreamExt;
/// use herald_client::{Peer, PeerOptions, SignallingClientOptions};
/// use serde_json::json;
///
/// let peer = Peer::new(PeerOptions::new(
///     SignallingClientOptions::api_key("pk_live_dev_…").with_url("ws://127.0.0.1:8080"),
/// ))?;
/// let mut joined = peer.peer_joined();
/// peer.join("room-1").await?;
/// while let Some(remote) = joined.next().await {
///     remote.send(json!({"hello": remote.peer_id()})).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Peer {
    inner: Arc<PeerInner>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("state", &self.state())
            .field("channel", &self.channel())
            .field("peers", &lock(&self.inner.shared).roster.len())
            .finish()
    }
}

struct PeerInner {
    client: SignallingClient,
    handler: Option<Arc<dyn SignalHandler>>,
    max_peers: usize,
    reconcile_timeout: Duration,
    shared: Mutex<PeerShared>,
    joined: Subscribers<RemotePeer>,
    left: Subscribers<RemotePeer>,
    data: Subscribers<PeerData>,
    states: Subscribers<PeerState>,
    errors: Subscribers<PeerError>,
}

struct PeerShared {
    phase: PeerState,
    /// Set from the start of `join()`, so a snapshot that arrives before the subscribe ack
    /// resolves is kept (the JS SDK records it only after the ack and can lose it, spec §20.1).
    channel: Option<String>,
    join_options: SubscribeOptions,
    roster: BTreeMap<String, RemotePeer>,
    /// The next presence of the channel is the post-reconnect snapshot to reconcile against.
    reconcile_pending: bool,
    /// Bumped whenever a reconcile deadline must be cancelled.
    reconcile_round: u64,
    reconcile_resubscribes: u32,
}

/// Work decided under the lock and done after it: application callbacks and stream sends
/// never run while `shared` is held.
enum Action {
    Joined(RemotePeer),
    Left(RemotePeer),
    Reset(RemotePeer),
    State(PeerState),
    Error(PeerError),
    Data(PeerData),
    Signal(RemotePeer, Signal),
    ArmDeadline(u64),
    EndStreams,
}

/// The [`Observer`] the client calls; weak so the client does not keep its peer alive.
struct PeerObserver {
    peer: Weak<PeerInner>,
}

impl Observer for PeerObserver {
    fn observe(&self, event: Observed<'_>) {
        if let Some(peer) = self.peer.upgrade() {
            peer.on_event(event);
        }
    }
}

impl PeerInner {
    fn set_phase(shared: &mut PeerShared, to: PeerState, actions: &mut Vec<Action>) {
        if shared.phase != to {
            shared.phase = to;
            actions.push(Action::State(to));
        }
    }

    fn add(
        self: &Arc<Self>,
        shared: &mut PeerShared,
        local: Option<&str>,
        entry: &PresencePeer,
        actions: &mut Vec<Action>,
    ) {
        if Some(entry.peer_id.as_str()) == local || shared.roster.contains_key(&entry.peer_id) {
            return;
        }
        if shared.roster.len() >= self.max_peers {
            tracing::warn!(peer_id = %entry.peer_id, cap = self.max_peers, "roster full; ignoring a join");
            return;
        }
        let remote = RemotePeer::new(&entry.peer_id, entry.metadata.clone(), Arc::downgrade(self));
        shared.roster.insert(entry.peer_id.clone(), remote.clone());
        actions.push(Action::Joined(remote));
    }

    fn remove(shared: &mut PeerShared, peer_id: &str, actions: &mut Vec<Action>) {
        if let Some(remote) = shared.roster.remove(peer_id) {
            remote.leave();
            actions.push(Action::Left(remote));
        }
    }

    fn remove_all(shared: &mut PeerShared, actions: &mut Vec<Action>) {
        let ids: Vec<String> = shared.roster.keys().cloned().collect();
        for id in ids {
            Self::remove(shared, &id, actions);
        }
    }

    /// Diffs the post-reconnect snapshot against the roster (spec §8.4): departures first,
    /// then survivors (same handle, fresh metadata, connection reset) and newcomers.
    fn reconcile(
        self: &Arc<Self>,
        shared: &mut PeerShared,
        local: Option<&str>,
        snapshot: &[PresencePeer],
        actions: &mut Vec<Action>,
    ) {
        let present: HashSet<&str> = snapshot
            .iter()
            .map(|p| p.peer_id.as_str())
            .filter(|id| Some(*id) != local)
            .collect();
        let departed: Vec<String> = shared
            .roster
            .keys()
            .filter(|id| !present.contains(id.as_str()))
            .cloned()
            .collect();
        for id in departed {
            Self::remove(shared, &id, actions);
        }
        let mut seen = HashSet::new();
        for entry in snapshot {
            if Some(entry.peer_id.as_str()) == local || !seen.insert(entry.peer_id.as_str()) {
                continue;
            }
            match shared.roster.get(&entry.peer_id) {
                Some(survivor) => {
                    survivor.set_metadata(entry.metadata.clone());
                    actions.push(Action::Reset(survivor.clone()));
                }
                None => self.add(shared, local, entry, actions),
            }
        }
    }

    fn on_event(self: &Arc<Self>, event: Observed<'_>) {
        // Read before taking our own lock: the client's lock is never taken inside it.
        let local = self.client.peer_id();
        let local = local.as_deref();
        let mut actions = Vec::new();
        {
            let mut shared = lock(&self.shared);
            let active = matches!(
                shared.phase,
                PeerState::Joining | PeerState::Joined | PeerState::Reconnecting
            );
            match event {
                Observed::Connected { is_reconnect, .. } => {
                    if is_reconnect && shared.phase == PeerState::Reconnecting {
                        if shared.roster.is_empty() {
                            // Nothing to reconcile: the snapshot will simply add everyone.
                            shared.reconcile_pending = false;
                            Self::set_phase(&mut shared, PeerState::Joined, &mut actions);
                        } else {
                            shared.reconcile_pending = true;
                            shared.reconcile_round += 1;
                            shared.reconcile_resubscribes = 0;
                            actions.push(Action::ArmDeadline(shared.reconcile_round));
                        }
                    }
                }
                Observed::Disconnected {
                    code,
                    reason,
                    will_reconnect,
                } => {
                    if matches!(shared.phase, PeerState::Joined | PeerState::Reconnecting) {
                        shared.reconcile_round += 1;
                        if will_reconnect {
                            shared.reconcile_pending = true;
                            Self::set_phase(&mut shared, PeerState::Reconnecting, &mut actions);
                        } else {
                            shared.reconcile_pending = false;
                            Self::remove_all(&mut shared, &mut actions);
                            actions.push(Action::Error(PeerError::Closed {
                                code,
                                reason: reason.to_owned(),
                            }));
                            shared.channel = None;
                            Self::set_phase(&mut shared, PeerState::Closed, &mut actions);
                            actions.push(Action::EndStreams);
                        }
                    }
                }
                Observed::Presence(presence) => {
                    if active && shared.channel.as_deref() == Some(presence.channel.as_str()) {
                        if shared.reconcile_pending {
                            shared.reconcile_pending = false;
                            shared.reconcile_round += 1;
                            self.reconcile(&mut shared, local, &presence.joined, &mut actions);
                            if shared.phase == PeerState::Reconnecting {
                                Self::set_phase(&mut shared, PeerState::Joined, &mut actions);
                            }
                        } else {
                            for entry in &presence.joined {
                                self.add(&mut shared, local, entry, &mut actions);
                            }
                            for entry in &presence.left {
                                Self::remove(&mut shared, &entry.peer_id, &mut actions);
                            }
                        }
                    }
                }
                Observed::Message(message) => {
                    if active
                        && shared.channel.as_deref() == Some(message.channel.as_str())
                        && Some(message.from.as_str()) != local
                    {
                        actions.push(Action::Data(PeerData {
                            from: message.from.clone(),
                            from_metadata: message.from_metadata.clone(),
                            data: message.data.clone(),
                            kind: DataKind::Broadcast,
                            remote: shared.roster.get(&message.from).cloned(),
                        }));
                    }
                }
                Observed::Direct(direct) => {
                    // Only members of the roster may talk to us, signals included (spec §8.7).
                    match shared.roster.get(&direct.from) {
                        None => {
                            tracing::debug!(from = %direct.from, "dropping direct data from a peer outside the roster")
                        }
                        Some(remote) => match Signal::from_data(&direct.data) {
                            Some(signal) => {
                                if let Signal::TrackMeta(meta) = &signal {
                                    remote.store_track(meta);
                                }
                                if self.handler.is_some() {
                                    actions.push(Action::Signal(remote.clone(), signal));
                                }
                            }
                            None => actions.push(Action::Data(PeerData {
                                from: direct.from.clone(),
                                from_metadata: direct.from_metadata.clone(),
                                data: direct.data.clone(),
                                kind: DataKind::Direct,
                                remote: Some(remote.clone()),
                            })),
                        },
                    }
                }
                Observed::ServerError(error) => {
                    if FATAL_SERVER_CODES.contains(&error.code.as_str()) {
                        actions.push(Action::Error(PeerError::Server(error.clone())));
                    }
                }
                Observed::TokenProviderFailing {
                    consecutive_failures,
                    error,
                } => actions.push(Action::Error(PeerError::TokenProvider {
                    consecutive_failures,
                    error: error.to_owned(),
                })),
            }
        }
        self.run(actions);
    }

    fn run(self: &Arc<Self>, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Joined(remote) => {
                    if let Some(h) = &self.handler {
                        h.peer_joined(&remote);
                    }
                    self.joined.emit(remote);
                }
                Action::Left(remote) => {
                    if let Some(h) = &self.handler {
                        h.peer_left(&remote);
                    }
                    self.left.emit(remote);
                }
                Action::Reset(remote) => {
                    if let Some(h) = &self.handler {
                        h.connection_reset(&remote);
                    }
                }
                Action::State(state) => self.states.emit(state),
                Action::Error(error) => self.errors.emit(error),
                Action::Data(data) => self.data.emit(data),
                Action::Signal(remote, signal) => {
                    if let Some(h) = &self.handler {
                        h.signal(&remote, signal);
                    }
                }
                Action::ArmDeadline(round) => self.arm_reconcile_deadline(round),
                Action::EndStreams => {
                    self.joined.close();
                    self.left.close();
                    self.data.close();
                    self.states.close();
                    self.errors.close();
                }
            }
        }
    }

    /// If the snapshot has not arrived `reconcile_timeout` after a reconnect, subscribe again
    /// on the same connection (twice), then report [`PeerError::ReconcileTimeout`].
    fn arm_reconcile_deadline(self: &Arc<Self>, round: u64) {
        let peer = Arc::downgrade(self);
        let wait = self.reconcile_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let Some(peer) = peer.upgrade() else {
                return;
            };
            let connected = peer.client.state() == ConnectionState::Connected;
            let retry = {
                let mut shared = lock(&peer.shared);
                if shared.reconcile_round != round
                    || !shared.reconcile_pending
                    || shared.phase != PeerState::Reconnecting
                    || !connected
                {
                    return;
                }
                let Some(channel) = shared.channel.clone() else {
                    return;
                };
                if shared.reconcile_resubscribes < MAX_RECONCILE_RESUBSCRIBES {
                    shared.reconcile_resubscribes += 1;
                    Some((channel, shared.join_options))
                } else {
                    None
                }
            };
            match retry {
                Some((channel, options)) => {
                    tracing::warn!(%channel, "no roster snapshot after reconnect; subscribing again");
                    peer.arm_reconcile_deadline(round);
                    let _ = peer.client.subscribe(&channel, options).await;
                }
                None => peer.errors.emit(PeerError::ReconcileTimeout),
            }
        });
    }
}

impl Peer {
    /// Creates a peer and its client. Nothing connects until [`Peer::join`].
    pub fn new(options: PeerOptions) -> Result<Self, Error> {
        if !options.client.auto_resubscribe {
            return Err(Error::InvalidOptions(
                "Peer needs auto_resubscribe: the reconcile relies on the replayed subscribe"
                    .into(),
            ));
        }
        let capacity = options.client.event_buffer;
        let client = SignallingClient::new(options.client)?;
        let inner = Arc::new(PeerInner {
            client,
            handler: options.signal_handler,
            max_peers: options.max_peers,
            reconcile_timeout: options.reconcile_timeout,
            shared: Mutex::new(PeerShared {
                phase: PeerState::Idle,
                channel: None,
                join_options: SubscribeOptions::default(),
                roster: BTreeMap::new(),
                reconcile_pending: false,
                reconcile_round: 0,
                reconcile_resubscribes: 0,
            }),
            joined: Subscribers::new("peer_joined", capacity),
            left: Subscribers::new("peer_left", capacity),
            data: Subscribers::new("peer_data", capacity),
            states: Subscribers::new("peer_states", capacity),
            errors: Subscribers::new("peer_errors", capacity),
        });
        inner.client.observe(Arc::new(PeerObserver {
            peer: Arc::downgrade(&inner),
        }));
        Ok(Peer { inner })
    }

    /// Joins `channel` without sender metadata on broadcasts; see [`Peer::join_with`].
    pub async fn join(&self, channel: &str) -> Result<(), Error> {
        self.join_with(channel, SubscribeOptions::default()).await
    }

    /// Connects (if needed) and subscribes to `channel`; returns once the subscribe is acked.
    /// Remote peers then arrive on [`Peer::peer_joined`]. Allowed once, from
    /// [`PeerState::Idle`]; a failed join returns to `Idle` and may be retried.
    pub async fn join_with(&self, channel: &str, options: SubscribeOptions) -> Result<(), Error> {
        check_channel(channel)?;
        if herald_protocol::validate::is_reserved_channel(channel) {
            return Err(Error::ReservedChannel(channel.to_owned()));
        }
        let mut actions = Vec::new();
        {
            let mut shared = lock(&self.inner.shared);
            if shared.phase != PeerState::Idle {
                return Err(Error::InvalidState {
                    operation: "join",
                    state: format!("{:?}", shared.phase),
                });
            }
            shared.channel = Some(channel.to_owned());
            shared.join_options = options;
            shared.reconcile_pending = false;
            PeerInner::set_phase(&mut shared, PeerState::Joining, &mut actions);
        }
        self.inner.run(actions);

        let client = &self.inner.client;
        let result = async {
            if matches!(
                client.state(),
                ConnectionState::Idle | ConnectionState::Closed
            ) {
                client.connect().await?;
            }
            client.subscribe(channel, options).await
        }
        .await;

        let mut actions = Vec::new();
        match &result {
            Ok(()) => {
                let mut shared = lock(&self.inner.shared);
                if shared.phase == PeerState::Joining {
                    PeerInner::set_phase(&mut shared, PeerState::Joined, &mut actions);
                }
            }
            Err(_) => {
                // No half-joined session: forget the subscription so nothing replays it, and
                // close the connection so nothing keeps reconnecting for it.
                client.forget_subscription(channel);
                client.close().await;
                let mut shared = lock(&self.inner.shared);
                if shared.phase == PeerState::Joining {
                    PeerInner::remove_all(&mut shared, &mut actions);
                    shared.channel = None;
                    PeerInner::set_phase(&mut shared, PeerState::Idle, &mut actions);
                }
            }
        }
        self.inner.run(actions);
        result
    }

    /// Leaves the channel for good: every remote gets a final `peer_left`, the connection is
    /// closed (the others see this peer leave), and every stream of this peer and its client
    /// ends. The peer cannot join again; create a new one.
    pub async fn leave(&self) {
        let mut actions = Vec::new();
        {
            let mut shared = lock(&self.inner.shared);
            if matches!(shared.phase, PeerState::Leaving | PeerState::Closed) {
                return;
            }
            shared.reconcile_pending = false;
            shared.reconcile_round += 1;
            PeerInner::set_phase(&mut shared, PeerState::Leaving, &mut actions);
            PeerInner::remove_all(&mut shared, &mut actions);
        }
        self.inner.run(actions);
        self.inner.client.dispose().await;
        let mut actions = Vec::new();
        {
            let mut shared = lock(&self.inner.shared);
            shared.channel = None;
            PeerInner::set_phase(&mut shared, PeerState::Closed, &mut actions);
            actions.push(Action::EndStreams);
        }
        self.inner.run(actions);
    }

    /// Broadcasts `data` to the channel. Other peers receive it as [`DataKind::Broadcast`];
    /// this peer does not receive its own broadcast.
    pub async fn send(&self, data: impl Serialize) -> Result<(), Error> {
        let channel = {
            let shared = lock(&self.inner.shared);
            match (&shared.phase, &shared.channel) {
                (PeerState::Joined, Some(channel)) => channel.clone(),
                _ => return Err(Error::NotJoined),
            }
        };
        self.inner.client.publish(&channel, data).await
    }

    /// Sends `data` to one peer (usually via [`RemotePeer::send`]). It arrives as
    /// [`DataKind::Direct`].
    pub async fn send_to(&self, peer_id: &str, data: impl Serialize) -> Result<(), Error> {
        if lock(&self.inner.shared).phase != PeerState::Joined {
            return Err(Error::NotJoined);
        }
        if self.inner.client.peer_id().as_deref() == Some(peer_id) {
            return Err(Error::SelfSend);
        }
        let data = serde_json::to_value(data).map_err(|e| Error::Serialize(e.to_string()))?;
        if Signal::from_data(&data).is_some() || data.get(crate::signal::TRACK_META_KEY).is_some() {
            // Sent anyway, as MeteredPeer does, but the receiving SDK will take it for a
            // WebRTC signal and never show it as data.
            tracing::warn!(%peer_id, "per-peer data has the shape of a WebRTC signal; the receiver will not see it as data");
        }
        self.inner.client.send(peer_id, data).await
    }

    /// Remote peers as they join, with their metadata.
    pub fn peer_joined(&self) -> EventStream<RemotePeer> {
        self.inner.joined.subscribe()
    }

    /// Remote peers as they leave (unsubscribe, disconnect, or missing after a reconcile).
    pub fn peer_left(&self) -> EventStream<RemotePeer> {
        self.inner.left.subscribe()
    }

    /// Application data from other peers: broadcasts and per-peer data.
    pub fn data(&self) -> EventStream<PeerData> {
        self.inner.data.subscribe()
    }

    /// Lifecycle changes.
    pub fn states(&self) -> EventStream<PeerState> {
        self.inner.states.subscribe()
    }

    /// Conditions the application must handle; see [`PeerError`].
    pub fn errors(&self) -> EventStream<PeerError> {
        self.inner.errors.subscribe()
    }

    /// The current roster.
    pub fn remote_peers(&self) -> Vec<RemotePeer> {
        lock(&self.inner.shared).roster.values().cloned().collect()
    }

    /// The remote with this id, if it is in the roster.
    pub fn remote_peer(&self, peer_id: &str) -> Option<RemotePeer> {
        lock(&self.inner.shared).roster.get(peer_id).cloned()
    }

    /// The lifecycle state.
    pub fn state(&self) -> PeerState {
        lock(&self.inner.shared).phase
    }

    /// The joined channel.
    pub fn channel(&self) -> Option<String> {
        lock(&self.inner.shared).channel.clone()
    }

    /// This peer's id, from the latest welcome.
    pub fn peer_id(&self) -> Option<String> {
        self.inner.client.peer_id()
    }

    /// The underlying client: connection events, the welcome, other channels.
    pub fn client(&self) -> &SignallingClient {
        &self.inner.client
    }
}
