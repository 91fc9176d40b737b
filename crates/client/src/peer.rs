//! [`Peer`]: the counterpart of the official SDKs' `MeteredPeer` (spec §17). One channel per
//! instance, a roster of [`RemotePeer`] handles kept from presence, broadcast and per-peer
//! data, and reconciliation of the roster after every reconnect (spec §8.4).

mod reconcile_deadline;
mod remote;
mod roster;
mod types;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;

pub use self::remote::{RemotePeer, SignalHandler};
pub use self::types::{DataKind, PeerData, PeerError, PeerOptions, PeerState, DEFAULT_MAX_PEERS};

use self::roster::{Change, Roster};
use crate::client::{check_channel, SignallingClient};
use crate::error::Error;
use crate::events::{lock, EventStream, Subscribers};
use crate::shared::{Observed, Observer};
use crate::signal::Signal;
use crate::types::{ConnectionState, PresencePeer, SubscribeOptions};

/// Uncorrelated server errors that mean the session cannot work (MeteredPeer's list).
const FATAL_SERVER_CODES: [&str; 5] = [
    "account_suspended",
    "channel_not_authorized",
    "action_not_permitted",
    "invalid_token",
    "token_expired",
];

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
    roster: Roster<RemotePeer>,
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

impl From<Change<RemotePeer>> for Action {
    fn from(change: Change<RemotePeer>) -> Self {
        match change {
            Change::Joined(remote) => Action::Joined(remote),
            Change::Left(remote) => Action::Left(remote),
            Change::Reset(remote) => Action::Reset(remote),
        }
    }
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

    /// Empties the roster: everyone gets a final `peer_left`.
    fn clear_roster(shared: &mut PeerShared, actions: &mut Vec<Action>) {
        actions.extend(shared.roster.clear().into_iter().map(Action::from));
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
                            Self::clear_roster(&mut shared, &mut actions);
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
                        let peer = Arc::downgrade(self);
                        let mut make = |entry: &PresencePeer| {
                            RemotePeer::new(&entry.peer_id, entry.metadata.clone(), peer.clone())
                        };
                        if shared.reconcile_pending {
                            shared.reconcile_pending = false;
                            shared.reconcile_round += 1;
                            let changes =
                                shared.roster.reconcile(local, &presence.joined, &mut make);
                            actions.extend(changes.into_iter().map(Action::from));
                            if shared.phase == PeerState::Reconnecting {
                                Self::set_phase(&mut shared, PeerState::Joined, &mut actions);
                            }
                        } else {
                            let changes = shared.roster.apply_delta(
                                local,
                                &presence.joined,
                                &presence.left,
                                &mut make,
                            );
                            actions.extend(changes.into_iter().map(Action::from));
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
            reconcile_timeout: options.reconcile_timeout,
            shared: Mutex::new(PeerShared {
                phase: PeerState::Idle,
                channel: None,
                join_options: SubscribeOptions::default(),
                roster: Roster::new(options.max_peers),
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
                    PeerInner::clear_roster(&mut shared, &mut actions);
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
            PeerInner::clear_roster(&mut shared, &mut actions);
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
        lock(&self.inner.shared).roster.members().cloned().collect()
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

#[cfg(test)]
mod tests;
