//! The values the client hands to applications: the welcome, inbound deliveries, presence,
//! server errors and connection lifecycle events (spec §4, §7).

use std::time::Duration;

use serde_json::Value;

/// A JSON object as it appears in `peerMetadata`, `fromMetadata` and `welcome.metadata`.
///
/// The server forwards these bags verbatim; the client only guarantees they are JSON objects
/// (a non-object value is dropped on receipt, as the official SDKs do).
pub type Metadata = serde_json::Map<String, Value>;

/// The server's `welcome` frame: who this connection is and what the server allows (spec §4.1).
#[derive(Debug, Clone, PartialEq)]
pub struct Welcome {
    /// The connection's peer id: the JWT `sub`, or a fresh UUID for a publishable key.
    pub peer_id: String,
    /// The JWT `exp` in Unix seconds; `None` for a publishable key, which never expires.
    pub expires_at: Option<i64>,
    /// The server clock in Unix seconds (passed through, never interpreted).
    pub server_time: i64,
    /// The cap on the serialized `data` of a publish or send, in bytes.
    pub max_message_size: usize,
    /// The JWT `metadata` claim (private to this connection), plus any injected `iceServers`.
    pub metadata: Option<Metadata>,
}

impl Welcome {
    /// The TURN/STUN servers in `metadata.iceServers`, validated the way the official SDKs do
    /// (spec §2.3): fail-closed, so one bad entry discards the whole list and `None` is returned.
    pub fn ice_servers(&self) -> Option<Vec<IceServer>> {
        IceServer::parse_list(self.metadata.as_ref()?.get("iceServers")?)
    }
}

/// One TURN/STUN server from `welcome.metadata.iceServers`, shaped like `RTCIceServer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServer {
    /// `stun:`, `stuns:`, `turn:` or `turns:` URLs (at least one).
    pub urls: Vec<String>,
    /// TURN username, when the server needs one.
    pub username: Option<String>,
    /// TURN credential, when the server needs one.
    pub credential: Option<String>,
}

impl IceServer {
    const MAX_ENTRIES: usize = 16;
    const MAX_URL_CHARS: usize = 512;
    const MAX_SECRET_CHARS: usize = 1024;

    /// Parses and validates a whole `iceServers` list; any invalid entry rejects the list.
    fn parse_list(value: &Value) -> Option<Vec<IceServer>> {
        let entries = value.as_array()?;
        if entries.len() > Self::MAX_ENTRIES {
            return None;
        }
        entries.iter().map(Self::parse_one).collect()
    }

    fn parse_one(value: &Value) -> Option<IceServer> {
        let entry = value.as_object()?;
        let urls = match entry.get("urls")? {
            Value::String(url) => vec![url.clone()],
            Value::Array(list) if !list.is_empty() => list
                .iter()
                .map(|u| u.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()?,
            _ => return None,
        };
        if !urls.iter().all(|u| Self::is_allowed_url(u)) {
            return None;
        }
        let secret = |key: &str| -> Result<Option<String>, ()> {
            match entry.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.chars().count() <= Self::MAX_SECRET_CHARS => {
                    Ok(Some(s.clone()))
                }
                Some(_) => Err(()),
            }
        };
        Some(IceServer {
            urls,
            username: secret("username").ok()?,
            credential: secret("credential").ok()?,
        })
    }

    fn is_allowed_url(url: &str) -> bool {
        let len = url.chars().count();
        if len == 0 || len > Self::MAX_URL_CHARS {
            return false;
        }
        let lower = url.get(..6).unwrap_or(url).to_ascii_lowercase();
        ["stun:", "stuns:", "turn:", "turns:"]
            .iter()
            .any(|scheme| lower.starts_with(scheme))
    }
}

/// Options of one subscription. They are kept and replayed with the subscription after every
/// reconnect, and the last subscribe to a channel wins (spec §5.1, §8.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Ask the server to stamp the publisher's `peerMetadata` on every message of this channel
    /// as `from_metadata`. Opt-in because the metadata may carry personal data.
    pub include_sender_metadata: bool,
}

/// One entry of a presence roster change.
#[derive(Debug, Clone, PartialEq)]
pub struct PresencePeer {
    /// The peer that joined or left.
    pub peer_id: String,
    /// Its public `peerMetadata`; `None` for publishable-key peers.
    pub metadata: Option<Metadata>,
}

/// A raw presence frame for one channel (spec §4.6, §12).
///
/// The first one after each subscribe is the full snapshot of the other peers (in `joined`,
/// with `left` empty); the following ones are deltas. The client does not keep a roster itself:
/// [`crate::Peer`] does.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceEvent {
    /// The channel, byte-identical to the subscribed name.
    pub channel: String,
    /// Peers that joined (or, for a snapshot, every peer present).
    pub joined: Vec<PresencePeer>,
    /// Peers that left.
    pub left: Vec<PresencePeer>,
}

/// A channel broadcast delivered to this connection (a `message` frame, spec §4.4).
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelMessage {
    /// The concrete channel that was published to.
    pub channel: String,
    /// The publisher's peer id, stamped by the server (never taken from `data`).
    pub from: String,
    /// The publisher's `peerMetadata`, only when this subscription asked for it.
    pub from_metadata: Option<Metadata>,
    /// The published payload (`null` is a valid payload).
    pub data: Value,
    /// Where the message sits in its channel's history (Herald, on channels that keep
    /// history): a unique, stable id. `None` elsewhere, as are the three fields below.
    pub id: Option<String>,
    /// Its offset in the channel's history: +1 per message within one `epoch`.
    pub offset: Option<u64>,
    /// The channel history's epoch; a new one means the history was lost or reset.
    pub epoch: Option<String>,
    /// The server's time of the publish, Unix milliseconds.
    pub ts: Option<i64>,
}

/// A point-to-point message (a `direct` frame, spec §4.5).
#[derive(Debug, Clone, PartialEq)]
pub struct DirectMessage {
    /// The sender's peer id, stamped by the server.
    pub from: String,
    /// The sender's `peerMetadata`, always present when the sender has one.
    pub from_metadata: Option<Metadata>,
    /// The payload.
    pub data: Value,
}

/// The server announced a graceful shutdown (spec §4.7). The server closes the socket with 1001
/// right after, and the client reconnects with its normal backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoingAway {
    /// The server's retry hint (1 s when missing or not positive, at most 5 minutes).
    pub retry_after: Duration,
}

/// An `error` frame from the server (spec §4.3, §6).
///
/// Correlated errors (with the `requestId` of a pending request) fail that request as
/// [`crate::Error::Server`]; the others arrive on [`crate::SignallingClient::server_errors`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The machine-readable code, verbatim (unknown codes of newer servers pass through).
    pub code: String,
    /// The human-readable message, when the server sent one.
    pub message: Option<String>,
    /// The request this error answers, when correlated.
    pub request_id: Option<String>,
}

impl ServerError {
    /// The code as one of the documented wire codes, or `None` for a code this crate does not
    /// know (a newer server's).
    pub fn known_code(&self) -> Option<herald_protocol::ErrorCode> {
        herald_protocol::ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == self.code)
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.code)?;
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

/// Where the client's connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// Created, never connected.
    Idle,
    /// The first connect is in progress (token, upgrade, welcome).
    Connecting,
    /// Welcomed: requests can be sent.
    Connected,
    /// The connection dropped and a reconnect is scheduled or in progress.
    Reconnecting,
    /// Closed by `close()`, a terminal close code, or an exhausted retry budget.
    Closed,
}

/// What happened to the connection; see [`crate::SignallingClient::connection_events`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The state changed.
    StateChanged {
        /// The state before.
        from: ConnectionState,
        /// The state now.
        to: ConnectionState,
    },
    /// A `welcome` arrived. `is_reconnect` is false only for the first welcome after
    /// `connect()`; subscriptions are replayed after each reconnect.
    Connected {
        /// The welcome of this connection.
        welcome: Welcome,
        /// True for every welcome after the first one of a `connect()`.
        is_reconnect: bool,
    },
    /// A socket closed (or a reconnect attempt failed).
    Disconnected {
        /// The close code; 1006 when the socket ended without a close frame.
        code: u16,
        /// The close reason (free text, never parsed).
        reason: String,
        /// Whether the client will try again.
        will_reconnect: bool,
    },
    /// Herald's explicit resume answered: a subscribe sent with the position of the last
    /// message received on `channel` (every reconnect does so) either got every retained
    /// message after it before live ones (`recovered: true`; duplicates are dropped), or
    /// nothing (`recovered: false`: the history moved on or was reset, so messages may have
    /// been missed; read them over REST or start afresh).
    Resumed {
        /// The channel subscribed again.
        channel: String,
        /// Whether nothing was missed.
        recovered: bool,
    },
    /// The token provider has failed this many reconnect attempts in a row (reported from the
    /// third failure on). The client keeps retrying; this is a hint to ask the user to sign in
    /// again.
    TokenProviderFailing {
        /// Consecutive failures so far.
        consecutive_failures: u32,
        /// The last failure.
        error: String,
    },
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn welcome(metadata: Value) -> Welcome {
        Welcome {
            peer_id: "p".into(),
            expires_at: None,
            server_time: 0,
            max_message_size: 65536,
            metadata: metadata.as_object().cloned(),
        }
    }

    #[test]
    fn ice_servers_parse_and_fail_closed() {
        let w = welcome(json!({"iceServers": [
            {"urls": "stun:stun.example.com"},
            {"urls": ["TURN:t.example.com:3478", "turns:t.example.com"], "username": "u", "credential": "c"}
        ]}));
        let list = w.ice_servers().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].urls.len(), 2);
        assert_eq!(list[1].username.as_deref(), Some("u"));

        for bad in [
            json!({"iceServers": [{"urls": "stun:a"}, {"urls": "http://x"}]}),
            json!({"iceServers": [{"urls": []}]}),
            json!({"iceServers": [{"urls": "stun:a", "username": 5}]}),
            json!({"iceServers": {"urls": "stun:a"}}),
            json!({"iceServers": vec![json!({"urls": "stun:a"}); 17]}),
        ] {
            assert_eq!(welcome(bad.clone()).ice_servers(), None, "{bad}");
        }
        assert_eq!(welcome(json!({})).ice_servers(), None);
    }

    #[test]
    fn known_codes() {
        let e = ServerError {
            code: "peer_not_found".into(),
            message: None,
            request_id: None,
        };
        assert_eq!(
            e.known_code(),
            Some(herald_protocol::ErrorCode::PeerNotFound)
        );
        let newer = ServerError {
            code: "brand_new".into(),
            ..e
        };
        assert_eq!(newer.known_code(), None);
    }
}
