//! Media: remote tracks are read and their RTP counted; optionally this side sends an Opus
//! track of silence frames, announced with track metadata before the offer.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use webrtc::api::media_engine::MIME_TYPE_OPUS;
use webrtc::media::Sample;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
use webrtc::rtp_transceiver::rtp_receiver::RTCRtpReceiver;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_local::TrackLocal;
use webrtc::track::track_remote::TrackRemote;

use super::link::LinkInner;
use super::RtcEvent;
use crate::events::lock;
use crate::signal::TrackMeta;
use crate::types::Metadata;

/// One 20 ms Opus frame of silence (RFC 6716 TOC 0xF8: CELT fullband, 20 ms, one frame).
/// No encoder needed, and the browser decodes it like any other frame.
const OPUS_SILENCE: [u8; 3] = [0xf8, 0xff, 0xfe];
const FRAME: Duration = Duration::from_millis(20);

/// A remote track arrived: note it, then count its RTP until it ends.
pub(super) fn on_track(
    link: Weak<LinkInner>,
    track: Arc<TrackRemote>,
    receiver: Arc<RTCRtpReceiver>,
) {
    let Some(inner) = link.upgrade() else {
        return;
    };
    let kind = track.kind().to_string();
    let track_id = track.id();
    lock(&inner.tracks).push((kind.clone(), track_id.clone()));
    inner.events.emit(RtcEvent::Track {
        peer_id: inner.peer_id.to_string(),
        kind,
        track_id,
        mime_type: track.codec().capability.mime_type,
    });
    drop(inner);
    // RTCP must be read for the interceptors (NACK, reports) to run.
    tokio::spawn(async move { while receiver.read_rtcp().await.is_ok() {} });
    tokio::spawn(async move {
        while let Ok((packet, _)) = track.read_rtp().await {
            let Some(inner) = link.upgrade() else {
                return;
            };
            inner.rtp_packets.fetch_add(1, Ordering::Relaxed);
            inner
                .rtp_bytes
                .fetch_add(packet.payload.len() as u64, Ordering::Relaxed);
        }
    });
}

/// Adds an Opus track that sends silence every 20 ms while the link lives.
pub(super) async fn add_audio(
    link: &Arc<LinkInner>,
    pc: &Arc<RTCPeerConnection>,
    metadata: Metadata,
) -> Result<(), String> {
    let track = Arc::new(TrackLocalStaticSample::new(
        RTCRtpCodecCapability {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            ..Default::default()
        },
        format!("herald-audio-{}", rand::random::<u32>()),
        format!("herald-{}", rand::random::<u32>()),
    ));
    {
        let mut metas = lock(&link.local_tracks);
        // One entry per track this side sends: a replaced connection re-adds its track.
        metas.retain(|m| m.kind.as_deref() != Some("audio"));
        metas.push(TrackMeta {
            track_id: track.id().to_owned(),
            metadata: Some(metadata),
            stream_id: Some(track.stream_id().to_owned()),
            kind: Some("audio".into()),
        });
    }
    let sender = pc
        .add_track(track.clone() as Arc<dyn TrackLocal + Send + Sync>)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move { while sender.read_rtcp().await.is_ok() {} });
    // Held weakly: the writer ends with the connection (a replaced one is dropped).
    let weak = Arc::downgrade(pc);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FRAME);
        loop {
            tick.tick().await;
            let open = weak
                .upgrade()
                .is_some_and(|pc| pc.connection_state() != RTCPeerConnectionState::Closed);
            if !open {
                return;
            }
            let sample = Sample {
                data: Bytes::from_static(&OPUS_SILENCE),
                duration: FRAME,
                ..Default::default()
            };
            if track.write_sample(&sample).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}
