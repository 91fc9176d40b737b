//! WebRTC for [`Peer`] (the `webrtc` feature): a real peer connection to every remote in the
//! room, negotiated over Herald exactly as the official `MeteredPeer` does (spec §17.3), so a
//! Rust program and a browser running `MeteredPeer` open data channels and exchange media.
//!
//! [`RtcPeer`] wraps a [`Peer`] and installs itself as its [`SignalHandler`]. Each remote gets
//! a [`Link`]; this side opens one data channel (label [`RtcOptions::channel_label`]) on every
//! link and also takes any channel the remote opens. Messages from every channel arrive on
//! [`RtcPeer::events`]. The stack is webrtc-rs (docs/webrtc.md says why).

mod channel;
mod handler;
mod link;
mod media;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use tokio::sync::mpsc;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::setting_engine::{SctpMaxMessageSize, SettingEngine};
use webrtc::api::{APIBuilder, API};
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::interceptor::registry::Registry;

pub use self::channel::{DataChannel, DEFAULT_MAX_MESSAGE_SIZE, HIGH_WATER};
use self::handler::wire_channel;
use self::link::Input;
pub use self::link::Link;
use crate::client::SignallingClient;
use crate::error::Error;
use crate::events::{lock, EventStream, Subscribers};
use crate::peer::{Peer, PeerOptions};
use crate::types::IceServer;

/// Largest message this side sends (Chromium accepts 256 KiB, `a=max-message-size:262144`).
pub const SEND_MAX_MESSAGE_SIZE: usize = 262_144;
/// Signals queued per link before the oldest sender has to wait (a remote floods nothing
/// past this: the handler drops what does not fit and logs it).
pub(crate) const LINK_INBOX: usize = 1024;
/// Events buffered per subscriber of [`RtcPeer::events`].
const EVENT_CAPACITY: usize = 4096;

/// What went wrong in the WebRTC layer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RtcError {
    /// No link (or no open channel) to that peer.
    #[error("no open data channel to {0}")]
    NoChannel(String),
    /// The channel closed before or during the send.
    #[error("data channel {0} is closed")]
    ChannelClosed(String),
    /// Larger than the negotiated maximum message size.
    #[error("message of {size} bytes exceeds the negotiated maximum of {max}")]
    TooLarge {
        /// The message's size.
        size: usize,
        /// The negotiated maximum.
        max: usize,
    },
    /// The SCTP send failed.
    #[error("send failed: {0}")]
    Send(String),
    /// The WebRTC stack refused an operation.
    #[error("webrtc: {0}")]
    Webrtc(String),
}

/// An event of the WebRTC layer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RtcEvent {
    /// A data channel to `peer_id` opened (this side's or the remote's).
    ChannelOpen {
        /// The remote.
        peer_id: String,
        /// The channel, ready to send.
        channel: DataChannel,
    },
    /// A message arrived on a data channel.
    Message {
        /// The sender.
        peer_id: String,
        /// The channel's label.
        label: String,
        /// The bytes, exactly as sent.
        data: Bytes,
        /// Sent as a string (not binary) by the remote.
        is_string: bool,
    },
    /// A data channel closed.
    ChannelClosed {
        /// The remote.
        peer_id: String,
        /// The channel's label.
        label: String,
    },
    /// A remote media track arrived; its RTP is counted on the [`Link`].
    Track {
        /// The remote.
        peer_id: String,
        /// `"audio"` or `"video"`.
        kind: String,
        /// The track id.
        track_id: String,
        /// The codec's MIME type (`video/VP8`, `audio/opus`, …).
        mime_type: String,
    },
    /// The connection state to `peer_id` changed (`"connected"`, `"failed"`, …).
    State {
        /// The remote.
        peer_id: String,
        /// The new state.
        state: String,
    },
    /// One negotiation step failed (the connection may still recover).
    NegotiationError {
        /// The remote.
        peer_id: String,
        /// What failed.
        error: String,
    },
}

/// Options of the WebRTC layer.
#[derive(Debug, Clone)]
pub struct RtcOptions {
    /// The label of the data channel this side opens to every remote; `None` opens none
    /// (then only channels the remote opens, or [`Link::open_channel`], carry data).
    pub channel_label: Option<String>,
    /// ICE servers to use instead of `welcome.metadata.iceServers`.
    pub ice_servers: Option<Vec<IceServer>>,
    /// Gather loopback host candidates (for tests on one machine without other interfaces).
    pub loopback_candidates: bool,
    /// Send an Opus audio track (silence frames) to every remote, announced with this
    /// metadata before the offer, like `MeteredPeer.addStream(stream, metadata)`.
    pub send_audio: Option<crate::types::Metadata>,
    /// Record every remote track into this directory, one file per track: VP8/VP9 video as
    /// IVF, Opus audio as Ogg (`<peer id>-<track id>.ivf|.ogg`); other codecs are only counted.
    pub record_dir: Option<std::path::PathBuf>,
}

impl Default for RtcOptions {
    fn default() -> Self {
        RtcOptions {
            channel_label: Some("herald".into()),
            ice_servers: None,
            loopback_candidates: true,
            send_audio: None,
            record_dir: None,
        }
    }
}

/// A [`Peer`] with WebRTC connections to every remote in its room.
#[derive(Clone)]
pub struct RtcPeer {
    peer: Peer,
    core: Arc<Core>,
}

impl std::fmt::Debug for RtcPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtcPeer")
            .field("peer", &self.peer)
            .field("links", &self.links().len())
            .finish()
    }
}

pub(crate) struct Core {
    me: Weak<Core>,
    options: RtcOptions,
    api: API,
    /// The peer's client, for the local id and the welcome's ICE servers. Not the `Peer`
    /// itself: the peer holds the core as its handler, and the client holds the peer weakly.
    client: Mutex<Option<SignallingClient>>,
    /// Each remote's signal inbox, there from `peer_joined` on (before its link is built).
    inboxes: Mutex<HashMap<String, mpsc::Sender<Input>>>,
    links: Mutex<HashMap<String, Link>>,
    events: Arc<Subscribers<RtcEvent>>,
}

impl RtcPeer {
    /// Builds the peer and its WebRTC layer. `options.signal_handler` is replaced.
    pub fn new(options: PeerOptions, rtc: RtcOptions) -> Result<RtcPeer, Error> {
        let api = build_api(&rtc).map_err(|e| Error::InvalidOptions(e.to_string()))?;
        let core = Arc::new_cyclic(|me| Core {
            me: me.clone(),
            options: rtc,
            api,
            client: Mutex::new(None),
            inboxes: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            events: Arc::new(Subscribers::new("rtc", EVENT_CAPACITY)),
        });
        let peer = Peer::new(options.with_signal_handler(core.clone()))?;
        *lock(&core.client) = Some(peer.client().clone());
        Ok(RtcPeer { peer, core })
    }

    /// The signalling peer (roster, signalling `send`, state).
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Joins `channel` (see [`Peer::join`]); links form as remotes appear.
    pub async fn join(&self, channel: &str) -> Result<(), Error> {
        self.peer.join(channel).await
    }

    /// Leaves the room and closes every link.
    pub async fn leave(&self) {
        self.peer.leave().await;
        let links: Vec<Link> = lock(&self.core.links).drain().map(|(_, l)| l).collect();
        for link in links {
            link.close().await;
        }
    }

    /// Events of every link: channels opening and closing, messages, tracks, states.
    pub fn events(&self) -> EventStream<RtcEvent> {
        self.core.events.subscribe()
    }

    /// The link to `peer_id`, once that remote is in the roster.
    pub fn link(&self, peer_id: &str) -> Option<Link> {
        lock(&self.core.links).get(peer_id).cloned()
    }

    /// Every link.
    pub fn links(&self) -> Vec<Link> {
        lock(&self.core.links).values().cloned().collect()
    }

    /// Sends `data` to one remote over the default data channel (binary message).
    pub async fn send_to(&self, peer_id: &str, data: &[u8]) -> Result<(), RtcError> {
        self.default_channel(peer_id)?.send(data).await
    }

    /// Sends `text` to one remote over the default data channel (string message).
    pub async fn send_text_to(&self, peer_id: &str, text: &str) -> Result<(), RtcError> {
        self.default_channel(peer_id)?.send_text(text).await
    }

    /// Sends `data` to every remote with an open default channel; returns how many got it.
    pub async fn broadcast(&self, data: &[u8]) -> usize {
        let mut sent = 0;
        for link in self.links() {
            if let Ok(channel) = self.default_channel(link.peer_id()) {
                if channel.send(data).await.is_ok() {
                    sent += 1;
                }
            }
        }
        sent
    }

    fn default_channel(&self, peer_id: &str) -> Result<DataChannel, RtcError> {
        let link = self
            .link(peer_id)
            .ok_or_else(|| RtcError::NoChannel(peer_id.to_owned()))?;
        let label = self.core.options.channel_label.as_deref();
        let channels = link.channels();
        channels
            .iter()
            .find(|c| Some(c.label()) == label)
            .or_else(|| channels.first())
            .cloned()
            .ok_or_else(|| RtcError::NoChannel(peer_id.to_owned()))
    }
}

fn build_api(options: &RtcOptions) -> Result<API, webrtc::Error> {
    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    let registry = register_default_interceptors(Registry::new(), &mut media)?;
    let mut settings = SettingEngine::default();
    // Resolve Chromium's `.local` host candidates; gather no mDNS names of our own.
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::QueryOnly);
    settings.set_include_loopback_candidate(options.loopback_candidates);
    settings.set_sctp_max_message_size_can_send(SctpMaxMessageSize::Bounded(
        SEND_MAX_MESSAGE_SIZE as u32,
    ));
    Ok(APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build())
}
