//! Protocol adapters: the Metered wire (Herald) and Socket.IO 4 (Engine.IO v4 text framing over
//! a WebSocket). Each turns the scenarios' few operations into frames and classifies what comes
//! back, by looking at a few bytes rather than parsing whole JSON documents.

use std::io;
use std::net::SocketAddr;

use memchr::memmem;

use crate::token::SigningKey;
use crate::ws::{self, Frame, WsReader, WsWriter};

/// Callers of the adapters read and write numbers through these too.
pub use crate::digits::{parse_u64, push_u64};

/// Which wire a target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// The Metered Realtime Messaging wire (Herald).
    Herald,
    /// Socket.IO 4 (Engine.IO v4) with the reference server in bench/socketio.
    Socketio,
    /// The Pusher protocol (Sockudo), see [`crate::pusher`].
    Pusher,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Herald => "herald",
            Proto::Socketio => "socketio",
            Proto::Pusher => "pusher",
        }
    }
}

/// A server (or a cluster of nodes) under test.
#[derive(Debug, Clone)]
pub struct Target {
    pub proto: Proto,
    /// One address per node; connections are spread over them round-robin.
    pub addrs: Vec<SocketAddr>,
    /// Herald: the publishable key with presence (watchers, churners).
    pub key: String,
    /// Herald: a publishable key without the presence action, so plain subscribers are not sent
    /// presence deltas (the Socket.IO server sends none to them either).
    pub quiet_key: String,
    /// Server processes whose CPU time and RSS are sampled (every node of a cluster).
    pub pids: Vec<u32>,
    /// Herald: when set, clients connect with a JWT this key signs (peer id `bench-<index>`)
    /// instead of the publishable keys: stable peers, as lossless reconnect tracks them.
    pub signing_key: Option<SigningKey>,
}

impl Target {
    pub fn addr(&self, index: usize) -> SocketAddr {
        self.addrs[index % self.addrs.len()]
    }
}

/// One connected client after the protocol handshake.
pub struct Client {
    pub proto: Proto,
    pub rd: WsReader,
    pub tx: Sender,
    /// The id others use to reach it: Herald's `peerId`, Socket.IO's and Pusher's socket id.
    pub peer_id: String,
}

/// The write side of a client: encodes requests, numbers them, and batches them per flush.
pub struct Sender {
    pub proto: Proto,
    pub wr: WsWriter,
    next_request: u64,
    /// Pusher: this connection's socket id (signs private and presence subscriptions).
    socket_id: String,
    /// Pusher: the events-API connection publishes and directs go through, once attached.
    pub http: Option<crate::pusher::HttpWriter>,
}

/// What an inbound frame is, as far as the scenarios care.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// A channel message; `t` is the send timestamp the generator embedded.
    Message(Option<u64>),
    /// A direct message.
    Direct(Option<u64>),
    /// A presence frame; the first joined peer id, if any.
    Presence {
        joined: Option<&'a [u8]>,
    },
    Ack(u64),
    Error,
    /// Engine.IO ping: answer with a pong.
    Ping,
    Other,
}

static T_FIELD: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"\"t\":"));
static JOINED: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"\"joined\":["));
static REQUEST_ID: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"\"requestId\":\""));

/// The generator's timestamp inside `data` (`{"t":<ns>,...}`).
fn timestamp(payload: &[u8]) -> Option<u64> {
    T_FIELD
        .find(payload)
        .and_then(|at| parse_u64(&payload[at + 4..]))
}

fn first_joined(payload: &[u8]) -> Option<&[u8]> {
    let at = JOINED.find(payload)? + 10;
    let rest = &payload[at..];
    // Herald: [{"peerId":"x",...}], Socket.IO: ["x",...]
    let rest = if rest.starts_with(b"{\"peerId\":\"") {
        &rest[11..]
    } else if rest.starts_with(b"\"") {
        &rest[1..]
    } else {
        return None;
    };
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

/// Every peer id in a presence frame's `joined` (Herald coalesces deltas under load, so a frame
/// may hold several; the Socket.IO reference server sends one per frame).
pub fn joined_peers(proto: Proto, payload: &[u8]) -> Vec<Vec<u8>> {
    match proto {
        Proto::Herald => {
            let Ok(frame) = serde_json::from_slice::<serde_json::Value>(payload) else {
                return Vec::new();
            };
            frame["joined"]
                .as_array()
                .map(|entries| {
                    entries
                        .iter()
                        .filter_map(|e| e["peerId"].as_str())
                        .map(|p| p.as_bytes().to_vec())
                        .collect()
                })
                .unwrap_or_default()
        }
        Proto::Socketio => first_joined(payload)
            .map(<[u8]>::to_vec)
            .into_iter()
            .collect(),
        Proto::Pusher => crate::pusher::user_id(payload)
            .map(<[u8]>::to_vec)
            .into_iter()
            .collect(),
    }
}

/// Classifies one inbound text payload.
pub fn classify(proto: Proto, p: &[u8]) -> Inbound<'_> {
    match proto {
        Proto::Herald => {
            let Some(rest) = p.strip_prefix(b"{\"type\":\"") else {
                return Inbound::Other;
            };
            if rest.starts_with(b"message\"") {
                Inbound::Message(timestamp(p))
            } else if rest.starts_with(b"direct\"") {
                Inbound::Direct(timestamp(p))
            } else if rest.starts_with(b"ack\"") {
                let id = REQUEST_ID
                    .find(p)
                    .and_then(|at| parse_u64(&p[at + 13..]))
                    .unwrap_or(0);
                Inbound::Ack(id)
            } else if rest.starts_with(b"presence\"") {
                Inbound::Presence {
                    joined: first_joined(p),
                }
            } else if rest.starts_with(b"error\"") {
                Inbound::Error
            } else {
                Inbound::Other
            }
        }
        Proto::Socketio => {
            if p == b"2" {
                Inbound::Ping
            } else if let Some(rest) = p.strip_prefix(b"43") {
                Inbound::Ack(parse_u64(rest).unwrap_or(0))
            } else if p.starts_with(b"42[\"message\"") {
                Inbound::Message(timestamp(p))
            } else if p.starts_with(b"42[\"direct\"") {
                Inbound::Direct(timestamp(p))
            } else if p.starts_with(b"42[\"presence\"") {
                Inbound::Presence {
                    joined: first_joined(p),
                }
            } else if p.starts_with(b"44") {
                Inbound::Error
            } else {
                Inbound::Other
            }
        }
        Proto::Pusher => classify_pusher(p),
    }
}

/// Pusher frames. Its only replies are `subscription_succeeded` and `pong` (after the ping
/// that follows an unsubscribe), both reported as `Ack(PUSHER_ACK)`: a client awaits one at a
/// time.
fn classify_pusher(p: &[u8]) -> Inbound<'_> {
    use crate::pusher;
    let Some(event) = pusher::event(p) else {
        return Inbound::Other;
    };
    match event {
        b"message" | b"client-message" | b"client-typing" => Inbound::Message(pusher::timestamp(p)),
        b"direct" => Inbound::Direct(pusher::timestamp(p)),
        b"pusher_internal:subscription_succeeded" | b"pusher:pong" => Inbound::Ack(PUSHER_ACK),
        b"pusher_internal:member_added" => Inbound::Presence {
            joined: pusher::user_id(p),
        },
        b"pusher_internal:member_removed" => Inbound::Presence { joined: None },
        b"pusher:ping" => Inbound::Ping,
        b"pusher:error" | b"pusher:subscription_error" => Inbound::Error,
        _ => Inbound::Other,
    }
}

/// The request id every Pusher acknowledgement carries (the protocol has none).
pub const PUSHER_ACK: u64 = u64::MAX;

fn between<'a>(p: &'a [u8], field: &[u8]) -> Option<&'a [u8]> {
    let at = memmem::find(p, field)? + field.len();
    let rest = &p[at..];
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

async fn next_data(rd: &mut WsReader) -> io::Result<Vec<u8>> {
    loop {
        match rd.next().await? {
            Frame::Data(range) => return Ok(rd.payload(&range).to_vec()),
            Frame::Control => continue,
            Frame::Closed => return Err(io::ErrorKind::ConnectionReset.into()),
        }
    }
}

impl Client {
    /// Connects to node `node` of the target and completes the protocol handshake: Herald's
    /// `welcome`, or Engine.IO open + Socket.IO connect.
    pub async fn connect(target: &Target, node: usize, presence: bool) -> io::Result<Client> {
        let addr = target.addr(node);
        match target.proto {
            Proto::Herald => {
                let path = match &target.signing_key {
                    Some(signer) => format!(
                        "/v1?token={}",
                        signer.token(&format!("bench-{node}"), None, presence)
                    ),
                    None if presence => format!("/v1?key={}", target.key),
                    None => format!("/v1?key={}", target.quiet_key),
                };
                Client::connect_herald(addr, &path, node).await
            }
            Proto::Socketio => {
                let (mut rd, mut wr) =
                    ws::connect(addr, "/socket.io/?EIO=4&transport=websocket", node).await?;
                let open = next_data(&mut rd).await?;
                if !open.starts_with(b"0{") {
                    return Err(io::Error::other("expected Engine.IO open packet"));
                }
                wr.send_text(b"40").await?;
                let peer_id = loop {
                    let packet = next_data(&mut rd).await?;
                    if packet.starts_with(b"40") {
                        break between(&packet, b"\"sid\":\"")
                            .ok_or_else(|| io::Error::other("connect packet without sid"))?
                            .to_vec();
                    }
                    if packet.starts_with(b"44") {
                        return Err(io::Error::other("Socket.IO connect refused"));
                    }
                };
                Ok(Client {
                    proto: Proto::Socketio,
                    rd,
                    tx: Sender::new(Proto::Socketio, wr, String::new()),
                    peer_id: String::from_utf8_lossy(&peer_id).into_owned(),
                })
            }
            Proto::Pusher => {
                let (mut rd, wr) = ws::connect(addr, &crate::pusher::ws_path(), node).await?;
                let first = next_data(&mut rd).await?;
                let socket_id = crate::pusher::socket_id(&first)
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .ok_or_else(|| {
                        io::Error::other(format!(
                            "expected pusher:connection_established, got {}",
                            String::from_utf8_lossy(&first)
                        ))
                    })?;
                Ok(Client {
                    proto: Proto::Pusher,
                    rd,
                    tx: Sender::new(Proto::Pusher, wr, socket_id.clone()),
                    peer_id: socket_id,
                })
            }
        }
    }

    /// Pusher: opens the events-API connection this client publishes and sends directs
    /// through, and returns its read side (the caller counts its responses as acks). Other
    /// protocols publish over their WebSocket: `None`.
    pub async fn attach_http(
        &mut self,
        target: &Target,
        node: usize,
        lanes: usize,
    ) -> io::Result<Option<crate::pusher::HttpReader>> {
        if self.proto != Proto::Pusher {
            return Ok(None);
        }
        let (rd, wr) = crate::pusher::http_connect_lanes(target.addr(node), lanes).await?;
        self.tx.http = Some(wr);
        Ok(Some(rd))
    }

    /// Pusher: subscribes to this connection's private inbox, which its directs are published
    /// to. Other protocols address the connection itself: nothing to do.
    pub async fn open_inbox(&mut self) -> io::Result<()> {
        if self.proto != Proto::Pusher {
            return Ok(());
        }
        let channel = crate::pusher::inbox(&self.peer_id);
        let id = self.tx.queue_subscribe(&channel, false);
        self.await_ack(id).await
    }

    /// Connects to a Herald node with the upgrade `path` (`/v1?key=…` or `/v1?token=…`) and
    /// waits for `welcome`. `index` picks the loopback source address.
    pub async fn connect_herald(addr: SocketAddr, path: &str, index: usize) -> io::Result<Client> {
        let (mut rd, wr) = ws::connect(addr, path, index).await?;
        let first = next_data(&mut rd).await?;
        let peer_id = between(&first, b"\"peerId\":\"")
            .ok_or_else(|| {
                io::Error::other(format!(
                    "expected welcome, got {}",
                    String::from_utf8_lossy(&first)
                ))
            })?
            .to_vec();
        Ok(Client {
            proto: Proto::Herald,
            rd,
            tx: Sender::new(Proto::Herald, wr, String::new()),
            peer_id: String::from_utf8_lossy(&peer_id).into_owned(),
        })
    }

    /// Flushes queued frames and waits for the ack of `id`, answering pings on the way.
    pub async fn await_ack(&mut self, id: u64) -> io::Result<()> {
        self.tx.flush().await?;
        loop {
            match self.rd.next().await? {
                Frame::Data(range) => {
                    let inbound = classify(self.proto, self.rd.payload(&range));
                    match inbound {
                        Inbound::Ack(got) if got == id || got == PUSHER_ACK => return Ok(()),
                        Inbound::Error => {
                            let text =
                                String::from_utf8_lossy(self.rd.payload(&range)).into_owned();
                            return Err(io::Error::other(format!("server error: {text}")));
                        }
                        Inbound::Ping => {
                            self.tx.queue_pong();
                            self.tx.wr.flush().await?;
                        }
                        _ => {}
                    }
                }
                Frame::Control => {}
                Frame::Closed => return Err(io::ErrorKind::ConnectionReset.into()),
            }
        }
    }

    /// Closes with a close frame and finishes the closing handshake, as a browser does:
    /// dropping the socket while frames still arrive makes the kernel answer with a reset,
    /// which can discard the close frame unread, and the server then sees a dropped connection
    /// (presence held for the reconnect grace) instead of a leave.
    pub async fn close(mut self) {
        self.tx.wr.close().await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while let Ok(Frame::Data(_) | Frame::Control) = self.rd.next().await {}
        })
        .await;
    }
}

impl Sender {
    fn new(proto: Proto, wr: WsWriter, socket_id: String) -> Sender {
        Sender {
            proto,
            wr,
            next_request: 1,
            socket_id,
            http: None,
        }
    }

    /// Writes what is queued on the WebSocket, then on the events-API connection.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.wr.flush().await?;
        if let Some(http) = &mut self.http {
            http.flush().await?;
        }
        Ok(())
    }

    fn request_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    /// Queues a subscribe (Socket.IO: join the room, with presence if asked); returns its id.
    pub fn queue_subscribe(&mut self, channel: &str, presence: bool) -> u64 {
        let id = self.request_id();
        let frame = match self.proto {
            Proto::Herald => {
                format!(r#"{{"type":"subscribe","channel":"{channel}","requestId":"{id}"}}"#)
            }
            Proto::Socketio => {
                format!(r#"42{id}["subscribe",{{"channel":"{channel}","presence":{presence}}}]"#)
            }
            Proto::Pusher => {
                let name = crate::pusher::channel_name(channel, presence);
                crate::pusher::subscribe_frame(&self.socket_id, &name)
            }
        };
        self.wr.queue_text(frame.as_bytes());
        id
    }

    pub fn queue_unsubscribe(&mut self, channel: &str, presence: bool) -> u64 {
        let id = self.request_id();
        let frame = match self.proto {
            Proto::Herald => {
                format!(r#"{{"type":"unsubscribe","channel":"{channel}","requestId":"{id}"}}"#)
            }
            Proto::Socketio => {
                format!(r#"42{id}["unsubscribe",{{"channel":"{channel}","presence":{presence}}}]"#)
            }
            Proto::Pusher => {
                let name = crate::pusher::channel_name(channel, presence);
                self.wr
                    .queue_text(crate::pusher::unsubscribe_frame(&name).as_bytes());
                // No reply to an unsubscribe: the pong to this ping acknowledges it.
                self.wr.queue_text(crate::pusher::PING);
                return PUSHER_ACK;
            }
        };
        self.wr.queue_text(frame.as_bytes());
        id
    }

    /// Queues a publish of raw JSON `data`; returns its request id (acked by both servers).
    pub fn queue_publish(&mut self, buf: &mut Vec<u8>, channel: &str, data: &[u8]) -> u64 {
        let id = self.request_id();
        buf.clear();
        match self.proto {
            Proto::Herald => {
                buf.extend_from_slice(b"{\"type\":\"publish\",\"channel\":\"");
                buf.extend_from_slice(channel.as_bytes());
                buf.extend_from_slice(b"\",\"requestId\":\"");
                push_u64(buf, id);
                buf.extend_from_slice(b"\",\"data\":");
                buf.extend_from_slice(data);
                buf.push(b'}');
            }
            Proto::Socketio => {
                buf.extend_from_slice(b"42");
                push_u64(buf, id);
                buf.extend_from_slice(b"[\"publish\",{\"channel\":\"");
                buf.extend_from_slice(channel.as_bytes());
                buf.extend_from_slice(b"\",\"data\":");
                buf.extend_from_slice(data);
                buf.extend_from_slice(b"}]");
            }
            Proto::Pusher => {
                let name = crate::pusher::channel_name(channel, false);
                match &mut self.http {
                    Some(http) => http.queue_event(&name, "message", data, None),
                    // Without the events API: a client event (private/presence channels only).
                    None => {
                        crate::pusher::client_event(buf, &name, "message", data);
                        self.wr.queue_text(buf);
                    }
                }
                return id;
            }
        }
        self.wr.queue_text(buf);
        id
    }

    /// Queues a client-to-client event (chat typing): Pusher's `client-<name>` event on the
    /// (presence) channel; the others' nearest equivalent is a publish.
    pub fn queue_client_event(
        &mut self,
        buf: &mut Vec<u8>,
        channel: &str,
        name: &str,
        data: &[u8],
    ) -> u64 {
        if self.proto == Proto::Pusher {
            let channel = crate::pusher::channel_name(channel, false);
            crate::pusher::client_event(buf, &channel, name, data);
            self.wr.queue_text(buf);
            return self.request_id();
        }
        self.queue_publish(buf, channel, data)
    }

    /// Queues a direct message to `to` (a peer id / socket id).
    pub fn queue_send(&mut self, buf: &mut Vec<u8>, to: &str, data: &[u8]) -> u64 {
        let id = self.request_id();
        buf.clear();
        match self.proto {
            Proto::Herald => {
                buf.extend_from_slice(b"{\"type\":\"send\",\"to\":\"");
                buf.extend_from_slice(to.as_bytes());
                buf.extend_from_slice(b"\",\"requestId\":\"");
                push_u64(buf, id);
                buf.extend_from_slice(b"\",\"data\":");
                buf.extend_from_slice(data);
                buf.push(b'}');
            }
            Proto::Socketio => {
                buf.extend_from_slice(b"42");
                push_u64(buf, id);
                buf.extend_from_slice(b"[\"send\",{\"to\":\"");
                buf.extend_from_slice(to.as_bytes());
                buf.extend_from_slice(b"\",\"data\":");
                buf.extend_from_slice(data);
                buf.extend_from_slice(b"}]");
            }
            Proto::Pusher => {
                if let Some(http) = &mut self.http {
                    http.queue_event(&crate::pusher::inbox(to), "direct", data, None);
                }
                return id;
            }
        }
        self.wr.queue_text(buf);
        id
    }

    /// Answers an Engine.IO ping (queued; the caller flushes).
    pub fn queue_pong(&mut self) {
        match self.proto {
            Proto::Socketio => self.wr.queue_text(b"3"),
            Proto::Pusher => self.wr.queue_text(crate::pusher::PONG),
            Proto::Herald => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_herald_frames() {
        let msg = br#"{"type":"message","channel":"c","from":"p","data":{"t":12345,"s":"x"}}"#;
        assert_eq!(classify(Proto::Herald, msg), Inbound::Message(Some(12345)));
        let ack = br#"{"type":"ack","requestId":"77"}"#;
        assert_eq!(classify(Proto::Herald, ack), Inbound::Ack(77));
        let pres = br#"{"type":"presence","channel":"c","joined":[{"peerId":"bob"}],"left":[]}"#;
        assert_eq!(
            classify(Proto::Herald, pres),
            Inbound::Presence {
                joined: Some(&b"bob"[..])
            }
        );
        let empty = br#"{"type":"presence","channel":"c","joined":[],"left":[]}"#;
        assert_eq!(
            classify(Proto::Herald, empty),
            Inbound::Presence { joined: None }
        );
    }

    #[test]
    fn classifies_socketio_packets() {
        assert_eq!(classify(Proto::Socketio, b"2"), Inbound::Ping);
        assert_eq!(classify(Proto::Socketio, b"4312[{}]"), Inbound::Ack(12));
        let msg = br#"42["message",{"channel":"c","from":"x","data":{"t":9}}]"#;
        assert_eq!(classify(Proto::Socketio, msg), Inbound::Message(Some(9)));
        let pres = br#"42["presence",{"channel":"c","joined":["abc"],"left":[]}]"#;
        assert_eq!(
            classify(Proto::Socketio, pres),
            Inbound::Presence {
                joined: Some(&b"abc"[..])
            }
        );
    }

    #[test]
    fn writes_numbers() {
        let mut b = Vec::new();
        push_u64(&mut b, 0);
        push_u64(&mut b, 1234567890123);
        assert_eq!(b, b"01234567890123");
    }
}
