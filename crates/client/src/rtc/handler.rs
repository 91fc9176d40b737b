//! The [`SignalHandler`] side of the WebRTC layer: a [`Link`] per remote in the roster, built
//! in a task of its own while the remote's signals queue in its inbox.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::mpsc;
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::data_channel::RTCDataChannel;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::RTCPeerConnection;

use super::channel::{DataChannel, DEFAULT_MAX_MESSAGE_SIZE};
use super::link::{self, Input, Link, LinkInner};
use super::{media, Core, RtcEvent, LINK_INBOX};
use crate::events::lock;
use crate::peer::{RemotePeer, SignalHandler};
use crate::signal::Signal;

impl SignalHandler for Core {
    fn peer_joined(&self, remote: &RemotePeer) {
        self.start_link(remote);
    }

    fn peer_left(&self, remote: &RemotePeer) {
        self.stop_link(remote.peer_id());
    }

    /// The official SDKs build a fresh connection after a signalling reconnect (spec §17.4).
    fn connection_reset(&self, remote: &RemotePeer) {
        self.stop_link(remote.peer_id());
        self.start_link(remote);
    }

    fn signal(&self, remote: &RemotePeer, signal: Signal) {
        let inbox = lock(&self.inboxes).get(remote.peer_id()).cloned();
        if let Some(inbox) = inbox {
            if inbox.try_send(Input::Signal(signal)).is_err() {
                tracing::warn!(peer = remote.peer_id(), "webrtc inbox full; signal dropped");
            }
        }
    }
}

impl Core {
    fn start_link(&self, remote: &RemotePeer) {
        let Some(core) = self.me.upgrade() else {
            return;
        };
        let (tx, rx) = mpsc::channel(LINK_INBOX);
        lock(&self.inboxes).insert(remote.peer_id().to_owned(), tx.clone());
        let remote = remote.clone();
        tokio::spawn(async move {
            let peer_id = remote.peer_id().to_owned();
            match build_link(&core, remote, tx.clone()).await {
                Ok(inner) => {
                    // A newer link (a reset) may have replaced this one's inbox meanwhile.
                    let current = lock(&core.inboxes)
                        .get(&peer_id)
                        .is_some_and(|t| t.same_channel(&tx));
                    if !current {
                        let _ = inner.pc().close().await;
                        return;
                    }
                    lock(&core.links).insert(
                        peer_id,
                        Link {
                            inner: inner.clone(),
                        },
                    );
                    link::run(core.clone(), inner, rx).await;
                }
                Err(e) => core
                    .events
                    .emit(RtcEvent::NegotiationError { peer_id, error: e }),
            }
        });
    }

    fn stop_link(&self, peer_id: &str) {
        let inbox = lock(&self.inboxes).remove(peer_id);
        lock(&self.links).remove(peer_id);
        if let Some(inbox) = inbox {
            tokio::spawn(async move {
                let _ = inbox.send(Input::Close).await;
            });
        }
    }
}

async fn build_link(
    core: &Arc<Core>,
    remote: RemotePeer,
    inputs: mpsc::Sender<Input>,
) -> Result<Arc<LinkInner>, String> {
    let pc = core.bare_pc().await?;
    let inner = Arc::new(LinkInner {
        peer_id: remote.peer_id().into(),
        polite: remote.polite().unwrap_or(false),
        remote,
        pc: Mutex::new(pc.clone()),
        generation: AtomicU64::new(0),
        inputs,
        channels: Mutex::new(Vec::new()),
        rtp_packets: AtomicU64::new(0),
        rtp_bytes: AtomicU64::new(0),
        tracks: Mutex::new(Vec::new()),
        local_tracks: Mutex::new(Vec::new()),
        max_message_size: AtomicU64::new(DEFAULT_MAX_MESSAGE_SIZE as u64),
        events: core.events.clone(),
    });
    core.wire_pc(&inner, &pc, 0).await?;
    Ok(inner)
}

impl Core {
    async fn bare_pc(&self) -> Result<Arc<RTCPeerConnection>, String> {
        let client = lock(&self.client).clone();
        let servers = self
            .options
            .ice_servers
            .clone()
            .or_else(|| client.as_ref()?.welcome()?.ice_servers())
            .unwrap_or_default();
        let config = RTCConfiguration {
            ice_servers: servers
                .into_iter()
                .map(|s| RTCIceServer {
                    urls: s.urls,
                    username: s.username.unwrap_or_default(),
                    credential: s.credential.unwrap_or_default(),
                })
                .collect(),
            ..Default::default()
        };
        let pc = self
            .api
            .new_peer_connection(config)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(pc))
    }

    /// Replaces the link's connection with a fresh, stable one (the polite side's answer to
    /// an offer collision in this stack, which cannot roll back).
    pub(super) async fn replace_pc(&self, link: &Arc<LinkInner>) -> Result<(), String> {
        let pc = self.bare_pc().await?;
        let generation = link.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let old = std::mem::replace(&mut *lock(&link.pc), pc.clone());
        lock(&link.channels).clear();
        let _ = old.close().await;
        self.wire_pc(link, &pc, generation).await
    }

    /// Installs the callbacks, the local media and the default channel on a new connection.
    async fn wire_pc(
        &self,
        inner: &Arc<LinkInner>,
        pc: &Arc<RTCPeerConnection>,
        generation: u64,
    ) -> Result<(), String> {
        // Callbacks hold the link weakly: the connection owns them, and the link owns it.
        let tx = inner.inputs.clone();
        pc.on_ice_candidate(Box::new(move |c| {
            let tx = tx.clone();
            Box::pin(async move {
                let init = match c {
                    Some(c) => match c.to_json() {
                        Ok(init) => Some(init),
                        Err(_) => return,
                    },
                    None => None,
                };
                let _ = tx.send(Input::LocalCandidate(generation, init)).await;
            })
        }));
        let tx = inner.inputs.clone();
        pc.on_negotiation_needed(Box::new(move || {
            let tx = tx.clone();
            Box::pin(async move {
                let _ = tx.send(Input::NegotiationNeeded(generation)).await;
            })
        }));
        let tx = inner.inputs.clone();
        pc.on_ice_connection_state_change(Box::new(move |s| {
            let tx = tx.clone();
            Box::pin(async move {
                let _ = tx.send(Input::IceState(generation, s)).await;
            })
        }));
        let weak = Arc::downgrade(inner);
        pc.on_peer_connection_state_change(Box::new(move |s| {
            if let Some(link) = weak.upgrade() {
                if link.generation.load(Ordering::Acquire) == generation {
                    link.events.emit(RtcEvent::State {
                        peer_id: link.peer_id.to_string(),
                        state: s.to_string(),
                    });
                }
            }
            Box::pin(async {})
        }));
        let weak = Arc::downgrade(inner);
        pc.on_data_channel(Box::new(move |dc| {
            let weak = weak.clone();
            Box::pin(async move {
                if let Some(link) = weak.upgrade() {
                    wire_channel(&link, dc).await;
                }
            })
        }));
        let weak = Arc::downgrade(inner);
        let record_dir = self.options.record_dir.clone();
        pc.on_track(Box::new(move |track, receiver, _| {
            media::on_track(weak.clone(), track, receiver, record_dir.as_deref());
            Box::pin(async {})
        }));
        if let Some(meta) = &self.options.send_audio {
            media::add_audio(inner, pc, meta.clone()).await?;
        }
        if let Some(label) = &self.options.channel_label {
            let dc = pc
                .create_data_channel(label, None)
                .await
                .map_err(|e| e.to_string())?;
            wire_channel(inner, dc).await;
        }
        Ok(())
    }
}

/// Hooks a channel (ours or the remote's) up to the link's list and the event stream.
pub(super) async fn wire_channel(link: &Arc<LinkInner>, dc: Arc<RTCDataChannel>) {
    let peer_id = link.peer_id.to_string();
    let label = dc.label().to_owned();
    let events = link.events.clone();
    let (p, l) = (peer_id.clone(), label.clone());
    dc.on_message(Box::new(move |msg: DataChannelMessage| {
        events.emit(RtcEvent::Message {
            peer_id: p.clone(),
            label: l.clone(),
            data: msg.data,
            is_string: msg.is_string,
        });
        Box::pin(async {})
    }));
    let (weak_link, weak_dc): (Weak<LinkInner>, Weak<RTCDataChannel>) =
        (Arc::downgrade(link), Arc::downgrade(&dc));
    let (events, p, l) = (link.events.clone(), peer_id.clone(), label.clone());
    dc.on_close(Box::new(move || {
        if let (Some(link), Some(dc)) = (weak_link.upgrade(), weak_dc.upgrade()) {
            lock(&link.channels).retain(|c| !Arc::ptr_eq(c.raw(), &dc));
        }
        events.emit(RtcEvent::ChannelClosed {
            peer_id: p.clone(),
            label: l.clone(),
        });
        Box::pin(async {})
    }));
    let (weak_link, weak_dc) = (Arc::downgrade(link), Arc::downgrade(&dc));
    dc.on_open(Box::new(move || {
        Box::pin(async move {
            let (Some(link), Some(dc)) = (weak_link.upgrade(), weak_dc.upgrade()) else {
                return;
            };
            let max = link.max_message_size();
            let channel = DataChannel::new(dc, link.peer_id.clone(), max).await;
            lock(&link.channels).push(channel.clone());
            link.events.emit(RtcEvent::ChannelOpen {
                peer_id: link.peer_id.to_string(),
                channel,
            });
        })
    }));
}
