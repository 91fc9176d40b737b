//! The client of the signed HTTP events API, which is how a Pusher application publishes.
//!
//! Sockudo 5.2 answers every events-API request with `connection: close` and then closes, so
//! requests cannot be pipelined on one keep-alive connection: only the first would be
//! answered. A client here is one or more *lanes*. A lane sends one request at a time and the
//! next only after the previous response, which keeps a publisher's publishes in order. Each
//! request goes on a connection of its own when the server closes them (taken from a few
//! connections kept pre-connected, so the connect is off the latency path while the lane keeps
//! up), or stays on the same connection while responses do not say `connection: close`.
//!
//! A request that never got a response (connect failed three times, or the connection broke
//! after part of a response) is reported as status [`NOT_SENT`]; connect failures are counted.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use memchr::memmem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use super::{hmac_hex, APP_ID, APP_KEY};

/// The status reported for a request that got no response.
pub const NOT_SENT: u16 = 0;
/// Requests queued per lane before `flush` waits (backpressure on the generator).
const LANE_QUEUE: usize = 4096;
/// Connections a lane keeps connecting ahead of need once the server is known to close them.
const SPARES: usize = 2;
/// Connect attempts per request before it is given up as [`NOT_SENT`].
const CONNECT_ATTEMPTS: u32 = 3;

/// Connect failures of every events-API client in this process.
static CONNECT_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Connect failures of every events-API client in this process so far.
pub fn connect_failures() -> u64 {
    CONNECT_FAILURES.load(Ordering::Relaxed)
}

/// What the lanes hand to the reader.
struct Shared {
    statuses: Mutex<Vec<u16>>,
    ready: Notify,
    lanes_live: AtomicUsize,
    connect_failures: AtomicU64,
    connections: AtomicU64,
}

impl Shared {
    fn push(&self, status: u16) {
        self.statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(status);
        self.ready.notify_one();
    }
}

/// The write side: builds signed requests; `flush` hands them to the lanes.
pub struct HttpWriter {
    lanes: Vec<mpsc::Sender<Vec<u8>>>,
    next_lane: usize,
    queued: Vec<Vec<u8>>,
    body: Vec<u8>,
    host: String,
}

/// The read side: the status of every request, in the order each lane completed them.
pub struct HttpReader {
    shared: Arc<Shared>,
}

/// An events-API client with one lane: requests are sent one after another, each after the
/// previous one's response, so they reach the server in the order they were queued.
pub async fn http_connect(addr: SocketAddr) -> io::Result<(HttpReader, HttpWriter)> {
    http_connect_lanes(addr, 1).await
}

/// An events-API client with `lanes` lanes, each with a request in flight: requests are spread
/// over them round-robin, so their order is kept only within a lane. For traffic whose order
/// does not matter (an app backend's publishes to many rooms).
pub async fn http_connect_lanes(
    addr: SocketAddr,
    lanes: usize,
) -> io::Result<(HttpReader, HttpWriter)> {
    let shared = Arc::new(Shared {
        statuses: Mutex::new(Vec::new()),
        ready: Notify::new(),
        lanes_live: AtomicUsize::new(0),
        connect_failures: AtomicU64::new(0),
        connections: AtomicU64::new(0),
    });
    let mut senders = Vec::new();
    for _ in 0..lanes.max(1) {
        // The first connection is made here, so a server that is not there fails the caller.
        let first = connect(addr).await?;
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(LANE_QUEUE);
        shared.lanes_live.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(Lane::new(addr, shared.clone(), first).run(rx));
        senders.push(tx);
    }
    Ok((
        HttpReader { shared },
        HttpWriter {
            lanes: senders,
            next_lane: 0,
            queued: Vec::new(),
            body: Vec::with_capacity(512),
            host: addr.to_string(),
        },
    ))
}

async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
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
        let mut request = Vec::with_capacity(head.len() + body.len());
        request.extend_from_slice(head.as_bytes());
        request.extend_from_slice(body);
        self.queued.push(request);
    }

    pub fn pending(&self) -> bool {
        !self.queued.is_empty()
    }

    /// Hands the queued requests to the lanes (waits while a lane's queue is full).
    pub async fn flush(&mut self) -> io::Result<()> {
        for request in self.queued.drain(..) {
            let lane = &self.lanes[self.next_lane % self.lanes.len()];
            self.next_lane = self.next_lane.wrapping_add(1);
            lane.send(request)
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        }
        Ok(())
    }
}

impl HttpReader {
    /// Waits for at least one response; returns the status of every request completed since
    /// the last call ([`NOT_SENT`] for one that got no response). Empty once the writer is
    /// dropped and every lane has finished.
    pub async fn next_batch(&mut self) -> io::Result<Vec<u16>> {
        loop {
            // Registered before the check, so a push between the check and the wait is seen.
            let notified = self.shared.ready.notified();
            {
                let mut statuses = self
                    .shared
                    .statuses
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if !statuses.is_empty() {
                    return Ok(std::mem::take(&mut *statuses));
                }
            }
            if self.shared.lanes_live.load(Ordering::Acquire) == 0 {
                return Ok(Vec::new());
            }
            notified.await;
        }
    }

    /// Connect failures of this client so far.
    pub fn connect_failures(&self) -> u64 {
        self.shared.connect_failures.load(Ordering::Relaxed)
    }

    /// TCP connections this client has opened so far (its lanes' first ones included).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }
}

/// How one exchange ended without a response.
enum Failed {
    /// Nothing of a response arrived: the server never answered on this connection (a
    /// pre-connected one it had closed), so the request may go again on a fresh one.
    NoResponse,
    /// The connection broke mid-response: the request may have been handled; not repeated.
    Broken,
}

struct Lane {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// A connection the server keeps open (or the lane's first one, not used yet).
    kept: Option<TcpStream>,
    /// Connects in progress or done, used oldest first.
    spares: VecDeque<JoinHandle<io::Result<TcpStream>>>,
    /// The last response said `connection: close`: keep spares ready.
    server_closes: bool,
    buf: Vec<u8>,
}

impl Lane {
    fn new(addr: SocketAddr, shared: Arc<Shared>, first: TcpStream) -> Lane {
        Lane {
            addr,
            shared,
            kept: Some(first),
            spares: VecDeque::new(),
            server_closes: false,
            buf: Vec::with_capacity(4096),
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Vec<u8>>) {
        while let Some(request) = rx.recv().await {
            let status = self.send(&request).await;
            self.shared.push(status);
        }
        for spare in self.spares.drain(..) {
            spare.abort();
        }
        self.shared.lanes_live.fetch_sub(1, Ordering::AcqRel);
        self.shared.ready.notify_one();
    }

    /// Sends one request and reads its response. A connection that gave no response at all
    /// (a pre-connected one the server closed while it waited) is replaced by the next one, up
    /// to [`SPARES`] times.
    async fn send(&mut self, request: &[u8]) -> u16 {
        for _ in 0..=SPARES {
            let mut stream = match self.kept.take() {
                Some(stream) => stream,
                None => match self.fresh().await {
                    Some(stream) => stream,
                    None => return NOT_SENT,
                },
            };
            match exchange(&mut stream, request, &mut self.buf).await {
                Ok((status, close)) => {
                    self.server_closes = close;
                    if close {
                        self.top_up();
                    } else {
                        self.kept = Some(stream);
                    }
                    return status;
                }
                Err(Failed::NoResponse) => continue,
                Err(Failed::Broken) => return NOT_SENT,
            }
        }
        NOT_SENT
    }

    /// Starts connects until [`SPARES`] are pending or ready (only while the server closes).
    fn top_up(&mut self) {
        while self.server_closes && self.spares.len() < SPARES {
            self.spares.push_back(tokio::spawn(connect(self.addr)));
        }
    }

    /// A new connection: the oldest spare, else a connect now; `None` after
    /// [`CONNECT_ATTEMPTS`] failures.
    async fn fresh(&mut self) -> Option<TcpStream> {
        let mut attempts = 0;
        while attempts < CONNECT_ATTEMPTS {
            let result = match self.spares.pop_front() {
                Some(spare) => spare.await.unwrap_or_else(|e| Err(io::Error::other(e))),
                None => connect(self.addr).await,
            };
            match result {
                Ok(stream) => {
                    self.shared.connections.fetch_add(1, Ordering::Relaxed);
                    self.top_up();
                    return Some(stream);
                }
                Err(err) => {
                    attempts += 1;
                    self.shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                    if CONNECT_FAILURES.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!(
                            "herald-bench: events API connect to {} failed: {err}",
                            self.addr
                        );
                    }
                }
            }
        }
        None
    }
}

/// Writes `request` and reads one response: its status and whether the server closes.
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> Result<(u16, bool), Failed> {
    buf.clear();
    if stream.write_all(request).await.is_err() {
        return Err(Failed::NoResponse);
    }
    loop {
        if let Some(response) = parse_response(buf) {
            return Ok((response.status, response.close));
        }
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity().max(4096));
        }
        let got = match stream.read_buf(buf).await {
            Ok(n) => n,
            Err(_) if buf.is_empty() => return Err(Failed::NoResponse),
            Err(_) => return Err(Failed::Broken),
        };
        if got == 0 {
            return Err(if buf.is_empty() {
                Failed::NoResponse
            } else {
                Failed::Broken
            });
        }
    }
}

/// A complete response at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Response {
    pub status: u16,
    /// Its length in bytes (head and body).
    pub len: usize,
    /// `connection: close`, or HTTP/1.0 without `connection: keep-alive`.
    pub close: bool,
}

/// A complete response at the start of `b`, if there is one. Bodies are framed by
/// Content-Length or chunked.
pub(crate) fn parse_response(b: &[u8]) -> Option<Response> {
    let head_end = memmem::find(b, b"\r\n\r\n")? + 4;
    let head = &b[..head_end];
    let status = crate::digits::parse_u64(head.get(9..)?)? as u16;
    let lower = head.to_ascii_lowercase();
    let close = if lower.starts_with(b"http/1.0") {
        header_has(&lower, b"connection:", b"keep-alive").is_none_or(|keep| !keep)
    } else {
        header_has(&lower, b"connection:", b"close").unwrap_or(false)
    };
    let len = if let Some(at) = memmem::find(&lower, b"content-length:") {
        let rest = &lower[at + 15..];
        let skip = rest.iter().take_while(|c| **c == b' ').count();
        let len = crate::digits::parse_u64(&rest[skip..])? as usize;
        if b.len() < head_end + len {
            return None;
        }
        head_end + len
    } else if memmem::find(&lower, b"transfer-encoding: chunked").is_some() {
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
                break at;
            }
        }
    } else {
        head_end
    };
    Some(Response { status, len, close })
}

/// Whether the (lower-cased) header `name` is present and lists `token`; `None` if absent.
fn header_has(lower_head: &[u8], name: &[u8], token: &[u8]) -> Option<bool> {
    let mut found = None;
    for line in lower_head.split(|&c| c == b'\n') {
        if let Some(value) = line.strip_prefix(name) {
            let listed = value.split(|&c| c == b',').any(|t| t.trim_ascii() == token);
            found = Some(found.unwrap_or(false) || listed);
        }
    }
    found
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
