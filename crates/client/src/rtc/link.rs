//! [`Link`]: the peer connection to one remote, and the task that negotiates it the way the
//! official `MeteredPeer` does (spec §17.3): perfect negotiation, rollback on the polite side,
//! trickled candidates with `candidate: null` at the end, track metadata before each offer,
//! and the ICE-restart ladder.
//!
//! Every change to the connection runs in one task, in the order its inputs arrive (remote
//! signals, the stack's callbacks, timers). So "making an offer" is never interleaved with
//! handling a remote one, and a signal is sent only after the one before it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::ice_transport::ice_connection_state::RTCIceConnectionState;
use webrtc::peer_connection::offer_answer_options::RTCOfferOptions;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::signaling_state::RTCSignalingState;
use webrtc::peer_connection::RTCPeerConnection;

use super::channel::DataChannel;
use super::RtcEvent;
use crate::events::lock;
use crate::peer::RemotePeer;
use crate::signal::{IceCandidate, SdpType, Signal, TrackMeta};

/// MeteredPeer's ladder: the first restart at once, then 1 s doubling to 30 s, nine in all.
const RESTART_BASE: Duration = Duration::from_secs(1);
const RESTART_MAX_DELAY: Duration = Duration::from_secs(30);
const RESTART_MAX_ATTEMPTS: u32 = 9;
/// A restart offer with no answer after this long counts as a failed attempt.
const RESTART_ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// Remote candidates kept while no remote description is set yet.
const MAX_EARLY_CANDIDATES: usize = 256;

/// One input of the link task.
pub(super) enum Input {
    Signal(Signal),
    NegotiationNeeded(u64),
    LocalCandidate(u64, Option<RTCIceCandidateInit>),
    IceState(u64, RTCIceConnectionState),
    Restart { generation: u64 },
    RestartAnswerTimeout { generation: u64 },
    Close,
}

/// The peer connection to one remote peer. Clones share it.
#[derive(Clone)]
pub struct Link {
    pub(super) inner: Arc<LinkInner>,
}

pub(super) struct LinkInner {
    pub(super) remote: RemotePeer,
    pub(super) peer_id: Arc<str>,
    pub(super) polite: bool,
    /// Replaced (never rolled back) when the polite side yields to a colliding offer.
    pub(super) pc: Mutex<Arc<RTCPeerConnection>>,
    /// Which connection the callbacks' inputs came from; stale ones are dropped.
    pub(super) generation: AtomicU64,
    pub(super) inputs: mpsc::Sender<Input>,
    pub(super) channels: Mutex<Vec<DataChannel>>,
    pub(super) rtp_packets: AtomicU64,
    pub(super) rtp_bytes: AtomicU64,
    /// `(kind, track id)` of every remote track received.
    pub(super) tracks: Mutex<Vec<(String, String)>>,
    /// Track metadata to announce before the next offer.
    pub(super) local_tracks: Mutex<Vec<TrackMeta>>,
    /// Bytes this side may send in one message, from the remote's SDP.
    pub(super) max_message_size: AtomicU64,
    pub(super) events: Arc<crate::events::Subscribers<RtcEvent>>,
}

impl LinkInner {
    pub(super) fn pc(&self) -> Arc<RTCPeerConnection> {
        lock(&self.pc).clone()
    }

    fn current(&self, generation: u64) -> bool {
        self.generation.load(Ordering::Acquire) == generation
    }

    pub(super) fn max_message_size(&self) -> usize {
        usize::try_from(self.max_message_size.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("peer_id", &self.inner.peer_id)
            .field("polite", &self.inner.polite)
            .field("state", &self.state())
            .finish()
    }
}

impl Link {
    /// The remote peer's id.
    pub fn peer_id(&self) -> &str {
        &self.inner.peer_id
    }

    /// The remote's roster handle (metadata, signalling `send`).
    pub fn remote(&self) -> &RemotePeer {
        &self.inner.remote
    }

    /// This side's perfect-negotiation role: polite when the local peer id sorts first.
    pub fn polite(&self) -> bool {
        self.inner.polite
    }

    /// The connection state (`"new"`, `"connecting"`, `"connected"`, …).
    pub fn state(&self) -> String {
        self.inner.pc().connection_state().to_string()
    }

    /// The underlying peer connection, for what this API does not cover (stats, tracks).
    /// A polite-side offer collision replaces it (see docs/webrtc.md).
    pub fn peer_connection(&self) -> Arc<RTCPeerConnection> {
        self.inner.pc()
    }

    /// Open data channels to this remote, in the order they opened.
    pub fn channels(&self) -> Vec<DataChannel> {
        lock(&self.inner.channels)
            .iter()
            .filter(|c| c.is_open())
            .cloned()
            .collect()
    }

    /// An open channel with this label: the one this side opened if there is one (it is the
    /// one the remote expects answers on in the official demo pages), else the remote's.
    pub fn channel(&self, label: &str) -> Option<DataChannel> {
        self.channels().into_iter().find(|c| c.label() == label)
    }

    /// Opens a new data channel to this remote (it opens once negotiation completes; watch
    /// [`RtcEvent::ChannelOpen`]).
    pub async fn open_channel(&self, label: &str) -> Result<(), super::RtcError> {
        let dc = self
            .inner
            .pc()
            .create_data_channel(label, None)
            .await
            .map_err(|e| super::RtcError::Webrtc(e.to_string()))?;
        super::wire_channel(&self.inner, dc).await;
        Ok(())
    }

    /// RTP packets received from this remote's tracks so far.
    pub fn rtp_packets(&self) -> u64 {
        self.inner.rtp_packets.load(Ordering::Relaxed)
    }

    /// RTP payload bytes received so far.
    pub fn rtp_bytes(&self) -> u64 {
        self.inner.rtp_bytes.load(Ordering::Relaxed)
    }

    /// `(kind, track id)` of the remote tracks received so far.
    pub fn tracks(&self) -> Vec<(String, String)> {
        lock(&self.inner.tracks).clone()
    }

    /// The largest message this side may send to the remote.
    pub fn max_message_size(&self) -> usize {
        self.inner.max_message_size()
    }

    /// Closes the connection; the remote sees it fail or the remote's own `peer_left`.
    pub async fn close(&self) {
        let _ = self.inner.inputs.send(Input::Close).await;
    }
}

/// Negotiation state, owned by the link task.
struct Negotiation {
    /// The last offer this side set locally: a rollback needs its SDP in this stack.
    pending_offer: Option<String>,
    /// The impolite side ignored a colliding offer: errors from its candidates are expected.
    ignore_offer: bool,
    /// Negotiation was needed while not stable: offer once stable again.
    want_offer: bool,
    early_candidates: Vec<RTCIceCandidateInit>,
    restart_attempt: u32,
    restart_generation: u64,
    restart_scheduled: bool,
    /// Bumped on every remote description, so stale restart timers see progress.
    remote_generation: u64,
    /// This side's DTLS `a=setup` once the role is fixed; later answers keep it.
    dtls_setup: Option<&'static str>,
    /// This side answered the first exchange, so its ICE agent is controlled for good (webrtc-rs
    /// fixes the role once). Its SDP then says `a=ice-lite`, which keeps the remote controlling
    /// through our own later offers; see [`declare_lite`].
    lite: bool,
}

impl Negotiation {
    /// A fresh connection: nothing pending, no role yet.
    fn reset(&mut self) {
        self.pending_offer = None;
        self.early_candidates.clear();
        self.dtls_setup = None;
        self.lite = false;
    }
}

pub(super) async fn run(
    core: Arc<super::Core>,
    link: Arc<LinkInner>,
    mut inputs: mpsc::Receiver<Input>,
) {
    let events = core.events.clone();
    let mut n = Negotiation {
        pending_offer: None,
        ignore_offer: false,
        want_offer: false,
        early_candidates: Vec::new(),
        restart_attempt: 0,
        restart_generation: 0,
        restart_scheduled: false,
        remote_generation: 0,
        dtls_setup: None,
        lite: false,
    };
    while let Some(input) = inputs.recv().await {
        if tracing::enabled!(tracing::Level::DEBUG) {
            let what = match &input {
                Input::Signal(Signal::Description { sdp_type, sdp }) => format!(
                    "remote {sdp_type:?} m-lines={:?}",
                    sdp.lines()
                        .filter(|l| l.starts_with("m="))
                        .collect::<Vec<_>>()
                ),
                Input::Signal(Signal::Ice(c)) => format!(
                    "remote candidate {:?}",
                    c.as_ref().map(|c| c.candidate.clone())
                ),
                Input::Signal(_) => "remote other".into(),
                Input::NegotiationNeeded(_) => "negotiation-needed".into(),
                Input::LocalCandidate(_, c) => format!(
                    "local candidate {:?}",
                    c.as_ref().map(|c| c.candidate.clone())
                ),
                Input::IceState(_, s) => format!("ice {s}"),
                Input::Restart { .. } => "restart".into(),
                Input::RestartAnswerTimeout { .. } => "restart timeout".into(),
                Input::Close => "close".into(),
            };
            tracing::debug!(
                peer = %link.peer_id,
                polite = link.polite,
                state = %link.pc().signaling_state(),
                "webrtc link <- {what}"
            );
        }
        let result = match input {
            Input::Close => break,
            Input::NegotiationNeeded(g) | Input::LocalCandidate(g, _) | Input::IceState(g, _)
                if !link.current(g) =>
            {
                Ok(())
            }
            Input::NegotiationNeeded(_) => {
                if link.pc().signaling_state() == RTCSignalingState::Stable {
                    offer(&link, &mut n, false).await
                } else {
                    n.want_offer = true;
                    Ok(())
                }
            }
            Input::Signal(signal) => on_signal(&core, &link, &mut n, signal).await,
            Input::LocalCandidate(_, candidate) => {
                let wire = candidate.map(|c| IceCandidate {
                    candidate: c.candidate,
                    sdp_mid: c.sdp_mid,
                    sdp_m_line_index: c.sdp_mline_index.map(u32::from),
                    username_fragment: c.username_fragment,
                });
                send(&link, &Signal::Ice(wire)).await
            }
            Input::IceState(_, state) => {
                on_ice_state(&link, &mut n, state);
                Ok(())
            }
            Input::Restart { generation } => {
                n.restart_scheduled = false;
                let ice = link.pc().ice_connection_state();
                let healthy = matches!(
                    ice,
                    RTCIceConnectionState::Connected | RTCIceConnectionState::Completed
                );
                if healthy || generation != n.remote_generation {
                    Ok(())
                } else {
                    restart(&link, &mut n).await
                }
            }
            Input::RestartAnswerTimeout { generation } => {
                let ice = link.pc().ice_connection_state();
                let healthy = matches!(
                    ice,
                    RTCIceConnectionState::Connected | RTCIceConnectionState::Completed
                );
                if !healthy && generation == n.restart_generation {
                    schedule_restart(&link, &mut n);
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::debug!(peer = %link.peer_id, error = %e, "webrtc negotiation step failed");
            events.emit(RtcEvent::NegotiationError {
                peer_id: link.peer_id.to_string(),
                error: e,
            });
        }
        if n.want_offer && link.pc().signaling_state() == RTCSignalingState::Stable {
            n.want_offer = false;
            if let Err(e) = offer(&link, &mut n, false).await {
                tracing::debug!(peer = %link.peer_id, error = %e, "webrtc offer failed");
            }
        }
    }
    let _ = link.pc().close().await;
}

async fn send(link: &LinkInner, signal: &Signal) -> Result<(), String> {
    link.remote
        .send_signal(signal)
        .await
        .map_err(|e| e.to_string())
}

fn err(e: webrtc::Error) -> String {
    e.to_string()
}

/// Announces local track metadata, then creates, sets and sends an offer.
async fn offer(link: &LinkInner, n: &mut Negotiation, ice_restart: bool) -> Result<(), String> {
    let metas = lock(&link.local_tracks).clone();
    for meta in metas {
        send(link, &Signal::TrackMeta(meta)).await?;
    }
    let options = ice_restart.then(|| RTCOfferOptions {
        ice_restart: true,
        ..Default::default()
    });
    let offer = link.pc().create_offer(options).await.map_err(err)?;
    let sdp = offer.sdp.clone();
    link.pc().set_local_description(offer).await.map_err(err)?;
    n.pending_offer = Some(sdp.clone());
    let sdp = declare_lite(n, sdp);
    send(
        link,
        &Signal::Description {
            sdp_type: SdpType::Offer,
            sdp,
        },
    )
    .await
}

async fn on_signal(
    core: &super::Core,
    link: &Arc<LinkInner>,
    n: &mut Negotiation,
    signal: Signal,
) -> Result<(), String> {
    match signal {
        Signal::Description { sdp_type, sdp } => on_description(core, link, n, sdp_type, sdp).await,
        Signal::Ice(Some(c)) => {
            // An empty candidate is the Python SDK's end-of-candidates: nothing to add.
            if c.candidate.is_empty() {
                return Ok(());
            }
            let init = RTCIceCandidateInit {
                candidate: c.candidate,
                sdp_mid: c.sdp_mid,
                sdp_mline_index: c.sdp_m_line_index.and_then(|i| u16::try_from(i).ok()),
                username_fragment: c.username_fragment,
            };
            if link.pc().remote_description().await.is_none() {
                if n.early_candidates.len() < MAX_EARLY_CANDIDATES {
                    n.early_candidates.push(init);
                }
                return Ok(());
            }
            add_candidate(link, n, init).await
        }
        // End of candidates: this stack keeps checking the pairs it has; nothing to do.
        Signal::Ice(None) => Ok(()),
        // Cached on the RemotePeer by `Peer` already.
        Signal::TrackMeta(_) => Ok(()),
        #[allow(unreachable_patterns)]
        _ => Ok(()),
    }
}

async fn add_candidate(
    link: &LinkInner,
    n: &Negotiation,
    init: RTCIceCandidateInit,
) -> Result<(), String> {
    // Chromium hides host addresses behind mDNS names unless told otherwise. The stack
    // resolves `.local` names itself (multicast DNS query mode); one it cannot resolve is
    // just a pair that never works, not a failed negotiation.
    let mdns = init.candidate.contains(".local");
    match link.pc().add_ice_candidate(init).await {
        Ok(()) => Ok(()),
        Err(_) if n.ignore_offer || mdns => Ok(()),
        Err(e) => Err(err(e)),
    }
}

async fn on_description(
    core: &super::Core,
    link: &Arc<LinkInner>,
    n: &mut Negotiation,
    sdp_type: SdpType,
    sdp: String,
) -> Result<(), String> {
    let stable = link.pc().signaling_state() == RTCSignalingState::Stable;
    match sdp_type {
        SdpType::Offer => {
            let collision = !stable;
            n.ignore_offer = !link.polite && collision;
            if n.ignore_offer {
                return Ok(());
            }
            if collision {
                // Polite: drop our own offer and take theirs; ours goes out again after.
                // webrtc-rs 0.17 refuses have-local-offer -> rollback -> stable, so the
                // connection is replaced by a fresh one, which is stable; the remote (impolite)
                // ignored our offer, so it sees the same as a rollback.
                core.replace_pc(link).await?;
                n.reset();
                n.want_offer = true;
            }
            let desc = RTCSessionDescription::offer(sdp.clone()).map_err(err)?;
            link.pc().set_remote_description(desc).await.map_err(err)?;
            remote_set(link, n, &sdp).await;
            let answer = link.pc().create_answer(None).await.map_err(err)?;
            // This stack answers every offer as DTLS client (`active`). Once the DTLS role is
            // fixed (by the first exchange), later answers must keep it (RFC 8842 §5.5), or
            // both ends would be clients after the remote renegotiates.
            // The stack keeps its role internally and insists on setting exactly the answer
            // it created, so only the copy sent to the remote is rewritten.
            let answer_sdp = match n.dtls_setup {
                Some(setup) => set_setup(&answer.sdp, setup),
                None => {
                    n.dtls_setup = Some("active");
                    n.lite = true;
                    answer.sdp.clone()
                }
            };
            let answer_sdp = declare_lite(n, answer_sdp);
            link.pc().set_local_description(answer).await.map_err(err)?;
            send(
                link,
                &Signal::Description {
                    sdp_type: SdpType::Answer,
                    sdp: answer_sdp,
                },
            )
            .await
        }
        SdpType::Answer => {
            if link.pc().signaling_state() != RTCSignalingState::HaveLocalOffer {
                // A late answer to an offer we rolled back.
                return Ok(());
            }
            let desc = RTCSessionDescription::answer(sdp.clone()).map_err(err)?;
            if n.dtls_setup.is_none() {
                // The remote chose: its `active` makes this side the server (`passive`).
                let remote_active = sdp.contains("a=setup:active");
                n.dtls_setup = Some(if remote_active { "passive" } else { "active" });
            }
            link.pc().set_remote_description(desc).await.map_err(err)?;
            n.pending_offer = None;
            remote_set(link, n, &sdp).await;
            Ok(())
        }
    }
}

/// After a remote description: record its max-message-size and add early candidates.
async fn remote_set(link: &LinkInner, n: &mut Negotiation, sdp: &str) {
    n.remote_generation += 1;
    let remote_max = sdp
        .lines()
        .find_map(|l| l.strip_prefix("a=max-message-size:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(super::channel::DEFAULT_MAX_MESSAGE_SIZE as u64);
    // 0 means "any size"; this stack still caps what it sends.
    let cap = super::SEND_MAX_MESSAGE_SIZE as u64;
    let max = if remote_max == 0 {
        cap
    } else {
        remote_max.min(cap)
    };
    link.max_message_size.store(max, Ordering::Relaxed);
    for c in std::mem::take(&mut n.early_candidates) {
        let _ = add_candidate(link, n, c).await;
    }
}

/// Adds `a=ice-lite` to the copy of a description sent to the remote once this side's agent
/// is controlled for good (it answered the first exchange).
///
/// Why: after Chromium answers an offer of ours on such a link, it sends its checks as
/// ICE-controlled too. webrtc-ice 0.17 drops a check whose role equals its own and has no
/// role-conflict resolution (no 487, no tie-breaker), so the call drops (or never connects when
/// the offer comes during the first checks). An ICE-lite remote is always the controlled one
/// (RFC 8445 §6.1.1), so Chromium, and webrtc-rs as well, stay controlling. This agent still
/// runs full ICE (checks, trickle, srflx and relay candidates); the attribute only settles the
/// roles.
fn declare_lite(n: &Negotiation, sdp: String) -> String {
    if !n.lite || sdp.contains("\r\na=ice-lite") {
        return sdp;
    }
    // Session level: right after the `t=` line, before any media section.
    match sdp.find("\r\nt=") {
        Some(at) => match sdp[at + 2..].find("\r\n") {
            Some(end) => {
                let cut = at + 2 + end + 2;
                format!("{}a=ice-lite\r\n{}", &sdp[..cut], &sdp[cut..])
            }
            None => sdp,
        },
        None => sdp,
    }
}

/// Rewrites every `a=setup:` line of `sdp` to `setup`.
fn set_setup(sdp: &str, setup: &str) -> String {
    sdp.split("\r\n")
        .map(|line| {
            if line.starts_with("a=setup:") {
                format!("a=setup:{setup}")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn on_ice_state(link: &Arc<LinkInner>, n: &mut Negotiation, state: RTCIceConnectionState) {
    match state {
        RTCIceConnectionState::Connected | RTCIceConnectionState::Completed => {
            n.restart_attempt = 0;
            n.restart_generation += 1;
        }
        RTCIceConnectionState::Failed if !n.restart_scheduled => schedule_restart(link, n),
        _ => {}
    }
}

/// The next rung of the ladder: immediately, then 1 s, 2 s, … capped at 30 s; nine in all.
fn schedule_restart(link: &Arc<LinkInner>, n: &mut Negotiation) {
    if n.restart_attempt >= RESTART_MAX_ATTEMPTS {
        return;
    }
    let attempt = n.restart_attempt;
    n.restart_attempt += 1;
    n.restart_scheduled = true;
    let delay = if attempt == 0 {
        Duration::ZERO
    } else {
        (RESTART_BASE * 2u32.saturating_pow(attempt - 1)).min(RESTART_MAX_DELAY)
    };
    let generation = n.remote_generation;
    let inputs = link.inputs.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = inputs.send(Input::Restart { generation }).await;
    });
}

async fn restart(link: &Arc<LinkInner>, n: &mut Negotiation) -> Result<(), String> {
    if link.pc().signaling_state() != RTCSignalingState::Stable {
        n.want_offer = true;
        return Ok(());
    }
    offer(link, n, true).await?;
    n.restart_generation += 1;
    let generation = n.restart_generation;
    let inputs = link.inputs.clone();
    tokio::spawn(async move {
        tokio::time::sleep(RESTART_ANSWER_TIMEOUT).await;
        let _ = inputs
            .send(Input::RestartAnswerTimeout { generation })
            .await;
    });
    Ok(())
}
