//! The WebRTC signalling payloads that `MeteredPeer`s exchange over `send`/`direct` (spec §17.3).
//!
//! [`crate::Peer`] carries no media stack. It recognises these payloads exactly as the official
//! SDKs do, so they never surface as application data, and hands them to a
//! [`crate::SignalHandler`] if one is installed. A WebRTC layer (for example one built on the
//! `webrtc` crate) implements the handler and answers through
//! [`crate::RemotePeer::send_signal`]. This module is the payloads only: the handler is part of
//! the peer's interface and lives with it in `peer.rs`.

use serde_json::{json, Map, Value};

use crate::types::Metadata;

/// The reserved key of track-metadata messages.
pub const TRACK_META_KEY: &str = "__meteredTrackMeta";

/// Longest `streamId`/`kind` accepted in track metadata.
const MAX_TRACK_FIELD_CHARS: usize = 256;

/// An SDP type in a session description signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpType {
    /// `"offer"`.
    Offer,
    /// `"answer"`.
    Answer,
}

impl SdpType {
    fn as_str(self) -> &'static str {
        match self {
            SdpType::Offer => "offer",
            SdpType::Answer => "answer",
        }
    }
}

/// One trickled ICE candidate, shaped like `RTCIceCandidateInit`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IceCandidate {
    /// The `candidate:` line. Empty marks the end of candidates for the Python SDK.
    pub candidate: String,
    /// The media stream identification tag.
    pub sdp_mid: Option<String>,
    /// The m-line index.
    pub sdp_m_line_index: Option<u32>,
    /// The ICE username fragment.
    pub username_fragment: Option<String>,
}

/// Per-track metadata a sender announces before the offer that carries the track.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackMeta {
    /// The sender's track id.
    pub track_id: String,
    /// The metadata; `None` is the "clear" form sent when a track is removed.
    pub metadata: Option<Metadata>,
    /// The msid stream id (Python SDK; receivers may key on it).
    pub stream_id: Option<String>,
    /// `"audio"` or `"video"` (Python SDK).
    pub kind: Option<String>,
}

/// A WebRTC signal carried in `direct` data.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Signal {
    /// `{"type":"rtc-description","description":{"type":…,"sdp":…}}`.
    Description {
        /// Offer or answer.
        sdp_type: SdpType,
        /// The SDP.
        sdp: String,
    },
    /// `{"type":"rtc-ice","candidate":…}`; `None` is the end-of-candidates marker.
    Ice(Option<IceCandidate>),
    /// `{"__meteredTrackMeta":{…}}`.
    TrackMeta(TrackMeta),
}

fn opt_string(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key).and_then(Value::as_str).map(str::to_owned)
}

impl Signal {
    /// Recognises a signal with the official SDKs' exact shape rules; anything else is
    /// application data. A `description` of another type (`pranswer`, `rollback`) or without
    /// an SDP string, or a `candidate` that is neither an object nor null, is not a signal.
    pub fn from_data(data: &Value) -> Option<Signal> {
        let obj = data.as_object()?;
        Self::rtc(obj).or_else(|| Self::track_meta(obj))
    }

    fn rtc(obj: &Map<String, Value>) -> Option<Signal> {
        match obj.get("type")?.as_str()? {
            "rtc-description" => {
                let description = obj.get("description")?.as_object()?;
                let sdp = description.get("sdp")?.as_str()?.to_owned();
                let sdp_type = match description.get("type")?.as_str()? {
                    "offer" => SdpType::Offer,
                    "answer" => SdpType::Answer,
                    _ => return None,
                };
                Some(Signal::Description { sdp_type, sdp })
            }
            "rtc-ice" => match obj.get("candidate")? {
                Value::Null => Some(Signal::Ice(None)),
                Value::Object(c) => Some(Signal::Ice(Some(IceCandidate {
                    candidate: opt_string(c, "candidate").unwrap_or_default(),
                    sdp_mid: opt_string(c, "sdpMid"),
                    sdp_m_line_index: c
                        .get("sdpMLineIndex")
                        .and_then(Value::as_u64)
                        .and_then(|i| u32::try_from(i).ok()),
                    username_fragment: opt_string(c, "usernameFragment"),
                }))),
                _ => None,
            },
            _ => None,
        }
    }

    fn track_meta(obj: &Map<String, Value>) -> Option<Signal> {
        let meta = obj.get(TRACK_META_KEY)?.as_object()?;
        let track_id = meta.get("trackId")?.as_str().filter(|t| !t.is_empty())?;
        let metadata = match meta.get("metadata") {
            None => None,
            Some(Value::Object(m)) => Some(m.clone()),
            Some(_) => return None,
        };
        let bounded = |key: &str| {
            opt_string(meta, key).filter(|s| s.chars().count() <= MAX_TRACK_FIELD_CHARS)
        };
        Some(Signal::TrackMeta(TrackMeta {
            track_id: track_id.to_owned(),
            metadata,
            stream_id: bounded("streamId"),
            kind: bounded("kind"),
        }))
    }

    /// The wire payload, as the official SDKs send it.
    pub fn to_data(&self) -> Value {
        match self {
            Signal::Description { sdp_type, sdp } => json!({
                "type": "rtc-description",
                "description": {"type": sdp_type.as_str(), "sdp": sdp},
            }),
            Signal::Ice(None) => json!({"type": "rtc-ice", "candidate": null}),
            Signal::Ice(Some(c)) => json!({
                "type": "rtc-ice",
                "candidate": {
                    "candidate": c.candidate,
                    "sdpMid": c.sdp_mid,
                    "sdpMLineIndex": c.sdp_m_line_index,
                    "usernameFragment": c.username_fragment,
                },
            }),
            Signal::TrackMeta(t) => {
                let mut inner = Map::new();
                inner.insert("trackId".into(), Value::String(t.track_id.clone()));
                if let Some(m) = &t.metadata {
                    inner.insert("metadata".into(), Value::Object(m.clone()));
                }
                if let Some(s) = &t.stream_id {
                    inner.insert("streamId".into(), Value::String(s.clone()));
                }
                if let Some(k) = &t.kind {
                    inner.insert("kind".into(), Value::String(k.clone()));
                }
                json!({ TRACK_META_KEY: inner })
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn recognises_exact_shapes_only() {
        let offer =
            json!({"type":"rtc-description","description":{"type":"offer","sdp":"v=0\r\n"}});
        assert_eq!(
            Signal::from_data(&offer),
            Some(Signal::Description {
                sdp_type: SdpType::Offer,
                sdp: "v=0\r\n".into()
            })
        );
        assert_eq!(Signal::from_data(&offer).unwrap().to_data(), offer);
        let end = json!({"type":"rtc-ice","candidate":null});
        assert_eq!(Signal::from_data(&end), Some(Signal::Ice(None)));
        let cand = json!({"type":"rtc-ice","candidate":{"candidate":"candidate:1 1 udp 1 192.0.2.1 5 typ host",
            "sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"abcd"}});
        let parsed = Signal::from_data(&cand).unwrap();
        assert_eq!(parsed.to_data(), cand);
        let meta = json!({"__meteredTrackMeta":{"trackId":"t1","metadata":{"role":"camera"},"streamId":"s","kind":"video"}});
        let Some(Signal::TrackMeta(t)) = Signal::from_data(&meta) else {
            panic!()
        };
        assert_eq!(t.metadata.as_ref().unwrap()["role"], "camera");
        assert_eq!(Signal::TrackMeta(t).to_data(), meta);
        let clear = json!({"__meteredTrackMeta":{"trackId":"t1"}});
        assert!(matches!(
            Signal::from_data(&clear),
            Some(Signal::TrackMeta(TrackMeta { metadata: None, .. }))
        ));

        for data in [
            json!({"type":"rtc-description","description":{"type":"pranswer","sdp":""}}),
            json!({"type":"rtc-description","description":{"type":"offer"}}),
            json!({"type":"rtc-description"}),
            json!({"type":"rtc-ice","candidate":"x"}),
            json!({"type":"rtc-ice"}),
            json!({"__meteredTrackMeta":{"trackId":""}}),
            json!({"__meteredTrackMeta":{"trackId":"t","metadata":[1]}}),
            json!({"__meteredTrackMeta":"t"}),
            json!({"type":"chat","text":"rtc-ice"}),
            json!(null),
            json!([1, 2]),
        ] {
            assert_eq!(Signal::from_data(&data), None, "{data}");
        }
    }
}
