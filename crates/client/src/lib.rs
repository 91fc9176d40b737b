//! The Herald Rust SDK: a client for the Metered Realtime Messaging protocol.
//!
//! It works against Herald and against any Metered-compatible server.
//! The default URL is the official SDKs' default, `wss://rms.metered.ca`; set
//! [`SignallingClientOptions::url`] to use your own server. Like the official SDKs, it has two
//! classes:
//!
//! - [`SignallingClient`]: one connection with multi-channel pub/sub, direct messages and the
//!   raw presence feed, with request/ack correlation, automatic reconnect with backoff,
//!   subscription replay, and an inactivity watchdog;
//! - [`Peer`]: the `MeteredPeer` counterpart. It joins one channel, keeps a roster of
//!   [`RemotePeer`] handles that survive reconnects, and carries broadcast and per-peer data.
//!   WebRTC media is not included. A media layer plugs in through [`SignalHandler`].
//!
//! On a Herald channel that keeps history, a [`ChannelMessage`] also carries its `id`,
//! `offset`, `epoch` and `ts`, and [`SignallingClient::history`] pages back through the
//! channel's retained messages over REST, with the client's own credential.
//!
//! # Quickstart
//!
//! Start a local Herald (`cargo run -p herald -- serve`). It prints a publishable key and a
//! secret key. A backend mints JWTs with the secret key. Any function that returns a token
//! can be the token provider, and it is called again on every reconnect.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use herald_client::{SignallingClient, SignallingClientOptions, SubscribeOptions};
//! use serde_json::json;
//!
//! async fn mint_jwt() -> Result<String, std::io::Error> {
//!     // Ask your backend (or Herald's `POST /v1/tokens`) for a token.
//!     Ok("eyJhbGciOi…".to_string())
//! }
//!
//! # async fn run() -> Result<(), herald_client::Error> {
//! let client = SignallingClient::new(
//!     SignallingClientOptions::token_provider(mint_jwt).with_url("ws://127.0.0.1:8080"),
//! )?;
//! // Take the streams before connecting so no event is missed.
//! let mut presence = client.presence();
//! let mut messages = client.messages();
//! let mut directs = client.directs();
//! client.connect().await?;
//! client
//!     .subscribe("lobby", SubscribeOptions { include_sender_metadata: true })
//!     .await?;
//! client.publish("lobby", json!({"type": "chat", "text": "hi"})).await?;
//!
//! loop {
//!     tokio::select! {
//!         Some(p) = presence.next() => println!("{}: +{:?} -{:?}", p.channel, p.joined, p.left),
//!         Some(m) = messages.next() => {
//!             println!("{} in {}: {}", m.from, m.channel, m.data);
//!             client.send(&m.from, json!({"type": "dm", "text": "hey"})).await?;
//!         }
//!         Some(d) = directs.next() => println!("{} privately: {}", d.from, d.data),
//!         else => break,
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! A [`Peer`] gives you the roster without the bookkeeping:
//!
//! ```no_run
//! # async fn run() -> Result<(), herald_client::Error> {
//! use futures_util::StreamExt;
//! use herald_client::{Peer, PeerOptions, SignallingClientOptions};
//!
//! let peer = Peer::new(PeerOptions::new(
//!     SignallingClientOptions::api_key("pk_live_dev_…").with_url("ws://127.0.0.1:8080"),
//! ))?;
//! let mut joined = peer.peer_joined();
//! let mut data = peer.data();
//! peer.join("room-1").await?;
//! peer.send(serde_json::json!({"hello": "everyone"})).await?;
//! loop {
//!     tokio::select! {
//!         Some(remote) = joined.next() => { remote.send("hi, just you").await?; }
//!         Some(d) = data.next() => println!("{:?} from {}: {}", d.kind, d.from, d.data),
//!         else => break,
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Behaviour
//!
//! These match the official SDKs (spec §7–8). Every timer and limit is configurable in
//! [`SignallingClientOptions`].
//!
//! - Requests (`subscribe`, `unsubscribe`, `publish`, `send`) wait up to 15 s for their `ack`
//!   or `error`. The result is typed: [`Error::Server`] carries the server's code,
//!   [`Error::Timeout`] means no answer came, and [`Error::Disconnected`] means the socket
//!   dropped while the request waited.
//! - Names and payloads are checked before anything is sent: channel names by the server's
//!   rules, and the serialized payload against the welcome's `maxMessageSize`.
//! - After a welcomed connection drops, the client reconnects with exponential backoff: 0.5 s
//!   initially, doubled each attempt, capped at 30 s, jittered by ±20 %, for up to 100 attempts.
//!   Close codes 4001, 4003, 4012 and 4020 are terminal. After a 4010 the next delay is at
//!   least 30 s. The first `connect()` is never retried.
//! - The token provider is called on every (re)connect, with a 10 s timeout.
//! - Subscriptions are replayed with their options after each reconnect.
//! - After 20 s without an inbound frame the client sends a `ping`. After 60 s it closes
//!   with 4000 and reconnects.
//!
//! Event streams are bounded (see [`EventStream`]): a stream that is not read loses its own
//! events. It never stalls the connection.

#![warn(missing_docs)]

mod client;
mod connection;
mod error;
mod events;
mod frames;
mod history;
mod options;
mod peer;
/// WebRTC peer connections for [`Peer`] (the `webrtc` feature; docs/webrtc.md).
#[cfg(feature = "webrtc")]
pub mod rtc;
mod shared;
mod signal;
mod types;

pub use client::SignallingClient;
pub use error::Error;
pub use events::EventStream;
pub use history::{HistoryMessage, HistoryPage, HistoryRequest};
pub use options::{
    BoxError, Credential, ReconnectOptions, SignallingClientOptions, TokenFuture, TokenProvider,
    DEFAULT_URL,
};
pub use peer::{
    DataKind, Peer, PeerData, PeerError, PeerOptions, PeerState, RemotePeer, SignalHandler,
    DEFAULT_MAX_PEERS,
};
pub use signal::{IceCandidate, SdpType, Signal, TrackMeta, TRACK_META_KEY};
pub use types::{
    ChannelMessage, ConnectionEvent, ConnectionState, DirectMessage, GoingAway, IceServer,
    Metadata, PresenceEvent, PresencePeer, ServerError, SubscribeOptions, Welcome,
};
