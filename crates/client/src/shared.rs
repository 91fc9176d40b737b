//! The state a [`crate::SignallingClient`]'s handles, its connection task (`connection.rs`) and
//! its request futures share, and the request/ack correlation over it. Its own module so the
//! public face (`client.rs`) and the socket owner (`connection.rs`) both build on it without
//! depending on each other.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::events::{lock, Subscribers};
use crate::frames;
use crate::options::SignallingClientOptions;
use crate::types::{
    ChannelMessage, ConnectionEvent, ConnectionState, DirectMessage, GoingAway, PresenceEvent,
    ServerError, SubscribeOptions, Welcome,
};

/// State shared between the handles, the connection task and request futures.
pub(crate) struct Inner {
    pub(crate) options: SignallingClientOptions,
    /// The validated origin (`scheme://authority`); `/v1?…` is appended per connection.
    pub(crate) origin: String,
    pub(crate) shared: Mutex<Shared>,
    pub(crate) presence: Subscribers<PresenceEvent>,
    pub(crate) messages: Subscribers<ChannelMessage>,
    pub(crate) directs: Subscribers<DirectMessage>,
    pub(crate) server_errors: Subscribers<ServerError>,
    pub(crate) going_away: Subscribers<GoingAway>,
    pub(crate) connection: Subscribers<ConnectionEvent>,
    /// In-crate listeners ([`crate::Peer`]) that must see every event, in order, without the
    /// loss a full application queue allows. Called from the connection task, outside `shared`.
    pub(crate) observers: Mutex<Vec<Arc<dyn Observer>>>,
}

/// The mutable part of [`Inner`]. Guarded by a std mutex that is never held across `.await`.
pub(crate) struct Shared {
    pub(crate) state: ConnectionState,
    /// The welcome of the current (or last) connection.
    pub(crate) welcome: Option<Welcome>,
    /// The welcomed connection requests go to; `None` between connections.
    pub(crate) conn: Option<LiveConn>,
    /// Requests waiting for their `ack`/`error`, by `requestId`. Drained with
    /// [`Error::Disconnected`] when the connection ends.
    pub(crate) pending: HashMap<String, oneshot::Sender<Result<(), Error>>>,
    /// Every channel subscribed and not unsubscribed, with its options: the replay set.
    /// Tracked from the moment `subscribe` is called, not from its ack, because a subscribe in
    /// flight when the socket drops may have reached the server (spec §8.2).
    pub(crate) subscriptions: BTreeMap<String, SubscribeOptions>,
    /// Stops the current connection task (and any connect in progress).
    pub(crate) stop: Option<watch::Sender<bool>>,
    /// The current connection task, awaited by `close()`.
    pub(crate) driver: Option<JoinHandle<()>>,
    /// Set by `close()`/drop: no reconnect may follow.
    pub(crate) closing: bool,
    pub(crate) disposed: bool,
    /// Bumped by each `connect()`, so a superseded connect attempt cannot touch the state of a
    /// newer one.
    pub(crate) generation: u64,
    pub(crate) next_conn_id: u64,
    /// Per exact subscription, the history position (epoch, offset) of the last message
    /// received: sent as `since` when the channel is subscribed again (a reconnect), and the
    /// floor below which a message is a duplicate (a resume replays from the server's
    /// position, which may be older). Offsets are consecutive within an epoch, so one
    /// position per channel de-duplicates by message id.
    pub(crate) positions: HashMap<String, (String, u64)>,
    /// Subscribes in flight that carry `since`, by requestId: their ack says `recovered`.
    pub(crate) resuming: HashMap<String, String>,
    /// The JWT of the last connect, which [`crate::SignallingClient::history`] reuses rather
    /// than asking the provider again.
    pub(crate) token: Option<String>,
}

/// The current connection, as request senders see it.
pub(crate) struct LiveConn {
    pub(crate) id: u64,
    /// The connection task's outbound queue (bounded: a slow socket slows requests down).
    pub(crate) tx: mpsc::Sender<String>,
}

/// An event as in-crate observers see it.
#[derive(Clone, Copy)]
pub(crate) enum Observed<'a> {
    Connected {
        is_reconnect: bool,
    },
    Disconnected {
        code: u16,
        reason: &'a str,
        will_reconnect: bool,
    },
    Presence(&'a PresenceEvent),
    Message(&'a ChannelMessage),
    Direct(&'a DirectMessage),
    ServerError(&'a ServerError),
    TokenProviderFailing {
        consecutive_failures: u32,
        error: &'a str,
    },
}

/// An in-crate listener; see [`Inner::observers`].
pub(crate) trait Observer: Send + Sync {
    fn observe(&self, event: Observed<'_>);
}

/// Removes a pending request when its future is dropped early (timeout or cancellation).
struct PendingGuard<'a> {
    inner: &'a Inner,
    request_id: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.inner.shared).pending.remove(&self.request_id);
    }
}

impl Shared {
    /// Drops `channel` from the replay set and forgets its position.
    pub(crate) fn forget(&mut self, channel: &str) {
        self.subscriptions.remove(channel);
        self.positions.remove(channel);
    }

    /// Where a subscribe of `channel` should resume from, if anything was received on it.
    pub(crate) fn since(&self, channel: &str) -> Option<(String, u64)> {
        self.positions.get(channel).cloned()
    }

    /// Records a received channel message's position. False when it is a duplicate (at or
    /// below the position already held in the same epoch), which must not reach the app.
    pub(crate) fn take_position(&mut self, message: &ChannelMessage) -> bool {
        let (Some(epoch), Some(offset)) = (&message.epoch, message.offset) else {
            return true;
        };
        if !self.subscriptions.contains_key(&message.channel) {
            // Only a pattern matched it: positions are kept for exact subscriptions only.
            return true;
        }
        match self.positions.get_mut(&message.channel) {
            Some((held, last)) if held == epoch => {
                if offset <= *last {
                    return false;
                }
                *last = offset;
            }
            _ => {
                self.positions
                    .insert(message.channel.clone(), (epoch.clone(), offset));
            }
        }
        true
    }
}

/// A subscribe frame, with `since` when a position is known; such a request is remembered so
/// its ack's `recovered` can be reported ([`ConnectionEvent::Resumed`]).
pub(crate) fn resume_frame(
    inner: &Inner,
    channel: &str,
    request_id: &str,
    options: SubscribeOptions,
    since: Option<&(String, u64)>,
) -> String {
    if since.is_some() {
        lock(&inner.shared)
            .resuming
            .insert(request_id.to_owned(), channel.to_owned());
    }
    let since = since.map(|(epoch, offset)| (epoch.as_str(), *offset));
    frames::subscribe(channel, request_id, options.include_sender_metadata, since)
}

impl Inner {
    /// Sets the state and returns the change to announce (after the lock is released).
    pub(crate) fn set_state(shared: &mut Shared, to: ConnectionState) -> Option<ConnectionEvent> {
        let from = shared.state;
        (from != to).then(|| {
            shared.state = to;
            ConnectionEvent::StateChanged { from, to }
        })
    }

    pub(crate) fn announce(&self, event: Option<ConnectionEvent>) {
        if let Some(event) = event {
            self.connection.emit(event);
        }
    }

    /// Calls every observer. The list is copied first so an observer may take other locks.
    pub(crate) fn notify(&self, event: Observed<'_>) {
        let observers = lock(&self.observers).clone();
        for observer in observers {
            observer.observe(event);
        }
    }

    /// Completes the pending request `request_id`, if it is still waiting.
    pub(crate) fn settle(&self, request_id: &str, result: Result<(), Error>) -> bool {
        let waiter = lock(&self.shared).pending.remove(request_id);
        match waiter {
            Some(tx) => {
                let _ = tx.send(result);
                true
            }
            None => false,
        }
    }

    /// Sends the frame `build(requestId)` on the current connection and waits for its answer.
    pub(crate) async fn request(&self, build: impl FnOnce(&str) -> String) -> Result<(), Error> {
        let (request_id, tx, rx) = {
            let mut shared = lock(&self.shared);
            if shared.disposed {
                return Err(Error::Disposed);
            }
            let tx = match (&shared.state, &shared.conn) {
                (ConnectionState::Connected, Some(conn)) => conn.tx.clone(),
                (state, _) => return Err(Error::NotConnected(*state)),
            };
            let request_id = frames::request_id();
            let (done, rx) = oneshot::channel();
            shared.pending.insert(request_id.clone(), done);
            (request_id, tx, rx)
        };
        let frame = build(&request_id);
        let _guard = PendingGuard {
            inner: self,
            request_id,
        };
        let timeout = self.options.request_timeout;
        let exchange = async move {
            if tx.send(frame).await.is_err() {
                return Err(Error::Disconnected {
                    code: 1006,
                    reason: "the connection ended".into(),
                });
            }
            rx.await.unwrap_or(Err(Error::Disconnected {
                code: 1006,
                reason: "the connection ended".into(),
            }))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(Error::Timeout(timeout)))
    }

    /// The payload cap of the current connection (65536 before the first welcome).
    fn max_message_size(&self) -> usize {
        lock(&self.shared)
            .welcome
            .as_ref()
            .map_or(herald_protocol::MAX_MESSAGE_SIZE, |w| w.max_message_size)
    }

    /// Serializes `data` once and checks it against the welcome's cap (spec §8.6): an oversized
    /// frame would get the whole connection closed with 1009.
    pub(crate) fn payload(&self, data: &impl Serialize) -> Result<Box<RawValue>, Error> {
        let raw =
            serde_json::value::to_raw_value(data).map_err(|e| Error::Serialize(e.to_string()))?;
        let size = raw.get().len();
        let cap = self.max_message_size();
        if size > cap {
            return Err(Error::Oversized { size, cap });
        }
        Ok(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(channel: &str, epoch: &str, offset: u64) -> ChannelMessage {
        ChannelMessage {
            channel: channel.into(),
            from: "a".into(),
            from_metadata: None,
            data: serde_json::Value::Null,
            id: Some(format!("{epoch}-{offset}")),
            offset: Some(offset),
            epoch: Some(epoch.into()),
            ts: Some(0),
        }
    }

    fn shared() -> Shared {
        Shared {
            state: ConnectionState::Idle,
            welcome: None,
            conn: None,
            pending: HashMap::new(),
            subscriptions: BTreeMap::from([("c".to_string(), SubscribeOptions::default())]),
            stop: None,
            driver: None,
            closing: false,
            disposed: false,
            generation: 0,
            next_conn_id: 0,
            token: None,
            positions: HashMap::new(),
            resuming: HashMap::new(),
        }
    }

    #[test]
    fn a_message_at_or_below_the_held_position_of_its_epoch_is_a_duplicate() {
        let mut s = shared();
        assert!(s.take_position(&message("c", "e", 1)));
        assert!(s.take_position(&message("c", "e", 2)));
        assert!(!s.take_position(&message("c", "e", 1)), "replayed again");
        assert!(!s.take_position(&message("c", "e", 2)));
        assert_eq!(s.since("c"), Some(("e".into(), 2)));
        assert!(
            s.take_position(&message("c", "f", 1)),
            "a new epoch starts over"
        );
        assert_eq!(s.since("c"), Some(("f".into(), 1)));
        assert!(
            s.take_position(&message("p", "e", 1)),
            "pattern-only: not tracked"
        );
        assert_eq!(s.since("p"), None);
        s.forget("c");
        assert_eq!(s.since("c"), None);
        let mut plain = message("c", "e", 1);
        plain.epoch = None;
        plain.offset = None;
        assert!(
            shared().take_position(&plain),
            "no history, nothing to check"
        );
    }
}
