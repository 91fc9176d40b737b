//! Client frames (parsed, spec §5) and server frames (encoded, spec §4).
//!
//! Parsing borrows `data` as raw JSON so payloads are forwarded byte-for-byte (spec §3, §20.3).
//! Encoding writes compact JSON straight into a buffer; the caller shares the resulting bytes
//! with every receiver.

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::codes::ErrorCode;
use crate::json_depth::{nesting_exceeds, top_level_string};
use crate::json_escapes::has_lone_surrogate;
use crate::validate::is_valid_request_id;

/// A decoded client frame: the operation plus its `requestId`, when one was given.
#[derive(Debug)]
pub struct ClientFrame<'a> {
    pub request_id: Option<String>,
    pub op: ClientOp<'a>,
}

/// A client operation. Fields are `None` when missing or of the wrong JSON type; the server
/// turns that into the right error code in the spec's processing order.
#[derive(Debug)]
pub enum ClientOp<'a> {
    Subscribe {
        channel: Option<String>,
        include_sender_metadata: bool,
        /// An explicit resume (Herald's own clients): `None` when absent, `Some(None)` when
        /// present but not `{"epoch": string, "offset": integer >= 0}` (never recovered).
        since: Option<Option<StreamPosition>>,
    },
    Unsubscribe {
        channel: Option<String>,
    },
    Publish {
        channel: Option<String>,
        data: Option<&'a RawValue>,
    },
    Send {
        to: Option<String>,
        data: Option<&'a RawValue>,
    },
    Ping,
}

impl ClientOp<'_> {
    /// The frame type, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientOp::Subscribe { .. } => "subscribe",
            ClientOp::Unsubscribe { .. } => "unsubscribe",
            ClientOp::Publish { .. } => "publish",
            ClientOp::Send { .. } => "send",
            ClientOp::Ping => "ping",
        }
    }
}

/// A position in a channel's history named by a client: every message of `epoch` up to
/// `offset` is already held (the `since` of a subscribe).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StreamPosition {
    pub epoch: String,
    pub offset: u64,
}

/// A frame that could not be decoded: answer with this error code, echoing `request_id` if set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub request_id: Option<String>,
    pub message: &'static str,
}

/// Every envelope field is captured raw so a wrong type is a field-level error, not a parse error.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "present")]
    ty: Option<&'a RawValue>,
    #[serde(rename = "requestId", default, borrow, deserialize_with = "present")]
    request_id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    channel: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    to: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(
        rename = "includeSenderMetadata",
        default,
        borrow,
        deserialize_with = "present"
    )]
    include_sender_metadata: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    since: Option<&'a RawValue>,
}

/// Keeps a present key as `Some` even when its value is `null` (plain `Option` would map null to
/// `None`, and `"data": null` is valid while a missing `data` is not). Use it with
/// `#[serde(default, borrow, deserialize_with = "present")]`.
pub fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn as_string(raw: Option<&RawValue>) -> Option<String> {
    let raw = raw?;
    if !raw.get().starts_with('"') {
        return None;
    }
    serde_json::from_str::<String>(raw.get()).ok()
}

/// Decodes one text frame (spec §5.6 table decides every failure).
///
/// `max_json_depth` bounds how deeply any field, `data` included, may nest arrays and objects
/// (the frame's own object does not count). A deeper frame is refused with `malformed_message`
/// before it is parsed: `data` is forwarded raw, and receivers' parsers recurse.
pub fn parse_client_frame(
    text: &str,
    max_json_depth: usize,
) -> Result<ClientFrame<'_>, FrameError> {
    let malformed = |request_id, message| FrameError {
        code: ErrorCode::MalformedMessage,
        request_id,
        message,
    };
    if !text.trim_start().starts_with('{') {
        return Err(malformed(None, "frame must be a JSON object"));
    }
    if nesting_exceeds(text.as_bytes(), max_json_depth.saturating_add(1)) {
        let request_id = top_level_string(text, "requestId")
            .and_then(|raw| serde_json::from_str::<String>(raw).ok())
            .filter(|id| is_valid_request_id(id));
        return Err(malformed(
            request_id,
            "JSON nests too deeply (see limits.max_json_depth)",
        ));
    }
    let env: Envelope<'_> =
        serde_json::from_str(text).map_err(|_| malformed(None, "frame is not valid JSON"))?;
    let request_id = match env.request_id {
        None => None,
        Some(raw) => match as_string(Some(raw)) {
            Some(id) if is_valid_request_id(&id) => Some(id),
            _ => {
                return Err(malformed(
                    None,
                    "requestId must be a non-empty string of at most 128 characters",
                ))
            }
        },
    };
    let Some(ty) = as_string(env.ty) else {
        return Err(malformed(request_id, "type must be a string"));
    };
    // `data` is forwarded raw, so it must be JSON every receiver can read. (A lone surrogate
    // elsewhere, e.g. in a channel name, fails that field's own decoding and check.)
    if env
        .data
        .is_some_and(|data| has_lone_surrogate(data.get().as_bytes()))
    {
        return Err(malformed(
            request_id,
            "data escapes half of a UTF-16 surrogate pair",
        ));
    }
    let op = match ty.as_str() {
        "subscribe" => ClientOp::Subscribe {
            channel: as_string(env.channel),
            include_sender_metadata: env
                .include_sender_metadata
                .is_some_and(|v| v.get() == "true"),
            since: env
                .since
                .map(|raw| serde_json::from_str::<StreamPosition>(raw.get()).ok()),
        },
        "unsubscribe" => ClientOp::Unsubscribe {
            channel: as_string(env.channel),
        },
        "publish" => ClientOp::Publish {
            channel: as_string(env.channel),
            data: env.data,
        },
        "send" => ClientOp::Send {
            to: as_string(env.to),
            data: env.data,
        },
        "ping" => ClientOp::Ping,
        _ => {
            return Err(FrameError {
                code: ErrorCode::UnknownType,
                request_id,
                message: "unknown frame type",
            });
        }
    };
    Ok(ClientFrame { request_id, op })
}

/// One roster entry: a peer id and its public `peerMetadata`, if any.
#[derive(Debug, Clone, Copy)]
pub struct PresenceEntry<'a> {
    pub peer_id: &'a str,
    pub metadata: Option<&'a RawValue>,
}

/// Where a message sits in its channel's history: extra fields of a `message` frame, which the
/// official SDKs ignore. `offset` grows by 1 per message within one `epoch`; a new epoch means
/// the history was lost or reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position<'a> {
    pub id: &'a str,
    pub offset: u64,
    pub epoch: &'a str,
    /// Server time of the publish, Unix milliseconds.
    pub ts: i64,
}

/// Builds server frames. Each function returns the complete compact JSON text.
pub mod encode {
    use super::*;

    fn push_str(out: &mut String, s: &str) {
        // Writing a &str into a String cannot fail.
        if let Ok(json) = serde_json::to_string(s) {
            out.push_str(&json);
        }
    }

    fn push_field_str(out: &mut String, key: &str, value: &str) {
        out.push_str(",\"");
        out.push_str(key);
        out.push_str("\":");
        push_str(out, value);
    }

    fn push_field_raw(out: &mut String, key: &str, value: &RawValue) {
        out.push_str(",\"");
        out.push_str(key);
        out.push_str("\":");
        out.push_str(value.get());
    }

    fn start(ty: &str, capacity: usize) -> String {
        let mut out = String::with_capacity(capacity + 16 + ty.len());
        out.push_str("{\"type\":\"");
        out.push_str(ty);
        out.push('"');
        out
    }

    /// `welcome`: `expiresAt` is always present (null for publishable keys).
    pub fn welcome(
        peer_id: &str,
        expires_at: Option<i64>,
        server_time: i64,
        max_message_size: usize,
        metadata: Option<&RawValue>,
    ) -> String {
        let mut out = start(
            "welcome",
            96 + peer_id.len() + metadata.map_or(0, |m| m.get().len()),
        );
        push_field_str(&mut out, "peerId", peer_id);
        match expires_at {
            Some(exp) => out.push_str(&format!(",\"expiresAt\":{exp}")),
            None => out.push_str(",\"expiresAt\":null"),
        }
        out.push_str(&format!(
            ",\"serverTime\":{server_time},\"maxMessageSize\":{max_message_size}"
        ));
        if let Some(m) = metadata {
            push_field_raw(&mut out, "metadata", m);
        }
        out.push('}');
        out
    }

    pub fn ack(request_id: &str) -> String {
        let mut out = start("ack", request_id.len() + 16);
        push_field_str(&mut out, "requestId", request_id);
        out.push('}');
        out
    }

    /// The `ack` of a subscribe with `since`: whether every retained message after it follows
    /// (an extra field, which the official SDKs ignore).
    pub fn ack_recovered(request_id: &str, recovered: bool) -> String {
        let mut out = start("ack", request_id.len() + 32);
        push_field_str(&mut out, "requestId", request_id);
        out.push_str(if recovered {
            ",\"recovered\":true}"
        } else {
            ",\"recovered\":false}"
        });
        out
    }

    /// The `ack` of a `send` that no live connection took but that waits for a peer that
    /// dropped and may resume: `"queued": true`, an extra field the official SDKs ignore (a
    /// delivered send keeps the plain ack).
    pub fn ack_queued(request_id: &str) -> String {
        let mut out = start("ack", request_id.len() + 32);
        push_field_str(&mut out, "requestId", request_id);
        out.push_str(",\"queued\":true}");
        out
    }

    pub fn error(request_id: Option<&str>, code: ErrorCode, message: &str) -> String {
        let mut out = start("error", 48 + message.len());
        if let Some(id) = request_id {
            push_field_str(&mut out, "requestId", id);
        }
        push_field_str(&mut out, "code", code.as_str());
        if !message.is_empty() {
            push_field_str(&mut out, "message", message);
        }
        out.push('}');
        out
    }

    /// `message`: `data` is copied verbatim; `from_metadata` only for opted-in receivers.
    pub fn message(
        channel: &str,
        from: &str,
        data: &RawValue,
        from_metadata: Option<&RawValue>,
    ) -> String {
        message_at(channel, from, data, from_metadata, None)
    }

    /// `message` with its history position (`id`, `offset`, `epoch`, `ts`) when the channel
    /// keeps history.
    pub fn message_at(
        channel: &str,
        from: &str,
        data: &RawValue,
        from_metadata: Option<&RawValue>,
        position: Option<&Position<'_>>,
    ) -> String {
        let meta_len = from_metadata.map_or(0, |m| m.get().len() + 16);
        let pos_len = position.map_or(0, |p| p.id.len() + p.epoch.len() + 72);
        let mut out = start(
            "message",
            40 + channel.len() + from.len() + data.get().len() + meta_len + pos_len,
        );
        push_field_str(&mut out, "channel", channel);
        push_field_str(&mut out, "from", from);
        push_field_raw(&mut out, "data", data);
        if let Some(m) = from_metadata {
            push_field_raw(&mut out, "fromMetadata", m);
        }
        if let Some(p) = position {
            push_field_str(&mut out, "id", p.id);
            out.push_str(&format!(",\"offset\":{}", p.offset));
            push_field_str(&mut out, "epoch", p.epoch);
            out.push_str(&format!(",\"ts\":{}", p.ts));
        }
        out.push('}');
        out
    }

    /// `direct`: `from_metadata` whenever the sender has peerMetadata.
    pub fn direct(from: &str, data: &RawValue, from_metadata: Option<&RawValue>) -> String {
        let meta_len = from_metadata.map_or(0, |m| m.get().len() + 16);
        let mut out = start("direct", 32 + from.len() + data.get().len() + meta_len);
        push_field_str(&mut out, "from", from);
        push_field_raw(&mut out, "data", data);
        if let Some(m) = from_metadata {
            push_field_raw(&mut out, "fromMetadata", m);
        }
        out.push('}');
        out
    }

    fn push_entries(out: &mut String, key: &str, entries: &[PresenceEntry<'_>]) {
        out.push_str(",\"");
        out.push_str(key);
        out.push_str("\":[");
        for (i, e) in entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_entry(out, e);
        }
        out.push(']');
    }

    fn push_entry(out: &mut String, e: &PresenceEntry<'_>) {
        out.push_str("{\"peerId\":");
        push_str(out, e.peer_id);
        if let Some(m) = e.metadata {
            out.push_str(",\"metadata\":");
            out.push_str(m.get());
        }
        out.push('}');
    }

    /// A roster snapshot (`presence` with every entry joined, none left), with the byte range of
    /// each entry in the frame, so one entry can be cut out later without encoding again (a
    /// subscriber's snapshot never lists its own peer).
    pub fn presence_snapshot<'e>(
        channel: &str,
        entries: impl ExactSizeIterator<Item = PresenceEntry<'e>>,
    ) -> (String, Vec<std::ops::Range<usize>>) {
        let mut out = start("presence", 48 + channel.len() + 32 * entries.len());
        push_field_str(&mut out, "channel", channel);
        out.push_str(",\"joined\":[");
        let mut ranges = Vec::with_capacity(entries.len());
        for (i, e) in entries.enumerate() {
            if i > 0 {
                out.push(',');
            }
            let start = out.len();
            push_entry(&mut out, &e);
            ranges.push(start..out.len());
        }
        out.push_str("],\"left\":[]}");
        (out, ranges)
    }

    /// A snapshot from [`presence_snapshot`] without the entry at `range`, and its separator.
    pub fn presence_snapshot_without(frame: &str, range: std::ops::Range<usize>) -> String {
        // An entry is preceded by `[` (the first) or `,`; drop one comma with it.
        let (cut_start, cut_end) =
            if frame.as_bytes().get(range.start.wrapping_sub(1)) == Some(&b',') {
                (range.start - 1, range.end)
            } else if frame.as_bytes().get(range.end) == Some(&b',') {
                (range.start, range.end + 1)
            } else {
                (range.start, range.end)
            };
        let mut out = String::with_capacity(frame.len() - (cut_end - cut_start));
        out.push_str(&frame[..cut_start]);
        out.push_str(&frame[cut_end..]);
        out
    }

    /// `presence`: both arrays are always present, even when empty.
    pub fn presence(
        channel: &str,
        joined: &[PresenceEntry<'_>],
        left: &[PresenceEntry<'_>],
    ) -> String {
        let mut out = start(
            "presence",
            48 + channel.len() + 32 * (joined.len() + left.len()),
        );
        push_field_str(&mut out, "channel", channel);
        push_entries(&mut out, "joined", joined);
        push_entries(&mut out, "left", left);
        out.push('}');
        out
    }

    /// `presence` with an extra `"occupancy":{"peers":n}`, which Herald sends in rooms above
    /// their roster cap (occupancy mode). The official SDKs read only `channel`, `joined` and
    /// `left`, so they ignore the field.
    pub fn presence_with_occupancy(
        channel: &str,
        joined: &[PresenceEntry<'_>],
        left: &[PresenceEntry<'_>],
        peers: usize,
    ) -> String {
        let mut out = presence(channel, joined, left);
        out.pop();
        out.push_str(&format!(",\"occupancy\":{{\"peers\":{peers}}}}}"));
        out
    }

    pub fn going_away(retry_after_ms: u64) -> String {
        format!("{{\"type\":\"going_away\",\"retryAfterMs\":{retry_after_ms}}}")
    }

    /// `pong`, echoing a ping's `requestId` when it had one (spec Q12).
    pub fn pong(request_id: Option<&str>) -> String {
        let mut out = start("pong", 16);
        if let Some(id) = request_id {
            push_field_str(&mut out, "requestId", id);
        }
        out.push('}');
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_without_one_entry_is_the_snapshot_of_the_others() {
        let meta = RawValue::from_string(r#"{"name":"A,\"b\"]"}"#.to_string()).unwrap();
        for n in 0..4 {
            let peers: Vec<String> = (0..n).map(|i| format!("p{i},\"")).collect();
            let entries: Vec<PresenceEntry<'_>> = peers
                .iter()
                .enumerate()
                .map(|(i, p)| PresenceEntry {
                    peer_id: p,
                    metadata: (i % 2 == 0).then_some(&*meta),
                })
                .collect();
            let (full, ranges) = encode::presence_snapshot("room", entries.iter().cloned());
            assert_eq!(full, encode::presence("room", &entries, &[]));
            for (i, range) in ranges.into_iter().enumerate() {
                let mut others = entries.clone();
                others.remove(i);
                assert_eq!(
                    encode::presence_snapshot_without(&full, range),
                    encode::presence("room", &others, &[])
                );
            }
        }
    }

    fn parse(text: &str) -> Result<ClientFrame<'_>, FrameError> {
        parse_client_frame(text, crate::json_depth::DEFAULT_MAX_JSON_DEPTH)
    }

    fn err(text: &str) -> FrameError {
        parse(text).unwrap_err()
    }

    fn publish_nested(depth: usize, request_id: &str) -> String {
        format!(
            r#"{{"type":"publish","channel":"c","data":{}{},"requestId":"{request_id}"}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )
    }

    #[test]
    fn raw_data_is_not_depth_limited_by_serde() {
        // serde_json's recursion limit (128) guards building a tree, but `RawValue` skips over
        // `data` without one: only the explicit depth check stops a deep payload.
        let text = publish_nested(5000, "r");
        let f = parse_client_frame(&text, usize::MAX).unwrap();
        assert!(matches!(f.op, ClientOp::Publish { data: Some(d), .. } if d.get().len() == 10_000));
    }

    #[test]
    fn over_deep_frames_are_malformed_and_echo_the_request_id() {
        for depth in [65, 1000, 5000] {
            let e = err(&publish_nested(depth, "deep"));
            assert_eq!(
                (e.code, e.request_id.as_deref()),
                (ErrorCode::MalformedMessage, Some("deep")),
                "{depth}"
            );
        }
        let ok = publish_nested(64, "ok");
        let f = parse(&ok).unwrap();
        assert!(matches!(f.op, ClientOp::Publish { data: Some(_), .. }));
        // Any field counts, not only data; a bad requestId is not echoed.
        let deep = "{\"a\":".repeat(70) + "1" + &"}".repeat(70);
        let e = err(&format!(
            r#"{{"type":"ping","extra":{deep},"requestId":""}}"#
        ));
        assert_eq!((e.code, e.request_id), (ErrorCode::MalformedMessage, None));
        // Brackets inside strings are text.
        let text = format!(
            r#"{{"type":"publish","channel":"c","data":"{}"}}"#,
            "[".repeat(5000)
        );
        assert!(parse(&text).is_ok());
        assert!(parse_client_frame(&publish_nested(3, "r"), 3).is_ok());
        assert!(parse_client_frame(&publish_nested(4, "r"), 3).is_err());
    }

    #[test]
    fn parses_every_client_frame() {
        let f = parse(r#"{"type":"subscribe","channel":"a/b","requestId":"r1","includeSenderMetadata":true,"extra":1}"#).unwrap();
        assert_eq!(f.request_id.as_deref(), Some("r1"));
        assert!(
            matches!(f.op, ClientOp::Subscribe { channel: Some(ref c), include_sender_metadata: true, since: None } if c == "a/b")
        );

        let f =
            parse(r#"{"type":"subscribe","channel":"a","includeSenderMetadata":"yes"}"#).unwrap();
        assert!(matches!(
            f.op,
            ClientOp::Subscribe {
                include_sender_metadata: false,
                ..
            }
        ));

        let f = parse(r#"{"type":"subscribe","channel":"a","since":{"epoch":"e1","offset":7}}"#)
            .unwrap();
        let expected = StreamPosition {
            epoch: "e1".into(),
            offset: 7,
        };
        assert!(
            matches!(f.op, ClientOp::Subscribe { since: Some(Some(ref p)), .. } if *p == expected)
        );
        for bad in [
            r#""x""#,
            r#"{"epoch":1,"offset":2}"#,
            r#"{"epoch":"e","offset":-1}"#,
            "null",
        ] {
            let text = format!(r#"{{"type":"subscribe","channel":"a","since":{bad}}}"#);
            let f = parse(&text).unwrap();
            assert!(
                matches!(
                    f.op,
                    ClientOp::Subscribe {
                        since: Some(None),
                        ..
                    }
                ),
                "{bad}"
            );
        }
        assert_eq!(
            encode::ack_recovered("r", true),
            r#"{"type":"ack","requestId":"r","recovered":true}"#
        );
        assert_eq!(
            encode::ack_queued("r"),
            r#"{"type":"ack","requestId":"r","queued":true}"#
        );

        let f = parse(r#"{"type":"publish","channel":"c","data":null}"#).unwrap();
        assert!(matches!(f.op, ClientOp::Publish { data: Some(d), .. } if d.get() == "null"));

        let f = parse(r#"{"type":"publish","channel":"c"}"#).unwrap();
        assert!(matches!(f.op, ClientOp::Publish { data: None, .. }));

        let f = parse(r#"{"type":"send","to":"bob","data":{"n": 1500.0, "s":"\u00e9"}}"#).unwrap();
        assert!(
            matches!(f.op, ClientOp::Send { to: Some(ref t), data: Some(d) } if t == "bob" && d.get() == r#"{"n": 1500.0, "s":"\u00e9"}"#)
        );

        let f = parse(r#"{"type":"unsubscribe","channel":5}"#).unwrap();
        assert!(matches!(f.op, ClientOp::Unsubscribe { channel: None }));

        assert!(matches!(
            parse(r#"{"type":"ping"}"#).unwrap().op,
            ClientOp::Ping
        ));
    }

    #[test]
    fn malformed_and_unknown_frames() {
        for text in [
            "not json",
            "[1,2]",
            "\"x\"",
            "{",
            "",
            "null",
            r#"{"type":"ping","type":"ping"}"#,
        ] {
            assert_eq!(
                err(text),
                FrameError {
                    code: ErrorCode::MalformedMessage,
                    request_id: None,
                    message: err(text).message
                },
                "{text}"
            );
        }
        let e = err(r#"{"requestId":"r2"}"#);
        assert_eq!(
            (e.code, e.request_id.as_deref()),
            (ErrorCode::MalformedMessage, Some("r2"))
        );
        let e = err(r#"{"type":7,"requestId":"r3"}"#);
        assert_eq!(
            (e.code, e.request_id.as_deref()),
            (ErrorCode::MalformedMessage, Some("r3"))
        );
        let e = err(r#"{"type":"dance","requestId":"r4"}"#);
        assert_eq!(
            (e.code, e.request_id.as_deref()),
            (ErrorCode::UnknownType, Some("r4"))
        );
        for bad_id in [r#"5"#, r#""""#, &format!("\"{}\"", "x".repeat(129))] {
            let e = err(&format!(r#"{{"type":"ping","requestId":{bad_id}}}"#));
            assert_eq!(
                (e.code, e.request_id),
                (ErrorCode::MalformedMessage, None),
                "{bad_id}"
            );
        }
    }

    #[test]
    fn golden_server_frames() {
        let meta = RawValue::from_string(r#"{"username":"Bob"}"#.into()).unwrap();
        let data = RawValue::from_string(r#"{"n": 1500.0}"#.into()).unwrap();
        assert_eq!(
            encode::welcome("alice", None, 1715535600, 65536, None),
            r#"{"type":"welcome","peerId":"alice","expiresAt":null,"serverTime":1715535600,"maxMessageSize":65536}"#
        );
        assert_eq!(
            encode::welcome("a\"b", Some(1715539200), 1, 65536, Some(&meta)),
            r#"{"type":"welcome","peerId":"a\"b","expiresAt":1715539200,"serverTime":1,"maxMessageSize":65536,"metadata":{"username":"Bob"}}"#
        );
        assert_eq!(encode::ack("r1"), r#"{"type":"ack","requestId":"r1"}"#);
        assert_eq!(
            encode::error(Some("p"), ErrorCode::PeerNotFound, "no such peer"),
            r#"{"type":"error","requestId":"p","code":"peer_not_found","message":"no such peer"}"#
        );
        assert_eq!(
            encode::error(None, ErrorCode::MalformedMessage, ""),
            r#"{"type":"error","code":"malformed_message"}"#
        );
        assert_eq!(
            encode::message("app/room-1", "bob", &data, Some(&meta)),
            r#"{"type":"message","channel":"app/room-1","from":"bob","data":{"n": 1500.0},"fromMetadata":{"username":"Bob"}}"#
        );
        let at = Position {
            id: "e1-7",
            offset: 7,
            epoch: "e1",
            ts: 1715539200123,
        };
        assert_eq!(
            encode::message_at("c", "bob", &data, None, Some(&at)),
            r#"{"type":"message","channel":"c","from":"bob","data":{"n": 1500.0},"id":"e1-7","offset":7,"epoch":"e1","ts":1715539200123}"#
        );
        assert_eq!(
            encode::direct("bob", &data, None),
            r#"{"type":"direct","from":"bob","data":{"n": 1500.0}}"#
        );
        let entries = [
            PresenceEntry {
                peer_id: "bob",
                metadata: Some(&meta),
            },
            PresenceEntry {
                peer_id: "carol",
                metadata: None,
            },
        ];
        assert_eq!(
            encode::presence("c", &entries, &[]),
            r#"{"type":"presence","channel":"c","joined":[{"peerId":"bob","metadata":{"username":"Bob"}},{"peerId":"carol"}],"left":[]}"#
        );
        assert_eq!(
            encode::presence("c", &[], &[]),
            r#"{"type":"presence","channel":"c","joined":[],"left":[]}"#
        );
        assert_eq!(
            encode::presence_with_occupancy("c", &entries[1..], &[], 1200),
            r#"{"type":"presence","channel":"c","joined":[{"peerId":"carol"}],"left":[],"occupancy":{"peers":1200}}"#
        );
        assert_eq!(
            encode::going_away(750),
            r#"{"type":"going_away","retryAfterMs":750}"#
        );
        assert_eq!(encode::pong(None), r#"{"type":"pong"}"#);
        assert_eq!(
            encode::pong(Some("x")),
            r#"{"type":"pong","requestId":"x"}"#
        );
        // Every encoded frame is valid JSON.
        for s in [
            encode::presence("\u{1}\"", &entries, &entries),
            encode::ack("\\"),
        ] {
            serde_json::from_str::<serde_json::Value>(&s).unwrap();
        }
    }
}
