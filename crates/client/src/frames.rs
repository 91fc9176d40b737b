//! The client's side of the wire: parsing server frames (spec §4) and building client frames
//! (spec §5).
//!
//! `herald-protocol` parses *client* frames for the server; a client needs the opposite
//! direction, so it lives here. Parsing is as strict as the official SDKs' parsers: a frame
//! whose required fields are missing or mistyped is rejected as a whole and the caller drops
//! it, so a broken or hostile server cannot inject half-formed events.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::types::{
    ChannelMessage, DirectMessage, GoingAway, Metadata, PresenceEvent, PresencePeer, ServerError,
    Welcome,
};

/// `going_away.retryAfterMs` when missing or not positive (the SDKs' default).
const DEFAULT_RETRY_AFTER_MS: f64 = 1000.0;
/// Upper clamp on `retryAfterMs`, as the Python SDK does: a hint of hours is a server bug.
const MAX_RETRY_AFTER_MS: f64 = 300_000.0;

/// A decoded server frame.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ServerFrame {
    Welcome(Welcome),
    /// `recovered` answers a subscribe that carried `since` (Herald's explicit resume).
    Ack {
        request_id: String,
        recovered: Option<bool>,
    },
    Error(ServerError),
    Message(ChannelMessage),
    Direct(DirectMessage),
    Presence(PresenceEvent),
    GoingAway(GoingAway),
    Pong,
}

/// Why a text frame was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("not JSON")]
    NotJson,
    #[error("not a JSON object")]
    NotObject,
    #[error("type missing or not a string")]
    MissingType,
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
    #[error("{0}")]
    Invalid(&'static str),
}

fn string(obj: &mut Map<String, Value>, key: &str) -> Option<String> {
    match obj.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

fn finite(obj: &Map<String, Value>, key: &str) -> Option<f64> {
    obj.get(key)
        .and_then(Value::as_f64)
        .filter(|f| f.is_finite())
}

/// An object-valued field; anything else (absent, null, array, scalar) is dropped.
fn metadata(obj: &mut Map<String, Value>, key: &str) -> Option<Metadata> {
    match obj.remove(key) {
        Some(Value::Object(map)) => Some(map),
        _ => None,
    }
}

fn presence_peers(value: Option<Value>) -> Option<Vec<PresencePeer>> {
    let Value::Array(entries) = value? else {
        return None;
    };
    entries
        .into_iter()
        .map(|entry| {
            let Value::Object(mut entry) = entry else {
                return None;
            };
            Some(PresencePeer {
                peer_id: string(&mut entry, "peerId")?,
                metadata: metadata(&mut entry, "metadata"),
            })
        })
        .collect()
}

/// Parses one inbound text frame.
pub(crate) fn parse_server_frame(text: &str) -> Result<ServerFrame, FrameError> {
    let value: Value = serde_json::from_str(text).map_err(|_| FrameError::NotJson)?;
    let Value::Object(mut obj) = value else {
        return Err(FrameError::NotObject);
    };
    let ty = string(&mut obj, "type").ok_or(FrameError::MissingType)?;
    let invalid = FrameError::Invalid;
    Ok(match ty.as_str() {
        "welcome" => {
            let peer_id = string(&mut obj, "peerId").ok_or(invalid("welcome.peerId missing"))?;
            // The spec requires the key even when null; a missing key is tolerated here, as
            // the Python SDK does, because it changes nothing for the client.
            let expires_at = match obj.get("expiresAt") {
                None | Some(Value::Null) => None,
                Some(_) => Some(
                    finite(&obj, "expiresAt").ok_or(invalid("welcome.expiresAt not a number"))?
                        as i64,
                ),
            };
            let server_time =
                finite(&obj, "serverTime").ok_or(invalid("welcome.serverTime missing"))? as i64;
            let max = finite(&obj, "maxMessageSize")
                .filter(|m| *m > 0.0)
                .ok_or(invalid("welcome.maxMessageSize missing or not positive"))?;
            ServerFrame::Welcome(Welcome {
                peer_id,
                expires_at,
                server_time,
                max_message_size: max as usize,
                metadata: metadata(&mut obj, "metadata"),
            })
        }
        "ack" => ServerFrame::Ack {
            request_id: string(&mut obj, "requestId").ok_or(invalid("ack.requestId missing"))?,
            recovered: obj.get("recovered").and_then(Value::as_bool),
        },
        "error" => {
            let code = string(&mut obj, "code")
                .filter(|c| !c.is_empty())
                .ok_or(invalid("error.code missing"))?;
            ServerFrame::Error(ServerError {
                code,
                message: string(&mut obj, "message"),
                request_id: string(&mut obj, "requestId"),
            })
        }
        "message" => {
            let channel = string(&mut obj, "channel").ok_or(invalid("message.channel missing"))?;
            let from = string(&mut obj, "from").ok_or(invalid("message.from missing"))?;
            let data = obj.remove("data").ok_or(invalid("message.data missing"))?;
            // History positions are optional extras: a wrong type reads as absent.
            let offset = obj.get("offset").and_then(Value::as_u64);
            let ts = obj.get("ts").and_then(Value::as_i64);
            ServerFrame::Message(ChannelMessage {
                channel,
                from,
                from_metadata: metadata(&mut obj, "fromMetadata"),
                data,
                offset,
                ts,
                id: string(&mut obj, "id"),
                epoch: string(&mut obj, "epoch"),
            })
        }
        "direct" => {
            let from = string(&mut obj, "from").ok_or(invalid("direct.from missing"))?;
            let data = obj.remove("data").ok_or(invalid("direct.data missing"))?;
            ServerFrame::Direct(DirectMessage {
                from,
                from_metadata: metadata(&mut obj, "fromMetadata"),
                data,
            })
        }
        "presence" => {
            let channel = string(&mut obj, "channel").ok_or(invalid("presence.channel missing"))?;
            let joined =
                presence_peers(obj.remove("joined")).ok_or(invalid("presence.joined invalid"))?;
            let left =
                presence_peers(obj.remove("left")).ok_or(invalid("presence.left invalid"))?;
            ServerFrame::Presence(PresenceEvent {
                channel,
                joined,
                left,
            })
        }
        "going_away" => {
            let ms = finite(&obj, "retryAfterMs")
                .filter(|ms| *ms > 0.0)
                .unwrap_or(DEFAULT_RETRY_AFTER_MS)
                .min(MAX_RETRY_AFTER_MS);
            ServerFrame::GoingAway(GoingAway {
                retry_after: std::time::Duration::from_millis(ms as u64),
            })
        }
        "pong" => ServerFrame::Pong,
        _ => return Err(FrameError::UnknownType(ty)),
    })
}

/// The client frames, serialized with serde so escaping is always right. Optional keys are
/// omitted rather than sent as defaults, as the official SDKs do.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientFrame<'a> {
    Subscribe {
        channel: &'a str,
        #[serde(rename = "requestId")]
        request_id: &'a str,
        #[serde(
            rename = "includeSenderMetadata",
            skip_serializing_if = "std::ops::Not::not"
        )]
        include_sender_metadata: bool,
        /// Herald's explicit resume: every retained message after this position, or none.
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<SinceWire<'a>>,
    },
    Unsubscribe {
        channel: &'a str,
        #[serde(rename = "requestId")]
        request_id: &'a str,
    },
    Publish {
        channel: &'a str,
        data: &'a RawValue,
        #[serde(rename = "requestId")]
        request_id: &'a str,
    },
    Send {
        to: &'a str,
        data: &'a RawValue,
        #[serde(rename = "requestId")]
        request_id: &'a str,
    },
}

/// A channel position on the wire: `{"epoch", "offset"}`.
#[derive(Serialize)]
struct SinceWire<'a> {
    epoch: &'a str,
    offset: u64,
}

fn encode(frame: &ClientFrame<'_>) -> String {
    // Only strings, bools and already-valid raw JSON go in: serialization cannot fail.
    serde_json::to_string(frame).unwrap_or_default()
}

/// A subscribe; `since` (epoch, offset) asks Herald to replay what came after it.
pub(crate) fn subscribe(
    channel: &str,
    request_id: &str,
    include_sender_metadata: bool,
    since: Option<(&str, u64)>,
) -> String {
    encode(&ClientFrame::Subscribe {
        channel,
        request_id,
        include_sender_metadata,
        since: since.map(|(epoch, offset)| SinceWire { epoch, offset }),
    })
}

pub(crate) fn unsubscribe(channel: &str, request_id: &str) -> String {
    encode(&ClientFrame::Unsubscribe {
        channel,
        request_id,
    })
}

pub(crate) fn publish(channel: &str, data: &RawValue, request_id: &str) -> String {
    encode(&ClientFrame::Publish {
        channel,
        data,
        request_id,
    })
}

pub(crate) fn send(to: &str, data: &RawValue, request_id: &str) -> String {
    encode(&ClientFrame::Send {
        to,
        data,
        request_id,
    })
}

/// The heartbeat: no `requestId`, so the server answers with a bare `pong` and no ack (§5.5).
pub(crate) const PING: &str = r#"{"type":"ping"}"#;

/// A fresh request id: a random UUID v4, as the official SDKs generate.
pub(crate) fn request_id() -> String {
    let bytes: [u8; 16] = rand::random();
    let mut b = bytes;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ServerFrame, FrameError> {
        parse_server_frame(&v.to_string())
    }

    #[test]
    fn welcome() {
        let f = parse(
            json!({"type":"welcome","peerId":"alice","expiresAt":1715539200,
            "serverTime":1715535600,"maxMessageSize":65536,"metadata":{"k":1}}),
        )
        .unwrap();
        let ServerFrame::Welcome(w) = f else {
            panic!("{f:?}")
        };
        assert_eq!(w.peer_id, "alice");
        assert_eq!(w.expires_at, Some(1715539200));
        assert_eq!(w.max_message_size, 65536);
        assert_eq!(w.metadata.unwrap()["k"], 1);

        let ServerFrame::Welcome(pk) =
            parse(json!({"type":"welcome","peerId":"u","expiresAt":null,
            "serverTime":1,"maxMessageSize":10,"metadata":[1]}))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(pk.expires_at, None);
        assert_eq!(pk.metadata, None, "a non-object metadata is ignored");

        for bad in [
            json!({"type":"welcome","serverTime":1,"maxMessageSize":1}),
            json!({"type":"welcome","peerId":"a","maxMessageSize":1}),
            json!({"type":"welcome","peerId":"a","serverTime":1}),
            json!({"type":"welcome","peerId":"a","serverTime":1,"maxMessageSize":0}),
            json!({"type":"welcome","peerId":"a","serverTime":1,"maxMessageSize":1,"expiresAt":"x"}),
        ] {
            assert!(
                matches!(parse(bad.clone()), Err(FrameError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn deliveries() {
        assert_eq!(
            parse(json!({"type":"message","channel":"c","from":"b","data":null})).unwrap(),
            ServerFrame::Message(ChannelMessage {
                channel: "c".into(),
                from: "b".into(),
                from_metadata: None,
                data: Value::Null,
                id: None,
                offset: None,
                epoch: None,
                ts: None,
            })
        );
        let ServerFrame::Message(kept) = parse(json!({"type":"message","channel":"c","from":"b",
            "data":1,"id":"e-7","offset":7,"epoch":"e","ts":1715539200123_i64}))
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (
                kept.id.as_deref(),
                kept.offset,
                kept.epoch.as_deref(),
                kept.ts
            ),
            (Some("e-7"), Some(7), Some("e"), Some(1715539200123))
        );
        assert!(parse(json!({"type":"message","channel":"c","from":"b"})).is_err());
        assert!(parse(json!({"type":"message","channel":1,"from":"b","data":1})).is_err());
        let ServerFrame::Direct(d) =
            parse(json!({"type":"direct","from":"b","data":{"x":1},"fromMetadata":{"u":"B"}}))
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(d.from_metadata.unwrap()["u"], "B");
        assert!(parse(json!({"type":"direct","data":1})).is_err());
    }

    #[test]
    fn presence() {
        let ServerFrame::Presence(p) = parse(json!({"type":"presence","channel":"c",
            "joined":[{"peerId":"a","metadata":{"n":1}},{"peerId":"b","metadata":"x"}],"left":[]}))
        .unwrap() else {
            panic!()
        };
        assert_eq!(p.joined.len(), 2);
        assert!(p.joined[0].metadata.is_some());
        assert!(p.joined[1].metadata.is_none());
        for bad in [
            json!({"type":"presence","channel":"c","joined":[]}),
            json!({"type":"presence","channel":"c","joined":[{"id":"a"}],"left":[]}),
            json!({"type":"presence","joined":[],"left":[]}),
            json!({"type":"presence","channel":"c","joined":{},"left":[]}),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn control_frames() {
        assert_eq!(
            parse(json!({"type":"ack","requestId":"r"})).unwrap(),
            ServerFrame::Ack {
                request_id: "r".into(),
                recovered: None,
            }
        );
        assert_eq!(
            parse(json!({"type":"ack","requestId":"r","recovered":false})).unwrap(),
            ServerFrame::Ack {
                request_id: "r".into(),
                recovered: Some(false),
            }
        );
        assert_eq!(
            subscribe("c", "r", false, Some(("e1", 7))),
            r#"{"type":"subscribe","channel":"c","requestId":"r","since":{"epoch":"e1","offset":7}}"#
        );
        assert_eq!(
            subscribe("c", "r", false, None),
            r#"{"type":"subscribe","channel":"c","requestId":"r"}"#
        );
        assert!(parse(json!({"type":"ack"})).is_err());
        assert!(parse(json!({"type":"error","code":""})).is_err());
        assert_eq!(
            parse(json!({"type":"error","code":"x","requestId":"r","message":"m"})).unwrap(),
            ServerFrame::Error(ServerError {
                code: "x".into(),
                message: Some("m".into()),
                request_id: Some("r".into())
            })
        );
        let gone = |v| match parse(v).unwrap() {
            ServerFrame::GoingAway(g) => g.retry_after.as_millis(),
            other => panic!("{other:?}"),
        };
        assert_eq!(gone(json!({"type":"going_away","retryAfterMs":250})), 250);
        assert_eq!(gone(json!({"type":"going_away","retryAfterMs":-1})), 1000);
        assert_eq!(gone(json!({"type":"going_away"})), 1000);
        assert_eq!(
            gone(json!({"type":"going_away","retryAfterMs":1e12})),
            300_000
        );
        assert_eq!(parse(json!({"type":"pong"})).unwrap(), ServerFrame::Pong);
    }

    #[test]
    fn garbage() {
        assert_eq!(parse_server_frame("nope"), Err(FrameError::NotJson));
        assert_eq!(parse_server_frame("[1]"), Err(FrameError::NotObject));
        assert_eq!(parse_server_frame("{}"), Err(FrameError::MissingType));
        assert_eq!(
            parse_server_frame(r#"{"type":7}"#),
            Err(FrameError::MissingType)
        );
        assert_eq!(
            parse_server_frame(r#"{"type":"surprise"}"#),
            Err(FrameError::UnknownType("surprise".into()))
        );
    }

    #[test]
    fn client_frames() {
        let data = RawValue::from_string(r#"{"b":1.50,"a":[]}"#.into()).unwrap();
        assert_eq!(
            subscribe("c\"1", "r", false, None),
            r#"{"type":"subscribe","channel":"c\"1","requestId":"r"}"#
        );
        assert_eq!(
            subscribe("c", "r", true, None),
            r#"{"type":"subscribe","channel":"c","requestId":"r","includeSenderMetadata":true}"#
        );
        assert_eq!(
            unsubscribe("c", "r"),
            r#"{"type":"unsubscribe","channel":"c","requestId":"r"}"#
        );
        assert_eq!(
            publish("c", &data, "r"),
            r#"{"type":"publish","channel":"c","data":{"b":1.50,"a":[]},"requestId":"r"}"#
        );
        assert_eq!(
            send("p", &data, "r"),
            r#"{"type":"send","to":"p","data":{"b":1.50,"a":[]},"requestId":"r"}"#
        );
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(herald_protocol::validate::is_valid_request_id(&id));
        assert_ne!(id, request_id());
    }
}
