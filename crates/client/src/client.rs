//! [`SignallingClient`]: the public face of one logical connection. The socket itself is owned
//! by a background task (see `connection.rs`); the state both use, and the request/ack
//! correlation, are in `shared.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::connection;
use crate::error::Error;
use crate::events::{lock, EventStream, Subscribers};
use crate::frames;
use crate::options::SignallingClientOptions;
use crate::shared::{resume_frame, Inner, Observer, Shared};
use crate::types::{
    ChannelMessage, ConnectionEvent, ConnectionState, DirectMessage, GoingAway, PresenceEvent,
    ServerError, SubscribeOptions, Welcome,
};

/// A connection to a Metered-compatible server (Herald or the hosted service) with
/// multi-channel pub/sub, direct messages and the raw presence feed.
///
/// It is the Rust counterpart of the official SDKs' `SignallingClient` and behaves like them
/// (spec §7–8): every request is correlated with its `ack` or `error` by `requestId` and times
/// out after 15 s; a dropped connection is re-established with exponential backoff and jitter,
/// except after the terminal close codes 4001, 4003, 4012 and 4020; the token provider is
/// called on every (re)connect; subscriptions are replayed with their options after each
/// reconnect; an inactivity watchdog pings an idle link and reconnects a dead one.
///
/// The handle is cheap to clone; all clones drive the same connection. When the last clone is
/// dropped the connection is closed.
///
/// ```no_run
/// # async fn run() -> Result<(), herald_client::Error> {
/// use futures_util::StreamExt;
/// use herald_client::{SignallingClient, SignallingClientOptions, SubscribeOptions};
/// use serde_json::json;
///
/// let client = SignallingClient::new(
///     SignallingClientOptions::api_key("pk_live_dev_…").with_url("ws://127.0.0.1:8080"),
/// )?;
/// let mut messages = client.messages();
/// client.connect().await?;
/// client.subscribe("lobby", SubscribeOptions::default()).await?;
/// client.publish("lobby", json!({"text": "hi"})).await?;
/// while let Some(m) = messages.next().await {
///     println!("{} says {}", m.from, m.data);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SignallingClient {
    pub(crate) inner: Arc<Inner>,
    /// Shared by the application's clones only (the background task holds `inner`, not this),
    /// so its drop means "nobody can use this client any more": the connection is closed.
    _guard: Arc<DropGuard>,
}

impl std::fmt::Debug for SignallingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignallingClient")
            .field("url", &self.inner.origin)
            .field("state", &self.state())
            .field("peer_id", &self.peer_id())
            .finish()
    }
}

/// Closes the connection when the last application handle goes away.
struct DropGuard {
    inner: Arc<Inner>,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        let stop = {
            let mut shared = lock(&self.inner.shared);
            shared.closing = true;
            shared.stop.take()
        };
        if let Some(stop) = stop {
            let _ = stop.send(true);
        }
    }
}

/// Channel names follow the server's rules (1–256 bytes, no control characters), so a bad
/// name fails here instead of costing a round trip or entering the replay set.
pub(crate) fn check_channel(channel: &str) -> Result<(), Error> {
    if herald_protocol::validate::is_valid_channel(channel) {
        Ok(())
    } else {
        Err(Error::InvalidChannel(channel.to_owned()))
    }
}

impl SignallingClient {
    /// Creates a client. Nothing is connected until [`SignallingClient::connect`]; take the
    /// event streams first so no event is missed.
    pub fn new(options: SignallingClientOptions) -> Result<Self, Error> {
        let origin = options.validate()?;
        let capacity = options.event_buffer;
        let inner = Arc::new(Inner {
            origin,
            shared: Mutex::new(Shared {
                state: ConnectionState::Idle,
                welcome: None,
                conn: None,
                pending: HashMap::new(),
                subscriptions: BTreeMap::new(),
                stop: None,
                driver: None,
                closing: false,
                disposed: false,
                generation: 0,
                next_conn_id: 0,
                token: None,
                positions: HashMap::new(),
                resuming: HashMap::new(),
            }),
            presence: Subscribers::new("presence", capacity),
            messages: Subscribers::new("messages", capacity),
            directs: Subscribers::new("directs", capacity),
            server_errors: Subscribers::new("server_errors", capacity),
            going_away: Subscribers::new("going_away", capacity),
            connection: Subscribers::new("connection_events", capacity),
            observers: Mutex::new(Vec::new()),
            options,
        });
        Ok(SignallingClient {
            _guard: Arc::new(DropGuard {
                inner: inner.clone(),
            }),
            inner,
        })
    }

    /// Connects and waits for the `welcome`.
    ///
    /// The first connect is never retried: a close before the welcome returns
    /// [`Error::ConnectRejected`] with the server's close code (4001 for a bad credential,
    /// 4002 for an expired token, …). Once welcomed, drops are handled by the automatic
    /// reconnect. Allowed from [`ConnectionState::Idle`] and [`ConnectionState::Closed`].
    pub async fn connect(&self) -> Result<(), Error> {
        connection::connect(&self.inner).await
    }

    /// Subscribes to `channel` (an exact name, or a wildcard pattern where the server allows
    /// one) and waits for the ack. The server then sends the channel's presence snapshot.
    ///
    /// The subscription is remembered and replayed with the same options after every
    /// reconnect; subscribing again replaces the options.
    pub async fn subscribe(&self, channel: &str, options: SubscribeOptions) -> Result<(), Error> {
        check_channel(channel)?;
        let (was_tracked, since) = {
            let mut shared = lock(&self.inner.shared);
            let was_tracked = shared
                .subscriptions
                .insert(channel.to_owned(), options)
                .is_some();
            (was_tracked, shared.since(channel))
        };
        let result = self
            .inner
            .request(|id| resume_frame(&self.inner, channel, id, options, since.as_ref()))
            .await;
        // A subscription that never reached the server, or that the server refused, must not
        // be replayed on every reconnect. One already live (tracked before) stays: a failed
        // re-subscribe does not cancel it. Timeouts and drops stay too: the frame may have
        // been processed.
        if let Err(Error::NotConnected(_) | Error::Server(_) | Error::Disposed) = &result {
            if !was_tracked {
                lock(&self.inner.shared).forget(channel);
            }
        }
        result
    }

    /// Unsubscribes from `channel` and waits for the ack. The channel leaves the replay set
    /// first, whatever happens to the request. Unsubscribing a channel that is not subscribed
    /// succeeds.
    pub async fn unsubscribe(&self, channel: &str) -> Result<(), Error> {
        check_channel(channel)?;
        lock(&self.inner.shared).forget(channel);
        self.inner
            .request(|id| frames::unsubscribe(channel, id))
            .await
    }

    /// Broadcasts `data` to every other subscriber of `channel` and waits for the ack. The
    /// publisher does not need to be subscribed and never receives its own message.
    pub async fn publish(&self, channel: &str, data: impl Serialize) -> Result<(), Error> {
        check_channel(channel)?;
        let data = self.inner.payload(&data)?;
        self.inner
            .request(|id| frames::publish(channel, &data, id))
            .await
    }

    /// Sends `data` to every connection of peer `to` in the same app and waits for the ack
    /// ("routed", not "read"). An offline peer gives [`Error::Server`] with `peer_not_found`.
    pub async fn send(&self, to: &str, data: impl Serialize) -> Result<(), Error> {
        if !herald_protocol::validate::is_valid_target_peer_id(to) {
            return Err(Error::InvalidPeerId(to.to_owned()));
        }
        let data = self.inner.payload(&data)?;
        self.inner.request(|id| frames::send(to, &data, id)).await
    }

    /// Closes the connection (code 1000) and stops reconnecting. Pending requests fail. The
    /// event streams stay open, and [`SignallingClient::connect`] may be called again.
    pub async fn close(&self) {
        connection::close(&self.inner).await;
    }

    /// Closes the connection and ends every event stream of this client, including those
    /// handed out later. The client cannot connect again.
    pub async fn dispose(&self) {
        connection::close(&self.inner).await;
        lock(&self.inner.shared).disposed = true;
        self.inner.presence.close();
        self.inner.messages.close();
        self.inner.directs.close();
        self.inner.server_errors.close();
        self.inner.going_away.close();
        self.inner.connection.close();
        lock(&self.inner.observers).clear();
    }

    /// Presence frames of every subscribed channel: the snapshot after each subscribe, then
    /// `joined`/`left` deltas. A raw feed; [`crate::Peer`] keeps a roster for one channel.
    pub fn presence(&self) -> EventStream<PresenceEvent> {
        self.inner.presence.subscribe()
    }

    /// Channel broadcasts delivered to this connection.
    pub fn messages(&self) -> EventStream<ChannelMessage> {
        self.inner.messages.subscribe()
    }

    /// Direct messages sent to this peer.
    pub fn directs(&self) -> EventStream<DirectMessage> {
        self.inner.directs.subscribe()
    }

    /// Server `error` frames that answer no pending request (for example a quota error).
    pub fn server_errors(&self) -> EventStream<ServerError> {
        self.inner.server_errors.subscribe()
    }

    /// `going_away` announcements: the server is about to restart. No action is needed; the
    /// client reconnects by itself.
    pub fn going_away(&self) -> EventStream<GoingAway> {
        self.inner.going_away.subscribe()
    }

    /// State changes, welcomes, disconnects and token provider trouble.
    pub fn connection_events(&self) -> EventStream<ConnectionEvent> {
        self.inner.connection.subscribe()
    }

    /// The current state.
    pub fn state(&self) -> ConnectionState {
        lock(&self.inner.shared).state
    }

    /// This connection's peer id, from the latest welcome. With a publishable key it changes
    /// on every reconnect.
    pub fn peer_id(&self) -> Option<String> {
        lock(&self.inner.shared)
            .welcome
            .as_ref()
            .map(|w| w.peer_id.clone())
    }

    /// The latest welcome: expiry, payload cap and private metadata (with `iceServers`, see
    /// [`Welcome::ice_servers`]).
    pub fn welcome(&self) -> Option<Welcome> {
        lock(&self.inner.shared).welcome.clone()
    }

    /// The channels that will be replayed after a reconnect, with their options.
    pub fn subscriptions(&self) -> Vec<(String, SubscribeOptions)> {
        lock(&self.inner.shared)
            .subscriptions
            .iter()
            .map(|(c, o)| (c.clone(), *o))
            .collect()
    }

    /// Registers an in-crate observer.
    pub(crate) fn observe(&self, observer: Arc<dyn Observer>) {
        lock(&self.inner.observers).push(observer);
    }

    /// Drops `channel` from the replay set without telling the server.
    pub(crate) fn forget_subscription(&self, channel: &str) {
        lock(&self.inner.shared).forget(channel);
    }
}
