//! The Pusher protocol (Sockudo): frames the generator sends over the WebSocket, the
//! signatures presence and private channels need, and a pipelined HTTP/1.1 client for the
//! signed events API, which is how a Pusher application publishes (clients may only send
//! `client-` events, and only on private or presence channels).
//!
//! Mapping of the scenarios' operations:
//! - subscribe without presence: a public channel; with presence: `presence-<name>`, signed
//!   with `channel_data = {"user_id":"<socket id>"}` (each connection is its own user).
//! - unsubscribe: `pusher:unsubscribe` has no reply, so a `pusher:ping` follows it and its
//!   `pusher:pong` stands for the acknowledgement (the server handles a socket's frames in order).
//! - publish: `POST /apps/<id>/events` (event `message`), pipelined on one keep-alive connection;
//!   the `200` response is the acknowledgement.
//! - direct: the receiver subscribes to `private-inbox-<socket id>`; a direct is an events-API
//!   publish (event `direct`) to that channel.
//! - client-to-client (chat typing): a `client-typing` event on the room's presence channel.

use std::io;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use memchr::memmem;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

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
        return crate::proto::parse_u64(&p[at + 6..]);
    }
    let at = memmem::find(p, b"\"t\":")?;
    crate::proto::parse_u64(&p[at + 4..])
}

/// The write side of a pipelined, keep-alive HTTP/1.1 connection to the events API. Requests
/// are queued and written together by `flush`; [`HttpReader`] counts the responses.
pub struct HttpWriter {
    wr: OwnedWriteHalf,
    out: Vec<u8>,
    body: Vec<u8>,
    host: String,
}

/// The read side: counts complete responses and the non-2xx ones.
pub struct HttpReader {
    rd: OwnedReadHalf,
    buf: Vec<u8>,
    end: usize,
}

/// Opens a keep-alive HTTP connection to the events API of `addr`.
pub async fn http_connect(addr: SocketAddr) -> io::Result<(HttpReader, HttpWriter)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (rd, wr) = stream.into_split();
    Ok((
        HttpReader {
            rd,
            buf: vec![0; 16 * 1024],
            end: 0,
        },
        HttpWriter {
            wr,
            out: Vec::with_capacity(4096),
            body: Vec::with_capacity(512),
            host: addr.to_string(),
        },
    ))
}

impl HttpWriter {
    /// Queues a signed `POST /apps/<id>/events` of `event` on `channel`; `data` is JSON and is
    /// sent as a string, as the Pusher server libraries do. `exclude` is the socket id that
    /// must not receive it (the sender, as Herald and Socket.IO never echo a publish).
    pub fn queue_event(&mut self, channel: &str, event: &str, data: &[u8], exclude: Option<&str>) {
        let body = &mut self.body;
        body.clear();
        body.extend_from_slice(b"{\"name\":\"");
        body.extend_from_slice(event.as_bytes());
        body.extend_from_slice(b"\",\"channel\":\"");
        body.extend_from_slice(channel.as_bytes());
        body.extend_from_slice(b"\",\"data\":\"");
        for &b in data {
            if b == b'"' || b == b'\\' {
                body.push(b'\\');
            }
            body.push(b);
        }
        body.push(b'"');
        if let Some(socket_id) = exclude {
            body.extend_from_slice(b",\"socket_id\":\"");
            body.extend_from_slice(socket_id.as_bytes());
            body.push(b'"');
        }
        body.push(b'}');
        let md5 = format!("{:x}", md5::compute(&body[..]));
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let path = format!("/apps/{APP_ID}/events");
        let query =
            format!("auth_key={APP_KEY}&auth_timestamp={ts}&auth_version=1.0&body_md5={md5}");
        let sig = hmac_hex(format!("POST\n{path}\n{query}").as_bytes());
        let head = format!(
            "POST {path}?{query}&auth_signature={sig} HTTP/1.1\r\nHost: {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        self.out.extend_from_slice(head.as_bytes());
        self.out.extend_from_slice(body);
    }

    pub fn pending(&self) -> bool {
        !self.out.is_empty()
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.wr.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }
}

impl HttpReader {
    /// Reads until at least one complete response is buffered; returns the status codes of
    /// every complete response (empty at end of stream).
    pub async fn next_batch(&mut self) -> io::Result<Vec<u16>> {
        let mut statuses = Vec::new();
        loop {
            let mut start = 0;
            while let Some((status, len)) = parse_response(&self.buf[start..self.end]) {
                statuses.push(status);
                start += len;
            }
            if start > 0 {
                self.buf.copy_within(start..self.end, 0);
                self.end -= start;
            }
            if !statuses.is_empty() {
                return Ok(statuses);
            }
            if self.end == self.buf.len() {
                let len = self.buf.len() * 2;
                self.buf.resize(len, 0);
            }
            let n = self.rd.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Ok(statuses);
            }
            self.end += n;
        }
    }
}

/// A complete response at the start of `b` (status, bytes), if there is one. Bodies are
/// framed by Content-Length or chunked.
fn parse_response(b: &[u8]) -> Option<(u16, usize)> {
    let head_end = memmem::find(b, b"\r\n\r\n")? + 4;
    let head = &b[..head_end];
    let status = crate::proto::parse_u64(head.get(9..)?)? as u16;
    let lower = head.to_ascii_lowercase();
    if let Some(at) = memmem::find(&lower, b"content-length:") {
        let rest = &lower[at + 15..];
        let skip = rest.iter().take_while(|c| **c == b' ').count();
        let len = crate::proto::parse_u64(&rest[skip..])? as usize;
        return (b.len() >= head_end + len).then_some((status, head_end + len));
    }
    if memmem::find(&lower, b"transfer-encoding: chunked").is_some() {
        let mut at = head_end;
        loop {
            let line_end = memmem::find(&b[at..], b"\r\n")? + at;
            let size_text = std::str::from_utf8(&b[at..line_end]).ok()?;
            let size = usize::from_str_radix(size_text.trim(), 16).ok()?;
            at = line_end + 2 + size + 2;
            if b.len() < at {
                return None;
            }
            if size == 0 {
                return Some((status, at));
            }
        }
    }
    Some((status, head_end))
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

    #[test]
    fn parses_pipelined_responses() {
        let two = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200";
        let (s1, n1) = parse_response(two).expect("first response");
        assert_eq!((s1, n1), (200, 40));
        let (s2, n2) = parse_response(&two[n1..]).expect("second response");
        assert_eq!(s2, 401);
        assert!(parse_response(&two[n1 + n2..]).is_none());
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((200, chunked.len())));
    }
}
