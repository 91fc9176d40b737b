//! The Pusher protocol (Sockudo): frames the generator sends over the WebSocket, the
//! signatures presence and private channels need, and ([`http`]) a client for the signed
//! events API, which is how a Pusher application publishes (clients may only send
//! `client-` events, and only on private or presence channels).
//!
//! Mapping of the scenarios' operations:
//! - subscribe without presence: a public channel; with presence: `presence-<name>`, signed
//!   with `channel_data = {"user_id":"<socket id>"}` (each connection is its own user).
//! - unsubscribe: `pusher:unsubscribe` has no reply, so a `pusher:ping` follows it and its
//!   `pusher:pong` stands for the acknowledgement (the server handles a socket's frames in order).
//! - publish: `POST /apps/<id>/events` (event `message`), one at a time per publisher, on a
//!   connection per request when the server closes after each (Sockudo does); the `200`
//!   response is the acknowledgement.
//! - direct: the receiver subscribes to `private-inbox-<socket id>`; a direct is an events-API
//!   publish (event `direct`) to that channel.
//! - client-to-client (chat typing): a `client-typing` event on the room's presence channel.

mod http;

use hmac::{Hmac, Mac};
use memchr::memmem;
use sha2::Sha256;

pub use http::{
    connect_failures, http_connect, http_connect_lanes, HttpReader, HttpWriter, NOT_SENT,
};

/// The app bench/sockudo/config.toml defines (a benchmark credential, loopback only).
pub const APP_ID: &str = "herald-bench";
pub const APP_KEY: &str = "herald-bench-key";
pub const APP_SECRET: &str = "herald-bench-secret-loopback-only";

/// The WebSocket path of the app.
pub fn ws_path() -> String {
    format!("/app/{APP_KEY}?protocol=7&client=herald-bench&version=1.0")
}

/// A channel name Pusher accepts (`[-a-zA-Z0-9_=@,.;]`): other bytes become `-`, and a
/// presence subscription gets the `presence-` prefix (kept if already there).
pub fn channel_name(channel: &str, presence: bool) -> String {
    let clean: String = channel
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_=@,.;".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if presence && !clean.starts_with("presence-") {
        format!("presence-{clean}")
    } else {
        clean
    }
}

/// The private channel a connection receives its directs on.
pub fn inbox(socket_id: &str) -> String {
    format!("private-inbox-{socket_id}")
}

fn hmac_hex(message: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(APP_SECRET.as_bytes()) else {
        unreachable!("HMAC takes keys of any length")
    };
    mac.update(message);
    hex(&mac.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    s
}

/// A `pusher:subscribe` frame, signed for private and presence channels.
pub fn subscribe_frame(socket_id: &str, channel: &str) -> String {
    if channel.starts_with("presence-") {
        let data = format!(r#"{{"user_id":"{socket_id}"}}"#);
        let sig = hmac_hex(format!("{socket_id}:{channel}:{data}").as_bytes());
        let escaped = data.replace('"', "\\\"");
        format!(
            r#"{{"event":"pusher:subscribe","data":{{"channel":"{channel}","auth":"{APP_KEY}:{sig}","channel_data":"{escaped}"}}}}"#
        )
    } else if channel.starts_with("private-") {
        let sig = hmac_hex(format!("{socket_id}:{channel}").as_bytes());
        format!(
            r#"{{"event":"pusher:subscribe","data":{{"channel":"{channel}","auth":"{APP_KEY}:{sig}"}}}}"#
        )
    } else {
        format!(r#"{{"event":"pusher:subscribe","data":{{"channel":"{channel}"}}}}"#)
    }
}

pub fn unsubscribe_frame(channel: &str) -> String {
    format!(r#"{{"event":"pusher:unsubscribe","data":{{"channel":"{channel}"}}}}"#)
}

pub const PING: &[u8] = br#"{"event":"pusher:ping","data":{}}"#;
pub const PONG: &[u8] = br#"{"event":"pusher:pong","data":{}}"#;

/// A client event (`client-<name>`) with a JSON object as data, into `buf`.
pub fn client_event(buf: &mut Vec<u8>, channel: &str, name: &str, data: &[u8]) {
    buf.clear();
    buf.extend_from_slice(b"{\"event\":\"client-");
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\",\"channel\":\"");
    buf.extend_from_slice(channel.as_bytes());
    buf.extend_from_slice(b"\",\"data\":");
    buf.extend_from_slice(data);
    buf.push(b'}');
}

static EVENT: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"\"event\":\""));
static SOCKET_ID: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"socket_id\\\":\\\""));
static USER_ID: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"user_id\\\":\\\""));
/// The generator's timestamp in a string-encoded data field (`\"t\":123`) or an object (`"t":`).
static T_ESCAPED: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"\\\"t\\\":"));

/// The event name of a Pusher frame.
pub fn event(p: &[u8]) -> Option<&[u8]> {
    let at = EVENT.find(p)? + 9;
    let rest = &p[at..];
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

/// The socket id in `pusher:connection_established`.
pub fn socket_id(p: &[u8]) -> Option<&[u8]> {
    let at = SOCKET_ID.find(p)? + 14;
    let rest = &p[at..];
    let end = memchr::memchr(b'\\', rest)?;
    Some(&rest[..end])
}

/// The user id in `pusher_internal:member_added`.
pub fn user_id(p: &[u8]) -> Option<&[u8]> {
    let at = USER_ID.find(p)? + 12;
    let rest = &p[at..];
    let end = memchr::memchr(b'\\', rest)?;
    Some(&rest[..end])
}

/// The timestamp the generator put into a message's data.
pub fn timestamp(p: &[u8]) -> Option<u64> {
    if let Some(at) = T_ESCAPED.find(p) {
        return crate::digits::parse_u64(&p[at + 6..]);
    }
    let at = memmem::find(p, b"\"t\":")?;
    crate::digits::parse_u64(&p[at + 4..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_channels() {
        assert_eq!(channel_name("bench/fanout", false), "bench-fanout");
        assert_eq!(channel_name("bench/p", true), "presence-bench-p");
        assert_eq!(channel_name("presence-r1", true), "presence-r1");
    }

    #[test]
    fn signs_presence_subscriptions() {
        // HMAC-SHA256(secret, "socket_id:channel:channel_data"), computed independently.
        let frame = subscribe_frame("1234.1234", "presence-foobar");
        assert!(frame.contains(
            "herald-bench-key:a4a49892f51e22b61ecb6f1f2ac8186ae58f209a73054b718d31243b3ab70f4f"
        ));
        assert!(frame.contains(r#""channel_data":"{\"user_id\":\"1234.1234\"}""#));
    }

    #[test]
    fn parses_frames() {
        let est = br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"123.456\",\"activity_timeout\":120}"}"#;
        assert_eq!(event(est), Some(&b"pusher:connection_established"[..]));
        assert_eq!(socket_id(est), Some(&b"123.456"[..]));
        let added = br#"{"event":"pusher_internal:member_added","channel":"presence-x","data":"{\"user_id\":\"9.9\",\"user_info\":null}"}"#;
        assert_eq!(user_id(added), Some(&b"9.9"[..]));
        let msg = br#"{"channel":"c","event":"message","data":"{\"t\":42,\"p\":\"xx\"}"}"#;
        assert_eq!(event(msg), Some(&b"message"[..]));
        assert_eq!(timestamp(msg), Some(42));
        let client = br#"{"event":"client-typing","channel":"c","data":{"t":7}}"#;
        assert_eq!(timestamp(client), Some(7));
    }
}
