//! A minimal WebSocket client (RFC 6455), written for the load generator's needs: text frames
//! out (masked, batched into one write), unfragmented frames in (parsed in place from one
//! read buffer, no allocation per frame). It never negotiates extensions.
//!
//! A library client would cost more CPU per frame than the server under test on some scenarios;
//! the generator must stay cheap so the server, not the generator, is what is measured.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Initial read buffer; grows for a frame larger than it.
const READ_BUFFER: usize = 16 * 1024;

/// What a read produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text (or binary) message; the payload is `reader.payload(range)`.
    Data(Range<usize>),
    /// A ping, pong or other control frame: nothing to do for the caller.
    Control,
    /// The server sent a close frame or closed the socket.
    Closed,
}

/// The read side of a connection.
pub struct WsReader {
    rd: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Every byte read from the socket, headers included (for per-connection traffic).
    read_bytes: u64,
    /// The code of the close frame the server sent, if any.
    close_code: Option<u16>,
    /// The payload of a ping not yet answered (see [`WsReader::take_ping`]).
    ping: Option<Vec<u8>>,
}

/// The write side: frames are queued with [`WsWriter::queue_text`] and written by `flush`.
pub struct WsWriter {
    wr: OwnedWriteHalf,
    out: Vec<u8>,
    mask: [u8; 4],
}

/// Receive buffer and segment size of a `narrow` connection (see [`connect_with`]).
const NARROW_RECV_BUFFER: u32 = 4096;
const NARROW_SEGMENT: u32 = 1024;

/// Loopback source addresses the generator spreads its connections over (127.0.0.1–64).
const SOURCE_ADDRS: u8 = 64;

/// Opens a TCP connection and performs the HTTP upgrade for `path` (for example `/v1?key=k`).
///
/// Towards an IPv4 loopback server, connection `index` is bound to source address
/// 127.0.0.(1 + index % 64). With every connection on one source address, the kernel's
/// ephemeral-port search (`__inet_hash_connect`) took ~40 % of the generator's CPU at 15,000
/// connections and made the connect scenario measure the generator.
pub async fn connect(
    addr: SocketAddr,
    path: &str,
    index: usize,
) -> io::Result<(WsReader, WsWriter)> {
    connect_with(addr, path, index, false).await
}

/// [`connect`] for a client that means to stop reading: a small receive buffer and a small
/// segment size (`narrow`), so the server's kernel buffers fill after tens of kilobytes. With
/// loopback's 64 KiB segments the server's send buffer grows to megabytes, and a stalled
/// reader would take minutes to back up into the server's own queue.
pub async fn connect_with(
    addr: SocketAddr,
    path: &str,
    index: usize,
    narrow: bool,
) -> io::Result<(WsReader, WsWriter)> {
    let stream = match addr {
        SocketAddr::V4(v4) if v4.ip().is_loopback() => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            if narrow {
                socket.set_recv_buffer_size(NARROW_RECV_BUFFER)?;
                socket2::SockRef::from(&socket).set_tcp_mss(NARROW_SEGMENT)?;
            }
            let host = 1 + (index % SOURCE_ADDRS as usize) as u8;
            socket.bind(SocketAddr::from(([127, 0, 0, host], 0)))?;
            socket.connect(addr).await?
        }
        _ => TcpStream::connect(addr).await?,
    };
    stream.set_nodelay(true)?;
    let (rd, wr) = stream.into_split();
    let mut writer = WsWriter {
        wr,
        out: Vec::with_capacity(256),
        // Any key is valid; a fixed one per connection is enough for a load generator.
        mask: [0x37, 0xfa, 0x21, 0x3d],
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    writer.wr.write_all(request.as_bytes()).await?;
    let mut reader = WsReader {
        rd,
        buf: vec![0; READ_BUFFER],
        start: 0,
        end: 0,
        read_bytes: 0,
        close_code: None,
        ping: None,
    };
    // Read the response head; anything after it is already WebSocket data.
    loop {
        if let Some(pos) = memchr::memmem::find(&reader.buf[..reader.end], b"\r\n\r\n") {
            let head = &reader.buf[..pos];
            if !head.starts_with(b"HTTP/1.1 101") {
                let line =
                    String::from_utf8_lossy(head.split(|b| *b == b'\r').next().unwrap_or(b""));
                return Err(io::Error::other(format!("upgrade refused: {line}")));
            }
            reader.start = pos + 4;
            reader.read_bytes = (reader.end - reader.start) as u64;
            break;
        }
        if reader.end == reader.buf.len() {
            return Err(io::Error::other("upgrade response too large"));
        }
        let n = reader.rd.read(&mut reader.buf[reader.end..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        reader.end += n;
    }
    Ok((reader, writer))
}

impl WsReader {
    /// The bytes of a [`Frame::Data`] payload.
    pub fn payload(&self, range: &Range<usize>) -> &[u8] {
        &self.buf[range.clone()]
    }

    /// The next frame, reading from the socket only when the buffer holds no complete frame.
    pub async fn next(&mut self) -> io::Result<Frame> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(frame);
            }
            // Make room: move the partial frame to the front, or grow for a large one.
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                let len = self.buf.len() * 2;
                self.buf.resize(len, 0);
            }
            let n = self.rd.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Ok(Frame::Closed);
            }
            self.end += n;
            self.read_bytes += n as u64;
        }
    }

    /// Bytes read from the socket since the upgrade response (WebSocket headers included).
    pub fn bytes_read(&self) -> u64 {
        self.read_bytes
    }

    /// The status code of the server's close frame, once one was read.
    pub fn close_code(&self) -> Option<u16> {
        self.close_code
    }

    /// The payload of the last ping, once: a long-lived client that sends nothing else must
    /// answer it ([`WsWriter::queue_pong`]) or the server reaps it as dead.
    pub fn take_ping(&mut self) -> Option<Vec<u8>> {
        self.ping.take()
    }

    /// Whether a complete frame is already buffered (so `next` will not touch the socket).
    pub fn has_buffered(&self) -> bool {
        self.end > self.start
    }

    fn parse(&mut self) -> io::Result<Option<Frame>> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (avail[0], avail[1]);
        if b1 & 0x80 != 0 {
            return Err(io::Error::other("server frames must not be masked"));
        }
        let (len, header) = match b1 & 0x7f {
            126 if avail.len() >= 4 => (u16::from_be_bytes([avail[2], avail[3]]) as usize, 4),
            127 if avail.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&avail[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            126 | 127 => return Ok(None),
            n => (n as usize, 2),
        };
        if avail.len() < header + len {
            return Ok(None);
        }
        let payload = self.start + header..self.start + header + len;
        self.start += header + len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if b0 & 0x80 == 0 {
            return Err(io::Error::other("fragmented frames are not expected"));
        }
        Ok(Some(match b0 & 0x0f {
            OP_TEXT | OP_BINARY => Frame::Data(payload),
            OP_CLOSE => {
                if len >= 2 {
                    let at = payload.start;
                    self.close_code = Some(u16::from_be_bytes([self.buf[at], self.buf[at + 1]]));
                }
                Frame::Closed
            }
            OP_PING => {
                self.ping = Some(self.buf[payload].to_vec());
                Frame::Control
            }
            OP_PONG => Frame::Control,
            _ => Frame::Control,
        }))
    }
}

impl WsWriter {
    /// Appends one masked text frame to the outgoing buffer.
    pub fn queue_text(&mut self, text: &[u8]) {
        self.queue(OP_TEXT, text);
    }

    fn queue(&mut self, opcode: u8, payload: &[u8]) {
        let out = &mut self.out;
        out.push(0x80 | opcode);
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= u16::MAX as usize {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&self.mask);
        let base = out.len();
        out.extend_from_slice(payload);
        for (i, b) in out[base..].iter_mut().enumerate() {
            *b ^= self.mask[i & 3];
        }
    }

    /// Appends a pong echoing a ping's payload.
    pub fn queue_pong(&mut self, payload: &[u8]) {
        self.queue(OP_PONG, payload);
    }

    /// Whether frames are waiting for `flush`.
    pub fn pending(&self) -> bool {
        !self.out.is_empty()
    }

    /// Writes every queued frame in one `write_all`.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.wr.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// Queues and flushes one text frame.
    pub async fn send_text(&mut self, text: &[u8]) -> io::Result<()> {
        self.queue_text(text);
        self.flush().await
    }

    /// Sends a close frame (code 1000) and shuts the write side down.
    pub async fn close(mut self) {
        self.queue(OP_CLOSE, &1000u16.to_be_bytes());
        let _ = self.flush().await;
        let _ = self.wr.shutdown().await;
    }
}
