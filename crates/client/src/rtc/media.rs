//! Media: remote tracks are read and their RTP counted; optionally this side sends an Opus
//! track of silence frames, announced with track metadata before the offer.

use std::fs::File;
use std::path::Path;
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

use webrtc::media::io::ivf_reader::IVFFileHeader;
use webrtc::media::io::ivf_writer::IVFWriter;
use webrtc::media::io::ogg_writer::OggWriter;
use webrtc::media::io::Writer;

use super::link::LinkInner;
use super::RtcEvent;
use crate::events::lock;
use crate::signal::TrackMeta;
use crate::types::Metadata;

/// One 20 ms Opus frame of silence (RFC 6716 TOC 0xF8: CELT fullband, 20 ms, one frame).
/// No encoder needed, and the browser decodes it like any other frame.
const OPUS_SILENCE: [u8; 3] = [0xf8, 0xff, 0xfe];
const FRAME: Duration = Duration::from_millis(20);

/// A remote track arrived: note it, then count its RTP (and record it, with a
/// `record_dir`) until it ends.
pub(super) fn on_track(
    link: Weak<LinkInner>,
    track: Arc<TrackRemote>,
    receiver: Arc<RTCRtpReceiver>,
    record_dir: Option<&Path>,
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
    let mut recorder = record_dir.and_then(|dir| recorder(dir, &inner.peer_id, &track));
    drop(inner);
    // RTCP must be read for the interceptors (NACK, reports) to run.
    tokio::spawn(async move { while receiver.read_rtcp().await.is_ok() {} });
    tokio::spawn(async move {
        while let Ok((packet, _)) = track.read_rtp().await {
            let Some(inner) = link.upgrade() else {
                break;
            };
            if let Some(writer) = &mut recorder {
                if let Err(err) = writer.write_rtp(&packet) {
                    tracing::warn!(error = %err, "recording a track failed; it is no longer recorded");
                    recorder = None;
                }
            }
            inner.rtp_packets.fetch_add(1, Ordering::Relaxed);
            inner
                .rtp_bytes
                .fetch_add(packet.payload.len() as u64, Ordering::Relaxed);
        }
        if let Some(mut writer) = recorder {
            // Completes the file (the IVF header's frame count).
            let _ = writer.close();
        }
    });
}

/// A recorder of `track` into a new file in `dir`, for the codecs webrtc-rs writes to files:
/// VP8/VP9 as IVF, Opus as Ogg. `None` for other codecs, or when the file cannot be made.
fn recorder(dir: &Path, peer_id: &str, track: &TrackRemote) -> Option<Box<dyn Writer + Send>> {
    let mime = track.codec().capability.mime_type.to_ascii_lowercase();
    let file = |ext: &str| {
        let name = format!("{peer_id}-{}", track.id())
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>();
        File::create(dir.join(format!("{name}.{ext}"))).map_err(|e| e.to_string())
    };
    let made: Result<Box<dyn Writer + Send>, String> = match mime.as_str() {
        "video/vp8" | "video/vp9" => file("ivf").and_then(|f| {
            let header = IVFFileHeader {
                signature: *b"DKIF",
                version: 0,
                header_size: 32,
                four_cc: if mime == "video/vp8" {
                    *b"VP80"
                } else {
                    *b"VP90"
                },
                width: 640,
                height: 480,
                timebase_denominator: 30,
                timebase_numerator: 1,
                num_frames: 0,
                unused: 0,
            };
            IVFWriter::new(f, &header)
                .map(|w| Box::new(w) as Box<dyn Writer + Send>)
                .map_err(|e| e.to_string())
        }),
        "audio/opus" => file("ogg").and_then(|f| {
            OggWriter::new(f, 48_000, 2)
                .map(|w| Box::new(w) as Box<dyn Writer + Send>)
                .map_err(|e| e.to_string())
        }),
        _ => return None,
    };
    made.map_err(|err| tracing::warn!(error = %err, %mime, "cannot record a track"))
        .ok()
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
