//! One soak connection: a task that owns the socket, runs the requests the driver hands it, and
//! keeps the roster the server told it for each channel (the snapshot that follows its subscribe
//! ack, then the `joined`/`left` deltas), so the driver can compare it with the truth.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::proto::{classify, push_u64, Inbound, Proto};
use crate::ws::{self, Frame, WsReader, WsWriter};

/// How long a graceful close waits for the server's close frame.
const CLOSE_HANDSHAKE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a request may wait for its ack before the soak counts it as timed out.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// An application ping this often keeps an otherwise quiet connection from being reaped as dead
/// (the generator's WebSocket client does not answer protocol pings).
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Presence anomalies printed in full; the rest are only counted.
const PRINTED_ANOMALIES: u64 = 5;

/// Counters shared by every connection of a soak run.
#[derive(Debug, Default)]
pub struct Counters {
    pub messages: AtomicU64,
    /// Messages received by the stable connections, which the driver can predict exactly.
    pub stable_messages: AtomicU64,
    pub directs: AtomicU64,
    pub presence_frames: AtomicU64,
    /// `error` frames from the server.
    pub error_frames: AtomicU64,
    /// A presence delta that contradicts the roster: a `joined` for a peer already listed, a
    /// `left` for one not listed, or presence for a channel the connection is not in.
    pub presence_anomalies: AtomicU64,
    /// Connections the server closed although the soak did not ask for it (slow consumers are
    /// counted separately).
    pub unexpected_closes: AtomicU64,
    pub timeouts: AtomicU64,
    /// The first presence anomalies, described.
    anomalies: Mutex<Vec<String>>,
}

impl Counters {
    pub fn anomaly_examples(&self) -> Vec<String> {
        self.anomalies.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What a connection can be asked to do; each is answered by the server's `ack` or `error`.
#[derive(Debug, Clone)]
pub enum Op {
    Subscribe(String),
    Unsubscribe(String),
    /// Publish `data` (raw JSON) on a channel.
    Publish(String, Arc<[u8]>),
    /// A direct message to a peer id.
    Send(String, Arc<[u8]>),
}

/// The roster a connection was told for one channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roster {
    pub peers: BTreeSet<String>,
    /// The snapshot after the subscribe ack has arrived; until then `peers` means nothing.
    pub snapshot_seen: bool,
}

enum Cmd {
    Request(Op, oneshot::Sender<Result<(), String>>),
    Rosters(oneshot::Sender<HashMap<String, Roster>>),
    /// Close with a close frame (a deliberate leave), or just drop the socket.
    Close {
        graceful: bool,
    },
}

/// The driver's handle on a connection. Cloning it shares the connection.
#[derive(Clone)]
pub struct Handle {
    pub peer: Arc<str>,
    cmd: mpsc::Sender<Cmd>,
}

impl Handle {
    /// Runs one request and waits for its ack; the error is the server's error frame, a
    /// timeout, or the connection being gone.
    pub async fn request(&self, op: Op, counters: &Counters) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Request(op, tx))
            .await
            .map_err(|_| "connection gone".to_string())?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("connection gone".into()),
            Err(_) => {
                bump(&counters.timeouts);
                Err("timed out".into())
            }
        }
    }

    /// The rosters of the channels this connection is subscribed to, or `None` if it is gone.
    pub async fn rosters(&self) -> Option<HashMap<String, Roster>> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(Cmd::Rosters(tx)).await.ok()?;
        tokio::time::timeout(REQUEST_TIMEOUT, rx).await.ok()?.ok()
    }

    pub async fn close(&self, graceful: bool) {
        let _ = self.cmd.send(Cmd::Close { graceful }).await;
    }
}

/// Opens a connection with a publishable key, waits for its `welcome`, and starts its task.
/// `stable` connections count their messages in [`Counters::stable_messages`].
pub async fn connect(
    addr: SocketAddr,
    key: &str,
    index: usize,
    stable: bool,
    counters: Arc<Counters>,
) -> io::Result<Handle> {
    let (mut rd, wr) = ws::connect(addr, &format!("/v1?key={key}"), index).await?;
    let peer = read_welcome(&mut rd).await?;
    let (cmd, rx) = mpsc::channel(16);
    let task = Task {
        peer: peer.clone(),
        wr,
        counters,
        stable,
        next_request: 1,
        pending: HashMap::new(),
        rosters: HashMap::new(),
        leaving: HashSet::new(),
        closing: false,
    };
    tokio::spawn(task.run(rd, rx));
    Ok(Handle {
        peer: peer.into(),
        cmd,
    })
}

/// Reads frames until the `welcome` and returns its `peerId`.
pub async fn read_welcome(rd: &mut WsReader) -> io::Result<String> {
    #[derive(Deserialize)]
    struct Welcome {
        #[serde(rename = "peerId")]
        peer_id: String,
    }
    loop {
        match rd.next().await? {
            Frame::Data(range) => {
                let payload = rd.payload(&range);
                return serde_json::from_slice::<Welcome>(payload)
                    .map(|w| w.peer_id)
                    .map_err(|_| {
                        io::Error::other(format!(
                            "expected welcome, got {}",
                            String::from_utf8_lossy(payload)
                        ))
                    });
            }
            Frame::Control => {}
            Frame::Closed => return Err(io::ErrorKind::ConnectionReset.into()),
        }
    }
}

#[derive(Deserialize)]
struct PresenceEntry {
    #[serde(rename = "peerId")]
    peer_id: String,
}

#[derive(Deserialize)]
struct Presence {
    channel: String,
    #[serde(default)]
    joined: Vec<PresenceEntry>,
    #[serde(default)]
    left: Vec<PresenceEntry>,
}

#[derive(Deserialize)]
struct ErrorFrame {
    #[serde(rename = "requestId")]
    request_id: Option<String>,
}

enum Pending {
    Subscribe(String),
    Unsubscribe(String),
    Other,
}

struct Task {
    /// This connection's own peer id, for messages.
    peer: String,
    wr: WsWriter,
    counters: Arc<Counters>,
    stable: bool,
    next_request: u64,
    pending: HashMap<u64, (Pending, oneshot::Sender<Result<(), String>>)>,
    rosters: HashMap<String, Roster>,
    /// Channels unsubscribed but not yet acked: deltas still in flight for them are ignored.
    leaving: HashSet<String>,
    /// Set once the driver asked for the close, so the server's reply is not unexpected.
    closing: bool,
}

impl Task {
    async fn run(mut self, mut rd: WsReader, mut rx: mpsc::Receiver<Cmd>) {
        let mut keepalive =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        let mut buf = Vec::with_capacity(256);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    // Every handle dropped: let the socket go without a close frame.
                    None => return,
                    Some(Cmd::Request(op, reply)) => self.queue(op, reply, &mut buf),
                    Some(Cmd::Rosters(reply)) => {
                        let _ = reply.send(self.rosters.clone());
                    }
                    Some(Cmd::Close { graceful }) => {
                        self.closing = true;
                        if graceful {
                            self.wr.close().await;
                            // Finish the closing handshake before dropping the socket, as a
                            // browser does. Closing it with frames still arriving makes the
                            // kernel answer with a reset, which can discard the close frame
                            // unread: the server then sees a dropped connection (presence kept
                            // for the reconnect grace), not a leave.
                            let _ = tokio::time::timeout(CLOSE_HANDSHAKE_WAIT, async {
                                while let Ok(Frame::Data(_) | Frame::Control) = rd.next().await {}
                            })
                            .await;
                        }
                        return;
                    }
                },
                frame = rd.next() => match frame {
                    Ok(Frame::Data(range)) => self.on_frame(rd.payload(&range)),
                    Ok(Frame::Control) => {}
                    Ok(Frame::Closed) | Err(_) => {
                        if !self.closing {
                            bump(&self.counters.unexpected_closes);
                        }
                        return;
                    }
                },
                _ = keepalive.tick() => self.wr.queue_text(br#"{"type":"ping"}"#),
            }
            if self.wr.pending() && self.wr.flush().await.is_err() {
                // The read side reports the close on the next turn.
                continue;
            }
        }
    }

    fn queue(&mut self, op: Op, reply: oneshot::Sender<Result<(), String>>, buf: &mut Vec<u8>) {
        let id = self.next_request;
        self.next_request += 1;
        buf.clear();
        let (kind, pending) = match &op {
            Op::Subscribe(channel) => ("subscribe", Pending::Subscribe(channel.clone())),
            Op::Unsubscribe(channel) => {
                // Deltas still in flight for it are not anomalies: stop tracking it now.
                self.rosters.remove(channel);
                self.leaving.insert(channel.clone());
                ("unsubscribe", Pending::Unsubscribe(channel.clone()))
            }
            Op::Publish(..) => ("publish", Pending::Other),
            Op::Send(..) => ("send", Pending::Other),
        };
        buf.extend_from_slice(b"{\"type\":\"");
        buf.extend_from_slice(kind.as_bytes());
        buf.extend_from_slice(b"\",\"requestId\":\"");
        push_u64(buf, id);
        buf.push(b'"');
        match &op {
            Op::Subscribe(channel) | Op::Unsubscribe(channel) => {
                push_field(buf, "channel", channel);
            }
            Op::Publish(channel, data) => {
                push_field(buf, "channel", channel);
                buf.extend_from_slice(b",\"data\":");
                buf.extend_from_slice(data);
            }
            Op::Send(to, data) => {
                push_field(buf, "to", to);
                buf.extend_from_slice(b",\"data\":");
                buf.extend_from_slice(data);
            }
        }
        buf.push(b'}');
        self.wr.queue_text(buf);
        self.pending.insert(id, (pending, reply));
    }

    fn on_frame(&mut self, payload: &[u8]) {
        match classify(Proto::Herald, payload) {
            Inbound::Message(_) => {
                bump(&self.counters.messages);
                if self.stable {
                    bump(&self.counters.stable_messages);
                }
            }
            Inbound::Direct(_) => bump(&self.counters.directs),
            Inbound::Presence { .. } => {
                bump(&self.counters.presence_frames);
                match serde_json::from_slice::<Presence>(payload) {
                    Ok(presence) => self.on_presence(presence),
                    Err(_) => self.anomaly("unparsable presence", "", ""),
                }
            }
            Inbound::Ack(id) => {
                if let Some((pending, reply)) = self.pending.remove(&id) {
                    match pending {
                        Pending::Subscribe(channel) => {
                            self.rosters.insert(channel, Roster::default());
                        }
                        Pending::Unsubscribe(channel) => {
                            self.leaving.remove(&channel);
                        }
                        Pending::Other => {}
                    }
                    let _ = reply.send(Ok(()));
                }
            }
            Inbound::Error => {
                bump(&self.counters.error_frames);
                let text = String::from_utf8_lossy(payload).into_owned();
                let id = serde_json::from_slice::<ErrorFrame>(payload)
                    .ok()
                    .and_then(|e| e.request_id)
                    .and_then(|id| id.parse::<u64>().ok());
                if let Some((_, reply)) = id.and_then(|id| self.pending.remove(&id)) {
                    let _ = reply.send(Err(text));
                } else {
                    eprintln!("soak: unsolicited error frame: {text}");
                }
            }
            Inbound::Ping | Inbound::Other => {}
        }
    }

    fn on_presence(&mut self, presence: Presence) {
        let Some(roster) = self.rosters.get_mut(&presence.channel) else {
            if !self.leaving.contains(&presence.channel) {
                self.anomaly("presence for a channel it is not in", &presence.channel, "");
            }
            return;
        };
        if !roster.snapshot_seen {
            // The first presence after the subscribe ack is the full snapshot.
            roster.peers = presence.joined.into_iter().map(|e| e.peer_id).collect();
            roster.snapshot_seen = true;
            if let Some(entry) = presence.left.first() {
                self.anomaly("a snapshot with left", &presence.channel, &entry.peer_id);
            }
            return;
        }
        let mut wrong = Vec::new();
        for entry in presence.joined {
            if !roster.peers.insert(entry.peer_id.clone()) {
                wrong.push(("joined for a peer already listed", entry.peer_id));
            }
        }
        for entry in presence.left {
            if !roster.peers.remove(&entry.peer_id) {
                wrong.push(("left for a peer not listed", entry.peer_id));
            }
        }
        for (what, peer) in wrong {
            self.anomaly(what, &presence.channel, &peer);
        }
    }
}

impl Task {
    /// Counts a presence frame that contradicts the roster, and prints the first few.
    fn anomaly(&self, what: &str, channel: &str, peer: &str) {
        let seen = self
            .counters
            .presence_anomalies
            .fetch_add(1, Ordering::Relaxed);
        if seen < PRINTED_ANOMALIES {
            let example = format!(
                "presence anomaly at {}: {what} on {channel}: {peer}",
                self.peer
            );
            eprintln!("soak: {example}");
            if let Ok(mut examples) = self.counters.anomalies.lock() {
                examples.push(example);
            }
        }
    }
}

/// Appends `,"name":"value"`; soak channel names and peer ids need no escaping.
fn push_field(buf: &mut Vec<u8>, name: &str, value: &str) {
    buf.extend_from_slice(b",\"");
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\":\"");
    buf.extend_from_slice(value.as_bytes());
    buf.push(b'"');
}
